//! Drives a run: hands each agent its assignment, waits until every client has made its first
//! attempt (a barrier across agents), opens the publishing window, gathers every stream's final
//! count, has the agents settle their ledgers, and builds the report.
//!
//! Agents are reached only through [`AgentLink`]s: [`Command`]s down, [`AgentEvent`]s up. Where
//! the links come from is the caller's ([`Agents`]): one engine in the same process for
//! `squall run`, agents attached over gRPC for `squall controller` (see [`crate::link`]). The
//! loop below is the same for both.

use std::future::Future;
use std::time::{Duration, SystemTime};

use squall_proto::clock::Clock;
use squall_proto::link::{AgentEvent, AgentResult, Command};
use squall_proto::metrics::StreamFinal;
use squall_proto::plan::Assignment;
use squall_proto::target::TargetUrl;
use tokio::sync::{mpsc, watch};

use crate::aggregate::Aggregate;
use crate::clock_offset::ClockEstimate;
use crate::report::live::{self, LiveMode};
use crate::report::{self, AgentStatus, Inputs, Report, Status};
use crate::scenario::Plan;
use crate::segment::segment;
use crate::stages::AgentInfo;
use crate::stepper::Stepper;

/// One agent as the coordinator sees it.
pub struct AgentLink {
    pub name: String,
    pub commands: mpsc::Sender<Command>,
    /// Closes when the agent is gone (its process ended, or its link was lost).
    pub events: mpsc::Receiver<AgentEvent>,
    /// The agent's clock against the controller's, for remote agents.
    pub clock: Option<watch::Receiver<ClockEstimate>>,
    /// What its link carried, for remote agents.
    pub link: Option<std::sync::Arc<crate::link::LinkStats>>,
    /// The cores it runs on (its engine threads).
    pub cores: u32,
}

/// Where a run's agents come from.
pub trait Agents {
    /// Each agent's weight (its share of every group), in agent order; at least one.
    fn weights(&self) -> Vec<u32>;
    /// Gives each agent its assignment; their links in the same order, or why the run cannot start.
    fn start(self, assignments: Vec<Assignment>) -> impl Future<Output = Result<Vec<AgentLink>, StartError>>;
}

