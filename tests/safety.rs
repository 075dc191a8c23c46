//! A load tester is a loaded gun: the agent stops all load when its controller is gone, every
//! run is bounded in time, and an interrupted run still says what it saw.

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use squall_agent::engine::{self, AgentEvent};
use squall_controller::scenario::{Overrides, Source, load_source};
use squall_controller::segment::segment;

/// Waits (bounded) until the broker counts `n` open connections.
async fn connections(broker: &squall_broker::Broker, n: u64) {
    for _ in 0..1000 {
        if broker.stats().connections == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not {n} connections after 10s: {:?}", broker.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_stops_all_load_when_its_controller_is_gone() {
    let broker = support::broker(|_| {}).await;
    let text = "[run]\nduration = \"1h\"\n[[group]]\nname = \"g\"\nclients = 50\n[group.publish]\ntopic = \"s/{i}\"\ninterval = \"10ms\"\n";
    let ov = Overrides { targets: vec![support::url(&broker)], ..Default::default() };
    let plan = load_source(&Source::new("s.toml", text), &ov).unwrap();
    let a = segment(&plan, &plan.targets, &[1]).remove(0);
    let mut h = engine::start(a, squall_proto::clock::Clock::new()).await.unwrap();
    while let Some(ev) = h.events.recv().await {
        if let AgentEvent::Ready { connected, .. } = ev {
            assert_eq!(connected, 50);
            break;
        }
    }
    connections(&broker, 50).await;
    // the clients run on the engine's lanes, one per worker of the runtime it started on
    assert_eq!(lane_threads(), 2);
    // the controller goes away without a word
    drop(h.commands);
    connections(&broker, 0).await;
    let s = broker.stats();
    assert_eq!(s.disconnects_clean, 50, "the clients left with DISCONNECT: {s:?}");
    // and the engine's threads (its lanes) end with it: an agent serving run after run keeps none
    for _ in 0..1000 {
        if lane_threads() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} engine lane threads still alive 10 s after the run ended", lane_threads());
}

/// This process's threads named as the engine names its lanes.
fn lane_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("lane-"))
        .count()
}

#[test]
fn a_run_is_bounded_by_max_duration_whatever_happens() {
    // 20 clients at 2 connections/s cannot finish ramping in time
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("slow.toml");
    std::fs::write(
        &scenario,
        "[run]\nduration = \"1s\"\ndrain = \"0s\"\nmax_duration = \"2s\"\n[[group]]\nname = \"slow\"\nclients = 20\nconnect_rate = 2\n",
    )
    .unwrap();
    let report = dir.path().join("r.json");
    let out = support::squall()
        .args(["run", scenario.to_str().unwrap(), "--live", "off", "--report"])
        .arg(&report)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stdout));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["verdict"]["status"], "error");
    assert!(r["verdict"]["reasons"][0].as_str().unwrap().contains("maximum duration"), "{}", r["verdict"]);
    assert!(r["elapsed_s"].as_f64().unwrap() < 30.0, "stopped near its limit, not at the end of the ramp");
}

#[test]
fn ctrl_c_ends_the_run_with_exit_130_and_a_settled_report() {
    signal_ends_the_run_with_a_settled_report(2);
}

/// SIGTERM is what Kubernetes, systemd and docker send: the same as Ctrl-C, not a silent death.
#[test]
fn sigterm_ends_the_run_with_exit_130_and_a_settled_report() {
    signal_ends_the_run_with_a_settled_report(15);
}

fn signal_ends_the_run_with_a_settled_report(signal: i32) {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let mut child = support::squall()
        .args(["run", "scenarios/quickstart.toml", "--duration", "1h", "--live", "lines", "--report"])
        .arg(&report)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // wait for the first live line: the run is under way
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let seen = lines.by_ref().map_while(Result::ok).any(|l| l.contains("connected 101/101"));
    assert!(seen, "the live line shows every client connected");
    unsafe { kill(child.id() as i32, signal) };
    std::thread::spawn(move || for _ in lines {});
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["verdict"]["status"], "aborted");
    assert!(r["counters"]["published_qos1"].as_u64().unwrap() > 0, "what was seen is reported");
    // the window was cut at the signal and the run settled on what was sent: a complete
    // ledger, and none of the hour's unsent rest counted as behind schedule
    assert_eq!(r["delivery"]["complete"], true, "{}", r["delivery"]);
    assert_eq!(r["delivery"]["all"]["lost"], 0, "{}", r["delivery"]);
    assert_eq!(r["delivery"]["all"]["delivered"], r["delivery"]["all"]["expected"], "{}", r["delivery"]);
    assert!(r["publish_window_s"].as_f64().unwrap() < 60.0, "the window ends at the signal");
    let behind = r["counters"]["behind_schedule"].as_u64().unwrap();
    assert!(behind < 1000, "only what was owed by the signal may be behind: {behind}");
    assert!(!r["warnings"].to_string().contains("offered load fell short"), "{}", r["warnings"]);
}

