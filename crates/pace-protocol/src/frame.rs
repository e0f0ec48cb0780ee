//! JSON text frames on the device WebSocket.
//!
//! Every frame is one JSON object with a string `type`. Devices send
//! [`ClientFrame`]s; nodes send [`ServerFrame`]s. Unknown fields are ignored
//! in both directions so either side can add optional fields.

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::ids::{DeviceId, GroupId, RoomId};
use crate::notify::{Cursor, Notification};

/// A frame a device sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Join a group (department) and receive its notifications.
    Subscribe {
        /// The group to join.
        group: GroupId,
    },
    /// Leave a group.
    Unsubscribe {
        /// The group to leave.
        group: GroupId,
    },
    /// Take a place in a room's queue (or get the admission already
    /// granted). Joining again returns the same place.
    Join {
        /// The room.
        room: RoomId,
    },
    /// Answer to a `challenge`: join the room with a proof of work.
    Solve {
        /// The room.
        room: RoomId,
        /// The `challenge` token, as received.
        challenge: String,
        /// A decimal number `n` such that SHA-256(`prefix:n`) starts with
        /// `difficulty` zero bits (see [`crate::pow`]).
        solution: String,
    },
    /// Give up the place in a room's queue.
    Leave {
        /// The room.
        room: RoomId,
    },
    /// After a reconnect: "I have everything up to these cursors". The node
    /// replays what the device missed, in order, then answers `resumed`.
    /// A cursor for a group also subscribes the connection to that group;
    /// a `device` cursor must name this device.
    Resume {
        /// One cursor per scope the device wants to resume (at most
        /// 1 + the group limit + 1).
        cursors: Vec<Cursor>,
    },
    /// Application-level ping for clients that cannot send WebSocket pings
    /// (browsers); answered by a `pong` echoing `id`.
    Ping {
        /// Opaque value echoed in the `pong`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
}

/// The `type` values a device may send, for telling an unknown type from a
/// malformed frame.
pub const CLIENT_FRAME_TYPES: [&str; 7] = [
    "subscribe",
    "unsubscribe",
    "join",
    "solve",
    "leave",
    "resume",
    "ping",
];

/// Why a text frame is not a valid [`ClientFrame`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Not JSON, not an object, or no string `type`.
    BadFrame,
    /// A `type` this protocol version does not define.
    UnknownType(String),
    /// A known `type` with a missing or invalid field.
    InvalidFrame(String),
}

