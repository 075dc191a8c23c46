//! The report as one self-contained HTML file: opens offline, no script, plots drawn here as
//! inline SVG. Percentile distributions on the HdrHistogram "1/(1−p)" axis (corrected and raw
//! on one plot), time series of the run, then the ledger and the per-agent and per-group tables.

use std::fmt::Write;

use super::text::{count, delivery_cells, fmt_us, latency_rows, percentile_cells, wills_sentence};

/// Table cells of `cells`.
fn tds<const N: usize>(cells: [String; N]) -> String {
    cells.iter().map(|c| format!("<td>{}</td>", esc(c))).collect()
}
use super::{Percentiles, Report, Status};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const W: f64 = 560.0;
const H: f64 = 260.0;
const LEFT: f64 = 64.0;
const BOTTOM: f64 = 36.0;
const TOP: f64 = 12.0;
const RIGHT: f64 = 16.0;

/// The percentile points a report keeps, as (p, µs).
fn points(p: &Percentiles) -> Vec<(f64, f64)> {
    vec![
        (0.0, p.min_us as f64),
        (0.5, p.p50_us as f64),
        (0.9, p.p90_us as f64),
        (0.99, p.p99_us as f64),
        (0.999, p.p999_us as f64),
        (0.9999, p.p9999_us as f64),
        // the max sits one decade past p99.99 on this axis
        (0.99999, p.max_us as f64),
    ]
}

/// x of percentile p: log10(1/(1−p)), 0 … 5.
fn px(p: f64) -> f64 {
    (1.0 / (1.0 - p).max(1e-5)).log10()
}

/// A percentile-distribution plot of one metric: corrected and raw lines.
fn percentile_plot(o: &mut String, name: &str, corrected: Option<&Percentiles>, raw: Option<&Percentiles>) {
    let series: Vec<(String, &str, Vec<(f64, f64)>)> =
        [("corrected", "#d62728", corrected), ("raw", "#1f77b4", raw)]
            .into_iter()
            .filter_map(|(l, c, p)| p.filter(|p| p.count > 0).map(|p| (l.to_string(), c, points(p))))
            .collect();
    plot_percentiles(o, name, &series);
}

/// Colors for the lines of several runs on one plot.
pub(crate) const PALETTE: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];

