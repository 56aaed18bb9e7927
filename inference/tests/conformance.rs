//! Every architecture Nave runs computes the same function as llama.cpp, the reference
//! implementation of GGUF: for each family of [`Family`], a small model of that family
//! (its real tensor names and metadata, random seeded weights, the real vocabulary of
//! SmolLM2 or Gemma 3) is written here byte for byte as scripts/llamacpp_conformance.py
//! wrote it for llama.cpp, and Nave must give
//! - the same greedy token at each of 32 steps after each prompt (with llama.cpp's own
//!   tokens fed back, so one flip cannot hide the steps after it), and the same 32 tokens
//!   through the engine's batched scheduler;
//! - the probabilities of llama.cpp's five likeliest tokens at every step within
//!   [`PROB_TOLERANCE`].
//!
//! The reference (`data/conformance_llamacpp.json`) was written by llama.cpp (PyPI
//! xllamacpp) with an f32 KV cache and flash attention off, so both sides keep keys and
//! values in f32; it records each file's sha256, which is checked first: a changed writer
//! means the reference must be written again (`scripts/llamacpp_conformance.py`).

use std::path::{Path, PathBuf};

use nave_inference::engine::collect;
use nave_inference::model::Row;
use nave_inference::store::ModelStore;
use nave_inference::tiny::{write_family_model, Family};
use nave_inference::*;
use sha2::Digest;

/// Largest difference allowed between Nave's and llama.cpp's probability of any of
/// llama.cpp's five likeliest tokens at any step. Measured on 2026-12-01 (AVX2): at most
/// 3.3e-4 (Phi-3), 1.2e-4 or less for the others, 9.5e-5 with Q8_0 weights (Llama 3):
/// the two differ only in summation order and in where activations round to 8 bits.
const PROB_TOLERANCE: f64 = 1e-3;
const SEED: u64 = 17;

fn vocab_source(family: Family) -> PathBuf {
    ModelStore::from_env()
        .ensure(family.vocab_model(), &mut |_| {})
        .expect("the model lending its vocabulary is in the store or can be pulled")
}

fn write(family: Family, dir: &Path) -> PathBuf {
    let path = dir.join(format!("{}.gguf", family.name()));
    write_family_model(&path, family, &vocab_source(family), SEED).expect("family model written");
    path
}

/// Writes every family's file into `NAVE_CONFORMANCE_DIR` for the llama.cpp side
/// (scripts/llamacpp_conformance.py runs this first).
#[test]
#[ignore]
fn write_family_models_for_llama_cpp() {
    let dir = PathBuf::from(std::env::var("NAVE_CONFORMANCE_DIR").expect("NAVE_CONFORMANCE_DIR is set"));
    std::fs::create_dir_all(&dir).expect("output folder");
    for family in Family::ALL {
        println!("{}", write(family, &dir).display());
    }
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("an array of ids").iter().map(|t| t.as_u64().expect("an id") as u32).collect()
}

fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f64 = logits.iter().map(|l| ((l - max) as f64).exp()).sum();
    logits.iter().map(|l| ((l - max) as f64).exp() / z).collect()
}

fn argmax(logits: &[f32]) -> u32 {
    (0..logits.len()).max_by(|a, b| logits[*a].total_cmp(&logits[*b])).expect("a vocabulary") as u32
}

#[test]
fn every_family_matches_llama_cpp() {
    conforms(LoadOptions::default);
}

/// The device seam's path (candle's tensor operations, what a CUDA spoke runs), here on
/// candle's CPU device: the same file must give llama.cpp's tokens and probabilities too.
#[test]
fn every_family_matches_llama_cpp_on_the_candle_path() {
    conforms(|| LoadOptions { device: Some(candle_core::Device::Cpu), threads: Some(2), ..Default::default() });
}

fn conforms(opts: impl Fn() -> LoadOptions) {
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("data/conformance_llamacpp.json")).expect("reference parses");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut report = Vec::new();
    for family in Family::ALL {
        let name = family.name();
        let want = &reference["families"][name];
        assert!(want.is_object(), "no llama.cpp reference for {name}");
        let path = write(family, dir.path());
        let sha = hex::encode(sha2::Sha256::digest(std::fs::read(&path).expect("read back")));
        assert_eq!(
            sha,
            want["sha256"].as_str().expect("sha256"),
            "{name}: the writer changed; run scripts/llamacpp_conformance.py again"
        );
        let model = LoadedModel::load(name, &path, opts()).expect("loads");
        assert_eq!(model.transformer.config.arch, family.arch());
        let (mut worst, mut steps) = (0.0f64, 0);
        let cases = want["cases"].as_array().expect("cases");
        for case in cases {
            let prompt = ids(&case["prompt"]);
            let tokens = ids(&case["tokens"]);
            let top5 = case["top5"].as_array().expect("top5");
            assert_eq!(tokens.len(), top5.len());
            let len = prompt.len() + tokens.len();
            let mut kv = model.transformer.new_kv(len.div_ceil(16), 16).expect("KV store");
            let blocks: Vec<u32> = (0..len.div_ceil(16) as u32).collect();
            let row = |token: u32, pos: usize, logits: bool| Row {
                token,
                pos,
                blocks: &blocks,
                logits,
                hidden: false,
                adapter: None,
            };
            let rows: Vec<Row<'_>> =
                prompt.iter().enumerate().map(|(p, &t)| row(t, p, p + 1 == prompt.len())).collect();
            let mut logits = model.transformer.forward(&rows, &mut kv).expect("prefill").pop().expect("logits");
            for (step, (&next, top)) in tokens.iter().zip(top5).enumerate() {
                let probs = softmax(&logits);
                // Null where llama.cpp's server left a step's probabilities out.
                for t in top.as_array().into_iter().flatten() {
                    let (id, p) = (t[0].as_u64().expect("id") as usize, t[1].as_f64().expect("p"));
                    let d = (probs[id] - p).abs();
                    worst = worst.max(d);
                    assert!(d <= PROB_TOLERANCE, "{name} step {step}: token {id} p {} vs llama.cpp {p}", probs[id]);
                }
                assert_eq!(argmax(&logits), next, "{name} step {step}: greedy token differs from llama.cpp's");
                steps += 1;
                let pos = prompt.len() + step;
                logits = model.transformer.forward(&[row(next, pos, true)], &mut kv).expect("decode").pop().expect("l");
            }
        }
        // The engine (scheduler, paged KV, batched rows) gives the same continuations.
        let engine = Engine::start(model, EngineConfig::default(), &Ledger::new("cpu", 1 << 30, 0)).expect("starts");
        let streams: Vec<_> = cases
            .iter()
            .map(|case| {
                let n = ids(&case["tokens"]).len();
                engine
                    .submit(GenerateRequest {
                        request_id: name.into(),
                        prompt: Prompt::Tokens(ids(&case["prompt"])),
                        params: SamplingParams { ignore_eos: true, ..SamplingParams::greedy(n) },
                    })
                    .expect("queued")
            })
            .collect();
        for (case, s) in cases.iter().zip(streams) {
            assert_eq!(collect(s).expect("generates").1, ids(&case["tokens"]), "{name}: engine continuation");
        }
        report.push(format!("{name}: {steps} steps equal, top-5 probabilities within {worst:.1e}"));
    }
    println!("{}", report.join("\n"));
}
