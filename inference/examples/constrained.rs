//! Constrained against unconstrained decoding on SmolLM2-135M: output tokens per second
//! at 1 and 16 concurrent sequences, sampled (temperature 1, seeded), the constrained
//! ones held to a JSON schema with nested objects, enums, arrays and bounded strings.
//! Also the grammar's own cost: the mean time of one token mask.
//!
//! `cargo run --release -p nave-inference --example constrained [THREADS]`

use std::time::Instant;

use nave_inference::engine::collect_all;
use nave_inference::grammar::{Constraint, Grammars};
use nave_inference::store::ModelStore;
use nave_inference::*;

/// The schema, shared with the llama.cpp script (scripts/llamacpp_constrained.py).
const SCHEMA: &str = include_str!("constrained_schema.json");

fn main() -> Result<()> {
    let threads: Option<usize> = std::env::args().nth(1).and_then(|t| t.parse().ok());
    let path = ModelStore::from_env().ensure("smollm2-135m", &mut |_| {})?;
    let model = LoadedModel::load("smollm2-135m", &path, LoadOptions { threads, ..Default::default() })?;
    let (isa, pool_threads) = model.transformer.kernels();
    println!("kernels: {isa:?}, threads {pool_threads}");
    let started = Instant::now();
    let grammars = Grammars::new(&model.tokenizer)?;
    println!("grammar compiler built in {:.0} ms", started.elapsed().as_secs_f64() * 1e3);
    let ledger = Ledger::new("cpu", 2 << 30, 0);
    let engine = Engine::start(model, EngineConfig { kv_pool_bytes: 256 << 20, ..Default::default() }, &ledger)?;
    let constraint = Constraint::JsonSchema(SCHEMA.into());
    let run = |concurrent: usize, constrained: bool| -> Result<(f64, usize)> {
        let started = Instant::now();
        let streams: Vec<_> = (0..concurrent)
            .map(|i| {
                let params = SamplingParams {
                    temperature: 1.0,
                    seed: Some(i as u64 + 1),
                    // Unconstrained: the same length budget, run to it.
                    max_tokens: if constrained { 256 } else { 64 },
                    ignore_eos: !constrained,
                    constraint: constrained.then(|| constraint.clone()),
                    ..Default::default()
                };
                let prompt = Prompt::Chat(vec![ChatMessage::new("user", "Describe a person as JSON.")]);
                engine.submit(GenerateRequest { request_id: format!("b{i}"), prompt, params })
            })
            .collect::<Result<_>>()?;
        let mut tokens = 0;
        for s in streams {
            tokens += collect_all(s)?.1.iter().map(|c| c.usage.completion_tokens).sum::<usize>();
        }
        Ok((tokens as f64 / started.elapsed().as_secs_f64(), tokens))
    };
    run(4, true)?; // warm up: pages, the grammar compiler's caches
    println!("| concurrent | unconstrained tok/s | constrained tok/s | ratio |");
    println!("| ---: | ---: | ---: | ---: |");
    for c in [1, 16] {
        let (free, _) = run(c, false)?;
        let (held, n) = run(c, true)?;
        println!("| {c} | {free:.1} | {held:.1} ({n} tokens) | {:.2} |", held / free);
    }

    // One mask at a time, as the engine computes them, over a valid output's tokens.
    let sample = r#"{"name":"Ada","age":36,"role":"admin","address":{"city":"London","zip":"12345"},"tags":["red","blue"],"active":true}"#;
    let tok = tokenizer::TextTokenizer::from_path(&path)?;
    let ids: Vec<u32> = tok.encode(sample)?.into_iter().filter(|&t| !tok.is_control(t)).collect();
    let mut logits = vec![0.0f32; tok.vocab_size()];
    let mut total = 0.0;
    let rounds = 20;
    for _ in 0..rounds {
        let mut guide = grammars.guides(&constraint, 1)?.remove(0);
        for &t in &ids {
            let started = Instant::now();
            guide.mask(&mut logits)?;
            total += started.elapsed().as_secs_f64();
            guide.advance(t)?;
        }
    }
    println!(
        "mask: {:.1} us per token (mean of {} masks)",
        total / (rounds * ids.len()) as f64 * 1e6,
        rounds * ids.len()
    );
    Ok(())
}
