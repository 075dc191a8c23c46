//! `squall check` against brokers set up to pass and to fail in known ways: mosquitto with an
//! anonymous listener, passwords, TLS (trusted, untrusted, wrong name), an ACL and a
//! connection limit; squall's broker with withheld PUBACKs and refused CONNECTs. Every
//! check's verdict is asserted, and the JSON output is validated against its committed schema.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use squall_broker::{AckPacket, Action, Rule};
use support::ca::TestCa;
use support::mosquitto::Mosquitto;

/// Runs `squall check … --format json`; returns (exit code, status by check id, report).
fn check(args: &[&str]) -> (i32, BTreeMap<String, String>, serde_json::Value) {
    let out: Output = support::squall()
        .arg("check")
        .args(args)
        .args(["--format", "json", "--timeout", "2s", "--samples", "5"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let by_id = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_str().unwrap().to_string(), c["status"].as_str().unwrap().to_string()))
        .collect();
    (out.status.code().unwrap(), by_id, v)
}

fn find<'a>(v: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    v["checks"].as_array().unwrap().iter().find(|c| c["id"] == id).unwrap_or_else(|| panic!("no check {id}"))
}

fn assert_statuses(got: &BTreeMap<String, String>, want: &[(&str, &str)]) {
    for (id, status) in want {
        assert_eq!(got.get(*id).map(String::as_str), Some(*status), "{id}: {got:#?}");
    }
}

const ALL_PASS: &[&str] = &[
    "connect",
    "publish.qos0",
    "publish.qos1",
    "publish.qos2",
    "subscribe.qos0",
    "subscribe.qos1",
    "subscribe.qos2",
    "latency",
    "retained",
    "will",
    "will.clean_disconnect",
    "session",
];

#[test]
fn a_healthy_broker_passes_every_check_on_both_protocols() {
    let broker = Mosquitto::start();
    let (code, got, v) = check(&[&broker.url(), "--extended"]);
    assert_eq!(code, 0, "{got:#?}");
    assert_statuses(&got, &[("dns", "pass"), ("tcp", "pass"), ("tls", "skip")]);
    for p in ["v311", "v5"] {
        for c in ALL_PASS.iter().chain(&["shared", "burst"]) {
            assert_eq!(got[&format!("{p}.{c}")], "pass", "{p}.{c}: {}", find(&v, &format!("{p}.{c}")));
        }
        assert_eq!(got[&format!("{p}.anonymous")], "info", "reported, not judged");
        assert_eq!(got[&format!("{p}.max_payload")], "info");
        assert_eq!(got[&format!("{p}.auth")], "skip");
    }
    // the broker's MQTT 5 limits from CONNACK
    assert_eq!(find(&v, "v5.connect")["data"]["limits"]["receive_max"], 20, "mosquitto's default");
    let lat = &find(&v, "v5.latency")["data"];
    assert!(lat["p50_ms"].as_f64().unwrap() >= lat["min_ms"].as_f64().unwrap());
    assert_eq!(lat["samples"], 5);
    // nothing left behind: the retained message was cleared
    let leftover = std::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-t",
            "squall-check/#",
            "-C",
            "1",
            "-W",
            "1",
            "--retained-only",
        ])
        .output()
        .unwrap();
    assert!(leftover.stdout.is_empty(), "retained messages were left behind");
}

