//! Turning logits into the next token: logit bias, penalties, temperature, top-k, top-p,
//! min-p, and a seeded random generator of our own (xoshiro256**), so the same seed gives
//! the same tokens on every machine and every version of every dependency.
//!
//! Log-probabilities ([`logprobs`]) are the log-softmax of the logits after the logit bias
//! and the repetition, presence and frequency penalties, before temperature and the top-k,
//! top-p and min-p cuts: the model's distribution as the request shaped it, the same at
//! any temperature (greedy included), so the greedy token is always the most likely one.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The largest `max_tokens` any request may ask for: longer than any context a model
/// Nave loads has, and small enough that sums of such bounds never overflow.
pub const MAX_TOKENS: usize = 1 << 24;

/// How a request wants its tokens chosen. `temperature == 0` means greedy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub seed: Option<u64>,
    /// HF-style: logits of tokens already in the context are divided (positive) or
    /// multiplied (negative) by this; 1.0 is off.
    pub repetition_penalty: f32,
    /// OpenAI-style, over generated tokens: subtract once per seen token...
    pub presence_penalty: f32,
    /// ...and once per occurrence.
    pub frequency_penalty: f32,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    /// Keep generating past end-of-turn tokens until `max_tokens` (benchmarks).
    pub ignore_eos: bool,
    /// Completions to generate from the prompt (1..=[`MAX_N`]); choice `i` samples with
    /// `seed + i`. The prompt is prefilled once: the other choices take it from the
    /// prefix cache.
    pub n: usize,
    /// With each generated token, its log-probability and that of the this many most
    /// likely tokens (0..=[`MAX_TOP_LOGPROBS`]); `None`: no log-probabilities.
    pub logprobs: Option<usize>,
    /// Also the log-probabilities of the prompt's tokens (each given the ones before it;
    /// the first has none), with `logprobs` alternatives each. Such a prompt is computed
    /// whole (no prefix cache), since every position's logits are needed.
    pub prompt_logprobs: bool,
    /// Added to the logits of these token ids before anything else (-100..=100; -100
    /// bans a token, 100 all but forces it), at most [`MAX_LOGIT_BIAS`] entries.
    pub logit_bias: Vec<(u32, f32)>,
    /// What the output must match (a JSON schema, a grammar): tokens the grammar does not
    /// allow are masked before anything else.
    pub constraint: Option<crate::grammar::Constraint>,
    /// Functions the model may call (chat only): rendered into the template, calls parsed
    /// out of the output; "required" or a named function constrains the output to a call.
    pub tools: Option<crate::tools::Tools>,
    /// The prompt's embedding instead of a completion: its final hidden states pooled as
    /// the model says (mean, first or last token) and L2-normalized, sent as one
    /// `Event::Embedding` before `Done`.
    pub embed: bool,
}

/// The most completions one request may ask for.
pub const MAX_N: usize = 8;
/// The most alternatives a token's log-probabilities may list.
pub const MAX_TOP_LOGPROBS: usize = 20;
/// The most token ids `logit_bias` may name.
pub const MAX_LOGIT_BIAS: usize = 1024;

impl SamplingParams {
    /// `max_tokens` of a request that names none: until the end of the turn or the
    /// context (the engine bounds every request by its context; a hub resolves this to
    /// the model's setting or its context before admission reserves it).
    pub const UNTIL_END: usize = usize::MAX;
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: None,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            max_tokens: SamplingParams::UNTIL_END,
            stop: Vec::new(),
            ignore_eos: false,
            n: 1,
            logprobs: None,
            prompt_logprobs: false,
            logit_bias: Vec::new(),
            constraint: None,
            tools: None,
            embed: false,
        }
    }
}

impl SamplingParams {
    pub fn greedy(max_tokens: usize) -> Self {
        Self { temperature: 0.0, max_tokens, ..Self::default() }
    }

