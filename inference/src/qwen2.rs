//! The Qwen 2 architecture (Qwen 2 and 2.5): Llama's blocks with biases on the q, k and v
//! projections and NeoX-style rotary embeddings (the two halves of each head rotate
//! together). Larger Qwen 2.5 files may scale their rotary embeddings with YaRN
//! (`qwen2.rope.scaling.*`, read by [`ModelConfig::from_common_keys`]).

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::model::{LayerNames, LoadOptions, ModelConfig, RopeStyle, Transformer};

/// The model's shape and numerics, from the file's metadata alone.
pub fn config(gguf: &GgufFile, vocab: usize) -> Result<ModelConfig> {
    let mut c = ModelConfig::from_common_keys(gguf, "qwen2", vocab, 32_768)?;
    c.rope_style = RopeStyle::Halves;
    c.eps = gguf.f32_or("qwen2.attention.layer_norm_rms_epsilon", 1e-6)?;
    Ok(c)
}

/// The weights, for a `config` read with [`config`].
pub fn load(gguf: &mut GgufFile, config: ModelConfig, opts: LoadOptions) -> Result<Transformer> {
    if !gguf.has_tensor("blk.0.attn_q.bias") {
        return Err(Error::model(gguf.path(), "a qwen2 file without blk.0.attn_q.bias (its q/k/v biases)"));
    }
    Transformer::load(gguf, config, opts, LayerNames::default())
}
