//! A target under test — the base `http://host:port` of a node or gateway —
//! and the addresses derived from it: where device sockets connect, the
//! WebSocket URL, and the HTTP endpoints (`/ready`, `/metrics`,
//! `/api/v1/notify`).
//!
//! Only plain `http` is supported: the load generator measures the node and
//! the gateway, not TLS, and its own CPU must stay small.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// One parsed `--target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The base URL as given, without a trailing slash (`http://127.0.0.1:8080`).
    pub base: String,
    /// Host as written in the URL (name or IP literal), for the `Host` header.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Target {
    /// Parses `http://host[:port][/]`. A path other than `/` is refused: the
    /// tool appends the well-known paths itself.
    pub fn parse(raw: &str) -> anyhow::Result<Target> {
        let base = raw.trim().trim_end_matches('/');
        let rest = match base.split_once("://") {
            Some(("http", rest)) => rest,
            Some(("https", _)) => bail!(
                "target {raw:?}: https is not supported; point the load test at a plain http listener"
            ),
            Some((scheme, _)) => {
                bail!("target {raw:?}: unsupported scheme {scheme:?}, use http://host:port")
            }
            None => bail!("target {raw:?}: expected http://host:port"),
        };
        if rest.is_empty() || rest.contains('/') || rest.contains('?') || rest.contains('@') {
            bail!("target {raw:?}: expected http://host:port with no path, query or user info");
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .with_context(|| format!("target {raw:?}: unterminated IPv6 literal"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p
                    .parse()
                    .with_context(|| format!("target {raw:?}: bad port"))?,
                None if after.is_empty() => 80,
                None => bail!("target {raw:?}: junk after IPv6 literal"),
            };
            (format!("[{h}]"), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_owned(),
                    p.parse()
                        .with_context(|| format!("target {raw:?}: bad port"))?,
                ),
                None => (rest.to_owned(), 80),
            }
        };
        if host.is_empty() {
            bail!("target {raw:?}: empty host");
        }
        Ok(Target {
            base: base.to_owned(),
            host,
            port,
        })
    }

    /// The WebSocket URL devices connect to.
    pub fn ws_url(&self) -> String {
        format!("ws://{}:{}/ws", self.host, self.port)
    }

    /// `base` + `path` (path starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Resolves the host to one socket address (an IP literal resolves to
    /// itself), preferring IPv4 so `localhost` matches the IPv4 source
    /// addresses.
    pub async fn resolve(&self) -> anyhow::Result<SocketAddr> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, self.port))
            .await
            .with_context(|| format!("resolving {}", self.base))?
            .collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .with_context(|| format!("{} resolves to no address", self.base))
    }

    /// Whether the host is an IPv4 loopback literal or `localhost`.
    pub fn is_loopback_v4(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<Ipv4Addr>()
                .map(|ip| ip.is_loopback())
                .unwrap_or(false)
    }
}

/// The source addresses device sockets bind to by default when every target
/// is on IPv4 loopback: 127.0.0.2 … 127.0.0.9. Each gives its own ~28 000
/// ephemeral ports, so one machine can open far more than 28 000 connections
/// to one node port. Empty (the OS picks) for any other target.
pub fn default_source_ips(targets: &[Target]) -> Vec<IpAddr> {
    if !targets.is_empty() && targets.iter().all(Target::is_loopback_v4) {
        (2..=9)
            .map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
            .collect()
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_and_port() {
        let t = Target::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(t.base, "http://127.0.0.1:8080");
        assert_eq!(t.host, "127.0.0.1");
        assert_eq!(t.port, 8080);
        assert_eq!(t.ws_url(), "ws://127.0.0.1:8080/ws");
        assert_eq!(t.url("/metrics"), "http://127.0.0.1:8080/metrics");
        assert!(t.is_loopback_v4());
    }

    #[test]
    fn default_port_and_names() {
        let t = Target::parse("http://gateway.lab").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("gateway.lab", 80));
        assert!(!t.is_loopback_v4());
        let v6 = Target::parse("http://[::1]:9000").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("[::1]", 9000));
        assert_eq!(v6.ws_url(), "ws://[::1]:9000/ws");
    }

    #[test]
    fn refuses_what_it_cannot_drive() {
        for bad in [
            "https://x:1",
            "ws://x:1",
            "x:1",
            "http://x:1/ws",
            "http://x:port",
            "http://",
            "http://:80",
            "http://u@x:1",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn source_ips_only_for_loopback_targets() {
        let lo = [
            Target::parse("http://127.0.0.1:1").unwrap(),
            Target::parse("http://localhost:2").unwrap(),
        ];
        let ips = default_source_ips(&lo);
        assert_eq!(ips.len(), 8);
        assert_eq!(ips[0].to_string(), "127.0.0.2");
        assert_eq!(ips[7].to_string(), "127.0.0.9");
        let mixed = [lo[0].clone(), Target::parse("http://10.0.0.1:1").unwrap()];
        assert!(default_source_ips(&mixed).is_empty());
        assert!(default_source_ips(&[]).is_empty());
    }

    #[tokio::test]
    async fn resolves_literals() {
        let t = Target::parse("http://127.0.0.1:4242").unwrap();
        assert_eq!(
            t.resolve().await.unwrap(),
            "127.0.0.1:4242".parse().unwrap()
        );
    }
}
