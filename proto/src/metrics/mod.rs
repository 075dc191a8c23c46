//! What agents measure, as data: latency histograms (and their HDR V2 encoding), counters,
//! load errors, delivery totals, and the per-interval snapshots that carry them. The agent
//! records into these; the controller merges them.

pub mod counters;
pub mod errors;
pub mod histogram;
pub mod ledger;
pub mod receiver;
pub mod shares;
pub mod snapshot;
pub mod storms;
pub mod wills;

use serde::{Deserialize, Serialize};

pub use counters::Counters;
pub use errors::{ErrorCount, LoadError};
pub use histogram::{GroupedHists, Hists, Latency, Summary};
pub use ledger::{Delivery, LedgerTotals, StreamFinal};
pub use receiver::{Expectations, ReceiverLedger, Seen};
pub use shares::{Receipts, ShareResult, StreamReceipts};
pub use snapshot::{HistogramBytes, Snapshot};
pub use storms::{OutageWindow, Storm, StormResult};
pub use wills::{Observers, WillId, WillLedger, WillMark, WillRecord};

/// What a latency measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// CONNECT written → CONNACK (raw); scheduled attempt time → CONNACK, TCP and TLS
    /// included (corrected).
    Connect = 0,
    /// SUBSCRIBE written → SUBACK.
    Subscribe = 1,
    /// QoS 1 PUBLISH → PUBACK.
    Puback = 2,
    /// QoS 2 PUBLISH → PUBCOMP.
    Pubcomp = 3,
    /// PUBLISH → the message received by a subscriber, any QoS.
    E2e = 4,
    /// How late the tester wrote each PUBLISH: actual send − intended send (raw only). The
    /// tester's own share of corrected latency: timer granularity (tokio's 1 ms tick), a busy
    /// worker thread, a full in-flight window, a disconnection.
    Lag = 5,
    /// An established connection lost → CONNACK of the connection that replaced it (raw only):
    /// how long a client was away, backoff and broker together.
    Reconnect = 6,
    /// The delay a client actually waited before each retry (raw only): its backoff policy and
    /// jitter, and the group's reconnect rate limit.
    Backoff = 7,
    /// When the broker was due to publish a will → an observer received it (raw only): from
    /// the kill for `drop` and `disconnect_with_will`, from the last packet + 1.5 × keepalive
    /// for `silence`, plus any MQTT 5 will delay. The broker's enforcement delay. Settled by
    /// the controller from the agents' will records.
    Will = 8,
    /// A persistent session resumed (CONNACK, session present) → the last message published
    /// before it received (raw only): how long the broker took to hand over the backlog it
    /// queued while the client was away. Recorded when the connection ends.
    Backlog = 9,
    /// TCP connected → TLS handshake done (raw only), every TLS connection: what a TLS storm
    /// costs, resumed or full (see the counters tls_handshakes and tls_resumed).
    Tls = 10,
    /// How long the newest byte of each read had waited in the kernel before squall read it
    /// (raw only; TCP, from the kernel's software receive stamp, `SO_TIMESTAMPING`): the
    /// tester's own delay in taking what arrived, whether it read eagerly or let reads
    /// coalesce (`run.read_coalesce`). Arrival times are taken from the stamp, so this wait is
    /// not in e2e, PUBACK or SUBACK latency; messages earlier in the same read are timed at
    /// the newest byte's arrival (late by at most the time between reads).
    ReadWait = 11,
}

impl Metric {
    pub const ALL: [Metric; 12] = [
        Metric::Connect,
        Metric::Subscribe,
        Metric::Puback,
        Metric::Pubcomp,
        Metric::E2e,
        Metric::Lag,
        Metric::Reconnect,
        Metric::Backoff,
        Metric::Will,
        Metric::Backlog,
        Metric::Tls,
        Metric::ReadWait,
    ];

    /// Metrics measured from the actual event only (no intended time to correct from).
    pub fn raw_only(&self) -> bool {
        matches!(
            self,
            Metric::Subscribe
                | Metric::Lag
                | Metric::Reconnect
                | Metric::Backoff
                | Metric::Will
                | Metric::Backlog
                | Metric::Tls
                | Metric::ReadWait
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            Metric::Connect => "connect",
            Metric::Subscribe => "subscribe",
            Metric::Puback => "puback",
            Metric::Pubcomp => "pubcomp",
            Metric::E2e => "e2e",
            Metric::Lag => "lag",
            Metric::Reconnect => "reconnect",
            Metric::Backoff => "backoff",
            Metric::Will => "will",
            Metric::Backlog => "backlog",
            Metric::Tls => "tls",
            Metric::ReadWait => "read_wait",
        }
    }

    pub fn from_name(s: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// From when a latency is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Timing {
    /// From the moment the packet was actually written.
    Raw = 0,
    /// From the moment the schedule intended it to be written: includes any time the client
    /// spent held up, so a stall cannot hide (coordinated omission).
    Corrected = 1,
}
