//! The controller's side of the gRPC link: agents dial in, prove they hold the token, wait in
//! the [`Lobby`] until a run needs them, then become [`AgentLink`]s for the coordinator.
//!
//! One task per attached agent ([`session`]) owns its stream: it answers the handshake, pings
//! (for the clock offset, and so the agent's lease stays fresh), converts commands to wire
//! messages and wire events back, and ends — closing the agent's event channel, which the
//! coordinator reads as "agent lost" — when the agent says nothing for a lease.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use squall_proto::LINK_VERSION;
use squall_proto::auth::{self, Role, Token};
use squall_proto::clock::Clock;
use squall_proto::link::{AgentEvent, Command};
use squall_proto::plan::Assignment;
use squall_proto::replay::{Inbox, Outbox};
use squall_proto::target::TargetUrl;
use squall_proto::wire::pb::controller_server::{Controller, ControllerServer};
use squall_proto::wire::{self, Chunks, pb};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::clock_offset::{ClockEstimate, Estimator};
use crate::coordinator::{AgentLink, Agents, StartError};

/// How the controller's endpoint behaves.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    pub token: Token,
    /// An agent silent this long is lost (and an agent that hears nothing this long stops).
    pub lease: Duration,
    /// The link is TLS: broker passwords may travel to remote agents.
    pub tls: bool,
}

/// gRPC messages can carry a few MiB: snapshots are KBs, stream lists travel in chunks.
const MAX_MESSAGE: usize = 16 << 20;
/// How long the handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Ping period once the clock estimate has its first samples, and before.
const PING_EVERY: Duration = Duration::from_millis(500);
const PING_FAST: Duration = Duration::from_millis(50);
const FAST_PINGS: u64 = 20;

/// What an agent offers, from its Hello.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capacity {
    pub cores: u32,
    pub fd_limit: u64,
    pub source_addresses: Vec<String>,
    pub allowed_targets: Vec<String>,
}

/// What a link carried, for the report.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Bytes of everything the agent sent since it attached (protobuf encoding).
    pub bytes_in: AtomicU64,
    /// Times its connection broke mid-run and the agent resumed the run over a new one.
    pub resumes: AtomicU64,
}

/// An agent that attached and proved it holds the token.
pub struct Attached {
    pub name: String,
    pub peer: Option<SocketAddr>,
    pub capacity: Capacity,
    /// The link is TLS, or the agent is on this host.
    pub secure: bool,
    to_agent: mpsc::Sender<ToAgent>,
    events: mpsc::Receiver<AgentEvent>,
    clock: watch::Receiver<ClockEstimate>,
    stats: Arc<LinkStats>,
}

enum ToAgent {
    Assign { run: String, assignment: Box<Assignment>, reply: oneshot::Sender<Result<(), String>> },
    Command(Command),
}

/// Where attached agents wait for a run.
pub struct Lobby {
    arrivals: mpsc::Receiver<Attached>,
}

#[derive(Clone)]
struct Service {
    settings: LinkSettings,
    arrivals: mpsc::Sender<Attached>,
    /// Names of the agents attached now (a second agent with a taken name is refused).
    names: Arc<Mutex<HashSet<String>>>,
    /// By agent name: the run it runs, and where a new connection resuming it goes.
    resumable: Arc<Mutex<HashMap<String, (String, mpsc::Sender<Resumed>)>>>,
    clock: Clock,
}

/// A new connection from an agent whose connection broke mid-run, past the handshake.
struct Resumed {
    inbound: Streaming<pb::AgentMessage>,
    out: Out,
    peer: Option<SocketAddr>,
    /// The last controller message the agent has.
    received_seq: u64,
}

/// Locks, whether or not a holder panicked (the maps stay consistent: one insert or remove).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// TLS identity for the controller's endpoint (PEM).
pub struct ServerTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// Starts serving agents on `listener`; runs until `shutdown` completes.
pub fn serve(
    listener: tokio::net::TcpListener,
    settings: LinkSettings,
    tls: Option<ServerTls>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Lobby, tonic::transport::Error> {
    let (arrivals_tx, arrivals) = mpsc::channel(64);
    let svc = Service {
        settings: settings.clone(),
        arrivals: arrivals_tx,
        names: Default::default(),
        resumable: Default::default(),
        clock: Clock::new(),
    };
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(2)))
        .http2_keepalive_timeout(Some(settings.lease));
    if let Some(t) = tls {
        let identity = tonic::transport::Identity::from_pem(t.cert_pem, t.key_pem);
        builder = builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    }
    let server = ControllerServer::new(svc).max_decoding_message_size(MAX_MESSAGE);
    let router = builder.add_service(server);
    tokio::spawn(async move {
        if let Err(e) = router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown).await
        {
            tracing::error!(error = %e, "The agent endpoint failed");
        }
    });
    Ok(Lobby { arrivals })
}

