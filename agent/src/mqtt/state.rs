//! The connection state machine: bytes and time in, events and bytes out, no I/O.
//!
//! It speaks the client side of MQTT 3.1.1 and 5: CONNECT/CONNACK, PUBLISH both ways at QoS
//! 0/1/2 (PUBACK, PUBREC/PUBREL/PUBCOMP), SUBSCRIBE/SUBACK, UNSUBSCRIBE/UNSUBACK, PINGREQ/
//! PINGRESP on keepalive with a deadline for the answer, DISCONNECT, and a window of
//! unanswered packets bounded by our own limit and the broker's receive maximum.
//!
//! The session (the window of unanswered publishes, QoS 2 ids awaiting release) outlives a
//! network connection: [`Connection::begin`] starts a new one on the same session, and the
//! CONNACK decides whether the open publishes are resent (session present) or abandoned.
//!
//! All times are ns on the engine clock, passed in by the caller.

use std::num::NonZeroU16;

use ntex_bytes::{BufMut, BytePages, ByteString, BytesMut};

use super::codec::{
    AckKind, ConnectSpec, DecodeError, EncodeError, Inbound, IncomingPublish, Protocol, QoS, ServerLimits,
    WireCodec,
};
use super::inflight::{Kind, Slot, Token, Window};

/// Fixed settings of a connection.
#[derive(Debug, Clone)]
pub struct Options {
    pub protocol: Protocol,
    /// 0 turns keepalive off.
    pub keepalive_secs: u16,
    /// Our own limit on unanswered packets (the broker's receive maximum may lower it).
    pub max_inflight: u16,
    /// How long CONNACK may take before the attempt is abandoned.
    pub connect_timeout_ns: u64,
    /// How long PUBACK/PUBREC/PUBCOMP/SUBACK/PINGRESP may take. A late PINGRESP ends the
    /// connection; a late publish acknowledgement is only counted (its latency is still
    /// recorded when it comes).
    pub ack_timeout_ns: u64,
    /// Largest packet we accept from the broker; 0 = unlimited.
    pub max_inbound_packet: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// Where a connection stands in its MQTT lifecycle (the run's phases are `client::Phase`).
pub enum ConnState {
    Idle,
    AwaitingConnAck,
    Connected,
    Closed,
}

/// What happened, for the client to act on and measure.
#[derive(Debug)]
pub enum Event {
    /// CONNACK. `code` 0 is success; anything else refused the connection (phase is Closed).
    ConnAck {
        session_present: bool,
        code: u8,
        limits: Box<ServerLimits>,
        /// CONNECT written → CONNACK decoded.
        elapsed_ns: u64,
    },
    /// The broker had no session for us: these publishes were sent and never acknowledged.
    Abandoned(Vec<Slot>),
    /// A message from the broker (a QoS 2 redelivery before PUBREL is not repeated).
    Message(IncomingPublish),
    /// One of our QoS 1/2 publishes is finished: PUBACK, PUBCOMP, or a refusal in PUBACK/PUBREC
    /// (`code` ≥ 0x80).
    PublishDone {
        qos: QoS,
        token: Token,
        sent_ns: u64,
        code: u8,
    },
    SubAck {
        token: Token,
        codes: Vec<u8>,
        sent_ns: u64,
    },
    UnsubAck {
        token: Token,
        sent_ns: u64,
    },
    Pong {
        sent_ns: u64,
    },
    /// The broker sent DISCONNECT (MQTT 5), with its reason code.
    Disconnect {
        code: u8,
    },
}

/// Why the connection cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    #[error("malformed packet from the broker: {0:?}")]
    Decode(DecodeError),
    #[error("protocol violation by the broker: {0}")]
    Protocol(&'static str),
    #[error("no CONNACK within the connect timeout")]
    ConnAckTimeout,
    #[error("no PINGRESP within the ack timeout")]
    PingTimeout,
    #[error("could not encode a packet: {0:?}")]
    Encode(EncodeError),
    #[error("not connected")]
    NotConnected,
}

/// Why a publish was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The window of unanswered packets is full; try again after an acknowledgement.
    WindowFull,
    NotConnected,
}

pub struct Connection {
    codec: WireCodec,
    opts: Options,
    phase: ConnState,
    connect_sent_ns: u64,
    last_sent_ns: u64,
    ping_sent_ns: Option<u64>,
    server_receive_max: u16,
    window: Window,
    // incoming QoS 2 ids we answered with PUBREC and await PUBREL for
    awaiting_rel: Vec<NonZeroU16>,
    out: Option<BytePages>,
}

