//! The router, built from the route table, and the handlers by resource.
//!
//! [`app`] turns every row of [`ROUTES`] into one endpoint: the handler
//! its [`Route`] names (one exhaustive match, [`endpoint`]) wrapped in
//! [`super::middleware::entry`] with the row, so no endpoint exists
//! without its authorization rule. Per path, a method no row names answers
//! 405 with `Allow` (axum would otherwise serve `HEAD` with a `GET`
//! handler, and answer 405 without a body); any other path 404.
//!
//! # Layout
//!
//! - [`ops`]: index, health, readiness, metrics, the cluster, the JWKS.
//! - [`notify`]: sending notifications.
//! - [`rooms`]: room configuration, stats, a device's status, the public audit log.
//! - [`sessions`]: admission verification, session release and renewal.
//! - [`devices`]: registration and the device WebSocket upgrade.
//! - [`stream`]: the device HTTP stream (SSE) and its POSTed frames.
//! - [`admin`]: admin login, the admin API and the admin feed's upgrade.
//! - [`pages`]: the waiting page, the console, assets, the demo target.

pub mod admin;
pub mod devices;
pub mod notify;
pub mod ops;
pub mod pages;
pub mod rooms;
pub mod sessions;
pub mod stream;

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use http::Method;
use pace_protocol::ErrorCode;

use super::middleware::{Entry, edge, entry, method_not_allowed};
use crate::error::ApiError;
use crate::node::NodeRef;
use crate::routes::{ROUTES, Route, RouteSpec};

/// The node's HTTP application: every route of [`ROUTES`], behind the
/// edge middleware, over `node`.
pub fn app(node: NodeRef) -> Router {
    let mut router = Router::new();
    let mut paths: Vec<&str> = Vec::new();
    for spec in ROUTES {
        if paths.contains(&spec.path) {
            continue;
        }
        paths.push(spec.path);
        let rows: Vec<&'static RouteSpec> = ROUTES.iter().filter(|s| s.path == spec.path).collect();
        let mut methods = MethodRouter::new();
        for row in &rows {
            let entry_layer = axum::middleware::from_fn_with_state(
                Entry {
                    node: node.clone(),
                    spec: row,
                },
                entry,
            );
            methods = methods.merge(endpoint(row).route_layer(entry_layer));
        }
        let allow = rows
            .iter()
            .map(|r| r.method.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let has = |m: Method| rows.iter().any(|r| r.method == m);
        if has(Method::GET) && !has(Method::HEAD) {
            let allow = allow.clone();
            methods = methods.on(MethodFilter::HEAD, move || {
                let allow = allow.clone();
                async move { method_not_allowed(&allow) }
            });
        }
        methods = methods.fallback(move || {
            let allow = allow.clone();
            async move { method_not_allowed(&allow) }
        });
        router = router.route(spec.path, methods);
    }
    router
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(node.clone(), edge))
        .with_state(node)
}

/// 404 for a path no route has.
pub async fn not_found() -> Response {
    ApiError::new(ErrorCode::NotFound, "no such route").into_response()
}

/// The method filter of a table row's method.
fn filter(method: &Method) -> MethodFilter {
    match *method {
        Method::GET => MethodFilter::GET,
        Method::HEAD => MethodFilter::HEAD,
        Method::POST => MethodFilter::POST,
        Method::PUT => MethodFilter::PUT,
        Method::DELETE => MethodFilter::DELETE,
        // The table is a constant; its unit test builds the router.
        _ => panic!("the route table names method {method}, which has no filter here"),
    }
}

/// The handler of one row.
fn endpoint(spec: &RouteSpec) -> MethodRouter<NodeRef> {
    use Route as R;
    let f = filter(&spec.method);
    match spec.route {
        R::Index => on(f, ops::index),
        R::Health => on(f, ops::health),
        R::Ready => on(f, ops::ready),
        R::Metrics => on(f, ops::metrics),
        R::Cluster => on(f, ops::cluster),
        R::Jwks => on(f, ops::jwks),
        R::DeviceWs => on(f, devices::upgrade),
        R::DeviceStream => on(f, stream::open),
        R::StreamSend => on(f, stream::send),
        R::Register => on(f, devices::register),
        R::Notify => on(f, notify::notify),
        R::Verify => on(f, sessions::verify),
        R::Release => on(f, sessions::release),
        R::Renew => on(f, sessions::renew),
        R::PutRoom => on(f, rooms::put_room),
        R::GetRoom => on(f, rooms::get_room),
        R::RoomStats => on(f, rooms::stats),
        R::RoomStatus => on(f, rooms::status),
        R::RoomLog => on(f, rooms::public_log),
        R::AdminLogin => on(f, admin::login),
        R::AdminWs => on(f, admin::feed),
        R::AdminWsTicket => on(f, admin::ws_ticket),
        R::AdminRooms => on(f, admin::list_rooms),
        R::AdminPutRoom => on(f, admin::put_room),
        R::AdminGetRoom => on(f, admin::get_room),
        R::AdminRoomStats => on(f, admin::room_stats),
        R::AdminRoomLog => on(f, admin::room_log),
        R::AdminRevokeSession => on(f, admin::revoke_session),
        R::AdminDevices => on(f, admin::devices),
        R::AdminDepartments => on(f, admin::departments),
        R::AdminKick => on(f, admin::kick),
        R::AdminForget => on(f, admin::forget),
        R::AdminCluster => on(f, admin::cluster),
        R::DemoTarget => on(f, pages::demo_target),
        R::RoomPage => on(f, pages::room_page),
        R::AdminPage => on(f, pages::admin_page),
        R::Asset => on(f, pages::asset),
    }
}
