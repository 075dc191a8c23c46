//! The report of a `squall device` run: JSON (schema: `squall init --schema device-report`),
//! text for the terminal, JUnit XML for CI.

use serde::Serialize;

use crate::run::{CaseResult, Verdict};

/// Bumped when a field changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct DeviceReport {
    pub schema_version: u32,
    pub squall_version: String,
    /// Where the endpoint listened.
    pub listen: Vec<String>,
    /// RFC 3339, when the first case started.
    pub started_at: String,
    pub passed: usize,
    /// Of them, passed with a warning.
    pub warnings: usize,
    pub failed: usize,
    pub timed_out: usize,
    /// Every case passed (a warning is a pass, as in Device Advisor).
    pub ok: bool,
    pub cases: Vec<CaseResult>,
}

impl DeviceReport {
    pub fn new(listen: Vec<String>, started_at: String, cases: Vec<CaseResult>) -> DeviceReport {
        let count = |v: Verdict| cases.iter().filter(|c| c.verdict == v).count();
        let (warnings, failed, timed_out) =
            (count(Verdict::PassWithWarning), count(Verdict::Fail), count(Verdict::Timeout));
        DeviceReport {
            schema_version: SCHEMA_VERSION,
            squall_version: env!("CARGO_PKG_VERSION").into(),
            listen,
            started_at,
            passed: count(Verdict::Pass) + warnings,
            warnings,
            failed,
            timed_out,
            ok: failed + timed_out == 0,
            cases,
        }
    }
}

pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(DeviceReport)).expect("a schema serializes")
}

fn mark(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "✓ pass",
        Verdict::PassWithWarning => "! pass with warning",
        Verdict::Fail => "✗ fail",
        Verdict::Timeout => "✗ timeout",
    }
}

/// A case's verdict in one line.
pub fn line(c: &CaseResult) -> String {
    format!("{:<20} {} ({}): {}", mark(c.verdict), c.name, c.id, c.why)
}

/// One line per case, then the tally.
pub fn text(r: &DeviceReport) -> String {
    let mut s = String::new();
    for c in &r.cases {
        s.push_str(&line(c));
        s.push('\n');
    }
    s.push_str(&format!(
        "{} of {} passed ({} with a warning), {} failed, {} timed out\n",
        r.passed,
        r.cases.len(),
        r.warnings,
        r.failed,
        r.timed_out
    ));
    s
}

/// JUnit XML: a failure for `fail`, an error of type `timeout` for `timeout`, a pass with a
/// warning as a pass whose system-out says the warning.
pub fn junit(r: &DeviceReport) -> String {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut suite = TestSuite::new("squall device");
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&r.started_at) {
        suite.set_timestamp(t);
    }
    suite.set_time(std::time::Duration::from_secs_f64(
        r.cases.iter().map(|c| c.duration_s).sum::<f64>().max(0.0),
    ));
    for c in &r.cases {
        let status = match c.verdict {
            Verdict::Pass | Verdict::PassWithWarning => TestCaseStatus::success(),
            Verdict::Fail | Verdict::Timeout => {
                let kind =
                    if c.verdict == Verdict::Fail { NonSuccessKind::Failure } else { NonSuccessKind::Error };
                let mut s = TestCaseStatus::non_success(kind);
                s.set_message(c.why.clone());
                s.set_type(if c.verdict == Verdict::Fail { "fail" } else { "timeout" });
                s
            }
        };
        let mut case = TestCase::new(c.name.clone(), status);
        case.set_classname(format!("squall.device.{}", c.id))
            .set_time(std::time::Duration::from_secs_f64(c.duration_s.max(0.0)));
        if c.verdict == Verdict::PassWithWarning {
            case.set_system_out(format!("warning: {}", c.why));
        }
        suite.add_test_case(case);
    }
    let mut report = Report::new("squall device");
    report.add_test_suite(suite);
    report.to_string().expect("a JUnit report serializes to a string")
}
