//! Byte streams to the broker: TCP or TLS over TCP, and MQTT over WebSocket on either, from a
//! chosen local source address.
//!
//! One source IP can hold ~28k connections to one broker address (the ephemeral port range);
//! binding clients round-robin to several loopback or interface addresses lifts that limit.
//! `IP_BIND_ADDRESS_NO_PORT` defers the port choice to `connect()`, so a bound socket does not
//! reserve a port per address up front.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
pub use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub use squall_proto::target::{TargetUrl, UrlError};

/// A resolved target, ready to connect to many times.
#[derive(Clone)]
pub struct Endpoint {
    pub url: TargetUrl,
    pub addr: SocketAddr,
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Endpoint {
    /// Resolves the URL once (DNS is not part of what squall measures per connection).
    pub async fn resolve(
        url: &TargetUrl,
        tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    ) -> io::Result<Endpoint> {
        let addr = tokio::net::lookup_host((url.host.as_str(), url.port))
            .await?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address for host"))?;
        Ok(Endpoint { url: url.clone(), addr, tls: tls.map(|(cfg, name)| (TlsConnector::from(cfg), name)) })
    }
}

/// Why a stream could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectFailure {
    #[error("connection refused")]
    Refused,
    #[error("network unreachable")]
    Unreachable,
    #[error("no local port free for this source address (add source addresses)")]
    NoLocalPort,
    #[error("too many open files (raise `ulimit -n`, or spread clients over more agents)")]
    TooManyOpenFiles,
    #[error("connection reset during connect")]
    Reset,
    #[error("I/O error: {0}")]
    Io(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    WebSocket(String),
}

impl ConnectFailure {
    pub fn from_io(e: &io::Error) -> ConnectFailure {
        match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => ConnectFailure::Refused,
            Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => ConnectFailure::Unreachable,
            Some(libc::EADDRNOTAVAIL) | Some(libc::EADDRINUSE) => ConnectFailure::NoLocalPort,
            Some(libc::EMFILE) | Some(libc::ENFILE) => ConnectFailure::TooManyOpenFiles,
            Some(libc::ECONNRESET) => ConnectFailure::Reset,
            _ => ConnectFailure::Io(e.kind().to_string()),
        }
    }
}

/// A byte stream to the broker.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// MQTT over WebSocket, on TCP or TLS.
    Ws(Box<WsStream>),
}

/// MQTT over WebSocket: the bytes of binary frames, read from and written to the stream below
/// (see [`websocket`](super::websocket)).
pub struct WsStream {
    inner: Stream,
    /// Read off the stream below and not yet deframed (an incomplete header or control frame).
    raw: Vec<u8>,
    /// Deframed payload not yet handed on, from `plain_at`.
    plain: Vec<u8>,
    plain_at: usize,
    /// How long ago the newest byte of the read that brought `plain` arrived (TCP below only).
    age: Option<u64>,
    deframer: super::websocket::Deframer,
    /// Frames (data, pongs, the close) not yet taken by the stream below, from `out_at`.
    out: Vec<u8>,
    out_at: usize,
    /// This side sent its close.
    closing: bool,
    /// `raw` holds bytes that came with the handshake's answer, not yet deframed.
    unfed: bool,
}

/// Bytes read from below at a time.
const WS_READ: usize = 16 << 10;

impl WsStream {
    /// WebSocket over `inner` once the upgrade is done; `raw`: bytes that came after the
    /// server's answer (the session's: the first read takes them).
    pub(crate) fn over(inner: Stream, raw: Vec<u8>) -> WsStream {
        WsStream {
            inner,
            unfed: !raw.is_empty(),
            raw,
            plain: Vec::new(),
            plain_at: 0,
            age: None,
            deframer: Default::default(),
            out: Vec::new(),
            out_at: 0,
            closing: false,
        }
    }

