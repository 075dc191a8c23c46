//! The broker's own figures from its `$SYS/#` topics (`--broker-sys`), for a broker that is
//! not on this host: memory, messages and bytes in and out, clients, as the broker itself
//! counts them. The subscribing client lives outside this crate (the controller speaks no
//! MQTT); this module turns what it hears into the report's figures.
//!
//! Brokers publish `$SYS` every so often (mosquitto: `sys_interval`, 10 s by default), so a
//! figure is as of the broker's last update: the first and last updates seen, and when, are
//! kept beside every value.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The most distinct `$SYS` topics kept (mosquitto publishes ~60; a broker publishing per
/// client or per topic would otherwise grow the report without bound).
pub const MAX_TOPICS: usize = 512;

/// Payloads longer than this are not figures (a number, or a number and a unit).
const MAX_PAYLOAD: usize = 128;

/// One numeric `$SYS` topic over the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SysSeries {
    /// The first value heard (a retained one is the state before the run), the last, and the
    /// lowest and highest in between.
    pub first: f64,
    pub last: f64,
    pub min: f64,
    pub max: f64,
    /// When the first and the last were heard, seconds since sampling began (the run's start).
    pub first_at_s: f64,
    pub last_at_s: f64,
    /// How many values were heard.
    pub updates: u64,
}

impl SysSeries {
    /// How much it grew from the first value to the last (a counter's increase over the run).
    pub fn delta(&self) -> f64 {
        self.last - self.first
    }
}

/// What the broker said of itself over the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BrokerSys {
    /// The target subscribed to.
    pub target: String,
    /// `$SYS/broker/version`, if published.
    pub version: Option<String>,
    /// Why no figures came (cannot connect, `$SYS` refused, nothing published).
    pub error: Option<String>,
    /// Every numeric topic (payload a number, or a number then a unit: "264 seconds"), by name.
    pub topics: BTreeMap<String, SysSeries>,
    /// Topics past [`MAX_TOPICS`], not kept.
    pub dropped_topics: u64,
    /// Figures read off mosquitto's topic names (other brokers name theirs differently: see
    /// `topics`). PUBLISH packets and bytes are the broker's counters' growth between the
    /// first and last values heard. mosquitto republishes a figure only when it changed (and
    /// keeps it retained for 60 s), so a counter idle before the run is first heard once the
    /// run moves it: its growth then misses up to one `sys_interval` (see its `first_at_s`).
    pub publish_received: Option<f64>,
    pub publish_sent: Option<f64>,
    pub bytes_received: Option<f64>,
    pub bytes_sent: Option<f64>,
    /// `$SYS/broker/heap/current`, bytes: its first, highest and last values.
    pub heap_start_bytes: Option<f64>,
    pub heap_peak_bytes: Option<f64>,
    pub heap_end_bytes: Option<f64>,
    /// The most clients connected at one update (`$SYS/broker/clients/connected`).
    pub clients_connected_peak: Option<f64>,
}

/// Collects `$SYS` messages as they come.
#[derive(Debug)]
pub struct SysSampler {
    sys: BrokerSys,
    start: std::time::Instant,
}

impl SysSampler {
    pub fn new(target: &str) -> SysSampler {
        SysSampler {
            sys: BrokerSys { target: target.to_string(), ..Default::default() },
            start: std::time::Instant::now(),
        }
    }

    /// One message on `topic`.
    pub fn observe(&mut self, topic: &str, payload: &[u8]) {
        let at = self.start.elapsed().as_secs_f64();
        self.observe_at(topic, payload, at);
    }

    /// One message on `topic`, heard `at_s` seconds after sampling began.
    pub fn observe_at(&mut self, topic: &str, payload: &[u8], at_s: f64) {
        if !topic.starts_with("$SYS/") || payload.len() > MAX_PAYLOAD {
            return;
        }
        let Ok(text) = std::str::from_utf8(payload) else { return };
        if topic == "$SYS/broker/version" {
            self.sys.version = Some(text.trim().to_string());
            return;
        }
        let Some(v) = leading_number(text) else { return };
        let room = self.sys.topics.len() < MAX_TOPICS;
        match self.sys.topics.get_mut(topic) {
            Some(s) => {
                s.last = v;
                s.last_at_s = at_s;
                s.min = s.min.min(v);
                s.max = s.max.max(v);
                s.updates += 1;
            }
            None if room => {
                let s = SysSeries {
                    first: v,
                    last: v,
                    min: v,
                    max: v,
                    first_at_s: at_s,
                    last_at_s: at_s,
                    updates: 1,
                };
                self.sys.topics.insert(topic.to_string(), s);
            }
            None => self.sys.dropped_topics += 1,
        }
    }

    /// Values heard so far, all topics together (a new `$SYS` batch raises it).
    pub fn heard(&self) -> u64 {
        self.sys.topics.values().map(|t| t.updates).sum()
    }

