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

/// A step of a join, as it happens (for the command to show).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinStep {
    /// The models are in the store (pulled if they were missing) and the listeners free.
    Ready { models: Vec<String> },
    /// A hub answered whose chain holds the CA the token pins.
    CaPinned { hub: SocketAddr, fingerprint: String },
    /// The hub at `hub` did not answer; the join tries again after `wait`.
    Retrying { hub: SocketAddr, attempt: u32, tries: u32, wait: Duration, why: String },
    /// The hub signed the spoke's certificate for `id` (the one asked for, or a free one
    /// beside it when another node held that).
    Signed { id: String, asked: String },
}

/// Tries of a join whose hub does not answer, and the wait before the second (doubled
/// each time): 5 tries over about 30 s (each try waits out QUIC's 3 s idle timeout).
pub const JOIN_TRIES: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// How one try ended short of an answer.
enum Failed {
    /// Worth another try: nothing answered at the address.
    Unreachable(String),
    Fatal(anyhow::Error),
}

/// A joined spoke ready to serve: its settings, identity and directory, and, right after
/// a join, the log index its replica has caught up at.
pub struct Prepared {
    pub joined: Joined,
    pub identity: NodeIdentity,
    pub dir: PathBuf,
    pub caught_up_at: Option<u64>,
}

/// Joins the cluster through the hub at `hub` with `token`; writes the identity and the
/// join record into `<data_dir>/<id>` (the id the hub answered with) and returns them
/// with that directory. `rename_if_taken`: the id came from the host name, so the hub may
/// pick a free one beside it. A hub that does not answer is tried [`JOIN_TRIES`] times.
pub async fn join(
    hub: SocketAddr,
    token: &str,
    spec: &SpokeConfig,
    data_dir: &Path,
    rename_if_taken: bool,
    step: &(dyn Fn(JoinStep) + Sync),
) -> anyhow::Result<Prepared> {
    join_tries(hub, token, spec, data_dir, rename_if_taken, step, JOIN_TRIES, FIRST_BACKOFF).await
}

#[allow(clippy::too_many_arguments)]
async fn join_tries(
    hub: SocketAddr,
    token: &str,
    spec: &SpokeConfig,
    data_dir: &Path,
    rename_if_taken: bool,
    step: &(dyn Fn(JoinStep) + Sync),
    tries: u32,
    first_backoff: Duration,
) -> anyhow::Result<Prepared> {
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
        rename_if_taken,
    };
    let endpoint = tls::client_endpoint()?;
    let started = std::time::Instant::now();
    let mut wait = first_backoff;
    let mut attempt = 1;
    let reply = loop {
        match exchange(&endpoint, hub, &token, &request, step).await {
            Ok(reply) => break reply,
            Err(Failed::Fatal(e)) => return Err(e),
            Err(Failed::Unreachable(why)) if attempt < tries => {
                step(JoinStep::Retrying { hub, attempt, tries, wait, why });
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
            Err(Failed::Unreachable(why)) => bail!(
                "no hub answered at {hub} after {tries} tries over {} s ({why}): check the address (a hub's QUIC \
                 address, as `nave admin token create` prints it), that the hub runs, and that UDP port {} is open \
                 from this machine",
                started.elapsed().as_secs(),
                hub.port()
            ),
        }
    };
    endpoint.wait_idle().await;
    let (id, cert_pem, ca_pem, heartbeat_interval_ms, log_index) = match reply {
        JoinReply::Accepted { id, cert_pem, ca_pem, heartbeat_interval_ms, log_index } => {
            (id, cert_pem, ca_pem, heartbeat_interval_ms, log_index)
        }
        JoinReply::Refused(why) => bail!("the hub refused to join this spoke: {why}"),
    };
    if tls::fingerprint_pem(&ca_pem)? != token.ca_fingerprint {
        bail!("the hub sent a CA other than the one the token names: check the token and the --join address");
    }
    if id != spec.id && !rename_if_taken {
        bail!("the hub named this spoke {id:?}, not the {:?} asked for", spec.id);
    }
    step(JoinStep::Signed { id: id.clone(), asked: spec.id.clone() });
    let dir = node_dir(data_dir, &id);
    nave_consensus::files::private_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let identity = tls::save_identity(&dir, &id, &ca_pem, &cert_pem, &key_pem)?;
    let joined = Joined { spoke: SpokeConfig { id, ..spec.clone() }, heartbeat_interval_ms };
    joined.save(&dir)?;
    Ok(Prepared { joined, identity, dir, caught_up_at: Some(log_index) })
}

