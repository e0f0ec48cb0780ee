//! Handshake: where the device id comes from, and what is refused.

use pace_protocol::{ErrorBody, ErrorCode};
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::support::*;

fn refused(err: WsError) -> (u16, ErrorBody) {
    match err {
        WsError::Http(resp) => {
            let status = resp.status().as_u16();
            let body = resp.body().clone().expect("error body");
            (
                status,
                serde_json::from_slice(&body).expect("JSON error body"),
            )
        }
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn device_id_from_header() {
    let node = TestNode::start().await;
    let (_ws, welcome) = node.connect("laptop_3f9c").await;
    assert_eq!(welcome.device_id.as_str(), "laptop_3f9c");
    assert_eq!(welcome.node_id, "test-node");
    assert_eq!(welcome.protocol, 1);
}

#[tokio::test]
async fn device_id_from_query_and_alias() {
    let node = TestNode::start().await;
    let (_a, welcome) = node.connect_with("/ws?device_id=kiosk-7", &[]).await;
    assert_eq!(welcome.device_id.as_str(), "kiosk-7");
    let (_b, welcome) = node.connect_with("/ws?deviceId=kiosk-8", &[]).await;
    assert_eq!(welcome.device_id.as_str(), "kiosk-8");
    let (_c, welcome) = node
        .connect_with(
            "/ws?device_id=from-query",
            &[("x-device-id", "from-header")],
        )
        .await;
    assert_eq!(welcome.device_id.as_str(), "from-header", "the header wins");
}

#[tokio::test]
async fn missing_device_id_is_refused_and_counted() {
    let node = TestNode::start().await;
    for _ in 0..3 {
        let (status, body) = refused(node.try_connect("/ws", &[]).await.unwrap_err());
        assert_eq!(status, 400);
        assert_eq!(body.error.code, ErrorCode::MissingDeviceId);
        assert!(!body.error.retryable);
    }
    assert_eq!(
        node.metric(r#"pace_handshakes_refused_total{reason="missing_device_id"}"#)
            .await,
        3.0
    );
    assert_eq!(node.metric("pace_connections_open").await, 0.0);
}

#[tokio::test]
async fn invalid_device_id_is_refused() {
    let node = TestNode::start().await;
    let long = "x".repeat(129);
    for query in [
        "/ws?device_id=has%20space",
        "/ws?device_id=a%2Fb",
        &format!("/ws?device_id={long}"),
    ] {
        let (status, body) = refused(node.try_connect(query, &[]).await.unwrap_err());
        assert_eq!(
            (status, body.error.code),
            (400, ErrorCode::InvalidDeviceId),
            "{query}"
        );
    }
    let (status, body) = refused(
        node.try_connect("/ws", &[("x-device-id", "semi;colon")])
            .await
            .unwrap_err(),
    );
    assert_eq!((status, body.error.code), (400, ErrorCode::InvalidDeviceId));
    assert_eq!(
        node.metric(r#"pace_handshakes_refused_total{reason="invalid_device_id"}"#)
            .await,
        4.0
    );
}

#[tokio::test]
async fn plain_get_is_not_an_upgrade() {
    let node = TestNode::start().await;
    let (status, body) = http(node.addr, "GET", "/ws?device_id=a", &[], "")
        .await
        .unwrap();
    assert_eq!(status, 426);
    assert!(body.contains("not_websocket"), "{body}");
}

#[tokio::test]
async fn departments_from_header() {
    let node = TestNode::start().await;
    let (_ws, welcome) = node
        .connect_with("/ws?device_id=d1", &[("x-department-id", "sales,it")])
        .await;
    let groups: Vec<String> = welcome.groups.iter().map(ToString::to_string).collect();
    assert_eq!(groups, ["sales", "it"]);
    let (status, body) = refused(
        node.try_connect("/ws?device_id=d2", &[("x-department-id", "bad group")])
            .await
            .unwrap_err(),
    );
    assert_eq!((status, body.error.code), (400, ErrorCode::InvalidGroup));
}

#[tokio::test]
async fn connection_limit_refuses_with_503() {
    let node = TestNode::start_with(|c| c.limits.max_connections = 2).await;
    let (_a, _) = node.connect("a").await;
    let (_b, _) = node.connect("b").await;
    let (status, body) = refused(
        node.try_connect("/ws", &[("x-device-id", "c")])
            .await
            .unwrap_err(),
    );
    assert_eq!((status, body.error.code), (503, ErrorCode::NodeFull));
    assert!(body.error.retryable);
    drop(_a);
    // The slot frees once the first connection's task ends.
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        match node.try_connect("/ws", &[("x-device-id", "c")]).await {
            Ok(_) => break,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(e) => panic!("slot never freed: {e}"),
        }
    }
}

#[tokio::test]
async fn a_starting_node_refuses_devices_until_its_store_answers() {
    // A Redis nobody listens on: the node never finishes starting.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let keys = shared_keys().display().to_string();
    let node = NodeProcess::spawn(&[
        "--redis",
        &format!("redis://127.0.0.1:{closed}"),
        "--keys",
        &keys,
    ]);
    let handle = TestNode::external(node.addr);
    match handle.try_connect("/ws?device_id=early", &[]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503);
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "starting");
            assert_eq!(body["error"]["retryable"], true);
        }
        other => panic!("{other:?}"),
    }
    let (status, _) = http(node.addr, "GET", "/ready", &[], "").await.unwrap();
    assert_eq!(status, 503);
}
