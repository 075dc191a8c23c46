//! MQTT over WebSocket (RFC 6455 with the `mqtt` subprotocol, as MQTT 3.1.1 §6 and MQTT 5 §6
//! ask): the opening handshake, and the framing as one more layer of the transport.
//!
//! Written here, not taken from a WebSocket client crate, because it sits on the hot path:
//! frames are read from the same stamped `recvmsg` as plain TCP, so `ws://` keeps the kernel's
//! arrival stamps (a message-level client owns the socket and hides them), and payload bytes
//! are handed on as they arrive rather than once a whole frame is in. The parsing of the
//! server's HTTP response is `httparse`'s. squall's own broker serves WebSocket through
//! tokio-tungstenite, an implementation apart, so the two check each other.
//!
//! What a client must do (RFC 6455): mask every frame it sends (§5.3), fail on a masked frame
//! from the server (§5.1), answer a ping with a pong carrying its payload (§5.5.2), and answer
//! a close with a close (§5.5.1). MQTT is carried in binary frames; a text frame is an error
//! (MQTT §6). A frame longer than the largest packet squall accepts is an error too, so a
//! hostile server cannot make a client hold more than that.

use base64::Engine;

/// The GUID of RFC 6455 §1.3, for the accept key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Bytes of a server's handshake response, at most (headers only; a broker's are a few hundred).
pub const MAX_RESPONSE: usize = 8 << 10;

/// A frame's payload, at most: the largest MQTT packet a client accepts (see the client's
/// `MAX_INBOUND_PACKET`), plus the fixed header.
pub const MAX_FRAME: u64 = (16 << 20) + 8;

/// A client sends at most this much in one frame (a larger write goes out as several).
pub const MAX_OUT_FRAME: usize = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    #[error("WebSocket handshake: {0}")]
    Handshake(String),
    #[error("WebSocket: {0}")]
    Protocol(String),
}

fn proto(m: impl Into<String>) -> WsError {
    WsError::Protocol(m.into())
}

/// The accept key a server must answer `key` with (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    let digest =
        ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, format!("{key}{GUID}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// The opening request for `path` on `host:port`, and the accept key the answer must carry.
pub fn request(host: &str, port: u16, path: &str) -> (Vec<u8>, String) {
    let nonce: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    let host = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    );
    (req.into_bytes(), accept_key(&key))
}

/// Reads the server's answer from the start of `buf`: the bytes it took once it is complete
/// and accepts the upgrade (`Ok(Some(n))`; what follows is already WebSocket), `Ok(None)` while
/// it is incomplete, or why it refused.
pub fn response(buf: &[u8], accept: &str) -> Result<Option<usize>, WsError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let n = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_RESPONSE => {
            return Err(WsError::Handshake(format!(
                "no end to the response's headers in {MAX_RESPONSE} bytes"
            )));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(WsError::Handshake(format!("not an HTTP response ({e})"))),
    };
    let code = r.code.unwrap_or(0);
    if code != 101 {
        return Err(WsError::Handshake(format!(
            "the server answered {code} {} instead of 101 Switching Protocols (is the path right?)",
            r.reason.unwrap_or("")
        )));
    }
    let header = |name: &str| {
        r.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    if !header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        return Err(WsError::Handshake("the answer does not upgrade to websocket".into()));
    }
    if header("sec-websocket-accept").as_deref() != Some(accept) {
        return Err(WsError::Handshake(
            "the server's Sec-WebSocket-Accept does not match the key sent".into(),
        ));
    }
    // a server that names a subprotocol must name ours; one that names none is tolerated (some
    // brokers leave it out), as most MQTT clients do
    if let Some(p) = header("sec-websocket-protocol")
        && !p.split(',').any(|x| x.trim() == "mqtt")
    {
        return Err(WsError::Handshake(format!("the server chose subprotocol `{p}`, not mqtt")));
    }
    Ok(Some(n))
}

/// Appends one final frame of `opcode` carrying `payload`, masked with `mask`.
fn frame(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let at = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[at..].iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// Appends a binary frame carrying `payload` (a client's: masked, with a fresh key).
pub fn binary(payload: &[u8], out: &mut Vec<u8>) {
    frame(0x2, payload, fastrand::u32(..).to_be_bytes(), out);
}

/// Appends a pong echoing a ping's payload.
pub fn pong(payload: &[u8], out: &mut Vec<u8>) {
    frame(0xA, payload, fastrand::u32(..).to_be_bytes(), out);
}

/// Appends a close frame with status 1000 (normal closure).
pub fn close(out: &mut Vec<u8>) {
    frame(0x8, &1000u16.to_be_bytes(), fastrand::u32(..).to_be_bytes(), out);
}

/// What the server's control frames ask of the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Answer with a pong carrying this.
    Ping(Vec<u8>),
    /// The server closes: answer with a close; no more data follows.
    Close,
}

