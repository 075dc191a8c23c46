//! The `squall` binary: exit codes, error messages that point into the file, every shipped
//! scenario valid, committed schemas in step with the code and with real output.

mod support;

use std::path::Path;

use clap::Parser;
use support::mosquitto::{Mosquitto, free_port};

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn an_invalid_scenario_exits_2_and_points_at_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "bad.toml",
        "[[group]]\nclients = 10\n[group.publish]\ntopic = \"t/{i}\"\ninterval = \"1s\"\nqos = 7\n",
    );
    let out = support::squall().args(["run", f.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("bad.toml:6:7: QoS 7 does not exist"), "{err}");
    assert!(err.contains("hint: QoS is 0, 1 or 2"), "{err}");
}

#[test]
fn bad_flags_exit_2() {
    let out =
        support::squall().args(["run", "scenarios/quickstart.toml", "--duration", "soon"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a duration"));
    let out = support::squall()
        .args(["run", "scenarios/quickstart.toml", "--target", "localhost"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--target: `localhost` has no scheme"));
}

/// A scenario whose memory cannot fit is refused before anything is allocated for it (here
/// 1,000 publishers of 100 MB at QoS 1: terabytes), with the estimate and a hint.
#[test]
fn a_scenario_beyond_this_hosts_memory_exits_2_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "huge.toml",
        "[[group]]\nclients = 1000\n[group.publish]\ntopic = \"t/{i}\"\ninterval = \"1s\"\nqos = 1\npayload_size = 100000000\n",
    );
    let out = support::squall().args(["run", f.to_str().unwrap(), "-q", "--live", "off"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("1000 clients need ~") && err.contains("lower payload_size or max_inflight"),
        "{err}"
    );
}

/// A scenario of connections only (idle clients and subscribers: an idle-connection soak)
/// holds them for the whole window instead of ending once they connect.
#[test]
fn a_connections_only_scenario_holds_for_its_duration() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "idle.toml",
        "[run]\nduration = \"3s\"\ndrain = \"0s\"\n[[group]]\nname = \"idle\"\nclients = 10\n[[group]]\nname = \"subs\"\nclients = 2\n[group.subscribe]\nfilters = [\"x/#\"]\n",
    );
    let report = dir.path().join("r.json");
    let out = support::squall()
        .args(["run", f.to_str().unwrap(), "-q", "--live", "off", "--report"])
        .arg(&report)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    // the window is measured on the controller's clock: ended early, it would be shorter
    assert!(r["publish_window_s"].as_f64().unwrap() >= 3.0, "{}", r["publish_window_s"]);
    assert_eq!(r["counters"]["connects"], 12);
    assert_eq!(r["counters"]["connections_lost"], 0);
}

/// Threads of `pid` and its descendants named as the engine names its lanes.
fn lane_threads(pid: u32) -> usize {
    let mut pids = vec![pid];
    let mut i = 0;
    while i < pids.len() {
        let kids =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", pids[i])).unwrap_or_default();
        pids.extend(kids.split_whitespace().filter_map(|k| k.parse::<u32>().ok()));
        i += 1;
    }
    pids.iter()
        .flat_map(|p| std::fs::read_dir(format!("/proc/{p}/task")).into_iter().flatten().flatten())
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("lane-")))
        .count()
}

/// `--threads N` puts the clients on N engine threads, in process and in each local agent,
/// whatever the core count (this machine has 2; 3 shows the flag, not the cores, decided).
#[test]
fn threads_sets_the_engines_lanes_in_process_and_in_local_agents() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "t.toml",
        "[run]\nduration = \"3s\"\ndrain = \"0s\"\n[[group]]\nname = \"p\"\nclients = 6\n[group.publish]\ntopic = \"t/{i}\"\ninterval = \"100ms\"\n[[group]]\nname = \"s\"\nclients = 1\n[group.subscribe]\nfilters = [\"t/#\"]\n",
    );
    for (threads, local) in [("1", None), ("3", None), ("3", Some("1"))] {
        let report = dir.path().join("r.json");
        let mut cmd = support::squall();
        cmd.args(["run", f.to_str().unwrap(), "-q", "--live", "off", "--threads", threads, "--report"])
            .arg(&report);
        if let Some(n) = local {
            cmd.args(["--local-agents", n]);
        }
        let mut child = cmd.stderr(std::process::Stdio::piped()).spawn().unwrap();
        let mut most = 0;
        while child.try_wait().unwrap().is_none() {
            most = most.max(lane_threads(child.id()));
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            most.to_string(),
            threads,
            "lanes seen with --threads {threads}, --local-agents {local:?}"
        );
        let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        assert!(r["counters"]["published_qos0"].as_u64().unwrap() >= 6 * 20, "{}", r["counters"]);
        assert_eq!(r["delivery"]["all"]["lost"], 0, "{}", r["delivery"]);
    }
}

