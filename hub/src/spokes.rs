//! The hub's view of the spokes: one QUIC connection per spoke (mutual TLS, redialled with
//! backoff), a heartbeat subscription on it, and a circuit breaker. `candidates` lists the
//! spokes a request for a model may go to; `open` starts a request stream on one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nave_consensus::frame::{read_frame, write_frame};
use nave_consensus::tls::{NodeIdentity, ALPN_SPOKE};
use nave_consensus::{ClusterConfig, SpokeConfig};
use nave_spoke::protocol::{Heartbeat, HubToSpoke, SpokeToHub, MAX_FRAME};

use crate::circuit::Circuit;
use crate::policy::Candidate;
use nave_consensus::sync::lock;

/// What the hub knows of one spoke. The mutex is never held across an await.
pub struct SpokeState {
    pub spec: SpokeConfig,
    conn: Option<quinn::Connection>,
    pub heartbeat: Option<Heartbeat>,
    pub last_heard: Option<Instant>,
    pub circuit: Circuit,
    /// Joined with a token (not in cluster.toml); may be removed.
    pub joined: bool,
    removed: bool,
    /// Seconds to first event of recent requests, and whether each succeeded.
    recent: VecDeque<(f64, bool)>,
    /// This hub's requests streaming from the spoke now.
    in_flight: Arc<AtomicUsize>,
}

/// One request counted in a spoke's in-flight figure until dropped.
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct SpokeSet {
    /// The config's spokes, then the joined ones (from the replicated state).
    spokes: std::sync::RwLock<Vec<Arc<Mutex<SpokeState>>>>,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    heartbeat_timeout: Duration,
    circuit: (u32, Duration),
    /// Signalled when a heartbeat announces other adapters than the spoke's last one.
    announced: tokio::sync::Notify,
}

/// Summary of a spoke for status and metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SpokeView {
    pub id: String,
    pub models: Vec<String>,
    pub state: &'static str,
    pub circuit: &'static str,
    pub queue: usize,
    pub running: usize,
    pub tokens_per_s: f64,
    pub kv_blocks_free: usize,
    pub kv_blocks_total: usize,
    pub serving_used: u64,
    pub serving_total: u64,
    pub training_used: u64,
    pub training_total: u64,
    pub last_heard_ms: Option<u64>,
    pub joined: bool,
}

impl SpokeSet {
    pub fn new(
        config: &ClusterConfig,
        identity: &NodeIdentity,
        endpoint: quinn::Endpoint,
    ) -> nave_consensus::Result<Arc<Self>> {
        let c = &config.cluster;
        let circuit = || Circuit::new(c.circuit_failures, Duration::from_millis(c.circuit_open_ms));
        let spokes = config
            .spokes
            .iter()
            .map(|s| {
                let mut spec = s.clone();
                spec.models = spec.models.iter().map(|m| nave_consensus::config::model_name(m)).collect();
                Arc::new(Mutex::new(SpokeState::new(spec, circuit(), false)))
            })
            .collect();
        Ok(Arc::new(Self {
            spokes: std::sync::RwLock::new(spokes),
            circuit: (c.circuit_failures, Duration::from_millis(c.circuit_open_ms)),
            endpoint,
            client: identity.client_config(ALPN_SPOKE)?,
            heartbeat_timeout: Duration::from_millis(c.heartbeat_timeout_ms),
            announced: tokio::sync::Notify::new(),
        }))
    }

    /// Every spoke, config ones first.
    fn all(&self) -> Vec<Arc<Mutex<SpokeState>>> {
        nave_consensus::sync::read(&self.spokes).clone()
    }

    /// Keeps a connection and a heartbeat subscription to every spoke, forever.
    pub fn spawn_watchers(self: &Arc<Self>) {
        for s in self.all() {
            self.spawn_watcher(s);
        }
    }

    fn spawn_watcher(self: &Arc<Self>, s: Arc<Mutex<SpokeState>>) {
        let set = self.clone();
        tokio::spawn(async move { set.watch(s).await });
    }

