//! A spoke that misbehaves on command, for the hub's failure tests, and answers exactly
//! known events, for the hub's tests of what it makes of them. It speaks `nave-spoke/1`
//! with the node's real certificate and sends heartbeats like a real spoke, but answers
//! each request as its current [`Mode`] says. It runs in the test process.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nave_consensus::frame::{read_frame, write_frame};
use nave_consensus::{tls, ClusterConfig};
use nave_inference::tools::ToolCall;
use nave_inference::{Event, FinishReason, GenerateRequest, Prompt, Usage};
use nave_spoke::protocol::{Heartbeat, HubToSpoke, ModelLoad, SpokeToHub, MAX_FRAME};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Takes the request and answers "ok from <id>" in three tokens; one that offers
    /// tools (and does not end with a tool's result) gets [`CALL_TEXT`] and a call of the
    /// first tool with [`CALL_ARGUMENTS`], streamed as the engine streams a call.
    Answer,
    /// Takes the request, then fails it before any token (an engine error).
    Fail,
    /// Reads the request and never answers, while its heartbeats go on.
    Hang,
    /// Takes the request, sends one token, then goes silent until the deadline.
    StallMidStream,
    /// Takes the request, sends one token, then drops the connection (a crash).
    DieMidStream,
}

/// The text before a mock call, and its arguments in the pieces they stream in.
pub const CALL_TEXT: &str = "Let me check.";
pub const CALL_ARGUMENTS: [&str; 3] = ["{\"city\":", "\"Paris\",\"unit\":", "\"celsius\"}"];

pub struct MockSpoke {
    pub id: String,
    mode: Arc<Mutex<Mode>>,
    requests: Arc<AtomicUsize>,
    last: Arc<Mutex<Option<GenerateRequest>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl MockSpoke {
    /// Serves spoke `id` of `config` (its certificate is made from the cluster CA, which
    /// this creates if no node did yet).
    pub fn start(config: &Path, id: &str, mode: Mode) -> MockSpoke {
        let config = ClusterConfig::load(config).expect("config");
        let spec = config.spoke(id).expect("spoke in config").clone();
        let identity = nave_spoke::server::identity(&config, id).expect("identity");
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let endpoint =
            runtime.block_on(async { tls::endpoint(&identity, spec.quic, &[tls::ALPN_SPOKE]) }).expect("endpoint");
        let (mode, requests) = (Arc::new(Mutex::new(mode)), Arc::new(AtomicUsize::new(0)));
        let last = Arc::new(Mutex::new(None));
        let shared = Shared {
            id: id.to_string(),
            models: spec.models.iter().map(|m| nave_consensus::config::model_name(m)).collect(),
            every: Duration::from_millis(config.cluster.heartbeat_interval_ms),
            mode: mode.clone(),
            requests: requests.clone(),
            last: last.clone(),
        };
        runtime.spawn(accept(endpoint, Arc::new(shared)));
        MockSpoke { id: id.to_string(), mode, requests, last, runtime: Some(runtime) }
    }

    pub fn set(&self, mode: Mode) {
        *nave_consensus::sync::lock(&self.mode) = mode;
    }

    /// Generate requests received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The last generate request received.
    pub fn last_request(&self) -> Option<GenerateRequest> {
        nave_consensus::sync::lock(&self.last).clone()
    }
}

/// A cluster of one real hub and mock spokes `ids` (started in `mode`, each serving the
/// model `mock`), `extra` added to its `[cluster]` table. The cluster comes second, so
/// that a `let` of both stops the hub before its spokes.
pub fn cluster(ids: &[&str], mode: Mode, extra: &str) -> (Vec<MockSpoke>, super::Cluster) {
    use super::free_port;
    let dir = tempfile::tempdir().expect("dir");
    let (http, quic) = (free_port(), free_port());
    let mut cfg = format!(
        "[cluster]\ndata_dir = \"{}\"\n{extra}\n[[hub]]\nid = \"h1\"\nhttp = \"127.0.0.1:{http}\"\nquic = \"127.0.0.1:{quic}\"\n",
        dir.path().join("data").display()
    );
    for id in ids {
        cfg += &format!(
            "[[spoke]]\nid = \"{id}\"\nhttp = \"127.0.0.1:{}\"\nquic = \"127.0.0.1:{}\"\nmodels = [\"mock.gguf\"]\n",
            free_port(),
            free_port()
        );
    }
    let config = dir.path().join("cluster.toml");
    std::fs::write(&config, cfg).expect("config");
    let spokes = ids.iter().map(|id| MockSpoke::start(&config, id, mode)).collect();
    let child = super::launch(&config, Some("h1"));
    let key = std::fs::read_to_string(dir.path().join("data/admin.key")).expect("admin key").trim().to_string();
    let hubs = vec![format!("http://127.0.0.1:{http}")];
    let cluster = super::Cluster { config, dir, child: Some(child), key, hubs, hub_quic: vec![], spokes: vec![] };
    (spokes, cluster)
}

impl Drop for MockSpoke {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

struct Shared {
    id: String,
    models: Vec<String>,
    every: Duration,
    mode: Arc<Mutex<Mode>>,
    requests: Arc<AtomicUsize>,
    last: Arc<Mutex<Option<GenerateRequest>>>,
}

async fn accept(endpoint: quinn::Endpoint, s: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let s = s.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(stream(conn.clone(), send, recv, s.clone()));
            }
        });
    }
}

