//! The authorization matrix: every HTTP route of the route table and every
//! client frame type, tried with every kind of credential, against one
//! table of expected outcomes (docs/security.md shows the same table).
//!
//! The routes come from `pace_node::routes::ROUTES` and the frame types
//! from `pace_protocol::frame::CLIENT_FRAME_TYPES`: a route or frame type
//! added without a row here fails [`every_route_against_every_credential`]
//! or [`every_frame_type_is_authorized`].

use std::time::Duration;

use futures_util::SinkExt;
use http_body_util::{BodyExt, Full};
use pace_node::accounts::{TenantId, UserName, sign_admin_token};
use pace_node::admission::{KeySet, unix_now};
use pace_node::routes::ROUTES;
use pace_protocol::ServerFrame;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// The credentials every entry point is tried with, in table order.
const CREDENTIALS: [&str; 12] = [
    "none",
    "garbage",
    "dev_D",
    "dev_E",
    "dev_F",
    "adm_acme",
    "adm_globex",
    "service",
    "exp_dev",
    "exp_adm",
    "admission",
    "pow",
];

/// Expected HTTP status per route (method and path as in the route
/// table) and credential (columns as [`CREDENTIALS`]). `D` and `E` are
/// devices of tenant acme, `F` of tenant globex; the room `sale` and the
/// device paths belong to acme; device routes name `D`.
#[rustfmt::skip]
const EXPECT: &[(&str, &str, [u16; 12])] = &[
    //                                                     none grb  D    E    F    adA  adG  svc  xD   xA   adm  pow
    ("GET",    "/",                                        [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200]),
    ("GET",    "/health",                                  [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200]),
    ("GET",    "/ready",                                   [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200]),
    ("GET",    "/metrics",                                 [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200]),
    ("GET",    "/ws",                                      [401, 401, 101, 401, 401, 401, 401, 401, 401, 401, 401, 401]),
    ("GET",    "/stream",                                  [401, 401, 200, 401, 401, 401, 401, 401, 401, 401, 401, 401]),
    ("POST",   "/stream/send",                             [401, 401, 409, 401, 401, 401, 401, 401, 401, 401, 401, 401]),
    ("GET",    "/admin/ws",                                [401, 401, 401, 401, 401, 101, 101, 401, 401, 401, 401, 401]),
    ("POST",   "/api/v1/notify",                           [401, 401, 401, 401, 401, 202, 403, 202, 401, 401, 401, 401]),
    ("GET",    "/api/v1/cluster",                          [401, 401, 401, 401, 401, 401, 401, 200, 401, 401, 401, 401]),
    ("GET",    "/.well-known/jwks.json",                   [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200]),
    ("POST",   "/api/v1/admissions/verify",                [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200]),
    ("POST",   "/api/v1/sessions/release",                 [401, 401, 200, 404, 404, 200, 404, 200, 401, 401, 401, 401]),
    ("POST",   "/api/v1/sessions/renew",                   [401, 401, 200, 404, 404, 200, 404, 200, 401, 401, 401, 401]),
    ("POST",   "/api/v1/devices/register",                 [201, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401]),
    ("POST",   "/api/v1/admin/login",                      [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200]),
    ("POST",   "/api/v1/admin/ws-ticket",                  [401, 401, 401, 401, 401, 200, 200, 401, 401, 401, 401, 401]),
    ("GET",    "/api/v1/admin/rooms",                      [401, 401, 401, 401, 401, 200, 200, 401, 401, 401, 401, 401]),
    ("PUT",    "/api/v1/admin/rooms/{room}",               [401, 401, 401, 401, 401, 200, 404, 401, 401, 401, 401, 401]),
    ("GET",    "/api/v1/admin/rooms/{room}",               [401, 401, 401, 401, 401, 200, 404, 401, 401, 401, 401, 401]),
    ("GET",    "/api/v1/admin/rooms/{room}/stats",         [401, 401, 401, 401, 401, 200, 404, 401, 401, 401, 401, 401]),
    ("GET",    "/api/v1/admin/rooms/{room}/log",           [401, 401, 401, 401, 401, 200, 404, 401, 401, 401, 401, 401]),
    ("POST",   "/api/v1/admin/rooms/{room}/sessions/revoke", [401, 401, 401, 401, 401, 200, 404, 200, 401, 401, 401, 401]),
    ("GET",    "/api/v1/admin/devices",                    [401, 401, 401, 401, 401, 200, 200, 401, 401, 401, 401, 401]),
    ("PUT",    "/api/v1/admin/devices/{device}/departments", [401, 401, 401, 401, 401, 200, 404, 200, 401, 401, 401, 401]),
    ("POST",   "/api/v1/admin/devices/{device}/kick",      [401, 401, 401, 401, 401, 200, 404, 200, 401, 401, 401, 401]),
    ("DELETE", "/api/v1/admin/devices/{device}",           [401, 401, 401, 401, 401, 200, 404, 200, 401, 401, 401, 401]),
    ("GET",    "/api/v1/admin/cluster",                    [401, 401, 401, 401, 401, 200, 200, 401, 401, 401, 401, 401]),
    ("PUT",    "/api/v1/rooms/{room}",                     [401, 401, 401, 401, 401, 401, 401, 200, 401, 401, 401, 401]),
    ("GET",    "/api/v1/rooms/{room}",                     [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200]),
    ("GET",    "/api/v1/rooms/{room}/stats",               [401, 401, 401, 401, 401, 401, 401, 200, 401, 401, 401, 401]),
    ("GET",    "/api/v1/rooms/{room}/status",              [401, 401, 200, 401, 401, 401, 401, 401, 401, 401, 401, 401]),
    ("GET",    "/api/v1/rooms/{room}/log",                 [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200]),
    ("GET",    "/demo/target",                             [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200]),
    ("GET",    "/r/{*room}",                               [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200]),
    ("HEAD",   "/r/{*room}",                               [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200]),
    ("GET",    "/admin",                                   [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200]),
    ("HEAD",   "/admin",                                   [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200]),
    ("GET",    "/admin/",                                  [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200]),
    ("HEAD",   "/admin/",                                  [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200]),
    ("GET",    "/assets/{*file}",                          [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200]),
    ("HEAD",   "/assets/{*file}",                          [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200]),
];

