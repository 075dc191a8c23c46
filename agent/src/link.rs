//! The agent's side of the gRPC link: dial the controller (with jittered backoff), check that
//! it holds the token before taking any work, run one assignment at a time on the engine
//! runtime, and stop all load the moment the controller goes quiet for a lease.
//!
//! This runs on its own runtime (its own thread), apart from the engine's: an agent busy with
//! 20k clients still answers pings and keeps its lease.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use squall_proto::auth::{self, Role, Token};
use squall_proto::clock::Clock;
use squall_proto::link::AgentEvent;
use squall_proto::plan::Assignment;
use squall_proto::replay::{Full, Inbox, Outbox};
use squall_proto::wire::pb::controller_client::ControllerClient;
use squall_proto::wire::{self, Chunks, pb};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::engine::{self, AgentHandle};

/// What `squall agent` was told.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// `http://host:port` or `https://host:port`.
    pub controller: String,
    pub token: Token,
    /// For https: the CA to trust (pinned: the system roots are not used).
    pub ca_pem: Option<Vec<u8>>,
    pub name: String,
    /// Targets this agent may load; empty = any.
    pub allow: Vec<AllowRule>,
    /// Addresses this agent may bind clients to (offered to the controller).
    pub source_addresses: Vec<IpAddr>,
    /// Stop all load after hearing nothing from the controller this long.
    pub lease: Duration,
    /// The agent's clock (a test may skew it).
    pub clock: Clock,
    /// Serve one run (or one refusal), then return.
    pub once: bool,
    /// The open-file limit (after raising the soft limit to the hard one).
    pub fd_limit: u64,
    /// The cores it offers: its engine threads (default: the host's cores).
    pub cores: u32,
    /// Where to write this agent's own tally after each run (JSON), if anywhere.
    pub tally_file: Option<std::path::PathBuf>,
    /// The link version this agent speaks ([`squall_proto::LINK_VERSION`]; tests set others).
    pub link_version: u32,
    /// Memory available to runs, bytes; `None` = read it when a run is offered (tests set it).
    pub memory_bytes: Option<u64>,
    /// Told of every run accepted and every event sent up (`--metrics-listen`).
    pub observer: Option<Arc<dyn Observer>>,
}

/// Sees what this agent does as it reports it: each run it accepts, and each event of the run
/// as it goes up the link (snapshots, the end). Called on the link's thread: keep it short.
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// A run was accepted, with this assignment (before its engine starts).
    fn assigned(&self, a: &Assignment);
    /// An event of the run, as it is sent to the controller.
    fn event(&self, ev: &AgentEvent);
}

/// How serving ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The controller and this agent cannot work together (token, version, name): a person
    /// must change a setting.
    #[error("{0}")]
    Refused(String),
    /// `--once`: the controller could not be reached, or the link was lost.
    #[error("{0}")]
    Unreachable(String),
}

/// A target the agent accepts: an address range, or one host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowRule {
    Cidr { net: IpAddr, prefix: u8 },
    HostPort { host: String, port: u16 },
}

impl std::str::FromStr for AllowRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let hint = "write an address range (127.0.0.0/8, ::1/128, 10.1.2.3) or HOST:PORT (broker.lab:1883)";
        if let Some((ip, prefix)) = s.split_once('/') {
            let net: IpAddr = ip.parse().map_err(|_| format!("`{ip}` is not an IP address; {hint}"))?;
            let max = if net.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix
                .parse()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`/{prefix}`: prefix must be 0–{max}"))?;
            return Ok(AllowRule::Cidr { net, prefix });
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(AllowRule::Cidr { net: ip, prefix: if ip.is_ipv4() { 32 } else { 128 } });
        }
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(AllowRule::HostPort { host: sa.ip().to_string(), port: sa.port() });
        }
        match s.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() => Ok(AllowRule::HostPort {
                host: h.to_ascii_lowercase(),
                port: p.parse().map_err(|_| format!("`{p}` is not a port; {hint}"))?,
            }),
            _ => Err(format!("`{s}`: {hint}")),
        }
    }
}

