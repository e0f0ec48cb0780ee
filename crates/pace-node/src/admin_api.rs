//! The admin API: a tenant's admins manage their own rooms, read their
//! stats, the tenant's device registry and the cluster, with the token
//! from `POST /api/v1/admin/login` (`Authorization: Bearer`).
//!
//! Every room route answers 404 for a room the admin's tenant does not
//! own — another tenant's, or one made with the service key — exactly as
//! for a room that does not exist, so an admin cannot even learn which
//! room ids other tenants use. A new room belongs to the tenant that
//! creates it, for good (`QueueStore::claim_room`).
//!
//! | route | does |
//! |---|---|
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
//!
//! Notifications: `POST /api/v1/notify` also takes an admin token (see
//! [`notify_scope_allowed`]).

use http::{Request, StatusCode};
use hyper::body::Incoming;
use pace_protocol::{DeviceAction, DeviceId, ErrorCode, GroupId, RoomId, Target, rest};

use crate::accounts::AdminClaims;
use crate::auth::{Principal, owns_room as owns};
use crate::devices::DeviceRecord;
use crate::error::{ApiError, Body, json_response};
use crate::node::NodeRef;
use crate::queue::{DeviceStatus, Room, RoomConfig};
use crate::rooms_api::stats_body;
use crate::routes::Route;
use crate::store::now_ms;

/// Most registry entries one listing returns.
const MAX_LIST: usize = 500;

fn not_found(raw: &str) -> ApiError {
    ApiError::new(ErrorCode::NoSuchRoom, format!("no room {raw}"))
}

/// The room `raw`, if the admin's tenant owns it; 404 otherwise.
async fn owned(node: &NodeRef, claims: &AdminClaims, raw: &str) -> Result<Room, ApiError> {
    let room = RoomId::parse(raw).map_err(|_| not_found(raw))?;
    if !owns(node, claims, &room).await? {
        return Err(not_found(raw));
    }
    node.rooms
        .queue
        .get_room(&room)
        .await?
        .ok_or_else(|| not_found(raw))
}

/// Serves one admin route for `principal` (already authorized by the
/// route's rule: an admin, or an admin or the service key).
pub async fn route(
    node: &NodeRef,
    route: Route,
    room: &str,
    device: &str,
    req: Request<Incoming>,
    principal: Principal,
) -> Result<http::Response<Body>, ApiError> {
    let answer = match (&principal, route) {
        (Principal::Admin(claims), Route::AdminRooms) => list_rooms(node, claims).await,
        (Principal::Admin(claims), Route::AdminPutRoom) => put_room(node, claims, room, req).await,
        (Principal::Admin(claims), Route::AdminGetRoom) => owned(node, claims, room)
            .await
            .map(|r| json_response(StatusCode::OK, &r)),
        (Principal::Admin(claims), Route::AdminRoomStats) => {
            match owned(node, claims, room).await {
                Ok(r) => stats_body(node, &r.id)
                    .await
                    .map(|v| json_response(StatusCode::OK, &v)),
                Err(e) => Err(e),
            }
        }
        (Principal::Admin(claims), Route::AdminRoomLog) => room_log(node, claims, room).await,
        (Principal::Admin(claims), Route::AdminDevices) => devices(node, claims, &req).await,
        (Principal::Admin(_), Route::AdminCluster) => cluster(node).await,
        (Principal::Admin(claims), Route::AdminWsTicket) => ws_ticket(node, claims),
        (_, Route::AdminRevokeSession) => revoke_session(node, &principal, room, req).await,
        (_, Route::AdminDepartments) => departments(node, &principal, device, req).await,
        (_, Route::AdminKick) => kick(node, &principal, device).await,
        (_, Route::AdminForget) => forget(node, &principal, device).await,
        _ => Err(ApiError::new(
            ErrorCode::Unauthorized,
            "send Authorization: Bearer <admin token from POST /api/v1/admin/login>",
        )),
    };
    let label = if answer.is_ok() { "ok" } else { "refused" };
    node.metrics
        .admin_requests
        .with_label_values(&[label])
        .inc();
    answer
}

/// `GET /api/v1/admin/rooms/{room}/log`: the room's whole kept audit log
/// (sealed or not) with raw session ids, as JSON Lines.
async fn room_log(
    node: &NodeRef,
    claims: &AdminClaims,
    raw: &str,
) -> Result<http::Response<Body>, ApiError> {
    let room = owned(node, claims, raw).await?;
    let text = crate::audit::export(node.rooms.queue.as_ref(), &room.id, false, now_ms()).await?;
    node.metrics
        .audit_exports
        .with_label_values(&["admin"])
        .inc();
    Ok(crate::rooms_api::jsonl_response(bytes::Bytes::from(text)))
}