#[tonic::async_trait]
impl Controller for Service {
    type AttachStream = ReceiverStream<Result<pb::ControllerMessage, Status>>;

    async fn attach(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let peer = req.remote_addr();
        let inbound = req.into_inner();
        let (out, out_rx) = mpsc::channel(256);
        tokio::spawn(session(self.clone(), peer, inbound, out));
        Ok(Response::new(ReceiverStream::new(out_rx)))
    }
}

type Out = mpsc::Sender<Result<pb::ControllerMessage, Status>>;

fn body(b: pb::controller_message::Body) -> pb::ControllerMessage {
    pb::ControllerMessage { body: Some(b), seq: 0 }
}

fn msg(b: pb::controller_message::Body) -> Result<pb::ControllerMessage, Status> {
    Ok(body(b))
}

async fn refuse(out: &Out, reason: pb::refusal::Reason, message: String) {
    tracing::warn!(%message, "Refused an agent");
    let _ = out
        .send(msg(pb::controller_message::Body::Refusal(pb::Refusal { reason: reason as i32, message })))
        .await;
}

/// Reads the next message within `within`.
async fn next(
    inbound: &mut Streaming<pb::AgentMessage>,
    within: Duration,
) -> Option<pb::agent_message::Body> {
    match tokio::time::timeout(within, inbound.message()).await {
        Ok(Ok(Some(m))) => m.body,
        _ => None,
    }
}

/// Unacknowledged messages to an agent, at most (it acknowledges every ping).
const OUTBOX_LIMIT: usize = 100_000;

/// One attached agent, from Hello to the end of its stream.
async fn session(svc: Service, peer: Option<SocketAddr>, mut inbound: Streaming<pb::AgentMessage>, out: Out) {
    use pb::agent_message::Body as A;
    use pb::controller_message::Body as C;
    let token = &svc.settings.token;
    let Some(A::Hello(hello)) = next(&mut inbound, HANDSHAKE).await else {
        tracing::warn!(?peer, "A connection on the agent endpoint sent no Hello; closed");
        return;
    };
    if hello.link_version != LINK_VERSION {
        let m = format!(
            "agent `{}` speaks link version {} (squall {}); this controller speaks {} (squall {}): run the same squall version on both",
            hello.name,
            hello.link_version,
            hello.squall_version,
            LINK_VERSION,
            env!("CARGO_PKG_VERSION")
        );
        return refuse(&out, pb::refusal::Reason::Version, m).await;
    }
    let nonce = auth::nonce();
    let proof = token.prove(Role::Controller, &hello.nonce, &nonce);
    if out.send(msg(C::Challenge(pb::Challenge { nonce: nonce.to_vec(), proof }))).await.is_err() {
        return;
    }
    let Some(A::Auth(a)) = next(&mut inbound, HANDSHAKE).await else {
        tracing::warn!(?peer, name = %hello.name, "An agent did not complete the handshake (it may have refused this controller's proof: tokens differ)");
        return;
    };
    if !token.verify(Role::Agent, &nonce, &hello.nonce, &a.proof) {
        let m =
            format!("agent `{}` at {peer:?} did not prove it holds the token: the tokens differ", hello.name);
        return refuse(&out, pb::refusal::Reason::Auth, m).await;
    }
    if !hello.resume_run.is_empty() {
        let slot = lock(&svc.resumable)
            .get(&hello.name)
            .filter(|(run, _)| *run == hello.resume_run)
            .map(|(_, tx)| tx.clone());
        let resumed = Resumed { inbound, out, peer, received_seq: hello.resume_received_seq };
        let refused = match slot {
            Some(tx) => match tx.send(resumed).await {
                Ok(()) => return,
                Err(mpsc::error::SendError(r)) => r,
            },
            None => resumed,
        };
        let m = format!(
            "agent `{}` asked to go on with run {}, which this controller no longer runs with it (the run ended, or the agent was given up after the lease)",
            hello.name, hello.resume_run
        );
        return refuse(&refused.out, pb::refusal::Reason::RunOver, m).await;
    }
    if !lock(&svc.names).insert(hello.name.clone()) {
        let m =
            format!("an agent named `{}` is attached already: give each agent its own --name", hello.name);
        return refuse(&out, pb::refusal::Reason::DuplicateName, m).await;
    }
    let cap = hello.capacity.unwrap_or_default();
    let capacity = Capacity {
        cores: cap.cores.max(1),
        fd_limit: cap.fd_limit,
        source_addresses: cap.source_addresses,
        allowed_targets: cap.allowed_targets,
    };
    let (to_agent_tx, to_agent) = mpsc::channel(64);
    let (events_tx, events) = mpsc::channel(1024);
    let (clock_tx, clock) = watch::channel(ClockEstimate::default());
    let secure = svc.settings.tls || peer.is_some_and(|p| p.ip().is_loopback());
    tracing::info!(name = %hello.name, ?peer, cores = capacity.cores, "Agent attached");
    let stats = Arc::new(LinkStats::default());
    let attached = Attached {
        name: hello.name.clone(),
        peer,
        capacity,
        secure,
        to_agent: to_agent_tx,
        events,
        clock,
        stats: stats.clone(),
    };
    if svc.arrivals.send(attached).await.is_err() {
        lock(&svc.names).remove(&hello.name);
        return refuse(&out, pb::refusal::Reason::NotNeeded, "this controller needs no more agents".into())
            .await;
    }
    let (resume_tx, resume_rx) = mpsc::channel(1);
    let mut state = AgentSession {
        svc: &svc,
        name: &hello.name,
        conn: Some((inbound, out)),
        resume_tx,
        resume_rx,
        to_agent,
        events: events_tx,
        clock_tx,
        stats: &stats,
        outbox: Outbox::new(OUTBOX_LIMIT),
        inbox: Inbox::default(),
        estimator: Estimator::default(),
        chunks: Chunks::new(0),
        run: None,
        reply: None,
        accepted: false,
        last_fit: None,
    };
    let why = state.run().await;
    tracing::info!(name = %hello.name, why, "Agent detached");
    lock(&svc.resumable).remove(&hello.name);
    lock(&svc.names).remove(&hello.name);
}

