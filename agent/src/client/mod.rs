//! One simulated client: a tokio task that connects (and reconnects), subscribes, publishes on
//! its schedule, answers the broker, and records everything it sees.
//!
//! The task owns its [`Connection`] state machine and does the I/O around it: it writes what
//! the machine queued, reads what the broker sent, and sleeps until the earliest of the next
//! scheduled publish, the machine's next deadline (keepalive, ack timeouts) and the next phase
//! boundary. Records go into its recorder shard, under one lock per batch of work.
//!
//! Every loop is bounded: publishing ends at the window's end, reconnecting ends with the run,
//! and the engine aborts tasks that outlive their shutdown grace.
//!
//! Here: the task's life (connect, session loop, close). Beside it: [`shared`] what all of an
//! engine's clients share, `publish` the schedule's side, `receive` what reads bring (the
//! ledger), `io` the one non-blocking I/O step, [`backoff`] and [`window`] the reconnect and
//! handshake pacing, `storm`, `outage` and `will` what events, losses and wills are owed.

pub mod backoff;
mod group;
mod io;
mod outage;
mod publish;
mod receive;
pub mod shared;
mod storm;
mod will;
pub mod window;

pub use group::{GroupRuntime, PayloadPlan};

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ntex_bytes::{BytePages, ByteString, Bytes, BytesMut};
use tokio::sync::watch;

use crate::metrics::{LoadError, Metric, ReceiverLedger, Timing};
use crate::mqtt::codec::{ConnectSpec, QoS, Will, qos_from_u8};
use crate::mqtt::inflight::Kind;
use crate::mqtt::state::{Connection, Fault};
use crate::mqtt::transport::{self, ConnectFailure, Stream};
use crate::pacer::Pacer;
use crate::timer::Sleep;
use backoff::Backoff;
use io::{IoEvent, ReadMode, poll_io};
pub use outage::Outages;
pub use receive::Receiver;
use receive::{Backlog, Read};
pub use shared::{Countdown, Phase, Shared, Unsent};
use squall_proto::metrics::WillId;
use squall_proto::plan::{Comeback, EventAction};
use squall_proto::protocol::Protocol;
pub use storm::Storms;
use storm::{Away, StormKey};
use will::WillState;
use window::Slot;

/// The largest packet a client accepts from a broker: a broken or hostile broker cannot make
/// a client buffer more than this.
const MAX_INBOUND_PACKET: u32 = 16 << 20;

/// Reads further apart than this mark a connection idle: its read buffer is given back.
const IDLE_READ_NS: u64 = 10_000_000;

/// Unsent bytes above which a client takes no more messages from its schedule.
const WRITE_HIGH_WATER: usize = 256 * 1024;

/// What a client hands back when it ends.
pub struct Outcome {
    pub group: usize,
    pub index: u32,
    /// Its own ledger, when it subscribed with plain filters.
    pub ledger: Option<ReceiverLedger>,
    /// Its rendered filters and the QoS granted for each (absent when never granted).
    pub filters: Vec<(String, Option<u8>)>,
}

/// A read that waited and brought less than this acknowledges at once (see `Stream::ack_now`).
const ACK_NOW_BELOW: usize = 2048;

enum Wake {
    Io(std::io::Result<IoEvent>),
    Timer,
    /// The phase changed (false: the engine is gone).
    Phase(bool),
    /// Room came back in the agent's budget of unsent bytes.
    Room,
}

/// How a connection ended.
enum End {
    /// Finished or aborted: leave.
    Stop,
    /// Lost or failed: retry if the group reconnects.
    Retry,
    /// Taken away by a scenario event: come back as it says.
    Event(Comeback),
}

pub struct Client {
    group: Arc<GroupRuntime>,
    shared: Arc<Shared>,
    index: u32,
    local: u32,
    key: usize,
    conn: Connection,
    spec: ConnectSpec,
    endpoint: usize,
    source: Option<IpAddr>,
    topic: Option<ByteString>,
    stream: u32,
    pacer: Option<Pacer>,
    /// Stages of a staged run its pacer has.
    stages_seen: u32,
    /// The publishing window's end as the phase last said (a window may be cut short).
    window_until: u64,
    publish_fixed: bool,
    filters: Vec<(ByteString, QoS)>,
    granted: Vec<Option<u8>>,
    receiver: Option<Receiver>,
    subscribed: bool,
    ready_signalled: bool,
    backoff: Backoff,
    /// When its established connection was lost, until it is connected again.
    lost_at: Option<u64>,
    /// Its share of the group's events in time order (instant, action, way back), known once
    /// the publishing window's start is; and the next one to come.
    events: Vec<(u64, EventAction, Comeback, StormKey)>,
    next_event: usize,
    events_for: Option<u64>,
    /// A `silence` event is under way (and how to come back): nothing is written or answered.
    silent: Option<Comeback>,
    /// A `blackhole` is under way (a silence whose incoming packets are dropped too) until this
    /// instant, when the client gives the link up.
    blackhole_until: Option<u64>,
    /// Taken by a storm and not yet back.
    away: Option<Away>,
    /// The backlog of a resumed persistent session, while the connection lasts.
    backlog: Option<Backlog>,
    /// It had an established connection before (the next CONNACK is a reconnect).
    was_connected: bool,
    /// It lost its connection unasked and is not back yet (an outage counts it): its failed
    /// attempts since.
    lost_unasked: Option<u64>,
    rng: fastrand::Rng,
    phase_rx: watch::Receiver<Phase>,
    /// Its one timer, reset to whatever is due next.
    sleep: Sleep,
    /// Its last will and what each connection's will is owed (with a will set).
    will: Option<WillState>,
    /// Who it is in the will ledger, as a receiver of wills.
    will_receiver: u64,
    /// Its own TLS connector (its own session cache), made at its first TLS connection.
    tls: Option<transport::TlsConnector>,
    /// The keepalive the broker enforces on this connection, s (MQTT 5: the server's, if set).
    keepalive_in_force: u16,
}

