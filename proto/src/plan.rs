//! What an agent is asked to run: its [`Assignment`], a share of a scenario's clients, fully
//! resolved (no defaults left to fill in, no files left to read except TLS material).
//!
//! These types are plain data and cross the controller–agent boundary as they are; the agent
//! checks them again on arrival ([`Assignment::validate`]) because a controller may be remote.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::protocol::Protocol;
use crate::target::TargetUrl;
use crate::template::{Template, TemplateError, Var};
use crate::tls::TlsMaterial;
use crate::topic;

/// Bytes of the measurement header every measured payload starts with (its layout is in the
/// agent's `payload` module and the README).
pub const HEADER_LEN: usize = 36;

fn qos_ok(q: u8) -> Option<u8> {
    (q <= 2).then_some(q)
}

/// One agent's share of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// Random per run; stamped in every payload so messages of other runs are told apart.
    pub run_tag: u32,
    /// This agent's index (0 for a local run).
    pub agent: u32,
    /// Brokers; client `i` of the run goes to `targets[i % len]`.
    pub targets: Vec<TargetUrl>,
    /// TLS for `mqtts://` targets, the material itself: agents need none of the controller's files.
    pub tls: TlsMaterial,
    /// Local addresses to connect from, round-robin; empty = let the OS choose.
    pub source_addresses: Vec<IpAddr>,
    pub groups: Vec<GroupAssignment>,
    /// How often a snapshot is taken, ms.
    pub snapshot_interval_ms: u64,
    /// Connection handshakes (TCP, TLS, CONNECT→CONNACK) in flight at once, at most: a burst
    /// beyond a broker's accept queue loses SYNs, which clients retry only after a second.
    pub max_connecting: u32,
    /// Whether the handshake window adapts (up to `max_connecting`) or stays at it.
    pub adaptive_connecting: bool,
    /// Bytes all of this agent's clients may hold written but not yet taken by the kernel:
    /// past it, no client takes more messages from its schedule (they fall behind, counted).
    pub max_unsent_bytes: u64,
    /// Every publishing group of the run by stream, sorted by `stream_base`.
    pub publish_ranges: Vec<PublishRange>,
    /// Wake-ups closer together than this share one, µs (0: every client wakes on its own
    /// deadline). Cuts the tester's CPU at many clients; adds up to this much lag.
    pub timer_coalesce_us: u32,
    /// On a busy connection, data that comes within this of a read that emptied the socket is
    /// read at the window's end, µs (0: as soon as data comes). Lets a flooded subscriber take
    /// many messages per read; their arrival times are late by at most this.
    pub read_coalesce_us: u32,
    /// The agent stops all load after this long, whatever the controller says, ms.
    pub max_duration_ms: u64,
    /// The controller's estimate of (agent clock − controller clock), ns: the agent subtracts
    /// it from every timestamp, so all agents measure on the controller's time base and
    /// latencies between agents stay honest. 0 in-process.
    pub clock_offset_ns: i64,
    /// Publishers publish only within stages ([`Command::Stage`](crate::link::Command::Stage)),
    /// each at its own share of the scenario's rates; false: the whole window is one stage at
    /// the scenario's rates.
    #[serde(default)]
    pub staged: bool,
}

/// A group and which of its clients this agent runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupAssignment {
    pub spec: GroupSpec,
    /// Index (within the group) of this agent's first client.
    pub first: u32,
    /// How many of the group's clients this agent runs.
    pub count: u32,
    /// Stream id of the group's client 0; client `i` publishes stream `stream_base + i`.
    pub stream_base: u32,
    /// Index of the group's client 0 among all clients of the run (targets and source
    /// addresses are chosen by it).
    pub client_base: u32,
    /// The group's position in the scenario: latencies are reported by it.
    pub group: u32,
    /// Each of this agent's clients' identity, from the group's identities file: entry `k`
    /// is client `first + k`'s. Empty: the group has none.
    #[serde(default)]
    pub identities: Vec<Identity>,
}

