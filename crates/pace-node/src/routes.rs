//! The route table: every HTTP entry point of a node, with the
//! authorization [`Rule`] it requires, in one list.
//!
//! [`crate::api::handle`] resolves a request against [`ROUTES`] (a path
//! that exists for other methods answers 405 with `Allow`, any other 404),
//! runs [`crate::auth::authorize`] with the route's rule, and only then
//! calls the handler with the principal. A route cannot be added without a
//! rule, and the authorization-matrix test walks this table, so a new
//! route without an expectation fails it.

use http::Method;

use crate::auth::Rule;

/// One entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// `GET /`: a plain-text index.
    Index,
    /// `GET /health`.
    Health,
    /// `GET /ready`.
    Ready,
    /// `GET /metrics`.
    Metrics,
    /// `GET /ws`: the device WebSocket.
    DeviceWs,
    /// `GET /admin/ws`: the admin console's live feed.
    AdminWs,
    /// `POST /api/v1/notify`.
    Notify,
    /// `GET /api/v1/cluster`.
    Cluster,
    /// `GET /.well-known/jwks.json`.
    Jwks,
    /// `POST /api/v1/admissions/verify`.
    Verify,
    /// `POST /api/v1/sessions/release`.
    Release,
    /// `POST /api/v1/sessions/renew`.
    Renew,
    /// `POST /api/v1/devices/register`.
    Register,
    /// `POST /api/v1/admin/login`.
    AdminLogin,
    /// `POST /api/v1/admin/ws-ticket`.
    AdminWsTicket,
    /// `GET /api/v1/admin/rooms`.
    AdminRooms,
    /// `PUT /api/v1/admin/rooms/{room}`.
    AdminPutRoom,
    /// `GET /api/v1/admin/rooms/{room}`.
    AdminGetRoom,
    /// `GET /api/v1/admin/rooms/{room}/stats`.
    AdminRoomStats,
    /// `GET /api/v1/admin/rooms/{room}/log`: the room's audit log.
    AdminRoomLog,
    /// `POST /api/v1/admin/rooms/{room}/sessions/revoke`.
    AdminRevokeSession,
    /// `GET /api/v1/admin/devices`.
    AdminDevices,
    /// `PUT /api/v1/admin/devices/{device}/departments`.
    AdminDepartments,
    /// `POST /api/v1/admin/devices/{device}/kick`.
    AdminKick,
    /// `DELETE /api/v1/admin/devices/{device}`.
    AdminForget,
    /// `GET /api/v1/admin/cluster`.
    AdminCluster,
    /// `PUT /api/v1/rooms/{room}`.
    PutRoom,
    /// `GET /api/v1/rooms/{room}`.
    GetRoom,
    /// `GET /api/v1/rooms/{room}/stats`.
    RoomStats,
    /// `GET /api/v1/rooms/{room}/status`.
    RoomStatus,
    /// `GET /api/v1/rooms/{room}/log`: the public, anonymised audit log.
    RoomLog,
    /// `GET /demo/target`.
    DemoTarget,
    /// `GET|HEAD /r/{room}`: the waiting page.
    RoomPage,
    /// `GET|HEAD /admin`: the console page.
    AdminPage,
    /// `GET|HEAD /assets/{file}`.
    Asset,
}

impl Route {
    /// The `route` label of `pace_http_requests_total`.
    pub fn label(self) -> &'static str {
        match self {
            Route::Index => "index",
            Route::Health => "health",
            Route::Ready => "ready",
            Route::Metrics => "metrics",
            Route::DeviceWs => "ws",
            Route::AdminWs => "admin_ws",
            Route::Notify => "notify",
            Route::Cluster => "cluster",
            Route::Jwks => "jwks",
            Route::Verify => "verify",
            Route::Release | Route::Renew => "session",
            Route::Register => "device_register",
            Route::AdminLogin => "admin_login",
            Route::AdminWsTicket
            | Route::AdminRooms
            | Route::AdminPutRoom
            | Route::AdminGetRoom
            | Route::AdminRoomStats
            | Route::AdminRoomLog
            | Route::AdminRevokeSession
            | Route::AdminDevices
            | Route::AdminDepartments
            | Route::AdminKick
            | Route::AdminForget
            | Route::AdminCluster => "admin",
            Route::PutRoom
            | Route::GetRoom
            | Route::RoomStats
            | Route::RoomStatus
            | Route::RoomLog => "rooms",
            Route::DemoTarget => "demo",
            Route::RoomPage => "room_page",
            Route::AdminPage => "admin_page",
            Route::Asset => "asset",
        }
    }
}

/// One row of the route table.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// The method.
    pub method: Method,
    /// The path: `/`-separated segments; `{name}` matches one non-empty
    /// segment, `{*name}` the non-empty rest of the path.
    pub path: &'static str,
    /// Which entry point.
    pub route: Route,
    /// Who may call it.
    pub rule: Rule,
}

