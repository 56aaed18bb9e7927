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
//!
//! `tools` (functions, flat: `{"type": "function", "name", "description", "parameters"}`)
//! and `tool_choice` are chat's (`api/tools.rs`). The model's calls are `function_call`
//! output items after the `message` item (which is left out when the answer is only
//! calls); they come back as `function_call` input items, their results as
//! `function_call_output` items, and become the template's assistant calls and `tool`
//! messages. A stored response keeps its calls and results, so a `previous_response_id`
//! chain carries them. Streamed, a call is its own item: added when the model starts it,
//! its arguments in `function_call_arguments.delta` events as they are generated, then
//! `function_call_arguments.done` and `output_item.done` once it is complete.

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
use nave_consensus::state::{Command, CommandResult, FunctionCall, StoredResponse, Turn, TurnTools};
use nave_inference::tools::ToolCall;
use nave_inference::{ChatMessage, Event, FinishReason, GenerateRequest, Prompt, SamplingParams, Usage};

use super::types::{
    CachedTokens, Content, DeletedResponse, InputItem, OutputItem, OutputText, ReasoningTokens, ResponseObject,
    ResponseStreamEvent, ResponseUsage, ResponsesInput, ResponsesRequest, Sampling,
};
use super::{check_model, generate, parse, respond, Answer, AppState, Held};
use crate::error::{done, ApiError};
use crate::route::Dispatch;
use crate::{Caller, Hub};

