//! Proposal batching: the proposals one node makes while others are in flight are
//! committed together as one [`Command::Batch`] (one log entry, one forward to the leader,
//! one flush), whatever the number of writers; and the ids of the proposals a node makes.

use std::sync::Arc;

use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::node::ConsensusNode;
use crate::state::{Command, CommandResult, Proposal};
use crate::typ::NodeId;

/// A proposal waiting to be committed, and where its result goes.
pub(crate) type Waiting = (Proposal, tokio::sync::oneshot::Sender<Result<CommandResult>>);

/// Batches one node commits at once; proposals arriving meanwhile wait and go together.
const BATCHES_IN_FLIGHT: usize = 2;
/// The most proposals, and bytes of them, in one batch (one log entry, one forward).
const MAX_BATCH: usize = 512;
const MAX_BATCH_BYTES: u64 = 1 << 20;

/// A fresh proposal id (unique per proposer: node id, time, counter).
pub(crate) fn proposal_id(node: NodeId) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{node}-{}-{}", now_ms(), N.fetch_add(1, Ordering::Relaxed))
}

/// Takes proposals as they come and commits them in batches, at most
/// `BATCHES_IN_FLIGHT` at a time: while those are in flight the next batch grows.
pub(crate) async fn batch_proposals(
    node: std::sync::Weak<ConsensusNode>,
    mut waiting: tokio::sync::mpsc::UnboundedReceiver<Waiting>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    while let Some(first) = waiting.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut bytes = bincode::serialized_size(&first.0).unwrap_or(0);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            let Ok(next) = waiting.try_recv() else { break };
            bytes += bincode::serialized_size(&next.0).unwrap_or(0);
            batch.push(next);
        }
        let Some(node) = node.upgrade() else { return };
        tokio::spawn(async move {
            node.commit_batch(batch).await;
            drop(slot);
        });
    }
}

impl ConsensusNode {
    /// Commits a batch and hands each proposal its result.
    pub(crate) async fn commit_batch(&self, mut batch: Vec<Waiting>) {
        if batch.len() == 1 {
            let (p, tx) = batch.pop().expect("one");
            let _ = tx.send(self.propose_now(p).await);
            return;
        }
        let (proposals, senders): (Vec<Proposal>, Vec<_>) = batch.into_iter().unzip();
        let n = proposals.len();
        let outer = Proposal { id: proposal_id(self.id), now_ms: now_ms(), command: Command::Batch(proposals) };
        match self.propose_now(outer).await {
            Ok(CommandResult::Batch(results)) if results.len() == n => {
                for (tx, r) in senders.into_iter().zip(results) {
                    let _ = tx.send(Ok(r));
                }
            }
            Ok(other) => {
                for tx in senders {
                    let _ = tx.send(Err(Error::Raft(format!("a batch of {n} was answered with {other:?}"))));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for tx in senders {
                    let _ = tx.send(Err(Error::NoQuorum(message.clone())));
                }
            }
        }
    }
}