const fn r(method: Method, path: &'static str, route: Route, rule: Rule) -> RouteSpec {
    RouteSpec {
        method,
        path,
        route,
        rule,
    }
}

/// Every HTTP entry point of a node.
pub const ROUTES: &[RouteSpec] = &[
    r(Method::GET, "/", Route::Index, Rule::Public),
    r(Method::GET, "/health", Route::Health, Rule::Public),
    r(Method::GET, "/ready", Route::Ready, Rule::Public),
    r(Method::GET, "/metrics", Route::Metrics, Rule::Public),
    r(Method::GET, "/ws", Route::DeviceWs, Rule::Device),
    r(Method::GET, "/admin/ws", Route::AdminWs, Rule::AdminFeed),
    r(
        Method::POST,
        "/api/v1/notify",
        Route::Notify,
        Rule::AdminOrService,
    ),
    r(
        Method::GET,
        "/api/v1/cluster",
        Route::Cluster,
        Rule::Service,
    ),
    r(
        Method::GET,
        "/.well-known/jwks.json",
        Route::Jwks,
        Rule::Public,
    ),
    r(
        Method::POST,
        "/api/v1/admissions/verify",
        Route::Verify,
        Rule::Public,
    ),
    r(
        Method::POST,
        "/api/v1/sessions/release",
        Route::Release,
        Rule::SessionHolder,
    ),
    r(
        Method::POST,
        "/api/v1/sessions/renew",
        Route::Renew,
        Rule::SessionHolder,
    ),
    r(
        Method::POST,
        "/api/v1/devices/register",
        Route::Register,
        Rule::Registration,
    ),
    r(
        Method::POST,
        "/api/v1/admin/login",
        Route::AdminLogin,
        Rule::Public,
    ),
    r(
        Method::POST,
        "/api/v1/admin/ws-ticket",
        Route::AdminWsTicket,
        Rule::Admin,
    ),
    r(
        Method::GET,
        "/api/v1/admin/rooms",
        Route::AdminRooms,
        Rule::Admin,
    ),
    r(
        Method::PUT,
        "/api/v1/admin/rooms/{room}",
        Route::AdminPutRoom,
        Rule::Admin,
    ),
    r(
        Method::GET,
        "/api/v1/admin/rooms/{room}",
        Route::AdminGetRoom,
        Rule::Admin,
    ),
    r(
        Method::GET,
        "/api/v1/admin/rooms/{room}/stats",
        Route::AdminRoomStats,
        Rule::Admin,
    ),
    r(
        Method::GET,
        "/api/v1/admin/rooms/{room}/log",
        Route::AdminRoomLog,
        Rule::Admin,
    ),
    r(
        Method::POST,
        "/api/v1/admin/rooms/{room}/sessions/revoke",
        Route::AdminRevokeSession,
        Rule::AdminOrService,
    ),
    r(
        Method::GET,
        "/api/v1/admin/devices",
        Route::AdminDevices,
        Rule::Admin,
    ),
    r(
        Method::PUT,
        "/api/v1/admin/devices/{device}/departments",
        Route::AdminDepartments,
        Rule::AdminOrService,
    ),
    r(
        Method::POST,
        "/api/v1/admin/devices/{device}/kick",
        Route::AdminKick,
        Rule::AdminOrService,
    ),
    r(
        Method::DELETE,
        "/api/v1/admin/devices/{device}",
        Route::AdminForget,
        Rule::AdminOrService,
    ),
    r(
        Method::GET,
        "/api/v1/admin/cluster",
        Route::AdminCluster,
        Rule::Admin,
    ),
    r(
        Method::PUT,
        "/api/v1/rooms/{room}",
        Route::PutRoom,
        Rule::Service,
    ),
    r(
        Method::GET,
        "/api/v1/rooms/{room}",
        Route::GetRoom,
        Rule::Public,
    ),
    r(
        Method::GET,
        "/api/v1/rooms/{room}/stats",
        Route::RoomStats,
        Rule::Service,
    ),
    r(
        Method::GET,
        "/api/v1/rooms/{room}/status",
        Route::RoomStatus,
        Rule::Device,
    ),
    r(
        Method::GET,
        "/api/v1/rooms/{room}/log",
        Route::RoomLog,
        Rule::Public,
    ),
    r(Method::GET, "/demo/target", Route::DemoTarget, Rule::Public),
    r(Method::GET, "/r/{*room}", Route::RoomPage, Rule::Public),
    r(Method::HEAD, "/r/{*room}", Route::RoomPage, Rule::Public),
    r(Method::GET, "/admin", Route::AdminPage, Rule::Public),
    r(Method::HEAD, "/admin", Route::AdminPage, Rule::Public),
    r(Method::GET, "/admin/", Route::AdminPage, Rule::Public),
    r(Method::HEAD, "/admin/", Route::AdminPage, Rule::Public),
    r(Method::GET, "/assets/{*file}", Route::Asset, Rule::Public),
    r(Method::HEAD, "/assets/{*file}", Route::Asset, Rule::Public),
];

