//! Shared by the integration tests: a real mosquitto per test, a test CA, and a way to run a
//! scenario in-process and get its report.
#![allow(dead_code)]

pub mod ca;
pub mod mosquitto;
pub mod prom;
pub mod proxy;
pub mod raw;

use squall_controller::coordinator::{self, RunSetup};
use squall_controller::report::Report;
use squall_controller::report::live::LiveMode;
use squall_controller::scenario::{Overrides, Plan, Source, load_source};

/// Resolves scenario text (as if it were a file in `dir`) against `target`.
pub fn plan(text: &str, target: &str, dir: &std::path::Path) -> Plan {
    let ov = Overrides { targets: vec![target.to_string()], ..Default::default() };
    match load_source(&Source::new(dir.join("test.toml"), text), &ov) {
        Ok(p) => p,
        Err(d) => panic!("test scenario is invalid:\n{d}"),
    }
}

/// Runs a plan to the end with one in-process agent.
pub async fn run(plan: Plan) -> Report {
    run_until(plan, std::future::pending()).await
}

/// Runs a plan with one in-process agent until its end or until `stop` (as an interrupt).
pub async fn run_until(plan: Plan, stop: impl std::future::Future<Output = ()>) -> Report {
    let targets = plan.targets.clone();
    let setup = RunSetup {
        plan,
        targets,
        embedded_broker: false,
        live: LiveMode::Off,
        soak_log: None,
        metrics_listen: None,
        broker_pid: None,
    };
    coordinator::run(setup, squall::cli::agents::InProcess { threads: None }, stop)
        .await
        .expect("the run starts")
}

/// The built `squall` binary.
pub fn squall() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_squall"))
}

/// An embedded broker on a free loopback port, with `config` changes.
pub async fn broker(config: impl FnOnce(&mut squall_broker::BrokerConfig)) -> squall_broker::Broker {
    let mut c = squall_broker::BrokerConfig::default();
    config(&mut c);
    squall_broker::Broker::start(c).await.expect("the embedded broker starts")
}

pub fn url(b: &squall_broker::Broker) -> String {
    format!("mqtt://{}", b.local_addr())
}

/// Reads the agents' `--tally-file`s and asserts that every counter of the merged `report` is
/// their sum (each agent's own record, kept apart from the controller). Returns the tallies.
pub fn assert_counters_match_tallies(
    report: &serde_json::Value,
    files: &[std::path::PathBuf],
) -> Vec<serde_json::Value> {
    let tallies: Vec<serde_json::Value> = files
        .iter()
        .map(|f| {
            serde_json::from_str(&std::fs::read_to_string(f).expect("the agent wrote its tally")).unwrap()
        })
        .collect();
    for (name, value) in report["counters"].as_object().unwrap() {
        let summed: u64 = tallies.iter().map(|t| t["counters"][name].as_u64().unwrap_or(0)).sum();
        assert_eq!(value.as_u64().unwrap(), summed, "counter {name}: report against the agents' tallies");
    }
    tallies
}

/// Validates `instance` against `schema` with Python's jsonschema (the reference validator).
pub fn validate_with_jsonschema(schema: &std::path::Path, instance: &std::path::Path) {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import json,sys,jsonschema; jsonschema.validate(json.load(open(sys.argv[2])), json.load(open(sys.argv[1]))); print('ok')",
        ])
        .arg(schema)
        .arg(instance)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{} does not match {}: {}\n(needs Python's jsonschema: the README's test command installs it)",
        instance.display(),
        schema.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits (5 s at most) until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, what: &str) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("{what} never listened on {port}");
}
