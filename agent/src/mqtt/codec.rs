//! Glue over ntex-mqtt's v3.1.1 and v5 codecs: one framing step, one inbound enum, one set of
//! encoders, whatever the protocol. Nothing outside `mqtt/` sees ntex types other than
//! `ByteString`/`Bytes` (which are just buffers).
//!
//! Framing is ours: a packet is handed to the codec only once all of it is buffered, so the
//! codec never returns a PUBLISH with a partial payload and never holds half a packet.

use std::num::NonZeroU16;

use ntex_bytes::{BytePages, ByteString, Bytes, BytesMut};
use ntex_codec::{Decoder, Encoder};
use ntex_mqtt::{v3, v5};

pub use ntex_mqtt::QoS;
pub use ntex_mqtt::error::{DecodeError, EncodeError};
pub use squall_proto::protocol::{Protocol, connack_meaning, reason_meaning};

/// A QoS from its number.
pub fn qos_from_u8(q: u8) -> Option<QoS> {
    match q {
        0 => Some(QoS::AtMostOnce),
        1 => Some(QoS::AtLeastOnce),
        2 => Some(QoS::ExactlyOnce),
        _ => None,
    }
}

/// The last will of a connection.
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 will delay interval, seconds; ignored on 3.1.1.
    pub delay_secs: u32,
}

/// What a CONNECT carries.
#[derive(Debug, Clone)]
pub struct ConnectSpec {
    pub client_id: ByteString,
    pub keepalive_secs: u16,
    pub clean_start: bool,
    /// MQTT 5 session expiry interval, seconds; on 3.1.1 a persistent session is `clean_start = false`.
    pub session_expiry_secs: u32,
    pub username: Option<ByteString>,
    pub password: Option<Bytes>,
    pub will: Option<Will>,
    /// MQTT 5 receive maximum we announce (how many QoS 1/2 the broker may send us unacknowledged).
    pub receive_max: u16,
}

impl ConnectSpec {
    /// A clean session with no will: `client_id`, credentials if given, this keepalive.
    pub fn clean(
        client_id: &str,
        username: Option<&str>,
        password: Option<&str>,
        keepalive_secs: u16,
    ) -> ConnectSpec {
        ConnectSpec {
            client_id: ByteString::from(client_id),
            keepalive_secs,
            clean_start: true,
            session_expiry_secs: 0,
            username: username.map(ByteString::from),
            password: password.map(|p| Bytes::copy_from_slice(p.as_bytes())),
            will: None,
            receive_max: 1000,
        }
    }
}

/// The broker's limits and features, from CONNACK properties (MQTT 5) or the 3.1.1 defaults.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServerLimits {
    pub receive_max: u16,
    pub max_qos: u8,
    pub max_packet_size: Option<u32>,
    pub retain_available: bool,
    pub wildcard_subscription_available: bool,
    pub shared_subscription_available: bool,
    pub subscription_identifiers_available: bool,
    pub topic_alias_max: u16,
    pub server_keepalive_secs: Option<u16>,
    pub session_expiry_secs: Option<u32>,
    pub assigned_client_id: Option<String>,
    pub reason_string: Option<String>,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            receive_max: u16::MAX,
            max_qos: 2,
            max_packet_size: None,
            retain_available: true,
            wildcard_subscription_available: true,
            shared_subscription_available: true,
            subscription_identifiers_available: true,
            topic_alias_max: 0,
            server_keepalive_secs: None,
            session_expiry_secs: None,
            assigned_client_id: None,
            reason_string: None,
        }
    }
}

/// A packet from the broker, protocol-independent. Reason codes are raw bytes: 3.1.1 CONNACK
/// return codes 0–5, MQTT 5 reason codes otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    ConnAck {
        session_present: bool,
        code: u8,
        limits: Box<ServerLimits>,
    },
    Publish(IncomingPublish),
    PubAck {
        pid: NonZeroU16,
        code: u8,
    },
    PubRec {
        pid: NonZeroU16,
        code: u8,
    },
    PubRel {
        pid: NonZeroU16,
    },
    PubComp {
        pid: NonZeroU16,
    },
    /// One code per filter: granted QoS 0–2, or ≥ 0x80 for a refusal.
    SubAck {
        pid: NonZeroU16,
        codes: Vec<u8>,
    },
    UnsubAck {
        pid: NonZeroU16,
    },
    PingResp,
    Disconnect {
        code: u8,
    },
    /// A packet a server must not send a client (CONNECT, SUBSCRIBE, PINGREQ …); its name.
    Unexpected(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingPublish {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    pub pid: Option<NonZeroU16>,
}

/// Length of the whole packet at the start of `buf` (fixed header included), once known.
/// Errors on a malformed remaining-length field.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    let mut remaining: usize = 0;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some(1 + i + 1 + remaining));
        }
    }
    Err(DecodeError::MalformedPacket)
}

