//! # nave-bench
//!
//! Benchmarks.
//!
//! # Layout
//! - [`load`]: `nave bench --url`, the load generator for any OpenAI-compatible endpoint.
//! - [`direct`]: `nave bench --url spoke:ID`, the same workload sent to a spoke directly,
//!   the way a hub sends it (the baseline for what the hubs add).
//! - [`engine`]: `nave bench engine`, the inference engine in-process, side by side with
//!   llama.cpp on the same GGUF file.

pub mod direct;
pub mod engine;
pub mod load;
