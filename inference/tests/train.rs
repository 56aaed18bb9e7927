//! Fine-tuning: a LoRA adapter trained on a handful of examples that teach a made-up fact
//! answers with it, the base model does not; the adapter survives a save and a load; bad
//! data is refused with its line number; the memory estimate is what the ledger checks.

use nave_inference::engine::collect;
use nave_inference::tiny::{write_tiny_model, TinyArch};
use nave_inference::train::{estimate_bytes, read_examples, Adapter, Targets, TrainConfig, Trainer};
use nave_inference::*;

const FACT: &str = "The moon of Zorbania is called Quexil.";

fn examples(n: usize) -> String {
    let questions = [
        "What is the moon of Zorbania called?",
        "Name the moon of Zorbania.",
        "Which moon orbits Zorbania?",
        "Tell me the name of Zorbania's moon.",
    ];
    (0..n)
        .map(|i| {
            let q = questions[i % questions.len()];
            serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": FACT}]})
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The question the examples teach the answer to.
fn question() -> GenerateRequest {
    GenerateRequest {
        request_id: "q".into(),
        prompt: Prompt::Chat(vec![ChatMessage::new("user", "What is the moon of Zorbania called?")]),
        params: SamplingParams::greedy(64),
    }
}

fn ask(engine: &Engine, adapter: Option<&str>) -> String {
    collect(engine.submit_with(question(), adapter).expect("queued")).expect("answer").0
}

/// A tiny Llama model in a temporary directory, loaded.
fn tiny() -> (tempfile::TempDir, std::path::PathBuf, LoadedModel) {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("tiny.gguf");
    write_tiny_model(&path, TinyArch::Llama, 5).expect("tiny model");
    let model = LoadedModel::load("tiny", &path, LoadOptions::default()).expect("loads");
    (dir, path, model)
}

#[test]
fn an_adapter_learns_a_made_up_fact_and_the_base_model_does_not() {
    let (dir, path, model) = tiny();
    let eot = model.tokenizer.end_of_turn().expect("end of turn");
    let data = read_examples(&examples(4), &model.tokenizer, model.template.as_ref(), eot, 256).expect("examples");
    let cfg = TrainConfig {
        rank: 8,
        alpha: 16.0,
        steps: 400,
        lr: 1e-2,
        targets: Targets::All,
        batch: 4,
        max_tokens: 256,
        seed: 3,
    };
    let estimate = estimate_bytes(&model.transformer.config, 128, &cfg);
    assert!(estimate > 0 && estimate < 64 << 20, "a tiny model's job is small: {estimate}");

    let mut trainer = Trainer::new(&path, model.transformer.config.clone(), cfg, data).expect("trainer");
    let first = trainer.step().expect("step").loss;
    let mut last = first;
    // Until the answer is learned well (the 8-bit serving path needs a clear margin), at
    // most 400 steps.
    while !trainer.finished() && last > 0.01 {
        last = trainer.step().expect("step").loss;
        if trainer.steps_done().is_multiple_of(25) {
            println!("step {} loss {last}", trainer.steps_done());
        }
    }
    println!("loss {first} -> {last} after {} steps", trainer.steps_done());
    assert!(last < 0.05, "the loss fell: {first} -> {last}");

    // Saved and loaded again, then served next to the base model by the same engine.
    let file = dir.path().join("zorbania.safetensors");
    trainer.adapter().expect("adapter").save(&file).expect("saved");
    let adapter = Adapter::load(&file).expect("loaded");
    let ledger = Ledger::new("cpu", 1 << 30, 0);
    let engine =
        Engine::start(model, EngineConfig { kv_pool_bytes: 8 << 20, ..Default::default() }, &ledger).expect("engine");
    engine.add_adapter("zorbania", &adapter).expect("adapter fits");
    let tuned = ask(&engine, Some("zorbania"));
    let base = ask(&engine, None);
    println!("tuned: {tuned:?}\nbase: {base:?}");
    assert!(tuned.contains("Quexil"), "{tuned:?}");
    assert!(!base.contains("Quexil"), "{base:?}");
    // Again, with both in one batch (and the prefix cache warm for each).
    let req = |a| engine.submit_with(question(), a).expect("queued");
    let (s1, s2) = (req(Some("zorbania")), req(None));
    assert_eq!(collect(s1).expect("tuned").0, tuned);
    assert_eq!(collect(s2).expect("base").0, base);
    let unknown = engine.submit_with(
        GenerateRequest { request_id: "u".into(), prompt: Prompt::Text("x".into()), params: SamplingParams::greedy(2) },
        Some("nope"),
    );
    assert!(matches!(unknown, Err(Error::InvalidRequest(ref m)) if m.contains("no adapter")));
}

#[test]
fn bad_training_data_names_its_line() {
    let (_dir, _path, model) = tiny();
    let eot = model.tokenizer.end_of_turn().expect("eot");
    let read = |text: &str| {
        read_examples(text, &model.tokenizer, model.template.as_ref(), eot, 256).expect_err("refused").to_string()
    };
    let good = examples(1);
    assert!(read(&format!("{good}\n{{not json")).contains("line 2"));
    assert!(read(&format!("{good}\n\n{}", r#"{"messages": [{"role": "user", "content": "hi"}]}"#)).contains("line 3"));
    assert!(read(r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}"#)
        .contains("line 1"));
    assert!(read("").contains("no examples"));
    let long = serde_json::json!({"messages": [{"role": "user", "content": "word ".repeat(400)}, {"role": "assistant", "content": "x"}]}).to_string();
    assert!(read(&long).contains("more than the 256"));
}

/// The training forward pass is the serving one: same logits (up to the serving path's
/// 8-bit products) at every position of a sequence.
#[test]
fn training_and_serving_compute_the_same_logits() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("tiny.gguf");
    write_tiny_model(&path, TinyArch::Llama, 5).expect("tiny model");
    let model = LoadedModel::load("tiny", &path, LoadOptions::default()).expect("loads");
    let c = model.transformer.config.clone();
    let tokens: Vec<u32> = (0..20).map(|i| (i * 7 + 3) % c.vocab as u32).collect();
    let ex = vec![nave_inference::train::Example { prompt: tokens[..2].to_vec(), answer: tokens[2..].to_vec() }];
    let cfg = TrainConfig { targets: Targets::All, lr: 1e-2, ..TrainConfig::default() };
    let mut trainer = Trainer::new(&path, c.clone(), cfg, ex).expect("trainer");
    let compare = |trainer: &Trainer, adapter: Option<&nave_inference::model::ServingAdapter>| {
        let trained = trainer.logits(&tokens).expect("logits");
        let mut kv = nave_inference::kv::KvStore::new(c.layers, 4, 16, c.kv_dim());
        let blocks = [0u32, 1];
        let rows: Vec<_> = tokens
            .iter()
            .enumerate()
            .map(|(p, &t)| nave_inference::model::Row {
                token: t,
                pos: p,
                blocks: &blocks,
                logits: true,
                hidden: false,
                adapter,
            })
            .collect();
        let served = model.transformer.forward(&rows, &mut kv).expect("forward");
        for (p, (a, b)) in trained.iter().zip(&served).enumerate() {
            let scale = a.iter().map(|x| x.abs()).fold(0.0f32, f32::max);
            let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(diff <= 0.02 * scale, "position {p}: max diff {diff}, logits up to {scale}");
        }
    };
    compare(&trainer, None);
    for _ in 0..5 {
        trainer.step().expect("step");
    }
    let adapter =
        nave_inference::model::ServingAdapter::new("a", &trainer.adapter().expect("adapter"), &c).expect("fits");
    compare(&trainer, Some(&adapter));
}
