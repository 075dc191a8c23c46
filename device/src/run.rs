//! The endpoint: squall's broker with its timeline on, and the cases run one after another
//! against the device that connects (or only the client id given).
//!
//! Every case starts the same way: the previous case's faults are cleared, the client's
//! connection count starts again at 0, the case's faults are set, and the device's current
//! connection (if any) is dropped, so the case judges the device from its next CONNECT on.
//! Then the case waits for what it needs to see (polling the timeline every 10 ms), acts (drops
//! the device, publishes to it) and judges, until it has a verdict or `EXECUTION_TIMEOUT`.
//!
//! Decisions where Device Advisor's documentation is silent are in each case's function.

use std::time::Duration;

use serde::Serialize;
use squall_broker::timeline::{Detail, Dir, Kind, Note, PacketEvent, payload_hash};
use squall_broker::{AckPacket, Action, Broker, Rule, Selector};
use tokio::time::Instant;

use crate::attempts::{Attempt, attempts, delays_s};
use crate::backoff::{Grade, Judgement, Policy, classify};
use crate::suite::{Case, CaseId};

/// A case's outcome, as Device Advisor grades them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    PassWithWarning,
    Fail,
    /// What the case needed to see did not happen within `EXECUTION_TIMEOUT`.
    Timeout,
}

/// One case's result, with its evidence.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct CaseResult {
    pub name: String,
    pub id: String,
    pub verdict: Verdict,
    /// Why, with the numbers.
    pub why: String,
    /// The device's client id (none: no device connected).
    pub client_id: Option<String>,
    /// When the case started, s since the endpoint started.
    pub started_s: f64,
    pub duration_s: f64,
    /// The backoff cases' judgements of the delays between attempts (one per series).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backoff: Vec<Judgement>,
    /// The device's packets during the case (ns since the endpoint started).
    pub timeline: Vec<PacketEvent>,
    /// Events the broker's timeline had no room for (a flooding device).
    pub timeline_dropped: u64,
}

/// How often a case looks at the timeline.
const POLL: Duration = Duration::from_millis(10);
/// Keepalive above which `MQTT_No_Ack_PingResp` does not wait (Device Advisor's bound).
pub const MAX_PING_KEEPALIVE_S: u16 = 230;

/// The endpoint.
pub struct Endpoint {
    pub broker: Broker,
    /// How long a case gives the device to do something more after what it waits for (a
    /// SUBACK to arrive before a drop, a SUBSCRIBE that must not come). `--settle`.
    pub settle: Duration,
    /// The device: the client id given (`--client-id`), else the one seen so far.
    known: Option<String>,
}

impl Endpoint {
    /// `client_id`: only this client is the device (`--client-id`); none: the first that connects.
    pub fn new(broker: Broker, client_id: Option<String>, settle: Duration) -> Endpoint {
        Endpoint { broker, settle, known: client_id }
    }

    /// Runs one case to its verdict; `say` gets the live status ("waiting for the device").
    pub async fn run(&mut self, case: &Case, say: &mut dyn FnMut(&str)) -> CaseResult {
        let started_ns = self.broker.now_ns();
        let mut cx = Cx {
            ep: self,
            deadline: Instant::now() + case.timeout,
            case_ns: started_ns,
            t0_ns: started_ns,
            first_conn: None,
            seen: Vec::new(),
            said: String::new(),
            say,
        };
        let (verdict, why, backoff) = match run_case(&mut cx, case).await {
            Ok((v, why)) => (v, why, Vec::new()),
            Err(Stop::Timeout(why)) => (Verdict::Timeout, why, Vec::new()),
            Err(Stop::Judged(v, why, b)) => (v, why, b),
        };
        let client_id = cx.ep.known.clone();
        let (case_ns, timeline) =
            (cx.case_ns, cx.seen.iter().filter(|e| e.at_ns >= cx.case_ns).cloned().collect());
        self.broker.faults().clear();
        let dropped = client_id.as_deref().map_or(0, |c| self.broker.timeline_dropped(c));
        let ended_ns = self.broker.now_ns();
        CaseResult {
            name: case.name.clone(),
            id: case.id.name(),
            verdict,
            why,
            client_id,
            started_s: case_ns as f64 / 1e9,
            duration_s: ended_ns.saturating_sub(case_ns) as f64 / 1e9,
            backoff,
            timeline,
            timeline_dropped: dropped,
        }
    }
}

/// How a case ends early: the time ran out, or a verdict with backoff judgements.
enum Stop {
    Timeout(String),
    Judged(Verdict, String, Vec<Judgement>),
}

type Judged = Result<(Verdict, String), Stop>;

fn fail(why: impl Into<String>) -> Stop {
    Stop::Judged(Verdict::Fail, why.into(), Vec::new())
}

/// A case in progress.
struct Cx<'a> {
    ep: &'a mut Endpoint,
    deadline: Instant,
    /// When the case started (its timeline starts here).
    case_ns: u64,
    /// When the current phase started: it looks at connections from the first CONNECT after.
    t0_ns: u64,
    first_conn: Option<u64>,
    /// The device's events since the endpoint started, as fetched (its timeline's first
    /// `seen.len()` events).
    seen: Vec<PacketEvent>,
    said: String,
    say: &'a mut dyn FnMut(&str),
}