impl std::fmt::Display for AllowRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AllowRule::Cidr { net, prefix } => write!(f, "{net}/{prefix}"),
            AllowRule::HostPort { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Whether `host:port`, resolving to `addrs`, is allowed: a host:port rule names it, or every
/// address it resolves to lies in a range (a name that resolves partly outside is refused).
pub fn allowed(rules: &[AllowRule], host: &str, port: u16, addrs: &[IpAddr]) -> bool {
    if rules.is_empty() {
        return true;
    }
    let named = rules.iter().any(|r| matches!(r, AllowRule::HostPort { host: h, port: p } if *p == port && h.eq_ignore_ascii_case(host)));
    named
        || (!addrs.is_empty()
            && addrs.iter().all(|ip| {
                rules
                    .iter()
                    .any(|r| matches!(r, AllowRule::Cidr { net, prefix } if in_net(*ip, *net, *prefix)))
            }))
}

/// Raises the soft open-file limit to the hard one; returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let raised = libc::rlimit { rlim_cur: r.rlim_max, rlim_max: r.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
        r.rlim_cur
    }
}

/// Ephemeral ports per (source address, destination): the kernel's local port range.
fn ports_per_source() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u32>().ok());
            Some(it.next()??.abs_diff(it.next()??) + 1)
        })
        .unwrap_or(28_232)
}

/// Memory this process may still take, bytes: the host's MemAvailable, or less if its cgroup
/// (a container's limit) leaves less; 0 = unknown.
pub fn available_memory() -> u64 {
    let host = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024);
    let read =
        |f: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{f}")).ok()?.trim().parse::<u64>().ok();
    match (read("memory.max"), read("memory.current")) {
        (Some(max), Some(cur)) if host == 0 => max.saturating_sub(cur),
        (Some(max), Some(cur)) => host.min(max.saturating_sub(cur)),
        _ => host,
    }
}

/// Checks that an assignment's estimated memory fits in 80 % of `available` bytes (0 =
/// unknown: not checked), before anything is allocated for it.
pub fn check_memory(a: &Assignment, available: u64) -> Result<(), String> {
    let needed = a.memory_estimate();
    if available > 0 && needed > available / 10 * 8 {
        return Err(format!(
            "{} clients need ~{} MiB ({} KiB per connection, plus each publisher's payload once per message its QoS 1/2 in-flight window holds) and this agent has {} MiB available (MemAvailable, or its cgroup's memory.max): add agents, or lower payload_size or max_inflight",
            a.clients(),
            needed.div_ceil(1 << 20),
            squall_proto::plan::CLIENT_BYTES / 1024,
            available >> 20
        ));
    }
    Ok(())
}

/// Checks an assignment against what this agent may and can do. `Err` is the reason, for the
/// controller and its user.
pub async fn check_assignment(a: &Assignment, opts: &LinkOptions) -> Result<(), String> {
    a.validate().map_err(|e| format!("invalid assignment: {e}"))?;
    for t in &a.targets {
        let addrs: Vec<IpAddr> = match tokio::net::lookup_host((t.host.as_str(), t.port)).await {
            Ok(it) => it.map(|sa| sa.ip()).collect(),
            Err(e) => return Err(format!("cannot resolve target {t}: {e}")),
        };
        if !allowed(&opts.allow, &t.host, t.port, &addrs) {
            let rules: Vec<String> = opts.allow.iter().map(|r| r.to_string()).collect();
            return Err(format!(
                "target {t} is outside this agent's --allow-target list ({}); no MQTT traffic was sent",
                rules.join(", ")
            ));
        }
    }
    for s in &a.source_addresses {
        if !opts.source_addresses.is_empty() && !opts.source_addresses.contains(s) {
            return Err(format!("source address {s} is not one this agent offers (--source-address)"));
        }
    }
    let clients = a.clients();
    // sockets for the clients, plus room for reconnects overlapping, the link and the runtime
    let fds_needed = clients + clients / 20 + 64;
    if fds_needed > opts.fd_limit {
        return Err(format!(
            "{clients} clients need ~{fds_needed} file descriptors and this agent's limit is {} (hard limit; raise it with `ulimit -n` or LimitNOFILE=, or add agents)",
            opts.fd_limit
        ));
    }
    check_memory(a, opts.memory_bytes.unwrap_or_else(available_memory))?;
    // connections per (source address, target), as the engine spreads clients round-robin
    let n_t = a.targets.len().max(1) as u64;
    let n_s = a.source_addresses.len().max(1) as u64;
    let mut per_pair: std::collections::HashMap<(u64, u64), u64> = std::collections::HashMap::new();
    for g in &a.groups {
        for i in 0..g.count as u64 {
            let global = g.client_base as u64 + g.first as u64 + i;
            *per_pair.entry((global % n_t, global % n_s)).or_default() += 1;
        }
    }
    let ports = ports_per_source() as u64;
    if let Some(((t, _), n)) = per_pair.into_iter().max_by_key(|(_, n)| *n)
        && n > ports
    {
        return Err(format!(
            "{n} connections from one source address to {} exceed its {ports} local ports; add source addresses (--source-address 127.0.0.2 …) or agents",
            a.targets[t as usize]
        ));
    }
    Ok(())
}

