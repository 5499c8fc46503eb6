//! Multi-process clusters of the real `heliograph-coordinator` binary, driven through its CLI.
//! Each replica has its own temporary data directory and port-0 listeners (read from the JSON
//! line it prints); children are killed when their guard drops.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_heliograph-coordinator");
const SECRET: &str = "process-test-secret-0123456789";
const STARTUP: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

/// A running replica; killed (SIGKILL) on drop.
struct Proc {
    id: u64,
    child: Child,
    raft: String,
    api: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(id: u64, dir: &Path, raft: &str, api: &str, extra: &[&str]) -> Child {
    Command::new(BIN)
        .args([
            "serve",
            "--id",
            &id.to_string(),
            "--raft-listen",
            raft,
            "--api-listen",
            api,
        ])
        .args(["--region", &format!("r{id}"), "--data-dir"])
        .arg(dir)
        .args(extra)
        .env("HELIOGRAPH_CLUSTER_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

impl Proc {
    fn start(id: u64, dir: &Path) -> Self {
        Self::start_at(id, dir, "127.0.0.1:0", "127.0.0.1:0")
    }

    fn start_at(id: u64, dir: &Path, raft: &str, api: &str) -> Self {
        let mut child = spawn(id, dir, raft, api, &[]);
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // The reader ends with the child's stdout, so the thread never outlives it.
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut proc = Self {
            id,
            child,
            raft: String::new(),
            api: String::new(),
        };
        let line = rx
            .recv_timeout(STARTUP)
            .expect("the replica did not print its addresses");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        proc.raft = v["raft"].as_str().unwrap().to_owned();
        proc.api = v["api"].as_str().unwrap().to_owned();
        proc
    }

    fn terminate(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "graceful shutdown exited with {status}");
                return;
            }
            std::thread::sleep(POLL);
        }
        panic!("node {} did not stop on SIGTERM", self.id);
    }
}

