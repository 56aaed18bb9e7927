//! LoRA fine-tuning of a served model, on the CPU, inside the training partition.
//!
//! The frozen base weights are a dequantized f32 copy (the memory estimate counts it);
//! low-rank adapters `A` (rank x in) and `B` (out x rank) on the chosen projections are the
//! only trained parameters: `y = x W^T + (alpha / rank) (x A^T) B^T`, with `B` starting at
//! zero so the untrained adapter changes nothing. The forward pass is the serving one
//! written with candle's differentiable ops (Llama architecture), the loss is the
//! cross-entropy of the assistant's tokens only, and the optimizer is AdamW (gradients
//! clipped to norm 1, learning rate warmed up then decayed on a cosine).
//!
//! The trainer runs one step at a time; between steps its caller decides whether to go on
//! (cancellation, a pause while serving is busy): see [`Trainer::step`].

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var, D};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::model::{Activation, ModelConfig, RopeStyle};
use crate::template::{ChatMessage, ChatTemplate};
use crate::tokenizer::TextTokenizer;

/// Which projections get adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Targets {
    /// q, k, v and o.
    Attention,
    /// The attention projections and the MLP's gate, up and down.
    All,
}

impl Targets {
    pub fn names(self) -> &'static [&'static str] {
        match self {
            Targets::Attention => &["attn_q", "attn_k", "attn_v", "attn_output"],
            Targets::All => &["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub rank: usize,
    pub alpha: f32,
    pub steps: usize,
    pub lr: f64,
    pub targets: Targets,
    /// Examples per step (their losses are averaged).
    pub batch: usize,
    /// Longest example in tokens (longer ones are refused when the data is read).
    pub max_tokens: usize,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            steps: 100,
            lr: 1e-3,
            targets: Targets::Attention,
            batch: 4,
            max_tokens: 256,
            seed: 1,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidRequest(m));
        if !(1..=256).contains(&self.rank) {
            return bad(format!("rank {} must be from 1 to 256", self.rank));
        }
        if !(1..=100_000).contains(&self.steps) {
            return bad(format!("steps {} must be from 1 to 100000", self.steps));
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr < 1.0) {
            return bad(format!("learning rate {} must be in (0, 1)", self.lr));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) || self.batch == 0 || self.max_tokens < 2 {
            return bad("alpha must be positive, batch at least 1, max_tokens at least 2".into());
        }
        Ok(())
    }
}

/// One training example: the prompt's tokens (not scored) and the answer's (scored).
#[derive(Debug, Clone)]
pub struct Example {
    pub prompt: Vec<u32>,
    pub answer: Vec<u32>,
}

#[derive(Deserialize)]
struct Line {
    messages: Vec<ChatMessage>,
}

/// Reads chat examples, one JSON object `{"messages": [...]}` per line, the last message
/// the assistant's answer to learn. A bad line is an error naming its number.
pub fn read_examples(
    text: &str,
    tokenizer: &TextTokenizer,
    template: Option<&ChatTemplate>,
    eot: u32,
    max_tokens: usize,
) -> Result<Vec<Example>> {
    let template = template
        .ok_or_else(|| Error::InvalidRequest("the model has no chat template; chat examples need one".into()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |m: String| Error::InvalidRequest(format!("line {n}: {m}"));
        let l: Line = serde_json::from_str(line)
            .map_err(|e| bad(format!("not a chat example ({{\"messages\": [...]}}): {e}")))?;
        let Some((last, context)) = l.messages.split_last() else {
            return Err(bad("no messages".into()));
        };
        if last.role != "assistant" || context.is_empty() {
            return Err(bad("the last message must be the assistant's answer, after at least one other".into()));
        }
        if last.content.trim().is_empty() {
            return Err(bad("the assistant's answer is empty".into()));
        }
        let prompt = tokenizer.encode(&template.render(context)?)?;
        let mut answer = tokenizer.encode(&last.content)?;
        answer.push(eot);
        if prompt.len() + answer.len() > max_tokens {
            return Err(bad(format!("{} tokens, more than the {max_tokens} allowed", prompt.len() + answer.len())));
        }
        out.push(Example { prompt, answer });
    }
    if out.is_empty() {
        return Err(Error::InvalidRequest("the data has no examples".into()));
    }
    Ok(out)
}

/// Bytes a job needs: the f32 copy of the base weights, four copies of the adapters
/// (weights, gradients, two AdamW moments), and the activations one step keeps for the
/// backward pass (with a margin for candle's temporaries).
pub fn estimate_bytes(c: &ModelConfig, ffn: usize, cfg: &TrainConfig) -> u64 {
    let (h, l, v) = (c.hidden as u64, c.layers as u64, c.vocab as u64);
    let (qo, kv, f) = ((c.heads * c.head_dim) as u64, c.kv_dim() as u64, ffn as u64);
    let per_layer = h * qo + 2 * h * kv + qo * h + 3 * h * f;
    let weights = 4 * (l * per_layer + 2 * v * h + 2 * l * h + h);
    let r = cfg.rank as u64;
    let lora_per_layer = match cfg.targets {
        Targets::Attention => r * (h + qo) + 2 * r * (h + kv) + r * (qo + h),
        Targets::All => r * (h + qo) + 2 * r * (h + kv) + r * (qo + h) + 2 * r * (h + f) + r * (f + h),
    };
    let adapters = 4 * 4 * l * lora_per_layer;
    let t = cfg.max_tokens as u64;
    let heads = c.heads as u64;
    let per_token_layer = 12 * h + 4 * qo + 4 * kv + 5 * f + 3 * heads * t;
    let activations = 4 * (t * l * per_token_layer + 3 * t * v) * 2;
    weights + adapters + activations
}

/// A trained adapter in the form the engine applies: per layer and projection, `A`
/// (rank x in) and `B` (out x rank) as f32, and the scale alpha / rank.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub rank: usize,
    pub scale: f32,
    pub targets: Targets,
    /// (layer, projection name) -> (A, B)
    pub weights: HashMap<(usize, String), (Vec<f32>, Vec<f32>)>,
}

