//! A device's connections, read off the broker's packet timeline: when each opened, sent
//! CONNECT, was answered (or not), and ended; and the delays between attempts, measured from
//! the end of one connection (the device's close, or the broker's drop) to the next CONNECT,
//! so that a device's own CONNACK timeout is not taken for backoff.

use squall_broker::PacketEvent;
use squall_broker::timeline::{Dir, Kind, Note};

/// One connection of the device, times in ns since the broker started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attempt {
    /// Which connection (accept order).
    pub conn: u64,
    pub opened_ns: Option<u64>,
    pub connect_ns: Option<u64>,
    /// When the CONNACK left, and what a fault did to it (withheld: it never left).
    pub connack_ns: Option<u64>,
    pub connack_note: Option<Note>,
    pub closed_ns: Option<u64>,
    /// The broker ended it (a drop fault), not the device.
    pub dropped_by_broker: bool,
}

/// The connections in `events` (one client's timeline), in accept order.
pub fn attempts(events: &[PacketEvent]) -> Vec<Attempt> {
    let mut out: Vec<Attempt> = Vec::new();
    for e in events {
        let i = match out.iter().position(|a| a.conn == e.conn) {
            Some(i) => i,
            None => {
                out.push(Attempt { conn: e.conn, ..Default::default() });
                out.len() - 1
            }
        };
        let a = &mut out[i];
        match (e.dir, e.kind) {
            (Dir::In, Kind::Opened) => a.opened_ns = a.opened_ns.or(Some(e.at_ns)),
            (Dir::In, Kind::Connect) => a.connect_ns = a.connect_ns.or(Some(e.at_ns)),
            (Dir::Out, Kind::ConnAck) => {
                a.connack_note = e.note;
                if e.note != Some(Note::Withheld) {
                    a.connack_ns = Some(e.at_ns);
                }
            }
            (_, Kind::Closed) => {
                a.dropped_by_broker |= e.note == Some(Note::Dropped);
                a.closed_ns = Some(a.closed_ns.map_or(e.at_ns, |c| c.min(e.at_ns)));
            }
            _ => {}
        }
    }
    out.sort_by_key(|a| a.conn);
    out
}

/// Seconds from each connection's end to the next one's CONNECT (negative, when the device
/// opened the next before the last had ended, counts as 0).
pub fn delays_s(attempts: &[Attempt]) -> Vec<f64> {
    attempts
        .windows(2)
        .filter_map(|w| {
            let (ended, next) = (w[0].closed_ns?, w[1].connect_ns?);
            Some(next.saturating_sub(ended) as f64 / 1e9)
        })
        .collect()
}
