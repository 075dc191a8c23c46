//! Every plain value survives plain → wire → bytes → wire → plain unchanged, chunking included.

use proptest::prelude::*;
use prost::Message;

use super::*;
use crate::metrics::Latency;

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(Protocol::V311), Just(Protocol::V5)]
}

fn group_spec() -> impl Strategy<Value = GroupSpec> {
    let will =
        proptest::option::of(("[a-z/]{1,12}", ".{0,8}", 0u8..3, any::<bool>(), any::<u32>()).prop_map(
            |(topic, payload, qos, retain, delay_secs)| WillSpec { topic, payload, qos, retain, delay_secs },
        ));
    let payload = prop_oneof![
        any::<u32>().prop_map(PayloadSpec::Size),
        ".{0,16}".prop_map(PayloadSpec::Text),
        ".{0,16}".prop_map(PayloadSpec::Raw),
    ];
    let rate = prop_oneof![
        (0.001f64..1e6).prop_map(RateSpec::IntervalMs),
        (0.001f64..1e6).prop_map(RateSpec::GroupPerSec)
    ];
    let publish =
        proptest::option::of(("[a-z/{}]{1,16}", 0u8..3, any::<bool>(), payload, rate).prop_map(
            |(topic, qos, retain, payload, rate)| PublishSpec { topic, qos, retain, payload, rate },
        ));
    let subscribe = proptest::option::of(
        (proptest::collection::vec("[a-z/+#]{1,10}", 0..4), 0u8..3)
            .prop_map(|(filters, qos)| SubscribeSpec { filters, qos }),
    );
    let reconnect = (
        (any::<bool>(), any::<u64>(), any::<u64>(), 0.0f64..1e6),
        (0usize..4, 0usize..4, 1.0f64..100.0, any::<u32>()),
    )
        .prop_map(
            |((enabled, min_backoff_ms, max_backoff_ms, max_rate), (p, j, multiplier, max_attempts))| {
                ReconnectSpec {
                    enabled,
                    min_backoff_ms,
                    max_backoff_ms,
                    max_rate,
                    policy: BackoffPolicy::from_name(BackoffPolicy::NAMES[p]).unwrap(),
                    jitter: Jitter::from_name(Jitter::NAMES[j]).unwrap(),
                    multiplier,
                    max_attempts,
                }
            },
        );
    let event = (
        (any::<u64>(), any::<u64>(), any::<u32>(), 0usize..4, any::<u32>()),
        prop_oneof![
            Just(Comeback::Now),
            Just(Comeback::Backoff),
            Just(Comeback::Never),
            any::<u64>().prop_map(Comeback::AfterMs)
        ],
    )
        .prop_map(|((at_ms, every_ms, times, a, count), back)| EventSpec {
            at_ms,
            every_ms,
            times,
            action: EventAction::from_name(EventAction::NAMES[a]).unwrap(),
            count,
            back,
        });
    (
        ("[a-z]{1,8}", any::<u32>(), "[a-z{}]{1,12}", protocol(), any::<u16>(), any::<bool>(), any::<u32>()),
        (proptest::option::of("[a-z]{0,8}"), proptest::option::of(".{0,8}"), will, 0.0f64..1e9, 0.0f64..1e9),
        (any::<u16>(), any::<u64>(), any::<u64>(), reconnect, publish, subscribe),
        proptest::collection::vec(event, 0..3),
    )
        .prop_map(
            |(
                (name, clients, client_id, protocol, keepalive_secs, clean_start, session_expiry_secs),
                (username, password, will, connect_rate, disconnect_rate),
                (max_inflight, connect_timeout_ms, ack_timeout_ms, reconnect, publish, subscribe),
                events,
            )| GroupSpec {
                name,
                clients,
                client_id,
                protocol,
                keepalive_secs,
                clean_start,
                session_expiry_secs,
                username,
                password,
                will,
                connect_rate,
                disconnect_rate,
                max_inflight,
                connect_timeout_ms,
                ack_timeout_ms,
                reconnect,
                publish,
                subscribe,
                tls_resumption: clients % 2 == 0,
                events,
            },
        )
}

