//! CORS for `/socket.io/`: a page served from the application's origin opens Engine.IO's
//! long-polling requests (`XMLHttpRequest`/`fetch`) to the edge's origin, which browsers allow
//! only when the answers carry CORS headers (a Node.js Socket.IO server is given its `cors`
//! option for this). WebSocket upgrades need none; `Origin` is checked at admission either way.
//!
//! Origins allowed: those of `--allowed-origin`, or any when the list is empty. Credentials are
//! allowed (the client's `withCredentials`), so the origin is echoed, never `*`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The path prefix the Socket.IO layer answers.
pub const PATH: &str = "/socket.io/";
/// How long a browser may cache a preflight's answer.
const PREFLIGHT_MAX_AGE_SECS: &str = "600";

/// Origins allowed to read `/socket.io/` answers; empty: any.
#[derive(Debug, Clone, Default)]
pub struct AllowedOrigins(pub Arc<Vec<String>>);

impl AllowedOrigins {
    /// The `Origin` to echo, if the request has one that is allowed.
    fn admits(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        let allowed = self.0.is_empty() || self.0.iter().any(|a| a.eq_ignore_ascii_case(text));
        allowed.then(|| origin.clone())
    }
}

/// Middleware (outside the Socket.IO layer): answers preflights and adds the headers to every
/// answer of `/socket.io/`; other paths pass untouched.
pub async fn cors(State(allowed): State<AllowedOrigins>, req: Request, next: Next) -> Response {
    if !req.uri().path().starts_with(PATH) {
        return next.run(req).await;
    }
    let origin = allowed.admits(req.headers());
    if req.method() == Method::OPTIONS {
        let Some(origin) = origin else {
            return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
        };
        let requested = req
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned();
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let h = response.headers_mut();
        allow(h, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        if let Some(requested) = requested {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested);
        }
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(PREFLIGHT_MAX_AGE_SECS),
        );
        return response;
    }
    let mut response = next.run(req).await;
    if let Some(origin) = origin {
        allow(response.headers_mut(), origin);
    }
    response
}

fn allow(h: &mut HeaderMap, origin: HeaderValue) {
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    h.append(header::VARY, HeaderValue::from_static("Origin"));
}
