//! Part of the `regions` scenario: join latency by where the room is homed, and joins in a
//! region cut off from the others.
//!
//! - For each region, `rounds` times: a client creates a new room (a), and a second client of
//!   the same region joins it (b). Once every region knows every other region's new rooms, a
//!   client of each region joins each room created in each other region (c).
//! - Partition (region-homed layout only): joins per second in new rooms of the last region,
//!   by `workers` clients joining and leaving in turn for `window`, before and during a
//!   partition of that region from all the others.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use super::{Percentiles, latency_histogram};
use crate::client::{Client, Target};
use crate::sim::{Sim, SimLayout};

/// Longest wait for a region to learn another's rooms, or to notice a partition.
const PROPAGATION: Duration = Duration::from_secs(20);

fn ms(us: f64) -> f64 {
    (us / 10.0).round() / 100.0
}

fn percentiles(h: &Histogram<u64>) -> Value {
    let p = Percentiles::from_histogram(h);
    json!({"p50_ms": ms(p.p50_us), "p99_ms": ms(p.p99_us), "samples": p.samples})
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1));
}

async fn connect(url: &str) -> Result<Client> {
    let target = Target::resolve(url).await?;
    Client::connect(&target, None)
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// Connects to `url`, joins `room`; the client and the join's latency (join → `joined`).
async fn timed_join(url: &str, room: &str) -> Result<(Client, Duration)> {
    let mut c = connect(url).await?;
    let started = Instant::now();
    c.join(room)
        .await
        .with_context(|| format!("joining {room} on {url}"))?;
    Ok((c, started.elapsed()))
}

fn room(region: &str, i: usize) -> String {
    format!("homed-{region}-{i}")
}

/// Join latency of (a) creating joins, (b) joins to rooms homed in the joiner's region,
/// (c) joins to rooms homed in each other region, per joining region.
pub async fn measure(sim: &Sim, regions: &[String], rounds: usize) -> Result<Value> {
    let n = regions.len();
    let mut create: Vec<Histogram<u64>> =
        (0..n).map(|_| latency_histogram()).collect::<Result<_>>()?;
    let mut local: Vec<Histogram<u64>> =
        (0..n).map(|_| latency_histogram()).collect::<Result<_>>()?;
    let mut remote: HashMap<(usize, usize), Histogram<u64>> = HashMap::new();
    let mut keep = Vec::new();
    for i in 0..rounds {
        for r in 0..n {
            let edges = &sim.edges[r];
            let (a, d) = timed_join(&edges[i % edges.len()], &room(&regions[r], i)).await?;
            record(&mut create[r], d);
            let (b, d) = timed_join(&edges[(i + 1) % edges.len()], &room(&regions[r], i)).await?;
            record(&mut local[r], d);
            keep.push(a);
            keep.push(b);
        }
    }
    if sim.spec.layout == SimLayout::Homed {
        wait_rooms_known(sim, rounds).await?;
    }
    for i in 0..rounds {
        for r in 0..n {
            for o in (0..n).filter(|o| *o != r) {
                let edges = &sim.edges[r];
                let (c, d) = timed_join(&edges[i % edges.len()], &room(&regions[o], i)).await?;
                let h = match remote.entry((r, o)) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => e.insert(latency_histogram()?),
                };
                record(h, d);
                keep.push(c);
            }
        }
    }
    drop(keep);
    let mut rows = Vec::new();
    let mut local_ok = true;
    let mut remote_ok = true;
    for r in 0..n {
        let mut others = serde_json::Map::new();
        for o in (0..n).filter(|o| *o != r) {
            let h = remote.get(&(r, o)).cloned().unwrap_or(latency_histogram()?);
            let target = (2 * sim.spec.delay_ms[r][o]) as f64 + 10.0;
            let p99 = ms(Percentiles::from_histogram(&h).p99_us);
            let ok = !h.is_empty() && p99 <= target;
            remote_ok &= ok;
            let mut v = percentiles(&h);
            v["target_p99_ms"] = json!(target);
            v["meets_target"] = json!(ok);
            others.insert(regions[o].clone(), v);
        }
        for h in [&create[r], &local[r]] {
            local_ok &= !h.is_empty() && ms(Percentiles::from_histogram(h).p99_us) <= 5.0;
        }
        rows.push(json!({
            "region": regions[r],
            "create": percentiles(&create[r]),
            "local": percentiles(&local[r]),
            "homed_elsewhere": others,
        }));
    }
    Ok(json!({
        "by_region": rows,
        "targets": {
            "create_and_local_p99_ms": 5.0,
            "homed_elsewhere_p99": "round trip to the home region + 10 ms",
            "create_and_local_met": local_ok,
            "homed_elsewhere_met": remote_ok,
        },
    }))
}

