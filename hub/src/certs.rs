//! Node certificates, the hub's side. A hub holds the cluster CA, so it renews its own
//! certificate ([`renew_own`], hourly check in [`keep_renewed`]); it signs the renewals
//! spokes ask for on `nave-renew/1` ([`serve_renewal`]: only over a connection made with
//! the spoke's current, valid certificate, for that certificate's name, and never for a
//! revoked name); and `POST /admin/v1/certs/rotate` ([`rotate`], `nave admin cert rotate
//! [NODE]`) renews one node's certificate now, or every node's.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use nave_consensus::frame::{read_frame, write_frame};
use nave_consensus::state::Command;
use nave_consensus::tls::{self, Validity};
use nave_spoke::protocol::{HubToSpoke, RenewReply, RenewRequest, SpokeToHub, MAX_JOIN_FRAME};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::Hub;

/// How often a hub looks at its certificate's expiry.
pub const CHECK_EVERY: Duration = Duration::from_secs(3600);

/// Gives this hub a fresh key and certificate from the CA (the configured lifetime),
/// presented from the next handshake on.
pub fn renew_own(hub: &Hub) -> anyhow::Result<Validity> {
    let dir = hub.config.node_dir(&hub.id);
    let v = hub.ca.renew(&dir, &hub.identity, true, hub.config.cluster.cert_lifetime())?;
    tracing::info!(hub = %hub.id, not_after = v.not_after, "certificate renewed");
    Ok(v)
}

/// Renews this hub's certificate whenever less than a third of its lifetime is left
/// (the start renewed it already if it had to: [`nave_consensus::tls::ClusterCa::ensure_hub`]).
pub async fn keep_renewed(hub: Arc<Hub>) {
    let mut next = CHECK_EVERY;
    loop {
        tokio::time::sleep(next).await;
        next = CHECK_EVERY;
        if hub.identity.validity().needs_renewal(tls::unix_now(), hub.config.cluster.cert_lifetime()) {
            if let Err(e) = renew_own(&hub) {
                tracing::warn!(error = %e, "certificate renewal failed; retrying in a minute");
                next = Duration::from_secs(60);
            }
        }
    }
}

/// Serves one `nave-renew/1` connection: one request, one answer, within 20 s (and 5 s
/// more for the node to close the connection once it has the answer).
pub async fn serve_renewal(hub: Arc<Hub>, conn: quinn::Connection) {
    if !tls::has_certificate(&conn) {
        return conn.close(3u32.into(), b"renewing needs the certificate being renewed");
    }
    let name = tls::peer_names(&conn).into_iter().next().unwrap_or_default();
    let exchange = async {
        let (mut send, mut recv) = conn.accept_bi().await.ok()?;
        let reply = match read_frame::<RenewRequest, _>(&mut recv, MAX_JOIN_FRAME).await {
            Ok(Some(request)) => answer(&hub, &conn, &name, &request).await,
            Ok(None) => RenewReply::Refused("empty renewal request".into()),
            Err(e) => RenewReply::Refused(format!("malformed renewal request: {e}")),
        };
        if let RenewReply::Refused(why) = &reply {
            tracing::warn!(node = %name, %why, "certificate renewal refused");
        }
        write_frame(&mut send, &reply).await.ok()?;
        send.finish().ok()
    };
    match tokio::time::timeout(Duration::from_secs(20), exchange).await {
        // The answer is on its way: the node closes the connection once it has read it.
        Ok(Some(())) => {
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
        }
        Ok(None) => {}
        Err(_) => conn.close(2u32.into(), b"the renewal took too long"),
    }
}