/// The values a path's `{…}` segments matched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    /// `{room}` (or `{*room}`).
    pub room: String,
    /// `{device}`.
    pub device: String,
    /// `{*file}`.
    pub file: String,
}

/// What a request resolves to.
#[derive(Debug)]
pub enum Resolved {
    /// This route, with the path's parameters.
    Found(&'static RouteSpec, Params),
    /// The path exists for these methods only.
    MethodNotAllowed(Vec<Method>),
    /// No route has this path.
    NotFound,
}

/// Matches `path` against `pattern`; the parameters when it does.
fn matches(pattern: &str, path: &str) -> Option<Params> {
    let mut params = Params::default();
    let mut rest = path;
    let mut segments = pattern.split('/').peekable();
    let mut first = true;
    while let Some(seg) = segments.next() {
        if !first {
            rest = rest.strip_prefix('/')?;
        }
        first = false;
        if let Some(name) = seg.strip_prefix("{*").and_then(|s| s.strip_suffix('}')) {
            if rest.is_empty() || segments.peek().is_some() {
                return None;
            }
            set(&mut params, name, rest);
            return Some(params);
        }
        let (here, after) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if here.is_empty() {
                return None;
            }
            set(&mut params, name, here);
        } else if seg != here {
            return None;
        }
        rest = after;
    }
    rest.is_empty().then_some(params)
}

fn set(params: &mut Params, name: &str, value: &str) {
    match name {
        "room" => params.room = value.to_owned(),
        "device" => params.device = value.to_owned(),
        _ => params.file = value.to_owned(),
    }
}

/// Resolves a request's method and path against [`ROUTES`].
pub fn resolve(method: &Method, path: &str) -> Resolved {
    let mut allowed = Vec::new();
    for spec in ROUTES {
        if let Some(params) = matches(spec.path, path) {
            if spec.method == *method {
                return Resolved::Found(spec, params);
            }
            if !allowed.contains(&spec.method) {
                allowed.push(spec.method.clone());
            }
        }
    }
    if allowed.is_empty() {
        Resolved::NotFound
    } else {
        Resolved::MethodNotAllowed(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(method: Method, path: &str) -> (Route, Params) {
        match resolve(&method, path) {
            Resolved::Found(spec, p) => (spec.route, p),
            other => panic!("{method} {path}: {other:?}"),
        }
    }

    #[test]
    fn paths_resolve_with_their_parameters() {
        assert_eq!(found(Method::GET, "/").0, Route::Index);
        let (route, p) = found(Method::GET, "/api/v1/rooms/sale/status");
        assert_eq!((route, p.room.as_str()), (Route::RoomStatus, "sale"));
        let (route, p) = found(Method::PUT, "/api/v1/admin/devices/kiosk:7/departments");
        assert_eq!(
            (route, p.device.as_str()),
            (Route::AdminDepartments, "kiosk:7")
        );
        let (route, p) = found(Method::GET, "/assets/js/room.js");
        assert_eq!((route, p.file.as_str()), (Route::Asset, "js/room.js"));
        assert_eq!(found(Method::HEAD, "/admin/").0, Route::AdminPage);
        assert_eq!(
            found(Method::DELETE, "/api/v1/admin/devices/d1").0,
            Route::AdminForget
        );
    }

    #[test]
    fn other_methods_and_unknown_paths() {
        match resolve(&Method::POST, "/api/v1/rooms/sale") {
            Resolved::MethodNotAllowed(m) => assert_eq!(m, [Method::PUT, Method::GET]),
            other => panic!("{other:?}"),
        }
        for path in [
            "/nope",
            "/api/v1/rooms/",
            "/api/v1/rooms/sale/other",
            "/api/v1/rooms//status",
            "/assets/",
            "/healthz",
            "/health/",
        ] {
            assert!(
                matches!(resolve(&Method::GET, path), Resolved::NotFound),
                "{path}"
            );
        }
    }

    #[test]
    fn every_route_has_a_row_and_rows_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for spec in ROUTES {
            assert!(
                seen.insert((spec.method.clone(), spec.path)),
                "{} {} twice",
                spec.method,
                spec.path
            );
            match matches(
                spec.path,
                &spec.path.replace("{*", "{").replace(['{', '}'], ""),
            ) {
                Some(_) => {}
                None => panic!("{} does not match itself", spec.path),
            }
        }
    }
}
