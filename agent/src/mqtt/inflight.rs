//! The outgoing window: every packet we sent that carries a packet id and awaits an answer
//! (PUBLISH QoS 1/2, SUBSCRIBE, UNSUBSCRIBE), in send order.
//!
//! Packet ids are handed out consecutively (1 … 65535, then 1 again), so the slot of an id is
//! found by its distance from the oldest slot: O(1) without a map. Answers usually come in
//! order; a slot answered out of order is marked done and freed when everything older is. The
//! window therefore counts from the oldest unanswered packet — conservative, never over the
//! limit, and the oldest slot is always at the front for the ack-timeout check.

use std::collections::VecDeque;
use std::num::NonZeroU16;

/// What the caller wants back when the answer arrives: for a publish, its sequence number and
/// intended send time; for a subscribe, anything it likes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Token {
    pub seq: u64,
    pub intended_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// QoS 1, waiting for PUBACK.
    AwaitPubAck,
    /// QoS 2, waiting for PUBREC.
    AwaitPubRec,
    /// QoS 2, PUBREL sent, waiting for PUBCOMP.
    AwaitPubComp,
    Subscribe,
    Unsubscribe,
}

#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub pid: NonZeroU16,
    pub kind: Kind,
    pub sent_ns: u64,
    pub token: Token,
    /// Counted once as an ack timeout already.
    pub overdue: bool,
    done: bool,
}

#[derive(Debug)]
pub struct Window {
    slots: VecDeque<Slot>,
    next_pid: u16,
}

fn next(pid: u16) -> u16 {
    if pid == u16::MAX { 1 } else { pid + 1 }
}

impl Window {
    pub fn new() -> Window {
        Window { slots: VecDeque::new(), next_pid: 1 }
    }

    /// Slots in use (answered-out-of-order slots included until everything older is answered).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Takes the next packet id into the window.
    pub fn push(&mut self, kind: Kind, sent_ns: u64, token: Token) -> NonZeroU16 {
        let pid = match self.slots.back() {
            Some(last) => next(last.pid.get()),
            None => self.next_pid,
        };
        let pid = NonZeroU16::new(pid).expect("pids start at 1");
        self.slots.push_back(Slot { pid, kind, sent_ns, token, overdue: false, done: false });
        self.next_pid = next(pid.get());
        pid
    }

    fn index_of(&self, pid: NonZeroU16) -> Option<usize> {
        let front = self.slots.front()?.pid.get() as i32;
        let i = (pid.get() as i32 - front).rem_euclid(u16::MAX as i32) as usize;
        (i < self.slots.len() && self.slots[i].pid == pid && !self.slots[i].done).then_some(i)
    }

    /// The open slot of `pid`, if it is in the window.
    pub fn get_mut(&mut self, pid: NonZeroU16) -> Option<&mut Slot> {
        let i = self.index_of(pid)?;
        Some(&mut self.slots[i])
    }

    /// Closes the slot of `pid` and returns it; `None` for an id not in the window (an answer
    /// to nothing we sent, or a duplicate answer).
    pub fn complete(&mut self, pid: NonZeroU16) -> Option<Slot> {
        let i = self.index_of(pid)?;
        self.slots[i].done = true;
        let slot = self.slots[i];
        while self.slots.front().is_some_and(|s| s.done) {
            self.slots.pop_front();
        }
        Some(slot)
    }

    /// The oldest open slot.
    pub fn oldest(&self) -> Option<&Slot> {
        self.slots.iter().find(|s| !s.done)
    }

    /// Open slots sent before `cutoff_ns` and not yet counted overdue: marks and counts them.
    pub fn mark_overdue(&mut self, cutoff_ns: u64) -> u32 {
        let mut n = 0;
        for s in self.slots.iter_mut() {
            if s.sent_ns > cutoff_ns {
                break; // send order: the rest are younger
            }
            if !s.done && !s.overdue {
                s.overdue = true;
                n += 1;
            }
        }
        n
    }

    /// The send time of the oldest open slot not yet counted overdue.
    pub fn oldest_unflagged_sent_ns(&self) -> Option<u64> {
        self.slots.iter().find(|s| !s.done && !s.overdue).map(|s| s.sent_ns)
    }

    /// Empties the window, returning the open slots (e.g. when the connection is lost).
    pub fn drain_open(&mut self) -> Vec<Slot> {
        self.slots.drain(..).filter(|s| !s.done).collect()
    }

    /// Open slots in send order, for resending on a resumed session.
    pub fn open_slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().filter(|s| !s.done)
    }
}

impl Default for Window {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pid(n: u16) -> NonZeroU16 {
        NonZeroU16::new(n).unwrap()
    }

    #[test]
    fn in_order_and_out_of_order_answers() {
        let mut w = Window::new();
        let a = w.push(Kind::AwaitPubAck, 10, Token { seq: 0, intended_ns: 1 });
        let b = w.push(Kind::AwaitPubAck, 11, Token { seq: 1, intended_ns: 2 });
        let c = w.push(Kind::AwaitPubAck, 12, Token { seq: 2, intended_ns: 3 });
        assert_eq!((a, b, c), (pid(1), pid(2), pid(3)));
        assert_eq!(w.complete(b).unwrap().token.seq, 1);
        assert_eq!(w.len(), 3, "a hole keeps its place until older slots close");
        assert!(w.complete(b).is_none(), "a duplicate answer matches nothing");
        assert_eq!(w.complete(a).unwrap().token.seq, 0);
        assert_eq!(w.len(), 1);
        assert_eq!(w.oldest().unwrap().pid, c);
        assert!(w.complete(pid(9)).is_none());
    }

    #[test]
    fn ids_wrap_without_zero() {
        let mut w = Window::new();
        w.next_pid = u16::MAX;
        let a = w.push(Kind::AwaitPubAck, 0, Token::default());
        let b = w.push(Kind::AwaitPubAck, 0, Token::default());
        assert_eq!((a.get(), b.get()), (u16::MAX, 1));
        assert!(w.complete(b).is_some());
        assert!(w.complete(a).is_some());
        assert!(w.is_empty());
    }

    #[test]
    fn overdue_slots_are_counted_once() {
        let mut w = Window::new();
        w.push(Kind::AwaitPubAck, 100, Token::default());
        w.push(Kind::AwaitPubAck, 200, Token::default());
        assert_eq!(w.mark_overdue(150), 1);
        assert_eq!(w.mark_overdue(150), 0);
        assert_eq!(w.oldest_unflagged_sent_ns(), Some(200));
        assert_eq!(w.mark_overdue(1_000), 1);
    }

    proptest! {
        /// Whatever order answers come in, every id is answered exactly once and the window
        /// ends empty; no two open slots ever share an id.
        #[test]
        fn any_answer_order_empties_the_window(n in 1usize..300, seed: u64, start in 1u16..=u16::MAX) {
            let mut w = Window::new();
            w.next_pid = start;
            let mut pids: Vec<_> = (0..n).map(|i| w.push(Kind::AwaitPubAck, i as u64, Token { seq: i as u64, intended_ns: 0 })).collect();
            let mut uniq = pids.clone();
            uniq.sort();
            uniq.dedup();
            prop_assert_eq!(uniq.len(), n);
            let mut rng = fastrand::Rng::with_seed(seed);
            rng.shuffle(&mut pids);
            for p in pids {
                prop_assert!(w.complete(p).is_some());
            }
            prop_assert!(w.is_empty());
        }
    }
}
