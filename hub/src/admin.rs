//! The admin API: the cluster's status (`/admin/v1/status`), API keys
//! (`/admin/v1/keys`), join tokens (`/admin/v1/tokens`), spokes (drain, removal) and hubs
//! (`/admin/v1/hubs`: add, remove). Keys and tokens live in the replicated state, so every
//! hub knows them at once; each is shown once, at creation, and the state holds only its
//! SHA-256 digest. The voting hubs are the Raft membership.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use nave_consensus::node::HubChange;
use nave_consensus::state::{Command, Limits, RESTORE_CHUNK};
use sha2::{Digest, Sha256};

use crate::api::types::{
    AddedHub, AuditList, AuditRow, ClusterStatus, CreatedKey, CreatedToken, DrainRequest, Drained, HubList, HubStatus,
    KeyList, KeyView, ModelStatus, NewHub, NewKey, NewToken, OwnRaft, RemovedHub, RemovedSpoke, RevokedKey,
    SpokeStatus, UsageList, UsageRow, VotingHub,
};
use crate::error::{done, ApiError};
use crate::{Caller, Hub};

type Answer<T> = Result<Json<T>, ApiError>;
type Created<T> = Result<(StatusCode, Json<T>), ApiError>;

/// An admin body: JSON of `T`, or `T::default()` when the body is empty.
fn body_or_default<T: serde::de::DeserializeOwned + Default>(body: &Bytes, what: &str) -> Result<T, ApiError> {
    if body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid {what} request: {e}")))
}

fn secret(n: usize) -> Result<String, ApiError> {
    nave_consensus::ids::random_hex(n)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("reading /dev/urandom: {e}")))
}

/// Query of `/admin/v1/status`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct StatusQuery {
    /// `leader`: on a follower, the replication lags (which only the leader knows) come
    /// from the leader's own status, one call with the caller's key, at most a second.
    pub lag: Option<String>,
}

/// `GET /admin/v1/status`: hubs (from the Raft membership), spokes, models.
pub async fn status(
    State(hub): State<Arc<Hub>>,
    headers: axum::http::HeaderMap,
    Query(q): Query<StatusQuery>,
) -> Result<Json<ClusterStatus>, ApiError> {
    let mut own = own_status(&hub);
    match q.lag.as_deref() {
        None => {}
        Some("leader") => {
            let leader_http = own
                .hubs
                .iter()
                .find(|h| h.role == "leader" && h.id != hub.id)
                .and_then(|h| h.http.as_deref()?.parse::<std::net::SocketAddr>().ok())
                .filter(|a| !a.ip().is_unspecified());
            let auth = headers.get(axum::http::header::AUTHORIZATION).cloned();
            if let (Some(addr), Some(auth)) = (leader_http, auth) {
                match leader_status(addr, auth).await {
                    Ok(leader) => take_lags(&mut own, &leader),
                    Err(e) => tracing::debug!(error = %e, %addr, "the leader's lags are not known here"),
                }
            }
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!("lag={other:?}: the only value is \"leader\"")).with_param("lag"))
        }
    }
    Ok(Json(own))
}

/// The lags the leader reported, on this hub's rows (the rest is this hub's own view).
fn take_lags(own: &mut ClusterStatus, leader: &ClusterStatus) {
    for h in &mut own.hubs {
        if let Some(l) = leader.hubs.iter().find(|l| l.id == h.id) {
            h.lag = l.lag;
        }
    }
    for s in &mut own.spokes {
        if let Some(l) = leader.spokes.iter().find(|l| l.id == s.id) {
            s.replica_lag = l.replica_lag;
        }
    }
}

/// `GET /admin/v1/status` of the hub at `addr` (the leader), with the caller's key.
async fn leader_status(addr: std::net::SocketAddr, auth: axum::http::HeaderValue) -> anyhow::Result<ClusterStatus> {
    use http_body_util::{BodyExt, Empty, Limited};
    let ask = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = hyper::Request::get("/admin/v1/status")
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::AUTHORIZATION, auth)
            .body(Empty::<Bytes>::new())?;
        let resp = send.send_request(req).await?;
        anyhow::ensure!(resp.status() == StatusCode::OK, "the leader answered {}", resp.status());
        // A status is a few KiB per node: 4 MiB is far beyond any cluster's.
        let body = Limited::new(resp.into_body(), 4 << 20).collect().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(serde_json::from_slice(&body.to_bytes())?)
    };
    tokio::time::timeout(std::time::Duration::from_secs(1), ask)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 1 s"))?
}

