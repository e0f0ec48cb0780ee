//! The pong backlog of a device that sends and does not read.
//!
//! tungstenite answers every WebSocket ping with a pong on its own. When
//! the device stops reading, the socket stops taking bytes and those pongs
//! pile up in the connection's write buffer: a device pinging without
//! reading would grow the node's memory by about a byte per byte sent, and
//! since every frame it sends counts as a sign of life, nothing else would
//! ever cut it off. Two things bound it:
//!
//! - the WebSocket write buffer is capped (`--ws-max-write-buffer`): past
//!   the cap tungstenite keeps only the newest pong, so memory stays bounded
//!   whatever the device does;
//! - [`PongBacklog`] counts the pong bytes owed while the socket refuses
//!   writes ([`Watched`] tells); past the same cap the connection is closed
//!   with 4001 (`slow_consumer`) and counted in
//!   `pace_limits_hit_total{limit="pong_backlog"}`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes of a server's pong frame besides its payload (payload ≤ 125 bytes:
/// a two-byte header, unmasked).
const PONG_HEADER: usize = 2;

/// A socket that remembers whether its last write was refused (the peer's
/// receive window and our send buffer are full).
#[derive(Debug)]
pub struct Watched<S> {
    inner: S,
    /// The last write returned `Pending`, and no write succeeded since.
    blocked: bool,
}

impl<S> Watched<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Watched {
            inner,
            blocked: false,
        }
    }

    /// Whether the socket refuses writes now (as of the last attempt).
    pub fn write_blocked(&self) -> bool {
        self.blocked
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        match &res {
            Poll::Pending => self.blocked = true,
            Poll::Ready(Ok(n)) if *n > 0 => self.blocked = false,
            Poll::Ready(_) => {}
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        match &res {
            Poll::Pending => self.blocked = true,
            Poll::Ready(Ok(n)) if *n > 0 => self.blocked = false,
            Poll::Ready(_) => {}
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Pong bytes owed to a device while its socket refuses writes.
#[derive(Debug, Default)]
pub struct PongBacklog {
    owed: usize,
}

impl PongBacklog {
    /// Counts the pong a ping of `payload` bytes is owed; `blocked` is
    /// whether the socket refuses writes now (a writable socket took the
    /// earlier pongs: nothing is owed). Returns the bytes owed.
    pub fn on_ping(&mut self, payload: usize, blocked: bool) -> usize {
        if blocked {
            self.owed = self.owed.saturating_add(payload + PONG_HEADER);
        } else {
            self.owed = 0;
        }
        self.owed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn pongs_are_owed_only_while_the_socket_refuses_writes() {
        let mut b = PongBacklog::default();
        assert_eq!(b.on_ping(125, false), 0);
        assert_eq!(b.on_ping(125, true), 127);
        assert_eq!(b.on_ping(0, true), 129);
        assert_eq!(b.on_ping(125, false), 0, "the socket drained");
        let mut flood = PongBacklog::default();
        let owed = (0..1000).map(|_| flood.on_ping(125, true)).last();
        assert_eq!(owed, Some(127_000));
    }

    #[tokio::test]
    async fn a_full_socket_is_seen_as_blocked_until_it_drains() {
        // A duplex pipe of 64 bytes: the peer does not read.
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut w = Watched::new(ours);
        assert!(!w.write_blocked());
        w.write_all(&[1; 64]).await.unwrap();
        assert!(!w.write_blocked(), "fits");
        let more = futures_util::FutureExt::now_or_never(w.write_all(&[2; 8]));
        assert!(more.is_none(), "the pipe is full");
        assert!(w.write_blocked());
        let mut sink = [0u8; 64];
        tokio::io::AsyncReadExt::read_exact(&mut theirs, &mut sink)
            .await
            .unwrap();
        w.write_all(&[3; 8]).await.unwrap();
        assert!(!w.write_blocked(), "drained");
    }
}