/// The server's frames, as they arrive: data payloads are handed on at once, control frames
/// (at most 125 bytes each, never fragmented) are taken whole.
#[derive(Debug, Default)]
pub struct Deframer {
    /// Payload bytes still to come of the data frame under way.
    data_left: u64,
    /// A fragmented message is under way (its next frames are continuations).
    in_message: bool,
    closed: bool,
}

impl Deframer {
    /// The server sent a close.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Whether a frame is under way (an end of stream now cuts it).
    pub fn mid_frame(&self) -> bool {
        self.data_left > 0 || self.in_message
    }

    /// Moves the data in `raw` (from its start) into `plain`, takes in whole control frames,
    /// and leaves an incomplete header or control frame in `raw` for the next call.
    pub fn feed(
        &mut self,
        raw: &mut Vec<u8>,
        plain: &mut Vec<u8>,
        control: &mut Vec<Control>,
    ) -> Result<(), WsError> {
        let mut at = 0;
        while at < raw.len() && !self.closed {
            if self.data_left > 0 {
                let take = (self.data_left as usize).min(raw.len() - at);
                plain.extend_from_slice(&raw[at..at + take]);
                self.data_left -= take as u64;
                at += take;
                continue;
            }
            let Some((fin, opcode, len, header)) = header(&raw[at..])? else { break };
            match opcode {
                0x0 if !self.in_message => {
                    return Err(proto("a continuation frame with no message under way"));
                }
                0x1 => return Err(proto("a text frame: MQTT is carried in binary frames")),
                0x0 | 0x2 => {
                    if opcode == 0x2 && self.in_message {
                        return Err(proto("a new message while a fragmented one is under way"));
                    }
                    if len > MAX_FRAME {
                        return Err(proto(format!(
                            "a frame of {len} bytes, more than the {MAX_FRAME} a client accepts"
                        )));
                    }
                    self.in_message = !fin;
                    self.data_left = len;
                    at += header;
                }
                0x8..=0xA => {
                    if !fin || len > 125 {
                        return Err(proto("a control frame fragmented or longer than 125 bytes"));
                    }
                    let end = at + header + len as usize;
                    if end > raw.len() {
                        break; // the rest of it is still to come
                    }
                    let payload = &raw[at + header..end];
                    match opcode {
                        0x8 => {
                            self.closed = true;
                            control.push(Control::Close);
                        }
                        0x9 => control.push(Control::Ping(payload.to_vec())),
                        _ => {} // an unsolicited pong is allowed and means nothing
                    }
                    at = end;
                }
                other => return Err(proto(format!("opcode {other:#x} is reserved"))),
            }
        }
        if self.closed {
            // nothing after a close counts (RFC 6455 §5.5.1)
            raw.clear();
        } else {
            raw.drain(..at);
        }
        Ok(())
    }
}

