//! Deterministic simulation of three hubs with turmoil: the real consensus node (openraft,
//! the QUIC network with mutual TLS, the batcher, the election guard) over turmoil's
//! simulated UDP, with the store's memory disk, under a seeded schedule of faults: hub
//! crashes and restarts, every hub crashed at once, partitions of one hub (the leader or
//! another), one-way cuts and packet loss. A crash loses what the hub's disk had not
//! flushed (its last committed log id, as on sled). Clients on every hub write and read
//! registers; every acknowledged write and every read is recorded and checked:
//! linearizable per key (todc-utils), no acknowledged write lost, the same state on every
//! hub after healing, and every hub answering again once healed.
//!
//! A second test cuts the leader off for 12 s and checks that it neither acknowledges a
//! write nor answers a read meanwhile.
//!
//! `SIM_SEEDS=N` runs seeds 1..=N (default 50), `SIM_SEED=S` only seed S (a failing
//! run prints its seed), `SIM_SECONDS` the simulated seconds of load per seed (default 20).
//! `SIM_LOG` (an env filter, such as `info,openraft=info`) logs what the nodes do, stamped
//! with the simulated time; `SIM_VERBOSE=1` prints each seed's faults.
//! Simulated time runs much faster than real time: a seed takes about a second here.

use std::collections::{BTreeMap, HashMap};
use std::io::IoSliceMut;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use nave_consensus::network::node_addr;
use nave_consensus::node::{raft_config, ConsensusNode, Role};
use nave_consensus::rng::XorShift;
use nave_consensus::state::{Command, CommandResult};
use nave_consensus::store::{open_memory, MemoryDisk};
use nave_consensus::tls::{self, ClusterCa, NodeIdentity};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use todc_utils::linearizability::history::{Action, History};
use todc_utils::linearizability::WGLChecker;
use todc_utils::specifications::Specification;

const HUBS: u64 = 3;
const PORT: u16 = 4100;
const KEYS: usize = 4;
const CLIENTS_PER_HUB: usize = 2;

// ---------------------------------------------------------------------------------------
// quinn over turmoil's UDP

type Readable = Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>>;

/// A turmoil UDP socket as quinn's socket: sends never block (turmoil has no backpressure
/// for UDP); a receive waits on the socket's readiness, kept between polls.
struct SimUdp {
    socket: Arc<turmoil::net::UdpSocket>,
    readable: Mutex<Option<Readable>>,
}

impl std::fmt::Debug for SimUdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimUdp").field("socket", &self.socket).finish()
    }
}

