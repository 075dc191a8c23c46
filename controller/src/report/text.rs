//! The human summary printed at the end of a run.

use std::fmt::Write;

use super::{AgentStatus, Percentiles, Report, Status};

/// µs as a short human duration: `850µs`, `12.3ms`, `2.41s`.
pub fn fmt_us(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0}µs")
    } else if us < 1_000_000.0 {
        format!("{:.2}ms", us / 1e3)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}

pub(crate) fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn row(out: &mut String, name: &str, p: &Percentiles) {
    let _ = writeln!(
        out,
        "  {name:<18} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        count(p.count),
        fmt_us(p.p50_us as f64),
        fmt_us(p.p90_us as f64),
        fmt_us(p.p99_us as f64),
        fmt_us(p.p999_us as f64),
        fmt_us(p.max_us as f64),
    );
}

/// Where the run's clients connected, as every rendering says it.
pub(crate) fn target(r: &Report) -> String {
    if r.embedded_broker {
        format!("{} (embedded broker)", r.targets.join(", "))
    } else {
        r.targets.join(", ")
    }
}

/// The rows of a latency table: each metric's corrected figures under its name and its raw
/// ones as "NAME (raw)"; a raw-only metric under its name.
pub(crate) fn latency_rows(r: &Report) -> Vec<(String, &Percentiles)> {
    let mut rows = Vec::new();
    for (name, l) in &r.latency {
        match (&l.corrected, &l.raw) {
            (Some(c), raw) => {
                rows.push((name.clone(), c));
                if let Some(raw) = raw {
                    rows.push((format!("{name} (raw)"), raw));
                }
            }
            (None, Some(raw)) => rows.push((name.clone(), raw)),
            (None, None) => {}
        }
    }
    rows
}

/// count, p50, p90, p99, p99.9, p99.99 and max, formatted for a table.
pub(crate) fn percentile_cells(p: &Percentiles) -> [String; 7] {
    [
        count(p.count),
        fmt_us(p.p50_us as f64),
        fmt_us(p.p90_us as f64),
        fmt_us(p.p99_us as f64),
        fmt_us(p.p999_us as f64),
        fmt_us(p.p9999_us as f64),
        fmt_us(p.max_us as f64),
    ]
}

/// The delivery tables' columns: expected, delivered, lost, duplicates, out of order, missed
/// offline, session lost, refused, phantom.
pub(crate) fn delivery_cells(d: &super::DeliveryCounts) -> [String; 9] {
    [
        d.expected,
        d.delivered,
        d.lost,
        d.duplicates,
        d.out_of_order,
        d.missed_offline,
        d.session_lost,
        d.refused,
        d.phantom,
    ]
    .map(count)
}

/// The will ledger in one sentence (without its final stop).
pub(crate) fn wills_sentence(w: &super::WillsReport) -> String {
    format!(
        "Last wills: {} expected, {} delivered, {} missing, {} unexpected, {} duplicates, {} allowed, {} early",
        count(w.expected),
        count(w.delivered),
        count(w.missing),
        count(w.unexpected),
        count(w.duplicates),
        count(w.allowed),
        count(w.early)
    )
}

pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let c = |k: &str| r.counters.get(k).copied().unwrap_or(0);
    let target = target(r);
    let _ = writeln!(
        o,
        "\nsquall · {} · run {} · {} clients → {}",
        r.scenario,
        r.run_tag,
        count(r.clients),
        target
    );
    let _ = writeln!(
        o,
        "publish window {:.1}s · drain {:.1}s · elapsed {:.1}s · {} agent{}",
        r.publish_window_s,
        r.drain_s,
        r.elapsed_s,
        r.agents,
        if r.agents == 1 { "" } else { "s" }
    );
    if !r.labels.is_empty() {
        let labels: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(o, "labels: {}", labels.join(" · "));
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "  connections   {} connected of {} attempts · {} failed · {} lost after connecting",
        count(c("connects")),
        count(c("connect_attempts")),
        count(c("connect_failures")),
        count(c("connections_lost")),
    );
    let published = c("published_qos0") + c("published_qos1") + c("published_qos2");
    let received = c("received_qos0") + c("received_qos1") + c("received_qos2");
    let _ = writeln!(
        o,
        "  messages      {} published ({:.1}/s) · {} received ({:.1}/s)",
        count(published),
        r.rates.publish_per_s,
        count(received),
        r.rates.receive_per_s
    );
    if c("behind_schedule") > 0 || c("unacked") > 0 || c("ack_timeouts") > 0 {
        let _ = writeln!(
            o,
            "                {} behind schedule (never sent) · {} unacknowledged · {} ack timeouts",
            count(c("behind_schedule")),
            count(c("unacked")),
            count(c("ack_timeouts"))
        );
    }
    if c("reads_coalesced") > 0 {
        let _ = writeln!(
            o,
            "                {} reads waited {} for more data (run.read_coalesce): arrival times late by at most that",
            count(c("reads_coalesced")),
            fmt_us(r.read_coalesce_us as f64)
        );
    }
    let d = &r.delivery.all;
    if r.delivery.receivers > 0 {
        let partial = if r.delivery.complete { "" } else { " (partial: the run did not finish)" };
        let _ = writeln!(
            o,
            "  delivery      {} expected · {} delivered · {} lost · {} duplicates · {} out of order{}",
            count(d.expected),
            count(d.delivered),
            count(d.lost),
            count(d.duplicates),
            count(d.out_of_order),
            partial
        );
        if d.refused > 0 {
            let _ = writeln!(
                o,
                "                {} refused by the broker at publish, with a reason code (not lost; see errors)",
                count(d.refused)
            );
        }
        if d.missed_offline > 0 || d.phantom > 0 || d.session_lost > 0 {
            let _ = writeln!(
                o,
                "                {} missed while offline · {} with sessions the broker lost · {} phantom",
                count(d.missed_offline),
                count(d.session_lost),
                count(d.phantom)
            );
        }
        let (resumed, lost_s, backlog) = (c("sessions_resumed"), c("sessions_lost"), c("backlog_delivered"));
        if resumed + lost_s > 0 {
            let _ = writeln!(
                o,
                "  sessions      {} resumed · {} lost by the broker · {} backlog messages delivered on resume",
                count(resumed),
                count(lost_s),
                count(backlog)
            );
        }
        for (q, dq) in &r.delivery.by_qos {
            if dq.expected > 0 && (dq.lost > 0 || dq.duplicates > 0) {
                let _ = writeln!(
                    o,
                    "                QoS {q}: {} lost · {} duplicates",
                    count(dq.lost),
                    count(dq.duplicates)
                );
            }
        }
    }
    let ms = |v: Option<f64>| v.map_or("never".to_string(), |v| fmt_us(v * 1e3));
    for (i, s) in r.storms.iter().enumerate() {
        let _ = writeln!(
            o,
            "  {:<14}{} · {} at {:.1}s: {} taken · {} back · 99 % in {}, all in {} (policy alone: {}, {}){}{}",
            if i == 0 { "storms" } else { "" },
            s.group,
            s.action,
            s.at_s,
            count(s.taken),
            count(s.back),
            ms(s.recovered_99_ms),
            ms(s.recovered_100_ms),
            ms(s.policy_99_ms),
            ms(s.policy_100_ms),
            if s.failed_attempts > 0 {
                format!(
                    " · {} failed attempts (peak {}/s; attempts per client: mean {:.1}, most {})",
                    count(s.failed_attempts),
                    count(s.failed_attempts_peak_per_s),
                    s.attempts_mean,
                    s.attempts_max
                )
            } else {
                String::new()
            },
            if s.abandoned > 0 { format!(" · {} abandoned", count(s.abandoned)) } else { String::new() },
        );
    }
    // the largest outages first; a long soak may have many small ones
    let mut outages: Vec<_> = r.outages.iter().collect();
    outages.sort_by_key(|o| std::cmp::Reverse(o.clients_lost));
    for (i, w) in outages.iter().take(5).enumerate() {
        let span = match w.end_s {
            Some(end) => format!("{:.1}s → {:.1}s ({})", w.start_s, end, fmt_us((end - w.start_s) * 1e6)),
            None => format!("{:.1}s → not over by the end", w.start_s),
        };
        let _ = writeln!(
            o,
            "  {:<14}{span}: {} connections lost unasked · {} back (attempts per client: mean {:.1}, most {})",
            if i == 0 { "outages" } else { "" },
            count(w.clients_lost),
            count(w.clients_back),
            w.attempts_mean,
            w.attempts_max
        );
    }
    if r.outages.len() > 5 {
        let _ =
            writeln!(o, "                … and {} smaller (see `outages` in the JSON)", r.outages.len() - 5);
    }
    if let Some(b) = &r.broker_process {
        let _ = writeln!(
            o,
            "  broker pid {} CPU {:.2} s (busiest {:.2} cores) · RSS {} → {} KiB (peak {}){}",
            b.pid,
            b.cpu_s,
            b.cpu_peak_cores,
            count(b.rss_start_kib),
            count(b.rss_end_kib),
            count(b.rss_peak_kib),
            if b.gone { " · the process ended during the run" } else { "" }
        );
    }
    if let Some(b) = &r.broker_sys {
        let _ = writeln!(o, "{}", sys_line(b));
    }
    if let Some(w) = &r.wills {
        let partial = if w.complete { "" } else { " (partial: the run did not finish)" };
        let _ = writeln!(
            o,
            "  last wills    {} expected · {} delivered · {} missing · {} unexpected · {} duplicates{}",
            count(w.expected),
            count(w.delivered),
            count(w.missing),
            count(w.unexpected),
            count(w.duplicates),
            partial
        );
        if w.allowed > 0 || w.early > 0 || w.unsettled > 0 {
            let _ = writeln!(
                o,
                "                {} after failures squall did not cause · {} before the broker was due · {} unsettled",
                count(w.allowed),
                count(w.early),
                count(w.unsettled)
            );
        }
    }
    if !r.latency.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "  {:<18} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, l) in &r.latency {
            if let Some(p) = &l.corrected {
                row(&mut o, name, p);
            }
            if let Some(p) = &l.raw {
                let label = if l.corrected.is_some() { format!("{name} (raw)") } else { name.clone() };
                row(&mut o, &label, p);
            }
        }
        let _ = writeln!(o, "  (corrected: from the intended send time; raw: from the actual send)");
        // with several groups measured, each its own (e2e under the group that published)
        let measured: Vec<_> = r.groups.iter().filter(|g| !g.latency.is_empty()).collect();
        if measured.len() > 1 {
            let _ = writeln!(o, "  by group (corrected where kept; e2e under the publishing group)");
            for g in measured {
                for (name, l) in &g.latency {
                    if let Some(p) = l.corrected.as_ref().or(l.raw.as_ref()) {
                        row(&mut o, &format!("{}/{name}", g.name), p);
                    }
                }
            }
        }
    }
    if r.per_agent.len() > 1 {
        agents(&mut o, r);
    }
    stages(&mut o, r);
    let _ = writeln!(o);
    if r.errors.is_empty() {
        let _ = writeln!(o, "  errors        none");
    } else {
        let _ = writeln!(o, "  errors");
        for e in &r.errors {
            let code = e.code.map(|c| format!(" 0x{c:02x}")).unwrap_or_default();
            let meaning = e.meaning.as_ref().map(|m| format!(" ({m})")).unwrap_or_default();
            let _ = writeln!(o, "    {:>10}  {}{code}{meaning}", count(e.count), e.kind);
        }
    }
    if !r.thresholds.is_empty() {
        let _ = writeln!(o, "  thresholds");
        for t in &r.thresholds {
            let mark = if t.pass { "✓" } else { "✗" };
            let _ = writeln!(o, "    {mark} {:<36} {}", t.rule, rule_value(&t.rule, t.value));
        }
    }
    if let Some(b) = &r.broker {
        let g = |k: &str| b.get(k).copied().unwrap_or(0);
        let _ = writeln!(
            o,
            "  broker        received {} · sent {} · dropped {} (queue full) · {} wills",
            count(g("messages_in_qos0") + g("messages_in_qos1") + g("messages_in_qos2")),
            count(g("messages_out_qos0") + g("messages_out_qos1") + g("messages_out_qos2")),
            count(g("dropped_queue_full")),
            count(g("wills_published")),
        );
    }
    for w in &r.warnings {
        let _ = writeln!(o, "  warning: {w}");
    }
    let _ = writeln!(o);
    let verdict = match r.verdict.status {
        Status::Pass => "PASS".to_string(),
        Status::Fail => "FAIL".to_string(),
        Status::Aborted => "ABORTED".to_string(),
        Status::Error => "ERROR".to_string(),
    };
    let _ = writeln!(o, "{verdict}");
    for why in &r.verdict.reasons {
        let _ = writeln!(o, "  {why}");
    }
    o
}

