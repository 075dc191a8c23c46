//! One client connection: CONNECT (authentication, limits, injected refusals, session attach
//! or takeover), then packets in and out until it ends, then the will and the session's fate.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::num::NonZeroU16;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ntex_bytes::{BufMut, BytePages, ByteString, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::codec::{
    self, Ack, ConnAckProps, ConnectInfo, In, Protocol, PublishIn, QoS, ServerCodec, WillInfo,
};
use crate::delay::Mailbox;
use crate::faults::{AckFate, AckPacket, ConnFaults, InPacket, connack_code_for};
use crate::router::min_qos;
use crate::session::{Message, Outstanding, Session, Stage};
use crate::timeline::{Detail, Dir, Kind, Note, PAYLOAD_KEPT, PacketEvent, payload_hash};
use crate::topic::{Match, Sub, valid_filter, valid_topic};
use crate::{Shared, Stream};

const READ_CHUNK: usize = 16 * 1024;

/// How long a connection whose CONNACK is withheld is kept open, at most.
const SILENT_FOR: Duration = Duration::from_secs(600);

/// How a connection ended, for the will and the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// DISCONNECT with reason 0: no will.
    Clean,
    /// DISCONNECT with reason 4 ("with will"), or another reason: the will is published.
    DisconnectWithWill,
    /// The network connection ended, keepalive expired, or a protocol error: the will is published.
    Abrupt,
    /// Another connection took the session over.
    TakenOver,
    /// The broker is shutting down.
    Shutdown,
}

struct Conn {
    sh: Arc<Shared>,
    id: u64,
    stream: Stream,
    rbuf: BytesMut,
    out: Option<BytePages>,
    codec: Option<ServerCodec>,
    client_id: ByteString,
    session: Option<Arc<Session>>,
    will: Option<WillInfo>,
    keepalive: Duration,
    last_in: Instant,
    faults: ConnFaults,
    mailbox: Arc<Mailbox>,
    kick: Arc<Notify>,
    events: Vec<PacketEvent>,
    scratch: Vec<Match>,
    /// Arrival time of the bytes being handled: off the socket, before any handler ran.
    arrived_ns: u64,
    arrived: Instant,
    conn_no: u64,
    /// Output behind a delayed packet (empty: none is delayed, writes go straight out).
    gate: VecDeque<Slot>,
    next_token: u64,
    /// A PUBLISH waiting for its turn under the broker's publish limit, and when that is (ns
    /// since broker start): nothing more is read or handled on this connection until then.
    held: Option<(In, u64)>,
}

/// One TCP stream is ordered: what the broker writes after a delayed packet leaves after it,
/// as it would from a broker that is slow to produce that packet.
enum Slot {
    /// A packet in the delay line (by its token); its bytes once released.
    Held { token: u64, released: Option<(Bytes, Kind, Option<u16>)> },
    /// Written while a packet before it was held, with its timeline notes (made when it leaves).
    Behind { bytes: BytePages, notes: Vec<OutNote> },
}

type OutNote = (Kind, Option<u16>, Option<u8>, bool, Option<Note>);

/// Where output goes now: straight out, or behind the last held packet.
fn sink<'a>(out: &'a mut Option<BytePages>, gate: &'a mut VecDeque<Slot>) -> &'a mut BytePages {
    if gate.is_empty() {
        return out.get_or_insert_with(BytePages::default);
    }
    if !matches!(gate.back(), Some(Slot::Behind { .. })) {
        gate.push_back(Slot::Behind { bytes: BytePages::default(), notes: Vec::new() });
    }
    match gate.back_mut() {
        Some(Slot::Behind { bytes, .. }) => bytes,
        _ => unreachable!("a Behind slot was just made last"),
    }
}

pub async fn serve(sh: Arc<Shared>, stream: Stream, id: u64) {
    let mut c = Conn {
        sh,
        id,
        stream,
        rbuf: BytesMut::new(),
        out: None,
        codec: None,
        client_id: ByteString::new(),
        session: None,
        will: None,
        keepalive: Duration::ZERO,
        last_in: Instant::now(),
        faults: ConnFaults::default(),
        mailbox: Arc::new(Mailbox::default()),
        kick: Arc::new(Notify::new()),
        events: Vec::new(),
        scratch: Vec::new(),
        arrived_ns: 0,
        arrived: Instant::now(),
        conn_no: id,
        gate: VecDeque::new(),
        next_token: 0,
        held: None,
    };
    // the timeline's Opened and Closed are when they happened (no packet's arrival to take)
    c.arrived_ns = c.sh.now_ns();
    c.note(Dir::In, Kind::Opened, None, None, false, None);
    let close = match c.handshake().await {
        Ok(true) => c.run().await,
        Ok(false) => Close::Clean, // refused: already answered
        Err(_) => Close::Abrupt,
    };
    c.finish(close).await;
}

