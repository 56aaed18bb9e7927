//! `nave`: one binary for every role. See `nave --help` and docs/operations.md.
//!
//! # Layout
//! - [`cli`]: the arguments of every subcommand (clap), parsing only.
//! - [`up`]: `nave up`, every node of a config as a child process, supervised.
//! - `nave hub` / `nave spoke`: one node, run here by `nave_hub::run` and `nave_spoke::run`
//!   in a process set up by [`process`] (logging, runtime, signals, pid file).
//! - [`client`]: `nave admin`, `nave train` and `nave chat`, clients of a hub's HTTP API.
//! - [`bench`](mod@bench): `nave bench`, the load generator and the engine benchmark.
//! - `nave model`: the model store (`nave_inference::store`), with [`up::pull_with_progress`].

mod bench;
mod cli;
mod client;
mod process;
mod up;

use clap::Parser;
use nave_consensus::ClusterConfig;
use nave_inference::store::ModelStore;

use cli::{Cli, Cmd, ModelCmd};
use process::{runtime, runtime_with, shutdown_signal, PidFile};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let node = match &cli.command {
        Cmd::Hub { id, .. } | Cmd::Spoke { id: Some(id), .. } => id.clone(),
        Cmd::Spoke { .. } => "spoke".to_string(),
        _ => "nave".to_string(),
    };
    process::init_logging(cli.log_json, &node);
    client::set_ca_cert(cli.ca_cert.clone());
    match cli.command {
        Cmd::Up { config, only } => {
            let config = up::config_for_up(config.as_deref(), &std::env::current_dir()?)?;
            up::up(&config, only.as_deref())
        }
        Cmd::Hub { config, id } => {
            let config = ClusterConfig::load(&config)?;
            let _pid = PidFile::create(config.node_dir(&id))?;
            runtime_with(config.hub(&id)?.threads)?.block_on(nave_hub::run(config, id, shutdown_signal()))
        }
        Cmd::Spoke { config, id, join } => {
            // A spoke that joined before is found in its data directory; a joining one is
            // named after its host unless told (and the hub may then pick a free id).
            let rename_if_taken = id.is_none();
            let id = match id {
                Some(id) => id,
                None => match joined_spoke_ids(&join.data_dir).as_slice() {
                    [one] => one.clone(),
                    [] if join.join.is_some() => cli::host_spoke_id(),
                    _ => return Err(no_joined_spoke(&join.data_dir)),
                },
            };
            let joined_dir = nave_spoke::join::node_dir(&join.data_dir, &id);
            if join.join.is_some() || joined_dir.join("joined.json").exists() {
                let spec = join.spec(&id)?;
                process::engine_threads(spec.threads);
                let with = join.join.zip(join.token.clone());
                if !joined_dir.join("joined.json").exists() {
                    // A mistyped token is said before anything is pulled.
                    if let Some(t) = &join.token {
                        nave_spoke::protocol::JoinToken::parse(t).map_err(anyhow::Error::msg)?;
                    }
                    // Before the join, with a progress bar: the models it will serve.
                    let store = ModelStore::from_env();
                    for name in spec.models.iter().filter(|m| !m.ends_with(".gguf")) {
                        up::pull_with_progress(&store, name)?;
                    }
                }
                return runtime()?.block_on(async {
                    let p =
                        nave_spoke::join::prepare(&join.data_dir, spec, with, rename_if_taken, &cli::print_join_step)
                            .await?;
                    let _pid = PidFile::create(p.dir.clone())?;
                    tokio::spawn(client::announce_joined(p.joined.spoke.clone(), p.dir.clone(), p.caught_up_at));
                    nave_spoke::join::serve(p.joined, p.identity, p.dir, shutdown_signal()).await
                });
            }
            let config = ClusterConfig::load(&config)?;
            process::engine_threads(config.spoke(&id)?.threads);
            let _pid = PidFile::create(config.node_dir(&id))?;
            runtime()?.block_on(nave_spoke::run(config, id, shutdown_signal()))
        }
        Cmd::Model { command: ModelCmd::Pull { name } } => {
            let path = up::pull_with_progress(&ModelStore::from_env(), &name)?;
            println!("{name}: {}", path.display());
            Ok(())
        }
        Cmd::Model { command: ModelCmd::Add { path, name } } => {
            let rec = ModelStore::from_env().add(&path, name.as_deref())?;
            println!(
                "{}: {} {}, {} parameters, context {}, {} bytes, sha256 {}",
                rec.name,
                rec.about.architecture,
                rec.about.quantization,
                rec.about.parameters,
                rec.about.context,
                rec.size,
                rec.sha256
            );
            Ok(())
        }
        Cmd::Model { command: ModelCmd::Random { out, shape, ty, vocab_from, seed } } => {
            let shape = nave_inference::tiny::RandomShape::named(&shape).ok_or_else(|| {
                anyhow::anyhow!("unknown shape {shape:?} (known: {})", nave_inference::tiny::RandomShape::NAMES)
            })?;
            let ty = weight_type(&ty)?;
            let vocab = model_file(&vocab_from)?;
            let bar = indicatif::ProgressBar::new(shape.layers as u64).with_style(
                indicatif::ProgressStyle::with_template("writing {msg} [{bar:30}] layer {pos}/{len} {elapsed}")?,
            );
            bar.set_message(out.display().to_string());
            nave_inference::tiny::write_random_llama(&out, shape, ty.ggml(), &vocab, seed, &mut |l| {
                bar.set_position(l as u64)
            })?;
            bar.finish_and_clear();
            let info = nave_inference::gguf::GgufFile::open(&out)?;
            println!(
                "{}: {:.2}B parameters, {} MB",
                out.display(),
                info.parameter_count() as f64 / 1e9,
                std::fs::metadata(&out)?.len() / 1_000_000
            );
            Ok(())
        }
        Cmd::Model { command: ModelCmd::Tokenizer { from, out } } => {
            nave_inference::tiny::write_tokenizer_of(&out, &model_file(&from)?)?;
            println!("{}: the tokenizer of {from}, {} bytes", out.display(), std::fs::metadata(&out)?.len());
            Ok(())
        }
        Cmd::Model { command: ModelCmd::Rm { name } } => {
            ModelStore::from_env().rm(&name)?;
            println!("{name}: removed");
            Ok(())
        }
        Cmd::Model { command: ModelCmd::List } => {
            let store = ModelStore::from_env();
            println!(
                "{:<16} {:<8} {:<7} {:<6} {:>8} {:>8} {:>9}  SHA256",
                "MODEL", "PRESENT", "ARCH", "QUANT", "PARAMS", "CONTEXT", "SIZE"
            );
            for m in store.list() {
                let present = if m.present { "yes" } else { "no" };
                let (arch, quant, params, ctx) = match &m.about {
                    Some(a) => (
                        a.architecture.clone(),
                        a.quantization.clone(),
                        format!("{:.0}M", a.parameters as f64 / 1e6),
                        a.context.to_string(),
                    ),
                    None => ("-".into(), "-".into(), "-".into(), "-".into()),
                };
                println!(
                    "{:<16} {:<8} {:<7} {:<6} {:>8} {:>8} {:>6} MB  {}",
                    m.name,
                    present,
                    arch,
                    quant,
                    params,
                    ctx,
                    m.size / 1_000_000,
                    m.sha256
                );
            }
            println!("store: {}", store.root().display());
            Ok(())
        }
        Cmd::Admin { command } => runtime()?.block_on(client::admin_command(command)),
        Cmd::Bench(args) => bench::run(args),
        Cmd::Train { command } => runtime()?.block_on(client::train(command)),
        Cmd::Chat { url, model, key, max_tokens, prompt } => {
            runtime()?.block_on(client::chat(url, model, client::default_key(key)?, max_tokens, prompt))
        }
    }
}

