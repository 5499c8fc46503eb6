//! The multi-region simulation: N regions on one machine, each with its own loopback range
//! (127.0.1.x for the first region, 127.0.2.x for the second …), where every connection that
//! crosses regions goes through a [`delay_proxy`] holding bytes for that pair's one-way delay.
//!
//! Per region: coordinator replicas (hosts .1, .21, .22 …), a Redis (host .50) and edges
//! (hosts .2, .3 …) attached to their region's replicas. Replicas dial the other regions
//! through the proxies (`--dial-via`), so Raft and the cross-region traffic pay the delay.
//! Two layouts: [`SimLayout::Homed`] (region-homed rooms: one group per region, each told the
//! others' gateways) and [`SimLayout::Global`] (one group whose voters span the regions,
//! bootstrapped in the leader's region). The proxies can cut a region off ([`Sim::partition`]).
//! The central comparison is one embedded edge in the leader's region (host .9) that clients
//! of other regions reach through the proxies.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use heliograph_testkit::edge::{self, EdgeOptions, Node};
use heliograph_testkit::ports::free_port_on;
use heliograph_testkit::process::Launchable;
use heliograph_testkit::redis::Redis;
use heliograph_testkit::replica::{Admin, Replica, ReplicaOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::delay_proxy::{self, Switch};

const SECRET: &str = "heliograph-simulation-secret-0123456789";
const STARTUP: Duration = Duration::from_secs(30);
const REDIS_HOST: u8 = 50;
const CENTRAL_HOST: u8 = 9;
/// Proxies of region i towards region j listen on 127.0.i.(PROXY_HOST_BASE + j).
const PROXY_HOST_BASE: u8 = 100;

/// The loopback address of `host` in region `region` (0-based).
pub fn ip(region: usize, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, u8::try_from(region + 1).unwrap_or(u8::MAX), host)
}

/// How the coordinator replicas are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SimLayout {
    /// One Raft group per region; rooms homed where they are created.
    Homed,
    /// One Raft group whose voters span every region (the layout before region-homed rooms).
    Global,
}

/// The host of replica `k` of a region: .1, then .21, .22 …
fn replica_host(k: usize) -> u8 {
    if k == 0 {
        1
    } else {
        u8::try_from(20 + k).unwrap_or(u8::MAX)
    }
}

#[derive(Debug, Clone)]
pub struct SimSpec {
    pub regions: Vec<String>,
    /// One-way delay between regions i and j (symmetric; the diagonal is unused).
    pub delay_ms: Vec<Vec<u64>>,
    /// Index of the region whose replica bootstraps and leads.
    pub leader: usize,
    pub edges_per_region: usize,
    pub layout: SimLayout,
    pub replicas_per_region: usize,
    pub edge_bin: PathBuf,
    pub coordinator_bin: PathBuf,
    pub dir: PathBuf,
}

impl SimSpec {
    pub fn delay(&self, from: usize, to: usize) -> Duration {
        if from == to {
            return Duration::ZERO;
        }
        Duration::from_millis(self.delay_ms[from][to])
    }
}

/// The simulation's processes; each is killed when dropped (Redis is only held).
struct Processes {
    /// Per region, its replicas.
    replicas: Vec<Vec<Replica>>,
    _redis: Vec<Redis>,
    /// Per region, its edges.
    edges: Vec<Vec<Node>>,
    central: Node,
}

/// A running simulation; [`Sim::stop`] ends everything (children are also killed on drop).
pub struct Sim {
    pub spec: SimSpec,
    processes: Option<Processes>,
    proxies: TaskTracker,
    /// `(from region, to region)` → the switch of every proxy between them.
    switches: HashMap<(usize, usize), Switch>,
    stop: CancellationToken,
    /// Per region, the WebSocket URLs of its edges.
    pub edges: Vec<Vec<String>>,
    /// Per region, the URL its clients use to reach the central edge (direct in its region).
    pub central: Vec<String>,
}