/// The sampling parameters of a Responses request (OpenAI's defaults for the rest), or
/// the 400 naming a field Nave does not implement.
pub(crate) fn params(r: &ResponsesRequest) -> Result<SamplingParams, ApiError> {
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
    let tools = super::tools::responses_tools(r.tools.as_deref(), r.tool_choice.as_ref())?;
    let p = super::openai::params(Sampling {
        max_tokens: r.max_output_tokens,
        temperature: r.temperature,
        top_p: r.top_p,
        seed: r.seed,
        ..Default::default()
    })?;
    super::openai::checked(SamplingParams { constraint, tools, ..p })
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

/// A call item's id, from its call's (so the stream and the stored response agree).
fn call_item_id(call_id: &str) -> String {
    format!("fc_{}", call_id.trim_start_matches("call_"))
}

fn output_text(text: &str) -> OutputText {
    OutputText { kind: "output_text".into(), text: text.to_string(), annotations: vec![] }
}

fn output_message(response_id: &str, status: Status, content: Vec<OutputText>) -> OutputItem {
    OutputItem::Message {
        id: message_id(response_id),
        status: status.as_str().into(),
        role: "assistant".into(),
        content,
    }
}

fn output_call(c: &FunctionCall, status: Status) -> OutputItem {
    OutputItem::FunctionCall {
        id: call_item_id(&c.call_id),
        call_id: c.call_id.clone(),
        name: c.name.clone(),
        arguments: c.arguments.clone(),
        status: status.as_str().into(),
    }
}

/// Whether an answer shows a message item: it has text, or nothing else.
fn has_message(text: &str, calls: &[FunctionCall]) -> bool {
    calls.is_empty() || !text.trim().is_empty()
}

fn response_json(r: &StoredResponse, status: Status, cached_tokens: usize) -> ResponseObject {
    let mut output = Vec::new();
    if let Status::Ended(_) = status {
        if has_message(&r.output, &r.calls) {
            output.push(output_message(&r.id, status, vec![output_text(&r.output)]));
        }
        output.extend(r.calls.iter().map(|c| output_call(c, Status::Ended(FinishReason::ToolCalls))));
    }
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

fn stored_call(c: &ToolCall) -> FunctionCall {
    FunctionCall { call_id: c.id.clone(), name: c.name.clone(), arguments: c.arguments.clone() }
}

fn engine_call(c: &FunctionCall) -> ToolCall {
    ToolCall { id: c.call_id.clone(), name: c.name.clone(), arguments: c.arguments.clone() }
}

/// The input items as chat messages: a message as it is, a call joined to the assistant
/// message before it (an answer's text and its calls are one assistant turn), a call's
/// result as a `tool` message that names the call.
fn input_messages(items: Vec<InputItem>) -> Result<Vec<ChatMessage>, ApiError> {
    let mut out: Vec<ChatMessage> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let missing = |field: &str| {
            let field = format!("input[{i}].{field}");
            ApiError::bad_request(format!("{field}: missing")).with_param(&field)
        };
        let text = |c: Option<Content>| c.map(Content::text).unwrap_or_default();
        match item.kind.as_deref().unwrap_or("message") {
            "message" => out.push(ChatMessage::new(item.role.ok_or_else(|| missing("role"))?, text(item.content))),
            "function_call" => {
                let call = ToolCall {
                    id: item.call_id.ok_or_else(|| missing("call_id"))?,
                    name: item.name.ok_or_else(|| missing("name"))?,
                    arguments: super::tools::arguments_text(item.arguments.as_ref()),
                };
                match out.last_mut() {
                    Some(m) if m.role == "assistant" => m.tool_calls.push(call),
                    _ => out.push(super::tools::message("assistant".into(), String::new(), vec![call], None)),
                }
            }
            "function_call_output" => {
                let answers = item.call_id.ok_or_else(|| missing("call_id"))?;
                out.push(super::tools::message("tool".into(), text(item.output), vec![], Some(answers)));
            }
            other => {
                let field = format!("input[{i}].type");
                let why = format!(
                    "{field}: \"message\", \"function_call\" or \"function_call_output\" (got {other:?}): not supported yet"
                );
                return Err(ApiError::bad_request(why).with_param(&field));
            }
        }
    }
    Ok(out)
}

/// A stored response as the conversation it adds: its input, then its answer (text and
/// calls) as one assistant turn.
fn conversation_turns(r: &StoredResponse) -> impl Iterator<Item = ChatMessage> + '_ {
    let turn = |(i, t): (usize, &Turn)| {
        let tools = r.input_tools.get(i);
        let calls = tools.map(|t| t.calls.iter().map(engine_call).collect()).unwrap_or_default();
        super::tools::message(t.role.clone(), t.content.clone(), calls, tools.and_then(|t| t.answers.clone()))
    };
    let answer =
        super::tools::message("assistant".into(), r.output.clone(), r.calls.iter().map(engine_call).collect(), None);
    r.input.iter().enumerate().map(turn).chain(std::iter::once(answer))
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
            ResponsesInput::Items(items) => input_messages(items)?,
        };
        if input.is_empty() {
            return Err(ApiError::bad_request("input must not be empty").with_param("input"));
        }
        let mut messages = Vec::new();
        if let Some(i) = &req.instructions {
            messages.push(ChatMessage::new("system", i.clone()));
        }
        messages.extend(history.iter().flat_map(conversation_turns));
        messages.extend(input.iter().cloned());
        // Follow-ups of one conversation prefer one spoke (its prefix cache holds it).
        let session = history.first().map(|r| r.id.clone()).or_else(|| ctx.session.clone());
        let streams_calls = params.tools.is_some();
        let gen = GenerateRequest { request_id: ctx.request_id.clone(), prompt: Prompt::Chat(messages), params };
        let input_tools: Vec<TurnTools> = input
            .iter()
            .map(|m| TurnTools {
                calls: m.tool_calls.iter().map(stored_call).collect(),
                answers: m.tool_call_id.clone(),
            })
            .collect();
        // The response as it will be stored; its answer and usage are filled in at the end.
        let stored = StoredResponse {
            id: format!("resp_{}{}", nave_consensus::ids::random_id(), nave_consensus::ids::random_id()),
            owner,
            model: model.clone(),
            previous: req.previous_response_id.clone(),
            created_ms: now_secs() * 1000,
            input_tools: if input_tools.iter().all(|t| *t == TurnTools::default()) { vec![] } else { input_tools },
            input: input.into_iter().map(|m| Turn { role: m.role, content: m.content }).collect(),
            ..Default::default()
        };
        // Held (the slot and the admission) until the response is stored.
        let generated = generate(&hub, &caller, &model, gen, &ctx, session.as_deref(), req.stream).await?;
        match generated.answer {
            Answer::Whole(answer) => {
                let usage = answer.usage();
                let Some(choice) = answer.choices.into_iter().next() else {
                    return Err(ApiError::new(StatusCode::BAD_GATEWAY, "the spoke answered no choice"));
                };
                let calls = choice.tool_calls.iter().map(stored_call).collect();
                let stored = finished(stored, choice.text, calls, choice.finish, &usage);
                if req.store {
                    store(&hub, &stored).await?;
                }
                drop(generated.held);
                let body = response_json(&stored, Status::Ended(choice.finish), usage.cached_tokens);
                Ok((model, Json(body).into_response()))
            }
            Answer::Stream(d) => {
                let events = event_stream(hub.clone(), d, stored, req.store, streams_calls, generated.held);
                let sse = Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(10)));
                Ok((model, sse.into_response()))
            }
        }
    })
    .await
}

