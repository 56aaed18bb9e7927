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

pub use crate::kernels::vector::Activation;

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
    /// (window, every n-th layer is global) for sliding-window attention; 0 for "no
    /// layer is global" (Mistral's window on every layer).
    pub sliding_window: Option<(usize, usize)>,
    pub qk_norm: bool,
    pub post_norms: bool,
    /// How positions become rotation angles beyond the plain base (linear, YaRN).
    pub rope_scaling: RopeScaling,
    /// `cap * tanh(score / cap)` on attention scores (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// `cap * tanh(logit / cap)` on the output logits (Gemma 2).
    pub final_softcap: Option<f32>,
    /// How an embedding pools the final hidden states (`{arch}.pooling_type`; mean when
    /// the file names none).
    pub pooling: Pooling,
}

/// How the hidden states of a text's tokens become its embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Pooling {
    Mean,
    /// The first token's (BERT's CLS).
    First,
    /// The last token's.
    Last,
}

/// Rotary scaling from the GGUF's `{arch}.rope.scaling.*` keys, in GGML's terms: the
/// angle of pair `i` at position `p` is `p * base^(-2i/d) / factor_i` (`factor_i` from a
/// `rope_freqs` tensor, Llama 3), then scaled by `freq_scale` (linear and YaRN), with
/// YaRN's ramp between the interpolated and the original angle and its magnitude factor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeScaling {
    /// `1 / factor` for linear and YaRN scaling; 1 for none.
    pub freq_scale: f32,
    /// YaRN's extrapolation mix (1 for YaRN, 0 otherwise).
    pub ext_factor: f32,
    /// Multiplies cos and sin (YaRN's magnitude correction, `rope.scaling.attn_factor`).
    pub attn_factor: f32,
    pub beta_fast: f32,
    pub beta_slow: f32,
    /// The context the model was trained at before scaling (YaRN's correction range).
    pub orig_context: usize,
}

impl RopeScaling {
    pub const NONE: RopeScaling = RopeScaling {
        freq_scale: 1.0,
        ext_factor: 0.0,
        attn_factor: 1.0,
        beta_fast: 32.0,
        beta_slow: 1.0,
        orig_context: 0,
    };

    /// Whether the angles are the plain ones (the YaRN parameters then play no part).
    pub fn is_none(&self) -> bool {
        self.freq_scale == 1.0 && self.ext_factor == 0.0 && self.attn_factor == 1.0
    }
}

impl ModelConfig {
    /// The keys every architecture writes the same way under its own prefix (`{arch}.`):
    /// sizes, heads, norms' epsilon, the rotary base and its scaling. The architecture's
    /// file then sets what is its own (rotary style, activation, norms, windows, caps).
    pub(crate) fn from_common_keys(gguf: &GgufFile, arch: &str, vocab: usize, default_context: u32) -> Result<Self> {
        let key = |k: &str| format!("{arch}.{k}");
        let hidden = gguf.u32(&key("embedding_length"))? as usize;
        let heads = gguf.u32(&key("attention.head_count"))? as usize;
        let kv_heads = gguf.opt_u32(&key("attention.head_count_kv")).unwrap_or(heads as u32) as usize;
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(Error::model(
                gguf.path(),
                format!("inconsistent heads: {heads} query, {kv_heads} kv, hidden {hidden}"),
            ));
        }
        let head_dim = match gguf.opt_u32(&key("attention.key_length")) {
            Some(d) => d as usize,
            None if hidden.is_multiple_of(heads) => hidden / heads,
            None => {
                return Err(Error::model(gguf.path(), format!("hidden {hidden} is not a multiple of {heads} heads")))
            }
        };
        if let Some(v) = gguf.opt_u32(&key("attention.value_length")) {
            if v as usize != head_dim {
                return Err(Error::model(gguf.path(), format!("value heads of {v} beside key heads of {head_dim}")));
            }
        }
        if let Some(rot) = gguf.opt_u32(&key("rope.dimension_count")) {
            // Partial rotary embeddings (Phi-2, GPT-NeoX) are other architectures.
            if rot as usize != head_dim {
                return Err(Error::model(
                    gguf.path(),
                    format!("rotary embeddings over {rot} of {head_dim} head dimensions are not supported"),
                ));
            }
        }
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(Error::model(gguf.path(), format!("head dimension {head_dim} is not even")));
        }
        let rope_theta = gguf.f32_or(&key("rope.freq_base"), 10_000.0)?;
        let context = gguf.opt_u32(&key("context_length")).unwrap_or(default_context) as usize;
        Ok(ModelConfig {
            arch: arch.into(),
            hidden,
            layers: gguf.u32(&key("block_count"))? as usize,
            heads,
            kv_heads,
            head_dim,
            vocab,
            context,
            eps: gguf.f32_or(&key("attention.layer_norm_rms_epsilon"), 1e-5)?,
            rope_theta,
            rope_theta_local: rope_theta,
            rope_style: RopeStyle::Halves,
            activation: Activation::Silu,
            embed_scale: 1.0,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            sliding_window: None,
            qk_norm: false,
            post_norms: false,
            rope_scaling: rope_scaling(gguf, arch, context)?,
            attn_softcap: None,
            final_softcap: None,
            // GGML's numbering: 1 mean, 2 cls, 3 last.
            pooling: match gguf.opt_u32(&key("pooling_type")) {
                Some(2) => Pooling::First,
                Some(3) => Pooling::Last,
                _ => Pooling::Mean,
            },
        })
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    pub(crate) fn is_local(&self, layer: usize) -> bool {
        match self.sliding_window {
            Some((_, 0)) => true,
            Some((_, every)) => !(layer + 1).is_multiple_of(every),
            None => false,
        }
    }
}

