//! No notification lost: history per scope, `resume` after a reconnect,
//! repair after node and Redis failures.
//!
//! The devices here behave as the delivery guarantee asks a device to
//! (docs/protocol.md): keep the last cursor per scope, reconnect with
//! `resume=1`, send `resume`, drop a repeated id.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use pace_protocol::{ClientFrame, Cursor, Notification, ResumeOutcome, Scope, ServerFrame};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// What one device has received, as a client library keeps it.
#[derive(Debug, Default)]
struct Device {
    id: String,
    cursors: HashMap<(Scope, Option<String>), Cursor>,
    seen: HashSet<String>,
    /// Notifications, first copy of each, in arrival order.
    got: Vec<Notification>,
    /// Copies of an id already received (the node should send none).
    duplicates: usize,
    /// Every `resumed` answer.
    resumed: Vec<Vec<ResumeOutcome>>,
    reconnects: usize,
}

impl Device {
    fn new(id: &str) -> Device {
        Device {
            id: id.to_owned(),
            ..Device::default()
        }
    }

    fn on_frame(&mut self, frame: ServerFrame) {
        match frame {
            ServerFrame::Notification(n) => {
                if !self.seen.insert(n.id.clone()) {
                    self.duplicates += 1;
                    return;
                }
                self.cursors.insert((n.scope, n.target.clone()), n.cursor());
                self.got.push(n);
            }
            ServerFrame::Resumed { scopes } => {
                for o in &scopes {
                    let key = (o.cursor.scope, o.cursor.target.clone());
                    self.cursors.insert(key, o.cursor.clone());
                }
                self.resumed.push(scopes);
            }
            _ => {}
        }
    }

    /// The `resume` frame for every scope seen so far plus `extra`.
    fn resume_frame(&self, extra: &[Cursor]) -> String {
        let mut cursors: Vec<Cursor> = self.cursors.values().cloned().collect();
        for c in extra {
            if !cursors
                .iter()
                .any(|k| k.scope == c.scope && k.target == c.target)
            {
                cursors.push(c.clone());
            }
        }
        serde_json::to_string(&ClientFrame::Resume { cursors }).unwrap()
    }

    fn ids(&self) -> Vec<String> {
        self.got.iter().map(|n| n.id.clone()).collect()
    }

    /// Reads frames until `done` holds or `deadline`; false when the
    /// connection ended first.
    async fn read_until(
        &mut self,
        ws: &mut Ws,
        deadline: Instant,
        done: impl Fn(&Device) -> bool,
    ) -> bool {
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, ws.next()).await {
                Err(_) => return true, // deadline: the caller asserts
                Ok(Some(Ok(Message::Text(t)))) => self.on_frame(serde_json::from_str(&t).unwrap()),
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return false,
                Ok(Some(Ok(_))) => {}
            }
        }
        true
    }
}

fn group_cursor(group: &str, epoch: u64, seq: u64) -> Cursor {
    Cursor {
        scope: Scope::Group,
        target: Some(group.to_owned()),
        epoch,
        seq,
    }
}