    /// Rejects values no sampler could honour, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, why: &str| Err(Error::InvalidRequest(format!("{field}: {why}")));
        if !self.temperature.is_finite() || self.temperature < 0.0 || self.temperature > 100.0 {
            return bad("temperature", "must be between 0 and 100");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "must be greater than 0 and at most 1");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", "must be between 0 and 1");
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad("repetition_penalty", "must be greater than 0");
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return bad("presence_penalty", "must be between -2 and 2");
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return bad("frequency_penalty", "must be between -2 and 2");
        }
        if self.max_tokens == 0 || (self.max_tokens > MAX_TOKENS && self.max_tokens != Self::UNTIL_END) {
            return bad("max_tokens", &format!("must be between 1 and {MAX_TOKENS} (and within the model's context)"));
        }
        if self.stop.len() > 16 || self.stop.iter().any(|s| s.is_empty() || s.len() > 256) {
            return bad("stop", "at most 16 non-empty strings of at most 256 bytes");
        }
        if !(1..=MAX_N).contains(&self.n) {
            return bad("n", &format!("must be between 1 and {MAX_N}"));
        }
        if self.logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
            return bad("top_logprobs", &format!("must be between 0 and {MAX_TOP_LOGPROBS}"));
        }
        if self.logit_bias.len() > MAX_LOGIT_BIAS {
            return bad("logit_bias", &format!("at most {MAX_LOGIT_BIAS} tokens"));
        }
        if let Some((t, b)) = self.logit_bias.iter().find(|(_, b)| !(-100.0..=100.0).contains(b)) {
            return bad("logit_bias", &format!("the bias of token {t} is {b}; it must be between -100 and 100"));
        }
        if let Some(c) = &self.constraint {
            c.validate()?;
        }
        if self.embed && (self.n != 1 || self.constraint.is_some() || self.tools.is_some() || self.logprobs.is_some()) {
            return bad("input", "an embedding takes no n, logprobs, tools or response format");
        }
        if let Some(t) = &self.tools {
            t.validate()?;
            if self.constraint.is_some() && t.choice != crate::tools::ToolChoice::Auto {
                return bad(
                    "tool_choice",
                    "a required tool call and a response format cannot both constrain the output",
                );
            }
        }
        Ok(())
    }
}

/// xoshiro256** seeded through splitmix64: small, fast, and ours to keep stable.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self { s: [next(), next(), next(), next()] }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Per-sequence sampling state: the generator and token counts for the penalties.
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// Occurrences of each generated token (for presence/frequency penalties).
    generated_counts: std::collections::HashMap<u32, u32>,
    /// Tokens of the prompt and the output (for the repetition penalty).
    seen: std::collections::HashSet<u32>,
    /// The candidates of the last draw (kept for their allocation).
    candidates: Vec<(u32, f32, f64)>,
}