    /// Brings the joined spokes in line with the replicated registry: new ones are dialled,
    /// removed ones dropped. Config spokes are never touched.
    pub fn sync_joined(
        self: &Arc<Self>,
        registry: &std::collections::BTreeMap<String, nave_consensus::state::SpokeRecord>,
    ) {
        let mut list = nave_consensus::sync::write(&self.spokes);
        list.retain(|s| {
            let mut g = lock(s);
            let keep = !g.joined || registry.contains_key(&g.spec.id);
            if !keep {
                tracing::info!(spoke = %g.spec.id, "spoke removed from the cluster");
                g.removed = true;
                if let Some(c) = g.conn.take() {
                    c.close(0u32.into(), b"removed");
                }
            }
            keep
        });
        for (id, r) in registry {
            if list.iter().any(|s| lock(s).spec.id == *id) {
                continue;
            }
            let Ok(quic) = r.quic.parse() else {
                tracing::warn!(spoke = %id, quic = %r.quic, "joined spoke with an unusable address");
                continue;
            };
            let spec = SpokeConfig {
                id: id.clone(),
                http: r.http.parse().unwrap_or(quic),
                quic,
                models: r.models.clone(),
                device: String::new(),
                serving_reserve: Default::default(),
                training_limit: Default::default(),
                training_share: 0.25,
                kv_pool: Default::default(),
                cost_weight: r.cost_weight,
                labels: r.labels.clone(),
                threads: None,
                max_running: 0,
                max_batch_tokens: 0,
            };
            tracing::info!(spoke = %id, %quic, models = ?r.models, "joined spoke added");
            let s = Arc::new(Mutex::new(SpokeState::new(spec, Circuit::new(self.circuit.0, self.circuit.1), true)));
            list.push(s.clone());
            self.spawn_watcher(s);
        }
    }

    /// Models some spoke serves (config or joined), sorted.
    pub fn models(&self) -> Vec<String> {
        let mut m: Vec<String> = self.all().iter().flat_map(|s| lock(s).spec.models.clone()).collect();
        m.sort();
        m.dedup();
        m
    }

    async fn watch(&self, s: Arc<Mutex<SpokeState>>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let (addr, id) = {
                let g = lock(&s);
                if g.removed {
                    return;
                }
                (g.spec.quic, g.spec.id.clone())
            };
            match self.subscribe(&s, addr, &id).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => tracing::debug!(spoke = %id, error = %e, "spoke unreachable"),
            }
            lock(&s).conn = None;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn subscribe(&self, s: &Mutex<SpokeState>, addr: std::net::SocketAddr, id: &str) -> anyhow::Result<()> {
        let conn = self.endpoint.connect_with(self.client.clone(), addr, id)?.await?;
        lock(s).conn = Some(conn.clone());
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(&mut send, &HubToSpoke::Subscribe).await?;
        tracing::info!(spoke = %id, "connected");
        while let Some(msg) = read_frame::<SpokeToHub, _>(&mut recv, MAX_FRAME).await? {
            if let SpokeToHub::Heartbeat(hb) = msg {
                self.heard(s, hb);
            }
        }
        Ok(())
    }

    /// Spokes a request for `model` may go to now, excluding `tried`.
    pub fn candidates(&self, model: &str, tried: &[String]) -> Vec<Candidate> {
        let now = Instant::now();
        self.all()
            .iter()
            .filter_map(|s| {
                let g = lock(s);
                let hb = g.heartbeat.as_ref()?;
                let fresh = g.last_heard.is_some_and(|t| now.duration_since(t) < self.heartbeat_timeout);
                if !fresh
                    || hb.draining
                    || g.conn.is_none()
                    || tried.contains(&g.spec.id)
                    || !g.circuit.is_available(now)
                {
                    return None;
                }
                let load = hb.load(model)?.max(g.in_flight.load(Ordering::Relaxed));
                let (p95_s, availability) = g.latency_figures();
                Some(Candidate { id: g.spec.id.clone(), load, cost_weight: g.spec.cost_weight, p95_s, availability })
            })
            .collect()
    }

