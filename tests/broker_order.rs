//! The broker's faults seen byte by byte on the wire, by a hand-written MQTT 3.1.1 client (no
//! library between the test and the packets): a delayed packet holds back what is written
//! after it, as one ordered stream would; a withheld CONNACK leaves the client unanswered and
//! unprocessed; a stall holds a connection that was already waiting; a drop right after
//! CONNACK sends the CONNACK first.

mod support;

use std::time::{Duration, Instant};

use squall_broker::{AckPacket, Action, Delay, Rule, Selector};
use support::raw::{Raw, pid_of, publish};

/// Every second PUBACK is delayed: the undelayed ones written after it wait behind it, so the
/// client gets its PUBACKs in the order it published (before, the delayed ones came last).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_acks_leave_in_order_behind_each_other() {
    let broker = support::broker(|c| {
        c.faults = vec![Rule {
            select: Selector { every: Some(2), ..Default::default() },
            action: Action::Delay { packet: AckPacket::PubAck, by: Delay::Fixed(Duration::from_millis(50)) },
        }];
    })
    .await;
    let (mut c, _) = Raw::connect(broker.local_addr(), "ordered", true).await;
    let mut burst = Vec::new();
    for pid in 1..=6 {
        burst.extend(publish("o/t", pid, b"x"));
    }
    c.send(&burst).await;
    let mut pids = Vec::new();
    for _ in 0..6 {
        let (first, body) = c.read().await.expect("a PUBACK");
        assert_eq!(first, 0x40);
        pids.push(pid_of(&body));
    }
    assert_eq!(pids, [1, 2, 3, 4, 5, 6]);
    assert_eq!(broker.stats().faults_applied, 3, "three of them were delayed");
    broker.shutdown().await;
}

/// A resumed persistent session whose CONNACK is delayed: the resent PUBLISH (DUP) comes after
/// the CONNACK, never before it (before, it reached the client first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_connack_comes_before_the_resumed_sessions_resends() {
    let broker = support::broker(|c| {
        c.faults = vec![Rule {
            select: Selector { clients: Some("dev".into()), after: Some(1), ..Default::default() },
            action: Action::Delay {
                packet: AckPacket::ConnAck,
                by: Delay::Fixed(Duration::from_millis(150)),
            },
        }];
    })
    .await;
    let (mut dev, present) = Raw::connect(broker.local_addr(), "dev", false).await;
    assert!(!present);
    dev.subscribe("r/t", 1).await;
    let (mut app, _) = Raw::connect(broker.local_addr(), "app", true).await;
    app.send(&publish("r/t", 7, b"stored")).await;
    assert_eq!(app.read().await.map(|p| p.0), Some(0x40), "PUBACK to the publisher");
    // the device gets it and never acknowledges it, then goes away
    let (first, _) = dev.read().await.expect("the PUBLISH");
    assert_eq!(first & 0xf0, 0x30);
    drop(dev);

    let t = Instant::now();
    let mut dev = Raw::open(broker.local_addr(), "dev", false).await;
    let (first, body) = dev.read().await.expect("a packet");
    assert_eq!(first, 0x20, "the CONNACK first, not a packet of type {:#x}", first >> 4);
    assert_eq!(body, [1, 0], "session present, accepted");
    assert!(t.elapsed() >= Duration::from_millis(150), "the CONNACK was delayed");
    let (first, body) = dev.read().await.expect("the resent PUBLISH");
    assert_eq!(first, 0x3a, "PUBLISH, QoS 1, DUP");
    // topic "r/t" (2 + 3 bytes), packet id (2), then the payload
    assert_eq!(&body[7..], b"stored");
    broker.shutdown().await;
}

/// The first two CONNACKs for `dev` are withheld: those connections get no answer, and what
/// the client sends on them is not processed (a subscriber sees nothing); the third connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withheld_connack_leaves_the_connection_unanswered_and_unprocessed() {
    let broker = support::broker(|c| {
        c.faults = vec![Rule {
            select: Selector { clients: Some("dev".into()), first: Some(2), ..Default::default() },
            action: Action::Withhold { packet: AckPacket::ConnAck },
        }];
    })
    .await;
    let (mut watcher, _) = Raw::connect(broker.local_addr(), "watcher", true).await;
    watcher.subscribe("w/#", 1).await;
    for attempt in 1..=2 {
        let mut dev = Raw::open(broker.local_addr(), "dev", true).await;
        dev.send(&publish("w/t", 1, b"too early")).await;
        assert_eq!(dev.read_within(Duration::from_millis(300)).await, None, "attempt {attempt}: no answer");
        drop(dev);
    }
    assert_eq!(watcher.read_within(Duration::from_millis(200)).await, None, "nothing was routed");
    let (mut dev, _) = Raw::connect(broker.local_addr(), "dev", true).await;
    dev.send(&publish("w/t", 2, b"now")).await;
    assert_eq!(dev.read().await.map(|p| p.0), Some(0x40));
    let (first, _) = watcher.read().await.expect("the third connection's message");
    assert_eq!(first & 0xf0, 0x30);
    let s = broker.stats();
    assert_eq!((s.faults_applied, s.connects), (2, 2), "{s:?}");
    broker.shutdown().await;
}

/// A stall that begins while a connection is already waiting for input: what it receives
/// during the stall is taken in (read, routed, acknowledged) only after the stall, as the
/// broker's timeline shows (before, one batch got through at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_holds_a_connection_that_was_already_waiting() {
    use squall_broker::timeline::{Dir, Kind};
    let broker = support::broker(|c| c.timeline = true).await;
    let (mut c, _) = Raw::connect(broker.local_addr(), "waiting", true).await;
    c.send(&publish("s/t", 1, b"before")).await;
    assert_eq!(c.read().await.map(|p| p.0), Some(0x40), "acknowledged at once before the stall");
    // the connection now waits in its loop for the next packet
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    broker.stall_for(Duration::from_millis(300));
    c.send(&publish("s/t", 2, b"during")).await;
    let (first, body) = c.read().await.expect("a PUBACK after the stall");
    assert_eq!((first, pid_of(&body)), (0x40, 2));
    assert!(t.elapsed() >= Duration::from_millis(299), "acknowledged {:?} into a 300 ms stall", t.elapsed());
    let tl = broker.timeline("waiting");
    let at = |dir: Dir, kind: Kind, pid: u16| {
        tl.iter().find(|e| e.dir == dir && e.kind == kind && e.pid == Some(pid)).map(|e| e.at_ns).unwrap()
    };
    let (acked_first, took_second) = (at(Dir::Out, Kind::PubAck, 1), at(Dir::In, Kind::Publish, 2));
    // the stall began after the first PUBACK; the second PUBLISH was taken in after it ended
    assert!(
        took_second - acked_first >= 300_000_000,
        "the second PUBLISH was taken in {} µs after the first PUBACK, inside the stall",
        (took_second - acked_first) / 1000
    );
    broker.shutdown().await;
}

/// `drop_after = "0s"`, the unstable connection of Device Advisor's reconnect case: the client
/// gets its CONNACK, then the connection ends (no DISCONNECT), every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_right_after_connack_sends_the_connack_first() {
    let broker = support::broker(|c| c.faults = vec![Rule::all(Action::DropAfter(Duration::ZERO))]).await;
    for attempt in 1..=3 {
        let (mut c, _) = Raw::connect(broker.local_addr(), "unstable", true).await;
        assert_eq!(c.read().await, None, "attempt {attempt}: closed after the CONNACK, no DISCONNECT");
    }
    assert_eq!(broker.stats().faults_applied, 3);
    broker.shutdown().await;
}
