//! Smoke test of `heliograph-loadtest failover` at tiny size, in both modes: a real region
//! (`redis-server`, one coordinator replica, two edges sharing Redis and the session secret);
//! the tool kills or drains the first edge and its clients resume on the second.
//!
//! Needs the workspace's binaries next to this test (`cargo build -p heliograph-edge -p
//! heliograph-coordinator`) and `redis-server` on the PATH.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const LOADTEST: &str = env!("CARGO_BIN_EXE_heliograph-loadtest");
const CLUSTER_SECRET: &str = "failover-smoke-cluster-secret-0123456789";
const SESSION_SECRET: &str = "failover-smoke-session-secret";
const STARTUP: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

/// Kills the child process when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/failover-… → target/<profile>/NAME
    let path = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p heliograph-edge -p heliograph-coordinator` first",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `ok` until it holds, or panics with `what` after the start-up deadline.
fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < STARTUP, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

/// One HTTP GET on a fresh connection: the whole response, or "" when it fails.
fn http_get(addr: &str, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let mut body = String::new();
    if s.write_all(request.as_bytes()).is_ok() {
        let _ = s.read_to_string(&mut body);
    }
    body
}

/// Starts `cmd` (its stderr to `log`) and returns it with its first stdout line as JSON.
fn start_reporting(mut cmd: Command, log: &Path) -> (Guard, Value) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = Guard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    // Ends with the child's stdout, so the thread never outlives it.
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining, so that the child never blocks on a full pipe.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    let line = rx
        .recv_timeout(STARTUP)
        .unwrap_or_else(|_| panic!("no start line; see {}", log.display()));
    let v = serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("bad start line {line:?}: {e}; see {}", log.display()));
    (guard, v)
}

fn coordinator_admin(args: &[&str]) -> Option<Value> {
    let out = Command::new(binary("heliograph-coordinator"))
        .args(args)
        .env("HELIOGRAPH_CLUSTER_SECRET", CLUSTER_SECRET)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

struct EdgeProcess {
    guard: Guard,
    url: String,
}

impl EdgeProcess {
    fn pid(&self) -> String {
        self.guard.0.id().to_string()
    }
}

/// One region: Redis, a coordinator replica and two edges. Everything dies with it.
struct Region {
    a: EdgeProcess,
    b: EdgeProcess,
    _replica: Guard,
    _redis: Guard,
    dir: tempfile::TempDir,
}

impl Region {
    fn start() -> Region {
        let dir = tempfile::tempdir().unwrap();
        let redis_port = free_port();
        let redis = Guard(
            Command::new("redis-server")
                .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed"),
        );
        wait_for("redis-server", || {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", redis_port)) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let mut buf = [0u8; 7];
            s.write_all(b"PING\r\n").is_ok()
                && s.read_exact(&mut buf).is_ok()
                && &buf == b"+PONG\r\n"
        });

        let mut cmd = Command::new(binary("heliograph-coordinator"));
        cmd.args(["serve", "--id", "1", "--region", "local"])
            .args(["--raft-listen", "127.0.0.1:0"])
            .args(["--api-listen", "127.0.0.1:0"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("replica"))
            .env("HELIOGRAPH_CLUSTER_SECRET", CLUSTER_SECRET)
            .env("RUST_LOG", "warn");
        let (replica, line) = start_reporting(cmd, &dir.path().join("replica.log"));
        let api = line["api"].as_str().unwrap().to_owned();
        assert!(
            coordinator_admin(&["bootstrap", "--api", &api]).is_some(),
            "bootstrap failed"
        );
        wait_for("a leader", || {
            coordinator_admin(&["status", "--api", &api]).is_some_and(|v| v["leader"] == 1)
        });

        let edge = |name: &str| {
            let mut cmd = Command::new(binary("heliograph-edge"));
            // Without --metrics-listen, /readyz and /metrics are served on --listen.
            cmd.args(["--listen", "127.0.0.1:0"])
                .arg("--data-dir")
                .arg(dir.path().join(name))
                .args(["--region", "local", "--edge-id", name])
                .args(["--coordinator", &format!("http://{api}")])
                .args(["--cluster-secret", CLUSTER_SECRET])
                .args(["--redis", &format!("redis://127.0.0.1:{redis_port}/")])
                .args(["--session-secret", SESSION_SECRET])
                // A short drain keeps the test short.
                .args(["--drain-window-ms", "300", "--log", "warn"]);
            let (guard, line) = start_reporting(cmd, &dir.path().join(format!("{name}.log")));
            let listening = line["listening"].as_str().unwrap().to_owned();
            let metrics = listening.clone();
            (
                EdgeProcess {
                    guard,
                    url: format!("ws://{listening}/ws"),
                },
                metrics,
            )
        };
        let (a, a_metrics) = edge("edge-a");
        let (b, b_metrics) = edge("edge-b");
        for m in [&a_metrics, &b_metrics] {
            wait_for("an edge to be ready", || {
                http_get(m, "/readyz").starts_with("HTTP/1.1 200")
            });
            // Resumes across edges go through Redis: wait for each edge's subscription.
            wait_for("an edge's Redis bus", || {
                http_get(m, "/metrics").contains("heliograph_edge_redis_up 1")
            });
        }
        Region {
            a,
            b,
            _replica: replica,
            _redis: redis,
            dir,
        }
    }
}

/// Runs `failover` against the region and returns its result file.
fn failover(region: &Region, mode: &str) -> Value {
    let out = region.dir.path().join(format!("failover-{mode}.json"));
    let child = Command::new(LOADTEST)
        .args(["failover", "--mode", mode])
        .args(["--clients", "20", "--rate", "20"])
        .args(["--before-secs", "0.5", "--after-secs", "0.5"])
        .args(["--resume-timeout", "20", "--source-addrs", "4"])
        .args(["--edge", &region.a.url, "--edge-pid", &region.a.pid()])
        .args(["--other", &region.b.url, "--json"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "failover --mode {mode} hung");
        std::thread::sleep(POLL);
    };
    let mut output = String::new();
    for pipe in [
        guard.0.stdout.take().map(|p| Box::new(p) as Box<dyn Read>),
        guard.0.stderr.take().map(|p| Box::new(p) as Box<dyn Read>),
    ]
    .into_iter()
    .flatten()
    {
        let mut p = pipe;
        let _ = p.read_to_string(&mut output);
    }
    assert!(
        status.success(),
        "failover --mode {mode} failed: {output}\n(logs in {})",
        region.dir.path().display()
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

#[test]
fn failover_after_kill() {
    let region = Region::start();
    let v = failover(&region, "kill");
    check(&v, "kill");
}

#[test]
fn failover_after_drain() {
    let region = Region::start();
    let v = failover(&region, "drain");
    check(&v, "drain");
}
