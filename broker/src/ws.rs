//! MQTT over WebSocket on the broker's side: the opening handshake and the framing are
//! tungstenite's (an implementation apart from the one squall's clients use, so each checks the
//! other), and this adapter turns its messages back into the byte stream a connection reads.
//!
//! The handshake answers with the `mqtt` subprotocol when the client asks for it (MQTT 3.1.1 §6,
//! MQTT 5 §6; paho refuses a server that leaves it out). Each write goes out as one binary
//! message; a text message from a client is a protocol error (MQTT over WebSocket is binary).
//! Pings are answered by tungstenite as it reads.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Sink, Stream as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Message};

/// A WebSocket connection as bytes.
pub(crate) struct WsIo<S> {
    ws: WebSocketStream<S>,
    /// The message being read, from `at`.
    read: Bytes,
    at: usize,
}

/// The largest message a client may send: the largest packet the broker takes, and its header.
fn config(max_packet: u32) -> WebSocketConfig {
    let max = max_packet as usize + 8;
    WebSocketConfig::default().max_message_size(Some(max)).max_frame_size(Some(max))
}

/// Answers the opening handshake on `stream`.
pub(crate) async fn accept<S>(
    stream: S,
    max_packet: u32,
) -> Result<WsIo<S>, tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let callback = |req: &Request, mut res: Response| -> Result<Response, ErrorResponse> {
        let asks_mqtt = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|p| p.trim() == "mqtt"));
        if asks_mqtt {
            res.headers_mut().insert("sec-websocket-protocol", "mqtt".parse().expect("a valid header value"));
        }
        Ok(res)
    };
    let ws =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config(max_packet))).await?;
    Ok(WsIo { ws, read: Bytes::new(), at: 0 })
}

fn to_io(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Io(e) => e,
        E::ConnectionClosed | E::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.at < this.read.len() {
                let n = buf.remaining().min(this.read.len() - this.at);
                buf.put_slice(&this.read[this.at..this.at + n]);
                this.at += n;
                return Poll::Ready(Ok(()));
            }
            match std::task::ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(b))) => {
                    this.read = b;
                    this.at = 0;
                }
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text message: MQTT is carried in binary messages",
                    )));
                }
                // the end: a close, or the stream's
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                // pings are answered as tungstenite reads; pongs and raw frames mean nothing here
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(to_io)?;
        Pin::new(&mut this.ws).start_send(Message::Binary(Bytes::copy_from_slice(buf))).map_err(to_io)?;
        // handed to tungstenite: it goes out as far as the socket takes it now, the rest on flush
        let _ = Pin::new(&mut this.ws).poll_flush(cx).map_err(to_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws).poll_close(cx).map_err(to_io)
    }
}
