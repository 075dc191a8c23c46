//! The publish schedule of one client: when each message is *intended* to be sent.
//!
//! Message `k` of a stream is due at `start + offset + k × interval`. The schedule never
//! waits for the broker: if a client is held up (window full, socket blocked, broker stalled),
//! the messages it owes become due all the same, and are sent, late, as soon as it can. Their
//! corrected latency is measured from the intended time, so a stall shows in the numbers
//! instead of silently lowering the offered load (coordinated omission; see wrk2).
//!
//! Offsets stagger clients across one interval so that a group does not fire in lockstep.

/// A per-client schedule. All times are ns on the engine [`Clock`](squall_proto::clock::Clock).
#[derive(Debug, Clone)]
pub struct Pacer {
    first_ns: u64,    // intended time of message 0: window start + stagger offset
    interval_ns: u64, // > 0
    until_ns: u64,    // no message is due at or after this time
    next_seq: u64,    // the next message to send
}

/// How a group's rate is stated in the scenario; both become one interval per client.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// Every client publishes once per this many ns.
    PerClientInterval { interval_ns: u64 },
    /// Messages per second summed over all `clients` of the group.
    GroupTotal { per_sec: f64, clients: u32 },
}

impl Rate {
    /// The interval of one client, in ns (at least 1).
    pub fn client_interval_ns(&self) -> u64 {
        match *self {
            Rate::PerClientInterval { interval_ns } => interval_ns.max(1),
            Rate::GroupTotal { per_sec, clients } => {
                ((clients as f64 * 1e9) / per_sec).round().max(1.0) as u64
            }
        }
    }

    /// Stagger of client `index` within one interval, in ns: clients are spread evenly so the
    /// group's messages arrive at the broker at a steady rate rather than in bursts.
    pub fn client_offset_ns(&self, index: u32, clients: u32) -> u64 {
        let interval = self.client_interval_ns();
        let clients = clients.max(1) as u128;
        ((index as u128 % clients) * interval as u128 / clients) as u64
    }
}

impl Pacer {
    /// A schedule for the publishing window `[start_ns, until_ns)`.
    pub fn new(start_ns: u64, until_ns: u64, interval_ns: u64, offset_ns: u64) -> Pacer {
        Pacer { first_ns: start_ns + offset_ns, interval_ns: interval_ns.max(1), until_ns, next_seq: 0 }
    }

    /// Resumes a stream whose next message is `next_seq` (sequence numbers never restart).
    pub fn resume_at(mut self, next_seq: u64) -> Pacer {
        self.next_seq = next_seq;
        self
    }

    fn intended(&self, seq: u64) -> u64 {
        self.first_ns.saturating_add(seq.saturating_mul(self.interval_ns))
    }

    /// When the next message is due, or `None` when the window has no more messages.
    pub fn next_due_ns(&self) -> Option<u64> {
        let t = self.intended(self.next_seq);
        (t < self.until_ns).then_some(t)
    }

    /// Takes the next message if it is due at `now_ns`: its sequence number and intended time.
    #[inline]
    pub fn take_due(&mut self, now_ns: u64) -> Option<(u64, u64)> {
        let t = self.next_due_ns()?;
        if t > now_ns {
            return None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        Some((seq, t))
    }

    /// Messages taken so far (the next sequence number).
    pub fn taken(&self) -> u64 {
        self.next_seq
    }

    /// How many messages the schedule holds in the whole window.
    pub fn scheduled(&self) -> u64 {
        self.due_before(u64::MAX)
    }

    /// How many messages the schedule holds before `t` (and inside the window): what was owed
    /// by then, for a window cut short.
    pub fn due_before(&self, t: u64) -> u64 {
        let end = t.min(self.until_ns);
        if end <= self.first_ns {
            return 0;
        }
        (end - self.first_ns).div_ceil(self.interval_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn messages_fall_due_on_schedule() {
        let mut p = Pacer::new(1_000, 1_000 + 10 * 100, 100, 0);
        assert_eq!(p.take_due(999), None);
        assert_eq!(p.take_due(1_000), Some((0, 1_000)));
        assert_eq!(p.take_due(1_050), None);
        assert_eq!(p.next_due_ns(), Some(1_100));
        // late: everything owed comes due at once
        let owed: Vec<_> = std::iter::from_fn(|| p.take_due(1_350)).collect();
        assert_eq!(owed, vec![(1, 1_100), (2, 1_200), (3, 1_300)]);
        assert_eq!(p.scheduled(), 10);
        let rest = std::iter::from_fn(|| p.take_due(u64::MAX)).count();
        assert_eq!(rest, 6);
        assert_eq!(p.next_due_ns(), None);
    }

    #[test]
    fn a_window_cut_short_owes_only_what_fell_due_before_the_cut() {
        // 10 messages at 1_000, 1_100 … 1_900
        let p = Pacer::new(1_000, 2_000, 100, 0);
        assert_eq!(p.due_before(1_000), 0);
        assert_eq!(p.due_before(1_001), 1);
        assert_eq!(p.due_before(1_350), 4);
        assert_eq!(p.due_before(u64::MAX), p.scheduled());
        assert_eq!(p.due_before(5_000), 10, "never past the window");
    }

    #[test]
    fn group_rate_divides_among_clients() {
        let r = Rate::GroupTotal { per_sec: 1000.0, clients: 100 };
        assert_eq!(r.client_interval_ns(), 100_000_000); // each client 10/s
        assert_eq!(r.client_offset_ns(0, 100), 0);
        assert_eq!(r.client_offset_ns(50, 100), 50_000_000);
        let r = Rate::PerClientInterval { interval_ns: 1_000_000_000 };
        assert_eq!(r.client_interval_ns(), 1_000_000_000);
    }

    proptest! {
        /// Whatever the rate and the stagger, a group sends exactly rate × window messages (±1
        /// per client for the partial interval at the edge).
        #[test]
        fn group_total_is_exact(clients in 1u32..200, per_sec in 1.0f64..100_000.0, window_ms in 1u64..5_000) {
            let rate = Rate::GroupTotal { per_sec, clients };
            let window_ns = window_ms * 1_000_000;
            let total: u64 = (0..clients)
                .map(|i| Pacer::new(0, window_ns, rate.client_interval_ns(), rate.client_offset_ns(i, clients)).scheduled())
                .sum();
            let interval = rate.client_interval_ns() as f64;
            let expected = clients as f64 * window_ns as f64 / interval;
            prop_assert!((total as f64 - expected).abs() <= clients as f64, "total {total} expected {expected}");
        }

        #[test]
        fn sequences_are_gapless(n in 0u64..500, interval in 1u64..1_000_000) {
            let mut p = Pacer::new(0, n * interval, interval, 0);
            let seqs: Vec<u64> = std::iter::from_fn(|| p.take_due(u64::MAX).map(|(s, _)| s)).collect();
            prop_assert_eq!(seqs, (0..n).collect::<Vec<_>>());
        }
    }
}
