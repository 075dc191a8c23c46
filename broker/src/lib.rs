//! squall's embedded MQTT broker: a real broker (3.1.1 and 5, TCP and TLS, WebSocket on either, QoS 0/1/2,
//! retained messages, wills, persistent sessions, shared subscriptions) with fault injection,
//! so that a run needs nothing installed and squall's numbers can be checked against a known
//! truth.
//!
//! # Layout
//! - [`codec`]: the server side of ntex-mqtt's codecs: protocol detection, one inbound enum.
//! - `connection`: one task per client: CONNECT, packets in and out, keepalive, the will.
//! - [`session`]: what outlives a connection: subscriptions, queue, in-flight, QoS 2 ids.
//! - [`router`]: routing a message: topic tree, retained store, QoS downgrade, bounded queues.
//! - [`topic`]: the subscription tree, with shared-subscription groups.
//! - [`faults`]: injected misbehaviour: delays, withheld acks, refusals, drops, stalls.
//! - `delay`: the precise delay line for injected delays (tokio's timer is 1 ms coarse).
//! - [`timeline`]: per-client packet timestamps, for judging client behaviour.
//! - [`stats`]: counters, readable at any time.
//! - [`tls`]: listener TLS (server certificate, optional client CA).
//! - `ws`: MQTT over WebSocket, through tungstenite, as the byte stream a connection reads.

pub mod codec;
mod connection;
mod delay;
pub mod faults;
pub mod router;
pub mod session;
pub mod stats;
pub mod timeline;
pub mod tls;
pub mod topic;
mod ws;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ntex_bytes::ByteString;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use codec::{ConnectInfo, WillInfo};
pub use faults::{AckPacket, Action, Delay, Faults, InPacket, Rule, Selector, Stall};
use router::Router;
use session::{Link, Session};
pub use stats::StatsSnapshot;
pub use timeline::{PacketEvent, Timeline};
pub use tls::TlsFiles;

/// One listening socket.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Port 0: the OS picks one ([`Broker::addrs`] tells which).
    pub addr: SocketAddr,
    pub tls: Option<TlsFiles>,
    /// MQTT over WebSocket (on TLS too, with `tls`): any path, subprotocol `mqtt`.
    pub ws: bool,
}

impl Listener {
    /// MQTT straight over TCP on `addr`.
    pub fn tcp(addr: SocketAddr) -> Listener {
        Listener { addr, tls: None, ws: false }
    }
}

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub listeners: Vec<Listener>,
    /// username → password. Empty: no password check.
    pub users: Vec<(String, String)>,
    /// Accept clients that send no username.
    pub allow_anonymous: bool,
    pub max_connections: usize,
    /// Messages queued per client; beyond it they are dropped and counted.
    pub max_queue: usize,
    /// QoS 1/2 messages in flight to a client (its receive maximum may lower it).
    pub max_inflight: u16,
    pub max_packet_size: u32,
    /// CONNECT must arrive within this after the connection opens.
    pub connect_timeout: Duration,
    pub faults: Vec<Rule>,
    pub stalls: Vec<Stall>,
    /// PUBLISH packets taken a second, all clients together, at most (see
    /// [`Faults::limit_publishes`]).
    pub publishes_per_sec: Option<f64>,
    /// Record every client's packet timeline (costs memory; off for load runs).
    pub timeline: bool,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listeners: vec![Listener::tcp("127.0.0.1:0".parse().expect("valid"))],
            users: Vec::new(),
            allow_anonymous: true,
            max_connections: 100_000,
            max_queue: 10_000,
            max_inflight: 1024,
            max_packet_size: 16 << 20,
            connect_timeout: Duration::from_secs(10),
            faults: Vec::new(),
            stalls: Vec::new(),
            publishes_per_sec: None,
            timeline: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr}: {source} (is another broker using the port?)")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

