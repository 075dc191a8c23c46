//! What the clients of one group share: rendered templates, the payload, the rate, the
//! reconnect limiter, shared-subscription ledgers, and each publisher's final count.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use ntex_bytes::{BufMut, BytePages, Bytes};

use super::{MAX_INBOUND_PACKET, Shared};
use crate::metrics::ReceiverLedger;
use crate::metrics::shares::ShareReceipts;
use crate::mqtt::codec::{QoS, qos_from_u8};
use crate::mqtt::state::Options;
use crate::pacer::Rate;
use crate::payload::{HEADER_LEN, Header};
use squall_proto::plan::{GroupAssignment, PayloadSpec, RateSpec};
use squall_proto::template::{Template, Vars};

/// What the publish side of a group needs per message.
pub struct PayloadPlan {
    pub len: u32,
    pub measured: bool,
    /// Bytes after the header (filler or text), or the whole raw payload.
    pub body: Bytes,
}

impl PayloadPlan {
    pub fn from_spec(p: &PayloadSpec) -> PayloadPlan {
        match p {
            PayloadSpec::Size(n) => PayloadPlan {
                len: *n,
                measured: true,
                body: Bytes::from(vec![b'x'; (*n as usize).saturating_sub(HEADER_LEN)]),
            },
            PayloadSpec::Text(t) => PayloadPlan {
                len: (HEADER_LEN + t.len()) as u32,
                measured: true,
                body: Bytes::copy_from_slice(t.as_bytes()),
            },
            PayloadSpec::Raw(t) => PayloadPlan {
                len: t.len() as u32,
                measured: false,
                body: Bytes::copy_from_slice(t.as_bytes()),
            },
        }
    }

    #[inline]
    pub fn write(&self, h: &Header, out: &mut BytePages) {
        if self.measured {
            out.put_slice(&h.to_bytes());
        }
        out.put_slice(&self.body);
    }
}

/// A group's cap on reconnects per second, as slots handed out in order: each client asking
/// gets the next free slot (at least a spacing after the last one given) and sleeps until it,
/// once. (A check-and-retry limiter wakes every waiter for every slot: in a storm of 19,000
/// that herd of wake-ups took 1.6 cores and tripled the recovery the cap alone implies.)
pub(super) struct ReconnectSlots {
    spacing_ns: u64,
    next_ns: AtomicU64,
}

impl ReconnectSlots {
    fn new(per_sec: f64) -> ReconnectSlots {
        ReconnectSlots {
            spacing_ns: (1e9 / per_sec).min(u64::MAX as f64 / 2.0) as u64,
            next_ns: AtomicU64::new(0),
        }
    }

    /// The instant (ns, on the engine's clock) at which the caller may reconnect: `now` if
    /// the cap allows, else its place in the queue.
    pub(super) fn reserve(&self, now: u64) -> u64 {
        let mut next = self.next_ns.load(std::sync::atomic::Ordering::Relaxed);
        loop {
            let slot = next.max(now);
            match self.next_ns.compare_exchange_weak(
                next,
                slot.saturating_add(self.spacing_ns),
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            ) {
                Ok(_) => return slot,
                Err(n) => next = n,
            }
        }
    }
}

/// What the clients of one group share.
pub struct GroupRuntime {
    pub assignment: GroupAssignment,
    pub index: usize,
    pub(super) client_id: Template,
    pub(super) topic: Option<Template>,
    pub(super) filters: Vec<Template>,
    pub(super) will_topic: Option<Template>,
    pub(super) pub_qos: QoS,
    pub(super) sub_qos: QoS,
    pub(super) payload: Option<PayloadPlan>,
    pub(super) rate: Option<Rate>,
    pub(super) opts: Options,
    pub(super) reconnect_limiter: Option<ReconnectSlots>,
    /// Shared-subscription ledgers by the rendered filter list, when the whole group runs on
    /// this agent.
    pub shared: std::collections::HashMap<Vec<String>, Arc<Mutex<ReceiverLedger>>>,
    /// Shared subscriptions whose members are spread over agents: receipts for the controller
    /// to settle, by the rendered filter list.
    pub remote: std::collections::HashMap<Vec<String>, Arc<Mutex<ShareReceipts>>>,
    /// Final sent count of each of this agent's publishers, by local index.
    pub sent: Box<[AtomicU64]>,
    /// Publishes of each the broker refused with a reason code, by local index.
    pub refused: Box<[AtomicU64]>,
}