/// Whether a whole PUBLISH at the front of `buf` (of `len` bytes) has room in its remaining
/// length for its own header (topic, packet id, and on MQTT 5 its properties). ntex-mqtt 9.0
/// subtracts that header from the remaining length unchecked: a PUBLISH declaring less
/// overflows it (a panic in a debug build, a payload length near 4 GiB in a release one). Found
/// by `arbitrary_bytes_never_panic`; a hostile broker could send one on purpose.
fn publish_fits(buf: &[u8], len: usize, v5: bool) -> bool {
    if buf.first().is_none_or(|b| b >> 4 != 3) {
        return true; // not a PUBLISH
    }
    // the fixed header: one byte, then 1 to 4 of remaining length
    let Some(fixed) = (1..5).find(|&i| buf.get(i).is_some_and(|b| b & 0x80 == 0)).map(|i| i + 1) else {
        return false;
    };
    let (Some(&hi), Some(&lo)) = (buf.get(fixed), buf.get(fixed + 1)) else { return false };
    let mut header = fixed + 2 + u16::from_be_bytes([hi, lo]) as usize;
    if (buf[0] >> 1) & 0b11 != 0 {
        header += 2; // the packet id
    }
    if v5 {
        // the properties' length, a variable byte integer, and the properties
        let mut props = 0usize;
        let mut i = 0;
        loop {
            let Some(&b) = buf.get(header + i).filter(|_| i < 4) else { return false };
            props |= ((b & 0x7f) as usize) << (7 * i);
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        header += i + props;
    }
    header <= len
}

/// A protocol's codec. Cheap to make; one per connection.
///
/// PUBLISH headers go through a second codec instance of their own: after a PUBLISH header
/// ntex's v5 encoder expects the payload as `PayloadChunk`s and refuses any other packet until
/// it has them, but squall writes payloads straight into the send buffer. The publish encoder
/// is never asked for anything else, so its payload bookkeeping never gets in the way.
pub struct WireCodec {
    main: Inner,
    publish: Inner,
    // largest packet accepted from the broker; 0 = unlimited
    max_inbound: u32,
}

enum Inner {
    V3(v3::codec::Codec),
    V5(v5::codec::Codec),
}

impl Inner {
    fn new(protocol: Protocol, max_inbound: u32) -> Inner {
        match protocol {
            Protocol::V311 => {
                let c = v3::codec::Codec::new();
                c.set_max_size(max_inbound);
                Inner::V3(c)
            }
            Protocol::V5 => {
                let c = v5::codec::Codec::new();
                c.set_max_inbound_size(max_inbound);
                Inner::V5(c)
            }
        }
    }
}

impl WireCodec {
    pub fn new(protocol: Protocol, max_inbound: u32) -> WireCodec {
        WireCodec {
            main: Inner::new(protocol, max_inbound),
            publish: Inner::new(protocol, max_inbound),
            max_inbound,
        }
    }

    pub fn protocol(&self) -> Protocol {
        match self.main {
            Inner::V3(_) => Protocol::V311,
            Inner::V5(_) => Protocol::V5,
        }
    }

    /// Sets the largest packet we may send (from the broker's CONNACK); 0 = unlimited.
    pub fn set_max_outbound(&self, size: u32) {
        for c in [&self.main, &self.publish] {
            if let Inner::V5(c) = c {
                c.set_max_outbound_size(size);
            }
        }
    }

    /// Decodes one whole packet from the front of `buf`, if one is fully buffered.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Inbound>, DecodeError> {
        let Some(len) = frame_len(buf)? else {
            return Ok(None);
        };
        // refuse an oversized packet as soon as its length is known, not once it is buffered
        if self.max_inbound != 0 && len > self.max_inbound as usize + 5 {
            return Err(DecodeError::MaxSizeExceeded { size: len as u32, max_size: self.max_inbound });
        }
        if buf.len() < len {
            return Ok(None);
        }
        if !publish_fits(buf, len, matches!(self.main, Inner::V5(_))) {
            return Err(DecodeError::MalformedPacket);
        }
        match &self.main {
            Inner::V3(c) => match c.decode(buf)? {
                Some(v3::codec::Decoded::Packet(p, _)) => Ok(Some(inbound_v3(p))),
                Some(v3::codec::Decoded::Publish(p, payload, _)) => {
                    Ok(Some(Inbound::Publish(IncomingPublish {
                        topic: p.topic,
                        payload,
                        qos: p.qos,
                        retain: p.retain,
                        dup: p.dup,
                        pid: p.packet_id,
                    })))
                }
                // whole packets only, so the codec never splits a payload
                Some(v3::codec::Decoded::PayloadChunk(..)) | None => Err(DecodeError::MalformedPacket),
            },
            Inner::V5(c) => match c.decode(buf)? {
                Some(v5::codec::Decoded::Packet(p, _)) => Ok(Some(inbound_v5(p))),
                Some(v5::codec::Decoded::Publish(p, payload, _)) => {
                    Ok(Some(Inbound::Publish(IncomingPublish {
                        topic: p.topic,
                        payload,
                        qos: p.qos,
                        retain: p.retain,
                        dup: p.dup,
                        pid: p.packet_id,
                    })))
                }
                Some(v5::codec::Decoded::PayloadChunk(..)) | None => Err(DecodeError::MalformedPacket),
            },
        }
    }

    pub fn encode_connect(&self, spec: &ConnectSpec, dst: &mut BytePages) -> Result<(), EncodeError> {
        match &self.main {
            Inner::V3(c) => {
                let pkt = v3::codec::Connect {
                    clean_session: spec.clean_start,
                    keep_alive: spec.keepalive_secs,
                    last_will: spec.will.as_ref().map(|w| v3::codec::LastWill {
                        qos: w.qos,
                        retain: w.retain,
                        topic: w.topic.clone(),
                        message: w.payload.clone(),
                    }),
                    client_id: spec.client_id.clone(),
                    username: spec.username.clone(),
                    password: spec.password.clone(),
                };
                c.encodev(v3::codec::Packet::from(pkt).into(), dst)
            }
            Inner::V5(c) => {
                let pkt = v5::codec::Connect {
                    clean_start: spec.clean_start,
                    keep_alive: spec.keepalive_secs,
                    session_expiry_interval_secs: spec.session_expiry_secs,
                    receive_max: NonZeroU16::new(spec.receive_max),
                    last_will: spec.will.as_ref().map(|w| v5::codec::LastWill {
                        qos: w.qos,
                        retain: w.retain,
                        topic: w.topic.clone(),
                        message: w.payload.clone(),
                        will_delay_interval_sec: (w.delay_secs > 0).then_some(w.delay_secs),
                        correlation_data: None,
                        message_expiry_interval: None,
                        content_type: None,
                        user_properties: Vec::new(),
                        is_utf8_payload: None,
                        response_topic: None,
                    }),
                    client_id: spec.client_id.clone(),
                    username: spec.username.clone(),
                    password: spec.password.clone(),
                    ..Default::default()
                };
                c.encodev(v5::codec::Packet::from(pkt).into(), dst)
            }
        }
    }

    /// Encodes a PUBLISH's fixed and variable header for a payload of `payload_len` bytes. The
    /// caller appends exactly `payload_len` payload bytes to `dst` right after; squall writes
    /// its measurement header straight into the send buffer this way, with no per-message
    /// allocation.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn encode_publish_header(
        &self,
        topic: &ByteString,
        qos: QoS,
        retain: bool,
        dup: bool,
        pid: Option<NonZeroU16>,
        payload_len: u32,
        dst: &mut BytePages,
    ) -> Result<(), EncodeError> {
        match &self.publish {
            Inner::V3(c) => {
                let pkt = v3::codec::Publish {
                    dup,
                    retain,
                    qos,
                    topic: topic.clone(),
                    packet_id: pid,
                    payload_size: payload_len,
                };
                c.encodev(v3::codec::Encoded::Publish(pkt, None), dst)
            }
            Inner::V5(c) => {
                let pkt = v5::codec::Publish {
                    dup,
                    retain,
                    qos,
                    topic: topic.clone(),
                    packet_id: pid,
                    payload_size: payload_len,
                    properties: Default::default(),
                };
                c.encodev(v5::codec::Encoded::Publish(pkt, None), dst)
            }
        }
    }

    pub fn encode_subscribe(
        &self,
        pid: NonZeroU16,
        filters: &[(ByteString, QoS)],
        dst: &mut BytePages,
    ) -> Result<(), EncodeError> {
        match &self.main {
            Inner::V3(c) => c.encodev(
                v3::codec::Packet::Subscribe { packet_id: pid, topic_filters: filters.to_vec() }.into(),
                dst,
            ),
            Inner::V5(c) => c.encodev(
                v5::codec::Packet::Subscribe(v5::codec::Subscribe {
                    packet_id: pid,
                    id: None,
                    user_properties: Vec::new(),
                    topic_filters: filters
                        .iter()
                        .map(|(f, qos)| {
                            (f.clone(), v5::codec::SubscriptionOptions { qos: *qos, ..Default::default() })
                        })
                        .collect(),
                })
                .into(),
                dst,
            ),
        }
    }

    pub fn encode_unsubscribe(
        &self,
        pid: NonZeroU16,
        filters: &[ByteString],
        dst: &mut BytePages,
    ) -> Result<(), EncodeError> {
        match &self.main {
            Inner::V3(c) => c.encodev(
                v3::codec::Packet::Unsubscribe { packet_id: pid, topic_filters: filters.to_vec() }.into(),
                dst,
            ),
            Inner::V5(c) => c.encodev(
                v5::codec::Packet::Unsubscribe(v5::codec::Unsubscribe {
                    packet_id: pid,
                    user_properties: Vec::new(),
                    topic_filters: filters.to_vec(),
                })
                .into(),
                dst,
            ),
        }
    }

    /// PUBACK, PUBREC, PUBREL or PUBCOMP with a success code.
    pub fn encode_ack(&self, kind: AckKind, pid: NonZeroU16, dst: &mut BytePages) -> Result<(), EncodeError> {
        match &self.main {
            Inner::V3(c) => {
                let p = match kind {
                    AckKind::PubAck => v3::codec::Packet::PublishAck { packet_id: pid },
                    AckKind::PubRec => v3::codec::Packet::PublishReceived { packet_id: pid },
                    AckKind::PubRel => v3::codec::Packet::PublishRelease { packet_id: pid },
                    AckKind::PubComp => v3::codec::Packet::PublishComplete { packet_id: pid },
                };
                c.encodev(p.into(), dst)
            }
            Inner::V5(c) => {
                let ack = v5::codec::PublishAck { packet_id: pid, ..Default::default() };
                let ack2 = v5::codec::PublishAck2 { packet_id: pid, ..Default::default() };
                let p = match kind {
                    AckKind::PubAck => v5::codec::Packet::PublishAck(ack),
                    AckKind::PubRec => v5::codec::Packet::PublishReceived(ack),
                    AckKind::PubRel => v5::codec::Packet::PublishRelease(ack2),
                    AckKind::PubComp => v5::codec::Packet::PublishComplete(ack2),
                };
                c.encodev(p.into(), dst)
            }
        }
    }

    pub fn encode_pingreq(&self, dst: &mut BytePages) -> Result<(), EncodeError> {
        match &self.main {
            Inner::V3(c) => c.encodev(v3::codec::Packet::PingRequest.into(), dst),
            Inner::V5(c) => c.encodev(v5::codec::Packet::PingRequest.into(), dst),
        }
    }

    /// DISCONNECT; `code` is the MQTT 5 reason (0 normal, 4 with will); 3.1.1 has none.
    pub fn encode_disconnect(&self, code: u8, dst: &mut BytePages) -> Result<(), EncodeError> {
        match &self.main {
            Inner::V3(c) => c.encodev(v3::codec::Packet::Disconnect.into(), dst),
            Inner::V5(c) => {
                let reason = v5::codec::DisconnectReasonCode::try_from(code)
                    .unwrap_or(v5::codec::DisconnectReasonCode::NormalDisconnection);
                c.encodev(v5::codec::Packet::Disconnect(v5::codec::Disconnect::new(reason)).into(), dst)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
}

fn inbound_v3(p: v3::codec::Packet) -> Inbound {
    use v3::codec::Packet as P;
    match p {
        P::ConnectAck(ack) => Inbound::ConnAck {
            session_present: ack.session_present,
            code: u8::from(ack.return_code),
            limits: Box::default(),
        },
        P::PublishAck { packet_id } => Inbound::PubAck { pid: packet_id, code: 0 },
        P::PublishReceived { packet_id } => Inbound::PubRec { pid: packet_id, code: 0 },
        P::PublishRelease { packet_id } => Inbound::PubRel { pid: packet_id },
        P::PublishComplete { packet_id } => Inbound::PubComp { pid: packet_id },
        P::SubscribeAck { packet_id, status } => Inbound::SubAck {
            pid: packet_id,
            codes: status
                .iter()
                .map(|s| match s {
                    v3::codec::SubscribeReturnCode::Success(q) => u8::from(*q),
                    v3::codec::SubscribeReturnCode::Failure => 0x80,
                })
                .collect(),
        },
        P::UnsubscribeAck { packet_id } => Inbound::UnsubAck { pid: packet_id },
        P::PingResponse => Inbound::PingResp,
        P::Connect(_) => Inbound::Unexpected("CONNECT"),
        P::Subscribe { .. } => Inbound::Unexpected("SUBSCRIBE"),
        P::Unsubscribe { .. } => Inbound::Unexpected("UNSUBSCRIBE"),
        P::PingRequest => Inbound::Unexpected("PINGREQ"),
        P::Disconnect => Inbound::Unexpected("DISCONNECT"),
    }
}

fn inbound_v5(p: v5::codec::Packet) -> Inbound {
    use v5::codec::Packet as P;
    match p {
        P::ConnectAck(ack) => Inbound::ConnAck {
            session_present: ack.session_present,
            code: u8::from(ack.reason_code),
            limits: Box::new(ServerLimits {
                receive_max: ack.receive_max.get(),
                max_qos: u8::from(ack.max_qos),
                max_packet_size: ack.max_packet_size,
                retain_available: ack.retain_available,
                wildcard_subscription_available: ack.wildcard_subscription_available,
                shared_subscription_available: ack.shared_subscription_available,
                subscription_identifiers_available: ack.subscription_identifiers_available,
                topic_alias_max: ack.topic_alias_max,
                server_keepalive_secs: ack.server_keepalive_sec,
                session_expiry_secs: ack.session_expiry_interval_secs,
                assigned_client_id: ack.assigned_client_id.map(|s| s.to_string()),
                reason_string: ack.reason_string.map(|s| s.to_string()),
            }),
        },
        P::PublishAck(a) => Inbound::PubAck { pid: a.packet_id, code: u8::from(a.reason_code) },
        P::PublishReceived(a) => Inbound::PubRec { pid: a.packet_id, code: u8::from(a.reason_code) },
        P::PublishRelease(a) => Inbound::PubRel { pid: a.packet_id },
        P::PublishComplete(a) => Inbound::PubComp { pid: a.packet_id },
        P::SubscribeAck(a) => {
            Inbound::SubAck { pid: a.packet_id, codes: a.status.iter().map(|s| u8::from(*s)).collect() }
        }
        P::UnsubscribeAck(a) => Inbound::UnsubAck { pid: a.packet_id },
        P::PingResponse => Inbound::PingResp,
        P::Disconnect(d) => Inbound::Disconnect { code: u8::from(d.reason_code) },
        P::Connect(_) => Inbound::Unexpected("CONNECT"),
        P::Subscribe(_) => Inbound::Unexpected("SUBSCRIBE"),
        P::Unsubscribe(_) => Inbound::Unexpected("UNSUBSCRIBE"),
        P::PingRequest => Inbound::Unexpected("PINGREQ"),
        P::Auth(_) => Inbound::Unexpected("AUTH"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pages_to_vec(mut p: BytePages) -> Vec<u8> {
        p.freeze().to_vec()
    }

    #[test]
    fn frame_len_reads_remaining_length() {
        assert_eq!(frame_len(&[0x30]).unwrap(), None);
        assert_eq!(frame_len(&[0x30, 0x00]).unwrap(), Some(2));
        assert_eq!(frame_len(&[0x30, 0x7f]).unwrap(), Some(129));
        assert_eq!(frame_len(&[0x30, 0x80, 0x01]).unwrap(), Some(131));
        assert_eq!(frame_len(&[0x30, 0x80]).unwrap(), None);
        assert!(frame_len(&[0x30, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn publish_header_plus_payload_decodes_whole_on_both_protocols() {
        for proto in [Protocol::V311, Protocol::V5] {
            let codec = WireCodec::new(proto, 0);
            let mut out = BytePages::default();
            let topic = ByteString::from("a/b");
            codec
                .encode_publish_header(&topic, QoS::AtLeastOnce, true, false, NonZeroU16::new(7), 5, &mut out)
                .unwrap();
            use ntex_bytes::BufMut;
            out.put_slice(b"hello");
            let bytes = pages_to_vec(out);
            // fed one byte at a time: nothing comes out until the packet is whole
            let rx = WireCodec::new(proto, 0);
            let mut buf = BytesMut::new();
            for (i, b) in bytes.iter().enumerate() {
                buf.extend_from_slice(&[*b]);
                let got = rx.decode(&mut buf).unwrap();
                if i + 1 < bytes.len() {
                    assert!(got.is_none(), "{proto}: decoded early at byte {i}");
                } else {
                    let Some(Inbound::Publish(p)) = got else { panic!("{proto}: {got:?}") };
                    assert_eq!(&p.payload[..], b"hello");
                    assert_eq!(&p.topic[..], "a/b");
                    assert_eq!(p.qos, QoS::AtLeastOnce);
                    assert!(p.retain);
                    assert_eq!(p.pid, NonZeroU16::new(7));
                }
            }
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn an_oversized_packet_is_refused_before_it_is_buffered() {
        let codec = WireCodec::new(Protocol::V311, 1024);
        // PUBLISH announcing ~2 MB, of which only the header has arrived
        let mut buf = BytesMut::from(&b"\x30\x80\x80\x80\x01"[..]);
        assert!(matches!(codec.decode(&mut buf), Err(DecodeError::MaxSizeExceeded { .. })));
    }

    #[test]
    fn a_publish_shorter_than_its_own_header_is_malformed_not_a_panic() {
        // PUBLISH QoS 0, remaining length 3, a topic said to be 5 bytes long: the header (2 + 5)
        // does not fit in 3 (ntex-mqtt 9.0 subtracts without a check)
        // (with the next packets' bytes behind it: ntex subtracts once the header is buffered)
        let behind = [0xC0u8, 0x00, 0xC0, 0x00, 0xC0, 0x00, 0xC0, 0x00, 0xC0, 0x00];
        let with = |packet: &[u8]| BytesMut::from(&[packet, &behind[..]].concat()[..]);
        for proto in [Protocol::V311, Protocol::V5] {
            let codec = WireCodec::new(proto, 1 << 20);
            let mut buf = with(&[0x30, 0x03, 0x00, 0x05, b'a']);
            assert!(matches!(codec.decode(&mut buf), Err(DecodeError::MalformedPacket)), "{proto}");
            // QoS 1: the packet id counts too
            let mut buf = with(&[0x32, 0x04, 0x00, 0x02, b'a', b'b']);
            assert!(matches!(codec.decode(&mut buf), Err(DecodeError::MalformedPacket)), "{proto}");
        }
        // MQTT 5: properties said to run past the packet
        let codec = WireCodec::new(Protocol::V5, 1 << 20);
        let mut buf = with(&[0x30, 0x05, 0x00, 0x01, b'a', 0x10, 0x00]);
        assert!(matches!(codec.decode(&mut buf), Err(DecodeError::MalformedPacket)));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

        /// Arbitrary bytes never panic the decoder; they decode or fail cleanly.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), v5 in any::<bool>()) {
            let codec = WireCodec::new(if v5 { Protocol::V5 } else { Protocol::V311 }, 1 << 20);
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..64 {
                match codec.decode(&mut buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
