//! HTTP routes: health, readiness, metrics, the WebSocket upgrade and the
//! notify API.
//!
//! [`handle`] is the hyper service function. It never panics on input and
//! answers every failure through [`ApiError`].

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use pace_protocol::{ErrorCode, NotifyRequest};
use serde_json::json;

use crate::error::{ApiError, Body, json_response};
use crate::node::NodeRef;
use crate::store::Draft;
use crate::{accounts, handshake, rooms_api};

/// Routes one request.
pub async fn handle(node: NodeRef, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let origins = crate::origins::OriginCheck::of(&node, &req).await;
    let (route, result) = match (req.method(), req.uri().path()) {
        _ if origins.admin_refused() => ("admin", Err(origins.refuse_admin(&node))),
        (&Method::OPTIONS, _) if origins.is_preflight() => ("cors_preflight", origins.preflight()),
        (&Method::GET, "/ws") => ("ws", upgrade(&node, req, peer).await),
        (&Method::GET, "/admin/ws") => ("admin_ws", crate::admin_ws::upgrade(&node, req)),
        (&Method::GET, "/health") => ("health", Ok(health(&node))),
        (&Method::GET, "/ready") => ("ready", Ok(ready(&node).await)),
        (&Method::GET, "/metrics") => ("metrics", Ok(metrics(&node).await)),
        (&Method::POST, "/api/v1/notify") => ("notify", notify(&node, req).await),
        (&Method::GET, "/api/v1/cluster") => ("cluster", cluster(&node, &req).await),
        (&Method::GET, "/.well-known/jwks.json") => ("jwks", Ok(rooms_api::jwks(&node))),
        (&Method::POST, "/api/v1/admissions/verify") => {
            ("verify", rooms_api::verify(&node, req).await)
        }
        (&Method::POST, "/api/v1/sessions/release") => {
            ("session", rooms_api::session(&node, req, false).await)
        }
        (&Method::POST, "/api/v1/sessions/renew") => {
            ("session", rooms_api::session(&node, req, true).await)
        }
        (&Method::POST, "/api/v1/devices/register") => {
            let forwarded = req
                .headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok());
            let address =
                crate::limits::client_address(peer.ip(), forwarded, &node.config.trusted_proxies);
            (
                "device_register",
                crate::devices::api::register(&node, req, address).await,
            )
        }
        (&Method::POST, "/api/v1/admin/login") => {
            ("admin_login", accounts::login::login(&node, req).await)
        }
        (_, path) if path.starts_with("/api/v1/admin/") => {
            crate::admin_api::route(&node, req).await
        }
        (&Method::GET, "/demo/target") => ("demo", Ok(rooms_api::demo_target(&node, &req))),
        (&Method::GET | &Method::HEAD, path) if path.starts_with("/r/") => (
            "room_page",
            Ok(crate::web::room_page(&node, &path["/r/".len()..]).await),
        ),
        (&Method::GET | &Method::HEAD, "/admin" | "/admin/") => {
            ("admin_page", Ok(crate::web::admin_page()))
        }
        (&Method::GET | &Method::HEAD, path) if path.starts_with("/assets/") => (
            "asset",
            crate::web::asset(&path["/assets/".len()..], req.headers())
                .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such asset")),
        ),
        (method, path) if path.starts_with("/api/v1/rooms/") => {
            let rest = &path["/api/v1/rooms/".len()..];
            let (room, tail) = rest.split_once('/').unwrap_or((rest, ""));
            let room = room.to_owned();
            let result = match (method, tail) {
                (&Method::PUT, "") => rooms_api::put_room(&node, &room, req).await,
                (&Method::GET, "") => rooms_api::get_room(&node, &room).await,
                (&Method::GET, "stats") => rooms_api::stats(&node, &room, &req).await,
                (&Method::GET, "status") => rooms_api::status(&node, &room, &req).await,
                (_, "" | "stats" | "status") => Err(ApiError::new(
                    ErrorCode::MethodNotAllowed,
                    "method not allowed on this path",
                )),
                _ => Err(ApiError::new(ErrorCode::NotFound, "no such route")),
            };
            ("rooms", result)
        }
        (&Method::GET, "/") => ("index", Ok(index(&node))),
        (
            _,
            "/ws" | "/health" | "/ready" | "/metrics" | "/api/v1/notify" | "/api/v1/cluster" | "/",
        ) => (
            "other",
            Err(ApiError::new(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this path",
            )),
        ),
        _ => (
            "other",
            Err(ApiError::new(ErrorCode::NotFound, "no such route")),
        ),
    };
    let mut resp = result.unwrap_or_else(ApiError::into_response);
    origins.add_headers(&mut resp);
    let class = match resp.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    node.metrics
        .http_requests
        .with_label_values(&[route, class])
        .inc();
    resp
}

fn health(node: &NodeRef) -> Response<Body> {
    json_response(
        StatusCode::OK,
        &json!({"status": "ok", "node_id": node.config.node_id}),
    )
}

async fn ready(node: &NodeRef) -> Response<Body> {
    let store = node.store.health().await;
    node.metrics
        .store_up
        .with_label_values(&[store.kind])
        .set(i64::from(store.up));
    let ready = node.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(
        status,
        &json!({
            "ready": ready,
            "draining": node.is_draining(),
            "node_id": node.config.node_id,
            "connections": node.metrics.connections_open.get(),
            "store": store,
        }),
    )
}