/// `{arch}.rope.scaling.*`: none, linear (`factor`, or the older `rope.scale_linear`; the
/// default type where a factor is given), LongRoPE (factors from tensors) or
/// YaRN (`factor`, `original_context_length`, `yarn_ext_factor`, `yarn_beta_fast`,
/// `yarn_beta_slow`, `yarn_log_multiplier`), each with `attn_factor`. The magnitude term is
/// llama.cpp's: YaRN's `1 + 0.1 ln(factor)`, or with a log multiplier `m` that term over
/// `1 + 0.1 m ln(factor)`.
fn rope_scaling(gguf: &GgufFile, arch: &str, context: usize) -> Result<RopeScaling> {
    let key = |k: &str| format!("{arch}.rope.{k}");
    let kind = gguf.opt_string(&key("scaling.type"));
    let factor = match gguf.f32_or(&key("scaling.factor"), 0.0)? {
        f if f > 0.0 => f,
        _ => gguf.f32_or(&key("scale_linear"), 1.0)?,
    };
    let mut s = RopeScaling::NONE;
    s.attn_factor = gguf.f32_or(&key("scaling.attn_factor"), 1.0)?;
    s.orig_context = gguf.opt_u32(&key("scaling.original_context_length")).map_or(context, |c| c as usize);
    match kind.as_deref() {
        // LongRoPE (Phi-3 128k) also carries per-pair factors as tensors
        // (`rope_factors_short`); like llama.cpp, a `factor` scales it too.
        None | Some("linear") | Some("longrope") if factor != 1.0 => s.freq_scale = 1.0 / factor,
        None | Some("none") | Some("linear") | Some("longrope") => {}
        Some("yarn") => {
            s.freq_scale = 1.0 / factor;
            s.ext_factor = match gguf.f32_or(&key("scaling.yarn_ext_factor"), -1.0)? {
                e if e >= 0.0 => e,
                _ => 1.0,
            };
            s.beta_fast = gguf.f32_or(&key("scaling.yarn_beta_fast"), 32.0)?;
            s.beta_slow = gguf.f32_or(&key("scaling.yarn_beta_slow"), 1.0)?;
            let log_mul = gguf.f32_or(&key("scaling.yarn_log_multiplier"), 0.0)?;
            if s.ext_factor != 0.0 && log_mul != 0.0 && factor > 1.0 {
                // The forward pass multiplies by 1 + 0.1 ln(factor) for YaRN; the model's
                // own term is mscale(1) / mscale(log_mul).
                let mscale = |m: f32| 0.1 * m * factor.ln() + 1.0;
                s.attn_factor *= mscale(1.0) / mscale(log_mul) / mscale(1.0);
            }
        }
        Some(other) => {
            return Err(Error::model(
                gguf.path(),
                format!("unsupported rotary scaling {other:?} (supported: linear, yarn)"),
            ))
        }
    }
    if !(s.freq_scale > 0.0 && s.freq_scale.is_finite()) {
        return Err(Error::model(gguf.path(), format!("invalid rotary scaling factor {factor}")));
    }
    Ok(s)
}

