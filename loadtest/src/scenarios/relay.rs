//! `relay`: N clients in N/2 two-peer rooms; in each pair one peer sends ~SDP-sized `offer`
//! signals and the other echoes each back as an `answer`, keeping W offers in flight.
//!
//! Every offer carries its sequence number and send time, so the offerer measures the round
//! trip (two relayed messages) when the answer comes back.
//!
//! The same workload runs in two wires: `heliograph.v1` (`signal` frames) or the Socket.IO
//! signaling dialect (`offer`/`answer` events with `to`, see `sio`), the latter against an
//! edge's `/socket.io/` or the Node.js Socket.IO server of `socketio-node/`. Counters are shared atomics, so a
//! straggling task can be aborted at the drain deadline without losing what it counted.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::{Percentiles, bump, latency_histogram, load, room_prefix};
use crate::client::{Client, Incoming, Target, Ws, source_addr};
use crate::procstat::{self, Pid};
use crate::sio;

/// Frames handled before the batch is flushed to the socket.
const BATCH: usize = 64;
/// Local latency samples kept by a task before they go into the shared histogram.
const SAMPLE_BATCH: usize = 64;
/// Own CPU use, as a fraction of one core, at which the generator is the bottleneck.
pub const GENERATOR_LIMIT_FRACTION: f64 = 0.9;

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// How the clients speak to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Wire {
    /// `heliograph.v1` on the URL given (`ws://host:port/ws`).
    Native,
    /// The Socket.IO dialect, Engine.IO v4 over WebSocket, under the URL given
    /// (`ws://host:port`).
    Socketio,
}

#[derive(Debug, Clone, Serialize)]
pub struct RelaySettings {
    pub url: String,
    pub wire: Wire,
    pub clients: usize,
    pub window: usize,
    pub duration_secs: f64,
    pub warmup_secs: f64,
    pub server_pid: Option<u32>,
    pub payload_bytes: usize,
    pub source_addrs: usize,
    pub connect_concurrency: usize,
    pub drain_timeout_secs: f64,
    /// Clients acknowledge what they receive (`ack` on their next frame); without, the edge
    /// keeps every signal in its replay window until newer ones push it out.
    pub acks: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RelayResults {
    pub pairs: u64,
    pub connect_failures: u64,
    pub connect_secs: f64,
    pub measured_secs: f64,
    /// Answers received during the measured window.
    pub round_trips: u64,
    pub round_trips_per_sec: f64,
    /// Messages delivered by the server during the measured window (offers + answers).
    pub messages_relayed: u64,
    pub messages_per_sec: f64,
    pub rtt: Percentiles,
    pub error_frames: u64,
    pub unexpected_closes: u64,
    pub errors: u64,
    /// Signals sent and received over the whole run, after draining.
    pub sent: u64,
    pub received: u64,
    pub drained: bool,
    pub server_cpu_secs: Option<f64>,
    pub server_cpu_us_per_message: Option<f64>,
    pub server_rss_bytes: Option<u64>,
    pub generator_cpu_secs: f64,
    pub generator_cpu_percent_of_core: f64,
    pub generator_limited: bool,
    /// Round trips completed in each full second of the measured window.
    pub round_trips_per_second_samples: Vec<u64>,
}

struct Shared {
    phase: AtomicU8,
    base: Instant,
    offers_sent: AtomicU64,
    offers_recv: AtomicU64,
    answers_sent: AtomicU64,
    answers_recv: AtomicU64,
    error_frames: AtomicU64,
    unexpected_closes: AtomicU64,
    hist: Mutex<Histogram<u64>>,
}

impl Shared {
    fn phase(&self) -> u8 {
        self.phase.load(Ordering::Relaxed)
    }

    fn relayed(&self) -> u64 {
        load(&self.offers_recv) + load(&self.answers_recv)
    }

    fn error_frame(&self, frame: &Incoming<'_>) {
        let n = self.error_frames.fetch_add(1, Ordering::Relaxed);
        if n < 5 {
            eprintln!(
                "relay: error frame from server: {} {}",
                frame.code.as_deref().unwrap_or("?"),
                frame.message.as_deref().unwrap_or("")
            );
        }
    }

    fn sio_error(&self, payload: &str) {
        let n = self.error_frames.fetch_add(1, Ordering::Relaxed);
        if n < 5 {
            eprintln!("relay: error event from server: {payload:.200}");
        }
    }

