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
use process::{runtime, shutdown_signal, PidFile};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let node = match &cli.command {
        Cmd::Hub { id, .. } | Cmd::Spoke { id, .. } => id.clone(),
        _ => "nave".to_string(),
    };
    process::init_logging(cli.log_json, &node);
    match cli.command {
        Cmd::Up { config, only } => {
            let config = up::config_for_up(config.as_deref(), &std::env::current_dir()?)?;
            up::up(&config, only.as_deref())
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
                process::engine_threads(spec.threads);
                let _pid = PidFile::create(joined_dir)?;
                let with = join.join.zip(join.token.clone());
                return runtime()?.block_on(nave_spoke::join::run_joined(
                    &join.data_dir,
                    spec,
                    with,
                    shutdown_signal(),
                ));
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
        Cmd::Model { command: ModelCmd::List } => {
            let store = ModelStore::from_env();
            println!("{:<14} {:<8} {:>9}  DESCRIPTION", "MODEL", "PRESENT", "SIZE");
            for m in store.list() {
                let present = if m.present { "yes" } else { "no" };
                println!("{:<14} {:<8} {:>6} MB  {}", m.name, present, m.size / 1_000_000, m.description);
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
