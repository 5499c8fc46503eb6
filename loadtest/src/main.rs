//! `heliograph-loadtest`: load generator for the Heliograph edge.
//!
//! Modules: `client` (lean WebSocket client), `scenarios` (relay, idle, storm, joins, regions,
//! failover, chaos, registry-scale),
//! `sim` (the multi-region simulation) and `delay_proxy` (its delayed links), `reference`
//! (the bare forwarder relay is compared against), `sio` (a lean Socket.IO client for relay's
//! Socket.IO wire) and `socketio_node` (the Node.js Socket.IO server it is compared against), `procstat` and `machine` (what was
//! measured on), `output` (result files and summaries), `report` (markdown and SVG charts).

#![forbid(unsafe_code)]

mod client;
mod delay_proxy;
mod machine;
mod output;
mod procstat;
mod reference;
mod report;
mod scenarios;
mod sim;
mod sio;
mod socketio_node;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use crate::machine::Machine;
use crate::output::RunFile;
use crate::scenarios::chaos::{ChaosSettings, Fault};
use crate::scenarios::failover::{FailoverSettings, Mode as FailoverMode};
use crate::scenarios::failover_region::{Region, RegionRedis};
use crate::scenarios::idle::IdleSettings;
use crate::scenarios::joins::JoinsSettings;
use crate::scenarios::registry_scale::RegistryScaleSettings;
use crate::scenarios::relay::{GENERATOR_LIMIT_FRACTION, RelaySettings, Wire};
use crate::scenarios::storm::StormSettings;

#[derive(Debug, Parser)]
#[command(
    name = "heliograph-loadtest",
    version,
    about = "Load generator for the Heliograph edge"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Pairs of peers ping-pong SDP-sized signals; measures relay throughput and latency.
    Relay(RelayArgs),
    /// Opens and holds many joined connections; measures server memory per connection.
    Idle(IdleArgs),
    /// Many clients connect at once, each reads `welcome` and joins a two-peer room; measures
    /// connections per second, time to `welcome` and `joined`, and server CPU per connection.
    Storm(StormArgs),
    /// A join/leave storm; measures joins per second and join latency.
    Joins(JoinsArgs),
    /// A minimal forwarder speaking enough of heliograph.v1 to be the relay ceiling.
    ReferenceServer(ReferenceArgs),
    /// Renders result files as a markdown table and SVG charts.
    Report(ReportArgs),
    /// The multi-region latency matrix: a simulated cluster across regions vs one central edge.
    Regions(RegionsArgs),
    /// A TCP proxy that delays every byte by a fixed one-way delay, both ways.
    DelayProxy(DelayProxyArgs),
    /// Clients on one edge signal each other; the edge is killed or drained; measures how fast
    /// they resume on another edge of the region and that no signal is lost. Without --edge
    /// it starts the region itself (on its own Redis, or the operator's with --redis).
    Failover(FailoverArgs),
    /// Starts a local cluster (3 replicas, 2 edges), runs a join/leave storm, fails a replica
    /// at a random moment and checks that membership comes out exactly right.
    Chaos(ChaosArgs),
    /// Starts a 3-replica group, fills it with members through the registry's gRPC API from
    /// synthetic edges (no sockets), and measures RSS per member, a snapshot's build time,
    /// a new replica's catch-up and join latency against the empty registry.
    RegistryScale(RegistryScaleArgs),
}

