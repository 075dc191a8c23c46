//! Per-client packet timelines: every packet in and out, timestamped when it came off the
//! socket (not when a handler ran), for whoever judges a client's behaviour (`squall device`).
//! Off unless asked for: a load test does not pay for it.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dir {
    In,
    Out,
}

/// What the broker did about a packet, when a fault touched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Note {
    Delayed,
    Withheld,
    Refused,
    Dropped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
}

#[derive(Debug, Default)]
pub struct Timeline {
    pub enabled: bool,
    by_client: Mutex<HashMap<String, Vec<PacketEvent>>>,
}

impl Timeline {
    pub fn new(enabled: bool) -> Timeline {
        Timeline { enabled, by_client: Mutex::new(HashMap::new()) }
    }

    pub fn record(&self, client: &str, events: impl IntoIterator<Item = PacketEvent>) {
        if !self.enabled {
            return;
        }
        let mut m = self.by_client.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(client.to_string()).or_default().extend(events);
    }

    /// Everything recorded for `client`, in order.
    pub fn of(&self, client: &str) -> Vec<PacketEvent> {
        self.by_client.lock().unwrap_or_else(|e| e.into_inner()).get(client).cloned().unwrap_or_default()
    }

    pub fn clients(&self) -> Vec<String> {
        self.by_client.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }
}
