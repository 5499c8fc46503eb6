//! `failover`: N clients in two-peer rooms, all on one edge, signal each other continuously;
//! that edge is killed (`kill -9`) or drained (SIGTERM); every client notices (after a kill
//! its socket ends; after a drain the edge sends `reconnect`, then closes with 1001) and at
//! once resumes its session on another edge of the region: a new socket, its `welcome`, then
//! `resume` with the old session's token and the highest `seq` read on it. The client keeps
//! its peer id and rooms; it never joins again.
//!
//! Measured from the instant the edge is sent its signal: when each client had `resumed`
//! (the time until 50 %, 99 % and 100 % of them had), and the fate of every signal. Every
//! client numbers its signals (`data.n`, also the signal's `ref`, which `expired` and
//! `error` echo), and per direction of every pair each number sent is exactly one of:
//! - **received** (at least once; further copies count as duplicates, and a first arrival
//!   after a higher number counts as reordered). Like the SDK, the client drops a frame whose
//!   `seq` is not above the highest it has read (counted as `seq_duplicates`), so duplicates
//!   are copies that came with new numbers;
//! - **expired**: the sender was told `expired` (the edge will never deliver it);
//! - **refused**: the sender got an `error` for it;
//! - **in flight at kill** (kill mode only): written to the killed edge's socket and never
//!   received: it died with that process. This includes signals written between the kill and
//!   the sender noticing it (shown on their own as `in_flight_written_after_kill`): the
//!   process may take a moment to die, and the client cannot know;
//! - **lost**: anything else. After a kill: signals sent on the resumed session; after a
//!   drain: any signal at all. It must be 0.
//!
//! While a client has no socket it sends nothing (its sending ticks are skipped); a signal
//! whose write fails is not counted as sent. After a `reconnect` notice a client goes on
//! sending on that socket until the edge closes it, as the SDK does, unless
//! `--hold-after-notice` makes it wait for the resume.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use super::failover_region::RegionRedis;
use super::relay::GENERATOR_LIMIT_FRACTION;
use super::{bump, load, room_prefix};
use crate::client::{Client, Target, Ws, source_addr};
use crate::procstat::{self, Pid};

/// The issue's target, for 2,000 clients: 99 % resumed within 3 s of the failure, none lost.
pub const TARGET_P99_MS: f64 = 3_000.0;
/// The `ref` of `resume` requests (signals use numbers, so a string cannot be confused).
const RESUME_REF: &str = "resume";
/// Longest wait for one resume attempt (connect, `welcome`, replay, `resumed`).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed resume attempt (the other edge refused or dropped the connection).
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// After sending stops: once nothing new arrives for this long, the rest never will.
const QUIET: Duration = Duration::from_secs(1);
/// Error frames printed at most (the rest are only counted).
const ERRORS_SHOWN: u64 = 5;
/// Signal numbers beyond this are ignored rather than tracked (a run sends far fewer).
const MAX_N: u64 = 10_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `kill -9` the edge.
    Kill,
    /// SIGTERM: the edge drains (`reconnect` notices, then closes every socket with 1001).
    Drain,
}

