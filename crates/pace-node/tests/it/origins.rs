//! Browser origins: the `Origin` check of the device WebSocket handshake
//! (the token's tenant, the cluster-wide list, the node's own origin,
//! `null`), CORS on the device REST endpoints, and the admin API's
//! own-origin rule.

use std::net::SocketAddr;

use http::HeaderMap;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::support::*;

const ACME: &str = "https://shop.acme.example";
const GLOBEX: &str = "https://globex.example";
const PORTAL: &str = "https://portal.example";

/// A node requiring device tokens, with tenants acme (origin
/// [`ACME`], admin user `admin`) and globex ([`GLOBEX`]), and [`PORTAL`]
/// allowed cluster-wide.
async fn node() -> TestNode {
    let dir = scratch_dir();
    admin_cli(&dir, &["add-tenant", "acme", "--origin", ACME]);
    admin_cli(&dir, &["add-user", "--tenant", "acme", "admin"]);
    admin_cli(&dir, &["add-tenant", "globex", "--origin", GLOBEX]);
    TestNode::start_with(|c| {
        c.store.data_dir = dir;
        c.devices.insecure_anonymous_devices = false;
        c.web.demo_room = false;
        c.origins.allowed_origins = vec![PORTAL.to_owned()];
    })
    .await
}

/// One HTTP/1.1 request; status, headers and body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, HeaderMap, String) {
    http_full(addr, method, path, headers, body).await.unwrap()
}

fn code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    v["error"]["code"].as_str().unwrap_or_default().to_owned()
}

fn acao(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap())
}

/// Registers `id` (with `tenant`) and returns its device token.
async fn token_for(node: &TestNode, id: &str, tenant: Option<&str>) -> String {
    let mut body = json!({"device_id": id, "type": "kiosk"});
    if let Some(t) = tenant {
        body["tenant"] = json!(t);
    }
    let (status, _, text) = request(
        node.addr,
        "POST",
        "/api/v1/devices/register",
        &[("content-type", "application/json")],
        &body.to_string(),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["token"].as_str().unwrap().to_owned()
}

/// Connects `device` with its token and `origin`; `Ok` on a welcome, else
/// the refusal's status and code.
async fn connect(
    node: &TestNode,
    device: &str,
    token: &str,
    origin: Option<&str>,
) -> Result<Ws, (u16, String)> {
    let bearer = format!("Bearer {token}");
    let mut headers = vec![("x-device-id", device), ("authorization", &bearer)];
    if let Some(o) = origin {
        headers.push(("origin", o));
    }
    match node.try_connect("/ws", &headers).await {
        Ok(mut ws) => match next_frame(&mut ws).await {
            pace_protocol::ServerFrame::Welcome(_) => Ok(ws),
            other => panic!("expected welcome, got {other:?}"),
        },
        Err(WsError::Http(resp)) => {
            let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default());
            Err((resp.status().as_u16(), code(&body)))
        }
        Err(e) => panic!("{device}: {e}"),
    }
}

