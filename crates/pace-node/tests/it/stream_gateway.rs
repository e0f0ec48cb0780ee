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
pub async fn strict_gateway(nodes: &[SocketAddr]) -> (Haproxy, SocketAddr) {
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

/// Opens `device`'s stream through `gw` (with `Last-Event-ID` when given),
/// retrying while the gateway still routes to a dead node; the stream and
/// the node that welcomed it.
async fn open_until_welcome(
    gw: SocketAddr,
    device: &str,
    last_id: Option<&str>,
) -> (sse_client::Sse, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut headers = vec![("x-device-id", device)];
        if let Some(id) = last_id {
            headers.push(("last-event-id", id));
        }
        let (status, sse) = sse_client::open(gw, "/stream", &headers).await;
        if let Some(mut sse) = sse {
            // The first event (after comments) is the welcome.
            while let Some(item) = sse.item_within(SOON).await {
                if let Item::Event(e) = item {
                    if let Ok(ServerFrame::Welcome(w)) = serde_json::from_str(&e.data) {
                        return (sse, w.node_id);
                    }
                    break;
                }
            }
        } else {
            tracing_status(device, status);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{device}: no stream within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn tracing_status(device: &str, status: u16) {
    eprintln!("{device}: stream answered {status}; retrying");
}

/// The notifications (their `n`) on `sse` until `want` of them (a
/// `resumed` answer in between is checked: recovered), and the last
/// event id.
async fn notifications(sse: &mut sse_client::Sse, want: usize, device: &str) -> (Vec<u64>, String) {
    let mut got = Vec::new();
    let mut last = String::new();
    while got.len() < want {
        let e = sse.event().await;
        match serde_json::from_str(&e.data) {
            Ok(ServerFrame::Notification(n)) => {
                got.push(n.data["n"].as_u64().unwrap());
                last = e.id.expect("a notification carries an id");
            }
            Ok(ServerFrame::Resumed { scopes }) => {
                assert!(scopes.iter().all(|s| s.recovered), "{device}: {scopes:?}");
            }
            _ => {}
        }
    }
    (got, last)
}

#[tokio::test]
async fn stream_devices_of_a_sigkilled_node_resume_on_the_survivors_with_nothing_missed() {
    let mut cluster = Cluster::start(3, &["--sse-heartbeat", "1s"]).await;
    let gw = cluster.gateway.addr;
    let ids: Vec<String> = (0..12).map(|i| format!("kill-{i}")).collect();
    let mut devices = Vec::new();
    for id in &ids {
        let (sse, node) = open_until_welcome(gw, id, None).await;
        devices.push((id.clone(), sse, node));
    }
    let survivor = |victim: usize| if victim == 0 { 1 } else { 0 };
    cluster
        .node(0)
        .notify(json!({"scope": "all", "event": "e", "data": {"n": 1}}))
        .await;
    let mut last_ids = Vec::new();
    for (id, sse, _) in &mut devices {
        let (got, last) = notifications(sse, 1, id).await;
        assert_eq!(got, [1], "{id}");
        last_ids.push(last);
    }
    // The node holding the most streams dies without a word.
    let mut per_node = std::collections::HashMap::<String, usize>::new();
    for (_, _, node) in &devices {
        *per_node.entry(node.clone()).or_default() += 1;
    }
    let (victim_id, held) = per_node.iter().max_by_key(|(_, n)| **n).unwrap();
    let victim_id = victim_id.clone();
    assert!(*held > 0);
    let victim = cluster.index_of(&victim_id);
    cluster.nodes[victim].child.kill().unwrap();
    let _ = cluster.nodes[victim].child.wait();
    let other = cluster.node(survivor(victim));
    for n in [2, 3] {
        let (status, _) = other
            .notify(json!({"scope": "all", "event": "e", "data": {"n": n}}))
            .await;
        assert_eq!(status, 202);
    }
    let mut moved = 0;
    for ((id, sse, node), last) in devices.iter_mut().zip(&last_ids) {
        let got = if *node == victim_id {
            // Its stream ended (no close event): reconnect as EventSource
            // does, with the last id seen.
            assert!(
                sse.closed(SOON).await.is_none(),
                "{id}: no close event from a killed node"
            );
            let (mut again, new_node) = open_until_welcome(gw, id, Some(last)).await;
            assert_ne!(new_node, victim_id, "{id}");
            moved += 1;
            let (got, _) = notifications(&mut again, 2, id).await;
            got
        } else {
            notifications(sse, 2, id).await.0
        };
        assert_eq!(got, [2, 3], "{id}: 0 missed, none twice");
    }
    assert_eq!(moved, *per_node.get(&victim_id).unwrap());
}