/// Streams a Finish may list: every publisher of the run, whatever agent runs it. The agent
/// does not know the run's size, so this bounds what a broken controller can make it hold
/// (~50 bytes each).
const MAX_RUN_STREAMS: usize = 1 << 24;

fn jitter(max: Duration) -> Duration {
    max.mul_f64(fastrand::f64())
}

/// How long a `--once` agent keeps dialing a controller it has not reached yet.
pub const ONCE_DIAL_FOR: Duration = Duration::from_secs(60);

/// Serves controllers until `shutdown` turns true (or, with `once`, after one run).
/// The engine runs on `engine` (another runtime).
pub async fn serve(
    opts: LinkOptions,
    engine: tokio::runtime::Handle,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), LinkError> {
    let mut backoff = Duration::from_millis(250);
    let dialing_since = tokio::time::Instant::now();
    // a run whose link broke: its load goes on while the lease lasts and the agent dials again
    let mut carried: Option<Attachment> = None;
    loop {
        if *shutdown.borrow() {
            if let Some(mut att) = carried.take() {
                tracing::warn!(
                    "Stopped (signal) while the link to the controller was down: stopping all load"
                );
                if let Some(tally) = att.stop(None).await {
                    write_tally(&opts, &tally);
                }
            }
            return Ok(());
        }
        if let Some(mut att) = carried.take_if(|a| a.lease_end <= tokio::time::Instant::now()) {
            let why = format!(
                "the link to the controller stayed down for the lease ({}): all load stopped",
                humantime_secs(opts.lease)
            );
            tracing::warn!("{why}");
            if let Some(tally) = att.stop(None).await {
                write_tally(&opts, &tally);
            }
            if opts.once {
                return Err(LinkError::Unreachable(why));
            }
        }
        let ended = session(&opts, &engine, &mut shutdown, &mut carried).await;
        let mut wait = jitter(backoff);
        match ended {
            // the link broke mid-run: dial again at once (a little jitter), within the lease
            Ok(Ended::Lost(why) | Ended::Broke(why)) | Err(why) if carried.is_some() => {
                tracing::warn!(controller = %opts.controller, %why, "Link to the controller broken mid-run; the load goes on while the lease lasts, dialing again");
                wait = Duration::from_millis(50) + jitter(Duration::from_millis(200));
            }
            // not reached yet: a --once agent (a Job, a pod) may start before its controller
            // listens, so it keeps dialing for a while before giving up
            Err(why) if opts.once && dialing_since.elapsed() < ONCE_DIAL_FOR => {
                tracing::info!(controller = %opts.controller, %why, "Controller not reachable yet; dialing again");
            }
            Ok(Ended::Stopped) => return Ok(()),
            Ok(Ended::RunOver) => {
                if opts.once {
                    return Ok(());
                }
                backoff = Duration::from_millis(250);
            }
            Ok(Ended::Lost(why) | Ended::Broke(why)) | Err(why) => {
                if opts.once {
                    return Err(LinkError::Unreachable(why));
                }
                tracing::warn!(controller = %opts.controller, %why, "Link to the controller lost; dialing again");
            }
            Ok(Ended::Refused(why)) => return Err(LinkError::Refused(why)),
        }
        // full jitter: many agents losing one controller do not dial back in lockstep
        backoff = (backoff * 2).min(Duration::from_secs(10));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
}

enum Ended {
    /// Shut down by the process (SIGTERM, Ctrl-C).
    Stopped,
    /// The controller says the run is over.
    RunOver,
    /// The link was lost (or never made); dial again.
    Lost(String),
    /// The connection broke: resumable, if a run is going on.
    Broke(String),
    /// The controller refused this agent for good, or failed its proof.
    Refused(String),
}

struct Running {
    handle: AgentHandle,
    tally: Tally,
    /// What the engine's clock subtracts beyond the start offset (the clock fit's drift so far).
    correction: Arc<AtomicI64>,
    /// The offset the engine's clock was shifted by at the start (Assignment.clock_offset_ns).
    start_offset_ns: i64,
    /// The controller's latest fit of this agent's clock.
    fit: Option<pb::ClockFit>,
}

impl Running {
    /// Sets the correction from the fit, for now.
    fn follow_fit(&self, clock: &Clock) {
        let Some(f) = &self.fit else { return };
        // drift beyond 1 % is no clock: a broken controller
        let drift = f.drift_ppb.clamp(-10_000_000, 10_000_000) as i128;
        // controller time now, as near as the fit knows it
        let t = clock.now_ns() as i128 - f.offset_ns as i128;
        let offset = f.offset_ns as i128 + (t - f.at_unix_ns as i128) * drift / 1_000_000_000;
        let c = (offset - self.start_offset_ns as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64;
        self.correction.store(c, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How often the engine's clock correction follows the fit: the correction steps by at most
/// drift × this (50 ppm: 0.5 µs).
const FOLLOW_EVERY: Duration = Duration::from_millis(10);

/// Messages unacknowledged by the controller, at most: it acknowledges every ping (twice a
/// second), so only a controller that stopped acknowledging fills this.
const OUTBOX_LIMIT: usize = 100_000;

/// One attachment to a controller: what lives across a broken connection while a run goes on.
struct Attachment {
    /// The run accepted (Assign.run), until the controller says it is over.
    run: Option<String>,
    /// Its engine, until it has reported everything.
    running: Option<Running>,
    chunks: Chunks,
    outbox: Outbox<pb::AgentMessage>,
    inbox: Inbox,
    /// When the lease runs out: the last word from the controller, plus the lease.
    lease_end: tokio::time::Instant,
}

impl Attachment {
    fn new(opts: &LinkOptions) -> Attachment {
        Attachment {
            run: None,
            running: None,
            chunks: Chunks::new(0),
            outbox: Outbox::new(OUTBOX_LIMIT),
            inbox: Inbox::default(),
            lease_end: tokio::time::Instant::now() + opts.lease,
        }
    }

    /// Stops its engine, if it still runs, passing what it still reports up `out` (when there
    /// is a link); returns its tally, to write.
    async fn stop(&mut self, out: Option<&mpsc::Sender<pb::AgentMessage>>) -> Option<Tally> {
        let r = self.running.take()?;
        let (none, _) = mpsc::channel(1);
        Some(stop_engine(r, &mut self.outbox, out.unwrap_or(&none)).await)
    }
}

/// What this agent itself counted in a run, summed from the snapshots it sent up, written to
/// `--tally-file` when the run ends: a record kept apart from the controller's, so a merged
/// report can be checked against what each agent did.
#[derive(Debug, Default, serde::Serialize)]
struct Tally {
    run: String,
    agent: String,
    /// How the run ended here: finished, failed, or stopped (aborted, link lost, signal).
    end: &'static str,
    snapshots: u64,
    counters: std::collections::BTreeMap<&'static str, u64>,
    /// Its receivers' delivery totals, when it finished.
    delivery: Option<squall_proto::metrics::Delivery>,
    #[serde(skip)]
    observer: Option<Arc<dyn Observer>>,
}

impl Tally {
    fn new(run: &str, agent: &str, observer: Option<Arc<dyn Observer>>) -> Tally {
        Tally { run: run.into(), agent: agent.into(), end: "stopped", observer, ..Default::default() }
    }

    fn observe(&mut self, ev: &AgentEvent) {
        if let Some(o) = &self.observer {
            o.event(ev);
        }
        match ev {
            AgentEvent::Snapshot(s) => {
                self.snapshots += 1;
                for (k, v) in s.counters.fields() {
                    *self.counters.entry(k).or_default() += v;
                }
            }
            AgentEvent::Finished(r) => {
                self.end = "finished";
                self.delivery = Some(r.ledger.all());
            }
            AgentEvent::Failed { .. } => self.end = "failed",
            _ => {}
        }
    }

    /// Writes the tally (whole, or not at all: a temporary file renamed over the old one).
    fn write(&self, path: &std::path::Path) {
        let tmp = path.with_extension("tmp");
        let res = serde_json::to_vec_pretty(self)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, path));
        match res {
            Ok(()) => tracing::info!(path = %path.display(), "Tally written"),
            Err(e) => tracing::error!(path = %path.display(), error = %e, "Cannot write the tally"),
        }
    }
}

/// Sends an engine event up the link (as numbered wire messages, kept until acknowledged),
/// counting it in the tally. `Err` if the controller stopped acknowledging.
async fn forward(
    ev: &AgentEvent,
    tally: &mut Tally,
    outbox: &mut Outbox<pb::AgentMessage>,
    out: &mpsc::Sender<pb::AgentMessage>,
) -> Result<(), Full> {
    tally.observe(ev);
    for m in wire::event_messages(ev) {
        let m = outbox.stamp(m)?;
        // a closed link: the message stays in the outbox, for the next connection
        let _ = out.send(m).await;
    }
    Ok(())
}

async fn connect(opts: &LinkOptions) -> Result<tonic::transport::Channel, Dial> {
    let mut ep = tonic::transport::Endpoint::from_shared(opts.controller.clone())
        .map_err(|e| Dial::Refused(format!("bad controller URL `{}`: {e}", opts.controller)))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(opts.lease)
        .keep_alive_while_idle(true);
    if opts.controller.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        match &opts.ca_pem {
            Some(ca) => tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            None => {
                return Err(Dial::Refused(
                    "an https:// controller needs --ca (the CA that signed its certificate)".into(),
                ));
            }
        }
        ep = ep.tls_config(tls).map_err(|e| Dial::Refused(format!("TLS: {e}")))?;
    }
    ep.connect().await.map_err(|e| {
        let tls = tls_failure(&e);
        let why = tls.as_ref().map(|t| format!("TLS: {t}")).unwrap_or_else(|| causes(&e));
        let msg = format!("cannot reach the controller at {}: {why}", opts.controller);
        match tls {
            // a certificate this agent does not trust will not start being trusted: a person
            // must change --ca or the controller's certificate
            Some(_) => Dial::Refused(format!("{msg}; this agent trusts only the CA in --ca")),
            None => Dial::Unreachable(msg),
        }
    })
}

/// Why dialing failed.
enum Dial {
    Unreachable(String),
    /// Dialing again cannot help (a bad URL, a certificate --ca did not sign): a person must act.
    Refused(String),
}

/// The rustls error at the root of a connection failure, if it is one.
fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t.clone());
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(t) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(t.clone());
        }
        cur = err.source();
    }
    None
}

