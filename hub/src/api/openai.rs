//! The OpenAI API: `POST /v1/chat/completions`, `POST /v1/completions` (whole or streamed
//! as SSE chunks ending with `data: [DONE]`), `GET /v1/models`, `GET /v1/models/{id}`.
//!
//! Beside text they answer what the sampler can tell: `logprobs` (chat: with
//! `top_logprobs`; completions: an int, and with `echo` the prompt's tokens too), `n`
//! choices of one prompt, `logit_bias`, and a `system_fingerprint`; chat takes `tools`
//! (calls in `tool_calls`, `finish_reason: "tool_calls"`, streamed as OpenAI streams
//! them, the arguments as they are generated) and `response_format` (JSON, or JSON
//! matching a schema, by constrained decoding). Fields of the API that Nave does not implement (`functions`, `audio`, ...)
//! are a 400 naming the field ([`Unsupported`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, Stream, StreamExt};
use nave_consensus::clock::now_secs;
use nave_inference::sampler::{TokenLogprob, MAX_LOGIT_BIAS, MAX_TOP_LOGPROBS};
use nave_inference::{ChatMessage, Event, FinishReason, GenerateRequest, Prompt, SamplingParams, Usage};
use serde::Serialize;

use super::types::{
    AssistantMessage, CallBody, ChatChoice, ChatChunkChoice, ChatLogprobs, ChatRequest, ChatTokenLogprob, Completion,
    CompletionLogprobs, CompletionRequest, Content, Delta, ModelEntry, ModelList, OrderedLogprobs, PromptField,
    Sampling, Stop, TextChoice, ToolCallBody, TopLogprobBody, Unsupported, UsageBody,
};
use super::{check_model, generate, parse, respond, Answer, AppState, Ctx, Held, Kind};
use crate::error::ApiError;
use crate::route::{total_usage, Dispatch};
use crate::{Caller, Hub};

/// The engine's sampling parameters from OpenAI's fields (defaults where absent), or 400.
pub(crate) fn params(s: Sampling) -> Result<SamplingParams, ApiError> {
    let d = SamplingParams::default();
    let logit_bias = match s.logit_bias {
        None => Vec::new(),
        Some(m) if m.len() > MAX_LOGIT_BIAS => {
            return Err(
                ApiError::bad_request(format!("logit_bias: at most {MAX_LOGIT_BIAS} tokens")).with_param("logit_bias")
            )
        }
        Some(m) => m
            .into_iter()
            .map(|(k, v)| match k.trim().parse::<u32>() {
                Ok(t) => Ok((t, v)),
                Err(_) => Err(ApiError::bad_request(format!(
                    "logit_bias: the key {k:?} is not a token id (keys are token ids as strings)"
                ))
                .with_param("logit_bias")),
            })
            .collect::<Result<_, _>>()?,
    };
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
        n: s.n.unwrap_or(1),
        logit_bias,
        ..d
    };
    checked(p)
}

/// `p` if the engine would take it, else the 400 naming the field.
pub(crate) fn checked(p: SamplingParams) -> Result<SamplingParams, ApiError> {
    match p.validate() {
        Ok(()) => Ok(p),
        Err(e) => {
            let message = e.to_string().trim_start_matches("invalid request: ").to_string();
            let field = message.split(':').next().unwrap_or_default().to_string();
            Err(ApiError::bad_request(message).with_param(&field))
        }
    }
}

/// The 400 for the first field of OpenAI's API in `u` that Nave does not implement.
pub(crate) fn refuse_unsupported(u: &Unsupported) -> Result<(), ApiError> {
    match u.first() {
        None => Ok(()),
        Some((field, value)) => {
            let shown: String = value.chars().take(80).collect();
            Err(ApiError::bad_request(format!("{field}: not supported yet (got {shown})")).with_param(field))
        }
    }
}

/// Chat's `logprobs` and `top_logprobs` as the engine's alternatives per token.
fn chat_logprobs(logprobs: Option<bool>, top: Option<usize>) -> Result<Option<usize>, ApiError> {
    match (logprobs.unwrap_or(false), top) {
        (_, Some(k)) if k > MAX_TOP_LOGPROBS => {
            Err(ApiError::bad_request(format!("top_logprobs: must be between 0 and {MAX_TOP_LOGPROBS}"))
                .with_param("top_logprobs"))
        }
        (false, Some(k)) if k > 0 => {
            Err(ApiError::bad_request("top_logprobs: needs logprobs: true").with_param("top_logprobs"))
        }
        (true, k) => Ok(Some(k.unwrap_or(0))),
        (false, _) => Ok(None),
    }
}

