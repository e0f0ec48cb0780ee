//! Against bots and floods: proof of work on join, join attempts per
//! device, handshakes per source address (behind a trusted proxy too).

use pace_protocol::{Challenge, ErrorCode, ServerFrame};
use serde_json::{Value, json};

use crate::support::*;

async fn put_room(node: &TestNode, room: &str, pow_difficulty: u8) {
    let body = room_json(0, |c| c.pow_difficulty = pow_difficulty);
    let (status, text) = crate::support::put_room(node, room, body).await;
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
    let node = TestNode::start_with(|c| c.web.demo_room = false).await;
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
        c.web.demo_room = false;
        c.rooms.joins_per_minute = 3;
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
    let node = TestNode::start_with(|c| c.limits.handshakes_per_address = 5).await;
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
        c.limits.handshakes_per_address = 2;
        c.origins.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
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
        c.web.demo_room = false;
        c.devices.insecure_anonymous_devices = false;
        c.rooms.max_places_per_user = 2;
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
        c.devices.insecure_anonymous_devices = false;
        c.devices.device_token_jwks = Some(jwks.clone());
        c.devices.device_token_issuer = Some("https://idp.example".into());
        c.devices.device_token_audience = Some("pace".into());
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

/// Opens a WebSocket to `/ws` as `device` by hand, over a socket with a
/// small receive buffer, and returns it right after the 101: the caller
/// writes raw frames and never reads.
async fn raw_upgrade(node: &TestNode, device: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(node.addr).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nx-device-id: {device}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        node.addr
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            tcp.read(&mut byte).await.unwrap(),
            1,
            "closed in the handshake"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp
}

/// `n` masked ping frames with 125-byte payloads (the largest a control
/// frame may carry), as a client sends them.
fn ping_frames(n: usize) -> Vec<u8> {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut frame = vec![0x89, 0x80 | 125];
    frame.extend_from_slice(&mask);
    frame.extend((0..125).map(|i| b'p' ^ mask[i % 4]));
    frame.repeat(n)
}

#[tokio::test]
async fn a_ping_flood_from_a_device_that_does_not_read_is_cut_off() {
    use tokio::io::AsyncWriteExt;
    let node = TestNode::start().await;
    let bound = config().limits.ws_max_write_buffer;
    let (mut other, _) = node.connect("bystander").await;
    let mut flood = raw_upgrade(&node, "flooder").await;
    node.wait_metric("pace_connections_open", 2.0).await;

    // Pings in 131 KiB writes until the node cuts the connection off
    // (bounded: at most 256 MiB or 30 s).
    let chunk = ping_frames(1024);
    let started = std::time::Instant::now();
    let mut sent = 0usize;
    let cut_off = loop {
        if sent >= 256 << 20 || started.elapsed() > std::time::Duration::from_secs(30) {
            break false;
        }
        match tokio::time::timeout(std::time::Duration::from_secs(5), flood.write_all(&chunk)).await
        {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(_)) => break true,
            // The node stopped reading without closing: not what we want.
            Err(_) => break false,
        }
    };
    assert!(cut_off, "still connected after {sent} bytes of pings");
    node.wait_metric(r#"pace_limits_hit_total{limit="pong_backlog"}"#, 1.0)
        .await;
    node.wait_metric(r#"pace_disconnects_total{reason="slow_consumer"}"#, 1.0)
        .await;
    node.wait_metric("pace_connections_open", 1.0).await;
    // What the node took in before cutting off is the socket buffers plus
    // the bound, never the whole flood (the kernel's loopback buffers are
    // a few MiB each way).
    assert!(
        sent < 64 << 20,
        "{sent} bytes of pings accepted (write buffer bound {bound})"
    );
    // The other device was served all along and still is.
    assert_eq!(
        ask(&mut other, json!({"type": "ping", "id": 3})).await,
        ServerFrame::Pong { id: Some(3) }
    );
}

/// Sends `resume` and reads until `resumed` (or an `error`): the
/// notifications replayed, and the answer.
async fn resume(ws: &mut Ws, cursors: Value) -> (usize, ServerFrame) {
    send_text(
        ws,
        &json!({"type": "resume", "cursors": cursors}).to_string(),
    )
    .await;
    let mut replayed = 0;
    loop {
        match next_frame(ws).await {
            ServerFrame::Notification(_) => replayed += 1,
            other @ (ServerFrame::Resumed { .. } | ServerFrame::Error { .. }) => {
                return (replayed, other);
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn resume_replays_each_scope_once_per_connection() {
    let node = TestNode::start_with(|c| c.store.history_max_len = 10).await;
    for i in 0..25 {
        let (status, body) = node
            .notify(json!({"scope": "all", "event": "e", "data": i}))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    let everything = json!({"scope": "all", "epoch": 0, "seq": 0});

    // The same cursor 34 times: refused, nothing replayed.
    let (mut ws, _) = node
        .connect_with("/ws?device_id=replayer&resume=1", &[])
        .await;
    let repeated: Vec<Value> = (0..34).map(|_| everything.clone()).collect();
    let (replayed, answer) = resume(&mut ws, json!(repeated)).await;
    assert_eq!(replayed, 0);
    match answer {
        ServerFrame::Error { code, message } => {
            assert_eq!(code, ErrorCode::InvalidFrame);
            assert!(message.contains("cursor 1"), "{message}");
        }
        other => panic!("expected invalid_frame, got {other:?}"),
    }
    // The same group named twice (by one target) is the same scope too.
    let group = json!({"scope": "group", "target": "ops", "epoch": 0, "seq": 0});
    let (mut other, _) = node
        .connect_with("/ws?device_id=replayer-2&resume=1", &[])
        .await;
    let (_, answer) = resume(&mut other, json!([group, everything, group])).await;
    assert_eq!(error_code(answer), ErrorCode::InvalidFrame);
    assert_eq!(
        node.metric(r#"pace_limits_hit_total{limit="duplicate_cursor"}"#)
            .await,
        2.0
    );
    assert_eq!(
        node.metric(r#"pace_frames_rejected_total{reason="duplicate_cursor"}"#)
            .await,
        2.0
    );
    assert_eq!(node.metric("pace_history_replayed_total").await, 0.0);

    // One resume per connection: a second one is refused, not replayed.
    let (mut ws, _) = node
        .connect_with("/ws?device_id=replayer&resume=1", &[])
        .await;
    let (replayed, answer) = resume(&mut ws, json!([everything])).await;
    assert_eq!(replayed, 10, "the history bound per scope");
    assert!(matches!(answer, ServerFrame::Resumed { .. }), "{answer:?}");
    let (replayed, answer) = resume(&mut ws, json!([everything])).await;
    assert_eq!((replayed, error_code(answer)), (0, ErrorCode::InvalidFrame));
    assert_eq!(
        node.metric(r#"pace_limits_hit_total{limit="resume_repeated"}"#)
            .await,
        1.0
    );
    drop(ws);

    // 20 legitimate resumes of the same device within a minute (a device
    // on a flaky network): each replays at most the scope's history bound.
    for _ in 0..20 {
        let (mut ws, _) = node
            .connect_with("/ws?device_id=replayer&resume=1", &[])
            .await;
        let (replayed, answer) = resume(&mut ws, json!([everything])).await;
        assert_eq!(replayed, 10);
        match answer {
            ServerFrame::Resumed { scopes } => assert_eq!(scopes[0].replayed, 10),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        node.metric("pace_history_replayed_total").await,
        210.0,
        "21 resumes × the 10 kept"
    );
    // The device still gets live notifications.
    let (mut ws, _) = node.connect("replayer").await;
    node.notify(json!({"scope": "all", "event": "live"})).await;
    assert!(matches!(
        next_frame(&mut ws).await,
        ServerFrame::Notification(_)
    ));
}

/// A TCP connection to `node` from the loopback address `from`.
async fn tcp_from(from: &str, node: &TestNode) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    socket.connect(node.addr).await
}

/// `GET path` from the loopback address `from`: status and body.
async fn get_from(from: &str, node: &TestNode, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tcp_from(from, node).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: pace\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(SOON, tcp.read_to_end(&mut resp))
        .await
        .expect("answered")
        .unwrap();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// A metric's value, read from the loopback address `from`.
async fn metric_from(from: &str, node: &TestNode, sample: &str) -> f64 {
    let (status, text) = get_from(from, node, "/metrics").await;
    assert_eq!(status, 200);
    metric_value(&text, sample)
}

/// Whether the node closed `tcp` (data or EOF is waiting), without waiting.
fn closed_by_node(tcp: &tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 512];
    match tcp.try_read(&mut buf) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

#[tokio::test]
async fn silent_connections_from_one_address_are_capped() {
    const TOTAL: usize = 21_000;
    const BATCH: usize = 1_000;
    // No silent connection times out while the test runs.
    let node =
        TestNode::start_with(|c| c.limits.handshake_timeout = std::time::Duration::from_secs(120))
            .await;
    let cap = config().limits.max_pending_per_address as usize;
    assert_eq!(cap, 1000, "the default");

    // 21,000 connections from 127.0.0.1 that never send a byte, in
    // batches: the node keeps `cap` of them and closes the rest at once.
    // The test only holds the ones still open (open files are capped).
    let mut alive: Vec<tokio::net::TcpStream> = Vec::new();
    let mut refused = 0usize;
    let mut opened = 0usize;
    while opened < TOTAL {
        for _ in 0..BATCH.min(TOTAL - opened) {
            alive.push(tcp_from("127.0.0.1", &node).await.unwrap());
            opened += 1;
        }
        // Wait until the node has dealt with the batch: exactly `cap`
        // stay open (bounded wait).
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let before = alive.len();
            alive.retain(|tcp| !closed_by_node(tcp));
            refused += before - alive.len();
            if alive.len() <= cap.min(opened) || tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(alive.len(), cap.min(opened), "after {opened} connections");
    }
    assert_eq!(refused, TOTAL - cap);

    // Over the cap, even a real request from that address gets 429
    // `too_many_pending`.
    let (status, body) = get_from("127.0.0.1", &node, "/health").await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("too_many_pending"), "{body}");

    // Other addresses are served: health checks and devices.
    assert_eq!(get_from("127.0.0.3", &node, "/health").await.0, 200);
    assert_eq!(get_from("127.0.0.3", &node, "/ready").await.0, 200);
    let tcp = tcp_from("127.0.0.2", &node).await.unwrap();
    let (mut ws, _) = tokio::time::timeout(
        SOON,
        tokio_tungstenite::client_async(
            format!("ws://{}/ws?device_id=elsewhere", node.addr),
            tokio_tungstenite::MaybeTlsStream::Plain(tcp),
        ),
    )
    .await
    .expect("handshake in time")
    .expect("handshake");
    assert!(matches!(next_frame(&mut ws).await, ServerFrame::Welcome(_)));
    assert_eq!(
        ask(&mut ws, json!({"type": "ping", "id": 1})).await,
        ServerFrame::Pong { id: Some(1) }
    );
    assert_eq!(
        metric_from(
            "127.0.0.3",
            &node,
            r#"pace_limits_hit_total{limit="pending_per_address"}"#
        )
        .await,
        (TOTAL - cap + 1) as f64
    );
    assert!(metric_from("127.0.0.3", &node, "pace_connections_pending").await >= cap as f64);

    // Once the silent ones go, the address may connect again.
    drop(alive);
    let deadline = tokio::time::Instant::now() + SOON;
    while metric_from("127.0.0.3", &node, "pace_connections_pending").await > 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pending never drained"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(get_from("127.0.0.1", &node, "/health").await.0, 200);
}

#[tokio::test]
async fn at_the_descriptor_budget_silent_connections_make_room_for_health_checks() {
    // A budget of 40 sockets (open files 168, reserve 128).
    let node = TestNode::start_with(|c| {
        c.open_files = Some(168);
        c.limits.fd_reserve = 128;
        c.limits.handshake_timeout = std::time::Duration::from_secs(120);
    })
    .await;
    // 40 silent connections, from many addresses (each under its cap).
    let mut silent = Vec::new();
    for i in 0..40 {
        silent.push(
            tcp_from(&format!("127.0.1.{}", i + 1), &node)
                .await
                .unwrap(),
        );
    }
    let deadline = tokio::time::Instant::now() + SOON;
    while metric_from("127.0.0.3", &node, "pace_connections_pending").await < 40.0 {
        // The metrics request itself sheds one of them when the budget is
        // reached; stop as soon as it is full.
        if tokio::time::Instant::now() > deadline || silent.iter().any(closed_by_node) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Health checks keep answering: at the budget a new connection sheds
    // the oldest silent one (only one is needed: the health check's
    // connection closes after its answer).
    for _ in 0..5 {
        assert_eq!(get_from("127.0.0.3", &node, "/health").await.0, 200);
    }
    let deadline = tokio::time::Instant::now() + SOON;
    while !closed_by_node(&silent[0]) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the oldest was not shed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        !closed_by_node(&silent[39]),
        "the newest silent connection stays"
    );
    assert!(
        metric_from(
            "127.0.0.3",
            &node,
            r#"pace_limits_hit_total{limit="descriptors"}"#
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_trusted_gateway_is_not_capped_per_address_at_accept() {
    let node = TestNode::start_with(|c| {
        c.limits.max_pending_per_address = 2;
        c.origins.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.limits.handshake_timeout = std::time::Duration::from_secs(120);
    })
    .await;
    // The gateway's keep-alive connections: more than the cap, all kept.
    let mut gateway = Vec::new();
    for _ in 0..5 {
        gateway.push(tcp_from("127.0.0.1", &node).await.unwrap());
    }
    // A direct client is capped.
    let mut direct = Vec::new();
    for _ in 0..3 {
        direct.push(tcp_from("127.0.0.4", &node).await.unwrap());
    }
    let deadline = tokio::time::Instant::now() + SOON;
    while !closed_by_node(&direct[2]) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "third direct connection kept"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!gateway.iter().any(closed_by_node));
    assert!(!direct[..2].iter().any(closed_by_node));
    // A device behind the gateway still connects through it.
    node.connect_with(
        "/ws",
        &[
            ("x-device-id", "behind"),
            ("x-forwarded-for", "198.51.100.7"),
        ],
    )
    .await;
}

#[tokio::test]
async fn upgraded_devices_no_longer_count_as_pending() {
    let node = TestNode::start_with(|c| c.limits.max_pending_per_address = 2).await;
    // Five devices from one address, over a cap of two: each leaves the
    // pending count once it is upgraded.
    let mut devices = Vec::new();
    for i in 0..5 {
        devices.push(node.connect(&format!("nat-device-{i}")).await.0);
    }
    assert_eq!(node.metric("pace_connections_open").await, 5.0);
    assert_eq!(
        node.metric(r#"pace_limits_hit_total{limit="pending_per_address"}"#)
            .await,
        0.0
    );
    // Only the metrics request itself is pending.
    assert_eq!(node.metric("pace_connections_pending").await, 1.0);
}
