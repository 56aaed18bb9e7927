//! The hub-spoke protocol (ALPN `nave-spoke/1`): one bidirectional QUIC stream per
//! inference request, frames from [`nave_consensus::frame`]. The hub opens a stream and
//! sends one [`HubToSpoke`]; the spoke answers with [`SpokeToHub`] frames until the
//! request ends, then finishes the stream. A hub that resets or stops the stream cancels
//! the request, and the engine frees its sequence.
//!
//! `Subscribe` opens a stream on which the spoke sends a heartbeat with its load every
//! heartbeat interval, for as long as the hub listens.

use serde::{Deserialize, Serialize};

use nave_inference::{EngineStats, Event, GenerateRequest, LedgerSnapshot};

/// Largest frame either side accepts on this protocol.
pub const MAX_FRAME: u32 = 4 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum HubToSpoke {
    Generate { model: String, request: GenerateRequest },
    Subscribe,
    /// Stop taking new requests (running ones finish); `false` undoes it.
    Drain(bool),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SpokeToHub {
    Event(Event),
    Heartbeat(Heartbeat),
    /// The request was refused before it started: `retryable` says another spoke may take
    /// it (queue full, draining, model not here) rather than the request being wrong.
    Refused { message: String, retryable: bool },
}

/// A spoke's load and health, sent to every hub that subscribes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Heartbeat {
    pub spoke_id: String,
    pub models: Vec<ModelLoad>,
    pub draining: bool,
    pub memory: LedgerSnapshot,
    /// Output tokens per second over the last few seconds, all models.
    pub tokens_per_s: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModelLoad {
    pub model: String,
    pub stats: EngineStats,
}

impl Heartbeat {
    /// Queued plus running sequences for `model` (what least-loaded routing compares).
    pub fn load(&self, model: &str) -> Option<usize> {
        self.models.iter().find(|m| m.model == model).map(|m| m.stats.waiting + m.stats.running)
    }
}
