//! HTTP routes of the waiting room: room configuration, statistics, a
//! device's status (the handoff after a reload), session release and
//! renewal, token verification, the JWKS, and the demo target page.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use pace_protocol::{DEVICE_ID_HEADER, DEVICE_ID_QUERY, DeviceId, ErrorCode, RoomId};
use serde::Deserialize;
use serde_json::json;

use crate::api::{authorized, read_json};
use crate::error::{ApiError, Body, json_response};
use crate::node::NodeRef;
use crate::queue::{DeviceStatus, QueueError, RoomConfig};
use crate::rooms::{eta_seconds, with_token};
use crate::store::now_ms;

pub(crate) fn store_error(e: QueueError) -> ApiError {
    match e {
        QueueError::InvalidConfig(msg) => ApiError::new(ErrorCode::BadRequest, msg),
        other => {
            tracing::warn!(error = %other, "queue store error");
            ApiError::new(
                ErrorCode::StoreUnavailable,
                "the queue store is unavailable; retry",
            )
        }
    }
}

fn room_id(raw: &str) -> Result<RoomId, ApiError> {
    RoomId::parse(raw).map_err(|e| ApiError::new(ErrorCode::NoSuchRoom, format!("room id {e}")))
}

fn require_service_key(node: &NodeRef, req: &Request<Incoming>) -> Result<(), ApiError> {
    if authorized(node, req) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Unauthorized,
            "send Authorization: Bearer <service key>",
        ))
    }
}

/// `PUT /api/v1/rooms/{room}`: create or change a room (every field, live).
pub async fn put_room(
    node: &NodeRef,
    raw: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    require_service_key(node, &req)?;
    let room = room_id(raw)?;
    let config: RoomConfig = read_json(req, node.config.max_message_bytes).await?;
    config
        .validate()
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, e))?;
    let saved = node
        .rooms
        .queue
        .put_room(&room, &config)
        .await
        .map_err(store_error)?;
    Ok(json_response(StatusCode::OK, &json!(saved)))
}

/// `GET /api/v1/rooms/{room}`: the room's configuration (public: the
/// waiting page shows it).
pub async fn get_room(node: &NodeRef, raw: &str) -> Result<Response<Body>, ApiError> {
    let room = room_id(raw)?;
    match node
        .rooms
        .queue
        .get_room(&room)
        .await
        .map_err(store_error)?
    {
        Some(r) => Ok(json_response(StatusCode::OK, &json!(r))),
        None => Err(ApiError::new(
            ErrorCode::NoSuchRoom,
            format!("no room {room}"),
        )),
    }
}

/// `GET /api/v1/rooms/{room}/stats` (service key).
pub async fn stats(
    node: &NodeRef,
    raw: &str,
    req: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    require_service_key(node, req)?;
    let room = room_id(raw)?;
    if node
        .rooms
        .queue
        .get_room(&room)
        .await
        .map_err(store_error)?
        .is_none()
    {
        return Err(ApiError::new(
            ErrorCode::NoSuchRoom,
            format!("no room {room}"),
        ));
    }
    Ok(json_response(
        StatusCode::OK,
        &stats_body(node, &room).await?,
    ))
}

/// The stats of an existing room, as `GET …/stats` answers them.
pub(crate) async fn stats_body(
    node: &NodeRef,
    room: &RoomId,
) -> Result<serde_json::Value, ApiError> {
    let room = room.clone();
    let c = node
        .rooms
        .queue
        .stats(&room, now_ms())
        .await
        .map_err(store_error)?;
    let w = node.rooms.queue.waits(&room).await.map_err(store_error)?;
    let buckets: Vec<serde_json::Value> = crate::queue::WAIT_BUCKETS_SECS
        .iter()
        .map(|b| json!(b))
        .chain(std::iter::once(json!("+Inf")))
        .zip(&w.counts)
        .map(|(le, n)| json!({"le": le, "count": n}))
        .collect();
    Ok(json!({
            "room": room,
            "waiting": c.waiting,
            "peak_waiting": c.peak_waiting,
            "active": c.active,
            "admitted_total": c.admitted_total,
            "abandoned_total": c.abandoned_total,
            "admissions_last_minute": c.admitted_last_minute,
            "wait_seconds": {
                "count": w.count(),
                "mean": if w.count() > 0 { w.sum_ms as f64 / w.count() as f64 / 1000.0 } else { 0.0 },
                "buckets": buckets,
            },
    }))
}

/// The device a request speaks for: `x-device-id` header, else `device_id`
/// query parameter.
fn device_of(req: &Request<Incoming>) -> Result<DeviceId, ApiError> {
    let raw = req
        .headers()
        .get(DEVICE_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            let q = req.uri().query()?;
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == DEVICE_ID_QUERY)
                .map(|(_, v)| v.into_owned())
        })
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::MissingDeviceId,
                "send x-device-id or ?device_id=",
            )
        })?;
    DeviceId::parse(&raw)
        .map_err(|e| ApiError::new(ErrorCode::InvalidDeviceId, format!("device id {e}")))
}

