//! The admin API: a tenant's admins manage their own rooms, read their
//! stats, the tenant's device registry and the cluster, with the token
//! from `POST /api/v1/admin/login` (`Authorization: Bearer`); and the
//! admin console's live feed (`GET /admin/ws`).
//!
//! Every room route answers 404 for a room the admin's tenant does not
//! own — another tenant's, or one made with the service key — exactly as
//! for a room that does not exist, so an admin cannot even learn which
//! room ids other tenants use. A new room belongs to the tenant that
//! creates it, for good (`QueueStore::claim_room`).
//!
//! | route | does |
//! |---|---|
//! | `POST /api/v1/admin/login` | an admin token for a tenant's user and password |
//! | `GET /api/v1/admin/rooms` | the tenant's rooms |
//! | `PUT /api/v1/admin/rooms/{room}` | create (claim) or change a room, every field live |
//! | `GET /api/v1/admin/rooms/{room}` | one room |
//! | `GET /api/v1/admin/rooms/{room}/stats` | its stats |
//! | `GET /api/v1/admin/rooms/{room}/log` | its audit log, JSON Lines (every kept entry, raw session ids) |
//! | `GET /api/v1/admin/devices?q=&limit=` | the tenant's device registry |
//! | `GET /api/v1/admin/cluster` | the nodes and their connection counts |
//! | `POST /api/v1/admin/ws-ticket` | a single-use ticket for `/admin/ws` |
//!
//! And, for an admin of the device's (or room's) tenant or the service key:
//!
//! | route | does |
//! |---|---|
//! | `PUT /api/v1/admin/devices/{device}/departments` | sets the groups the device's credential grants; a connected device leaves the lost ones within a second |
//! | `POST /api/v1/admin/devices/{device}/kick` | revokes every token the device holds and closes its connection (4004) |
//! | `DELETE /api/v1/admin/devices/{device}` | forgets the registration, so the id can register anew |
//! | `POST /api/v1/admin/rooms/{room}/sessions/revoke` | ends a device's admitted session: its slot frees, its token stops verifying |
//!
//! Who may call which route is [`crate::routes::ROUTES`]' and
//! [`crate::auth`]'s; the handlers here check what belongs to whom.
//! Notifications: `POST /api/v1/notify` also takes an admin token (see
//! [`crate::auth::notify_scope_allowed`]).

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, Uri, header};
use pace_protocol::{DeviceAction, DeviceId, ErrorCode, GroupId, RoomId, rest};
use serde_json::Value;

use crate::accounts::login::{LOGIN_WINDOW, MAX_FAILED_LOGINS, sign_admin_token};
use crate::accounts::password::{Password, verify_password_async};
use crate::accounts::{AdminClaims, TenantId, UserName, unix_now};
use crate::auth::{Principal, owns_room as owns};
use crate::devices::DeviceRecord;
use crate::error::{ApiError, json_response};
use crate::http::body::{Json, Limit};
use crate::http::extract::{AdminCaller, Caller};
use crate::node::{Node, NodeRef};
use crate::queue::{DeviceStatus, Room, RoomConfig};
use crate::rooms_api::stats_body;
use crate::routes::Params;
use crate::store::now_ms;

/// Most registry entries one listing returns.
const MAX_LIST: usize = 500;

fn not_found(raw: &str) -> ApiError {
    ApiError::new(ErrorCode::NoSuchRoom, format!("no room {raw}"))
}

/// The room `raw`, if the admin's tenant owns it; 404 otherwise.
async fn owned(node: &NodeRef, claims: &AdminClaims, raw: &str) -> Result<Room, ApiError> {
    let room = RoomId::parse(raw).map_err(|_| not_found(raw))?;
    if !owns(&node.auth, claims, &room).await? {
        return Err(not_found(raw));
    }
    node.rooms
        .queue
        .get_room(&room)
        .await?
        .ok_or_else(|| not_found(raw))
}

/// `GET /api/v1/admin/rooms/{room}/log`: the room's whole kept audit log
/// (sealed or not) with raw session ids, as JSON Lines.
pub async fn room_log(
    State(node): State<NodeRef>,
    AdminCaller(claims): AdminCaller,
    params: Params,
) -> Result<Response, ApiError> {
    let room = owned(&node, &claims, &params.room).await?;
    let text = crate::audit::export(node.rooms.queue.as_ref(), &room.id, false, now_ms()).await?;
    node.metrics
        .audit_exports
        .with_label_values(&["admin"])
        .inc();
    Ok(super::rooms::jsonl_response(bytes::Bytes::from(text)))
}

