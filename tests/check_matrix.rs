//! `squall check` against real brokers nobody here wrote, on both protocols, each verdict and
//! cause compared with a table committed here. A check the table does not name must pass
//! (`tls` and `auth` are skipped: plain TCP, no credentials; `anonymous` is reported). Every
//! expected failure says why, citing the broker's documentation or configuration.
//!
//! The brokers come from the README's test command: mosquitto (Debian), aedes (npm, pinned,
//! installed under target/interop/node) and rumqttd (crates.io, pinned, `cargo install`ed
//! under target/interop/rumqttd).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// (check id, status, cause, why): what differs from a pass.
type Row = (&'static str, &'static str, Option<&'static str>, &'static str);

fn default_status(id: &str) -> &'static str {
    match id.rsplit('.').next().unwrap_or(id) {
        "tls" | "auth" => "skip",
        "anonymous" => "info",
        _ => "pass",
    }
}

/// Runs `squall check` (default checks, both protocols) and compares it with `table`.
fn compare(broker: &str, url: &str, table: &[Row]) {
    compare_protocol(broker, url, "both", table)
}

fn compare_protocol(broker: &str, url: &str, protocol: &str, table: &[Row]) {
    let out = support::squall()
        .args(["check", url, "--protocol", protocol, "--format", "json", "--timeout", "2s", "--samples", "5"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{broker}: not JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    let mut wrong = Vec::new();
    for c in v["checks"].as_array().unwrap() {
        let id = c["id"].as_str().unwrap();
        let (status, cause) = (c["status"].as_str().unwrap(), c["cause"].as_str());
        let (want_status, want_cause, why) = match table.iter().find(|r| r.0 == id) {
            Some((_, s, c, why)) => (*s, *c, *why),
            None => (default_status(id), None, "a broker that does this"),
        };
        if (status, cause) != (want_status, want_cause) {
            wrong.push(format!(
                "{id}: {status} ({cause:?}), expected {want_status} ({want_cause:?}: {why}); detail: {}",
                c["detail"]
            ));
        }
    }
    for (id, ..) in table {
        if !v["checks"].as_array().unwrap().iter().any(|c| c["id"] == *id) {
            wrong.push(format!("{id}: not in the report"));
        }
    }
    assert!(wrong.is_empty(), "{broker}, against its table:\n{}", wrong.join("\n"));
}

/// A broker process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn interop(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/interop").join(path)
}

#[test]
fn mosquitto_passes_everything_on_both_protocols() {
    let broker = support::mosquitto::Mosquitto::start();
    compare("mosquitto 2 (Debian, allow_anonymous true)", &broker.url(), &[]);
}

/// aedes 0.51.3: "Full compatible with MQTT 3.1 and 3.1.1", "MQTT 5.0 (not support yet)"
/// (its README). To an MQTT 5 CONNECT it answers in 3.1.1's form, code 1.
const AEDES: &[Row] = &[
    ("v5.connect", "fail", Some("protocol_unsupported"), "aedes README: MQTT 5.0 not supported yet"),
    ("v5.auth", "skip", None, "refused for another reason than credentials"),
    ("v5.publish", "skip", Some("protocol_unsupported"), "no MQTT 5 connection"),
    ("v5.subscribe", "skip", Some("protocol_unsupported"), "no MQTT 5 connection"),
    ("v5.latency", "skip", Some("protocol_unsupported"), "no MQTT 5 connection"),
    ("v5.retained", "skip", Some("protocol_unsupported"), "no MQTT 5 connection"),
    ("v5.will", "skip", Some("protocol_unsupported"), "no MQTT 5 connection"),
    ("v5.session", "skip", Some("protocol_unsupported"), "no MQTT 5 connection"),
];

#[test]
fn aedes_speaks_311_only() {
    let modules = interop("node/node_modules");
    assert!(
        modules.join("aedes").is_dir(),
        "aedes is not installed at {}: run the README's test command (bash scripts/test.sh), which installs it",
        modules.display()
    );
    let port = support::mosquitto::free_port();
    let _aedes = Proc(
        Command::new("node")
            .arg("tests/interop/aedes_broker.js")
            .arg(port.to_string())
            .env("NODE_PATH", &modules)
            .stdout(Stdio::null())
            .spawn()
            .expect("node runs"),
    );
    support::wait_for_port(port, "aedes");
    compare("aedes 0.51.3", &format!("mqtt://127.0.0.1:{port}"), AEDES);
}

/// rumqttd 0.19.0 (crates.io): MQTT 3.1.1 ("v4") and 5 on listeners of their own, as its
/// sample rumqttd.toml sets them up. Everything the default checks probe, it does.
#[test]
fn rumqttd_passes_on_each_protocols_listener() {
    let bin = interop("rumqttd/bin/rumqttd");
    assert!(
        bin.is_file(),
        "rumqttd is not installed at {}: run the README's test command (bash scripts/test.sh), which installs it",
        bin.display()
    );
    let (v4, v5) = (support::mosquitto::free_port(), support::mosquitto::free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rumqttd.toml");
    std::fs::write(
        &config,
        format!(
            r#"id = 0
[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:{v4}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 20480
max_inflight_count = 100
dynamic_filters = true
[v5.1]
name = "v5-1"
listen = "127.0.0.1:{v5}"
next_connection_delay_ms = 1
[v5.1.connections]
connection_timeout_ms = 60000
max_payload_size = 20480
max_inflight_count = 100
"#
        ),
    )
    .unwrap();
    let _rumqttd = Proc(
        Command::new(&bin)
            .args(["-q", "-c"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    support::wait_for_port(v4, "rumqttd (v4)");
    support::wait_for_port(v5, "rumqttd (v5)");
    compare_protocol("rumqttd 0.19.0, 3.1.1 listener", &format!("mqtt://127.0.0.1:{v4}"), "3.1.1", &[]);
    compare_protocol("rumqttd 0.19.0, MQTT 5 listener", &format!("mqtt://127.0.0.1:{v5}"), "5", &[]);
}