    /// Counts a request as running on spoke `id` until the guard is dropped.
    pub fn in_flight(&self, id: &str) -> Option<InFlight> {
        let s = self.find(id)?;
        let counter = lock(&s).in_flight.clone();
        counter.fetch_add(1, Ordering::Relaxed);
        Some(InFlight(counter))
    }

    fn find(&self, id: &str) -> Option<Arc<Mutex<SpokeState>>> {
        self.all().into_iter().find(|s| lock(s).spec.id == id)
    }

    /// Opens a request stream to spoke `id` and sends the request; takes the half-open
    /// probe slot if the circuit is half-open.
    pub async fn open(&self, id: &str, msg: &HubToSpoke) -> anyhow::Result<(quinn::SendStream, quinn::RecvStream)> {
        let s = self.find(id).ok_or_else(|| anyhow::anyhow!("unknown spoke {id}"))?;
        let conn = {
            let mut g = lock(&s);
            if !g.circuit.allow(Instant::now()) {
                anyhow::bail!("spoke {id}: circuit open");
            }
            g.conn.clone().ok_or_else(|| anyhow::anyhow!("spoke {id}: not connected"))?
        };
        let (mut send, recv) = conn.open_bi().await?;
        write_frame(&mut send, msg).await?;
        Ok((send, recv))
    }

    /// Sends `msg` to spoke `id` on a new stream and returns its one answer.
    pub async fn call(&self, id: &str, msg: &HubToSpoke) -> anyhow::Result<SpokeToHub> {
        let s = self.find(id).ok_or_else(|| anyhow::anyhow!("no spoke {id} in this cluster"))?;
        let conn = lock(&s).conn.clone().ok_or_else(|| anyhow::anyhow!("spoke {id} is not connected"))?;
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(&mut send, msg).await?;
        read_frame::<SpokeToHub, _>(&mut recv, MAX_FRAME)
            .await?
            .ok_or_else(|| anyhow::anyhow!("spoke {id} closed the stream without an answer"))
    }

    /// Keeps `hb` as the spoke's latest heartbeat.
    fn heard(&self, s: &Mutex<SpokeState>, hb: Heartbeat) {
        let adapters =
            |hb: &Heartbeat| hb.models.iter().map(|m| (m.model.clone(), m.adapters.clone())).collect::<Vec<_>>();
        let mut g = lock(s);
        let changed = g.heartbeat.as_ref().map(adapters) != Some(adapters(&hb));
        g.heartbeat = Some(hb);
        g.last_heard = Some(Instant::now());
        drop(g);
        if changed {
            self.announced.notify_one();
        }
    }

    /// Returns once a heartbeat has announced other adapters than before (at once if one
    /// did since the last call).
    pub async fn adapters_changed(&self) {
        self.announced.notified().await
    }

    /// (spoke, model, adapter) for every adapter the spokes' heartbeats announce.
    pub fn announced_adapters(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for s in self.all() {
            let g = lock(&s);
            for m in g.heartbeat.iter().flat_map(|hb| hb.models.iter()) {
                out.extend(m.adapters.iter().map(|a| (g.spec.id.clone(), m.model.clone(), a.clone())));
            }
        }
        out
    }

    /// What `f` reads from each connected spoke's heartbeat entry for `model`'s base model.
    fn model_facts<T>(&self, model: &str, f: impl Fn(&nave_spoke::protocol::ModelLoad) -> Option<T>) -> Vec<T> {
        let (base, _) = nave_spoke::protocol::split_model(model);
        self.all()
            .iter()
            .filter_map(|s| lock(s).heartbeat.as_ref()?.models.iter().find(|m| m.model == base).and_then(&f))
            .collect()
    }

    /// The longest context any connected spoke serves `model` (or its base model) with.
    pub fn context(&self, model: &str) -> Option<usize> {
        self.model_facts(model, |m| Some(m.context).filter(|&c| c > 0)).into_iter().max()
    }

    /// The largest template overhead any connected spoke reports for `model`'s base.
    pub fn prompt_overhead(&self, model: &str) -> Option<(usize, usize)> {
        self.model_facts(model, |m| m.prompt_overhead).into_iter().reduce(|a, b| (a.0.max(b.0), a.1.max(b.1)))
    }

