//! The spoke's own HTTP port: `/health` and `/metrics` (engine and memory figures).

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::Router;

use crate::server::Spoke;

pub const ENGINE_WAITING: &str = "nave_engine_waiting_sequences";
pub const ENGINE_RUNNING: &str = "nave_engine_running_sequences";
pub const ENGINE_KV_FREE: &str = "nave_engine_kv_blocks_free";
pub const ENGINE_KV_TOTAL: &str = "nave_engine_kv_blocks_total";
pub const TRAIN_STEP: &str = "nave_train_step";
pub const TRAIN_LOSS: &str = "nave_train_loss";
pub const TRAIN_TOKENS_PER_S: &str = "nave_train_tokens_per_second";
pub const TRAIN_RUNNING: &str = "nave_train_running";
pub const ENGINE_GENERATED: &str = "nave_engine_generated_tokens_total";
pub const ENGINE_PROMPT: &str = "nave_engine_prompt_tokens_total";
pub const ENGINE_CACHED: &str = "nave_engine_cached_prompt_tokens_total";
pub const ENGINE_PREEMPTIONS: &str = "nave_engine_preemptions_total";
pub const ENGINE_STEPS: &str = "nave_engine_steps_total";
pub const ENGINE_BATCH_ROWS: &str = "nave_engine_batch_rows_total";
pub const ENGINE_TOKENS_PER_S: &str = "nave_engine_output_tokens_per_second";
pub const MEMORY_BYTES: &str = "nave_memory_partition_bytes";
pub const PROCESS_RSS: &str = "nave_process_resident_bytes";
pub const REPLICA_APPLIED: &str = "nave_replica_applied_index";
pub const REPLICA_TERM: &str = "nave_replica_term";

/// Serves `/health`, `/metrics` and `/cluster` with the hub's timeouts and caps (a client
/// has 10 s to send its headers).
pub async fn serve(listener: tokio::net::TcpListener, spoke: Arc<Spoke>) {
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/cluster", get(cluster))
        .with_state(spoke);
    let timeout = std::time::Duration::from_secs(10);
    crate::serve::serve(listener, app, timeout, timeout, None, std::future::pending()).await;
}

/// `GET /cluster`: what this spoke's replica knows of the cluster, from its own copy of
/// the state (answers while no hub is reachable; as of `applied_index`).
async fn cluster(State(spoke): State<Arc<Spoke>>) -> axum::Json<serde_json::Value> {
    let f = spoke.replica.figures();
    let m = spoke.replica.raft.metrics().borrow().clone();
    let hubs: Vec<String> = m
        .membership_config
        .membership()
        .voter_ids()
        .filter_map(|id| m.membership_config.membership().get_node(&id).map(|n| n.addr.clone()))
        .collect();
    let view = spoke.replica.state.read(|a| {
        serde_json::json!({
            "keys": a.state.keys.values().filter(|k| !k.revoked).count(),
            "joined_spokes": a.state.spokes.keys().collect::<Vec<_>>(),
            "adapters": a.state.adapters.keys().collect::<Vec<_>>(),
        })
    });
    axum::Json(serde_json::json!({
        "spoke": spoke.id, "leader": f.leader, "term": f.term, "applied_index": f.applied_index, "hubs": hubs, "state": view,
    }))
}

async fn metrics(State(spoke): State<Arc<Spoke>>) -> String {
    let hb = spoke.heartbeat().await;
    let mut out = String::new();
    // Prometheus wants each family's TYPE line once, with all its samples after it.
    type Row = (&'static str, &'static str, fn(&nave_inference::EngineStats) -> u64);
    let rows: [Row; 10] = [
        (ENGINE_WAITING, "gauge", |s| s.waiting as u64),
        (ENGINE_RUNNING, "gauge", |s| s.running as u64),
        (ENGINE_KV_FREE, "gauge", |s| s.kv_blocks_free as u64),
        (ENGINE_KV_TOTAL, "gauge", |s| s.kv_blocks_total as u64),
        (ENGINE_GENERATED, "counter", |s| s.generated_tokens),
        (ENGINE_PROMPT, "counter", |s| s.prompt_tokens),
        (ENGINE_CACHED, "counter", |s| s.cached_tokens),
        (ENGINE_PREEMPTIONS, "counter", |s| s.preemptions),
        (ENGINE_STEPS, "counter", |s| s.steps),
        (ENGINE_BATCH_ROWS, "counter", |s| s.batch_rows),
    ];
    for (name, kind, value) in rows {
        if hb.models.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for m in &hb.models {
            let _ = writeln!(out, "{name}{{model=\"{}\"}} {}", m.model, value(&m.stats));
        }
    }
    let _ = writeln!(out, "# TYPE {ENGINE_TOKENS_PER_S} gauge\n{ENGINE_TOKENS_PER_S} {:.3}", hb.tokens_per_s);
    let m = &hb.memory;
    let _ = writeln!(out, "# TYPE {MEMORY_BYTES} gauge");
    for (part, u) in [("serving", m.serving), ("training", m.training)] {
        let _ = writeln!(out, "{MEMORY_BYTES}{{partition=\"{part}\",kind=\"total\"}} {}", u.total);
        let _ = writeln!(out, "{MEMORY_BYTES}{{partition=\"{part}\",kind=\"used\"}} {}", u.used);
    }
    let _ = writeln!(out, "# TYPE {PROCESS_RSS} gauge\n{PROCESS_RSS} {}", m.device_used);
    let f = spoke.replica.figures();
    let _ = writeln!(out, "# TYPE {REPLICA_APPLIED} gauge\n{REPLICA_APPLIED} {}", f.applied_index.unwrap_or(0));
    let _ = writeln!(out, "# TYPE {REPLICA_TERM} gauge\n{REPLICA_TERM} {}", f.term);
    let jobs = spoke.jobs.statuses();
    if !jobs.is_empty() {
        type Job = (&'static str, fn(&crate::protocol::JobStatus) -> String);
        let families: [Job; 4] = [
            (TRAIN_STEP, |j| j.step.to_string()),
            (TRAIN_LOSS, |j| j.loss.to_string()),
            (TRAIN_TOKENS_PER_S, |j| format!("{:.1}", j.tokens_per_s)),
            (TRAIN_RUNNING, |j| u8::from(j.state == "running").to_string()),
        ];
        for (name, value) in families {
            let _ = writeln!(out, "# TYPE {name} gauge");
            for j in &jobs {
                let _ = writeln!(out, "{name}{{job=\"{}\",model=\"{}\"}} {}", j.name, j.model, value(j));
            }
        }
    }
    out
}
