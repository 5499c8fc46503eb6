//! Smoke test of `heliograph-loadtest failover` at tiny size, in both modes: a real region
//! (`redis-server`, one coordinator replica, two edges sharing Redis and the session secret);
//! the tool kills or drains the first edge and its clients resume on the second. And once
//! against Redis as managed services run it (TLS, client certificates, an ACL user), in a
//! region the tool starts itself.
//!
//! Needs the workspace's binaries (`cargo build --workspace`) and `redis-server` on the PATH.

use std::process::Command;
use std::time::Duration;

use heliograph_testkit::cluster::{Cluster, Spec};
use heliograph_testkit::process;
use heliograph_testkit::redis_tls::{PASSWORD, TlsRedis};
use serde_json::Value;

use crate::LOADTEST;

/// The region: one replica, Redis, and two edges sharing both (and the session secret).
async fn region() -> Cluster {
    Cluster::start(Spec {
        replicas: &[(1, "local")],
        edges: &[("edge-a", "local"), ("edge-b", "local")],
        redis: &["local"],
        // A short drain keeps the test short.
        edge_args: &["--drain-window-ms", "300"],
        ..Spec::default()
    })
    .await
}

/// Runs `failover` against the region and returns its result file.
async fn failover(region: &Cluster, mode: &str) -> Value {
    let (a, b) = (&region.edge("edge-a").node, &region.edge("edge-b").node);
    let pid = a.pid().to_string();
    let target = [
        "--edge",
        &a.ws_url(),
        "--edge-pid",
        &pid,
        "--other",
        &b.ws_url(),
    ]
    .map(str::to_owned);
    run_failover(region.path(), mode, &target).await
}

/// Runs `failover --mode MODE` at tiny size with `target` (the edges, or the Redis of the
/// region it starts) and returns its result file, written in `dir`.
async fn run_failover(dir: &std::path::Path, mode: &str, target: &[String]) -> Value {
    let out = dir.join(format!("failover-{mode}.json"));
    let mut cmd = Command::new(LOADTEST);
    cmd.args(["failover", "--mode", mode])
        .args(["--clients", "20", "--rate", "20"])
        .args(["--before-secs", "0.5", "--after-secs", "0.5"])
        .args(["--resume-timeout", "20", "--source-addrs", "4"])
        .args(target)
        .arg("--json")
        .arg(&out);
    let run = tokio::task::spawn_blocking(move || process::run(cmd, Duration::from_secs(120)))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("failover --mode {mode}: {e:#}"));
    let output =
        String::from_utf8_lossy(&run.stdout).into_owned() + &String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "failover --mode {mode} failed: {output}\n(logs in {})",
        dir.display()
    );
    assert!(
        output.contains("failover (") && output.contains("resumed"),
        "{output}"
    );
    serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap()
}

fn check(v: &Value, mode: &str) {
    assert_eq!(v["scenario"], "failover");
    assert_eq!(v["settings"]["mode"], mode);
    assert_eq!(v["settings"]["clients"], 20);
    assert!(v["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(v["machine"]["cpu_model"].is_string());
    assert_eq!(v["runs"].as_array().unwrap().len(), 1);
    let r = &v["results"];
    let n = |k: &str| {
        r[k].as_u64()
            .unwrap_or_else(|| panic!("{k} is not a count: {r}"))
    };
    assert_eq!(r["mode"], mode);
    assert_eq!(n("clients"), 20, "{r}");
    assert_eq!(n("connect_failures"), 0, "{r}");
    assert_eq!(n("resumed"), 20, "every client resumes: {r}");
    assert_eq!(n("failed"), 0, "{r}");
    assert_eq!(n("resume_failed_errors"), 0, "{r}");
    assert!(n("resume_attempts") >= 20, "{r}");
    assert_eq!(n("unexpected_disconnects"), 0, "{r}");
    assert!(n("sent") > 0, "{r}");
    assert_eq!(n("lost"), 0, "no signal may be lost: {r}");
    assert_eq!(n("refused"), 0, "{r}");
    assert_eq!(n("duplicates"), 0, "exactly once: {r}");
    assert_eq!(n("reordered"), 0, "in order: {r}");
    assert_eq!(n("expired_but_received"), 0, "{r}");
    assert_eq!(
        n("received") + n("expired") + n("refused") + n("lost") + n("lost_in_flight_at_kill"),
        n("sent"),
        "every signal has exactly one fate: {r}"
    );
    if mode == "drain" {
        assert_eq!(n("lost_in_flight_at_kill"), 0, "{r}");
        assert_eq!(n("reconnect_notices"), 20, "{r}");
    }
    let ms = |k: &str| {
        r[k].as_f64()
            .unwrap_or_else(|| panic!("{k} is not a number: {r}"))
    };
    let (p50, p99, max) = (
        ms("resumed_p50_ms"),
        ms("resumed_p99_ms"),
        ms("resumed_max_ms"),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{r}");
    assert!(
        ms("noticed_max_ms") <= max,
        "a client resumes after it noticed: {r}"
    );
    assert!(r["generator_cpu_percent_of_core"].is_number(), "{r}");
    assert!(r["target_met"].is_boolean(), "{r}");
}

#[tokio::test]
async fn failover_after_kill() {
    let region = region().await;
    let v = failover(&region, "kill").await;
    check(&v, "kill");
}

#[tokio::test]
async fn failover_after_drain() {
    let region = region().await;
    let v = failover(&region, "drain").await;
    check(&v, "drain");
}

/// The region's Redis with TLS only, client certificates required and an ACL user (the
/// default user off): `failover` starts the region itself and hands the edges the URL, the CA
/// bundle, the client certificate and the password file; after the kill every client resumes
/// on the other edge through that Redis, and no signal is lost.
#[tokio::test]
async fn failover_after_kill_against_redis_with_tls_and_an_acl_user() {
    let dir = tempfile::tempdir().unwrap();
    let redis = TlsRedis::start(dir.path()).unwrap();
    let v = run_failover(dir.path(), "kill", &redis.edge_args()).await;
    check(&v, "kill");
    let started = &v["settings"]["started_region"];
    assert_eq!(started["url"], redis.url(), "{started}");
    assert_eq!(started["username"], "heliograph", "{started}");
    assert!(
        !v.to_string().contains(PASSWORD),
        "the password stays out of the result file"
    );
}
