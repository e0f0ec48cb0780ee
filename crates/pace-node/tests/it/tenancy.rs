//! Trust on the side paths: the room status gives an admission only to its
//! device; groups follow the credential, not what a device asks for (on
//! one node and across three over Redis); an admin's department change
//! reaches a connected device within a second; kick and revoke.

use std::time::Duration;

use futures_util::SinkExt;
use pace_protocol::ServerFrame;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::authz::{World, call};
use crate::support::*;

/// Frames `ws` gets within `wait` (queue updates left out).
async fn frames_within(ws: &mut Ws, wait: Duration) -> Vec<ServerFrame> {
    let until = tokio::time::Instant::now() + wait;
    let mut got = Vec::new();
    while let Some(left) = until.checked_duration_since(tokio::time::Instant::now()) {
        match frame_within(ws, left).await {
            Some(ServerFrame::Queue(_)) => {}
            Some(f) => got.push(f),
            None => break,
        }
    }
    got
}

fn notifications(frames: &[ServerFrame]) -> Vec<Value> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Notification(n) => Some(n.data.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn the_status_gives_an_admission_only_to_its_own_device() {
    let w = World::new().await;
    let token = w.admitted("D", &w.dev_d).await;
    let addr = w.node.addr;
    let path = "/api/v1/rooms/sale/status";
    for (who, bearer, code) in [
        ("no token", "", "missing_device_token"),
        ("garbage", "x.y.z", "invalid_device_token"),
        (
            "another device",
            w.creds[3].1.as_str(),
            "device_token_mismatch",
        ),
        (
            "another tenant's device",
            w.dev_f.as_str(),
            "device_token_mismatch",
        ),
        ("its admin", w.adm_acme.as_str(), "invalid_device_token"),
        (
            "its own admission token",
            token.as_str(),
            "invalid_device_token",
        ),
    ] {
        for device_in in ["header", "query"] {
            let (p, headers): (String, Vec<(&str, &str)>) = match device_in {
                "header" => (path.to_owned(), vec![("x-device-id", "D")]),
                _ => (format!("{path}?device_id=D"), vec![]),
            };
            let (status, body) = call(addr, "GET", &p, Some(bearer), &headers, "").await;
            assert_eq!(status, 401, "{who} ({device_in}): {body}");
            assert!(body.contains(code), "{who}: {body}");
            assert!(
                !body.contains(&token),
                "{who} got the victim's admission token"
            );
        }
    }
    // The device itself, with its token in the header or (browsers) the
    // query, gets it.
    for (p, bearer) in [
        (format!("{path}?device_id=D"), Some(w.dev_d.as_str())),
        (format!("{path}?device_id=D&token={}", w.dev_d), None),
    ] {
        let (status, body) = call(addr, "GET", &p, bearer, &[], "").await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "admitted");
        assert_eq!(v["token"], token.as_str());
    }
    assert!(
        w.node
            .metric(r#"pace_auth_refused_total{code="device_token_mismatch",rule="device"}"#)
            .await
            >= 4.0
    );
}

/// `PUT /api/v1/admin/devices/{device}/departments` through `node`.
async fn set_departments(
    node: &TestNode,
    admin: &str,
    device: &str,
    departments: &[&str],
) -> (u16, String) {
    call(
        node.addr,
        "PUT",
        &format!("/api/v1/admin/devices/{device}/departments"),
        Some(admin),
        &[],
        &json!({ "departments": departments }).to_string(),
    )
    .await
}

/// An admin's `memo` notification to `group` through `node`; asserts 202.
async fn group_memo(node: &TestNode, admin: &str, group: &str, text: &str) {
    let body = json!({"scope": "group", "target": group, "event": "memo", "data": {"text": text}});
    let (status, answer) = call(
        node.addr,
        "POST",
        "/api/v1/notify",
        Some(admin),
        &[],
        &body.to_string(),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
}

/// Tenants acme and globex in the store of `cluster`, each with admin
/// `admin`.
fn cluster_tenants(cluster: &Cluster) {
    let dir = scratch_dir();
    let url = cluster.redis.url();
    for tenant in ["acme", "globex"] {
        admin_cli(
            &dir,
            &[
                "add-tenant",
                tenant,
                "--redis",
                &url,
                "--redis-prefix",
                &cluster.prefix,
            ],
        );
        admin_cli(
            &dir,
            &[
                "add-user",
                "--tenant",
                tenant,
                "admin",
                "--redis",
                &url,
                "--redis-prefix",
                &cluster.prefix,
            ],
        );
    }
}

/// A device of globex reaches no acme group and no room channel it has no
/// place in — by `subscribe`, a resume cursor or `x-department-id` — and
/// receives none of their broadcasts, while acme's device granted the
/// department does; `nodes` nodes behind `gateway`.
async fn isolation(entry: &TestNode, admin_entry: &TestNode) {
    let acme = admin_login(admin_entry.addr, "acme").await;
    let room = json!({"capacity": 0, "admit_per_minute": null, "session_ttl_secs": 60,
                      "target_url": "https://shop.example/in", "state": "open", "pow_difficulty": 0});
    let (status, body) = call(
        admin_entry.addr,
        "PUT",
        "/api/v1/admin/rooms/sale",
        Some(&acme),
        &[],
        &room.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let clerk = register_device(entry.addr, &json!({"device_id": "clerk", "tenant": "acme"})).await;
    let mallory = register_device(
        entry.addr,
        &json!({"device_id": "mallory", "tenant": "globex"}),
    )
    .await;
    // A self-registration cannot take a tenant's department.
    let (status, body) = call(
        entry.addr,
        "POST",
        "/api/v1/devices/register",
        None,
        &[],
        &json!({"device_id": "sneaky", "tenant": "globex", "department": "acme:finance"})
            .to_string(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not_allowed"), "{body}");
    let (status, body) = set_departments(admin_entry, &acme, "clerk", &["finance"]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("acme:finance"), "{body}");
    // acme's admin cannot grant globex's device anything: not found.
    let (status, _) = set_departments(admin_entry, &acme, "mallory", &["finance"]).await;
    assert_eq!(status, 404);

    let (mut good, welcome) = entry
        .connect_with(
            &format!("/ws?device_id=clerk&token={clerk}"),
            &[("x-department-id", "acme:finance")],
        )
        .await;
    assert_eq!(welcome.groups.len(), 1, "{welcome:?}");
    // Mallory asks for acme's department in the handshake: connected, but
    // not in it, and told so.
    let (mut bad, welcome) = entry
        .connect_with(
            &format!("/ws?device_id=mallory&token={mallory}"),
            &[("x-department-id", "acme:finance,@room:sale")],
        )
        .await;
    assert!(welcome.groups.is_empty(), "{welcome:?}");
    match next_frame(&mut bad).await {
        ServerFrame::Error { code, message } => {
            assert_eq!(code, pace_protocol::ErrorCode::NotAllowed);
            assert!(message.contains("acme:finance"), "{message}");
        }
        other => panic!("expected not_allowed, got {other:?}"),
    }
    for group in ["acme:finance", "acme:ops", "@room:sale"] {
        send_text(
            &mut bad,
            &json!({"type": "subscribe", "group": group}).to_string(),
        )
        .await;
        match next_frame(&mut bad).await {
            ServerFrame::Error { code, .. } => {
                assert_eq!(code, pace_protocol::ErrorCode::NotAllowed, "{group}")
            }
            other => panic!("{group}: expected not_allowed, got {other:?}"),
        }
    }
    // A broadcast already in acme:finance's history: a resume cursor does
    // not replay it to mallory.
    group_memo(admin_entry, &acme, "acme:finance", "payroll").await;
    group_memo(admin_entry, &acme, "@room:sale", "room news").await;
    send_text(
        &mut bad,
        r#"{"type":"resume","cursors":[{"scope":"group","target":"acme:finance","epoch":0,"seq":0},{"scope":"group","target":"@room:sale","epoch":0,"seq":0}]}"#,
    )
    .await;
    let got = frames_within(&mut bad, Duration::from_millis(800)).await;
    match got.as_slice() {
        [ServerFrame::Resumed { scopes }] => {
            assert!(
                scopes
                    .iter()
                    .all(|s| s.reason.as_deref() == Some("not_allowed") && s.replayed == 0),
                "{scopes:?}"
            );
        }
        other => panic!("expected one refused resume and nothing else, got {other:?}"),
    }
    // The department's member got the broadcast; mallory never does.
    let got = frames_within(&mut good, Duration::from_millis(800)).await;
    assert_eq!(notifications(&got), vec![json!({"text": "payroll"})]);
    group_memo(admin_entry, &acme, "acme:finance", "bonus").await;
    let got = frames_within(&mut good, Duration::from_millis(800)).await;
    assert_eq!(notifications(&got), vec![json!({"text": "bonus"})]);
    let got = frames_within(&mut bad, Duration::from_millis(300)).await;
    assert!(notifications(&got).is_empty(), "mallory received {got:?}");
    let _ = bad.send(Message::Close(None)).await;
    let _ = good.send(Message::Close(None)).await;
}

#[tokio::test]
async fn a_device_of_another_tenant_reaches_no_acme_group_on_one_node() {
    let data = tenants_dir(&["acme", "globex"]);
    let node = TestNode::start_with(|c| {
        c.devices.insecure_anonymous_devices = false;
        c.store.data_dir = data;
        c.web.demo_room = false;
    })
    .await;
    isolation(&node, &node).await;
    assert!(
        node.metric(r#"pace_groups_refused_total{via="subscribe"}"#)
            .await
            >= 3.0
    );
    assert!(
        node.metric(r#"pace_groups_refused_total{via="handshake"}"#)
            .await
            >= 2.0
    );
    assert!(
        node.metric(r#"pace_groups_refused_total{via="resume"}"#)
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn a_device_of_another_tenant_reaches_no_acme_group_across_three_nodes() {
    let cluster = Cluster::start_secure(3, &[]).await;
    cluster_tenants(&cluster);
    // Devices through the gateway; the admin on a node of its own.
    isolation(&cluster.gateway.handle(), &cluster.node(2)).await;
}

#[tokio::test]
async fn a_department_change_reaches_a_connected_device_within_a_second() {
    let cluster = Cluster::start_secure(3, &[]).await;
    cluster_tenants(&cluster);
    let gw = cluster.gateway.handle();
    let acme = admin_login(cluster.node(0).addr, "acme").await;
    let token = register_device(gw.addr, &json!({"device_id": "moving", "tenant": "acme"})).await;
    let admin_node = cluster.node(1);
    let grant = |groups: &'static [&'static str]| {
        let (node, acme) = (&admin_node, acme.clone());
        async move {
            let (status, body) = set_departments(node, &acme, "moving", groups).await;
            assert_eq!(status, 200, "{body}");
        }
    };
    grant(&["ops"]).await;
    let (mut ws, welcome) = gw
        .connect_with(
            &format!("/ws?device_id=moving&token={token}"),
            &[("x-department-id", "acme:ops")],
        )
        .await;
    assert_eq!(welcome.groups.len(), 1);
    let sender = cluster.node(0);
    group_memo(&sender, &acme, "acme:ops", "before").await;
    assert_eq!(
        notifications(&frames_within(&mut ws, Duration::from_millis(800)).await),
        vec![json!({"text": "before"})]
    );
    // Moved from ops to finance by an admin on another node.
    grant(&["finance"]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    group_memo(&sender, &acme, "acme:ops", "after").await;
    let got = frames_within(&mut ws, Duration::from_millis(800)).await;
    assert!(
        notifications(&got).is_empty(),
        "still in ops a second later: {got:?}"
    );
    // Its connection now may join finance, and no longer ops.
    send_text(&mut ws, r#"{"type":"subscribe","group":"acme:ops"}"#).await;
    assert!(matches!(
        next_frame(&mut ws).await,
        ServerFrame::Error {
            code: pace_protocol::ErrorCode::NotAllowed,
            ..
        }
    ));
    send_text(&mut ws, r#"{"type":"subscribe","group":"acme:finance"}"#).await;
    assert!(matches!(
        next_frame(&mut ws).await,
        ServerFrame::Subscribed { .. }
    ));
}

#[tokio::test]
async fn a_kicked_device_is_closed_and_its_tokens_stop_working() {
    let w = World::new().await;
    let addr = w.node.addr;
    let (mut ws, _) = w
        .node
        .connect_with(&format!("/ws?device_id=D&token={}", w.dev_d), &[])
        .await;
    let (status, body) = call(
        addr,
        "POST",
        "/api/v1/admin/devices/D/kick",
        Some(&w.adm_acme),
        &[],
        "{}",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(close_code(&mut ws).await, Some(4004), "closed as revoked");
    // Its token opens nothing any more: not the WebSocket, not the status,
    // not a refresh.
    let err = w
        .node
        .try_connect(&format!("/ws?device_id=D&token={}", w.dev_d), &[])
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("401"), "{err:?}");
    let (status, body) = call(
        addr,
        "GET",
        "/api/v1/rooms/sale/status?device_id=D",
        Some(&w.dev_d),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 401);
    assert!(body.contains("device_token_revoked"), "{body}");
    let (status, body) = call(
        addr,
        "POST",
        "/api/v1/devices/register",
        Some(&w.dev_d),
        &[],
        r#"{"device_id":"D","tenant":"acme"}"#,
    )
    .await;
    assert_eq!(status, 401, "a revoked token cannot refresh: {body}");
    // Nor can anybody take the id over; once an admin forgets the
    // registration, the device registers anew and its new token works.
    let (status, _) = call(
        addr,
        "POST",
        "/api/v1/devices/register",
        None,
        &[],
        r#"{"device_id":"D"}"#,
    )
    .await;
    assert_eq!(status, 409);
    let (status, body) = call(
        addr,
        "DELETE",
        "/api/v1/admin/devices/D",
        Some(&w.adm_acme),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let fresh = register_device(addr, &json!({"device_id": "D", "tenant": "acme"})).await;
    let (_ws, _) = w
        .node
        .connect_with(&format!("/ws?device_id=D&token={fresh}"), &[])
        .await;
    assert_eq!(
        w.node
            .metric(r#"pace_revocations_total{kind="kick"}"#)
            .await,
        1.0
    );
    assert_eq!(
        w.node
            .metric(r#"pace_disconnects_total{reason="revoked"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_revoked_admission_stops_verifying_and_its_slot_goes_to_the_next_device() {
    let w = World::new().await;
    let addr = w.node.addr;
    let one = json!({"capacity": 1, "admit_per_minute": null, "session_ttl_secs": 300,
                     "target_url": "https://shop.example/in", "state": "open", "pow_difficulty": 0});
    let (status, _) = call(
        addr,
        "PUT",
        "/api/v1/admin/rooms/sale",
        Some(&w.adm_acme),
        &[],
        &one.to_string(),
    )
    .await;
    assert_eq!(status, 200);
    let token = w.admitted("D", &w.dev_d).await;
    let e_token = &w.creds[3].1;
    let (mut e, _) = w
        .node
        .connect_with(&format!("/ws?device_id=E&token={e_token}"), &[])
        .await;
    send_text(&mut e, r#"{"type":"join","room":"sale"}"#).await;
    match next_frame(&mut e).await {
        ServerFrame::Queue(q) => assert_eq!(q.position, 1),
        other => panic!("{other:?}"),
    }
    let verify = |t: String| async move {
        let (_, body) = call(
            addr,
            "POST",
            "/api/v1/admissions/verify",
            None,
            &[],
            &json!({"token": t}).to_string(),
        )
        .await;
        serde_json::from_str::<Value>(&body).unwrap()
    };
    assert_eq!(verify(token.clone()).await["valid"], true);
    let (status, body) = call(
        addr,
        "POST",
        "/api/v1/admin/rooms/sale/sessions/revoke",
        Some(&w.adm_acme),
        &[],
        r#"{"device_id":"D"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v = verify(token).await;
    assert_eq!(
        (v["valid"].clone(), v["error"].clone()),
        (json!(false), json!("session_ended")),
        "{v}"
    );
    let admitted = loop {
        match next_frame(&mut e).await {
            ServerFrame::Admitted(a) => break a,
            ServerFrame::Queue(_) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        verify(admitted.token).await["valid"],
        true,
        "the slot went to E"
    );
    assert_eq!(
        w.node
            .metric(r#"pace_revocations_total{kind="session"}"#)
            .await,
        1.0
    );
}

/// Forgetting a registration revokes its tokens: whoever registers the id
/// next is the only one with a valid token for it. On an insecure node a
/// kicked tokenless device stays out too.
#[tokio::test]
async fn forgetting_a_device_revokes_its_tokens_and_a_kick_holds_on_insecure_nodes() {
    let w = World::new().await;
    let addr = w.node.addr;
    let (status, body) = call(
        addr,
        "DELETE",
        "/api/v1/admin/devices/D",
        Some(&w.adm_acme),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let fresh = register_device(addr, &json!({"device_id": "D", "tenant": "acme"})).await;
    assert!(
        w.node
            .try_connect(&format!("/ws?device_id=D&token={}", w.dev_d), &[])
            .await
            .is_err(),
        "the old token died with the registration"
    );
    w.node
        .connect_with(&format!("/ws?device_id=D&token={fresh}"), &[])
        .await;

    let insecure = TestNode::start().await;
    let (mut ws, _) = insecure.connect("walk-in").await;
    let (status, body) = call(
        insecure.addr,
        "POST",
        "/api/v1/admin/devices/walk-in/kick",
        Some(KEY),
        &[],
        "{}",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(close_code(&mut ws).await, Some(4004));
    assert!(
        insecure
            .try_connect("/ws?device_id=walk-in", &[])
            .await
            .is_err()
    );
}
