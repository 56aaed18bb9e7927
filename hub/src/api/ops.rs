//! What operators and load balancers ask a hub: `GET /health` (the process is alive),
//! `GET /ready` (it knows a leader and some spoke is ready), `GET /metrics` (Prometheus
//! text).

use std::sync::atomic::Ordering;

use axum::extract::State;

use super::AppState;
use crate::error::ApiError;

pub async fn health() -> &'static str {
    "ok\n"
}

pub async fn ready(State(hub): State<AppState>) -> Result<&'static str, ApiError> {
    if hub.shutting_down.load(Ordering::Relaxed) {
        return Err(ApiError::unavailable("shutting down"));
    }
    if hub.consensus.figures().leader.is_none() {
        return Err(ApiError::unavailable("no Raft leader is known yet"));
    }
    if !hub.spokes.any_ready() {
        return Err(ApiError::unavailable("no spoke is ready yet"));
    }
    Ok("ready\n")
}

pub async fn metrics(State(hub): State<AppState>) -> String {
    use std::fmt::Write;
    // Requests holding a slot of this hub now.
    let slots = hub.config.cluster.max_concurrent_requests * 2;
    hub.metrics.in_flight.store(slots.saturating_sub(hub.slots.available_permits()) as u64, Ordering::Relaxed);
    let mut out = hub.metrics.render(&hub.spokes.views());
    let f = hub.consensus.figures();
    let rows = [
        (crate::metrics::RAFT_TERM, f.term),
        (crate::metrics::RAFT_IS_LEADER, u64::from(f.leader == Some(f.id))),
        (crate::metrics::RAFT_LAST_LOG, f.last_log_index.unwrap_or(0)),
        (crate::metrics::RAFT_APPLIED, f.applied_index.unwrap_or(0)),
        (crate::metrics::RAFT_SNAPSHOT, f.snapshot_index.unwrap_or(0)),
    ];
    for (name, v) in rows {
        let _ = writeln!(out, "# TYPE {name} gauge\n{name} {v}");
    }
    let _ = writeln!(out, "# TYPE {} gauge", crate::metrics::RAFT_LAG);
    for (peer, lag) in &f.lag {
        let _ = writeln!(out, "{}{{peer=\"{peer}\"}} {lag}", crate::metrics::RAFT_LAG);
    }
    let stored = hub.consensus.state.read(|a| a.state.stored_response_bytes());
    let _ = writeln!(out, "# TYPE {0} gauge\n{0} {stored}", crate::metrics::STORED_RESPONSE_BYTES);
    let _ = writeln!(
        out,
        "# TYPE {0} gauge\n{0} {1}",
        crate::metrics::SNAPSHOT_LIMIT_BYTES,
        hub.config.cluster.max_snapshot_bytes.0
    );
    let dropped = crate::otlp::DROPPED.load(Ordering::Relaxed);
    let _ = writeln!(out, "# TYPE {0} counter\n{0} {dropped}", crate::metrics::OTLP_DROPPED);
    out
}
