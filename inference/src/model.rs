//! The batched forward pass shared by the supported architectures.
//!
//! One call runs a [`Batch`]: rows from many sequences, each row one token at its own
//! position (a decode step is one row, a prefill chunk many). Every weight matrix is
//! applied once to all rows stacked together, which is where batching's throughput comes
//! from; attention reads each sequence's keys and values from the block-addressed
//! [`KvStore`]. Logits are computed only for the rows that sample.
//!
//! The weight products go through the engine's own kernels ([`crate::kernels`]), on the
//! weights exactly as the file stores them, split across the model's worker pool;
//! attention runs on the same pool, one job per (row, KV head). Norms and rotary
//! embeddings are plain loops over `f32` rows (microseconds per step).

use candle_core::Device;

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::kernels::{self, vector, Activations, Isa, Pool, QMatrix};
use crate::kv::{BlockId, KvStore};

/// The nonlinearity of the feed-forward gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    GeluTanh,
}

/// How rotary embeddings pair dimensions: adjacent pairs (GGML's "normal", Llama) or the
/// two halves of the head (NeoX, Gemma).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    Interleaved,
    Halves,
}

/// Shape and numerics of a model, read from its GGUF metadata.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: String,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub context: usize,
    pub eps: f32,
    pub rope_theta: f32,
    /// Rope base of the sliding-window layers, where it differs (Gemma 3).
    pub rope_theta_local: f32,
    pub rope_style: RopeStyle,
    pub activation: Activation,
    /// Multiplies the embeddings (Gemma: sqrt(hidden)).
    pub embed_scale: f32,
    pub attn_scale: f32,
    /// (window, every n-th layer is global) for sliding-window attention.
    pub sliding_window: Option<(usize, usize)>,
    pub qk_norm: bool,
    pub post_norms: bool,
}

impl ModelConfig {
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    fn is_local(&self, layer: usize) -> bool {
        matches!(self.sliding_window, Some((_, every)) if !(layer + 1).is_multiple_of(every))
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate: Linear,
    up: Linear,
    down: Linear,
    post_ffn_norm: Option<Vec<f32>>,
}

/// A loaded model: its weights and config. Shared read-only by the engine thread.
pub struct Transformer {
    pub config: ModelConfig,
    embed: QMatrix,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    output: Linear,
    weight_bytes: u64,
    pool: Pool,
    isa: Isa,
}

/// One row of a batch: a token of a sequence at a position, and where to find the
/// sequence's keys and values.
pub struct Row<'a> {
    pub token: u32,
    pub pos: usize,
    pub blocks: &'a [BlockId],
    /// Whether the logits after this token are needed (the last row of a sequence's chunk).
    pub logits: bool,
    /// The LoRA adapter of the row's request, if any.
    pub adapter: Option<&'a ServingAdapter>,
}

/// A LoRA adapter ready for the forward pass: per layer and projection, `A` (rank x in)
/// and `B` (out x rank), applied as `y += scale * B (A x)` to the rows that asked for it.
pub struct ServingAdapter {
    pub rank: usize,
    pub scale: f32,
    /// Starts the prefix-cache hash chain of its requests.
    pub hash_seed: u64,
    layers: Vec<LoraLayer>,
}

/// One layer's adapters: projection name -> (A, B).
type LoraLayer = std::collections::HashMap<String, (Vec<f32>, Vec<f32>)>;

