//! The hub's Prometheus metrics. Names are constants; label sets are bounded (routes are
//! fixed, models are those of the config or "other", spokes those of the config).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub const REQUESTS: &str = "nave_hub_requests_total";
pub const TTFT: &str = "nave_hub_time_to_first_token_seconds";
pub const ITL: &str = "nave_hub_inter_token_latency_seconds";
pub const RETRIES: &str = "nave_hub_retries_total";
pub const REFUSALS: &str = "nave_hub_admission_refusals_total";
pub const CIRCUIT: &str = "nave_hub_spoke_circuit_open";
pub const SPOKE_UP: &str = "nave_hub_spoke_up";
pub const IN_FLIGHT: &str = "nave_hub_requests_in_flight";
/// Bytes of stored responses in the replicated state (the part of its snapshot that
/// grows with use), and the configured bound of the snapshot.
pub const STORED_RESPONSE_BYTES: &str = "nave_state_stored_response_bytes";
pub const SNAPSHOT_LIMIT_BYTES: &str = "nave_state_snapshot_limit_bytes";
pub const RAFT_TERM: &str = "nave_raft_term";
pub const RAFT_IS_LEADER: &str = "nave_raft_is_leader";
pub const RAFT_LAST_LOG: &str = "nave_raft_last_log_index";
pub const RAFT_APPLIED: &str = "nave_raft_applied_index";
pub const RAFT_SNAPSHOT: &str = "nave_raft_snapshot_index";
pub const RAFT_LAG: &str = "nave_raft_replication_lag_entries";
pub const OTLP_DROPPED: &str = "nave_otlp_spans_dropped_total";

/// Upper bounds of the latency histograms' buckets, in seconds (one more bucket, +Inf,
/// follows).
pub const BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; 15],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        let i = BUCKETS.iter().position(|&b| seconds <= b).unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// The count of each bucket (not cumulative), the last one +Inf.
    pub fn counts(&self) -> [u64; BUCKETS.len() + 1] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }

    fn render(&self, name: &str, out: &mut String) {
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut acc = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            acc += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {acc}");
        }
        acc += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {acc}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_us.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {acc}");
    }
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, String, u16), u64>>,
    refusals: Mutex<BTreeMap<&'static str, u64>>,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub retries: AtomicU64,
    pub in_flight: AtomicU64,
    models: Mutex<Vec<String>>,
}

impl Metrics {
    pub fn new(models: Vec<String>) -> Self {
        Self { models: Mutex::new(models), ..Self::default() }
    }

    /// A model served by a spoke that joined: its requests get their own label.
    pub fn add_model(&self, model: &str) {
        let mut m = nave_consensus::sync::lock(&self.models);
        if !m.iter().any(|x| x == model) {
            m.push(model.to_string());
        }
    }

    pub fn request(&self, route: &'static str, model: &str, status: u16) {
        let known = nave_consensus::sync::lock(&self.models).iter().any(|m| m == model);
        let model = if known { model.to_string() } else { "other".into() };
        let mut m = nave_consensus::sync::lock(&self.requests);
        *m.entry((route, model, status)).or_default() += 1;
    }

    pub fn refusal(&self, reason: &'static str) {
        *nave_consensus::sync::lock(&self.refusals).entry(reason).or_default() += 1;
    }

    /// Requests answered so far, every route, model and status.
    pub fn requests_total(&self) -> u64 {
        nave_consensus::sync::lock(&self.requests).values().sum()
    }

    /// Refusals so far, by reason.
    pub fn refusals(&self) -> BTreeMap<&'static str, u64> {
        nave_consensus::sync::lock(&self.refusals).clone()
    }

    pub fn render(&self, spokes: &[crate::spokes::SpokeView]) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE {REQUESTS} counter");
        for ((route, model, status), n) in nave_consensus::sync::lock(&self.requests).iter() {
            let _ = writeln!(out, "{REQUESTS}{{route=\"{route}\",model=\"{model}\",status=\"{status}\"}} {n}");
        }
        let _ = writeln!(out, "# TYPE {REFUSALS} counter");
        for (reason, n) in nave_consensus::sync::lock(&self.refusals).iter() {
            let _ = writeln!(out, "{REFUSALS}{{reason=\"{reason}\"}} {n}");
        }
        self.ttft.render(TTFT, &mut out);
        self.itl.render(ITL, &mut out);
        let _ = writeln!(out, "# TYPE {RETRIES} counter\n{RETRIES} {}", self.retries.load(Ordering::Relaxed));
        let _ = writeln!(out, "# TYPE {IN_FLIGHT} gauge\n{IN_FLIGHT} {}", self.in_flight.load(Ordering::Relaxed));
        let _ = writeln!(out, "# TYPE {CIRCUIT} gauge");
        for s in spokes {
            let _ = writeln!(out, "{CIRCUIT}{{spoke=\"{}\"}} {}", s.id, u8::from(s.circuit != "closed"));
        }
        let _ = writeln!(out, "# TYPE {SPOKE_UP} gauge");
        for s in spokes {
            let _ = writeln!(out, "{SPOKE_UP}{{spoke=\"{}\"}} {}", s.id, u8::from(s.state == "active"));
        }
        out
    }
}
