//! # Nave's inference engine
//!
//! Runs GGUF models with its own CPU kernels (weights in the file's own types), continuous
//! batching, a paged KV pool with a prefix cache, and a memory ledger split into serving
//! and training partitions. candle reads the GGUF header, runs fine-tuning, and runs the
//! forward pass on CUDA devices.
//!
//! # Layout
//! - [`store`]: the model store (`nave model pull`): registry packages, checksums.
//! - [`gguf`]: reading a GGUF file's metadata and tensors, with clear errors.
//! - [`tokenizer`], [`template`]: the tokenizer and chat template, from the GGUF itself.
//! - [`model`]: the batched forward pass; [`llama`] (Llama 2/3, Mistral, SmolLM2),
//!   [`qwen2`], [`qwen3`], [`phi3`], [`gemma2`] and [`gemma3`] fill in each architecture's
//!   shape (one file each).
//! - [`kernels`]: the quantized matrix products, attention's vector operations and the
//!   worker pool they run on (AVX2 or the scalar reference, chosen once).
//! - [`device`], [`candle_path`]: where a model runs (the CPU kernels, or a CUDA device
//!   through candle's tensors, with the KV cache on the device), and the device's memory.
//! - [`kv`]: the block pool (pure bookkeeping, prefix cache) and the KV store.
//! - [`sampler`], [`detok`]: choosing tokens; turning them into text with stop strings.
//! - [`engine`]: the engine thread: a bounded queue in, a stream of events out per
//!   request, one batched forward pass per step.
//! - [`ledger`]: the memory partitions every allocation goes through.
//!
//! A request crosses them in that order: [`Engine::submit`] queues it; the engine thread
//! renders the template and tokenizes; the scheduler admits it when its KV blocks fit
//! (taking any cached prefix); [`model::Transformer::forward`] runs its prefill chunks and
//! decode steps batched with every other running sequence; the sampler picks each token;
//! the detokenizer streams its text as [`Event::Delta`] until [`Event::Done`].

pub mod candle_path;
pub mod detok;
pub mod device;
pub mod engine;
pub mod error;
pub mod gemma2;
pub mod gemma3;
pub mod gguf;
pub mod grammar;
pub mod kernels;
pub mod kv;
pub mod ledger;
pub mod llama;
pub mod model;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
pub mod sampler;
pub mod store;
pub mod template;
pub mod tiny;
pub mod tokenizer;
pub mod tools;
pub mod train;

use std::path::Path;

pub use engine::{Engine, EngineConfig, EngineStats, Event, EventStream, FinishReason, GenerateRequest, Prompt, Usage};
pub use error::{Error, Result};
pub use ledger::{Ledger, LedgerSnapshot, Partition};
pub use model::LoadOptions;
pub use sampler::SamplingParams;
pub use template::ChatMessage;

/// The `general.architecture` values Nave runs.
pub const ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3", "phi3", "gemma2", "gemma3"];

/// A model ready to serve: weights, tokenizer and chat template.
pub struct LoadedModel {
    pub name: String,
    pub transformer: model::Transformer,
    pub tokenizer: tokenizer::TextTokenizer,
    /// `None` for base models without a template (serve them for completions).
    pub template: Option<template::ChatTemplate>,
}

/// What a model file says about itself, from its header alone (no weights read): its
/// shape, its tokenizer and its chat template. Enough to check a fine-tuning job's data
/// and size its memory before anything large is loaded.
pub struct ModelInfo {
    pub config: model::ModelConfig,
    /// The feed-forward width (rows of the first layer's up projection).
    pub ffn: usize,
    pub tokenizer: tokenizer::TextTokenizer,
    /// `None` for base models without a template (serve them for completions).
    pub template: Option<template::ChatTemplate>,
}

impl ModelInfo {
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_gguf(&gguf::GgufFile::open(path.as_ref())?)
    }

    fn from_gguf(gguf: &gguf::GgufFile) -> Result<Self> {
        let arch = gguf.string("general.architecture")?;
        let tokenizer = tokenizer::TextTokenizer::from_gguf(gguf)?;
        let vocab = tokenizer.vocab_size();
        let config = match arch.as_str() {
            "llama" => llama::config(gguf, vocab)?,
            "qwen2" => qwen2::config(gguf, vocab)?,
            "qwen3" => qwen3::config(gguf, vocab)?,
            "phi3" => phi3::config(gguf, vocab)?,
            "gemma2" => gemma2::config(gguf, vocab)?,
            "gemma3" => gemma3::config(gguf, vocab)?,
            other => {
                return Err(Error::model(
                    gguf.path(),
                    format!("unsupported architecture {other:?} (supported: {})", ARCHITECTURES.join(", ")),
                ))
            }
        };
        let up = *gguf
            .tensor_dims("blk.0.ffn_up.weight")?
            .first()
            .ok_or_else(|| Error::model(gguf.path(), "blk.0.ffn_up.weight has no dimensions"))?;
        // Without a gate tensor, ffn_up holds the gate and up halves (Phi-3).
        let ffn = if gguf.has_tensor("blk.0.ffn_gate.weight") { up } else { up / 2 };
        let template = match gguf.opt_string("tokenizer.chat_template") {
            Some(src) => Some(template::ChatTemplate::new(
                &src,
                tokenizer.bos_token().unwrap_or(""),
                tokenizer.eos_token().unwrap_or(""),
            )?),
            None => None,
        };
        Ok(Self { config, ffn, tokenizer, template })
    }
}

impl LoadedModel {
    /// What the chat template adds to a conversation's own text, in tokens: for one
    /// message (with any default system prompt), and for each further message. With
    /// the messages' bytes (every token covers at least one byte) this bounds a chat
    /// prompt's tokens before it is tokenized (the hub reserves budgets with it). `None`
    /// without a template.
    pub fn prompt_overhead(&self) -> Option<(usize, usize)> {
        let template = self.template.as_ref()?;
        let count = |msgs: &[template::ChatMessage]| -> Option<usize> {
            let (text, spans) = template.render_spans(msgs).ok()?;
            self.tokenizer.encode_prompt(&text, &spans).ok().map(|ids| ids.len())
        };
        let x = |role: &str| template::ChatMessage::new(role, "x");
        let one = count(&[x("user")])?;
        let three = count(&[x("user"), x("assistant"), x("user")])?;
        Some((one, three.saturating_sub(one).div_ceil(2)))
    }

    /// Loads a GGUF file of a supported architecture ([`ARCHITECTURES`]).
    pub fn load(name: impl Into<String>, path: impl AsRef<Path>, opts: LoadOptions) -> Result<Self> {
        let mut gguf = gguf::GgufFile::open(path.as_ref())?;
        let ModelInfo { config, tokenizer, template, .. } = ModelInfo::from_gguf(&gguf)?;
        // `ModelInfo` accepts only the architectures below.
        let transformer = match config.arch.as_str() {
            "qwen2" => qwen2::load(&mut gguf, config, opts)?,
            "qwen3" => qwen3::load(&mut gguf, config, opts)?,
            "phi3" => phi3::load(&mut gguf, config, opts)?,
            "gemma2" => gemma2::load(&mut gguf, config, opts)?,
            "gemma3" => gemma3::load(&mut gguf, config, opts)?,
            _ => llama::load(&mut gguf, config, opts)?,
        };
        drop(gguf);
        ledger::release_free_memory();
        Ok(Self { name: name.into(), transformer, tokenizer, template })
    }
}
