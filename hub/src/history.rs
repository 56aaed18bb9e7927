//! The hub's last hour in numbers, for the console's charts (`GET /admin/v1/history`).
//!
//! Every [`INTERVAL`] the hub reads its own counters (requests answered, the latency
//! histograms' buckets, refusals by reason) and the spokes' reported tokens per second,
//! and keeps the rates over that interval in a ring of [`KEEP`] samples: one hour, about
//! 150 KiB. The ring is in memory only, so a restarted hub's charts start empty, and it is
//! this hub's own traffic (requests reach any hub; tokens per second are the cluster's).
//! [`History::record`] is pure bookkeeping over two readings, tested without a hub.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::metrics::BUCKETS;
use crate::Hub;

/// How often the hub samples its counters.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept: an hour at [`INTERVAL`].
pub const KEEP: usize = 720;

/// Bucket counts of a latency histogram (not cumulative; the last is +Inf).
pub type Buckets = [u64; BUCKETS.len() + 1];

/// The hub's counters at one instant (cumulative since it started, except the gauges).
#[derive(Debug, Clone, Default)]
pub struct Reading {
    pub at_ms: u64,
    pub requests: u64,
    pub ttft: Buckets,
    pub itl: Buckets,
    pub refusals: BTreeMap<String, u64>,
    /// Gauge: the tokens per second the spokes report now.
    pub tokens_per_s: f64,
    /// Gauge: requests holding a slot of this hub now.
    pub in_flight: u64,
}

/// One interval of the ring: rates over the interval that ends at `at_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub at_ms: u64,
    pub requests_per_s: f64,
    pub tokens_per_s: f64,
    /// Latency quantiles of the interval's observations, in seconds (none when nothing
    /// was observed), interpolated within the histogram's buckets.
    pub ttft_p50_s: Option<f64>,
    pub ttft_p99_s: Option<f64>,
    pub itl_p50_s: Option<f64>,
    pub itl_p99_s: Option<f64>,
    /// Refusals per second by reason, only the reasons that occurred in the interval.
    pub refusals_per_s: BTreeMap<String, f64>,
    pub in_flight: u64,
}

/// `GET /admin/v1/history`: the samples, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryAnswer {
    /// The hub whose counters these are.
    pub hub: String,
    pub interval_s: u64,
    pub samples: Vec<Sample>,
}

/// The ring. A `std::sync::Mutex`: held only to push or copy, never across an await.
#[derive(Default)]
pub struct History {
    inner: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    last: Option<Reading>,
    samples: VecDeque<Sample>,
}

impl History {
    /// Adds the interval between the previous reading and `now` (the first reading only
    /// starts the first interval). A reading not later than the previous one is ignored.
    pub fn record(&self, now: Reading) {
        let mut ring = nave_consensus::sync::lock(&self.inner);
        let Some(last) = ring.last.take() else {
            ring.last = Some(now);
            return;
        };
        if now.at_ms <= last.at_ms {
            ring.last = Some(last);
            return;
        }
        let secs = (now.at_ms - last.at_ms) as f64 / 1000.0;
        let per_s = |n: u64, before: u64| n.saturating_sub(before) as f64 / secs;
        let refusals_per_s = now
            .refusals
            .iter()
            .filter_map(|(reason, &n)| {
                let before = last.refusals.get(reason).copied().unwrap_or(0);
                (n > before).then(|| (reason.clone(), per_s(n, before)))
            })
            .collect();
        let sample = Sample {
            at_ms: now.at_ms,
            requests_per_s: per_s(now.requests, last.requests),
            tokens_per_s: now.tokens_per_s,
            ttft_p50_s: quantile(&last.ttft, &now.ttft, 0.50),
            ttft_p99_s: quantile(&last.ttft, &now.ttft, 0.99),
            itl_p50_s: quantile(&last.itl, &now.itl, 0.50),
            itl_p99_s: quantile(&last.itl, &now.itl, 0.99),
            refusals_per_s,
            in_flight: now.in_flight,
        };
        if ring.samples.len() == KEEP {
            ring.samples.pop_front();
        }
        ring.samples.push_back(sample);
        ring.last = Some(now);
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        nave_consensus::sync::lock(&self.inner).samples.iter().cloned().collect()
    }
}

