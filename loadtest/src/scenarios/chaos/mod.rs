//! `chaos`: membership under faults. The scenario starts its own local cluster (three
//! coordinator replicas, two edges; [`lab`]), runs a join/leave storm on both edges
//! ([`member`]: clients join and leave random rooms, retrying a join answered
//! `unavailable`), injects one fault at a random moment of each round, stops the storm,
//! waits for the cluster to converge and checks the rooms ([`check`]).
//!
//! Faults:
//! - `leader-kill`: SIGKILL the Raft leader; once the other two elect a new one, restart it
//!   on its data directory;
//! - `leader-freeze`: SIGSTOP the leader for `--freeze-ms`, then SIGCONT;
//! - `replica-freeze`: SIGSTOP a replica an edge is attached to (from the edge's log; one that
//!   does not lead when there is one) for `--freeze-ms`; measures how long that edge's
//!   clients went without a successful join;
//! - `quorum-loss`: SIGKILL the leader and one other replica for `--outage-ms`, then restart
//!   both, while pairs of clients in established rooms, one on each edge, exchange numbered
//!   signals;
//! - `none`: the storm alone.
//!
//! Each round (`--repeat` rounds on one cluster) reports what its clients saw and what the
//! registry holds afterwards; the results add the rounds' counts up and keep the largest of
//! their times (`*_ms`). The run fails (exit status 1) when a correctness check fails:
//! ghosts, missing members, view mismatches, unanswered or twice-answered requests,
//! duplicate `peer-joined`,
//! `peer-left` for a peer never announced, room events outside the room, an `unavailable`
//! answer the registry contradicts, unexpected errors or closed sockets, or a signal of a
//! pair refused or lost.

pub mod check;
pub mod lab;
pub mod member;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use futures_util::{StreamExt, stream};
use rand::seq::IndexedRandom;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::check::Findings;
use self::lab::Lab;
use self::member::{Control, Counts, Phase, Role, Shared, Signals, State, lock};
use super::room_prefix;
use crate::client::{Client, Target, source_addr};

/// How long the cluster may take to be whole again (a leader, every replica caught up).
const HEALTHY: Duration = Duration::from_secs(60);
/// The storm goes on this long after a fault ended, so that recovery shows in the timeline.
const AFTER_FAULT: Duration = Duration::from_secs(2);
/// After the storm: how long clients may take to get their last answers.
const ANSWERS: Duration = Duration::from_secs(30);
/// How long the rooms may take to converge (observations repeated until clean).
const CONVERGE: Duration = Duration::from_secs(30);
/// How long the views may take to reach one observation.
const VIEWS: Duration = Duration::from_secs(5);
/// After signalling stops: once nothing new arrives for this long, the rest never will.
const QUIET: Duration = Duration::from_secs(2);
/// Longest wait for the last signals.
const DRAIN: Duration = Duration::from_secs(10);
/// A storm of `--joins N` that has not reached N after this long ends anyway.
const JOINS_CAP: Duration = Duration::from_secs(3600);
/// Samples kept per round.
const SAMPLES: usize = 10;
/// The targets.
pub const TARGET_NO_JOIN_MS: f64 = 2_000.0;
pub const TARGET_UNAVAILABLE_MS: f64 = 1_000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    None,
    LeaderKill,
    LeaderFreeze,
    ReplicaFreeze,
    QuorumLoss,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChaosSettings {
    pub fault: Fault,
    /// Rounds on one cluster, one fault each.
    pub rounds: usize,
    pub clients: usize,
    pub rooms: usize,
    /// A round's storm lasts until this many successful joins …
    pub joins: Option<u64>,
    /// … or this many seconds (5 when neither is given).
    pub duration_secs: Option<f64>,
    pub freeze_ms: u64,
    pub outage_ms: u64,
    /// Signalling pairs (quorum loss only).
    pub pairs: usize,
    /// Signals per second each pair client sends its partner.
    pub signal_rate: f64,
    pub max_rooms_per_client: usize,
    /// The edges share a Redis (signals between them then take it, not the replicas).
    pub redis: bool,
    /// Where the processes' logs are copied at the end (they go with the cluster otherwise).
    pub logs: Option<std::path::PathBuf>,
    pub source_addrs: usize,
    pub connect_concurrency: usize,
}

/// The fate of the pairs' signals in a round.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SignalFigures {
    pub sent: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub refused: u64,
    pub expired: u64,
    pub lost: u64,
}