/// What the answers of `model` on this build are sampled by: the Nave version and the
/// model, hashed (FNV-1a). Same fingerprint and seed, same tokens.
pub(crate) fn fingerprint(model: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("nave {} {model}", env!("CARGO_PKG_VERSION")).bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    format!("fp_{:012x}", h >> 16)
}

/// A chat request's sampling parameters, or the 400 naming the field.
pub(crate) fn chat_params(req: &ChatRequest) -> Result<SamplingParams, ApiError> {
    refuse_unsupported(&req.unsupported)?;
    let logprobs = chat_logprobs(req.logprobs, req.top_logprobs)?;
    let constraint = super::tools::response_format(req.response_format.as_ref())?;
    let tools = super::tools::tools(req.tools.as_deref(), req.tool_choice.as_ref())?;
    checked(SamplingParams { logprobs, constraint, tools, ..params(req.sampling.clone())? })
}

/// A completions request's sampling parameters, or the 400 naming the field.
pub(crate) fn completion_params(req: &CompletionRequest) -> Result<SamplingParams, ApiError> {
    refuse_unsupported(&req.unsupported)?;
    if req.logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
        return Err(
            ApiError::bad_request(format!("logprobs: must be between 0 and {MAX_TOP_LOGPROBS}")).with_param("logprobs")
        );
    }
    checked(SamplingParams {
        logprobs: req.logprobs,
        prompt_logprobs: req.echo.unwrap_or(false) && req.logprobs.is_some(),
        ..params(req.sampling.clone())?
    })
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
        let params = chat_params(&req)?;
        let model = check_model(&hub, &req.model)?;
        if req.messages.is_empty() {
            return Err(ApiError::bad_request("messages must not be empty").with_param("messages"));
        }
        let messages: Vec<ChatMessage> = req
            .messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let calls = super::tools::calls_in(m.tool_calls.as_deref(), &format!("messages[{i}].tool_calls"))?;
                let text = m.content.map(Content::text).unwrap_or_default();
                Ok(super::tools::message(m.role, text, calls, m.tool_call_id))
            })
            .collect::<Result<_, ApiError>>()?;
        let include_usage = req.stream_options.unwrap_or_default().include_usage;
        let gen = GenerateRequest { request_id: ctx.request_id.clone(), prompt: Prompt::Chat(messages), params };
        let out = Output { kind: Kind::Chat, echo: None, include_usage };
        run(&hub, &caller, &model, gen, &ctx, req.stream, out).await
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
        let params = completion_params(&req)?;
        let model = check_model(&hub, &req.model)?;
        let prompt = match req.prompt {
            PromptField::One(s) => s,
            PromptField::Many(v) if v.len() == 1 => v.into_iter().next().unwrap_or_default(),
            PromptField::Many(_) => {
                return Err(ApiError::bad_request("only one prompt per request is supported").with_param("prompt"))
            }
        };
        let include_usage = req.stream_options.unwrap_or_default().include_usage;
        let echo = req.echo.unwrap_or(false);
        let out = Output { kind: Kind::Text, echo: echo.then(|| prompt.clone()), include_usage };
        let gen = GenerateRequest { request_id: ctx.request_id.clone(), prompt: Prompt::Text(prompt), params };
        run(&hub, &caller, &model, gen, &ctx, req.stream, out).await
    })
    .await
}

/// How an answer is written beside its text.
struct Output {
    kind: Kind,
    /// The prompt, to put in front of each choice's text (completions' `echo`).
    echo: Option<String>,
    include_usage: bool,
}

