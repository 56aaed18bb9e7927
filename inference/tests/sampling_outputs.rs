//! What a request can ask of the sampler beside tokens, on the tiny random-weight model:
//! log-probabilities of the generated and the prompt's tokens equal a log-softmax
//! computed here from the model's own logits, `n` choices share one prefill through the
//! prefix cache and sample with `seed + index`, and `logit_bias` moves the choice.

use std::path::PathBuf;

use nave_inference::engine::{collect, collect_all};
use nave_inference::kv::KvStore;
use nave_inference::model::Row;
use nave_inference::tiny::{write_tiny_model, TinyArch};
use nave_inference::*;

fn tiny() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tiny.gguf");
    write_tiny_model(&path, TinyArch::Llama, 7).expect("tiny model written");
    (dir, path)
}

fn engine(path: &PathBuf, config: EngineConfig) -> Engine {
    let model = LoadedModel::load("tiny", path, LoadOptions::default()).expect("loads");
    Engine::start(model, config, &Ledger::new("cpu", 1 << 30, 0)).expect("starts")
}

fn request(prompt: &[u32], params: SamplingParams) -> GenerateRequest {
    GenerateRequest { request_id: "t".into(), prompt: Prompt::Tokens(prompt.to_vec()), params }
}

/// The log-softmax after every position of `tokens`, from one forward pass of its own.
fn log_softmax_rows(path: &PathBuf, tokens: &[u32]) -> Vec<Vec<f64>> {
    let model = LoadedModel::load("tiny", path, LoadOptions::default()).expect("loads");
    let c = model.transformer.config.clone();
    let nblocks = tokens.len().div_ceil(16);
    let mut kv = KvStore::new(c.layers, nblocks, 16, c.kv_dim());
    let blocks: Vec<u32> = (0..nblocks as u32).collect();
    let rows: Vec<_> = tokens
        .iter()
        .enumerate()
        .map(|(p, &token)| Row { token, pos: p, blocks: &blocks, logits: true, hidden: false, adapter: None })
        .collect();
    let logits = model.transformer.forward(&rows, &mut kv).expect("forward");
    logits
        .into_iter()
        .map(|l| {
            let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let z: f64 = l.iter().map(|&x| (x as f64 - max).exp()).sum();
            l.iter().map(|&x| x as f64 - max - z.ln()).collect()
        })
        .collect()
}

const PROMPT: &[u32] =
    &[116, 104, 101, 32, 99, 97, 116, 32, 115, 97, 116, 32, 111, 110, 32, 116, 104, 101, 32, 109, 97, 116];