/// One round.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub round: usize,
    pub fault: Fault,
    /// Seconds from the storm's start to the fault.
    pub fault_at_secs: Option<f64>,
    /// The replicas the fault hit, and the leader before it.
    pub faulted_replicas: Vec<u64>,
    pub leader_before: u64,
    /// replica-freeze: the edge attached to the frozen replica.
    pub frozen_edge: Option<usize>,
    pub storm_secs: f64,
    #[serde(flatten)]
    pub counts: Counts,
    pub ghosts: u64,
    pub missing: u64,
    pub view_mismatches: u64,
    pub unavailable_then_member: u64,
    /// At the first observation after the storm (convergence may remove some).
    pub ghosts_first_look: u64,
    pub missing_first_look: u64,
    pub observations: u64,
    pub converge_ms: f64,
    pub members_observed: u64,
    /// The longest time without any successful join during the storm.
    pub longest_no_join_ms: f64,
    /// replica-freeze: the longest time the frozen edge's clients went without a successful
    /// join while the replica was frozen, counted from the freeze.
    pub frozen_edge_no_join_ms: Option<f64>,
    pub unavailable_latency_max_ms: Option<f64>,
    pub unavailable_latency_p99_ms: Option<f64>,
    /// Of joins sent while the fault lasted.
    pub unavailable_during_fault_max_ms: Option<f64>,
    pub fault_ms: Option<f64>,
    pub signals: Option<SignalFigures>,
    /// Of the signals sent while the fault lasted.
    pub signals_during_fault: Option<SignalFigures>,
    /// Lines in the replicas' and edges' logs, from the fault on, where HTTP/2 refused
    /// streams or connections ([`lab::H2_ERRORS`]: pending-accept streams, resource
    /// exhausted, GOAWAY …).
    pub h2_error_lines: u64,
    /// Other lines naming an HTTP/2 error: calls on connections that broke during the
    /// fault (a killed replica, a connection its peer dropped for a missed keepalive).
    pub h2_connection_error_lines: u64,
    pub samples: Vec<String>,
}

/// What the run produced: each round, their totals, and the failed checks.
pub struct Outcome {
    pub rounds: Vec<Value>,
    pub totals: Value,
    pub failures: Vec<String>,
}

/// What a fault did.
struct Injected {
    at: Instant,
    end: Instant,
    replicas: Vec<u64>,
    edge: Option<usize>,
}

struct Run<'a> {
    s: &'a ChaosSettings,
    lab: Lab,
    targets: Vec<Target>,
    /// Storm clients, then pair clients (partners next to each other).
    clients: Vec<Shared>,
    storm: usize,
    rooms: Vec<String>,
    phase: watch::Sender<Phase>,
    control: Arc<Control>,
}

