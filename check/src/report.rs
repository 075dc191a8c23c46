//! The check report: one result per check, in order, and four ways to show it: a table for
//! people, JSON (with a committed schema), YAML, and JUnit XML so CI systems list each check as
//! a test.

use std::fmt::Write;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    /// Not run: a prerequisite failed, or it was not selected or not applicable; the detail
    /// says which.
    Skip,
    /// Reported, not judged (e.g. whether anonymous clients are accepted).
    Info,
}

/// Why a check failed or was skipped, for machines (the detail and the hint say it for people).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Nothing listens there (TCP refused), or the name does not resolve.
    Unreachable,
    /// The TLS handshake failed.
    Tls,
    /// CONNACK: bad user name or password (3.1.1 code 4, MQTT 5 0x86).
    AuthFailed,
    /// CONNACK: not authorized (code 5, 0x87).
    NotAuthorized,
    /// The broker does not speak this MQTT version (CONNACK 0x84, or 3.1.1's code 1; a
    /// broker without MQTT 5 answers in 3.1.1's form).
    ProtocolUnsupported,
    /// CONNACK refused for another reason (the detail has the code).
    Refused,
    /// The broker refused another connection: a connection limit.
    ConnectionLimit,
    /// An ACL refused a publish or a subscription (PUBACK/SUBACK 0x87, 3.1.1 SUBACK 0x80).
    AclDenied,
    /// Own messages on the test prefix never came back (an ACL that drops silently, most often).
    NotDelivered,
    /// Retained messages are unavailable: declared in CONNACK, or the broker closed the
    /// connection (or sent DISCONNECT 0x9A) on a retained PUBLISH.
    RetainUnavailable,
    /// The broker lacks this QoS: declared in MQTT 5's CONNACK, or it ended the connection on a
    /// PUBLISH at it.
    QosUnavailable,
    /// The broker declares that it has no shared subscriptions.
    SharedUnavailable,
    /// A retained message was accepted but not given to a new subscriber.
    RetainNotKept,
    /// A will was not published after an abrupt close.
    WillNotPublished,
    /// A will was published after a clean DISCONNECT.
    WillOnCleanDisconnect,
    /// A persistent session was not kept, or its queued message not delivered.
    SessionNotKept,
    /// No answer within the timeout.
    Timeout,
    /// The broker closed the connection (or sent DISCONNECT) for a reason squall cannot tell.
    ConnectionClosed,
    /// `--expect-deny`: the broker let this client use a topic it should deny.
    NotDenied,
    /// The round trip is over `--max-latency`.
    Slow,
    /// Something else: the detail says what.
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CheckResult {
    /// Unique within the report: the check name, prefixed by the protocol where it has one
    /// (`v5.publish.qos1`).
    pub id: String,
    /// The check's name (`publish.qos1`), as `--only`/`--skip` select it.
    pub check: String,
    /// "3.1.1" or "5" for checks that run per protocol.
    pub protocol: Option<String>,
    pub status: Status,
    pub duration_ms: f64,
    /// What happened, in one line.
    pub detail: String,
    /// What to do about a failure.
    pub hint: Option<String>,
    /// Structured facts: broker limits, latency percentiles, certificates …
    pub data: Option<serde_json::Value>,
    /// Why it failed or was skipped (none for a pass, or a skip the user asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CheckReport {
    pub schema_version: u32,
    pub squall_version: String,
    pub target: String,
    pub protocols: Vec<String>,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub passed: u32,
    pub failed: u32,
    pub skipped: u32,
    pub info: u32,
    /// Every selected check passed (exit code 0).
    pub ok: bool,
    pub checks: Vec<CheckResult>,
}

impl CheckReport {
    pub fn tally(&mut self) {
        let n = |s: Status| self.checks.iter().filter(|c| c.status == s).count() as u32;
        self.passed = n(Status::Pass);
        self.failed = n(Status::Fail);
        self.skipped = n(Status::Skip);
        self.info = n(Status::Info);
        self.ok = self.failed == 0;
    }

    pub fn get(&self, id: &str) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.id == id)
    }
}

/// The JSON Schema of the report, as committed in `schemas/check.schema.json`.
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(CheckReport)).expect("a schema serializes")
}

pub fn text(r: &CheckReport) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "squall check {} (MQTT {})", r.target, r.protocols.join(" and "));
    for c in &r.checks {
        let mark = match c.status {
            Status::Pass => "✓",
            Status::Fail => "✗",
            Status::Skip => "-",
            Status::Info => "i",
        };
        let name = match &c.protocol {
            Some(p) => format!("{} {}", if p == "5" { "v5" } else { "v3.1.1" }, c.check),
            None => c.check.clone(),
        };
        let _ = writeln!(o, "  {mark} {name:<28} {}", c.detail);
        if let Some(h) = &c.hint {
            let _ = writeln!(o, "      hint: {h}");
        }
    }
    let _ =
        writeln!(o, "{} passed, {} failed, {} skipped, {} reported", r.passed, r.failed, r.skipped, r.info);
    o
}

