//! The server side of ntex-mqtt's v3.1.1 and v5 codecs: protocol detection from the first
//! CONNECT, one inbound enum, and encoders for what a broker sends.

use std::num::NonZeroU16;

use ntex_bytes::{BytePages, ByteString, Bytes, BytesMut};
use ntex_codec::{Decoder, Encoder};
use ntex_mqtt::{v3, v5};

pub use ntex_mqtt::QoS;
pub use ntex_mqtt::error::{DecodeError, EncodeError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V311,
    V5,
}

/// Length of the whole packet at the start of `buf`, once its fixed header is buffered.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    let mut remaining: usize = 0;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else { return Ok(None) };
        remaining |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some(2 + i + remaining));
        }
    }
    Err(DecodeError::MalformedPacket)
}

/// Whether a whole PUBLISH at the front of `buf` (`len` bytes) has room in its remaining
/// length for its topic, packet id and (MQTT 5) properties. ntex-mqtt 9.0 subtracts that header
/// from the remaining length unchecked, so a client declaring less would overflow it (a panic in
/// a debug build, a ~4 GiB payload length in a release one).
fn publish_fits(buf: &[u8], len: usize, v5: bool) -> bool {
    if buf.first().is_none_or(|b| b >> 4 != 3) {
        return true;
    }
    let mut at = 1;
    while buf.get(at).is_some_and(|b| b & 0x80 != 0) {
        at += 1;
    }
    at += 1;
    let Some(topic) = buf.get(at..at + 2).map(|t| u16::from_be_bytes([t[0], t[1]]) as usize) else {
        return false;
    };
    at += 2 + topic;
    if buf[0] & 0b0110 != 0 {
        at += 2;
    }
    if v5 {
        let mut props = 0usize;
        for shift in 0..4 {
            let Some(&b) = buf.get(at) else { return false };
            at += 1;
            props |= ((b & 0x7f) as usize) << (7 * shift);
            if b & 0x80 == 0 {
                return at + props <= len;
            }
        }
        return false;
    }
    at <= len
}

