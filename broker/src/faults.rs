//! Fault injection: rules that make the broker misbehave on purpose, for some clients or all.
//!
//! A rule is a selector (client-id glob, the client's first N connection attempts, every k-th
//! packet) and an action: delay or withhold an acknowledgement, refuse the connection with a
//! chosen code, drop the connection after a time or on a packet, or expire the session
//! (CONNACK with session present = false). A whole-broker stall is separate ([`Faults::stall_until`]),
//! and so is a limit on the PUBLISH packets it takes a second ([`Faults::limit_publishes`]).
//! Rules come from code or from a TOML file (`squall broker --faults FILE`):
//!
//! ```toml
//! [[fault]]
//! delay = "puback"      # connack suback unsuback puback pubrec pubcomp pingresp
//! by = "5ms"            # or a uniform range: by = ["1ms", "10ms"]
//! clients = "dev-*"     # optional: client ids matching this glob (* and ?)
//! first = 3             # optional: only the client's first 3 connections
//! after = 1             # optional: only its connections after the first (a reconnect storm)
//! every = 2             # optional: only every 2nd such packet
//!
//! [[fault]]
//! withhold = "pingresp"
//!
//! [[fault]]
//! refuse = 135          # CONNACK code (MQTT 5 codes are mapped for 3.1.1 clients)
//!
//! [[fault]]
//! drop_after = "2s"     # or: drop_on = "subscribe", or: expire_session = true,
//!                       # or: will_on_clean_disconnect = true (a broker bug, on purpose)
//!
//! [[stall]]
//! at = "5s"             # after the broker starts
//! for = "1s"
//!
//! [limit]
//! publishes_per_sec = 5000   # the whole broker takes at most this many PUBLISH a second;
//!                            # more wait their turn (a broker of known capacity)
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Deserialize;

/// An acknowledgement the broker sends, which a rule may delay or withhold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckPacket {
    ConnAck,
    SubAck,
    UnsubAck,
    PubAck,
    PubRec,
    PubComp,
    PingResp,
}

/// A packet from the client on which a rule may drop the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InPacket {
    Publish,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    Subscribe,
    Unsubscribe,
    PingReq,
    Disconnect,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Delay {
    Fixed(Duration),
    /// Uniform in [low, high].
    Uniform(Duration, Duration),
}

