//! The REST API's bodies: the requests and answers of a node's HTTP routes,
//! beside the WebSocket frames, so the node, `pace-device` and the load
//! tool speak one set of types. Every error answers with
//! [`crate::ErrorBody`]. Golden tests pin each shape; docs/protocol.md
//! describes the routes.
//!
//! Unknown fields are ignored when reading (either side may add optional
//! fields without a version change).

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, GroupId, RoomId};
use crate::notify::Scope;

/// `POST /api/v1/devices/register`: what a device says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// Its id (the one it connects with).
    pub device_id: DeviceId,
    /// Kind of device (`laptop`, `kiosk`, `phone`, `browser`, …).
    #[serde(default, rename = "type")]
    pub kind: String,
    /// Hardware model.
    #[serde(default)]
    pub model: String,
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// Operating system version.
    #[serde(default)]
    pub os_version: String,
    /// Version of the app that registered.
    #[serde(default)]
    pub app_version: String,
    /// The untenanted department it declares (a tenant's departments are
    /// granted by the tenant's admins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department: Option<GroupId>,
    /// The person using it, when known (then carried in its token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The tenant whose admins may read this record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// The answer to a registration (201 new, 200 refresh).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// The device the token is for.
    pub device_id: DeviceId,
    /// The device token (a JWT).
    pub token: String,
    /// Its expiry, Unix seconds.
    pub expires_at: u64,
}

/// A room's event as its status tells it: the one that governs the room
/// now (the first not yet ended), or else the last one that ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventStatus {
    /// The event's id.
    pub id: String,
    /// `countdown` (joins refused until `prequeue_start`), `prequeue`
    /// (joins wait, nobody admitted until `event_start`), `live` or
    /// `ended`.
    pub phase: String,
    /// When the pre-queue opens, Unix ms.
    pub prequeue_start: u64,
    /// When the pre-queue is ordered and admissions start, Unix ms.
    pub event_start: u64,
    /// When the room returns to its settings, Unix ms.
    pub event_end: u64,
    /// The store's clock when this answer was made, Unix ms: a page counts
    /// down against it, not against its own clock.
    pub now_ms: u64,
    /// `fifo` or `shuffle`.
    pub order: crate::room::EventOrder,
    /// `shuffle`: hex SHA-256 of the seed, committed before the pre-queue
    /// opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed_sha256: Option<String>,
    /// `shuffle`: the seed, once the pre-queue was shuffled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<String>,
    /// The page's message during the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `GET /api/v1/rooms/{room}/status`: where the device stands in a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RoomStatus {
    /// The device holds a place in the queue.
    Waiting {
        /// The room.
        room: RoomId,
        /// 1 = next to be admitted.
        position: u64,
        /// Devices waiting in the room.
        waiting_total: u64,
        /// Estimated seconds until admission; `null` while nothing was
        /// admitted in the last minute.
        #[serde(default)]
        eta_seconds: Option<u64>,
        /// `open`, `paused` or `closed`.
        state: String,
        /// The device's ticket (its entries in the room's audit log).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ticket: Option<u64>,
        /// The room's governing (or last ended) event, when it has events.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event: Option<EventStatus>,
    },
    /// The device is admitted and its session is running.
    Admitted {
        /// The room.
        room: RoomId,
        /// Where to go, with the token already appended.
        target_url: String,
        /// The signed admission token.
        token: String,
        /// When the session ends unless renewed, Unix seconds (the
        /// token's `exp`).
        expires_at: u64,
    },
    /// The device has no place and no session in this room.
    Unknown {
        /// The room.
        room: RoomId,
        /// The room's state.
        #[serde(default)]
        state: Option<String>,
        /// The room's governing (or last ended) event, when it has events:
        /// a page shows its countdown from it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event: Option<EventStatus>,
    },
}

/// `POST /api/v1/sessions/release` and `/renew`: the admission token that
/// names the session (the credential is the caller's bearer token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRequest {
    /// The admission token.
    pub token: String,
}

/// The answer to a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseResponse {
    /// Whether the session was still held.
    pub released: bool,
}

