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
    Generate {
        model: String,
        request: GenerateRequest,
    },
    Subscribe,
    /// Stop taking new requests (running ones finish); `false` undoes it.
    Drain(bool),
    /// Start a fine-tuning job; answered with `Jobs` (all jobs) or `Refused`.
    Train(TrainSpec),
    /// The spoke's fine-tuning jobs.
    Jobs,
    /// Cancel the job of this name; answered with `Jobs`.
    CancelJob(String),
    /// Renew your certificate now (`nave admin cert rotate`), through any hub; answered
    /// with `Renewed` or `Refused`.
    RotateCert,
}

/// A fine-tuning job as submitted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSpec {
    /// The adapter's name: requests for `model:name` use it.
    pub name: String,
    /// The served base model.
    pub model: String,
    /// Chat examples, one JSON object per line.
    pub data: String,
    pub config: nave_inference::train::TrainConfig,
}

/// A fine-tuning job's state, as `nave train status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobStatus {
    pub name: String,
    pub model: String,
    pub spoke: String,
    /// queued, running, done, failed, cancelled
    pub state: String,
    pub step: usize,
    pub steps: usize,
    pub loss: f32,
    pub tokens_per_s: f64,
    /// What the job reserved from the training partition (its estimate, grown if it was
    /// measured using more).
    pub memory_bytes: u64,
    /// The most the job was measured using (the process's resident size above where it
    /// was when the job started).
    #[serde(default)]
    pub peak_bytes: u64,
    pub error: Option<String>,
    /// (step, loss) of the steps so far, thinned to at most [`LOSS_POINTS`] evenly spread
    /// ones (the console draws the curve from them).
    #[serde(default)]
    pub losses: Vec<(usize, f32)>,
}

/// Loss points a job status keeps at most: when full, every other one goes (the first
/// and the newest stay), so a job of any length is a curve of 256 to 512 points.
pub const LOSS_POINTS: usize = 512;

