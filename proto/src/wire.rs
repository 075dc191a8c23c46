//! The generated gRPC types ([`pb`]) and conversions from and to the plain types.
//!
//! Plain → wire cannot fail. Wire → plain checks what the plain types promise (enums known,
//! required parts present, URLs and addresses that parse, exactly three QoS entries) and says
//! which field was wrong: the other end may be another version, or not squall at all.
//!
//! Lists that grow with the run (stream counts) are cut into [`pb::StreamFinals`] chunks of
//! [`STREAMS_PER_CHUNK`] before the message they belong to, and gathered again by [`Chunks`],
//! which refuses more than it was told to expect.

use std::net::IpAddr;

use crate::link::{AgentEvent, AgentResult, Command, StageCommand};
use crate::metrics::{
    Counters, Delivery, ErrorCount, HistogramBytes, LedgerTotals, LoadError, Metric, Observers, OutageWindow,
    Receipts, ShareResult, Snapshot, StormResult, StreamFinal, StreamReceipts, Timing, WillMark, WillRecord,
};
use crate::plan::{
    Assignment, BackoffPolicy, Comeback, EventAction, EventSpec, GroupAssignment, GroupSpec, Identity,
    Jitter, PayloadSpec, PublishRange, PublishSpec, RateSpec, ReconnectSpec, SubscribeSpec, WillSpec,
};
use crate::protocol::Protocol;
use crate::target::TargetUrl;
use crate::tls::TlsMaterial;

/// The generated code of `squall/v1/link.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("squall.v1");
}

/// Streams per [`pb::StreamFinals`] chunk: ~50 bytes each, so a chunk stays far below gRPC's
/// 4 MiB message limit even with long topics.
pub const STREAMS_PER_CHUNK: usize = 4096;

/// A wire message that does not make a valid plain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct WireError {
    pub field: &'static str,
    pub problem: String,
}

fn bad(field: &'static str, problem: impl Into<String>) -> WireError {
    WireError { field, problem: problem.into() }
}

fn missing(field: &'static str) -> WireError {
    bad(field, "missing")
}

fn u8_of(field: &'static str, v: u32) -> Result<u8, WireError> {
    u8::try_from(v).map_err(|_| bad(field, format!("{v} does not fit a byte")))
}

fn u16_of(field: &'static str, v: u32) -> Result<u16, WireError> {
    u16::try_from(v).map_err(|_| bad(field, format!("{v} is above 65535")))
}

// ---------------------------------------------------------------------------------------------
// Assignment

impl From<Protocol> for pb::Protocol {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::V311 => pb::Protocol::V311,
            Protocol::V5 => pb::Protocol::V5,
        }
    }
}

fn protocol_from(v: i32) -> Result<Protocol, WireError> {
    match pb::Protocol::try_from(v) {
        Ok(pb::Protocol::V311) => Ok(Protocol::V311),
        Ok(pb::Protocol::V5) => Ok(Protocol::V5),
        _ => Err(bad("group.protocol", format!("unknown protocol {v}"))),
    }
}

impl From<&TlsMaterial> for pb::TlsMaterial {
    fn from(t: &TlsMaterial) -> Self {
        pb::TlsMaterial {
            ca_pem: t.ca_pem.clone(),
            cert_pem: t.cert_pem.clone(),
            key_pem: t.key_pem.clone(),
            server_name: t.server_name.clone(),
            insecure: t.insecure,
        }
    }
}

impl From<pb::TlsMaterial> for TlsMaterial {
    fn from(t: pb::TlsMaterial) -> Self {
        TlsMaterial {
            ca_pem: t.ca_pem,
            cert_pem: t.cert_pem,
            key_pem: t.key_pem,
            server_name: t.server_name,
            insecure: t.insecure,
        }
    }
}

impl From<&Assignment> for pb::Assignment {
    fn from(a: &Assignment) -> Self {
        pb::Assignment {
            run_tag: a.run_tag,
            agent: a.agent,
            targets: a.targets.iter().map(|t| t.to_string()).collect(),
            tls: Some((&a.tls).into()),
            source_addresses: a.source_addresses.iter().map(|s| s.to_string()).collect(),
            groups: a.groups.iter().map(Into::into).collect(),
            snapshot_interval_ms: a.snapshot_interval_ms,
            max_connecting: a.max_connecting,
            max_duration_ms: a.max_duration_ms,
            timer_coalesce_us: a.timer_coalesce_us,
            read_coalesce_us: a.read_coalesce_us,
            adaptive_connecting: a.adaptive_connecting,
            max_unsent_bytes: a.max_unsent_bytes,
            publish_ranges: a.publish_ranges.iter().map(Into::into).collect(),
            clock_offset_ns: a.clock_offset_ns,
            staged: a.staged,
        }
    }
}

