//! Persistent sessions under load: a subscriber with a session the broker keeps goes away on
//! schedule while publishers go on; on its return the broker hands over what it queued. The
//! report counts the resumed session, the backlog delivered, its drain time, and every message
//! the broker's queue limit dropped as lost, exactly.

mod support;

use squall_controller::report::Report;
use support::mosquitto::Mosquitto;

/// 10 publishers at 500 msg/s each (QoS 1) for 4 s; one persistent-session subscriber taken
/// away (`drop`) at 1 s and back 2 s later: ~10,000 messages queued for it meanwhile.
async fn backlog_run(target: &str) -> Report {
    let text = r#"
[run]
duration = "4s"
drain = "2s"
[[group]]
name = "pub"
clients = 10
[group.publish]
topic = "backlog/{i}"
qos = 1
interval = "2ms"
[[group]]
name = "sub"
clients = 1
clean_start = false
[group.subscribe]
filters = ["backlog/#"]
qos = 1
[[group.event]]
at = "1s"
action = "drop"
count = 1
back = "2s"
"#;
    let dir = tempfile::tempdir().unwrap();
    support::run(support::plan(text, target, dir.path())).await
}

fn mosquitto_queueing(max_queued: u32) -> Mosquitto {
    Mosquitto::start_with(
        move |port| {
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages {max_queued}\nmax_inflight_messages 20\n"
            )
        },
        |_| {},
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_10000_arrives_after_resume_with_nothing_lost() {
    let m = mosquitto_queueing(50_000);
    let r = backlog_run(&m.url()).await;
    let c = &r.counters;
    let d = &r.delivery.all;
    assert_eq!((c["sessions_resumed"], c["sessions_lost"]), (1, 0), "{c:?}");
    assert!(c["backlog_delivered"] >= 9_000, "{c:?}");
    assert_eq!((d.lost, d.missed_offline, d.session_lost), (0, 0, 0), "{d:?}");
    // QoS 1: what was in flight unacknowledged at the drop may come again (20 at most here)
    assert!(d.duplicates <= 20, "{d:?}");
    assert_eq!(d.delivered, d.expected);
    // resume → the last queued message: 600 kB take more than one read
    let drain = r.latency["backlog"].raw.unwrap();
    assert_eq!(drain.count, 1);
    assert!(drain.max_us > 0, "{drain:?}");
}

/// Past the broker's queue limit: squall's broker drops what it cannot queue and counts it;
/// the ledger's `lost` must be exactly that count. On mosquitto (`max_queued_messages 100`,
/// which counts nothing it tells), the ledger still reconciles to the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_brokers_queue_limit_every_message_is_counted_lost() {
    // 20 in flight at most, as mosquitto below: the bound on what a drop may make it send twice
    let broker = support::broker(|c| {
        c.max_queue = 100;
        c.max_inflight = 20;
    })
    .await;
    let r = backlog_run(&support::url(&broker)).await;
    let (c, d) = (&r.counters, &r.delivery.all);
    let dropped = broker.stats().dropped_queue_full;
    assert_eq!(c["sessions_resumed"], 1, "{c:?}");
    assert!(dropped > 8_000, "the broker dropped {dropped}");
    assert_eq!((d.lost, d.session_lost), (dropped, 0), "{d:?}");
    assert!(d.duplicates <= 20, "QoS 1 redelivers at most what was in flight: {d:?}");
    assert_eq!(d.delivered + d.lost, d.expected, "{d:?}");
    broker.shutdown().await;

    let m = mosquitto_queueing(100);
    let r = backlog_run(&m.url()).await;
    let (c, d) = (&r.counters, &r.delivery.all);
    assert_eq!(c["sessions_resumed"], 1, "{c:?}");
    assert_eq!(d.delivered + d.lost, d.expected, "{d:?}");
    assert!(d.lost > 8_000 && d.duplicates <= 20, "{d:?}");
    // what it did hand over: its 100, the 20 it may hold in flight at most, and the few
    // published between the session's resumption at the broker and the CONNACK's arrival
    assert!((100..=140).contains(&c["backlog_delivered"]), "{c:?}");
}

/// A broker that forgets the session (squall's broker told to answer session present = false,
/// as one restarted without persistence would): the reconnect counts as a lost session, and
/// what was sent meanwhile is `session_lost`, apart from `lost` and from a clean session's
/// `missed_offline`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_owed_to_a_session_the_broker_forgot_are_session_lost() {
    use squall_broker::{Action, Rule};
    let broker =
        support::broker(|c| c.faults = vec![Rule::for_clients("*-sub-*", Action::ExpireSession)]).await;
    let r = backlog_run(&support::url(&broker)).await;
    let (c, d) = (&r.counters, &r.delivery.all);
    assert_eq!((c["sessions_resumed"], c["sessions_lost"], c["backlog_delivered"]), (0, 1, 0), "{c:?}");
    assert!(d.session_lost > 8_000, "{d:?}");
    assert_eq!((d.lost, d.missed_offline), (0, 0), "{d:?}");
    assert_eq!(d.delivered + d.session_lost, d.expected, "{d:?}");
    broker.shutdown().await;
}

