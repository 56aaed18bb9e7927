//! The real models from the model store (pulled on first use: `.ci/run` pulls them
//! before the tests): SmolLM2 (Llama) and Gemma 3. Greedy answers, seeded sampling,
//! batching and the prefix cache.

use std::path::PathBuf;

use nave_inference::engine::collect;
use nave_inference::store::ModelStore;
use nave_inference::*;

fn model_path() -> PathBuf {
    ModelStore::from_env()
        .ensure("smollm2-135m", &mut |_| {})
        .expect("the smollm2-135m model is in the store or can be pulled")
}

fn engine() -> Engine {
    let model = LoadedModel::load("smollm2-135m", model_path(), LoadOptions::default()).expect("model loads");
    let ledger = Ledger::new("cpu", 2 << 30, 0);
    Engine::start(model, EngineConfig { kv_pool_bytes: 64 << 20, ..Default::default() }, &ledger)
        .expect("engine starts")
}

fn chat(q: &str, params: SamplingParams) -> GenerateRequest {
    GenerateRequest {
        request_id: "test".into(),
        prompt: Prompt::Chat(vec![
            ChatMessage::new("system", "You are a helpful assistant."),
            ChatMessage::new("user", q),
        ]),
        params,
    }
}

#[test]
fn greedy_answer_names_paris() {
    let e = engine();
    let (text, _, finish, usage) =
        collect(e.submit(chat("What is the capital of France?", SamplingParams::greedy(32))).expect("queued"))
            .expect("answer");
    println!("answer: {text:?} {finish:?} {usage:?}");
    assert!(text.contains("Paris"), "{text}");
    assert_eq!(finish, FinishReason::Stop);
    assert!(usage.prompt_tokens > 10 && usage.completion_tokens > 0);
}

#[test]
fn seeded_sampling_repeats_and_batching_matches_alone() {
    let e = engine();
    let sampled =
        SamplingParams { temperature: 0.9, top_p: 0.95, seed: Some(1234), max_tokens: 24, ..Default::default() };
    let a = collect(e.submit(chat("Tell me a story.", sampled.clone())).expect("queued")).expect("a");
    let b = collect(e.submit(chat("Tell me a story.", sampled)).expect("queued")).expect("b");
    assert_eq!(a.1, b.1, "the same seed gives the same tokens");

    // Greedy alone, then the same prompts batched together: the same tokens.
    let qs = ["Name a color.", "What is 2+2?", "Say hello in French.", "What is the capital of Italy?"];
    let alone: Vec<_> = qs
        .iter()
        .map(|q| collect(e.submit(chat(q, SamplingParams::greedy(16))).expect("queued")).expect("alone").1)
        .collect();
    let streams: Vec<_> = qs.iter().map(|q| e.submit(chat(q, SamplingParams::greedy(16))).expect("queued")).collect();
    let batched: Vec<_> = streams.into_iter().map(|s| collect(s).expect("batched").1).collect();
    assert_eq!(alone, batched);
    let stats = e.stats();
    assert!(stats.cached_tokens > 0, "the shared system prompt came from the prefix cache: {stats:?}");
}

/// Gemma 3 270M (the base model, no chat template: a completion), through the same
/// batched forward pass: GELU, q/k norms, post norms, the 512-token sliding window.
#[test]
fn gemma_completes_a_fact_alone_and_batched() {
    let path = ModelStore::from_env()
        .ensure("gemma3-270m", &mut |_| {})
        .expect("the gemma3-270m model is in the store or can be pulled");
    let model = LoadedModel::load("gemma3-270m", path, LoadOptions::default()).expect("model loads");
    let ledger = Ledger::new("cpu", 2 << 30, 0);
    let e = Engine::start(model, EngineConfig { kv_pool_bytes: 64 << 20, ..Default::default() }, &ledger)
        .expect("engine starts");
    let req = |p: &str| GenerateRequest {
        request_id: "gemma".into(),
        prompt: Prompt::Text(p.into()),
        params: SamplingParams::greedy(8),
    };
    let prompts =
        ["The capital of France is", "The largest planet in the solar system is", "Water is made of hydrogen and"];
    let alone: Vec<String> =
        prompts.iter().map(|p| collect(e.submit(req(p)).expect("queued")).expect("answer").0).collect();
    println!("gemma: {alone:?}");
    // llama.cpp on the same file, greedy (2026-11-22): " the capital of the country of
    // France." and " oxygen.\n\nWater is a liquid at" (the 270M base model is no oracle).
    assert!(alone[0].starts_with(" the capital of the country of France"), "{:?}", alone[0]);
    assert!(alone[2].starts_with(" oxygen."), "{:?}", alone[2]);
    let streams: Vec<_> = prompts.iter().map(|p| e.submit(req(p)).expect("queued")).collect();
    let batched: Vec<String> = streams.into_iter().map(|s| collect(s).expect("batched").0).collect();
    assert_eq!(alone, batched, "batched rows give the tokens they give alone");
}

