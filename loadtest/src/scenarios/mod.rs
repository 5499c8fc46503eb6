//! The load scenarios: `relay` (signal ping-pong between peer pairs), `idle` (many held
//! connections), `storm` (many connections set up at once), `joins` (a join/leave storm),
//! `regions` (the multi-region latency matrix), `failover` (an edge dies or drains; its
//! clients resume on another; `failover_region` is the region it starts when given no edges),
//! `chaos` (a join/leave storm on a cluster it starts, with a replica fault; membership
//! checked) and `registry_scale` (a replica group filled with a million members through the
//! registry's gRPC API: memory, snapshots, catch-up, join latency). Each returns a
//! serialisable result.

pub mod chaos;
pub mod failover;
pub mod failover_region;
pub mod homing;
pub mod idle;
pub mod joins;
pub mod regions;
pub mod registry_scale;
pub mod relay;
pub mod storm;

use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latency figures in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub samples: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Percentiles {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            samples: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50) as f64,
            p90_us: h.value_at_quantile(0.90) as f64,
            p99_us: h.value_at_quantile(0.99) as f64,
            p999_us: h.value_at_quantile(0.999) as f64,
            max_us: h.max() as f64,
        }
    }
}

/// A histogram of latencies in microseconds, from 1 µs to 10 minutes at 3 significant digits.
pub fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

pub fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Room names unique to this process and run, so that runs never meet each other's rooms.
pub fn room_prefix(scenario: &str) -> String {
    format!(
        "lt-{scenario}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// The open-files soft limit after raising it to the hard limit.
pub fn raise_nofile_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("warning: could not raise the open-files limit: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024)
        }
    }
}

/// File descriptors the process keeps for itself besides client sockets.
pub const SPARE_FDS: u64 = 64;

/// Fails with advice when `sockets` client sockets cannot fit under the open-files limit.
pub fn check_fd_budget(sockets: u64, limit: u64, can_split: bool) -> anyhow::Result<()> {
    if sockets + SPARE_FDS > limit {
        if !can_split {
            anyhow::bail!(
                "{sockets} client sockets need more open files than this process may have \
                 (limit {limit}, which cannot be raised here); use at most {} clients",
                limit.saturating_sub(SPARE_FDS)
            );
        }
        let per_process = limit.saturating_sub(SPARE_FDS).max(1);
        let processes = sockets.div_ceil(per_process);
        anyhow::bail!(
            "{sockets} client sockets need more open files than this process may have \
             (limit {limit}, which cannot be raised here). Split the load: `idle --processes \
             {processes}` re-executes this tool {processes} times with {} clients each and \
             merges the results.",
            sockets.div_ceil(processes)
        );
    }
    Ok(())
}
