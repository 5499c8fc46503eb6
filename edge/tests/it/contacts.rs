//! Contact discovery with real processes: mutual contacts see each other come online and go
//! offline (on one node, across edges and across regions), a one-sided watcher learns
//! nothing, invites reach only mutual contacts, a resumed session keeps its contacts, and
//! the limits answer with their documented errors.

use base64::Engine;
use futures_util::SinkExt;
use serde_json::{Value, json};
use sha2::Digest;
use tokio_tungstenite::tungstenite::Message;

use crate::support::resumable::Session;
use crate::support::{self, Client, Cluster, Node, REGION_REPLICA_ARGS, Spec};

/// A contact hash as the SDK makes one (any 43 base64url characters will do for the server).
fn hash(handle: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(handle))
}

fn contacts(publish: &[&str], watch: &[&str]) -> Value {
    let publish: Vec<String> = publish.iter().map(|h| hash(h)).collect();
    let watch: Vec<String> = watch.iter().map(|h| hash(h)).collect();
    json!({"type": "contacts", "publish": publish, "watch": watch, "ref": "set"})
}

/// Frames up to the first of type `ty` (which is returned first), e.g. `contact` frames that
/// were queued before a `contacts-set`.
async fn until(c: &mut Client, ty: &str) -> (Value, Vec<Value>) {
    let mut before = Vec::new();
    loop {
        let v = c.recv().await;
        if v["type"] == ty {
            return (v, before);
        }
        before.push(v);
    }
}

/// Sets a client's contacts; returns the frames that came before `contacts-set`.
async fn set(c: &mut Client, publish: &[&str], watch: &[&str]) -> Vec<Value> {
    c.send(contacts(publish, watch)).await;
    let (reply, before) = until(c, "contacts-set").await;
    assert_eq!(reply["ref"], "set", "{reply}");
    before
}

/// Waits for the `contact` frame about `peer` with `online`, returning it; any other frame
/// on the way fails the test.
async fn contact(c: &mut Client, peer: &str, online: bool) -> Value {
    let v = c.expect("contact").await;
    assert_eq!(v["peer"], peer, "{v}");
    assert_eq!(v["online"], online, "{v}");
    v
}

/// Everything a client is sent up to the answer of a fresh ping (the fence), without `seq`.
async fn drain_to_fence(c: &mut Client, tag: &str) -> Vec<Value> {
    c.send(json!({"type": "ping", "ref": tag})).await;
    let mut out = Vec::new();
    loop {
        let mut v = c.recv().await;
        v.as_object_mut().unwrap().remove("seq");
        let done = v["type"] == "pong" && v["ref"] == tag;
        out.push(v);
        if done {
            return out;
        }
    }
}

async fn close(mut c: Client) {
    c.ws.send(Message::Close(None)).await.unwrap();
    // The server answers the close; reading on would only see the socket end.
}

fn invite(to: &str, tag: &str) -> Value {
    json!({"type": "invite", "to": to, "room": "call-1", "data": {"note": "hi"}, "ref": tag})
}

#[tokio::test]
async fn mutual_contacts_on_one_node_see_each_other_and_only_they_can_invite() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    node.wait_ready().await;
    let url = node.ws_url();

    let mut a = Client::connect(&url).await;
    assert_eq!(set(&mut a, &["alice"], &["bob"]).await, Vec::<Value>::new());
    let mut b = Client::connect(&url).await;
    let early = set(&mut b, &["bob"], &["alice"]).await;
    let mut seen_by_b = early.into_iter();
    let first = match seen_by_b.next() {
        Some(v) => v,
        None => b.expect("contact").await,
    };
    assert_eq!(first["type"], "contact", "{first}");
    assert_eq!(first["peer"], a.peer_id.as_str());
    assert_eq!(first["online"], true);
    assert_eq!(first["hash"], hash("alice"));
    assert_eq!(first["region"], "local");
    let v = contact(&mut a, &b.peer_id, true).await;
    assert_eq!(v["hash"], hash("bob"));

    // C watches alice, but alice does not watch carol: nothing either way.
    let mut c = Client::connect(&url).await;
    assert_eq!(
        set(&mut c, &["carol"], &["alice"]).await,
        Vec::<Value>::new()
    );
    assert_eq!(drain_to_fence(&mut c, "c1").await.len(), 1, "only the pong");

    // Invites: to the mutual contact, delivered with the server-stamped sender.
    a.send(invite(&b.peer_id, "i1")).await;
    let got = b.expect("invite").await;
    assert_eq!(got["from"], a.peer_id.as_str());
    assert_eq!(got["room"], "call-1");
    assert_eq!(got["data"], json!({"note": "hi"}));
    // To anyone else: the same refusal, whether the target exists or not.
    c.send(invite(&a.peer_id, "i2")).await;
    let refused = c.expect("error").await;
    assert_eq!(refused["code"], "not-a-contact");
    assert_eq!(refused["ref"], "i2");
    c.send(invite("00000000000000000000000000000000", "i2"))
        .await;
    let mut unknown = c.expect("error").await;
    let mut refused = refused;
    refused.as_object_mut().unwrap().remove("seq");
    unknown.as_object_mut().unwrap().remove("seq");
    assert_eq!(refused, unknown, "an unknown peer gets the same answer");
    a.send(invite(&c.peer_id, "i3")).await;
    assert_eq!(a.expect("error").await["code"], "not-a-contact");

    // B's session ends: A is told, C still hears nothing.
    let b_id = b.peer_id.clone();
    close(b).await;
    let v = contact(&mut a, &b_id, false).await;
    assert_eq!(v["hash"], hash("bob"));
    assert!(v.get("region").is_none(), "{v}");
    assert_eq!(drain_to_fence(&mut c, "c2").await.len(), 1, "only the pong");
    node.wait_metric(r#"heliograph_edge_invites_total{outcome="sent"}"#, |v| {
        v == 1.0
    })
    .await;
    node.wait_metric(
        r#"heliograph_edge_invites_total{outcome="not_a_contact"}"#,
        |v| v == 3.0,
    )
    .await;
}