/// `POST /api/v1/admin/ws-ticket`: a ticket that opens `/admin/ws` once,
/// within 30 s.
pub async fn ws_ticket(
    State(node): State<NodeRef>,
    AdminCaller(claims): AdminCaller,
) -> Result<Response, ApiError> {
    let (ticket, t) =
        crate::auth::tickets::issue(&node.keys, &claims, crate::admission::unix_now()).map_err(
            |e| {
                tracing::error!(error = %e, "signing a feed ticket failed");
                ApiError::new(ErrorCode::Internal, "could not issue a ticket; retry")
            },
        )?;
    node.metrics
        .admin_tickets
        .with_label_values(&["issued"])
        .inc();
    let mut resp = json_response(
        StatusCode::OK,
        &rest::TicketResponse {
            ticket,
            expires_at: t.exp,
        },
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

fn no_device(raw: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no device {raw}"))
}

/// The registered device `raw`, if `principal` may manage it; 404 (as for
/// an unknown device) otherwise.
async fn managed(
    node: &NodeRef,
    principal: &Principal,
    raw: &str,
) -> Result<DeviceRecord, ApiError> {
    let device = DeviceId::parse(raw).map_err(|_| no_device(raw))?;
    let record = node
        .devices
        .get(&device)
        .await?
        .ok_or_else(|| no_device(raw))?;
    if crate::auth::may_manage_device(principal, &record) {
        Ok(record)
    } else {
        Err(no_device(raw))
    }
}

/// `PUT /api/v1/admin/devices/{device}/departments`: the groups the
/// device's credential grants, replaced. An admin names departments of
/// its tenant (`finance` or `acme:finance`); the service key names any
/// group of the device's tenant, or untenanted ones.
pub async fn departments(
    State(node): State<NodeRef>,
    Caller(principal): Caller,
    params: Params,
    body: Result<Json<rest::DepartmentsRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let raw = params.device.as_str();
    let record = managed(&node, &principal, raw).await?;
    let Json(body, _) = body?;
    if body.departments.len() > node.config.limits.max_groups {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "at most {} departments per device",
                node.config.limits.max_groups
            ),
        ));
    }
    let tenant = record.info.tenant.as_deref();
    let mut groups: Vec<GroupId> = Vec::new();
    for name in &body.departments {
        let full = match (&principal, tenant) {
            (Principal::Admin(_), Some(t)) if !name.contains(':') => format!("{t}:{name}"),
            _ => name.clone(),
        };
        let group = GroupId::parse(&full)
            .map_err(|e| ApiError::new(ErrorCode::InvalidGroup, format!("department {e}")))?;
        let fits = match crate::auth::grants::group_tenant(&group) {
            Some(t) => tenant == Some(t),
            None => !group
                .as_str()
                .starts_with(pace_protocol::ids::ROOM_GROUP_PREFIX),
        };
        if !fits {
            return Err(ApiError::new(
                ErrorCode::InvalidGroup,
                format!("{group} is not a department of this device's tenant"),
            ));
        }
        if !groups.contains(&group) {
            groups.push(group);
        }
    }
    let device = record.info.device_id.clone();
    if !node.devices.set_departments(&device, &groups).await? {
        return Err(no_device(raw));
    }
    node.metrics
        .revocations
        .with_label_values(&["departments"])
        .inc();
    tell_node(
        &node,
        &device,
        DeviceAction::Groups {
            groups: groups.clone(),
        },
    )
    .await;
    tracing::info!(%device, ?groups, "device departments changed");
    Ok(json_response(
        StatusCode::OK,
        &rest::DepartmentsResponse {
            device_id: device,
            departments: groups,
        },
    ))
}

/// Tells the node holding `device` (if any) to apply `action` now. The
/// store holds the change already; a lost message only delays it to the
/// device's next connection, so a failure is logged, not returned.
async fn tell_node(node: &NodeRef, device: &DeviceId, action: DeviceAction) {
    if let Err(e) = node.store.device_action(device, action).await {
        tracing::warn!(%device, error = %e, "device action not sent to the cluster");
    }
}

