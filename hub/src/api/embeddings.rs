//! Embeddings: OpenAI's `POST /v1/embeddings` and Ollama's `POST /api/embed`. Each input
//! is one engine request (`SamplingParams::embed`), admitted and counted against the key
//! like any other (its prompt tokens), run on a spoke that serves the model, batched there
//! with everything else. Vectors are pooled as the model's metadata says and normalized.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, StreamExt, TryStreamExt};
use nave_inference::{GenerateRequest, Prompt, SamplingParams};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{check_model, generate, parse, respond, Answer, AppState, Ctx};
use crate::error::ApiError;
use crate::{Caller, Hub};

/// The most inputs one request may embed.
pub const MAX_INPUTS: usize = 256;
/// Inputs of one request embedded at once (each is its own admission and engine request).
const CONCURRENT: usize = 8;

#[derive(Debug, Deserialize)]
struct EmbeddingsRequest {
    model: String,
    input: Value,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct OllamaEmbedRequest {
    model: String,
    #[serde(default)]
    input: Value,
    #[serde(default)]
    dimensions: Option<usize>,
}

#[derive(Debug, Serialize)]
struct OllamaEmbedResponse {
    model: String,
    embeddings: Vec<Vec<f32>>,
    total_duration: u64,
    prompt_eval_count: usize,
}

/// The inputs: a string, an array of strings, an array of token ids, or an array of such
/// arrays.
fn inputs(v: &Value) -> Result<Vec<Prompt>, ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("input: {why}")).with_param("input");
    let tokens = |a: &[Value]| -> Option<Vec<u32>> {
        a.iter().map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok())).collect()
    };
    let all = match v {
        Value::String(s) => vec![Prompt::Text(s.clone())],
        Value::Array(a) if a.is_empty() => return Err(bad("must not be empty")),
        Value::Array(a) if a.iter().all(Value::is_string) => {
            a.iter().map(|s| Prompt::Text(s.as_str().unwrap_or_default().to_string())).collect()
        }
        Value::Array(a) if a.iter().all(Value::is_number) => {
            vec![Prompt::Tokens(tokens(a).ok_or_else(|| bad("token ids are whole numbers below 2^32"))?)]
        }
        Value::Array(a) if a.iter().all(Value::is_array) => a
            .iter()
            .map(|x| {
                let ids = tokens(x.as_array().map(Vec::as_slice).unwrap_or_default());
                ids.map(Prompt::Tokens).ok_or_else(|| bad("token ids are whole numbers below 2^32"))
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(bad("a string, an array of strings, or token ids")),
    };
    if all.len() > MAX_INPUTS {
        return Err(bad(&format!("at most {MAX_INPUTS} inputs")));
    }
    if all
        .iter()
        .any(|p| matches!(p, Prompt::Text(s) if s.is_empty()) || matches!(p, Prompt::Tokens(t) if t.is_empty()))
    {
        return Err(bad("an input is empty"));
    }
    Ok(all)
}

/// Embeds every input (a few at once), in order: the vectors (cut to `dimensions` and
/// normalized again, where asked) and the prompt tokens counted.
async fn embed_all(
    hub: &Arc<Hub>,
    caller: &Caller,
    model: &str,
    prompts: Vec<Prompt>,
    dimensions: Option<usize>,
    ctx: &Ctx,
) -> Result<(Vec<Vec<f32>>, usize), ApiError> {
    if dimensions == Some(0) {
        return Err(ApiError::bad_request("dimensions: must be at least 1").with_param("dimensions"));
    }
    let results: Vec<(Vec<f32>, usize)> = stream::iter(prompts.into_iter().enumerate())
        .map(|(i, prompt)| async move {
            let params = SamplingParams { embed: true, max_tokens: 1, ..Default::default() };
            let gen = GenerateRequest { request_id: format!("{}-{i}", ctx.request_id), prompt, params };
            let generated = generate(hub, caller, model, gen, ctx, None, false).await?;
            let Answer::Whole(done) = generated.answer else {
                return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "an embedding was streamed"));
            };
            let usage = done.usage();
            let vector = done.choices.into_iter().next().and_then(|c| c.embedding).ok_or_else(|| {
                ApiError::new(StatusCode::BAD_GATEWAY, "the spoke answered no embedding (is it an older version?)")
            })?;
            Ok((vector, usage.prompt_tokens))
        })
        .buffered(CONCURRENT)
        .try_collect()
        .await?;
    let tokens = results.iter().map(|(_, t)| t).sum();
    let vectors = results
        .into_iter()
        .map(|(v, _)| match dimensions {
            Some(d) if d > v.len() => Err(ApiError::bad_request(format!(
                "dimensions: {model} gives {} dimensions; at most that many",
                v.len()
            ))
            .with_param("dimensions")),
            Some(d) if d < v.len() => {
                let cut = &v[..d];
                let norm = cut.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                Ok(cut.iter().map(|x| x / norm).collect())
            }
            _ => Ok(v),
        })
        .collect::<Result<_, _>>()?;
    Ok((vectors, tokens))
}

