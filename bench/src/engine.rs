//! `nave bench engine`: the engine alone, in this process, on a model from the store:
//! prefill tokens/s, batch-1 decode tokens/s, and aggregate decode tokens/s with 1, 4, 16
//! and 64 concurrent sequences; then the same figures for llama.cpp on the same GGUF file
//! with the same thread count (bench/peer_llamacpp.py, PyPI `xllamacpp`), in one table.
//!
//! It says what ran: the CPU's model and the flags the kernels care about, the kernel path
//! (`NAVE_CPU=scalar|avx2|avxvnni|avx512` forces another), and the memory-bandwidth bound of batch-1
//! decode (weight bytes read per token over this machine's measured read bandwidth).

use std::time::Instant;

use anyhow::Context;
use nave_inference::engine::collect;
use nave_inference::store::ModelStore;
use nave_inference::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EngineFigures {
    pub system: String,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    /// (concurrent sequences, aggregate output tokens/s)
    pub aggregate: Vec<(usize, f64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineReport {
    pub model: String,
    pub threads: usize,
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    /// Nave's weights in memory (as in the file), and its peak
    /// resident memory over the run (weights, the KV pool of 1 GiB as it got touched,
    /// activations).
    pub weight_bytes: u64,
    pub peak_rss_bytes: u64,
    /// Resident memory before the model was loaded (the program itself) and right after
    /// (weights, tokenizer, tables), and the KV pool the engine holds.
    #[serde(default)]
    pub rss_before_load: u64,
    #[serde(default)]
    pub rss_after_load: u64,
    #[serde(default)]
    pub kv_pool_bytes: u64,
    /// `lscpu`'s model name and the vector flags present.
    pub cpu: String,
    pub cpu_flags: Vec<String>,
    /// The kernel path that ran (`scalar`, `avx2`).
    pub path: String,
    /// Measured read bandwidth with the benchmark's threads, bytes/s.
    pub read_bandwidth: f64,
    /// Batch-1 decode cannot pass this: bandwidth / weight bytes per token.
    pub decode_bound_tok_s: f64,
    pub figures: Vec<EngineFigures>,
    /// Where the model ran: `cpu`, or `cuda:N` with the device's memory figures.
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub device_memory: Option<(u64, u64)>,
    /// The batch-1 decode's greedy tokens (what two devices must agree on).
    #[serde(default)]
    pub greedy_tokens: Vec<u32>,
}

/// The CPU's model name and which of the flags that choose kernels it has.
pub fn cpu_info() -> (String, Vec<String>) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let flags = field("flags");
    let present: Vec<String> = ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni"]
        .iter()
        .filter(|f| flags.split_whitespace().any(|g| g == **f))
        .map(|f| f.to_string())
        .collect();
    let model = field("model name");
    (if model.is_empty() { std::env::consts::ARCH.to_string() } else { model }, present)
}

/// Read bandwidth of `threads` threads summing a 512 MiB buffer (best of three), bytes/s.
/// The buffer is on 2 MiB pages where the system allows, as the engine's weights are
/// (`kernels::huge_pages`), so the bound it gives is one the engine can reach, not one
/// its own pages put out of reach of a reader on 4 KiB pages.
pub fn read_bandwidth(threads: usize) -> f64 {
    const BYTES: usize = 512 << 20;
    let words = BYTES / 8;
    let mut buf: Vec<u64> = vec![0; words];
    nave_inference::kernels::huge_pages(&mut buf);
    buf.iter_mut().enumerate().for_each(|(i, w)| *w = i as u64);
    let chunk = words.div_ceil(threads.max(1));
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = buf
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || {
                        // Four independent sums so the loop is bound by loads, not adds.
                        let mut acc = [0u64; 4];
                        for q in part.chunks_exact(4) {
                            for i in 0..4 {
                                acc[i] = acc[i].wrapping_add(q[i]);
                            }
                        }
                        acc.iter().fold(0u64, |a, b| a.wrapping_add(*b))
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0)).fold(0u64, |a, b| a.wrapping_add(b))
        });
        std::hint::black_box(total);
        best = best.max(BYTES as f64 / t.elapsed().as_secs_f64());
    }
    best
}

/// The process's peak resident memory (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

