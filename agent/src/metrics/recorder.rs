//! Where clients record: a few mutex-guarded shards, so thousands of client tasks on a few
//! worker threads rarely contend, and one collector that empties them once per interval.
//!
//! A client always records into the same shard (its index modulo the shard count) and takes
//! the lock once per batch of work (one read's worth of messages), not once per message.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard};

#[cfg(test)]
use squall_proto::metrics::Latency;
use squall_proto::metrics::{
    Counters, ErrorCount, GroupedHists, LoadError, Metric, Snapshot, Timing, WillRecord,
};

/// Will records an agent keeps over a run; past it they are counted, not kept
/// (`will_records_dropped`), so a week of storms cannot grow the agent without bound.
pub const MAX_WILL_RECORDS: u64 = 1_000_000;
/// Will records one snapshot carries (~5 MB on the wire at most); the rest wait for the next.
pub const WILLS_PER_SNAPSHOT: usize = 100_000;

/// What one shard gathered since the last collection.
#[derive(Debug, Default)]
pub struct Shard {
    hists: Option<GroupedHists>,
    pub counters: Counters,
    errors: BTreeMap<LoadError, u64>,
    /// Will records since the last collection (see `squall_proto::metrics::wills`).
    pub wills: Vec<WillRecord>,
}

impl Shard {
    /// Records a latency in ns, for scenario group `group`.
    #[inline]
    pub fn record(&mut self, group: u32, m: Metric, t: Timing, ns: u64) {
        self.hists.get_or_insert_with(GroupedHists::new).record(group, m, t, ns);
    }

    /// Records both latencies of one event: raw (from the actual send) and corrected (from the
    /// intended send).
    #[inline]
    pub fn record_both(&mut self, group: u32, m: Metric, raw_ns: u64, corrected_ns: u64) {
        let h = self.hists.get_or_insert_with(GroupedHists::new).group_mut(group);
        h.record(m, Timing::Raw, raw_ns);
        h.record(m, Timing::Corrected, corrected_ns);
    }

    pub fn error(&mut self, e: LoadError) {
        self.error_n(e, 1);
    }

    pub fn error_n(&mut self, e: LoadError, n: u64) {
        if n > 0 {
            *self.errors.entry(e).or_default() += n;
        }
    }
}

/// The engine's recorder: shared by every client of an agent.
pub struct Recorder {
    shards: Box<[Mutex<Shard>]>,
    connected: AtomicI64,
}

impl Recorder {
    pub fn new(shards: usize) -> Recorder {
        Recorder {
            shards: (0..shards.max(1)).map(|_| Mutex::new(Shard::default())).collect(),
            connected: AtomicI64::new(0),
        }
    }

    /// A shard count for this machine: two per core, so contention stays rare.
    pub fn for_this_machine() -> Recorder {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Recorder::new((cores * 2).clamp(2, 32))
    }

    /// The shard of client `key`, locked.
    #[inline]
    pub fn shard(&self, key: usize) -> MutexGuard<'_, Shard> {
        let m = &self.shards[key % self.shards.len()];
        // a client that panicked while holding the lock left counts, not broken invariants
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn connected_inc(&self) {
        self.connected.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connected_dec(&self) {
        self.connected.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn connected(&self) -> u64 {
        self.connected.load(Ordering::Relaxed).max(0) as u64
    }
}

/// Empties the recorder's shards into snapshots, reusing its buffers.
pub struct Collector {
    spare: GroupedHists,
    interval: GroupedHists,
    seq: u64,
    agent: u32,
    last_ns: u64,
    last_cpu_us: u64,
    /// Will records collected and not yet sent, and how many were kept so far.
    wills: std::collections::VecDeque<WillRecord>,
    wills_kept: u64,
}

/// This process's CPU time so far (user + system), µs.
pub fn process_cpu_us() -> u64 {
    // SAFETY: getrusage writes the struct it is given; zeroed is a valid rusage
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0;
    }
    let us = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
    us(u.ru_utime) + us(u.ru_stime)
}

impl Collector {
    pub fn new(agent: u32, start_ns: u64) -> Collector {
        Collector {
            spare: GroupedHists::new(),
            interval: GroupedHists::new(),
            seq: 0,
            agent,
            last_ns: start_ns,
            last_cpu_us: process_cpu_us(),
            wills: Default::default(),
            wills_kept: 0,
        }
    }

