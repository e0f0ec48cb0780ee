//! The Pace wire protocol: every frame a device and a node exchange, the
//! envelopes nodes exchange over the cluster bus, close codes, error codes and
//! the rules for device and group ids.
//!
//! This crate does no I/O and depends on nothing async: the node, the device
//! library and the load-test tool all speak through these types, so a change
//! to the wire is a change to this crate and to `docs/protocol.md`.
//!
//! # Layout
//!
//! - [`audit`]: the admission log's export lines and its hash chain ([`audit::LogLine`]).
//! - [`ids`]: device, group, room and event name validation ([`DeviceId`], [`GroupId`], [`RoomId`], [`EventName`]).
//! - [`frame`]: JSON text frames, device → node ([`ClientFrame`]) and node → device ([`ServerFrame`]).
//! - [`notify`]: notification scopes, the `POST /api/v1/notify` body and the [`Notification`] itself.
//! - [`bus`]: envelopes carried between nodes ([`BusEnvelope`]).
//! - [`close`]: WebSocket close codes and whether a device should reconnect ([`CloseCode`]).
//! - [`pow`]: proof-of-work challenges (SHA-256 leading zero bits).
//! - [`error`]: machine-readable error codes shared by error frames and HTTP error bodies ([`ErrorCode`]).

pub mod audit;
pub mod bus;
pub mod close;
pub mod error;
pub mod frame;
pub mod ids;
pub mod notify;
pub mod pow;
pub mod rest;
pub mod room;

pub use bus::{BusEnvelope, DeviceAction};
pub use close::CloseCode;
pub use error::{ErrorBody, ErrorCode};
pub use frame::{
    AdmittedFrame, Challenge, ClientFrame, DecodeError, QueueUpdate, ResumeOutcome, ServerFrame,
    Welcome,
};
pub use ids::{DeviceId, EventName, GroupId, IdError, RoomId, room_group};
pub use notify::{Cursor, Notification, NotifyRequest, Scope, Target, TargetError};

/// The protocol version a node announces in its `welcome` frame.
///
/// Incremented only for changes a device must know about; adding an optional
/// field or a new frame type a device may ignore does not change it.
pub const PROTOCOL_VERSION: u32 = 1;

/// HTTP header carrying the device id on the WebSocket handshake.
pub const DEVICE_ID_HEADER: &str = "x-device-id";
/// HTTP header carrying the device's department(s), comma separated.
pub const DEPARTMENT_HEADER: &str = "x-department-id";
/// Query parameter carrying the device id when a proxy strips the header.
pub const DEVICE_ID_QUERY: &str = "device_id";
/// Query parameter spelling sent by existing clients; accepted as an alias.
pub const DEVICE_ID_QUERY_ALIAS: &str = "deviceId";