impl ServingAdapter {
    /// Checks `adapter`'s shapes against the model and arranges it per layer.
    pub fn new(name: &str, adapter: &crate::train::Adapter, c: &ModelConfig) -> Result<Self> {
        let mut layers = vec![std::collections::HashMap::new(); c.layers];
        let r = adapter.rank;
        for ((layer, proj), (a, b)) in &adapter.weights {
            let (inp, out) = match proj.as_str() {
                "attn_q" => (c.hidden, c.heads * c.head_dim),
                "attn_k" | "attn_v" => (c.hidden, c.kv_dim()),
                "attn_output" => (c.heads * c.head_dim, c.hidden),
                "ffn_gate" | "ffn_up" => (c.hidden, b.len() / r.max(1)),
                "ffn_down" => (a.len() / r.max(1), c.hidden),
                other => return Err(Error::InvalidRequest(format!("adapter {name}: unknown projection {other}"))),
            };
            if *layer >= c.layers || a.len() != r * inp || b.len() != out * r {
                return Err(Error::InvalidRequest(format!(
                    "adapter {name} does not fit this model (layer {layer}, {proj})"
                )));
            }
            layers[*layer].insert(proj.clone(), (a.clone(), b.clone()));
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(name, &mut h);
        Ok(Self { rank: r, scale: adapter.scale, hash_seed: std::hash::Hasher::finish(&h) | 1, layers })
    }
}

/// Adds the LoRA term of projection `proj` of layer `li` to `y` (rows of `out`) for the
/// rows of `x` (rows of `inp`) whose request has an adapter.
fn add_lora(rows: &[Row<'_>], li: usize, proj: &str, x: &[f32], inp: usize, y: &mut [f32]) {
    let out = y.len() / rows.len().max(1);
    let mut t = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let Some(ad) = r.adapter else { continue };
        let Some((a, b)) = ad.layers[li].get(proj) else { continue };
        let xi = &x[i * inp..(i + 1) * inp];
        t.clear();
        t.extend(a.chunks_exact(inp).map(|row| dot(row, xi) * ad.scale));
        for (yo, brow) in y[i * out..(i + 1) * out].iter_mut().zip(b.chunks_exact(ad.rank)) {
            *yo += dot(brow, &t);
        }
    }
}

/// Options of a loaded model's engine.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Kernel threads (default: `NAVE_THREADS`, else `CANDLE_NUM_THREADS`, else every core).
    pub threads: Option<usize>,
    /// The kernels' instruction-set path (default: [`Isa::active`]).
    pub isa: Option<Isa>,
}

impl LoadOptions {
    fn threads(&self) -> usize {
        self.threads
            .or_else(|| {
                ["NAVE_THREADS", "CANDLE_NUM_THREADS"]
                    .iter()
                    .find_map(|v| std::env::var(v).ok().and_then(|t| t.trim().parse().ok()))
            })
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }
}

pub(crate) struct Loader<'a> {
    pub gguf: &'a mut GgufFile,
    pub bytes: u64,
}

impl Loader<'_> {
    fn bad(&self, reason: impl std::fmt::Display) -> Error {
        Error::model(self.gguf.path(), reason)
    }

    pub fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self.gguf.tensor(name)?;
        let v = t.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
        if v.len() != len {
            return Err(self.bad(format!("tensor {name} has {} values, expected {len}", v.len())));
        }
        self.bytes += (len * 4) as u64;
        Ok(v)
    }

    /// A weight matrix of shape (out, in), in the file's own type.
    pub fn matrix(&mut self, name: &str, out: usize, inp: usize) -> Result<Linear> {
        let m = self.gguf.matrix(name)?;
        if (m.rows, m.cols) != (out, inp) {
            return Err(self.bad(format!("tensor {name} has shape [{}, {}], expected [{out}, {inp}]", m.rows, m.cols)));
        }
        self.bytes += m.bytes() as u64;
        Ok(Linear { w: m })
    }
}

/// A weight matrix (out, in).
pub(crate) struct Linear {
    w: QMatrix,
}

pub(crate) struct LayerNames {
    pub has_qk_norm: bool,
    pub has_post_norms: bool,
}

