//! Reconnect backoff: exponential with full jitter (AWS architecture blog, "Exponential
//! Backoff And Jitter"), so a fleet dropped at once does not come back at once.

/// Backoff state of one client.
#[derive(Debug, Clone)]
pub struct Backoff {
    min_ns: u64,
    max_ns: u64,
    failures: u32,
}

impl Backoff {
    pub fn new(min_ms: u64, max_ms: u64) -> Backoff {
        Backoff { min_ns: min_ms * 1_000_000, max_ns: max_ms.max(min_ms) * 1_000_000, failures: 0 }
    }

    /// The delay before the next attempt: uniform in [min, min(max, min × 2^failures)].
    pub fn next_delay_ns(&mut self, rng: &mut fastrand::Rng) -> u64 {
        let ceiling = self.min_ns.saturating_mul(1u64 << self.failures.min(32)).min(self.max_ns);
        self.failures = self.failures.saturating_add(1);
        rng.u64(self.min_ns..=ceiling.max(self.min_ns))
    }

    /// A connection succeeded: start over.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut b = Backoff::new(100, 1_000);
        let first = b.next_delay_ns(&mut rng);
        assert_eq!(first, 100_000_000, "the first retry waits exactly min");
        let mut seen_max = 0;
        for _ in 0..50 {
            let d = b.next_delay_ns(&mut rng);
            assert!((100_000_000..=1_000_000_000).contains(&d));
            seen_max = seen_max.max(d);
        }
        assert!(seen_max > 500_000_000, "jitter spreads up to the cap");
        b.reset();
        assert_eq!(b.next_delay_ns(&mut rng), 100_000_000);
    }
}