/// `POST /v1/embeddings`.
pub async fn openai(
    State(hub): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let h = hub.clone();
    respond(&h, &headers, "/v1/embeddings", |ctx| async move {
        let req: EmbeddingsRequest = parse(&body)?;
        let base64 = match req.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!("encoding_format: {other:?} is not \"float\" or \"base64\""))
                    .with_param("encoding_format"))
            }
        };
        let prompts = inputs(&req.input)?;
        let model = check_model(&hub, &req.model)?;
        let (vectors, tokens) = embed_all(&hub, &caller, &model, prompts, req.dimensions, &ctx).await?;
        let data: Vec<Value> = vectors
            .iter()
            .enumerate()
            .map(|(index, v)| {
                let embedding = if base64 { json!(encode_base64(v)) } else { json!(v) };
                json!({"object": "embedding", "index": index, "embedding": embedding})
            })
            .collect();
        let body = json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        });
        Ok((model, Json(body).into_response()))
    })
    .await
}

/// `POST /api/embed` (Ollama).
pub async fn ollama(
    State(hub): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let h = hub.clone();
    respond(&h, &headers, "/api/embed", |ctx| async move {
        let started = Instant::now();
        let req: OllamaEmbedRequest = parse(&body)?;
        let prompts = inputs(&req.input)?;
        let model = check_model(&hub, &req.model)?;
        let (embeddings, tokens) = embed_all(&hub, &caller, &model, prompts, req.dimensions, &ctx).await?;
        let body = OllamaEmbedResponse {
            model: model.clone(),
            embeddings,
            total_duration: started.elapsed().as_nanos() as u64,
            prompt_eval_count: tokens,
        };
        Ok((model, Json(body).into_response()))
    })
    .await
}

/// The vector's little-endian f32 bytes in base64 (what OpenAI's `encoding_format:
/// "base64"` sends).
fn encode_base64(v: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_encoding() {
        // 1.0f32 is 00 00 80 3f.
        assert_eq!(encode_base64(&[1.0]), "AACAPw==");
        assert_eq!(encode_base64(&[1.0, -2.0]), "AACAPwAAAMA=");
        assert_eq!(encode_base64(&[]), "");
    }

    #[test]
    fn inputs_take_strings_lists_and_token_ids() {
        assert_eq!(inputs(&json!("a")).map(|v| v.len()).ok(), Some(1));
        assert_eq!(inputs(&json!(["a", "b"])).map(|v| v.len()).ok(), Some(2));
        assert_eq!(inputs(&json!([1, 2, 3])).map(|v| v.len()).ok(), Some(1));
        assert_eq!(inputs(&json!([[1], [2, 3]])).map(|v| v.len()).ok(), Some(2));
        for bad in [json!([]), json!(""), json!(["a", 1]), json!(5), json!([-1]), json!(vec!["x"; MAX_INPUTS + 1])] {
            assert!(inputs(&bad).is_err(), "{bad}");
        }
    }
}
