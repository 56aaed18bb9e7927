//! The spoke process: loads its models into engines, serves inference streams over QUIC
//! with mutual TLS, sends heartbeats to subscribed hubs, and answers `/health` and
//! `/metrics` over HTTP.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use nave_consensus::frame::{read_frame, write_frame};
use nave_consensus::tls::{self, ClusterCa, NodeIdentity};
use nave_consensus::{ClusterConfig, SpokeConfig};
use nave_inference::device::Placement;
use nave_inference::store::ModelStore;
use nave_inference::{Engine, EngineConfig, Error as EngineError, Event, Ledger, LoadOptions, LoadedModel};
use tokio::sync::Mutex;
use tracing::Instrument;

use crate::protocol::{Heartbeat, HubToSpoke, ModelLoad, SpokeToHub, MAX_FRAME};

/// Everything a spoke's tasks share.
pub struct Spoke {
    pub id: String,
    pub engines: HashMap<String, Arc<Engine>>,
    /// Each model's GGUF file (fine-tuning reads the weights from it).
    pub model_paths: crate::train::ModelPaths,
    pub jobs: crate::train::Jobs,
    pub ledger: Ledger,
    pub draining: AtomicBool,
    /// The spoke's read-only replica of the cluster state (a Raft learner).
    pub replica: Arc<nave_consensus::node::ConsensusNode>,
    /// The certificate it presents (renewed in place, see [`crate::certs`]), where it
    /// keeps it, and the endpoint it dials hubs from.
    pub identity: NodeIdentity,
    pub node_dir: std::path::PathBuf,
    pub endpoint: quinn::Endpoint,
    heartbeat_every: Duration,
    rate: Mutex<RateWindow>,
}

/// Output tokens per second, measured between heartbeats.
struct RateWindow {
    at: Instant,
    tokens: u64,
    rate: f64,
}

impl Spoke {
    pub async fn heartbeat(&self) -> Heartbeat {
        let models: Vec<ModelLoad> = self
            .engines
            .iter()
            .map(|(m, e)| ModelLoad {
                model: m.clone(),
                stats: e.stats(),
                adapters: e.adapters(),
                context: e.context_length(),
                prompt_overhead: e.prompt_overhead(),
            })
            .collect();
        let tokens: u64 = models.iter().map(|m| m.stats.generated_tokens).sum();
        let mut w = self.rate.lock().await;
        let dt = w.at.elapsed().as_secs_f64();
        if dt >= 1.0 {
            w.rate = tokens.saturating_sub(w.tokens) as f64 / dt;
            w.tokens = tokens;
            w.at = Instant::now();
        }
        Heartbeat {
            spoke_id: self.id.clone(),
            models,
            draining: self.draining.load(Ordering::Relaxed),
            memory: self.ledger.snapshot(),
            tokens_per_s: w.rate,
        }
    }
}

/// The node's certificate: made from the local cluster CA on first start (`nave up`
/// creates the CA), or already present (a joined machine).
pub fn identity(config: &ClusterConfig, id: &str) -> anyhow::Result<NodeIdentity> {
    let dir = config.node_dir(id);
    let lifetime = config.cluster.cert_lifetime();
    if dir.join("node.pem").exists() {
        let identity = NodeIdentity::load(&dir, id)?;
        // With the CA at hand (`nave up` on one machine) an old certificate is renewed
        // now; elsewhere the running spoke renews it through a hub.
        if identity.validity().needs_renewal(tls::unix_now(), lifetime) {
            if let Ok(ca) = ClusterCa::load(&config.ca_dir()) {
                return Ok(ca.ensure_node(&dir, id, lifetime)?);
            }
        }
        return Ok(identity);
    }
    let ca = ClusterCa::load_or_create(&config.ca_dir())?;
    Ok(ca.ensure_node(&dir, id, lifetime)?)
}

/// Loads every model of the spoke (pulling missing ones) and starts its engines.
pub fn load_engines(
    spec: &SpokeConfig,
    settings: &ModelSettings,
    ledger: &Ledger,
) -> anyhow::Result<(HashMap<String, Arc<Engine>>, crate::train::ModelPaths)> {
    let store = ModelStore::from_env();
    let device = spec.device.parse::<Placement>()?.open()?;
    if let Some(d) = &device {
        tracing::info!(device = %spec.device, location = ?d.location(), "models run on the device");
    }
    let mut engines = HashMap::new();
    let mut paths = HashMap::new();
    for entry in &spec.models {
        let name = &nave_consensus::config::model_name(entry);
        let path = store.locate(entry, &mut |p| tracing::info!(?p, "pulling model"))?;
        let mut model =
            LoadedModel::load(name.clone(), &path, LoadOptions { device: device.clone(), ..Default::default() })
                .with_context(|| format!("loading model {name} from {}", path.display()))?;
        if let Some(context) = settings.get(name.as_str()).and_then(|m| m.context) {
            // The config may only narrow the model's own context.
            let own = &mut model.transformer.config.context;
            *own = (*own).min(context);
        }
        let config = EngineConfig {
            kv_pool_bytes: spec.kv_pool.0 / spec.models.len() as u64,
            max_running: spec.max_running,
            max_batch_tokens: spec.max_batch_tokens,
            ..EngineConfig::default()
        };
        engines.insert(name.clone(), Arc::new(Engine::start(model, config, ledger)?));
        paths.insert(name.clone(), path);
        tracing::info!(model = %name, "engine ready");
    }
    Ok((engines, paths))
}