pub async fn run(s: &ChaosSettings) -> Result<Outcome> {
    if s.clients == 0 || s.rooms == 0 || s.rounds == 0 || s.max_rooms_per_client == 0 {
        bail!("--clients, --rooms, --repeat and --max-rooms-per-client must be ≥ 1");
    }
    let limit = super::raise_nofile_limit();
    super::check_fd_budget((s.clients + 2 * s.pairs + 16) as u64, limit, false)?;
    let lab = Lab::start(s.redis).await?;
    eprintln!("chaos: cluster up in {}", lab.dir().display());
    let mut targets = Vec::new();
    for url in lab.edge_urls() {
        targets.push(Target::resolve(&url).await?);
    }
    let prefix = room_prefix("chaos");
    let storm_rooms: Arc<Vec<String>> =
        Arc::new((0..s.rooms).map(|i| format!("{prefix}-{i}")).collect());
    let (phase, phase_rx) = watch::channel(Phase::Quiet);
    let control = Arc::new(Control {
        phase: phase_rx,
        signalling: AtomicBool::new(false),
        done: CancellationToken::new(),
    });
    let mut tasks = JoinSet::new();
    let connects = (0..s.clients).map(|i| {
        let target = targets[i % targets.len()].clone();
        let source = source_addr(&target, i, s.source_addrs);
        async move { (i, Client::connect(&target, source).await) }
    });
    let mut connected: Vec<_> = stream::iter(connects)
        .buffer_unordered(s.connect_concurrency.max(1))
        .collect()
        .await;
    connected.sort_by_key(|(i, _)| *i);
    let mut clients = Vec::new();
    for (i, c) in connected {
        let c = c.map_err(|e| anyhow!("client {i}: {e:#}"))?;
        let state: Shared = Arc::new(std::sync::Mutex::new(State::new(
            c.peer_id.clone(),
            i % targets.len(),
        )));
        clients.push(state.clone());
        let role = Role {
            rooms: storm_rooms.clone(),
            max_rooms: s.max_rooms_per_client,
            signal_period: Duration::from_secs(3600),
        };
        tasks.spawn(member::run(c.ws, state, role, control.clone()));
    }
    let mut rooms: Vec<String> = storm_rooms.to_vec();
    if s.fault == Fault::QuorumLoss {
        let period = Duration::from_secs_f64(1.0 / s.signal_rate.max(0.01));
        for p in 0..s.pairs {
            let room = format!("{prefix}-pair-{p}");
            for (state, ws) in pair(&targets, &room).await? {
                clients.push(state.clone());
                let role = Role {
                    rooms: Arc::new(Vec::new()),
                    max_rooms: 0,
                    signal_period: period,
                };
                tasks.spawn(member::run(ws, state, role, control.clone()));
            }
            rooms.push(room);
        }
    }
    let mut conductor = Run {
        s,
        lab,
        targets,
        clients,
        storm: s.clients,
        rooms,
        phase,
        control,
    };
    let mut rounds = Vec::new();
    let mut broken = None;
    for k in 0..s.rounds {
        match conductor.round(k).await {
            Ok(r) => {
                eprintln!("{}", round_line(&r));
                rounds.push(serde_json::to_value(r)?);
            }
            // The cluster did not come back (or a round could not be observed): the run
            // fails with what the completed rounds measured.
            Err(e) => {
                eprintln!("chaos: round {} failed: {e:#}", k + 1);
                broken = Some(format!("round {} did not complete: {e:#}", k + 1));
                break;
            }
        }
    }
    conductor.control.done.cancel();
    let finished = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tasks.shutdown().await;
    }
    if let Some(to) = &s.logs {
        conductor.lab.copy_logs(to)?;
        eprintln!("chaos: the processes' logs are in {}", to.display());
    }
    // Dropping the cluster kills its processes (blocking: off the runtime).
    let lab = conductor.lab;
    tokio::task::spawn_blocking(move || drop(lab)).await?;
    let mut totals = totals(&rounds);
    let mut failures = failures(&totals);
    failures.extend(broken);
    let time_targets = self::targets(&totals);
    if let Value::Object(m) = &mut totals {
        m.insert("targets".into(), time_targets);
    }
    Ok(Outcome {
        rounds,
        totals,
        failures,
    })
}