impl Client {
    pub fn new(g: Arc<GroupRuntime>, sh: Arc<Shared>, local: u32) -> Client {
        let index = g.assignment.first + local;
        let global = g.assignment.client_base + index;
        let s = &g.assignment.spec;
        let vars = g.vars(index, &sh);
        // its row of the group's identities file, if it has one: what it gives wins
        let id = g.assignment.identities.get(local as usize);
        let username = id.and_then(|i| i.username.as_deref()).or(s.username.as_deref());
        let password = id.and_then(|i| i.password.as_deref()).or(s.password.as_deref());
        let spec = ConnectSpec {
            client_id: match id.and_then(|i| i.client_id.as_deref()) {
                Some(c) => ByteString::from(c),
                None => ByteString::from(g.client_id.render(&vars)),
            },
            keepalive_secs: s.keepalive_secs,
            clean_start: s.clean_start,
            session_expiry_secs: s.session_expiry_secs,
            username: username.map(ByteString::from),
            password: password.map(|p| Bytes::copy_from_slice(p.as_bytes())),
            will: s.will.as_ref().map(|w| Will {
                topic: ByteString::from(g.will_topic.as_ref().expect("will has a topic").render(&vars)),
                payload: Bytes::copy_from_slice(w.payload.as_bytes()),
                qos: qos_from_u8(w.qos).unwrap_or(QoS::AtMostOnce),
                retain: w.retain,
                delay_secs: w.delay_secs,
            }),
            receive_max: u16::MAX,
        };
        let filters: Vec<(ByteString, QoS)> =
            g.filters_of(index, &sh).into_iter().map(|f| (ByteString::from(f), g.sub_qos)).collect();
        let receiver = (!filters.is_empty()).then(|| {
            let key: Vec<String> = filters.iter().map(|(f, _)| f.to_string()).collect();
            match (g.shared.get(&key), g.remote.get(&key)) {
                (Some(l), _) => Receiver::Shared(l.clone()),
                (None, Some(r)) => Receiver::Remote(r.clone()),
                (None, None) => Receiver::Own(ReceiverLedger::new()),
            }
        });
        let will_receiver = match &receiver {
            // a shared subscription receives as one, whichever member gets the message
            Some(Receiver::Shared(_) | Receiver::Remote(_)) => {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (g.assignment.group, filters.iter().map(|(f, _)| f.as_ref()).collect::<Vec<&str>>())
                    .hash(&mut h);
                h.finish() | 1 << 63
            }
            _ => global as u64,
        };
        let will = spec.will.as_ref().map(|w| {
            // the will waits for its delay, or for the end of the session if that comes first
            let delay_s = match s.protocol {
                Protocol::V5 => w.delay_secs.min(s.session_expiry_secs),
                Protocol::V311 => 0,
            };
            let id = WillId { run_tag: sh.run_tag, group: g.assignment.group, client: global, epoch: 0 };
            WillState::new(id, w.payload.clone(), w.topic.to_string(), delay_s as u64 * 1_000_000_000)
        });
        let nsrc = sh.sources.len();
        Client {
            conn: Connection::new(g.opts.clone()),
            endpoint: global as usize % sh.endpoints.len(),
            source: (nsrc > 0).then(|| sh.sources[global as usize % nsrc]),
            topic: g.topic_of(index, &sh).map(ByteString::from),
            stream: g.assignment.stream_base + index,
            pacer: None,
            stages_seen: 0,
            window_until: u64::MAX,
            publish_fixed: g.topic.is_none(),
            granted: vec![None; filters.len()],
            filters,
            receiver,
            subscribed: false,
            ready_signalled: false,
            backoff: Backoff::new(&s.reconnect),
            lost_at: None,
            events: Vec::new(),
            next_event: 0,
            events_for: None,
            silent: None,
            blackhole_until: None,
            away: None,
            backlog: None,
            was_connected: false,
            lost_unasked: None,
            rng: fastrand::Rng::with_seed(((sh.run_tag as u64) << 32) ^ global as u64),
            phase_rx: sh.phase.clone(),
            sleep: sh.lanes.of(global as usize).1.sleep(),
            will,
            will_receiver,
            keepalive_in_force: s.keepalive_secs,
            tls: None,
            key: global as usize,
            spec,
            index,
            local,
            group: g,
            shared: sh,
        }
    }

