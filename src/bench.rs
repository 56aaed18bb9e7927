//! `nave bench`: the load generator against any OpenAI-compatible endpoint, and `nave bench
//! engine`, the engine in-process beside llama.cpp (both in the `nave-bench` crate; this
//! turns their flags into its arguments).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::cli::{BenchArgs, BenchCmd};

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args {
        BenchArgs {
            command: None,
            url,
            model,
            key,
            concurrency,
            rate,
            requests,
            prompt_len,
            max_tokens,
            seed,
            prompts,
            compare,
            config,
            json,
            timeout,
        } => {
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
                        .map(|(i, l)| {
                            serde_json::from_str(l).with_context(|| format!("{} line {}: not JSON", p.display(), i + 1))
                        })
                        .collect::<anyhow::Result<Vec<serde_json::Value>>>()?,
                ),
            };
            if rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
                anyhow::bail!("--rate must be a positive number of requests per second");
            }
            let args = nave_bench::load::LoadArgs {
                url,
                model,
                key,
                concurrency,
                rate,
                requests,
                prompt_len,
                max_tokens,
                seed,
                prompts,
                timeout: Duration::from_secs(timeout),
                config: config
                    .or_else(|| crate::up::find_config(Path::new(".")))
                    .unwrap_or_else(|| "cluster.toml".into()),
            };
            let reports = crate::process::runtime()?.block_on(nave_bench::load::run(args, compare))?;
            nave_bench::load::print(&reports);
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&reports)?)?;
            }
            Ok(())
        }
        BenchArgs {
            command:
                Some(BenchCmd::Engine { model, threads, concurrency, prompt_tokens, decode_tokens, no_peer, json, device }),
            ..
        } => {
            let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
            std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
            let b = nave_bench::engine::EngineBench {
                model,
                threads,
                concurrency,
                prompt_tokens,
                decode_tokens,
                peer: !no_peer,
                device,
            };
            let report = nave_bench::engine::run(&b)?;
            nave_bench::engine::print(&report);
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
            }
            Ok(())
        }
    }
}
