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
//! - [`join`]: spokes joining with a token (`nave-join/1` on the QUIC port).
//! - [`up`]: `nave up`, the whole cluster as child processes.
//!
//! A request: axum handler ([`api`]) -> auth (middleware in [`router`]) -> admission slot
//! -> [`route::dispatch`] picks a spoke with the model's policy and opens a QUIC stream
//! -> the spoke's engine streams events back -> SSE/NDJSON/JSON to the client.

pub mod admin;
pub mod api;
pub mod circuit;
pub mod error;
pub mod join;
pub mod metrics;
pub mod otlp;
pub mod policy;
pub mod route;
pub mod serve;
pub mod spokes;
pub mod train;
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

use nave_consensus::network::node_addr;
use nave_consensus::node::{ConsensusNode, Role};
use nave_consensus::state::{Command, CommandResult, Proposal, Refusal};

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
    pub request_timeout: Duration,
    pub shutting_down: AtomicBool,
    admin_digest: [u8; 32],
    slots: Arc<Semaphore>,
    pub consensus: Arc<ConsensusNode>,
    /// Signs the certificates of joining spokes.
    pub ca: ClusterCa,
}

/// Who sent a request (set by the auth middleware).
#[derive(Debug, Clone)]
pub enum Caller {
    Admin,
    /// An API key, by its SHA-256 digest (hex); checked by admission.
    Key(String),
}

/// An admitted request's reservation; settles with the tokens used when dropped, so a
/// client that goes away mid-stream is still charged what it got.
pub struct Admission {
    hub: Option<(Arc<Hub>, String)>,
    pub used: std::sync::atomic::AtomicU64,
}

impl Admission {
    pub fn record(&self, tokens: usize) {
        self.used.fetch_add(tokens as u64, Ordering::Relaxed);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some((hub, admitted)) = self.hub.take() {
            let used_tokens = self.used.load(Ordering::Relaxed);
            tokio::spawn(async move {
                if let Err(e) = hub.consensus.write(Command::Settle { admitted: admitted.clone(), used_tokens }).await {
                    // The reservation expires on its own (state.rs); the budget stays safe.
                    tracing::warn!(%admitted, error = %e, "settlement failed");
                }
            });
        }
    }
}

fn refusal(r: Refusal, retry_after_ms: u64) -> ApiError {
    match r {
        Refusal::UnknownKey | Refusal::Revoked => ApiError::unauthorized(),
        _ => {
            let what = match r {
                Refusal::RequestRate => "request rate limit",
                Refusal::TokenRate => "token rate limit",
                _ => "daily token budget",
            };
            let mut e = ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                format!("this key's {what} is used up; retry in {} s", retry_after_ms.div_ceil(1000)),
            );
            e.retry_after_s = Some(retry_after_ms.div_ceil(1000).max(1));
            e
        }
    }
}

pub fn no_quorum(e: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable(format!("the cluster state is not available ({e}); retry shortly"))
}

impl Hub {
    /// The models some spoke of the cluster serves (config and joined spokes), sorted.
    pub fn models(&self) -> Vec<String> {
        self.spokes.models()
    }

    /// Fine-tuned adapters (`model:name`) in the replicated registry, sorted.
    pub fn adapters(&self) -> Vec<String> {
        self.consensus.state.read(|a| a.state.adapters.keys().cloned().collect())
    }

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

    /// Admission: one consensus write that checks the key's limits and reserves
    /// `max_tokens` against its budgets, whichever hub the request reached.
    #[tracing::instrument(name = "admit", skip_all)]
    pub async fn admit_request(
        self: &Arc<Self>,
        caller: &Caller,
        request_id: &str,
        max_tokens: usize,
    ) -> Result<Admission, ApiError> {
        let digest = match caller {
            Caller::Admin => return Ok(Admission { hub: None, used: Default::default() }),
            Caller::Key(d) => d.clone(),
        };
        let id = format!("admit-{}-{request_id}-{}", self.id, api::random_id());
        let p = Proposal {
            id: id.clone(),
            now_ms: now_ms(),
            command: Command::Admit { digest, max_tokens: max_tokens as u64 },
        };
        match self.consensus.propose(p).await {
            Ok(CommandResult::Admitted { .. }) => {
                Ok(Admission { hub: Some((self.clone(), id)), used: Default::default() })
            }
            Ok(CommandResult::Refused { reason, retry_after_ms }) => {
                self.metrics.refusal(reason.as_str());
                Err(refusal(reason, retry_after_ms))
            }
            Ok(other) => Err(ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("unexpected admission result {other:?}"),
            )),
            Err(e) => {
                self.metrics.refusal("no_quorum");
                Err(no_quorum(e))
            }
        }
    }

    /// Whether `digest` names a live key (a linearizable read).
    pub async fn key_is_live(&self, digest: &str) -> Result<bool, ApiError> {
        self.consensus.read(|a| a.state.key_by_digest(digest).is_some_and(|k| !k.revoked)).await.map_err(no_quorum)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// `n` random bytes as hex, from the kernel.
pub fn random_hex(n: usize) -> anyhow::Result<String> {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("reading /dev/urandom")?;
    Ok(hex::encode(bytes))
}

/// The admin key of the cluster: read from `<data_dir>/admin.key`, created there (mode
/// 0600) if absent. Hubs starting together agree: the file is published with a hard link,
/// which fails if another hub published first, and then that one's key is used.
pub fn ensure_admin_key(data_dir: &Path) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("admin.key");
    let read = || std::fs::read_to_string(&path).ok().map(|k| k.trim().to_string()).filter(|k| !k.is_empty());
    if let Some(k) = read() {
        return Ok(k);
    }
    std::fs::create_dir_all(data_dir)?;
    let key = format!("nave-admin-{}", random_hex(24)?);
    let tmp = data_dir.join(format!("admin.key.{}.tmp", tls::unique_suffix()));
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(key.as_bytes())?;
    f.sync_all()?;
    let published = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match published {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read().context("admin.key exists but is empty"),
        Err(e) => Err(e).with_context(|| format!("writing {}", path.display())),
    }
}

