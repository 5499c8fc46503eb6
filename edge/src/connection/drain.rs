//! A connection's part in a drain: when it is told `reconnect` and closed, and what it still
//! serves after its close.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::socket::Socket;

use super::close::close_code;
use super::requests::handle_text;
use super::step::{Caller, SessionState};
use crate::context::EdgeContext;
use crate::outbox::Outgoing;
use crate::protocol::{self, ClientMessage, DecodeLimits, ServerMessage};

/// A draining socket is closed at least this long after its `reconnect` notice: what the
/// client sent before it read the notice still arrives and is served.
const DRAIN_NOTICE_FLOOR: Duration = Duration::from_secs(1);
/// How long a draining socket waits for the client's reply to its close.
const DRAIN_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The edge started draining: this socket closes at a random point of the drain window, so
/// that its clients do not all resume elsewhere at once. Returns the `reconnect` notice and
/// when to close. The floor lets what the client sent before it read the notice arrive; both
/// fit in the shutdown grace with time left to close and store.
pub(super) fn schedule(ctx: &EdgeContext) -> (Outgoing, Duration) {
    let budget = ctx
        .config
        .shutdown_grace
        .saturating_sub(DRAIN_CLOSE_WAIT * 2);
    let floor = DRAIN_NOTICE_FLOOR.min(budget / 2);
    let window = ctx
        .config
        .sessions
        .drain_window
        .min(budget.saturating_sub(floor));
    let after = floor + window.mul_f64(rand::random::<f64>());
    ctx.metrics.drain_notices.increment(1);
    let notice = Outgoing::new(
        "reconnect",
        protocol::encode(&ServerMessage::Reconnect {
            after_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
        }),
    );
    (notice, after)
}

/// Drain: sends the close (1001), then reads until the client's close reply (at most
/// [`DRAIN_CLOSE_WAIT`]), relaying the signals the client sent before it saw the close.
/// Anything else it sent then is dropped: it resumes elsewhere and asks again.
pub(super) async fn serve_until_closed(
    socket: &mut Socket,
    caller: &Caller<'_>,
    limits: &DecodeLimits,
    ctx: &Arc<EdgeContext>,
    state: &mut SessionState,
) {
    let frame = CloseFrame {
        code: close_code::GOING_AWAY.into(),
        reason: Utf8Bytes::from_static("edge draining: resume elsewhere"),
    };
    let sent = tokio::time::timeout(DRAIN_CLOSE_WAIT, socket.send(Message::Close(Some(frame))));
    if !matches!(sent.await, Ok(Ok(()))) {
        return;
    }
    let deadline = tokio::time::Instant::now() + DRAIN_CLOSE_WAIT;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, socket.recv()).await {
        let Message::Text(text) = msg else {
            if matches!(msg, Message::Close(_)) {
                return;
            }
            continue;
        };
        let is_signal = protocol::decode(&text, limits)
            .is_ok_and(|r| matches!(r.message, ClientMessage::Signal { .. }));
        if is_signal {
            let caller = Caller {
                received_at: Instant::now(),
                ..*caller
            };
            // Its replies (errors) cannot be sent after the close.
            let _ = handle_text(&text, &caller, limits, ctx, state);
        }
    }
}
