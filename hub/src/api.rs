//! The HTTP API: OpenAI (`/v1/chat/completions`, `/v1/completions`, `/v1/models`), Ollama
//! (`/api/chat`, `/api/generate`, `/api/tags`, `/api/version`), health, readiness and
//! metrics. Bodies are parsed by hand so that malformed JSON and wrong types are a 400 in
//! OpenAI's error shape (axum's extractor would answer 422 in its own words); unknown
//! fields are ignored.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, Stream, StreamExt};
use nave_inference::{ChatMessage, Event, FinishReason, GenerateRequest, Prompt, SamplingParams, Usage};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::route::{complete, dispatch, Dispatch};
use crate::{Admission, Caller, Hub};

pub type AppState = Arc<Hub>;

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A fresh random id (request ids, completion ids).
pub fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    format!("{:016x}", h.finish())
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let what = if e.is_data() { "invalid request body" } else { "malformed JSON" };
        ApiError::bad_request(format!("{what}: {e}"))
    })
}

/// Per-request context from the headers.
pub struct Ctx {
    pub request_id: String,
    pub session: Option<String>,
    pub deadline: Instant,
}

pub fn context(hub: &Hub, headers: &HeaderMap) -> Ctx {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let request_id = header("x-request-id").filter(|s| !s.is_empty() && s.len() <= 128).unwrap_or_else(random_id);
    let timeout = header("x-request-timeout-ms")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(hub.request_timeout);
    Ctx { request_id, session: header("x-session-id"), deadline: Instant::now() + timeout }
}

fn check_model(hub: &Hub, model: &str) -> Result<String, ApiError> {
    let model = model.strip_suffix(":latest").unwrap_or(model);
    let models = hub.models();
    let adapter_served = model.contains(':') && (hub.spokes.serves(model) || hub.adapters().iter().any(|a| a == model));
    if models.iter().any(|m| m == model) || adapter_served {
        Ok(model.to_string())
    } else {
        Err(ApiError::unknown_model(model, &models))
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
    Null(()),
}

#[derive(Deserialize)]
struct Part {
    #[serde(default)]
    text: Option<String>,
}

impl Content {
    fn text(self) -> String {
        match self {
            Content::Text(s) => s,
            Content::Parts(p) => p.into_iter().filter_map(|p| p.text).collect::<Vec<_>>().join(""),
            Content::Null(()) => String::new(),
        }
    }
}

#[derive(Deserialize)]
struct InMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The sampling fields shared by chat and completions.
#[derive(Deserialize, Default)]
struct Sampling {
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    min_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    /// llama.cpp's extension: generate past end-of-turn tokens (benchmarks).
    ignore_eos: Option<bool>,
    n: Option<u32>,
}

impl Sampling {
    fn params(self) -> Result<SamplingParams, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::bad_request("only n=1 is supported").with_param("n"));
        }
        let d = SamplingParams::default();
        let p = SamplingParams {
            max_tokens: self.max_completion_tokens.or(self.max_tokens).unwrap_or(d.max_tokens),
            temperature: self.temperature.unwrap_or(d.temperature),
            top_p: self.top_p.unwrap_or(d.top_p),
            top_k: self.top_k.unwrap_or(d.top_k),
            min_p: self.min_p.unwrap_or(d.min_p),
            seed: self.seed,
            stop: match self.stop {
                None => vec![],
                Some(Stop::One(s)) => vec![s],
                Some(Stop::Many(v)) => v,
            },
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            ignore_eos: self.ignore_eos.unwrap_or(false),
        };
        p.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(p)
    }
}

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<InMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    sampling: Sampling,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PromptField {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct CompletionRequest {
    model: String,
    prompt: PromptField,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    sampling: Sampling,
}

fn with_request_id(mut resp: Response, id: &str) -> Response {
    if let Ok(v) = axum::http::HeaderValue::from_str(id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

fn usage_json(u: &Usage) -> Value {
    json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.prompt_tokens + u.completion_tokens,
           "prompt_tokens_details": {"cached_tokens": u.cached_tokens}})
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
            params: req.sampling.params()?,
        };
        run(&hub, &caller, "chat", &model, gen, &ctx, req.stream, include_usage).await
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
            params: req.sampling.params()?,
        };
        run(&hub, &caller, "text", &model, gen, &ctx, req.stream, include_usage).await
    })
    .await
}

