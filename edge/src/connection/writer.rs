//! The writing side of one socket: it owns the socket and the session's sequence numbers,
//! numbers every frame as it is written, and turns a failed, stalled or interrupted write
//! into the reason the session ends.
//!
//! Writes are built in place: each method returns the write's future rather than being an
//! async fn, so that a frame or a socket is never stored twice in every session's task.

use std::future::Future;
use std::time::Instant;

use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use super::close::{self, close_code};
use super::socket::Socket;
use crate::context::EdgeContext;
use crate::metrics::{CloseReason, Ingress};
use crate::outbox::{Latch, Outgoing, Receiver};
use crate::session::sequencer::Sequencer;

/// Frames written to the socket in one go before flushing.
const WRITE_BATCH: usize = 64;
/// How long the close frame may take to go out.
const CLOSE_WRITE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

pub(super) struct Writer {
    pub(super) socket: Box<Socket>,
    pub(super) seq: Sequencer,
}

impl Writer {
    pub(super) fn new(socket: Box<Socket>, seq: Sequencer) -> Self {
        Self { socket, seq }
    }

    /// Numbers and writes `frames`, then flushes.
    pub(super) fn send<'a>(
        &'a mut self,
        frames: Vec<Outgoing>,
        kicked: &'a Latch,
        ctx: &'a EdgeContext,
    ) -> impl Future<Output = Result<(), CloseReason>> + 'a {
        guarded(
            move || send_all(&mut self.socket, frames, &mut self.seq, ctx),
            kicked,
            ctx,
        )
    }

    /// Writes what the outbox holds now, then `replies`: a reply never overtakes a room
    /// event queued before it (a `left` after the room's last notice, a `joined` after the
    /// changes it already includes).
    pub(super) fn send_after_queued<'a>(
        &'a mut self,
        replies: Vec<Outgoing>,
        rx: &'a mut Receiver<Outgoing>,
        kicked: &'a Latch,
        ctx: &'a EdgeContext,
    ) -> impl Future<Output = Result<(), CloseReason>> + 'a {
        let mut frames = Vec::new();
        while let Ok(out) = rx.try_recv() {
            frames.push(out);
        }
        frames.extend(replies);
        self.send(frames, kicked, ctx)
    }

    /// Writes `first` and whatever else is already queued (up to a batch), then flushes once.
    pub(super) fn send_batch<'a>(
        &'a mut self,
        first: Outgoing,
        rx: &'a mut Receiver<Outgoing>,
        kicked: &'a Latch,
        ctx: &'a EdgeContext,
    ) -> impl Future<Output = Result<(), CloseReason>> + 'a {
        guarded(
            move || write_batch(&mut self.socket, first, rx, &mut self.seq, ctx),
            kicked,
            ctx,
        )
    }

    /// Writes the session's `welcome`, which is numbered but not kept for a replay (see
    /// [`Sequencer::stamp_welcome`]).
    pub(super) fn welcome<'a>(
        &'a mut self,
        text: &str,
        kicked: &'a Latch,
        ctx: &'a EdgeContext,
    ) -> impl Future<Output = Result<(), CloseReason>> + 'a {
        ctx.metrics.sent(Ingress::Ws, "welcome");
        let text = self.seq.stamp_welcome(text);
        let socket = &mut self.socket;
        guarded(
            move || async move {
                socket.feed(Message::Text(text)).await?;
                socket.flush().await
            },
            kicked,
            ctx,
        )
    }

    /// Writes frames that carry their `seq` already (a resumed session's replay).
    pub(super) fn replay<'a>(
        &'a mut self,
        frames: &'a [String],
        kicked: &'a Latch,
        ctx: &'a EdgeContext,
    ) -> impl Future<Output = Result<(), CloseReason>> + 'a {
        guarded(
            move || write_stamped(&mut self.socket, frames, ctx),
            kicked,
            ctx,
        )
    }

    /// A WebSocket ping (keepalive).
    pub(super) fn ping<'a>(
        &'a mut self,
        kicked: &'a Latch,
        ctx: &'a EdgeContext,
    ) -> impl Future<Output = Result<(), CloseReason>> + 'a {
        guarded(move || self.socket.ping(), kicked, ctx)
    }

    /// Sends the close frame that matches `reason`, if the socket can still take one.
    pub(super) async fn close(&mut self, reason: CloseReason) {
        let frame = match reason {
            CloseReason::Shutdown => Some((close_code::GOING_AWAY, "server shutting down")),
            CloseReason::SlowConsumer => Some((close_code::POLICY, "slow consumer: outbox full")),
            CloseReason::Replaced => Some((
                close_code::POLICY,
                "replaced: the session resumed on another connection",
            )),
            CloseReason::FrameTooLarge => Some((close_code::TOO_BIG, "frame too large")),
            CloseReason::InvalidUtf8 => Some((close_code::INVALID_PAYLOAD, "invalid UTF-8")),
            CloseReason::ProtocolError => None,
            CloseReason::KeepaliveTimeout => Some((close_code::GOING_AWAY, "keepalive timeout")),
            CloseReason::ClientClose | CloseReason::ClientDetach | CloseReason::Abrupt => None,
        };
        let socket = &mut self.socket;
        let send = async {
            if let Some((code, reason)) = frame {
                let _ = socket
                    .send(Message::Close(Some(CloseFrame {
                        code: code.into(),
                        reason: Utf8Bytes::from_static(reason),
                    })))
                    .await;
            } else {
                // Flushes the automatic reply to a client's close frame.
                let _ = socket.flush().await;
            }
        };
        let _ = tokio::time::timeout(CLOSE_WRITE_WAIT, send).await;
    }
}

