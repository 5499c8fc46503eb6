//! The WebSocket handshake (RFC 6455 §4.2) of the `/ws` endpoint.
//!
//! The edge answers it itself rather than through axum's `WebSocketUpgrade`: that one hands
//! out a WebSocket that cannot give its connection back, and an idle socket gives back its
//! WebSocket's buffers by keeping only the connection ([`crate::connection::Socket`]).
//! The checks and the refusals are those of axum's extractor.
//!
//! A handshake that arrives whole in a connection's first read is answered before hyper sees
//! the connection ([`direct`], from [`crate::front`]); one that hyper parsed (it came in
//! pieces, or after other requests on the connection) is answered by [`Upgrade`] through the
//! router, with the same checks.

use std::future::Future;

use axum::extract::FromRequestParts;
use axum::http::Response as HttpResponse;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt as _;
use futures_util::future::Either;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::prefixed::Prefixed;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::handshake::server::write_response;

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
        let key = check_headers(&parts.headers)?.clone();
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

/// The handshake's headers checked; the client's key.
fn check_headers(headers: &HeaderMap) -> Result<&HeaderValue, UpgradeRefused> {
    if !header_has_token(headers, header::CONNECTION, "upgrade") {
        return Err(UpgradeRefused::ConnectionHeader);
    }
    if !header_is(headers, header::UPGRADE, "websocket") {
        return Err(UpgradeRefused::UpgradeHeader);
    }
    if !header_is(headers, header::SEC_WEBSOCKET_VERSION, "13") {
        return Err(UpgradeRefused::Version);
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(UpgradeRefused::KeyMissing)
}

/// Whether the client offered `protocol` in its `Sec-WebSocket-Protocol` values.
fn offered<'a>(mut values: impl Iterator<Item = &'a str>, protocol: &str) -> bool {
    values.any(|v| v.split(',').any(|p| p.trim() == protocol))
}

/// A complete, valid handshake for `path`, read from the start of a connection before any
/// HTTP machinery saw it ([`crate::front`]).
pub struct Direct {
    /// Bytes of the request's head: what follows is the client's first WebSocket bytes.
    pub len: usize,
    pub headers: HeaderMap,
    /// The `101 Switching Protocols` answer, as written on the wire.
    pub response: Vec<u8>,
}

/// Headers a request answered directly may carry; one with more is left to hyper.
const DIRECT_MAX_HEADERS: usize = 32;

/// The handshake at the start of `head` if it is a complete and valid one for `path`, with
/// its answer choosing `protocol` when offered. `None` for anything else (another path or
/// method, a head not all there, a refusal): hyper and the router serve those, with the
/// answers they always gave.
pub fn direct(head: &[u8], path: &str, protocol: &'static str) -> Option<Direct> {
    let mut raw = [httparse::EMPTY_HEADER; DIRECT_MAX_HEADERS];
    let mut req = httparse::Request::new(&mut raw);
    let httparse::Status::Complete(len) = req.parse(head).ok()? else {
        return None;
    };
    // Exactly the path the router gives the endpoint: a query is not part of it.
    let target = req.path?;
    let path_only = target.split_once('?').map_or(target, |(p, _)| p);
    if req.method != Some("GET") || req.version != Some(1) || path_only != path {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        headers.append(name, HeaderValue::from_bytes(h.value).ok()?);
    }
    let key = check_headers(&headers).ok()?;
    let mut response = HttpResponse::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()),
        );
    let values = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok());
    if offered(values, protocol) {
        response = response.header(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    let mut wire = Vec::with_capacity(160);
    write_response(&mut wire, &response.body(()).ok()?).ok()?;
    Some(Direct {
        len,
        headers,
        response: wire,
    })
}

/// A refusal of a handshake answered directly, as written on the wire: `status` with
/// `reason` as its text body, and the connection closed after it.
pub fn refusal(status: StatusCode, reason: &str) -> Vec<u8> {
    let body = format!("{reason}\n");
    let response = HttpResponse::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::CONNECTION, "close")
        .body(());
    let mut wire = Vec::with_capacity(128 + body.len());
    if let Ok(response) = response {
        // Writing into a vector fails only for a header that is not text, and these are.
        let _ = write_response(&mut wire, &response);
    }
    wire.extend_from_slice(body.as_bytes());
    wire
}

impl Upgrade {
    /// Answers `101 Switching Protocols`, choosing `protocol` when the client asked for it,
    /// and runs `serve` on the connection once hyper hands it over, with the bytes hyper
    /// read past the request (the client's first WebSocket bytes, if it sent them at once).
    pub fn accept<F, Fut>(self, protocol: &'static str, serve: F) -> Response
    where
        F: FnOnce(TcpStream, Vec<u8>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // Once upgraded, the task holds only the session: `then` drops what waited for the
        // switch (and `serve` itself) where an async block would keep them for the task's life.
        let session = self.on_upgrade.then(move |upgraded| {
            match upgraded.map(|u| u.downcast::<TokioIo<Prefixed>>()) {
                Ok(Ok(parts)) => {
                    let (stream, mut rest) = parts.io.into_inner().into_parts();
                    rest.extend_from_slice(&parts.read_buf);
                    Either::Left(serve(stream, rest))
                }
                // The client went away before the switch. (Every connection of the
                // listener is a `Prefixed` one: the other arm is never taken.)
                Ok(Err(_)) | Err(_) => Either::Right(std::future::ready(())),
            }
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
        if offered(std::iter::once(self.requested_protocols.as_str()), protocol) {
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
