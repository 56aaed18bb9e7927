//! The election guard: a hub runs for leader only when it may win (a pre-vote, which
//! openraft 0.9 lacks), from its own timer instead of openraft's (`run_elections`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, Config};
// tokio's clock, not std's: the same in production, and simulated time in the
// deterministic simulation.
use tokio::time::Instant;

use crate::clock::now_ms;
use crate::network::{Network, RaftReply, RaftRpc};
use crate::rng::XorShift;
use crate::typ::*;

/// A peer that answered a ping within this long counts as reachable.
const REACHABLE_WITHIN: Duration = Duration::from_millis(400);

/// How long before its silence could make it run a hub starts pinging the voters: three
/// guard rounds (an answer on a loaded machine's loopback takes well under one).
const PING_AHEAD: Duration = Duration::from_millis(3 * GUARD_EVERY.as_millis() as u64);

/// Reads this node's last log id from its log (answered to pings, read when asked: the
/// guard itself reads it only in the rounds it needs it).
pub(crate) type LastLog = Arc<dyn Fn() -> futures::future::BoxFuture<'static, Option<LogId>> + Send + Sync>;

/// The [`LastLog`] of a log store.
pub(crate) fn last_log_of<LS: openraft::storage::RaftLogStorage<TypeConfig> + Clone>(log: LS) -> LastLog {
    Arc::new(move || {
        let mut log = log.clone();
        Box::pin(async move { log.get_log_state().await.ok().and_then(|s| s.last_log_id) })
    })
}

/// Each peer's last answer to the election guard's ping: when, and its last log id.
type Answers = Arc<std::sync::Mutex<BTreeMap<NodeId, (Instant, Option<LogId>)>>>;

/// When a follower runs for leader: after `lease + timeout` without hearing a leader (a
/// candidate: after `timeout`), `timeout` drawn from `[min, max)` ms for each attempt.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ElectionTimes {
    lease: Duration,
    min: u64,
    max: u64,
}

impl ElectionTimes {
    pub(crate) fn from_config(c: &Config) -> Self {
        Self {
            lease: Duration::from_millis(c.election_timeout_max),
            min: c.election_timeout_min,
            max: c.election_timeout_max,
        }
    }

    fn draw(&self, rng: &mut XorShift) -> Duration {
        Duration::from_millis(self.min + rng.below(self.max - self.min))
    }
}

