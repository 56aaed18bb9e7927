//! The engine on tiny random-weight models of both architectures (no download): loading,
//! batching equals one-at-a-time decoding, chunked prefill, preemption, cancellation,
//! no leaks after many mixed requests, and typed errors for bad input.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nave_inference::engine::collect;
use nave_inference::sampler::Rng;
use nave_inference::tiny::{write_tiny_model, TinyArch};
use nave_inference::*;

fn tiny(arch: TinyArch) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tiny.gguf");
    write_tiny_model(&path, arch, 7).expect("tiny model written");
    (dir, path)
}

fn engine(path: &PathBuf, config: EngineConfig) -> Engine {
    let model = LoadedModel::load("tiny", path, LoadOptions::default()).expect("loads");
    Engine::start(model, config, &Ledger::new("cpu", 1 << 30, 0)).expect("starts")
}

fn text(prompt: &str, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        request_id: "t".into(),
        prompt: Prompt::Text(prompt.into()),
        params: SamplingParams::greedy(max_tokens),
    }
}

fn wait_idle(e: &Engine) -> EngineStats {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = e.stats();
        if (s.running == 0 && s.waiting == 0 && s.kv_blocks_free == s.kv_blocks_total) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn both_architectures_load_and_generate() {
    for arch in [TinyArch::Llama, TinyArch::Gemma3] {
        let (_d, path) = tiny(arch);
        let e = engine(&path, EngineConfig::default());
        let (_, ids, finish, usage) = collect(e.submit(text("the cat", 12)).expect("queued")).expect("generates");
        assert!(!ids.is_empty() && ids.len() <= 12, "{arch:?}: {ids:?}");
        assert!(usage.prompt_tokens > 0 && usage.completion_tokens == ids.len(), "{arch:?}: {usage:?}");
        if finish == FinishReason::Length {
            assert_eq!(ids.len(), 12);
        }
    }
}

#[test]
fn batched_and_chunked_decoding_equal_one_at_a_time() {
    for arch in [TinyArch::Llama, TinyArch::Gemma3] {
        let (_d, path) = tiny(arch);
        let prompts: Vec<String> = (0..6).map(|i| "the a he in ".repeat(i + 1) + &"b".repeat(i)).collect();
        let solo = engine(&path, EngineConfig { max_running: 1, ..Default::default() });
        let alone: Vec<_> =
            prompts.iter().map(|p| collect(solo.submit(text(p, 20)).expect("q")).expect("alone").1).collect();
        drop(solo);
        // Small steps force chunked prefill interleaved with other sequences' decodes.
        let batched = engine(&path, EngineConfig { max_batch_tokens: 7, ..Default::default() });
        let streams: Vec<_> = prompts.iter().map(|p| batched.submit(text(p, 20)).expect("q")).collect();
        let together: Vec<_> = streams.into_iter().map(|s| collect(s).expect("batched").1).collect();
        assert_eq!(alone, together, "{arch:?}");
        assert!(batched.stats().steps < alone.iter().map(Vec::len).sum::<usize>() as u64, "steps were shared");
    }
}

#[test]
fn a_full_pool_preempts_and_resumes_without_failing() {
    let (_d, path) = tiny(TinyArch::Llama);
    let prompts: Vec<String> = (0..8).map(|i| format!("{} the", "he ".repeat(3 + i))).collect();
    let roomy = engine(&path, EngineConfig::default());
    let want: Vec<_> = prompts.iter().map(|p| collect(roomy.submit(text(p, 40)).expect("q")).expect("ok").1).collect();
    // 12 blocks of 4 tokens: not enough for eight sequences growing to 50+ tokens.
    let per_block = 2 * 2 * 32 * 4 * 4;
    let tight = engine(&path, EngineConfig { block_size: 4, kv_pool_bytes: 16 * per_block, ..Default::default() });
    let streams: Vec<_> = prompts.iter().map(|p| tight.submit(text(p, 40)).expect("q")).collect();
    let got: Vec<_> = streams.into_iter().map(|s| collect(s).expect("never failed").1).collect();
    assert_eq!(got, want);
    assert!(tight.stats().preemptions > 0, "the pool was tight enough to preempt");
    assert_eq!(wait_idle(&tight).kv_blocks_free, tight.stats().kv_blocks_total);
}

#[test]
fn dropping_the_stream_cancels_and_frees_blocks() {
    let (_d, path) = tiny(TinyArch::Llama);
    let e = engine(&path, EngineConfig::default());
    let mut s = e.submit(text("the the the", 200)).expect("q");
    // Wait for the first token, then walk away.
    assert!(matches!(s.blocking_recv(), Some(Event::Delta { .. })));
    drop(s);
    let stats = wait_idle(&e);
    assert_eq!((stats.running, stats.kv_blocks_free), (0, stats.kv_blocks_total), "{stats:?}");
    assert!(stats.generated_tokens < 200, "generation stopped early: {stats:?}");
}

#[test]
fn a_thousand_mixed_requests_leak_nothing() {
    let (_d, path) = tiny(TinyArch::Llama);
    let per_block = 2 * 2 * 32 * 16 * 4;
    let e = engine(
        &path,
        EngineConfig { kv_pool_bytes: 24 * per_block, max_running: 16, queue_capacity: 1024, ..Default::default() },
    );
    let mut rng = Rng::new(99);
    let mut live = Vec::new();
    let mut finished = 0;
    for i in 0..1000 {
        let words = ["the", "he", "in", "a", "b", "c"];
        let n = 1 + (rng.next_u64() % 24) as usize;
        let prompt: Vec<&str> = (0..n).map(|_| words[(rng.next_u64() % 6) as usize]).collect();
        let params = SamplingParams {
            temperature: if i % 3 == 0 { 0.0 } else { 0.8 },
            seed: Some(i),
            max_tokens: 1 + (rng.next_u64() % 16) as usize,
            stop: if i % 5 == 0 { vec!["he".into()] } else { vec![] },
            ..Default::default()
        };
        let s = e
            .submit(GenerateRequest { request_id: format!("r{i}"), prompt: Prompt::Text(prompt.join(" ")), params })
            .expect("q");
        match rng.next_u64() % 4 {
            0 => drop(s), // cancelled before or while running
            _ => live.push(s),
        }
        if live.len() >= 32 {
            for s in live.drain(..) {
                collect(s).expect("completes");
                finished += 1;
            }
        }
    }
    for s in live.drain(..) {
        collect(s).expect("completes");
        finished += 1;
    }
    assert!(finished > 600);
    let stats = wait_idle(&e);
    assert_eq!((stats.running, stats.waiting, stats.kv_blocks_free), (0, 0, stats.kv_blocks_total), "{stats:?}");
}

#[test]
fn bad_input_is_a_typed_error() {
    let (dir, path) = tiny(TinyArch::Llama);
    // Truncated file.
    let bytes = std::fs::read(&path).expect("read");
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let err = LoadedModel::load("x", &cut, LoadOptions::default()).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("truncated"), "{err}");
    // Garbage.
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff garbage").expect("write");
    assert!(matches!(LoadedModel::load("x", &junk, LoadOptions::default()), Err(Error::Model { .. })));
    std::fs::write(&junk, b"not a model at all").expect("write");
    assert!(matches!(LoadedModel::load("x", &junk, LoadOptions::default()), Err(Error::Model { .. })));
    // Unknown architecture.
    let other = dir.path().join("other.gguf");
    let patched = String::from_utf8_lossy(&bytes).replacen("llama", "mamba", 1);
    if patched.len() == bytes.len() {
        std::fs::write(&other, patched.as_bytes()).expect("write");
        let err =
            LoadedModel::load("x", &other, LoadOptions::default()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("architecture") || err.contains("missing"), "{err}");
    }

    let e = engine(&path, EngineConfig::default());
    let long = "the ".repeat(400);
    let err = collect(e.submit(text(&long, 4)).expect("q")).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("context"), "{err}");
    assert!(matches!(e.submit(text("a", 0)), Err(Error::InvalidRequest(m)) if m.contains("max_tokens")));
    let hot = GenerateRequest {
        request_id: "t".into(),
        prompt: Prompt::Text("a".into()),
        params: SamplingParams { temperature: -1.0, ..Default::default() },
    };
    assert!(matches!(e.submit(hot), Err(Error::InvalidRequest(m)) if m.contains("temperature")));
    let ids = GenerateRequest {
        request_id: "t".into(),
        prompt: Prompt::Tokens(vec![1, 999_999]),
        params: SamplingParams::greedy(2),
    };
    assert!(collect(e.submit(ids).expect("q")).is_err());
}

