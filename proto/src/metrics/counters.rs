//! Event counters. A snapshot carries the increments of one interval; the controller adds
//! them up. Names are the ones reports and thresholds use.

use serde::{Deserialize, Serialize};

macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $name:ident ),* $(,)?) => {
        /// Counts of what happened; plain numbers, summed across shards, intervals and agents.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct Counters {
            $( $(#[doc = $doc])* pub $name: u64, )*
        }

        impl Counters {
            pub fn add(&mut self, o: &Counters) {
                $( self.$name += o.$name; )*
            }

            /// Every counter with its name, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![ $( (stringify!($name), self.$name), )* ]
            }

            /// The counter called `name`, to add to (the wire carries counters by name).
            pub fn by_name_mut(&mut self, name: &str) -> Option<&mut u64> {
                match name {
                    $( stringify!($name) => Some(&mut self.$name), )*
                    _ => None,
                }
            }

            /// Names of every counter.
            pub const NAMES: &'static [&'static str] = &[ $( stringify!($name), )* ];
        }
    };
}

counters! {
    /// Connection attempts started (first connects and reconnects).
    connect_attempts,
    /// Attempts that ended in a successful CONNACK.
    connects,
    /// Attempts that failed (TCP, TLS, timeout or a refusing CONNACK); see errors for why.
    connect_failures,
    /// Established connections that ended without squall asking (broker close, DISCONNECT,
    /// missing PINGRESP, protocol error).
    connections_lost,
    /// Clients connected again after losing an established connection.
    reconnects,
    /// Clients that gave up after `max_attempts` failed attempts in a row.
    abandoned,
    /// Connections a scenario event took away (disconnect, drop, silence, disconnect_with_will).
    event_actions,
    /// Reconnects of persistent-session clients (clean start off) whose session the broker
    /// kept (CONNACK session present).
    sessions_resumed,
    /// Reconnects of persistent-session clients whose session the broker no longer had
    /// (expired, or forgotten in a restart): what it had queued for them is gone.
    sessions_lost,
    /// Messages published before a session resumed and received after it: the backlog the
    /// broker queued for the client while it was away.
    backlog_delivered,
    /// Event actions the agent could not perform on a connection (a `blackhole` needs Linux
    /// socket filters): the connection went on untouched, nothing was faked.
    events_refused,
    /// TLS handshakes completed, and those that resumed an earlier session (a ticket).
    tls_handshakes,
    tls_resumed,
    /// Filters granted in SUBACKs.
    subscribes,
    /// Filters refused in SUBACKs.
    subscribe_failures,
    /// PUBLISH packets written, by QoS.
    published_qos0,
    published_qos1,
    published_qos2,
    /// QoS 1 publishes acknowledged (PUBACK with success).
    acked_qos1,
    /// QoS 2 publishes completed (PUBCOMP).
    acked_qos2,
    /// Publishes refused by the broker (PUBACK/PUBREC reason ≥ 0x80).
    publish_refused,
    /// Publishes whose acknowledgement took longer than the ack timeout (still awaited).
    ack_timeouts,
    /// QoS 1/2 publishes sent and never acknowledged: the session was lost, or the run ended.
    unacked,
    /// Messages the schedule held in the publishing window that were never sent (the client
    /// was disconnected, or its window stayed full): the offered load fell short by this much.
    behind_schedule,
    /// Times a message came due while its client's unsent bytes were above the high-water
    /// mark (256 KiB), so it waited: the socket was not draining as fast as the schedule.
    send_buffer_full,
    /// Reads that waited for the end of a `run.read_coalesce` window, so more data could
    /// gather: the messages they took arrived up to that long before their newest byte.
    reads_coalesced,
    /// Messages received, by the QoS they arrived with.
    received_qos0,
    received_qos1,
    received_qos2,
    /// Messages received without squall's measurement header (not published by squall).
    received_foreign,
    /// Last wills received (squall's will header; also counted in received_qos*). Settled in
    /// the report's will ledger.
    wills_received,
    /// Will records an agent could not keep (past its bound of a million): the will ledger is
    /// incomplete by this many.
    will_records_dropped,
    /// Messages received from another run (e.g. retained by the broker from an earlier test).
    received_stale,
    /// Messages received again (same stream and sequence) by the same receiver.
    duplicates,
    /// Messages received after a later message of the same stream.
    out_of_order,
    /// Messages a receiver saw skipped over while the run went on: a later message of the same
    /// stream arrived first (lost, or late). Those that then arrived are `gaps_filled`; the
    /// difference is what is missing so far, known mid-run (the ledger settles it at the end).
    /// Not counted for shared subscriptions whose members run on several agents.
    gaps_opened,
    gaps_filled,
    /// Bytes written to and read from brokers (MQTT bytes, before TLS).
    bytes_out,
    bytes_in,
    /// CPU time (user + system) of the agents' processes, µs: the tester's own cost. In a
    /// one-process `squall run` on the embedded broker, the broker's CPU is in it too.
    agent_cpu_us,
}

impl Counters {
    pub fn published(&self) -> u64 {
        self.published_qos0 + self.published_qos1 + self.published_qos2
    }

    pub fn received(&self) -> u64 {
        self.received_qos0 + self.received_qos1 + self.received_qos2
    }

    /// Messages skipped over and not arrived since (see `gaps_opened`); over part of a run it
    /// may be negative (late arrivals of gaps opened before it).
    pub fn missing(&self) -> i64 {
        self.gaps_opened as i64 - self.gaps_filled as i64
    }

    pub fn count_published(&mut self, qos: u8) {
        match qos {
            0 => self.published_qos0 += 1,
            1 => self.published_qos1 += 1,
            _ => self.published_qos2 += 1,
        }
    }

    pub fn count_received(&mut self, qos: u8) {
        match qos {
            0 => self.received_qos0 += 1,
            1 => self.received_qos1 += 1,
            _ => self.received_qos2 += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_sums_every_field() {
        let mut a = Counters { connects: 1, bytes_in: 10, ..Default::default() };
        let b = Counters { connects: 2, received_qos2: 5, ..Default::default() };
        a.add(&b);
        assert_eq!((a.connects, a.bytes_in, a.received_qos2), (3, 10, 5));
        assert_eq!(a.fields().len(), Counters::NAMES.len());
    }
}