impl Connection {
    pub fn new(opts: Options) -> Connection {
        Connection {
            codec: WireCodec::new(opts.protocol, opts.max_inbound_packet),
            opts,
            phase: ConnState::Idle,
            connect_sent_ns: 0,
            last_sent_ns: 0,
            ping_sent_ns: None,
            server_receive_max: u16::MAX,
            window: Window::new(),
            awaiting_rel: Vec::new(),
            out: None,
        }
    }

    pub fn phase(&self) -> ConnState {
        self.phase
    }

    pub fn is_connected(&self) -> bool {
        self.phase == ConnState::Connected
    }

    pub fn protocol(&self) -> Protocol {
        self.opts.protocol
    }

    /// Unanswered packets in the window.
    pub fn in_flight(&self) -> usize {
        self.window.len()
    }

    /// When the last packet was queued to be written (ns): the broker's keepalive counts from it.
    pub fn last_sent_ns(&self) -> u64 {
        self.last_sent_ns
    }

    /// How many more packets with an id may be sent now.
    pub fn window_room(&self) -> usize {
        let limit = self.opts.max_inflight.min(self.server_receive_max) as usize;
        limit.saturating_sub(self.window.len())
    }

    /// Bytes waiting to be written, if any. The caller writes them in order.
    pub fn take_output(&mut self) -> Option<BytePages> {
        self.out.take().filter(|p| !p.is_empty())
    }

    pub fn has_output(&self) -> bool {
        self.out.as_ref().is_some_and(|p| !p.is_empty())
    }

    /// Starts a new network connection on this session: writes CONNECT. With `clean_start`
    /// the session state is dropped first (open publishes come back in [`Event::Abandoned`]
    /// on CONNACK).
    pub fn begin(&mut self, spec: &ConnectSpec, now: u64) -> Result<(), Fault> {
        self.codec = WireCodec::new(self.opts.protocol, self.opts.max_inbound_packet);
        self.out = None;
        self.ping_sent_ns = None;
        self.server_receive_max = u16::MAX;
        if spec.clean_start {
            self.awaiting_rel.clear();
        }
        let mut out = BytePages::default();
        self.codec.encode_connect(spec, &mut out).map_err(Fault::Encode)?;
        self.out = Some(out);
        self.phase = ConnState::AwaitingConnAck;
        self.connect_sent_ns = now;
        self.last_sent_ns = now;
        Ok(())
    }

    /// The network connection is gone (closed by either side or failed). Session state stays
    /// for a resumed session; returns whether anything was in flight.
    pub fn lost(&mut self) -> usize {
        self.phase = ConnState::Closed;
        self.out = None;
        self.ping_sent_ns = None;
        self.window.len()
    }

    /// Empties the session's window: open packets that will never be answered.
    pub fn abandon_open(&mut self) -> Vec<Slot> {
        self.window.drain_open()
    }

    /// Decodes every whole packet in `buf` and reacts to it, calling `on_event` for each
    /// event. Answers (PUBACK, PUBREC, PUBREL, PUBCOMP) are queued as output.
    pub fn handle(
        &mut self,
        buf: &mut BytesMut,
        now: u64,
        mut on_event: impl FnMut(Event),
    ) -> Result<(), Fault> {
        while let Some(pkt) = self.codec.decode(buf).map_err(Fault::Decode)? {
            self.handle_packet(pkt, now, &mut on_event)?;
            if self.phase == ConnState::Closed {
                break;
            }
        }
        Ok(())
    }