pub struct EngineBench {
    pub model: String,
    pub threads: usize,
    pub concurrency: Vec<usize>,
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    pub peer: bool,
    /// `cpu` (the engine's kernels) or `cuda:N` (the candle device path).
    pub device: String,
}

fn prompt_of(tokens: usize) -> Prompt {
    // A fixed token pattern (ids of ordinary words), so both systems see the same length.
    Prompt::Tokens((0..tokens).map(|i| 1000 + (i as u32 * 37) % 5000).collect())
}

fn params(max_tokens: usize) -> SamplingParams {
    SamplingParams { ignore_eos: true, ..SamplingParams::greedy(max_tokens) }
}

/// The KV pool the benchmark's engine holds.
const KV_POOL_BYTES: u64 = 1 << 30;

pub fn run(b: &EngineBench) -> anyhow::Result<EngineReport> {
    let path = ModelStore::from_env().locate(&b.model, &mut |_| {})?;
    let placement: nave_inference::device::Placement = b.device.parse()?;
    let (cpu, cpu_flags) = cpu_info();
    let device = placement.open()?;
    let opts = LoadOptions { threads: Some(b.threads), device: device.clone(), ..Default::default() };
    let rss_before_load = nave_inference::ledger::process_rss_bytes().unwrap_or(0);
    let model = LoadedModel::load(b.model.clone(), &path, opts)?;
    let rss_after_load = nave_inference::ledger::process_rss_bytes().unwrap_or(0);
    let weight_bytes = model.transformer.weight_bytes();
    let kernel_path = match device {
        Some(_) => format!("candle on {placement}"),
        None => model.transformer.kernels().0.name().to_string(),
    };
    // The CPU's bandwidth bounds the CPU kernels; a device's is the device's own (not
    // measured here).
    let read_bandwidth = if device.is_none() { read_bandwidth(b.threads) } else { 0.0 };
    let ledger = Ledger::for_device(placement, 8 << 30, 0)?;
    let max = *b.concurrency.iter().max().unwrap_or(&1);
    let config = EngineConfig {
        kv_pool_bytes: KV_POOL_BYTES,
        max_running: max.max(1),
        max_batch_tokens: 512,
        queue_capacity: 1024,
        ..Default::default()
    };
    let engine = Engine::start(model, config, &ledger)?;
    let req = |tokens: usize, max_tokens: usize, i: usize| GenerateRequest {
        request_id: format!("bench-{i}"),
        prompt: Prompt::Tokens(match prompt_of(tokens) {
            Prompt::Tokens(mut t) => {
                t[0] = 1000 + (i % 4000) as u32; // distinct prompts: no prefix-cache hits
                t
            }
            _ => unreachable!("prompt_of gives tokens"),
        }),
        params: params(max_tokens),
    };
    // Warm up (first-use costs: thread pool, page faults).
    collect(engine.submit(req(32, 4, 999_999))?)?;

    let t = Instant::now();
    collect(engine.submit(req(b.prompt_tokens, 1, 0))?)?;
    let prefill = b.prompt_tokens as f64 / t.elapsed().as_secs_f64();

    let mut s = engine.submit(req(16, b.decode_tokens + 1, 1))?;
    let mut first = None;
    let mut n = 0usize;
    let mut greedy_tokens = Vec::new();
    while let Some(ev) = s.blocking_recv() {
        match ev {
            Event::Delta { tokens, .. } => {
                n += tokens.len();
                greedy_tokens.extend_from_slice(&tokens);
                first.get_or_insert_with(Instant::now);
            }
            Event::Prompt { .. }
            | Event::ToolCall { .. }
            | Event::ToolCallStart { .. }
            | Event::ToolCallArguments { .. }
            | Event::Embedding { .. } => {}
            Event::Done { .. } => break,
            Event::Error { message, .. } => anyhow::bail!(message),
        }
    }
    let decode = (n.saturating_sub(1)) as f64 / first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(1.0);

    let mut aggregate = Vec::new();
    for &c in &b.concurrency {
        let t = Instant::now();
        let streams: Vec<_> = (0..c).map(|i| engine.submit(req(16, b.decode_tokens, 10 + i))).collect::<Result<_>>()?;
        let mut total = 0;
        for s in streams {
            total += collect(s)?.3.completion_tokens;
        }
        aggregate.push((c, total as f64 / t.elapsed().as_secs_f64()));
    }
    let peak_rss_bytes = peak_rss();
    let mut figures =
        vec![EngineFigures { system: "nave".into(), prefill_tok_s: prefill, decode_tok_s: decode, aggregate }];
    if b.peer {
        figures.push(peer(b, &path)?);
    }
    Ok(EngineReport {
        model: b.model.clone(),
        threads: b.threads,
        prompt_tokens: b.prompt_tokens,
        decode_tokens: b.decode_tokens,
        weight_bytes,
        peak_rss_bytes,
        rss_before_load,
        rss_after_load,
        kv_pool_bytes: KV_POOL_BYTES,
        cpu,
        cpu_flags,
        path: kernel_path,
        read_bandwidth,
        decode_bound_tok_s: read_bandwidth / weight_bytes.max(1) as f64,
        figures,
        device: placement.to_string(),
        device_memory: placement.memory()?.map(|m| (m.total - m.free.min(m.total), m.total)),
        greedy_tokens,
    })
}

