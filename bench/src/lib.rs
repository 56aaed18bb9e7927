//! # nave-bench
//!
//! Benchmarks. [`engine`]: the inference engine in-process, side by side with llama.cpp on
//! the same GGUF file. (The HTTP load generator, `nave bench --url`, grows here next.)

pub mod engine;
