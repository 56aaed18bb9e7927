//! Routing policies, one trait: given the candidate spokes for a request (they serve the
//! model, are active, heard from recently, and their circuit allows), pick one.

use std::sync::atomic::{AtomicUsize, Ordering};

use nave_consensus::RoutingPolicy;

/// What a policy knows of a candidate.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    /// Queued plus running sequences of the model: the last heartbeat's figure, or this
    /// hub's own requests in flight there when that is more (heartbeats lag).
    pub load: usize,
    pub cost_weight: f64,
    /// Recent p95 latency to first event, seconds (0 when unknown).
    pub p95_s: f64,
    /// Fraction of recent requests that succeeded.
    pub availability: f64,
}

pub trait Policy: Send + Sync {
    /// Index into `candidates` (never empty).
    fn pick(&self, candidates: &[Candidate], session: Option<&str>) -> usize;
}

/// Fewest queued and running sequences; ties take turns (an idle cluster spreads its
/// requests instead of sending them all to one spoke).
pub struct LeastLoaded;

impl Policy for LeastLoaded {
    fn pick(&self, c: &[Candidate], _: Option<&str>) -> usize {
        static TURN: AtomicUsize = AtomicUsize::new(0);
        let least = c.iter().map(|x| x.load).min().unwrap_or(0);
        let tied: Vec<usize> = (0..c.len()).filter(|&i| c[i].load == least).collect();
        tied.get(TURN.fetch_add(1, Ordering::Relaxed) % tied.len().max(1)).copied().unwrap_or(0)
    }
}

/// The same spoke for the same session while it stays a candidate (its prefix cache
/// holds the conversation): rendezvous hashing, so every hub that sees the same healthy
/// spokes picks the same one, and losing a spoke moves only its own sessions. Requests
/// without a session fall back to least-loaded.
pub struct SessionAffinity;

impl Policy for SessionAffinity {
    fn pick(&self, c: &[Candidate], session: Option<&str>) -> usize {
        let Some(s) = session else { return LeastLoaded.pick(c, None) };
        (0..c.len()).max_by_key(|&i| fnv1a(&[s.as_bytes(), b"/", c[i].id.as_bytes()])).unwrap_or(0)
    }
}

/// Lowest expected cost: the spoke's cost weight times its queue, stretched by slow
/// recent latency and by failures.
pub struct CostAware;

impl Policy for CostAware {
    fn pick(&self, c: &[Candidate], _: Option<&str>) -> usize {
        let score = |x: &Candidate| x.cost_weight * (1.0 + x.load as f64) * (1.0 + x.p95_s) / x.availability.max(0.05);
        (0..c.len()).min_by(|&a, &b| score(&c[a]).total_cmp(&score(&c[b])).then(c[a].id.cmp(&c[b].id))).unwrap_or(0)
    }
}

pub fn for_config(p: RoutingPolicy) -> Box<dyn Policy> {
    match p {
        RoutingPolicy::LeastLoaded => Box::new(LeastLoaded),
        RoutingPolicy::SessionAffinity => Box::new(SessionAffinity),
        RoutingPolicy::CostAware => Box::new(CostAware),
    }
}

use nave_consensus::ids::fnv1a;

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(id: &str, load: usize, cost: f64) -> Candidate {
        Candidate { id: id.into(), load, cost_weight: cost, p95_s: 0.0, availability: 1.0 }
    }

    #[test]
    fn least_loaded_picks_the_emptiest_and_ties_take_turns() {
        assert_eq!(LeastLoaded.pick(&[cand("a", 3, 1.0), cand("b", 1, 1.0), cand("c", 2, 1.0)], None), 1);
        let c = [cand("a", 0, 1.0), cand("b", 5, 1.0), cand("c", 0, 1.0)];
        let picks: std::collections::HashSet<usize> = (0..10).map(|_| LeastLoaded.pick(&c, None)).collect();
        assert_eq!(picks, [0, 2].into_iter().collect(), "both idle spokes get requests, the busy one none");
    }

    #[test]
    fn affinity_is_stable_and_moves_only_lost_sessions() {
        let all = [cand("s1", 0, 1.0), cand("s2", 9, 1.0), cand("s3", 0, 1.0)];
        let sessions: Vec<String> = (0..100).map(|i| format!("session-{i}")).collect();
        let first: Vec<&str> = sessions.iter().map(|s| all[SessionAffinity.pick(&all, Some(s))].id.as_str()).collect();
        let again: Vec<&str> = sessions.iter().map(|s| all[SessionAffinity.pick(&all, Some(s))].id.as_str()).collect();
        assert_eq!(first, again);
        assert!(first.contains(&"s1") && first.contains(&"s2") && first.contains(&"s3"));
        let without_s2 = [all[0].clone(), all[2].clone()];
        for (s, before) in sessions.iter().zip(&first) {
            let after = without_s2[SessionAffinity.pick(&without_s2, Some(s))].id.as_str();
            if *before != "s2" {
                assert_eq!(after, *before, "{s} moved although its spoke stayed");
            }
        }
    }

    #[test]
    fn cost_aware_prefers_cheap_until_it_is_busy() {
        let c = [cand("cheap", 0, 1.0), cand("dear", 0, 4.0)];
        assert_eq!(CostAware.pick(&c, None), 0);
        let c = [cand("cheap", 10, 1.0), cand("dear", 0, 4.0)];
        assert_eq!(CostAware.pick(&c, None), 1);
    }
}
