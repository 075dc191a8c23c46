//! Subcommands, one file each: `run`, `controller`, `agent`, `init`, `check`, `broker`;
//! `agents.rs` composes where a run's agents come from.

pub mod agent;
pub mod agents;
pub mod broker;
pub mod broker_sys;
pub mod check;
pub mod compare;
pub mod controller;
pub mod device;
pub mod embedded;
pub mod exit;
pub mod init;
pub mod report;
pub mod run;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Distributed MQTT load and soak tester.
#[derive(Debug, Parser)]
#[command(name = "squall", version, about, max_term_width = 100)]
pub struct Cli {
    /// More logging on stderr (-v: lifecycle, -vv: debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a scenario: connect its clients, publish and subscribe, report latency and delivery.
    Run(run::RunArgs),
    /// Run a scenario on agents that dial in over gRPC (`squall agent`), and merge their results.
    Controller(controller::ControllerArgs),
    /// Serve a controller: dial it, run the share of a scenario it assigns, stop when it is gone.
    Agent(agent::AgentArgs),
    /// Print a commented example scenario (or a JSON Schema).
    Init(init::InitArgs),
    /// Check a broker, step by step (TCP, TLS, CONNECT, auth, publish, subscribe, latency,
    /// retained, will, session), for CI and on-call; exit code 0 only if all pass.
    Check(check::CheckArgs),
    /// Judge a device's MQTT client (Device Advisor's cases): the device connects to squall,
    /// whose broker withholds and drops on purpose; exit code 0 only if every case passes.
    Device(device::DeviceArgs),
    /// Run squall's embedded MQTT broker standalone (with optional fault injection).
    Broker(broker::BrokerArgs),
    /// Compare the reports of runs (broker configurations) by latency percentile, throughput
    /// and delivery, with a verdict per figure; `--fail-if-worse` gates for CI.
    Compare(compare::CompareArgs),
    /// Show a report again: from its JSON, or from a soak log directory (`--soak-log`), a
    /// crashed or killed run's included.
    Report(report::ReportArgs),
}

/// Entry point: parses `args`, runs the command, returns the exit code.
pub fn main(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(exit::INVALID) } else { ExitCode::SUCCESS };
        }
    };
    init_tracing(cli.verbose);
    let code = dispatch(cli);
    ExitCode::from(code)
}

/// Runs a parsed command; returns its exit code.
pub fn dispatch(cli: Cli) -> u8 {
    match cli.command {
        Command::Run(a) => run::run(a),
        Command::Controller(a) => controller::run(a),
        Command::Agent(a) => agent::run(a),
        Command::Init(a) => init::run(a),
        Command::Broker(a) => broker::run(a),
        Command::Check(a) => check::run(a),
        Command::Device(a) => device::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Report(a) => report::run(a),
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    // ntex logs spurious warnings about unconfigured services; only its errors matter here
    let filter = tracing_subscriber::EnvFilter::try_from_env("SQUALL_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{default},ntex=error,ntex_mqtt=error"))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Builds a tokio runtime (enable_all) from `builder`; on failure says why on stderr and gives
/// the runtime-failure exit code.
pub fn runtime(builder: &mut tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, u8> {
    builder.enable_all().build().map_err(|e| {
        eprintln!("error: cannot start the runtime: {e}");
        exit::RUNTIME
    })
}

/// The cores this host offers (at least 1).
pub fn host_cores() -> u32 {
    std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)
}
