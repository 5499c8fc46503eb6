//! `joins`: a join/leave storm. Each of C workers owns one connection and loops
//! join(room) → `joined` → leave → `left` until the duration is over, timing each join.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::{Percentiles, bump, latency_histogram, load, room_prefix};
use crate::client::{Client, Target, source_addr};
use crate::procstat::{self, Pid};

/// Rooms each worker cycles through.
const ROOMS_PER_WORKER: u64 = 16;

#[derive(Debug, Clone, Serialize)]
pub struct JoinsSettings {
    /// Worker `i` connects to `urls[i % urls.len()]`.
    pub urls: Vec<String>,
    pub concurrency: usize,
    pub duration_secs: f64,
    pub server_pid: Option<u32>,
    pub source_addrs: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JoinsResults {
    pub workers: u64,
    pub measured_secs: f64,
    pub joins: u64,
    pub leaves: u64,
    pub joins_per_sec: f64,
    pub join_latency: Percentiles,
    pub leave_latency: Percentiles,
    pub errors: u64,
    pub server_cpu_secs: Option<f64>,
    pub server_cpu_us_per_join: Option<f64>,
    pub generator_cpu_percent_of_core: f64,
    /// Joins completed in each full second.
    pub joins_per_second_samples: Vec<u64>,
}

struct Shared {
    joins: AtomicU64,
    leaves: AtomicU64,
    errors: AtomicU64,
    join_hist: Mutex<Histogram<u64>>,
    leave_hist: Mutex<Histogram<u64>>,
}

fn record(h: &Mutex<Histogram<u64>>, since: Instant) {
    if let Ok(mut h) = h.lock() {
        h.saturating_record(since.elapsed().as_micros() as u64);
    }
}

async fn worker(mut client: Client, prefix: String, deadline: Instant, shared: Arc<Shared>) {
    let mut i = 0u64;
    while Instant::now() < deadline {
        let room = format!("{prefix}-{}", i % ROOMS_PER_WORKER);
        i += 1;
        let t = Instant::now();
        if let Err(e) = client.join(&room).await {
            if load(&shared.errors) < 5 {
                eprintln!("joins: join failed: {e:#}");
            }
            bump(&shared.errors);
            return;
        }
        record(&shared.join_hist, t);
        bump(&shared.joins);
        let t = Instant::now();
        if let Err(e) = client.leave(&room).await {
            if load(&shared.errors) < 5 {
                eprintln!("joins: leave failed: {e:#}");
            }
            bump(&shared.errors);
            return;
        }
        record(&shared.leave_hist, t);
        bump(&shared.leaves);
    }
}

pub async fn run(settings: &JoinsSettings) -> Result<JoinsResults> {
    if settings.concurrency == 0 {
        bail!("--concurrency must be ≥ 1");
    }
    let limit = super::raise_nofile_limit();
    super::check_fd_budget(settings.concurrency as u64, limit, false)?;
    let mut targets = Vec::with_capacity(settings.urls.len());
    for url in &settings.urls {
        targets.push(Target::resolve(url).await?);
    }
    if targets.is_empty() {
        bail!("give at least one --url");
    }
    let prefix = room_prefix("joins");
    let mut clients = Vec::with_capacity(settings.concurrency);
    for i in 0..settings.concurrency {
        let target = &targets[i % targets.len()];
        clients.push(Client::connect(target, source_addr(target, i, settings.source_addrs)).await?);
    }
    let shared = Arc::new(Shared {
        joins: AtomicU64::new(0),
        leaves: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        join_hist: Mutex::new(latency_histogram()?),
        leave_hist: Mutex::new(latency_histogram()?),
    });
    let server = settings.server_pid.map(Pid::Other);
    let server_cpu_start = server.map(procstat::cpu_time).transpose()?;
    let own_cpu_start = procstat::cpu_time(Pid::Me)?;
    let start = Instant::now();
    let duration = Duration::from_secs_f64(settings.duration_secs);
    let deadline = start + duration;
    let mut workers = JoinSet::new();
    for (w, client) in clients.into_iter().enumerate() {
        workers.spawn(worker(
            client,
            format!("{prefix}-{w}"),
            deadline,
            shared.clone(),
        ));
    }
    let mut samples = Vec::new();
    let mut last = 0;
    for s in 1..=settings.duration_secs.floor() as u64 {
        tokio::time::sleep_until((start + Duration::from_secs(s)).into()).await;
        let now = load(&shared.joins);
        samples.push(now - last);
        last = now;
    }
    // Workers finish their current join/leave after the deadline; each step is time-bounded.
    let finished = tokio::time::timeout(duration + crate::client::STEP_TIMEOUT * 2, async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        workers.shutdown().await;
    }
    let measured_secs = start.elapsed().as_secs_f64();
    let own_cpu = procstat::cpu_time(Pid::Me)?.saturating_sub(own_cpu_start);
    let server_cpu_secs = match (server, server_cpu_start) {
        (Some(pid), Some(s)) => Some(procstat::cpu_time(pid)?.saturating_sub(s).as_secs_f64()),
        _ => None,
    };
    let joins = load(&shared.joins);
    let pct = |h: &Mutex<Histogram<u64>>| {
        h.lock()
            .map(|h| Percentiles::from_histogram(&h))
            .map_err(|_| anyhow!("histogram poisoned"))
    };
    Ok(JoinsResults {
        workers: settings.concurrency as u64,
        measured_secs,
        joins,
        leaves: load(&shared.leaves),
        joins_per_sec: joins as f64 / measured_secs,
        join_latency: pct(&shared.join_hist)?,
        leave_latency: pct(&shared.leave_hist)?,
        errors: load(&shared.errors),
        server_cpu_secs,
        server_cpu_us_per_join: server_cpu_secs
            .filter(|_| joins > 0)
            .map(|s| s * 1e6 / joins as f64),
        generator_cpu_percent_of_core: own_cpu.as_secs_f64() / measured_secs * 100.0,
        joins_per_second_samples: samples,
    })
}