impl Delay {
    pub fn sample(&self) -> Duration {
        match *self {
            Delay::Fixed(d) => d,
            Delay::Uniform(a, b) => {
                let (a, b) = (a.as_nanos() as u64, b.as_nanos().max(a.as_nanos()) as u64);
                Duration::from_nanos(fastrand::u64(a..=b))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Delay {
        packet: AckPacket,
        by: Delay,
    },
    Withhold {
        packet: AckPacket,
    },
    /// Answer CONNECT with this CONNACK code (MQTT 5 numbering; mapped for 3.1.1).
    Refuse {
        code: u8,
    },
    DropAfter(Duration),
    DropOn(InPacket),
    /// CONNACK with session present = false, the stored session discarded.
    ExpireSession,
    /// Publish the will even when the client leaves with a clean DISCONNECT (which the spec
    /// forbids): a broken broker, for testing what catches it.
    WillOnCleanDisconnect,
}

/// Which clients and packets a rule applies to. Empty: all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selector {
    /// Client ids matching this glob (`*`, `?`).
    pub clients: Option<String>,
    /// Only the client's first N connections (counted per client id since the broker started).
    pub first: Option<u32>,
    /// Only the client's connections after its first N (with `first`, a window: after = 1,
    /// first = 3 is its 2nd and 3rd).
    pub after: Option<u32>,
    /// Only every k-th matching packet on a connection (k = 1: all).
    pub every: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub select: Selector,
    pub action: Action,
}

impl Rule {
    pub fn all(action: Action) -> Rule {
        Rule { select: Selector::default(), action }
    }

    pub fn for_clients(glob: &str, action: Action) -> Rule {
        Rule { select: Selector { clients: Some(glob.into()), ..Default::default() }, action }
    }
}

/// The broker's fault rules and stall state.
#[derive(Debug, Default)]
pub struct Faults {
    rules: RwLock<Vec<Arc<Rule>>>,
    attempts: Mutex<HashMap<String, u32>>,
    /// ns since broker start until which the whole broker is stalled.
    stall_until_ns: AtomicU64,
    /// A limit on PUBLISH packets taken, all clients together: one per this many ns (0: none).
    publish_interval_ns: AtomicU64,
    /// When the next PUBLISH may be taken under the limit, ns since broker start.
    next_publish_ns: AtomicU64,
}

impl Faults {
    pub fn new(rules: Vec<Rule>) -> Faults {
        Faults { rules: RwLock::new(rules.into_iter().map(Arc::new).collect()), ..Default::default() }
    }

    /// Adds a rule; it applies to connections made from now on.
    pub fn add(&self, rule: Rule) {
        self.rules.write().unwrap_or_else(|e| e.into_inner()).push(Arc::new(rule));
    }

    pub fn clear(&self) {
        self.rules.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Forgets how many connections each client made: `first` and `after` count from now.
    pub fn reset_attempts(&self) {
        self.attempts.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Stalls the broker until `until_ns` (ns since start): nothing is read or written.
    pub fn stall_until(&self, until_ns: u64) {
        self.stall_until_ns.fetch_max(until_ns, Ordering::Relaxed);
    }

    pub fn stalled_until(&self) -> u64 {
        self.stall_until_ns.load(Ordering::Relaxed)
    }

    /// Takes at most `per_sec` PUBLISH packets a second, all clients together (`None`: no
    /// limit): a broker of known capacity. A PUBLISH over the limit waits for its turn, and its
    /// connection reads nothing more meanwhile, so publishers feel it as a saturated broker's
    /// backpressure and their messages' latency grows with the queue.
    pub fn limit_publishes(&self, per_sec: Option<f64>) {
        let ns =
            per_sec.filter(|r| *r > 0.0 && r.is_finite()).map_or(0, |r| (1e9 / r).round().max(1.0) as u64);
        self.publish_interval_ns.store(ns, Ordering::Relaxed);
    }

    /// When a PUBLISH arriving at `now_ns` may be taken (ns since broker start): its turn in
    /// the limit's schedule, `now_ns` without a limit or while the broker keeps up.
    pub fn publish_turn(&self, now_ns: u64) -> u64 {
        let step = self.publish_interval_ns.load(Ordering::Relaxed);
        if step == 0 {
            return now_ns;
        }
        // turns are handed out one `step` apart; an idle broker's next turn is now
        let prev = self
            .next_publish_ns
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |next| Some(next.max(now_ns) + step))
            .unwrap_or(now_ns);
        prev.max(now_ns)
    }

    /// A new connection of `client_id`: the rules that apply to it (counts the attempt).
    pub fn for_connection(&self, client_id: &str) -> ConnFaults {
        let attempt = {
            let mut a = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
            let n = a.entry(client_id.to_string()).or_default();
            *n += 1;
            *n
        };
        let rules: Vec<Arc<Rule>> = self
            .rules
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|r| r.select.clients.as_deref().is_none_or(|g| glob(g, client_id)))
            .filter(|r| r.select.first.is_none_or(|n| attempt <= n))
            .filter(|r| r.select.after.is_none_or(|n| attempt > n))
            .cloned()
            .collect();
        let counts = vec![0; rules.len()];
        ConnFaults { rules, counts }
    }
}

/// The rules of one connection, with their packet counters.
#[derive(Debug, Default)]
pub struct ConnFaults {
    rules: Vec<Arc<Rule>>,
    counts: Vec<u64>,
}

/// What to do with an acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AckFate {
    Send,
    Delay(Duration),
    Withhold,
}

impl ConnFaults {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    fn hit(&mut self, i: usize) -> bool {
        self.counts[i] += 1;
        let every = self.rules[i].select.every.unwrap_or(1).max(1) as u64;
        self.counts[i] % every == 0
    }

