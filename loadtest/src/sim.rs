//! The multi-region simulation: N regions on one machine, each with its own loopback range
//! (127.0.1.x for the first region, 127.0.2.x for the second …), where every connection that
//! crosses regions goes through a [`delay_proxy`] holding bytes for that pair's one-way delay.
//!
//! Per region: one coordinator replica (host .1; the leader's region bootstraps), a Redis
//! (host .50) and edges (hosts .2, .3 …) attached to their region's replica. Replicas dial
//! each other through the proxies (`--dial-via`), so Raft and the cross-region relay both
//! pay the delay. The central comparison is one embedded edge in the leader's region
//! (host .9) that clients of other regions reach through the proxies.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::delay_proxy;

const SECRET: &str = "heliograph-simulation-secret-0123456789";
const STARTUP: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);
const REDIS_HOST: u8 = 50;
const CENTRAL_HOST: u8 = 9;
/// Proxies of region i towards region j listen on 127.0.i.(PROXY_HOST_BASE + j).
const PROXY_HOST_BASE: u8 = 100;

/// The loopback address of `host` in region `region` (0-based).
pub fn ip(region: usize, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, u8::try_from(region + 1).unwrap_or(u8::MAX), host)
}

#[derive(Debug, Clone)]
pub struct SimSpec {
    pub regions: Vec<String>,
    /// One-way delay between regions i and j (symmetric; the diagonal is unused).
    pub delay_ms: Vec<Vec<u64>>,
    /// Index of the region whose replica bootstraps and leads.
    pub leader: usize,
    pub edges_per_region: usize,
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

/// A running simulation; [`Sim::stop`] ends everything (children are also killed on drop).
pub struct Sim {
    pub spec: SimSpec,
    children: Vec<Child>,
    proxies: TaskTracker,
    stop: CancellationToken,
    /// Per region, the WebSocket URLs of its edges.
    pub edges: Vec<Vec<String>>,
    /// Per region, the URL its clients use to reach the central edge (direct in its region).
    pub central: Vec<String>,
}

fn free_port(ip: Ipv4Addr) -> Result<u16> {
    let l = std::net::TcpListener::bind((ip, 0)).with_context(|| format!("binding {ip}:0"))?;
    Ok(l.local_addr()?.port())
}

impl Sim {
    pub async fn start(spec: SimSpec) -> Result<Sim> {
        let n = spec.regions.len();
        if n < 2 || spec.leader >= n || spec.edges_per_region == 0 {
            bail!("a simulation needs ≥ 2 regions, a leader among them and ≥ 1 edge per region");
        }
        let mut sim = Sim {
            spec,
            children: Vec::new(),
            proxies: TaskTracker::new(),
            stop: CancellationToken::new(),
            edges: Vec::new(),
            central: Vec::new(),
        };
        let spec = sim.spec.clone();
        // Replica addresses first, so that each replica can be told how to dial the others.
        let mut raft = Vec::new();
        let mut api = Vec::new();
        for r in 0..n {
            raft.push(SocketAddr::from((ip(r, 1), free_port(ip(r, 1))?)));
            api.push(SocketAddr::from((ip(r, 1), free_port(ip(r, 1))?)));
        }
        // Heartbeats above the longest round trip (openraft gives each append one interval).
        let max_delay = spec.delay_ms.iter().flatten().copied().max().unwrap_or(0);
        let heartbeat_ms = (max_delay * 2 + 50).max(100);
        for r in 0..n {
            let mut dial = Vec::new();
            for other in (0..n).filter(|o| *o != r) {
                for target in [raft[other], api[other]] {
                    let via = sim.proxy(r, other, target).await?;
                    dial.push(format!("{target}={via}"));
                }
            }
            let data = spec.dir.join(format!("replica-{}", spec.regions[r]));
            let mut cmd = Command::new(&spec.coordinator_bin);
            cmd.args(["serve", "--id", &(r + 1).to_string()])
                .args(["--raft-listen", &raft[r].to_string()])
                .args(["--api-listen", &api[r].to_string()])
                .args(["--metrics-listen", &format!("{}:0", raft[r].ip())])
                .args(["--region", &spec.regions[r]])
                .arg("--data-dir")
                .arg(&data)
                .args(["--heartbeat-ms", &heartbeat_ms.to_string()])
                .args(["--dial-via", &dial.join(",")])
                .env("HELIOGRAPH_CLUSTER_SECRET", SECRET)
                .env("RUST_LOG", "warn");
            sim.spawn_reporting(
                cmd,
                &spec.dir.join(format!("replica-{}.log", spec.regions[r])),
            )
            .await?;
        }
        let admin = |args: Vec<String>| {
            let bin = spec.coordinator_bin.clone();
            async move {
                let out = Command::new(bin)
                    .args(&args)
                    .env("HELIOGRAPH_CLUSTER_SECRET", SECRET)
                    .output()
                    .await?;
                if !out.status.success() {
                    bail!(
                        "coordinator {}: {}",
                        args.join(" "),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                Ok(serde_json::from_slice::<serde_json::Value>(&out.stdout)?)
            }
        };
        let leader_api = api[spec.leader].to_string();
        admin(vec!["bootstrap".into(), "--api".into(), leader_api.clone()]).await?;
        for r in (0..n).filter(|r| *r != spec.leader) {
            admin(vec![
                "add".into(),
                "--api".into(),
                leader_api.clone(),
                "--id".into(),
                (r + 1).to_string(),
                "--raft".into(),
                raft[r].to_string(),
                "--node-api".into(),
                api[r].to_string(),
                "--region".into(),
                spec.regions[r].clone(),
            ])
            .await?;
        }
        for (r, replica_api) in api.iter().enumerate() {
            let want = spec.leader + 1;
            let mut agreed = false;
            for _ in 0..(STARTUP.as_millis() / POLL.as_millis()) {
                let status = admin(vec![
                    "status".into(),
                    "--api".into(),
                    replica_api.to_string(),
                ])
                .await;
                if status.is_ok_and(|v| {
                    v["leader"] == want
                        && v["members"]
                            .as_array()
                            .is_some_and(|m| m.iter().filter(|m| m["voter"] == true).count() == n)
                }) {
                    agreed = true;
                    break;
                }
                tokio::time::sleep(POLL).await;
            }
            if !agreed {
                bail!("replica of {} never saw the whole cluster", spec.regions[r]);
            }
        }
        for (r, replica_api) in api.iter().enumerate() {
            let redis_port = free_port(ip(r, REDIS_HOST))?;
            let mut cmd = Command::new("redis-server");
            cmd.args(["--port", &redis_port.to_string()])
                .args(["--bind", &ip(r, REDIS_HOST).to_string()])
                .args(["--save", "", "--appendonly", "no"]);
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true);
            sim.children
                .push(cmd.spawn().context("starting redis-server")?);
            let mut urls = Vec::new();
            for e in 0..spec.edges_per_region {
                let host = u8::try_from(2 + e).unwrap_or(u8::MAX);
                let name = format!("{}-{e}", spec.regions[r]);
                let mut cmd = Command::new(&spec.edge_bin);
                cmd.args(["--listen", &format!("{}:0", ip(r, host))])
                    .arg("--data-dir")
                    .arg(spec.dir.join(&name))
                    .args(["--region", &spec.regions[r], "--edge-id", &name])
                    .args(["--coordinator", &format!("http://{replica_api}")])
                    .args(["--cluster-secret", SECRET])
                    .args([
                        "--redis",
                        &format!("redis://{}:{redis_port}/", ip(r, REDIS_HOST)),
                    ]);
                edge_flags(&mut cmd);
                let addr = sim
                    .spawn_reporting(cmd, &spec.dir.join(format!("{name}.log")))
                    .await?;
                urls.push(addr);
            }
            sim.edges.push(urls);
        }
        // The single-server design: one embedded edge in the leader's region.
        let center = spec.leader;
        let mut cmd = Command::new(&spec.edge_bin);
        cmd.args(["--listen", &format!("{}:0", ip(center, CENTRAL_HOST))])
            .arg("--data-dir")
            .arg(spec.dir.join("central"))
            .args(["--region", &spec.regions[center]]);
        edge_flags(&mut cmd);
        let central = sim
            .spawn_reporting(cmd, &spec.dir.join("central.log"))
            .await?;
        let central_addr: SocketAddr = central.parse()?;
        for r in 0..n {
            let via = if r == center {
                central_addr
            } else {
                sim.proxy(r, center, central_addr).await?
            };
            sim.central.push(via.to_string());
        }
        let all: Vec<String> = sim
            .edges
            .iter()
            .flatten()
            .cloned()
            .chain([central])
            .collect();
        for addr in &all {
            wait_ready(addr).await?;
        }
        // Edges report ready once linked; also wait for each one's Redis subscription.
        for addr in sim.edges.iter().flatten() {
            wait_metric(addr, "heliograph_edge_redis_up 1").await?;
        }
        sim.edges = sim
            .edges
            .iter()
            .map(|v| v.iter().map(|a| format!("ws://{a}/ws")).collect())
            .collect();
        sim.central = sim.central.iter().map(|a| format!("ws://{a}/ws")).collect();
        Ok(sim)
    }

    /// A proxy in region `from` towards `to` (an address in region `region_to`).
    async fn proxy(&self, from: usize, region_to: usize, to: SocketAddr) -> Result<SocketAddr> {
        let host = PROXY_HOST_BASE.saturating_add(u8::try_from(region_to).unwrap_or(u8::MAX));
        let listener = TcpListener::bind((ip(from, host), 0)).await?;
        let addr = listener.local_addr()?;
        self.proxies.spawn(delay_proxy::run(
            listener,
            to,
            self.spec.delay(from, region_to),
            self.stop.clone(),
        ));
        Ok(addr)
    }

    /// Starts a child that prints one JSON line with its address (`listening` or `api`).
    async fn spawn_reporting(&mut self, mut cmd: Command, log: &Path) -> Result<String> {
        let log = std::fs::File::create(log)?;
        cmd.stdout(Stdio::piped()).stderr(log).kill_on_drop(true);
        let mut child = cmd.spawn().context("starting a cluster process")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        self.children.push(child);
        let mut line = String::new();
        tokio::time::timeout(STARTUP, BufReader::new(stdout).read_line(&mut line))
            .await
            .map_err(|_| anyhow!("a cluster process did not report its address"))??;
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("bad start line {line:?}"))?;
        v.get("listening")
            .or_else(|| v.get("api"))
            .and_then(|a| a.as_str())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no address in {line:?}"))
    }

