//! The Gemma 3 architecture: Llama-like blocks plus per-head RMS norms on queries and keys,
//! norms after attention and after the feed-forward, a GELU (tanh) gate, embeddings scaled
//! by sqrt(hidden), NeoX-style rotary embeddings, and sliding-window attention on five
//! layers of every six (with their own rotary base). GGUF stores Gemma's norm weights
//! with the +1 already added, so they are applied like any RMS norm.
//!
//! candle's own quantized_gemma3 uses SiLU here and has no sliding window in decode; this
//! file does both as the model was trained.

use crate::error::Result;
use crate::gguf::GgufFile;
use crate::model::{Activation, LayerNames, LoadOptions, ModelConfig, RopeStyle, Transformer};

/// Gemma 3's local layers use this rotary base whatever the global one is.
const LOCAL_ROPE_THETA: f32 = 10_000.0;
/// One layer in this many attends globally; the others use the sliding window.
const GLOBAL_EVERY: usize = 6;

/// The model's shape and numerics, from the file's metadata alone.
pub fn config(gguf: &GgufFile, vocab: usize) -> Result<ModelConfig> {
    let mut c = ModelConfig::from_common_keys(gguf, "gemma3", vocab, 8192)?;
    let window = gguf.opt_u32("gemma3.attention.sliding_window").unwrap_or(512) as usize;
    c.eps = gguf.f32_or("gemma3.attention.layer_norm_rms_epsilon", 1e-6)?;
    c.rope_theta = gguf.f32_or("gemma3.rope.freq_base", 1_000_000.0)?;
    c.rope_theta_local = LOCAL_ROPE_THETA;
    c.rope_style = RopeStyle::Halves;
    c.activation = Activation::GeluTanh;
    c.embed_scale = (c.hidden as f32).sqrt();
    c.sliding_window = Some((window, GLOBAL_EVERY));
    c.qk_norm = true;
    c.post_norms = true;
    Ok(c)
}

/// The weights, for a `config` read with [`config`].
pub fn load(gguf: &mut GgufFile, config: ModelConfig, opts: LoadOptions) -> Result<Transformer> {
    Transformer::load(gguf, config, opts, LayerNames { has_qk_norm: true, has_post_norms: true })
}
