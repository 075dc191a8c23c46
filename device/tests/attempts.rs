//! A device that backs off exponentially, against squall's broker withholding its first four
//! CONNACKs: the broker's timeline gives its attempts and the delays between them (from each
//! connection's end to the next CONNECT, so its own 100 ms CONNACK timeout is not counted), and
//! the classifier reads them as exponential. The device is a hand-written MQTT 3.1.1 client.

use std::time::Duration;

use squall_broker::timeline::Note;
use squall_broker::{AckPacket, Action, Broker, BrokerConfig, Rule, Selector};
use squall_device::attempts::{attempts, delays_s};
use squall_device::backoff::{Policy, classify};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONNECT: &[u8] = &[0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 4, b'd', b'e', b'v', b'1'];

/// Connects; true if a CONNACK came within `wait`.
async fn attempt(broker: &Broker, wait: Duration) -> bool {
    let mut s = tokio::net::TcpStream::connect(broker.local_addr()).await.unwrap();
    s.write_all(CONNECT).await.unwrap();
    let mut ack = [0u8; 4];
    let got = tokio::time::timeout(wait, s.read_exact(&mut ack)).await.is_ok_and(|r| r.is_ok());
    drop(s); // the device gives up on this connection (or, once answered, leaves)
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_run_from_each_connections_end_to_the_next_connect() {
    let mut config = BrokerConfig { timeline: true, ..Default::default() };
    config.faults = vec![Rule {
        select: Selector { clients: Some("dev1".into()), first: Some(4), ..Default::default() },
        action: Action::Withhold { packet: AckPacket::ConnAck },
    }];
    let broker = Broker::start(config).await.unwrap();
    let sleeps = [250u64, 500, 1000, 2000];
    for (i, ms) in sleeps.iter().enumerate() {
        assert!(!attempt(&broker, Duration::from_millis(100)).await, "attempt {} is withheld", i + 1);
        tokio::time::sleep(Duration::from_millis(*ms)).await;
    }
    assert!(attempt(&broker, Duration::from_secs(5)).await, "the fifth is answered");
    tokio::time::sleep(Duration::from_millis(200)).await; // its close reaches the timeline

    let a = attempts(&broker.timeline("dev1"));
    assert_eq!(a.len(), 5, "{a:?}");
    assert!(a[..4].iter().all(|x| x.connack_note == Some(Note::Withheld) && x.connack_ns.is_none()), "{a:?}");
    assert!(a[4].connack_ns.is_some() && a.iter().all(|x| x.closed_ns.is_some()), "{a:?}");
    let d = delays_s(&a);
    assert_eq!(d.len(), 4);
    for (i, (got, want)) in d.iter().zip(sleeps).enumerate() {
        // its sleep is in it, never early
        assert!(*got >= want as f64 / 1e3 - 0.001, "{d:?}");
        // and its CONNACK wait (100 ms) is not: that lies between CONNECT and the close
        let waited = a[i].closed_ns.unwrap() - a[i].connect_ns.unwrap();
        assert!(waited >= 99_000_000, "attempt {}: closed {waited} ns after its CONNECT", i + 1);
    }
    let j = classify(&d);
    assert_eq!(j.policy, Some(Policy::Exponential), "{}", j.why);
    broker.shutdown().await;
}
