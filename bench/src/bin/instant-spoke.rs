//! A spoke that answers every request at once with one token, for measuring what the
//! hubs themselves cost (admission, settlement, routing, QUIC, HTTP): the hub overhead
//! benchmark (`bench/hub_overhead.sh`). It speaks `nave-spoke/1` with the node's real
//! certificate and heartbeats; it never runs a model, and is not part of `nave`.
//!
//!     instant-spoke --config cluster.toml --id s1

use std::sync::Arc;
use std::time::Duration;

use nave_consensus::frame::{read_frame, write_frame};
use nave_consensus::tls;
use nave_consensus::ClusterConfig;
use nave_inference::{Event, FinishReason, Usage};
use nave_spoke::protocol::{Heartbeat, HubToSpoke, ModelLoad, SpokeToHub, MAX_FRAME};

fn arg(name: &str) -> anyhow::Result<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .ok_or_else(|| anyhow::anyhow!("usage: instant-spoke --config FILE --id ID"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ClusterConfig::load(std::path::Path::new(&arg("--config")?))?;
    let id = arg("--id")?;
    let spec = config.spoke(&id)?.clone();
    let identity = nave_spoke::server::identity(&config, &id)?;
    let endpoint = tls::endpoint(&identity, spec.quic, &[tls::ALPN_SPOKE])?;
    let models: Arc<Vec<String>> =
        Arc::new(spec.models.iter().map(|m| nave_consensus::config::model_name(m)).collect());
    let every = Duration::from_millis(config.cluster.heartbeat_interval_ms);
    eprintln!("instant spoke {id} on {}", spec.quic);
    while let Some(incoming) = endpoint.accept().await {
        let (models, id) = (models.clone(), id.clone());
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let (models, id) = (models.clone(), id.clone());
                tokio::spawn(async move {
                    let Ok(Some(msg)) = read_frame::<HubToSpoke, _>(&mut recv, MAX_FRAME).await else { return };
                    match msg {
                        HubToSpoke::Generate { .. } => {
                            let _ = write_frame(&mut send, &SpokeToHub::Accepted).await;
                            let _ = write_frame(
                                &mut send,
                                &SpokeToHub::Event(Event::Delta {
                                    choice: 0,
                                    text: "ok".into(),
                                    tokens: vec![1],
                                    logprobs: vec![],
                                }),
                            )
                            .await;
                            let usage = Usage { prompt_tokens: 1, completion_tokens: 1, cached_tokens: 0 };
                            let _ = write_frame(
                                &mut send,
                                &SpokeToHub::Event(Event::Done { choice: 0, finish: FinishReason::Length, usage }),
                            )
                            .await;
                            let _ = send.finish();
                        }
                        HubToSpoke::Subscribe => loop {
                            let hb = Heartbeat {
                                spoke_id: id.clone(),
                                models: models
                                    .iter()
                                    .map(|m| ModelLoad { model: m.clone(), ..Default::default() })
                                    .collect(),
                                ..Default::default()
                            };
                            if write_frame(&mut send, &SpokeToHub::Heartbeat(hb)).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(every).await;
                        },
                        _ => {
                            let _ = write_frame(
                                &mut send,
                                &SpokeToHub::Refused {
                                    message: "an instant spoke only answers requests".into(),
                                    retryable: false,
                                },
                            )
                            .await;
                            let _ = send.finish();
                        }
                    }
                });
            }
        });
    }
    Ok(())
}