/// One attached agent after the handshake: pings, assignment, commands down, events up, over
/// one connection after another (an agent whose connection breaks mid-run dials again and
/// resumes, within the lease).
struct AgentSession<'a> {
    svc: &'a Service,
    name: &'a str,
    /// The current connection; none while the agent is dialing again.
    conn: Option<(Streaming<pb::AgentMessage>, Out)>,
    resume_tx: mpsc::Sender<Resumed>,
    resume_rx: mpsc::Receiver<Resumed>,
    to_agent: mpsc::Receiver<ToAgent>,
    events: mpsc::Sender<AgentEvent>,
    clock_tx: watch::Sender<ClockEstimate>,
    stats: &'a LinkStats,
    outbox: Outbox<pb::ControllerMessage>,
    inbox: Inbox,
    estimator: Estimator,
    /// The stream list of the agent's next PublishDone, as its chunks arrive.
    chunks: Chunks,
    /// The run assigned (its id), and the answer awaited to its assignment.
    run: Option<String>,
    reply: Option<oneshot::Sender<Result<(), String>>>,
    /// The agent accepted its run: its clock follows the fits sent from then on.
    accepted: bool,
    /// When the last clock fit was sent.
    last_fit: Option<tokio::time::Instant>,
}

/// How often the agent gets the clock fit (it changes slowly).
const FIT_EVERY: Duration = Duration::from_secs(1);

