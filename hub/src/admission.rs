//! Admission and settlement: two Raft writes around every request with an API key.
//! [`Hub::write_admission`] checks the key's limits and reserves an upper bound of the
//! request's tokens (prompt plus completion) against its budgets, whichever hub the request
//! reached; the [`Admission`] it returns settles the tokens actually used when it is
//! dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nave_consensus::state::{Command, CommandResult, Proposal};
use nave_inference::Prompt;

use crate::error::ApiError;
use crate::{Caller, Hub};

/// An admitted request's reservation; settles with the tokens used when dropped, so a
/// client that goes away mid-stream is still charged what it got.
pub struct Admission {
    hub: Option<(Arc<Hub>, String)>,
    /// Completion tokens sent so far.
    pub used: AtomicU64,
    /// Prompt tokens as the spoke counted them; `u64::MAX` until it says (a request cut
    /// before its end is charged its prompt's bound: the spoke did read it).
    prompt: AtomicU64,
    prompt_bound: u64,
}

impl Admission {
    fn new(hub: Option<(Arc<Hub>, String)>, prompt_bound: usize) -> Self {
        Admission { hub, used: AtomicU64::new(0), prompt: AtomicU64::new(u64::MAX), prompt_bound: prompt_bound as u64 }
    }

    pub fn record(&self, tokens: usize) {
        self.used.fetch_add(tokens as u64, Ordering::Relaxed);
    }

    pub fn record_prompt(&self, tokens: usize) {
        self.prompt.store(tokens as u64, Ordering::Relaxed);
    }

    fn prompt_tokens(&self) -> u64 {
        match self.prompt.load(Ordering::Relaxed) {
            u64::MAX => self.prompt_bound,
            n => n,
        }
    }
}

/// Chat template overhead assumed when no spoke has reported the model's: per message
/// (role markers, separators) and per prompt (a default system prompt, the generation
/// prompt).
const TEMPLATE_PER_MESSAGE: usize = 16;
const TEMPLATE_PER_PROMPT: usize = 256;
/// Slack per message over the spoke's figures (a role other than the measured ones).
const SLACK_PER_MESSAGE: usize = 4;

/// An upper bound of a prompt's tokens that the hub can compute without the model's
/// tokenizer: every token of the byte-level and byte-fallback vocabularies Nave loads
/// covers at least one byte of text, so a text's bytes bound its tokens; the chat
/// template adds what the spokes measured (`overhead`: tokens for the first message and
/// for each further one), or a generous constant before any spoke reported it.
/// Settlement then records the spoke's exact count.
pub fn prompt_bound(prompt: &Prompt, overhead: Option<(usize, usize)>) -> usize {
    match prompt {
        Prompt::Text(t) => t.len().saturating_add(2),
        Prompt::Tokens(t) => t.len(),
        Prompt::Chat(messages) => {
            let (first, each) = overhead.unwrap_or((TEMPLATE_PER_PROMPT, TEMPLATE_PER_MESSAGE));
            let calls = |m: &nave_inference::ChatMessage| -> usize {
                m.tool_calls.iter().map(|c| c.id.len() + c.name.len() + c.arguments.len() + SLACK_PER_MESSAGE).sum()
            };
            let text: usize =
                messages.iter().map(|m| m.role.len() + m.content.len() + calls(m) + SLACK_PER_MESSAGE).sum();
            first.saturating_add(each.saturating_mul(messages.len().saturating_sub(1))).saturating_add(text)
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some((hub, admitted)) = self.hub.take() {
            let completion_tokens = self.used.load(Ordering::Relaxed);
            let prompt_tokens = self.prompt_tokens();
            tokio::spawn(async move {
                let settle = Command::Settle { admitted: admitted.clone(), prompt_tokens, completion_tokens };
                if let Err(e) = hub.consensus.write(settle).await {
                    // The reservation expires on its own (state.rs); the budget stays safe.
                    tracing::warn!(%admitted, error = %e, "settlement failed");
                }
            });
        }
    }
}

impl Hub {
    /// Admission: one consensus write that checks the key's limits and reserves `tokens`
    /// (the prompt's bound plus `max_tokens`) against its budgets, whichever hub the
    /// request reached. (The admin key has no limits and writes nothing.)
    #[tracing::instrument(name = "admit", skip_all)]
    pub async fn write_admission(
        self: &Arc<Self>,
        caller: &Caller,
        request_id: &str,
        model: &str,
        tokens: usize,
        prompt_bound: usize,
    ) -> Result<Admission, ApiError> {
        let digest = match caller {
            Caller::Admin => return Ok(Admission::new(None, prompt_bound)),
            Caller::Key(d) => d.clone(),
        };
        let id = format!("admit-{}-{request_id}-{}", self.id, nave_consensus::ids::random_id());
        let p = Proposal {
            id: id.clone(),
            now_ms: nave_consensus::clock::now_ms(),
            command: Command::Admit { digest, model: model.to_string(), tokens: tokens as u64 },
        };
        match self.consensus.propose(p).await {
            Ok(CommandResult::Admitted { .. }) => Ok(Admission::new(Some((self.clone(), id)), prompt_bound)),
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