    /// Whether some connected spoke serves `model` (a `base:adapter` name included).
    pub fn serves(&self, model: &str) -> bool {
        self.all().iter().any(|s| lock(s).heartbeat.as_ref().is_some_and(|hb| hb.load(model).is_some()))
    }

    /// Tells spoke `id` to stop (or resume) taking new requests; returns its heartbeat.
    pub async fn drain(&self, id: &str, on: bool) -> anyhow::Result<Heartbeat> {
        let s = self.find(id).ok_or_else(|| anyhow::anyhow!("no spoke {id} in this cluster"))?;
        let conn = lock(&s).conn.clone().ok_or_else(|| anyhow::anyhow!("spoke {id} is not connected"))?;
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(&mut send, &HubToSpoke::Drain(on)).await?;
        match read_frame::<SpokeToHub, _>(&mut recv, MAX_FRAME).await? {
            Some(SpokeToHub::Heartbeat(hb)) => {
                self.heard(&s, hb.clone());
                Ok(hb)
            }
            other => anyhow::bail!("unexpected answer from spoke {id}: {other:?}"),
        }
    }

    pub fn record(&self, id: &str, ok: bool, first_event_s: f64) {
        if let Some(s) = self.find(id) {
            let mut g = lock(&s);
            if ok {
                g.circuit.success();
            } else {
                g.circuit.failure(Instant::now());
            }
            g.recent.push_back((first_event_s, ok));
            if g.recent.len() > 100 {
                g.recent.pop_front();
            }
        }
    }

    /// Whether any spoke is ready to serve some model.
    pub fn any_ready(&self) -> bool {
        self.models().iter().any(|m| !self.candidates(m, &[]).is_empty())
    }

    pub fn views(&self) -> Vec<SpokeView> {
        let now = Instant::now();
        self.all()
            .iter()
            .map(|s| {
                let g = lock(s);
                let fresh = g.last_heard.is_some_and(|t| now.duration_since(t) < self.heartbeat_timeout);
                let hb = g.heartbeat.clone().unwrap_or_default();
                let (queue, running, free, total) = hb.models.iter().fold((0, 0, 0, 0), |a, m| {
                    (
                        a.0 + m.stats.waiting,
                        a.1 + m.stats.running,
                        a.2 + m.stats.kv_blocks_free,
                        a.3 + m.stats.kv_blocks_total,
                    )
                });
                SpokeView {
                    id: g.spec.id.clone(),
                    models: g.spec.models.clone(),
                    state: if !fresh {
                        "down"
                    } else if hb.draining && queue + running == 0 {
                        "drained"
                    } else if hb.draining {
                        "draining"
                    } else {
                        "active"
                    },
                    circuit: g.circuit.name(),
                    queue,
                    running,
                    tokens_per_s: hb.tokens_per_s,
                    kv_blocks_free: free,
                    kv_blocks_total: total,
                    serving_used: hb.memory.serving.used,
                    serving_total: hb.memory.serving.total,
                    training_used: hb.memory.training.used,
                    training_total: hb.memory.training.total,
                    last_heard_ms: g.last_heard.map(|t| now.duration_since(t).as_millis() as u64),
                    joined: g.joined,
                }
            })
            .collect()
    }
}

impl SpokeState {
    fn new(spec: SpokeConfig, circuit: Circuit, joined: bool) -> Self {
        Self {
            spec,
            conn: None,
            heartbeat: None,
            last_heard: None,
            circuit,
            joined,
            removed: false,
            recent: VecDeque::new(),
            in_flight: Arc::default(),
        }
    }

    fn latency_figures(&self) -> (f64, f64) {
        if self.recent.is_empty() {
            return (0.0, 1.0);
        }
        let mut lat: Vec<f64> = self.recent.iter().filter(|r| r.1).map(|r| r.0).collect();
        lat.sort_by(f64::total_cmp);
        let p95 = lat.get(lat.len().saturating_sub(1) * 95 / 100).copied().unwrap_or(0.0);
        let ok = self.recent.iter().filter(|r| r.1).count() as f64 / self.recent.len() as f64;
        (p95, ok)
    }
}
