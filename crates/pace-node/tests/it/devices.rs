//! Device credentials: registration, the token check in the handshake,
//! refresh, the registry, an external issuer, and what a copied device id
//! gets (nothing).

use std::time::Duration;

use pace_node::admission::{KeySet, unix_now};
use pace_protocol::ServerFrame;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::support::*;

/// A node that requires device tokens, with a key file the test can read.
async fn secure_node() -> (TestNode, KeySet) {
    let keys_path = shared_keys();
    let keys = KeySet::load(&keys_path).unwrap();
    let node = TestNode::start_with(|c| {
        c.devices.insecure_anonymous_devices = false;
        c.admission.keys = Some(keys_path);
        c.web.demo_room = false;
    })
    .await;
    (node, keys)
}

async fn register(node: &TestNode, body: Value, token: Option<&str>) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    let (status, text) = http(
        node.addr,
        "POST",
        "/api/v1/devices/register",
        &headers,
        &body.to_string(),
    )
    .await
    .unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn registration(id: &str) -> Value {
    json!({"device_id": id, "type": "laptop", "model": "X1", "os": "linux",
           "os_version": "6.8", "app_version": "1.0.0", "department": "sales",
           "user": "alice@acme.example"})
}

async fn token_for(node: &TestNode, id: &str) -> String {
    let (status, body) = register(node, registration(id), None).await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

/// The refusal of a handshake: HTTP status and error code.
async fn refused(node: &TestNode, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    match node.try_connect(path, headers).await {
        Err(WsError::Http(resp)) => {
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            (
                resp.status().as_u16(),
                body["error"]["code"].as_str().unwrap().to_owned(),
            )
        }
        Ok(_) => panic!("{path}: connected"),
        Err(e) => panic!("{path}: {e}"),
    }
}

#[tokio::test]
async fn the_handshake_needs_a_valid_token_of_the_same_device() {
    let (node, keys) = secure_node().await;
    let token = token_for(&node, "laptop_a").await;
    let other = token_for(&node, "laptop_b").await;

    // Header and query fallback both work.
    let bearer = format!("Bearer {token}");
    node.connect_with(
        "/ws",
        &[("x-device-id", "laptop_a"), ("authorization", &bearer)],
    )
    .await;
    node.connect_with(&format!("/ws?device_id=laptop_a&token={token}"), &[])
        .await;

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "no token",
            "/ws?device_id=laptop_a".into(),
            "missing_device_token",
        ),
        (
            "forged",
            format!(
                "/ws?device_id=laptop_a&token={}x",
                &token[..token.len() - 2]
            ),
            "invalid_device_token",
        ),
        (
            "another device's",
            format!("/ws?device_id=laptop_a&token={other}"),
            "device_token_mismatch",
        ),
        (
            "garbage",
            "/ws?device_id=laptop_a&token=abc".into(),
            "invalid_device_token",
        ),
    ];
    let expired = {
        // Signed now (the key is new) but already past its expiry.
        let now = unix_now();
        let claims = pace_node::devices::DeviceClaims {
            iss: keys.issuer().to_owned(),
            aud: pace_node::devices::token::DEVICE_AUDIENCE.to_owned(),
            sub: "laptop_a".into(),
            user: None,
            tenant: None,
            iat: now,
            exp: now - 60,
            jti: "old".into(),
        };
        keys.sign_claims_typed(&claims, now, pace_node::devices::token::DEVICE_TOKEN_TYPE)
            .unwrap()
    };
    let admission_like = keys
        .issue(
            "laptop_a",
            "laptop_a",
            "s1",
            unix_now(),
            Duration::from_secs(60),
        )
        .unwrap();
    let mut cases = cases;
    cases.push((
        "expired",
        format!("/ws?device_id=laptop_a&token={expired}"),
        "invalid_device_token",
    ));
    cases.push((
        "an admission token",
        format!("/ws?device_id=laptop_a&token={admission_like}"),
        "invalid_device_token",
    ));
    let accepted_before = node.metric("pace_connections_accepted_total").await;
    for (what, path, code) in &cases {
        let (status, got) = refused(&node, path, &[]).await;
        assert_eq!((status, got.as_str()), (401, *code), "{what}");
    }
    // Refused before the upgrade: no connection, no state, every one counted.
    assert_eq!(
        node.metric("pace_connections_accepted_total").await,
        accepted_before
    );
    assert_eq!(node.metric("pace_connections_open").await, 0.0);
    for code in [
        "missing_device_token",
        "invalid_device_token",
        "device_token_mismatch",
    ] {
        let want = cases.iter().filter(|c| c.2 == code).count() as f64;
        assert_eq!(
            node.metric(&format!(
                r#"pace_handshakes_refused_total{{reason="{code}"}}"#
            ))
            .await,
            want,
            "{code}"
        );
    }
    assert_eq!(node.metric("pace_insecure_anonymous_devices").await, 0.0);
}

