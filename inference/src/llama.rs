//! The Llama architecture (SmolLM2 and the Llama family): pre-norm blocks, grouped-query
//! attention with interleaved rotary embeddings, a SiLU-gated feed-forward.

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::model::{Activation, LayerNames, LoadOptions, ModelConfig, RopeStyle, Transformer};

/// The model's shape and numerics, from the file's metadata alone.
pub fn config(gguf: &GgufFile, vocab: usize) -> Result<ModelConfig> {
    let hidden = gguf.u32("llama.embedding_length")? as usize;
    let heads = gguf.u32("llama.attention.head_count")? as usize;
    let kv_heads = gguf.opt_u32("llama.attention.head_count_kv").unwrap_or(heads as u32) as usize;
    if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) || !hidden.is_multiple_of(heads) {
        return Err(Error::model(
            gguf.path(),
            format!("inconsistent heads: {heads} query, {kv_heads} kv, hidden {hidden}"),
        ));
    }
    let head_dim = gguf.opt_u32("llama.rope.dimension_count").map_or(hidden / heads, |d| d as usize);
    let rope_theta = gguf.f32_or("llama.rope.freq_base", 10_000.0)?;
    let config = ModelConfig {
        arch: "llama".into(),
        hidden,
        layers: gguf.u32("llama.block_count")? as usize,
        heads,
        kv_heads,
        head_dim,
        vocab,
        context: gguf.opt_u32("llama.context_length").unwrap_or(4096) as usize,
        eps: gguf.f32_or("llama.attention.layer_norm_rms_epsilon", 1e-5)?,
        rope_theta,
        rope_theta_local: rope_theta,
        rope_style: RopeStyle::Interleaved,
        activation: Activation::Silu,
        embed_scale: 1.0,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        sliding_window: None,
        qk_norm: false,
        post_norms: false,
    };
    Ok(config)
}

/// The weights, for a `config` read with [`config`].
pub fn load(gguf: &mut GgufFile, config: ModelConfig, opts: LoadOptions) -> Result<Transformer> {
    Transformer::load(gguf, config, opts, LayerNames { has_qk_norm: false, has_post_norms: false })
}