/// What a run needs beyond its plan.
pub struct RunSetup {
    pub plan: Plan,
    /// Where clients connect (the plan's targets, or the embedded broker's address).
    pub targets: Vec<TargetUrl>,
    pub embedded_broker: bool,
    pub live: LiveMode,
    /// Write a soak log (HdrHistogram interval log and counters journal) into this directory
    /// as the run goes.
    pub soak_log: Option<std::path::PathBuf>,
    /// Serve live metrics for Prometheus (`GET /metrics`) on this address during the run.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The broker's process on this host, to read its CPU and memory as the run goes.
    pub broker_pid: Option<u32>,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The assignment cannot be run as written (TLS material, a plan an agent rejects): the
    /// user's to fix (exit code 2).
    #[error("{0}")]
    Invalid(String),
    /// An agent could not take its assignment (a refusal, a target that does not resolve, a
    /// lost agent) (exit code 3).
    #[error("{0}")]
    Runtime(String),
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Start(#[from] StartError),
}

/// The spread of the agents' start lateness, µs: `None` unless every agent reported one and
/// there is more than one agent.
fn start_skew_us(late: &[Option<i64>]) -> Option<f64> {
    if late.len() < 2 {
        return None;
    }
    let late: Vec<i64> = late.iter().copied().collect::<Option<_>>()?;
    let (lo, hi) = (late.iter().min()?, late.iter().max()?);
    Some((hi - lo) as f64 / 1e3)
}

/// The agents whose figures look suspect over the live window, with why, for the live line.
/// `agent` gives an agent's name and cores by index.
fn live_suspects<'a>(
    health: Vec<crate::aggregate::LiveHealth>,
    agent: impl Fn(u32) -> Option<(&'a str, u32)>,
    embedded_broker: bool,
) -> Vec<String> {
    health
        .into_iter()
        .filter_map(|h| {
            let (name, cores) = agent(h.agent)?;
            let mut why = Vec::new();
            if report::cpu_suspect(cores, h.cpu_peak_cores, embedded_broker) {
                why.push(format!("CPU {:.0}%", 100.0 * h.cpu_peak_cores / cores as f64));
            }
            if let Some(l) = h.lag_p99_us.filter(|l| report::lag_suspect(*l)) {
                why.push(format!("lag p99 {}", report::text::fmt_us(l as f64)));
            }
            (!why.is_empty()).then(|| format!("{name}: {}", why.join(" ")))
        })
        .collect()
}

/// Ends the publishing window `w` at `now` (if it is still open) on every agent: a second
/// Publish may only shorten the window.
fn cut_window(w: &mut (u64, u64), now: u64, commands: &[mpsc::Sender<Command>]) {
    if now < w.1 {
        w.1 = now;
        for tx in commands {
            let _ = tx.try_send(Command::Publish { start_unix_ns: w.0, until_unix_ns: now });
        }
    }
}

/// The first `abort` rule that fails on the run so far, said for the report.
fn abort_rule_failed(rules: &[crate::thresholds::Threshold], agg: &Aggregate) -> Option<String> {
    rules.iter().filter(|t| t.abort).find_map(|t| {
        let v = report::live_value(agg, &t.metric)?;
        (!t.op.holds(v, t.value)).then(|| {
            format!("abort rule `{}` failed during the run (measured {v}): the run was stopped", t.expr)
        })
    })
}

/// After an interrupt, how long the agents may take to settle before the run stops at once,
/// and the drain they get.
const SETTLE_AFTER_INTERRUPT: Duration = Duration::from_secs(10);
const INTERRUPTED_DRAIN: Duration = Duration::from_secs(1);

enum Incoming {
    Event(usize, AgentEvent),
    /// The agent's event channel closed.
    Gone(usize),
}

/// Runs the plan on `agents` to the end (or until `interrupt` completes) and returns the report.
pub async fn run(
    setup: RunSetup,
    agents: impl Agents,
    interrupt: impl Future<Output = ()>,
) -> Result<Report, RunError> {
    let RunSetup { plan, targets, embedded_broker, live: live_mode, soak_log, metrics_listen, broker_pid } =
        setup;
    let mut broker_proc = match broker_pid {
        Some(pid) => Some(crate::broker_process::Sampler::start(pid).map_err(StartError::Invalid)?),
        None => None,
    };
    let started_at = SystemTime::now();
    let clock = Clock::new();
    let start_ns = clock.now_ns();
    let assignments = segment(&plan, &targets, &agents.weights());
    let agent_clients: Vec<u64> = assignments.iter().map(|a| a.clients()).collect();
    // shared subscriptions whose members run on several agents are settled here
    let holders: Vec<bool> =
        assignments.iter().map(|a| a.groups.iter().any(|g| g.splits_a_share())).collect();
    let n_streams = assignments.first().map_or(0, |a| a.publish_ranges.iter().map(|r| r.clients).sum());
    let mut shares = crate::shares::ShareBook::new(
        &holders,
        n_streams,
        plan.groups.iter().map(|g| g.name.clone()).collect(),
    );
    // every stream's final count, kept for them
    let mut all_streams: Vec<StreamFinal> = Vec::new();
    let metrics_listener = match metrics_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            StartError::Invalid(format!("cannot serve metrics on {addr}: {e} (is the port taken?)"))
        })?),
        None => None,
    };
    let soak = match soak_log {
        Some(dir) => {
            let meta = plan.soak_meta(
                start_ns,
                &humantime::format_rfc3339_seconds(started_at).to_string(),
                targets.iter().map(|t| t.to_string()).collect(),
                embedded_broker,
                assignments.len() as u32,
            );
            let log = crate::soak_log::SoakLog::create(&dir, started_at, &plan, meta).map_err(|e| {
                StartError::Invalid(format!("cannot write the soak log in {}: {e}", dir.display()))
            })?;
            Some(log)
        }
        None => None,
    };
    let links = agents.start(assignments).await?;
    let n_agents = links.len();

    let (tx, mut rx) = mpsc::channel::<Incoming>(1024);
    let mut commands = Vec::new();
    let mut agent_info = Vec::new();
    for (i, link) in links.into_iter().enumerate() {
        let AgentLink { name, commands: cmd, mut events, clock, link, cores } = link;
        commands.push(cmd);
        agent_info.push((name, clock, link, cores));
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if tx.send(Incoming::Event(i, ev)).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(Incoming::Gone(i)).await;
        });
    }
    drop(tx);
    let prom = metrics_listener.map(|l| {
        let live = crate::prometheus::Live::new(
            plan.groups.iter().map(|g| g.name.clone()).collect(),
            agent_info.iter().map(|(name, ..)| name.clone()).collect(),
        );
        let task = tokio::spawn(crate::prometheus::serve(l, live.clone()));
        (live, task)
    });
    // per agent: what it ended as
    let mut status: Vec<Option<AgentStatus>> = vec![None; n_agents];
    // per agent: how late it woke for the start instant, ns
    let mut start_late: Vec<Option<i64>> = vec![None; n_agents];

    let clients = plan.clients();
    let mut agg = Aggregate::new(start_ns).with_groups(plan.groups.iter().map(|g| g.name.clone()).collect());
    let mut warnings = Vec::new();
    let (mut ready, mut done_publishing, mut finished) = (0, 0, 0);
    let mut results: Vec<AgentResult> = Vec::new();
    let mut streams: Vec<StreamFinal> = Vec::new();
    let mut window: Option<(u64, u64)> = None;
    let ramp_deadline = tokio::time::Instant::now() + plan.ramp_timeout;
    let hard_deadline = tokio::time::Instant::now() + plan.max_duration + Duration::from_secs(30);
    // the live line follows the snapshots: one update per interval, once every agent reported it
    let mut live_seq: std::collections::HashMap<usize, u64> = std::collections::HashMap::new();
    let mut shown_seq = 0u64;
    // interrupted while publishing: the window was cut short, and the run settles by then
    // (settle by, the verdict, why): stopped early by an interrupt or an abort rule
    let mut stopping: Option<(tokio::time::Instant, Status, String)> = None;
    tokio::pin!(interrupt);

    // stages, or a search's steps
    let mut stepper = Stepper::new(&plan, start_ns, n_agents, embedded_broker);
    let open_window = |window: &mut Option<(u64, u64)>,
                       stepper: &mut Option<Stepper>,
                       commands: &[mpsc::Sender<Command>]| {
        // a little ahead, so every agent has the command before the window opens
        let start = clock.now_ns() + 100_000_000;
        let until = start + plan.duration.as_nanos() as u64;
        *window = Some((start, until));
        broadcast(commands, Command::Publish { start_unix_ns: start, until_unix_ns: until });
        if let Some(st) = stepper.as_mut() {
            st.open(start, commands);
        }
    };

    let failure: Option<(Status, String)> = loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                None => break Some((Status::Error, "the agents stopped before the run finished".into())),
                Some(Incoming::Gone(i)) => {
                    shares.done(i);
                    if status[i].is_none() {
                        status[i] = Some(AgentStatus::Lost);
                        break Some((Status::Error, format!(
                            "agent {} was lost mid-run: its data up to its last snapshot is in the report, the rest is missing",
                            agent_info[i].0
                        )));
                    }
                }
                Some(Incoming::Event(i, AgentEvent::Snapshot(s))) => {
                    if let Some(log) = &soak {
                        log.snapshot(&s);
                    }
                    if let Some((live, _)) = &prom {
                        live.apply(&s);
                    }
                    if let Some(b) = broker_proc.as_mut() {
                        b.sample();
                    }
                    if let Err(e) = agg.apply(&s) {
                        break Some((Status::Error, format!("agent {} sent a broken snapshot: {e}", s.agent)));
                    }
                    if let (Some(st), Some(w)) = (stepper.as_mut(), window.as_mut()) {
                        let infos = agent_infos(&agent_info);
                        let now = clock.now_ns();
                        if st.on_snapshot(i, &s, &infos, *w, now, stopping.is_some(), &commands, live_mode) {
                            // the search is over: the rest of the window is not needed
                            cut_window(w, now, &commands);
                        }
                    }
                    if stopping.is_none()
                        && let Some(why) = abort_rule_failed(&plan.thresholds, &agg)
                    {
                        tracing::warn!("{why}; settling what was sent");
                        // a rule failed mid-window: cut it now and settle; before the window
                        // (a connect-error rule in the ramp), there is nothing to settle
                        let Some(w) = window.as_mut() else { break Some((Status::Fail, why)) };
                        cut_window(w, clock.now_ns(), &commands);
                        stopping = Some((tokio::time::Instant::now() + SETTLE_AFTER_INTERRUPT, Status::Fail, why));
                    }
                    live_seq.insert(i, s.seq + 1);
                    let all = if live_seq.len() == n_agents { live_seq.values().copied().min().unwrap_or(0) } else { 0 };
                    if all > shown_seq {
                        shown_seq = all;
                        let mut view = agg.take_live(clock.now_ns(), clients);
                        let cores = |a: u32| agent_info.get(a as usize).map(|(name, _, _, cores)| (name.as_str(), *cores));
                        view.suspect = live_suspects(agg.take_live_health(), cores, embedded_broker);
                        view.stage = stepper.as_ref().and_then(|st| st.label(clock.now_ns()));
                        live::show(live_mode, &view);
                    }
                }
                Some(Incoming::Event(_, AgentEvent::Ready { .. })) => {
                    ready += 1;
                    if ready == n_agents && window.is_none() {
                        open_window(&mut window, &mut stepper, &commands);
                    }
                }
                Some(Incoming::Event(i, AgentEvent::Started { late_ns })) => start_late[i] = Some(late_ns),
                Some(Incoming::Event(i, AgentEvent::Receipts(r))) => {
                    if let Err(e) = shares.receipts(i, r) {
                        status[i] = Some(AgentStatus::Failed);
                        break Some((Status::Error, format!("agent {} sent broken receipts: {e}", agent_info[i].0)));
                    }
                }
                Some(Incoming::Event(_, AgentEvent::PublishDone { streams: s })) => {
                    streams.extend(s);
                    done_publishing += 1;
                    if done_publishing == n_agents {
                        if shares.active() {
                            all_streams = streams.clone();
                        }
                        // interrupted: a short drain, so the run ends soon as asked
                        let drain = if stopping.is_some() { plan.drain.min(INTERRUPTED_DRAIN) } else { plan.drain };
                        let c = Command::Finish { streams: std::mem::take(&mut streams), drain_ms: drain.as_millis() as u64 };
                        broadcast(&commands, c);
                    }
                }
                Some(Incoming::Event(i, AgentEvent::Finished(r))) => {
                    shares.done(i);
                    status[i] = Some(AgentStatus::Finished);
                    results.push(r);
                    finished += 1;
                    if finished == n_agents {
                        break stopping.map(|(_, status, why)| (status, why));
                    }
                }
                Some(Incoming::Event(i, AgentEvent::Failed { message })) => {
                    shares.done(i);
                    status[i] = Some(AgentStatus::Failed);
                    break Some((Status::Error, format!("agent {}: {message}", agent_info[i].0)));
                }
            },
            _ = tokio::time::sleep_until(ramp_deadline), if window.is_none() => {
                let msg = format!(
                    "ramp-up did not finish within {} ({} of {clients} clients connected); publishing anyway",
                    humantime::format_duration(plan.ramp_timeout),
                    agg.connected()
                );
                tracing::warn!("{msg}");
                warnings.push(msg);
                open_window(&mut window, &mut stepper, &commands);
            }
            _ = tokio::time::sleep_until(hard_deadline) => {
                break Some((Status::Error, format!("the run exceeded its maximum duration ({})", humantime::format_duration(plan.max_duration))));
            }
            _ = &mut interrupt, if stopping.is_none() => {
                // publishing or draining: cut the window now, then settle as a run that ended
                // (bounded); before the window, there is nothing to settle
                let Some(w) = window.as_mut() else { break Some((Status::Aborted, "interrupted".into())) };
                cut_window(w, clock.now_ns(), &commands);
                tracing::warn!("Interrupted: publishing stops now; settling what was sent (at most {})", humantime::format_duration(SETTLE_AFTER_INTERRUPT));
                let why = "interrupted: the publishing window was cut short; the ledger settled on what was sent".to_string();
                stopping = Some((tokio::time::Instant::now() + SETTLE_AFTER_INTERRUPT, Status::Aborted, why));
            }
            _ = tokio::time::sleep_until(stopping.as_ref().map_or_else(tokio::time::Instant::now, |s| s.0)), if stopping.is_some() => {
                let (_, status, why) = stopping.take().unwrap_or((tokio::time::Instant::now(), Status::Aborted, String::new()));
                break Some((status, format!("{why}; the agents did not settle within {}", humantime::format_duration(SETTLE_AFTER_INTERRUPT))));
            }
        }
    };
    if failure.is_some() {
        // stop all load, then take what the agents still report (their last snapshots)
        broadcast(&commands, Command::Abort);
        drop(commands);
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(inc) = rx.recv().await {
                match inc {
                    Incoming::Event(_, AgentEvent::Snapshot(s)) => {
                        let _ = agg.apply(&s);
                    }
                    Incoming::Event(i, AgentEvent::Receipts(r)) => {
                        let _ = shares.receipts(i, r);
                    }
                    Incoming::Gone(i) if status[i].is_none() => status[i] = Some(AgentStatus::Aborted),
                    _ => {}
                }
            }
        })
        .await;
    }
    live::finish(live_mode);
    agg.flush();

    let now = clock.now_ns();
    let publish_window_s = match window {
        Some((start, until)) => (until.min(now).saturating_sub(start)) as f64 / 1e9,
        None => 0.0,
    };
    if agg.missing_snapshots > 0 {
        warnings.push(format!(
            "{} snapshots never arrived: totals are short by their counts",
            agg.missing_snapshots
        ));
    }
    let c = &agg.counters;
    if c.behind_schedule > 0 {
        warnings.push(format!(
            "the offered load fell short: {} scheduled messages were never sent (clients disconnected, or their in-flight window stayed full)",
            c.behind_schedule
        ));
    }
    if c.received_stale > 0 {
        warnings.push(format!(
            "{} messages of an earlier run were received (retained on the broker?); they are not counted",
            c.received_stale
        ));
    }
    if c.received_foreign > 0 {
        warnings.push(format!(
            "{} messages without squall's header were received (another publisher on these topics?)",
            c.received_foreign
        ));
    }
    let publishers = plan.groups.iter().any(|g| g.publish.as_ref().is_some_and(|p| p.payload.measured()));
    let subscribers = plan.groups.iter().any(|g| g.subscribe.is_some());
    if publishers && !subscribers {
        warnings.push("no group subscribes: end-to-end latency and delivery were not measured".into());
    }
    let mut failure = failure;
    if failure.is_none() && c.connects == 0 {
        let first = agg.errors.keys().next().map(|e| e.name()).unwrap_or("no error recorded");
        failure = Some((
            Status::Error,
            format!(
                "no client could connect to {} (most common error: {first}); is the broker up and reachable?",
                targets.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    // the split shares, one receiver each, settled only when every agent settled its own
    let settled = if results.len() == n_agents && shares.active() {
        let (settled, w) = shares.settle(&all_streams, &results);
        warnings.extend(w);
        settled
    } else {
        None
    };
    let wills = plan.groups.iter().any(|g| g.will.is_some()).then(|| {
        let observers: Vec<_> =
            results.iter().chain(&settled).flat_map(|r| r.observers.iter().cloned()).collect();
        agg.settle_wills(&observers)
    });
    let (stage_reports, capacity) = match stepper {
        Some(st) => {
            let (reports, capacity, w) = st.finish(&agent_infos(&agent_info));
            warnings.extend(w);
            (reports, capacity)
        }
        None => (Vec::new(), None),
    };
    let mut report = report::build(Inputs {
        plan: &plan,
        agg: &agg,
        results: &results,
        settled: settled.as_ref(),
        targets: targets.iter().map(|t| t.to_string()).collect(),
        embedded_broker,
        agents: n_agents as u32,
        per_agent: agent_info
            .iter()
            .enumerate()
            .map(|(i, (name, clock, link, cores))| {
                let mut r = agg.agent_report(i as u32, name.clone(), agent_clients[i]);
                r.status = status[i].unwrap_or(AgentStatus::Aborted);
                r.clock = clock.as_ref().map(|c| (*c.borrow()).into());
                r.start_late_us = start_late[i].map(|ns| ns as f64 / 1e3);
                r.cores = *cores;
                r.link_bytes_in =
                    link.as_ref().map(|l| l.bytes_in.load(std::sync::atomic::Ordering::Relaxed));
                r.link_resumes = link.as_ref().map(|l| l.resumes.load(std::sync::atomic::Ordering::Relaxed));
                r
            })
            .collect(),
        start_skew_us: start_skew_us(&start_late),
        started_at,
        elapsed_s: now.saturating_sub(start_ns) as f64 / 1e9,
        publish_window_s,
        failure,
        warnings,
        wills,
        stages: stage_reports,
        capacity,
    });
    clock_warnings(&mut report);
    report.broker_process = broker_proc.map(|b| b.finish());
    if let Some((_, task)) = prom {
        task.abort();
    }
    if let Some(log) = soak {
        let dir = log.dir.clone();
        if let Err(e) = log.finish(&report) {
            report.warnings.push(format!("the soak log in {} is incomplete: {e}", dir.display()));
        }
    }
    Ok(report)
}

/// Sends `c` to every agent. A full or closed channel means the agent is gone; its events say so.
pub(crate) fn broadcast(commands: &[mpsc::Sender<Command>], c: Command) {
    for tx in commands {
        let _ = tx.try_send(c.clone());
    }
}

/// What the coordinator keeps of each agent: its name, clock, link and cores.
type AgentEntry =
    (String, Option<watch::Receiver<ClockEstimate>>, Option<std::sync::Arc<crate::link::LinkStats>>, u32);

/// Each agent's name and cores, as the stages' tester health needs them.
fn agent_infos(info: &[AgentEntry]) -> Vec<AgentInfo<'_>> {
    info.iter().map(|(name, _, _, cores)| AgentInfo { name, cores: *cores }).collect()
}

/// An agent whose clock offset is known only to ± more than a tenth of the end-to-end median
/// makes cross-agent latencies uncertain by that much: say so.
fn clock_warnings(report: &mut Report) {
    if report.per_agent.len() < 2 {
        return;
    }
    let Some(p50) = report.latency.get("e2e").and_then(|l| l.raw.as_ref()).map(|p| p.p50_us) else {
        return;
    };
    for a in &report.per_agent {
        let Some(c) = a.clock else { continue };
        if c.bound_us > 0.1 * p50 as f64 && c.bound_us > 50.0 {
            report.warnings.push(format!(
                "agent {}'s clock offset is known to ±{:.0} µs, not small against the end-to-end p50 of {p50} µs: \
                 latencies between its clients and other agents' are uncertain by that much (a slow or asymmetric \
                 controller link widens the bound; placing publishers and their subscribers on one agent avoids it)",
                a.name, c.bound_us
            ));
        }
    }
}
