//! A multi-region cluster of real processes for the regions tests: `redis-server` per region,
//! `heliograph-coordinator` replicas driven through their CLI, and `heliograph-edge`s pointed
//! at their region's replica and Redis. Every child is killed when its guard drops; every
//! wait polls a condition with a deadline.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::common::{self, CLUSTER_SECRET, DEADLINE, Node};

pub const SESSION_SECRET: &str = "test-session-secret-0123456789";

const POLL: Duration = Duration::from_millis(20);

/// A binary of another workspace package: next to this test's executable (`target/<profile>`).
pub fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace (cargo build --workspace)",
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

/// A `redis-server` on a loopback port; killed on drop.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        let mut r = Redis {
            port: free_port(),
            child: None,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Whether Redis holds a resumable session for `peer`.
    pub async fn has_session(&self, peer: &str) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return false;
        };
        redis::cmd("EXISTS")
            .arg(format!("heliograph:s:{peer}"))
            .query_async::<i64>(&mut conn)
            .await
            .is_ok_and(|n| n == 1)
    }

    /// kill -9: clients see their connections reset.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts (again) on the same port and waits until it answers PING.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed");
        self.child = Some(child);
        let start = Instant::now();
        while !self.answers() {
            assert!(start.elapsed() < DEADLINE, "redis-server did not start");
            std::thread::sleep(POLL);
        }
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A coordinator replica process; killed on drop.
pub struct Replica {
    pub id: u64,
    pub region: String,
    pub raft: String,
    pub api: String,
    pub metrics: String,
    child: Child,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    pub fn start(id: u64, region: &str, dir: &Path) -> Replica {
        let data = dir.join(format!("replica-{id}"));
        let log = std::fs::File::create(dir.join(format!("replica-{id}.log"))).unwrap();
        let mut child = Command::new(sibling_binary("heliograph-coordinator"))
            .args(["serve", "--id", &id.to_string()])
            .args([
                "--raft-listen",
                "127.0.0.1:0",
                "--api-listen",
                "127.0.0.1:0",
            ])
            .args(["--metrics-listen", "127.0.0.1:0", "--region", region])
            .arg("--data-dir")
            .arg(&data)
            .args(["--grace-ms", "500"])
            .env("HELIOGRAPH_CLUSTER_SECRET", CLUSTER_SECRET)
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // The reader ends with the child's stdout, so the thread never outlives it.
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(DEADLINE).expect("replica did not start");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        Replica {
            id,
            region: region.to_owned(),
            raft: v["raft"].as_str().unwrap().to_owned(),
            api: v["api"].as_str().unwrap().to_owned(),
            metrics: v["metrics"].as_str().unwrap().to_owned(),
            child,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.api)
    }

    pub async fn scrape(&self) -> String {
        common::http_get(&self.metrics, "/metrics").await.1
    }
}

/// Runs a coordinator admin subcommand; its JSON output or the error text.
pub fn admin(args: &[&str]) -> Result<Value, String> {
    let out = Command::new(sibling_binary("heliograph-coordinator"))
        .args(args)
        .env("HELIOGRAPH_CLUSTER_SECRET", CLUSTER_SECRET)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// An edge process with its region.
pub struct Edge {
    pub name: String,
    pub region: String,
    pub node: Node,
}

/// What to start.
pub struct Spec<'a> {
    /// `(id, region)`; the first is bootstrapped and so leads.
    pub replicas: &'a [(u64, &'a str)],
    /// `(edge name, region)`; each edge uses its region's replicas.
    pub edges: &'a [(&'a str, &'a str)],
    /// Regions whose edges share a Redis.
    pub redis: &'a [&'a str],
}

pub struct Cluster {
    pub dir: TempDir,
    pub replicas: Vec<Replica>,
    pub redis: HashMap<String, Redis>,
    pub edges: Vec<Edge>,
}

