//! The region's Redis as managed services run it: TLS with the service's own CA and client
//! certificates, and an ACL user whose password comes from a file (never the command line).
//! A real `redis-server` with TLS on, plain TCP off and the default user disabled; two real
//! edges: the bus relays between them and a session resumes across them.

use heliograph_testkit::redis_tls::{PASSWORD, TlsRedis};
use heliograph_testkit::wait::DEADLINE;
use serde_json::{Value, json};

use crate::support::resumable::Session;
use crate::support::{Cluster, Spec, metric};

fn signal(room: &str, to: &str, n: u64) -> Value {
    json!({"type": "signal", "room": room, "to": to, "kind": "custom", "data": {"n": n}, "ref": n})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_and_the_bus_relays_over_tls_with_an_acl_user() {
    let dir = tempfile::tempdir().unwrap();
    let redis = TlsRedis::start(dir.path()).unwrap();

    let cluster = Cluster::start(Spec {
        replicas: &[(1, "us")],
        ..Spec::default()
    })
    .await;
    let mut args = vec!["--region".to_owned(), "us".to_owned()];
    args.extend(redis.edge_args());
    args.extend(["--redis-connections".to_owned(), "3".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = cluster.edge_on("us-a", &[1], &args);
    let b = cluster.edge_on("us-b", &[1], &args);
    for edge in [&a, &b] {
        heliograph_testkit::edge::wait_redis_up(&edge.addr, DEADLINE)
            .await
            .unwrap_or_else(|e| panic!("Redis never came up for an edge: {e:#}\n{}", edge.log()));
    }
    // The password went through the file, not the command line.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", a.pid())).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(PASSWORD),
        "the password is not in argv"
    );

    let mut x = Session::connect(&a.ws_url()).await;
    let mut y = Session::connect(&b.ws_url()).await;
    x.send(json!({"type": "join", "room": "tls"})).await;
    x.expect("joined").await;
    y.send(json!({"type": "join", "room": "tls"})).await;
    y.expect("joined").await;
    x.expect("peer-joined").await;

    // Edge to edge over the TLS bus.
    y.send(signal("tls", &x.peer_id, 1)).await;
    assert_eq!(x.expect("signal").await["data"]["n"], 1);
    let (_, body) = crate::support::http_get(&b.addr, "/metrics").await;
    let over_bus = metric(
        &body,
        r#"heliograph_edge_routing_decisions_total{path="region"}"#,
    );
    assert!(
        over_bus.is_some_and(|n| n >= 1.0),
        "relayed over Redis: {over_bus:?}"
    );

    // X's network drops; what Y sends meanwhile waits in X's pending buffer in Redis, and
    // X resumes on the other edge with all of it.
    let (peer, token, last) = x.drop_connection();
    heliograph_testkit::http::wait_until(&a.addr, "/metrics", DEADLINE, |_, body| {
        metric(body, "heliograph_edge_sessions_detached_total").is_some_and(|n| n >= 1.0)
    })
    .await
    .expect("edge A stored the detached session");
    for n in 2..=4 {
        y.send(signal("tls", &peer, n)).await;
    }
    let (_x, replay, resumed) = Session::resume(&b.ws_url(), peer, token, last).await;
    let got: Vec<u64> = replay
        .iter()
        .filter(|v| v["type"] == "signal")
        .map(|v| v["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        got,
        [2, 3, 4],
        "every signal sent while detached: {replay:?}"
    );
    assert_eq!(resumed["replayed"], 3);
}