/// Identifies the caller. The admin key passes everything; another key passes to the
/// inference routes, where admission (a consensus write) checks it and its limits, and to
/// the listing routes after a linearizable check that it exists.
async fn auth(State(hub): State<Arc<Hub>>, mut req: Request, next: Next) -> Response {
    let key = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let caller = match key {
        Some(k) if hub.is_admin_key(k) => Caller::Admin,
        Some(k) => Caller::Key(hex::encode(Sha256::digest(k.as_bytes()))),
        None => {
            hub.metrics.refusal("bad_key");
            return ApiError::unauthorized().into_response();
        }
    };
    let path = req.uri().path();
    if let Caller::Key(digest) = &caller {
        if path.starts_with("/admin/") {
            return ApiError::new(axum::http::StatusCode::FORBIDDEN, "the admin API needs the admin key")
                .into_response();
        }
        // The local replica answers for keys it knows; a key it does not know yet (created
        // a moment ago through another hub) gets a linearizable read before a 401.
        let known = hub.consensus.state.read(|a| a.state.key_by_digest(digest).is_some_and(|k| !k.revoked));
        if !known || req.method() == axum::http::Method::GET {
            match hub.key_is_live(digest).await {
                Ok(true) => {}
                Ok(false) => {
                    hub.metrics.refusal("bad_key");
                    return ApiError::unauthorized().into_response();
                }
                Err(e) => return e.into_response(),
            }
        }
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
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

/// The founding hubs, in config order, are Raft nodes 1, 2, 3...; a hub added later
/// (`join = true`) has an id from its name.
pub fn raft_id(config: &ClusterConfig, hub: &str) -> Option<u64> {
    let h = config.hubs.iter().find(|h| h.id == hub)?;
    if h.join {
        return Some(nave_consensus::node::added_hub_id(hub));
    }
    config.hubs.iter().filter(|h| !h.join).position(|h| h.id == hub).map(|i| i as u64 + 1)
}

async fn admin_status(State(hub): State<Arc<Hub>>) -> axum::Json<serde_json::Value> {
    let f = hub.consensus.figures();
    let voting = hub.consensus.hubs();
    let leader = f.leader.and_then(|l| voting.iter().find(|h| h.0 == l)).map(|h| h.1.clone());
    let hubs: Vec<_> = voting
        .iter()
        .map(|(rid, name, quic)| {
            let role = if Some(name) == leader.as_ref() { "leader" } else { "follower" };
            let http = hub.config.hubs.iter().find(|h| &h.id == name).map(|h| h.http.to_string());
            let lag = f.lag.get(rid).copied();
            let mut v = serde_json::json!({"id": name, "http": http, "quic": quic, "role": role, "lag": lag});
            if *name == hub.id {
                v["term"] = f.term.into();
                v["applied_index"] = f.applied_index.into();
                v["last_log_index"] = f.last_log_index.into();
                v["raft_state"] = f.state.clone().into();
            }
            v
        })
        .collect();
    let spokes = hub.spokes.views();
    let models: Vec<_> = hub
        .models()
        .iter()
        .map(|m| {
            let on: Vec<&str> =
                spokes.iter().filter(|s| s.models.contains(m) && s.state == "active").map(|s| s.id.as_str()).collect();
            serde_json::json!({"model": m, "routing": hub.routing(m), "spokes": on})
        })
        .collect();
    axum::Json(serde_json::json!({
        "hub": hub.id,
        "leader": leader,
        "term": f.term,
        "applied_index": f.applied_index,
        "snapshot_index": f.snapshot_index,
        "hubs": hubs,
        "spokes": spokes.iter().map(|v| {
            let mut j = serde_json::to_value(v).unwrap_or_default();
            // Entries its replica is behind the leader's log (on the leader only).
            j["replica_lag"] = f.lag.get(&nave_consensus::node::learner_id(&v.id)).copied().into();
            j
        }).collect::<Vec<_>>(),
        "models": models,
    }))
}

/// The HTTP routes of a hub.
pub fn router(hub: Arc<Hub>) -> Router {
    let limit = hub.config.cluster.max_body_bytes.0 as usize;
    let body_limits =
        serve::BodyLimits { max_bytes: limit, timeout: Duration::from_millis(hub.config.cluster.body_timeout_ms) };
    let protected = Router::new()
        .route("/v1/chat/completions", post(api::chat_completions))
        .route("/v1/completions", post(api::completions))
        .route("/v1/models", get(api::models))
        .route("/v1/responses", post(api::responses))
        .route("/v1/responses/{id}", get(api::get_response))
        .route("/api/chat", post(api::ollama_chat))
        .route("/api/generate", post(api::ollama_generate))
        .route("/api/tags", get(api::ollama_tags))
        .route("/admin/v1/status", get(admin_status))
        .route("/admin/v1/keys", get(admin::list_keys).post(admin::create_key))
        .route("/admin/v1/keys/{name}", get(admin::get_key).delete(admin::revoke_key))
        .route("/admin/v1/spokes/{id}/drain", post(admin::drain_spoke))
        .route("/admin/v1/spokes/{id}", axum::routing::delete(admin::remove_spoke))
        .route("/admin/v1/tokens", post(admin::create_token))
        .route("/admin/v1/hubs", get(admin::list_hubs).post(admin::add_hub))
        .route("/admin/v1/hubs/{id}", axum::routing::delete(admin::remove_hub))
        .route("/admin/v1/train", get(train::list).post(train::submit))
        .route("/admin/v1/train/{name}", axum::routing::delete(train::cancel))
        .route_layer(middleware::from_fn_with_state(hub.clone(), auth));
    Router::new()
        .merge(protected)
        .route("/api/version", get(api::ollama_version))
        .route("/health", get(api::health))
        .route("/ready", get(api::ready))
        .route("/metrics", get(api::metrics))
        .layer(middleware::from_fn_with_state(body_limits, serve::read_body))
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(shape_errors))
        .layer(middleware::from_fn(request_span))
        .with_state(hub)
}

/// Every request runs in a span carrying its id (`X-Request-Id`, or a new one, set on
/// the request for the handlers and echoed on the response): every log line written
/// while it is handled names it, and the OTLP exporter makes its trace from it.
async fn request_span(mut req: axum::extract::Request, next: middleware::Next) -> axum::response::Response {
    use tracing::Instrument;
    let given =
        req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).filter(|s| !s.is_empty() && s.len() <= 128);
    let id = given.map(str::to_string).unwrap_or_else(api::random_id);
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        req.headers_mut().insert("x-request-id", v);
    }
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path(), status = tracing::field::Empty);
    let mut resp = next.run(req).instrument(span.clone()).await;
    span.record("status", resp.status().as_u16());
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        resp.headers_mut().entry("x-request-id").or_insert(v);
    }
    resp
}