    /// Will records collected that did not fit the snapshots so far.
    pub fn wills_pending(&self) -> bool {
        !self.wills.is_empty()
    }

    /// Takes everything recorded since the last call as one interval snapshot ending at `now_ns`.
    pub fn collect(&mut self, rec: &Recorder, now_ns: u64) -> Snapshot {
        let mut counters = Counters::default();
        let mut errors: BTreeMap<LoadError, u64> = BTreeMap::new();
        for shard in rec.shards.iter() {
            let taken = {
                let mut s = shard.lock().unwrap_or_else(|e| e.into_inner());
                counters.add(&s.counters);
                s.counters = Counters::default();
                for (e, n) in std::mem::take(&mut s.errors) {
                    *errors.entry(e).or_default() += n;
                }
                for w in s.wills.drain(..) {
                    if self.wills_kept < MAX_WILL_RECORDS {
                        self.wills_kept += 1;
                        self.wills.push_back(w);
                    } else {
                        counters.will_records_dropped += 1;
                    }
                }
                match s.hists.as_mut() {
                    Some(h) => {
                        std::mem::swap(h, &mut self.spare);
                        true
                    }
                    None => false,
                }
            };
            if taken {
                self.interval.add(&self.spare);
                self.spare.reset();
            }
        }
        let histograms = self.interval.encode();
        self.interval.reset();
        let cpu = process_cpu_us();
        counters.agent_cpu_us = cpu.saturating_sub(self.last_cpu_us);
        self.last_cpu_us = cpu;
        let snap = Snapshot {
            agent: self.agent,
            seq: self.seq,
            start_unix_ns: self.last_ns,
            end_unix_ns: now_ns,
            counters,
            errors: errors.into_iter().map(|(error, count)| ErrorCount { error, count }).collect(),
            connected: rec.connected(),
            histograms,
            wills: self.wills.drain(..self.wills.len().min(WILLS_PER_SNAPSHOT)).collect(),
        };
        self.seq += 1;
        self.last_ns = now_ns;
        snap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collect_empties_every_shard_exactly_once() {
        let rec = Recorder::new(4);
        for client in 0..100usize {
            let mut s = rec.shard(client);
            s.counters.published_qos1 += 1;
            s.record_both((client % 2) as u32, Metric::E2e, 1_000_000, 2_000_000);
            if client % 10 == 0 {
                s.error(LoadError::ConnectRefused { code: 5 });
            }
        }
        let mut c = Collector::new(0, 0);
        let snap = c.collect(&rec, 1_000);
        assert_eq!(snap.counters.published_qos1, 100);
        assert_eq!(snap.errors, vec![ErrorCount { error: LoadError::ConnectRefused { code: 5 }, count: 10 }]);
        let e2e: Vec<_> = snap.histograms.iter().filter(|h| h.metric == Metric::E2e).collect();
        assert_eq!(e2e.len(), 4, "raw and corrected of two groups");
        for group in [0, 1] {
            let raw = e2e.iter().find(|h| h.timing == Timing::Raw && h.group == group).unwrap();
            let raw = Latency::from_v2(&raw.v2).unwrap();
            assert_eq!(raw.len(), 50, "each group its own clients' records");
            assert_eq!(raw.quantile_us(0.5), 1_000);
        }

        let next = c.collect(&rec, 2_000);
        // nothing recorded since; only the process's CPU moved on
        assert_eq!(Counters { agent_cpu_us: 0, ..next.counters }, Counters::default());
        assert!(next.histograms.is_empty());
        assert_eq!((next.seq, next.start_unix_ns, next.end_unix_ns), (1, 1_000, 2_000));
    }
}
