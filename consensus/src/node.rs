//! A hub's consensus node: the Raft instance, its storage, its network, and the one API
//! the hub uses: [`ConsensusNode::write`] (from any hub: a follower forwards to the
//! leader) and [`ConsensusNode::read`] (linearizable: ReadIndex through
//! `ensure_linearizable` on the leader, then the local replica once it has applied that
//! far; no lease reads).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

// tokio's clock, not std's: the same in production, and simulated time in the
// deterministic simulation.
use tokio::time::Instant;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, Config, SnapshotPolicy};
use serde::Serialize;

use crate::batch::{batch_proposals, proposal_id, Waiting};
use crate::clock::now_ms;
use crate::election::{last_log_of, run_elections, ElectionTimes, LastLog};
use crate::error::{Error, Result};
use crate::frame::{read_frame, write_frame};
use crate::network::{parse_addr, Network, RaftReply, RaftRpc, Redirect, MAX_RAFT_FRAME};
use crate::state::{Command, CommandResult, Proposal};
use crate::store::{Applied, StateHandle};
use crate::tls::NodeIdentity;
use crate::typ::*;

fn fnv(name: &str) -> u64 {
    crate::ids::fnv1a(&[name.as_bytes()])
}

/// Raft ids from here up are spokes (learners); below, hubs (voters).
pub const FIRST_SPOKE_ID: NodeId = 1_000_000;

/// The Raft id of spoke `spoke` (a learner): stable across restarts and hubs, far above
/// the hubs' ids.
pub fn learner_id(spoke: &str) -> NodeId {
    FIRST_SPOKE_ID + fnv(spoke) % 1_000_000_000_000
}

/// The Raft id of a hub added to a running cluster (`nave admin hub add`), from its name:
/// the hub and whoever adds it agree without asking each other. The hubs that founded the
/// cluster are 1, 2, 3... in config order.
pub fn added_hub_id(hub: &str) -> NodeId {
    1_000 + fnv(hub) % (FIRST_SPOKE_ID - 1_000)
}

/// How a node takes part in the cluster.
#[derive(Debug, Clone)]
pub enum Role {
    /// One of the hubs that found the cluster together: the first start initializes it
    /// with these voters.
    Founder(BTreeMap<NodeId, BasicNode>),
    /// A hub added to a running cluster: it waits for the leader to add it (as a learner,
    /// then a voter) and never initializes a cluster of its own.
    Added,
    /// A spoke's read-only replica.
    Learner,
}

/// A change of the hubs that vote, made by the leader.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum HubChange {
    Add(NodeId, BasicNode),
    Remove(NodeId),
}

/// How long the leader waits for an added hub to catch up before giving up on it.
const CATCH_UP_WAIT: Duration = Duration::from_secs(30);

/// Heartbeats every 150 ms. A follower that stops hearing them runs for leader (from
/// `run_elections`, which keeps openraft's timing) after openraft's leader lease
/// (`election_timeout_max`, during which it also refuses to vote for anyone else) plus a
/// random 200-400 ms: 600-800 ms of silence, 4 or more missed heartbeats (a leader
/// stalled 450 ms; the other voter, which heard it within the lease, still refuses), so a
/// loaded 2-core machine that delays a few does not flap, while a dead leader is replaced
/// and the next write acknowledged within 1 s. (Every 50 ms cost an idle cluster about
/// 0.4% of a core more and changed no failover time.) (openraft's defaults,
/// 150-300 ms, flap here; etcd's 1,000 ms with the lease on top would take 2-3 s.)
pub fn raft_config() -> Config {
    Config {
        cluster_name: "nave".into(),
        heartbeat_interval: 150,
        election_timeout_min: 200,
        election_timeout_max: 400,
        install_snapshot_timeout: 5_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(5_000),
        max_in_snapshot_log_to_keep: 1_000,
        purge_batch_size: 256,
        ..Default::default()
    }
}

/// A forwarded write or read-index request to a leader that does not answer in this time
/// waits for a new leader and is tried again. Forwarded writes take under 50 ms at p99
/// under load here, so 500 ms means the leader is gone or cut off.
const FORWARD_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a write or read waits for a leader before answering "no quorum".
const QUORUM_WAIT: Duration = Duration::from_secs(5);