/// A file without rope-scaling keys has plain rotary angles (fine-tuning needs them).
#[test]
fn files_without_scaling_keys_have_plain_rotary_angles() {
    let (_d, path) = tiny(TinyArch::Llama);
    let model = LoadedModel::load("tiny", &path, LoadOptions::default()).expect("loads");
    let c = &model.transformer.config;
    assert!(c.rope_scaling.is_none() && c.sliding_window.is_none(), "{c:?}");
}

/// A request naming no `max_tokens` (the default) runs until the end of the turn or the
/// context, not a fixed cut.
#[test]
fn without_max_tokens_generation_runs_to_the_context() {
    let (_d, path) = tiny(TinyArch::Llama);
    let e = engine(&path, EngineConfig::default());
    let params = SamplingParams { temperature: 0.0, ignore_eos: true, ..Default::default() };
    assert_eq!(params.max_tokens, SamplingParams::UNTIL_END);
    let req = GenerateRequest { request_id: "long".into(), prompt: Prompt::Text("the cat".into()), params };
    let (_, ids, finish, usage) = collect(e.submit(req).expect("queued")).expect("generates");
    assert_eq!(finish, FinishReason::Length);
    // The tiny model's context is 256 tokens: prompt and completion fill it.
    assert_eq!(usage.prompt_tokens + ids.len(), 256, "{usage:?}");
}

#[test]
fn stop_strings_are_never_emitted_even_across_tokens() {
    let (_d, path) = tiny(TinyArch::Llama);
    let e = engine(&path, EngineConfig::default());
    let (free_text, ..) = collect(e.submit(text("the cat", 30)).expect("q")).expect("ok");
    // Take a stop string from the middle of what the model says freely.
    let chars: Vec<char> = free_text.chars().collect();
    if chars.len() >= 6 {
        let stop: String = chars[3..6].iter().collect();
        let params = SamplingParams { stop: vec![stop.clone()], ..SamplingParams::greedy(30) };
        let (stopped, _, finish, _) = collect(
            e.submit(GenerateRequest { request_id: "s".into(), prompt: Prompt::Text("the cat".into()), params })
                .expect("q"),
        )
        .expect("ok");
        assert_eq!(finish, FinishReason::Stop);
        assert!(!stopped.contains(&stop), "{stopped:?} contains {stop:?}");
        assert!(free_text.starts_with(&stopped), "{stopped:?} is a prefix of {free_text:?}");
    }
}