#[test]
fn logprobs_are_the_log_softmax_of_the_models_logits() {
    let (_d, path) = tiny();
    // Small steps: the prompt is prefilled in chunks, so its log-probabilities come in
    // several events.
    let e = engine(&path, EngineConfig { max_batch_tokens: 5, ..Default::default() });
    let params =
        SamplingParams { logprobs: Some(5), prompt_logprobs: true, ignore_eos: true, ..SamplingParams::greedy(10) };
    let (prompt, choices) = collect_all(e.submit(request(PROMPT, params)).expect("queued")).expect("runs");
    let c = &choices[0];
    assert_eq!(c.tokens.len(), 10);
    assert_eq!(c.logprobs.len(), 10, "one per generated token");
    let all: Vec<u32> = PROMPT.iter().chain(&c.tokens).copied().collect();
    let want = log_softmax_rows(&path, &all);

    // The prompt: the first token has none, token p has the logits after p - 1.
    assert_eq!(prompt.len(), PROMPT.len());
    assert_eq!(prompt[0].logprob, None);
    for (p, lp) in prompt.iter().enumerate().skip(1) {
        assert_eq!(lp.token, PROMPT[p]);
        let got = lp.logprob.expect("a prompt token after the first has a logprob") as f64;
        assert!(
            (got - want[p - 1][PROMPT[p] as usize]).abs() < 1e-3,
            "prompt token {p}: {got} vs {}",
            want[p - 1][PROMPT[p] as usize]
        );
        assert_eq!(lp.top.len(), 5);
    }
    // The generated tokens: the greedy token is the most likely, the alternatives are in
    // order and their probabilities sum to at most 1.
    for (i, lp) in c.logprobs.iter().enumerate() {
        let row = &want[PROMPT.len() - 1 + i];
        assert_eq!(lp.token, c.tokens[i]);
        let got = lp.logprob.expect("generated tokens have logprobs") as f64;
        assert!((got - row[lp.token as usize]).abs() < 1e-3, "token {i}: {got} vs {}", row[lp.token as usize]);
        assert_eq!(lp.top[0].token, lp.token, "greedy takes the most likely token");
        assert!(lp.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        let mass: f64 = lp.top.iter().map(|t| (t.logprob as f64).exp()).sum();
        assert!(mass <= 1.0 + 1e-6, "{mass}");
        for t in &lp.top {
            assert!((t.logprob as f64 - row[t.token as usize]).abs() < 1e-3);
        }
        // The tiny model's first 256 ids are the bytes themselves (byte-level alphabet).
        if lp.token < 256 {
            assert_eq!(lp.bytes, vec![lp.token as u8]);
        }
    }
    // Without asking, none.
    let (prompt, choices) =
        collect_all(e.submit(request(PROMPT, SamplingParams::greedy(4))).expect("q")).expect("runs");
    assert!(prompt.is_empty() && choices[0].logprobs.is_empty());
}

#[test]
fn n_choices_prefill_the_prompt_once_and_sample_with_their_own_seeds() {
    let (_d, path) = tiny();
    let e = engine(&path, EngineConfig::default());
    let prompt: Vec<u32> = PROMPT.iter().chain(PROMPT).copied().collect(); // 44 tokens: 2 full blocks of 16 cached
    let hot = SamplingParams {
        temperature: 4.0,
        seed: Some(40),
        n: 3,
        ignore_eos: true,
        max_tokens: 12,
        ..Default::default()
    };
    let before = e.stats();
    let (_, choices) = collect_all(e.submit(request(&prompt, hot.clone())).expect("queued")).expect("runs");
    assert_eq!(choices.len(), 3);
    let after = e.stats();
    assert_eq!(after.prompt_tokens - before.prompt_tokens, prompt.len() as u64, "the prompt is counted once");
    let cached: Vec<usize> = choices.iter().map(|c| c.usage.cached_tokens).collect();
    assert_eq!(cached, vec![0, 32, 32], "choices after the first take the prompt's full blocks from the cache");
    assert_eq!(after.cached_tokens - before.cached_tokens, 64);
    assert!(choices.iter().all(|c| c.usage.prompt_tokens == prompt.len() && c.usage.completion_tokens == 12));
    // Choice i samples as a lone request with seed + i would.
    for (i, c) in choices.iter().enumerate() {
        let alone = SamplingParams { n: 1, seed: Some(40 + i as u64), ..hot.clone() };
        let (_, ids, _, _) = collect(e.submit(request(&prompt, alone)).expect("q")).expect("alone");
        assert_eq!(c.tokens, ids, "choice {i}");
    }
    assert!(choices[0].tokens != choices[1].tokens || choices[1].tokens != choices[2].tokens, "seeds differ");
    // With log-probabilities of the prompt, the first choice sends them once; the others
    // still share its blocks.
    let asked = SamplingParams { n: 2, prompt_logprobs: true, logprobs: Some(0), ..SamplingParams::greedy(3) };
    let (lp, choices) = collect_all(e.submit(request(&prompt, asked)).expect("q")).expect("runs");
    assert_eq!(lp.len(), prompt.len());
    assert_eq!(choices[0].tokens, choices[1].tokens, "greedy choices agree");
    // Its two full blocks, and the first 11 tokens of the third from the earlier
    // requests' (the prompt's last 12 then what they generated): all but the last token.
    assert_eq!(choices[1].usage.cached_tokens, 43);
}

#[test]
fn a_prompt_that_starts_like_a_cached_block_computes_only_the_rest() {
    let (_d, path) = tiny();
    let e = engine(&path, EngineConfig::default());
    let first: Vec<u32> = PROMPT.iter().chain(PROMPT).copied().collect();
    collect(e.submit(request(&first, SamplingParams::greedy(4))).expect("q")).expect("first");
    // The same first 16 + 5 tokens (one whole block, five of the next), then others.
    let second: Vec<u32> = first[..21].iter().copied().chain([200, 201, 202, 203]).collect();
    let (_, ids, _, usage) =
        collect(e.submit(request(&second, SamplingParams::greedy(8))).expect("q")).expect("second");
    assert_eq!(usage.cached_tokens, 21, "the whole block and the five positions copied out of the next");
    // The same answer as computing the whole prompt.
    let fresh = engine(&path, EngineConfig::default());
    let (_, alone, _, usage) =
        collect(fresh.submit(request(&second, SamplingParams::greedy(8))).expect("q")).expect("alone");
    assert_eq!(usage.cached_tokens, 0);
    assert_eq!(ids, alone);
}

#[test]
fn logit_bias_moves_the_choice_and_the_logprobs_follow_it() {
    let (_d, path) = tiny();
    let e = engine(&path, EngineConfig::default());
    let one = |bias: Vec<(u32, f32)>| {
        let params = SamplingParams { logprobs: Some(2), logit_bias: bias, ..SamplingParams::greedy(1) };
        collect_all(e.submit(request(PROMPT, params)).expect("q")).expect("runs").1.remove(0)
    };
    let free = one(vec![]);
    let greedy = free.tokens[0];
    let banned = one(vec![(greedy, -100.0)]);
    assert_ne!(banned.tokens[0], greedy);
    assert_eq!(banned.tokens[0], free.logprobs[0].top[1].token, "the runner-up wins");
    let forced = one(vec![(200, 100.0)]);
    assert_eq!(forced.tokens[0], 200);
    assert!(forced.logprobs[0].logprob.unwrap_or(f32::MIN) > -1e-3, "the biased distribution is reported");
    let outside = SamplingParams { logit_bias: vec![(1 << 30, 1.0)], ..SamplingParams::greedy(1) };
    let err = collect(e.submit(request(PROMPT, outside)).expect("q")).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("logit_bias"), "{err}");
}