/// Figures for `/metrics` and `nave admin status`.
#[derive(Debug, Clone, Serialize)]
pub struct ConsensusFigures {
    pub id: NodeId,
    pub state: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    /// Follower and learner id -> log entries behind the leader (on the leader only).
    pub lag: BTreeMap<NodeId, u64>,
}

/// How a hub renews its own certificate when another hub asks it to (see
/// [`ConsensusNode::on_rotate`]): the new certificate's expiry, Unix seconds.
pub type RotateHook = Arc<dyn Fn() -> std::result::Result<i64, String> + Send + Sync>;

pub struct ConsensusNode {
    pub id: NodeId,
    pub raft: Raft,
    pub state: StateHandle,
    /// The last applied log index: changes whenever [`Self::state`] may have.
    applied: tokio::sync::watch::Receiver<u64>,
    net: Network,
    nodes: BTreeMap<NodeId, BasicNode>,
    batcher: tokio::sync::mpsc::UnboundedSender<Waiting>,
    last_log: LastLog,
    /// What this node led with when it started, if it did: see [`Restored`].
    restored: Option<Restored>,
    rotate: std::sync::OnceLock<RotateHook>,
}

/// A node that was leader when it stopped is leader again as soon as it starts, in the
/// same term, without an election (openraft restores it from its stored vote). It does
/// not know yet how far its log was committed: the committed index it stored may be older
/// than what it had acknowledged (it is not flushed by itself), so openraft's read index
/// (its first entry of the term, or that committed index) can be too low and a read would
/// miss acknowledged writes. Until it has applied the log it started with, it serves reads
/// at the end of that log: every write it had acknowledged is in it, and as leader it
/// commits all of it.
#[derive(Clone, Copy)]
struct Restored {
    vote: Vote,
    last_index: u64,
}

/// A forwarded request on a leader that lost its quorum would wait forever; its sender
/// gave up long before this.
async fn bounded<T>(
    f: impl std::future::Future<Output = std::result::Result<T, Redirect>>,
) -> std::result::Result<T, Redirect> {
    tokio::time::timeout(QUORUM_WAIT, f)
        .await
        .unwrap_or_else(|_| Err(Redirect::Failed("the leader has no quorum".into())))
}

impl ConsensusNode {
    /// Opens the node's storage under `dir`, starts Raft, and initializes the cluster with
    /// `voters` when this node has never been part of one.
    pub async fn start(
        dir: &Path,
        id: NodeId,
        role: Role,
        endpoint: quinn::Endpoint,
        identity: &NodeIdentity,
    ) -> Result<Arc<Self>> {
        Self::open(dir, id, role, endpoint, identity).await
    }

    /// Opens a learner's replica under `dir` (a spoke's): it never votes or initializes a
    /// cluster; a leader adds it ([`Self::ensure_learners`]) and replicates the state to it.
    pub async fn start_learner(
        dir: &Path,
        id: NodeId,
        endpoint: quinn::Endpoint,
        identity: &NodeIdentity,
    ) -> Result<Arc<Self>> {
        Self::open(dir, id, Role::Learner, endpoint, identity).await
    }

    async fn open(
        dir: &Path,
        id: NodeId,
        role: Role,
        endpoint: quinn::Endpoint,
        identity: &NodeIdentity,
    ) -> Result<Arc<Self>> {
        crate::files::private_dir(dir)?;
        let (log, sm) = crate::store::open(&dir.join("raft")).map_err(|e| Error::Raft(e.to_string()))?;
        Self::start_with(id, role, log, sm, endpoint, identity, raft_config()).await
    }