async fn metrics(node: &NodeRef) -> Response<Body> {
    let store = node.store.health().await;
    node.metrics
        .store_up
        .with_label_values(&[store.kind])
        .set(i64::from(store.up));
    let mut resp = Response::new(Full::new(Bytes::from(node.metrics.render())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

fn index(node: &NodeRef) -> Response<Body> {
    let text = format!(
        "Pace node {}\n\nGET  /ws?device_id=ID      WebSocket for devices (or header x-device-id)\n\
         POST /api/v1/notify        send a notification (Authorization: Bearer SERVICE_KEY)\n\
         GET  /health  /ready  /metrics\n",
        node.config.node_id
    );
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Checks the handshake, answers 101 and hands the upgraded socket to a
/// connection task.
async fn upgrade(
    node: &NodeRef,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, ApiError> {
    let refuse = |e: ApiError| {
        node.metrics
            .handshakes_refused
            .with_label_values(&[e.code.as_str()])
            .inc();
        tracing::debug!(%peer, code = e.code.as_str(), "handshake refused");
        e
    };
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
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let address = crate::limits::client_address(peer.ip(), forwarded, &node.config.trusted_proxies);
    if !node.handshakes.allow(&address, std::time::Instant::now()) {
        return Err(refuse(ApiError::new(
            ErrorCode::TooManyHandshakes,
            "too many connections from this address right now; retry with backoff",
        )));
    }
    let hs = handshake::check(&req, node.config.max_groups).map_err(refuse)?;
    let identity = crate::devices::api::authenticate(node, &req, &hs.device).map_err(refuse)?;
    crate::origins::check_handshake(node, &req, &identity)
        .await
        .map_err(refuse)?;
    let mut hs = hs;
    if let crate::devices::api::Identity::Registered(claims) = &identity {
        hs.user = claims.user.clone();
    }
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
    if identity != crate::devices::api::Identity::Anonymous {
        crate::devices::api::note_seen(node, &hs.device, address);
    }
    node.connections.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => crate::connection::serve(task_node, upgraded, hs, slot).await,
            Err(e) => tracing::debug!(%peer, error = %e, "upgrade failed"),
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    Ok(resp)
}

/// `GET /api/v1/cluster`: the live nodes and their connection counts.
async fn cluster(node: &NodeRef, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    if !authorized(node, req) {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "send Authorization: Bearer <service key>",
        ));
    }
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
        &json!({"store": node.store.kind(), "total_connections": total, "nodes": nodes}),
    ))
}

/// Whether the request carries the service key as a bearer token.
pub(crate) fn authorized(node: &NodeRef, req: &Request<Incoming>) -> bool {
    let Some(value) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(token) = value.strip_prefix("Bearer ").map(str::trim) else {
        return false;
    };
    constant_time_eq::constant_time_eq(token.as_bytes(), node.config.service_key.as_bytes())
}

/// Reads a JSON body of at most `max` bytes.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    max: usize,
) -> Result<T, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("body larger than {max} bytes"),
        )
    };
    if req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|len| len > max as u64)
    {
        return Err(too_large());
    }
    let body = Limited::new(req.into_body(), max)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large()
            } else {
                ApiError::new(ErrorCode::BadRequest, "could not read the request body")
            }
        })?;
    serde_json::from_slice(&body.to_bytes())
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("invalid JSON body: {e}")))
}

/// `POST /api/v1/notify`.
async fn notify(node: &NodeRef, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let count = |scope: &str, result: &str| {
        node.metrics
            .notify_requests
            .with_label_values(&[scope, result])
            .inc()
    };
    // The service key sends anywhere; an admin token within its tenant.
    let admin = if authorized(node, &req) {
        None
    } else {
        match crate::admin_api::admin(node, &req) {
            Ok(claims) => Some(claims),
            Err(_) => {
                count("unknown", "unauthorized");
                return Err(ApiError::new(
                    ErrorCode::Unauthorized,
                    "send Authorization: Bearer <service key or admin token>",
                ));
            }
        }
    };
    let body: NotifyRequest = match read_json(req, node.config.max_message_bytes).await {
        Ok(b) => b,
        Err(e) => {
            count("unknown", e.code.as_str());
            return Err(e);
        }
    };
    let scope = body.scope.as_str();
    let target = body.target().map_err(|e| {
        count(scope, "bad_request");
        ApiError::new(ErrorCode::BadRequest, e.to_string())
    })?;
    if let Some(claims) = &admin
        && let Err(e) = crate::admin_api::notify_scope_allowed(node, claims, &target).await
    {
        count(scope, e.code.as_str());
        return Err(e);
    }
    let draft = Draft {
        target,
        event: body.event,
        data: body.data,
    };
    match node.store.publish(draft).await {
        Ok(n) => {
            count(scope, "accepted");
            Ok(json_response(
                StatusCode::ACCEPTED,
                &json!({"id": n.id, "scope": n.scope, "target": n.target, "epoch": n.epoch, "seq": n.seq, "sent_at_ms": n.sent_at_ms}),
            ))
        }
        Err(e) => {
            count(scope, "store_unavailable");
            tracing::warn!(error = %e, "notify failed");
            Err(ApiError::new(
                ErrorCode::StoreUnavailable,
                "the store is unavailable; retry",
            ))
        }
    }
}