#[tokio::test]
async fn contact_limits_answer_with_documented_errors() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        dir.path(),
        &[
            "--max-contact-publish",
            "1",
            "--max-contact-watch",
            "2",
            "--contacts-per-minute",
            "2",
            "--invites-per-minute",
            "1",
        ],
    );
    node.wait_ready().await;
    let mut a = Client::connect(&node.ws_url()).await;

    // Over a limit: the whole request is refused, nothing changes.
    a.send(contacts(&["x", "y"], &[])).await;
    let e = a.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("too-many-contacts"), Some("set"))
    );
    a.send(contacts(&[], &["x", "y", "z"])).await;
    assert_eq!(a.expect("error").await["code"], "too-many-contacts");
    // Within limits (the first refusal took one of the two updates a minute).
    assert!(set(&mut a, &["x"], &["y", "z"]).await.is_empty());
    a.send(contacts(&["x"], &[])).await;
    let e = a.expect("error").await;
    assert_eq!(e["code"], "rate-limited", "{e}");

    // Malformed hashes and the reserved room names.
    a.send(json!({"type": "contacts", "watch": ["not-a-hash"]}))
        .await;
    assert_eq!(a.expect("error").await["code"], "bad-field");
    a.send(json!({"type": "join", "room": format!("~contact/{}", hash("y"))}))
        .await;
    assert_eq!(a.expect("error").await["code"], "invalid-room");

    // Invites: one a minute.
    a.send(invite("00000000000000000000000000000000", "i1"))
        .await;
    assert_eq!(a.expect("error").await["code"], "not-a-contact");
    a.send(invite("00000000000000000000000000000000", "i2"))
        .await;
    assert_eq!(a.expect("error").await["code"], "rate-limited");

    for (sample, want) in [
        (
            r#"heliograph_edge_contacts_requests_total{outcome="too_many"}"#,
            1.0,
        ),
        (
            r#"heliograph_edge_contacts_requests_total{outcome="ok"}"#,
            1.0,
        ),
        (
            r#"heliograph_edge_contacts_requests_total{outcome="rate_limited"}"#,
            1.0,
        ),
        (
            r#"heliograph_edge_invites_total{outcome="rate_limited"}"#,
            1.0,
        ),
        (
            r#"heliograph_edge_errors_total{code="too-many-contacts"}"#,
            2.0,
        ),
        ("heliograph_edge_contact_watches", 2.0),
        ("heliograph_edge_contact_published", 1.0),
    ] {
        node.wait_metric(sample, |v| v == want).await;
    }
    // The sets are session state: they go when the session ends.
    close(a).await;
    node.wait_metric("heliograph_edge_contact_watches", |v| v == 0.0)
        .await;
}