/// The stored response with its answer and usage.
fn finished(
    mut r: StoredResponse,
    text: String,
    calls: Vec<FunctionCall>,
    finish: FinishReason,
    usage: &Usage,
) -> StoredResponse {
    r.output = text;
    r.calls = calls;
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

/// Where a streamed answer's message item stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Message {
    /// Not added yet: text that is not blank adds it (with tools; without, it is added
    /// at once).
    Pending,
    /// Added, at this output index; its text streams.
    Open(u32),
    /// Done, or never to be added in the stream (a call came first): later text goes
    /// only into the finished response.
    Closed,
}

/// A call item being streamed.
struct Streaming {
    output_index: u32,
    call: FunctionCall,
}

/// Builds the events of one streamed response, in order, numbered; the text and calls it
/// saw so far.
struct Events {
    response_id: String,
    seq: u64,
    out: Vec<ResponseStreamEvent>,
    /// Output items added so far.
    items: u32,
    message: Message,
    text: String,
    /// Bytes of `text` streamed in the message item.
    streamed: usize,
    /// Calls started and not complete yet, by the engine's index.
    open: std::collections::BTreeMap<u32, Streaming>,
    calls: Vec<FunctionCall>,
}

impl Events {
    fn new(response_id: String) -> Self {
        Events {
            response_id,
            seq: 0,
            out: Vec::new(),
            items: 0,
            message: Message::Pending,
            text: String::new(),
            streamed: 0,
            open: Default::default(),
            calls: Vec::new(),
        }
    }

    fn push(&mut self, make: impl FnOnce(u64) -> ResponseStreamEvent) {
        self.out.push(make(self.seq));
        self.seq += 1;
    }

    /// The events built since the last call, as SSE events.
    fn take(&mut self) -> impl futures::Stream<Item = Result<SseEvent, Infallible>> {
        let sse = |ev: ResponseStreamEvent| {
            let data = serde_json::to_string(&ev).expect("API bodies are plain structs of strings and numbers");
            Ok(SseEvent::default().event(ev.name()).data(data))
        };
        stream::iter(std::mem::take(&mut self.out).into_iter().map(sse))
    }

    fn failed(&mut self, e: ApiError) {
        let body = e.body().error;
        self.push(|s| ResponseStreamEvent::Error {
            sequence_number: s,
            code: Some(body.code),
            message: body.message,
            param: body.param,
        });
    }

    fn add_item(&mut self, item: OutputItem) -> u32 {
        let output_index = self.items;
        self.items += 1;
        self.push(|s| ResponseStreamEvent::OutputItemAdded { sequence_number: s, output_index, item });
        output_index
    }

    fn open_message(&mut self) {
        let output_index = self.add_item(output_message(&self.response_id, Status::InProgress, vec![]));
        let item_id = message_id(&self.response_id);
        self.push(|s| ResponseStreamEvent::ContentPartAdded {
            sequence_number: s,
            item_id,
            output_index,
            content_index: 0,
            part: output_text(""),
        });
        self.message = Message::Open(output_index);
    }

    /// Text of the answer: streamed while the message item is open (with tools, added at
    /// the first text that is not blank, unless a call came first).
    fn text(&mut self, text: &str) {
        self.text.push_str(text);
        if self.message == Message::Pending && !self.text.trim().is_empty() {
            self.open_message();
        }
        self.stream_text();
    }

