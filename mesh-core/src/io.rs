//! Connection I/O adapters.
//!
//! [`PrefixedIo`] gives back the bytes protocol detection consumed: the server that finally
//! handles the connection reads them first, then the socket, as if nothing had been read.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pin_project! {
    /// An I/O stream whose read side first yields a buffered prefix.
    ///
    /// Writes go straight to the inner stream, including vectored writes, so hyper keeps
    /// sending a response head and body in one `writev`.
    #[derive(Debug)]
    pub struct PrefixedIo<I> {
        prefix: Bytes,
        #[pin]
        io: I,
    }
}

impl<I> PrefixedIo<I> {
    /// Wraps `io` so that reads return `prefix` first.
    pub fn new(prefix: Bytes, io: I) -> Self {
        Self { prefix, io }
    }

    /// The bytes not yet read back.
    pub fn prefix(&self) -> &Bytes {
        &self.prefix
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &I {
        &self.io
    }

    /// The wrapped stream, mutably. Reading from it directly skips the prefix.
    pub fn get_mut(&mut self) -> &mut I {
        &mut self.io
    }

    /// The unread prefix and the wrapped stream.
    pub fn into_parts(self) -> (Bytes, I) {
        (self.prefix, self.io)
    }
}

impl<I: AsyncRead> AsyncRead for PrefixedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        this.io.poll_read(cx, buf)
    }
}

impl<I: AsyncWrite> AsyncWrite for PrefixedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_drain_the_prefix_then_the_stream() {
        let (mut peer, io) = tokio::io::duplex(64);
        let mut io = PrefixedIo::new(Bytes::from_static(b"hello "), io);
        peer.write_all(b"world").await.expect("write");
        drop(peer);
        let mut small = [0u8; 4];
        let n = io.read(&mut small).await.expect("read");
        assert_eq!(&small[..n], b"hell");
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.expect("read");
        assert_eq!(rest, b"o world");
    }

    #[tokio::test]
    async fn writes_pass_through() {
        let (mut peer, io) = tokio::io::duplex(64);
        let mut io = PrefixedIo::new(Bytes::from_static(b"x"), io);
        io.write_all(b"pong").await.expect("write");
        let mut got = [0u8; 4];
        peer.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"pong");
    }
}
