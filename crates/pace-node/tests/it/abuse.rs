//! Against bots and floods: proof of work on join, join attempts per
//! device, handshakes per source address (behind a trusted proxy too).

use pace_protocol::{Challenge, ErrorCode, ServerFrame};
use serde_json::{Value, json};

use crate::support::*;

async fn put_room(node: &TestNode, room: &str, pow_difficulty: u8) {
    let body = json!({"capacity": 0, "admit_per_minute": null, "session_ttl_secs": 60,
        "target_url": "https://shop.example/in", "state": "open",
        "pow_difficulty": pow_difficulty});
    let (status, text) = http(
        node.addr,
        "PUT",
        &format!("/api/v1/rooms/{room}"),
        &[("authorization", &format!("Bearer {KEY}"))],
        &body.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
}

async fn ask(ws: &mut Ws, frame: Value) -> ServerFrame {
    send_text(ws, &frame.to_string()).await;
    next_frame(ws).await
}

async fn challenge(ws: &mut Ws, room: &str) -> Challenge {
    match ask(ws, json!({"type": "join", "room": room})).await {
        ServerFrame::Challenge(c) => c,
        other => panic!("expected a challenge, got {other:?}"),
    }
}

fn solve(c: &Challenge) -> String {
    pace_protocol::pow::solve(&c.prefix, c.difficulty, 0, 1 << 26)
        .expect("solvable")
        .to_string()
}

fn error_code(frame: ServerFrame) -> ErrorCode {
    match frame {
        ServerFrame::Error { code, .. } => code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn proof_of_work_guards_new_places() {
    let node = TestNode::start_with(|c| c.demo_room = false).await;
    put_room(&node, "drop", 10).await;
    let (mut a, _) = node.connect("pow-a").await;
    let (mut b, _) = node.connect("pow-b").await;

    // Without a solution: a challenge, every time, never a place.
    let c1 = challenge(&mut a, "drop").await;
    assert_eq!((c1.difficulty, c1.room.as_str()), (10, "drop"));
    let c2 = challenge(&mut a, "drop").await;
    assert_ne!(c1.prefix, c2.prefix, "fresh random prefix per challenge");

    // A wrong solution, a forged challenge, another device's challenge.
    let good = solve(&c1);
    let wrong = (0u64..)
        .map(|n| n.to_string())
        .find(|n| !pace_protocol::pow::meets(&c1.prefix, n, c1.difficulty))
        .unwrap();
    let solve_frame = |c: &Challenge, token: &str, solution: &str| json!({"type": "solve", "room": c.room, "challenge": token, "solution": solution});
    assert_eq!(
        error_code(ask(&mut a, solve_frame(&c1, &c1.challenge, &wrong)).await),
        ErrorCode::PowInvalid
    );
    let mut forged: Vec<&str> = c1.challenge.split('.').collect();
    forged[2] = "AAAA";
    assert_eq!(
        error_code(ask(&mut a, solve_frame(&c1, &forged.join("."), &good)).await),
        ErrorCode::PowInvalid
    );
    assert_eq!(
        error_code(ask(&mut b, solve_frame(&c1, &c1.challenge, &good)).await),
        ErrorCode::PowInvalid,
        "a solution is bound to the device it was given to"
    );

    // The right one: a place.
    match ask(&mut a, solve_frame(&c1, &c1.challenge, &good)).await {
        ServerFrame::Queue(q) => assert_eq!(q.position, 1),
        other => panic!("{other:?}"),
    }
    // Joining again with a place costs no work (reconnects).
    assert!(matches!(
        ask(&mut a, json!({"type": "join", "room": "drop"})).await,
        ServerFrame::Queue(_)
    ));
    // Used once: after leaving, the same challenge does not give a place.
    assert!(matches!(
        ask(&mut a, json!({"type": "leave", "room": "drop"})).await,
        ServerFrame::Left { .. }
    ));
    assert_eq!(
        error_code(ask(&mut a, solve_frame(&c1, &c1.challenge, &good)).await),
        ErrorCode::PowReused
    );

    // Difficulty changes live: 0 means a plain join.
    put_room(&node, "drop", 0).await;
    match ask(&mut b, json!({"type": "join", "room": "drop"})).await {
        ServerFrame::Queue(q) => assert_eq!(q.position, 1),
        other => panic!("{other:?}"),
    }
    let metric = |r: &str| format!(r#"pace_pow_total{{result="{r}"}}"#);
    assert_eq!(node.metric(&metric("challenged")).await, 2.0);
    assert_eq!(node.metric(&metric("solved")).await, 1.0);
    assert_eq!(node.metric(&metric("invalid")).await, 3.0);
    assert_eq!(node.metric(&metric("reused")).await, 1.0);
    assert_eq!(
        node.metric(r#"pace_frames_rejected_total{reason="pow_invalid"}"#)
            .await,
        3.0
    );
}

#[tokio::test]
async fn join_attempts_are_limited_per_device() {
    let node = TestNode::start_with(|c| {
        c.demo_room = false;
        c.joins_per_minute = 3;
    })
    .await;
    put_room(&node, "flood", 0).await;
    let (mut ws, _) = node.connect("eager").await;
    for _ in 0..3 {
        assert!(matches!(
            ask(&mut ws, json!({"type": "join", "room": "flood"})).await,
            ServerFrame::Queue(_)
        ));
    }
    assert_eq!(
        error_code(ask(&mut ws, json!({"type": "join", "room": "flood"})).await),
        ErrorCode::TooManyJoins
    );
    // Another device is not affected; the connection stays usable.
    let (mut other, _) = node.connect("calm").await;
    assert!(matches!(
        ask(&mut other, json!({"type": "join", "room": "flood"})).await,
        ServerFrame::Queue(_)
    ));
    assert_eq!(
        ask(&mut ws, json!({"type": "ping", "id": 1})).await,
        ServerFrame::Pong { id: Some(1) }
    );
    assert_eq!(
        node.metric(r#"pace_frames_rejected_total{reason="too_many_joins"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn handshakes_are_limited_per_source_address() {
    let node = TestNode::start_with(|c| c.handshakes_per_address = 5).await;
    let mut kept = Vec::new();
    for i in 0..5 {
        kept.push(node.connect(&format!("nat-{i}")).await.0);
    }
    let refused = node
        .try_connect("/ws", &[("x-device-id", "nat-5")])
        .await
        .expect_err("sixth handshake in the second");
    match refused {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status().as_u16(), 429);
            assert_eq!(resp.headers()["retry-after"], "1");
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "too_many_handshakes");
            assert_eq!(body["error"]["retryable"], true);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        node.metric(r#"pace_handshakes_refused_total{reason="too_many_handshakes"}"#)
            .await,
        1.0
    );
    // A second later the address may connect again.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    node.connect("nat-5").await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_counts() {
    let node = TestNode::start_with(|c| {
        c.handshakes_per_address = 2;
        c.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    // Two enterprises behind the same gateway: separate budgets.
    for (i, addr) in ["198.51.100.1", "198.51.100.1", "203.0.113.5", "203.0.113.5"]
        .iter()
        .enumerate()
    {
        let device = format!("fwd-{i}");
        node.connect_with(
            "/ws",
            &[("x-device-id", &device), ("x-forwarded-for", addr)],
        )
        .await;
    }
    let third = node
        .try_connect(
            "/ws",
            &[
                ("x-device-id", "fwd-9"),
                ("x-forwarded-for", "6.6.6.6, 198.51.100.1"),
            ],
        )
        .await;
    assert!(third.is_err(), "a spoofed left-most entry changes nothing");
}

#[tokio::test]
async fn a_verified_user_holds_a_bounded_number_of_places() {
    let node = TestNode::start_with(|c| {
        c.demo_room = false;
        c.insecure_anonymous_devices = false;
        c.max_places_per_user = 2;
    })
    .await;
    put_room(&node, "tickets", 0).await;
    let mut devices = Vec::new();
    for (id, user) in [
        ("alice-phone", "alice"),
        ("alice-laptop", "alice"),
        ("alice-tablet", "alice"),
        ("bob-phone", "bob"),
    ] {
        let token = register_device(node.addr, &json!({"device_id": id, "user": user})).await;
        let (ws, _) = node
            .connect_with(&format!("/ws?device_id={id}&token={token}"), &[])
            .await;
        devices.push(ws);
    }
    let join = json!({"type": "join", "room": "tickets"});
    for ws in &mut devices[..2] {
        assert!(matches!(ask(ws, join.clone()).await, ServerFrame::Queue(_)));
    }
    assert_eq!(
        error_code(ask(&mut devices[2], join.clone()).await),
        ErrorCode::TooManyPlaces,
        "a third place for alice"
    );
    // Other users are not affected; a device with a place rejoins freely.
    assert!(matches!(
        ask(&mut devices[3], join.clone()).await,
        ServerFrame::Queue(_)
    ));
    assert!(matches!(
        ask(&mut devices[0], join.clone()).await,
        ServerFrame::Queue(_)
    ));
    // Once one of alice's places ends, her third device may take one.
    // (A queue update may come first: the line changed as bob joined.)
    send_text(&mut devices[0], r#"{"type":"leave","room":"tickets"}"#).await;
    assert!(matches!(
        next_frame_but_queue(&mut devices[0]).await,
        ServerFrame::Left { .. }
    ));
    assert!(matches!(
        ask(&mut devices[2], join).await,
        ServerFrame::Queue(_)
    ));
    assert_eq!(
        node.metric(r#"pace_frames_rejected_total{reason="too_many_places"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn device_tokens_from_the_future_are_refused() {
    // An enterprise issuer whose clock runs an hour ahead (or that mints
    // `nbf` in the future) is refused at the handshake, like an admin or
    // admission token issued in the future; the same token kind with a
    // current `iat` connects, and a connected device keeps being served.
    let idp = pace_node::admission::KeySet::generate_in_memory().unwrap();
    let jwks = scratch_dir().join("idp.jwks.json");
    std::fs::write(&jwks, idp.jwks_json()).unwrap();
    let node = TestNode::start_with(|c| {
        c.insecure_anonymous_devices = false;
        c.device_token_jwks = Some(jwks.clone());
        c.device_token_issuer = Some("https://idp.example".into());
        c.device_token_audience = Some("pace".into());
    })
    .await;
    let now = pace_node::admission::unix_now();
    let token = |device: &str, iat: u64, nbf: Option<u64>| {
        let mut claims = json!({"iss": "https://idp.example", "aud": "pace",
            "sub": device, "iat": iat, "exp": now + 7200});
        if let Some(nbf) = nbf {
            claims["nbf"] = json!(nbf);
        }
        idp.sign_claims(&claims, now).unwrap()
    };
    let (mut served, _) = node
        .connect_with(
            &format!("/ws?device_id=dev-ok&token={}", token("dev-ok", now, None)),
            &[],
        )
        .await;
    for (name, t) in [
        ("iat an hour ahead", token("dev-future", now + 3600, None)),
        (
            "nbf a minute ahead",
            token("dev-future", now, Some(now + 60)),
        ),
    ] {
        match node
            .try_connect(&format!("/ws?device_id=dev-future&token={t}"), &[])
            .await
        {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 401, "{name}");
                let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["error"]["code"], "invalid_device_token", "{name}");
            }
            Ok(_) => panic!("{name}: connected"),
            Err(e) => panic!("{name}: {e}"),
        }
    }
    assert_eq!(
        node.metric(r#"pace_handshakes_refused_total{reason="invalid_device_token"}"#)
            .await,
        2.0
    );
    assert_eq!(
        ask(&mut served, json!({"type": "ping", "id": 7})).await,
        ServerFrame::Pong { id: Some(7) }
    );
    node.connect_with(
        &format!(
            "/ws?device_id=dev-future&token={}",
            token("dev-future", now, None)
        ),
        &[],
    )
    .await;
}
