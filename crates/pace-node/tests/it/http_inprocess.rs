//! The REST routes in process: the node's router ([`pace_node::http::app`])
//! over a node with memory stores, called with `tower::ServiceExt::oneshot`
//! — no socket, no server loop. Bodies are read through the protocol's
//! REST types, so a shape the contract does not describe fails here.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use pace_node::NodeConfig;
use pace_node::accounts::{TenantId, UserName, sign_admin_token};
use pace_node::node::NodeRef;
use pace_protocol::rest;
use pace_protocol::{ErrorBody, ErrorCode};
use serde::de::DeserializeOwned;
use serde_json::json;
use tower::ServiceExt;

use crate::support;

/// A node over memory stores and its router; `f` changes the test config.
fn app_with(f: impl FnOnce(&mut NodeConfig)) -> (Router, NodeRef) {
    let mut config = support::config();
    f(&mut config);
    let node = pace_node::server::build(config).unwrap();
    (pace_node::http::app(node.clone()), node)
}

fn app() -> (Router, NodeRef) {
    app_with(|_| {})
}

/// One answer: status, headers, body bytes.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: bytes::Bytes,
}

impl Answer {
    fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: {e}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The error code of an error answer.
    fn error(&self) -> ErrorCode {
        self.json::<ErrorBody>().error.code
    }
}

async fn call(
    app: &Router,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut req = req.body(Body::from(body.to_owned())).unwrap();
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(peer));
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

const SERVICE: (&str, &str) = ("authorization", "Bearer test-service-key-0123456789");

fn admin_bearer(node: &NodeRef, tenant: &str) -> String {
    let (token, _) = sign_admin_token(
        &node.keys,
        &TenantId::parse(tenant).unwrap(),
        &UserName::parse("alice").unwrap(),
        pace_node::admission::unix_now(),
        Duration::from_secs(600),
    )
    .unwrap();
    format!("Bearer {token}")
}

const ROOM: &str = r#"{"capacity": 2, "admit_per_minute": null, "session_ttl_secs": 60,
    "target_url": "https://shop.example/", "state": "open", "pow_difficulty": 0}"#;

#[tokio::test]
async fn health_ready_and_the_index() {
    let (app, node) = app();
    let a = call(&app, Method::GET, "/health", &[], "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json::<rest::Health>().node_id, "test-node");
    // Not started: not ready, and says why.
    let a = call(&app, Method::GET, "/ready", &[], "").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    let ready: rest::Ready = a.json();
    assert!(!ready.ready && !ready.draining && ready.store.up);
    node.set_started();
    let a = call(&app, Method::GET, "/ready", &[], "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.json::<rest::Ready>().ready);
    let a = call(&app, Method::GET, "/", &[], "").await;
    assert_eq!(a.headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    assert!(String::from_utf8_lossy(&a.body).starts_with("Pace node test-node"));
}

#[tokio::test]
async fn unknown_paths_and_methods_answer_as_the_table_says() {
    let (app, _) = app();
    for path in [
        "/nope",
        "/health/",
        "/api/v1/rooms/",
        "/api/v1/rooms//status",
        "/assets/",
    ] {
        let a = call(&app, Method::GET, path, &[], "").await;
        assert_eq!(
            (a.status, a.error()),
            (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            "{path}"
        );
    }
    // 405 lists the path's methods in table order; HEAD is not GET.
    for (method, path, allow) in [
        (Method::POST, "/health", "GET"),
        (Method::HEAD, "/health", "GET"),
        (Method::POST, "/api/v1/rooms/sale", "PUT, GET"),
        (Method::DELETE, "/admin/", "GET, HEAD"),
        (Method::OPTIONS, "/metrics", "GET"),
    ] {
        let a = call(&app, method.clone(), path, &[], "").await;
        assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(a.headers[header::ALLOW], allow, "{method} {path}");
        if method != Method::HEAD {
            assert_eq!(a.error(), ErrorCode::MethodNotAllowed);
            let body: ErrorBody = a.json();
            assert!(body.error.message.contains(allow), "{}", body.error.message);
        }
    }
    // Asset and page routes take HEAD.
    let a = call(&app, Method::HEAD, "/assets/room.js", &[], "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.is_empty());
}

#[tokio::test]
async fn rooms_need_the_service_key_to_change_and_answer_the_contract() {
    let (app, _) = app();
    let a = call(&app, Method::PUT, "/api/v1/rooms/sale", &[], ROOM).await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized)
    );
    assert_eq!(a.headers[header::WWW_AUTHENTICATE], "Bearer");
    let a = call(&app, Method::PUT, "/api/v1/rooms/sale", &[SERVICE], ROOM).await;
    assert_eq!(a.status, StatusCode::OK);
    let room: pace_protocol::room::Room = a.json();
    assert_eq!(room.config.capacity, 2);
    // Public read.
    let a = call(&app, Method::GET, "/api/v1/rooms/sale", &[], "").await;
    assert_eq!(a.json::<pace_protocol::room::Room>(), room);
    let a = call(&app, Method::GET, "/api/v1/rooms/gone", &[], "").await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::NOT_FOUND, ErrorCode::NoSuchRoom)
    );
    // A percent-encoded id is not decoded into a valid one.
    let a = call(&app, Method::GET, "/api/v1/rooms/s%61le", &[], "").await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::NOT_FOUND, ErrorCode::NoSuchRoom)
    );
    // Stats: service key only.
    let a = call(&app, Method::GET, "/api/v1/rooms/sale/stats", &[], "").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = call(
        &app,
        Method::GET,
        "/api/v1/rooms/sale/stats",
        &[SERVICE],
        "",
    )
    .await;
    let stats: rest::RoomStats = a.json();
    assert_eq!((stats.waiting, stats.active), (0, 0));
    // A refused configuration is the caller's.
    let a = call(
        &app,
        Method::PUT,
        "/api/v1/rooms/sale",
        &[SERVICE],
        r#"{"capacity": 1}"#,
    )
    .await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::BAD_REQUEST, ErrorCode::BadRequest)
    );
    // The public log of a room with no sealed entry yet is empty JSON Lines.
    let a = call(&app, Method::GET, "/api/v1/rooms/sale/log", &[], "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        a.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/jsonl")
    );
}

