//! HTTP routes: the WebSocket endpoint, health, readiness, metrics, the demo page and the
//! browser SDK (both compiled into the binary).

use std::sync::Arc;

use axum::Router;
use std::net::SocketAddr;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::connection;
use crate::context::EdgeContext;
use crate::limits::ConnectionRefusal;
use crate::protocol::SUBPROTOCOL;
use crate::shutdown::Stage;

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

/// Serves until the edge starts draining; then stops accepting. Upgraded WebSockets are not
/// covered by axum's graceful shutdown and are tracked by the edge itself.
pub async fn serve(listener: TcpListener, router: Router, ctx: Arc<EdgeContext>) {
    use axum::serve::ListenerExt;
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    // Signals are small frames that must leave at once; Nagle would hold one back for up to
    // the peer's delayed-ACK time (~40 ms) while another is unacknowledged.
    let listener = listener.tap_io(|stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let result = axum::serve(listener, service)
        .with_graceful_shutdown(async move { ctx.shutdown.reached(Stage::Draining).await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

async fn websocket(
    State(ctx): State<Arc<EdgeContext>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if ctx.shutdown.is_draining() || ctx.connection_tasks.is_closed() {
        ctx.metrics.refused("draining");
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    if !origin_allowed(&ctx.config.allowed_origins, &headers) {
        ctx.metrics.refused("origin");
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    let slot = match ctx.connections.acquire(remote.ip()) {
        Ok(slot) => slot,
        Err(ConnectionRefusal::EdgeFull) => {
            ctx.metrics.refused("edge_full");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "edge at its connection limit\n",
            )
                .into_response();
        }
        Err(ConnectionRefusal::TooManyFromAddress) => {
            ctx.metrics.refused("address_limit");
            return (
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from this address\n",
            )
                .into_response();
        }
    };
    let limits = ctx.config.limits;
    let buffer = ctx.config.socket_buffer_bytes;
    let tasks = ctx.connection_tasks.clone();
    upgrade
        .protocols([SUBPROTOCOL])
        .read_buffer_size(buffer)
        .write_buffer_size(buffer)
        .max_write_buffer_size(limits.max_frame_bytes.saturating_mul(4).max(buffer * 2))
        .max_frame_size(limits.max_frame_bytes)
        .max_message_size(limits.max_frame_bytes)
        .on_upgrade(move |socket| tasks.track_future(connection::run(socket, ctx, slot)))
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

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(ctx): State<Arc<EdgeContext>>) -> Response {
    if ctx.shutdown.is_draining() {
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
