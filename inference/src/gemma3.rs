//! The Gemma 3 architecture: Llama-like blocks plus per-head RMS norms on queries and keys,
//! norms after attention and after the feed-forward, a GELU (tanh) gate, embeddings scaled
//! by sqrt(hidden), NeoX-style rotary embeddings, and sliding-window attention on five
//! layers of every six (with their own rotary base). GGUF stores Gemma's norm weights
//! with the +1 already added, so they are applied like any RMS norm.
//!
//! candle's own quantized_gemma3 uses SiLU here and has no sliding window in decode; this
//! file does both as the model was trained.

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::model::{Activation, LayerNames, LoadOptions, ModelConfig, RopeStyle, Transformer};

/// Gemma 3's local layers use this rotary base whatever the global one is.
const LOCAL_ROPE_THETA: f32 = 10_000.0;
/// One layer in this many attends globally; the others use the sliding window.
const GLOBAL_EVERY: usize = 6;

/// The model's shape and numerics, from the file's metadata alone.
pub fn config(gguf: &GgufFile, vocab: usize) -> Result<ModelConfig> {
    let hidden = gguf.u32("gemma3.embedding_length")? as usize;
    let heads = gguf.u32("gemma3.attention.head_count")? as usize;
    let kv_heads = gguf.opt_u32("gemma3.attention.head_count_kv").unwrap_or(heads as u32) as usize;
    if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(Error::model(gguf.path(), format!("inconsistent heads: {heads} query, {kv_heads} kv")));
    }
    let head_dim = gguf.opt_u32("gemma3.attention.key_length").map_or(hidden / heads, |d| d as usize);
    let window = gguf.opt_u32("gemma3.attention.sliding_window").unwrap_or(512) as usize;
    let config = ModelConfig {
        arch: "gemma3".into(),
        hidden,
        layers: gguf.u32("gemma3.block_count")? as usize,
        heads,
        kv_heads,
        head_dim,
        vocab,
        context: gguf.opt_u32("gemma3.context_length").unwrap_or(8192) as usize,
        eps: gguf.f32_or("gemma3.attention.layer_norm_rms_epsilon", 1e-6)?,
        rope_theta: gguf.f32_or("gemma3.rope.freq_base", 1_000_000.0)?,
        rope_theta_local: LOCAL_ROPE_THETA,
        rope_style: RopeStyle::Halves,
        activation: Activation::GeluTanh,
        embed_scale: (hidden as f32).sqrt(),
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        sliding_window: Some((window, GLOBAL_EVERY)),
        qk_norm: true,
        post_norms: true,
    };
    Ok(config)
}

/// The weights, for a `config` read with [`config`].
pub fn load(gguf: &mut GgufFile, config: ModelConfig, opts: LoadOptions) -> Result<Transformer> {
    Transformer::load(gguf, config, opts, LayerNames { has_qk_norm: true, has_post_norms: true })
}