/// Regions us and eu, homed, with an edge each.
async fn us_and_eu_homed() -> Cluster {
    Cluster::start(Spec {
        replicas: &[(1, "us"), (2, "eu")],
        edges: &[("us-a", "us"), ("eu-a", "eu")],
        replica_args: REGION_REPLICA_ARGS,
        homed: true,
        ..Spec::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_regions_mutual_contacts_see_each_other_and_a_one_sided_watcher_learns_nothing() {
    let cluster = us_and_eu_homed().await;
    let us = cluster.edge("us-a").node.ws_url();
    let eu = cluster.edge("eu-a").node.ws_url();

    // B (eu) and C (eu) both watch alice; only B is watched back by alice.
    let mut b = Client::connect(&eu).await;
    assert!(set(&mut b, &["bob"], &["alice"]).await.is_empty());
    let mut c = Client::connect(&eu).await;
    assert!(set(&mut c, &["carol"], &["alice"]).await.is_empty());
    assert_eq!(drain_to_fence(&mut c, "before").await.len(), 1);

    // A comes online in us: A and B are told about each other, with their regions.
    let mut a = Client::connect(&us).await;
    let a_id = a.peer_id.clone();
    let early = set(&mut a, &["alice"], &["bob"]).await;
    let seen = match early.into_iter().next() {
        Some(v) => v,
        None => a.expect("contact").await,
    };
    assert_eq!(
        (
            seen["peer"].as_str(),
            seen["online"].as_bool(),
            seen["region"].as_str()
        ),
        (Some(b.peer_id.as_str()), Some(true), Some("eu")),
        "{seen}"
    );
    let v = contact(&mut b, &a_id, true).await;
    assert_eq!(v["region"], "us");
    // B's edge has applied A's memberships (C's edge too: it is the same edge). What C sees
    // while A is online, up to a fence:
    c.send(invite(&a_id, "probe")).await;
    let online = drain_to_fence(&mut c, "fence").await;

    // Invites cross regions, to mutual contacts only.
    a.send(invite(&b.peer_id, "i1")).await;
    let got = b.expect("invite").await;
    assert_eq!(got["from"], a_id.as_str());
    b.send(invite(&c.peer_id, "i2")).await;
    assert_eq!(b.expect("error").await["code"], "not-a-contact");

    // B goes offline, and comes back as a new session: A sees both.
    let b_id = b.peer_id.clone();
    close(b).await;
    contact(&mut a, &b_id, false).await;
    let mut b2 = Client::connect(&eu).await;
    let early = set(&mut b2, &["bob"], &["alice"]).await;
    if early.is_empty() {
        contact(&mut b2, &a_id, true).await;
    }
    contact(&mut a, &b2.peer_id, true).await;

    // A goes offline: B2 is told; C sees exactly what it saw while A was online.
    close(a).await;
    contact(&mut b2, &a_id, false).await;
    c.send(invite(&a_id, "probe")).await;
    let offline = drain_to_fence(&mut c, "fence").await;
    assert_eq!(online, offline, "C learns nothing from A coming and going");
    assert_eq!(online.len(), 2, "{online:?}");
    assert_eq!(online[0]["code"], "not-a-contact");
    assert_eq!(drain_to_fence(&mut b2, "end").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumed_on_another_edge_keeps_its_contacts() {
    let cluster = support::us_region().await;
    let url_a = cluster.edge("us-a").node.ws_url();
    let url_b = cluster.edge("us-b").node.ws_url();
    let mut a = Session::connect(&url_a).await;
    a.send(contacts(&["alice"], &["bob"])).await;
    a.expect("contacts-set").await;
    let mut b = Client::connect(&url_b).await;
    let early = set(&mut b, &["bob"], &["alice"]).await;
    if early.is_empty() {
        contact(&mut b, &a.peer_id, true).await;
    }
    let v = a.expect("contact").await;
    assert_eq!(
        (v["peer"].as_str(), v["online"].as_bool()),
        (Some(b.peer_id.as_str()), Some(true))
    );

    // A's connection is lost; it resumes on the other edge within the grace period.
    let (a_id, token, last_seq) = a.drop_connection();
    cluster
        .edge("us-a")
        .node
        .wait_metric("heliograph_edge_sessions_detached_total", |v| v >= 1.0)
        .await;
    let (mut a, _replay, _resumed) = Session::resume(&url_b, a_id.clone(), token, last_seq).await;

    // Its contacts came with it: B can invite it on its new edge, and it B.
    b.send(invite(&a_id, "i1")).await;
    loop {
        let v = a.recv().await;
        match v["type"].as_str() {
            // The new edge tells it who is online now.
            Some("contact") => assert_eq!(v["online"], true, "{v}"),
            Some("invite") => {
                assert_eq!(v["from"], b.peer_id.as_str());
                break;
            }
            _ => panic!("unexpected {v}"),
        }
    }
    a.send(invite(&b.peer_id, "i2")).await;
    assert_eq!(b.expect("invite").await["from"], a_id.as_str());
    // B never saw A go offline.
    assert_eq!(drain_to_fence(&mut b, "end").await.len(), 1);
}

#[tokio::test]
async fn a_contact_whose_connection_is_lost_stays_online_until_its_grace_period_ends() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--detach-grace-ms", "1500"]);
    node.wait_ready().await;
    let mut a = Client::connect(&node.ws_url()).await;
    assert!(set(&mut a, &["alice"], &["bob"]).await.is_empty());
    let mut b = Session::connect(&node.ws_url()).await;
    b.send(contacts(&["bob"], &["alice"])).await;
    let b_id = b.peer_id.clone();
    contact(&mut a, &b_id, true).await;

    // Detached, not gone: nothing yet.
    let _ = b.drop_connection();
    node.wait_metric("heliograph_edge_sessions_detached_total", |v| v >= 1.0)
        .await;
    assert_eq!(drain_to_fence(&mut a, "detached").await.len(), 1);
    // The grace period ends: offline.
    contact(&mut a, &b_id, false).await;
}