/// `POST /api/v1/admin/devices/{device}/kick`: every token the device
/// holds stops working (the deny-list covers tokens issued up to now) and
/// its connection, wherever it is, closes with 4004. The service key may
/// kick a device that is not registered (an external issuer's, or an
/// anonymous one).
pub async fn kick(
    State(node): State<NodeRef>,
    Caller(principal): Caller,
    params: Params,
) -> Result<Response, ApiError> {
    let raw = params.device.as_str();
    let device = match managed(&node, &principal, raw).await {
        Ok(record) => record.info.device_id,
        Err(e) if matches!(principal, Principal::Service) && e.code == ErrorCode::NotFound => {
            DeviceId::parse(raw).map_err(|_| no_device(raw))?
        }
        Err(e) => return Err(e),
    };
    let cutoff = crate::admission::unix_now();
    // The longest any of its tokens lives, plus the clock leeway.
    let ttl = node.config.devices.device_token_ttl + std::time::Duration::from_secs(60);
    node.devices.revoke_before(&device, cutoff, ttl).await?;
    tell_node(
        &node,
        &device,
        DeviceAction::Close {
            code: pace_protocol::CloseCode::REVOKED.0,
        },
    )
    .await;
    node.metrics.revocations.with_label_values(&["kick"]).inc();
    tracing::info!(%device, "device kicked: tokens revoked, connection closed");
    Ok(json_response(
        StatusCode::OK,
        &rest::KickResponse {
            device_id: device,
            kicked: true,
            revoked_before: cutoff,
        },
    ))
}

/// Revokes every token `device` holds now (the deny-list covers tokens
/// issued up to this second, for as long as our tokens live, plus the
/// clock leeway); returns the cutoff.
async fn revoke_tokens(node: &NodeRef, device: &DeviceId) -> Result<u64, ApiError> {
    let cutoff = crate::admission::unix_now();
    let ttl = node.config.devices.device_token_ttl + std::time::Duration::from_secs(60);
    node.devices.revoke_before(device, cutoff, ttl).await?;
    Ok(cutoff)
}

/// `DELETE /api/v1/admin/devices/{device}`: forgets the registration, so
/// the id can register anew. Its tokens are revoked first: whoever
/// registers the id next is the only one holding a valid token for it.
pub async fn forget(
    State(node): State<NodeRef>,
    Caller(principal): Caller,
    params: Params,
) -> Result<Response, ApiError> {
    let raw = params.device.as_str();
    let record = managed(&node, &principal, raw).await?;
    let device = record.info.device_id;
    revoke_tokens(&node, &device).await?;
    let forgotten = node.devices.forget(&device).await?;
    tracing::info!(%device, "device registration forgotten");
    Ok(json_response(
        StatusCode::OK,
        &rest::ForgetResponse {
            device_id: device,
            forgotten,
        },
    ))
}

/// `POST /api/v1/admin/rooms/{room}/sessions/revoke` `{"device_id"}`: ends
/// the device's admitted session in the room (the origin's "revoke"): its
/// slot goes to the next device at the next tick and its admission token
/// stops verifying at `POST /api/v1/admissions/verify`.
pub async fn revoke_session(
    State(node): State<NodeRef>,
    Caller(principal): Caller,
    params: Params,
    body: Result<Json<rest::RevokeSessionRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let raw = params.room.as_str();
    let room = RoomId::parse(raw).map_err(|_| not_found(raw))?;
    let visible = match &principal {
        Principal::Service => node.rooms.queue.get_room(&room).await?.is_some(),
        Principal::Admin(claims) => owns(&node.auth, claims, &room).await?,
        _ => false,
    };
    if !visible {
        return Err(not_found(raw));
    }
    let Json(body, _) = body?;
    let queue = &node.rooms.queue;
    let DeviceStatus::Admitted(adm) = queue.status(&room, &body.device_id, now_ms()).await? else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("{} holds no session in {room}", body.device_id),
        ));
    };
    let revoked = queue.release(&room, &adm.session_id, now_ms()).await?;
    node.metrics
        .revocations
        .with_label_values(&["session"])
        .inc();
    tracing::info!(%room, device = %body.device_id, session = %adm.session_id, "session revoked");
    Ok(json_response(
        StatusCode::OK,
        &rest::RevokeSessionResponse {
            room,
            device_id: body.device_id,
            session_id: adm.session_id,
            revoked,
        },
    ))
}

/// `GET /api/v1/admin/rooms`: the tenant's rooms.
pub async fn list_rooms(
    State(node): State<NodeRef>,
    AdminCaller(claims): AdminCaller,
) -> Result<Response, ApiError> {
    let q = &node.rooms.queue;
    let mut rooms = Vec::new();
    for id in q.rooms().await? {
        if q.room_owner(&id).await?.as_deref() == Some(claims.tenant.as_str())
            && let Some(room) = q.get_room(&id).await?
        {
            rooms.push(room);
        }
    }
    Ok(json_response(StatusCode::OK, &rest::Rooms { rooms }))
}

