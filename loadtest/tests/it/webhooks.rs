//! A dead webhook receiver does not slow signaling: `relay` against an edge of a one-replica
//! cluster whose webhooks go to a receiver that never answers, and, in the same run, against
//! the same cluster shape without webhooks. The relay p99 must stay within noise, and the
//! replicated outbox within its bound (the oldest records dropped, counted).

use std::ffi::OsStr;
use std::process::Command;
use std::time::Duration;

use heliograph_testkit::cluster::{Cluster, Spec};
use heliograph_testkit::http::metric;
use heliograph_testkit::process;
use heliograph_testkit::webhook::{Policy, Receiver};
use serde_json::Value;

use crate::LOADTEST;

/// Records the outbox may hold: far fewer than the run's joins make, so it must drop.
const QUEUE_RECORDS: &str = "20";
/// How much worse the p99 with the dead receiver may be: runs this short on a shared 2-core
/// machine vary by tens of percent between identical runs.
const P99_RATIO_LIMIT: f64 = 1.5;
/// Absolute slack on top, for p99s of a few hundred microseconds.
const P99_SLACK_US: f64 = 2_000.0;

const EDGE_ARGS: &[&str] = &[
    "--rate-limit-per-second",
    "1000000",
    "--rate-limit-burst",
    "1000000",
];

async fn cluster(replica_args: &[&str]) -> Cluster {
    Cluster::start(Spec {
        replicas: &[(1, "us")],
        edges: &[("a", "us")],
        replica_args,
        edge_args: EDGE_ARGS,
        ..Spec::default()
    })
    .await
}

/// One short relay run (rooms of two, each join a registry write) against `cluster`'s edge;
/// returns the results.
fn relay(cluster: &Cluster) -> Value {
    let node = &cluster.edge("a").node;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("relay.json");
    let url = node.ws_url();
    let pid = node.pid().to_string();
    let args = [
        "relay",
        "--url",
        &url,
        "--clients",
        "40",
        "--window",
        "2",
        "--duration",
        "3",
        "--warmup",
        "0.5",
        "--server-pid",
        &pid,
        "--out",
    ];
    let mut cmd = Command::new(LOADTEST);
    cmd.args(args.iter().map(OsStr::new)).arg(&out);
    let run = process::run(cmd, Duration::from_secs(60)).unwrap();
    assert!(
        run.status.success(),
        "relay failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let r = v["results"].clone();
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(r["sent"], r["received"], "{r}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_does_not_slow_the_relay() {
    let receiver = Receiver::start(Policy::Never).await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("hook.secret");
    std::fs::write(&secret_file, "webhook-secret-0123456789").unwrap();
    let hook = format!("hook={}", receiver.url());
    let secret = format!("hook={}", secret_file.display());
    let hooked_args = [
        "--webhook",
        &hook,
        "--webhook-secret-file",
        &secret,
        "--webhook-queue-records",
        QUEUE_RECORDS,
        "--webhook-timeout-ms",
        "2000",
    ];

    let plain = cluster(&[]).await;
    let baseline = tokio::task::block_in_place(|| relay(&plain));
    drop(plain);
    let hooked = cluster(&hooked_args).await;
    let with_hooks = tokio::task::block_in_place(|| relay(&hooked));

    let p99 = |r: &Value| r["rtt"]["p99_us"].as_f64().unwrap();
    let (base, dead) = (p99(&baseline), p99(&with_hooks));
    eprintln!("relay p99: {base:.0} µs without webhooks, {dead:.0} µs with a dead receiver");
    assert!(
        dead <= base * P99_RATIO_LIMIT + P99_SLACK_US,
        "p99 {dead:.0} µs with a dead receiver vs {base:.0} µs without"
    );

    // The receiver was tried (and never answered), and the outbox stayed bounded.
    assert!(!receiver.received().is_empty(), "no delivery was attempted");
    let text = hooked.replica(1).scrape().await;
    let queued = metric(&text, "heliograph_coordinator_webhooks_queued").unwrap();
    let dropped = metric(&text, "heliograph_coordinator_webhooks_dropped_total").unwrap();
    let limit: f64 = QUEUE_RECORDS.parse().unwrap();
    assert!(queued <= limit, "{queued} records queued, limit {limit}");
    assert!(
        dropped > 0.0,
        "80 joins' records must overflow {limit}: {text}"
    );
}
