//! Shared subscriptions whose members run on several agents, settled here (see
//! [`squall_proto::metrics::shares`]).
//!
//! Each agent holding members sends [`Receipts`]: per epoch (100 ms of the run's time base),
//! per stream, the sorted sequences its members received, and a watermark (everything it
//! received before is sent). An epoch is merged once every agent holding members has a
//! watermark past it, so the merged ledger sees each stream in order but for the agents' clock
//! offsets and the odd message read just before a watermark; its reorder window is wide for
//! that ([`MAX_AHEAD`]). Out of order is what the agents judged locally; duplicates and loss
//! are judged here, against every stream's final count.

use std::collections::{BTreeMap, HashMap};

use squall_proto::link::AgentResult;
use squall_proto::metrics::shares::EPOCH_NS;
use squall_proto::metrics::{
    Expectations, LedgerTotals, Observers, Receipts, ReceiverLedger, StreamFinal, StreamReceipts,
};

/// Reorder tolerated per stream in a merged share ledger before a gap is declared lost.
pub const MAX_AHEAD: usize = 1 << 16;
/// Sequences held for merging (256 MiB); past it the oldest epochs are merged at once (a
/// stalled agent must not make the controller grow without bound).
pub const MAX_HELD: usize = 32 << 20;
/// Distinct shares one run may settle here (a broken or hostile agent must not make more).
pub const MAX_SHARES: usize = 100_000;

/// One agent's part of a share, summed over agents: grants (best of any), members, out of order.
#[derive(Default)]
struct Parts {
    filters: Vec<(String, Option<u8>)>,
    members: u64,
    out_of_order: [u64; 3],
}

struct Share {
    group: u32,
    filters: Vec<String>,
    ledger: ReceiverLedger,
}

/// Every split share of one run.
pub struct ShareBook {
    /// Per agent: the watermark (ns), or `None` for an agent that holds no members.
    watermark: Vec<Option<u64>>,
    /// Stream ids of the run are below this.
    streams: u32,
    groups: Vec<String>,
    shares: Vec<Share>,
    index: HashMap<(u32, Vec<String>), usize>,
    /// By epoch: (share, receipts) to merge.
    pending: BTreeMap<u64, Vec<(usize, StreamReceipts)>>,
    held: usize,
    /// Epochs merged before every agent had reported past them (the buffer was full).
    pub forced: u64,
}

impl ShareBook {
    /// `holders[i]`: agent `i` runs members of a split share; `streams`: the run's publisher
    /// count; `groups`: the plan's group names.
    pub fn new(holders: &[bool], streams: u32, groups: Vec<String>) -> ShareBook {
        ShareBook {
            watermark: holders.iter().map(|h| h.then_some(0)).collect(),
            streams,
            groups,
            shares: Vec::new(),
            index: HashMap::new(),
            pending: BTreeMap::new(),
            held: 0,
            forced: 0,
        }
    }

    /// Whether any agent holds members of a split share.
    pub fn active(&self) -> bool {
        self.watermark.iter().any(Option::is_some)
    }

    fn share(&mut self, group: u32, filters: &[String]) -> Result<usize, String> {
        if let Some(i) = self.index.get(&(group, filters.to_vec())) {
            return Ok(*i);
        }
        if group as usize >= self.groups.len() {
            return Err(format!("receipts for group {group}, which the plan does not have"));
        }
        if self.shares.len() >= MAX_SHARES {
            return Err(format!("receipts for more than {MAX_SHARES} shared subscriptions"));
        }
        let i = self.shares.len();
        self.shares.push(Share {
            group,
            filters: filters.to_vec(),
            ledger: ReceiverLedger::with_max_ahead(MAX_AHEAD),
        });
        self.index.insert((group, filters.to_vec()), i);
        Ok(i)
    }

    /// Agent `agent`'s receipts. An error is a broken or hostile agent.
    pub fn receipts(&mut self, agent: usize, r: Receipts) -> Result<(), String> {
        if !matches!(self.watermark.get(agent), Some(Some(_))) {
            return Err("receipts from an agent that runs no member of a split shared subscription".into());
        }
        let share = self.share(r.group, &r.filters)?;
        for s in r.streams {
            if s.stream >= self.streams {
                return Err(format!("receipts for stream {}, which the run does not have", s.stream));
            }
            self.held += s.seqs.len();
            self.pending.entry(s.epoch).or_default().push((share, s));
        }
        if let Some(Some(w)) = self.watermark.get_mut(agent) {
            *w = (*w).max(r.through_unix_ns);
        }
        self.release();
        Ok(())
    }

    /// Agent `agent` sends no more receipts (it finished, failed or was lost).
    pub fn done(&mut self, agent: usize) {
        if let Some(Some(w)) = self.watermark.get_mut(agent) {
            *w = u64::MAX;
        }
        self.release();
    }