pub(crate) struct Layer {
    pub(crate) attn_norm: Vec<f32>,
    pub(crate) q: Linear,
    pub(crate) k: Linear,
    pub(crate) v: Linear,
    pub(crate) o: Linear,
    /// Biases of q, k and v (Qwen 2), added after the products.
    pub(crate) qkv_bias: Option<[Vec<f32>; 3]>,
    pub(crate) q_norm: Option<Vec<f32>>,
    pub(crate) k_norm: Option<Vec<f32>>,
    pub(crate) post_attn_norm: Option<Vec<f32>>,
    pub(crate) ffn_norm: Vec<f32>,
    pub(crate) gate: Linear,
    pub(crate) up: Linear,
    pub(crate) down: Linear,
    pub(crate) post_ffn_norm: Option<Vec<f32>>,
}

/// A loaded model: its weights and config. Shared read-only by the engine thread.
pub struct Transformer {
    pub config: ModelConfig,
    embed: QMatrix,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    output: Linear,
    /// Llama 3's per-pair rotary frequency divisors (`rope_freqs.weight`), or Phi-3's
    /// short-context factors.
    rope_freqs: Option<Vec<f32>>,
    weight_bytes: u64,
    pool: Pool,
    isa: Isa,
    /// The weights on a candle device (a CUDA spoke): the forward pass runs there, and
    /// the host keeps only the embedding table.
    device: Option<crate::candle_path::DeviceModel>,
}

/// One row of a batch: a token of a sequence at a position, and where to find the
/// sequence's keys and values.
pub struct Row<'a> {
    pub token: u32,
    pub pos: usize,
    pub blocks: &'a [BlockId],
    /// Whether the logits after this token are needed (the last row of a sequence's chunk).
    pub logits: bool,
    /// Whether this row's final hidden state (after the output norm) is wanted instead of
    /// its logits (embeddings).
    pub hidden: bool,
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
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Kernel threads (default: `NAVE_THREADS`, else `CANDLE_NUM_THREADS`, else every core).
    pub threads: Option<usize>,
    /// The kernels' instruction-set path (default: [`Isa::active`]).
    pub isa: Option<Isa>,
    /// Run the forward pass through candle on this device ([`crate::candle_path`]; a CUDA
    /// device from [`crate::device::Placement::open`]) instead of the CPU kernels.
    pub device: Option<Device>,
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
    pub(crate) w: QMatrix,
}

impl Linear {
    /// Rows `first .. first + n` as a matrix of their own (the same bytes).
    fn rows(&self, first: usize, n: usize) -> Linear {
        Linear { w: self.w.rows(first, n) }
    }
}

/// What an architecture's layers hold beyond the Llama set.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LayerNames {
    pub has_qk_norm: bool,
    pub has_post_norms: bool,
}