/// Runs a socket write, but gives up when the client is kicked, the edge stops for good, or
/// the write stalls past `--write-timeout-ms`: a client that stops reading blocks its writes,
/// and must not keep its session (or the memory queued for it) alive.
///
/// Takes the write as a function making it: the future is then built in place, where a future
/// passed by value would be stored twice in every session's task.
async fn guarded<W: Future<Output = Result<(), WsError>>>(
    write: impl FnOnce() -> W,
    kicked: &Latch,
    ctx: &EdgeContext,
) -> Result<(), CloseReason> {
    let mut write = std::pin::pin!(write());
    // Most writes complete at once (there is room in the socket buffer): they need no timer
    // and no waiters, which would cost more than the write.
    if let Some(r) = futures_util::FutureExt::now_or_never(write.as_mut()) {
        return r.map_err(|_| CloseReason::Abrupt);
    }
    // Boxed: the timer and waiters are rare, and would otherwise size every session's task.
    Box::pin(async move {
        tokio::select! {
            r = write => r.map_err(|_| CloseReason::Abrupt),
            () = kicked.raised() => Err(close::kicked(kicked)),
            () = ctx.shutdown.stopped() => Err(CloseReason::Shutdown),
            () = tokio::time::sleep(ctx.config.write_timeout) => Err(CloseReason::SlowConsumer),
        }
    })
    .await
}

async fn send_all(
    socket: &mut Socket,
    frames: Vec<Outgoing>,
    seq: &mut Sequencer,
    ctx: &EdgeContext,
) -> Result<(), WsError> {
    if frames.is_empty() {
        return Ok(());
    }
    let mut batch = Batch::new(ctx);
    for out in frames {
        feed(socket, out, seq, &mut batch, ctx).await?;
    }
    socket.flush().await
}

/// What the frames written in one go share: the time they are written, read once for all
/// their signals (whose relay latency is measured to it), and the count of signals among
/// them, added to `messages_sent` once when the batch ends, however it ends (a relayed
/// signal is the one frame counted for each message, and a counter's update costs more than
/// the rest of its bookkeeping).
struct Batch<'a> {
    now: Option<Instant>,
    signals: u64,
    ctx: &'a EdgeContext,
}

impl<'a> Batch<'a> {
    fn new(ctx: &'a EdgeContext) -> Self {
        Self {
            now: None,
            signals: 0,
            ctx,
        }
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if self.signals > 0 {
            self.ctx.metrics.sent_signals(Ingress::Ws, self.signals);
        }
    }
}

/// Numbers a frame and queues it on the socket. Not an async fn: the numbering is done at
/// once, and what is awaited is only the socket's own `feed`.
fn feed<'s>(
    socket: &'s mut Socket,
    out: Outgoing,
    seq: &mut Sequencer,
    batch: &mut Batch<'_>,
    ctx: &EdgeContext,
) -> impl Future<Output = Result<(), WsError>> + 's {
    if out.kind == "signal" {
        batch.signals += 1;
    } else {
        ctx.metrics.sent(Ingress::Ws, out.kind);
    }
    if let Some((at, path)) = out
        .signal
        .as_ref()
        .and_then(|m| Some((m.relayed_at?, m.path)))
    {
        let now = *batch.now.get_or_insert_with(Instant::now);
        ctx.metrics
            .relay(path)
            .record(now.saturating_duration_since(at).as_secs_f64());
    }
    let text = seq.stamp(&out.text);
    socket.feed(Message::Text(text))
}

async fn write_stamped(
    socket: &mut Socket,
    frames: &[String],
    ctx: &EdgeContext,
) -> Result<(), WsError> {
    if frames.is_empty() {
        return Ok(());
    }
    for frame in frames {
        ctx.metrics
            .sent(Ingress::Ws, crate::metrics::sent_kind_of(frame));
        socket.feed(Message::Text(frame.clone().into())).await?;
    }
    socket.flush().await
}

async fn write_batch(
    socket: &mut Socket,
    first: Outgoing,
    rx: &mut Receiver<Outgoing>,
    seq: &mut Sequencer,
    ctx: &EdgeContext,
) -> Result<(), WsError> {
    let mut batch = Batch::new(ctx);
    feed(socket, first, seq, &mut batch, ctx).await?;
    for _ in 1..WRITE_BATCH {
        match rx.try_recv() {
            Ok(out) => feed(socket, out, seq, &mut batch, ctx).await?,
            Err(_) => break,
        }
    }
    socket.flush().await
}
