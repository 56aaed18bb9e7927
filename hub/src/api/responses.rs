//! The Responses API: `POST /v1/responses` (with `store` and `previous_response_id`;
//! whole, or streamed as OpenAI's event sequence), `GET /v1/responses/{id}` and
//! `DELETE /v1/responses/{id}` (the key that created it only). A conversation lives in the
//! replicated state, so a follow-up on any hub continues it.
//!
//! `text.format` takes JSON (`json_object`) or JSON matching a schema (`json_schema`), by
//! constrained decoding, as chat's `response_format` does.
//!
//! A response cut by `max_output_tokens` is `"status": "incomplete"` with
//! `incomplete_details: {"reason": "max_output_tokens"}` (a stream then ends with
//! `response.incomplete` rather than `response.completed`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, StreamExt};
use nave_consensus::clock::now_secs;
use nave_consensus::state::{Command, CommandResult, StoredResponse, Turn};
use nave_inference::{ChatMessage, Event, FinishReason, GenerateRequest, Prompt, SamplingParams, Usage};

use super::types::{
    CachedTokens, Content, DeletedResponse, OutputMessage, OutputText, ReasoningTokens, ResponseObject,
    ResponseStreamEvent, ResponseUsage, ResponsesInput, ResponsesRequest, Sampling,
};
use super::{check_model, generate, parse, respond, Answer, AppState, Held};
use crate::error::{done, ApiError};
use crate::route::Dispatch;
use crate::{Caller, Hub};

/// The sampling parameters of a Responses request (OpenAI's defaults for the rest), or
/// the 400 naming a field Nave does not implement.
pub(crate) fn params(r: &ResponsesRequest) -> Result<SamplingParams, ApiError> {
    let unsupported = |field: &str, v: &serde_json::Value| {
        let shown: String = v.to_string().chars().take(80).collect();
        Err(ApiError::bad_request(format!("{field}: not supported yet (got {shown})")).with_param(field))
    };
    if let Some(v) = r.tools.as_ref().filter(|v| !v.as_array().is_some_and(Vec::is_empty)) {
        return unsupported("tools", v);
    }
    if let Some(v) = r.tool_choice.as_ref().filter(|v| *v != "none") {
        return unsupported("tool_choice", v);
    }
    // `text.format` is chat's `response_format` with the schema beside its name:
    // {"type": "json_schema", "name", "schema", "strict"}.
    let constraint = match r.text.as_ref().and_then(|t| t.get("format")) {
        None => None,
        Some(f) if f.get("type").and_then(|t| t.as_str()) == Some("json_schema") => {
            let schema = f.get("schema").filter(|s| s.is_object()).ok_or_else(|| {
                ApiError::bad_request("text.format.schema: a JSON schema object is required")
                    .with_param("text.format.schema")
            })?;
            Some(nave_inference::grammar::Constraint::JsonSchema(schema.to_string()))
        }
        Some(f) => super::tools::response_format(Some(f)).map_err(|e| {
            ApiError::bad_request(e.message.replace("response_format", "text.format")).with_param("text.format")
        })?,
    };
    let p = super::openai::params(Sampling {
        max_tokens: r.max_output_tokens,
        temperature: r.temperature,
        top_p: r.top_p,
        seed: r.seed,
        ..Default::default()
    })?;
    super::openai::checked(SamplingParams { constraint, ..p })
}

/// How a response stands: still running, or ended (cut by length or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    InProgress,
    Ended(FinishReason),
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::Ended(FinishReason::Length) => "incomplete",
            Status::Ended(FinishReason::Stop | FinishReason::ToolCalls) => "completed",
        }
    }
}

fn message_id(response_id: &str) -> String {
    format!("msg_{}", response_id.trim_start_matches("resp_"))
}

fn output_text(text: &str) -> OutputText {
    OutputText { kind: "output_text".into(), text: text.to_string(), annotations: vec![] }
}

fn output_message(response_id: &str, status: Status, content: Vec<OutputText>) -> OutputMessage {
    OutputMessage {
        kind: "message".into(),
        id: message_id(response_id),
        status: status.as_str().into(),
        role: "assistant".into(),
        content,
    }
}

