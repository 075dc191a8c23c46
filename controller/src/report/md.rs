//! The report as Markdown, for a pull request or a ticket: the verdict first, then what ran,
//! thresholds, latency, throughput and delivery, errors, and storms, outages and wills when
//! the run had them. Tables only where a table reads better than a sentence.

use std::fmt::Write;

use super::text::{count, delivery_cells, fmt_us, latency_rows, percentile_cells, wills_sentence};
use super::{Report, Status};

/// A cell: `|` would end it.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let verdict = match r.verdict.status {
        Status::Pass => "✅ PASS",
        Status::Fail => "❌ FAIL",
        Status::Aborted => "⏹ ABORTED",
        Status::Error => "⚠️ ERROR",
    };
    let _ = writeln!(o, "## squall · {} · {verdict}\n", cell(&r.scenario));
    for reason in &r.verdict.reasons {
        let _ = writeln!(o, "- {}", reason);
    }
    if !r.verdict.reasons.is_empty() {
        let _ = writeln!(o);
    }
    let target = super::text::target(r);
    let _ = writeln!(
        o,
        "Run `{}` of squall {}, started {}: {} clients on {} agent{} → {}; publish window {:.1} s, drain {:.1} s, elapsed {:.1} s.",
        r.run_tag,
        r.squall_version,
        r.started_at,
        count(r.clients),
        r.agents,
        if r.agents == 1 { "" } else { "s" },
        cell(&target),
        r.publish_window_s,
        r.drain_s,
        r.elapsed_s
    );
    if !r.labels.is_empty() {
        let labels: Vec<String> = r.labels.iter().map(|(k, v)| format!("`{k}={v}`")).collect();
        let _ = writeln!(o, "Labels: {}.", labels.join(", "));
    }
    let _ = writeln!(o);
    if !r.thresholds.is_empty() {
        let _ = writeln!(o, "| threshold | measured | |\n|---|---:|---|");
        for t in &r.thresholds {
            let v = t.value.map_or("no data".to_string(), |v| format!("{v}"));
            let _ = writeln!(o, "| `{}` | {v} | {} |", cell(&t.rule), if t.pass { "✓" } else { "✗" });
        }
        let _ = writeln!(o);
    }
    if !r.latency.is_empty() {
        let _ = writeln!(
            o,
            "| latency | count | p50 | p90 | p99 | p99.9 | p99.99 | max |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for (label, p) in latency_rows(r) {
            let _ = writeln!(o, "| {label} | {} |", percentile_cells(p).join(" | "));
        }
        let _ = writeln!(
            o,
            "\nCorrected latency counts from when the schedule meant to send; raw from the actual send.\n"
        );
    }
    if !r.stages.is_empty() {
        let kind = if r.capacity.is_some() { "step" } else { "stage" };
        let _ = writeln!(
            o,
            "| {kind} | rate | offered/s | published/s | received/s | missing | e2e p50 | p99 | p99.9 | errors | |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for st in &r.stages {
            let _ = writeln!(
                o,
                "| {} | {} |",
                super::text::stage_cells(st).join(" | "),
                cell(&super::text::step_outcome(st))
            );
        }
        if let Some(c) = &r.capacity {
            let _ = writeln!(o, "\n**Capacity**: {}.", cell(&super::text::capacity_sentence(c)));
        }
        let _ = writeln!(o);
    }
    let c = |k: &str| r.counters.get(k).copied().unwrap_or(0);
    let _ = writeln!(
        o,
        "Throughput: {:.1} msg/s published ({:.1}/s offered), {:.1}/s received. Connections: {} of {} attempts, {} failed, {} lost after connecting.\n",
        r.rates.publish_per_s,
        r.rates.offered_per_s,
        r.rates.receive_per_s,
        count(c("connects")),
        count(c("connect_attempts")),
        count(c("connect_failures")),
        count(c("connections_lost"))
    );
    if r.delivery.receivers > 0 {
        let d = &r.delivery.all;
        let _ = writeln!(
            o,
            "| delivery | expected | delivered | lost | duplicates | out of order | missed offline | session lost | refused | phantom |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let partial = if r.delivery.complete { "" } else { " (partial)" };
        let _ = writeln!(o, "| all{partial} | {} |\n", delivery_cells(d).join(" | "));
    }
    if let Some(w) = &r.wills {
        let _ = writeln!(o, "{}.\n", wills_sentence(w));
    }
    if !r.storms.is_empty() {
        let _ = writeln!(
            o,
            "| storm | taken | back | 99 % back | all back | policy alone (99 % / all) | failed attempts |\n|---|---:|---:|---:|---:|---:|---:|"
        );
        let ms = |v: Option<f64>| v.map_or("never".into(), |v| fmt_us(v * 1e3));
        for s in &r.storms {
            let _ = writeln!(
                o,
                "| {} {} at {:.1} s | {} | {} | {} | {} | {} / {} | {} |",
                cell(&s.group),
                s.action,
                s.at_s,
                count(s.taken),
                count(s.back),
                ms(s.recovered_99_ms),
                ms(s.recovered_100_ms),
                ms(s.policy_99_ms),
                ms(s.policy_100_ms),
                count(s.failed_attempts)
            );
        }
        let _ = writeln!(o);
    }
    for w in &r.outages {
        let end = w.end_s.map_or("not over by the end".to_string(), |e| format!("{e:.1} s"));
        let _ = writeln!(
            o,
            "- Outage from {:.1} s to {end}: {} connections lost unasked, {} back.",
            w.start_s,
            count(w.clients_lost),
            count(w.clients_back)
        );
    }
    if !r.outages.is_empty() {
        let _ = writeln!(o);
    }
    if r.errors.is_empty() {
        let _ = writeln!(o, "Errors: none.");
    } else {
        let _ = writeln!(o, "| error | code | count |\n|---|---|---:|");
        for e in &r.errors {
            let code = e.code.map(|c| {
                format!("0x{c:02x}{}", e.meaning.as_ref().map(|m| format!(" {m}")).unwrap_or_default())
            });
            let _ = writeln!(o, "| {} | {} | {} |", e.kind, cell(&code.unwrap_or_default()), count(e.count));
        }
    }
    for w in &r.warnings {
        let _ = writeln!(o, "\n> ⚠️ {}", cell(w));
    }
    o
}