impl Conn {
    fn note(
        &mut self,
        dir: Dir,
        kind: Kind,
        pid: Option<u16>,
        qos: Option<u8>,
        dup: bool,
        note: Option<Note>,
    ) {
        if !self.sh.timeline.enabled {
            return;
        }
        // output held behind a delayed packet is noted when it leaves; a withheld ack never does
        if dir == Dir::Out && !self.gate.is_empty() && note != Some(Note::Withheld) {
            sink(&mut self.out, &mut self.gate);
            if let Some(Slot::Behind { notes, .. }) = self.gate.back_mut() {
                notes.push((kind, pid, qos, dup, note));
            }
            return;
        }
        self.record(dir, kind, pid, qos, dup, note);
    }

    fn record(
        &mut self,
        dir: Dir,
        kind: Kind,
        pid: Option<u16>,
        qos: Option<u8>,
        dup: bool,
        note: Option<Note>,
    ) {
        let at_ns = if dir == Dir::In { self.arrived_ns.max(1) } else { self.sh.now_ns() };
        self.events.push(PacketEvent {
            at_ns,
            conn: self.conn_no,
            dir,
            kind,
            pid,
            qos,
            dup,
            note,
            detail: None,
        });
    }

    /// What the packet just noted (an inbound one: they are never held) said.
    fn detail(&mut self, d: impl FnOnce() -> Detail) {
        if self.sh.timeline.enabled
            && let Some(e) = self.events.last_mut()
        {
            e.detail = Some(Box::new(d()));
        }
    }

    /// Sends what the gate holds, in order, up to the first packet still in the delay line.
    fn release_gate(&mut self) {
        while let Some(front) = self.gate.front() {
            if matches!(front, Slot::Held { released: None, .. }) {
                break;
            }
            match self.gate.pop_front().expect("peeked") {
                Slot::Held { released: Some((bytes, kind, pid)), .. } => {
                    if self.sh.timeline.enabled {
                        self.record(Dir::Out, kind, pid, None, false, Some(Note::Delayed));
                    }
                    self.out.get_or_insert_with(BytePages::default).put_slice(&bytes);
                }
                Slot::Behind { mut bytes, notes } => {
                    let out = self.out.get_or_insert_with(BytePages::default);
                    while let Some(p) = bytes.take() {
                        out.put_slice(p.as_ref());
                    }
                    if self.sh.timeline.enabled {
                        for (kind, pid, qos, dup, note) in notes {
                            self.record(Dir::Out, kind, pid, qos, dup, note);
                        }
                    }
                }
                Slot::Held { released: None, .. } => unreachable!("checked above"),
            }
        }
    }

    fn flush_events(&mut self) {
        if self.sh.timeline.enabled && !self.events.is_empty() && !self.client_id.is_empty() {
            let ev = std::mem::take(&mut self.events);
            self.sh.timeline.record(&self.client_id, ev);
        }
    }

    fn codec(&self) -> &ServerCodec {
        self.codec.as_ref().expect("after CONNECT")
    }

    /// Queues an MQTT 5 DISCONNECT with `code` (3.1.1 has none: the connection just closes).
    fn say_disconnect(&mut self, code: u8) {
        if let Some(c) = &self.codec {
            let _ = c.disconnect(code, sink(&mut self.out, &mut self.gate));
        }
    }

    fn out(&mut self) -> &mut BytePages {
        sink(&mut self.out, &mut self.gate)
    }

