//! Scaling out behind HAProxy: only the devices that hash to the new
//! node move; `pace-node gateway plan` says the same of Kong's ring.

use super::*;

// --- scaling out behind HAProxy ---------------------------------------------

/// The arguments of `pace-node gateway haproxy` for `nodes` (in this
/// order) behind `bind`, with the stats page on `stats`.
fn haproxy_args(nodes: &[SocketAddr], bind: SocketAddr, stats: u16) -> Vec<String> {
    let mut args = Vec::new();
    for n in nodes {
        args.extend(["--node".to_owned(), n.to_string()]);
    }
    args.extend([
        "--bind".to_owned(),
        bind.to_string(),
        "--stats-bind".to_owned(),
        format!("127.0.0.1:{stats}"),
    ]);
    args
}

/// Servers HAProxy (the one on `stats`) reports UP.
async fn haproxy_up(stats: u16) -> usize {
    let addr = SocketAddr::from(([127, 0, 0, 1], stats));
    match http(addr, "GET", "/stats;csv", &[], "").await {
        Ok((200, csv)) => csv
            .lines()
            .filter(|l| {
                let f: Vec<&str> = l.split(',').collect();
                f.len() > 17 && f[0] == "pace_nodes" && f[1] != "BACKEND" && f[17] == "UP"
            })
            .count(),
        _ => 0,
    }
}