/// The answer to a renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewResponse {
    /// Always true (an ended session answers 404).
    pub renewed: bool,
    /// The session's new end, Unix seconds.
    pub expires_at: u64,
    /// The renewed admission token: the same room, device and session,
    /// `exp` = `expires_at`. Verifiers that check tokens offline (the
    /// gateway, a site with the JWKS) accept the session until then only
    /// with this token; the old one still ends at its own `exp`.
    pub token: String,
}

/// `POST /api/v1/admissions/verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyRequest {
    /// The admission token to check.
    pub token: String,
    /// The room it must be for, when the caller knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
}

/// The claims of an admission token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionClaims {
    /// Issuer: which Pace deployment admitted the device.
    pub iss: String,
    /// Audience: the room id, so a token for one room opens no other.
    pub aud: String,
    /// Subject: the device id.
    pub sub: String,
    /// Token id: the admission session id, to release or audit one admission.
    pub jti: String,
    /// Issued at, unix seconds. Also the earliest time the token is valid.
    pub iat: u64,
    /// Expiry, unix seconds: the end of the admitted session.
    pub exp: u64,
    /// Host of the target site, so a site can refuse tokens meant for another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl AdmissionClaims {
    /// Claims for `device` admitted to `room` in `session`, issued at `now`
    /// (unix seconds) and valid for `ttl` (whole seconds).
    pub fn new(
        issuer: impl Into<String>,
        room: impl Into<String>,
        device: impl Into<String>,
        session: impl Into<String>,
        now: u64,
        ttl: std::time::Duration,
    ) -> Self {
        AdmissionClaims {
            iss: issuer.into(),
            aud: room.into(),
            sub: device.into(),
            jti: session.into(),
            iat: now,
            exp: now.saturating_add(ttl.as_secs()),
            target: None,
        }
    }

    /// Adds the target host claim.
    #[must_use]
    pub fn with_target(mut self, host: impl Into<String>) -> Self {
        self.target = Some(host.into());
        self
    }
}

/// The answer to a verification: `valid` with the claims, or not with the
/// reason (`expired`, `wrong_audience`, …, `session_ended`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyResponse {
    /// Whether the token admits now.
    pub valid: bool,
    /// The claims, when valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<AdmissionClaims>,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The same for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl VerifyResponse {
    /// A valid token's answer.
    pub fn valid(claims: AdmissionClaims) -> VerifyResponse {
        VerifyResponse {
            valid: true,
            claims: Some(claims),
            error: None,
            message: None,
        }
    }

    /// A refusal with its reason.
    pub fn refused(error: impl Into<String>, message: impl Into<String>) -> VerifyResponse {
        VerifyResponse {
            valid: false,
            claims: None,
            error: Some(error.into()),
            message: Some(message.into()),
        }
    }
}

/// `POST /api/v1/notify` accepted (202): where the notification sits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyAccepted {
    /// Its id (UUIDv7).
    pub id: String,
    /// Its scope.
    pub scope: Scope,
    /// Its group or device; `null` for `all`.
    pub target: Option<String>,
    /// The scope's epoch.
    pub epoch: u64,
    /// Its sequence number in the scope.
    pub seq: u64,
    /// When the node accepted it, Unix milliseconds.
    pub sent_at_ms: u64,
}

/// `POST /api/v1/admin/ws-ticket`: a single-use ticket for `/admin/ws`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketResponse {
    /// The ticket, for `/admin/ws?ticket=`.
    pub ticket: String,
    /// Its expiry, Unix seconds (30 s at most).
    pub expires_at: u64,
}

/// `PUT /api/v1/admin/devices/{device}/departments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepartmentsRequest {
    /// The departments, replacing the granted ones (`finance` or
    /// `acme:finance` for an admin of acme).
    pub departments: Vec<String>,
}

/// The departments a device's credential grants now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepartmentsResponse {
    /// The device.
    pub device_id: DeviceId,
    /// Its granted groups, in full (`acme:finance`).
    pub departments: Vec<GroupId>,
}

