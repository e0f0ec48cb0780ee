//! Base URLs of a Pace cluster (gateway or node) and the URLs derived from
//! them: the WebSocket `…/ws` and the HTTP API.
//!
//! A base URL is `scheme://host[:port][/prefix]` with scheme `http`, `https`,
//! `ws` or `wss` (`http`/`ws` and `https`/`wss` are the same endpoint: the
//! client derives both the WebSocket and the HTTP URL from it). A prefix is
//! kept, for gateways that route Pace under a path (`https://gw/pace`).

use std::fmt;

/// One parsed base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// TLS (`https`/`wss`) or plain (`http`/`ws`).
    pub tls: bool,
    /// Host name or IP address; IPv6 without brackets.
    pub host: String,
    /// TCP port (default 80 or 443).
    pub port: u16,
    /// Path prefix without a trailing slash (`""` or `/pace`).
    pub prefix: String,
}

/// Why a base URL is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("base URL {url:?}: {problem}")]
pub struct EndpointError {
    /// The URL as given.
    pub url: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl Endpoint {
    /// Parses a base URL.
    pub fn parse(url: &str) -> Result<Endpoint, EndpointError> {
        let err = |problem| EndpointError {
            url: url.to_owned(),
            problem,
        };
        let trimmed = url.trim();
        let (scheme, rest) = trimmed
            .split_once("://")
            .ok_or_else(|| err("expected scheme://host, e.g. https://pace.example.com"))?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "http" | "ws" => false,
            "https" | "wss" => true,
            _ => return Err(err("scheme must be http, https, ws or wss")),
        };
        if rest.contains(['?', '#']) {
            return Err(err("a base URL takes no query or fragment"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(err(
                "credentials in the URL are not supported; use the token",
            ));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| err("unclosed [ in IPv6 host"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| err("bad port"))?),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(err("missing or invalid host"));
        }
        let port = match port {
            None => {
                if tls {
                    443
                } else {
                    80
                }
            }
            Some(p) => p.parse::<u16>().map_err(|_| err("bad port"))?,
        };
        let prefix = path.trim_end_matches('/');
        // `…/ws` given as the base URL: the client appends /ws itself.
        let prefix = prefix.strip_suffix("/ws").unwrap_or(prefix).to_owned();
        Ok(Endpoint {
            tls,
            host: host.to_owned(),
            port,
            prefix,
        })
    }

    /// `host:port` as it goes in a `Host` header and in URLs (IPv6 in brackets).
    pub fn authority(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The WebSocket URL (`ws[s]://authority/prefix/ws?query`; no `?` when
    /// `query` is empty).
    pub fn ws_url(&self, query: &str) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        let sep = if query.is_empty() { "" } else { "?" };
        format!(
            "{scheme}://{}{}/ws{sep}{query}",
            self.authority(),
            self.prefix
        )
    }

    /// An HTTP URL on this endpoint (`http[s]://authority/prefix/path`);
    /// `path` starts with `/`.
    pub fn http_url(&self, path_and_query: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!(
            "{scheme}://{}{}{path_and_query}",
            self.authority(),
            self.prefix
        )
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_four_schemes_and_defaults() {
        let e = Endpoint::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!((e.tls, e.host.as_str(), e.port), (false, "127.0.0.1", 8080));
        assert_eq!(
            e.ws_url("device_id=a"),
            "ws://127.0.0.1:8080/ws?device_id=a"
        );
        let e = Endpoint::parse("wss://pace.example.com/").unwrap();
        assert_eq!((e.tls, e.port, e.prefix.as_str()), (true, 443, ""));
        assert_eq!(
            e.http_url("/api/v1/rooms/x/status"),
            "https://pace.example.com/api/v1/rooms/x/status"
        );
        let e = Endpoint::parse("ws://gw:8000/pace/ws").unwrap();
        assert_eq!(e.prefix, "/pace");
        assert_eq!(e.ws_url("q"), "ws://gw:8000/pace/ws?q");
        assert_eq!(e.ws_url(""), "ws://gw:8000/pace/ws");
        let e = Endpoint::parse("HTTPS://gw/pace").unwrap();
        assert_eq!(e.to_string(), "https://gw/pace");
    }

    #[test]
    fn ipv6_hosts_keep_their_brackets_in_urls() {
        let e = Endpoint::parse("http://[::1]:9000").unwrap();
        assert_eq!(e.host, "::1");
        assert_eq!(e.authority(), "[::1]:9000");
        assert_eq!(Endpoint::parse("ws://[::1]").unwrap().port, 80);
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        for bad in [
            "pace.example.com",
            "ftp://x",
            "http://",
            "http://x:notaport",
            "http://x:70000",
            "http://x/ws?device_id=a",
            "http://user:pw@x",
            "http://[::1",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