impl Sampler {
    pub fn new(params: SamplingParams, prompt: &[u32], fallback_seed: u64) -> Self {
        let rng = Rng::new(params.seed.unwrap_or(fallback_seed));
        let seen = if params.repetition_penalty != 1.0 { prompt.iter().copied().collect() } else { Default::default() };
        Self { params, rng, generated_counts: Default::default(), seen, candidates: Vec::new() }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Records a token the sequence emitted (for penalties).
    pub fn observe(&mut self, token: u32) {
        *self.generated_counts.entry(token).or_default() += 1;
        if self.params.repetition_penalty != 1.0 {
            self.seen.insert(token);
        }
    }

    /// Chooses the next token from `logits`, which are left as the distribution it was
    /// drawn from before temperature and truncation (bias and penalties applied): what
    /// [`logprobs`] reads.
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        let p = &self.params;
        for &(t, b) in &p.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += b;
            }
        }
        if p.repetition_penalty != 1.0 {
            for &t in &self.seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&t, &n) in &self.generated_counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        // Only tokens within reach of the draw are candidates: one whose weight relative
        // to the most likely is under 2^-60 adds nothing to a total of at least 1 in f64,
        // nor can the draw stop on it, and min-p drops those under it; skipping them
        // spares building, ordering and exponentiating a whole vocabulary (262,144
        // entries for Gemma 3) per token. NaN logits are never candidates.
        let top = max_value(logits);
        if top == f32::NEG_INFINITY {
            return argmax(logits);
        }
        let reach = (p.min_p as f64).clamp(CANDIDATE_WEIGHT, 1.0);
        // (A margin of a factor e, so rounding the floor to f32 drops nothing min-p keeps.)
        let floor = top - (p.temperature as f64 * (1.0 - reach.ln())) as f32;
        let mut cand = std::mem::take(&mut self.candidates);
        cand.clear();
        for (c, chunk) in logits.chunks(LANES).enumerate() {
            if chunk.iter().fold(false, |any, &l| any | (l >= floor)) {
                let base = c * LANES;
                cand.extend(
                    chunk.iter().enumerate().filter(|(_, &l)| l >= floor).map(|(i, &l)| ((base + i) as u32, l, 0.0)),
                );
            }
        }
        let token = self.draw(&mut cand);
        self.candidates = cand;
        token
    }

    /// Draws from `cand` (not empty: it holds the most likely token), truncated by
    /// top-k, min-p and top-p.
    ///
    /// Candidates in order of logit (ties: the lower id first), cut by top-k first. Only
    /// the head is sorted up front: the truncations and the draw walk the order from its
    /// start and rarely get past it; when one does, the rest is sorted then. Each carries
    /// its weight, relative to the most likely (1 for it; probabilities are weight /
    /// total), once the head gives the maximum.
    fn draw(&mut self, cand: &mut Vec<(u32, f32, f64)>) -> u32 {
        let p = &self.params;
        let order = |a: &(u32, f32, f64), b: &(u32, f32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let k = if p.top_k == 0 { cand.len() } else { p.top_k.min(cand.len()) };
        if k < cand.len() {
            cand.select_nth_unstable_by(k - 1, order);
            cand.truncate(k);
        }
        let head = SORTED_HEAD.min(cand.len());
        if head < cand.len() {
            cand.select_nth_unstable_by(head - 1, order);
        }
        cand[..head].sort_unstable_by(order);
        let mut sorted = head;
        let sort_all = |cand: &mut [(u32, f32, f64)], sorted: &mut usize| {
            if *sorted < cand.len() {
                cand[*sorted..].sort_unstable_by(order);
                *sorted = cand.len();
            }
        };
        let max = cand[0].1;
        for c in cand.iter_mut() {
            c.2 = (((c.1 - max) / p.temperature) as f64).exp();
        }
        let total: f64 = cand.iter().map(|c| c.2).sum();
        // min-p keeps every candidate at least min_p times as likely as the first (a
        // prefix of the order, counted without it).
        let mut keep = cand.len();
        if p.min_p > 0.0 {
            keep = cand.iter().filter(|c| c.2 >= p.min_p as f64).count().max(1);
        }
        if p.top_p < 1.0 {
            let (mut acc, mut n) = (0.0, 0);
            while n < keep {
                if n == sorted {
                    sort_all(cand, &mut sorted);
                }
                acc += cand[n].2 / total;
                n += 1;
                if acc >= p.top_p as f64 {
                    break;
                }
            }
            keep = n.max(1);
        }
        let kept: f64 = if keep == cand.len() {
            total
        } else {
            if keep > sorted {
                sort_all(cand, &mut sorted);
            }
            cand[..keep].iter().map(|c| c.2).sum()
        };
        let mut r = self.rng.next_f64() * kept;
        for i in 0..keep {
            if i == sorted {
                sort_all(cand, &mut sorted);
            }
            if r < cand[i].2 {
                return cand[i].0;
            }
            r -= cand[i].2;
        }
        cand[keep - 1].0
    }
}

