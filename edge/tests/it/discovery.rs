//! Room discovery (`list-rooms`) with real processes: the embedded single node, and two
//! region-homed regions whose public rooms are listed from either one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use crate::support::{Client, Cluster, Node, REGION_REPLICA_ARGS, Spec, wait_homes_known};

/// How soon after a change is acknowledged a listing must show it (acceptance: 1 s).
const FRESH_WITHIN: Duration = Duration::from_secs(1);

async fn list(c: &mut Client, request: Value) -> Value {
    let mut request = request;
    request["type"] = json!("list-rooms");
    request["ref"] = json!("list");
    c.send(request).await;
    let answer = c.recv().await;
    assert_eq!(answer["ref"], "list", "{answer}");
    answer
}

/// Room → (members, regions) of one page.
fn counts(page: &Value) -> BTreeMap<String, (u64, Vec<String>)> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a page: {page}"))
        .iter()
        .map(|r| {
            let regions = r["regions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g.as_str().unwrap().to_owned())
                .collect();
            (
                r["room"].as_str().unwrap().to_owned(),
                (r["members"].as_u64().unwrap(), regions),
            )
        })
        .collect()
}

async fn join_with(c: &mut Client, request: Value) -> Value {
    let mut request = request;
    request["type"] = json!("join");
    c.send(request).await;
    c.expect("joined").await
}