    fn release(&mut self) {
        let through = self.watermark.iter().flatten().copied().min().unwrap_or(u64::MAX);
        while let Some((&epoch, _)) = self.pending.first_key_value() {
            let complete = epoch.saturating_add(1).saturating_mul(EPOCH_NS) <= through;
            if !complete && self.held <= MAX_HELD {
                break;
            }
            if !complete {
                self.forced += 1;
            }
            let batch = self.pending.pop_first().map(|(_, b)| b).unwrap_or_default();
            self.merge(batch);
        }
    }

    /// One epoch of every agent: per share and stream, in sequence order.
    fn merge(&mut self, mut batch: Vec<(usize, StreamReceipts)>) {
        batch.sort_by_key(|(share, s)| (*share, s.stream));
        let mut i = 0;
        while i < batch.len() {
            let (share, stream) = (batch[i].0, batch[i].1.stream);
            let mut j = i;
            let mut seqs: Vec<(u64, u8)> = Vec::new();
            while j < batch.len() && batch[j].0 == share && batch[j].1.stream == stream {
                let s = &mut batch[j].1;
                self.held -= s.seqs.len().min(self.held);
                seqs.extend(s.seqs.drain(..).map(|q| (q, s.qos)));
                j += 1;
            }
            seqs.sort_unstable();
            let ledger = &mut self.shares[share].ledger;
            for (seq, qos) in seqs {
                ledger.observe(stream, seq, qos);
            }
            i = j;
        }
    }