/// Candidates the sampler sorts before it draws (the rest only when a draw reaches them).
const SORTED_HEAD: usize = 256;

/// The least weight, relative to the most likely token, a candidate of a draw has: 2^-60,
/// under half an ulp of 1 in f64.
const CANDIDATE_WEIGHT: f64 = 1.0 / (1u64 << 60) as f64;

/// Values the scans of a vocabulary take at a time (independent lanes the compiler keeps
/// in vector registers).
const LANES: usize = 16;

/// The largest value of `xs` that is not NaN (`-inf` for none).
pub fn max_value(xs: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for x in chunks {
        for j in 0..LANES {
            m[j] = if x[j] > m[j] { x[j] } else { m[j] };
        }
    }
    m.iter().chain(tail).fold(f32::NEG_INFINITY, |a, &x| if x > a { x } else { a })
}

/// A token's log-probability and the most likely alternatives at its position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: u32,
    /// The token's bytes (a token may hold part of a UTF-8 character).
    pub bytes: Vec<u8>,
    /// `None` only for a prompt's first token (nothing precedes it).
    pub logprob: Option<f32>,
    /// The most likely tokens at this position, most likely first.
    pub top: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: u32,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// The log-softmax of `logits` at `token`, with the `top` most likely tokens (ties: the
/// lower id first); `bytes` names a token's bytes. Computed in f64 from the maximum, so
/// a large logit neither overflows nor loses the small ones.
pub fn logprobs(logits: &[f32], token: u32, top: usize, bytes: impl Fn(u32) -> Vec<u8>) -> TokenLogprob {
    let max = max_value(logits) as f64;
    let lse = max + logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln();
    let lp = |t: u32| logits.get(t as usize).map_or(f32::NEG_INFINITY, |&l| (l as f64 - lse) as f32);
    let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    let k = top.min(cand.len());
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if k > 0 && k < cand.len() {
        cand.select_nth_unstable_by(k - 1, order);
    }
    cand.truncate(k);
    cand.sort_unstable_by(order);
    TokenLogprob {
        token,
        bytes: bytes(token),
        logprob: Some(lp(token)),
        top: cand.into_iter().map(|(t, _)| TopLogprob { token: t, bytes: bytes(t), logprob: lp(t) }).collect(),
    }
}