/// One try: dial the hub (accepting it only with the pinned CA), send the request, read
/// the answer.
async fn exchange(
    endpoint: &quinn::Endpoint,
    hub: SocketAddr,
    token: &JoinToken,
    request: &JoinRequest,
    step: &(dyn Fn(JoinStep) + Sync),
) -> Result<JoinReply, Failed> {
    let fatal = |e: anyhow::Error| Failed::Fatal(e);
    let config = tls::join_client_config(&token.ca_fingerprint).map_err(|e| fatal(e.into()))?;
    let connecting = endpoint
        .connect_with(config, hub, tls::HUB_NAME)
        .map_err(|e| fatal(anyhow::anyhow!("cannot dial {hub}: {e}")))?;
    let conn = match connecting.await {
        Ok(c) => c,
        // A TLS alert: something answered, with a certificate chain the token refuses.
        Err(quinn::ConnectionError::TransportError(t)) if (0x100..0x200).contains(&u64::from(t.code)) => {
            return Err(fatal(anyhow::anyhow!(
                "the node at {hub} is not a hub of the token's cluster: its certificate is not signed by the CA \
                 the token pins (sha256 {}, the token's last part). The token was mistyped (copy it again from \
                 `nave admin token create`), or it is another cluster's, or --join names a node of another \
                 cluster ({})",
                token.ca_fingerprint,
                t.reason
            )))
        }
        Err(quinn::ConnectionError::ApplicationClosed(c)) => {
            return Err(fatal(anyhow::anyhow!(
                "the hub at {hub} closed the join: {}",
                String::from_utf8_lossy(&c.reason)
            )))
        }
        Err(e) => return Err(Failed::Unreachable(e.to_string())),
    };
    step(JoinStep::CaPinned { hub, fingerprint: token.ca_fingerprint.clone() });
    let reply = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(&mut send, request).await?;
        send.finish()?;
        let reply = read_frame::<JoinReply, _>(&mut recv, MAX_JOIN_FRAME).await?;
        conn.close(0u32.into(), b"joined");
        reply.context("the hub closed the join stream without an answer")
    };
    match tokio::time::timeout(Duration::from_secs(30), reply).await {
        Ok(Ok(r)) => Ok(r),
        // The hub may close the connection with its reason before reading (too many
        // failed joins from this address).
        Ok(Err(e)) => match conn.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(c)) => {
                Err(fatal(anyhow::anyhow!("the hub at {hub} closed the join: {}", String::from_utf8_lossy(&c.reason))))
            }
            _ => Err(fatal(e.context(format!("the join exchange with {hub} failed")))),
        },
        Err(_) => Err(fatal(anyhow::anyhow!("the hub at {hub} did not answer the join within 30 s; try again"))),
    }
}

/// Where a spoke outside cluster.toml keeps its identity and join record.
pub fn node_dir(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join(id)
}

/// The identity and settings of a joined spoke and its directory: from the directory when
/// it joined before (the token is then not needed and not spent), else from a join,
/// after checking what can fail locally (free addresses, models in the store).
pub async fn prepare(
    data_dir: &Path,
    spec: SpokeConfig,
    join_with: Option<(SocketAddr, String)>,
    rename_if_taken: bool,
    step: &(dyn Fn(JoinStep) + Sync),
) -> anyhow::Result<Prepared> {
    let dir = node_dir(data_dir, &spec.id);
    if let Some(joined) = Joined::load(&dir)? {
        tracing::info!(spoke = %joined.spoke.id, dir = %dir.display(), "joined before; starting from the saved identity");
        let identity = NodeIdentity::load(&dir, &joined.spoke.id)?;
        return Ok(Prepared { joined, identity, dir, caught_up_at: None });
    }
    let Some((hub, token)) = join_with else {
        bail!("{} holds no joined spoke: join first with --join HUB_QUIC_ADDR --token TOKEN", dir.display());
    };
    // A mistyped token is said before anything is pulled.
    JoinToken::parse(&token).map_err(anyhow::Error::msg)?;
    let check = spec.clone();
    tokio::task::spawn_blocking(move || preflight(&check)).await??;
    step(JoinStep::Ready { models: spec.models.clone() });
    let prepared = join(hub, &token, &spec, data_dir, rename_if_taken, step).await?;
    tracing::info!(spoke = %prepared.joined.spoke.id, %hub, "joined the cluster");
    Ok(prepared)
}

/// Serves a joined spoke until `shutdown` completes.
pub async fn serve(
    joined: Joined,
    identity: NodeIdentity,
    dir: PathBuf,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let heartbeat = Duration::from_millis(joined.heartbeat_interval_ms);
    crate::server::serve(joined.spoke, Default::default(), dir, identity, heartbeat, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hub address where nothing answers: the join tries again, a bounded number of
    /// times, then says what to check.
    #[tokio::test]
    async fn an_unreachable_hub_is_tried_again_then_named() {
        let dir = std::env::temp_dir().join(format!("nave-join-test-{}", std::process::id()));
        // A UDP port bound and never read: nothing answers there.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let hub = silent.local_addr().expect("addr");
        let token = JoinToken { secret: "ab".repeat(16), ca_fingerprint: "cd".repeat(32) }.to_string();
        let spec: SpokeConfig = serde_json::from_value(serde_json::json!(
            {"id": "s9", "http": "127.0.0.1:1", "quic": "127.0.0.1:2", "models": ["m"]}
        ))
        .expect("spec");
        let steps = std::sync::Mutex::new(Vec::new());
        let record = |s: JoinStep| steps.lock().expect("steps").push(s);
        let Err(err) = join_tries(hub, &token, &spec, &dir, true, &record, 2, Duration::from_millis(10)).await else {
            panic!("nothing answers there, yet the join succeeded");
        };
        let text = format!("{err:#}");
        assert!(text.contains("no hub answered") && text.contains("after 2 tries"), "{text}");
        let steps = steps.into_inner().expect("steps");
        assert!(matches!(steps.as_slice(), [JoinStep::Retrying { attempt: 1, tries: 2, .. }]), "{steps:?}");
        assert!(!dir.join("s9").exists(), "nothing written");
    }
}