/// Runs an admin subcommand and returns its JSON output, or the error line.
fn cli(args: &[&str]) -> Result<Value, String> {
    let out = Command::new(BIN)
        .args(args)
        .env("HELIOGRAPH_CLUSTER_SECRET", SECRET)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn status(p: &Proc) -> Result<Value, String> {
    cli(&["status", "--api", &p.api])
}

fn add(leader: &Proc, p: &Proc) {
    let id = p.id.to_string();
    let region = format!("r{}", p.id);
    cli(&[
        "add",
        "--api",
        &leader.api,
        "--id",
        &id,
        "--raft",
        &p.raft,
        "--node-api",
        &p.api,
        "--region",
        &region,
    ])
    .unwrap();
}

/// Polls until `pred` holds for every replica's status (bounded by count and time).
fn wait_status(
    procs: &[&Proc],
    within: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut last = Vec::new();
    for _ in 0..10_000 {
        last = procs
            .iter()
            .map(|p| status(p).unwrap_or(Value::Null))
            .collect();
        if last.iter().all(&pred) {
            return last;
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(POLL);
    }
    panic!("{what}: not within {within:?}; last statuses: {last:#?}");
}

fn voters(v: &Value) -> Vec<u64> {
    v["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter(|m| m["voter"] == true)
                .map(|m| m["id"].as_u64().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

fn three(dirs: &[TempDir]) -> Vec<Proc> {
    let procs: Vec<Proc> = (1..=3)
        .map(|id| Proc::start(id, dirs[id as usize - 1].path()))
        .collect();
    let boot = cli(&["bootstrap", "--api", &procs[0].api]).unwrap();
    assert_eq!(boot["leader"], 1);
    add(&procs[0], &procs[1]);
    // Sent to a follower on purpose: the CLI follows the leader.
    add(&procs[1], &procs[2]);
    procs
}

#[test]
fn kill_the_leader_then_restart_everyone() {
    let dirs: Vec<TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut procs = three(&dirs);
    let refs: Vec<&Proc> = procs.iter().collect();
    let before = wait_status(&refs, STARTUP, "all agree on a leader", |v| {
        v["leader"] == 1 && voters(v) == [1, 2, 3]
    });
    let commit = before[0]["commit_index"].as_u64().unwrap();

    // kill -9 the leader; the survivors elect a new one within 3 s.
    let leader = procs.remove(0);
    let killed_at = Instant::now();
    drop(leader);
    let refs: Vec<&Proc> = procs.iter().collect();
    let after = wait_status(
        &refs,
        Duration::from_secs(3),
        "a new leader after kill -9",
        |v| v["leader"].as_u64().is_some_and(|l| l != 1),
    );
    eprintln!("new leader after {:?}", killed_at.elapsed());
    assert_eq!(after[0]["leader"], after[1]["leader"]);
    assert_eq!(after[0]["term"], after[1]["term"]);

    // Stop everyone and restart on the same directories and addresses.
    let addrs: Vec<(u64, String, String)> = std::iter::once((
        1,
        before[0]["members"][0]["raft_addr"]
            .as_str()
            .unwrap()
            .to_owned(),
        before[0]["members"][0]["api_addr"]
            .as_str()
            .unwrap()
            .to_owned(),
    ))
    .chain(procs.iter().map(|p| (p.id, p.raft.clone(), p.api.clone())))
    .collect();
    for p in procs {
        p.terminate();
    }
    let procs: Vec<Proc> = addrs
        .iter()
        .map(|(id, raft, api)| Proc::start_at(*id, dirs[*id as usize - 1].path(), raft, api))
        .collect();
    let refs: Vec<&Proc> = procs.iter().collect();
    // Each replica may briefly name the leader of an older term: wait until they agree.
    let agreed_by = Instant::now() + Duration::from_secs(10);
    let restarted = loop {
        let s = wait_status(
            &refs,
            Duration::from_secs(10),
            "a leader after a full restart",
            |v| {
                v["leader"].is_u64()
                    && voters(v) == [1, 2, 3]
                    && v["applied_index"].as_u64() >= Some(commit)
            },
        );
        if s.iter().all(|v| v["leader"] == s[0]["leader"]) || Instant::now() > agreed_by {
            break s;
        }
        std::thread::sleep(POLL);
    };
    let leader = restarted[0]["leader"].clone();
    assert!(restarted.iter().all(|v| v["leader"] == leader));
    assert_eq!(restarted[0]["cluster_id"], before[0]["cluster_id"]);
}

#[test]
fn grow_to_five_and_shrink_to_three() {
    let dirs: Vec<TempDir> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut procs = three(&dirs);
    for id in 4..=5 {
        let p = Proc::start(id, dirs[id as usize - 1].path());
        add(&procs[0], &p);
        procs.push(p);
    }
    let refs: Vec<&Proc> = procs.iter().collect();
    wait_status(&refs, STARTUP, "five voters", |v| {
        voters(v) == [1, 2, 3, 4, 5]
    });
    for id in [5, 4] {
        cli(&["remove", "--api", &procs[2].api, "--id", &id.to_string()]).unwrap();
    }
    let refs: Vec<&Proc> = procs[..3].iter().collect();
    wait_status(&refs, STARTUP, "three voters", |v| {
        voters(v) == [1, 2, 3] && v["members"].as_array().map(Vec::len) == Some(3)
    });
}

#[test]
fn bad_config_and_foreign_data_dirs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(1, dir.path());
    let boot = cli(&["bootstrap", "--api", &p.api]).unwrap();
    assert!(boot["cluster_id"].is_string());
    // Without the secret the replica refuses to talk.
    let out = Command::new(BIN)
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
        let out = spawn(id, dir.path(), "127.0.0.1:0", "127.0.0.1:0", extra)
            .wait_with_output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let child = Command::new(BIN)
        .args([
            "serve",
            "--id",
            "2",
            "--raft-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--region",
            "r",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("HELIOGRAPH_CLUSTER_SECRET", SECRET)
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
}
