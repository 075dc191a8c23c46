//! The will ledger: every last will squall made a broker owe, matched against every will its
//! observers received, settled by the spec (MQTT 3.1.1 §3.1.2.5, MQTT 5 §3.1.2.5 and §3.1.3.2).
//!
//! A will squall sets carries a small header before the scenario's payload, naming the run,
//! the client and which of its connections (the epoch: 1, 2, 3 … per client) the will belongs
//! to. The client that loses a connection records what the broker now owes ([`WillMark`]); a
//! subscriber that receives a will records the delivery. Both travel in the agents' snapshots,
//! so killer and observer may run on different agents; the controller settles them at the end.
//!
//! ```text
//! offset size field
//!  0      2   magic, the bytes "SW"
//!  2      1   version = 1
//!  3      1   reserved, 0
//!  4      4   run tag
//!  8      4   the client's group (its position in the scenario)
//! 12      4   the client's index in the run (unique across groups and agents)
//! 16      4   epoch: the connection the will was set on, from 1
//! 20      …   the scenario's will payload
//! ```

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub const WILL_HEADER_LEN: usize = 20;
const MAGIC: [u8; 2] = *b"SW";
const VERSION: u8 = 1;

/// Whose will, and which connection's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WillId {
    pub run_tag: u32,
    pub group: u32,
    pub client: u32,
    pub epoch: u32,
}

impl WillId {
    /// The will payload: this header, then `payload`.
    pub fn payload(&self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(WILL_HEADER_LEN + payload.len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(0);
        for v in [self.run_tag, self.group, self.client, self.epoch] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    /// Reads a will header from the start of a payload; `None` if it is not one.
    #[inline]
    pub fn read(payload: &[u8]) -> Option<WillId> {
        let h = payload.get(..WILL_HEADER_LEN)?;
        if h[0..2] != MAGIC || h[2] != VERSION {
            return None;
        }
        let u32_at = |i: usize| u32::from_be_bytes(h[i..i + 4].try_into().unwrap());
        Some(WillId { run_tag: u32_at(4), group: u32_at(8), client: u32_at(12), epoch: u32_at(16) })
    }
}

/// What a record says about one connection's will.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WillMark {
    /// The connection was taken away so that its will is due (drop, silence,
    /// disconnect_with_will) at `at_unix_ns`: every observer whose filters match `topic`
    /// should get it once.
    Owed,
    /// The will is no longer due (a delayed will whose session resumed in time, or a silent
    /// connection the run ended cleanly before the broker's keepalive was due): a delivery is
    /// one the spec forbids.
    Withdrawn,
    /// The connection ended in a way that lets the broker publish the will without squall
    /// owing it (a network error, a protocol error, the broker's own close).
    Allowed,
    /// An observer (`receiver`) got the will at `at_unix_ns`.
    Delivered,
}

/// One fact about one connection's will. Connections that end with a clean DISCONNECT leave
/// no record: a delivery of their will is unexpected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WillRecord {
    pub mark: WillMark,
    pub group: u32,
    pub client: u32,
    pub epoch: u32,
    pub at_unix_ns: u64,
    /// Delivered: which receiver got it (a subscribing client, or a shared subscription).
    pub receiver: u64,
    /// Owed: the will's topic, to be matched against the observers' filters.
    pub topic: String,
}

/// Receivers with the same granted filters, and how many there are (a shared subscription's
/// members count once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observers {
    pub filters: Vec<String>,
    pub count: u64,
}

/// The settled will ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WillLedger {
    /// Owed wills × the observers subscribed to each one's topic.
    pub expected: u64,
    /// Owed wills received, once per observer.
    pub delivered: u64,
    pub missing: u64,
    /// Receipts past the first, by the same observer, of the same will (legitimate at QoS 1).
    pub duplicates: u64,
    /// Wills the spec forbids: after a clean DISCONNECT, of a live connection, or withheld by a
    /// will delay whose session resumed in time.
    pub unexpected: u64,
    /// Wills the spec permits but squall did not cause (the connection failed on its own).
    pub allowed: u64,
    /// Owed wills received before the broker was due to act (a keepalive enforced early).
    pub early: u64,
    /// Records lost to the agents' bound: the ledger above is incomplete by at most this many.
    pub unsettled: u64,
}