fn own_status(hub: &Hub) -> ClusterStatus {
    let f = hub.consensus.figures();
    let voting = hub.consensus.hubs();
    let leader = f.leader.and_then(|l| voting.iter().find(|h| h.0 == l)).map(|h| h.1.clone());
    let hubs = voting
        .iter()
        .map(|(rid, name, quic)| HubStatus {
            id: name.clone(),
            http: hub.config.hubs.iter().find(|h| &h.id == name).map(|h| h.http.to_string()),
            quic: quic.clone(),
            role: if Some(name) == leader.as_ref() { "leader" } else { "follower" }.into(),
            lag: f.lag.get(rid).copied(),
            own: (*name == hub.id).then(|| OwnRaft {
                term: f.term,
                applied_index: f.applied_index,
                last_log_index: f.last_log_index,
                raft_state: f.state.clone(),
            }),
        })
        .collect();
    let spokes = hub.spokes.views();
    let models = hub
        .models()
        .iter()
        .map(|m| ModelStatus {
            model: m.clone(),
            routing: hub.routing(m),
            spokes: spokes
                .iter()
                .filter(|s| s.models.contains(m) && s.state == "active")
                .map(|s| s.id.clone())
                .collect(),
        })
        .collect();
    let spokes = spokes
        .into_iter()
        .map(|v| SpokeStatus {
            replica_lag: f.lag.get(&nave_consensus::node::learner_id(&v.id)).copied(),
            id: v.id,
            models: v.models,
            state: v.state.into(),
            circuit: v.circuit.into(),
            queue: v.queue,
            running: v.running,
            tokens_per_s: v.tokens_per_s,
            kv_blocks_free: v.kv_blocks_free,
            kv_blocks_total: v.kv_blocks_total,
            serving_used: v.serving_used,
            serving_total: v.serving_total,
            training_used: v.training_used,
            training_total: v.training_total,
            last_heard_ms: v.last_heard_ms,
            joined: v.joined,
        })
        .collect();
    ClusterStatus {
        hub: hub.id.clone(),
        leader,
        term: f.term,
        applied_index: f.applied_index,
        snapshot_index: f.snapshot_index,
        hubs,
        spokes,
        models,
    }
}

/// `POST /admin/v1/keys`: a new API key, shown this once.
pub async fn create_key(State(hub): State<Arc<Hub>>, body: Bytes) -> Created<CreatedKey> {
    let req: NewKey =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid key request: {e}")))?;
    let valid = !req.name.is_empty()
        && req.name.len() <= 64
        && req.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !valid {
        return Err(ApiError::bad_request("name: use 1-64 letters, digits, '-', '_' or '.'").with_param("name"));
    }
    let key = format!("nave-{}", secret(24)?);
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    let limits =
        KeyLimits { rpm: req.rpm, tpm: req.tpm, daily_tokens: req.daily_tokens, max_concurrent: req.max_concurrent }
            .limits(&hub);
    done(hub.consensus.write(Command::CreateKey { name: req.name.clone(), digest, limits: limits.clone() }).await)?;
    Ok((StatusCode::CREATED, Json(CreatedKey { name: req.name, key, limits })))
}

/// The limits of `POST /admin/v1/keys` and `PUT /admin/v1/keys/{name}/limits`; an absent
/// one is no limit, but for `max_concurrent`: absent is the cluster's
/// `key_max_concurrent`, 0 no limit.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyLimits {
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub daily_tokens: Option<u64>,
    pub max_concurrent: Option<u32>,
}

impl KeyLimits {
    fn limits(self, hub: &Hub) -> Limits {
        let max_concurrent = match self.max_concurrent {
            None => Some(hub.config.cluster.key_max_concurrent),
            Some(0) => None,
            Some(n) => Some(n),
        };
        Limits { rpm: self.rpm, tpm: self.tpm, daily_tokens: self.daily_tokens, max_concurrent }
    }
}

/// `PUT /admin/v1/keys/{name}/limits` (`{"rpm": 600, "daily_tokens": 100000}`): the key's
/// limits become these, on every hub from its next request; its usage stays counted.
pub async fn set_limits(State(hub): State<Arc<Hub>>, Path(name): Path<String>, body: Bytes) -> Answer<KeyView> {
    let req: KeyLimits =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid limits: {e}")))?;
    let limits = req.limits(&hub);
    done(hub.consensus.write(Command::SetLimits { name: name.clone(), limits }).await)?;
    match hub.consensus.read(|a| a.state.key_by_name(&name).map(KeyView::from)).await? {
        Some(k) => Ok(Json(k)),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no key named {name:?}"))),
    }
}

