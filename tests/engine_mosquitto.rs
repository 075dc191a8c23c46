//! The engine against a real mosquitto: delivery is exact at every QoS on both protocols, TLS
//! works with a CA the test makes, credentials are accepted and refused (and the refusal is
//! counted with its code), and a broker that drops messages shows up in the ledger.

mod support;

use squall_controller::report::{Report, Status};
use support::ca::TestCa;
use support::mosquitto::Mosquitto;

fn counter(r: &Report, name: &str) -> u64 {
    r.counters[name]
}

fn published(r: &Report) -> u64 {
    counter(r, "published_qos0") + counter(r, "published_qos1") + counter(r, "published_qos2")
}

/// 1,000 clients: 996 publish, 4 subscribe to everything.
fn thousand_clients(protocol: &str, qos: u8) -> String {
    format!(
        r#"
thresholds = ["lost == 0", "connect.errors == 0", "duplicates.qos2 == 0", "phantom == 0"]
[run]
duration = "2s"
drain = "1s"

[[group]]
name = "pub"
clients = 996
protocol = "{protocol}"
connect_rate = 2000
[group.publish]
topic = "load/{{i}}"
qos = {qos}
interval = "1s"
payload_size = 64

[[group]]
name = "sub"
clients = 4
protocol = "{protocol}"
[group.subscribe]
filters = ["load/#"]
qos = {qos}
"#
    )
}

async fn exact_delivery(qos: u8) {
    for protocol in ["3.1.1", "5"] {
        let broker = Mosquitto::start();
        let report =
            support::run(support::plan(&thousand_clients(protocol, qos), &broker.url(), broker.dir.path()))
                .await;
        let ctx = format!("MQTT {protocol} QoS {qos}: {:?} {:?}", report.verdict, report.errors);
        assert_eq!(report.verdict.status, Status::Pass, "{ctx}");
        assert_eq!(counter(&report, "connects"), 1000, "{ctx}");
        let sent = published(&report);
        assert!(sent >= 996, "every publisher sent at least once: {sent} ({ctx})");
        let d = &report.delivery.all;
        assert!(report.delivery.complete);
        assert_eq!(report.delivery.receivers, 4, "{ctx}");
        assert_eq!(d.expected, 4 * sent, "{ctx}");
        assert_eq!(d.delivered, d.expected, "{ctx}");
        assert_eq!((d.lost, d.phantom), (0, 0), "{ctx}");
        assert_eq!(
            report.delivery.by_qos[&qos.to_string()].delivered,
            d.delivered,
            "delivered at the QoS asked for ({ctx})"
        );
        assert_eq!(
            report.latency["e2e"].corrected.unwrap().count,
            counter(&report, &format!("received_qos{qos}")),
            "{ctx}"
        );
        match qos {
            1 => assert_eq!(counter(&report, "acked_qos1"), sent, "{ctx}"),
            2 => {
                assert_eq!(counter(&report, "acked_qos2"), sent, "{ctx}");
                assert_eq!(d.duplicates, 0, "{ctx}");
            }
            _ => {}
        }
        assert_eq!(counter(&report, "unacked"), 0, "{ctx}");
    }
}

