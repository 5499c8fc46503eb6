//! One client of the `chaos` scenario: a task that owns its socket, makes the storm's
//! requests one at a time (as the edge serves them) and checks every frame it reads against
//! what it believes.
//!
//! Per room the client keeps whether it believes it is a member and its own view of the
//! other members (`joined.peers`, then each `peer-joined` and `peer-left`). While reading it
//! counts what the protocol rules out: a `peer-joined` for a peer already in its view, a
//! `peer-left` for a peer never announced, and any room event while it is not in the room
//! (after its `left`, before its `joined`, or after a join answered with an error). Every
//! request is numbered (`ref`); one without an answer within [`UNANSWERED_AFTER`] counts as
//! unanswered (a later answer counts as late). A join answered `unavailable` is retried, as
//! docs/PROTOCOL.md advises, while the storm lasts; a leave answered `unavailable` is retried
//! until it is answered `left` or `not-in-room` (its outcome is unknown until then).
//!
//! A client of a signalling pair (quorum loss) takes no part in the storm: it sends numbered
//! signals to its partner while signalling is on and records which arrived, which were
//! refused (`error` with the signal's `ref`) and which expired.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use crate::client::Ws;

/// A request without an answer for this long is unanswered.
pub const UNANSWERED_AFTER: Duration = Duration::from_secs(10);
/// Request `ref`s start here; signal `ref`s (their numbers) stay below.
const REQUEST_REF_BASE: u64 = 1 << 40;
/// Pause before retrying a request answered `unavailable` (random up to twice this).
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Violations described in the results at most, per client.
const SAMPLES: usize = 3;
/// Requests and answers remembered per room, to describe a violation with what led to it.
const HISTORY: usize = 24;

/// What the storm's clients are told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No new requests; unresolved leaves are still retried.
    Quiet,
    /// Join and leave random rooms as fast as answers come.
    Storm,
}

/// What every client task shares with the conductor.
pub struct Control {
    pub phase: watch::Receiver<Phase>,
    /// Pairs send signals while this is set.
    pub signalling: AtomicBool,
    pub done: CancellationToken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Answer {
    #[default]
    None,
    Joined,
    Left,
    Unavailable,
    Error,
}

/// One room as the client sees it.
#[derive(Debug, Default, Clone)]
pub struct RoomView {
    pub member: bool,
    /// Its last answer for this room was `left` (and no `joined` since).
    pub left: bool,
    pub peers: HashSet<String>,
    /// The last answer to a join or leave of this room.
    pub last: Answer,
    /// The last [`HISTORY`] requests and answers for this room, oldest first, each with its
    /// UTC time of day (to line them up with the processes' logs).
    pub history: std::collections::VecDeque<String>,
}

impl RoomView {
    fn record(&mut self, what: String) {
        if self.history.len() >= HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(format!("{} {what}", time_of_day()));
    }

    /// The history as one line.
    pub fn history_line(&self) -> String {
        self.history.iter().cloned().collect::<Vec<_>>().join("; ")
    }
}

/// The UTC time of day, as the processes' logs write it (from one wall-clock reading and the
/// monotonic clock since).
fn time_of_day() -> String {
    static START: std::sync::OnceLock<(Instant, std::time::SystemTime)> =
        std::sync::OnceLock::new();
    let (start, wall) = START.get_or_init(|| (Instant::now(), std::time::SystemTime::now()));
    let now = *wall + start.elapsed();
    let since_midnight = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() % 86_400_000)
        .unwrap_or_default();
    let (h, m, ms) = (
        since_midnight / 3_600_000,
        since_midnight / 60_000 % 60,
        since_midnight % 60_000,
    );
    format!("{h:02}:{m:02}:{:02}.{:03}", ms / 1000, ms % 1000)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Join,
    Leave,
}

#[derive(Debug, Clone)]
pub struct Pending {
    pub kind: Kind,
    pub room: String,
    pub sent: Instant,
    pub reference: u64,
}

/// Counts over a client's life; the conductor takes differences per round.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Counts {
    pub join_requests: u64,
    pub joins: u64,
    /// Joins sent again after an `unavailable` answer.
    pub join_retries: u64,
    /// Of those, the ones answered (with anything).
    pub join_retries_answered: u64,
    pub leave_requests: u64,
    pub leaves: u64,
    pub unavailable_joins: u64,
    pub unavailable_leaves: u64,
    /// Leaves answered `not-in-room` after an `unavailable` (the first attempt had left).
    pub leaves_found_gone: u64,
    /// Leaves answered `not-in-room` although the client had been answered `joined` and
    /// never asked to leave before: it was taken out of the room without being told (a
    /// missing member, found by its own leave).
    pub removed_silently: u64,
    pub other_errors: u64,
    pub unanswered: u64,
    pub late_answers: u64,
    /// Answers to a request that had been answered already.
    pub extra_answers: u64,
    pub duplicate_peer_joined: u64,
    pub peer_left_unannounced: u64,
    pub events_after_left: u64,
    pub events_before_joined: u64,
    /// Room events for a room the client never joined or whose join was refused.
    pub events_outside: u64,
    pub socket_closed: u64,
}