#[test]
fn a_tight_pool_preempts_without_repeating_or_losing_any_logprob() {
    let (_d, path) = tiny();
    let prompts: Vec<Vec<u32>> =
        (0..6).map(|i| PROMPT.iter().cycle().skip(i).take(20 + 3 * i).copied().collect()).collect();
    let params = |i: usize| SamplingParams {
        n: 1 + i % 3,
        logprobs: Some(3),
        prompt_logprobs: true,
        ignore_eos: true,
        temperature: 2.0,
        seed: Some(i as u64),
        max_tokens: 24,
        ..Default::default()
    };
    let run = |config: EngineConfig| {
        let e = engine(&path, config);
        let streams: Vec<_> =
            prompts.iter().enumerate().map(|(i, p)| e.submit(request(p, params(i))).expect("queued")).collect();
        let out: Vec<_> = streams.into_iter().map(|s| collect_all(s).expect("never failed")).collect();
        (out, e.stats().preemptions)
    };
    let (roomy, _) = run(EngineConfig::default());
    // 12 blocks of 16 tokens for 6 requests of up to 3 choices of up to 59 tokens each.
    let per_block = 2 * 2 * 32 * 16 * 4;
    let (tight, preemptions) =
        run(EngineConfig { kv_pool_bytes: 12 * per_block, max_batch_tokens: 9, ..Default::default() });
    assert!(preemptions > 0, "the pool was tight enough to preempt");
    for (i, ((rp, rc), (tp, tc))) in roomy.iter().zip(&tight).enumerate() {
        assert_eq!(tp.len(), prompts[i].len(), "request {i}: every prompt token once");
        assert_eq!(rp.iter().map(|t| t.token).collect::<Vec<_>>(), tp.iter().map(|t| t.token).collect::<Vec<_>>());
        for (x, y) in rp.iter().zip(tp) {
            assert!((x.logprob.unwrap_or(0.0) - y.logprob.unwrap_or(0.0)).abs() < 1e-3, "{x:?} vs {y:?}");
        }
        assert_eq!(rc.len(), tc.len());
        for (a, b) in rc.iter().zip(tc) {
            assert_eq!(a.tokens, b.tokens, "request {i}: the same tokens, preempted or not");
            assert_eq!(a.logprobs.len(), a.tokens.len());
            for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
                assert!((x.logprob.unwrap_or(0.0) - y.logprob.unwrap_or(0.0)).abs() < 1e-3, "{x:?} vs {y:?}");
            }
        }
    }
}

/// `ignore_eos` never chooses an end-of-turn token (llama.cpp's meaning): even with the
/// end all but forced by `logit_bias`, the answer runs to `max_tokens` without one, where
/// the same request without `ignore_eos` ends at once.
#[test]
fn ignore_eos_never_chooses_the_end() {
    let (_d, path) = tiny();
    let stops = LoadedModel::load("tiny", &path, LoadOptions::default()).expect("loads").tokenizer.stop_ids().to_vec();
    assert!(!stops.is_empty());
    let e = engine(&path, EngineConfig::default());
    let forced = SamplingParams { logit_bias: vec![(stops[0], 100.0)], ..SamplingParams::greedy(8) };
    let (_, ids, finish, _) = collect(e.submit(request(PROMPT, forced.clone())).expect("queued")).expect("runs");
    assert_eq!((ids.len(), finish), (0, FinishReason::Stop), "{ids:?}");
    let ignoring = SamplingParams { ignore_eos: true, temperature: 1.0, seed: Some(3), ..forced };
    let (_, ids, finish, _) = collect(e.submit(request(PROMPT, ignoring)).expect("queued")).expect("runs");
    assert_eq!((ids.len(), finish), (8, FinishReason::Length));
    assert!(ids.iter().all(|t| !stops.contains(t)), "{ids:?} holds an end token of {stops:?}");
}
