//! Sending a request to a spoke: pick a candidate with the model's policy, open a stream,
//! and wait for its first event. A failure before the first event (unreachable, refused
//! as busy, the spoke dying, or hung: not taking the request within the heartbeat
//! timeout) is retried on another spoke with backoff, within the request's deadline. After that the caller gets events as they come; a broken stream
//! becomes an error event, never a hang (the QUIC idle timeout closes a dead spoke's
//! connection within the heartbeat timeout).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use nave_consensus::frame::read_frame;
use nave_inference::engine::Collected;
use nave_inference::sampler::TokenLogprob;
use nave_inference::{Event, FinishReason, GenerateRequest, Usage};
use nave_spoke::protocol::{HubToSpoke, SpokeToHub, MAX_FRAME};
use tokio::time::timeout_at;

use crate::error::ApiError;
use crate::Hub;

/// A request running on a spoke.
pub struct Dispatch {
    pub spoke: String,
    first: Option<Event>,
    recv: quinn::RecvStream,
    _send: quinn::SendStream,
    pub deadline: Instant,
    _counted: Option<crate::spokes::InFlight>,
}

impl Dispatch {
    /// The next event; `None` after `Done` or an error event.
    pub async fn next(&mut self) -> Option<Event> {
        if let Some(ev) = self.first.take() {
            return Some(ev);
        }
        match timeout_at(self.deadline.into(), read_frame::<SpokeToHub, _>(&mut self.recv, MAX_FRAME)).await {
            Err(_) => Some(Event::Error { message: "the request's deadline passed".into(), client: false }),
            Ok(Ok(Some(SpokeToHub::Event(ev)))) => Some(ev),
            Ok(Ok(None)) => None,
            Ok(Ok(Some(other))) => {
                Some(Event::Error { message: format!("unexpected frame from spoke: {other:?}"), client: false })
            }
            Ok(Err(e)) => {
                Some(Event::Error { message: format!("spoke {} failed mid-stream: {e}", self.spoke), client: false })
            }
        }
    }
}

enum Attempt {
    Started(Dispatch),
    /// Another spoke may succeed; `count` says whether it is the spoke's failure.
    Retry {
        message: String,
        count: bool,
    },
    Fatal(ApiError),
}

