//! `regions`: the latency matrix of the multi-region simulation ([`crate::sim`]).
//!
//! The same clients (a few per region, all in this process so that one clock times every
//! delivery) run the same workload twice: federated (each client on an edge of its own
//! region) and central (every client on one edge in the leader's region, the single-server
//! design, which clients of other regions reach across the simulated network). Measured per
//! region pair: signal delivery (sender's send → receiver's read, timestamp in the signal),
//! and per joining region: join latency (join → `joined`) plus, per pair, how long until a
//! member in the other region hears `peer-joined`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::task::TaskTracker;

use super::{Percentiles, latency_histogram};
use crate::client::{Client, Target, Ws};
use crate::sim::{Sim, SimLayout, SimSpec};

const ROOM: &str = "regions-matrix";
/// Longest wait for one answer (joined, left) across the simulated network.
const STEP: Duration = Duration::from_secs(20);
/// Longest wait for the last signals of a run to arrive.
const DRAIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize)]
pub struct RegionsSettings {
    pub regions: Vec<String>,
    pub delay_ms: Vec<Vec<u64>>,
    pub leader: String,
    pub edges_per_region: usize,
    pub clients_per_region: usize,
    pub rounds: usize,
    pub round_interval_ms: u64,
    pub join_rounds: usize,
    pub layout: crate::sim::SimLayout,
    pub replicas_per_region: usize,
    /// Rounds of the homing measurement (see `homing`); 0: skipped.
    pub homing_rounds: usize,
    /// Partition run (region-homed layout only): concurrent clients and window per phase.
    pub partition_workers: usize,
    pub partition_window_ms: u64,
}

/// What one layout measured.
#[derive(Debug, Clone, Serialize)]
pub struct LayoutResult {
    /// `"from->to"` → signal delivery time.
    pub signal: HashMap<String, Percentiles>,
    /// Joining region → join latency.
    pub join: HashMap<String, Percentiles>,
    /// `"joiner->member"` → time until the member heard `peer-joined`.
    pub join_seen: HashMap<String, Percentiles>,
    pub signals_sent: u64,
    pub signals_received: u64,
}

#[derive(Default)]
struct Stats {
    signal: HashMap<(usize, usize), Histogram<u64>>,
    join: HashMap<usize, Histogram<u64>>,
    join_seen: HashMap<(usize, usize), Histogram<u64>>,
    received: u64,
    /// Peer id → (when its join was sent, its region).
    joining: HashMap<String, (Instant, usize)>,
}

fn record<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Histogram<u64>>, key: K, d: Duration) {
    let h = match map.entry(key) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(v) => match latency_histogram() {
            Ok(h) => v.insert(h),
            Err(_) => return,
        },
    };
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    let _ = h.record(us);
}

struct Participant {
    region: usize,
    peer_id: String,
    sink: SplitSink<Ws, Message>,
    /// `joined` and `left` frames for this client, in order.
    answers: mpsc::Receiver<String>,
    /// Other members this client knows of (from `joined`, `peer-joined`, `peer-left`).
    known: Arc<AtomicI64>,
}

pub async fn run(spec: SimSpec, settings: &RegionsSettings) -> Result<Value> {
    let sim = Sim::start(spec).await?;
    let outcome = async {
        let federated = measure(&sim, settings, Layout::Federated).await?;
        let central = measure(&sim, settings, Layout::Central).await?;
        let homing = if settings.homing_rounds > 0 {
            super::homing::measure(&sim, &settings.regions, settings.homing_rounds).await?
        } else {
            Value::Null
        };
        let partition =
            if settings.layout == crate::sim::SimLayout::Homed && settings.partition_workers > 0 {
                super::homing::partition(
                    &sim,
                    settings.partition_workers,
                    Duration::from_millis(settings.partition_window_ms),
                )
                .await?
            } else {
                Value::Null
            };
        Ok::<_, anyhow::Error>((federated, central, homing, partition))
    }
    .await;
    sim.stop().await;
    let (federated, central, homing, partition) = outcome?;
    let mut out = results(settings, &federated, &central);
    out["layout"] = serde_json::to_value(settings.layout)?;
    out["homing"] = homing;
    out["partition"] = partition;
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Federated,
    Central,
}

