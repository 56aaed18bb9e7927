//! The Llama architecture (SmolLM2, Llama 2 and 3, Mistral): pre-norm blocks, grouped-query
//! attention with interleaved rotary embeddings, a SiLU-gated feed-forward.
//!
//! - Llama 3.1 and later scale their rotary frequencies per pair: the GGUF carries them as
//!   the `rope_freqs` tensor (divisors of each pair's frequency), which the forward pass
//!   applies; linear and YaRN scaling come from `llama.rope.scaling.*`
//!   ([`ModelConfig::from_common_keys`]).
//! - Mistral files are `llama` files; where the metadata sets
//!   `llama.attention.sliding_window`, every layer attends over that many positions, as
//!   Mistral 7B v0.1 was trained. (llama.cpp ignores that key for this architecture; the
//!   two agree on any sequence shorter than the window.)
//! - Optional biases on q, k and v are applied where the file has them.

use crate::error::Result;
use crate::gguf::GgufFile;
use crate::model::{LayerNames, LoadOptions, ModelConfig, RopeStyle, Transformer};

/// The model's shape and numerics, from the file's metadata alone.
pub fn config(gguf: &GgufFile, vocab: usize) -> Result<ModelConfig> {
    let mut c = ModelConfig::from_common_keys(gguf, "llama", vocab, 4096)?;
    c.rope_style = RopeStyle::Interleaved;
    if let Some(window) = gguf.opt_u32("llama.attention.sliding_window").filter(|&w| w > 0) {
        // Every layer local: no layer is global.
        c.sliding_window = Some((window as usize, 0));
    }
    Ok(c)
}

/// The weights, for a `config` read with [`config`].
pub fn load(gguf: &mut GgufFile, config: ModelConfig, opts: LoadOptions) -> Result<Transformer> {
    Transformer::load(gguf, config, opts, LayerNames::default())
}
