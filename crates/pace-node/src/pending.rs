//! Connections not yet upgraded, per source address, and the descriptor
//! budget of the accept loop.
//!
//! A TCP connection costs a descriptor and a few KiB from accept on, long
//! before its headers arrive (`--handshake-timeout` bounds how long). So
//! that one address cannot hold thousands of silent connections,
//! [`Sockets::admit`] caps the connections each source address holds
//! before they are upgraded to a WebSocket (`--max-pending-per-address`;
//! a gateway in `--trusted-proxy` is not capped at accept: each forwarded
//! address is, while its handshake runs, through [`Sockets::hold`]).
//!
//! And so that the node never runs out of descriptors itself, every
//! accepted socket is counted ([`Counted`], alive as long as the socket,
//! upgraded or not) against the open-files limit minus `--fd-reserve`. At
//! that budget a new connection sheds the oldest connection not yet
//! upgraded — a silent one holds no device — so health checks and the
//! admin still get in; only when no such connection is left is the new
//! one refused.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// Why a new connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Its address holds `--max-pending-per-address` connections not yet
    /// upgraded.
    #[error("too many connections from this address are not yet upgraded")]
    PerAddress,
    /// The descriptor budget is spent and nothing can be shed.
    #[error("no descriptor left outside the reserve")]
    Descriptors,
}

impl Refused {
    /// The `pace_limits_hit_total` label.
    pub fn limit(self) -> &'static str {
        match self {
            Refused::PerAddress => "pending_per_address",
            Refused::Descriptors => "descriptors",
        }
    }
}

/// The sockets of a node: pending ones per address, all against the budget.
#[derive(Debug, Clone)]
pub struct Sockets {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Most pending connections per address (0 = no limit).
    per_address: u32,
    /// Most accepted sockets open at once (open files minus the reserve).
    budget: u64,
    /// Accepted sockets open now (pending and upgraded).
    open: AtomicU64,
    state: Mutex<State>,
    /// `pace_connections_pending`.
    gauge: IntGauge,
}

#[derive(Debug, Default)]
struct State {
    /// Pending connections (and forwarded handshakes) per address.
    by_address: HashMap<IpAddr, u32>,
    /// Pending connections by accept order, with the token that sheds each.
    pending: BTreeMap<u64, CancellationToken>,
    next_id: u64,
}

/// What an admitted connection holds while it is not upgraded: its place
/// in its address's count and in the shedding order. Dropped when the
/// connection is upgraded or ends.
#[derive(Debug)]
pub struct Pending {
    sockets: Arc<Inner>,
    address: Option<IpAddr>,
    id: u64,
    /// Cancelled when the node sheds this connection for a newer one.
    pub shed: CancellationToken,
    /// Whether admitting this connection shed an older one (the budget
    /// was spent).
    pub shed_other: bool,
}

/// A forwarded address's place in its count, while its handshake runs.
#[derive(Debug)]
pub struct Hold {
    sockets: Arc<Inner>,
    address: IpAddr,
}

impl Sockets {
    /// `per_address` pending connections per address (0 = no limit), at
    /// most `budget` sockets open; `gauge` follows the pending count.
    pub fn new(per_address: u32, budget: u64, gauge: IntGauge) -> Sockets {
        Sockets {
            inner: Arc::new(Inner {
                per_address,
                budget,
                open: AtomicU64::new(0),
                state: Mutex::default(),
                gauge,
            }),
        }
    }

    /// The budget from the open-files limit (`None`: unknown, no budget)
    /// minus `reserve`.
    pub fn budget(open_files: Option<u64>, reserve: u32) -> u64 {
        open_files.map_or(u64::MAX, |n| n.saturating_sub(u64::from(reserve)))
    }

    /// Admits a connection just accepted from `address` (`None`: a trusted
    /// proxy, not capped here), or says why not. Wrap its socket with
    /// [`Sockets::count`] and keep the [`Pending`] until it is upgraded.
    pub fn admit(&self, address: Option<IpAddr>) -> Result<Pending, Refused> {
        let inner = &self.inner;
        let mut state = inner.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(addr) = address {
            let count = state.by_address.get(&addr).copied().unwrap_or(0);
            if inner.per_address != 0 && count >= inner.per_address {
                return Err(Refused::PerAddress);
            }
        }
        // The socket is accepted already: count it in, and past the budget
        // shed the oldest pending connection to make room.
        let shed_other = inner.open.load(Ordering::Acquire) >= inner.budget;
        if shed_other {
            match state.pending.pop_first() {
                Some((_, token)) => token.cancel(),
                None => return Err(Refused::Descriptors),
            }
        }
        if let Some(addr) = address {
            *state.by_address.entry(addr).or_insert(0) += 1;
        }
        let id = state.next_id;
        state.next_id += 1;
        let shed = CancellationToken::new();
        state.pending.insert(id, shed.clone());
        inner.gauge.inc();
        Ok(Pending {
            sockets: inner.clone(),
            address,
            id,
            shed,
            shed_other,
        })
    }

    /// Counts a forwarded address's handshake in its address's pending
    /// connections while it runs (a gateway's connections are not capped
    /// at accept).
    pub fn hold(&self, address: IpAddr) -> Result<Hold, Refused> {
        let inner = &self.inner;
        let mut state = inner.state.lock().unwrap_or_else(|p| p.into_inner());
        let count = state.by_address.entry(address).or_insert(0);
        if inner.per_address != 0 && *count >= inner.per_address {
            return Err(Refused::PerAddress);
        }
        *count += 1;
        Ok(Hold {
            sockets: inner.clone(),
            address,
        })
    }