impl Transformer {
    /// Builds the model from a GGUF whose config was already read.
    pub(crate) fn load(gguf: &mut GgufFile, config: ModelConfig, opts: LoadOptions, names: LayerNames) -> Result<Self> {
        let c = config.clone();
        let mut l = Loader { gguf, bytes: 0 };
        let embed = l.gguf.matrix("token_embd.weight")?;
        if (embed.rows, embed.cols) != (c.vocab, c.hidden) {
            return Err(l.bad(format!(
                "token_embd.weight has shape [{}, {}], expected [{}, {}]",
                embed.rows, embed.cols, c.vocab, c.hidden
            )));
        }
        let mut layers = Vec::with_capacity(c.layers);
        let (q_out, kv_out) = (c.heads * c.head_dim, c.kv_dim());
        for i in 0..c.layers {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            let ffn = *l.gguf.tensor_dims(&p("ffn_up"))?.first().ok_or_else(|| l.bad("ffn_up has no dimensions"))?;
            layers.push(Layer {
                attn_norm: l.vector(&p("attn_norm"), c.hidden)?,
                q: l.matrix(&p("attn_q"), q_out, c.hidden)?,
                k: l.matrix(&p("attn_k"), kv_out, c.hidden)?,
                v: l.matrix(&p("attn_v"), kv_out, c.hidden)?,
                o: l.matrix(&p("attn_output"), c.hidden, q_out)?,
                q_norm: if names.has_qk_norm { Some(l.vector(&p("attn_q_norm"), c.head_dim)?) } else { None },
                k_norm: if names.has_qk_norm { Some(l.vector(&p("attn_k_norm"), c.head_dim)?) } else { None },
                post_attn_norm: if names.has_post_norms {
                    Some(l.vector(&p("post_attention_norm"), c.hidden)?)
                } else {
                    None
                },
                ffn_norm: l.vector(&p("ffn_norm"), c.hidden)?,
                gate: l.matrix(&p("ffn_gate"), ffn, c.hidden)?,
                up: l.matrix(&p("ffn_up"), ffn, c.hidden)?,
                down: l.matrix(&p("ffn_down"), c.hidden, ffn)?,
                post_ffn_norm: if names.has_post_norms { Some(l.vector(&p("post_ffw_norm"), c.hidden)?) } else { None },
            });
        }
        let out_norm = l.vector("output_norm.weight", c.hidden)?;
        let output = if l.gguf.has_tensor("output.weight") {
            l.matrix("output.weight", c.vocab, c.hidden)?
        } else {
            // Tied embeddings: the output layer is the embedding table itself (shared bytes).
            Linear { w: embed.clone() }
        };
        let weight_bytes = l.bytes + embed.bytes() as u64;
        let isa = opts.isa.unwrap_or_else(Isa::active);
        let pool = Pool::new(opts.threads());
        Ok(Self { config, embed, layers, out_norm, output, weight_bytes, pool, isa })
    }

    /// Bytes the weights take in memory.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// The kernels' path and thread count.
    pub fn kernels(&self) -> (Isa, usize) {
        (self.isa, self.pool.threads())
    }

    fn embed_rows(&self, tokens: impl Iterator<Item = u32>, out: &mut Vec<f32>) -> Result<()> {
        let h = self.config.hidden;
        for t in tokens {
            let t = t as usize;
            if t >= self.config.vocab {
                return Err(Error::InvalidRequest(format!("token id {t} is outside the vocabulary")));
            }
            let at = out.len();
            out.resize(at + h, 0.0);
            self.embed.dequantize_row(t, &mut out[at..]);
            if self.config.embed_scale != 1.0 {
                out[at..].iter_mut().for_each(|x| *x *= self.config.embed_scale);
            }
        }
        Ok(())
    }

    /// Applies `ls` to the same input `x` (`rows` rows): one fused product.
    fn linear<const N: usize>(
        &self,
        ls: [&Linear; N],
        x: &[f32],
        rows: usize,
        act: &mut Activations,
        mut outs: [&mut Vec<f32>; N],
    ) {
        let ws: [&QMatrix; N] = std::array::from_fn(|i| &ls[i].w);
        kernels::matmul(&self.pool, self.isa, &ws, x, rows, act, &mut outs);
    }

    /// Runs `rows` through the model, writing their keys and values into `kv`, and returns
    /// the logits of the rows marked `logits`, in order.
    pub fn forward(&self, rows: &[Row<'_>], kv: &mut KvStore) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let n = rows.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        for r in rows {
            if r.pos >= r.blocks.len() * kv.block_size {
                return Err(Error::InvalidRequest(format!("position {} has no KV block", r.pos)));
            }
        }
        let mut x = Vec::with_capacity(n * c.hidden);
        self.embed_rows(rows.iter().map(|r| r.token), &mut x)?;
        let rope_global = RopeTable::new(rows, c.head_dim, c.rope_theta);
        let rope_local =
            (c.rope_theta_local != c.rope_theta).then(|| RopeTable::new(rows, c.head_dim, c.rope_theta_local));
        let mut h = vec![0.0f32; n * c.hidden];
        // Where each row's positions 0..=pos sit in the KV store (the same in every layer).
        let lora = rows.iter().any(|r| r.adapter.is_some());
        let mut act = Activations::default();
        // Buffers reused by every layer (allocated once per pass, not once per product).
        let (mut q, mut k, mut v, mut o, mut attn) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut g, mut u, mut d) = (Vec::new(), Vec::new(), Vec::new());
        let offsets: Vec<Vec<usize>> =
            rows.iter().map(|r| (0..=r.pos).map(|p| kv.offset(r.blocks, p)).collect()).collect();