    /// Starts a node on the given stores and Raft config. The deterministic simulation
    /// uses it with memory stores and election timeouts drawn from its seed.
    pub async fn start_with<LS: openraft::storage::RaftLogStorage<TypeConfig> + Clone>(
        id: NodeId,
        role: Role,
        log: LS,
        sm: crate::store::StateMachineStore,
        endpoint: quinn::Endpoint,
        identity: &NodeIdentity,
        config: Config,
    ) -> Result<Arc<Self>> {
        let state = sm.handle.clone();
        let applied = sm.watch_applied();
        let net = Network::new(endpoint, identity)?;
        let times = ElectionTimes::from_config(&config);
        let config = Arc::new(config.validate().map_err(|e| Error::Raft(e.to_string()))?);
        let mut guard_log = log.clone();
        let restored = match (guard_log.read_vote().await, guard_log.get_log_state().await) {
            (Ok(Some(vote)), Ok(state)) if vote.is_committed() && vote.leader_id().voted_for() == Some(id) => {
                state.last_log_id.map(|l| Restored { vote, last_index: l.index })
            }
            (Err(e), _) | (_, Err(e)) => return Err(Error::Raft(format!("reading the log: {e}"))),
            _ => None,
        };
        let raft = Raft::new(id, config, net.clone(), log, sm).await.map_err(|e| Error::Raft(e.to_string()))?;
        let learner = matches!(role, Role::Learner);
        let voters = match role {
            Role::Founder(v) => v,
            Role::Added | Role::Learner => BTreeMap::new(),
        };
        if !voters.is_empty() && !raft.is_initialized().await.map_err(|e| Error::Raft(e.to_string()))? {
            // Every hub of a new cluster does this with the same membership; openraft lets
            // the first election decide, and refuses it on a node that already has a log.
            if let Err(e) = raft.initialize(voters.clone()).await {
                tracing::debug!(error = %e, "initialize");
            }
        }
        // openraft's election timer stays off: a hub runs for leader from `run_elections`,
        // only when it may win.
        raft.runtime_config().elect(false);
        let last_log = last_log_of(guard_log);
        if !learner {
            tokio::spawn(run_elections(raft.clone(), net.clone(), id, times, last_log.clone()));
        }
        let (batcher, waiting) = tokio::sync::mpsc::unbounded_channel();
        let node = Arc::new(Self {
            id,
            raft,
            state,
            applied,
            net,
            nodes: voters,
            batcher,
            last_log,
            restored,
            rotate: std::sync::OnceLock::new(),
        });
        tokio::spawn(batch_proposals(Arc::downgrade(&node), waiting));
        Ok(node)
    }

