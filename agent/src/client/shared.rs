//! What every client of an engine shares: the run's phase, the countdowns the engine waits on,
//! the agent's budget of unsent bytes, and the rest of [`Shared`].

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{Notify, watch};

use super::window::ConnectWindow;
use super::{Outages, Storms};
use crate::lanes::Lanes;
use crate::metrics::Recorder;
use crate::mqtt::transport::Endpoint;
use squall_proto::clock::Clock;
use squall_proto::plan::PublishRange;

/// Where the run is; every client watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connecting and subscribing; nothing is published.
    Ramp,
    /// Publishers send on schedule within `[start, until)`; in a staged run, only within the
    /// first `stages` of [`Shared::stages`] (a new stage is a new phase, so every client
    /// hears of it).
    Publish { start_ns: u64, until_ns: u64, stages: u32 },
    /// Disconnect: client `j` of a group's share leaves at `at_ns + j / disconnect_rate`.
    Finish { at_ns: u64 },
    /// Stop now (the controller is gone, or the run hit its limit).
    Abort,
}

/// Counts down to zero and wakes whoever waits for it.
#[derive(Debug, Default)]
pub struct Countdown {
    left: AtomicUsize,
    notify: Notify,
}

impl Countdown {
    pub fn new(n: usize) -> Countdown {
        Countdown { left: AtomicUsize::new(n), notify: Notify::new() }
    }

    pub fn done(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.notify.notify_one();
        }
    }

    pub fn left(&self) -> usize {
        self.left.load(Ordering::Acquire)
    }

    pub async fn wait(&self) {
        while self.left() > 0 {
            self.notify.notified().await;
        }
    }
}

/// What every client of an agent shares.
pub struct Shared {
    pub clock: Clock,
    pub rec: Arc<Recorder>,
    pub endpoints: Vec<Endpoint>,
    pub sources: Vec<IpAddr>,
    pub run_tag: u32,
    pub agent: u32,
    pub phase: watch::Receiver<Phase>,
    /// Clients whose first connection attempt has not finished yet.
    pub ready: Countdown,
    /// Publishers that have not yet fixed their final sent count.
    pub publishers: Countdown,
    /// When ramp-up started (connect schedules count from here), ns.
    pub start_ns: u64,
    /// Slots for handshakes in flight.
    pub connecting: Arc<ConnectWindow>,
    /// The engine's threads, each with its timer (tokio's own is 1 ms coarse); a client runs
    /// on the lane of its key.
    pub lanes: Lanes,
    /// The window a busy connection lets data gather in before it reads, ns (0: none).
    pub read_coalesce_ns: u64,
    /// Bytes written by clients and not yet taken by the kernel, against the agent's budget.
    pub unsent: Unsent,
    /// Every publishing group of the run by stream: e2e latency is the publisher's group's.
    pub publish_ranges: Vec<PublishRange>,
    /// The storms (event firings) this agent's clients were taken by, and their way back.
    pub storms: Storms,
    /// Connections lost without the scenario asking, and the way back.
    pub outages: Outages,
    /// The run is staged: publishers publish only within [`Shared::stages`].
    pub staged: bool,
    /// The stages known so far, in order (checked on arrival).
    pub stages: std::sync::Mutex<Vec<squall_proto::link::StageCommand>>,
}

/// The agent's unsent bytes: one budget for all its clients, so a stalled broker cannot make
/// 100,000 clients hold 256 KiB each.
///
/// A client whose message comes due while the budget is full of other clients' bytes waits for
/// room ([`Unsent::wait_for_room`]) rather than looking again on a timer: with 100,000 clients
/// behind a stalled broker, looking every millisecond would be 100 million wake-ups a second.
/// Room handed back wakes one waiter; a woken waiter first wakes the next if room is left
/// ([`Unsent::pass_on`]), so room reaches every waiter in turn, whatever each does with it,
/// without waking them all for each byte freed.
#[derive(Debug)]
pub struct Unsent {
    bytes: AtomicU64,
    budget: u64,
    /// Clients waiting for room.
    waiting: Arc<AtomicUsize>,
    freed: Arc<Notify>,
}

impl Unsent {
    pub fn new(budget: u64) -> Unsent {
        Unsent { bytes: AtomicU64::new(0), budget, waiting: Arc::default(), freed: Arc::default() }
    }