impl WillLedger {
    pub fn fields(&self) -> [(&'static str, u64); 8] {
        [
            ("expected", self.expected),
            ("delivered", self.delivered),
            ("missing", self.missing),
            ("duplicates", self.duplicates),
            ("unexpected", self.unexpected),
            ("allowed", self.allowed),
            ("early", self.early),
            ("unsettled", self.unsettled),
        ]
    }
}

/// A delivery within this of the instant the broker was due counts as on time (clocks of two
/// agents, and the broker's own timer granularity).
const EARLY_SLACK_NS: u64 = 50_000_000;

/// Settles `records` (in the order each agent sent them) against the `observers`. Calls
/// `latency(group, ns)` with each owed will's first delivery to each observer, measured from
/// when the broker was due to publish it.
pub fn settle<'r>(
    records: &'r [WillRecord],
    observers: &[Observers],
    mut latency: impl FnMut(u32, u64),
) -> WillLedger {
    let mut l = WillLedger::default();
    // the last word on each connection's will (one client's records come in order)
    let mut fate: HashMap<(u32, u32), &WillRecord> = HashMap::new();
    let mut got: Vec<&WillRecord> = Vec::new();
    for r in records {
        match r.mark {
            WillMark::Delivered => got.push(r),
            _ => {
                fate.insert((r.client, r.epoch), r);
            }
        }
    }
    let mut observing: HashMap<&str, u64> = HashMap::new();
    let mut observers_of = |topic: &'r str| -> u64 {
        *observing.entry(topic).or_insert_with(|| {
            observers
                .iter()
                .filter(|o| {
                    o.filters.iter().any(|f| crate::topic::matches(crate::topic::split_shared(f).1, topic))
                })
                .map(|o| o.count)
                .sum()
        })
    };
    // per connection: the receivers that got its will (distinct)
    got.sort_by_key(|r| (r.client, r.epoch, r.receiver, r.at_unix_ns));
    let mut received: HashMap<(u32, u32), u64> = HashMap::new();
    for (i, r) in got.iter().enumerate() {
        let first = i == 0 || {
            let p = got[i - 1];
            (p.client, p.epoch, p.receiver) != (r.client, r.epoch, r.receiver)
        };
        if !first {
            l.duplicates += 1;
            continue;
        }
        match fate.get(&(r.client, r.epoch)).map(|f| (f.mark, f.at_unix_ns, f.group)) {
            Some((WillMark::Owed, due, group)) => {
                *received.entry((r.client, r.epoch)).or_default() += 1;
                l.delivered += 1;
                if r.at_unix_ns + EARLY_SLACK_NS < due {
                    l.early += 1;
                } else {
                    latency(group, r.at_unix_ns.saturating_sub(due));
                }
            }
            Some((WillMark::Allowed, ..)) => l.allowed += 1,
            Some((WillMark::Withdrawn | WillMark::Delivered, ..)) | None => l.unexpected += 1,
        }
    }
    for ((client, epoch), f) in &fate {
        if f.mark == WillMark::Owed {
            let n = observers_of(&f.topic);
            l.expected += n;
            l.missing += n.saturating_sub(received.get(&(*client, *epoch)).copied().unwrap_or(0));
        }
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(mark: WillMark, client: u32, epoch: u32, at: u64, receiver: u64) -> WillRecord {
        WillRecord { mark, group: 1, client, epoch, at_unix_ns: at, receiver, topic: format!("w/{client}") }
    }

    #[test]
    fn the_header_reads_back_and_foreign_payloads_are_not_wills() {
        let id = WillId { run_tag: 7, group: 2, client: 99, epoch: 3 };
        let p = id.payload(b"offline");
        assert_eq!(WillId::read(&p), Some(id));
        assert_eq!(&p[WILL_HEADER_LEN..], b"offline");
        assert_eq!(WillId::read(b"offline"), None);
        assert_eq!(WillId::read(&p[..WILL_HEADER_LEN - 1]), None);
    }

    #[test]
    fn settles_by_the_spec() {
        use WillMark::*;
        let obs = vec![
            Observers { filters: vec!["w/#".into()], count: 2 },
            Observers { filters: vec!["other/#".into()], count: 5 },
        ];
        let ms = 1_000_000;
        let records = vec![
            rec(Owed, 1, 1, 100 * ms, 0),
            rec(Delivered, 1, 1, 103 * ms, 10),
            rec(Delivered, 1, 1, 104 * ms, 10), // QoS 1 twice: a duplicate
            rec(Delivered, 1, 1, 105 * ms, 11),
            rec(Owed, 2, 1, 100 * ms, 0), // nobody got this one: 2 missing
            rec(Owed, 3, 2, 100 * ms, 0),
            rec(Withdrawn, 3, 2, 100 * ms, 0), // resumed before its delay: forbidden now
            rec(Delivered, 3, 2, 200 * ms, 10),
            rec(Delivered, 4, 1, 200 * ms, 10), // no record: it left cleanly
            rec(Allowed, 5, 1, 100 * ms, 0),
            rec(Delivered, 5, 1, 200 * ms, 10),
            rec(Owed, 6, 1, 900 * ms, 0),
            rec(Delivered, 6, 1, 100 * ms, 11), // before the broker was due
        ];
        let mut lat = vec![];
        let l = settle(&records, &obs, |g, ns| lat.push((g, ns)));
        assert_eq!(
            l,
            WillLedger {
                expected: 6,
                delivered: 3,
                missing: 3,
                duplicates: 1,
                unexpected: 2,
                allowed: 1,
                early: 1,
                unsettled: 0
            }
        );
        lat.sort();
        assert_eq!(lat, vec![(1, 3 * ms), (1, 5 * ms)]);
    }
}