impl Cluster {
    pub async fn start(spec: Spec<'_>) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let replicas: Vec<Replica> = spec
            .replicas
            .iter()
            .map(|(id, region)| Replica::start(*id, region, dir.path()))
            .collect();
        admin(&["bootstrap", "--api", &replicas[0].api]).unwrap();
        for r in &replicas[1..] {
            let id = r.id.to_string();
            admin(&[
                "add",
                "--api",
                &replicas[0].api,
                "--id",
                &id,
                "--raft",
                &r.raft,
                "--node-api",
                &r.api,
                "--region",
                &r.region,
            ])
            .unwrap();
        }
        let leader = replicas[0].id;
        let all = replicas.len();
        for r in &replicas {
            let start = Instant::now();
            loop {
                let ok = admin(&["status", "--api", &r.api]).is_ok_and(|v| {
                    v["leader"] == leader
                        && v["members"]
                            .as_array()
                            .is_some_and(|m| m.iter().filter(|m| m["voter"] == true).count() == all)
                });
                if ok {
                    break;
                }
                assert!(
                    start.elapsed() < DEADLINE * 2,
                    "replica {} never saw the cluster",
                    r.id
                );
                tokio::time::sleep(POLL * 5).await;
            }
        }
        let redis: HashMap<String, Redis> = spec
            .redis
            .iter()
            .map(|r| ((*r).to_owned(), Redis::start()))
            .collect();
        let mut edges = Vec::new();
        for (name, region) in spec.edges {
            let urls: Vec<String> = replicas
                .iter()
                .filter(|r| r.region == *region)
                .map(Replica::url)
                .collect();
            assert!(!urls.is_empty(), "region {region} has no replica");
            let edge_dir = dir.path().join(name);
            std::fs::create_dir_all(&edge_dir).unwrap();
            let mut args: Vec<String> = vec![
                "--coordinator".into(),
                urls.join(","),
                "--cluster-secret".into(),
                CLUSTER_SECRET.into(),
                "--region".into(),
                (*region).into(),
                "--edge-id".into(),
                (*name).into(),
                // Every edge of the cluster must accept the others' resume tokens.
                "--session-secret".into(),
                SESSION_SECRET.into(),
            ];
            if let Some(r) = redis.get(*region) {
                args.extend(["--redis".into(), r.url()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            edges.push(Edge {
                name: (*name).into(),
                region: (*region).into(),
                node: Node::start(&edge_dir, &args),
            });
        }
        for e in &edges {
            common::wait_ready(&e.node).await;
        }
        let cluster = Cluster {
            dir,
            replicas,
            redis,
            edges,
        };
        cluster.wait_redis_up().await;
        cluster
    }

    pub fn edge(&self, name: &str) -> &Edge {
        self.edges.iter().find(|e| e.name == name).unwrap()
    }

    pub fn replica(&self, id: u64) -> &Replica {
        self.replicas.iter().find(|r| r.id == id).unwrap()
    }

    /// Waits until every edge with a Redis reports it up.
    pub async fn wait_redis_up(&self) {
        for e in self
            .edges
            .iter()
            .filter(|e| self.redis.contains_key(&e.region))
        {
            wait_metric(&e.node, "heliograph_edge_redis_up", |v| v == 1.0).await;
        }
    }
}

/// One edge metric sample (0 when absent).
pub async fn edge_metric(node: &Node, sample: &str) -> f64 {
    common::metric(&node.get("/metrics").await.1, sample).unwrap_or(0.0)
}

pub async fn wait_metric(node: &Node, sample: &str, pred: impl Fn(f64) -> bool) -> f64 {
    common::wait_for(sample, || async {
        let v = edge_metric(node, sample).await;
        pred(v).then_some(v)
    })
    .await
}

/// The cross-region and relay counters of one replica.
pub async fn replica_counters(r: &Replica) -> HashMap<&'static str, f64> {
    let text = r.scrape().await;
    [
        (
            "local",
            r#"heliograph_coordinator_relayed_signals_total{route="local"}"#,
        ),
        (
            "forwarded",
            r#"heliograph_coordinator_relayed_signals_total{route="forwarded"}"#,
        ),
        (
            "cross_region",
            r#"heliograph_coordinator_relayed_signals_total{route="cross_region"}"#,
        ),
        (
            "in",
            r#"heliograph_coordinator_cross_region_streams_messages_total{direction="in"}"#,
        ),
        (
            "out",
            r#"heliograph_coordinator_cross_region_streams_messages_total{direction="out"}"#,
        ),
    ]
    .into_iter()
    .map(|(k, s)| (k, common::metric(&text, s).unwrap_or(0.0)))
    .collect()
}

impl Drop for Cluster {
    /// A failing test shows what the edges logged.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for e in &self.edges {
            let log = e.node.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- edge {} ({}) log tail ---", e.name, e.region);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}
