//! Edges are disposable: when one drains (SIGTERM) or dies (kill -9), its clients resume on
//! another edge of the region with the same identity and rooms, and every signal is either
//! received exactly once, in order, or reported `expired` to its sender. Real processes: a
//! coordinator replica, two edges, the region's Redis.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::resumable::Session;
use crate::support::{self, Cluster, SessionStore, Spec, us_and_eu, us_region};
use serde_json::{Value, json};
use tokio::sync::watch;

/// The last signal of a client: its partner stops once it has it.
const FIN: u64 = u64::MAX;
const PAIRS: usize = 250;
/// Each client signals its partner this often.
const INTERVAL: Duration = Duration::from_millis(200);

fn signal(room: &str, to: &str, n: u64) -> Value {
    json!({"type": "signal", "room": room, "to": to, "kind": "custom", "data": {"n": n}, "ref": n})
}

#[derive(Debug, Default)]
struct Outcome {
    peer: String,
    partner: String,
    /// Signals sent, numbered from 0.
    sent: u64,
    /// The first number sent on the socket of the second edge.
    first_after_failover: Option<u64>,
    /// Numbers received from the partner, in arrival order.
    received: Vec<u64>,
    expired: Vec<u64>,
    peer_left: usize,
    stale_frames: u64,
}

/// One client: signals its partner every [`INTERVAL`] until `stop`, resumes on `other`
/// when its socket ends (after a `reconnect` notice it sends nothing more there), and
/// finishes once both FINs are through.
async fn client(
    mut s: Session,
    room: String,
    partner: String,
    other: String,
    mut stop: watch::Receiver<bool>,
    resumed: Arc<AtomicUsize>,
) -> Outcome {
    let mut out = Outcome {
        peer: s.peer_id.clone(),
        partner: partner.clone(),
        ..Outcome::default()
    };
    let mut tick = tokio::time::interval(INTERVAL);
    let mut moved = false;
    let mut told_to_leave = false;
    let mut fin_sent = false;
    let mut fin_seen = false;
    loop {
        if fin_sent && fin_seen {
            break;
        }
        tokio::select! {
            _ = tick.tick(), if !told_to_leave && !fin_sent => {
                if *stop.borrow() {
                    if s.send(signal(&room, &partner, FIN)).await {
                        fin_sent = true;
                    }
                } else if s.send(signal(&room, &partner, out.sent)).await {
                    if moved && out.first_after_failover.is_none() {
                        out.first_after_failover = Some(out.sent);
                    }
                    out.sent += 1;
                }
            }
            _ = stop.changed() => {}
            v = s.recv_within(Duration::from_secs(30)) => match v {
                Some(v) => record(&v, &mut out, &mut told_to_leave, &mut fin_seen),
                None => {
                    assert!(!moved, "{}: a second socket ended", out.peer);
                    out.stale_frames += s.stale_frames;
                    let (peer, token, last) = (s.peer_id.clone(), s.token.clone(), s.last_seq);
                    let (new, replay, _) = Session::resume(&other, peer, token, last).await;
                    for v in &replay {
                        record(v, &mut out, &mut told_to_leave, &mut fin_seen);
                    }
                    s = new;
                    moved = true;
                    told_to_leave = false;
                    resumed.fetch_add(1, Ordering::SeqCst);
                }
            },
        }
    }
    out.stale_frames += s.stale_frames;
    out
}

fn record(v: &Value, out: &mut Outcome, told_to_leave: &mut bool, fin_seen: &mut bool) {
    match v["type"].as_str() {
        Some("signal") => {
            assert_eq!(v["from"], out.partner.as_str());
            let n = v["data"]["n"].as_u64().unwrap();
            if n == FIN {
                *fin_seen = true;
            } else {
                out.received.push(n);
            }
        }
        Some("expired") => {
            let n = v["ref"].as_u64().unwrap();
            if n == FIN {
                *fin_seen = true;
            } else {
                out.expired.push(n);
            }
        }
        Some("peer-left") => out.peer_left += 1,
        Some("reconnect") => *told_to_leave = true,
        Some("pong") => {}
        _ => panic!("{}: unexpected {v}", out.peer),
    }
}

enum Failure {
    Drain,
    Kill,
}