impl Transformer {
    /// Builds the model from a GGUF whose config was already read. Whatever the
    /// architecture writes as one tensor is cut into the rows the forward pass multiplies
    /// separately, byte for byte (rows of a quantized matrix are whole blocks): a fused
    /// `attn_qkv` into q, k and v, a fused `ffn_up` without `ffn_gate` (Phi-3) into its
    /// gate and up halves.
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
            let b = |s: &str| format!("blk.{i}.{s}.bias");
            let (q, k, v) = if l.gguf.has_tensor(&p("attn_qkv")) {
                let qkv = l.matrix(&p("attn_qkv"), q_out + 2 * kv_out, c.hidden)?;
                (qkv.rows(0, q_out), qkv.rows(q_out, kv_out), qkv.rows(q_out + kv_out, kv_out))
            } else {
                (
                    l.matrix(&p("attn_q"), q_out, c.hidden)?,
                    l.matrix(&p("attn_k"), kv_out, c.hidden)?,
                    l.matrix(&p("attn_v"), kv_out, c.hidden)?,
                )
            };
            let qkv_bias = if l.gguf.has_tensor(&b("attn_q")) {
                Some([l.vector(&b("attn_q"), q_out)?, l.vector(&b("attn_k"), kv_out)?, l.vector(&b("attn_v"), kv_out)?])
            } else {
                None
            };
            let up_rows =
                *l.gguf.tensor_dims(&p("ffn_up"))?.first().ok_or_else(|| l.bad("ffn_up has no dimensions"))?;
            let (gate, up, ffn) = if l.gguf.has_tensor(&p("ffn_gate")) {
                (l.matrix(&p("ffn_gate"), up_rows, c.hidden)?, l.matrix(&p("ffn_up"), up_rows, c.hidden)?, up_rows)
            } else {
                if !up_rows.is_multiple_of(2) {
                    return Err(l.bad(format!("fused {} has {up_rows} rows, not gate and up halves", p("ffn_up"))));
                }
                let ffn = up_rows / 2;
                let fused = l.matrix(&p("ffn_up"), up_rows, c.hidden)?;
                (fused.rows(0, ffn), fused.rows(ffn, ffn), ffn)
            };
            layers.push(Layer {
                attn_norm: l.vector(&p("attn_norm"), c.hidden)?,
                q,
                k,
                v,
                o: l.matrix(&p("attn_output"), c.hidden, q_out)?,
                qkv_bias,
                q_norm: if names.has_qk_norm { Some(l.vector(&p("attn_q_norm"), c.head_dim)?) } else { None },
                k_norm: if names.has_qk_norm { Some(l.vector(&p("attn_k_norm"), c.head_dim)?) } else { None },
                post_attn_norm: if names.has_post_norms {
                    Some(l.vector(&p("post_attention_norm"), c.hidden)?)
                } else {
                    None
                },
                ffn_norm: l.vector(&p("ffn_norm"), c.hidden)?,
                gate,
                up,
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
        let pairs = c.head_dim / 2;
        let rope_freqs = match ["rope_freqs.weight", "rope_factors_short.weight"].iter().find(|n| l.gguf.has_tensor(n))
        {
            Some(name) => Some(l.vector(name, pairs)?),
            None => None,
        };
        let weight_bytes = l.bytes + embed.bytes() as u64;
        let isa = opts.isa.unwrap_or_else(Isa::active);
        let pool = Pool::new(opts.threads());
        let (layers, device) = match &opts.device {
            // The host's copies of the layers go once they are on the device.
            Some(dev) => {
                (Vec::new(), Some(crate::candle_path::DeviceModel::upload(&layers, &out_norm, &output.w, dev)?))
            }
            None => (layers, None),
        };
        Ok(Self { config, embed, layers, out_norm, output, rope_freqs, weight_bytes, pool, isa, device })
    }

    /// Bytes the weights take in memory.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// The kernels' path and thread count.
    pub fn kernels(&self) -> (Isa, usize) {
        (self.isa, self.pool.threads())
    }

    /// The candle device the forward pass runs on, if not the CPU kernels.
    pub fn device(&self) -> Option<&Device> {
        self.device.as_ref().map(|d| d.device())
    }

    pub(crate) fn rope_freqs(&self) -> Option<&[f32]> {
        self.rope_freqs.as_deref()
    }

    /// An empty KV store of `num_blocks` blocks where the forward pass reads it: host
    /// memory, or the model's device.
    pub fn new_kv(&self, num_blocks: usize, block_size: usize) -> Result<KvStore> {
        let c = &self.config;
        Ok(match &self.device {
            Some(d) => {
                KvStore::on_device(d.new_kv(c.layers, num_blocks * block_size, c.kv_dim())?, block_size, c.kv_dim())
            }
            None => KvStore::new(c.layers, num_blocks, block_size, c.kv_dim()),
        })
    }

    pub(crate) fn embed_rows(&self, tokens: impl Iterator<Item = u32>, out: &mut Vec<f32>) -> Result<()> {
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

    /// Runs `rows` through the model, writing their keys and values into `kv`; the
    /// outputs are the logits of the rows marked `logits` (computed as they are taken) and
    /// the final hidden states of those marked `hidden`, in row order. `logits` is a buffer
    /// for them (a previous step's [`Outputs::into_buffer`], or empty).
    pub fn forward_rows(&self, rows: &[Row<'_>], kv: &mut KvStore, logits: Vec<f32>) -> Result<Outputs> {
        let c = &self.config;
        let n = rows.len();
        if n == 0 {
            return Ok(Outputs { logits, ..Outputs::default() });
        }
        for r in rows {
            if r.pos >= r.blocks.len() * kv.block_size {
                return Err(Error::InvalidRequest(format!("position {} has no KV block", r.pos)));
            }
        }
        if let Some(d) = &self.device {
            return d.forward(self, rows, kv).map(Outputs::from);
        }
        let mut x = Vec::with_capacity(n * c.hidden);
        self.embed_rows(rows.iter().map(|r| r.token), &mut x)?;
        let freqs = self.rope_freqs.as_deref();
        let rope_global = RopeTable::new(rows, c, c.rope_theta, freqs);
        let rope_local =
            (c.rope_theta_local != c.rope_theta).then(|| RopeTable::new(rows, c, c.rope_theta_local, freqs));
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
            if let Some([qb, kb, vb]) = &layer.qkv_bias {
                add_rows(&mut q, qb);
                add_rows(&mut k, kb);
                add_rows(&mut v, vb);
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
            gated(self, c.activation, &mut g, &u);
            self.linear([&layer.down], &g, n, &mut act, [&mut d]);
            if lora {
                add_lora(rows, li, "ffn_down", &g, g.len() / n, &mut d);
            }
            if let Some(w) = &layer.post_ffn_norm {
                rms_norm_in_place(&mut d, w, c.eps);
            }
            add_in_place(&mut x, &d);
        }

        let picked: Vec<usize> =
            rows.iter().enumerate().filter(|(_, r)| r.logits || r.hidden).map(|(i, _)| i).collect();
        let mut last = Vec::with_capacity(picked.len() * c.hidden);
        for &i in &picked {
            last.extend_from_slice(&x[i * c.hidden..(i + 1) * c.hidden]);
        }
        rms_norm_in_place(&mut last, &self.out_norm, c.eps);
        let mut out = Outputs { logits, ..Outputs::default() };
        for (j, &i) in picked.iter().enumerate() {
            let row = &last[j * c.hidden..(j + 1) * c.hidden];
            match rows[i].hidden {
                true => out.store(row),
                false => {
                    out.normed.extend_from_slice(row);
                    out.kinds.push(Kind::Logits(out.normed.len() / c.hidden - 1));
                }
            }
        }
        Ok(out)
    }

    /// Runs `rows` through the model as [`Self::forward_rows`] does and gives every row's
    /// output as a vector of its own (for tools and tests: a step of many sequences holds
    /// all their logits at once).
    pub fn forward(&self, rows: &[Row<'_>], kv: &mut KvStore) -> Result<Vec<Vec<f32>>> {
        let mut out = self.forward_rows(rows, kv, Vec::new())?;
        let mut all = Vec::with_capacity(out.len());
        while let Some(row) = out.next_row(self) {
            all.push(row.to_vec());
        }
        Ok(all)
    }

    /// The logits of `rows` rows of final hidden states `normed` into `out`.
    fn logits_into(&self, normed: &[f32], rows: usize, out: &mut Vec<f32>) {
        let mut act = Activations::default();
        self.linear([&self.output], normed, rows, &mut act, [out]);
        if let Some(cap) = self.config.final_softcap {
            out.iter_mut().for_each(|l| *l = cap * (*l / cap).tanh());
        }
    }
}

/// Logits are computed for at most this many rows at a time: 16 MB over a 262,144-token
/// vocabulary, where a step of 64 sequences would otherwise hold 64 MB at once. Each group
/// streams the output layer again, which a step of more rows than this is not bound by.
const LOGIT_ROWS: usize = 16;

/// What a forward pass gives back, one row per row asked for (logits, or hidden states),
/// in row order, taken one at a time with [`Outputs::next_row`]. Logits are computed as
/// they are taken, [`LOGIT_ROWS`] rows at a time, into one buffer that the caller can keep
/// for the next step ([`Outputs::into_buffer`]).
#[derive(Debug, Default)]
pub struct Outputs {
    kinds: Vec<Kind>,
    /// Rows given whole (hidden states; a device's rows), ending at `ends`.
    stored: Vec<f32>,
    ends: Vec<usize>,
    /// The output layer's inputs, one per logits row.
    normed: Vec<f32>,
    /// Logits of the logits rows `first..first + count`.
    logits: Vec<f32>,
    first: usize,
    count: usize,
    next: usize,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Stored(usize),
    Logits(usize),
}

impl Outputs {
    pub fn len(&self) -> usize {
        self.kinds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }

    /// The next row's output, to change in place (a grammar's mask, a sampler's
    /// penalties); `None` after the last. `m` is the model that made them.
    pub fn next_row(&mut self, m: &Transformer) -> Option<&mut [f32]> {
        let kind = *self.kinds.get(self.next)?;
        self.next += 1;
        match kind {
            Kind::Stored(j) => {
                let start = if j == 0 { 0 } else { self.ends[j - 1] };
                Some(&mut self.stored[start..self.ends[j]])
            }
            Kind::Logits(k) => {
                let (hidden, vocab) = (m.config.hidden, m.config.vocab);
                if !(self.first..self.first + self.count).contains(&k) {
                    let rows = self.normed.len() / hidden;
                    let count = LOGIT_ROWS.min(rows - k);
                    m.logits_into(&self.normed[k * hidden..(k + count) * hidden], count, &mut self.logits);
                    (self.first, self.count) = (k, count);
                }
                let at = (k - self.first) * vocab;
                self.logits.get_mut(at..at + vocab)
            }
        }
    }

    /// Adds a row given whole.
    fn store(&mut self, row: &[f32]) {
        self.stored.extend_from_slice(row);
        self.ends.push(self.stored.len());
        self.kinds.push(Kind::Stored(self.ends.len() - 1));
    }

    /// The logits buffer, for the next step's outputs (its pages stay resident and mapped).
    pub fn into_buffer(self) -> Vec<f32> {
        self.logits
    }
}

impl From<Vec<Vec<f32>>> for Outputs {
    fn from(rows: Vec<Vec<f32>>) -> Self {
        let mut out = Self::default();
        rows.iter().for_each(|r| out.store(r));
        out
    }
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// Adds `bias` to every row of `x` (rows of `bias.len()`).
fn add_rows(x: &mut [f32], bias: &[f32]) {
    x.chunks_exact_mut(bias.len()).for_each(|row| add_in_place(row, bias));
}

/// `g = act(g) * u`, on the kernels' path, split across the pool when large enough that
/// a hand-off costs less than the share it saves.
fn gated(m: &Transformer, act: Activation, g: &mut [f32], u: &[f32]) {
    let (pool, isa) = (&m.pool, m.isa);
    let threads = pool.threads();
    if threads == 1 || g.len() < 8192 {
        vector::gate(isa, act, g, u);
        return;
    }
    let (gp, len) = (SharedOut(g.as_mut_ptr()), g.len());
    #[allow(clippy::redundant_locals)]
    pool.run(&|t| {
        let gp = gp;
        // Shares in whole vectors of eight.
        let mine = kernels::pool::share(len, t, threads, 8);
        // SAFETY: thread t alone writes its share of `g`, which outlives the pool call.
        let part = unsafe { std::slice::from_raw_parts_mut(gp.0.add(mine.start), mine.len()) };
        vector::gate(isa, act, part, &u[mine]);
    });
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
pub(crate) struct RopeTable {
    pub(crate) half: usize,
    pub(crate) cos: Vec<f32>,
    pub(crate) sin: Vec<f32>,
}

impl RopeTable {
    /// The angles of every row's position with base `theta`, divided per pair by `freqs`
    /// where the model has them, then scaled as `c.rope_scaling` says (GGML's `rope_yarn`:
    /// linear scaling is YaRN without its ramp and magnitude term).
    pub(crate) fn new(rows: &[Row<'_>], c: &ModelConfig, theta: f32, freqs: Option<&[f32]>) -> Self {
        let (head_dim, s) = (c.head_dim, c.rope_scaling);
        let half = head_dim / 2;
        let inv: Vec<f64> = (0..half)
            .map(|i| {
                let f = 1.0 / (theta as f64).powf(2.0 * i as f64 / head_dim as f64);
                f / freqs.map_or(1.0, |ff| ff[i] as f64)
            })
            .collect();
        // YaRN: pairs below `low` keep their original angle, above `high` take the
        // interpolated one, a linear ramp between.
        let (low, high) = yarn_corr_dims(head_dim, s.orig_context, theta, s.beta_fast, s.beta_slow);
        let mut mscale = s.attn_factor as f64;
        if s.ext_factor != 0.0 {
            mscale *= 1.0 + 0.1 * (1.0 / s.freq_scale as f64).ln();
        }
        let mut cos = Vec::with_capacity(rows.len() * half);
        let mut sin = Vec::with_capacity(rows.len() * half);
        for r in rows {
            for (i, f) in inv.iter().enumerate() {
                let extrap = r.pos as f64 * f;
                let interp = extrap * s.freq_scale as f64;
                let a = if s.ext_factor != 0.0 {
                    let y = (i as f64 - low) / (high - low).max(0.001);
                    let mix = (1.0 - y.clamp(0.0, 1.0)) * s.ext_factor as f64;
                    interp * (1.0 - mix) + extrap * mix
                } else {
                    interp
                };
                cos.push((a.cos() * mscale) as f32);
                sin.push((a.sin() * mscale) as f32);
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

/// The first and last rotary pair YaRN's ramp runs between: where a pair's wavelength
/// fits `beta` turns into the original context (GGML's `ggml_rope_yarn_corr_dims`).
fn yarn_corr_dims(dims: usize, orig_context: usize, base: f32, beta_fast: f32, beta_slow: f32) -> (f64, f64) {
    let corr = |beta: f32| {
        dims as f64 * (orig_context.max(1) as f64 / (beta as f64 * 2.0 * std::f64::consts::PI)).ln()
            / (2.0 * (base as f64).ln())
    };
    (corr(beta_fast).floor().max(0.0), corr(beta_slow).ceil().min(dims as f64 - 1.0))
}

/// A raw pointer that may cross to the worker threads; each job writes a disjoint range.
#[derive(Clone, Copy)]
struct SharedOut<T = f32>(*mut T);
// SAFETY: only used to write disjoint ranges from the pool's workers while the owner waits.
unsafe impl<T> Send for SharedOut<T> {}
unsafe impl<T> Sync for SharedOut<T> {}

/// Causal attention of every row over its own sequence's keys and values, one job per
/// (row, piece of at most `vector::PIECE` positions, KV head) on the model's worker pool.
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
    // Every element is written: each job overwrites its heads' outputs (or the merge does).
    out.resize(rows.len() * heads * hd, 0.0);
    let (kc, vc) = (&kv.k[layer], &kv.v[layer]);
    let threads = pool.threads();
    let span = |r: &Row<'_>| (window.map_or(0, |w| (r.pos + 1).saturating_sub(w)), r.pos + 1);
    // A row with more than PIECE positions attends in pieces (jobs of their own, so even
    // one long sequence keeps every thread busy), merged after.
    let pieces: Vec<usize> = rows
        .iter()
        .map(|r| {
            let (first, end) = span(r);
            (end - first).div_ceil(vector::PIECE).max(1)
        })
        .collect();
    // One job per (row, piece, KV head): the query heads sharing that KV head read each
    // key and value once between them. With few of those (decode) that is too few jobs to
    // share evenly (3 KV heads on 2 threads), so each query head becomes a job of its own.
    let units: usize = pieces.iter().sum();
    let per_job = if units * c.kv_heads >= 4 * threads { group } else { 1 };
    // Where the pieces of long rows keep their outputs and softmaxes until the merge.
    let mut slot = Vec::with_capacity(rows.len());
    let mut slots = 0;
    for &n in &pieces {
        slot.push(slots);
        if n > 1 {
            slots += n;
        }
    }
    let mut parts = vec![0.0f32; slots * heads * hd];
    let mut stats = vec![vector::Piece::default(); slots * heads];
    let mut jobs: Vec<(usize, usize, usize)> = pieces
        .iter()
        .enumerate()
        .flat_map(|(ri, &n)| (0..heads).step_by(per_job).flat_map(move |h| (0..n).map(move |p| (ri, h, p))))
        .collect();
    // Longest first (a row's last piece may be short), dealt round-robin into the threads'
    // shares: each share mixes long and short jobs, and the ones left for the first
    // thread done to take from another's share are short.
    jobs.sort_by_key(|&(ri, _, p)| {
        let (lo, end) = span(&rows[ri]);
        std::cmp::Reverse((end - lo).saturating_sub(p * vector::PIECE).min(vector::PIECE))
    });
    let jobs: Vec<(usize, usize, usize)> =
        (0..threads).flat_map(|t| jobs.iter().skip(t).step_by(threads).copied()).collect();
    let score = vector::Score { scale: c.attn_scale, softcap: c.attn_softcap };
    let (out_ptr, parts_ptr, stats_ptr) =
        (SharedOut(out.as_mut_ptr()), SharedOut(parts.as_mut_ptr()), SharedOut(stats.as_mut_ptr()));
    // Threads take the jobs as they finish (`claims`), so rows of different lengths (a
    // prefill chunk's later rows attend over more positions) leave no thread waiting long.
    // Rebinding makes the closure capture the Send + Sync wrappers rather than their raw
    // pointer fields (edition 2021 captures disjoint fields).
    let claims = kernels::pool::Claims::new(jobs.len(), threads, 1, 1);
    #[allow(clippy::redundant_locals)]
    let run = |t: usize| {
        let (out_ptr, parts_ptr, stats_ptr) = (out_ptr, parts_ptr, stats_ptr);
        let mut scores: Vec<f32> = Vec::new();
        let mut offs: Vec<usize> = Vec::new();
        for &(ri, head0, p) in std::iter::from_fn(|| claims.take(t)).flat_map(|r| &jobs[r]) {
            let r = &rows[ri];
            let (lo, end) = span(r);
            let lo = lo + p * vector::PIECE;
            let hi = (lo + vector::PIECE).min(end);
            let g = head0 / group;
            let at = ri * heads + head0;
            let qs = &q[at * hd..(at + per_job) * hd];
            // The keys and values of KV head g start g * hd into each position's row.
            offs.clear();
            offs.extend(offsets[ri][lo..hi].iter().map(|&o| o + g * hd));
            // SAFETY: the job owns the outputs of heads head0 .. head0 + per_job of row ri
            // (of its piece, for a long row); no other job writes them, and the buffers
            // outlive the pool call, which returns only when every job is done.
            unsafe {
                if pieces[ri] == 1 {
                    let o = std::slice::from_raw_parts_mut(out_ptr.0.add(at * hd), per_job * hd);
                    vector::attend(isa, qs, kc, vc, &offs, hd, score, &mut scores, o, &mut []);
                } else {
                    let at = (slot[ri] + p) * heads + head0;
                    let o = std::slice::from_raw_parts_mut(parts_ptr.0.add(at * hd), per_job * hd);
                    let st = std::slice::from_raw_parts_mut(stats_ptr.0.add(at), per_job);
                    vector::attend(isa, qs, kc, vc, &offs, hd, score, &mut scores, o, st);
                }
            }
        }
    };
    if jobs.len() >= 2 && threads > 1 {
        pool.run(&run);
    } else {
        run(0);
    }
    let (mut outs, mut st) = (Vec::new(), Vec::new());
    for (ri, &n) in pieces.iter().enumerate() {
        if n == 1 {
            continue;
        }
        for h in 0..heads {
            outs.clear();
            st.clear();
            for p in 0..n {
                let at = (slot[ri] + p) * heads + h;
                outs.extend_from_slice(&parts[at * hd..(at + 1) * hd]);
                st.push(stats[at]);
            }
            let at = ri * heads + h;
            vector::merge(&outs, &st, hd, &mut out[at * hd..(at + 1) * hd]);
        }
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
