//! The `chaos` scenario's cluster and its faults: three coordinator replicas and two edges
//! started through the test kit (as deploy/local-cluster.sh lays them out: every edge lists
//! every replica; here edge i starts its list at replica i+1, so the two edges attach to
//! different replicas), the Raft leader and each edge's replica as the processes report them,
//! and the signals that fail replicas.
//!
//! Everything that talks to a replica runs off the runtime or with a deadline, so that the
//! clients are never held up by the conductor, and a frozen replica never hangs it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use heliograph_testkit::bin::{self, COORDINATOR, EDGE};
use heliograph_testkit::cluster::{Cluster, Spec};
use serde_json::Value;

/// How long one `status` call may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);
/// Between two looks at the replicas.
const POLL: Duration = Duration::from_millis(100);
/// Log lines that mean HTTP/2 refused streams or connections (a thawed replica failing
/// the streams its callers reset while it was frozen).
pub const H2_ERRORS: &[&str] = &[
    "pending-accept",
    "pending accept",
    "resource exhausted",
    "resourceexhausted",
    "goaway",
    "go away",
    "too_many_internal_resets",
    "enhance_your_calm",
    "refused_stream",
];
/// Other HTTP/2 errors: a call on a connection that broke.
const H2_BROKEN: &[&str] = &["h2 protocol error", "http2 error"];

pub const EDGES: [&str; 2] = ["edge-a", "edge-b"];

pub struct Lab {
    cluster: Cluster,
    coordinator: PathBuf,
}

impl Lab {
    pub async fn start(redis: bool) -> Result<Lab> {
        let coordinator = bin::path(COORDINATOR)?;
        bin::path(EDGE)?;
        let redis: &[&str] = if redis { &["local"] } else { &[] };
        let cluster = Cluster::start(Spec {
            replicas: &[(1, "local"), (2, "local"), (3, "local")],
            edges: &[(EDGES[0], "local"), (EDGES[1], "local")],
            redis,
            // The storm measures membership, not the per-connection abuse limiter.
            edge_args: &[
                "--rate-limit-per-second",
                "100000",
                "--rate-limit-burst",
                "100000",
            ],
            rotate_replicas: true,
            ..Spec::default()
        })
        .await;
        Ok(Lab {
            cluster,
            coordinator,
        })
    }

    pub fn dir(&self) -> PathBuf {
        self.cluster.path().to_owned()
    }

    pub fn edge_urls(&self) -> Vec<String> {
        EDGES
            .iter()
            .map(|e| self.cluster.edge(e).node.ws_url())
            .collect()
    }

    pub fn replica_ids(&self) -> Vec<u64> {
        self.cluster.replicas.iter().map(|r| r.id).collect()
    }

    fn api(&self, id: u64) -> String {
        self.cluster.replica(id).api.clone()
    }

