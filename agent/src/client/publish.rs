//! The publishing side of a client: what its schedule says is due, within its window and the
//! agent's budget, and what a resumed session must send again.

use super::Client;
use crate::metrics::{Metric, Timing};
use crate::mqtt::codec::QoS;
use crate::mqtt::inflight::Token;
use crate::mqtt::state::Fault;
use crate::payload::Header;

impl Client {
    /// Publishes every message that is due, as far as the window and `room` (bytes) allow.
    /// Returns true when due messages were held back (window full, no room, the per-wake cap).
    pub(super) fn publish_due(&mut self, now: u64, room: u64) -> bool {
        if self.publish_fixed {
            return false;
        }
        let group = self.group.assignment.group;
        let Some(pacer) = self.pacer.as_mut() else { return false };
        if pacer.next_due_ns().is_none_or(|t| t > now) {
            return false;
        }
        let (Some(topic), Some(plan)) = (self.topic.as_ref(), self.group.payload.as_ref()) else {
            return false;
        };
        let qos = self.group.pub_qos;
        let retain = self.group.assignment.spec.publish.as_ref().is_some_and(|p| p.retain);
        let mut shard = self.shared.rec.shard(self.key);
        let mut sent = 0u64;
        // a packet's size: fixed header (≤ 5), topic (2 + len), packet id (2), payload
        let packet = 9 + topic.len() as u64 + plan.len as u64;
        let mut written = 0u64;
        // bounded per wake-up so one late client cannot starve its worker thread; within the
        // bytes reserved (the last message may pass them by less than its size)
        while sent < 1024 && written < room {
            if qos != QoS::AtMostOnce && self.conn.window_room() == 0 {
                break;
            }
            let Some((seq, intended_ns)) = pacer.take_due(now) else { break };
            let header =
                Header { run_tag: self.shared.run_tag, stream: self.stream, seq, intended_ns, sent_ns: now };
            match self.conn.publish(now, topic, qos, retain, Token { seq, intended_ns }, plan.len, |out| {
                plan.write(&header, out)
            }) {
                Ok(Ok(())) => {
                    sent += 1;
                    written += packet;
                    shard.record(group, Metric::Lag, Timing::Raw, now - intended_ns);
                }
                // cannot happen after the room check; the message stays unsent and due
                Ok(Err(_)) | Err(_) => break,
            }
        }
        match qos {
            QoS::AtMostOnce => shard.counters.published_qos0 += sent,
            QoS::AtLeastOnce => shard.counters.published_qos1 += sent,
            QoS::ExactlyOnce => shard.counters.published_qos2 += sent,
        }
        pacer.next_due_ns().is_some_and(|t| t <= now)
    }

    /// Resends open publishes on a resumed session, rebuilding each payload from its token.
    pub(super) fn resend(&mut self, now: u64) -> Result<(), Fault> {
        let (Some(topic), Some(plan)) = (self.topic.clone(), self.group.payload.as_ref()) else {
            return Ok(());
        };
        let retain = self.group.assignment.spec.publish.as_ref().is_some_and(|p| p.retain);
        let (run_tag, stream) = (self.shared.run_tag, self.stream);
        self.conn.resend_open(now, |slot, out| {
            let h = Header {
                run_tag,
                stream,
                seq: slot.token.seq,
                intended_ns: slot.token.intended_ns,
                sent_ns: slot.sent_ns,
            };
            plan.write(&h, out);
            Some((topic.clone(), retain, plan.len))
        })?;
        Ok(())
    }
}