impl JobStatus {
    /// Records the loss of a step.
    pub fn record_loss(&mut self, step: usize, loss: f32) {
        if self.losses.len() >= LOSS_POINTS {
            let last = self.losses.pop();
            let kept: Vec<(usize, f32)> = self.losses.iter().copied().step_by(2).collect();
            self.losses = kept;
            self.losses.extend(last);
        }
        self.losses.push((step, loss));
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SpokeToHub {
    /// The spoke took the request (it is in the engine's queue): sent at once, before any
    /// token, so a hub tells a hung spoke (no answer within the heartbeat timeout) from a
    /// busy one (accepted, tokens to come).
    Accepted,
    Event(Event),
    Heartbeat(Heartbeat),
    /// The request was refused before it started: `retryable` says another spoke may take
    /// it (queue full, draining, model not here) rather than the request being wrong.
    Refused {
        message: String,
        retryable: bool,
    },
    Jobs(Vec<JobStatus>),
    /// The spoke presents a new certificate, valid until this time (Unix seconds).
    Renewed {
        not_after: i64,
    },
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
    /// Fine-tuned adapters served with this model (requests name them `model:adapter`).
    pub adapters: Vec<String>,
    /// Its context length in tokens (prompt plus completion).
    pub context: usize,
    /// Tokens its chat template adds: for the first message, for each further one.
    pub prompt_overhead: Option<(usize, usize)>,
}

impl Heartbeat {
    /// Queued plus running sequences for `model` (what least-loaded routing compares).
    /// `model` may name an adapter (`base:adapter`): then only spokes that have it count.
    pub fn load(&self, model: &str) -> Option<usize> {
        let (base, adapter) = split_model(model);
        self.models
            .iter()
            .find(|m| m.model == base && adapter.is_none_or(|a| m.adapters.iter().any(|x| x == a)))
            .map(|m| m.stats.waiting + m.stats.running)
    }
}

/// `smollm2-135m:my-adapter` -> (`smollm2-135m`, Some(`my-adapter`)).
pub fn split_model(model: &str) -> (&str, Option<&str>) {
    match model.split_once(':') {
        Some((base, adapter)) if !adapter.is_empty() => (base, Some(adapter)),
        _ => (model, None),
    }
}

/// Largest join frame either side accepts (`nave-join/1`).
pub const MAX_JOIN_FRAME: u32 = 64 << 10;

/// The first and only frame a joining spoke sends on `nave-join/1`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The token's secret (the hub compares its digest with the replicated one).
    pub secret: String,
    pub spoke: nave_consensus::state::SpokeRecord,
    /// A certificate request; the key stays on the spoke. (The certificate names the id
    /// the hub answers with.)
    pub csr_pem: String,
    /// The id is this machine's host name, not one the admin chose: if another node holds
    /// it, the hub picks a free one (`id-2`, `id-3`...) instead of refusing the join.
    pub rename_if_taken: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum JoinReply {
    /// `id` is the spoke's id in the cluster (the one asked for, or a free one beside it).
    Accepted {
        id: String,
        cert_pem: String,
        ca_pem: String,
        heartbeat_interval_ms: u64,
        /// The hub's applied log index once the spoke was registered: the spoke's replica
        /// has caught up when it has applied that far.
        log_index: u64,
    },
    Refused(String),
}

/// The one frame a node sends on `nave-renew/1`, over a connection made with its current
/// (valid) certificate: a request for a fresh certificate for the same name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewRequest {
    /// A certificate request; the new key stays on the node.
    pub csr_pem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RenewReply {
    Renewed { cert_pem: String },
    Refused(String),
}

/// A join token as an admin hands it over: `nave-join.<secret>.<CA fingerprint>`. The
/// secret proves the right to join; the fingerprint lets the spoke check that it talks to
/// this cluster's hubs before it sends the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub secret: String,
    pub ca_fingerprint: String,
}

impl JoinToken {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            "a join token looks like nave-join.<32 hex digits>.<64 hex digits> (from `nave admin token create`)"
                .to_string()
        };
        let mut parts = text.trim().split('.');
        let (Some("nave-join"), Some(secret), Some(fp), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(secret, 32) || !hex(fp, 64) {
            return Err(bad());
        }
        Ok(Self { secret: secret.to_ascii_lowercase(), ca_fingerprint: fp.to_ascii_lowercase() })
    }

    /// SHA-256 of the secret, hex: what the replicated state keeps.
    pub fn digest(secret: &str) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(secret.as_bytes()))
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "nave-join.{}.{}", self.secret, self.ca_fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_keeps_a_bounded_curve_of_its_losses() {
        let mut j = JobStatus::default();
        for step in 1..=10_000 {
            j.record_loss(step, 1.0 / step as f32);
        }
        assert!(j.losses.len() <= LOSS_POINTS && j.losses.len() >= LOSS_POINTS / 2, "{}", j.losses.len());
        assert_eq!(j.losses.first().map(|p| p.0), Some(1), "the first step stays");
        assert_eq!(j.losses.last().map(|p| p.0), Some(10_000), "the newest is there");
        assert!(j.losses.windows(2).all(|w| w[0].0 < w[1].0), "in step order");
    }

    #[test]
    fn join_tokens_round_trip_and_reject_garbage() {
        let t = JoinToken { secret: "ab".repeat(16), ca_fingerprint: "cd".repeat(32) };
        assert_eq!(JoinToken::parse(&t.to_string()), Ok(t.clone()));
        assert_eq!(
            JoinToken::parse(&format!(" {} \n", t.to_string().to_uppercase().replace("NAVE-JOIN", "nave-join"))),
            Ok(t)
        );
        for bad in [
            "",
            "nave-join",
            "nave-join.abc.def",
            &format!("nave-join.{}.{}.x", "ab".repeat(16), "cd".repeat(32)),
            &format!("other.{}.{}", "ab".repeat(16), "cd".repeat(32)),
            &format!("nave-join.{}.{}", "zz".repeat(16), "cd".repeat(32)),
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad:?}");
        }
    }
}
