//! Machine-readable error codes, shared by `error` frames on the WebSocket
//! and by the JSON body of every HTTP error response.
//!
//! The code is the contract; the message is for humans and may change.

use serde::{Deserialize, Serialize};

/// An error code. Serialized as `snake_case`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Handshake: no device id in the `x-device-id` header nor the query.
    MissingDeviceId,
    /// Handshake: the device id breaks the id rules.
    InvalidDeviceId,
    /// Handshake or frame: a group id breaks the id rules.
    InvalidGroup,
    /// Handshake: the request is not a valid WebSocket upgrade.
    NotWebsocket,
    /// Handshake: the node holds its maximum number of connections.
    NodeFull,
    /// Handshake: the node is draining and accepts no new devices.
    Draining,
    /// Frame: the text is not JSON, or lacks a string `type`.
    BadFrame,
    /// Frame: the `type` is not one this node knows.
    UnknownType,
    /// Frame: the `type` is known but a field is missing or invalid.
    InvalidFrame,
    /// Frame: the device is already in the maximum number of groups.
    TooManyGroups,
    /// Join: the room does not exist.
    NoSuchRoom,
    /// Join: the room is closed to new joins.
    RoomClosed,
    /// Join: the room's queueing mode is `reject`: it refuses new joins.
    RoomRejecting,
    /// Join: the room's next event has not opened its pre-queue yet (the
    /// room status route tells when it does).
    EventNotOpen,
    /// HTTP: missing or wrong credentials.
    Unauthorized,
    /// HTTP: the body is not valid JSON or not of the expected shape.
    BadRequest,
    /// HTTP: the body is larger than the node's maximum message size.
    PayloadTooLarge,
    /// HTTP: no such route.
    NotFound,
    /// HTTP: the route exists but not for this method.
    MethodNotAllowed,
    /// The store is unreachable; retry later.
    StoreUnavailable,
    /// The node failed; details are in its log, not in the response.
    Internal,
    /// Join: the proof-of-work solution is wrong, or its challenge is
    /// forged, expired, or for another room or device. Ask again.
    PowInvalid,
    /// Join: this challenge was already used. Ask for a new one.
    PowReused,
    /// Join: too many join attempts by this device in the last minute.
    TooManyJoins,
    /// Handshake: too many handshakes from this source address right now.
    TooManyHandshakes,
    /// HTTP: too many connections from this source address are open and
    /// not yet upgraded to a WebSocket (`--max-pending-per-address`).
    TooManyPending,
    /// HTTP: admin login with a wrong tenant, user or password (one answer
    /// for all three).
    InvalidCredentials,
    /// HTTP: too many failed logins for this account; retry after the
    /// `Retry-After` seconds.
    TooManyAttempts,
    /// Handshake: no device token (and the node requires one).
    MissingDeviceToken,
    /// Handshake: the device token is forged, malformed or expired.
    InvalidDeviceToken,
    /// Handshake: the device token is valid but for another device id.
    DeviceTokenMismatch,
    /// Register: the device id is taken and the request did not present
    /// that device's current token.
    DeviceExists,
    /// HTTP: authenticated, but this credential may not do that.
    Forbidden,
    /// HTTP or handshake: the request comes from a browser page whose
    /// `Origin` is not allowed here (the device WebSocket and REST
    /// endpoints: not the node's own origin, the cluster's list nor the
    /// tenant's; the admin API: not the node's own origin).
    OriginNotAllowed,
    /// Join: the device's user already holds the most places allowed in
    /// this room (`--max-places-per-user`).
    TooManyPlaces,
    /// Handshake: the node is starting (its store not reached yet); retry.
    Starting,
    /// Frame or HTTP: this principal may not do that here (a group its
    /// credential does not grant, a room channel without a place in the
    /// room, a tenant department in a self-registration).
    NotAllowed,
    /// Handshake or HTTP: the device token was revoked (kick); register
    /// again once an admin has forgotten the device.
    DeviceTokenRevoked,
    /// HTTP (`POST /stream/send`): this node holds no stream of the
    /// device (the gateway re-hashed it, or the stream ended): reconnect
    /// the stream (`GET /stream`), then send again.
    StreamNotHere,
}

