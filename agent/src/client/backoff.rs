//! Reconnect backoff as devices do it: a policy for how the delay grows with failures in a row
//! (none, constant, linear, exponential) and a jitter for how it is spread (none, full, equal,
//! decorrelated; AWS architecture blog, "Exponential Backoff And Jitter"), between a base (never
//! waited less) and a cap. The default, exponential with full jitter, is what a well-behaved
//! device does; the others are what real fleets do, so a broker can be tested against them.

use squall_proto::plan::{BackoffPolicy, Jitter, ReconnectSpec};

/// Backoff state of one client.
#[derive(Debug, Clone)]
pub struct Backoff {
    base_ns: u64,
    cap_ns: u64,
    policy: BackoffPolicy,
    jitter: Jitter,
    multiplier: f64,
    max_attempts: u32,
    /// Failed attempts since the last success.
    failures: u32,
    /// The previous delay (decorrelated jitter grows from it).
    prev_ns: u64,
}

impl Backoff {
    pub fn new(r: &ReconnectSpec) -> Backoff {
        let base_ns = r.min_backoff_ms.saturating_mul(1_000_000);
        Backoff {
            base_ns,
            cap_ns: r.max_backoff_ms.saturating_mul(1_000_000).max(base_ns),
            policy: r.policy,
            jitter: r.jitter,
            multiplier: r.multiplier.max(1.0),
            max_attempts: r.max_attempts,
            failures: 0,
            prev_ns: base_ns,
        }
    }

    /// The delay before the next attempt, ns; counts one more failure.
    pub fn next_delay_ns(&mut self, rng: &mut fastrand::Rng) -> u64 {
        let n = self.failures; // failures before this one: 0 for the first retry
        self.failures = self.failures.saturating_add(1);
        let (base, cap) = (self.base_ns, self.cap_ns);
        let d = match self.policy {
            BackoffPolicy::None => return 0,
            BackoffPolicy::Constant => base,
            BackoffPolicy::Linear => base.saturating_mul(n as u64 + 1),
            BackoffPolicy::Exponential => {
                let grown = base as f64 * self.multiplier.powi(n.min(1_000) as i32);
                if grown >= cap as f64 { cap } else { grown as u64 }
            }
        }
        .min(cap);
        let delay = match self.jitter {
            Jitter::None => d,
            Jitter::Full => rng.u64(base.min(d)..=d),
            Jitter::Equal => (d / 2 + rng.u64(0..=d / 2)).max(base.min(d)),
            Jitter::Decorrelated => rng.u64(base..=self.prev_ns.saturating_mul(3).max(base)).min(cap),
        };
        self.prev_ns = delay.max(base);
        delay
    }

    /// Whether the client has used up its attempts (never, with `max_attempts` 0).
    pub fn exhausted(&self) -> bool {
        self.max_attempts > 0 && self.failures >= self.max_attempts
    }

    /// A connection succeeded: start over.
    pub fn reset(&mut self) {
        self.failures = 0;
        self.prev_ns = self.base_ns;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn spec(policy: BackoffPolicy, jitter: Jitter) -> ReconnectSpec {
        ReconnectSpec {
            enabled: true,
            min_backoff_ms: 100,
            max_backoff_ms: 1_000,
            max_rate: 1e6,
            policy,
            jitter,
            multiplier: 2.0,
            max_attempts: 0,
        }
    }

    fn delays(policy: BackoffPolicy, jitter: Jitter, n: usize, seed: u64) -> Vec<u64> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut b = Backoff::new(&spec(policy, jitter));
        (0..n).map(|_| b.next_delay_ns(&mut rng)).collect()
    }

    #[test]
    fn policies_without_jitter_follow_their_shape_to_the_cap() {
        use BackoffPolicy::*;
        let ms = |v: Vec<u64>| v.into_iter().map(|d| d / MS).collect::<Vec<_>>();
        assert_eq!(ms(delays(None, Jitter::None, 4, 1)), vec![0, 0, 0, 0]);
        assert_eq!(ms(delays(Constant, Jitter::None, 4, 1)), vec![100, 100, 100, 100]);
        assert_eq!(
            ms(delays(Linear, Jitter::None, 12, 1)),
            vec![100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1000, 1000]
        );
        assert_eq!(ms(delays(Exponential, Jitter::None, 6, 1)), vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_spreads_a_fleet_within_its_bounds() {
        // the 4th retry of 1,000 clients: exponential gives 800 ms before jitter
        let fourth = |jitter| {
            (0..1000).map(|seed| delays(BackoffPolicy::Exponential, jitter, 4, seed)[3]).collect::<Vec<_>>()
        };
        for (jitter, lo, hi) in
            [(Jitter::Full, 100, 800), (Jitter::Equal, 400, 800), (Jitter::Decorrelated, 100, 1000)]
        {
            let d = fourth(jitter);
            assert!(d.iter().all(|x| (lo * MS..=hi * MS).contains(x)), "{jitter:?} out of [{lo}, {hi}] ms");
            let distinct: std::collections::HashSet<_> = d.iter().map(|x| x / MS).collect();
            assert!(
                distinct.len() > 100,
                "{jitter:?}: {} distinct delays of 1,000: lockstep",
                distinct.len()
            );
        }
        // no jitter: the whole fleet in lockstep
        assert!(fourth(Jitter::None).iter().all(|x| *x == 800 * MS));
    }

    #[test]
    fn attempts_run_out_and_success_starts_over() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut b = Backoff::new(&ReconnectSpec {
            max_attempts: 3,
            ..spec(BackoffPolicy::Exponential, Jitter::None)
        });
        for _ in 0..3 {
            assert!(!b.exhausted());
            b.next_delay_ns(&mut rng);
        }
        assert!(b.exhausted());
        b.reset();
        assert!(!b.exhausted());
        assert_eq!(b.next_delay_ns(&mut rng), 100 * MS, "from the base again");
        let never = Backoff::new(&spec(BackoffPolicy::Constant, Jitter::None));
        assert!(!never.exhausted());
    }
}