    /// One replica's `status`, or `None` when it does not answer in time.
    pub async fn status(&self, id: u64) -> Option<Value> {
        let mut cmd = tokio::process::Command::new(&self.coordinator);
        cmd.args(["status", "--api", &self.api(id)])
            .env(
                "HELIOGRAPH_CLUSTER_SECRET",
                heliograph_testkit::CLUSTER_SECRET,
            )
            .kill_on_drop(true);
        let out = tokio::time::timeout(STATUS_TIMEOUT, cmd.output())
            .await
            .ok()?
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The leader that every replica of `among` agrees on, within `within`.
    pub async fn leader(&self, among: &[u64], within: Duration) -> Result<u64> {
        let deadline = Instant::now() + within;
        let mut last = Vec::new();
        loop {
            last.clear();
            for id in among {
                last.push(self.status(*id).await.unwrap_or(Value::Null));
            }
            let leaders: Vec<Option<u64>> = last.iter().map(|v| v["leader"].as_u64()).collect();
            if let Some(Some(l)) = leaders.first()
                && leaders.iter().all(|x| *x == Some(*l))
                && among.contains(l)
            {
                return Ok(*l);
            }
            if Instant::now() >= deadline {
                bail!("replicas {among:?} agreed on no leader within {within:?}: {last:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every replica is up, follows one leader and has applied everything
    /// committed; returns the leader.
    pub async fn wait_healthy(&self, within: Duration) -> Result<u64> {
        let deadline = Instant::now() + within;
        let all = self.replica_ids();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let leader = self.leader(&all, left).await?;
            let mut statuses = Vec::new();
            for id in &all {
                statuses.push(self.status(*id).await.unwrap_or(Value::Null));
            }
            let commit = statuses
                .iter()
                .filter_map(|v| v["commit_index"].as_u64())
                .max()
                .unwrap_or(0);
            if statuses
                .iter()
                .all(|v| v["applied_index"].as_u64() >= Some(commit))
            {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                bail!("the replicas did not apply index {commit} within {within:?}: {statuses:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The replica edge `edge` is attached to, from its log (`None` while it has no link).
    pub fn attached(&self, edge: usize) -> Option<u64> {
        let log = self.cluster.edge(EDGES[edge]).node.log();
        let line = log.lines().rev().find(|l| {
            l.contains("linked to a coordinator replica") || l.contains("coordinator session ended")
        })?;
        if !line.contains("linked to") {
            return None;
        }
        let url = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("url="))?
            .trim_matches('"');
        self.cluster
            .replicas
            .iter()
            .find(|r| r.url() == url)
            .map(|r| r.id)
    }

    pub fn pid(&self, id: u64) -> Result<u32> {
        self.cluster
            .replica(id)
            .pid()
            .ok_or_else(|| anyhow!("replica {id} is not running"))
    }

    /// `kill -SIG` to replica `id` (`STOP`, `CONT`).
    pub async fn signal(&self, id: u64, sig: &str) -> Result<()> {
        let pid = self.pid(id)?;
        let status = tokio::process::Command::new("kill")
            .args([format!("-{sig}"), pid.to_string()])
            .status()
            .await
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{sig} {pid} (replica {id}) failed: {status}");
        }
        Ok(())
    }

    /// SIGKILL, and reap.
    pub async fn kill(&mut self, id: u64) -> Result<()> {
        let i = self.index(id)?;
        let mut r = self.cluster.replicas.remove(i);
        let r = tokio::task::spawn_blocking(move || {
            r.kill();
            r
        })
        .await?;
        self.cluster.replicas.insert(i, r);
        Ok(())
    }

    /// Starts replica `id` again on its data directory and addresses.
    pub async fn restart(&mut self, id: u64) -> Result<()> {
        let i = self.index(id)?;
        let mut r = self.cluster.replicas.remove(i);
        let (r, started) = tokio::task::spawn_blocking(move || {
            let started = r.start_again();
            (r, started)
        })
        .await?;
        self.cluster.replicas.insert(i, r);
        started.with_context(|| format!("restarting replica {id}"))
    }

    fn index(&self, id: u64) -> Result<usize> {
        self.cluster
            .replicas
            .iter()
            .position(|r| r.id == id)
            .ok_or_else(|| anyhow!("no replica {id}"))
    }

    /// Copies every process's log into `to` (`replica-N.log`, `edge-x.log`).
    pub fn copy_logs(&self, to: &std::path::Path) -> Result<()> {
        std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
        for (path, _) in self.log_marks() {
            let name = path
                .strip_prefix(self.cluster.path())
                .map(|p| p.to_string_lossy().replace("/edge.log", ".log"))
                .unwrap_or_default();
            if !name.is_empty() && path.is_file() {
                std::fs::copy(&path, to.join(&name))
                    .with_context(|| format!("copying {}", path.display()))?;
            }
        }
        Ok(())
    }

    /// Every log file, with its length now: where a later scan starts.
    pub fn log_marks(&self) -> Vec<(PathBuf, u64)> {
        let root = self.cluster.path();
        let mut files: Vec<PathBuf> = self
            .replica_ids()
            .iter()
            .map(|id| root.join(format!("replica-{id}.log")))
            .collect();
        files.extend(EDGES.iter().map(|e| root.join(e).join("edge.log")));
        files
            .into_iter()
            .map(|p| {
                let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                (p, len)
            })
            .collect()
    }
}

/// What the logs said about HTTP/2 since some marks.
#[derive(Debug, Default)]
pub struct LogScan {
    /// Lines matching [`H2_ERRORS`].
    pub refusals: u64,
    /// Other lines naming an HTTP/2 error.
    pub broken: u64,
    /// The first few of both (refusals first), with their file.
    pub samples: Vec<String>,
}

/// Scans the lines written since `marks`.
pub fn h2_errors(marks: &[(PathBuf, u64)], keep: usize) -> LogScan {
    let mut scan = LogScan::default();
    let mut broken = Vec::new();
    for (path, from) in marks {
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        let from = usize::try_from(*from)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let text = String::from_utf8_lossy(&bytes[from..]);
        let name = path
            .strip_prefix(path.parent().and_then(|p| p.parent()).unwrap_or(path))
            .unwrap_or(path)
            .display()
            .to_string();
        for line in text.lines() {
            let plain = strip_ansi(line);
            let lower = plain.to_ascii_lowercase();
            if H2_ERRORS.iter().any(|p| lower.contains(p)) {
                scan.refusals += 1;
                if scan.samples.len() < keep {
                    scan.samples.push(format!("{name}: {plain:.300}"));
                }
            } else if H2_BROKEN.iter().any(|p| lower.contains(p)) {
                scan.broken += 1;
                if broken.len() < keep {
                    broken.push(format!("{name}: {plain:.300}"));
                }
            }
        }
    }
    let room = keep.saturating_sub(scan.samples.len());
    scan.samples.extend(broken.into_iter().take(room));
    scan
}

/// `line` without terminal colour codes (the replicas log with them).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