/// The `q` quantile of the observations between two readings of a histogram, linearly
/// interpolated inside its bucket (as Prometheus' `histogram_quantile` does); an
/// observation above the last bound counts as that bound. `None` when nothing was
/// observed in between.
pub fn quantile(before: &Buckets, now: &Buckets, q: f64) -> Option<f64> {
    let delta: Vec<u64> = now.iter().zip(before).map(|(n, b)| n.saturating_sub(*b)).collect();
    let total: u64 = delta.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut seen = 0u64;
    for (i, &count) in delta.iter().enumerate() {
        if count > 0 && (seen + count) as f64 >= rank {
            let Some(&upper) = BUCKETS.get(i) else { return BUCKETS.last().copied() };
            let lower = if i == 0 { 0.0 } else { BUCKETS[i - 1] };
            let within = (rank - seen as f64).max(0.0) / count as f64;
            return Some(lower + (upper - lower) * within);
        }
        seen += count;
    }
    BUCKETS.last().copied()
}

/// This hub's counters now.
pub fn reading(hub: &Hub) -> Reading {
    let m = &hub.metrics;
    Reading {
        at_ms: nave_consensus::clock::now_ms(),
        requests: m.requests_total(),
        ttft: m.ttft.counts(),
        itl: m.itl.counts(),
        refusals: m.refusals().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        tokens_per_s: hub.spokes.views().iter().filter(|s| s.state != "down").map(|s| s.tokens_per_s).sum(),
        in_flight: hub.in_flight() as u64,
    }
}

/// Samples the hub every [`INTERVAL`] for as long as the process runs.
pub async fn sample(hub: Arc<Hub>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        hub.history.record(reading(&hub));
    }
}

/// `GET /admin/v1/history`.
pub async fn endpoint(State(hub): State<Arc<Hub>>) -> Json<HistoryAnswer> {
    Json(HistoryAnswer { hub: hub.id.clone(), interval_s: INTERVAL.as_secs(), samples: hub.history.samples() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buckets(pairs: &[(usize, u64)]) -> Buckets {
        let mut b = Buckets::default();
        for &(i, n) in pairs {
            b[i] = n;
        }
        b
    }

    #[test]
    fn quantiles_interpolate_within_the_interval_s_buckets() {
        let none = Buckets::default();
        assert_eq!(quantile(&none, &none, 0.5), None, "nothing observed");
        // 100 observations in (0.1, 0.25]: the median is halfway through the bucket.
        let now = buckets(&[(5, 100)]);
        let p50 = quantile(&none, &now, 0.5).expect("observed");
        assert!((p50 - 0.175).abs() < 1e-9, "{p50}");
        // Only what happened since the earlier reading counts.
        let before = buckets(&[(0, 1000)]);
        let now = buckets(&[(0, 1000), (7, 10)]);
        let p99 = quantile(&before, &now, 0.99).expect("observed");
        assert!(p99 > 0.5 && p99 <= 1.0, "{p99}");
        // Above the last bound: the last bound.
        assert_eq!(quantile(&none, &buckets(&[(14, 3)]), 0.99), Some(120.0));
        // 99 fast, 1 slow: p50 fast, p99 at the slow one's bucket edge.
        let mixed = buckets(&[(1, 99), (9, 1)]);
        assert!(quantile(&none, &mixed, 0.5).expect("observed") <= 0.01);
        assert!(quantile(&none, &mixed, 0.995).expect("observed") > 2.5);
    }

    #[test]
    fn the_ring_keeps_rates_of_an_hour() {
        let h = History::default();
        let at = |s: u64, requests: u64, refused: u64| Reading {
            at_ms: s * 1000,
            requests,
            refusals: [("rate_limit".to_string(), refused)].into_iter().collect(),
            tokens_per_s: 7.5,
            ..Reading::default()
        };
        h.record(at(0, 10, 0));
        assert!(h.samples().is_empty(), "the first reading starts the first interval");
        h.record(at(5, 60, 5));
        let s = h.samples();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].requests_per_s, 10.0);
        assert_eq!(s[0].tokens_per_s, 7.5);
        assert_eq!(s[0].refusals_per_s.get("rate_limit"), Some(&1.0));
        assert_eq!(s[0].ttft_p50_s, None);
        h.record(at(5, 70, 5));
        assert_eq!(h.samples().len(), 1, "a reading at the same instant is ignored");
        h.record(at(10, 60, 5));
        let last = h.samples().pop().expect("sample");
        assert_eq!(last.requests_per_s, 0.0, "the ignored reading (70) did not replace the kept one (60)");
        for i in 0..(KEEP as u64 + 10) {
            h.record(at(20 + i * 5, 100 + i, 5));
        }
        let s = h.samples();
        assert_eq!(s.len(), KEEP, "bounded");
        assert!(s.windows(2).all(|w| w[0].at_ms < w[1].at_ms), "oldest first");
        assert!(s.iter().skip(1).all(|x| x.refusals_per_s.is_empty()), "no new refusals, no entry");
    }
}