/// `POST /api/v1/admin/ws-ticket`: a ticket that opens `/admin/ws` once,
/// within 30 s.
fn ws_ticket(node: &NodeRef, claims: &AdminClaims) -> Result<http::Response<Body>, ApiError> {
    let (ticket, t) = crate::auth::tickets::issue(&node.keys, claims, crate::admission::unix_now())
        .map_err(|e| {
            tracing::error!(error = %e, "signing a feed ticket failed");
            ApiError::new(ErrorCode::Internal, "could not issue a ticket; retry")
        })?;
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
async fn departments(
    node: &NodeRef,
    principal: &Principal,
    raw: &str,
    req: Request<Incoming>,
) -> Result<http::Response<Body>, ApiError> {
    let record = managed(node, principal, raw).await?;
    let body: rest::DepartmentsRequest =
        crate::api::read_json(req, node.config.max_message_bytes).await?;
    if body.departments.len() > node.config.max_groups {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("at most {} departments per device", node.config.max_groups),
        ));
    }
    let tenant = record.info.tenant.as_deref();
    let mut groups: Vec<GroupId> = Vec::new();
    for name in &body.departments {
        let full = match (principal, tenant) {
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
        node,
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
async fn kick(
    node: &NodeRef,
    principal: &Principal,
    raw: &str,
) -> Result<http::Response<Body>, ApiError> {
    let device = match managed(node, principal, raw).await {
        Ok(record) => record.info.device_id,
        Err(e) if matches!(principal, Principal::Service) && e.code == ErrorCode::NotFound => {
            DeviceId::parse(raw).map_err(|_| no_device(raw))?
        }
        Err(e) => return Err(e),
    };
    let cutoff = crate::admission::unix_now();
    // The longest any of its tokens lives, plus the clock leeway.
    let ttl = node.config.device_token_ttl + std::time::Duration::from_secs(60);
    node.devices.revoke_before(&device, cutoff, ttl).await?;
    tell_node(
        node,
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
    let ttl = node.config.device_token_ttl + std::time::Duration::from_secs(60);
    node.devices.revoke_before(device, cutoff, ttl).await?;
    Ok(cutoff)
}

/// `DELETE /api/v1/admin/devices/{device}`: forgets the registration, so
/// the id can register anew. Its tokens are revoked first: whoever
/// registers the id next is the only one holding a valid token for it.
async fn forget(
    node: &NodeRef,
    principal: &Principal,
    raw: &str,
) -> Result<http::Response<Body>, ApiError> {
    let record = managed(node, principal, raw).await?;
    let device = record.info.device_id;
    revoke_tokens(node, &device).await?;
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
async fn revoke_session(
    node: &NodeRef,
    principal: &Principal,
    raw: &str,
    req: Request<Incoming>,
) -> Result<http::Response<Body>, ApiError> {
    let room = RoomId::parse(raw).map_err(|_| not_found(raw))?;
    let visible = match principal {
        Principal::Service => node.rooms.queue.get_room(&room).await?.is_some(),
        Principal::Admin(claims) => owns(node, claims, &room).await?,
        _ => false,
    };
    if !visible {
        return Err(not_found(raw));
    }
    let body: rest::RevokeSessionRequest =
        crate::api::read_json(req, node.config.max_message_bytes).await?;
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

async fn list_rooms(
    node: &NodeRef,
    claims: &AdminClaims,
) -> Result<http::Response<Body>, ApiError> {
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

async fn put_room(
    node: &NodeRef,
    claims: &AdminClaims,
    raw: &str,
    req: Request<Incoming>,
) -> Result<http::Response<Body>, ApiError> {
    let room = RoomId::parse(raw)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("room id {e}")))?;
    let config: RoomConfig = crate::api::read_json(req, node.config.max_message_bytes).await?;
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

async fn devices(
    node: &NodeRef,
    claims: &AdminClaims,
    req: &Request<Incoming>,
) -> Result<http::Response<Body>, ApiError> {
    let mut query = String::new();
    let mut limit = 100;
    if let Some(q) = req.uri().query() {
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

async fn cluster(node: &NodeRef) -> Result<http::Response<Body>, ApiError> {
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

/// Whether an admin of `claims.tenant` may send to `target`: one of its
/// tenant's registered devices, a group in its tenant's namespace
/// (`<tenant>:<name>`), or the channel of one of its rooms
/// (`@room:<room>`: everyone waiting in it). `all` reaches every tenant's devices: service key
/// only. `Err` is the refusal to answer (404 for a device of another
/// tenant, as if unknown; 403 otherwise).
pub async fn notify_scope_allowed(
    node: &NodeRef,
    claims: &AdminClaims,
    target: &Target,
) -> Result<(), ApiError> {
    match target {
        Target::All => Err(ApiError::new(
            ErrorCode::Forbidden,
            "scope all reaches every tenant: use the service key, or a group of your tenant",
        )),
        // A room's channel: the room must be the tenant's (checked before
        // the tenant prefix, so no tenant id can reach another's room).
        Target::Group(g)
            if g.as_str()
                .starts_with(pace_protocol::ids::ROOM_GROUP_PREFIX) =>
        {
            let unknown = || ApiError::new(ErrorCode::NoSuchRoom, format!("no room for {g}"));
            let room = g.room().ok_or_else(unknown)?;
            if owns(node, claims, &room).await? {
                Ok(())
            } else {
                Err(unknown())
            }
        }
        Target::Group(g) => {
            let prefix = format!("{}:", claims.tenant.as_str());
            if g.as_str().starts_with(&prefix) {
                Ok(())
            } else {
                Err(ApiError::new(
                    ErrorCode::Forbidden,
                    format!("admins send to groups named {prefix}<name>"),
                ))
            }
        }
        Target::Device(d) => {
            let record = node.devices.get(d).await?;
            match record {
                Some(r) if r.info.tenant.as_deref() == Some(claims.tenant.as_str()) => Ok(()),
                _ => Err(ApiError::new(ErrorCode::NotFound, format!("no device {d}"))),
            }
        }
    }
}