fn response_json(r: &StoredResponse, status: Status, cached_tokens: usize) -> ResponseObject {
    let output = match status {
        Status::InProgress => vec![],
        Status::Ended(_) => vec![output_message(&r.id, status, vec![output_text(&r.output)])],
    };
    ResponseObject {
        id: r.id.clone(),
        object: "response".into(),
        created_at: r.created_ms / 1000,
        status: status.as_str().into(),
        model: r.model.clone(),
        previous_response_id: r.previous.clone(),
        error: None,
        incomplete_details: (status == Status::Ended(FinishReason::Length))
            .then(|| serde_json::json!({"reason": "max_output_tokens"})),
        output,
        usage: ResponseUsage {
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            total_tokens: r.input_tokens + r.output_tokens,
            input_tokens_details: CachedTokens { cached_tokens },
            output_tokens_details: ReasoningTokens { reasoning_tokens: 0 },
        },
    }
}

/// `POST /v1/responses`: the conversation so far comes from the replicated state (the
/// `previous_response_id` chain), so a follow-up on any hub continues it.
pub async fn create(
    State(hub): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let h = hub.clone();
    respond(&h, &headers, "/v1/responses", |ctx| async move {
        let req: ResponsesRequest = parse(&body)?;
        let params = params(&req)?;
        let model = check_model(&hub, &req.model)?;
        let owner = caller.owner();
        let history: Vec<StoredResponse> = match &req.previous_response_id {
            None => Vec::new(),
            Some(prev) => hub
                .consensus
                .read(|a| a.state.conversation(prev, &owner).map(|c| c.into_iter().cloned().collect()))
                .await?
                .ok_or_else(|| {
                    ApiError::new(StatusCode::NOT_FOUND, format!("response {prev:?} not found"))
                        .with_param("previous_response_id")
                })?,
        };
        let input: Vec<ChatMessage> = match req.input.clone() {
            ResponsesInput::Text(t) => vec![ChatMessage::new("user", t)],
            ResponsesInput::Items(items) => items
                .into_iter()
                .map(|m| ChatMessage::new(m.role, m.content.map(Content::text).unwrap_or_default()))
                .collect(),
        };
        if input.is_empty() {
            return Err(ApiError::bad_request("input must not be empty").with_param("input"));
        }
        let mut messages = Vec::new();
        if let Some(i) = &req.instructions {
            messages.push(ChatMessage::new("system", i.clone()));
        }
        for r in &history {
            messages.extend(r.input.iter().map(|t| ChatMessage::new(t.role.clone(), t.content.clone())));
            messages.push(ChatMessage::new("assistant", r.output.clone()));
        }
        messages.extend(input.iter().cloned());
        // Follow-ups of one conversation prefer one spoke (its prefix cache holds it).
        let session = history.first().map(|r| r.id.clone()).or_else(|| ctx.session.clone());
        let gen = GenerateRequest { request_id: ctx.request_id.clone(), prompt: Prompt::Chat(messages), params };
        // The response as it will be stored; its text and usage are filled in at the end.
        let stored = StoredResponse {
            id: format!("resp_{}{}", nave_consensus::ids::random_id(), nave_consensus::ids::random_id()),
            owner,
            model: model.clone(),
            previous: req.previous_response_id.clone(),
            created_ms: now_secs() * 1000,
            input: input.into_iter().map(|m| Turn { role: m.role, content: m.content }).collect(),
            output: String::new(),
            input_tokens: 0,
            output_tokens: 0,
            spoke: String::new(),
            incomplete: false,
            input_tools: Vec::new(),
            calls: Vec::new(),
        };
        // Held (the slot and the admission) until the response is stored.
        let generated = generate(&hub, &caller, &model, gen, &ctx, session.as_deref(), req.stream).await?;
        match generated.answer {
            Answer::Whole(answer) => {
                let usage = answer.usage();
                let Some(choice) = answer.choices.into_iter().next() else {
                    return Err(ApiError::new(StatusCode::BAD_GATEWAY, "the spoke answered no choice"));
                };
                let stored = finished(stored, choice.text, choice.finish, &usage);
                if req.store {
                    store(&hub, &stored).await?;
                }
                drop(generated.held);
                let body = response_json(&stored, Status::Ended(choice.finish), usage.cached_tokens);
                Ok((model, Json(body).into_response()))
            }
            Answer::Stream(d) => {
                let events = event_stream(hub.clone(), d, stored, req.store, generated.held);
                let sse = Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(10)));
                Ok((model, sse.into_response()))
            }
        }
    })
    .await
}

