//! Runs a staged run's stages, or a capacity search's steps, over the agents' links.
//!
//! It announces each stage (a [`Command::Stage`], on the snapshot grid, a little ahead so every
//! agent has it first), measures it ([`StageBook`]), and in a search judges each step on its
//! SLO, waits for the broker to deliver what the step left (a snapshot interval from every
//! agent with nothing received or acknowledged, at most [`MAX_COOLDOWN`]) and announces the
//! next one the [`Search`] chooses, until the answer is known. The coordinator drives it with
//! four calls: [`Stepper::open`] when the window opens, [`Stepper::on_snapshot`] for each
//! snapshot (true: cut the window now, the search is over), [`Stepper::label`] for the live line
//! and [`Stepper::finish`] for the report.

use std::time::Duration;

use squall_proto::link::{Command, StageCommand};
use squall_proto::metrics::Snapshot;
use tokio::sync::mpsc;

use crate::coordinator::broadcast;
use crate::report::live::{self, LiveMode};
use crate::report::{CapacityReport, CapacityStep, StageReport};
use crate::scenario::resolve::fmt_percent;
use crate::scenario::{Plan, SearchPlan, Shape};
use crate::search::{Ended, Next, Search};
use crate::stages::{AgentInfo, StageBook};

/// How long a capacity search waits after a step for the broker to deliver its backlog before
/// the next (see [`crate::scenario::search_gap`], which bounds the window by it).
pub const MAX_COOLDOWN: Duration = Duration::from_secs(30);

/// How far ahead of its start a stage is announced, ns.
const LEAD_NS: u64 = 100_000_000;

pub struct Stepper {
    shape: Shape,
    interval_ns: u64,
    book: StageBook,
    search: Option<Search>,
    /// Why the search ended, once it has.
    ended: Option<Ended>,
    /// The search's next step, waiting for the broker to drain: its scale, the end of the step
    /// before, and the latest it waits until.
    next: Option<(f64, u64, tokio::time::Instant)>,
    /// Each stage announced, by index: its scale and span (ns since the Unix epoch).
    announced: Vec<(f64, u64, u64)>,
    reports: Vec<StageReport>,
    warnings: Vec<String>,
}

impl Stepper {
    /// For a plan with stages or a search; `None` for a steady one.
    pub fn new(plan: &Plan, run_start_ns: u64, agents: usize, embedded_broker: bool) -> Option<Stepper> {
        let (slo, search) = match &plan.shape {
            Shape::Steady => return None,
            Shape::Stages(_) => (Vec::new(), None),
            Shape::Search(sp) => {
                (sp.slo.clone(), Some(Search::new(sp.from, sp.to, sp.precision, sp.max_steps)))
            }
        };
        let interval_ns = plan.snapshot_interval.as_nanos() as u64;
        Some(Stepper {
            shape: plan.shape.clone(),
            interval_ns,
            book: StageBook::new(run_start_ns, &plan.groups, agents, interval_ns, slo, embedded_broker),
            search,
            ended: None,
            next: None,
            announced: Vec::new(),
            reports: Vec::new(),
            warnings: Vec::new(),
        })
    }

    /// Tells the agents of a stage and starts measuring it.
    fn announce(
        &mut self,
        commands: &[mpsc::Sender<Command>],
        scale: f64,
        (start, until): (u64, u64),
        warmup: Duration,
    ) {
        let index = self.announced.len() as u32;
        self.announced.push((scale, start, until));
        self.book.add(index, scale, start, until, warmup.as_nanos() as u64);
        broadcast(
            commands,
            Command::Stage(StageCommand { index, start_unix_ns: start, until_unix_ns: until, scale }),
        );
    }

    /// The publishing window opened at `start`: every stage, back to back, or a search's first
    /// step.
    pub fn open(&mut self, start: u64, commands: &[mpsc::Sender<Command>]) {
        match self.shape.clone() {
            Shape::Steady => {}
            Shape::Stages(list) => {
                let mut at = start;
                for st in list {
                    let end = at + st.duration.as_nanos() as u64;
                    self.announce(commands, st.scale, (at, end), st.warmup);
                    at = end;
                }
            }
            Shape::Search(sp) => {
                if let Some(Next::Step(scale)) = self.search.as_ref().map(Search::next) {
                    self.announce(commands, scale, (start, start + sp.step.as_nanos() as u64), sp.warmup);
                }
            }
        }
    }

