//! `squall run SCENARIO`: the controller with one in-process agent, or with `--local-agents N`
//! agent processes on this host over loopback gRPC. The flags shared with `squall controller`
//! are [`ScenarioArgs`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use squall_controller::coordinator::{self, Agents, RunError, RunSetup, StartError};
use squall_controller::report::live::LiveMode;
use squall_controller::report::{self, Report, Status};
use squall_controller::scenario::{self, Overrides, Plan, ScenarioError};

use super::{agents, exit};

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub scenario: ScenarioArgs,
    /// Run N agent processes on this host (over loopback gRPC) instead of one in-process agent:
    /// the way past one process's file descriptors, and onto every core.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub local_agents: Option<u32>,
    /// Engine threads, each running its share of the clients (default: one per core; with
    /// --local-agents, cores ÷ N per agent). At light loads one costs the tester and the broker
    /// less: 1,000 clients × 10 msg/s took 19 % less tester CPU and 43 % less of mosquitto's
    /// on one than on two (BENCHMARKS.md).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
}

/// What a scenario run takes, for `squall run` and `squall controller` alike.
#[derive(Debug, Args)]
pub struct ScenarioArgs {
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
    /// Label the run (repeatable): KEY=VALUE, e.g. broker=mosquitto-2.0.18 or config=tuned;
    /// shown by the report and by `squall compare`.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Also write the report as Markdown (for a pull request or a ticket) to this file.
    #[arg(long, value_name = "FILE")]
    pub md: Option<PathBuf>,
    /// Also write the report as one self-contained HTML file with plots (opens offline).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// The broker's process id on this host: its CPU and memory over the run go into the
    /// report (read from /proc), so configurations are compared on cost too.
    #[arg(long, value_name = "PID")]
    pub broker_pid: Option<u32>,
    /// Subscribe one more client to the first target's `$SYS/#` for the run: the broker's
    /// own memory, messages, bytes and clients go into the report (for a broker on another
    /// host, where --broker-pid cannot read it).
    #[arg(long)]
    pub broker_sys: bool,
    /// Serve live metrics for Prometheus on this address during the run (`GET /metrics`):
    /// counters per agent, connected clients, latency histograms per metric and group.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Soak runs: write an HdrHistogram interval log (run.hlog) and a counters journal
    /// (counters.jsonl) into this new directory as the run goes; a crash loses at most one
    /// interval, and `squall report DIR` turns what is there into a report.
    #[arg(long, value_name = "DIR")]
    pub soak_log: Option<PathBuf>,
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

/// `KEY=VALUE` of `--label`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE (e.g. broker=mosquitto)")),
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
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

impl ScenarioArgs {
    /// Loads and resolves the scenario; on error prints it and gives the exit code.
    pub fn load(&self) -> Result<Plan, u8> {
        let overrides = Overrides {
            targets: self.targets.clone(),
            duration: self.duration,
            drain: self.drain,
            max_duration: self.max_duration,
            thresholds: self.thresholds.clone(),
            clients: self.clients.clone(),
        };
        match scenario::load(&self.scenario, &overrides) {
            Ok(p) => Ok(p),
            Err(ScenarioError::Read { path, source }) => {
                eprintln!("error: cannot read scenario {path}: {source}");
                Err(exit::INVALID)
            }
            Err(ScenarioError::Invalid(d)) => {
                eprint!("{d}");
                Err(exit::INVALID)
            }
        }
    }

    /// `--check`: prints the resolved plan.
    /// The plan to run, or the exit code to end with: the load's error, or a pass after
    /// `--check` printed the plan.
    pub fn plan_to_run(&self) -> Result<Plan, u8> {
        let plan = self.load()?;
        if self.check {
            Self::print_plan(&plan);
            return Err(exit::PASS);
        }
        Ok(plan)
    }

    pub fn print_plan(plan: &Plan) {
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
    }

    pub fn live_mode(&self) -> LiveMode {
        match self.live {
            // quiet means quiet: no live line either unless asked for
            Live::Auto if self.quiet => LiveMode::Off,
            Live::Auto => LiveMode::detect(),
            Live::Lines => LiveMode::Lines,
            Live::Off => LiveMode::Off,
        }
    }

    /// Prints and writes the report; the exit code of its verdict.
    pub fn finish(&self, report: &Report) -> u8 {
        let mut labelled;
        let report = if self.labels.is_empty() {
            report
        } else {
            labelled = report.clone();
            labelled.labels.extend(self.labels.iter().cloned());
            &labelled
        };
        if let Some(path) = &self.md
            && let Err(e) = std::fs::write(path, report::md::render(report))
        {
            eprintln!("error: cannot write the Markdown report to {}: {e}", path.display());
            return exit::RUNTIME;
        }
        if let Some(path) = &self.html
            && let Err(e) = std::fs::write(path, report::html::render(report))
        {
            eprintln!("error: cannot write the HTML report to {}: {e}", path.display());
            return exit::RUNTIME;
        }
        if !self.quiet {
            print!("{}", report::text::render(report));
        }
        if let Some(path) = &self.report {
            let json = serde_json::to_string_pretty(report).expect("a report serializes");
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
}

/// The exit code of a run that could not start.
pub fn start_failed(e: RunError) -> u8 {
    let RunError::Start(e) = e;
    eprintln!("error: {e}");
    match e {
        StartError::Invalid(_) => exit::INVALID,
        StartError::Runtime(_) => exit::RUNTIME,
    }
}

/// Ctrl-C or SIGTERM (what Kubernetes, systemd and docker send): the run stops, the report of
/// what ran is written.
pub async fn interrupted() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

pub fn run(a: RunArgs) -> u8 {
    let plan = match a.scenario.plan_to_run() {
        Ok(p) => p,
        Err(code) => return code,
    };
    let rt = match super::runtime(&mut tokio::runtime::Builder::new_multi_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(run_async(a, plan))
}

async fn run_async(a: RunArgs, plan: Plan) -> u8 {
    let embedded = plan.targets.is_empty();
    let (targets, broker) = if embedded {
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
    let setup = RunSetup {
        plan,
        targets,
        embedded_broker: embedded,
        live: a.scenario.live_mode(),
        soak_log: a.scenario.soak_log.clone(),
        metrics_listen: a.scenario.metrics_listen,
        broker_pid: a.scenario.broker_pid,
    };
    let sys =
        a.scenario.broker_sys.then(|| super::broker_sys::SysWatch::start(&setup.plan, &setup.targets[0]));
    let result = match a.local_agents {
        None => coordinator::run(setup, agents::InProcess { threads: a.threads }, interrupted()).await,
        Some(n) => {
            let mut local = match agents::LocalProcesses::start(n, a.threads).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("error: {e}");
                    return exit::RUNTIME;
                }
            };
            let remote = match local.gather(&setup.plan).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e}");
                    return exit::RUNTIME;
                }
            };
            let r = run_remote(setup, remote).await;
            local.stop().await;
            r
        }
    };
    let mut report = match result {
        Ok(r) => r,
        Err(e) => return start_failed(e),
    };
    if let Some(b) = &broker {
        report.broker = Some(super::embedded::counters(&b.stats()));
    }
    if let Some(w) = sys {
        report.broker_sys = Some(w.finish().await);
    }
    a.scenario.finish(&report)
}

async fn run_remote(setup: RunSetup, agents: impl Agents) -> Result<Report, RunError> {
    coordinator::run(setup, agents, interrupted()).await
}
