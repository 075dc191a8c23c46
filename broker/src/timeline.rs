//! Per-client packet timelines: every packet in and out, timestamped when it came off the
//! socket (not when a handler ran), for whoever judges a client's behaviour (`squall device`).
//! Off unless asked for: a load test does not pay for it.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Kind {
    Connect,
    ConnAck,
    Publish,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    PingReq,
    PingResp,
    Disconnect,
    Other,
    /// The TCP (or TLS) connection was accepted.
    Opened,
    /// The connection closed.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Dir {
    In,
    Out,
}

/// What the broker did about a packet, when a fault touched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Note {
    Delayed,
    Withheld,
    Refused,
    /// The broker ended the connection on purpose (a drop fault, or `squall device` moving on).
    Dropped,
    /// The broker ended the connection: nothing came from the client for 1.5 × its keepalive.
    KeepaliveExpired,
}

/// What a packet said, for the packets a judge reads the content of (the rest carry none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", tag = "packet")]
pub enum Detail {
    Connect {
        client_id: String,
        v5: bool,
        clean_start: bool,
        keepalive: u16,
        /// MQTT 5 session expiry, s (3.1.1: 0 with a clean session, u32::MAX without).
        session_expiry: u32,
        /// What the CONNACK said (false when none was sent).
        session_present: bool,
    },
    Publish {
        topic: String,
        retain: bool,
        payload_len: usize,
        /// The payload's first [`PAYLOAD_KEPT`] bytes (lossy UTF-8).
        payload: String,
        /// A hash of the whole payload, to compare it with an expected one.
        #[serde(skip)]
        payload_hash: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        user_properties: Vec<(String, String)>,
    },
    Subscribe {
        /// Filters and their requested QoS.
        filters: Vec<(String, u8)>,
    },
}

/// Payload bytes a timeline keeps of each inbound PUBLISH.
pub const PAYLOAD_KEPT: usize = 256;

/// The hash [`Detail::Publish`] keeps of a payload.
pub fn payload_hash(payload: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    payload.hash(&mut h);
    h.finish()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct PacketEvent {
    /// ns since the broker started.
    pub at_ns: u64,
    /// Which connection of the client (1, 2, … in accept order).
    pub conn: u64,
    pub dir: Dir,
    pub kind: Kind,
    pub pid: Option<u16>,
    pub qos: Option<u8>,
    pub dup: bool,
    pub note: Option<Note>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Box<Detail>>,
}

/// Events kept per client, and over all clients: a device that floods (or a load run left
/// with the timeline on) fills them and the rest is counted, not kept (an event is ~40 bytes).
pub const MAX_EVENTS_PER_CLIENT: usize = 200_000;
pub const MAX_EVENTS: usize = 2_000_000;
/// Clients with a log, at most (client ids past it get none).
pub const MAX_CLIENTS: usize = 100_000;

#[derive(Debug, Default)]
struct Logs {
    by_client: HashMap<String, (Vec<PacketEvent>, u64)>,
    total: usize,
}

#[derive(Debug, Default)]
pub struct Timeline {
    pub enabled: bool,
    logs: Mutex<Logs>,
}

impl Timeline {
    pub fn new(enabled: bool) -> Timeline {
        Timeline { enabled, logs: Mutex::new(Logs::default()) }
    }

    pub fn record(&self, client: &str, events: impl IntoIterator<Item = PacketEvent>) {
        if !self.enabled {
            return;
        }
        let mut l = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        let Logs { by_client, total } = &mut *l;
        if !by_client.contains_key(client) && by_client.len() >= MAX_CLIENTS {
            return; // a flood of client ids
        }
        let (log, dropped) = by_client.entry(client.to_string()).or_default();
        for e in events {
            if log.len() < MAX_EVENTS_PER_CLIENT && *total < MAX_EVENTS {
                log.push(e);
                *total += 1;
            } else {
                *dropped += 1;
            }
        }
    }

    /// Everything recorded for `client`, in order.
    pub fn of(&self, client: &str) -> Vec<PacketEvent> {
        let l = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        l.by_client.get(client).map(|(v, _)| v.clone()).unwrap_or_default()
    }

    /// What was recorded for `client` from its `from`-th event on.
    pub fn since(&self, client: &str, from: usize) -> Vec<PacketEvent> {
        let l = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        l.by_client.get(client).map(|(v, _)| v.get(from..).unwrap_or_default().to_vec()).unwrap_or_default()
    }

    /// Events of `client` not kept because the timeline was full.
    pub fn dropped(&self, client: &str) -> u64 {
        let l = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        l.by_client.get(client).map_or(0, |(_, d)| *d)
    }

    pub fn clients(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).by_client.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: u64) -> PacketEvent {
        PacketEvent {
            at_ns: i,
            conn: 1,
            dir: Dir::In,
            kind: Kind::Publish,
            pid: None,
            qos: Some(0),
            dup: false,
            note: None,
            detail: None,
        }
    }

    #[test]
    fn a_flooding_client_fills_its_log_and_the_rest_is_counted() {
        let t = Timeline::new(true);
        t.record("flood", (0..MAX_EVENTS_PER_CLIENT as u64 + 10).map(ev));
        t.record("quiet", (0..3).map(ev));
        assert_eq!(t.of("flood").len(), MAX_EVENTS_PER_CLIENT);
        assert_eq!(t.dropped("flood"), 10);
        assert_eq!((t.of("quiet").len(), t.dropped("quiet")), (3, 0), "another client keeps its own");
        assert!(Timeline::new(false).of("x").is_empty());
    }
}