/// An error and its causes, joined: tonic's own message is only "transport error".
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = c.source();
    }
    parts.join(": ")
}

/// A connection that passed the handshake.
struct Linked {
    inbound: tonic::Streaming<pb::ControllerMessage>,
    out: mpsc::Sender<pb::AgentMessage>,
}

fn agent_msg(body: pb::agent_message::Body) -> pb::AgentMessage {
    pb::AgentMessage { body: Some(body), seq: 0 }
}

/// Dials the controller and runs the handshake (both sides prove they hold the token).
/// `resume`: the run to go on with, and the last controller message this agent has.
async fn handshake(
    opts: &LinkOptions,
    resume: Option<(String, u64)>,
) -> Result<Linked, Result<Ended, String>> {
    use pb::agent_message::Body as A;
    use pb::controller_message::Body as C;
    let channel = match connect(opts).await {
        Ok(c) => c,
        Err(Dial::Unreachable(why)) => return Err(Err(why)),
        Err(Dial::Refused(why)) => return Err(Ok(Ended::Refused(why))),
    };
    let mut client = ControllerClient::new(channel).max_decoding_message_size(16 << 20);
    let (out, out_rx) = mpsc::channel::<pb::AgentMessage>(1024);
    let nonce = auth::nonce();
    let (resume_run, resume_received_seq) = resume.unwrap_or_default();
    let hello = pb::Hello {
        name: opts.name.clone(),
        squall_version: env!("CARGO_PKG_VERSION").into(),
        link_version: opts.link_version,
        nonce: nonce.to_vec(),
        capacity: Some(pb::Capacity {
            cores: opts.cores,
            fd_limit: opts.fd_limit,
            source_addresses: opts.source_addresses.iter().map(|a| a.to_string()).collect(),
            ports_per_source: ports_per_source(),
            memory_bytes: opts.memory_bytes.unwrap_or_else(available_memory),
            allowed_targets: opts.allow.iter().map(|r| r.to_string()).collect(),
        }),
        busy_with_run: String::new(),
        resume_run,
        resume_received_seq,
    };
    let closed = || Err("link closed".to_string());
    out.send(agent_msg(A::Hello(hello))).await.map_err(|_| closed())?;
    let mut inbound = client
        .attach(ReceiverStream::new(out_rx))
        .await
        .map_err(|e| Err(format!("the controller did not accept the link: {}", e.message())))?
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), inbound.message()).await;
    let challenge = match first {
        Ok(Ok(Some(pb::ControllerMessage { body: Some(C::Challenge(c)), .. }))) => c,
        Ok(Ok(Some(pb::ControllerMessage { body: Some(C::Refusal(r)), .. }))) => return Err(Ok(refusal(r))),
        Ok(Ok(_)) => {
            return Err(Ok(Ended::Lost("the controller closed the link during the handshake".into())));
        }
        Ok(Err(e)) => return Err(Ok(Ended::Lost(format!("handshake: {}", e.message())))),
        Err(_) => return Err(Ok(Ended::Lost("the controller did not answer the handshake".into()))),
    };
    if !opts.token.verify(Role::Controller, &nonce, &challenge.nonce, &challenge.proof) {
        // a controller without the token gets no proof and no work
        return Err(Ok(Ended::Refused(format!(
            "the controller at {} could not prove it holds the token: the tokens differ, or it is not your controller; no work accepted",
            opts.controller
        ))));
    }
    let proof = opts.token.prove(Role::Agent, &challenge.nonce, &nonce);
    out.send(agent_msg(A::Auth(pb::Auth { proof }))).await.map_err(|_| closed())?;
    Ok(Linked { inbound, out })
}

