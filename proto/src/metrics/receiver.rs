//! The delivery ledger: what each receiver got from each publisher stream, counted, not guessed.
//!
//! Every squall message carries (stream, sequence). A receiver — one subscribing client, or
//! one shared-subscription group, whose members share a ledger — tracks per stream the lowest
//! sequence not yet accounted for (`base`) and the few sequences received above a gap. At the
//! end of the run, when each stream's final count is known, everything not received is lost.
//!
//! Counted apart:
//! - duplicates: a sequence received twice (legitimate at QoS 1, a broker bug at QoS 2);
//! - out of order: a sequence received after a higher one of the same stream;
//! - missed offline: messages sent while a clean-session subscriber was disconnected, which no
//!   broker owes it (detected at its first message after resubscribing);
//! - phantom: sequences beyond what the publisher says it sent, or streams the receiver's
//!   filters do not match (a broker or clock-of-record bug; should be 0).
//!
//! Memory: a stream in order costs a fixed ~100 bytes; reordering costs 8 bytes per message
//! held above a gap, up to [`MAX_AHEAD`], after which the gap is declared lost (and recovered,
//! should the message still arrive while its range is remembered).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::ledger::{Delivery, LedgerTotals, StreamFinal};

/// Received sequences held above a gap before the gap is declared lost.
pub const MAX_AHEAD: usize = 4096;
const REMEMBERED_LOST_RANGES: usize = 16;

/// What one observation turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    New {
        /// It fills a gap: a later message of the stream came first.
        out_of_order: bool,
        /// Sequences it jumped over that had not arrived (each is lost, or late).
        skipped: u64,
    },
    Duplicate,
    /// A message declared lost arrived after all.
    Recovered,
}

/// Received sequences above a gap, as sorted, disjoint, non-touching ranges `[start, end)`:
/// after one lost message a stream keeps arriving in order, which is one range however many
/// messages follow (held one by one, 4,096 of them per stream came to 32 KiB: 320 MB for
/// 10,000 streams after one bout of loss, found in a 30-minute soak).
#[derive(Debug, Clone, Default)]
struct Ahead {
    r: std::collections::VecDeque<(u64, u64)>,
    /// Sequences held, all ranges together.
    n: u64,
}

/// Ranges held above a gap before the first gap is declared lost (only heavy reordering
/// makes many: each is a run of messages with a hole before it).
const MAX_RANGES: usize = 256;

impl Ahead {
    #[inline]
    fn is_empty(&self) -> bool {
        self.r.is_empty()
    }

    /// Sequences held.
    fn len(&self) -> u64 {
        self.n
    }

    fn ranges(&self) -> usize {
        self.r.len()
    }

    fn first(&self) -> Option<u64> {
        self.r.front().map(|r| r.0)
    }

    /// Adds `seq`; false if it is already held.
    fn insert(&mut self, seq: u64) -> bool {
        // in order after a gap: the last range grows (the common case)
        if let Some(last) = self.r.back_mut() {
            if seq == last.1 {
                last.1 += 1;
                self.n += 1;
                return true;
            }
            if seq > last.1 {
                self.r.push_back((seq, seq + 1));
                self.n += 1;
                return true;
            }
        }
        // the first range ending after seq
        let i = self.r.partition_point(|&(_, e)| e <= seq);
        if i < self.r.len() && self.r[i].0 <= seq {
            return false;
        }
        self.n += 1;
        let joins_prev = i > 0 && self.r[i - 1].1 == seq;
        let joins_next = i < self.r.len() && self.r[i].0 == seq + 1;
        match (joins_prev, joins_next) {
            (true, true) => {
                self.r[i - 1].1 = self.r[i].1;
                self.r.remove(i);
            }
            (true, false) => self.r[i - 1].1 += 1,
            (false, true) => self.r[i].0 -= 1,
            (false, false) => self.r.insert(i, (seq, seq + 1)),
        }
        true
    }

    /// Takes the first range if it starts at `base`: the new base.
    fn take_from(&mut self, base: u64) -> u64 {
        match self.r.front() {
            Some(&(s, e)) if s == base => {
                self.r.pop_front();
                self.n -= e - s;
                e
            }
            _ => base,
        }
    }

