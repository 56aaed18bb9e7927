//! # nave-bench
//!
//! Benchmarks.
//!
//! # Layout
//! - [`load`]: `nave bench --url`, the load generator for any OpenAI-compatible endpoint.
//! - [`engine`]: `nave bench engine`, the inference engine in-process, side by side with
//!   llama.cpp on the same GGUF file.

pub mod engine;
pub mod load;
