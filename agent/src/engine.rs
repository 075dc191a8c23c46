//! Runs one [`Assignment`]: the agent's side of a run, in phases the controller drives.
//!
//! ```text
//! start ──► ramp (connect, subscribe) ──Ready──► wait for Publish ──► publish window
//!       ──PublishDone{streams}──► wait for Finish{all streams} ──► drain ──► disconnect
//!       ──► ledgers finalized ──Finished──►
//! ```
//! Snapshots flow every interval throughout. The engine talks to its controller only through
//! [`Command`]s in and [`AgentEvent`]s out — plain data — so the controller can be in the same
//! process (`squall run`) or across gRPC, with the same logic on both sides.
//!
//! Safety: if the command channel closes (the controller is gone) the engine aborts every
//! client at once; and whatever the controller says, the engine aborts at `max_duration`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::client::window::ConnectWindow;
use crate::client::{Client, Countdown, GroupRuntime, Outcome, Phase, Shared, Unsent};
use crate::lanes::Lanes;
use crate::metrics::shares::ShareReceipts;
use crate::metrics::{Collector, Expectations, LedgerTotals, ReceiverLedger, Recorder, StreamFinal};
use crate::mqtt::tls;
use crate::mqtt::transport::Endpoint;
use squall_proto::clock::Clock;
pub use squall_proto::link::{AgentEvent, AgentResult, Command};
use squall_proto::metrics::Observers;
use squall_proto::plan::{Assignment, PlanError};

/// The controller's end of a running agent.
pub struct AgentHandle {
    pub commands: mpsc::Sender<Command>,
    pub events: mpsc::Receiver<AgentEvent>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("cannot resolve {target}: {source}")]
    Resolve { target: String, source: std::io::Error },
    #[error("cannot start the engine's threads or their timers (timerfd): {0}")]
    Timer(std::io::Error),
}

/// Checks and prepares an assignment (TLS material, DNS) and starts it on the current tokio
/// runtime. Errors here are the user's to fix; errors later are results of the run.
/// `clock` is the agent's own (the host's, or a test's skewed one); the engine reads it shifted
/// by the assignment's clock offset, onto the controller's time base.
pub async fn start(a: Assignment, clock: Clock) -> Result<AgentHandle, StartError> {
    start_with_threads(a, clock, None).await
}

