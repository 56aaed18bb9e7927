//! The Phi-3 architecture (Phi-3 and Phi-3.5 mini/medium, Phi-4 mini): Llama's blocks with
//! q, k and v as one fused `attn_qkv` tensor and the feed-forward's gate and up as one
//! `ffn_up` of twice the width (gate first), NeoX-style rotary embeddings. The loader
//! cuts the fused tensors into their parts byte for byte.
//!
//! Long-context files ("128k", LongRoPE) carry two sets of rotary factors; like llama.cpp
//! with a context within the original one, Nave applies the short factors, and bounds
//! the context to `phi3.rope.scaling.original_context_length`, where they hold.
//! Phi-3's sliding-window key is ignored, as llama.cpp does (its converters have written
//! values the models were not trained with).

use crate::error::Result;
use crate::gguf::GgufFile;
use crate::model::{LayerNames, LoadOptions, ModelConfig, RopeStyle, Transformer};

/// The model's shape and numerics, from the file's metadata alone.
pub fn config(gguf: &GgufFile, vocab: usize) -> Result<ModelConfig> {
    let mut c = ModelConfig::from_common_keys(gguf, "phi3", vocab, 4096)?;
    c.rope_style = RopeStyle::Halves;
    if gguf.has_tensor("rope_factors_short.weight") {
        if let Some(orig) = gguf.opt_u32("phi3.rope.scaling.original_context_length") {
            c.context = c.context.min(orig as usize);
        }
    }
    Ok(c)
}

/// The weights, for a `config` read with [`config`].
pub fn load(gguf: &mut GgufFile, config: ModelConfig, opts: LoadOptions) -> Result<Transformer> {
    Transformer::load(gguf, config, opts, LayerNames::default())
}
