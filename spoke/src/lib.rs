//! # nave-spoke
//!
//! A worker node: runs the inference engines for its models and serves them to the hubs.
//!
//! # Layout
//! - [`protocol`]: the frames of `nave-spoke/1` (one QUIC stream per request).
//! - [`server`]: loading engines, the QUIC accept loop, one task per stream bridging
//!   frames to the engine's event stream, heartbeats.
//! - [`http`]: `/health` and `/metrics` on the spoke's HTTP port.
//! - [`train`]: fine-tuning jobs in the training partition, behind serving.
//! - [`join`]: joining a running cluster with a token, and starting again from it.
//! - [`certs`]: renewing the spoke's certificate through a hub before it expires.
//!
//! A request arrives as a `Generate` frame on a new stream, is submitted to the engine of
//! its model, and every engine event goes back as a frame until `Done` or `Error`; a hub
//! that stops the stream cancels the sequence.

pub mod certs;
pub mod http;
pub mod join;
pub mod protocol;
pub mod serve;
pub mod server;
pub mod train;

pub use server::run;
