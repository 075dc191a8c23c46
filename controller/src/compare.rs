//! `squall compare`: runs of different broker configurations side by side, by latency
//! percentile, throughput, delivery and errors, with a verdict per figure and CI gates.
//!
//! A pure function of the reports it is given. Each side is one configuration: one run, or
//! several runs of it (then each figure is their median, and their spread is part of the
//! noise). The first side is the base every other side is held against.
//!
//! Noise: a difference counts (better or worse) only when it is larger than the noise band:
//! the largest of 10 % of the base figure, 100 µs, and the spread (max − min) of the runs of
//! either side. With one run per side only the fixed parts apply; several runs per side let
//! the band follow what the machine actually did. A statistic with fewer than 10 samples
//! beyond it in some run (the max always; p99.99 below 100,000 samples) rests on a handful
//! of values: its band is the base figure itself (only a doubling, or a halving, counts).
//! End-to-end latency, kept per interval too, adds half the interquartile range of its
//! per-interval figures: what one run says of its own noise. And no band is narrower than the
//! tester's own resolution: the largest lag p99 (how late it sent) of the runs compared.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::report::{Percentiles, Report};

/// A difference smaller than this share of the base figure is noise.
pub const NOISE_SHARE: f64 = 0.10;
/// … or smaller than this many µs (loopback latencies of a few hundred µs move by this much).
pub const NOISE_FLOOR_US: f64 = 100.0;
/// A statistic needs this many samples beyond it to be judged with the ordinary band.
pub const TAIL_SAMPLES: f64 = 10.0;

/// Offered or achieved throughput this far apart means the runs carried different loads.
pub const LOAD_TOLERANCE: f64 = 0.05;

/// A capacity search's answer, as a gate and a total names it (msg/s of the highest step that
/// held its SLO; higher is better).
pub const CAPACITY: &str = "capacity";

/// A run's capacity, msg/s, if it searched and some step held.
fn capacity_of(r: &Report) -> Option<f64> {
    r.capacity.as_ref()?.found.as_ref().map(|f| f.offered_rate)
}

/// The statistics compared, as named in reports and gates.
pub const STATS: [&str; 6] = ["p50", "p90", "p99", "p999", "p9999", "max"];

/// One configuration: its label (the files it came from) and its runs.
pub struct Side {
    pub label: String,
    pub runs: Vec<Report>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Better,
    Worse,
    WithinNoise,
    /// One side has no such figure.
    NoData,
}

impl Verdict {
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Better => "better",
            Verdict::Worse => "worse",
            Verdict::WithinNoise => "within noise",
            Verdict::NoData => "no data",
        }
    }
}

/// One statistic of one latency metric across the sides.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub metric: String,
    /// "corrected" or "raw".
    pub timing: String,
    pub stat: String,
    /// Per side: the figure (µs; the median of its runs).
    pub values: Vec<Option<f64>>,
    /// Per side: the spread of its runs (max − min, µs; 0 with one run).
    pub spread: Vec<f64>,
    /// Per side after the base: the verdict against the base.
    pub verdicts: Vec<Verdict>,
}

/// Throughput, delivery and errors: figures shown side by side, not judged.
#[derive(Debug, Clone, Serialize)]
pub struct Total {
    pub name: String,
    pub values: Vec<f64>,
}

/// A `--fail-if-worse` gate and what it found.
#[derive(Debug, Clone, Serialize)]
pub struct GateResult {
    pub gate: String,
    /// Per side after the base: how much worse (+) or better (−) it is, percent of the base.
    pub change_pct: Vec<Option<f64>>,
    pub tripped: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub sides: Vec<String>,
    pub runs: Vec<usize>,
    /// What differs in scenario or environment from the base (and within a side).
    pub differences: Vec<String>,
    /// Set when offered or achieved throughput differ: latencies at different loads do not
    /// compare.
    pub load_warning: Option<String>,
    pub noise: String,
    pub rows: Vec<Row>,
    pub totals: Vec<Total>,
    pub gates: Vec<GateResult>,
}

