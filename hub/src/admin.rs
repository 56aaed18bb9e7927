//! The admin API's key management (`/admin/v1/keys`): keys are created, listed and
//! revoked through the replicated state, so every hub knows them at once. A key is shown
//! once, at creation; the state holds only its SHA-256 digest.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nave_consensus::state::{Command, CommandResult, Limits};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::{no_quorum, random_hex, Hub};

#[derive(Deserialize)]
struct NewKey {
    name: String,
    #[serde(default)]
    rpm: Option<u32>,
    #[serde(default)]
    tpm: Option<u64>,
    #[serde(default)]
    daily_tokens: Option<u64>,
}

pub async fn create_key(State(hub): State<Arc<Hub>>, body: Bytes) -> Response {
    let req: NewKey = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return ApiError::bad_request(format!("invalid key request: {e}")).into_response(),
    };
    let valid = !req.name.is_empty() && req.name.len() <= 64 && req.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !valid {
        return ApiError::bad_request("name: use 1-64 letters, digits, '-', '_' or '.'").with_param("name").into_response();
    }
    let key = match random_hex(24) {
        Ok(h) => format!("nave-{h}"),
        Err(e) => return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    let limits = Limits { rpm: req.rpm, tpm: req.tpm, daily_tokens: req.daily_tokens };
    match hub.consensus.write(Command::CreateKey { name: req.name.clone(), digest, limits: limits.clone() }).await {
        Ok(CommandResult::Done) => (StatusCode::CREATED, Json(json!({"name": req.name, "key": key, "limits": limits}))).into_response(),
        Ok(CommandResult::Invalid(m)) => ApiError::new(StatusCode::CONFLICT, m).into_response(),
        Ok(other) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{other:?}")).into_response(),
        Err(e) => no_quorum(e).into_response(),
    }
}

pub async fn list_keys(State(hub): State<Arc<Hub>>) -> Response {
    let keys = hub
        .consensus
        .read(|a| {
            a.state
                .keys
                .values()
                .map(|k| {
                    json!({"name": k.name, "limits": k.limits, "revoked": k.revoked, "created_ms": k.created_ms,
                           "tokens_today": k.day_used, "reserved": k.reserved, "total_tokens": k.total_tokens, "total_requests": k.total_requests})
                })
                .collect::<Vec<_>>()
        })
        .await;
    match keys {
        Ok(k) => Json(json!({"keys": k})).into_response(),
        Err(e) => no_quorum(e).into_response(),
    }
}

pub async fn revoke_key(State(hub): State<Arc<Hub>>, Path(name): Path<String>) -> Response {
    match hub.consensus.write(Command::RevokeKey { name: name.clone() }).await {
        Ok(CommandResult::Done) => Json(json!({"name": name, "revoked": true})).into_response(),
        Ok(CommandResult::NotFound(m)) => ApiError::new(StatusCode::NOT_FOUND, m).into_response(),
        Ok(other) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{other:?}")).into_response(),
        Err(e) => no_quorum(e).into_response(),
    }
}

#[derive(Deserialize, Default)]
struct DrainRequest {
    #[serde(default)]
    undo: bool,
}

/// `POST /admin/v1/spokes/{id}/drain` (`{"undo": true}` resumes): no new requests go to
/// the spoke, running ones finish; its state turns "drained" when nothing is left.
pub async fn drain_spoke(State(hub): State<Arc<Hub>>, Path(id): Path<String>, body: Bytes) -> Response {
    let req: DrainRequest = if body.is_empty() {
        DrainRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return ApiError::bad_request(format!("invalid drain request: {e}")).into_response(),
        }
    };
    match hub.spokes.drain(&id, !req.undo).await {
        Ok(hb) => {
            let _ = hub.consensus.write(Command::Audit { what: format!("spoke {id} drain={}", !req.undo) }).await;
            let busy: usize = hb.models.iter().map(|m| m.stats.running + m.stats.waiting).sum();
            Json(json!({"spoke": id, "draining": hb.draining, "in_flight": busy})).into_response()
        }
        Err(e) if !hub.config.spokes.iter().any(|s| s.id == id) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()).into_response(),
        Err(e) => ApiError::unavailable(e.to_string()).into_response(),
    }
}