impl Mode {
    fn kill_arg(self) -> &'static str {
        match self {
            Self::Kill => "-KILL",
            Self::Drain => "-TERM",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FailoverSettings {
    /// WebSocket URL of the edge that fails.
    pub edge: String,
    pub edge_pid: u32,
    /// WebSocket URL of the edge of the same region the clients resume on.
    pub other: String,
    /// The Redis of the region the run started (`None`: the edges were given).
    pub started_region: Option<RegionRedis>,
    pub mode: Mode,
    pub clients: usize,
    /// Signals per second per pair, half each way.
    pub rate: f64,
    /// Seconds of signalling before the failure.
    pub before_secs: f64,
    /// Seconds of signalling after every client has resumed (or given up).
    pub after_secs: f64,
    /// A client that has not resumed this long after the failure gives up.
    pub resume_timeout_secs: f64,
    /// Longest wait, after sending stops, for the last signals to arrive.
    pub drain_timeout_secs: f64,
    /// Clients send nothing on a socket after its `reconnect` notice (until they resumed).
    pub hold_after_notice: bool,
    pub source_addrs: usize,
    pub connect_concurrency: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailoverResults {
    pub mode: Mode,
    /// Clients that connected and joined (two per room).
    pub clients: u64,
    pub connect_failures: u64,
    pub connect_secs: f64,
    /// Clients that received `resumed` on the other edge after the failure.
    pub resumed: u64,
    /// Clients that did not resume (refused, or not within the resume timeout).
    pub failed: u64,
    /// Of those, the ones the other edge answered `error resume-failed`.
    pub resume_failed_errors: u64,
    /// Milliseconds from the failure until 50 %, 99 % and 100 % of the clients had resumed
    /// (`null` when that many never did; max: the last client that resumed).
    pub resumed_p50_ms: Option<f64>,
    pub resumed_p99_ms: Option<f64>,
    pub resumed_max_ms: Option<f64>,
    /// Milliseconds from the failure until clients noticed their socket had ended (after a
    /// drain: when the edge closed it, at a point of its drain window).
    pub noticed_p50_ms: Option<f64>,
    pub noticed_max_ms: Option<f64>,
    /// Milliseconds from a client noticing its socket had ended until its `resumed`.
    pub resume_latency_p50_ms: Option<f64>,
    pub resume_latency_p99_ms: Option<f64>,
    pub resume_latency_max_ms: Option<f64>,
    /// Connections opened to the other edge for resumes (≥ resumed; more means retries).
    pub resume_attempts: u64,
    /// Frames the other edge sent before `resumed` (replay window plus pending signals).
    pub replayed: u64,
    pub reconnect_notices: u64,
    /// Sockets that ended before the failure (should be 0).
    pub unexpected_disconnects: u64,
    /// Signals written, over every pair and direction.
    pub sent: u64,
    /// Signals received at least once.
    pub received: u64,
    /// Extra copies of received signals, in frames with new `seq` numbers (a client that
    /// drops frames it has seen by `seq`, as the SDK does, would still get these twice).
    pub duplicates: u64,
    /// First arrivals after a higher number from the same sender.
    pub reordered: u64,
    /// Signals not received whose sender was told `expired`.
    pub expired: u64,
    /// Signals not received whose sender got an `error` for them.
    pub refused: u64,
    /// Signals neither received, expired nor refused, other than those in flight at a kill.
    pub lost: u64,
    /// Kill mode: written to the killed edge's socket and never received.
    pub lost_in_flight_at_kill: u64,
    /// Of those, written after the kill was sent (before the client noticed).
    pub in_flight_written_after_kill: u64,
    /// Drain mode: of the lost signals, those written after the sender's `reconnect` notice.
    pub lost_sent_after_reconnect_notice: u64,
    /// Signals both received and reported `expired` (should be 0).
    pub expired_but_received: u64,
    /// Frames whose `seq` was not above the highest already read: sent again, and dropped
    /// by the client unread.
    pub seq_duplicates: u64,
    /// Pair directions with at least one lost signal.
    pub directions_with_loss: u64,
    pub peer_left_frames: u64,
    /// `error` frames that name no signal of this run.
    pub other_error_frames: u64,
    /// From the first signal until sending stopped and the last signals arrived.
    pub signalling_secs: f64,
    pub generator_cpu_secs: f64,
    pub generator_cpu_percent_of_core: f64,
    pub generator_limited: bool,
    pub target_p99_ms: f64,
    /// 99 % resumed within the target and nothing lost (the issue sets it for 2,000 clients);
    /// counted from the kill, or in a drain from each client's socket close.
    pub target_met: bool,
}

/// What every client task shares with the conductor.
#[derive(Default)]
struct Shared {
    /// When the edge was sent its signal.
    failed_at: OnceLock<Instant>,
    stop_sending: CancellationToken,
    done: CancellationToken,
    resumed: AtomicU64,
    gave_up: AtomicU64,
    sent: AtomicU64,
    /// First arrivals plus first `expired`/`error` answers: the signals accounted for.
    accounted: AtomicU64,
    errors_shown: AtomicU64,
}

impl Shared {
    fn since_failure(&self) -> Option<Duration> {
        self.failed_at.get().map(Instant::elapsed)
    }

    fn show_error(&self, text: &str) {
        if self.errors_shown.fetch_add(1, Ordering::Relaxed) < ERRORS_SHOWN {
            eprintln!("failover: error frame: {text:.300}");
        }
    }
}

/// One client's fixed facts.
struct Peer {
    /// A signal frame up to the number: `{"type":"signal",…,"data":{"n":`.
    signal_prefix: String,
    other: Target,
    source: Option<IpAddr>,
    period: Duration,
    resume_timeout: Duration,
    hold_after_notice: bool,
}

/// What one client saw: as a sender, as a receiver and as a session.
#[derive(Default)]
struct Report {
    /// Signals written: numbers 0..sent.
    sent: u64,
    /// The first number written after the failure instant.
    first_after_failure: Option<u64>,
    /// The first number written after a `reconnect` notice.
    first_after_notice: Option<u64>,
    /// The first number written on a resumed session.
    first_after_resume: Option<u64>,
    expired: HashSet<u64>,
    refused: HashSet<u64>,
    /// Copies received of each of the partner's numbers.
    received: Vec<u32>,
    highest: Option<u64>,
    reordered: u64,
    seq_duplicates: u64,
    noticed: Option<Duration>,
    resumed: Option<Duration>,
    resume_failed_error: bool,
    attempts: u64,
    replayed: u64,
    reconnect_notices: u64,
    unexpected_disconnects: u64,
    peer_left: u64,
    other_errors: u64,
}

impl Report {
    fn receive(&mut self, n: u64, shared: &Shared) {
        if n > MAX_N {
            return;
        }
        let i = usize::try_from(n).unwrap_or(usize::MAX);
        if self.received.len() <= i {
            self.received.resize(i + 1, 0);
        }
        self.received[i] += 1;
        if self.received[i] == 1 {
            bump(&shared.accounted);
            if self.highest.is_some_and(|h| n < h) {
                self.reordered += 1;
            }
            self.highest = Some(self.highest.map_or(n, |h| h.max(n)));
        }
    }

    fn copies(&self, n: u64) -> u32 {
        usize::try_from(n)
            .ok()
            .and_then(|i| self.received.get(i))
            .copied()
            .unwrap_or(0)
    }

    /// The socket ended.
    fn noticed_loss(&mut self, shared: &Shared) {
        match shared.since_failure() {
            Some(d) => {
                self.noticed.get_or_insert(d);
            }
            None => self.unexpected_disconnects += 1,
        }
    }
}

/// What a frame meant to the client's state machine.
enum Seen {
    Nothing,
    Reconnect,
    Resumed { token: String, replayed: u64 },
    ResumeRefused { resume_failed: bool },
}

/// Accounts for one frame; `last_seq` is the highest `seq` of the session being served.
fn on_frame(
    r: &mut Report,
    shared: &Shared,
    text: &str,
    last_seq: &mut u64,
    resuming: bool,
) -> Seen {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        r.other_errors += 1;
        shared.show_error(text);
        return Seen::Nothing;
    };
    let ty = v["type"].as_str().unwrap_or("");
    // The answer to `resume` belongs to the new socket's own session: not numbered in ours.
    if resuming && ty == "error" && v["ref"] == RESUME_REF {
        shared.show_error(text);
        return Seen::ResumeRefused {
            resume_failed: v["code"] == "resume-failed",
        };
    }
    // As the SDK does: a frame numbered at or below the highest already read was handled.
    if let Some(seq) = v["seq"].as_u64() {
        if seq <= *last_seq {
            r.seq_duplicates += 1;
            return Seen::Nothing;
        }
        *last_seq = seq;
    }
    match ty {
        "signal" => {
            if let Some(n) = v["data"]["n"].as_u64() {
                r.receive(n, shared);
            }
        }
        "expired" => {
            if let Some(n) = v["ref"].as_u64()
                && r.expired.insert(n)
            {
                bump(&shared.accounted);
            }
        }
        "error" => match v["ref"].as_u64() {
            Some(n) => {
                if r.refused.insert(n) {
                    bump(&shared.accounted);
                }
                shared.show_error(text);
            }
            None => {
                r.other_errors += 1;
                shared.show_error(text);
            }
        },
        "reconnect" => {
            r.reconnect_notices += 1;
            r.first_after_notice.get_or_insert(r.sent);
            return Seen::Reconnect;
        }
        "resumed" => {
            return Seen::Resumed {
                token: v["resume_token"].as_str().unwrap_or_default().to_owned(),
                replayed: v["replayed"].as_u64().unwrap_or(0),
            };
        }
        "peer-left" => r.peer_left += 1,
        _ => {}
    }
    Seen::Nothing
}

async fn connect_pair(
    target: &Target,
    index: usize,
    room: String,
    sources: usize,
) -> Result<(String, Client, Client)> {
    let mut a = Client::connect(target, source_addr(target, 2 * index, sources)).await?;
    let mut b = Client::connect(target, source_addr(target, 2 * index + 1, sources)).await?;
    a.join(&room).await?;
    b.join(&room).await?;
    // Signals go to members the edge knows: wait until `a` has heard of `b`.
    a.recv_type("peer-joined").await?;
    for c in [&a, &b] {
        if c.resume_token.is_empty() || c.last_seq == 0 {
            bail!(
                "{} sends no resume token or no `seq`: it has no resumable sessions",
                target.url
            );
        }
    }
    Ok((room, a, b))
}

pub async fn run(s: &FailoverSettings) -> Result<FailoverResults> {
    if s.clients < 2 || !s.clients.is_multiple_of(2) {
        bail!("--clients must be an even number ≥ 2");
    }
    if !(s.rate.is_finite() && s.rate > 0.0) {
        bail!("--rate must be a positive number of signals per second per pair");
    }
    for (name, v) in [
        ("--before-secs", s.before_secs),
        ("--after-secs", s.after_secs),
        ("--resume-timeout", s.resume_timeout_secs),
        ("--drain-timeout", s.drain_timeout_secs),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            bail!("{name} must be a non-negative number of seconds");
        }
    }
    if !std::path::Path::new(&format!("/proc/{}", s.edge_pid)).exists() {
        bail!("there is no process {} (--edge-pid)", s.edge_pid);
    }
    let limit = super::raise_nofile_limit();
    // A client drops its old socket before it opens the new one.
    super::check_fd_budget(s.clients as u64, limit, false)?;
    let edge = Target::resolve(&s.edge).await?;
    let other = Target::resolve(&s.other).await?;
    if edge.addr == other.addr {
        bail!("--edge and --other are the same address: resume needs another edge");
    }

    let prefix = room_prefix("failover");
    let connect_started = Instant::now();
    let connected: Vec<Result<(String, Client, Client)>> =
        futures_util::stream::iter(0..s.clients / 2)
            .map(|i| connect_pair(&edge, i, format!("{prefix}-{i}"), s.source_addrs))
            .buffer_unordered(s.connect_concurrency.max(1))
            .collect()
            .await;
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let mut pairs = Vec::new();
    let mut connect_failures = 0u64;
    for p in connected {
        match p {
            Ok(p) => pairs.push(p),
            Err(e) => {
                if connect_failures < ERRORS_SHOWN {
                    eprintln!("failover: a pair failed to connect: {e:#}");
                }
                connect_failures += 1;
            }
        }
    }
    if pairs.is_empty() {
        bail!("no pair could connect to {}", s.edge);
    }
    let clients = 2 * pairs.len();
    eprintln!(
        "failover: {clients} clients joined on {} in {connect_secs:.1} s; signalling",
        s.edge
    );

    let shared = Arc::new(Shared::default());
    // Each client sends half of its pair's rate.
    let period = Duration::from_secs_f64(2.0 / s.rate);
    let resume_timeout = Duration::from_secs_f64(s.resume_timeout_secs);
    let cpu_start = procstat::cpu_time(Pid::Me)?;
    let signalling_start = Instant::now();
    let mut tasks: Vec<JoinHandle<Report>> = Vec::with_capacity(clients);
    for (p, (room, a, b)) in pairs.into_iter().enumerate() {
        let (a_id, b_id) = (a.peer_id.clone(), b.peer_id.clone());
        for (i, me, to) in [(2 * p, a, b_id), (2 * p + 1, b, a_id)] {
            let peer = Peer {
                signal_prefix: format!(
                    r#"{{"type":"signal","room":"{room}","to":"{to}","kind":"custom","data":{{"n":"#
                ),
                other: other.clone(),
                source: source_addr(&other, i, s.source_addrs),
                period,
                resume_timeout,
                hold_after_notice: s.hold_after_notice,
            };
            tasks.push(tokio::spawn(client(peer, me, Arc::clone(&shared))));
        }
    }

    tokio::time::sleep(Duration::from_secs_f64(s.before_secs)).await;
    let failed_at = Instant::now();
    let _ = shared.failed_at.set(failed_at);
    let status = tokio::process::Command::new("kill")
        .arg(s.mode.kill_arg())
        .arg(s.edge_pid.to_string())
        .status()
        .await
        .context("running kill")?;
    if !status.success() {
        shared.done.cancel();
        bail!("kill {} {} failed: {status}", s.mode.kill_arg(), s.edge_pid);
    }
    eprintln!(
        "failover: sent {} to the edge (pid {})",
        s.mode.kill_arg(),
        s.edge_pid
    );
    let settled = |sh: &Shared| load(&sh.resumed) + load(&sh.gave_up);
    while settled(&shared) < clients as u64 && failed_at.elapsed() < resume_timeout {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "failover: {} of {clients} clients resumed within {:.2} s",
        load(&shared.resumed),
        failed_at.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs_f64(s.after_secs)).await;
    shared.stop_sending.cancel();

    // The last signals: until everything is accounted for, or nothing more arrives.
    let drain_started = Instant::now();
    let mut last = load(&shared.accounted);
    let mut last_change = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = load(&shared.accounted);
        if now >= load(&shared.sent)
            || drain_started.elapsed().as_secs_f64() >= s.drain_timeout_secs
        {
            break;
        }
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() >= QUIET {
            break;
        }
    }
    let signalling_secs = signalling_start.elapsed().as_secs_f64();
    let cpu = procstat::cpu_time(Pid::Me)?.saturating_sub(cpu_start);
    shared.done.cancel();
    let mut reports = Vec::with_capacity(tasks.len());
    for t in tasks {
        reports.push(t.await.map_err(|e| anyhow!("a client task failed: {e}"))?);
    }
    let cpu_fraction = cpu.as_secs_f64() / signalling_secs.max(1e-9);
    Ok(account(
        s.mode,
        &reports,
        connect_failures,
        connect_secs,
        signalling_secs,
        cpu.as_secs_f64(),
        cpu_fraction,
    ))
}

