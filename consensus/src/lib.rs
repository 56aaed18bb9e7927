//! # nave-consensus
//!
//! The replicated state of the cluster (openraft over sled, Raft over QUIC) and the
//! cluster's shared foundations every node builds on: its configuration, its identities
//! (a private CA and mutual TLS), its wire (frames), and the small helpers every node must
//! derive the same way. Every other Nave crate depends on this one; it depends on none.
//!
//! # Layout
//! - Foundations: [`config`] (`cluster.toml`, one serde tree with typed validation
//!   errors); [`tls`] (the cluster CA, node certificates, mutual-TLS QUIC configs, ALPN
//!   names); [`frame`] (u32 length + bincode with a size limit, for every protocol);
//!   [`error`] (this crate's error and `Result`).
//! - The state machine: [`state`] (the replicated state and its pure, deterministic
//!   `apply`); [`typ`] (openraft's type configuration and aliases); [`store`] (the log,
//!   vote and snapshots on sled).
//! - The Raft node: [`node`] (a hub's or a spoke's node: `write`, `read`, `propose`,
//!   membership, node ids); [`batch`] (proposals committed together, proposal ids);
//!   [`election`] (the election guard: run for leader only when it may win);
//!   [`network`] (Raft RPCs, forwarded writes and read indexes over QUIC).
//! - Helpers: [`clock`] (wall-clock milliseconds for commands, RFC 3339 dates);
//!   [`ids`] (FNV-1a, random hex and ids, unique file-name parts); [`sync`] (lock guards
//!   that survive poisoning); [`rng`] (a seeded xorshift generator).
//!
//! A write: [`node::ConsensusNode::write`] -> [`batch`] groups it with the proposals in
//! flight -> the leader (forwarded by [`network`] from a follower) appends it to the log
//! ([`store`]) and replicates it -> every replica applies it with [`state`].

pub mod batch;
pub mod clock;
pub mod config;
pub mod election;
pub mod error;
pub mod files;
pub mod frame;
pub mod ids;
pub mod network;
pub mod node;
pub mod rng;
pub mod state;
pub mod store;
pub mod sync;
pub mod tls;
pub mod typ;

pub use config::{ByteSize, ClusterConfig, HubConfig, RoutingPolicy, SpokeConfig};
pub use error::{Error, Result};
