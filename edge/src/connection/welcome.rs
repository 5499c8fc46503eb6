//! What a connection is handed at its start (and again after a resume): its resume token
//! and its ICE servers.

use heliograph_coordinator::registry::PeerId;
use serde_json::value::RawValue;

use crate::clock;
use crate::context::EdgeContext;
use crate::protocol;
use crate::session::TokenClaims;

/// A resume token for `peer`, good on every edge of this region.
pub(super) fn issue_token(ctx: &EdgeContext, peer: &PeerId) -> String {
    ctx.tokens.sign(&TokenClaims {
        peer: peer.to_string(),
        region: ctx.region.to_string(),
        cluster: ctx.config.sessions.cluster_name.clone(),
        expires_unix: clock::now_unix() + ctx.config.sessions.token_ttl.as_secs(),
    })
}

/// The `ice_servers` of `welcome`: the configured STUN/TURN URLs, plus TURN credentials for
/// this peer when a TURN secret is configured.
pub(super) fn ice_servers(ctx: &EdgeContext, peer: &PeerId) -> Box<RawValue> {
    let Some(turn) = &ctx.config.turn else {
        return ctx.ice_servers.clone();
    };
    let mut servers: Vec<serde_json::Value> =
        serde_json::from_str(ctx.ice_servers.get()).unwrap_or_default();
    if let Ok(v) = serde_json::to_value(turn.credentials(peer, clock::now_unix())) {
        servers.push(v);
    }
    protocol::raw_json(serde_json::Value::Array(servers).to_string())
}