    fn handle_packet(
        &mut self,
        pkt: Inbound,
        now: u64,
        on_event: &mut impl FnMut(Event),
    ) -> Result<(), Fault> {
        if self.phase == ConnState::AwaitingConnAck && !matches!(pkt, Inbound::ConnAck { .. }) {
            return Err(Fault::Protocol("a packet before CONNACK"));
        }
        match pkt {
            Inbound::ConnAck { session_present, code, limits } => {
                if self.phase != ConnState::AwaitingConnAck {
                    return Err(Fault::Protocol("a second CONNACK"));
                }
                let elapsed_ns = now.saturating_sub(self.connect_sent_ns);
                if code != 0 {
                    self.phase = ConnState::Closed;
                    on_event(Event::ConnAck { session_present, code, limits, elapsed_ns });
                    return Ok(());
                }
                self.phase = ConnState::Connected;
                self.server_receive_max = limits.receive_max.max(1);
                if let Some(max) = limits.max_packet_size {
                    self.codec.set_max_outbound(max);
                }
                if !session_present {
                    self.awaiting_rel.clear();
                    let open = self.window.drain_open();
                    if !open.is_empty() {
                        on_event(Event::Abandoned(open));
                    }
                } else {
                    // Subscriptions belong to the session: their answers, if any, were lost
                    // with the old connection. Only publishes are resumed.
                    let stale: Vec<Slot> = self
                        .window
                        .open_slots()
                        .filter(|s| matches!(s.kind, Kind::Subscribe | Kind::Unsubscribe))
                        .copied()
                        .collect();
                    for s in stale {
                        self.window.complete(s.pid);
                    }
                    // QoS 2 past PUBREC: resend PUBREL (the spec's resend rule).
                    let rels: Vec<NonZeroU16> = self
                        .window
                        .open_slots()
                        .filter(|s| s.kind == Kind::AwaitPubComp)
                        .map(|s| s.pid)
                        .collect();
                    for pid in rels {
                        self.send_ack(AckKind::PubRel, pid, now)?;
                    }
                }
                on_event(Event::ConnAck { session_present, code, limits, elapsed_ns });
            }
            Inbound::Publish(p) => {
                if self.phase != ConnState::Connected {
                    return Err(Fault::Protocol("PUBLISH on a closed connection"));
                }
                match p.qos {
                    QoS::AtMostOnce => on_event(Event::Message(p)),
                    QoS::AtLeastOnce => {
                        let pid = p.pid.ok_or(Fault::Protocol("QoS 1 PUBLISH without packet id"))?;
                        on_event(Event::Message(p));
                        self.send_ack(AckKind::PubAck, pid, now)?;
                    }
                    QoS::ExactlyOnce => {
                        let pid = p.pid.ok_or(Fault::Protocol("QoS 2 PUBLISH without packet id"))?;
                        if !self.awaiting_rel.contains(&pid) {
                            self.awaiting_rel.push(pid);
                            on_event(Event::Message(p));
                        }
                        self.send_ack(AckKind::PubRec, pid, now)?;
                    }
                }
            }
            Inbound::PubAck { pid, code } => {
                let slot = self.expect(pid, Kind::AwaitPubAck, "PUBACK for no QoS 1 publish in flight")?;
                self.window.complete(pid);
                on_event(Event::PublishDone {
                    qos: QoS::AtLeastOnce,
                    token: slot.token,
                    sent_ns: slot.sent_ns,
                    code,
                });
            }
            Inbound::PubRec { pid, code } => {
                let slot = self.expect(pid, Kind::AwaitPubRec, "PUBREC for no QoS 2 publish in flight")?;
                if code >= 0x80 {
                    self.window.complete(pid);
                    on_event(Event::PublishDone {
                        qos: QoS::ExactlyOnce,
                        token: slot.token,
                        sent_ns: slot.sent_ns,
                        code,
                    });
                } else {
                    if let Some(s) = self.window.get_mut(pid) {
                        s.kind = Kind::AwaitPubComp;
                    }
                    self.send_ack(AckKind::PubRel, pid, now)?;
                }
            }
            Inbound::PubComp { pid } => {
                let slot = self.expect(pid, Kind::AwaitPubComp, "PUBCOMP for no PUBREL in flight")?;
                self.window.complete(pid);
                on_event(Event::PublishDone {
                    qos: QoS::ExactlyOnce,
                    token: slot.token,
                    sent_ns: slot.sent_ns,
                    code: 0,
                });
            }
            Inbound::PubRel { pid } => {
                // answered even when unknown: the spec's rule for a PUBREL after a reconnect
                self.awaiting_rel.retain(|p| *p != pid);
                self.send_ack(AckKind::PubComp, pid, now)?;
            }
            Inbound::SubAck { pid, codes } => {
                let slot = self.expect(pid, Kind::Subscribe, "SUBACK for no SUBSCRIBE in flight")?;
                self.window.complete(pid);
                on_event(Event::SubAck { token: slot.token, codes, sent_ns: slot.sent_ns });
            }
            Inbound::UnsubAck { pid } => {
                let slot = self.expect(pid, Kind::Unsubscribe, "UNSUBACK for no UNSUBSCRIBE in flight")?;
                self.window.complete(pid);
                on_event(Event::UnsubAck { token: slot.token, sent_ns: slot.sent_ns });
            }
            Inbound::PingResp => {
                if let Some(sent_ns) = self.ping_sent_ns.take() {
                    on_event(Event::Pong { sent_ns });
                }
            }
            Inbound::Disconnect { code } => {
                self.phase = ConnState::Closed;
                on_event(Event::Disconnect { code });
            }
            Inbound::Unexpected(_) => return Err(Fault::Protocol("a packet only clients send")),
        }
        Ok(())
    }