/// A pair client's signals.
#[derive(Debug, Default)]
pub struct Signals {
    pub partner: String,
    pub room: String,
    /// When each number was written.
    pub sent: Vec<Instant>,
    /// Numbers from the partner that arrived (copies counted).
    pub received: HashMap<u64, u32>,
    pub refused: HashSet<u64>,
    pub expired: HashSet<u64>,
    pub error_samples: Vec<String>,
}

/// What the client knows, shared with the conductor.
#[derive(Debug, Default)]
pub struct State {
    pub peer_id: String,
    pub edge: usize,
    pub rooms: HashMap<String, RoomView>,
    pub pending: Option<Pending>,
    /// A request went unanswered; the client sends nothing more until it is answered.
    pub stuck: bool,
    pub counts: Counts,
    /// When each successful storm join was answered.
    pub joined_at: Vec<Instant>,
    /// `(request sent, answer latency)` of every `unavailable` join answer.
    pub unavailable: Vec<(Instant, Duration)>,
    pub samples: Vec<String>,
    pub signals: Option<Signals>,
    /// A join to send again (answered `unavailable` during the storm).
    retry_join: Option<String>,
    /// A leave whose outcome is unknown (answered `unavailable`).
    retry_leave: Option<String>,
    /// The pending request is a join sent again.
    pending_retry: bool,
    next_ref: u64,
}

impl State {
    pub fn new(peer_id: String, edge: usize) -> State {
        State {
            peer_id,
            edge,
            next_ref: REQUEST_REF_BASE,
            ..State::default()
        }
    }

    fn sample(&mut self, what: String) {
        if self.samples.len() < SAMPLES {
            self.samples.push(what);
        }
    }

    /// Whether the client has something it must still resolve (a pending request or a
    /// leave of unknown outcome).
    pub fn busy(&self) -> bool {
        self.pending.is_some() || self.retry_leave.is_some()
    }
}

pub type Shared = Arc<Mutex<State>>;

pub fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Deserialize)]
struct PeerRef<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
}

/// The fields of a server frame this client looks at.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    ty: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    room: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    peers: Option<Vec<PeerRef<'a>>>,
    #[serde(borrow, default)]
    peer: Option<PeerRef<'a>>,
    #[serde(borrow, default)]
    peer_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    code: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "ref", default)]
    reference: Option<u64>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Numbered {
    n: u64,
}

/// What a client does; `rooms` are the storm's rooms (empty for a pair client).
pub struct Role {
    pub rooms: Arc<Vec<String>>,
    pub max_rooms: usize,
    /// Between two signals of a pair client.
    pub signal_period: Duration,
}

/// Runs one client until `control.done`.
pub async fn run(mut ws: Ws, state: Shared, role: Role, control: Arc<Control>) {
    let mut phase = control.phase.clone();
    let mut next_action = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(role.signal_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let pair = lock(&state).signals.is_some();
    loop {
        let (pending_deadline, can_act) = {
            let s = lock(&state);
            let deadline = s
                .pending
                .as_ref()
                .filter(|_| !s.stuck)
                .map(|p| tokio::time::Instant::from_std(p.sent + UNANSWERED_AFTER));
            let storm = *phase.borrow() == Phase::Storm;
            let can =
                s.pending.is_none() && !s.stuck && !pair && (storm || s.retry_leave.is_some());
            (deadline, can)
        };
        tokio::select! {
            biased;
            () = control.done.cancelled() => break,
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => on_frame(&state, &text),
                Some(Ok(Message::Close(_)) | Err(_)) | None => {
                    {
                        let mut s = lock(&state);
                        s.counts.socket_closed += 1;
                        s.sample("the edge closed the socket".into());
                    }
                    control.done.cancelled().await;
                    return;
                }
                Some(Ok(_)) => {}
            },
            r = phase.changed() => {
                if r.is_err() {
                    break;
                }
            }
            () = tokio::time::sleep_until(pending_deadline.unwrap_or_else(far)), if pending_deadline.is_some() => {
                let mut s = lock(&state);
                s.stuck = true;
                s.counts.unanswered += 1;
                if let Some(p) = s.pending.clone() {
                    let what = format!("{:?} of {} unanswered after {UNANSWERED_AFTER:?} (edge {})", p.kind, p.room, s.edge);
                    s.sample(what);
                }
            }
            () = tokio::time::sleep_until(next_action), if can_act => {
                let request = {
                    let storm = *phase.borrow() == Phase::Storm;
                    next_request(&mut lock(&state), &role, storm)
                };
                if let Some(text) = request
                    && ws.send(Message::Text(Utf8Bytes::from(text))).await.is_err()
                {
                    lock(&state).counts.socket_closed += 1;
                    control.done.cancelled().await;
                    return;
                }
                next_action = tokio::time::Instant::now();
            }
            _ = tick.tick(), if pair && control.signalling.load(Ordering::Relaxed) => {
                let frame = {
                    let mut s = lock(&state);
                    let Some(sig) = s.signals.as_mut() else { continue };
                    let n = sig.sent.len() as u64;
                    sig.sent.push(Instant::now());
                    json!({"type": "signal", "room": sig.room, "to": sig.partner, "kind": "custom", "data": {"n": n}, "ref": n}).to_string()
                };
                if ws.send(Message::Text(Utf8Bytes::from(frame))).await.is_err() {
                    lock(&state).counts.socket_closed += 1;
                    control.done.cancelled().await;
                    return;
                }
            }
        }
        // After an `unavailable`, the retry waits a moment (the registry needs one).
        let retrying = {
            let s = lock(&state);
            s.pending.is_none() && (s.retry_join.is_some() || s.retry_leave.is_some())
        };
        if retrying && next_action <= tokio::time::Instant::now() {
            next_action =
                tokio::time::Instant::now() + RETRY_PAUSE.mul_f64(1.0 + rand::random::<f64>());
        }
    }
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: Utf8Bytes::from_static("chaos run done"),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
}