    fn now(&self) -> u64 {
        self.shared.clock.now_ns()
    }

    fn signal_ready(&mut self) {
        if !self.ready_signalled {
            self.ready_signalled = true;
            self.shared.ready.done();
        }
    }

    /// Fixes the final sent count once the publishing window is over (or the run stops).
    /// Ends this client's publishing: what it sent is final, and what the schedule held
    /// before `end_ns` (and before the window's end) and was not sent is behind schedule.
    fn fix_publishing(&mut self, end_ns: u64) {
        if self.publish_fixed {
            return;
        }
        self.publish_fixed = true;
        let (sent, behind) = match &self.pacer {
            Some(p) => (p.taken(), p.due_before(end_ns.min(self.window_until)).saturating_sub(p.taken())),
            None => (0, 0),
        };
        self.group.sent[self.local as usize].store(sent, Ordering::Release);
        if behind > 0 {
            self.shared.rec.shard(self.key).counters.behind_schedule += behind;
        }
        self.shared.publishers.done();
    }

    /// The end of the publishing window, while it is still to come: as last followed (not read
    /// afresh from the phase, which may have moved on since: a window cut between the two reads
    /// would end publishing against the old end and count an hour of schedule as behind).
    fn open_window_until(&self) -> Option<u64> {
        (!self.publish_fixed && self.window_until != u64::MAX).then_some(self.window_until)
    }

    /// Brings the pacer in line with the phase (the publishing window's end is handled by the
    /// callers, after owed messages went out). Returns the time this client must disconnect,
    /// if the run is finishing, or `Err` when it must stop at once.
    fn follow_phase(&mut self) -> Result<Option<u64>, ()> {
        let phase = *self.phase_rx.borrow();
        match phase {
            Phase::Ramp => Ok(None),
            Phase::Publish { start_ns, until_ns, stages } => {
                self.window_until = until_ns;
                if self.events_for != Some(start_ns) {
                    self.plan_events(start_ns, until_ns);
                }
                if !self.publish_fixed {
                    self.follow_stages(start_ns, until_ns, stages);
                }
                Ok(None)
            }
            Phase::Finish { at_ns } => {
                self.fix_publishing(u64::MAX);
                Ok(Some(self.group.disconnect_at_ns(self.local, at_ns)))
            }
            Phase::Abort => {
                // stopped mid-window: only what was owed by now fell behind
                let now = self.now();
                self.fix_publishing(now);
                Err(())
            }
        }
    }

    /// The schedule as the phase says: the whole window at the group's rate, or in a staged
    /// run each stage known so far at its share of it; and a window cut short ends it.
    fn follow_stages(&mut self, start_ns: u64, until_ns: u64, stages: u32) {
        let rate = self.group.rate.expect("publishers have a rate");
        let clients = self.group.assignment.spec.clients;
        if !self.shared.staged {
            let pacer = self.pacer.get_or_insert_with(|| {
                Pacer::new(
                    start_ns,
                    until_ns,
                    rate.client_interval_ns(),
                    rate.client_offset_ns(self.index, clients),
                )
            });
            pacer.cut(until_ns);
            return;
        }
        let pacer = self.pacer.get_or_insert_with(|| Pacer::staged(until_ns));
        pacer.cut(until_ns);
        if stages > self.stages_seen {
            let known = self.shared.stages.lock().unwrap_or_else(|e| e.into_inner());
            for st in known.iter().take(stages as usize).skip(self.stages_seen as usize) {
                let r = rate.scaled(st.scale);
                let first = st.start_unix_ns.saturating_add(r.client_offset_ns(self.index, clients));
                pacer.push(first, r.client_interval_ns(), st.until_unix_ns);
            }
            self.stages_seen = stages;
        }
    }

    /// Works out which of the group's events take this client, and when (inside the window).
    fn plan_events(&mut self, start_ns: u64, until_ns: u64) {
        self.events_for = Some(start_ns);
        let spec = &self.group.assignment.spec;
        let seed = self.shared.run_tag as u64;
        let group = self.group.assignment.group;
        let mut mine: Vec<(u64, EventAction, Comeback, StormKey)> = spec
            .events
            .iter()
            .enumerate()
            .flat_map(|(ei, e)| {
                e.times_for(self.index, spec.clients, seed, ei).map(move |ms| {
                    (
                        start_ns.saturating_add(ms.saturating_mul(1_000_000)),
                        e.action,
                        e.back,
                        (group, ei as u32, ms),
                    )
                })
            })
            .filter(|(t, ..)| *t < until_ns)
            .collect();
        mine.sort_by_key(|e| e.0);
        self.events = mine;
        self.next_event = 0;
    }

    /// The next event of this client still to come, skipping those that fell due while it
    /// was not connected (there was nothing to take away).
    fn next_event_due(&mut self, now: u64, connected: bool) -> Option<u64> {
        while let Some(&(at, ..)) = self.events.get(self.next_event) {
            if at <= now && !connected {
                self.next_event += 1;
                continue;
            }
            return Some(at);
        }
        None
    }

