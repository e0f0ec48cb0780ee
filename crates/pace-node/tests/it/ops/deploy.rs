//! The local cluster of `deploy/local/up` and a rolling restart of it
//! (`rolling-restart --local`) under 60 devices that reconnect.

use super::*;

// --- the local cluster of deploy/local/up, in a temp dir on free ports ------

struct LocalCluster {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    nodes: Vec<SocketAddr>,
    gateway: SocketAddr,
}

impl LocalCluster {
    async fn up(n: u16) -> LocalCluster {
        let base = free_port_block(n + 3);
        let dir = tempfile::tempdir().unwrap();
        // `up` makes the cluster's key set in the state dir; the nodes'
        // data directory goes there too.
        let env: Vec<(String, String)> = [
            ("PACE_LOCAL_RUN_DIR", dir.path().display().to_string()),
            ("PACE_NODE_BIN", BIN.to_owned()),
            ("PACE_SERVICE_KEY", KEY.to_owned()),
            ("PACE_REDIS_PORT", base.to_string()),
            ("PACE_GATEWAY_PORT", (base + 1).to_string()),
            ("PACE_STATS_PORT", (base + 2).to_string()),
            ("PACE_BASE_PORT", (base + 3).to_string()),
            ("PACE_DRAIN_GRACE", "5s".to_owned()),
            ("PACE_UP_TIMEOUT", "60".to_owned()),
            (
                "PACE_DATA_DIR",
                dir.path().join("data").display().to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let cluster = LocalCluster {
            dir,
            env,
            nodes: (0..n)
                .map(|i| SocketAddr::from(([127, 0, 0, 1], base + 3 + i)))
                .collect(),
            gateway: SocketAddr::from(([127, 0, 0, 1], base + 1)),
        };
        let (code, out, err) = run(
            cluster.command("deploy/local/up", &[&n.to_string()]),
            Duration::from_secs(120),
        )
        .await;
        assert_eq!(code, 0, "deploy/local/up failed:\n{out}\n{err}");
        cluster
    }

    fn command(&self, script: &str, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(repo().join(script));
        cmd.args(args);
        // Only the settings of this test reach the scripts and the nodes.
        for (k, _) in std::env::vars() {
            if k.starts_with("PACE_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// PID of each node process, from the pids file `up` keeps.
    fn node_pids(&self) -> BTreeMap<String, String> {
        std::fs::read_to_string(self.dir.path().join("pids"))
            .unwrap()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.first() == Some(&"node")).then(|| (f[3].to_owned(), f[1].to_owned()))
            })
            .collect()
    }

    fn log_tails(&self) -> String {
        let mut s = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".log") {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                s.push_str(&format!("--- {name}\n"));
                for l in tail.iter().rev() {
                    s.push_str(l);
                    s.push('\n');
                }
            }
        }
        s
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // down signals only the PIDs up (and rolling-restart) recorded.
        let mut cmd = std::process::Command::new(repo().join("deploy/local/down"));
        for (k, _) in std::env::vars() {
            if k.starts_with("PACE_") {
                cmd.env_remove(k);
            }
        }
        let _ = cmd
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("PACE_DOWN_TIMEOUT", "15")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

// --- devices that reconnect like pace-device does --------------------------

#[derive(Default)]
struct Device {
    connected: AtomicBool,
    node: Mutex<String>,
    welcomes: AtomicU32,
    /// Times the node told it to reconnect (close 1012).
    told_to_reconnect: AtomicU32,
    got_final: AtomicBool,
    /// Last queue position the node told it (room `roll`).
    position: AtomicU64,
    last_error: Mutex<String>,
}

/// A device: connect through the gateway, read until the connection ends,
/// reconnect after a short jittered pause; bounded by `stop` and 3 minutes.
async fn run_device(gateway: SocketAddr, id: String, dev: Arc<Device>, stop: CancellationToken) {
    let give_up = Instant::now() + Duration::from_secs(180);
    let mut attempt: u64 = 0;
    while !stop.is_cancelled() && Instant::now() < give_up {
        attempt += 1;
        match open(gateway, &id).await {
            Ok((mut ws, node)) => {
                *dev.node.lock().unwrap() = node;
                dev.welcomes.fetch_add(1, Ordering::SeqCst);
                // Every (re)connection takes the device's place again: the
                // same place, if the restart lost nothing.
                if ws
                    .send(Message::Text(r#"{"type":"join","room":"roll"}"#.into()))
                    .await
                    .is_err()
                {
                    continue;
                }
                dev.connected.store(true, Ordering::SeqCst);
                let mut code = None;
                loop {
                    let msg = tokio::select! {
                        () = stop.cancelled() => {
                            let _ = ws.close(None).await;
                            break;
                        }
                        m = ws.next() => m,
                    };
                    match msg {
                        None | Some(Err(_)) => break,
                        // Keep reading: tungstenite answers the close frame.
                        Some(Ok(Message::Close(frame))) => code = frame.map(|f| u16::from(f.code)),
                        Some(Ok(Message::Text(t))) => {
                            let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                            if v["type"] == "notification" && v["event"] == "final" {
                                dev.got_final.store(true, Ordering::SeqCst);
                            }
                            if v["type"] == "queue" {
                                dev.position
                                    .store(v["position"].as_u64().unwrap_or(0), Ordering::SeqCst);
                            }
                        }
                        Some(Ok(_)) => {}
                    }
                }
                dev.connected.store(false, Ordering::SeqCst);
                if code == Some(1012) {
                    dev.told_to_reconnect.fetch_add(1, Ordering::SeqCst);
                }
            }
            Err(e) => *dev.last_error.lock().unwrap() = e,
        }
        let jitter = (attempt * 37 + id.len() as u64 * 13) % 150;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(100 + jitter)) => {}
        }
    }
}

/// Each device's queue position in room `roll`, asked through the gateway.
async fn places(gateway: SocketAddr, devices: &[(String, Arc<Device>)]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (id, _) in devices {
        let (status, body) = http(
            gateway,
            "GET",
            &format!("/api/v1/rooms/roll/status?device_id={id}"),
            &[],
            "",
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "waiting", "{id}: {body}");
        out.insert(id.clone(), v["position"].as_u64().unwrap());
    }
    out
}

/// Waits (30 s at most) until every device is connected; otherwise names
/// those that are not, with their last connect error.
async fn wait_connected(devices: &[(String, Arc<Device>)], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let missing: Vec<String> = devices
            .iter()
            .filter(|(_, d)| !d.connected.load(Ordering::SeqCst))
            .map(|(id, d)| format!("{id} ({})", d.last_error.lock().unwrap()))
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not connected: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Debug, Default)]
struct ReadySamples {
    samples: usize,
    /// Most nodes not ready at one sampled moment.
    max_not_ready: usize,
    /// Moments with more than one node not ready.
    violations: Vec<String>,
    /// Nodes seen not ready at least once.
    seen_not_ready: BTreeSet<SocketAddr>,
}

/// Asks every node's /ready (all at once) every 100 ms until `stop`.
async fn sample_ready(nodes: Vec<SocketAddr>, stop: CancellationToken) -> ReadySamples {
    let mut s = ReadySamples::default();
    let started = Instant::now();
    let limit = Duration::from_secs(300);
    while !stop.is_cancelled() && started.elapsed() < limit {
        let at = started.elapsed();
        let ready = futures_util::future::join_all(nodes.iter().map(|a| is_ready(*a))).await;
        let down: Vec<SocketAddr> = nodes
            .iter()
            .zip(&ready)
            .filter(|(_, r)| !**r)
            .map(|(a, _)| *a)
            .collect();
        s.samples += 1;
        s.max_not_ready = s.max_not_ready.max(down.len());
        if down.len() > 1 {
            s.violations.push(format!("{at:?}: {down:?} not ready"));
        }
        s.seen_not_ready.extend(down);
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_local_keeps_every_device_and_never_two_nodes_down() {
    const DEVICES: usize = 60;
    let cluster = LocalCluster::up(3).await;
    let gw = cluster.gateway;

    // A room nobody is admitted to: every device holds a place throughout.
    let (status, body) = http(
        gw,
        "PUT",
        "/api/v1/rooms/roll",
        &[("authorization", &format!("Bearer {KEY}"))],
        &json!({"capacity": 0, "admit_per_minute": null, "session_ttl_secs": 60,
                "target_url": "https://shop.example/in", "state": "open", "pow_difficulty": 0})
        .to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");

    let stop = CancellationToken::new();
    let devices: Vec<(String, Arc<Device>)> = (0..DEVICES)
        .map(|i| (format!("roll-{i:02}"), Arc::new(Device::default())))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (id, dev) in &devices {
        tasks.spawn(run_device(gw, id.clone(), dev.clone(), stop.clone()));
    }
    wait_connected(&devices, "every device connects").await;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for (_, d) in &devices {
        *per_node.entry(d.node.lock().unwrap().clone()).or_default() += 1;
    }
    assert_eq!(per_node.len(), 3, "devices on every node: {per_node:?}");
    let pids_before = cluster.node_pids();
    wait_for(
        "every device has its place",
        Duration::from_secs(10),
        || {
            devices
                .iter()
                .all(|(_, d)| d.position.load(Ordering::SeqCst) > 0)
        },
    )
    .await;
    let places_before = places(gw, &devices).await;
    let mut sorted: Vec<u64> = places_before.values().copied().collect();
    sorted.sort();
    assert_eq!(
        sorted,
        (1..=DEVICES as u64).collect::<Vec<_>>(),
        "one place each"
    );

    let sampler_stop = CancellationToken::new();
    let sampler = tokio::spawn(sample_ready(cluster.nodes.clone(), sampler_stop.clone()));
    let started = Instant::now();
    let (code, out, err) = run(
        cluster.command("pm2-equivalent-systemd/rolling-restart", &["--local"]),
        Duration::from_secs(180),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(
        code,
        0,
        "rolling-restart failed:\n{out}\n{err}\n{}",
        cluster.log_tails()
    );
    eprintln!("rolling-restart took {took:?}:\n{err}");

    wait_connected(
        &devices,
        "every device is connected again after the rolling restart",
    )
    .await;
    sampler_stop.cancel();
    let samples = sampler.await.unwrap();
    eprintln!(
        "ready samples: {} taken, at most {} node(s) not ready at once, nodes seen not ready: {:?}",
        samples.samples, samples.max_not_ready, samples.seen_not_ready
    );
    assert!(
        samples.violations.is_empty(),
        "two or more nodes were not ready at once: {:?}",
        samples.violations
    );
    assert!(samples.samples >= 20, "{samples:?}");
    // The sampler really watches restarts (it caught at least one node
    // down). A node can be down for less than the 100 ms sampling period,
    // so not every restart is caught; the PID check below proves every node
    // did restart.
    assert!(
        !samples.seen_not_ready.is_empty(),
        "the sampler saw no restart at all: {samples:?}"
    );

    // Every node is a new process, recorded where down will find it.
    let pids_after = cluster.node_pids();
    assert_eq!(pids_before.len(), 3);
    for (addr, pid) in &pids_before {
        let new = pids_after.get(addr).expect("node still recorded");
        assert_ne!(pid, new, "{addr} was restarted");
    }
    let (code, out, err) = run(
        cluster.command("deploy/local/status", &[]),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(code, 0, "status after the restart:\n{out}\n{err}");

    let mut after: BTreeMap<String, usize> = BTreeMap::new();
    for (_, d) in &devices {
        *after.entry(d.node.lock().unwrap().clone()).or_default() += 1;
    }
    eprintln!("devices per node before {per_node:?}, after {after:?}");

    // Every device was told to reconnect at least once (all nodes drained)
    // and came back through the gateway.
    for (id, d) in &devices {
        assert!(
            d.told_to_reconnect.load(Ordering::SeqCst) >= 1,
            "{id} was never told to reconnect (welcomes: {})",
            d.welcomes.load(Ordering::SeqCst)
        );
    }
    let mut open_total = 0.0;
    for addr in &cluster.nodes {
        open_total += TestNode::external(*addr)
            .metric("pace_connections_open")
            .await;
    }
    assert_eq!(open_total, DEVICES as f64, "one connection per device");

    // Zero lost places: every device holds exactly the place it had.
    assert_eq!(
        places(gw, &devices).await,
        places_before,
        "queue places changed across the restart"
    );
    let (_, stats) = http(
        gw,
        "GET",
        "/api/v1/rooms/roll/stats",
        &[("authorization", &format!("Bearer {KEY}"))],
        "",
    )
    .await
    .unwrap();
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(
        (stats["waiting"].as_u64(), stats["abandoned_total"].as_u64()),
        (Some(DEVICES as u64), Some(0)),
        "{stats}"
    );

    // And every one of them receives a broadcast sent through the gateway.
    let (status, body) = TestNode::external(gw)
        .notify(json!({"scope": "all", "event": "final"}))
        .await;
    assert_eq!(status, 202, "{body}");
    wait_for(
        "every device receives the final broadcast",
        Duration::from_secs(10),
        || {
            devices
                .iter()
                .all(|(_, d)| d.got_final.load(Ordering::SeqCst))
        },
    )
    .await;

    stop.cancel();
    while tasks.join_next().await.is_some() {}
}
