//! Multi-process clusters of the real `heliograph-coordinator` binary, driven through its CLI.
//! Each replica has its own temporary data directory and port-0 listeners (read from the JSON
//! line it prints); children are killed when their guard drops.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use heliograph_testkit::bin;
use heliograph_testkit::http::get_blocking as http_get;
use heliograph_testkit::process::Launchable;
use heliograph_testkit::replica::{Admin, Replica, ReplicaOptions, voters};
use heliograph_testkit::wait::STARTUP;
use serde_json::Value;
use tempfile::TempDir;

/// Replica `id` of region `r{id}` on `dir`, with more `serve` flags.
fn options(id: u64, dir: &Path, extra: &[&str]) -> ReplicaOptions {
    let mut o = ReplicaOptions::new(id, &format!("r{id}"), dir).args(extra);
    "warn".clone_into(&mut o.rust_log);
    o
}

fn start(id: u64, dir: &Path) -> Replica {
    Replica::start(options(id, dir, &[]))
}

fn add(admin: &Admin, via: &Replica, p: &Replica) {
    admin.add(&via.api, p).unwrap();
}

/// `pred` holds for every replica's status.
fn all(pred: impl Fn(&Value) -> bool) -> impl Fn(&[Value]) -> bool {
    move |statuses| statuses.iter().all(&pred)
}

/// Like [`all`], and every replica names the same leader (statuses read during an election
/// can disagree for a moment).
fn agreed(pred: impl Fn(&Value) -> bool) -> impl Fn(&[Value]) -> bool {
    move |s| s.iter().all(&pred) && s.iter().all(|v| v["leader"] == s[0]["leader"])
}