/// `PUT /api/v1/admin/rooms/{room}`: create (claim) or change a room of
/// the admin's tenant, every field live.
pub async fn put_room(
    State(node): State<NodeRef>,
    AdminCaller(claims): AdminCaller,
    params: Params,
    body: Result<Json<RoomConfig>, ApiError>,
) -> Result<Response, ApiError> {
    let raw = params.room.as_str();
    let room = RoomId::parse(raw)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("room id {e}")))?;
    let Json(config, _) = body?;
    config
        .validate()
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, e))?;
    let owner = node
        .rooms
        .queue
        .claim_room(&room, claims.tenant.as_str())
        .await?;
    if owner.as_deref() != Some(claims.tenant.as_str()) {
        return Err(not_found(raw));
    }
    let saved = node.rooms.queue.put_room(&room, &config).await?;
    tracing::info!(tenant = %claims.tenant, admin = %claims.sub, %room, "room changed by an admin");
    Ok(json_response(StatusCode::OK, &saved))
}

/// `GET /api/v1/admin/devices?q=&limit=`: the tenant's device registry.
pub async fn devices(
    State(node): State<NodeRef>,
    AdminCaller(claims): AdminCaller,
    uri: Uri,
) -> Result<Response, ApiError> {
    let mut query = String::new();
    let mut limit = 100;
    if let Some(q) = uri.query() {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            match k.as_ref() {
                "q" => query = v.chars().take(128).collect(),
                "limit" => limit = v.parse::<usize>().unwrap_or(limit).clamp(1, MAX_LIST),
                _ => {}
            }
        }
    }
    let records = node
        .devices
        .list(Some(claims.tenant.as_str()), &query, limit)
        .await?;
    let devices = records
        .into_iter()
        .map(|r| rest::DeviceEntry {
            info: r.info,
            first_registered_ms: r.first_registered_ms,
            last_seen_ms: r.last_seen_ms,
            last_ip: r.last_ip,
            departments: r.departments,
        })
        .collect();
    Ok(json_response(StatusCode::OK, &rest::Devices { devices }))
}

/// `GET /api/v1/admin/cluster`: the nodes and their connection counts.
pub async fn cluster(
    State(node): State<NodeRef>,
    AdminCaller(_): AdminCaller,
) -> Result<Response, ApiError> {
    let nodes = node.store.nodes().await?;
    let total: u64 = nodes.iter().map(|n| n.connections).sum();
    Ok(json_response(
        StatusCode::OK,
        &rest::Cluster {
            store: None,
            total_connections: total,
            nodes,
        },
    ))
}

/// `GET /api/v1/admin/rooms/{room}`: one room of the admin's tenant.
pub async fn get_room(
    State(node): State<NodeRef>,
    AdminCaller(claims): AdminCaller,
    params: Params,
) -> Result<Response, ApiError> {
    let room = owned(&node, &claims, &params.room).await?;
    Ok(json_response(StatusCode::OK, &room))
}

/// `GET /api/v1/admin/rooms/{room}/stats`.
pub async fn room_stats(
    State(node): State<NodeRef>,
    AdminCaller(claims): AdminCaller,
    params: Params,
) -> Result<Response, ApiError> {
    let room = owned(&node, &claims, &params.room).await?;
    let stats = stats_body(node.rooms.queue.as_ref(), &room.id).await?;
    Ok(json_response(StatusCode::OK, &stats))
}

/// `GET /admin/ws`: the upgrade to the admin console's live feed, for the
/// admin the authorization step found (a ticket or an admin token header).
pub async fn feed(
    State(node): State<NodeRef>,
    Caller(principal): Caller,
    req: Request,
) -> Result<Response, ApiError> {
    crate::ws::admin::upgrade(&node.ws, &node.connections, req, principal)
        .map(|r| r.map(axum::body::Body::new))
}

/// Largest login body read, bytes.
const MAX_LOGIN_BODY: usize = 8 * 1024;

/// The limit of a login body: [`MAX_LOGIN_BODY`], or less with a smaller
/// `--max-message-bytes`.
#[derive(Debug)]
pub struct LoginLimit;

impl Limit for LoginLimit {
    fn max(node: &Node) -> usize {
        MAX_LOGIN_BODY.min(node.config.limits.max_message_bytes)
    }
}

