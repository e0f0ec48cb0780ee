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

/// The Redis Cluster version of the test above: a node whose URL lists a
/// dead host first, then the six hosts of a cluster that is started 3 s
/// later (and takes seconds to create), is ready within a second of the
/// cluster being healthy.
#[tokio::test]
async fn a_node_started_before_its_redis_cluster_is_ready_within_a_second_of_it() {
    let mut cluster = TestRedisCluster::unstarted();
    let mut seeds = vec![free_port()];
    seeds.extend(&cluster.ports);
    let url = cluster.url_with_seeds(&seeds);
    let keys = shared_keys().display().to_string();
    let process = NodeProcess::spawn(&["--redis", &url, "--keys", &keys]);
    let node = TestNode::external(process.addr);

    let down_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < down_until {
        let (status, body) = http(node.addr, "GET", "/ready", &[], "").await.unwrap();
        assert_eq!(status, 503, "not ready while no cluster node answers");
        assert!(body.contains("\"up\":false"), "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(process_alive(&process), "the node does not exit meanwhile");

    let mut launched = false;
    for _ in 0..3 {
        if cluster.launch() {
            launched = true;
            break;
        }
    }
    assert!(launched, "the redis cluster started");
    let up = Instant::now();
    while ready_status(&node).await != 200 {
        assert!(up.elapsed() < STARTUP, "never became ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = up.elapsed();
    eprintln!("ready {took:?} after the redis cluster was healthy");
    assert!(
        took < Duration::from_secs(1),
        "ready {took:?} after the cluster was healthy; the table reads back off to 0.5 s"
    );
    let (status, _) = node
        .notify(json!({"scope": "all", "event": "e", "data": 1}))
        .await;
    assert_eq!(status, 202, "the store works");
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

/// One shard failing over fails only the operations on that shard: with
/// the master of a room's slot SIGKILLed, notifications (whose keys live
/// in the `{prefix}` slot, on another master) keep being accepted all
/// through the failover, and the room answers again once its replica is
/// promoted, without a restart.
#[tokio::test]
async fn a_shard_failing_over_fails_only_its_own_operations() {
    let mut redis = TestRedisCluster::start();
    let prefix = format!("t{}", free_port());
    let keys = shared_keys().display().to_string();
    let url = redis.url();
    let process =
        NodeProcess::spawn(&["--redis", &url, "--redis-prefix", &prefix, "--keys", &keys]);
    let node = TestNode::external(process.addr);
    node.wait_ready().await;
    let bus_master = redis.master_of(&format!("{{{prefix}}}"));
    let room = (0..64)
        .map(|i| format!("shard-{i}"))
        .find(|r| redis.master_of(&format!("{{{prefix}:room:{r}}}")) != bus_master)
        .expect("a room on another shard");
    let victim = redis.master_of(&format!("{{{prefix}:room:{room}}}"));
    let auth = format!("Bearer {KEY}");
    let config = json!({"capacity": 5, "admit_per_minute": null, "session_ttl_secs": 600,
        "target_url": "https://shop.example/in", "state": "open", "pow_difficulty": 0});
    let (status, text) = http(
        node.addr,
        "PUT",
        &format!("/api/v1/rooms/{room}"),
        &[("authorization", &auth)],
        &config.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
    let stats_path = format!("/api/v1/rooms/{room}/stats");
    let room_status = || async {
        http(
            node.addr,
            "GET",
            &stats_path,
            &[("authorization", &auth)],
            "",
        )
        .await
        .map(|(s, _)| s)
        .unwrap_or(0)
    };
    assert_eq!(room_status().await, 200);
    // The room's config reached the replica that will be promoted (an
    // asynchronous replication that lags behind the kill would lose the
    // room, and the room would answer 404 forever: what a failover may
    // lose is docs/operations.md's, not this test's).
    assert!(
        redis.wait_replicated(victim, Duration::from_secs(10)),
        "the replica caught up"
    );

    redis.kill(victim);
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(30);
    let (mut accepted, mut refused) = (0, 0);
    let (mut room_failed, mut room_back) = (0, None);
    let mut room_statuses = std::collections::BTreeMap::new();
    while room_back.is_none() {
        assert!(
            Instant::now() < deadline,
            "the room never answered again; its answers meanwhile (status: count, 0 = no \
             answer within 5 s): {room_statuses:?}"
        );
        let (status, body) = node
            .notify(json!({"scope": "all", "event": "e", "data": accepted}))
            .await;
        match status {
            202 => accepted += 1,
            _ => {
                eprintln!("notify during the failover: {status} {body}");
                refused += 1;
            }
        }
        match room_status().await {
            200 if room_failed > 0 => room_back = Some(killed.elapsed()),
            200 => {}
            other => {
                room_failed += 1;
                *room_statuses.entry(other).or_insert(0u32) += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "room's shard failed over: room answered again {:?} after the kill ({room_failed} refused \
         meanwhile); notifications on the healthy shard: {accepted} accepted, {refused} refused",
        room_back.unwrap()
    );
    assert!(
        room_failed > 0,
        "the room's own operations failed meanwhile"
    );
    assert!(accepted > 0, "notifications were asked during the failover");
    assert_eq!(
        refused, 0,
        "operations on the healthy shard kept answering through the failover"
    );
}

/// `--store-write-replicas 1`: a notification is answered only once a
/// replica acknowledged it (Redis `WAIT`). With every replica up both
/// nodes accept (and the cost of the wait is measured); with the replica
/// of the notifications' master stopped, the node with the flag refuses
/// with 503 `store_unavailable` while the node without it still accepts.
#[tokio::test]
async fn store_write_replicas_refuses_writes_no_replica_acknowledged() {
    let mut redis = TestRedisCluster::start();
    let prefix = format!("t{}", free_port());
    let keys = shared_keys().display().to_string();
    let url = redis.url();
    let args = |id: &'static str| {
        vec![
            "--redis".to_owned(),
            url.clone(),
            "--redis-prefix".to_owned(),
            prefix.clone(),
            "--keys".to_owned(),
            keys.clone(),
            "--node-id".to_owned(),
            id.to_owned(),
        ]
    };
    let mut waiting_args = args("waiting");
    waiting_args.extend(
        [
            "--store-write-replicas",
            "1",
            "--store-write-replicas-timeout",
            "300ms",
        ]
        .map(String::from),
    );
    let spawn =
        |a: &[String]| NodeProcess::spawn(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let waiting_process = spawn(&waiting_args);
    let plain_process = spawn(&args("plain"));
    let (waiting, plain) = (
        TestNode::external(waiting_process.addr),
        TestNode::external(plain_process.addr),
    );
    waiting.wait_ready().await;
    plain.wait_ready().await;

    // Every replica up: both accept. The cost of the wait, per notify.
    const ROUNDS: u32 = 200;
    for (name, node) in [
        ("without the flag", &plain),
        ("with --store-write-replicas 1", &waiting),
    ] {
        let started = Instant::now();
        for i in 0..ROUNDS {
            let (status, body) = node
                .notify(json!({"scope": "all", "event": "e", "data": i}))
                .await;
            assert_eq!(status, 202, "{name}: {body}");
        }
        eprintln!(
            "notify {name}: {:?} per request ({ROUNDS} sequential)",
            started.elapsed() / ROUNDS
        );
    }

    let master = redis.master_of(&format!("{{{prefix}}}"));
    let replicas = redis.replicas_of(master);
    assert!(!replicas.is_empty(), "the master has a replica");
    for r in replicas {
        redis.kill(r);
    }
    // The master notices its replica is gone when the link drops; from then
    // on no write is acknowledged.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let (status, body) = waiting
            .notify(json!({"scope": "all", "event": "unreplicated"}))
            .await;
        if status != 202 || Instant::now() >= deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 503, "refused once no replica acknowledges: {body}");
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    for _ in 0..3 {
        let (status, body) = waiting
            .notify(json!({"scope": "all", "event": "unreplicated"}))
            .await;
        assert_eq!(status, 503, "still refused: {body}");
        let (status, body) = plain
            .notify(json!({"scope": "all", "event": "unreplicated"}))
            .await;
        assert_eq!(
            status, 202,
            "without the flag the write is accepted: {body}"
        );
    }
    // A room's config on that shard: the same (a failover right after an
    // unreplicated PUT would lose the room).
    let room = (0..64)
        .map(|i| format!("wait-{i}"))
        .find(|r| redis.master_of(&format!("{{{prefix}:room:{r}}}")) == master)
        .expect("a room on the shard without replicas");
    let config = json!({"capacity": 5, "admit_per_minute": null, "session_ttl_secs": 600,
        "target_url": "https://shop.example/in", "state": "open", "pow_difficulty": 0})
    .to_string();
    let auth = format!("Bearer {KEY}");
    let put = |node: &TestNode| {
        let (addr, path, auth, config) = (
            node.addr,
            format!("/api/v1/rooms/{room}"),
            auth.clone(),
            config.clone(),
        );
        async move {
            http(addr, "PUT", &path, &[("authorization", &auth)], &config)
                .await
                .unwrap()
        }
    };
    let (status, body) = put(&waiting).await;
    assert_eq!(status, 503, "a room PUT no replica acknowledged: {body}");
    assert!(body.contains("store_unavailable"), "{body}");
    let (status, body) = put(&plain).await;
    assert_eq!(status, 200, "without the flag the room is stored: {body}");
}

/// A Redis wiped while every node was stopped: a node keeps the store
/// identity it last saw in its data directory, so at its next start it
/// finds the identity gone and reports the wipe.
#[tokio::test]
async fn a_store_wiped_while_the_node_was_stopped_is_reported_at_its_next_start() {
    let mut redis = TestRedis::start();
    let data_dir = scratch_dir();
    let keys = shared_keys().display().to_string();
    let url = redis.url();
    let start = || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pace-node"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--service-key", KEY])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--redis", &url, "--keys", &keys])
            .env("PACE_LOG", "warn")
            .env("PACE_INSECURE_ANONYMOUS_DEVICES", "true");
        NodeProcess::start(cmd)
    };
    let process = start();
    let node = TestNode::external(process.addr);
    node.wait_ready().await;
    // The identity was checked (and kept) once the node reports no wipe.
    node.wait_metric("pace_store_wiped", 0.0).await;
    let kept = data_dir.join("store-id-pace");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !kept.exists() {
        assert!(
            Instant::now() < deadline,
            "the identity is kept in the data dir"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(process);

    redis.stop();
    redis.restart(); // empty: no persistence
    let process = start();
    let node = TestNode::external(process.addr);
    node.wait_ready().await;
    node.wait_metric_within("pace_store_wiped", 1.0, Duration::from_secs(15))
        .await;
}
