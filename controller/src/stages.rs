//! The stages of a staged run (or the steps of a capacity search) as the controller sees
//! them: when each runs, which snapshots measure it, and its figures.
//!
//! A stage is measured by the snapshot intervals that lie wholly between the end of its
//! warm-up and its end. Agents' snapshots follow the publishing window's grid (start + k ×
//! interval), so a stage on that grid gets whole intervals and none of its neighbours'. Once
//! every agent has reported past a stage's end it is settled: its figures are computed, its
//! SLO judged (in a search), and its histograms let go, so a run of many stages holds only the
//! open ones' histograms.

use squall_proto::metrics::Snapshot;
use squall_proto::plan::{GroupSpec, RateSpec};

use crate::aggregate::Aggregate;
use crate::report::{self, StageReport, StageVerdict, ThresholdResult};
use crate::thresholds::{MetricRef, Threshold};

/// One agent as a stage's tester health needs it: its name and cores.
pub struct AgentInfo<'a> {
    pub name: &'a str,
    pub cores: u32,
}

struct Open {
    index: u32,
    scale: f64,
    start_ns: u64,
    until_ns: u64,
    from_ns: u64,
    agg: Aggregate,
    /// The earliest start and latest end of the snapshots taken in.
    span: Option<(u64, u64)>,
}

pub struct StageBook {
    /// The run's start, ns since the Unix epoch (reports count seconds from it).
    run_start_ns: u64,
    groups: Vec<String>,
    /// Messages a second every publishing group asks for at its rate as written.
    base_rate: f64,
    /// How late a snapshot's tick may land and still count on its grid point, ns.
    tolerance_ns: u64,
    /// Per agent: the end of its newest snapshot.
    latest: Vec<u64>,
    /// Per agent: its newest snapshot's start, and whether anything came back in it (a
    /// message received, a publish acknowledged).
    activity: Vec<(u64, bool)>,
    open: Vec<Open>,
    /// What each step of a search must hold (empty: stages are not judged).
    slo: Vec<Threshold>,
    embedded_broker: bool,
}

/// Messages a second the publishing groups ask for at their rates as written.
pub fn base_rate(groups: &[GroupSpec]) -> f64 {
    groups
        .iter()
        .filter_map(|g| {
            g.publish.as_ref().map(|p| match p.rate {
                RateSpec::IntervalMs(ms) => g.clients as f64 * 1e3 / ms,
                RateSpec::GroupPerSec(r) => r,
            })
        })
        .sum()
}

impl StageBook {
    pub fn new(
        run_start_ns: u64,
        groups: &[GroupSpec],
        agents: usize,
        snapshot_interval_ns: u64,
        slo: Vec<Threshold>,
        embedded_broker: bool,
    ) -> StageBook {
        StageBook {
            run_start_ns,
            groups: groups.iter().map(|g| g.name.clone()).collect(),
            base_rate: base_rate(groups),
            // ticks land a little after their grid point (tokio's 1 ms timer, a busy runtime)
            tolerance_ns: (snapshot_interval_ns / 4).min(100_000_000),
            latest: vec![0; agents],
            activity: vec![(0, true); agents],
            open: Vec::new(),
            slo,
            embedded_broker,
        }
    }

    /// A stage announced to the agents: `[start, until)` at `scale`, figures after `warmup`.
    pub fn add(&mut self, index: u32, scale: f64, start_ns: u64, until_ns: u64, warmup_ns: u64) {
        self.open.push(Open {
            index,
            scale,
            start_ns,
            until_ns,
            from_ns: start_ns.saturating_add(warmup_ns).min(until_ns),
            agg: Aggregate::new(self.run_start_ns).with_groups(self.groups.clone()),
            span: None,
        });
    }

    /// Takes in one agent's snapshot (already checked by the run's own aggregate).
    pub fn apply(&mut self, agent: usize, s: &Snapshot) {
        if let Some(l) = self.latest.get_mut(agent) {
            *l = (*l).max(s.end_unix_ns);
        }
        if let Some(a) = self.activity.get_mut(agent) {
            let c = &s.counters;
            *a = (s.start_unix_ns, c.received() + c.acked_qos1 + c.acked_qos2 > 0);
        }
        let tol = self.tolerance_ns;
        for st in &mut self.open {
            if s.start_unix_ns + tol >= st.from_ns && s.end_unix_ns <= st.until_ns + tol {
                // the run's aggregate took the same snapshot: it decodes
                let _ = st.agg.apply(s);
                let (a, b) = st.span.unwrap_or((s.start_unix_ns, s.end_unix_ns));
                st.span = Some((a.min(s.start_unix_ns), b.max(s.end_unix_ns)));
            }
        }
    }

