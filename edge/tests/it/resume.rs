//! Resumable sessions on a single node (sessions in memory): a peer whose socket drops
//! comes back with the same id and rooms and gets what was sent meanwhile; one that never
//! comes back is reported gone and its senders are told `expired`; tokens are checked.

use std::time::{Duration, Instant};

use crate::support::resumable::Session;
use crate::support::{self, Client, Node, metric};
use serde_json::{Value, json};

const SECRET: &str = "resume-test-secret-0123456789";

fn signal(to: &str, n: u64) -> Value {
    json!({"type": "signal", "room": "r", "to": to, "kind": "custom", "data": {"n": n}, "ref": n})
}

/// Waits until the edge has stored `n` detached sessions (it noticed the dropped sockets).
async fn wait_detached(node: &Node, n: f64) {
    let deadline = Instant::now() + support::DEADLINE;
    loop {
        let (_, body) = node.get("/metrics").await;
        if metric(&body, "heliograph_edge_sessions_detached_total").is_some_and(|v| v >= n) {
            return;
        }
        assert!(Instant::now() < deadline, "the drop was never noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two sessions in room "r".
async fn pair(node: &Node) -> (Session, Session) {
    let mut a = Session::connect(&node.ws_url()).await;
    let mut b = Session::connect(&node.ws_url()).await;
    a.send(json!({"type": "join", "room": "r"})).await;
    a.expect("joined").await;
    b.send(json!({"type": "join", "room": "r"})).await;
    b.expect("joined").await;
    a.expect("peer-joined").await;
    (a, b)
}

#[tokio::test]
async fn a_dropped_peer_resumes_with_its_id_rooms_and_missed_signals() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--session-secret", SECRET]);
    let (mut a, b) = pair(&node).await;
    let (b_id, token, last_seq) = b.drop_connection();
    wait_detached(&node, 1.0).await;

    // Sent while B has no socket: kept for it, in order.
    for n in 0..5 {
        a.send(signal(&b_id, n)).await;
    }
    // A's frames are handled in order: once this is answered, all five were routed.
    a.send(json!({"type": "ping", "ref": "routed"})).await;
    assert_eq!(a.expect("pong").await["ref"], "routed");
    let (mut b, replay, resumed) =
        Session::resume(&node.ws_url(), b_id.clone(), token, last_seq).await;
    let got: Vec<u64> = replay
        .iter()
        .map(|v| {
            assert_eq!(v["type"], "signal", "{v}");
            assert_eq!(v["from"], a.peer_id.as_str());
            v["data"]["n"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
    assert_eq!(resumed["replayed"], 5);

    // Same id, same room, both ways, and A never saw B leave.
    b.send(signal(&a.peer_id, 99)).await;
    let s = a.expect("signal").await;
    assert_eq!(s["from"], b_id.as_str());
    a.send(signal(&b_id, 100)).await;
    assert_eq!(b.expect("signal").await["data"]["n"], 100);
    a.send(json!({"type": "ping", "ref": "end"})).await;
    assert_eq!(
        a.expect("pong").await["ref"],
        "end",
        "no peer-left before it"
    );
    assert_eq!(a.stale_frames + b.stale_frames, 0);

    let (_, body) = node.get("/metrics").await;
    assert_eq!(
        metric(&body, r#"heliograph_edge_resumes_total{result="ok"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(&body, "heliograph_edge_signals_replayed_total"),
        Some(5.0)
    );
}

/// A sends B six signals; B reads (and counts) the first three. Returns B's `last_seq`.
async fn six_sent_three_read(a: &mut Session, b: &mut Session) -> u64 {
    let b_id = b.peer_id.clone();
    for n in 0..6 {
        a.send(signal(&b_id, n)).await;
    }
    for n in 0..3 {
        assert_eq!(b.expect("signal").await["data"]["n"], n);
    }
    b.last_seq
}

#[tokio::test]
async fn frames_the_client_had_not_read_are_replayed_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--session-secret", SECRET]);
    let (mut a, mut b) = pair(&node).await;
    // B reads three of them, then its connection is lost: it claims what it read.
    let read_up_to = six_sent_three_read(&mut a, &mut b).await;
    // Wait until the edge wrote the rest to B's socket (B reads them off the wire but
    // does not count them), so they are in the replay window, not the pending buffer.
    for _ in 0..3 {
        b.expect("signal").await;
    }
    let (b_id, token, _) = b.drop_connection();
    let (mut b, replay, resumed) = Session::resume(&node.ws_url(), b_id, token, read_up_to).await;
    let got: Vec<u64> = replay
        .iter()
        .map(|v| v["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(got, vec![3, 4, 5]);
    assert_eq!(resumed["replayed"], 3);
    a.send(signal(&b.peer_id, 6)).await;
    assert_eq!(b.expect("signal").await["data"]["n"], 6);
}

#[tokio::test]
async fn acknowledged_frames_leave_the_window_and_everything_after_is_still_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--session-secret", SECRET]);
    let (mut a, mut b) = pair(&node).await;
    // B acknowledges what it read, on an ordinary request.
    let acked = six_sent_three_read(&mut a, &mut b).await;
    b.send(json!({"type": "ping", "ref": "ack", "ack": acked}))
        .await;
    for _ in 0..3 {
        b.expect("signal").await;
    }
    assert_eq!(b.expect("pong").await["ref"], "ack");
    // An `ack` that is not a sequence number is refused.
    a.send(json!({"type": "ping", "ref": "bad", "ack": "3"}))
        .await;
    let err = a.expect("error").await;
    assert_eq!(err["code"], "bad-field");
    assert_eq!(err["ref"], "bad");

    // Resuming from the acknowledged point replays the rest, exactly once.
    let (b_id, token, _) = b.drop_connection();
    let (b2, replay, resumed) =
        Session::resume(&node.ws_url(), b_id.clone(), token.clone(), acked).await;
    let got: Vec<&str> = replay.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(
        got,
        vec!["signal", "signal", "signal", "pong"],
        "{replay:?}"
    );
    let ns: Vec<u64> = replay[..3]
        .iter()
        .map(|v| v["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, vec![3, 4, 5]);
    assert_eq!(resumed["replayed"], 4);

    // Frames up to the ack are gone: asking for them again is refused, not half served.
    let token = resumed["resume_token"].as_str().unwrap().to_owned();
    let (b_id, _, _) = b2.drop_connection();
    wait_detached(&node, 2.0).await;
    let mut c = Session::connect(&node.ws_url()).await;
    c.send(json!({"type": "resume", "token": token, "last_seq": acked - 1, "ref": "old"}))
        .await;
    let err = c.expect("error").await;
    assert_eq!(err["code"], "resume-failed", "{err}");
    assert_ne!(c.peer_id, b_id);
}

#[tokio::test]
async fn a_peer_that_never_returns_leaves_and_its_senders_are_told() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        dir.path(),
        &[
            "--session-secret",
            SECRET,
            "--detach-grace-ms",
            "1000",
            "--pending-signals",
            "3",
        ],
    );
    let (mut a, b) = pair(&node).await;
    let (b_id, _, _) = b.drop_connection();
    let dropped = Instant::now();
    wait_detached(&node, 1.0).await;
    for n in 0..4 {
        a.send(signal(&b_id, n)).await;
    }
    // The buffer holds three: the fourth is refused at once.
    let first = a.expect("expired").await;
    assert_eq!(first["to"], b_id.as_str());
    assert_eq!(first["room"], "r");
    assert_eq!(first["ref"], 3);
    // After the grace period: the other three, and B's departure.
    let mut expired = Vec::new();
    let left = loop {
        let v = a.recv().await;
        match v["type"].as_str() {
            Some("expired") => expired.push(v["ref"].as_u64().unwrap()),
            Some("peer-left") => break v,
            _ => panic!("unexpected {v}"),
        }
    };
    assert!(dropped.elapsed() >= Duration::from_millis(1_000));
    assert_eq!(left["peer_id"], b_id.as_str());
    assert_eq!(left["reason"], "expired");
    // The notices may trail the departure by a moment.
    while expired.len() < 3 {
        let v = a.expect("expired").await;
        expired.push(v["ref"].as_u64().unwrap());
    }
    expired.sort_unstable();
    assert_eq!(expired, vec![0, 1, 2]);
    let (_, body) = node.get("/metrics").await;
    assert_eq!(
        metric(&body, "heliograph_edge_signals_expired_total"),
        Some(4.0)
    );
}

/// Sends `resume` with `token` on a fresh socket; returns the error (the socket stays usable
/// as the fresh session of its `welcome`).
async fn refused(node: &Node, token: &str) -> Value {
    let mut c = Client::connect(&node.ws_url()).await;
    c.send(json!({"type": "resume", "token": token, "last_seq": 1, "ref": "x"}))
        .await;
    let err = c.expect("error").await;
    assert_eq!(err["code"], "resume-failed", "{err}");
    assert_eq!(err["ref"], "x");
    c.join("after").await;
    err
}

#[tokio::test]
async fn forged_expired_and_foreign_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        dir.path(),
        &[
            "--session-secret",
            SECRET,
            "--cluster-name",
            "one",
            "--resume-token-ttl-ms",
            "1000",
        ],
    );
    let other_dir = tempfile::tempdir().unwrap();
    let other_cluster = Node::start(
        other_dir.path(),
        &[
            "--session-secret",
            "another-secret-0123456789",
            "--cluster-name",
            "two",
        ],
    );
    let same_secret_dir = tempfile::tempdir().unwrap();
    let same_secret = Node::start(
        same_secret_dir.path(),
        &["--session-secret", SECRET, "--cluster-name", "two"],
    );

    let victim = Session::connect(&node.ws_url()).await;
    let (_, token, _) = victim.drop_connection();

    // A token whose signature was tampered with.
    let dot = token.find('.').unwrap();
    let first = &token[dot + 1..dot + 2];
    let forged = format!(
        "{}.{}{}",
        &token[..dot],
        if first == "A" { "B" } else { "A" },
        &token[dot + 2..]
    );
    assert!(
        refused(&node, &forged).await["message"]
            .as_str()
            .unwrap()
            .contains("signature")
    );
    assert!(
        refused(&node, "not-a-token").await["message"]
            .as_str()
            .unwrap()
            .contains("malformed")
    );

    // Tokens of other clusters: another secret, or the same secret and another name.
    let foreign = Session::connect(&other_cluster.ws_url()).await.token;
    assert!(
        refused(&node, &foreign).await["message"]
            .as_str()
            .unwrap()
            .contains("signature")
    );
    let same_secret_token = Session::connect(&same_secret.ws_url()).await.token;
    let err = refused(&node, &same_secret_token).await;
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("another region or cluster"),
        "{err}"
    );

    // The victim's own token, once expired. (Waiting for the clock is the point here.)
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert!(
        refused(&node, &token).await["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );

    let (_, body) = node.get("/metrics").await;
    assert_eq!(
        metric(
            &body,
            r#"heliograph_edge_resumes_total{result="bad_token"}"#
        ),
        Some(5.0)
    );
    assert_eq!(
        metric(&body, r#"heliograph_edge_resumes_total{result="ok"}"#),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_client_close_ends_the_session_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--session-secret", SECRET]);
    let (mut a, mut b) = pair(&node).await;
    let token = b.token.clone();
    b.client.ws.close(None).await.unwrap();
    let left = a.expect("peer-left").await;
    assert_eq!(left["reason"], "disconnected");
    let err = refused(&node, &token).await;
    assert!(err["message"].as_str().unwrap().contains("ended"), "{err}");
}

/// The `welcome` is not kept for a replay (the client holds the token it carried): a resume
/// that names no `last_seq`, or 0, gets what followed the welcome, not a gap.
#[tokio::test]
async fn a_resume_without_last_seq_replays_what_followed_the_welcome() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--session-secret", SECRET]);
    let (mut a, b) = pair(&node).await;
    let (b_id, token, _) = b.drop_connection();
    wait_detached(&node, 1.0).await;
    a.send(signal(&b_id, 7)).await;
    a.send(json!({"type": "ping", "ref": "routed"})).await;
    assert_eq!(a.expect("pong").await["ref"], "routed");

    let mut c = Client::connect(&node.ws_url()).await;
    c.send(json!({"type": "resume", "token": token, "ref": "r"}))
        .await;
    // B's window after its welcome: `joined` (seq 2), then the signal that waited.
    let joined = c.expect("joined").await;
    assert_eq!(joined["seq"], 2, "{joined}");
    let s = c.expect("signal").await;
    assert_eq!(s["data"]["n"], 7);
    let resumed = c.expect("resumed").await;
    assert_eq!(resumed["peer_id"], b_id.as_str());
    assert_eq!(resumed["replayed"], 2);
}