fn peer(b: &EngineBench, path: &std::path::Path) -> anyhow::Result<EngineFigures> {
    let script = std::env::var("NAVE_PEER_SCRIPT").unwrap_or_else(|_| "bench/peer_llamacpp.py".into());
    let conc = b.concurrency.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args(["--model", &path.display().to_string(), "--threads", &b.threads.to_string(), "--concurrency", &conc])
        .args(["--prompt-tokens", &b.prompt_tokens.to_string(), "--decode-tokens", &b.decode_tokens.to_string()])
        .output()
        .with_context(|| format!("running {script} (needs PyPI xllamacpp)"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No module named 'xllamacpp'") {
            anyhow::bail!(
                "the peer (llama.cpp) needs its Python package: `pip install xllamacpp`, or pass --no-peer to measure Nave alone"
            );
        }
        anyhow::bail!("{script} failed: {}", err.lines().last().unwrap_or(""));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("");
    serde_json::from_str(line).with_context(|| format!("reading the peer's figures from {line:?}"))
}

pub fn print(r: &EngineReport) {
    println!(
        "engine benchmark: {} ({} threads; prefill {} tokens; decode {} tokens per sequence)",
        r.model, r.threads, r.prompt_tokens, r.decode_tokens
    );
    println!("cpu: {} [{}]", r.cpu, r.cpu_flags.join(" "));
    if let Some((used, total)) = r.device_memory {
        println!("device: {} ({} of {} MB in use after the run)", r.device, used / 1_000_000, total / 1_000_000);
    }
    println!(
        "kernels: {} path, {} threads; read bandwidth {:.1} GB/s, so batch-1 decode is bound by {:.1} tok/s ({:.1} MB of weights per token)",
        r.path,
        r.threads,
        r.read_bandwidth / 1e9,
        r.decode_bound_tok_s,
        r.weight_bytes as f64 / 1e6
    );
    let conc: Vec<usize> = r.figures.first().map(|f| f.aggregate.iter().map(|a| a.0).collect()).unwrap_or_default();
    print!("{:<10} {:>12} {:>12}", "system", "prefill t/s", "decode t/s");
    for c in &conc {
        print!(" {:>10}", format!("agg@{c}"));
    }
    println!();
    for f in &r.figures {
        print!("{:<10} {:>12.1} {:>12.1}", f.system, f.prefill_tok_s, f.decode_tok_s);
        for (_, a) in &f.aggregate {
            print!(" {a:>10.1}");
        }
        println!();
    }
    let mb = |b: u64| b / 1_000_000;
    println!(
        "nave memory: weights {} MB, KV pool {} MB; resident {} MB before loading, {} MB after, peak {} MB",
        mb(r.weight_bytes),
        mb(r.kv_pool_bytes),
        mb(r.rss_before_load),
        mb(r.rss_after_load),
        mb(r.peak_rss_bytes)
    );
    let base = r.weight_bytes + r.kv_pool_bytes;
    if r.kv_pool_bytes > 0 {
        println!(
            "  peak over weights + pool: {:+.1}% ({} MB besides them)",
            (r.peak_rss_bytes as f64 / base as f64 - 1.0) * 100.0,
            mb(r.peak_rss_bytes.saturating_sub(base))
        );
    }
}
