//! The cluster: three node processes over a real redis-server, behind a
//! real HAProxy configured by `pace-node gateway haproxy`.
//!
//! Assertions are about stickiness, spread and delivery, never "device X
//! lands on node Y".

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use pace_protocol::{CloseCode, ServerFrame};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::support::*;

/// Connects `device` through the gateway and returns the node it landed on.
async fn land(gw: &TestNode, device: &str, by_header: bool) -> (Ws, String) {
    let (ws, welcome) = if by_header {
        gw.connect(device).await
    } else {
        gw.connect_with(&format!("/ws?device_id={device}"), &[])
            .await
    };
    (ws, welcome.node_id)
}

#[tokio::test]
async fn a_device_always_lands_on_the_same_node() {
    let cluster = Cluster::start(3, &[]).await;
    let gw = cluster.gateway.handle();
    let mut nodes_seen = HashSet::new();
    for i in 0..30 {
        let device = format!("sticky-{i}");
        let (ws, first) = land(&gw, &device, true).await;
        drop(ws);
        let (ws, by_query) = land(&gw, &device, false).await;
        drop(ws);
        let (_ws, again) = land(&gw, &device, true).await;
        assert_eq!(
            first, by_query,
            "{device}: header and query fallback hash alike"
        );
        assert_eq!(first, again, "{device}: reconnects land on the same node");
        nodes_seen.insert(first);
    }
    assert_eq!(nodes_seen.len(), 3, "30 devices use every node");
}

#[tokio::test]
async fn three_thousand_devices_spread_evenly() {
    let cluster = Cluster::start(3, &[]).await;
    let gw = Arc::new(cluster.gateway.handle());
    let limit = Arc::new(Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..3000 {
        let (gw, limit) = (gw.clone(), limit.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            land(&gw, &format!("spread-{i}"), true).await.1
        });
    }
    let mut per_node: HashMap<String, usize> = HashMap::new();
    while let Some(node) = tasks.join_next().await {
        *per_node.entry(node.unwrap()).or_default() += 1;
    }
    assert_eq!(per_node.values().sum::<usize>(), 3000);
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    for (node, n) in &per_node {
        assert!(
            *n <= 1200,
            "{node} holds {n} of 3000 (over 40%): {per_node:?}"
        );
    }
}