#[tokio::test]
async fn bodies_are_limited_and_parsed() {
    let (app, _) = app_with(|c| c.limits.max_message_bytes = 1024);
    let big = json!({"scope": "all", "event": "e", "data": "x".repeat(2000)}).to_string();
    let a = call(&app, Method::POST, "/api/v1/notify", &[SERVICE], &big).await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge)
    );
    let a = call(
        &app,
        Method::POST,
        "/api/v1/notify",
        &[SERVICE],
        "{not json",
    )
    .await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::BAD_REQUEST, ErrorCode::BadRequest)
    );
    let a = call(
        &app,
        Method::POST,
        "/api/v1/notify",
        &[SERVICE],
        r#"{"scope":"all","event":"e","data":{"n":1}}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let accepted: rest::NotifyAccepted = a.json();
    assert_eq!(accepted.seq, 1);
    // Without a credential: refused before the body is read.
    let a = call(&app, Method::POST, "/api/v1/notify", &[], &big).await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized)
    );
}

#[tokio::test]
async fn a_device_registers_and_reads_its_own_status_only() {
    let (app, _) = app_with(|c| c.devices.insecure_anonymous_devices = false);
    call(&app, Method::PUT, "/api/v1/rooms/sale", &[SERVICE], ROOM).await;
    let a = call(
        &app,
        Method::POST,
        "/api/v1/devices/register",
        &[],
        r#"{"device_id": "kiosk-1", "type": "kiosk"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(a.headers[header::CACHE_CONTROL], "no-store");
    let reg: rest::RegisterResponse = a.json();
    assert_eq!(reg.device_id.as_str(), "kiosk-1");
    let bearer = format!("Bearer {}", reg.token);
    let a = call(
        &app,
        Method::GET,
        "/api/v1/rooms/sale/status",
        &[("authorization", &bearer), ("x-device-id", "kiosk-1")],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(matches!(
        a.json::<rest::RoomStatus>(),
        rest::RoomStatus::Unknown { .. }
    ));
    // No token, or the token for another id.
    let a = call(
        &app,
        Method::GET,
        "/api/v1/rooms/sale/status",
        &[("x-device-id", "kiosk-1")],
        "",
    )
    .await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::UNAUTHORIZED, ErrorCode::MissingDeviceToken)
    );
    let a = call(
        &app,
        Method::GET,
        "/api/v1/rooms/sale/status",
        &[("authorization", &bearer), ("x-device-id", "kiosk-2")],
        "",
    )
    .await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::UNAUTHORIZED, ErrorCode::DeviceTokenMismatch)
    );
    // The id is taken for anyone without its token.
    let a = call(
        &app,
        Method::POST,
        "/api/v1/devices/register",
        &[],
        r#"{"device_id": "kiosk-1"}"#,
    )
    .await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::CONFLICT, ErrorCode::DeviceExists)
    );
    // A refresh with the token.
    let a = call(
        &app,
        Method::POST,
        "/api/v1/devices/register",
        &[("authorization", &bearer)],
        r#"{"device_id": "kiosk-1"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    a.json::<rest::RegisterResponse>();
}