    /// Its key: its recorder shard and its lane.
    pub fn key(&self) -> usize {
        self.key
    }

    /// Runs the client to the end of the run.
    // Not `async fn run(mut self)`: that future holds the client twice (the argument, and the
    // body's `mut` binding of it), 1,056 bytes more in every client's task.
    #[allow(clippy::manual_async_fn)]
    pub fn run(mut self) -> impl Future<Output = Outcome> {
        async move {
            let mut attempt_at = self.group.first_attempt_ns(self.local, self.shared.start_ns);
            let mut first = true;
            // when it decided to retry: what it then waited is the backoff it really had
            let mut retry_since: Option<u64> = None;
            loop {
                if !self.idle_until(attempt_at).await {
                    break;
                }
                if !first && self.group.reconnect_limiter.is_some() {
                    // a storm limit on reconnections across the group's share
                    let g = self.group.clone();
                    let l = g.reconnect_limiter.as_ref().expect("checked");
                    let since = self.now();
                    let slot = l.reserve(since);
                    if slot > since && !self.idle_until(slot).await {
                        return self.finish();
                    }
                    // the group's own limit, shared with its other clients: part of the policy
                    let now = self.now();
                    if let Some(a) = self.away.as_mut() {
                        a.waited(now - since);
                    }
                }
                first = false;
                if let Some(since) = retry_since.take() {
                    let waited = self.now().saturating_sub(since);
                    let group = self.group.assignment.group;
                    self.shared.rec.shard(self.key).record(group, Metric::Backoff, Timing::Raw, waited);
                }
                let end = self.attempt(attempt_at).await;
                self.signal_ready();
                match end {
                    End::Stop => break,
                    End::Retry
                        if self.group.assignment.spec.reconnect.enabled && self.backoff.exhausted() =>
                    {
                        // out of attempts: gives up, as a device with a retry limit does
                        self.shared.rec.shard(self.key).counters.abandoned += 1;
                        if let Some(mut a) = self.away.take() {
                            a.attempt_failed(&self.shared.storms, self.shared.clock.now_ns());
                            a.abandoned(&self.shared.storms);
                        }
                        self.idle_until(u64::MAX).await;
                        break;
                    }
                    End::Retry if self.group.assignment.spec.reconnect.enabled => {
                        let now = self.now();
                        retry_since = Some(now);
                        let delay = self.backoff.next_delay_ns(&mut self.rng);
                        attempt_at = now + delay;
                        if let Some(a) = self.away.as_mut() {
                            a.attempt_failed(&self.shared.storms, now);
                            a.waited(delay);
                        }
                    }
                    End::Retry => {
                        // no reconnects: wait for the end of the run
                        self.idle_until(u64::MAX).await;
                        break;
                    }
                    End::Event(back) => {
                        let now = self.now();
                        attempt_at = match back {
                            Comeback::Now => now,
                            Comeback::AfterMs(ms) => now.saturating_add(ms.saturating_mul(1_000_000)),
                            Comeback::Backoff => {
                                retry_since = Some(now);
                                now + self.backoff.next_delay_ns(&mut self.rng)
                            }
                            Comeback::Never => {
                                self.idle_until(u64::MAX).await;
                                break;
                            }
                        };
                        if let Some(a) = self.away.as_mut() {
                            a.waited(attempt_at - now);
                        }
                    }
                }
            }
            self.finish()
        }
    }

    /// Waits, disconnected, until `at_ns`. Returns false when the run is ending.
    async fn idle_until(&mut self, at_ns: u64) -> bool {
        loop {
            let now = self.now();
            match self.follow_phase() {
                Err(()) | Ok(Some(_)) => return false,
                Ok(None) => {}
            }
            if self.open_window_until().is_some_and(|u| now >= u) {
                self.fix_publishing(u64::MAX);
            }
            if now >= at_ns {
                return true;
            }
            let wake = self.open_window_until().map_or(at_ns, |u| u.min(at_ns));
            self.sleep.reset(self.shared.clock.instant_at(wake).into_std());
            tokio::select! {
                _ = &mut self.sleep => {}
                r = self.phase_rx.changed() => if r.is_err() { return false },
            }
        }
    }

