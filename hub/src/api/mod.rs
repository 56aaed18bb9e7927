//! The HTTP API: the route table ([`router`]), the frame every generation handler shares
//! (request context, metrics, request id) and the one generation skeleton, admit ->
//! dispatch -> answer ([`generate`]), that [`openai`], [`ollama`] and [`responses`] use.
//!
//! Bodies are parsed by hand ([`parse`]) so that malformed JSON and wrong types are a 400
//! in OpenAI's error shape (axum's extractor would answer 422 in its own words); unknown
//! fields are ignored. Every body is a type of [`types`].

pub mod embeddings;
pub mod ollama;
pub mod openai;
pub mod ops;
pub mod responses;
mod tools;
pub mod types;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use nave_inference::GenerateRequest;

use crate::error::ApiError;
use crate::route::{complete, dispatch, Completed, Dispatch};
use crate::{admin, auth, serve, train, Admission, Caller, Hub, Slot};

pub type AppState = Arc<Hub>;

/// The HTTP routes of a hub.
pub fn router(hub: Arc<Hub>) -> Router {
    let limit = hub.config.cluster.max_body_bytes.0 as usize;
    let body_limits =
        serve::BodyLimits { max_bytes: limit, timeout: Duration::from_millis(hub.config.cluster.body_timeout_ms) };
    let protected = Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(embeddings::openai))
        .route("/api/embed", post(embeddings::ollama))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{id}", get(openai::model))
        .route("/v1/responses", post(responses::create))
        .route("/v1/responses/{id}", get(responses::get).delete(responses::delete))
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate))
        .route("/api/tags", get(ollama::tags))
        .route("/api/show", post(ollama::show))
        .route("/api/ps", get(ollama::ps))
        .route("/api/pull", post(ollama::pull))
        .route("/admin/v1/status", get(admin::status))
        .route("/admin/v1/keys", get(admin::list_keys).post(admin::create_key))
        .route("/admin/v1/keys/{name}", get(admin::get_key).delete(admin::revoke_key))
        .route("/admin/v1/keys/{name}/limits", axum::routing::put(admin::set_limits))
        .route("/admin/v1/spokes/{id}/drain", post(admin::drain_spoke))
        .route("/admin/v1/spokes/{id}", delete(admin::remove_spoke))
        .route("/admin/v1/tokens", post(admin::create_token))
        .route("/admin/v1/hubs", get(admin::list_hubs).post(admin::add_hub))
        .route("/admin/v1/hubs/{id}", delete(admin::remove_hub))
        .route("/admin/v1/train", get(train::list).post(train::submit))
        .route("/admin/v1/train/{name}", delete(train::cancel))
        .route("/admin/v1/audit", get(admin::audit))
        .route("/admin/v1/usage", get(admin::usage))
        .route("/v1/usage", get(admin::own_usage))
        .route("/admin/v1/backup", get(admin::backup))
        .route("/admin/v1/certs/rotate", post(crate::certs::rotate))
        .route("/admin/v1/history", get(crate::history::endpoint))
        // Layers run outside in: the key is checked before a byte of the body is read, so
        // a stranger's slow or large body holds nothing.
        .route_layer(middleware::from_fn_with_state(body_limits, serve::read_body))
        .route_layer(middleware::from_fn_with_state(hub.clone(), auth::middleware));
    // A backup file is larger than any API body: its own limit, the key checked first.
    let restore_limits =
        serve::BodyLimits { max_bytes: nave_consensus::state::MAX_BACKUP_BYTES as usize + 4096, ..body_limits };
    let restore = Router::new()
        .route("/admin/v1/restore", post(admin::restore))
        .route_layer(middleware::from_fn_with_state(restore_limits, serve::read_body))
        .route_layer(DefaultBodyLimit::max(restore_limits.max_bytes))
        .route_layer(middleware::from_fn_with_state(hub.clone(), auth::middleware));
    Router::new()
        .merge(protected)
        .merge(restore)
        .merge(crate::console::routes())
        .route("/api/version", get(ollama::version))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(shape_errors))
        .layer(middleware::from_fn(request_span))
        .with_state(hub)
}

