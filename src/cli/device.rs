//! `squall device`: the device-conformance endpoint (see the `squall-device` crate).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use squall_broker::{Broker, BrokerConfig, Listener, TlsFiles};
use squall_device::report::{self, DeviceReport};
use squall_device::run::Endpoint;
use squall_device::suite::{self, Case};

use super::exit;

#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// Where the device connects (with --tls-cert and --tls-key: over TLS).
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub listen: SocketAddr,
    /// A suite file in Device Advisor's shape ({"tests": [{"name", "configuration", "test": {"id"}}]}).
    #[arg(long, value_name = "FILE", conflicts_with = "case", required_unless_present = "case")]
    pub suite: Option<PathBuf>,
    /// Run this case with its defaults (repeatable), e.g. MQTT_Connect.
    #[arg(long, value_name = "ID")]
    pub case: Vec<String>,
    /// Only the client with this id is the device (default: the first client that connects).
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,
    /// PEM certificate chain: the endpoint speaks TLS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require device certificates signed by this CA (mutual TLS).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// How long squall gives the device to do something more once what a case waits for has
    /// happened (a SUBACK to arrive before a drop, a SUBSCRIBE that must not come). Devices
    /// whose timing is scaled down (tests) can use less.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Write the JSON report here (schema: `squall init --schema device-report`).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Write a JUnit XML report here.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
}

fn cases(a: &DeviceArgs) -> Result<Vec<Case>, String> {
    if let Some(path) = &a.suite {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        return suite::parse(&text).map_err(|e| format!("{}: {e}", path.display()));
    }
    a.case.iter().map(|id| suite::default_case(id).map_err(|e| e.to_string())).collect()
}

pub fn run(a: DeviceArgs) -> u8 {
    let cases = match cases(&a) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::INVALID;
        }
    };
    if a.settle > Duration::from_secs(60) {
        eprintln!(
            "error: --settle {} is over a minute: a case would wait that long for nothing",
            humantime::format_duration(a.settle)
        );
        return exit::INVALID;
    }
    let tls = a.tls_cert.clone().zip(a.tls_key.clone()).map(|(cert, key)| TlsFiles {
        cert,
        key,
        client_ca: a.tls_client_ca.clone(),
    });
    let config = BrokerConfig {
        listeners: vec![Listener { addr: a.listen, tls, ws: false }],
        timeline: true,
        // a device's CONNECT may be slow (constrained hardware, a TLS handshake on a slow link)
        connect_timeout: Duration::from_secs(30),
        ..BrokerConfig::default()
    };
    let rt = match super::runtime(&mut tokio::runtime::Builder::new_multi_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let broker = match Broker::start(config).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: {e}");
                return match e {
                    squall_broker::BrokerError::Tls(_) => exit::INVALID,
                    _ => exit::RUNTIME,
                };
            }
        };
        let listen: Vec<String> = broker.addrs().iter().map(|a| a.to_string()).collect();
        println!("squall device listening on {}", listen.join(", "));
        let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let mut ep = Endpoint::new(broker, a.client_id.clone(), a.settle);
        let mut results = Vec::new();
        let mut interrupted = false;
        let total = cases.len();
        for (i, case) in cases.iter().enumerate() {
            let prefix = format!("[{}/{total}] {}", i + 1, case.name);
            let mut say = |s: &str| eprintln!("{prefix}: {s}");
            let r = tokio::select! {
                r = ep.run(case, &mut say) => r,
                _ = tokio::signal::ctrl_c() => { interrupted = true; break }
            };
            eprintln!("{}", report::line(&r));
            results.push(r);
        }
        let r = DeviceReport::new(listen, started_at, results);
        print!("{}", report::text(&r));
        let mut code = if interrupted {
            exit::INTERRUPTED
        } else if r.ok {
            exit::PASS
        } else {
            exit::FAIL
        };
        if let Some(path) = &a.report {
            let json = serde_json::to_string_pretty(&r).unwrap_or_default();
            if let Err(e) = std::fs::write(path, json) {
                eprintln!("error: cannot write {}: {e}", path.display());
                code = exit::RUNTIME;
            }
        }
        if let Some(path) = &a.junit
            && let Err(e) = std::fs::write(path, report::junit(&r))
        {
            eprintln!("error: cannot write {}: {e}", path.display());
            code = exit::RUNTIME;
        }
        ep.broker.shutdown().await;
        code
    })
}
