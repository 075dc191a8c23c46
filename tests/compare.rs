//! `squall compare`: the verdicts on committed reports whose figures were chosen by hand, the
//! command's exit codes, and real runs: the same configuration twice (within noise), and
//! mosquitto against squall's broker holding every PUBACK 25 ms (worse, and the gate trips).

mod support;

use squall_controller::compare::{self, Gate, Side, Verdict};
use squall_controller::report::Report;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/compare");

fn fixture(name: &str) -> Report {
    serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURES}/{name}.json")).unwrap()).unwrap()
}

fn side(label: &str, runs: Vec<Report>) -> Side {
    Side { label: label.into(), runs }
}

fn verdict(c: &compare::Comparison, metric: &str, stat: &str) -> Verdict {
    c.rows.iter().find(|r| r.metric == metric && r.stat == stat).unwrap().verdicts[0]
}

#[test]
fn verdicts_on_hand_made_reports() {
    // base e2e (corrected, 10,000 samples): p50 1.00 ms, p90 2.00, p99 5.00, p99.9 8.00,
    // p99.99 9.00, max 10.00; slower: 1.05, 2.50, 4.00, 8.50, 12.00, 10.05
    let c = compare::compare(
        &[side("base", vec![fixture("base")]), side("slower", vec![fixture("slower")])],
        &[],
    );
    // +50 µs: under the 100 µs floor
    assert_eq!(verdict(&c, "e2e", "p50"), Verdict::WithinNoise);
    // +500 µs against a band of 200 µs (10 %)
    assert_eq!(verdict(&c, "e2e", "p90"), Verdict::Worse);
    // −1 ms against 500 µs
    assert_eq!(verdict(&c, "e2e", "p99"), Verdict::Better);
    // +500 µs against 800 µs
    assert_eq!(verdict(&c, "e2e", "p999"), Verdict::WithinNoise);
    // one sample beyond p99.99 of 10,000: only a doubling would count; +3 ms on 9 ms does not
    assert_eq!(verdict(&c, "e2e", "p9999"), Verdict::WithinNoise);
    assert_eq!(verdict(&c, "e2e", "max"), Verdict::WithinNoise);
    // puback only in the base
    assert_eq!(verdict(&c, "puback", "p50"), Verdict::NoData);
    assert!(c.load_warning.is_none() && c.differences.is_empty(), "{c:?}");

    let gates = [Gate::parse("e2e.p99:10%").unwrap(), Gate::parse("e2e.p90:20%").unwrap()];
    let c = compare::compare(
        &[side("base", vec![fixture("base")]), side("slower", vec![fixture("slower")])],
        &gates,
    );
    assert_eq!(c.gates[0].change_pct, vec![Some(-20.0)]);
    assert!(!c.gates[0].tripped);
    assert_eq!(c.gates[1].change_pct, vec![Some(25.0)]);
    assert!(c.gates[1].tripped);

    // 800 received per second against 1,000, and another target: said first, loudly
    let c = compare::compare(
        &[side("base", vec![fixture("base")]), side("lighter", vec![fixture("lighter")])],
        &[],
    );
    let w = c.load_warning.expect("different loads are flagged");
    assert!(w.contains("received 1000.0/s") && w.contains("800.0/s"), "{w}");
    assert_eq!(c.differences, vec!["lighter: targets mqtt://127.0.0.1:1883 → mqtt://127.0.0.1:1884"]);

    // several runs per side: their spread widens the band (slower's p90 runs 2.5 and 2.0 ms:
    // median 2.25, spread 500 µs; the +250 µs is now noise)
    let mut s2 = fixture("slower");
    s2.latency.get_mut("e2e").unwrap().corrected.as_mut().unwrap().p90_us = 2_000;
    let c = compare::compare(
        &[side("base", vec![fixture("base"), fixture("base")]), side("slower", vec![fixture("slower"), s2])],
        &[],
    );
    let p90 = c.rows.iter().find(|r| r.metric == "e2e" && r.stat == "p90").unwrap();
    assert_eq!((p90.values[1], p90.spread[1]), (Some(2_250.0), 500.0));
    assert_eq!(p90.verdicts[0], Verdict::WithinNoise);
}

