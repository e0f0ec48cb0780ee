//! Redis failures a cluster must survive: a node started before Redis
//! comes up, and a node over a Redis Cluster whose first listed seed is
//! dead (real redis-server processes, real node processes).

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
