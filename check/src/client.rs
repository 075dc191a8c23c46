//! A small request/response MQTT client over the agent's connection state machine and
//! transport: connect, publish and wait for the acknowledgement, subscribe, receive, leave
//! cleanly or abruptly. Every wait has a deadline.

use std::collections::VecDeque;
use std::time::Duration;

use ntex_bytes::{BufMut, BytePages, ByteString, BytesMut};
use squall_agent::mqtt::codec::{ConnectSpec, IncomingPublish, Protocol, QoS, ServerLimits};
use squall_agent::mqtt::inflight::Token;
use squall_agent::mqtt::state::{Connection, Event, Fault, Options};
use squall_agent::mqtt::transport::{self, ConnectFailure, Endpoint, Stream};
use squall_proto::clock::Clock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect: {0}")]
    Connect(ConnectFailure),
    #[error("no answer within {0:?} ({1})")]
    Timeout(Duration, &'static str),
    #[error("the broker closed the connection")]
    Closed,
    #[error("the broker sent DISCONNECT with reason 0x{0:02x}")]
    Disconnected(u8),
    #[error("{0}")]
    Fault(Fault),
    #[error("I/O: {0}")]
    Io(String),
    #[error("the in-flight window is full")]
    Busy,
}

/// The CONNACK, as the check reports it.
#[derive(Debug, Clone)]
pub struct ConnAck {
    pub code: u8,
    pub session_present: bool,
    pub limits: ServerLimits,
    pub elapsed: Duration,
}

pub struct Client {
    stream: Stream,
    conn: Connection,
    rbuf: BytesMut,
    clock: Clock,
    inbox: VecDeque<IncomingPublish>,
    events: VecDeque<Event>,
    /// The first bytes of the last read that began a packet (to recognise a 3.1.1 CONNACK).
    head: [u8; 4],
}

/// An acknowledgement of a QoS 1/2 publish: its reason code and how long it took.
#[derive(Debug, Clone, Copy)]
pub struct Acked {
    pub code: u8,
    pub elapsed: Duration,
}

impl Client {
    /// Opens the stream (TCP, TLS) and sends CONNECT; returns the client and its CONNACK (a
    /// refusing CONNACK is returned as such, with the client closed).
    pub async fn connect(
        ep: &Endpoint,
        spec: &ConnectSpec,
        protocol: Protocol,
        timeout: Duration,
    ) -> Result<(Client, ConnAck), ClientError> {
        let stream = tokio::time::timeout(timeout, transport::connect(ep, None))
            .await
            .map_err(|_| ClientError::Timeout(timeout, "TCP/TLS"))?
            .map_err(ClientError::Connect)?;
        Self::handshake(stream, spec, protocol, timeout).await
    }