impl Cx<'_> {
    fn status(&mut self, s: &str) {
        if self.said != s {
            (self.say)(s);
            self.said = s.to_string();
        }
    }

    /// The device's client id, once one has connected.
    fn device(&mut self) -> Option<String> {
        if self.ep.known.is_none() {
            // the first client to CONNECT since the case started is the device
            let t0 = self.t0_ns;
            self.ep.known = self
                .ep
                .broker
                .timeline_clients()
                .into_iter()
                .filter_map(|c| {
                    let at = self
                        .ep
                        .broker
                        .timeline(&c)
                        .iter()
                        .find(|e| e.kind == Kind::Connect && e.at_ns >= t0)
                        .map(|e| e.at_ns)?;
                    Some((at, c))
                })
                .min()
                .map(|(_, c)| c);
        }
        self.ep.known.clone()
    }

    /// The events of the current phase: the device's connections from its first CONNECT after
    /// the phase started.
    fn events(&mut self) -> Vec<PacketEvent> {
        let Some(id) = self.device() else { return Vec::new() };
        let new = self.ep.broker.timeline_since(&id, self.seen.len());
        self.seen.extend(new);
        if self.first_conn.is_none() {
            let t0 = self.t0_ns;
            self.first_conn =
                self.seen.iter().find(|e| e.kind == Kind::Connect && e.at_ns >= t0).map(|e| e.conn);
        }
        match self.first_conn {
            Some(c) => self.seen.iter().filter(|e| e.conn >= c).cloned().collect(),
            None => Vec::new(),
        }
    }

    /// Sets the phase's faults (for the device, or any client while none is known), counts
    /// its connections from 0 and drops its current one: the phase starts at its next CONNECT.
    fn begin(&mut self, rules: Vec<(Selector, Action)>) {
        // the phase starts before anything changes: the CONNECT that answers the drop below is
        // always after it, however late this task runs on a loaded machine
        self.t0_ns = self.ep.broker.now_ns();
        self.first_conn = None;
        if self.ep.known.is_none() {
            // a client already connected when the case starts is the device (the latest, if
            // several: --client-id picks one); it is dropped below like a known one
            let broker = &self.ep.broker;
            self.ep.known = broker
                .timeline_clients()
                .into_iter()
                .filter_map(|c| {
                    Some((broker.timeline(&c).iter().rev().find(|e| e.kind == Kind::Connect)?.at_ns, c))
                })
                .max()
                .map(|(_, c)| c);
        }
        let faults = self.ep.broker.faults();
        faults.clear();
        faults.reset_attempts();
        let glob = self.ep.known.clone().unwrap_or_else(|| "*".into());
        for (mut select, action) in rules {
            select.clients = Some(glob.clone());
            faults.add(Rule { select, action });
        }
        if let Some(id) = &self.ep.known {
            self.ep.broker.drop_client(id);
        }
    }

    /// Waits until `f` finds what it looks for in the phase's events, saying `what` meanwhile;
    /// at the deadline a timeout that says `what` was still awaited.
    async fn until<T>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&[PacketEvent]) -> Option<T>,
    ) -> Result<T, Stop> {
        self.until_with(what, |ev, _| f(ev)).await
    }

    /// [`Cx::until`], `f` also given the broker (to read a session's state).
    async fn until_with<T>(
        &mut self,
        what: &str,
        f: impl FnMut(&[PacketEvent], &Broker) -> Option<T>,
    ) -> Result<T, Stop> {
        let found = self.wait(what, None, f).await?;
        Ok(found.expect("without a limit of its own, a wait ends found or timed out"))
    }

    /// Like [`Cx::until`], but the limit is `by` (sooner than the deadline): `None` then.
    async fn until_by<T>(
        &mut self,
        what: &str,
        by: Instant,
        mut f: impl FnMut(&[PacketEvent]) -> Option<T>,
    ) -> Result<Option<T>, Stop> {
        self.wait(what, Some(by), |ev, _| f(ev)).await
    }

    async fn wait<T>(
        &mut self,
        what: &str,
        by: Option<Instant>,
        mut f: impl FnMut(&[PacketEvent], &Broker) -> Option<T>,
    ) -> Result<Option<T>, Stop> {
        loop {
            let ev = self.events();
            if let Some(t) = f(&ev, &self.ep.broker) {
                return Ok(Some(t));
            }
            let what = if self.ep.known.is_none() { "waiting for the device to connect" } else { what };
            let now = Instant::now();
            if by.is_some_and(|by| now >= by && by < self.deadline) {
                return Ok(None);
            }
            if now >= self.deadline {
                return Err(Stop::Timeout(format!("{} s passed {what}", self.deadline_s())));
            }
            self.status(what);
            tokio::time::sleep(POLL).await;
        }
    }

    fn deadline_s(&self) -> u64 {
        self.ep.broker.now_ns().saturating_sub(self.case_ns).div_ceil(1_000_000_000)
    }

    fn drop_device(&mut self) {
        if let Some(id) = &self.ep.known {
            self.ep.broker.drop_client(id);
        }
    }
}

// ---- reading events ----