pub(crate) struct Shared {
    pub config: BrokerConfig,
    pub users: HashMap<String, String>,
    pub router: Router,
    pub sessions: Mutex<HashMap<ByteString, Arc<Session>>>,
    pub stats: stats::Stats,
    pub faults: Faults,
    pub timeline: Timeline,
    delay: delay::DelayLine,
    start: Instant,
    next_id: AtomicU64,
    /// Connections the broker chose to drop ([`Broker::drop_client`]), until they notice.
    dropping: Mutex<Vec<u64>>,
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    /// ns since the broker started (the timeline's clock).
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Relaxed) + 1
    }

    /// Whether connection `conn` was kicked to be dropped (not taken over); forgets it.
    pub fn take_drop(&self, conn: u64) -> bool {
        let mut d = self.dropping.lock().unwrap_or_else(|e| e.into_inner());
        let found = d.iter().position(|c| *c == conn);
        found.map(|i| d.swap_remove(i)).is_some()
    }

    /// Finds or makes the session of `client_id` and attaches connection `conn` to it; an
    /// attached connection is kicked (takeover). Returns (session, session present).
    pub fn attach(
        &self,
        client_id: &ByteString,
        c: &ConnectInfo,
        conn: u64,
        kick: Arc<Notify>,
        expire: bool,
    ) -> (Arc<Session>, bool) {
        let link = Link { conn, kick, receive_max: c.receive_max.max(1) };
        let mut discard = None;
        let mut map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get(client_id).cloned() {
            let mut st = s.lock();
            if let Some(old) = st.link.take() {
                old.kick.notify_one();
            }
            if !(c.clean_start || expire) {
                st.generation += 1;
                st.link = Some(link);
                st.expiry_secs = c.session_expiry;
                return (s.clone(), true);
            }
            st.ended = true;
            discard = Some((s.clone(), std::mem::take(&mut st.subscriptions)));
        }
        let s = Session::new(self.id(), client_id.clone());
        {
            let mut st = s.lock();
            st.link = Some(link);
            st.expiry_secs = c.session_expiry;
            st.generation = 1;
        }
        if map.insert(client_id.clone(), s.clone()).is_none() {
            self.stats.sessions.fetch_add(1, Relaxed);
        }
        drop(map);
        if let Some((old, subs)) = discard {
            self.unsubscribe_all(&old, &subs);
        }
        (s, false)
    }

    fn unsubscribe_all(&self, s: &Session, subs: &[(String, codec::SubOpts)]) {
        let mut tree = self.router.tree.write().unwrap_or_else(|e| e.into_inner());
        for (f, _) in subs {
            if tree.unsubscribe(f, s.id) {
                self.stats.subscriptions.fetch_sub(1, Relaxed);
            }
        }
    }

    /// Connection `conn` of `session` ended: its will (unless it left cleanly), and the
    /// session's expiry.
    pub fn detach(self: &Arc<Self>, session: &Arc<Session>, conn: u64, will: Option<WillInfo>) {
        let (mine, generation, expiry) = {
            let mut st = session.lock();
            let mine = st.link.as_ref().is_some_and(|l| l.conn == conn);
            if mine {
                st.link = None;
            }
            (mine, st.generation, st.expiry_secs)
        };
        if let Some(w) = will {
            let delay = w.delay_secs.min(expiry);
            if delay == 0 {
                self.publish_will(&w, session.id);
            } else {
                // MQTT 5 will delay: only if the session is not resumed in the meantime
                let sh = self.clone();
                let s = session.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(delay as u64)).await;
                    let resumed = {
                        let st = s.lock();
                        st.generation != generation || st.link.is_some()
                    };
                    if !resumed {
                        sh.publish_will(&w, s.id);
                    }
                });
            }
        }
        if !mine {
            return; // taken over: the session lives on with its new connection
        }
        match expiry {
            0 => self.end_session(session),
            u32::MAX => {}
            secs => {
                let sh = self.clone();
                let s = session.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(secs as u64)).await;
                    let idle = {
                        let st = s.lock();
                        st.generation == generation && st.link.is_none()
                    };
                    if idle {
                        sh.end_session(&s);
                    }
                });
            }
        }
    }

    fn end_session(&self, session: &Arc<Session>) {
        let subs = {
            let mut st = session.lock();
            if st.ended {
                return;
            }
            st.ended = true;
            st.outbox.clear();
            st.inflight.clear();
            std::mem::take(&mut st.subscriptions)
        };
        {
            let mut map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            if map.get(&session.client_id).is_some_and(|s| Arc::ptr_eq(s, session)) {
                map.remove(&session.client_id);
                self.stats.sessions.fetch_sub(1, Relaxed);
            }
        }
        self.unsubscribe_all(session, &subs);
    }

    fn publish_will(&self, w: &WillInfo, origin: u64) {
        self.stats.wills_published.fetch_add(1, Relaxed);
        let mut scratch = Vec::new();
        self.router.publish(connection::will_message(w, origin), &self.stats, &mut scratch);
    }
}

