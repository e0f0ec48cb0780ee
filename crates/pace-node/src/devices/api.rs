//! `POST /api/v1/devices/register`: new devices and token refreshes.
//!
//! The credential check (a refresh's token) is [`crate::auth`]'s; this
//! handler decides what the registration may say. A self-registration may
//! name a tenant (its admins then see the device) and an untenanted
//! department, never a tenant's department: those are granted by the
//! tenant's admins (`PUT /api/v1/admin/devices/{device}/departments`).

use std::net::IpAddr;

use http::{Request, StatusCode, header};
use hyper::body::Incoming;
use pace_protocol::ErrorCode;

use super::token::{self, DeviceTokenError};
use super::{DeviceInfo, DeviceRecord, Registered};
use crate::admission::unix_now;
use crate::api::read_json;
use crate::auth::{DeviceCredential, Principal};
use crate::error::{ApiError, Body, json_response};
use crate::node::NodeRef;
use crate::store::now_ms;

/// Largest registration body.
const MAX_REGISTER_BODY: usize = 8 * 1024;

/// `POST /api/v1/devices/register`.
pub async fn register(
    node: &NodeRef,
    req: Request<Incoming>,
    principal: Principal,
    address: IpAddr,
) -> Result<http::Response<Body>, ApiError> {
    let count = |result: &str| {
        node.metrics
            .device_registrations
            .with_label_values(&[result])
            .inc()
    };
    let info: DeviceInfo = match read_json(req, MAX_REGISTER_BODY).await {
        Ok(i) => i,
        Err(e) => {
            count("invalid");
            return Err(e);
        }
    };
    if let Err(e) = super::validate(&info) {
        count("invalid");
        return Err(ApiError::new(ErrorCode::BadRequest, e));
    }
    if let Some(d) = &info.department
        && (crate::auth::grants::group_tenant(d).is_some()
            || d.as_str()
                .starts_with(pace_protocol::ids::ROOM_GROUP_PREFIX))
    {
        count("invalid");
        return Err(ApiError::new(
            ErrorCode::NotAllowed,
            format!(
                "a device cannot give itself the group {d}: a tenant's departments are granted by \
                 its admins (PUT /api/v1/admin/devices/{{device}}/departments)"
            ),
        ));
    }
    if let Some(tenant) = &info.tenant {
        let known = match crate::accounts::TenantId::parse(tenant) {
            Ok(id) => node.accounts.tenant(&id).await?,
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
    // A refresh: the device proved it holds its (possibly expired) token.
    let current = match &principal {
        Principal::Device(d) => {
            if d.device != info.device_id {
                count("invalid");
                return Err(ApiError::new(
                    ErrorCode::DeviceTokenMismatch,
                    DeviceTokenError::Mismatch.to_string(),
                ));
            }
            match &d.credential {
                DeviceCredential::Token { id, .. } => Some(id.clone()),
                _ => None,
            }
        }
        _ => None,
    };
    // After a store wipe the registry forgot every device, but tokens
    // issued before it still verify: until they have all expired (or an
    // admin acknowledges the wipe), an id is registered only by a device
    // presenting its token, so nobody takes a victim's id meanwhile.
    if current.is_none()
        && let Some(wiped_ms) = node.store.wiped_since().await?
        && now_ms() < wiped_ms.saturating_add(node.config.device_token_ttl.as_millis() as u64)
    {
        count("store_wiped");
        return Err(ApiError::new(
            ErrorCode::DeviceExists,
            "the store was wiped and this id may belong to a device whose token predates it: \
             register with that token (Authorization: Bearer), or retry once an admin has \
             acknowledged the wipe",
        ));
    }
    // A token issued after a kick must not fall in the kicked second.
    let cutoff = node
        .devices
        .credential(&info.device_id, None)
        .await?
        .revoked_before;
    let now = match cutoff {
        Some(c) => unix_now().max(c + 1),
        None => unix_now(),
    };
    let (token, claims) = token::issue(&node.keys, &info, now, node.config.device_token_ttl)
        .map_err(|e| {
            tracing::error!(error = %e, "signing a device token failed");
            ApiError::new(ErrorCode::Internal, "could not issue a token; retry")
        })?;
    let at = now_ms();
    let record = DeviceRecord {
        // A new device's grant: the untenanted department it declared (a
        // refresh keeps what the registry holds).
        departments: info.department.iter().cloned().collect(),
        info,
        first_registered_ms: at,
        last_seen_ms: at,
        last_ip: Some(address.to_string()),
        token_id: claims.jti.clone(),
    };
    let outcome = node.devices.register(&record, current.as_deref()).await?;
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
        &pace_protocol::rest::RegisterResponse {
            device_id: record.info.device_id,
            token,
            expires_at: claims.exp,
        },
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}