    /// The fate of an acknowledgement about to be sent (the first rule that hits decides).
    pub fn ack(&mut self, packet: AckPacket) -> AckFate {
        for i in 0..self.rules.len() {
            let fate = match self.rules[i].action {
                Action::Delay { packet: p, by } if p == packet => AckFate::Delay(by.sample()),
                Action::Withhold { packet: p } if p == packet => AckFate::Withhold,
                _ => continue,
            };
            if self.hit(i) {
                return fate;
            }
        }
        AckFate::Send
    }

    /// A refusal code for this connection, if a rule refuses it.
    pub fn refuse(&mut self) -> Option<u8> {
        for i in 0..self.rules.len() {
            if let Action::Refuse { code } = self.rules[i].action
                && self.hit(i)
            {
                return Some(code);
            }
        }
        None
    }

    pub fn expire_session(&mut self) -> bool {
        (0..self.rules.len()).any(|i| matches!(self.rules[i].action, Action::ExpireSession) && self.hit(i))
    }

    pub fn will_on_clean_disconnect(&self) -> bool {
        self.rules.iter().any(|r| matches!(r.action, Action::WillOnCleanDisconnect))
    }

    pub fn drop_after(&self) -> Option<Duration> {
        self.rules.iter().find_map(|r| match r.action {
            Action::DropAfter(d) => Some(d),
            _ => None,
        })
    }

    /// Whether this inbound packet ends the connection.
    pub fn drop_on(&mut self, packet: InPacket) -> bool {
        (0..self.rules.len())
            .any(|i| matches!(self.rules[i].action, Action::DropOn(p) if p == packet) && self.hit(i))
    }
}

/// `*` any run, `?` any one character.
pub fn glob(pattern: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// A CONNACK code for the client's protocol: MQTT 5 codes mapped to 3.1.1 return codes.
pub fn connack_code_for(v5: bool, code: u8) -> u8 {
    if v5 || code < 0x80 {
        return code;
    }
    match code {
        0x84 => 1,
        0x85 => 2,
        0x86 => 4,
        0x87 => 5,
        _ => 3,
    }
}

// ---- the file format ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultFile {
    #[serde(default)]
    fault: Vec<FaultSpec>,
    #[serde(default)]
    stall: Vec<StallSpec>,
    limit: Option<LimitSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitSpec {
    publishes_per_sec: f64,
}

/// What a fault file asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultPlan {
    pub rules: Vec<Rule>,
    pub stalls: Vec<Stall>,
    /// `[limit] publishes_per_sec`: see [`Faults::limit_publishes`].
    pub publishes_per_sec: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultSpec {
    delay: Option<String>,
    by: Option<DelaySpec>,
    withhold: Option<String>,
    refuse: Option<u8>,
    drop_after: Option<String>,
    drop_on: Option<String>,
    expire_session: Option<bool>,
    will_on_clean_disconnect: Option<bool>,
    clients: Option<String>,
    first: Option<u32>,
    after: Option<u32>,
    every: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DelaySpec {
    Fixed(String),
    Range(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StallSpec {
    at: String,
    #[serde(rename = "for")]
    duration: String,
}

/// A broker-wide stall from a fault file: at `at` after start, for `duration`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stall {
    pub at: Duration,
    pub duration: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("fault file, rule {index}: {message}")]
pub struct FaultFileError {
    /// 1-based rule number (0: the file as a whole).
    pub index: usize,
    pub message: String,
}

fn dur(s: &str, index: usize) -> Result<Duration, FaultFileError> {
    humantime::parse_duration(s)
        .map_err(|_| FaultFileError { index, message: format!("`{s}` is not a duration (e.g. \"5ms\")") })
}

fn ack_packet(s: &str, index: usize) -> Result<AckPacket, FaultFileError> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "connack" => AckPacket::ConnAck,
        "suback" => AckPacket::SubAck,
        "unsuback" => AckPacket::UnsubAck,
        "puback" => AckPacket::PubAck,
        "pubrec" => AckPacket::PubRec,
        "pubcomp" => AckPacket::PubComp,
        "pingresp" => AckPacket::PingResp,
        other => {
            return Err(FaultFileError {
                index,
                message: format!(
                    "`{other}` is not an acknowledgement; use connack, suback, unsuback, puback, pubrec, pubcomp or pingresp"
                ),
            });
        }
    })
}

fn in_packet(s: &str, index: usize) -> Result<InPacket, FaultFileError> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "publish" => InPacket::Publish,
        "puback" => InPacket::PubAck,
        "pubrec" => InPacket::PubRec,
        "pubrel" => InPacket::PubRel,
        "pubcomp" => InPacket::PubComp,
        "subscribe" => InPacket::Subscribe,
        "unsubscribe" => InPacket::Unsubscribe,
        "pingreq" => InPacket::PingReq,
        "disconnect" => InPacket::Disconnect,
        other => return Err(FaultFileError { index, message: format!("`{other}` is not a client packet") }),
    })
}