fn far() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(3600)
}

/// The next request: a retry if one is due, else a random join or leave (storm only).
fn next_request(s: &mut State, role: &Role, storm: bool) -> Option<String> {
    let (kind, room) = if let Some(room) = s.retry_leave.clone() {
        (Kind::Leave, room)
    } else if let Some(room) = s.retry_join.take().filter(|_| storm) {
        s.counts.join_retries += 1;
        s.pending_retry = true;
        (Kind::Join, room)
    } else if storm {
        let mine: Vec<&String> = role
            .rooms
            .iter()
            .filter(|r| s.rooms.get(*r).is_some_and(|v| v.member))
            .collect();
        let join = mine.is_empty() || (mine.len() < role.max_rooms && rand::random::<bool>());
        if join {
            let others: Vec<&String> = role
                .rooms
                .iter()
                .filter(|r| !s.rooms.get(*r).is_some_and(|v| v.member))
                .collect();
            (Kind::Join, (*others.choose(&mut rand::rng())?).clone())
        } else {
            (Kind::Leave, (*mine.choose(&mut rand::rng())?).clone())
        }
    } else {
        s.retry_join = None;
        return None;
    };
    let reference = s.next_ref;
    s.next_ref += 1;
    let ty = match kind {
        Kind::Join => {
            s.counts.join_requests += 1;
            "join"
        }
        Kind::Leave => {
            s.counts.leave_requests += 1;
            "leave"
        }
    };
    s.rooms
        .entry(room.clone())
        .or_default()
        .record(format!("{ty} #{}", reference - REQUEST_REF_BASE));
    s.pending = Some(Pending {
        kind,
        room: room.clone(),
        sent: Instant::now(),
        reference,
    });
    Some(json!({"type": ty, "room": room, "ref": reference}).to_string())
}

