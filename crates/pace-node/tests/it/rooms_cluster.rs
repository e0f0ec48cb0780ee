//! The waiting room across a cluster: three node processes over Redis
//! behind HAProxy, 300 devices joining concurrently, every node running the
//! admission tick at once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use pace_protocol::ServerFrame;
use pace_protocol::room::RoomState;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::support::*;

const DEVICES: usize = 300;

fn config(capacity: u32, state: &str) -> String {
    room_json(capacity, |c| {
        c.session_ttl_secs = 600;
        c.state = RoomState::parse(state).unwrap();
    })
    .to_string()
}

async fn put(node: &TestNode, body: String) {
    let (status, text) = http(
        node.addr,
        "PUT",
        "/api/v1/rooms/surge",
        &[("authorization", &format!("Bearer {KEY}"))],
        &body,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
}

async fn stats(node: &TestNode) -> Value {
    let (status, text) = http(
        node.addr,
        "GET",
        "/api/v1/rooms/surge/stats",
        &[("authorization", &format!("Bearer {KEY}"))],
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// Ends the admitted session of `token` (as the target site does).
async fn release(node: &TestNode, token: &str) {
    let (status, text) = http(
        node.addr,
        "POST",
        "/api/v1/sessions/release",
        &[("authorization", &format!("Bearer {KEY}"))],
        &json!({"token": token}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
}

/// Waits for `n` admissions from the channel (bounded).
async fn admitted(
    rx: &mut mpsc::UnboundedReceiver<(usize, String)>,
    n: usize,
) -> Vec<(usize, String)> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(a)) => got.push(a),
            _ => panic!("only {} of {n} admissions arrived", got.len()),
        }
    }
    got
}

#[tokio::test]
async fn three_nodes_admit_three_hundred_devices_in_ticket_order_never_past_capacity() {
    let cluster =
        Cluster::start(3, &["--admit-tick", "100ms", "--position-refresh", "500ms"]).await;
    let gw = Arc::new(cluster.gateway.handle());
    put(&cluster.node(0), config(10, "paused")).await;

    // 300 devices join concurrently through the gateway.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut joins = tokio::task::JoinSet::new();
    let nodes_used = Arc::new(std::sync::Mutex::new(HashSet::new()));
    for i in 0..DEVICES {
        let (gw, tx, nodes_used) = (gw.clone(), tx.clone(), nodes_used.clone());
        joins.spawn(async move {
            let (mut ws, welcome) = gw.connect(&format!("surge-{i:03}")).await;
            nodes_used.lock().unwrap().insert(welcome.node_id);
            send_text(&mut ws, r#"{"type":"join","room":"surge"}"#).await;
            let first = next_frame(&mut ws).await;
            assert!(matches!(first, ServerFrame::Queue(_)), "{first:?}");
            // Keep the connection (its heartbeat holds the place); report the admission.
            tokio::spawn(async move {
                loop {
                    match tokio::time::timeout(
                        Duration::from_secs(60),
                        futures_util::StreamExt::next(&mut ws),
                    )
                    .await
                    {
                        Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                            if let Ok(ServerFrame::Admitted(a)) = serde_json::from_str(&t) {
                                let _ = tx.send((i, a.token));
                            }
                        }
                        Ok(Some(Ok(_))) => {}
                        _ => return,
                    }
                }
            });
        });
    }
    while let Some(r) = joins.join_next().await {
        r.unwrap();
    }
    assert_eq!(nodes_used.lock().unwrap().len(), 3, "devices on every node");

    // One place each: positions are exactly 1..=300, no device twice.
    let gw0 = cluster.gateway.handle();
    let mut position_of = HashMap::new();
    for i in 0..DEVICES {
        let (_, body) = http(
            gw0.addr,
            "GET",
            &format!("/api/v1/rooms/surge/status?device_id=surge-{i:03}"),
            &[],
            "",
        )
        .await
        .unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "waiting", "{body}");
        position_of.insert(i, v["position"].as_u64().unwrap());
    }
    let positions: HashSet<u64> = position_of.values().copied().collect();
    assert_eq!(
        positions,
        (1..=DEVICES as u64).collect(),
        "every place taken exactly once"
    );
    let s = stats(&cluster.node(1)).await;
    assert_eq!(
        (s["waiting"].as_u64(), s["active"].as_u64()),
        (Some(300), Some(0)),
        "paused: nobody admitted"
    );

    // Sample the active count while three nodes tick concurrently.
    let over = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (node, over, max_seen, stop) = (
            cluster.node(2),
            over.clone(),
            max_seen.clone(),
            stop.clone(),
        );
        let capacity = Arc::new(AtomicU64::new(10));
        let cap = capacity.clone();
        (
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let active = stats(&node).await["active"].as_u64().unwrap();
                    max_seen.fetch_max(active, Ordering::Relaxed);
                    if active > cap.load(Ordering::Relaxed) {
                        over.store(true, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }),
            capacity,
        )
    };

    // Open: the first ten by ticket are admitted, then each release lets the
    // next ten in, in ticket order.
    put(&cluster.node(0), config(10, "open")).await;
    let mut next_position = 1u64;
    for round in 0..4 {
        let batch = admitted(&mut rx, 10).await;
        let mut got: Vec<u64> = batch.iter().map(|(i, _)| position_of[i]).collect();
        got.sort();
        let want: Vec<u64> = (next_position..next_position + 10).collect();
        assert_eq!(got, want, "round {round}: admitted out of ticket order");
        next_position += 10;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            tokio::time::timeout(Duration::from_millis(1), rx.recv())
                .await
                .is_err(),
            "round {round}: more than capacity admitted"
        );
        for (_, token) in &batch {
            release(&gw0, token).await;
        }
    }
    // Raising capacity mid-run admits more within a tick or two.
    sampler.1.store(20, Ordering::Relaxed);
    put(&cluster.node(1), config(20, "open")).await;
    let batch = admitted(&mut rx, 20).await;
    let mut got: Vec<u64> = batch.iter().map(|(i, _)| position_of[i]).collect();
    got.sort();
    assert_eq!(got, (next_position..next_position + 20).collect::<Vec<_>>());

    stop.store(true, Ordering::Relaxed);
    sampler.0.await.unwrap();
    assert!(
        !over.load(Ordering::Relaxed),
        "active went past capacity (max seen {})",
        max_seen.load(Ordering::Relaxed)
    );
    assert!(
        max_seen.load(Ordering::Relaxed) >= 10,
        "the sampler saw the room full"
    );
    let s = stats(&cluster.node(0)).await;
    assert_eq!(s["admitted_total"].as_u64(), Some(60));
    assert_eq!(s["waiting"].as_u64(), Some(240));
}