/// Index of the largest value (the lowest index on ties).
/// NaN is never the largest; with no value above `-inf`, 0.
pub fn argmax(xs: &[f32]) -> u32 {
    // The maximum, then its first place: two scans in vector lanes (a scan that keeps an
    // index per value took 3.4 times as long over Gemma 3's 262,144 logits).
    let max = max_value(xs);
    if max == f32::NEG_INFINITY {
        return 0;
    }
    for (c, chunk) in xs.chunks(LANES).enumerate() {
        if chunk.iter().fold(false, |any, &x| any | (x == max)) {
            let i = chunk.iter().position(|&x| x == max).unwrap_or(0);
            return (c * LANES + i) as u32;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 0.5, 2.9]
    }

    #[test]
    fn greedy_takes_the_largest() {
        let mut s = Sampler::new(SamplingParams::greedy(4), &[], 0);
        assert_eq!(s.sample(&mut logits()), 1);
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens() {
        let params = SamplingParams { temperature: 1.5, seed: Some(42), ..Default::default() };
        let run = || {
            let mut s = Sampler::new(params.clone(), &[], 7);
            (0..64).map(|_| s.sample(&mut logits())).collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert!(distinct.len() > 2, "a hot sampler should spread: {a:?}");
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let mut s = Sampler::new(SamplingParams { top_k: 1, seed: Some(1), ..Default::default() }, &[], 0);
        assert!((0..32).all(|_| s.sample(&mut logits()) == 1));
        let mut s = Sampler::new(SamplingParams { top_p: 0.01, seed: Some(1), ..Default::default() }, &[], 0);
        assert!((0..32).all(|_| s.sample(&mut logits()) == 1));
    }

    #[test]
    fn draws_reach_past_the_sorted_head() {
        // 1,000 equally likely tokens: most draws land past the first SORTED_HEAD.
        let logits = vec![0.0f32; 1000];
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, seed: Some(9), ..Default::default() }, &[], 0);
        let draws: Vec<u32> = (0..2000).map(|_| s.sample(&mut logits.clone())).collect();
        let past = draws.iter().filter(|&&t| t as usize >= SORTED_HEAD).count();
        assert!(past > 1200, "{past} of 2000 past the head, about 1488 expected");
        // top-p past the head: 0.9 of the mass is the first 900 tokens.
        let mut s = Sampler::new(SamplingParams { top_p: 0.9, seed: Some(9), ..Default::default() }, &[], 0);
        let draws: Vec<u32> = (0..2000).map(|_| s.sample(&mut logits.clone())).collect();
        assert!(draws.iter().all(|&t| t < 901), "top-p keeps the first 900 or 901");
        assert!(draws.iter().any(|&t| t > 800));
    }

    /// The sampler's rules over the whole vocabulary, sorted whole: what [`Sampler::sample`]
    /// computes without its shortcuts.
    fn reference_draw(p: &SamplingParams, rng: &mut Rng, logits: &[f32]) -> u32 {
        let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 {
            cand.truncate(p.top_k);
        }
        let w: Vec<f64> = cand.iter().map(|c| (((c.1 - cand[0].1) / p.temperature) as f64).exp()).collect();
        let total: f64 = w.iter().sum();
        let mut keep = if p.min_p > 0.0 { w.iter().filter(|&&x| x >= p.min_p as f64).count().max(1) } else { w.len() };
        if p.top_p < 1.0 {
            let (mut acc, mut n) = (0.0, 0);
            while n < keep {
                acc += w[n] / total;
                n += 1;
                if acc >= p.top_p as f64 {
                    break;
                }
            }
            keep = n.max(1);
        }
        let mut r = rng.next_f64() * w[..keep].iter().sum::<f64>();
        for i in 0..keep {
            if r < w[i] {
                return cand[i].0;
            }
            r -= w[i];
        }
        cand[keep - 1].0
    }

    #[test]
    fn draws_equal_a_draw_over_the_whole_vocabulary() {
        // 20,000 logits spread over 120 (most far below the likeliest, which the sampler
        // never weighs), with ties; several truncations, 300 seeded draws each.
        let mut rng = Rng::new(5);
        let logits: Vec<f32> =
            (0..20_000).map(|_| ((rng.next_f64() * 120.0 - 110.0) as f32 * 4.0).round() / 4.0).collect();
        let cases = [
            SamplingParams { temperature: 0.7, ..Default::default() },
            SamplingParams { temperature: 2.0, top_p: 0.95, ..Default::default() },
            SamplingParams { temperature: 1.0, top_k: 40, ..Default::default() },
            SamplingParams { temperature: 1.3, min_p: 0.05, ..Default::default() },
            SamplingParams { temperature: 30.0, ..Default::default() },
        ];
        for params in cases {
            let params = SamplingParams { seed: Some(11), ..params };
            let mut s = Sampler::new(params.clone(), &[], 0);
            let mut r = Rng::new(11);
            let ours: Vec<u32> = (0..300).map(|_| s.sample(&mut logits.clone())).collect();
            let reference: Vec<u32> = (0..300).map(|_| reference_draw(&params, &mut r, &logits)).collect();
            assert_eq!(ours, reference, "{params:?}");
            assert!(ours.iter().collect::<std::collections::HashSet<_>>().len() > 1, "{params:?}");
        }
    }

    #[test]
    fn argmax_takes_the_first_largest_and_skips_nan() {
        let mut xs = vec![0.0f32; 1000];
        assert_eq!(argmax(&xs), 0);
        xs[37] = 2.0;
        xs[998] = 2.0;
        assert_eq!(argmax(&xs), 37);
        xs[999] = 3.0; // in the scan's last, partial chunk
        assert_eq!(argmax(&xs), 999);
        xs[5] = f32::NAN;
        assert_eq!(argmax(&xs), 999);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NAN, f32::NEG_INFINITY]), 0);
        assert_eq!(argmax(&[]), 0);
        assert_eq!(max_value(&xs), 3.0);
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let mut s = Sampler::new(SamplingParams { min_p: 0.5, seed: Some(3), ..Default::default() }, &[], 0);
        // p(1) and p(4) are close; 0, 2 and 3 fall under half of p(1) except 2 (e^-1 = 0.37)
        for _ in 0..200 {
            let t = s.sample(&mut logits());
            assert!(t == 1 || t == 4, "token {t}");
        }
    }

    #[test]
    fn penalties_move_greedy_away_from_seen_tokens() {
        let mut s = Sampler::new(SamplingParams { presence_penalty: 2.0, ..SamplingParams::greedy(4) }, &[], 0);
        s.observe(1);
        assert_eq!(s.sample(&mut logits()), 4);
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..SamplingParams::greedy(4) }, &[1], 0);
        assert_eq!(s.sample(&mut logits()), 4);
    }

    #[test]
    fn logit_bias_bans_and_forces_tokens() {
        let bias = |b: Vec<(u32, f32)>| SamplingParams { logit_bias: b, ..SamplingParams::greedy(4) };
        assert_eq!(Sampler::new(bias(vec![(1, -100.0)]), &[], 0).sample(&mut logits()), 4);
        assert_eq!(Sampler::new(bias(vec![(3, 100.0)]), &[], 0).sample(&mut logits()), 3);
        let hot =
            SamplingParams { temperature: 1.0, seed: Some(9), logit_bias: vec![(0, 100.0)], ..Default::default() };
        let mut s = Sampler::new(hot, &[], 0);
        assert!((0..64).all(|_| s.sample(&mut logits()) == 0));
    }

    #[test]
    fn logprobs_are_the_log_softmax() {
        let l = logits();
        let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
        let lp = logprobs(&l, 2, 3, |t| vec![t as u8]);
        assert!((lp.logprob.unwrap_or(0.0) as f64 - (2.0 - z.ln())).abs() < 1e-6, "{lp:?}");
        assert_eq!(lp.top.iter().map(|t| t.token).collect::<Vec<_>>(), vec![1, 4, 2]);
        assert_eq!(lp.top[2].logprob, lp.logprob.unwrap_or(0.0));
        assert_eq!(lp.bytes, vec![2]);
        assert!(logprobs(&l, 0, 0, |_| vec![]).top.is_empty());
        // Huge logits do not overflow.
        let lp = logprobs(&[1e30, 0.0], 0, 2, |_| vec![]);
        assert_eq!(lp.logprob, Some(0.0));
        assert!(lp.top[1].logprob.is_finite() || lp.top[1].logprob == f32::NEG_INFINITY);
    }

    #[test]
    fn bad_parameters_name_the_field() {
        let err = |p: SamplingParams| p.validate().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(SamplingParams { temperature: -1.0, ..Default::default() }).contains("temperature"));
        assert!(err(SamplingParams { max_tokens: 0, ..Default::default() }).contains("max_tokens"));
        assert!(err(SamplingParams { top_p: 0.0, ..Default::default() }).contains("top_p"));
        assert!(err(SamplingParams { n: 9, ..Default::default() }).contains("n:"));
        assert!(err(SamplingParams { logprobs: Some(21), ..Default::default() }).contains("top_logprobs"));
        assert!(err(SamplingParams { logit_bias: vec![(1, 101.0)], ..Default::default() }).contains("logit_bias"));
        assert!(err(SamplingParams { logit_bias: vec![(1, f32::NAN)], ..Default::default() }).contains("logit_bias"));
        assert!(SamplingParams::default().validate().is_ok());
    }
}