/// What one agent message did.
enum Took {
    Going,
    /// The session ends, for this reason.
    End(&'static str),
}

impl AgentSession<'_> {
    /// Sends a numbered message (kept until the agent acknowledges it). A broken connection
    /// keeps it for the next one.
    async fn send_numbered(&mut self, m: pb::ControllerMessage) -> Result<(), &'static str> {
        let m = self.outbox.stamp(m).map_err(|_| "it stopped acknowledging")?;
        if let Some((_, out)) = &self.conn
            && out.send(Ok(m)).await.is_err()
        {
            self.conn = None;
        }
        Ok(())
    }

    /// Takes one message from the agent.
    async fn take(&mut self, m: pb::AgentMessage) -> Took {
        use pb::agent_message::Body as A;
        use pb::controller_message::Body as C;
        self.stats.bytes_in.fetch_add(wire::agent_message_len(&m) as u64, Ordering::Relaxed);
        match self.inbox.accept(m.seq) {
            Ok(true) => {}
            Ok(false) => return Took::Going, // replayed, and taken before
            Err(gap) => {
                tracing::error!(name = self.name, %gap, "An agent's messages skipped");
                return Took::End("its messages skipped");
            }
        }
        let Some(body) = m.body else { return Took::Going };
        match body {
            A::Pong(p) => {
                self.outbox.ack(p.received_seq);
                if let Some(mut est) =
                    self.estimator.add(p.ping_sent_unix_ns, p.agent_unix_ns, self.svc.clock.now_ns())
                {
                    est.start_offset_ns = self.clock_tx.borrow().start_offset_ns;
                    let _ = self.clock_tx.send(est);
                }
                let due = self.last_fit.is_none_or(|t| t.elapsed() >= FIT_EVERY);
                if self.accepted
                    && due
                    && let Some(f) = self.estimator.fit()
                    && let Some((_, out)) = &self.conn
                {
                    self.last_fit = Some(tokio::time::Instant::now());
                    let fit = pb::ClockFit {
                        offset_ns: f.offset_ns,
                        at_unix_ns: f.at_unix_ns,
                        drift_ppb: f.drift_ppb,
                    };
                    let _ = out.send(msg(C::ClockFit(fit))).await;
                }
            }
            A::AssignReply(r) => {
                if let Some(tx) = self.reply.take() {
                    self.accepted = r.accepted;
                    if r.accepted
                        && let Some(run) = &self.run
                    {
                        // from now on a new connection from this agent may resume the run
                        lock(&self.svc.resumable)
                            .insert(self.name.to_string(), (run.clone(), self.resume_tx.clone()));
                    }
                    let _ = tx.send(if r.accepted { Ok(()) } else { Err(r.reason) });
                }
            }
            A::StreamFinals(c) => {
                if let Err(e) = self.chunks.push(c) {
                    tracing::error!(error = %e, "An agent sent a broken stream list");
                    return Took::End("it sent a broken stream list");
                }
            }
            A::Event(e) => match wire::event_from_wire(e, &mut self.chunks) {
                Ok(ev) => {
                    if self.events.send(ev).await.is_err() {
                        return Took::End("the run no longer listens");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "An agent sent a broken event");
                    return Took::End("it sent a broken event");
                }
            },
            A::Hello(_) | A::Auth(_) => return Took::End("it repeated its handshake"),
        }
        Took::Going
    }

    /// Runs to the end of the attachment; returns why it ended.
    async fn run(&mut self) -> &'static str {
        use pb::controller_message::Body as C;
        let lease = self.svc.settings.lease;
        let mut ping_id = 0u64;
        let mut next_ping = tokio::time::Instant::now();
        let mut lease_end = tokio::time::Instant::now() + lease;
        loop {
            let connected = self.conn.is_some();
            let inbound = async {
                match self.conn.as_mut() {
                    Some((inbound, _)) => inbound.message().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next_ping), if connected => {
                    ping_id += 1;
                    let ping = pb::Ping { id: ping_id, sent_unix_ns: self.svc.clock.now_ns(), received_seq: self.inbox.received() };
                    if let Some((_, out)) = &self.conn && out.send(msg(C::Ping(ping))).await.is_err() {
                        self.conn = None;
                    }
                    next_ping += if ping_id < FAST_PINGS { PING_FAST } else { PING_EVERY };
                }
                _ = tokio::time::sleep_until(lease_end) => return "it said nothing for a lease",
                m = inbound => match m {
                    Ok(Some(m)) => {
                        lease_end = tokio::time::Instant::now() + lease;
                        if let Took::End(why) = self.take(m).await {
                            return why;
                        }
                    }
                    Ok(None) | Err(_) => {
                        if self.run.is_none() {
                            return "its stream ended";
                        }
                        tracing::warn!(name = self.name, "An agent's connection broke mid-run; waiting (for up to the lease) for it to resume");
                        self.conn = None;
                    }
                },
                Some(r) = self.resume_rx.recv() => {
                    // a new connection from the agent (the old one may not have looked broken
                    // from here yet): go on over it, each side replaying what the other missed
                    tracing::info!(name = self.name, peer = ?r.peer, "Agent resumed its run over a new connection");
                    self.stats.resumes.fetch_add(1, Ordering::Relaxed);
                    let resume = pb::Resume { received_seq: self.inbox.received() };
                    let _ = r.out.send(msg(C::Resume(resume))).await;
                    for m in self.outbox.resume(r.received_seq) {
                        let _ = r.out.send(Ok(m.clone())).await;
                    }
                    self.conn = Some((r.inbound, r.out));
                    lease_end = tokio::time::Instant::now() + lease;
                }
                cmd = self.to_agent.recv(), if connected => match cmd {
                    Some(ToAgent::Assign { run: id, mut assignment, reply: r }) => {
                        let est = *self.clock_tx.borrow();
                        assignment.clock_offset_ns = est.offset_ns;
                        self.clock_tx.send_modify(|e| e.start_offset_ns = Some(est.offset_ns));
                        // the agent may publish as many streams as it runs publishing clients
                        self.chunks = Chunks::new(assignment.groups.iter().filter(|g| g.spec.publish.is_some()).map(|g| g.count as usize).sum());
                        let m = body(C::Assign(pb::Assign { run: id.clone(), assignment: Some((&*assignment).into()) }));
                        self.run = Some(id);
                        self.reply = Some(r);
                        if let Err(why) = self.send_numbered(m).await {
                            return why;
                        }
                    }
                    Some(ToAgent::Command(c)) => {
                        for m in wire::command_messages(&c) {
                            if let Err(why) = self.send_numbered(m).await {
                                return why;
                            }
                        }
                    }
                    None => {
                        // the run is over: tell the agent, then take what its engine still
                        // reports (after an abort, its last snapshot) until it closes its stream
                        lock(&self.svc.resumable).remove(self.name);
                        let Some((mut inbound, out)) = self.conn.take() else { return "its run is over" };
                        let refusal = pb::Refusal { reason: pb::refusal::Reason::RunOver as i32, message: "the run is over".into() };
                        let _ = out.send(msg(C::Refusal(refusal))).await;
                        let _ = tokio::time::timeout(Duration::from_secs(10), async {
                            while let Ok(Some(m)) = inbound.message().await {
                                if let Took::End(_) = self.take(m).await {
                                    return;
                                }
                            }
                        })
                        .await;
                        return "its run is over";
                    }
                }
            }
        }
    }
}

