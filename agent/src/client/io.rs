//! The one non-blocking I/O step of a connection: write what is pending, read what is there.
//!
//! Reads go through a buffer on the stack of the poll (not in the task), so an idle connection
//! holds no read buffer at all; data is copied into the connection's buffer only when it came.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use ntex_bytes::{BytePages, BytesMut};
use tokio::io::{AsyncWrite, ReadBuf};

use crate::mqtt::transport::Stream;

const READ_CHUNK: usize = 16 * 1024;
/// Most bytes read in one step before they are processed.
pub const READ_BUDGET: usize = 64 * 1024;

pub enum IoEvent {
    /// This many bytes were appended to the read buffer; and how long ago the newest of them
    /// arrived, ns, when the kernel stamped it (TCP).
    Data(usize, Option<u64>),
    /// Everything pending was written.
    Flushed,
    /// Data is there to read ([`ReadMode::Watch`]), left unread.
    Waiting,
    /// The broker closed the connection.
    Eof,
}

/// What a step does with the read side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Read what is there.
    Read,
    /// Do not read; say when data is there ([`IoEvent::Waiting`]).
    Watch,
    /// Leave the read side alone.
    Off,
}

pub fn poll_io(
    cx: &mut Context<'_>,
    stream: &mut Stream,
    pending: &mut Option<BytePages>,
    rbuf: &mut BytesMut,
    bytes_out: &mut u64,
    reading: ReadMode,
) -> Poll<io::Result<IoEvent>> {
    let mut flushed = false;
    // this step handed the last pending bytes to the stream
    let mut wrote_all = false;
    if let Some(p) = pending.as_mut() {
        while let Some(mut page) = p.take() {
            match Pin::new(&mut *stream).poll_write(cx, page.as_ref()) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    *bytes_out += n as u64;
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
            *pending = None;
            wrote_all = true;
        }
    }
    // TLS holds records, WebSocket the rest of a frame, until flushed: flushed until they are
    // out, whether or not anything is left to write (TCP's flush is free, and never asked)
    if pending.is_none() && stream.wants_flush() {
        match Pin::new(&mut *stream).poll_flush(cx) {
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => flushed = true,
            // the waker is registered: the socket taking more comes back here
            Poll::Pending => {}
        }
    } else if pending.is_none() && wrote_all {
        flushed = true;
    }
    if reading == ReadMode::Watch {
        return match stream.poll_read_ready(cx) {
            Poll::Ready(r) => Poll::Ready(r.map(|()| IoEvent::Waiting)),
            Poll::Pending if flushed => Poll::Ready(Ok(IoEvent::Flushed)),
            Poll::Pending => Poll::Pending,
        };
    }
    let mut tmp = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut total = 0;
    let mut age = None;
    while reading == ReadMode::Read && total < READ_BUDGET {
        let mut rb = ReadBuf::uninit(&mut tmp);
        match stream.poll_read_stamped(cx, &mut rb) {
            Poll::Ready(Ok(stamped)) => {
                let filled = rb.filled();
                if filled.is_empty() {
                    return Poll::Ready(Ok(if total > 0 { IoEvent::Data(total, age) } else { IoEvent::Eof }));
                }
                rbuf.extend_from_slice(filled);
                total += filled.len();
                // the newest bytes are the last read's
                age = stamped;
            }
            Poll::Ready(Err(e)) => {
                return Poll::Ready(if total > 0 { Ok(IoEvent::Data(total, age)) } else { Err(e) });
            }
            Poll::Pending => break,
        }
    }
    if total > 0 {
        Poll::Ready(Ok(IoEvent::Data(total, age)))
    } else if flushed {
        Poll::Ready(Ok(IoEvent::Flushed))
    } else {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::transport::{WsStream, connect_tcp};
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    /// Payload bytes of a client's (masked) WebSocket frames in `wire`, from its start; the
    /// bytes of an incomplete last frame are left uncounted.
    fn unmasked_len(wire: &[u8]) -> usize {
        let (mut at, mut total) = (0, 0);
        while wire.len() >= at + 2 {
            let (len, head) = match wire[at + 1] & 0x7f {
                126 if wire.len() >= at + 4 => (u16::from_be_bytes([wire[at + 2], wire[at + 3]]) as usize, 4),
                127 if wire.len() >= at + 10 => {
                    (u64::from_be_bytes(wire[at + 2..at + 10].try_into().unwrap()) as usize, 10)
                }
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if wire.len() < at + head + 4 + len {
                break;
            }
            total += len;
            at += head + 4 + len;
        }
        total
    }

    /// A WebSocket frame the socket took only part of goes out once the socket takes more,
    /// with nothing more to write: the step keeps flushing (it had flushed once, got "not yet",
    /// and never asked again: the rest of the frame waited for the next message).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_rest_of_a_frame_goes_out_without_another_write() {
        // small buffers on both ends, so 300 KiB does not fit while nobody reads
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let (client, accepted) =
            tokio::join!(connect_tcp(listener.local_addr().unwrap(), None), listener.accept());
        let client = client.unwrap();
        socket2::SockRef::from(&client).set_send_buffer_size(4096).unwrap();
        let (mut server, _) = accepted.unwrap();
        let mut stream = Stream::Ws(Box::new(WsStream::over(Stream::Tcp(client), Vec::new())));
        const N: usize = 300 << 10;
        let mut pages = BytePages::default();
        ntex_bytes::BufMut::put_slice(&mut pages, &vec![0x5a; N]);
        let mut pending = Some(pages);
        let drive = async move {
            let (mut rbuf, mut out) = (BytesMut::new(), 0u64);
            while pending.is_some() || stream.wants_flush() {
                std::future::poll_fn(|cx| {
                    poll_io(cx, &mut stream, &mut pending, &mut rbuf, &mut out, ReadMode::Off)
                })
                .await
                .unwrap();
            }
            stream
        };
        let read = async move {
            // a reader that comes late: the client's socket is full by then
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut wire = Vec::new();
            let mut buf = vec![0u8; 64 << 10];
            while unmasked_len(&wire) < N {
                let n = server.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed early");
                wire.extend_from_slice(&buf[..n]);
            }
            unmasked_len(&wire)
        };
        let (stream, got) =
            tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(drive, read) }).await.expect(
                "every byte handed to the WebSocket layer reached the server (the rest of a frame was stuck)",
            );
        assert_eq!(got, N);
        assert!(!stream.wants_flush());
    }
}
