//! TLS test helpers: a client stream that fragments its ClientHello.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A client stream that re-frames its first write (the ClientHello record) into TLS records
/// of at most `size` payload bytes, as a middlebox or a hostile client might.
pub struct Fragmenting<S> {
    inner: S,
    size: usize,
    first: bool,
    pending: Vec<u8>,
    off: usize,
    /// How many records the first write became.
    records: usize,
}

impl<S> Fragmenting<S> {
    /// Wraps `inner`; its first write is re-framed into records of at most `size` bytes.
    pub fn new(inner: S, size: usize) -> Self {
        Self {
            inner,
            size: size.max(1),
            first: true,
            pending: Vec::new(),
            off: 0,
            records: 0,
        }
    }

    /// How many records the first write became.
    pub fn records(&self) -> usize {
        self.records
    }
}

impl<S: AsyncWrite + Unpin> Fragmenting<S> {
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.off < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.off..]))?;
            self.off += n;
        }
        Poll::Ready(Ok(()))
    }
}

fn reframe(record: &[u8], size: usize) -> Vec<u8> {
    if record.len() < 5 || record[0] != 0x16 {
        return record.to_vec();
    }
    let len = usize::from(u16::from_be_bytes([record[3], record[4]]));
    let (payload, rest) = record[5..].split_at(len.min(record.len() - 5));
    let mut out = Vec::new();
    // Each chunk is at most the record's own payload, whose length fitted in a u16.
    for chunk in payload.chunks(size.min(usize::from(u16::MAX))) {
        let chunk_len = u16::try_from(chunk.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&record[..3]);
        out.extend_from_slice(&chunk_len.to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(rest);
    out
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Fragmenting<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.drain(cx))?;
        if self.first {
            self.first = false;
            let size = self.size;
            self.pending = reframe(buf, size);
            self.records = buf
                .get(3..5)
                .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])).div_ceil(size))
                .filter(|_| buf[0] == 0x16)
                .unwrap_or(1);
            self.off = 0;
            // Accepted now; written out by this call or by the next write or flush.
            let _ = self.drain(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Fragmenting<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}