    /// A watch of the last applied log index, to wait for the state to change instead of
    /// reading it again and again.
    pub fn watch_applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.clone()
    }

    /// Proposes `command` with this node's clock and a fresh id.
    pub async fn write(&self, command: Command) -> Result<CommandResult> {
        self.propose(Proposal { id: proposal_id(self.id), now_ms: now_ms(), command }).await
    }

    /// Commits `p` through the leader, retrying while an election runs, for at most
    /// `QUORUM_WAIT`. Proposals made on this node while others are in flight are
    /// committed together as one [`Command::Batch`]: one log entry, one forward to the
    /// leader, one flush, whatever the number of writers.
    pub async fn propose(&self, p: Proposal) -> Result<CommandResult> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Err(unsent) = self.batcher.send((p, tx)) {
            return self.propose_now(unsent.0 .0).await;
        }
        rx.await.unwrap_or_else(|_| Err(Error::NoQuorum("the node is shutting down".into())))
    }

    /// Commits `p` through the leader (forwarding it if this node is not), retrying while
    /// an election runs, for at most `QUORUM_WAIT`.
    pub(crate) async fn propose_now(&self, p: Proposal) -> Result<CommandResult> {
        let deadline = Instant::now() + QUORUM_WAIT;
        let mut last = String::from("no leader");
        let mut unreachable_leader = None;
        while Instant::now() < deadline {
            // A leader that lost its quorum keeps the proposal waiting forever: bound it.
            // If the quorum comes back later the proposal may still commit; its id makes a
            // retry by the caller apply once.
            let local =
                tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), self.propose_local(p.clone()));
            let Ok(local) = local.await else {
                last = "this node leads but has no quorum".into();
                break;
            };
            match local {
                Ok(r) => return Ok(r),
                Err(Redirect::NotLeader(Some(leader))) if leader != self.id => {
                    if unreachable_leader == Some(leader) {
                        // The leader did not answer: wait for this node to learn of another
                        // one (an election) rather than knock on the same door again. The
                        // retry is safe: the proposal's id makes it apply once.
                        self.wait_leader_change(leader, deadline).await;
                        unreachable_leader = None;
                        continue;
                    }
                    let node = self.nodes.get(&leader).cloned().or_else(|| self.member(leader));
                    if let Some(node) = node {
                        match self.net.call(leader, &node, &RaftRpc::Write(p.clone()), FORWARD_TIMEOUT).await {
                            Ok(RaftReply::Write(Ok(r))) => return Ok(r),
                            Ok(RaftReply::Write(Err(e))) => last = format!("{e:?}"),
                            Ok(other) => last = format!("unexpected reply {other:?}"),
                            Err(e) => {
                                last = e;
                                unreachable_leader = Some(leader);
                            }
                        }
                    }
                }
                Err(e) => last = format!("{e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(Error::NoQuorum(last))
    }

    /// On the leader: makes the learners of the membership exactly `want` (spokes), adding
    /// the missing ones and removing the others (never a voter). Elsewhere: nothing.
    pub async fn ensure_learners(&self, want: &BTreeMap<NodeId, BasicNode>) -> Result<()> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader != Some(self.id) {
            return Ok(());
        }
        let membership = m.membership_config.membership().clone();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let present: BTreeMap<NodeId, BasicNode> = membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        for (id, node) in want {
            if voters.contains(id) || present.get(id) == Some(node) {
                continue;
            }
            // A learner that moved (a new address) is replaced; a new one is added. Not
            // blocking: it catches up from the log or a snapshot on its own.
            let change = if present.contains_key(id) {
                openraft::ChangeMembers::SetNodes([(*id, node.clone())].into())
            } else {
                openraft::ChangeMembers::AddNodes([(*id, node.clone())].into())
            };
            self.raft.change_membership(change, true).await.map_err(|e| Error::Raft(e.to_string()))?;
        }
        // Hubs being added are learners for a moment too: only spokes' ids are ours here.
        let gone: std::collections::BTreeSet<NodeId> = present
            .keys()
            .filter(|id| **id >= FIRST_SPOKE_ID && !voters.contains(id) && !want.contains_key(id))
            .copied()
            .collect();
        if !gone.is_empty() {
            self.raft
                .change_membership(openraft::ChangeMembers::RemoveNodes(gone), true)
                .await
                .map_err(|e| Error::Raft(e.to_string()))?;
        }
        Ok(())
    }

    /// The voting hubs: Raft id, name and QUIC address, from the membership.
    pub fn hubs(&self) -> Vec<(NodeId, String, String)> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let membership = m.membership();
        membership
            .voter_ids()
            .map(|id| match membership.get_node(&id).and_then(parse_addr) {
                Some((name, quic)) => (id, name, quic.to_string()),
                None => (id, id.to_string(), String::new()),
            })
            .collect()
    }

    /// Sets what this hub does when another hub asks it to renew its certificate.
    pub fn on_rotate(&self, hook: RotateHook) {
        let _ = self.rotate.set(hook);
    }

    /// Asks the voting hub named `name` to renew its certificate now; its new expiry.
    pub async fn rotate_hub(&self, name: &str) -> Result<i64> {
        let (rid, _, _) = self
            .hubs()
            .into_iter()
            .find(|(_, n, _)| n == name)
            .ok_or_else(|| Error::Unreachable(format!("no voting hub named {name}")))?;
        let node = self.member(rid).ok_or_else(|| Error::Unreachable(format!("hub {name} has no address")))?;
        match self.net.call(rid, &node, &RaftRpc::RotateCert, Duration::from_secs(10)).await {
            Ok(RaftReply::Rotated(Ok(not_after))) => Ok(not_after),
            Ok(RaftReply::Rotated(Err(e))) => Err(Error::Tls(format!("hub {name}: {e}"))),
            Ok(other) => Err(Error::Unreachable(format!("hub {name}: unexpected reply {other:?}"))),
            Err(e) => Err(Error::Unreachable(format!("hub {name}: {e}"))),
        }
    }

    /// Adds a hub as a voter or removes one, from any hub (the leader makes the change).
    /// An added hub first joins as a learner and becomes a voter once it has caught up,
    /// so the cluster never waits on a voter that is still copying the log.
    pub async fn change_hubs(&self, change: HubChange) -> Result<()> {
        let deadline = Instant::now() + CATCH_UP_WAIT + QUORUM_WAIT;
        let mut last = String::from("no leader");
        while Instant::now() < deadline {
            match self.change_hubs_local(change.clone()).await {
                Ok(()) => return Ok(()),
                Err(Redirect::NotLeader(Some(leader))) if leader != self.id => {
                    let Some(node) = self.member(leader) else { break };
                    match self
                        .net
                        .call(leader, &node, &RaftRpc::Hubs(change.clone()), CATCH_UP_WAIT + FORWARD_TIMEOUT)
                        .await
                    {
                        Ok(RaftReply::Hubs(Ok(()))) => return Ok(()),
                        Ok(RaftReply::Hubs(Err(Redirect::Failed(e)))) => return Err(Error::Raft(e)),
                        Ok(other) => last = format!("{other:?}"),
                        Err(e) => {
                            last = e;
                            self.wait_leader_change(leader, deadline).await;
                        }
                    }
                }
                Err(Redirect::Failed(e)) => return Err(Error::Raft(e)),
                Err(Redirect::NotLeader(_)) => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(Error::NoQuorum(last))
    }

    /// A hub change on this node, if it leads.
    async fn change_hubs_local(&self, change: HubChange) -> std::result::Result<(), Redirect> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader != Some(self.id) {
            return Err(Redirect::NotLeader(m.current_leader));
        }
        let membership = m.membership_config.membership().clone();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let failed = |e: String| Redirect::Failed(e);
        // Leadership can move while the change runs: then it is retried on the new leader.
        let refused = |e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Redirect::NotLeader(f.leader_id),
            e => Redirect::Failed(e.to_string()),
        };
        match change {
            HubChange::Add(id, node) => {
                if id >= FIRST_SPOKE_ID {
                    return Err(failed(format!("{id} is a spoke's id, not a hub's")));
                }
                if voters.contains(&id) {
                    return match membership.get_node(&id) {
                        Some(n) if *n == node => Ok(()),
                        _ => Err(failed(format!("another hub already votes as Raft node {id}"))),
                    };
                }
                let caught_up =
                    tokio::time::timeout(CATCH_UP_WAIT, self.raft.add_learner(id, node.clone(), true)).await;
                match caught_up {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(refused(e)),
                    Err(_) => {
                        let _ =
                            self.raft.change_membership(openraft::ChangeMembers::RemoveNodes([id].into()), true).await;
                        return Err(failed(format!("the hub at {} did not catch up within {CATCH_UP_WAIT:?}: is it running (`nave hub` with `join = true`) and reachable?", node.addr)));
                    }
                }
                self.raft
                    .change_membership(openraft::ChangeMembers::AddVoterIds([id].into()), false)
                    .await
                    .map(|_| ())
                    .map_err(refused)
            }
            HubChange::Remove(id) => {
                if !voters.contains(&id) {
                    return Err(failed(format!("Raft node {id} is not a voting hub")));
                }
                if voters.len() == 1 {
                    return Err(failed("the last hub cannot be removed".into()));
                }
                self.raft
                    .change_membership(openraft::ChangeMembers::RemoveVoters([id].into()), false)
                    .await
                    .map(|_| ())
                    .map_err(refused)
            }
        }
    }

    /// Waits until this node's Raft names a leader other than `old` (or the deadline).
    async fn wait_leader_change(&self, old: NodeId, deadline: Instant) {
        let wait = deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(2));
        let _ =
            self.raft.wait(Some(wait)).metrics(|m| m.current_leader.is_some_and(|l| l != old), "a new leader").await;
    }

    fn member(&self, id: NodeId) -> Option<BasicNode> {
        self.raft.metrics().borrow().membership_config.nodes().find(|(n, _)| **n == id).map(|(_, b)| b.clone())
    }

    /// A write on this node only: `NotLeader` if it is not the leader.
    pub async fn propose_local(&self, p: Proposal) -> std::result::Result<CommandResult, Redirect> {
        match self.raft.client_write(p).await {
            Ok(r) => Ok(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(Redirect::NotLeader(f.leader_id)),
            Err(e) => Err(Redirect::Failed(e.to_string())),
        }
    }

    /// The leader's read index, asked of this node.
    async fn read_index_local(&self) -> std::result::Result<u64, Redirect> {
        match self.raft.ensure_linearizable().await {
            Ok(log_id) => {
                let index = log_id.map_or(0, |l| l.index);
                // Still the leader it was when it started (the vote is the same): no lower
                // than the log it started with.
                let floor =
                    self.restored.filter(|r| self.raft.metrics().borrow().vote == r.vote).map_or(0, |r| r.last_index);
                Ok(index.max(floor))
            }
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Err(Redirect::NotLeader(f.leader_id)),
            Err(e) => Err(Redirect::Failed(e.to_string())),
        }
    }

    /// Runs `f` on the state once it reflects every write acknowledged before this call.
    pub async fn read<T>(&self, f: impl FnOnce(&Applied) -> T) -> Result<T> {
        let deadline = Instant::now() + QUORUM_WAIT;
        let mut last = String::from("no leader");
        let index = loop {
            if Instant::now() >= deadline {
                return Err(Error::NoQuorum(last));
            }
            let local =
                tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), self.read_index_local());
            let Ok(local) = local.await else {
                return Err(Error::NoQuorum("this node leads but has no quorum".into()));
            };
            match local {
                Ok(i) => break i,
                Err(Redirect::NotLeader(Some(leader))) if leader != self.id => {
                    if let Some(node) = self.nodes.get(&leader).cloned().or_else(|| self.member(leader)) {
                        match self.net.call(leader, &node, &RaftRpc::ReadIndex, FORWARD_TIMEOUT).await {
                            Ok(RaftReply::ReadIndex(Ok(i))) => break i,
                            Ok(other) => last = format!("{other:?}"),
                            Err(e) => {
                                last = e;
                                self.wait_leader_change(leader, deadline).await;
                            }
                        }
                    }
                }
                Err(e) => last = format!("{e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let wait = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(wait))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|e| Error::NoQuorum(format!("replica did not catch up: {e}")))?;
        Ok(self.state.read(f))
    }

    /// Serves Raft RPCs from one peer connection until it closes. Raft is for hubs only:
    /// a peer without a hub's certificate is refused (a spoke must not vote, append
    /// entries, or feed another spoke's replica).
    pub async fn serve_connection(self: Arc<Self>, conn: quinn::Connection) {
        if !crate::tls::peer_is_hub(&conn) {
            conn.close(3u32.into(), b"raft is for hubs: a hub's certificate is required");
            return;
        }
        let peer = crate::tls::peer_names(&conn).into_iter().next().unwrap_or_default();
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            // Checked on every RPC: a hub removed while connected is refused from the
            // moment its revocation is applied here.
            if self.is_revoked(&peer) {
                tracing::warn!(%peer, "a revoked node's certificate; closing its connection");
                conn.close(4u32.into(), b"this node's certificate is revoked");
                return;
            }
            let node = self.clone();
            tokio::spawn(async move {
                let rpc = match read_frame::<RaftRpc, _>(&mut recv, MAX_RAFT_FRAME).await {
                    Ok(Some(r)) => r,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "bad raft frame; dropping the stream");
                        return;
                    }
                };
                let reply = match rpc {
                    RaftRpc::Append(r) => RaftReply::Append(node.raft.append_entries(r).await),
                    RaftRpc::Vote(r) => RaftReply::Vote(node.raft.vote(r).await),
                    RaftRpc::Snapshot(r) => RaftReply::Snapshot(node.raft.install_snapshot(r).await),
                    RaftRpc::Write(p) => RaftReply::Write(bounded(node.propose_local(p)).await),
                    RaftRpc::ReadIndex => RaftReply::ReadIndex(bounded(node.read_index_local()).await),
                    RaftRpc::Ping => RaftReply::Pong((node.last_log)().await),
                    RaftRpc::Hubs(change) => RaftReply::Hubs(node.change_hubs_local(change).await),
                    RaftRpc::RotateCert => RaftReply::Rotated(match node.rotate.get() {
                        Some(renew) => renew(),
                        None => Err("this node does not renew its certificate on request".into()),
                    }),
                };
                if write_frame(&mut send, &reply).await.is_ok() {
                    let _ = send.finish();
                }
            });
        }
    }

    /// Whether the replicated state revokes the node `name` (a removed hub or spoke).
    pub fn is_revoked(&self, name: &str) -> bool {
        self.state.read(|a| a.state.revoked.contains(name))
    }

    pub fn figures(&self) -> ConsensusFigures {
        let m = self.raft.metrics().borrow().clone();
        let lag = m
            .replication
            .as_ref()
            .map(|r| {
                let last = m.last_log_index.unwrap_or(0);
                r.iter().map(|(id, matched)| (*id, last.saturating_sub(matched.map_or(0, |l| l.index)))).collect()
            })
            .unwrap_or_default();
        ConsensusFigures {
            id: m.id,
            state: format!("{:?}", m.state),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            lag,
        }
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}