/// `e2e.p99:10%` (or `e2e.raw.p99:10%`): fail when a side is worse than the base by more
/// than the percentage.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    pub written: String,
    pub metric: String,
    pub timing: Option<String>,
    pub stat: String,
    pub pct: f64,
}

impl Gate {
    pub fn parse(s: &str) -> Result<Gate, String> {
        let hint = "write METRIC[.raw|.corrected].STAT:PERCENT, e.g. `e2e.p99:10%`, or `capacity:PERCENT`";
        let (path, pct) = s.rsplit_once(':').ok_or_else(|| format!("`{s}` has no `:PERCENT`; {hint}"))?;
        let pct: f64 = pct
            .trim()
            .trim_end_matches('%')
            .parse()
            .ok()
            .filter(|p: &f64| p.is_finite() && *p >= 0.0)
            .ok_or_else(|| format!("`{s}`: the percentage must be a number ≥ 0; {hint}"))?;
        if path.trim() == CAPACITY {
            // a capacity search's answer: worse is lower
            return Ok(Gate {
                written: s.to_string(),
                metric: CAPACITY.into(),
                timing: None,
                stat: String::new(),
                pct,
            });
        }
        let parts: Vec<&str> = path.split('.').collect();
        let (metric, timing, stat) = match parts.as_slice() {
            [m, st] => (*m, None, *st),
            [m, t @ ("raw" | "corrected"), st] => (*m, Some(t.to_string()), *st),
            _ => return Err(format!("`{s}`: {hint}")),
        };
        if squall_proto::metrics::Metric::from_name(metric).is_none() {
            return Err(format!("`{s}`: unknown metric `{metric}`; {hint}"));
        }
        if !STATS.contains(&stat) {
            return Err(format!("`{s}`: unknown statistic `{stat}`, use one of {}", STATS.join(", ")));
        }
        Ok(Gate { written: s.to_string(), metric: metric.into(), timing, stat: stat.into(), pct })
    }
}

fn stat_of(p: &Percentiles, stat: &str) -> f64 {
    (match stat {
        "p50" => p.p50_us,
        "p90" => p.p90_us,
        "p99" => p.p99_us,
        "p999" => p.p999_us,
        "p9999" => p.p9999_us,
        _ => p.max_us,
    }) as f64
}

/// The share of samples at or below each statistic.
fn quantile_of(stat: &str) -> f64 {
    match stat {
        "p50" => 0.5,
        "p90" => 0.9,
        "p99" => 0.99,
        "p999" => 0.999,
        "p9999" => 0.9999,
        _ => 1.0,
    }
}

/// The fewest samples any run of `side` has for `metric` at `timing`.
fn fewest(side: &Side, metric: &str, timing: &str) -> Option<u64> {
    side.runs.iter().filter_map(|r| percentiles_of(r, metric, timing)).map(|p| p.count).min()
}

/// A run's percentiles of `metric` at `timing` ("raw" or "corrected"), if it has them.
fn percentiles_of<'r>(r: &'r Report, metric: &str, timing: &str) -> Option<&'r Percentiles> {
    let l = r.latency.get(metric)?;
    if timing == "raw" { l.raw.as_ref() } else { l.corrected.as_ref() }
}

