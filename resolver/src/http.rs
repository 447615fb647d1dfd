//! The resolver's optional HTTP listener (`--http-listen`): `/livez`, `/readyz` and `/metrics`
//! for Kubernetes probes and Prometheus. It serves nothing else.
//!
//! It is up before NATS is reached: `/livez` answers and `/readyz` says `connecting to NATS`.
//! `/readyz` is 200 `ready` only while NATS is connected and every component in the
//! [`Health`] is ready (each network's pull loop, each supervised task); else 503 with the
//! first reason, e.g. `pull cams: cannot pull: the consumer is gone: consumer not found`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use imgfetch_common::health::Health;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the routes read.
#[derive(Clone)]
pub struct HttpState {
    /// Readiness of the components.
    pub health: Health,
    /// The NATS connection, once made: the resolver answers probes while it connects.
    pub client: std::sync::Arc<std::sync::OnceLock<async_nats::Client>>,
    /// Fired at shutdown: readiness turns false at once.
    pub shutdown: CancellationToken,
    /// Metrics renderer; `None` serves no metrics.
    pub metrics: Option<PrometheusHandle>,
}

/// Serves the routes on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, state: HttpState) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    let router = Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
        .with_state(state);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn readyz(State(state): State<HttpState>) -> Response {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    let Some(client) = state.client.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "connecting to NATS").into_response();
    };
    if client.connection_state() != async_nats::connection::State::Connected {
        return (StatusCode::SERVICE_UNAVAILABLE, "NATS is not connected").into_response();
    }
    match state.health.check() {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    match &state.metrics {
        Some(handle) => handle.render().into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}