impl Adapter {
    /// Writes the adapter as safetensors (`blk.N.attn_q.lora_a`, `...lora_b`) with its
    /// rank, scale and targets in a small tensor-free header file beside it.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = HashMap::new();
        for ((layer, name), (a, b)) in &self.weights {
            let (out, inp) = (b.len() / self.rank, a.len() / self.rank);
            tensors
                .insert(format!("blk.{layer}.{name}.lora_a"), Tensor::from_slice(a, (self.rank, inp), &Device::Cpu)?);
            tensors
                .insert(format!("blk.{layer}.{name}.lora_b"), Tensor::from_slice(b, (out, self.rank), &Device::Cpu)?);
        }
        tensors.insert("lora.scale".to_string(), Tensor::new(&[self.scale, self.rank as f32], &Device::Cpu)?);
        let tmp = path.with_extension("tmp");
        candle_core::safetensors::save(&tensors, &tmp)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Self> {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| Error::model(path, e))?;
        let meta = tensors
            .get("lora.scale")
            .ok_or_else(|| Error::model(path, "not a Nave adapter (no lora.scale)"))?
            .to_vec1::<f32>()?;
        let (scale, rank) = (meta[0], meta.get(1).copied().unwrap_or(0.0) as usize);
        let mut weights = HashMap::new();
        for (key, a) in &tensors {
            let Some(rest) = key.strip_suffix(".lora_a") else { continue };
            let (layer, name) = rest
                .strip_prefix("blk.")
                .and_then(|r| r.split_once('.'))
                .ok_or_else(|| Error::model(path, format!("bad tensor name {key}")))?;
            let layer: usize = layer.parse().map_err(|_| Error::model(path, format!("bad tensor name {key}")))?;
            let b = tensors
                .get(&format!("{rest}.lora_b"))
                .ok_or_else(|| Error::model(path, format!("{rest}.lora_b is missing")))?;
            weights.insert(
                (layer, name.to_string()),
                (a.flatten_all()?.to_vec1::<f32>()?, b.flatten_all()?.to_vec1::<f32>()?),
            );
        }
        let targets =
            if weights.keys().any(|(_, n)| n.starts_with("ffn_")) { Targets::All } else { Targets::Attention };
        if rank == 0 || weights.is_empty() {
            return Err(Error::model(path, "the adapter holds no weights"));
        }
        Ok(Self { rank, scale, targets, weights })
    }
}

/// One LoRA pair being trained.
struct Lora {
    a: Var,
    b: Var,
}

/// The frozen f32 weights of one layer (`*_t`: transposed, in x out) and its adapters.
struct Layer {
    attn_norm: Tensor,
    ffn_norm: Tensor,
    proj: HashMap<&'static str, Tensor>,
    lora: HashMap<&'static str, Lora>,
}

/// AdamW's moments for one parameter.
struct Moments {
    m: Tensor,
    v: Tensor,
}

/// Progress after a step.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default)]
pub struct StepFigures {
    pub step: usize,
    pub loss: f32,
    /// Tokens (prompt and answer) through the model per second of this step.
    pub tokens_per_s: f64,
}

