//! `POST /api/v1/devices/register` and the handshake's token check.

use std::net::IpAddr;

use http::{HeaderMap, Request, StatusCode, header};
use hyper::body::Incoming;
use pace_protocol::{DeviceId, ErrorCode};
use serde_json::json;

use super::token::{self, DeviceClaims, DeviceTokenError};
use super::{DeviceInfo, DeviceRecord, Registered};
use crate::admission::unix_now;
use crate::api::read_json;
use crate::error::{ApiError, Body, json_response};
use crate::node::NodeRef;
use crate::store::now_ms;

/// Largest registration body.
const MAX_REGISTER_BODY: usize = 8 * 1024;

/// The query parameter carrying the device token when a proxy strips the
/// `Authorization` header.
pub const TOKEN_QUERY: &str = "token";

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The device token of a handshake: `Authorization: Bearer`, else the
/// `token` query parameter.
pub fn handshake_token<B>(req: &Request<B>) -> Option<String> {
    if let Some(t) = bearer(req.headers()) {
        return Some(t.to_owned());
    }
    let query = req.uri().query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, v)| k == TOKEN_QUERY && !v.is_empty())
        .map(|(_, v)| v.into_owned())
}

/// Who a handshake proved to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A token of ours, with its claims.
    Registered(DeviceClaims),
    /// A token of the configured external issuer.
    External,
    /// No token, accepted only with `--insecure-anonymous-devices`.
    Anonymous,
}

/// Checks the handshake's device token against the device id it names.
pub fn authenticate<B>(
    node: &NodeRef,
    req: &Request<B>,
    device: &DeviceId,
) -> Result<Identity, ApiError> {
    let refused = |e: DeviceTokenError| ApiError::new(e.code(), e.to_string());
    let Some(t) = handshake_token(req) else {
        if node.config.insecure_anonymous_devices {
            return Ok(Identity::Anonymous);
        }
        return Err(refused(DeviceTokenError::Missing));
    };
    match token::authenticate(
        &node.keys,
        node.external_issuer.as_deref(),
        &t,
        device,
        unix_now(),
    ) {
        Ok(Some(claims)) => Ok(Identity::Registered(claims)),
        Ok(None) => Ok(Identity::External),
        Err(e) => Err(refused(e)),
    }
}

/// Records, in the background, that a device connected from `ip`.
pub fn note_seen(node: &NodeRef, device: &DeviceId, ip: IpAddr) {
    let registry = node.devices.clone();
    let device = device.clone();
    tokio::spawn(async move {
        if let Err(e) = registry.seen(&device, &ip.to_string(), now_ms()).await {
            tracing::debug!(%device, error = %e, "device registry not updated");
        }
    });
}

/// `POST /api/v1/devices/register`.
pub async fn register(
    node: &NodeRef,
    req: Request<Incoming>,
    address: IpAddr,
) -> Result<http::Response<Body>, ApiError> {
    let count = |result: &str| {
        node.metrics
            .device_registrations
            .with_label_values(&[result])
            .inc()
    };
    let presented = bearer(req.headers()).map(str::to_owned);
    let info: DeviceInfo = match read_json(req, MAX_REGISTER_BODY).await {
        Ok(i) => i,
        Err(e) => {
            count("invalid");
            return Err(e);
        }
    };
    if let Err(e) = info.validate() {
        count("invalid");
        return Err(ApiError::new(ErrorCode::BadRequest, e));
    }
    if let Some(tenant) = &info.tenant {
        let known = match crate::accounts::TenantId::parse(tenant) {
            Ok(id) => node.accounts.tenant(&id).await.map_err(|e| {
                tracing::warn!(error = %e, "account store unavailable for a registration");
                ApiError::new(
                    ErrorCode::StoreUnavailable,
                    "the store is unavailable; retry",
                )
            })?,
            Err(_) => None,
        };
        if known.is_none() {
            count("invalid");
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("no tenant {tenant:?}"),
            ));
        }
    }
    let now = unix_now();
    // A refresh: the device proves it holds its (possibly expired) token.
    let current = match &presented {
        None => None,
        Some(t) => {
            let claims = token::verify_own(&node.keys, t, now, true).map_err(|e| {
                count("invalid");
                ApiError::new(e.code(), e.to_string())
            })?;
            if claims.sub != info.device_id.as_str() {
                count("invalid");
                return Err(ApiError::new(
                    ErrorCode::DeviceTokenMismatch,
                    DeviceTokenError::Mismatch.to_string(),
                ));
            }
            Some(claims.jti)
        }
    };
    let (token, claims) = token::issue(&node.keys, &info, now, node.config.device_token_ttl)
        .map_err(|e| {
            tracing::error!(error = %e, "signing a device token failed");
            ApiError::new(ErrorCode::Internal, "could not issue a token; retry")
        })?;
    let at = now_ms();
    let record = DeviceRecord {
        info,
        first_registered_ms: at,
        last_seen_ms: at,
        last_ip: Some(address.to_string()),
        token_id: claims.jti.clone(),
    };
    let outcome = node
        .devices
        .register(&record, current.as_deref())
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "device registry unavailable");
            ApiError::new(
                ErrorCode::StoreUnavailable,
                "the store is unavailable; retry",
            )
        })?;
    let status = match outcome {
        Registered::Created => StatusCode::CREATED,
        Registered::Refreshed => StatusCode::OK,
        Registered::Taken => {
            count("taken");
            return Err(ApiError::new(
                ErrorCode::DeviceExists,
                "this device id is registered; refresh with its current token \
                 (Authorization: Bearer) or pick another id",
            ));
        }
    };
    count(if status == StatusCode::CREATED {
        "created"
    } else {
        "refreshed"
    });
    let mut resp = json_response(
        status,
        &json!({
            "device_id": record.info.device_id,
            "token": token,
            "expires_at": claims.exp,
        }),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}
