//! An agent's clock offset from ping-pong exchanges over its link (NTP's idea, simplified).
//!
//! The controller sends a Ping at t0 (its clock); the agent stamps ta on its clock when it reads
//! it; the Pong arrives at t1. If the two halves of the round trip are equal,
//! offset = ta − (t0 + t1) / 2; whatever the split, the true offset lies within ± (t1 − t0) / 2
//! of that. Samples with the smallest round trip have the tightest bound and the least
//! queueing in them, so the estimate is the lowest-round-trip sample of a sliding window.
//!
//! Clocks also drift apart (crystals differ by tens of ppm; NTP disciplines each host only so
//! far): a 1 h soak at 20 ppm moves an offset by 72 ms. So each second's lowest-round-trip
//! sample becomes a point, and a line through the last ten minutes of points (each weighted by
//! its tightness, 1/bound²) gives the offset now and its drift. The agent follows that line.

use std::collections::VecDeque;

use crate::report::ClockReport;

/// Samples kept in the sliding window.
const WINDOW: usize = 32;
/// Controller time per fit point, ns: the point is the lowest-round-trip sample within it.
const BUCKET_NS: u64 = 1_000_000_000;
/// Fit points kept (ten minutes of them).
const BUCKETS: usize = 600;
/// A fit needs this many points, spanning at least this long (ns).
const FIT_POINTS: usize = 3;
const FIT_SPAN_NS: u64 = 2_000_000_000;

/// A line through the offsets: at controller time `at_unix_ns` the offset was `offset_ns`,
/// changing by `drift_ppb` ns per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    pub at_unix_ns: u64,
    pub offset_ns: i64,
    pub drift_ppb: i64,
}

impl Fit {
    /// The offset at controller time `t`.
    pub fn offset_at(&self, t: u64) -> i64 {
        let dt = t as i128 - self.at_unix_ns as i128;
        (self.offset_ns as i128 + dt * self.drift_ppb as i128 / 1_000_000_000) as i64
    }
}

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
    /// How fast the offset changes, ns per s, once there is a fit.
    pub drift_ppb: Option<i64>,
}

impl From<ClockEstimate> for ClockReport {
    fn from(e: ClockEstimate) -> Self {
        let start = e.start_offset_ns.unwrap_or(e.offset_ns);
        ClockReport {
            offset_us: start as f64 / 1e3,
            bound_us: e.bound_ns as f64 / 1e3,
            drift_us: (e.offset_ns - start) as f64 / 1e3,
            drift_ppm: e.drift_ppb.map(|d| d as f64 / 1e3),
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
    // per second of controller time: (mid time, round trip, offset) of its tightest sample
    points: VecDeque<(u64, u64, i64)>,
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
        let mid = mid as u64;
        match self.points.back_mut() {
            Some(p) if p.0 / BUCKET_NS == mid / BUCKET_NS => {
                if rtt < p.1 {
                    *p = (mid, rtt, offset);
                }
            }
            _ => {
                if self.points.len() == BUCKETS {
                    self.points.pop_front();
                }
                self.points.push_back((mid, rtt, offset));
            }
        }
        self.estimate()
    }

    /// The line through the points, weighted by 1/bound² (a bound floored at 1 µs), once
    /// there are enough points over a long enough span.
    pub fn fit(&self) -> Option<Fit> {
        let (first, last) = (self.points.front()?, self.points.back()?);
        if self.points.len() < FIT_POINTS || last.0 - first.0 < FIT_SPAN_NS {
            return None;
        }
        let at = last.0;
        let (mut sw, mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for &(t, rtt, off) in &self.points {
            let bound = (rtt as f64 / 2.0).max(1_000.0);
            let w = 1.0 / (bound * bound);
            // x in s before the last point, y in ns relative to its offset: small numbers
            let x = (t as f64 - at as f64) / 1e9;
            let y = (off - last.2) as f64;
            sw += w;
            sx += w * x;
            sy += w * y;
            sxx += w * x * x;
            sxy += w * x * y;
        }
        let det = sw * sxx - sx * sx;
        if det <= 0.0 {
            return None;
        }
        let slope = (sw * sxy - sx * sy) / det;
        let intercept = (sy - slope * sx) / sw;
        Some(Fit {
            at_unix_ns: at,
            offset_ns: last.2 + intercept.round() as i64,
            drift_ppb: slope.round() as i64,
        })
    }

    /// The estimate: the fit's offset at the latest exchange once there is a fit, else the
    /// tightest sample of the window; the bound is that sample's half round trip.
    pub fn estimate(&self) -> Option<ClockEstimate> {
        let &(rtt, offset) = self.window.iter().min_by_key(|(rtt, _)| *rtt)?;
        let fit = self.fit();
        Some(ClockEstimate {
            offset_ns: fit.map_or(offset, |f| f.offset_ns),
            bound_ns: rtt.div_ceil(2),
            start_offset_ns: None,
            samples: self.samples,
            drift_ppb: fit.map(|f| f.drift_ppb),
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

    /// A clock 150 ppm fast behind a jittery link (round trips 100–600 µs, split anyhow):
    /// after a minute of pings the fit has the drift within 2 ppm and the offset within the
    /// bound, where the window's tightest sample alone would be up to 16 s × 150 ppm = 2.4 ms
    /// stale.
    #[test]
    fn a_drifting_clock_is_fitted() {
        let mut e = Estimator::default();
        let (offset0, drift_ppb) = (30_000_000i64, 150_000i64);
        let mut rng = fastrand::Rng::with_seed(7);
        let mut est = None;
        for k in 0..120u64 {
            let t0 = 1_000_000_000_000 + k * 500_000_000;
            let (there, back) = (50_000 + rng.u64(0..300_000), 50_000 + rng.u64(0..300_000));
            let true_offset = offset0 + (t0 - 1_000_000_000_000) as i64 * drift_ppb / 1_000_000_000;
            let ta = (t0 as i64 + there as i64 + true_offset) as u64;
            est = e.add(t0, ta, t0 + there + back);
        }
        let est = est.unwrap();
        let fit = e.fit().unwrap();
        assert!((fit.drift_ppb - drift_ppb).abs() < 2_000, "{fit:?}");
        let t_last = fit.at_unix_ns;
        let truth = offset0 + (t_last - 1_000_000_000_000) as i64 * drift_ppb / 1_000_000_000;
        assert!(
            fit.offset_at(t_last).abs_diff(truth) <= est.bound_ns,
            "{fit:?} vs {truth}, ±{}",
            est.bound_ns
        );
        assert_eq!(est.offset_ns, fit.offset_ns);
        assert_eq!(est.drift_ppb, Some(fit.drift_ppb));
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
