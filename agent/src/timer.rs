//! Wake-ups on time, to the microsecond, for the schedule's sake.
//!
//! Every corrected latency starts at a message's intended time, so whatever the tester adds
//! between that time and the send lands in the figures people compare. tokio's timer wheel has
//! a 1 ms grid and computes the reactor's wait from the floored current tick, so a
//! `sleep_until` wakes up to a tick late: lag p50 ~1 ms, p99 ~2 ms, the same on every broker.
//!
//! Here one `timerfd` per engine is armed at the earliest deadline, at an absolute
//! `CLOCK_MONOTONIC` time, and registered with the runtime's reactor; when it fires, a driver
//! task wakes every sleeper whose deadline passed and re-arms it at the next. Sleepers live in a
//! slab and their deadlines in a heap keyed by a generation, so a re-armed sleeper leaves a
//! stale entry that is skipped (and swept when stale entries outnumber live ones). One fd for
//! all the clients of a lane: the fd budget is the sockets'.
//!
//! A fire reaches the driver a wake-up's latency after the fd's time (~40 µs, and steady, on
//! the VM of BENCHMARKS.md), so the driver learns that latency (smoothed over the last fires)
//! and sets the fd that much early; it then wakes only the sleepers whose deadline has passed,
//! waiting out the rest by yielding. At 1,000 clients × 10 msg/s that took lag p50 from 39 to
//! 9 µs at no measurable CPU.
//!
//! Nothing here moves the schedule: a sleeper woken late is still owed what fell due, and a
//! stalled engine still shows as lag and in corrected latency.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::task::AbortHandle;

/// A deadline further out than any run may last: kept out of the heap.
const NEVER_NS: u64 = 40 * 86_400 * 1_000_000_000;

/// The engine's timer: one fd, one driver task, any number of [`Sleep`]s.
pub struct Timers {
    inner: Arc<Inner>,
    driver: AbortHandle,
}

struct Inner {
    fd: AsyncFd<OwnedFd>,
    /// `CLOCK_MONOTONIC` (what `Instant` reads on Linux) at `base`, ns.
    base: Instant,
    base_mono_ns: u64,
    /// The fd fires at most once per this many ns (deadlines closer than that share a wake).
    min_gap_ns: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// (deadline ns since base, slot, generation)
    heap: BinaryHeap<Reverse<(u64, usize, u64)>>,
    slots: Slab<Slot>,
    /// What the fd is armed for (ns since base), `u64::MAX` when not armed.
    armed: u64,
    /// When the fd is set to fire (`armed` less the lead), `u64::MAX` when not armed.
    fd_at: u64,
    /// How late the driver runs after the fd's time, smoothed (ns): the fd is set this much
    /// before a deadline, so the wake-up lands on it rather than a wake-up's latency after.
    lead: u64,
    /// Generations are unique across slots, so a reused key never matches an old entry.
    generations: u64,
    /// When the fd last fired (ns since base).
    last_fire: u64,
    /// Rounds of the driver that woke sleepers.
    fires: u64,
}

struct Slot {
    generation: u64,
    /// Shared with its [`Sleep`], so a poll can see it fired without the lock.
    fired: Arc<AtomicBool>,
    waker: Option<Waker>,
}