#[tokio::test]
async fn the_admin_api_answers_its_tenant_and_only_its_own_origin() {
    let (app, node) = app();
    let acme = admin_bearer(&node, "acme");
    let globex = admin_bearer(&node, "globex");
    let a = call(
        &app,
        Method::PUT,
        "/api/v1/admin/rooms/sale",
        &[("authorization", &acme)],
        ROOM,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let a = call(
        &app,
        Method::GET,
        "/api/v1/admin/rooms",
        &[("authorization", &acme)],
        "",
    )
    .await;
    let rooms: rest::Rooms = a.json();
    assert_eq!(rooms.rooms.len(), 1);
    // Another tenant's admin sees nothing of it.
    let a = call(
        &app,
        Method::GET,
        "/api/v1/admin/rooms",
        &[("authorization", &globex)],
        "",
    )
    .await;
    assert!(a.json::<rest::Rooms>().rooms.is_empty());
    let a = call(
        &app,
        Method::GET,
        "/api/v1/admin/rooms/sale/stats",
        &[("authorization", &globex)],
        "",
    )
    .await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::NOT_FOUND, ErrorCode::NoSuchRoom)
    );
    let a = call(
        &app,
        Method::GET,
        "/api/v1/admin/rooms/sale/stats",
        &[("authorization", &acme)],
        "",
    )
    .await;
    a.json::<rest::RoomStats>();
    // The service key is not an admin; a device's token neither.
    let a = call(&app, Method::GET, "/api/v1/admin/rooms", &[SERVICE], "").await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized)
    );
    // A ticket for the feed.
    let a = call(
        &app,
        Method::POST,
        "/api/v1/admin/ws-ticket",
        &[("authorization", &acme)],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    a.json::<rest::TicketResponse>();
    // A foreign page: refused before anything else, even with a token.
    let a = call(
        &app,
        Method::GET,
        "/api/v1/admin/rooms",
        &[
            ("authorization", &acme),
            ("origin", "https://evil.example"),
            ("host", "node.example"),
        ],
        "",
    )
    .await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::FORBIDDEN, ErrorCode::OriginNotAllowed)
    );
    // A wrong password answers like an unknown account.
    let a = call(
        &app,
        Method::POST,
        "/api/v1/admin/login",
        &[],
        r#"{"tenant": "acme", "user": "alice", "password": "nope"}"#,
    )
    .await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::UNAUTHORIZED, ErrorCode::InvalidCredentials)
    );
}

#[tokio::test]
async fn cors_preflight_and_request_counts_by_matched_route() {
    let (app, _) = app_with(|c| c.origins.allowed_origins = vec!["https://shop.example".into()]);
    let a = call(
        &app,
        Method::OPTIONS,
        "/api/v1/devices/register",
        &[("origin", "https://shop.example"), ("host", "node.example")],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(
        a.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://shop.example"
    );
    assert_eq!(a.headers[header::ALLOW], "POST, OPTIONS");
    let a = call(
        &app,
        Method::OPTIONS,
        "/api/v1/devices/register",
        &[("origin", "https://evil.example"), ("host", "node.example")],
        "",
    )
    .await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::FORBIDDEN, ErrorCode::OriginNotAllowed)
    );
    assert!(a.headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    call(&app, Method::GET, "/nope", &[], "").await;
    call(&app, Method::GET, "/api/v1/rooms/x", &[], "").await;
    let a = call(&app, Method::GET, "/metrics", &[], "").await;
    let text = String::from_utf8_lossy(&a.body);
    for sample in [
        r#"pace_http_requests_total{route="cors_preflight",status="2xx"} 1"#,
        r#"pace_http_requests_total{route="cors_preflight",status="4xx"} 1"#,
        r#"pace_http_requests_total{route="other",status="4xx"} 1"#,
        r#"pace_http_requests_total{route="rooms",status="4xx"} 1"#,
    ] {
        assert!(text.contains(sample), "{sample} missing from\n{text}");
    }
}