fn assignment() -> impl Strategy<Value = Assignment> {
    let target = (any::<bool>(), "[a-z]{1,8}(\\.[a-z]{1,5})?", any::<u16>()).prop_map(|(tls, host, port)| {
        TargetUrl { tls, host, port, ws_path: tls.then(|| "/mqtt".to_string()) }
    });
    let tls = (
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
        proptest::option::of("[a-z.]{1,12}"),
        any::<bool>(),
    )
        .prop_map(|(ca_pem, cert_pem, key_pem, server_name, insecure)| TlsMaterial {
            ca_pem,
            cert_pem,
            key_pem,
            server_name,
            insecure,
        });
    let identity =
        (proptest::option::of(".{0,12}"), proptest::option::of(".{0,12}"), proptest::option::of(".{0,12}"))
            .prop_map(|(client_id, username, password)| Identity { client_id, username, password });
    let group = (
        (group_spec(), any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()),
        proptest::collection::vec(identity, 0..4),
    )
        .prop_map(|((spec, first, count, stream_base, client_base, group), identities)| {
            GroupAssignment { spec, first, count, stream_base, client_base, group, identities }
        });
    (
        any::<u32>(),
        any::<u32>(),
        proptest::collection::vec(target, 0..3),
        tls,
        proptest::collection::vec(any::<std::net::IpAddr>(), 0..3),
        proptest::collection::vec(group, 0..3),
        proptest::collection::vec(
            (any::<u32>(), any::<u32>(), any::<u32>())
                .prop_map(|(stream_base, clients, group)| PublishRange { stream_base, clients, group }),
            0..3,
        ),
        (any::<u64>(), any::<u32>(), any::<u64>(), any::<i64>(), any::<u32>(), any::<bool>(), any::<u64>()),
    )
        .prop_map(
            |(
                run_tag,
                agent,
                targets,
                tls,
                source_addresses,
                groups,
                publish_ranges,
                (snap, maxc, maxd, offset, coalesce, adaptive, unsent),
            )| {
                Assignment {
                    run_tag,
                    agent,
                    targets,
                    tls,
                    source_addresses,
                    groups,
                    snapshot_interval_ms: snap,
                    max_connecting: maxc,
                    max_duration_ms: maxd,
                    clock_offset_ns: offset,
                    timer_coalesce_us: coalesce,
                    read_coalesce_us: coalesce / 10,
                    adaptive_connecting: adaptive,
                    max_unsent_bytes: unsent,
                    publish_ranges,
                    staged: adaptive ^ (coalesce % 2 == 0),
                }
            },
        )
}