/// `POST /api/v1/admin/devices/{device}/kick`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KickResponse {
    /// The device.
    pub device_id: DeviceId,
    /// Always true.
    pub kicked: bool,
    /// Its tokens issued at or before this Unix second are revoked.
    pub revoked_before: u64,
}

/// `DELETE /api/v1/admin/devices/{device}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetResponse {
    /// The device.
    pub device_id: DeviceId,
    /// Whether it was registered.
    pub forgotten: bool,
}

/// `POST /api/v1/admin/rooms/{room}/sessions/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeSessionRequest {
    /// The admitted device whose session ends.
    pub device_id: DeviceId,
}

/// The answer to a session revoke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeSessionResponse {
    /// The room.
    pub room: RoomId,
    /// The device.
    pub device_id: DeviceId,
    /// The session that ended.
    pub session_id: String,
    /// Whether it was still held.
    pub revoked: bool,
}

/// `POST /api/v1/admin/login` accepted: the admin token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginResponse {
    /// The admin token (`Authorization: Bearer`).
    pub token: String,
    /// Its expiry, Unix seconds.
    pub expires_at: u64,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
    /// The node's id.
    pub node_id: String,
}

/// The store's health as `/ready` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreHealth {
    /// `memory` or `redis`.
    pub kind: String,
    /// Whether the store answers now.
    pub up: bool,
    /// Why it is down, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /ready` (200 when ready, 503 otherwise, same body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// Whether the node accepts new devices.
    pub ready: bool,
    /// Whether it is draining.
    pub draining: bool,
    /// The node's id.
    pub node_id: String,
    /// Devices connected now.
    pub connections: i64,
    /// The store's health (a store outage does not make a node unready).
    pub store: StoreHealth,
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's id.
    pub node_id: String,
    /// Address devices and the gateway reach it on.
    pub address: String,
    /// Devices connected to it at its last heartbeat.
    pub connections: u64,
    /// Whether it accepted new devices at its last heartbeat.
    pub ready: bool,
    /// Its last heartbeat, Unix milliseconds.
    pub last_heartbeat_ms: u64,
}

/// `GET /api/v1/cluster` (service key; with `store`) and
/// `GET /api/v1/admin/cluster` (admins; without).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// `memory` or `redis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// Devices connected over all nodes.
    pub total_connections: u64,
    /// The live nodes, ordered by id.
    pub nodes: Vec<NodeInfo>,
}

/// Upper bounds (seconds) of the wait-time buckets, ascending; a last,
/// unbounded bucket (`+Inf`) follows.
pub const WAIT_BUCKETS_SECS: [u64; 10] = [1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600];

/// The upper bound of a wait-time bucket: seconds, or `"+Inf"` for the
/// last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BucketBound {
    /// Waits of at most this many seconds (and more than the bucket
    /// before).
    Seconds(u64),
    /// Everything longer than the last bound: always `"+Inf"`.
    Infinity(String),
}

/// One bucket of a room's wait-time distribution (not cumulative).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitBucket {
    /// The bucket's upper bound.
    pub le: BucketBound,
    /// Admissions that waited that long.
    pub count: u64,
}

/// A room's wait times (first join → admission), cluster-wide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitSeconds {
    /// Admissions measured.
    pub count: u64,
    /// Their mean wait, seconds.
    pub mean: f64,
    /// The distribution.
    pub buckets: Vec<WaitBucket>,
}

/// `GET /api/v1/rooms/{room}/stats` (and the admin route, and each room
/// of the admin feed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomStats {
    /// The room.
    pub room: RoomId,
    /// Devices waiting now.
    pub waiting: u64,
    /// Most devices ever waiting at once.
    pub peak_waiting: u64,
    /// Sessions admitted and not ended.
    pub active: u64,
    /// Admissions since the room was made.
    pub admitted_total: u64,
    /// Places given up or lost.
    pub abandoned_total: u64,
    /// Admissions in the last 60 s.
    pub admissions_last_minute: u64,
    /// Wait times.
    pub wait_seconds: WaitSeconds,
}