/// The stored response with its answer and usage.
fn finished(mut r: StoredResponse, text: String, finish: FinishReason, usage: &Usage) -> StoredResponse {
    r.output = text;
    r.incomplete = finish == FinishReason::Length;
    r.input_tokens = usage.prompt_tokens as u64;
    r.output_tokens = usage.completion_tokens as u64;
    r
}

/// Writes `r` to the replicated state, within its owner's quota, before the answer goes
/// out: a follow-up on any hub finds it.
async fn store(hub: &Hub, r: &StoredResponse) -> Result<(), ApiError> {
    let quota = hub.response_quota();
    match hub.consensus.write(Command::StoreResponse { response: Box::new(r.clone()), quota }).await? {
        CommandResult::Done => {
            let (used, bound) = (hub.consensus.state.read(|a| a.state.stored_response_bytes()), quota.max_total_bytes);
            if used > bound / 10 * 8 {
                tracing::warn!(used, bound, "stored responses use over 80% of their share of the snapshot bound");
            }
            Ok(())
        }
        CommandResult::Invalid(m) => Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, m)),
        other => Err(ApiError::from_command(other)),
    }
}

/// The SSE events of a streamed response: OpenAI's sequence around the text's deltas.
/// The response is stored (with `store`) before its last event, and the slot and the
/// admission are held until then. A client that goes away drops the dispatch, which
/// cancels the sequence on the spoke.
fn event_stream(
    hub: Arc<Hub>,
    d: Dispatch,
    stored: StoredResponse,
    store_it: bool,
    held: Held,
) -> impl futures::Stream<Item = Result<SseEvent, Infallible>> {
    struct St {
        hub: Arc<Hub>,
        d: Dispatch,
        stored: StoredResponse,
        store_it: bool,
        held: Option<Held>,
        seq: u64,
        text: String,
        started: bool,
        done: bool,
    }
    impl St {
        fn event(&mut self, make: impl FnOnce(u64) -> ResponseStreamEvent) -> SseEvent {
            let ev = make(self.seq);
            self.seq += 1;
            SseEvent::default()
                .event(ev.name())
                .data(serde_json::to_string(&ev).expect("API bodies are plain structs of strings and numbers"))
        }
        fn failed(&mut self, e: ApiError, out: &mut Vec<SseEvent>) {
            let body = e.body().error;
            out.push(self.event(|s| ResponseStreamEvent::Error {
                sequence_number: s,
                code: Some(body.code),
                message: body.message,
                param: body.param,
            }));
            self.done = true;
            self.held = None;
        }
    }
    let st =
        St { hub, d, stored, store_it, held: Some(held), seq: 0, text: String::new(), started: false, done: false };
    stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        let mut out = Vec::new();
        let (item_id, id) = (message_id(&st.stored.id), st.stored.id.clone());
        if !st.started {
            st.started = true;
            let r = response_json(&st.stored, Status::InProgress, 0);
            out.push(st.event(|s| ResponseStreamEvent::Created { sequence_number: s, response: r.clone() }));
            out.push(st.event(|s| ResponseStreamEvent::InProgress { sequence_number: s, response: r }));
            let item = output_message(&id, Status::InProgress, vec![]);
            out.push(st.event(|s| ResponseStreamEvent::OutputItemAdded { sequence_number: s, output_index: 0, item }));
            let part = output_text("");
            let item = item_id.clone();
            out.push(st.event(|s| ResponseStreamEvent::ContentPartAdded {
                sequence_number: s,
                item_id: item,
                output_index: 0,
                content_index: 0,
                part,
            }));
            return Some((stream::iter(out.into_iter().map(Ok)), st));
        }
        match st.d.next().await {
            // The Responses API offers no tools to the engine (yet): no calls come.
            Some(
                Event::Prompt { .. }
                | Event::ToolCall { .. }
                | Event::ToolCallStart { .. }
                | Event::ToolCallArguments { .. }
                | Event::Embedding { .. },
            ) => {}
            Some(Event::Delta { text, tokens, .. }) => {
                if let Some(h) = &st.held {
                    h.admission.record(tokens.len());
                }
                if !text.is_empty() {
                    st.text.push_str(&text);
                    let item = item_id.clone();
                    out.push(st.event(|s| ResponseStreamEvent::OutputTextDelta {
                        sequence_number: s,
                        item_id: item,
                        output_index: 0,
                        content_index: 0,
                        delta: text,
                        logprobs: vec![],
                    }));
                }
            }
            Some(Event::Done { finish, usage, .. }) => {
                let stored = finished(st.stored.clone(), std::mem::take(&mut st.text), finish, &usage);
                if st.store_it {
                    if let Err(e) = store(&st.hub, &stored).await {
                        st.failed(e, &mut out);
                        return Some((stream::iter(out.into_iter().map(Ok)), st));
                    }
                }
                let status = Status::Ended(finish);
                let text = stored.output.clone();
                let item = item_id.clone();
                out.push(st.event(|s| ResponseStreamEvent::OutputTextDone {
                    sequence_number: s,
                    item_id: item.clone(),
                    output_index: 0,
                    content_index: 0,
                    text: text.clone(),
                    logprobs: vec![],
                }));
                out.push(st.event(|s| ResponseStreamEvent::ContentPartDone {
                    sequence_number: s,
                    item_id: item,
                    output_index: 0,
                    content_index: 0,
                    part: output_text(&text),
                }));
                let item = output_message(&id, status, vec![output_text(&text)]);
                out.push(st.event(|s| ResponseStreamEvent::OutputItemDone {
                    sequence_number: s,
                    output_index: 0,
                    item,
                }));
                let response = response_json(&stored, status, usage.cached_tokens);
                out.push(st.event(|s| match finish {
                    FinishReason::Length => ResponseStreamEvent::Incomplete { sequence_number: s, response },
                    FinishReason::Stop | FinishReason::ToolCalls => {
                        ResponseStreamEvent::Completed { sequence_number: s, response }
                    }
                }));
                st.done = true;
                st.held = None;
            }
            Some(Event::Error { message, client }) => {
                let status = if client { StatusCode::BAD_REQUEST } else { StatusCode::BAD_GATEWAY };
                st.failed(ApiError::new(status, message), &mut out);
            }
            None => {
                let e = ApiError::new(StatusCode::BAD_GATEWAY, format!("spoke {} ended the stream early", st.d.spoke));
                st.failed(e, &mut out);
            }
        }
        Some((stream::iter(out.into_iter().map(Ok)), st))
    })
    .flatten()
}