async fn admin_token(node: &TestNode) -> String {
    let (status, _, text) = request(
        node.addr,
        "POST",
        "/api/v1/admin/login",
        &[("content-type", "application/json")],
        &json!({"tenant": "acme", "user": "admin", "password": ADMIN_PASSWORD}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_handshake_checks_the_browser_origin() {
    let node = node().await;
    let acme = token_for(&node, "kiosk-acme", Some("acme")).await;
    let globex = token_for(&node, "kiosk-globex", Some("globex")).await;
    let plain = token_for(&node, "kiosk-plain", None).await;
    let own = format!("http://{}", node.addr);

    // Not a browser; the tenant's page; the cluster-wide list; the node's
    // own pages.
    for (device, token, origin) in [
        ("kiosk-acme", &acme, None),
        ("kiosk-acme", &acme, Some(ACME)),
        ("kiosk-acme", &acme, Some("HTTPS://SHOP.ACME.EXAMPLE")),
        ("kiosk-acme", &acme, Some(PORTAL)),
        ("kiosk-globex", &globex, Some(GLOBEX)),
        ("kiosk-globex", &globex, Some(PORTAL)),
        ("kiosk-plain", &plain, Some(PORTAL)),
        ("kiosk-plain", &plain, Some(own.as_str())),
    ] {
        let ws = connect(&node, device, token, origin).await;
        assert!(ws.is_ok(), "{device} from {origin:?}: {:?}", ws.err());
    }

    // Another tenant's page, a stranger's, a tenant page for a device of no
    // tenant, `null`, and a lookalike of the node's own origin.
    let refusals = [
        ("kiosk-acme", &acme, GLOBEX),
        ("kiosk-globex", &globex, ACME),
        ("kiosk-acme", &acme, "https://evil.example"),
        ("kiosk-plain", &plain, ACME),
        ("kiosk-acme", &acme, "null"),
        ("kiosk-acme", &acme, "http://shop.acme.example"),
        ("kiosk-plain", &plain, "https://127.0.0.1.evil.example"),
    ];
    for (device, token, origin) in refusals {
        assert_eq!(
            connect(&node, device, token, Some(origin)).await.err(),
            Some((403, "origin_not_allowed".to_owned())),
            "{device} from {origin}"
        );
    }
    node.wait_metric(
        "pace_handshakes_refused_total{reason=\"origin_not_allowed\"}",
        refusals.len() as f64,
    )
    .await;

    // The token is checked first: no token from a foreign page is a 401.
    let resp = node
        .try_connect(
            "/ws",
            &[
                ("x-device-id", "kiosk-acme"),
                ("origin", "https://evil.example"),
            ],
        )
        .await;
    match resp {
        Err(WsError::Http(r)) => assert_eq!(r.status().as_u16(), 401),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn null_is_allowed_only_when_listed() {
    let node = TestNode::start_with(|c| {
        c.devices.insecure_anonymous_devices = false;
        c.web.demo_room = false;
        c.origins.allowed_origins = vec!["null".to_owned()];
    })
    .await;
    let token = token_for(&node, "sandboxed", None).await;
    assert!(
        connect(&node, "sandboxed", &token, Some("null"))
            .await
            .is_ok()
    );
    assert_eq!(
        connect(&node, "sandboxed", &token, Some(PORTAL))
            .await
            .err(),
        Some((403, "origin_not_allowed".to_owned()))
    );
}

#[tokio::test]
async fn cors_on_the_device_endpoints_follows_the_lists() {
    let node = node().await;
    let preflight = |path: &'static str, origin: &'static str, method: &'static str| {
        let addr = node.addr;
        async move {
            request(
                addr,
                "OPTIONS",
                path,
                &[
                    ("origin", origin),
                    ("access-control-request-method", method),
                    (
                        "access-control-request-headers",
                        "content-type, authorization",
                    ),
                ],
                "",
            )
            .await
        }
    };

    // Registration: any tenant's page (the preflight has no body).
    for origin in [ACME, GLOBEX, PORTAL] {
        let (status, h, _) = preflight("/api/v1/devices/register", origin, "POST").await;
        assert_eq!(status, 204, "{origin}");
        assert_eq!(acao(&h), Some(origin));
        assert_eq!(h["access-control-allow-methods"], "POST");
        let allowed = h["access-control-allow-headers"].to_str().unwrap();
        for name in ["content-type", "authorization", "x-device-id"] {
            assert!(allowed.contains(name), "{allowed}");
        }
        assert_eq!(h["access-control-max-age"], "600");
        assert!(h.get_all("vary").iter().any(|v| v == "Origin"));
        assert!(h.get("access-control-allow-credentials").is_none());
    }
    let (status, h, body) =
        preflight("/api/v1/devices/register", "https://evil.example", "POST").await;
    assert_eq!((status, code(&body).as_str()), (403, "origin_not_allowed"));
    assert_eq!(acao(&h), None);
    assert!(h.keys().all(|k| !k.as_str().starts_with("access-control-")));
    node.wait_metric("pace_cors_refused_total{route=\"register\"}", 1.0)
        .await;
    // No Origin: not a preflight of a browser; nothing to allow.
    let (status, h, _) = request(node.addr, "OPTIONS", "/api/v1/devices/register", &[], "").await;
    assert_eq!(status, 204);
    assert_eq!(acao(&h), None);

    // The actual registration carries the header for an allowed page.
    let (status, h, text) = request(
        node.addr,
        "POST",
        "/api/v1/devices/register",
        &[("content-type", "application/json"), ("origin", ACME)],
        &json!({"device_id": "web-1", "tenant": "acme"}).to_string(),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    assert_eq!(acao(&h), Some(ACME));
    let (status, h, _) = request(
        node.addr,
        "POST",
        "/api/v1/devices/register",
        &[
            ("content-type", "application/json"),
            ("origin", "https://evil.example"),
        ],
        &json!({"device_id": "web-2"}).to_string(),
    )
    .await;
    assert_eq!(status, 201, "served; the browser withholds it");
    assert_eq!(acao(&h), None);
    assert!(h.get_all("vary").iter().any(|v| v == "Origin"));

    // Rooms: the owner tenant's pages. `sale` belongs to acme; `legacy`
    // (made with the service key) to nobody.
    let admin = format!("Bearer {}", admin_token(&node).await);
    let room = json!({"capacity": 5, "admit_per_minute": null, "session_ttl_secs": 60,
                      "target_url": "https://shop.acme.example/in", "state": "open",
                      "pow_difficulty": 0})
    .to_string();
    let (status, _, text) = request(
        node.addr,
        "PUT",
        "/api/v1/admin/rooms/sale",
        &[
            ("authorization", &admin),
            ("content-type", "application/json"),
        ],
        &room,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let service = format!("Bearer {KEY}");
    let (status, _, _) = request(
        node.addr,
        "PUT",
        "/api/v1/rooms/legacy",
        &[("authorization", &service)],
        &room,
    )
    .await;
    assert_eq!(status, 200);

    let (status, h, _) = preflight("/api/v1/rooms/sale/status", ACME, "GET").await;
    assert_eq!(status, 204);
    assert_eq!(acao(&h), Some(ACME));
    assert_eq!(h["access-control-allow-methods"], "GET");
    let (status, h, _) = preflight("/api/v1/rooms/sale/status", GLOBEX, "GET").await;
    assert_eq!(status, 403);
    assert_eq!(acao(&h), None);

    // The status route answers only the device itself (its token).
    let web_auth = format!(
        "Bearer {}",
        register_device(node.addr, &json!({"device_id": "web-cors"})).await
    );
    let get = |path: &'static str, origin: &'static str| {
        let addr = node.addr;
        let auth = web_auth.clone();
        async move {
            request(
                addr,
                "GET",
                path,
                &[
                    ("origin", origin),
                    ("x-device-id", "web-cors"),
                    ("authorization", &auth),
                ],
                "",
            )
            .await
        }
    };
    for (path, origin, allowed) in [
        ("/api/v1/rooms/sale/status", ACME, true),
        ("/api/v1/rooms/sale/status", PORTAL, true),
        ("/api/v1/rooms/sale/status", GLOBEX, false),
        ("/api/v1/rooms/sale", ACME, true),
        ("/api/v1/rooms/sale", "https://evil.example", false),
        ("/api/v1/rooms/legacy", PORTAL, true),
        ("/api/v1/rooms/legacy", ACME, false),
        ("/api/v1/rooms/nowhere", ACME, false),
    ] {
        let (status, h, body) = get(path, origin).await;
        assert!(
            status == 200 || path.ends_with("nowhere"),
            "{path}: {status} {body}"
        );
        assert_eq!(acao(&h), allowed.then_some(origin), "{path} from {origin}");
        assert!(h.get_all("vary").iter().any(|v| v == "Origin"));
    }
    // Errors carry the header too, so the page can read them.
    let (status, h, text) = request(
        node.addr,
        "GET",
        "/api/v1/rooms/sale/status",
        &[("origin", ACME)],
        "",
    )
    .await;
    assert_eq!((status, code(&text).as_str()), (400, "missing_device_id"));
    assert_eq!(acao(&h), Some(ACME));
    node.wait_metric("pace_cors_refused_total{route=\"room_status\"}", 2.0)
        .await;
    node.wait_metric("pace_cors_refused_total{route=\"room\"}", 3.0)
        .await;

    // Service routes never get CORS headers.
    let (_, h, _) = request(
        node.addr,
        "GET",
        "/api/v1/rooms/sale/stats",
        &[("origin", ACME), ("authorization", &service)],
        "",
    )
    .await;
    assert_eq!(acao(&h), None);
}

#[tokio::test]
async fn the_admin_api_answers_only_its_own_origin() {
    let node = node().await;
    let own = format!("http://{}", node.addr);
    let body = json!({"tenant": "acme", "user": "admin", "password": ADMIN_PASSWORD}).to_string();
    let login = |origin: Option<String>| {
        let (addr, body) = (node.addr, body.clone());
        async move {
            let mut headers = vec![("content-type", "application/json")];
            if let Some(o) = &origin {
                headers.push(("origin", o.as_str()));
            }
            request(addr, "POST", "/api/v1/admin/login", &headers, &body).await
        }
    };
    // Foreign pages, even allowed ones for devices: 403 before the
    // password is checked, and never a CORS header.
    for origin in ["https://evil.example", ACME, PORTAL, "null"] {
        let (status, h, text) = login(Some(origin.to_owned())).await;
        assert_eq!(
            (status, code(&text).as_str()),
            (403, "origin_not_allowed"),
            "{origin}"
        );
        assert!(h.keys().all(|k| !k.as_str().starts_with("access-control-")));
    }
    node.wait_metric(
        "pace_admin_requests_total{result=\"origin_not_allowed\"}",
        4.0,
    )
    .await;
    // The console served by the node itself, and non-browser clients.
    let (status, h, text) = login(Some(own.clone())).await;
    assert_eq!(status, 200, "{text}");
    assert!(h.keys().all(|k| !k.as_str().starts_with("access-control-")));
    let (status, _, text) = login(None).await;
    assert_eq!(status, 200, "{text}");
    let token: Value = serde_json::from_str(&text).unwrap();
    let bearer = format!("Bearer {}", token["token"].as_str().unwrap());

    // Every admin route, and the console's live feed.
    let (status, _, _) = request(
        node.addr,
        "GET",
        "/api/v1/admin/rooms",
        &[("authorization", &bearer), ("origin", own.as_str())],
        "",
    )
    .await;
    assert_eq!(status, 200);
    let (status, h, text) = request(
        node.addr,
        "GET",
        "/api/v1/admin/rooms",
        &[("authorization", &bearer), ("origin", ACME)],
        "",
    )
    .await;
    assert_eq!((status, code(&text).as_str()), (403, "origin_not_allowed"));
    assert!(h.keys().all(|k| !k.as_str().starts_with("access-control-")));
    let (status, _, text) = request(
        node.addr,
        "OPTIONS",
        "/api/v1/admin/rooms",
        &[("origin", ACME), ("access-control-request-method", "GET")],
        "",
    )
    .await;
    assert_eq!((status, code(&text).as_str()), (403, "origin_not_allowed"));
    let (status, _, text) = request(
        node.addr,
        "GET",
        "/admin/ws",
        &[
            ("origin", "https://evil.example"),
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("authorization", &bearer),
        ],
        "",
    )
    .await;
    assert_eq!((status, code(&text).as_str()), (403, "origin_not_allowed"));
}