impl TryFrom<pb::Assignment> for Assignment {
    type Error = WireError;

    fn try_from(a: pb::Assignment) -> Result<Self, WireError> {
        Ok(Assignment {
            run_tag: a.run_tag,
            agent: a.agent,
            targets: a
                .targets
                .iter()
                .map(|t| t.parse::<TargetUrl>().map_err(|e| bad("assignment.targets", e.to_string())))
                .collect::<Result<_, _>>()?,
            tls: a.tls.map(Into::into).unwrap_or_default(),
            source_addresses: a
                .source_addresses
                .iter()
                .map(|s| {
                    s.parse::<IpAddr>().map_err(|_| bad("assignment.source_addresses", format!("`{s}`")))
                })
                .collect::<Result<_, _>>()?,
            groups: a.groups.into_iter().map(TryInto::try_into).collect::<Result<_, _>>()?,
            snapshot_interval_ms: a.snapshot_interval_ms,
            max_connecting: a.max_connecting,
            max_duration_ms: a.max_duration_ms,
            timer_coalesce_us: a.timer_coalesce_us,
            read_coalesce_us: a.read_coalesce_us,
            adaptive_connecting: a.adaptive_connecting,
            max_unsent_bytes: a.max_unsent_bytes,
            publish_ranges: a.publish_ranges.iter().map(Into::into).collect(),
            clock_offset_ns: a.clock_offset_ns,
            staged: a.staged,
        })
    }
}

impl From<&PublishRange> for pb::PublishRange {
    fn from(r: &PublishRange) -> Self {
        pb::PublishRange { stream_base: r.stream_base, clients: r.clients, group: r.group }
    }
}

impl From<&pb::PublishRange> for PublishRange {
    fn from(r: &pb::PublishRange) -> Self {
        PublishRange { stream_base: r.stream_base, clients: r.clients, group: r.group }
    }
}

