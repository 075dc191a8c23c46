//! Routing a published message: retained store, subscribers from the topic tree (each session
//! once, at the highest QoS of its matching subscriptions), QoS downgraded to what each
//! subscription asked for, into each session's bounded queue.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};

use crate::codec::QoS;
use crate::session::{Delivery, Message, Session};
use crate::stats::Stats;
use crate::topic::{Match, TopicTree, split_shared};

pub fn min_qos(a: QoS, b: QoS) -> QoS {
    if u8::from(a) <= u8::from(b) { a } else { b }
}

pub struct Router {
    pub tree: RwLock<TopicTree>,
    pub retained: Mutex<HashMap<String, Arc<Message>>>,
    pub max_queue: usize,
}

impl Router {
    pub fn new(max_queue: usize) -> Router {
        Router { tree: RwLock::new(TopicTree::default()), retained: Mutex::new(HashMap::new()), max_queue }
    }

    /// Routes `msg` to every subscriber; `scratch` is reused between calls. Returns how many
    /// sessions it was queued for.
    pub fn publish(&self, msg: Arc<Message>, stats: &Stats, scratch: &mut Vec<Match>) -> usize {
        if msg.retain {
            let mut r = self.retained.lock().unwrap_or_else(|e| e.into_inner());
            if msg.payload.is_empty() {
                if r.remove(&*msg.topic).is_some() {
                    stats.retained.fetch_sub(1, Relaxed);
                }
            } else if r.insert(msg.topic.to_string(), msg.clone()).is_none() {
                stats.retained.fetch_add(1, Relaxed);
            }
        }
        scratch.clear();
        self.tree.read().unwrap_or_else(|e| e.into_inner()).matches(&msg.topic, scratch);
        if scratch.len() > 1 {
            // one delivery per session: the highest QoS among its matching subscriptions
            scratch.sort_by_key(|m| m.session.id);
            scratch.dedup_by(|b, a| {
                if a.session.id == b.session.id {
                    if u8::from(b.opts.qos) > u8::from(a.opts.qos) {
                        a.opts.qos = b.opts.qos;
                    }
                    a.opts.retain_as_published |= b.opts.retain_as_published;
                    true
                } else {
                    false
                }
            });
        }
        let mut n = 0;
        for m in scratch.drain(..) {
            if m.opts.no_local && m.session.id == msg.origin {
                continue;
            }
            let d = Delivery {
                msg: msg.clone(),
                qos: min_qos(msg.qos, m.opts.qos),
                retain: msg.retain && m.opts.retain_as_published,
            };
            if m.session.enqueue(d, self.max_queue, stats) {
                n += 1;
            }
        }
        n
    }

    /// Queues the retained messages matching `filter` for a new subscription.
    pub fn send_retained(&self, session: &Arc<Session>, filter: &str, qos: QoS, stats: &Stats) {
        let (share, f) = split_shared(filter);
        if share.is_some() {
            return; // retained messages are not sent to shared subscriptions (MQTT 5 §4.8.2)
        }
        let matching: Vec<Arc<Message>> = {
            let r = self.retained.lock().unwrap_or_else(|e| e.into_inner());
            r.values().filter(|m| topic_matches(f, &m.topic)).cloned().collect()
        };
        for m in matching {
            let q = min_qos(m.qos, qos);
            session.enqueue(Delivery { msg: m, qos: q, retain: true }, self.max_queue, stats);
        }
    }
}

/// Filter matching for retained lookups (the tree does it for live traffic).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::SubOpts;
    use crate::topic::Sub;
    use ntex_bytes::{ByteString, Bytes};

    fn msg(topic: &str, qos: QoS, retain: bool, payload: &'static [u8]) -> Arc<Message> {
        Arc::new(Message {
            topic: ByteString::from(topic),
            payload: Bytes::from_static(payload),
            qos,
            retain,
            origin: 99,
        })
    }

    fn opts(qos: QoS) -> SubOpts {
        SubOpts { qos, no_local: false, retain_as_published: false, retain_handling: 0 }
    }

    fn attach(s: &Arc<Session>) {
        s.lock().link = Some(crate::session::Link { conn: 1, kick: Default::default(), receive_max: 10 });
    }

    #[test]
    fn downgrades_qos_and_delivers_once_per_session() {
        let r = Router::new(100);
        let stats = Stats::default();
        let s = Session::new_for_test(1);
        attach(&s);
        r.tree.write().unwrap().subscribe("a/+", Sub { session: s.clone(), opts: opts(QoS::AtMostOnce) });
        r.tree.write().unwrap().subscribe("a/#", Sub { session: s.clone(), opts: opts(QoS::AtLeastOnce) });
        let mut scratch = Vec::new();
        assert_eq!(r.publish(msg("a/b", QoS::ExactlyOnce, false, b"x"), &stats, &mut scratch), 1);
        let st = s.lock();
        assert_eq!(st.outbox.len(), 1, "overlapping subscriptions deliver once");
        assert_eq!(st.outbox[0].qos, QoS::AtLeastOnce, "the highest granted, below the published QoS");
    }

    #[test]
    fn retained_set_cleared_and_sent_on_subscribe() {
        let r = Router::new(100);
        let stats = Stats::default();
        let mut scratch = Vec::new();
        r.publish(msg("r/1", QoS::AtLeastOnce, true, b"v1"), &stats, &mut scratch);
        r.publish(msg("r/2", QoS::AtMostOnce, true, b"v2"), &stats, &mut scratch);
        r.publish(msg("r/2", QoS::AtMostOnce, true, b""), &stats, &mut scratch);
        assert_eq!(stats.snapshot().retained, 1);
        let s = Session::new_for_test(2);
        attach(&s);
        r.send_retained(&s, "r/#", QoS::ExactlyOnce, &stats);
        let st = s.lock();
        assert_eq!(st.outbox.len(), 1);
        assert_eq!(&st.outbox[0].msg.payload[..], b"v1");
        assert!(st.outbox[0].retain);
    }

    #[test]
    fn queues_are_bounded_and_drops_counted() {
        let r = Router::new(2);
        let stats = Stats::default();
        let s = Session::new_for_test(3);
        attach(&s);
        r.tree.write().unwrap().subscribe("q", Sub { session: s.clone(), opts: opts(QoS::AtLeastOnce) });
        let mut scratch = Vec::new();
        for _ in 0..5 {
            r.publish(msg("q", QoS::AtLeastOnce, false, b"x"), &stats, &mut scratch);
        }
        assert_eq!(s.lock().outbox.len(), 2);
        assert_eq!(stats.snapshot().dropped_queue_full, 3);
        // offline: QoS 0 is not queued, and that is counted too
        s.lock().link = None;
        r.publish(msg("q", QoS::AtMostOnce, false, b"x"), &stats, &mut scratch);
        assert_eq!(stats.snapshot().dropped_offline_qos0, 1);
    }
}