/// One client: sends its numbered signals on every tick, reads everything, and resumes on
/// the other edge whenever its socket ends, until told it is done.
async fn client(peer: Peer, setup: Client, shared: Arc<Shared>) -> Report {
    let mut r = Report::default();
    let mut token = setup.resume_token;
    let mut last_seq = setup.last_seq;
    let mut ws = Some(setup.ws);
    // This socket had a `reconnect` notice (and the client holds its signals).
    let mut holding = false;
    // Random phases, so that the clients do not all send at the same instant.
    let first = tokio::time::Instant::now() + peer.period.mul_f64(rand::random::<f64>());
    let mut tick = tokio::time::interval_at(first, peer.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let Some(socket) = ws.as_mut() else {
            match resume(&peer, &shared, &mut r, &mut token, &mut last_seq).await {
                Some(next) => {
                    ws = Some(next);
                    holding = false;
                    continue;
                }
                None => return r,
            }
        };
        let mut lost = false;
        tokio::select! {
            biased;
            () = shared.done.cancelled() => {
                goodbye(socket).await;
                return r;
            }
            msg = socket.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let seen = on_frame(&mut r, &shared, &text, &mut last_seq, false);
                    holding |= peer.hold_after_notice && matches!(seen, Seen::Reconnect);
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => lost = true,
                Some(Ok(_)) => {}
            },
            _ = tick.tick(), if !holding && !shared.stop_sending.is_cancelled() => {
                let n = r.sent;
                let frame = format!("{}{n}}},\"ref\":{n}}}", peer.signal_prefix);
                if socket.send(Message::Text(Utf8Bytes::from(frame))).await.is_ok() {
                    if shared.failed_at.get().is_some() {
                        r.first_after_failure.get_or_insert(n);
                    }
                    r.sent += 1;
                    bump(&shared.sent);
                } else {
                    lost = true;
                }
            }
        }
        if lost {
            // The old socket goes before the new one is opened.
            ws = None;
            r.noticed_loss(&shared);
        }
    }
}

