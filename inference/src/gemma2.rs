//! The Gemma 2 architecture: Gemma's blocks (embeddings scaled by sqrt(hidden), a GELU
//! (tanh) gate, norms after attention and after the feed-forward, NeoX-style rotary
//! embeddings) with soft-capping of the attention scores and of the output logits
//! (`cap * tanh(x / cap)`), and a sliding window on every other layer (the first, third,
//! ...; the others attend globally). No q/k norms (Gemma 3 added those).

use crate::error::Result;
use crate::gguf::GgufFile;
use crate::model::{Activation, LayerNames, LoadOptions, ModelConfig, RopeStyle, Transformer};

/// One layer in this many attends globally; the others use the sliding window.
const GLOBAL_EVERY: usize = 2;

/// The model's shape and numerics, from the file's metadata alone.
pub fn config(gguf: &GgufFile, vocab: usize) -> Result<ModelConfig> {
    let mut c = ModelConfig::from_common_keys(gguf, "gemma2", vocab, 8192)?;
    c.eps = gguf.f32_or("gemma2.attention.layer_norm_rms_epsilon", 1e-6)?;
    c.rope_style = RopeStyle::Halves;
    c.activation = Activation::GeluTanh;
    c.embed_scale = (c.hidden as f32).sqrt();
    // Gemma 2 27B scales queries by 1/sqrt(hidden / heads) (its query_pre_attn_scalar),
    // the smaller ones by 1/sqrt(head_dim); llama.cpp tells them apart by depth too.
    if c.layers == 46 {
        c.attn_scale = 1.0 / ((c.hidden / c.heads) as f32).sqrt();
    }
    let window = gguf.opt_u32("gemma2.attention.sliding_window").unwrap_or(4096) as usize;
    c.sliding_window = Some((window, GLOBAL_EVERY));
    c.attn_softcap = Some(gguf.f32_or("gemma2.attn_logit_softcapping", 50.0)?).filter(|&x| x > 0.0);
    c.final_softcap = Some(gguf.f32_or("gemma2.final_logit_softcapping", 30.0)?).filter(|&x| x > 0.0);
    c.post_norms = true;
    Ok(c)
}

/// The weights, for a `config` read with [`config`].
pub fn load(gguf: &mut GgufFile, config: ModelConfig, opts: LoadOptions) -> Result<Transformer> {
    Transformer::load(gguf, config, opts, LayerNames { has_qk_norm: false, has_post_norms: true })
}
