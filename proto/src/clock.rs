//! One clock for everything the engine timestamps.
//!
//! Timestamps are nanoseconds since the Unix epoch, but they advance with the monotonic clock:
//! the wall clock is read once, when the [`Clock`] is made, and every later reading is that anchor
//! plus the monotonic time elapsed since. So readings never go backwards (NTP steps cannot bend a
//! latency), and they are still comparable across processes and hosts whose wall clocks agree,
//! which is what end-to-end latency between two agents needs.
//!
//! An agent's clock can also follow a correction that changes during a run (the controller's
//! fit of the agent's clock offset and drift): one atomic, read with every timestamp.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A monotonic clock that reads in Unix nanoseconds. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Clock {
    anchor: Instant,
    // ns since the Unix epoch at `anchor`
    anchor_unix_ns: u64,
    // a test's fake drift: the clock runs this many ns per s fast (negative: slow)
    drift_ppb: i64,
    // subtracted from every reading, ns (changes during a run)
    correction: Option<Arc<AtomicI64>>,
}

impl Clock {
    pub fn new() -> Self {
        let anchor = Instant::now();
        let anchor_unix_ns =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        Clock { anchor, anchor_unix_ns, drift_ppb: 0, correction: None }
    }

    /// This clock moved by `ns` (positive: it reads later). Agents use it to read on the
    /// controller's time base (`-offset`), and tests to fake a skewed host.
    pub fn shifted(self, ns: i64) -> Clock {
        Clock { anchor_unix_ns: self.anchor_unix_ns.saturating_add_signed(ns), ..self }
    }

    /// This clock running `ppb` ns per second fast (tests fake a drifting host with it).
    pub fn drifting(self, ppb: i64) -> Clock {
        Clock { drift_ppb: ppb.clamp(-100_000_000, 100_000_000), ..self }
    }

    /// This clock less whatever `correction` holds when it is read (ns).
    pub fn corrected_by(self, correction: Arc<AtomicI64>) -> Clock {
        Clock { correction: Some(correction), ..self }
    }

    /// The reading `elapsed_ns` after the anchor: the monotonic time, run fast or slow by a
    /// test's drift, less the correction. One branch on the common path (neither).
    #[inline]
    fn reading(&self, elapsed_ns: u64) -> u64 {
        let mut t = self.anchor_unix_ns + elapsed_ns;
        if self.drift_ppb != 0 {
            t = t.saturating_add_signed((elapsed_ns as i128 * self.drift_ppb as i128 / 1_000_000_000) as i64);
        }
        match &self.correction {
            Some(c) => t.saturating_add_signed(-c.load(Ordering::Relaxed)),
            None => t,
        }
    }

    /// Now, in ns since the Unix epoch; monotonic unless a correction steps back.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.reading(self.anchor.elapsed().as_nanos() as u64)
    }

    /// The tokio instant at which this clock reads `unix_ns` (clamped to the anchor, and to
    /// a year from now for "never").
    pub fn instant_at(&self, unix_ns: u64) -> tokio::time::Instant {
        const YEAR_NS: i128 = 365 * 86_400 * 1_000_000_000;
        // invert `reading`: anchor + e·(1 + drift) − c = unix_ns
        let c = self.correction.as_ref().map_or(0, |c| c.load(Ordering::Relaxed)) as i128;
        let target = unix_ns as i128 - self.anchor_unix_ns as i128 + c;
        let e = target * 1_000_000_000 / (1_000_000_000 + self.drift_ppb as i128);
        let now = self.anchor.elapsed().as_nanos() as i128;
        let e = e.clamp(0, now + YEAR_NS) as u64;
        tokio::time::Instant::from_std(self.anchor + Duration::from_nanos(e))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_are_monotonic_and_near_wall_time() {
        let clock = Clock::new();
        let a = clock.now_ns();
        let b = clock.now_ns();
        assert!(b >= a);
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
        // same second as the wall clock
        assert!(wall.abs_diff(b) < 1_000_000_000, "wall {wall} clock {b}");
    }

    #[test]
    fn instant_at_round_trips() {
        let clock = Clock::new();
        let t = clock.now_ns() + 5_000_000;
        let at = clock.instant_at(t).into_std();
        let back = clock.anchor_unix_ns + (at - clock.anchor).as_nanos() as u64;
        assert_eq!(back, t);
    }

    #[test]
    fn a_drifting_corrected_clock_reads_and_inverts_alike() {
        let correction = Arc::new(AtomicI64::new(0));
        let clock = Clock::new().drifting(2_000_000).corrected_by(correction.clone());
        let a = clock.now_ns();
        std::thread::sleep(Duration::from_millis(20));
        let b = clock.now_ns();
        // 2 ms per s fast: 20 ms read as ~20.04 ms
        assert!(b - a >= 20_040_000, "{}", b - a);
        correction.store(5_000_000, Ordering::Relaxed);
        let c = clock.now_ns();
        assert!(c + 5_000_000 >= b && c < b, "a correction of 5 ms steps it back: {b} → {c}");
        let t = clock.now_ns() + 10_000_000;
        let at = clock.instant_at(t).into_std();
        let read = clock.reading((at - clock.anchor).as_nanos() as u64);
        assert!(read.abs_diff(t) <= 2, "{read} vs {t}");
    }
}