    /// Forgets everything below `base` (already counted).
    fn drop_below(&mut self, base: u64) {
        while let Some(&(s, e)) = self.r.front() {
            if e <= base {
                self.r.pop_front();
                self.n -= e - s;
            } else {
                if s < base {
                    self.r[0].0 = base;
                    self.n -= base - s;
                }
                break;
            }
        }
    }

    /// Sequences held at or above `at`, and below it.
    fn split_count(&self, at: u64) -> (u64, u64) {
        let above: u64 = self.r.iter().map(|&(s, e)| e.saturating_sub(s.max(at))).sum();
        (above, self.n - above)
    }
}

#[derive(Debug, Clone, Default)]
struct StreamLedger {
    base: u64,                    // every sequence below is received or declared lost
    max_next: u64,                // highest sequence seen + 1
    ahead: Ahead,                 // sorted received sequences above `base`
    offline_gap: bool,            // the next gap is the subscriber's time offline
    session_lost: bool,           // … and the broker owed it, but lost the session
    lost_ranges: Vec<(u64, u64)>, // recently declared-lost [start, end)
    qos: u8,
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    lost: u64,
    missed_offline: u64,
    lost_with_session: u64,
}

impl StreamLedger {
    fn observe(&mut self, seq: u64, max_ahead: usize) -> Seen {
        if seq < self.base {
            if let Some(i) = self.lost_ranges.iter().position(|&(s, e)| s <= seq && seq < e) {
                let (s, e) = self.lost_ranges.remove(i);
                if s < seq {
                    self.lost_ranges.push((s, seq));
                }
                if seq + 1 < e {
                    self.lost_ranges.push((seq + 1, e));
                }
                self.lost -= 1;
                self.received += 1;
                self.out_of_order += 1;
                return Seen::Recovered;
            }
            self.duplicates += 1;
            return Seen::Duplicate;
        }
        let out_of_order = seq + 1 < self.max_next;
        // what this one jumps over, unless it is the first after time offline (not owed)
        let skipped = if self.offline_gap { 0 } else { seq.saturating_sub(self.max_next) };
        if seq == self.base {
            self.offline_gap = false;
            self.base += 1;
            self.drain_consecutive();
        } else {
            if self.offline_gap {
                // everything between the last message before going offline and this one
                self.offline_gap = false;
                if self.session_lost {
                    self.lost_with_session += seq - self.base;
                } else {
                    self.missed_offline += seq - self.base;
                }
                self.base = seq + 1;
                self.drain_consecutive();
            } else {
                if !self.ahead.insert(seq) {
                    self.duplicates += 1;
                    return Seen::Duplicate;
                }
                if self.ahead.len() > max_ahead as u64 || self.ahead.ranges() > MAX_RANGES {
                    let next = self.ahead.first().expect("just inserted");
                    self.declare_lost(self.base, next);
                    self.base = next;
                    self.drain_consecutive();
                }
            }
        }
        self.received += 1;
        if out_of_order {
            self.out_of_order += 1;
        }
        self.max_next = self.max_next.max(seq + 1);
        Seen::New { out_of_order, skipped }
    }

    fn drain_consecutive(&mut self) {
        if self.ahead.is_empty() {
            return; // in order: the common case
        }
        // entries below base (after an offline jump) are already counted
        self.ahead.drop_below(self.base);
        self.base = self.ahead.take_from(self.base);
    }

    fn declare_lost(&mut self, start: u64, end: u64) {
        if end > start {
            self.lost += end - start;
            self.lost_ranges.push((start, end));
            if self.lost_ranges.len() > REMEMBERED_LOST_RANGES {
                self.lost_ranges.remove(0);
            }
        }
    }

    /// The subscriber lost its connection and its session: gaps so far are loss, and the next
    /// gap is time offline.
    fn mark_offline(&mut self, session_lost: bool) {
        self.session_lost = session_lost;
        let mut base = self.base;
        for (start, end) in std::mem::take(&mut self.ahead).r {
            self.declare_lost(base, start);
            base = end;
        }
        self.base = base;
        self.offline_gap = true;
    }