pub async fn list_keys(State(hub): State<Arc<Hub>>) -> Answer<KeyList> {
    let keys = hub.consensus.read(|a| a.state.keys.values().map(KeyView::from).collect()).await?;
    Ok(Json(KeyList { keys }))
}

/// `GET /admin/v1/keys/{name}`: one key, as of every write acknowledged before the call.
pub async fn get_key(State(hub): State<Arc<Hub>>, Path(name): Path<String>) -> Answer<KeyView> {
    match hub.consensus.read(|a| a.state.key_by_name(&name).map(KeyView::from)).await? {
        Some(k) => Ok(Json(k)),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no key named {name:?}"))),
    }
}

pub async fn revoke_key(State(hub): State<Arc<Hub>>, Path(name): Path<String>) -> Answer<RevokedKey> {
    done(hub.consensus.write(Command::RevokeKey { name: name.clone() }).await)?;
    Ok(Json(RevokedKey { name, revoked: true }))
}

/// `POST /admin/v1/spokes/{id}/drain` (`{"undo": true}` resumes): no new requests go to
/// the spoke, running ones finish; its state turns "drained" when nothing is left.
pub async fn drain_spoke(State(hub): State<Arc<Hub>>, Path(id): Path<String>, body: Bytes) -> Answer<Drained> {
    let req: DrainRequest = body_or_default(&body, "drain")?;
    match hub.spokes.drain(&id, !req.undo).await {
        Ok(hb) => {
            let what = format!("spoke {id} drain={}", !req.undo);
            let _ = hub.consensus.write(Command::Audit { actor: "admin".into(), what }).await;
            let in_flight = hb.models.iter().map(|m| m.stats.running + m.stats.waiting).sum();
            Ok(Json(Drained { spoke: id, draining: hb.draining, in_flight }))
        }
        Err(e) if !hub.spokes.views().iter().any(|s| s.id == id) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, e.to_string()))
        }
        Err(e) => Err(ApiError::unavailable(e.to_string())),
    }
}

/// `POST /admin/v1/tokens` (`{"ttl_s": 3600, "uses": 1}`): a join token for new spokes.
/// It is shown once; the state keeps the digest of its secret.
pub async fn create_token(
    State(hub): State<Arc<Hub>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Created<CreatedToken> {
    let req: NewToken = body_or_default(&body, "token")?;
    if !(1..=30 * 86_400).contains(&req.ttl_s) {
        return Err(ApiError::bad_request("ttl_s: from 1 s to 30 days").with_param("ttl_s"));
    }
    if !(1..=1000).contains(&req.uses) {
        return Err(ApiError::bad_request("uses: from 1 to 1000").with_param("uses"));
    }
    let quic = hub
        .config
        .hub(&hub.id)
        .map(|h| h.quic)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let host = headers.get(axum::http::header::HOST).and_then(|v| v.to_str().ok());
    let quic = reachable_quic(quic, host).to_string();
    let secret = secret(16)?;
    let fingerprint =
        hub.ca.fingerprint().map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let token = nave_spoke::protocol::JoinToken { secret, ca_fingerprint: fingerprint };
    let digest = nave_spoke::protocol::JoinToken::digest(&token.secret);
    done(hub.consensus.write(Command::CreateJoinToken { digest, ttl_ms: req.ttl_s * 1000, uses: req.uses }).await)?;
    let join = format!("nave spoke --join {quic} --token {token}");
    let created = CreatedToken { token: token.to_string(), ttl_s: req.ttl_s, uses: req.uses, hub_quic: quic, join };
    Ok((StatusCode::CREATED, Json(created)))
}

/// The hub's QUIC address as a new machine dials it: the configured one, unless it is
/// the unspecified address (listening on every interface), which no one can dial; then the
/// IP the admin reached this hub's HTTP at (the `Host` of the request), if it is one.
fn reachable_quic(quic: std::net::SocketAddr, host: Option<&str>) -> std::net::SocketAddr {
    if !quic.ip().is_unspecified() {
        return quic;
    }
    let ip = host.and_then(|h| {
        let h = h.rsplit_once(':').map_or(h, |(ip, port)| if port.parse::<u16>().is_ok() { ip } else { h });
        h.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().ok()
    });
    match ip {
        Some(ip) => std::net::SocketAddr::new(ip, quic.port()),
        None => quic,
    }
}

/// `DELETE /admin/v1/spokes/{id}`: forgets a spoke that joined with a token (hubs stop
/// dialling it; drain it first to let its requests finish). Config spokes stay.
pub async fn remove_spoke(State(hub): State<Arc<Hub>>, Path(id): Path<String>) -> Answer<RemovedSpoke> {
    if hub.config.spokes.iter().any(|s| s.id == id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("spoke {id} is listed in cluster.toml: remove it there"),
        ));
    }
    done(hub.consensus.write(Command::RemoveSpoke { id: id.clone() }).await)?;
    done(hub.consensus.write(Command::RevokeNode { name: id.clone(), revoked: true }).await)?;
    Ok(Json(RemovedSpoke { spoke: id, removed: true }))
}

