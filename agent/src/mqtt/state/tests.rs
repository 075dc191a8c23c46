//! Bytes in, bytes out: the broker side of each exchange is ntex-mqtt's own codec, so these
//! tests check the state machine against an independent encoder and decoder.

use std::num::NonZeroU16;

use ntex_bytes::{BytePages, ByteString, Bytes, BytesMut};
use ntex_codec::{Decoder, Encoder};
use ntex_mqtt::{v3, v5};

use super::*;
use crate::mqtt::codec::{ConnectSpec, Protocol, QoS, Will};

const S: u64 = 1_000_000_000;

fn opts(protocol: Protocol) -> Options {
    Options {
        protocol,
        keepalive_secs: 10,
        max_inflight: 4,
        connect_timeout_ns: 5 * S,
        ack_timeout_ns: 3 * S,
        max_inbound_packet: 0,
    }
}

fn spec(clean_start: bool) -> ConnectSpec {
    ConnectSpec {
        client_id: ByteString::from("dev-1"),
        keepalive_secs: 10,
        clean_start,
        session_expiry_secs: if clean_start { 0 } else { 3600 },
        username: Some(ByteString::from("u")),
        password: Some(Bytes::from_static(b"p")),
        will: Some(Will {
            topic: ByteString::from("will/dev-1"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            delay_secs: 0,
        }),
        receive_max: 100,
    }
}

fn pid(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).unwrap()
}

/// The broker's end of the wire.
enum Broker {
    V3(v3::codec::Codec),
    V5(v5::codec::Codec),
}

#[derive(Debug, PartialEq)]
enum Seen {
    Connect { client_id: String, keepalive: u16, clean: bool, will_topic: Option<String> },
    Publish { topic: String, qos: QoS, pid: Option<u16>, dup: bool, payload: Vec<u8> },
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe(u16, Vec<String>),
    PingReq,
    Disconnect,
}

impl Broker {
    fn new(p: Protocol) -> Broker {
        match p {
            Protocol::V311 => Broker::V3(v3::codec::Codec::new()),
            Protocol::V5 => Broker::V5(v5::codec::Codec::new()),
        }
    }

