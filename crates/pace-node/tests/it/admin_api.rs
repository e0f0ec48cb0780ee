//! The admin API and tenant isolation: every admin endpoint, tried by an
//! admin of one tenant on the other tenant's rooms and devices, answers as
//! if they did not exist.

use serde_json::{Value, json};

use crate::support::*;

async fn call(node: &TestNode, method: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let (status, text) = http(
        node.addr,
        method,
        path,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        &body,
    )
    .await
    .unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn room(capacity: u32) -> Value {
    json!({"capacity": capacity, "admit_per_minute": null, "session_ttl_secs": 60,
           "target_url": "https://shop.example/in", "state": "open", "pow_difficulty": 0})
}

async fn register(node: &TestNode, id: &str, tenant: &str) {
    register_device(
        node.addr,
        &json!({"device_id": id, "tenant": tenant, "model": "kiosk"}),
    )
    .await;
}

#[tokio::test]
async fn an_admin_sees_and_changes_only_its_own_tenant() {
    let dir = tenants_dir(&["acme", "globex"]);
    let node = TestNode::start_with(|c| {
        c.store.data_dir = dir.clone();
        c.web.demo_room = false;
    })
    .await;
    let tokens = [
        admin_login(node.addr, "acme").await,
        admin_login(node.addr, "globex").await,
    ];
    let tenants = ["acme", "globex"];
    for (t, token) in tenants.iter().zip(&tokens) {
        let (status, body) = call(
            &node,
            "PUT",
            &format!("/api/v1/admin/rooms/{t}-sale"),
            token,
            room(10),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        register(&node, &format!("{t}-kiosk"), t).await;
    }
    // A room made with the service key belongs to no tenant.
    let (status, _) = http(
        node.addr,
        "PUT",
        "/api/v1/rooms/legacy",
        &[("authorization", &format!("Bearer {KEY}"))],
        &room(3).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);

    for (i, me) in tenants.iter().enumerate() {
        let token = &tokens[i];
        let other = tenants[1 - i];
        // Every admin endpoint, on the other tenant's room and on the
        // unowned one: 404, exactly like a room that does not exist.
        for target in [
            format!("{other}-sale"),
            "legacy".to_owned(),
            format!("{me}-fresh"),
        ] {
            for (method, path, body) in [
                ("GET", format!("/api/v1/admin/rooms/{target}"), Value::Null),
                (
                    "GET",
                    format!("/api/v1/admin/rooms/{target}/stats"),
                    Value::Null,
                ),
                ("PUT", format!("/api/v1/admin/rooms/{target}"), room(999)),
            ] {
                let (status, body) = call(&node, method, &path, token, body).await;
                if target == format!("{me}-fresh") && method == "PUT" {
                    // A free id: creating it is fine (and it is now ours).
                    assert_eq!(status, 200, "{me} {method} {path}: {body}");
                    continue;
                }
                assert_eq!(status, 404, "{me} {method} {path}: {body}");
                assert_eq!(body["error"]["code"], "no_such_room");
            }
        }
        // The other tenant's room is unchanged.
        let (_, theirs) = http(
            node.addr,
            "GET",
            &format!("/api/v1/rooms/{other}-sale"),
            &[],
            "",
        )
        .await
        .unwrap();
        let theirs: Value = serde_json::from_str(&theirs).unwrap();
        assert_eq!(theirs["config"]["capacity"], 10, "{me} could not change it");

        // Listings show only the tenant's own.
        let (status, body) = call(&node, "GET", "/api/v1/admin/rooms", token, Value::Null).await;
        assert_eq!(status, 200);
        let ids: Vec<&str> = body["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert!(ids.contains(&format!("{me}-sale").as_str()), "{ids:?}");
        assert!(!ids.contains(&format!("{other}-sale").as_str()));
        assert!(!ids.contains(&"legacy"));
        let (status, body) = call(&node, "GET", "/api/v1/admin/devices", token, Value::Null).await;
        assert_eq!(status, 200);
        let devices: Vec<&str> = body["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["device_id"].as_str().unwrap())
            .collect();
        assert_eq!(devices, [format!("{me}-kiosk").as_str()]);
        assert!(
            !body.to_string().contains("token_id"),
            "token ids stay private"
        );
        let (_, body) = call(
            &node,
            "GET",
            &format!("/api/v1/admin/devices?q={other}"),
            token,
            Value::Null,
        )
        .await;
        assert_eq!(body["devices"], json!([]));

        // Own stats and room work.
        let (status, body) = call(
            &node,
            "GET",
            &format!("/api/v1/admin/rooms/{me}-sale/stats"),
            token,
            Value::Null,
        )
        .await;
        assert_eq!((status, body["waiting"].as_u64()), (200, Some(0)));

        // Notifications: own device and own groups; not another tenant's
        // device, not its groups, not everyone.
        let notify = |scope: &str, target: Option<String>| {
            let mut b = json!({"scope": scope, "event": "hello"});
            if let Some(t) = target {
                b["target"] = json!(t);
            }
            b
        };
        for (body, want) in [
            (notify("device", Some(format!("{me}-kiosk"))), 202),
            (notify("group", Some(format!("{me}:ops"))), 202),
            (notify("device", Some(format!("{other}-kiosk"))), 404),
            (notify("device", Some("unregistered".into())), 404),
            (notify("group", Some(format!("{other}:ops"))), 403),
            (notify("group", Some("ops".into())), 403),
            (notify("all", None), 403),
            // Room channels: only of the tenant's own rooms.
            (notify("group", Some(format!("@room:{me}-sale"))), 202),
            (notify("group", Some(format!("@room:{other}-sale"))), 404),
            (notify("group", Some("@room:legacy".into())), 404),
            (notify("group", Some("@room:no-such-room".into())), 404),
        ] {
            let (status, resp) = call(&node, "POST", "/api/v1/notify", token, body.clone()).await;
            assert_eq!(status, want, "{me}: {body} -> {resp}");
        }

        let (status, body) = call(&node, "GET", "/api/v1/admin/cluster", token, Value::Null).await;
        assert_eq!(status, 200, "{body}");
    }

    // Without a valid admin token: 401 everywhere; an admin token is no
    // service key.
    let endpoints = [
        ("GET", "/api/v1/admin/rooms"),
        ("GET", "/api/v1/admin/rooms/acme-sale"),
        ("PUT", "/api/v1/admin/rooms/acme-sale"),
        ("GET", "/api/v1/admin/rooms/acme-sale/stats"),
        ("GET", "/api/v1/admin/devices"),
        ("GET", "/api/v1/admin/cluster"),
    ];
    for bad in ["", "garbage", KEY] {
        for (method, path) in endpoints {
            let (status, _) = call(&node, method, path, bad, room(1)).await;
            assert_eq!(status, 401, "{method} {path} with {bad:?}");
        }
    }
    let (status, _) = call(&node, "PUT", "/api/v1/rooms/acme-sale", &tokens[0], room(1)).await;
    assert_eq!(status, 401, "the service-key room API refuses admin tokens");
    assert!(
        node.metric(r#"pace_admin_requests_total{result="unauthorized"}"#)
            .await
            >= 18.0
    );
}

#[tokio::test]
async fn the_admin_feed_streams_the_tenants_rooms_every_second() {
    let dir = tenants_dir(&["acme", "globex"]);
    let node = TestNode::start_with(|c| {
        c.store.data_dir = dir.clone();
        c.web.demo_room = false;
    })
    .await;
    let acme = admin_login(node.addr, "acme").await;
    let globex = admin_login(node.addr, "globex").await;
    call(
        &node,
        "PUT",
        "/api/v1/admin/rooms/acme-drop",
        &acme,
        room(5),
    )
    .await;
    call(
        &node,
        "PUT",
        "/api/v1/admin/rooms/globex-drop",
        &globex,
        room(7),
    )
    .await;

    // A wrong or missing credential: refused before the upgrade; an admin
    // token is never taken from the URL, not even a valid one.
    assert!(
        node.try_connect("/admin/ws?ticket=garbage", &[])
            .await
            .is_err()
    );
    assert!(node.try_connect("/admin/ws", &[]).await.is_err());
    assert!(
        node.try_connect(&format!("/admin/ws?token={acme}"), &[])
            .await
            .is_err(),
        "an admin token in the query string"
    );
    assert_eq!(
        node.metric(r#"pace_admin_tickets_total{result="token_in_url"}"#)
            .await,
        1.0
    );
    let (status, _) = call(&node, "POST", "/api/v1/admin/ws-ticket", KEY, Value::Null).await;
    assert_eq!(status, 401, "the service key is no admin");

    let (status, t) = call(&node, "POST", "/api/v1/admin/ws-ticket", &acme, Value::Null).await;
    assert_eq!(status, 200, "{t}");
    let ticket = t["ticket"].as_str().unwrap().to_owned();
    assert!(t["expires_at"].as_u64().unwrap() <= pace_node::admission::unix_now() + 30);
    let mut ws = node
        .try_connect(&format!("/admin/ws?ticket={ticket}"), &[])
        .await
        .expect("admin feed");
    // Used once: the same ticket opens nothing more.
    assert!(
        node.try_connect(&format!("/admin/ws?ticket={ticket}"), &[])
            .await
            .is_err(),
        "a reused ticket"
    );
    assert_eq!(
        node.metric(r#"pace_admin_tickets_total{result="reused"}"#)
            .await,
        1.0
    );
    let first = next_json(&mut ws).await;
    assert_eq!(first["type"], "telemetry");
    assert_eq!(first["tenant"], "acme");
    let rooms = first["rooms"].as_array().unwrap();
    assert_eq!(rooms.len(), 1, "only its own tenant's rooms: {first}");
    assert_eq!(rooms[0]["id"], "acme-drop");
    assert_eq!(rooms[0]["config"]["capacity"], 5);
    assert_eq!(rooms[0]["stats"]["waiting"], 0);
    assert!(first["nodes"].is_array());
    // A change made through the admin API shows in the next frames.
    call(
        &node,
        "PUT",
        "/api/v1/admin/rooms/acme-drop",
        &acme,
        room(50),
    )
    .await;
    let started = std::time::Instant::now();
    loop {
        let f = next_json(&mut ws).await;
        if f["rooms"][0]["config"]["capacity"] == 50 {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(4), "{f}");
    }
    assert_eq!(node.metric("pace_admin_feeds_open").await, 1.0);
}

/// A ticket older than 30 s (signed by the node's own keys) opens nothing.
#[tokio::test]
async fn an_expired_admin_feed_ticket_is_refused() {
    let keys_path = shared_keys();
    let keys = pace_node::admission::KeySet::load(&keys_path).unwrap();
    let data = tenants_dir(&["acme"]);
    let node = TestNode::start_with(|c| {
        c.store.data_dir = data;
        c.admission.keys = Some(keys_path);
    })
    .await;
    let now = pace_node::admission::unix_now();
    let admin = pace_node::accounts::sign_admin_token(
        &keys,
        &pace_node::accounts::TenantId::parse("acme").unwrap(),
        &pace_node::accounts::UserName::parse("admin").unwrap(),
        now,
        std::time::Duration::from_secs(900),
    )
    .unwrap()
    .1;
    let (_, mut claims) = pace_node::auth::tickets::issue(&keys, &admin, now).unwrap();
    // Expired past the clock leeway every token kind shares (5 s).
    claims.iat = now - 36;
    claims.exp = now - 6;
    let old = keys
        .sign_claims_typed(&claims, now, pace_node::auth::tickets::TICKET_TYPE)
        .unwrap();
    assert!(
        node.try_connect(&format!("/admin/ws?ticket={old}"), &[])
            .await
            .is_err()
    );
    assert_eq!(
        node.metric(r#"pace_admin_tickets_total{result="expired"}"#)
            .await,
        1.0
    );
    let (fresh, _) = pace_node::auth::tickets::issue(&keys, &admin, now).unwrap();
    assert!(
        node.try_connect(&format!("/admin/ws?ticket={fresh}"), &[])
            .await
            .is_ok(),
        "the same admin's fresh ticket opens the feed"
    );
}

/// The next text frame of an admin feed, as JSON.
async fn next_json(ws: &mut Ws) -> Value {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let msg = tokio::time::timeout(SOON, ws.next())
            .await
            .expect("a frame within 5 s")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str::<Value>(&t).unwrap();
        }
    }
}