/// Who one device is, from its row of an identities file; what a row leaves out is the
/// group's own (its client id template, username, password).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// The longest client id, username or password an identity may carry, bytes (an MQTT string).
pub const MAX_IDENTITY_FIELD: usize = 65_535;

impl GroupAssignment {
    /// The group subscribes to a shared subscription and runs on other agents too: its
    /// members' receipts are settled at the controller (see [`crate::metrics::shares`]).
    pub fn splits_a_share(&self) -> bool {
        self.count < self.spec.clients
            && self
                .spec
                .subscribe
                .as_ref()
                .is_some_and(|s| s.filters.iter().any(|f| crate::topic::split_shared(f).0.is_some()))
    }
}

/// The streams one publishing group owns: `[stream_base, stream_base + clients)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRange {
    pub stream_base: u32,
    pub clients: u32,
    /// The group's position in the scenario.
    pub group: u32,
}

/// The publishing group of `stream`, from ranges sorted by `stream_base`.
pub fn group_of_stream(ranges: &[PublishRange], stream: u32) -> Option<u32> {
    let i = ranges.partition_point(|r| r.stream_base <= stream);
    let r = ranges.get(i.checked_sub(1)?)?;
    (stream - r.stream_base < r.clients).then_some(r.group)
}

/// A group of identical clients, as the scenario describes it, defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupSpec {
    pub name: String,
    /// Clients in the whole group (across agents).
    pub clients: u32,
    pub client_id: String,
    pub protocol: Protocol,
    pub keepalive_secs: u16,
    pub clean_start: bool,
    pub session_expiry_secs: u32,
    pub username: Option<String>,
    pub password: Option<String>,
    pub will: Option<WillSpec>,
    /// New connections per second across the group, during ramp-up.
    pub connect_rate: f64,
    /// Disconnections per second across the group, at the end.
    pub disconnect_rate: f64,
    pub max_inflight: u16,
    pub connect_timeout_ms: u64,
    pub ack_timeout_ms: u64,
    pub reconnect: ReconnectSpec,
    pub publish: Option<PublishSpec>,
    pub subscribe: Option<SubscribeSpec>,
    /// Timed actions on some of the group's clients (storms, will triggers).
    pub events: Vec<EventSpec>,
    /// Over TLS, resume each client's previous TLS session on reconnect (a ticket per client,
    /// as a device that caches its session); false: a full handshake every time.
    #[serde(default = "yes")]
    pub tls_resumption: bool,
}

fn yes() -> bool {
    true
}

/// A timed action on `count` of a group's clients, chosen by a seeded permutation of the
/// group (the same choice on every agent, a new one each time it repeats).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventSpec {
    /// When, ms after the publishing window starts.
    pub at_ms: u64,
    /// Repeats this often, ms (0: once).
    pub every_ms: u64,
    /// How many times in all (≥ 1).
    pub times: u32,
    pub action: EventAction,
    /// How many of the group's clients, each time.
    pub count: u32,
    /// When they come back.
    pub back: Comeback,
}

/// What the chosen clients do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventAction {
    /// A clean DISCONNECT (no will).
    Disconnect,
    /// The socket closed without DISCONNECT (the broker sees the close at once; a will fires).
    Drop,
    /// All MQTT traffic stops, PINGREQ included, until the broker's keepalive ends the
    /// connection (the kernel still acknowledges what arrives).
    Silence,
    /// MQTT 5 DISCONNECT with reason 0x04: disconnect, and publish my will.
    DisconnectWithWill,
    /// The link goes dead both ways (a cell drop): nothing is written, and everything that
    /// arrives is dropped before TCP sees it, so nothing is acknowledged. The client notices
    /// when the broker's keepalive would have (plus a second), resets the socket and comes back.
    Blackhole,
}

/// `NAMES`, `name` and `from_name` for a fieldless enum, the names the scenario file uses.
macro_rules! named {
    ($t:ident { $($v:ident => $n:literal),* $(,)? }) => {
        impl $t {
            pub const NAMES: &'static [&'static str] = &[$($n),*];

            pub fn name(&self) -> &'static str {
                match self { $(Self::$v => $n),* }
            }

            pub fn from_name(s: &str) -> Option<Self> {
                match s { $($n => Some(Self::$v),)* _ => None }
            }
        }
    };
}