async fn answer(hub: &Hub, conn: &quinn::Connection, name: &str, request: &RenewRequest) -> RenewReply {
    if tls::peer_is_hub(conn) {
        return RenewReply::Refused("hubs renew their own certificates (they hold the CA)".into());
    }
    // From the state (a linearizable read): a spoke removed a moment ago through another
    // hub is refused here too.
    let known = hub.consensus.read(|a| (a.state.revoked.contains(name), a.state.spokes.contains_key(name))).await;
    let in_config = hub.config.spokes.iter().any(|s| s.id == name);
    match known {
        Ok((true, _)) => return RenewReply::Refused(format!("the certificate of {name} is revoked")),
        Ok((false, joined)) if joined || in_config => {}
        Ok(_) => return RenewReply::Refused(format!("{name} is not a spoke of this cluster")),
        Err(e) => return RenewReply::Refused(format!("the cluster state is not available ({e}); try again later")),
    }
    let cert_pem = match hub.ca.sign_request(&request.csr_pem, name, hub.config.cluster.cert_lifetime()) {
        Ok(c) => c,
        Err(e) => return RenewReply::Refused(e.to_string()),
    };
    let audit = Command::Audit { actor: format!("node {name}"), what: "certificate renewed".into() };
    let _ = hub.consensus.write(audit).await;
    RenewReply::Renewed { cert_pem }
}

/// `POST /admin/v1/certs/rotate` body: the node (hub or spoke id) whose certificate to
/// renew now; without one, every hub's and every connected spoke's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    #[serde(default)]
    pub node: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Rotated {
    pub rotated: Vec<RotatedNode>,
    pub failed: Vec<FailedNode>,
}

#[derive(Debug, Serialize)]
pub struct RotatedNode {
    pub node: String,
    /// The new certificate's expiry, Unix seconds and UTC.
    pub not_after: i64,
    pub expires: String,
}

#[derive(Debug, Serialize)]
pub struct FailedNode {
    pub node: String,
    pub error: String,
}

/// Renews node `node`'s certificate now: this hub's from the CA, another hub's by asking
/// it (over Raft's connection), a spoke's by asking it to renew through a hub.
async fn rotate_one(hub: &Hub, node: &str) -> Result<i64, String> {
    if node == hub.id {
        return renew_own(hub).map(|v| v.not_after).map_err(|e| format!("{e:#}"));
    }
    if hub.consensus.hubs().iter().any(|(_, name, _)| name == node) {
        return hub.consensus.rotate_hub(node).await.map_err(|e| e.to_string());
    }
    match hub.spokes.call(node, &HubToSpoke::RotateCert).await {
        Ok(SpokeToHub::Renewed { not_after }) => Ok(not_after),
        Ok(SpokeToHub::Refused { message, .. }) => Err(message),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// `POST /admin/v1/certs/rotate` (`{"node": "s1"}`, or no body for every node): 200 with
/// what was renewed and what failed; 404 for a node the cluster does not know, 503 when
/// the one node asked for could not be renewed.
pub async fn rotate(State(hub): State<Arc<Hub>>, body: Bytes) -> Result<Json<Rotated>, ApiError> {
    let req: RotateRequest = if body.is_empty() {
        RotateRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid rotate request: {e}")))?
    };
    let hubs: Vec<String> = hub.consensus.hubs().into_iter().map(|(_, name, _)| name).collect();
    let spokes: Vec<String> = hub.spokes.views().into_iter().map(|s| s.id).collect();
    let targets = match &req.node {
        Some(n) if hubs.contains(n) || spokes.contains(n) || *n == hub.id => vec![n.clone()],
        Some(n) => {
            return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no hub or spoke named {n:?} in this cluster"))
                .with_param("node"))
        }
        None => hubs.into_iter().chain(spokes).collect(),
    };
    let mut answer = Rotated { rotated: Vec::new(), failed: Vec::new() };
    for node in targets {
        match rotate_one(&hub, &node).await {
            Ok(not_after) => answer.rotated.push(RotatedNode { node, not_after, expires: tls::utc(not_after) }),
            Err(error) => answer.failed.push(FailedNode { node, error }),
        }
    }
    let what = format!(
        "certificates rotated: {}",
        answer.rotated.iter().map(|r| r.node.as_str()).collect::<Vec<_>>().join(", ")
    );
    let _ = hub.consensus.write(Command::Audit { actor: "admin".into(), what }).await;
    if req.node.is_some() && answer.rotated.is_empty() {
        let why = answer.failed.first().map(|f| f.error.clone()).unwrap_or_default();
        return Err(ApiError::unavailable(format!("the certificate was not renewed: {why}")));
    }
    Ok(Json(answer))
}