    /// Reads until something arrives. Err on EOF or error.
    async fn read_some(&mut self) -> io::Result<usize> {
        let n = std::future::poll_fn(|cx| {
            let mut tmp = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut rb = ReadBuf::uninit(&mut tmp);
            match Pin::new(&mut self.stream).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let f = rb.filled();
                    self.rbuf.extend_from_slice(f);
                    Poll::Ready(Ok(f.len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.stamp(n);
        Ok(n)
    }

    fn stamp(&mut self, n: usize) {
        self.arrived_ns = self.sh.now_ns();
        self.arrived = Instant::now();
        self.last_in = self.arrived;
        self.sh.stats.bytes_in.fetch_add(n as u64, Relaxed);
    }

    async fn write_all_pending(&mut self) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        if let Some(mut p) = self.out.take() {
            while let Some(page) = p.take() {
                self.stream.write_all(page.as_ref()).await?;
                self.sh.stats.bytes_out.fetch_add(page.len() as u64, Relaxed);
            }
            self.stream.flush().await?;
        }
        Ok(())
    }

    /// A withheld CONNACK: the connection stays open and unanswered until the client closes it,
    /// the broker shuts down, or [`SILENT_FOR`] passes; what the client sends is read and
    /// dropped (a broker that hangs on a client does not process it).
    async fn silent(&mut self) {
        let mut shutdown = self.sh.shutdown.clone();
        let until = tokio::time::Instant::now() + SILENT_FOR;
        loop {
            self.rbuf.clear();
            tokio::select! {
                r = self.read_some() => if r.is_err() { return },
                _ = tokio::time::sleep_until(until) => return,
                _ = shutdown.changed() => return,
            }
        }
    }

    /// CONNECT to CONNACK. Ok(true): connected; Ok(false): refused and answered.
    async fn handshake(&mut self) -> io::Result<bool> {
        let deadline = tokio::time::Instant::now() + self.sh.config.connect_timeout;
        let proto = loop {
            match codec::detect(&self.rbuf) {
                Ok(Some(p)) => break p,
                Ok(None) => {}
                Err(codec::DetectError::Level(level)) => {
                    // answer in 3.1.1 form: "unacceptable protocol version"
                    let c = ServerCodec::new(Protocol::V311, 0);
                    let _ = c.connack(false, 1, &ConnAckProps::default(), self.out());
                    self.sh.stats.connects_refused.fetch_add(1, Relaxed);
                    tracing::debug!(level, "Refused a CONNECT of an unsupported protocol level");
                    self.write_all_pending().await?;
                    return Ok(false);
                }
                Err(_) => return Err(io::ErrorKind::InvalidData.into()),
            }
            match tokio::time::timeout_at(deadline, self.read_some()).await {
                Ok(r) => {
                    r?;
                }
                Err(_) => return Err(io::ErrorKind::TimedOut.into()),
            }
        };
        self.codec = Some(ServerCodec::new(proto, self.sh.config.max_packet_size));
        let connect = loop {
            match self.codec.as_ref().expect("after CONNECT").decode(&mut self.rbuf) {
                Ok(Some(In::Connect(c))) => break c,
                Ok(Some(_)) | Err(_) => return Err(io::ErrorKind::InvalidData.into()),
                Ok(None) => match tokio::time::timeout_at(deadline, self.read_some()).await {
                    Ok(r) => {
                        r?;
                    }
                    Err(_) => return Err(io::ErrorKind::TimedOut.into()),
                },
            }
        };
        self.connect(*connect, proto).await
    }

    async fn connect(&mut self, c: ConnectInfo, proto: Protocol) -> io::Result<bool> {
        let v5 = proto == Protocol::V5;
        let mut props = ConnAckProps { receive_max: self.sh.config.max_inflight, ..Default::default() };
        let mut client_id = c.client_id.clone();
        let mut refuse: Option<u8> = None;
        if client_id.is_empty() {
            if !c.clean_start && !v5 {
                refuse = Some(2); // 3.1.1: a persistent session needs an id
            } else {
                client_id = ByteString::from(format!("squall-auto-{}", self.id));
                props.assigned_client_id = Some(client_id.clone());
            }
        }
        self.client_id = client_id.clone();
        self.conn_no = self.id;
        self.note(Dir::In, Kind::Connect, None, None, false, None);
        self.detail(|| Detail::Connect {
            client_id: client_id.to_string(),
            v5,
            clean_start: c.clean_start,
            keepalive: c.keepalive,
            session_expiry: c.session_expiry,
            session_present: false,
        });
        self.faults = self.sh.faults.for_connection(&client_id);
        if refuse.is_none() {
            refuse = self.authenticate(&c, v5);
        }
        if refuse.is_none()
            && self.sh.stats.connections.load(Relaxed) as usize >= self.sh.config.max_connections
        {
            refuse = Some(if v5 { 0x97 } else { 3 });
        }
        if refuse.is_none()
            && let Some(code) = self.faults.refuse()
        {
            self.sh.stats.faults_applied.fetch_add(1, Relaxed);
            refuse = Some(connack_code_for(v5, code));
        }
        if let Some(code) = refuse {
            let codec = self.codec.as_ref().expect("after CONNECT");
            let _ = codec.connack(false, code, &props, self.out.get_or_insert_with(BytePages::default));
            self.note(Dir::Out, Kind::ConnAck, None, None, false, Some(Note::Refused));
            self.sh.stats.connects_refused.fetch_add(1, Relaxed);
            self.write_all_pending().await?;
            return Ok(false);
        }
        let connack =
            if self.faults.is_empty() { AckFate::Send } else { self.faults.ack(AckPacket::ConnAck) };
        if connack == AckFate::Withhold {
            // a broker that never answers: no session is attached, nothing is read or sent,
            // until the client gives up (or the bound)
            self.sh.stats.faults_applied.fetch_add(1, Relaxed);
            self.note(Dir::Out, Kind::ConnAck, None, None, false, Some(Note::Withheld));
            self.flush_events();
            self.silent().await;
            return Ok(false);
        }
        let expire = self.faults.expire_session();
        if expire {
            self.sh.stats.faults_applied.fetch_add(1, Relaxed);
        }
        let (session, present) = self.sh.attach(&client_id, &c, self.id, self.kick.clone(), expire);
        if present
            && let Some(Detail::Connect { session_present, .. }) = self
                .events
                .iter_mut()
                .rev()
                .find(|e| e.kind == Kind::Connect)
                .and_then(|e| e.detail.as_deref_mut())
        {
            *session_present = true;
        }
        props.session_expiry =
            (v5 && c.session_expiry != session.lock().expiry_secs).then(|| session.lock().expiry_secs);
        self.session = Some(session.clone());
        self.will = c.will.clone();
        self.keepalive = Duration::from_secs(c.keepalive as u64);
        self.sh.stats.connects.fetch_add(1, Relaxed);
        self.sh.stats.connections.fetch_add(1, Relaxed);
        let mut ack = BytePages::default();
        let _ = self.codec().connack(present, 0, &props, &mut ack);
        self.send_ack_as(connack, Kind::ConnAck, None, ack);
        if present {
            self.resend(&session);
        }
        self.pump();
        Ok(true)
    }

    fn authenticate(&self, c: &ConnectInfo, v5: bool) -> Option<u8> {
        let users = &self.sh.users;
        match (&c.username, &c.password) {
            (Some(u), p) if !users.is_empty() => {
                let ok =
                    users.get(&**u).is_some_and(|want| p.as_ref().is_some_and(|p| &p[..] == want.as_bytes()));
                (!ok).then_some(if v5 { 0x86 } else { 4 })
            }
            (None, _) if !self.sh.config.allow_anonymous => Some(if v5 { 0x87 } else { 5 }),
            _ => None,
        }
    }

    /// Sends, delays or withholds an acknowledgement as the fault rules say.
    fn send_ack(&mut self, packet: AckPacket, kind: Kind, pid: Option<u16>, bytes: BytePages) {
        let fate = if self.faults.is_empty() { AckFate::Send } else { self.faults.ack(packet) };
        self.send_ack_as(fate, kind, pid, bytes);
    }

    /// Sends, delays or withholds an acknowledgement whose fate is decided.
    fn send_ack_as(&mut self, fate: AckFate, kind: Kind, pid: Option<u16>, mut bytes: BytePages) {
        match fate {
            AckFate::Send => {
                self.note(Dir::Out, kind, pid, None, false, None);
                let out = sink(&mut self.out, &mut self.gate);
                while let Some(p) = bytes.take() {
                    out.put_slice(p.as_ref());
                }
            }
            AckFate::Delay(d) => {
                self.sh.stats.faults_applied.fetch_add(1, Relaxed);
                // what is written after it waits behind it (one stream is ordered)
                let token = self.next_token;
                self.next_token += 1;
                self.gate.push_back(Slot::Held { token, released: None });
                // the delay counts from the packet's arrival, so it is exactly what a client sees
                self.sh.delay.hold(
                    self.arrived + d,
                    self.mailbox.clone(),
                    (token, bytes.freeze(), kind, pid),
                );
            }
            AckFate::Withhold => {
                self.sh.stats.faults_applied.fetch_add(1, Relaxed);
                self.note(Dir::Out, kind, pid, None, false, Some(Note::Withheld));
            }
        }
    }

    /// Resends what a resumed session had in flight: PUBLISH with DUP, PUBREL.
    fn resend(&mut self, session: &Arc<Session>) {
        let inflight: Vec<Outstanding> = session.lock().inflight.iter().cloned().collect();
        for o in inflight {
            match o.stage {
                Stage::AwaitAck | Stage::AwaitRec => {
                    let d = &o.delivery;
                    let codec = self.codec.as_ref().expect("connected");
                    let out = sink(&mut self.out, &mut self.gate);
                    let _ =
                        codec.publish(&d.msg.topic, &d.msg.payload, d.qos, d.retain, true, Some(o.pid), out);
                    self.sh.stats.messages_out[u8::from(d.qos) as usize].fetch_add(1, Relaxed);
                    self.note(Dir::Out, Kind::Publish, Some(o.pid.get()), Some(u8::from(d.qos)), true, None);
                }
                Stage::AwaitComp => {
                    let codec = self.codec.as_ref().expect("connected");
                    let out = sink(&mut self.out, &mut self.gate);
                    let _ = codec.ack(Ack::PubRel, o.pid, 0, out);
                    self.note(Dir::Out, Kind::PubRel, Some(o.pid.get()), None, false, None);
                }
            }
        }
    }

    /// Moves queued deliveries to the wire, as far as the client's receive maximum allows.
    fn pump(&mut self) {
        let Some(session) = self.session.clone() else { return };
        let codec = self.codec.as_ref().expect("connected");
        let mut st = session.lock();
        let limit = st.link.as_ref().map_or(0, |l| l.receive_max).min(self.sh.config.max_inflight) as usize;
        let mut sent = [0u64; 3];
        let mut noted: Vec<(Option<u16>, u8)> = Vec::new();
        let out = sink(&mut self.out, &mut self.gate);
        while let Some(d) = st.outbox.front() {
            if d.qos != QoS::AtMostOnce && st.inflight.len() >= limit {
                break;
            }
            let d = st.outbox.pop_front().expect("peeked");
            let pid = if d.qos == QoS::AtMostOnce {
                None
            } else {
                let pid = st.alloc_pid();
                let stage = if d.qos == QoS::AtLeastOnce { Stage::AwaitAck } else { Stage::AwaitRec };
                st.inflight.push_back(Outstanding { pid, delivery: d.clone(), stage });
                Some(pid)
            };
            let _ = codec.publish(&d.msg.topic, &d.msg.payload, d.qos, d.retain, false, pid, out);
            sent[u8::from(d.qos) as usize] += 1;
            if self.sh.timeline.enabled {
                noted.push((pid.map(|p| p.get()), u8::from(d.qos)));
            }
        }
        drop(st);
        for (q, n) in sent.iter().enumerate() {
            if *n > 0 {
                self.sh.stats.messages_out[q].fetch_add(*n, Relaxed);
            }
        }
        for (pid, qos) in noted {
            self.note(Dir::Out, Kind::Publish, pid, Some(qos), false, None);
        }
    }

    async fn run(&mut self) -> Close {
        let drop_at = self.faults.drop_after().map(|d| tokio::time::Instant::now() + d);
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        let session = self.session.clone().expect("connected");
        let mut shutdown = self.sh.shutdown.clone();
        loop {
            // a stalled broker reads and writes nothing
            let stalled = self.sh.faults.stalled_until();
            let now_ns = self.sh.now_ns();
            if stalled > now_ns {
                tokio::time::sleep(Duration::from_nanos(stalled - now_ns)).await;
                continue;
            }
            // a PUBLISH over the publish limit: its turn first, then the rest of what was read
            if let Some((pkt, at)) = self.held.take() {
                if at > now_ns {
                    tokio::time::sleep(Duration::from_nanos(at - now_ns)).await;
                }
                let close = match self.handle(pkt) {
                    Some(close) => Some(close),
                    None => self.handle_input(),
                };
                if let Some(close) = close {
                    let _ = tokio::time::timeout(Duration::from_secs(1), self.write_all_pending()).await;
                    return close;
                }
                continue;
            }
            self.flush_events();
            let ka = if self.keepalive.is_zero() {
                far
            } else {
                // 1.5 × keepalive without a packet: the client is gone (MQTT 3.1.2.10)
                tokio::time::Instant::from_std(self.last_in + self.keepalive * 3 / 2)
            };
            let out = &mut self.out;
            let stream = &mut self.stream;
            let rbuf = &mut self.rbuf;
            let mut wrote = 0u64;
            let io = std::future::poll_fn(|cx| poll_io(cx, stream, out, rbuf, &mut wrote));
            let ev = tokio::select! {
                biased;
                r = io => Ev::Io(r),
                _ = self.mailbox.notify.notified() => Ev::Mailbox,
                _ = session.wake.notified() => Ev::Wake,
                _ = self.kick.notified() => Ev::Kick,
                _ = tokio::time::sleep_until(ka) => Ev::KeepaliveExpired,
                _ = tokio::time::sleep_until(drop_at.unwrap_or(far)) => Ev::DropFault,
                _ = shutdown.changed() => Ev::Shutdown,
            };
            if wrote > 0 {
                self.sh.stats.bytes_out.fetch_add(wrote, Relaxed);
            }
            // a stall that began while this connection waited: what woke it waits out the stall
            // (at most the bytes of one read came in; nothing is routed, acked or written)
            if !matches!(ev, Ev::Shutdown) {
                let (stalled, now_ns) = (self.sh.faults.stalled_until(), self.sh.now_ns());
                if stalled > now_ns {
                    tokio::time::sleep(Duration::from_nanos(stalled - now_ns)).await;
                }
            }
            match ev {
                Ev::Io(Ok(IoEv::Data(n))) => {
                    self.stamp(n);
                    if let Some(close) = self.handle_input() {
                        let _ = tokio::time::timeout(Duration::from_secs(1), self.write_all_pending()).await;
                        return close;
                    }
                    if self.rbuf.is_empty() {
                        self.rbuf = BytesMut::new(); // idle connections hold no read buffer
                    }
                }
                Ev::Io(Ok(IoEv::Flushed)) => {}
                Ev::Io(Ok(IoEv::Eof)) | Ev::Io(Err(_)) => return Close::Abrupt,
                Ev::Mailbox => {
                    let ready: Vec<_> =
                        std::mem::take(&mut *self.mailbox.ready.lock().unwrap_or_else(|e| e.into_inner()));
                    for (token, bytes, kind, pid) in ready {
                        let slot = self
                            .gate
                            .iter_mut()
                            .find(|s| matches!(s, Slot::Held { token: t, .. } if *t == token));
                        if let Some(Slot::Held { released, .. }) = slot {
                            *released = Some((bytes, kind, pid));
                        }
                    }
                    self.release_gate();
                }
                Ev::Wake => self.pump(),
                Ev::Kick if self.sh.take_drop(self.id) => {
                    // the broker's choice (`squall device` moving on): as a network failure, no word
                    self.note(Dir::Out, Kind::Closed, None, None, false, Some(Note::Dropped));
                    return Close::Abrupt;
                }
                Ev::Kick => {
                    // taken over: MQTT 5 says why
                    self.say_disconnect(0x8E);
                    let _ = tokio::time::timeout(Duration::from_millis(500), self.write_all_pending()).await;
                    return Close::TakenOver;
                }
                Ev::KeepaliveExpired => {
                    self.note(Dir::Out, Kind::Closed, None, None, false, Some(Note::KeepaliveExpired));
                    self.say_disconnect(0x8D);
                    let _ = tokio::time::timeout(Duration::from_millis(500), self.write_all_pending()).await;
                    return Close::Abrupt;
                }
                Ev::DropFault => {
                    // what was written before the drop leaves first (drop_after = "0s": the
                    // CONNACK, then the drop), bounded: a client that reads nothing holds nothing up
                    let _ = tokio::time::timeout(Duration::from_millis(100), self.write_all_pending()).await;
                    self.sh.stats.faults_applied.fetch_add(1, Relaxed);
                    self.note(Dir::Out, Kind::Closed, None, None, false, Some(Note::Dropped));
                    return Close::Abrupt;
                }
                Ev::Shutdown => {
                    self.say_disconnect(0x8B);
                    let _ = tokio::time::timeout(Duration::from_millis(500), self.write_all_pending()).await;
                    return Close::Shutdown;
                }
            }
        }
    }

    /// Handles every whole packet read; `Some` when the connection must end.
    fn handle_input(&mut self) -> Option<Close> {
        loop {
            let pkt = match self.codec.as_ref().expect("after CONNECT").decode(&mut self.rbuf) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(_) => {
                    self.say_disconnect(0x81);
                    return Some(Close::Abrupt);
                }
            };
            if let In::Publish(_) = pkt {
                let now = self.sh.now_ns();
                let turn = self.sh.faults.publish_turn(now);
                // past a few µs of the limit's schedule it waits (a queue is building)
                if turn > now + 20_000 {
                    self.held = Some((pkt, turn));
                    break;
                }
            }
            if let Some(close) = self.handle(pkt) {
                return Some(close);
            }
        }
        self.pump();
        None
    }

    fn handle(&mut self, pkt: In) -> Option<Close> {
        let kind = pkt.kind();
        let (pid, qos, dup) = match &pkt {
            In::Publish(p) => (p.pid.map(|p| p.get()), Some(u8::from(p.qos)), p.dup),
            In::PubAck(p) | In::PubRec(p) | In::PubRel(p) | In::PubComp(p) => (Some(p.get()), None, false),
            In::Subscribe { pid, .. } | In::Unsubscribe { pid, .. } => (Some(pid.get()), None, false),
            _ => (None, None, false),
        };
        self.note(Dir::In, kind, pid, qos, dup, None);
        match &pkt {
            In::Publish(p) => self.detail(|| Detail::Publish {
                topic: p.topic.to_string(),
                retain: p.retain,
                payload_len: p.payload.len(),
                payload: String::from_utf8_lossy(&p.payload[..p.payload.len().min(PAYLOAD_KEPT)])
                    .into_owned(),
                payload_hash: payload_hash(&p.payload),
                user_properties: p
                    .user_properties
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }),
            In::Subscribe { filters, .. } => self.detail(|| Detail::Subscribe {
                filters: filters.iter().map(|(f, o)| (f.to_string(), u8::from(o.qos))).collect(),
            }),
            _ => {}
        }
        if !self.faults.is_empty() {
            let on = match &pkt {
                In::Publish(_) => Some(InPacket::Publish),
                In::PubAck(_) => Some(InPacket::PubAck),
                In::PubRec(_) => Some(InPacket::PubRec),
                In::PubRel(_) => Some(InPacket::PubRel),
                In::PubComp(_) => Some(InPacket::PubComp),
                In::Subscribe { .. } => Some(InPacket::Subscribe),
                In::Unsubscribe { .. } => Some(InPacket::Unsubscribe),
                In::PingReq => Some(InPacket::PingReq),
                In::Disconnect { .. } => Some(InPacket::Disconnect),
                _ => None,
            };
            if on.is_some_and(|p| self.faults.drop_on(p)) {
                self.sh.stats.faults_applied.fetch_add(1, Relaxed);
                self.note(Dir::Out, Kind::Closed, None, None, false, Some(Note::Dropped));
                return Some(Close::Abrupt);
            }
        }
        let session = self.session.clone().expect("connected");
        match pkt {
            In::Publish(p) => return self.on_publish(p, &session),
            In::PubAck(pid) => {
                session.lock().inflight.retain(|o| !(o.pid == pid && o.stage == Stage::AwaitAck));
            }
            In::PubRec(pid) => {
                let known = {
                    let mut st = session.lock();
                    match st.inflight.iter_mut().find(|o| o.pid == pid && o.stage == Stage::AwaitRec) {
                        Some(o) => {
                            o.stage = Stage::AwaitComp;
                            true
                        }
                        None => st.inflight.iter().any(|o| o.pid == pid && o.stage == Stage::AwaitComp),
                    }
                };
                if known {
                    let _ = self.codec.as_ref().expect("connected").ack(
                        Ack::PubRel,
                        pid,
                        0,
                        sink(&mut self.out, &mut self.gate),
                    );
                    self.note(Dir::Out, Kind::PubRel, Some(pid.get()), None, false, None);
                }
            }
            In::PubComp(pid) => {
                session.lock().inflight.retain(|o| !(o.pid == pid && o.stage == Stage::AwaitComp));
            }
            In::PubRel(pid) => {
                session.lock().incoming_qos2.retain(|p| *p != pid);
                let mut b = BytePages::default();
                let _ = self.codec().ack(Ack::PubComp, pid, 0, &mut b);
                self.send_ack(AckPacket::PubComp, Kind::PubComp, Some(pid.get()), b);
            }
            In::Subscribe { pid, filters } => self.on_subscribe(pid, filters, &session),
            In::Unsubscribe { pid, filters } => {
                for f in &filters {
                    let removed = self
                        .sh
                        .router
                        .tree
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .unsubscribe(f, session.id);
                    if removed {
                        self.sh.stats.subscriptions.fetch_sub(1, Relaxed);
                    }
                    session.lock().subscriptions.retain(|(s, _)| s != &**f);
                }
                let mut b = BytePages::default();
                let _ = self.codec().unsuback(pid, filters.len(), &mut b);
                self.send_ack(AckPacket::UnsubAck, Kind::UnsubAck, Some(pid.get()), b);
            }
            In::PingReq => {
                let mut b = BytePages::default();
                let _ = self.codec().pingresp(&mut b);
                self.send_ack(AckPacket::PingResp, Kind::PingResp, None, b);
            }
            In::Disconnect { code, session_expiry } => {
                if let Some(e) = session_expiry {
                    session.lock().expiry_secs = e;
                }
                return Some(if code == 0 { Close::Clean } else { Close::DisconnectWithWill });
            }
            In::Connect(_) | In::Unexpected(_) => {
                self.say_disconnect(0x82);
                return Some(Close::Abrupt);
            }
        }
        None
    }

    fn on_publish(&mut self, p: PublishIn, session: &Arc<Session>) -> Option<Close> {
        if !valid_topic(&p.topic) {
            self.say_disconnect(0x90);
            return Some(Close::Abrupt);
        }
        let q = u8::from(p.qos) as usize;
        if p.qos == QoS::ExactlyOnce {
            let pid = p.pid?;
            let first = {
                let mut st = session.lock();
                let first = !st.incoming_qos2.contains(&pid);
                if first {
                    st.incoming_qos2.push(pid);
                }
                first
            };
            if first {
                self.sh.stats.messages_in[q].fetch_add(1, Relaxed);
                self.route(p.topic, p.payload, p.qos, p.retain, session.id);
            }
            let mut b = BytePages::default();
            let _ = self.codec().ack(Ack::PubRec, pid, 0, &mut b);
            self.send_ack(AckPacket::PubRec, Kind::PubRec, Some(pid.get()), b);
            return None;
        }
        self.sh.stats.messages_in[q].fetch_add(1, Relaxed);
        let pid = p.pid;
        self.route(p.topic, p.payload, p.qos, p.retain, session.id);
        if p.qos == QoS::AtLeastOnce
            && let Some(pid) = pid
        {
            let mut b = BytePages::default();
            let _ = self.codec().ack(Ack::PubAck, pid, 0, &mut b);
            self.send_ack(AckPacket::PubAck, Kind::PubAck, Some(pid.get()), b);
        }
        None
    }

    fn route(&mut self, topic: ByteString, payload: Bytes, qos: QoS, retain: bool, origin: u64) {
        let msg = Arc::new(Message { topic, payload, qos, retain, origin });
        self.sh.router.publish(msg, &self.sh.stats, &mut self.scratch);
    }

    fn on_subscribe(
        &mut self,
        pid: NonZeroU16,
        filters: Vec<(ByteString, codec::SubOpts)>,
        session: &Arc<Session>,
    ) {
        let mut codes = Vec::with_capacity(filters.len());
        let mut retained: Vec<(String, QoS)> = Vec::new();
        for (f, opts) in &filters {
            if !valid_filter(f) {
                codes.push(if self.codec().protocol() == Protocol::V5 { 0x8F } else { 0x80 });
                continue;
            }
            let opts = codec::SubOpts { qos: min_qos(opts.qos, QoS::ExactlyOnce), ..*opts };
            let new = self
                .sh
                .router
                .tree
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .subscribe(f, Sub { session: session.clone(), opts });
            {
                let mut st = session.lock();
                st.subscriptions.retain(|(s, _)| s != &**f);
                st.subscriptions.push((f.to_string(), opts));
            }
            if new {
                self.sh.stats.subscriptions.fetch_add(1, Relaxed);
            }
            if opts.retain_handling == 0 || (opts.retain_handling == 1 && new) {
                retained.push((f.to_string(), opts.qos));
            }
            codes.push(u8::from(opts.qos));
        }
        let mut b = BytePages::default();
        let _ = self.codec().suback(pid, &codes, &mut b);
        self.send_ack(AckPacket::SubAck, Kind::SubAck, Some(pid.get()), b);
        for (f, qos) in retained {
            self.sh.router.send_retained(session, &f, qos, &self.sh.stats);
        }
    }

    async fn finish(mut self, close: Close) {
        let connected = self.session.is_some();
        self.arrived_ns = self.sh.now_ns();
        self.note(Dir::In, Kind::Closed, None, None, false, None);
        self.flush_events();
        if let Some(session) = self.session.take() {
            self.sh.stats.connections.fetch_sub(1, Relaxed);
            match close {
                Close::Clean => self.sh.stats.disconnects_clean.fetch_add(1, Relaxed),
                Close::TakenOver => self.sh.stats.takeovers.fetch_add(1, Relaxed),
                _ => self.sh.stats.disconnects_abrupt.fetch_add(1, Relaxed),
            };
            let will = match close {
                Close::Clean if !self.faults.will_on_clean_disconnect() => None,
                _ => self.will.take(),
            };
            self.sh.detach(&session, self.id, will);
        }
        if connected || close != Close::Clean {
            use tokio::io::AsyncWriteExt;
            let _ = tokio::time::timeout(Duration::from_millis(200), self.stream.shutdown()).await;
        }
    }
}

enum Ev {
    Io(io::Result<IoEv>),
    Mailbox,
    Wake,
    Kick,
    KeepaliveExpired,
    DropFault,
    Shutdown,
}

enum IoEv {
    Data(usize),
    Flushed,
    Eof,
}

/// Writes what is pending, then reads what is there (into `rbuf`), without blocking.
fn poll_io(
    cx: &mut Context<'_>,
    stream: &mut Stream,
    out: &mut Option<BytePages>,
    rbuf: &mut BytesMut,
    wrote: &mut u64,
) -> Poll<io::Result<IoEv>> {
    let mut flushed = false;
    if let Some(p) = out.as_mut() {
        while let Some(mut page) = p.take() {
            match Pin::new(&mut *stream).poll_write(cx, page.as_ref()) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    *wrote += n as u64;
                    if n < page.len() {
                        page.advance_to(n);
                        p.prepend(page);
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    p.prepend(page);
                    break;
                }
            }
        }
        if p.is_empty() {
            *out = None;
            if let Poll::Ready(Err(e)) = Pin::new(&mut *stream).poll_flush(cx) {
                return Poll::Ready(Err(e));
            }
            flushed = true;
        }
    }
    let mut tmp = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut total = 0;
    while total < 4 * READ_CHUNK {
        let mut rb = ReadBuf::uninit(&mut tmp);
        match Pin::new(&mut *stream).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                return Poll::Ready(Ok(if total > 0 { IoEv::Data(total) } else { IoEv::Eof }));
            }
            Poll::Ready(Ok(())) => {
                rbuf.extend_from_slice(rb.filled());
                total += rb.filled().len();
            }
            Poll::Ready(Err(e)) => {
                return Poll::Ready(if total > 0 { Ok(IoEv::Data(total)) } else { Err(e) });
            }
            Poll::Pending => break,
        }
    }
    if total > 0 {
        Poll::Ready(Ok(IoEv::Data(total)))
    } else if flushed {
        Poll::Ready(Ok(IoEv::Flushed))
    } else {
        Poll::Pending
    }
}

/// The message a will becomes.
pub(crate) fn will_message(w: &WillInfo, origin: u64) -> Arc<Message> {
    Arc::new(Message {
        topic: w.topic.clone(),
        payload: w.payload.clone(),
        qos: w.qos,
        retain: w.retain,
        origin,
    })
}
