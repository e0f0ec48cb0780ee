//! What the client tells the application: the [`Event`]s read from
//! [`Events`](crate::Events), and why a connection ended.

use std::fmt;
use std::time::Duration;

use pace_protocol::error::ErrorDetail;
use pace_protocol::{
    AdmittedFrame, Challenge, CloseCode, ErrorCode, GroupId, Notification, QueueUpdate,
    ResumeOutcome, RoomId, Welcome,
};

use crate::credentials::Obtained;

/// Something that happened on the device's connection.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// Connected to a node and got its `welcome` (first connection and
    /// every reconnection). Rooms and groups are being rejoined.
    Connected {
        /// The base URL the client connected through.
        url: String,
        /// The node's `welcome` frame (node id, groups, heartbeat, limits).
        welcome: Welcome,
    },
    /// The device's place in a room's queue.
    Queue(QueueUpdate),
    /// The room asked for proof of work before queueing the device; the
    /// client is solving it (about 2^`difficulty` hashes, on a blocking
    /// thread) and sends the solution by itself. For showing "verifying…".
    Challenge(Challenge),
    /// The device is admitted to a room: go to `target_url`. The client no
    /// longer rejoins that room after a reconnect.
    Admitted(AdmittedFrame),
    /// A notification, never one the device already received.
    Notification(Notification),
    /// The node answered the client's `resume` after a reconnect (replayed
    /// notifications came before this event as [`Event::Notification`]s).
    Resumed {
        /// True when every scope was recovered: nothing was missed. False
        /// when some history was lost, or the node does not support
        /// `resume` (then `scopes` is empty): the application should
        /// resynchronise its state another way.
        recovered: bool,
        /// Per scope: the position reached, whether it was recovered, how
        /// many notifications were replayed and why not recovered.
        scopes: Vec<ResumeOutcome>,
    },
    /// The node confirmed a group subscription.
    Subscribed(GroupId),
    /// The node confirmed leaving a group.
    Unsubscribed(GroupId),
    /// The node confirmed leaving a room's queue.
    Left(RoomId),
    /// The node refused a frame (e.g. `join` of a room that does not exist);
    /// the connection stays open.
    Error {
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation from the node.
        message: String,
    },
    /// The handshake refused the device token (401 `invalid_device_token`
    /// or `missing_device_token`) and the client got a new one with its
    /// [`Credentials`](crate::Credentials) (saved in the token file); it
    /// reconnects with it at once (an [`Event::Reconnecting`] follows).
    TokenRenewed {
        /// A refresh of the old token, or a new registration.
        obtained: Obtained,
        /// The new token's expiry, Unix seconds.
        expires_at: u64,
    },
    /// The connection ended or could not be made; the client tries again
    /// after `delay`.
    Reconnecting {
        /// Failed attempts in a row so far (1 for the first retry).
        attempt: u32,
        /// How long the client waits before the next attempt.
        delay: Duration,
        /// The base URL the next attempt goes to.
        next_url: String,
        /// Why the previous connection ended or failed.
        reason: Disconnect,
    },
    /// The client stopped for good and will send no further event.
    Closed(Closed),
}

/// Why a connection ended or could not be made (the client reconnects).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Disconnect {
    /// The node closed the connection with this code (one that asks the
    /// device to reconnect: see [`CloseCode::should_reconnect`]).
    Closed {
        /// The close code.
        code: CloseCode,
        /// The reason text the node sent.
        reason: String,
    },
    /// The connection broke (reset, EOF without a close frame).
    Lost(String),
    /// Nothing arrived from the node for longer than its heartbeat interval
    /// plus timeout: the connection is assumed dead.
    HeartbeatLost,
    /// TCP, TLS or the WebSocket handshake failed or timed out.
    ConnectFailed(String),
    /// The handshake got an HTTP error that may pass (503 `node_full`,
    /// `draining`, a gateway's 502…).
    Refused {
        /// The HTTP status.
        status: u16,
        /// The node's error body, when it sent one.
        error: Option<ErrorDetail>,
    },
    /// The node broke the protocol (e.g. no `welcome` first).
    Protocol(String),
    /// The handshake refused the device token and getting a new one
    /// failed for a reason that may pass (node unreachable, store
    /// unavailable); the client tries again.
    TokenRenewal(String),
}

/// Why the client stopped for good.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Closed {
    /// The application called [`Client::close`](crate::Client::close).
    ByClient,
    /// Another connection of the same device id took over (close 4000).
    /// Reconnecting would make the two evict each other forever.
    Replaced,
    /// The node closed with a code that says not to reconnect (1000; 4004:
    /// an admin revoked the device's credential; or a client bug: 1003,
    /// 1007, 1008, 1009).
    ByNode {
        /// The close code.
        code: CloseCode,
        /// The reason text the node sent.
        reason: String,
    },
    /// The handshake was refused for a reason retrying will not fix (bad
    /// device id or department, wrong URL; 401 `device_token_mismatch`: the
    /// token is another device's; `invalid_device_token` or
    /// `missing_device_token` without [`Credentials`](crate::Credentials),
    /// or again right after renewing the token).
    Refused {
        /// The HTTP status.
        status: u16,
        /// The node's error body, when it sent one.
        error: Option<ErrorDetail>,
    },
    /// The handshake refused the device token and the client could not get
    /// a new one with its [`Credentials`](crate::Credentials) (e.g. the
    /// device id is registered and the stored token is not its current
    /// token: see [`CredentialsError::Taken`](crate::CredentialsError::Taken)).
    Credentials {
        /// The handshake's refusal (`invalid_device_token` or
        /// `missing_device_token`).
        refused: ErrorCode,
        /// Why no new token could be had.
        reason: String,
    },
}

impl fmt::Display for Disconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Disconnect::Closed { code, reason } => write!(f, "closed by node: {} {reason}", code.0),
            Disconnect::Lost(e) => write!(f, "connection lost: {e}"),
            Disconnect::HeartbeatLost => f.write_str("no heartbeat from the node"),
            Disconnect::ConnectFailed(e) => write!(f, "connect failed: {e}"),
            Disconnect::Refused { status, error } => refused(f, *status, error.as_ref()),
            Disconnect::Protocol(e) => write!(f, "protocol error: {e}"),
            Disconnect::TokenRenewal(e) => write!(f, "device token refused, renewal failed: {e}"),
        }
    }
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Closed::ByClient => f.write_str("closed by the application"),
            Closed::Replaced => {
                f.write_str("replaced: another connection with this device id took over (4000)")
            }
            Closed::ByNode { code, reason } => write!(f, "closed by node: {} {reason}", code.0),
            Closed::Refused { status, error } => refused(f, *status, error.as_ref()),
            Closed::Credentials { refused, reason } => write!(
                f,
                "handshake refused the device token ({}) and no new token could be had: {reason}",
                refused.as_str()
            ),
        }
    }
}

fn refused(f: &mut fmt::Formatter<'_>, status: u16, error: Option<&ErrorDetail>) -> fmt::Result {
    match error {
        Some(e) => {
            write!(
                f,
                "handshake refused: HTTP {status} {}: {}",
                e.code.as_str(),
                e.message
            )?;
            if e.code == ErrorCode::DeviceTokenMismatch {
                f.write_str(
                    " (the token was issued to another device id: check the device id and token files)",
                )?;
            }
            Ok(())
        }
        None => write!(f, "handshake refused: HTTP {status}"),
    }
}