/// `GET /admin/v1/hubs`: the voting hubs (from the Raft membership) and the leader.
pub async fn list_hubs(State(hub): State<Arc<Hub>>) -> Json<HubList> {
    let leader = hub.consensus.figures().leader;
    let hubs = hub
        .consensus
        .hubs()
        .into_iter()
        .map(|(rid, name, quic)| VotingHub { id: name, raft_id: rid, quic, leader: Some(rid) == leader })
        .collect();
    Json(HubList { hubs })
}

/// `POST /admin/v1/hubs` `{"id": "h4", "quic": "10.0.0.4:7001"}`: makes a running hub (one
/// started with `join = true` in its cluster.toml) a voter. It joins as a learner first
/// and votes once it has caught up; the answer comes then (or after 30 s, an error).
pub async fn add_hub(State(hub): State<Arc<Hub>>, body: Bytes) -> Created<AddedHub> {
    let req: NewHub =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid hub request: {e}")))?;
    let listed = hub.config.hubs.iter().find(|h| h.id == req.id);
    let Some(quic) = req.quic.or(listed.map(|h| h.quic)) else {
        return Err(ApiError::bad_request(format!(
            "hub {} is not in this hub's cluster.toml: give its \"quic\" address",
            req.id
        ))
        .with_param("quic"));
    };
    // A founding hub keeps its id (1, 2, 3...) when it comes back; an added one's comes
    // from its name, as the hub itself computes it.
    let rid = crate::raft_id(&hub.config, &req.id).unwrap_or_else(|| nave_consensus::node::added_hub_id(&req.id));
    let node = nave_consensus::network::node_addr(&req.id, quic);
    // A hub removed before and added back is accepted again.
    done(hub.consensus.write(Command::RevokeNode { name: req.id.clone(), revoked: false }).await)?;
    hub.consensus.change_hubs(HubChange::Add(rid, node)).await.map_err(hub_change_error)?;
    Ok((StatusCode::CREATED, Json(AddedHub { hub: req.id, raft_id: rid, quic: quic.to_string(), voter: true })))
}

/// `DELETE /admin/v1/hubs/{id}`: the hub stops voting and receiving the log (stop its
/// process afterwards). The last hub cannot be removed.
pub async fn remove_hub(State(hub): State<Arc<Hub>>, Path(id): Path<String>) -> Answer<RemovedHub> {
    let Some((rid, _, _)) = hub.consensus.hubs().into_iter().find(|h| h.1 == id) else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no voting hub named {id:?}")));
    };
    hub.consensus.change_hubs(HubChange::Remove(rid)).await.map_err(hub_change_error)?;
    // Out of the membership, and its certificate no longer opens anything.
    done(hub.consensus.write(Command::RevokeNode { name: id.clone(), revoked: true }).await)?;
    Ok(Json(RemovedHub { hub: id, removed: true }))
}

/// A membership change Raft refused is the caller's conflict (409); anything else is the
/// state being unavailable.
fn hub_change_error(e: nave_consensus::Error) -> ApiError {
    match e {
        nave_consensus::Error::Raft(m) => ApiError::new(StatusCode::CONFLICT, m),
        other => ApiError::no_quorum(other),
    }
}

/// Query of `/admin/v1/audit` and the usage routes.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct Window {
    /// Entries (audit) or days (usage) to return, newest first.
    pub limit: Option<usize>,
    /// Only this key (usage, by name).
    pub key: Option<String>,
}

/// `GET /admin/v1/audit?limit=N`: who did what, newest first (default 100 entries).
pub async fn audit(State(hub): State<Arc<Hub>>, Query(w): Query<Window>) -> Answer<AuditList> {
    let limit = w.limit.unwrap_or(100).min(nave_consensus::state::AUDIT_KEEP);
    let entries = hub
        .consensus
        .read(|a| {
            a.state
                .audit
                .iter()
                .rev()
                .take(limit)
                .map(|e| AuditRow {
                    at_ms: e.at_ms,
                    at: nave_consensus::clock::rfc3339(e.at_ms / 1000),
                    actor: e.actor.clone(),
                    what: e.what.clone(),
                })
                .collect()
        })
        .await?;
    Ok(Json(AuditList { entries }))
}