    /// Everything the client queued, as the broker decodes it.
    fn read(&self, conn: &mut Connection) -> Vec<Seen> {
        let mut buf = match conn.take_output() {
            Some(mut pages) => BytesMut::from(pages.freeze()),
            None => return vec![],
        };
        let mut seen = vec![];
        loop {
            let s = match self {
                Broker::V3(c) => match c.decode(&mut buf).unwrap() {
                    None => break,
                    Some(v3::codec::Decoded::Publish(p, payload, _)) => Seen::Publish {
                        topic: p.topic.to_string(),
                        qos: p.qos,
                        pid: p.packet_id.map(|p| p.get()),
                        dup: p.dup,
                        payload: payload.to_vec(),
                    },
                    Some(v3::codec::Decoded::Packet(p, _)) => {
                        use v3::codec::Packet as P;
                        match p {
                            P::Connect(c) => Seen::Connect {
                                client_id: c.client_id.to_string(),
                                keepalive: c.keep_alive,
                                clean: c.clean_session,
                                will_topic: c.last_will.map(|w| w.topic.to_string()),
                            },
                            P::PublishAck { packet_id } => Seen::PubAck(packet_id.get()),
                            P::PublishReceived { packet_id } => Seen::PubRec(packet_id.get()),
                            P::PublishRelease { packet_id } => Seen::PubRel(packet_id.get()),
                            P::PublishComplete { packet_id } => Seen::PubComp(packet_id.get()),
                            P::Subscribe { packet_id, topic_filters } => Seen::Subscribe(
                                packet_id.get(),
                                topic_filters.iter().map(|(f, _)| f.to_string()).collect(),
                            ),
                            P::PingRequest => Seen::PingReq,
                            P::Disconnect => Seen::Disconnect,
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                    Some(other) => panic!("unexpected {other:?}"),
                },
                Broker::V5(c) => match c.decode(&mut buf).unwrap() {
                    None => break,
                    Some(v5::codec::Decoded::Publish(p, payload, _)) => Seen::Publish {
                        topic: p.topic.to_string(),
                        qos: p.qos,
                        pid: p.packet_id.map(|p| p.get()),
                        dup: p.dup,
                        payload: payload.to_vec(),
                    },
                    Some(v5::codec::Decoded::Packet(p, _)) => {
                        use v5::codec::Packet as P;
                        match p {
                            P::Connect(c) => Seen::Connect {
                                client_id: c.client_id.to_string(),
                                keepalive: c.keep_alive,
                                clean: c.clean_start,
                                will_topic: c.last_will.map(|w| w.topic.to_string()),
                            },
                            P::PublishAck(a) => Seen::PubAck(a.packet_id.get()),
                            P::PublishReceived(a) => Seen::PubRec(a.packet_id.get()),
                            P::PublishRelease(a) => Seen::PubRel(a.packet_id.get()),
                            P::PublishComplete(a) => Seen::PubComp(a.packet_id.get()),
                            P::Subscribe(s) => Seen::Subscribe(
                                s.packet_id.get(),
                                s.topic_filters.iter().map(|(f, _)| f.to_string()).collect(),
                            ),
                            P::PingRequest => Seen::PingReq,
                            P::Disconnect(_) => Seen::Disconnect,
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                    Some(other) => panic!("unexpected {other:?}"),
                },
            };
            seen.push(s);
        }
        seen
    }

    fn connack(&self, session_present: bool, code: u8, receive_max: u16) -> BytesMut {
        match self {
            Broker::V3(c) => enc3(
                c,
                v3::codec::Packet::ConnectAck(v3::codec::ConnectAck {
                    session_present,
                    return_code: v3::codec::ConnectAckReason::try_from(code).unwrap(),
                }),
            ),
            Broker::V5(c) => enc5(
                c,
                v5::codec::Packet::ConnectAck(Box::new(v5::codec::ConnectAck {
                    session_present,
                    reason_code: v5::codec::ConnectAckReason::try_from(code).unwrap(),
                    receive_max: NonZeroU16::new(receive_max).unwrap(),
                    ..Default::default()
                })),
            ),
        }
    }

    fn ack(&self, kind: AckKind, id: u16) -> BytesMut {
        match self {
            Broker::V3(c) => {
                let packet_id = pid(id);
                enc3(
                    c,
                    match kind {
                        AckKind::PubAck => v3::codec::Packet::PublishAck { packet_id },
                        AckKind::PubRec => v3::codec::Packet::PublishReceived { packet_id },
                        AckKind::PubRel => v3::codec::Packet::PublishRelease { packet_id },
                        AckKind::PubComp => v3::codec::Packet::PublishComplete { packet_id },
                    },
                )
            }
            Broker::V5(c) => {
                let a = v5::codec::PublishAck { packet_id: pid(id), ..Default::default() };
                let a2 = v5::codec::PublishAck2 { packet_id: pid(id), ..Default::default() };
                enc5(
                    c,
                    match kind {
                        AckKind::PubAck => v5::codec::Packet::PublishAck(a),
                        AckKind::PubRec => v5::codec::Packet::PublishReceived(a),
                        AckKind::PubRel => v5::codec::Packet::PublishRelease(a2),
                        AckKind::PubComp => v5::codec::Packet::PublishComplete(a2),
                    },
                )
            }
        }
    }

    fn publish(&self, topic: &str, qos: QoS, id: Option<u16>, dup: bool, payload: &'static [u8]) -> BytesMut {
        let mut pages = BytePages::default();
        let payload = Bytes::from_static(payload);
        match self {
            Broker::V3(c) => c
                .encodev(
                    v3::codec::Encoded::Publish(
                        v3::codec::Publish {
                            dup,
                            retain: false,
                            qos,
                            topic: ByteString::from(topic),
                            packet_id: id.map(pid),
                            payload_size: payload.len() as u32,
                        },
                        Some(payload),
                    ),
                    &mut pages,
                )
                .unwrap(),
            Broker::V5(c) => c
                .encodev(
                    v5::codec::Encoded::Publish(
                        v5::codec::Publish {
                            dup,
                            retain: false,
                            qos,
                            topic: ByteString::from(topic),
                            packet_id: id.map(pid),
                            payload_size: payload.len() as u32,
                            properties: Default::default(),
                        },
                        Some(payload),
                    ),
                    &mut pages,
                )
                .unwrap(),
        }
        BytesMut::from(pages.freeze())
    }

    fn suback(&self, id: u16, granted: QoS) -> BytesMut {
        match self {
            Broker::V3(c) => enc3(
                c,
                v3::codec::Packet::SubscribeAck {
                    packet_id: pid(id),
                    status: vec![v3::codec::SubscribeReturnCode::Success(granted)],
                },
            ),
            Broker::V5(c) => enc5(
                c,
                v5::codec::Packet::SubscribeAck(v5::codec::SubscribeAck {
                    packet_id: pid(id),
                    properties: vec![],
                    reason_string: None,
                    status: vec![v5::codec::SubscribeAckReason::try_from(u8::from(granted)).unwrap()],
                }),
            ),
        }
    }

    fn pingresp(&self) -> BytesMut {
        match self {
            Broker::V3(c) => enc3(c, v3::codec::Packet::PingResponse),
            Broker::V5(c) => enc5(c, v5::codec::Packet::PingResponse),
        }
    }
}

fn enc3(c: &v3::codec::Codec, p: v3::codec::Packet) -> BytesMut {
    let mut pages = BytePages::default();
    c.encodev(p.into(), &mut pages).unwrap();
    BytesMut::from(pages.freeze())
}

fn enc5(c: &v5::codec::Codec, p: v5::codec::Packet) -> BytesMut {
    let mut pages = BytePages::default();
    c.encodev(p.into(), &mut pages).unwrap();
    BytesMut::from(pages.freeze())
}

fn feed(conn: &mut Connection, mut bytes: BytesMut, now: u64) -> Result<Vec<Event>, Fault> {
    let mut events = vec![];
    conn.handle(&mut bytes, now, |e| events.push(e))?;
    assert!(bytes.is_empty(), "every byte consumed");
    Ok(events)
}

fn connected(p: Protocol) -> (Connection, Broker) {
    let mut conn = Connection::new(opts(p));
    let broker = Broker::new(p);
    conn.begin(&spec(true), 0).unwrap();
    let seen = broker.read(&mut conn);
    assert_eq!(
        seen,
        vec![Seen::Connect {
            client_id: "dev-1".into(),
            keepalive: 10,
            clean: true,
            will_topic: Some("will/dev-1".into())
        }]
    );
    let ev = feed(&mut conn, broker.connack(false, 0, 65535), 1_000).unwrap();
    assert!(matches!(ev[..], [Event::ConnAck { code: 0, elapsed_ns: 1_000, .. }]), "{ev:?}");
    assert!(conn.is_connected());
    (conn, broker)
}

fn publish(conn: &mut Connection, now: u64, qos: QoS, seq: u64) -> Result<(), Refusal> {
    let topic = ByteString::from("t");
    conn.publish(now, &topic, qos, false, Token { seq, intended_ns: now - 1 }, 3, |out| out.put_slice(b"abc"))
        .unwrap()
}

const BOTH: [Protocol; 2] = [Protocol::V311, Protocol::V5];

#[test]
fn connack_refusal_is_an_event_and_closes() {
    for (p, code) in [(Protocol::V311, 4u8), (Protocol::V5, 0x86)] {
        let mut conn = Connection::new(opts(p));
        let broker = Broker::new(p);
        conn.begin(&spec(true), 0).unwrap();
        broker.read(&mut conn);
        let ev = feed(&mut conn, broker.connack(false, code, 10), 5).unwrap();
        assert!(matches!(ev[..], [Event::ConnAck { code: c, .. }] if c == code), "{p}: {ev:?}");
        assert_eq!(conn.phase(), ConnState::Closed);
    }
}

#[test]
fn qos1_publish_is_completed_by_puback() {
    for p in BOTH {
        let (mut conn, broker) = connected(p);
        publish(&mut conn, 2_000, QoS::AtLeastOnce, 7).unwrap();
        let seen = broker.read(&mut conn);
        assert_eq!(
            seen,
            vec![Seen::Publish {
                topic: "t".into(),
                qos: QoS::AtLeastOnce,
                pid: Some(1),
                dup: false,
                payload: b"abc".to_vec()
            }]
        );
        assert_eq!(conn.in_flight(), 1);
        let ev = feed(&mut conn, broker.ack(AckKind::PubAck, 1), 3_000).unwrap();
        match &ev[..] {
            [Event::PublishDone { qos: QoS::AtLeastOnce, token, sent_ns: 2_000, code: 0 }] => {
                assert_eq!(token.seq, 7);
                assert_eq!(token.intended_ns, 1_999);
            }
            other => panic!("{p}: {other:?}"),
        }
        assert_eq!(conn.in_flight(), 0);
    }
}

#[test]
fn qos2_publish_goes_through_pubrec_pubrel_pubcomp() {
    for p in BOTH {
        let (mut conn, broker) = connected(p);
        publish(&mut conn, 2_000, QoS::ExactlyOnce, 0).unwrap();
        broker.read(&mut conn);
        let ev = feed(&mut conn, broker.ack(AckKind::PubRec, 1), 2_500).unwrap();
        assert!(ev.is_empty(), "{ev:?}");
        assert_eq!(broker.read(&mut conn), vec![Seen::PubRel(1)]);
        let ev = feed(&mut conn, broker.ack(AckKind::PubComp, 1), 3_000).unwrap();
        assert!(
            matches!(ev[..], [Event::PublishDone { qos: QoS::ExactlyOnce, sent_ns: 2_000, .. }]),
            "{ev:?}"
        );
        assert_eq!(conn.in_flight(), 0);
    }
}

#[test]
fn incoming_qos1_and_qos2_are_answered_and_qos2_delivered_once() {
    for p in BOTH {
        let (mut conn, broker) = connected(p);
        let ev = feed(&mut conn, broker.publish("a", QoS::AtLeastOnce, Some(9), false, b"x"), 10).unwrap();
        assert!(matches!(&ev[..], [Event::Message(m)] if &m.payload[..] == b"x"));
        assert_eq!(broker.read(&mut conn), vec![Seen::PubAck(9)]);

        let ev = feed(&mut conn, broker.publish("a", QoS::ExactlyOnce, Some(10), false, b"y"), 20).unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(broker.read(&mut conn), vec![Seen::PubRec(10)]);
        // the broker did not see our PUBREC and sends again: answered, not delivered twice
        let ev = feed(&mut conn, broker.publish("a", QoS::ExactlyOnce, Some(10), true, b"y"), 30).unwrap();
        assert!(ev.is_empty(), "{p}: redelivery before PUBREL must not be repeated: {ev:?}");
        assert_eq!(broker.read(&mut conn), vec![Seen::PubRec(10)]);
        let ev = feed(&mut conn, broker.ack(AckKind::PubRel, 10), 40).unwrap();
        assert!(ev.is_empty());
        assert_eq!(broker.read(&mut conn), vec![Seen::PubComp(10)]);
        // after release the id is free again: a new message with it is delivered
        let ev = feed(&mut conn, broker.publish("a", QoS::ExactlyOnce, Some(10), false, b"z"), 50).unwrap();
        assert_eq!(ev.len(), 1);
    }
}

#[test]
fn window_limits_unanswered_publishes() {
    let (mut conn, broker) = connected(Protocol::V311);
    for seq in 0..4 {
        publish(&mut conn, 10 + seq, QoS::AtLeastOnce, seq).unwrap();
    }
    assert_eq!(publish(&mut conn, 20, QoS::AtLeastOnce, 4), Err(Refusal::WindowFull));
    // QoS 0 takes no slot
    publish(&mut conn, 20, QoS::AtMostOnce, 4).unwrap();
    feed(&mut conn, broker.ack(AckKind::PubAck, 1), 30).unwrap();
    publish(&mut conn, 31, QoS::AtLeastOnce, 5).unwrap();
}

#[test]
fn mqtt5_receive_maximum_lowers_the_window() {
    let mut conn = Connection::new(opts(Protocol::V5));
    let broker = Broker::new(Protocol::V5);
    conn.begin(&spec(true), 0).unwrap();
    broker.read(&mut conn);
    feed(&mut conn, broker.connack(false, 0, 2), 1).unwrap();
    assert_eq!(conn.window_room(), 2);
    publish(&mut conn, 2, QoS::AtLeastOnce, 0).unwrap();
    publish(&mut conn, 3, QoS::ExactlyOnce, 1).unwrap();
    assert_eq!(publish(&mut conn, 4, QoS::AtLeastOnce, 2), Err(Refusal::WindowFull));
}

#[test]
fn keepalive_sends_pingreq_and_a_missing_pingresp_ends_the_connection() {
    for p in BOTH {
        let (mut conn, broker) = connected(p);
        // CONNECT went out at 0: keepalive is due at 10 s
        assert_eq!(conn.next_deadline(), Some(10 * S));
        conn.on_timer(10 * S - 1).unwrap();
        assert!(broker.read(&mut conn).is_empty());
        conn.on_timer(10 * S).unwrap();
        assert_eq!(broker.read(&mut conn), vec![Seen::PingReq]);
        assert_eq!(conn.next_deadline(), Some(13 * S));
        let ev = feed(&mut conn, broker.pingresp(), 11 * S).unwrap();
        assert!(matches!(ev[..], [Event::Pong { sent_ns }] if sent_ns == 10 * S));
        assert_eq!(conn.next_deadline(), Some(20 * S));
        conn.on_timer(20 * S).unwrap();
        assert_eq!(broker.read(&mut conn), vec![Seen::PingReq]);
        assert_eq!(conn.on_timer(23 * S), Err(Fault::PingTimeout));
        assert_eq!(conn.phase(), ConnState::Closed);
    }
}

#[test]
fn traffic_postpones_keepalive() {
    let (mut conn, broker) = connected(Protocol::V311);
    publish(&mut conn, 5 * S, QoS::AtMostOnce, 0).unwrap();
    broker.read(&mut conn);
    assert_eq!(conn.next_deadline(), Some(15 * S));
}

#[test]
fn missing_connack_times_out() {
    let mut conn = Connection::new(opts(Protocol::V5));
    conn.begin(&spec(true), 100).unwrap();
    assert_eq!(conn.next_deadline(), Some(100 + 5 * S));
    assert_eq!(conn.on_timer(100 + 5 * S - 1), Ok(0));
    assert_eq!(conn.on_timer(100 + 5 * S), Err(Fault::ConnAckTimeout));
}

#[test]
fn late_acks_are_counted_once_and_still_complete() {
    let (mut conn, broker) = connected(Protocol::V5);
    publish(&mut conn, S, QoS::AtLeastOnce, 0).unwrap();
    broker.read(&mut conn);
    assert_eq!(conn.on_timer(4 * S), Ok(1));
    assert_eq!(conn.on_timer(5 * S), Ok(0));
    let ev = feed(&mut conn, broker.ack(AckKind::PubAck, 1), 6 * S).unwrap();
    assert!(matches!(ev[..], [Event::PublishDone { sent_ns, .. }] if sent_ns == S));
}

#[test]
fn resumed_session_resends_open_publishes_with_dup() {
    for p in BOTH {
        let (mut conn, broker) = connected(p);
        publish(&mut conn, 10, QoS::AtLeastOnce, 0).unwrap();
        publish(&mut conn, 11, QoS::ExactlyOnce, 1).unwrap();
        publish(&mut conn, 12, QoS::ExactlyOnce, 2).unwrap();
        broker.read(&mut conn);
        // the QoS 2 publish with id 3 got as far as PUBREC
        feed(&mut conn, broker.ack(AckKind::PubRec, 3), 13).unwrap();
        broker.read(&mut conn);
        assert_eq!(conn.lost(), 3);

        conn.begin(&spec(false), 100).unwrap();
        broker.read(&mut conn);
        let ev = feed(&mut conn, broker.connack(true, 0, 100), 110).unwrap();
        assert!(matches!(ev[..], [Event::ConnAck { session_present: true, .. }]), "{ev:?}");
        let n = conn
            .resend_open(120, |slot, out| {
                out.put_slice(format!("s{}", slot.token.seq).as_bytes());
                Some((ByteString::from("t"), false, 2))
            })
            .unwrap();
        assert_eq!(n, 2);
        let seen = broker.read(&mut conn);
        assert_eq!(
            seen,
            vec![
                Seen::PubRel(3),
                Seen::Publish {
                    topic: "t".into(),
                    qos: QoS::AtLeastOnce,
                    pid: Some(1),
                    dup: true,
                    payload: b"s0".to_vec()
                },
                Seen::Publish {
                    topic: "t".into(),
                    qos: QoS::ExactlyOnce,
                    pid: Some(2),
                    dup: true,
                    payload: b"s1".to_vec()
                },
            ],
            "{p}"
        );
    }
}

#[test]
fn lost_session_abandons_open_publishes() {
    let (mut conn, broker) = connected(Protocol::V5);
    publish(&mut conn, 10, QoS::AtLeastOnce, 0).unwrap();
    publish(&mut conn, 11, QoS::AtLeastOnce, 1).unwrap();
    broker.read(&mut conn);
    conn.lost();
    conn.begin(&spec(false), 100).unwrap();
    broker.read(&mut conn);
    let ev = feed(&mut conn, broker.connack(false, 0, 100), 110).unwrap();
    match &ev[..] {
        [Event::Abandoned(slots), Event::ConnAck { session_present: false, .. }] => {
            assert_eq!(slots.iter().map(|s| s.token.seq).collect::<Vec<_>>(), vec![0, 1]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(conn.in_flight(), 0);
}

#[test]
fn subscribe_and_suback() {
    for p in BOTH {
        let (mut conn, broker) = connected(p);
        let filters = [(ByteString::from("a/+"), QoS::ExactlyOnce)];
        conn.subscribe(5, &filters, Token { seq: 42, intended_ns: 0 }).unwrap().unwrap();
        assert_eq!(broker.read(&mut conn), vec![Seen::Subscribe(1, vec!["a/+".into()])]);
        let ev = feed(&mut conn, broker.suback(1, QoS::AtLeastOnce), 9).unwrap();
        match &ev[..] {
            [Event::SubAck { token, codes, sent_ns: 5 }] => {
                assert_eq!(token.seq, 42);
                assert_eq!(codes, &vec![1]);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn protocol_violations_are_faults() {
    let (mut conn, broker) = connected(Protocol::V311);
    assert!(matches!(feed(&mut conn, broker.ack(AckKind::PubAck, 77), 5), Err(Fault::Protocol(_))));
    let (mut conn, broker) = connected(Protocol::V5);
    assert!(matches!(feed(&mut conn, broker.connack(false, 0, 10), 5), Err(Fault::Protocol(_))));

    let mut conn = Connection::new(opts(Protocol::V311));
    conn.begin(&spec(true), 0).unwrap();
    let b3 = Broker::new(Protocol::V311);
    b3.read(&mut conn);
    assert!(matches!(feed(&mut conn, b3.pingresp(), 5), Err(Fault::Protocol(_))));
    // garbage is a decode fault, not a panic
    let mut garbage = BytesMut::from(&b"\xf0\x00"[..]);
    let mut conn = Connection::new(opts(Protocol::V311));
    conn.begin(&spec(true), 0).unwrap();
    assert!(matches!(conn.handle(&mut garbage, 1, |_| {}), Err(Fault::Decode(_))));
}

#[test]
fn server_disconnect_reason_is_reported() {
    let (mut conn, broker) = connected(Protocol::V5);
    let Broker::V5(c) = &broker else { unreachable!() };
    let bytes = enc5(
        c,
        v5::codec::Packet::Disconnect(v5::codec::Disconnect::new(
            v5::codec::DisconnectReasonCode::SessionTakenOver,
        )),
    );
    let ev = feed(&mut conn, bytes, 5).unwrap();
    assert!(matches!(ev[..], [Event::Disconnect { code: 0x8E }]), "{ev:?}");
    assert_eq!(conn.phase(), ConnState::Closed);
}

#[test]
fn clean_disconnect_is_written() {
    for p in BOTH {
        let (mut conn, broker) = connected(p);
        conn.disconnect(0).unwrap();
        assert_eq!(broker.read(&mut conn), vec![Seen::Disconnect]);
        assert_eq!(conn.phase(), ConnState::Closed);
    }
}