impl Timers {
    /// Creates the fd and starts the driver on the current runtime. `min_gap` bounds how
    /// often it fires: deadlines closer together than that share one wake-up.
    pub fn new(min_gap: std::time::Duration) -> io::Result<Timers> {
        // SAFETY: plain syscall; the fd is owned from here on
        let fd =
            unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nobody else owns
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let base = Instant::now();
        let base_mono_ns = monotonic_ns();
        let inner = Arc::new(Inner {
            // SAFETY: the fd is owned by the AsyncFd, never replaced or closed while registered
            fd: unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)? },
            base,
            base_mono_ns,
            min_gap_ns: min_gap.as_nanos() as u64,
            state: Mutex::new(State { armed: u64::MAX, fd_at: u64::MAX, ..State::default() }),
        });
        let driver = tokio::spawn(drive(inner.clone())).abort_handle();
        Ok(Timers { inner, driver })
    }

    /// A sleeper with no deadline yet.
    pub fn sleep(&self) -> Sleep {
        let fired = Arc::new(AtomicBool::new(false));
        let key = self.inner.lock().slots.insert(Slot { generation: 0, fired: fired.clone(), waker: None });
        Sleep { inner: self.inner.clone(), key, fired, registered: None }
    }

    /// Sleepers alive and heap entries (live and stale), for tests.
    pub fn sizes(&self) -> (usize, usize) {
        let s = self.inner.lock();
        (s.slots.len(), s.heap.len())
    }

    /// How many rounds of the driver woke sleepers.
    pub fn fires(&self) -> u64 {
        self.inner.lock().fires
    }

    /// How early the fd is set before a deadline: the wake-up latency it learned.
    pub fn lead(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.inner.lock().lead)
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn since_base(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_nanos().min(u64::MAX as u128) as u64
    }

    /// Arms the fd at `deadline` (ns since base), absolute, so no time passes between reading
    /// the clock and arming.
    fn arm(&self, state: &mut State, deadline: u64) {
        let deadline = deadline.max(state.last_fire.saturating_add(self.min_gap_ns)).max(1);
        if deadline >= state.armed {
            return;
        }
        // Early by the usual wake-up latency, so the driver runs at the deadline rather than a
        // latency after it; a sleeper is still woken only once its deadline passed. Only where
        // the early time is a spin window ahead: nearer deadlines (a busy lane) are set as they
        // are, so they share one wake-up more often instead of costing one each, and a time
        // already past cannot make the driver go round through the fd. Never with coalescing:
        // that asks for fewer wake-ups, not earlier ones.
        let early = deadline.saturating_sub(state.lead);
        let fd_at = if self.min_gap_ns == 0
            && state.lead > 0
            && early >= self.since_base(Instant::now()).saturating_add(SPIN_NS)
        {
            early
        } else {
            deadline
        };
        let t = self.base_mono_ns.saturating_add(fd_at);
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: (t / 1_000_000_000) as libc::time_t,
                tv_nsec: (t % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: a valid fd and spec; a failure leaves it unarmed and is reported below
        let r = unsafe {
            libc::timerfd_settime(self.fd.as_raw_fd(), libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut())
        };
        if r == 0 {
            state.armed = deadline;
            state.fd_at = fd_at;
        } else {
            // cannot happen with a valid fd and a normalized time; were it to, sleepers would
            // wait for the next arming: say so rather than stall silently
            tracing::error!(error = %io::Error::last_os_error(), "Cannot arm the engine's timer");
        }
    }
}

/// A deadline this close after a round is waited for by yielding, not by arming the fd.
///
/// Arming costs a `timerfd_settime` (a reprogrammed hardware timer: a VM exit on a hypervisor)
/// and the fire an `epoll_wait` wake-up, ~20 µs of CPU together on the 2-vCPU VM of
/// BENCHMARKS.md. When deadlines are denser than that (5,000 clients × 10 msg/s on one lane
/// are 20 µs apart) the runtime is busy anyway, and a yield hands the lane to the clients, so
/// the next round comes after them at the cost of one reactor poll. Never with coalescing asked for
/// (`min_gap`): that is a request for fewer wake-ups, not earlier ones.
const SPIN_NS: u64 = 20_000;

/// The most the fd is set early: a driver held up longer than this (a busy lane) is late, not
/// a reason to fire ever earlier and spin.
const MAX_LEAD_NS: u64 = 100_000;

/// Wakes every sleeper whose deadline passed, each time the fd fires (or, while deadlines
/// follow closer than [`SPIN_NS`], each time the driver comes round again).
async fn drive(inner: Arc<Inner>) {
    let mut due: Vec<Waker> = Vec::new();
    let mut spinning = false;
    loop {
        if spinning {
            tokio::task::yield_now().await;
        } else {
            let Ok(mut guard) = inner.fd.readable().await else { return };
            // No read(): arming again resets the expiry count, and every expiry is a new edge
            // for the reactor (a syscall per wake saved). Cleared before the clock is read, so
            // an expiry after this point wakes the driver again.
            guard.clear_ready();
        }
        let now = inner.since_base(Instant::now());
        {
            let mut s = inner.lock();
            if !spinning && s.fd_at != u64::MAX && inner.min_gap_ns == 0 {
                // the wake-up's latency, smoothed over the last ~8 fires
                let late = now.saturating_sub(s.fd_at).min(MAX_LEAD_NS) as i64;
                let lead = s.lead as i64;
                s.lead = (lead + (late - lead) / 8).clamp(0, MAX_LEAD_NS as i64) as u64;
            }
            let State { heap, slots, .. } = &mut *s;
            while let Some(&Reverse((deadline, key, generation))) = heap.peek() {
                if deadline > now {
                    break;
                }
                heap.pop();
                if let Some(slot) = slots.get_mut(key)
                    && slot.generation == generation
                {
                    slot.fired.store(true, Ordering::Release);
                    due.extend(slot.waker.take());
                }
            }
            s.armed = u64::MAX;
            s.fd_at = u64::MAX;
            s.last_fire = now;
            if !due.is_empty() {
                s.fires += 1;
            }
            spinning = false;
            if let Some(&Reverse((next, _, _))) = s.heap.peek() {
                if inner.min_gap_ns == 0 && next <= now.saturating_add(SPIN_NS) {
                    // a reset arms nothing while the driver comes round anyway
                    spinning = true;
                    s.armed = 0;
                } else {
                    inner.arm(&mut s, next);
                }
            }
        }
        for w in due.drain(..) {
            w.wake();
        }
    }
}