/// Lines of (percentile, µs) points, each labelled and colored, on the 1/(1−p) axis.
pub(crate) fn plot_percentiles(o: &mut String, name: &str, series: &[(String, &str, Vec<(f64, f64)>)]) {
    if series.is_empty() {
        return;
    }
    let ymax = series.iter().flat_map(|s| s.2.iter().map(|p| p.1)).fold(1.0, f64::max) * 1.1;
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let x = |p: f64| LEFT + px(p) / 5.0 * pw;
    let y = |v: f64| TOP + ph - v / ymax * ph;
    let _ = write!(
        o,
        r#"<figure><figcaption>{} — latency by percentile</figcaption><svg class="plot" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{} latency by percentile">"#,
        esc(name),
        esc(name)
    );
    let _ = write!(
        o,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#999"/>"##
    );
    for (p, label) in
        [(0.0, "0%"), (0.9, "90%"), (0.99, "99%"), (0.999, "99.9%"), (0.9999, "99.99%"), (0.99999, "max")]
    {
        let gx = x(p);
        let _ = write!(
            o,
            r##"<line x1="{gx:.1}" y1="{TOP}" x2="{gx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{gx:.1}" y="{:.1}" font-size="11" text-anchor="middle">{label}</text>"##,
            TOP + ph,
            H - 18.0
        );
    }
    for k in 0..=4 {
        let v = ymax * k as f64 / 4.0;
        let gy = y(v);
        let _ = write!(
            o,
            r##"<line x1="{LEFT}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 4.0,
            gy + 4.0,
            fmt_us(v)
        );
    }
    for (i, (label, color, pts)) in series.iter().enumerate() {
        let path: Vec<String> = pts.iter().map(|(p, v)| format!("{:.1},{:.1}", x(*p), y(*v))).collect();
        let _ = write!(
            o,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2.5" points="{}"/>"#,
            path.join(" ")
        );
        for (p, v) in pts {
            let _ = write!(o, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#, x(*p), y(*v));
        }
        let _ = write!(
            o,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" fill="{color}">{label}</text>"#,
            LEFT + 8.0,
            TOP + 16.0 + 14.0 * i as f64
        );
    }
    let _ = write!(o, "</svg></figure>");
}

/// A count per row as a rate: each row's count over the time since the row before.
fn per_second(
    tl: &[crate::aggregate::IntervalRow],
    f: impl Fn(&crate::aggregate::IntervalRow) -> u64,
) -> Vec<(f64, f64)> {
    let mut prev = 0.0;
    tl.iter()
        .map(|row| {
            let span = (row.t_s - prev).max(1e-3);
            prev = row.t_s;
            (row.t_s, f(row) as f64 / span)
        })
        .collect()
}

/// One line of a plot: its label, its color and its (x, y) points.
type Line<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// A time series plot: one or more lines over the run's seconds.
fn series_plot(o: &mut String, title: &str, unit_us: bool, lines: &[Line<'_>]) {
    let x_label = |t: f64, tmax: f64| if tmax < 20.0 { format!("{t:.1}s") } else { format!("{t:.0}s") };
    xy_plot(o, title, unit_us, x_label, lines);
}

/// Lines of (x, y) points from 0, x labelled by `x_label(x, xmax)`, y in µs or plain counts.
fn xy_plot(
    o: &mut String,
    title: &str,
    unit_us: bool,
    x_label: impl Fn(f64, f64) -> String,
    lines: &[Line<'_>],
) {
    let all: Vec<(f64, f64)> = lines.iter().flat_map(|l| l.2.iter().copied()).collect();
    if all.len() < 2 {
        return;
    }
    let tmax = all.iter().map(|p| p.0).fold(1e-9, f64::max);
    let ymax = all.iter().map(|p| p.1).fold(1e-9, f64::max) * 1.1;
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let x = |t: f64| LEFT + t / tmax * pw;
    let y = |v: f64| TOP + ph - v / ymax * ph;
    let _ = write!(
        o,
        r##"<figure><figcaption>{}</figcaption><svg class="plot" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{}"><rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#999"/>"##,
        esc(title),
        esc(title)
    );
    for k in 0..=4 {
        let v = ymax * k as f64 / 4.0;
        let label = if unit_us { fmt_us(v) } else { count(v.round() as u64) };
        let _ = write!(
            o,
            r##"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{label}</text>"##,
            y(v),
            LEFT + pw,
            y(v),
            LEFT - 4.0,
            y(v) + 4.0
        );
        let t = tmax * k as f64 / 4.0;
        let t_label = x_label(t, tmax);
        // the last label ends at the plot's edge rather than running past it
        let anchor = if k == 4 { "end" } else { "middle" };
        let _ = write!(
            o,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="{anchor}">{t_label}</text>"#,
            x(t),
            H - 18.0
        );
    }
    for (i, (label, color, pts)) in lines.iter().enumerate() {
        if pts.is_empty() {
            continue;
        }
        let path: Vec<String> = pts.iter().map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v))).collect();
        let _ = write!(
            o,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        let _ = write!(
            o,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" fill="{color}">{label}</text>"#,
            LEFT + 8.0,
            TOP + 16.0 + 14.0 * i as f64
        );
    }
    let _ = write!(o, "</svg></figure>");
}

/// Stages (or a search's steps): latency and throughput against the offered rate, one point
/// per stage in rate order (a capacity curve), and their table.
fn stages(o: &mut String, r: &Report) {
    if r.stages.is_empty() {
        return;
    }
    let kind = if r.capacity.is_some() { "Capacity search" } else { "Stages" };
    let _ = write!(o, "<h2>{kind}</h2>");
    if let Some(c) = &r.capacity {
        let _ = write!(o, "<p>{}</p>", esc(&super::text::capacity_sentence(c)));
    }
    let mut by_rate: Vec<&super::StageReport> = r.stages.iter().filter(|s| s.measured_s > 0.0).collect();
    by_rate.sort_by(|a, b| a.offered_rate.total_cmp(&b.offered_rate));
    let e2e = |f: fn(&Percentiles) -> u64| -> Vec<(f64, f64)> {
        by_rate
            .iter()
            .filter_map(|s| {
                let l = s.latency.get("e2e")?;
                let p = l.corrected.as_ref().or(l.raw.as_ref())?;
                Some((s.offered_rate, f(p) as f64))
            })
            .collect()
    };
    let rate = |x: f64, _: f64| format!("{}/s", count(x.round() as u64));
    xy_plot(
        o,
        "End-to-end latency by offered rate (corrected)",
        true,
        rate,
        &[
            ("p50", "#1f77b4", e2e(|p| p.p50_us)),
            ("p99", "#d62728", e2e(|p| p.p99_us)),
            ("p99.9", "#9467bd", e2e(|p| p.p999_us)),
        ],
    );
    xy_plot(
        o,
        "Received against offered, msg/s",
        false,
        rate,
        &[
            ("offered", "#999999", by_rate.iter().map(|s| (s.offered_rate, s.offered_rate)).collect()),
            ("received", "#ff7f0e", by_rate.iter().map(|s| (s.offered_rate, s.receive_rate)).collect()),
        ],
    );
    let _ = write!(
        o,
        "<table><tr><th>{}</th><th>rate</th><th>offered/s</th><th>published/s</th><th>received/s</th><th>missing</th><th>e2e p50</th><th>p99</th><th>p99.9</th><th>errors</th><th></th></tr>",
        if r.capacity.is_some() { "step" } else { "stage" }
    );
    for st in &r.stages {
        let _ = write!(
            o,
            "<tr>{}<td>{}</td></tr>",
            tds(super::text::stage_cells(st)),
            esc(&super::text::step_outcome(st))
        );
    }
    let _ = write!(o, "</table>");
}

pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let (verdict, vcolor) = match r.verdict.status {
        Status::Pass => ("PASS", "#2ca02c"),
        Status::Fail => ("FAIL", "#d62728"),
        Status::Aborted => ("ABORTED", "#ff7f0e"),
        Status::Error => ("ERROR", "#d62728"),
    };
    let _ = write!(
        o,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>squall · {}</title><style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1200px; }}