    /// Settles every split share against the run's streams, with each agent's part of it
    /// (grants, members, locally judged order). One receiver per share; `None` when there is
    /// none. Warnings for what could not be counted.
    pub fn settle(
        mut self,
        streams: &[StreamFinal],
        results: &[AgentResult],
    ) -> (Option<AgentResult>, Vec<String>) {
        for w in self.watermark.iter_mut().flatten() {
            *w = u64::MAX;
        }
        self.release();
        // each agent's part: grants (best of any), members, out of order
        let mut parts: HashMap<(u32, Vec<String>), Parts> = HashMap::new();
        let mut unrecorded = 0;
        for r in results.iter().flat_map(|r| &r.shares) {
            let key = (r.group, r.filters.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>());
            let _ = self.share(key.0, &key.1);
            let e =
                parts.entry(key).or_insert_with(|| Parts { filters: r.filters.clone(), ..Parts::default() });
            for (slot, (_, g)) in e.filters.iter_mut().zip(&r.filters) {
                slot.1 = slot.1.max(*g);
            }
            e.members += r.members;
            for q in 0..3 {
                e.out_of_order[q] += r.out_of_order[q];
            }
            unrecorded += r.unrecorded;
        }
        if self.shares.is_empty() {
            return (None, Vec::new());
        }
        let mut expectations = Expectations::new(streams);
        let mut out = AgentResult::default();
        let mut by_group: BTreeMap<u32, LedgerTotals> = BTreeMap::new();
        for s in &self.shares {
            let Some(Parts { filters, members, out_of_order }) = parts.get(&(s.group, s.filters.clone()))
            else {
                // receipts from agents that never finished: what they received is in the
                // snapshots, but nothing says what they were granted
                continue;
            };
            if filters.iter().all(|(_, g)| g.is_none()) {
                out.receivers_never_subscribed += members;
                continue;
            }
            let mut t = s.ledger.finalize(&expectations.expected_for(filters));
            for (d, n) in t.qos.iter_mut().zip(out_of_order) {
                d.out_of_order = *n;
            }
            out.ledger.add(&t);
            by_group.entry(s.group).or_default().add(&t);
            out.receivers += 1;
            out.observers.push(Observers {
                filters: filters.iter().filter(|(_, g)| g.is_some()).map(|(f, _)| f.clone()).collect(),
                count: 1,
            });
        }
        out.ledger_by_group = by_group
            .into_iter()
            .map(|(g, t)| (self.groups.get(g as usize).cloned().unwrap_or_default(), t))
            .collect();
        let mut warnings = Vec::new();
        if unrecorded > 0 {
            warnings.push(format!(
                "{unrecorded} messages to shared subscriptions split over agents were received but not recorded \
                 (an agent's receipt buffer was full): the ledger counts them lost"
            ));
        }
        if self.forced > 0 {
            warnings.push(format!(
                "{} receipt epochs of split shared subscriptions were merged before every agent reported them \
                 (the controller's buffer was full): late messages may read as duplicates",
                self.forced
            ));
        }
        (Some(out), warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use squall_proto::metrics::ShareResult;

    const F: &str = "$share/w/t/+";

    fn fin(stream: u32, sent: u64) -> StreamFinal {
        StreamFinal { stream, topic: format!("t/{stream}"), qos: 1, sent, refused: 0 }
    }

    fn receipts(epoch: u64, stream: u32, seqs: &[u64], through: u64) -> Receipts {
        Receipts {
            group: 1,
            filters: vec![F.into()],
            through_unix_ns: through,
            streams: vec![StreamReceipts { epoch, stream, qos: 1, seqs: seqs.to_vec() }],
        }
    }

    fn part(members: u64, out_of_order: u64) -> AgentResult {
        AgentResult {
            shares: vec![ShareResult {
                group: 1,
                filters: vec![(F.into(), Some(1))],
                members,
                out_of_order: [0, out_of_order, 0],
                unrecorded: 0,
            }],
            ..Default::default()
        }
    }

    fn book() -> ShareBook {
        ShareBook::new(&[true, true, false], 2, vec!["pub".into(), "workers".into()])
    }

    #[test]
    fn two_agents_interleaved_settle_as_one_receiver() {
        let mut b = book();
        // the broker alternates: even sequences to agent 0, odd to agent 1, over 3 epochs
        for e in 0..3u64 {
            let evens: Vec<u64> = (e * 100..e * 100 + 100).filter(|s| s % 2 == 0).collect();
            let odds: Vec<u64> = (e * 100..e * 100 + 100).filter(|s| s % 2 == 1).collect();
            b.receipts(0, receipts(e, 0, &evens, (e + 1) * EPOCH_NS)).unwrap();
            b.receipts(1, receipts(e, 0, &odds, (e + 1) * EPOCH_NS)).unwrap();
        }
        let (r, warnings) = b.settle(&[fin(0, 300), fin(1, 0)], &[part(2, 0), part(3, 1)]);
        let r = r.unwrap();
        let d = r.ledger.qos[1];
        assert_eq!((d.expected, d.received, d.lost, d.duplicates, d.out_of_order), (300, 300, 0, 0, 1));
        assert_eq!((r.receivers, r.ledger_by_group[0].0.as_str()), (1, "workers"));
        assert_eq!(r.observers, vec![Observers { filters: vec![F.into()], count: 1 }]);
        assert!(warnings.is_empty());
    }

    #[test]
    fn an_epoch_waits_for_every_holder_then_loss_and_cross_agent_duplicates_count() {
        let mut b = book();
        // agent 0 reports epochs 0 and 1; agent 1 lags behind with epoch 0 only later
        b.receipts(0, receipts(0, 0, &[0, 2, 4], EPOCH_NS)).unwrap();
        b.receipts(0, receipts(1, 0, &[6, 8], 2 * EPOCH_NS)).unwrap();
        assert_eq!(b.held, 5, "nothing merged before agent 1 reports past epoch 0");
        // agent 1: 1, 3 and 4 (4 went to both members: a duplicate across agents); 5 and 7 lost
        b.receipts(1, receipts(0, 0, &[1, 3, 4], EPOCH_NS)).unwrap();
        assert_eq!(b.held, 2, "epoch 0 merged, epoch 1 still waits");
        b.done(1);
        assert_eq!(b.held, 0);
        let (r, _) = b.settle(&[fin(0, 9), fin(1, 0)], &[part(1, 0), part(1, 0)]);
        let d = r.unwrap().ledger.qos[1];
        assert_eq!((d.expected, d.received, d.lost, d.duplicates, d.phantom), (9, 7, 2, 1, 0));
    }

    #[test]
    fn phantom_sequences_and_foreign_streams_are_refused_or_counted() {
        let mut b = book();
        b.receipts(0, receipts(0, 0, &[0, 1, 7], u64::MAX)).unwrap();
        assert!(b.receipts(0, receipts(0, 9, &[0], 0)).unwrap_err().contains("stream 9"));
        assert!(b.receipts(2, receipts(0, 0, &[0], 0)).is_err(), "agent 2 holds no member");
        let (r, _) = b.settle(&[fin(0, 2), fin(1, 0)], &[part(1, 0)]);
        let d = r.unwrap().ledger.qos[1];
        assert_eq!((d.received, d.lost, d.phantom), (2, 0, 1));
    }

    #[test]
    fn a_share_no_member_got_a_grant_for_is_not_a_receiver() {
        let mut b = book();
        b.done(0);
        let mut p = part(4, 0);
        p.shares[0].filters[0].1 = None;
        let (r, _) = b.settle(&[fin(0, 5)], &[p]);
        let r = r.unwrap();
        assert_eq!((r.receivers, r.receivers_never_subscribed, r.ledger.all().expected), (0, 4, 0));
    }
}
