//! The metrics listener: plain HTTP/1.1 (axum), `GET /metrics` in Prometheus' text format.
//! Everything else is 404. Off unless the configuration names `metrics_listen`.
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use vmove_api::JobStatus;

use super::Live;
use crate::dispatch::Api;
use crate::error::{Result, ResultExt};

/// The content type of the text exposition format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the agent looks like now, for a scrape.
pub fn live(api: &Api) -> Live {
    let agent = &api.agent;
    let mut guests = BTreeMap::new();
    let mut qemu_processes = 0;
    for g in agent.lock_guests().values() {
        let state = serde_json::to_value(g.state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        *guests.entry(state).or_insert(0) += 1;
        qemu_processes += u64::from(g.pid.is_some());
    }
    let jobs_in_flight = api.jobs.list().iter().filter(|j| j.status == JobStatus::Running).count() as u64;
    Live {
        host: agent.cfg.name.clone(),
        accel: agent.accel.clone(),
        qemu_version: agent.qemu.version.clone(),
        guests,
        qemu_processes,
        jobs_in_flight,
        store: (if agent.cfg.store.kind == vmove_model::StoreKind::Etcd { "etcd" } else { "file" }.to_string(), agent.state.stats().map(|s| s.snapshot()).unwrap_or_default()),
    }
}

/// The metrics as a scrape sees them.
pub fn render(api: &Api) -> String {
    api.agent.metrics.render(&live(api))
}

async fn metrics(State(api): State<Arc<Api>>) -> impl IntoResponse {
    ([(CONTENT_TYPE, CONTENT_TYPE_TEXT)], render(&api))
}

/// Binds `addr` (so that a bad address stops the agent at start) and serves in a task.
pub async fn start(api: Arc<Api>, addr: &str) -> Result<()> {
    let listener = TcpListener::bind(addr).await.with_ctx(|| format!("listen for metrics on {addr}"))?;
    tracing::info!(listen = %addr, "serving Prometheus metrics at /metrics");
    let app = Router::new().route("/metrics", get(metrics)).with_state(api);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the metrics listener stopped: {e}");
        }
    });
    Ok(())
}
