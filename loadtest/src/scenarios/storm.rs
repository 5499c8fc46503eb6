//! `storm`: N clients connect as fast as the generator can, each receives `welcome` and joins
//! a two-peer room (`joined`): the connection setup an edge meets when every client of a dead
//! edge comes back at once. Measures connections per second, each client's time to `welcome`
//! and to `joined` (from the start of its TCP connect), and the server's CPU per connection.
//!
//! Every client completes the same steps on either server: TCP connect, the WebSocket upgrade
//! offering `heliograph.v1`, `welcome` read, `join` sent and `joined` read. What each server
//! does behind them differs: the edge admits the connection (limits, origin), creates and
//! stores a session, signs a resume token, encodes `welcome`, commits the join to its registry
//! and tells the room; the reference forwarder (`reference`) gives a random id, a `welcome`
//! with an empty token and a join into an in-memory map.
//!
//! Clients stay connected until the last one has joined (the server holds them all at once,
//! as after a failover), then close with 1000, and the run waits for the server's CPU to go
//! quiet so that its clean-up is not charged to whatever runs next.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::relay::GENERATOR_LIMIT_FRACTION;
use super::{Percentiles, latency_histogram, room_prefix};
use crate::client::{Client, Target, source_addr};
use crate::procstat::{self, Pid};

/// Clients closing their sockets at once after the storm.
const CLOSE_CONCURRENCY: usize = 256;
/// Longest wait for one client's close handshake.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The server counts as quiet once its CPU time has not grown over this long…
const QUIET_FOR: Duration = Duration::from_millis(500);
/// …polled this often…
const QUIET_POLL: Duration = Duration::from_millis(100);
/// …and the wait for it ends after this long regardless (reported as `settle_secs`).
const QUIET_DEADLINE: Duration = Duration::from_secs(30);
/// Failures printed at most (the rest are only counted).
const ERRORS_SHOWN: u64 = 5;