async fn measure(sim: &Sim, s: &RegionsSettings, layout: Layout) -> Result<LayoutResult> {
    let epoch = Instant::now();
    let stats = Arc::new(Mutex::new(Stats::default()));
    let readers = TaskTracker::new();
    let mut people = Vec::new();
    for region in 0..s.regions.len() {
        for k in 0..s.clients_per_region {
            let url = match layout {
                Layout::Federated => &sim.edges[region][k % sim.edges[region].len()],
                Layout::Central => &sim.central[region],
            };
            let target = Target::resolve(url).await?;
            let client = Client::connect(&target, None)
                .await
                .with_context(|| format!("connecting to {url}"))?;
            let (sink, stream) = client.ws.split();
            let (tx, rx) = mpsc::channel(16);
            let known = Arc::new(AtomicI64::new(0));
            readers.spawn(read_loop(
                stream,
                Reader {
                    region,
                    epoch,
                    stats: Arc::clone(&stats),
                    answers: tx,
                    known: Arc::clone(&known),
                },
            ));
            people.push(Participant {
                region,
                peer_id: client.peer_id,
                sink,
                answers: rx,
                known,
            });
        }
    }
    // Joins, interleaving regions so that every joiner has members everywhere to notify.
    let order = interleaved(&people, s.regions.len());
    for (k, &i) in order.iter().enumerate() {
        join(&mut people[i], &stats).await?;
        if k == 0 && layout == Layout::Federated && sim.spec.layout == SimLayout::Homed {
            // The room is homed where its first member created it; the others join it once
            // their regions know that (a name created in two regions at once is merged,
            // which is not what this measures).
            super::homing::wait_home_known(sim, people[i].region).await?;
        }
    }
    // Signals go to members the sender's edge knows: wait until every client knows all.
    let others = i64::try_from(people.len().saturating_sub(1)).unwrap_or(i64::MAX);
    let deadline = Instant::now() + STEP;
    while people
        .iter()
        .any(|p| p.known.load(Ordering::SeqCst) < others)
    {
        if Instant::now() > deadline {
            bail!("not every client heard of every join within {STEP:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Signals: every round, every client sends one to every other client.
    let ids: Vec<String> = people.iter().map(|p| p.peer_id.clone()).collect();
    let mut sent = 0u64;
    // Senders take turns through the round, so that a delivery measures the path, not a
    // queue of the whole room's signals behind it.
    let turns = u32::try_from(people.len()).unwrap_or(u32::MAX).max(1);
    let gap = Duration::from_millis(s.round_interval_ms) / turns;
    for _ in 0..s.rounds {
        for p in &mut people {
            for to in ids.iter().filter(|id| **id != p.peer_id) {
                let t = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
                let frame = json!({"type": "signal", "room": ROOM, "to": to, "kind": "custom",
                    "data": {"t": t, "r": p.region}});
                p.sink
                    .send(Message::Text(Utf8Bytes::from(frame.to_string())))
                    .await?;
                sent += 1;
            }
            tokio::time::sleep(gap).await;
        }
    }
    let deadline = Instant::now() + DRAIN;
    while lock(&stats).received < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Join latency under no other load: members leave and come back one at a time.
    for _ in 0..s.join_rounds {
        for &i in &order {
            let p = &mut people[i];
            p.sink
                .send(Message::Text(Utf8Bytes::from(
                    json!({"type": "leave", "room": ROOM}).to_string(),
                )))
                .await?;
            answer(p, "left").await?;
            join(p, &stats).await?;
        }
    }
    for p in &mut people {
        let _ = p.sink.close().await;
    }
    readers.close();
    if tokio::time::timeout(STEP, readers.wait()).await.is_err() {
        bail!("clients did not close");
    }
    let st = lock(&stats);
    let name = |i: usize| s.regions[i].clone();
    Ok(LayoutResult {
        signal: st
            .signal
            .iter()
            .map(|((a, b), h)| {
                (
                    format!("{}->{}", name(*a), name(*b)),
                    Percentiles::from_histogram(h),
                )
            })
            .collect(),
        join: st
            .join
            .iter()
            .map(|(a, h)| (name(*a), Percentiles::from_histogram(h)))
            .collect(),
        join_seen: st
            .join_seen
            .iter()
            .map(|((a, b), h)| {
                (
                    format!("{}->{}", name(*a), name(*b)),
                    Percentiles::from_histogram(h),
                )
            })
            .collect(),
        signals_sent: sent,
        signals_received: st.received,
    })
}

fn lock(stats: &Mutex<Stats>) -> std::sync::MutexGuard<'_, Stats> {
    stats.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Client indexes ordered region by region in turn: us0, eu0, ap0, us1, …
fn interleaved(people: &[Participant], regions: usize) -> Vec<usize> {
    let mut by_region: Vec<Vec<usize>> = vec![Vec::new(); regions];
    for (i, p) in people.iter().enumerate() {
        by_region[p.region].push(i);
    }
    let longest = by_region.iter().map(Vec::len).max().unwrap_or(0);
    (0..longest)
        .flat_map(|k| by_region.iter().filter_map(move |v| v.get(k).copied()))
        .collect()
}

async fn join(p: &mut Participant, stats: &Mutex<Stats>) -> Result<()> {
    let start = Instant::now();
    lock(stats)
        .joining
        .insert(p.peer_id.clone(), (start, p.region));
    p.sink
        .send(Message::Text(Utf8Bytes::from(
            json!({"type": "join", "room": ROOM}).to_string(),
        )))
        .await?;
    answer(p, "joined").await?;
    record(&mut lock(stats).join, p.region, start.elapsed());
    Ok(())
}

async fn answer(p: &mut Participant, ty: &str) -> Result<()> {
    let got = tokio::time::timeout(STEP, p.answers.recv())
        .await
        .map_err(|_| anyhow!("no `{ty}` within {STEP:?}"))?
        .ok_or_else(|| anyhow!("connection closed while waiting for `{ty}`"))?;
    if got != ty {
        bail!("expected `{ty}`, got `{got}`");
    }
    Ok(())
}

/// What one client's reader records into.
struct Reader {
    region: usize,
    epoch: Instant,
    stats: Arc<Mutex<Stats>>,
    answers: mpsc::Sender<String>,
    known: Arc<AtomicI64>,
}

async fn read_loop(mut stream: futures_util::stream::SplitStream<Ws>, r: Reader) {
    let Reader {
        region,
        epoch,
        stats,
        answers,
        known,
    } = r;
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        match v["type"].as_str() {
            Some("signal") => {
                let (Some(t), Some(from)) = (v["data"]["t"].as_u64(), v["data"]["r"].as_u64())
                else {
                    continue;
                };
                let now = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
                let mut st = lock(&stats);
                st.received += 1;
                let from = usize::try_from(from).unwrap_or(usize::MAX);
                record(
                    &mut st.signal,
                    (from, region),
                    Duration::from_micros(now.saturating_sub(t)),
                );
            }
            Some("peer-left") => {
                known.fetch_sub(1, Ordering::SeqCst);
            }
            Some("peer-joined") => {
                known.fetch_add(1, Ordering::SeqCst);
                let Some(peer) = v["peer"]["id"].as_str() else {
                    continue;
                };
                let mut st = lock(&stats);
                if let Some((at, from)) = st.joining.get(peer).copied() {
                    record(&mut st.join_seen, (from, region), at.elapsed());
                }
            }
            Some(ty @ ("joined" | "left")) => {
                if ty == "joined" {
                    let peers = v["peers"].as_array().map_or(0, Vec::len);
                    known.store(i64::try_from(peers).unwrap_or(0), Ordering::SeqCst);
                }
                if answers.send(ty.to_owned()).await.is_err() {
                    return;
                }
            }
            Some("error") => {
                eprintln!("regions: server error: {text}");
            }
            _ => {}
        }
    }
}

fn ms(us: f64) -> f64 {
    (us / 10.0).round() / 100.0
}

/// The result document: both layouts per pair in milliseconds, and the targets.
fn results(s: &RegionsSettings, fed: &LayoutResult, central: &LayoutResult) -> Value {
    let n = s.regions.len();
    let mut pairs = Vec::new();
    let mut same_ok = true;
    let mut cross_ok = true;
    for a in 0..n {
        for b in 0..n {
            let key = format!("{}->{}", s.regions[a], s.regions[b]);
            let delay = if a == b { 0 } else { s.delay_ms[a][b] };
            let f = fed.signal.get(&key).cloned().unwrap_or_default();
            let c = central.signal.get(&key).cloned().unwrap_or_default();
            let jf = fed.join_seen.get(&key).cloned().unwrap_or_default();
            let jc = central.join_seen.get(&key).cloned().unwrap_or_default();
            let limit_ms = delay as f64 + 5.0;
            let ok = f.samples > 0 && ms(f.p99_us) <= limit_ms;
            if a == b {
                same_ok &= ok;
            } else {
                cross_ok &= ok;
            }
            pairs.push(json!({
                "from": s.regions[a], "to": s.regions[b], "one_way_delay_ms": delay,
                "signal": {
                    "federated": {"p50_ms": ms(f.p50_us), "p99_ms": ms(f.p99_us), "samples": f.samples},
                    "central": {"p50_ms": ms(c.p50_us), "p99_ms": ms(c.p99_us), "samples": c.samples},
                    "target_p99_ms": limit_ms, "meets_target": ok,
                },
                "join_seen": {
                    "federated": {"p50_ms": ms(jf.p50_us), "p99_ms": ms(jf.p99_us), "samples": jf.samples},
                    "central": {"p50_ms": ms(jc.p50_us), "p99_ms": ms(jc.p99_us), "samples": jc.samples},
                },
            }));
        }
    }
    let joins: Vec<Value> = s
        .regions
        .iter()
        .map(|r| {
            let f = fed.join.get(r).cloned().unwrap_or_default();
            let c = central.join.get(r).cloned().unwrap_or_default();
            json!({
                "region": r,
                "federated": {"p50_ms": ms(f.p50_us), "p99_ms": ms(f.p99_us), "samples": f.samples},
                "central": {"p50_ms": ms(c.p50_us), "p99_ms": ms(c.p99_us), "samples": c.samples},
            })
        })
        .collect();
    json!({
        "pairs": pairs,
        "joins": joins,
        "signals": {
            "federated": {"sent": fed.signals_sent, "received": fed.signals_received},
            "central": {"sent": central.signals_sent, "received": central.signals_received},
        },
        "targets": {
            "same_region_p99_ms": 5.0,
            "cross_region_p99": "one-way delay + 5 ms",
            "same_region_met": same_ok,
            "cross_region_met": cross_ok,
        },
    })
}

/// The readable table printed after a run.
pub fn summary(r: &Value) -> String {
    let mut out = String::from(
        "regions: signal delivery and join visibility, federated vs central (ms)\n\
         pair        delay | signal p50  p99 (central p50  p99) | join seen p50  p99 (central p50  p99)\n",
    );
    for p in r["pairs"].as_array().into_iter().flatten() {
        let g = |path: &[&str]| {
            path.iter()
                .try_fold(p, |v, k| v.get(k))
                .and_then(Value::as_f64)
                .unwrap_or(f64::NAN)
        };
        out.push_str(&format!(
            "{:<11} {:>5} | {:>10.1} {:>4.1} ({:>11.1} {:>4.1}) | {:>13.1} {:>4.1} ({:>11.1} {:>4.1}){}\n",
            format!("{}->{}", p["from"].as_str().unwrap_or("?"), p["to"].as_str().unwrap_or("?")),
            g(&["one_way_delay_ms"]),
            g(&["signal", "federated", "p50_ms"]),
            g(&["signal", "federated", "p99_ms"]),
            g(&["signal", "central", "p50_ms"]),
            g(&["signal", "central", "p99_ms"]),
            g(&["join_seen", "federated", "p50_ms"]),
            g(&["join_seen", "federated", "p99_ms"]),
            g(&["join_seen", "central", "p50_ms"]),
            g(&["join_seen", "central", "p99_ms"]),
            if p["signal"]["meets_target"] == true { "" } else { "  (signal p99 over target)" },
        ));
    }
    out.push_str("join (join → joined) by region: p50 p99 (central p50 p99)\n");
    for j in r["joins"].as_array().into_iter().flatten() {
        let g = |a: &str, b: &str| j[a][b].as_f64().unwrap_or(f64::NAN);
        out.push_str(&format!(
            "  {:<8} {:>7.1} {:>7.1} ({:>7.1} {:>7.1})\n",
            j["region"].as_str().unwrap_or("?"),
            g("federated", "p50_ms"),
            g("federated", "p99_ms"),
            g("central", "p50_ms"),
            g("central", "p99_ms"),
        ));
    }
    out.push_str(&format!(
        "targets: same-region p99 ≤ 5 ms: {}; cross-region p99 ≤ delay + 5 ms: {}",
        r["targets"]["same_region_met"], r["targets"]["cross_region_met"]
    ));
    out.push_str(&super::homing::summary(r));
    out
}