        for (li, layer) in self.layers.iter().enumerate() {
            rms_norm_rows(&x, &layer.attn_norm, c.eps, &mut h);
            self.linear([&layer.q, &layer.k, &layer.v], &h, n, &mut act, [&mut q, &mut k, &mut v]);
            if lora {
                add_lora(rows, li, "attn_q", &h, c.hidden, &mut q);
                add_lora(rows, li, "attn_k", &h, c.hidden, &mut k);
                add_lora(rows, li, "attn_v", &h, c.hidden, &mut v);
            }
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                rms_norm_in_place(&mut q, qn, c.eps);
                rms_norm_in_place(&mut k, kn, c.eps);
            }
            let local = c.is_local(li);
            let rope = match (&rope_local, local) {
                (Some(t), true) => t,
                _ => &rope_global,
            };
            rope.apply(&mut q, c.rope_style);
            rope.apply(&mut k, c.rope_style);
            for (i, r) in rows.iter().enumerate() {
                let off = kv.offset(r.blocks, r.pos);
                let d = c.kv_dim();
                kv.k[li][off..off + d].copy_from_slice(&k[i * d..(i + 1) * d]);
                kv.v[li][off..off + d].copy_from_slice(&v[i * d..(i + 1) * d]);
            }
            let window = if local { c.sliding_window.map(|(w, _)| w) } else { None };
            attention(self, rows, &offsets, &q, kv, (li, window), &mut attn);
            self.linear([&layer.o], &attn, n, &mut act, [&mut o]);
            if lora {
                add_lora(rows, li, "attn_output", &attn, c.heads * c.head_dim, &mut o);
            }
            if let Some(w) = &layer.post_attn_norm {
                rms_norm_in_place(&mut o, w, c.eps);
            }
            add_in_place(&mut x, &o);

            rms_norm_rows(&x, &layer.ffn_norm, c.eps, &mut h);
            self.linear([&layer.gate, &layer.up], &h, n, &mut act, [&mut g, &mut u]);
            if lora {
                add_lora(rows, li, "ffn_gate", &h, c.hidden, &mut g);
                add_lora(rows, li, "ffn_up", &h, c.hidden, &mut u);
            }
            match c.activation {
                Activation::Silu => g.iter_mut().zip(&u).for_each(|(g, u)| *g = *g / (1.0 + (-*g).exp()) * u),
                Activation::GeluTanh => g.iter_mut().zip(&u).for_each(|(g, u)| *g = gelu_tanh(*g) * u),
            }
            self.linear([&layer.down], &g, n, &mut act, [&mut d]);
            if lora {
                add_lora(rows, li, "ffn_down", &g, g.len() / n, &mut d);
            }
            if let Some(w) = &layer.post_ffn_norm {
                rms_norm_in_place(&mut d, w, c.eps);
            }
            add_in_place(&mut x, &d);
        }

        let picked: Vec<usize> = rows.iter().enumerate().filter(|(_, r)| r.logits).map(|(i, _)| i).collect();
        if picked.is_empty() {
            return Ok(Vec::new());
        }
        let mut last = Vec::with_capacity(picked.len() * c.hidden);
        for &i in &picked {
            last.extend_from_slice(&x[i * c.hidden..(i + 1) * c.hidden]);
        }
        rms_norm_in_place(&mut last, &self.out_norm, c.eps);
        let mut logits = Vec::new();
        self.linear([&self.output], &last, picked.len(), &mut act, [&mut logits]);
        Ok(logits.chunks_exact(c.vocab).map(<[f32]>::to_vec).collect())
    }
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2 / pi)
    0.5 * x * (1.0 + (C * (x + 0.044_715 * x * x * x)).tanh())
}

/// `out[row] = x[row] / rms(x[row]) * w` for every row of width `w.len()`.
fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let s = 1.0 / (ms + eps).sqrt();
        or.iter_mut().zip(xr).zip(w).for_each(|((o, x), w)| *o = x * s * w);
    }
}

fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    for xr in x.chunks_exact_mut(d) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let s = 1.0 / (ms + eps).sqrt();
        xr.iter_mut().zip(w).for_each(|(x, w)| *x *= s * w);
    }
}

