//! The run report: one data model ([`Report`], with a committed JSON Schema), built once from
//! the plan, the merged snapshots and the agents' ledgers; then shown as text ([`text`]) or
//! written as JSON. Percentiles are computed here and only here.

pub mod html;
pub mod live;
pub mod md;
pub mod text;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use squall_proto::link::AgentResult;
use squall_proto::metrics::{Delivery, Latency, LedgerTotals, LoadError, Metric, Summary, Timing};
use squall_proto::plan::{PayloadSpec, RateSpec};
use squall_proto::protocol::{Protocol, connack_meaning, reason_meaning};

use crate::aggregate::{Aggregate, IntervalRow};
use crate::scenario::Plan;
use crate::thresholds::{MetricRef, Stat, Threshold};

/// Bumped when a field changes meaning or goes away (added fields do not bump it).
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Report {
    pub schema_version: u32,
    pub squall_version: String,
    pub scenario: String,
    /// The run tag, hex: in client ids (`{run}`) and every payload.
    pub run_tag: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub elapsed_s: f64,
    /// How long publishers actually published.
    pub publish_window_s: f64,
    pub drain_s: f64,
    /// `run.read_coalesce`, µs: the window a busy connection let data gather in, so the
    /// arrival times of what `reads_coalesced` reads took are late by at most this.
    #[serde(default)]
    pub read_coalesce_us: u64,
    pub targets: Vec<String>,
    /// The scenario named no broker: squall ran its embedded one.
    pub embedded_broker: bool,
    /// `--label key=value` given to the run (what report and compare show of it: the broker
    /// config, the build, the host).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub agents: u32,
    /// What each agent did (one entry for a local run).
    #[serde(default)]
    pub per_agent: Vec<AgentReport>,
    /// With several agents: the spread of their `start_late_us`, µs, i.e. how far apart they
    /// began publishing, on the controller's time base. Each agent's clock `bound_us` is the
    /// uncertainty of its part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_skew_us: Option<f64>,
    pub clients: u64,
    pub groups: Vec<GroupReport>,
    pub verdict: Verdict,
    /// Every counter, summed over agents (see the README's "Counters").
    pub counters: BTreeMap<String, u64>,
    pub rates: Rates,
    /// Latency by metric (connect, subscribe, puback, pubcomp, e2e), µs.
    pub latency: BTreeMap<String, LatencyReport>,
    pub delivery: DeliveryReport,
    /// Each storm (a firing of a scenario event) and the way back from it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub storms: Vec<StormReport>,
    /// Connections lost without the scenario asking (a broker restart, a network cut): from
    /// the first loss until every client lost was connected again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outages: Vec<OutageReport>,
    /// The will ledger, when a group sets a last will.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wills: Option<WillsReport>,
    pub errors: Vec<ErrorEntry>,
    pub thresholds: Vec<ThresholdResult>,
    /// One row per snapshot interval.
    pub timeline: Vec<IntervalRow>,
    pub warnings: Vec<String>,
    /// The embedded broker's own counters, when the run used it (what it received, sent,
    /// dropped): the other side of the ledger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<BTreeMap<String, u64>>,
    /// The broker's process on this host (`--broker-pid`): its CPU and memory over the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_process: Option<crate::broker_process::BrokerProcess>,
    /// What the broker said of itself on `$SYS/#` during the run (`--broker-sys`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_sys: Option<crate::broker_sys::BrokerSys>,
    /// A staged run's stages, or a capacity search's steps: each one's own figures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageReport>,
    /// What a capacity search found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacityReport>,
}

/// One stage of a staged run (or one step of a search), over its own time: its figures
/// come from the whole snapshot intervals between the end of its warm-up and its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StageReport {
    pub index: u32,
    /// Its share of every publishing group's rate as written, %.
    pub rate_percent: f64,
    /// When it ran and when its figures start (after the warm-up), s since the run started.
    pub start_s: f64,
    pub end_s: f64,
    pub measured_from_s: f64,
    /// Time its figures cover, s (0: no whole snapshot interval fell inside it).
    pub measured_s: f64,
    /// Messages a second the schedules asked for at this share.
    pub offered_rate: f64,
    pub publish_rate: f64,
    pub receive_rate: f64,
    pub published: u64,
    pub received: u64,
    /// Messages skipped over by receivers during it and not arrived (see `gaps_opened`).
    pub missing: i64,
    pub errors: u64,
    /// Latency by metric, µs, over the measured time.
    pub latency: BTreeMap<String, LatencyReport>,
    /// Why the tester's own figures are suspect during it (CPU, timer lag); empty when healthy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tester_suspect: Vec<String>,
    /// In a search: each rule of the SLO over this step, and whether all held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<StageVerdict>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StageVerdict {
    pub held: bool,
    pub rules: Vec<ThresholdResult>,
}

