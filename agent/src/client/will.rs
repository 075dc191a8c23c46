//! A client's last will, as the will ledger sees it: the header that names each connection's
//! will (so an observer anywhere can say whose it got), and the records that say what the
//! broker owes when a connection goes (see `squall_proto::metrics::wills`).

use ntex_bytes::Bytes;
use squall_proto::metrics::{WillId, WillMark, WillRecord};

use crate::metrics::Shard;

pub(super) struct WillState {
    id: WillId,
    /// The scenario's payload, after the header.
    payload: Bytes,
    topic: String,
    /// MQTT 5 will delay, capped by the session's expiry (the will is due when the session
    /// ends, if that comes first); 0 on 3.1.1.
    delay_ns: u64,
    /// A delayed will owed and not yet due: (epoch, due).
    pending: Option<(u32, u64)>,
    /// The current connection is silent, and its will is due at this instant.
    silence_due: Option<u64>,
}

impl WillState {
    pub fn new(id: WillId, payload: Bytes, topic: String, delay_ns: u64) -> WillState {
        WillState {
            id: WillId { epoch: 0, ..id },
            payload,
            topic,
            delay_ns,
            pending: None,
            silence_due: None,
        }
    }

    /// A new connection begins: the payload of its CONNECT's will.
    pub fn next_connection(&mut self) -> Bytes {
        self.id.epoch += 1;
        self.silence_due = None;
        Bytes::from(self.id.payload(&self.payload))
    }

    fn record(&self, shard: &mut Shard, mark: WillMark, epoch: u32, at: u64) {
        shard.wills.push(WillRecord {
            mark,
            group: self.id.group,
            client: self.id.client,
            epoch,
            at_unix_ns: at,
            receiver: 0,
            topic: if mark == WillMark::Owed { self.topic.clone() } else { String::new() },
        });
    }

    /// The connection was taken away at `at` in a way that makes its will due (`drop`,
    /// `disconnect_with_will`): at once, or after the will delay.
    pub fn taken(&mut self, shard: &mut Shard, at: u64) {
        let due = at.saturating_add(self.delay_ns);
        if self.delay_ns > 0 {
            self.pending = Some((self.id.epoch, due));
        }
        self.record(shard, WillMark::Owed, self.id.epoch, due);
    }

    /// The connection fell silent: the broker is due to end it when a keepalive and a half
    /// passed since the last packet it got (`keepalive_s` as the broker enforces it), and the
    /// will follows (after its delay).
    pub fn silenced(&mut self, shard: &mut Shard, last_sent: u64, keepalive_s: u16) {
        if keepalive_s == 0 {
            return; // no keepalive: the broker never ends it, and owes nothing
        }
        let at = last_sent.saturating_add(keepalive_s as u64 * 1_500_000_000);
        self.silence_due = Some(at);
        self.taken(shard, at);
    }

    /// The run ends a silent connection with a clean DISCONNECT at `now`: if the broker was not
    /// yet due to end it, the will is not owed after all.
    pub fn closing(&mut self, shard: &mut Shard, now: u64) {
        if let Some(due) = self.silence_due.take()
            && now < due
        {
            self.pending = None;
            self.record(shard, WillMark::Withdrawn, self.id.epoch, now);
        }
    }

    /// The connection failed on its own (an error, the broker's close): the broker may publish
    /// the will; squall did not cause it.
    pub fn failed(&mut self, shard: &mut Shard, now: u64) {
        if self.silence_due.is_none() {
            self.record(shard, WillMark::Allowed, self.id.epoch, now);
        }
    }

    /// A new connection was accepted at `now`: a delayed will not yet due is withheld if the
    /// session resumed, and due now if the session was started afresh (MQTT 5 §3.1.3.2.2).
    pub fn connected(&mut self, shard: &mut Shard, now: u64, session_present: bool) {
        if let Some((epoch, due)) = self.pending.take()
            && now < due
        {
            if session_present {
                self.record(shard, WillMark::Withdrawn, epoch, now);
            } else {
                self.record(shard, WillMark::Owed, epoch, now);
            }
        }
    }
}
