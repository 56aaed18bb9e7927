//! The batched forward pass shared by the supported architectures.
//!
//! One call runs a [`Batch`]: rows from many sequences, each row one token at its own
//! position (a decode step is one row, a prefill chunk many). Every weight matrix is
//! applied once to all rows stacked together, which is where batching's throughput comes
//! from; attention reads each sequence's keys and values from the block-addressed
//! [`KvStore`]. Logits are computed only for the rows that sample.
//!
//! The weight products go through candle's quantized matmul; norms, rotary embeddings and
//! attention are plain loops over `f32` slices run on candle's CPU worker pool (one pool
//! for everything, so the engine never has two pools fighting over two cores).

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Module, Tensor};

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
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
    embed: QTensor,
    embed_row_bytes: usize,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    output: Linear,
    weight_bytes: u64,
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

/// Options that change how weights are held in memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Re-quantize weight types that have only scalar kernels in candle (Q4_1, Q5_0, Q5_1)
    /// to Q8_0, which has SIMD kernels: about 1.6 times the memory, several times faster.
    pub requantize: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { requantize: true }
    }
}

pub(crate) struct Loader<'a> {
    pub gguf: &'a mut GgufFile,
    pub opts: LoadOptions,
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

    /// A weight matrix of shape (out, in).
    pub fn matrix(&mut self, name: &str, out: usize, inp: usize) -> Result<Linear> {
        let t = self.gguf.tensor(name)?;
        let dims = t.shape().dims().to_vec();
        if dims != [out, inp] {
            return Err(self.bad(format!("tensor {name} has shape {dims:?}, expected [{out}, {inp}]")));
        }
        self.linear(t)
    }

    /// Holds `t` (out, in) the way the CPU multiplies it fastest: candle's repacked
    /// AVX-512/AVX VNNI kernels take Q8_0 (and Q4_K) only with `in` a multiple of 256,
    /// and are about ten times faster than its generic dot products here (SmolLM2's
    /// hidden size, 576, misses them). So other types are re-quantized to Q8_0 and the
    /// columns padded with zeros to the next multiple of 256; inputs are padded alike.
    pub fn linear(&mut self, t: QTensor) -> Result<Linear> {
        let (out, inp) = t.shape().dims2()?;
        let fast = matches!(t.dtype(), GgmlDType::Q8_0 | GgmlDType::Q4K) && inp % QK_K == 0;
        let convertible = inp % GgmlDType::Q8_0.block_size() == 0 && out % 16 == 0;
        let slow_scalar = matches!(t.dtype(), GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1);
        let t = if self.opts.requantize && !fast && convertible && (has_vnni() || slow_scalar) {
            let padded = if has_vnni() { inp.next_multiple_of(QK_K) } else { inp };
            let f = t.dequantize(&Device::Cpu)?;
            let f = if padded > inp { f.pad_with_zeros(1, 0, padded - inp)? } else { f };
            QTensor::quantize(&f, GgmlDType::Q8_0)?
        } else {
            t
        };
        self.bytes += t.storage_size_in_bytes() as u64;
        let padded = t.shape().dims2()?.1;
        let t = std::sync::Arc::new(t);
        Ok(Linear { w: QMatMul::from_arc(t.clone())?, t, inp, padded })
    }
}

/// Super-block size of the k-quants: candle's fast CPU kernels need whole ones per row.
const QK_K: usize = 256;

