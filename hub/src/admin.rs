//! The admin API: API keys (`/admin/v1/keys`), join tokens (`/admin/v1/tokens`),
//! spokes (drain, removal) and hubs (`/admin/v1/hubs`: add, remove). Keys and tokens live
//! in the replicated state, so every hub knows them at once; each is shown once, at
//! creation, and the state holds only its SHA-256 digest. The voting hubs are the Raft
//! membership.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nave_consensus::node::HubChange;
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
    let valid = !req.name.is_empty()
        && req.name.len() <= 64
        && req.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !valid {
        return ApiError::bad_request("name: use 1-64 letters, digits, '-', '_' or '.'")
            .with_param("name")
            .into_response();
    }
    let key = match random_hex(24) {
        Ok(h) => format!("nave-{h}"),
        Err(e) => return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    let limits = Limits { rpm: req.rpm, tpm: req.tpm, daily_tokens: req.daily_tokens };
    match hub.consensus.write(Command::CreateKey { name: req.name.clone(), digest, limits: limits.clone() }).await {
        Ok(CommandResult::Done) => {
            (StatusCode::CREATED, Json(json!({"name": req.name, "key": key, "limits": limits}))).into_response()
        }
        Ok(CommandResult::Invalid(m)) => ApiError::new(StatusCode::CONFLICT, m).into_response(),
        Ok(other) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{other:?}")).into_response(),
        Err(e) => no_quorum(e).into_response(),
    }
}

fn key_json(k: &nave_consensus::state::ApiKey) -> serde_json::Value {
    json!({"name": k.name, "limits": k.limits, "revoked": k.revoked, "created_ms": k.created_ms,
           "tokens_today": k.day_used, "reserved": k.reserved, "total_tokens": k.total_tokens, "total_requests": k.total_requests})
}

pub async fn list_keys(State(hub): State<Arc<Hub>>) -> Response {
    match hub.consensus.read(|a| a.state.keys.values().map(key_json).collect::<Vec<_>>()).await {
        Ok(k) => Json(json!({"keys": k})).into_response(),
        Err(e) => no_quorum(e).into_response(),
    }
}