/// Parses a fault file.
pub fn parse_file(text: &str) -> Result<FaultPlan, FaultFileError> {
    let file: FaultFile =
        toml::from_str(text).map_err(|e| FaultFileError { index: 0, message: e.message().to_string() })?;
    let mut rules = Vec::new();
    for (i, f) in file.fault.iter().enumerate() {
        let index = i + 1;
        let mut actions = Vec::new();
        if let Some(p) = &f.delay {
            let by = match &f.by {
                Some(DelaySpec::Fixed(d)) => Delay::Fixed(dur(d, index)?),
                Some(DelaySpec::Range(r)) if r.len() == 2 => {
                    Delay::Uniform(dur(&r[0], index)?, dur(&r[1], index)?)
                }
                Some(DelaySpec::Range(_)) => {
                    return Err(FaultFileError { index, message: "a range is [low, high]".into() });
                }
                None => return Err(FaultFileError { index, message: "a delay needs `by`".into() }),
            };
            actions.push(Action::Delay { packet: ack_packet(p, index)?, by });
        }
        if let Some(p) = &f.withhold {
            actions.push(Action::Withhold { packet: ack_packet(p, index)? });
        }
        if let Some(code) = f.refuse {
            actions.push(Action::Refuse { code });
        }
        if let Some(d) = &f.drop_after {
            actions.push(Action::DropAfter(dur(d, index)?));
        }
        if let Some(p) = &f.drop_on {
            actions.push(Action::DropOn(in_packet(p, index)?));
        }
        if f.expire_session == Some(true) {
            actions.push(Action::ExpireSession);
        }
        if f.will_on_clean_disconnect == Some(true) {
            actions.push(Action::WillOnCleanDisconnect);
        }
        if actions.len() != 1 {
            return Err(FaultFileError {
                index,
                message: "give exactly one of delay, withhold, refuse, drop_after, drop_on, expire_session, will_on_clean_disconnect"
                    .into(),
            });
        }
        if f.every == Some(0) {
            return Err(FaultFileError { index, message: "`every` must be at least 1".into() });
        }
        rules.push(Rule {
            select: Selector { clients: f.clients.clone(), first: f.first, after: f.after, every: f.every },
            action: actions.remove(0),
        });
    }
    let stalls = file
        .stall
        .iter()
        .enumerate()
        .map(|(i, s)| Ok(Stall { at: dur(&s.at, i + 1)?, duration: dur(&s.duration, i + 1)? }))
        .collect::<Result<_, FaultFileError>>()?;
    let publishes_per_sec = match file.limit {
        Some(l) if !(l.publishes_per_sec > 0.0 && l.publishes_per_sec <= 1e9) => {
            return Err(FaultFileError {
                index: 0,
                message: format!(
                    "[limit] publishes_per_sec = {} must be above 0 and at most 1e9",
                    l.publishes_per_sec
                ),
            });
        }
        l => l.map(|l| l.publishes_per_sec),
    };
    Ok(FaultPlan { rules, stalls, publishes_per_sec })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("dev-*", "dev-12"));
        assert!(glob("*", ""));
        assert!(glob("d?v", "dev"));
        assert!(glob("*-1", "a-b-1"));
        assert!(!glob("dev-*", "app-1"));
        assert!(!glob("dev", "devx"));
    }

    #[test]
    fn selectors_pick_clients_attempts_and_every_kth_packet() {
        let f = Faults::new(vec![Rule {
            select: Selector { clients: Some("dev-*".into()), first: Some(1), after: None, every: Some(2) },
            action: Action::Withhold { packet: AckPacket::PubAck },
        }]);
        let mut c = f.for_connection("dev-1");
        let fates: Vec<_> = (0..4).map(|_| c.ack(AckPacket::PubAck)).collect();
        assert_eq!(fates, vec![AckFate::Send, AckFate::Withhold, AckFate::Send, AckFate::Withhold]);
        assert_eq!(c.ack(AckPacket::SubAck), AckFate::Send);
        // the second connection of the same client is past `first`
        assert!(f.for_connection("dev-1").is_empty());
        assert!(f.for_connection("app-1").is_empty());
    }

    #[test]
    fn the_file_format() {
        let FaultPlan { rules, stalls, publishes_per_sec } = parse_file(
            r#"
[[fault]]
delay = "puback"
by = "5ms"
clients = "dev-*"
[[fault]]
delay = "pingresp"
by = ["1ms", "3ms"]
[[fault]]
refuse = 135
[[fault]]
drop_on = "subscribe"
[[stall]]
at = "2s"
for = "1s"
[limit]
publishes_per_sec = 2500
"#,
        )
        .unwrap();
        assert_eq!(rules.len(), 4);
        assert_eq!(publishes_per_sec, Some(2500.0));
        let e = parse_file("[limit]\npublishes_per_sec = 0\n").unwrap_err();
        assert!(e.message.contains("above 0"), "{e}");
        assert_eq!(
            rules[0].action,
            Action::Delay { packet: AckPacket::PubAck, by: Delay::Fixed(Duration::from_millis(5)) }
        );
        assert_eq!(stalls, vec![Stall { at: Duration::from_secs(2), duration: Duration::from_secs(1) }]);
        let e = parse_file("[[fault]]\ndelay = \"pubak\"\nby = \"1ms\"\n").unwrap_err();
        assert!(e.message.contains("not an acknowledgement"), "{e}");
        let e = parse_file("[[fault]]\nwithhold = \"puback\"\nrefuse = 5\n").unwrap_err();
        assert!(e.message.contains("exactly one"), "{e}");
    }

    #[test]
    fn publish_turns_keep_to_the_limit_and_an_idle_broker_owes_none() {
        let f = Faults::default();
        assert_eq!(f.publish_turn(5), 5, "no limit: at once");
        f.limit_publishes(Some(1000.0)); // one per ms
        let turns: Vec<u64> = (0..5).map(|_| f.publish_turn(10_000_000)).collect();
        assert_eq!(turns, vec![10_000_000, 11_000_000, 12_000_000, 13_000_000, 14_000_000]);
        // long after: the broker kept up, the next one is taken at once
        assert_eq!(f.publish_turn(1_000_000_000), 1_000_000_000);
        f.limit_publishes(None);
        assert_eq!(f.publish_turn(7), 7);
    }

    #[test]
    fn v5_codes_map_for_311_clients() {
        assert_eq!(connack_code_for(false, 0x87), 5);
        assert_eq!(connack_code_for(false, 0x86), 4);
        assert_eq!(connack_code_for(true, 0x87), 0x87);
        assert_eq!(connack_code_for(false, 2), 2);
    }
}