#[derive(Debug, Clone, Serialize)]
pub struct StormSettings {
    pub url: String,
    pub clients: usize,
    /// Server process whose CPU time is measured.
    pub server_pid: Option<u32>,
    /// Clients setting up at once (0: all of them).
    pub concurrency: usize,
    pub source_addrs: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StormResults {
    pub clients: u64,
    /// Clients that read `welcome`.
    pub welcomed: u64,
    /// Clients that read `joined`.
    pub joined: u64,
    /// Clients that failed a step (connect, upgrade, `welcome` or `joined`).
    pub failed: u64,
    /// From the first connect until the last client had joined.
    pub storm_secs: f64,
    /// Joined clients per second of the storm.
    pub connections_per_sec: f64,
    /// Microseconds from a client's TCP connect to its `welcome`, and to its `joined`.
    pub to_welcome: Percentiles,
    pub to_joined: Percentiles,
    /// Server CPU time over the storm (user + system), and per joined client.
    pub server_cpu_secs: Option<f64>,
    pub server_cpu_us_per_connection: Option<f64>,
    pub generator_cpu_percent_of_core: f64,
    pub generator_limited: bool,
    /// How long the server took to go quiet after the clients closed.
    pub settle_secs: f64,
}

/// One client's times, in microseconds from its connect.
struct Times {
    welcome: Option<u64>,
    joined: Option<u64>,
}

async fn one(
    target: &Target,
    index: usize,
    room: String,
    sources: usize,
) -> (Times, Option<Client>) {
    let start = Instant::now();
    let us = |t: Instant| u64::try_from(t.duration_since(start).as_micros()).unwrap_or(u64::MAX);
    let mut times = Times {
        welcome: None,
        joined: None,
    };
    let mut client = match Client::connect(target, source_addr(target, index, sources)).await {
        Ok(c) => c,
        Err(e) => {
            report_failure(index, &e);
            return (times, None);
        }
    };
    times.welcome = Some(us(Instant::now()));
    if let Err(e) = client.join(&room).await {
        report_failure(index, &e);
        return (times, None);
    }
    times.joined = Some(us(Instant::now()));
    (times, Some(client))
}

fn report_failure(index: usize, e: &anyhow::Error) {
    // Only the first few: a refused storm would otherwise print thousands of lines.
    static SHOWN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if SHOWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < ERRORS_SHOWN {
        eprintln!("storm: client {index} failed: {e:#}");
    }
}

pub async fn run(s: &StormSettings) -> Result<StormResults> {
    if s.clients == 0 {
        bail!("--clients must be ≥ 1");
    }
    let limit = super::raise_nofile_limit();
    // Every client holds its socket until the storm ends.
    super::check_fd_budget(s.clients as u64, limit, false)?;
    let target = Target::resolve(&s.url).await?;
    let server = s.server_pid.map(Pid::Other);
    let prefix = room_prefix("storm");
    let concurrency = if s.concurrency == 0 {
        s.clients
    } else {
        s.concurrency
    };

    let server_cpu_start = server.map(procstat::cpu_time).transpose()?;
    let my_cpu_start = procstat::cpu_time(Pid::Me)?;
    let started = Instant::now();
    let outcomes: Vec<(Times, Option<Client>)> = futures_util::stream::iter(0..s.clients)
        .map(|i| one(&target, i, format!("{prefix}-{}", i / 2), s.source_addrs))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let storm_secs = started.elapsed().as_secs_f64();
    let server_cpu = match (server, server_cpu_start) {
        (Some(pid), Some(before)) => Some(procstat::cpu_time(pid)?.saturating_sub(before)),
        _ => None,
    };
    let my_cpu = procstat::cpu_time(Pid::Me)?.saturating_sub(my_cpu_start);

    let mut welcome = latency_histogram()?;
    let mut joined = latency_histogram()?;
    let mut clients = Vec::with_capacity(outcomes.len());
    for (times, client) in outcomes {
        record(&mut welcome, times.welcome);
        record(&mut joined, times.joined);
        clients.extend(client);
    }
    let n_joined = joined.len();
    close_all(clients).await;
    let settle_secs = match server {
        Some(pid) => wait_quiet(pid).await?,
        None => 0.0,
    };

    let cpu_fraction = my_cpu.as_secs_f64() / storm_secs.max(1e-9);
    Ok(StormResults {
        clients: s.clients as u64,
        welcomed: welcome.len(),
        joined: n_joined,
        failed: s.clients as u64 - n_joined,
        storm_secs,
        connections_per_sec: n_joined as f64 / storm_secs.max(1e-9),
        to_welcome: Percentiles::from_histogram(&welcome),
        to_joined: Percentiles::from_histogram(&joined),
        server_cpu_secs: server_cpu.map(|d| d.as_secs_f64()),
        server_cpu_us_per_connection: server_cpu
            .filter(|_| n_joined > 0)
            .map(|d| d.as_secs_f64() * 1e6 / n_joined as f64),
        generator_cpu_percent_of_core: cpu_fraction * 100.0,
        generator_limited: cpu_fraction >= GENERATOR_LIMIT_FRACTION,
        settle_secs,
    })
}

fn record(h: &mut Histogram<u64>, us: Option<u64>) {
    if let Some(us) = us {
        // Clamped into the histogram's range (1 µs … 10 min): a step times out long before.
        h.saturating_record(us.max(1));
    }
}

/// Closes every client with 1000, a bounded number at a time, each within `CLOSE_TIMEOUT`.
async fn close_all(clients: Vec<Client>) {
    futures_util::stream::iter(clients)
        .for_each_concurrent(CLOSE_CONCURRENCY, |mut c| async move {
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: Utf8Bytes::from_static("storm done"),
            };
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                c.ws.close(Some(frame)).await?;
                // Until the server's close answer (or the end of the stream).
                while let Some(m) = c.ws.next().await {
                    m?;
                }
                anyhow::Ok(())
            })
            .await;
            let _ = c.ws.flush().await;
        })
        .await;
}

/// Waits until `pid`'s CPU time stops growing (its clean-up of the closed sessions is done);
/// returns how long that took. Gives up after `QUIET_DEADLINE`.
async fn wait_quiet(pid: Pid) -> Result<f64> {
    let started = Instant::now();
    let mut last = procstat::cpu_time(pid)?;
    let mut quiet_since = Instant::now();
    while started.elapsed() < QUIET_DEADLINE {
        tokio::time::sleep(QUIET_POLL).await;
        let now = procstat::cpu_time(pid)?;
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= QUIET_FOR {
            break;
        }
    }
    Ok(started.elapsed().as_secs_f64())
}