/// How one login ended, for `pace_admin_logins_total{result}`.
enum Outcome {
    Ok,
    Invalid,
    RateLimited,
    Error,
}

/// `POST /api/v1/admin/login` (see [`crate::accounts::login`] for the
/// token and the attempt limit).
pub async fn login(
    State(node): State<NodeRef>,
    body: Result<Json<Value, LoginLimit>, ApiError>,
) -> Result<Response, ApiError> {
    let (outcome, result) = match body {
        Ok(Json(body, _)) => attempt(&node, &body).await,
        Err(e) => (Outcome::Invalid, Err(e)),
    };
    let label = match outcome {
        Outcome::Ok => "ok",
        Outcome::Invalid => "invalid",
        Outcome::RateLimited => "rate_limited",
        Outcome::Error => "error",
    };
    node.metrics.admin_logins.with_label_values(&[label]).inc();
    result
}

fn invalid_credentials() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidCredentials,
        "wrong tenant, user or password",
    )
}

/// The three strings of the body. Type errors are answered without
/// serde's message, which could quote a value.
fn credentials(body: &Value) -> Option<(&str, &str, &str)> {
    let field = |name: &str| body.get(name).and_then(Value::as_str);
    Some((field("tenant")?, field("user")?, field("password")?))
}

async fn attempt(node: &NodeRef, body: &Value) -> (Outcome, Result<Response, ApiError>) {
    let Some((tenant, user, password)) = credentials(body) else {
        return (
            Outcome::Invalid,
            Err(ApiError::new(
                ErrorCode::BadRequest,
                r#"send {"tenant": "...", "user": "...", "password": "..."} (strings)"#,
            )),
        );
    };
    let password = Password::new(password);
    let (Ok(tenant), Ok(user)) = (TenantId::parse(tenant), UserName::parse(user)) else {
        // No such account can exist; nothing to count.
        tracing::info!("admin login refused: malformed tenant or user name");
        return (Outcome::Invalid, Err(invalid_credentials()));
    };

    let accounts = &node.accounts;
    let attempts = match accounts
        .count_login_attempt(&tenant, &user, LOGIN_WINDOW)
        .await
    {
        Ok(a) => a,
        Err(e) => return (Outcome::Error, Err(e.into())),
    };
    if attempts.count > MAX_FAILED_LOGINS {
        let secs = attempts.resets_in.as_secs_f64().ceil().max(1.0) as u64;
        tracing::warn!(%tenant, %user, retry_after_secs = secs, "admin login refused: too many attempts");
        let mut resp = ApiError::new(
            ErrorCode::TooManyAttempts,
            format!("too many failed logins for this account; retry in {secs} s"),
        )
        .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return (Outcome::RateLimited, Ok(resp));
    }

    let stored = match accounts.user(&tenant, &user).await {
        Ok(u) => u.map(|u| u.password_hash),
        Err(e) => return (Outcome::Error, Err(e.into())),
    };
    if !verify_password_async(password, stored).await {
        tracing::info!(%tenant, %user, attempts = attempts.count, "admin login refused: invalid credentials");
        return (Outcome::Invalid, Err(invalid_credentials()));
    }
    if let Err(e) = accounts.clear_login_attempts(&tenant, &user).await {
        tracing::warn!(error = %e, %tenant, %user, "could not clear login attempts");
    }
    let ttl = node.config.accounts.admin_token_ttl;
    let (token, claims) = match sign_admin_token(&node.keys, &tenant, &user, unix_now(), ttl) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "admin token could not be signed");
            return (
                Outcome::Error,
                Err(ApiError::new(
                    ErrorCode::Internal,
                    "could not issue a token",
                )),
            );
        }
    };
    tracing::info!(%tenant, %user, jti = %claims.jti, exp = claims.exp, "admin login");
    let mut resp = json_response(
        StatusCode::OK,
        &pace_protocol::rest::LoginResponse {
            token,
            expires_at: claims.exp,
        },
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    (Outcome::Ok, Ok(resp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn credentials_need_three_strings() {
        let ok = json!({"tenant": "a", "user": "b", "password": "c"});
        assert_eq!(credentials(&ok), Some(("a", "b", "c")));
        assert_eq!(credentials(&json!({"tenant": "a", "user": "b"})), None);
        assert_eq!(
            credentials(&json!({"tenant": "a", "user": "b", "password": 5})),
            None
        );
        assert_eq!(credentials(&json!(["a"])), None);
    }
}