/// A rule marked `abort` ends the run the moment it fails (here: once 2,000 messages were
/// published in what would be an hour's run): the window is cut, the run settles on what was
/// sent, the verdict says which rule, and the exit code is 1.
#[test]
fn an_abort_rule_ends_the_run_early_with_a_settled_report() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let out = support::squall()
        .args(["run", "scenarios/quickstart.toml", "--duration", "1h", "--live", "off", "-q"])
        .args(["--threshold", "published < 2000 abort", "--report"])
        .arg(&report)
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", r["verdict"]);
    assert_eq!(r["verdict"]["status"], "fail");
    assert!(
        r["verdict"]["reasons"][0].as_str().unwrap().contains("abort rule `published < 2000 abort` failed"),
        "{}",
        r["verdict"]
    );
    assert!(r["publish_window_s"].as_f64().unwrap() < 60.0, "cut short: {}", r["publish_window_s"]);
    let published =
        r["counters"]["published_qos1"].as_u64().unwrap() + r["counters"]["published_qos0"].as_u64().unwrap();
    assert!(published >= 2000, "{published}");
    assert_eq!(r["delivery"]["complete"], true, "{}", r["delivery"]);
    assert_eq!(r["delivery"]["all"]["lost"], 0, "{}", r["delivery"]);
    assert_eq!(r["thresholds"][2]["pass"], false, "{}", r["thresholds"]);
}

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// A stalled broker stops taking bytes; the clients' unsent bytes stay within the agent's one
/// budget (not 256 KiB per client), and what the schedule owed and could not send is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_broker_cannot_make_the_agent_hold_more_than_its_unsent_budget() {
    const BUDGET: u64 = 64 << 10;
    let broker = support::broker(|_| {}).await;
    // one publisher flooding: the kernel's socket buffers fill first (a few MiB on loopback),
    // then the client's own, up to the budget
    let text = format!(
        "[run]\nduration = \"6s\"\ndrain = \"0s\"\nmax_unsent_bytes = {BUDGET}\n[[group]]\nname = \"f\"\nclients = 1\n[group.publish]\ntopic = \"flood/0\"\nqos = 0\npayload_size = 64\ngroup_rate = 100000\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let plan = support::plan(&text, &support::url(&broker), dir.path());
    let run = tokio::spawn(support::run(plan));
    connections(&broker, 1).await;
    broker.stall_for(Duration::from_secs(30));
    let report = run.await.unwrap();
    let c = &report.counters;
    let published = c["published_qos0"];
    // PUBLISH: header 1 + remaining length 1 + topic 2 + 7 + payload 64
    let encoded = published * 75;
    // CONNECT went out too, so this is at least what was left unsent at the end
    let unsent = encoded.saturating_sub(c["bytes_out"]);
    eprintln!("published {published}, bytes out {}, unsent ≥ {unsent}, {c:?}", c["bytes_out"]);
    assert!(c["send_buffer_full"] > 0, "the budget was never reached: the test proves nothing");
    // counted once each time a due message finds no room: a client that looked again on a
    // timer (every millisecond, as it once did) would count thousands in the stall's seconds
    assert!(
        c["send_buffer_full"] < 50,
        "{} times without room: the client polls the budget instead of waiting for room handed back",
        c["send_buffer_full"]
    );
    assert!(c["behind_schedule"] > 0, "what could not be sent is counted behind schedule");
    assert!(unsent <= BUDGET + 75, "{unsent} bytes unsent, over the {BUDGET}-byte budget");
    // the per-client limit (256 KiB) alone would have let it hold four times as much
    assert!(unsent > BUDGET / 2, "only {unsent} bytes were held: the budget did not bind");
}
