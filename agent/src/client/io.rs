//! The one non-blocking I/O step of a connection: write what is pending, read what is there.
//!
//! Reads go through a buffer on the stack of the poll (not in the task), so an idle connection
//! holds no read buffer at all; data is copied into the connection's buffer only when it came.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use ntex_bytes::{BytePages, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::mqtt::transport::Stream;

const READ_CHUNK: usize = 16 * 1024;
/// Most bytes read in one step before they are processed.
pub const READ_BUDGET: usize = 64 * 1024;

pub enum IoEvent {
    /// This many bytes were appended to the read buffer.
    Data(usize),
    /// Everything pending was written.
    Flushed,
    /// The broker closed the connection.
    Eof,
}

pub fn poll_io(
    cx: &mut Context<'_>,
    stream: &mut Stream,
    pending: &mut Option<BytePages>,
    rbuf: &mut BytesMut,
    bytes_out: &mut u64,
    read: bool,
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
    let mut tmp = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut total = 0;
    while read && total < READ_BUDGET {
        let mut rb = ReadBuf::uninit(&mut tmp);
        match Pin::new(&mut *stream).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let filled = rb.filled();
                if filled.is_empty() {
                    return Poll::Ready(Ok(if total > 0 { IoEvent::Data(total) } else { IoEvent::Eof }));
                }
                rbuf.extend_from_slice(filled);
                total += filled.len();
            }
            Poll::Ready(Err(e)) => {
                return Poll::Ready(if total > 0 { Ok(IoEvent::Data(total)) } else { Err(e) });
            }
            Poll::Pending => break,
        }
    }
    if total > 0 {
        Poll::Ready(Ok(IoEvent::Data(total)))
    } else if flushed {
        Poll::Ready(Ok(IoEvent::Flushed))
    } else {
        Poll::Pending
    }
}