    fn record(&self, samples: &mut Vec<u64>) {
        if samples.is_empty() {
            return;
        }
        if let Ok(mut h) = self.hist.lock() {
            for s in samples.iter() {
                h.saturating_record(*s);
            }
        }
        samples.clear();
    }
}

#[derive(Deserialize)]
struct Stamp {
    s: u64,
    t: u64,
}

struct Pair {
    offerer: Client,
    answerer: Client,
    room: String,
}

async fn connect_pair(
    target: &Target,
    index: usize,
    room: String,
    sources: usize,
    wire: Wire,
) -> Result<Pair> {
    let (a, b) = (
        source_addr(target, 2 * index, sources),
        source_addr(target, 2 * index + 1, sources),
    );
    let (offerer, answerer) = match wire {
        Wire::Native => {
            let mut offerer = Client::connect(target, a).await?;
            let mut answerer = Client::connect(target, b).await?;
            offerer.join(&room).await?;
            answerer.join(&room).await?;
            (offerer, answerer)
        }
        Wire::Socketio => {
            let mut offerer = sio::connect(target, a).await?;
            let mut answerer = sio::connect(target, b).await?;
            sio::join(&mut offerer, &room).await?;
            sio::join(&mut answerer, &room).await?;
            (offerer, answerer)
        }
    };
    Ok(Pair {
        offerer,
        answerer,
        room,
    })
}

pub async fn run(settings: &RelaySettings) -> Result<RelayResults> {
    if settings.clients < 2 || !settings.clients.is_multiple_of(2) {
        bail!("--clients must be an even number ≥ 2");
    }
    if settings.window == 0 {
        bail!("--window must be ≥ 1");
    }
    let limit = super::raise_nofile_limit();
    super::check_fd_budget(settings.clients as u64, limit, false)?;
    let target = Target::resolve(&settings.url).await?;
    let prefix = room_prefix("relay");
    let pairs_wanted = settings.clients / 2;

    let connect_started = Instant::now();
    let connected: Vec<Result<Pair>> = futures_util::stream::iter(0..pairs_wanted)
        .map(|i| {
            connect_pair(
                &target,
                i,
                format!("{prefix}-{i}"),
                settings.source_addrs,
                settings.wire,
            )
        })
        .buffer_unordered(settings.connect_concurrency.max(1))
        .collect()
        .await;
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let mut pairs = Vec::with_capacity(pairs_wanted);
    let mut connect_failures = 0u64;
    for p in connected {
        match p {
            Ok(p) => pairs.push(p),
            Err(e) => {
                if connect_failures < 5 {
                    eprintln!("relay: a pair failed to connect: {e:#}");
                }
                connect_failures += 1;
            }
        }
    }
    if pairs.is_empty() {
        bail!("no pair could connect to {}", settings.url);
    }
    // Progress on stderr: a run that stalls shows where.
    eprintln!(
        "relay: {} pairs connected in {connect_secs:.2} s; warm-up, then {} s measured",
        pairs.len(),
        settings.duration_secs
    );

    let shared = Arc::new(Shared {
        phase: AtomicU8::new(WARMUP),
        base: Instant::now(),
        offers_sent: AtomicU64::new(0),
        offers_recv: AtomicU64::new(0),
        answers_sent: AtomicU64::new(0),
        answers_recv: AtomicU64::new(0),
        error_frames: AtomicU64::new(0),
        unexpected_closes: AtomicU64::new(0),
        hist: Mutex::new(latency_histogram()?),
    });
    // The data object is ~payload_bytes long: fixed fields take about 40 bytes.
    let pad: Arc<str> = "x".repeat(settings.payload_bytes.saturating_sub(40)).into();
    let pair_count = pairs.len() as u64;
    let mut offerers = JoinSet::new();
    let mut answerers = JoinSet::new();
    for pair in pairs {
        let frames = Frames::new(settings.wire, &pair, settings.acks);
        offerers.spawn(offerer(
            pair.offerer.ws,
            pair.offerer.last_seq,
            frames.clone(),
            pad.clone(),
            settings.window,
            shared.clone(),
        ));
        answerers.spawn(answerer(
            pair.answerer.ws,
            pair.answerer.last_seq,
            frames,
            shared.clone(),
        ));
    }

    tokio::time::sleep(Duration::from_secs_f64(settings.warmup_secs)).await;

    let server = settings.server_pid.map(Pid::Other);
    let server_cpu_start = server.map(procstat::cpu_time).transpose()?;
    let own_cpu_start = procstat::cpu_time(Pid::Me)?;
    let rt_start = load(&shared.answers_recv);
    let relayed_start = shared.relayed();
    let window_start = Instant::now();
    shared.phase.store(MEASURE, Ordering::Relaxed);

    let mut samples = Vec::new();
    let mut last = rt_start;
    let whole_seconds = settings.duration_secs.floor() as u64;
    for s in 1..=whole_seconds {
        tokio::time::sleep_until((window_start + Duration::from_secs(s)).into()).await;
        let now = load(&shared.answers_recv);
        samples.push(now - last);
        last = now;
    }
    tokio::time::sleep_until(
        (window_start + Duration::from_secs_f64(settings.duration_secs)).into(),
    )
    .await;

    shared.phase.store(STOP, Ordering::Relaxed);
    let measured_secs = window_start.elapsed().as_secs_f64();
    let round_trips = load(&shared.answers_recv) - rt_start;
    let messages_relayed = shared.relayed() - relayed_start;
    let own_cpu = procstat::cpu_time(Pid::Me)?.saturating_sub(own_cpu_start);
    let server_cpu = match (server, server_cpu_start) {
        (Some(pid), Some(start)) => Some(procstat::cpu_time(pid)?.saturating_sub(start)),
        _ => None,
    };
    let server_rss_bytes = server.map(procstat::rss_bytes).transpose()?;

    eprintln!("relay: measured; waiting for the signals in flight");
    // Let in-flight offers come back so that sent and received can be compared.
    let drain = Duration::from_secs_f64(settings.drain_timeout_secs);
    let drained = tokio::time::timeout(drain, async {
        while offerers.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if !drained {
        eprintln!("relay: in-flight signals did not all return within {drain:?}");
        offerers.shutdown().await;
    }
    answerers.shutdown().await;

    let rtt = shared
        .hist
        .lock()
        .map(|h| Percentiles::from_histogram(&h))
        .map_err(|_| anyhow!("latency histogram poisoned"))?;
    let sent = load(&shared.offers_sent) + load(&shared.answers_sent);
    let received = load(&shared.offers_recv) + load(&shared.answers_recv);
    let error_frames = load(&shared.error_frames);
    let unexpected_closes = load(&shared.unexpected_closes);
    let generator_cpu_secs = own_cpu.as_secs_f64();
    let generator_fraction = generator_cpu_secs / measured_secs;
    let server_cpu_secs = server_cpu.map(|d| d.as_secs_f64());
    Ok(RelayResults {
        pairs: pair_count,
        connect_failures,
        connect_secs,
        measured_secs,
        round_trips,
        round_trips_per_sec: round_trips as f64 / measured_secs,
        messages_relayed,
        messages_per_sec: messages_relayed as f64 / measured_secs,
        rtt,
        error_frames,
        unexpected_closes,
        errors: error_frames + unexpected_closes + connect_failures,
        sent,
        received,
        drained,
        server_cpu_secs,
        server_cpu_us_per_message: server_cpu_secs
            .filter(|_| messages_relayed > 0)
            .map(|s| s * 1e6 / messages_relayed as f64),
        server_rss_bytes,
        generator_cpu_secs,
        generator_cpu_percent_of_core: generator_fraction * 100.0,
        generator_limited: generator_fraction >= GENERATOR_LIMIT_FRACTION,
        round_trips_per_second_samples: samples,
    })
}

fn now_nanos(shared: &Shared) -> u64 {
    shared.base.elapsed().as_nanos() as u64
}

/// Starts a client frame from `prefix` (`{"type":...`), with `ack` first when the server
/// numbers its frames: like the SDK, the client tells what it has read.
fn start_frame(s: &mut String, prefix: &str, ack: u64) {
    if ack > 0 {
        s.push_str("{\"ack\":");
        s.push_str(&ack.to_string());
        s.push(',');
        s.push_str(&prefix[1..]);
    } else {
        s.push_str(prefix);
    }
}

/// How one pair's frames are written, in its wire.
#[derive(Clone)]
struct Frames {
    wire: Wire,
    /// Whether frames carry `ack` (native only).
    acks: bool,
    /// An offer up to its sequence number.
    offer_prefix: Arc<str>,
    /// An answer up to the echoed data.
    answer_prefix: Arc<str>,
    /// What closes an offer after its padding, and an answer after its data.
    offer_suffix: &'static str,
    answer_suffix: &'static str,
}

impl Frames {
    fn new(wire: Wire, pair: &Pair, acks: bool) -> Self {
        let (to_answerer, to_offerer) = (&pair.answerer.peer_id, &pair.offerer.peer_id);
        match wire {
            Wire::Native => Frames {
                wire,
                acks,
                offer_prefix: format!(
                    r#"{{"type":"signal","room":"{}","to":"{to_answerer}","kind":"offer","data":{{"s":"#,
                    pair.room
                )
                .into(),
                answer_prefix: format!(
                    r#"{{"type":"signal","room":"{}","to":"{to_offerer}","kind":"answer","data":"#,
                    pair.room
                )
                .into(),
                offer_suffix: r#""}}"#,
                answer_suffix: "}",
            },
            // The payload's stamp travels as the offer's own fields; the answer carries the
            // offer's payload whole under `d`, so both directions carry the same bytes.
            Wire::Socketio => Frames {
                wire,
                acks: false,
                offer_prefix: format!(r#"42["offer",{{"to":"{to_answerer}","s":"#).into(),
                answer_prefix: format!(r#"42["answer",{{"to":"{to_offerer}","d":"#).into(),
                offer_suffix: r#""}]"#,
                answer_suffix: "}]",
            },
        }
    }
}

fn offer_frame(frames: &Frames, ack: u64, seq: u64, nanos: u64, pad: &str) -> Message {
    let prefix = &frames.offer_prefix;
    let mut s = String::with_capacity(prefix.len() + pad.len() + 72);
    start_frame(&mut s, prefix, if frames.acks { ack } else { 0 });
    s.push_str(&format!(r#"{seq},"t":{nanos},"p":""#));
    s.push_str(pad);
    s.push_str(frames.offer_suffix);
    Message::Text(Utf8Bytes::from(s))
}

/// The stamp of an answer in the Socket.IO dialect: the offer's payload, under `d`.
#[derive(Deserialize)]
struct SioAnswer {
    d: Stamp,
}

enum Event {
    /// An answer came back with this round-trip time in microseconds.
    Answer(u64),
    /// An Engine.IO ping, to be answered.
    Ping,
    Other,
    Closed,
}

fn classify_offerer(
    msg: Option<Result<Message, impl std::fmt::Debug>>,
    shared: &Shared,
    last_seq: &mut u64,
    wire: Wire,
) -> Event {
    let text = match msg {
        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Event::Closed,
        Some(Ok(Message::Text(t))) => t,
        Some(Ok(_)) => return Event::Other,
    };
    if wire == Wire::Socketio {
        return match sio::parse(&text) {
            sio::Packet::Ping => Event::Ping,
            sio::Packet::Event(name, arg) if name == "answer" => {
                match serde_json::from_str::<SioAnswer>(arg.get()) {
                    Ok(a) => Event::Answer(now_nanos(shared).saturating_sub(a.d.t) / 1000),
                    Err(_) => Event::Other,
                }
            }
            sio::Packet::Event(name, arg) if name == "error" => {
                shared.sio_error(arg.get());
                Event::Other
            }
            _ => Event::Other,
        };
    }
    let Ok(frame) = Incoming::parse(&text) else {
        return Event::Other;
    };
    *last_seq = (*last_seq).max(frame.seq.unwrap_or(0));
    match (&*frame.ty, frame.kind.as_deref(), frame.data) {
        ("signal", Some("answer"), Some(data)) => match serde_json::from_str::<Stamp>(data.get()) {
            Ok(stamp) => {
                let _ = stamp.s;
                Event::Answer(now_nanos(shared).saturating_sub(stamp.t) / 1000)
            }
            Err(_) => Event::Other,
        },
        ("error", _, _) => {
            shared.error_frame(&frame);
            Event::Other
        }
        _ => Event::Other,
    }
}

async fn offerer(
    mut ws: Ws,
    mut last_seq: u64,
    frames: Frames,
    pad: Arc<str>,
    window: usize,
    shared: Arc<Shared>,
) {
    let mut seq = 0u64;
    let mut inflight = 0usize;
    let mut samples = Vec::with_capacity(SAMPLE_BATCH);
    for _ in 0..window {
        seq += 1;
        if ws
            .feed(offer_frame(
                &frames,
                last_seq,
                seq,
                now_nanos(&shared),
                &pad,
            ))
            .await
            .is_err()
        {
            bump(&shared.unexpected_closes);
            return;
        }
        bump(&shared.offers_sent);
        inflight += 1;
    }
    if ws.flush().await.is_err() {
        bump(&shared.unexpected_closes);
        return;
    }
    while !(inflight == 0 && shared.phase() == STOP) {
        let mut next = Some(ws.next().await);
        let mut handled = 0;
        while let Some(msg) = next {
            match classify_offerer(msg, &shared, &mut last_seq, frames.wire) {
                Event::Ping => {
                    if ws.feed(pong()).await.is_err() {
                        bump(&shared.unexpected_closes);
                        return;
                    }
                }
                Event::Closed => {
                    bump(&shared.unexpected_closes);
                    shared.record(&mut samples);
                    return;
                }
                Event::Other => {}
                Event::Answer(rtt_us) => {
                    inflight = inflight.saturating_sub(1);
                    bump(&shared.answers_recv);
                    let phase = shared.phase();
                    if phase == MEASURE {
                        samples.push(rtt_us);
                        if samples.len() >= SAMPLE_BATCH {
                            shared.record(&mut samples);
                        }
                    }
                    if phase != STOP {
                        seq += 1;
                        if ws
                            .feed(offer_frame(
                                &frames,
                                last_seq,
                                seq,
                                now_nanos(&shared),
                                &pad,
                            ))
                            .await
                            .is_err()
                        {
                            bump(&shared.unexpected_closes);
                            return;
                        }
                        bump(&shared.offers_sent);
                        inflight += 1;
                    }
                }
            }
            handled += 1;
            if handled >= BATCH {
                break;
            }
            next = ws.next().now_or_never();
        }
        if ws.flush().await.is_err() {
            bump(&shared.unexpected_closes);
            break;
        }
    }
    shared.record(&mut samples);
}

fn pong() -> Message {
    Message::Text(Utf8Bytes::from_static(sio::PONG))
}

/// The answer to an offer whose data (native) or payload (Socket.IO) is `data`.
fn answer_frame(frames: &Frames, ack: u64, data: &str) -> Message {
    let prefix = &frames.answer_prefix;
    let mut s = String::with_capacity(prefix.len() + data.len() + 32);
    start_frame(&mut s, prefix, if frames.acks { ack } else { 0 });
    s.push_str(data);
    s.push_str(frames.answer_suffix);
    Message::Text(Utf8Bytes::from(s))
}

async fn answerer(mut ws: Ws, mut last_seq: u64, frames: Frames, shared: Arc<Shared>) {
    loop {
        let mut next = Some(ws.next().await);
        let mut handled = 0;
        while let Some(msg) = next {
            let text = match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                    bump(&shared.unexpected_closes);
                    return;
                }
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(_)) => Utf8Bytes::from_static("{}"),
            };
            // The frame to send back, if this one was an offer (or a ping).
            let reply = if frames.wire == Wire::Socketio {
                match sio::parse(&text) {
                    sio::Packet::Ping => Some(pong()),
                    sio::Packet::Event(name, arg) if name == "offer" => {
                        bump(&shared.offers_recv);
                        Some(answer_frame(&frames, 0, arg.get()))
                    }
                    sio::Packet::Event(name, arg) if name == "error" => {
                        shared.sio_error(arg.get());
                        None
                    }
                    _ => None,
                }
            } else if let Ok(frame) = Incoming::parse(&text) {
                last_seq = last_seq.max(frame.seq.unwrap_or(0));
                match (&*frame.ty, frame.kind.as_deref(), frame.data) {
                    ("signal", Some("offer"), Some(data)) => {
                        bump(&shared.offers_recv);
                        Some(answer_frame(&frames, last_seq, data.get()))
                    }
                    ("error", _, _) => {
                        shared.error_frame(&frame);
                        None
                    }
                    _ => None,
                }
            } else {
                None
            };
            if let Some(reply) = reply {
                let is_answer = reply.len() > 1;
                if ws.feed(reply).await.is_err() {
                    bump(&shared.unexpected_closes);
                    return;
                }
                if is_answer {
                    bump(&shared.answers_sent);
                }
            }
            handled += 1;
            if handled >= BATCH {
                break;
            }
            next = ws.next().now_or_never();
        }
        if ws.flush().await.is_err() {
            bump(&shared.unexpected_closes);
            return;
        }
    }
}
