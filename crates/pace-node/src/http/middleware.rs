//! The HTTP layer's two middlewares: [`edge`] around every request, and
//! [`entry`] around each route of the table.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::Method;
use pace_protocol::ErrorCode;

use crate::auth;
use crate::error::ApiError;
use crate::node::NodeRef;
use crate::origins::OriginCheck;
use crate::routes::{self, Route, RouteSpec};

use super::extract::peer;

/// The `route` label of `pace_http_requests_total` for a response, set
/// by [`entry`] from the matched route ([`Route::label`]); a response
/// without one (404, 405) is labelled `other`.
#[derive(Debug, Clone, Copy)]
pub struct RouteLabel(pub &'static str);

/// Around every request: the admin-origin gate (an admin route from a
/// foreign browser page answers 403 `origin_not_allowed`), the CORS
/// preflight answer, then — after routing and the handler — the CORS
/// headers and the request count.
pub async fn edge(State(node): State<NodeRef>, req: Request, next: Next) -> Response {
    // The body is not `Sync`: only the head is borrowed across awaits.
    let (parts, body) = req.into_parts();
    let head = http::Request::from_parts(parts, ());
    let origins = OriginCheck::of(&node.origins, &head).await;
    let (parts, ()) = head.into_parts();
    let req = Request::from_parts(parts, body);
    let (route, mut resp) = if origins.admin_refused() {
        ("admin", origins.refuse_admin(&node.origins).into_response())
    } else if req.method() == Method::OPTIONS && origins.is_preflight() {
        let resp = match origins.preflight() {
            Ok(resp) => resp.map(axum::body::Body::new),
            Err(e) => e.into_response(),
        };
        ("cors_preflight", resp)
    } else {
        let resp = next.run(req).await;
        let label = resp
            .extensions()
            .get::<RouteLabel>()
            .map_or("other", |l| l.0);
        (label, resp)
    };
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

/// The state of one route's [`entry`]: the node and the table row.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The node.
    pub node: NodeRef,
    /// The route's row of [`routes::ROUTES`].
    pub spec: &'static RouteSpec,
}

/// Around one route: reads the path's parameters, runs the device
/// handshake's cheap refusals (on `/ws`), the authorization step with the
/// route's rule, then the handler with the principal; labels the response
/// with the route.
pub async fn entry(State(entry): State<Entry>, mut req: Request, next: Next) -> Response {
    let Entry { node, spec } = entry;
    // The router matched already; a path the table's own pattern does not
    // take (an empty segment) is not this route.
    let Some(params) = routes::params(spec.path, req.uri().path()) else {
        return super::routes::not_found().await;
    };
    req.extensions_mut().insert(params);
    let mut resp = match guard(&node, spec, req, next).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    };
    resp.extensions_mut().insert(RouteLabel(spec.route.label()));
    resp
}

async fn guard(
    node: &NodeRef,
    spec: &'static RouteSpec,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let peer = peer(req.extensions())?;
    // Held until the handler has answered (the 101 of a handshake).
    let _forwarded_hold = match spec.route {
        Route::DeviceWs => super::routes::devices::before_handshake(node, &req, peer, true)?,
        Route::DeviceStream => super::routes::devices::before_handshake(node, &req, peer, false)?,
        _ => None,
    };
    // The body is not `Sync`: only the head is borrowed across awaits.
    let (parts, body) = req.into_parts();
    let mut head = http::Request::from_parts(parts, ());
    let principal = match auth::authorize(&node.auth, spec.rule, &head, peer).await {
        Ok(p) => p,
        Err(e) => return Err(count_refusal(node, spec.route, peer, e)),
    };
    head.extensions_mut().insert(principal);
    let (parts, ()) = head.into_parts();
    let req = Request::from_parts(parts, body);
    let resp = next.run(req).await;
    if spec.route.label() == "admin" {
        let label = if resp.status().is_success() {
            "ok"
        } else {
            "refused"
        };
        node.metrics
            .admin_requests
            .with_label_values(&[label])
            .inc();
    }
    Ok(resp)
}

/// Counts a credential refusal where the route's own metrics count its
/// refusals too (besides `pace_auth_refused_total`).
fn count_refusal(
    node: &NodeRef,
    route: Route,
    peer: std::net::SocketAddr,
    e: ApiError,
) -> ApiError {
    match route {
        Route::DeviceWs | Route::DeviceStream => {
            return super::routes::devices::refused_handshake(node, peer, e);
        }
        Route::StreamSend => node
            .metrics
            .stream_posts
            .with_label_values(&["unauthorized"])
            .inc(),
        Route::Notify => node
            .metrics
            .notify_requests
            .with_label_values(&["unknown", "unauthorized"])
            .inc(),
        _ if route.label() == "admin" || route == Route::AdminWs => node
            .metrics
            .admin_requests
            .with_label_values(&["unauthorized"])
            .inc(),
        _ => {}
    }
    e
}

/// 405, with the path's methods in `Allow` (and the message).
pub fn method_not_allowed(allow: &str) -> Response {
    let mut resp = ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("method not allowed on this path (allowed: {allow})"),
    )
    .into_response();
    if let Ok(v) = http::HeaderValue::from_str(allow) {
        resp.headers_mut().insert(http::header::ALLOW, v);
    }
    resp
}