#[tokio::test]
async fn killed_node_places_free_after_the_grace_unless_devices_come_back() {
    let mut cluster = Cluster::start(
        3,
        &[
            "--admit-tick",
            "100ms",
            "--position-refresh",
            "300ms",
            "--heartbeat-grace",
            "2s",
        ],
    )
    .await;
    let gw = cluster.gateway.handle();
    put(&cluster.node(0), config(0, "open")).await;
    let mut devices = Vec::new();
    for i in 0..30 {
        let (mut ws, welcome) = gw.connect(&format!("k-{i}")).await;
        send_text(&mut ws, r#"{"type":"join","room":"surge"}"#).await;
        assert!(matches!(next_frame(&mut ws).await, ServerFrame::Queue(_)));
        devices.push((i, welcome.node_id, ws));
    }
    let victim = "node-0".to_string();
    let on_victim: Vec<usize> = devices
        .iter()
        .filter(|(_, n, _)| *n == victim)
        .map(|(i, _, _)| *i)
        .collect();
    assert!(
        on_victim.len() >= 2,
        "need devices on the victim: {on_victim:?}"
    );
    let idx = cluster.index_of(&victim);
    cluster.nodes[idx].child.kill().unwrap();
    let _ = cluster.nodes[idx].child.wait();
    // Half of the victim's devices come back (through the gateway, to a
    // survivor) inside the grace; the others stay away.
    let returning: HashSet<usize> = on_victim.iter().copied().step_by(2).collect();
    let mut back = Vec::new();
    for i in &returning {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match gw
                .try_connect("/ws", &[("x-device-id", &format!("k-{i}"))])
                .await
            {
                Ok(mut ws) => {
                    let _ = next_frame(&mut ws).await; // welcome
                    send_text(&mut ws, r#"{"type":"join","room":"surge"}"#).await;
                    assert!(matches!(next_frame(&mut ws).await, ServerFrame::Queue(_)));
                    back.push(ws);
                    break;
                }
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "{e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    // After grace + tick (+ margin), the absent ones lost their places.
    let survivor = cluster.node((idx + 1) % 3);
    let expected_abandoned = (on_victim.len() - returning.len()) as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    loop {
        let s = stats(&survivor).await;
        if s["abandoned_total"].as_u64() == Some(expected_abandoned) {
            assert_eq!(s["waiting"].as_u64(), Some(30 - expected_abandoned), "{s}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "places not freed: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in &on_victim {
        let (_, body) = http(
            gw.addr,
            "GET",
            &format!("/api/v1/rooms/surge/status?device_id=k-{i}"),
            &[],
            "",
        )
        .await
        .unwrap();
        let want = if returning.contains(i) {
            "waiting"
        } else {
            "unknown"
        };
        assert!(
            body.contains(&format!(r#""status":"{want}""#)),
            "k-{i}: {body}"
        );
    }
}

/// The waiting room on a real 3 + 3 Redis Cluster (the room's keys and the
/// sequences on whichever shards their tags hash to): devices joining one
/// after another through the gateway get places 1, 2, 3, … and are
/// admitted in that order, `capacity` at a time, as on one Redis.
#[tokio::test]
async fn three_nodes_over_a_redis_cluster_admit_in_join_order_never_past_capacity() {
    const JOINERS: usize = 8;
    let redis = TestRedisCluster::start();
    let prefix = format!("t{}", free_port());
    let nodes = NodeProcess::spawn_over(&redis.url(), &prefix, 3, &["--admit-tick", "100ms"]);
    for n in &nodes {
        TestNode::external(n.addr).wait_ready().await;
    }
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    let gateway = Gateway::start(&addrs).await;
    let gw = gateway.handle();
    let node = TestNode::external(addrs[0]);
    put(&node, config(2, "paused")).await;

    let (tx, mut rx) = mpsc::unbounded_channel();
    for i in 0..JOINERS {
        let (mut ws, _) = gw.connect(&format!("order-{i}")).await;
        send_text(&mut ws, r#"{"type":"join","room":"surge"}"#).await;
        match next_frame(&mut ws).await {
            ServerFrame::Queue(q) => assert_eq!(q.position, i as u64 + 1, "join {i}"),
            other => panic!("join {i}: {other:?}"),
        }
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(Ok(msg))) = tokio::time::timeout(
                Duration::from_secs(60),
                futures_util::StreamExt::next(&mut ws),
            )
            .await
            {
                if let tokio_tungstenite::tungstenite::Message::Text(t) = msg
                    && let Ok(ServerFrame::Admitted(a)) = serde_json::from_str(&t)
                {
                    let _ = tx.send((i, a.token));
                }
            }
        });
    }

    put(&node, config(2, "open")).await;
    for round in 0..JOINERS / 2 {
        let batch = admitted(&mut rx, 2).await;
        let mut got: Vec<usize> = batch.iter().map(|(i, _)| *i).collect();
        got.sort();
        assert_eq!(got, [2 * round, 2 * round + 1], "round {round}: join order");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            rx.try_recv().is_err(),
            "round {round}: more than capacity admitted"
        );
        for (_, token) in &batch {
            release(&gw, token).await;
        }
    }
    let s = stats(&node).await;
    assert_eq!(s["admitted_total"].as_u64(), Some(JOINERS as u64));
    assert_eq!(s["waiting"].as_u64(), Some(0));
}
