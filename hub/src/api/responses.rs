//! The Responses API: `POST /v1/responses` (with `store` and `previous_response_id`) and
//! `GET /v1/responses/{id}`. A conversation lives in the replicated state, so a follow-up
//! on any hub continues it.

use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use nave_consensus::clock::now_secs;
use nave_consensus::state::{Command, StoredResponse, Turn};
use nave_inference::{ChatMessage, GenerateRequest, Prompt, SamplingParams};

use super::types::{
    CachedTokens, Content, OutputMessage, OutputText, ReasoningTokens, ResponseObject, ResponseUsage, ResponsesInput,
    ResponsesRequest, Sampling,
};
use super::{check_model, generate, parse, respond, Answer, AppState};
use crate::error::ApiError;
use crate::Caller;

/// The sampling parameters of a Responses request (OpenAI's defaults for the rest).
pub(crate) fn params(r: &ResponsesRequest) -> Result<SamplingParams, ApiError> {
    super::openai::params(Sampling {
        max_tokens: r.max_output_tokens,
        temperature: r.temperature,
        top_p: r.top_p,
        seed: r.seed,
        ..Default::default()
    })
}

fn response_json(r: &StoredResponse, status: &str) -> ResponseObject {
    let text = OutputText { kind: "output_text".into(), text: r.output.clone(), annotations: vec![] };
    let message = OutputMessage {
        kind: "message".into(),
        id: format!("msg_{}", r.id.trim_start_matches("resp_")),
        status: "completed".into(),
        role: "assistant".into(),
        content: vec![text],
    };
    ResponseObject {
        id: r.id.clone(),
        object: "response".into(),
        created_at: r.created_ms / 1000,
        status: status.into(),
        model: r.model.clone(),
        previous_response_id: r.previous.clone(),
        error: None,
        incomplete_details: None,
        output: vec![message],
        usage: ResponseUsage {
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            total_tokens: r.input_tokens + r.output_tokens,
            input_tokens_details: CachedTokens { cached_tokens: 0 },
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
        let model = check_model(&hub, &req.model)?;
        if req.stream {
            return Err(ApiError::bad_request(
                "streaming is not supported on /v1/responses yet; use /v1/chat/completions",
            )
            .with_param("stream"));
        }
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
        let params = params(&req)?;
        // Follow-ups of one conversation prefer one spoke (its prefix cache holds it).
        let session = history.first().map(|r| r.id.clone()).or_else(|| ctx.session.clone());
        let gen = GenerateRequest { request_id: ctx.request_id.clone(), prompt: Prompt::Chat(messages), params };
        // Held (the slot and the admission) until the response is stored.
        let generated = generate(&hub, &caller, &model, gen, &ctx, session.as_deref(), false).await?;
        let (text, usage) = match generated.answer {
            Answer::Whole(done) => {
                let usage = done.usage();
                (done.choices.into_iter().next().map(|c| c.text).unwrap_or_default(), usage)
            }
            Answer::Stream(_) => {
                return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "a whole answer was asked for"))
            }
        };
        let stored = StoredResponse {
            id: format!("resp_{}{}", nave_consensus::ids::random_id(), nave_consensus::ids::random_id()),
            owner,
            model: model.clone(),
            previous: req.previous_response_id.clone(),
            created_ms: now_secs() * 1000,
            input: input.into_iter().map(|m| Turn { role: m.role, content: m.content }).collect(),
            output: text,
            input_tokens: usage.prompt_tokens as u64,
            output_tokens: usage.completion_tokens as u64,
            spoke: String::new(),
        };
        if req.store {
            // Written before the answer goes out: a follow-up on any hub finds it.
            hub.consensus.write(Command::StoreResponse(Box::new(stored.clone()))).await?;
        }
        drop(generated.held);
        Ok((model, Json(response_json(&stored, "completed")).into_response()))
    })
    .await
}

/// `GET /v1/responses/{id}`: a stored response, to the key that created it only.
pub async fn get(
    State(hub): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(rid): Path<String>,
) -> Result<Json<ResponseObject>, ApiError> {
    let owner = caller.owner();
    match hub.consensus.read(|a| a.state.response(&rid, &owner).cloned()).await? {
        Some(r) => Ok(Json(response_json(&r, "completed"))),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, format!("response {rid:?} not found"))),
    }
}
