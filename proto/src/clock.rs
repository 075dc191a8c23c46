//! One clock for everything the engine timestamps.
//!
//! Timestamps are nanoseconds since the Unix epoch, but they advance with the monotonic clock:
//! the wall clock is read once, when the [`Clock`] is made, and every later reading is that anchor
//! plus the monotonic time elapsed since. So readings never go backwards (NTP steps cannot bend a
//! latency), and they are still comparable across processes and hosts whose wall clocks agree,
//! which is what end-to-end latency between two agents needs.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A monotonic clock that reads in Unix nanoseconds. Cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    anchor: Instant,
    // ns since the Unix epoch at `anchor`
    anchor_unix_ns: u64,
}

impl Clock {
    pub fn new() -> Self {
        let anchor = Instant::now();
        let anchor_unix_ns =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        Clock { anchor, anchor_unix_ns }
    }

    /// This clock moved by `ns` (positive: it reads later). Agents use it to read on the
    /// controller's time base (`-offset`), and tests to fake a skewed host.
    pub fn shifted(self, ns: i64) -> Clock {
        Clock { anchor: self.anchor, anchor_unix_ns: self.anchor_unix_ns.saturating_add_signed(ns) }
    }

    /// Now, in ns since the Unix epoch; monotonic.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.anchor_unix_ns + self.anchor.elapsed().as_nanos() as u64
    }

    /// The tokio instant at which this clock reads `unix_ns` (clamped to the anchor, and to
    /// a year from now for "never").
    pub fn instant_at(&self, unix_ns: u64) -> tokio::time::Instant {
        const YEAR_NS: u64 = 365 * 86_400 * 1_000_000_000;
        let offset = unix_ns
            .saturating_sub(self.anchor_unix_ns)
            .min(self.now_ns().saturating_sub(self.anchor_unix_ns) + YEAR_NS);
        tokio::time::Instant::from_std(self.anchor + Duration::from_nanos(offset))
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
}
