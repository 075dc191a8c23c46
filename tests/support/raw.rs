//! A hand-written MQTT 3.1.1 client (no library between a test and the packets).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw 3.1.1 connection.
pub struct Raw {
    pub s: TcpStream,
}

/// A packet: its first byte (type and flags) and its body.
pub type Packet = (u8, Vec<u8>);

pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

pub fn string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

pub fn publish(topic: &str, pid: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = string(topic);
    body.extend_from_slice(&pid.to_be_bytes());
    body.extend_from_slice(payload);
    frame(0x32, &body)
}

impl Raw {
    /// Opens a connection and sends CONNECT (clean session or not); does not wait.
    pub async fn open(addr: SocketAddr, id: &str, clean: bool) -> Raw {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut body = string("MQTT");
        body.extend_from_slice(&[4, if clean { 0x02 } else { 0x00 }, 0, 60]);
        body.extend_from_slice(&string(id));
        s.write_all(&frame(0x10, &body)).await.unwrap();
        Raw { s }
    }

    /// Connects and reads the CONNACK: its session-present flag.
    pub async fn connect(addr: SocketAddr, id: &str, clean: bool) -> (Raw, bool) {
        let mut r = Raw::open(addr, id, clean).await;
        let (first, body) = r.read().await.expect("a CONNACK");
        assert_eq!((first, body[1]), (0x20, 0), "CONNACK accepted");
        (r, body[0] & 1 == 1)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    pub async fn subscribe(&mut self, filter: &str, pid: u16) {
        let mut body = pid.to_be_bytes().to_vec();
        body.extend_from_slice(&string(filter));
        body.push(1);
        self.send(&frame(0x82, &body)).await;
        let (first, _) = self.read().await.expect("a SUBACK");
        assert_eq!(first, 0x90);
    }

    /// The next packet, or `None` if none comes within 5 s (or the connection ends).
    pub async fn read(&mut self) -> Option<Packet> {
        self.read_within(Duration::from_secs(5)).await
    }

    pub async fn read_within(&mut self, limit: Duration) -> Option<Packet> {
        tokio::time::timeout(limit, async {
            let first = self.s.read_u8().await.ok()?;
            let (mut len, mut shift) = (0usize, 0);
            loop {
                let b = self.s.read_u8().await.ok()?;
                len |= ((b & 0x7f) as usize) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            let mut body = vec![0; len];
            self.s.read_exact(&mut body).await.ok()?;
            Some((first, body))
        })
        .await
        .ok()
        .flatten()
    }
}

pub fn pid_of(body: &[u8]) -> u16 {
    u16::from_be_bytes([body[0], body[1]])
}