/// `GET /admin/v1/usage?key=NAME&limit=DAYS`: tokens by day, key and model (default 31
/// days).
pub async fn usage(State(hub): State<Arc<Hub>>, Query(w): Query<Window>) -> Answer<UsageList> {
    let days = w.limit.unwrap_or(31);
    let usage = hub
        .consensus
        .read(|a| {
            let keys: Vec<&nave_consensus::state::ApiKey> = match &w.key {
                Some(name) => a.state.key_by_name(name).into_iter().collect(),
                None => a.state.keys.values().collect(),
            };
            keys.into_iter().flat_map(|k| UsageRow::of(k, days)).collect::<Vec<_>>()
        })
        .await?;
    if usage.is_empty() {
        if let Some(name) = &w.key {
            if hub.consensus.read(|a| a.state.key_by_name(name).is_none()).await? {
                return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no key named {name:?}")));
            }
        }
    }
    Ok(Json(UsageList { usage }))
}

/// `GET /v1/usage?limit=DAYS`: the calling key's own usage by day and model.
pub async fn own_usage(
    State(hub): State<Arc<Hub>>,
    Extension(caller): Extension<Caller>,
    Query(w): Query<Window>,
) -> Answer<UsageList> {
    let days = w.limit.unwrap_or(31);
    let usage = match caller {
        Caller::Admin => Vec::new(),
        Caller::Key(digest) => hub
            .consensus
            .read(|a| a.state.key_by_digest(&digest).map(|k| UsageRow::of(k, days)))
            .await?
            .unwrap_or_default(),
    };
    Ok(Json(UsageList { usage }))
}

/// `GET /admin/v1/backup`: the replicated state at a linearizable point (every write
/// acknowledged before the call is in it), as a backup file (`nave admin backup FILE`).
pub async fn backup(State(hub): State<Arc<Hub>>) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let (state, index, keys, spokes) = hub
        .consensus
        .read(|a| {
            let index = a.last_applied.map_or(0, |l| l.index);
            (a.state.backup_bytes(), index, a.state.keys.len(), a.state.spokes.len())
        })
        .await?;
    let file = nave_consensus::backup::encode(
        &state,
        &hub.config.cluster.name,
        nave_consensus::clock::now_ms(),
        index,
        keys,
        spokes,
    );
    let _ = hub
        .consensus
        .write(Command::Audit { actor: "admin".into(), what: format!("backup taken at log index {index}") })
        .await;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/octet-stream")], file).into_response())
}

/// `POST /admin/v1/restore` with a backup file as the body: a new cluster (no keys,
/// spokes, tokens or responses yet) takes the backed-up state, through one Raft write.
pub async fn restore(State(hub): State<Arc<Hub>>, body: Bytes) -> Answer<crate::api::types::Restored> {
    let (header, state) = nave_consensus::backup::decode(&body).map_err(ApiError::bad_request)?;
    // Checked here first, so a bad file writes nothing.
    nave_consensus::state::ClusterState::from_backup_bytes(state).map_err(ApiError::bad_request)?;
    let pieces: Vec<&[u8]> = if state.is_empty() { vec![state] } else { state.chunks(RESTORE_CHUNK).collect() };
    for (i, chunk) in pieces.iter().enumerate() {
        let command =
            Command::Restore { offset: (i * RESTORE_CHUNK) as u64, chunk: chunk.to_vec(), last: i + 1 == pieces.len() };
        done(hub.consensus.write(command).await)?;
    }
    Ok(Json(crate::api::types::Restored {
        from_cluster: header.cluster,
        taken_ms: header.taken_ms,
        log_index: header.log_index,
        keys: header.keys,
        spokes: header.spokes,
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_join_command_names_an_address_a_machine_can_dial() {
        let any: std::net::SocketAddr = "0.0.0.0:7001".parse().expect("addr");
        let given: std::net::SocketAddr = "10.0.0.5:7001".parse().expect("addr");
        assert_eq!(super::reachable_quic(given, Some("192.168.1.9:8080")), given, "a configured address stays");
        assert_eq!(super::reachable_quic(any, Some("192.168.1.9:8080")).to_string(), "192.168.1.9:7001");
        assert_eq!(super::reachable_quic(any, Some("[fd00::5]:8080")).to_string(), "[fd00::5]:7001");
        assert_eq!(super::reachable_quic(any, Some("hub.example")), any, "a name is not an IP");
        assert_eq!(super::reachable_quic(any, None), any);
    }
}
