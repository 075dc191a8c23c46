//! Merging agents' snapshots: totals for the report, a per-interval timeline, and the window
//! the live line shows. Histograms are merged exactly (HdrHistogram `add`), never averaged.

use std::collections::{BTreeMap, HashMap};

use squall_proto::metrics::{
    Counters, GroupedHists, Hists, Latency, LoadError, Metric, Observers, Snapshot, Timing, WillLedger,
    WillRecord,
};

use crate::report::{AgentReport, AgentStatus};

/// One row of the timeline: one snapshot interval (or, in a long run, several merged), all
/// agents.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct IntervalRow {
    /// End of the interval, seconds since the run started.
    pub t_s: f64,
    /// How many snapshot intervals the row covers: 1, until a long run's timeline reaches
    /// [`MAX_ROWS`] and neighbours merge (counts add up; latencies are the worst of the two).
    #[serde(default = "one")]
    pub intervals: u32,
    pub connected: u64,
    pub published: u64,
    pub received: u64,
    pub connects: u64,
    /// Clients connected again after losing an established connection.
    #[serde(default)]
    pub reconnects: u64,
    pub errors: u64,
    /// The same errors by kind (`tcp_refused`, `ack_timeout` … as in the report's `errors`,
    /// reason codes summed): at most one entry per kind, absent in a row without errors.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Corrected end-to-end latency in this interval, µs (absent without messages).
    pub e2e_p50_us: Option<u64>,
    pub e2e_p99_us: Option<u64>,
    pub e2e_max_us: Option<u64>,
}

fn one() -> u32 {
    1
}

/// The most rows a timeline holds: past it, neighbouring rows merge, so the report of a soak
/// stays the same size however long it runs (a day of 1 s snapshots: 2,048 rows of 64 s or less).
pub const MAX_ROWS: usize = 2048;

impl IntervalRow {
    /// Every kind of error the rows have, in name order (the CSV's and the HTML's series).
    pub fn error_kinds(rows: &[IntervalRow]) -> std::collections::BTreeSet<&str> {
        rows.iter().flat_map(|row| row.errors_by_kind.keys().map(String::as_str)).collect()
    }

    /// `self` followed by `next`, as one row.
    fn merge(&self, next: &IntervalRow) -> IntervalRow {
        let worst = |a: Option<u64>, b: Option<u64>| a.max(b);
        IntervalRow {
            t_s: next.t_s,
            intervals: self.intervals + next.intervals,
            connected: next.connected,
            published: self.published + next.published,
            received: self.received + next.received,
            connects: self.connects + next.connects,
            reconnects: self.reconnects + next.reconnects,
            errors: self.errors + next.errors,
            errors_by_kind: {
                let mut k = self.errors_by_kind.clone();
                for (name, n) in &next.errors_by_kind {
                    *k.entry(name.clone()).or_default() += n;
                }
                k
            },
            e2e_p50_us: worst(self.e2e_p50_us, next.e2e_p50_us),
            e2e_p99_us: worst(self.e2e_p99_us, next.e2e_p99_us),
            e2e_max_us: worst(self.e2e_max_us, next.e2e_max_us),
        }
    }
}

struct PendingRow {
    row: IntervalRow,
    e2e: Latency,
}

/// What the live line shows: the window since it last printed.
#[derive(Debug, Clone, Default)]
pub struct LiveView {
    pub elapsed_s: f64,
    pub window_s: f64,
    pub connected: u64,
    pub clients: u64,
    pub published: u64,
    pub received: u64,
    pub errors: u64,
    pub e2e_p50_us: Option<u64>,
    pub e2e_p99_us: Option<u64>,
    /// Agents whose figures look suspect in this window, with why (filled by the caller).
    pub suspect: Vec<String>,
    /// The stage or search step under way, e.g. "stage 2 200%" (filled by the caller).
    pub stage: Option<String>,
}

/// One agent over the live window: its busiest interval's CPU (cores) and its timer lag.
#[derive(Debug, Clone)]
pub struct LiveHealth {
    pub agent: u32,
    pub cpu_peak_cores: f64,
    pub lag_p99_us: Option<u64>,
}

