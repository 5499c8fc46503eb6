//! How a connection ends: the WebSocket close codes the edge uses, and the reason recorded
//! for a socket that broke or was cut off.

use crate::metrics::CloseReason;
use crate::outbox::{KickReason, Latch};

/// WebSocket close codes used by the edge (RFC 6455 §7.4.1).
pub mod close_code {
    pub const GOING_AWAY: u16 = 1001;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    /// Client close codes in this range detach the session (the client resumes it later)
    /// instead of ending it.
    pub const RESUME_LATER: std::ops::RangeInclusive<u16> = 4000..=4099;
}

/// Why a kicked session ends.
pub(super) fn kicked(kick: &Latch) -> CloseReason {
    match kick.kick_reason() {
        KickReason::SlowConsumer => CloseReason::SlowConsumer,
        KickReason::Replaced => CloseReason::Replaced,
    }
}

/// Why reading the socket failed.
pub(super) fn read_error(e: tokio_tungstenite::tungstenite::Error) -> CloseReason {
    use tokio_tungstenite::tungstenite::Error as WsError;
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match e {
        WsError::Capacity(_) => CloseReason::FrameTooLarge,
        WsError::Utf8(_) => CloseReason::InvalidUtf8,
        // The connection was lost (a reset), not a client speaking badly.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => CloseReason::Abrupt,
        WsError::Protocol(_) => CloseReason::ProtocolError,
        _ => CloseReason::Abrupt,
    }
}