/// What a capacity search found: the highest step that held every rule of the SLO, below the
/// lowest that broke one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CapacityReport {
    pub slo: Vec<String>,
    /// The highest step that held (absent: none did).
    pub found: Option<CapacityStep>,
    /// The lowest step that broke a rule (absent: none did, up to the top).
    pub broke: Option<CapacityStep>,
    /// Why the search stopped: `converged` (within the precision), `top` (the highest share
    /// tried held), `bottom` (nothing held), `max_steps`, `tester_bound` (the tester could not
    /// offer a step's load: what broke may not have been the broker), `stopped` (the run ended
    /// first: interrupted, or an agent failed).
    pub ended: String,
    /// The precision asked for, %.
    pub precision_percent: f64,
    pub steps: u32,
    /// A step held above one that broke: the broker's behaviour at this load is not steady.
    pub monotone: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CapacityStep {
    /// Its index in `stages`.
    pub stage: u32,
    pub rate_percent: f64,
    pub offered_rate: f64,
    pub receive_rate: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GroupReport {
    pub name: String,
    pub clients: u64,
    pub protocol: String,
    /// What it publishes: topic template, QoS, rate as written.
    pub publishes: Option<String>,
    /// What it subscribes to.
    pub subscribes: Option<String>,
    /// Its own latencies, µs, by metric: connect, subscribe, puback, pubcomp and lag of its
    /// clients, and e2e of the messages it published (wherever they were received).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub latency: BTreeMap<String, LatencyReport>,
}

/// One agent's share of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentReport {
    pub name: String,
    pub index: u32,
    /// Clients it was assigned.
    pub clients: u64,
    pub status: AgentStatus,
    /// Clients connected at its last snapshot.
    pub connected: u64,
    pub connects: u64,
    pub published: u64,
    pub received: u64,
    pub errors: u64,
    /// Snapshots received from it.
    pub snapshots: u64,
    /// Its clock against the controller's (remote agents only).
    pub clock: Option<ClockReport>,
    /// CPU time its process used over the run (user + system), s.
    #[serde(default)]
    pub cpu_s: f64,
    /// The most CPU it used in one snapshot interval, in cores (CPU seconds per second).
    #[serde(default)]
    pub cpu_peak_cores: f64,
    /// Its timer lag at p99, µs: how late its sends went out against their schedule (this
    /// is in every corrected latency it measured). None if it sent nothing on a schedule.
    #[serde(default)]
    pub lag_p99_us: Option<u64>,
    /// Scheduled messages it never sent (see the counter of that name).
    #[serde(default)]
    pub behind_schedule: u64,
    /// Times a message came due with no room to write it: its client's send buffer above the
    /// high-water mark, or the agent's budget of unsent bytes (`run.max_unsent_bytes`) full.
    #[serde(default)]
    pub send_buffer_full: u64,
    /// Why its figures are suspect, if they are (the tester, not the broker, may have been
    /// the bottleneck): empty when it was healthy. Thresholds see the count of suspect agents
    /// as `agents_suspect`.
    #[serde(default)]
    pub suspect: Vec<String>,
    /// The cores it said it would use (its engine threads); the report warns when
    /// `cpu_peak_cores` comes within 10 % of it.
    #[serde(default)]
    pub cores: u32,
    /// How long after the agreed instant it woke to start publishing, µs (on the controller's
    /// time base, as far as its clock offset is known). None if it never got that far.
    #[serde(default)]
    pub start_late_us: Option<f64>,
    /// Bytes it sent the controller over its link (protobuf encoding: snapshots, stream
    /// lists, pongs), remote agents only.
    #[serde(default)]
    pub link_bytes_in: Option<u64>,
    /// Times its link broke mid-run and it resumed the run over a new connection (nothing
    /// lost: both sides replay what the other missed), remote agents only.
    #[serde(default)]
    pub link_resumes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// Ran to the end and settled its ledger.
    Finished,
    /// Stopped by the controller before the end (interrupt, another agent's failure).
    Aborted,
    /// Stopped by its own limit or an error it reported.
    Failed,
    /// Its link was lost mid-run: its data ends at its last snapshot.
    Lost,
}