/// One device of a tenant's registry, as its admins see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEntry {
    /// What it said about itself at its last registration.
    #[serde(flatten)]
    pub info: RegisterRequest,
    /// First registration, Unix milliseconds.
    pub first_registered_ms: u64,
    /// Last registration or credential check, Unix milliseconds.
    pub last_seen_ms: u64,
    /// The address it was last seen from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ip: Option<String>,
    /// The groups its credential grants.
    #[serde(default)]
    pub departments: Vec<GroupId>,
}

/// `GET /api/v1/admin/devices`: the tenant's registry, searched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Devices {
    /// The matching devices, ordered by id.
    pub devices: Vec<DeviceEntry>,
}

/// `GET /api/v1/admin/rooms`: the tenant's rooms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rooms {
    /// Its rooms, ordered by id.
    pub rooms: Vec<crate::room::Room>,
}

/// One room in the admin feed's telemetry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryRoom {
    /// The room.
    pub id: RoomId,
    /// Its settings.
    pub config: crate::room::RoomConfig,
    /// Its figures; `null` when the store could not be read this second.
    pub stats: Option<RoomStats>,
}

/// The admin feed's frame (`/admin/ws`), once a second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "telemetry")]
pub struct Telemetry {
    /// When it was made, Unix milliseconds.
    pub at_ms: u64,
    /// The admin's tenant.
    pub tenant: String,
    /// The tenant's rooms.
    pub rooms: Vec<TelemetryRoom>,
    /// Devices connected over all nodes.
    pub total_connections: u64,
    /// The live nodes.
    pub nodes: Vec<NodeInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;

