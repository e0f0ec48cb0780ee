//! The HTTP streaming transport on one node: `GET /stream` (SSE) and
//! `POST /stream/send` carry the WebSocket's frames, replacement, resume
//! (`Last-Event-ID`) and refusals.

use std::time::Duration;

use pace_protocol::ServerFrame;
use serde_json::{Value, json};

use crate::sse_client::{self, Item, post};
use crate::support::*;

async fn node() -> TestNode {
    TestNode::start_with(|c| {
        c.rooms.admit_tick = Duration::from_millis(50);
        c.web.demo_room = false;
    })
    .await
}

async fn put_room(node: &TestNode, room: &str, capacity: u32) {
    let body = json!({"capacity": capacity, "admit_per_minute": null, "session_ttl_secs": 60,
                      "target_url": "https://shop.example/in", "state": "open", "pow_difficulty": 0});
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

fn notification_data(f: ServerFrame) -> Value {
    match f {
        ServerFrame::Notification(n) => n.data,
        other => panic!("expected a notification, got {other:?}"),
    }
}

#[tokio::test]
async fn a_stream_device_joins_is_admitted_and_hears_every_scope() {
    let node = node().await;
    put_room(&node, "sale", 0).await;
    let (status, sse) = sse_client::open(
        node.addr,
        "/stream",
        &[("x-device-id", "s-1"), ("x-department-id", "sales")],
    )
    .await;
    assert_eq!(status, 200);
    let mut sse = sse.unwrap();
    assert_eq!(sse.headers["content-type"], "text/event-stream");
    match sse.frame().await {
        ServerFrame::Welcome(w) => {
            assert_eq!(w.device_id.as_str(), "s-1");
            assert_eq!(w.groups.len(), 1);
        }
        other => panic!("expected welcome, got {other:?}"),
    }
    assert_eq!(
        node.metric(r#"pace_transport_connections_open{transport="sse"}"#)
            .await,
        1.0
    );
    // Frames go up by POST, answers come down the stream.
    let (status, body) = post(
        node.addr,
        "s-1",
        r#"[{"type":"ping","id":4},{"type":"join","room":"sale"}]"#,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert!(matches!(
        sse.frame().await,
        ServerFrame::Pong { id: Some(4) }
    ));
    match sse.frame().await {
        ServerFrame::Queue(q) => assert_eq!(q.position, 1),
        other => panic!("expected queue, got {other:?}"),
    }
    // Capacity frees: the device is admitted on its stream.
    put_room(&node, "sale", 1).await;
    match sse.frame_but_queue().await {
        ServerFrame::Admitted(a) => assert!(!a.token.is_empty()),
        other => panic!("expected admitted, got {other:?}"),
    }
    for (scope, target, n) in [
        ("all", None, 1),
        ("group", Some("sales"), 2),
        ("device", Some("s-1"), 3),
    ] {
        let mut body = json!({"scope": scope, "event": "e", "data": {"n": n}});
        if let Some(t) = target {
            body["target"] = json!(t);
        }
        let (status, answer) = node.notify(body).await;
        assert_eq!(status, 202, "{answer}");
        let e = sse.event().await;
        let id = e.id.clone().expect("a notification event carries an id");
        let cursors: Vec<Value> = serde_json::from_str(&id).unwrap();
        assert_eq!(
            cursors.len(),
            n as usize,
            "one cursor per scope heard: {id}"
        );
        let f: ServerFrame = serde_json::from_str(&e.data).unwrap();
        assert_eq!(notification_data(f)["n"], n);
    }
    // A bad frame is answered on the stream, as on /ws.
    let (status, _) = post(node.addr, "s-1", r#"{"type":"teleport"}"#).await;
    assert_eq!(status, 202);
    match sse.frame().await {
        ServerFrame::Error { code, .. } => {
            assert_eq!(code, pace_protocol::ErrorCode::UnknownType)
        }
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[tokio::test]
async fn posts_without_a_stream_here_and_bad_posts_are_refused() {
    let node = node().await;
    let (status, body) = post(node.addr, "nobody", r#"{"type":"ping","id":1}"#).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("stream_not_here"), "{body}");
    let (_, sse) = sse_client::open(node.addr, "/stream?device_id=s-2", &[]).await;
    let mut sse = sse.unwrap();
    assert!(matches!(sse.frame().await, ServerFrame::Welcome(_)));
    let (status, body) = post(node.addr, "s-2", "not json").await;
    assert_eq!(status, 400, "{body}");
    let many = Value::Array(vec![json!({"type":"ping","id":1}); 17]).to_string();
    let (status, _) = post(node.addr, "s-2", &many).await;
    assert_eq!(status, 400);
    let big = format!(r#"{{"type":"ping","id":1,"pad":"{}"}}"#, "x".repeat(70_000));
    let (status, _) = post(node.addr, "s-2", &big).await;
    assert_eq!(status, 413);
    assert_eq!(
        node.metric(r#"pace_stream_posts_total{result="not_here"}"#)
            .await,
        1.0
    );
    // The handshake's refusals are /ws's: no device id is 400.
    let (status, _) = sse_client::open(node.addr, "/stream", &[]).await;
    assert_eq!(status, 400);
    assert_eq!(
        node.metric(r#"pace_handshakes_refused_total{reason="missing_device_id"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_second_connection_replaces_the_stream_on_either_transport() {
    let node = node().await;
    let (_, old) = sse_client::open(node.addr, "/stream?device_id=s-3", &[]).await;
    let mut old = old.unwrap();
    assert!(matches!(old.frame().await, ServerFrame::Welcome(_)));
    let (_, new) = sse_client::open(node.addr, "/stream?device_id=s-3", &[]).await;
    let mut new = new.unwrap();
    assert!(matches!(new.frame().await, ServerFrame::Welcome(_)));
    let close = old.closed(SOON).await.expect("a close event");
    assert_eq!(close["code"], 4000);
    // POSTs reach the newer stream.
    let (status, _) = post(node.addr, "s-3", r#"{"type":"ping","id":9}"#).await;
    assert_eq!(status, 202);
    assert!(matches!(
        new.frame().await,
        ServerFrame::Pong { id: Some(9) }
    ));
    // A WebSocket of the device replaces the stream too.
    let (_ws, _) = node.connect("s-3").await;
    let close = new.closed(SOON).await.expect("a close event");
    assert_eq!(close["code"], 4000);
    node.wait_metric(r#"pace_transport_connections_open{transport="sse"}"#, 0.0)
        .await;
    let (status, _) = post(node.addr, "s-3", r#"{"type":"ping","id":9}"#).await;
    assert_eq!(
        status, 409,
        "the stream is gone; the WebSocket takes no POSTs"
    );
}

#[tokio::test]
async fn last_event_id_resumes_what_the_device_missed() {
    let node = node().await;
    let (_, sse) = sse_client::open(node.addr, "/stream?device_id=s-4", &[]).await;
    let mut sse = sse.unwrap();
    assert!(matches!(sse.frame().await, ServerFrame::Welcome(_)));
    node.notify(json!({"scope": "all", "event": "e", "data": {"n": 1}}))
        .await;
    let first = sse.event().await;
    let last_id = first.id.unwrap();
    drop(sse);
    node.wait_metric(r#"pace_transport_connections_open{transport="sse"}"#, 0.0)
        .await;
    for n in [2, 3] {
        node.notify(json!({"scope": "all", "event": "e", "data": {"n": n}}))
            .await;
    }
    let (_, sse) = sse_client::open(
        node.addr,
        "/stream?device_id=s-4",
        &[("last-event-id", &last_id)],
    )
    .await;
    let mut sse = sse.unwrap();
    assert!(matches!(sse.frame().await, ServerFrame::Welcome(_)));
    let mut got = Vec::new();
    loop {
        match sse.frame().await {
            ServerFrame::Notification(n) => got.push(n.data["n"].as_u64().unwrap()),
            ServerFrame::Resumed { scopes } => {
                assert!(scopes[0].recovered);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, [2, 3]);
}

#[tokio::test]
async fn an_idle_stream_carries_keep_alive_comments() {
    let node = TestNode::start_with(|c| {
        c.limits.sse_heartbeat = Duration::from_millis(200);
        c.web.demo_room = false;
    })
    .await;
    let (_, sse) = sse_client::open(node.addr, "/stream?device_id=s-5", &[]).await;
    let mut sse = sse.unwrap();
    assert!(matches!(sse.frame().await, ServerFrame::Welcome(_)));
    let mut keep_alives = 0;
    while keep_alives < 3 {
        match sse.item_within(SOON).await {
            Some(Item::Comment(c)) if c == "keep-alive" => keep_alives += 1,
            Some(_) => {}
            None => panic!("the stream went silent"),
        }
    }
}

#[tokio::test]
async fn open_streams_are_not_pending_connections_of_their_address() {
    // Like upgraded WebSockets, established streams leave the address's
    // count of pending connections: more streams than the cap get in.
    let node = TestNode::start_with(|c| {
        c.limits.max_pending_per_address = 2;
        c.web.demo_room = false;
    })
    .await;
    let mut streams = Vec::new();
    for i in 0..5 {
        let (status, sse) =
            sse_client::open(node.addr, &format!("/stream?device_id=many-{i}"), &[]).await;
        assert_eq!(status, 200, "stream {i}");
        let mut sse = sse.unwrap();
        assert!(matches!(sse.frame().await, ServerFrame::Welcome(_)));
        streams.push(sse);
    }
    assert_eq!(
        node.metric(r#"pace_transport_connections_open{transport="sse"}"#)
            .await,
        5.0
    );
}
