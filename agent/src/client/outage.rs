//! Outages: connections lost without the scenario asking (a broker restart, a network cut),
//! from the first loss until every client lost is connected again. A broker restart is a storm
//! nobody scheduled; its window is what the report shows.

use std::sync::Mutex;

use squall_proto::metrics::OutageWindow;

/// Windows one agent keeps; past it, losses join the last window (its figures stay true
/// totals, its span grows).
pub const MAX_OUTAGES: usize = 256;

#[derive(Default)]
pub struct Outages {
    inner: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Clients lost and not yet back.
    away: u64,
    windows: Vec<OutageWindow>,
}

impl Outages {
    /// A client lost its established connection at `now`, unasked.
    pub fn lost(&self, now: u64) {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if s.away == 0 && s.windows.len() < MAX_OUTAGES {
            s.windows.push(OutageWindow { start_unix_ns: now, ..Default::default() });
        }
        s.away += 1;
        if let Some(w) = s.windows.last_mut() {
            w.lost += 1;
            w.end_unix_ns = 0;
        }
    }

    /// A client lost unasked is connected again at `now`, at its `attempts`-th attempt.
    pub fn back(&self, now: u64, attempts: u64) {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        s.away = s.away.saturating_sub(1);
        let done = s.away == 0;
        if let Some(w) = s.windows.last_mut() {
            w.back += 1;
            w.attempts_sum += attempts;
            w.attempts_max = w.attempts_max.max(attempts);
            if done {
                w.end_unix_ns = now;
            }
        }
    }

    pub fn windows(&self) -> Vec<OutageWindow> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).windows.clone()
    }
}