    /// Wraps an accepted socket so it counts against the budget for as
    /// long as it is open (through an upgrade too).
    pub fn count<S>(&self, socket: S) -> Counted<S> {
        self.inner.open.fetch_add(1, Ordering::AcqRel);
        Counted {
            socket,
            sockets: self.inner.clone(),
        }
    }

    /// Accepted sockets open now.
    pub fn open(&self) -> u64 {
        self.inner.open.load(Ordering::Acquire)
    }
}

impl Inner {
    fn release(&self, address: IpAddr) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = state.by_address.get_mut(&address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.by_address.remove(&address);
            }
        }
    }
}

/// A connection's [`Pending`], shared with its requests: a request that
/// turns the connection into a long-lived device stream (`GET /stream`)
/// releases it, as an upgrade does, so the stream counts neither against
/// its address's pending connections nor as sheddable.
#[derive(Debug, Clone)]
pub struct Release(Arc<Mutex<Option<Pending>>>);

impl Release {
    /// Shares `pending`.
    pub fn new(pending: Pending) -> Release {
        Release(Arc::new(Mutex::new(Some(pending))))
    }

    /// Drops the connection's [`Pending`] now (once).
    pub fn release(&self) {
        let pending = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(pending);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        {
            let mut state = self.sockets.state.lock().unwrap_or_else(|p| p.into_inner());
            state.pending.remove(&self.id);
        }
        if let Some(address) = self.address {
            self.sockets.release(address);
        }
        self.sockets.gauge.dec();
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.sockets.release(self.address);
    }
}

/// An accepted socket, counted against the descriptor budget until dropped.
#[derive(Debug)]
pub struct Counted<S> {
    socket: S,
    sockets: Arc<Inner>,
}

impl<S> Counted<S> {
    /// The socket.
    pub fn get_ref(&self) -> &S {
        &self.socket
    }
}

impl<S> Drop for Counted<S> {
    fn drop(&mut self) {
        self.sockets.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn sockets(per_address: u32, budget: u64) -> Sockets {
        Sockets::new(
            per_address,
            budget,
            IntGauge::new("pending", "test").unwrap(),
        )
    }

    #[test]
    fn each_address_holds_at_most_its_cap() {
        let s = sockets(2, u64::MAX);
        let a1 = s.admit(ip("198.51.100.1")).unwrap();
        let _a2 = s.admit(ip("198.51.100.1")).unwrap();
        assert_eq!(
            s.admit(ip("198.51.100.1")).unwrap_err(),
            Refused::PerAddress
        );
        let other = s.admit(ip("203.0.113.5"));
        assert!(other.is_ok(), "other addresses");
        let proxy: Vec<_> = (0..5).map(|_| s.admit(None).unwrap()).collect();
        assert_eq!(s.inner.gauge.get(), 8, "a trusted proxy is not capped");
        drop(proxy);
        drop(a1);
        let again = s.admit(ip("198.51.100.1"));
        assert!(again.is_ok(), "a place freed");
        assert_eq!(s.inner.gauge.get(), 3);
        // A forwarded address shares its count with direct connections.
        assert_eq!(
            s.hold("198.51.100.1".parse().unwrap()).unwrap_err(),
            Refused::PerAddress
        );
        let h = s.hold("192.0.2.7".parse().unwrap()).unwrap();
        let _h2 = s.hold("192.0.2.7".parse().unwrap()).unwrap();
        assert!(s.hold("192.0.2.7".parse().unwrap()).is_err());
        drop(h);
        assert!(s.hold("192.0.2.7".parse().unwrap()).is_ok());
    }

    #[test]
    fn zero_means_no_cap() {
        let s = sockets(0, u64::MAX);
        let held: Vec<_> = (0..5000)
            .map(|_| s.admit(ip("10.1.1.1")).unwrap())
            .collect();
        assert_eq!(held.len(), 5000);
    }

    #[test]
    fn past_the_budget_the_oldest_pending_connection_is_shed() {
        let s = sockets(0, 2);
        let first = s.admit(ip("10.0.0.1")).unwrap();
        let c1 = s.count(());
        let second = s.admit(ip("10.0.0.2")).unwrap();
        let c2 = s.count(());
        assert_eq!(s.open(), 2);
        // A third: the oldest pending one is told to go.
        let third = s.admit(ip("10.0.0.3")).unwrap();
        assert!(third.shed_other && !second.shed_other);
        assert!(first.shed.is_cancelled());
        assert!(!second.shed.is_cancelled());
        drop(first);
        drop(c1);
        let c3 = s.count(());
        // Upgraded connections are not pending: with nothing to shed, a
        // new connection is refused.
        drop(second);
        drop(third);
        assert_eq!(s.admit(ip("10.0.0.4")).unwrap_err(), Refused::Descriptors);
        drop(c2);
        assert!(s.admit(ip("10.0.0.4")).is_ok(), "a socket closed");
        assert_eq!(s.open(), 1);
        drop(c3);
        assert_eq!(s.open(), 0);
    }

    #[test]
    fn the_budget_keeps_the_reserve() {
        assert_eq!(Sockets::budget(Some(20_000), 128), 19_872);
        assert_eq!(Sockets::budget(None, 128), u64::MAX);
        assert_eq!(Sockets::budget(Some(100), 128), 0);
    }
}
