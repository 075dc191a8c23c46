//! `--metrics-listen`: scraped during a real run and parsed with a text-format parser (the
//! `prometheus-parse` crate, not a regex): counters only grow, histogram buckets are
//! cumulative and end at the count.

mod support;

use std::time::{Duration, Instant};

use support::prom::{scrape, value, value_with};

#[test]
fn a_run_serves_metrics_that_parse_and_only_grow() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("s.toml");
    std::fs::write(&scenario, "[run]\nduration = \"6s\"\ndrain = \"200ms\"\n[[group]]\nname = \"p\"\nclients = 5\n[group.publish]\ntopic = \"m/{i}\"\nqos = 1\ninterval = \"20ms\"\n[[group]]\nname = \"s\"\nclients = 1\n[group.subscribe]\nfilters = [\"m/#\"]\nqos = 1\n").unwrap();
    let port = support::mosquitto::free_port();
    let mut child = support::squall()
        .args(["run", "-q", "--metrics-listen", &format!("127.0.0.1:{port}")])
        .arg(&scenario)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // the first scrape with published messages in it, then one more a second later
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some(s) = scrape(port).filter(|s| value(s, "squall_published_qos1_total") > 0.0) {
            break s;
        }
        assert!(Instant::now() < deadline, "no metrics served");
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_millis(1500));
    let second = scrape(port).expect("still served");
    let _ = child.wait();

    for name in ["squall_published_qos1_total", "squall_received_qos1_total", "squall_connects_total"] {
        assert!(value(&second, name) >= value(&first, name), "{name} went down");
    }
    assert!(value(&second, "squall_published_qos1_total") > value(&first, "squall_published_qos1_total"));
    assert_eq!(value(&second, "squall_connected_clients"), 6.0);
    // the e2e histogram of group p, corrected: cumulative buckets ending at the count
    let hist = second
        .samples
        .iter()
        .find(|x| {
            x.metric == "squall_latency_seconds"
                && x.labels.get("metric") == Some("e2e")
                && x.labels.get("timing") == Some("corrected")
                && x.labels.get("group") == Some("p")
        })
        .expect("an e2e histogram");
    let prometheus_parse::Value::Histogram(buckets) = &hist.value else { panic!("{:?}", hist.value) };
    let counts: Vec<f64> = buckets.iter().map(|b| b.count).collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    let count = value(&second, "squall_latency_seconds_count");
    assert!(count > 0.0);
    assert_eq!(buckets.last().map(|b| b.less_than), Some(f64::INFINITY));

    // a port already taken: exit 2, and why
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out =
        support::squall().args(["run", "-q", "--metrics-listen", &addr]).arg(&scenario).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot serve metrics"));
}

/// Errors by kind are a counter of their own: a run whose connects are all refused serves
/// `squall_errors_total{kind="tcp_refused"}`, growing.
#[test]
fn errors_are_served_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("s.toml");
    // a constant 100 ms backoff, so retries keep coming whatever the machine's pace (the
    // default exponential one from 1 s may not retry again within any fixed wait)
    std::fs::write(&scenario, "[run]\nduration = \"60s\"\ndrain = \"200ms\"\n[[group]]\nname = \"p\"\nclients = 3\n[group.reconnect]\nenabled = true\nmin_backoff = \"100ms\"\nmax_backoff = \"100ms\"\nbackoff = \"constant\"\njitter = \"none\"\n[group.publish]\ntopic = \"e/{i}\"\ninterval = \"100ms\"\n").unwrap();
    let closed = support::mosquitto::free_port();
    let port = support::mosquitto::free_port();
    let mut child = support::squall()
        .args(["run", "-q", "--target", &format!("mqtt://127.0.0.1:{closed}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
        .arg(&scenario)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused =
        |m: &prometheus_parse::Scrape| value_with(m, "squall_errors_total", &[("kind", "tcp_refused")]);
    let first = loop {
        if let Some(n) = scrape(port).map(|m| refused(&m)).filter(|n| *n > 0.0) {
            break n;
        }
        assert!(Instant::now() < deadline, "no tcp_refused errors served");
        std::thread::sleep(Duration::from_millis(100));
    };
    let grew = loop {
        let second = scrape(port).map(|m| refused(&m)).expect("still served");
        if second > first || Instant::now() >= deadline {
            break second;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(grew > first, "{first} → {grew}: each client keeps retrying, each a refusal");
}

/// The Grafana dashboard in deploy/ asks only for series squall serves.
#[test]
fn the_grafana_dashboard_names_only_metrics_squall_serves() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana-dashboard.json"))
        .unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut served: Vec<String> =
        squall_proto::metrics::Counters::NAMES.iter().map(|n| format!("squall_{n}_total")).collect();
    served.extend([
        "squall_connected_clients".into(),
        "squall_errors_total".into(),
        "squall_latency_seconds_bucket".into(),
    ]);
    let panels = d["panels"].as_array().unwrap();
    assert!(panels.len() >= 4);
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("squall_") {
                    assert!(served.iter().any(|s| s == word), "{word} in `{expr}` is not served");
                }
            }
        }
    }
}
