//! What a client needs to know: where the cluster is, who the device is,
//! its credentials and departments, and how it reconnects.

use std::time::Duration;

use pace_protocol::{DeviceId, GroupId};

use crate::credentials::Credentials;
use crate::endpoint::{Endpoint, EndpointError};

/// The configuration of a [`Client`](crate::Client).
///
/// Built with [`Config::new`] and adjusted through its public fields or the
/// `with_…` helpers; [`Client::connect`](crate::Client::connect) validates it.
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    /// Base URLs of the cluster (`http`, `https`, `ws` or `wss`), usually one
    /// gateway. With several, the client moves to the next one on every
    /// reconnect, so a device still gets in when one address is unreachable.
    pub urls: Vec<String>,
    /// The device id, sent in the `x-device-id` header and the `device_id`
    /// query parameter (see [`crate::load_or_create_device_id`]).
    pub device_id: DeviceId,
    /// Bearer token for gateways that authenticate devices: sent as
    /// `Authorization: Bearer …` and as the `token` query parameter (for
    /// proxies that strip headers). Note that a query parameter may end up in
    /// proxy access logs.
    pub token: Option<String>,
    /// How the client gets a new device token by itself: when a handshake
    /// is refused with 401 `invalid_device_token` (forged or expired) or
    /// `missing_device_token`, it refreshes the token (or registers) once
    /// with these and reconnects, instead of stopping. When `token` is
    /// `None`, the stored token is used from the first connection. See
    /// [`crate::credentials`].
    pub credentials: Option<Credentials>,
    /// Departments sent in the `x-department-id` header: the node puts the
    /// device in these groups at connect time.
    pub departments: Vec<GroupId>,
    /// Ceiling of the first reconnect delay (the backoff doubles from it).
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// A connection that got `welcome` and stayed up this long resets the
    /// backoff. Shorter-lived connections do not, so a node that accepts and
    /// at once closes (overloaded) is not hammered in a tight loop.
    pub stable_after: Duration,
    /// Longest time for TCP connect + TLS + WebSocket handshake, and again
    /// for the `welcome` frame to arrive.
    pub connect_timeout: Duration,
    /// On the very first connection, ask the node to replay the device's own
    /// notification history (`resume` with the device scope at epoch 0,
    /// seq 0). Off by default: a new device usually wants only what comes
    /// next.
    pub replay_device_history_on_first_connect: bool,
    /// Recent notification ids remembered to drop duplicates.
    pub dedupe_capacity: usize,
    /// Events buffered for the application. When the application does not
    /// read them, the client stops reading its socket and the node will
    /// drop it as a slow consumer; it then reconnects and resumes.
    pub event_buffer: usize,
    /// Largest message accepted from the node, in bytes.
    pub max_message_bytes: usize,
    /// Also send the device id as the `device_id` query parameter (the
    /// fallback for proxies that strip headers). On by default; turned off
    /// only to check that the `x-device-id` header gets through (a node that
    /// gets neither refuses with 400 `missing_device_id`).
    pub send_device_id_query: bool,
    /// Which transports the client uses: WebSocket first, falling back to
    /// the HTTP stream (the default), or only one of them.
    pub transport: TransportPolicy,
    /// After falling back to the HTTP stream, how long the client stays on
    /// it before trying the WebSocket again (on its next reconnect).
    pub websocket_retry_after: Duration,
}

/// Which transports a client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportPolicy {
    /// WebSocket first; the HTTP stream (`GET /stream` + `POST
    /// /stream/send`) when the upgrade is refused (a proxy's 4xx that is
    /// not a node's answer, or the node's `not_websocket`: a proxy stripped
    /// the upgrade) or the socket dies within seconds three times running;
    /// the WebSocket again after [`Config::websocket_retry_after`].
    #[default]
    Auto,
    /// WebSocket only.
    WebSocket,
    /// The HTTP stream only.
    Stream,
}

/// The transport a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// `GET /ws`.
    WebSocket,
    /// `GET /stream` + `POST /stream/send`.
    Stream,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::WebSocket => "websocket",
            TransportKind::Stream => "http-stream",
        })
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("urls", &self.urls)
            .field("device_id", &self.device_id)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("credentials", &self.credentials)
            .field("departments", &self.departments)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("stable_after", &self.stable_after)
            .field("connect_timeout", &self.connect_timeout)
            .field(
                "replay_device_history_on_first_connect",
                &self.replay_device_history_on_first_connect,
            )
            .field("dedupe_capacity", &self.dedupe_capacity)
            .field("event_buffer", &self.event_buffer)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("send_device_id_query", &self.send_device_id_query)
            .field("transport", &self.transport)
            .field("websocket_retry_after", &self.websocket_retry_after)
            .finish()
    }
}