    /// Why sampling stopped short (the figures so far are kept).
    pub fn failed(&mut self, why: String) {
        self.sys.error.get_or_insert(why);
    }

    pub fn finish(self) -> BrokerSys {
        let mut s = self.sys;
        let t = |name: &str| s.topics.get(name).cloned();
        let delta = |name: &str| t(name).map(|x| x.delta());
        let heap = t("$SYS/broker/heap/current");
        let (rx, tx) =
            (delta("$SYS/broker/publish/messages/received"), delta("$SYS/broker/publish/messages/sent"));
        let (brx, btx) = (delta("$SYS/broker/bytes/received"), delta("$SYS/broker/bytes/sent"));
        let clients = t("$SYS/broker/clients/connected").map(|c| c.max);
        (s.publish_received, s.publish_sent, s.bytes_received, s.bytes_sent) = (rx, tx, brx, btx);
        s.heap_start_bytes = heap.as_ref().map(|h| h.first);
        s.heap_peak_bytes = heap.as_ref().map(|h| h.max);
        s.heap_end_bytes = heap.as_ref().map(|h| h.last);
        s.clients_connected_peak = clients;
        if s.error.is_none() && s.topics.is_empty() {
            s.error = Some(
                "no $SYS figures heard: the broker publishes none, or its ACL hides them from this client"
                    .into(),
            );
        }
        s
    }
}

/// The number a `$SYS` payload starts with: "43720", "0.89", "264 seconds".
fn leading_number(text: &str) -> Option<f64> {
    let word = text.split_whitespace().next()?;
    let v: f64 = word.parse().ok()?;
    v.is_finite().then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mosquitto_topics_become_figures_of_the_run() {
        let mut s = SysSampler::new("mqtt://b:1883");
        // retained state at subscribe time, then two updates
        s.observe_at("$SYS/broker/version", b"mosquitto version 2.0.11", 0.0);
        s.observe_at("$SYS/broker/publish/messages/received", b"68", 0.0);
        s.observe_at("$SYS/broker/heap/current", b"43720", 0.0);
        s.observe_at("$SYS/broker/uptime", b"264 seconds", 0.0);
        s.observe_at("$SYS/broker/clients/connected", b"1", 0.0);
        s.observe_at("$SYS/broker/heap/current", b"91000", 10.0);
        s.observe_at("$SYS/broker/clients/connected", b"63", 10.0);
        s.observe_at("$SYS/broker/publish/messages/received", b"1068", 20.0);
        s.observe_at("$SYS/broker/heap/current", b"60000", 20.0);
        s.observe_at("$SYS/broker/clients/connected", b"1", 20.0);
        let b = s.finish();
        assert_eq!(b.version.as_deref(), Some("mosquitto version 2.0.11"));
        assert_eq!(b.publish_received, Some(1000.0));
        assert_eq!(
            (b.heap_start_bytes, b.heap_peak_bytes, b.heap_end_bytes),
            (Some(43720.0), Some(91000.0), Some(60000.0))
        );
        assert_eq!(b.clients_connected_peak, Some(63.0));
        assert_eq!(b.topics["$SYS/broker/uptime"].first, 264.0);
        let m = &b.topics["$SYS/broker/publish/messages/received"];
        assert_eq!((m.updates, m.first_at_s, m.last_at_s), (2, 0.0, 20.0));
        assert_eq!(b.publish_sent, None, "not heard: not made up");
        assert!(b.error.is_none());
    }

    #[test]
    fn hostile_payloads_and_topic_floods_stay_bounded() {
        let mut s = SysSampler::new("t");
        for i in 0..(MAX_TOPICS + 100) {
            s.observe_at(&format!("$SYS/per-client/{i}"), b"1", 0.0);
        }
        s.observe_at("$SYS/broker/x", &[b'9'; 4096], 0.0);
        s.observe_at("$SYS/broker/y", b"NaN", 0.0);
        s.observe_at("$SYS/broker/z", b"inf", 0.0);
        s.observe_at("$SYS/broker/w", &[0xff, 0xfe], 0.0);
        s.observe_at("not/sys", b"5", 0.0);
        let b = s.finish();
        assert_eq!(b.topics.len(), MAX_TOPICS);
        assert_eq!(b.dropped_topics, 100);
        assert!(!b.topics.contains_key("$SYS/broker/x") && !b.topics.contains_key("not/sys"));
    }

    #[test]
    fn nothing_heard_says_why() {
        let b = SysSampler::new("t").finish();
        assert!(b.error.unwrap().contains("no $SYS figures"));
        let mut s = SysSampler::new("t");
        s.failed("cannot connect: refused".into());
        s.failed("later".into());
        assert_eq!(s.finish().error.as_deref(), Some("cannot connect: refused"), "the first cause is kept");
    }
}