/// The same file through Nave and through llama.cpp (its default server setup; reference
/// written by scripts/llamacpp_greedy.py with PyPI xllamacpp) on ten chat prompts:
/// - the next-token distribution after each prompt agrees: each of llama.cpp's five
///   likeliest tokens has Nave's probability within 0.05 of llama.cpp's, and both pick
///   the same first token for at least 9 of 10 prompts. (Both quantize activations to
///   8 bits per block; a summation order that differs anywhere flips some roundings, and
///   after 30 layers that moves these probabilities by a few hundredths: Nave's scalar
///   and AVX2 paths differ from each other, and from an f32 product of the dequantized
///   weights, by as much as either differs from llama.cpp);
/// - greedy continuations agree over all 32 tokens for some prompts, and the figures are
///   printed. Token for token over 32 steps this model is chaotic: the scalar and AVX2
///   paths of Nave (one algorithm, two summation orders) part ways on some prompts, and
///   so do llama.cpp with its f16 KV cache and with an f32 one (3 of 10 agree fully,
///   docs/performance.md), so no implementation with its own summation order can pass
///   9 of 10; this asserts what holds for every path.
#[test]
fn next_token_probabilities_match_llama_cpp_on_the_same_file() {
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("data/smollm2_greedy_llamacpp.json")).expect("reference parses");
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array().expect("an array of ids").iter().map(|t| t.as_u64().expect("an id") as u32).collect()
    };
    let model = LoadedModel::load("smollm2-135m", model_path(), LoadOptions::default()).expect("model loads");
    let c = model.transformer.config.clone();
    let cases = reference["cases"].as_array().expect("cases");
    let (mut first_same, mut worst) = (0, 0.0f64);
    for case in cases {
        let prompt = ids(&case["prompt"]);
        let mut kv = nave_inference::kv::KvStore::new(c.layers, prompt.len().div_ceil(16), 16, c.kv_dim());
        let blocks: Vec<u32> = (0..prompt.len().div_ceil(16) as u32).collect();
        let rows: Vec<_> = prompt
            .iter()
            .enumerate()
            .map(|(p, &t)| nave_inference::model::Row {
                token: t,
                pos: p,
                blocks: &blocks,
                logits: p + 1 == prompt.len(),
                hidden: false,
                adapter: None,
            })
            .collect();
        let logits = model.transformer.forward(&rows, &mut kv).expect("forward").pop().expect("logits");
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let z: f64 = logits.iter().map(|l| ((l - max) as f64).exp()).sum();
        let prob = |t: usize| ((logits[t] - max) as f64).exp() / z;
        let best = (0..logits.len()).max_by(|a, b| logits[*a].total_cmp(&logits[*b])).expect("a vocabulary");
        let top5 = case["top5"].as_array().expect("top5");
        first_same += usize::from(best as u64 == top5[0][0].as_u64().expect("id"));
        for t in top5 {
            let (id, p) = (t[0].as_u64().expect("id") as usize, t[1].as_f64().expect("p"));
            worst = worst.max((prob(id) - p).abs());
            assert!((prob(id) - p).abs() <= 0.05, "{:?}: token {id} p {} vs llama.cpp {p}", case["question"], prob(id));
        }
    }
    println!("first token as llama.cpp's for {first_same} of {}; top-5 probabilities within {worst:.3}", cases.len());
    assert!(first_same >= 9, "the first token differs from llama.cpp's for {} prompts", cases.len() - first_same);
    let e = engine();
    let (mut same, mut agreeing) = (0, 0);
    for (i, case) in cases.iter().enumerate() {
        let want = ids(&case["tokens"]);
        let req = GenerateRequest {
            request_id: format!("llama-cpp-{i}"),
            prompt: Prompt::Tokens(ids(&case["prompt"])),
            params: SamplingParams { ignore_eos: true, ..SamplingParams::greedy(want.len()) },
        };
        let got = collect(e.submit(req).expect("queued")).expect("answer").1;
        let agree = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        println!("{:?}: {agree}/{} greedy tokens agree with llama.cpp", case["question"], want.len());
        agreeing += agree;
        same += usize::from(got == want);
    }
    println!(
        "{same} of {} continuations equal llama.cpp's; {agreeing} tokens agree before the first difference",
        cases.len()
    );
    assert!(same >= 1 && agreeing >= cases.len() * 6, "{same} equal, {agreeing} agreeing tokens");
}

/// Batched decode gives the same tokens as one sequence at a time, on every kernel path
/// this CPU runs (the scalar reference included).
#[test]
fn batched_decode_equals_alone_on_every_path() {
    for isa in nave_inference::kernels::Isa::available() {
        let model =
            LoadedModel::load("smollm2-135m", model_path(), LoadOptions { isa: Some(isa), ..Default::default() })
                .expect("model loads");
        let ledger = Ledger::new("cpu", 2 << 30, 0);
        let e = Engine::start(model, EngineConfig { kv_pool_bytes: 64 << 20, ..Default::default() }, &ledger)
            .expect("engine starts");
        // The last is longer than an attention piece (256 positions): attended in pieces,
        // split across the threads, merged.
        let long = format!("Summarize this: {}", "The quick brown fox jumps over the lazy dog. ".repeat(40));
        let qs = ["Name a color.", "What is 2+2?", "Say hello in French.", long.as_str()];
        let alone: Vec<_> = qs
            .iter()
            .map(|q| collect(e.submit(chat(q, SamplingParams::greedy(8))).expect("queued")).expect("alone").1)
            .collect();
        let streams: Vec<_> =
            qs.iter().map(|q| e.submit(chat(q, SamplingParams::greedy(8))).expect("queued")).collect();
        let batched: Vec<_> = streams.into_iter().map(|s| collect(s).expect("batched").1).collect();
        assert_eq!(alone, batched, "{} path", isa.name());
    }
}