/// The frame of every generation handler: the request's context from its headers, then
/// `work`, then the response with its request id and the request counted in the metrics.
async fn respond<Fut>(hub: &Hub, headers: &HeaderMap, route: &'static str, work: impl FnOnce(Ctx) -> Fut) -> Response
where
    Fut: std::future::Future<Output = Result<(String, Response), ApiError>>,
{
    let ctx = context(hub, headers);
    let id = ctx.request_id.clone();
    let result = work(ctx).await;
    finish(hub, route, &id, result)
}

fn finish(hub: &Hub, route: &'static str, id: &str, result: Result<(String, Response), ApiError>) -> Response {
    match result {
        Ok((model, resp)) => {
            hub.metrics.request(route, &model, resp.status().as_u16());
            with_request_id(resp, id)
        }
        Err(e) => {
            hub.metrics.request(route, "other", e.status.as_u16());
            // A client's own mistake or its limit (4xx) is counted in the metrics and
            // answered; logging each would flood the log of a busy hub. A 5xx is ours.
            if e.status.is_server_error() {
                tracing::warn!(request_id = %id, status = e.status.as_u16(), error = %e.message, "request failed");
            } else {
                tracing::debug!(request_id = %id, status = e.status.as_u16(), error = %e.message, "request refused");
            }
            with_request_id(e.into_response(), id)
        }
    }
}

/// Runs a chat ("chat") or text ("text") generation, streamed as SSE or whole.
#[allow(clippy::too_many_arguments)]
async fn run(
    hub: &Arc<Hub>,
    caller: &Caller,
    kind: &'static str,
    model: &str,
    gen: GenerateRequest,
    ctx: &Ctx,
    streamed: bool,
    include_usage: bool,
) -> Result<(String, Response), ApiError> {
    let _slot = hub.admit()?;
    let admission = hub.admit_request(caller, &ctx.request_id, gen.params.max_tokens).await?;
    let created = now_secs();
    let cid = format!("{}-{}", if kind == "chat" { "chatcmpl" } else { "cmpl" }, random_id());
    if !streamed {
        let (text, finish, usage) = complete(hub, model, gen, ctx.session.as_deref(), ctx.deadline).await?;
        admission.record(usage.completion_tokens);
        let body = if kind == "chat" {
            json!({"id": cid, "object": "chat.completion", "created": created, "model": model,
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": finish.as_str()}],
                   "usage": usage_json(&usage)})
        } else {
            json!({"id": cid, "object": "text_completion", "created": created, "model": model,
                   "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish.as_str()}],
                   "usage": usage_json(&usage)})
        };
        return Ok((model.to_string(), Json(body).into_response()));
    }
    let d = dispatch(hub, model, gen, ctx.session.as_deref(), ctx.deadline, &[]).await?;
    let chunk = ChunkFormat { kind, id: cid, created, model: model.to_string(), include_usage };
    let events = sse_stream(hub.clone(), d, chunk, (_slot, admission));
    let sse = Sse::new(events).keep_alive(axum::response::sse::KeepAlive::new().interval(Duration::from_secs(10)));
    Ok((model.to_string(), sse.into_response()))
}

struct ChunkFormat {
    kind: &'static str,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl ChunkFormat {
    fn chunk(&self, text: Option<&str>, role: bool, finish: Option<FinishReason>) -> Value {
        let choice = if self.kind == "chat" {
            let mut delta = serde_json::Map::new();
            if role {
                delta.insert("role".into(), json!("assistant"));
            }
            if let Some(t) = text {
                delta.insert("content".into(), json!(t));
            }
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish.map(FinishReason::as_str)})
        } else {
            json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish.map(FinishReason::as_str)})
        };
        let object = if self.kind == "chat" { "chat.completion.chunk" } else { "text_completion" };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": [choice]})
    }
}

