//! Storm recovery: for each firing of a scenario event (a storm), how many clients it took
//! away, how long until they were connected again, and how much of that their own reconnect
//! policy accounts for, so the broker's share is visible.

use serde::{Deserialize, Serialize};

use super::histogram::Latency;

/// Storms one agent tracks; clients taken by firings past it are counted in `storms_untracked` (a soak with an
/// event every second would otherwise grow the result without bound).
pub const MAX_STORMS: usize = 256;
/// Seconds after a storm its failed attempts are counted by (later ones join the last).
pub const STORM_SECONDS: usize = 600;

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
    /// Attempts the returning clients made, in all and at most one client.
    pub attempts_sum: u64,
    pub attempts_max: u64,
    /// Failed attempts by second since the storm (its peak is the refusals' peak).
    pub failures_by_s: Vec<u64>,
}

/// A storm being accumulated (agent) or merged (controller).
#[derive(Debug, Clone, Default)]
pub struct Storm {
    pub taken: u64,
    pub back: Latency,
    pub policy: Latency,
    pub failed_attempts: u64,
    pub abandoned: u64,
    pub attempts_sum: u64,
    pub attempts_max: u64,
    pub failures_by_s: Vec<u64>,
}

impl Storm {
    /// A failed attempt `s` seconds after the storm.
    pub fn failed_at(&mut self, s: usize) {
        self.failed_attempts += 1;
        let i = s.min(STORM_SECONDS - 1);
        if self.failures_by_s.len() <= i {
            self.failures_by_s.resize(i + 1, 0);
        }
        self.failures_by_s[i] += 1;
    }

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
            attempts_sum: self.attempts_sum,
            attempts_max: self.attempts_max,
            failures_by_s: self.failures_by_s.clone(),
        }
    }

    /// Adds another agent's share of the same storm.
    pub fn add(&mut self, r: &StormResult) -> Result<(), String> {
        self.taken += r.taken;
        self.back.add(&Latency::from_v2(&r.back_v2)?);
        self.policy.add(&Latency::from_v2(&r.policy_v2)?);
        self.failed_attempts += r.failed_attempts;
        self.abandoned += r.abandoned;
        self.attempts_sum += r.attempts_sum;
        self.attempts_max = self.attempts_max.max(r.attempts_max);
        // a rogue agent's list is cut to the bound
        let n = r.failures_by_s.len().min(STORM_SECONDS);
        if self.failures_by_s.len() < n {
            self.failures_by_s.resize(n, 0);
        }
        for (a, b) in self.failures_by_s.iter_mut().zip(&r.failures_by_s[..n]) {
            *a += b;
        }
        Ok(())
    }
}

/// Connections lost without the scenario asking, from the first loss until every client lost
/// was connected again (`end_unix_ns` 0: some never were).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutageWindow {
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    /// Clients lost in the window, and those back by its end.
    pub lost: u64,
    pub back: u64,
    /// Attempts the returning clients made, in all and at most one client.
    #[serde(default)]
    pub attempts_sum: u64,
    #[serde(default)]
    pub attempts_max: u64,
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
                last.attempts_sum += w.attempts_sum;
                last.attempts_max = last.attempts_max.max(w.attempts_max);
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
    fn failed_attempts_are_counted_by_second_and_merge_within_the_bound() {
        let mut a = Storm::default();
        for s in [0, 0, 2, 10_000] {
            a.failed_at(s);
        }
        assert_eq!(a.failed_attempts, 4);
        assert_eq!(a.failures_by_s.len(), STORM_SECONDS, "a late failure joins the last second");
        assert_eq!((a.failures_by_s[0], a.failures_by_s[2], a.failures_by_s[STORM_SECONDS - 1]), (2, 1, 1));
        let mut r = Storm::default().result(0, 0, 0);
        r.failures_by_s = vec![5; STORM_SECONDS + 10]; // a rogue agent's list
        r.attempts_max = 9;
        a.add(&r).unwrap();
        assert_eq!(a.failures_by_s.len(), STORM_SECONDS);
        assert_eq!((a.failures_by_s[0], a.attempts_max), (7, 9));
    }

    #[test]
    fn overlapping_outages_of_several_agents_are_one() {
        let w = |s, e, lost| OutageWindow {
            start_unix_ns: s,
            end_unix_ns: e,
            lost,
            back: lost,
            ..Default::default()
        };
        let merged = merge_outages(vec![w(10, 20, 3), w(30, 0, 1), w(15, 25, 2), w(40, 50, 4), w(60, 70, 1)]);
        assert_eq!(
            merged,
            vec![
                w(10, 25, 5),
                OutageWindow { start_unix_ns: 30, end_unix_ns: 0, lost: 6, back: 6, ..Default::default() }
            ]
        );
    }
}
