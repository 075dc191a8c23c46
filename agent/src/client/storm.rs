//! Storm recovery as clients live it: taken away by a firing of a scenario event, the delays
//! their policy made them wait, the attempts that failed, and the CONNACK that brought them back.

use std::collections::HashMap;
use std::sync::Mutex;

use squall_proto::metrics::storms::MAX_STORMS;
use squall_proto::metrics::{Storm, StormResult};

/// One storm: the group, the event's position, and when it fired (ms into the window).
pub type StormKey = (u32, u32, u64);

/// Every storm this agent's clients were taken by.
#[derive(Default)]
pub struct Storms {
    inner: Mutex<(HashMap<StormKey, Storm>, u64)>,
}

impl Storms {
    fn with(&self, key: StormKey, f: impl FnOnce(&mut Storm)) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, untracked) = &mut *g;
        if map.len() >= MAX_STORMS && !map.contains_key(&key) {
            *untracked += 1;
            return;
        }
        f(map.entry(key).or_default());
    }

    /// The storms, and the clients taken by storms past the bound.
    pub fn results(&self) -> (Vec<StormResult>, u64) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<StormResult> = g.0.iter().map(|(&(gr, ev, at), s)| s.result(gr, ev, at)).collect();
        v.sort_by_key(|s| (s.at_ms, s.group, s.event));
        (v, g.1)
    }
}

/// A client on its way back from a storm.
pub(super) struct Away {
    key: StormKey,
    since_ns: u64,
    policy_ns: u64,
    failed: u64,
}

impl Away {
    pub fn taken(storms: &Storms, key: StormKey, now: u64) -> Away {
        storms.with(key, |s| s.taken += 1);
        Away { key, since_ns: now, policy_ns: 0, failed: 0 }
    }

    /// Its policy made it wait `ns` before the next attempt.
    pub fn waited(&mut self, ns: u64) {
        self.policy_ns = self.policy_ns.saturating_add(ns);
    }

    pub fn attempt_failed(&mut self, storms: &Storms, now: u64) {
        self.failed += 1;
        let s = (now.saturating_sub(self.since_ns) / 1_000_000_000) as usize;
        storms.with(self.key, |st| st.failed_at(s));
    }

    pub fn abandoned(self, storms: &Storms) {
        storms.with(self.key, |s| s.abandoned += 1);
    }

    pub fn back(self, storms: &Storms, now: u64) {
        storms.with(self.key, |s| {
            s.back.record_ns(now.saturating_sub(self.since_ns));
            s.policy.record_ns(self.policy_ns);
            s.attempts_sum += self.failed + 1;
            s.attempts_max = s.attempts_max.max(self.failed + 1);
        });
    }
}
