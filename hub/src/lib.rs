//! # nave-hub
//!
//! The hub: the HTTP API apps talk to, authentication, admission, routing to spokes,
//! retries and circuit breaking; and the `nave` command (src/main.rs).
//!
//! # Layout
//! - [`api`]: the OpenAI and Ollama endpoints, health, readiness, metrics.
//! - [`route`]: sending a request to a spoke, retrying before the first token.
//! - [`policy`]: routing policies behind one trait (least-loaded, session affinity,
//!   cost-aware); [`circuit`]: the per-spoke circuit breaker (pure).
//! - [`spokes`]: connections, heartbeats and circuits of every spoke.
//! - [`metrics`], [`error`]: Prometheus text; OpenAI-shaped errors.
//! - [`up`]: `nave up`, the whole cluster as child processes.
//!
//! A request: axum handler ([`api`]) -> auth (middleware in [`router`]) -> admission slot
//! -> [`route::dispatch`] picks a spoke with the model's policy and opens a QUIC stream
//! -> the spoke's engine streams events back -> SSE/NDJSON/JSON to the client.

pub mod api;
pub mod circuit;
pub mod error;
pub mod metrics;
pub mod policy;
pub mod route;
pub mod spokes;
pub mod up;

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use nave_consensus::tls::{self, ClusterCa};
use nave_consensus::{ClusterConfig, RoutingPolicy};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;
use crate::spokes::SpokeSet;

/// A request's place in the hub's bounded admission (released when dropped).
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

/// The hub's shared state.
pub struct Hub {
    pub id: String,
    pub config: ClusterConfig,
    pub spokes: Arc<SpokeSet>,
    pub metrics: metrics::Metrics,
    pub models: Vec<String>,
    pub request_timeout: Duration,
    pub shutting_down: AtomicBool,
    admin_digest: [u8; 32],
    slots: Arc<Semaphore>,
}

impl Hub {
    pub fn policy(&self, model: &str) -> Box<dyn policy::Policy> {
        policy::for_config(self.config.policy(model))
    }

    /// A slot for one more request, or 503 when the hub is at its cap.
    pub fn admit(&self) -> Result<Slot, ApiError> {
        match self.slots.clone().try_acquire_owned() {
            Ok(p) => Ok(Slot(p)),
            Err(_) => {
                self.metrics.refusal("hub_busy");
                Err(ApiError::unavailable("this hub is at its limit of concurrent requests"))
            }
        }
    }

    /// Constant-time comparison of the key's digest with the admin key's.
    pub fn is_admin_key(&self, key: &str) -> bool {
        let d = Sha256::digest(key.as_bytes());
        d.iter().zip(self.admin_digest.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    pub fn routing(&self, model: &str) -> RoutingPolicy {
        self.config.policy(model)
    }
}

/// The admin key of the cluster: read from `<data_dir>/admin.key`, created there (mode
/// 0600) if absent.
pub fn ensure_admin_key(data_dir: &Path) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("admin.key");
    if let Ok(k) = std::fs::read_to_string(&path) {
        if !k.trim().is_empty() {
            return Ok(k.trim().to_string());
        }
    }
    std::fs::create_dir_all(data_dir)?;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("reading /dev/urandom for the admin key")?;
    let key = format!("nave-admin-{}", hex::encode(bytes));
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(key.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(key)
}

async fn auth(State(hub): State<Arc<Hub>>, req: Request, next: Next) -> Response {
    let key = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    match key {
        Some(k) if hub.is_admin_key(k) => next.run(req).await,
        _ => {
            hub.metrics.refusal("bad_key");
            ApiError::unauthorized().into_response()
        }
    }
}

/// Errors produced below the handlers (body limit) get the OpenAI shape too.
async fn shape_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    if resp.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        let is_json = resp.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        if !is_json {
            return ApiError::new(resp.status(), "the request body is larger than the hub accepts").into_response();
        }
    }
    resp
}

async fn admin_status(State(hub): State<Arc<Hub>>) -> axum::Json<serde_json::Value> {
    let hubs: Vec<_> = hub
        .config
        .hubs
        .iter()
        .map(|h| serde_json::json!({"id": h.id, "http": h.http.to_string(), "quic": h.quic.to_string(), "role": if h.id == hub.id { "self" } else { "peer" }}))
        .collect();
    let spokes = hub.spokes.views();
    let models: Vec<_> = hub
        .models
        .iter()
        .map(|m| {
            let on: Vec<&str> = spokes.iter().filter(|s| s.models.contains(m) && s.state == "active").map(|s| s.id.as_str()).collect();
            serde_json::json!({"model": m, "routing": hub.routing(m), "spokes": on})
        })
        .collect();
    axum::Json(serde_json::json!({
        "hub": hub.id,
        "leader": serde_json::Value::Null,
        "hubs": hubs,
        "spokes": spokes,
        "models": models,
    }))
}

/// The HTTP routes of a hub.
pub fn router(hub: Arc<Hub>) -> Router {
    let limit = hub.config.cluster.max_body_bytes.0 as usize;
    let protected = Router::new()
        .route("/v1/chat/completions", post(api::chat_completions))
        .route("/v1/completions", post(api::completions))
        .route("/v1/models", get(api::models))
        .route("/api/chat", post(api::ollama_chat))
        .route("/api/generate", post(api::ollama_generate))
        .route("/api/tags", get(api::ollama_tags))
        .route("/admin/v1/status", get(admin_status))
        .route_layer(middleware::from_fn_with_state(hub.clone(), auth));
    Router::new()
        .merge(protected)
        .route("/api/version", get(api::ollama_version))
        .route("/health", get(api::health))
        .route("/ready", get(api::ready))
        .route("/metrics", get(api::metrics))
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(shape_errors))
        .with_state(hub)
}

/// Runs hub `id` of `config` until `shutdown` completes, then drains: readiness goes 503,
/// in-flight requests finish, connections close.
pub async fn run(config: ClusterConfig, id: String, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let spec = config.hub(&id)?.clone();
    let dir = config.node_dir(&id);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = ClusterCa::load_or_create(&config.ca_dir())?;
    let identity = ca.ensure_node(&dir, &id)?;
    let admin = ensure_admin_key(&config.cluster.data_dir)?;
    let endpoint = tls::endpoint(&identity, spec.quic, &[tls::ALPN_RAFT, tls::ALPN_SPOKE])?;
    let spokes = SpokeSet::new(&config, &identity, endpoint.clone())?;
    spokes.spawn_watchers();
    let models = config.served_models();
    let c = &config.cluster;
    let hub = Arc::new(Hub {
        id: id.clone(),
        spokes,
        metrics: metrics::Metrics::new(models.clone()),
        models,
        request_timeout: Duration::from_millis(c.request_timeout_ms),
        shutting_down: AtomicBool::new(false),
        admin_digest: Sha256::digest(admin.as_bytes()).into(),
        slots: Arc::new(Semaphore::new(c.max_concurrent_requests * 2)),
        config: config.clone(),
    });
    let listener = tokio::net::TcpListener::bind(spec.http).await.with_context(|| format!("binding HTTP on {}", spec.http))?;
    tracing::info!(hub = %id, http = %spec.http, quic = %spec.quic, "hub serving");
    let flag = hub.clone();
    let graceful = async move {
        shutdown.await;
        flag.shutting_down.store(true, Ordering::Relaxed);
        tracing::info!("draining");
    };
    axum::serve(listener, router(hub)).with_graceful_shutdown(graceful).await?;
    endpoint.close(quinn::VarInt::from_u32(0), b"shutdown");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    Ok(())
}