/// The ids of the spokes that joined before into `data_dir` (each `<id>/joined.json`).
fn joined_spoke_ids(data_dir: &std::path::Path) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(data_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("joined.json").exists())
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .collect();
    found.sort();
    found
}

/// Why a spoke without --id cannot start from `data_dir`.
fn no_joined_spoke(data_dir: &std::path::Path) -> anyhow::Error {
    let found = joined_spoke_ids(data_dir);
    if found.is_empty() {
        anyhow::anyhow!(
            "--id is needed: {} holds no joined spoke (join with --join HUB_QUIC_ADDR --token TOKEN, or name a spoke of cluster.toml)",
            data_dir.display()
        )
    } else {
        anyhow::anyhow!("{} holds several joined spokes ({}): pick one with --id", data_dir.display(), found.join(", "))
    }
}

/// A model of the store (pulled if missing) or a path to a .gguf file.
fn model_file(name: &str) -> anyhow::Result<std::path::PathBuf> {
    match name.ends_with(".gguf") {
        true => Ok(name.into()),
        false => Ok(up::pull_with_progress(&ModelStore::from_env(), name)?),
    }
}

/// A weight type by its name (`q4_k`, `Q8_0`, `f16`, ...).
fn weight_type(name: &str) -> anyhow::Result<nave_inference::kernels::WeightType> {
    use nave_inference::kernels::WeightType;
    WeightType::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(name)).ok_or_else(|| {
        let known: Vec<String> = WeightType::ALL.iter().map(|t| t.name().to_lowercase()).collect();
        anyhow::anyhow!("unknown type {name:?} (known: {})", known.join(", "))
    })
}
