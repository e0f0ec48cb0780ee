//! Room routes: configuration (`PUT` by the service key, `GET` public),
//! stats (service key), a device's status (the device itself) and the
//! public audit log.

use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use pace_protocol::rest::RoomStatus;
use pace_protocol::{ErrorCode, RoomId};

use crate::error::{ApiError, json_response};
use crate::http::body::Json;
use crate::http::extract::DeviceCaller;
use crate::node::NodeRef;
use crate::queue::{DeviceStatus, RoomConfig};
use crate::rooms::{eta_seconds, with_token};
use crate::rooms_api::stats_body;
use crate::routes::Params;
use crate::store::now_ms;

/// The room a path names; 404 `no_such_room` when it is no room id.
pub(crate) fn room_id(raw: &str) -> Result<RoomId, ApiError> {
    RoomId::parse(raw).map_err(|e| ApiError::new(ErrorCode::NoSuchRoom, format!("room id {e}")))
}

fn no_room(room: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::NoSuchRoom, format!("no room {room}"))
}

/// `PUT /api/v1/rooms/{room}` (service key): create or change a room
/// (every field, live).
pub async fn put_room(
    State(node): State<NodeRef>,
    params: Params,
    Json(config, _): Json<RoomConfig>,
) -> Result<Response, ApiError> {
    let room = room_id(&params.room)?;
    config
        .validate()
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, e))?;
    let saved = node.rooms.queue.put_room(&room, &config).await?;
    Ok(json_response(StatusCode::OK, &saved))
}

/// `GET /api/v1/rooms/{room}`: the room's configuration (public: the
/// waiting page shows it).
pub async fn get_room(State(node): State<NodeRef>, params: Params) -> Result<Response, ApiError> {
    let room = room_id(&params.room)?;
    match node.rooms.queue.get_room(&room).await? {
        Some(r) => Ok(json_response(StatusCode::OK, &r)),
        None => Err(no_room(room)),
    }
}

/// `GET /api/v1/rooms/{room}/stats` (service key).
pub async fn stats(State(node): State<NodeRef>, params: Params) -> Result<Response, ApiError> {
    let room = room_id(&params.room)?;
    if node.rooms.queue.get_room(&room).await?.is_none() {
        return Err(no_room(room));
    }
    Ok(json_response(
        StatusCode::OK,
        &stats_body(node.rooms.queue.as_ref(), &room).await?,
    ))
}

/// `GET /api/v1/rooms/{room}/status` (the device itself, by its token):
/// `waiting` with the place, or `admitted` with the token and target URL
/// (finishes the handoff after a page reload), or `unknown`. The
/// admission token only ever goes to the device it was issued to.
pub async fn status(
    State(node): State<NodeRef>,
    DeviceCaller(me): DeviceCaller,
    params: Params,
) -> Result<Response, ApiError> {
    let room_id = room_id(&params.room)?;
    let device = me.device;
    let now = now_ms();
    let queue = &node.rooms.queue;
    let Some(room) = queue.get_room(&room_id).await? else {
        return Err(no_room(room_id));
    };
    let event = node.rooms.event_status(&room.config).await?;
    let body = match queue.status(&room_id, &device, now).await? {
        DeviceStatus::Waiting(place) => {
            let rate = queue.stats(&room_id, now).await?.admitted_last_minute;
            RoomStatus::Waiting {
                room: room_id,
                position: place.position,
                waiting_total: place.waiting_total,
                eta_seconds: eta_seconds(place.position, rate),
                state: room.config.state.as_str().to_owned(),
                ticket: Some(place.ticket),
                event,
            }
        }
        DeviceStatus::Admitted(adm) => {
            let token = crate::rooms::Signer::sign(node.keys.as_ref(), &room_id, &device, &adm)
                .map_err(|e| {
                    node.metrics.token_sign_errors.inc();
                    tracing::error!(error = %e, "signing failed");
                    ApiError::new(
                        ErrorCode::Internal,
                        "could not issue the admission token; retry",
                    )
                })?;
            RoomStatus::Admitted {
                room: room_id,
                target_url: with_token(&room.config.target_url, &token),
                token,
                expires_at: adm.expires_at_secs(),
            }
        }
        DeviceStatus::Unknown => RoomStatus::Unknown {
            room: room_id,
            state: Some(room.config.state.as_str().to_owned()),
            event,
        },
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// The media type of the audit-log exports (JSON Lines).
pub const JSONL: &str = "application/jsonl; charset=utf-8";

/// A `200` with a JSON Lines body.
pub fn jsonl_response(body: Bytes) -> Response {
    let mut resp = Response::new(axum::body::Body::from(body));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSONL));
    resp
}

/// `GET /api/v1/rooms/{room}/log`: the room's sealed audit log, anonymised
/// (session ids hashed), for anyone to verify; rendered once per
/// checkpoint.
pub async fn public_log(State(node): State<NodeRef>, params: Params) -> Result<Response, ApiError> {
    let raw = params.room.as_str();
    let room = room_id(raw)?;
    let queue = node.rooms.queue.as_ref();
    if queue.get_room(&room).await?.is_none() {
        return Err(no_room(raw));
    }
    let (body, cached) = node.audit_logs.get(queue, &room, now_ms()).await?;
    let kind = if cached { "public_cached" } else { "public" };
    node.metrics.audit_exports.with_label_values(&[kind]).inc();
    Ok(jsonl_response(body))
}