/// Starts `request` for `model` on the best spoke, retrying others before the first event.
#[tracing::instrument(name = "dispatch", skip_all, fields(model = %model, spoke = tracing::field::Empty))]
pub async fn dispatch(
    hub: &Hub,
    model: &str,
    request: GenerateRequest,
    session: Option<&str>,
    deadline: Instant,
    exclude: &[String],
) -> Result<Dispatch, ApiError> {
    let mut tried: Vec<String> = exclude.to_vec();
    let mut backoff = Duration::from_millis(25);
    let mut last_error = String::from("no spoke is ready for this model");
    let policy = hub.policy(model);
    let no_spoke_wait = Duration::from_millis(2 * hub.config.cluster.heartbeat_timeout_ms);
    let mut waiting_since: Option<Instant> = None;
    loop {
        if Instant::now() >= deadline {
            return Err(ApiError::deadline());
        }
        let candidates = hub.spokes.candidates(model, &tried);
        if candidates.is_empty() {
            // Nothing to try now: every spoke was tried, or they are reconnecting or
            // restarting (a spoke comes back within seconds). Wait for one with backoff,
            // for up to twice the heartbeat timeout and within the deadline; then every
            // spoke is a candidate again, those that failed this request included.
            let give_up = deadline.min(*waiting_since.get_or_insert_with(Instant::now) + no_spoke_wait);
            if Instant::now() + backoff >= give_up {
                hub.metrics.refusal("no_capacity");
                let what = if tried.is_empty() { format!("no spoke is ready to serve {model}") } else { last_error };
                return Err(ApiError::unavailable(what));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
            tried.clear();
            continue;
        }
        waiting_since = None;
        let id = candidates[policy.pick(&candidates, session)].id.clone();
        let started = Instant::now();
        match attempt(hub, &id, model, &request, deadline).await {
            Attempt::Started(d) => {
                tracing::Span::current().record("spoke", id.as_str());
                hub.spokes.record(&id, true, started.elapsed().as_secs_f64());
                return Ok(d);
            }
            Attempt::Fatal(e) => return Err(e),
            Attempt::Retry { message, count } => {
                tracing::warn!(spoke = %id, error = %message, request_id = %request.request_id, "retrying on another spoke");
                if count {
                    hub.spokes.record(&id, false, started.elapsed().as_secs_f64());
                }
                hub.metrics.retries.fetch_add(1, Ordering::Relaxed);
                last_error = message;
                tried.push(id);
                if Instant::now() + backoff < deadline {
                    tokio::time::sleep(backoff).await;
                }
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    }
}

async fn attempt(hub: &Hub, id: &str, model: &str, request: &GenerateRequest, deadline: Instant) -> Attempt {
    let msg = HubToSpoke::Generate { model: model.to_string(), request: request.clone() };
    let counted = hub.spokes.in_flight(id);
    let open = timeout_at(deadline.into(), hub.spokes.open(id, &msg)).await;
    let (send, mut recv) = match open {
        Err(_) => return Attempt::Fatal(ApiError::deadline()),
        Ok(Err(e)) => return Attempt::Retry { message: e.to_string(), count: true },
        Ok(Ok(s)) => s,
    };
    // The spoke takes the request at once or is hung: a hung spoke (its heartbeats may
    // still flow) counts as a failure and the request moves on, long before its deadline.
    let take_within = Duration::from_millis(hub.config.cluster.heartbeat_timeout_ms);
    let accept_by = deadline.min(Instant::now() + take_within);
    let mut accepted = false;
    loop {
        let until = if accepted { deadline } else { accept_by };
        let frame = match timeout_at(until.into(), read_frame::<SpokeToHub, _>(&mut recv, MAX_FRAME)).await {
            Err(_) if until < deadline => {
                return Attempt::Retry {
                    message: format!("spoke {id} did not take the request within {} ms", take_within.as_millis()),
                    count: true,
                };
            }
            Err(_) => return Attempt::Fatal(ApiError::deadline()),
            Ok(frame) => frame,
        };
        return match frame {
            Ok(Some(SpokeToHub::Accepted)) if !accepted => {
                accepted = true;
                continue;
            }
            Err(e) => Attempt::Retry { message: format!("spoke {id}: {e}"), count: true },
            Ok(None) => Attempt::Retry { message: format!("spoke {id} closed the stream"), count: true },
            Ok(Some(SpokeToHub::Refused { message, retryable: true })) => Attempt::Retry { message, count: false },
            Ok(Some(SpokeToHub::Refused { message, retryable: false })) => {
                Attempt::Fatal(ApiError::bad_request(message))
            }
            Ok(Some(SpokeToHub::Event(Event::Error { message, client: true }))) => {
                Attempt::Fatal(ApiError::bad_request(message))
            }
            Ok(Some(SpokeToHub::Event(Event::Error { message, client: false }))) => {
                Attempt::Retry { message, count: true }
            }
            Ok(Some(SpokeToHub::Event(ev))) => Attempt::Started(Dispatch {
                spoke: id.to_string(),
                first: Some(ev),
                recv,
                _send: send,
                deadline,
                _counted: counted,
            }),
            Ok(Some(
                SpokeToHub::Accepted | SpokeToHub::Heartbeat(_) | SpokeToHub::Jobs(_) | SpokeToHub::Renewed { .. },
            )) => Attempt::Retry { message: format!("spoke {id} answered out of turn"), count: true },
        };
    }
}

/// A whole answer: the prompt's log-probabilities (when asked for) and every choice, by
/// index.
pub struct Completed {
    pub prompt_logprobs: Vec<TokenLogprob>,
    pub choices: Vec<Collected>,
}

impl Completed {
    /// The request's usage as OpenAI counts it: the prompt once, every choice's tokens.
    pub fn usage(&self) -> Usage {
        total_usage(self.choices.iter().map(|c| &c.usage))
    }
}

/// The usage of a request's choices together: the prompt once (as the first choice
/// prefilled it, cached tokens included), the completion tokens of all.
pub fn total_usage<'a>(choices: impl Iterator<Item = &'a Usage>) -> Usage {
    let mut total = Usage::default();
    for (i, u) in choices.enumerate() {
        if i == 0 {
            (total.prompt_tokens, total.cached_tokens) = (u.prompt_tokens, u.cached_tokens);
        }
        total.completion_tokens += u.completion_tokens;
    }
    total
}

/// The whole answer of a non-streamed request. Nothing has reached the client yet, so a
/// spoke that fails mid-answer is retried from scratch on another one.
pub async fn complete(
    hub: &Hub,
    model: &str,
    request: GenerateRequest,
    session: Option<&str>,
    deadline: Instant,
) -> Result<Completed, ApiError> {
    let mut failed: Vec<String> = Vec::new();
    let n = request.params.n.max(1);
    loop {
        let mut d = dispatch(hub, model, request.clone(), session, deadline, &failed).await?;
        let blank = |finish| Collected {
            text: String::new(),
            tokens: Vec::new(),
            logprobs: Vec::new(),
            tool_calls: Vec::new(),
            embedding: None,
            finish,
            usage: Usage::default(),
        };
        let mut answer =
            Completed { prompt_logprobs: Vec::new(), choices: (0..n).map(|_| blank(FinishReason::Stop)).collect() };
        let mut done = 0;
        let started = Instant::now();
        let mut first = true;
        loop {
            match d.next().await {
                Some(Event::Delta { choice, text, tokens, logprobs }) => {
                    if first {
                        hub.metrics.ttft.observe(started.elapsed().as_secs_f64());
                        first = false;
                    }
                    let Some(c) = answer.choices.get_mut(choice as usize) else {
                        return Err(ApiError::new(
                            StatusCode::BAD_GATEWAY,
                            format!("spoke {} sent choice {choice} of {n}", d.spoke),
                        ));
                    };
                    c.text.push_str(&text);
                    c.tokens.extend(tokens);
                    c.logprobs.extend(logprobs);
                }
                Some(Event::Prompt { logprobs }) => answer.prompt_logprobs.extend(logprobs),
                Some(Event::Embedding { vector }) => {
                    if let Some(c) = answer.choices.first_mut() {
                        c.embedding = Some(vector);
                    }
                }
                Some(Event::ToolCall { choice, call, .. }) => {
                    if let Some(c) = answer.choices.get_mut(choice as usize) {
                        c.tool_calls.push(call);
                    }
                }
                // A whole answer needs only the complete calls.
                Some(Event::ToolCallStart { .. } | Event::ToolCallArguments { .. }) => {}
                Some(Event::Done { choice, finish, usage }) => {
                    let Some(c) = answer.choices.get_mut(choice as usize) else {
                        return Err(ApiError::new(
                            StatusCode::BAD_GATEWAY,
                            format!("spoke {} sent choice {choice} of {n}", d.spoke),
                        ));
                    };
                    (c.finish, c.usage) = (finish, usage);
                    done += 1;
                    if done == n {
                        return Ok(answer);
                    }
                }
                Some(Event::Error { message, client: true }) => return Err(ApiError::bad_request(message)),
                Some(Event::Error { message, client: false }) => {
                    if Instant::now() >= deadline {
                        return Err(ApiError::deadline());
                    }
                    tracing::warn!(spoke = %d.spoke, error = %message, "answer failed mid-way; retrying elsewhere");
                    hub.spokes.record(&d.spoke, false, 0.0);
                    hub.metrics.retries.fetch_add(1, Ordering::Relaxed);
                    failed.push(d.spoke.clone());
                    if failed.len() > 3 {
                        return Err(ApiError::unavailable(message));
                    }
                    break;
                }
                None => {
                    failed.push(d.spoke.clone());
                    break;
                }
            }
        }
    }
}