/// One connection to the controller. `carried` holds a run whose previous connection broke:
/// this one resumes it. When this connection breaks mid-run, the run is left in `carried`.
async fn session(
    opts: &LinkOptions,
    engine: &tokio::runtime::Handle,
    shutdown: &mut watch::Receiver<bool>,
    carried: &mut Option<Attachment>,
) -> Result<Ended, String> {
    use pb::agent_message::Body as A;
    use pb::controller_message::Body as C;
    let resume = carried.as_ref().map(|a| (a.run.clone().unwrap_or_default(), a.inbox.received()));
    // resuming, the dial and handshake must end within the lease
    let deadline = carried.as_ref().map(|a| a.lease_end);
    let linked = tokio::select! {
        l = handshake(opts, resume) => l,
        _ = tokio::time::sleep_until(deadline.unwrap_or_else(far_future)) => {
            return Err("the controller could not be reached again within the lease".into());
        }
        _ = shutdown.changed() => return Ok(Ended::Stopped),
    };
    let Linked { mut inbound, out } = match linked {
        Ok(l) => l,
        Err(ended) => return ended,
    };
    let mut att = match carried.take() {
        None => {
            tracing::info!(controller = %opts.controller, "Attached to the controller");
            Attachment::new(opts)
        }
        Some(mut att) => {
            // the controller says what it has; each side then replays what the other missed
            match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
                Ok(Ok(Some(pb::ControllerMessage { body: Some(C::Resume(r)), .. }))) => {
                    let replay: Vec<pb::AgentMessage> = att.outbox.resume(r.received_seq).cloned().collect();
                    tracing::warn!(controller = %opts.controller, replayed = replay.len(), "Link resumed; the run goes on");
                    for m in replay {
                        let _ = out.send(m).await;
                    }
                    att.lease_end = tokio::time::Instant::now() + opts.lease;
                    att
                }
                Ok(Ok(Some(pb::ControllerMessage { body: Some(C::Refusal(r)), .. }))) => {
                    // the controller gave the run up (or is another one): no load without it
                    tracing::warn!("The controller would not resume the run: stopping all load");
                    if let Some(tally) = att.stop(Some(&out)).await {
                        write_tally(opts, &tally);
                    }
                    return Ok(Ended::Lost(format!(
                        "the controller would not resume the run: {}",
                        r.message
                    )));
                }
                _ => {
                    *carried = Some(att);
                    return Ok(Ended::Lost("the controller did not answer the resume".into()));
                }
            }
        }
    };

    let mut follow = tokio::time::interval(FOLLOW_EVERY);
    follow.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ended = loop {
        let following = att.running.as_ref().is_some_and(|r| r.fit.is_some());
        let engine_events = async {
            match att.running.as_mut() {
                Some(r) => r.handle.events.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(att.lease_end) => {
                break Ended::Lost(format!("nothing from the controller for {} (the lease): all load stopped", humantime_secs(opts.lease)));
            }
            _ = follow.tick(), if following => {
                if let Some(r) = &att.running {
                    r.follow_fit(&opts.clock);
                }
            }
            _ = shutdown.changed() => {
                if let Some(mut tally) = att.stop(Some(&out)).await {
                    let ev = AgentEvent::Failed { message: format!("agent `{}` was stopped (signal); its clients were closed", opts.name) };
                    let _ = forward(&ev, &mut tally, &mut att.outbox, &out).await;
                    tally.end = "stopped";
                    write_tally(opts, &tally);
                }
                break Ended::Stopped;
            }
            ev = engine_events => match (ev, att.running.as_mut()) {
                (Some(ev), Some(r)) => {
                    if let Err(e) = forward(&ev, &mut r.tally, &mut att.outbox, &out).await {
                        break Ended::Lost(e.to_string());
                    }
                }
                _ => {
                    if let Some(r) = att.running.take() {
                        tracing::info!(run = %r.tally.run, "Run finished on this agent");
                        write_tally(opts, &r.tally);
                    }
                }
            },
            m = inbound.message() => {
                let m = match m {
                    Ok(Some(m)) => m,
                    Ok(None) => break Ended::Broke("the controller closed the link".into()),
                    Err(e) => break Ended::Broke(format!("the link broke: {}", e.message())),
                };
                att.lease_end = tokio::time::Instant::now() + opts.lease;
                match att.inbox.accept(m.seq) {
                    Ok(true) => {}
                    Ok(false) => continue, // replayed, and taken before
                    Err(gap) => break Ended::Lost(format!("the controller's messages skipped: {gap}")),
                }
                let Some(body) = m.body else { continue };
                match body {
                    C::Ping(p) => {
                        att.outbox.ack(p.received_seq);
                        let pong = pb::Pong {
                            id: p.id,
                            ping_sent_unix_ns: p.sent_unix_ns,
                            agent_unix_ns: opts.clock.now_ns(),
                            received_seq: att.inbox.received(),
                        };
                        let _ = out.send(agent_msg(A::Pong(pong))).await;
                    }
                    C::Assign(asg) => {
                        let reply = match (&att.run, asg.assignment) {
                            (Some(run), _) => Err(format!("busy with run {run}")),
                            (None, None) => Err("an Assign without an assignment".into()),
                            (None, Some(a)) => match Assignment::try_from(a) {
                                Err(e) => Err(format!("invalid assignment: {e}")),
                                Ok(a) => match check_assignment(&a, opts).await {
                                    Err(e) => Err(e),
                                    Ok(()) => {
                                        let correction = Arc::new(AtomicI64::new(0));
                                        let start_offset_ns = a.clock_offset_ns;
                                        let clock = opts.clock.clone().corrected_by(correction.clone());
                                        if let Some(o) = &opts.observer {
                                            o.assigned(&a);
                                        }
                                        match engine.spawn(engine::start(a, clock)).await {
                                            Ok(Ok(handle)) => {
                                                att.chunks = Chunks::new(MAX_RUN_STREAMS);
                                                let tally = Tally::new(&asg.run, &opts.name, opts.observer.clone());
                                                att.run = Some(asg.run.clone());
                                                att.running = Some(Running { handle, tally, correction, start_offset_ns, fit: None });
                                                Ok(())
                                            }
                                            Ok(Err(e)) => Err(e.to_string()),
                                            Err(e) => Err(format!("the engine could not start: {e}")),
                                        }
                                    }
                                },
                            },
                        };
                        if let Err(why) = &reply {
                            tracing::warn!(%why, "Refused an assignment");
                        }
                        let r = pb::AssignReply { accepted: reply.is_ok(), reason: reply.err().unwrap_or_default(), fd_limit: opts.fd_limit };
                        match att.outbox.stamp(agent_msg(A::AssignReply(r))) {
                            Ok(m) => { let _ = out.send(m).await; }
                            Err(e) => break Ended::Lost(e.to_string()),
                        }
                    }
                    C::StreamFinals(c) => {
                        if let Err(e) = att.chunks.push(c) {
                            break Ended::Lost(format!("the controller sent a broken stream list: {e}"));
                        }
                    }
                    C::Command(c) => match wire::command_from_wire(c, &mut att.chunks) {
                        Ok(cmd) => {
                            if let Some(r) = &att.running {
                                let _ = r.handle.commands.send(cmd).await;
                            }
                        }
                        Err(e) => break Ended::Lost(format!("the controller sent a broken command: {e}")),
                    },
                    C::ClockFit(f) => {
                        if let Some(r) = att.running.as_mut() {
                            r.fit = Some(f);
                            r.follow_fit(&opts.clock);
                        }
                    }
                    C::Refusal(r) => break refusal(r),
                    C::Challenge(_) | C::Resume(_) => break Ended::Lost("the controller repeated its handshake".into()),
                }
            }
        }
    };
    if let Ended::Broke(why) = ended {
        if att.run.is_some() {
            // the load goes on while the lease lasts; serve dials again and resumes
            *carried = Some(att);
        }
        return Ok(Ended::Lost(why));
    }
    // whatever ended the link, no load goes on without a controller; what the engine still
    // reports (its last snapshot) goes up if the link still carries it
    if att.running.is_some() {
        let run = att.run.as_deref().unwrap_or_default();
        if matches!(ended, Ended::RunOver) {
            tracing::info!(run, "The run is over; closing this agent's clients");
        } else {
            tracing::warn!(run, "Stopping all load: the link to the controller ended");
        }
    }
    if let Some(tally) = att.stop(Some(&out)).await {
        write_tally(opts, &tally);
    }
    // End our stream and wait (bounded) until the controller ends its own: it does so after
    // reading ours to the end. Returning at once would drop the connection with the last
    // messages (the final snapshot) still queued in it: seen as ~0.5 s of counts missing from
    // an aborted run's report, one run in two.
    drop(out);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = inbound.message().await {}
    })
    .await;
    Ok(ended)
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}

