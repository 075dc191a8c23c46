//! The soak log: an HdrHistogram interval log and a counters journal written as the run goes.
//! A finished run's log parses back (with the hdrhistogram crate's own reader) to the report's
//! totals; a run killed with -9 leaves files `squall report` turns into a report.

mod support;

use std::time::{Duration, Instant};

use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use squall_controller::coordinator::{self, RunSetup};
use squall_controller::report::live::LiveMode;
use squall_controller::soak_log;

const LOAD: &str = r#"
[run]
duration = "3s"
drain = "500ms"
[[group]]
name = "pub"
clients = 10
[group.publish]
topic = "soak/{i}"
qos = 1
interval = "10ms"
[[group]]
name = "sub"
clients = 1
[group.subscribe]
filters = ["soak/#"]
qos = 1
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_runs_interval_log_parses_back_to_the_reports_totals() {
    let broker = support::broker(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("soak");
    let plan = support::plan(LOAD, &support::url(&broker), dir.path());
    let targets = plan.targets.clone();
    let setup = RunSetup {
        plan,
        targets,
        embedded_broker: false,
        live: LiveMode::Off,
        soak_log: Some(log.clone()),
        metrics_listen: None,
        broker_pid: None,
    };
    let report =
        coordinator::run(setup, squall::cli::agents::InProcess { threads: None }, std::future::pending())
            .await
            .unwrap();

    // the hdrhistogram crate's reader, entry by entry, merged by tag
    let bytes = std::fs::read(log.join(soak_log::HLOG)).unwrap();
    let mut e2e = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    let mut entries = 0;
    let mut de = hdrhistogram::serialization::Deserializer::new();
    for entry in IntervalLogIterator::new(&bytes) {
        if let LogEntry::Interval(h) = entry.expect("every entry parses") {
            entries += 1;
            if h.tag().map(|t| t.as_str()) == Some("e2e.corrected.pub") {
                use base64::Engine;
                let raw = base64::engine::general_purpose::STANDARD.decode(h.encoded_histogram()).unwrap();
                let one: hdrhistogram::Histogram<u64> = de.deserialize(&mut &raw[..]).unwrap();
                e2e.add(&one).unwrap();
            }
        }
    }
    let want = report.latency["e2e"].corrected.unwrap();
    assert!(entries > 10, "{entries} entries");
    assert_eq!(e2e.len(), want.count);
    assert_eq!(e2e.max(), want.max_us);
    assert_eq!(e2e.value_at_quantile(0.99), want.p99_us);
    // the journal ends with the report itself
    // (floats aside: a JSON round trip may move their last digit)
    let again = soak_log::read(&log).unwrap();
    assert_eq!(
        (&again.verdict, &again.counters, &again.delivery),
        (&report.verdict, &report.counters, &report.delivery)
    );
    let (a, b) = (again.latency["e2e"].corrected.unwrap(), want);
    assert_eq!((a.count, a.p50_us, a.p99_us, a.max_us), (b.count, b.p50_us, b.p99_us, b.max_us));
    broker.shutdown().await;
}

/// `squall run --soak-log DIR`, killed with -9 mid-run: `squall report DIR` rebuilds what the
/// intervals hold, says the run did not finish (exit 3), and its counts are the journal's.
#[test]
fn a_run_killed_with_sigkill_leaves_a_soak_log_squall_report_reads() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("s.toml");
    std::fs::write(&scenario, LOAD.replace("duration = \"3s\"", "duration = \"60s\"")).unwrap();
    let log = dir.path().join("soak");
    let mut child = support::squall()
        .args(["run", "-q", "--live", "off", "--soak-log"])
        .arg(&log)
        .arg(&scenario)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let journal = log.join(soak_log::JOURNAL);
    let deadline = Instant::now() + Duration::from_secs(60);
    // wait (bounded) for a few intervals with messages in them
    loop {
        let lines = std::fs::read_to_string(&journal).map(|t| t.lines().count()).unwrap_or(0);
        if lines >= 5 {
            break;
        }
        assert!(Instant::now() < deadline, "the run wrote no intervals");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let text = std::fs::read_to_string(&journal).unwrap();
    let published: u64 = text
        .lines()
        .skip(1)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["counters"]["published_qos1"].as_u64().unwrap_or(0))
        .sum();
    assert!(published > 0);
    let out_file = dir.path().join("rebuilt.json");
    let out = support::squall().arg("report").arg(&log).arg("--report").arg(&out_file).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("did not finish"));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    assert_eq!(r["counters"]["published_qos1"].as_u64(), Some(published));
    assert!(r["latency"]["e2e"]["corrected"]["count"].as_u64().unwrap() > 0);

    // a directory that holds a soak log is not written over
    let out = support::squall().args(["run", "-q", "--soak-log"]).arg(&log).arg(&scenario).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}
