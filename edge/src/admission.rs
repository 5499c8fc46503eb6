//! Who may open a connection, on either ingress (the native WebSocket, Socket.IO): not while
//! the edge drains, only from allowed origins, and within the connection limits. Refusals are
//! counted by reason.

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, StatusCode, header};

use crate::client_addr;
use crate::config::ClientAddresses;
use crate::context::EdgeContext;
use crate::limits::{ConnectionRefusal, ConnectionSlot};

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("draining")]
    Draining,
    #[error("origin not allowed")]
    Origin,
    #[error("edge at its connection limit")]
    EdgeFull,
    #[error("too many connections from this address")]
    TooManyFromAddress,
}

impl Refused {
    /// The HTTP answer to a refused upgrade.
    pub fn status(self) -> StatusCode {
        match self {
            Self::Draining | Self::EdgeFull => StatusCode::SERVICE_UNAVAILABLE,
            Self::Origin => StatusCode::FORBIDDEN,
            Self::TooManyFromAddress => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn metric(self) -> &'static str {
        match self {
            Self::Draining => "draining",
            Self::Origin => "origin",
            Self::EdgeFull => "edge_full",
            Self::TooManyFromAddress => "address_limit",
        }
    }
}

/// Admits a connection from `peer` (the TCP peer, or the PROXY header's source) with these
/// request headers: its place in the connection limits, held until the session ends.
pub fn admit(
    ctx: &EdgeContext,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<ConnectionSlot, Refused> {
    let refused = |r: Refused| {
        ctx.metrics.refused(r.metric());
        r
    };
    let client = client_ip(&ctx.config.client_addresses, peer.ip(), headers);
    if ctx.shutdown.is_draining() || ctx.connection_tasks.is_closed() {
        return Err(refused(Refused::Draining));
    }
    if !origin_allowed(&ctx.config.allowed_origins, headers) {
        return Err(refused(Refused::Origin));
    }
    ctx.connections.acquire(client).map_err(|e| {
        let r = match e {
            ConnectionRefusal::EdgeFull => Refused::EdgeFull,
            ConnectionRefusal::TooManyFromAddress => Refused::TooManyFromAddress,
        };
        tracing::debug!(%client, %peer, reason = %r, "connection refused");
        refused(r)
    })
}

/// The address limits and logs count: the peer's, or the one a trusted proxy forwarded.
fn client_ip(config: &ClientAddresses, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let values = headers
        .get_all(config.header.name())
        .iter()
        // A value that is not text cannot be read: it ends the chain like any garbage.
        .map(|v| v.to_str().unwrap_or(""));
    client_addr::client_ip(peer, &config.trusted, config.header, values)
}

/// Browsers always send `Origin`; other clients may not, and are not subject to the list.
fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(origin) => allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)),
    }
}
