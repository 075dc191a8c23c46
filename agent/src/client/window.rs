//! How many connection handshakes (TCP, TLS, CONNECT → CONNACK) an agent keeps in flight.
//!
//! Too few and a broker far away (or slow to accept) is connected to at window ÷ round trip;
//! too many and a broker with a short listen backlog drops SYNs, which the kernel retries only
//! after a second: 15,000 clients against mosquitto (backlog 100) connect at ~13k/s with 64 in
//! flight and lose SYNs at 128 and more (BENCHMARKS.md). No fixed number is right for every
//! broker, so by default the window adapts, by throughput, in rounds (at least one window's
//! worth of handshakes and 20 ms):
//! - after two steady rounds it **probes** a quarter wider for one round, and keeps the wider
//!   window only if handshakes completed ≥ 10 % faster; otherwise it goes back and waits four
//!   rounds before probing again. A broker limited by round trips gets a wider window; a
//!   saturated one (wider only queues) keeps the one it has;
//! - it **halves** on any sign of a dropped SYN (a TCP connect of ≥ 900 ms: the kernel's first
//!   SYN retransmission comes after 1 s), and holds for four rounds.
//!
//! A scenario that sets `run.max_connecting` gets exactly that many, fixed.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Where an adaptive window starts: below mosquitto's backlog of 100, fast on loopback.
pub const START: u32 = 64;
/// The smallest an adaptive window gets.
pub const MIN: u32 = 8;
/// A TCP connect this slow lost its first SYN.
pub const SYN_RETRY_NS: u64 = 900_000_000;
/// The shortest round, ns: shorter ones measure noise.
const MIN_ROUND_NS: u64 = 20_000_000;
/// Handshakes faster than this on average are not worth a wider window: at 64 in flight they
/// already make 16,000 a second, more than a broker's accept loop takes, and a probe past a
/// short listen backlog costs its clients a second each (measured: a bare loop reaches 13-22k/s
/// at 64 in flight on loopback, and loses SYNs at 256).
const PROBE_MIN_NS: u64 = 4_000_000;

/// Rounds without probing after a failed probe or a back-off.
const HOLD_ROUNDS: u32 = 4;

/// The window's arithmetic, without I/O: completions in, window size out.
#[derive(Debug, Clone)]
pub struct WindowControl {
    size: u32,
    max: u32,
    round_start_ns: Option<u64>,
    round_done: u32,
    /// Handshakes per second at the current size (mean of its steady rounds).
    steady_rate: f64,
    steady_rounds: u32,
    /// The size before the probe under way.
    probing_from: Option<u32>,
    hold: u32,
    round_took_ns: u64,
}

