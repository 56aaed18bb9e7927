//! The OpenAI API: `POST /v1/chat/completions`, `POST /v1/completions` (whole or streamed
//! as SSE chunks ending with `data: [DONE]`), `GET /v1/models`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, Stream, StreamExt};
use nave_consensus::clock::now_secs;
use nave_inference::{ChatMessage, Event, FinishReason, GenerateRequest, Prompt, SamplingParams};
use serde::Serialize;

use super::types::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatRequest, Completion, CompletionRequest, Content, Delta,
    ModelEntry, ModelList, PromptField, Sampling, Stop, TextChoice, UsageBody,
};
use super::{check_model, generate, parse, respond, Answer, AppState, Ctx, Held, Kind};
use crate::error::ApiError;
use crate::route::Dispatch;
use crate::{Caller, Hub};

/// The engine's sampling parameters from OpenAI's fields (defaults where absent), or 400.
pub(crate) fn params(s: Sampling) -> Result<SamplingParams, ApiError> {
    if s.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request("only n=1 is supported").with_param("n"));
    }
    let d = SamplingParams::default();
    let p = SamplingParams {
        max_tokens: s.max_completion_tokens.or(s.max_tokens).unwrap_or(d.max_tokens),
        temperature: s.temperature.unwrap_or(d.temperature),
        top_p: s.top_p.unwrap_or(d.top_p),
        top_k: s.top_k.unwrap_or(d.top_k),
        min_p: s.min_p.unwrap_or(d.min_p),
        seed: s.seed,
        stop: match s.stop {
            None => vec![],
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        },
        presence_penalty: s.presence_penalty.unwrap_or(0.0),
        frequency_penalty: s.frequency_penalty.unwrap_or(0.0),
        repetition_penalty: s.repetition_penalty.unwrap_or(1.0),
        ignore_eos: s.ignore_eos.unwrap_or(false),
    };
    p.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(p)
}

pub async fn chat_completions(
    State(hub): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let h = hub.clone();
    respond(&h, &headers, "/v1/chat/completions", |ctx| async move {
        let req: ChatRequest = parse(&body)?;
        let model = check_model(&hub, &req.model)?;
        if req.messages.is_empty() {
            return Err(ApiError::bad_request("messages must not be empty").with_param("messages"));
        }
        let messages: Vec<ChatMessage> = req
            .messages
            .into_iter()
            .map(|m| ChatMessage::new(m.role, m.content.map(Content::text).unwrap_or_default()))
            .collect();
        let include_usage = req.stream_options.unwrap_or_default().include_usage;
        let gen = GenerateRequest {
            request_id: ctx.request_id.clone(),
            prompt: Prompt::Chat(messages),
            params: params(req.sampling)?,
        };
        run(&hub, &caller, Kind::Chat, &model, gen, &ctx, req.stream, include_usage).await
    })
    .await
}

pub async fn completions(
    State(hub): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let h = hub.clone();
    respond(&h, &headers, "/v1/completions", |ctx| async move {
        let req: CompletionRequest = parse(&body)?;
        let model = check_model(&hub, &req.model)?;
        let prompt = match req.prompt {
            PromptField::One(s) => s,
            PromptField::Many(v) if v.len() == 1 => v.into_iter().next().unwrap_or_default(),
            PromptField::Many(_) => {
                return Err(ApiError::bad_request("only one prompt per request is supported").with_param("prompt"))
            }
        };
        let include_usage = req.stream_options.unwrap_or_default().include_usage;
        let gen = GenerateRequest {
            request_id: ctx.request_id.clone(),
            prompt: Prompt::Text(prompt),
            params: params(req.sampling)?,
        };
        run(&hub, &caller, Kind::Text, &model, gen, &ctx, req.stream, include_usage).await
    })
    .await
}

/// Runs a chat or text generation, streamed as SSE or whole.
#[allow(clippy::too_many_arguments)]
async fn run(
    hub: &Arc<Hub>,
    caller: &Caller,
    kind: Kind,
    model: &str,
    gen: GenerateRequest,
    ctx: &Ctx,
    streamed: bool,
    include_usage: bool,
) -> Result<(String, Response), ApiError> {
    let generated = generate(hub, caller, model, gen, ctx, ctx.session.as_deref(), streamed).await?;
    let f = ChunkFormat {
        kind,
        id: format!("{}-{}", id_prefix(kind), nave_consensus::ids::random_id()),
        created: now_secs(),
        model: model.to_string(),
        include_usage,
    };
    let resp = match generated.answer {
        Answer::Whole { text, finish, usage } => {
            let usage = Some(UsageBody::from(&usage));
            let finish_reason = finish.as_str().to_string();
            match kind {
                Kind::Chat => {
                    let message = AssistantMessage { role: "assistant".into(), content: text };
                    let choice = ChatChoice { index: 0, message, logprobs: None, finish_reason };
                    Json(f.completion("chat.completion", vec![choice], usage)).into_response()
                }
                Kind::Text => {
                    let choice = TextChoice { index: 0, text, logprobs: None, finish_reason: Some(finish_reason) };
                    Json(f.completion("text_completion", vec![choice], usage)).into_response()
                }
            }
        }
        Answer::Stream(d) => {
            let events = sse_stream(hub.clone(), d, f, generated.held);
            Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))).into_response()
        }
    };
    Ok((model.to_string(), resp))
}