    /// Writes what `out` holds to the stream below, as far as it takes it now.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.out.len() {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.out_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        self.out.clear();
        self.out_at = 0;
        Poll::Ready(Ok(()))
    }

    fn poll_read_stamped(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<Option<u64>>> {
        loop {
            if self.plain_at < self.plain.len() {
                let n = buf.remaining().min(self.plain.len() - self.plain_at);
                buf.put_slice(&self.plain[self.plain_at..self.plain_at + n]);
                self.plain_at += n;
                if self.plain_at == self.plain.len() {
                    self.plain.clear();
                    self.plain_at = 0;
                }
                return Poll::Ready(Ok(self.age));
            }
            if self.deframer.closed() {
                return Poll::Ready(Ok(None)); // the server closed: the end
            }
            if self.unfed {
                // what came with the handshake's answer
                self.unfed = false;
                self.feed(cx)?;
                continue;
            }
            self.raw.reserve(WS_READ);
            let before = self.raw.len();
            let spare = &mut self.raw.spare_capacity_mut()[..WS_READ];
            let mut rb = ReadBuf::uninit(spare);
            let age = std::task::ready!(self.inner.poll_read_stamped(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                return Poll::Ready(if self.deframer.mid_frame() {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection ended inside a WebSocket frame",
                    ))
                } else {
                    Ok(None)
                });
            }
            // SAFETY: the read initialised these n bytes of the spare capacity
            unsafe { self.raw.set_len(before + n) };
            self.age = age;
            self.feed(cx)?;
        }
    }

    /// Deframes what `raw` holds, and answers the server's pings and close.
    fn feed(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        use super::websocket::Control;
        let mut control = Vec::new();
        self.deframer
            .feed(&mut self.raw, &mut self.plain, &mut control)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        for c in control {
            match c {
                Control::Ping(p) => super::websocket::pong(&p, &mut self.out),
                Control::Close => super::websocket::close(&mut self.out),
            }
        }
        if !self.out.is_empty() {
            // answers go out now if the stream takes them, else with the next write
            if let Poll::Ready(Err(e)) = self.poll_drain(cx) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Frames what `bufs` hold (at most one frame's worth) once what was framed before is out.
    fn poll_write_frames(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_drain(cx))?;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let take = total.min(super::websocket::MAX_OUT_FRAME);
        if take == 0 {
            return Poll::Ready(Ok(0));
        }
        let mut payload = Vec::with_capacity(take);
        for b in bufs {
            let room = take - payload.len();
            payload.extend_from_slice(&b[..b.len().min(room)]);
            if payload.len() == take {
                break;
            }
        }
        super::websocket::binary(&payload, &mut self.out);
        // taken: it goes out now as far as the stream below allows, the rest before the next
        let _ = self.poll_drain(cx)?;
        Poll::Ready(Ok(take))
    }
}

/// Upgrades `inner` to MQTT over WebSocket at `path` (RFC 6455's opening handshake).
async fn upgrade(mut inner: Stream, url: &TargetUrl, path: &str) -> Result<Stream, ConnectFailure> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (request, accept) = super::websocket::request(&url.host, url.port, path);
    let io = |e: io::Error| ConnectFailure::from_io(&e);
    inner.write_all(&request).await.map_err(io)?;
    let mut got = Vec::with_capacity(512);
    let taken = loop {
        let mut chunk = [0u8; 1024];
        let n = inner.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            return Err(ConnectFailure::WebSocket(
                "WebSocket handshake: the server closed the connection".into(),
            ));
        }
        got.extend_from_slice(&chunk[..n]);
        match super::websocket::response(&got, &accept) {
            Ok(Some(n)) => break n,
            Ok(None) => continue,
            Err(e) => return Err(ConnectFailure::WebSocket(e.to_string())),
        }
    };
    // what came after the headers is already WebSocket
    Ok(Stream::Ws(Box::new(WsStream::over(inner, got.split_off(taken)))))
}

