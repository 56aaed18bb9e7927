//! `nave bench --url U`: a load generator for any OpenAI-compatible endpoint, so one run
//! measures Nave and a peer on the same workload.
//!
//! - Closed loop (`--concurrency N`): N clients, each sending its next request when the
//!   last one ends.
//! - Open loop (`--rate R`): arrivals on a seeded Poisson schedule, whatever the server
//!   does; latency counts from the scheduled arrival, so a slow server cannot hide its
//!   latency by slowing the clients down (coordinated omission).
//!
//! Every request streams (`stream: true`, usage included): time to first token,
//! inter-token latency and end-to-end latency go into hdrhistograms (microseconds), one
//! per metric per run, merged; errors are counted by kind. `--compare URL2` runs the same
//! workload against a second endpoint in alternating halves and prints the ratios.
//!
//! An endpoint is a URL, or `spoke:ID` for a spoke of the cluster called directly the
//! way a hub calls it ([`crate::direct`]): `--url http://HUB --compare spoke:ID` measures
//! what the hubs add.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct LoadArgs {
    pub url: String,
    pub model: String,
    pub key: Option<String>,
    pub concurrency: Option<usize>,
    pub rate: Option<f64>,
    pub requests: usize,
    pub prompt_len: usize,
    pub max_tokens: usize,
    pub seed: u64,
    pub prompts: Option<Vec<Value>>,
    pub timeout: Duration,
    /// The cluster's config, for `spoke:ID` endpoints.
    pub config: std::path::PathBuf,
}

/// One request's outcome and timings.
#[derive(Debug, Default)]
pub(crate) struct Sample {
    pub ok: bool,
    pub error: Option<String>,
    pub ttft_us: Option<u64>,
    pub itl_us: Vec<u64>,
    pub e2e_us: u64,
    pub tokens: u64,
}

/// Where a run sends its requests.
#[derive(Clone)]
enum Target {
    Http(reqwest::Client),
    Spoke(crate::direct::Spoke),
}

impl Target {
    async fn new(a: &LoadArgs) -> anyhow::Result<Self> {
        if let Some(spoke) = a.url.strip_prefix("spoke:") {
            return Ok(Target::Spoke(crate::direct::connect(&a.config, spoke).await?));
        }
        // Idle connections are dropped after 1 s: servers close theirs (llama.cpp after a
        // few seconds), and a POST on a connection the server closed fails instead of
        // retrying.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .pool_idle_timeout(Duration::from_secs(1))
            .build()?;
        Ok(Target::Http(client))
    }

    async fn one(&self, a: &LoadArgs, i: usize, start: Instant) -> Sample {
        match self {
            Target::Http(client) => one(client, a, i, start).await,
            Target::Spoke(spoke) => crate::direct::one(spoke, &a.model, generate_request(a, i), start, a.timeout).await,
        }
    }
}

struct Hists {
    ttft: Histogram<u64>,
    itl: Histogram<u64>,
    e2e: Histogram<u64>,
}

