//! The Ollama API: `POST /api/chat`, `POST /api/generate` (whole, or NDJSON lines),
//! `POST /api/show`, `GET /api/ps`, `GET /api/tags`, `GET /api/version`. Errors under
//! `/api/` are Ollama's `{"error": "..."}` (the router reshapes them).
//!
//! `/api/generate` renders the model's chat template around the prompt (and `system`)
//! unless `raw: true`, as Ollama does; an empty prompt only checks the model is served
//! and answers `done` with `done_reason: "load"` (Nave's models are always loaded).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream;
use nave_consensus::clock::{now_secs, rfc3339};
use nave_inference::{ChatMessage, Event, FinishReason, GenerateRequest, Prompt, SamplingParams, Usage};

use super::openai::checked;
use super::types::{
    OllamaChat, OllamaDetails, OllamaError, OllamaGenerate, OllamaLine, OllamaMessage, OllamaModel, OllamaOptions,
    OllamaPs, OllamaRunning, OllamaShow, OllamaShowRequest, OllamaSpoke, OllamaTags, OllamaUnsupported, OllamaVersion,
};
use super::{check_model, parse, respond, Answer, AppState, Ctx, Kind};
use crate::error::ApiError;
use crate::{Caller, Hub};

/// The engine's sampling parameters from Ollama's options (Ollama's defaults), or 400.
pub(crate) fn params(o: OllamaOptions) -> Result<SamplingParams, ApiError> {
    let d = SamplingParams::default();
    let p = SamplingParams {
        temperature: o.temperature.unwrap_or(DEFAULT_TEMPERATURE),
        top_p: o.top_p.unwrap_or(DEFAULT_TOP_P),
        top_k: o.top_k.unwrap_or(DEFAULT_TOP_K),
        min_p: o.min_p.unwrap_or(0.0),
        seed: o.seed,
        max_tokens: match o.num_predict {
            Some(n) if n > 0 => n as usize,
            _ => d.max_tokens,
        },
        stop: o.stop.unwrap_or_default(),
        repetition_penalty: o.repeat_penalty.unwrap_or(1.0),
        presence_penalty: o.presence_penalty.unwrap_or(0.0),
        frequency_penalty: o.frequency_penalty.unwrap_or(0.0),
        ignore_eos: false,
        ..d
    };
    super::openai::checked(p)
}

/// Ollama's sampling defaults (what `/api/show` reports as the parameters).
const DEFAULT_TEMPERATURE: f32 = 0.8;
const DEFAULT_TOP_P: f32 = 0.9;
const DEFAULT_TOP_K: usize = 40;

/// The 400 for the first field in `u` that Nave does not implement.
fn refuse_unsupported(u: &OllamaUnsupported) -> Result<(), ApiError> {
    match u.first() {
        None => Ok(()),
        Some((field, value)) => {
            let shown: String = value.chars().take(80).collect();
            Err(ApiError::bad_request(format!("{field}: not supported yet (got {shown})")).with_param(field))
        }
    }
}

/// A chat request's sampling parameters, or the 400 naming the field.
pub(crate) fn chat_params(req: &OllamaChat) -> Result<SamplingParams, ApiError> {
    refuse_unsupported(&req.unsupported)?;
    let unsupported = |m: &OllamaMessage| OllamaUnsupported { images: m.images.clone(), ..Default::default() }.first();
    if req.messages.iter().find_map(unsupported).is_some() {
        return Err(ApiError::bad_request("messages.images: not supported yet").with_param("messages.images"));
    }
    let constraint = super::tools::ollama_format(req.format.as_ref())?;
    let tools = super::tools::tools(req.tools.as_deref(), None)?;
    checked(SamplingParams { constraint, tools, ..params(req.options.clone().unwrap_or_default())? })
}

/// A generate request's sampling parameters, or the 400 naming the field.
pub(crate) fn generate_params(req: &OllamaGenerate) -> Result<SamplingParams, ApiError> {
    refuse_unsupported(&req.unsupported)?;
    let constraint = super::tools::ollama_format(req.format.as_ref())?;
    checked(SamplingParams { constraint, ..params(req.options.clone().unwrap_or_default())? })
}

pub async fn chat(
    State(hub): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let h = hub.clone();
    respond(&h, &headers, "/api/chat", |ctx| async move {
        let req: OllamaChat = parse(&body)?;
        let params = chat_params(&req)?;
        let model = check_model(&hub, &req.model)?;
        let messages = req
            .messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let calls = super::tools::calls_in(m.tool_calls.as_deref(), &format!("messages[{i}].tool_calls"))?;
                Ok(super::tools::message(m.role, m.content, calls, None))
            })
            .collect::<Result<Vec<ChatMessage>, ApiError>>()?;
        if messages.is_empty() {
            return Err(ApiError::bad_request("messages must not be empty"));
        }
        let gen = GenerateRequest { request_id: ctx.request_id.clone(), prompt: Prompt::Chat(messages), params };
        run(&hub, &caller, Kind::Chat, &model, gen, &ctx, req.stream.unwrap_or(true)).await
    })
    .await
}