    /// CONNECT/CONNACK over an open stream.
    pub async fn handshake(
        stream: Stream,
        spec: &ConnectSpec,
        protocol: Protocol,
        timeout: Duration,
    ) -> Result<(Client, ConnAck), ClientError> {
        let clock = Clock::new();
        let ns = timeout.as_nanos() as u64;
        let mut c = Client {
            stream,
            conn: Connection::new(Options {
                protocol,
                keepalive_secs: spec.keepalive_secs,
                max_inflight: 1000,
                connect_timeout_ns: ns,
                ack_timeout_ns: ns,
                max_inbound_packet: 16 << 20,
            }),
            rbuf: BytesMut::new(),
            clock,
            inbox: VecDeque::new(),
            events: VecDeque::new(),
            head: [0; 4],
        };
        c.conn.begin(spec, c.clock.now_ns()).map_err(ClientError::Fault)?;
        c.flush().await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(i) = c.events.iter().position(|e| matches!(e, Event::ConnAck { .. })) {
                let Some(Event::ConnAck { session_present, code, limits, elapsed_ns }) = c.events.remove(i)
                else {
                    unreachable!()
                };
                return Ok((
                    c,
                    ConnAck {
                        code,
                        session_present,
                        limits: *limits,
                        elapsed: Duration::from_nanos(elapsed_ns),
                    },
                ));
            }
            match c.read(deadline, "CONNACK").await {
                // a broker without MQTT 5 answers in 3.1.1's form (20 02 00 01: "unacceptable
                // protocol version"), which MQTT 5's decoder cannot read: take it for what it says
                Err(ClientError::Fault(_))
                    if protocol == Protocol::V5 && c.head[..4] == [0x20, 0x02, 0x00, 0x01] =>
                {
                    return Ok((
                        c,
                        ConnAck {
                            code: 0x84,
                            session_present: false,
                            limits: Default::default(),
                            elapsed: Duration::from_nanos(0),
                        },
                    ));
                }
                r => r?,
            }
        }
    }

    async fn flush(&mut self) -> Result<(), ClientError> {
        if let Some(mut out) = self.conn.take_output() {
            while let Some(page) = out.take() {
                self.stream.write_all(page.as_ref()).await.map_err(|e| ClientError::Io(e.to_string()))?;
            }
            self.stream.flush().await.map_err(|e| ClientError::Io(e.to_string()))?;
        }
        Ok(())
    }

    /// Reads once (by `deadline`) and handles what came.
    async fn read(&mut self, deadline: tokio::time::Instant, what: &'static str) -> Result<(), ClientError> {
        let mut tmp = [0u8; 16 * 1024];
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let n = match tokio::time::timeout_at(deadline, self.stream.read(&mut tmp)).await {
            Err(_) => return Err(ClientError::Timeout(remaining, what)),
            Ok(Err(e)) => return Err(ClientError::Io(e.to_string())),
            Ok(Ok(0)) => return Err(ClientError::Closed),
            Ok(Ok(n)) => n,
        };
        if self.rbuf.is_empty() {
            let k = n.min(4);
            self.head = [0; 4];
            self.head[..k].copy_from_slice(&tmp[..k]);
        }
        self.rbuf.extend_from_slice(&tmp[..n]);
        let now = self.clock.now_ns();
        let (inbox, events) = (&mut self.inbox, &mut self.events);
        self.conn
            .handle(&mut self.rbuf, now, |e| match e {
                Event::Message(m) => inbox.push_back(m),
                Event::Disconnect { code } => events.push_back(Event::Disconnect { code }),
                other => events.push_back(other),
            })
            .map_err(ClientError::Fault)?;
        if let Some(Event::Disconnect { code }) =
            self.events.iter().find(|e| matches!(e, Event::Disconnect { .. }))
        {
            return Err(ClientError::Disconnected(*code));
        }
        self.flush().await // answers (PUBACK, PUBREC, PUBCOMP) go out at once
    }

    /// Publishes; for QoS 1/2 waits for PUBACK/PUBCOMP (or a refusing PUBACK/PUBREC).
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        timeout: Duration,
    ) -> Result<Option<Acked>, ClientError> {
        let seq = fastrand::u64(..);
        let start = self.clock.now_ns();
        let topic = ByteString::from(topic);
        let r = self
            .conn
            .publish(
                start,
                &topic,
                qos,
                retain,
                Token { seq, intended_ns: start },
                payload.len() as u32,
                |out: &mut BytePages| out.put_slice(payload),
            )
            .map_err(ClientError::Fault)?;
        if r.is_err() {
            return Err(ClientError::Busy);
        }
        self.flush().await?;
        if qos == QoS::AtMostOnce {
            return Ok(None);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(i) = self
                .events
                .iter()
                .position(|e| matches!(e, Event::PublishDone { token, .. } if token.seq == seq))
            {
                let Some(Event::PublishDone { code, .. }) = self.events.remove(i) else { unreachable!() };
                return Ok(Some(Acked { code, elapsed: Duration::from_nanos(self.clock.now_ns() - start) }));
            }
            self.read(deadline, if qos == QoS::AtLeastOnce { "PUBACK" } else { "PUBREC/PUBCOMP" }).await?;
        }
    }

    /// Subscribes; returns the SUBACK codes (granted QoS, or ≥ 0x80).
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: QoS,
        timeout: Duration,
    ) -> Result<Vec<u8>, ClientError> {
        let seq = fastrand::u64(..);
        let r = self
            .conn
            .subscribe(self.clock.now_ns(), &[(ByteString::from(filter), qos)], Token { seq, intended_ns: 0 })
            .map_err(ClientError::Fault)?;
        if r.is_err() {
            return Err(ClientError::Busy);
        }
        self.flush().await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(i) =
                self.events.iter().position(|e| matches!(e, Event::SubAck { token, .. } if token.seq == seq))
            {
                let Some(Event::SubAck { codes, .. }) = self.events.remove(i) else { unreachable!() };
                return Ok(codes);
            }
            self.read(deadline, "SUBACK").await?;
        }
    }

    /// The next message, if one comes within `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Result<Option<IncomingPublish>, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(m) = self.inbox.pop_front() {
                return Ok(Some(m));
            }
            match self.read(deadline, "a message").await {
                Ok(()) => {}
                Err(ClientError::Timeout(..)) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Messages on `topic` within `timeout`, up to `n`.
    pub async fn recv_on(
        &mut self,
        topic: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<IncomingPublish>, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match self.recv(left).await? {
                Some(m) if &*m.topic == topic => got.push(m),
                Some(_) => {}
                None => break,
            }
        }
        Ok(got)
    }

    /// PINGREQ → PINGRESP round trip.
    pub async fn ping(&mut self, timeout: Duration) -> Result<Duration, ClientError> {
        let start = self.clock.now_ns();
        self.conn.ping(start).map_err(ClientError::Fault)?;
        self.flush().await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(i) = self.events.iter().position(|e| matches!(e, Event::Pong { .. })) {
                self.events.remove(i);
                return Ok(Duration::from_nanos(self.clock.now_ns() - start));
            }
            self.read(deadline, "PINGRESP").await?;
        }
    }

    /// DISCONNECT (reason 0), then close, and wait (briefly) for the broker to close its side:
    /// the next connection then never races this one for a connection limit.
    pub async fn disconnect(mut self) {
        let _ = self.conn.disconnect(0);
        let _ = self.flush().await;
        let _ = tokio::time::timeout(Duration::from_millis(500), self.stream.shutdown()).await;
        let mut sink = [0u8; 1024];
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Ok(n) = self.stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }

    /// Closes the network connection without DISCONNECT (the broker must publish the will).
    pub fn abort(self) {
        drop(self.stream);
    }
}