/// Whether this CPU has the int8 dot-product instructions candle's repacked kernels use.
fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *VNNI.get_or_init(|| {
            (is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni"))
                || is_x86_feature_detected!("avxvnni")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A weight matrix (out, in) whose columns may be zero-padded to `padded`.
pub(crate) struct Linear {
    w: QMatMul,
    t: std::sync::Arc<QTensor>,
    inp: usize,
    padded: usize,
}

impl Linear {
    /// `x` (rows, in) as a tensor with the padded width.
    fn input(&self, x: &[f32], rows: usize) -> Result<Tensor> {
        debug_assert_eq!(x.len(), rows * self.inp);
        Ok(if self.padded == self.inp {
            Tensor::from_slice(x, (rows, self.inp), &Device::Cpu)?
        } else {
            let mut p = vec![0.0f32; rows * self.padded];
            for (dst, src) in p.chunks_exact_mut(self.padded).zip(x.chunks_exact(self.inp)) {
                dst[..self.inp].copy_from_slice(src);
            }
            Tensor::from_vec(p, (rows, self.padded), &Device::Cpu)?
        })
    }

    /// `x` (rows, in) times the transposed weights: (rows, out).
    fn forward(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        Ok(self.w.forward(&self.input(x, rows)?)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Several matrices applied to the same `x` (q, k, v; gate, up): one quantization of
    /// `x` and one parallel region when candle's fused kernel takes them, else one by one.
    fn forward_shared<const N: usize>(ls: [&Linear; N], x: &[f32], rows: usize) -> Result<[Vec<f32>; N]> {
        let same = ls.iter().all(|l| l.padded == ls[0].padded && l.t.dtype() == ls[0].t.dtype());
        if same {
            let input = ls[0].input(x, rows)?;
            let ts: Vec<&QTensor> = ls.iter().map(|l| l.t.as_ref()).collect();
            if let Some(outs) = QTensor::gemv_fused_shared_lhs(&ts, &input)? {
                let v: Vec<Vec<f32>> =
                    outs.into_iter().map(|t| t.flatten_all()?.to_vec1::<f32>()).collect::<candle_core::Result<_>>()?;
                if let Ok(a) = <[Vec<f32>; N]>::try_from(v) {
                    return Ok(a);
                }
            }
        }
        let mut out: [Vec<f32>; N] = std::array::from_fn(|_| Vec::new());
        for (o, l) in out.iter_mut().zip(ls) {
            *o = l.forward(x, rows)?;
        }
        Ok(out)
    }
}

pub(crate) struct LayerNames {
    pub has_qk_norm: bool,
    pub has_post_norms: bool,
}

impl Transformer {
    /// Builds the model from a GGUF whose config was already read.
    pub(crate) fn load(gguf: &mut GgufFile, config: ModelConfig, opts: LoadOptions, names: LayerNames) -> Result<Self> {
        let c = config.clone();
        let mut l = Loader { gguf, opts, bytes: 0 };
        let embed = l.gguf.tensor("token_embd.weight")?;
        if embed.shape().dims() != [c.vocab, c.hidden] {
            return Err(l.bad(format!(
                "token_embd.weight has shape {:?}, expected [{}, {}]",
                embed.shape().dims(),
                c.vocab,
                c.hidden
            )));
        }
        if !c.hidden.is_multiple_of(embed.dtype().block_size()) {
            return Err(l.bad("embedding rows are not whole quantization blocks"));
        }
        let embed_row_bytes = c.hidden / embed.dtype().block_size() * embed.dtype().type_size();
        let mut layers = Vec::with_capacity(c.layers);
        let (q_out, kv_out) = (c.heads * c.head_dim, c.kv_dim());
        for i in 0..c.layers {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            let ffn = l.gguf.tensor(&p("ffn_up"))?.shape().dims()[0];
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
            // Tied embeddings: the output layer is (a copy of) the embedding table.
            let t = l.gguf.tensor("token_embd.weight")?;
            l.linear(t)?
        };
        let weight_bytes = l.bytes + embed.storage_size_in_bytes() as u64;
        Ok(Self { config, embed, embed_row_bytes, layers, out_norm, output, weight_bytes })
    }

    /// Bytes the weights take in memory.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    fn embed_rows(&self, tokens: impl Iterator<Item = u32>, out: &mut Vec<f32>) -> Result<()> {
        let data = self.embed.data()?;
        let dtype = self.embed.dtype();
        for t in tokens {
            let t = t as usize;
            if t >= self.config.vocab {
                return Err(Error::InvalidRequest(format!("token id {t} is outside the vocabulary")));
            }
            let bytes = &data[t * self.embed_row_bytes..(t + 1) * self.embed_row_bytes];
            let storage = QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, dtype)?;
            let row = QTensor::new(storage, (self.config.hidden,))?.dequantize(&Device::Cpu)?;
            let row = row.to_vec1::<f32>()?;
            out.extend(row.iter().map(|x| x * self.config.embed_scale));
        }
        Ok(())
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
        let offsets: Vec<Vec<usize>> =
            rows.iter().map(|r| (0..=r.pos).map(|p| kv.offset(r.blocks, p)).collect()).collect();

        for (li, layer) in self.layers.iter().enumerate() {
            rms_norm_rows(&x, &layer.attn_norm, c.eps, &mut h);
            let [mut q, mut k, mut v] = Linear::forward_shared([&layer.q, &layer.k, &layer.v], &h, n)?;
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
            let attn = attention(rows, &offsets, &q, kv, li, c, window);
            let mut o = layer.o.forward(&attn, n)?;
            if lora {
                add_lora(rows, li, "attn_output", &attn, c.heads * c.head_dim, &mut o);
            }
            if let Some(w) = &layer.post_attn_norm {
                rms_norm_in_place(&mut o, w, c.eps);
            }
            add_in_place(&mut x, &o);

            rms_norm_rows(&x, &layer.ffn_norm, c.eps, &mut h);
            let [mut g, mut u] = Linear::forward_shared([&layer.gate, &layer.up], &h, n)?;
            if lora {
                add_lora(rows, li, "ffn_gate", &h, c.hidden, &mut g);
                add_lora(rows, li, "ffn_up", &h, c.hidden, &mut u);
            }
            match c.activation {
                Activation::Silu => g.iter_mut().zip(&u).for_each(|(g, u)| *g = *g / (1.0 + (-*g).exp()) * u),
                Activation::GeluTanh => g.iter_mut().zip(&u).for_each(|(g, u)| *g = gelu_tanh(*g) * u),
            }
            let mut d = layer.down.forward(&g, n)?;
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
        let logits = self.output.forward(&last, picked.len())?;
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
/// (row, head) on candle's worker pool.
fn attention(
    rows: &[Row<'_>],
    offsets: &[Vec<usize>],
    q: &[f32],
    kv: &KvStore,
    layer: usize,
    c: &ModelConfig,
    window: Option<usize>,
) -> Vec<f32> {
    let (heads, hd) = (c.heads, c.head_dim);
    let group = heads / c.kv_heads;
    let mut out = vec![0.0f32; rows.len() * heads * hd];
    let out_ptr = SharedOut(out.as_mut_ptr());
    let (kc, vc) = (&kv.k[layer], &kv.v[layer]);
    // One job per (row, KV head): the query heads sharing that KV head read each key and
    // value once between them.
    let jobs = rows.len() * c.kv_heads;
    // Rebinding makes the closure capture the Send + Sync wrapper rather than its raw
    // pointer field (edition 2021 captures disjoint fields).
    #[allow(clippy::redundant_locals)]
    let run = |range: std::ops::Range<usize>| {
        let out_ptr = out_ptr;
        let mut scores: Vec<f32> = Vec::new();
        for job in range {
            let (ri, g) = (job / c.kv_heads, job % c.kv_heads);
            let r = &rows[ri];
            let first = window.map_or(0, |w| (r.pos + 1).saturating_sub(w));
            let len = r.pos + 1 - first;
            let head0 = ri * heads + g * group;
            let qs = &q[head0 * hd..(head0 + group) * hd];
            scores.clear();
            scores.resize(group * len, 0.0);
            let offs = &offsets[ri][first..=r.pos];
            for (i, &off) in offs.iter().enumerate() {
                let off = off + g * hd;
                let k = &kc[off..off + hd];
                for (j, qv) in qs.chunks_exact(hd).enumerate() {
                    scores[j * len + i] = dot(qv, k) * c.attn_scale;
                }
            }
            for row in scores.chunks_exact_mut(len) {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for s in row.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|s| *s *= inv);
            }
            // SAFETY: job (ri, g) owns the outputs of heads g*group .. (g+1)*group of row ri;
            // no other job writes them, and `out` outlives the pool call, which returns only
            // when every job is done.
            let o = unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add(head0 * hd), group * hd) };
            for (i, &off) in offs.iter().enumerate() {
                let off = off + g * hd;
                let v = &vc[off..off + hd];
                for (j, oj) in o.chunks_exact_mut(hd).enumerate() {
                    let w = scores[j * len + i];
                    oj.iter_mut().zip(v).for_each(|(o, v)| *o += w * v);
                }
            }
        }
    };
    if jobs >= 4 {
        candle_core::utils::barrier_pool().execute_chunked(jobs, run);
    } else {
        run(0..jobs);
    }
    out
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