/// Errors produced below the handlers get the OpenAI shape too: the body limit (413),
/// an unknown route (404) and a method a route does not take (405, its `Allow` header
/// kept). Under `/api/` every error is Ollama's `{"error": "..."}` instead, as Ollama's
/// clients read it.
async fn shape_errors(req: Request, next: Next) -> Response {
    use axum::http::StatusCode;
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let resp = next.run(req).await;
    let status = resp.status();
    if !status.is_client_error() && !status.is_server_error() {
        return resp;
    }
    let is_json = resp.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let mut resp = if is_json {
        resp
    } else {
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "the request body is larger than the hub accepts".to_string(),
            StatusCode::NOT_FOUND => format!("no route {method} {path}"),
            StatusCode::METHOD_NOT_ALLOWED => {
                match resp.headers().get("allow").and_then(|v| v.to_str().ok()).filter(|a| !a.is_empty()) {
                    Some(allow) => format!("{path} does not take {method} (it takes {allow})"),
                    None => format!("{path} does not take {method}"),
                }
            }
            _ => return resp,
        };
        let allow = resp.headers().get("allow").cloned();
        let mut shaped = ApiError::new(status, message).into_response();
        if let Some(a) = allow {
            shaped.headers_mut().insert("allow", a);
        }
        shaped
    };
    if path.starts_with("/api/") {
        resp = ollama_error(resp).await;
    }
    resp
}

/// An error response in OpenAI's shape, rewritten as Ollama's `{"error": "message"}`
/// (headers such as `Retry-After` kept). An error body is small: read up to 64 KiB.
async fn ollama_error(resp: Response) -> Response {
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 10).await.unwrap_or_default();
    let message = match serde_json::from_slice::<types::ErrorEnvelope>(&bytes) {
        Ok(e) => e.error.message,
        Err(_) => return Response::from_parts(parts, axum::body::Body::from(bytes)),
    };
    let body = serde_json::to_vec(&types::OllamaError { error: message }).unwrap_or_default();
    let mut resp = Response::from_parts(parts, axum::body::Body::from(body));
    resp.headers_mut().remove("content-length");
    resp
}

/// The request id a client sent (`X-Request-Id`), if it is one we accept: non-empty, at
/// most 128 bytes, visible ASCII.
fn given_request_id(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-request-id").and_then(|v| v.to_str().ok()).filter(|s| !s.is_empty() && s.len() <= 128)
}

/// Every request runs in a span carrying its id (`X-Request-Id`, or a new one, set on
/// the request for the handlers and echoed on the response): every log line written
/// while it is handled names it, and the OTLP exporter makes its trace from it.
async fn request_span(mut req: Request, next: Next) -> Response {
    use tracing::Instrument;
    let id = given_request_id(req.headers()).map(str::to_string).unwrap_or_else(nave_consensus::ids::random_id);
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        req.headers_mut().insert("x-request-id", v);
    }
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path(), status = tracing::field::Empty);
    let mut resp = next.run(req).instrument(span.clone()).await;
    span.record("status", resp.status().as_u16());
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        resp.headers_mut().entry("x-request-id").or_insert(v);
    }
    resp
}

/// A JSON body of type `T`, or the 400 that says what is wrong with it.
pub fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let what = if inner.is_data() { "invalid request body" } else { "malformed JSON" };
        if inner.is_data() && path != "." {
            // Names the field: "max_tokens: invalid value: integer `-1`, expected usize".
            ApiError::bad_request(format!("{what}: {path}: {inner}")).with_param(&path)
        } else {
            ApiError::bad_request(format!("{what}: {inner}"))
        }
    })?;
    de.end().map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
    Ok(parsed)
}

/// Per-request context from the headers.
pub struct Ctx {
    pub request_id: String,
    pub session: Option<String>,
    pub deadline: Instant,
    /// When the hub began handling the request (time to first token counts from here).
    pub arrived: Instant,
}

pub fn context(hub: &Hub, headers: &HeaderMap) -> Ctx {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let request_id = given_request_id(headers).map(str::to_string).unwrap_or_else(nave_consensus::ids::random_id);
    // A client may ask for less time than the configured deadline, never for more.
    let timeout = header("x-request-timeout-ms")
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| Duration::from_millis(ms).min(hub.request_timeout))
        .unwrap_or(hub.request_timeout);
    let arrived = Instant::now();
    Ctx { request_id, session: header("x-session-id"), deadline: arrived + timeout, arrived }
}

/// The served model (or adapter) a request names, without Ollama's `:latest`: checked
/// against what the spokes serve, a 404 listing them otherwise.
pub(crate) fn check_model(hub: &Hub, model: &str) -> Result<String, ApiError> {
    let model = model.strip_suffix(":latest").unwrap_or(model);
    let models = hub.models();
    let adapter_served = model.contains(':') && (hub.spokes.serves(model) || hub.adapters().iter().any(|a| a == model));
    if models.iter().any(|m| m == model) || adapter_served {
        Ok(model.to_string())
    } else {
        Err(ApiError::unknown_model(model, &models))
    }
}