/// Default ceiling of the first reconnect delay.
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Default longest reconnect delay.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(20);

impl Config {
    /// A configuration for one base URL and a device id, with defaults:
    /// backoff 0.5 s to 20 s, 10 s connect timeout, no token, no
    /// credentials, no departments.
    pub fn new(url: impl Into<String>, device_id: DeviceId) -> Config {
        Config {
            urls: vec![url.into()],
            device_id,
            token: None,
            credentials: None,
            departments: Vec::new(),
            backoff_min: DEFAULT_BACKOFF_MIN,
            backoff_max: DEFAULT_BACKOFF_MAX,
            stable_after: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            replay_device_history_on_first_connect: false,
            dedupe_capacity: crate::dedupe::DEFAULT_CAPACITY,
            event_buffer: 1024,
            max_message_bytes: 1024 * 1024,
            send_device_id_query: true,
            transport: TransportPolicy::Auto,
            websocket_retry_after: Duration::from_secs(300),
        }
    }

    /// Sets which transports the client uses.
    pub fn with_transport(mut self, transport: TransportPolicy) -> Config {
        self.transport = transport;
        self
    }

    /// Adds a base URL to rotate to on reconnect.
    pub fn with_url(mut self, url: impl Into<String>) -> Config {
        self.urls.push(url.into());
        self
    }

    /// Sets the bearer token.
    pub fn with_token(mut self, token: impl Into<String>) -> Config {
        self.token = Some(token.into());
        self
    }

    /// Sets the credentials the client renews its token with (see
    /// [`Config::credentials`]).
    pub fn with_credentials(mut self, credentials: Credentials) -> Config {
        self.credentials = Some(credentials);
        self
    }

    /// Sets the departments sent in the handshake.
    pub fn with_departments(mut self, departments: Vec<GroupId>) -> Config {
        self.departments = departments;
        self
    }

    /// Sets the reconnect backoff bounds.
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Config {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    /// Checks the configuration and parses the URLs.
    pub(crate) fn endpoints(&self) -> Result<Vec<Endpoint>, ConfigError> {
        if self.urls.is_empty() {
            return Err(ConfigError::NoUrl);
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return Err(ConfigError::Invalid(
                "backoff_min must be > 0 and backoff_max >= backoff_min",
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::Invalid("connect_timeout must be > 0"));
        }
        if self.event_buffer == 0 {
            return Err(ConfigError::Invalid("event_buffer must be at least 1"));
        }
        if let Some(t) = &self.token
            && !valid_token(t)
        {
            return Err(ConfigError::Invalid(
                "token must be non-empty and contain no spaces or control characters",
            ));
        }
        let endpoints = self
            .urls
            .iter()
            .map(|u| Endpoint::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        if !cfg!(feature = "tls")
            && let Some(e) = endpoints.iter().find(|e| e.tls)
        {
            return Err(ConfigError::TlsNotBuilt(e.to_string()));
        }
        Ok(endpoints)
    }
}

/// Whether `token` can be sent as a bearer token: non-empty, visible
/// ASCII only.
pub(crate) fn valid_token(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic())
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No base URL was given.
    #[error("no base URL given")]
    NoUrl,
    /// A base URL does not parse.
    #[error(transparent)]
    Url(#[from] EndpointError),
    /// An `https`/`wss` URL, but this build has no TLS.
    #[error("{0} needs TLS: build pace-device with the `tls` feature")]
    TlsNotBuilt(String),
    /// A setting is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(&'static str),
    /// `Client::connect` was called outside a Tokio runtime.
    #[error("Client::connect must be called inside a Tokio runtime")]
    NoRuntime,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::new("http://127.0.0.1:1", DeviceId::parse("d1").unwrap())
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(cfg().endpoints().unwrap().len(), 1);
        let c = cfg().with_url("ws://127.0.0.1:2/");
        assert_eq!(c.endpoints().unwrap()[1].port, 2);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(matches!(
            Config {
                urls: vec![],
                ..cfg()
            }
            .endpoints(),
            Err(ConfigError::NoUrl)
        ));
        assert!(
            cfg()
                .with_backoff(Duration::from_secs(2), Duration::from_secs(1))
                .endpoints()
                .is_err()
        );
        assert!(cfg().with_token("a b").endpoints().is_err());
        assert!(cfg().with_url("nope").endpoints().is_err());
        if !cfg!(feature = "tls") {
            assert!(matches!(
                cfg().with_url("wss://x").endpoints(),
                Err(ConfigError::TlsNotBuilt(_))
            ));
        }
    }

    #[test]
    fn the_token_is_not_printed() {
        let s = format!("{:?}", cfg().with_token("s3cret"));
        assert!(!s.contains("s3cret"), "{s}");
    }
}