/// Applies one frame to the client's state, counting what the protocol rules out.
pub fn on_frame(state: &Shared, text: &str) {
    let Ok(f) = serde_json::from_str::<Frame<'_>>(text) else {
        lock(state).sample(format!("unparsable frame: {text:.200}"));
        return;
    };
    let mut s = lock(state);
    let s = &mut *s;
    // Answers to this client's requests.
    if let Some(r) = f.reference.filter(|r| *r >= REQUEST_REF_BASE) {
        answer(s, &f, r);
        return;
    }
    match f.ty.as_ref() {
        "peer-joined" | "peer-left" => {
            let room = f.room.as_deref().unwrap_or_default().to_owned();
            let pending_join = s
                .pending
                .as_ref()
                .is_some_and(|p| p.kind == Kind::Join && p.room == room);
            let view = s.rooms.entry(room.clone()).or_default();
            if !view.member {
                let what = if view.left {
                    s.counts.events_after_left += 1;
                    "after its left"
                } else if pending_join {
                    s.counts.events_before_joined += 1;
                    "before its joined"
                } else {
                    s.counts.events_outside += 1;
                    "while not in the room"
                };
                let line = format!("{} for {room} {what}: {text:.200}", f.ty);
                s.sample(line);
                return;
            }
            let about = f
                .peer
                .as_ref()
                .map(|p| p.id.as_ref())
                .or(f.peer_id.as_deref())
                .unwrap_or_default();
            view.record(format!("{} {about:.8}", f.ty));
            if f.ty == "peer-joined" {
                let id = f.peer.map(|p| p.id.into_owned()).unwrap_or_default();
                if !view.peers.insert(id) {
                    s.counts.duplicate_peer_joined += 1;
                    let line = format!("duplicate peer-joined in {room}: {text:.200}");
                    s.sample(line);
                }
            } else {
                let id = f.peer_id.as_deref().unwrap_or_default();
                if !view.peers.remove(id) {
                    s.counts.peer_left_unannounced += 1;
                    let line =
                        format!("peer-left for a peer never announced in {room}: {text:.200}");
                    s.sample(line);
                }
            }
        }
        "signal" => {
            let n = f
                .data
                .and_then(|d| serde_json::from_str::<Numbered>(d.get()).ok())
                .map(|d| d.n);
            if let (Some(sig), Some(n)) = (s.signals.as_mut(), n) {
                *sig.received.entry(n).or_default() += 1;
            }
        }
        "expired" => {
            if let (Some(sig), Some(n)) = (s.signals.as_mut(), f.reference) {
                sig.expired.insert(n);
            }
        }
        "error" => {
            let code = f.code.as_deref().unwrap_or_default().to_owned();
            match (s.signals.as_mut(), f.reference) {
                (Some(sig), Some(n)) => {
                    sig.refused.insert(n);
                    if sig.error_samples.len() < SAMPLES {
                        sig.error_samples
                            .push(format!("signal {n} refused: {text:.200}"));
                    }
                }
                _ => {
                    s.counts.other_errors += 1;
                    s.sample(format!(
                        "error frame without a request: {code}: {text:.200}"
                    ));
                }
            }
        }
        _ => {}
    }
}

/// An answer (`joined`, `left`, `error`) to request `r`.
fn answer(s: &mut State, f: &Frame<'_>, r: u64) {
    let Some(p) = s.pending.take_if(|p| p.reference == r) else {
        // Requests go one at a time: this one was answered already.
        s.counts.extra_answers += 1;
        let code = f.code.as_deref().unwrap_or_default();
        s.sample(format!("a second answer to request {r}: {} {code}", f.ty));
        return;
    };
    if s.stuck {
        s.stuck = false;
        s.counts.late_answers += 1;
    }
    let was_retry = std::mem::take(&mut s.pending_retry);
    if was_retry {
        s.counts.join_retries_answered += 1;
    }
    let now = Instant::now();
    let code = f.code.as_deref().unwrap_or_default();
    let view = s.rooms.entry(p.room.clone()).or_default();
    let listed: Vec<String> = f
        .peers
        .iter()
        .flatten()
        .map(|p| format!("{:.8}", p.id))
        .collect();
    view.record(format!(
        "#{} answered {} {code} {listed:?} after {} ms",
        r - REQUEST_REF_BASE,
        f.ty,
        (now - p.sent).as_millis()
    ));
    match (p.kind, f.ty.as_ref()) {
        (Kind::Join, "joined") => {
            view.member = true;
            view.left = false;
            view.last = Answer::Joined;
            view.peers = f
                .peers
                .iter()
                .flatten()
                .map(|p| p.id.clone().into_owned())
                .collect();
            s.counts.joins += 1;
            s.joined_at.push(now);
        }
        (Kind::Leave, "left") => {
            view.member = false;
            view.left = true;
            view.last = Answer::Left;
            view.peers.clear();
            s.counts.leaves += 1;
            s.retry_leave = None;
        }
        (Kind::Join, "error") if code == "unavailable" => {
            view.member = false;
            view.last = Answer::Unavailable;
            s.counts.unavailable_joins += 1;
            s.unavailable.push((p.sent, now - p.sent));
            s.retry_join = Some(p.room);
        }
        (Kind::Leave, "error") if code == "unavailable" => {
            // Unknown: retried until `left` or `not-in-room`.
            view.last = Answer::Unavailable;
            s.counts.unavailable_leaves += 1;
            s.retry_leave = Some(p.room);
        }
        (Kind::Leave, "error") if code == "not-in-room" && s.retry_leave.is_some() => {
            view.member = false;
            view.left = true;
            view.last = Answer::Left;
            view.peers.clear();
            s.counts.leaves_found_gone += 1;
            s.retry_leave = None;
        }
        (Kind::Leave, "error") if code == "not-in-room" => {
            view.member = false;
            view.last = Answer::Error;
            view.peers.clear();
            s.counts.removed_silently += 1;
            let line = format!(
                "Leave of {} answered not-in-room after its joined (history: {})",
                p.room,
                view.history_line()
            );
            s.sample(line);
        }
        (kind, ty) => {
            view.last = Answer::Error;
            s.counts.other_errors += 1;
            if kind == Kind::Leave {
                s.retry_leave = None;
            }
            let line = format!("{kind:?} of {} answered {ty} {code}", p.room);
            s.sample(line);
        }
    }
}
