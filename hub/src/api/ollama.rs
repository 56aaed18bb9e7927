//! The Ollama API: `POST /api/chat`, `POST /api/generate` (whole, or NDJSON lines),
//! `GET /api/tags`, `GET /api/version`.

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
use serde_json::{json, Value};

use super::types::{OllamaChat, OllamaGenerate, OllamaOptions};
use super::{check_model, parse, respond, Answer, AppState, Ctx, Kind};
use crate::error::ApiError;
use crate::{Caller, Hub};

/// The engine's sampling parameters from Ollama's options (Ollama's defaults), or 400.
pub(crate) fn params(o: OllamaOptions) -> Result<SamplingParams, ApiError> {
    let d = SamplingParams::default();
    let p = SamplingParams {
        temperature: o.temperature.unwrap_or(0.8),
        top_p: o.top_p.unwrap_or(0.9),
        top_k: o.top_k.unwrap_or(40),
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
    };
    p.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(p)
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
        let model = check_model(&hub, &req.model)?;
        let messages = req.messages.into_iter().map(|m| ChatMessage::new(m.role, m.content)).collect::<Vec<_>>();
        if messages.is_empty() {
            return Err(ApiError::bad_request("messages must not be empty"));
        }
        let gen = GenerateRequest {
            request_id: ctx.request_id.clone(),
            prompt: Prompt::Chat(messages),
            params: params(req.options.unwrap_or_default())?,
        };
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
            params: params(req.options.unwrap_or_default())?,
        };
        run(&hub, &caller, Kind::Text, &model, gen, &ctx, req.stream.unwrap_or(true)).await
    })
    .await
}

/// One answer line: text so far, or (with `done`) the last one with the counts.
fn line(kind: Kind, model: &str, text: &str, done: Option<(FinishReason, Usage, Duration)>) -> Value {
    let mut v = json!({"model": model, "created_at": rfc3339(now_secs()), "done": done.is_some()});
    match kind {
        Kind::Chat => v["message"] = json!({"role": "assistant", "content": text}),
        Kind::Text => v["response"] = json!(text),
    }
    if let Some((finish, usage, took)) = done {
        v["done_reason"] = json!(finish.as_str());
        v["total_duration"] = json!(took.as_nanos() as u64);
        v["prompt_eval_count"] = json!(usage.prompt_tokens);
        v["eval_count"] = json!(usage.completion_tokens);
    }
    v
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
        Answer::Whole { text, finish, usage } => {
            let body = line(kind, model, &text, Some((finish, usage, started.elapsed())));
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
                Some(Event::Delta { text, tokens }) => {
                    held.admission.record(tokens.len());
                    (line(kind, &model, &text, None), false)
                }
                Some(Event::Done { finish, usage }) => {
                    (line(kind, &model, "", Some((finish, usage, started.elapsed()))), true)
                }
                Some(Event::Error { message, .. }) => (json!({"error": message}), true),
                None => (json!({"error": "the spoke ended the stream early"}), true),
            };
            Some((Ok::<_, Infallible>(Bytes::from(format!("{out}\n"))), (d, end, held)))
        }
    });
    let resp = Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(lines))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((model.to_string(), resp))
}

/// `GET /api/tags`: the served models, with what the store knows of them.
pub async fn tags(State(hub): State<AppState>) -> Json<Value> {
    let store = nave_inference::store::ModelStore::from_env();
    let models: Vec<Value> = hub
        .models()
        .iter()
        .map(|m| {
            let spec = nave_inference::store::spec(m).ok();
            json!({"name": m, "model": m, "modified_at": rfc3339(now_secs()), "size": spec.map(|s| s.size).unwrap_or(0),
                   "digest": spec.map(|s| s.sha256).unwrap_or(""), "details": {"format": "gguf", "family": m.split('-').next().unwrap_or(m)},
                   "path": store.path_of(m)})
        })
        .collect();
    Json(json!({"models": models}))
}

pub async fn version() -> Json<Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION")}))
}
