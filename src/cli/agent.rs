//! `squall agent --controller URL --token-file F`: a long-lived agent that dials its controller,
//! runs one assignment at a time, and stops all load when the controller goes quiet.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use clap::Args;
use squall_agent::link::{self, AllowRule, LinkError, LinkOptions};
use squall_proto::auth::Token;
use squall_proto::clock::Clock;
use squall_proto::link::AgentEvent;
use squall_proto::plan::Assignment;

use super::exit;
use super::run::parse_duration;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The controller's agent endpoint: http://host:port (loopback or with --insecure-link on
    /// the controller) or https://host:port (with --ca).
    #[arg(long, value_name = "URL")]
    pub controller: String,
    /// File holding the shared token (the controller's --token-file; at least 16 bytes).
    #[arg(long, value_name = "FILE")]
    pub token_file: PathBuf,
    /// PEM CA that signed the controller's certificate (https): only it is trusted.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// This agent's name in reports (default: the host name and process id).
    #[arg(long)]
    pub name: Option<String>,
    /// Only load these targets (repeatable): an address range (127.0.0.0/8, 10.1.2.3) or
    /// HOST:PORT. An assignment naming another target is refused and nothing is sent.
    #[arg(long = "allow-target", value_name = "CIDR|HOST:PORT")]
    pub allow_targets: Vec<AllowRule>,
    /// Local addresses this agent may bind clients to (repeatable), offered to the controller.
    #[arg(long = "source-address", value_name = "IP")]
    pub source_addresses: Vec<IpAddr>,
    /// Stop all load after hearing nothing from the controller for this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub lease: Duration,
    /// Engine threads, each running its share of the clients (default: one per core).
    /// Several agents on one host share its cores: give each cores ÷ agents (`squall run
    /// --local-agents` does).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
    /// Serve one run, then exit (for Jobs, and `squall run --local-agents`).
    #[arg(long)]
    pub once: bool,
    /// After each run, write what this agent itself counted (JSON: counters summed from the
    /// snapshots it sent, and its delivery totals) to this file: a record kept apart from the
    /// controller's report, to check the merge against.
    #[arg(long, value_name = "FILE")]
    pub tally_file: Option<PathBuf>,
    /// Serve Prometheus metrics of this agent's own runs on ADDR (`GET /metrics`): the names
    /// `squall run --metrics-listen` serves, labelled with this agent's name, summed over
    /// every run it serves.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Tests only: speak this link version instead of squall's own.
    #[arg(long, hide = true)]
    pub test_link_version: Option<u32>,
    /// Tests only: shift this agent's clock by this many ms (to check offset estimation).
    #[arg(long, hide = true, default_value_t = 0, allow_hyphen_values = true)]
    pub test_clock_skew_ms: i64,
    /// Tests only: run this agent's clock this many ppm fast (to check drift fitting).
    #[arg(long, hide = true, default_value_t = 0, allow_hyphen_values = true)]
    pub test_clock_drift_ppm: i64,
    /// Tests only: the memory this agent says it has, bytes (to check the memory estimate).
    #[arg(long, hide = true)]
    pub test_memory_bytes: Option<u64>,
    /// Tests only: block an engine thread this many ms every second (to check health verdicts).
    #[arg(long, hide = true)]
    pub test_engine_stall_ms: Option<u64>,
}

pub fn run(a: AgentArgs) -> u8 {
    let token = match Token::from_file(&a.token_file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::INVALID;
        }
    };
    let ca_pem = match &a.ca {
        Some(p) => match std::fs::read(p) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("error: cannot read the CA {}: {e}", p.display());
                return exit::INVALID;
            }
        },
        None => None,
    };
    if a.controller.starts_with("https://") && ca_pem.is_none() {
        eprintln!("error: an https:// controller needs --ca (the CA that signed its certificate)");
        return exit::INVALID;
    }
    if !a.controller.starts_with("http://") && !a.controller.starts_with("https://") {
        eprintln!("error: `{}`: write the controller as http://host:port or https://host:port", a.controller);
        return exit::INVALID;
    }
    let name = a.name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let metrics = a.metrics_listen.map(|addr| (addr, squall_controller::prometheus::Live::for_agent(&name)));
    let fd_limit = link::raise_fd_limit();
    let opts = LinkOptions {
        controller: a.controller.clone(),
        token,
        ca_pem,
        name,
        allow: a.allow_targets.clone(),
        source_addresses: a.source_addresses.clone(),
        lease: a.lease,
        clock: Clock::new()
            .shifted(a.test_clock_skew_ms.saturating_mul(1_000_000))
            .drifting(a.test_clock_drift_ppm.saturating_mul(1_000)),
        once: a.once,
        memory_bytes: a.test_memory_bytes,
        fd_limit,
        cores: a.threads.map(u32::from).unwrap_or_else(super::host_cores),
        tally_file: a.tally_file.clone(),
        link_version: a.test_link_version.unwrap_or(squall_proto::LINK_VERSION),
        observer: metrics
            .as_ref()
            .map(|(_, live)| Arc::new(Metrics(live.clone())) as Arc<dyn link::Observer>),
    };
    // the engine's runtime; the link keeps its own (this thread), so heartbeats never queue
    // behind 20k clients
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = a.threads {
        builder.worker_threads(n as usize);
    }
    let engine = match super::runtime(builder.thread_name("engine")) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    if let Some(ms) = a.test_engine_stall_ms {
        // the engine's client threads taken away, as a busy host or a noisy neighbour would
        squall_agent::lanes::stall_for_tests(ms);
    }
    let link_rt = match super::runtime(&mut tokio::runtime::Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    tracing::info!(controller = %opts.controller, name = %opts.name, fd_limit, "Agent starting");
    let result = link_rt.block_on(async {
        if let Some((addr, live)) = metrics {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    tokio::spawn(squall_controller::prometheus::serve(l, live));
                }
                Err(e) => {
                    return Err(LinkError::Refused(format!(
                        "cannot serve metrics on {addr}: {e} (is the port taken?)"
                    )));
                }
            }
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            super::run::interrupted().await;
            let _ = stop_tx.send(true);
        });
        link::serve(opts, engine.handle().clone(), stop_rx).await
    });
    engine.shutdown_timeout(Duration::from_secs(5));
    match result {
        Ok(()) => exit::PASS,
        Err(e @ LinkError::Refused(_)) => {
            eprintln!("error: {e}");
            exit::INVALID
        }
        Err(e @ LinkError::Unreachable(_)) => {
            eprintln!("error: {e}");
            exit::RUNTIME
        }
    }
}

/// The most groups named in `/metrics` (a rogue controller's group index cannot make more).
const MAX_GROUPS: usize = 1024;

/// `--metrics-listen`: the agent's snapshots, as it sends them, into the Prometheus state.
#[derive(Debug)]
struct Metrics(squall_controller::prometheus::Live);

impl link::Observer for Metrics {
    fn assigned(&self, a: &Assignment) {
        let n = a.groups.iter().map(|g| g.group as usize + 1).max().unwrap_or(0).min(MAX_GROUPS);
        let mut names: Vec<String> = (0..n).map(|i| format!("group-{i}")).collect();
        for g in a.groups.iter().filter(|g| (g.group as usize) < n) {
            names[g.group as usize] = g.spec.name.clone();
        }
        self.0.set_groups(names);
    }

    fn event(&self, ev: &AgentEvent) {
        if let AgentEvent::Snapshot(s) = ev {
            self.0.apply(s);
        }
    }
}
