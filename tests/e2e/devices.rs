//! A spoke's `device`: a CUDA device this build or machine cannot use stops the spoke at
//! start with the reason (a build without CUDA, or no driver), never a panic; and the
//! random-weight model writer that GPU benchmarks use writes a model the engine serves.

use std::process::Command;

fn nave() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nave"))
}

#[test]
fn a_spoke_on_a_cuda_device_it_cannot_use_stops_with_the_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = super::common::tiny_model(dir.path());
    let (h, s) = (super::common::free_port(), super::common::free_port());
    let config = dir.path().join("cluster.toml");
    std::fs::write(
        &config,
        format!(
            r#"[cluster]
name = "devices"
data_dir = "{data}"

[[hub]]
id = "h1"
http = "127.0.0.1:{h}"
quic = "127.0.0.1:{hq}"

[[spoke]]
id = "s1"
http = "127.0.0.1:{s}"
quic = "127.0.0.1:{sq}"
models = ["{model}"]
device = "cuda:0"
serving_reserve = "512MiB"
training_limit = "0B"
kv_pool = "64MiB"
"#,
            data = dir.path().join("data").display(),
            hq = super::common::free_port(),
            sq = super::common::free_port(),
            model = model.display(),
        ),
    )
    .expect("config written");
    let out = nave()
        .args(["spoke", "--config"])
        .arg(&config)
        .args(["--id", "s1"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("nave spoke runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "an error exit, not a panic (101) or a start: {err}");
    assert!(!err.contains("panicked"), "{err}");
    // A CPU build names the way to a CUDA one; a CUDA build on this GPU-less machine
    // names the missing driver.
    assert!(
        err.contains("built without CUDA support") && err.contains("scripts/build-cuda")
            || err.contains("no CUDA driver"),
        "{err}"
    );
}

#[test]
fn a_random_model_of_a_given_shape_is_written_and_served() {
    let dir = tempfile::tempdir().expect("temp dir");
    let vocab = dir.path().join("vocab.gguf");
    let model = dir.path().join("random.gguf");
    let ok = |c: &mut Command| {
        let out = c.output().expect("nave runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    // SmolLM2's tokenizer alone (a few MB, as a GPU machine gets it), then the model.
    ok(nave().args(["model", "tokenizer", "smollm2-135m"]).arg(&vocab));
    let said = ok(nave()
        .args(["model", "random", "--shape", "tiny", "--type", "q4_k", "--vocab-from"])
        .arg(&vocab)
        .arg(&model));
    assert!(said.contains("parameters"), "{said}");
    let info = nave_inference::ModelInfo::read(&model).expect("the file reads back");
    assert_eq!((info.config.hidden, info.config.layers, info.config.heads), (256, 2, 4));
    // The benchmark runs it on the CPU kernels and records its greedy tokens.
    let json = dir.path().join("bench.json");
    ok(nave()
        .args(["bench", "engine", "--no-peer", "--threads", "1", "--concurrency", "2"])
        .args(["--prompt-tokens", "16", "--decode-tokens", "8", "--model"])
        .arg(&model)
        .arg("--json")
        .arg(&json));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("report")).expect("report parses");
    assert_eq!(report["device"], "cpu");
    assert_eq!(report["greedy_tokens"].as_array().map(Vec::len), Some(9), "{report}");
}