    pub(super) fn add(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn sub(&self, n: u64) {
        // SeqCst against `wait_for_room`: either the waiter sees the room, or this sees the waiter
        self.bytes.fetch_sub(n, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.freed.notify_one();
        }
    }

    /// Room left in the budget, bytes.
    pub fn room(&self) -> u64 {
        self.budget.saturating_sub(self.bytes.load(Ordering::SeqCst))
    }

    /// Takes up to `want` bytes of the room (all clients reserve before they write, so the
    /// budget holds however many threads write at once). Returns what was granted.
    pub(super) fn reserve(&self, want: u64) -> u64 {
        let mut cur = self.bytes.load(Ordering::Relaxed);
        loop {
            let grant = want.min(self.budget.saturating_sub(cur));
            if grant == 0 {
                return 0;
            }
            match self.bytes.compare_exchange_weak(cur, cur + grant, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return grant,
                Err(now) => cur = now,
            }
        }
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// A wait for room, ready once some is handed back; `None` if there is room already.
    /// The wait is registered before the room is looked at, so room freed in between is not
    /// missed.
    pub(super) fn wait_for_room(&self) -> Option<RoomWait> {
        let mut notified = Box::pin(self.freed.clone().notified_owned());
        notified.as_mut().enable();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let wait = RoomWait { waiting: self.waiting.clone(), notified };
        (self.room() == 0).then_some(wait)
    }

    /// Wakes the next waiter if room is left for it. A waiter whose wait ended calls this
    /// before anything else, so a wake-up is never lost with a client that, once woken, takes
    /// nothing (its connection gone, its window closed).
    pub(super) fn pass_on(&self) {
        if self.room() > 0 && self.waiting.load(Ordering::SeqCst) > 0 {
            self.freed.notify_one();
        }
    }
}

/// A client's wait for room in [`Unsent`]'s budget; once it ends, the client calls
/// [`Unsent::pass_on`] (counted among the waiters until dropped).
pub(super) struct RoomWait {
    waiting: Arc<AtomicUsize>,
    notified: std::pin::Pin<Box<tokio::sync::futures::OwnedNotified>>,
}

impl Future for RoomWait {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.notified.as_mut().poll(cx)
    }
}

impl Drop for RoomWait {
    fn drop(&mut self) {
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_never_pass_the_budget_however_many_threads_take() {
        let unsent = Arc::new(Unsent::new(1 << 20));
        let peak = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (unsent, peak) = (unsent.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        let got = unsent.reserve(64 << 10);
                        peak.fetch_max(unsent.held(), Ordering::Relaxed);
                        unsent.sub(got);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::Relaxed) <= 1 << 20);
        assert_eq!(unsent.held(), 0, "every reservation given back");
        assert_eq!(unsent.reserve(u64::MAX), 1 << 20, "a grant is at most the room");
    }

    /// Room handed back reaches every waiter, one after another, without a timer, even past
    /// one that takes nothing once woken; and a wait begun with room free ends at once.
    #[tokio::test(flavor = "current_thread")]
    async fn waiters_for_room_are_woken_by_room_handed_back() {
        let unsent = Arc::new(Unsent::new(1000));
        assert_eq!(unsent.reserve(1000), 1000);
        let waiters: Vec<_> = (0..4)
            .map(|k| {
                let unsent = unsent.clone();
                let wait = unsent.wait_for_room().expect("the budget is full");
                tokio::spawn(async move {
                    wait.await;
                    unsent.pass_on();
                    // the first one woken takes nothing; each other takes 100 and keeps it
                    if k > 0 {
                        assert_eq!(unsent.reserve(100), 100);
                    }
                })
            })
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(unsent.waiting.load(Ordering::SeqCst), 4);
        unsent.sub(300);
        for w in waiters {
            tokio::time::timeout(std::time::Duration::from_secs(10), w)
                .await
                .expect("every waiter woke")
                .unwrap();
        }
        assert_eq!(unsent.waiting.load(Ordering::SeqCst), 0, "a wait that ended is no longer counted");
        assert_eq!(unsent.room(), 0, "the three took what was handed back");
        unsent.sub(1);
        assert!(unsent.wait_for_room().is_none(), "room is free: no wait");
        assert_eq!(unsent.waiting.load(Ordering::SeqCst), 0);
    }
}
