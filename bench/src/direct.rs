//! `nave bench --url spoke:ID`: the load generator's workload sent straight to a spoke
//! over `nave-spoke/1`, the way a hub sends it, with no hub in between. Beside a run
//! through a hub (`--url http://HUB --compare spoke:ID`: same prompts, alternating halves)
//! it shows what the hubs add: HTTP, admission and settlement through Raft, routing.
//!
//! Spokes take requests from hubs only, so the bench gives itself a hub certificate from
//! the cluster CA, held in memory for the run. It therefore runs where the CA is (the
//! `data_dir` of cluster.toml): it is a tool for the cluster's admin.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use nave_consensus::frame::{read_frame, write_frame};
use nave_consensus::tls::{self, ClusterCa};
use nave_consensus::ClusterConfig;
use nave_inference::{Event, GenerateRequest};
use nave_spoke::protocol::{HubToSpoke, SpokeToHub, MAX_FRAME};

use crate::load::Sample;

/// How long the bench's certificate is valid: longer than any run.
const CERT_VALIDITY: Duration = Duration::from_secs(7 * 86400);

/// One connection to a spoke, as a hub holds it (each request is a stream on it).
#[derive(Clone)]
pub struct Spoke {
    conn: quinn::Connection,
    /// Kept so the connection's endpoint lives as long as the connection.
    _endpoint: quinn::Endpoint,
}

/// Where `target` (`ID`, a spoke of cluster.toml, or `ID@HOST:PORT`, any spoke) listens.
fn address(config: &ClusterConfig, target: &str) -> anyhow::Result<(String, std::net::SocketAddr)> {
    match target.split_once('@') {
        Some((id, addr)) => {
            let addr = addr.parse().with_context(|| format!("spoke:{target}: {addr:?} is not a HOST:PORT address"))?;
            Ok((id.to_string(), addr))
        }
        None => {
            let spec = config.spoke(target).with_context(|| {
                format!("spoke:{target}: for a joined spoke give its QUIC address too, spoke:{target}@HOST:PORT")
            })?;
            Ok((target.to_string(), spec.quic))
        }
    }
}

/// Connects to the spoke `target` of the cluster described by `config`.
pub async fn connect(config: &Path, target: &str) -> anyhow::Result<Spoke> {
    let config = ClusterConfig::load(config)?;
    let (id, addr) = address(&config, target)?;
    let ca = ClusterCa::load(&config.ca_dir()).context("calling a spoke directly needs the cluster CA")?;
    let identity = ca.transient_hub("nave-bench", CERT_VALIDITY)?;
    let endpoint = tls::client_endpoint()?;
    let conn = endpoint
        .connect_with(identity.client_config(tls::ALPN_SPOKE)?, addr, &id)?
        .await
        .with_context(|| format!("connecting to spoke {id} at {addr}"))?;
    Ok(Spoke { conn, _endpoint: endpoint })
}

/// Sends one request and times its events like the HTTP client does.
pub(crate) async fn one(
    spoke: &Spoke,
    model: &str,
    request: GenerateRequest,
    start: Instant,
    timeout: Duration,
) -> Sample {
    let mut s = Sample::default();
    if tokio::time::timeout(timeout, exchange(spoke, model, request, start, &mut s)).await.is_err() {
        s.error = Some("timeout".into());
    }
    s.e2e_us = start.elapsed().as_micros() as u64;
    s.ok = s.error.is_none();
    s
}

async fn exchange(spoke: &Spoke, model: &str, request: GenerateRequest, start: Instant, s: &mut Sample) {
    let Ok((mut send, mut recv)) = spoke.conn.open_bi().await else {
        s.error = Some("connect".into());
        return;
    };
    if write_frame(&mut send, &HubToSpoke::Generate { model: model.to_string(), request }).await.is_err() {
        s.error = Some("request".into());
        return;
    }
    let mut last = None::<Instant>;
    loop {
        let event = match read_frame::<SpokeToHub, _>(&mut recv, MAX_FRAME).await {
            Ok(Some(SpokeToHub::Accepted)) => continue,
            Ok(Some(SpokeToHub::Event(e))) => e,
            Ok(Some(SpokeToHub::Refused { .. })) => {
                s.error = Some("refused".into());
                return;
            }
            Ok(Some(_)) | Err(_) => {
                s.error = Some("stream".into());
                return;
            }
            Ok(None) => {
                s.error = Some("incomplete_stream".into());
                return;
            }
        };
        match event {
            Event::Delta { text, .. } if !text.is_empty() => {
                let now = Instant::now();
                match last {
                    None => s.ttft_us = Some(now.duration_since(start).as_micros() as u64),
                    Some(l) => s.itl_us.push(now.duration_since(l).as_micros() as u64),
                }
                last = Some(now);
            }
            Event::Delta { .. }
            | Event::Prompt { .. }
            | Event::ToolCall { .. }
            | Event::ToolCallStart { .. }
            | Event::ToolCallArguments { .. }
            | Event::Embedding { .. } => {}
            Event::Done { usage, .. } => {
                s.tokens = usage.completion_tokens as u64;
                return;
            }
            Event::Error { .. } => {
                s.error = Some("error_event".into());
                return;
            }
        }
    }
}