impl WindowControl {
    pub fn new(start: u32, max: u32) -> WindowControl {
        let max = max.max(1);
        WindowControl {
            size: start.clamp(1, max),
            max,
            round_start_ns: None,
            round_done: 0,
            steady_rate: 0.0,
            steady_rounds: 0,
            probing_from: None,
            hold: 0,
            round_took_ns: 0,
        }
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    fn floor(&self) -> u32 {
        MIN.min(self.max)
    }

    /// A handshake completed at `now_ns`.
    pub fn handshake(&mut self, now_ns: u64, took_ns: u64) -> u32 {
        let start = *self.round_start_ns.get_or_insert(now_ns);
        self.round_done += 1;
        self.round_took_ns = self.round_took_ns.saturating_add(took_ns);
        let elapsed = now_ns.saturating_sub(start);
        if self.round_done < self.size.max(MIN) || elapsed < MIN_ROUND_NS {
            return self.size;
        }
        let rate = self.round_done as f64 * 1e9 / elapsed as f64;
        let mean_took = self.round_took_ns / self.round_done as u64;
        self.round_took_ns = 0;
        self.round_start_ns = Some(now_ns);
        self.round_done = 0;
        match self.probing_from.take() {
            Some(from) if rate < self.steady_rate * 1.1 => {
                // wider bought nothing: back, and wait before trying again
                self.size = from;
                self.hold = HOLD_ROUNDS;
                self.steady_rounds = 0;
            }
            Some(_) => {
                self.steady_rate = rate;
                self.steady_rounds = 1;
            }
            None => {
                self.steady_rate = if self.steady_rounds == 0 {
                    rate
                } else {
                    (self.steady_rate * self.steady_rounds as f64 + rate) / (self.steady_rounds + 1) as f64
                };
                self.steady_rounds += 1;
                if self.hold > 0 {
                    self.hold -= 1;
                } else if self.steady_rounds >= 2 && self.size < self.max && mean_took >= PROBE_MIN_NS {
                    self.probing_from = Some(self.size);
                    self.size = (self.size + (self.size / 4).max(1)).min(self.max);
                }
            }
        }
        self.size
    }

    /// A TCP connect took `ns`; a lost SYN halves the window.
    pub fn tcp_connect(&mut self, ns: u64) -> u32 {
        if ns >= SYN_RETRY_NS {
            self.size = (self.probing_from.take().unwrap_or(self.size) / 2).max(self.floor());
            self.hold = HOLD_ROUNDS;
            self.steady_rounds = 0;
            self.round_start_ns = None;
            self.round_done = 0;
        }
        self.size
    }
}

/// The agent's handshake slots: a semaphore whose size follows a [`WindowControl`].
pub struct ConnectWindow {
    slots: Arc<Semaphore>,
    state: Mutex<State>,
}

struct State {
    control: WindowControl,
    adaptive: bool,
    /// Slots handed out beyond the current size: forgotten as they come back.
    debt: u32,
}

/// One handshake slot, given back when dropped.
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    window: Arc<ConnectWindow>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            let mut s = self.window.lock();
            if s.debt > 0 {
                s.debt -= 1;
                p.forget();
            }
        }
    }
}