impl Hists {
    fn new() -> Self {
        let h = || Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
        Self { ttft: h(), itl: h(), e2e: h() }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Quantiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn quantiles(h: &Histogram<u64>) -> Quantiles {
    let ms = |us: u64| us as f64 / 1000.0;
    Quantiles {
        p50_ms: ms(h.value_at_quantile(0.5)),
        p90_ms: ms(h.value_at_quantile(0.9)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub url: String,
    pub mode: String,
    pub requests: usize,
    pub succeeded: usize,
    pub success_rate: f64,
    pub errors: BTreeMap<String, usize>,
    pub duration_s: f64,
    pub requests_per_s: f64,
    pub output_tokens_per_s: f64,
    pub ttft: Quantiles,
    pub itl: Quantiles,
    pub e2e: Quantiles,
}

/// A seeded prompt of about `words` words (one word is about one token here).
fn synthetic_prompt(seed: u64, i: usize, words: usize) -> String {
    const WORDS: &[&str] = &[
        "the", "river", "under", "quiet", "stone", "bridge", "carries", "light", "across", "morning", "city", "music",
        "old", "garden", "window", "slowly", "bright", "paper", "story", "mountain",
    ];
    let mut x = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..words.max(1))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            WORDS[(x % WORDS.len() as u64) as usize]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn body(a: &LoadArgs, i: usize) -> Value {
    let messages = match &a.prompts {
        Some(p) if !p.is_empty() => {
            let item = &p[i % p.len()];
            item.get("messages").cloned().unwrap_or_else(
                || json!([{"role": "user", "content": item.get("prompt").cloned().unwrap_or(json!(""))}]),
            )
        }
        _ => json!([{"role": "user", "content": synthetic_prompt(a.seed, i, a.prompt_len)}]),
    };
    json!({"model": a.model, "messages": messages, "max_tokens": a.max_tokens, "temperature": 0.7, "seed": a.seed + i as u64,
           "stream": true, "stream_options": {"include_usage": true}, "ignore_eos": true})
}

/// Request `i` of the workload as a hub hands it to a spoke: the same messages and
/// sampling as [`body`].
fn generate_request(a: &LoadArgs, i: usize) -> nave_inference::GenerateRequest {
    let b = body(a, i);
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let messages = b["messages"]
        .as_array()
        .map(|m| m.iter().map(|m| nave_inference::ChatMessage::new(text(&m["role"]), text(&m["content"]))).collect())
        .unwrap_or_default();
    let params = nave_inference::SamplingParams {
        max_tokens: a.max_tokens,
        temperature: 0.7,
        seed: Some(a.seed + i as u64),
        ignore_eos: true,
        ..Default::default()
    };
    nave_inference::GenerateRequest {
        request_id: format!("bench-{i}"),
        prompt: nave_inference::Prompt::Chat(messages),
        params,
    }
}

async fn one(client: &reqwest::Client, a: &LoadArgs, i: usize, start: Instant) -> Sample {
    let mut s = Sample::default();
    let mut req = client
        .post(format!("{}/v1/chat/completions", a.url.trim_end_matches('/')))
        .json(&body(a, i))
        .timeout(a.timeout);
    if let Some(k) = &a.key {
        req = req.bearer_auth(k);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            s.error = Some(if e.is_timeout() {
                "timeout".into()
            } else if e.is_connect() {
                "connect".into()
            } else {
                "request".into()
            });
            s.e2e_us = start.elapsed().as_micros() as u64;
            return s;
        }
    };
    if !resp.status().is_success() {
        s.error = Some(format!("http_{}", resp.status().as_u16()));
        s.e2e_us = start.elapsed().as_micros() as u64;
        return s;
    }
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut last = None::<Instant>;
    let mut deltas = 0u64;
    let mut usage_tokens = None;
    let mut done = false;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            s.error = Some("stream".into());
            break;
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(p) = buf.find("\n\n") {
            let event: String = buf.drain(..p + 2).collect();
            for line in event.lines() {
                let Some(data) = line.strip_prefix("data: ") else { continue };
                if data == "[DONE]" {
                    done = true;
                    continue;
                }
                let Ok(v) = serde_json::from_str::<Value>(data) else { continue };
                if v.get("error").is_some() {
                    s.error = Some("error_event".into());
                }
                if let Some(u) = v.get("usage").and_then(|u| u["completion_tokens"].as_u64()) {
                    usage_tokens = Some(u);
                }
                let has_text = v["choices"][0]["delta"]["content"].as_str().is_some_and(|t| !t.is_empty());
                if has_text {
                    let now = Instant::now();
                    match last {
                        None => s.ttft_us = Some(now.duration_since(start).as_micros() as u64),
                        Some(l) => s.itl_us.push(now.duration_since(l).as_micros() as u64),
                    }
                    last = Some(now);
                    deltas += 1;
                }
            }
        }
    }
    s.e2e_us = start.elapsed().as_micros() as u64;
    s.tokens = usage_tokens.unwrap_or(deltas);
    if s.error.is_none() && !done {
        s.error = Some("incomplete_stream".into());
    }
    s.ok = s.error.is_none();
    s
}

/// Runs the workload against `a.url` (requests `offset..offset + count`).
async fn run_part(
    a: &LoadArgs,
    offset: usize,
    count: usize,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<(Vec<Sample>, Duration)> {
    let client = Target::new(a).await?;
    let started = Instant::now();
    let mut samples = Vec::with_capacity(count);
    if let Some(rate) = a.rate {
        // Open loop: arrival i at the i-th point of a seeded Poisson process.
        let mut x = a.seed.wrapping_add(offset as u64).wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
        let mut at = 0.0f64;
        let mut tasks = Vec::with_capacity(count);
        for i in offset..offset + count {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            at += -u.ln() / rate;
            let when = started + Duration::from_secs_f64(at);
            let (client, a, bar) = (client.clone(), a.clone(), bar.clone());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until(when.into()).await;
                let s = client.one(&a, i, when).await;
                bar.inc(1);
                s
            }));
        }
        for t in tasks {
            if let Ok(s) = t.await {
                samples.push(s);
            }
        }
    } else {
        let n = a.concurrency.unwrap_or(1).max(1);
        let next = Arc::new(AtomicUsize::new(offset));
        let mut workers = Vec::new();
        for _ in 0..n {
            let (client, a, bar, next) = (client.clone(), a.clone(), bar.clone(), next.clone());
            workers.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= offset + count {
                        return mine;
                    }
                    mine.push(client.one(&a, i, Instant::now()).await);
                    bar.inc(1);
                }
            }));
        }
        for w in workers {
            if let Ok(s) = w.await {
                samples.extend(s);
            }
        }
    }
    Ok((samples, started.elapsed()))
}