/// A client's byte stream.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// MQTT over WebSocket, on TCP or TLS.
    Ws(Box<ws::WsIo<Stream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A running broker. Dropping it does not stop it; call [`Broker::shutdown`].
pub struct Broker {
    sh: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
}

impl Broker {
    /// Binds every listener and starts serving on the current tokio runtime.
    pub async fn start(config: BrokerConfig) -> Result<Broker, BrokerError> {
        let (tx, rx) = watch::channel(false);
        let mut bound = Vec::new();
        for l in &config.listeners {
            let listener = listen(l.addr).map_err(|source| BrokerError::Bind { addr: l.addr, source })?;
            let tls = match &l.tls {
                Some(f) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(f)?)),
                None => None,
            };
            bound.push((listener, tls, l.ws));
        }
        let sh = Arc::new(Shared {
            users: config.users.iter().cloned().collect(),
            router: Router::new(config.max_queue),
            sessions: Mutex::new(HashMap::new()),
            stats: stats::Stats::default(),
            faults: Faults::new(config.faults.clone()),
            timeline: Timeline::new(config.timeline),
            delay: delay::DelayLine::start(),
            start: Instant::now(),
            next_id: AtomicU64::new(0),
            dropping: Mutex::new(Vec::new()),
            shutdown: rx,
            config,
        });
        sh.faults.limit_publishes(sh.config.publishes_per_sec);
        for s in sh.config.stalls.clone() {
            let sh = sh.clone();
            tokio::spawn(async move {
                tokio::time::sleep(s.at).await;
                sh.faults.stall_until(sh.now_ns() + s.duration.as_nanos() as u64);
            });
        }
        let mut addrs = Vec::new();
        for (listener, tls, ws) in bound {
            addrs.push(
                listener.local_addr().map_err(|source| BrokerError::Bind {
                    addr: "0.0.0.0:0".parse().expect("valid"),
                    source,
                })?,
            );
            tokio::spawn(accept_loop(sh.clone(), listener, tls, ws));
        }
        tracing::info!(?addrs, "Broker listening");
        Ok(Broker { sh, addrs, shutdown: tx })
    }

    /// The first listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.sh.stats.snapshot()
    }

    /// The fault rules: add some at any time (they apply to new connections).
    pub fn faults(&self) -> &Faults {
        &self.sh.faults
    }

    /// Stalls the whole broker for `d` from now: nothing is read or written.
    pub fn stall_for(&self, d: Duration) {
        self.sh.faults.stall_until(self.sh.now_ns() + d.as_nanos() as u64);
    }

    /// Drops the connection `client_id` has now, if any (as a network failure would: no
    /// DISCONNECT; its will is published). Returns whether there was one.
    pub fn drop_client(&self, client_id: &str) -> bool {
        let map = self.sh.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = map.get(client_id) else { return false };
        let st = s.lock();
        let Some(link) = st.link.as_ref() else { return false };
        {
            let mut d = self.sh.dropping.lock().unwrap_or_else(|e| e.into_inner());
            if d.len() < 1024 {
                d.push(link.conn);
            }
        }
        link.kick.notify_one();
        true
    }

    /// The subscriptions `client_id`'s session holds now (filter, QoS granted).
    pub fn subscriptions(&self, client_id: &str) -> Vec<(String, u8)> {
        let map = self.sh.sessions.lock().unwrap_or_else(|e| e.into_inner());
        map.get(client_id).map_or_else(Vec::new, |s| {
            s.lock().subscriptions.iter().map(|(f, o)| (f.clone(), u8::from(o.qos))).collect()
        })
    }

    /// Publishes a message into the broker as if a client had (origin 0: no client's no-local
    /// applies). Returns how many subscriptions it reached.
    pub fn publish(&self, topic: &str, payload: Vec<u8>, qos: u8, retain: bool) -> usize {
        let qos = match qos {
            0 => codec::QoS::AtMostOnce,
            1 => codec::QoS::AtLeastOnce,
            _ => codec::QoS::ExactlyOnce,
        };
        let msg = Arc::new(session::Message {
            topic: ByteString::from(topic),
            payload: payload.into(),
            qos,
            retain,
            origin: 0,
        });
        let mut scratch = Vec::new();
        self.sh.router.publish(msg, &self.sh.stats, &mut scratch)
    }

    /// The packet timeline of one client (needs `timeline = true`).
    pub fn timeline(&self, client_id: &str) -> Vec<PacketEvent> {
        self.sh.timeline.of(client_id)
    }

    /// `client_id`'s timeline from its `from`-th event on.
    pub fn timeline_since(&self, client_id: &str, from: usize) -> Vec<PacketEvent> {
        self.sh.timeline.since(client_id, from)
    }

    /// ns since the broker started: the timeline's clock.
    pub fn now_ns(&self) -> u64 {
        self.sh.now_ns()
    }

    /// Events of `client_id` the timeline had no room for (see [`timeline::MAX_EVENTS`]).
    pub fn timeline_dropped(&self, client_id: &str) -> u64 {
        self.sh.timeline.dropped(client_id)
    }

    pub fn timeline_clients(&self) -> Vec<String> {
        self.sh.timeline.clients()
    }

    /// Stops accepting, tells every client (MQTT 5: DISCONNECT 0x8B), closes.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        // connections notice at their next turn; give them a moment to say goodbye
        for _ in 0..50 {
            if self.sh.stats.connections.load(Relaxed) <= 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A listening socket with a backlog for connect storms (tokio's default is 1024; the kernel
/// caps it at `net.core.somaxconn`). An overflowing accept queue drops SYNs, which clients
/// retry only after a second.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(65_535)
}

async fn accept_loop(
    sh: Arc<Shared>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ws: bool,
) {
    let mut shutdown = sh.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        let tcp = match accepted {
            Ok((tcp, _peer)) => tcp,
            Err(e) => {
                // out of file descriptors: back off a little instead of spinning
                tracing::warn!(error = %e, "Accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let sh = sh.clone();
        let tls = tls.clone();
        let id = sh.id();
        tokio::spawn(async move {
            let stream = match tls {
                None => Stream::Tcp(tcp),
                Some(acceptor) => {
                    match tokio::time::timeout(sh.config.connect_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => Stream::Tls(Box::new(s)),
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    }
                }
            };
            let stream = if ws {
                let upgrade = ws::accept(stream, sh.config.max_packet_size);
                match tokio::time::timeout(sh.config.connect_timeout, upgrade).await {
                    Ok(Ok(w)) => Stream::Ws(Box::new(w)),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "WebSocket handshake failed");
                        return;
                    }
                    Err(_) => return,
                }
            } else {
                stream
            };
            connection::serve(sh, stream, id).await;
        });
    }
}