/// What the first packet says about the protocol: `Ok(None)` until enough is buffered.
/// `Err(level)` for a CONNECT of a protocol level this broker does not speak.
pub fn detect(buf: &[u8]) -> Result<Option<Protocol>, DetectError> {
    let Some(len) = frame_len(buf).map_err(|_| DetectError::Malformed)? else { return Ok(None) };
    if buf[0] >> 4 != 1 {
        return Err(DetectError::NotConnect);
    }
    let _ = len;
    // fixed header length: 1 byte + the remaining-length bytes
    let mut pos = 1;
    while buf.get(pos).is_some_and(|b| b & 0x80 != 0) {
        pos += 1;
    }
    pos += 1;
    let Some(name_len) = buf.get(pos..pos + 2) else { return Ok(None) };
    let name_len = u16::from_be_bytes([name_len[0], name_len[1]]) as usize;
    let Some(&level) = buf.get(pos + 2 + name_len) else { return Ok(None) };
    match level {
        4 => Ok(Some(Protocol::V311)),
        5 => Ok(Some(Protocol::V5)),
        other => Err(DetectError::Level(other)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectError {
    Malformed,
    NotConnect,
    /// A protocol level other than 4 (3.1.1) or 5.
    Level(u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WillInfo {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub delay_secs: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectInfo {
    pub client_id: ByteString,
    pub clean_start: bool,
    pub keepalive: u16,
    /// MQTT 5 session expiry, seconds; 3.1.1: 0 with a clean session, "never" otherwise.
    pub session_expiry: u32,
    pub username: Option<ByteString>,
    pub password: Option<Bytes>,
    pub will: Option<WillInfo>,
    /// How many QoS 1/2 the client accepts unacknowledged.
    pub receive_max: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOpts {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0: send retained at subscribe, 1: only for a new subscription, 2: never.
    pub retain_handling: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishIn {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    pub pid: Option<NonZeroU16>,
    /// MQTT 5 user properties (3.1.1: none).
    pub user_properties: Vec<(ByteString, ByteString)>,
}

/// A packet from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum In {
    Connect(Box<ConnectInfo>),
    Publish(PublishIn),
    PubAck(NonZeroU16),
    PubRec(NonZeroU16),
    PubRel(NonZeroU16),
    PubComp(NonZeroU16),
    Subscribe {
        pid: NonZeroU16,
        filters: Vec<(ByteString, SubOpts)>,
    },
    Unsubscribe {
        pid: NonZeroU16,
        filters: Vec<ByteString>,
    },
    PingReq,
    /// DISCONNECT with its reason (0 for 3.1.1) and MQTT 5 session-expiry update.
    Disconnect {
        code: u8,
        session_expiry: Option<u32>,
    },
    /// A packet only servers send, or AUTH.
    Unexpected(&'static str),
}

impl In {
    /// The packet's name, for timelines and logs.
    pub fn kind(&self) -> crate::timeline::Kind {
        use crate::timeline::Kind as K;
        match self {
            In::Connect(_) => K::Connect,
            In::Publish(_) => K::Publish,
            In::PubAck(_) => K::PubAck,
            In::PubRec(_) => K::PubRec,
            In::PubRel(_) => K::PubRel,
            In::PubComp(_) => K::PubComp,
            In::Subscribe { .. } => K::Subscribe,
            In::Unsubscribe { .. } => K::Unsubscribe,
            In::PingReq => K::PingReq,
            In::Disconnect { .. } => K::Disconnect,
            In::Unexpected(_) => K::Other,
        }
    }
}

/// What the CONNACK announces (MQTT 5 properties; 3.1.1 sends only the code and flag).
#[derive(Debug, Clone, Default)]
pub struct ConnAckProps {
    pub receive_max: u16,
    pub max_packet_size: Option<u32>,
    pub assigned_client_id: Option<ByteString>,
    pub server_keepalive: Option<u16>,
    pub session_expiry: Option<u32>,
}

pub struct ServerCodec {
    proto: Protocol,
    max_inbound: u32,
    v3: v3::codec::Codec,
    v5: v5::codec::Codec,
}

impl ServerCodec {
    pub fn new(proto: Protocol, max_inbound: u32) -> ServerCodec {
        let v3 = v3::codec::Codec::new();
        v3.set_max_size(max_inbound);
        let v5 = v5::codec::Codec::new();
        v5.set_max_inbound_size(max_inbound);
        ServerCodec { proto, v3, v5, max_inbound }
    }

    pub fn protocol(&self) -> Protocol {
        self.proto
    }

    /// Decodes one whole packet from the front of `buf`, once all of it is buffered.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<In>, DecodeError> {
        let Some(len) = frame_len(buf)? else { return Ok(None) };
        // refuse an oversized packet as soon as its length is known, not once it is buffered
        if self.max_inbound != 0 && len > self.max_inbound as usize + 5 {
            return Err(DecodeError::MaxSizeExceeded { size: len as u32, max_size: self.max_inbound });
        }
        if buf.len() < len {
            return Ok(None);
        }
        if !publish_fits(buf, len, self.proto == Protocol::V5) {
            return Err(DecodeError::MalformedPacket);
        }
        Ok(Some(match self.proto {
            Protocol::V311 => match self.v3.decode(buf)? {
                Some(v3::codec::Decoded::Packet(p, _)) => in_v3(p),
                Some(v3::codec::Decoded::Publish(p, payload, _)) => In::Publish(PublishIn {
                    topic: p.topic,
                    payload,
                    qos: p.qos,
                    retain: p.retain,
                    dup: p.dup,
                    pid: p.packet_id,
                    user_properties: Vec::new(),
                }),
                _ => return Err(DecodeError::MalformedPacket),
            },
            Protocol::V5 => match self.v5.decode(buf)? {
                Some(v5::codec::Decoded::Packet(p, _)) => in_v5(p),
                Some(v5::codec::Decoded::Publish(p, payload, _)) => In::Publish(PublishIn {
                    topic: p.topic,
                    payload,
                    qos: p.qos,
                    retain: p.retain,
                    dup: p.dup,
                    pid: p.packet_id,
                    user_properties: p.properties.user_properties,
                }),
                _ => return Err(DecodeError::MalformedPacket),
            },
        }))
    }

    pub fn connack(
        &self,
        session_present: bool,
        code: u8,
        props: &ConnAckProps,
        dst: &mut BytePages,
    ) -> Result<(), EncodeError> {
        match self.proto {
            Protocol::V311 => {
                let return_code = v3::codec::ConnectAckReason::try_from(code)
                    .unwrap_or(v3::codec::ConnectAckReason::ServiceUnavailable);
                self.v3.encodev(
                    v3::codec::Packet::ConnectAck(v3::codec::ConnectAck { session_present, return_code })
                        .into(),
                    dst,
                )
            }
            Protocol::V5 => {
                let reason_code = v5::codec::ConnectAckReason::try_from(code)
                    .unwrap_or(v5::codec::ConnectAckReason::UnspecifiedError);
                let ack = v5::codec::ConnectAck {
                    session_present,
                    reason_code,
                    receive_max: NonZeroU16::new(props.receive_max).unwrap_or(NonZeroU16::MAX),
                    max_packet_size: props.max_packet_size,
                    assigned_client_id: props.assigned_client_id.clone(),
                    server_keepalive_sec: props.server_keepalive,
                    session_expiry_interval_secs: props.session_expiry,
                    topic_alias_max: 0,
                    retain_available: true,
                    wildcard_subscription_available: true,
                    shared_subscription_available: true,
                    subscription_identifiers_available: false,
                    ..Default::default()
                };
                self.v5.encodev(v5::codec::Packet::ConnectAck(Box::new(ack)).into(), dst)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn publish(
        &self,
        topic: &ByteString,
        payload: &Bytes,
        qos: QoS,
        retain: bool,
        dup: bool,
        pid: Option<NonZeroU16>,
        dst: &mut BytePages,
    ) -> Result<(), EncodeError> {
        let payload_size = payload.len() as u32;
        match self.proto {
            Protocol::V311 => self.v3.encodev(
                v3::codec::Encoded::Publish(
                    v3::codec::Publish {
                        dup,
                        retain,
                        qos,
                        topic: topic.clone(),
                        packet_id: pid,
                        payload_size,
                    },
                    Some(payload.clone()),
                ),
                dst,
            ),
            Protocol::V5 => self.v5.encodev(
                v5::codec::Encoded::Publish(
                    v5::codec::Publish {
                        dup,
                        retain,
                        qos,
                        topic: topic.clone(),
                        packet_id: pid,
                        payload_size,
                        properties: Default::default(),
                    },
                    Some(payload.clone()),
                ),
                dst,
            ),
        }
    }

    /// PUBACK, PUBREC, PUBREL or PUBCOMP; `code` is the MQTT 5 reason (ignored on 3.1.1).
    pub fn ack(&self, kind: Ack, pid: NonZeroU16, code: u8, dst: &mut BytePages) -> Result<(), EncodeError> {
        match self.proto {
            Protocol::V311 => {
                let p = match kind {
                    Ack::PubAck => v3::codec::Packet::PublishAck { packet_id: pid },
                    Ack::PubRec => v3::codec::Packet::PublishReceived { packet_id: pid },
                    Ack::PubRel => v3::codec::Packet::PublishRelease { packet_id: pid },
                    Ack::PubComp => v3::codec::Packet::PublishComplete { packet_id: pid },
                };
                self.v3.encodev(p.into(), dst)
            }
            Protocol::V5 => {
                let a = v5::codec::PublishAck {
                    packet_id: pid,
                    reason_code: v5::codec::PublishAckReason::try_from(code)
                        .unwrap_or(v5::codec::PublishAckReason::Success),
                    ..Default::default()
                };
                let a2 = v5::codec::PublishAck2 { packet_id: pid, ..Default::default() };
                let p = match kind {
                    Ack::PubAck => v5::codec::Packet::PublishAck(a),
                    Ack::PubRec => v5::codec::Packet::PublishReceived(a),
                    Ack::PubRel => v5::codec::Packet::PublishRelease(a2),
                    Ack::PubComp => v5::codec::Packet::PublishComplete(a2),
                };
                self.v5.encodev(p.into(), dst)
            }
        }
    }

    /// SUBACK with one code per filter (granted QoS, or ≥ 0x80).
    pub fn suback(&self, pid: NonZeroU16, codes: &[u8], dst: &mut BytePages) -> Result<(), EncodeError> {
        match self.proto {
            Protocol::V311 => self.v3.encodev(
                v3::codec::Packet::SubscribeAck {
                    packet_id: pid,
                    status: codes
                        .iter()
                        .map(|c| match c {
                            0 => v3::codec::SubscribeReturnCode::Success(QoS::AtMostOnce),
                            1 => v3::codec::SubscribeReturnCode::Success(QoS::AtLeastOnce),
                            2 => v3::codec::SubscribeReturnCode::Success(QoS::ExactlyOnce),
                            _ => v3::codec::SubscribeReturnCode::Failure,
                        })
                        .collect(),
                }
                .into(),
                dst,
            ),
            Protocol::V5 => self.v5.encodev(
                v5::codec::Packet::SubscribeAck(v5::codec::SubscribeAck {
                    packet_id: pid,
                    properties: Vec::new(),
                    reason_string: None,
                    status: codes
                        .iter()
                        .map(|c| {
                            v5::codec::SubscribeAckReason::try_from(*c)
                                .unwrap_or(v5::codec::SubscribeAckReason::UnspecifiedError)
                        })
                        .collect(),
                })
                .into(),
                dst,
            ),
        }
    }

    pub fn unsuback(&self, pid: NonZeroU16, n: usize, dst: &mut BytePages) -> Result<(), EncodeError> {
        match self.proto {
            Protocol::V311 => {
                self.v3.encodev(v3::codec::Packet::UnsubscribeAck { packet_id: pid }.into(), dst)
            }
            Protocol::V5 => self.v5.encodev(
                v5::codec::Packet::UnsubscribeAck(v5::codec::UnsubscribeAck {
                    packet_id: pid,
                    properties: Vec::new(),
                    reason_string: None,
                    status: vec![v5::codec::UnsubscribeAckReason::Success; n],
                })
                .into(),
                dst,
            ),
        }
    }

    pub fn pingresp(&self, dst: &mut BytePages) -> Result<(), EncodeError> {
        match self.proto {
            Protocol::V311 => self.v3.encodev(v3::codec::Packet::PingResponse.into(), dst),
            Protocol::V5 => self.v5.encodev(v5::codec::Packet::PingResponse.into(), dst),
        }
    }

    /// DISCONNECT to the client (MQTT 5 only; 3.1.1 servers just close).
    pub fn disconnect(&self, code: u8, dst: &mut BytePages) -> Result<(), EncodeError> {
        match self.proto {
            Protocol::V311 => Ok(()),
            Protocol::V5 => {
                let reason = v5::codec::DisconnectReasonCode::try_from(code)
                    .unwrap_or(v5::codec::DisconnectReasonCode::UnspecifiedError);
                self.v5.encodev(v5::codec::Packet::Disconnect(v5::codec::Disconnect::new(reason)).into(), dst)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
}

fn in_v3(p: v3::codec::Packet) -> In {
    use v3::codec::Packet as P;
    match p {
        P::Connect(c) => In::Connect(Box::new(ConnectInfo {
            client_id: c.client_id,
            clean_start: c.clean_session,
            keepalive: c.keep_alive,
            session_expiry: if c.clean_session { 0 } else { u32::MAX },
            username: c.username,
            password: c.password,
            will: c.last_will.map(|w| WillInfo {
                topic: w.topic,
                payload: w.message,
                qos: w.qos,
                retain: w.retain,
                delay_secs: 0,
            }),
            receive_max: u16::MAX,
        })),
        P::PublishAck { packet_id } => In::PubAck(packet_id),
        P::PublishReceived { packet_id } => In::PubRec(packet_id),
        P::PublishRelease { packet_id } => In::PubRel(packet_id),
        P::PublishComplete { packet_id } => In::PubComp(packet_id),
        P::Subscribe { packet_id, topic_filters } => In::Subscribe {
            pid: packet_id,
            filters: topic_filters
                .into_iter()
                .map(|(f, qos)| {
                    (f, SubOpts { qos, no_local: false, retain_as_published: false, retain_handling: 0 })
                })
                .collect(),
        },
        P::Unsubscribe { packet_id, topic_filters } => {
            In::Unsubscribe { pid: packet_id, filters: topic_filters }
        }
        P::PingRequest => In::PingReq,
        P::Disconnect => In::Disconnect { code: 0, session_expiry: None },
        P::ConnectAck(_) => In::Unexpected("CONNACK"),
        P::SubscribeAck { .. } => In::Unexpected("SUBACK"),
        P::UnsubscribeAck { .. } => In::Unexpected("UNSUBACK"),
        P::PingResponse => In::Unexpected("PINGRESP"),
    }
}

fn in_v5(p: v5::codec::Packet) -> In {
    use v5::codec::Packet as P;
    match p {
        P::Connect(c) => In::Connect(Box::new(ConnectInfo {
            client_id: c.client_id,
            clean_start: c.clean_start,
            keepalive: c.keep_alive,
            session_expiry: c.session_expiry_interval_secs,
            username: c.username,
            password: c.password,
            will: c.last_will.map(|w| WillInfo {
                topic: w.topic,
                payload: w.message,
                qos: w.qos,
                retain: w.retain,
                delay_secs: w.will_delay_interval_sec.unwrap_or(0),
            }),
            receive_max: c.receive_max.map_or(u16::MAX, |r| r.get()),
        })),
        P::PublishAck(a) => In::PubAck(a.packet_id),
        P::PublishReceived(a) => In::PubRec(a.packet_id),
        P::PublishRelease(a) => In::PubRel(a.packet_id),
        P::PublishComplete(a) => In::PubComp(a.packet_id),
        P::Subscribe(s) => In::Subscribe {
            pid: s.packet_id,
            filters: s
                .topic_filters
                .into_iter()
                .map(|(f, o)| {
                    (
                        f,
                        SubOpts {
                            qos: o.qos,
                            no_local: o.no_local,
                            retain_as_published: o.retain_as_published,
                            retain_handling: u8::from(o.retain_handling),
                        },
                    )
                })
                .collect(),
        },
        P::Unsubscribe(u) => In::Unsubscribe { pid: u.packet_id, filters: u.topic_filters },
        P::PingRequest => In::PingReq,
        P::Disconnect(d) => {
            In::Disconnect { code: u8::from(d.reason_code), session_expiry: d.session_expiry_interval_secs }
        }
        P::ConnectAck(_) => In::Unexpected("CONNACK"),
        P::SubscribeAck(_) => In::Unexpected("SUBACK"),
        P::UnsubscribeAck(_) => In::Unexpected("UNSUBACK"),
        P::PingResponse => In::Unexpected("PINGRESP"),
        P::Auth(_) => In::Unexpected("AUTH"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn detects_the_protocol_level() {
        // CONNECT, remaining length 12, "MQTT", level 4
        let v311 = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00";
        assert_eq!(detect(v311), Ok(Some(Protocol::V311)));
        let v5 = b"\x10\x0d\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x00";
        assert_eq!(detect(v5), Ok(Some(Protocol::V5)));
        let v31 = b"\x10\x0e\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x00";
        assert_eq!(detect(v31), Err(DetectError::Level(3)));
        assert_eq!(detect(b"\x10"), Ok(None));
        assert_eq!(detect(b"\x30\x02\x00\x00"), Err(DetectError::NotConnect));
    }

    #[test]
    fn an_oversized_packet_is_refused_before_it_is_buffered() {
        let c = ServerCodec::new(Protocol::V5, 1024);
        let mut buf = BytesMut::from(&b"\x30\x80\x80\x80\x01"[..]);
        assert!(matches!(c.decode(&mut buf), Err(DecodeError::MaxSizeExceeded { .. })));
    }

    #[test]
    fn a_publish_shorter_than_its_own_header_is_malformed_not_a_panic() {
        // a topic of 5 bytes in a remaining length of 3, with a client's next packets behind it
        let behind = [0xC0u8, 0x00, 0xC0, 0x00, 0xC0, 0x00, 0xC0, 0x00, 0xC0, 0x00];
        for proto in [Protocol::V311, Protocol::V5] {
            let codec = ServerCodec::new(proto, 1 << 20);
            let mut buf = BytesMut::from(&[&[0x30, 0x03, 0x00, 0x05, b'a'][..], &behind[..]].concat()[..]);
            assert!(matches!(codec.decode(&mut buf), Err(DecodeError::MalformedPacket)), "{proto:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), v5: bool) {
            let _ = detect(&bytes);
            let c = ServerCodec::new(if v5 { Protocol::V5 } else { Protocol::V311 }, 1 << 20);
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..32 {
                match c.decode(&mut buf) {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }
    }
}