#[tokio::test]
async fn sessions_verify_release_and_renew_by_their_rules() {
    let (app, node) = app();
    call(&app, Method::PUT, "/api/v1/rooms/sale", &[SERVICE], ROOM).await;
    // Verify is public and answers a refusal as a body, not a status.
    let a = call(
        &app,
        Method::POST,
        "/api/v1/admissions/verify",
        &[],
        r#"{"token": "junk"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let v: rest::VerifyResponse = a.json();
    assert!(!v.valid && v.error.is_some());
    // An admission signed with the node's keys, for a session that does
    // not exist: sound, but over.
    let claims = pace_node::admission::AdmissionClaims::new(
        "pace",
        "sale",
        "kiosk-1",
        "s-1",
        pace_node::admission::unix_now(),
        Duration::from_secs(60),
    );
    let token = node.keys.sign(&claims).unwrap();
    let body = json!({ "token": token }).to_string();
    let a = call(&app, Method::POST, "/api/v1/admissions/verify", &[], &body).await;
    let v: rest::VerifyResponse = a.json();
    assert_eq!(
        (v.valid, v.error.as_deref()),
        (false, Some("session_ended"))
    );
    // Release and renew need a session holder's credential.
    for path in ["/api/v1/sessions/release", "/api/v1/sessions/renew"] {
        let a = call(&app, Method::POST, path, &[], &body).await;
        assert_eq!(
            (a.status, a.error()),
            (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            "{path}"
        );
    }
    let a = call(
        &app,
        Method::POST,
        "/api/v1/sessions/release",
        &[SERVICE],
        &body,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(!a.json::<rest::ReleaseResponse>().released);
    let a = call(
        &app,
        Method::POST,
        "/api/v1/sessions/renew",
        &[SERVICE],
        &body,
    )
    .await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::NOT_FOUND, ErrorCode::NotFound)
    );
    // Another tenant's admin: as if there were no session.
    let globex = admin_bearer(&node, "globex");
    let a = call(
        &app,
        Method::POST,
        "/api/v1/sessions/release",
        &[("authorization", &globex)],
        &body,
    )
    .await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::NOT_FOUND, ErrorCode::NotFound)
    );
}

#[tokio::test]
async fn operations_routes_answer_their_contract() {
    let (app, node) = app();
    let a = call(&app, Method::GET, "/api/v1/cluster", &[], "").await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized)
    );
    let a = call(&app, Method::GET, "/api/v1/cluster", &[SERVICE], "").await;
    assert_eq!(a.json::<rest::Cluster>().store.as_deref(), Some("memory"));
    let a = call(&app, Method::GET, "/.well-known/jwks.json", &[], "").await;
    assert_eq!(a.headers[header::CACHE_CONTROL], "public, max-age=300");
    let jwks: pace_node::admission::Jwks = a.json();
    assert!(!jwks.keys.is_empty());
    let acme = admin_bearer(&node, "acme");
    let a = call(
        &app,
        Method::GET,
        "/api/v1/admin/cluster",
        &[("authorization", &acme)],
        "",
    )
    .await;
    assert_eq!(a.json::<rest::Cluster>().store, None);
}

#[tokio::test]
async fn admins_manage_only_their_tenants_devices() {
    let (app, node) = app_with(|c| c.devices.insecure_anonymous_devices = false);
    let tenant = pace_node::accounts::Tenant {
        id: TenantId::parse("acme").unwrap(),
        name: "Acme".into(),
        allowed_origins: vec![],
        created_at: 0,
    };
    node.accounts.create_tenant(&tenant).await.unwrap();
    let a = call(
        &app,
        Method::POST,
        "/api/v1/devices/register",
        &[],
        r#"{"device_id": "kiosk-1", "tenant": "acme"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let acme = admin_bearer(&node, "acme");
    let globex = admin_bearer(&node, "globex");
    let a = call(
        &app,
        Method::GET,
        "/api/v1/admin/devices?q=kiosk",
        &[("authorization", &acme)],
        "",
    )
    .await;
    let list: rest::Devices = a.json();
    assert_eq!(list.devices.len(), 1);
    let a = call(
        &app,
        Method::GET,
        "/api/v1/admin/devices",
        &[("authorization", &globex)],
        "",
    )
    .await;
    assert!(a.json::<rest::Devices>().devices.is_empty());
    let path = "/api/v1/admin/devices/kiosk-1/departments";
    let a = call(
        &app,
        Method::PUT,
        path,
        &[("authorization", &globex)],
        r#"{"departments": ["it"]}"#,
    )
    .await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::NOT_FOUND, ErrorCode::NotFound)
    );
    let a = call(
        &app,
        Method::PUT,
        path,
        &[("authorization", &acme)],
        r#"{"departments": ["it"]}"#,
    )
    .await;
    let d: rest::DepartmentsResponse = a.json();
    assert_eq!(
        d.departments.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
        ["acme:it"]
    );
    let a = call(
        &app,
        Method::POST,
        "/api/v1/admin/devices/kiosk-1/kick",
        &[("authorization", &acme)],
        "",
    )
    .await;
    assert!(a.json::<rest::KickResponse>().kicked);
    let a = call(
        &app,
        Method::DELETE,
        "/api/v1/admin/devices/kiosk-1",
        &[SERVICE],
        "",
    )
    .await;
    assert!(a.json::<rest::ForgetResponse>().forgotten);
    let a = call(
        &app,
        Method::DELETE,
        "/api/v1/admin/devices/kiosk-1",
        &[SERVICE],
        "",
    )
    .await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::NOT_FOUND, ErrorCode::NotFound)
    );
}
