//! The replica's HTTP listener: liveness, readiness and Prometheus metrics.
//!
//! Readiness means "a leader is known": a replica that cannot reach a quorum cannot commit
//! joins, so load balancers and probes should not count it. The recorder is installed by the
//! binary; the library only renders what it is handed.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::replica::Replica;

#[derive(Clone)]
struct Http {
    replica: Replica,
    prometheus: Option<PrometheusHandle>,
}

/// `/healthz`, `/readyz` and `/metrics` (404 when no recorder handle is given).
pub fn router(replica: Replica, prometheus: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Http {
            replica,
            prometheus,
        })
}

/// Serves `router` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(http): State<Http>) -> Response {
    if http.replica.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no leader known\n").into_response()
    }
}

async fn metrics(State(http): State<Http>) -> Response {
    match &http.prometheus {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            crate::metrics::render(handle),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled\n").into_response(),
    }
}