pub async fn generate(
    State(hub): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let h = hub.clone();
    respond(&h, &headers, "/api/generate", |ctx| async move {
        let req: OllamaGenerate = parse(&body)?;
        let params = generate_params(&req)?;
        let model = check_model(&hub, &req.model)?;
        if req.prompt.is_empty() {
            // Ollama's way to load a model: Nave's are loaded while their spokes run.
            let mut body = line(Kind::Text, &model, "", None);
            (body.done, body.done_reason) = (true, Some("load".into()));
            return Ok((model, Json(body).into_response()));
        }
        let prompt = if req.raw.unwrap_or(false) {
            Prompt::Text(req.prompt)
        } else {
            let system = req.system.map(|s| ChatMessage::new("system", s));
            Prompt::Chat(system.into_iter().chain([ChatMessage::new("user", req.prompt)]).collect())
        };
        let gen = GenerateRequest { request_id: ctx.request_id.clone(), prompt, params };
        run(&hub, &caller, Kind::Text, &model, gen, &ctx, req.stream.unwrap_or(true)).await
    })
    .await
}

/// One answer line: text so far, or (with `done`) the last one with the counts.
fn line(kind: Kind, model: &str, text: &str, done: Option<(FinishReason, Usage, Duration)>) -> OllamaLine {
    let text = text.to_string();
    let (message, response) = match kind {
        Kind::Chat => (Some(OllamaMessage::assistant(text)), None),
        Kind::Text => (None, Some(text)),
    };
    OllamaLine {
        model: model.to_string(),
        created_at: rfc3339(now_secs()),
        done: done.is_some(),
        message,
        response,
        // Ollama ends an answer of tool calls with "stop".
        done_reason: done.as_ref().map(|(finish, _, _)| match finish {
            FinishReason::ToolCalls => "stop".to_string(),
            f => f.as_str().to_string(),
        }),
        total_duration: done.as_ref().map(|(_, _, took)| took.as_nanos() as u64),
        prompt_eval_count: done.as_ref().map(|(_, usage, _)| usage.prompt_tokens),
        eval_count: done.as_ref().map(|(_, usage, _)| usage.completion_tokens),
    }
}

/// A line as NDJSON.
fn ndjson<T: serde::Serialize>(v: &T) -> Bytes {
    let mut out = serde_json::to_vec(v).expect("API bodies are plain structs of strings and numbers");
    out.push(b'\n');
    Bytes::from(out)
}

async fn run(
    hub: &Arc<Hub>,
    caller: &Caller,
    kind: Kind,
    model: &str,
    gen: GenerateRequest,
    ctx: &Ctx,
    streamed: bool,
) -> Result<(String, Response), ApiError> {
    let generated = super::generate(hub, caller, model, gen, ctx, ctx.session.as_deref(), streamed).await?;
    let started: Instant = generated.admitted_at;
    let d = match generated.answer {
        Answer::Whole(done) => {
            let usage = done.usage();
            let Some(c) = done.choices.into_iter().next() else {
                return Err(ApiError::new(StatusCode::BAD_GATEWAY, "the spoke answered no choice"));
            };
            let mut body = line(kind, model, &c.text, Some((c.finish, usage, started.elapsed())));
            if let (Some(m), false) = (&mut body.message, c.tool_calls.is_empty()) {
                m.tool_calls = Some(c.tool_calls.iter().map(super::tools::ollama_call_out).collect());
            }
            return Ok((model.to_string(), Json(body).into_response()));
        }
        Answer::Stream(d) => d,
    };
    let model_name = model.to_string();
    let lines = stream::unfold((d, false, generated.held), move |(mut d, done, held)| {
        let model = model_name.clone();
        async move {
            if done {
                return None;
            }
            let (out, end) = match d.next().await {
                // Streams carry no embeddings (those are whole answers); Ollama streams a
                // call once it is complete, not as it is written.
                Some(
                    Event::Prompt { .. }
                    | Event::Embedding { .. }
                    | Event::ToolCallStart { .. }
                    | Event::ToolCallArguments { .. },
                ) => (Bytes::new(), false),
                Some(Event::Delta { text, tokens, .. }) => {
                    held.admission.record(tokens.len());
                    (ndjson(&line(kind, &model, &text, None)), false)
                }
                Some(Event::ToolCall { call, .. }) => {
                    let mut l = line(kind, &model, "", None);
                    if let Some(m) = &mut l.message {
                        m.tool_calls = Some(vec![super::tools::ollama_call_out(&call)]);
                    }
                    (ndjson(&l), false)
                }
                Some(Event::Done { finish, usage, .. }) => {
                    held.admission.record_prompt(usage.prompt_tokens);
                    (ndjson(&line(kind, &model, "", Some((finish, usage, started.elapsed())))), true)
                }
                Some(Event::Error { message, .. }) => (ndjson(&OllamaError { error: message }), true),
                None => (ndjson(&OllamaError { error: "the spoke ended the stream early".into() }), true),
            };
            Some((Ok::<_, Infallible>(out), (d, end, held)))
        }
    });
    let resp = Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(lines))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((model.to_string(), resp))
}

