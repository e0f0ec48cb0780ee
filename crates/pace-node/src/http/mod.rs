//! The node's HTTP layer, on axum: every entry point of [`crate::routes::ROUTES`]
//! as one [`axum::Router`], built from that table by [`app`].
//!
//! A request passes, in order:
//!
//! 1. [`middleware::edge`] (every request): the admin-origin gate and the
//!    CORS preflight answer, both from the origin policy
//!    ([`crate::origins::OriginCheck`]); after the response, its CORS
//!    headers and `pace_http_requests_total{route,class}`, the `route`
//!    label coming from the matched route ([`middleware::RouteLabel`];
//!    `other` for 404 and 405).
//! 2. routing ([`routes::app`]): a path no route has answers 404
//!    `not_found`; a method the path does not take answers 405
//!    `method_not_allowed` with `Allow` listing the methods of the table's
//!    rows for that path, in table order.
//! 3. [`middleware::entry`] (per route): the device handshake's cheap
//!    refusals on `/ws`, then the authorization step
//!    ([`crate::auth::authorize`]) with the route's [`crate::auth::Rule`];
//!    the principal it proves goes to the handler through the typed
//!    extractors of [`extract`].
//! 4. the handler, in [`routes`] by resource; JSON bodies through
//!    [`body::Json`] (size-limited), every failure through
//!    [`crate::error::ApiError`]'s `IntoResponse`.
//!
//! The server ([`crate::server`]) serves the router on each accepted
//! connection (HTTP/1.1 with upgrades) and puts the peer address in the
//! request as [`axum::extract::ConnectInfo`]; the client's address behind
//! trusted proxies is [`extract::ClientAddr`].
//!
//! # Layout
//!
//! - [`body`]: JSON request bodies with a size limit.
//! - [`extract`]: the principal, the peer and client address, path parameters.
//! - [`middleware`]: the edge (origins, CORS, metrics) and the per-route authorization step.
//! - [`routes`]: the router and the handlers, by resource (notify, rooms,
//!   sessions, devices, admin, pages, ops).

pub mod body;
pub mod extract;
pub mod middleware;
pub mod routes;

pub use routes::app;