/// `GET /api/v1/rooms/{room}/status`: `waiting` with the place, or
/// `admitted` with the token and target URL (finishes the handoff after a
/// page reload), or `unknown`.
pub async fn status(
    node: &NodeRef,
    raw: &str,
    req: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let room_id = room_id(raw)?;
    let device = device_of(req)?;
    let now = now_ms();
    let queue = &node.rooms.queue;
    let Some(room) = queue.get_room(&room_id).await.map_err(store_error)? else {
        return Err(ApiError::new(
            ErrorCode::NoSuchRoom,
            format!("no room {room_id}"),
        ));
    };
    let body = match queue
        .status(&room_id, &device, now)
        .await
        .map_err(store_error)?
    {
        DeviceStatus::Waiting(place) => {
            let rate = queue
                .stats(&room_id, now)
                .await
                .map_err(store_error)?
                .admitted_last_minute;
            json!({
                "status": "waiting",
                "room": room_id,
                "position": place.position,
                "waiting_total": place.waiting_total,
                "eta_seconds": eta_seconds(place.position, rate),
                "state": room.config.state.as_str(),
            })
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
            json!({
                "status": "admitted",
                "room": room_id,
                "target_url": with_token(&room.config.target_url, &token),
                "token": token,
                "expires_at": adm.expires_at_ms / 1000,
            })
        }
        DeviceStatus::Unknown => {
            json!({"status": "unknown", "room": room_id, "state": room.config.state.as_str()})
        }
    };
    Ok(json_response(StatusCode::OK, &body))
}

#[derive(Deserialize)]
struct TokenBody {
    token: String,
    #[serde(default)]
    room: Option<String>,
}

/// `POST /api/v1/admissions/verify`: `{"valid": true, "claims": …}` or
/// `{"valid": false, "error": "<reason>"}`, for sites that cannot verify a
/// JWT themselves.
pub async fn verify(node: &NodeRef, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let body: TokenBody = read_json(req, node.config.max_message_bytes).await?;
    let now = now_ms() / 1000;
    let answer = match node.keys.verify(&body.token, body.room.as_deref(), now) {
        Ok(claims) => json!({"valid": true, "claims": claims}),
        Err(e) => {
            node.metrics
                .tokens_rejected
                .with_label_values(&[e.code()])
                .inc();
            json!({"valid": false, "error": e.code(), "message": e.to_string()})
        }
    };
    Ok(json_response(StatusCode::OK, &answer))
}

/// `POST /api/v1/sessions/release` and `/renew`: the target site ends or
/// extends the session its token names.
pub async fn session(
    node: &NodeRef,
    req: Request<Incoming>,
    renew: bool,
) -> Result<Response<Body>, ApiError> {
    let body: TokenBody = read_json(req, node.config.max_message_bytes).await?;
    let now = now_ms();
    let claims = node
        .keys
        .verify(&body.token, None, now / 1000)
        .map_err(|e| {
            node.metrics
                .tokens_rejected
                .with_label_values(&[e.code()])
                .inc();
            ApiError::new(
                ErrorCode::Unauthorized,
                format!("invalid admission token: {e}"),
            )
        })?;
    let room = room_id(&claims.aud)?;
    let queue = &node.rooms.queue;
    if renew {
        let expires = queue
            .renew(&room, &claims.jti, now)
            .await
            .map_err(store_error)?;
        match expires {
            Some(ms) => Ok(json_response(
                StatusCode::OK,
                &json!({"renewed": true, "expires_at": ms / 1000}),
            )),
            None => Err(ApiError::new(ErrorCode::NotFound, "the session has ended")),
        }
    } else {
        let released = queue
            .release(&room, &claims.jti)
            .await
            .map_err(store_error)?;
        Ok(json_response(
            StatusCode::OK,
            &json!({"released": released}),
        ))
    }
}

/// `GET /.well-known/jwks.json`: the admission keys' public halves.
pub fn jwks(node: &NodeRef) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(node.keys.jwks_json().to_owned())));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    resp
}

/// `GET /demo/target?pace_token=…`: the demo target site. It verifies the
/// token (as a real site would, against this cluster's keys) and shows the
/// claims.
pub fn demo_target(node: &NodeRef, req: &Request<Incoming>) -> Response<Body> {
    let token = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "pace_token")
            .map(|(_, v)| v.into_owned())
    });
    let verified = token
        .as_deref()
        .map(|t| node.keys.verify(t, None, now_ms() / 1000));
    use crate::web::{TargetToken, target_page};
    match verified {
        Some(Ok(claims)) => target_page(TargetToken::Verified(&claims)),
        Some(Err(e)) => target_page(TargetToken::Refused(e.to_string())),
        None => target_page(TargetToken::Missing),
    }
}