/// A secure node (device tokens required) with tenants acme and globex,
/// acme's rooms `sale` (capacity 100) and `drop` (proof of work), devices
/// D and E of acme and F of globex, and every credential of the matrix.
pub struct World {
    pub node: TestNode,
    /// The matrix's credentials, in [`CREDENTIALS`] order.
    pub creds: Vec<(&'static str, String)>,
    pub dev_d: String,
    pub dev_f: String,
    pub adm_acme: String,
}

fn room_config(capacity: u32, pow: u8) -> Value {
    room_json(capacity, |c| {
        c.session_ttl_secs = 300;
        c.pow_difficulty = pow;
    })
}

impl World {
    pub async fn new() -> World {
        let keys_path = shared_keys();
        let keys = KeySet::load(&keys_path).unwrap();
        let data_dir = tenants_dir(&["acme", "globex"]);
        let node = TestNode::start_with(|c| {
            c.devices.insecure_anonymous_devices = false;
            c.admission.keys = Some(keys_path);
            c.store.data_dir = data_dir;
            c.web.demo_room = false;
            c.rooms.admit_tick = Duration::from_millis(50);
            c.rooms.joins_per_minute = 0;
        })
        .await;
        let adm_acme = admin_login(node.addr, "acme").await;
        let adm_globex = admin_login(node.addr, "globex").await;
        for (room, config) in [("sale", room_config(100, 0)), ("drop", room_config(100, 8))] {
            let (status, body) = call(
                node.addr,
                "PUT",
                &format!("/api/v1/admin/rooms/{room}"),
                Some(&adm_acme),
                &[],
                &config.to_string(),
            )
            .await;
            assert_eq!(status, 200, "{body}");
        }
        let (status, body) = call(
            node.addr,
            "PUT",
            "/api/v1/admin/rooms/other",
            Some(&adm_globex),
            &[],
            &room_config(100, 0).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let dev_d = register_device(node.addr, &json!({"device_id": "D", "tenant": "acme"})).await;
        let dev_e = register_device(node.addr, &json!({"device_id": "E", "tenant": "acme"})).await;
        let dev_f =
            register_device(node.addr, &json!({"device_id": "F", "tenant": "globex"})).await;
        let now = unix_now();
        let exp_dev = {
            let claims = pace_node::devices::DeviceClaims {
                iss: keys.issuer().to_owned(),
                aud: pace_node::devices::token::DEVICE_AUDIENCE.to_owned(),
                sub: "D".into(),
                user: None,
                tenant: Some("acme".into()),
                iat: now - 120,
                exp: now - 60,
                jti: "old".into(),
            };
            keys.sign_claims_typed(&claims, now, pace_node::devices::token::DEVICE_TOKEN_TYPE)
                .unwrap()
        };
        let exp_adm = {
            // A real admin token of acme, past its expiry (signed by a key
            // that is active now).
            let (_, mut claims) = sign_admin_token(
                &keys,
                &TenantId::parse("acme").unwrap(),
                &UserName::parse("admin").unwrap(),
                now,
                Duration::from_secs(60),
            )
            .unwrap();
            claims.iat = now - 3600;
            claims.exp = now - 3000;
            keys.sign_claims_typed(&claims, now, pace_node::accounts::login::ADMIN_TOKEN_TYPE)
                .unwrap()
        };
        let admission = keys
            .issue(
                "sale",
                "D",
                "s-forged-but-signed",
                now,
                Duration::from_secs(300),
            )
            .unwrap();
        let pow = pace_node::pow::issue(
            &keys,
            &pace_protocol::RoomId::parse("drop").unwrap(),
            &pace_protocol::DeviceId::parse("D").unwrap(),
            8,
            now,
        )
        .unwrap()
        .challenge;
        let creds = vec![
            ("none", String::new()),
            ("garbage", "garbage.not.a-token".to_owned()),
            ("dev_D", dev_d.clone()),
            ("dev_E", dev_e.clone()),
            ("dev_F", dev_f.clone()),
            ("adm_acme", adm_acme.clone()),
            ("adm_globex", adm_globex.clone()),
            ("service", KEY.to_owned()),
            ("exp_dev", exp_dev),
            ("exp_adm", exp_adm),
            ("admission", admission),
            ("pow", pow),
        ];
        assert_eq!(
            creds.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            CREDENTIALS
        );
        World {
            node,
            creds,
            dev_d,
            dev_f,
            adm_acme,
        }
    }

    /// Makes sure device `id` (token `token`) holds a session in `sale`;
    /// returns its admission token.
    pub async fn admitted(&self, id: &str, token: &str) -> String {
        let (mut ws, _) = self
            .node
            .connect_with(&format!("/ws?device_id={id}&token={token}"), &[])
            .await;
        send_text(&mut ws, r#"{"type":"join","room":"sale"}"#).await;
        loop {
            match next_frame(&mut ws).await {
                ServerFrame::Admitted(a) => {
                    let _ = ws.close(None).await;
                    return a.token;
                }
                ServerFrame::Queue(_) => {}
                other => panic!("{id}: expected admission, got {other:?}"),
            }
        }
    }
}

/// One request with an optional bearer token and extra headers; the
/// status and body text. A `101` answer is taken as is (no body read).
pub async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn.with_upgrades());
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(t) = bearer.filter(|t| !t.is_empty()) {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if !body.is_empty() {
        req = req.header("content-type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(bytes::Bytes::from(body.to_owned())))
        .unwrap();
    let resp = tokio::time::timeout(SOON, sender.send_request(req))
        .await
        .expect("answered in time")
        .unwrap();
    let status = resp.status().as_u16();
    // An upgrade or an event stream does not end: taken as is.
    let streaming = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "text/event-stream");
    if status == 101 || streaming {
        return (status, String::new());
    }
    let bytes = tokio::time::timeout(SOON, resp.into_body().collect())
        .await
        .expect("body in time")
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

const UPGRADE: [(&str, &str); 4] = [
    ("connection", "upgrade"),
    ("upgrade", "websocket"),
    ("sec-websocket-version", "13"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

#[tokio::test]
async fn every_route_against_every_credential() {
    let w = World::new().await;
    let addr = w.node.addr;
    // Every route has a row, and every row a route.
    for spec in ROUTES {
        assert!(
            EXPECT
                .iter()
                .any(|(m, p, _)| *m == spec.method.as_str() && *p == spec.path),
            "{} {} has no row in the authorization matrix",
            spec.method,
            spec.path
        );
    }
    assert_eq!(EXPECT.len(), ROUTES.len(), "a row without a route");

    let mut failures = Vec::new();
    let mut victims = 0;
    for (method, pattern, expected) in EXPECT {
        for (i, (cred_name, cred)) in w.creds.iter().enumerate() {
            // Fresh resources for the routes that consume them.
            victims += 1;
            let victim = format!("victim-{victims}");
            let mut device = "D".to_owned();
            if pattern.ends_with("/kick") || *method == "DELETE" {
                register_device(addr, &json!({"device_id": victim, "tenant": "acme"})).await;
                device = victim.clone();
            }
            let path = pattern
                .replace(
                    "{room}",
                    if *pattern == "/api/v1/rooms/{room}" && *method == "PUT" {
                        "svc-room"
                    } else {
                        "sale"
                    },
                )
                .replace("{*room}", "sale")
                .replace("{device}", &device)
                .replace("{*file}", "room.js");
            let mut headers: Vec<(&str, &str)> = Vec::new();
            let body = match (*method, *pattern) {
                ("GET", "/ws") => {
                    headers.extend(UPGRADE);
                    headers.push(("x-device-id", "D"));
                    String::new()
                }
                ("GET", "/stream") => {
                    headers.push(("x-device-id", "D"));
                    String::new()
                }
                ("POST", "/stream/send") => {
                    headers.push(("x-device-id", "D"));
                    json!({"type": "ping", "id": 1}).to_string()
                }
                ("GET", "/admin/ws") => {
                    headers.extend(UPGRADE);
                    String::new()
                }
                (_, "/api/v1/rooms/{room}/status") => {
                    headers.push(("x-device-id", "D"));
                    String::new()
                }
                (_, "/api/v1/notify") => {
                    json!({"scope": "group", "target": "acme:ops", "event": "e", "data": {}})
                        .to_string()
                }
                (
                    _,
                    "/api/v1/admissions/verify"
                    | "/api/v1/sessions/release"
                    | "/api/v1/sessions/renew",
                ) => json!({"token": w.admitted("D", &w.dev_d).await}).to_string(),
                (_, "/api/v1/admin/rooms/{room}/sessions/revoke") => {
                    w.admitted("D", &w.dev_d).await;
                    json!({"device_id": "D"}).to_string()
                }
                (_, "/api/v1/devices/register") => json!({"device_id": victim}).to_string(),
                (_, "/api/v1/admin/login") => {
                    json!({"tenant": "acme", "user": "admin", "password": ADMIN_PASSWORD})
                        .to_string()
                }
                (_, "/api/v1/admin/devices/{device}/departments") => {
                    json!({"departments": ["ops"]}).to_string()
                }
                (_, "/api/v1/admin/devices/{device}/kick") => "{}".to_owned(),
                ("PUT", _) => room_config(100, 0).to_string(),
                _ => String::new(),
            };
            let (status, text) = call(addr, method, &path, Some(cred), &headers, &body).await;
            if status != expected[i] {
                failures.push(format!(
                    "{method} {path} with {cred_name}: expected {}, got {status} {text}",
                    expected[i]
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} cells differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Every refusal by the authorization step was counted.
    assert!(
        w.node
            .metric("pace_auth_refused_total{code=\"unauthorized\",rule=\"admin\"}")
            .await
            > 0.0
    );
}

/// An example of each client frame type, sent on device D's connection,
/// and the frame type (or error code) it must be answered with. D's
/// credential grants it `acme:ops` only.
#[rustfmt::skip]
const FRAMES: &[(&str, &str, &str)] = &[
    ("subscribe",   r#"{"type":"subscribe","group":"acme:ops"}"#,                   "subscribed"),
    ("subscribe",   r#"{"type":"subscribe","group":"acme:finance"}"#,               "not_allowed"),
    ("subscribe",   r#"{"type":"subscribe","group":"globex:ops"}"#,                 "not_allowed"),
    ("subscribe",   r#"{"type":"subscribe","group":"@room:other"}"#,                "not_allowed"),
    ("subscribe",   r#"{"type":"subscribe","group":"sales"}"#,                      "not_allowed"),
    ("unsubscribe", r#"{"type":"unsubscribe","group":"acme:ops"}"#,                 "unsubscribed"),
    ("join",        r#"{"type":"join","room":"sale"}"#,                             "queue|admitted"),
    ("join",        r#"{"type":"join","room":"nowhere"}"#,                          "no_such_room"),
    ("subscribe",   r#"{"type":"subscribe","group":"@room:sale"}"#,                 "subscribed"),
    ("solve",       r#"{"type":"solve","room":"drop","challenge":"forged","solution":"1"}"#, "pow_invalid"),
    ("leave",       r#"{"type":"leave","room":"drop"}"#,                            "left"),
    ("resume",      r#"{"type":"resume","cursors":[{"scope":"group","target":"globex:ops","epoch":0,"seq":0}]}"#, "resumed:not_allowed"),
    ("resume",      r#"{"type":"resume","cursors":[{"scope":"device","target":"E","epoch":0,"seq":0}]}"#,         "resumed:not_allowed"),
    ("resume",      r#"{"type":"resume","cursors":[{"scope":"group","target":"acme:ops","epoch":0,"seq":0}]}"#,   "resumed:ok"),
    ("resume",      r#"{"type":"resume","cursors":[{"scope":"group","epoch":0,"seq":0}]}"#,                       "invalid_frame"),
    ("ping",        r#"{"type":"ping","id":7}"#,                                    "pong"),
];

/// What a frame was answered with, in the table's words.
fn answer(frame: &ServerFrame) -> String {
    match frame {
        ServerFrame::Error { code, .. } => code.as_str().to_owned(),
        ServerFrame::Resumed { scopes } => match scopes[0].reason.as_deref() {
            None => "resumed:ok".to_owned(),
            Some(r) => format!("resumed:{r}"),
        },
        other => serde_json::to_value(other).unwrap()["type"]
            .as_str()
            .unwrap()
            .to_owned(),
    }
}

#[tokio::test]
async fn every_frame_type_is_authorized() {
    let w = World::new().await;
    for t in pace_protocol::frame::CLIENT_FRAME_TYPES {
        assert!(
            FRAMES.iter().any(|(ty, _, _)| *ty == t),
            "frame type {t} has no row in the authorization matrix"
        );
    }
    let (status, body) = call(
        w.node.addr,
        "PUT",
        "/api/v1/admin/devices/D/departments",
        Some(&w.adm_acme),
        &[],
        r#"{"departments":["ops"]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (mut ws, _) = w
        .node
        .connect_with(&format!("/ws?device_id=D&token={}", w.dev_d), &[])
        .await;
    let mut failures = Vec::new();
    for (ty, text, expected) in FRAMES {
        if *ty == "resume" {
            // A connection resumes once (a second `resume` is refused
            // whatever it names): each resume row gets a fresh connection
            // of D, which replaces the previous one.
            ws = w
                .node
                .connect_with(&format!("/ws?device_id=D&token={}", w.dev_d), &[])
                .await
                .0;
        }
        send_text(&mut ws, text).await;
        let got = loop {
            let f = next_frame(&mut ws).await;
            // Queue updates and the admission of the room D joined may
            // come at any time.
            if matches!(f, ServerFrame::Queue(_) | ServerFrame::Admitted(_)) && *ty != "join" {
                continue;
            }
            break answer(&f);
        };
        if !expected.split('|').any(|e| e == got) {
            failures.push(format!("{text}: expected {expected}, got {got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let refused = w
        .node
        .metric("pace_groups_refused_total{via=\"subscribe\"}")
        .await;
    assert_eq!(refused, 4.0, "every refused subscribe is counted");
    let _ = ws.send(Message::Close(None)).await;
}

/// docs/security.md shows this test's table, cell for cell.
#[test]
fn the_security_doc_shows_the_same_matrix() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/security.md"
    ))
    .unwrap();
    let mut rows = Vec::new();
    for line in doc.lines() {
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        let Some((route, cells)) = rest.split_once("` |") else {
            continue;
        };
        let Some((method, path)) = route.split_once(' ') else {
            continue;
        };
        let cells: Vec<&str> = cells
            .split('|')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        // The matrix rows: a rule, then one status per credential.
        if cells.len() != CREDENTIALS.len() + 1 {
            continue;
        }
        let statuses: Vec<u16> = cells[1..].iter().map(|c| c.parse().unwrap()).collect();
        rows.push((method.to_owned(), path.to_owned(), statuses));
    }
    let expected: Vec<(String, String, Vec<u16>)> = EXPECT
        .iter()
        .map(|(m, p, s)| (m.to_string(), p.to_string(), s.to_vec()))
        .collect();
    assert_eq!(
        rows, expected,
        "docs/security.md's matrix differs from the test's"
    );
}

/// A path that exists for other methods answers 405 with them in `Allow`;
/// any other path 404, before any credential is asked for.
#[tokio::test]
async fn other_methods_get_405_with_allow_and_unknown_paths_404() {
    let node = TestNode::start().await;
    let (status, headers, body) = http_full(node.addr, "POST", "/api/v1/rooms/sale", &[], "")
        .await
        .unwrap();
    assert_eq!(status, 405, "{body}");
    assert_eq!(headers["allow"], "PUT, GET");
    let (status, _, body) = http_full(node.addr, "GET", "/api/v1/admin/nothing-here", &[], "")
        .await
        .unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not_found"), "{body}");
}
