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

use super::types::{
    OllamaChat, OllamaDetails, OllamaError, OllamaGenerate, OllamaLine, OllamaMessage, OllamaModel, OllamaOptions,
    OllamaTags, OllamaVersion,
};
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
        ..d
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
fn line(kind: Kind, model: &str, text: &str, done: Option<(FinishReason, Usage, Duration)>) -> OllamaLine {
    let text = text.to_string();
    let (message, response) = match kind {
        Kind::Chat => (Some(OllamaMessage { role: "assistant".into(), content: text }), None),
        Kind::Text => (None, Some(text)),
    };
    OllamaLine {
        model: model.to_string(),
        created_at: rfc3339(now_secs()),
        done: done.is_some(),
        message,
        response,
        done_reason: done.as_ref().map(|(finish, _, _)| finish.as_str().to_string()),
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
            let body = line(kind, model, &c.text, Some((c.finish, usage, started.elapsed())));
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
                Some(Event::Prompt { .. }) => (Bytes::new(), false),
                Some(Event::Delta { text, tokens, .. }) => {
                    held.admission.record(tokens.len());
                    (ndjson(&line(kind, &model, &text, None)), false)
                }
                Some(Event::Done { finish, usage, .. }) => {
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
                details: OllamaDetails { format: "gguf".into(), family: m.split('-').next().unwrap_or(m).to_string() },
                path: store.path_of(m),
            }
        })
        .collect();
    Json(OllamaTags { models })
}

pub async fn version() -> Json<OllamaVersion> {
    Json(OllamaVersion { version: env!("CARGO_PKG_VERSION").into() })
}
