//! The agent's side of a shared subscription split over agents: what its members received,
//! held by epoch until the next snapshot sends it to the controller as [`Receipts`] (see
//! [`squall_proto::metrics::shares`]).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use squall_proto::metrics::receiver::StreamHasher;
use squall_proto::metrics::shares::{EPOCH_NS, RECEIPTS_PER_EVENT};
use squall_proto::metrics::{Receipts, ShareResult, StreamReceipts};

/// Sequences held between two snapshots before further ones are only counted (64 MiB): at
/// one snapshot a second, 8 M messages a second to one share on one agent, far above what
/// an agent receives.
pub const MAX_HELD: usize = 8 << 20;

#[derive(Debug, Default)]
struct StreamState {
    /// Highest sequence received on this agent + 1.
    max_next: u64,
    qos: u8,
    /// Received in the current epoch.
    seqs: Vec<u64>,
}

/// One shared subscription's receipts on this agent.
#[derive(Debug)]
pub struct ShareReceipts {
    group: u32,
    filters: Vec<String>,
    epoch: u64,
    streams: HashMap<u32, StreamState, BuildHasherDefault<StreamHasher>>,
    sealed: Vec<StreamReceipts>,
    held: usize,
    out_of_order: [u64; 3],
    unrecorded: u64,
}

impl ShareReceipts {
    pub fn new(group: u32, filters: Vec<String>) -> ShareReceipts {
        ShareReceipts {
            group,
            filters,
            epoch: 0,
            streams: HashMap::default(),
            sealed: Vec::new(),
            held: 0,
            out_of_order: [0; 3],
            unrecorded: 0,
        }
    }

    /// Message `seq` of `stream`, delivered at `qos`, read at `now_ns`. True when it came after
    /// a higher sequence of the same stream on this agent.
    #[inline]
    pub fn observe(&mut self, stream: u32, seq: u64, qos: u8, now_ns: u64) -> bool {
        let epoch = now_ns / EPOCH_NS;
        if epoch > self.epoch {
            self.seal();
            self.epoch = epoch;
        }
        let s = self.streams.entry(stream).or_default();
        let late = seq + 1 < s.max_next;
        s.max_next = s.max_next.max(seq.saturating_add(1));
        s.qos = s.qos.max(qos);
        if late {
            self.out_of_order[qos.min(2) as usize] += 1;
        }
        if self.held < MAX_HELD {
            s.seqs.push(seq);
            self.held += 1;
        } else {
            self.unrecorded += 1;
        }
        late
    }

    /// Moves the current epoch's sequences to the sealed list.
    fn seal(&mut self) {
        for (stream, s) in &mut self.streams {
            if !s.seqs.is_empty() {
                let mut seqs = std::mem::take(&mut s.seqs);
                seqs.sort_unstable();
                self.sealed.push(StreamReceipts { epoch: self.epoch, stream: *stream, qos: s.qos, seqs });
            }
        }
    }

    /// Everything held, as events of at most [`RECEIPTS_PER_EVENT`] sequences; at least one
    /// event, the last saying that everything received before `through_unix_ns` was sent.
    pub fn drain(&mut self, through_unix_ns: u64) -> Vec<Receipts> {
        self.seal();
        self.held = 0;
        let mut out = Vec::new();
        let mut cur = self.empty_event();
        let mut n = 0;
        for mut r in std::mem::take(&mut self.sealed) {
            while !r.seqs.is_empty() {
                if n == RECEIPTS_PER_EVENT {
                    out.push(std::mem::replace(&mut cur, self.empty_event()));
                    n = 0;
                }
                let take = (RECEIPTS_PER_EVENT - n).min(r.seqs.len());
                let rest = r.seqs.split_off(take);
                n += take;
                cur.streams.push(StreamReceipts { seqs: std::mem::replace(&mut r.seqs, rest), ..r.clone() });
            }
        }
        cur.through_unix_ns = through_unix_ns;
        out.push(cur);
        out
    }

    fn empty_event(&self) -> Receipts {
        // a chunk before the last says nothing about time: 0 advances no watermark
        Receipts { group: self.group, filters: self.filters.clone(), through_unix_ns: 0, streams: Vec::new() }
    }

    /// This agent's part, once the run is over.
    pub fn result(&self, filters: Vec<(String, Option<u8>)>, members: u64) -> ShareResult {
        ShareResult {
            group: self.group,
            filters,
            members,
            out_of_order: self.out_of_order,
            unrecorded: self.unrecorded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_are_sorted_per_epoch_and_chunked_with_the_watermark_last() {
        let mut r = ShareReceipts::new(1, vec!["$share/w/t/+".into()]);
        let t0 = 50 * EPOCH_NS;
        for seq in [2, 0, 1] {
            r.observe(7, seq, 1, t0);
        }
        // next epoch: stream 7 again (a duplicate) and stream 8
        assert!(r.observe(7, 1, 1, t0 + EPOCH_NS), "1 after 2 on this agent");
        r.observe(8, 0, 0, t0 + EPOCH_NS + 5);
        let ev = r.drain(t0 + EPOCH_NS + 10);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].through_unix_ns, t0 + EPOCH_NS + 10);
        let mut got: Vec<_> =
            ev[0].streams.iter().map(|s| (s.epoch, s.stream, s.qos, s.seqs.clone())).collect();
        got.sort();
        assert_eq!(got, vec![(50, 7, 1, vec![0, 1, 2]), (51, 7, 1, vec![1]), (51, 8, 0, vec![0])]);
        // out of order: 0 after 2 and 1 after 2 in epoch 50 (2, 0, 1), and 1 again in epoch 51
        assert_eq!(r.result(vec![], 2).out_of_order, [0, 3, 0]);
        // drained: the next drain carries only the watermark
        let ev = r.drain(t0 + 3 * EPOCH_NS);
        assert_eq!((ev.len(), ev[0].len(), ev[0].through_unix_ns), (1, 0, t0 + 3 * EPOCH_NS));
    }

    #[test]
    fn a_large_drain_is_cut_into_bounded_events_that_keep_every_sequence() {
        let mut r = ShareReceipts::new(0, vec![]);
        let n = RECEIPTS_PER_EVENT as u64 * 2 + 17;
        for seq in 0..n {
            r.observe((seq % 3) as u32, seq, 1, EPOCH_NS * (seq / 50_000));
        }
        let ev = r.drain(u64::MAX);
        assert_eq!(ev.len(), 3);
        assert!(ev.iter().all(|e| e.len() <= RECEIPTS_PER_EVENT));
        assert!(ev[..2].iter().all(|e| e.through_unix_ns == 0), "only the last one advances the watermark");
        let mut all: Vec<u64> =
            ev.iter().flat_map(|e| e.streams.iter().flat_map(|s| s.seqs.clone())).collect();
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<_>>());
    }
}