/// cos and sin of every row's position for each rotated pair of a head.
struct RopeTable {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    fn new(rows: &[Row<'_>], head_dim: usize, theta: f32) -> Self {
        let half = head_dim / 2;
        let inv: Vec<f64> = (0..half).map(|i| 1.0 / (theta as f64).powf(2.0 * i as f64 / head_dim as f64)).collect();
        let mut cos = Vec::with_capacity(rows.len() * half);
        let mut sin = Vec::with_capacity(rows.len() * half);
        for r in rows {
            for f in &inv {
                let a = r.pos as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Self { half, cos, sin }
    }

    /// Rotates every head of every row of `x` (rows of `heads * head_dim`).
    fn apply(&self, x: &mut [f32], style: RopeStyle) {
        let hd = self.half * 2;
        let width = x.len() / (self.cos.len() / self.half);
        for (r, row) in x.chunks_exact_mut(width).enumerate() {
            let cos = &self.cos[r * self.half..(r + 1) * self.half];
            let sin = &self.sin[r * self.half..(r + 1) * self.half];
            for head in row.chunks_exact_mut(hd) {
                for i in 0..self.half {
                    let (a, b) = match style {
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                        RopeStyle::Halves => (i, i + self.half),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * cos[i] - x1 * sin[i];
                    head[b] = x0 * sin[i] + x1 * cos[i];
                }
            }
        }
    }
}

/// A raw pointer that may cross to the worker threads; each job writes a disjoint range.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: only used to write disjoint ranges from the pool's workers while the owner waits.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// Causal attention of every row over its own sequence's keys and values, one job per
/// (row, KV head) on the model's worker pool.
fn attention(
    m: &Transformer,
    rows: &[Row<'_>],
    offsets: &[Vec<usize>],
    q: &[f32],
    kv: &KvStore,
    (layer, window): (usize, Option<usize>),
    out: &mut Vec<f32>,
) {
    let (pool, isa, c) = (&m.pool, m.isa, &m.config);
    let (heads, hd) = (c.heads, c.head_dim);
    let group = heads / c.kv_heads;
    // Every element is written: each job overwrites its heads' outputs.
    out.resize(rows.len() * heads * hd, 0.0);
    let out_ptr = SharedOut(out.as_mut_ptr());
    let (kc, vc) = (&kv.k[layer], &kv.v[layer]);
    let threads = pool.threads();
    // One job per (row, KV head): the query heads sharing that KV head read each key and
    // value once between them. With few rows (decode) that is too few jobs to share
    // evenly (3 KV heads on 2 threads), so each query head becomes a job of its own.
    let per_job = if rows.len() * c.kv_heads >= 4 * threads { group } else { 1 };
    let jobs = rows.len() * heads / per_job;
    // Jobs are dealt round-robin: later rows of a prefill chunk attend over more
    // positions, so contiguous shares would leave the last thread the most work.
    // Rebinding makes the closure capture the Send + Sync wrapper rather than its raw
    // pointer field (edition 2021 captures disjoint fields).
    #[allow(clippy::redundant_locals)]
    let run = |first: usize, step: usize| {
        let out_ptr = out_ptr;
        let mut scores: Vec<f32> = Vec::new();
        let mut offs: Vec<usize> = Vec::new();
        for job in (first..jobs).step_by(step) {
            let (ri, head0) = (job * per_job / heads, job * per_job % heads);
            let g = head0 / group;
            let r = &rows[ri];
            let first = window.map_or(0, |w| (r.pos + 1).saturating_sub(w));
            let at = ri * heads + head0;
            let qs = &q[at * hd..(at + per_job) * hd];
            // The keys and values of KV head g start g * hd into each position's row.
            offs.clear();
            offs.extend(offsets[ri][first..=r.pos].iter().map(|&o| o + g * hd));
            // SAFETY: the job owns the outputs of heads head0 .. head0 + per_job of row
            // ri; no other job writes them, and `out` outlives the pool call, which returns
            // only when every job is done.
            let o = unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add(at * hd), per_job * hd) };
            vector::attend(isa, qs, kc, vc, &offs, hd, c.attn_scale, &mut scores, o);
        }
    };
    if jobs >= 2 && threads > 1 {
        pool.run(&|t| run(t, threads));
    } else {
        run(0, 1);
    }
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Sixteen independent accumulators (one 512-bit register) let the compiler vectorize
    // without reassociation.
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for j in 0..16 {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}