async fn stream(conn: quinn::Connection, mut send: quinn::SendStream, mut recv: quinn::RecvStream, s: Arc<Shared>) {
    let Ok(Some(msg)) = read_frame::<HubToSpoke, _>(&mut recv, MAX_FRAME).await else { return };
    let delta = |text: &str| {
        SpokeToHub::Event(Event::Delta { choice: 0, text: text.to_string(), tokens: vec![1], logprobs: vec![] })
    };
    match msg {
        HubToSpoke::Generate { request, .. } => {
            s.requests.fetch_add(1, Ordering::SeqCst);
            *nave_consensus::sync::lock(&s.last) = Some(request.clone());
            let mode = *nave_consensus::sync::lock(&s.mode);
            if mode == Mode::Hang {
                // Bounded: the runtime is dropped with the test anyway.
                tokio::time::sleep(Duration::from_secs(600)).await;
                return;
            }
            let _ = write_frame(&mut send, &SpokeToHub::Accepted).await;
            let answered = matches!(&request.prompt, Prompt::Chat(m) if m.last().is_some_and(|m| m.role == "tool"));
            let tool = request.params.tools.as_ref().and_then(|t| t.defs.first()).filter(|_| !answered);
            match (mode, tool) {
                (Mode::Answer, None) => {
                    for t in ["ok ", "from ", s.id.as_str()] {
                        let _ = write_frame(&mut send, &delta(t)).await;
                    }
                    let usage = Usage { prompt_tokens: 1, completion_tokens: 3, cached_tokens: 0 };
                    let _ = write_frame(
                        &mut send,
                        &SpokeToHub::Event(Event::Done { choice: 0, finish: FinishReason::Stop, usage }),
                    )
                    .await;
                    let _ = send.finish();
                }
                (Mode::Answer, Some(tool)) => {
                    let (id, name) = (format!("call_{}", s.id), tool.name.clone());
                    let mut events = vec![delta(CALL_TEXT), delta("")];
                    events.push(SpokeToHub::Event(Event::ToolCallStart {
                        choice: 0,
                        index: 0,
                        id: id.clone(),
                        name: name.clone(),
                    }));
                    for piece in CALL_ARGUMENTS {
                        events.push(delta(""));
                        events.push(SpokeToHub::Event(Event::ToolCallArguments {
                            choice: 0,
                            index: 0,
                            arguments: piece.into(),
                        }));
                    }
                    let call = ToolCall { id, name, arguments: CALL_ARGUMENTS.concat() };
                    events.push(SpokeToHub::Event(Event::ToolCall { choice: 0, index: 0, call }));
                    let usage = Usage { prompt_tokens: 1, completion_tokens: 5, cached_tokens: 0 };
                    events.push(SpokeToHub::Event(Event::Done { choice: 0, finish: FinishReason::ToolCalls, usage }));
                    for e in events {
                        let _ = write_frame(&mut send, &e).await;
                    }
                    let _ = send.finish();
                }
                (Mode::Fail, _) => {
                    let _ = write_frame(
                        &mut send,
                        &SpokeToHub::Event(Event::Error {
                            message: format!("{} failed on purpose", s.id),
                            client: false,
                        }),
                    )
                    .await;
                    let _ = send.finish();
                }
                (Mode::StallMidStream, _) => {
                    let _ = write_frame(&mut send, &delta("partial")).await;
                    tokio::time::sleep(Duration::from_secs(600)).await;
                }
                (Mode::DieMidStream, _) => {
                    let _ = write_frame(&mut send, &delta("partial")).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    conn.close(quinn::VarInt::from_u32(1), b"crash");
                }
                (Mode::Hang, _) => {}
            }
        }
        HubToSpoke::Subscribe => loop {
            let models = s.models.iter().map(|m| ModelLoad { model: m.clone(), ..Default::default() }).collect();
            let hb = Heartbeat { spoke_id: s.id.clone(), models, ..Default::default() };
            if write_frame(&mut send, &SpokeToHub::Heartbeat(hb)).await.is_err() {
                return;
            }
            tokio::time::sleep(s.every).await;
        },
        _ => {
            let _ = write_frame(
                &mut send,
                &SpokeToHub::Refused { message: "a mock spoke only answers requests".into(), retryable: false },
            )
            .await;
            let _ = send.finish();
        }
    }
}
