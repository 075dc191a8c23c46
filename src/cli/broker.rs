//! `squall broker`: the embedded broker, standalone.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use squall_broker::{Broker, BrokerConfig, Listener, TlsFiles};

use super::exit;

#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Plain TCP listener (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub listen: SocketAddr,
    /// TLS listener address (needs --tls-cert and --tls-key).
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Option<SocketAddr>,
    /// MQTT over WebSocket listener address (any path; subprotocol mqtt).
    #[arg(long, value_name = "ADDR")]
    pub ws_listen: Option<SocketAddr>,
    /// MQTT over WebSocket over TLS listener address (needs --tls-cert and --tls-key).
    #[arg(long, value_name = "ADDR")]
    pub wss_listen: Option<SocketAddr>,
    /// PEM certificate chain for the TLS listeners.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the TLS listeners.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mutual TLS).
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// A user, as NAME:PASSWORD (repeatable). With users, anonymous clients are refused.
    #[arg(long = "user", value_name = "NAME:PASSWORD", value_parser = parse_user)]
    pub users: Vec<(String, String)>,
    /// Fault injection rules (TOML; see the README's "Fault injection").
    #[arg(long, value_name = "FILE")]
    pub faults: Option<PathBuf>,
    /// Most connections at once.
    #[arg(long, default_value_t = 100_000)]
    pub max_connections: usize,
    /// Messages queued per client before new ones are dropped (and counted).
    #[arg(long, default_value_t = 10_000)]
    pub max_queue: usize,
}

fn parse_user(s: &str) -> Result<(String, String), String> {
    let (u, p) = s.split_once(':').ok_or("write NAME:PASSWORD")?;
    Ok((u.to_string(), p.to_string()))
}

pub fn run(a: BrokerArgs) -> u8 {
    let mut config = BrokerConfig {
        listeners: vec![Listener::tcp(a.listen)],
        allow_anonymous: a.users.is_empty(),
        users: a.users.clone(),
        max_connections: a.max_connections,
        max_queue: a.max_queue,
        ..BrokerConfig::default()
    };
    if let Some(addr) = a.ws_listen {
        config.listeners.push(Listener { addr, tls: None, ws: true });
    }
    let tls_wanted = a.tls_listen.is_some() || a.wss_listen.is_some();
    if !tls_wanted && (a.tls_cert.is_some() || a.tls_key.is_some() || a.tls_client_ca.is_some()) {
        eprintln!("error: --tls-cert, --tls-key and --tls-client-ca are for --tls-listen or --wss-listen");
        return exit::INVALID;
    }
    for (addr, ws) in [(a.tls_listen, false), (a.wss_listen, true)] {
        let Some(addr) = addr else { continue };
        let (Some(cert), Some(key)) = (a.tls_cert.clone(), a.tls_key.clone()) else {
            let flag = if ws { "--wss-listen" } else { "--tls-listen" };
            eprintln!("error: {flag} needs --tls-cert and --tls-key");
            return exit::INVALID;
        };
        let tls = Some(TlsFiles { cert, key, client_ca: a.tls_client_ca.clone() });
        config.listeners.push(Listener { addr, tls, ws });
    }
    if let Some(path) = &a.faults {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", path.display());
                return exit::INVALID;
            }
        };
        match squall_broker::faults::parse_file(&text) {
            Ok(plan) => {
                config.faults = plan.rules;
                config.stalls = plan.stalls;
                config.publishes_per_sec = plan.publishes_per_sec;
            }
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                return exit::INVALID;
            }
        }
    }
    let rt = match super::runtime(&mut tokio::runtime::Builder::new_multi_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let broker = match Broker::start(config).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::RUNTIME;
            }
        };
        for addr in broker.addrs() {
            println!("squall broker listening on {addr}");
        }
        let _ = tokio::signal::ctrl_c().await;
        let stats = broker.stats();
        broker.shutdown().await;
        eprintln!("{}", serde_json::to_string(&stats).unwrap_or_default());
        exit::PASS
    })
}
