//! The region's Redis behind Sentinel: a master, a replica and three sentinels on loopback
//! (real `redis-server` processes). The master is killed with SIGKILL while two peers on
//! different edges signal each other: the edges follow the failover to the promoted replica
//! (Redis is up again within 10 s), and no signal is lost (the coordinator path carries the
//! gap).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use heliograph_testkit::ports::free_port;
use heliograph_testkit::process::Proc;
use heliograph_testkit::wait::{DEADLINE, until_blocking};
use serde_json::{Value, json};

use crate::support::resumable::Session;
use crate::support::{Cluster, Spec, metric};

const MASTER: &str = "hg-region";

/// Sends one command (RESP) and returns what the server answered within a short wait.
fn query(port: u16, args: &[&str]) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(300))).ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).ok()?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    (!out.is_empty()).then(|| String::from_utf8_lossy(&out).into_owned())
}

fn redis(args: &[String], name: &str) -> Proc {
    let mut cmd = Command::new("redis-server");
    cmd.args(args);
    Proc::spawn(cmd, name, None).unwrap()
}

fn signal(room: &str, to: &str, n: u64) -> Value {
    json!({"type": "signal", "room": room, "to": to, "kind": "custom", "data": {"n": n}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_follow_a_sentinel_failover_and_lose_no_signal() {
    let dir = tempfile::tempdir().unwrap();
    // Replication writes an RDB file for the full sync: into the test's directory.
    let data = dir.path().display().to_string();
    let plain = |port: u16| -> Vec<String> {
        [
            "--dir",
            &data,
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    };
    let (m, r) = (free_port().unwrap(), free_port().unwrap());
    let mut master = redis(&plain(m), "redis master");
    let mut replica_args = plain(r);
    replica_args.extend(["--replicaof".into(), "127.0.0.1".into(), m.to_string()]);
    let _replica = redis(&replica_args, "redis replica");
    until_blocking(DEADLINE, "the replica to sync with the master", || {
        query(r, &["INFO", "replication"])
            .filter(|info| info.contains("master_link_status:up"))
            .map(|_| ())
    })
    .unwrap();

    let mut sentinels = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..3 {
        let port = free_port().unwrap();
        let conf = dir.path().join(format!("sentinel-{i}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nsentinel monitor {MASTER} 127.0.0.1 {m} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 5000\nsentinel parallel-syncs {MASTER} 1\n"
            ),
        )
        .unwrap();
        sentinels.push(redis(
            &[conf.display().to_string(), "--sentinel".into()],
            "redis sentinel",
        ));
        addrs.push(format!("127.0.0.1:{port}"));
        // Each sentinel must know the replica and the other sentinels before a failover
        // can be agreed on.
        until_blocking(DEADLINE, "a sentinel to see its master", || {
            query(port, &["SENTINEL", "get-master-addr-by-name", MASTER]).map(|_| ())
        })
        .unwrap();
    }
    let sentinel_ports: Vec<u16> = addrs
        .iter()
        .map(|a| a.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    until_blocking(
        Duration::from_secs(30),
        "the sentinels to find each other and the replica",
        || {
            sentinel_ports
                .iter()
                .all(|p| {
                    query(*p, &["SENTINEL", "master", MASTER]).is_some_and(|info| {
                        let field = |name: &str| {
                            let at = info.find(&format!("{name}\r\n"))?;
                            info[at..].lines().nth(2).map(str::to_owned)
                        };
                        field("num-other-sentinels").as_deref() == Some("2")
                            && field("num-slaves").as_deref() == Some("1")
                    })
                })
                .then_some(())
        },
    )
    .unwrap();

    let cluster = Cluster::start(Spec {
        replicas: &[(1, "us")],
        ..Spec::default()
    })
    .await;
    let sentinel_list = addrs.join(",");
    let args = [
        "--region",
        "us",
        "--redis-sentinel",
        sentinel_list.as_str(),
        "--redis-sentinel-master",
        MASTER,
    ];
    let a = cluster.edge_on("us-a", &[1], &args);
    let b = cluster.edge_on("us-b", &[1], &args);
    for edge in [&a, &b] {
        heliograph_testkit::edge::wait_redis_up(&edge.addr, DEADLINE)
            .await
            .unwrap_or_else(|e| panic!("Redis never came up: {e:#}\n{}", edge.log()));
    }

    let mut x = Session::connect(&a.ws_url()).await;
    let mut y = Session::connect(&b.ws_url()).await;
    x.send(json!({"type": "join", "room": "ha"})).await;
    x.expect("joined").await;
    y.send(json!({"type": "join", "room": "ha"})).await;
    y.expect("joined").await;
    x.expect("peer-joined").await;

    // X signals Y every 25 ms (within the default rate limit); Y records what arrives. The master dies a while in.
    let y_peer = y.peer_id.clone();
    let receiver = tokio::spawn(async move {
        let mut got = BTreeSet::new();
        let mut duplicates = 0u64;
        while let Some(v) = y.recv_within(Duration::from_secs(5)).await {
            if v["type"] == "signal" && !got.insert(v["data"]["n"].as_u64().unwrap()) {
                duplicates += 1;
            }
        }
        (got, duplicates)
    });
    let mut sent = 0u64;
    let mut next = tokio::time::interval(Duration::from_millis(25));
    let start = Instant::now();
    let mut killed_at = None;
    let mut up_again_after = None;
    let limit = Instant::now() + Duration::from_secs(40);
    loop {
        next.tick().await;
        assert!(x.send(signal("ha", &y_peer, sent)).await, "send {sent}");
        sent += 1;
        if killed_at.is_none() && start.elapsed() > Duration::from_secs(1) {
            master.kill();
            killed_at = Some(Instant::now());
        }
        if let (Some(at), None) = (killed_at, up_again_after)
            && at.elapsed() > Duration::from_millis(500)
            && sent.is_multiple_of(8)
        {
            let mut up = true;
            for edge in [&a, &b] {
                let (_, body) = crate::support::http_get(&edge.addr, "/metrics").await;
                up &= metric(&body, "heliograph_edge_redis_up") == Some(1.0);
            }
            if up {
                up_again_after = Some(at.elapsed());
            }
        }
        // A second of traffic on the promoted master, then stop.
        if up_again_after
            .is_some_and(|d| killed_at.is_some_and(|at| at.elapsed() > d + Duration::from_secs(1)))
        {
            break;
        }
        assert!(
            Instant::now() < limit,
            "Redis did not come back within the test's time"
        );
    }
    let up_again = up_again_after.unwrap();
    assert!(
        up_again <= Duration::from_secs(10),
        "redis_up back after {up_again:?}"
    );
    // Any error X was told of would be a refused signal.
    while let Some(v) = x.recv_within(Duration::from_millis(200)).await {
        assert_ne!(v["type"], "error", "a signal was refused: {v}");
    }
    let (got, duplicates) = receiver.await.unwrap();
    let missing: Vec<u64> = (0..sent).filter(|n| !got.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "{} of {sent} signals lost (e.g. {:?}); redis_up back after {up_again:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    eprintln!(
        "sentinel failover: {sent} signals, 0 lost, {duplicates} duplicated; Redis up again on both edges {up_again:?} after the kill"
    );
}
