//! The receiving side of a client: everything a read brought, through the state machine, into
//! the recorder and the delivery ledger (its own, its shared subscription's, or the
//! controller's), and the backlog a resumed session is handed.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use ntex_bytes::BytesMut;

use super::{Client, End};
use crate::metrics::Seen;
use crate::metrics::shares::ShareReceipts;
use crate::metrics::{LoadError, Metric, ReceiverLedger, Shard, Timing};
use crate::mqtt::codec::QoS;
use crate::mqtt::inflight::{Kind, Token};
use crate::mqtt::state::{Event, Fault};
use crate::payload::Header;
use squall_proto::metrics::{WillId, WillMark, WillRecord};
use squall_proto::plan::{PublishRange, group_of_stream};

/// What one read brought, for the recorder.
#[derive(Clone, Copy)]
pub(super) struct Read {
    pub(super) bytes: u64,
    /// How long its newest byte waited in the kernel (the receive stamp), once connected.
    pub(super) wait_ns: Option<u64>,
    /// It waited for the end of a read-coalescing window.
    pub(super) coalesced: bool,
}

/// Where a subscriber's deliveries are accounted.
pub enum Receiver {
    Own(ReceiverLedger),
    /// Members of one shared subscription account together.
    Shared(Arc<Mutex<ReceiverLedger>>),
    /// … and when members run on other agents too, the controller settles it.
    Remote(Arc<Mutex<ShareReceipts>>),
}

/// Where one read's messages are accounted.
enum Sink<'a> {
    None,
    Ledger(&'a mut ReceiverLedger),
    Remote(&'a mut ShareReceipts),
}

impl Client {
    /// Handles everything read. `Some(end)` when the connection must end.
    pub(super) fn handle_input(
        &mut self,
        rbuf: &mut BytesMut,
        now: u64,
        read: Read,
        intended_ns: u64,
        connected: &mut bool,
    ) -> Result<Option<End>, Fault> {
        let group = self.group.assignment.group;
        let mut deferred: Vec<Event> = Vec::new();
        // this client's publishes the broker refused, saying why: not owed to subscribers
        let mut refused_n = 0u64;
        {
            let rec = &self.shared.rec;
            let mut shard = rec.shard(self.key);
            shard.counters.bytes_in += read.bytes;
            if let Some(w) = read.wait_ns {
                shard.record(group, Metric::ReadWait, Timing::Raw, w);
            }
            if read.coalesced {
                shard.counters.reads_coalesced += 1;
            }
            let run_tag = self.shared.run_tag;
            let receiver = self.will_receiver;
            let backlog = &mut self.backlog;
            // a resumed session's backlog follows its CONNACK in the same read: watch from there
            let resuming = self.was_connected && !self.spec.clean_start && self.receiver.is_some();
            let ranges = &self.shared.publish_ranges[..];
            let mut shared_guard;
            let mut remote_guard;
            let mut sink = match self.receiver.as_mut() {
                Some(Receiver::Own(l)) => Sink::Ledger(l),
                Some(Receiver::Shared(l)) => {
                    shared_guard = l.lock().unwrap_or_else(|e| e.into_inner());
                    Sink::Ledger(&mut shared_guard)
                }
                Some(Receiver::Remote(r)) => {
                    remote_guard = r.lock().unwrap_or_else(|e| e.into_inner());
                    Sink::Remote(&mut remote_guard)
                }
                None => Sink::None,
            };
            let res = self.conn.handle(rbuf, now, |ev| match ev {
                Event::ConnAck { session_present: true, code: 0, .. } if resuming => {
                    *backlog = Some(Backlog { since: now, last: now, n: 0 });
                    deferred.push(ev)
                }
                Event::Message(m) => {
                    let m = Received { run_tag, now, payload: &m.payload, qos: u8::from(m.qos), receiver };
                    on_message(&mut shard, &mut sink, backlog.as_mut(), ranges, group, m)
                }
                Event::PublishDone { qos, token, sent_ns, code } => {
                    if code >= 0x80 {
                        shard.counters.publish_refused += 1;
                        shard.error(LoadError::PublishRefused { code });
                        refused_n += 1;
                    } else {
                        let m = if qos == QoS::AtLeastOnce {
                            shard.counters.acked_qos1 += 1;
                            Metric::Puback
                        } else {
                            shard.counters.acked_qos2 += 1;
                            Metric::Pubcomp
                        };
                        shard.record_both(
                            group,
                            m,
                            now.saturating_sub(sent_ns),
                            now.saturating_sub(token.intended_ns),
                        );
                    }
                }
                Event::Pong { .. } => {}
                other => deferred.push(other),
            });
            res?;
        }
        if refused_n > 0 {
            self.group.refused[self.local as usize].fetch_add(refused_n, Ordering::Release);
        }
        for ev in deferred {
            match ev {
                Event::ConnAck { session_present, code, elapsed_ns, limits } => {
                    if code != 0 {
                        self.connect_failed(LoadError::ConnectRefused { code });
                        return Ok(Some(End::Retry));
                    }
                    *connected = true;
                    self.keepalive_in_force =
                        limits.server_keepalive_secs.unwrap_or(self.group.assignment.spec.keepalive_secs);
                    if let Some(w) = self.will.as_mut() {
                        w.connected(&mut self.shared.rec.shard(self.key), now, session_present);
                    }
                    if let Some(a) = self.away.take() {
                        a.back(&self.shared.storms, now);
                    }
                    if let Some(failed) = self.lost_unasked.take() {
                        self.shared.outages.back(now, failed + 1);
                    }
                    if self.was_connected && !self.spec.clean_start {
                        let mut s = self.shared.rec.shard(self.key);
                        if session_present {
                            s.counters.sessions_resumed += 1;
                        } else {
                            s.counters.sessions_lost += 1;
                        }
                    }
                    self.was_connected = true;
                    self.shared.rec.connected_inc();
                    self.backoff.reset();
                    {
                        let mut s = self.shared.rec.shard(self.key);
                        s.counters.connects += 1;
                        if let Some(lost_at) = self.lost_at.take() {
                            // back after a loss: backoff, attempts and the broker's time together
                            s.counters.reconnects += 1;
                            s.record(group, Metric::Reconnect, Timing::Raw, now.saturating_sub(lost_at));
                        }
                        s.record(group, Metric::Connect, Timing::Raw, elapsed_ns);
                        s.record(group, Metric::Connect, Timing::Corrected, now.saturating_sub(intended_ns));
                    }
                    if session_present {
                        self.resend(now)?;
                    }
                    if !self.filters.is_empty() {
                        if self.subscribed && !session_present {
                            if let Some(Receiver::Own(l)) = self.receiver.as_mut() {
                                l.mark_offline(!self.spec.clean_start);
                            }
                        }
                        if !self.subscribed || !session_present {
                            let filters = std::mem::take(&mut self.filters);
                            let r = self.conn.subscribe(now, &filters, Token::default());
                            self.filters = filters;
                            if !matches!(r, Ok(Ok(()))) {
                                return Err(Fault::Protocol("could not subscribe"));
                            }
                        } else {
                            self.signal_ready();
                        }
                    } else {
                        self.signal_ready();
                    }
                }
                Event::Abandoned(slots) => {
                    let n = slots
                        .iter()
                        .filter(|s| {
                            matches!(s.kind, Kind::AwaitPubAck | Kind::AwaitPubRec | Kind::AwaitPubComp)
                        })
                        .count();
                    self.shared.rec.shard(self.key).counters.unacked += n as u64;
                }
                Event::SubAck { codes, sent_ns, .. } => {
                    let mut s = self.shared.rec.shard(self.key);
                    s.record(group, Metric::Subscribe, Timing::Raw, now.saturating_sub(sent_ns));
                    for (i, code) in codes.iter().enumerate() {
                        if *code < 0x80 {
                            s.counters.subscribes += 1;
                            if let Some(g) = self.granted.get_mut(i) {
                                *g = Some(*code);
                            }
                        } else {
                            s.counters.subscribe_failures += 1;
                            s.error(LoadError::SubscribeRefused { code: *code });
                        }
                    }
                    drop(s);
                    self.subscribed = true;
                    self.signal_ready();
                }
                Event::Disconnect { code } => {
                    return Ok(Some(self.lost(LoadError::DisconnectedByBroker { code }, *connected)));
                }
                Event::UnsubAck { .. }
                | Event::Message(_)
                | Event::PublishDone { .. }
                | Event::Pong { .. } => {}
            }
        }
        Ok(None)
    }
}

/// What a resumed persistent session was handed: messages published before its CONNACK.
pub(super) struct Backlog {
    /// The CONNACK (session present), and the last backlog message's receipt, ns.
    pub(super) since: u64,
    pub(super) last: u64,
    pub(super) n: u64,
}

/// One message as it was read.
struct Received<'a> {
    run_tag: u32,
    now: u64,
    payload: &'a [u8],
    qos: u8,
    /// The receiver, in the will ledger.
    receiver: u64,
}