#[tokio::test]
async fn messages_from_any_node_reach_exactly_the_right_devices_once() {
    let cluster = Cluster::start(3, &[]).await;
    let gw = cluster.gateway.handle();
    let mut devices = Vec::new();
    let mut holders = HashSet::new();
    for i in 0..45 {
        let group = if i % 2 == 0 { "red" } else { "blue" };
        let (ws, welcome) = gw
            .connect_with(
                &format!("/ws?device_id=fan-{i}"),
                &[("x-department-id", group)],
            )
            .await;
        holders.insert(welcome.node_id);
        devices.push((i, group, ws));
    }
    assert_eq!(holders.len(), 3, "devices on every node");

    // Each message is accepted by a different node.
    let sends = [
        (0, json!({"scope": "all", "event": "to-all"})),
        (
            1,
            json!({"scope": "group", "target": "red", "event": "to-red"}),
        ),
        (
            2,
            json!({"scope": "device", "target": "fan-7", "event": "to-7"}),
        ),
        (
            1,
            json!({"scope": "device", "target": "fan-44", "event": "to-44"}),
        ),
    ];
    for (node, body) in sends {
        let (status, resp) = cluster.node(node).notify(body).await;
        assert_eq!(status, 202, "{resp}");
    }
    for (i, group, ws) in devices.iter_mut() {
        let mut want = vec!["to-all".to_string()];
        if *group == "red" {
            want.push("to-red".into());
        }
        if *i == 7 {
            want.push("to-7".into());
        }
        if *i == 44 {
            want.push("to-44".into());
        }
        let mut got = Vec::new();
        for _ in 0..want.len() {
            match next_frame(ws).await {
                ServerFrame::Notification(n) => got.push(n.event.to_string()),
                other => panic!("unexpected {other:?}"),
            }
        }
        got.sort();
        want.sort();
        assert_eq!(got, want, "fan-{i}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (i, _, ws) in devices.iter_mut() {
        assert_eq!(
            frame_within(ws, Duration::from_millis(2)).await,
            None,
            "fan-{i} got a duplicate"
        );
    }
}

#[tokio::test]
async fn a_device_connecting_on_another_node_closes_its_old_connection() {
    let cluster = Cluster::start(2, &[]).await;
    let (mut on_a, _) = cluster.node(0).connect("roamer").await;
    let (mut on_b, welcome) = cluster.node(1).connect("roamer").await;
    assert_eq!(welcome.node_id, "node-1");
    assert_eq!(close_code(&mut on_a).await, Some(code(CloseCode::REPLACED)));
    let (status, _) = cluster
        .node(0)
        .notify(json!({"scope": "device", "target": "roamer", "event": "found-you"}))
        .await;
    assert_eq!(status, 202);
    assert!(
        matches!(next_frame(&mut on_b).await, ServerFrame::Notification(n) if n.event.as_str() == "found-you")
    );
    assert_eq!(
        frame_within(&mut on_b, Duration::from_millis(300)).await,
        None
    );
    cluster
        .node(0)
        .wait_metric("pace_evicted_remote_total", 1.0)
        .await;
}

#[tokio::test]
async fn killed_node_devices_reconnect_elsewhere_and_the_node_ages_out() {
    let mut cluster = Cluster::start(3, &[]).await;
    let gw = cluster.gateway.handle();
    let mut devices = Vec::new();
    for i in 0..30 {
        let (ws, node) = land(&gw, &format!("survivor-{i}"), true).await;
        devices.push((format!("survivor-{i}"), node, ws));
    }
    let victim = "node-1".to_string();
    let victims = devices.iter().filter(|(_, n, _)| *n == victim).count();
    assert!(victims > 0, "some devices on the victim");
    let idx = cluster.index_of(&victim);
    cluster.nodes[idx].child.kill().unwrap();
    let _ = cluster.nodes[idx].child.wait();

    // Devices of the dead node see their connection end and reconnect
    // through the gateway, which sends them to the survivors.
    for (device, node, ws) in devices.iter_mut() {
        if *node != victim {
            continue;
        }
        assert!(matches!(close_code(ws).await, None | Some(_)));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match gw.try_connect("/ws", &[("x-device-id", device)]).await {
                Ok(mut fresh) => {
                    let ServerFrame::Welcome(w) = next_frame(&mut fresh).await else {
                        panic!("no welcome")
                    };
                    assert_ne!(w.node_id, victim);
                    *node = w.node_id;
                    *ws = fresh;
                    break;
                }
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{device} could not reconnect: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    let survivor = cluster.node((idx + 1) % 3);
    let (status, _) = survivor
        .notify(json!({"scope": "all", "event": "after-failover"}))
        .await;
    assert_eq!(status, 202);
    for (device, _, ws) in devices.iter_mut() {
        match next_frame(ws).await {
            ServerFrame::Notification(n) => {
                assert_eq!(n.event.as_str(), "after-failover", "{device}")
            }
            other => panic!("{device}: {other:?}"),
        }
    }

    // The dead node leaves the cluster list once its presence expires.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http(
            survivor.addr,
            "GET",
            "/api/v1/cluster",
            &[("authorization", &format!("Bearer {KEY}"))],
            "",
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let ids: Vec<String> = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["node_id"].as_str().unwrap().to_owned())
            .collect();
        if !ids.contains(&victim) {
            assert_eq!(ids.len(), 2, "{body}");
            assert_eq!(v["total_connections"].as_u64(), Some(30), "{body}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead node never aged out: {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn redis_restart_keeps_devices_connected_and_fan_out_recovers() {
    let mut cluster = Cluster::start(3, &[]).await;
    let gw = cluster.gateway.handle();
    let mut devices = Vec::new();
    for i in 0..24 {
        devices.push(land(&gw, &format!("steady-{i}"), true).await.0);
    }
    cluster.redis.stop();

    // Every node notices, says so, and stays ready.
    for i in 0..3 {
        let node = cluster.node(i);
        node.wait_metric(r#"pace_store_up{store="redis"}"#, 0.0)
            .await;
        let (status, body) = http(node.addr, "GET", "/ready", &[], "").await.unwrap();
        assert_eq!(
            status, 200,
            "readiness stays up during a store outage: {body}"
        );
        assert!(body.contains(r#""up":false"#), "{body}");
    }
    let (status, body) = cluster
        .node(0)
        .notify(json!({"scope": "all", "event": "lost"}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable");
    assert_eq!(body["error"]["retryable"], true);

    // Devices stay connected through the outage.
    for ws in devices.iter_mut() {
        send_text(ws, r#"{"type":"ping","id":1}"#).await;
        assert_eq!(next_frame(ws).await, ServerFrame::Pong { id: Some(1) });
    }

    cluster.redis.restart();
    // Each node reports the store up again only once it is re-subscribed.
    for i in 0..3 {
        cluster
            .node(i)
            .wait_metric_within(
                r#"pace_store_up{store="redis"}"#,
                1.0,
                Duration::from_secs(15),
            )
            .await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut accepted = 0;
    loop {
        let (status, _) = cluster
            .node(accepted % 3)
            .notify(json!({"scope": "all", "event": "back"}))
            .await;
        if status == 202 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "store never recovered"
        );
        accepted += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every node re-subscribed: every device gets the message, once.
    for (i, ws) in devices.iter_mut().enumerate() {
        match next_frame(ws).await {
            ServerFrame::Notification(n) => assert_eq!(n.event.as_str(), "back", "steady-{i}"),
            other => panic!("steady-{i}: {other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for ws in devices.iter_mut() {
        assert_eq!(frame_within(ws, Duration::from_millis(2)).await, None);
    }
    let mut open = 0.0;
    for i in 0..3 {
        open += cluster.node(i).metric("pace_connections_open").await;
    }
    assert_eq!(open, 24.0, "no device was dropped");
}
