//! Live metrics for Prometheus: `--metrics-listen ADDR` serves `GET /metrics` in the text
//! exposition format while a run goes on.
//!
//! - `squall_<counter>_total{agent="…"}`: every counter of the report, per agent (counters);
//! - `squall_errors_total{agent="…",kind="…"}`: load errors by kind (`tcp_refused`, `ack_timeout` …);
//! - `squall_connected_clients{agent="…"}`: clients connected at the agent's last snapshot;
//! - `squall_latency_seconds{metric, timing, group}`: each latency as a histogram with fixed
//!   buckets (100 µs … 60 s), `_sum` and `_count`: buckets add up across agents and scrapes,
//!   which percentile gauges cannot. Never per client.
//!
//! The state is fed the same snapshots the report is built from, as they arrive: by the
//! coordinator (`squall run`, `squall controller`), or by an agent of its own runs (`squall
//! agent --metrics-listen`: the same names, its counters summed over every run it serves).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};

use squall_proto::metrics::{Counters, Latency, Metric, Snapshot, Timing};

/// Bucket bounds, seconds.
pub const BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0,
];

#[derive(Default)]
struct State {
    /// By agent name: counters so far, and connected clients now.
    agents: BTreeMap<String, (Counters, u64)>,
    /// By (agent name, error kind): errors so far.
    errors: BTreeMap<(String, &'static str), u64>,
    /// By (metric, timing, group name): everything recorded so far.
    latency: BTreeMap<(Metric, Timing, String), Latency>,
    /// Group names by position in the scenario.
    groups: Vec<String>,
    /// Agent names by index; or one name for every snapshot (an agent serving its own).
    agents_by_index: Vec<String>,
    this_agent: Option<String>,
}

/// What `/metrics` shows, fed by the coordinator (or by one agent, of its own runs).
#[derive(Clone, Default)]
pub struct Live {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("prometheus::Live")
    }
}

impl Live {
    /// For a run: its groups and its agents, in order.
    pub fn new(groups: Vec<String>, agent_names: Vec<String>) -> Live {
        let live = Live::default();
        {
            let mut st = live.lock();
            st.groups = groups;
            st.agents_by_index = agent_names;
        }
        live
    }

    /// For one agent, `squall agent --metrics-listen`: every snapshot is labelled `name`, and
    /// the counters add up over every run the agent serves (they only grow while it lives).
    pub fn for_agent(name: &str) -> Live {
        let live = Live::default();
        live.lock().this_agent = Some(name.to_string());
        live
    }

    /// The group names of the run now going on, by position (an agent learns them per run).
    pub fn set_groups(&self, groups: Vec<String>) {
        self.lock().groups = groups;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds one agent snapshot (already checked by the aggregate).
    pub fn apply(&self, s: &Snapshot) {
        let mut st = self.lock();
        let agent = match &st.this_agent {
            Some(name) => name.clone(),
            None => st
                .agents_by_index
                .get(s.agent as usize)
                .cloned()
                .unwrap_or_else(|| format!("agent-{}", s.agent)),
        };
        let a = st.agents.entry(agent.clone()).or_default();
        a.0.add(&s.counters);
        a.1 = s.connected;
        for e in &s.errors {
            *st.errors.entry((agent.clone(), e.error.name())).or_default() += e.count;
        }
        for h in &s.histograms {
            let Some(group) = st.groups.get(h.group as usize).cloned() else { continue };
            let Ok(l) = Latency::from_v2(&h.v2) else { continue };
            st.latency.entry((h.metric, h.timing, group)).or_default().add(&l);
        }
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let st = self.lock();
        let mut o = String::new();
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        // fields() lists the counters in NAMES order: one pass per agent, not a search per name
        let fields: Vec<(String, Vec<(&str, u64)>)> =
            st.agents.iter().map(|(agent, (c, _))| (esc(agent), c.fields())).collect();
        for (i, name) in Counters::NAMES.iter().enumerate() {
            let _ = writeln!(o, "# TYPE squall_{name}_total counter");
            for (agent, f) in &fields {
                let _ = writeln!(o, "squall_{name}_total{{agent=\"{agent}\"}} {}", f[i].1);
            }
        }
        let _ = writeln!(
            o,
            "# HELP squall_errors_total Load errors by agent and kind (as in the report's errors)."
        );
        let _ = writeln!(o, "# TYPE squall_errors_total counter");
        for ((agent, kind), n) in &st.errors {
            let _ = writeln!(o, "squall_errors_total{{agent=\"{}\",kind=\"{kind}\"}} {n}", esc(agent));
        }
        let _ = writeln!(o, "# TYPE squall_connected_clients gauge");
        for (agent, (_, connected)) in &st.agents {
            let _ = writeln!(o, "squall_connected_clients{{agent=\"{}\"}} {connected}", esc(agent));
        }
        let _ = writeln!(
            o,
            "# HELP squall_latency_seconds Latency by metric, timing (corrected: from the intended send; raw: from the actual send) and scenario group."
        );
        let _ = writeln!(o, "# TYPE squall_latency_seconds histogram");
        for ((metric, timing, group), l) in &st.latency {
            let labels = format!(
                "metric=\"{}\",timing=\"{}\",group=\"{}\"",
                metric.name(),
                match timing {
                    Timing::Raw => "raw",
                    Timing::Corrected => "corrected",
                },
                esc(group)
            );
            let h = l.inner();
            for le in BUCKETS {
                // values are µs; a bucket holds everything at or below its bound
                let n = if h.is_empty() { 0 } else { h.count_between(0, (le * 1e6) as u64) };
                let _ = writeln!(o, "squall_latency_seconds_bucket{{{labels},le=\"{le}\"}} {n}");
            }
            let _ = writeln!(o, "squall_latency_seconds_bucket{{{labels},le=\"+Inf\"}} {}", h.len());
            let _ = writeln!(o, "squall_latency_seconds_sum{{{labels}}} {}", h.mean() * h.len() as f64 / 1e6);
            let _ = writeln!(o, "squall_latency_seconds_count{{{labels}}} {}", h.len());
        }
        o
    }
}

/// Serves `/metrics` on `listener` until the process ends (or the task is dropped).
pub async fn serve(listener: tokio::net::TcpListener, live: Live) {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let live = live.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], live.render()) }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "The metrics endpoint stopped");
    }
}