#[test]
fn passwords_right_wrong_and_anonymous() {
    let broker = Mosquitto::start_with(
        |port| format!("listener {port} 127.0.0.1\nallow_anonymous false\npassword_file passwd\n"),
        |dir| Mosquitto::password_file(dir, &[("ops", "pw-123")]),
    );
    let url = broker.url();
    let (code, got, _) =
        check(&[&url, "--username", "ops", "--password", "pw-123", "--anonymous", "refused"]);
    assert_eq!(code, 0, "{got:#?}");
    assert_statuses(
        &got,
        &[
            ("v311.auth", "pass"),
            ("v5.auth", "pass"),
            ("v311.anonymous", "pass"),
            ("v5.anonymous", "pass"),
            ("v5.session", "pass"),
        ],
    );

    // the password from the environment, kept out of shell history
    let out = support::squall()
        .args(["check", &url, "--username", "ops", "--only", "connect", "--format", "json"])
        .env("SQUALL_PASSWORD", "pw-123")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));

    let (code, got, v) = check(&[&url, "--username", "ops", "--password", "nope"]);
    assert_eq!(code, 1);
    assert_statuses(
        &got,
        &[
            ("v311.connect", "fail"),
            ("v311.auth", "fail"),
            ("v5.connect", "fail"),
            ("v5.auth", "fail"),
            ("v5.publish", "skip"),
            ("v5.will", "skip"),
        ],
    );
    let c = find(&v, "v5.connect");
    assert!(
        c["detail"].as_str().unwrap().contains("0x86") || c["detail"].as_str().unwrap().contains("0x87"),
        "{c}"
    );
    assert!(c["hint"].as_str().unwrap().contains("--password"), "{c}");
    let c = find(&v, "v311.connect");
    assert!(matches!(c["data"]["code"].as_u64(), Some(4) | Some(5)), "{c}");

    let (_, got, _) = check(&[&url, "--only", "connect,anonymous"]);
    assert_statuses(&got, &[("v5.anonymous", "info")]);
}

#[test]
fn tls_trusted_untrusted_and_wrong_name() {
    let ca = TestCa::new("check test CA");
    let broker = Mosquitto::start_with(
        |port| {
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\ncafile ca.pem\ncertfile server.pem\nkeyfile server.key\n"
            )
        },
        |dir| {
            ca.write_ca(dir, "ca.pem");
            ca.issue(dir, "server", &["broker.test", "127.0.0.1"]);
        },
    );
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let ca_pem = broker.dir.path().join("ca.pem");
    let (code, got, v) =
        check(&[&url, "--ca", ca_pem.to_str().unwrap(), "--only", "connect,publish", "--protocol", "5"]);
    assert_eq!(code, 0, "{got:#?}");
    let tls = find(&v, "tls");
    assert_eq!(tls["status"], "pass");
    assert!(tls["detail"].as_str().unwrap().contains("TLSv1_3"), "{tls}");
    assert_eq!(tls["data"]["chain"][0]["subject_cn"], "broker.test");
    assert_eq!(tls["data"]["chain"][0]["issuer_cn"], "check test CA");

    // no --ca: the system roots do not know the test CA
    let (code, got, v) = check(&[&url, "--protocol", "5"]);
    assert_eq!(code, 1);
    assert_statuses(&got, &[("tls", "fail"), ("v5.connect", "skip")]);
    let tls = find(&v, "tls");
    assert!(tls["detail"].as_str().unwrap().contains("untrusted"), "{tls}");
    assert!(tls["hint"].as_str().unwrap().contains("--ca"), "{tls}");
    assert_eq!(tls["data"]["chain"][0]["subject_cn"], "broker.test", "the certificate is described anyway");

    // a name the certificate does not list
    let (code, _, v) =
        check(&[&url, "--ca", ca_pem.to_str().unwrap(), "--server-name", "other.test", "--protocol", "5"]);
    assert_eq!(code, 1);
    let tls = find(&v, "tls");
    assert!(tls["detail"].as_str().unwrap().contains("not valid for `other.test`"), "{tls}");
}

#[test]
fn an_expired_certificate_is_named() {
    let ca = TestCa::new("check test CA");
    let broker = Mosquitto::start_with(
        |port| {
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\ncafile ca.pem\ncertfile server.pem\nkeyfile server.key\n"
            )
        },
        |dir| {
            ca.write_ca(dir, "ca.pem");
            ca.issue_expired(dir, "server", &["127.0.0.1"]);
        },
    );
    let ca_pem = broker.dir.path().join("ca.pem");
    let (code, got, v) = check(&[
        &format!("mqtts://127.0.0.1:{}", broker.port),
        "--ca",
        ca_pem.to_str().unwrap(),
        "--protocol",
        "5",
    ]);
    assert_eq!(code, 1);
    assert_statuses(&got, &[("tls", "fail"), ("v5.connect", "skip")]);
    let tls = find(&v, "tls");
    assert!(tls["detail"].as_str().unwrap().contains("expired"), "{tls}");
    assert_eq!(tls["data"]["chain"][0]["not_after"], 1_577_836_800, "2020-01-01, read from the certificate");
}