/// One sleeper: a deadline that can be moved, awaited any number of times.
pub struct Sleep {
    inner: Arc<Inner>,
    key: usize,
    fired: Arc<AtomicBool>,
    /// The waker its slot holds, as far as this side knows: while the task's waker is the
    /// same, a poll that finds the deadline still ahead needs no lock (the poll of every pass
    /// of a client's loop).
    registered: Option<Waker>,
}

impl Sleep {
    /// Sets the deadline (a past one is elapsed at once).
    pub fn reset(&mut self, at: Instant) {
        let inner = &*self.inner;
        let deadline = inner.since_base(at);
        let now = inner.since_base(Instant::now());
        let mut s = inner.lock();
        s.generations += 1;
        let generation = s.generations;
        let slot = &mut s.slots[self.key];
        slot.generation = generation;
        let fired = deadline <= now;
        slot.fired.store(fired, Ordering::Release);
        if slot.waker.is_none() {
            // taken by the driver when it last fired
            self.registered = None;
        }
        if fired || deadline >= now.saturating_add(NEVER_NS) {
            return;
        }
        s.heap.push(Reverse((deadline, self.key, generation)));
        inner.arm(&mut s, deadline);
        if s.heap.len() > 1024 + 2 * s.slots.len() {
            sweep(&mut s);
        }
    }

    /// Whether the deadline passed (and was seen to).
    pub fn is_elapsed(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }
}