/// Two clients in `room`, one on each edge, each knowing the other.
async fn pair(targets: &[Target], room: &str) -> Result<Vec<(Shared, crate::client::Ws)>> {
    let mut out = Vec::new();
    let mut ids = Vec::new();
    for (i, target) in targets.iter().take(2).enumerate() {
        let mut c = Client::connect(target, None).await?;
        let joined = c.join(room).await?;
        let v: Value = serde_json::from_str(&joined)?;
        let mut state = State::new(c.peer_id.clone(), i);
        let view = state.rooms.entry(room.to_owned()).or_default();
        view.member = true;
        view.last = member::Answer::Joined;
        view.peers = v["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["id"].as_str().map(str::to_owned))
            .collect();
        ids.push(c.peer_id.clone());
        out.push((state, c.ws));
    }
    if out.len() != 2 {
        bail!("a signalling pair needs two edges");
    }
    let mut pairs = Vec::new();
    for (i, (mut state, ws)) in out.into_iter().enumerate() {
        state.signals = Some(Signals {
            partner: ids[1 - i].clone(),
            room: room.to_owned(),
            ..Signals::default()
        });
        pairs.push((Arc::new(std::sync::Mutex::new(state)), ws));
    }
    // The first learns of the second from a `peer-joined` its task reads (waited for before
    // the first round).
    Ok(pairs)
}

impl Run<'_> {
    fn storm_clients(&self) -> &[Shared] {
        &self.clients[..self.storm]
    }

    fn pair_clients(&self) -> &[Shared] {
        &self.clients[self.storm..]
    }

    fn storm_joins(&self) -> u64 {
        self.storm_clients()
            .iter()
            .map(|c| lock(c).counts.joins)
            .sum()
    }

    async fn round(&mut self, k: usize) -> Result<Round> {
        let s = self.s;
        let leader = self.lab.wait_healthy(HEALTHY).await?;
        // Pair members learn of each other before the first round.
        if k == 0 {
            self.wait_views_settled().await?;
        }
        let counts_before: Vec<Counts> = self.clients.iter().map(|c| lock(c).counts).collect();
        let joined_from: Vec<usize> = self
            .clients
            .iter()
            .map(|c| lock(c).joined_at.len())
            .collect();
        let unavailable_from: Vec<usize> = self
            .clients
            .iter()
            .map(|c| lock(c).unavailable.len())
            .collect();
        let signals_from: Vec<usize> = self
            .clients
            .iter()
            .map(|c| lock(c).signals.as_ref().map_or(0, |g| g.sent.len()))
            .collect();
        let samples_from: Vec<usize> = self.clients.iter().map(|c| lock(c).samples.len()).collect();
        let joins_before = self.storm_joins();

        let fraction = 0.2 + 0.4 * rand::random::<f64>();
        let duration = s
            .duration_secs
            .or(if s.joins.is_some() { None } else { Some(5.0) })
            .map(Duration::from_secs_f64);
        let start = Instant::now();
        self.phase.send_replace(Phase::Storm);
        self.control
            .signalling
            .store(!self.pair_clients().is_empty(), Ordering::Relaxed);
        let mut marks = None;
        let mut injected: Option<Injected> = None;
        let mut leader_before = leader;
        loop {
            let joins = self.storm_joins() - joins_before;
            let elapsed = start.elapsed();
            let progress = match (duration, s.joins) {
                (Some(d), _) => elapsed.as_secs_f64() / d.as_secs_f64(),
                (None, Some(n)) => joins as f64 / n.max(1) as f64,
                (None, None) => 1.0,
            };
            if injected.is_none() && s.fault != Fault::None && progress >= fraction {
                marks = Some(self.lab.log_marks());
                leader_before = self.lab.leader(&self.lab.replica_ids(), HEALTHY).await?;
                injected = Some(self.inject(leader_before).await?);
            }
            let fault_over = match (&injected, s.fault) {
                (_, Fault::None) => true,
                (Some(f), _) => f.end.elapsed() >= AFTER_FAULT,
                (None, _) => false,
            };
            if (progress >= 1.0 && fault_over) || elapsed >= JOINS_CAP {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.phase.send_replace(Phase::Quiet);
        self.control.signalling.store(false, Ordering::Relaxed);
        let storm_end = Instant::now();
        self.wait_answers().await;
        self.drain_signals(&signals_from).await;
        self.lab.wait_healthy(HEALTHY).await?;
        let converge_start = Instant::now();
        let (first, last, observations) = self.converge().await?;
        let converge_ms = ms(converge_start.elapsed());

        // Figures of this round.
        let mut counts = Counts::default();
        for (c, before) in self.clients.iter().zip(&counts_before) {
            counts = add(&counts, &sub(&lock(c).counts, before));
        }
        let mut timeline: Vec<(Instant, usize)> = Vec::new();
        let mut unavailable: Vec<(Instant, Duration)> = Vec::new();
        let mut samples = Vec::new();
        for (i, c) in self.clients.iter().enumerate() {
            let st = lock(c);
            if i < self.storm {
                timeline.extend(st.joined_at[joined_from[i]..].iter().map(|t| (*t, st.edge)));
            }
            unavailable.extend_from_slice(&st.unavailable[unavailable_from[i]..]);
            let refused = st.signals.iter().flat_map(|g| &g.error_samples);
            for line in st.samples[samples_from[i]..].iter().chain(refused) {
                if samples.len() < SAMPLES {
                    samples.push(line.clone());
                }
            }
        }
        timeline.sort();
        for line in &last.samples {
            if samples.len() < SAMPLES {
                samples.push(line.clone());
            }
        }
        let all: Vec<Instant> = timeline.iter().map(|(t, _)| *t).collect();
        let longest_no_join_ms = ms(longest_gap(&all, start, storm_end));
        let frozen_edge_no_join_ms = match (&injected, s.fault) {
            (Some(f), Fault::ReplicaFreeze) => f.edge.map(|e| {
                let on_edge: Vec<Instant> = timeline
                    .iter()
                    .filter(|(_, x)| *x == e)
                    .map(|(t, _)| *t)
                    .collect();
                ms(longest_gap(&on_edge, f.at, f.end))
            }),
            _ => None,
        };
        let mut latencies: Vec<Duration> = unavailable.iter().map(|(_, d)| *d).collect();
        latencies.sort();
        let during: Option<Duration> = injected.as_ref().and_then(|f| {
            unavailable
                .iter()
                .filter(|(sent, _)| *sent >= f.at && *sent <= f.end)
                .map(|(_, d)| *d)
                .max()
        });
        let (signals, signals_during_fault) = if self.pair_clients().is_empty() {
            (None, None)
        } else {
            let (a, b) = self.signal_figures(&signals_from, injected.as_ref());
            (Some(a), injected.as_ref().map(|_| b))
        };
        let logs = marks
            .as_ref()
            .map(|m| lab::h2_errors(m, 3))
            .unwrap_or_default();
        samples.extend(logs.samples);
        Ok(Round {
            round: k + 1,
            fault: s.fault,
            fault_at_secs: injected
                .as_ref()
                .map(|f| f.at.saturating_duration_since(start).as_secs_f64()),
            faulted_replicas: injected
                .as_ref()
                .map(|f| f.replicas.clone())
                .unwrap_or_default(),
            leader_before,
            frozen_edge: injected.as_ref().and_then(|f| f.edge),
            storm_secs: storm_end.duration_since(start).as_secs_f64(),
            counts,
            ghosts: last.ghosts,
            missing: last.missing,
            view_mismatches: last.view_mismatches,
            unavailable_then_member: last.unavailable_then_member,
            ghosts_first_look: first.ghosts,
            missing_first_look: first.missing,
            observations,
            converge_ms,
            members_observed: last.members,
            longest_no_join_ms,
            frozen_edge_no_join_ms,
            unavailable_latency_max_ms: latencies.last().map(|d| ms(*d)),
            unavailable_latency_p99_ms: quantile(&latencies, 0.99).map(ms),
            unavailable_during_fault_max_ms: during.map(ms),
            fault_ms: injected.as_ref().map(|f| ms(f.end.duration_since(f.at))),
            signals,
            signals_during_fault,
            h2_error_lines: logs.refusals,
            h2_connection_error_lines: logs.broken,
            samples,
        })
    }

    /// Injects the fault; returns when it is over (the replicas restarted or thawed).
    async fn inject(&mut self, leader: u64) -> Result<Injected> {
        let s = self.s;
        let all = self.lab.replica_ids();
        let freeze = Duration::from_millis(s.freeze_ms);
        match s.fault {
            Fault::None => bail!("no fault to inject"),
            Fault::LeaderKill => {
                let at = Instant::now();
                self.lab.kill(leader).await?;
                eprintln!("chaos: killed the leader, replica {leader}");
                let others: Vec<u64> = all.iter().copied().filter(|i| *i != leader).collect();
                let next = self.lab.leader(&others, HEALTHY).await?;
                eprintln!(
                    "chaos: replica {next} leads after {:.0} ms; restarting {leader}",
                    ms(at.elapsed())
                );
                self.lab.restart(leader).await?;
                Ok(Injected {
                    at,
                    end: Instant::now(),
                    replicas: vec![leader],
                    edge: None,
                })
            }
            Fault::LeaderFreeze => {
                self.lab.signal(leader, "STOP").await?;
                let at = Instant::now();
                eprintln!("chaos: froze the leader, replica {leader}");
                tokio::time::sleep(freeze).await;
                self.lab.signal(leader, "CONT").await?;
                Ok(Injected {
                    at,
                    end: Instant::now(),
                    replicas: vec![leader],
                    edge: None,
                })
            }
            Fault::ReplicaFreeze => {
                let attached = [self.lab.attached(0), self.lab.attached(1)];
                let pick = (0..attached.len())
                    .find(|e| attached[*e].is_some_and(|r| r != leader))
                    .or_else(|| (0..attached.len()).find(|e| attached[*e].is_some()))
                    .ok_or_else(|| anyhow!("no edge is attached to a replica"))?;
                let victim = attached[pick].ok_or_else(|| anyhow!("edge {pick} has no replica"))?;
                self.lab.signal(victim, "STOP").await?;
                let at = Instant::now();
                eprintln!(
                    "chaos: froze replica {victim} (edge {pick} is attached to it; leader {leader})"
                );
                tokio::time::sleep(freeze).await;
                self.lab.signal(victim, "CONT").await?;
                Ok(Injected {
                    at,
                    end: Instant::now(),
                    replicas: vec![victim],
                    edge: Some(pick),
                })
            }
            Fault::QuorumLoss => {
                let others: Vec<u64> = all.iter().copied().filter(|i| *i != leader).collect();
                let other = *others
                    .choose(&mut rand::rng())
                    .ok_or_else(|| anyhow!("no second replica"))?;
                let at = Instant::now();
                self.lab.kill(leader).await?;
                self.lab.kill(other).await?;
                eprintln!("chaos: killed replicas {leader} (leader) and {other}");
                tokio::time::sleep(Duration::from_millis(s.outage_ms)).await;
                self.lab.restart(leader).await?;
                self.lab.restart(other).await?;
                eprintln!("chaos: restarted replicas {leader} and {other}");
                Ok(Injected {
                    at,
                    end: Instant::now(),
                    replicas: vec![leader, other],
                    edge: None,
                })
            }
        }
    }

    /// Until every client has its answers (those with an unanswered request aside).
    async fn wait_answers(&self) {
        let deadline = Instant::now() + ANSWERS;
        while Instant::now() < deadline {
            let busy = self.clients.iter().any(|c| {
                let s = lock(c);
                !s.stuck && s.busy()
            });
            if !busy {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Until every pair signal sent is accounted for, or nothing new arrives.
    async fn drain_signals(&self, from: &[usize]) {
        if self.pair_clients().is_empty() {
            return;
        }
        let deadline = Instant::now() + DRAIN;
        let mut last = (0, 0);
        let mut since = Instant::now();
        while Instant::now() < deadline {
            let (a, _) = self.signal_figures(from, None);
            let now = (a.sent, a.delivered + a.refused + a.expired);
            if now.1 >= now.0 {
                return;
            }
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= QUIET {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The pairs' signals since `from` (per client), overall and sent during the fault.
    fn signal_figures(
        &self,
        from: &[usize],
        fault: Option<&Injected>,
    ) -> (SignalFigures, SignalFigures) {
        let mut all = SignalFigures::default();
        let mut during = SignalFigures::default();
        let pairs = self.pair_clients();
        for (j, c) in pairs.iter().enumerate() {
            let i = self.storm + j;
            let partner = &pairs[j ^ 1];
            let sender = lock(c);
            let receiver = lock(partner);
            let (Some(out), Some(inbox)) = (sender.signals.as_ref(), receiver.signals.as_ref())
            else {
                continue;
            };
            for (n, sent_at) in out.sent.iter().enumerate().skip(from[i]) {
                let n = n as u64;
                let in_fault = fault.is_some_and(|f| *sent_at >= f.at && *sent_at <= f.end);
                let copies = inbox.received.get(&n).copied().unwrap_or(0);
                for fig in [Some(&mut all), in_fault.then_some(&mut during)]
                    .into_iter()
                    .flatten()
                {
                    fig.sent += 1;
                    if copies > 0 {
                        fig.delivered += 1;
                        fig.duplicates += u64::from(copies - 1);
                    } else if out.refused.contains(&n) {
                        fig.refused += 1;
                    } else if out.expired.contains(&n) {
                        fig.expired += 1;
                    } else {
                        fig.lost += 1;
                    }
                }
            }
        }
        (all, during)
    }

    /// Observes every room until the registry and the clients agree, or [`CONVERGE`]
    /// passes: the first and the last findings, and how many observations it took.
    async fn converge(&self) -> Result<(Findings, Findings, u64)> {
        let deadline = Instant::now() + CONVERGE;
        let mut first = None;
        let mut n = 0;
        loop {
            n += 1;
            let registry = check::observe(&self.targets, &self.rooms).await?;
            let f = check::settle(&registry, &self.clients, VIEWS).await;
            let first = first.get_or_insert_with(|| f.clone()).clone();
            if f.clean() || Instant::now() >= deadline {
                return Ok((first, f, n));
            }
        }
    }

    /// Before the first round: every pair client knows its partner.
    async fn wait_views_settled(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ready = self.pair_clients().iter().all(|c| {
                let s = lock(c);
                s.signals.as_ref().is_some_and(|g| {
                    s.rooms
                        .get(&g.room)
                        .is_some_and(|v| v.peers.contains(&g.partner))
                })
            });
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the signalling pairs did not see each other within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The longest stretch of `[from, to]` without a point of `sorted` (`from` and `to` count
/// as points; a stretch open at `to` runs to the next point after it, if any).
fn longest_gap(sorted: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut prev = from;
    let mut longest = Duration::ZERO;
    for t in sorted.iter().filter(|t| **t > from) {
        longest = longest.max(t.duration_since(prev));
        prev = *t;
        if *t >= to {
            return longest;
        }
    }
    longest.max(to.saturating_duration_since(prev))
}

fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i])
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

fn counts_op(a: &Counts, b: &Counts, f: fn(u64, u64) -> u64) -> Counts {
    let (Ok(Value::Object(a)), Ok(Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return Counts::default();
    };
    let out: Map<String, Value> = a
        .iter()
        .map(|(k, v)| {
            let x = v.as_u64().unwrap_or(0);
            let y = b.get(k).and_then(Value::as_u64).unwrap_or(0);
            (k.clone(), Value::from(f(x, y)))
        })
        .collect();
    serde_json::from_value(Value::Object(out)).unwrap_or_default()
}

fn add(a: &Counts, b: &Counts) -> Counts {
    counts_op(a, b, u64::saturating_add)
}

fn sub(a: &Counts, b: &Counts) -> Counts {
    counts_op(a, b, u64::saturating_sub)
}

/// The rounds together: counts add up, times (`*_ms`, `*_secs`) take the largest, lists
/// are joined (at most [`SAMPLES`] entries), the rest comes from the first round.
pub fn totals(rounds: &[Value]) -> Value {
    let mut out = Value::Null;
    for r in rounds {
        out = merge(&out, r, "");
    }
    if !out.is_object() {
        out = Value::Object(Map::new());
    }
    if let Value::Object(m) = &mut out {
        m.insert("rounds".into(), Value::from(rounds.len()));
        // Per-round facts that do not add up.
        for key in ["round", "leader_before", "frozen_edge", "fault_at_secs"] {
            m.remove(key);
        }
    }
    out
}

fn merge(acc: &Value, v: &Value, key: &str) -> Value {
    let timed = key.ends_with("_ms") || key.ends_with("_secs");
    match (acc, v) {
        (Value::Null, v) => v.clone(),
        (a, Value::Null) => a.clone(),
        (Value::Object(a), Value::Object(b)) => {
            let mut m = a.clone();
            for (k, bv) in b {
                let merged = merge(a.get(k).unwrap_or(&Value::Null), bv, k);
                m.insert(k.clone(), merged);
            }
            Value::Object(m)
        }
        (Value::Array(a), Value::Array(b)) => Value::Array(
            a.iter()
                .chain(b)
                .take(if key == "samples" {
                    SAMPLES
                } else {
                    usize::MAX
                })
                .cloned()
                .collect(),
        ),
        (Value::Number(_), Value::Number(_)) if timed => {
            let (x, y) = (acc.as_f64().unwrap_or(0.0), v.as_f64().unwrap_or(0.0));
            Value::from(x.max(y))
        }
        (Value::Number(x), Value::Number(y)) => match (x.as_u64(), y.as_u64()) {
            (Some(x), Some(y)) => Value::from(x + y),
            _ => acc.clone(),
        },
        _ => acc.clone(),
    }
}

/// The time targets, and whether the run met them (`null` when it has no such
/// figure): at most 2 s without a successful join (overall, and on a frozen replica's edge),
/// `unavailable` within 1 s for joins sent during the fault.
pub fn targets(t: &Value) -> Value {
    let within = |key: &str, limit: f64| t.get(key).and_then(Value::as_f64).map(|x| x <= limit);
    serde_json::json!({
        "no_join_ms": TARGET_NO_JOIN_MS,
        "unavailable_ms": TARGET_UNAVAILABLE_MS,
        "no_join_met": within("longest_no_join_ms", TARGET_NO_JOIN_MS),
        "frozen_edge_no_join_met": within("frozen_edge_no_join_ms", TARGET_NO_JOIN_MS),
        "unavailable_met": within("unavailable_during_fault_max_ms", TARGET_UNAVAILABLE_MS),
    })
}

/// The correctness checks that failed, from the totals.
pub fn failures(t: &Value) -> Vec<String> {
    let n = |path: &[&str]| {
        path.iter()
            .try_fold(t, |v, k| v.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let mut out = Vec::new();
    for key in [
        "ghosts",
        "missing",
        "removed_silently",
        "view_mismatches",
        "unavailable_then_member",
        "unanswered",
        "extra_answers",
        "duplicate_peer_joined",
        "peer_left_unannounced",
        "events_after_left",
        "events_before_joined",
        "events_outside",
        "other_errors",
        "socket_closed",
    ] {
        if n(&[key]) > 0 {
            out.push(format!("{key}: {}", n(&[key])));
        }
    }
    if n(&["join_retries"]) > n(&["join_retries_answered"]) + n(&["unanswered"]) {
        out.push("a retried join was not answered".into());
    }
    for key in ["refused", "lost"] {
        if n(&["signals", key]) > 0 {
            out.push(format!("signals {key}: {}", n(&["signals", key])));
        }
    }
    out
}

fn round_line(r: &Round) -> String {
    format!(
        "chaos: round {} ({:?}): {} joins, {} unavailable, {} unanswered; {} ghosts, {} missing, \
         {} view mismatches; longest without a join {:.0} ms{}",
        r.round,
        r.fault,
        r.counts.joins,
        r.counts.unavailable_joins,
        r.counts.unanswered,
        r.ghosts,
        r.missing,
        r.view_mismatches,
        r.longest_no_join_ms,
        r.frozen_edge_no_join_ms
            .map(|x| format!(", frozen edge without a join {x:.0} ms"))
            .unwrap_or_default()
    )
}

/// The few lines a person reads after a run.
pub fn summary(r: &Value) -> String {
    let n = |path: &[&str]| {
        path.iter()
            .try_fold(r, |v, k| v.get(k))
            .and_then(Value::as_f64)
            .map_or_else(|| "n/a".to_owned(), |x| format!("{x:.0}"))
    };
    let mut s = format!(
        "chaos ({}, {} rounds): {} joins ({} requests, {} unavailable, {} retried), {} leaves \
         ({} unavailable)\n  membership: {} ghosts, {} missing, {} view mismatches, {} \
         unavailable answers contradicted ({} ghosts and {} missing at the first look, up to \
         {} ms to converge)\n  answers: {} unanswered, {} late, {} answered twice, {} other errors, {} sockets \
         closed\n  events: {} duplicate peer-joined, {} peer-left never announced, {} after \
         left, {} before joined, {} outside the room\n  longest without a successful join: {} \
         ms; unavailable answered within {} ms (max; {} ms for joins sent during the fault)",
        r.get("fault").and_then(Value::as_str).unwrap_or("?"),
        n(&["rounds"]),
        n(&["joins"]),
        n(&["join_requests"]),
        n(&["unavailable_joins"]),
        n(&["join_retries"]),
        n(&["leaves"]),
        n(&["unavailable_leaves"]),
        n(&["ghosts"]),
        n(&["missing"]),
        n(&["view_mismatches"]),
        n(&["unavailable_then_member"]),
        n(&["ghosts_first_look"]),
        n(&["missing_first_look"]),
        n(&["converge_ms"]),
        n(&["unanswered"]),
        n(&["late_answers"]),
        n(&["extra_answers"]),
        n(&["other_errors"]),
        n(&["socket_closed"]),
        n(&["duplicate_peer_joined"]),
        n(&["peer_left_unannounced"]),
        n(&["events_after_left"]),
        n(&["events_before_joined"]),
        n(&["events_outside"]),
        n(&["longest_no_join_ms"]),
        n(&["unavailable_latency_max_ms"]),
        n(&["unavailable_during_fault_max_ms"]),
    );
    if r.get("frozen_edge_no_join_ms")
        .is_some_and(Value::is_number)
    {
        s += &format!(
            "\n  frozen replica's edge: longest without a successful join {} ms",
            n(&["frozen_edge_no_join_ms"])
        );
    }
    if r.get("signals").is_some_and(Value::is_object) {
        s += &format!(
            "\n  pair signals: {} sent, {} delivered, {} refused, {} expired, {} lost; during \
             the fault: {} sent, {} delivered, {} refused, {} lost",
            n(&["signals", "sent"]),
            n(&["signals", "delivered"]),
            n(&["signals", "refused"]),
            n(&["signals", "expired"]),
            n(&["signals", "lost"]),
            n(&["signals_during_fault", "sent"]),
            n(&["signals_during_fault", "delivered"]),
            n(&["signals_during_fault", "refused"]),
            n(&["signals_during_fault", "lost"]),
        );
    }
    s += &format!(
        "\n  HTTP/2 in the logs from the fault on: {} refusals (pending-accept, resource \
         exhausted, GOAWAY), {} broken connections",
        n(&["h2_error_lines"]),
        n(&["h2_connection_error_lines"])
    );
    let failed: Vec<&str> = r
        .get("failures")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    s += &if failed.is_empty() {
        "\n  checks: passed".to_owned()
    } else {
        // What was found, so that a failed run says why without its results file.
        let samples: Vec<&str> = r
            .get("samples")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut lines = format!("\n  checks FAILED: {}", failed.join("; "));
        for sample in samples {
            lines += &format!("\n    {sample}");
        }
        lines
    };
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn gaps_count_the_window_edges() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let points = [at(100), at(200), at(900), at(1000)];
        assert_eq!(
            longest_gap(&points, t0, at(1000)),
            Duration::from_millis(700)
        );
        assert_eq!(
            longest_gap(&points, at(150), at(300)),
            Duration::from_millis(700)
        );
        assert_eq!(longest_gap(&[], t0, at(50)), Duration::from_millis(50));
    }

    #[test]
    fn totals_add_counts_and_keep_the_longest_time() {
        let rounds = [
            json!({"round": 1, "ghosts": 0, "joins": 10, "longest_no_join_ms": 300.5, "samples": ["a"], "signals": null}),
            json!({"round": 2, "ghosts": 1, "joins": 5, "longest_no_join_ms": 120.0, "samples": ["b"], "signals": {"lost": 2}}),
        ];
        let t = totals(&rounds);
        assert_eq!(t["joins"], 15);
        assert_eq!(t["ghosts"], 1);
        assert_eq!(t["longest_no_join_ms"], 300.5);
        assert_eq!(t["samples"], json!(["a", "b"]));
        assert_eq!(t["rounds"], 2);
        assert_eq!(
            failures(&t),
            vec!["ghosts: 1".to_owned(), "signals lost: 2".to_owned()]
        );
    }
}