    /// Streams the text not streamed yet, while the message item is open.
    fn stream_text(&mut self) {
        let Message::Open(output_index) = self.message else { return };
        if self.streamed == self.text.len() {
            return;
        }
        let delta = self.text[self.streamed..].to_string();
        self.streamed = self.text.len();
        let item_id = message_id(&self.response_id);
        self.push(|s| ResponseStreamEvent::OutputTextDelta {
            sequence_number: s,
            item_id,
            output_index,
            content_index: 0,
            delta,
            logprobs: vec![],
        });
    }

    /// Ends the message item (with the text it streamed), or its chance to be added.
    fn close_message(&mut self, status: Status) {
        if let Message::Open(output_index) = self.message {
            let (item_id, text) = (message_id(&self.response_id), self.text[..self.streamed].to_string());
            self.push(|s| ResponseStreamEvent::OutputTextDone {
                sequence_number: s,
                item_id: item_id.clone(),
                output_index,
                content_index: 0,
                text: text.clone(),
                logprobs: vec![],
            });
            self.push(|s| ResponseStreamEvent::ContentPartDone {
                sequence_number: s,
                item_id,
                output_index,
                content_index: 0,
                part: output_text(&text),
            });
            let item = output_message(&self.response_id, status, vec![output_text(&text)]);
            self.push(|s| ResponseStreamEvent::OutputItemDone { sequence_number: s, output_index, item });
        }
        self.message = Message::Closed;
    }

    /// A call starts: its item is added (the message item, if open, ends first).
    fn start_call(&mut self, index: u32, call_id: String, name: String) {
        self.close_message(Status::Ended(FinishReason::Stop));
        let call = FunctionCall { call_id, name, arguments: String::new() };
        let output_index = self.add_item(output_call(&call, Status::InProgress));
        self.open.insert(index, Streaming { output_index, call });
    }

    fn arguments(&mut self, index: u32, delta: String) {
        let Some(c) = self.open.get_mut(&index) else { return };
        c.call.arguments.push_str(&delta);
        let (item_id, output_index) = (call_item_id(&c.call.call_id), c.output_index);
        self.push(|s| ResponseStreamEvent::FunctionCallArgumentsDelta {
            sequence_number: s,
            item_id,
            output_index,
            delta,
        });
    }

    /// A call is complete: its item is done (added first, its arguments in one delta, if
    /// it did not stream).
    fn complete_call(&mut self, index: u32, call: ToolCall) {
        if !self.open.contains_key(&index) {
            self.start_call(index, call.id.clone(), call.name.clone());
            self.arguments(index, call.arguments.clone());
        }
        let Some(Streaming { output_index, .. }) = self.open.remove(&index) else { return };
        let call = stored_call(&call);
        let (item_id, arguments) = (call_item_id(&call.call_id), call.arguments.clone());
        self.push(|s| ResponseStreamEvent::FunctionCallArgumentsDone {
            sequence_number: s,
            item_id,
            output_index,
            arguments,
        });
        let item = output_call(&call, Status::Ended(FinishReason::ToolCalls));
        self.push(|s| ResponseStreamEvent::OutputItemDone { sequence_number: s, output_index, item });
        self.calls.push(call);
    }

    /// The answer ended: calls that never completed end incomplete (their text is the
    /// answer's), and the message item ends, added first if nothing else was.
    fn end(&mut self, status: Status) {
        for (_, Streaming { output_index, call }) in std::mem::take(&mut self.open) {
            let item = output_call(&call, Status::Ended(FinishReason::Length));
            self.push(|s| ResponseStreamEvent::OutputItemDone { sequence_number: s, output_index, item });
        }
        if self.message == Message::Pending && has_message(&self.text, &self.calls) {
            self.open_message();
            self.stream_text();
        }
        self.close_message(status);
    }
}