/// A frame's header at the start of `b`: (final, opcode, payload length, header length), or
/// `None` until all of it is there.
fn header(b: &[u8]) -> Result<Option<(bool, u8, u64, usize)>, WsError> {
    if b.len() < 2 {
        return Ok(None);
    }
    if b[0] & 0x70 != 0 {
        return Err(proto("reserved bits set (no extension was agreed)"));
    }
    if b[1] & 0x80 != 0 {
        return Err(proto("a masked frame from the server"));
    }
    let (fin, opcode) = (b[0] & 0x80 != 0, b[0] & 0x0F);
    let (len, header) = match b[1] & 0x7F {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as u64, 4),
        127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")), 10),
        126 | 127 => return Ok(None),
        n => (n as u64, 2),
    };
    Ok(Some((fin, opcode, len, header)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A server's frame (unmasked), as a broker writes it.
    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(fin as u8) << 7 | opcode];
        let n = payload.len();
        if n < 126 {
            out.push(n as u8);
        } else if n <= u16::MAX as usize {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    /// Unmasks a client's frame as a server would: (opcode, payload).
    fn unmask(f: &[u8]) -> (u8, Vec<u8>) {
        assert_eq!(f[0] & 0x80, 0x80, "final");
        assert_eq!(f[1] & 0x80, 0x80, "a client's frames are masked");
        let (len, at) = match f[1] & 0x7F {
            126 => (u16::from_be_bytes([f[2], f[3]]) as usize, 4),
            127 => (u64::from_be_bytes(f[2..10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        let mask = &f[at..at + 4];
        let payload: Vec<u8> =
            f[at + 4..at + 4 + len].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
        assert_eq!(f.len(), at + 4 + len, "one frame");
        (f[0] & 0x0F, payload)
    }

    #[test]
    fn the_accept_key_is_rfc_6455s() {
        // the example of RFC 6455 §1.3
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn a_response_is_checked_before_the_upgrade() {
        let (req, accept) = request("broker", 8080, "/mqtt");
        let req = String::from_utf8(req).unwrap();
        assert!(
            req.starts_with("GET /mqtt HTTP/1.1\r\n") && req.contains("Sec-WebSocket-Protocol: mqtt\r\n")
        );
        let ok = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        );
        let mut with_data = ok.clone().into_bytes();
        with_data.extend_from_slice(&[0x82, 0x02, 0x20, 0x02]);
        assert_eq!(response(&with_data, &accept), Ok(Some(ok.len())), "what follows is WebSocket");
        assert_eq!(response(&ok.as_bytes()[..40], &accept), Ok(None), "incomplete");
        let wrong = ok.replace(&accept, "AAAA");
        assert!(response(wrong.as_bytes(), &accept).unwrap_err().to_string().contains("does not match"));
        let refused = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert!(response(refused.as_bytes(), &accept).unwrap_err().to_string().contains("404 Not Found"));
        let other = ok.replace("Sec-WebSocket-Protocol: mqtt", "Sec-WebSocket-Protocol: chat");
        assert!(response(other.as_bytes(), &accept).unwrap_err().to_string().contains("not mqtt"));
        assert!(response(b"SSH-2.0-OpenSSH\r\n\r\n", &accept).is_err());
        assert!(response(&vec![b'x'; MAX_RESPONSE], &accept).is_err(), "bounded");
    }

    #[test]
    fn control_frames_are_answered_and_data_is_handed_on_as_it_comes() {
        let mut d = Deframer::default();
        let (mut raw, mut plain, mut control) = (Vec::new(), Vec::new(), Vec::new());
        // a ping between two halves of a fragmented message, then a close
        let mut wire = server_frame(false, 0x2, b"hel");
        wire.extend(server_frame(true, 0x9, b"ping!"));
        wire.extend(server_frame(true, 0x0, b"lo"));
        wire.extend(server_frame(true, 0x8, &1000u16.to_be_bytes()));
        // byte by byte: nothing is lost at any split
        for b in wire {
            raw.push(b);
            d.feed(&mut raw, &mut plain, &mut control).unwrap();
        }
        assert_eq!(plain, b"hello");
        assert_eq!(control, vec![Control::Ping(b"ping!".to_vec()), Control::Close]);
        assert!(d.closed() && raw.is_empty());
    }

    #[test]
    fn what_a_client_must_refuse_is_refused() {
        for (wire, why) in [
            (vec![0x82 | 0x40, 0x00], "reserved bits"),
            (vec![0x82, 0x81, 1, 2, 3, 4, 0], "masked frame from the server"),
            (server_frame(true, 0x1, b"text"), "text frame"),
            (server_frame(true, 0x0, b"x"), "continuation"),
            (server_frame(false, 0x9, b""), "control frame"),
            (vec![0x82, 127, 0xFF, 0, 0, 0, 0, 0, 0, 0], "more than"),
            (server_frame(true, 0x3, b""), "reserved"),
        ] {
            let mut d = Deframer::default();
            let (mut raw, mut plain, mut control) = (wire, Vec::new(), Vec::new());
            let e = d.feed(&mut raw, &mut plain, &mut control).unwrap_err();
            assert!(e.to_string().contains(why), "{e} (wanted {why})");
        }
    }

    proptest! {
        /// A client's frames carry its bytes exactly, masked, whatever their size.
        #[test]
        fn client_frames_carry_their_payload(payload in proptest::collection::vec(any::<u8>(), 0..70_000)) {
            let mut out = Vec::new();
            binary(&payload, &mut out);
            prop_assert_eq!(unmask(&out), (0x2, payload));
        }

        /// Server messages, fragmented any way and cut into reads any way, come out whole and
        /// in order.
        #[test]
        fn server_messages_survive_any_fragmentation_and_reads(
            messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..6),
            cuts in proptest::collection::vec(1usize..400, 1..40),
            fragment in 1usize..2000,
        ) {
            let mut wire = Vec::new();
            for m in &messages {
                let parts: Vec<&[u8]> = if m.is_empty() { vec![&m[..]] } else { m.chunks(fragment).collect() };
                for (i, p) in parts.iter().enumerate() {
                    let opcode = if i == 0 { 0x2 } else { 0x0 };
                    wire.extend(server_frame(i + 1 == parts.len(), opcode, p));
                }
            }
            let mut d = Deframer::default();
            let (mut raw, mut plain, mut control) = (Vec::new(), Vec::new(), Vec::new());
            let mut at = 0;
            for c in cuts.iter().cycle() {
                if at >= wire.len() {
                    break;
                }
                let end = (at + c).min(wire.len());
                raw.extend_from_slice(&wire[at..end]);
                at = end;
                d.feed(&mut raw, &mut plain, &mut control).unwrap();
            }
            prop_assert_eq!(plain, messages.concat());
            prop_assert!(raw.is_empty() && control.is_empty() && !d.mid_frame());
        }

        /// Whatever a hostile server sends, the deframer errs or keeps what it holds bounded:
        /// never a panic, never more held than a control frame's worth.
        #[test]
        fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
            let mut d = Deframer::default();
            let (mut raw, mut plain, mut control) = (Vec::new(), Vec::new(), Vec::new());
            for c in chunks {
                raw.extend(c);
                if d.feed(&mut raw, &mut plain, &mut control).is_err() {
                    break;
                }
                prop_assert!(raw.len() <= 10 + 125, "held {} bytes", raw.len());
            }
        }
    }
}