named!(EventAction {
    Disconnect => "disconnect",
    Drop => "drop",
    Silence => "silence",
    DisconnectWithWill => "disconnect_with_will",
    Blackhole => "blackhole",
});
named!(BackoffPolicy { None => "none", Constant => "constant", Linear => "linear", Exponential => "exponential" });
named!(Jitter { None => "none", Full => "full", Equal => "equal", Decorrelated => "decorrelated" });

/// When clients an event took away come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Comeback {
    /// At once, no backoff.
    Now,
    /// By the group's backoff policy.
    Backoff,
    /// Not in this run.
    Never,
    /// After a fixed pause, ms.
    AfterMs(u64),
}

impl EventSpec {
    /// The instants (ms after the window starts) at which this event acts on group client
    /// `index` of `clients`, given the run's seed: at most `times` of them.
    pub fn times_for(
        &self,
        index: u32,
        clients: u32,
        seed: u64,
        event: usize,
    ) -> impl Iterator<Item = u64> + '_ {
        (0..self.times as u64).filter_map(move |k| {
            let at = self.at_ms.saturating_add(k.saturating_mul(self.every_ms));
            chosen(index, clients, self.count, seed ^ ((event as u64) << 48) ^ (k << 20)).then_some(at)
        })
    }
}

/// Whether client `index` of `n` is among the `count` an event takes this time: a seeded
/// affine permutation of the group, so every agent makes the same choice without asking.
pub fn chosen(index: u32, n: u32, count: u32, seed: u64) -> bool {
    if count >= n {
        return true;
    }
    if count == 0 || n == 0 {
        return false;
    }
    let n64 = n as u64;
    let mix = |x: u64| {
        // splitmix64
        let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let gcd = |mut a: u64, mut b: u64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let mut a = mix(seed) % n64;
    // a multiplier coprime with n makes the map a permutation (one exists: 1)
    while gcd(a, n64) != 1 {
        a = (a + 1) % n64;
    }
    let b = mix(seed ^ 0xA5A5) % n64;
    (a * index as u64 + b) % n64 < count as u64
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WillSpec {
    pub topic: String,
    pub payload: String,
    pub qos: u8,
    pub retain: bool,
    pub delay_secs: u32,
}

/// What a client does after its connection fails or is lost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReconnectSpec {
    pub enabled: bool,
    /// The policy's base delay, ms (its first delay; never less, whatever the jitter).
    pub min_backoff_ms: u64,
    /// The longest delay, ms.
    pub max_backoff_ms: u64,
    /// Reconnections per second across this agent's share of the group (a storm limit).
    pub max_rate: f64,
    /// How the delay grows with failures in a row.
    pub policy: BackoffPolicy,
    /// How the delay is spread, so a fleet dropped at once does not return at once.
    pub jitter: Jitter,
    /// Growth per failure of `exponential` (> 1).
    pub multiplier: f64,
    /// Retries in a row after which a client gives up (counted `abandoned`); 0: never.
    pub max_attempts: u32,
}

/// How a reconnect delay grows with failures in a row (`base` = min_backoff, capped at
/// max_backoff): `none` 0, `constant` base, `linear` base × n, `exponential` base × multiplier^(n−1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackoffPolicy {
    None,
    Constant,
    Linear,
    #[default]
    Exponential,
}