/// Runs a chat or text generation, streamed as SSE or whole.
async fn run(
    hub: &Arc<Hub>,
    caller: &Caller,
    model: &str,
    gen: GenerateRequest,
    ctx: &Ctx,
    streamed: bool,
    out: Output,
) -> Result<(String, Response), ApiError> {
    let (n, top) = (gen.params.n.max(1), gen.params.logprobs);
    let generated = generate(hub, caller, model, gen, ctx, ctx.session.as_deref(), streamed).await?;
    let f = ChunkFormat {
        kind: out.kind,
        id: format!("{}-{}", id_prefix(out.kind), nave_consensus::ids::random_id()),
        created: now_secs(),
        model: model.to_string(),
        fingerprint: fingerprint(model),
        include_usage: out.include_usage,
        top,
        echo: out.echo,
    };
    let resp = match generated.answer {
        Answer::Whole(done) => {
            let usage = Some(UsageBody::from(&done.usage()));
            match f.kind {
                Kind::Chat => {
                    let choices = (0u32..)
                        .zip(done.choices)
                        .map(|(index, c)| ChatChoice {
                            index,
                            message: AssistantMessage {
                                role: "assistant".into(),
                                content: (c.tool_calls.is_empty() || !c.text.trim().is_empty()).then_some(c.text),
                                tool_calls: (!c.tool_calls.is_empty())
                                    .then(|| c.tool_calls.iter().map(super::tools::call_out).collect()),
                            },
                            logprobs: top.map(|_| chat_logprob_body(&c.logprobs)),
                            finish_reason: c.finish.as_str().to_string(),
                        })
                        .collect();
                    Json(f.completion("chat.completion", choices, usage)).into_response()
                }
                Kind::Text => {
                    let choices = (0u32..)
                        .zip(done.choices)
                        .map(|(index, c)| {
                            let mut lp = CompletionLogprobs::default();
                            let mut offset = 0;
                            let text = match &f.echo {
                                Some(prompt) => {
                                    f.add_completion_logprobs(&mut lp, &done.prompt_logprobs, &mut offset);
                                    offset = prompt.chars().count();
                                    format!("{prompt}{}", c.text)
                                }
                                None => c.text,
                            };
                            f.add_completion_logprobs(&mut lp, &c.logprobs, &mut offset);
                            TextChoice {
                                index,
                                text,
                                logprobs: top.map(|_| lp),
                                finish_reason: Some(c.finish.as_str().to_string()),
                            }
                        })
                        .collect();
                    Json(f.completion("text_completion", choices, usage)).into_response()
                }
            }
        }
        Answer::Stream(d) => {
            let events = sse_stream(hub.clone(), d, f, n, generated.held);
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

/// A token's text as the API shows it (bytes that are not whole UTF-8 characters become
/// U+FFFD there; `bytes` has them exactly).
fn token_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Chat's log-probabilities of `tokens`.
fn chat_logprob_body(tokens: &[TokenLogprob]) -> ChatLogprobs {
    let content = tokens
        .iter()
        .map(|t| ChatTokenLogprob {
            token: token_text(&t.bytes),
            logprob: t.logprob.unwrap_or(0.0),
            bytes: t.bytes.clone(),
            top_logprobs: t
                .top
                .iter()
                .map(|a| TopLogprobBody { token: token_text(&a.bytes), logprob: a.logprob, bytes: a.bytes.clone() })
                .collect(),
        })
        .collect();
    ChatLogprobs { content, refusal: None }
}

/// What every chunk of one answer repeats.
struct ChunkFormat {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    fingerprint: String,
    include_usage: bool,
    /// Alternatives per token when log-probabilities were asked for.
    top: Option<usize>,
    echo: Option<String>,
}

impl ChunkFormat {
    fn completion<C>(&self, object: &str, choices: Vec<C>, usage: Option<UsageBody>) -> Completion<C> {
        Completion {
            id: self.id.clone(),
            object: object.into(),
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: self.fingerprint.clone(),
            choices,
            usage,
        }
    }

    /// Appends `tokens` to completions' log-probabilities, their offsets from `offset`
    /// (in characters of the text, as OpenAI counts them). The alternatives list the
    /// chosen token too, as OpenAI's do (up to `logprobs + 1` entries).
    fn add_completion_logprobs(&self, lp: &mut CompletionLogprobs, tokens: &[TokenLogprob], offset: &mut usize) {
        for t in tokens {
            let text = token_text(&t.bytes);
            lp.tokens.push(text.clone());
            lp.token_logprobs.push(t.logprob);
            lp.top_logprobs.push(t.logprob.map(|chosen| {
                let mut top: Vec<(String, f32)> = t.top.iter().map(|a| (token_text(&a.bytes), a.logprob)).collect();
                if !t.top.iter().any(|a| a.token == t.token) {
                    top.push((text.clone(), chosen));
                }
                OrderedLogprobs(top)
            }));
            lp.text_offset.push(*offset);
            *offset += text.chars().count();
        }
    }

    fn chunk_object(&self) -> &'static str {
        match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Text => "text_completion",
        }
    }

    /// One streamed chat chunk of choice `index`: the role (a choice's first), text with
    /// its tokens' log-probabilities, or the finish reason.
    fn chat_chunk(
        &self,
        index: u32,
        delta: Delta,
        tokens: Option<&[TokenLogprob]>,
        finish: Option<FinishReason>,
    ) -> SseEvent {
        let logprobs = self.top.and(tokens).map(chat_logprob_body);
        let choice = ChatChunkChoice { index, delta, logprobs, finish_reason: finish.map(|f| f.as_str().to_string()) };
        sse_json(&self.completion(self.chunk_object(), vec![choice], None))
    }

    /// A chunk of call `index` of choice `choice`: its first (id, type and name, with
    /// `arguments` empty), or a piece of its arguments.
    fn call_chunk(&self, choice: u32, index: u32, head: Option<(String, String)>, arguments: String) -> SseEvent {
        let (id, name) = head.unzip();
        let call = ToolCallBody {
            index: Some(index),
            kind: id.as_ref().map(|_| "function".to_string()),
            id,
            function: CallBody { name, arguments: Some(arguments.into()) },
        };
        self.chat_chunk(choice, Delta { tool_calls: Some(vec![call]), ..Default::default() }, None, None)
    }

    /// One streamed text chunk of choice `index`.
    fn text_chunk(
        &self,
        index: u32,
        text: &str,
        logprobs: Option<CompletionLogprobs>,
        finish: Option<FinishReason>,
    ) -> SseEvent {
        let choice = TextChoice {
            index,
            text: text.to_string(),
            logprobs: self.top.and(logprobs),
            finish_reason: finish.map(|f| f.as_str().to_string()),
        };
        sse_json(&self.completion(self.chunk_object(), vec![choice], None))
    }

    /// The last chunk with `stream_options.include_usage`: no choices, the usage.
    fn usage_chunk(&self, usage: &Usage) -> SseEvent {
        sse_json(&self.completion::<TextChoice>(self.chunk_object(), vec![], Some(usage.into())))
    }
}

fn sse_json<T: Serialize>(v: &T) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(v).expect("API bodies are plain structs of strings and numbers"))
}