impl GroupRuntime {
    /// Builds the runtime of a validated group.
    pub fn new(a: GroupAssignment, index: usize, run_tag: u32, agent: u32) -> GroupRuntime {
        let s = &a.spec;
        let t = |x: &str| Template::parse(x).expect("validated");
        let reconnect_limiter = s.reconnect.enabled.then(|| {
            let share = (a.count as f64 / s.clients.max(1) as f64).max(1e-9);
            ReconnectSlots::new((s.reconnect.max_rate * share).max(0.001))
        });
        let filters: Vec<Template> =
            s.subscribe.iter().flat_map(|x| x.filters.iter()).map(|f| t(f)).collect();
        let mut shared = std::collections::HashMap::new();
        let mut remote = std::collections::HashMap::new();
        if let Some(sub) = &s.subscribe {
            let is_shared = sub.filters.iter().any(|f| f.starts_with("$share/"));
            // part of the group runs on other agents: its members there get messages of the
            // same share, so only the controller sees the whole
            let split = a.splits_a_share();
            if is_shared {
                for i in a.first..a.first + a.count {
                    let vars = Vars { group: &s.name, index: i, agent, run_tag };
                    let key: Vec<String> = filters.iter().map(|f| f.render(&vars)).collect();
                    if split {
                        remote
                            .entry(key.clone())
                            .or_insert_with(|| Arc::new(Mutex::new(ShareReceipts::new(a.group, key))));
                    } else {
                        shared.entry(key).or_insert_with(|| Arc::new(Mutex::new(ReceiverLedger::new())));
                    }
                }
            }
        }
        GroupRuntime {
            index,
            client_id: t(&s.client_id),
            topic: s.publish.as_ref().map(|p| t(&p.topic)),
            filters,
            will_topic: s.will.as_ref().map(|w| t(&w.topic)),
            pub_qos: s.publish.as_ref().and_then(|p| qos_from_u8(p.qos)).unwrap_or(QoS::AtMostOnce),
            sub_qos: s.subscribe.as_ref().and_then(|x| qos_from_u8(x.qos)).unwrap_or(QoS::AtMostOnce),
            payload: s.publish.as_ref().map(|p| PayloadPlan::from_spec(&p.payload)),
            rate: s.publish.as_ref().map(|p| match p.rate {
                RateSpec::IntervalMs(ms) => {
                    Rate::PerClientInterval { interval_ns: (ms * 1e6).round() as u64 }
                }
                RateSpec::GroupPerSec(r) => Rate::GroupTotal { per_sec: r, clients: s.clients },
            }),
            opts: Options {
                protocol: s.protocol,
                keepalive_secs: s.keepalive_secs,
                max_inflight: s.max_inflight,
                connect_timeout_ns: s.connect_timeout_ms * 1_000_000,
                ack_timeout_ns: s.ack_timeout_ms * 1_000_000,
                max_inbound_packet: MAX_INBOUND_PACKET,
            },
            reconnect_limiter,
            shared,
            remote,
            sent: (0..a.count).map(|_| AtomicU64::new(0)).collect(),
            refused: (0..a.count).map(|_| AtomicU64::new(0)).collect(),
            assignment: a,
        }
    }

    pub fn vars(&self, index: u32, sh: &Shared) -> Vars<'_> {
        Vars { group: &self.assignment.spec.name, index, agent: sh.agent, run_tag: sh.run_tag }
    }

    /// The group's publish topic for client `index`, if it publishes.
    pub fn topic_of(&self, index: u32, sh: &Shared) -> Option<String> {
        self.topic.as_ref().map(|t| t.render(&self.vars(index, sh)))
    }

    /// The rendered filters of client `index`.
    pub fn filters_of(&self, index: u32, sh: &Shared) -> Vec<String> {
        self.filters.iter().map(|f| f.render(&self.vars(index, sh))).collect()
    }

    pub fn publish_qos(&self) -> u8 {
        u8::from(self.pub_qos)
    }

    pub fn subscribe_qos(&self) -> u8 {
        u8::from(self.sub_qos)
    }

    pub(super) fn local_rate(&self, per_sec: f64) -> f64 {
        per_sec * self.assignment.count as f64 / self.assignment.spec.clients.max(1) as f64
    }

    /// When local client `local` makes its first attempt: the ramp spreads this agent's share
    /// of the group evenly at its share of the group's connect rate.
    pub(super) fn first_attempt_ns(&self, local: u32, start_ns: u64) -> u64 {
        let rate = self.local_rate(self.assignment.spec.connect_rate).max(1e-9);
        start_ns + (local as f64 / rate * 1e9) as u64
    }

    pub(super) fn disconnect_at_ns(&self, local: u32, at_ns: u64) -> u64 {
        let rate = self.local_rate(self.assignment.spec.disconnect_rate).max(1e-9);
        at_ns + (local as f64 / rate * 1e9) as u64
    }
}

#[cfg(test)]
mod slot_tests {
    use super::ReconnectSlots;

    #[test]
    fn slots_are_spaced_in_order_and_never_shared_across_threads() {
        let s = ReconnectSlots::new(1000.0); // 1 ms apart
        assert_eq!(s.reserve(5_000_000), 5_000_000, "free now: at once");
        assert_eq!(s.reserve(5_000_000), 6_000_000, "next in the queue");
        assert_eq!(s.reserve(50_000_000), 50_000_000, "an idle cap does not bank slots");
        let s = std::sync::Arc::new(ReconnectSlots::new(1e6));
        let got: Vec<u64> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || (0..10_000).map(|_| s.reserve(0)).collect::<Vec<u64>>())
            })
            .flat_map(|t| t.join().unwrap())
            .collect();
        let mut sorted = got.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 40_000, "each slot given once");
        assert_eq!(*sorted.last().unwrap(), 39_999 * 1_000, "one after another, 1 µs apart");
    }
}