    fn expect(&mut self, pid: NonZeroU16, kind: Kind, what: &'static str) -> Result<Slot, Fault> {
        match self.window.get_mut(pid) {
            Some(s) if s.kind == kind => Ok(*s),
            _ => Err(Fault::Protocol(what)),
        }
    }

    fn send_ack(&mut self, kind: AckKind, pid: NonZeroU16, now: u64) -> Result<(), Fault> {
        let codec = &self.codec;
        let out = self.out.get_or_insert_with(BytePages::default);
        codec.encode_ack(kind, pid, out).map_err(Fault::Encode)?;
        self.last_sent_ns = now;
        Ok(())
    }

    /// Queues a PUBLISH. `write_payload` must put exactly `payload_len` bytes. For QoS 1/2 the
    /// publish takes a window slot and `token` comes back in [`Event::PublishDone`].
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn publish(
        &mut self,
        now: u64,
        topic: &ByteString,
        qos: QoS,
        retain: bool,
        token: Token,
        payload_len: u32,
        write_payload: impl FnOnce(&mut BytePages),
    ) -> Result<Result<(), Refusal>, Fault> {
        if self.phase != ConnState::Connected {
            return Ok(Err(Refusal::NotConnected));
        }
        let pid = match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce | QoS::ExactlyOnce => {
                if self.window_room() == 0 {
                    return Ok(Err(Refusal::WindowFull));
                }
                let kind = if qos == QoS::AtLeastOnce { Kind::AwaitPubAck } else { Kind::AwaitPubRec };
                Some(self.window.push(kind, now, token))
            }
        };
        let codec = &self.codec;
        let out = self.out.get_or_insert_with(BytePages::default);
        codec
            .encode_publish_header(topic, qos, retain, false, pid, payload_len, out)
            .map_err(Fault::Encode)?;
        let before = out.len();
        write_payload(out);
        debug_assert_eq!(out.len() - before, payload_len as usize);
        self.last_sent_ns = now;
        Ok(Ok(()))
    }

    /// After a CONNACK with session present: resends every open publish still waiting for
    /// PUBACK or PUBREC, with DUP set and its original id. `write` rebuilds the payload from
    /// the token and original send time and returns (topic, QoS, retain, payload length).
    pub fn resend_open<F>(&mut self, now: u64, mut write: F) -> Result<usize, Fault>
    where
        F: FnMut(&Slot, &mut BytePages) -> Option<(ByteString, bool, u32)>,
    {
        let slots: Vec<Slot> = self
            .window
            .open_slots()
            .filter(|s| matches!(s.kind, Kind::AwaitPubAck | Kind::AwaitPubRec))
            .copied()
            .collect();
        let mut n = 0;
        for s in &slots {
            let qos = if s.kind == Kind::AwaitPubAck { QoS::AtLeastOnce } else { QoS::ExactlyOnce };
            // header into a scratch buffer first: the payload length comes from the writer
            let mut payload = BytePages::default();
            let Some((topic, retain, len)) = write(s, &mut payload) else { continue };
            let codec = &self.codec;
            let out = self.out.get_or_insert_with(BytePages::default);
            codec
                .encode_publish_header(&topic, qos, retain, true, Some(s.pid), len, out)
                .map_err(Fault::Encode)?;
            while let Some(page) = payload.take() {
                out.put_slice(&page);
            }
            n += 1;
        }
        if n > 0 {
            self.last_sent_ns = now;
        }
        Ok(n)
    }

    /// Queues a SUBSCRIBE (one packet for all filters). Takes a window slot.
    pub fn subscribe(
        &mut self,
        now: u64,
        filters: &[(ByteString, QoS)],
        token: Token,
    ) -> Result<Result<(), Refusal>, Fault> {
        if self.phase != ConnState::Connected {
            return Ok(Err(Refusal::NotConnected));
        }
        if self.window_room() == 0 {
            return Ok(Err(Refusal::WindowFull));
        }
        let pid = self.window.push(Kind::Subscribe, now, token);
        let codec = &self.codec;
        let out = self.out.get_or_insert_with(BytePages::default);
        codec.encode_subscribe(pid, filters, out).map_err(Fault::Encode)?;
        self.last_sent_ns = now;
        Ok(Ok(()))
    }

    pub fn unsubscribe(
        &mut self,
        now: u64,
        filters: &[ByteString],
        token: Token,
    ) -> Result<Result<(), Refusal>, Fault> {
        if self.phase != ConnState::Connected {
            return Ok(Err(Refusal::NotConnected));
        }
        if self.window_room() == 0 {
            return Ok(Err(Refusal::WindowFull));
        }
        let pid = self.window.push(Kind::Unsubscribe, now, token);
        let codec = &self.codec;
        let out = self.out.get_or_insert_with(BytePages::default);
        codec.encode_unsubscribe(pid, filters, out).map_err(Fault::Encode)?;
        self.last_sent_ns = now;
        Ok(Ok(()))
    }

    /// Queues DISCONNECT (reason 0, or 4 "with will" on MQTT 5) and closes the session's
    /// connection. Open publishes stay in the window (see [`Connection::abandon_open`]).
    pub fn disconnect(&mut self, code: u8) -> Result<(), Fault> {
        if self.phase == ConnState::Connected {
            let codec = &self.codec;
            let out = self.out.get_or_insert_with(BytePages::default);
            codec.encode_disconnect(code, out).map_err(Fault::Encode)?;
        }
        self.phase = ConnState::Closed;
        Ok(())
    }

    /// The next time [`Connection::on_timer`] has work to do.
    pub fn next_deadline(&self) -> Option<u64> {
        let mut d: Option<u64> = None;
        let mut at = |t: u64| d = Some(d.map_or(t, |d| d.min(t)));
        match self.phase {
            ConnState::AwaitingConnAck => at(self.connect_sent_ns + self.opts.connect_timeout_ns),
            ConnState::Connected => {
                match self.ping_sent_ns {
                    Some(sent) => at(sent + self.opts.ack_timeout_ns),
                    None if self.opts.keepalive_secs > 0 => {
                        at(self.last_sent_ns + self.opts.keepalive_secs as u64 * 1_000_000_000)
                    }
                    None => {}
                }
                if let Some(sent) = self.window.oldest_unflagged_sent_ns() {
                    at(sent + self.opts.ack_timeout_ns);
                }
            }
            ConnState::Idle | ConnState::Closed => {}
        }
        d
    }

    /// Does whatever is due at `now`: PINGREQ when nothing was sent for a keepalive, a fault
    /// when CONNACK or PINGRESP is late. Returns how many packets became overdue (late
    /// acknowledgements, each counted once).
    pub fn on_timer(&mut self, now: u64) -> Result<u32, Fault> {
        match self.phase {
            ConnState::AwaitingConnAck => {
                if now >= self.connect_sent_ns + self.opts.connect_timeout_ns {
                    self.phase = ConnState::Closed;
                    return Err(Fault::ConnAckTimeout);
                }
                Ok(0)
            }
            ConnState::Connected => {
                match self.ping_sent_ns {
                    Some(sent) if now >= sent + self.opts.ack_timeout_ns => {
                        self.phase = ConnState::Closed;
                        return Err(Fault::PingTimeout);
                    }
                    None if self.opts.keepalive_secs > 0
                        && now >= self.last_sent_ns + self.opts.keepalive_secs as u64 * 1_000_000_000 =>
                    {
                        let codec = &self.codec;
                        let out = self.out.get_or_insert_with(BytePages::default);
                        codec.encode_pingreq(out).map_err(Fault::Encode)?;
                        self.ping_sent_ns = Some(now);
                        self.last_sent_ns = now;
                    }
                    _ => {}
                }
                Ok(self.window.mark_overdue(now.saturating_sub(self.opts.ack_timeout_ns)))
            }
            ConnState::Idle | ConnState::Closed => Ok(0),
        }
    }

    /// Sends PINGREQ now (used by `squall check` for a round trip without a broker's help).
    pub fn ping(&mut self, now: u64) -> Result<(), Fault> {
        if self.phase != ConnState::Connected {
            return Err(Fault::NotConnected);
        }
        let codec = &self.codec;
        let out = self.out.get_or_insert_with(BytePages::default);
        codec.encode_pingreq(out).map_err(Fault::Encode)?;
        self.ping_sent_ns = Some(now);
        self.last_sent_ns = now;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