#[test]
fn an_unreachable_broker_exits_3_with_a_hint() {
    let port = free_port(); // nobody listens there
    let out = support::squall()
        .args(["run", "scenarios/quickstart.toml", "--duration", "1s", "--live", "off", "--target"])
        .arg(format!("mqtt://127.0.0.1:{port}"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains("no client could connect"), "{stdout}");
    assert!(stdout.contains("tcp_refused"), "{stdout}");
}

#[test]
fn every_shipped_scenario_is_valid() {
    let mut n = 0;
    for entry in std::fs::read_dir("scenarios").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let cli = squall::cli::Cli::parse_from(["squall", "run", "--check", path.to_str().unwrap()]);
            assert_eq!(squall::cli::dispatch(cli), 0, "{} is not valid", path.display());
            n += 1;
        }
    }
    assert!(n >= 5, "quickstart, fan-in, fan-out, qos-soak, example");
}

#[test]
fn init_prints_a_valid_scenario() {
    let out = support::squall().arg("init").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "mine.toml", &String::from_utf8_lossy(&out.stdout));
    let out = support::squall().args(["run", "--check", f.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn committed_schemas_match_the_code() {
    for which in ["scenario", "report", "check", "device-report"] {
        let out = support::squall().args(["init", "--schema", which]).output().unwrap();
        let generated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let committed: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(format!("schemas/{which}.schema.json")).unwrap())
                .unwrap();
        assert_eq!(
            generated, committed,
            "schemas/{which}.schema.json is stale: run `squall init --schema {which} > schemas/{which}.schema.json`"
        );
    }
}

#[test]
fn a_real_report_matches_the_committed_schema() {
    let broker = Mosquitto::start();
    let report = broker.dir.path().join("report.json");
    let out = support::squall()
        .args([
            "run",
            "scenarios/quickstart.toml",
            "--duration",
            "1s",
            "--live",
            "off",
            "--target",
            &broker.url(),
            "--report",
        ])
        .arg(&report)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    support::validate_with_jsonschema(Path::new("schemas/report.schema.json"), &report);
}

#[test]
fn shipped_scenarios_match_the_committed_scenario_schema() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["quickstart", "fan-in", "fan-out", "qos-soak", "example", "stages", "capacity"] {
        let text = std::fs::read_to_string(format!("scenarios/{name}.toml")).unwrap();
        let value: toml::Value = toml::from_str(&text).unwrap();
        let json = write(dir.path(), &format!("{name}.json"), &serde_json::to_string(&value).unwrap());
        support::validate_with_jsonschema(Path::new("schemas/scenario.schema.json"), &json);
    }
}

#[test]
fn the_quickstart_runs_on_the_embedded_broker() {
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("quickstart.json");
    let out = support::squall()
        .args(["run", "scenarios/quickstart.toml", "--duration", "2s", "--live", "off", "--report"])
        .arg(&report_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("running against the embedded broker"),
        "it says so"
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    assert_eq!(r["embedded_broker"], true);
    let published: u64 = (0..3).map(|q| r["counters"][format!("published_qos{q}")].as_u64().unwrap()).sum();
    assert!(published >= 1900, "100 devices × 10/s × 2s: {published}");
    assert_eq!(
        r["broker"]["messages_in_qos1"].as_u64().unwrap(),
        published,
        "the broker received every publish"
    );
    assert_eq!(r["delivery"]["all"]["delivered"].as_u64().unwrap(), published);
    assert_eq!(r["delivery"]["all"]["lost"], 0);
    support::validate_with_jsonschema(Path::new("schemas/report.schema.json"), &report_path);
}