/// Runs spoke `id` of `config` until `shutdown` completes.
pub async fn run(config: ClusterConfig, id: String, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let spec = config.spoke(&id)?.clone();
    let dir = config.node_dir(&id);
    nave_consensus::files::private_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let identity = identity(&config, &id)?;
    let heartbeat = Duration::from_millis(config.cluster.heartbeat_interval_ms);
    serve(spec, config.models.clone(), dir, identity, heartbeat, shutdown).await
}

/// `[models.NAME]` of cluster.toml (a joined spoke has none).
pub type ModelSettings = std::collections::BTreeMap<String, nave_consensus::config::ModelPolicy>;

/// Loads the spoke's models and serves them with `identity` until `shutdown` completes.
/// The engines run on candle's own worker threads; rayon's pool serves only fine-tuning's
/// f32 products, so its threads run at the lowest priority.
pub async fn serve(
    spec: SpokeConfig,
    settings: ModelSettings,
    node_dir: std::path::PathBuf,
    identity: NodeIdentity,
    heartbeat_every: Duration,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let id = spec.id.clone();
    // Fails only if the pool exists already (then it keeps its priority).
    let _ = rayon::ThreadPoolBuilder::new().start_handler(|_| crate::train::lower_priority()).build_global();
    // A device that cannot be used stops the spoke here, with the reason (no driver, no
    // such device, a build without CUDA, partitions larger than the device).
    let placement: Placement = spec.device.parse()?;
    let ledger = Ledger::for_device(placement, spec.serving_reserve.0, spec.training_limit.0)?;
    let (engines, model_paths) = {
        let (spec, ledger) = (spec.clone(), ledger.clone());
        tokio::task::spawn_blocking(move || load_engines(&spec, &settings, &ledger)).await??
    };
    let jobs = crate::train::Jobs::new(&id, &node_dir, spec.training_share);
    jobs.load_saved(&engines);
    // One QUIC port: inference streams from hubs, and Raft replication to the replica.
    let endpoint = tls::endpoint(&identity, spec.quic, &[tls::ALPN_SPOKE, tls::ALPN_RAFT])?;
    let replica = nave_consensus::node::ConsensusNode::start_learner(
        &node_dir,
        nave_consensus::node::learner_id(&id),
        endpoint.clone(),
        &identity,
    )
    .await?;
    let spoke = Arc::new(Spoke {
        id: id.clone(),
        engines,
        model_paths,
        jobs,
        ledger,
        draining: AtomicBool::new(false),
        replica,
        identity,
        node_dir,
        endpoint: endpoint.clone(),
        heartbeat_every,
        rate: Mutex::new(RateWindow { at: Instant::now(), tokens: 0, rate: 0.0 }),
    });

    let http =
        tokio::net::TcpListener::bind(spec.http).await.with_context(|| format!("binding HTTP on {}", spec.http))?;
    let http_task = tokio::spawn(crate::http::serve(http, spoke.clone()));
    let renew_task = tokio::spawn(crate::certs::keep_renewed(spoke.clone()));
    tracing::info!(spoke = %id, quic = %spec.quic, http = %spec.http, "spoke serving");

    let accept = {
        let endpoint = endpoint.clone();
        let spoke = spoke.clone();
        async move {
            while let Some(incoming) = endpoint.accept().await {
                let spoke = spoke.clone();
                tokio::spawn(async move {
                    match incoming.await {
                        // The replica takes the log from hubs only (serve_connection refuses
                        // any other peer), never from another spoke.
                        Ok(conn) if tls::alpn(&conn).as_deref() == Some(tls::ALPN_RAFT) => {
                            spoke.replica.clone().serve_connection(conn).await
                        }
                        // Requests come from hubs only.
                        Ok(conn) if tls::peer_is_hub(&conn) => serve_connection(conn, spoke).await,
                        Ok(conn) => conn.close(3u32.into(), b"spokes serve hubs: a hub's certificate is required"),
                        Err(e) => tracing::debug!(error = %e, "handshake refused"),
                    }
                });
            }
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = shutdown => tracing::info!("shutting down"),
    }
    // Drain: no new streams; give running requests a bounded time to finish.
    spoke.draining.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && spoke.engines.values().any(|e| {
            let s = e.stats();
            s.running + s.waiting > 0
        })
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    spoke.replica.shutdown().await;
    endpoint.close(quinn::VarInt::from_u32(0), b"shutdown");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    http_task.abort();
    renew_task.abort();
    Ok(())
}

/// Serves one hub's inference streams. A hub whose certificate the replicated state
/// revokes (a removed hub) is refused, on every stream: from the moment this spoke's
/// replica applies the revocation, even on a connection it already held.
async fn serve_connection(conn: quinn::Connection, spoke: Arc<Spoke>) {
    let peer = tls::peer_names(&conn).into_iter().next().unwrap_or_default();
    loop {
        match conn.accept_bi().await {
            Ok(_) if spoke.replica.is_revoked(&peer) => {
                tracing::warn!(%peer, "a revoked hub's certificate; closing its connection");
                conn.close(4u32.into(), b"this node's certificate is revoked");
                return;
            }
            Ok((send, recv)) => {
                let spoke = spoke.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_stream(send, recv, spoke).await {
                        tracing::debug!(error = %e, "stream ended with an error");
                    }
                });
            }
            Err(_) => return,
        }
    }
}