/// A fixture that searched and found `msg_s` (what the search's report would carry).
fn searched(msg_s: Option<f64>) -> Report {
    use squall_controller::report::{CapacityReport, CapacityStep};
    let mut r = fixture("base");
    r.capacity = Some(CapacityReport {
        slo: vec!["e2e.p99 < 20ms".into()],
        found: msg_s.map(|m| CapacityStep {
            stage: 3,
            rate_percent: m / 10.0,
            offered_rate: m,
            receive_rate: m,
        }),
        broke: None,
        ended: "converged".into(),
        precision_percent: 5.0,
        steps: 8,
        monotone: true,
    });
    r
}

#[test]
fn capacity_searches_compare_by_capacity_and_a_gate_trips_when_it_falls() {
    let gate = [Gate::parse("capacity:5%").unwrap()];
    let c = compare::compare(
        &[side("a", vec![searched(Some(10_000.0))]), side("b", vec![searched(Some(9_000.0))])],
        &gate,
    );
    let cap = c.totals.iter().find(|t| t.name == "capacity msg/s").expect("capacity among the totals");
    assert_eq!(cap.values, vec![10_000.0, 9_000.0]);
    assert_eq!(c.gates[0].change_pct, vec![Some(10.0)], "10 % lower is 10 % worse");
    assert!(c.gates[0].tripped);
    let w = c.load_warning.expect("a search's whole-run latencies do not compare");
    assert!(w.contains("compare `capacity`"), "{w}");
    // 2 % lower passes a 5 % gate; a side that found none trips it
    let c = compare::compare(
        &[side("a", vec![searched(Some(10_000.0))]), side("b", vec![searched(Some(9_800.0))])],
        &gate,
    );
    assert!(!c.gates[0].tripped, "{:?}", c.gates);
    let c = compare::compare(
        &[side("a", vec![searched(Some(10_000.0))]), side("b", vec![searched(None)])],
        &gate,
    );
    assert!(c.gates[0].tripped, "no capacity is no pass");
}

