//! Joining a running cluster with a token (`nave spoke --join HUB --token T`), and
//! starting again later from what the join left in the node's directory.
//!
//! The spoke makes its key and a certificate request, dials the hub on `nave-join/1`
//! without a certificate, and accepts the hub only if its chain carries the CA the token
//! pins. It sends the token's secret, its description and the request; the hub consumes
//! the token and registers the spoke in one consensus write, signs the request and sends
//! the certificate back. The spoke writes its identity and `joined.json` (its settings)
//! into its directory, then serves like any spoke: the hubs dial it, with mutual TLS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use nave_consensus::frame::{read_frame, write_frame};
use nave_consensus::state::SpokeRecord;
use nave_consensus::tls::{self, NodeIdentity};
use nave_consensus::SpokeConfig;
use serde::{Deserialize, Serialize};

use crate::protocol::{JoinReply, JoinRequest, JoinToken, MAX_JOIN_FRAME};

/// What a joined spoke keeps in its directory to start again without a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Joined {
    pub spoke: SpokeConfig,
    pub heartbeat_interval_ms: u64,
}

const JOINED_FILE: &str = "joined.json";

impl Joined {
    /// The join record in `dir`, if this node joined before.
    pub fn load(dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = dir.join(JOINED_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(JOINED_FILE);
        nave_consensus::files::write_private(&path, &serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}

/// Checks what can fail locally before the token is spent: the addresses are free and the
/// models are in the store (pulled if missing).
pub fn preflight(spec: &SpokeConfig) -> anyhow::Result<()> {
    std::net::UdpSocket::bind(spec.quic).with_context(|| format!("the QUIC address {} is not free", spec.quic))?;
    std::net::TcpListener::bind(spec.http).with_context(|| format!("the HTTP address {} is not free", spec.http))?;
    let store = nave_inference::store::ModelStore::from_env();
    for entry in &spec.models {
        if entry.ends_with(".gguf") {
            if !Path::new(entry).is_file() {
                bail!("model file {entry} does not exist");
            }
        } else {
            store.ensure(entry, &mut |p| tracing::info!(?p, "pulling model"))?;
        }
    }
    Ok(())
}

/// Joins the cluster through the hub at `hub` with `token`; writes the identity and the
/// join record into `dir` and returns them.
pub async fn join(
    hub: SocketAddr,
    token: &str,
    spec: &SpokeConfig,
    dir: &Path,
) -> anyhow::Result<(Joined, NodeIdentity)> {
    let token = JoinToken::parse(token).map_err(anyhow::Error::msg)?;
    let (csr_pem, key_pem) = tls::new_request(&spec.id)?;
    let request = JoinRequest {
        secret: token.secret.clone(),
        spoke: SpokeRecord {
            id: spec.id.clone(),
            quic: spec.quic.to_string(),
            http: spec.http.to_string(),
            models: spec.models.iter().map(|m| nave_consensus::config::model_name(m)).collect(),
            cost_weight: spec.cost_weight,
            labels: spec.labels.clone(),
            joined_ms: 0,
        },
        csr_pem,
    };
    let endpoint = tls::client_endpoint()?;
    let reply = async {
        let conn = endpoint
            .connect_with(tls::join_client_config(&token.ca_fingerprint)?, hub, tls::HUB_NAME)?
            .await
            .with_context(|| format!("no hub of the token's cluster answered at {hub}"))?;
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(&mut send, &request).await?;
        send.finish()?;
        let reply = read_frame::<JoinReply, _>(&mut recv, MAX_JOIN_FRAME).await?;
        conn.close(0u32.into(), b"joined");
        reply.context("the hub closed the join stream without an answer")
    };
    let reply = tokio::time::timeout(Duration::from_secs(30), reply)
        .await
        .context("the hub did not answer the join within 30 s")??;
    endpoint.wait_idle().await;
    let (cert_pem, ca_pem, heartbeat_interval_ms) = match reply {
        JoinReply::Accepted { cert_pem, ca_pem, heartbeat_interval_ms } => (cert_pem, ca_pem, heartbeat_interval_ms),
        JoinReply::Refused(why) => bail!("the hub refused to join this spoke: {why}"),
    };
    if tls::fingerprint_pem(&ca_pem)? != token.ca_fingerprint {
        bail!("the hub sent a CA other than the one the token names");
    }
    let identity = tls::save_identity(dir, &spec.id, &ca_pem, &cert_pem, &key_pem)?;
    let joined = Joined { spoke: spec.clone(), heartbeat_interval_ms };
    joined.save(dir)?;
    Ok((joined, identity))
}

/// Where a spoke outside cluster.toml keeps its identity and join record.
pub fn node_dir(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join(id)
}

/// Joins (unless this node joined before: then the token is not needed and not spent)
/// and serves until `shutdown` completes.
pub async fn run_joined(
    data_dir: &Path,
    spec: SpokeConfig,
    join_with: Option<(SocketAddr, String)>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let dir = node_dir(data_dir, &spec.id);
    nave_consensus::files::private_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (joined, identity) = match Joined::load(&dir)? {
        Some(joined) => {
            tracing::info!(spoke = %joined.spoke.id, dir = %dir.display(), "joined before; starting from the saved identity");
            (joined.clone(), NodeIdentity::load(&dir, &joined.spoke.id)?)
        }
        None => {
            let Some((hub, token)) = join_with else {
                bail!("{} holds no joined spoke: join first with --join HUB_QUIC_ADDR --token TOKEN", dir.display());
            };
            let check = spec.clone();
            tokio::task::spawn_blocking(move || preflight(&check)).await??;
            let (joined, identity) = join(hub, &token, &spec, &dir).await?;
            tracing::info!(spoke = %spec.id, %hub, "joined the cluster");
            (joined, identity)
        }
    };
    crate::server::serve(
        joined.spoke,
        Default::default(),
        dir,
        identity,
        Duration::from_millis(joined.heartbeat_interval_ms),
        shutdown,
    )
    .await
}