h1 {{ font-size: 20px; }} h2 {{ font-size: 16px; margin-top: 28px; }}
.verdict {{ color: #fff; background: {vcolor}; padding: 2px 10px; border-radius: 4px; }}
table {{ border-collapse: collapse; margin: 8px 0; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }} figure {{ display: inline-block; margin: 8px 16px 8px 0; }}
figcaption {{ font-weight: 600; margin-bottom: 4px; }}
</style></head><body>"#,
        esc(&r.scenario)
    );
    let _ = write!(o, r#"<h1>squall · {} <span class="verdict">{verdict}</span></h1><ul>"#, esc(&r.scenario));
    for reason in &r.verdict.reasons {
        let _ = write!(o, "<li>{}</li>", esc(reason));
    }
    let _ = write!(
        o,
        "</ul><p>Run <code>{}</code> of squall {}, started {}: {} clients on {} agent(s) → {}; publish window {:.1} s, drain {:.1} s, elapsed {:.1} s.</p>",
        esc(&r.run_tag),
        esc(&r.squall_version),
        esc(&r.started_at),
        count(r.clients),
        r.agents,
        esc(&super::text::target(r)),
        r.publish_window_s,
        r.drain_s,
        r.elapsed_s
    );
    if !r.labels.is_empty() {
        let labels: Vec<String> =
            r.labels.iter().map(|(k, v)| format!("<code>{}={}</code>", esc(k), esc(v))).collect();
        let _ = write!(o, "<p>Labels: {}</p>", labels.join(" "));
    }
    if !r.thresholds.is_empty() {
        let _ = write!(o, "<h2>Thresholds</h2><table><tr><th>rule</th><th>measured</th><th></th></tr>");
        for t in &r.thresholds {
            let v = t.value.map_or("no data".into(), |v| format!("{v}"));
            let _ = write!(
                o,
                "<tr><td><code>{}</code></td><td>{v}</td><td>{}</td></tr>",
                esc(&t.rule),
                if t.pass { "✓" } else { "✗" }
            );
        }
        let _ = write!(o, "</table>");
    }
    let _ = write!(
        o,
        "<h2>Latency by percentile</h2><p>Corrected latency counts from when the schedule meant to send (a stall cannot hide), raw from the actual send. The axis is 1/(1−p): each step right is ten times rarer.</p>"
    );
    for name in ["connect", "subscribe", "puback", "pubcomp", "e2e", "reconnect", "will", "tls", "backlog"] {
        if let Some(l) = r.latency.get(name) {
            percentile_plot(&mut o, name, l.corrected.as_ref(), l.raw.as_ref());
        }
    }
    let _ = write!(
        o,
        "<table><tr><th>latency</th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>p99.99</th><th>max</th></tr>"
    );
    for (label, p) in latency_rows(r) {
        let _ = write!(o, "<tr><td>{}</td>{}</tr>", esc(&label), tds(percentile_cells(p)));
    }
    let _ = write!(o, "</table>");
    stages(&mut o, r);
    let _ = write!(o, "<h2>Over time</h2>");
    let tl = &r.timeline;
    series_plot(
        &mut o,
        "Connected clients",
        false,
        &[("connected", "#2ca02c", tl.iter().map(|x| (x.t_s, x.connected as f64)).collect())],
    );
    series_plot(
        &mut o,
        "Messages per second",
        false,
        &[
            ("published", "#1f77b4", per_second(tl, |x| x.published)),
            ("received", "#ff7f0e", per_second(tl, |x| x.received)),
        ],
    );
    series_plot(
        &mut o,
        "End-to-end latency per interval (corrected)",
        true,
        &[
            ("p50", "#1f77b4", tl.iter().filter_map(|x| x.e2e_p50_us.map(|v| (x.t_s, v as f64))).collect()),
            ("p99", "#d62728", tl.iter().filter_map(|x| x.e2e_p99_us.map(|v| (x.t_s, v as f64))).collect()),
        ],
    );
    series_plot(
        &mut o,
        "Errors, connects and reconnects per second",
        false,
        &[
            ("errors", "#d62728", per_second(tl, |x| x.errors)),
            ("connects", "#9467bd", per_second(tl, |x| x.connects)),
            ("reconnects", "#8c564b", per_second(tl, |x| x.reconnects)),
        ],
    );
    let kinds = crate::aggregate::IntervalRow::error_kinds(tl);
    if !kinds.is_empty() {
        const PALETTE: [&str; 8] =
            ["#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
        let series: Vec<(&str, &str, Vec<(f64, f64)>)> = kinds
            .iter()
            .enumerate()
            .map(|(i, kind)| {
                let points = per_second(tl, |row| row.errors_by_kind.get(*kind).copied().unwrap_or(0));
                (*kind, PALETTE[i % PALETTE.len()], points)
            })
            .collect();
        series_plot(&mut o, "Errors per second by kind", false, &series);
    }
    let d = &r.delivery.all;
    let _ = write!(
        o,
        "<h2>Delivery</h2><table><tr><th></th><th>expected</th><th>delivered</th><th>lost</th><th>duplicates</th><th>out of order</th><th>missed offline</th><th>session lost</th><th>refused</th><th>phantom</th></tr><tr><td>all{}</td>{}</tr>",
        if r.delivery.complete { "" } else { " (partial)" },
        tds(delivery_cells(d))
    );
    for (g, d) in &r.delivery.by_group {
        let _ = write!(o, "<tr><td>{}</td>{}</tr>", esc(g), tds(delivery_cells(d)));
    }
    let _ = write!(o, "</table>");
    if let Some(w) = &r.wills {
        let _ = write!(o, "<p>{}.</p>", esc(&wills_sentence(w)));
    }
    if !r.per_agent.is_empty() {
        let _ = write!(
            o,
            "<h2>Agents</h2><table><tr><th>agent</th><th>clients</th><th>status</th><th>connects</th><th>published</th><th>received</th><th>errors</th><th>CPU peak (cores)</th><th>lag p99</th><th>suspect</th></tr>"
        );
        for a in &r.per_agent {
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{:?}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{}</td><td>{}</td></tr>",
                esc(&a.name),
                count(a.clients),
                a.status,
                count(a.connects),
                count(a.published),
                count(a.received),
                count(a.errors),
                a.cpu_peak_cores,
                a.lag_p99_us.map_or("-".into(), |v| fmt_us(v as f64)),
                esc(&a.suspect.join("; "))
            );
        }
        let _ = write!(o, "</table>");
    }
    let _ = write!(
        o,
        "<h2>Groups</h2><table><tr><th>group</th><th>clients</th><th>protocol</th><th>publishes</th><th>subscribes</th></tr>"
    );
    for g in &r.groups {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&g.name),
            count(g.clients),
            esc(&g.protocol),
            esc(g.publishes.as_deref().unwrap_or("")),
            esc(g.subscribes.as_deref().unwrap_or(""))
        );
    }
    let _ = write!(o, "</table>");
    if !r.errors.is_empty() {
        let _ = write!(o, "<h2>Errors</h2><table><tr><th>kind</th><th>code</th><th>count</th></tr>");
        for e in &r.errors {
            let code = e
                .code
                .map(|c| format!("0x{c:02x} {}", e.meaning.clone().unwrap_or_default()))
                .unwrap_or_default();
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&e.kind),
                esc(&code),
                count(e.count)
            );
        }
        let _ = write!(o, "</table>");
    }
    for w in &r.warnings {
        let _ = write!(o, "<p>⚠ {}</p>", esc(w));
    }
    let _ = write!(o, "</body></html>\n");
    o
}