/// An agent's clock offset, as estimated from ping-pong exchanges over its link.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClockReport {
    /// Agent clock − controller clock, µs, at the start of the run. The agent's timestamps
    /// were corrected by it, so cross-agent latencies are measured on one time base.
    pub offset_us: f64,
    /// The estimate is within ± this much (half the round trip of its best sample), µs.
    pub bound_us: f64,
    /// Offset − start offset at the end of the run, µs: drift (plus estimation error) over the
    /// run. The agent followed it: its timestamps were corrected by the fitted line as it went.
    pub drift_us: f64,
    /// How fast the agent's clock ran against the controller's, ppm (positive: fast), from a
    /// line fitted through the run's tightest exchanges; absent for runs under ~3 s.
    #[serde(default)]
    pub drift_ppm: Option<f64>,
    /// Ping-pong samples taken.
    pub samples: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every threshold held.
    Pass,
    /// A threshold failed (exit code 1).
    Fail,
    /// Stopped by the user before the end (exit code 130); counts are partial.
    Aborted,
    /// The run could not be carried out as planned (exit code 3).
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Verdict {
    pub status: Status,
    /// Why, when not a pass.
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Rates {
    /// Messages published per second over the publishing window.
    pub publish_per_s: f64,
    /// Messages received per second, over the publishing window (messages of the drain included).
    pub receive_per_s: f64,
    /// What the schedules asked for, per second (published + behind schedule).
    pub offered_per_s: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Percentiles {
    pub count: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// The 99.99th percentile (reports written before it existed read 0).
    #[serde(default)]
    pub p9999_us: u64,
    pub max_us: u64,
    /// Values beyond one hour, recorded as one hour.
    pub clamped: u64,
}

impl From<Summary> for Percentiles {
    fn from(s: Summary) -> Self {
        Percentiles {
            count: s.count,
            min_us: s.min_us,
            mean_us: s.mean_us,
            p50_us: s.p50_us,
            p90_us: s.p90_us,
            p99_us: s.p99_us,
            p999_us: s.p999_us,
            p9999_us: s.p9999_us,
            max_us: s.max_us,
            clamped: s.clamped,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LatencyReport {
    /// From the actual send.
    pub raw: Option<Percentiles>,
    /// From the intended send (the schedule): includes time the client was held up.
    pub corrected: Option<Percentiles>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DeliveryCounts {
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub missed_offline: u64,
    pub phantom: u64,
    /// Sent while a persistent-session subscriber was away, owed by a session the broker lost
    /// (expired, or forgotten in a restart): apart from `lost`.
    #[serde(default)]
    pub session_lost: u64,
    /// Refused by the broker at publish with a reason code (e.g. 0x97 quota exceeded): it said
    /// so; apart from `lost`.
    #[serde(default)]
    pub refused: u64,
}

impl From<Delivery> for DeliveryCounts {
    fn from(d: Delivery) -> Self {
        DeliveryCounts {
            expected: d.expected,
            delivered: d.received,
            lost: d.lost,
            duplicates: d.duplicates,
            out_of_order: d.out_of_order,
            missed_offline: d.missed_offline,
            phantom: d.phantom,
            session_lost: d.session_lost,
            refused: d.refused,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeliveryReport {
    /// The ledger was settled (false when the run did not finish: counts are partial).
    pub complete: bool,
    pub all: DeliveryCounts,
    /// By the QoS messages were delivered with ("0", "1", "2").
    pub by_qos: BTreeMap<String, DeliveryCounts>,
    /// By subscribing group.
    pub by_group: BTreeMap<String, DeliveryCounts>,
    pub receivers: u64,
    pub receivers_never_subscribed: u64,
}

/// One storm: a firing of a scenario event, the clients it took, and their recovery. Recovery
/// to 99 % (100 %) is when 99 % (all) of the clients it took were connected again, from the
/// instant it fired; `policy_*` is the same for the delays their reconnect policy alone made
/// them wait (the event's pause, backoff, the group's max_rate): the broker's share is the
/// difference. Absent when that many never came back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StormReport {
    pub group: String,
    /// The event's position among the group's events, and its action.
    pub event: u32,
    pub action: String,
    /// When it fired, seconds into the publishing window.
    pub at_s: f64,
    pub taken: u64,
    pub back: u64,
    /// Attempts that failed on the way back (refused, timed out, reset).
    pub failed_attempts: u64,
    /// Clients that gave up (max_attempts).
    pub abandoned: u64,
    /// Attempts per returning client: mean and most.
    #[serde(default)]
    pub attempts_mean: f64,
    #[serde(default)]
    pub attempts_max: u64,
    /// The most attempts that failed in one second after the storm (the refusals' peak).
    #[serde(default)]
    pub failed_attempts_peak_per_s: u64,
    pub recovered_99_ms: Option<f64>,
    pub recovered_100_ms: Option<f64>,
    pub policy_99_ms: Option<f64>,
    pub policy_100_ms: Option<f64>,
}

/// One outage: clients lost unasked, from the first loss to the last return.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OutageReport {
    /// Seconds since the run started (as the timeline).
    pub start_s: f64,
    /// Absent when some clients lost never came back.
    pub end_s: Option<f64>,
    pub clients_lost: u64,
    pub clients_back: u64,
    /// Attempts per returning client: mean and most.
    #[serde(default)]
    pub attempts_mean: f64,
    #[serde(default)]
    pub attempts_max: u64,
}

fn outage_reports(start_ns: u64, results: &[AgentResult]) -> Vec<OutageReport> {
    let all = results.iter().flat_map(|r| r.outages.iter().copied()).collect();
    let s = |ns: u64| ns.saturating_sub(start_ns) as f64 / 1e9;
    squall_proto::metrics::storms::merge_outages(all)
        .into_iter()
        .map(|w| OutageReport {
            start_s: s(w.start_unix_ns),
            end_s: (w.end_unix_ns > 0).then(|| s(w.end_unix_ns)),
            clients_lost: w.lost,
            clients_back: w.back,
            attempts_mean: w.attempts_sum as f64 / w.back.max(1) as f64,
            attempts_max: w.attempts_max,
        })
        .collect()
}

/// The value by which `share` of `taken` clients are counted in `h` (ms), if that many are.
fn rank_ms(h: &Latency, taken: u64, share: f64) -> Option<f64> {
    let k = ((taken as f64 * share).ceil() as u64).max(1);
    if h.len() < k {
        return None;
    }
    Some(h.quantile_us(k as f64 / h.len() as f64) as f64 / 1e3)
}

fn storm_reports(plan: &Plan, results: &[AgentResult]) -> Vec<StormReport> {
    let mut merged: BTreeMap<(u64, u32, u32), squall_proto::metrics::Storm> = BTreeMap::new();
    for r in results {
        for s in &r.storms {
            // a storm's bytes that do not decode leave its figures out, not the report
            let _ = merged.entry((s.at_ms, s.group, s.event)).or_default().add(s);
        }
    }
    merged
        .into_iter()
        .filter_map(|((at_ms, group, event), s)| {
            let g = plan.groups.get(group as usize)?;
            let action = g.events.get(event as usize).map_or("?", |e| e.action.name());
            Some(StormReport {
                group: g.name.clone(),
                event,
                action: action.to_string(),
                at_s: at_ms as f64 / 1e3,
                taken: s.taken,
                back: s.back.len(),
                failed_attempts: s.failed_attempts,
                abandoned: s.abandoned,
                attempts_mean: s.attempts_sum as f64 / s.back.len().max(1) as f64,
                attempts_max: s.attempts_max,
                failed_attempts_peak_per_s: s.failures_by_s.iter().copied().max().unwrap_or(0),
                recovered_99_ms: rank_ms(&s.back, s.taken, 0.99),
                recovered_100_ms: rank_ms(&s.back, s.taken, 1.0),
                policy_99_ms: rank_ms(&s.policy, s.taken, 0.99),
                policy_100_ms: rank_ms(&s.policy, s.taken, 1.0),
            })
        })
        .collect()
}

/// Last wills: what squall made the broker owe (clients taken away by `drop`, `silence`,
/// `disconnect_with_will`), against what the observers (subscribers whose filters match the
/// will's topic) received. Judged by the spec: see the README's "Last wills".
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WillsReport {
    /// Settled with every agent's records (false when the run did not finish).
    pub complete: bool,
    /// Owed wills × the observers of each one's topic.
    pub expected: u64,
    /// Owed wills received, once per observer.
    pub delivered: u64,
    pub missing: u64,
    /// A will received again by the same observer (legitimate at QoS 1).
    pub duplicates: u64,
    /// Wills the spec forbids: after a clean DISCONNECT, of a live connection, or of a
    /// delayed will whose session resumed in time.
    pub unexpected: u64,
    /// Wills the spec permits that squall did not cause (the connection failed on its own).
    pub allowed: u64,
    /// Owed wills received before the broker was due to act.
    pub early: u64,
    /// Records past the agents' or controller's bound: the counts may be short by this many.
    pub unsettled: u64,
}

impl WillsReport {
    pub fn new(l: &squall_proto::metrics::WillLedger, complete: bool) -> WillsReport {
        WillsReport {
            complete,
            expected: l.expected,
            delivered: l.delivered,
            missing: l.missing,
            duplicates: l.duplicates,
            unexpected: l.unexpected,
            allowed: l.allowed,
            early: l.early,
            unsettled: l.unsettled,
        }
    }

    pub fn get(&self, field: &str) -> Option<u64> {
        Some(match field {
            "expected" => self.expected,
            "delivered" => self.delivered,
            "missing" => self.missing,
            "duplicates" => self.duplicates,
            "unexpected" => self.unexpected,
            "allowed" => self.allowed,
            "early" => self.early,
            "unsettled" => self.unsettled,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorEntry {
    pub kind: String,
    /// The broker's return/reason code, where it gave one.
    pub code: Option<u8>,
    pub meaning: Option<String>,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ThresholdResult {
    pub rule: String,
    /// The measured value (µs for latencies); absent when there was no data.
    pub value: Option<f64>,
    pub pass: bool,
}

/// Everything a report is built from.
pub struct Inputs<'a> {
    pub plan: &'a Plan,
    pub agg: &'a Aggregate,
    pub results: &'a [AgentResult],
    /// The shared subscriptions split over agents, settled by the controller.
    pub settled: Option<&'a AgentResult>,
    pub targets: Vec<String>,
    pub embedded_broker: bool,
    pub agents: u32,
    pub per_agent: Vec<AgentReport>,
    pub start_skew_us: Option<f64>,
    pub started_at: std::time::SystemTime,
    pub elapsed_s: f64,
    pub publish_window_s: f64,
    /// Set when the run did not finish normally.
    pub failure: Option<(Status, String)>,
    pub warnings: Vec<String>,
    /// The settled will ledger, when a group sets a will.
    pub wills: Option<squall_proto::metrics::WillLedger>,
    /// Each stage's figures (a staged run or a search), and what a search found.
    pub stages: Vec<StageReport>,
    pub capacity: Option<CapacityReport>,
}

pub fn build(i: Inputs<'_>) -> Report {
    let plan = i.plan;
    let agg = i.agg;
    let c = &agg.counters;
    // every agent settled its ledger (a run that ended early, interrupted, may have)
    let complete = !i.results.is_empty() && i.results.len() as u32 == i.agents;
    let mut ledger = LedgerTotals::default();
    let mut by_group: BTreeMap<String, DeliveryCounts> = BTreeMap::new();
    let mut receivers = 0;
    let mut never = 0;
    for r in i.results.iter().chain(i.settled) {
        ledger.add(&r.ledger);
        receivers += r.receivers;
        never += r.receivers_never_subscribed;
        for (g, t) in &r.ledger_by_group {
            let e = by_group.entry(g.clone()).or_default();
            let mut d: Delivery = Delivery {
                expected: e.expected,
                received: e.delivered,
                lost: e.lost,
                duplicates: e.duplicates,
                out_of_order: e.out_of_order,
                missed_offline: e.missed_offline,
                session_lost: e.session_lost,
                refused: e.refused,
                phantom: e.phantom,
            };
            d.add(&t.all());
            *e = d.into();
        }
    }
    let window = i.publish_window_s.max(1e-9);
    let latency = latency_map(&agg.hists);
    let errors = agg
        .errors
        .iter()
        .map(|(e, n)| ErrorEntry {
            kind: e.name().to_string(),
            code: e.code(),
            meaning: meaning(e),
            count: *n,
        })
        .collect();
    let mut report = Report {
        schema_version: SCHEMA_VERSION,
        squall_version: env!("CARGO_PKG_VERSION").to_string(),
        scenario: plan.name.clone(),
        run_tag: format!("{:08x}", plan.run_tag),
        started_at: humantime::format_rfc3339_seconds(i.started_at).to_string(),
        elapsed_s: i.elapsed_s,
        publish_window_s: i.publish_window_s,
        drain_s: plan.drain.as_secs_f64(),
        read_coalesce_us: plan.read_coalesce.as_micros() as u64,
        targets: i.targets,
        embedded_broker: i.embedded_broker,
        labels: BTreeMap::new(),
        agents: i.agents,
        per_agent: i.per_agent,
        start_skew_us: i.start_skew_us,
        clients: plan.clients(),
        groups: plan
            .groups
            .iter()
            .enumerate()
            .map(|(index, g)| GroupReport {
                latency: agg.by_group.group(index as u32).map(latency_map).unwrap_or_default(),
                ..group_report(g)
            })
            .collect(),
        verdict: Verdict { status: Status::Pass, reasons: vec![] },
        counters: c.fields().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        rates: Rates {
            publish_per_s: c.published() as f64 / window,
            receive_per_s: c.received() as f64 / window,
            offered_per_s: (c.published() + c.behind_schedule) as f64 / window,
        },
        latency,
        delivery: DeliveryReport {
            complete,
            all: ledger.all().into(),
            by_qos: ledger.qos.iter().enumerate().map(|(q, d)| (q.to_string(), (*d).into())).collect(),
            by_group,
            receivers,
            receivers_never_subscribed: never,
        },
        wills: i.wills.as_ref().map(|l| WillsReport::new(l, complete)),
        storms: storm_reports(plan, i.results),
        outages: outage_reports(agg.start_ns(), i.results),
        errors,
        thresholds: vec![],
        timeline: agg.timeline.clone(),
        warnings: i.warnings,
        broker: None,
        broker_process: None,
        broker_sys: None,
        stages: i.stages,
        capacity: i.capacity,
    };
    let untracked: u64 = i.results.iter().map(|r| r.storms_untracked).sum();
    if untracked > 0 {
        report.warnings.push(format!(
            "{untracked} clients were taken by storms past the {} each agent tracks: their recovery is not in `storms`",
            squall_proto::metrics::storms::MAX_STORMS
        ));
    }
    judge_agents(&mut report);
    report.thresholds = plan
        .thresholds
        .iter()
        .map(|t| {
            let value = value_of(&report, agg, &t.metric);
            ThresholdResult {
                rule: t.expr.clone(),
                value,
                pass: value.is_some_and(|v| t.op.holds(v, t.value)),
            }
        })
        .collect();
    report.verdict = match i.failure {
        Some((status, why)) => Verdict { status, reasons: vec![why] },
        None => {
            let failed: Vec<String> = report
                .thresholds
                .iter()
                .zip(&plan.thresholds)
                .filter(|(r, _)| !r.pass)
                .map(|(r, t)| describe_failure(r, t))
                .collect();
            Verdict { status: if failed.is_empty() { Status::Pass } else { Status::Fail }, reasons: failed }
        }
    };
    report
}

/// Timer lag at p99 above which an agent's figures are suspect: its sends went out this late
/// against their schedule, and every corrected latency it measured carries that. Set well
/// above the timer's own floor (tokio's 1 ms tick: p99 1.5–2 ms idle, 6.6 ms seen on this
/// 2-core box with two agents, a broker and a controller on it), so it flags a tester that
/// fell behind, not the floor.
pub const LAG_SUSPECT_US: u64 = 20_000;

/// Why an agent's figures are suspect (the tester, not the broker, may have been the
/// bottleneck); empty when it was healthy. Its CPU is not judged when the embedded broker
/// shares its process.
pub fn suspect_reasons(a: &AgentReport, embedded_broker: bool) -> Vec<String> {
    let mut why = Vec::new();
    if cpu_suspect(a.cores, a.cpu_peak_cores, embedded_broker) {
        why.push(format!(
            "it used {:.0} % of its {} core{} in its busiest second",
            100.0 * a.cpu_peak_cores / a.cores as f64,
            a.cores,
            if a.cores == 1 { "" } else { "s" }
        ));
    }
    if let Some(lag) = a.lag_p99_us.filter(|l| lag_suspect(*l)) {
        why.push(format!(
            "its sends went out {} late at p99 against their schedule (timer lag; its corrected latencies carry it)",
            text::fmt_us(lag as f64)
        ));
    }
    why
}

/// Busier than this makes an agent's figures suspect: within 10 % of its cores (not judged
/// when the embedded broker shares its process).
pub fn cpu_suspect(cores: u32, cpu_peak_cores: f64, embedded_broker: bool) -> bool {
    !embedded_broker && cores > 0 && cpu_peak_cores >= 0.9 * cores as f64
}

pub fn lag_suspect(lag_p99_us: u64) -> bool {
    lag_p99_us > LAG_SUSPECT_US
}

/// Judges each agent's health, and warns about the suspect ones.
fn judge_agents(report: &mut Report) {
    for a in &mut report.per_agent {
        a.suspect = suspect_reasons(a, report.embedded_broker);
        if !a.suspect.is_empty() {
            report.warnings.push(format!(
                "agent {}'s figures are suspect: {}; the tester may have been the bottleneck: spread the load over more agents or cores",
                a.name,
                a.suspect.join("; ")
            ));
        }
    }
}

fn describe_failure(r: &ThresholdResult, t: &Threshold) -> String {
    match r.value {
        None => format!("{}: no data (nothing was measured for this metric)", r.rule),
        Some(v) => match t.metric {
            MetricRef::Latency { stat: Stat::Count, .. } | MetricRef::Count(_) => {
                format!("{}: measured {}", r.rule, fmt_num(v))
            }
            MetricRef::Latency { .. } => format!("{}: measured {}", r.rule, text::fmt_us(v)),
        },
    }
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v:.2}") }
}

fn meaning(e: &LoadError) -> Option<String> {
    let code = e.code()?;
    Some(
        match e {
            // 3.1.1 return codes are 1–5; MQTT 5 reason codes are ≥ 0x80
            LoadError::ConnectRefused { .. } if code < 0x80 => connack_meaning(Protocol::V311, code),
            _ => reason_meaning(code),
        }
        .to_string(),
    )
}

fn group_report(g: &squall_proto::plan::GroupSpec) -> GroupReport {
    GroupReport {
        name: g.name.clone(),
        clients: g.clients as u64,
        protocol: g.protocol.to_string(),
        publishes: g.publish.as_ref().map(|p| {
            let rate = match p.rate {
                RateSpec::IntervalMs(ms) => format!("every {ms}ms per client"),
                RateSpec::GroupPerSec(r) => format!("{r}/s for the group"),
            };
            let payload = match &p.payload {
                PayloadSpec::Size(n) => format!("{n} B"),
                PayloadSpec::Text(t) => format!("{} B", t.len() + squall_proto::plan::HEADER_LEN),
                PayloadSpec::Raw(t) => format!("{} B raw, not measured", t.len()),
            };
            format!("{} QoS {} {rate}, {payload}", p.topic, p.qos)
        }),
        subscribes: g.subscribe.as_ref().map(|s| format!("{} QoS {}", s.filters.join(", "), s.qos)),
        latency: BTreeMap::new(),
    }
}

/// Percentiles of every metric that has data.
pub(crate) fn latency_map(h: &squall_proto::metrics::Hists) -> BTreeMap<String, LatencyReport> {
    let mut latency = BTreeMap::new();
    for m in Metric::ALL {
        let raw = h.get(m, Timing::Raw);
        let cor = h.get(m, Timing::Corrected);
        if raw.is_empty() && cor.is_empty() {
            continue;
        }
        latency.insert(
            m.name().to_string(),
            LatencyReport {
                raw: (!raw.is_empty()).then(|| raw.summary().into()),
                corrected: (!cor.is_empty()).then(|| cor.summary().into()),
            },
        );
    }
    latency
}

/// The value a threshold compares, from the report (counts) or the merged histograms
/// (any quantile).
pub fn value_of(r: &Report, agg: &Aggregate, m: &MetricRef) -> Option<f64> {
    match m {
        MetricRef::Latency { metric, timing, stat, group: None } => {
            latency_value(agg.hists.get(*metric, *timing), *stat)
        }
        MetricRef::Latency { metric, timing, stat, group: Some(name) } => match agg.group_hists(name) {
            Some(h) => latency_value(h.get(*metric, *timing), *stat),
            None => (*stat == Stat::Count).then_some(0.0),
        },
        MetricRef::Count(name) => count_value(r, name),
    }
}

fn latency_value(h: &Latency, stat: Stat) -> Option<f64> {
    if h.is_empty() {
        return (stat == Stat::Count).then_some(0.0);
    }
    let s = h.summary();
    Some(match stat {
        Stat::Quantile(q) => h.quantile_us(q) as f64,
        Stat::Min => s.min_us as f64,
        Stat::Mean => s.mean_us,
        Stat::Max => s.max_us as f64,
        Stat::Count => s.count as f64,
    })
}

/// A metric's value over the run so far, for `abort` rules (only metrics that are
/// [`known_mid_run`](MetricRef::known_mid_run)).
pub fn live_value(agg: &Aggregate, m: &MetricRef) -> Option<f64> {
    let c = &agg.counters;
    match m {
        MetricRef::Latency { metric, timing, stat, group: None } => {
            latency_value(agg.hists.get(*metric, *timing), *stat)
        }
        MetricRef::Latency { metric, timing, stat, group: Some(name) } => match agg.group_hists(name) {
            Some(h) => latency_value(h.get(*metric, *timing), *stat),
            None => (*stat == Stat::Count).then_some(0.0),
        },
        MetricRef::Count(name) => {
            let parts: Vec<&str> = name.split('.').collect();
            let v = match parts.as_slice() {
                ["errors"] => agg.error_count(),
                ["connect", "errors"] => c.connect_failures,
                ["errors", kind] => {
                    agg.errors.iter().filter(|(e, _)| e.name() == *kind).map(|(_, n)| n).sum()
                }
                ["published"] => c.published(),
                ["missing"] => return Some(c.missing() as f64),
                ["received"] => c.received(),
                [counter] => c.fields().into_iter().find(|(n, _)| n == counter)?.1,
                _ => return None,
            };
            Some(v as f64)
        }
    }
}

fn count_value(r: &Report, name: &str) -> Option<f64> {
    let d = |c: &DeliveryCounts, field: &str| -> Option<u64> {
        Some(match field {
            "lost" => c.lost,
            "delivered" => c.delivered,
            "expected" => c.expected,
            "duplicates" => c.duplicates,
            "out_of_order" => c.out_of_order,
            "missed_offline" => c.missed_offline,
            "session_lost" => c.session_lost,
            "refused" => c.refused,
            "phantom" => c.phantom,
            _ => return None,
        })
    };
    let ledger_value = |field: &str, c: &DeliveryCounts| -> Option<f64> {
        // a ledger that was never settled has no value to compare
        if !r.delivery.complete { None } else { d(c, field).map(|v| v as f64) }
    };
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        ["errors"] => Some(r.errors.iter().map(|e| e.count).sum::<u64>() as f64),
        ["connect", "errors"] => Some(r.counters.get("connect_failures").copied().unwrap_or(0) as f64),
        ["errors", kind] => {
            Some(r.errors.iter().filter(|e| e.kind == *kind).map(|e| e.count).sum::<u64>() as f64)
        }
        ["published"] => Some(
            ["published_qos0", "published_qos1", "published_qos2"].iter().map(|k| r.counters[*k]).sum::<u64>()
                as f64,
        ),
        ["received"] => Some(
            ["received_qos0", "received_qos1", "received_qos2"].iter().map(|k| r.counters[*k]).sum::<u64>()
                as f64,
        ),
        ["wills", field] => {
            let w = r.wills.as_ref()?;
            // an unsettled ledger has no value to compare
            if !w.complete { None } else { w.get(field).map(|v| v as f64) }
        }
        ["agents_suspect"] => Some(r.per_agent.iter().filter(|a| !a.suspect.is_empty()).count() as f64),
        ["missing"] => {
            let c = |k: &str| r.counters.get(k).copied().unwrap_or(0) as f64;
            Some(c("gaps_opened") - c("gaps_filled"))
        }
        ["capacity"] => r.capacity.as_ref().and_then(|c| c.found.as_ref()).map(|s| s.offered_rate),
        ["publish", "rate"] => Some(r.rates.publish_per_s),
        ["receive", "rate"] => Some(r.rates.receive_per_s),
        [field] if d(&r.delivery.all, field).is_some() => ledger_value(field, &r.delivery.all),
        [field, q] if q.starts_with("qos") => {
            let c = r.delivery.by_qos.get(&q[3..])?;
            ledger_value(field, c)
        }
        [counter] => r.counters.get(*counter).map(|v| *v as f64),
        _ => None,
    }
}

/// The JSON Schema of [`Report`], as committed in `schemas/report.schema.json`.
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Report)).expect("a schema serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(cores: u32, cpu_peak_cores: f64, lag_p99_us: Option<u64>) -> AgentReport {
        let mut a = crate::aggregate::Aggregate::new(0).agent_report(0, "a1".into(), 10);
        a.cores = cores;
        a.cpu_peak_cores = cpu_peak_cores;
        a.lag_p99_us = lag_p99_us;
        a
    }

    #[test]
    fn an_agent_is_suspect_for_cpu_or_lag_and_says_which() {
        assert!(suspect_reasons(&agent(2, 1.7, Some(2_000)), false).is_empty());
        let cpu = suspect_reasons(&agent(2, 1.9, None), false);
        assert_eq!(cpu, ["it used 95 % of its 2 cores in its busiest second"]);
        assert!(suspect_reasons(&agent(2, 1.9, None), true).is_empty(), "the embedded broker shares its CPU");
        let lag = suspect_reasons(&agent(2, 0.1, Some(LAG_SUSPECT_US + 1)), true);
        assert_eq!(lag.len(), 1);
        assert!(lag[0].contains("late at p99"), "{lag:?}");
        assert_eq!(suspect_reasons(&agent(1, 1.0, Some(50_000)), false).len(), 2);
    }
}