impl Stream {
    /// Cuts the link both ways from this end: a socket filter drops every packet that arrives
    /// before TCP sees it (so nothing is acknowledged, the broker's FIN included); the caller
    /// writes nothing more. Unprivileged (classic BPF on one's own socket). The one leak: bytes
    /// this side had sent and not yet seen acknowledged are still retransmitted by the kernel.
    pub fn blackhole(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let tcp = self.tcp();
        // one instruction: return 0 (keep no bytes of the packet: drop it)
        let mut code = [libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 0 }];
        let prog = libc::sock_fprog { len: 1, filter: code.as_mut_ptr() };
        // SAFETY: setsockopt reads `prog` (and the one instruction it points to) during the call
        let r = unsafe {
            libc::setsockopt(
                tcp.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                &prog as *const libc::sock_fprog as *const libc::c_void,
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }

    /// Makes the coming close a reset (SO_LINGER 0): the peer learns at once, and this side
    /// keeps no TIME_WAIT (19,000 ports in TIME_WAIT made each new connect scan for a free port:
    /// 60 % of the tester's CPU in a storm).
    pub fn reset_on_close(&self) {
        let _ = socket2::SockRef::from(self.tcp()).set_linger(Some(std::time::Duration::ZERO));
    }

    /// Acknowledges at once what the kernel received and has not acknowledged (TCP_QUICKACK).
    /// After a read that waited (read coalescing), so the broker's TCP is never kept waiting
    /// for an ACK longer than the read did: Linux sends the ACK of small segments when the
    /// application reads or on its delayed-ACK timer, and a sender short of ACKs paces itself
    /// down (e2e p99 0.2–0.5 ms eager against 17 ms coalesced at 50,000 msg/s before this).
    pub fn ack_now(&self) {
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads one int during the call
        unsafe {
            libc::setsockopt(
                self.tcp().as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tcp(s) => s,
            Stream::Tls(s) => s.get_ref().0,
            Stream::Ws(w) => w.inner.tcp(),
        }
    }

    /// [`AsyncRead::poll_read`], and for TCP how long ago the newest byte read arrived (ns,
    /// from the kernel's receive stamp): time it waited in the socket for squall, to take
    /// off its arrival time. None over TLS (rustls reads the socket) or without a stamp.
    pub fn poll_read_stamped(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<Option<u64>>> {
        use std::os::fd::AsRawFd;
        let tcp = match self {
            Stream::Tls(s) => return Pin::new(s.as_mut()).poll_read(cx, buf).map_ok(|()| None),
            Stream::Ws(w) => return w.poll_read_stamped(cx, buf),
            Stream::Tcp(s) => s,
        };
        loop {
            std::task::ready!(tcp.poll_read_ready(cx))?;
            let fd = tcp.as_raw_fd();
            let mut got = None;
            // SAFETY: recvmsg initialises the bytes it reports, and only those are marked so
            let unfilled = unsafe { buf.unfilled_mut() };
            let cap = unfilled.len();
            let r = tcp.try_io(tokio::io::Interest::READABLE, || {
                let (n, age) = recv_stamped(fd, unfilled)?;
                got = Some((n, age));
                // a short read emptied the socket: say "would block" so the readiness is
                // cleared (as tokio's own poll_read does), and the next poll waits for data
                // instead of asking the kernel again
                if n > 0 && n < cap { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(()) }
            });
            match (got, r) {
                (Some((n, age)), _) => {
                    // SAFETY: the kernel wrote these n bytes
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(age));
                }
                (None, Err(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
                (None, Err(e)) => return Poll::Ready(Err(e)),
                (None, Ok(())) => unreachable!("the read either happened or failed"),
            }
        }
    }

    /// Ready once the socket has something to read (or an error, or the end), without reading
    /// it. Over TLS this is the socket's readiness: call it only after a read found rustls
    /// with nothing buffered.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_read_ready(cx),
            Stream::Tls(s) => s.get_ref().0.poll_read_ready(cx),
            // deframed bytes waiting are ready at once
            Stream::Ws(w) if w.plain_at < w.plain.len() => Poll::Ready(Ok(())),
            Stream::Ws(w) => w.inner.poll_read_ready(cx),
        }
    }

    /// Whether this layer holds bytes already taken from the caller and not yet handed to the
    /// socket (TLS records rustls has not written, the rest of a WebSocket frame): then only a
    /// flush sends them, so the caller keeps flushing until this is false, writes or not.
    pub fn wants_flush(&self) -> bool {
        match self {
            Stream::Tcp(_) => false,
            Stream::Tls(s) => s.get_ref().1.wants_write(),
            Stream::Ws(w) => w.out_at < w.out.len() || w.inner.wants_flush(),
        }
    }

    /// The negotiated TLS session, if this is TLS.
    pub fn tls_session(&self) -> Option<&rustls::ClientConnection> {
        match self {
            Stream::Tcp(_) => None,
            Stream::Tls(s) => Some(s.get_ref().1),
            Stream::Ws(w) => w.inner.tls_session(),
        }
    }
}

/// Opens a TCP connection (from `source`, if given) and, for TLS endpoints, does the handshake.
pub async fn connect(endpoint: &Endpoint, source: Option<IpAddr>) -> Result<Stream, ConnectFailure> {
    connect_with(endpoint, source, None).await.map(|(s, _)| s)
}

/// [`connect`] with the client's own TLS connector (its own session cache), if it has one;
/// also returns how long the TLS handshake took (ns), for TLS endpoints.
pub async fn connect_with(
    endpoint: &Endpoint,
    source: Option<IpAddr>,
    own: Option<&TlsConnector>,
) -> Result<(Stream, Option<u64>), ConnectFailure> {
    let tcp = connect_tcp(endpoint.addr, source).await.map_err(|e| ConnectFailure::from_io(&e))?;
    let (stream, tls_ns) = match &endpoint.tls {
        None => (Stream::Tcp(tcp), None),
        Some((connector, name)) => {
            let started = std::time::Instant::now();
            let tls = own.unwrap_or(connector).connect(name.clone(), tcp).await.map_err(|e| {
                // rustls reports its errors wrapped in io::Error; the message is the useful part
                match e.get_ref() {
                    Some(inner) => ConnectFailure::Tls(inner.to_string()),
                    None => ConnectFailure::from_io(&e),
                }
            })?;
            (Stream::Tls(Box::new(tls)), Some(started.elapsed().as_nanos() as u64))
        }
    };
    match &endpoint.url.ws_path {
        None => Ok((stream, tls_ns)),
        Some(path) => Ok((upgrade(stream, &endpoint.url, path).await?, tls_ns)),
    }
}

/// A client's own TLS connector: the endpoint's configuration with a session cache of its
/// own (one server, a few tickets), so its reconnects resume its own session as a device's
/// would; or, with `resume` false, with resumption off (one connector a group can share).
pub fn own_connector(endpoint: &Endpoint, resume: bool) -> Option<TlsConnector> {
    let (connector, _) = endpoint.tls.as_ref()?;
    let mut config = (**connector.config()).clone();
    config.resumption = if resume {
        rustls::client::Resumption::store(Arc::new(rustls::client::ClientSessionMemoryCache::new(8)))
    } else {
        rustls::client::Resumption::disabled()
    };
    Some(TlsConnector::from(Arc::new(config)))
}

pub async fn connect_tcp(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(ip) = source {
        set_bind_address_no_port(&socket)?;
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    // latency is what squall measures: no Nagle delay on small packets
    stream.set_nodelay(true)?;
    // arrival stamps (see `poll_read_stamped`); without them reads are timed when they happen
    let _ = stamp_arrivals(&stream);
    Ok(stream)
}

/// `SO_TIMESTAMPING` and `SCM_TIMESTAMPING` of the generic Linux ABI (x86, arm, riscv; mips
/// and sparc number them apart); the `libc` crate exports them for Android only.
const SO_TIMESTAMPING: libc::c_int = 37;
const SCM_TIMESTAMPING: libc::c_int = SO_TIMESTAMPING;

/// Asks the kernel to stamp each received segment in software, at the moment it came in, and
/// to hand the newest stamp of every read back with it.
fn stamp_arrivals(stream: &TcpStream) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = (libc::SOF_TIMESTAMPING_RX_SOFTWARE | libc::SOF_TIMESTAMPING_SOFTWARE) as libc::c_int;
    // SAFETY: a valid fd, a valid pointer to an int option of the right size
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_TIMESTAMPING,
            &flags as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// One `recvmsg` into `buf`: the bytes read, and how long ago (ns, `CLOCK_REALTIME`, as the
/// kernel stamps) the newest of them arrived, if the kernel stamped it.
fn recv_stamped(fd: libc::c_int, buf: &mut [std::mem::MaybeUninit<u8>]) -> io::Result<(usize, Option<u64>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
    // room for one SCM_TIMESTAMPING (three timespecs) and more, aligned for cmsghdr
    let mut control = [0u64; 16];
    // SAFETY: an all-zero msghdr is a valid empty one; every pointer set below outlives the call
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: the iovec points into `buf`, the kernel writes at most its length there
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp_ns = 0u64;
    // SAFETY: the CMSG_* walk stays within msg_controllen of `control`, which the kernel filled;
    // the payload is read unaligned
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == SCM_TIMESTAMPING {
                // ts[0]: the software stamp (ts[1] is deprecated, ts[2] hardware)
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                stamp_ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let age = (stamp_ns > 0)
        .then(|| {
            let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: writes one timespec
            unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
            (now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64).saturating_sub(stamp_ns)
        })
        // a wall clock stepped between stamp and read (NTP) would move arrivals by the step:
        // past 10 s the stamp is not believed, and the read is timed when it happened
        .filter(|&age| age < 10_000_000_000);
    Ok((n as usize, age))
}

fn set_bind_address_no_port(socket: &TcpSocket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid fd, a valid pointer to an int option of the right size
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Ws(w) => w.poll_read_stamped(cx, buf).map_ok(|_| ()),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Ws(w) => w.poll_write_frames(cx, &[io::IoSlice::new(buf)]),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Ws(w) => w.poll_write_frames(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
            // several pages of output make one frame
            Stream::Ws(_) => true,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Ws(w) => {
                std::task::ready!(w.poll_drain(cx))?;
                Pin::new(&mut w.inner).poll_flush(cx)
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Ws(w) => {
                // a close frame first, unless the server's close was answered already
                if !w.deframer.closed() && w.out.is_empty() && !w.closing {
                    super::websocket::close(&mut w.out);
                    w.closing = true;
                }
                std::task::ready!(w.poll_drain(cx))?;
                Pin::new(&mut w.inner).poll_shutdown(cx)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults_and_errors() {
        let u: TargetUrl = "mqtt://broker".parse().unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (false, "broker", 1883));
        let u: TargetUrl = "mqtts://broker".parse().unwrap();
        assert_eq!((u.tls, u.port), (true, 8883));
        let u: TargetUrl = "mqtt://[::1]:1999".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 1999));
        assert_eq!(u.to_string(), "mqtt://[::1]:1999");
        assert_eq!("127.0.0.1:1883".parse::<TargetUrl>(), Err(UrlError::NoScheme("127.0.0.1:1883".into())));
        assert!(matches!("http://x".parse::<TargetUrl>(), Err(UrlError::Scheme(_))));
        let u: TargetUrl = "ws://broker:8080".parse().unwrap();
        assert_eq!((u.tls, u.port, u.ws_path.as_deref()), (false, 8080, Some("/mqtt")));
        assert_eq!(u.to_string(), "ws://broker:8080/mqtt");
        let u: TargetUrl = "wss://[::1]/ws/mqtt?x=1".parse().unwrap();
        assert_eq!(
            (u.tls, u.port, u.host.as_str(), u.ws_path.as_deref()),
            (true, 443, "::1", Some("/ws/mqtt?x=1"))
        );
        assert_eq!(u.to_string().parse::<TargetUrl>().unwrap(), u, "round trip");
        assert!(matches!("mqtt://broker:1883/topic".parse::<TargetUrl>(), Err(UrlError::Path(_))));
        assert_eq!("mqtt://broker/".parse::<TargetUrl>().unwrap().ws_path, None);
        assert!(matches!("mqtt://x:99999".parse::<TargetUrl>(), Err(UrlError::Port(_))));
        assert!(matches!("mqtt://:1883".parse::<TargetUrl>(), Err(UrlError::NoHost(_))));
    }

    #[tokio::test]
    async fn binds_to_the_requested_source_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let src: IpAddr = "127.0.0.2".parse().unwrap();
        let (client, accepted) = tokio::join!(connect_tcp(addr, Some(src)), listener.accept());
        let client = client.unwrap();
        let (_, peer) = accepted.unwrap();
        assert_eq!(peer.ip(), src);
        assert_eq!(client.local_addr().unwrap().ip(), src);
    }

    #[tokio::test]
    async fn refused_is_recognised() {
        // a port nobody listens on: bind, note, close
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = connect_tcp(addr, None).await.unwrap_err();
        assert_eq!(ConnectFailure::from_io(&e), ConnectFailure::Refused);
    }
}
