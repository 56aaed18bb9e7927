//! # nave-consensus
//!
//! The cluster's shared foundations: its configuration, its certificates, and the frame
//! codec every node-to-node protocol uses. (The replicated state machine on openraft and
//! sled grows here next: `log_store`, `state_machine`, `network/{client,server}`.)
//!
//! # Layout
//! - [`config`]: `cluster.toml`, one serde tree with typed validation errors.
//! - [`tls`]: the cluster CA, node certificates, mutual-TLS QUIC configs, ALPN names.
//! - [`frame`]: u32 length + bincode with a size limit, for every protocol.

pub mod config;
pub mod error;
pub mod frame;
pub mod network;
pub mod node;
pub mod rng;
pub mod state;
pub mod store;
pub mod tls;
pub mod typ;

pub use config::{ByteSize, ClusterConfig, HubConfig, RoutingPolicy, SpokeConfig};
pub use error::{Error, Result};
