//! `squall controller SCENARIO --listen ADDR --agents N --token-file F`: waits for N agents to
//! dial in, splits the scenario among them, runs it, and writes one merged report.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use squall_controller::coordinator::{self, RunSetup};
use squall_controller::link::{self, LinkSettings, RemoteAgents, ServerTls};
use squall_proto::auth::Token;
use squall_proto::target::TargetUrl;

use super::exit;
use super::run::{ScenarioArgs, interrupted, parse_duration, start_failed};

#[derive(Debug, Args)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub scenario: ScenarioArgs,
    /// Where agents dial in (e.g. 0.0.0.0:7878; port 0 picks a free one and prints it).
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Agents the run needs; it starts when this many have attached.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub agents: u32,
    /// File holding the shared token (at least 16 bytes; agents use the same file).
    #[arg(long, value_name = "FILE")]
    pub token_file: PathBuf,
    /// PEM certificate (chain) for TLS on the agent link.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Allow a plaintext link on a non-loopback address (the token still never travels, but
    /// the assignment and results do, in the clear).
    #[arg(long)]
    pub insecure_link: bool,
    /// Give up if the agents have not all attached within this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub agent_timeout: Duration,
    /// An agent silent this long is lost (agents stop their load after the same silence).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub lease: Duration,
    /// An agent's share of every group, by its --name (default: its core count). Repeat per agent.
    #[arg(long = "agent-weight", value_name = "NAME=W", value_parser = parse_weight)]
    pub agent_weights: Vec<(String, u32)>,
    /// An agent's clients connect to this broker instead of the scenario's targets, by its
    /// --name (repeat for several URLs or agents): agents in zone A → broker node A.
    #[arg(long = "agent-target", value_name = "NAME=URL", value_parser = parse_agent_target)]
    pub agent_targets: Vec<(String, TargetUrl)>,
}

fn parse_agent_target(s: &str) -> Result<(String, TargetUrl), String> {
    let (name, url) = s.split_once('=').ok_or("expected NAME=URL, e.g. zone-a-1=mqtt://broker-a:1883")?;
    let url: TargetUrl = url.trim().parse().map_err(|e| format!("`{url}`: {e}"))?;
    Ok((name.trim().to_string(), url))
}

fn parse_weight(s: &str) -> Result<(String, u32), String> {
    let (name, w) = s.split_once('=').ok_or("expected NAME=WEIGHT, e.g. a1=4")?;
    let w: u32 = w.trim().parse().map_err(|_| format!("weight `{w}` is not a whole number"))?;
    if !(1..=10_000).contains(&w) {
        return Err(format!("weight {w} is out of range 1..=10000"));
    }
    Ok((name.trim().to_string(), w))
}

pub fn run(a: ControllerArgs) -> u8 {
    let plan = match a.scenario.plan_to_run() {
        Ok(p) => p,
        Err(code) => return code,
    };
    if plan.targets.is_empty() {
        eprintln!(
            "error: the scenario names no target: give the broker agents load with [target] urls or --target"
        );
        return exit::INVALID;
    }
    let token = match Token::from_file(&a.token_file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::INVALID;
        }
    };
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => match (std::fs::read(c), std::fs::read(k)) {
            (Ok(cert_pem), Ok(key_pem)) => Some(ServerTls { cert_pem, key_pem }),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("error: cannot read the link's TLS certificate or key: {e}");
                return exit::INVALID;
            }
        },
        _ => None,
    };
    if tls.is_none() && !a.listen.ip().is_loopback() {
        if !a.insecure_link {
            eprintln!(
                "error: a plaintext agent link on {} (not loopback): give --tls-cert and --tls-key, or --insecure-link to accept it",
                a.listen
            );
            return exit::INVALID;
        }
        eprintln!("warning: the agent link on {} is plaintext (--insecure-link)", a.listen);
    }
    let rt = match super::runtime(&mut tokio::runtime::Builder::new_multi_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(a.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {}: {e}", a.listen);
                return exit::RUNTIME;
            }
        };
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let settings = LinkSettings { token, lease: a.lease, tls: tls.is_some() };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut lobby = match link::serve(listener, settings, tls, async {
            let _ = stop_rx.await;
        }) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot serve agents: {e}");
                return exit::INVALID;
            }
        };
        eprintln!("waiting for {} agent(s) on {addr}", a.agents);
        let n = a.agents;
        let gathered = tokio::select! {
            g = lobby.gather(n as usize, a.agent_timeout, |names| eprintln!("{}/{n} agents: {}", names.len(), names.join(", "))) => g,
            _ = interrupted() => Err("interrupted while waiting for agents".into()),
        };
        let agents = match gathered {
            Ok(agents) => agents,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::RUNTIME;
            }
        };
        let targets = plan.targets.clone();
        let run = format!("{:08x}", plan.run_tag);
        let setup = RunSetup {
            plan,
            targets,
            embedded_broker: false,
            live: a.scenario.live_mode(),
            soak_log: a.scenario.soak_log.clone(),
            metrics_listen: a.scenario.metrics_listen,
            broker_pid: a.scenario.broker_pid,
        };
        let remote = RemoteAgents { agents, run, weights: a.agent_weights, targets: a.agent_targets };
        if let Err(e) = remote.check_names() {
            eprintln!("error: {e}");
            return exit::INVALID;
        }
        let sys = a.scenario.broker_sys.then(|| super::broker_sys::SysWatch::start(&setup.plan, &setup.targets[0]));
        let result = coordinator::run(setup, remote, interrupted()).await;
        let broker_sys = match sys {
            Some(w) => Some(w.finish().await),
            None => None,
        };
        let code = match result {
            Ok(mut report) => {
                report.broker_sys = broker_sys;
                a.scenario.finish(&report)
            }
            Err(e) => start_failed(e),
        };
        // let the agents hear that the run is over before the endpoint goes
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = stop_tx.send(());
        code
    })
}
