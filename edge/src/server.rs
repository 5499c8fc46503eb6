//! HTTP routes: the WebSocket endpoint, health, readiness, metrics, the demo page and the
//! browser SDK (both compiled into the binary).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::EdgeContext;
use crate::protocol::SUBPROTOCOL;
use crate::session;

const DEMO_PAGE: &str = include_str!("../web/index.html");
const SDK_JS: &str = include_str!("../web/heliograph.js");
const SDK_DTS: &str = include_str!("../web/heliograph.d.ts");

pub fn router(ctx: Arc<EdgeContext>) -> Router {
    let router = Router::new()
        .route("/", get(demo))
        .route("/sdk/heliograph.js", get(sdk_js))
        .route("/sdk/heliograph.d.ts", get(sdk_dts))
        .route("/ws", get(websocket))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    let router = if ctx.config.metrics_listen.is_none() {
        router.route("/metrics", get(metrics))
    } else {
        router
    };
    router.with_state(ctx)
}

/// The separate metrics listener, when one is configured.
pub fn metrics_router(ctx: Arc<EdgeContext>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(ctx)
}

/// Serves until `shutdown`; then stops accepting. Upgraded WebSockets are not covered by
/// axum's graceful shutdown and are tracked by the edge itself.
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) {
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

async fn websocket(State(ctx): State<Arc<EdgeContext>>, upgrade: WebSocketUpgrade) -> Response {
    if ctx.draining.load(Ordering::SeqCst) || ctx.sessions.is_closed() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    let limits = ctx.config.limits;
    let buffer = ctx.config.socket_buffer_bytes;
    let sessions = ctx.sessions.clone();
    upgrade
        .protocols([SUBPROTOCOL])
        .read_buffer_size(buffer)
        .write_buffer_size(buffer)
        .max_write_buffer_size(limits.max_frame_bytes.saturating_mul(4).max(buffer * 2))
        .max_frame_size(limits.max_frame_bytes)
        .max_message_size(limits.max_frame_bytes)
        .on_upgrade(move |socket| sessions.track_future(session::run(socket, ctx)))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(ctx): State<Arc<EdgeContext>>) -> Response {
    if ctx.draining.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else if !ctx.registry.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "registry unavailable\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn metrics(State(ctx): State<Arc<EdgeContext>>) -> Response {
    match &ctx.prometheus {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled\n").into_response(),
    }
}

async fn demo() -> Html<&'static str> {
    Html(DEMO_PAGE)
}

async fn sdk_js() -> Response {
    static_text("text/javascript; charset=utf-8", SDK_JS)
}

async fn sdk_dts() -> Response {
    static_text("application/typescript; charset=utf-8", SDK_DTS)
}

fn static_text(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