/// Ends the session for good (close 1000), without waiting long for the edge.
async fn goodbye(ws: &mut Ws) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: Utf8Bytes::from_static("failover run done"),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
}

enum Attempt {
    Resumed(Box<Ws>, String, u64),
    Refused { resume_failed: bool },
}

/// Resumes the session on the other edge, retrying until it succeeds, is refused, or the
/// resume timeout (counted from the failure) passes. `None`: the client gives up.
async fn resume(
    peer: &Peer,
    shared: &Shared,
    r: &mut Report,
    token: &mut String,
    last_seq: &mut u64,
) -> Option<Ws> {
    let deadline =
        shared.failed_at.get().copied().unwrap_or_else(Instant::now) + peer.resume_timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if shared.done.is_cancelled() || left.is_zero() {
            bump(&shared.gave_up);
            return None;
        }
        r.attempts += 1;
        let outcome = tokio::select! {
            () = shared.done.cancelled() => None,
            o = tokio::time::timeout(left.min(ATTEMPT_TIMEOUT), attempt(peer, shared, r, token, last_seq)) => o.ok(),
        };
        match outcome {
            Some(Ok(Attempt::Resumed(ws, new_token, replayed))) => {
                if !new_token.is_empty() {
                    *token = new_token;
                }
                r.replayed += replayed;
                if r.resumed.is_none()
                    && let Some(d) = shared.since_failure()
                {
                    r.resumed = Some(d);
                    bump(&shared.resumed);
                }
                r.first_after_resume.get_or_insert(r.sent);
                return Some(*ws);
            }
            Some(Ok(Attempt::Refused { resume_failed })) => {
                r.resume_failed_error = resume_failed;
                bump(&shared.gave_up);
                return None;
            }
            // The connection failed or timed out: try again on a new one.
            Some(Err(_)) | None => tokio::time::sleep(RETRY_PAUSE).await,
        }
    }
}

