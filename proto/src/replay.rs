//! Exactly-once delivery of link messages across a broken connection.
//!
//! Each side numbers the messages that must arrive ([`Outbox::stamp`]), keeps them until the
//! other side acknowledges them ([`Outbox::ack`]), and after a reconnect sends again the ones
//! the other side did not get ([`Outbox::resume`]). The receiver takes each number once, in
//! order ([`Inbox::accept`]): a replayed message it already has is dropped, a gap is an error
//! (the transport is ordered, so a gap means a broken or hostile peer).

use std::collections::VecDeque;

use crate::wire::pb;

/// A message that carries a sequence number.
pub trait Sequenced: Clone {
    fn seq(&self) -> u64;
    fn set_seq(&mut self, seq: u64);
}

impl Sequenced for pb::AgentMessage {
    fn seq(&self) -> u64 {
        self.seq
    }
    fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }
}

impl Sequenced for pb::ControllerMessage {
    fn seq(&self) -> u64 {
        self.seq
    }
    fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }
}

/// More messages unacknowledged than the outbox holds: the peer stopped acknowledging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} messages sent and not acknowledged: the other side stopped acknowledging")]
pub struct Full(pub usize);

/// Messages sent and not yet acknowledged.
#[derive(Debug)]
pub struct Outbox<M> {
    next: u64,
    unacked: VecDeque<M>,
    limit: usize,
}

impl<M: Sequenced> Outbox<M> {
    /// Holds at most `limit` unacknowledged messages.
    pub fn new(limit: usize) -> Self {
        Outbox { next: 1, unacked: VecDeque::new(), limit }
    }

    /// Numbers `m` and keeps a copy until it is acknowledged; returns it to send.
    pub fn stamp(&mut self, mut m: M) -> Result<M, Full> {
        if self.unacked.len() >= self.limit {
            return Err(Full(self.unacked.len()));
        }
        m.set_seq(self.next);
        self.next += 1;
        self.unacked.push_back(m.clone());
        Ok(m)
    }

    /// The other side has every message up to `seq`: forget them. (A number never sent is
    /// taken as "all".)
    pub fn ack(&mut self, seq: u64) {
        while self.unacked.front().is_some_and(|m| m.seq() <= seq) {
            self.unacked.pop_front();
        }
    }

    /// After a reconnect: the other side has every message up to `received`; forgets those and
    /// gives the rest, to send again.
    pub fn resume(&mut self, received: u64) -> impl Iterator<Item = &M> {
        self.ack(received);
        self.unacked.iter()
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.unacked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.unacked.is_empty()
    }
}

/// A message number that skips ahead of what was received: messages went missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("message {got} arrived after {received}: {} went missing", got - received - 1)]
pub struct Gap {
    pub received: u64,
    pub got: u64,
}

/// What a side has received.
#[derive(Debug, Default, Clone, Copy)]
pub struct Inbox {
    received: u64,
}

impl Inbox {
    /// Whether to take a message numbered `seq`: true for the next one (and for unnumbered
    /// ones, seq 0), false for one already taken (replayed), a [`Gap`] if it skips ahead.
    pub fn accept(&mut self, seq: u64) -> Result<bool, Gap> {
        match seq {
            0 => Ok(true),
            s if s <= self.received => Ok(false),
            s if s == self.received + 1 => {
                self.received = s;
                Ok(true)
            }
            got => Err(Gap { received: self.received, got }),
        }
    }

    /// The last message number taken.
    pub fn received(&self) -> u64 {
        self.received
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(i: u32) -> pb::AgentMessage {
        pb::AgentMessage {
            body: Some(pb::agent_message::Body::Event(pb::Event {
                body: Some(pb::event::Body::Ready(pb::Ready { clients: i as u64, connected: 0 })),
            })),
            seq: 0,
        }
    }

    fn payload(m: &pb::AgentMessage) -> u64 {
        match &m.body {
            Some(pb::agent_message::Body::Event(pb::Event { body: Some(pb::event::Body::Ready(r)) })) => {
                r.clients
            }
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_full_outbox_refuses_and_acks_make_room() {
        let mut o = Outbox::new(2);
        o.stamp(msg(0)).unwrap();
        o.stamp(msg(1)).unwrap();
        assert_eq!(o.stamp(msg(2)), Err(Full(2)));
        o.ack(1);
        assert_eq!(o.stamp(msg(2)).unwrap().seq, 3);
        assert_eq!(o.resume(0).map(|m| m.seq).collect::<Vec<_>>(), [2, 3]);
        o.ack(u64::MAX);
        assert!(o.is_empty());
    }

    #[test]
    fn a_gap_is_an_error_and_a_replay_is_dropped() {
        let mut i = Inbox::default();
        assert_eq!(i.accept(1), Ok(true));
        assert_eq!(i.accept(1), Ok(false));
        assert_eq!(i.accept(0), Ok(true));
        assert_eq!(i.accept(3), Err(Gap { received: 1, got: 3 }));
        assert_eq!(i.received(), 1);
    }

    proptest! {
        /// However the connection breaks (a prefix of what was sent arrives, acks lag behind),
        /// replaying after what the receiver says it has delivers every message exactly once,
        /// in order.
        #[test]
        fn every_message_arrives_once_in_order_across_breaks(
            n in 1u32..200,
            // per connection: how many messages are sent on it, how many of those arrive, and
            // how many of the arrivals were acknowledged before it broke
            breaks in proptest::collection::vec((0usize..50, 0usize..50, 0usize..50), 0..8),
        ) {
            let mut out = Outbox::new(usize::MAX);
            let mut inbox = Inbox::default();
            let mut got = Vec::new();
            let mut next = 0u32;
            for (sent, arrive, acked) in breaks.into_iter().chain([(usize::MAX, usize::MAX, usize::MAX)]) {
                // a new connection: replay what the receiver lacks, then new messages
                let mut wire: Vec<pb::AgentMessage> = out.resume(inbox.received()).cloned().collect();
                while next < n && wire.len() < sent {
                    wire.push(out.stamp(msg(next)).unwrap());
                    next += 1;
                }
                let mut acked_seq = None;
                for (k, m) in wire.into_iter().take(arrive).enumerate() {
                    if inbox.accept(m.seq).unwrap() {
                        got.push(payload(&m));
                    }
                    if k < acked {
                        acked_seq = Some(inbox.received());
                    }
                }
                if let Some(s) = acked_seq {
                    out.ack(s);
                }
            }
            prop_assert_eq!(got, (0..n as u64).collect::<Vec<_>>());
        }
    }
}
