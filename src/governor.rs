//! The governor: the operator's HTTP endpoint (`server.governor.listen`, default :9003).
//!
//! - `GET /health` — 200 while the process serves at all (liveness).
//! - `GET /ready` — 200 while the node accepts clients; 503 while starting, draining or stopped,
//!   and while the session directory (Redis, cluster mode) is unreachable (3 failed round
//!   trips in a row over at least 2 s: one failure never takes the fleet out at once).
//! - `GET /metrics` — Prometheus text exposition.
//!
//! Must never expose configuration, environment variables or secrets (the original did).

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    cluster::SessionDirectory,
    http::HttpLimits,
    shutdown::{Lifecycle, Phase},
    telemetry::Metrics,
};

/// The governor's view of the node (built by the node).
#[derive(Clone)]
pub struct GovernorView {
    pub metrics: Arc<Metrics>,
    pub lifecycle: Arc<Lifecycle>,
    pub directory: Arc<dyn SessionDirectory>,
}

/// The governor's routes.
pub fn router(view: GovernorView) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(view)
}

async fn ready(State(s): State<GovernorView>) -> impl IntoResponse {
    match s.lifecycle.phase() {
        Phase::Running if s.directory.healthy() => (StatusCode::OK, "ready\n".to_owned()),
        Phase::Running => {
            (StatusCode::SERVICE_UNAVAILABLE, "session directory unreachable\n".to_owned())
        }
        other => (StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", other.as_str())),
    }
}

async fn metrics_text(State(s): State<GovernorView>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}

/// Serves the governor until `stop` is cancelled (bounded: see [`crate::http`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    crate::http::serve(listener, router, HttpLimits::default(), stop).await
}