#[tokio::test]
async fn registering_a_taken_id_needs_its_current_token() {
    let (node, _) = secure_node().await;
    let first = token_for(&node, "kiosk-7").await;
    // Someone else registering the same id: refused.
    let (status, body) = register(&node, registration("kiosk-7"), None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("device_exists"))
    );
    let (status, body) = register(
        &node,
        registration("kiosk-7"),
        Some(&token_for(&node, "kiosk-8").await),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("device_token_mismatch"))
    );
    // The device itself refreshes with its current token.
    let mut update = registration("kiosk-7");
    update["app_version"] = json!("2.0.0");
    let (status, body) = register(&node, update.clone(), Some(&first)).await;
    assert_eq!(status, 200, "{body}");
    let second = body["token"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    // The replaced token cannot refresh again (only the current one can).
    let (status, _) = register(&node, update, Some(&first)).await;
    assert_eq!(status, 409);
    node.connect_with(&format!("/ws?device_id=kiosk-7&token={second}"), &[])
        .await;
    // Bad registrations.
    for (body, what) in [
        (json!({"device_id": "a b"}), "bad id"),
        (
            json!({"device_id": "ok", "model": "x".repeat(200)}),
            "long field",
        ),
        (
            json!({"device_id": "ok", "tenant": "nobody"}),
            "unknown tenant",
        ),
        (json!({"nope": 1}), "no id"),
    ] {
        let (status, _) = register(&node, body, None).await;
        assert_eq!(status, 400, "{what}");
    }
    assert_eq!(
        node.metric(r#"pace_device_registrations_total{result="created"}"#)
            .await,
        2.0
    );
    assert_eq!(
        node.metric(r#"pace_device_registrations_total{result="refreshed"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_copied_device_id_gets_neither_the_place_nor_the_admission() {
    let (node, _) = secure_node().await;
    let body = json!({"capacity": 0, "admit_per_minute": null, "session_ttl_secs": 60,
        "target_url": "https://shop.example/in", "state": "open", "pow_difficulty": 0});
    let (status, text) = http(
        node.addr,
        "PUT",
        "/api/v1/rooms/sale",
        &[("authorization", &format!("Bearer {KEY}"))],
        &body.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
    let victim = token_for(&node, "victim").await;
    let attacker = token_for(&node, "attacker").await;
    let (mut ws, _) = node
        .connect_with(&format!("/ws?device_id=victim&token={victim}"), &[])
        .await;
    send_text(&mut ws, r#"{"type":"join","room":"sale"}"#).await;
    match next_frame(&mut ws).await {
        ServerFrame::Queue(q) => assert_eq!(q.position, 1),
        other => panic!("{other:?}"),
    }
    // The attacker knows the id: with its own token, without one, or by
    // registering the id, it gets no connection as the victim.
    let (status, code) = refused(
        &node,
        &format!("/ws?device_id=victim&token={attacker}"),
        &[("x-device-id", "victim")],
    )
    .await;
    assert_eq!((status, code.as_str()), (401, "device_token_mismatch"));
    let (status, _) = refused(&node, "/ws?device_id=victim", &[]).await;
    assert_eq!(status, 401);
    assert_eq!(register(&node, registration("victim"), None).await.0, 409);
    // The victim was not replaced (no 4000) and still holds place 1.
    send_text(&mut ws, r#"{"type":"join","room":"sale"}"#).await;
    match next_frame(&mut ws).await {
        ServerFrame::Queue(q) => assert_eq!(q.position, 1),
        other => panic!("{other:?}"),
    }
    // The place status answers the victim only by its id; the attacker's
    // own device has no place.
    let (mut mine, _) = node
        .connect_with(&format!("/ws?device_id=attacker&token={attacker}"), &[])
        .await;
    send_text(&mut mine, r#"{"type":"join","room":"sale"}"#).await;
    match next_frame(&mut mine).await {
        ServerFrame::Queue(q) => assert_eq!(q.position, 2, "behind the victim"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_enterprise_issuer_is_trusted_for_its_own_tokens_only() {
    // The enterprise's issuer: its own key pair, published as a JWKS.
    let enterprise = KeySet::generate_in_memory().unwrap();
    let jwks = scratch_dir().join("idp.jwks.json");
    std::fs::write(&jwks, enterprise.jwks_json()).unwrap();
    let node = TestNode::start_with(|c| {
        c.devices.insecure_anonymous_devices = false;
        c.devices.device_token_jwks = Some(jwks.clone());
        c.devices.device_token_issuer = Some("https://idp.acme.example".into());
        c.devices.device_token_audience = Some("pace".into());
        c.devices.device_token_tenant = Some("acme".into());
        c.devices.device_token_groups_claim = "departments".into();
    })
    .await;
    let now = unix_now();
    let sign = |claims: Value| enterprise.sign_claims(&claims, now).unwrap();
    let good = sign(json!({"iss": "https://idp.acme.example", "aud": "pace",
        "sub": "corp-laptop-1", "iat": now, "exp": now + 600,
        "departments": ["finance", "globex:ops"]}));
    // The groups claim grants the device its departments, within the
    // issuer's tenant: `finance` is acme:finance; another tenant's group
    // is never granted.
    let (mut ws, welcome) = node
        .connect_with(
            &format!("/ws?device_id=corp-laptop-1&token={good}"),
            &[("x-department-id", "acme:finance,globex:ops")],
        )
        .await;
    let joined: Vec<String> = welcome.groups.iter().map(|g| g.to_string()).collect();
    assert_eq!(joined, ["acme:finance"]);
    match next_frame(&mut ws).await {
        pace_protocol::ServerFrame::Error { code, message } => {
            assert_eq!(code, pace_protocol::ErrorCode::NotAllowed);
            assert!(message.contains("globex:ops"), "{message}");
        }
        other => panic!("expected not_allowed for globex:ops, got {other:?}"),
    }
    drop(ws);
    let cases = [
        (
            "another device",
            format!("/ws?device_id=corp-laptop-2&token={good}"),
            "device_token_mismatch",
        ),
        (
            "wrong audience",
            format!(
                "/ws?device_id=corp-laptop-1&token={}",
                sign(json!({"iss": "https://idp.acme.example", "aud": "other",
                    "sub": "corp-laptop-1", "iat": now, "exp": now + 600}))
            ),
            "invalid_device_token",
        ),
        (
            "wrong issuer",
            format!(
                "/ws?device_id=corp-laptop-1&token={}",
                sign(json!({"iss": "https://evil.example", "aud": "pace",
                    "sub": "corp-laptop-1", "iat": now, "exp": now + 600}))
            ),
            "invalid_device_token",
        ),
        (
            "expired",
            format!(
                "/ws?device_id=corp-laptop-1&token={}",
                sign(json!({"iss": "https://idp.acme.example", "aud": "pace",
                    "sub": "corp-laptop-1", "iat": now - 7200, "exp": now - 3600}))
            ),
            "invalid_device_token",
        ),
        (
            "another key",
            format!(
                "/ws?device_id=corp-laptop-1&token={}",
                KeySet::generate_in_memory()
                    .unwrap()
                    .sign_claims(
                        &json!({"iss": "https://idp.acme.example", "aud": "pace",
                            "sub": "corp-laptop-1", "iat": now, "exp": now + 600}),
                        // The key is newer than `now` once a second has
                        // passed since: sign at its own time.
                        unix_now()
                    )
                    .unwrap()
            ),
            "invalid_device_token",
        ),
    ];
    for (what, path, code) in &cases {
        let (status, got) = refused(&node, path, &[]).await;
        assert_eq!((status, got.as_str()), (401, *code), "{what}");
    }
    // Registering still works alongside.
    let t = token_for(&node, "own-device").await;
    node.connect_with(&format!("/ws?device_id=own-device&token={t}"), &[])
        .await;
}

#[tokio::test]
async fn insecure_mode_is_off_by_default_and_visible_when_on() {
    assert!(
        !pace_node::NodeConfig::defaults()
            .devices
            .insecure_anonymous_devices
    );
    let (secure, _) = secure_node().await;
    assert_eq!(secure.metric("pace_insecure_anonymous_devices").await, 0.0);
    // The test support turns it on for tests about other things.
    let insecure = TestNode::start().await;
    assert_eq!(
        insecure.metric("pace_insecure_anonymous_devices").await,
        1.0
    );
    insecure.connect("anyone").await;
}
