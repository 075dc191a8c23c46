//! Scenario files: the format ([`format`]), errors that point into the file ([`source`]),
//! and resolution into one validated [`Plan`] ([`resolve`]), CLI overrides included.
//!
//! Everything a run needs is checked here, before anything connects.

pub mod format;
pub mod resolve;
pub mod source;

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use squall_proto::plan::GroupSpec;
use squall_proto::target::TargetUrl;
use squall_proto::tls::TlsMaterial;

use crate::thresholds::Threshold;
pub use resolve::Overrides;
pub use source::{Diagnostic, Diagnostics, Source};

/// A scenario resolved: defaults filled, every value checked, ready to segment.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    /// Random per run; in client ids (`{run}`) and in every payload.
    pub run_tag: u32,
    /// Brokers; empty means "start the embedded broker".
    pub targets: Vec<TargetUrl>,
    /// TLS material, read from the files the scenario names.
    pub tls: TlsMaterial,
    pub source_addresses: Vec<IpAddr>,
    pub groups: Vec<GroupSpec>,
    /// The publishing window (with stages their sum; for a search, the most it may take).
    pub duration: Duration,
    pub drain: Duration,
    pub ramp_timeout: Duration,
    pub max_duration: Duration,
    pub snapshot_interval: Duration,
    /// Handshakes in flight per agent: the cap of an adaptive window, or the fixed window.
    pub max_connecting: u32,
    /// True unless the scenario fixed `max_connecting`.
    pub adaptive_connecting: bool,
    /// Bytes each agent's clients may hold unsent, all together.
    pub max_unsent_bytes: u64,
    /// Wake-ups closer together than this share one.
    pub timer_coalesce: Duration,
    /// The window a busy connection lets data gather in before it reads (zero: none).
    pub read_coalesce: Duration,
    pub thresholds: Vec<Threshold>,
    /// How the publishing window is laid out: one steady window, stages, or a search.
    pub shape: Shape,
    /// Per group (in `groups`' order): its devices' identities from its identities file, a
    /// row a client; `None`: the group has none.
    pub identities: Vec<Option<std::sync::Arc<Vec<squall_proto::plan::Identity>>>>,
}

/// How the publishing window is laid out.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// The whole window at the scenario's rates.
    Steady,
    /// Stages one after another, back to back; the window is their sum.
    Stages(Vec<StagePlan>),
    /// Steps chosen as the run goes, to find the highest share of the rates that holds.
    Search(SearchPlan),
}

impl Shape {
    pub fn staged(&self) -> bool {
        !matches!(self, Shape::Steady)
    }
}

/// One stage: its length, its share of every publishing group's rate, and how much of its
/// start is left out of its figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StagePlan {
    pub duration: Duration,
    pub scale: f64,
    pub warmup: Duration,
}

/// A capacity search, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPlan {
    /// What each step must hold.
    pub slo: Vec<Threshold>,
    /// The first step's scale, and the highest tried.
    pub from: f64,
    pub to: f64,
    pub step: Duration,
    pub warmup: Duration,
    /// Relative: the search ends when the lowest failing scale is within this of the highest
    /// passing one.
    pub precision: f64,
    pub max_steps: u32,
}

/// Steps a search takes at most.
pub const MAX_SEARCH_STEPS: u32 = 64;

/// What a search may spend between two steps, at most: judging one (its last snapshots), the
/// broker draining what it left (at most 30 s), announcing the next.
pub fn search_gap(snapshot_interval: Duration) -> Duration {
    3 * snapshot_interval + Duration::from_secs(32)
}

impl Plan {
    pub fn clients(&self) -> u64 {
        self.groups.iter().map(|g| g.clients as u64).sum()
    }

    /// What a report needs of a plan, from a soak log's record of the run (rules that no
    /// longer parse are left out).
    pub fn rebuilt(m: &crate::soak_log::RunMeta) -> Plan {
        Plan {
            name: m.scenario.clone(),
            run_tag: m.run_tag,
            targets: vec![],
            tls: Default::default(),
            source_addresses: vec![],
            groups: m.groups.clone(),
            duration: Duration::ZERO,
            drain: Duration::from_millis(m.drain_ms),
            ramp_timeout: Duration::ZERO,
            max_duration: Duration::ZERO,
            snapshot_interval: Duration::from_secs(1),
            max_connecting: 0,
            adaptive_connecting: true,
            max_unsent_bytes: 0,
            timer_coalesce: Duration::ZERO,
            read_coalesce: Duration::from_micros(squall_proto::plan::DEFAULT_READ_COALESCE_US as u64),
            thresholds: m.thresholds.iter().filter_map(|t| Threshold::parse(t).ok()).collect(),
            shape: Shape::Steady,
            identities: Vec::new(),
        }
    }

    /// The record of this run a soak log starts with (passwords left out).
    pub fn soak_meta(
        &self,
        start_unix_ns: u64,
        started_at: &str,
        targets: Vec<String>,
        embedded: bool,
        agents: u32,
    ) -> crate::soak_log::RunMeta {
        crate::soak_log::RunMeta {
            scenario: self.name.clone(),
            run_tag: self.run_tag,
            squall_version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: started_at.to_string(),
            start_unix_ns,
            targets,
            embedded_broker: embedded,
            agents,
            drain_ms: self.drain.as_millis() as u64,
            groups: self
                .groups
                .iter()
                .cloned()
                .map(|mut g| {
                    g.password = None;
                    g
                })
                .collect(),
            thresholds: self.thresholds.iter().map(|t| t.expr.clone()).collect(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{0}")]
    Invalid(#[from] Diagnostics),
}

/// Reads, parses and resolves a scenario file.
pub fn load(path: &Path, overrides: &Overrides) -> Result<Plan, ScenarioError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ScenarioError::Read { path: path.display().to_string(), source })?;
    let src = Source::new(path, text);
    Ok(resolve::resolve(&src, overrides)?)
}

/// Parses and resolves scenario text (TLS paths relative to `src.path`'s directory).
pub fn load_source(src: &Source, overrides: &Overrides) -> Result<Plan, Diagnostics> {
    resolve::resolve(src, overrides)
}