fn load_error() -> impl Strategy<Value = LoadError> {
    prop_oneof![
        Just(LoadError::TcpRefused),
        Just(LoadError::ConnectTimeout),
        Just(LoadError::Unreachable),
        Just(LoadError::NoLocalPort),
        Just(LoadError::TooManyOpenFiles),
        Just(LoadError::Tls),
        Just(LoadError::WebSocket),
        Just(LoadError::ConnectIo),
        any::<u8>().prop_map(|code| LoadError::ConnectRefused { code }),
        any::<u8>().prop_map(|code| LoadError::SubscribeRefused { code }),
        any::<u8>().prop_map(|code| LoadError::PublishRefused { code }),
        Just(LoadError::AckTimeout),
        Just(LoadError::PingTimeout),
        Just(LoadError::ProtocolError),
        any::<u8>().prop_map(|code| LoadError::DisconnectedByBroker { code }),
        Just(LoadError::ClosedByBroker),
        Just(LoadError::ConnectionLost),
    ]
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    let counters = proptest::collection::vec(any::<u64>(), Counters::NAMES.len()).prop_map(|vals| {
        let mut c = Counters::default();
        for (name, v) in Counters::NAMES.iter().zip(vals) {
            *c.by_name_mut(name).unwrap() = v;
        }
        c
    });
    let hist = (
        0..Metric::ALL.len(),
        any::<bool>(),
        proptest::collection::vec(1u64..10_000_000_000, 1..20),
        any::<u64>(),
        any::<u32>(),
    )
        .prop_map(|(m, raw, values, clamped, group)| {
            let mut l = Latency::new();
            for v in values {
                l.record_ns(v);
            }
            HistogramBytes {
                metric: Metric::ALL[m],
                timing: if raw { Timing::Raw } else { Timing::Corrected },
                v2: l.to_v2(),
                clamped,
                group,
            }
        });
    (
        (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
        counters,
        proptest::collection::vec((load_error(), any::<u64>()), 0..4),
        proptest::collection::vec(hist, 0..3),
        proptest::collection::vec(will_record(), 0..4),
    )
        .prop_map(|((agent, seq, start, end, connected), counters, errors, histograms, wills)| {
            Snapshot {
                agent,
                seq,
                start_unix_ns: start,
                end_unix_ns: end,
                counters,
                errors: errors.into_iter().map(|(error, count)| ErrorCount { error, count }).collect(),
                connected,
                histograms,
                wills,
            }
        })
}

fn will_record() -> impl Strategy<Value = WillRecord> {
    use crate::metrics::WillMark;
    let mark = prop_oneof![
        Just(WillMark::Owed),
        Just(WillMark::Withdrawn),
        Just(WillMark::Allowed),
        Just(WillMark::Delivered)
    ];
    (mark, any::<u32>(), any::<u32>(), any::<u32>(), any::<u64>(), any::<u64>(), "[a-z/0-9]{0,12}").prop_map(
        |(mark, group, client, epoch, at_unix_ns, receiver, topic)| WillRecord {
            mark,
            group,
            client,
            epoch,
            at_unix_ns,
            receiver,
            topic,
        },
    )
}

fn stream_final() -> impl Strategy<Value = StreamFinal> {
    (any::<u32>(), "[a-z/0-9]{0,12}", 0u8..3, any::<u64>())
        .prop_map(|(stream, topic, qos, sent)| StreamFinal { stream, topic, qos, sent, refused: sent / 3 })
}

fn totals() -> impl Strategy<Value = LedgerTotals> {
    proptest::collection::vec(any::<u64>(), 27).prop_map(|v| {
        let d = |i: usize| Delivery {
            expected: v[i],
            received: v[i + 1],
            lost: v[i + 2],
            duplicates: v[i + 3],
            out_of_order: v[i + 4],
            missed_offline: v[i + 5],
            phantom: v[i + 6],
            session_lost: v[i + 7],
            refused: v[i + 8],
        };
        LedgerTotals { qos: [d(0), d(9), d(18)] }
    })
}

fn event() -> impl Strategy<Value = AgentEvent> {
    prop_oneof![
        snapshot().prop_map(AgentEvent::Snapshot),
        (any::<u64>(), any::<u64>())
            .prop_map(|(clients, connected)| AgentEvent::Ready { clients, connected }),
        // up to a few chunks' worth
        proptest::collection::vec(stream_final(), 0..(STREAMS_PER_CHUNK * 2 + 3))
            .prop_map(|streams| AgentEvent::PublishDone { streams }),
        (
            totals(),
            proptest::collection::vec(("[a-z]{1,6}", totals()), 0..3),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec((proptest::collection::vec("[a-z/#+]{1,6}", 0..3), any::<u64>()), 0..3)
        )
            .prop_map(
                |(ledger, ledger_by_group, receivers, receivers_never_subscribed, observers)| {
                    AgentEvent::Finished(AgentResult {
                        ledger,
                        ledger_by_group,
                        receivers,
                        receivers_never_subscribed,
                        observers: observers
                            .into_iter()
                            .map(|(filters, count)| Observers { filters, count })
                            .collect(),
                        storms: (receivers % 3 == 0)
                            .then(|| StormResult {
                                group: 1,
                                event: 2,
                                at_ms: receivers,
                                taken: 9,
                                back_v2: Latency::new().to_v2(),
                                policy_v2: vec![],
                                failed_attempts: 3,
                                abandoned: 1,
                                attempts_sum: 12,
                                attempts_max: 4,
                                failures_by_s: vec![2, 0, 1],
                            })
                            .into_iter()
                            .collect(),
                        storms_untracked: receivers_never_subscribed,
                        outages: vec![OutageWindow {
                            start_unix_ns: receivers,
                            end_unix_ns: 0,
                            lost: 2,
                            back: 1,
                            attempts_sum: 3,
                            attempts_max: 3,
                        }],
                        shares: (receivers % 2 == 0)
                            .then(|| ShareResult {
                                group: 3,
                                filters: vec![("$share/w/t/+".into(), Some(1)), ("$share/w/u".into(), None)],
                                members: receivers,
                                out_of_order: [1, receivers, 0],
                                unrecorded: receivers_never_subscribed,
                            })
                            .into_iter()
                            .collect(),
                    })
                }
            ),
        (
            any::<u32>(),
            proptest::collection::vec("[a-z/$+]{1,8}", 0..3),
            any::<u64>(),
            proptest::collection::vec(
                (any::<u64>(), any::<u32>(), 0u8..3, proptest::collection::vec(any::<u64>(), 0..50)),
                0..4
            )
        )
            .prop_map(|(group, filters, through_unix_ns, streams)| {
                AgentEvent::Receipts(Receipts {
                    group,
                    filters,
                    through_unix_ns,
                    streams: streams
                        .into_iter()
                        .map(|(epoch, stream, qos, mut seqs)| {
                            // sorted, as agents send them, and any values at all
                            if epoch % 2 == 0 {
                                seqs.sort_unstable();
                            }
                            StreamReceipts { epoch, stream, qos, seqs }
                        })
                        .collect(),
                })
            }),
        ".{0,20}".prop_map(|message| AgentEvent::Failed { message }),
        any::<i64>().prop_map(|late_ns| AgentEvent::Started { late_ns }),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (any::<u64>(), any::<u64>())
            .prop_map(|(start_unix_ns, until_unix_ns)| Command::Publish { start_unix_ns, until_unix_ns }),
        (proptest::collection::vec(stream_final(), 0..(STREAMS_PER_CHUNK + 10)), any::<u64>())
            .prop_map(|(streams, drain_ms)| Command::Finish { streams, drain_ms }),
        Just(Command::Abort),
        (any::<u32>(), any::<u64>(), any::<u64>(), -1e6f64..1e6).prop_map(
            |(index, start_unix_ns, until_unix_ns, scale)| {
                Command::Stage(crate::link::StageCommand { index, start_unix_ns, until_unix_ns, scale })
            }
        ),
    ]
}

/// Through bytes, as the link does.
fn through_bytes<M: Message + Default>(m: M) -> M {
    M::decode(m.encode_to_vec().as_slice()).expect("what prost encodes, it decodes")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn assignments_round_trip(a in assignment()) {
        let back: Assignment = through_bytes(pb::Assignment::from(&a)).try_into().unwrap();
        prop_assert_eq!(back, a);
    }

    #[test]
    fn events_round_trip(e in event()) {
        let mut chunks = Chunks::new(usize::MAX);
        let mut out = None;
        for m in event_messages(&e) {
            match through_bytes(m).body.unwrap() {
                pb::agent_message::Body::StreamFinals(c) => {
                    prop_assert!(c.streams.len() <= STREAMS_PER_CHUNK);
                    chunks.push(c).unwrap();
                }
                pb::agent_message::Body::Event(ev) => out = Some(event_from_wire(ev, &mut chunks).unwrap()),
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
        prop_assert_eq!(out.unwrap(), e);
    }

    #[test]
    fn commands_round_trip(c in command()) {
        let mut chunks = Chunks::new(usize::MAX);
        let mut out = None;
        for m in command_messages(&c) {
            match through_bytes(m).body.unwrap() {
                pb::controller_message::Body::StreamFinals(s) => chunks.push(s).unwrap(),
                pb::controller_message::Body::Command(cmd) => out = Some(command_from_wire(cmd, &mut chunks).unwrap()),
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
        prop_assert_eq!(out.unwrap(), c);
    }

    /// Arbitrary bytes never panic the decoder or the conversions.
    #[test]
    fn arbitrary_bytes_are_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(m) = pb::AgentMessage::decode(bytes.as_slice())
            && let Some(pb::agent_message::Body::Event(e)) = m.body {
            let _ = event_from_wire(e, &mut Chunks::new(16));
        }
        if let Ok(a) = pb::Assignment::decode(bytes.as_slice()) {
            let _ = Assignment::try_from(a);
        }
    }
}

#[test]
fn chunks_refuse_more_than_expected() {
    let mut c = Chunks::new(2);
    let s = |n| pb::StreamFinal { stream: n, topic: "t".into(), qos: 0, sent: 1, refused: 0 };
    c.push(pb::StreamFinals { streams: vec![s(0), s(1)] }).unwrap();
    let e = c.push(pb::StreamFinals { streams: vec![s(2)] }).unwrap_err();
    assert_eq!(e.field, "stream_finals");
}

#[test]
fn unknown_counters_and_error_kinds_are_refused_by_name() {
    let s = pb::Snapshot { counters: [("bogus".to_string(), 1)].into(), ..Default::default() };
    let e = Snapshot::try_from(s).unwrap_err();
    assert!(e.to_string().contains("bogus"), "{e}");
    let s = pb::Snapshot {
        errors: vec![pb::ErrorCount { kind: "connect_refused".into(), code: None, count: 1 }],
        ..Default::default()
    };
    assert!(Snapshot::try_from(s).is_err(), "connect_refused needs its code");
}