    fn finalize(&self, sent: u64) -> Delivery {
        let mut d = Delivery {
            expected: sent,
            received: self.received,
            lost: self.lost,
            duplicates: self.duplicates,
            out_of_order: self.out_of_order,
            missed_offline: self.missed_offline,
            session_lost: self.lost_with_session,
            refused: 0,
            phantom: 0,
        };
        let (above, held) = self.ahead.split_count(sent);
        let beyond = above + self.base.saturating_sub(sent).min(self.received);
        d.phantom = beyond;
        d.received -= beyond.min(d.received);
        if sent > self.base {
            d.lost += (sent - self.base) - held;
        }
        d
    }
}

/// A hasher for u32 stream ids: one multiply (the keys are dense small integers).
#[derive(Default)]
pub struct StreamHasher(u64);

impl Hasher for StreamHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | *b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// One receiver's ledger.
#[derive(Debug, Clone)]
pub struct ReceiverLedger {
    streams: HashMap<u32, StreamLedger, BuildHasherDefault<StreamHasher>>,
    max_ahead: usize,
}

impl Default for ReceiverLedger {
    fn default() -> Self {
        ReceiverLedger::with_max_ahead(MAX_AHEAD)
    }
}

impl ReceiverLedger {
    pub fn new() -> ReceiverLedger {
        ReceiverLedger::default()
    }

    /// A ledger that holds up to `max_ahead` received sequences per stream above a gap before
    /// declaring the gap lost (a receiver fed from several sources, in batches, reorders more).
    pub fn with_max_ahead(max_ahead: usize) -> ReceiverLedger {
        ReceiverLedger { streams: HashMap::default(), max_ahead: max_ahead.max(1) }
    }

    /// Records message `seq` of `stream`, delivered at `qos`.
    #[inline]
    pub fn observe(&mut self, stream: u32, seq: u64, qos: u8) -> Seen {
        let s = self.streams.entry(stream).or_default();
        s.qos = s.qos.max(qos);
        s.observe(seq, self.max_ahead)
    }

    /// Streams this ledger has seen.
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// The receiver reconnected without its session (clean start, or the broker lost it).
    /// `session_lost`: the subscriber had a persistent session, which the broker lost: the
    /// next gap was owed to it (`session_lost`), not merely missed while offline.
    pub fn mark_offline(&mut self, session_lost: bool) {
        for s in self.streams.values_mut() {
            s.mark_offline(session_lost);
        }
    }

    /// Final accounting against the streams this receiver should have received, each with
    /// the QoS it is delivered at. Messages from streams not in `expected` count as phantom.
    pub fn finalize(&self, expected: &[(&StreamFinal, u8)]) -> LedgerTotals {
        let mut totals = LedgerTotals::default();
        let mut matched = 0usize;
        for (stream, qos) in expected {
            let q = (*qos).min(2) as usize;
            match self.streams.get(&stream.stream) {
                Some(s) => {
                    matched += 1;
                    let mut d = s.finalize(stream.sent);
                    // what the broker refused, saying so, was never owed: not lost
                    let refused = stream.refused.min(d.lost);
                    d.lost -= refused;
                    d.refused += refused;
                    totals.qos[q].add(&d);
                }
                None => {
                    let refused = stream.refused.min(stream.sent);
                    totals.qos[q].expected += stream.sent;
                    totals.qos[q].lost += stream.sent - refused;
                    totals.qos[q].refused += refused;
                }
            }
        }
        if matched < self.streams.len() {
            let ids: std::collections::HashSet<u32> = expected.iter().map(|(f, _)| f.stream).collect();
            for (id, s) in &self.streams {
                if !ids.contains(id) {
                    totals.qos[s.qos.min(2) as usize].phantom += s.received;
                }
            }
        }
        totals
    }
}

/// What each receiver was owed: the streams its granted filters match, each at the QoS it is
/// delivered with (the lower of the publish QoS and the grant; the best over overlapping
/// filters). A filter walks the topic levels it names, and lookups are memoized: 100k
/// subscribers with their own wildcard filter over 100k streams cost 100k walks, not 10^10
/// comparisons, and receivers of a group usually share their filters.
pub struct Expectations<'a> {
    index: crate::topic::TopicIndex<'a, &'a StreamFinal>,
    memo: HashMap<String, Vec<&'a StreamFinal>>,
}

