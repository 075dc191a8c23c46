//! criterion benches of the per-message hot paths: what a publish and a receive cost in CPU,
//! piece by piece. `cargo bench -p squall-benches --bench hot_paths`

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ntex_bytes::{BufMut, BytePages, ByteString, BytesMut};
use squall_agent::metrics::{Latency, ReceiverLedger};
use squall_agent::mqtt::codec::{ConnectSpec, Protocol, QoS, WireCodec};
use squall_agent::mqtt::inflight::Token;
use squall_agent::mqtt::state::{Connection, Options};
use squall_agent::pacer::Pacer;
use squall_agent::payload::{HEADER_LEN, Header};

const PAYLOAD: usize = 64;

fn header(seq: u64) -> Header {
    Header { run_tag: 7, stream: 3, seq, intended_ns: 1_000 + seq, sent_ns: 2_000 + seq }
}

/// PUBLISH packets as a broker would send them: header + filler, `n` of them back to back.
fn publishes(proto: Protocol, n: usize) -> BytesMut {
    let codec = WireCodec::new(proto, 0);
    let topic = ByteString::from("bench/topic/0");
    let mut out = BytePages::default();
    let filler = [b'x'; PAYLOAD - HEADER_LEN];
    for i in 0..n {
        codec
            .encode_publish_header(&topic, QoS::AtMostOnce, false, false, None, PAYLOAD as u32, &mut out)
            .unwrap();
        out.put_slice(&header(i as u64).to_bytes());
        out.put_slice(&filler);
    }
    BytesMut::from(out.freeze())
}

fn connected(proto: Protocol) -> Connection {
    let mut c = Connection::new(Options {
        protocol: proto,
        keepalive_secs: 0,
        max_inflight: u16::MAX,
        connect_timeout_ns: u64::MAX / 4,
        ack_timeout_ns: u64::MAX / 4,
        max_inbound_packet: 0,
    });
    let spec = ConnectSpec {
        client_id: "bench".into(),
        keepalive_secs: 0,
        clean_start: true,
        session_expiry_secs: 0,
        username: None,
        password: None,
        will: None,
        receive_max: u16::MAX,
    };
    c.begin(&spec, 0).unwrap();
    c.take_output();
    // CONNACK: 3.1.1 20 02 00 00, MQTT 5 20 03 00 00 00
    let mut ack = BytesMut::from(if proto == Protocol::V5 {
        &b"\x20\x03\x00\x00\x00"[..]
    } else {
        &b"\x20\x02\x00\x00"[..]
    });
    c.handle(&mut ack, 1, |_| {}).unwrap();
    assert!(c.is_connected());
    c
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    for proto in [Protocol::V311, Protocol::V5] {
        let mut conn = connected(proto);
        let topic = ByteString::from("bench/topic/0");
        let filler = [b'x'; PAYLOAD - HEADER_LEN];
        let mut seq = 0u64;
        g.bench_function(format!("publish_qos0_encode_{proto}"), |b| {
            b.iter(|| {
                seq += 1;
                let h = header(seq);
                conn.publish(seq, &topic, QoS::AtMostOnce, false, Token::default(), PAYLOAD as u32, |out| {
                    out.put_slice(&h.to_bytes());
                    out.put_slice(&filler);
                })
                .unwrap()
                .unwrap();
                if seq % 256 == 0 {
                    black_box(conn.take_output());
                }
            })
        });
        let batch = publishes(proto, 256);
        g.throughput(Throughput::Elements(256));
        g.bench_function(format!("receive_qos0_decode_256_{proto}"), |b| {
            b.iter_batched(
                || (connected(proto), batch.clone()),
                |(mut conn, mut buf)| {
                    let mut n = 0;
                    conn.handle(&mut buf, 5, |ev| {
                        black_box(ev);
                        n += 1;
                    })
                    .unwrap();
                    assert_eq!(n, 256);
                },
                BatchSize::SmallInput,
            )
        });
        g.throughput(Throughput::Elements(1));
    }
    g.finish();
}

fn measurement(c: &mut Criterion) {
    let mut g = c.benchmark_group("measurement");
    g.throughput(Throughput::Elements(1));
    let bytes = header(42).to_bytes();
    g.bench_function("payload_header_write", |b| b.iter(|| black_box(header(black_box(42)).to_bytes())));
    g.bench_function("payload_header_read", |b| {
        b.iter(|| black_box(Header::read(black_box(&bytes)).unwrap()))
    });
    let mut h = Latency::new();
    let mut v = 0u64;
    g.bench_function("histogram_record", |b| {
        b.iter(|| {
            v = v.wrapping_add(7_919);
            h.record_ns(black_box(50_000 + v % 5_000_000));
        })
    });
    let mut ledger = ReceiverLedger::new();
    let mut seq = 0u64;
    g.bench_function("ledger_observe_in_order", |b| {
        b.iter(|| {
            seq += 1;
            black_box(ledger.observe(black_box(3), seq, 0));
        })
    });
    let mut fan_in = ReceiverLedger::new();
    let mut k = 0u64;
    g.bench_function("ledger_observe_1000_streams", |b| {
        b.iter(|| {
            k += 1;
            black_box(fan_in.observe((k % 1000) as u32, k / 1000, 1));
        })
    });
    // steady loss: every other message never arrives, so the ledger holds MAX_AHEAD received
    // sequences above gaps and declares one gap lost per message
    let mut lossy = ReceiverLedger::new();
    let mut j = 0u64;
    g.bench_function("ledger_observe_steady_loss", |b| {
        b.iter(|| {
            j += 2;
            black_box(lossy.observe(black_box(5), j, 1));
        })
    });
    let mut pacer = Pacer::new(0, u64::MAX, 1_000, 0);
    let mut now = 0u64;
    g.bench_function("pacer_take_due", |b| {
        b.iter(|| {
            now += 1_000;
            black_box(pacer.take_due(now));
        })
    });
    g.finish();
}

/// Settling the ledger: which of 100,000 streams each subscriber's filter matches (issue 8's
/// scale hazard: 100k subscribers with their own wildcard filter). Per filter, the topic index
/// against the scan of every stream it replaced.
fn settle(c: &mut Criterion) {
    let mut g = c.benchmark_group("settle");
    let topics: Vec<String> = (0..100_000).map(|i| format!("dev/{i}/temp")).collect();
    let mut index = squall_proto::topic::TopicIndex::new();
    for (i, t) in topics.iter().enumerate() {
        index.insert(t, i);
    }
    let mut k = 0usize;
    g.bench_function("filter_100k_streams_index", |b| {
        b.iter(|| {
            k = (k + 7_919) % 100_000;
            black_box(index.matching(&format!("dev/{k}/+")))
        })
    });
    g.bench_function("filter_100k_streams_scan", |b| {
        b.iter(|| {
            k = (k + 7_919) % 100_000;
            let f = format!("dev/{k}/+");
            black_box(topics.iter().filter(|t| squall_proto::topic::matches(&f, t)).count())
        })
    });
    g.finish();
}

criterion_group!(benches, codec, measurement, settle);
criterion_main!(benches);