/// Polls `list-rooms` on `c` until `want` holds, for at most `within`.
async fn listed_within(
    c: &mut Client,
    request: Value,
    within: Duration,
    what: &str,
    want: impl Fn(&BTreeMap<String, (u64, Vec<String>)>) -> bool,
) -> Duration {
    let since = Instant::now();
    // Bounded by the deadline; each round is one request and its answer.
    loop {
        let page = list(c, request.clone()).await;
        assert_eq!(page["type"], "rooms", "{page}");
        if want(&counts(&page)) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < within,
            "{what}: not listed within {within:?}; last page {page}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_lists_public_rooms_pages_filters_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--list-rooms-per-minute", "1000"]);
    node.wait_ready().await;
    let url = node.ws_url();

    let mut a = Client::connect(&url).await;
    join_with(
        &mut a,
        json!({"room": "game-1", "public": true, "room_meta": {"title": "first"}}),
    )
    .await;
    let mut b = Client::connect(&url).await;
    join_with(&mut b, json!({"room": "game-1"})).await;
    a.expect("peer-joined").await;
    // Private by default, and a later `public` join does not change it.
    join_with(&mut a, json!({"room": "secret"})).await;
    join_with(&mut b, json!({"room": "secret", "public": true})).await;
    a.expect("peer-joined").await;
    for i in 2..=6 {
        join_with(&mut a, json!({"room": format!("game-{i}"), "public": true})).await;
    }
    join_with(&mut a, json!({"room": "chat", "public": true})).await;

    let page = list(&mut b, json!({})).await;
    assert_eq!(page["type"], "rooms", "{page}");
    assert!(page.get("next").is_none(), "{page}");
    assert!(page.get("partial").is_none(), "{page}");
    let all = counts(&page);
    assert_eq!(
        all.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "chat", "game-1", "game-2", "game-3", "game-4", "game-5", "game-6"
        ],
        "sorted by room id; `secret` is never listed"
    );
    assert_eq!(all["game-1"], (2, vec!["local".to_owned()]));
    let first = &page["items"][1];
    assert_eq!(first["meta"], json!({"title": "first"}), "{page}");

    // Prefix, and a walk of pages of 2: every room exactly once, in order.
    let games = counts(&list(&mut b, json!({"prefix": "game-"})).await);
    assert_eq!(games.len(), 6);
    let mut walked = Vec::new();
    let mut cursor = Value::Null;
    for _ in 0..10 {
        let page = list(&mut b, json!({"limit": 2, "cursor": cursor})).await;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2, "{page}");
        walked.extend(items.iter().map(|r| r["room"].as_str().unwrap().to_owned()));
        match page.get("next") {
            Some(next) => cursor = next.clone(),
            None => break,
        }
    }
    assert_eq!(walked, all.keys().cloned().collect::<Vec<_>>());

    // A leave is seen at once (the embedded replica is the registry).
    b.send(json!({"type": "leave", "room": "game-1"})).await;
    b.expect("left").await;
    listed_within(
        &mut b,
        json!({"prefix": "game-1"}),
        FRESH_WITHIN,
        "the leave",
        |m| m.get("game-1").is_some_and(|(n, _)| *n == 1),
    )
    .await;

    // Bad fields: `bad-field`, with the ref, and the connection stays usable.
    for bad in [
        json!({"limit": 0}),
        json!({"limit": 101}),
        json!({"limit": "3"}),
        json!({"prefix": "p".repeat(129)}),
        json!({"prefix": 5}),
        json!({"cursor": "%%%"}),
        json!({"cursor": 3}),
    ] {
        let answer = list(&mut b, bad.clone()).await;
        assert_eq!(answer["code"], "bad-field", "{bad}: {answer}");
    }
    b.assert_usable().await;
    let bad_join = json!({"type": "join", "room": "x", "public": "yes", "ref": 1});
    b.send(bad_join).await;
    assert_eq!(b.expect("error").await["code"], "bad-field");
    b.send(json!({"type": "join", "room": "x", "room_meta": [1], "ref": 2}))
        .await;
    assert_eq!(b.expect("error").await["code"], "invalid-meta");

    let text = node.get("/metrics").await.1;
    let complete = crate::support::metric(
        &text,
        r#"heliograph_edge_list_rooms_total{outcome="complete"}"#,
    );
    assert!(complete.is_some_and(|n| n >= 5.0), "{complete:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_rooms_over_the_limit_is_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--list-rooms-per-minute", "3"]);
    node.wait_ready().await;
    let mut c = Client::connect(&node.ws_url()).await;
    for _ in 0..3 {
        assert_eq!(list(&mut c, json!({})).await["type"], "rooms");
    }
    let refused = list(&mut c, json!({})).await;
    assert_eq!(refused["code"], "rate-limited", "{refused}");
    c.assert_usable().await;
    // The budget is the connection's: another one lists.
    let mut d = Client::connect(&node.ws_url()).await;
    assert_eq!(list(&mut d, json!({})).await["type"], "rooms");
    node.wait_metric(
        r#"heliograph_edge_list_rooms_total{outcome="rate_limited"}"#,
        |n| n >= 1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_with_the_public_claim_decides() {
    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    let token = |room: &str, public: Option<bool>| {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 60;
        let mut claims = json!({"sub": "ann", "exp": exp, "room": room});
        if let Some(p) = public {
            claims["public"] = json!(p);
        }
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--join-token-secret", SECRET]);
    node.wait_ready().await;
    let mut c = Client::connect(&node.ws_url()).await;
    // The claim makes a room public without the client's flag…
    join_with(
        &mut c,
        json!({"room": "by-claim", "token": token("by-claim", Some(true))}),
    )
    .await;
    // …and `public: false` keeps it private whatever the client says.
    join_with(
        &mut c,
        json!({"room": "kept-private", "public": true, "token": token("kept-private", Some(false))}),
    )
    .await;
    // Without the claim, the client's flag decides.
    join_with(
        &mut c,
        json!({"room": "by-flag", "public": true, "token": token("by-flag", None)}),
    )
    .await;
    let listed = counts(&list(&mut c, json!({})).await);
    assert_eq!(
        listed.keys().map(String::as_str).collect::<Vec<_>>(),
        ["by-claim", "by-flag"]
    );
}

/// Regions us and eu, region-homed, with a replica and an edge each.
async fn us_and_eu_homed() -> Cluster {
    Cluster::start(Spec {
        replicas: &[(1, "us"), (2, "eu")],
        edges: &[("us-a", "us"), ("eu-a", "eu")],
        replica_args: REGION_REPLICA_ARGS,
        edge_args: &["--list-rooms-per-minute", "10000"],
        homed: true,
        ..Spec::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_rooms_of_two_regions_are_listed_from_either_within_a_second_of_a_change() {
    let cluster = us_and_eu_homed().await;
    let url = |e: &str| cluster.edge(e).node.ws_url();

    let mut u1 = Client::connect(&url("us-a")).await;
    join_with(
        &mut u1,
        json!({"room": "lobby-us", "public": true, "room_meta": {"map": "dust"}}),
    )
    .await;
    join_with(&mut u1, json!({"room": "hidden-us"})).await;
    let mut e1 = Client::connect(&url("eu-a")).await;
    join_with(&mut e1, json!({"room": "lobby-eu", "public": true})).await;
    join_with(&mut e1, json!({"room": "hidden-eu"})).await;
    wait_homes_known(&cluster, "us", 2).await;
    wait_homes_known(&cluster, "eu", 2).await;

    let mut lu = Client::connect(&url("us-a")).await;
    let mut le = Client::connect(&url("eu-a")).await;
    let both = |m: &BTreeMap<String, (u64, Vec<String>)>| {
        m.len() == 2
            && m.get("lobby-us") == Some(&(1, vec!["us".to_owned()]))
            && m.get("lobby-eu") == Some(&(1, vec!["eu".to_owned()]))
    };
    for l in [&mut lu, &mut le] {
        listed_within(l, json!({}), FRESH_WITHIN, "both regions' rooms", both).await;
        let page = list(l, json!({"prefix": "lobby-us"})).await;
        assert_eq!(page["items"][0]["meta"], json!({"map": "dust"}), "{page}");
    }

    // A member from eu joins the room homed in us: both listings show 2 members in both
    // regions within a second of its `joined`.
    let mut e2 = Client::connect(&url("eu-a")).await;
    join_with(&mut e2, json!({"room": "lobby-us"})).await;
    let two = |m: &BTreeMap<String, (u64, Vec<String>)>| {
        m.get("lobby-us") == Some(&(2, vec!["eu".to_owned(), "us".to_owned()]))
            && !m.contains_key("hidden-us")
            && !m.contains_key("hidden-eu")
    };
    let mut took = Vec::new();
    for l in [&mut lu, &mut le] {
        took.push(listed_within(l, json!({}), FRESH_WITHIN, "the join", two).await);
    }
    // …and a leave the same way.
    e2.send(json!({"type": "leave", "room": "lobby-us"})).await;
    e2.expect("left").await;
    let one = |m: &BTreeMap<String, (u64, Vec<String>)>| {
        m.get("lobby-us") == Some(&(1, vec!["us".to_owned()]))
    };
    for l in [&mut lu, &mut le] {
        took.push(listed_within(l, json!({}), FRESH_WITHIN, "the leave", one).await);
    }
    eprintln!("listings caught up after {took:?}");

    // Pages of one walk both regions' rooms once each, from either region.
    for l in [&mut lu, &mut le] {
        let mut walked = Vec::new();
        let mut cursor = Value::Null;
        for _ in 0..5 {
            let page = list(l, json!({"limit": 1, "cursor": cursor})).await;
            walked.extend(
                page["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["room"].as_str().unwrap().to_owned()),
            );
            match page.get("next") {
                Some(next) => cursor = next.clone(),
                None => break,
            }
        }
        assert_eq!(walked, ["lobby-eu", "lobby-us"]);
    }

    // eu cut off: us answers with its own rooms and says what is missing, in time.
    cluster.partition("eu");
    let sent = Instant::now();
    let page = list(&mut lu, json!({})).await;
    eprintln!("a listing with eu cut off took {:?}", sent.elapsed());
    assert!(
        sent.elapsed() < Duration::from_millis(1_500),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(page["partial"], true, "{page}");
    assert_eq!(page["unreachable"], json!(["eu"]), "{page}");
    assert_eq!(
        counts(&page).keys().map(String::as_str).collect::<Vec<_>>(),
        ["lobby-us"]
    );
    cluster.heal("eu");
    let us = cluster.replicas.iter().find(|r| r.region == "us").unwrap();
    let text = us.scrape().await;
    let partial = crate::support::metric(
        &text,
        r#"heliograph_coordinator_discovery_requests_total{outcome="partial"}"#,
    );
    assert!(partial.is_some_and(|n| n >= 1.0), "{partial:?}");
}