impl ErrorCode {
    /// Whether retrying the same request later may succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::NodeFull
                | ErrorCode::Draining
                | ErrorCode::StoreUnavailable
                | ErrorCode::Internal
                | ErrorCode::TooManyJoins
                | ErrorCode::TooManyHandshakes
                | ErrorCode::TooManyPending
                | ErrorCode::Starting
                | ErrorCode::TooManyAttempts
                | ErrorCode::StreamNotHere
        )
    }

    /// The code as its wire string (also a metrics label value).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MissingDeviceId => "missing_device_id",
            ErrorCode::InvalidDeviceId => "invalid_device_id",
            ErrorCode::InvalidGroup => "invalid_group",
            ErrorCode::NotWebsocket => "not_websocket",
            ErrorCode::NodeFull => "node_full",
            ErrorCode::Draining => "draining",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidFrame => "invalid_frame",
            ErrorCode::TooManyGroups => "too_many_groups",
            ErrorCode::NoSuchRoom => "no_such_room",
            ErrorCode::RoomClosed => "room_closed",
            ErrorCode::RoomRejecting => "room_rejecting",
            ErrorCode::EventNotOpen => "event_not_open",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::PowInvalid => "pow_invalid",
            ErrorCode::PowReused => "pow_reused",
            ErrorCode::TooManyJoins => "too_many_joins",
            ErrorCode::TooManyHandshakes => "too_many_handshakes",
            ErrorCode::TooManyPending => "too_many_pending",
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::TooManyAttempts => "too_many_attempts",
            ErrorCode::MissingDeviceToken => "missing_device_token",
            ErrorCode::InvalidDeviceToken => "invalid_device_token",
            ErrorCode::DeviceTokenMismatch => "device_token_mismatch",
            ErrorCode::DeviceExists => "device_exists",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::OriginNotAllowed => "origin_not_allowed",
            ErrorCode::TooManyPlaces => "too_many_places",
            ErrorCode::Starting => "starting",
            ErrorCode::NotAllowed => "not_allowed",
            ErrorCode::DeviceTokenRevoked => "device_token_revoked",
            ErrorCode::StreamNotHere => "stream_not_here",
        }
    }
}

/// The JSON body of every HTTP error: `{"error": {"code", "message", "retryable"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation; never contains secrets or internals.
    pub message: String,
    /// Whether the same request may succeed later.
    pub retryable: bool,
}

impl ErrorBody {
    /// Builds a body for `code` with a human message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code,
                message: message.into(),
                retryable: code.retryable(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_str_matches_serde() {
        for code in [
            ErrorCode::MissingDeviceId,
            ErrorCode::InvalidDeviceId,
            ErrorCode::InvalidGroup,
            ErrorCode::NotWebsocket,
            ErrorCode::NodeFull,
            ErrorCode::Draining,
            ErrorCode::BadFrame,
            ErrorCode::UnknownType,
            ErrorCode::InvalidFrame,
            ErrorCode::TooManyGroups,
            ErrorCode::NoSuchRoom,
            ErrorCode::RoomClosed,
            ErrorCode::RoomRejecting,
            ErrorCode::EventNotOpen,
            ErrorCode::Unauthorized,
            ErrorCode::BadRequest,
            ErrorCode::PayloadTooLarge,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::StoreUnavailable,
            ErrorCode::Internal,
            ErrorCode::PowInvalid,
            ErrorCode::PowReused,
            ErrorCode::TooManyJoins,
            ErrorCode::TooManyHandshakes,
            ErrorCode::TooManyPending,
            ErrorCode::InvalidCredentials,
            ErrorCode::TooManyAttempts,
            ErrorCode::MissingDeviceToken,
            ErrorCode::InvalidDeviceToken,
            ErrorCode::DeviceTokenMismatch,
            ErrorCode::DeviceExists,
            ErrorCode::Forbidden,
            ErrorCode::OriginNotAllowed,
            ErrorCode::TooManyPlaces,
            ErrorCode::Starting,
            ErrorCode::NotAllowed,
            ErrorCode::DeviceTokenRevoked,
            ErrorCode::StreamNotHere,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn error_body_golden() {
        let body = ErrorBody::new(ErrorCode::MissingDeviceId, "send x-device-id");
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"error":{"code":"missing_device_id","message":"send x-device-id","retryable":false}}"#
        );
    }
}
