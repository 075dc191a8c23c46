//! The broker's counters (what `$SYS` topics carry elsewhere), readable at any time by tests,
//! by `squall run` for its report, and by `squall broker` when it exits.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use serde::Serialize;

#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicI64,
    pub connects: AtomicU64,
    pub connects_refused: AtomicU64,
    pub disconnects_clean: AtomicU64,
    pub disconnects_abrupt: AtomicU64,
    pub takeovers: AtomicU64,
    pub messages_in: [AtomicU64; 3],
    pub messages_out: [AtomicU64; 3],
    pub dropped_queue_full: AtomicU64,
    pub dropped_offline_qos0: AtomicU64,
    pub wills_published: AtomicU64,
    pub sessions: AtomicI64,
    pub subscriptions: AtomicI64,
    pub retained: AtomicI64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub faults_applied: AtomicU64,
}

/// A reading of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// Connections open now.
    pub connections: u64,
    /// CONNECTs accepted, in all.
    pub connects: u64,
    /// CONNECTs refused (authentication, limits, injected faults).
    pub connects_refused: u64,
    pub disconnects_clean: u64,
    pub disconnects_abrupt: u64,
    pub takeovers: u64,
    /// PUBLISH packets received from clients, by QoS (a QoS 2 resend before PUBREL not counted).
    pub messages_in: [u64; 3],
    /// PUBLISH packets sent to subscribers, by QoS (resends on a resumed session included).
    pub messages_out: [u64; 3],
    /// Messages not queued because a client's queue was full.
    pub dropped_queue_full: u64,
    /// QoS 0 messages for disconnected sessions (never queued).
    pub dropped_offline_qos0: u64,
    pub wills_published: u64,
    pub sessions: u64,
    pub subscriptions: u64,
    pub retained: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Injected faults that took effect.
    pub faults_applied: u64,
}

impl StatsSnapshot {
    pub fn messages_in_total(&self) -> u64 {
        self.messages_in.iter().sum()
    }
    pub fn messages_out_total(&self) -> u64 {
        self.messages_out.iter().sum()
    }
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicI64| a.load(Relaxed).max(0) as u64;
        let l = |a: &AtomicU64| a.load(Relaxed);
        StatsSnapshot {
            connections: g(&self.connections),
            connects: l(&self.connects),
            connects_refused: l(&self.connects_refused),
            disconnects_clean: l(&self.disconnects_clean),
            disconnects_abrupt: l(&self.disconnects_abrupt),
            takeovers: l(&self.takeovers),
            messages_in: [l(&self.messages_in[0]), l(&self.messages_in[1]), l(&self.messages_in[2])],
            messages_out: [l(&self.messages_out[0]), l(&self.messages_out[1]), l(&self.messages_out[2])],
            dropped_queue_full: l(&self.dropped_queue_full),
            dropped_offline_qos0: l(&self.dropped_offline_qos0),
            wills_published: l(&self.wills_published),
            sessions: g(&self.sessions),
            subscriptions: g(&self.subscriptions),
            retained: g(&self.retained),
            bytes_in: l(&self.bytes_in),
            bytes_out: l(&self.bytes_out),
            faults_applied: l(&self.faults_applied),
        }
    }
}
