//! Admission and settlement: two Raft writes around every request with an API key.
//! [`Hub::write_admission`] checks the key's limits and reserves an upper bound of the
//! request's tokens against its budgets, whichever hub the request reached; the
//! [`Admission`] it returns settles the tokens actually used when it is dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nave_consensus::state::{Command, CommandResult, Proposal};

use crate::error::ApiError;
use crate::{Caller, Hub};

/// An admitted request's reservation; settles with the tokens used when dropped, so a
/// client that goes away mid-stream is still charged what it got.
pub struct Admission {
    hub: Option<(Arc<Hub>, String)>,
    pub used: AtomicU64,
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

impl Hub {
    /// Admission: one consensus write that checks the key's limits and reserves
    /// `max_tokens` against its budgets, whichever hub the request reached. (The admin
    /// key has no limits and writes nothing.)
    #[tracing::instrument(name = "admit", skip_all)]
    pub async fn write_admission(
        self: &Arc<Self>,
        caller: &Caller,
        request_id: &str,
        max_tokens: usize,
    ) -> Result<Admission, ApiError> {
        let digest = match caller {
            Caller::Admin => return Ok(Admission { hub: None, used: Default::default() }),
            Caller::Key(d) => d.clone(),
        };
        let id = format!("admit-{}-{request_id}-{}", self.id, nave_consensus::ids::random_id());
        let p = Proposal {
            id: id.clone(),
            now_ms: nave_consensus::clock::now_ms(),
            command: Command::Admit { digest, max_tokens: max_tokens as u64 },
        };
        match self.consensus.propose(p).await {
            Ok(CommandResult::Admitted { .. }) => {
                Ok(Admission { hub: Some((self.clone(), id)), used: Default::default() })
            }
            Ok(other) => {
                if let CommandResult::Refused { reason, .. } = &other {
                    self.metrics.refusal(reason.as_str());
                }
                Err(ApiError::from_command(other))
            }
            Err(e) => {
                self.metrics.refusal("no_quorum");
                Err(ApiError::no_quorum(e))
            }
        }
    }
}
