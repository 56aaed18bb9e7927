//! The default topology (3 hubs, 2 spokes) on the real SmolLM2 model, driven by the
//! official OpenAI and Ollama Python clients (tests/e2e/clients.py): "Paris" from every
//! hub, streamed and not; the error codes those clients map to exceptions. Then the API
//! beyond text on one hub and one spoke (tests/e2e/clients_api.py): log-probabilities,
//! perplexity through `echo`, `n` choices, streamed and incomplete Responses, model
//! routes, Ollama's show and ps, and a 400 for each field Nave does not implement.

use crate::common::{Cluster, Layout};

#[test]
fn openai_and_ollama_clients_get_paris_from_every_hub() {
    let mut c = Cluster::start(Layout { hubs: 3, spokes: 2, models: &["smollm2-135m"], extra: "" });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/clients.py");
    let out =
        std::process::Command::new("python3").arg(script).arg(&c.key).args(&c.hubs).output().expect("python3 runs");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the Python clients failed");
    assert!(c.stop());
}

#[test]
fn openai_and_ollama_clients_get_logprobs_choices_events_and_model_facts() {
    let mut c = Cluster::start(Layout { hubs: 1, spokes: 1, models: &["smollm2-135m"], extra: "" });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/clients_api.py");
    let out =
        std::process::Command::new("python3").arg(script).arg(&c.key).arg(&c.hubs[0]).output().expect("python3 runs");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the Python clients failed");
    assert!(c.stop());
}