impl Lobby {
    /// Waits until `n` agents are attached, calling `progress` with their names at each
    /// arrival. Fails at `timeout` with the names of those that came.
    pub async fn gather(
        &mut self,
        n: usize,
        timeout: Duration,
        mut progress: impl FnMut(&[String]),
    ) -> Result<Vec<Attached>, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut agents: Vec<Attached> = Vec::with_capacity(n);
        while agents.len() < n {
            match tokio::time::timeout_at(deadline, self.arrivals.recv()).await {
                Ok(Some(a)) => {
                    agents.push(a);
                    let names: Vec<String> = agents.iter().map(|a| a.name.clone()).collect();
                    progress(&names);
                }
                Ok(None) => return Err("the agent endpoint stopped".into()),
                Err(_) => {
                    let names: Vec<&str> = agents.iter().map(|a| a.name.as_str()).collect();
                    return Err(format!(
                        "{} of {n} agents attached within {} ({}); start more with `squall agent --controller URL --token-file F`, or raise --agent-timeout",
                        agents.len(),
                        humantime::format_duration(timeout),
                        if names.is_empty() { "none".to_string() } else { names.join(", ") }
                    ));
                }
            }
        }
        Ok(agents)
    }
}

/// Attached agents as the coordinator's [`Agents`].
pub struct RemoteAgents {
    pub agents: Vec<Attached>,
    /// The run's id (hex run tag), for agents' "busy with run R".
    pub run: String,
    /// Weights set by name (`--agent-weight NAME=W`); the others weigh their cores.
    pub weights: Vec<(String, u32)>,
    /// Targets set by name (`--agent-target NAME=URL`, repeatable): that agent's clients
    /// connect there instead of to the scenario's targets (agents in zone A → broker node A).
    pub targets: Vec<(String, TargetUrl)>,
}