    /// One connection: TCP (+TLS), then the MQTT session until it ends.
    async fn attempt(&mut self, intended_ns: u64) -> End {
        // a handshake slot; the wait counts in corrected connect latency
        let permit = loop {
            tokio::select! {
                p = self.shared.connecting.acquire() => break p,
                r = self.phase_rx.changed() => {
                    if r.is_err() || matches!(*self.phase_rx.borrow(), Phase::Abort | Phase::Finish { .. }) {
                        return End::Stop;
                    }
                }
            }
        };
        self.shared.rec.shard(self.key).counters.connect_attempts += 1;
        let ep = &self.shared.endpoints[self.endpoint];
        let timeout = Duration::from_millis(self.group.assignment.spec.connect_timeout_ms);
        let tcp_start = self.now();
        if ep.tls.is_some() && self.tls.is_none() {
            self.tls = transport::own_connector(ep, self.group.assignment.spec.tls_resumption);
        }
        // boxed: the TCP connect and TLS handshake states are large (the handshake's TLS state
        // inline), and unboxed they would size every client's task for its whole life
        let connecting = Box::pin(transport::connect_with(ep, self.source, self.tls.as_ref()));
        let connected = tokio::time::timeout(timeout, connecting).await;
        // a lost SYN shows as a connect of a second or more: the handshake window backs off
        self.shared.connecting.tcp_connect(self.now().saturating_sub(tcp_start));
        let stream = match connected {
            Ok(Ok((s, tls_ns))) => {
                if let Some(ns) = tls_ns {
                    let resumed = s
                        .tls_session()
                        .is_some_and(|t| t.handshake_kind() == Some(rustls::HandshakeKind::Resumed));
                    let group = self.group.assignment.group;
                    let mut shard = self.shared.rec.shard(self.key);
                    shard.counters.tls_handshakes += 1;
                    shard.counters.tls_resumed += resumed as u64;
                    shard.record(group, Metric::Tls, Timing::Raw, ns);
                }
                s
            }
            Ok(Err(f)) => {
                let e = match f {
                    ConnectFailure::Refused => LoadError::TcpRefused,
                    ConnectFailure::Unreachable => LoadError::Unreachable,
                    ConnectFailure::NoLocalPort => LoadError::NoLocalPort,
                    ConnectFailure::TooManyOpenFiles => LoadError::TooManyOpenFiles,
                    ConnectFailure::Tls(_) => LoadError::Tls,
                    ConnectFailure::WebSocket(_) => LoadError::WebSocket,
                    ConnectFailure::Reset | ConnectFailure::Io(_) => LoadError::ConnectIo,
                };
                self.connect_failed(e);
                return End::Retry;
            }
            Err(_) => {
                self.connect_failed(LoadError::ConnectTimeout);
                return End::Retry;
            }
        };
        let now = self.now();
        if let (Some(w), Some(spec)) = (self.will.as_mut(), self.spec.will.as_mut()) {
            spec.payload = w.next_connection();
        }
        if self.conn.begin(&self.spec, now).is_err() {
            self.connect_failed(LoadError::ProtocolError);
            return End::Retry;
        }
        self.session(stream, intended_ns, tcp_start, permit).await
    }

    /// A scenario event took the connection away at `now` so that its will is due.
    fn will_taken(&mut self, now: u64) {
        if let Some(w) = self.will.as_mut() {
            w.taken(&mut self.shared.rec.shard(self.key), now);
        }
    }

    fn connect_failed(&mut self, e: LoadError) {
        if let Some(n) = self.lost_unasked.as_mut() {
            *n += 1;
        }
        let mut s = self.shared.rec.shard(self.key);
        s.counters.connect_failures += 1;
        s.error(e);
    }

