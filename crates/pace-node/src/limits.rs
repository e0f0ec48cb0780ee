//! Abuse limits kept in the node's memory: join attempts per device per
//! minute, handshakes per source address per second.
//!
//! Both are per node on purpose. The gateway hashes a device to one node,
//! so a device's joins all meet one node's counter; a source address's
//! handshakes spread over the nodes, so the per-address limit is per node
//! and a cluster admits up to `nodes × limit` (documented in
//! docs/security.md). Keeping them local costs no store round trip on the
//! join and handshake paths.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counts events per key in fixed windows; forgets idle keys.
#[derive(Debug)]
pub struct WindowLimiter<K> {
    limit: u32,
    window: Duration,
    counts: Mutex<HashMap<K, (u32, Instant)>>,
    calls: std::sync::atomic::AtomicU64,
}

impl<K: Eq + Hash + Clone> WindowLimiter<K> {
    /// At most `limit` events per key per `window` (0 = no limit).
    pub fn new(limit: u32, window: Duration) -> Self {
        WindowLimiter {
            limit,
            window,
            counts: Mutex::default(),
            calls: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Counts an event for `key` at `now`; false when it is over the limit.
    pub fn allow(&self, key: &K, now: Instant) -> bool {
        if self.limit == 0 {
            return true;
        }
        let calls = self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        // Forget finished windows now and then so the map stays small.
        if calls % 1024 == 1023 {
            counts.retain(|_, (_, start)| now.duration_since(*start) < self.window);
        }
        let entry = counts.entry(key.clone()).or_insert((0, now));
        if now.duration_since(entry.1) >= self.window {
            *entry = (0, now);
        }
        entry.0 = entry.0.saturating_add(1);
        entry.0 <= self.limit
    }
}

/// The device's address: the peer, unless the peer is a trusted proxy;
/// then the right-most `X-Forwarded-For` entry that is not a trusted proxy
/// (entries left of it were written by the client and prove nothing).
pub fn client_address(
    peer: std::net::IpAddr,
    forwarded_for: Option<&str>,
    trusted: &[ipnet::IpNet],
) -> std::net::IpAddr {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut address = peer;
    for entry in forwarded_for.unwrap_or_default().rsplit(',') {
        let Ok(ip) = entry.trim().parse::<std::net::IpAddr>() else {
            // Garbage in the header: stop at the last address we trust.
            break;
        };
        address = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    address
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_address_behind_trusted_proxies() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
        let kong = [net("10.0.0.0/24")];
        // Not from a proxy: the header is ignored.
        assert_eq!(
            client_address(ip("203.0.113.9"), Some("1.2.3.4"), &kong),
            ip("203.0.113.9")
        );
        // From Kong: the right-most untrusted entry; a spoofed left part is
        // ignored.
        assert_eq!(
            client_address(ip("10.0.0.5"), Some("6.6.6.6, 198.51.100.7"), &kong),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_address(ip("10.0.0.5"), Some("198.51.100.7, 10.0.0.9"), &kong),
            ip("198.51.100.7"),
            "proxies chained inside the trusted range are skipped"
        );
        assert_eq!(client_address(ip("10.0.0.5"), None, &kong), ip("10.0.0.5"));
        assert_eq!(
            client_address(ip("10.0.0.5"), Some("not-an-ip"), &kong),
            ip("10.0.0.5")
        );
        assert_eq!(
            client_address(ip("10.0.0.5"), Some("x, 198.51.100.7"), &kong),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn limits_per_key_per_window() {
        let l = WindowLimiter::new(3, Duration::from_secs(60));
        let t = Instant::now();
        assert!((0..3).all(|_| l.allow(&"a", t)));
        assert!(!l.allow(&"a", t), "fourth in the window");
        assert!(l.allow(&"b", t), "other keys are separate");
        assert!(l.allow(&"a", t + Duration::from_secs(60)), "next window");
    }

    #[test]
    fn zero_means_unlimited() {
        let l = WindowLimiter::new(0, Duration::from_secs(1));
        let t = Instant::now();
        assert!((0..10_000).all(|_| l.allow(&1u8, t)));
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let l = WindowLimiter::new(1, Duration::from_millis(10));
        let t = Instant::now();
        for i in 0..5000u32 {
            l.allow(&i, t);
        }
        let later = t + Duration::from_millis(20);
        for i in 5000..7000u32 {
            l.allow(&i, later);
        }
        assert!(l.counts.lock().unwrap().len() < 5000);
    }
}