impl Sim {
    pub async fn start(spec: SimSpec) -> Result<Sim> {
        let n = spec.regions.len();
        if n < 2 || spec.leader >= n || spec.edges_per_region == 0 || spec.replicas_per_region == 0
        {
            bail!(
                "a simulation needs ≥ 2 regions, a leader among them, ≥ 1 replica and ≥ 1 edge per region"
            );
        }
        let mut switches = HashMap::new();
        for a in 0..n {
            for b in (0..n).filter(|b| *b != a) {
                switches.insert((a, b), Switch::default());
            }
        }
        let mut sim = Sim {
            spec,
            processes: None,
            proxies: TaskTracker::new(),
            switches,
            stop: CancellationToken::new(),
            edges: Vec::new(),
            central: Vec::new(),
        };
        let spec = sim.spec.clone();
        // Replica addresses first, so that each replica can be told how to dial the others.
        let mut raft: Vec<Vec<SocketAddr>> = Vec::new();
        let mut api: Vec<Vec<SocketAddr>> = Vec::new();
        for r in 0..n {
            let (mut rs, mut as_) = (Vec::new(), Vec::new());
            for k in 0..spec.replicas_per_region {
                let host = ip(r, replica_host(k));
                rs.push(SocketAddr::from((host, free_port_on(host.into())?)));
                as_.push(SocketAddr::from((host, free_port_on(host.into())?)));
            }
            raft.push(rs);
            api.push(as_);
        }
        let mut dials = Vec::new();
        for r in 0..n {
            let mut dial = Vec::new();
            for other in (0..n).filter(|o| *o != r) {
                for target in raft[other].iter().chain(&api[other]) {
                    let via = sim.proxy(r, other, *target).await?;
                    dial.push(format!("{target}={via}"));
                }
            }
            dials.push(dial.join(","));
        }
        // The processes start and form blocking, off the runtime that carries the proxies.
        let processes = tokio::task::spawn_blocking({
            let spec = spec.clone();
            move || start_processes(&spec, &raft, &api, &dials)
        })
        .await??;
        // The single-server design: one embedded edge in the leader's region, which clients
        // of other regions reach through the proxies.
        let center = spec.leader;
        let central_addr: SocketAddr = processes.central.addr.parse()?;
        for r in 0..n {
            let via = if r == center {
                central_addr
            } else {
                sim.proxy(r, center, central_addr).await?
            };
            sim.central.push(format!("ws://{via}/ws"));
        }
        let all = processes.edges.iter().flatten();
        for node in all.clone().chain([&processes.central]) {
            edge::wait_ready(&node.addr, STARTUP).await?;
        }
        // Edges report ready once linked; also wait for each one's Redis subscription.
        for node in all {
            edge::wait_redis_up(&node.addr, STARTUP).await?;
        }
        sim.edges = processes
            .edges
            .iter()
            .map(|v| v.iter().map(Node::ws_url).collect())
            .collect();
        sim.processes = Some(processes);
        Ok(sim)
    }

    /// A proxy in region `from` towards `to` (an address in region `region_to`).
    async fn proxy(&self, from: usize, region_to: usize, to: SocketAddr) -> Result<SocketAddr> {
        let host = PROXY_HOST_BASE.saturating_add(u8::try_from(region_to).unwrap_or(u8::MAX));
        let listener = TcpListener::bind((ip(from, host), 0)).await?;
        let addr = listener.local_addr()?;
        let switch = self
            .switches
            .get(&(from, region_to))
            .cloned()
            .unwrap_or_default();
        self.proxies.spawn(delay_proxy::run_switched(
            listener,
            to,
            self.spec.delay(from, region_to),
            switch,
            self.stop.clone(),
        ));
        Ok(addr)
    }

    /// Cuts `region` off from every other region (both ways), until [`Sim::heal`].
    pub fn partition(&self, region: usize) {
        for ((a, b), switch) in &self.switches {
            if *a == region || *b == region {
                switch.cut();
            }
        }
    }

    pub fn heal(&self, region: usize) {
        for ((a, b), switch) in &self.switches {
            if *a == region || *b == region {
                switch.heal();
            }
        }
    }