/// `GET /v1/responses/{id}`: a stored response, to the key that created it only.
pub async fn get(
    State(hub): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(rid): Path<String>,
) -> Result<Json<ResponseObject>, ApiError> {
    let owner = caller.owner();
    match hub.consensus.read(|a| a.state.response(&rid, &owner).cloned()).await? {
        Some(r) => {
            let finish = if r.incomplete { FinishReason::Length } else { FinishReason::Stop };
            Ok(Json(response_json(&r, Status::Ended(finish), 0)))
        }
        None => Err(ApiError::new(StatusCode::NOT_FOUND, format!("response {rid:?} not found"))),
    }
}

/// `DELETE /v1/responses/{id}`: forgets a stored response, for the key that created it
/// only (another key gets the 404 a missing one gets: it cannot learn that it exists).
pub async fn delete(
    State(hub): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(rid): Path<String>,
) -> Result<Json<DeletedResponse>, ApiError> {
    let owner = caller.owner();
    done(hub.consensus.write(Command::DeleteResponse { id: rid.clone(), owner }).await).map_err(|e| {
        if e.status == StatusCode::NOT_FOUND {
            ApiError::new(e.status, format!("response {rid:?} not found"))
        } else {
            e
        }
    })?;
    Ok(Json(DeletedResponse { id: rid, object: "response".into(), deleted: true }))
}
