//! HTTP routes of the waiting room: room configuration, statistics, a
//! device's status (the handoff after a reload), session release and
//! renewal, token verification, the JWKS, and the demo target page.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use pace_protocol::rest::{
    BucketBound, ReleaseResponse, RenewResponse, RoomStats, RoomStatus, SessionRequest,
    VerifyRequest, VerifyResponse, WaitBucket, WaitSeconds,
};
use pace_protocol::{DeviceId, ErrorCode, RoomId};

use crate::api::read_json;
use crate::auth::Principal;
use crate::error::{ApiError, Body, json_response};
use crate::node::NodeRef;
use crate::queue::{DeviceStatus, RoomConfig};
use crate::rooms::{eta_seconds, with_token};
use crate::store::now_ms;

fn room_id(raw: &str) -> Result<RoomId, ApiError> {
    RoomId::parse(raw).map_err(|e| ApiError::new(ErrorCode::NoSuchRoom, format!("room id {e}")))
}

/// `PUT /api/v1/rooms/{room}` (service key): create or change a room
/// (every field, live).
pub async fn put_room(
    node: &NodeRef,
    raw: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let room = room_id(raw)?;
    let config: RoomConfig = read_json(req, node.config.max_message_bytes).await?;
    config
        .validate()
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, e))?;
    let saved = node.rooms.queue.put_room(&room, &config).await?;
    Ok(json_response(StatusCode::OK, &saved))
}

/// `GET /api/v1/rooms/{room}`: the room's configuration (public: the
/// waiting page shows it).
pub async fn get_room(node: &NodeRef, raw: &str) -> Result<Response<Body>, ApiError> {
    let room = room_id(raw)?;
    match node.rooms.queue.get_room(&room).await? {
        Some(r) => Ok(json_response(StatusCode::OK, &r)),
        None => Err(ApiError::new(
            ErrorCode::NoSuchRoom,
            format!("no room {room}"),
        )),
    }
}