/// Sends a notification and returns its id (asserting it was accepted).
async fn send(node: &TestNode, body: serde_json::Value) -> String {
    let (status, resp) = node.notify(body).await;
    assert_eq!(status, 202, "{resp}");
    resp["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_device_away_for_a_few_seconds_gets_every_group_message_once_in_order() {
    let node = TestNode::start().await;
    let mut dev = Device::new("roamer-1");
    let (mut ws, _) = node
        .connect_with("/ws?device_id=roamer-1", &[("x-department-id", "sales")])
        .await;
    let mut sent_group = vec![
        send(
            &node,
            json!({"scope": "group", "target": "sales", "event": "g"}),
        )
        .await,
    ];
    let mut sent_all = vec![send(&node, json!({"scope": "all", "event": "a"})).await];
    let deadline = Instant::now() + SOON;
    dev.read_until(&mut ws, deadline, |d| d.got.len() == 2)
        .await;
    assert_eq!(dev.got.len(), 2);
    ws.close(None).await.unwrap();
    drop(ws);

    // Away: 50 messages to its group.
    for i in 0..50 {
        sent_group.push(
            send(
                &node,
                json!({"scope": "group", "target": "sales", "event": "g", "data": {"i": i}}),
            )
            .await,
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Coming back while more arrive, on both scopes: the replay must come
    // before the live ones, and nothing twice.
    let sender = {
        let node = TestNode::external(node.addr);
        tokio::spawn(async move {
            let (mut g, mut a) = (Vec::new(), Vec::new());
            for i in 0..20 {
                g.push(
                    send(
                        &node,
                        json!({"scope": "group", "target": "sales", "event": "g", "data": {"late": i}}),
                    )
                    .await,
                );
                a.push(
                    send(
                        &node,
                        json!({"scope": "all", "event": "a", "data": {"late": i}}),
                    )
                    .await,
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (g, a)
        })
    };
    // No department header this time: the group cursor resubscribes.
    let (mut ws, _) = node
        .connect_with("/ws?device_id=roamer-1&resume=1", &[])
        .await;
    ws.send(Message::Text(dev.resume_frame(&[]).into()))
        .await
        .unwrap();
    let (late_group, late_all) = sender.await.unwrap();
    sent_group.extend(late_group);
    sent_all.extend(late_all);
    let want = sent_group.len() + sent_all.len();
    let deadline = Instant::now() + SOON;
    dev.read_until(&mut ws, deadline, |d| d.got.len() >= want)
        .await;
    // Anything extra would show up now.
    dev.read_until(&mut ws, Instant::now() + Duration::from_millis(300), |_| {
        false
    })
    .await;

    let per_scope = |scope: Scope| -> Vec<String> {
        dev.got
            .iter()
            .filter(|n| n.scope == scope)
            .map(|n| n.id.clone())
            .collect()
    };
    assert_eq!(
        per_scope(Scope::Group),
        sent_group,
        "every group message, in order"
    );
    assert_eq!(per_scope(Scope::All), sent_all, "every broadcast, in order");
    assert_eq!(dev.duplicates, 0, "the node sent nothing twice");
    let outcome = &dev.resumed[0];
    assert_eq!(outcome.len(), 2);
    assert!(outcome.iter().all(|o| o.recovered), "{outcome:?}");
    let group = outcome
        .iter()
        .find(|o| o.cursor.scope == Scope::Group)
        .unwrap();
    assert!(group.replayed >= 50, "{group:?}");
    // Replayed ones arrived before any live one of their scope: sequence
    // numbers only grow.
    for scope in [Scope::Group, Scope::All] {
        let seqs: Vec<u64> = dev
            .got
            .iter()
            .filter(|n| n.scope == scope)
            .map(|n| n.seq)
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "{scope:?}: {seqs:?}"
        );
    }
    assert!(node.metric("pace_history_replayed_total").await >= 50.0);
    assert_eq!(
        node.metric(r#"pace_resumes_total{result="recovered"}"#)
            .await,
        2.0
    );
}

#[tokio::test]
async fn history_that_no_longer_reaches_back_says_recovered_false() {
    let node = TestNode::start_with(|c| c.store.history_max_len = 5).await;
    let (mut ws, welcome) = node.connect("forgetful").await;
    assert_eq!(welcome.device_id.as_str(), "forgetful");
    let first = send(
        &node,
        json!({"scope": "device", "target": "forgetful", "event": "d"}),
    )
    .await;
    let mut dev = Device::new("forgetful");
    dev.read_until(&mut ws, Instant::now() + SOON, |d| !d.got.is_empty())
        .await;
    assert_eq!(dev.ids(), [first]);
    let epoch = dev.got[0].epoch;
    drop(ws);
    let mut newest = Vec::new();
    for i in 0..10 {
        newest.push(
            send(
                &node,
                json!({"scope": "device", "target": "forgetful", "event": "d", "data": i}),
            )
            .await,
        );
    }
    let (mut ws, _) = node
        .connect_with("/ws?device_id=forgetful&resume=1", &[])
        .await;
    // Its own scope (too far back), a made-up epoch, and someone else's
    // device scope.
    let stale = group_cursor("ops", epoch + 1, 3);
    let other = Cursor {
        scope: Scope::Device,
        target: Some("someone-else".into()),
        epoch: 0,
        seq: 0,
    };
    send(
        &node,
        json!({"scope": "group", "target": "ops", "event": "o"}),
    )
    .await;
    ws.send(Message::Text(dev.resume_frame(&[stale, other]).into()))
        .await
        .unwrap();
    dev.read_until(&mut ws, Instant::now() + SOON, |d| !d.resumed.is_empty())
        .await;
    let outcomes = &dev.resumed[0];
    let mine = &outcomes[0];
    assert!(!mine.recovered);
    assert_eq!(mine.reason.as_deref(), Some("history_exhausted"));
    assert_eq!(mine.replayed, 5, "the newest five are still replayed");
    assert_eq!(
        (mine.cursor.epoch, mine.cursor.seq),
        (epoch, 11),
        "the device learns where the scope is"
    );
    let replayed: Vec<String> = dev
        .got
        .iter()
        .filter(|n| n.scope == Scope::Device)
        .skip(1)
        .map(|n| n.id.clone())
        .collect();
    assert_eq!(replayed, newest[5..]);
    assert!(!outcomes[1].recovered);
    assert_eq!(outcomes[1].reason.as_deref(), Some("epoch_changed"));
    assert_eq!(
        outcomes[1].replayed, 1,
        "the current epoch is replayed whole"
    );
    assert!(!outcomes[2].recovered);
    assert_eq!(outcomes[2].reason.as_deref(), Some("not_allowed"));
    assert_eq!(outcomes[2].replayed, 0);
    assert_eq!(
        node.metric(r#"pace_resumes_total{result="not_recovered"}"#)
            .await,
        3.0
    );

    // Malformed and oversized resumes are refused without harm.
    send_text(&mut ws, r#"{"type":"resume","cursors":[{"scope":"all"}]}"#).await;
    match next_frame(&mut ws).await {
        ServerFrame::Error { code, .. } => assert_eq!(code.as_str(), "invalid_frame"),
        other => panic!("{other:?}"),
    }
    let many: Vec<Cursor> = (0..40)
        .map(|i| group_cursor(&format!("g{i}"), 0, 0))
        .collect();
    let text = serde_json::to_string(&ClientFrame::Resume { cursors: many }).unwrap();
    send_text(&mut ws, &text).await;
    match next_frame(&mut ws).await {
        ServerFrame::Error { code, message } => {
            assert_eq!(code.as_str(), "invalid_frame", "{message}")
        }
        other => panic!("{other:?}"),
    }
    send_text(&mut ws, r#"{"type":"ping","id":7}"#).await;
    assert_eq!(next_frame(&mut ws).await, ServerFrame::Pong { id: Some(7) });
}

#[tokio::test]
async fn a_held_connection_gets_live_messages_after_the_hold_without_a_resume() {
    let node = TestNode::start_with(|c| c.devices.resume_hold = Duration::from_millis(500)).await;
    let (mut ws, _) = node.connect_with("/ws?device_id=quiet&resume=1", &[]).await;
    let id = send(&node, json!({"scope": "all", "event": "a"})).await;
    assert_eq!(
        frame_within(&mut ws, Duration::from_millis(250)).await,
        None,
        "held while the device may still send resume"
    );
    match next_frame(&mut ws).await {
        ServerFrame::Notification(n) => assert_eq!(n.id, id),
        other => panic!("{other:?}"),
    }
}

/// A device that stays alive through failures: first connection to
/// `first`, reconnections (with `resume`) through `gateway`, until it has
/// `want` notifications or `deadline`.
async fn resilient_device(
    id: String,
    first: SocketAddr,
    gateway: SocketAddr,
    want: usize,
    ready: Arc<Semaphore>,
    connecting: Arc<Semaphore>,
    deadline: Instant,
) -> Device {
    let mut dev = Device::new(&id);
    // Bounded concurrent first handshakes; released once connected.
    let mut slot = Some(connecting.acquire_owned().await.unwrap());
    let mut target = first;
    let mut resume = false;
    let mut announced = false;
    while dev.got.len() < want && Instant::now() < deadline {
        let path = if resume {
            format!("/ws?device_id={id}&resume=1")
        } else {
            format!("/ws?device_id={id}")
        };
        let Ok(mut ws) = TestNode::external(target).try_connect(&path, &[]).await else {
            let pause = 50 + rand::random::<u64>() % 400;
            tokio::time::sleep(Duration::from_millis(pause)).await;
            continue;
        };
        let resume_frame = dev.resume_frame(&[Cursor {
            scope: Scope::All,
            target: None,
            epoch: 0,
            seq: 0,
        }]);
        if resume && ws.send(Message::Text(resume_frame.into())).await.is_err() {
            continue;
        }
        if !announced {
            // Connected (welcome pending): let the test go on.
            announced = true;
            slot = None;
            ready.add_permits(1);
        }
        let alive = dev
            .read_until(&mut ws, deadline, |d| d.got.len() >= want)
            .await;
        if !alive {
            // Dropped: come back through the gateway, resuming.
            dev.reconnects += 1;
            target = gateway;
            resume = true;
            let pause = 50 + rand::random::<u64>() % 400;
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
    drop(slot);
    dev
}

#[tokio::test]
async fn sigkill_of_the_node_holding_1000_devices_loses_no_broadcast() {
    const DEVICES: usize = 1000;
    const BROADCASTS: usize = 100;
    let mut cluster = Cluster::start(3, &[]).await;
    let victim = cluster.nodes[0].addr;
    let gateway = cluster.gateway.addr;
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready = Arc::new(Semaphore::new(0));
    let connecting = Arc::new(Semaphore::new(100));
    let mut devices = tokio::task::JoinSet::new();
    for i in 0..DEVICES {
        let (ready, connecting) = (ready.clone(), connecting.clone());
        devices.spawn(resilient_device(
            format!("held-{i}"),
            victim,
            gateway,
            BROADCASTS,
            ready,
            connecting,
            deadline,
        ));
    }
    let all_in = ready.acquire_many(DEVICES as u32).await.unwrap();
    all_in.forget();
    // Every device has its welcome before the stream starts.
    cluster
        .node(0)
        .wait_metric("pace_connections_open", DEVICES as f64)
        .await;

    let survivors = [cluster.node(1), cluster.node(2)];
    let mut sent = Vec::new();
    for i in 0..BROADCASTS {
        if i == 30 {
            cluster.nodes[0].child.kill().unwrap();
            let _ = cluster.nodes[0].child.wait();
        }
        sent.push(
            send(
                &survivors[i % 2],
                json!({"scope": "all", "event": "stream", "data": {"i": i}}),
            )
            .await,
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut misses = 0;
    let mut reconnected = 0;
    let mut duplicates = 0;
    let mut not_recovered = 0;
    while let Some(dev) = devices.join_next().await {
        let dev = dev.unwrap();
        let got: HashSet<&str> = dev.got.iter().map(|n| n.id.as_str()).collect();
        misses += sent.iter().filter(|id| !got.contains(id.as_str())).count();
        reconnected += usize::from(dev.reconnects > 0);
        duplicates += dev.duplicates;
        not_recovered += dev
            .resumed
            .iter()
            .flatten()
            .filter(|o| !o.recovered)
            .count();
        let order: Vec<&str> = dev.got.iter().map(|n| n.id.as_str()).collect();
        let expected: Vec<&str> = sent.iter().map(String::as_str).collect();
        assert_eq!(order, expected, "{}: in order", dev.id);
    }
    assert_eq!(reconnected, DEVICES, "every device lost its node");
    assert_eq!(misses, 0, "messages missed over {DEVICES} devices");
    assert_eq!(not_recovered, 0);
    assert_eq!(duplicates, 0, "the nodes sent nothing twice");
}

#[tokio::test]
async fn redis_crash_during_a_stream_loses_no_accepted_message() {
    let dir = scratch_dir();
    let redis = TestRedis::start_persistent(&dir);
    let mut cluster = Cluster::start_on(redis, 3, &[]).await;
    let gw = cluster.gateway.handle();
    let mut devices = Vec::new();
    for i in 0..30 {
        let (ws, _) = gw.connect(&format!("steady-{i}")).await;
        devices.push((Device::new(&format!("steady-{i}")), ws));
    }

    let nodes = [cluster.node(0), cluster.node(1), cluster.node(2)];
    let mut accepted = Vec::new();
    let mut refused = 0;
    let started = Instant::now();
    let mut crashed = false;
    let mut restarted = false;
    for i in 0..400 {
        let elapsed = started.elapsed();
        if !crashed && elapsed > Duration::from_millis(800) {
            cluster.redis.stop();
            crashed = true;
        }
        if crashed && !restarted && elapsed > Duration::from_millis(1800) {
            cluster.redis.restart();
            restarted = true;
        }
        let (status, resp) = nodes[i % 3]
            .notify(json!({"scope": "all", "event": "s", "data": {"i": i}}))
            .await;
        match status {
            202 => accepted.push(resp["id"].as_str().unwrap().to_owned()),
            503 => refused += 1,
            other => panic!("unexpected {other}: {resp}"),
        }
        if restarted && accepted.len() >= 150 && elapsed > Duration::from_secs(4) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(crashed && restarted);
    assert!(refused > 0, "the outage was real");
    let deadline = Instant::now() + Duration::from_secs(20);
    for (dev, ws) in devices.iter_mut() {
        let want: HashSet<String> = accepted.iter().cloned().collect();
        let alive = dev
            .read_until(ws, deadline, |d| want.iter().all(|id| d.seen.contains(id)))
            .await;
        assert!(alive, "{}: connection kept through the outage", dev.id);
        let missed = accepted.iter().filter(|id| !dev.seen.contains(*id)).count();
        assert_eq!(missed, 0, "{}: accepted messages missed", dev.id);
        assert_eq!(dev.duplicates, 0, "{}", dev.id);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A device that keeps coming back through `gateway` (resuming) until it
/// has received an `event` notification or `deadline`.
async fn device_until(id: String, gateway: SocketAddr, event: &str, deadline: Instant) -> Device {
    let mut dev = Device::new(&id);
    let mut resume = false;
    let done = |d: &Device| d.got.iter().any(|n| n.event.as_str() == event);
    while !done(&dev) && Instant::now() < deadline {
        let path = if resume {
            format!("/ws?device_id={id}&resume=1")
        } else {
            format!("/ws?device_id={id}")
        };
        // Every device is in the group `fo`.
        let Ok(mut ws) = TestNode::external(gateway)
            .try_connect(&path, &[("x-department-id", "fo")])
            .await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if resume {
            // Every scope it may have missed something in, also those it
            // has not received anything in yet.
            let frame = dev.resume_frame(&[
                Cursor {
                    scope: Scope::All,
                    target: None,
                    epoch: 0,
                    seq: 0,
                },
                group_cursor("fo", 0, 0),
                Cursor {
                    scope: Scope::Device,
                    target: Some(id.clone()),
                    epoch: 0,
                    seq: 0,
                },
            ]);
            if ws.send(Message::Text(frame.into())).await.is_err() {
                continue;
            }
        }
        if !dev.read_until(&mut ws, deadline, done).await {
            dev.reconnects += 1;
            resume = true;
            tokio::time::sleep(Duration::from_millis(50 + rand::random::<u64>() % 200)).await;
        }
    }
    dev
}

#[tokio::test]
async fn redis_cluster_failover_mid_stream_drops_nothing_silently() {
    const DEVICES: usize = 12;
    let redis = TestRedisCluster::start();
    let prefix = format!("t{}", free_port());
    let nodes = NodeProcess::spawn_over(&redis.url(), &prefix, 3, &[]);
    for n in &nodes {
        TestNode::external(n.addr).wait_ready().await;
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let gateway = Gateway::start(&addrs).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut devices = tokio::task::JoinSet::new();
    for i in 0..DEVICES {
        devices.spawn(device_until(
            format!("fo-{i}"),
            gateway.addr,
            "final",
            deadline,
        ));
    }
    // Every device connected before the stream starts.
    let mut open = 0.0;
    while open < DEVICES as f64 {
        open = 0.0;
        for n in &nodes {
            open += TestNode::external(n.addr)
                .metric("pace_connections_open")
                .await;
        }
        assert!(Instant::now() < deadline, "devices never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A waiting room (capacity 5) on another shard than the sequences and
    // the bus, and a surge of 30 devices joining it through the gateway
    // while the failover happens.
    const CAPACITY: usize = 5;
    let victim = redis.master_of(&format!("{{{prefix}}}"));
    let room_name = (0..64)
        .map(|i| format!("surge-{i}"))
        .find(|r| redis.master_of(&format!("{{{prefix}:room:{r}}}")) != victim)
        .expect("a room on another shard");
    let room = json!({"capacity": CAPACITY, "admit_per_minute": null, "session_ttl_secs": 600,
        "target_url": "https://shop.example/in", "state": "open", "pow_difficulty": 0});
    let (status, text) = http(
        addrs[0],
        "PUT",
        &format!("/api/v1/rooms/{room_name}"),
        &[("authorization", &format!("Bearer {KEY}"))],
        &room.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
    let (admit_tx, mut admit_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut surge = tokio::task::JoinSet::new();
    for i in 0..30usize {
        let (tx, gw, stop) = (admit_tx.clone(), gateway.addr, stop.clone());
        let join = json!({"type": "join", "room": room_name}).to_string();
        surge.spawn(async move {
            while !stop.is_cancelled() {
                let path = format!("/ws?device_id=surge-{i}");
                let Ok(mut ws) = TestNode::external(gw).try_connect(&path, &[]).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                send_text(&mut ws, &join).await;
                loop {
                    let msg = tokio::select! {
                        () = stop.cancelled() => return,
                        m = ws.next() => m,
                    };
                    match msg {
                        Some(Ok(Message::Text(t))) => {
                            if let Ok(ServerFrame::Admitted(_)) = serde_json::from_str(&t) {
                                let _ = tx.send(i);
                            } else if t.contains("\"error\"") {
                                // The store was away: join again.
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                send_text(&mut ws, &join).await;
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    }
                }
            }
        });
    }
    drop(admit_tx);

    // A stream through every node; the master of the slot holding the
    // sequences and the bus dies after 1 s.
    // Operations on another shard (the room's), asked every 50 ms from the
    // kill until notifications are accepted again: the room's stats (an
    // operator's call, only the room's keys) and a device's room status
    // (which also reads the device registry, kept in the `{prefix}` slot
    // with the bus: it fails with that shard).
    let start_probe = |room_name: String, addrs: Vec<SocketAddr>| {
        let probing = tokio_util::sync::CancellationToken::new();
        let stop = probing.clone();
        let task = tokio::spawn(async move {
            let (mut asked, mut stats, mut status) = (0, 0, 0);
            let auth = format!("Bearer {KEY}");
            while !probing.is_cancelled() {
                let addr = addrs[asked % 3];
                let path = format!("/api/v1/rooms/{room_name}/stats");
                if let Ok((200, _)) =
                    http(addr, "GET", &path, &[("authorization", &auth)], "").await
                {
                    stats += 1;
                }
                let path = format!("/api/v1/rooms/{room_name}/status?device_id=surge-0");
                if let Ok((200, _)) = http(addr, "GET", &path, &[], "").await {
                    status += 1;
                }
                asked += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (asked, stats, status)
        });
        (stop, task)
    };
    let mut probe = None;
    let mut probed = (0, 0, 0);
    let mut redis = redis;
    let handles: Vec<TestNode> = addrs.iter().map(|a| TestNode::external(*a)).collect();
    let mut accepted = Vec::new();
    let (mut refused, mut killed_at, mut back_at) = (0, None, None);
    let started = Instant::now();
    for i in 0usize.. {
        if killed_at.is_none() && started.elapsed() > Duration::from_secs(1) {
            redis.kill(victim);
            killed_at = Some(Instant::now());
            probe = Some(start_probe(room_name.clone(), addrs.clone()));
        }
        if back_at.is_some()
            && let Some((stop, task)) = probe.take()
        {
            stop.cancel();
            probed = task.await.unwrap();
        }
        // The stream goes to every scope: all, the devices' group, and
        // each device in turn.
        let (body, to) = match i % 3 {
            0 => (
                json!({"scope": "all", "event": "s", "data": {"i": i}}),
                None,
            ),
            1 => (
                json!({"scope": "group", "target": "fo", "event": "s", "data": {"i": i}}),
                None,
            ),
            _ => {
                let device = format!("fo-{}", (i / 3) % DEVICES);
                (
                    json!({"scope": "device", "target": device, "event": "s", "data": {"i": i}}),
                    Some(device),
                )
            }
        };
        let (status, body) = handles[i % 3].notify(body).await;
        match status {
            202 => {
                accepted.push((body["id"].as_str().unwrap().to_owned(), to));
                if killed_at.is_some() && refused > 0 && back_at.is_none() {
                    back_at = Some(Instant::now());
                }
            }
            503 => refused += 1,
            other => panic!("unexpected {other}: {body}"),
        }
        if back_at.is_some_and(|t| t.elapsed() > Duration::from_secs(1)) {
            break;
        }
        assert!(Instant::now() < deadline, "the cluster never recovered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed_at = killed_at.unwrap();
    let back_at = back_at.unwrap();
    eprintln!(
        "failover: {} accepted, {refused} refused, notifications accepted again {:?} after the kill",
        accepted.len(),
        back_at - killed_at
    );
    // Every node recovered without a restart.
    for h in &handles {
        let (status, _) = loop {
            let r = h.notify(json!({"scope": "all", "event": "final"})).await;
            if r.0 == 202 || Instant::now() >= deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(status, 202, "node recovered");
    }
    for h in &handles {
        h.wait_metric(r#"pace_store_up{store="redis"}"#, 1.0).await;
    }

    let mut lost_writes = 0.0;
    for h in &handles {
        lost_writes += h.metric("pace_store_lost_writes_total").await;
    }
    eprintln!(
        "during the failover, of {} asks: room stats (another shard) answered {}, a device's \
         room status (also reads the registry, on the failed shard) answered {}",
        probed.0, probed.1, probed.2
    );
    // Operations on the healthy shard kept answering (not one stalled
    // behind the failed shard).
    assert!(probed.0 > 0, "the probe ran during the failover");
    assert_eq!(
        probed.1, probed.0,
        "every room stats call (another shard) answered during the failover"
    );
    // The surge: capacity admitted, never more (sessions last 10 min).
    let mut admitted = HashSet::new();
    let surge_deadline = Instant::now() + Duration::from_secs(10);
    while admitted.len() < CAPACITY && Instant::now() < surge_deadline {
        if let Ok(Some(i)) = tokio::time::timeout(Duration::from_millis(200), admit_rx.recv()).await
        {
            admitted.insert(i);
        }
    }
    // Two more admission ticks' worth of time for an over-admission to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    while let Some(r) = surge.join_next().await {
        r.unwrap();
    }
    while let Ok(i) = admit_rx.try_recv() {
        admitted.insert(i);
    }
    assert_eq!(admitted.len(), CAPACITY, "capacity admitted, never more");
    let (status, text) = http(
        addrs[1],
        "GET",
        &format!("/api/v1/rooms/{room_name}/stats"),
        &[("authorization", &format!("Bearer {KEY}"))],
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
    let stats: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(stats["active"].as_u64(), Some(CAPACITY as u64), "{stats}");

    let mut missed_untold = 0;
    let mut told = 0;
    while let Some(dev) = devices.join_next().await {
        let dev = dev.unwrap();
        assert!(
            dev.got.iter().any(|n| n.event.as_str() == "final"),
            "{}: got the final notification",
            dev.id
        );
        let not_recovered = dev.resumed.iter().flatten().any(|o| !o.recovered);
        told += usize::from(not_recovered);
        let missed = accepted
            .iter()
            .filter(|(id, to)| to.as_ref().is_none_or(|d| *d == dev.id) && !dev.seen.contains(id))
            .count();
        if missed > 0 && !not_recovered {
            missed_untold += 1;
        }
        assert_eq!(dev.duplicates, 0, "{}", dev.id);
    }
    eprintln!("lost writes detected: {lost_writes}; devices told recovered:false: {told}");
    assert_eq!(
        missed_untold, 0,
        "every accepted notification reached every device, or the device was told"
    );
    drop(gateway);
}

/// A failover to a replica that missed the newest writes, as the nodes
/// see it: the bus sequence, the bus log and the `all` scope's sequence
/// and history rewound by 5 entries (rewritten in Redis as a stale
/// replica would hold them). The nodes open a new epoch and every device
/// gets the next notifications (before the fix: answered 202, reached
/// none); a device away during the rewind whose cursor is past the new
/// head is told `epoch_changed` and gets the new epoch replayed, not
/// "nothing missed".
#[tokio::test]
async fn a_rewound_bus_opens_a_new_epoch_and_the_next_notifications_reach_every_device() {
    let cluster = Cluster::start(3, &[]).await;
    let gw = cluster.gateway.handle();
    let mut devices = Vec::new();
    for i in 0..9 {
        let id = format!("rewound-{i}");
        let (ws, _) = gw.connect(&id).await;
        devices.push((Device::new(&id), ws));
    }
    let nodes = [cluster.node(0), cluster.node(1), cluster.node(2)];
    let mut first = Vec::new();
    for i in 0..10 {
        first.push(
            send(
                &nodes[i % 3],
                json!({"scope": "all", "event": "before", "data": i}),
            )
            .await,
        );
    }
    for (dev, ws) in devices.iter_mut() {
        dev.read_until(ws, Instant::now() + SOON, |d| d.got.len() == 10)
            .await;
        assert_eq!(dev.ids(), first, "{}", dev.id);
    }
    let old_epoch = devices[0].0.got[0].epoch;
    // The away device leaves with its cursor at the old head.
    let (mut away, away_ws) = devices.pop().unwrap();
    drop(away_ws);

    // What a replica that missed the last 5 writes holds.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &cluster.redis.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        assert!(out.status.success(), "{out:?}");
    };
    let p = &cluster.prefix;
    for (hash, stream) in [
        (format!("{{{p}}}:bus-seq"), format!("{{{p}}}:bus-log")),
        (format!("{{{p}}}:scope:all"), format!("{{{p}}}:history:all")),
    ] {
        cli(&["HSET", &hash, "seq", "5"]);
        let mut xdel = vec!["XDEL".to_owned(), stream];
        xdel.extend((6..=10).map(|s| format!("{s}-0")));
        let xdel: Vec<&str> = xdel.iter().map(String::as_str).collect();
        cli(&xdel);
    }

    let mut next = Vec::new();
    for i in 0..5 {
        next.push(
            send(
                &nodes[i % 3],
                json!({"scope": "all", "event": "after", "data": i}),
            )
            .await,
        );
    }
    // A node that finds the store behind what it saw tells its devices to
    // resume (they reconnect, as the delivery guarantee asks); whatever the
    // path, every device ends with every accepted notification.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (dev, ws) in devices.iter_mut() {
        catch_up(dev, ws, &gw, &next, deadline).await;
        assert_eq!(dev.ids()[..10], first, "{}", dev.id);
        let got: HashSet<&String> = dev.got[10..].iter().map(|n| &n.id).collect();
        assert_eq!(
            got,
            next.iter().collect(),
            "{}: the next notifications arrive",
            dev.id
        );
        assert!(
            dev.got[10..].iter().all(|n| n.epoch != old_epoch),
            "{}: in a new epoch",
            dev.id
        );
        assert_eq!(dev.duplicates, 0, "{}", dev.id);
    }

    // The away device comes back with its cursor (old epoch, seq 10): it
    // is told the epoch changed, not that it missed nothing.
    let (mut ws, _) = gw
        .connect_with(&format!("/ws?device_id={}&resume=1", away.id), &[])
        .await;
    ws.send(Message::Text(away.resume_frame(&[]).into()))
        .await
        .unwrap();
    catch_up(&mut away, &mut ws, &gw, &next, deadline).await;
    // The `resumed` answer follows the replayed notifications.
    away.read_until(&mut ws, deadline, |d| !d.resumed.is_empty())
        .await;
    let outcome = &away.resumed[0][0];
    assert!(!outcome.recovered, "{outcome:?}");
    assert_eq!(outcome.reason.as_deref(), Some("epoch_changed"));
    let got: HashSet<&String> = away.got[10..].iter().map(|n| &n.id).collect();
    assert_eq!(got, next.iter().collect(), "the new epoch is replayed");
    assert_eq!(away.duplicates, 0);
}

/// Reads `ws` until `dev` has every id of `want`, reconnecting through
/// `gw` with a resume whenever the node closes the connection.
async fn catch_up(
    dev: &mut Device,
    ws: &mut Ws,
    gw: &TestNode,
    want: &[String],
    deadline: Instant,
) {
    let done = |d: &Device| want.iter().all(|id| d.seen.contains(id));
    while !dev.read_until(ws, deadline, done).await {
        assert!(Instant::now() < deadline, "{}: never caught up", dev.id);
        dev.reconnects += 1;
        let (fresh, _) = gw
            .connect_with(&format!("/ws?device_id={}&resume=1", dev.id), &[])
            .await;
        *ws = fresh;
        ws.send(Message::Text(dev.resume_frame(&[]).into()))
            .await
            .unwrap();
    }
    assert!(done(dev), "{}: caught up by the deadline", dev.id);
}