/// Drops heap entries of re-armed sleepers.
fn sweep(s: &mut State) {
    let State { heap, slots, .. } = s;
    let live: Vec<_> = std::mem::take(heap)
        .into_iter()
        .filter(|Reverse((_, key, generation))| slots.get(*key).is_some_and(|x| x.generation == *generation))
        .collect();
    *heap = BinaryHeap::from(live);
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // like tokio's own timers, take part in the task budget: a loop that keeps finding its
        // timer ready still yields to the rest of the runtime now and then
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        let this = self.get_mut();
        if this.fired.load(Ordering::Acquire) {
            coop.made_progress();
            return Poll::Ready(());
        }
        if this.registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            // the driver sets `fired` before it takes the waker, and wakes after: nothing lost
            return Poll::Pending;
        }
        let mut s = this.inner.lock();
        let slot = &mut s.slots[this.key];
        if slot.fired.load(Ordering::Acquire) {
            coop.made_progress();
            return Poll::Ready(());
        }
        slot.waker = Some(cx.waker().clone());
        this.registered = slot.waker.clone();
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        // its heap entries go stale with it: a later slot under this key gets a new generation
        let mut s = self.inner.lock();
        s.slots.remove(self.key);
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes one timespec
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
    }

    #[test]
    fn a_sleeper_wakes_at_its_deadline_not_before() {
        rt().block_on(async {
            let timers = Timers::new(Duration::ZERO).unwrap();
            let mut s = timers.sleep();
            for ms in [1u64, 3, 7] {
                let at = Instant::now() + Duration::from_millis(ms);
                s.reset(at);
                assert!(!s.is_elapsed());
                (&mut s).await;
                assert!(Instant::now() >= at, "woke before its deadline");
                assert!(s.is_elapsed());
            }
        });
    }

    #[test]
    fn a_past_deadline_is_elapsed_at_once_and_moving_it_out_rearms() {
        rt().block_on(async {
            let timers = Timers::new(Duration::ZERO).unwrap();
            let mut s = timers.sleep();
            s.reset(Instant::now() - Duration::from_millis(1));
            assert!(s.is_elapsed());
            (&mut s).await;
            // moved later before it fires: the earlier arming must not wake it
            let later = Instant::now() + Duration::from_millis(20);
            s.reset(Instant::now() + Duration::from_millis(2));
            s.reset(later);
            (&mut s).await;
            assert!(Instant::now() >= later);
        });
    }

    #[test]
    fn many_sleepers_each_wake_once_in_deadline_order() {
        // one thread, as an engine lane: what is woken runs in wake order (on two workers a
        // busy machine interleaves one round's sleepers, and the order says nothing)
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let timers = Arc::new(Timers::new(Duration::ZERO).unwrap());
            let order = Arc::new(Mutex::new(Vec::new()));
            // far enough out that every sleeper is registered before the first deadline
            let t0 = Instant::now() + Duration::from_millis(50);
            let mut tasks = Vec::new();
            for i in (0..200u64).rev() {
                let (timers, order) = (timers.clone(), order.clone());
                tasks.push(tokio::spawn(async move {
                    let mut s = timers.sleep();
                    let at = t0 + Duration::from_micros(i * 100);
                    s.reset(at);
                    (&mut s).await;
                    assert!(Instant::now() >= at);
                    order.lock().unwrap().push(i);
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let order = order.lock().unwrap();
            assert_eq!(order.len(), 200);
            // deadlines 100 µs apart: the wake order follows them (a tie in one wake may swap
            // neighbours, never more)
            let mut sorted = order.clone();
            sorted.sort();
            let displaced = order.iter().zip(&sorted).filter(|(a, b)| a.abs_diff(**b) > 1).count();
            assert!(displaced < 20, "woken out of order: {order:?}");
            assert_eq!(timers.sizes().0, 0, "dropped sleepers leave no slot");
        });
    }

    #[test]
    fn deadlines_closer_than_the_coalescing_gap_share_a_wake() {
        rt().block_on(async {
            let timers = Arc::new(Timers::new(Duration::from_millis(50)).unwrap());
            let t0 = Instant::now() + Duration::from_millis(2);
            let mut tasks = Vec::new();
            for i in 0..20u64 {
                let timers = timers.clone();
                tasks.push(tokio::spawn(async move {
                    let mut s = timers.sleep();
                    let at = t0 + Duration::from_micros(i * 100);
                    s.reset(at);
                    (&mut s).await;
                    assert!(Instant::now() >= at, "never early");
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            // 20 deadlines within 2 ms, fires at least 50 ms apart: the first, then the rest
            assert!(timers.fires() <= 3, "{} wakes for 20 deadlines within one gap", timers.fires());
        });
    }

    #[test]
    fn the_fd_is_set_early_by_the_latency_it_learns_and_no_sleeper_wakes_early() {
        rt().block_on(async {
            let timers = Timers::new(Duration::ZERO).unwrap();
            let mut s = timers.sleep();
            for _ in 0..40 {
                // a spin window and more ahead, so each is a fire of the fd
                let at = Instant::now() + Duration::from_millis(2);
                s.reset(at);
                (&mut s).await;
                assert!(Instant::now() >= at, "woke before its deadline");
            }
            // the driver always runs some time after the fd's time: that is the lead
            let lead = timers.lead();
            assert!(lead > Duration::ZERO && lead <= Duration::from_nanos(MAX_LEAD_NS), "{lead:?}");
            // with coalescing asked for, nothing is learned or set early
            let coalesced = Timers::new(Duration::from_millis(1)).unwrap();
            let mut s = coalesced.sleep();
            for _ in 0..5 {
                s.reset(Instant::now() + Duration::from_millis(2));
                (&mut s).await;
            }
            assert_eq!(coalesced.lead(), Duration::ZERO);
        });
    }

    #[test]
    fn stale_entries_are_swept() {
        rt().block_on(async {
            let timers = Timers::new(Duration::ZERO).unwrap();
            let mut s = timers.sleep();
            let far = Instant::now() + Duration::from_secs(3600);
            for i in 0..10_000u64 {
                s.reset(far + Duration::from_nanos(i));
            }
            let (slots, heap) = timers.sizes();
            assert_eq!(slots, 1);
            assert!(heap <= 1024 + 2, "heap holds {heap} entries for one sleeper");
        });
    }
}
