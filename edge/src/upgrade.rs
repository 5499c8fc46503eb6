//! The WebSocket handshake (RFC 6455 §4.2) of the `/ws` endpoint.
//!
//! The edge answers it itself rather than through axum's `WebSocketUpgrade`: that one hands
//! out a WebSocket that cannot give its connection back, and an idle socket gives back its
//! WebSocket's buffers by keeping only the connection ([`crate::connection::Socket`]).
//! The checks and the refusals are those of axum's extractor.

use std::future::Future;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt as _;
use futures_util::future::Either;
use hyper::upgrade::{OnUpgrade, Upgraded};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// A valid WebSocket upgrade request, not yet answered.
pub struct Upgrade {
    key: HeaderValue,
    /// The client's `Sec-WebSocket-Protocol` values, joined with commas.
    requested_protocols: String,
    on_upgrade: OnUpgrade,
}

/// Why a request to the WebSocket endpoint is not a WebSocket handshake.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeRefused {
    #[error("WebSocket handshakes use GET over HTTP/1.1")]
    NotGet,
    #[error("the Connection header does not include 'upgrade'")]
    ConnectionHeader,
    #[error("the Upgrade header is not 'websocket'")]
    UpgradeHeader,
    #[error("Sec-WebSocket-Version must be 13")]
    Version,
    #[error("Sec-WebSocket-Key is missing")]
    KeyMissing,
    #[error("this connection cannot be upgraded")]
    NotUpgradable,
}

impl IntoResponse for UpgradeRefused {
    fn into_response(self) -> Response {
        let status = match self {
            UpgradeRefused::NotGet => StatusCode::METHOD_NOT_ALLOWED,
            UpgradeRefused::NotUpgradable => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        };
        (status, format!("{self}\n")).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = UpgradeRefused;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET || parts.version > Version::HTTP_11 {
            return Err(UpgradeRefused::NotGet);
        }
        if !header_has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(UpgradeRefused::ConnectionHeader);
        }
        if !header_is(&parts.headers, header::UPGRADE, "websocket") {
            return Err(UpgradeRefused::UpgradeHeader);
        }
        if !header_is(&parts.headers, header::SEC_WEBSOCKET_VERSION, "13") {
            return Err(UpgradeRefused::Version);
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(UpgradeRefused::KeyMissing)?
            .clone();
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(UpgradeRefused::NotUpgradable)?;
        Ok(Self {
            key,
            requested_protocols: parts
                .headers
                .get_all(header::SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(","),
            on_upgrade,
        })
    }
}

impl Upgrade {
    /// Answers `101 Switching Protocols`, choosing `protocol` when the client asked for it,
    /// and runs `serve` on the connection once hyper hands it over.
    pub fn accept<F, Fut>(self, protocol: &'static str, serve: F) -> Response
    where
        F: FnOnce(Upgraded) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // Once upgraded, the task holds only the session: `then` drops what waited for the
        // switch (and `serve` itself) where an async block would keep them for the task's life.
        let session = self.on_upgrade.then(move |upgraded| match upgraded {
            Ok(upgraded) => Either::Left(serve(upgraded)),
            // Fails only when the client went away before the switch.
            Err(_) => Either::Right(std::future::ready(())),
        });
        tokio::spawn(session);
        let mut response = (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
            ],
        )
            .into_response();
        if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(self.key.as_bytes())) {
            response
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        let offered = self
            .requested_protocols
            .split(',')
            .any(|p| p.trim() == protocol);
        if offered {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(protocol),
            );
        }
        response
    }
}

fn header_is(headers: &HeaderMap, name: HeaderName, value: &str) -> bool {
    headers
        .get(&name)
        .is_some_and(|h| h.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

fn header_has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(&name)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}