/// Serves the hub's QUIC port: Raft peers (ALPN `nave-raft/1`, certificate required)
/// and joining spokes (`nave-join/1`, the only protocol open without one).
async fn accept_peers(endpoint: quinn::Endpoint, hub: Arc<Hub>) {
    while let Some(incoming) = endpoint.accept().await {
        let hub = hub.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => return tracing::debug!(error = %e, "peer handshake refused"),
            };
            match tls::alpn(&conn).as_deref() {
                // Refuses peers without a hub's certificate.
                Some(tls::ALPN_RAFT) => hub.consensus.clone().serve_connection(conn).await,
                Some(tls::ALPN_JOIN) => join::serve(hub, conn).await,
                _ => conn.close(1u32.into(), b"unsupported protocol"),
            }
        });
    }
}

/// Every spoke (of the config, or joined) holds a replica of the state as a Raft learner:
/// the leader adds the missing ones and removes those gone from the registry.
async fn keep_learners(hub: Arc<Hub>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let joined = hub
            .consensus
            .state
            .read(|a| a.state.spokes.values().map(|s| (s.id.clone(), s.quic.clone())).collect::<Vec<_>>());
        let config_spokes = hub.config.spokes.iter().map(|s| (s.id.clone(), s.quic.to_string()));
        let want: std::collections::BTreeMap<_, _> = config_spokes
            .chain(joined)
            .filter_map(|(id, quic)| {
                Some((
                    nave_consensus::node::learner_id(&id),
                    nave_consensus::network::node_addr(&id, quic.parse().ok()?),
                ))
            })
            .collect();
        if let Err(e) = hub.consensus.ensure_learners(&want).await {
            tracing::debug!(error = %e, "spoke replicas not updated yet");
        }
    }
}

