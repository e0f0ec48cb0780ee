//! The WebSocket layer: everything between a device's (or an admin
//! console's) upgraded socket and the domain below it.
//!
//! - [`handshake`]: the upgrade checks, departments and the resume
//!   announcement, decided before the `101`.
//! - [`session`]: the task that owns one device's socket after the upgrade
//!   (generic over the socket, so a unit test drives it without one).
//! - [`resume`]: the `resume` frame: history replay and dropping the live
//!   frames the replay already carried.
//! - [`hub`]: this node's devices and groups, bounded delivery.
//! - [`backlog`]: the pong backlog of a device that sends and does not read.
//! - [`admin`]: the admin console's live feed.

pub mod admin;
pub mod backlog;
pub mod handshake;
pub mod hub;
pub mod resume;
pub mod session;
