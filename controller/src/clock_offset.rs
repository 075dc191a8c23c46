//! An agent's clock offset from ping-pong exchanges over its link (NTP's idea, simplified).
//!
//! The controller sends a Ping at t0 (its clock); the agent stamps ta on its clock when it reads
//! it; the Pong arrives at t1. If the two halves of the round trip are equal,
//! offset = ta − (t0 + t1) / 2; whatever the split, the true offset lies within ± (t1 − t0) / 2
//! of that. Samples with the smallest round trip have the tightest bound and the least
//! queueing in them, so the estimate is the lowest-round-trip sample of a sliding window.

use std::collections::VecDeque;

use crate::report::ClockReport;

/// Samples kept in the sliding window.
const WINDOW: usize = 32;

/// The current estimate.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClockEstimate {
    /// Agent clock − controller clock, ns.
    pub offset_ns: i64,
    /// ± this, ns.
    pub bound_ns: u64,
    /// The offset the run started with (what the agent's clock was corrected by), ns.
    pub start_offset_ns: Option<i64>,
    pub samples: u64,
}

impl From<ClockEstimate> for ClockReport {
    fn from(e: ClockEstimate) -> Self {
        let start = e.start_offset_ns.unwrap_or(e.offset_ns);
        ClockReport {
            offset_us: start as f64 / 1e3,
            bound_us: e.bound_ns as f64 / 1e3,
            drift_us: (e.offset_ns - start) as f64 / 1e3,
            samples: e.samples,
        }
    }
}

/// Keeps the window and computes the estimate.
#[derive(Debug, Default)]
pub struct Estimator {
    // (round trip, offset), ns
    window: VecDeque<(u64, i64)>,
    samples: u64,
}

impl Estimator {
    /// Adds one exchange: sent at `t0` and answered at `t1` (controller clock), read by the
    /// agent at `ta` (agent clock). Exchanges whose times go backwards are ignored.
    pub fn add(&mut self, t0: u64, ta: u64, t1: u64) -> Option<ClockEstimate> {
        let rtt = t1.checked_sub(t0)?;
        let mid = t0 as i128 + rtt as i128 / 2;
        let offset = i64::try_from(ta as i128 - mid).ok()?;
        if self.window.len() == WINDOW {
            self.window.pop_front();
        }
        self.window.push_back((rtt, offset));
        self.samples += 1;
        self.estimate()
    }

    pub fn estimate(&self) -> Option<ClockEstimate> {
        let &(rtt, offset) = self.window.iter().min_by_key(|(rtt, _)| *rtt)?;
        Some(ClockEstimate {
            offset_ns: offset,
            bound_ns: rtt.div_ceil(2),
            start_offset_ns: None,
            samples: self.samples,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn symmetric_exchange_gives_the_exact_offset() {
        let mut e = Estimator::default();
        // agent 50 ms ahead, 100 µs each way
        let est = e.add(1_000_000, 1_000_000 + 100_000 + 50_000_000, 1_200_000).unwrap();
        assert_eq!(est.offset_ns, 50_000_000);
        assert_eq!(est.bound_ns, 100_000);
    }

    #[test]
    fn the_lowest_round_trip_wins() {
        let mut e = Estimator::default();
        e.add(0, 5_000_000, 10_000_000); // 10 ms round trip, badly skewed by queueing
        let est = e.add(20_000_000, 20_050_000, 20_100_000).unwrap();
        assert_eq!((est.offset_ns, est.bound_ns), (0, 50_000));
        assert_eq!(est.samples, 2);
    }

    proptest! {
        /// Whatever the split of the round trip, the true offset lies within the bound.
        #[test]
        fn true_offset_is_within_the_bound(offset in -10_000_000_000i64..10_000_000_000,
                                           there in 0u64..50_000_000, back in 0u64..50_000_000) {
            let t0 = 100_000_000_000u64;
            let ta = (t0 as i64 + there as i64 + offset) as u64;
            let t1 = t0 + there + back;
            let est = Estimator::default().add(t0, ta, t1).unwrap();
            prop_assert!(est.offset_ns.abs_diff(offset) <= est.bound_ns);
        }
    }
}
