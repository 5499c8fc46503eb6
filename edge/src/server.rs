//! HTTP routes: the WebSocket endpoint, health, readiness, metrics, the demo page and the
//! browser SDK (both compiled into the binary). The WebSocket endpoint counts connections by
//! the client's address: the peer's, or the one a trusted proxy forwarded (`client_addr`).

use std::sync::Arc;

use axum::Router;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use crate::admission;
use crate::connection;
use crate::context::EdgeContext;
use crate::listener::{EdgeListener, Peer};
use crate::protocol::SUBPROTOCOL;
use crate::shutdown::Stage;
use crate::socketio::SocketIoIngress;
use crate::upgrade::Upgrade;

const DEMO_PAGE: &str = include_str!("../web/index.html");
const SDK_JS: &str = include_str!("../web/heliograph.js");
const SDK_DTS: &str = include_str!("../web/heliograph.d.ts");

/// The main listener's routes; with `socketio`, `/socket.io/` too (Socket.IO is a tower
/// layer: it answers its own path and passes every other request on).
pub fn router(ctx: Arc<EdgeContext>, socketio: Option<SocketIoIngress>) -> Router {
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
    let router = router.with_state(ctx);
    match socketio {
        Some(ingress) => ingress.mount(router),
        None => router,
    }
}

/// The separate metrics listener, when one is configured. It answers health and readiness
/// too: with `--proxy-protocol` the main listener takes only connections that open with a
/// PROXY header, which probes do not send.
pub fn metrics_router(ctx: Arc<EdgeContext>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(ctx)
}

/// Serves the metrics listener until the edge starts draining; then stops accepting. (The
/// main listener is served by [`crate::front::serve`].)
pub async fn serve(listener: EdgeListener, router: Router, ctx: Arc<EdgeContext>) {
    let service = router.into_make_service_with_connect_info::<Peer>();
    let result = axum::serve(listener, service)
        .with_graceful_shutdown(async move { ctx.shutdown.reached(Stage::Draining).await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

async fn websocket(
    State(ctx): State<Arc<EdgeContext>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    upgrade: Upgrade,
) -> Response {
    let slot = match admission::admit(&ctx, peer, &headers) {
        Ok(slot) => slot,
        Err(refused) => return (refused.status(), format!("{refused}\n")).into_response(),
    };
    let tasks = ctx.connection_tasks.clone();
    // The socket is made before the session's future, not inside it: what a future captures
    // it keeps for its whole life, and every session's task would carry the upgrade's parts.
    upgrade.accept(SUBPROTOCOL, move |stream, read| {
        let socket = Box::new(connection::Socket::new(stream, read, Vec::new(), &ctx));
        tasks.track_future(connection::run(socket, ctx, slot))
    })
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
            heliograph_coordinator::metrics::render(handle),
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