    /// `value` serializes to exactly `golden` and reads back the same.
    fn golden<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
        value: T,
        golden: &str,
    ) {
        assert_eq!(serde_json::to_string(&value).unwrap(), golden);
        assert_eq!(serde_json::from_str::<T>(golden).unwrap(), value);
    }

    fn d(s: &str) -> DeviceId {
        DeviceId::parse(s).unwrap()
    }

    fn r(s: &str) -> RoomId {
        RoomId::parse(s).unwrap()
    }

    #[test]
    fn registration() {
        golden(
            RegisterRequest {
                device_id: d("laptop_1"),
                kind: "laptop".into(),
                model: "X1".into(),
                os: "linux".into(),
                os_version: "6.8".into(),
                app_version: "1.0.0".into(),
                department: Some(GroupId::parse("sales").unwrap()),
                user: None,
                tenant: Some("acme".into()),
            },
            r#"{"device_id":"laptop_1","type":"laptop","model":"X1","os":"linux","os_version":"6.8","app_version":"1.0.0","department":"sales","tenant":"acme"}"#,
        );
        let minimal: RegisterRequest = serde_json::from_str(r#"{"device_id":"k"}"#).unwrap();
        assert_eq!((minimal.kind.as_str(), minimal.tenant), ("", None));
        golden(
            RegisterResponse {
                device_id: d("laptop_1"),
                token: "t".into(),
                expires_at: 9,
            },
            r#"{"device_id":"laptop_1","token":"t","expires_at":9}"#,
        );
    }

    #[test]
    fn room_status() {
        golden(
            RoomStatus::Waiting {
                room: r("sale"),
                position: 3,
                waiting_total: 9,
                eta_seconds: None,
                state: "open".into(),
                ticket: None,
                event: None,
            },
            r#"{"status":"waiting","room":"sale","position":3,"waiting_total":9,"eta_seconds":null,"state":"open"}"#,
        );
        golden(
            RoomStatus::Waiting {
                room: r("sale"),
                position: 3,
                waiting_total: 9,
                eta_seconds: Some(4),
                state: "open".into(),
                ticket: Some(12),
                event: None,
            },
            r#"{"status":"waiting","room":"sale","position":3,"waiting_total":9,"eta_seconds":4,"state":"open","ticket":12}"#,
        );
        golden(
            RoomStatus::Admitted {
                room: r("sale"),
                target_url: "https://x/?pace_token=t".into(),
                token: "t".into(),
                expires_at: 5,
            },
            r#"{"status":"admitted","room":"sale","target_url":"https://x/?pace_token=t","token":"t","expires_at":5}"#,
        );
        golden(
            RoomStatus::Unknown {
                room: r("sale"),
                state: Some("paused".into()),
                event: None,
            },
            r#"{"status":"unknown","room":"sale","state":"paused"}"#,
        );
        golden(
            RoomStatus::Unknown {
                room: r("sale"),
                state: Some("open".into()),
                event: Some(EventStatus {
                    id: "drop".into(),
                    phase: "countdown".into(),
                    prequeue_start: 100,
                    event_start: 200,
                    event_end: 300,
                    now_ms: 50,
                    order: crate::room::EventOrder::Shuffle,
                    seed_sha256: Some("c".into()),
                    seed: None,
                    message: Some("Soon".into()),
                }),
            },
            r#"{"status":"unknown","room":"sale","state":"open","event":{"id":"drop","phase":"countdown","prequeue_start":100,"event_start":200,"event_end":300,"now_ms":50,"order":"shuffle","seed_sha256":"c","message":"Soon"}}"#,
        );
    }

    #[test]
    fn sessions_and_verification() {
        golden(SessionRequest { token: "t".into() }, r#"{"token":"t"}"#);
        golden(ReleaseResponse { released: true }, r#"{"released":true}"#);
        golden(
            RenewResponse {
                renewed: true,
                expires_at: 7,
                token: "t".into(),
            },
            r#"{"renewed":true,"expires_at":7,"token":"t"}"#,
        );
        golden(
            VerifyRequest {
                token: "t".into(),
                room: Some("sale".into()),
            },
            r#"{"token":"t","room":"sale"}"#,
        );
        let claims = AdmissionClaims {
            iss: "pace".into(),
            aud: "sale".into(),
            sub: "d".into(),
            jti: "s".into(),
            iat: 1,
            exp: 2,
            target: None,
        };
        golden(
            VerifyResponse::valid(claims),
            r#"{"valid":true,"claims":{"iss":"pace","aud":"sale","sub":"d","jti":"s","iat":1,"exp":2}}"#,
        );
        golden(
            VerifyResponse::refused("session_ended", "over"),
            r#"{"valid":false,"error":"session_ended","message":"over"}"#,
        );
    }

    #[test]
    fn notify_and_operations() {
        golden(
            NotifyAccepted {
                id: "i".into(),
                scope: Scope::All,
                target: None,
                epoch: 1,
                seq: 2,
                sent_at_ms: 3,
            },
            r#"{"id":"i","scope":"all","target":null,"epoch":1,"seq":2,"sent_at_ms":3}"#,
        );
        golden(
            Health {
                status: "ok".into(),
                node_id: "n".into(),
            },
            r#"{"status":"ok","node_id":"n"}"#,
        );
        golden(
            Ready {
                ready: true,
                draining: false,
                node_id: "n".into(),
                connections: 4,
                store: StoreHealth {
                    kind: "redis".into(),
                    up: false,
                    error: Some("down".into()),
                },
            },
            r#"{"ready":true,"draining":false,"node_id":"n","connections":4,"store":{"kind":"redis","up":false,"error":"down"}}"#,
        );
        let node = NodeInfo {
            node_id: "n".into(),
            address: "127.0.0.1:1".into(),
            connections: 2,
            ready: true,
            last_heartbeat_ms: 5,
        };
        golden(
            Cluster {
                store: Some("redis".into()),
                total_connections: 2,
                nodes: vec![node.clone()],
            },
            r#"{"store":"redis","total_connections":2,"nodes":[{"node_id":"n","address":"127.0.0.1:1","connections":2,"ready":true,"last_heartbeat_ms":5}]}"#,
        );
        golden(
            Cluster {
                store: None,
                total_connections: 0,
                nodes: vec![],
            },
            r#"{"total_connections":0,"nodes":[]}"#,
        );
    }

    #[test]
    fn stats_and_telemetry() {
        let stats = RoomStats {
            room: r("sale"),
            waiting: 3,
            peak_waiting: 9,
            active: 1,
            admitted_total: 4,
            abandoned_total: 0,
            admissions_last_minute: 2,
            wait_seconds: WaitSeconds {
                count: 4,
                mean: 1.5,
                buckets: vec![
                    WaitBucket {
                        le: BucketBound::Seconds(1),
                        count: 1,
                    },
                    WaitBucket {
                        le: BucketBound::Infinity("+Inf".into()),
                        count: 3,
                    },
                ],
            },
        };
        let golden_stats = r#"{"room":"sale","waiting":3,"peak_waiting":9,"active":1,"admitted_total":4,"abandoned_total":0,"admissions_last_minute":2,"wait_seconds":{"count":4,"mean":1.5,"buckets":[{"le":1,"count":1},{"le":"+Inf","count":3}]}}"#;
        assert_eq!(serde_json::to_string(&stats).unwrap(), golden_stats);
        assert_eq!(
            serde_json::from_str::<RoomStats>(golden_stats).unwrap(),
            stats
        );
        // A config without `mode` (as stored before modes) reads as fifo,
        // and is written with it.
        let config: crate::room::RoomConfig = serde_json::from_str(
            r#"{"capacity":5,"admit_per_minute":null,"session_ttl_secs":60,"target_url":"https://x/","state":"open","pow_difficulty":0}"#,
        )
        .unwrap();
        assert_eq!(config.mode, crate::room::QueueMode::Fifo);
        let t = Telemetry {
            at_ms: 1,
            tenant: "acme".into(),
            rooms: vec![TelemetryRoom {
                id: r("sale"),
                config,
                stats: None,
            }],
            total_connections: 0,
            nodes: vec![],
        };
        let golden = r#"{"type":"telemetry","at_ms":1,"tenant":"acme","rooms":[{"id":"sale","config":{"capacity":5,"admit_per_minute":null,"session_ttl_secs":60,"target_url":"https://x/","state":"open","pow_difficulty":0,"mode":"fifo"},"stats":null}],"total_connections":0,"nodes":[]}"#;
        assert_eq!(serde_json::to_string(&t).unwrap(), golden);
        assert_eq!(serde_json::from_str::<Telemetry>(golden).unwrap(), t);
    }

    #[test]
    fn admin_bodies() {
        golden(
            LoginResponse {
                token: "t".into(),
                expires_at: 1,
            },
            r#"{"token":"t","expires_at":1}"#,
        );
        golden(
            TicketResponse {
                ticket: "t".into(),
                expires_at: 1,
            },
            r#"{"ticket":"t","expires_at":1}"#,
        );
        golden(
            DepartmentsRequest {
                departments: vec!["ops".into()],
            },
            r#"{"departments":["ops"]}"#,
        );
        golden(
            DepartmentsResponse {
                device_id: d("k"),
                departments: vec![GroupId::parse("acme:ops").unwrap()],
            },
            r#"{"device_id":"k","departments":["acme:ops"]}"#,
        );
        golden(
            KickResponse {
                device_id: d("k"),
                kicked: true,
                revoked_before: 9,
            },
            r#"{"device_id":"k","kicked":true,"revoked_before":9}"#,
        );
        golden(
            ForgetResponse {
                device_id: d("k"),
                forgotten: true,
            },
            r#"{"device_id":"k","forgotten":true}"#,
        );
        golden(
            Devices {
                devices: vec![DeviceEntry {
                    info: serde_json::from_str(r#"{"device_id":"k","type":"kiosk"}"#).unwrap(),
                    first_registered_ms: 1,
                    last_seen_ms: 2,
                    last_ip: Some("192.0.2.1".into()),
                    departments: vec![GroupId::parse("acme:ops").unwrap()],
                }],
            },
            r#"{"devices":[{"device_id":"k","type":"kiosk","model":"","os":"","os_version":"","app_version":"","first_registered_ms":1,"last_seen_ms":2,"last_ip":"192.0.2.1","departments":["acme:ops"]}]}"#,
        );
        golden(
            RevokeSessionRequest { device_id: d("k") },
            r#"{"device_id":"k"}"#,
        );
        golden(
            RevokeSessionResponse {
                room: r("sale"),
                device_id: d("k"),
                session_id: "s".into(),
                revoked: true,
            },
            r#"{"room":"sale","device_id":"k","session_id":"s","revoked":true}"#,
        );
    }
}