/// Keeps the hub's set of joined spokes in line with the replicated registry.
async fn follow_registry(hub: Arc<Hub>) {
    let mut seen = None;
    loop {
        let registry = hub.consensus.state.read(|a| a.state.spokes.clone());
        if seen.as_ref() != Some(&registry) {
            hub.spokes.sync_joined(&registry);
            for m in hub.models() {
                hub.metrics.add_model(&m);
            }
            seen = Some(registry);
        }
        // Adapters the spokes announce and the replicated state does not list yet. Every
        // hub may propose; the proposal id makes it apply once.
        let known = hub.consensus.state.read(|a| a.state.adapters.clone());
        for (spoke, model, name) in hub.spokes.announced_adapters() {
            let listed = known.get(&format!("{model}:{name}")).is_some_and(|s| s.contains(&spoke));
            if !listed {
                let p = Proposal {
                    id: format!("adapter-{spoke}-{model}-{name}"),
                    now_ms: now_ms(),
                    command: Command::RegisterAdapter {
                        model: model.clone(),
                        name: name.clone(),
                        spoke: spoke.clone(),
                    },
                };
                if let Err(e) = hub.consensus.propose(p).await {
                    tracing::debug!(error = %e, "adapter registration deferred");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs hub `id` of `config` until `shutdown` completes, then drains: readiness goes 503,
/// in-flight requests finish, connections close.
pub async fn run(
    config: ClusterConfig,
    id: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let spec = config.hub(&id)?.clone();
    let dir = config.node_dir(&id);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = ClusterCa::load_or_create(&config.ca_dir())?;
    let identity = ca.ensure_hub(&dir, &id)?;
    let admin = ensure_admin_key(&config.cluster.data_dir)?;
    let endpoint = tls::hub_endpoint(&identity, spec.quic, &[tls::ALPN_RAFT, tls::ALPN_JOIN])?;
    let role = if spec.join {
        Role::Added
    } else {
        Role::Founder(
            config
                .hubs
                .iter()
                .filter(|h| !h.join)
                .enumerate()
                .map(|(i, h)| (i as u64 + 1, node_addr(&h.id, h.quic)))
                .collect(),
        )
    };
    let rid = raft_id(&config, &id).context("hub id not in config")?;
    let consensus = ConsensusNode::start(&dir, rid, role, endpoint.clone(), &identity).await?;
    let spokes = SpokeSet::new(&config, &identity, endpoint.clone())?;
    spokes.spawn_watchers();
    let c = &config.cluster;
    let hub = Arc::new(Hub {
        id: id.clone(),
        spokes,
        metrics: metrics::Metrics::new(config.served_models()),
        request_timeout: Duration::from_millis(c.request_timeout_ms),
        shutting_down: AtomicBool::new(false),
        admin_digest: Sha256::digest(admin.as_bytes()).into(),
        slots: Arc::new(Semaphore::new(c.max_concurrent_requests * 2)),
        config: config.clone(),
        consensus: consensus.clone(),
        ca,
    });
    tokio::spawn(accept_peers(endpoint.clone(), hub.clone()));
    tokio::spawn(follow_registry(hub.clone()));
    tokio::spawn(keep_learners(hub.clone()));
    let listener =
        tokio::net::TcpListener::bind(spec.http).await.with_context(|| format!("binding HTTP on {}", spec.http))?;
    tracing::info!(hub = %id, http = %spec.http, quic = %spec.quic, "hub serving");
    let flag = hub.clone();
    let graceful = async move {
        shutdown.await;
        flag.shutting_down.store(true, Ordering::Relaxed);
        tracing::info!("draining");
    };
    let header_timeout = Duration::from_millis(c.header_timeout_ms);
    let drain = Duration::from_millis(c.request_timeout_ms);
    serve::serve(listener, router(hub), header_timeout, drain, graceful).await;
    consensus.shutdown().await;
    endpoint.close(quinn::VarInt::from_u32(0), b"shutdown");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Hubs that start together on one data directory end up with one admin key.
    #[test]
    fn hubs_starting_together_agree_on_one_admin_key() {
        let dir = tempfile::tempdir().expect("dir");
        let keys: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> =
                (0..6).map(|_| s.spawn(|| super::ensure_admin_key(dir.path()).expect("key"))).collect();
            handles.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
        assert_eq!(super::ensure_admin_key(dir.path()).expect("key"), keys[0]);
    }
}
