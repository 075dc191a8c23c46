//! `--broker-sys`: one more client, apart from the load, subscribed to the first target's
//! `$SYS/#` for the whole run; what it hears becomes the report's `broker_sys` (the broker's
//! memory, messages, bytes and clients, as it counts them). For a broker on another host, where
//! `--broker-pid` cannot read `/proc`.

use std::time::Duration;

use squall_agent::mqtt::codec::{ConnectSpec, Protocol, QoS};
use squall_agent::mqtt::transport::Endpoint;
use squall_check::client::Client;
use squall_controller::broker_sys::{BrokerSys, SysSampler};
use squall_controller::scenario::Plan;
use squall_proto::target::TargetUrl;
use tokio::sync::watch;

/// Waits on the broker that long for each step (connect, SUBACK).
const STEP: Duration = Duration::from_secs(5);
/// At the end, how long to wait for the broker's next `$SYS` batch (mosquitto's default
/// `sys_interval` is 10 s).
const LAST_BATCH: Duration = Duration::from_secs(11);
/// A PINGREQ this often (the keepalive is twice it).
const IDLE: Duration = Duration::from_secs(15);

/// The sampling client, until [`SysWatch::finish`].
pub struct SysWatch {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<BrokerSys>,
}

impl SysWatch {
    /// Starts sampling `target` with the scenario's TLS material and the first credentials
    /// its groups give (brokers often keep `$SYS` behind an ACL).
    pub fn start(plan: &Plan, target: &TargetUrl) -> SysWatch {
        let (stop, stopped) = watch::channel(false);
        let creds = plan.groups.iter().find(|g| g.username.is_some());
        let spec = ConnectSpec::clean(
            &format!("squall-sys-{:08x}", plan.run_tag),
            creds.and_then(|g| g.username.as_deref()),
            creds.and_then(|g| g.password.as_deref()),
            (IDLE.as_secs() * 2) as u16,
        );
        let (target, tls) = (target.clone(), plan.tls.clone());
        let task = tokio::spawn(async move {
            let mut s = SysSampler::new(&target.to_string());
            if let Err(why) = sample(&target, &tls, &spec, &mut s, stopped).await {
                s.failed(why);
            }
            s.finish()
        });
        SysWatch { stop, task }
    }

    /// Stops sampling; what was heard.
    pub async fn finish(self) -> BrokerSys {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_else(|e| BrokerSys {
            error: Some(format!("the $SYS client failed: {e}")),
            ..Default::default()
        })
    }
}

async fn sample(
    target: &TargetUrl,
    tls: &squall_proto::tls::TlsMaterial,
    spec: &ConnectSpec,
    s: &mut SysSampler,
    stopped: watch::Receiver<bool>,
) -> Result<(), String> {
    let tls = if target.tls {
        let cfg = squall_agent::mqtt::tls::client_config(tls).map_err(|e| format!("TLS: {e}"))?;
        let name =
            squall_agent::mqtt::tls::server_name(tls, &target.host).map_err(|e| format!("TLS: {e}"))?;
        Some((cfg, name))
    } else {
        None
    };
    let ep = Endpoint::resolve(target, tls).await.map_err(|e| format!("cannot resolve {target}: {e}"))?;
    let (mut c, ack) = Client::connect(&ep, spec, Protocol::V311, STEP).await.map_err(|e| e.to_string())?;
    if ack.code != 0 {
        return Err(format!("the broker refused the $SYS client (CONNACK code {})", ack.code));
    }
    let codes = c.subscribe("$SYS/#", QoS::AtMostOnce, STEP).await.map_err(|e| e.to_string())?;
    if codes.iter().any(|&c| c >= 0x80) {
        return Err(format!("the broker refused the $SYS/# subscription (SUBACK 0x{:02x})", codes[0]));
    }
    tracing::debug!(%target, "Sampling the broker's $SYS topics");
    let lost = |e| format!("the $SYS client lost the broker: {e}");
    // the keepalive counts what the client sends: a PINGREQ every IDLE, messages or not
    let mut pinged = tokio::time::Instant::now();
    // recv waits at most a second: the stop is seen within one (and no read is cut short)
    // (a dropped sender stops it too)
    while !*stopped.borrow() && stopped.has_changed().is_ok() {
        if let Some(m) = c.recv(Duration::from_secs(1)).await.map_err(lost)? {
            s.observe(&m.topic, &m.payload);
        }
        if pinged.elapsed() >= IDLE {
            c.ping(STEP).await.map_err(lost)?;
            pinged = tokio::time::Instant::now();
        }
    }
    // the run is over: wait for the broker's next $SYS batch (bounded), so the last values
    // include the run's end; a broker that published nothing is not waited for
    if s.heard() > 0 {
        let before = s.heard();
        let until = tokio::time::Instant::now() + LAST_BATCH;
        while s.heard() == before && tokio::time::Instant::now() < until {
            if let Some(m) = c.recv(Duration::from_millis(200)).await.map_err(lost)? {
                s.observe(&m.topic, &m.payload);
            }
        }
        // the rest of the batch (bounded: a broker may never fall quiet)
        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        while tokio::time::Instant::now() < until {
            match c.recv(Duration::from_millis(300)).await.map_err(lost)? {
                Some(m) => s.observe(&m.topic, &m.payload),
                None => break,
            }
        }
    }
    c.disconnect().await;
    Ok(())
}