#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _: &mut Context) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for SimUdp {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> std::io::Result<()> {
        // One datagram per transmit (max_transmit_segments is 1).
        self.socket.try_send_to(transmit.contents, transmit.destination).map(|_| ())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<std::io::Result<usize>> {
        let mut readable = nave_consensus::sync::lock(&self.readable);
        loop {
            // The readiness future holds the socket's receive lock while it waits: try a
            // read only when none is pending.
            if readable.is_none() {
                match self.socket.try_recv_from(&mut bufs[0]) {
                    Ok((len, addr)) => {
                        meta[0] = RecvMeta { addr, len, stride: len, ecn: None, dst_ip: None };
                        return Poll::Ready(Ok(1));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
                let socket = self.socket.clone();
                *readable = Some(Box::pin(async move { socket.readable().await }));
            }
            match readable.as_mut().map(|f| f.as_mut().poll(cx)) {
                Some(Poll::Ready(r)) => {
                    *readable = None;
                    r?;
                }
                _ => return Poll::Pending,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

async fn sim_endpoint(identity: &NodeIdentity) -> std::io::Result<quinn::Endpoint> {
    let socket = turmoil::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, PORT)).await?;
    let server = identity.server_config(&[tls::ALPN_RAFT]).map_err(std::io::Error::other)?;
    let udp = Arc::new(SimUdp { socket: Arc::new(socket), readable: Mutex::new(None) });
    quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        Some(server),
        udp,
        Arc::new(quinn::TokioRuntime),
    )
}

// ---------------------------------------------------------------------------------------
// The recorded history

#[derive(Clone, Debug, PartialEq)]
enum Op {
    Write(u64),
    Read(Option<u64>),
}

/// A register per key: reads see the last write.
struct Register;

impl Specification for Register {
    type State = Option<u64>;
    type Operation = Op;

    fn init() -> Option<u64> {
        None
    }

    fn apply(op: &Op, s: &Option<u64>) -> (bool, Option<u64>) {
        match op {
            Op::Write(v) => (true, Some(*v)),
            Op::Read(r) => (r == s, *s),
        }
    }
}

#[derive(Clone, Debug)]
enum Outcome {
    Pending,
    Acked(Op),
    /// An error or a crash: a write may or may not have happened; a read says nothing.
    Unknown,
}

#[derive(Clone, Debug)]
struct Record {
    hub: u64,
    key: usize,
    call: Op,
    called: u64,
    outcome: Outcome,
    answered: u64,
    /// Simulated times of the call and the answer.
    called_at: Duration,
    answered_at: Duration,
}

/// Everything the hubs and the controller share (the simulation runs on one thread).
#[derive(Default)]
struct Shared {
    /// Events in the order they happened: every call and answer takes the next tick.
    clock: AtomicU64,
    values: AtomicU64,
    records: Mutex<Vec<Record>>,
    /// 0: load, 1: stop issuing, 2: final check.
    phase: AtomicU8,
    /// Each hub's register entries in its applied order, read at the final check.
    finals: Mutex<BTreeMap<u64, Vec<(usize, u64)>>>,
    /// Each hub's view: (term, is leader), for aiming faults at the leader.
    views: Mutex<BTreeMap<u64, (u64, bool)>>,
}

impl Shared {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        nave_consensus::sync::lock(m)
    }

    fn call(&self, hub: u64, key: usize, op: Op) -> usize {
        let mut r = Self::lock(&self.records);
        let now = turmoil::sim_elapsed().unwrap_or_default();
        r.push(Record {
            hub,
            key,
            call: op,
            called: self.clock.fetch_add(1, Ordering::Relaxed),
            outcome: Outcome::Pending,
            answered: 0,
            called_at: now,
            answered_at: now,
        });
        r.len() - 1
    }

    fn answer(&self, i: usize, outcome: Outcome) {
        let mut r = Self::lock(&self.records);
        r[i].outcome = outcome;
        r[i].answered = self.clock.fetch_add(1, Ordering::Relaxed);
        r[i].answered_at = turmoil::sim_elapsed().unwrap_or_default();
    }

    /// The calls in flight on a hub that crashed will never be answered.
    fn crashed(&self, hub: u64) {
        for r in Self::lock(&self.records).iter_mut().filter(|r| r.hub == hub && matches!(r.outcome, Outcome::Pending))
        {
            r.outcome = Outcome::Unknown;
            r.answered = self.clock.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The register entries (key, value) of a hub's state, in applied order.
fn registers(a: &nave_consensus::store::Applied) -> Vec<(usize, u64)> {
    a.state
        .audit
        .iter()
        .filter_map(|e| {
            let (k, v) = e.what.strip_prefix("sim ")?.split_once('=')?;
            Some((k.parse().ok()?, v.parse().ok()?))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// A hub's software

struct Hub {
    id: u64,
    identity: NodeIdentity,
    disk: MemoryDisk,
    seed: u64,
    boots: AtomicU64,
}

fn host_name(id: u64) -> String {
    format!("hub{id}")
}

async fn hub_software(hub: Arc<Hub>, shared: Arc<Shared>) -> turmoil::Result {
    let boot = hub.boots.fetch_add(1, Ordering::Relaxed);
    let mut rng = XorShift::new(hub.seed ^ (hub.id << 32) ^ (boot << 48));
    let voters: BTreeMap<u64, openraft::BasicNode> = (1..=HUBS)
        .map(|j| (j, node_addr(&format!("h{j}"), SocketAddr::new(turmoil::lookup(host_name(j)), PORT))))
        .collect();
    let endpoint = sim_endpoint(&hub.identity).await?;
    // A (re)boot after a crash: what was never flushed is gone.
    hub.disk.crash();
    let (log, sm) = open_memory(&hub.disk).map_err(|e| e.to_string())?;
    // openraft draws election timeouts from an unseeded generator; each boot draws a
    // fixed one from the seed instead, so that a seed replays the same elections.
    let mut config = raft_config();
    config.election_timeout_min = 200 + rng.below(200);
    config.election_timeout_max = config.election_timeout_min + 1;
    let node =
        ConsensusNode::start_with(hub.id, Role::Founder(voters), log, sm, endpoint.clone(), &hub.identity, config)
            .await?;

    let serving = node.clone();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let node = serving.clone();
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    node.serve_connection(conn).await;
                }
            });
        }
    });
    for c in 0..CLIENTS_PER_HUB {
        let (node, shared, hub) = (node.clone(), shared.clone(), hub.clone());
        let mut rng = XorShift::new(rng.next_u64() ^ c as u64);
        tokio::spawn(async move {
            while shared.phase.load(Ordering::Relaxed) == 0 {
                let key = rng.index(KEYS);
                if rng.below(2) == 0 {
                    let v = shared.values.fetch_add(1, Ordering::Relaxed) + 1;
                    let i = shared.call(hub.id, key, Op::Write(v));
                    let r = node.write(Command::Audit { actor: "sim".into(), what: format!("sim {key}={v}") }).await;
                    shared.answer(
                        i,
                        if matches!(r, Ok(CommandResult::Done)) {
                            Outcome::Acked(Op::Write(v))
                        } else {
                            Outcome::Unknown
                        },
                    );
                } else {
                    let i = shared.call(hub.id, key, Op::Read(None));
                    let r = node.read(|a| registers(a).iter().rev().find(|(k, _)| *k == key).map(|(_, v)| *v)).await;
                    shared.answer(i, r.map_or(Outcome::Unknown, |v| Outcome::Acked(Op::Read(v))));
                }
                tokio::time::sleep(Duration::from_millis(rng.below(40))).await;
            }
        });
    }
    loop {
        let m = node.raft.metrics().borrow().clone();
        Shared::lock(&shared.views).insert(hub.id, (m.current_term, m.current_leader == Some(hub.id)));
        if shared.phase.load(Ordering::Relaxed) == 2 && !Shared::lock(&shared.finals).contains_key(&hub.id) {
            if let Ok(entries) = node.read(registers).await {
                Shared::lock(&shared.finals).insert(hub.id, entries);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The controller: faults, then healing, then the checks

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Crash the hub; restart it when the fault ends.
    Crash,
    /// Crash every hub at once (a power cut); restart them all when the fault ends.
    CrashAll,
    /// Cut the hub off from both others.
    Isolate,
    /// The hub hears the others but they do not hear it.
    CutOutgoing,
    /// 10% of messages between every pair lost.
    Loss,
}

struct Summary {
    faults: Vec<String>,
    acked_writes: usize,
    reads: usize,
    /// Calls made on a cut-off leader while it was cut off (all refused).
    refused_in_minority: usize,
    /// For each fault on the leader: from the fault to the first write acknowledged by
    /// another hub (called after the fault).
    failovers: Vec<(Duration, String)>,
}

#[derive(Clone, Copy, PartialEq)]
enum Schedule {
    /// Faults drawn from the seed, one hub at a time.
    Random,
    /// The leader cut off from both others for 12 s, 3 s into the run.
    IsolateLeader,
}

fn run_seed(seed: u64, load: Duration, identities: &[NodeIdentity], schedule: Schedule) -> Result<Summary, String> {
    let mut rng = XorShift::new(seed);
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(load + Duration::from_secs(120))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(1 + rng.below(15)))
        .build();
    let shared = Arc::new(Shared::default());
    for id in 1..=HUBS {
        let hub = Arc::new(Hub {
            id,
            identity: identities[id as usize - 1].clone(),
            disk: MemoryDisk::default(),
            seed,
            boots: AtomicU64::new(0),
        });
        let shared = shared.clone();
        sim.host(host_name(id), move || hub_software(hub.clone(), shared.clone()));
    }
    let names: Vec<String> = (1..=HUBS).map(host_name).collect();
    let step = |sim: &mut turmoil::Sim, until: Duration| -> Result<(), String> {
        while sim.elapsed() < until {
            sim.step().map_err(|e| format!("the simulation stopped: {e}"))?;
        }
        Ok(())
    };

    // Faults on one hub at a time (a minority), 1-3 s each with 0.5-2 s between.
    let mut log = Vec::new();
    step(&mut sim, Duration::from_secs(2))?;
    let mut minority = None;
    let mut leader_faults: Vec<(u64, Duration, String)> = Vec::new();
    if schedule == Schedule::IsolateLeader {
        step(&mut sim, Duration::from_secs(3))?;
        let leader = Shared::lock(&shared.views)
            .iter()
            .filter(|(_, (_, l))| *l)
            .max_by_key(|(_, (t, _))| *t)
            .map(|(id, _)| *id)
            .ok_or("no leader after 3 s")?;
        let host = host_name(leader);
        log.push(format!("{:>6.2} s  Isolate {host} (leader) for 12 s", sim.elapsed().as_secs_f64()));
        names.iter().filter(|n| **n != host).for_each(|o| sim.partition(host.as_str(), o.as_str()));
        let cut = shared.clock.load(Ordering::Relaxed);
        // Long enough for a call made after the cut to be refused (5 s) before it heals.
        step(&mut sim, Duration::from_secs(15))?;
        let healed = shared.clock.load(Ordering::Relaxed);
        names.iter().filter(|n| **n != host).for_each(|o| sim.repair(host.as_str(), o.as_str()));
        minority = Some((leader, cut, healed));
        step(&mut sim, load)?;
    }
    while schedule == Schedule::Random && sim.elapsed() < load {
        let fault = [Fault::Crash, Fault::Isolate, Fault::CutOutgoing, Fault::Loss, Fault::CrashAll][rng.index(5)];
        let leader =
            Shared::lock(&shared.views).iter().filter(|(_, (_, l))| *l).max_by_key(|(_, (t, _))| *t).map(|(id, _)| *id);
        let target = match leader {
            Some(l) if rng.below(2) == 0 => l,
            _ => 1 + rng.below(HUBS),
        };
        let host = host_name(target);
        let lasts = Duration::from_millis(1_000 + rng.below(2_000));
        let whom = match fault {
            Fault::CrashAll => String::from("every hub"),
            _ => format!("{host}{}", if Some(target) == leader { " (leader)" } else { "" }),
        };
        log.push(format!("{:>6.2} s  {fault:?} {whom} for {:.1} s", sim.elapsed().as_secs_f64(), lasts.as_secs_f64()));
        if Some(target) == leader && !matches!(fault, Fault::Loss | Fault::CrashAll) {
            leader_faults.push((target, sim.elapsed(), log.last().cloned().unwrap_or_default()));
        }
        match fault {
            Fault::Crash => {
                sim.crash(host.as_str());
                shared.crashed(target);
            }
            Fault::Isolate => {
                names.iter().filter(|n| **n != host).for_each(|o| sim.partition(host.as_str(), o.as_str()))
            }
            Fault::CutOutgoing => {
                names.iter().filter(|n| **n != host).for_each(|o| sim.partition_oneway(host.as_str(), o.as_str()))
            }
            Fault::Loss => sim.set_fail_rate(0.1),
            Fault::CrashAll => {
                for id in 1..=HUBS {
                    sim.crash(host_name(id).as_str());
                    shared.crashed(id);
                }
            }
        }
        let until = sim.elapsed() + lasts;
        step(&mut sim, until)?;
        match fault {
            Fault::Crash => sim.bounce(host.as_str()),
            Fault::Isolate | Fault::CutOutgoing => {
                names.iter().filter(|n| **n != host).for_each(|o| sim.repair(host.as_str(), o.as_str()))
            }
            Fault::Loss => sim.set_fail_rate(0.0),
            Fault::CrashAll => names.iter().for_each(|n| sim.bounce(n.as_str())),
        }
        let until = sim.elapsed() + Duration::from_millis(500 + rng.below(1_500));
        step(&mut sim, until)?;
    }

    // Healed: stop the load, let the last calls end (writes wait at most 5 s for a
    // quorum), then every hub must answer a linearizable read of the whole state.
    shared.phase.store(1, Ordering::Relaxed);
    let until = sim.elapsed() + Duration::from_secs(6);
    step(&mut sim, until)?;
    shared.phase.store(2, Ordering::Relaxed);
    let deadline = sim.elapsed() + Duration::from_secs(30);
    while Shared::lock(&shared.finals).len() < HUBS as usize {
        if sim.elapsed() > deadline {
            return Err(format!(
                "hubs {:?} of {HUBS} answered a read within 30 s of healing\n{}",
                Shared::lock(&shared.finals).keys().collect::<Vec<_>>(),
                log.join("\n")
            ));
        }
        sim.step().map_err(|e| format!("the simulation stopped: {e}"))?;
    }

    let records = Shared::lock(&shared.records).clone();
    let finals = Shared::lock(&shared.finals).clone();
    check(&records, &finals).map_err(|e| format!("{e}\nfaults:\n{}", log.join("\n")))?;
    // The cut-off leader (a minority of one) acknowledged no write and answered no read
    // called after it was cut off, until it was healed.
    let mut refused_in_minority = 0;
    if let Some((hub, cut, healed)) = minority {
        for r in records.iter().filter(|r| r.hub == hub && r.called > cut && r.answered < healed) {
            match r.outcome {
                Outcome::Unknown => refused_in_minority += 1,
                _ => return Err(format!("the cut-off hub {hub} answered {r:?} while cut off")),
            }
        }
        if refused_in_minority == 0 {
            return Err(format!("no call on the cut-off hub {hub} was answered while it was cut off"));
        }
    }
    let failovers = leader_faults
        .iter()
        .filter_map(|(hub, at, what)| {
            records
                .iter()
                .filter(|r| r.hub != *hub && r.called_at >= *at && matches!(r.outcome, Outcome::Acked(Op::Write(_))))
                .map(|r| r.answered_at - *at)
                .min()
                .map(|d| (d, what.clone()))
        })
        .collect();
    Ok(Summary {
        failovers,
        refused_in_minority,
        faults: log,
        acked_writes: records.iter().filter(|r| matches!(r.outcome, Outcome::Acked(Op::Write(_)))).count(),
        reads: records.iter().filter(|r| matches!(r.outcome, Outcome::Acked(Op::Read(_)))).count(),
    })
}

/// No acknowledged write lost, every hub with the same state, reads linearizable per key.
fn check(records: &[Record], finals: &BTreeMap<u64, Vec<(usize, u64)>>) -> Result<(), String> {
    if records.iter().any(|r| matches!(r.outcome, Outcome::Pending)) {
        return Err("a call was still waiting 6 s after the load stopped".into());
    }
    let first = finals.values().next().ok_or("no final state")?;
    for (id, entries) in finals {
        if entries != first {
            return Err(format!(
                "hub {id} holds {} register writes, hub 1 {}: the replicas differ",
                entries.len(),
                first.len()
            ));
        }
    }
    let present: std::collections::HashSet<u64> = first.iter().map(|(_, v)| *v).collect();
    let lost: Vec<&Record> =
        records.iter().filter(|r| matches!(&r.outcome, Outcome::Acked(Op::Write(v)) if !present.contains(v))).collect();
    if !lost.is_empty() {
        return Err(format!("{} acknowledged writes lost, first {:?}", lost.len(), lost[0]));
    }
    let mut per_key: HashMap<usize, Vec<&Record>> = HashMap::new();
    for r in records {
        per_key.entry(r.key).or_default().push(r);
    }
    for (key, ops) in per_key {
        // Calls and answers in the order they happened; a write of unknown outcome may
        // have taken effect any time after its call, so it answers after everything.
        let mut events: Vec<(u64, usize, Action<Op>)> = Vec::new();
        let end = u64::MAX;
        for (p, r) in ops.iter().enumerate() {
            match &r.outcome {
                Outcome::Acked(answer) => {
                    events.push((r.called, p, Action::Call(r.call.clone())));
                    events.push((r.answered, p, Action::Response(answer.clone())));
                }
                Outcome::Unknown if matches!(r.call, Op::Write(_)) => {
                    events.push((r.called, p, Action::Call(r.call.clone())));
                    events.push((end, p, Action::Response(r.call.clone())));
                }
                _ => {}
            }
        }
        events.sort_by_key(|e| e.0);
        let actions: Vec<(usize, Action<Op>)> = events.into_iter().map(|(_, p, a)| (p, a)).collect();
        if actions.is_empty() {
            continue;
        }
        if !WGLChecker::<Register>::is_linearizable(History::from_actions(actions.clone())) {
            let tail = &actions[actions.len().saturating_sub(40)..];
            return Err(format!(
                "key {key}: not linearizable ({} calls and answers; the last 40, by call number): {tail:?}",
                actions.len()
            ));
        }
    }
    Ok(())
}

/// Hub certificates (Raft is served to hubs only), issued into a temporary directory.
fn identities() -> Vec<NodeIdentity> {
    let ca = ClusterCa::generate("nave-sim", Duration::from_secs(86_400)).expect("CA");
    let dir = tempfile::tempdir().expect("temp dir");
    (1..=HUBS)
        .map(|id| {
            ca.ensure_hub(
                &dir.path().join(id.to_string()),
                &format!("h{id}"),
                std::time::Duration::from_secs(30 * 86400),
            )
            .expect("identity")
        })
        .collect()
}

/// Log lines stamped with the simulated time and the host.
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(t) => write!(w, "{:>9.3}s", t.as_secs_f64()),
            None => write!(w, "        -"),
        }
    }
}