/// How a delay `d` is spread (AWS, "Exponential Backoff And Jitter"): `none` d, `full` uniform
/// in [base, d], `equal` d/2 + uniform in [0, d/2], `decorrelated` uniform in [base, 3 × the
/// previous delay] (ignoring the policy's growth), all capped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    None,
    #[default]
    Full,
    Equal,
    Decorrelated,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishSpec {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub payload: PayloadSpec,
    pub rate: RateSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadSpec {
    /// Measurement header, then filler, `size` bytes in all (≥ 36).
    Size(u32),
    /// Measurement header, then this text.
    Text(String),
    /// Exactly this text, no header: no end-to-end latency or ledger for this group.
    Raw(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateSpec {
    /// Each client publishes once per this many ms.
    IntervalMs(f64),
    /// Messages per second summed over the whole group.
    GroupPerSec(f64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscribeSpec {
    pub filters: Vec<String>,
    pub qos: u8,
}

/// A problem with an assignment; the controller checks the same rules with file positions.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("group `{group}`: {field}: {message}")]
    Group { group: String, field: &'static str, message: String },
    #[error("{0}")]
    Run(String),
}

fn gerr(group: &str, field: &'static str, message: impl Into<String>) -> PlanError {
    PlanError::Group { group: group.into(), field, message: message.into() }
}

fn template(group: &str, field: &'static str, s: &str) -> Result<Template, PlanError> {
    Template::parse(s).map_err(|e: TemplateError| gerr(group, field, e.to_string()))
}

impl PayloadSpec {
    /// Payload bytes per message.
    pub fn len(&self) -> usize {
        match self {
            PayloadSpec::Size(n) => *n as usize,
            PayloadSpec::Text(t) => HEADER_LEN + t.len(),
            PayloadSpec::Raw(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether messages carry the measurement header.
    pub fn measured(&self) -> bool {
        !matches!(self, PayloadSpec::Raw(_))
    }
}

impl GroupSpec {
    /// Checks what the engine relies on. Every message names the field.
    pub fn validate(&self) -> Result<(), PlanError> {
        let g = self.name.as_str();
        if self.clients == 0 {
            return Err(gerr(g, "clients", "must be at least 1"));
        }
        let id = template(g, "client_id", &self.client_id)?;
        if self.clients > 1 && !id.uses(Var::Index) {
            return Err(gerr(g, "client_id", "must contain {i}: clients of a group need distinct ids"));
        }
        if !(self.connect_rate > 0.0) || !self.connect_rate.is_finite() {
            return Err(gerr(g, "connect_rate", "must be a positive number of connections per second"));
        }
        if !(self.disconnect_rate > 0.0) || !self.disconnect_rate.is_finite() {
            return Err(gerr(g, "disconnect_rate", "must be a positive number per second"));
        }
        if self.max_inflight == 0 {
            return Err(gerr(g, "max_inflight", "must be at least 1"));
        }
        if self.connect_timeout_ms == 0 || self.ack_timeout_ms == 0 {
            return Err(gerr(g, "timeouts", "must be positive"));
        }
        let r = &self.reconnect;
        if r.enabled
            && ((r.min_backoff_ms == 0 && r.policy != BackoffPolicy::None)
                || r.max_backoff_ms < r.min_backoff_ms
                || r.max_rate.is_nan()
                || r.max_rate <= 0.0
                || !(r.multiplier > 1.0 && r.multiplier <= MAX_MULTIPLIER))
        {
            return Err(gerr(
                g,
                "reconnect",
                "needs min_backoff > 0 (unless the policy is none), max_backoff ≥ min_backoff, max_rate > 0 and 1 < multiplier ≤ 100",
            ));
        }
        if let Some(w) = &self.will {
            template(g, "will.topic", &w.topic)?;
            qos_ok(w.qos).ok_or_else(|| gerr(g, "will.qos", "must be 0, 1 or 2"))?;
        }
        if self.events.len() > MAX_EVENTS {
            return Err(gerr(g, "event", format!("at most {MAX_EVENTS} events per group")));
        }
        for e in &self.events {
            if e.times == 0 || e.times > MAX_EVENT_TIMES || (e.times > 1 && e.every_ms == 0) {
                return Err(gerr(
                    g,
                    "event",
                    format!("an event happens 1 to {MAX_EVENT_TIMES} times, and repeats only with `every`"),
                ));
            }
            if e.action == EventAction::DisconnectWithWill && self.protocol != crate::protocol::Protocol::V5 {
                return Err(gerr(
                    g,
                    "event.action",
                    "disconnect_with_will is MQTT 5 (reason 0x04): set protocol = \"5\"",
                ));
            }
            if e.action == EventAction::Silence && self.keepalive_secs == 0 {
                return Err(gerr(
                    g,
                    "event.action",
                    "silence ends when the broker's keepalive fires: set a keepalive",
                ));
            }
        }
        if let Some(p) = &self.publish {
            let t = template(g, "publish.topic", &p.topic)?;
            let sample = t.render(&crate::template::Vars { group: g, index: 0, agent: 0, run_tag: 0 });
            topic::validate_topic(&sample).map_err(|e| gerr(g, "publish.topic", e))?;
            qos_ok(p.qos).ok_or_else(|| gerr(g, "publish.qos", "must be 0, 1 or 2"))?;
            if p.payload.len() > MAX_PAYLOAD {
                return Err(gerr(
                    g,
                    "publish.payload_size",
                    format!(
                        "{} bytes is more than an MQTT packet can carry: at most {MAX_PAYLOAD} (268,435,455 bytes per packet, less the topic)",
                        p.payload.len()
                    ),
                ));
            }
            if let PayloadSpec::Size(n) = p.payload
                && (n as usize) < HEADER_LEN
            {
                return Err(gerr(
                    g,
                    "publish.payload_size",
                    format!(
                        "must be at least {HEADER_LEN} bytes (the measurement header); for smaller payloads use `payload_raw`, which is not measured"
                    ),
                ));
            }
            let ok = match p.rate {
                RateSpec::IntervalMs(ms) => ms > 0.0 && ms.is_finite(),
                RateSpec::GroupPerSec(r) => r > 0.0 && r.is_finite(),
            };
            if !ok {
                return Err(gerr(g, "publish.rate", "must be positive"));
            }
            // one client's interval: a schedule tighter than this is none a connection can keep
            let interval_ms = match p.rate {
                RateSpec::IntervalMs(ms) => ms,
                RateSpec::GroupPerSec(r) => self.clients as f64 * 1e3 / r,
            };
            if interval_ms < MIN_INTERVAL_MS {
                let per_client = 1e3 / MIN_INTERVAL_MS;
                return Err(gerr(
                    g,
                    "publish.rate",
                    match p.rate {
                        RateSpec::IntervalMs(_) => format!(
                            "an interval under 1µs is more than one connection can publish ({per_client:.0} messages a second); use more clients at a longer interval"
                        ),
                        RateSpec::GroupPerSec(r) => format!(
                            "{r} messages a second over {} clients is more than {per_client:.0} each, more than one connection can publish; add clients, or lower group_rate to at most {}",
                            self.clients,
                            self.clients as f64 * per_client
                        ),
                    },
                ));
            }
        }
        if let Some(s) = &self.subscribe {
            if s.filters.is_empty() {
                return Err(gerr(g, "subscribe.filters", "needs at least one filter"));
            }
            qos_ok(s.qos).ok_or_else(|| gerr(g, "subscribe.qos", "must be 0, 1 or 2"))?;
            let mut shared = None;
            for f in &s.filters {
                let t = template(g, "subscribe.filters", f)?;
                let sample = t.render(&crate::template::Vars { group: g, index: 0, agent: 0, run_tag: 0 });
                topic::validate_filter(&sample).map_err(|e| gerr(g, "subscribe.filters", e))?;
                let is_shared = topic::split_shared(&sample).0.is_some();
                if *shared.get_or_insert(is_shared) != is_shared {
                    return Err(gerr(
                        g,
                        "subscribe.filters",
                        "mix shared ($share/…) and plain filters in separate groups",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Assignment {
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.targets.is_empty() {
            return Err(PlanError::Run("no target broker".into()));
        }
        if self.snapshot_interval_ms == 0 || self.max_duration_ms == 0 || self.max_connecting == 0 {
            return Err(PlanError::Run(
                "snapshot interval, max duration and max connecting must be positive".into(),
            ));
        }
        if self.max_unsent_bytes < MIN_UNSENT_BYTES {
            return Err(PlanError::Run(format!(
                "an unsent-bytes budget of {} bytes is below {MIN_UNSENT_BYTES}",
                self.max_unsent_bytes
            )));
        }
        if self.timer_coalesce_us > MAX_TIMER_COALESCE_US {
            return Err(PlanError::Run(format!(
                "timer coalescing of {} µs is above {MAX_TIMER_COALESCE_US} µs",
                self.timer_coalesce_us
            )));
        }
        if self.read_coalesce_us > MAX_READ_COALESCE_US {
            return Err(PlanError::Run(format!(
                "read coalescing of {} µs is above {MAX_READ_COALESCE_US} µs",
                self.read_coalesce_us
            )));
        }
        for g in &self.groups {
            g.spec.validate()?;
            if g.first.checked_add(g.count).is_none_or(|end| end > g.spec.clients) {
                return Err(PlanError::Run(format!("group `{}`: client range out of bounds", g.spec.name)));
            }
            if !g.identities.is_empty() && g.identities.len() != g.count as usize {
                return Err(PlanError::Run(format!(
                    "group `{}`: {} identities for {} clients",
                    g.spec.name,
                    g.identities.len(),
                    g.count
                )));
            }
            for id in &g.identities {
                let fields = [&id.client_id, &id.username, &id.password];
                if fields.iter().any(|f| f.as_ref().is_some_and(|v| v.len() > MAX_IDENTITY_FIELD))
                    || id.client_id.as_ref().is_some_and(|c| c.is_empty())
                {
                    return Err(PlanError::Run(format!(
                        "group `{}`: an identity with an empty client id, or a field over {MAX_IDENTITY_FIELD} bytes",
                        g.spec.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// The most a stage may scale the scenario's rates: no client may be asked for more than
    /// one message per [`MIN_INTERVAL_MS`], and no stage for more than [`MAX_STAGE_SCALE`].
    pub fn max_stage_scale(&self) -> f64 {
        self.groups
            .iter()
            .filter_map(|g| g.spec.publish.as_ref().map(|p| (g.spec.clients, p.rate)))
            .map(|(clients, rate)| max_scale_of(clients, rate))
            .fold(MAX_STAGE_SCALE, f64::min)
    }

    /// Checks a stage as it arrives: staged runs only, in order, after the stage before
    /// (`after_ns`: where it ended), a non-empty span, and a scale within bounds.
    pub fn check_stage(
        &self,
        st: &crate::link::StageCommand,
        index: u32,
        after_ns: u64,
    ) -> Result<(), PlanError> {
        let err = |m: String| Err(PlanError::Run(format!("stage {}: {m}", st.index)));
        if !self.staged {
            return err("the run is not staged".into());
        }
        if st.index != index || index >= MAX_STAGES {
            return err(format!("expected stage {index} (at most {MAX_STAGES})"));
        }
        if st.start_unix_ns < after_ns || st.until_unix_ns <= st.start_unix_ns {
            return err("overlaps the stage before it, or is empty".into());
        }
        let max = self.max_stage_scale();
        if !(st.scale > 0.0 && st.scale <= max) {
            return err(format!("scale {} is outside (0, {max}]", st.scale));
        }
        Ok(())
    }

    /// Clients this agent runs.
    pub fn clients(&self) -> u64 {
        self.groups.iter().map(|g| g.count as u64).sum()
    }

    /// The memory this assignment needs in steady state, bytes: [`CLIENT_BYTES`] per client,
    /// plus, per publisher, its payload once and once more per message its QoS > 0 in-flight
    /// window may hold for retransmission. Not counted: what a stalled broker leaves queued
    /// unsent, and the ledger's per-stream state on receivers.
    pub fn memory_estimate(&self) -> u64 {
        self.groups
            .iter()
            .map(|g| {
                let publisher = g.spec.publish.as_ref().map_or(0, |p| {
                    let payload = p.payload.len() as u64;
                    let copies = 1 + if p.qos > 0 { g.spec.max_inflight as u64 } else { 0 };
                    payload.saturating_mul(copies)
                });
                (g.count as u64).saturating_mul(CLIENT_BYTES.saturating_add(publisher))
            })
            .fold(0u64, u64::saturating_add)
    }
}

/// The largest payload squall sends: an MQTT packet's remaining length is at most 268,435,455
/// bytes, and the topic and packet id take some of it (a topic of up to ~64 KiB).
pub const MAX_PAYLOAD: usize = 268_435_455 - 65_540;

/// The shortest publish interval of one client, ms (1,000,000 messages a second: a flood that
/// saturates any one broker connection).
pub const MIN_INTERVAL_MS: f64 = 0.001;

/// The most a stage may scale the scenario's rates (1,000,000 %).
pub const MAX_STAGE_SCALE: f64 = 10_000.0;

/// Stages in one run, at most.
pub const MAX_STAGES: u32 = 1024;

/// The most a stage may scale a group's rate: no client above one message per
/// [`MIN_INTERVAL_MS`].
pub fn max_scale_of(clients: u32, rate: RateSpec) -> f64 {
    let interval_ms = match rate {
        RateSpec::IntervalMs(ms) => ms,
        RateSpec::GroupPerSec(r) => clients as f64 * 1e3 / r,
    };
    (interval_ms / MIN_INTERVAL_MS).min(MAX_STAGE_SCALE)
}

/// The most wake-ups may be coalesced, µs: past 10 ms the schedule itself would blur.
pub const MAX_TIMER_COALESCE_US: u32 = 10_000;

/// The default read-coalescing window, µs: none (timeliness first; see the README).
pub const DEFAULT_READ_COALESCE_US: u32 = 0;

/// The longest wait between reads, µs: past 1 ms arrival times would blur latency itself.
pub const MAX_READ_COALESCE_US: u32 = 1_000;

/// The fastest an exponential backoff may grow per failure.
pub const MAX_MULTIPLIER: f64 = 100.0;

/// Events per group, and repetitions per event, at most.
pub const MAX_EVENTS: usize = 64;
pub const MAX_EVENT_TIMES: u32 = 10_000;

/// What an agent's clients may hold unsent by default, bytes: a stalled broker must not let
/// 100,000 clients queue 256 KiB each (25 GB).
pub const DEFAULT_UNSENT_BYTES: u64 = 256 << 20;
/// The smallest unsent-bytes budget, bytes.
pub const MIN_UNSENT_BYTES: u64 = 64 << 10;

/// What one client costs an agent at rest, bytes: measured 3.68 KiB per connection held (RSS
/// over 100,000 connections, BENCHMARKS.md), rounded up.
pub const CLIENT_BYTES: u64 = 4096;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// An event takes exactly `count` of a group's clients, whatever the seed, and a new
        /// seed (a repetition) makes a new choice.
        #[test]
        fn an_event_takes_exactly_its_count(n in 1u32..3000, frac in 0.0f64..=1.0, seed in any::<u64>()) {
            let count = (n as f64 * frac).round() as u32;
            let picked: Vec<u32> = (0..n).filter(|&i| chosen(i, n, count, seed)).collect();
            prop_assert_eq!(picked.len() as u32, count);
            if n >= 100 && count > 0 && count < n / 2 {
                let again: Vec<u32> = (0..n).filter(|&i| chosen(i, n, count, seed ^ 1 << 20)).collect();
                prop_assert_ne!(picked, again);
            }
        }

        /// Contiguous ranges as the controller lays them out (groups without publishers own
        /// none): every stream maps to the group that owns it, and nothing past the end does.
        #[test]
        fn every_stream_finds_the_group_that_publishes_it(sizes in proptest::collection::vec(0u32..50, 1..8)) {
            let mut ranges = Vec::new();
            let mut base = 0;
            for (group, &clients) in sizes.iter().enumerate() {
                if clients > 0 {
                    ranges.push(PublishRange { stream_base: base, clients, group: group as u32 });
                    base += clients;
                }
            }
            for r in &ranges {
                for s in r.stream_base..r.stream_base + r.clients {
                    prop_assert_eq!(group_of_stream(&ranges, s), Some(r.group));
                }
            }
            prop_assert_eq!(group_of_stream(&ranges, base), None);
            prop_assert_eq!(group_of_stream(&ranges, u32::MAX), None);
        }
    }
}
