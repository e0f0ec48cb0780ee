//! Bytes on the wire, counted at the socket: [`Counted`] wraps a stream
//! (a device's TCP connection, a poller's keep-alive connection) and adds
//! every byte read from or written to it to shared [`ByteCounts`].
//!
//! What is counted is what the kernel hands over or accepts — WebSocket
//! framing, masking keys, pings and pongs, HTTP headers, chunk sizes —
//! everything above TCP. TCP/IP headers and ACKs are not counted (they
//! cost more per message for polling, which sends more segments).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Byte totals of one kind of connection, shared by many streams.
#[derive(Debug, Default)]
pub struct ByteCounts {
    /// Bytes read from the sockets (received from the server).
    pub rx: AtomicU64,
    /// Bytes written to the sockets (sent to the server).
    pub tx: AtomicU64,
}

impl ByteCounts {
    /// `(rx, tx)` now.
    pub fn get(&self) -> (u64, u64) {
        (
            self.rx.load(Ordering::Relaxed),
            self.tx.load(Ordering::Relaxed),
        )
    }
}

/// A stream whose traffic is added to [`ByteCounts`].
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    counts: Arc<ByteCounts>,
}

impl<S> Counted<S> {
    /// Wraps `inner`, counting into `counts`.
    pub fn new(inner: S, counts: Arc<ByteCounts>) -> Counted<S> {
        Counted { inner, counts }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let n = buf.filled().len().saturating_sub(before);
            this.counts.rx.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.counts.tx.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            this.counts.tx.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_both_directions() {
        let (a, mut b) = tokio::io::duplex(64);
        let counts = Arc::new(ByteCounts::default());
        let mut counted = Counted::new(a, counts.clone());
        counted.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        b.read_exact(&mut got).await.unwrap();
        b.write_all(b"world!!").await.unwrap();
        let mut back = [0u8; 7];
        counted.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"world!!");
        assert_eq!(counts.get(), (7, 5));
    }
}