    /// The connected part: returns when the connection ends.
    async fn session(
        &mut self,
        mut stream: Stream,
        intended_ns: u64,
        tcp_start: u64,
        mut permit: Option<Slot>,
    ) -> End {
        let mut rbuf = BytesMut::new();
        self.silent = None;
        self.blackhole_until = None;
        let mut pending: Option<BytePages> = None;
        let mut connected = false;
        // what the timer is armed for; None: it fired (or never was) and must be armed again,
        // else a fired timer would stay ready and spin the loop
        let mut deadline: Option<u64> = None;
        self.sleep.reset(self.shared.clock.instant_at(u64::MAX / 2).into_std());
        // Publishing happens when the schedule's timer fires, or when whatever held messages
        // back (a full window, unsent bytes, the per-wake cap) may have let go. Not after every
        // flush: that would write a few messages per syscall instead of a tick's worth.
        let mut publish_now = true;
        let mut held_back = false;
        // bytes this connection queued and the kernel has not taken: the agent's budget holds them
        let mut queued = 0u64;
        // Read coalescing (`run.read_coalesce`): on a busy connection (a read less than half
        // a window after the last) a read that emptied the socket opens a window; data that
        // comes inside it is read at its end, so a broker writing one message per segment
        // does not cost a wake-up per message. A wake-up is set only once data came inside
        // the window; it stays open while data keeps coming and closes after one that
        // brought nothing.
        let mut read_after: u64 = 0;
        let mut data_waiting = false;
        let mut busy = false;
        let mut last_read = 0u64;
        let end = loop {
            let now = self.now();
            let disconnect_at = match self.follow_phase() {
                Err(()) => break self.close(&mut stream, &mut pending, connected).await,
                Ok(d) => d,
            };
            if let Some(at) = disconnect_at
                && (now >= at || !connected)
            {
                break self.close(&mut stream, &mut pending, connected).await;
            }
            // a scenario event falls due: this connection goes as the event says
            if connected
                && self.silent.is_none()
                && self.next_event_due(now, connected).is_some_and(|at| at <= now)
            {
                let (at, action, back, storm) = self.events[self.next_event];
                self.next_event += 1;
                if action == EventAction::Blackhole
                    && let Err(e) = stream.blackhole()
                {
                    // refused, not faked: the connection goes on as it was
                    tracing::warn!(error = %e, "Cannot blackhole a connection (socket filter refused)");
                    self.shared.rec.shard(self.key).counters.events_refused += 1;
                    continue;
                }
                self.lost_at = Some(now);
                // recovery counts from the storm's instant, however late this client got to it
                self.away = Some(Away::taken(&self.shared.storms, storm, at.min(now)));
                self.shared.rec.shard(self.key).counters.event_actions += 1;
                match action {
                    // the stream is dropped on the way out: FIN, no DISCONNECT
                    EventAction::Drop => {
                        stream.reset_on_close();
                        self.will_taken(now);
                        break End::Event(back);
                    }
                    EventAction::Disconnect => {
                        self.close_with(&mut stream, &mut pending, true, 0).await;
                        break End::Event(back);
                    }
                    EventAction::DisconnectWithWill => {
                        self.close_with(&mut stream, &mut pending, true, 0x04).await;
                        self.will_taken(now);
                        break End::Event(back);
                    }
                    EventAction::Silence | EventAction::Blackhole => {
                        self.silent = Some(back);
                        if action == EventAction::Blackhole {
                            // the client notices when the broker's keepalive would have, + 1 s
                            let ka = self.keepalive_in_force as u64 * 1_500_000_000;
                            self.blackhole_until = Some(self.conn.last_sent_ns() + ka + 1_000_000_000);
                        }
                        if let Some(w) = self.will.as_mut() {
                            let last = self.conn.last_sent_ns();
                            w.silenced(&mut self.shared.rec.shard(self.key), last, self.keepalive_in_force);
                        }
                    }
                }
            }
            // backpressure: while the broker is not taking what was written, take no more from
            // the schedule (the messages stay owed; what is never sent is behind schedule)
            let backlog = pending.as_ref().map_or(0, |p| p.len());
            let mut reserved = 0;
            if connected && publish_now && self.silent.is_none() {
                let due = !self.publish_fixed
                    && self.pacer.as_ref().is_some_and(|p| p.next_due_ns().is_some_and(|d| d <= now));
                // what this client may write: its own room, out of the agent's
                let own = WRITE_HIGH_WATER.saturating_sub(backlog) as u64;
                if due && own > 0 {
                    reserved = self.shared.unsent.reserve(own);
                }
                if reserved > 0 {
                    // messages intended inside the window go out at the first chance, even if
                    // that chance comes after the window closed (a timer tick late)
                    held_back = self.publish_due(now, reserved);
                } else {
                    held_back = due;
                    if due {
                        self.shared.rec.shard(self.key).counters.send_buffer_full += 1;
                    }
                }
            }
            if self.open_window_until().is_some_and(|u| now >= u) {
                self.fix_publishing(u64::MAX);
            }
            // silent: what the state machine would say is never written
            let out = self.conn.take_output().filter(|_| self.silent.is_none());
            // the reservation becomes what was really queued, in one step
            let n = out.as_ref().map_or(0, |o| o.len() as u64);
            if n > reserved {
                self.shared.unsent.add(n - reserved);
            } else if n < reserved {
                self.shared.unsent.sub(reserved - n);
            }
            queued += n;
            if let Some(mut out) = out {
                match pending.as_mut() {
                    Some(p) => out.move_to(p),
                    None => pending = Some(out),
                }
            }
            // sleep until the first thing that is due
            let mut next = self.conn.next_deadline().unwrap_or(u64::MAX);
            let mut room_wait = None;
            let backlog = pending.as_ref().map_or(0, |p| p.len());
            if connected
                && backlog < WRITE_HIGH_WATER
                && (self.group.pub_qos == QoS::AtMostOnce || self.conn.window_room() > 0)
            {
                if let Some(p) = self.pacer.as_ref().filter(|_| !self.publish_fixed) {
                    let due = p.next_due_ns().unwrap_or(u64::MAX);
                    // the agent's budget is full with other clients' bytes: nothing of this
                    // client's will free it, so it waits for room handed back
                    room_wait = if due <= now { self.shared.unsent.wait_for_room() } else { None };
                    if room_wait.is_none() {
                        next = next.min(due);
                    }
                }
            }
            if let Some(u) = self.open_window_until() {
                next = next.min(u);
            }
            if self.silent.is_some() {
                // no keepalive, no publishing: only the broker's close, the blackhole's end or
                // the run's end
                next = self
                    .open_window_until()
                    .unwrap_or(u64::MAX)
                    .min(self.blackhole_until.unwrap_or(u64::MAX));
            }
            if let Some(at) = self.next_event_due(now, connected).filter(|_| self.silent.is_none()) {
                next = next.min(at);
            }
            if let Some(at) = disconnect_at {
                next = next.min(at);
            }
            let reading = if now >= read_after {
                ReadMode::Read
            } else if data_waiting {
                ReadMode::Off
            } else {
                ReadMode::Watch
            };
            // what this pass reads, if anything, waited for the window's end
            let after_wait = reading == ReadMode::Read && data_waiting;
            match reading {
                ReadMode::Read => {
                    if read_after > 0 && !data_waiting {
                        // a whole window without data: the flood is over
                        busy = false;
                    }
                    (read_after, data_waiting) = (0, false)
                }
                ReadMode::Off => next = next.min(read_after),
                ReadMode::Watch => {}
            }
            if deadline != Some(next) {
                deadline = Some(next);
                self.sleep.reset(self.shared.clock.instant_at(next.min(u64::MAX / 2)).into_std());
            }
            let mut bytes_out = 0u64;
            let wake = tokio::select! {
                biased;
                r = std::future::poll_fn(|cx| poll_io(cx, &mut stream, &mut pending, &mut rbuf, &mut bytes_out, reading)) => Wake::Io(r),
                _ = &mut self.sleep => Wake::Timer,
                r = self.phase_rx.changed() => Wake::Phase(r.is_ok()),
                _ = async { room_wait.as_mut().unwrap().await }, if room_wait.is_some() => Wake::Room,
            };
            drop(room_wait);
            if bytes_out > 0 {
                self.shared.rec.shard(self.key).counters.bytes_out += bytes_out;
                let taken = bytes_out.min(queued);
                self.shared.unsent.sub(taken);
                queued -= taken;
            }
            let ev = match wake {
                Wake::Io(r) => {
                    publish_now = held_back;
                    Some(r)
                }
                Wake::Timer => {
                    publish_now = true;
                    None
                }
                Wake::Phase(true) => {
                    publish_now = true;
                    continue;
                }
                Wake::Room => {
                    self.shared.unsent.pass_on();
                    publish_now = true;
                    continue;
                }
                Wake::Phase(false) => break self.close(&mut stream, &mut pending, connected).await,
            };
            match ev {
                None if let (Some(back), Some(until)) = (self.silent, self.blackhole_until)
                    && self.now() >= until =>
                {
                    // the client gives the dead link up: a reset, which the broker (long
                    // since gone, if it enforces keepalive) never sees
                    stream.reset_on_close();
                    break End::Event(back);
                }
                None if self.silent.is_some() => deadline = None,
                None => {
                    deadline = None; // the timer fired: it must be re-armed
                    if rbuf.is_empty() && rbuf.capacity() > 0 {
                        // a connection gone quiet (its timers still fire: keepalive, acks)
                        // gives its read buffer back
                        rbuf = BytesMut::new();
                    }
                    let now = self.now();
                    match self.conn.on_timer(now) {
                        Ok(0) => {}
                        Ok(n) => self.shared.rec.shard(self.key).counters.ack_timeouts += n as u64,
                        Err(f) => break self.faulted(f, connected),
                    }
                }
                Some(Ok(IoEvent::Flushed)) => {}
                // data came inside the window: it is read at the window's end
                Some(Ok(IoEvent::Waiting)) => {
                    if self.now() < read_after {
                        data_waiting = true;
                    } else {
                        // it came after the window: read it now, the flood is over
                        (read_after, busy) = (0, false);
                    }
                }
                Some(Ok(IoEvent::Data(..))) if self.silent.is_some() => {
                    // read (so the kernel keeps acknowledging), never answered
                    rbuf.clear();
                }
                Some(Ok(IoEvent::Eof) | Err(_)) if let Some(back) = self.silent => {
                    // the broker's keepalive ended the silent connection, as it should
                    break End::Event(back);
                }
                Some(Ok(IoEvent::Data(n, age))) => {
                    let read_at = self.now();
                    // what came in is timed at the kernel's stamp of its newest byte, not at
                    // the read: however long it waited for squall is measured apart
                    let wait_ns = age.filter(|_| connected);
                    let now = read_at.saturating_sub(wait_ns.unwrap_or(0));
                    let read = Read { bytes: n as u64, wait_ns, coalesced: after_wait };
                    if after_wait && n < ACK_NOW_BELOW {
                        stream.ack_now();
                    }
                    // emptied the socket: let the next messages gather (never before CONNACK)
                    let window = self.shared.read_coalesce_ns;
                    if n < io::READ_BUDGET && connected && window > 0 {
                        busy |= read_at.saturating_sub(last_read) < window / 2;
                        if busy {
                            read_after = read_at + window;
                        }
                    }
                    let previous_read = std::mem::replace(&mut last_read, read_at);
                    let was_connected = connected;
                    match self.handle_input(&mut rbuf, now, read, intended_ns, &mut connected) {
                        Ok(None) => {}
                        Ok(Some(end)) => {
                            // flush what the last packets asked for (a PUBACK, a DISCONNECT)
                            Box::pin(self.flush_best_effort(&mut stream, &mut pending)).await;
                            break end;
                        }
                        Err(f) => break self.faulted(f, connected),
                    }
                    if connected && !was_connected {
                        publish_now = true;
                        // the handshake is over: it counts toward the window's rate, its slot is free
                        self.shared.connecting.handshake(now, now.saturating_sub(tcp_start));
                        drop(permit.take());
                    }
                    if rbuf.is_empty() && read_at.saturating_sub(previous_read) > IDLE_READ_NS {
                        // an idle connection holds no read buffer; a busy one keeps its
                        // allocation from read to read
                        rbuf = BytesMut::new();
                    }
                }
                Some(Ok(IoEvent::Eof)) => {
                    break self.lost(LoadError::ClosedByBroker, connected);
                }
                // bytes that break the framing below MQTT (a WebSocket frame a client must refuse;
                // not a TLS alert, which rustls also reports as invalid data)
                Some(Err(e)) if e.get_ref().is_some_and(|i| i.is::<crate::mqtt::websocket::WsError>()) => {
                    break self.lost(LoadError::ProtocolError, connected);
                }
                Some(Err(_)) => break self.lost(LoadError::ConnectionLost, connected),
            }
        };
        // the backlog it was handed, if any, is over with the connection
        if let Some(b) = self.backlog.take().filter(|b| b.n > 0) {
            let group = self.group.assignment.group;
            self.shared.rec.shard(self.key).record(group, Metric::Backlog, Timing::Raw, b.last - b.since);
        }
        // whatever it still held leaves with the connection
        if queued > 0 {
            self.shared.unsent.sub(queued);
        }
        if connected {
            self.shared.rec.connected_dec();
        }
        end
    }

