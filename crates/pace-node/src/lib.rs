//! Pace node: one process holding device WebSockets, delivering
//! notifications to them, and exposing health, readiness and metrics.
//!
//! `main.rs` is thin: it parses [`config::Cli`] and calls [`run`], which
//! tests call too, with a listener on `127.0.0.1:0`.
//!
//! # Layout
//!
//! - [`accounts`]: tenants, admin users, passwords, admin login and tokens.
//! - [`admission`]: admission tokens (EdDSA JWTs), keys, JWKS.
//! - [`audit`]: each room's admission log: sealing (signed chain heads), retention, export.
//! - [`config`]: flags and `PACE_*` environment, validated into [`NodeConfig`].
//! - [`app`]: the composition root: builds every part of a node from its configuration.
//! - [`server`]: accept loop, HTTP/1.1 with upgrades, drain on shutdown.
//! - [`http`]: the HTTP layer on axum: router, middleware, extractors, handlers by resource.
//! - [`routes`]: the route table: every HTTP entry point with its authorization rule.
//! - [`auth`]: who is asking and what they may do, for every entry point.
//! - [`ws`]: the WebSocket layer: handshake, the device session and its
//!   resume, the local hub, the pong backlog, the admin feed.
//! - [`node`]: the shared state handle the HTTP layer and the server loop use.
//! - [`origins`]: browser origins: the WebSocket check, CORS, the admin gate.
//! - [`pending`]: connections not yet upgraded per source address; the descriptor budget.
//! - [`store`]: the seam for state shared across nodes; memory and Redis stores.
//! - [`queue`]: the waiting-room queue store; memory and Redis.
//! - [`rooms`]: joins, the admission tick, live positions.
//! - [`rooms_api`]: a room's statistics in the REST contract's shape.
//! - [`key_alg`]: the admission keys' two algorithms, `EdDSA` and `ES256`.
//! - [`names`]: tenant ids, user names, browser origins: the rules every layer checks.
//! - [`metrics`]: every Prometheus metric, in one place.
//! - [`error`]: error → HTTP status and JSON body, in one place (`IntoResponse`).
//! - [`systemd`]: readiness, stopping and watchdog notifications.
//! - [`token_time`]: the one `iat`/`nbf`/`exp` rule every token kind is checked by.

pub mod accounts;
pub mod admission;
pub mod app;
pub mod audit;
pub mod auth;
pub mod config;
pub mod devices;
pub mod error;
pub mod http;
pub mod key_alg;
pub mod limits;
pub mod metrics;
pub mod names;
pub mod node;
pub mod origins;
pub mod pending;
pub mod pow;
pub mod queue;
pub mod rooms;
pub mod rooms_api;
pub mod routes;
pub mod server;
pub mod store;
pub mod systemd;
pub mod token_time;
pub mod web;
pub mod ws;

pub use config::NodeConfig;
pub use server::{ServeError, run};
