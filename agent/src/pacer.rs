//! The publish schedule of one client: when each message is *intended* to be sent.
//!
//! Message `k` of a stream is due at `start + offset + k × interval`. The schedule never
//! waits for the broker: if a client is held up (window full, socket blocked, broker stalled),
//! the messages it owes become due all the same, and are sent, late, as soon as it can. Their
//! corrected latency is measured from the intended time, so a stall shows in the numbers
//! instead of silently lowering the offered load (coordinated omission; see wrk2).
//!
//! Offsets stagger clients across one interval so that a group does not fire in lockstep.

/// A per-client schedule: one or more segments of steady rate (the stages of a staged run;
/// one for the whole window otherwise), with one sequence of messages across them. All times
/// are ns on the engine [`Clock`](squall_proto::clock::Clock).
#[derive(Debug, Clone)]
pub struct Pacer {
    /// In time order, not overlapping; those before `seg` are spent.
    segments: Vec<Segment>,
    seg: usize,
    /// Index of the next message within segment `seg`.
    k: u64,
    next_seq: u64, // the next message to send, counted across segments
    until_ns: u64, // no message is due at or after this time (the window's end)
}

/// Messages at `first_ns + k × interval_ns` before `until_ns`.
#[derive(Debug, Clone, Copy)]
struct Segment {
    first_ns: u64,
    interval_ns: u64, // > 0
    until_ns: u64,
}

impl Segment {
    fn intended(&self, k: u64) -> u64 {
        self.first_ns.saturating_add(k.saturating_mul(self.interval_ns))
    }

    /// Messages of this segment before `t`.
    fn before(&self, t: u64) -> u64 {
        let end = t.min(self.until_ns);
        if end <= self.first_ns { 0 } else { (end - self.first_ns).div_ceil(self.interval_ns) }
    }
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