/// The flood test measures how reads space out under a flood: the other tests of this file,
/// run beside it on two cores, would space them out for it. It runs alone; the rest share.
static TURN: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A subscriber flooded by mosquitto (which writes every message in a segment of its own):
/// with `run.read_coalesce = "50us"` it waits between reads so messages gather, and says how
/// often; by default it never waits. Either way every message is accounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_subscriber_coalesces_reads_only_when_asked_and_counts_them() {
    let _alone = TURN.write().await;
    for (setting, coalesces) in [("read_coalesce = \"50us\"\n", true), ("", false)] {
        let broker = Mosquitto::start();
        let text = format!(
            "[run]\nduration = \"2s\"\ndrain = \"1s\"\n{setting}[[group]]\nname = \"pub\"\nclients = 1\n[group.publish]\ntopic = \"flood/0\"\nqos = 0\npayload_size = 64\ngroup_rate = 50000\n[[group]]\nname = \"sub\"\nclients = 1\n[group.subscribe]\nfilters = [\"flood/#\"]\nqos = 0\n"
        );
        let report = support::run(support::plan(&text, &broker.url(), broker.dir.path())).await;
        let ctx = format!("{setting:?}: {:?} {:?}", report.counters, report.errors);
        let d = &report.delivery.all;
        assert!(published(&report) >= 50_000, "{ctx}");
        assert_eq!((d.delivered, d.lost, d.duplicates, d.phantom), (d.expected, 0, 0, 0), "{ctx}");
        assert_eq!(d.expected, published(&report), "{ctx}");
        let waited = counter(&report, "reads_coalesced");
        // over TCP every read's wait in the kernel is measured from its receive stamp
        let wait = report.latency.get("read_wait").and_then(|l| l.raw).map_or(0, |h| h.count);
        assert!(wait > 0, "no read_wait recorded ({ctx})");
        if coalesces {
            assert_eq!(report.read_coalesce_us, 50, "{ctx}");
            // 50,000 messages a second, one segment each: reads come closer than half the window
            assert!(waited > 0, "{waited} reads waited ({ctx})");
            assert!(squall_controller::report::text::render(&report).contains("reads waited 50µs"), "{ctx}");
        } else {
            assert_eq!((report.read_coalesce_us, waited), (0, 0), "{ctx}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_delivery_is_exact_on_both_protocols() {
    let _shared = TURN.read().await;
    exact_delivery(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_delivery_is_exact_on_both_protocols() {
    let _shared = TURN.read().await;
    exact_delivery(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_delivery_is_exact_on_both_protocols() {
    let _shared = TURN.read().await;
    exact_delivery(2).await;
}

const SMALL: &str = r#"
thresholds = ["lost == 0", "connect.errors == 0"]
[run]
duration = "1s"
drain = "500ms"
[[group]]
name = "pub"
clients = 10
[group.publish]
topic = "tls/{i}"
qos = 1
interval = "100ms"
[[group]]
name = "sub"
clients = 1
[group.subscribe]
filters = ["tls/#"]
qos = 1
"#;

fn tls_broker(ca: &TestCa) -> Mosquitto {
    Mosquitto::start_with(
        |port| {
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\ncafile ca.pem\ncertfile server.pem\nkeyfile server.key\n"
            )
        },
        |dir| {
            ca.write_ca(dir, "ca.pem");
            ca.issue(dir, "server", &["localhost", "127.0.0.1"]);
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_ca_made_by_the_test() {
    let _shared = TURN.read().await;
    let ca = TestCa::new("squall test CA");
    let broker = tls_broker(&ca);
    let d = broker.dir.path();
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let text = format!("{SMALL}\n[target.tls]\nca = \"{}\"\n", d.join("ca.pem").display());
    let report = support::run(support::plan(&text, &url, d)).await;
    assert_eq!(
        report.verdict.status,
        Status::Pass,
        "{:?} {:?} {:?}",
        report.verdict,
        report.errors,
        broker.log()
    );
    assert!(report.delivery.all.delivered > 0);
    assert_eq!(report.delivery.all.lost, 0);
    // rustls reads the socket: no receive stamps, reads are timed when they happen
    assert!(!report.latency.contains_key("read_wait"), "{:?}", report.latency.keys());

    // a CA the broker's certificate does not chain to: every attempt fails in TLS, counted
    let other = TestCa::new("someone else");
    let other_ca = other.write_ca(d, "other.pem");
    let text = format!("{SMALL}\n[target.tls]\nca = \"{}\"\n", other_ca.display());
    let mut plan = support::plan(&text, &url, d);
    for g in &mut plan.groups {
        g.reconnect.enabled = false;
    }
    let report = support::run(plan).await;
    assert_eq!(report.verdict.status, Status::Error, "no client could connect");
    assert!(report.verdict.reasons[0].contains("no client could connect"), "{:?}", report.verdict);
    let tls = report.errors.iter().find(|e| e.kind == "tls").expect("TLS failures are counted");
    assert_eq!(tls.count, 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_accepted_and_refused_with_the_reason_code() {
    let _shared = TURN.read().await;
    for (protocol, codes) in [("3.1.1", [4u8, 5]), ("5", [0x86u8, 0x87])] {
        let broker = Mosquitto::start_with(
            |port| format!("listener {port} 127.0.0.1\nallow_anonymous false\npassword_file passwd\n"),
            |dir| Mosquitto::password_file(dir, &[("alice", "right")]),
        );
        let text = format!(
            r#"
thresholds = ["lost == 0", "connect.errors == 0"]
[run]
duration = "1s"
drain = "500ms"
[[group]]
name = "good"
clients = 5
protocol = "{protocol}"
username = "alice"
password = "right"
[group.publish]
topic = "auth/{{i}}"
qos = 1
interval = "200ms"
[[group]]
name = "reader"
clients = 1
protocol = "{protocol}"
username = "alice"
password = "right"
[group.subscribe]
filters = ["auth/#"]
qos = 1
[[group]]
name = "intruders"
clients = 3
protocol = "{protocol}"
username = "alice"
password = "wrong"
[group.reconnect]
enabled = false
"#
        );
        let report = support::run(support::plan(&text, &broker.url(), broker.dir.path())).await;
        let ctx = format!("MQTT {protocol}: {:?} {:?}", report.verdict, report.errors);
        // the good clients ran and delivered exactly
        assert_eq!(report.counters["connects"], 6, "{ctx}");
        assert!(report.delivery.all.delivered > 0, "{ctx}");
        assert_eq!(report.delivery.all.lost, 0, "{ctx}");
        // the refusals are counted, with the broker's code
        let refused: Vec<_> = report.errors.iter().filter(|e| e.kind == "connect_refused").collect();
        assert_eq!(refused.iter().map(|e| e.count).sum::<u64>(), 3, "{ctx}");
        assert!(refused.iter().all(|e| codes.contains(&e.code.unwrap())), "{ctx}");
        assert!(
            refused[0].meaning.as_deref().unwrap().contains("not authorized")
                || refused[0].meaning.as_deref().unwrap().contains("bad user name"),
            "{ctx}"
        );
        // and the run still reports, failing the threshold that cares
        assert_eq!(report.verdict.status, Status::Fail, "{ctx}");
        assert!(report.verdict.reasons.iter().any(|r| r.starts_with("connect.errors == 0")), "{ctx}");
    }
}

#[test]
fn a_dropping_broker_shows_as_lost_and_fails_the_threshold_with_exit_code_1() {
    let _shared = TURN.blocking_read();
    // one message in flight to each subscriber and a queue of 5: a fast stream overflows it
    let broker = Mosquitto::start_with(
        |port| {
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 1\nmax_queued_messages 5\n"
            )
        },
        |_| {},
    );
    let scenario = broker.dir.path().join("drop.toml");
    std::fs::write(
        &scenario,
        r#"
thresholds = ["lost == 0"]
[run]
duration = "2s"
drain = "1s"
[[group]]
name = "firehose"
clients = 20
[group.publish]
topic = "drop/{i}"
qos = 1
interval = "1ms"
[[group]]
name = "slow"
clients = 1
[group.subscribe]
filters = ["drop/#"]
qos = 1
"#,
    )
    .unwrap();
    let report_path = broker.dir.path().join("report.json");
    let out = support::squall()
        .args(["run", scenario.to_str().unwrap(), "--target", &broker.url(), "--live", "off", "--report"])
        .arg(&report_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "thresholds failed → exit 1\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("✗ lost == 0"), "{stdout}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    let d = &report["delivery"]["all"];
    let (expected, delivered, lost) =
        (d["expected"].as_u64().unwrap(), d["delivered"].as_u64().unwrap(), d["lost"].as_u64().unwrap());
    assert!(lost > 0, "mosquitto dropped messages for the slow subscriber: {d}");
    assert_eq!(delivered + lost, expected, "every message is accounted for: {d}");
    assert_eq!(report["verdict"]["status"], "fail");
}

/// A TLS storm: 40 clients over TLS all dropped at once and back at once, with session
/// resumption on (each client resumes its own session: its own ticket) and off (a full
/// handshake every time). The handshakes are counted and timed apart from CONNACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_storm_resumes_each_clients_session_or_not_as_asked() {
    let _shared = TURN.read().await;
    let ca = TestCa::new("squall test CA");
    let broker = tls_broker(&ca);
    let d = broker.dir.path();
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    for resume in [true, false] {
        let text = format!(
            r#"
[run]
duration = "2s"
drain = "500ms"
[[group]]
name = "dev"
clients = 40
tls_resumption = {resume}
[[group.event]]
at = "500ms"
action = "drop"
fraction = 1.0
back = "now"
[target.tls]
ca = "{}"
"#,
            d.join("ca.pem").display()
        );
        let r = support::run(support::plan(&text, &url, d)).await;
        let c = &r.counters;
        assert_eq!(
            (c["connects"], c["reconnects"], c["tls_handshakes"]),
            (80, 40, 80),
            "{c:?} {:?}",
            r.errors
        );
        // the first connections have nothing to resume; every reconnect resumes, or none does
        assert_eq!(c["tls_resumed"], if resume { 40 } else { 0 }, "resume {resume}: {c:?}");
        let tls = r.latency["tls"].raw.unwrap();
        assert_eq!(tls.count, 80);
        assert_eq!(r.storms[0].back, 40);
    }
}
