//! One hub process: [`run`] starts its consensus node, its spoke connections, its QUIC
//! listener (Raft peers, joining spokes) and its HTTP server, keeps the background tasks
//! that follow the replicated registry, and drains everything on shutdown.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use nave_consensus::network::node_addr;
use nave_consensus::node::{ConsensusNode, Role};
use nave_consensus::state::{Command, Proposal};
use nave_consensus::tls::{self, ClusterCa};
use nave_consensus::ClusterConfig;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::spokes::SpokeSet;
use crate::{auth, join, metrics, raft_id, serve, Hub};

/// Serves the hub's QUIC port: Raft peers (ALPN `nave-raft/1`, certificate required),
/// spokes renewing their certificates (`nave-renew/1`, certificate required) and joining
/// spokes (`nave-join/1`, the only protocol open without one).
async fn accept_peers(endpoint: quinn::Endpoint, hub: Arc<Hub>) {
    while let Some(incoming) = endpoint.accept().await {
        let hub = hub.clone();
        tokio::spawn(async move {
            // A peer with a certificate gets a node's stream limits; a stranger keeps the
            // small ones it started with.
            let conn = match tls::accept(incoming).await {
                Ok(c) => c,
                Err(e) => return tracing::debug!(error = %e, "peer handshake refused"),
            };
            match tls::alpn(&conn).as_deref() {
                // Refuses peers without a hub's certificate.
                Some(tls::ALPN_RAFT) => hub.consensus.clone().serve_connection(conn).await,
                Some(tls::ALPN_JOIN) => join::serve(hub, conn).await,
                // Refuses peers without a certificate.
                Some(tls::ALPN_RENEW) => crate::certs::serve_renewal(hub, conn).await,
                _ => conn.close(1u32.into(), b"unsupported protocol"),
            }
        });
    }
}

/// Every spoke (of the config, or joined) holds a replica of the state as a Raft learner:
/// the leader adds the missing ones and removes those gone from the registry. It looks
/// again when the state or this hub's role changes, at most once a second (and a second
/// after a failed change).
async fn keep_learners(hub: Arc<Hub>) {
    let mut applied = hub.consensus.watch_applied();
    let mut server = hub.consensus.raft.server_metrics();
    loop {
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
        let retry = match hub.consensus.ensure_learners(&want).await {
            Ok(()) => RECHECK,
            Err(e) => {
                tracing::debug!(error = %e, "spoke replicas not updated yet");
                Duration::ZERO
            }
        };
        // At most one pass a second however often the state changes.
        tokio::time::sleep(Duration::from_secs(1)).await;
        tokio::select! {
            r = applied.changed() => if r.is_err() { return },
            r = server.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

/// How long the state-following loops wait without a change before they look anyway
/// (none is needed: a bound).
const RECHECK: Duration = Duration::from_secs(30);

/// Keeps the hub's set of joined spokes in line with the replicated registry, and
/// registers the adapters the spokes announce. It looks again when the state changes or
/// a heartbeat announces other adapters, at most four times a second (and 250 ms after a
/// deferred registration).
async fn follow_registry(hub: Arc<Hub>) {
    let mut applied = hub.consensus.watch_applied();
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
        let mut deferred = false;
        for (spoke, model, name) in hub.spokes.announced_adapters() {
            let listed = known.get(&format!("{model}:{name}")).is_some_and(|s| s.contains(&spoke));
            if !listed {
                let p = Proposal {
                    id: format!("adapter-{spoke}-{model}-{name}"),
                    now_ms: nave_consensus::clock::now_ms(),
                    command: Command::RegisterAdapter {
                        model: model.clone(),
                        name: name.clone(),
                        spoke: spoke.clone(),
                    },
                };
                if let Err(e) = hub.consensus.propose(p).await {
                    tracing::debug!(error = %e, "adapter registration deferred");
                    deferred = true;
                }
            }
        }
        // At most four passes a second however often the state changes (a loaded
        // cluster applies hundreds of entries a second).
        tokio::time::sleep(Duration::from_millis(250)).await;
        let wait = if deferred { Duration::ZERO } else { RECHECK };
        tokio::select! {
            r = applied.changed() => if r.is_err() { return },
            _ = hub.spokes.adapters_changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
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
    // HTTPS first: a certificate that cannot serve stops the hub before it joins anything.
    let https = match (&spec.tls_cert, &spec.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(
            tls::https_config(cert, key).with_context(|| format!("hub {id}: tls_cert / tls_key in the config"))?,
        )),
        _ => None,
    };
    let dir = config.node_dir(&id);
    nave_consensus::files::private_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = ClusterCa::load_or_create(&config.ca_dir())?;
    let identity = ca.ensure_hub(&dir, &id, config.cluster.cert_lifetime())?;
    let admin = auth::ensure_admin_key(&config.cluster.data_dir)?;
    let endpoint = tls::hub_endpoint(&identity, spec.quic, &[tls::ALPN_RAFT, tls::ALPN_JOIN, tls::ALPN_RENEW])?;
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
        identity: identity.clone(),
        history: Default::default(),
    });
    // Another hub may ask this one to renew its certificate (`nave admin cert rotate`).
    let weak = Arc::downgrade(&hub);
    consensus.on_rotate(Arc::new(move || {
        let hub = weak.upgrade().ok_or_else(|| "the hub is stopping".to_string())?;
        crate::certs::renew_own(&hub).map(|v| v.not_after).map_err(|e| format!("{e:#}"))
    }));
    tokio::spawn(accept_peers(endpoint.clone(), hub.clone()));
    tokio::spawn(follow_registry(hub.clone()));
    tokio::spawn(keep_learners(hub.clone()));
    tokio::spawn(crate::certs::keep_renewed(hub.clone()));
    tokio::spawn(crate::history::sample(hub.clone()));
    let listener =
        tokio::net::TcpListener::bind(spec.http).await.with_context(|| format!("binding HTTP on {}", spec.http))?;
    let scheme = if https.is_some() { "https" } else { "http" };
    tracing::info!(hub = %id, http = %spec.http, quic = %spec.quic, scheme, "hub serving");
    let flag = hub.clone();
    let graceful = async move {
        shutdown.await;
        flag.shutting_down.store(true, Ordering::Relaxed);
        tracing::info!("draining");
    };
    let header_timeout = Duration::from_millis(c.header_timeout_ms);
    let drain = Duration::from_millis(c.request_timeout_ms);
    serve::serve(listener, crate::api::router(hub), header_timeout, drain, https, graceful).await;
    consensus.shutdown().await;
    endpoint.close(quinn::VarInt::from_u32(0), b"shutdown");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    Ok(())
}