impl From<&GroupAssignment> for pb::GroupAssignment {
    fn from(g: &GroupAssignment) -> Self {
        pb::GroupAssignment {
            spec: Some((&g.spec).into()),
            first: g.first,
            count: g.count,
            stream_base: g.stream_base,
            client_base: g.client_base,
            group: g.group,
            identities: g
                .identities
                .iter()
                .map(|i| pb::Identity {
                    client_id: i.client_id.clone(),
                    username: i.username.clone(),
                    password: i.password.clone(),
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::GroupAssignment> for GroupAssignment {
    type Error = WireError;

    fn try_from(g: pb::GroupAssignment) -> Result<Self, WireError> {
        Ok(GroupAssignment {
            spec: g.spec.ok_or_else(|| missing("group.spec"))?.try_into()?,
            first: g.first,
            count: g.count,
            stream_base: g.stream_base,
            client_base: g.client_base,
            group: g.group,
            identities: g
                .identities
                .into_iter()
                .map(|i| Identity { client_id: i.client_id, username: i.username, password: i.password })
                .collect(),
        })
    }
}

impl From<&GroupSpec> for pb::GroupSpec {
    fn from(g: &GroupSpec) -> Self {
        pb::GroupSpec {
            name: g.name.clone(),
            clients: g.clients,
            client_id: g.client_id.clone(),
            protocol: pb::Protocol::from(g.protocol) as i32,
            keepalive_secs: g.keepalive_secs as u32,
            clean_start: g.clean_start,
            tls_resumption: g.tls_resumption,
            session_expiry_secs: g.session_expiry_secs,
            username: g.username.clone(),
            password: g.password.clone(),
            will: g.will.as_ref().map(|w| pb::WillSpec {
                topic: w.topic.clone(),
                payload: w.payload.clone(),
                qos: w.qos as u32,
                retain: w.retain,
                delay_secs: w.delay_secs,
            }),
            connect_rate_per_s: g.connect_rate,
            disconnect_rate_per_s: g.disconnect_rate,
            max_inflight: g.max_inflight as u32,
            connect_timeout_ms: g.connect_timeout_ms,
            ack_timeout_ms: g.ack_timeout_ms,
            reconnect: Some(pb::ReconnectSpec {
                enabled: g.reconnect.enabled,
                min_backoff_ms: g.reconnect.min_backoff_ms,
                max_backoff_ms: g.reconnect.max_backoff_ms,
                max_rate_per_s: g.reconnect.max_rate,
                policy: g.reconnect.policy.name().to_string(),
                jitter: g.reconnect.jitter.name().to_string(),
                multiplier: g.reconnect.multiplier,
                max_attempts: g.reconnect.max_attempts,
            }),
            publish: g.publish.as_ref().map(|p| pb::PublishSpec {
                topic: p.topic.clone(),
                qos: p.qos as u32,
                retain: p.retain,
                payload: Some(match &p.payload {
                    PayloadSpec::Size(n) => pb::publish_spec::Payload::SizeBytes(*n),
                    PayloadSpec::Text(t) => pb::publish_spec::Payload::Text(t.clone()),
                    PayloadSpec::Raw(t) => pb::publish_spec::Payload::Raw(t.clone()),
                }),
                rate: Some(match p.rate {
                    RateSpec::IntervalMs(ms) => pb::publish_spec::Rate::IntervalMs(ms),
                    RateSpec::GroupPerSec(r) => pb::publish_spec::Rate::GroupRatePerS(r),
                }),
            }),
            subscribe: g
                .subscribe
                .as_ref()
                .map(|s| pb::SubscribeSpec { filters: s.filters.clone(), qos: s.qos as u32 }),
            events: g.events.iter().map(event_to).collect(),
        }
    }
}

impl TryFrom<pb::GroupSpec> for GroupSpec {
    type Error = WireError;

    fn try_from(g: pb::GroupSpec) -> Result<Self, WireError> {
        let reconnect = g.reconnect.ok_or_else(|| missing("group.reconnect"))?;
        let will = match g.will {
            Some(w) => Some(WillSpec {
                topic: w.topic,
                payload: w.payload,
                qos: u8_of("group.will.qos", w.qos)?,
                retain: w.retain,
                delay_secs: w.delay_secs,
            }),
            None => None,
        };
        let publish = match g.publish {
            Some(p) => Some(PublishSpec {
                topic: p.topic,
                qos: u8_of("group.publish.qos", p.qos)?,
                retain: p.retain,
                payload: match p.payload.ok_or_else(|| missing("group.publish.payload"))? {
                    pb::publish_spec::Payload::SizeBytes(n) => PayloadSpec::Size(n),
                    pb::publish_spec::Payload::Text(t) => PayloadSpec::Text(t),
                    pb::publish_spec::Payload::Raw(t) => PayloadSpec::Raw(t),
                },
                rate: match p.rate.ok_or_else(|| missing("group.publish.rate"))? {
                    pb::publish_spec::Rate::IntervalMs(ms) => RateSpec::IntervalMs(ms),
                    pb::publish_spec::Rate::GroupRatePerS(r) => RateSpec::GroupPerSec(r),
                },
            }),
            None => None,
        };
        let subscribe = match g.subscribe {
            Some(s) => Some(SubscribeSpec { filters: s.filters, qos: u8_of("group.subscribe.qos", s.qos)? }),
            None => None,
        };
        Ok(GroupSpec {
            name: g.name,
            clients: g.clients,
            client_id: g.client_id,
            protocol: protocol_from(g.protocol)?,
            keepalive_secs: u16_of("group.keepalive_secs", g.keepalive_secs)?,
            clean_start: g.clean_start,
            tls_resumption: g.tls_resumption,
            session_expiry_secs: g.session_expiry_secs,
            username: g.username,
            password: g.password,
            will,
            connect_rate: g.connect_rate_per_s,
            disconnect_rate: g.disconnect_rate_per_s,
            max_inflight: u16_of("group.max_inflight", g.max_inflight)?,
            connect_timeout_ms: g.connect_timeout_ms,
            ack_timeout_ms: g.ack_timeout_ms,
            reconnect: ReconnectSpec {
                enabled: reconnect.enabled,
                min_backoff_ms: reconnect.min_backoff_ms,
                max_backoff_ms: reconnect.max_backoff_ms,
                max_rate: reconnect.max_rate_per_s,
                policy: BackoffPolicy::from_name(&reconnect.policy)
                    .ok_or_else(|| bad("reconnect.policy", format!("`{}`", reconnect.policy)))?,
                jitter: Jitter::from_name(&reconnect.jitter)
                    .ok_or_else(|| bad("reconnect.jitter", format!("`{}`", reconnect.jitter)))?,
                multiplier: reconnect.multiplier,
                max_attempts: reconnect.max_attempts,
            },
            publish,
            subscribe,
            events: g.events.into_iter().map(event_from).collect::<Result<_, _>>()?,
        })
    }
}

fn event_to(e: &EventSpec) -> pb::EventSpec {
    let (back, back_after_ms) = match e.back {
        Comeback::Now => ("now", 0),
        Comeback::Backoff => ("backoff", 0),
        Comeback::Never => ("never", 0),
        Comeback::AfterMs(ms) => ("after", ms),
    };
    pb::EventSpec {
        at_ms: e.at_ms,
        every_ms: e.every_ms,
        times: e.times,
        action: e.action.name().to_string(),
        count: e.count,
        back: back.to_string(),
        back_after_ms,
    }
}

fn event_from(e: pb::EventSpec) -> Result<EventSpec, WireError> {
    Ok(EventSpec {
        at_ms: e.at_ms,
        every_ms: e.every_ms,
        times: e.times,
        action: EventAction::from_name(&e.action)
            .ok_or_else(|| bad("event.action", format!("`{}`", e.action)))?,
        count: e.count,
        back: match e.back.as_str() {
            "now" => Comeback::Now,
            "backoff" => Comeback::Backoff,
            "never" => Comeback::Never,
            "after" => Comeback::AfterMs(e.back_after_ms),
            other => return Err(bad("event.back", format!("`{other}`"))),
        },
    })
}

// ---------------------------------------------------------------------------------------------
// Metrics

impl From<Metric> for pb::Metric {
    fn from(m: Metric) -> Self {
        match m {
            Metric::Connect => pb::Metric::Connect,
            Metric::Subscribe => pb::Metric::Subscribe,
            Metric::Puback => pb::Metric::Puback,
            Metric::Pubcomp => pb::Metric::Pubcomp,
            Metric::E2e => pb::Metric::E2e,
            Metric::Lag => pb::Metric::Lag,
            Metric::Reconnect => pb::Metric::Reconnect,
            Metric::Backoff => pb::Metric::Backoff,
            Metric::Will => pb::Metric::Will,
            Metric::Backlog => pb::Metric::Backlog,
            Metric::Tls => pb::Metric::Tls,
            Metric::ReadWait => pb::Metric::ReadWait,
        }
    }
}

fn metric_from(v: i32) -> Result<Metric, WireError> {
    Ok(match pb::Metric::try_from(v) {
        Ok(pb::Metric::Connect) => Metric::Connect,
        Ok(pb::Metric::Subscribe) => Metric::Subscribe,
        Ok(pb::Metric::Puback) => Metric::Puback,
        Ok(pb::Metric::Pubcomp) => Metric::Pubcomp,
        Ok(pb::Metric::E2e) => Metric::E2e,
        Ok(pb::Metric::Lag) => Metric::Lag,
        Ok(pb::Metric::Reconnect) => Metric::Reconnect,
        Ok(pb::Metric::Backoff) => Metric::Backoff,
        Ok(pb::Metric::Will) => Metric::Will,
        Ok(pb::Metric::Backlog) => Metric::Backlog,
        Ok(pb::Metric::Tls) => Metric::Tls,
        Ok(pb::Metric::ReadWait) => Metric::ReadWait,
        _ => return Err(bad("histogram.metric", format!("unknown metric {v}"))),
    })
}

fn timing_from(v: i32) -> Result<Timing, WireError> {
    match pb::Timing::try_from(v) {
        Ok(pb::Timing::Raw) => Ok(Timing::Raw),
        Ok(pb::Timing::Corrected) => Ok(Timing::Corrected),
        _ => Err(bad("histogram.timing", format!("unknown timing {v}"))),
    }
}

impl From<&Snapshot> for pb::Snapshot {
    fn from(s: &Snapshot) -> Self {
        pb::Snapshot {
            agent: s.agent,
            seq: s.seq,
            start_unix_ns: s.start_unix_ns,
            end_unix_ns: s.end_unix_ns,
            // zeros are left out: most counters stay 0 in most intervals
            counters: s
                .counters
                .fields()
                .into_iter()
                .filter(|(_, v)| *v > 0)
                .map(|(k, v)| (k.into(), v))
                .collect(),
            errors: s
                .errors
                .iter()
                .map(|e| pb::ErrorCount {
                    kind: e.error.name().into(),
                    code: e.error.code().map(u32::from),
                    count: e.count,
                })
                .collect(),
            connected: s.connected,
            histograms: s
                .histograms
                .iter()
                .map(|h| pb::Histogram {
                    metric: pb::Metric::from(h.metric) as i32,
                    timing: match h.timing {
                        Timing::Raw => pb::Timing::Raw,
                        Timing::Corrected => pb::Timing::Corrected,
                    } as i32,
                    v2: h.v2.clone(),
                    clamped: h.clamped,
                    group: h.group,
                })
                .collect(),
            wills: s.wills.iter().map(Into::into).collect(),
        }
    }
}

impl From<&WillRecord> for pb::WillRecord {
    fn from(r: &WillRecord) -> Self {
        pb::WillRecord {
            mark: match r.mark {
                WillMark::Owed => pb::WillMark::Owed,
                WillMark::Withdrawn => pb::WillMark::Withdrawn,
                WillMark::Allowed => pb::WillMark::Allowed,
                WillMark::Delivered => pb::WillMark::Delivered,
            } as i32,
            group: r.group,
            client: r.client,
            epoch: r.epoch,
            at_unix_ns: r.at_unix_ns,
            receiver: r.receiver,
            topic: r.topic.clone(),
        }
    }
}

impl TryFrom<pb::WillRecord> for WillRecord {
    type Error = WireError;

    fn try_from(r: pb::WillRecord) -> Result<Self, WireError> {
        let mark = match pb::WillMark::try_from(r.mark) {
            Ok(pb::WillMark::Owed) => WillMark::Owed,
            Ok(pb::WillMark::Withdrawn) => WillMark::Withdrawn,
            Ok(pb::WillMark::Allowed) => WillMark::Allowed,
            Ok(pb::WillMark::Delivered) => WillMark::Delivered,
            _ => return Err(bad("will.mark", format!("unknown mark {}", r.mark))),
        };
        if r.topic.len() > 65_535 {
            return Err(bad("will.topic", "longer than an MQTT topic can be"));
        }
        Ok(WillRecord {
            mark,
            group: r.group,
            client: r.client,
            epoch: r.epoch,
            at_unix_ns: r.at_unix_ns,
            receiver: r.receiver,
            topic: r.topic,
        })
    }
}

impl TryFrom<pb::Snapshot> for Snapshot {
    type Error = WireError;

    fn try_from(s: pb::Snapshot) -> Result<Self, WireError> {
        let mut counters = Counters::default();
        for (name, v) in s.counters {
            let slot = counters
                .by_name_mut(&name)
                .ok_or_else(|| bad("snapshot.counters", format!("unknown `{name}`")))?;
            *slot = v;
        }
        let errors = s
            .errors
            .into_iter()
            .map(|e| {
                let code = e.code.map(|c| u8_of("snapshot.errors.code", c)).transpose()?;
                let error = LoadError::from_name(&e.kind, code).ok_or_else(|| {
                    bad("snapshot.errors", format!("unknown kind `{}` (code {code:?})", e.kind))
                })?;
                Ok(ErrorCount { error, count: e.count })
            })
            .collect::<Result<_, WireError>>()?;
        let histograms = s
            .histograms
            .into_iter()
            .map(|h| {
                Ok(HistogramBytes {
                    metric: metric_from(h.metric)?,
                    timing: timing_from(h.timing)?,
                    v2: h.v2,
                    clamped: h.clamped,
                    group: h.group,
                })
            })
            .collect::<Result<_, WireError>>()?;
        Ok(Snapshot {
            agent: s.agent,
            seq: s.seq,
            start_unix_ns: s.start_unix_ns,
            end_unix_ns: s.end_unix_ns,
            counters,
            errors,
            connected: s.connected,
            histograms,
            wills: s.wills.into_iter().map(TryInto::try_into).collect::<Result<_, WireError>>()?,
        })
    }
}

impl From<&Delivery> for pb::Delivery {
    fn from(d: &Delivery) -> Self {
        pb::Delivery {
            expected: d.expected,
            received: d.received,
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

impl From<pb::Delivery> for Delivery {
    fn from(d: pb::Delivery) -> Self {
        Delivery {
            expected: d.expected,
            received: d.received,
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

impl From<&LedgerTotals> for pb::LedgerTotals {
    fn from(t: &LedgerTotals) -> Self {
        pb::LedgerTotals { qos: t.qos.iter().map(Into::into).collect() }
    }
}

fn totals_from(field: &'static str, t: Option<pb::LedgerTotals>) -> Result<LedgerTotals, WireError> {
    let t = t.ok_or_else(|| missing(field))?;
    let qos: [pb::Delivery; 3] =
        t.qos.try_into().map_err(|v: Vec<_>| bad(field, format!("{} QoS entries, not 3", v.len())))?;
    Ok(LedgerTotals { qos: qos.map(Into::into) })
}

impl From<&AgentResult> for pb::AgentResult {
    fn from(r: &AgentResult) -> Self {
        pb::AgentResult {
            ledger: Some((&r.ledger).into()),
            ledger_by_group: r
                .ledger_by_group
                .iter()
                .map(|(g, t)| pb::GroupLedger { group: g.clone(), totals: Some(t.into()) })
                .collect(),
            receivers: r.receivers,
            receivers_never_subscribed: r.receivers_never_subscribed,
            observers: r
                .observers
                .iter()
                .map(|o| pb::Observers { filters: o.filters.clone(), count: o.count })
                .collect(),
            storms: r
                .storms
                .iter()
                .map(|s| pb::Storm {
                    group: s.group,
                    event: s.event,
                    at_ms: s.at_ms,
                    taken: s.taken,
                    back_v2: s.back_v2.clone(),
                    policy_v2: s.policy_v2.clone(),
                    failed_attempts: s.failed_attempts,
                    abandoned: s.abandoned,
                    attempts_sum: s.attempts_sum,
                    attempts_max: s.attempts_max,
                    failures_by_s: s.failures_by_s.clone(),
                })
                .collect(),
            storms_untracked: r.storms_untracked,
            outages: r
                .outages
                .iter()
                .map(|o| pb::Outage {
                    start_unix_ns: o.start_unix_ns,
                    end_unix_ns: o.end_unix_ns,
                    lost: o.lost,
                    back: o.back,
                    attempts_sum: o.attempts_sum,
                    attempts_max: o.attempts_max,
                })
                .collect(),
            shares: r.shares.iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<pb::AgentResult> for AgentResult {
    type Error = WireError;

    fn try_from(r: pb::AgentResult) -> Result<Self, WireError> {
        Ok(AgentResult {
            ledger: totals_from("result.ledger", r.ledger)?,
            ledger_by_group: r
                .ledger_by_group
                .into_iter()
                .map(|g| Ok((g.group, totals_from("result.ledger_by_group", g.totals)?)))
                .collect::<Result<_, WireError>>()?,
            receivers: r.receivers,
            receivers_never_subscribed: r.receivers_never_subscribed,
            observers: r
                .observers
                .into_iter()
                .map(|o| Observers { filters: o.filters, count: o.count })
                .collect(),
            storms: r
                .storms
                .into_iter()
                .map(|s| StormResult {
                    group: s.group,
                    event: s.event,
                    at_ms: s.at_ms,
                    taken: s.taken,
                    back_v2: s.back_v2,
                    policy_v2: s.policy_v2,
                    failed_attempts: s.failed_attempts,
                    abandoned: s.abandoned,
                    attempts_sum: s.attempts_sum,
                    attempts_max: s.attempts_max,
                    failures_by_s: s.failures_by_s,
                })
                .collect(),
            storms_untracked: r.storms_untracked,
            outages: r
                .outages
                .into_iter()
                .map(|o| OutageWindow {
                    start_unix_ns: o.start_unix_ns,
                    end_unix_ns: o.end_unix_ns,
                    lost: o.lost,
                    back: o.back,
                    attempts_sum: o.attempts_sum,
                    attempts_max: o.attempts_max,
                })
                .collect(),
            shares: r.shares.into_iter().map(TryInto::try_into).collect::<Result<_, WireError>>()?,
        })
    }
}

impl From<&ShareResult> for pb::ShareResult {
    fn from(r: &ShareResult) -> Self {
        pb::ShareResult {
            group: r.group,
            filters: r
                .filters
                .iter()
                .map(|(f, q)| pb::ShareFilter { filter: f.clone(), granted_qos: q.map(u32::from) })
                .collect(),
            members: r.members,
            out_of_order: r.out_of_order.to_vec(),
            unrecorded: r.unrecorded,
        }
    }
}

impl TryFrom<pb::ShareResult> for ShareResult {
    type Error = WireError;

    fn try_from(r: pb::ShareResult) -> Result<Self, WireError> {
        let out_of_order: [u64; 3] = r
            .out_of_order
            .try_into()
            .map_err(|v: Vec<u64>| bad("share.out_of_order", format!("{} entries, not 3", v.len())))?;
        let filters = r
            .filters
            .into_iter()
            .map(|f| {
                let q = f.granted_qos.map(|q| u8_of("share.granted_qos", q)).transpose()?;
                if q.is_some_and(|q| q > 2) {
                    return Err(bad("share.granted_qos", format!("QoS {}", q.unwrap_or(0))));
                }
                Ok((f.filter, q))
            })
            .collect::<Result<_, WireError>>()?;
        Ok(ShareResult {
            group: r.group,
            filters,
            members: r.members,
            out_of_order,
            unrecorded: r.unrecorded,
        })
    }
}

impl From<&Receipts> for pb::Receipts {
    fn from(r: &Receipts) -> Self {
        pb::Receipts {
            group: r.group,
            filters: r.filters.clone(),
            through_unix_ns: r.through_unix_ns,
            streams: r
                .streams
                .iter()
                .map(|s| {
                    let mut prev = 0;
                    let seq_deltas = s
                        .seqs
                        .iter()
                        .map(|q| {
                            // sorted, so small; wrapping keeps any list exact both ways
                            let d = q.wrapping_sub(prev);
                            prev = *q;
                            d
                        })
                        .collect();
                    pb::StreamReceipts { epoch: s.epoch, stream: s.stream, qos: s.qos as u32, seq_deltas }
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::Receipts> for Receipts {
    type Error = WireError;

    fn try_from(r: pb::Receipts) -> Result<Self, WireError> {
        let mut total = 0usize;
        let streams = r
            .streams
            .into_iter()
            .map(|s| {
                let qos = u8_of("receipts.qos", s.qos)?;
                if qos > 2 {
                    return Err(bad("receipts.qos", format!("QoS {qos}")));
                }
                total += s.seq_deltas.len();
                if total > crate::metrics::shares::RECEIPTS_PER_EVENT {
                    return Err(bad(
                        "receipts.seq_deltas",
                        format!(
                            "more than {} sequences in one event",
                            crate::metrics::shares::RECEIPTS_PER_EVENT
                        ),
                    ));
                }
                let mut prev = 0u64;
                let seqs = s
                    .seq_deltas
                    .into_iter()
                    .map(|d| {
                        prev = prev.wrapping_add(d);
                        prev
                    })
                    .collect();
                Ok(StreamReceipts { epoch: s.epoch, stream: s.stream, qos, seqs })
            })
            .collect::<Result<_, WireError>>()?;
        Ok(Receipts { group: r.group, filters: r.filters, through_unix_ns: r.through_unix_ns, streams })
    }
}

impl From<&StreamFinal> for pb::StreamFinal {
    fn from(s: &StreamFinal) -> Self {
        pb::StreamFinal {
            stream: s.stream,
            topic: s.topic.clone(),
            qos: s.qos as u32,
            sent: s.sent,
            refused: s.refused,
        }
    }
}

impl TryFrom<pb::StreamFinal> for StreamFinal {
    type Error = WireError;

    fn try_from(s: pb::StreamFinal) -> Result<Self, WireError> {
        let qos = u8_of("stream.qos", s.qos)?;
        if qos > 2 {
            return Err(bad("stream.qos", format!("QoS {qos}")));
        }
        if s.refused > s.sent {
            return Err(bad("stream.refused", format!("{} refused of {} sent", s.refused, s.sent)));
        }
        Ok(StreamFinal { stream: s.stream, topic: s.topic, qos, sent: s.sent, refused: s.refused })
    }
}

// ---------------------------------------------------------------------------------------------
// Commands and events, with their stream lists cut into chunks

fn chunks(streams: &[StreamFinal]) -> impl Iterator<Item = pb::StreamFinals> + '_ {
    streams
        .chunks(STREAMS_PER_CHUNK)
        .map(|c| pb::StreamFinals { streams: c.iter().map(Into::into).collect() })
}

/// The controller messages that carry `c`: stream chunks first, then the command.
pub fn command_messages(c: &Command) -> Vec<pb::ControllerMessage> {
    use pb::controller_message::Body;
    let cmd =
        |body| pb::ControllerMessage { body: Some(Body::Command(pb::Command { body: Some(body) })), seq: 0 };
    match c {
        Command::Publish { start_unix_ns, until_unix_ns } => {
            vec![cmd(pb::command::Body::Publish(pb::Publish {
                start_unix_ns: *start_unix_ns,
                until_unix_ns: *until_unix_ns,
            }))]
        }
        Command::Finish { streams, drain_ms } => chunks(streams)
            .map(|c| pb::ControllerMessage { body: Some(Body::StreamFinals(c)), seq: 0 })
            .chain([cmd(pb::command::Body::Finish(pb::Finish { drain_ms: *drain_ms }))])
            .collect(),
        Command::Abort => vec![cmd(pb::command::Body::Abort(pb::Abort { reason: String::new() }))],
        Command::Stage(st) => vec![cmd(pb::command::Body::Stage(pb::Stage {
            index: st.index,
            start_unix_ns: st.start_unix_ns,
            until_unix_ns: st.until_unix_ns,
            scale: st.scale,
        }))],
    }
}

/// The size of an assignment on the wire (its protobuf encoding), bytes.
pub fn assignment_len(a: &Assignment) -> usize {
    prost::Message::encoded_len(&pb::Assignment::from(a))
}

/// The size of an agent message on the wire (its protobuf encoding), bytes.
pub fn agent_message_len(m: &pb::AgentMessage) -> usize {
    prost::Message::encoded_len(m)
}

/// The agent messages that carry `e`: stream chunks first, then the event.
pub fn event_messages(e: &AgentEvent) -> Vec<pb::AgentMessage> {
    use pb::agent_message::Body;
    use pb::event::Body as E;
    let ev = |body| pb::AgentMessage { body: Some(Body::Event(pb::Event { body: Some(body) })), seq: 0 };
    match e {
        AgentEvent::Snapshot(s) => vec![ev(E::Snapshot(s.into()))],
        AgentEvent::Ready { clients, connected } => {
            vec![ev(E::Ready(pb::Ready { clients: *clients, connected: *connected }))]
        }
        AgentEvent::Started { late_ns } => vec![ev(E::Started(pb::Started { late_ns: *late_ns }))],
        AgentEvent::PublishDone { streams } => chunks(streams)
            .map(|c| pb::AgentMessage { body: Some(Body::StreamFinals(c)), seq: 0 })
            .chain([ev(E::PublishDone(pb::PublishDone {}))])
            .collect(),
        AgentEvent::Receipts(r) => vec![ev(E::Receipts(r.into()))],
        AgentEvent::Finished(r) => vec![ev(E::Finished(r.into()))],
        AgentEvent::Failed { message } => vec![ev(E::Failed(pb::Failed { message: message.clone() }))],
    }
}

/// Gathers stream chunks until the message that closes them, up to a limit.
#[derive(Debug)]
pub struct Chunks {
    streams: Vec<StreamFinal>,
    limit: usize,
}

impl Chunks {
    /// At most `limit` streams (the peer's whole share; more is a broken or hostile peer).
    pub fn new(limit: usize) -> Chunks {
        Chunks { streams: Vec::new(), limit }
    }

    pub fn push(&mut self, c: pb::StreamFinals) -> Result<(), WireError> {
        if self.streams.len() + c.streams.len() > self.limit {
            return Err(bad("stream_finals", format!("more than the {} streams expected", self.limit)));
        }
        for s in c.streams {
            self.streams.push(s.try_into()?);
        }
        Ok(())
    }

    fn take(&mut self) -> Vec<StreamFinal> {
        std::mem::take(&mut self.streams)
    }
}

/// A command, with the streams gathered before it.
pub fn command_from_wire(c: pb::Command, chunks: &mut Chunks) -> Result<Command, WireError> {
    Ok(match c.body.ok_or_else(|| missing("command"))? {
        pb::command::Body::Publish(p) => {
            Command::Publish { start_unix_ns: p.start_unix_ns, until_unix_ns: p.until_unix_ns }
        }
        pb::command::Body::Finish(f) => Command::Finish { streams: chunks.take(), drain_ms: f.drain_ms },
        pb::command::Body::Abort(_) => Command::Abort,
        pb::command::Body::Stage(st) => Command::Stage(StageCommand {
            index: st.index,
            start_unix_ns: st.start_unix_ns,
            until_unix_ns: st.until_unix_ns,
            scale: st.scale,
        }),
    })
}

/// An event, with the streams gathered before it.
pub fn event_from_wire(e: pb::Event, chunks: &mut Chunks) -> Result<AgentEvent, WireError> {
    use pb::event::Body as E;
    Ok(match e.body.ok_or_else(|| missing("event"))? {
        E::Snapshot(s) => AgentEvent::Snapshot(s.try_into()?),
        E::Ready(r) => AgentEvent::Ready { clients: r.clients, connected: r.connected },
        E::Started(s) => AgentEvent::Started { late_ns: s.late_ns },
        E::PublishDone(_) => AgentEvent::PublishDone { streams: chunks.take() },
        E::Receipts(r) => AgentEvent::Receipts(r.try_into()?),
        E::Finished(r) => AgentEvent::Finished(r.try_into()?),
        E::Failed(f) => AgentEvent::Failed { message: f.message },
    })
}

#[cfg(test)]
mod tests;