async fn failover(failure: Failure) {
    // Every client must resume within the replicas' grace period to keep its rooms; a drain
    // spreads 500 clients' reconnections over its window, so the grace is longer here than
    // the other tests' 500 ms (the default is 10 s).
    let mut cluster = Cluster::start(Spec {
        replicas: &[(1, "us")],
        edges: &[("us-a", "us"), ("us-b", "us")],
        redis: &["us"],
        replica_args: &["--grace-ms", "5000"],
        ..Spec::default()
    })
    .await;
    let a_url = cluster.edge("us-a").node.ws_url();
    let b_url = cluster.edge("us-b").node.ws_url();

    // 250 two-peer rooms, everyone on edge A.
    let mut pairs = Vec::new();
    for i in 0..PAIRS {
        let room = format!("pair-{i}");
        let mut x = Session::connect(&a_url).await;
        let mut y = Session::connect(&a_url).await;
        x.send(json!({"type": "join", "room": room})).await;
        x.expect("joined").await;
        y.send(json!({"type": "join", "room": room})).await;
        y.expect("joined").await;
        x.expect("peer-joined").await;
        pairs.push((room, x, y));
    }
    let (stop_tx, stop) = watch::channel(false);
    let resumed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (room, x, y) in pairs {
        let (xid, yid) = (x.peer_id.clone(), y.peer_id.clone());
        for (s, partner) in [(x, yid), (y, xid)] {
            tasks.push(tokio::spawn(client(
                s,
                room.clone(),
                partner,
                b_url.clone(),
                stop.clone(),
                Arc::clone(&resumed),
            )));
        }
    }

    // Traffic flows; then edge A fails under it.
    let a = cluster.edges.iter_mut().find(|e| e.name == "us-a").unwrap();
    wait_until("traffic flows", || async {
        let (_, body) = a.node.get("/metrics").await;
        support::metric(
            &body,
            r#"heliograph_edge_messages_sent_total{ingress="ws",type="signal"}"#,
        )
        .is_some_and(|v| v >= 2.0 * PAIRS as f64)
    })
    .await;
    let failed_at = Instant::now();
    match failure {
        Failure::Drain => a.node.signal("TERM"),
        Failure::Kill => a.node.kill(),
    }
    let clients = 2 * PAIRS;
    wait_until("every client resumed", || async {
        resumed.load(Ordering::SeqCst) == clients
    })
    .await;
    let all_resumed = failed_at.elapsed();
    // Some more traffic on edge B, then every client sends its FIN.
    let b = &cluster.edge("us-b").node;
    let (_, body) = b.get("/metrics").await;
    let before = support::metric(
        &body,
        r#"heliograph_edge_messages_sent_total{ingress="ws",type="signal"}"#,
    )
    .unwrap_or(0.0);
    wait_until("traffic flows on edge B", || async {
        let (_, body) = b.get("/metrics").await;
        support::metric(
            &body,
            r#"heliograph_edge_messages_sent_total{ingress="ws",type="signal"}"#,
        )
        .is_some_and(|v| v >= before + 2.0 * PAIRS as f64)
    })
    .await;
    stop_tx.send(true).unwrap();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .unwrap()
                .unwrap(),
        );
    }

    let by_peer: std::collections::HashMap<&str, &Outcome> =
        outcomes.iter().map(|o| (o.peer.as_str(), o)).collect();
    let mut lost_before_kill = 0;
    let mut expired = 0;
    for o in &outcomes {
        assert_eq!(o.peer_left, 0, "{}: saw a peer leave", o.peer);
        assert_eq!(o.stale_frames, 0, "{}: got a frame twice", o.peer);
        let sender = by_peer[o.partner.as_str()];
        // In order and exactly once.
        assert!(
            o.received.windows(2).all(|w| w[0] < w[1]),
            "{}: out of order or duplicated: {:?}",
            o.peer,
            o.received
        );
        let received: HashSet<u64> = o.received.iter().copied().collect();
        let told: HashSet<u64> = sender.expired.iter().copied().collect();
        expired += told.len();
        let after = sender.first_after_failover.unwrap_or(sender.sent);
        for n in 0..sender.sent {
            let accounted = received.contains(&n) || told.contains(&n);
            match failure {
                Failure::Drain => assert!(
                    accounted,
                    "{} -> {}: signal {n} vanished; sent {}, first on B {:?}, received {:?}",
                    sender.peer, o.peer, sender.sent, sender.first_after_failover, o.received
                ),
                Failure::Kill if n >= after => {
                    assert!(
                        accounted,
                        "{} -> {}: signal {n}, sent after the kill, vanished",
                        sender.peer, o.peer
                    )
                }
                // Written to edge A's socket just before it was killed.
                Failure::Kill if !accounted => lost_before_kill += 1,
                Failure::Kill => {}
            }
        }
    }
    if let Failure::Drain = failure {
        assert_eq!(expired, 0, "nothing should expire in a drain");
    }
    let total: u64 = outcomes.iter().map(|o| o.sent).sum();
    eprintln!(
        "{clients} clients resumed within {all_resumed:?}; {total} signals; {expired} expired; \
         {lost_before_kill} in flight to the killed edge"
    );
}