/// Sends the engine's events for one request until its end; the hub stopping the stream
/// (its client went away) drops `events`, which cancels the sequence.
async fn stream_events(
    send: &mut quinn::SendStream,
    mut events: nave_inference::EventStream,
    choices: usize,
) -> anyhow::Result<()> {
    tracing::debug!("generating");
    let mut done = 0;
    loop {
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else {
                    write_frame(send, &SpokeToHub::Event(Event::Error { message: EngineError::EngineStopped.to_string(), client: false })).await?;
                    break;
                };
                // The request ends with the `Done` of its last choice, or an error.
                done += usize::from(matches!(ev, Event::Done { .. }));
                let last = done >= choices || matches!(ev, Event::Error { .. });
                // A failed write means the hub went away: returning drops `events`.
                write_frame(send, &SpokeToHub::Event(ev)).await?;
                if last {
                    break;
                }
            }
            _ = send.stopped() => {
                tracing::debug!("cancelled by the hub");
                return Ok(());
            }
        }
    }
    send.finish()?;
    Ok(())
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    spoke: Arc<Spoke>,
) -> anyhow::Result<()> {
    let Some(msg) = read_frame::<HubToSpoke, _>(&mut recv, MAX_FRAME).await? else { return Ok(()) };
    match msg {
        HubToSpoke::Generate { model, request } => {
            let refuse = |message: String, retryable: bool| SpokeToHub::Refused { message, retryable };
            let request_id = request.request_id.clone();
            let choices = request.params.n.max(1);
            let (base, adapter) = crate::protocol::split_model(&model);
            let Some(engine) = spoke.engines.get(base) else {
                write_frame(&mut send, &refuse(format!("model {model} is not served by spoke {}", spoke.id), true))
                    .await?;
                return Ok(send.finish()?);
            };
            if spoke.draining.load(Ordering::Relaxed) {
                write_frame(&mut send, &refuse(format!("spoke {} is draining", spoke.id), true)).await?;
                return Ok(send.finish()?);
            }
            let events = match engine.submit_with(request, adapter) {
                Ok(s) => s,
                Err(e) => {
                    let retryable = !e.is_client_error();
                    write_frame(&mut send, &refuse(e.to_string(), retryable)).await?;
                    return Ok(send.finish()?);
                }
            };
            write_frame(&mut send, &SpokeToHub::Accepted).await?;
            let span = tracing::info_span!("generate", request_id = %request_id, model = %model);
            stream_events(&mut send, events, choices).instrument(span).await?;
        }
        HubToSpoke::Subscribe => loop {
            let hb = spoke.heartbeat().await;
            write_frame(&mut send, &SpokeToHub::Heartbeat(hb)).await?;
            tokio::time::sleep(spoke.heartbeat_every).await;
        },
        HubToSpoke::Train(spec) => {
            let s = spoke.clone();
            let submitted =
                tokio::task::spawn_blocking(move || s.jobs.submit(spec, &s.engines, &s.model_paths, &s.ledger)).await?;
            let reply = match submitted {
                Ok(()) => SpokeToHub::Jobs(spoke.jobs.statuses()),
                Err(message) => SpokeToHub::Refused { message, retryable: false },
            };
            write_frame(&mut send, &reply).await?;
            send.finish()?;
        }
        HubToSpoke::Jobs => {
            write_frame(&mut send, &SpokeToHub::Jobs(spoke.jobs.statuses())).await?;
            send.finish()?;
        }
        HubToSpoke::CancelJob(name) => {
            let reply = match spoke.jobs.cancel(&name) {
                Ok(()) => SpokeToHub::Jobs(spoke.jobs.statuses()),
                Err(message) => SpokeToHub::Refused { message, retryable: false },
            };
            write_frame(&mut send, &reply).await?;
            send.finish()?;
        }
        HubToSpoke::RotateCert => {
            let reply = match crate::certs::renew(&spoke).await {
                Ok(v) => SpokeToHub::Renewed { not_after: v.not_after },
                Err(e) => SpokeToHub::Refused { message: format!("{e:#}"), retryable: false },
            };
            write_frame(&mut send, &reply).await?;
            send.finish()?;
        }
        HubToSpoke::Drain(on) => {
            spoke.draining.store(on, Ordering::Relaxed);
            write_frame(&mut send, &SpokeToHub::Heartbeat(spoke.heartbeat().await)).await?;
            send.finish()?;
        }
    }
    Ok(())
}