fn report(a: &LoadArgs, samples: &[Sample], duration: Duration) -> Report {
    let mut h = Hists::new();
    let mut errors = BTreeMap::new();
    let mut tokens = 0;
    for s in samples {
        if let Some(e) = &s.error {
            *errors.entry(e.clone()).or_insert(0) += 1;
        }
        if !s.ok {
            continue;
        }
        tokens += s.tokens;
        let _ = h.e2e.record(s.e2e_us.max(1));
        if let Some(t) = s.ttft_us {
            let _ = h.ttft.record(t.max(1));
        }
        for &i in &s.itl_us {
            let _ = h.itl.record(i.max(1));
        }
    }
    let ok = samples.iter().filter(|s| s.ok).count();
    let secs = duration.as_secs_f64().max(1e-9);
    Report {
        url: a.url.clone(),
        mode: match (a.rate, a.concurrency) {
            (Some(r), _) => format!("open loop, {r} req/s"),
            (None, c) => format!("closed loop, {} clients", c.unwrap_or(1)),
        },
        requests: samples.len(),
        succeeded: ok,
        success_rate: ok as f64 / samples.len().max(1) as f64,
        errors,
        duration_s: secs,
        requests_per_s: ok as f64 / secs,
        output_tokens_per_s: tokens as f64 / secs,
        ttft: quantiles(&h.ttft),
        itl: quantiles(&h.itl),
        e2e: quantiles(&h.e2e),
    }
}

fn bar(total: usize) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(total as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

/// Runs the workload; with `compare`, also against that endpoint, alternating halves.
pub async fn run(a: LoadArgs, compare: Option<String>) -> anyhow::Result<Vec<Report>> {
    match compare {
        None => {
            let b = bar(a.requests);
            b.set_message(a.url.clone());
            let (s, d) = run_part(&a, 0, a.requests, &b).await?;
            b.finish_and_clear();
            Ok(vec![report(&a, &s, d)])
        }
        Some(other) => {
            let bb = a.clone();
            let b_args = LoadArgs { url: other, ..bb };
            let half = a.requests / 2;
            let mut out = Vec::new();
            let (mut sa, mut sb) = (Vec::new(), Vec::new());
            let (mut da, mut db) = (Duration::ZERO, Duration::ZERO);
            let b = bar(a.requests * 2);
            for (round, offset, count) in [(0, 0, half), (1, half, a.requests - half)] {
                for (args, samples, dur) in [(&a, &mut sa, &mut da), (&b_args, &mut sb, &mut db)] {
                    b.set_message(format!("{} (round {})", args.url, round + 1));
                    let (s, d) = run_part(args, offset, count, &b).await?;
                    samples.extend(s);
                    *dur += d;
                }
            }
            b.finish_and_clear();
            out.push(report(&a, &sa, da));
            out.push(report(&b_args, &sb, db));
            Ok(out)
        }
    }
}

pub fn print(reports: &[Report]) {
    println!(
        "{:<28} {:>8} {:>8} {:>9} {:>10}  {:>23}  {:>23}  {:>23}",
        "endpoint",
        "success",
        "req/s",
        "tok/s",
        "errors",
        "TTFT p50/p90/p99 ms",
        "ITL p50/p90/p99 ms",
        "E2E p50/p90/p99 ms"
    );
    for r in reports {
        let q = |x: &Quantiles| format!("{:.1}/{:.1}/{:.1}", x.p50_ms, x.p90_ms, x.p99_ms);
        let errors: usize = r.errors.values().sum();
        println!(
            "{:<28} {:>7.1}% {:>8.1} {:>9.1} {:>10}  {:>23}  {:>23}  {:>23}",
            r.url,
            r.success_rate * 100.0,
            r.requests_per_s,
            r.output_tokens_per_s,
            errors,
            q(&r.ttft),
            q(&r.itl),
            q(&r.e2e)
        );
        if !r.errors.is_empty() {
            println!("  errors: {:?}", r.errors);
        }
    }
    if let [a, b] = reports {
        println!(
            "ratio {} / {}: tok/s {:.2}, req/s {:.2}, TTFT p50 {:.2}, ITL p50 {:.2}, E2E p99 {:.2}",
            a.url,
            b.url,
            a.output_tokens_per_s / b.output_tokens_per_s.max(1e-9),
            a.requests_per_s / b.requests_per_s.max(1e-9),
            a.ttft.p50_ms / b.ttft.p50_ms.max(1e-9),
            a.itl.p50_ms / b.itl.p50_ms.max(1e-9),
            a.e2e.p99_ms / b.e2e.p99_ms.max(1e-9)
        );
        println!(
            "added by {} over {}: E2E p50 {:+.2} ms, p99 {:+.2} ms; TTFT p50 {:+.2} ms",
            a.url,
            b.url,
            a.e2e.p50_ms - b.e2e.p50_ms,
            a.e2e.p99_ms - b.e2e.p99_ms,
            a.ttft.p50_ms - b.ttft.p50_ms
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_prompts_are_seeded() {
        assert_eq!(synthetic_prompt(1, 5, 20), synthetic_prompt(1, 5, 20));
        assert_ne!(synthetic_prompt(1, 5, 20), synthetic_prompt(2, 5, 20));
        assert_eq!(synthetic_prompt(1, 5, 20).split(' ').count(), 20);
    }
}