/// `GET /api/v1/rooms/{room}/stats` (service key).
pub async fn stats(node: &NodeRef, raw: &str) -> Result<Response<Body>, ApiError> {
    let room = room_id(raw)?;
    if node.rooms.queue.get_room(&room).await?.is_none() {
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
pub(crate) async fn stats_body(node: &NodeRef, room: &RoomId) -> Result<RoomStats, ApiError> {
    let c = node.rooms.queue.stats(room, now_ms()).await?;
    let w = node.rooms.queue.waits(room).await?;
    let buckets = crate::queue::WAIT_BUCKETS_SECS
        .iter()
        .map(|b| BucketBound::Seconds(*b))
        .chain(std::iter::once(BucketBound::Infinity("+Inf".into())))
        .zip(&w.counts)
        .map(|(le, n)| WaitBucket { le, count: *n })
        .collect();
    let count = w.count();
    Ok(RoomStats {
        room: room.clone(),
        waiting: c.waiting,
        peak_waiting: c.peak_waiting,
        active: c.active,
        admitted_total: c.admitted_total,
        abandoned_total: c.abandoned_total,
        admissions_last_minute: c.admitted_last_minute,
        wait_seconds: WaitSeconds {
            count,
            mean: if count > 0 {
                w.sum_ms as f64 / count as f64 / 1000.0
            } else {
                0.0
            },
            buckets,
        },
    })
}

/// `GET /api/v1/rooms/{room}/status` (the device itself, by its token):
/// `waiting` with the place, or `admitted` with the token and target URL
/// (finishes the handoff after a page reload), or `unknown`. The
/// admission token only ever goes to the device it was issued to.
pub async fn status(
    node: &NodeRef,
    raw: &str,
    principal: Principal,
) -> Result<Response<Body>, ApiError> {
    let room_id = room_id(raw)?;
    let Principal::Device(me) = principal else {
        return Err(ApiError::new(ErrorCode::Internal, "not a device"));
    };
    let device = me.device;
    let now = now_ms();
    let queue = &node.rooms.queue;
    let Some(room) = queue.get_room(&room_id).await? else {
        return Err(ApiError::new(
            ErrorCode::NoSuchRoom,
            format!("no room {room_id}"),
        ));
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

/// The `error` of a verify answer whose token is sound but whose session
/// is over (released, revoked, or expired and swept).
pub const SESSION_ENDED: &str = "session_ended";

/// `POST /api/v1/admissions/verify`: `{"valid": true, "claims": …}` or
/// `{"valid": false, "error": "<reason>"}`, for sites that cannot verify a
/// JWT themselves. Unlike a site verifying the signature alone, it also
/// asks the queue store: a released or revoked session answers
/// `session_ended` although its token has not expired.
pub async fn verify(node: &NodeRef, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let body: VerifyRequest = read_json(req, node.config.max_message_bytes).await?;
    let now = now_ms();
    let refused = |code: &str, message: String| {
        node.metrics
            .tokens_rejected
            .with_label_values(&[code])
            .inc();
        VerifyResponse::refused(code, message)
    };
    let answer = match node
        .keys
        .verify(&body.token, body.room.as_deref(), now / 1000)
    {
        Ok(claims) => {
            if session_live(node, &claims.aud, &claims.sub, &claims.jti, now).await? {
                VerifyResponse::valid(claims)
            } else {
                refused(
                    SESSION_ENDED,
                    "the session this token admitted has ended (released, revoked or expired)"
                        .into(),
                )
            }
        }
        Err(e) => refused(e.code(), e.to_string()),
    };
    Ok(json_response(StatusCode::OK, &answer))
}

/// Whether `device` still holds session `session` in `room`.
async fn session_live(
    node: &NodeRef,
    room: &str,
    device: &str,
    session: &str,
    now: u64,
) -> Result<bool, ApiError> {
    let (Ok(room), Ok(device)) = (RoomId::parse(room), DeviceId::parse(device)) else {
        return Ok(false);
    };
    Ok(matches!(
        node.rooms.queue.status(&room, &device, now).await?,
        DeviceStatus::Admitted(adm) if adm.session_id == session
    ))
}

/// The media type of the audit-log exports (JSON Lines).
pub const JSONL: &str = "application/jsonl; charset=utf-8";

/// A `200` with a JSON Lines body.
pub fn jsonl_response(body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSONL));
    resp
}

/// `GET /api/v1/rooms/{room}/log`: the room's sealed audit log, anonymised
/// (session ids hashed), for anyone to verify; rendered once per
/// checkpoint.
pub async fn public_log(node: &NodeRef, raw: &str) -> Result<Response<Body>, ApiError> {
    let room = room_id(raw)?;
    let queue = node.rooms.queue.as_ref();
    if queue.get_room(&room).await?.is_none() {
        return Err(ApiError::new(
            ErrorCode::NoSuchRoom,
            format!("no room {raw}"),
        ));
    }
    let (body, cached) = node.audit_logs.get(queue, &room, now_ms()).await?;
    let kind = if cached { "public_cached" } else { "public" };
    node.metrics.audit_exports.with_label_values(&[kind]).inc();
    Ok(jsonl_response(body))
}

/// `POST /api/v1/sessions/release` and `/renew`: ends or extends the
/// session the body's admission token names. The caller is the device
/// itself (its device token), an admin of the room's tenant or the service
/// key (the target site's backend): holding an admission token alone does
/// not let anyone end somebody else's session.
pub async fn session(
    node: &NodeRef,
    req: Request<Incoming>,
    principal: Principal,
    renew: bool,
) -> Result<Response<Body>, ApiError> {
    // Through a gateway's protected route the admission comes from the
    // site's cookie in a header (`x-pace-admission`); it names the session
    // exactly as the body would, and the credential rule is unchanged.
    let from_header = req
        .headers()
        .get(pace_gateway::RENEW_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    let via_gateway = from_header.is_some();
    let token = match from_header {
        Some(token) => token,
        None => {
            read_json::<SessionRequest>(req, node.config.max_message_bytes)
                .await?
                .token
        }
    };
    let now = now_ms();
    let claims = node.keys.verify(&token, None, now / 1000).map_err(|e| {
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
    if !crate::auth::may_act_on_session(node, &principal, &room, &claims.sub).await? {
        // Somebody else's session answers as if there were none.
        node.metrics
            .auth_refused
            .with_label_values(&["session_holder", "not_found"])
            .inc();
        return Err(ApiError::new(ErrorCode::NotFound, "no such session"));
    }
    let queue = &node.rooms.queue;
    if renew {
        let expires = queue.renew(&room, &claims.jti, now).await?;
        let Some(ms) = expires else {
            return Err(ApiError::new(ErrorCode::NotFound, "the session has ended"));
        };
        let expires_at = ms.div_ceil(1000);
        let renewed = crate::admission::AdmissionClaims {
            iat: now / 1000,
            exp: expires_at,
            ..claims
        };
        let token = node.keys.sign(&renewed).map_err(|e| {
            node.metrics.token_sign_errors.inc();
            tracing::error!(error = %e, "cannot sign a renewed admission");
            ApiError::new(ErrorCode::Internal, "the node failed; retry")
        })?;
        let mut resp = json_response(
            StatusCode::OK,
            &RenewResponse {
                renewed: true,
                expires_at,
                token: token.clone(),
            },
        );
        // The gateway puts this back into the site's cookie (and removes
        // the header before the browser sees it).
        if via_gateway && let Ok(value) = HeaderValue::from_str(&token) {
            resp.headers_mut().insert(pace_gateway::RENEW_HEADER, value);
        }
        Ok(resp)
    } else {
        let released = queue.release(&room, &claims.jti, now).await?;
        Ok(json_response(StatusCode::OK, &ReleaseResponse { released }))
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