impl DecodeError {
    /// The error code an `error` frame carries for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::BadFrame => ErrorCode::BadFrame,
            DecodeError::UnknownType(_) => ErrorCode::UnknownType,
            DecodeError::InvalidFrame(_) => ErrorCode::InvalidFrame,
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::BadFrame => {
                f.write_str("frame must be a JSON object with a string \"type\"")
            }
            DecodeError::UnknownType(t) => write!(f, "unknown frame type {t:?}"),
            DecodeError::InvalidFrame(e) => write!(f, "invalid frame: {e}"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl ClientFrame {
    /// Decodes one text frame, classifying failures for the `error` reply.
    pub fn decode(text: &str) -> Result<ClientFrame, DecodeError> {
        match serde_json::from_str::<ClientFrame>(text) {
            Ok(frame) => Ok(frame),
            Err(err) => {
                #[derive(Deserialize)]
                struct Probe {
                    #[serde(rename = "type")]
                    kind: String,
                }
                match serde_json::from_str::<Probe>(text) {
                    Err(_) => Err(DecodeError::BadFrame),
                    Ok(p) if !CLIENT_FRAME_TYPES.contains(&p.kind.as_str()) => {
                        let mut kind = p.kind;
                        kind.truncate(64);
                        Err(DecodeError::UnknownType(kind))
                    }
                    Ok(_) => Err(DecodeError::InvalidFrame(err.to_string())),
                }
            }
        }
    }
}

/// A frame a node sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// First frame on every connection.
    Welcome(Welcome),
    /// A notification for this device (scope all, one of its groups, or it).
    Notification(Notification),
    /// The device is now in this group.
    Subscribed {
        /// The group joined.
        group: GroupId,
    },
    /// The device is no longer in this group.
    Unsubscribed {
        /// The group left.
        group: GroupId,
    },
    /// The device's place in a room's queue; sent on join and whenever the
    /// place, the queue length or the estimate changes.
    Queue(QueueUpdate),
    /// Answer to `join` of a room that asks for proof of work: solve it and
    /// send `solve`.
    Challenge(Challenge),
    /// The device is admitted: go to `target_url` (which already carries the
    /// token as the `pace_token` query parameter).
    Admitted(AdmittedFrame),
    /// The device left the room's queue (answer to `leave`).
    Left {
        /// The room.
        room: RoomId,
    },
    /// Answer to `resume`, sent after every replayed notification: per
    /// scope, whether the device now has everything (`recovered`) and the
    /// cursor it is at.
    Resumed {
        /// One outcome per cursor of the `resume`, in the same order.
        scopes: Vec<ResumeOutcome>,
    },
    /// Answer to a device's `ping`.
    Pong {
        /// The `id` the ping carried.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// A frame from the device was refused; the connection stays open.
    Error {
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
}

/// The `welcome` frame: what the node tells a device once it is connected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// Protocol version ([`crate::PROTOCOL_VERSION`]).
    pub protocol: u32,
    /// The device id the node accepted (from header or query).
    pub device_id: DeviceId,
    /// The node holding this connection (for support and debugging).
    pub node_id: String,
    /// Groups the device is in, from the `x-department-id` header.
    pub groups: Vec<GroupId>,
    /// How often the node pings; a device that does not answer within
    /// `heartbeat_timeout_ms` after a ping is dropped.
    pub heartbeat_interval_ms: u64,
    /// See `heartbeat_interval_ms`.
    pub heartbeat_timeout_ms: u64,
    /// Largest message the node accepts from the device, in bytes.
    pub max_message_bytes: u64,
}

/// How resuming one scope went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeOutcome {
    /// The scope's current position (the cursor the device should keep).
    #[serde(flatten)]
    pub cursor: Cursor,
    /// True when every notification after the device's cursor was replayed
    /// (or there was none). False when history no longer reaches back that
    /// far, the epoch changed, or the store could not be read: the
    /// application should resynchronise its state another way.
    pub recovered: bool,
    /// Notifications replayed for this scope.
    pub replayed: u64,
    /// Why `recovered` is false: `history_exhausted`, `epoch_changed`,
    /// `store_unavailable`, `not_allowed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The `queue` frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueUpdate {
    /// The room.
    pub room: RoomId,
    /// 1 = next to be admitted.
    pub position: u64,
    /// Devices waiting in the room.
    pub waiting_total: u64,
    /// Estimated seconds until admission, from the measured admission rate;
    /// absent while nothing has been admitted recently (no rate to measure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    /// `open`, `paused` (nobody is admitted for now), `closed` (no new
    /// joins; the queue still drains) or `prequeue` (the room's event has
    /// opened its pre-queue and not started: nobody is admitted yet).
    pub state: String,
    /// The device's ticket, in the answer to `join` only: with it (and its
    /// id) a device finds its own entries in the room's audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<u64>,
}

/// The `challenge` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// The room.
    pub room: RoomId,
    /// Signed challenge token; send it back unchanged in `solve`. Usable
    /// once, until `expires_at`.
    pub challenge: String,
    /// The random prefix to hash.
    pub prefix: String,
    /// Leading zero bits the hash must have.
    pub difficulty: u8,
    /// When the challenge expires, Unix seconds.
    pub expires_at: u64,
}

/// The `admitted` frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdmittedFrame {
    /// The room.
    pub room: RoomId,
    /// The signed admission token (a JWT; verify with the cluster's JWKS).
    pub token: String,
    /// Where to go, with `pace_token=<token>` already appended.
    pub target_url: String,
    /// When the session ends unless renewed, Unix seconds.
    pub expires_at: u64,
}

