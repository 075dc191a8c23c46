//! Fault injection seen from the outside: squall's own load engine (and paho-mqtt) against
//! the embedded broker told to misbehave. Each fault must show up exactly where it should.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use squall_broker::{AckPacket, Action, InPacket, Rule, Selector};
use squall_controller::report::Report;

fn errors(r: &Report, kind: &str) -> Vec<(Option<u8>, u64)> {
    r.errors.iter().filter(|e| e.kind == kind).map(|e| (e.code, e.count)).collect()
}

async fn run(broker: &squall_broker::Broker, text: &str) -> Report {
    let dir = tempfile::tempdir().unwrap();
    support::run(support::plan(text, &support::url(broker), dir.path())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_the_chosen_code_mapped_per_protocol() {
    let broker =
        support::broker(|c| c.faults = vec![Rule::for_clients("bad-*", Action::Refuse { code: 0x87 })]).await;
    let report = run(
        &broker,
        r#"
[run]
duration = "500ms"
[[group]]
name = "good"
clients = 3
[[group]]
name = "bad5"
clients = 2
client_id = "bad-5-{i}"
protocol = "5"
[group.reconnect]
enabled = false
[[group]]
name = "bad3"
clients = 4
client_id = "bad-3-{i}"
[group.reconnect]
enabled = false
"#,
    )
    .await;
    let mut refused = errors(&report, "connect_refused");
    refused.sort();
    assert_eq!(refused, vec![(Some(5), 4), (Some(0x87), 2)], "0x87 (not authorized) is 5 for 3.1.1 clients");
    assert_eq!(report.counters["connects"], 3);
    assert_eq!(broker.stats().connects_refused, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withheld_acknowledgements_become_timeouts_and_unacked() {
    // every 4th PUBACK never comes; no SUBACK for the subscribers
    let broker = support::broker(|c| {
        c.faults = vec![
            Rule {
                select: Selector { every: Some(4), ..Default::default() },
                action: Action::Withhold { packet: AckPacket::PubAck },
            },
            Rule::for_clients("*-sub-*", Action::Withhold { packet: AckPacket::SubAck }),
        ]
    })
    .await;
    let report = run(
        &broker,
        r#"
[run]
duration = "1s"
drain = "1s"
ramp_timeout = "1s"
[[group]]
name = "pub"
clients = 2
ack_timeout = "500ms"
[group.publish]
topic = "w/{i}"
qos = 1
interval = "100ms"
[[group]]
name = "sub"
clients = 1
ack_timeout = "500ms"
[group.subscribe]
filters = ["w/#"]
qos = 1
"#,
    )
    .await;
    let c = &report.counters;
    let withheld = broker.stats().faults_applied - 1; // one SUBACK, the rest PUBACKs
    assert!(withheld >= 4, "{:?}", broker.stats());
    assert_eq!(
        c["published_qos1"] - c["acked_qos1"],
        withheld,
        "every withheld PUBACK is a publish never acknowledged"
    );
    assert_eq!(c["unacked"], withheld, "and counted as unacked at the end");
    assert_eq!(c["ack_timeouts"], withheld + 1, "each withheld ack (and the SUBACK) timed out once");
    assert!(report.warnings.iter().any(|w| w.contains("ramp-up did not finish")), "{:?}", report.warnings);
    assert_eq!(c["subscribes"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_are_counted_and_clients_come_back() {
    let broker = support::broker(|c| {
        c.faults = vec![
            Rule {
                select: Selector {
                    clients: Some("*-flaky-*".into()),
                    first: Some(1),
                    after: None,
                    every: None,
                },
                action: Action::DropAfter(Duration::from_millis(300)),
            },
            Rule::for_clients("*-picky-*", Action::DropOn(InPacket::Subscribe)),
        ]
    })
    .await;
    let report = run(
        &broker,
        r#"
[run]
duration = "2s"
drain = "500ms"
[[group]]
name = "flaky"
clients = 3
[group.reconnect]
min_backoff = "100ms"
max_backoff = "200ms"
[group.publish]
topic = "d/{i}"
qos = 1
interval = "50ms"
[[group]]
name = "picky"
clients = 2
[group.reconnect]
enabled = false
[group.subscribe]
filters = ["d/#"]
"#,
    )
    .await;
    let c = &report.counters;
    // flaky: dropped once after 300 ms, reconnected (first = 1: the second connection stays)
    assert_eq!(
        errors(&report, "closed_by_broker").iter().map(|e| e.1).sum::<u64>(),
        3 + 2,
        "{:?}",
        report.errors
    );
    assert_eq!(c["connections_lost"], 3 + 2);
    assert_eq!(c["connect_attempts"], 3 * 2 + 2);
    assert!(c["published_qos1"] > 0);
    assert_eq!(c["subscribes"], 0, "picky clients were dropped on SUBSCRIBE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_refuses_the_rest() {
    let broker = support::broker(|c| c.max_connections = 4).await;
    let report = run(
        &broker,
        r#"
[run]
duration = "300ms"
[[group]]
name = "crowd"
clients = 7
protocol = "5"
[group.reconnect]
enabled = false
"#,
    )
    .await;
    assert_eq!(report.counters["connects"], 4);
    assert_eq!(errors(&report, "connect_refused"), vec![(Some(0x97), 3)], "quota exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sessions_come_back_empty() {
    let broker = support::broker(|c| c.faults = vec![Rule::all(Action::ExpireSession)]).await;
    let port = broker.local_addr().port();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([
                "tests/interop/paho_checks.py",
                "127.0.0.1",
                &port.to_string(),
                "expired_session_v311",
                "expired_session_v5",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.lines().filter(|l| l.starts_with("ok ")).count(), 2, "{text}");
}

#[test]
fn squall_broker_runs_standalone_with_a_fault_file() {
    let dir = tempfile::tempdir().unwrap();
    let faults = dir.path().join("faults.toml");
    std::fs::write(&faults, "[[fault]]\ndelay = \"puback\"\nby = \"2ms\"\n").unwrap();
    let mut broker = support::squall()
        .args(["broker", "--listen", "127.0.0.1:0", "--faults"])
        .arg(&faults)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(broker.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("squall broker listening on ")
        .expect("it says where it listens")
        .to_string();
    let out = support::squall()
        .args(["run", "scenarios/quickstart.toml", "--duration", "1s", "--live", "off", "--target"])
        .arg(format!("mqtt://{addr}"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let puback = stdout.lines().find(|l| l.trim_start().starts_with("puback (raw)")).expect("puback latency");
    let p50: f64 = puback.split_whitespace().nth(3).unwrap().trim_end_matches("ms").parse().unwrap();
    assert!(p50 >= 2.0, "the 2ms PUBACK delay shows: {puback}");
    // Ctrl-C: the broker says what it saw and exits 0
    unsafe { libc_kill(broker.id() as i32, 2) };
    let out = broker.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stats: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&out.stderr).trim()).unwrap();
    assert!(stats["faults_applied"].as_u64().unwrap() > 0, "{stats}");
}

#[test]
fn a_bad_fault_file_is_rejected_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let faults = dir.path().join("faults.toml");
    std::fs::write(&faults, "[[fault]]\nwithold = \"puback\"\n").unwrap();
    let out = support::squall()
        .args(["broker", "--listen", "127.0.0.1:0", "--faults"])
        .arg(&faults)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown field `withold`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_spread_over_targets_and_source_addresses() {
    let a = support::broker(|c| c.timeline = true).await;
    let b = support::broker(|c| c.timeline = true).await;
    let text = format!(
        r#"
[target]
urls = ["{}", "{}"]
source_addresses = ["127.0.0.2", "127.0.0.3"]
[run]
duration = "500ms"
[[group]]
name = "spread"
clients = 8
client_id = "spread-{{i}}"
[group.publish]
topic = "spread/{{i}}"
interval = "100ms"
"#,
        support::url(&a),
        support::url(&b)
    );
    let dir = tempfile::tempdir().unwrap();
    let ov = squall_controller::scenario::Overrides::default();
    let plan = squall_controller::scenario::load_source(
        &squall_controller::scenario::Source::new(dir.path().join("s.toml"), text),
        &ov,
    )
    .unwrap();
    let report = support::run(plan).await;
    assert_eq!(report.counters["connects"], 8, "{:?}", report.errors);
    // client i goes to target i mod 2
    let mut on_a: Vec<String> = a.timeline_clients();
    let mut on_b: Vec<String> = b.timeline_clients();
    on_a.sort();
    on_b.sort();
    assert_eq!(on_a, ["spread-0", "spread-2", "spread-4", "spread-6"]);
    assert_eq!(on_b, ["spread-1", "spread-3", "spread-5", "spread-7"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_sessions_resend_in_flight_publishes_after_a_drop() {
    // publishers are dropped once, mid-window, while PUBACKs are held back (so publishes are
    // in flight at the drop); they resume their sessions and must resend with DUP
    let broker = support::broker(|c| {
        c.faults = vec![
            Rule {
                select: Selector {
                    clients: Some("*-pub-*".into()),
                    first: Some(1),
                    after: None,
                    every: None,
                },
                action: Action::DropAfter(Duration::from_millis(700)),
            },
            Rule {
                select: Selector {
                    clients: Some("*-pub-*".into()),
                    first: Some(1),
                    after: None,
                    every: None,
                },
                action: Action::Delay {
                    packet: AckPacket::PubAck,
                    by: squall_broker::Delay::Fixed(Duration::from_millis(50)),
                },
            },
        ]
    })
    .await;
    let report = run(
        &broker,
        r#"
thresholds = ["lost == 0", "unacked == 0"]
[run]
duration = "2s"
drain = "1s"
[[group]]
name = "pub"
clients = 4
protocol = "5"
clean_start = false
session_expiry = "60s"
[group.reconnect]
min_backoff = "50ms"
max_backoff = "100ms"
[group.publish]
topic = "p/{i}"
qos = 1
interval = "20ms"
[[group]]
name = "sub"
clients = 1
protocol = "5"
[group.subscribe]
filters = ["p/#"]
qos = 1
"#,
    )
    .await;
    let c = &report.counters;
    assert_eq!(c["connections_lost"], 4, "{:?}", report.errors);
    assert!(
        report.delivery.all.duplicates > 0,
        "the resent publishes reached the subscriber a second time: {:?}",
        report.delivery
    );
    assert_eq!(
        report.verdict.status,
        squall_controller::report::Status::Pass,
        "{:?} {:?}",
        report.verdict,
        report.delivery
    );
    assert_eq!(c["acked_qos1"], c["published_qos1"], "every publish was acknowledged in the end");
}

/// Every client's first connection is dropped after 300 ms: each comes back by its group's
/// backoff policy, and the report says how long it was away and how long it waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_clients_come_back_by_their_backoff_policy_and_say_how_long_it_took() {
    let broker = support::broker(|c| {
        c.faults = vec![Rule {
            select: Selector { clients: None, first: Some(1), after: None, every: None },
            action: Action::DropAfter(Duration::from_millis(300)),
        }]
    })
    .await;
    let report = run(
        &broker,
        r#"
[run]
duration = "2s"
drain = "0s"
[[group]]
name = "constant"
clients = 20
[group.reconnect]
backoff = "constant"
jitter = "none"
min_backoff = "400ms"
[[group]]
name = "spread"
clients = 20
[group.reconnect]
min_backoff = "100ms"
max_backoff = "600ms"
jitter = "decorrelated"
"#,
    )
    .await;
    let c = &report.counters;
    assert_eq!((c["connections_lost"], c["reconnects"], c["abandoned"]), (40, 40, 0), "{c:?}");
    let group = |name: &str, metric: &str| {
        let g = report.groups.iter().find(|g| g.name == name).unwrap();
        g.latency[metric].raw.unwrap()
    };
    // constant, no jitter: every client waited its 400 ms (the timer wakes on time), and was
    // away at least that long (HdrHistogram keeps 3 digits: within 0.1 %)
    let at_least = |us: u64, floor: u64| us as f64 >= floor as f64 * 0.999;
    let waited = group("constant", "backoff");
    assert_eq!(waited.count, 20);
    assert!(at_least(waited.min_us, 400_000) && waited.p50_us < 450_000, "{waited:?}");
    let away = group("constant", "reconnect");
    assert_eq!(away.count, 20);
    assert!(at_least(away.min_us, 400_000), "{away:?}");
    // decorrelated: spread between its base and three times it, not in lockstep
    let spread = group("spread", "backoff");
    assert!(at_least(spread.min_us, 100_000) && spread.max_us <= 310_000, "{spread:?}");
    assert!(spread.max_us - spread.min_us > 50_000, "decorrelated jitter spreads the fleet: {spread:?}");
    broker.shutdown().await;
}

/// A broker nobody can reach: each client tries once and retries `max_attempts` times, then
/// gives up and is counted abandoned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_out_of_attempts_gives_up_and_is_counted() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
[run]
duration = "1s"
drain = "0s"
ramp_timeout = "3s"
[[group]]
name = "g"
clients = 5
[group.reconnect]
backoff = "constant"
min_backoff = "50ms"
max_attempts = 3
"#;
    let report = support::run(support::plan(text, &format!("mqtt://{closed}"), dir.path())).await;
    let c = &report.counters;
    assert_eq!((c["abandoned"], c["connect_attempts"], c["connects"]), (5, 5 * 4, 0), "{c:?}");
}