impl ConnectWindow {
    /// `adaptive`: start at [`START`] (or `max` if lower) and adapt up to `max`; otherwise
    /// exactly `max`.
    pub fn new(max: u32, adaptive: bool) -> Arc<ConnectWindow> {
        let start = if adaptive { START.min(max) } else { max };
        let control = WindowControl::new(start, max);
        Arc::new(ConnectWindow {
            slots: Arc::new(Semaphore::new(control.size() as usize)),
            state: Mutex::new(State { control, adaptive, debt: 0 }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a slot (`None` if the window was closed).
    pub async fn acquire(self: &Arc<Self>) -> Option<Slot> {
        let permit = self.slots.clone().acquire_owned().await.ok()?;
        Some(Slot { permit: Some(permit), window: self.clone() })
    }

    /// The window's size now.
    pub fn size(&self) -> u32 {
        self.lock().control.size()
    }

    pub fn tcp_connect(&self, ns: u64) {
        self.adapt(|c| c.tcp_connect(ns));
    }

    /// A handshake completed (CONNACK) at `now_ns`, `took_ns` after its TCP connect began.
    pub fn handshake(&self, now_ns: u64, took_ns: u64) {
        self.adapt(|c| c.handshake(now_ns, took_ns));
    }

    fn adapt(&self, f: impl FnOnce(&mut WindowControl) -> u32) {
        let mut s = self.lock();
        if !s.adaptive {
            return;
        }
        let before = s.control.size();
        let after = f(&mut s.control);
        if after != before {
            tracing::debug!(before, after, rate = s.control.steady_rate, "Handshake window");
        }
        if after > before {
            let mut grow = after - before;
            // pay debt first: slots still out from a shrink need not be forgotten now
            let paid = grow.min(s.debt);
            s.debt -= paid;
            grow -= paid;
            self.slots.add_permits(grow as usize);
        } else if after < before {
            let shrink = before - after;
            let forgotten = self.slots.forget_permits(shrink as usize) as u32;
            s.debt += shrink - forgotten;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Runs `rounds` rounds against a broker that completes handshakes at `rate(window)` per
    /// second; returns the clock.
    fn run(c: &mut WindowControl, mut now: u64, rounds: usize, rate: impl Fn(u32) -> f64) -> u64 {
        let mut ended = 0;
        while ended < rounds {
            let step = (1e9 / rate(c.size())) as u64;
            now += step.max(1);
            let before = (c.round_done, c.round_start_ns);
            // by Little's law, the time a handshake takes is the window over the rate
            let took = (c.size() as f64 * 1e9 / rate(c.size())) as u64;
            c.handshake(now, took);
            if c.round_done == 0 && before.0 > 0 {
                ended += 1;
            }
        }
        now
    }

    #[test]
    fn a_far_broker_gets_a_wider_window() {
        // 20 ms a handshake whatever the window: throughput = window / 20 ms
        let mut c = WindowControl::new(START, 4096);
        let now = run(&mut c, 0, 60, |w| w as f64 / 0.020);
        assert!(c.size() > 500, "window {} after 60 rounds at a constant round trip", c.size());
        run(&mut c, now, 200, |w| w as f64 / 0.020);
        assert_eq!(c.size(), 4096, "up to the cap, never past it");
    }

    #[test]
    fn a_saturated_broker_keeps_the_window() {
        // 15k handshakes a second whatever the window: wider only queues
        let mut c = WindowControl::new(START, 4096);
        run(&mut c, 0, 100, |_| 15_000.0);
        assert!(c.size() <= START + START / 4, "window {} grew though throughput did not", c.size());
        // a broker that saturates at 100 in flight: the window settles near it, not far past
        let mut c = WindowControl::new(START, 4096);
        run(&mut c, 0, 100, |w| w.min(100) as f64 / 0.010);
        assert!((80..=160).contains(&c.size()), "window {}", c.size());
    }

    #[test]
    fn fast_handshakes_are_not_worth_a_probe_past_a_backlog() {
        // 1 ms a handshake (loopback): 64 in flight already make 64,000/s; no probe, however
        // the rate might answer
        let mut c = WindowControl::new(START, 4096);
        run(&mut c, 0, 50, |w| w as f64 / 0.001);
        assert_eq!(c.size(), START);
    }

    #[test]
    fn a_lost_syn_halves_the_window_and_holds_it() {
        let mut c = WindowControl::new(256, 4096);
        assert_eq!(c.tcp_connect(5 * MS), 256, "a normal connect changes nothing");
        assert_eq!(c.tcp_connect(1_010 * MS), 128);
        // no probing for four rounds, however much a wider window would gain
        let now = run(&mut c, 0, 4, |w| w as f64 / 0.020);
        assert_eq!(c.size(), 128);
        run(&mut c, now, 4, |w| w as f64 / 0.020);
        assert!(c.size() > 128, "window {}", c.size());
        let mut c = WindowControl::new(8, 4096);
        assert_eq!(c.tcp_connect(2_000 * MS), MIN, "never below the floor");
    }

    #[tokio::test]
    async fn slots_follow_the_window_including_slots_already_out() {
        let w = ConnectWindow::new(100, true);
        assert_eq!(w.size(), START);
        let mut held = Vec::new();
        for _ in 0..START {
            held.push(w.acquire().await.unwrap());
        }
        assert_eq!(w.slots.available_permits(), 0);
        // a lost SYN halves the window while every slot is out: they are forgotten on return
        w.tcp_connect(SYN_RETRY_NS);
        assert_eq!(w.size(), START / 2);
        drop(held);
        assert_eq!(w.slots.available_permits(), (START / 2) as usize);
        // fixed windows ignore what they see
        let f = ConnectWindow::new(256, false);
        f.tcp_connect(SYN_RETRY_NS);
        assert_eq!((f.size(), f.slots.available_permits()), (256, 256));
    }
}