/// One resume: a new socket on the other edge, its `welcome`, `resume`, then the old
/// session's missed frames until `resumed`.
async fn attempt(
    peer: &Peer,
    shared: &Shared,
    r: &mut Report,
    token: &str,
    last_seq: &mut u64,
) -> Result<Attempt> {
    let mut c = Client::connect(&peer.other, peer.source).await?;
    c.send_json(
        &json!({"type": "resume", "token": token, "last_seq": *last_seq, "ref": RESUME_REF}),
    )
    .await?;
    loop {
        match c.ws.next().await {
            Some(Ok(Message::Text(text))) => match on_frame(r, shared, &text, last_seq, true) {
                Seen::Nothing | Seen::Reconnect => {}
                Seen::Resumed { token, replayed } => {
                    return Ok(Attempt::Resumed(Box::new(c.ws), token, replayed));
                }
                Seen::ResumeRefused { resume_failed } => {
                    return Ok(Attempt::Refused { resume_failed });
                }
            },
            Some(Ok(Message::Close(_))) | None => bail!("the connection closed during the resume"),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(_)) => {}
        }
    }
}

/// Milliseconds of the `q` quantile of `n` clients from sorted times (`None` when fewer
/// than that many have a time).
fn rank_ms(sorted: &[Duration], n: usize, q: f64) -> Option<f64> {
    let need = ((n as f64) * q).ceil().max(1.0) as usize;
    sorted.get(need - 1).map(|d| ms(*d))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// Every signal of every pair and direction, sorted into exactly one fate.
fn account(
    mode: Mode,
    reports: &[Report],
    connect_failures: u64,
    connect_secs: f64,
    signalling_secs: f64,
    cpu_secs: f64,
    cpu_fraction: f64,
) -> FailoverResults {
    let n = reports.len();
    let mut resumed: Vec<Duration> = reports.iter().filter_map(|r| r.resumed).collect();
    resumed.sort();
    let mut noticed: Vec<Duration> = reports.iter().filter_map(|r| r.noticed).collect();
    noticed.sort();
    let mut latency: Vec<Duration> = reports
        .iter()
        .filter_map(|r| Some(r.resumed?.saturating_sub(r.noticed?)))
        .collect();
    latency.sort();
    let sum = |f: fn(&Report) -> u64| reports.iter().map(f).sum::<u64>();
    let mut res = FailoverResults {
        mode,
        clients: n as u64,
        connect_failures,
        connect_secs,
        resumed: resumed.len() as u64,
        failed: (n - resumed.len()) as u64,
        resume_failed_errors: sum(|r| u64::from(r.resume_failed_error)),
        resumed_p50_ms: rank_ms(&resumed, n, 0.50),
        resumed_p99_ms: rank_ms(&resumed, n, 0.99),
        resumed_max_ms: resumed.last().map(|d| ms(*d)),
        noticed_p50_ms: rank_ms(&noticed, noticed.len(), 0.50),
        noticed_max_ms: noticed.last().map(|d| ms(*d)),
        resume_latency_p50_ms: rank_ms(&latency, latency.len(), 0.50),
        resume_latency_p99_ms: rank_ms(&latency, latency.len(), 0.99),
        resume_latency_max_ms: latency.last().map(|d| ms(*d)),
        resume_attempts: sum(|r| r.attempts),
        replayed: sum(|r| r.replayed),
        reconnect_notices: sum(|r| r.reconnect_notices),
        unexpected_disconnects: sum(|r| r.unexpected_disconnects),
        sent: 0,
        received: 0,
        duplicates: 0,
        reordered: sum(|r| r.reordered),
        expired: 0,
        refused: 0,
        lost: 0,
        lost_in_flight_at_kill: 0,
        in_flight_written_after_kill: 0,
        lost_sent_after_reconnect_notice: 0,
        expired_but_received: 0,
        seq_duplicates: sum(|r| r.seq_duplicates),
        directions_with_loss: 0,
        peer_left_frames: sum(|r| r.peer_left),
        other_error_frames: sum(|r| r.other_errors),
        signalling_secs,
        generator_cpu_secs: cpu_secs,
        generator_cpu_percent_of_core: cpu_fraction * 100.0,
        generator_limited: cpu_fraction >= GENERATOR_LIMIT_FRACTION,
        target_p99_ms: TARGET_P99_MS,
        target_met: false,
    };
    for (i, sender) in reports.iter().enumerate() {
        let receiver = &reports[i ^ 1];
        let on_old_socket = sender.first_after_resume.unwrap_or(sender.sent);
        let mut lost_here = 0;
        res.sent += sender.sent;
        for k in 0..sender.sent {
            let copies = receiver.copies(k);
            if copies > 0 {
                res.received += 1;
                res.duplicates += u64::from(copies - 1);
                if sender.expired.contains(&k) {
                    res.expired_but_received += 1;
                }
            } else if sender.expired.contains(&k) {
                res.expired += 1;
            } else if sender.refused.contains(&k) {
                res.refused += 1;
            } else if mode == Mode::Kill && k < on_old_socket {
                res.lost_in_flight_at_kill += 1;
                if sender.first_after_failure.is_some_and(|f| k >= f) {
                    res.in_flight_written_after_kill += 1;
                }
            } else {
                lost_here += 1;
                if sender.first_after_notice.is_some_and(|f| k >= f) {
                    res.lost_sent_after_reconnect_notice += 1;
                }
            }
        }
        res.lost += lost_here;
        res.directions_with_loss += u64::from(lost_here > 0);
    }
    // After a kill every client lost its socket at the kill; a drain closes sockets over its
    // window on purpose, so there the time counts from each client's own socket close.
    let p99 = match mode {
        Mode::Kill => res.resumed_p99_ms,
        Mode::Drain => res.resume_latency_p99_ms,
    };
    res.target_met = res.lost == 0 && p99.is_some_and(|t| t <= TARGET_P99_MS);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(sent: u64, received: &[u64]) -> Report {
        let mut r = Report {
            sent,
            ..Report::default()
        };
        let shared = Shared::default();
        for n in received {
            r.receive(*n, &shared);
        }
        r
    }

    #[test]
    fn every_signal_gets_exactly_one_fate() {
        // Client 0 sent 0..10: 0-3 before the kill (3 never arrived), 4 after the kill on
        // the dead socket, 5.. after its resume (7 expired, 8 refused, 9 lost).
        let mut a = report(10, &[0, 1, 2, 2]);
        a.first_after_failure = Some(4);
        a.first_after_resume = Some(5);
        a.expired.insert(7);
        a.refused.insert(8);
        let b = report(0, &[0, 1, 2, 5, 6, 6, 4]);
        let r = account(Mode::Kill, &[a, b], 0, 0.0, 1.0, 0.0, 0.0);
        assert_eq!(r.sent, 10);
        assert_eq!(r.received, 6, "0 1 2 4 5 6");
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.reordered, 1, "4 after 6");
        assert_eq!(r.expired, 1);
        assert_eq!(r.refused, 1);
        assert_eq!(r.lost_in_flight_at_kill, 1, "3");
        assert_eq!(r.in_flight_written_after_kill, 0);
        assert_eq!(r.lost, 1, "9");
        assert_eq!(
            r.received + r.expired + r.refused + r.lost + r.lost_in_flight_at_kill,
            r.sent
        );
    }

    #[test]
    fn after_a_drain_nothing_is_in_flight() {
        let mut a = report(4, &[]);
        a.first_after_resume = Some(2);
        a.first_after_notice = Some(1);
        let b = report(0, &[0, 3]);
        let r = account(Mode::Drain, &[a, b], 0, 0.0, 1.0, 0.0, 0.0);
        assert_eq!(r.lost, 2);
        assert_eq!(r.lost_sent_after_reconnect_notice, 2);
        assert_eq!(r.lost_in_flight_at_kill, 0);
        assert_eq!(r.directions_with_loss, 1);
    }

    #[test]
    fn resume_times_rank_over_all_clients() {
        let t: Vec<Duration> = (1..=3).map(|i| Duration::from_millis(i * 100)).collect();
        assert_eq!(rank_ms(&t, 4, 0.5), Some(200.0));
        assert_eq!(rank_ms(&t, 4, 0.99), None, "the 4th never resumed");
        assert_eq!(rank_ms(&t, 3, 1.0), Some(300.0));
    }
}
