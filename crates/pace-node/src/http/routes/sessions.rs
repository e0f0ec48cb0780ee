//! Admission routes: `POST /api/v1/admissions/verify` (public) and
//! `POST /api/v1/sessions/release|renew` (the session's device, an admin
//! of the room's tenant, or the service key).

use axum::extract::State;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, StatusCode};
use pace_protocol::rest::{
    ReleaseResponse, RenewResponse, SessionRequest, VerifyRequest, VerifyResponse,
};
use pace_protocol::{DeviceId, ErrorCode, RoomId};

use crate::error::{ApiError, json_response};
use crate::http::body::{Json, read_json};
use crate::http::extract::Caller;
use crate::node::NodeRef;
use crate::queue::DeviceStatus;
use crate::store::now_ms;

use super::rooms::room_id;

/// The `error` of a verify answer whose token is sound but whose session
/// is over (released, revoked, or expired and swept).
pub const SESSION_ENDED: &str = "session_ended";

/// `POST /api/v1/admissions/verify`: `{"valid": true, "claims": …}` or
/// `{"valid": false, "error": "<reason>"}`, for sites that cannot verify a
/// JWT themselves. Unlike a site verifying the signature alone, it also
/// asks the queue store: a released or revoked session answers
/// `session_ended` although its token has not expired.
pub async fn verify(
    State(node): State<NodeRef>,
    Json(body, _): Json<VerifyRequest>,
) -> Result<Response, ApiError> {
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
            if session_live(&node, &claims.aud, &claims.sub, &claims.jti, now).await? {
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

/// `POST /api/v1/sessions/release`.
pub async fn release(
    State(node): State<NodeRef>,
    caller: Caller,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    session(&node, caller, &headers, body, false).await
}

/// `POST /api/v1/sessions/renew`.
pub async fn renew(
    State(node): State<NodeRef>,
    caller: Caller,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    session(&node, caller, &headers, body, true).await
}

/// Ends or extends the session the admission token names (from the body,
/// or through a gateway's protected route from `x-pace-admission`). The
/// caller is the device itself (its device token), an admin of the room's
/// tenant or the service key (the target site's backend): holding an
/// admission token alone does not let anyone end somebody else's session.
async fn session(
    node: &NodeRef,
    Caller(principal): Caller,
    headers: &HeaderMap,
    body: axum::body::Body,
    renew: bool,
) -> Result<Response, ApiError> {
    // Through a gateway's protected route the admission comes from the
    // site's cookie in a header (`x-pace-admission`); it names the session
    // exactly as the body would, and the credential rule is unchanged.
    let from_header = headers
        .get(pace_gateway::RENEW_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    let via_gateway = from_header.is_some();
    let token = match from_header {
        Some(token) => token,
        None => {
            read_json::<SessionRequest>(headers, body, node.config.limits.max_message_bytes)
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
    if !crate::auth::may_act_on_session(&node.auth, &principal, &room, &claims.sub).await? {
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