    /// The stages every agent has reported past: their figures (and verdicts, with an SLO),
    /// in order. `all`: settle every open stage on what arrived (the run is over).
    pub fn settle(&mut self, agents: &[AgentInfo<'_>], all: bool) -> Vec<StageReport> {
        let mut out = Vec::new();
        while let Some(st) = self.open.first() {
            let reported = self.latest.iter().all(|&l| l >= st.until_ns);
            if !(all || reported) {
                break;
            }
            let st = self.open.remove(0);
            out.push(self.report(st, agents));
        }
        out
    }

    /// Whether every agent has reported a whole snapshot interval, begun at or after `t`, in
    /// which nothing came back: the broker has delivered what it had queued.
    pub fn quiet_since(&self, t: u64) -> bool {
        self.activity.iter().all(|&(start, active)| start + self.tolerance_ns >= t && !active)
    }

    /// Whether any stage is still waiting for its snapshots.
    pub fn pending(&self) -> bool {
        !self.open.is_empty()
    }

    fn report(&self, mut st: Open, agents: &[AgentInfo<'_>]) -> StageReport {
        st.agg.flush();
        let s = |ns: u64| ns.saturating_sub(self.run_start_ns) as f64 / 1e9;
        // several agents' intervals overlap: the time covered is the span, not their sum
        let measured_s = st.span.map_or(0.0, |(a, b)| b.saturating_sub(a) as f64 / 1e9);
        let c = &st.agg.counters;
        let per_s = |n: u64| if measured_s > 0.0 { n as f64 / measured_s } else { 0.0 };
        let mut tester_suspect = Vec::new();
        for (i, a) in agents.iter().enumerate() {
            let r = st.agg.agent_report(i as u32, a.name.to_string(), 0);
            if report::cpu_suspect(a.cores, r.cpu_peak_cores, self.embedded_broker) {
                tester_suspect.push(format!(
                    "agent {}: CPU {:.0}%",
                    a.name,
                    100.0 * r.cpu_peak_cores / a.cores as f64
                ));
            }
            if let Some(lag) = r.lag_p99_us.filter(|l| report::lag_suspect(*l)) {
                tester_suspect.push(format!(
                    "agent {}: timer lag p99 {}",
                    a.name,
                    report::text::fmt_us(lag as f64)
                ));
            }
        }
        let verdict = (!self.slo.is_empty()).then(|| {
            let rules: Vec<ThresholdResult> = self
                .slo
                .iter()
                .map(|t| {
                    let value =
                        if measured_s > 0.0 { step_value(&st.agg, measured_s, &t.metric) } else { None };
                    ThresholdResult {
                        rule: t.expr.clone(),
                        value,
                        pass: value.is_some_and(|v| t.op.holds(v, t.value)),
                    }
                })
                .collect();
            StageVerdict { held: rules.iter().all(|r| r.pass), rules }
        });
        StageReport {
            index: st.index,
            rate_percent: st.scale * 100.0,
            start_s: s(st.start_ns),
            end_s: s(st.until_ns),
            measured_from_s: s(st.from_ns),
            measured_s,
            offered_rate: self.base_rate * st.scale,
            publish_rate: per_s(c.published()),
            receive_rate: per_s(c.received()),
            published: c.published(),
            received: c.received(),
            missing: c.missing(),
            errors: st.agg.error_count(),
            latency: report::latency_map(&st.agg.hists),
            tester_suspect,
            verdict,
        }
    }
}

/// A rule's value over one step: rates over its measured time, the rest as mid-run.
fn step_value(agg: &Aggregate, measured_s: f64, m: &MetricRef) -> Option<f64> {
    match m {
        MetricRef::Count(n) if n == "publish.rate" => Some(agg.counters.published() as f64 / measured_s),
        MetricRef::Count(n) if n == "receive.rate" => Some(agg.counters.received() as f64 / measured_s),
        m => report::live_value(agg, m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use squall_proto::metrics::{Counters, HistogramBytes, Latency, Metric, Timing};

    const S: u64 = 1_000_000_000;

    fn snap(agent: u32, seq: u64, from_s: f64, published: u64, e2e_us: u64) -> Snapshot {
        let mut l = Latency::new();
        l.record_ns(e2e_us * 1000);
        let start = (from_s * 1e9) as u64;
        Snapshot {
            agent,
            seq,
            // a tick lands a millisecond after its grid point
            start_unix_ns: start + 1_000_000,
            end_unix_ns: start + S + 1_000_000,
            counters: Counters { published_qos0: published, received_qos0: published, ..Default::default() },
            errors: vec![],
            connected: 1,
            wills: vec![],
            histograms: vec![HistogramBytes {
                metric: Metric::E2e,
                timing: Timing::Corrected,
                v2: l.to_v2(),
                clamped: 0,
                group: 0,
            }],
        }
    }

    fn group() -> GroupSpec {
        let text = "[[group]]\nname = \"g\"\nclients = 10\n[group.publish]\ntopic = \"t/{i}\"\ninterval = \"100ms\"\n";
        let ov =
            crate::scenario::Overrides { targets: vec!["mqtt://127.0.0.1:1".into()], ..Default::default() };
        crate::scenario::load_source(&crate::scenario::Source::new("s.toml", text), &ov)
            .unwrap()
            .groups
            .remove(0)
    }

    #[test]
    fn a_stage_takes_the_whole_intervals_after_its_warmup_and_judges_its_slo() {
        let slo =
            vec![Threshold::parse("e2e.p99 < 5ms").unwrap(), Threshold::parse("publish.rate >= 90").unwrap()];
        let mut book = StageBook::new(0, &[group()], 2, S, slo, false);
        // stage 0: [10 s, 15 s) warm-up 1 s; stage 1: [15 s, 20 s) warm-up 2 s
        book.add(0, 1.0, 10 * S, 15 * S, S);
        book.add(1, 3.0, 15 * S, 20 * S, 2 * S);
        let agents = [AgentInfo { name: "a0", cores: 2 }, AgentInfo { name: "a1", cores: 2 }];
        let mut seq = [0u64; 2];
        for t in 9..20 {
            for agent in 0..2u32 {
                // stage 1 is slow: 9 ms
                let e2e = if t >= 15 { 9_000 } else { 1_000 };
                let published = if t >= 15 { 150 } else { 50 };
                book.apply(agent as usize, &snap(agent, seq[agent as usize], t as f64, published, e2e));
                seq[agent as usize] += 1;
            }
            // nothing settles before both agents reported past its end
            if t < 14 {
                assert!(book.settle(&agents, false).is_empty());
            }
        }
        let done = book.settle(&agents, false);
        assert_eq!(done.len(), 2);
        let (a, b) = (&done[0], &done[1]);
        // stage 0: intervals 11..15 (the one starting at 10 is its warm-up); 2 agents × 4
        assert_eq!(a.published, 2 * 4 * 50);
        assert!((a.measured_s - 4.0).abs() < 0.01, "{}", a.measured_s);
        assert!((a.publish_rate - 100.0).abs() < 1.0, "{}", a.publish_rate);
        assert_eq!(a.offered_rate, 100.0);
        assert!(a.verdict.as_ref().unwrap().held);
        // stage 1: intervals 17..20, slow: its e2e rule broke, its rate held
        assert_eq!(b.published, 2 * 3 * 150);
        assert_eq!(b.offered_rate, 300.0);
        let v = b.verdict.as_ref().unwrap();
        assert!(!v.held && !v.rules[0].pass && v.rules[1].pass, "{v:?}");
        assert!(!book.pending());
    }

    #[test]
    fn a_stage_no_whole_interval_fell_in_has_no_data_and_breaks_its_rules() {
        let slo = vec![Threshold::parse("e2e.p99 < 5ms").unwrap()];
        let mut book = StageBook::new(0, &[group()], 1, S, slo, false);
        book.add(0, 1.0, 10 * S, 11 * S, S / 2);
        book.apply(0, &snap(0, 0, 10.0, 5, 100));
        let r = book.settle(&[AgentInfo { name: "a0", cores: 1 }], true).remove(0);
        assert_eq!((r.measured_s, r.published), (0.0, 0));
        let v = r.verdict.unwrap();
        assert!(!v.held && v.rules[0].value.is_none(), "no data never holds");
    }
}
