//! Pass/fail rules: `e2e.p99 < 50ms`, `lost == 0`, `connect.errors == 0`.
//!
//! A rule names a metric, a comparison and a value. Latency metrics are
//! `<connect|subscribe|puback|pubcomp|e2e|lag>[.raw|.corrected].<p50|p90|p99|p999|…|min|mean|max|count>`
//! (corrected by default: it is the honest one) and take a value with a unit (`ns`, `us`/`µs`,
//! `ms`, `s`). Counts take plain numbers. Rules are parsed and checked against the known
//! names when the scenario loads; a rule whose metric has no data when the run ends fails.

use std::fmt;

use squall_proto::metrics::{Counters, Metric, Timing};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stat {
    Quantile(f64),
    Min,
    Mean,
    Max,
    Count,
}

/// What a rule measures.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricRef {
    Latency {
        metric: Metric,
        timing: Timing,
        stat: Stat,
        /// One scenario group's (`e2e{group=sensors}.p99`); `None`: the whole run's.
        group: Option<String>,
    },
    /// A count or rate by its report name (see [`is_count_name`]).
    Count(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Op {
    pub fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Gt => a > b,
            Op::Ge => a >= b,
            Op::Eq => a == b,
            Op::Ne => a != b,
        }
    }
}

/// A parsed rule. Latency values are in µs.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub expr: String,
    pub metric: MetricRef,
    pub op: Op,
    pub value: f64,
    /// Written with a trailing `abort`: checked every second during the run, and the first
    /// time it fails the run stops (k6's abortOnFail).
    pub abort: bool,
}

/// The word that marks a rule as one that ends the run the moment it fails.
const ABORT: &str = "abort";

/// The delivery ledger's counts (also by QoS: `lost.qos1`), settled at the end of a run.
const LEDGER_NAMES: &[&str] = &[
    "lost",
    "delivered",
    "expected",
    "duplicates",
    "out_of_order",
    "missed_offline",
    "session_lost",
    "refused",
    "phantom",
];

/// The will ledger's counts, as `wills.NAME`.
const WILL_NAMES: &[&str] =
    &["expected", "delivered", "missing", "duplicates", "unexpected", "allowed", "early", "unsettled"];

/// Counts and rates besides the ledgers' and every raw counter name.
const OTHER_COUNTS: &[&str] = &[
    "errors",
    "connect.errors",
    "published",
    "received",
    "publish.rate",
    "receive.rate",
    "agents_suspect",
    "missing",
    "capacity",
];