impl ServerFrame {
    /// Serializes the frame to its JSON text.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every map key is a string and
        // every value is plain data.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventName, Scope};

    fn round_trip_client(frame: ClientFrame, golden: &str) {
        assert_eq!(serde_json::to_string(&frame).unwrap(), golden);
        assert_eq!(ClientFrame::decode(golden).unwrap(), frame);
    }

    fn round_trip_server(frame: ServerFrame, golden: &str) {
        assert_eq!(frame.to_json(), golden);
        assert_eq!(serde_json::from_str::<ServerFrame>(golden).unwrap(), frame);
    }

    fn group(g: &str) -> GroupId {
        GroupId::parse(g).unwrap()
    }

    #[test]
    fn queue_frame_golden() {
        let room = crate::RoomId::parse("sale").unwrap();
        round_trip_server(
            ServerFrame::Queue(QueueUpdate {
                room: room.clone(),
                position: 3,
                waiting_total: 120,
                eta_seconds: Some(9),
                state: "open".into(),
                ticket: Some(41),
            }),
            r#"{"type":"queue","room":"sale","position":3,"waiting_total":120,"eta_seconds":9,"state":"open","ticket":41}"#,
        );
        // Pushed updates carry no ticket (and no estimate without a rate).
        round_trip_server(
            ServerFrame::Queue(QueueUpdate {
                room,
                position: 2,
                waiting_total: 119,
                eta_seconds: None,
                state: "paused".into(),
                ticket: None,
            }),
            r#"{"type":"queue","room":"sale","position":2,"waiting_total":119,"state":"paused"}"#,
        );
    }

