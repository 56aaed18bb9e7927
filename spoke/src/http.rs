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

pub async fn serve(listener: tokio::net::TcpListener, spoke: Arc<Spoke>) {
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/cluster", get(cluster))
        .with_state(spoke);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "spoke HTTP server stopped");
    }
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
    for m in &hb.models {
        let s = &m.stats;
        let l = format!("{{model=\"{}\"}}", m.model);
        let rows: [(&str, &str, u64); 10] = [
            (ENGINE_WAITING, "gauge", s.waiting as u64),
            (ENGINE_RUNNING, "gauge", s.running as u64),
            (ENGINE_KV_FREE, "gauge", s.kv_blocks_free as u64),
            (ENGINE_KV_TOTAL, "gauge", s.kv_blocks_total as u64),
            (ENGINE_GENERATED, "counter", s.generated_tokens),
            (ENGINE_PROMPT, "counter", s.prompt_tokens),
            (ENGINE_CACHED, "counter", s.cached_tokens),
            (ENGINE_PREEMPTIONS, "counter", s.preemptions),
            (ENGINE_STEPS, "counter", s.steps),
            (ENGINE_BATCH_ROWS, "counter", s.batch_rows),
        ];
        for (name, kind, v) in rows {
            let _ = writeln!(out, "# TYPE {name} {kind}\n{name}{l} {v}");
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
        let _ = writeln!(out, "# TYPE {TRAIN_STEP} gauge\n# TYPE {TRAIN_LOSS} gauge\n# TYPE {TRAIN_TOKENS_PER_S} gauge\n# TYPE {TRAIN_RUNNING} gauge");
        for j in jobs {
            let l = format!("{{job=\"{}\",model=\"{}\"}}", j.name, j.model);
            let _ = writeln!(
                out,
                "{TRAIN_STEP}{l} {}\n{TRAIN_LOSS}{l} {}\n{TRAIN_TOKENS_PER_S}{l} {:.1}",
                j.step, j.loss, j.tokens_per_s
            );
            let _ = writeln!(out, "{TRAIN_RUNNING}{l} {}", u8::from(j.state == "running"));
        }
    }
    out
}