/// `GET /api/tags`: the served models, with what the store knows of them.
pub async fn tags(State(hub): State<AppState>) -> Json<OllamaTags> {
    let store = nave_inference::store::ModelStore::from_env();
    let models = hub
        .models()
        .iter()
        .map(|m| {
            let spec = nave_inference::store::spec(m).ok();
            OllamaModel {
                name: m.clone(),
                model: m.clone(),
                modified_at: rfc3339(now_secs()),
                size: spec.map_or(0, |s| s.size),
                digest: spec.map_or("", |s| s.sha256).to_string(),
                details: OllamaDetails {
                    format: "gguf".into(),
                    family: m.split('-').next().unwrap_or(m).to_string(),
                    ..Default::default()
                },
                path: store.path_of(m),
            }
        })
        .collect();
    Json(OllamaTags { models })
}

pub async fn version() -> Json<OllamaVersion> {
    Json(OllamaVersion { version: env!("CARGO_PKG_VERSION").into() })
}

/// The GGUF file of served model `name` as this hub knows it: the path a spoke of the
/// config names, else the hub's model store (where `nave up` and `nave model pull` put
/// packaged models).
fn model_file(hub: &Hub, name: &str) -> Option<std::path::PathBuf> {
    let from_config = hub
        .config
        .spokes
        .iter()
        .flat_map(|s| &s.models)
        .find(|m| m.ends_with(".gguf") && nave_consensus::config::model_name(m) == name)
        .map(std::path::PathBuf::from);
    from_config.or_else(|| nave_inference::store::ModelStore::from_env().find(name).ok().flatten())
}

/// llama.cpp's `general.file_type` numbers, by name.
fn file_type(t: u64) -> &'static str {
    match t {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        _ => "unknown",
    }
}

/// "135M", "1.2B": a parameter count as Ollama writes it.
fn parameter_size(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{}M", (n as f64 / 1e6).round()),
        n => format!("{}K", (n as f64 / 1e3).round()),
    }
}

/// What a model's GGUF header says: the details, the metadata (long arrays null unless
/// `verbose`), the chat template. Reads the header only (no weights).
fn describe(
    path: &std::path::Path,
    verbose: bool,
) -> Result<(OllamaDetails, serde_json::Map<String, serde_json::Value>, String), ApiError> {
    let gguf = nave_inference::gguf::GgufFile::open(path)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut info = gguf.metadata_json(if verbose { usize::MAX } else { 16 });
    let template =
        info.remove("tokenizer.chat_template").and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let text = |k: &str| info.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let family = text("general.architecture").unwrap_or_default();
    let details = OllamaDetails {
        parent_model: String::new(),
        format: "gguf".into(),
        families: vec![family.clone()],
        family,
        parameter_size: text("general.size_label").unwrap_or_else(|| parameter_size(gguf.parameter_count())),
        quantization_level: info.get("general.file_type").and_then(|v| v.as_u64()).map_or("unknown", file_type).into(),
    };
    info.insert("general.parameter_count".into(), gguf.parameter_count().into());
    Ok((details, info, template))
}

/// `POST /api/show`: the model's template, the sampling defaults, and what its GGUF says
/// of itself (`model_info`, `details`).
pub async fn show(State(hub): State<AppState>, body: Bytes) -> Result<Json<OllamaShow>, ApiError> {
    let req: OllamaShowRequest = parse(&body)?;
    let name = req.model.or(req.name).ok_or_else(|| ApiError::bad_request("model: required").with_param("model"))?;
    let model = check_model(&hub, &name)?;
    let base = nave_spoke::protocol::split_model(&model).0.to_string();
    let path = model_file(&hub, &base).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, format!("model {model:?} is served, but its file is not on this hub"))
    })?;
    let verbose = req.verbose.unwrap_or(false);
    let (details, model_info, template) = tokio::task::spawn_blocking(move || describe(&path, verbose))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let parameters = format!("temperature {DEFAULT_TEMPERATURE}\ntop_k {DEFAULT_TOP_K}\ntop_p {DEFAULT_TOP_P}");
    let mut capabilities = vec!["completion".to_string()];
    if !template.is_empty() {
        capabilities.push("chat".into());
    }
    Ok(Json(OllamaShow {
        modelfile: format!(
            "# Served by Nave\nFROM {model}\n{}",
            parameters.lines().map(|l| format!("PARAMETER {l}\n")).collect::<String>()
        ),
        parameters,
        template,
        details,
        model_info,
        capabilities,
        modified_at: rfc3339(now_secs()),
    }))
}

