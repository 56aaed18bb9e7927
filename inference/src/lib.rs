//! # Nave's inference engine
//!
//! Runs GGUF models on candle with continuous batching, a paged KV pool with a prefix
//! cache, and a memory ledger split into serving and training partitions.
//!
//! # Layout
//! - [`store`]: the model store (`nave model pull`): registry packages, checksums.
//! - [`gguf`]: reading a GGUF file's metadata and tensors, with clear errors.
//! - [`tokenizer`], [`template`]: the tokenizer and chat template, from the GGUF itself.
//! - [`model`]: the batched forward pass; [`llama`] and [`gemma3`] fill in each
//!   architecture's shape.
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

pub mod detok;
pub mod engine;
pub mod error;
pub mod gemma3;
pub mod gguf;
pub mod kv;
pub mod ledger;
pub mod llama;
pub mod model;
pub mod sampler;
pub mod store;
pub mod template;
pub mod tiny;
pub mod train;
pub mod tokenizer;

use std::path::Path;

pub use engine::{Engine, EngineConfig, EngineStats, Event, EventStream, FinishReason, GenerateRequest, Prompt, Usage};
pub use error::{Error, Result};
pub use ledger::{Ledger, LedgerSnapshot, Partition};
pub use model::LoadOptions;
pub use sampler::SamplingParams;
pub use template::ChatMessage;

/// A model ready to serve: weights, tokenizer and chat template.
pub struct LoadedModel {
    pub name: String,
    pub transformer: model::Transformer,
    pub tokenizer: tokenizer::TextTokenizer,
    /// `None` for base models without a template (serve them for completions).
    pub template: Option<template::ChatTemplate>,
}

impl LoadedModel {
    /// Loads a GGUF file of a supported architecture (`llama`, `gemma3`).
    pub fn load(name: impl Into<String>, path: impl AsRef<Path>, opts: LoadOptions) -> Result<Self> {
        let mut gguf = gguf::GgufFile::open(path.as_ref())?;
        let arch = gguf.string("general.architecture")?;
        let tokenizer = tokenizer::TextTokenizer::from_gguf(&gguf)?;
        let vocab = tokenizer.vocab_size();
        let transformer = match arch.as_str() {
            "llama" => llama::load(&mut gguf, vocab, opts)?,
            "gemma3" => gemma3::load(&mut gguf, vocab, opts)?,
            other => {
                return Err(Error::model(path.as_ref(), format!("unsupported architecture {other:?} (supported: llama, gemma3)")))
            }
        };
        let template = match gguf.opt_string("tokenizer.chat_template") {
            Some(src) => Some(template::ChatTemplate::new(
                &src,
                tokenizer.bos_token().unwrap_or(""),
                tokenizer.eos_token().unwrap_or(""),
            )?),
            None => None,
        };
        Ok(Self { name: name.into(), transformer, tokenizer, template })
    }
}