#[test]
fn gates_are_parsed_strictly() {
    let g = Gate::parse("e2e.raw.p999:2.5%").unwrap();
    assert_eq!(
        (g.metric.as_str(), g.timing.as_deref(), g.stat.as_str(), g.pct),
        ("e2e", Some("raw"), "p999", 2.5)
    );
    for bad in ["e2e.p99", "e2e.p99:lots", "e2e.p98:10%", "nope.p99:10%", "e2e.p99:-1%"] {
        assert!(Gate::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_command_exits_1_when_a_gate_trips_and_2_on_bad_input() {
    let f = |n: &str| format!("{FIXTURES}/{n}.json");
    let out = support::squall()
        .args(["compare", &f("base"), &f("slower"), "--fail-if-worse", "e2e.p99:10%"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("worse") && text.contains("better"), "{text}");
    let out = support::squall()
        .args(["compare", &f("base"), &f("slower"), "--fail-if-worse", "e2e.p90:20%"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = support::squall()
        .args(["compare", &f("base"), &f("slower"), "--fail-if-worse", "e2e.p90"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("e.g. `e2e.p99:10%`"));
    let out = support::squall().args(["compare", &f("base"), &f("missing")]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = support::squall().args(["compare", &f("base"), "Cargo.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a squall report"));
}

const LOAD: &str = r#"
[run]
duration = "2s"
drain = "500ms"
[[group]]
name = "pub"
clients = 20
[group.publish]
topic = "cmp/{i}"
qos = 1
interval = "10ms"
[[group]]
name = "sub"
clients = 1
[group.subscribe]
filters = ["cmp/#"]
qos = 1
"#;

/// The real runs here take turns: run side by side in one test binary they would load each
/// other's machine and make noise no band should cover.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run_on(url: &str) -> Report {
    let dir = tempfile::tempdir().unwrap();
    support::run(support::plan(LOAD, url, dir.path())).await
}

/// The same configuration three times per side, the runs interleaved (a, b, a, b …) so a drift of the
/// shared machine falls on both: nothing to choose between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_configuration_twice_is_within_noise() {
    let _turn = SERIAL.lock().await;
    let broker = support::broker(|_| {}).await;
    let url = support::url(&broker);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        a.push(run_on(&url).await);
        b.push(run_on(&url).await);
    }
    let c = compare::compare(&[side("a", a), side("b", b)], &[]);
    for r in &c.rows {
        assert_ne!(r.verdicts[0], Verdict::Better, "{r:?}");
        assert_ne!(r.verdicts[0], Verdict::Worse, "{r:?}\n{}", compare::render(&c));
    }
    assert!(c.load_warning.is_none(), "{c:?}");
    broker.shutdown().await;
}

/// mosquitto as is against squall's broker holding every PUBACK 25 ms (mosquitto itself was
/// seen at a PUBACK p50 of 10 ms when another test loaded the machine, so the hold is well
/// past that): PUBACK latency is worse by the hold, and a gate on it trips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_holds_pubacks_compares_worse_and_trips_the_gate() {
    use squall_broker::{AckPacket, Action, Delay, Rule};
    let _turn = SERIAL.lock().await;
    let m = support::mosquitto::Mosquitto::start();
    let fast = run_on(&m.url()).await;
    let broker = support::broker(|c| {
        c.faults = vec![Rule::all(Action::Delay {
            packet: AckPacket::PubAck,
            by: Delay::Fixed(std::time::Duration::from_millis(25)),
        })]
    })
    .await;
    let slow = run_on(&support::url(&broker)).await;
    let c = compare::compare(
        &[side("mosquitto", vec![fast]), side("held", vec![slow])],
        &[Gate::parse("puback.p50:10%").unwrap()],
    );
    assert_eq!(verdict(&c, "puback", "p50"), Verdict::Worse, "{}", compare::render(&c));
    assert_eq!(verdict(&c, "puback", "p99"), Verdict::Worse);
    assert!(c.gates[0].tripped, "{:?}", c.gates);
    assert_eq!(c.differences.len(), 1, "the target differs: {:?}", c.differences);
    broker.shutdown().await;
}

/// `squall report` of a committed report: Markdown with the figures of the fixture, and the
/// timeline as CSV; `--label` on a run reaches its report and `squall compare` lists it.
#[test]
fn report_prints_markdown_and_csv_and_runs_carry_their_labels() {
    let _turn = SERIAL.blocking_lock();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("t.csv");
    let jsonl = dir.path().join("t.jsonl");
    let out = support::squall()
        .args(["report", &format!("{FIXTURES}/base.json"), "--md", "--csv"])
        .arg(&csv)
        .arg("--jsonl")
        .arg(&jsonl)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(md.starts_with("## squall · compare-fixture · ✅ PASS"), "{md}");
    // the fixture's e2e (corrected): p50 1 ms, p99 5 ms, p99.9 8 ms, p99.99 9 ms, max 10 ms
    assert!(md.contains("| e2e | 10,000 | 1.00ms | 2.00ms | 5.00ms | 8.00ms | 9.00ms | 10.00ms |"), "{md}");
    assert!(md.contains("| all | 10,000 | 10,000 | 0 |"), "{md}");
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(
        text.lines().next(),
        Some(
            "t_s,intervals,connected,published,received,connects,reconnects,errors,e2e_p50_us,e2e_p99_us,e2e_max_us"
        )
    );
    // the fixture has no timeline: as many JSON lines as CSV rows, none
    assert_eq!(std::fs::read_to_string(&jsonl).unwrap(), "");
    assert_eq!(text.lines().count(), 1);

    // a real run with labels
    let scenario = dir.path().join("s.toml");
    std::fs::write(&scenario, "[run]\nduration = \"1s\"\ndrain = \"200ms\"\n[[group]]\nname = \"p\"\nclients = 2\n[group.publish]\ntopic = \"l/{i}\"\ninterval = \"100ms\"\n[[group]]\nname = \"s\"\nclients = 1\n[group.subscribe]\nfilters = [\"l/#\"]\n").unwrap();
    let json = dir.path().join("r.json");
    let mdfile = dir.path().join("r.md");
    let out = support::squall()
        .args(["run", "-q", "--label", "broker=embedded", "--label", "try=1", "--report"])
        .arg(&json)
        .arg("--md")
        .arg(&mdfile)
        .arg(&scenario)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["labels"], serde_json::json!({"broker": "embedded", "try": "1"}));
    assert!(std::fs::read_to_string(&mdfile).unwrap().contains("Labels: `broker=embedded`, `try=1`."));
    let out =
        support::squall().args(["compare", &format!("{FIXTURES}/base.json")]).arg(&json).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("labels  → broker=embedded try=1"), "{text}");
    // its timeline as JSON lines: one object per interval, the report's rows exactly
    let out = support::squall().arg("report").arg(&json).arg("--jsonl").arg(&jsonl).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
        .collect();
    let rows = r["timeline"].as_array().unwrap();
    assert!(!rows.is_empty(), "a 1 s run has intervals");
    assert_eq!(&lines, rows);
    let published: u64 = lines.iter().map(|l| l["published"].as_u64().unwrap()).sum();
    assert_eq!(published, r["counters"]["published_qos0"].as_u64().unwrap(), "the series adds up to the run");
    let out = support::squall().args(["run", "-q", "--label", "oops"]).arg(&scenario).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Errors by kind, as a series: a run whose every connect is refused (nothing listens on its
/// port) has a `tcp_refused` count in each interval; the CSV gets a column for it that adds up
/// to the report's total, and the HTML a plot of errors per second by kind.
#[test]
fn errors_by_kind_are_a_series_in_the_timeline_csv_and_html() {
    let _turn = SERIAL.blocking_lock();
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("s.toml");
    std::fs::write(&scenario, "[run]\nduration = \"2s\"\ndrain = \"200ms\"\n[[group]]\nname = \"p\"\nclients = 3\n[group.publish]\ntopic = \"e/{i}\"\ninterval = \"100ms\"\n").unwrap();
    let port = support::mosquitto::free_port(); // nothing listens there
    let (json, csv, html) = (dir.path().join("r.json"), dir.path().join("r.csv"), dir.path().join("r.html"));
    let out = support::squall()
        .args(["run", "-q", "--target", &format!("mqtt://127.0.0.1:{port}"), "--report"])
        .arg(&json)
        .arg(&scenario)
        .output()
        .unwrap();
    // nothing connected: a runtime failure, with its report written
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let refused =
        r["errors"].as_array().unwrap().iter().find(|e| e["kind"] == "tcp_refused").unwrap()["count"]
            .as_u64()
            .unwrap();
    assert!(refused >= 3, "each client was refused at least once: {refused}");
    let rows = r["timeline"].as_array().unwrap();
    let by_kind: u64 = rows.iter().filter_map(|row| row["errors_by_kind"]["tcp_refused"].as_u64()).sum();
    assert_eq!(by_kind, refused, "the series adds up to the report's count");

    let out = support::squall()
        .arg("report")
        .arg(&json)
        .arg("--csv")
        .arg(&csv)
        .arg("--html")
        .arg(&html)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "the report keeps the run's verdict");
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = header.iter().position(|c| *c == "errors_tcp_refused").expect("a column for the kind");
    assert_eq!(col, header.len() - 1, "after the fixed columns: {header:?}");
    let sum: u64 = lines.map(|l| l.split(',').nth(col).unwrap().parse::<u64>().unwrap()).sum();
    assert_eq!(sum, refused);
    let page = std::fs::read_to_string(&html).unwrap();
    let fig = page.find("Errors per second by kind").expect("a plot of errors by kind");
    assert!(page[fig..].contains("tcp_refused"), "its legend names the kind");
}

/// `--broker-pid`: mosquitto's own CPU and memory over the run, read from /proc, are in the
/// report (and so side by side in compare); a pid that is not there is refused (exit 2).
#[test]
fn a_local_brokers_cpu_and_memory_are_in_the_report() {
    let _turn = SERIAL.blocking_lock();
    let m = support::mosquitto::Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("s.toml");
    std::fs::write(&scenario, LOAD).unwrap();
    let json = dir.path().join("r.json");
    let out = support::squall()
        .args(["run", "-q", "--target", &m.url(), "--broker-pid", &m.pid().to_string(), "--report"])
        .arg(&json)
        .arg(&scenario)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let b = r.broker_process.clone().expect("the broker's process was read");
    assert_eq!(b.pid, m.pid());
    // 20 publishers at 100 msg/s for 2 s and their subscriber: mosquitto did some work
    assert!(b.cpu_s > 0.0 && b.rss_start_kib > 0 && b.rss_peak_kib >= b.rss_start_kib && !b.gone, "{b:?}");
    let c = compare::compare(&[side("a", vec![r.clone()]), side("b", vec![r])], &[]);
    assert!(c.totals.iter().any(|t| t.name == "broker CPU s" && t.values[0] > 0.0));

    let out =
        support::squall().args(["run", "-q", "--broker-pid", "4000000000"]).arg(&scenario).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such process"));
}

/// `--broker-sys`: a broker's own figures from its `$SYS/#` topics (for a broker on another
/// host). mosquitto publishing every second: its count of PUBLISH packets received over the
/// run is exactly what squall says it published (the broker is fresh and only the load
/// publishes), and it saw every client connected at once.
#[test]
fn a_brokers_sys_topics_are_in_the_report() {
    let _turn = SERIAL.blocking_lock();
    let m = support::mosquitto::Mosquitto::start_with(
        |port| format!("listener {port} 127.0.0.1\nallow_anonymous true\nsys_interval 1\n"),
        |_| {},
    );
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("s.toml");
    std::fs::write(&scenario, LOAD).unwrap();
    let json = dir.path().join("r.json");
    let out = support::squall()
        .args(["run", "--target", &m.url(), "--broker-sys", "--live", "off", "--report"])
        .arg(&json)
        .arg(&scenario)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("broker $SYS   publishes in"));
    let r: Report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let b = r.broker_sys.clone().expect("--broker-sys reports");
    assert!(b.error.is_none(), "{:?}", b.error);
    assert!(b.version.as_deref().unwrap_or("").starts_with("mosquitto version"), "{b:?}");
    let published = r.counters["published_qos1"] as f64;
    assert!(published > 0.0);
    assert_eq!(b.publish_received, Some(published), "the broker counted what squall sent");
    // it also sent its $SYS messages to squall's one extra client
    assert!(b.publish_sent.unwrap() >= r.counters["received_qos1"] as f64, "{b:?}");
    // 20 publishers, 1 subscriber, the $SYS client
    assert!(b.clients_connected_peak.unwrap() >= 21.0, "{b:?}");
    let (h0, hp, h1) = (b.heap_start_bytes.unwrap(), b.heap_peak_bytes.unwrap(), b.heap_end_bytes.unwrap());
    assert!(h0 > 0.0 && hp >= h0 && hp >= h1, "{b:?}");
    let c = compare::compare(&[side("a", vec![r.clone()]), side("b", vec![r])], &[]);
    assert!(c.totals.iter().any(|t| t.name == "broker $SYS publishes in" && t.values[0] == published));

    // the embedded broker publishes no $SYS: the report says so, the run still passes
    let out = support::squall()
        .args(["run", "-q", "--broker-sys", "--report"])
        .arg(&json)
        .arg(&scenario)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(r.broker_sys.unwrap().error.unwrap().contains("no $SYS figures"));
}

/// `compare --html`: per metric, one plot with every side's curve (the fixture: e2e for both
/// sides, puback for the base alone), and the table below.
#[test]
fn compare_html_overlays_every_sides_curve_per_metric() {
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("c.html");
    let out = support::squall()
        .args(["compare", &format!("{FIXTURES}/base.json"), &format!("{FIXTURES}/slower.json"), "--html"])
        .arg(&html)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&html).unwrap();
    assert_eq!(text.matches("<svg").count(), 2, "one plot per metric");
    assert_eq!(text.matches("<polyline").count(), 3, "e2e: base and slower; puback: base");
    assert!(text.contains(">slower</text>") && text.contains("+500µs ×1.25 worse"));
    assert!(!text.contains("<script"));
}
