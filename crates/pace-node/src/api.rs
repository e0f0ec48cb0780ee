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
use pace_protocol::{ErrorCode, NotifyRequest, rest};

use crate::auth::{self, Principal};
use crate::error::{ApiError, Body, json_response};
use crate::node::NodeRef;
use crate::store::Draft;
use crate::ws::handshake;
use crate::{accounts, rooms_api, routes};

/// Routes one request: the origin gate, the route table, the
/// authorization step, then the handler.
pub async fn handle(node: NodeRef, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let origins = crate::origins::OriginCheck::of(&node, &req).await;
    let (route, result) = if origins.admin_refused() {
        ("admin", Err(origins.refuse_admin(&node)))
    } else if req.method() == Method::OPTIONS && origins.is_preflight() {
        ("cors_preflight", origins.preflight())
    } else {
        match routes::resolve(req.method(), req.uri().path()) {
            routes::Resolved::Found(spec, params) => (
                spec.route.label(),
                serve(&node, spec, params, req, peer).await,
            ),
            routes::Resolved::MethodNotAllowed(allow) => ("other", Ok(method_not_allowed(&allow))),
            routes::Resolved::NotFound => (
                "other",
                Err(ApiError::new(ErrorCode::NotFound, "no such route")),
            ),
        }
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

/// 405, with the path's methods in `Allow` (and the message).
fn method_not_allowed(allow: &[Method]) -> Response<Body> {
    let list = allow
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let mut resp = ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("method not allowed on this path (allowed: {list})"),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&list) {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    resp
}

/// Authorizes the request by its route's rule, then calls the handler
/// with the principal.
async fn serve(
    node: &NodeRef,
    spec: &routes::RouteSpec,
    params: routes::Params,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, ApiError> {
    use routes::Route as R;
    // Behind a trusted gateway, a device handshake counts in its forwarded
    // address's connections not yet upgraded while it runs (direct
    // connections are counted from accept on, in the accept loop).
    let mut _forwarded_hold = None;
    if spec.route == R::DeviceWs {
        // Cheap refusals first: a draining node or a flood from one
        // address costs no credential check.
        before_handshake(node, &req, peer)?;
        if node
            .config
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&peer.ip()))
        {
            let address = auth::client_address(node, &req, peer);
            match node.sockets.hold(address) {
                Ok(hold) => _forwarded_hold = Some(hold),
                Err(refused) => {
                    node.metrics
                        .limits_hit
                        .with_label_values(&[refused.limit()])
                        .inc();
                    return Err(refused_handshake(
                        node,
                        peer,
                        ApiError::new(
                            ErrorCode::TooManyPending,
                            "too many handshakes from this address are in flight; retry with backoff",
                        ),
                    ));
                }
            }
        }
    }
    let principal = match auth::authorize(node, spec.rule, &req, peer).await {
        Ok(p) => p,
        Err(e) => return Err(count_refusal(node, spec.route, peer, e)),
    };
    let room = params.room.as_str();
    let device = params.device.as_str();
    match spec.route {
        R::Index => Ok(index(node)),
        R::Health => Ok(health(node)),
        R::Ready => Ok(ready(node).await),
        R::Metrics => Ok(metrics(node).await),
        R::DeviceWs => upgrade(node, req, peer, principal).await,
        R::AdminWs => crate::ws::admin::upgrade(node, req, principal),
        R::Notify => notify(node, req, principal).await,
        R::Cluster => cluster(node).await,
        R::Jwks => Ok(rooms_api::jwks(node)),
        R::Verify => rooms_api::verify(node, req).await,
        R::Release => rooms_api::session(node, req, principal, false).await,
        R::Renew => rooms_api::session(node, req, principal, true).await,
        R::Register => {
            let address = auth::client_address(node, &req, peer);
            crate::devices::api::register(node, req, principal, address).await
        }
        R::AdminLogin => accounts::login::login(node, req).await,
        R::AdminWsTicket
        | R::AdminRooms
        | R::AdminPutRoom
        | R::AdminGetRoom
        | R::AdminRoomStats
        | R::AdminRoomLog
        | R::AdminRevokeSession
        | R::AdminDevices
        | R::AdminDepartments
        | R::AdminKick
        | R::AdminForget
        | R::AdminCluster => {
            crate::admin_api::route(node, spec.route, room, device, req, principal).await
        }
        R::PutRoom => rooms_api::put_room(node, room, req).await,
        R::GetRoom => rooms_api::get_room(node, room).await,
        R::RoomStats => rooms_api::stats(node, room).await,
        R::RoomStatus => rooms_api::status(node, room, principal).await,
        R::RoomLog => rooms_api::public_log(node, room).await,
        R::DemoTarget => Ok(rooms_api::demo_target(node, &req)),
        R::RoomPage => Ok(crate::web::room_page(node, room).await),
        R::AdminPage => Ok(crate::web::admin_page()),
        R::Asset => crate::web::asset(&params.file, req.headers())
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such asset")),
    }
}

/// Counts a credential refusal where the route's own metrics count its
/// refusals too (besides `pace_auth_refused_total`).
fn count_refusal(node: &NodeRef, route: routes::Route, peer: SocketAddr, e: ApiError) -> ApiError {
    use routes::Route as R;
    match route {
        R::DeviceWs => return refused_handshake(node, peer, e),
        R::Notify => node
            .metrics
            .notify_requests
            .with_label_values(&["unknown", "unauthorized"])
            .inc(),
        _ if route.label() == "admin" || route == R::AdminWs => node
            .metrics
            .admin_requests
            .with_label_values(&["unauthorized"])
            .inc(),
        _ => {}
    }
    e
}

fn health(node: &NodeRef) -> Response<Body> {
    json_response(
        StatusCode::OK,
        &rest::Health {
            status: "ok".into(),
            node_id: node.config.node_id.clone(),
        },
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
        &rest::Ready {
            ready,
            draining: node.is_draining(),
            node_id: node.config.node_id.clone(),
            connections: node.metrics.connections_open.get(),
            store: rest::StoreHealth {
                kind: store.kind.to_owned(),
                up: store.up,
                error: store.error,
            },
        },
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

/// Counts and logs a refused handshake.
fn refused_handshake(node: &NodeRef, peer: SocketAddr, e: ApiError) -> ApiError {
    node.metrics
        .handshakes_refused
        .with_label_values(&[e.code.as_str()])
        .inc();
    tracing::debug!(%peer, code = e.code.as_str(), "handshake refused");
    e
}

/// What a handshake is refused for before its credential is looked at:
/// draining, starting, too many handshakes from the address, not an
/// upgrade.
fn before_handshake(
    node: &NodeRef,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> Result<(), ApiError> {
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
    let address = auth::client_address(node, req, peer);
    if !node.handshakes.allow(&address, std::time::Instant::now()) {
        return Err(refuse(ApiError::new(
            ErrorCode::TooManyHandshakes,
            "too many connections from this address right now; retry with backoff",
        )));
    }
    handshake::upgrade_accept(req).map_err(refuse)?;
    Ok(())
}

/// Checks the rest of the handshake (departments against the device's
/// grants, origin, a free slot), answers 101 and hands the upgraded socket
/// to a connection task.
async fn upgrade(
    node: &NodeRef,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    principal: Principal,
) -> Result<Response<Body>, ApiError> {
    let refuse = |e: ApiError| refused_handshake(node, peer, e);
    let Principal::Device(device) = principal else {
        return Err(refuse(ApiError::new(ErrorCode::Internal, "not a device")));
    };
    let hs = handshake::check(&req, node.config.max_groups).map_err(refuse)?;
    let hs = handshake::grant(&node.ws, hs, &device).await;
    crate::origins::check_handshake(node, &req, &device)
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
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    Ok(resp)
}

/// `GET /api/v1/cluster` (service key): the live nodes and their
/// connection counts.
async fn cluster(node: &NodeRef) -> Result<Response<Body>, ApiError> {
    let nodes = node.store.nodes().await?;
    let total: u64 = nodes.iter().map(|n| n.connections).sum();
    Ok(json_response(
        StatusCode::OK,
        &rest::Cluster {
            store: Some(node.store.kind().to_owned()),
            total_connections: total,
            nodes,
        },
    ))
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

/// `POST /api/v1/notify` (service key: anywhere; an admin: within its
/// tenant).
async fn notify(
    node: &NodeRef,
    req: Request<Incoming>,
    principal: Principal,
) -> Result<Response<Body>, ApiError> {
    let count = |scope: &str, result: &str| {
        node.metrics
            .notify_requests
            .with_label_values(&[scope, result])
            .inc()
    };
    let admin = match principal {
        Principal::Admin(claims) => Some(claims),
        _ => None,
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
                &rest::NotifyAccepted {
                    id: n.id,
                    scope: n.scope,
                    target: n.target,
                    epoch: n.epoch,
                    seq: n.seq,
                    sent_at_ms: n.sent_at_ms,
                },
            ))
        }
        Err(e) => {
            count(scope, "store_unavailable");
            Err(ApiError::store_unavailable("notify", &e))
        }
    }
}