async fn wait_haproxy_up(stats: u16, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = haproxy_up(stats).await;
        if up == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "haproxy reports {up} of {n} nodes UP"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connects every id through the gateway (64 at a time); returns the open
/// sockets and the node each landed on.
async fn connect_all(gateway: SocketAddr, ids: &[String]) -> (Vec<Ws>, HashMap<String, String>) {
    let limit = Arc::new(Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for id in ids {
        let (id, limit) = (id.clone(), limit.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            let r = open(gateway, &id).await;
            (id, r)
        });
    }
    let mut socks = Vec::new();
    let mut nodes = HashMap::new();
    while let Some(r) = tasks.join_next().await {
        let (id, r) = r.unwrap();
        let (ws, node) = r.unwrap_or_else(|e| panic!("{id}: {e}"));
        socks.push(ws);
        nodes.insert(id, node);
    }
    (socks, nodes)
}

/// HAProxy's `hash-type consistent` and Kong's consistent-hashing ring are
/// different rings (different hash functions and point placement), so they
/// disagree on *which* devices move when a node is added; only the shape of
/// the movement can be compared. HAProxy is checked with real devices
/// connected through it before and after a reload: every device that moved
/// went to the new node, the others stayed, and about 1/(N+1) moved. Kong
/// is checked through `pace-node gateway plan`, an exact model of its ring
/// (there is no Kong in CI): about 1/(N+1) move, all to the new node when
/// the new target sorts after the existing ones, and all but about 1 %
/// otherwise (collision order; see the assertion).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_moves_only_devices_that_hash_to_the_new_node() {
    const DEVICES: usize = 400;
    let redis = TestRedis::start();
    let prefix = format!("scale{}", free_port());
    let keys = shared_keys().display().to_string();
    let spawn = |i: usize| {
        NodeProcess::spawn(&[
            "--keys",
            &keys,
            "--redis",
            &redis.url(),
            "--redis-prefix",
            &prefix,
            "--node-id",
            &format!("node-{i}"),
            "--node-ttl",
            "2s",
        ])
    };
    let mut nodes: Vec<NodeProcess> = (0..3).map(spawn).collect();
    for n in &nodes {
        TestNode::external(n.addr).wait_ready().await;
    }
    let three: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let gateway = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (stats3, stats4) = (free_port(), free_port());
    let mut haproxy = Haproxy::default();
    haproxy.start(&haproxy_args(&three, gateway, stats3), false);
    wait_haproxy_up(stats3, 3).await;

    let ids: Vec<String> = (0..DEVICES).map(|i| format!("scale-{i:04}")).collect();
    let (mut socks, before) = connect_all(gateway, &ids).await;
    let used: HashSet<&String> = before.values().collect();
    assert_eq!(used.len(), 3, "devices on every node");

    // The fourth node, then what Kong would do with it.
    nodes.push(spawn(3));
    let new_node = nodes[3].addr;
    TestNode::external(new_node).wait_ready().await;
    let ids_file = haproxy.dir().join("ids.txt");
    std::fs::write(&ids_file, ids.join("\n")).unwrap();
    let plan = |add: &str| -> Value {
        let mut args = vec!["gateway".to_owned(), "plan".into()];
        for n in &three {
            args.extend(["--node".to_owned(), n.to_string()]);
        }
        args.extend([
            "--add".to_owned(),
            add.to_owned(),
            "--ids".to_owned(),
            ids_file.display().to_string(),
            "--json".to_owned(),
        ]);
        let out = std::process::Command::new(BIN)
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // Kong's ring as `plan` models it: almost every moved device goes to
    // the new node. Kong places targets in name/port order and resolves
    // point collisions in that order, so a new target that sorts before
    // existing ones can also shift a few devices between old nodes (about
    // 1 %); one that sorts after all of them moves devices only to itself.
    let kong = plan(&new_node.to_string());
    let add = &kong["addition"];
    let kong_moved = add["moved"].as_u64().unwrap() as usize;
    let between = add["moved_between_existing"].as_u64().unwrap() as usize;
    assert_eq!(kong["devices"], DEVICES, "{kong}");
    assert_eq!(
        add["moved_to_added_node"].as_u64().unwrap() as usize + between,
        kong_moved,
        "{kong}"
    );
    assert!(
        between <= DEVICES / 50,
        "Kong: {between} moved between old nodes: {kong}"
    );
    let last = plan("127.0.0.2:8999");
    assert_eq!(last["addition"]["only_to_added_node"], true, "{last}");
    assert_eq!(last["addition"]["moved_between_existing"], 0, "{last}");

    // New HAProxy config with the node appended (HAProxy places servers on
    // its ring by their numeric id, i.e. their position: append, never
    // insert), reloaded the way an operator does: a new process with -sf.
    let four: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    haproxy.start(&haproxy_args(&four, gateway, stats4), true);
    wait_haproxy_up(stats4, 4).await;

    // Open WebSockets survive the reload (the old process keeps them).
    for ws in socks.iter_mut().take(20) {
        send_text(ws, r#"{"type":"ping","id":7}"#).await;
        let frame = next_frame(ws).await;
        assert_eq!(frame, pace_protocol::ServerFrame::Pong { id: Some(7) });
    }
    // Every device reconnects (as after a rolling restart or a network
    // blip); the old HAProxy exits once its last tunnel is gone.
    for mut ws in socks.drain(..) {
        let _ = ws.close(None).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !haproxy.exited(0) {
        assert!(
            Instant::now() < deadline,
            "the replaced haproxy did not exit after its connections ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_socks, after) = connect_all(gateway, &ids).await;

    let new_id = "node-3".to_string();
    let mut moved = 0;
    let mut wrong = Vec::new();
    for id in &ids {
        let (b, a) = (&before[id], &after[id]);
        if a != b {
            moved += 1;
            if *a != new_id {
                wrong.push(format!("{id}: {b} -> {a}"));
            }
        }
    }
    eprintln!(
        "scale-out 3 -> 4 nodes, {DEVICES} devices: HAProxy moved {moved} (all to the new node); \
         Kong's ring (plan) moves {kong_moved}, {between} of them between old nodes; ideal {}",
        DEVICES / 4
    );
    assert!(
        wrong.is_empty(),
        "devices moved between old nodes: {wrong:?}"
    );
    let (lo, hi) = (DEVICES / 10, DEVICES * 2 / 5);
    assert!(
        (lo..=hi).contains(&moved),
        "HAProxy moved {moved} of {DEVICES}, want about a quarter"
    );
    assert!(
        (lo..=hi).contains(&kong_moved),
        "Kong's ring moves {kong_moved} of {DEVICES}, want about a quarter"
    );
    TestNode::external(new_node)
        .wait_metric("pace_connections_open", moved as f64)
        .await;
}