/// mosquitto killed (-9) and restarted mid-run, no persistence: every client comes back by its
/// backoff, the outage window (first loss → last return) is in the report, and the ledger
/// reconciles: what the restart cost the persistent subscriber is `session_lost`, what the
/// broker took and never acknowledged is `unacked` and (not delivered) `lost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_is_an_outage_window_and_the_ledger_reconciles() {
    let mut m = mosquitto_queueing(50_000);
    let url = m.url();
    let text = r#"
[run]
duration = "5s"
drain = "2s"
[[group]]
name = "pub"
clients = 50
[group.publish]
topic = "restart/{i}"
qos = 1
interval = "20ms"
[group.reconnect]
backoff = "exponential"
jitter = "full"
min_backoff = "100ms"
max_backoff = "1s"
[[group]]
name = "sub"
clients = 2
clean_start = false
[group.subscribe]
filters = ["restart/#"]
qos = 1
[group.reconnect]
min_backoff = "100ms"
max_backoff = "1s"
"#;
    let dir = tempfile::tempdir().unwrap();
    let plan = support::plan(text, &url, dir.path());
    // the kill comes 2 s in: inside the 5 s window, after the ramp (52 clients at 100/s)
    let killer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(2));
        m.restart();
        m
    });
    let r = support::run(plan).await;
    let _m = killer.join().unwrap();
    let (c, d) = (&r.counters, &r.delivery.all);
    assert_eq!(c["connections_lost"], 52, "every client lost its connection: {c:?}");
    assert_eq!((c["reconnects"], c["abandoned"]), (52, 0), "{c:?}");
    assert_eq!(r.outages.len(), 1, "{:?}", r.outages);
    let o = &r.outages[0];
    assert_eq!((o.clients_lost, o.clients_back), (52, 52), "{o:?}");
    // every attempt of the way back: the one that worked, and every failure (all of them here)
    let attempts = (o.attempts_mean * o.clients_back as f64).round() as u64;
    assert_eq!(attempts, 52 + c["connect_failures"], "{o:?} {c:?}");
    assert!(o.attempts_max >= 1);
    let end = o.end_s.expect("everyone came back");
    // at least the first retry's base delay, and over before the run ended
    assert!(end - o.start_s >= 0.1 && end < r.elapsed_s, "{o:?}");
    // the restarted broker had no sessions: both subscribers found theirs gone
    assert_eq!((c["sessions_lost"], c["sessions_resumed"]), (2, 0), "{c:?}");
    assert!(d.session_lost > 0, "{d:?}");
    // every message is accounted for, one way or another
    assert_eq!(d.delivered + d.lost + d.session_lost + d.missed_offline, d.expected, "{d:?}");
    assert_eq!(d.phantom, 0, "{d:?}");
}

/// A broker that refuses publishes and says so (mosquitto, MQTT 5, an ACL that denies one
/// topic: PUBACK 0x87): the refused messages are `refused` in the ledger, not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_the_broker_refuses_with_a_reason_are_refused_not_lost() {
    let m = Mosquitto::start_with(
        |port| format!("listener {port} 127.0.0.1\nallow_anonymous true\nacl_file acl\n"),
        |dir| support::mosquitto::write_readable(&dir.join("acl"), "topic read #\ntopic write ok/#\n"),
    );
    let text = r##"
[run]
duration = "2s"
drain = "1s"
[[group]]
name = "allowed"
clients = 5
protocol = "5"
[group.publish]
topic = "ok/{i}"
qos = 1
interval = "50ms"
[[group]]
name = "denied"
clients = 5
protocol = "5"
[group.publish]
topic = "no/{i}"
qos = 1
interval = "50ms"
[[group]]
name = "sub"
clients = 1
protocol = "5"
[group.subscribe]
filters = ["#"]
qos = 1
"##;
    let dir = tempfile::tempdir().unwrap();
    let r = support::run(support::plan(text, &m.url(), dir.path())).await;
    let (c, d) = (&r.counters, &r.delivery.all);
    assert!(c["publish_refused"] > 0, "{c:?} {:?}", m.log());
    assert_eq!(d.refused, c["publish_refused"], "{d:?}");
    assert_eq!(d.lost, 0, "{d:?}");
    assert_eq!(d.delivered + d.refused, d.expected, "{d:?}");
    let e = r.errors.iter().find(|e| e.kind == "publish_refused").unwrap();
    assert_eq!(e.code, Some(0x87));
}