/// SSE events for a running dispatch. The response body owns the dispatch: a client that
/// goes away drops it, which stops the QUIC stream and cancels the sequence on the spoke.
fn sse_stream(
    hub: Arc<Hub>,
    d: Dispatch,
    f: ChunkFormat,
    slot: (crate::Slot, Admission),
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    struct St {
        hub: Arc<Hub>,
        d: Dispatch,
        f: ChunkFormat,
        first: bool,
        done: bool,
        last: Instant,
        slot: (crate::Slot, Admission),
    }
    let start = St { hub, d, f, first: true, done: false, last: Instant::now(), slot };
    stream::unfold(start, |mut st| async move {
        if st.done {
            return None;
        }
        let mut out: Vec<SseEvent> = Vec::new();
        match st.d.next().await {
            Some(Event::Delta { text, tokens }) => {
                st.slot.1.record(tokens.len());
                let now = Instant::now();
                if st.first {
                    st.hub.metrics.ttft.observe(now.duration_since(st.last).as_secs_f64());
                } else {
                    st.hub.metrics.itl.observe(now.duration_since(st.last).as_secs_f64());
                }
                st.last = now;
                if st.first && st.f.kind == "chat" {
                    out.push(SseEvent::default().data(st.f.chunk(None, true, None).to_string()));
                }
                st.first = false;
                if !text.is_empty() {
                    out.push(SseEvent::default().data(st.f.chunk(Some(&text), false, None).to_string()));
                }
            }
            Some(Event::Done { finish, usage }) => {
                if st.first && st.f.kind == "chat" {
                    out.push(SseEvent::default().data(st.f.chunk(None, true, None).to_string()));
                }
                out.push(SseEvent::default().data(st.f.chunk(None, false, Some(finish)).to_string()));
                if st.f.include_usage {
                    let mut u = json!({"id": st.f.id, "object": if st.f.kind == "chat" { "chat.completion.chunk" } else { "text_completion" },
                                       "created": st.f.created, "model": st.f.model, "choices": []});
                    u["usage"] = usage_json(&usage);
                    out.push(SseEvent::default().data(u.to_string()));
                }
                out.push(SseEvent::default().data("[DONE]"));
                st.done = true;
            }
            Some(Event::Error { message, client }) => {
                // Tokens may already be out: the stream ends with an error event instead of
                // a silent replay.
                let status = if client { StatusCode::BAD_REQUEST } else { StatusCode::BAD_GATEWAY };
                let e = ApiError::new(status, message);
                out.push(SseEvent::default().data(e.body().to_string()));
                out.push(SseEvent::default().data("[DONE]"));
                st.done = true;
            }
            None => {
                let e = ApiError::new(StatusCode::BAD_GATEWAY, format!("spoke {} ended the stream early", st.d.spoke));
                out.push(SseEvent::default().data(e.body().to_string()));
                st.done = true;
            }
        }
        Some((stream::iter(out.into_iter().map(Ok)), st))
    })
    .flatten()
}

