//! The delay line: packets held back by an injected delay, released on time.
//!
//! tokio's timer ticks once a millisecond, which would add up to 1 ms to every injected delay
//! — too coarse for truth tests that check squall's latency against a known delay. This one
//! thread sleeps until shortly before a packet is due and spins the rest (sleeps on a VM wake
//! 100 µs and more late; the margin is learned), then hands the packet back to its
//! connection's mailbox; the connection task writes it at once (a cross-thread wake-up, ~45 µs
//! here).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ntex_bytes::Bytes;
use tokio::sync::Notify;

use crate::timeline::Kind;

/// A held packet: its connection's token for it, its bytes, and what it is (for the timeline).
pub type Held = (u64, Bytes, Kind, Option<u16>);

/// Where released packets go: one per connection.
#[derive(Debug, Default)]
pub struct Mailbox {
    pub ready: Mutex<Vec<Held>>,
    pub notify: Notify,
}

struct Entry {
    due: Instant,
    seq: u64,
    mailbox: Arc<Mailbox>,
    held: Held,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

#[derive(Default)]
struct State {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
    stop: bool,
}

pub struct DelayLine {
    state: Arc<(Mutex<State>, Condvar)>,
}

impl DelayLine {
    pub fn start() -> DelayLine {
        let state: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let s = state.clone();
        std::thread::Builder::new()
            .name("squall-broker-delay".into())
            .spawn(move || run(&s))
            .expect("the delay thread starts");
        DelayLine { state }
    }

    /// Releases `bytes` into `mailbox` at `due`.
    pub fn hold(&self, due: Instant, mailbox: Arc<Mailbox>, held: Held) {
        let (m, cv) = &*self.state;
        let mut s = m.lock().unwrap_or_else(|e| e.into_inner());
        s.seq += 1;
        let seq = s.seq;
        s.heap.push(Reverse(Entry { due, seq, mailbox, held }));
        cv.notify_one();
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        let (m, cv) = &*self.state;
        m.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        cv.notify_one();
    }
}

/// How early to stop sleeping and start spinning: learned from how late sleeps wake up here
/// (on a VM, 100 µs and more), within bounds.
struct Oversleep {
    ewma_ns: f64,
}

impl Oversleep {
    const MIN_NS: f64 = 20_000.0;
    const MAX_NS: f64 = 2_000_000.0;

    fn margin(&self) -> Duration {
        // twice the typical oversleep: most wake-ups land before the due time
        Duration::from_nanos((self.ewma_ns * 2.0).clamp(Self::MIN_NS, Self::MAX_NS) as u64)
    }

    fn observe(&mut self, late: Duration) {
        self.ewma_ns = 0.9 * self.ewma_ns + 0.1 * late.as_nanos() as f64;
    }
}

fn run(state: &(Mutex<State>, Condvar)) {
    // the kernel's default 50 µs timer slack would add to every delay
    // SAFETY: prctl with PR_SET_TIMERSLACK only changes this thread's timer slack
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
    let mut oversleep = Oversleep { ewma_ns: 100_000.0 };
    let (m, cv) = state;
    let mut s = m.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if s.stop {
            return;
        }
        let now = Instant::now();
        while s.heap.peek().is_some_and(|Reverse(e)| e.due <= now) {
            let Reverse(e) = s.heap.pop().expect("peeked");
            e.mailbox.ready.lock().unwrap_or_else(|e| e.into_inner()).push(e.held);
            e.mailbox.notify.notify_one();
        }
        let Some(due) = s.heap.peek().map(|Reverse(e)| e.due) else {
            s = cv.wait_timeout(s, Duration::from_secs(3600)).unwrap_or_else(|e| e.into_inner()).0;
            continue;
        };
        let wake_at = due.checked_sub(oversleep.margin()).unwrap_or(due);
        if wake_at > now {
            // sleep most of the way (a new, earlier packet wakes us through the condvar)
            let asked = wake_at - now;
            s = cv.wait_timeout(s, asked).unwrap_or_else(|e| e.into_inner()).0;
            let woke = Instant::now();
            if woke > wake_at {
                oversleep.observe(woke - wake_at);
            }
        } else {
            // the last stretch: spin, without the lock, so new packets can still be held
            drop(s);
            while Instant::now() < due {
                std::hint::spin_loop();
            }
            s = m.lock().unwrap_or_else(|e| e.into_inner());
        }
    }
}
