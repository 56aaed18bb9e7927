//! The Qwen 3 architecture (dense): Llama's blocks with an RMS norm over each head of the
//! queries and keys before the rotary embeddings (`attn_q_norm`, `attn_k_norm`, one
//! weight per head dimension), no biases, NeoX-style rotary embeddings, and a head
//! dimension of its own (`qwen3.attention.key_length`, 128 where hidden / heads is not).

use crate::error::Result;
use crate::gguf::GgufFile;
use crate::model::{LayerNames, LoadOptions, ModelConfig, RopeStyle, Transformer};

/// The model's shape and numerics, from the file's metadata alone.
pub fn config(gguf: &GgufFile, vocab: usize) -> Result<ModelConfig> {
    let mut c = ModelConfig::from_common_keys(gguf, "qwen3", vocab, 40_960)?;
    c.rope_style = RopeStyle::Halves;
    c.eps = gguf.f32_or("qwen3.attention.layer_norm_rms_epsilon", 1e-6)?;
    c.qk_norm = true;
    Ok(c)
}

/// The weights, for a `config` read with [`config`].
pub fn load(gguf: &mut GgufFile, config: ModelConfig, opts: LoadOptions) -> Result<Transformer> {
    Transformer::load(gguf, config, opts, LayerNames { has_qk_norm: true, has_post_norms: false })
}
