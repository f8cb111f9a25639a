//! A socket with bytes already read from it put back in front.
//!
//! The plain listener reads each connection's first request head itself
//! (`server/event_stream.rs`) and hands anything that is not an event stream to hyper as a
//! [`Prefixed`] socket, so hyper reads those bytes first. It is a module of its own because the
//! WebSocket route needs the same type back: hyper's `Upgraded` can be downcast to the
//! concrete socket it was served on (`TokioIo<Prefixed>`), and `transport/ws/handshake.rs`
//! runs the WebSocket straight on it rather than through hyper's upgrade layers.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A socket with bytes already read from it put back in front, for hyper (or a WebSocket
/// taken over from it) to read first.
pub struct Prefixed {
    prefix: BytesMut,
    tcp: TcpStream,
}

impl Prefixed {
    pub fn new(prefix: BytesMut, tcp: TcpStream) -> Prefixed {
        Prefixed { prefix, tcp }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.tcp).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        if self.prefix.is_empty() {
            // Give the allocation back rather than keep it for the connection's lifetime.
            self.prefix = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