/// One received message: latency (under the group that published it, `own_group` if the
/// stream is not the run's), ledger, counters.
#[inline]
fn on_message(
    shard: &mut Shard,
    sink: &mut Sink<'_>,
    backlog: Option<&mut Backlog>,
    ranges: &[PublishRange],
    own_group: u32,
    m: Received<'_>,
) {
    let Received { run_tag, now, payload, qos, receiver } = m;
    shard.counters.count_received(qos);
    let Ok(h) = Header::read(payload) else {
        match WillId::read(payload) {
            Some(w) if w.run_tag == run_tag => {
                shard.counters.wills_received += 1;
                shard.wills.push(WillRecord {
                    mark: WillMark::Delivered,
                    group: w.group,
                    client: w.client,
                    epoch: w.epoch,
                    at_unix_ns: now,
                    receiver,
                    topic: String::new(),
                });
            }
            Some(_) => shard.counters.received_stale += 1,
            None => shard.counters.received_foreign += 1,
        }
        return;
    };
    if h.run_tag != run_tag {
        shard.counters.received_stale += 1;
        return;
    }
    if let Some(b) = backlog
        && h.sent_ns < b.since
    {
        b.n += 1;
        b.last = now;
        shard.counters.backlog_delivered += 1;
    }
    let group = group_of_stream(ranges, h.stream).unwrap_or(own_group);
    shard.record_both(group, Metric::E2e, now.saturating_sub(h.sent_ns), now.saturating_sub(h.intended_ns));
    match sink {
        Sink::Ledger(l) => match l.observe(h.stream, h.seq, qos) {
            Seen::New { out_of_order: true, .. } | Seen::Recovered => {
                shard.counters.out_of_order += 1;
                shard.counters.gaps_filled += 1;
            }
            Seen::Duplicate => shard.counters.duplicates += 1,
            Seen::New { out_of_order: false, skipped } => shard.counters.gaps_opened += skipped,
        },
        // duplicates across agents are the controller's to find
        Sink::Remote(r) => {
            if r.observe(h.stream, h.seq, qos, now) {
                shard.counters.out_of_order += 1;
            }
        }
        Sink::None => {}
    }
}