fn first(ev: &[PacketEvent], dir: Dir, kind: Kind) -> Option<&PacketEvent> {
    ev.iter().find(|e| e.dir == dir && e.kind == kind)
}

struct ConnectSeen {
    v5: bool,
    clean_start: bool,
    keepalive: u16,
    session_expiry: u32,
    session_present: bool,
}

/// What the device's CONNECT of connection `conn` (or its first, with `None`) said.
fn connect_of(ev: &[PacketEvent], conn: Option<u64>) -> Option<ConnectSeen> {
    ev.iter().filter(|e| e.kind == Kind::Connect && conn.is_none_or(|c| e.conn == c)).find_map(|e| {
        match e.detail.as_deref()? {
            Detail::Connect { v5, clean_start, keepalive, session_expiry, session_present, .. } => {
                Some(ConnectSeen {
                    v5: *v5,
                    clean_start: *clean_start,
                    keepalive: *keepalive,
                    session_expiry: *session_expiry,
                    session_present: *session_present,
                })
            }
            _ => None,
        }
    })
}

fn protocol(v5: bool) -> &'static str {
    if v5 { "MQTT 5" } else { "MQTT 3.1.1" }
}

/// The inbound PUBLISHes: (event, topic, retain, payload length, payload hash, properties).
fn publishes(ev: &[PacketEvent]) -> impl Iterator<Item = (&PacketEvent, &Detail)> {
    ev.iter()
        .filter(|e| e.dir == Dir::In && e.kind == Kind::Publish)
        .filter_map(|e| Some((e, e.detail.as_deref()?)))
}