impl RemoteAgents {
    /// Checks that every weight and target names an attached agent.
    pub fn check_names(&self) -> Result<(), String> {
        let named = self.weights.iter().map(|(n, _)| (n, "--agent-weight"));
        for (name, flag) in named.chain(self.targets.iter().map(|(n, _)| (n, "--agent-target"))) {
            if !self.agents.iter().any(|a| &a.name == name) {
                let names: Vec<&str> = self.agents.iter().map(|a| a.name.as_str()).collect();
                return Err(format!(
                    "{flag} names agent `{name}`, which is not attached (attached: {})",
                    names.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// How long an agent may take to accept its assignment (it raises limits, resolves targets).
const ASSIGN_TIMEOUT: Duration = Duration::from_secs(30);

impl Agents for RemoteAgents {
    fn weights(&self) -> Vec<u32> {
        self.agents
            .iter()
            .map(|a| {
                let set = self.weights.iter().rev().find(|(n, _)| *n == a.name).map(|(_, w)| *w);
                set.unwrap_or(a.capacity.cores.max(1))
            })
            .collect()
    }

    async fn start(self, assignments: Vec<Assignment>) -> Result<Vec<AgentLink>, StartError> {
        let mut replies = Vec::new();
        for (agent, mut a) in self.agents.iter().zip(assignments) {
            let own: Vec<TargetUrl> =
                self.targets.iter().filter(|(n, _)| *n == agent.name).map(|(_, t)| t.clone()).collect();
            if !own.is_empty() {
                a.targets = own;
            }
            // the group's password, or any of its devices' from an identities file
            let has_password = a
                .groups
                .iter()
                .any(|g| g.spec.password.is_some() || g.identities.iter().any(|i| i.password.is_some()));
            if has_password && !agent.secure {
                return Err(StartError::Invalid(format!(
                    "the scenario has broker passwords and agent `{}` is attached over a plaintext link from {:?}: passwords travel only over TLS (--tls-cert/--tls-key) or loopback",
                    agent.name, agent.peer
                )));
            }
            // one link message carries it: a share of identities past that needs more agents
            let size = squall_proto::wire::assignment_len(&a);
            if size > MAX_MESSAGE - (64 << 10) {
                return Err(StartError::Invalid(format!(
                    "agent `{}`'s assignment is {:.1} MiB (its share of the groups' identities), more than one link message carries ({} MiB): attach more agents, or give their weights so that each takes less",
                    agent.name,
                    size as f64 / (1 << 20) as f64,
                    MAX_MESSAGE >> 20
                )));
            }
            // wait briefly for a first clock sample, so the start offset is an estimate
            let mut clock = agent.clock.clone();
            let _ = tokio::time::timeout(Duration::from_secs(2), clock.wait_for(|e| e.samples >= 3)).await;
            let (tx, rx) = oneshot::channel();
            let sent = agent
                .to_agent
                .send(ToAgent::Assign { run: self.run.clone(), assignment: Box::new(a), reply: tx })
                .await;
            if sent.is_err() {
                return Err(StartError::Runtime(format!(
                    "agent `{}` was lost before its assignment",
                    agent.name
                )));
            }
            replies.push(rx);
        }
        for (agent, rx) in self.agents.iter().zip(replies) {
            match tokio::time::timeout(ASSIGN_TIMEOUT, rx).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(reason))) => {
                    return Err(StartError::Runtime(format!(
                        "agent `{}` refused its assignment: {reason}",
                        agent.name
                    )));
                }
                Ok(Err(_)) => {
                    return Err(StartError::Runtime(format!(
                        "agent `{}` was lost before it accepted its assignment",
                        agent.name
                    )));
                }
                Err(_) => {
                    return Err(StartError::Runtime(format!(
                        "agent `{}` did not answer its assignment within {}",
                        agent.name,
                        humantime::format_duration(ASSIGN_TIMEOUT)
                    )));
                }
            }
        }
        Ok(self
            .agents
            .into_iter()
            .map(|a| {
                let (cmd_tx, mut cmd_rx) = mpsc::channel::<Command>(16);
                let to_agent = a.to_agent;
                tokio::spawn(async move {
                    while let Some(c) = cmd_rx.recv().await {
                        if to_agent.send(ToAgent::Command(c)).await.is_err() {
                            return;
                        }
                    }
                    // dropping `to_agent` ends the session once the coordinator is done
                });
                AgentLink {
                    name: a.name,
                    commands: cmd_tx,
                    events: a.events,
                    clock: Some(a.clock),
                    link: Some(a.stats),
                    cores: a.capacity.cores,
                }
            })
            .collect())
    }
}