#[test]
fn an_acl_denial_is_named_with_its_topic() {
    let broker = Mosquitto::start_with(
        |port| format!("listener {port} 127.0.0.1\nallow_anonymous true\nacl_file acl\n"),
        |dir| support::mosquitto::write_readable(&dir.join("acl"), "topic readwrite allowed/#\n"),
    );
    // inside the allowed tree everything works
    let (code, got, _) = check(&[&broker.url(), "--topic-prefix", "allowed", "--only", "publish,subscribe"]);
    assert_eq!(code, 0, "{got:#?}");
    // outside it: MQTT 5 says "not authorized"; 3.1.1 can only refuse the subscription
    let (code, got, v) =
        check(&[&broker.url(), "--topic-prefix", "denied", "--only", "publish,subscribe", "--qos", "1"]);
    assert_eq!(code, 1);
    let p = find(&v, "v5.publish.qos1");
    assert_eq!(p["status"], "fail", "{p}");
    assert!(
        p["hint"].as_str().unwrap().contains("Not authorized: check the broker's ACL for topic denied/"),
        "{p}"
    );
    assert_statuses(&got, &[("v5.subscribe.qos1", "skip"), ("v311.subscribe.qos1", "fail")]);
    assert!(find(&v, "v311.subscribe.qos1")["hint"].as_str().unwrap().contains("ACL"));
}