fn id_prefix(kind: Kind) -> &'static str {
    match kind {
        Kind::Chat => "chatcmpl",
        Kind::Text => "cmpl",
    }
}

/// What every chunk of one answer repeats.
struct ChunkFormat {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl ChunkFormat {
    fn completion<C>(&self, object: &str, choices: Vec<C>, usage: Option<UsageBody>) -> Completion<C> {
        Completion {
            id: self.id.clone(),
            object: object.into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }

    fn chunk_object(&self) -> &'static str {
        match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Text => "text_completion",
        }
    }

    /// One streamed chunk: the role (chat's first), text, or the finish reason.
    fn chunk(&self, text: Option<&str>, role: bool, finish: Option<FinishReason>) -> SseEvent {
        let finish_reason = finish.map(|f| f.as_str().to_string());
        match self.kind {
            Kind::Chat => {
                let delta = Delta { role: role.then(|| "assistant".into()), content: text.map(str::to_string) };
                let choice = ChatChunkChoice { index: 0, delta, logprobs: None, finish_reason };
                sse_json(&self.completion(self.chunk_object(), vec![choice], None))
            }
            Kind::Text => {
                let choice =
                    TextChoice { index: 0, text: text.unwrap_or("").to_string(), logprobs: None, finish_reason };
                sse_json(&self.completion(self.chunk_object(), vec![choice], None))
            }
        }
    }

    /// The last chunk with `stream_options.include_usage`: no choices, the usage.
    fn usage_chunk(&self, usage: &nave_inference::Usage) -> SseEvent {
        sse_json(&self.completion::<TextChoice>(self.chunk_object(), vec![], Some(usage.into())))
    }
}

fn sse_json<T: Serialize>(v: &T) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(v).expect("API bodies are plain structs of strings and numbers"))
}

/// SSE events for a running dispatch. The response body owns the dispatch: a client that
/// goes away drops it, which stops the QUIC stream and cancels the sequence on the spoke.
fn sse_stream(
    hub: Arc<Hub>,
    d: Dispatch,
    f: ChunkFormat,
    held: Held,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    struct St {
        hub: Arc<Hub>,
        d: Dispatch,
        f: ChunkFormat,
        first: bool,
        done: bool,
        last: Instant,
        held: Held,
    }
    // Time to first token counts from the request's arrival.
    let last = held.arrived;
    let start = St { hub, d, f, first: true, done: false, last, held };
    stream::unfold(start, |mut st| async move {
        if st.done {
            return None;
        }
        let mut out: Vec<SseEvent> = Vec::new();
        let chat = st.f.kind == Kind::Chat;
        match st.d.next().await {
            Some(Event::Delta { text, tokens }) => {
                st.held.admission.record(tokens.len());
                let now = Instant::now();
                if st.first {
                    st.hub.metrics.ttft.observe(now.duration_since(st.last).as_secs_f64());
                } else {
                    st.hub.metrics.itl.observe(now.duration_since(st.last).as_secs_f64());
                }
                st.last = now;
                if st.first && chat {
                    out.push(st.f.chunk(None, true, None));
                }
                st.first = false;
                if !text.is_empty() {
                    out.push(st.f.chunk(Some(&text), false, None));
                }
            }
            Some(Event::Done { finish, usage }) => {
                st.held.admission.record_prompt(usage.prompt_tokens);
                if st.first && chat {
                    out.push(st.f.chunk(None, true, None));
                }
                out.push(st.f.chunk(None, false, Some(finish)));
                if st.f.include_usage {
                    out.push(st.f.usage_chunk(&usage));
                }
                out.push(SseEvent::default().data("[DONE]"));
                st.done = true;
            }
            Some(Event::Error { message, client }) => {
                // Tokens may already be out: the stream ends with an error event instead of
                // a silent replay.
                let status = if client { StatusCode::BAD_REQUEST } else { StatusCode::BAD_GATEWAY };
                out.push(sse_json(&ApiError::new(status, message).body()));
                out.push(SseEvent::default().data("[DONE]"));
                st.done = true;
            }
            None => {
                let e = ApiError::new(StatusCode::BAD_GATEWAY, format!("spoke {} ended the stream early", st.d.spoke));
                out.push(sse_json(&e.body()));
                st.done = true;
            }
        }
        Some((stream::iter(out.into_iter().map(Ok)), st))
    })
    .flatten()
}

/// `GET /v1/models`: the served models and the adapters.
pub async fn models(State(hub): State<AppState>) -> Json<ModelList> {
    let created = now_secs();
    let data = hub
        .models()
        .iter()
        .chain(hub.adapters().iter())
        .map(|m| ModelEntry { id: m.clone(), object: "model".into(), created, owned_by: "nave".into() })
        .collect();
    Json(ModelList { object: "list".into(), data })
}
