//! The Pace device client library.
//!
//! A device has a stable identity: a device id created once and kept in a
//! file the caller chooses, in the form `<device-type>_<uuid>` with the full
//! UUID (an 8-hex-character suffix collides after about 65,000 devices; a
//! full v4 UUID does not in practice).
//!
//! With it, [`Client::connect`] opens the device's WebSocket to the cluster
//! (device id in the `x-device-id` header and the `device_id` query
//! parameter, optional bearer token, departments) and keeps it open:
//! reconnecting on any drop with exponential backoff and full jitter,
//! honouring the node's close codes, rejoining rooms and groups, resuming
//! notifications from the last one received, and dropping duplicates.
//! Where a proxy refuses WebSockets, it falls back by itself to the node's
//! HTTP stream (`GET /stream` + `POST /stream/send`: the same frames and
//! resume) and tries the WebSocket again later ([`TransportPolicy`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use pace_device::{Client, Config, DeviceType, Event, load_or_create_device_id};
//! use pace_protocol::RoomId;
//!
//! let id = load_or_create_device_id("device-id".as_ref(), DeviceType::detect())?;
//! let (client, mut events) = Client::connect(Config::new("https://pace.example.com", id))?;
//! client.join(RoomId::parse("sale")?).await?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::Queue(q) => println!("position {}", q.position),
//!         Event::Admitted(a) => println!("go to {}", a.target_url),
//!         Event::Notification(n) => println!("{}: {}", n.event, n.data),
//!         Event::Closed(why) => println!("stopped: {why}"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Device credentials
//!
//! A node that requires device credentials refuses handshakes without a
//! device token (401 `missing_device_token`). A device registers once
//! ([`register()`], `POST /api/v1/devices/register`) and keeps the token in a
//! file next to its id file ([`TokenStore`]); [`ensure_token`] does both at
//! start (reuse, refresh near expiry, or register), and
//! [`Config::with_credentials`] lets the client renew the token by itself
//! when a handshake refuses it:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use pace_device::{Client, Config, Credentials, DeviceInfo, DeviceType, TokenStore};
//!
//! let id_file = std::path::Path::new("device-id");
//! let id = pace_device::load_or_create_device_id(id_file, DeviceType::detect())?;
//! let creds = Credentials::new(
//!     DeviceInfo::detect(&id, env!("CARGO_PKG_VERSION")),
//!     TokenStore::next_to(id_file),
//! );
//! let config = Config::new("https://pace.example.com", id);
//! let (token, how) = pace_device::ensure_token(&config, &creds).await?;
//! println!("token {how}, expires at {}", token.expires_at);
//! let config = config.with_token(token.token).with_credentials(creds);
//! let (client, mut events) = Client::connect(config)?;
//! # Ok(()) }
//! ```
//!
//! A room under attack may answer `join` with a proof-of-work `challenge`:
//! the client solves it on a blocking thread ([`pace_protocol::pow`]) and
//! sends the `solve` by itself; the application only sees
//! [`Event::Challenge`].
//!
//! # Layout
//!
//! - [`identity`]: device type detection, id creation and persistence.
//! - [`config`]: [`Config`]: URLs, device id, token, credentials, departments, backoff, timeouts.
//! - [`register`](mod@register): [`register()`], [`DeviceInfo`], [`RegisterError`].
//! - [`credentials`]: [`TokenStore`], [`ensure_token`], [`Credentials`].
//! - [`client`]: [`Client`] (the handle) and [`Events`] (the receiver).
//! - [`event`]: [`Event`], [`Disconnect`] (why it reconnects), [`Closed`] (why it stopped).
//! - `driver`: the background task owning the socket (connect, sync, serve, reconnect).
//! - [`backoff`]: [`Backoff`], exponential backoff with full jitter.
//! - [`dedupe`]: [`Dedupe`], recent ids and per-scope cursors.
//! - [`endpoint`]: [`Endpoint`], base URL parsing.
//! - [`status`]: [`RoomStatus`], the HTTP status of a device in a room.
//! - `http`: one HTTP request (status, registration).
//! - `sse`: the HTTP streaming transport (SSE + POST), the WebSocket's fallback.
//! - `transport`: TCP, and TLS with the `tls` feature.

pub mod backoff;
pub mod client;
pub mod config;
pub mod credentials;
pub mod dedupe;
mod driver;
pub mod endpoint;
pub mod event;
mod http;
pub mod identity;
pub mod register;
mod sse;
pub mod status;
mod transport;

pub use backoff::Backoff;
pub use client::{Client, ClientStopped, Events};
pub use config::{Config, ConfigError, TransportKind, TransportPolicy};
pub use credentials::{
    Credentials, CredentialsError, Obtained, StoredToken, TokenStore, TokenStoreError, ensure_token,
};
pub use dedupe::{Dedupe, Verdict};
pub use endpoint::{Endpoint, EndpointError};
pub use event::{Closed, Disconnect, Event};
pub use identity::{DeviceType, IdentityError, load_or_create_device_id};
pub use register::{DeviceInfo, RegisterError, Registration, register};
pub use status::{RoomStatus, StatusError};