/// The frame of every generation handler: the request's context from its headers, then
/// `work`, then the response with its request id and the request counted in the metrics.
pub(crate) async fn respond<Fut>(
    hub: &Hub,
    headers: &HeaderMap,
    route: &'static str,
    work: impl FnOnce(Ctx) -> Fut,
) -> Response
where
    Fut: std::future::Future<Output = Result<(String, Response), ApiError>>,
{
    let ctx = context(hub, headers);
    let id = ctx.request_id.clone();
    let result = work(ctx).await;
    finish(hub, route, &id, result)
}

fn finish(hub: &Hub, route: &'static str, id: &str, result: Result<(String, Response), ApiError>) -> Response {
    let resp = match result {
        Ok((model, resp)) => {
            hub.metrics.request(route, &model, resp.status().as_u16());
            resp
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
            e.into_response()
        }
    };
    with_request_id(resp, id)
}

fn with_request_id(mut resp: Response, id: &str) -> Response {
    if let Ok(v) = axum::http::HeaderValue::from_str(id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// What a request asks the model for: a chat turn (a chat template applies) or a plain
/// text continuation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Text,
}

/// What a generation holds until its answer is out: the hub's slot and the admission
/// (dropping it settles the tokens used).
pub struct Held {
    _slot: Slot,
    pub admission: Admission,
    /// When the request reached the hub.
    pub arrived: Instant,
}

/// A generation's answer: whole (every choice), or the running dispatch to stream from.
pub enum Answer {
    Whole(Completed),
    Stream(Dispatch),
}

pub struct Generated {
    pub answer: Answer,
    pub held: Held,
    /// When the admission was granted (Ollama reports the time from there).
    pub admitted_at: Instant,
}

/// The skeleton of every generation: a slot on this hub, the admission write, then the
/// spoke: [`complete`] for a whole answer (tokens recorded for settlement) or
/// [`dispatch`] for a stream the caller formats.
pub async fn generate(
    hub: &Arc<Hub>,
    caller: &Caller,
    model: &str,
    gen: GenerateRequest,
    ctx: &Ctx,
    session: Option<&str>,
    streamed: bool,
) -> Result<Generated, ApiError> {
    // A max_tokens the client named must fit the context the spokes serve the model
    // with; one it left out is the model's default, at most that context.
    let context = hub.spokes.context(model);
    let named = gen.params.max_tokens != nave_inference::SamplingParams::UNTIL_END;
    if let (true, Some(context)) = (named, context) {
        if gen.params.max_tokens > context {
            return Err(ApiError::bad_request(format!(
                "max_tokens is {}, but {model} has a context of {context} tokens",
                gen.params.max_tokens
            ))
            .with_param("max_tokens"));
        }
    }
    let mut gen = with_model_settings(&hub.config, model, gen);
    if let (false, Some(context)) = (named, context) {
        gen.params.max_tokens = gen.params.max_tokens.min(context);
    }
    let slot = hub.take_slot()?;
    // Offered tools are rendered into the prompt: their JSON, and (for a template that
    // knows none) Nave's instructions around them.
    let tools = gen.params.tools.as_ref().map_or(0, |t| {
        t.defs.iter().map(|d| d.name.len() + d.description.len() + d.parameters.len() + 64).sum::<usize>() + 1024
    });
    let prompt_bound =
        crate::admission::prompt_bound(&gen.prompt, hub.spokes.prompt_overhead(model)).saturating_add(tools);
    // Every choice may use all of max_tokens.
    let reserve = prompt_bound.saturating_add(gen.params.max_tokens.saturating_mul(gen.params.n.max(1)));
    let admission = hub.write_admission(caller, &ctx.request_id, model, reserve, prompt_bound).await?;
    let admitted_at = Instant::now();
    let held = Held { _slot: slot, admission, arrived: ctx.arrived };
    let answer = if streamed {
        Answer::Stream(dispatch(hub, model, gen, session, ctx.deadline, &[]).await?)
    } else {
        let done = complete(hub, model, gen, session, ctx.deadline).await?;
        let usage = done.usage();
        held.admission.record_prompt(usage.prompt_tokens);
        held.admission.record(usage.completion_tokens);
        Answer::Whole(done)
    };
    Ok(Generated { answer, held, admitted_at })
}

/// What a request without `max_tokens` may reserve when neither the config nor the store
/// knows the model's context (a file served by path): the longest context of the
/// families Nave runs at their common sizes.
const UNKNOWN_CONTEXT: usize = 32_768;

/// `gen` with the model's settings of `[models.NAME]` applied: a request naming no
/// `max_tokens` gets `default_max_tokens`, else runs until the end of the turn or the
/// context (the reservation is then the context: the config's, else the store's record);
/// a chat without a system message gets `system_prompt` first.
fn with_model_settings(
    config: &nave_consensus::config::ClusterConfig,
    model: &str,
    mut gen: GenerateRequest,
) -> GenerateRequest {
    let s = config.model_settings(model);
    if gen.params.max_tokens == nave_inference::SamplingParams::UNTIL_END {
        gen.params.max_tokens = s.default_max_tokens.unwrap_or_else(|| {
            s.context.or_else(|| nave_inference::store::known_context(model)).unwrap_or(UNKNOWN_CONTEXT)
        });
    }
    if let (Some(system), nave_inference::Prompt::Chat(msgs)) = (&s.system_prompt, &mut gen.prompt) {
        if msgs.first().is_none_or(|m| m.role != "system") {
            msgs.insert(0, nave_inference::ChatMessage::new("system", system.clone()));
        }
    }
    gen
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
        "/v1/chat/completions" => openai::chat_params(&parse(&body)?).map(|_| ()),
        "/v1/completions" => openai::completion_params(&parse(&body)?).map(|_| ()),
        "/v1/responses" => responses::params(&parse::<types::ResponsesRequest>(&body)?).map(|_| ()),
        "/api/chat" => ollama::chat_params(&parse(&body)?).map(|_| ()),
        "/api/generate" => ollama::generate_params(&parse(&body)?).map(|_| ()),
        other => Err(ApiError::bad_request(format!("no body parser for {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nave_inference::{ChatMessage, Prompt, SamplingParams};

    #[test]
    fn model_settings_fill_max_tokens_and_the_system_prompt() {
        let mut config = nave_consensus::config::ClusterConfig::default();
        let set = nave_consensus::config::ModelPolicy {
            default_max_tokens: Some(300),
            system_prompt: Some("Be brief.".into()),
            ..Default::default()
        };
        config.models.insert("m".into(), set);
        let chat = |msgs: Vec<ChatMessage>, max_tokens: usize| GenerateRequest {
            request_id: "r".into(),
            prompt: Prompt::Chat(msgs),
            params: SamplingParams { max_tokens, ..Default::default() },
        };
        let user = vec![ChatMessage::new("user", "hi")];
        let got = with_model_settings(&config, "m", chat(user.clone(), SamplingParams::UNTIL_END));
        assert_eq!(got.params.max_tokens, 300);
        let Prompt::Chat(msgs) = &got.prompt else { panic!("a chat") };
        assert_eq!(msgs[0], ChatMessage::new("system", "Be brief."));
        // The request's own figure and system message win.
        let own = vec![ChatMessage::new("system", "S"), ChatMessage::new("user", "hi")];
        let got = with_model_settings(&config, "m", chat(own.clone(), 7));
        assert_eq!(got.params.max_tokens, 7);
        assert!(matches!(got.prompt, Prompt::Chat(m) if m == own));
        // No setting: until the end of the turn or the context, never 256.
        let got = with_model_settings(&config, "smollm2-135m", chat(user.clone(), SamplingParams::UNTIL_END));
        assert_eq!(got.params.max_tokens, 8192);
        let got = with_model_settings(&config, "unknown", chat(user, SamplingParams::UNTIL_END));
        assert_eq!(got.params.max_tokens, UNKNOWN_CONTEXT);
    }

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
            br#"{"model":"m","messages":[],"n":9}"#,
            br#"{"model":"m","messages":[],"top_logprobs":2}"#,
            br#"{"model":"m","messages":[],"logprobs":true,"top_logprobs":21}"#,
            br#"{"model":"m","messages":[],"logit_bias":{"x":1}}"#,
            br#"{"model":"m","messages":[],"logit_bias":{"5":101}}"#,
            br#"{"model":"m","messages":[],"tools":[{"type":"retrieval","function":{"name":"f"}}]}"#,
            br#"{"model":"m","messages":[],"tools":[{"type":"function","function":{"name":"bad name"}}]}"#,
            br#"{"model":"m","messages":[],"tools":[{"type":"function","function":{"name":"f","parameters":[]}}]}"#,
            br#"{"model":"m","messages":[],"tool_choice":"required"}"#,
            br#"{"model":"m","messages":[],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"function","function":{"name":"g"}}}"#,
            br#"{"model":"m","messages":[],"response_format":{"type":"xml"}}"#,
            br#"{"model":"m","messages":[],"response_format":{"type":"json_schema","json_schema":{"name":"x"}}}"#,
            br#"{"model":"m","messages":[],"response_format":{"type":"json_schema","json_schema":{"schema":{}}},"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"required"}"#,
            br#"{"model":"m","messages":[],"functions":[{"name":"f"}]}"#,
        ] {
            let e = validate_body("/v1/chat/completions", bad).err().map(|e| e.status.as_u16());
            assert_eq!(e, Some(400), "{}", String::from_utf8_lossy(bad));
        }
        for good in [
            &br#"{"model":"m","messages":[],"n":8,"logprobs":true,"top_logprobs":20,"logit_bias":{"5":-100}}"#[..],
            br#"{"model":"m","messages":[],"response_format":{"type":"text"},"user":"u-1","tools":[],"tool_choice":"none"}"#,
            br#"{"model":"m","messages":[],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"required"}"#,
            br#"{"model":"m","messages":[],"response_format":{"type":"json_object"}}"#,
            br#"{"model":"m","messages":[],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object"},"strict":true}}}"#,
        ] {
            assert!(validate_body("/v1/chat/completions", good).is_ok(), "{}", String::from_utf8_lossy(good));
        }
        let named = |route: &str, body: &[u8]| validate_body(route, body).err().and_then(|e| e.param);
        assert_eq!(
            named("/v1/chat/completions", br#"{"model":"m","messages":[],"tools":[{}]}"#).as_deref(),
            Some("tools[0]")
        );
        assert_eq!(
            named("/v1/completions", br#"{"model":"m","prompt":"x","logprobs":30}"#).as_deref(),
            Some("logprobs")
        );
        assert!(validate_body("/v1/completions", br#"{"model":"m","prompt":"x","logprobs":5,"echo":true}"#).is_ok());
        assert!(validate_body("/api/generate", br#"{"model":"m","prompt":"x","options":{"num_predict":-1}}"#).is_ok());
        assert!(validate_body("/v1/responses", br#"{"model":"m","input":"x","max_output_tokens":0}"#).is_err());
        let format = |f: &str| {
            validate_body("/v1/responses", format!(r#"{{"model":"m","input":"x","text":{{"format":{f}}}}}"#).as_bytes())
        };
        assert!(format(r#"{"type":"json_schema","name":"c","schema":{"type":"object"},"strict":true}"#).is_ok());
        assert!(format(r#"{"type":"json_object"}"#).is_ok() && format(r#"{"type":"text"}"#).is_ok());
        assert!(format(r#"{"type":"json_schema","name":"c"}"#).is_err() && format(r#"{"type":"xml"}"#).is_err());
        // The Responses API's tools are flat, its named choice too.
        let tools = |t: &str| {
            let body = format!(r#"{{"model":"m","input":"x",{t}}}"#);
            validate_body("/v1/responses", body.as_bytes()).err().map(|e| e.param.unwrap_or_default())
        };
        let f = r#""tools":[{"type":"function","name":"f","parameters":{"type":"object"},"strict":true}]"#;
        for good in [
            format!(r#"{f},"tool_choice":"required""#),
            format!(r#"{f},"tool_choice":{{"type":"function","name":"f"}}"#),
            r#""tools":[{"type":"function","name":"f","parameters":null}]"#.into(),
            r#""tools":[],"tool_choice":"none""#.into(),
        ] {
            assert_eq!(tools(&good), None, "{good}");
        }
        for (bad, param) in [
            (r#""tools":[{"type":"web_search"}]"#.to_string(), "tools[0].type"),
            (r#""tools":[{"type":"function","description":"d"}]"#.into(), "tools[0].name"),
            (format!(r#"{f},"tool_choice":{{"type":"function","function":{{"name":"f"}}}}"#), "tool_choice"),
            (format!(r#"{f},"tool_choice":{{"type":"function","name":"g"}}"#), "tool_choice"),
            (r#""tool_choice":"required""#.into(), "tool_choice"),
        ] {
            assert_eq!(tools(&bad).as_deref(), Some(param), "{bad}");
        }
    }
}
