//! `idle`: open N connections, each joined to a room of K peers, hold them, and measure what
//! they cost the server in resident memory.
//!
//! One process can hold at most its open-files limit of sockets (20,000 here, not raisable);
//! `--processes P` re-executes this tool P times with N/P clients each (`idle --child`), waits
//! until every child holds its clients, measures, then releases them all and merges.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::task::JoinSet;

use super::room_prefix;
use crate::client::{Client, Target, source_addr};
use crate::procstat::{self, Pid};

/// Longest a child waits for its parent to release it.
const CHILD_MAX_HOLD: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Serialize)]
pub struct IdleSettings {
    pub url: String,
    pub clients: usize,
    pub server_pid: Option<u32>,
    pub rooms_of: usize,
    pub hold_secs: f64,
    pub source_addrs: usize,
    pub connect_concurrency: usize,
    pub processes: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IdleResults {
    pub clients: u64,
    pub connected: u64,
    pub failed: u64,
    pub processes: u64,
    pub connect_secs: f64,
    pub connections_per_sec: f64,
    pub unexpected_closes: u64,
    pub server_rss_before_bytes: Option<u64>,
    pub server_rss_after_bytes: Option<u64>,
    pub server_bytes_per_connection: Option<f64>,
    pub generator_rss_bytes: u64,
}

/// What one process (the only one, or a child) reports once its clients are connected.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Held {
    pub connected: u64,
    pub failed: u64,
    pub connect_secs: f64,
    pub generator_rss_bytes: u64,
}

/// Connects `clients` clients and spawns a reader per client that keeps it alive (answering
/// pings) until aborted; a reader that ends by itself counts as an unexpected close.
async fn connect_and_hold(
    settings: &IdleSettings,
    clients: usize,
) -> Result<(
    Held,
    JoinSet<()>,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
)> {
    let limit = super::raise_nofile_limit();
    super::check_fd_budget(clients as u64, limit, true)?;
    let target = Target::resolve(&settings.url).await?;
    let prefix = room_prefix("idle");
    let rooms_of = settings.rooms_of.max(1);
    let started = Instant::now();
    let results: Vec<Result<Client>> = futures_util::stream::iter(0..clients)
        .map(|i| {
            let target = &target;
            let room = format!("{prefix}-{}", i / rooms_of);
            async move {
                let mut c =
                    Client::connect(target, source_addr(target, i, settings.source_addrs)).await?;
                c.join(&room).await?;
                Ok(c)
            }
        })
        .buffer_unordered(settings.connect_concurrency.max(1))
        .collect()
        .await;
    let connect_secs = started.elapsed().as_secs_f64();
    let closes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut held = JoinSet::new();
    let mut failed = 0;
    for r in results {
        match r {
            Ok(mut c) => {
                let closes = closes.clone();
                held.spawn(async move {
                    // Reads (and so answers pings) until the connection ends or is aborted.
                    while crate::client::recv_text(&mut c.ws).await.is_ok() {}
                    super::bump(&closes);
                });
            }
            Err(e) => {
                if failed < 5 {
                    eprintln!("idle: a client failed: {e:#}");
                }
                failed += 1;
            }
        }
    }
    Ok((
        Held {
            connected: (clients as u64).saturating_sub(failed),
            failed,
            connect_secs,
            generator_rss_bytes: procstat::rss_bytes(Pid::Me).unwrap_or(0),
        },
        held,
        closes,
    ))
}

pub async fn run(settings: &IdleSettings) -> Result<IdleResults> {
    if settings.clients == 0 {
        bail!("--clients must be ≥ 1");
    }
    let server = settings.server_pid.map(Pid::Other);
    let rss_before = server.map(procstat::rss_bytes).transpose()?;
    let processes = settings.processes.max(1);
    let (held, closes, release) = if processes == 1 {
        let (held, set, closes) = connect_and_hold(settings, settings.clients).await?;
        (held, Some(closes), Release::Tasks(set))
    } else {
        let (held, children) = spawn_children(settings, processes).await?;
        (held, None, Release::Children(children))
    };
    tokio::time::sleep(Duration::from_secs_f64(settings.hold_secs)).await;
    let rss_after = server.map(procstat::rss_bytes).transpose()?;
    let unexpected_closes = closes.map_or(0, |c| super::load(&c));
    release.release().await;
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if held.connected > 0 => {
            Some((a as f64 - b as f64) / held.connected as f64)
        }
        _ => None,
    };
    Ok(IdleResults {
        clients: settings.clients as u64,
        connected: held.connected,
        failed: held.failed,
        processes: processes as u64,
        connect_secs: held.connect_secs,
        connections_per_sec: held.connected as f64 / held.connect_secs.max(1e-9),
        unexpected_closes,
        server_rss_before_bytes: rss_before,
        server_rss_after_bytes: rss_after,
        server_bytes_per_connection: per_conn,
        generator_rss_bytes: held.generator_rss_bytes,
    })
}

enum Release {
    Tasks(JoinSet<()>),
    Children(Vec<tokio::process::Child>),
}

impl Release {
    async fn release(self) {
        match self {
            Self::Tasks(mut set) => set.shutdown().await,
            Self::Children(children) => {
                for mut child in children {
                    // Closing its stdin tells a child to let go; it exits by itself.
                    drop(child.stdin.take());
                    if tokio::time::timeout(Duration::from_secs(30), child.wait())
                        .await
                        .is_err()
                    {
                        let _ = child.kill().await;
                    }
                }
            }
        }
    }
}

async fn spawn_children(
    settings: &IdleSettings,
    processes: usize,
) -> Result<(Held, Vec<tokio::process::Child>)> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let started = Instant::now();
    let mut children = Vec::with_capacity(processes);
    let mut readers = JoinSet::new();
    for p in 0..processes {
        let share = settings.clients / processes + usize::from(p < settings.clients % processes);
        let mut child = tokio::process::Command::new(&exe)
            .args(["idle", "--child", "--url", &settings.url])
            .arg("--clients")
            .arg(share.to_string())
            .arg("--rooms-of")
            .arg(settings.rooms_of.to_string())
            .arg("--source-addrs")
            .arg(settings.source_addrs.to_string())
            .arg("--connect-concurrency")
            .arg(settings.connect_concurrency.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning an idle child")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout from an idle child"))?;
        readers.spawn(async move {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).await?;
            let held: Held = serde_json::from_str(line.trim())
                .with_context(|| format!("idle child said {line:?}"))?;
            anyhow::Ok(held)
        });
        children.push(child);
    }
    // Generous: connecting is bounded by the clients' own step timeouts.
    let deadline = Duration::from_secs(120 + settings.clients as u64 / 100);
    let mut merged = Held::default();
    let collected = tokio::time::timeout(deadline, async {
        while let Some(r) = readers.join_next().await {
            let held = r??;
            merged.connected += held.connected;
            merged.failed += held.failed;
            merged.generator_rss_bytes += held.generator_rss_bytes;
        }
        anyhow::Ok(())
    })
    .await;
    match collected {
        Ok(r) => r?,
        Err(_) => bail!("idle children did not all connect within {deadline:?}"),
    }
    merged.connect_secs = started.elapsed().as_secs_f64();
    Ok((merged, children))
}

/// `idle --child`: connect, report one JSON line, hold until stdin closes.
pub async fn run_child(settings: &IdleSettings) -> Result<()> {
    let (held, mut set, _) = connect_and_hold(settings, settings.clients).await?;
    println!("{}", serde_json::to_string(&held)?);
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(CHILD_MAX_HOLD, tokio::io::stdin().read_to_end(&mut sink)).await;
    set.shutdown().await;
    Ok(())
}
