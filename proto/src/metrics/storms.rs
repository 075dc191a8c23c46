//! Storm recovery: for each firing of a scenario event (a storm), how many clients it took
//! away, how long until they were connected again, and how much of that their own reconnect
//! policy accounts for, so the broker's share is visible.

use serde::{Deserialize, Serialize};

use super::histogram::Latency;

/// Storms one agent tracks; clients taken by firings past it are counted in `storms_untracked` (a soak with an
/// event every second would otherwise grow the result without bound).
pub const MAX_STORMS: usize = 256;

/// One storm as one agent saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StormResult {
    /// The group and the event (its position in the group's events).
    pub group: u32,
    pub event: u32,
    /// When it fired, ms after the publishing window opened.
    pub at_ms: u64,
    /// Clients it took away.
    pub taken: u64,
    /// Each returning client: taken → CONNACK of its next connection, as HdrHistogram V2 (ns).
    pub back_v2: Vec<u8>,
    /// Each returning client: the delays its policy made it wait (the event's pause, its
    /// backoff), as HdrHistogram V2 (ns): what recovery would take with an instant broker.
    pub policy_v2: Vec<u8>,
    /// Attempts that failed on the way back (refused, timed out, reset).
    pub failed_attempts: u64,
    /// Clients that gave up on the way back (max attempts).
    pub abandoned: u64,
}

/// A storm being accumulated (agent) or merged (controller).
#[derive(Debug, Clone, Default)]
pub struct Storm {
    pub taken: u64,
    pub back: Latency,
    pub policy: Latency,
    pub failed_attempts: u64,
    pub abandoned: u64,
}

impl Storm {
    pub fn result(&self, group: u32, event: u32, at_ms: u64) -> StormResult {
        StormResult {
            group,
            event,
            at_ms,
            taken: self.taken,
            back_v2: self.back.to_v2(),
            policy_v2: self.policy.to_v2(),
            failed_attempts: self.failed_attempts,
            abandoned: self.abandoned,
        }
    }

    /// Adds another agent's share of the same storm.
    pub fn add(&mut self, r: &StormResult) -> Result<(), String> {
        self.taken += r.taken;
        self.back.add(&Latency::from_v2(&r.back_v2)?);
        self.policy.add(&Latency::from_v2(&r.policy_v2)?);
        self.failed_attempts += r.failed_attempts;
        self.abandoned += r.abandoned;
        Ok(())
    }
}

/// Connections lost without the scenario asking, from the first loss until every client lost
/// was connected again (`end_unix_ns` 0: some never were).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutageWindow {
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    /// Clients lost in the window, and those back by its end.
    pub lost: u64,
    pub back: u64,
}

/// Unions overlapping windows (of several agents): one outage seen by all of them is one.
pub fn merge_outages(mut v: Vec<OutageWindow>) -> Vec<OutageWindow> {
    v.sort_by_key(|w| w.start_unix_ns);
    let mut out: Vec<OutageWindow> = Vec::new();
    let end = |w: &OutageWindow| if w.end_unix_ns == 0 { u64::MAX } else { w.end_unix_ns };
    for w in v {
        match out.last_mut() {
            Some(last) if w.start_unix_ns <= end(last) => {
                let e = end(last).max(end(&w));
                last.end_unix_ns = if e == u64::MAX { 0 } else { e };
                last.lost += w.lost;
                last.back += w.back;
            }
            _ => out.push(w),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_outages_of_several_agents_are_one() {
        let w = |s, e, lost| OutageWindow { start_unix_ns: s, end_unix_ns: e, lost, back: lost };
        let merged = merge_outages(vec![w(10, 20, 3), w(30, 0, 1), w(15, 25, 2), w(40, 50, 4), w(60, 70, 1)]);
        assert_eq!(
            merged,
            vec![w(10, 25, 5), OutageWindow { start_unix_ns: 30, end_unix_ns: 0, lost: 6, back: 6 }]
        );
    }
}