/// Waits until every other region's replicas know at least one room homed in `home`.
pub async fn wait_home_known(sim: &Sim, home: usize) -> Result<()> {
    let name = sim.spec.regions[home].clone();
    let deadline = Instant::now() + PROPAGATION;
    for r in (0..sim.spec.regions.len()).filter(|r| *r != home) {
        loop {
            let known = sim.statuses(r).await.iter().all(|s| {
                s["regions"].as_array().is_some_and(|rs| {
                    rs.iter()
                        .any(|x| x["region"] == name.as_str() && x["rooms"].as_u64() >= Some(1))
                })
            });
            if known {
                break;
            }
            if Instant::now() > deadline {
                bail!("region {r} did not learn a room of {name} within {PROPAGATION:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Waits until every replica of every region knows at least `rooms` rooms of each other region.
async fn wait_rooms_known(sim: &Sim, rooms: usize) -> Result<()> {
    let deadline = Instant::now() + PROPAGATION;
    for r in 0..sim.spec.regions.len() {
        loop {
            let statuses = sim.statuses(r).await;
            let known = statuses.iter().all(|s| {
                s["regions"].as_array().is_some_and(|rs| {
                    rs.iter()
                        .all(|x| x["rooms"].as_u64().unwrap_or(0) >= rooms as u64)
                })
            });
            if known {
                break;
            }
            if Instant::now() > deadline {
                bail!("region {r} did not learn the other regions' rooms within {PROPAGATION:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Joins per second in new rooms of `region` by `workers` clients (each joins a new room and
/// leaves it, in turn) over `window`.
async fn join_rate(
    sim: &Sim,
    region: usize,
    workers: usize,
    window: Duration,
    tag: &str,
) -> Result<f64> {
    let edges = sim.edges[region].clone();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let url = edges[w % edges.len()].clone();
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut c = connect(&url).await?;
            let mut joins = 0u64;
            let mut k = 0usize;
            while started.elapsed() < window {
                let room = format!("rate-{tag}-{w}-{k}");
                c.join(&room).await?;
                joins += 1;
                c.leave(&room).await?;
                k += 1;
            }
            Ok::<u64, anyhow::Error>(joins)
        }));
    }
    let mut total = 0u64;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Joins per second in the last region's own rooms before and during its partition.
pub async fn partition(sim: &Sim, workers: usize, window: Duration) -> Result<Value> {
    let region = sim.spec.regions.len() - 1;
    let before = join_rate(sim, region, workers, window, "before").await?;
    sim.partition(region);
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let cut_off = sim.statuses(region).await.iter().all(|s| {
            s["regions"]
                .as_array()
                .is_some_and(|rs| rs.iter().all(|x| x["connected"] == false))
        });
        if cut_off {
            break;
        }
        if Instant::now() > deadline {
            sim.heal(region);
            bail!("the partitioned region never noticed it");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let during = join_rate(sim, region, workers, window, "during").await;
    sim.heal(region);
    let during = during?;
    let ratio = if before > 0.0 { during / before } else { 0.0 };
    Ok(json!({
        "region": sim.spec.regions[region],
        "workers": workers,
        "window_ms": window.as_millis() as u64,
        "joins_per_second_before": (before * 10.0).round() / 10.0,
        "joins_per_second_during": (during * 10.0).round() / 10.0,
        "ratio": (ratio * 1000.0).round() / 1000.0,
        "target_ratio": 0.9,
        "meets_target": ratio >= 0.9,
    }))
}

/// The homing and partition parts of the readable table.
pub fn summary(r: &Value) -> String {
    let mut out = String::new();
    let layout = r["layout"].as_str().unwrap_or("?");
    if let Some(rows) = r["homing"]["by_region"].as_array() {
        out.push_str(&format!(
            "\njoin by where the room is homed ({layout}): p50 p99 ms\n  region    create        local         homed elsewhere\n"
        ));
        for row in rows {
            let g = |v: &Value| {
                format!(
                    "{:>5.1} {:>6.1}",
                    v["p50_ms"].as_f64().unwrap_or(f64::NAN),
                    v["p99_ms"].as_f64().unwrap_or(f64::NAN)
                )
            };
            let others: Vec<String> = row["homed_elsewhere"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(o, v)| format!("{o}: {} (target {})", g(v), v["target_p99_ms"]))
                .collect();
            out.push_str(&format!(
                "  {:<8} {}  {}  {}\n",
                row["region"].as_str().unwrap_or("?"),
                g(&row["create"]),
                g(&row["local"]),
                others.join("; ")
            ));
        }
        out.push_str(&format!(
            "targets: create and local p99 ≤ 5 ms: {}; homed elsewhere p99 ≤ round trip + 10 ms: {}\n",
            r["homing"]["targets"]["create_and_local_met"],
            r["homing"]["targets"]["homed_elsewhere_met"]
        ));
    }
    let p = &r["partition"];
    if p.is_object() {
        out.push_str(&format!(
            "partition of {}: joins/s in its own rooms {} before, {} during (ratio {}, target ≥ 0.9: {})\n",
            p["region"].as_str().unwrap_or("?"),
            p["joins_per_second_before"],
            p["joins_per_second_during"],
            p["ratio"],
            p["meets_target"]
        ));
    }
    out
}