/// [`start`] with the clients on `threads` engine threads (lanes) rather than one per worker
/// of the runtime it is started on.
pub async fn start_with_threads(
    a: Assignment,
    clock: Clock,
    threads: Option<usize>,
) -> Result<AgentHandle, StartError> {
    a.validate()?;
    let needs_tls = a.targets.iter().any(|t| t.tls);
    let tls_config = if needs_tls { Some(tls::client_config(&a.tls)?) } else { None };
    let mut endpoints = Vec::new();
    for url in &a.targets {
        let tls = match (&tls_config, url.tls) {
            (Some(cfg), true) => Some((cfg.clone(), tls::server_name(&a.tls, &url.host)?)),
            _ => None,
        };
        let ep = Endpoint::resolve(url, tls)
            .await
            .map_err(|source| StartError::Resolve { target: url.to_string(), source })?;
        endpoints.push(ep);
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let (ev_tx, ev_rx) = mpsc::channel(1024);
    let clock = clock.shifted(a.clock_offset_ns.saturating_neg());
    // the clients' threads: as asked, else as many as the runtime the engine was started on
    // has workers
    let gap = Duration::from_micros(a.timer_coalesce_us as u64);
    let lanes = match threads {
        Some(n) => Lanes::start(n.max(1), gap),
        None => Lanes::for_current_runtime(gap),
    }
    .map_err(StartError::Timer)?;
    tokio::spawn(run(a, clock, endpoints, lanes, cmd_rx, ev_tx));
    Ok(AgentHandle { commands: cmd_tx, events: ev_rx })
}

async fn run(
    a: Assignment,
    clock: Clock,
    endpoints: Vec<Endpoint>,
    lanes: Lanes,
    mut cmds: mpsc::Receiver<Command>,
    events: mpsc::Sender<AgentEvent>,
) {
    let start_ns = clock.now_ns();
    let rec = Arc::new(Recorder::for_this_machine());
    let (phase_tx, phase_rx) = watch::channel(Phase::Ramp);
    let n_clients = a.clients() as usize;
    let n_publishers: usize =
        a.groups.iter().filter(|g| g.spec.publish.is_some()).map(|g| g.count as usize).sum();
    let shared = Arc::new(Shared {
        clock: clock.clone(),
        rec: rec.clone(),
        endpoints,
        sources: a.source_addresses.clone(),
        run_tag: a.run_tag,
        agent: a.agent,
        phase: phase_rx,
        ready: Countdown::new(n_clients),
        publishers: Countdown::new(n_publishers),
        start_ns,
        connecting: ConnectWindow::new(a.max_connecting, a.adaptive_connecting),
        lanes,
        read_coalesce_ns: a.read_coalesce_us as u64 * 1_000,
        unsent: Unsent::new(a.max_unsent_bytes),
        publish_ranges: a.publish_ranges.clone(),
        storms: Default::default(),
        outages: Default::default(),
        staged: a.staged,
        stages: Default::default(),
    });
    let groups: Vec<Arc<GroupRuntime>> = a
        .groups
        .iter()
        .enumerate()
        .map(|(i, g)| Arc::new(GroupRuntime::new(g.clone(), i, a.run_tag, a.agent)))
        .collect();
    let mut tasks: JoinSet<Outcome> = JoinSet::new();
    for g in &groups {
        for local in 0..g.assignment.count {
            let c = Client::new(g.clone(), shared.clone(), local);
            let (lane, _) = shared.lanes.of(c.key());
            tasks.spawn_on(c.run(), lane);
        }
    }
    tracing::info!(agent = a.agent, clients = n_clients, groups = groups.len(), "Agent started");

    // shares settled at the controller: their receipts go up before each snapshot
    let remote: Vec<Arc<Mutex<ShareReceipts>>> =
        groups.iter().flat_map(|g| g.remote.values().cloned()).collect();
    // snapshots every interval, until told to stop; from the publishing window's start on,
    // on its grid (start + k × interval), so every agent's intervals line up with each other
    // and with the stages of a staged run
    let (stop_snap_tx, mut stop_snap_rx) = watch::channel(false);
    let mut phase_seen = phase_tx.subscribe();
    let snap_task = {
        let remote = remote.clone();
        let rec = rec.clone();
        let events = events.clone();
        let interval = Duration::from_millis(a.snapshot_interval_ms);
        let agent = a.agent;
        let clock = clock.clone();
        tokio::spawn(async move {
            let mut collector = Collector::new(agent, start_ns);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut window_known = false;
            loop {
                tokio::select! {
                    r = phase_seen.changed(), if !window_known => {
                        let phase = *phase_seen.borrow_and_update();
                        window_known = r.is_err() || !matches!(phase, Phase::Ramp);
                        if let Phase::Publish { start_ns: start, .. } = phase {
                            // the first grid point not yet passed
                            let (now, step) = (clock.now_ns(), interval.as_nanos() as u64);
                            let k = now.saturating_sub(start).div_ceil(step.max(1));
                            let next = start.saturating_add(k.saturating_mul(step));
                            tick = tokio::time::interval_at(clock.instant_at(next), interval);
                            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        }
                    }
                    _ = tick.tick() => {
                        if !send_receipts(&remote, &clock, &events).await {
                            break;
                        }
                        let snap = collector.collect(&rec, clock.now_ns());
                        if events.send(AgentEvent::Snapshot(snap)).await.is_err() {
                            break;
                        }
                    }
                    _ = stop_snap_rx.changed() => break,
                }
            }
            collector
        })
    };

    let deadline = tokio::time::Instant::now() + Duration::from_millis(a.max_duration_ms);
    let outcome = drive(&a, &groups, &shared, &phase_tx, &mut cmds, &events, deadline).await;

    // shut the clients down: they leave at their ramp-down times (or at once on abort)
    let grace = groups
        .iter()
        .map(|g| {
            let share = g.assignment.count as f64 / g.assignment.spec.clients.max(1) as f64;
            g.assignment.count as f64 / (g.assignment.spec.disconnect_rate * share).max(1e-9)
                + g.assignment.spec.connect_timeout_ms as f64 / 1e3
        })
        .fold(0.0, f64::max)
        + 5.0;
    let mut outcomes = Vec::with_capacity(n_clients);
    let joined = tokio::time::timeout(Duration::from_secs_f64(grace), async {
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(o) => outcomes.push(o),
                Err(e) if e.is_panic() => tracing::error!(error = %e, "A client task panicked"),
                Err(_) => {}
            }
        }
    })
    .await;
    if joined.is_err() {
        tracing::warn!(left = tasks.len(), "Clients did not stop in time; aborting them");
        tasks.abort_all();
    }
    let _ = stop_snap_tx.send(true);
    let mut collector = snap_task.await.unwrap_or_else(|_| Collector::new(a.agent, start_ns));
    send_receipts(&remote, &clock, &events).await;
    let last = collector.collect(&rec, clock.now_ns());
    let _ = events.send(AgentEvent::Snapshot(last)).await;
    // will records past one snapshot's share follow in snapshots of their own
    while collector.wills_pending() {
        let more = collector.collect(&rec, clock.now_ns());
        let _ = events.send(AgentEvent::Snapshot(more)).await;
    }

    match outcome {
        Ok(Some(streams)) => {
            let mut result = finalize(&groups, outcomes, &streams);
            (result.storms, result.storms_untracked) = shared.storms.results();
            result.outages = shared.outages.windows();
            tracing::info!(agent = a.agent, "Agent finished");
            let _ = events.send(AgentEvent::Finished(result)).await;
        }
        Ok(None) => tracing::info!(agent = a.agent, "Agent aborted"),
        Err(message) => {
            tracing::error!(agent = a.agent, %message, "Agent stopped");
            let _ = events.send(AgentEvent::Failed { message }).await;
        }
    }
}