/// Runs this hub's elections (openraft's own election timer stays off). A hub runs for
/// leader only when it may win, as a pre-vote would (openraft 0.9 has none): after it has
/// heard from a leader (or a grace of twice the longest election timeout has passed: a
/// new cluster), and only while a majority of the voters, itself included, answers its
/// pings (every 50 ms, from shortly before its silence would make it run) with a log no newer than its own, so would vote for it; then
/// after the same silence openraft would wait. Why not openraft's timer: a hub cut off
/// from its peers would run alone again and again, raising its term, and back, unseat the
/// leader with it; a follower that missed the leader's last entry would run first and be
/// refused, raising the term the up-to-date one must then outbid; and a node refused once
/// for its shorter log keeps openraft's "seen a greater log" flag until it next runs,
/// adding twice the longest election timeout (800 ms) to that election, however much
/// later (all three found in the simulation's logs: failovers of 1.5-2.5 s).
pub(crate) async fn run_elections(raft: Raft, net: Network, me: NodeId, times: ElectionTimes, last_log: LastLog) {
    let started = Instant::now();
    let grace = 2 * times.lease;
    let mut heard_leader = false;
    // Each peer's last answer: when, and its last log id. Pings run on their own, one at a
    // time per peer, so a dead peer's 300 ms timeout delays nobody else's answer.
    let answers: Answers = Arc::default();
    let mut pinging: BTreeMap<NodeId, tokio::task::JoinHandle<()>> = BTreeMap::new();
    let mut rng = XorShift::new(now_ms() ^ me.rotate_left(32));
    let mut timeout = times.draw(&mut rng);
    let mut allowed = false;
    // Changes of this node's vote, role, leader or membership: what ends a wait early.
    let mut server = raft.server_metrics();
    loop {
        let round = Instant::now();
        server.borrow_and_update();
        let m = raft.metrics().borrow().clone();
        if matches!(m.state, openraft::ServerState::Shutdown) {
            pinging.values().for_each(|t| t.abort());
            return;
        }
        heard_leader |= m.current_leader.is_some();
        let membership = m.membership_config.membership().clone();
        let voters: Vec<(NodeId, BasicNode)> = membership
            .voter_ids()
            .filter(|v| *v != me)
            .filter_map(|v| membership.get_node(&v).map(|n| (v, n.clone())))
            .collect();
        let voter = membership.voter_ids().any(|v| v == me);
        let leading = matches!(m.state, openraft::ServerState::Leader);
        if !voter || leading {
            // Nothing to decide until this node's role changes.
            if !changed_within(&mut server, IDLE_CHECK).await {
                return;
            }
            continue;
        }
        // The last time this node heard a leader (or changed its vote), and how long a
        // silence makes it run.
        let since = raft.with_raft_state(|st| st.vote_last_modified()).await.ok().flatten().unwrap_or(started);
        let silence = if m.vote.committed { times.lease + timeout } else { timeout };
        // The answers count only when this node has been silent that long (below), and
        // only fresh ones: pinging starts PING_AHEAD before that moment, a few rounds for
        // the answers to come back in. Until then the guard sleeps: a leader heard
        // meanwhile only moves that moment later, and a change of vote or role wakes it.
        // (Heartbeats come every 1.5 heartbeat intervals, openraft's tick: a follower
        // pings only once it has missed two.)
        let near_in = silence.saturating_sub(since.elapsed() + PING_AHEAD);
        if !near_in.is_zero() {
            if !changed_within(&mut server, near_in).await {
                return;
            }
            continue;
        }
        let mine = last_log().await;
        for (id, node) in voters.iter() {
            if pinging.get(id).is_some_and(|t| !t.is_finished()) {
                continue;
            }
            let (net, node, id, answers) = (net.clone(), node.clone(), *id, answers.clone());
            pinging.insert(
                id,
                tokio::spawn(async move {
                    // Bounded as a whole (a dial to a dead peer takes longer), and counted
                    // from when the answer came.
                    let ping = tokio::time::timeout(
                        Duration::from_millis(300),
                        net.call(id, &node, &RaftRpc::Ping, Duration::from_millis(300)),
                    );
                    if let Ok(Ok(RaftReply::Pong(theirs))) = ping.await {
                        crate::sync::lock(&answers).insert(id, (Instant::now(), theirs));
                    }
                }),
            );
        }
        let would_vote = {
            let answers = crate::sync::lock(&answers);
            1 + voters
                .iter()
                .filter(|(id, _)| {
                    answers.get(id).is_some_and(|(t, theirs)| t.elapsed() <= REACHABLE_WITHIN && *theirs <= mine)
                })
                .count()
        };
        let majority = 2 * would_vote > voters.len() + 1;
        let allow = (heard_leader || started.elapsed() >= grace) && majority;
        if allow != allowed {
            allowed = allow;
            tracing::debug!(would_vote, voters = voters.len() + 1, allow, "elections");
        }
        if allow && since.elapsed() >= silence {
            tracing::info!(term = m.current_term, silent_ms = since.elapsed().as_millis() as u64, "running for leader");
            if raft.trigger().elect().await.is_err() {
                return;
            }
            timeout = times.draw(&mut rng);
        }
        tokio::time::sleep(GUARD_EVERY.saturating_sub(round.elapsed())).await;
    }
}

/// Waits until this node's vote, role, leader or membership changes, or `wait` passes;
/// false when the node is gone.
async fn changed_within(server: &mut tokio::sync::watch::Receiver<ServerMetrics>, wait: Duration) -> bool {
    tokio::select! {
        changed = server.changed() => changed.is_ok(),
        _ = tokio::time::sleep(wait) => true,
    }
}

/// How often a leader (or a hub that does not vote) looks again without a change (none
/// is needed: a bound, not a tick).
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// How often a hub near its election timer reads its own log, pings each voter, and checks
/// the timer.
const GUARD_EVERY: Duration = Duration::from_millis(50);