/// A stage's e2e percentiles (corrected where kept).
fn stage_e2e(st: &super::StageReport) -> Option<&Percentiles> {
    let l = st.latency.get("e2e")?;
    l.corrected.as_ref().or(l.raw.as_ref())
}

/// A rule's value as the report writes it.
fn rule_value(rule: &str, v: Option<f64>) -> String {
    match v {
        None => "no data".to_string(),
        Some(v) if rule.contains('p') && is_latency(rule) => fmt_us(v),
        Some(v) if v.fract() == 0.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// A stage's row: number, share, offered, published and received per second, missing, e2e
/// p50, p99 and p99.9, errors.
pub(crate) fn stage_cells(st: &super::StageReport) -> [String; 10] {
    let pct = |f: fn(&Percentiles) -> u64| stage_e2e(st).map_or("-".into(), |p| fmt_us(f(p) as f64));
    [
        (st.index + 1).to_string(),
        crate::scenario::resolve::fmt_percent(st.rate_percent / 100.0),
        count(st.offered_rate.round() as u64),
        count(st.publish_rate.round() as u64),
        count(st.receive_rate.round() as u64),
        st.missing.to_string(),
        pct(|p| p.p50_us),
        pct(|p| p.p99_us),
        pct(|p| p.p999_us),
        count(st.errors),
    ]
}

/// What a judged step broke, or "held".
pub(crate) fn step_outcome(st: &super::StageReport) -> String {
    match &st.verdict {
        None => String::new(),
        Some(v) if v.held => "held".to_string(),
        Some(v) => {
            let broke: Vec<String> = v
                .rules
                .iter()
                .filter(|r| !r.pass)
                .map(|r| format!("{} ({})", r.rule, rule_value(&r.rule, r.value)))
                .collect();
            format!("broke {}", broke.join(", "))
        }
    }
}

/// One search step as the live display notes it once judged.
pub fn step_line(st: &super::StageReport) -> String {
    let e2e = stage_e2e(st).map_or("e2e -".into(), |p| format!("e2e p99 {}", fmt_us(p.p99_us as f64)));
    let suspect = if st.tester_suspect.is_empty() {
        String::new()
    } else {
        format!(" · tester suspect: {}", st.tester_suspect.join(", "))
    };
    format!(
        "step {} · {} · offered {}/s · received {}/s · {e2e} · {}{suspect}",
        st.index + 1,
        crate::scenario::resolve::fmt_percent(st.rate_percent / 100.0),
        count(st.offered_rate.round() as u64),
        count(st.receive_rate.round() as u64),
        step_outcome(st)
    )
}

/// The stages (or a search's steps), a row each, and what a search found.
fn stages(o: &mut String, r: &Report) {
    if r.stages.is_empty() {
        return;
    }
    let kind = if r.capacity.is_some() { "step" } else { "stage" };
    let _ = writeln!(
        o,
        "\n  {:<8} {:>8} {:>10} {:>10} {:>10} {:>8} {:>9} {:>9} {:>9} {:>7}",
        format!("{kind}s"),
        "rate",
        "offered/s",
        "pub/s",
        "recv/s",
        "missing",
        "e2e p50",
        "e2e p99",
        "p99.9",
        "errors"
    );
    for st in &r.stages {
        let [n, rate, offered, publ, recv, missing, p50, p99, p999, errors] = stage_cells(st);
        let _ = writeln!(
            o,
            "  {n:<8} {rate:>8} {offered:>10} {publ:>10} {recv:>10} {missing:>8} {p50:>9} {p99:>9} {p999:>9} {errors:>7}  {}{}",
            step_outcome(st),
            if st.tester_suspect.is_empty() {
                String::new()
            } else {
                format!(" (tester suspect: {})", st.tester_suspect.join(", "))
            }
        );
    }
    let _ = writeln!(o, "  (each over whole snapshot intervals after its warm-up; e2e corrected)");
    if let Some(c) = &r.capacity {
        let _ = writeln!(o, "  capacity      {}", capacity_sentence(c));
    }
}

/// What a search found, in one sentence.
pub(crate) fn capacity_sentence(c: &super::CapacityReport) -> String {
    let slo = c.slo.join(", ");
    let found = match &c.found {
        Some(f) => format!(
            "{} msg/s ({} of the scenario's rates) held {slo}",
            count(f.offered_rate.round() as u64),
            crate::scenario::resolve::fmt_percent(f.rate_percent / 100.0)
        ),
        None => format!("no step held {slo}"),
    };
    let broke = match &c.broke {
        Some(b) => format!(
            "; {} msg/s ({}) broke it",
            count(b.offered_rate.round() as u64),
            crate::scenario::resolve::fmt_percent(b.rate_percent / 100.0)
        ),
        None => String::new(),
    };
    let ended = match c.ended.as_str() {
        "converged" => format!("within {}%", c.precision_percent),
        "top" => "its highest step held".into(),
        "bottom" => "nothing held down to its lowest step".into(),
        "max_steps" => "out of steps".into(),
        "tester_bound" => "stopped: the tester fell short".into(),
        other => other.to_string(),
    };
    format!("{found}{broke} · {ended}, {} steps", c.steps)
}

/// One line per agent: its share, its counts, its clock and its start.
fn agents(o: &mut String, r: &Report) {
    let _ = writeln!(o);
    let skew = r.start_skew_us.map(|s| format!(" · start skew {}", fmt_us(s))).unwrap_or_default();
    let _ = writeln!(o, "  agents{skew}");
    for a in &r.per_agent {
        let status = match a.status {
            AgentStatus::Finished => "finished",
            AgentStatus::Aborted => "aborted",
            AgentStatus::Failed => "FAILED",
            AgentStatus::Lost => "LOST",
        };
        let clock = a
            .clock
            .map(|c| format!(" · clock {:+.0}µs ±{:.0}µs", c.offset_us, c.bound_us))
            .unwrap_or_default();
        let start =
            a.start_late_us.map(|l| format!(" · started +{}", fmt_us(l.max(0.0)))).unwrap_or_default();
        let cpu = if a.cores > 0 {
            format!(" · CPU peak {:.2}/{} cores", a.cpu_peak_cores, a.cores)
        } else {
            String::new()
        };
        let lag = a.lag_p99_us.map(|l| format!(" · lag p99 {}", fmt_us(l as f64))).unwrap_or_default();
        let suspect = if a.suspect.is_empty() { "" } else { " · SUSPECT" };
        let _ = writeln!(
            o,
            "    {:<12} {:<8} {} clients · {} published · {} received · {} errors{cpu}{lag}{clock}{start}{suspect}",
            a.name,
            status,
            count(a.clients),
            count(a.published),
            count(a.received),
            count(a.errors),
        );
    }
}

fn is_latency(rule: &str) -> bool {
    let name = rule.split(|c: char| c.is_whitespace() || "<>=!".contains(c)).next().unwrap_or("");
    // `e2e{group=a.b}.p99`: the metric is what comes before a label or a dot
    let first = name.split(['.', '{']).next().unwrap_or("");
    squall_proto::metrics::Metric::from_name(first).is_some() && !name.ends_with(".count")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_counts_read_well() {
        assert_eq!(fmt_us(850.0), "850µs");
        assert_eq!(fmt_us(12_345.0), "12.35ms");
        assert_eq!(fmt_us(2_410_000.0), "2.41s");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(12), "12");
    }
}

/// The `$SYS` figures on one line: what was heard, or why nothing was.
pub fn sys_line(b: &crate::broker_sys::BrokerSys) -> String {
    let mut parts = Vec::new();
    let n = |v: f64| count(v.max(0.0).round() as u64);
    if let (Some(rx), Some(tx)) = (b.publish_received, b.publish_sent) {
        parts.push(format!("publishes in {} · out {}", n(rx), n(tx)));
    }
    if let (Some(s), Some(p), Some(e)) = (b.heap_start_bytes, b.heap_peak_bytes, b.heap_end_bytes) {
        parts.push(format!("heap {} → {} B (peak {})", n(s), n(e), n(p)));
    }
    if let Some(c) = b.clients_connected_peak {
        parts.push(format!("clients peak {}", n(c)));
    }
    if parts.is_empty() {
        parts.push(format!("{} topics", b.topics.len()));
    }
    let why = b.error.as_ref().map(|e| format!(" · {e}")).unwrap_or_default();
    format!("  broker $SYS   {}{why}", parts.join(" · "))
}
