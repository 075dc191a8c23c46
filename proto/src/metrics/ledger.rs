//! Delivery totals: what the receivers' ledgers (in the agent) settle into, and what the
//! publisher side says about each stream at the end of the publishing window.

use serde::{Deserialize, Serialize};

/// Per-QoS delivery accounting of one or more receivers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Messages the receivers should have got: each matching stream's sent count.
    pub expected: u64,
    /// Distinct messages received.
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub missed_offline: u64,
    pub phantom: u64,
    /// Messages sent while a persistent-session subscriber was away, which its session would
    /// have kept had the broker not lost it (expired, or forgotten in a restart).
    #[serde(default)]
    pub session_lost: u64,
    /// Messages the broker refused at publish (PUBACK/PUBREC reason ≥ 0x80, e.g. 0x97 quota
    /// exceeded): it said so, so they are not counted lost.
    #[serde(default)]
    pub refused: u64,
}

impl Delivery {
    pub fn add(&mut self, o: &Delivery) {
        self.expected += o.expected;
        self.received += o.received;
        self.lost += o.lost;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.missed_offline += o.missed_offline;
        self.session_lost += o.session_lost;
        self.refused += o.refused;
        self.phantom += o.phantom;
    }
}

/// Delivery accounting by the QoS messages were delivered with (index 0, 1, 2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerTotals {
    pub qos: [Delivery; 3],
}

impl LedgerTotals {
    pub fn add(&mut self, o: &LedgerTotals) {
        for (a, b) in self.qos.iter_mut().zip(o.qos.iter()) {
            a.add(b);
        }
    }

    pub fn all(&self) -> Delivery {
        let mut d = Delivery::default();
        for q in &self.qos {
            d.add(q);
        }
        d
    }
}

/// What the publisher side says about a stream, at the end of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamFinal {
    pub stream: u32,
    pub topic: String,
    pub qos: u8,
    /// Messages sent (the stream's sequences are 0 … sent − 1).
    pub sent: u64,
    /// Of them, those the broker refused with a reason code (not owed to any subscriber).
    #[serde(default)]
    pub refused: u64,
}