/// Whether `name` is a count or rate a rule may use by that name (raw counters aside).
fn is_count_name(name: &str) -> bool {
    LEDGER_NAMES.contains(&name)
        || OTHER_COUNTS.contains(&name)
        || name.strip_prefix("wills.").is_some_and(|w| WILL_NAMES.contains(&w))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ThresholdError {
    pub message: String,
    pub hint: Option<String>,
}

fn err(message: impl Into<String>, hint: impl Into<Option<String>>) -> ThresholdError {
    ThresholdError { message: message.into(), hint: hint.into() }
}

fn known_counts() -> String {
    let wills: Vec<String> = WILL_NAMES.iter().map(|w| format!("wills.{w}")).collect();
    let mut v: Vec<&str> = LEDGER_NAMES.iter().chain(OTHER_COUNTS).copied().collect();
    v.extend(wills.iter().map(String::as_str));
    v.push("lost.qos1 (any ledger count by QoS)");
    v.push("errors.<kind>");
    v.push("any counter, e.g. ack_timeouts");
    v.join(", ")
}

impl Threshold {
    pub fn parse(written: &str) -> Result<Threshold, ThresholdError> {
        let (expr, abort) = match written.trim_end().strip_suffix(ABORT) {
            Some(rest) if rest.ends_with(char::is_whitespace) => (rest.trim_end(), true),
            _ => (written, false),
        };
        let ops =
            [("<=", Op::Le), (">=", Op::Ge), ("==", Op::Eq), ("!=", Op::Ne), ("<", Op::Lt), (">", Op::Gt)];
        let (pos, len, op) = ops
            .iter()
            .filter_map(|(s, op)| expr.find(s).map(|p| (p, s.len(), *op)))
            .min_by_key(|(p, len, _)| (*p, usize::MAX - len))
            .ok_or_else(|| {
                err(
                    format!("`{expr}` has no comparison"),
                    "write `<metric> <op> <value>` with one of < <= > >= == !=, e.g. `e2e.p99 < 50ms`"
                        .to_string(),
                )
            })?;
        let name = expr[..pos].trim();
        let value = expr[pos + len..].trim();
        let metric = parse_metric(name)?;
        let value = match &metric {
            MetricRef::Latency { stat: Stat::Count, .. } | MetricRef::Count(_) => {
                value.parse::<f64>().map_err(|_| {
                    err(
                        format!("`{value}` is not a number"),
                        "counts and rates take plain numbers, e.g. `lost == 0`".to_string(),
                    )
                })?
            }
            MetricRef::Latency { .. } => parse_latency_us(value)?,
        };
        if abort && !metric.known_mid_run() {
            return Err(err(
                format!("`{}` is only known once the run has settled: it cannot end a run early", name),
                "an `abort` rule may use latencies and counts (errors, connect.errors, errors.<kind>, published, received, any counter); delivery counts, rates and agents_suspect are judged at the end".to_string(),
            ));
        }
        Ok(Threshold { expr: written.trim().to_string(), metric, op, value, abort })
    }
}

impl MetricRef {
    /// Whether the metric has a meaningful value while the run goes on (the delivery ledger
    /// settles at the end, rates need the whole window, tester health is judged at the end).
    pub fn known_mid_run(&self) -> bool {
        match self {
            MetricRef::Latency { .. } => true,
            MetricRef::Count(name) => {
                let base = name.split('.').next().unwrap_or("");
                !LEDGER_NAMES.contains(&base)
                    && base != "wills"
                    && !["publish.rate", "receive.rate", "agents_suspect", "capacity"]
                        .contains(&name.as_str())
            }
        }
    }

    /// Whether one step of a staged run or search can be judged on it: what is known mid-run,
    /// and the rates over the step.
    pub fn known_per_step(&self) -> bool {
        self.known_mid_run()
            || matches!(self, MetricRef::Count(name) if name == "publish.rate" || name == "receive.rate")
    }
}

fn parse_metric(written: &str) -> Result<MetricRef, ThresholdError> {
    // `metric{group=NAME}.stat`: the label comes out first (a group name may hold dots)
    let (name, group) = match (written.find('{'), written.find('}')) {
        (None, None) => (written.to_string(), None),
        (Some(open), Some(close)) if open < close => {
            let label = &written[open + 1..close];
            let Some(group) = label.strip_prefix("group=").filter(|g| !g.is_empty()) else {
                return Err(err(
                    format!("`{{{label}}}` in `{written}` is not a group label"),
                    "write `e2e{group=NAME}.p99`: the one label is a scenario group's name".to_string(),
                ));
            };
            (format!("{}{}", &written[..open], &written[close + 1..]), Some(group.to_string()))
        }
        _ => {
            return Err(err(
                format!("unbalanced braces in `{written}`"),
                "write `e2e{group=NAME}.p99`".to_string(),
            ));
        }
    };
    let name = name.as_str();
    let r = parse_unlabelled(name)?;
    match (r, group) {
        (MetricRef::Latency { metric, timing, stat, .. }, group) => {
            Ok(MetricRef::Latency { metric, timing, stat, group })
        }
        (r, None) => Ok(r),
        (MetricRef::Count(_), Some(_)) => Err(err(
            format!("`{written}`: only latencies are kept per group"),
            "counts are the whole run's; by group, use a latency such as `e2e{group=NAME}.count`".to_string(),
        )),
    }
}

fn parse_unlabelled(name: &str) -> Result<MetricRef, ThresholdError> {
    let parts: Vec<&str> = name.split('.').collect();
    if is_count_name(name) {
        return Ok(MetricRef::Count(name.to_string()));
    }
    if let Some(metric) = Metric::from_name(parts[0]) {
        let (timing, rest) = match parts.get(1) {
            Some(&"raw") => (Timing::Raw, &parts[2..]),
            Some(&"corrected") => (Timing::Corrected, &parts[2..]),
            _ => (if metric.raw_only() { Timing::Raw } else { Timing::Corrected }, &parts[1..]),
        };
        if metric.raw_only() && timing == Timing::Corrected {
            return Err(err(format!("`{}` has no corrected latency", parts[0]), None));
        }
        let stat = match rest {
            [s] => parse_stat(s).ok_or_else(|| {
                err(
                    format!("unknown statistic `{s}` in `{name}`"),
                    "use p50, p90, p99, p999, min, mean, max or count".to_string(),
                )
            })?,
            _ => {
                return Err(err(format!("`{name}` needs a statistic"), format!("e.g. `{}.p99`", parts[0])));
            }
        };
        return Ok(MetricRef::Latency { metric, timing, stat, group: None });
    }
    let base = parts[0];
    let ok = is_count_name(name)
        || Counters::NAMES.contains(&name)
        || (LEDGER_NAMES.contains(&base) && parts.len() == 2 && ["qos0", "qos1", "qos2"].contains(&parts[1]))
        || (base == "errors" && parts.len() == 2 && !parts[1].is_empty());
    if ok {
        Ok(MetricRef::Count(name.to_string()))
    } else {
        Err(err(
            format!("unknown metric `{name}`"),
            format!(
                "latencies: connect, subscribe, puback, pubcomp, e2e (+ .raw/.corrected) with .p99 etc.; counts: {}",
                known_counts()
            ),
        ))
    }
}

fn parse_stat(s: &str) -> Option<Stat> {
    match s {
        "min" => Some(Stat::Min),
        "mean" | "avg" => Some(Stat::Mean),
        "max" => Some(Stat::Max),
        "count" => Some(Stat::Count),
        _ => {
            let digits = s.strip_prefix('p')?;
            if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let q: f64 = format!("0.{digits}").parse().ok()?;
            (q > 0.0 && q < 1.0).then_some(Stat::Quantile(q))
        }
    }
}

/// `50ms` → 50000 (µs).
pub fn parse_latency_us(v: &str) -> Result<f64, ThresholdError> {
    let split = v.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| err(format!("`{v}` is not a duration"), "e.g. `50ms`, `1.5s`, `800us`".to_string()))?;
    let scale = match unit.trim() {
        "ns" => 1e-3,
        "us" | "µs" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "" => {
            return Err(err(
                format!("`{v}` has no unit"),
                format!("latencies need a unit: `{v}ms` or `{v}us`"),
            ));
        }
        other => return Err(err(format!("unknown unit `{other}`"), "use ns, us, ms or s".to_string())),
    };
    Ok(n * scale)
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
            Op::Ne => "!=",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_latency_and_count_rules() {
        let t = Threshold::parse("e2e.p99 < 50ms").unwrap();
        assert_eq!(
            t.metric,
            MetricRef::Latency {
                metric: Metric::E2e,
                timing: Timing::Corrected,
                stat: Stat::Quantile(0.99),
                group: None
            }
        );
        assert_eq!((t.op, t.value), (Op::Lt, 50_000.0));
        let t = Threshold::parse("puback.raw.p999<=1.5s").unwrap();
        assert!(
            matches!(t.metric, MetricRef::Latency { timing: Timing::Raw, stat: Stat::Quantile(q), .. } if (q - 0.999).abs() < 1e-12)
        );
        assert_eq!((t.op, t.value), (Op::Le, 1_500_000.0));
        assert_eq!(Threshold::parse("lost == 0").unwrap().metric, MetricRef::Count("lost".into()));
        assert!(Threshold::parse("connect.errors == 0").is_ok());
        assert!(Threshold::parse("lost.qos1 == 0").is_ok());
        assert!(Threshold::parse("errors.connect_refused == 0").is_ok());
        assert!(Threshold::parse("ack_timeouts == 0").is_ok());
        assert!(Threshold::parse("publish.rate >= 1000").is_ok());
        assert_eq!(Threshold::parse("e2e.count > 10").unwrap().value, 10.0);
    }

    #[test]
    fn latency_rules_may_name_a_group() {
        let t = Threshold::parse("e2e{group=sensors.eu}.raw.p99 < 20ms abort").unwrap();
        assert_eq!(
            t.metric,
            MetricRef::Latency {
                metric: Metric::E2e,
                timing: Timing::Raw,
                stat: Stat::Quantile(0.99),
                group: Some("sensors.eu".into())
            }
        );
        assert!(t.abort && t.value == 20_000.0);
        for (rule, says) in [
            ("e2e{grp=x}.p99 < 1ms", "not a group label"),
            ("e2e{group=}.p99 < 1ms", "not a group label"),
            ("e2e{group=x.p99 < 1ms", "unbalanced braces"),
            ("lost{group=x} == 0", "only latencies are kept per group"),
        ] {
            let e = Threshold::parse(rule).unwrap_err();
            assert!(e.message.contains(says), "{rule}: {}", e.message);
        }
    }

    #[test]
    fn a_trailing_abort_marks_a_rule_checked_during_the_run() {
        let t = Threshold::parse("errors < 1000 abort").unwrap();
        assert!(t.abort);
        assert_eq!((t.op, t.value), (Op::Lt, 1000.0));
        assert_eq!(t.expr, "errors < 1000 abort");
        let t = Threshold::parse("e2e.p99 < 2s  abort ").unwrap();
        assert!(t.abort && t.value == 2_000_000.0, "{t:?}");
        assert!(!Threshold::parse("errors < 1000").unwrap().abort);
        // only what is known mid-run may end a run
        for rule in [
            "lost == 0 abort",
            "lost.qos1 == 0 abort",
            "publish.rate > 10 abort",
            "agents_suspect == 0 abort",
        ] {
            let e = Threshold::parse(rule).unwrap_err();
            assert!(e.message.contains("cannot end a run early"), "{rule}: {e:?}");
        }
        assert!(Threshold::parse("errors.connect_refused == 0 abort").unwrap().abort);
        assert!(Threshold::parse("errors < 1000abort").is_err(), "the word stands apart");
    }

    #[test]
    fn rejects_unknown_names_missing_units_and_bad_syntax() {
        let e = Threshold::parse("e2e.p99 < 50").unwrap_err();
        assert!(e.message.contains("no unit"), "{e:?}");
        let e = Threshold::parse("latency.p99 < 5ms").unwrap_err();
        assert!(e.message.contains("unknown metric `latency.p99`"), "{e:?}");
        assert!(Threshold::parse("e2e < 5ms").unwrap_err().message.contains("needs a statistic"));
        assert!(Threshold::parse("e2e.p99").unwrap_err().message.contains("no comparison"));
        assert!(Threshold::parse("lost == none").is_err());
        assert!(Threshold::parse("subscribe.corrected.p99 < 1s").is_err());
        assert!(Threshold::parse("e2e.q99 < 1s").is_err());
    }
}
