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
//! | `GET /api/v1/admin/devices?q=&limit=` | the tenant's device registry |
//! | `GET /api/v1/admin/cluster` | the nodes and their connection counts |
//!
//! Notifications: `POST /api/v1/notify` also takes an admin token (see
//! [`notify_scope_allowed`]).

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use pace_protocol::{ErrorCode, RoomId, Target};
use serde_json::json;

use crate::accounts::AdminClaims;
use crate::accounts::login::admin_from_headers;
use crate::error::{ApiError, Body, json_response};
use crate::node::NodeRef;
use crate::queue::{Room, RoomConfig};
use crate::rooms_api::{stats_body, store_error};

/// Most registry entries one listing returns.
const MAX_LIST: usize = 500;

/// The admin named by the request's bearer token.
pub fn admin(node: &NodeRef, req: &Request<Incoming>) -> Result<AdminClaims, ApiError> {
    admin_from_headers(&node.keys, req.headers()).map_err(|e| {
        node.metrics
            .admin_requests
            .with_label_values(&["unauthorized"])
            .inc();
        tracing::debug!(reason = e.code(), "admin token refused");
        ApiError::new(
            ErrorCode::Unauthorized,
            "send Authorization: Bearer <admin token from POST /api/v1/admin/login>",
        )
    })
}

fn not_found(raw: &str) -> ApiError {
    ApiError::new(ErrorCode::NoSuchRoom, format!("no room {raw}"))
}

/// Whether the admin's tenant owns `room`.
async fn owns(node: &NodeRef, claims: &AdminClaims, room: &RoomId) -> Result<bool, ApiError> {
    let owner = node
        .rooms
        .queue
        .room_owner(room)
        .await
        .map_err(store_error)?;
    Ok(owner.as_deref() == Some(claims.tenant.as_str()))
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
        .await
        .map_err(store_error)?
        .ok_or_else(|| not_found(raw))
}

/// Routes `/api/v1/admin/…` (but login). Returns the route label for
/// metrics and the answer.
pub async fn route(
    node: &NodeRef,
    req: Request<Incoming>,
) -> (&'static str, Result<http::Response<Body>, ApiError>) {
    let path = req.uri().path().to_owned();
    let tail = path.trim_start_matches("/api/v1/admin/");
    let parts: Vec<&str> = tail.split('/').collect();
    let method = req.method().clone();
    let claims = match admin(node, &req) {
        Ok(c) => c,
        Err(e) => return ("admin", Err(e)),
    };
    let answer = match (&method, parts.as_slice()) {
        (&Method::GET, ["rooms"]) => list_rooms(node, &claims).await,
        (&Method::PUT, ["rooms", room]) => put_room(node, &claims, room, req).await,
        (&Method::GET, ["rooms", room]) => owned(node, &claims, room)
            .await
            .map(|r| json_response(StatusCode::OK, &json!(r))),
        (&Method::GET, ["rooms", room, "stats"]) => match owned(node, &claims, room).await {
            Ok(r) => stats_body(node, &r.id)
                .await
                .map(|v| json_response(StatusCode::OK, &v)),
            Err(e) => Err(e),
        },
        (&Method::GET, ["devices"]) => devices(node, &claims, &req).await,
        (&Method::GET, ["cluster"]) => cluster(node).await,
        (_, ["rooms"] | ["rooms", _] | ["rooms", _, "stats"] | ["devices"] | ["cluster"]) => Err(
            ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed here"),
        ),
        _ => Err(ApiError::new(ErrorCode::NotFound, "no such route")),
    };
    let label = if answer.is_ok() { "ok" } else { "refused" };
    node.metrics
        .admin_requests
        .with_label_values(&[label])
        .inc();
    ("admin", answer)
}

async fn list_rooms(
    node: &NodeRef,
    claims: &AdminClaims,
) -> Result<http::Response<Body>, ApiError> {
    let q = &node.rooms.queue;
    let mut rooms = Vec::new();
    for id in q.rooms().await.map_err(store_error)? {
        if q.room_owner(&id).await.map_err(store_error)?.as_deref() == Some(claims.tenant.as_str())
            && let Some(room) = q.get_room(&id).await.map_err(store_error)?
        {
            rooms.push(room);
        }
    }
    Ok(json_response(StatusCode::OK, &json!({"rooms": rooms})))
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
        .await
        .map_err(store_error)?;
    if owner.as_deref() != Some(claims.tenant.as_str()) {
        return Err(not_found(raw));
    }
    let saved = node
        .rooms
        .queue
        .put_room(&room, &config)
        .await
        .map_err(store_error)?;
    tracing::info!(tenant = %claims.tenant, admin = %claims.sub, %room, "room changed by an admin");
    Ok(json_response(StatusCode::OK, &json!(saved)))
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
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "device registry unavailable");
            ApiError::new(
                ErrorCode::StoreUnavailable,
                "the store is unavailable; retry",
            )
        })?;
    Ok(json_response(StatusCode::OK, &json!({"devices": records})))
}

async fn cluster(node: &NodeRef) -> Result<http::Response<Body>, ApiError> {
    let nodes = node.store.nodes().await.map_err(|e| {
        tracing::warn!(error = %e, "cluster listing failed");
        ApiError::new(
            ErrorCode::StoreUnavailable,
            "the store is unavailable; retry",
        )
    })?;
    let total: u64 = nodes.iter().map(|n| n.connections).sum();
    Ok(json_response(
        StatusCode::OK,
        &json!({"total_connections": total, "nodes": nodes}),
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
            let record = node.devices.get(d).await.map_err(|e| {
                tracing::warn!(error = %e, "device registry unavailable");
                ApiError::new(
                    ErrorCode::StoreUnavailable,
                    "the store is unavailable; retry",
                )
            })?;
            match record {
                Some(r) if r.info.tenant.as_deref() == Some(claims.tenant.as_str()) => Ok(()),
                _ => Err(ApiError::new(ErrorCode::NotFound, format!("no device {d}"))),
            }
        }
    }
}