/// Per-choice state of a stream.
#[derive(Default)]
struct ChoiceState {
    /// Its first chunk (the role, or the echoed prompt) is out.
    started: bool,
    /// The calls whose first chunk went out as the model started them.
    streamed_calls: Vec<u32>,
    /// Characters of text so far (completions' `text_offset`).
    offset: usize,
    usage: Option<Usage>,
}

/// SSE events for a running dispatch of `n` choices. The response body owns the
/// dispatch: a client that goes away drops it, which stops the QUIC stream and cancels
/// the sequences on the spoke.
fn sse_stream(
    hub: Arc<Hub>,
    d: Dispatch,
    f: ChunkFormat,
    n: usize,
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
        choices: Vec<ChoiceState>,
        prompt_logprobs: Vec<TokenLogprob>,
    }
    impl St {
        /// A choice's first chunk, before its first text or its end: chat's role, or the
        /// echoed prompt (with its tokens' log-probabilities).
        fn start(&mut self, index: u32, out: &mut Vec<SseEvent>) -> Result<(), ApiError> {
            let f = &self.f;
            let c = self
                .choices
                .get_mut(index as usize)
                .ok_or_else(|| ApiError::new(StatusCode::BAD_GATEWAY, format!("the spoke sent choice {index}")))?;
            if c.started {
                return Ok(());
            }
            c.started = true;
            match (f.kind, &f.echo) {
                (Kind::Chat, _) => out.push(f.chat_chunk(
                    index,
                    Delta { role: Some("assistant".into()), content: Some(String::new()), tool_calls: None },
                    None,
                    None,
                )),
                (Kind::Text, Some(prompt)) => {
                    let mut lp = CompletionLogprobs::default();
                    f.add_completion_logprobs(&mut lp, &self.prompt_logprobs, &mut 0);
                    c.offset = prompt.chars().count();
                    out.push(f.text_chunk(index, prompt, Some(lp), None));
                }
                (Kind::Text, None) => {}
            }
            Ok(())
        }
    }
    let choices = (0..n).map(|_| ChoiceState::default()).collect();
    // Time to first token counts from the request's arrival.
    let last = held.arrived;
    let start = St { hub, d, f, first: true, done: false, last, held, choices, prompt_logprobs: Vec::new() };
    stream::unfold(start, |mut st| async move {
        if st.done {
            return None;
        }
        let mut out: Vec<SseEvent> = Vec::new();
        let failed = |e: ApiError, out: &mut Vec<SseEvent>| {
            out.push(sse_json(&e.body()));
            out.push(SseEvent::default().data("[DONE]"));
        };
        match st.d.next().await {
            Some(Event::Prompt { logprobs }) => st.prompt_logprobs.extend(logprobs),
            // Streams carry no embeddings (those are whole answers).
            Some(Event::Embedding { .. }) => {}
            Some(Event::Delta { choice, text, tokens, logprobs }) => {
                st.held.admission.record(tokens.len());
                let now = Instant::now();
                if st.first {
                    st.hub.metrics.ttft.observe(now.duration_since(st.last).as_secs_f64());
                } else {
                    st.hub.metrics.itl.observe(now.duration_since(st.last).as_secs_f64());
                }
                st.last = now;
                st.first = false;
                if let Err(e) = st.start(choice, &mut out) {
                    failed(e, &mut out);
                    st.done = true;
                } else if !text.is_empty() || (st.f.top.is_some() && !logprobs.is_empty()) {
                    let f = &st.f;
                    match f.kind {
                        Kind::Chat => out.push(f.chat_chunk(
                            choice,
                            Delta { role: None, content: Some(text), tool_calls: None },
                            Some(&logprobs),
                            None,
                        )),
                        Kind::Text => {
                            let mut lp = CompletionLogprobs::default();
                            let c = &mut st.choices[choice as usize];
                            let mut at = c.offset;
                            f.add_completion_logprobs(&mut lp, &logprobs, &mut at);
                            c.offset += text.chars().count();
                            out.push(f.text_chunk(choice, &text, Some(lp), None));
                        }
                    }
                }
            }
            // As OpenAI streams a call: its id, type and name with empty arguments as the
            // model starts it, then its arguments as they come. A call that did not
            // stream goes out in those two chunks once it is complete.
            Some(Event::ToolCallStart { choice, index, id, name }) => {
                if let Err(e) = st.start(choice, &mut out) {
                    failed(e, &mut out);
                    st.done = true;
                } else {
                    st.choices[choice as usize].streamed_calls.push(index);
                    out.push(st.f.call_chunk(choice, index, Some((id, name)), String::new()));
                }
            }
            Some(Event::ToolCallArguments { choice, index, arguments }) => {
                if st.choices.get(choice as usize).is_some_and(|c| c.streamed_calls.contains(&index)) {
                    out.push(st.f.call_chunk(choice, index, None, arguments));
                }
            }
            Some(Event::ToolCall { choice, index, call }) => {
                if let Err(e) = st.start(choice, &mut out) {
                    failed(e, &mut out);
                    st.done = true;
                } else if !st.choices[choice as usize].streamed_calls.contains(&index) {
                    out.push(st.f.call_chunk(choice, index, Some((call.id, call.name)), String::new()));
                    out.push(st.f.call_chunk(choice, index, None, call.arguments));
                }
            }
            Some(Event::Done { choice, finish, usage }) => {
                st.held.admission.record_prompt(usage.prompt_tokens);
                if let Err(e) = st.start(choice, &mut out) {
                    failed(e, &mut out);
                    st.done = true;
                } else {
                    out.push(match st.f.kind {
                        Kind::Chat => st.f.chat_chunk(choice, Delta::default(), None, Some(finish)),
                        Kind::Text => st.f.text_chunk(choice, "", None, Some(finish)),
                    });
                    st.choices[choice as usize].usage = Some(usage);
                    if st.choices.iter().all(|c| c.usage.is_some()) {
                        if st.f.include_usage {
                            let total = total_usage(st.choices.iter().filter_map(|c| c.usage.as_ref()));
                            out.push(st.f.usage_chunk(&total));
                        }
                        out.push(SseEvent::default().data("[DONE]"));
                        st.done = true;
                    }
                }
            }
            Some(Event::Error { message, client }) => {
                // Tokens may already be out: the stream ends with an error event instead of
                // a silent replay.
                let status = if client { StatusCode::BAD_REQUEST } else { StatusCode::BAD_GATEWAY };
                failed(ApiError::new(status, message), &mut out);
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

fn model_entry(id: &str, created: u64) -> ModelEntry {
    ModelEntry { id: id.to_string(), object: "model".into(), created, owned_by: "nave".into() }
}

/// `GET /v1/models`: the served models and the adapters.
pub async fn models(State(hub): State<AppState>) -> Json<ModelList> {
    let created = now_secs();
    let data = hub.models().iter().chain(hub.adapters().iter()).map(|m| model_entry(m, created)).collect();
    Json(ModelList { object: "list".into(), data })
}

/// `GET /v1/models/{id}`: one served model or adapter, or the 404 that lists them.
pub async fn model(State(hub): State<AppState>, Path(id): Path<String>) -> Result<Json<ModelEntry>, ApiError> {
    let id = check_model(&hub, &id)?;
    Ok(Json(model_entry(&id, now_secs())))
}