/// `GET /admin/v1/keys/{name}`: one key, as of every write acknowledged before the call.
pub async fn get_key(State(hub): State<Arc<Hub>>, Path(name): Path<String>) -> Response {
    match hub.consensus.read(|a| a.state.key_by_name(&name).map(key_json)).await {
        Ok(Some(k)) => Json(k).into_response(),
        Ok(None) => ApiError::new(StatusCode::NOT_FOUND, format!("no key named {name:?}")).into_response(),
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
        Err(e) if !hub.spokes.views().iter().any(|s| s.id == id) => {
            ApiError::new(StatusCode::NOT_FOUND, e.to_string()).into_response()
        }
        Err(e) => ApiError::unavailable(e.to_string()).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    #[serde(default = "default_ttl")]
    ttl_s: u64,
    #[serde(default = "default_uses")]
    uses: u32,
}

fn default_ttl() -> u64 {
    3600
}

fn default_uses() -> u32 {
    1
}

/// `POST /admin/v1/tokens` (`{"ttl_s": 3600, "uses": 1}`): a join token for new spokes.
/// It is shown once; the state keeps the digest of its secret.
pub async fn create_token(State(hub): State<Arc<Hub>>, body: Bytes) -> Response {
    let req: NewToken = if body.is_empty() {
        NewToken { ttl_s: default_ttl(), uses: default_uses() }
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return ApiError::bad_request(format!("invalid token request: {e}")).into_response(),
        }
    };
    if !(1..=30 * 86_400).contains(&req.ttl_s) {
        return ApiError::bad_request("ttl_s: from 1 s to 30 days").with_param("ttl_s").into_response();
    }
    if !(1..=1000).contains(&req.uses) {
        return ApiError::bad_request("uses: from 1 to 1000").with_param("uses").into_response();
    }
    let (secret, fingerprint) = match (random_hex(16), hub.ca.fingerprint()) {
        (Ok(s), Ok(f)) => (s, f),
        (Err(e), _) => return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        (_, Err(e)) => return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let token = nave_spoke::protocol::JoinToken { secret, ca_fingerprint: fingerprint };
    let digest = nave_spoke::protocol::JoinToken::digest(&token.secret);
    match hub.consensus.write(Command::CreateJoinToken { digest, ttl_ms: req.ttl_s * 1000, uses: req.uses }).await {
        Ok(CommandResult::Done) => {
            let quic = hub.config.hub(&hub.id).map(|h| h.quic.to_string()).unwrap_or_default();
            let join = format!("nave spoke --join {quic} --token {token} --id NEW_ID --quic IP:PORT --http IP:PORT");
            (StatusCode::CREATED, Json(json!({"token": token.to_string(), "ttl_s": req.ttl_s, "uses": req.uses, "hub_quic": quic, "join": join}))).into_response()
        }
        Ok(other) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{other:?}")).into_response(),
        Err(e) => no_quorum(e).into_response(),
    }
}

/// `DELETE /admin/v1/spokes/{id}`: forgets a spoke that joined with a token (hubs stop
/// dialling it; drain it first to let its requests finish). Config spokes stay.
pub async fn remove_spoke(State(hub): State<Arc<Hub>>, Path(id): Path<String>) -> Response {
    if hub.config.spokes.iter().any(|s| s.id == id) {
        return ApiError::new(StatusCode::CONFLICT, format!("spoke {id} is listed in cluster.toml: remove it there"))
            .into_response();
    }
    match hub.consensus.write(Command::RemoveSpoke { id: id.clone() }).await {
        Ok(CommandResult::Done) => Json(json!({"spoke": id, "removed": true})).into_response(),
        Ok(CommandResult::NotFound(m)) => ApiError::new(StatusCode::NOT_FOUND, m).into_response(),
        Ok(other) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{other:?}")).into_response(),
        Err(e) => no_quorum(e).into_response(),
    }
}

/// `GET /admin/v1/hubs`: the voting hubs (from the Raft membership) and the leader.
pub async fn list_hubs(State(hub): State<Arc<Hub>>) -> Response {
    let leader = hub.consensus.figures().leader;
    let hubs: Vec<_> = hub
        .consensus
        .hubs()
        .into_iter()
        .map(|(rid, name, quic)| json!({"id": name, "raft_id": rid, "quic": quic, "leader": Some(rid) == leader}))
        .collect();
    Json(json!({"hubs": hubs})).into_response()
}

#[derive(Deserialize)]
struct NewHub {
    id: String,
    /// Its QUIC address; optional for a hub this hub's cluster.toml lists.
    #[serde(default)]
    quic: Option<std::net::SocketAddr>,
}

/// `POST /admin/v1/hubs` `{"id": "h4", "quic": "10.0.0.4:7001"}`: makes a running hub (one
/// started with `join = true` in its cluster.toml) a voter. It joins as a learner first
/// and votes once it has caught up; the answer comes then (or after 30 s, an error).
pub async fn add_hub(State(hub): State<Arc<Hub>>, body: Bytes) -> Response {
    let req: NewHub = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return ApiError::bad_request(format!("invalid hub request: {e}")).into_response(),
    };
    let listed = hub.config.hubs.iter().find(|h| h.id == req.id);
    let Some(quic) = req.quic.or(listed.map(|h| h.quic)) else {
        return ApiError::bad_request(format!(
            "hub {} is not in this hub's cluster.toml: give its \"quic\" address",
            req.id
        ))
        .with_param("quic")
        .into_response();
    };
    // A founding hub keeps its id (1, 2, 3...) when it comes back; an added one's comes
    // from its name, as the hub itself computes it.
    let rid = crate::raft_id(&hub.config, &req.id).unwrap_or_else(|| nave_consensus::node::added_hub_id(&req.id));
    let node = nave_consensus::network::node_addr(&req.id, quic);
    match hub.consensus.change_hubs(HubChange::Add(rid, node)).await {
        Ok(()) => {
            (StatusCode::CREATED, Json(json!({"hub": req.id, "raft_id": rid, "quic": quic.to_string(), "voter": true})))
                .into_response()
        }
        Err(e) => hub_change_error(e),
    }
}

/// `DELETE /admin/v1/hubs/{id}`: the hub stops voting and receiving the log (stop its
/// process afterwards). The last hub cannot be removed.
pub async fn remove_hub(State(hub): State<Arc<Hub>>, Path(id): Path<String>) -> Response {
    let Some((rid, _, _)) = hub.consensus.hubs().into_iter().find(|h| h.1 == id) else {
        return ApiError::new(StatusCode::NOT_FOUND, format!("no voting hub named {id:?}")).into_response();
    };
    match hub.consensus.change_hubs(HubChange::Remove(rid)).await {
        Ok(()) => Json(json!({"hub": id, "removed": true})).into_response(),
        Err(e) => hub_change_error(e),
    }
}

fn hub_change_error(e: nave_consensus::Error) -> Response {
    match e {
        nave_consensus::Error::Raft(m) => ApiError::new(StatusCode::CONFLICT, m).into_response(),
        other => no_quorum(other).into_response(),
    }
}