/// `SIM_LOG=info,openraft=debug` (an env filter) logs what the nodes do, in simulated time.
fn init_log() {
    if let Ok(filter) = std::env::var("SIM_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_timer(SimTime)
            .try_init();
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn seeded_simulations_of_faults_lose_nothing_and_stay_linearizable() {
    let seeds: Vec<u64> = match env_u64("SIM_SEED") {
        Some(s) => vec![s],
        None => (1..=env_u64("SIM_SEEDS").unwrap_or(50)).collect(),
    };
    let load = Duration::from_secs(env_u64("SIM_SECONDS").unwrap_or(20));
    init_log();
    let identities = identities();
    let next = AtomicU64::new(0);
    let results = Mutex::new(Vec::new());
    // Each simulation runs on one thread; two at a time.
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&seed) = seeds.get(i) else { return };
                let started = std::time::Instant::now();
                let r = run_seed(seed, load, &identities, Schedule::Random);
                Shared::lock(&results).push((seed, r, started.elapsed()));
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|r| r.0);
    let mut failed = Vec::new();
    let (mut writes, mut reads, mut faults) = (0, 0, 0);
    let mut failovers = Vec::new();
    for (seed, r, took) in &results {
        match r {
            Ok(s) => {
                writes += s.acked_writes;
                reads += s.reads;
                faults += s.faults.len();
                failovers.extend(s.failovers.iter().map(|f| f.0));
                let slowest =
                    s.failovers.iter().max().map_or(String::new(), |f| {
                        format!(", slowest failover {} ms ({})", f.0.as_millis(), f.1.trim())
                    });
                println!(
                    "seed {seed}: {} faults, {} acknowledged writes, {} reads{slowest}, {:.1} s",
                    s.faults.len(),
                    s.acked_writes,
                    s.reads,
                    took.as_secs_f64()
                );
                if std::env::var_os("SIM_VERBOSE").is_some() {
                    println!("{}", s.faults.join("\n"));
                }
            }
            Err(e) => {
                println!("seed {seed} FAILED (replay: SIM_SEED={seed} cargo test -p nave-consensus --test sim -- --nocapture):\n{e}");
                failed.push(*seed);
            }
        }
    }
    println!(
        "{} seeds, {faults} faults, {writes} acknowledged writes, {reads} reads checked, failed seeds: {failed:?}",
        results.len()
    );
    failovers.sort();
    let at = |q: f64| failovers.get(((failovers.len() as f64 - 1.0) * q).round() as usize).map_or(0, |d| d.as_millis());
    println!("leader faults: {}; fault -> first write acknowledged by another hub (simulated time): p50 {} ms, p99 {} ms, max {} ms", failovers.len(), at(0.5), at(0.99), at(1.0));
    assert!(failed.is_empty(), "failing seeds: {failed:?}");
    assert!(writes > 0 && reads > 0, "the load did nothing");
}

/// A leader cut off from the two other hubs for 12 s (a minority of one) acknowledges no write and
/// serves no read while cut off: its callers get errors within the 5 s quorum wait. The
/// majority elects a leader and goes on; healed, the old leader catches up and serves
/// linearizable reads again (the final check), and nothing acknowledged was lost.
#[test]
fn a_cut_off_leader_neither_writes_nor_serves_stale_reads() {
    let identities = identities();
    for seed in [101, 102, 103] {
        match run_seed(seed, Duration::from_secs(20), &identities, Schedule::IsolateLeader) {
            Ok(s) => println!(
                "seed {seed}: {} acknowledged writes, {} reads; calls on the cut-off leader refused: {}",
                s.acked_writes, s.reads, s.refused_in_minority
            ),
            Err(e) => panic!("seed {seed} (replay: this test):\n{e}"),
        }
    }
}