    pub async fn stop(mut self) {
        for c in &mut self.children {
            let _ = c.start_kill();
        }
        for c in &mut self.children {
            let _ = c.wait().await;
        }
        self.stop.cancel();
        self.proxies.close();
        self.proxies.wait().await;
    }
}

/// Limits a measurement must not hit: the generator sends far more than a person would.
fn edge_flags(cmd: &mut Command) {
    cmd.args([
        "--rate-limit-per-second",
        "100000",
        "--rate-limit-burst",
        "100000",
    ])
    .args(["--log", "warn"]);
}

async fn http_get(addr: &str, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    Ok(body)
}

async fn wait_ready(addr: &str) -> Result<()> {
    wait_metric_path(addr, "/readyz", "HTTP/1.1 200").await
}

async fn wait_metric(addr: &str, line: &str) -> Result<()> {
    wait_metric_path(addr, "/metrics", line).await
}

/// Polls `path` until its response contains `needle`.
async fn wait_metric_path(addr: &str, path: &str, needle: &str) -> Result<()> {
    for _ in 0..(STARTUP.as_millis() / POLL.as_millis()) {
        if http_get(addr, path).await.is_ok_and(|b| b.contains(needle)) {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
    bail!("{addr}{path} never showed {needle:?}")
}

/// A binary of the workspace next to this one (`target/<profile>/NAME`).
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("no directory for {}", exe.display()))?;
    // Test executables live one level down, in deps/.
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let p = d.join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!(
        "{name} not found next to {}; build the workspace",
        exe.display()
    )
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