pub struct Trainer {
    config: ModelConfig,
    cfg: TrainConfig,
    embed: Tensor,
    out_t: Tensor,
    out_norm: Tensor,
    layers: Vec<Layer>,
    moments: Vec<Moments>,
    examples: Vec<Example>,
    step: usize,
    next_example: usize,
}

fn dequant(g: &mut GgufFile, name: &str) -> Result<Tensor> {
    Ok(g.tensor(name)?.dequantize(&Device::Cpu)?)
}

impl Trainer {
    /// Loads the frozen f32 copy of the model at `path` and fresh adapters.
    pub fn new(path: &Path, config: ModelConfig, cfg: TrainConfig, examples: Vec<Example>) -> Result<Self> {
        cfg.validate()?;
        if config.arch != "llama" {
            return Err(Error::InvalidRequest(format!(
                "fine-tuning supports the llama architecture; this model is {}",
                config.arch
            )));
        }
        if !config.rope_scaling.is_none() || config.sliding_window.is_some() {
            // The training forward pass computes plain rotary angles over full attention.
            return Err(Error::InvalidRequest(
                "fine-tuning supports llama models without rotary scaling or a sliding window".into(),
            ));
        }
        if examples.is_empty() {
            return Err(Error::InvalidRequest("no examples".into()));
        }
        let mut g = GgufFile::open(path)?;
        if g.has_tensor("rope_freqs.weight") || g.has_tensor("blk.0.attn_q.bias") {
            return Err(Error::InvalidRequest(
                "fine-tuning supports llama models without rope_freqs (Llama 3.1) or q/k/v biases".into(),
            ));
        }
        let embed = dequant(&mut g, "token_embd.weight")?;
        let out = if g.has_tensor("output.weight") { dequant(&mut g, "output.weight")? } else { embed.clone() };
        let out_t = out.t()?.contiguous()?;
        let out_norm = dequant(&mut g, "output_norm.weight")?;
        let mut rng = crate::sampler::Rng::new(cfg.seed);
        let mut layers = Vec::with_capacity(config.layers);
        let mut moments = Vec::new();
        for i in 0..config.layers {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            let mut proj = HashMap::new();
            for name in Targets::All.names() {
                proj.insert(*name, dequant(&mut g, &p(name))?.t()?.contiguous()?);
            }
            let mut lora = HashMap::new();
            for name in cfg.targets.names() {
                let (inp, out) = proj[name].dims2()?;
                // A ~ U(-1/sqrt(in), 1/sqrt(in)) (as Kaiming-uniform gives), B = 0.
                let bound = 1.0 / (inp as f64).sqrt();
                let a: Vec<f32> = (0..cfg.rank * inp).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect();
                let a = Var::from_tensor(&Tensor::from_vec(a, (cfg.rank, inp), &Device::Cpu)?)?;
                let b = Var::from_tensor(&Tensor::zeros((out, cfg.rank), DType::F32, &Device::Cpu)?)?;
                for t in [a.as_tensor(), b.as_tensor()] {
                    moments.push(Moments { m: t.zeros_like()?, v: t.zeros_like()? });
                }
                lora.insert(*name, Lora { a, b });
            }
            layers.push(Layer {
                attn_norm: dequant(&mut g, &p("attn_norm"))?,
                ffn_norm: dequant(&mut g, &p("ffn_norm"))?,
                proj,
                lora,
            });
        }
        Ok(Self { config, cfg, embed, out_t, out_norm, layers, moments, examples, step: 0, next_example: 0 })
    }

    pub fn steps_done(&self) -> usize {
        self.step
    }

    pub fn finished(&self) -> bool {
        self.step >= self.cfg.steps
    }

    fn vars(&self) -> Vec<&Var> {
        let mut v = Vec::new();
        for l in &self.layers {
            for name in self.cfg.targets.names() {
                let lora = &l.lora[name];
                v.push(&lora.a);
                v.push(&lora.b);
            }
        }
        v
    }

    fn linear(&self, x: &Tensor, layer: &Layer, name: &str) -> Result<Tensor> {
        let y = x.matmul(&layer.proj[name])?;
        match layer.lora.get(name) {
            Some(l) => {
                let scale = (self.cfg.alpha / self.cfg.rank as f32) as f64;
                let d = x.matmul(&l.a.as_tensor().t()?)?.matmul(&l.b.as_tensor().t()?)?;
                Ok((y + (d * scale)?)?)
            }
            None => Ok(y),
        }
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = (ms + self.config.eps as f64)?.sqrt()?.recip()?;
        Ok(x.broadcast_mul(&inv)?.broadcast_mul(w)?)
    }