pub async fn models(State(hub): State<AppState>) -> Json<Value> {
    let created = now_secs();
    let data: Vec<Value> = hub
        .models()
        .iter()
        .chain(hub.adapters().iter())
        .map(|m| json!({"id": m, "object": "model", "created": created, "owned_by": "nave"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

pub async fn health() -> &'static str {
    "ok\n"
}

pub async fn ready(State(hub): State<AppState>) -> Response {
    if hub.shutting_down.load(Ordering::Relaxed) {
        return ApiError::unavailable("shutting down").into_response();
    }
    if hub.consensus.figures().leader.is_none() {
        return ApiError::unavailable("no Raft leader is known yet").into_response();
    }
    if hub.spokes.any_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        ApiError::unavailable("no spoke is ready yet").into_response()
    }
}

pub async fn metrics(State(hub): State<AppState>) -> String {
    use std::fmt::Write;
    let mut out = hub.metrics.render(&hub.spokes.views());
    let f = hub.consensus.figures();
    let rows = [
        (crate::metrics::RAFT_TERM, f.term),
        (crate::metrics::RAFT_IS_LEADER, u64::from(f.leader == Some(f.id))),
        (crate::metrics::RAFT_LAST_LOG, f.last_log_index.unwrap_or(0)),
        (crate::metrics::RAFT_APPLIED, f.applied_index.unwrap_or(0)),
        (crate::metrics::RAFT_SNAPSHOT, f.snapshot_index.unwrap_or(0)),
    ];
    for (name, v) in rows {
        let _ = writeln!(out, "# TYPE {name} gauge\n{name} {v}");
    }
    let _ = writeln!(out, "# TYPE {} gauge", crate::metrics::RAFT_LAG);
    for (peer, lag) in &f.lag {
        let _ = writeln!(out, "{}{{peer=\"{peer}\"}} {lag}", crate::metrics::RAFT_LAG);
    }
    let dropped = crate::otlp::DROPPED.load(Ordering::Relaxed);
    let _ = writeln!(out, "# TYPE {0} counter\n{0} {dropped}", crate::metrics::OTLP_DROPPED);
    out
}

/// The routes whose JSON bodies [`validate_body`] knows.
pub const BODY_ROUTES: &[&str] =
    &["/v1/chat/completions", "/v1/completions", "/v1/responses", "/api/chat", "/api/generate"];

/// Parses and validates a request body as the handler of `route` would, without running
/// it: a typed request with valid sampling parameters, or the 400 the client would get.
/// (For fuzzing and for tools that check requests offline.)
pub fn validate_body(route: &str, body: &[u8]) -> Result<(), ApiError> {
    let body = Bytes::copy_from_slice(body);
    match route {
        "/v1/chat/completions" => parse::<ChatRequest>(&body)?.sampling.params().map(|_| ()),
        "/v1/completions" => parse::<CompletionRequest>(&body)?.sampling.params().map(|_| ()),
        "/v1/responses" => {
            let r = parse::<ResponsesRequest>(&body)?;
            Sampling {
                max_tokens: r.max_output_tokens,
                temperature: r.temperature,
                top_p: r.top_p,
                seed: r.seed,
                ..Default::default()
            }
            .params()
            .map(|_| ())
        }
        "/api/chat" => parse::<OllamaChat>(&body)?.options.unwrap_or_default().params().map(|_| ()),
        "/api/generate" => parse::<OllamaGenerate>(&body)?.options.unwrap_or_default().params().map(|_| ()),
        other => Err(ApiError::bad_request(format!("no body parser for {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_parse_or_give_a_400() {
        assert!(validate_body(
            "/v1/chat/completions",
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"unknown":1}"#
        )
        .is_ok());
        assert!(validate_body(
            "/v1/chat/completions",
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}"#
        )
        .is_ok());
        for bad in [
            &b"{"[..],
            b"[]",
            br#"{"model":5}"#,
            br#"{"model":"m","messages":[],"temperature":-1}"#,
            br#"{"model":"m","messages":[],"n":2}"#,
        ] {
            let e = validate_body("/v1/chat/completions", bad).err().map(|e| e.status.as_u16());
            assert_eq!(e, Some(400), "{}", String::from_utf8_lossy(bad));
        }
        assert!(validate_body("/api/generate", br#"{"model":"m","prompt":"x","options":{"num_predict":-1}}"#).is_ok());
        assert!(validate_body("/v1/responses", br#"{"model":"m","input":"x","max_output_tokens":0}"#).is_err());
    }
}

// ---- Ollama ----

#[derive(Deserialize, Default)]
struct OllamaOptions {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    min_p: Option<f32>,
    seed: Option<u64>,
    num_predict: Option<i64>,
    stop: Option<Vec<String>>,
    repeat_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
}

impl OllamaOptions {
    fn params(self) -> Result<SamplingParams, ApiError> {
        let d = SamplingParams::default();
        let p = SamplingParams {
            temperature: self.temperature.unwrap_or(0.8),
            top_p: self.top_p.unwrap_or(0.9),
            top_k: self.top_k.unwrap_or(40),
            min_p: self.min_p.unwrap_or(0.0),
            seed: self.seed,
            max_tokens: match self.num_predict {
                Some(n) if n > 0 => n as usize,
                _ => d.max_tokens,
            },
            stop: self.stop.unwrap_or_default(),
            repetition_penalty: self.repeat_penalty.unwrap_or(1.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            ignore_eos: false,
        };
        p.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(p)
    }
}

#[derive(Deserialize)]
struct OllamaMessage {
    role: String,
    #[serde(default)]
    content: String,
}

#[derive(Deserialize)]
struct OllamaChat {
    model: String,
    messages: Vec<OllamaMessage>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    options: Option<OllamaOptions>,
}

#[derive(Deserialize)]
struct OllamaGenerate {
    model: String,
    #[serde(default)]
    prompt: String,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    options: Option<OllamaOptions>,
}

fn rfc3339_now() -> String {
    let secs = now_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

pub async fn ollama_chat(
    State(hub): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let h = hub.clone();
    respond(&h, &headers, "/api/chat", |ctx| async move {
        let req: OllamaChat = parse(&body)?;
        let model = check_model(&hub, &req.model)?;
        let messages = req.messages.into_iter().map(|m| ChatMessage::new(m.role, m.content)).collect::<Vec<_>>();
        if messages.is_empty() {
            return Err(ApiError::bad_request("messages must not be empty"));
        }
        let gen = GenerateRequest {
            request_id: ctx.request_id.clone(),
            prompt: Prompt::Chat(messages),
            params: req.options.unwrap_or_default().params()?,
        };
        ollama_run(&hub, &caller, true, &model, gen, &ctx, req.stream.unwrap_or(true)).await
    })
    .await
}

pub async fn ollama_generate(
    State(hub): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let h = hub.clone();
    respond(&h, &headers, "/api/generate", |ctx| async move {
        let req: OllamaGenerate = parse(&body)?;
        let model = check_model(&hub, &req.model)?;
        let prompt = match req.system {
            Some(system) => {
                Prompt::Chat(vec![ChatMessage::new("system", system), ChatMessage::new("user", req.prompt)])
            }
            None => Prompt::Text(req.prompt),
        };
        let gen = GenerateRequest {
            request_id: ctx.request_id.clone(),
            prompt,
            params: req.options.unwrap_or_default().params()?,
        };
        ollama_run(&hub, &caller, false, &model, gen, &ctx, req.stream.unwrap_or(true)).await
    })
    .await
}

fn ollama_line(chat: bool, model: &str, text: &str, done: Option<(FinishReason, Usage, Duration)>) -> Value {
    let mut v = json!({"model": model, "created_at": rfc3339_now(), "done": done.is_some()});
    if chat {
        v["message"] = json!({"role": "assistant", "content": text});
    } else {
        v["response"] = json!(text);
    }
    if let Some((finish, usage, took)) = done {
        v["done_reason"] = json!(finish.as_str());
        v["total_duration"] = json!(took.as_nanos() as u64);
        v["prompt_eval_count"] = json!(usage.prompt_tokens);
        v["eval_count"] = json!(usage.completion_tokens);
    }
    v
}

async fn ollama_run(
    hub: &Arc<Hub>,
    caller: &Caller,
    chat: bool,
    model: &str,
    gen: GenerateRequest,
    ctx: &Ctx,
    streamed: bool,
) -> Result<(String, Response), ApiError> {
    let slot = hub.admit()?;
    let admission = hub.admit_request(caller, &ctx.request_id, gen.params.max_tokens).await?;
    let started = Instant::now();
    if !streamed {
        let (text, finish, usage) = complete(hub, model, gen, ctx.session.as_deref(), ctx.deadline).await?;
        admission.record(usage.completion_tokens);
        return Ok((
            model.to_string(),
            Json(ollama_line(chat, model, &text, Some((finish, usage, started.elapsed())))).into_response(),
        ));
    }
    let d = dispatch(hub, model, gen, ctx.session.as_deref(), ctx.deadline, &[]).await?;
    let model_name = model.to_string();
    let lines = stream::unfold((d, false, (slot, admission)), move |(mut d, done, slot)| {
        let model = model_name.clone();
        async move {
            if done {
                return None;
            }
            let (line, end) = match d.next().await {
                Some(Event::Delta { text, tokens }) => {
                    slot.1.record(tokens.len());
                    (ollama_line(chat, &model, &text, None), false)
                }
                Some(Event::Done { finish, usage }) => {
                    (ollama_line(chat, &model, "", Some((finish, usage, started.elapsed()))), true)
                }
                Some(Event::Error { message, .. }) => (json!({"error": message}), true),
                None => (json!({"error": "the spoke ended the stream early"}), true),
            };
            Some((Ok::<_, Infallible>(Bytes::from(format!("{line}\n"))), (d, end, slot)))
        }
    });
    let resp = Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(lines))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((model.to_string(), resp))
}

pub async fn ollama_tags(State(hub): State<AppState>) -> Json<Value> {
    let store = nave_inference::store::ModelStore::from_env();
    let models: Vec<Value> = hub
        .models()
        .iter()
        .map(|m| {
            let spec = nave_inference::store::spec(m).ok();
            json!({"name": m, "model": m, "modified_at": rfc3339_now(), "size": spec.map(|s| s.size).unwrap_or(0),
                   "digest": spec.map(|s| s.sha256).unwrap_or(""), "details": {"format": "gguf", "family": m.split('-').next().unwrap_or(m)},
                   "path": store.path_of(m)})
        })
        .collect();
    Json(json!({"models": models}))
}

pub async fn ollama_version() -> Json<Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION")}))
}

// ---- Responses API ----

#[derive(Deserialize)]
#[serde(untagged)]
enum ResponsesInput {
    Text(String),
    Items(Vec<InMessage>),
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
struct ResponsesRequest {
    model: String,
    input: ResponsesInput,
    #[serde(default)]
    instructions: Option<String>,
    #[serde(default)]
    previous_response_id: Option<String>,
    #[serde(default = "default_true")]
    store: bool,
    #[serde(default)]
    stream: bool,
    max_output_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
}

fn owner_of(caller: &Caller) -> String {
    match caller {
        Caller::Admin => "admin".into(),
        Caller::Key(d) => d.clone(),
    }
}

fn response_json(r: &nave_consensus::state::StoredResponse, status: &str) -> Value {
    json!({
        "id": r.id, "object": "response", "created_at": r.created_ms / 1000, "status": status, "model": r.model,
        "previous_response_id": r.previous, "error": null, "incomplete_details": null,
        "output": [{"type": "message", "id": format!("msg_{}", r.id.trim_start_matches("resp_")), "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": r.output, "annotations": []}]}],
        "usage": {"input_tokens": r.input_tokens, "output_tokens": r.output_tokens, "total_tokens": r.input_tokens + r.output_tokens,
                  "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}},
    })
}

/// `POST /v1/responses`: the conversation so far comes from the replicated state (the
/// `previous_response_id` chain), so a follow-up on any hub continues it.
pub async fn responses(
    State(hub): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let h = hub.clone();
    respond(&h, &headers, "/v1/responses", |ctx| async move {
        let req: ResponsesRequest = parse(&body)?;
        let model = check_model(&hub, &req.model)?;
        if req.stream {
            return Err(ApiError::bad_request(
                "streaming is not supported on /v1/responses yet; use /v1/chat/completions",
            )
            .with_param("stream"));
        }
        let owner = owner_of(&caller);
        let history: Vec<nave_consensus::state::StoredResponse> = match &req.previous_response_id {
            None => Vec::new(),
            Some(prev) => hub
                .consensus
                .read(|a| a.state.conversation(prev, &owner).map(|c| c.into_iter().cloned().collect()))
                .await
                .map_err(crate::no_quorum)?
                .ok_or_else(|| {
                    ApiError::new(StatusCode::NOT_FOUND, format!("response {prev:?} not found"))
                        .with_param("previous_response_id")
                })?,
        };
        let input: Vec<ChatMessage> = match req.input {
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
        let params = Sampling {
            max_tokens: req.max_output_tokens,
            temperature: req.temperature,
            top_p: req.top_p,
            seed: req.seed,
            ..Default::default()
        }
        .params()?;
        let _slot = hub.admit()?;
        let admission = hub.admit_request(&caller, &ctx.request_id, params.max_tokens).await?;
        // Follow-ups of one conversation prefer one spoke (its prefix cache holds it).
        let session = history.first().map(|r| r.id.clone()).or_else(|| ctx.session.clone());
        let gen = GenerateRequest { request_id: ctx.request_id.clone(), prompt: Prompt::Chat(messages), params };
        let (text, _finish, usage) = complete(&hub, &model, gen, session.as_deref(), ctx.deadline).await?;
        admission.record(usage.completion_tokens);
        let stored = nave_consensus::state::StoredResponse {
            id: format!("resp_{}{}", random_id(), random_id()),
            owner,
            model: model.clone(),
            previous: req.previous_response_id.clone(),
            created_ms: now_secs() * 1000,
            input: input
                .into_iter()
                .map(|m| nave_consensus::state::Turn { role: m.role, content: m.content })
                .collect(),
            output: text,
            input_tokens: usage.prompt_tokens as u64,
            output_tokens: usage.completion_tokens as u64,
            spoke: String::new(),
        };
        if req.store {
            // Written before the answer goes out: a follow-up on any hub finds it.
            hub.consensus
                .write(nave_consensus::state::Command::StoreResponse(Box::new(stored.clone())))
                .await
                .map_err(crate::no_quorum)?;
        }
        Ok((model, Json(response_json(&stored, "completed")).into_response()))
    })
    .await
}

/// `GET /v1/responses/{id}`: a stored response, to the key that created it only.
pub async fn get_response(
    State(hub): State<AppState>,
    Extension(caller): Extension<Caller>,
    axum::extract::Path(rid): axum::extract::Path<String>,
) -> Response {
    let owner = owner_of(&caller);
    match hub.consensus.read(|a| a.state.response(&rid, &owner).cloned()).await {
        Ok(Some(r)) => Json(response_json(&r, "completed")).into_response(),
        Ok(None) => ApiError::new(StatusCode::NOT_FOUND, format!("response {rid:?} not found")).into_response(),
        Err(e) => crate::no_quorum(e).into_response(),
    }
}