/// End-to-end latency is also kept per interval (p50, p99, max of each second, corrected):
/// within one run they move by this much (half the interquartile range of the per-interval
/// figures), which one run per side can tell of its own noise.
fn interval_noise(side: &Side, metric: &str, timing: &str, stat: &str) -> f64 {
    if metric != "e2e" || timing != "corrected" {
        return 0.0;
    }
    let pick = |r: &crate::aggregate::IntervalRow| match stat {
        "p50" => r.e2e_p50_us,
        "p90" | "p99" => r.e2e_p99_us,
        _ => r.e2e_max_us,
    };
    let mut v: Vec<f64> =
        side.runs.iter().flat_map(|r| r.timeline.iter()).filter_map(|r| pick(r).map(|x| x as f64)).collect();
    if v.len() < 4 {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (q(0.75) - q(0.25)) / 2.0
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// The figure of `stat` of `metric` (at `timing`) in each run of a side that has it.
fn figures(side: &Side, metric: &str, timing: &str, stat: &str) -> Vec<f64> {
    side.runs
        .iter()
        .filter_map(|r| percentiles_of(r, metric, timing))
        .filter(|p| p.count > 0)
        .map(|p| stat_of(p, stat))
        .collect()
}

fn judge(base: Option<f64>, other: Option<f64>, band: f64) -> Verdict {
    match (base, other) {
        (Some(b), Some(o)) if (o - b).abs() <= band => Verdict::WithinNoise,
        (Some(b), Some(o)) if o < b => Verdict::Better,
        (Some(_), Some(_)) => Verdict::Worse,
        _ => Verdict::NoData,
    }
}

/// What differs between two runs' scenario and environment, said for a reader.
fn differences(base: &Report, other: &Report, label: &str) -> Vec<String> {
    let mut d = Vec::new();
    let mut diff = |what: &str, a: String, b: String| {
        if a != b {
            d.push(format!("{label}: {what} {a} → {b}"));
        }
    };
    diff("scenario", base.scenario.clone(), other.scenario.clone());
    diff("squall version", base.squall_version.clone(), other.squall_version.clone());
    diff("targets", base.targets.join(", "), other.targets.join(", "));
    diff("embedded broker", base.embedded_broker.to_string(), other.embedded_broker.to_string());
    diff("agents", base.agents.to_string(), other.agents.to_string());
    diff("clients", base.clients.to_string(), other.clients.to_string());
    let labels = |r: &Report| r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
    diff("labels", labels(base), labels(other));
    if (base.publish_window_s - other.publish_window_s).abs() > 0.01 * base.publish_window_s.max(1e-9) {
        diff(
            "publish window",
            format!("{:.1}s", base.publish_window_s),
            format!("{:.1}s", other.publish_window_s),
        );
    }
    let groups = |r: &Report| -> Vec<String> {
        r.groups
            .iter()
            .map(|g| {
                format!(
                    "{} ({} × {}{}{})",
                    g.name,
                    g.clients,
                    g.protocol,
                    g.publishes.as_ref().map(|p| format!(", publishes {p}")).unwrap_or_default(),
                    g.subscribes.as_ref().map(|s| format!(", subscribes {s}")).unwrap_or_default()
                )
            })
            .collect()
    };
    let (ga, gb) = (groups(base), groups(other));
    for g in gb.iter().filter(|g| !ga.contains(g)) {
        d.push(format!("{label}: group {g} (not in the base)"));
    }
    for g in ga.iter().filter(|g| !gb.contains(g)) {
        d.push(format!("{label}: no group {g} (in the base)"));
    }
    d
}

/// Compares `sides` (the first is the base), with `gates`.
pub fn compare(sides: &[Side], gates: &[Gate]) -> Comparison {
    let base = &sides[0];
    let mut diffs = Vec::new();
    for s in sides {
        // runs of one side are meant to be the same configuration
        for r in &s.runs[1..] {
            diffs.extend(differences(&s.runs[0], r, &format!("within {}", s.label)));
        }
    }
    for s in &sides[1..] {
        diffs.extend(differences(&base.runs[0], &s.runs[0], &s.label));
    }

    // the load each carried
    let rate = |s: &Side, f: fn(&Report) -> f64| median(s.runs.iter().map(f).collect()).unwrap_or(0.0);
    let loads: [(&str, fn(&Report) -> f64); 3] = [
        ("offered", |r| r.rates.offered_per_s),
        ("published", |r| r.rates.publish_per_s),
        ("received", |r| r.rates.receive_per_s),
    ];
    let mut load = Vec::new();
    for (name, f) in loads {
        let b = rate(base, f);
        for s in &sides[1..] {
            let o = rate(s, f);
            if (o - b).abs() > LOAD_TOLERANCE * b.max(o).max(1e-9) {
                load.push(format!("{name} {b:.1}/s in {} against {o:.1}/s in {}", base.label, s.label));
            }
        }
    }
    let searches = sides.iter().flat_map(|s| s.runs.iter()).all(|r| r.capacity.is_some());
    let load_warning = if searches {
        // each search stepped through loads of its own choosing: by design not the same
        Some(
            "capacity searches: each run stepped through loads of its own choosing, so its whole-run latencies mix every step and do not compare; compare `capacity` (and each run's steps)".to_string(),
        )
    } else {
        (!load.is_empty()).then(|| {
            format!(
                "the runs did not carry the same load ({}): latencies at different loads do not compare",
                load.join("; ")
            )
        })
    };

    let several = sides.iter().all(|s| s.runs.len() > 1);
    let noise = if several {
        format!(
            "a difference counts past the largest of {:.0} % of the base, {NOISE_FLOOR_US:.0} µs, the tester's own lag p99, the spread of either side's runs and (e2e) half the interquartile range of its per-second figures; a tail with fewer than 10 samples beyond it (the max always) only past a doubling or a halving",
            NOISE_SHARE * 100.0
        )
    } else {
        format!(
            "one run on a side: a difference counts past the largest of {:.0} % of the base, {NOISE_FLOOR_US:.0} µs, the tester's own lag p99 and (e2e) half the interquartile range of its per-second figures (a tail with fewer than 10 samples beyond it, the max always, only past a doubling or a halving); give several runs per side (a1.json,a2.json) to judge noise from their spread",
            NOISE_SHARE * 100.0
        )
    };

    // every latency metric any run has, at the timing reports lead with
    let metrics: BTreeSet<String> =
        sides.iter().flat_map(|s| s.runs.iter()).flat_map(|r| r.latency.keys().cloned()).collect();
    // the tester cannot tell apart what differs by less than its own lateness: the largest
    // lag p99 of the runs compared
    let resolution = sides
        .iter()
        .flat_map(|s| s.runs.iter())
        .filter_map(|r| r.latency.get("lag").and_then(|l| l.raw.as_ref()).map(|p| p.p99_us as f64))
        .fold(0.0, f64::max);
    let mut rows = Vec::new();
    for m in &metrics {
        let corrected = sides
            .iter()
            .flat_map(|s| s.runs.iter())
            .any(|r| r.latency.get(m).is_some_and(|l| l.corrected.is_some()));
        let timing = if corrected { "corrected" } else { "raw" };
        for stat in STATS {
            let per: Vec<Vec<f64>> = sides.iter().map(|s| figures(s, m, timing, stat)).collect();
            let values: Vec<Option<f64>> = per.iter().map(|v| median(v.clone())).collect();
            let spread: Vec<f64> = per
                .iter()
                .map(|v| {
                    let (lo, hi) =
                        v.iter().fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
                    if v.len() > 1 { hi - lo } else { 0.0 }
                })
                .collect();
            let base_fig = values[0].unwrap_or(0.0);
            let verdicts = (1..sides.len())
                .map(|k| {
                    let mut band = (base_fig * NOISE_SHARE)
                        .max(NOISE_FLOOR_US)
                        .max(spread[0])
                        .max(spread[k])
                        .max(interval_noise(&sides[0], m, timing, stat))
                        .max(interval_noise(&sides[k], m, timing, stat))
                        .max(resolution);
                    // a tail resting on a handful of samples moves a lot by chance
                    let samples = fewest(&sides[0], m, timing).min(fewest(&sides[k], m, timing)).unwrap_or(0);
                    if (samples as f64) * (1.0 - quantile_of(stat)) < TAIL_SAMPLES {
                        band = band.max(base_fig);
                    }
                    judge(values[0], values[k], band)
                })
                .collect();
            rows.push(Row {
                metric: m.clone(),
                timing: timing.into(),
                stat: stat.into(),
                values,
                spread,
                verdicts,
            });
        }
    }

    let total = |name: &str, f: &dyn Fn(&Report) -> f64| Total {
        name: name.to_string(),
        values: sides.iter().map(|s| median(s.runs.iter().map(f).collect()).unwrap_or(0.0)).collect(),
    };
    let counter = |r: &Report, k: &str| r.counters.get(k).copied().unwrap_or(0) as f64;
    let mut totals = Vec::new();
    if sides.iter().flat_map(|s| s.runs.iter()).any(|r| r.capacity.is_some()) {
        totals.push(total("capacity msg/s", &|r| capacity_of(r).unwrap_or(0.0)));
    }
    totals.extend([
        total("offered/s", &|r| r.rates.offered_per_s),
        total("published/s", &|r| r.rates.publish_per_s),
        total("received/s", &|r| r.rates.receive_per_s),
        total("delivered", &|r| r.delivery.all.delivered as f64),
        total("lost", &|r| r.delivery.all.lost as f64),
        total("duplicates", &|r| r.delivery.all.duplicates as f64),
        total("errors", &|r| r.errors.iter().map(|e| e.count).sum::<u64>() as f64),
        total("connect failures", &|r| counter(r, "connect_failures")),
        total("tester CPU s", &|r| counter(r, "agent_cpu_us") / 1e6),
        total("broker CPU s", &|r| r.broker_process.as_ref().map_or(0.0, |b| b.cpu_s)),
        total("broker RSS peak KiB", &|r| r.broker_process.as_ref().map_or(0.0, |b| b.rss_peak_kib as f64)),
        total("broker $SYS heap peak B", &|r| {
            r.broker_sys.as_ref().and_then(|b| b.heap_peak_bytes).unwrap_or(0.0)
        }),
        total("broker $SYS publishes in", &|r| {
            r.broker_sys.as_ref().and_then(|b| b.publish_received).unwrap_or(0.0)
        }),
    ]);

    let gates = gates
        .iter()
        .map(|g| {
            // each side's figure, and which way is worse: a latency up, a capacity down
            let (per, worse_up): (Vec<Option<f64>>, bool) = if g.metric == CAPACITY {
                (
                    sides.iter().map(|s| median(s.runs.iter().filter_map(capacity_of).collect())).collect(),
                    false,
                )
            } else {
                let timing = g.timing.clone().unwrap_or_else(|| {
                    rows.iter()
                        .find(|r| r.metric == g.metric)
                        .map_or("corrected".into(), |r| r.timing.clone())
                });
                (sides.iter().map(|s| median(figures(s, &g.metric, &timing, &g.stat))).collect(), true)
            };
            // how much worse than the base, percent (negative: better)
            let change_pct: Vec<Option<f64>> = per[1..]
                .iter()
                .map(|o| match (per[0], o) {
                    (Some(b), Some(o)) if b > 0.0 => Some(if worse_up { o - b } else { b - o } / b * 100.0),
                    _ => None,
                })
                .collect();
            // a side without the figure trips it: a gate must not pass on missing data
            let tripped = change_pct.iter().any(|c| c.is_none_or(|c| c > g.pct));
            GateResult { gate: g.written.clone(), change_pct, tripped }
        })
        .collect();

    Comparison {
        sides: sides.iter().map(|s| s.label.clone()).collect(),
        runs: sides.iter().map(|s| s.runs.len()).collect(),
        differences: diffs,
        load_warning,
        noise,
        rows,
        totals,
        gates,
    }
}

/// The comparison for a terminal.
pub fn render(c: &Comparison) -> String {
    use std::fmt::Write;
    let us = |v: Option<f64>| v.map_or("-".to_string(), crate::report::text::fmt_us);
    let mut o = String::new();
    let sides: Vec<String> = c
        .sides
        .iter()
        .zip(&c.runs)
        .map(|(s, n)| format!("{s} ({n} run{})", if *n == 1 { "" } else { "s" }))
        .collect();
    let _ = writeln!(o, "\nsquall compare · base: {}", sides.join(" · against: "));
    if !c.differences.is_empty() {
        let _ = writeln!(o, "\ndifferences in scenario or environment");
        for d in &c.differences {
            let _ = writeln!(o, "  {d}");
        }
    }
    if let Some(w) = &c.load_warning {
        let _ = writeln!(o, "\n!! WARNING: {w}");
    }
    let _ = writeln!(o, "\nnoise: {}", c.noise);
    let width = 12;
    let mut metric = String::new();
    for r in &c.rows {
        if r.values.iter().all(Option::is_none) {
            continue;
        }
        if r.metric != metric {
            metric = r.metric.clone();
            let _ = write!(o, "\n  {:<22}", format!("{} ({})", r.metric, r.timing));
            for s in &c.sides {
                let _ = write!(o, " {:>width$}", truncate(s, width));
            }
            let _ = writeln!(o, "   Δ against the base");
        }
        let _ = write!(o, "  {:<22}", r.stat);
        for v in &r.values {
            let _ = write!(o, " {:>width$}", us(*v));
        }
        let judged: Vec<String> = r
            .verdicts
            .iter()
            .zip(&r.values[1..])
            .map(|(v, x)| match (r.values[0], x) {
                (Some(b), Some(x)) if b > 0.0 => format!("{} ×{:.2} {}", signed_us(x - b), x / b, v.word()),
                _ => v.word().to_string(),
            })
            .collect();
        let _ = writeln!(o, "   {}", judged.join(" · "));
    }
    let _ = write!(o, "\n  {:<22}", "throughput, delivery");
    for s in &c.sides {
        let _ = write!(o, " {:>width$}", truncate(s, width));
    }
    let _ = writeln!(o);
    for t in &c.totals {
        let _ = write!(o, "  {:<22}", t.name);
        for v in &t.values {
            let shown = if v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v:.1}") };
            let _ = write!(o, " {shown:>width$}");
        }
        let _ = writeln!(o);
    }
    if !c.gates.is_empty() {
        let _ = writeln!(o, "\ngates");
        for g in &c.gates {
            let changes: Vec<String> =
                g.change_pct.iter().map(|p| p.map_or("no data".into(), |p| format!("{p:+.1} %"))).collect();
            let _ =
                writeln!(o, "  {} {}: {}", if g.tripped { "✗" } else { "✓" }, g.gate, changes.join(" · "));
        }
    }
    o
}

/// The comparison as one self-contained HTML file: per metric, the percentile curves of every
/// side on one plot (medians of each side's runs), then the table of verdicts.
pub fn render_html(c: &Comparison) -> String {
    use std::fmt::Write;
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let mut o = String::from(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>squall compare</title><style>body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; } table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; } td:first-child { text-align: left; } figure { display: inline-block; margin: 8px 16px 8px 0; } figcaption { font-weight: 600; }</style></head><body>",
    );
    let _ = write!(
        o,
        "<h1>squall compare</h1><p>Base: {}. Against: {}.</p>",
        esc(&c.sides[0]),
        esc(&c.sides[1..].join(", "))
    );
    for d in &c.differences {
        let _ = write!(o, "<p>{}</p>", esc(d));
    }
    if let Some(w) = &c.load_warning {
        let _ = write!(o, "<p><strong>WARNING: {}</strong></p>", esc(w));
    }
    let _ = write!(o, "<p>Noise: {}</p>", esc(&c.noise));
    let metrics: Vec<&str> = {
        let mut v: Vec<&str> = c.rows.iter().map(|r| r.metric.as_str()).collect();
        v.dedup();
        v
    };
    for m in metrics {
        let rows: Vec<&Row> = c.rows.iter().filter(|r| r.metric == m).collect();
        let series: Vec<(String, &str, Vec<(f64, f64)>)> = c
            .sides
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let pts: Vec<(f64, f64)> = rows
                    .iter()
                    .filter_map(|r| {
                        // the max is drawn one decade past p99.99, as in the report's plots
                        let p = quantile_of(&r.stat).min(0.99999);
                        r.values[k].map(|v| (p, v))
                    })
                    .collect();
                (s.clone(), crate::report::html::PALETTE[k % 6], pts)
            })
            .filter(|s| !s.2.is_empty())
            .collect();
        let timing = rows.first().map_or("", |r| r.timing.as_str());
        crate::report::html::plot_percentiles(&mut o, &format!("{m} ({timing})"), &series);
    }
    let _ = write!(o, "<pre>{}</pre></body></html>\n", esc(&render(c)));
    o
}

fn signed_us(d: f64) -> String {
    let s = crate::report::text::fmt_us(d.abs());
    if d < 0.0 { format!("−{s}") } else { format!("+{s}") }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("…{}", s.chars().rev().take(n - 1).collect::<Vec<_>>().into_iter().rev().collect::<String>())
    }
}