#[derive(Debug, Args)]
struct RegistryScaleArgs {
    /// Members to fill the registry with (a small value is a quick smoke run).
    #[arg(long, default_value_t = 1_000_000)]
    members: u64,
    /// Rooms they are spread over (member i joins room i mod rooms).
    #[arg(long, default_value_t = 500_000)]
    rooms: u64,
    /// Synthetic edges registered through the registry API, spread over the replicas.
    #[arg(long, default_value_t = 12)]
    edges: usize,
    /// Fill joins in flight at once (the leader batches them into log entries).
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Sequential probe joins measured on the empty registry and again at full size.
    #[arg(long, default_value_t = 2000)]
    samples: usize,
    /// The synthetic edges' lease (renewed every quarter of it).
    #[arg(long, default_value_t = 10_000)]
    lease_ms: u64,
    /// More `serve` flags for every replica (repeatable), e.g. --replica-arg=--grace-ms=30000.
    #[arg(long = "replica-arg", allow_hyphen_values = true)]
    replica_args: Vec<String>,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct ChaosArgs {
    /// The fault injected in each round (`--repeat` rounds on one cluster).
    #[arg(long, value_enum, default_value_t = Fault::None)]
    fault: Fault,
    /// Storm clients, alternately on the two edges.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Rooms of the storm.
    #[arg(long, default_value_t = 50)]
    rooms: usize,
    /// A round's storm lasts until this many successful joins (with the fault at a random
    /// point between 20 % and 60 % of them).
    #[arg(long, conflicts_with = "duration")]
    joins: Option<u64>,
    /// A round's storm lasts this many seconds (default 5 when --joins is not given).
    #[arg(long)]
    duration: Option<f64>,
    /// How long leader-freeze and replica-freeze keep the replica stopped.
    #[arg(long, default_value_t = 6000)]
    freeze_ms: u64,
    /// How long quorum-loss keeps two replicas dead.
    #[arg(long, default_value_t = 30000)]
    outage_ms: u64,
    /// quorum-loss: pairs of clients (one on each edge, a room each) exchanging signals.
    #[arg(long, default_value_t = 8)]
    pairs: usize,
    /// Signals per second each pair client sends its partner.
    #[arg(long, default_value_t = 10.0)]
    signal_rate: f64,
    /// Rooms a storm client is in at most at once.
    #[arg(long, default_value_t = 3)]
    max_rooms_per_client: usize,
    /// Give the edges a shared Redis (signals between them then take it).
    #[arg(long)]
    redis: bool,
    /// Copy the replicas' and edges' logs into this directory at the end.
    #[arg(long)]
    logs: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct FailoverArgs {
    /// WebSocket URL of the edge that fails, e.g. ws://127.0.0.1:8101/ws. Without it,
    /// failover starts a region of its own (one replica, two edges sharing a Redis).
    #[arg(long, requires_all = ["edge_pid", "other"])]
    edge: Option<String>,
    /// PID of that edge's process: sent SIGKILL (--mode kill) or SIGTERM (--mode drain).
    #[arg(long, requires = "edge")]
    edge_pid: Option<u32>,
    /// WebSocket URL of another edge of the same region (same Redis, same --session-secret),
    /// where the clients resume.
    #[arg(long, requires = "edge")]
    other: Option<String>,
    /// The Redis of the region failover starts (without --edge): the operator's own,
    /// redis:// or rediss:// (TLS). Default: a redis-server started for the run.
    #[arg(long, conflicts_with = "edge")]
    redis: Option<String>,
    /// PEM CA bundle the started edges verify a rediss:// server with (their --redis-ca).
    #[arg(long, requires = "redis")]
    redis_ca: Option<PathBuf>,
    /// PEM client certificate the started edges present to Redis (their --redis-client-cert).
    #[arg(long, requires_all = ["redis", "redis_client_key"])]
    redis_client_cert: Option<PathBuf>,
    /// Its private key (their --redis-client-key).
    #[arg(long, requires_all = ["redis", "redis_client_cert"])]
    redis_client_key: Option<PathBuf>,
    /// ACL user the started edges log in as (their --redis-username).
    #[arg(long, requires = "redis")]
    redis_username: Option<String>,
    /// File holding that user's password (their --redis-password-file; never on a command
    /// line).
    #[arg(long, requires = "redis")]
    redis_password_file: Option<PathBuf>,
    /// Clients (an even number: N/2 two-peer rooms, both peers on --edge).
    #[arg(long, default_value_t = 2000)]
    clients: usize,
    /// How the edge fails: kill (kill -9) or drain (SIGTERM).
    #[arg(long, value_enum, default_value_t = FailoverMode::Kill)]
    mode: FailoverMode,
    /// Signals per second per pair (half each way), before, during and after the failure.
    #[arg(long, default_value_t = 4.0)]
    rate: f64,
    /// Seconds of signalling before the failure.
    #[arg(long, default_value_t = 2.0)]
    before_secs: f64,
    /// Seconds of signalling after every client has resumed (or given up).
    #[arg(long, default_value_t = 2.0)]
    after_secs: f64,
    /// A client that has not resumed this many seconds after the failure gives up.
    #[arg(long, default_value_t = 30.0)]
    resume_timeout: f64,
    /// Longest wait, after sending stops, for the last signals to arrive (seconds).
    #[arg(long, default_value_t = 10.0)]
    drain_timeout: f64,
    /// After a `reconnect` notice, send nothing more on that socket until resumed elsewhere
    /// (default: go on until the edge closes it, as the SDK does).
    #[arg(long)]
    hold_after_notice: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct RegionsArgs {
    /// Region names; region i gets the loopback range 127.0.(i+1).x.
    #[arg(long, value_delimiter = ',', default_value = "us,eu,ap")]
    regions: Vec<String>,
    /// One-way delay per region pair, A-B=MS (repeatable or comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "us-eu=40,us-ap=80,eu-ap=100"
    )]
    delay: Vec<String>,
    /// Region of the Raft leader (and of the central edge).
    #[arg(long, default_value = "us")]
    leader: String,
    #[arg(long, default_value_t = 2)]
    edges_per_region: usize,
    #[arg(long, default_value_t = 4)]
    clients_per_region: usize,
    /// Rounds in which every client signals every other client once.
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// Length of a round, in ms; the senders take turns through it.
    #[arg(long, default_value_t = 50)]
    round_interval_ms: u64,
    /// Times each client leaves and rejoins, one at a time, for join latency.
    #[arg(long, default_value_t = 3)]
    join_rounds: usize,
    /// `homed`: one Raft group per region (region-homed rooms); `global`: one group whose
    /// voters span the regions (the layout before region-homed rooms), for comparison.
    #[arg(long, value_enum, default_value = "homed")]
    layout: sim::SimLayout,
    /// Coordinator replicas per region.
    #[arg(long, default_value_t = 3)]
    replicas_per_region: usize,
    /// Rooms created per region for the join-by-home measurement (0: skip it).
    #[arg(long, default_value_t = 10)]
    homing_rounds: usize,
    /// Clients joining in the last region before and during its partition (0: no partition
    /// run; `homed` layout only).
    #[arg(long, default_value_t = 4)]
    partition_workers: usize,
    /// How long each phase of the partition run lasts, in ms.
    #[arg(long, default_value_t = 2000)]
    partition_window_ms: u64,
    /// heliograph-edge binary (default: next to this one).
    #[arg(long)]
    edge_bin: Option<PathBuf>,
    /// heliograph-coordinator binary (default: next to this one).
    #[arg(long)]
    coordinator_bin: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct DelayProxyArgs {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    to: SocketAddr,
    /// One-way delay in each direction.
    #[arg(long)]
    delay_ms: u64,
}

#[derive(Debug, Args)]
struct Common {
    /// Result file (default: loadtest-results/<scenario>-<timestamp>.json).
    #[arg(long, visible_alias = "json")]
    out: Option<PathBuf>,
    /// Run the scenario this many times; results hold the median of each figure.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Generator runtime threads (1: tokio's current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Spread client sockets over source addresses 127.0.0.1 … 127.0.0.K.
    #[arg(long, default_value_t = 16)]
    source_addrs: usize,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
}

#[derive(Debug, Args)]
struct RelayArgs {
    /// Edge WebSocket URL, e.g. ws://127.0.0.1:8080/ws (with --wire socketio: the edge's
    /// base, ws://127.0.0.1:8080, whose /socket.io/ it uses).
    #[arg(long, required_unless_present = "reference_only")]
    url: Option<String>,
    /// The clients' protocol: heliograph.v1, or the Socket.IO signaling dialect (an edge
    /// started with --socketio). With socketio, --vs-reference compares against the Node.js
    /// Socket.IO server of loadtest/socketio-node (npm packages installed on first use).
    #[arg(long, value_enum, default_value_t = Wire::Native)]
    wire: Wire,
    /// Clients (an even number: N/2 two-peer rooms).
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Offers in flight per pair.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Server process whose CPU time per relayed message is measured.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Approximate size of each signal's `data`, in bytes.
    #[arg(long, default_value_t = 400)]
    payload_bytes: usize,
    /// Longest wait for in-flight signals after the measured window, in seconds.
    #[arg(long, default_value_t = 10.0)]
    drain_timeout: f64,
    #[command(flatten)]
    reference: CompareArgs,
    /// Clients never send `ack`, as plain WebSocket tools don't: the edge keeps every signal
    /// in its replay window until newer ones push it out (heliograph.v1 only).
    #[arg(long)]
    no_ack: bool,
    #[command(flatten)]
    common: Common,
}

/// The reference forwarder a scenario is compared with (relay, storm).
#[derive(Debug, Args)]
struct CompareArgs {
    /// Also run against the reference forwarder (spawned, or --reference-url) in the same
    /// run, alternating with the edge, and print ratios.
    #[arg(long)]
    vs_reference: bool,
    /// Run against the reference forwarder only (spawned, or --reference-url).
    #[arg(long, conflicts_with = "vs_reference")]
    reference_only: bool,
    /// A reference server already running (else one is spawned from this binary).
    #[arg(long, requires = "reference_pid")]
    reference_url: Option<String>,
    /// PID of the --reference-url server, for its CPU time.
    #[arg(long)]
    reference_pid: Option<u32>,
    /// Pin the spawned reference server with `taskset -c CPUS` (e.g. the edge's core).
    #[arg(long)]
    reference_taskset: Option<String>,
    /// Runtime threads of the spawned reference server (1: current-thread runtime).
    #[arg(long, default_value_t = 1)]
    reference_threads: usize,
}

#[derive(Debug, Args)]
struct IdleArgs {
    /// Edge WebSocket URL.
    #[arg(long)]
    url: String,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Server process whose RSS is measured.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Peers per room.
    #[arg(long, default_value_t = 2)]
    rooms_of: usize,
    /// Seconds to hold the connections before measuring RSS again.
    #[arg(long, default_value_t = 2.0)]
    hold: f64,
    /// Split the clients over this many child processes (one process holds < 20k sockets).
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Internal: run as a child of `idle --processes`.
    #[arg(long, hide = true)]
    child: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct StormArgs {
    /// Edge WebSocket URL, e.g. ws://127.0.0.1:18080/ws.
    #[arg(long, required_unless_present = "reference_only")]
    url: Option<String>,
    /// Clients (two per room); each holds its socket until the storm ends.
    #[arg(long, default_value_t = 15_000)]
    clients: usize,
    /// Clients setting up at once (0: all of them at once).
    #[arg(long, default_value_t = 1000)]
    concurrency: usize,
    /// Server process whose CPU time per connection is measured.
    #[arg(long)]
    server_pid: Option<u32>,
    #[command(flatten)]
    reference: CompareArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct JoinsArgs {
    /// Edge WebSocket URL; repeat it to spread the workers over several edges in turn.
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// Workers, each with its own connection.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds of storm.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Server process whose CPU time per join is measured.
    #[arg(long)]
    server_pid: Option<u32>,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct ReferenceArgs {
    /// Address to listen on; prints {"listening":"ADDR"} once bound.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Runtime threads (1: tokio's current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Debug, Args)]
struct ReportArgs {
    /// Result files, or directories of them.
    #[arg(long, num_args = 1.., required = true)]
    input: Vec<PathBuf>,
    /// Where report.md and the SVG charts go.
    #[arg(long, default_value = "loadtest-report")]
    out_dir: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Relay(a) => a.common.threads,
        Command::Idle(a) => a.common.threads,
        Command::Joins(a) => a.common.threads,
        Command::Storm(a) => a.common.threads,
        Command::ReferenceServer(a) => a.threads,
        Command::Report(_) => 1,
        Command::Regions(a) => a.common.threads,
        Command::DelayProxy(_) => 1,
        Command::Failover(a) => a.common.threads,
        Command::Chaos(a) => a.common.threads,
        Command::RegistryScale(a) => a.common.threads,
    };
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let result = match runtime {
        Ok(rt) => rt.block_on(run(cli.command)),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("heliograph-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Relay(args) => relay(args).await,
        Command::Idle(args) => idle(args).await,
        Command::Joins(args) => joins(args).await,
        Command::Storm(args) => storm(args).await,
        Command::ReferenceServer(args) => reference::serve(args.listen).await,
        Command::Report(args) => report::render(&args.input, &args.out_dir),
        Command::Regions(args) => regions(args).await,
        Command::DelayProxy(a) => delay_proxy::serve(a.listen, a.to, a.delay_ms).await,
        Command::Failover(args) => failover(args).await,
        Command::Chaos(args) => chaos(args).await,
        Command::RegistryScale(args) => registry_scale(args).await,
    }
}

async fn registry_scale(args: RegistryScaleArgs) -> Result<()> {
    check_repeat(&args.common)?;
    let settings = RegistryScaleSettings {
        members: args.members,
        rooms: args.rooms,
        edges: args.edges,
        concurrency: args.concurrency,
        samples: args.samples,
        lease_ms: args.lease_ms,
        replica_args: args.replica_args.clone(),
    };
    let started_at = output::now_rfc3339();
    let mut runs = Vec::new();
    for i in 0..args.common.repeat {
        if args.common.repeat > 1 {
            eprintln!("run {} of {}", i + 1, args.common.repeat);
        }
        runs.push(serde_json::to_value(
            scenarios::registry_scale::run(&settings).await?,
        )?);
    }
    let results = output::median(&runs);
    finish(
        "registry-scale",
        serde_json::to_value(&settings)?,
        runs,
        results,
        &args.common,
        started_at,
    )
}

async fn chaos(args: ChaosArgs) -> Result<()> {
    check_repeat(&args.common)?;
    let started_at = output::now_rfc3339();
    let settings = ChaosSettings {
        fault: args.fault,
        rounds: args.common.repeat,
        clients: args.clients,
        rooms: args.rooms,
        joins: args.joins,
        duration_secs: args.duration,
        freeze_ms: args.freeze_ms,
        outage_ms: args.outage_ms,
        pairs: args.pairs,
        signal_rate: args.signal_rate,
        max_rooms_per_client: args.max_rooms_per_client,
        redis: args.redis,
        logs: args.logs.clone(),
        source_addrs: args.common.source_addrs,
        connect_concurrency: args.common.connect_concurrency,
    };
    let outcome = scenarios::chaos::run(&settings).await?;
    let mut results = outcome.totals;
    if let Value::Object(m) = &mut results {
        m.insert("failures".into(), json!(outcome.failures));
        m.insert("passed".into(), json!(outcome.failures.is_empty()));
    }
    // Each round is a run; the results are their totals (not medians): a check that fails
    // in one round fails the run.
    let file = RunFile {
        scenario: "chaos".to_owned(),
        settings: serde_json::to_value(&settings)?,
        machine: Machine::detect(),
        results,
        runs: outcome.rounds,
        started_at,
    };
    let path = output::out_path(args.common.out.as_deref(), "chaos");
    output::write(&path, &file)?;
    println!("{}", output::summary("chaos", &file.results));
    println!("results written to {}", path.display());
    if !outcome.failures.is_empty() {
        bail!("chaos: checks failed: {}", outcome.failures.join("; "));
    }
    Ok(())
}

async fn failover(args: FailoverArgs) -> Result<()> {
    if args.common.repeat != 1 {
        bail!("failover runs once (--repeat 1): the edge it fails does not come back");
    }
    // Without --edge the run fails an edge of a region it starts (and stops at the end).
    let (region, spawned) = match (&args.edge, args.edge_pid, &args.other) {
        (Some(edge), Some(pid), Some(other)) => (None, (edge.clone(), pid, other.clone())),
        (None, None, None) => {
            let redis = RegionRedis {
                url: args.redis.clone(),
                ca: args.redis_ca.clone(),
                client_cert: args.redis_client_cert.clone(),
                client_key: args.redis_client_key.clone(),
                username: args.redis_username.clone(),
                password_file: args.redis_password_file.clone(),
            };
            let started = Region::start(&redis).await?;
            let (edge, pid) = started.failing();
            let other = started.other();
            (Some((started, redis)), (edge, pid, other))
        }
        _ => bail!("give --edge, --edge-pid and --other together, or none of them"),
    };
    let (edge, edge_pid, other) = spawned;
    let started_at = output::now_rfc3339();
    let settings = FailoverSettings {
        edge,
        edge_pid,
        other,
        started_region: region.as_ref().map(|(_, redis)| redis.clone()),
        mode: args.mode,
        clients: args.clients,
        rate: args.rate,
        before_secs: args.before_secs,
        after_secs: args.after_secs,
        resume_timeout_secs: args.resume_timeout,
        drain_timeout_secs: args.drain_timeout,
        hold_after_notice: args.hold_after_notice,
        source_addrs: args.common.source_addrs,
        connect_concurrency: args.common.connect_concurrency,
    };
    let r = scenarios::failover::run(&settings).await?;
    if r.generator_limited {
        eprintln!(
            "WARNING: the load generator used {:.0}% of a core (≥ {:.0}%): resume times may \
             include its own delays. Use fewer clients or more generator threads.",
            r.generator_cpu_percent_of_core,
            GENERATOR_LIMIT_FRACTION * 100.0
        );
    }
    let (lost, failed) = (r.lost, r.failed);
    let results = serde_json::to_value(&r)?;
    finish(
        "failover",
        serde_json::to_value(&settings)?,
        vec![results.clone()],
        results,
        &args.common,
        started_at,
    )?;
    // The region's processes stop here, after the results are written.
    drop(region);
    if lost > 0 || failed > 0 {
        bail!("{lost} signals lost, {failed} clients did not resume");
    }
    Ok(())
}

fn check_repeat(common: &Common) -> Result<()> {
    if common.repeat == 0 {
        bail!("--repeat must be ≥ 1");
    }
    Ok(())
}

fn finish(
    scenario: &str,
    settings: Value,
    runs: Vec<Value>,
    results: Value,
    common: &Common,
    started_at: String,
) -> Result<()> {
    let file = RunFile {
        scenario: scenario.to_owned(),
        settings,
        machine: Machine::detect(),
        results,
        runs,
        started_at,
    };
    let path = output::out_path(common.out.as_deref(), scenario);
    output::write(&path, &file)?;
    println!("{}", output::summary(scenario, &file.results));
    if file.runs.len() > 1 {
        println!("(median of {} runs)", file.runs.len());
    }
    println!("results written to {}", path.display());
    Ok(())
}

fn relay_settings(args: &RelayArgs, url: String, server_pid: Option<u32>) -> RelaySettings {
    RelaySettings {
        url,
        wire: args.wire,
        clients: args.clients,
        window: args.window,
        duration_secs: args.duration,
        warmup_secs: args.warmup,
        server_pid,
        payload_bytes: args.payload_bytes,
        source_addrs: args.common.source_addrs,
        connect_concurrency: args.common.connect_concurrency,
        drain_timeout_secs: args.drain_timeout,
        acks: !args.no_ack,
    }
}

async fn relay_once(settings: &RelaySettings, label: &str) -> Result<Value> {
    eprintln!("relay ({label}): {}", settings.url);
    let r = scenarios::relay::run(settings).await?;
    if r.generator_limited {
        eprintln!(
            "WARNING ({label}): the load generator used {:.0}% of a core (≥ {:.0}%): it, not the \
             server, is the limit of this run. Use fewer clients, a smaller window, or more \
             generator threads/processes.",
            r.generator_cpu_percent_of_core,
            GENERATOR_LIMIT_FRACTION * 100.0
        );
    }
    if r.sent != r.received {
        eprintln!(
            "WARNING ({label}): sent {} signals but {} arrived",
            r.sent, r.received
        );
    }
    Ok(serde_json::to_value(r)?)
}

fn ratio(edge: &Value, reference: &Value, path: &[&str]) -> Option<f64> {
    let get = |v: &Value| path.iter().try_fold(v, |v, k| v.get(k))?.as_f64();
    let (e, r) = (get(edge)?, get(reference)?);
    (r != 0.0).then(|| e / r)
}

/// Named ratios of the edge's medians to the reference's: a name and the path to the figure.
type Ratios<'a> = &'a [(&'a str, &'a [&'a str])];

/// The settings of a scenario run against the edge, the reference, or both.
struct Sides<S> {
    edge: Option<S>,
    reference: Option<S>,
}

impl<S> Sides<S> {
    /// The edge's side when there is an edge URL to run against (with its pid), the
    /// reference's when one was started, each given its settings by `settings`.
    fn new(
        edge_url: Option<&String>,
        edge_pid: Option<u32>,
        reference: Option<&(String, u32)>,
        settings: impl Fn(String, Option<u32>) -> S,
    ) -> Self {
        Self {
            edge: edge_url.map(|url| settings(url.clone(), edge_pid)),
            reference: reference.map(|(url, pid)| settings(url.clone(), Some(*pid))),
        }
    }
}

impl<S: serde::Serialize> Sides<S> {
    /// Runs `once` `--repeat` times on each side, alternately (so that a change in the
    /// machine's load reaches both sides alike), and writes the result: with both sides, the
    /// medians side by side and their `ratios` (as `NAME-vs-reference`); else the one side's.
    async fn run<F>(
        self,
        name: &str,
        ratios: Ratios<'_>,
        common: &Common,
        started_at: String,
        once: F,
    ) -> Result<()>
    where
        F: AsyncFn(&S, &'static str) -> Result<Value>,
    {
        let mut edge_runs = Vec::new();
        let mut reference_runs = Vec::new();
        for i in 0..common.repeat {
            if common.repeat > 1 {
                eprintln!("run {} of {}", i + 1, common.repeat);
            }
            if let Some(s) = &self.edge {
                edge_runs.push(once(s, "edge").await?);
            }
            if let Some(s) = &self.reference {
                reference_runs.push(once(s, "reference").await?);
            }
        }
        match (self.edge, self.reference) {
            (Some(e), Some(r)) => {
                let edge_median = output::median(&edge_runs);
                let reference_median = output::median(&reference_runs);
                let ratios: serde_json::Map<String, Value> = ratios
                    .iter()
                    .map(|(key, path)| {
                        let value = ratio(&edge_median, &reference_median, path);
                        ((*key).to_owned(), json!(value))
                    })
                    .collect();
                let results = json!({
                    "edge": edge_median,
                    "reference": reference_median,
                    "ratios": ratios,
                });
                let runs = edge_runs
                    .into_iter()
                    .zip(reference_runs)
                    .map(|(e, r)| json!({"edge": e, "reference": r}))
                    .collect();
                finish(
                    &format!("{name}-vs-reference"),
                    json!({"edge": e, "reference": r}),
                    runs,
                    results,
                    common,
                    started_at,
                )
            }
            (Some(s), None) | (None, Some(s)) => {
                let runs = if edge_runs.is_empty() {
                    reference_runs
                } else {
                    edge_runs
                };
                let results = output::median(&runs);
                finish(
                    name,
                    serde_json::to_value(&s)?,
                    runs,
                    results,
                    common,
                    started_at,
                )
            }
            (None, None) => {
                bail!("nothing to run: give --url, --vs-reference or --reference-only")
            }
        }
    }
}

async fn relay(args: RelayArgs) -> Result<()> {
    check_repeat(&args.common)?;
    let started_at = output::now_rfc3339();
    let with_reference = args.reference.vs_reference || args.reference.reference_only;
    let mut spawned = None;
    let mut spawned_node = None;
    let reference = if with_reference {
        match (
            &args.reference.reference_url,
            args.reference.reference_pid,
            args.wire,
        ) {
            (Some(url), Some(pid), _) => Some((url.clone(), pid)),
            (_, _, Wire::Native) => {
                let child = reference::ReferenceChild::spawn(
                    args.reference.reference_taskset.as_deref(),
                    args.reference.reference_threads,
                )
                .await?;
                let r = (child.url.clone(), child.pid);
                spawned = Some(child);
                Some(r)
            }
            // The Socket.IO wire is compared with what it replaces: a Node.js Socket.IO server.
            (_, _, Wire::Socketio) => {
                let child =
                    socketio_node::NodeSocketIo::spawn(args.reference.reference_taskset.as_deref())
                        .await?;
                let r = (child.url.clone(), child.pid);
                spawned_node = Some(child);
                Some(r)
            }
        }
    } else {
        None
    };
    let outcome = relay_runs(&args, reference.as_ref(), started_at).await;
    if let Some(child) = spawned {
        child.stop().await;
    }
    if let Some(child) = spawned_node {
        child.stop().await;
    }
    outcome
}

async fn relay_runs(
    args: &RelayArgs,
    reference: Option<&(String, u32)>,
    started_at: String,
) -> Result<()> {
    let sides = Sides::new(
        args.url.as_ref().filter(|_| !args.reference.reference_only),
        args.server_pid,
        reference,
        |url, pid| relay_settings(args, url, pid),
    );
    let ratios: Ratios = &[
        ("throughput", &["round_trips_per_sec"]),
        ("cpu_per_message", &["server_cpu_us_per_message"]),
        ("p99", &["rtt", "p99_us"]),
    ];
    sides
        .run("relay", ratios, &args.common, started_at, relay_once)
        .await
}

async fn idle(args: IdleArgs) -> Result<()> {
    let settings = IdleSettings {
        url: args.url.clone(),
        clients: args.clients,
        server_pid: args.server_pid,
        rooms_of: args.rooms_of,
        hold_secs: args.hold,
        source_addrs: args.common.source_addrs,
        connect_concurrency: args.common.connect_concurrency,
        processes: args.processes,
    };
    if args.child {
        return scenarios::idle::run_child(&settings).await;
    }
    check_repeat(&args.common)?;
    let started_at = output::now_rfc3339();
    let mut runs = Vec::new();
    for _ in 0..args.common.repeat {
        runs.push(serde_json::to_value(
            scenarios::idle::run(&settings).await?,
        )?);
    }
    let results = output::median(&runs);
    finish(
        "idle",
        serde_json::to_value(&settings)?,
        runs,
        results,
        &args.common,
        started_at,
    )
}

fn storm_settings(args: &StormArgs, url: String, server_pid: Option<u32>) -> StormSettings {
    StormSettings {
        url,
        clients: args.clients,
        server_pid,
        concurrency: args.concurrency,
        source_addrs: args.common.source_addrs,
    }
}

async fn storm_once(settings: &StormSettings, label: &str) -> Result<Value> {
    let r = scenarios::storm::run(settings).await?;
    if r.generator_limited {
        eprintln!(
            "WARNING ({label}): the load generator used {:.0}% of a core (≥ {:.0}%): it, not the \
             server, is the limit of this run; compare the server CPU per connection.",
            r.generator_cpu_percent_of_core,
            GENERATOR_LIMIT_FRACTION * 100.0
        );
    }
    if r.failed > 0 {
        eprintln!(
            "WARNING ({label}): {} of {} clients did not join",
            r.failed, r.clients
        );
    }
    Ok(serde_json::to_value(r)?)
}

async fn storm(args: StormArgs) -> Result<()> {
    check_repeat(&args.common)?;
    let started_at = output::now_rfc3339();
    let mut spawned = None;
    let reference = if args.reference.vs_reference || args.reference.reference_only {
        match (&args.reference.reference_url, args.reference.reference_pid) {
            (Some(url), Some(pid)) => Some((url.clone(), pid)),
            _ => {
                let child = reference::ReferenceChild::spawn(
                    args.reference.reference_taskset.as_deref(),
                    args.reference.reference_threads,
                )
                .await?;
                let r = (child.url.clone(), child.pid);
                spawned = Some(child);
                Some(r)
            }
        }
    } else {
        None
    };
    let outcome = storm_runs(&args, reference.as_ref(), started_at).await;
    if let Some(child) = spawned {
        child.stop().await;
    }
    outcome
}

async fn storm_runs(
    args: &StormArgs,
    reference: Option<&(String, u32)>,
    started_at: String,
) -> Result<()> {
    let sides = Sides::new(
        args.url.as_ref().filter(|_| !args.reference.reference_only),
        args.server_pid,
        reference,
        |url, pid| storm_settings(args, url, pid),
    );
    let ratios: Ratios = &[
        ("connection_rate", &["connections_per_sec"]),
        ("cpu_per_connection", &["server_cpu_us_per_connection"]),
        ("welcome_p99", &["to_welcome", "p99_us"]),
        ("joined_p99", &["to_joined", "p99_us"]),
    ];
    sides
        .run("storm", ratios, &args.common, started_at, storm_once)
        .await
}

async fn joins(args: JoinsArgs) -> Result<()> {
    check_repeat(&args.common)?;
    let settings = JoinsSettings {
        urls: args.urls.clone(),
        concurrency: args.concurrency,
        duration_secs: args.duration,
        server_pid: args.server_pid,
        source_addrs: args.common.source_addrs,
    };
    let started_at = output::now_rfc3339();
    let mut runs = Vec::new();
    for _ in 0..args.common.repeat {
        runs.push(serde_json::to_value(
            scenarios::joins::run(&settings).await?,
        )?);
    }
    let results = output::median(&runs);
    finish(
        "joins",
        serde_json::to_value(&settings)?,
        runs,
        results,
        &args.common,
        started_at,
    )
}

async fn regions(args: RegionsArgs) -> Result<()> {
    check_repeat(&args.common)?;
    let delay_ms = sim::parse_delays(&args.regions, &args.delay)?;
    let leader = args
        .regions
        .iter()
        .position(|r| *r == args.leader)
        .ok_or_else(|| anyhow::anyhow!("--leader {} is not in --regions", args.leader))?;
    let edge_bin = match &args.edge_bin {
        Some(p) => p.clone(),
        None => heliograph_testkit::bin::path(heliograph_testkit::bin::EDGE)?,
    };
    let coordinator_bin = match &args.coordinator_bin {
        Some(p) => p.clone(),
        None => heliograph_testkit::bin::path(heliograph_testkit::bin::COORDINATOR)?,
    };
    let settings = scenarios::regions::RegionsSettings {
        regions: args.regions.clone(),
        delay_ms: delay_ms.clone(),
        leader: args.leader.clone(),
        edges_per_region: args.edges_per_region,
        clients_per_region: args.clients_per_region,
        rounds: args.rounds,
        round_interval_ms: args.round_interval_ms,
        join_rounds: args.join_rounds,
        layout: args.layout,
        replicas_per_region: args.replicas_per_region,
        homing_rounds: args.homing_rounds,
        partition_workers: args.partition_workers,
        partition_window_ms: args.partition_window_ms,
    };
    let started_at = output::now_rfc3339();
    let mut runs = Vec::new();
    for _ in 0..args.common.repeat {
        let dir = tempfile::tempdir()?;
        let spec = sim::SimSpec {
            regions: args.regions.clone(),
            delay_ms: delay_ms.clone(),
            leader,
            edges_per_region: args.edges_per_region,
            layout: args.layout,
            replicas_per_region: args.replicas_per_region,
            edge_bin: edge_bin.clone(),
            coordinator_bin: coordinator_bin.clone(),
            dir: dir.path().to_owned(),
        };
        runs.push(scenarios::regions::run(spec, &settings).await?);
    }
    let results = if runs.len() == 1 {
        runs[0].clone()
    } else {
        output::median(&runs)
    };
    finish(
        "regions",
        serde_json::to_value(&settings)?,
        runs,
        results,
        &args.common,
        started_at,
    )
}