/// Sends what the members of each share settled at the controller received so far. False when
/// the controller is gone.
async fn send_receipts(
    remote: &[Arc<Mutex<ShareReceipts>>],
    clock: &Clock,
    events: &mpsc::Sender<AgentEvent>,
) -> bool {
    for r in remote {
        // everything read before now is in, but for a message a client read just before and
        // records just after: it follows in the next receipts (the controller's merged
        // ledger tolerates that much reordering)
        let drained = r.lock().unwrap_or_else(|e| e.into_inner()).drain(clock.now_ns());
        for ev in drained {
            if events.send(AgentEvent::Receipts(ev)).await.is_err() {
                return false;
            }
        }
    }
    true
}

/// The phases. `Ok(Some(streams))`: finished normally; `Ok(None)`: aborted by the controller;
/// `Err`: stopped by the agent's own limit.
async fn drive(
    a: &Assignment,
    groups: &[Arc<GroupRuntime>],
    shared: &Shared,
    phase_tx: &watch::Sender<Phase>,
    cmds: &mut mpsc::Receiver<Command>,
    events: &mpsc::Sender<AgentEvent>,
    deadline: tokio::time::Instant,
) -> Result<Option<Vec<StreamFinal>>, String> {
    let mut ready_sent = false;
    let mut publishing = false;
    let mut published_sent = false;
    // when the publishing window closes: the window is over when it has closed *and* every
    // publisher is done (a run without publishers still holds its connections that long)
    let mut window_end = tokio::time::Instant::now();
    loop {
        let window_over = async {
            shared.publishers.wait().await;
            tokio::time::sleep_until(window_end).await;
        };
        tokio::select! {
            _ = shared.ready.wait(), if !ready_sent => {
                ready_sent = true;
                let ev = AgentEvent::Ready { clients: a.clients(), connected: shared.rec.connected() };
                if events.send(ev).await.is_err() {
                    let _ = phase_tx.send(Phase::Abort);
                    return Ok(None);
                }
            }
            _ = window_over, if publishing && !published_sent => {
                published_sent = true;
                let streams = local_streams(groups, shared);
                if events.send(AgentEvent::PublishDone { streams }).await.is_err() {
                    let _ = phase_tx.send(Phase::Abort);
                    return Ok(None);
                }
            }
            cmd = cmds.recv() => match cmd {
                Some(Command::Publish { start_unix_ns, until_unix_ns }) if !publishing => {
                    publishing = true;
                    window_end = shared.clock.instant_at(until_unix_ns);
                    let stages = stages_known(shared);
                    let _ = phase_tx.send(Phase::Publish { start_ns: start_unix_ns, until_ns: until_unix_ns, stages });
                    mark_start(shared.clock.clone(), start_unix_ns, events.clone());
                }
                Some(Command::Publish { start_unix_ns, until_unix_ns }) => {
                    // a second Publish may only cut the window short (an interrupted run ends
                    // its window now and settles on what was sent)
                    let current = *phase_tx.borrow();
                    if let Phase::Publish { start_ns, until_ns, stages } = current
                        && until_unix_ns < until_ns
                    {
                        window_end = shared.clock.instant_at(until_unix_ns);
                        let _ = phase_tx.send(Phase::Publish { start_ns: start_ns.min(start_unix_ns), until_ns: until_unix_ns, stages });
                    }
                }
                Some(Command::Stage(st)) => {
                    // checked here: a controller may be remote, and a stage out of order or
                    // beyond the rates a client can keep is refused, not half run
                    let checked = {
                        let mut known = shared.stages.lock().unwrap_or_else(|e| e.into_inner());
                        let after = known.last().map_or(0, |s| s.until_unix_ns);
                        a.check_stage(&st, known.len() as u32, after).map(|()| {
                            known.push(st);
                            known.len() as u32
                        })
                    };
                    match checked {
                        Ok(stages) => {
                            let current = *phase_tx.borrow();
                            if let Phase::Publish { start_ns, until_ns, .. } = current {
                                let _ = phase_tx.send(Phase::Publish { start_ns, until_ns, stages });
                            }
                        }
                        Err(e) => {
                            let _ = phase_tx.send(Phase::Abort);
                            return Err(format!("the controller sent a stage the agent cannot run ({e}); all load stopped"));
                        }
                    }
                }
                Some(Command::Finish { streams, drain_ms }) => {
                    // late subscribers keep receiving until the drain is over
                    let until = tokio::time::Instant::now() + Duration::from_millis(drain_ms);
                    tokio::select! {
                        _ = tokio::time::sleep_until(until.min(deadline)) => {}
                        c = cmds.recv() => if matches!(c, None | Some(Command::Abort)) {
                            let _ = phase_tx.send(Phase::Abort);
                            return Ok(None);
                        }
                    }
                    let _ = phase_tx.send(Phase::Finish { at_ns: shared.clock.now_ns() });
                    return Ok(Some(streams));
                }
                None | Some(Command::Abort) => {
                    // the controller is gone, or says stop: no load without a controller
                    let _ = phase_tx.send(Phase::Abort);
                    return Ok(None);
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                let _ = phase_tx.send(Phase::Abort);
                return Err(format!("the agent's maximum duration ({} ms) was reached; all load stopped", a.max_duration_ms));
            }
        }
    }
}

fn stages_known(shared: &Shared) -> u32 {
    shared.stages.lock().unwrap_or_else(|e| e.into_inner()).len() as u32
}

/// Wakes at the start instant on a thread of its own (a thread sleep, then a spin for the last
/// stretch: the runtime's timer wheel is 1 ms coarse) and reports how late it woke: the
/// controller compares agents' reports to give the run's start skew.
fn mark_start(clock: Clock, start_ns: u64, events: mpsc::Sender<AgentEvent>) {
    const SPIN: u64 = 1_000_000;
    tokio::task::spawn_blocking(move || {
        let now = clock.now_ns();
        if start_ns > now + SPIN {
            // bounded: the controller sends the command ~100 ms ahead; never sleep past 10 s
            std::thread::sleep(Duration::from_nanos((start_ns - now - SPIN).min(10_000_000_000)));
        }
        let spin_until = std::time::Instant::now() + Duration::from_nanos(2 * SPIN);
        while clock.now_ns() < start_ns && std::time::Instant::now() < spin_until {
            std::hint::spin_loop();
        }
        let late_ns = clock.now_ns() as i64 - start_ns as i64;
        let _ = events.blocking_send(AgentEvent::Started { late_ns });
    });
}

/// The final count of every stream this agent published.
fn local_streams(groups: &[Arc<GroupRuntime>], shared: &Shared) -> Vec<StreamFinal> {
    let mut out = Vec::new();
    for g in groups {
        if g.assignment.spec.publish.as_ref().is_none_or(|p| !p.payload.measured()) {
            continue;
        }
        for local in 0..g.assignment.count {
            let index = g.assignment.first + local;
            out.push(StreamFinal {
                stream: g.assignment.stream_base + index,
                topic: g.topic_of(index, shared).unwrap_or_default(),
                qos: g.publish_qos(),
                sent: g.sent[local as usize].load(std::sync::atomic::Ordering::Acquire),
                refused: g.refused[local as usize].load(std::sync::atomic::Ordering::Acquire),
            });
        }
    }
    out
}

/// Matches each receiver's filters against every stream and settles its ledger.
fn finalize(groups: &[Arc<GroupRuntime>], outcomes: Vec<Outcome>, streams: &[StreamFinal]) -> AgentResult {
    let mut expectations = Expectations::new(streams);
    let mut expected_for = |filters: &[(String, Option<u8>)]| expectations.expected_for(filters);

    let mut result = AgentResult::default();
    let mut by_group: Vec<LedgerTotals> = vec![LedgerTotals::default(); groups.len()];
    let mut settle =
        |group: usize, ledger: &ReceiverLedger, expected: &[(&StreamFinal, u8)], result: &mut AgentResult| {
            let t = ledger.finalize(expected);
            by_group[group].add(&t);
            result.ledger.add(&t);
            result.receivers += 1;
        };
    // who was owed each will: receivers by their granted filters
    let mut observers: HashMap<Vec<String>, u64> = HashMap::new();
    let mut observe = |filters: &[(String, Option<u8>)]| {
        let granted: Vec<String> =
            filters.iter().filter(|(_, g)| g.is_some()).map(|(f, _)| f.clone()).collect();
        *observers.entry(granted).or_default() += 1;
    };
    // shared subscriptions: one receiver per share; members' grants are alike, take any granted
    let mut shared_grants: HashMap<(usize, Vec<String>), Vec<(String, Option<u8>)>> = HashMap::new();
    // … and for shares settled at the controller, the members here too
    let mut remote_members: HashMap<(usize, Vec<String>), u64> = HashMap::new();
    for o in &outcomes {
        let g = &groups[o.group];
        if o.filters.is_empty() {
            continue;
        }
        if o.filters.iter().all(|(_, granted)| granted.is_none()) {
            result.receivers_never_subscribed += 1;
            continue;
        }
        match &o.ledger {
            Some(l) => {
                observe(&o.filters);
                let exp = expected_for(&o.filters);
                settle(o.group, l, &exp, &mut result);
            }
            None => {
                let key: Vec<String> = o.filters.iter().map(|(f, _)| f.clone()).collect();
                if g.shared.contains_key(&key) || g.remote.contains_key(&key) {
                    *remote_members.entry((o.group, key.clone())).or_default() += 1;
                    let entry = shared_grants.entry((o.group, key)).or_insert_with(|| o.filters.clone());
                    for (slot, (_, granted)) in entry.iter_mut().zip(&o.filters) {
                        slot.1 = slot.1.max(*granted);
                    }
                }
            }
        }
    }
    for ((group, key), filters) in shared_grants {
        if let Some(l) = groups[group].shared.get(&key) {
            let l = l.lock().unwrap_or_else(|e| e.into_inner());
            observe(&filters);
            let exp = expected_for(&filters);
            settle(group, &l, &exp, &mut result);
        } else if let Some(r) = groups[group].remote.get(&key) {
            let members = remote_members.get(&(group, key)).copied().unwrap_or(0);
            result.shares.push(r.lock().unwrap_or_else(|e| e.into_inner()).result(filters, members));
        }
    }
    result.shares.sort_by(|a, b| (a.group, &a.filters).cmp(&(b.group, &b.filters)));
    result.observers = observers.into_iter().map(|(filters, count)| Observers { filters, count }).collect();
    result.observers.sort_by(|a, b| a.filters.cmp(&b.filters));
    result.ledger_by_group = groups
        .iter()
        .zip(by_group)
        .filter(|(g, _)| g.assignment.spec.subscribe.is_some())
        .map(|(g, t)| (g.assignment.spec.name.clone(), t))
        .collect();
    result
}
