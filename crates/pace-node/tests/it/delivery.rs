//! Delivery: all, group and device scopes reach exactly the right devices,
//! once each; groups from frames; one connection per device id.

use std::time::Duration;

use pace_protocol::{CloseCode, ServerFrame};
use serde_json::json;

use crate::support::*;

/// Collects every notification each device receives until it has been quiet
/// for `quiet`.
async fn drain_notifications(
    ws: &mut Ws,
    quiet: Duration,
) -> Vec<(String, u64, serde_json::Value)> {
    let mut got = Vec::new();
    while let Some(frame) = frame_within(ws, quiet).await {
        if let ServerFrame::Notification(n) = frame {
            got.push((n.event.to_string(), n.seq, n.data));
        }
    }
    got
}

#[tokio::test]
async fn scopes_reach_exactly_the_right_devices_once() {
    let node = TestNode::start().await;
    let (mut a, _) = node
        .connect_with("/ws?device_id=a", &[("x-department-id", "sales")])
        .await;
    let (mut b, _) = node
        .connect_with("/ws?device_id=b", &[("x-department-id", "sales,it")])
        .await;
    let (mut c, _) = node
        .connect_with("/ws?device_id=c", &[("x-department-id", "it")])
        .await;
    let (mut d, _) = node.connect("d").await;

    let sends = [
        json!({"scope": "all", "event": "all-1", "data": {"n": 1}}),
        json!({"scope": "group", "target": "sales", "event": "sales-1", "data": null}),
        json!({"scope": "group", "target": "it", "event": "it-1"}),
        json!({"scope": "device", "target": "d", "event": "d-1", "data": [1, 2, 3]}),
        json!({"scope": "all", "event": "all-2"}),
        json!({"scope": "group", "target": "nobody", "event": "empty"}),
        json!({"scope": "device", "target": "absent", "event": "absent"}),
    ];
    let mut seqs = Vec::new();
    for body in sends {
        let (status, resp) = node.notify(body).await;
        assert_eq!(status, 202, "{resp}");
        assert!(
            resp["id"].as_str().is_some_and(|id| id.len() == 36),
            "{resp}"
        );
        seqs.push(resp["seq"].as_u64().unwrap());
    }
    assert_eq!(
        seqs,
        [1, 1, 1, 1, 2, 1, 1],
        "sequence numbers count per scope"
    );

    let quiet = Duration::from_millis(300);
    let events = |v: Vec<(String, u64, serde_json::Value)>| {
        v.into_iter().map(|(e, _, _)| e).collect::<Vec<_>>()
    };
    assert_eq!(
        events(drain_notifications(&mut a, quiet).await),
        ["all-1", "sales-1", "all-2"]
    );
    assert_eq!(
        events(drain_notifications(&mut b, quiet).await),
        ["all-1", "sales-1", "it-1", "all-2"]
    );
    assert_eq!(
        events(drain_notifications(&mut c, quiet).await),
        ["all-1", "it-1", "all-2"]
    );
    let got_d = drain_notifications(&mut d, quiet).await;
    assert_eq!(
        got_d[1],
        ("d-1".to_string(), 1, json!([1, 2, 3])),
        "data passes through untouched"
    );
    assert_eq!(events(got_d), ["all-1", "d-1", "all-2"]);

    let delivered = node
        .metric(r#"pace_messages_delivered_total{event="all-1"}"#)
        .await;
    assert_eq!(delivered, 4.0);
}

#[tokio::test]
async fn subscribe_and_unsubscribe_frames() {
    let node = TestNode::start().await;
    let (mut ws, _) = node.connect("sub-1").await;
    send_text(&mut ws, r#"{"type":"subscribe","group":"ops"}"#).await;
    assert!(
        matches!(next_frame(&mut ws).await, ServerFrame::Subscribed { group } if group.as_str() == "ops")
    );
    node.notify(json!({"scope": "group", "target": "ops", "event": "ops-1"}))
        .await;
    assert!(
        matches!(next_frame(&mut ws).await, ServerFrame::Notification(n) if n.event.as_str() == "ops-1")
    );
    send_text(&mut ws, r#"{"type":"unsubscribe","group":"ops"}"#).await;
    assert!(matches!(
        next_frame(&mut ws).await,
        ServerFrame::Unsubscribed { .. }
    ));
    node.notify(json!({"scope": "group", "target": "ops", "event": "ops-2"}))
        .await;
    assert_eq!(
        frame_within(&mut ws, Duration::from_millis(300)).await,
        None
    );
}

#[tokio::test]
async fn group_limit_is_enforced_with_an_error_frame() {
    let node = TestNode::start_with(|c| c.limits.max_groups = 1).await;
    let (mut ws, _) = node.connect("sub-2").await;
    send_text(&mut ws, r#"{"type":"subscribe","group":"one"}"#).await;
    assert!(matches!(
        next_frame(&mut ws).await,
        ServerFrame::Subscribed { .. }
    ));
    send_text(&mut ws, r#"{"type":"subscribe","group":"two"}"#).await;
    match next_frame(&mut ws).await {
        ServerFrame::Error { code, .. } => {
            assert_eq!(code, pace_protocol::ErrorCode::TooManyGroups)
        }
        other => panic!("expected error, got {other:?}"),
    }
}

#[tokio::test]
async fn duplicate_device_id_replaces_the_older_connection() {
    let node = TestNode::start().await;
    let (mut first, _) = node
        .connect_with("/ws?device_id=dup", &[("x-department-id", "old")])
        .await;
    let (mut second, _) = node.connect("dup").await;
    assert_eq!(
        close_code(&mut first).await,
        Some(code(CloseCode::REPLACED))
    );
    let (status, _) = node
        .notify(json!({"scope": "device", "target": "dup", "event": "hello"}))
        .await;
    assert_eq!(status, 202);
    assert!(
        matches!(next_frame(&mut second).await, ServerFrame::Notification(n) if n.event.as_str() == "hello")
    );
    // The old connection's groups left with it.
    node.notify(json!({"scope": "group", "target": "old", "event": "old-group"}))
        .await;
    assert_eq!(
        frame_within(&mut second, Duration::from_millis(300)).await,
        None
    );
    node.wait_metric(r#"pace_disconnects_total{reason="replaced"}"#, 1.0)
        .await;
    assert_eq!(node.metric("pace_connections_open").await, 1.0);
}

#[tokio::test]
async fn notify_requires_the_service_key_and_a_valid_body() {
    let node = TestNode::start().await;
    let body = json!({"scope": "all", "event": "x"}).to_string();
    let (status, text) = http(node.addr, "POST", "/api/v1/notify", &[], &body)
        .await
        .unwrap();
    assert_eq!(status, 401, "{text}");
    let (status, _) = http(
        node.addr,
        "POST",
        "/api/v1/notify",
        &[("authorization", "Bearer wrong-key-wrong-key")],
        &body,
    )
    .await
    .unwrap();
    assert_eq!(status, 401);

    let auth = format!("Bearer {KEY}");
    let cases = [
        ("not json", 400, "bad_request"),
        (r#"{"scope":"group","event":"x"}"#, 400, "bad_request"),
        (
            r#"{"scope":"all","target":"x","event":"x"}"#,
            400,
            "bad_request",
        ),
        (r#"{"scope":"all","event":"bad event"}"#, 400, "bad_request"),
        (r#"{"scope":"moon","event":"x"}"#, 400, "bad_request"),
    ];
    for (body, want, code) in cases {
        let (status, text) = http(
            node.addr,
            "POST",
            "/api/v1/notify",
            &[("authorization", &auth)],
            body,
        )
        .await
        .unwrap();
        assert_eq!(status, want, "{body}: {text}");
        assert!(text.contains(code), "{text}");
    }
    let huge = json!({"scope": "all", "event": "x", "data": "y".repeat(70 * 1024)}).to_string();
    let (status, text) = http(
        node.addr,
        "POST",
        "/api/v1/notify",
        &[("authorization", &auth)],
        &huge,
    )
    .await
    .unwrap();
    assert_eq!(status, 413, "{text}");
    assert_eq!(
        node.metric(r#"pace_notify_requests_total{result="unauthorized",scope="unknown"}"#)
            .await,
        2.0
    );
}

#[tokio::test]
async fn many_devices_each_get_a_broadcast_once() {
    let node = TestNode::start().await;
    let mut devices = Vec::new();
    for i in 0..200 {
        devices.push(node.connect(&format!("many-{i}")).await.0);
    }
    node.notify(json!({"scope": "all", "event": "wave"})).await;
    for ws in devices.iter_mut() {
        assert!(
            matches!(next_frame(ws).await, ServerFrame::Notification(n) if n.event.as_str() == "wave")
        );
    }
    // Nothing more for anyone: exactly once each.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for ws in devices.iter_mut() {
        assert_eq!(frame_within(ws, Duration::from_millis(2)).await, None);
    }
}
