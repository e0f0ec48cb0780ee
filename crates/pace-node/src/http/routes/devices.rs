//! Device routes: `POST /api/v1/devices/register` (new devices and token
//! refreshes) and `GET /ws`, the device WebSocket upgrade, which hands the
//! upgraded socket to the connection task ([`crate::ws::session::serve`]).
//!
//! Registration: the credential check (a refresh's token) is
//! [`crate::auth`]'s; this handler decides what the registration may say.
//! A self-registration may name a tenant (its admins then see the device)
//! and an untenanted department, never a tenant's department: those are
//! granted by the tenant's admins
//! (`PUT /api/v1/admin/devices/{device}/departments`).

use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};
use pace_protocol::ErrorCode;

use crate::admission::unix_now;
use crate::auth::{self, DeviceCredential, Principal};
use crate::devices::token::{self, DeviceTokenError};
use crate::devices::{DeviceInfo, DeviceRecord, Registered};
use crate::error::{ApiError, json_response};
use crate::http::body::{Json, Limit};
use crate::http::extract::{Caller, ClientAddr, DeviceCaller};
use crate::node::{Node, NodeRef};
use crate::store::now_ms;

/// Largest registration body.
const MAX_REGISTER_BODY: usize = 8 * 1024;

/// The limit of a registration body.
#[derive(Debug)]
pub struct RegisterLimit;

impl Limit for RegisterLimit {
    fn max(_: &Node) -> usize {
        MAX_REGISTER_BODY
    }
}

/// `POST /api/v1/devices/register`, counted in
/// `pace_device_registrations_total{result}`.
pub async fn register(
    State(node): State<NodeRef>,
    Caller(principal): Caller,
    ClientAddr(address): ClientAddr,
    body: Result<Json<DeviceInfo, RegisterLimit>, ApiError>,
) -> Result<Response, ApiError> {
    let count = |result: &str| {
        node.metrics
            .device_registrations
            .with_label_values(&[result])
            .inc()
    };
    let info = match body {
        Ok(Json(i, _)) => i,
        Err(e) => {
            count("invalid");
            return Err(e);
        }
    };
    if let Err(e) = crate::devices::validate(&info) {
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
        && now_ms()
            < wiped_ms.saturating_add(node.config.devices.device_token_ttl.as_millis() as u64)
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
    let (token, claims) =
        token::issue(&node.keys, &info, now, node.config.devices.device_token_ttl).map_err(
            |e| {
                tracing::error!(error = %e, "signing a device token failed");
                ApiError::new(ErrorCode::Internal, "could not issue a token; retry")
            },
        )?;
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
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Counts and logs a refused handshake.
pub(crate) fn refused_handshake(node: &NodeRef, peer: SocketAddr, e: ApiError) -> ApiError {
    node.metrics
        .handshakes_refused
        .with_label_values(&[e.code.as_str()])
        .inc();
    tracing::debug!(%peer, code = e.code.as_str(), "handshake refused");
    e
}

/// What a handshake is refused for before its credential is looked at:
/// draining, starting, too many handshakes from the address, not an
/// upgrade (when `upgrade`: `/ws`; an HTTP stream, `/stream`, is none). Behind a trusted gateway, the handshake then counts in its
/// forwarded address's connections not yet upgraded while it runs (the
/// hold returned; direct connections are counted from accept on, in the
/// accept loop).
pub(crate) fn before_handshake<B>(
    node: &NodeRef,
    req: &http::Request<B>,
    peer: SocketAddr,
    upgrade: bool,
) -> Result<Option<crate::pending::Hold>, ApiError> {
    let refuse = |e: ApiError| refused_handshake(node, peer, e);
    if node.is_draining() {
        return Err(refuse(ApiError::new(
            ErrorCode::Draining,
            "node is draining; reconnect",
        )));
    }
    if !node.is_ready() {
        // Before the store answers, a device could not rejoin its place
        // nor resume its history here.
        return Err(refuse(ApiError::new(
            ErrorCode::Starting,
            "node is starting; retry shortly",
        )));
    }
    let address = auth::client_address(&node.auth, req.headers(), peer);
    if !node.handshakes.allow(&address, std::time::Instant::now()) {
        return Err(refuse(ApiError::new(
            ErrorCode::TooManyHandshakes,
            "too many connections from this address right now; retry with backoff",
        )));
    }
    if upgrade {
        crate::ws::handshake::upgrade_accept(req).map_err(refuse)?;
    }
    let trusted = node
        .config
        .origins
        .trusted_proxies
        .iter()
        .any(|n| n.contains(&peer.ip()));
    if !trusted {
        return Ok(None);
    }
    match node.sockets.hold(address) {
        Ok(hold) => Ok(Some(hold)),
        Err(refused) => {
            node.metrics
                .limits_hit
                .with_label_values(&[refused.limit()])
                .inc();
            Err(refuse(ApiError::new(
                ErrorCode::TooManyPending,
                "too many handshakes from this address are in flight; retry with backoff",
            )))
        }
    }
}

/// `GET /ws`: checks the rest of the handshake (departments against the
/// device's grants, origin, a free slot), answers 101 and hands the
/// upgraded socket to a connection task.
pub async fn upgrade(
    State(node): State<NodeRef>,
    DeviceCaller(device): DeviceCaller,
    req: Request,
) -> Result<Response, ApiError> {
    // A handshake has no body; the head alone is kept (the body is not
    // `Sync`, and the head is borrowed across awaits).
    let (parts, _) = req.into_parts();
    let mut req = http::Request::from_parts(parts, ());
    let peer = crate::http::extract::peer(req.extensions())?;
    let refuse = |e: ApiError| refused_handshake(&node, peer, e);
    let hs = crate::ws::handshake::check(&req, node.config.limits.max_groups).map_err(refuse)?;
    let hs = crate::ws::handshake::grant(&node.ws, hs, &device).await;
    crate::origins::check_handshake(&node.origins, &req, &device)
        .await
        .map_err(refuse)?;
    let Some(slot) = node.take_slot() else {
        return Err(refuse(ApiError::new(
            ErrorCode::NodeFull,
            "node is at its connection limit",
        )));
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let task_node = node.clone();
    let accept = HeaderValue::from_str(&hs.accept)
        .map_err(|_| ApiError::new(ErrorCode::Internal, "bad accept key"))?;
    let accepted = Box::new(crate::ws::session::Accepted { hs, device });
    node.connections.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                crate::ws::session::serve(task_node.ws.clone(), upgraded, accepted, slot).await
            }
            Err(e) => tracing::debug!(%peer, error = %e, "upgrade failed"),
        }
    });
    let mut resp = Response::new(axum::body::Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    Ok(resp)
}