#[test]
fn a_connection_limit_shows_where_a_second_connection_is_needed() {
    let broker = Mosquitto::start_with(
        |port| format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections 1\n"),
        |_| {},
    );
    let (code, got, v) = check(&[&broker.url(), "--protocol", "5", "--only", "connect,publish,retained"]);
    assert_eq!(code, 1);
    assert_statuses(&got, &[("v5.connect", "pass"), ("v5.publish.qos1", "pass"), ("v5.retained", "fail")]);
    assert!(
        find(&v, "v5.retained")["hint"].as_str().unwrap().contains("max_connections"),
        "{}",
        find(&v, "v5.retained")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_with_faults() {
    let withheld =
        support::broker(|c| c.faults = vec![Rule::all(Action::Withhold { packet: AckPacket::PubAck })]).await;
    let url = support::url(&withheld);
    let (code, got, v) =
        tokio::task::spawn_blocking(move || check(&[&url, "--protocol", "5", "--only", "connect,publish"]))
            .await
            .unwrap();
    assert_eq!(code, 1);
    assert_statuses(
        &got,
        &[("v5.connect", "pass"), ("v5.publish.qos0", "pass"), ("v5.publish.qos1", "fail")],
    );
    assert!(
        find(&v, "v5.publish.qos1")["detail"].as_str().unwrap().contains("no answer within"),
        "{}",
        find(&v, "v5.publish.qos1")
    );

    let refusing = support::broker(|c| {
        c.faults = vec![Rule::for_clients("squall-check-*-main-*", Action::Refuse { code: 0x88 })]
    })
    .await;
    let url = support::url(&refusing);
    let (code, got, v) = tokio::task::spawn_blocking(move || check(&[&url])).await.unwrap();
    assert_eq!(code, 1);
    assert_statuses(&got, &[("v311.connect", "fail"), ("v5.connect", "fail"), ("v5.anonymous", "info")]);
    assert!(find(&v, "v5.connect")["detail"].as_str().unwrap().contains("0x88 server unavailable"));
    assert!(
        find(&v, "v311.connect")["detail"].as_str().unwrap().contains("0x03 server unavailable"),
        "mapped for 3.1.1"
    );
}

/// `--max-latency`: a bound no loopback round trip can meet (1 µs) fails the latency check,
/// with the figures and a hint, and only it; a generous one (10 s) passes.
#[test]
fn max_latency_fails_a_slow_round_trip_and_only_the_latency_check() {
    let broker = Mosquitto::start();
    let (code, got, v) = check(&[&broker.url(), "--protocol", "5", "--max-latency", "1us"]);
    assert_eq!(code, 1, "{got:#?}");
    let l = find(&v, "v5.latency");
    assert_eq!(l["status"], "fail", "{l}");
    assert!(l["detail"].as_str().unwrap().contains("median over --max-latency 1us (5 of 5 over)"), "{l}");
    assert!(l["hint"].as_str().unwrap().contains("slow to deliver"), "{l}");
    assert!(l["data"]["p50_ms"].as_f64().unwrap() > 0.001);
    let failed: Vec<&String> = got.iter().filter(|(_, s)| *s == "fail").map(|(id, _)| id).collect();
    assert_eq!(failed, ["v5.latency"], "no other check fails for it");
    let (code, got, _) = check(&[&broker.url(), "--protocol", "5", "--max-latency", "10s"]);
    assert_eq!((code, got["v5.latency"].as_str()), (0, "pass"), "{got:#?}");
}

/// `--every`: rounds on a cadence, one JSON document per line, `--rounds` to stop; with
/// `--stop-on-fail` the first failing round ends it (exit 1); JUnit is refused for a stream.
#[test]
fn every_round_is_a_line_until_rounds_or_the_first_failure() {
    let broker = Mosquitto::start();
    let base = [broker.url(), "--only".into(), "connect,latency".into(), "--protocol".into(), "5".into()];
    let run = |extra: &[&str]| support::squall().arg("check").args(&base).args(extra).output().unwrap();
    let out = run(&["--every", "200ms", "--rounds", "3", "--format", "json", "--samples", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let rounds: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON document per line"))
        .collect();
    assert_eq!(rounds.len(), 3);
    assert!(
        rounds.iter().all(|r| r["ok"] == true && r["checks"].as_array().unwrap().len() >= 3),
        "{rounds:?}"
    );

    let out = run(&[
        "--every",
        "200ms",
        "--rounds",
        "5",
        "--stop-on-fail",
        "--max-latency",
        "1us",
        "--samples",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "stopped at the first failing round: {text}");
    assert!(text.contains("round 1") && text.contains("FAIL") && text.contains("(v5.latency)"), "{text}");

    assert_eq!(run(&["--every", "1s", "--format", "junit"]).status.code(), Some(2));
    assert_eq!(run(&["--rounds", "3"]).status.code(), Some(2), "--rounds needs --every");
    assert_eq!(run(&["--every", "1ms"]).status.code(), Some(2), "at least 100 ms between rounds");
}

#[test]
fn json_junit_and_yaml_outputs() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("check.json");
    let out = support::squall()
        .args(["check", &broker.url(), "--format", "json", "--output"])
        .arg(&json)
        .args(["--samples", "3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("✓ v5 will"), "the table still goes to stdout");
    let v = std::process::Command::new("python3")
        .args(["-c", "import json,sys,jsonschema; jsonschema.validate(json.load(open(sys.argv[2])), json.load(open(sys.argv[1]))); print('ok')"])
        .arg(Path::new("schemas/check.schema.json"))
        .arg(&json)
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));

    let out = support::squall()
        .args(["check", &broker.url(), "--format", "junit", "--protocol", "5", "--samples", "3"])
        .output()
        .unwrap();
    let xml = String::from_utf8_lossy(&out.stdout).to_string();
    let parsed = std::process::Command::new("python3")
        .args(["-c", "import sys,xml.etree.ElementTree as E; t=E.fromstring(sys.stdin.read()).find('testsuite'); print(len(t.findall('testcase')), t.get('failures'))"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(xml.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let counts = String::from_utf8_lossy(&parsed.stdout).trim().to_string();
    assert!(
        counts.ends_with(" 0") && counts.split(' ').next().unwrap().parse::<usize>().unwrap() > 10,
        "{counts}\n{xml}"
    );

    let out = support::squall()
        .args(["check", &broker.url(), "--format", "yaml", "--only", "connect", "--protocol", "5"])
        .output()
        .unwrap();
    let yaml = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(yaml.starts_with("---\n"), "{yaml}");
    // another parser (PyYAML) reads it as the JSON report's data
    let mut py = std::process::Command::new("python3")
        .args(["-c", "import json,sys,yaml; print(json.dumps(yaml.safe_load(sys.stdin), default=str))"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (the README's test command installs PyYAML)");
    {
        use std::io::Write;
        py.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    }
    let parsed: serde_json::Value = serde_json::from_slice(&py.wait_with_output().unwrap().stdout).unwrap();
    let connect = parsed["checks"].as_array().unwrap().iter().find(|c| c["id"] == "v5.connect").cloned();
    assert_eq!(parsed["ok"].as_bool(), Some(true), "{yaml}");
    assert_eq!(connect.map(|c| c["status"].clone()), Some(serde_json::json!("pass")), "{yaml}");
}

#[test]
fn bad_usage_exits_2() {
    let out = support::squall().args(["check", "localhost:1883"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = support::squall().args(["check", "mqtt://localhost", "--only", "wil"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown check `wil`"));
    let out = support::squall().args(["check", "mqtt://localhost", "--require", "retain"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("give one of retained, shared, qos1, qos2"));
    let out = support::squall().args(["check", "mqtt://localhost", "--expect-deny", "a/#"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no + or # wildcards"));
}

/// The ids of the failed checks.
fn failed(got: &BTreeMap<String, String>) -> Vec<&str> {
    got.iter().filter(|(_, s)| *s == "fail").map(|(id, _)| id.as_str()).collect()
}

/// The cause of each failing or skipped check, exactly (none for a pass).
fn causes(v: &serde_json::Value) -> BTreeMap<String, String> {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| Some((c["id"].as_str()?.to_string(), c["cause"].as_str()?.to_string())))
        .collect()
}

/// mosquitto with `retain_available false`: on 3.1.1 it closes the connection on a retained
/// PUBLISH; on MQTT 5 its CONNACK says so. Either way `retained` alone names the cause, and
/// `will` and `session` pass on connections of their own.
#[test]
fn retain_disabled_is_one_cause_on_each_protocol() {
    let broker = Mosquitto::start_with(
        |port| format!("listener {port} 127.0.0.1\nallow_anonymous true\nretain_available false\n"),
        |_| {},
    );
    let (code, got, v) = check(&[&broker.url()]);
    assert_eq!(code, 1);
    let c = causes(&v);
    assert_eq!(c.get("v311.retained").map(String::as_str), Some("retain_unavailable"), "{c:#?}");
    assert_eq!(c.get("v5.retained").map(String::as_str), Some("retain_unavailable"), "{c:#?}");
    assert_statuses(
        &got,
        &[
            ("v311.retained", "fail"),
            ("v5.retained", "skip"),
            ("v311.will", "pass"),
            ("v311.session", "pass"),
            ("v5.will", "pass"),
            ("v5.will.clean_disconnect", "pass"),
            ("v5.session", "pass"),
        ],
    );
    assert!(find(&v, "v311.retained")["hint"].as_str().unwrap().contains("retain_available false"));
    let failed = failed(&got);
    assert_eq!(failed, ["v311.retained"], "nothing else fails");
    // asked for, a declared absence fails
    let (code, got, v) =
        check(&[&broker.url(), "--protocol", "5", "--only", "connect,retained", "--require", "retained"]);
    assert_eq!(code, 1);
    assert_statuses(&got, &[("v5.retained", "fail")]);
    assert_eq!(causes(&v)["v5.retained"], "retain_unavailable");
}

/// mosquitto with an ACL that makes everything read-only: publishes are refused (MQTT 5) or
/// dropped (3.1.1), so own messages never come back; what depends on that is skipped with that
/// reason instead of blaming retained messages or sessions.
#[test]
fn a_read_only_acl_is_one_cause() {
    let broker = Mosquitto::start_with(
        |port| format!("listener {port} 127.0.0.1\nallow_anonymous true\nacl_file acl\n"),
        |dir| support::mosquitto::write_readable(&dir.join("acl"), "topic read #\n"),
    );
    let (code, got, v) = check(&[&broker.url()]);
    assert_eq!(code, 1);
    let c = causes(&v);
    for p in ["v311", "v5"] {
        for q in 0..=2 {
            let id = format!("{p}.subscribe.qos{q}");
            let want = if p == "v5" && q > 0 { "acl_denied" } else { "not_delivered" };
            assert_eq!(c.get(&id).map(String::as_str), Some(want), "{id}: {c:#?}");
        }
        for dependent in ["latency", "retained", "will", "will.clean_disconnect", "session"] {
            let id = format!("{p}.{dependent}");
            assert_eq!(got[&id], "skip", "{id}");
            assert_eq!(c[&id], "not_delivered", "{id}");
            assert!(find(&v, &id)["detail"].as_str().unwrap().contains("are not delivered (see subscribe)"));
        }
    }
    assert_eq!(c["v5.publish.qos1"], "acl_denied");
    assert_eq!(got["v311.publish.qos1"], "pass", "3.1.1 cannot refuse a publish");
    // --expect-deny: a denial there passes; where the ACL allows, it fails
    let (code, got, _) = check(&[&broker.url(), "--only", "connect,deny", "--expect-deny", "secret/x"]);
    assert_eq!(code, 0, "{got:#?}");
    assert_statuses(&got, &[("v311.deny[secret/x]", "pass"), ("v5.deny[secret/x]", "pass")]);
    let open = Mosquitto::start();
    let (code, got, v) = check(&[&open.url(), "--only", "connect,deny", "--expect-deny", "secret/x"]);
    assert_eq!(code, 1);
    assert_statuses(&got, &[("v5.deny[secret/x]", "fail")]);
    assert_eq!(causes(&v)["v5.deny[secret/x]"], "not_denied");
}

/// mosquitto with `max_qos 1`: on 3.1.1 it ends the connection on a QoS 2 PUBLISH, which reads
/// as QoS 2 unavailable, and the rest goes on over a new connection; MQTT 5's CONNACK says so,
/// and QoS 2 is reported, not probed.
#[test]
fn a_close_on_a_qos2_publish_is_that_qos_refused() {
    let broker = Mosquitto::start_with(
        |port| format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_qos 1\n"),
        |_| {},
    );
    let (code, got, v) = check(&[&broker.url()]);
    assert_eq!(code, 1);
    let c = causes(&v);
    for id in ["v311.publish.qos2", "v311.subscribe.qos2", "v5.publish.qos2", "v5.subscribe.qos2"] {
        assert_eq!(c.get(id).map(String::as_str), Some("qos_unavailable"), "{id}: {c:#?}");
    }
    assert_statuses(&got, &[("v311.publish.qos2", "fail"), ("v5.publish.qos2", "skip")]);
    let failed = failed(&got);
    assert_eq!(failed, ["v311.publish.qos2"], "everything else passes over a new connection");
}

/// mosquitto with `max_packet_size 20000`: MQTT 5's CONNACK declares it, so `max_payload`
/// probes only up to it and says so; 3.1.1 learns it by the broker closing on 64 KiB.
#[test]
fn max_payload_probes_up_to_the_declared_packet_size() {
    let broker = Mosquitto::start_with(
        |port| format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_packet_size 20000\n"),
        |_| {},
    );
    let (_, got, v) = check(&[&broker.url(), "--only", "connect,max_payload"]);
    assert_statuses(&got, &[("v5.max_payload", "info"), ("v311.max_payload", "info")]);
    let v5 = find(&v, "v5.max_payload");
    assert!(
        v5["detail"].as_str().unwrap().contains("maximum packet size of 20000 bytes: probed up to it"),
        "{v5}"
    );
    assert_eq!(v5["data"]["largest_bytes"], 16 << 10);
    assert_eq!(find(&v, "v311.max_payload")["data"]["largest_bytes"], 16 << 10);
}
