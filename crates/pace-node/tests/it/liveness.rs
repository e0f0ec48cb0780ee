//! Liveness and back-pressure: silent devices are dropped after the ping
//! timeout; a device that cannot keep up is disconnected while the others
//! keep receiving.

use std::time::Duration;

use futures_util::StreamExt;
use pace_protocol::{CloseCode, ServerFrame};
use serde_json::json;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::*;

#[tokio::test]
async fn silent_device_is_dropped_after_the_ping_timeout() {
    let node = TestNode::start_with(|c| {
        c.limits.ping_interval = Duration::from_millis(200);
        c.limits.ping_timeout = Duration::from_millis(200);
    })
    .await;
    let (mut silent, _) = node.connect("silent").await;
    let (mut alive, _) = node.connect("alive").await;
    // `alive` keeps reading, so its client answers pings; `silent` does not
    // poll its socket at all and so never answers.
    let reader = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, alive.next()).await {}
        alive
    });
    node.wait_metric(r#"pace_disconnects_total{reason="heartbeat_timeout"}"#, 1.0)
        .await;
    let mut alive = reader.await.unwrap();
    assert_eq!(
        close_code(&mut silent).await,
        Some(code(CloseCode::HEARTBEAT_TIMEOUT))
    );
    assert_eq!(node.metric("pace_connections_open").await, 1.0);
    node.notify(json!({"scope": "device", "target": "alive", "event": "still-here"}))
        .await;
    assert!(
        matches!(next_frame(&mut alive).await, ServerFrame::Notification(n) if n.event.as_str() == "still-here")
    );
}

#[tokio::test]
async fn slow_consumer_is_disconnected_while_others_keep_receiving() {
    let node = TestNode::start_with(|c| c.limits.send_queue = 4).await;
    // The slow device: a tiny receive window, and it never reads.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(node.addr).await.unwrap();
    let mut req = format!("ws://{}/ws", node.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("x-device-id", "slowpoke".parse().unwrap());
    let (_slow, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();

    let (mut fast, _) = node.connect("fast").await;
    const N: usize = 400;
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < N {
            match next_frame(&mut fast).await {
                ServerFrame::Notification(_) => got += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        (got, fast)
    });
    let payload = "z".repeat(32 * 1024);
    for i in 0..N {
        let (status, _) = node
            .notify(json!({"scope": "all", "event": "bulk", "data": {"i": i, "pad": payload}}))
            .await;
        assert_eq!(status, 202);
    }
    let (got, _fast) = reader.await.unwrap();
    assert_eq!(got, N, "the fast device got every message");
    node.wait_metric(r#"pace_disconnects_total{reason="slow_consumer"}"#, 1.0)
        .await;
    assert_eq!(node.metric("pace_connections_open").await, 1.0);
}