pub struct Aggregate {
    start_ns: u64,
    pub counters: Counters,
    pub errors: BTreeMap<LoadError, u64>,
    /// The run's latencies, all groups together.
    pub hists: Hists,
    /// The same by scenario group (its position); e2e by the publishing group.
    pub by_group: GroupedHists,
    /// Groups in the scenario: a histogram labelled past them is a rogue agent's.
    groups: u32,
    group_names: Vec<String>,
    pub timeline: Vec<IntervalRow>,
    pending: BTreeMap<u64, PendingRow>,
    connected: HashMap<u32, u64>,
    next_seq: HashMap<u32, u64>,
    /// Snapshots that never arrived (gaps in an agent's sequence).
    pub missing_snapshots: u64,
    /// Per agent (by index): its own counters and error count.
    per_agent: BTreeMap<u32, (Counters, u64)>,
    /// Per agent: the most CPU it used in one interval, in cores (CPU seconds per second).
    cpu_peak: HashMap<u32, f64>,
    /// Per agent: its timer lag (how late its sends went out against their schedule).
    lag: HashMap<u32, Latency>,
    /// Per agent, over the live window: its busiest interval's CPU, and its lag.
    live_health: HashMap<u32, (f64, Latency)>,
    live_counters: Counters,
    live_errors: u64,
    live_e2e: Latency,
    live_since_ns: u64,
    /// Will records from every agent, in arrival order (each agent's in its own order).
    wills: Vec<WillRecord>,
    /// Will records past [`MAX_WILL_RECORDS`], not kept.
    wills_dropped: u64,
}

/// Will records the controller keeps over a run (four agents' worth of their own bound).
pub const MAX_WILL_RECORDS: usize = 4_000_000;

/// The most groups an aggregate keeps apart, unless told the scenario's count.
const MAX_GROUPS: u32 = 1024;

/// Rows wait this many intervals for slower agents before they are final.
const ROW_LAG: u64 = 3;

impl Aggregate {
    /// Names the scenario's groups, in order (snapshots naming others are refused).
    pub fn with_groups(mut self, names: Vec<String>) -> Aggregate {
        self.groups = names.len().min(MAX_GROUPS as usize) as u32;
        self.group_names = names;
        self
    }

    /// Settles the will ledger against the receivers that were owed wills, and records each
    /// will's latency (from when the broker was due) under the group of the client it was for.
    pub fn settle_wills(&mut self, observers: &[Observers]) -> WillLedger {
        let (hists, by_group) = (&mut self.hists, &mut self.by_group);
        let mut l = squall_proto::metrics::wills::settle(&self.wills, observers, |group, ns| {
            hists.record(Metric::Will, Timing::Raw, ns);
            by_group.record(group, Metric::Will, Timing::Raw, ns);
        });
        l.unsettled = self.wills_dropped + self.counters.will_records_dropped;
        l
    }

    /// When the run started (the timeline's 0), ns since the Unix epoch.
    pub fn start_ns(&self) -> u64 {
        self.start_ns
    }

    /// The histograms of the group called `name`, if it recorded anything.
    pub fn group_hists(&self, name: &str) -> Option<&Hists> {
        let index = self.group_names.iter().position(|g| g == name)?;
        self.by_group.group(index as u32)
    }

    pub fn new(start_ns: u64) -> Aggregate {
        Aggregate {
            start_ns,
            counters: Counters::default(),
            errors: BTreeMap::new(),
            hists: Hists::new(),
            by_group: GroupedHists::new(),
            groups: MAX_GROUPS,
            group_names: Vec::new(),
            timeline: Vec::new(),
            pending: BTreeMap::new(),
            connected: HashMap::new(),
            next_seq: HashMap::new(),
            missing_snapshots: 0,
            per_agent: BTreeMap::new(),
            cpu_peak: HashMap::new(),
            lag: HashMap::new(),
            live_health: HashMap::new(),
            live_counters: Counters::default(),
            live_errors: 0,
            live_e2e: Latency::new(),
            live_since_ns: start_ns,
            wills: Vec::new(),
            wills_dropped: 0,
        }
    }

