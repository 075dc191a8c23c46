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
            // TLS holds records until flushed; TCP's flush is free
            if let Poll::Ready(Err(e)) = Pin::new(&mut *stream).poll_flush(cx) {
                return Poll::Ready(Err(e));
            }
            flushed = true;
        }
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