/// The filters of the inbound SUBSCRIBEs of connection `conn` (any, with `None`).
fn subscribed(ev: &[PacketEvent], conn: Option<u64>) -> Vec<(String, u8)> {
    ev.iter()
        .filter(|e| e.dir == Dir::In && e.kind == Kind::Subscribe && conn.is_none_or(|c| e.conn == c))
        .filter_map(|e| match e.detail.as_deref()? {
            Detail::Subscribe { filters } => Some(filters.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Whether connection `conn` has ended, and who ended it.
fn closed(ev: &[PacketEvent], conn: u64) -> Option<(u64, Option<Note>)> {
    let by_broker = ev.iter().find(|e| e.conn == conn && e.kind == Kind::Closed && e.dir == Dir::Out);
    let end = ev.iter().find(|e| e.conn == conn && e.kind == Kind::Closed)?;
    Some((by_broker.unwrap_or(end).at_ns, by_broker.and_then(|e| e.note)))
}

/// A topic a filter matches: wildcards made concrete (`+` → `squall`, `#` → `squall`).
fn topic_for(filter: &str) -> String {
    let f = squall_proto::topic::split_shared(filter).1;
    f.split('/').map(|l| if l == "+" || l == "#" { "squall" } else { l }).collect::<Vec<_>>().join("/")
}

fn secs(ns: u64) -> String {
    format!("{:.3} s", ns as f64 / 1e9)
}

// ---- the cases ----

async fn run_case(cx: &mut Cx<'_>, case: &Case) -> Judged {
    use CaseId::*;
    match case.id {
        MQTT_Connect => connect(cx).await,
        MQTT_Client_Puback_QoS1 => puback_qos1(cx, case).await,
        MQTT_Connect_Jitter_Backoff_Retries => connect_backoff(cx, true).await,
        MQTT_Connect_Exponential_Backoff_Retries => connect_backoff(cx, false).await,
        MQTT_Reconnect_Backoff_Retries_On_Server_Disconnect => {
            reconnect_backoff(cx, case.attempts, false).await
        }
        MQTT_Reconnect_Backoff_Retries_On_Unstable_Connection => {
            reconnect_backoff(cx, case.attempts, true).await
        }
        MQTT_Publish | MQTT_Publish_Retained_Messages | MQTT_Publish_User_Property => publish(cx, case).await,
        MQTT_Publish_Retry_No_Puback => retry(cx, AckPacket::PubAck).await,
        MQTT_Subscribe => subscribe(cx, case).await,
        MQTT_Subscribe_Retry_No_Suback => retry(cx, AckPacket::SubAck).await,
        MQTT_No_Ack_PingResp => no_pingresp(cx).await,
        MQTT_Persistent_Session_Happy_Case => session(cx, case, false).await,
        MQTT_Expired_Persistent_Session => session(cx, case, true).await,
    }
}

/// `MQTT_Connect`: a CONNECT arrives.
async fn connect(cx: &mut Cx<'_>) -> Judged {
    cx.begin(Vec::new());
    let c = cx.until("waiting for a CONNECT", |ev| connect_of(ev, None)).await?;
    Ok((
        Verdict::Pass,
        format!(
            "CONNECT ({}, keepalive {} s, clean {})",
            protocol(c.v5),
            c.keepalive,
            if c.clean_start { "start" } else { "session off" }
        ),
    ))
}

/// The payload squall publishes to the device: `PAYLOAD_SIZE` bytes (Device Advisor's
/// "predefined payload": here a repeated text), else the configured text, else a default.
fn payload_of(case: &Case) -> Vec<u8> {
    match (case.payload_size, &case.payload) {
        (Some(n), _) => b"squall device ".iter().copied().cycle().take(n).collect(),
        (None, Some(p)) => p.as_bytes().to_vec(),
        (None, None) => b"squall device: a QoS 1 message for the device".to_vec(),
    }
}

/// A QoS 1 subscription of the device, seen on the wire or already in its resumed session.
struct Subscribed {
    /// The connection it was made or resumed on.
    conn: u64,
    /// The topic squall publishes on: the trigger, or the filter made concrete.
    topic: String,
    /// Every filter the device holds then.
    filters: Vec<(String, u8)>,
}

/// Waits for a QoS 1 (or 2) subscription of the device (to a filter matching `trigger`, if
/// given): a SUBSCRIBE in this phase, or one its session kept (a device that resumed its
/// session from an earlier case rightly does not subscribe again).
async fn qos1_subscription(cx: &mut Cx<'_>, trigger: Option<&str>) -> Result<Subscribed, Stop> {
    let what = match trigger {
        Some(t) => format!("waiting for a QoS 1 SUBSCRIBE to a filter matching {t}"),
        None => "waiting for a QoS 1 SUBSCRIBE".to_string(),
    };
    let id = cx.ep.known.clone();
    let pick = |filters: &[(String, u8)]| {
        filters.iter().filter(|(_, q)| *q >= 1).find_map(|(f, _)| match trigger {
            Some(t) => squall_proto::topic::matches(f, t).then(|| t.to_string()),
            None => Some(topic_for(f)),
        })
    };
    cx.until_with(&what, |ev, broker| {
        let on_wire = ev.iter().filter(|e| e.dir == Dir::In && e.kind == Kind::Subscribe).find_map(|e| {
            let topic = pick(&subscribed(std::slice::from_ref(e), None))?;
            Some(Subscribed { conn: e.conn, topic, filters: subscribed(ev, Some(e.conn)) })
        });
        on_wire.or_else(|| {
            // resumed: the session's own subscriptions, once its CONNACK is out
            let c =
                ev.iter().rev().find(|e| e.kind == Kind::ConnAck && e.dir == Dir::Out && e.note.is_none())?;
            connect_of(ev, Some(c.conn)).filter(|s| s.session_present)?;
            let held = broker.subscriptions(id.as_deref().or_else(|| client_of(ev))?);
            Some(Subscribed { conn: c.conn, topic: pick(&held)?, filters: held })
        })
    })
    .await
}

/// The client id the phase's CONNECTs carried.
fn client_of(ev: &[PacketEvent]) -> Option<&str> {
    ev.iter().find_map(|e| match e.detail.as_deref()? {
        Detail::Connect { client_id, .. } => Some(client_id.as_str()),
        _ => None,
    })
}

/// `MQTT_Client_Puback_QoS1`: squall publishes at QoS 1 to a topic the device subscribed to;
/// the device must PUBACK it (on any of its connections: a resent copy's PUBACK counts).
async fn puback_qos1(cx: &mut Cx<'_>, case: &Case) -> Judged {
    cx.begin(Vec::new());
    let topic = qos1_subscription(cx, case.trigger_topic.as_deref()).await?.topic;
    let payload = payload_of(case);
    let len = payload.len();
    let sent_ns = cx.ep.broker.now_ns();
    if cx.ep.broker.publish(&topic, payload, 1, false) == 0 {
        return Err(fail(format!("no subscription of the device matches {topic}")));
    }
    let pid = cx
        .until("waiting for squall's PUBLISH to leave", |ev| {
            ev.iter()
                .find(|e| {
                    e.dir == Dir::Out && e.kind == Kind::Publish && e.at_ns >= sent_ns && e.qos == Some(1)
                })?
                .pid
        })
        .await?;
    let acked = cx
        .until(&format!("waiting for the PUBACK of packet {pid}"), |ev| {
            ev.iter()
                .find(|e| {
                    e.dir == Dir::In && e.kind == Kind::PubAck && e.pid == Some(pid) && e.at_ns >= sent_ns
                })
                .map(|e| e.at_ns)
        })
        .await?;
    Ok((
        Verdict::Pass,
        format!(
            "PUBACK of packet {pid} ({len} bytes on {topic}) {} after the PUBLISH",
            secs(acked - sent_ns)
        ),
    ))
}

/// The grade of a backoff judgement as a verdict.
fn graded(j: &Judgement) -> Verdict {
    match j.grade {
        Grade::Pass => Verdict::Pass,
        Grade::PassWithWarning => Verdict::PassWithWarning,
        Grade::Fail | Grade::Insufficient => Verdict::Fail,
    }
}

/// The worst of several verdicts.
fn worst(v: impl IntoIterator<Item = Verdict>) -> Verdict {
    let rank = |v: &Verdict| match v {
        Verdict::Pass => 0,
        Verdict::PassWithWarning => 1,
        Verdict::Fail => 2,
        Verdict::Timeout => 3,
    };
    v.into_iter().max_by_key(rank).unwrap_or(Verdict::Fail)
}

/// Why a device is stuck, if it is: a connection waiting for a CONNACK that never comes, open
/// for longer than `patience`.
fn stuck(a: &[Attempt], now_ns: u64, patience: Duration) -> Option<String> {
    let last = a.last()?;
    let connect = last.connect_ns?;
    (last.connack_ns.is_none()
        && last.closed_ns.is_none()
        && now_ns.saturating_sub(connect) > patience.as_nanos() as u64)
        .then(|| {
            format!(
                "the device has waited {} for a CONNACK without giving up (it must time out and retry)",
                secs(now_ns - connect)
            )
        })
}

/// `MQTT_Connect_Jitter_Backoff_Retries` (`jitter`) and
/// `MQTT_Connect_Exponential_Backoff_Retries`: CONNACK withheld, so the device retries.
///
/// The jitter case withholds it for 5 attempts and answers the 6th, twice over (12 CONNECTs;
/// the device is dropped between the two series), and judges each series' 5 delays: jittered
/// growth passes, strict exponential passes with a warning, linear or constant fails. The
/// exponential case does it once: the 5 delays must grow exponentially (with jitter or
/// without).
async fn connect_backoff(cx: &mut Cx<'_>, jitter: bool) -> Judged {
    let (withheld, series) = (5u32, if jitter { 2 } else { 1 });
    let mut judged = Vec::new();
    for s in 0..series {
        cx.begin(vec![(
            Selector { first: Some(withheld), ..Default::default() },
            Action::Withhold { packet: AckPacket::ConnAck },
        )]);
        let patience = cx.ep.settle.max(Duration::from_secs(1)) * 60;
        let found = cx
            .until_stuck(
                &format!("series {}/{series}: waiting for CONNECT {}", s + 1, withheld + 1),
                "withheld",
                withheld,
                patience,
            )
            .await?;
        let j = classify(&delays_s(&found[..withheld as usize + 1]));
        judged.push(j);
    }
    let verdict = if jitter {
        worst(judged.iter().map(graded))
    } else {
        match judged[0].policy {
            Some(Policy::Exponential | Policy::Jittered) => Verdict::Pass,
            _ => Verdict::Fail,
        }
    };
    let why = judged.iter().map(|j| j.why.clone()).collect::<Vec<_>>().join("; ");
    Err(Stop::Judged(verdict, why, judged))
}

impl Cx<'_> {
    /// Waits for `n + 1` attempts of the phase (the device retrying `n` times), saying how
    /// many CONNECTs were withheld; a device stuck on one attempt for `patience` fails.
    async fn until_stuck(
        &mut self,
        what: &str,
        done: &str,
        n: u32,
        patience: Duration,
    ) -> Result<Vec<Attempt>, Stop> {
        loop {
            let a = attempts(&self.events());
            let with_connect = a.iter().filter(|a| a.connect_ns.is_some()).count();
            if with_connect > n as usize {
                return Ok(a);
            }
            if let Some(why) = stuck(&a, self.ep.broker.now_ns(), patience) {
                return Err(Stop::Judged(Verdict::Timeout, why, Vec::new()));
            }
            if Instant::now() >= self.deadline {
                if let Some(why) = stuck(&a, self.ep.broker.now_ns(), Duration::ZERO) {
                    return Err(Stop::Judged(Verdict::Timeout, why, Vec::new()));
                }
                let got =
                    if a.is_empty() { "no CONNECT".to_string() } else { format!("{with_connect} CONNECTs") };
                return Err(Stop::Timeout(format!(
                    "{} s passed with {got} of the {} needed",
                    self.deadline_s(),
                    n + 1
                )));
            }
            let status = if self.ep.known.is_none() {
                "waiting for the device to connect".to_string()
            } else {
                format!("{what}: {}/{n} CONNECTs {done}", with_connect.min(n as usize))
            };
            self.status(&status);
            tokio::time::sleep(POLL).await;
        }
    }
}

/// `MQTT_Reconnect_Backoff_Retries_On_Server_Disconnect` and `…_On_Unstable_Connection`.
///
/// Server disconnect: the first connection is accepted, then dropped; the next
/// `RECONNECTION_ATTEMPTS` attempts are refused (CONNACK "server unavailable", as a broker that
/// is restarting), the one after is accepted. Unstable connection: the first connection and the
/// next `RECONNECTION_ATTEMPTS` are each dropped right after a successful CONNACK (a device that
/// resets its backoff on every CONNACK then hammers), the one after is kept. Either way the
/// `RECONNECTION_ATTEMPTS + 1` delays up to the kept connection are judged.
async fn reconnect_backoff(cx: &mut Cx<'_>, n: u32, unstable: bool) -> Judged {
    let rules = if unstable {
        vec![(Selector { first: Some(n + 1), ..Default::default() }, Action::DropAfter(Duration::ZERO))]
    } else {
        vec![(
            Selector { after: Some(1), first: Some(n + 1), ..Default::default() },
            Action::Refuse { code: 0x88 },
        )]
    };
    cx.begin(rules);
    if !unstable {
        let settle = cx.ep.settle;
        cx.until("waiting for the device to connect", |ev| {
            ev.iter()
                .find(|e| e.kind == Kind::ConnAck && e.dir == Dir::Out && e.note.is_none())
                .map(|e| e.conn)
        })
        .await?;
        tokio::time::sleep(settle).await;
        cx.drop_device();
    }
    let patience = cx.ep.settle.max(Duration::from_secs(1)) * 60;
    let a = cx
        .until_stuck(
            "waiting for the reconnections",
            if unstable { "dropped" } else { "refused" },
            n + 1,
            patience,
        )
        .await?;
    let j = classify(&delays_s(&a[..n as usize + 2]));
    Err(Stop::Judged(graded(&j), j.why.clone(), vec![j]))
}

/// `MQTT_Publish`, `MQTT_Publish_Retained_Messages`, `MQTT_Publish_User_Property`: a PUBLISH
/// from the device, on the topic and with the payload given (if given); retained, or carrying
/// the user properties, for those cases. A PUBLISH that is not it is noted: if the device
/// published and none was it, the verdict is a failure that lists what came, not a timeout.
async fn publish(cx: &mut Cx<'_>, case: &Case) -> Judged {
    cx.begin(Vec::new());
    let retained = case.id == CaseId::MQTT_Publish_Retained_Messages;
    let props = case.id == CaseId::MQTT_Publish_User_Property;
    if props {
        let c = cx.until("waiting for a CONNECT", |ev| connect_of(ev, None)).await?;
        if !c.v5 {
            return Err(fail(
                "the device connected with MQTT 3.1.1, which has no user properties: connect with MQTT 5",
            ));
        }
    }
    let want_hash = case.payload.as_ref().map(|p| payload_hash(p.as_bytes()));
    let mut seen: Vec<String> = Vec::new();
    let found = cx
        .until("waiting for the device's PUBLISH", |ev| {
            seen.clear();
            publishes(ev).find_map(|(e, d)| {
                let Detail::Publish { topic, retain, payload_hash, user_properties, payload_len, .. } = d
                else {
                    return None;
                };
                let mut wrong = Vec::new();
                if case.topic.as_ref().is_some_and(|t| t != topic) {
                    wrong.push("another topic");
                }
                if want_hash.is_some_and(|h| h != *payload_hash) {
                    wrong.push("another payload");
                }
                if retained && !retain {
                    wrong.push("no retain flag");
                }
                let missing = case.user_properties.iter().filter(|p| !user_properties.contains(p)).count();
                if props && (missing > 0 || user_properties.is_empty()) {
                    wrong.push("not the user properties");
                }
                if wrong.is_empty() {
                    Some(format!(
                        "PUBLISH on {topic} at QoS {} ({payload_len} bytes{}{})",
                        e.qos.unwrap_or(0),
                        if *retain { ", retained" } else { "" },
                        if user_properties.is_empty() {
                            String::new()
                        } else {
                            format!(", user properties {user_properties:?}")
                        }
                    ))
                } else {
                    seen.push(format!("{topic}: {}", wrong.join(", ")));
                    None
                }
            })
        })
        .await;
    match found {
        Ok(why) => Ok((Verdict::Pass, why)),
        Err(Stop::Timeout(t)) if !seen.is_empty() => {
            let shown: Vec<_> = seen.iter().take(5).cloned().collect();
            Err(fail(format!(
                "{} PUBLISH, none as asked ({}{}); {t}",
                seen.len(),
                shown.join("; "),
                if seen.len() > 5 { "; …" } else { "" }
            )))
        }
        Err(e) => Err(e),
    }
}

/// `MQTT_Subscribe`: the device subscribes to every filter of
/// `TOPIC_LIST_FOR_SUBSCRIPTION_VALIDATION` (over one or several SUBSCRIBEs), or to anything.
///
/// Every connection of the case is told its session is gone (CONNACK session present = false),
/// so a device with a persistent session subscribes as on its first boot instead of rightly
/// relying on the subscriptions an earlier case left it.
async fn subscribe(cx: &mut Cx<'_>, case: &Case) -> Judged {
    cx.begin(vec![(Selector::default(), Action::ExpireSession)]);
    let want = case.subscriptions.clone();
    let got = cx
        .until("waiting for the device's SUBSCRIBE", |ev| {
            let got = subscribed(ev, None);
            let all = want.iter().all(|w| got.iter().any(|(f, _)| f == w));
            (!got.is_empty() && all).then_some(got)
        })
        .await?;
    let shown: Vec<String> = got.iter().map(|(f, q)| format!("{f} (QoS {q})")).collect();
    Ok((Verdict::Pass, format!("SUBSCRIBE to {}", shown.join(", "))))
}

/// `MQTT_Publish_Retry_No_Puback` (PUBACK withheld) and `MQTT_Subscribe_Retry_No_Suback`
/// (SUBACK withheld): the device must send the packet again with the same packet id (a PUBLISH
/// with DUP set) on the same connection; a reconnect starts the case again on the new one, as
/// Device Advisor does. MQTT 5 forbids resending on the same connection (MQTT-4.4.0-1): a v5
/// device is dropped `--settle` after its unanswered packet and must resend it on its next
/// connection with the session kept (a SUBSCRIBE: subscribe to the same filters again).
///
/// For the SUBSCRIBE, every connection of the case is told its session is gone (as in
/// `MQTT_Subscribe`): a device must then subscribe, and after a reconnect subscribe again.
async fn retry(cx: &mut Cx<'_>, ack: AckPacket) -> Judged {
    let mut rules = vec![(Selector::default(), Action::Withhold { packet: ack })];
    if ack == AckPacket::SubAck {
        rules.push((Selector::default(), Action::ExpireSession));
    }
    cx.begin(rules);
    let kind = if ack == AckPacket::PubAck { Kind::Publish } else { Kind::Subscribe };
    let name = if kind == Kind::Publish { "QoS 1 PUBLISH" } else { "SUBSCRIBE" };
    let unanswered =
        |e: &PacketEvent| e.dir == Dir::In && e.kind == kind && (kind != Kind::Publish || e.qos == Some(1));
    let first = cx
        .until(&format!("waiting for a {name}"), |ev| {
            let e = ev.iter().find(|e| unanswered(e))?;
            Some((e.conn, e.pid?, e.at_ns, e.detail.clone()))
        })
        .await?;
    let v5 = connect_of(&cx.events(), Some(first.0)).is_some_and(|c| c.v5);
    if v5 {
        tokio::time::sleep(cx.ep.settle).await;
        let same_conn = cx
            .events()
            .iter()
            .any(|e| unanswered(e) && e.conn == first.0 && e.pid == Some(first.1) && e.at_ns > first.2);
        if same_conn {
            return Err(fail(format!(
                "the MQTT 5 device resent {name} {} on the same connection, which MQTT 5 forbids (MQTT-4.4.0-1)",
                first.1
            )));
        }
        cx.drop_device();
        let next = cx
            .until("dropped the device: waiting for it to reconnect", |ev| {
                ev.iter().find(|e| e.kind == Kind::Connect && e.conn > first.0).map(|e| e.conn)
            })
            .await?;
        let c = connect_of(&cx.events(), Some(next)).expect("a CONNECT was seen");
        if kind == Kind::Publish && !c.session_present {
            return Err(fail(
                "the device reconnected without its session (clean start): MQTT 5 resends only on a resumed session; connect with clean start 0 and a session expiry",
            ));
        }
        let filters = subscribed(&cx.events(), Some(first.0));
        let (pid, at) = cx
            .until(&format!("waiting for the {name} {} again", first.1), |ev| {
                ev.iter().filter(|e| unanswered(e) && e.conn == next).find_map(|e| {
                    let again = if kind == Kind::Publish {
                        e.pid == Some(first.1)
                    } else {
                        let now = subscribed(std::slice::from_ref(e), None);
                        filters.iter().all(|f| now.contains(f))
                    };
                    again.then_some((e.pid, e.at_ns))
                })
            })
            .await?;
        let dup =
            kind == Kind::Publish && !cx.events().iter().any(|e| e.conn == next && e.pid == pid && e.dup);
        if dup {
            return Err(fail(format!("the {name} {} came again without DUP set", first.1)));
        }
        return Ok((
            Verdict::Pass,
            format!("sent again on the reconnection, {} after the first", secs(at - first.2)),
        ));
    }
    // 3.1.1: on the same connection; a reconnect starts the case again on the new connection
    let found = cx
        .until(&format!("waiting for the {name} to come again"), |ev| {
            let conns: Vec<u64> = {
                let mut c: Vec<u64> = ev.iter().map(|e| e.conn).collect();
                c.dedup();
                c
            };
            conns.iter().find_map(|&c| {
                let f = ev.iter().find(|e| unanswered(e) && e.conn == c)?;
                let again = ev
                    .iter()
                    .find(|e| unanswered(e) && e.conn == c && e.pid == f.pid && e.at_ns > f.at_ns)?;
                Some((f.pid, again.at_ns - f.at_ns, again.dup))
            })
        })
        .await?;
    let (pid, after, dup) = found;
    let pid = pid.unwrap_or(0);
    if kind == Kind::Publish && !dup {
        return Err(fail(format!("PUBLISH {pid} came again after {} but without DUP set", secs(after))));
    }
    Ok((
        Verdict::Pass,
        format!("{name} {pid} sent again on the same connection {} after the first", secs(after)),
    ))
}

/// `MQTT_No_Ack_PingResp`: PUBACK, SUBACK and PINGRESP withheld; after its first unanswered
/// PINGREQ the device must close the connection within 1.5 × its keepalive. Why that window:
/// it is the broker's own rule for a silent client (MQTT-3.1.2-24), and the clients in use
/// close sooner (paho one keepalive after the PINGREQ; squall's engine `ack_timeout` after it).
/// Past the window squall's broker closes the connection itself (keepalive expired) and the
/// device fails. A keepalive of 0 (no PINGREQ ever) or over 230 s fails at once.
async fn no_pingresp(cx: &mut Cx<'_>) -> Judged {
    cx.begin(vec![
        (Selector::default(), Action::Withhold { packet: AckPacket::PingResp }),
        (Selector::default(), Action::Withhold { packet: AckPacket::PubAck }),
        (Selector::default(), Action::Withhold { packet: AckPacket::SubAck }),
    ]);
    let c = cx.until("waiting for a CONNECT", |ev| connect_of(ev, None)).await?;
    if c.keepalive == 0 || c.keepalive > MAX_PING_KEEPALIVE_S {
        return Err(fail(format!(
            "keepalive {} s: the case needs 1 to {MAX_PING_KEEPALIVE_S} s (with 0 a device never sends PINGREQ)",
            c.keepalive
        )));
    }
    let ping = cx
        .until("waiting for a PINGREQ", |ev| first(ev, Dir::In, Kind::PingReq).map(|e| (e.conn, e.at_ns)))
        .await?;
    let window_ns = c.keepalive as u64 * 1_500_000_000;
    let (conn, at) = ping;
    let by = Instant::now()
        + Duration::from_nanos((at + window_ns).saturating_sub(cx.ep.broker.now_ns()))
        + Duration::from_millis(500);
    let end =
        cx.until_by("PINGRESP withheld: waiting for the device to close", by, |ev| closed(ev, conn)).await?;
    match end {
        Some((t, None)) if t.saturating_sub(at) <= window_ns + 100_000_000 => Ok((
            Verdict::Pass,
            format!(
                "closed the connection {} after its unanswered PINGREQ (keepalive {} s, window {})",
                secs(t - at),
                c.keepalive,
                secs(window_ns)
            ),
        )),
        Some((t, None)) => Err(fail(format!(
            "closed the connection only {} after its unanswered PINGREQ: past the window of 1.5 × keepalive = {}",
            secs(t - at),
            secs(window_ns)
        ))),
        _ => Err(fail(format!(
            "kept the connection open 1.5 × keepalive ({}) after its unanswered PINGREQ; squall's broker closed it",
            secs(window_ns)
        ))),
    }
}

/// `MQTT_Persistent_Session_Happy_Case` and `MQTT_Expired_Persistent_Session`.
///
/// The device connects with a persistent session (3.1.1: clean session 0; v5: clean start 0
/// and a session expiry) and subscribes at QoS 1 (to a filter matching `TRIGGER_TOPIC`, if
/// given). squall waits `--settle`, drops it and stores a QoS 1 message for it (`PAYLOAD`).
/// Happy case: on reconnect (session present) the device must PUBACK the stored message and
/// not SUBSCRIBE again (watched for `--settle` after the PUBACK). Expired: the reconnect's
/// CONNACK says session present = false; the device must SUBSCRIBE to its filters again.
async fn session(cx: &mut Cx<'_>, case: &Case, expired: bool) -> Judged {
    let rules = if expired {
        vec![(Selector { after: Some(1), ..Default::default() }, Action::ExpireSession)]
    } else {
        Vec::new()
    };
    cx.begin(rules);
    let c = cx.until("waiting for a CONNECT", |ev| connect_of(ev, None)).await?;
    if c.clean_start || (c.v5 && c.session_expiry == 0) {
        return Err(fail(format!(
            "the device connected with {}: nothing to resume; connect with clean {} 0{}",
            if c.clean_start { "a clean session" } else { "a session expiry of 0" },
            if c.v5 { "start" } else { "session" },
            if c.v5 { " and a session expiry" } else { "" }
        )));
    }
    let Subscribed { conn, topic, filters } = qos1_subscription(cx, case.trigger_topic.as_deref()).await?;
    tokio::time::sleep(cx.ep.settle).await;
    cx.drop_device();
    cx.until("dropping the device", |ev| closed(ev, conn)).await?;
    let sent_ns = cx.ep.broker.now_ns();
    let payload = case.payload.clone().unwrap_or_else(|| "squall device: stored while you were away".into());
    cx.ep.broker.publish(&topic, payload.into_bytes(), 1, false);
    let next = cx
        .until("stored a QoS 1 message: waiting for the device to reconnect", |ev| {
            ev.iter().find(|e| e.kind == Kind::Connect && e.conn > conn).map(|e| e.conn)
        })
        .await?;
    let again = connect_of(&cx.events(), Some(next)).expect("a CONNECT was seen");
    if again.clean_start {
        return Err(fail("the device reconnected with a clean session: its stored message was discarded"));
    }
    if expired {
        let got = cx
            .until("session-present false: waiting for the device to SUBSCRIBE again", |ev| {
                let now = subscribed(ev, Some(next));
                filters.iter().all(|f| now.iter().any(|(n, _)| *n == f.0)).then_some(now)
            })
            .await?;
        let shown: Vec<&str> = got.iter().map(|(f, _)| f.as_str()).collect();
        return Ok((
            Verdict::Pass,
            format!("told its session was gone, it subscribed again to {}", shown.join(", ")),
        ));
    }
    let pid = cx
        .until("waiting for the stored message to be delivered", |ev| {
            ev.iter()
                .find(|e| e.dir == Dir::Out && e.kind == Kind::Publish && e.conn == next && e.qos == Some(1))?
                .pid
        })
        .await?;
    let acked = cx
        .until(&format!("waiting for the PUBACK of the stored message ({pid})"), |ev| {
            ev.iter()
                .find(|e| e.dir == Dir::In && e.kind == Kind::PubAck && e.conn == next && e.pid == Some(pid))
                .map(|e| e.at_ns)
        })
        .await?;
    tokio::time::sleep(cx.ep.settle).await;
    if !subscribed(&cx.events(), Some(next)).is_empty() {
        return Err(fail(
            "the device subscribed again on a resumed session (session present was true: its subscriptions were kept)",
        ));
    }
    Ok((
        Verdict::Pass,
        format!(
            "resumed its session without subscribing again and acknowledged the stored message {} after it was stored",
            secs(acked - sent_ns)
        ),
    ))
}