pub fn json(r: &CheckReport) -> String {
    serde_json::to_string_pretty(r).expect("a report serializes") + "\n"
}

/// YAML (serde_norway), one document, starting `---` so rounds of `--every` stream apart.
pub fn yaml(r: &CheckReport) -> String {
    let body = serde_norway::to_string(r).expect("a report serializes to YAML");
    format!("---\n{body}")
}

/// JUnit XML (written by `quick-junit`, which escapes and strips what XML cannot hold): one
/// suite, one test case per check (skipped and reported checks as skipped).
pub fn junit(r: &CheckReport) -> String {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let ms = |v: f64| std::time::Duration::from_secs_f64(v.max(0.0) / 1e3);
    let mut suite = TestSuite::new(format!("squall check {}", r.target));
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&r.started_at) {
        suite.set_timestamp(t);
    }
    suite.set_time(ms(r.checks.iter().map(|c| c.duration_ms).sum()));
    for c in &r.checks {
        let status = match c.status {
            Status::Pass => TestCaseStatus::success(),
            Status::Fail => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(match &c.hint {
                    Some(h) => format!("{} (hint: {h})", c.detail),
                    None => c.detail.clone(),
                });
                s
            }
            Status::Skip | Status::Info => {
                let mut s = TestCaseStatus::skipped();
                s.set_message(c.detail.clone());
                s
            }
        };
        let mut case = TestCase::new(c.id.clone(), status);
        case.set_classname("squall.check").set_time(ms(c.duration_ms));
        suite.add_test_case(case);
    }
    let mut report = Report::new("squall check");
    report.add_test_suite(suite);
    report.to_string().expect("a JUnit report serializes to a string")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> CheckReport {
        let mut r = CheckReport {
            schema_version: SCHEMA_VERSION,
            squall_version: "0".into(),
            target: "mqtt://h:1".into(),
            protocols: vec!["5".into()],
            started_at: "2026-01-01T00:00:00Z".into(),
            passed: 0,
            failed: 0,
            skipped: 0,
            info: 0,
            ok: false,
            checks: vec![
                CheckResult {
                    id: "tcp".into(),
                    check: "tcp".into(),
                    protocol: None,
                    status: Status::Pass,
                    duration_ms: 1.0,
                    detail: "ok".into(),
                    hint: None,
                    data: None,
                    cause: None,
                },
                CheckResult {
                    id: "v5.publish.qos1".into(),
                    check: "publish.qos1".into(),
                    protocol: Some("5".into()),
                    status: Status::Fail,
                    duration_ms: 2.0,
                    detail: "PUBACK <0x87>".into(),
                    hint: Some("check the ACL".into()),
                    data: Some(serde_json::json!({"code": 135})),
                    cause: Some(Cause::AclDenied),
                },
            ],
        };
        r.tally();
        r
    }

    /// What the hand-written writer got wrong: control characters (invalid in XML 1.0) and
    /// quotes in a broker's reason string or a check's detail. The XML parses back (with
    /// quick-junit's reader) and keeps the message, control characters dropped.
    #[test]
    fn junit_survives_whatever_a_broker_says() {
        let mut r = report();
        r.checks[1].detail = "it's \u{7}\u{1b}[31m <\"closed\"> & \u{0}gone".into();
        let j = junit(&r);
        let back = quick_junit::Report::deserialize_from_str(&j).expect("the JUnit XML parses");
        let case = &back.test_suites[0].test_cases[1];
        let quick_junit::TestCaseStatus::NonSuccess { message, .. } = &case.status else { panic!("{j}") };
        let m = message.as_ref().unwrap().as_str();
        assert!(m.starts_with("it's ") && m.contains("<\"closed\"> & gone"), "{m:?}");
        assert!(!m.contains('\u{7}') && !m.contains('\u{0}') && !m.contains('\u{1b}'), "{m:?}");
    }

    #[test]
    fn tally_and_renderings() {
        let r = report();
        assert_eq!((r.passed, r.failed, r.ok), (1, 1, false));
        let t = text(&r);
        assert!(t.contains("✗ v5 publish.qos1") && t.contains("hint: check the ACL"), "{t}");
        let j = junit(&r);
        assert!(j.contains("tests=\"2\"") && j.contains("failures=\"1\""), "{j}");
        assert!(j.contains("<failure message=\"PUBACK &lt;0x87&gt; (hint: check the ACL)\""), "{j}");
        let y = yaml(&r);
        let from_yaml: CheckReport = serde_norway::from_str(y.trim_start_matches("---\n")).unwrap();
        assert_eq!(from_yaml, r, "the YAML reads back as the report:\n{y}");
        assert!(y.starts_with("---\n") && y.contains("code: 135"), "{y}");
        let back: CheckReport = serde_json::from_str(&json(&r)).unwrap();
        assert_eq!(back, r);
    }
}