    /// Adds one snapshot. Fails only on histogram bytes that do not decode (a broken agent).
    pub fn apply(&mut self, s: &Snapshot) -> Result<(), String> {
        let expected = self.next_seq.entry(s.agent).or_insert(0);
        if s.seq > *expected {
            self.missing_snapshots += s.seq - *expected;
        }
        *expected = s.seq + 1;
        self.connected.insert(s.agent, s.connected);
        self.counters.add(&s.counters);
        self.live_counters.add(&s.counters);
        let mut n_errors = 0;
        for e in &s.errors {
            *self.errors.entry(e.error).or_default() += e.count;
            n_errors += e.count;
        }
        self.live_errors += n_errors;
        let mine = self.per_agent.entry(s.agent).or_default();
        mine.0.add(&s.counters);
        mine.1 += n_errors;
        let span_s = s.end_unix_ns.saturating_sub(s.start_unix_ns) as f64 / 1e9;
        // intervals shorter than a tenth of a second (the last, cut short) say little about load
        if span_s >= 0.1 {
            let cores = s.counters.agent_cpu_us as f64 / 1e6 / span_s;
            let peak = self.cpu_peak.entry(s.agent).or_insert(0.0);
            *peak = peak.max(cores);
            let live = self.live_health.entry(s.agent).or_insert_with(|| (0.0, Latency::new()));
            live.0 = live.0.max(cores);
        }
        let pending = self.pending.entry(s.seq).or_insert_with(|| PendingRow {
            row: IntervalRow { intervals: 1, ..Default::default() },
            e2e: Latency::new(),
        });
        pending.row.t_s = pending.row.t_s.max(s.end_unix_ns.saturating_sub(self.start_ns) as f64 / 1e9);
        pending.row.connected += s.connected;
        pending.row.published += s.counters.published();
        pending.row.received += s.counters.received();
        pending.row.connects += s.counters.connects;
        pending.row.reconnects += s.counters.reconnects;
        pending.row.errors += n_errors;
        for e in s.errors.iter().filter(|e| e.count > 0) {
            *pending.row.errors_by_kind.entry(e.error.name().to_string()).or_default() += e.count;
        }
        if let Some(h) = s.histograms.iter().find(|h| h.group >= self.groups) {
            return Err(format!("a histogram of group {}, which the scenario does not have", h.group));
        }
        if let Some(w) = s.wills.iter().find(|w| w.group >= self.groups) {
            return Err(format!("a will record of group {}, which the scenario does not have", w.group));
        }
        let room = MAX_WILL_RECORDS.saturating_sub(self.wills.len());
        self.wills.extend(s.wills.iter().take(room).cloned());
        self.wills_dropped += s.wills.len().saturating_sub(room) as u64;
        for h in &s.histograms {
            let mut l = Latency::from_v2(&h.v2)?;
            l.clamped = h.clamped;
            self.hists.get_mut(h.metric, h.timing).add(&l);
            self.by_group.group_mut(h.group).get_mut(h.metric, h.timing).add(&l);
            if h.metric == Metric::Lag {
                self.lag.entry(s.agent).or_insert_with(Latency::new).add(&l);
                self.live_health.entry(s.agent).or_insert_with(|| (0.0, Latency::new())).1.add(&l);
            }
            if h.metric == Metric::E2e && h.timing == Timing::Corrected {
                pending.e2e.add(&l);
                self.live_e2e.add(&l);
            }
        }
        let newest = *self.pending.keys().next_back().unwrap_or(&0);
        while let Some((&seq, _)) = self.pending.first_key_value() {
            if seq + ROW_LAG > newest {
                break;
            }
            self.settle_first();
        }
        Ok(())
    }

    fn settle_first(&mut self) {
        if let Some((_, mut p)) = self.pending.pop_first() {
            if !p.e2e.is_empty() {
                p.row.e2e_p50_us = Some(p.e2e.quantile_us(0.5));
                p.row.e2e_p99_us = Some(p.e2e.quantile_us(0.99));
                p.row.e2e_max_us = Some(p.e2e.summary().max_us);
            }
            self.timeline.push(p.row);
            if self.timeline.len() >= MAX_ROWS {
                // halve the resolution: rows 0+1, 2+3, … (an odd last row stays as it is)
                self.timeline = self
                    .timeline
                    .chunks(2)
                    .map(|c| if let [a, b] = c { a.merge(b) } else { c[0].clone() })
                    .collect();
            }
        }
    }

    /// Settles every pending row (at the end of the run).
    pub fn flush(&mut self) {
        while !self.pending.is_empty() {
            self.settle_first();
        }
    }