    fn lost(&mut self, e: LoadError, connected: bool) -> End {
        self.conn.lost();
        if connected {
            let now = self.now();
            self.lost_at = Some(now);
            if let Some(w) = self.will.as_mut() {
                w.failed(&mut self.shared.rec.shard(self.key), now);
            }
            if self.lost_unasked.is_none() {
                self.lost_unasked = Some(0);
                self.shared.outages.lost(now);
            }
        } else if let Some(n) = self.lost_unasked.as_mut() {
            *n += 1;
        }
        let mut s = self.shared.rec.shard(self.key);
        if connected {
            s.counters.connections_lost += 1;
        } else {
            s.counters.connect_failures += 1;
        }
        s.error(e);
        End::Retry
    }

    fn faulted(&mut self, f: Fault, connected: bool) -> End {
        let e = match f {
            Fault::ConnAckTimeout => LoadError::ConnectTimeout,
            Fault::PingTimeout => LoadError::PingTimeout,
            Fault::Decode(_) | Fault::Protocol(_) | Fault::Encode(_) | Fault::NotConnected => {
                LoadError::ProtocolError
            }
        };
        tracing::debug!(client = %self.spec.client_id, error = %f, "Connection fault");
        self.lost(e, connected)
    }

    /// Leaves cleanly: DISCONNECT, flush, close.
    async fn close(&mut self, stream: &mut Stream, pending: &mut Option<BytePages>, connected: bool) -> End {
        self.close_with(stream, pending, connected, 0).await
    }