impl<'a> Expectations<'a> {
    pub fn new(streams: &'a [StreamFinal]) -> Expectations<'a> {
        let mut index = crate::topic::TopicIndex::new();
        for s in streams {
            index.insert(s.topic.as_str(), s);
        }
        Expectations { index, memo: HashMap::new() }
    }

    /// The streams owed to a receiver with these filters (`None`: not granted), by stream id.
    pub fn expected_for(&mut self, filters: &[(String, Option<u8>)]) -> Vec<(&'a StreamFinal, u8)> {
        let mut best: HashMap<u32, (&'a StreamFinal, u8)> = HashMap::new();
        for (f, granted) in filters {
            let Some(g) = granted else { continue };
            let index = &self.index;
            let matching =
                self.memo.entry(f.clone()).or_insert_with(|| index.matching(crate::topic::split_shared(f).1));
            for s in matching.iter() {
                let q = s.qos.min(*g);
                let e = best.entry(s.stream).or_insert((s, q));
                e.1 = e.1.max(q);
            }
        }
        let mut v: Vec<_> = best.into_values().collect();
        v.sort_by_key(|(s, _)| s.stream);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fin(stream: u32, sent: u64) -> StreamFinal {
        StreamFinal { stream, topic: "t".into(), qos: 1, sent, refused: 0 }
    }

    fn totals(l: &ReceiverLedger, streams: &[StreamFinal]) -> Delivery {
        let exp: Vec<_> = streams.iter().map(|s| (s, 1u8)).collect();
        l.finalize(&exp).qos[1]
    }

    #[test]
    fn in_order_delivery_is_exact() {
        let mut l = ReceiverLedger::new();
        for seq in 0..1000 {
            assert_eq!(l.observe(7, seq, 1), Seen::New { out_of_order: false, skipped: 0 });
        }
        let d = totals(&l, &[fin(7, 1000)]);
        assert_eq!((d.expected, d.received, d.lost, d.duplicates), (1000, 1000, 0, 0));
    }

    #[test]
    fn gaps_and_tails_are_lost() {
        let mut l = ReceiverLedger::new();
        let mut skipped = 0;
        for seq in [0, 1, 3, 4, 7] {
            if let Seen::New { skipped: n, .. } = l.observe(1, seq, 1) {
                skipped += n;
            }
        }
        // what is missing is seen as the stream goes on: 2, then 5 and 6 (the tail only at the end)
        assert_eq!(skipped, 3);
        let d = totals(&l, &[fin(1, 10), fin(2, 5)]);
        // stream 1: 2, 5, 6, 8, 9 missing; stream 2: nothing arrived
        assert_eq!((d.expected, d.received, d.lost), (15, 5, 10));
    }

    #[test]
    fn duplicates_and_reordering_are_counted_apart() {
        let mut l = ReceiverLedger::new();
        l.observe(1, 0, 1);
        l.observe(1, 2, 1);
        assert_eq!(l.observe(1, 1, 1), Seen::New { out_of_order: true, skipped: 0 });
        assert_eq!(l.observe(1, 2, 1), Seen::Duplicate);
        assert_eq!(l.observe(1, 0, 1), Seen::Duplicate);
        let d = totals(&l, &[fin(1, 3)]);
        assert_eq!((d.received, d.lost, d.duplicates, d.out_of_order), (3, 0, 2, 1));
    }

    #[test]
    fn a_long_gap_is_declared_lost_and_recovered_if_it_arrives() {
        let mut l = ReceiverLedger::new();
        for seq in 1..=(MAX_AHEAD as u64 + 1) {
            l.observe(1, seq, 1);
        }
        // seq 0 was declared lost to bound memory, then arrives late
        assert_eq!(l.observe(1, 0, 1), Seen::Recovered);
        let d = totals(&l, &[fin(1, MAX_AHEAD as u64 + 2)]);
        assert_eq!((d.received, d.lost), (MAX_AHEAD as u64 + 2, 0));
    }

    /// One lost message, then the stream goes on in order: what is held above the gap is one
    /// range, not a sequence per message (it was 8 bytes each, up to 4,096 per stream), until
    /// the gap is declared lost; heavy reordering is bounded by ranges too.
    #[test]
    fn what_waits_above_a_gap_is_held_as_ranges() {
        let mut s = StreamLedger::default();
        s.observe(0, MAX_AHEAD);
        for seq in 2..=MAX_AHEAD as u64 {
            s.observe(seq, MAX_AHEAD);
            assert_eq!(s.ahead.ranges(), 1, "at {seq}");
        }
        assert_eq!((s.ahead.len(), s.base, s.lost), (MAX_AHEAD as u64 - 1, 1, 0));
        s.observe(MAX_AHEAD as u64 + 1, MAX_AHEAD);
        s.observe(MAX_AHEAD as u64 + 2, MAX_AHEAD);
        assert_eq!((s.lost, s.base, s.ahead.len()), (1, MAX_AHEAD as u64 + 3, 0), "the gap declared lost");
        // every other message missing: a range each, at most MAX_RANGES before the first gap goes
        let mut r = StreamLedger::default();
        for k in 0..10_000u64 {
            r.observe(2 * k + 1, MAX_AHEAD);
            assert!(r.ahead.ranges() <= MAX_RANGES);
        }
        assert_eq!(r.received, 10_000);
        let d = r.finalize(20_000);
        assert_eq!((d.received, d.lost), (10_000, 10_000), "{d:?}");
    }

    #[test]
    fn time_offline_is_not_loss() {
        let mut l = ReceiverLedger::new();
        for seq in [0, 1, 3] {
            l.observe(1, seq, 1);
        }
        l.mark_offline(false);
        for seq in 10..15 {
            l.observe(1, seq, 1);
        }
        let d = totals(&l, &[fin(1, 15)]);
        // 2 was lost while online; 4..10 were sent while the subscriber was away
        assert_eq!((d.received, d.lost, d.missed_offline), (8, 1, 6));
        assert_eq!(d.session_lost, 0);

        // the same with a persistent session the broker lost: the gap was owed
        let mut l = ReceiverLedger::new();
        for seq in [0, 1, 3] {
            l.observe(1, seq, 1);
        }
        l.mark_offline(true);
        for seq in 10..15 {
            l.observe(1, seq, 1);
        }
        let d = totals(&l, &[fin(1, 15)]);
        assert_eq!((d.received, d.lost, d.missed_offline, d.session_lost), (8, 1, 0, 6));
    }

    #[test]
    fn phantom_streams_and_sequences() {
        let mut l = ReceiverLedger::new();
        l.observe(1, 0, 1);
        l.observe(1, 5, 1); // beyond what stream 1 sent
        l.observe(9, 0, 1); // a stream the filters do not match
        let d = totals(&l, &[fin(1, 1)]);
        assert_eq!((d.received, d.lost, d.phantom), (1, 0, 2));
    }

    proptest! {
        /// Any delivery — drops, duplicates, reordering — is accounted for exactly:
        /// received + lost = expected, and received is the number of distinct sequences.
        #[test]
        fn every_message_is_accounted_for(
            sent in 0u64..3000,
            drop_pct in 0u64..100,
            dup_pct in 0u64..30,
            swaps in 0usize..200,
            seed: u64,
        ) {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut delivered: Vec<u64> = (0..sent).filter(|_| rng.u64(0..100) >= drop_pct).collect();
            let distinct = delivered.len() as u64;
            let dups: Vec<u64> = delivered.iter().copied().filter(|_| rng.u64(0..100) < dup_pct).collect();
            delivered.extend(dups.iter());
            if delivered.len() > 1 {
                for _ in 0..swaps {
                    let a = rng.usize(0..delivered.len());
                    let b = (a + rng.usize(1..8)).min(delivered.len() - 1);
                    delivered.swap(a, b);
                }
            }
            let mut l = ReceiverLedger::new();
            for s in &delivered {
                l.observe(3, *s, 1);
            }
            let d = totals(&l, &[fin(3, sent)]);
            prop_assert_eq!(d.expected, sent);
            prop_assert_eq!(d.received, distinct);
            prop_assert_eq!(d.received + d.lost, sent);
            prop_assert_eq!(d.duplicates, dups.len() as u64);
            prop_assert_eq!(d.phantom, 0);
        }
    }
}