fn write_tally(opts: &LinkOptions, tally: &Tally) {
    if let Some(path) = &opts.tally_file {
        tally.write(path);
    }
}

/// Aborts a running engine and waits (bounded) until its clients are closed, passing what it
/// still reports (its last snapshot) to `out`. Returns its tally.
async fn stop_engine(
    r: Running,
    outbox: &mut Outbox<pb::AgentMessage>,
    out: &mpsc::Sender<pb::AgentMessage>,
) -> Tally {
    let Running { handle, mut tally, .. } = r;
    let AgentHandle { commands, mut events } = handle;
    let _ = commands.try_send(squall_proto::link::Command::Abort);
    drop(commands);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = events.recv().await {
            if forward(&ev, &mut tally, outbox, out).await.is_err() {
                return;
            }
        }
    })
    .await;
    tally
}

fn refusal(r: pb::Refusal) -> Ended {
    use pb::refusal::Reason;
    match Reason::try_from(r.reason) {
        Ok(Reason::RunOver) => Ended::RunOver,
        Ok(Reason::NotNeeded) => Ended::Lost(format!("the controller needs no more agents: {}", r.message)),
        _ => Ended::Refused(format!("the controller refused this agent: {}", r.message)),
    }
}

fn humantime_secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_rules_parse_and_match() {
        let r: Vec<AllowRule> =
            ["127.0.0.0/8", "::1", "broker.lab:1883"].iter().map(|s| s.parse().unwrap()).collect();
        let lo: IpAddr = "127.0.0.5".parse().unwrap();
        let out: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(allowed(&r, "127.0.0.5", 1, &[lo]));
        assert!(allowed(&r, "::1", 1, &["::1".parse().unwrap()]));
        assert!(!allowed(&r, "10.0.0.1", 1883, &[out]));
        assert!(
            allowed(&r, "BROKER.lab", 1883, &[out]),
            "a named host:port is allowed whatever it resolves to"
        );
        assert!(!allowed(&r, "broker.lab", 1884, &[out]));
        assert!(!allowed(&r, "mixed", 1, &[lo, out]), "every address must be inside");
        assert!(allowed(&[], "anything", 1, &[out]), "no list: anything");
        assert!("10.0.0.0/33".parse::<AllowRule>().is_err());
        assert!("nonsense".parse::<AllowRule>().is_err());
    }
}
