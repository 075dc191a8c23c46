//! The engine's threads: one single-threaded runtime per core ("lane"), each with its own
//! reactor and its own [`Timers`], and every client pinned to one of them.
//!
//! On tokio's work-stealing runtime a client woken on one worker made the scheduler wake a
//! sibling to steal it: at 5,000 clients × 10 msg/s, 28 % of the tester's CPU was workers
//! waking each other (`futex` and the reactor's `eventfd`) and going back to sleep
//! (BENCHMARKS.md, Fan-in floor). A lane's sockets, timer and tasks share one thread, so a
//! wake-up stays on it. Clients go round-robin by their global index, so the load of a
//! homogeneous group splits evenly, and a lane's recorder shards are its own when the
//! recorder's shard count (two per core) is a multiple of the lane count, as by default.
//!
//! The engine's control (phases, snapshots, the link) stays on the runtime it was started on.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::timer::Timers;

/// Tests only: every lane's thread is blocked this many ms each second (0: never).
static STALL_MS: AtomicU64 = AtomicU64::new(0);

/// Tests only: from now on, each new lane's thread is blocked `ms` (at most 900) every second,
/// as a busy host or a noisy neighbour would take it (the agent's `--test-engine-stall-ms`).
pub fn stall_for_tests(ms: u64) {
    STALL_MS.store(ms.min(900), Ordering::Relaxed);
}

/// The lanes of one engine; dropping it stops them (tasks still on them are dropped).
pub struct Lanes {
    lanes: Vec<Lane>,
}

struct Lane {
    handle: Handle,
    timers: Arc<Timers>,
    /// Dropped (or sent) to end the lane's thread.
    _stop: oneshot::Sender<()>,
}

impl Lanes {
    /// Starts `n` lanes (at least one), each with a timer whose fires are at least
    /// `timer_gap` apart.
    pub fn start(n: usize, timer_gap: Duration) -> io::Result<Lanes> {
        let mut lanes = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            lanes.push(Lane::start(i, timer_gap)?);
        }
        Ok(Lanes { lanes })
    }

    /// As many lanes as the current runtime has workers (the engine's `--threads`).
    pub fn for_current_runtime(timer_gap: Duration) -> io::Result<Lanes> {
        Lanes::start(Handle::current().metrics().num_workers(), timer_gap)
    }

    /// The lane client `key` runs on: its runtime and its timer.
    pub fn of(&self, key: usize) -> (&Handle, &Arc<Timers>) {
        let lane = &self.lanes[key % self.lanes.len()];
        (&lane.handle, &lane.timers)
    }
}

impl Lane {
    fn start(index: usize, timer_gap: Duration) -> io::Result<Lane> {
        // I/O and time. tokio layers its signal and process drivers onto any I/O driver, so
        // each park still calls the process driver's `reap_orphans` (~1 % of the tester's CPU
        // at 5,000 × 10/s); building without tokio's `process` feature gained nothing
        // measurable (BENCHMARKS.md, "Engine lanes")
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new().name(format!("lane-{index}")).spawn(move || {
            rt.block_on(async move {
                // the timer's fd joins this lane's reactor and its driver runs here
                let timers = Timers::new(timer_gap).map(Arc::new);
                let ok = timers.is_ok();
                let _ = ready_tx.send(timers.map(|t| (Handle::current(), t)));
                let stall = STALL_MS.load(Ordering::Relaxed);
                if ok && stall > 0 {
                    tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            std::thread::sleep(Duration::from_millis(stall));
                        }
                    });
                }
                if ok {
                    // until the engine drops its lanes (a closed channel ends this too)
                    let _ = stop_rx.await;
                }
            });
            // the runtime drops here, on its own thread: clients still on it are dropped
        })?;
        let (handle, timers) = ready_rx
            .recv()
            .map_err(|_| io::Error::other("an engine lane's thread ended before it started"))??;
        Ok(Lane { handle, timers, _stop: stop_tx })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_go_round_robin_and_each_lane_runs_on_its_own_thread() {
        let lanes = Lanes::start(3, Duration::ZERO).unwrap();
        assert_eq!(lanes.lanes.len(), 3);
        let names: Vec<String> = (0..6)
            .map(|key| {
                let (handle, _) = lanes.of(key);
                let (tx, rx) = std::sync::mpsc::channel();
                handle.spawn(async move {
                    let _ = tx.send(std::thread::current().name().unwrap_or("").to_string());
                });
                rx.recv().unwrap()
            })
            .collect();
        assert_eq!(names, ["lane-0", "lane-1", "lane-2", "lane-0", "lane-1", "lane-2"]);
    }

    #[test]
    fn a_lane_timer_wakes_its_sleeper_on_the_lane() {
        let lanes = Lanes::start(2, Duration::ZERO).unwrap();
        let (handle, timers) = lanes.of(1);
        let timers = timers.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        handle.spawn(async move {
            let mut s = timers.sleep();
            let at = std::time::Instant::now() + Duration::from_millis(3);
            s.reset(at);
            (&mut s).await;
            let _ =
                tx.send((std::time::Instant::now() >= at, std::thread::current().name().map(String::from)));
        });
        let (on_time, thread) = rx.recv_timeout(Duration::from_secs(10)).expect("the sleeper woke");
        assert!(on_time, "woke before its deadline");
        assert_eq!(thread.as_deref(), Some("lane-1"));
    }

    #[test]
    fn dropping_the_lanes_ends_their_threads_and_the_tasks_on_them() {
        let lanes = Lanes::start(2, Duration::ZERO).unwrap();
        let (handle, _) = lanes.of(0);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        handle.spawn(async move {
            // holds the sender until the task is dropped with its runtime
            let _tx = tx;
            std::future::pending::<()>().await
        });
        drop(lanes);
        // disconnected (not timed out): the pending task's sender went with its lane
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
