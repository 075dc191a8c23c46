//! `squall run SCENARIO`: the load engine, with an in-process agent.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use squall_controller::coordinator::{self, RunError, RunSetup};
use squall_controller::report::live::LiveMode;
use squall_controller::report::{self, Status};
use squall_controller::scenario::{self, LoadError, Overrides};

use super::exit;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The scenario file (TOML). `squall init > my.toml` writes a commented one.
    pub scenario: PathBuf,
    /// Broker URL (repeatable); replaces the scenario's targets. mqtt://host:port or mqtts://…
    #[arg(long = "target", value_name = "URL")]
    pub targets: Vec<String>,
    /// How long to publish (e.g. 30s, 10m); replaces `run.duration`.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// How long to keep receiving after the last publish; replaces `run.drain`.
    #[arg(long, value_parser = parse_duration)]
    pub drain: Option<Duration>,
    /// Hard limit on the whole run; replaces `run.max_duration`.
    #[arg(long, value_parser = parse_duration)]
    pub max_duration: Option<Duration>,
    /// Add a pass/fail rule (repeatable), e.g. "e2e.p99 < 20ms".
    #[arg(long = "threshold", value_name = "RULE")]
    pub thresholds: Vec<String>,
    /// Change one group's client count (repeatable): GROUP=N.
    #[arg(long = "clients", value_name = "GROUP=N", value_parser = parse_clients)]
    pub clients: Vec<(String, u32)>,
    /// Write the full report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// The live line: on a terminal it rewrites itself, otherwise one line per second.
    #[arg(long, value_enum, default_value_t = Live::Auto)]
    pub live: Live,
    /// Check the scenario and print the resolved plan; connect nothing.
    #[arg(long)]
    pub check: bool,
    /// Do not print the summary (the report file and exit code still tell).
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Live {
    Auto,
    Lines,
    Off,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|_| format!("`{s}` is not a duration; write e.g. 30s, 500ms, 10m"))
}

fn parse_clients(s: &str) -> Result<(String, u32), String> {
    let (g, n) = s.split_once('=').ok_or_else(|| format!("`{s}`: write GROUP=N"))?;
    let n: u32 = n.parse().map_err(|_| format!("`{n}` is not a client count"))?;
    if n == 0 {
        return Err("a group needs at least one client".into());
    }
    Ok((g.to_string(), n))
}

pub fn run(a: RunArgs) -> u8 {
    let overrides = Overrides {
        targets: a.targets.clone(),
        duration: a.duration,
        drain: a.drain,
        max_duration: a.max_duration,
        thresholds: a.thresholds.clone(),
        clients: a.clients.clone(),
    };
    let plan = match scenario::load(&a.scenario, &overrides) {
        Ok(p) => p,
        Err(LoadError::Read { path, source }) => {
            eprintln!("error: cannot read scenario {path}: {source}");
            return exit::INVALID;
        }
        Err(LoadError::Invalid(d)) => {
            eprint!("{d}");
            return exit::INVALID;
        }
    };
    if a.check {
        println!(
            "{}: {} group(s), {} clients, publish for {}, targets: {}",
            plan.name,
            plan.groups.len(),
            plan.clients(),
            humantime::format_duration(plan.duration),
            if plan.targets.is_empty() {
                "embedded broker".to_string()
            } else {
                plan.targets.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
            }
        );
        return exit::PASS;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return exit::RUNTIME;
        }
    };
    rt.block_on(run_async(a, plan))
}

async fn run_async(a: RunArgs, plan: squall_controller::scenario::Plan) -> u8 {
    let live = match a.live {
        Live::Auto => LiveMode::detect(),
        Live::Lines => LiveMode::Lines,
        Live::Off => LiveMode::Off,
    };
    if a.quiet && a.live == Live::Auto {
        // quiet means quiet: no live line either unless asked for
    }
    let live = if a.quiet && a.live == Live::Auto { LiveMode::Off } else { live };
    let embedded = plan.targets.is_empty();
    let (targets, _broker) = if embedded {
        match super::embedded::start(&plan).await {
            Ok((url, broker)) => {
                eprintln!("no target in the scenario: running against the embedded broker at {url}");
                (vec![url], Some(broker))
            }
            Err(e) => {
                eprintln!("error: cannot start the embedded broker: {e}");
                return exit::RUNTIME;
            }
        }
    } else {
        (plan.targets.clone(), None)
    };
    let setup = RunSetup { plan, targets, embedded_broker: embedded, live };
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let mut report = match coordinator::run(setup, interrupt).await {
        Ok(r) => r,
        Err(RunError::Start(e)) => {
            eprintln!("error: {e}");
            return match e {
                squall_agent::engine::StartError::Resolve { .. } => exit::RUNTIME,
                _ => exit::INVALID,
            };
        }
    };
    if let Some(b) = &_broker {
        report.broker = Some(super::embedded::counters(&b.stats()));
    }
    if !a.quiet {
        print!("{}", report::text::render(&report));
    }
    if let Some(path) = &a.report {
        let json = serde_json::to_string_pretty(&report).expect("a report serializes");
        if let Err(e) = std::fs::write(path, json + "\n") {
            eprintln!("error: cannot write the report to {}: {e}", path.display());
            return exit::RUNTIME;
        }
    }
    match report.verdict.status {
        Status::Pass => exit::PASS,
        Status::Fail => exit::FAIL,
        Status::Aborted => exit::INTERRUPTED,
        Status::Error => exit::RUNTIME,
    }
}