    /// Clients connected now, summed over agents.
    pub fn connected(&self) -> u64 {
        self.connected.values().sum()
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// What agent `index` did, from its own snapshots (the clock and status are the caller's).
    pub fn agent_report(&self, index: u32, name: String, clients: u64) -> AgentReport {
        let (c, errors) = self.per_agent.get(&index).cloned().unwrap_or_default();
        AgentReport {
            name,
            index,
            clients,
            status: AgentStatus::Finished,
            connected: self.connected.get(&index).copied().unwrap_or(0),
            connects: c.connects,
            published: c.published(),
            received: c.received(),
            errors,
            snapshots: self.next_seq.get(&index).copied().unwrap_or(0),
            clock: None,
            cpu_s: c.agent_cpu_us as f64 / 1e6,
            cpu_peak_cores: self.cpu_peak.get(&index).copied().unwrap_or(0.0),
            lag_p99_us: self.lag.get(&index).filter(|l| !l.is_empty()).map(|l| l.quantile_us(0.99)),
            behind_schedule: c.behind_schedule,
            send_buffer_full: c.send_buffer_full,
            suspect: Vec::new(),
            cores: 0,
            start_late_us: None,
            link_bytes_in: None,
            link_resumes: None,
        }
    }

    /// Each agent's health over the live window since the last call.
    pub fn take_live_health(&mut self) -> Vec<LiveHealth> {
        let mut v: Vec<LiveHealth> = self
            .live_health
            .drain()
            .map(|(agent, (cpu, lag))| LiveHealth {
                agent,
                cpu_peak_cores: cpu,
                lag_p99_us: (!lag.is_empty()).then(|| lag.quantile_us(0.99)),
            })
            .collect();
        v.sort_by_key(|h| h.agent);
        v
    }

    /// The live window since the last call.
    pub fn take_live(&mut self, now_ns: u64, clients: u64) -> LiveView {
        let window_s = (now_ns.saturating_sub(self.live_since_ns) as f64 / 1e9).max(1e-9);
        let v = LiveView {
            elapsed_s: now_ns.saturating_sub(self.start_ns) as f64 / 1e9,
            window_s,
            connected: self.connected(),
            clients,
            published: self.live_counters.published(),
            received: self.live_counters.received(),
            errors: self.live_errors,
            e2e_p50_us: (!self.live_e2e.is_empty()).then(|| self.live_e2e.quantile_us(0.5)),
            e2e_p99_us: (!self.live_e2e.is_empty()).then(|| self.live_e2e.quantile_us(0.99)),
            suspect: Vec::new(),
            stage: None,
        };
        self.live_counters = Counters::default();
        self.live_errors = 0;
        self.live_e2e.reset();
        self.live_since_ns = now_ns;
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use squall_proto::metrics::{ErrorCount, HistogramBytes};

    fn snap(agent: u32, seq: u64, published: u64, e2e_us: &[u64]) -> Snapshot {
        let mut l = Latency::new();
        for v in e2e_us {
            l.record_ns(v * 1000);
        }
        Snapshot {
            agent,
            seq,
            start_unix_ns: seq * 1_000_000_000,
            end_unix_ns: (seq + 1) * 1_000_000_000,
            counters: Counters { published_qos0: published, ..Default::default() },
            errors: vec![ErrorCount { error: LoadError::TcpRefused, count: 1 }],
            connected: 5,
            wills: vec![],
            histograms: vec![HistogramBytes {
                metric: Metric::E2e,
                timing: Timing::Corrected,
                v2: l.to_v2(),
                clamped: 0,
                group: agent,
            }],
        }
    }

    #[test]
    fn will_records_are_kept_and_settled_and_a_rogue_group_is_refused() {
        use squall_proto::metrics::{Observers, WillMark, WillRecord};
        let mut agg = Aggregate::new(0).with_groups(vec!["obs".into(), "dev".into()]);
        let rec = |mark, at, group| WillRecord {
            mark,
            group,
            client: 7,
            epoch: 1,
            at_unix_ns: at,
            receiver: 3,
            topic: "w/7".into(),
        };
        let mut s = snap(0, 0, 0, &[]);
        s.wills = vec![rec(WillMark::Owed, 1_000_000, 1), rec(WillMark::Delivered, 4_000_000, 1)];
        agg.apply(&s).unwrap();
        let l = agg.settle_wills(&[Observers { filters: vec!["w/#".into()], count: 1 }]);
        assert_eq!((l.expected, l.delivered, l.missing), (1, 1, 0));
        let will = agg.group_hists("dev").unwrap().get(Metric::Will, Timing::Raw);
        assert!((2_990..=3_010).contains(&will.quantile_us(0.5)), "from when it was due");

        let mut rogue = snap(0, 1, 0, &[]);
        rogue.wills = vec![rec(WillMark::Owed, 0, 9)];
        assert!(agg.apply(&rogue).unwrap_err().contains("group 9"));
    }

    #[test]
    fn merges_agents_and_settles_rows_in_order() {
        let mut a = Aggregate::new(0);
        for seq in 0..6 {
            a.apply(&snap(0, seq, 10, &[100, 200])).unwrap();
            a.apply(&snap(1, seq, 5, &[300])).unwrap();
        }
        a.flush();
        assert_eq!(a.counters.published_qos0, 90);
        assert_eq!(a.error_count(), 12);
        assert_eq!(a.connected(), 10);
        assert_eq!(a.hists.get(Metric::E2e, Timing::Corrected).len(), 18);
        // each agent's snapshot was labelled with its own group here: the totals are the sum
        assert_eq!(a.by_group.group(0).unwrap().get(Metric::E2e, Timing::Corrected).len(), 12);
        assert_eq!(a.by_group.group(1).unwrap().get(Metric::E2e, Timing::Corrected).len(), 6);
        assert_eq!(a.timeline.len(), 6);
        assert!(a.timeline.iter().all(|r| r.published == 15 && r.connected == 10));
        assert_eq!(a.timeline[0].e2e_max_us, Some(300));
        assert_eq!(a.missing_snapshots, 0);
        // one refused connect per agent per interval, by kind
        assert!(a.timeline.iter().all(|r| r.errors == 2 && r.errors_by_kind.len() == 1));
        assert_eq!(a.timeline[0].errors_by_kind["tcp_refused"], 2);
    }

    #[test]
    fn a_histogram_of_a_group_the_scenario_lacks_is_refused_before_any_allocation() {
        let mut a = Aggregate::new(0).with_groups(vec!["only".into()]);
        let mut s = snap(0, 0, 1, &[5]);
        s.histograms[0].group = u32::MAX;
        let e = a.apply(&s).unwrap_err();
        assert!(e.contains("group 4294967295"), "{e}");
        assert!(a.by_group.group(0).is_none() && a.hists.get(Metric::E2e, Timing::Corrected).is_empty());
        assert!(a.group_hists("only").is_none());
        a.apply(&snap(0, 1, 1, &[5])).unwrap();
        assert_eq!(a.group_hists("only").unwrap().get(Metric::E2e, Timing::Corrected).len(), 1);
    }

    #[test]
    fn a_long_run_keeps_a_bounded_timeline_that_still_adds_up() {
        let mut a = Aggregate::new(0);
        let n = 3 * MAX_ROWS as u64 + 7;
        for seq in 0..n {
            // one bad second in the middle
            let e2e: &[u64] = if seq == n / 2 { &[90_000] } else { &[100] };
            a.apply(&snap(0, seq, 2, e2e)).unwrap();
        }
        a.flush();
        let t = &a.timeline;
        assert!(t.len() < MAX_ROWS, "{} rows", t.len());
        assert_eq!(t.iter().map(|r| r.intervals as u64).sum::<u64>(), n, "every interval in some row");
        assert_eq!(t.iter().map(|r| r.published).sum::<u64>(), 2 * n, "counts add up");
        let refused: u64 = t.iter().map(|r| r.errors_by_kind.get("tcp_refused").copied().unwrap_or(0)).sum();
        assert_eq!(refused, n, "errors by kind add up across merged rows");
        assert!(t.windows(2).all(|w| w[0].t_s < w[1].t_s), "in time order");
        let worst = t.iter().filter_map(|r| r.e2e_max_us).max().unwrap();
        assert!((90_000..90_100).contains(&worst), "the bad second survives merging: {worst}µs");
    }

    #[test]
    fn gaps_in_an_agents_sequence_are_counted() {
        let mut a = Aggregate::new(0);
        a.apply(&snap(0, 0, 1, &[])).unwrap();
        a.apply(&snap(0, 3, 1, &[])).unwrap();
        assert_eq!(a.missing_snapshots, 2);
    }

    #[test]
    fn broken_histogram_bytes_are_an_error_not_a_panic() {
        let mut a = Aggregate::new(0);
        let mut s = snap(0, 0, 1, &[5]);
        s.histograms[0].v2 = vec![1, 2, 3];
        assert!(a.apply(&s).is_err());
    }
}