    #[test]
    fn client_frames_golden() {
        round_trip_client(
            ClientFrame::Subscribe {
                group: group("sales"),
            },
            r#"{"type":"subscribe","group":"sales"}"#,
        );
        round_trip_client(
            ClientFrame::Unsubscribe {
                group: group("sales"),
            },
            r#"{"type":"unsubscribe","group":"sales"}"#,
        );
        round_trip_client(
            ClientFrame::Ping { id: Some(9) },
            r#"{"type":"ping","id":9}"#,
        );
        round_trip_client(ClientFrame::Ping { id: None }, r#"{"type":"ping"}"#);
        round_trip_client(
            ClientFrame::Solve {
                room: RoomId::parse("sale").unwrap(),
                challenge: "tok".into(),
                solution: "42".into(),
            },
            r#"{"type":"solve","room":"sale","challenge":"tok","solution":"42"}"#,
        );
        round_trip_client(
            ClientFrame::Resume {
                cursors: vec![
                    Cursor {
                        scope: Scope::All,
                        target: None,
                        epoch: 5,
                        seq: 17,
                    },
                    Cursor {
                        scope: Scope::Group,
                        target: Some("sales".into()),
                        epoch: 0,
                        seq: 0,
                    },
                ],
            },
            r#"{"type":"resume","cursors":[{"scope":"all","epoch":5,"seq":17},{"scope":"group","target":"sales","epoch":0,"seq":0}]}"#,
        );
    }

    #[test]
    fn server_frames_golden() {
        round_trip_server(
            ServerFrame::Welcome(Welcome {
                protocol: 1,
                device_id: DeviceId::parse("laptop_1").unwrap(),
                node_id: "node-a".into(),
                groups: vec![group("it")],
                heartbeat_interval_ms: 25_000,
                heartbeat_timeout_ms: 10_000,
                max_message_bytes: 65_536,
            }),
            r#"{"type":"welcome","protocol":1,"device_id":"laptop_1","node_id":"node-a","groups":["it"],"heartbeat_interval_ms":25000,"heartbeat_timeout_ms":10000,"max_message_bytes":65536}"#,
        );
        round_trip_server(
            ServerFrame::Notification(Notification {
                id: "0190f0a0-0000-7000-8000-000000000001".into(),
                scope: Scope::All,
                target: None,
                epoch: 1_700_000_000_000_000,
                seq: 1,
                event: EventName::parse("maintenance").unwrap(),
                data: serde_json::json!({"at": "22:00", "n": [1, 2]}),
                sent_at_ms: 1_700_000_000_000,
            }),
            r#"{"type":"notification","id":"0190f0a0-0000-7000-8000-000000000001","scope":"all","epoch":1700000000000000,"seq":1,"event":"maintenance","data":{"at":"22:00","n":[1,2]},"sent_at_ms":1700000000000}"#,
        );
        round_trip_server(
            ServerFrame::Resumed {
                scopes: vec![
                    ResumeOutcome {
                        cursor: Cursor {
                            scope: Scope::All,
                            target: None,
                            epoch: 5,
                            seq: 20,
                        },
                        recovered: true,
                        replayed: 3,
                        reason: None,
                    },
                    ResumeOutcome {
                        cursor: Cursor {
                            scope: Scope::Device,
                            target: Some("laptop_1".into()),
                            epoch: 9,
                            seq: 2,
                        },
                        recovered: false,
                        replayed: 2,
                        reason: Some("epoch_changed".into()),
                    },
                ],
            },
            r#"{"type":"resumed","scopes":[{"scope":"all","epoch":5,"seq":20,"recovered":true,"replayed":3},{"scope":"device","target":"laptop_1","epoch":9,"seq":2,"recovered":false,"replayed":2,"reason":"epoch_changed"}]}"#,
        );
        round_trip_server(
            ServerFrame::Challenge(Challenge {
                room: RoomId::parse("sale").unwrap(),
                challenge: "tok".into(),
                prefix: "ab12".into(),
                difficulty: 18,
                expires_at: 1_700_000_060,
            }),
            r#"{"type":"challenge","room":"sale","challenge":"tok","prefix":"ab12","difficulty":18,"expires_at":1700000060}"#,
        );
        round_trip_server(
            ServerFrame::Subscribed { group: group("it") },
            r#"{"type":"subscribed","group":"it"}"#,
        );
        round_trip_server(
            ServerFrame::Unsubscribed { group: group("it") },
            r#"{"type":"unsubscribed","group":"it"}"#,
        );
        round_trip_server(
            ServerFrame::Pong { id: Some(3) },
            r#"{"type":"pong","id":3}"#,
        );
        round_trip_server(
            ServerFrame::Error {
                code: ErrorCode::UnknownType,
                message: "unknown frame type \"x\"".into(),
            },
            r#"{"type":"error","code":"unknown_type","message":"unknown frame type \"x\""}"#,
        );
    }

    #[test]
    fn decode_classifies_failures() {
        assert_eq!(ClientFrame::decode("not json"), Err(DecodeError::BadFrame));
        assert_eq!(ClientFrame::decode("[1,2]"), Err(DecodeError::BadFrame));
        assert_eq!(
            ClientFrame::decode(r#"{"group":"x"}"#),
            Err(DecodeError::BadFrame)
        );
        assert_eq!(
            ClientFrame::decode(r#"{"type":7}"#),
            Err(DecodeError::BadFrame)
        );
        assert_eq!(
            ClientFrame::decode(r#"{"type":"teleport"}"#),
            Err(DecodeError::UnknownType("teleport".into()))
        );
        let invalid = ClientFrame::decode(r#"{"type":"subscribe","group":"a b"}"#).unwrap_err();
        assert!(
            matches!(invalid, DecodeError::InvalidFrame(_)),
            "{invalid:?}"
        );
        assert_eq!(invalid.code(), ErrorCode::InvalidFrame);
        let missing = ClientFrame::decode(r#"{"type":"subscribe"}"#).unwrap_err();
        assert!(
            matches!(missing, DecodeError::InvalidFrame(_)),
            "{missing:?}"
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        assert_eq!(
            ClientFrame::decode(r#"{"type":"ping","id":1,"future":true}"#),
            Ok(ClientFrame::Ping { id: Some(1) })
        );
    }
}