    /// The same rate times `scale` (a stage's share of the scenario's rate; > 0).
    pub fn scaled(&self, scale: f64) -> Rate {
        match *self {
            Rate::PerClientInterval { interval_ns } => {
                Rate::PerClientInterval { interval_ns: ((interval_ns as f64 / scale).round() as u64).max(1) }
            }
            Rate::GroupTotal { per_sec, clients } => Rate::GroupTotal { per_sec: per_sec * scale, clients },
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
    /// A schedule for the publishing window `[start_ns, until_ns)` at one rate.
    pub fn new(start_ns: u64, until_ns: u64, interval_ns: u64, offset_ns: u64) -> Pacer {
        let mut p = Pacer::staged(until_ns);
        p.push(start_ns.saturating_add(offset_ns), interval_ns, until_ns);
        p
    }

    /// A schedule for the window ending at `until_ns` with nothing in it yet: stages come with
    /// [`push`](Self::push) as they become known.
    pub fn staged(until_ns: u64) -> Pacer {
        Pacer { segments: Vec::new(), seg: 0, k: 0, next_seq: 0, until_ns }
    }

    /// Adds a stage: messages at `first_ns + k × interval_ns` before `until_ns` (and before the
    /// window's end). It must not start before the stages already known end; one that does is
    /// cut to start after them (a schedule never runs two rates at once).
    pub fn push(&mut self, first_ns: u64, interval_ns: u64, until_ns: u64) {
        let interval_ns = interval_ns.max(1);
        let mut first_ns = first_ns;
        if let Some(last) = self.segments.last() {
            let after = last.until_ns.min(self.until_ns);
            if first_ns < after {
                // the first message at or after the previous stage's end, on this stage's grid
                first_ns = first_ns.saturating_add((after - first_ns).div_ceil(interval_ns) * interval_ns);
            }
        }
        self.segments.push(Segment { first_ns, interval_ns, until_ns });
        self.settle();
    }

    /// Ends the window at `until_ns` if that is sooner (a run cut short).
    pub fn cut(&mut self, until_ns: u64) {
        self.until_ns = self.until_ns.min(until_ns);
    }

    /// Steps past spent segments, so `seg` holds the next message if any stage does.
    fn settle(&mut self) {
        while let Some(s) = self.segments.get(self.seg) {
            if s.intended(self.k) < s.until_ns {
                break;
            }
            if self.seg + 1 == self.segments.len() {
                break;
            }
            self.seg += 1;
            self.k = 0;
        }
    }

    /// When the next message is due, or `None` when the schedule (as known) has no more.
    pub fn next_due_ns(&self) -> Option<u64> {
        let s = self.segments.get(self.seg)?;
        let t = s.intended(self.k);
        (t < s.until_ns && t < self.until_ns).then_some(t)
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
        self.k += 1;
        if self.segments[self.seg].intended(self.k) >= self.segments[self.seg].until_ns {
            self.settle();
        }
        Some((seq, t))
    }

    /// Messages taken so far (the next sequence number).
    pub fn taken(&self) -> u64 {
        self.next_seq
    }

    /// How many messages the schedule (as known) holds in the whole window.
    pub fn scheduled(&self) -> u64 {
        self.due_before(u64::MAX)
    }

    /// How many messages the schedule holds before `t` (and inside the window): what was owed
    /// by then, for a window cut short.
    pub fn due_before(&self, t: u64) -> u64 {
        let t = t.min(self.until_ns);
        self.segments.iter().map(|s| s.before(t)).sum()
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
    fn a_staged_schedule_waits_for_its_stages_and_a_cut_ends_it() {
        let mut p = Pacer::staged(10_000);
        assert_eq!(p.next_due_ns(), None, "nothing before a stage is known");
        p.push(1_000, 500, 2_000);
        assert_eq!(p.take_due(1_000), Some((0, 1_000)));
        assert_eq!(p.take_due(1_600), Some((1, 1_500)));
        assert_eq!(p.next_due_ns(), None, "the stage is spent; the next is not known yet");
        // a stage pushed while its start has passed: owed from its start, at its own rate
        p.push(3_000, 100, 4_000);
        assert_eq!(p.take_due(3_250), Some((2, 3_000)));
        assert_eq!(p.take_due(3_250), Some((3, 3_100)));
        assert_eq!(p.take_due(3_250), Some((4, 3_200)));
        assert_eq!(p.take_due(3_250), None);
        // a stage said to start inside the last one starts after it, on its own grid
        p.push(3_950, 30, 5_000);
        assert_eq!(p.due_before(u64::MAX), 2 + 10 + (5_000u64 - 4_010).div_ceil(30));
        p.cut(3_500);
        assert_eq!(p.due_before(u64::MAX), 2 + 5);
        let rest: Vec<u64> = std::iter::from_fn(|| p.take_due(u64::MAX)).map(|m| m.1).collect();
        assert_eq!(rest, vec![3_300, 3_400], "nothing at or after the cut");
    }

    #[test]
    fn a_scaled_rate_divides_the_interval() {
        let r = Rate::PerClientInterval { interval_ns: 1_000_000 };
        assert_eq!(r.scaled(2.0).client_interval_ns(), 500_000);
        assert_eq!(r.scaled(0.5).client_interval_ns(), 2_000_000);
        let g = Rate::GroupTotal { per_sec: 1000.0, clients: 100 };
        assert_eq!(g.scaled(1.5).client_interval_ns(), 66_666_667);
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

        /// Stages at different rates make one gapless sequence; each message falls inside its
        /// stage at that stage's interval, and `due_before` counts exactly the messages before
        /// any instant.
        #[test]
        fn stages_make_one_sequence_at_each_stages_rate(
            stages in proptest::collection::vec((1u64..50_000, 1u64..2_000_000, 0u64..30_000), 1..6),
            probe in 0u64..10_000_000,
        ) {
            // (interval, length, gap before) → back to back segments, with pauses
            let mut p = Pacer::staged(u64::MAX);
            let mut at = 1_000u64;
            let mut bounds = Vec::new();
            for &(interval, len, gap) in &stages {
                let first = at + gap;
                p.push(first, interval, first + len);
                bounds.push((first, first + len, interval));
                at = first + len;
            }
            let all: Vec<(u64, u64)> = std::iter::from_fn(|| p.take_due(u64::MAX)).collect();
            let seqs: Vec<u64> = all.iter().map(|m| m.0).collect();
            prop_assert_eq!(seqs, (0..all.len() as u64).collect::<Vec<_>>());
            let mut expected = Vec::new();
            for &(first, until, interval) in &bounds {
                let mut t = first;
                while t < until {
                    expected.push(t);
                    t += interval;
                }
            }
            let times: Vec<u64> = all.iter().map(|m| m.1).collect();
            prop_assert_eq!(&times, &expected);
            prop_assert_eq!(p.scheduled(), expected.len() as u64);
            let before = expected.iter().filter(|&&t| t < probe).count() as u64;
            prop_assert_eq!(p.due_before(probe), before);
        }

        #[test]
        fn sequences_are_gapless(n in 0u64..500, interval in 1u64..1_000_000) {
            let mut p = Pacer::new(0, n * interval, interval, 0);
            let seqs: Vec<u64> = std::iter::from_fn(|| p.take_due(u64::MAX).map(|(s, _)| s)).collect();
            prop_assert_eq!(seqs, (0..n).collect::<Vec<_>>());
        }
    }
}