/// The SSE events of a streamed response: OpenAI's sequence around the text's deltas and
/// the calls' ([`Events`]). The response is stored (with `store`) before its last event,
/// and the slot and the admission are held until then. A client that goes away drops the
/// dispatch, which cancels the sequence on the spoke.
fn event_stream(
    hub: Arc<Hub>,
    d: Dispatch,
    stored: StoredResponse,
    store_it: bool,
    tools: bool,
    held: Held,
) -> impl futures::Stream<Item = Result<SseEvent, Infallible>> {
    struct St {
        hub: Arc<Hub>,
        d: Dispatch,
        stored: StoredResponse,
        store_it: bool,
        held: Option<Held>,
        ev: Events,
        started: bool,
        done: bool,
    }
    let ev = Events::new(stored.id.clone());
    let st = St { hub, d, stored, store_it, held: Some(held), ev, started: false, done: false };
    stream::unfold(st, move |mut st| async move {
        if st.done {
            return None;
        }
        if !st.started {
            st.started = true;
            let r = response_json(&st.stored, Status::InProgress, 0);
            st.ev.push(|s| ResponseStreamEvent::Created { sequence_number: s, response: r.clone() });
            st.ev.push(|s| ResponseStreamEvent::InProgress { sequence_number: s, response: r });
            // Without tools the answer is one message: its item opens at once.
            if !tools {
                st.ev.open_message();
            }
        } else {
            match st.d.next().await {
                Some(Event::Prompt { .. } | Event::Embedding { .. }) => {}
                Some(Event::Delta { text, tokens, .. }) => {
                    if let Some(h) = &st.held {
                        h.admission.record(tokens.len());
                    }
                    if !text.is_empty() {
                        st.ev.text(&text);
                    }
                }
                Some(Event::ToolCallStart { index, id, name, .. }) => st.ev.start_call(index, id, name),
                Some(Event::ToolCallArguments { index, arguments, .. }) => st.ev.arguments(index, arguments),
                Some(Event::ToolCall { index, call, .. }) => st.ev.complete_call(index, call),
                Some(Event::Done { finish, usage, .. }) => {
                    let (text, calls) = (st.ev.text.clone(), st.ev.calls.clone());
                    let stored = finished(st.stored.clone(), text, calls, finish, &usage);
                    let kept = if st.store_it { store(&st.hub, &stored).await } else { Ok(()) };
                    match kept {
                        Err(e) => st.ev.failed(e),
                        Ok(()) => {
                            let status = Status::Ended(finish);
                            st.ev.end(status);
                            let response = response_json(&stored, status, usage.cached_tokens);
                            st.ev.push(|s| match finish {
                                FinishReason::Length => {
                                    ResponseStreamEvent::Incomplete { sequence_number: s, response }
                                }
                                FinishReason::Stop | FinishReason::ToolCalls => {
                                    ResponseStreamEvent::Completed { sequence_number: s, response }
                                }
                            });
                        }
                    }
                    (st.done, st.held) = (true, None);
                }
                Some(Event::Error { message, client }) => {
                    let status = if client { StatusCode::BAD_REQUEST } else { StatusCode::BAD_GATEWAY };
                    st.ev.failed(ApiError::new(status, message));
                    (st.done, st.held) = (true, None);
                }
                None => {
                    let e =
                        ApiError::new(StatusCode::BAD_GATEWAY, format!("spoke {} ended the stream early", st.d.spoke));
                    st.ev.failed(e);
                    (st.done, st.held) = (true, None);
                }
            }
        }
        Some((st.ev.take(), st))
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(id: &str) -> ToolCall {
        ToolCall { id: id.into(), name: "f".into(), arguments: r#"{"x":1}"#.into() }
    }

    /// The events' names, with the output index where they have one.
    fn names(ev: &Events) -> Vec<String> {
        ev.out
            .iter()
            .map(|e| {
                let v = serde_json::to_value(e).unwrap_or_default();
                match v.get("output_index") {
                    Some(i) => format!("{} {i}", e.name().trim_start_matches("response.")),
                    None => e.name().trim_start_matches("response.").to_string(),
                }
            })
            .collect()
    }

    #[test]
    fn input_items_become_the_templates_messages() {
        let items: Vec<InputItem> = serde_json::from_value(json!([
            {"role": "user", "content": "Weather?"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me see."}]},
            {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{\"x\":1}"},
            {"type": "function_call", "call_id": "call_2", "name": "f", "arguments": {"x": 1}},
            {"type": "function_call_output", "call_id": "call_1", "output": "one"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "two"}]},
            {"type": "function_call", "call_id": "call_3", "name": "f"},
        ]))
        .expect("items");
        let got = input_messages(items).expect("messages");
        let tool =
            |id: &str, text: &str| super::super::tools::message("tool".into(), text.into(), vec![], Some(id.into()));
        let alone = ToolCall { arguments: "{}".into(), ..call("call_3") };
        assert_eq!(
            got,
            vec![
                ChatMessage::new("user", "Weather?"),
                super::super::tools::message(
                    "assistant".into(),
                    "Let me see.".into(),
                    vec![call("call_1"), call("call_2")],
                    None
                ),
                tool("call_1", "one"),
                tool("call_2", "two"),
                super::super::tools::message("assistant".into(), String::new(), vec![alone], None),
            ]
        );
    }

    #[test]
    fn the_message_item_comes_first_and_only_with_text_or_nothing_else() {
        let r = StoredResponse {
            id: "resp_1".into(),
            output: "\n".into(),
            calls: vec![stored_call(&call("call_a")), stored_call(&call("call_b"))],
            ..Default::default()
        };
        let kinds = |r: &StoredResponse| {
            let v =
                serde_json::to_value(response_json(r, Status::Ended(FinishReason::ToolCalls), 0)).unwrap_or_default();
            v["output"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|o| format!("{} {}", o["type"], o["id"]))
                .collect::<Vec<_>>()
        };
        assert_eq!(kinds(&r), [r#""function_call" "fc_a""#, r#""function_call" "fc_b""#]);
        let texted = StoredResponse { output: "Let me see.".into(), ..r.clone() };
        assert_eq!(kinds(&texted)[0], r#""message" "msg_1""#);
        assert_eq!(kinds(&StoredResponse { calls: vec![], ..r })[0], r#""message" "msg_1""#);
    }

    #[test]
    fn streamed_calls_are_items_of_their_own_in_order() {
        // Text, then a call that streams: the message ends before the call's item.
        let mut ev = Events::new("resp_1".into());
        ev.text("  ");
        assert!(ev.out.is_empty(), "blank text waits");
        ev.text("Let me see.");
        ev.start_call(0, "call_a".into(), "f".into());
        ev.arguments(0, "{\"x\":".into());
        ev.arguments(0, "1}".into());
        ev.complete_call(0, call("call_a"));
        ev.end(Status::Ended(FinishReason::ToolCalls));
        assert_eq!(
            names(&ev),
            [
                "output_item.added 0",
                "content_part.added 0",
                "output_text.delta 0",
                "output_text.done 0",
                "content_part.done 0",
                "output_item.done 0",
                "output_item.added 1",
                "function_call_arguments.delta 1",
                "function_call_arguments.delta 1",
                "function_call_arguments.done 1",
                "output_item.done 1",
            ]
        );
        assert_eq!(ev.text, "  Let me see.");
        assert_eq!(ev.calls, [stored_call(&call("call_a"))]);

        // A call that did not stream comes whole; one that never completed ends
        // incomplete; text after a call is the response's, not streamed.
        let mut ev = Events::new("resp_1".into());
        ev.complete_call(3, call("call_a"));
        ev.start_call(4, "call_b".into(), "f".into());
        ev.text("<tool_call>{\"name\": \"f\", oops");
        ev.end(Status::Ended(FinishReason::Stop));
        assert_eq!(
            names(&ev),
            [
                "output_item.added 0",
                "function_call_arguments.delta 0",
                "function_call_arguments.done 0",
                "output_item.done 0",
                "output_item.added 1",
                "output_item.done 1",
            ]
        );
        let ResponseStreamEvent::OutputItemDone { item: OutputItem::FunctionCall { status, .. }, .. } = &ev.out[5]
        else {
            panic!("{:?}", ev.out[5])
        };
        assert_eq!(status, "incomplete");
        assert_eq!(ev.calls.len(), 1);

        // Without calls, the message item comes at the end if it did not before.
        let mut ev = Events::new("resp_1".into());
        ev.text(" ");
        ev.end(Status::Ended(FinishReason::Stop));
        assert_eq!(names(&ev)[..3], ["output_item.added 0", "content_part.added 0", "output_text.delta 0"]);
    }
}