/// `GET /api/ps`: every served model with its size and the spokes that run it (their
/// state, load and memory, from their heartbeats).
pub async fn ps(State(hub): State<AppState>) -> Result<Json<OllamaPs>, ApiError> {
    let views = hub.spokes.views();
    let mut models = Vec::new();
    for name in hub.models() {
        let path = model_file(&hub, &name);
        let size = path.as_ref().and_then(|p| std::fs::metadata(p).ok()).map_or(0, |m| m.len());
        let described = match path {
            Some(p) => tokio::task::spawn_blocking(move || describe(&p, false).ok()).await.ok().flatten(),
            None => None,
        };
        let context_length = described
            .as_ref()
            .and_then(|(d, info, _)| info.get(&format!("{}.context_length", d.family)).and_then(|v| v.as_u64()));
        let spokes = views
            .iter()
            .filter(|v| v.models.contains(&name))
            .map(|v| OllamaSpoke {
                id: v.id.clone(),
                state: v.state.into(),
                running: v.running,
                queue: v.queue,
                serving_used: v.serving_used,
                serving_total: v.serving_total,
                kv_blocks_free: v.kv_blocks_free,
                kv_blocks_total: v.kv_blocks_total,
            })
            .collect();
        models.push(OllamaRunning {
            model: name.clone(),
            size,
            digest: nave_inference::store::spec(&name).map(|s| s.sha256.to_string()).unwrap_or_default(),
            details: described.map(|(d, _, _)| d).unwrap_or_default(),
            expires_at: "0001-01-01T00:00:00Z".into(),
            size_vram: 0,
            context_length,
            spokes,
            name,
        });
    }
    Ok(Json(OllamaPs { models }))
}

/// `POST /api/pull` (admins only): fetches a model of the catalog into this hub's model
/// store (where `/api/show` and spokes started on this machine find it), streaming
/// Ollama's progress lines (`pulling manifest`, `downloading` with `completed` of
/// `total` bytes, `verifying sha256 digest`, `success`) unless `stream: false`. A model
/// already in the store answers `success` at once. Spokes elsewhere pull at their join.
pub async fn pull(Extension(caller): Extension<Caller>, body: Bytes) -> Result<Response, ApiError> {
    let req: serde_json::Value = parse(&body)?;
    if !matches!(caller, Caller::Admin) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "pulling a model needs the admin key"));
    }
    let name = req
        .get("model")
        .or_else(|| req.get("name"))
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| ApiError::bad_request("model: required").with_param("model"))?
        .trim_end_matches(":latest")
        .to_string();
    let spec = nave_inference::store::spec(&name).map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))?;
    let streamed = req.get("stream").and_then(serde_json::Value::as_bool).unwrap_or(true);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    let digest = format!("sha256:{}", spec.sha256);
    let work = tokio::task::spawn_blocking(move || {
        let _ = tx.send(serde_json::json!({"status": "pulling manifest"}));
        let mut last = 0u64;
        let result = nave_inference::store::ModelStore::from_env().ensure(&name, &mut |p| {
            use nave_inference::store::Progress;
            let line = match p {
                Progress::Downloading { package, index, count } => {
                    serde_json::json!({"status": format!("downloading {package} ({} of {count})", index + 1)})
                }
                // One line per 1% (or the end), not per chunk.
                Progress::Writing { done, total } if done == total || done >= last + total / 100 => {
                    last = done;
                    serde_json::json!({"status": "downloading", "digest": digest, "total": total, "completed": done})
                }
                Progress::Writing { .. } => return,
                Progress::Verified { .. } => serde_json::json!({"status": "verifying sha256 digest"}),
            };
            let _ = tx.send(line);
        });
        let _ = tx.send(match result {
            Ok(_) => serde_json::json!({"status": "success"}),
            Err(e) => serde_json::json!({"error": e.to_string()}),
        });
    });
    if !streamed {
        let mut rx = rx;
        let mut last = serde_json::json!({});
        while let Some(line) = rx.recv().await {
            last = line;
        }
        let _ = work.await;
        let status = if last.get("error").is_some() { StatusCode::BAD_GATEWAY } else { StatusCode::OK };
        return Ok((status, Json(last)).into_response());
    }
    let lines = tokio_stream_lines(rx);
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(lines))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// NDJSON lines from a channel, until its sender is dropped.
fn tokio_stream_lines(
    rx: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> {
    stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|line| (Ok(ndjson(&line)), rx)) })
}
