//! A per-spoke circuit breaker, pure (time comes in as an argument): closed until
//! `failures` consecutive failures, then open for `open_for`, then half-open: one probe
//! request goes through; its success closes the circuit, its failure opens it again.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug, Clone)]
pub struct Circuit {
    state: State,
    consecutive: u32,
    failures: u32,
    open_for: Duration,
}

impl Circuit {
    pub fn new(failures: u32, open_for: Duration) -> Self {
        Self { state: State::Closed, consecutive: 0, failures: failures.max(1), open_for }
    }

    /// Whether a request may go to this spoke now (a half-open circuit lets one through).
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen { probing: true };
                true
            }
            State::Open { .. } => false,
            State::HalfOpen { probing: false } => {
                self.state = State::HalfOpen { probing: true };
                true
            }
            State::HalfOpen { probing: true } => false,
        }
    }

    /// Whether `allow` would say yes, without taking the probe.
    pub fn is_available(&self, now: Instant) -> bool {
        match self.state {
            State::Closed | State::HalfOpen { probing: false } => true,
            State::Open { until } => now >= until,
            State::HalfOpen { probing: true } => false,
        }
    }

    pub fn success(&mut self) {
        self.consecutive = 0;
        self.state = State::Closed;
    }

    pub fn failure(&mut self, now: Instant) {
        self.consecutive += 1;
        let half_open = matches!(self.state, State::HalfOpen { .. });
        if half_open || self.consecutive >= self.failures {
            self.state = State::Open { until: now + self.open_for };
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn name(&self) -> &'static str {
        match self.state {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half-open",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_probes_once() {
        let t0 = Instant::now();
        let mut c = Circuit::new(3, Duration::from_secs(30));
        c.failure(t0);
        c.success();
        c.failure(t0);
        c.failure(t0);
        assert!(c.allow(t0), "two in a row after a success: still closed");
        c.failure(t0);
        assert!(!c.allow(t0 + Duration::from_secs(29)), "open for 30 s");
        let later = t0 + Duration::from_secs(31);
        assert!(c.allow(later), "half-open lets one probe");
        assert!(!c.allow(later), "only one");
        c.failure(later);
        assert!(!c.allow(later + Duration::from_secs(1)), "a failed probe opens it again");
        let again = later + Duration::from_secs(31);
        assert!(c.allow(again));
        c.success();
        assert_eq!(c.state(), State::Closed);
        assert!(c.allow(again) && c.allow(again));
    }
}
