//! The HTTP stream through HAProxy that refuses WebSocket upgrades (the
//! config `pace-node gateway haproxy --deny-websocket` generates): stream
//! devices of a two-node cluster connect, join, are admitted and hear
//! every scope; their POSTs reach the node holding their stream; a stream
//! outlives twice the gateway's idle timeout.

use std::net::SocketAddr;
use std::time::Duration;

use pace_protocol::ServerFrame;
use serde_json::json;

use crate::sse_client::{self, Item, post};
use crate::support::*;

/// HAProxy's idle timeout in these tests (seconds).
const IDLE_SECS: u64 = 2;

/// A strict proxy in front of `nodes`: refuses upgrades, idle timeout 2 s.
async fn strict_gateway(nodes: &[SocketAddr]) -> (Haproxy, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut args = vec![
        "--bind".to_string(),
        addr.to_string(),
        "--deny-websocket".into(),
        "--idle-timeout".into(),
        IDLE_SECS.to_string(),
    ];
    for n in nodes {
        args.push("--node".into());
        args.push(n.to_string());
    }
    let mut haproxy = Haproxy::default();
    haproxy.start(&args, false);
    // Up once a stream request without a device id reaches a node (400).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok((400, _)) = http(addr, "GET", "/stream", &[], "").await {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "haproxy did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (haproxy, addr)
}

async fn put_room(gw: SocketAddr, capacity: u32) {
    let body = json!({"capacity": capacity, "admit_per_minute": null, "session_ttl_secs": 60,
                      "target_url": "https://shop.example/in", "state": "open", "pow_difficulty": 0});
    let (status, text) = http(
        gw,
        "PUT",
        "/api/v1/rooms/sale",
        &[("authorization", &format!("Bearer {KEY}"))],
        &body.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn stream_devices_behind_a_proxy_refusing_websockets_queue_get_admitted_and_notified() {
    let cluster = Cluster::start(2, &["--sse-heartbeat", "500ms", "--admit-tick", "50ms"]).await;
    let addrs: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.addr).collect();
    let (_haproxy, gw) = strict_gateway(&addrs).await;
    // The proxy refuses the upgrade.
    let (status, _) = http(
        gw,
        "GET",
        "/ws",
        &[
            ("x-device-id", "w-1"),
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 403);
    put_room(gw, 0).await;
    // Several devices, so both nodes hold streams.
    let ids: Vec<String> = (0..6).map(|i| format!("strict-{i}")).collect();
    let mut streams = Vec::new();
    let mut nodes_seen = std::collections::HashSet::new();
    for id in &ids {
        let (status, sse) = sse_client::open(
            gw,
            "/stream",
            &[("x-device-id", id), ("x-department-id", "sales")],
        )
        .await;
        assert_eq!(status, 200, "{id}");
        let mut sse = sse.unwrap();
        match sse.frame().await {
            ServerFrame::Welcome(w) => {
                nodes_seen.insert(w.node_id);
            }
            other => panic!("expected welcome, got {other:?}"),
        }
        streams.push(sse);
    }
    assert_eq!(nodes_seen.len(), 2, "6 devices on one node of two");
    // Join through the proxy: each POST meets its device's stream.
    let mut position = 0;
    for (id, sse) in ids.iter().zip(streams.iter_mut()) {
        let (status, body) = post(gw, id, r#"{"type":"join","room":"sale"}"#).await;
        assert_eq!(status, 202, "{id}: {body}");
        match sse.frame().await {
            ServerFrame::Queue(q) => {
                position += 1;
                assert_eq!(q.position, position, "{id}");
            }
            other => panic!("{id}: expected queue, got {other:?}"),
        }
    }
    // Capacity frees: every device is admitted on its stream.
    put_room(gw, 10).await;
    for sse in &mut streams {
        match sse.frame_but_queue().await {
            ServerFrame::Admitted(a) => assert!(!a.token.is_empty()),
            other => panic!("expected admitted, got {other:?}"),
        }
    }
    // Held for twice the proxy's idle timeout: still up.
    tokio::time::sleep(Duration::from_secs(2 * IDLE_SECS) + Duration::from_millis(500)).await;
    let gw_node = TestNode::external(gw);
    let (status, _) = gw_node
        .notify(json!({"scope": "all", "event": "e", "data": {"n": 1}}))
        .await;
    assert_eq!(status, 202);
    let (status, _) = gw_node
        .notify(json!({"scope": "group", "target": "sales", "event": "e", "data": {"n": 2}}))
        .await;
    assert_eq!(status, 202);
    for id in &ids {
        let (status, _) = gw_node
            .notify(json!({"scope": "device", "target": id, "event": "e", "data": {"n": 3}}))
            .await;
        assert_eq!(status, 202);
    }
    for (id, sse) in ids.iter().zip(streams.iter_mut()) {
        let mut got = Vec::new();
        while got.len() < 3 {
            match sse.item_within(SOON).await {
                Some(Item::Event(e)) => {
                    assert_ne!(e.event.as_deref(), Some("close"), "{id}: closed: {e:?}");
                    if let Ok(ServerFrame::Notification(n)) = serde_json::from_str(&e.data) {
                        got.push(n.data["n"].as_u64().unwrap());
                    }
                }
                Some(Item::Comment(_)) => {}
                None => panic!("{id}: the stream ended or went silent; got {got:?}"),
            }
        }
        got.sort_unstable();
        assert_eq!(got, [1, 2, 3], "{id}");
    }
}
