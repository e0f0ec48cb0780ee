//! Redis failures a cluster must survive: a node started before Redis
//! comes up, a node over a Redis Cluster whose first listed seed is dead,
//! and a Redis restarted empty under running nodes (real redis-server
//! processes, real node processes).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

/// `/ready`'s status, 0 when the node does not answer.
async fn ready_status(node: &TestNode) -> u16 {
    http(node.addr, "GET", "/ready", &[], "")
        .await
        .map(|(s, _)| s)
        .unwrap_or(0)
}

#[tokio::test]
async fn a_node_started_before_redis_is_ready_within_a_second_of_redis() {
    let port = free_port();
    let keys = shared_keys().display().to_string();
    let url = format!("redis://127.0.0.1:{port}");
    let process = NodeProcess::spawn(&["--redis", &url, "--keys", &keys]);
    let node = TestNode::external(process.addr);

    // Redis is down for 3 s: the node keeps running, not ready.
    let down_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < down_until {
        let (status, body) = http(node.addr, "GET", "/ready", &[], "").await.unwrap();
        assert_eq!(status, 503, "not ready while the store was never reached");
        assert!(body.contains("\"up\":false"), "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        process_alive(&process),
        "the node does not exit while Redis is down"
    );

    let _redis = TestRedis::start_on_port(port);
    let up = Instant::now();
    while ready_status(&node).await != 200 {
        assert!(up.elapsed() < STARTUP, "never became ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = up.elapsed();
    eprintln!("ready {took:?} after redis answered");
    assert!(
        took < Duration::from_secs(1),
        "ready {took:?} after Redis came up; the reconnect backoff is capped at 0.5 s"
    );
    let (status, _) = node
        .notify(json!({"scope": "all", "event": "e", "data": 1}))
        .await;
    assert_eq!(status, 202, "the store works");
}

fn process_alive(p: &NodeProcess) -> bool {
    std::path::Path::new(&format!("/proc/{}", p.child.id())).exists()
}

#[tokio::test]
async fn a_node_over_a_redis_cluster_whose_first_seed_is_dead_serves() {
    let cluster = TestRedisCluster::start();
    let dead = free_port();
    let mut seeds = vec![dead];
    seeds.extend(&cluster.ports);
    let url = cluster.url_with_seeds(&seeds);
    let keys = shared_keys().display().to_string();
    let process = NodeProcess::spawn(&["--redis", &url, "--keys", &keys]);
    let node = TestNode::external(process.addr);
    node.wait_ready().await;

    let (mut ws, _) = node.connect("cluster-device").await;
    let (status, _) = node
        .notify(json!({"scope": "all", "event": "hello", "data": 1}))
        .await;
    assert_eq!(status, 202);
    match next_frame(&mut ws).await {
        pace_protocol::ServerFrame::Notification(n) => assert_eq!(n.event.as_str(), "hello"),
        other => panic!("expected the notification, got {other:?}"),
    }
}

/// `POST /api/v1/devices/register` for `device`, with `token` if given.
async fn register(node: &TestNode, device: &str, token: Option<&str>) -> (u16, String) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    http(
        node.addr,
        "POST",
        "/api/v1/devices/register",
        &headers,
        &json!({ "device_id": device }).to_string(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn redis_restarted_empty_is_reported_and_nobody_takes_a_victims_id() {
    let mut cluster = Cluster::start_secure(2, &[]).await;
    let node = cluster.node(0);
    let token = register_device(node.addr, &json!({"device_id": "victim"})).await;
    for i in 0..2 {
        cluster.node(i).wait_metric("pace_store_wiped", 0.0).await;
    }

    cluster.redis.stop();
    cluster.redis.restart(); // empty: no persistence
    for i in 0..2 {
        cluster
            .node(i)
            .wait_metric_within("pace_store_wiped", 1.0, Duration::from_secs(15))
            .await;
    }
    // Someone else cannot register the victim's id while its token is valid.
    let (status, body) = register(&node, "victim", None).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("device_exists"), "{body}");
    assert_eq!(
        node.metric(r#"pace_device_registrations_total{result="store_wiped"}"#)
            .await,
        1.0
    );
    // The victim, with its token, gets its id back.
    let (status, body) = register(&cluster.node(1), "victim", Some(&token)).await;
    assert!(status == 200 || status == 201, "{status} {body}");

    // An admin acknowledges: registrations without a token work again.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pace-node"))
        .args(["admin", "acknowledge-store-wipe", "--redis"])
        .arg(cluster.redis.url())
        .args(["--redis-prefix", &cluster.prefix])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("acknowledged"),
        "{out:?}"
    );
    for i in 0..2 {
        cluster
            .node(i)
            .wait_metric_within("pace_store_wiped", 0.0, Duration::from_secs(15))
            .await;
    }
    let (status, body) = register(&node, "newcomer", None).await;
    assert_eq!(status, 201, "{body}");
}