    /// The `status` JSON of every replica of `region` (`null` for one that does not answer).
    pub async fn statuses(&self, region: usize) -> Vec<serde_json::Value> {
        let apis: Vec<String> = self
            .processes
            .as_ref()
            .and_then(|p| p.replicas.get(region))
            .map(|rs| rs.iter().map(|r| r.api.clone()).collect())
            .unwrap_or_default();
        let admin = Admin::of(self.spec.coordinator_bin.clone(), SECRET);
        tokio::task::spawn_blocking(move || {
            apis.iter()
                .map(|a| admin.status(a).unwrap_or(serde_json::Value::Null))
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    pub async fn stop(mut self) {
        if let Some(processes) = self.processes.take() {
            let _ = tokio::task::spawn_blocking(move || drop(processes)).await;
        }
        self.stop.cancel();
        self.proxies.close();
        self.proxies.wait().await;
    }
}

/// The Raft id of replica `k` of region `r`.
fn replica_id(r: usize, k: usize) -> u64 {
    u64::try_from(r * 10 + k + 1).unwrap_or(u64::MAX)
}

/// Starts the replicas (dialling the other regions through `dials`), forms them in the
/// spec's layout, then per region a Redis and its edges, and the central edge.
fn start_processes(
    spec: &SimSpec,
    raft: &[Vec<SocketAddr>],
    api: &[Vec<SocketAddr>],
    dials: &[String],
) -> Result<Processes> {
    let n = spec.regions.len();
    // Heartbeats above the longest round trip (openraft gives each append one interval), for
    // a group whose voters span regions; a region's own group keeps the default.
    let max_delay = spec.delay_ms.iter().flatten().copied().max().unwrap_or(0);
    let heartbeat_ms = (max_delay * 2 + 50).max(100);
    let mut replicas: Vec<Vec<Replica>> = Vec::new();
    for r in 0..n {
        let region = &spec.regions[r];
        let mut group = Vec::new();
        for k in 0..spec.replicas_per_region {
            let name = format!("replica-{region}-{k}");
            let mut options = ReplicaOptions::new(replica_id(r, k), region, &spec.dir.join(&name))
                .log(&spec.dir.join(format!("{name}.log")))
                .args(["--dial-via", &dials[r]])
                .bin(&spec.coordinator_bin);
            if spec.layout == SimLayout::Global {
                options = options.args(["--heartbeat-ms", &heartbeat_ms.to_string()]);
            }
            options.raft_listen = raft[r][k].to_string();
            options.api_listen = api[r][k].to_string();
            options.metrics_listen = format!("{}:0", raft[r][k].ip());
            SECRET.clone_into(&mut options.secret);
            "warn".clone_into(&mut options.rust_log);
            group.push(Replica::spawn(options)?);
        }
        replicas.push(group);
    }
    let admin = Admin::of(spec.coordinator_bin.clone(), SECRET);
    match spec.layout {
        SimLayout::Global => {
            // The leader's region first, so that its first replica bootstraps.
            let mut order: Vec<usize> = vec![spec.leader];
            order.extend((0..n).filter(|r| *r != spec.leader));
            let first = replica_id(spec.leader, 0);
            let via = replicas[spec.leader][0].api.clone();
            admin.bootstrap(&via)?;
            for r in order {
                for replica in &replicas[r] {
                    if replica.id != first {
                        admin.add(&via, replica)?;
                    }
                }
            }
            let apis: Vec<&str> = replicas.iter().flatten().map(|r| r.api.as_str()).collect();
            admin
                .wait_formed(&apis, first, STARTUP)
                .context("the replicas never saw the whole cluster")?;
        }
        SimLayout::Homed => {
            for group in &replicas {
                let via = group[0].api.clone();
                admin.bootstrap(&via)?;
                for replica in &group[1..] {
                    admin.add(&via, replica)?;
                }
                let apis: Vec<&str> = group.iter().map(|r| r.api.as_str()).collect();
                admin
                    .wait_formed(&apis, group[0].id, STARTUP)
                    .context("a region's replicas never formed their group")?;
            }
            for (r, group) in replicas.iter().enumerate() {
                for o in (0..n).filter(|o| *o != r) {
                    let gateways: Vec<String> = api[o].iter().map(ToString::to_string).collect();
                    let gateways: Vec<&str> = gateways.iter().map(String::as_str).collect();
                    admin.set_region(&group[0].api, &spec.regions[o], &gateways)?;
                }
            }
            let apis: Vec<&str> = replicas.iter().flatten().map(|r| r.api.as_str()).collect();
            admin
                .wait_statuses(&apis, STARTUP, "every region to follow every other", |s| {
                    s.iter().all(|v| {
                        v["regions"].as_array().is_some_and(|rs| {
                            rs.len() == n - 1 && rs.iter().all(|x| x["connected"] == true)
                        })
                    })
                })
                .context("the regions never followed each other")?;
        }
    }
    let mut redis = Vec::new();
    let mut edges = Vec::new();
    for (r, group) in replicas.iter().enumerate() {
        let region = &spec.regions[r];
        let urls = group.iter().map(Replica::url).collect::<Vec<_>>().join(",");
        let bus = Redis::start_on(ip(r, REDIS_HOST).into()).context("starting redis-server")?;
        let mut nodes = Vec::new();
        for e in 0..spec.edges_per_region {
            let host = u8::try_from(2 + e).unwrap_or(u8::MAX);
            let name = format!("{region}-{e}");
            let options = edge_options(spec, &name, &format!("{}:0", ip(r, host)))
                .args(["--region", region, "--edge-id", &name])
                .args(["--coordinator", &urls, "--cluster-secret", SECRET])
                .args(["--redis", &bus.url()]);
            nodes.push(Node::spawn(&options)?);
        }
        redis.push(bus);
        edges.push(nodes);
    }
    let center = spec.leader;
    let options = edge_options(spec, "central", &format!("{}:0", ip(center, CENTRAL_HOST)))
        .args(["--region", &spec.regions[center]]);
    let central = Node::spawn(&options)?;
    Ok(Processes {
        replicas,
        _redis: redis,
        edges,
        central,
    })
}

/// An edge of the simulation named `name`; its limits must not be hit by a measurement (the
/// generator sends far more than a person would).
fn edge_options(spec: &SimSpec, name: &str, listen: &str) -> EdgeOptions {
    EdgeOptions::new(&spec.dir.join(name))
        .listen(listen)
        .log_filter("warn")
        .log(&spec.dir.join(format!("{name}.log")))
        .args([
            "--rate-limit-per-second",
            "100000",
            "--rate-limit-burst",
            "100000",
        ])
        .bin(&spec.edge_bin)
}

/// Parses `a-b=MS` pairs into a symmetric matrix over `regions`.
pub fn parse_delays(regions: &[String], pairs: &[String]) -> Result<Vec<Vec<u64>>> {
    let n = regions.len();
    let index: HashMap<&str, usize> = regions
        .iter()
        .enumerate()
        .map(|(i, r)| (r.as_str(), i))
        .collect();
    let mut m = vec![vec![0u64; n]; n];
    let mut set = vec![vec![false; n]; n];
    for p in pairs {
        let (pair, ms) = p
            .split_once('=')
            .ok_or_else(|| anyhow!("--delay {p:?}: expected A-B=MS"))?;
        let (a, b) = pair
            .split_once('-')
            .ok_or_else(|| anyhow!("--delay {p:?}: expected A-B=MS"))?;
        let (Some(&i), Some(&j)) = (index.get(a), index.get(b)) else {
            bail!("--delay {p:?} names a region not in --regions");
        };
        let ms: u64 = ms.parse().with_context(|| format!("--delay {p:?}"))?;
        m[i][j] = ms;
        m[j][i] = ms;
        set[i][j] = true;
        set[j][i] = true;
    }
    for i in 0..n {
        for j in (0..n).filter(|j| *j != i) {
            if !set[i][j] {
                bail!("no --delay for {}-{}", regions[i], regions[j]);
            }
        }
    }
    Ok(m)
}