/// Polls every replica's status until `pred` holds for them together.
fn wait_statuses(
    admin: &Admin,
    procs: &[Replica],
    within: Duration,
    what: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let apis: Vec<&str> = procs.iter().map(|p| p.api.as_str()).collect();
    admin
        .wait_statuses(&apis, within, what, pred)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn three(admin: &Admin, dirs: &[TempDir]) -> Vec<Replica> {
    let procs: Vec<Replica> = (1..=3)
        .map(|id| start(id, dirs[id as usize - 1].path()))
        .collect();
    let boot = admin.bootstrap(&procs[0].api).unwrap();
    assert_eq!(boot["leader"], 1);
    add(admin, &procs[0], &procs[1]);
    // Sent to a follower on purpose: the CLI follows the leader.
    add(admin, &procs[1], &procs[2]);
    procs
}

#[test]
fn kill_the_leader_then_restart_everyone() {
    let admin = Admin::new();
    let dirs: Vec<TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut procs = three(&admin, &dirs);
    let before = wait_statuses(
        &admin,
        &procs,
        STARTUP,
        "all agree on a leader",
        all(|v| v["leader"] == 1 && voters(v) == [1, 2, 3]),
    );
    let commit = before[0]["commit_index"].as_u64().unwrap();

    // kill -9 the leader; the survivors elect a new one within 3 s.
    let killed_at = Instant::now();
    procs[0].kill();
    let after = wait_statuses(
        &admin,
        &procs[1..],
        Duration::from_secs(3),
        "a new leader after kill -9",
        agreed(|v| v["leader"].as_u64().is_some_and(|l| l != 1)),
    );
    eprintln!("new leader after {:?}", killed_at.elapsed());
    assert_eq!(after[0]["leader"], after[1]["leader"]);
    assert_eq!(after[0]["term"], after[1]["term"]);

    // Stop everyone and restart on the same directories and addresses.
    for p in &mut procs[1..] {
        p.terminate();
    }
    for p in &mut procs {
        p.restart();
    }
    let restarted = wait_statuses(
        &admin,
        &procs,
        Duration::from_secs(10),
        "a leader after a full restart",
        agreed(|v| {
            v["leader"].is_u64()
                && voters(v) == [1, 2, 3]
                && v["applied_index"].as_u64() >= Some(commit)
        }),
    );
    let leader = restarted[0]["leader"].clone();
    assert!(restarted.iter().all(|v| v["leader"] == leader));
    assert_eq!(restarted[0]["cluster_id"], before[0]["cluster_id"]);
}

#[test]
fn grow_to_five_and_shrink_to_three() {
    let admin = Admin::new();
    let dirs: Vec<TempDir> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut procs = three(&admin, &dirs);
    for id in 4..=5 {
        let p = start(id, dirs[id as usize - 1].path());
        add(&admin, &procs[0], &p);
        procs.push(p);
    }
    wait_statuses(
        &admin,
        &procs,
        STARTUP,
        "five voters",
        all(|v| voters(v) == [1, 2, 3, 4, 5]),
    );
    for id in [5, 4] {
        admin
            .run(&["remove", "--api", &procs[2].api, "--id", &id.to_string()])
            .unwrap();
    }
    wait_statuses(
        &admin,
        &procs[..3],
        STARTUP,
        "three voters",
        all(|v| voters(v) == [1, 2, 3] && v["members"].as_array().map(Vec::len) == Some(3)),
    );
}

#[test]
fn bad_config_and_foreign_data_dirs_are_refused() {
    let admin = Admin::new();
    let dir = tempfile::tempdir().unwrap();
    let mut p = start(1, dir.path());
    // Alive but not ready until it belongs to a cluster with a leader.
    assert_eq!(http_get(&p.metrics, "/healthz").0, 200);
    assert_eq!(http_get(&p.metrics, "/readyz").0, 503);
    let boot = admin.bootstrap(&p.api).unwrap();
    assert!(boot["cluster_id"].is_string());
    assert_eq!(http_get(&p.metrics, "/readyz").0, 200);
    let (code, metrics) = http_get(&p.metrics, "/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("heliograph_raft_term"), "{metrics}");
    // Without the secret the replica refuses to talk.
    let out = Command::new(bin::path(bin::COORDINATOR).unwrap())
        .args([
            "status",
            "--api",
            &p.api,
            "--cluster-secret",
            "a-wrong-secret-of-enough-length",
        ])
        .env_remove("HELIOGRAPH_CLUSTER_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"));
    p.terminate();

    let refused = |id: u64, extra: &[&str]| {
        let out = options(id, dir.path(), extra)
            .command()
            .unwrap()
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let mut other = options(2, dir.path(), &[]);
    "r".clone_into(&mut other.region);
    let child = other
        .command()
        .unwrap()
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(child.status.code(), Some(64));
    let message = String::from_utf8_lossy(&child.stderr);
    assert!(message.contains("belongs to node 1"), "{message}");
    let (code, _) = refused(1, &["--cluster-id", "not-this-cluster"]);
    assert_eq!(code, Some(64));
    let (code, _) = refused(1, &["--cluster-secret", "short"]);
    assert_eq!(code, Some(64));

    // A webhook CA bundle that holds no certificate, as a flag and as a config file key.
    let bad_ca = dir.path().join("not-a-ca.pem");
    std::fs::write(&bad_ca, "not a certificate\n").unwrap();
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!("webhook_ca = {:?}\n", bad_ca.display().to_string()),
    )
    .unwrap();
    let flag = ["--webhook-ca", bad_ca.to_str().unwrap()];
    let file = ["--config", config.to_str().unwrap()];
    for extra in [&flag, &file] {
        let out = options(1, dir.path(), extra)
            .command()
            .unwrap()
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64));
        let message = String::from_utf8_lossy(&out.stderr);
        assert!(
            message.contains("--webhook-ca") && message.contains("holds no PEM certificate"),
            "{message}"
        );
    }
}

#[test]
fn snapshot_on_request_then_a_new_replica_catches_up() {
    let admin = Admin::new();
    let dirs: Vec<TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let first = start(1, dirs[0].path());
    admin.bootstrap(&first.api).unwrap();
    let status = admin.status(&first.api).unwrap();
    let applied = status["applied_index"].as_u64().unwrap();
    let built = admin.snapshot(&first.api).unwrap();
    assert!(built["index"].as_u64().unwrap() >= applied, "{built}");
    assert!(built["bytes"].as_u64().unwrap() > 0, "{built}");
    assert!(built["build_ms"].is_u64(), "{built}");
    let after = admin.status(&first.api).unwrap();
    assert_eq!(after["snapshot_index"], built["index"], "{after}");
    assert!(dirs[0].path().join("snapshot.json").is_file());
    // A snapshot on request changes nothing else: a replica added after it catches up.
    let second = start(2, dirs[1].path());
    add(&admin, &first, &second);
    wait_statuses(
        &admin,
        std::slice::from_ref(&second),
        STARTUP,
        "the new replica applied the snapshot's index",
        all(|v| v["applied_index"].as_u64() >= built["index"].as_u64()),
    );
}