    /// Takes one agent's snapshot: settles the stages every agent has reported past, judges a
    /// search's steps, and announces its next step once the broker has drained. `stopping`: the
    /// run is ending (an interrupt, an abort rule), so the search decides nothing more. Returns
    /// true when the window must end now: the search is over.
    #[allow(clippy::too_many_arguments)]
    pub fn on_snapshot(
        &mut self,
        agent: usize,
        s: &Snapshot,
        agents: &[AgentInfo<'_>],
        (window_start, window_until): (u64, u64),
        now_ns: u64,
        stopping: bool,
        commands: &[mpsc::Sender<Command>],
        live_mode: LiveMode,
    ) -> bool {
        self.book.apply(agent, s);
        let mut cut = false;
        for r in self.book.settle(agents, false) {
            if let Some(sr) = self.search.as_mut()
                && self.ended.is_none()
                && !stopping
            {
                let scale = self.announced.get(r.index as usize).map_or(r.rate_percent / 100.0, |a| a.0);
                let held = r.verdict.as_ref().is_some_and(|v| v.held);
                // a step the tester could not offer says nothing of the broker
                if !held && !r.tester_suspect.is_empty() {
                    sr.tester_bound(scale);
                } else {
                    sr.record(scale, held);
                }
                live::note(live_mode, &crate::report::text::step_line(&r));
                match sr.next() {
                    Next::Step(next) => {
                        let last_end = self.announced.last().map_or(window_start, |a| a.2);
                        self.next = Some((next, last_end, tokio::time::Instant::now() + MAX_COOLDOWN));
                    }
                    Next::Done(e) => {
                        self.ended = Some(e);
                        cut = true;
                    }
                }
            }
            self.reports.push(r);
        }
        if let (Some((next, after, by)), Shape::Search(sp)) = (self.next, &self.shape)
            && !stopping
        {
            let quiet = self.book.quiet_since(after);
            if quiet || tokio::time::Instant::now() >= by {
                self.next = None;
                if !quiet {
                    self.warnings.push(format!(
                        "the broker was still delivering {} after step {} ended: step {} began on its backlog",
                        humantime::format_duration(MAX_COOLDOWN),
                        self.announced.len(),
                        self.announced.len() + 1
                    ));
                }
                // on the snapshot grid, a little ahead, so every agent has it first
                let k = (now_ns + LEAD_NS).saturating_sub(window_start).div_ceil(self.interval_ns.max(1));
                let at = window_start + k * self.interval_ns;
                let until = at + sp.step.as_nanos() as u64;
                if until <= window_until {
                    let warmup = sp.warmup;
                    self.announce(commands, next, (at, until), warmup);
                } else {
                    self.ended = Some(Ended::Steps);
                    cut = true;
                }
            }
        }
        cut
    }

    /// The stage or step under way at `now_ns`, for the live line: "stage 2 200%".
    pub fn label(&self, now_ns: u64) -> Option<String> {
        let kind = if self.search.is_some() { "step" } else { "stage" };
        self.announced
            .iter()
            .enumerate()
            .rfind(|(_, a)| a.1 <= now_ns && now_ns < a.2)
            .map(|(k, a)| format!("{kind} {} {}", k + 1, fmt_percent(a.0)))
    }

    /// Every stage's figures (what is still open was cut short: an interrupt, an abort rule, a
    /// lost agent; its figures stand on what arrived, and a search does not judge it), what a
    /// search found, and what a reader must know besides.
    pub fn finish(
        mut self,
        agents: &[AgentInfo<'_>],
    ) -> (Vec<StageReport>, Option<CapacityReport>, Vec<String>) {
        self.reports.extend(self.book.settle(agents, true));
        let capacity = match (&self.search, &self.shape) {
            (Some(sr), Shape::Search(sp)) => {
                let scales: Vec<f64> = self.announced.iter().map(|a| a.0).collect();
                let c = capacity_report(sr, sp, self.ended, &self.reports, &scales);
                self.warnings.extend(capacity_warnings(&c));
                Some(c)
            }
            _ => None,
        };
        (self.reports, capacity, self.warnings)
    }
}

/// What a search found, from its steps' figures.
fn capacity_report(
    sr: &Search,
    sp: &SearchPlan,
    ended: Option<Ended>,
    steps: &[StageReport],
    scales: &[f64],
) -> CapacityReport {
    let step_at = |scale: Option<f64>| {
        let scale = scale?;
        let i = scales.iter().position(|s| *s == scale)?;
        let r = steps.iter().find(|r| r.index == i as u32)?;
        Some(CapacityStep {
            stage: r.index,
            rate_percent: r.rate_percent,
            offered_rate: r.offered_rate,
            receive_rate: r.receive_rate,
        })
    };
    CapacityReport {
        slo: sp.slo.iter().map(|t| t.expr.clone()).collect(),
        found: step_at(sr.highest_held()),
        broke: step_at(sr.lowest_broken()),
        ended: ended.map_or("stopped", |e| e.name()).to_string(),
        precision_percent: sp.precision * 100.0,
        steps: sr.steps_taken(),
        monotone: sr.monotone(),
    }
}

/// What a reader of a capacity must know besides the figure.
fn capacity_warnings(c: &CapacityReport) -> Vec<String> {
    let mut w = Vec::new();
    match c.ended.as_str() {
        "tester_bound" => w.push(format!(
            "the capacity search stopped: the tester could not offer {} (see that step's tester_suspect); the broker's capacity is at least what held: add agents or cores and search again",
            c.broke.as_ref().map_or("a step".into(), |b| format!("{:.0} msg/s", b.offered_rate))
        )),
        "max_steps" => w.push(format!(
            "the capacity search used its {} steps before the bracket closed to {}%: the capacity lies between the last step that held and the first that broke",
            c.steps, c.precision_percent
        )),
        "top" => w.push("the capacity search's highest step held: the capacity is at least that; raise `search.to`".into()),
        "bottom" => w.push("no step of the capacity search held, down to its lowest: check the SLO against a step's figures".into()),
        "stopped" => w.push("the run ended before the capacity search did: what it found is partial".into()),
        _ => {}
    }
    if !c.monotone {
        w.push(
            "a step held above one that broke: the broker's behaviour at this load is not steady (or the machine is noisy); the capacity is the highest step that held below every step that broke".into(),
        );
    }
    w
}
