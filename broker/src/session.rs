//! Sessions: what outlives a network connection — subscriptions, the queue of messages not
//! yet sent, QoS 1/2 messages sent and not yet acknowledged, QoS 2 ids awaiting release.
//!
//! A session's state sits behind its own mutex; the router only ever takes one session lock at
//! a time, and never while holding the topic tree (no lock is held across another).

use std::collections::VecDeque;
use std::num::NonZeroU16;
use std::sync::{Arc, Mutex, MutexGuard};

use ntex_bytes::{ByteString, Bytes};
use tokio::sync::Notify;

use crate::codec::{QoS, SubOpts};
use crate::stats::Stats;

/// A message as published.
#[derive(Debug)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// The publishing session (for MQTT 5 no-local).
    pub origin: u64,
}

/// A message on its way to one subscriber, at the QoS it is delivered with.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub msg: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// QoS 1 sent, waiting for PUBACK.
    AwaitAck,
    /// QoS 2 sent, waiting for PUBREC.
    AwaitRec,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitComp,
}

#[derive(Debug, Clone)]
pub struct Outstanding {
    pub pid: NonZeroU16,
    pub delivery: Delivery,
    pub stage: Stage,
}

/// The connection a session is attached to.
#[derive(Debug, Clone)]
pub struct Link {
    pub conn: u64,
    /// Tells the connection to close (taken over, or the broker shuts down).
    pub kick: Arc<Notify>,
    /// How many QoS 1/2 the client takes unacknowledged.
    pub receive_max: u16,
}

#[derive(Debug, Default)]
pub struct State {
    pub link: Option<Link>,
    /// Seconds the session outlives its connection; `u32::MAX`: forever.
    pub expiry_secs: u32,
    /// Full filters (shared ones with their `$share/…` prefix) and options.
    pub subscriptions: Vec<(String, SubOpts)>,
    pub outbox: VecDeque<Delivery>,
    pub inflight: VecDeque<Outstanding>,
    pub next_pid: u16,
    pub incoming_qos2: Vec<NonZeroU16>,
    /// Bumped on every attach: timers (will delay, expiry) started before a resume see it.
    pub generation: u64,
    /// The session was removed from the registry.
    pub ended: bool,
}

pub struct Session {
    pub id: u64,
    pub client_id: ByteString,
    state: Mutex<State>,
    /// Something was queued for the attached connection.
    pub wake: Notify,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id).field("client_id", &self.client_id).finish()
    }
}

impl Session {
    pub fn new(id: u64, client_id: ByteString) -> Arc<Session> {
        Arc::new(Session { id, client_id, state: Mutex::new(State::default()), wake: Notify::new() })
    }

    #[cfg(test)]
    pub fn new_for_test(id: u64) -> Arc<Session> {
        Session::new(id, ByteString::from(format!("t{id}")))
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a delivery; false when it was dropped (and counted): QoS 0 for a session with no
    /// connection, or a full queue.
    pub fn enqueue(&self, d: Delivery, max_queue: usize, stats: &Stats) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let mut st = self.lock();
        if st.ended {
            return false;
        }
        if st.link.is_none() && d.qos == QoS::AtMostOnce {
            stats.dropped_offline_qos0.fetch_add(1, Relaxed);
            return false;
        }
        if st.outbox.len() >= max_queue {
            stats.dropped_queue_full.fetch_add(1, Relaxed);
            return false;
        }
        st.outbox.push_back(d);
        let attached = st.link.is_some();
        drop(st);
        if attached {
            self.wake.notify_one();
        }
        true
    }
}

impl State {
    /// A packet id not in flight.
    pub fn alloc_pid(&mut self) -> NonZeroU16 {
        loop {
            self.next_pid = if self.next_pid == u16::MAX { 1 } else { self.next_pid + 1 };
            let pid = NonZeroU16::new(self.next_pid).expect("never 0");
            if !self.inflight.iter().any(|o| o.pid == pid) {
                return pid;
            }
        }
    }
}