async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_edge_hands_every_client_to_another_edge_losing_nothing() {
    failover(Failure::Drain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_edge_loses_nothing_sent_after_the_kill() {
    failover(Failure::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_peer_keeps_receiving_signals_from_another_region() {
    let mut cluster = us_and_eu(&["us", "eu"]).await;
    let mut x = Session::connect(&cluster.edge("us-a").node.ws_url()).await;
    let mut y = Session::connect(&cluster.edge("eu-a").node.ws_url()).await;
    x.send(json!({"type": "join", "room": "world"})).await;
    x.expect("joined").await;
    y.send(json!({"type": "join", "room": "world"})).await;
    y.expect("joined").await;
    x.expect("peer-joined").await;
    y.send(signal("world", &x.peer_id, 0)).await;
    assert_eq!(x.expect("signal").await["data"]["n"], 0);

    // X's edge drains: X resumes on the other edge of its region.
    let a = cluster.edges.iter_mut().find(|e| e.name == "us-a").unwrap();
    a.node.signal("TERM");
    x.expect("reconnect").await;
    assert!(
        x.recv_within(Duration::from_secs(10)).await.is_none(),
        "closed"
    );
    let (peer, token, last) = (x.peer_id.clone(), x.token.clone(), x.last_seq);
    let (mut x, replay, _) =
        Session::resume(&cluster.edge("us-b").node.ws_url(), peer, token, last).await;
    assert!(replay.is_empty(), "{replay:?}");

    // Y, in the other region, keeps signalling X. Until the rebind reaches Y's region a
    // signal may still head for the old edge; once one arrives, all later ones do.
    let mut n = 1;
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        y.send(signal("world", &x.peer_id, n)).await;
        n += 1;
        if let Some(v) = x.recv_within(Duration::from_millis(100)).await {
            assert_eq!(v["type"], "signal", "{v}");
            break v["data"]["n"].as_u64().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no cross-region signal reached the resumed peer"
        );
    };
    let mut got = vec![first];
    for m in n..n + 10 {
        y.send(signal("world", &x.peer_id, m)).await;
    }
    while got.last() != Some(&(n + 9)) {
        let v = x.expect("signal").await;
        got.push(v["data"]["n"].as_u64().unwrap());
    }
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "in order, once: {got:?}"
    );
    assert!((n..n + 10).all(|m| got.contains(&m)), "{got:?}");

    // And back the other way; nobody saw anyone leave.
    x.send(signal("world", &y.peer_id, 1)).await;
    let s = y.expect("signal").await;
    assert_eq!(s["from"], x.peer_id.as_str());
    y.send(json!({"type": "ping", "ref": "end"})).await;
    assert_eq!(y.expect("pong").await["ref"], "end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_returns_leaves_and_its_senders_on_other_edges_are_told() {
    let cluster = us_region().await;
    let mut gone = Session::connect(&cluster.edge("us-a").node.ws_url()).await;
    let mut sender = Session::connect(&cluster.edge("us-b").node.ws_url()).await;
    gone.send(json!({"type": "join", "room": "r"})).await;
    gone.expect("joined").await;
    sender.send(json!({"type": "join", "room": "r"})).await;
    sender.expect("joined").await;
    gone.expect("peer-joined").await;
    let gone_id = gone.peer_id.clone();
    let dropped = Instant::now();
    let _ = gone.drop_connection();
    // Wait until edge A noticed (its session is stored without an owner).
    let a = &cluster.edge("us-a").node;
    wait_until("edge A stored the detached session", || async {
        let (_, body) = a.get("/metrics").await;
        support::metric(&body, "heliograph_edge_sessions_detached_total").is_some_and(|v| v >= 1.0)
    })
    .await;
    for n in 0..3 {
        sender.send(signal("r", &gone_id, n)).await;
    }
    // The replicas' grace period is 500 ms: then the room sees it leave, and each signal
    // waiting for it comes back to its sender as `expired`.
    let mut expired = Vec::new();
    let mut left = None;
    while left.is_none() || expired.len() < 3 {
        let v = sender.recv().await;
        match v["type"].as_str() {
            Some("expired") => {
                assert_eq!(v["to"], gone_id.as_str());
                expired.push(v["ref"].as_u64().unwrap());
            }
            Some("peer-left") => left = Some(v),
            _ => panic!("unexpected {v}"),
        }
    }
    let left = left.unwrap();
    assert_eq!(left["peer_id"], gone_id.as_str());
    assert_eq!(left["reason"], "expired");
    assert!(dropped.elapsed() >= Duration::from_millis(500));
    expired.sort_unstable();
    assert_eq!(expired, vec![0, 1, 2]);
    assert!(
        !cluster.redis["us"].has_session(&gone_id).await,
        "the session is gone"
    );
}
