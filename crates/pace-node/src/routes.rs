//! The route table: every HTTP entry point of a node, with the
//! authorization [`Rule`] it requires, in one list.
//!
//! The HTTP layer's router is built from [`ROUTES`] and nothing else
//! ([`crate::http::app`]): each row becomes one endpoint wrapped in the
//! authorization step for its rule, and its handler is chosen by its
//! [`Route`] in one exhaustive match; a path that exists for other methods
//! answers 405 with `Allow` from the same rows, any other path 404. A
//! route cannot be added without a rule, and the authorization-matrix test
//! walks this table, so a new route without an expectation fails it.

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
    /// `GET /stream`: the device HTTP stream (SSE), the WebSocket's fallback.
    DeviceStream,
    /// `POST /stream/send`: frames from a stream device.
    StreamSend,
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
            Route::DeviceStream => "stream",
            Route::StreamSend => "stream_send",
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
    r(Method::GET, "/stream", Route::DeviceStream, Rule::Device),
    r(
        Method::POST,
        "/stream/send",
        Route::StreamSend,
        Rule::Device,
    ),
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

/// Matches `path` against `pattern`; the parameters when it does (the
/// router matched already; this reads the values as sent, and refuses
/// what the table's patterns do not take, such as an empty segment).
pub fn params(pattern: &str, path: &str) -> Option<Params> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn found(path: &str) -> Params {
        let pattern = ROUTES
            .iter()
            .map(|s| s.path)
            .find(|p| params(p, path).is_some())
            .unwrap_or_else(|| panic!("{path}: no pattern"));
        params(pattern, path).unwrap()
    }

    #[test]
    fn parameters_are_read_as_sent() {
        assert_eq!(found("/api/v1/rooms/sale/status").room, "sale");
        assert_eq!(
            found("/api/v1/admin/devices/kiosk:7/departments").device,
            "kiosk:7"
        );
        assert_eq!(found("/assets/js/room.js").file, "js/room.js");
        assert_eq!(found("/r/sa%6Ce").room, "sa%6Ce");
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
                ROUTES.iter().all(|s| params(s.path, path).is_none()),
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
            match params(
                spec.path,
                &spec.path.replace("{*", "{").replace(['{', '}'], ""),
            ) {
                Some(_) => {}
                None => panic!("{} does not match itself", spec.path),
            }
        }
    }
}