    /// Leaves with DISCONNECT carrying `reason` (MQTT 5; 3.1.1 has none): flush, close.
    async fn close_with(
        &mut self,
        stream: &mut Stream,
        pending: &mut Option<BytePages>,
        connected: bool,
        reason: u8,
    ) -> End {
        if connected {
            if let Some(w) = self.will.as_mut() {
                let now = self.shared.clock.now_ns();
                w.closing(&mut self.shared.rec.shard(self.key), now);
            }
            let _ = self.conn.disconnect(reason);
            if let Some(mut out) = self.conn.take_output() {
                match pending.as_mut() {
                    Some(p) => out.move_to(p),
                    None => *pending = Some(out),
                }
            }
            Box::pin(self.flush_best_effort(stream, pending)).await;
        }
        self.conn.lost();
        // boxed, as the flush above: a leaving client's futures need not size its whole task
        let shutdown = tokio::io::AsyncWriteExt::shutdown(stream);
        let _ = Box::pin(tokio::time::timeout(Duration::from_millis(200), shutdown)).await;
        End::Stop
    }

    async fn flush_best_effort(&mut self, stream: &mut Stream, pending: &mut Option<BytePages>) {
        let Some(mut p) = pending.take() else { return };
        let write = async {
            use tokio::io::AsyncWriteExt;
            while let Some(page) = p.take() {
                stream.write_all(page.as_ref()).await?;
            }
            stream.flush().await
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
    }

    /// The client's accounting at the end of the run.
    fn finish(mut self) -> Outcome {
        self.fix_publishing(u64::MAX);
        let open = self.conn.abandon_open();
        let unacked = open
            .iter()
            .filter(|s| matches!(s.kind, Kind::AwaitPubAck | Kind::AwaitPubRec | Kind::AwaitPubComp))
            .count() as u64;
        if unacked > 0 {
            self.shared.rec.shard(self.key).counters.unacked += unacked;
        }
        self.signal_ready();
        Outcome {
            group: self.group.index,
            index: self.index,
            ledger: match self.receiver {
                Some(Receiver::Own(l)) => Some(l),
                _ => None,
            },
            filters: self
                .filters
                .iter()
                .map(|(f, _)| f.to_string())
                .zip(self.granted.iter().copied())
                .collect(),
        }
    }
}