    /// Rotary embedding of `x` (heads, len, head_dim), as the serving path applies it.
    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (heads, len, hd) = x.dims3()?;
        let half = hd / 2;
        Ok(match self.config.rope_style {
            RopeStyle::Interleaved => {
                let x = x.reshape((heads, len, half, 2))?;
                let (x0, x1) = (x.narrow(3, 0, 1)?, x.narrow(3, 1, 1)?);
                let (c, s) = (cos.unsqueeze(2)?, sin.unsqueeze(2)?);
                let o0 = (x0.broadcast_mul(&c)? - x1.broadcast_mul(&s)?)?;
                let o1 = (x0.broadcast_mul(&s)? + x1.broadcast_mul(&c)?)?;
                Tensor::cat(&[o0, o1], 3)?.reshape((heads, len, hd))?
            }
            RopeStyle::Halves => {
                let (x0, x1) = (x.narrow(2, 0, half)?, x.narrow(2, half, half)?);
                let o0 = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
                let o1 = (x0.broadcast_mul(sin)? + x1.broadcast_mul(cos)?)?;
                Tensor::cat(&[o0, o1], 2)?
            }
        })
    }

    /// Logits (len, vocab) for `tokens`, differentiable in the adapters.
    fn forward(&self, tokens: &[u32]) -> Result<Tensor> {
        let c = &self.config;
        let len = tokens.len();
        let ids = Tensor::new(tokens, &Device::Cpu)?;
        let mut x = self.embed.index_select(&ids, 0)?;
        if c.embed_scale != 1.0 {
            x = (x * c.embed_scale as f64)?;
        }
        let half = c.head_dim / 2;
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for p in 0..len {
            for i in 0..half {
                let a = p as f64 / (c.rope_theta as f64).powf(2.0 * i as f64 / c.head_dim as f64);
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        let cos = Tensor::from_vec(cos, (len, half), &Device::Cpu)?;
        let sin = Tensor::from_vec(sin, (len, half), &Device::Cpu)?;
        let mask: Vec<f32> = (0..len * len).map(|i| if i % len > i / len { -1e9 } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, (len, len), &Device::Cpu)?;
        let group = c.heads / c.kv_heads;
        for layer in &self.layers {
            let h = self.rms_norm(&x, &layer.attn_norm)?;
            let q =
                self.linear(&h, layer, "attn_q")?.reshape((len, c.heads, c.head_dim))?.transpose(0, 1)?.contiguous()?;
            let k = self
                .linear(&h, layer, "attn_k")?
                .reshape((len, c.kv_heads, c.head_dim))?
                .transpose(0, 1)?
                .contiguous()?;
            let v = self
                .linear(&h, layer, "attn_v")?
                .reshape((len, c.kv_heads, c.head_dim))?
                .transpose(0, 1)?
                .contiguous()?;
            let q = self.rope(&q, &cos, &sin)?;
            let k = self.rope(&k, &cos, &sin)?;
            let repeat = |t: Tensor| -> Result<Tensor> {
                if group == 1 {
                    return Ok(t);
                }
                let (kvh, l, d) = t.dims3()?;
                Ok(t.unsqueeze(1)?.broadcast_as((kvh, group, l, d))?.contiguous()?.reshape((kvh * group, l, d))?)
            };
            let (k, v) = (repeat(k)?, repeat(v)?);
            let att = (q.matmul(&k.t()?.contiguous()?)? * c.attn_scale as f64)?.broadcast_add(&mask)?;
            let max = att.max_keepdim(D::Minus1)?.detach();
            let e = att.broadcast_sub(&max)?.exp()?;
            let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
            let o = p.matmul(&v)?.transpose(0, 1)?.contiguous()?.reshape((len, c.heads * c.head_dim))?;
            x = (x + self.linear(&o, layer, "attn_output")?)?;
            let h = self.rms_norm(&x, &layer.ffn_norm)?;
            let g = self.linear(&h, layer, "ffn_gate")?;
            let u = self.linear(&h, layer, "ffn_up")?;
            let a = match c.activation {
                Activation::Silu => (g.silu()? * u)?,
                Activation::GeluTanh => (g.gelu()? * u)?,
            };
            x = (x + self.linear(&a, layer, "ffn_down")?)?;
        }
        let x = self.rms_norm(&x, &self.out_norm)?;
        Ok(x.matmul(&self.out_t)?)
    }

    /// The logits after each of `tokens` (len x vocab), as training computes them.
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        Ok(self.forward(tokens)?.to_vec2::<f32>()?)
    }

    /// Mean cross-entropy of the answer tokens of `ex` (each predicted from what precedes).
    fn loss(&self, ex: &Example) -> Result<Tensor> {
        let tokens: Vec<u32> = ex.prompt.iter().chain(&ex.answer).copied().collect();
        let logits = self.forward(&tokens[..tokens.len() - 1])?;
        let first = ex.prompt.len() - 1;
        let n = ex.answer.len();
        let logits = logits.narrow(0, first, n)?;
        let vocab = self.config.vocab;
        let mut onehot = vec![0f32; n * vocab];
        for (i, &t) in ex.answer.iter().enumerate() {
            onehot[i * vocab + t as usize] = 1.0;
        }
        let onehot = Tensor::from_vec(onehot, (n, vocab), &Device::Cpu)?;
        let max = logits.max_keepdim(D::Minus1)?.detach();
        let lse = (logits.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + &max)?;
        let picked = (logits * onehot)?.sum_keepdim(D::Minus1)?;
        Ok((lse - picked)?.mean_all()?)
    }

    /// Runs one optimizer step over the next batch of examples.
    pub fn step(&mut self) -> Result<StepFigures> {
        let started = std::time::Instant::now();
        let batch = self.cfg.batch.min(self.examples.len());
        let mut total: Option<Tensor> = None;
        let mut tokens = 0;
        for _ in 0..batch {
            let ex = &self.examples[self.next_example % self.examples.len()];
            self.next_example += 1;
            tokens += ex.prompt.len() + ex.answer.len();
            let l = self.loss(ex)?;
            total = Some(match total {
                Some(t) => (t + l)?,
                None => l,
            });
        }
        let loss = (total.ok_or_else(|| Error::InvalidRequest("no examples".into()))? / batch as f64)?;
        let grads = loss.backward()?;
        self.step += 1;
        let (b1, b2, eps, wd) = (0.9f64, 0.999f64, 1e-8f64, 0.0f64);
        let lr = self.learning_rate();
        let t = self.step as i32;
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        let vars: Vec<Var> = self.vars().into_iter().cloned().collect();
        // Gradients clipped to a global norm of 1 (one bad batch cannot throw the
        // adapters far).
        let mut norm2 = 0.0f64;
        for var in &vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                norm2 += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            }
        }
        let clip = if norm2.sqrt() > 1.0 { 1.0 / norm2.sqrt() } else { 1.0 };
        for (var, mom) in vars.iter().zip(self.moments.iter_mut()) {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let g = &(g * clip)?;
            mom.m = ((&mom.m * b1)? + (g * (1.0 - b1))?)?;
            mom.v = ((&mom.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let update = ((&mom.m / c1)? / ((&mom.v / c2)?.sqrt()? + eps)?)?;
            let theta = var.as_tensor();
            let next = ((theta * (1.0 - lr * wd))? - (update * lr)?)?;
            var.set(&next)?;
        }
        let loss = loss.to_scalar::<f32>()?;
        if !loss.is_finite() {
            return Err(Error::InvalidRequest(format!(
                "the loss diverged at step {} (lower the learning rate)",
                self.step
            )));
        }
        Ok(StepFigures { step: self.step, loss, tokens_per_s: tokens as f64 / started.elapsed().as_secs_f64() })
    }

    /// The learning rate of the current step: a linear warm-up over the first 5% of the
    /// steps, then a cosine decay to a tenth of `lr` at the last step.
    fn learning_rate(&self) -> f64 {
        let (t, n) = (self.step as f64, self.cfg.steps.max(1) as f64);
        let warm = (n * 0.05).max(1.0);
        if t <= warm {
            return self.cfg.lr * t / warm;
        }
        let progress = ((t - warm) / (n - warm).max(1.0)).min(1.0);
        self.cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
    }

    /// The adapters as trained so far, in serving form.
    pub fn adapter(&self) -> Result<Adapter> {
        let mut weights = HashMap::new();
        for (i, l) in self.layers.iter().enumerate() {
            for name in self.cfg.targets.names() {
                let lora = &l.lora[name];
                let a = lora.a.as_tensor().flatten_all()?.to_vec1::<f32>()?;
                let b = lora.b.as_tensor().flatten_all()?.to_vec1::<f32>()?;
                weights.insert((i, name.to_string()), (a, b));
            }
        }
        Ok(Adapter {
            rank: self.cfg.rank,
            scale: self.cfg.alpha / self.cfg.rank as f32,
            targets: self.cfg.targets,
            weights,
        })
    }
}
