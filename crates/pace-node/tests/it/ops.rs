//! Operations, end to end, with the real tools:
//!
//! - `pm2-equivalent-systemd/rolling-restart --local` restarts the nodes of
//!   a `deploy/local/up` cluster one at a time while 60 devices, which
//!   reconnect through HAProxy when told to (1012), stay connected: every
//!   device comes back and receives a final broadcast, and a sampler that
//!   asks every node's `/ready` every 100 ms never sees two nodes not ready
//!   at once. (Queue places are checked here once the waiting room lands:
//!   each waiting device must keep its place across the restart.)
//! - the same script in systemd mode, against a fake `systemctl` and a fake
//!   Kong admin API: it refuses to start while a node is down, and stops at
//!   the first node that does not come back, touching no other;
//! - scaling out behind HAProxy (new config, `haproxy -sf` reload) moves
//!   devices only to the new node, and `pace-node gateway plan` says nearly
//!   the same of Kong's ring (the two rings differ: see the test);
//! - `deploy/prometheus`: `promtool` accepts the config and the rules, the
//!   rules' unit tests pass, and a real Prometheus scrapes a real node and
//!   loads the rules;
//! - `deploy/grafana/pace-dashboard.json` and the alert rules name only
//!   metrics a node exports (or that are explicitly listed as coming, or
//!   as labelled metrics that appear with their first sample).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_pace-node");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `n` consecutive free loopback ports (the local cluster's node ports are
/// consecutive), below the kernel's ephemeral range so that the ports other
/// tests bind with `:0` never collide with them.
fn free_port_block(n: u16) -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() as u64).wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
    for attempt in 0..500u64 {
        let slot = NEXT.fetch_add(1, Ordering::Relaxed) as u64;
        let base = 20_000 + ((seed + attempt * 7_919 + slot * 64) % 12_000) as u16;
        if (base..base + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
    panic!("no block of {n} free ports between 20000 and 32000");
}

/// Runs a command with a time limit; returns (exit code, stdout, stderr).
async fn run(mut cmd: tokio::process::Command, limit: Duration) -> (i32, String, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} did not finish within {limit:?}"))
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits (bounded) until `f` is true; panics with `what` otherwise.
async fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "{what} (waited {limit:?})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn is_ready(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), http(addr, "GET", "/ready", &[], "")).await,
        Ok(Ok((200, _)))
    )
}

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

/// Opens a WebSocket through `gateway` as `id`; returns it and the node
/// named in the welcome.
async fn open(gateway: SocketAddr, id: &str) -> Result<(Ws, String), String> {
    let mut req = format!("ws://{gateway}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("x-device-id", http::HeaderValue::from_str(id).unwrap());
    let (mut ws, _) = tokio::time::timeout(SOON, tokio_tungstenite::connect_async(req))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    loop {
        match tokio::time::timeout(SOON, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                if v["type"] == "welcome" {
                    let node = v["node_id"].as_str().unwrap_or_default().to_owned();
                    return Ok((ws, node));
                }
                return Err(format!("expected welcome, got {t}"));
            }
            Ok(Some(Ok(_))) => continue,
            other => return Err(format!("no welcome: {other:?}")),
        }
    }
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

// --- systemd mode against a fake systemctl and a fake Kong -----------------

/// A `systemctl` stand-in: logs its arguments; `show` lists the instances
/// of `$FAKE_UNITS`; `restart` of the instance on `$FAKE_KILL_PORT`
/// SIGKILLs `$FAKE_KILL_PID` (a node this test started) and still succeeds,
/// as a unit whose process dies right after READY=1 would; `restart` of
/// `$FAKE_FAIL_PORT` fails.
const FAKE_SYSTEMCTL: &str = r#"#!/bin/sh
echo "$*" >>"$FAKE_SYSTEMCTL_LOG"
case "$1" in
  show) echo "$FAKE_UNITS" ;;
  is-active) [ "$2" = "--quiet" ] || echo active ;;
  status) echo "* $2 - fake unit"; exit 3 ;;
  restart)
    if [ "$2" = "pace-node@$FAKE_FAIL_PORT.service" ]; then
      echo "Job for $2 failed because the control process exited with error code." >&2
      exit 1
    fi
    if [ "$2" = "pace-node@$FAKE_KILL_PORT.service" ]; then kill -KILL "$FAKE_KILL_PID"; fi
    ;;
esac
exit 0
"#;

/// A Kong admin API stand-in answering `GET /upstreams/pace-nodes/health`
/// with the targets in `health` (target → HEALTHY/UNHEALTHY).
async fn fake_kong(
    health: Arc<Mutex<BTreeMap<String, String>>>,
) -> (SocketAddr, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = tokio::select! {
                () = token.cancelled() => return,
                r = listener.accept() => match r { Ok(p) => p, Err(_) => continue },
            };
            let health = health.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = match tokio::time::timeout(SOON, sock.read(&mut buf)).await {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let req = String::from_utf8_lossy(&buf[..n]);
                let (status, body) = if req.starts_with("GET /upstreams/pace-nodes/health ") {
                    let data: Vec<Value> = health
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|(t, h)| {
                            json!({"id": "x", "health": h, "target": t, "weight": 100,
                                   "upstream": {"id": "u"},
                                   "data": {"addresses": [{"health": h, "port": 1, "ip": "127.0.0.1"}]}})
                        })
                        .collect();
                    (
                        "200 OK",
                        json!({"data": data, "next": null, "node_id": "kong-1"}).to_string(),
                    )
                } else {
                    ("404 Not Found", json!({"message": "Not found"}).to_string())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (addr, stop)
}

struct FakeSystemd {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl FakeSystemd {
    fn new(units: &str) -> FakeSystemd {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let path = bin.join("systemctl");
        std::fs::write(&path, FAKE_SYSTEMCTL).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let env = vec![
            (
                "PATH".to_owned(),
                format!(
                    "{}:{}",
                    bin.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            ),
            (
                "FAKE_SYSTEMCTL_LOG".to_owned(),
                dir.path().join("calls").display().to_string(),
            ),
            ("FAKE_UNITS".to_owned(), units.to_owned()),
            ("FAKE_KILL_PORT".to_owned(), "0".to_owned()),
            ("FAKE_KILL_PID".to_owned(), "0".to_owned()),
            ("FAKE_FAIL_PORT".to_owned(), "0".to_owned()),
        ];
        FakeSystemd { dir, env }
    }

    fn set(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd =
            tokio::process::Command::new(repo().join("pm2-equivalent-systemd/rolling-restart"));
        cmd.args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("PACE_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// The `systemctl restart` calls so far, and clears the log.
    fn take_restarts(&self) -> Vec<String> {
        let path = self.dir.path().join("calls");
        let calls = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        calls
            .lines()
            .filter(|l| l.starts_with("restart "))
            .map(|l| l.trim_start_matches("restart ").to_owned())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_systemd_refuses_with_a_node_down_and_stops_at_the_first_failure() {
    let nodes: Vec<NodeProcess> = (0..3).map(|_| NodeProcess::spawn(&[])).collect();
    for n in &nodes {
        TestNode::external(n.addr).wait_ready().await;
    }
    let ports: Vec<String> = nodes.iter().map(|n| n.addr.port().to_string()).collect();
    let unit = |p: &String| format!("pace-node@{p}.service");
    let list = ports.join(",");
    let mut sd = FakeSystemd::new(&format!(
        "network-online.target {} {} {}",
        unit(&ports[2]),
        unit(&ports[0]),
        unit(&ports[1])
    ));

    // Which instances: pace.target's Wants=, in port order.
    let (code, out, err) = run(sd.command(&["--no-gateway", "--dry-run"]), SOON).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let mut sorted = ports.clone();
    sorted.sort_by_key(|p| p.parse::<u16>().unwrap());
    let want: Vec<String> = sorted
        .iter()
        .map(|p| format!("systemctl restart {}", unit(p)))
        .collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), want, "{err}");

    // Usage errors exit 2 and say what is missing.
    let (code, _, err) = run(sd.command(&["--instances", &list]), SOON).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--haproxy-stats"), "{err}");
    let (code, _, err) = run(sd.command(&["--instances", "80x1", "--no-gateway"]), SOON).await;
    assert_eq!(code, 2, "{err}");

    // All well: every node restarted, in the order given.
    let (code, out, err) = run(
        sd.command(&["--instances", &list, "--no-gateway", "--ready-timeout", "5"]),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        sd.take_restarts(),
        ports.iter().map(unit).collect::<Vec<_>>()
    );

    // A node already down (nothing listens on `dead`): nothing is touched.
    let dead = free_port().to_string();
    let with_dead = format!("{},{dead},{}", ports[0], ports[2]);
    let (code, _, err) = run(
        sd.command(&[
            "--instances",
            &with_dead,
            "--no-gateway",
            "--gateway-timeout",
            "1",
        ]),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("refusing to take node {} down", ports[0])),
        "{err}"
    );
    assert!(err.contains(&format!("node {dead}: GET")), "{err}");
    assert_eq!(sd.take_restarts(), Vec::<String>::new(), "{err}");

    // systemctl fails for the second node: stop there, third untouched.
    sd.set("FAKE_FAIL_PORT", &ports[1]);
    let (code, _, err) = run(
        sd.command(&["--instances", &list, "--no-gateway"]),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("node {} did not come back", ports[1])),
        "{err}"
    );
    assert!(err.contains("1 of 3 restarted"), "{err}");
    assert_eq!(
        sd.take_restarts(),
        vec![unit(&ports[0]), unit(&ports[1])],
        "{err}"
    );
    sd.set("FAKE_FAIL_PORT", "0");

    // Kong (fake admin API): targets found by port, healthy → all restarted;
    // one target unhealthy → refuses before touching anything.
    let health = Arc::new(Mutex::new(
        ports
            .iter()
            .map(|p| (format!("127.0.0.1:{p}"), "HEALTHY".to_owned()))
            .collect::<BTreeMap<_, _>>(),
    ));
    let (kong, kong_stop) = fake_kong(health.clone()).await;
    let kong_url = format!("http://{kong}");
    let (code, _, err) = run(
        sd.command(&[
            "--instances",
            &list,
            "--kong-admin",
            &kong_url,
            "--settle",
            "0",
        ]),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("kong#0 HEALTHY"), "{err}");
    assert_eq!(sd.take_restarts().len(), 3, "{err}");
    // A target of another host (same port) is unhealthy: that is a node
    // down too, so nothing is restarted. Names are now ambiguous by port.
    health
        .lock()
        .unwrap()
        .insert(format!("10.9.9.9:{}", ports[0]), "UNHEALTHY".to_owned());
    let (code, _, err) = run(
        sd.command(&["--instances", &list, "--kong-admin", &kong_url]),
        SOON,
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("pass --gateway-host"), "{err}");
    let (code, _, err) = run(
        sd.command(&[
            "--instances",
            &list,
            "--kong-admin",
            &kong_url,
            "--gateway-host",
            "127.0.0.1",
            "--gateway-timeout",
            "1",
        ]),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("10.9.9.9:{}: UNHEALTHY", ports[0])),
        "{err}"
    );
    assert_eq!(sd.take_restarts(), Vec::<String>::new(), "{err}");
    kong_stop.cancel();

    // The second node "restarts" but its process dies (SIGKILL by the fake
    // systemctl): /ready never answers, the script stops after the ready
    // timeout, and the third node is never touched.
    sd.set("FAKE_KILL_PORT", &ports[1]);
    sd.set("FAKE_KILL_PID", &nodes[1].child.id().to_string());
    let started = Instant::now();
    let (code, _, err) = run(
        sd.command(&["--instances", &list, "--no-gateway", "--ready-timeout", "3"]),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("node {} is not ready", ports[1])),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(30), "bounded wait");
    assert_eq!(
        sd.take_restarts(),
        vec![unit(&ports[0]), unit(&ports[1])],
        "{err}"
    );
    assert!(is_ready(nodes[0].addr).await && is_ready(nodes[2].addr).await);
}

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

// --- Prometheus ---------------------------------------------------------------

fn promtool() -> tokio::process::Command {
    let bin = ["promtool", "/usr/bin/promtool"]
        .into_iter()
        .find(|p| {
            std::process::Command::new(p)
                .arg("--version")
                .output()
                .is_ok()
        })
        .expect("promtool not found; install it with deploy/install-deps prometheus");
    tokio::process::Command::new(bin)
}

/// Every `expr:` of alerts.yml (single-line, or a `|` block), with the
/// alert it belongs to.
fn alert_exprs() -> Vec<(String, String)> {
    let text = read("deploy/prometheus/alerts.yml");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut alert = String::new();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim_start();
        if let Some(a) = t.strip_prefix("- alert: ") {
            alert = a.trim().to_owned();
        } else if let Some(e) = t.strip_prefix("expr: ") {
            if e.trim() == "|" {
                let indent = lines[i].len() - t.len();
                let mut block = Vec::new();
                while i + 1 < lines.len() {
                    let next = lines[i + 1];
                    let ni = next.len() - next.trim_start().len();
                    if next.trim().is_empty() || ni > indent {
                        block.push(next.trim());
                        i += 1;
                    } else {
                        break;
                    }
                }
                out.push((alert.clone(), block.join(" ")));
            } else {
                out.push((alert.clone(), e.trim().to_owned()));
            }
        }
        i += 1;
    }
    out
}

/// GitHub's anchor for a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[tokio::test]
async fn promtool_accepts_the_config_the_rules_and_the_rules_unit_tests() {
    let dir = repo().join("deploy/prometheus");
    for args in [
        vec!["check", "config", "prometheus.yml"],
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        let mut cmd = promtool();
        cmd.args(&args).current_dir(&dir);
        let (code, out, err) = run(cmd, Duration::from_secs(60)).await;
        assert_eq!(code, 0, "promtool {args:?}:\n{out}\n{err}");
    }

    // Every alert: a severity, a summary, a description, and a runbook link
    // to a section that exists in docs/operations.md.
    let text = read("deploy/prometheus/alerts.yml");
    let anchors: HashSet<String> = read("docs/operations.md")
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();
    let blocks: Vec<&str> = text.split("- alert: ").skip(1).collect();
    assert!(blocks.len() >= 9, "alerts: {}", blocks.len());
    for block in blocks {
        let name = block.lines().next().unwrap().trim();
        assert!(
            block.contains("severity: critical") || block.contains("severity: warning"),
            "{name}: severity"
        );
        for key in ["summary: ", "description: ", "runbook_url: "] {
            assert!(block.contains(key), "{name}: {key}");
        }
        let url = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("runbook_url: "))
            .unwrap()
            .trim_matches('"');
        let (page, frag) = url.split_once('#').expect("runbook_url has an anchor");
        assert!(page.ends_with("docs/operations.md"), "{name}: {url}");
        assert!(
            anchors.contains(frag),
            "{name}: no section #{frag} in docs/operations.md"
        );
    }
    // The alerts the operations issue asks for.
    for (alert, must) in [
        ("PaceNodeDown", "up{"),
        ("PaceNodeNotReady", "pace_ready"),
        ("PaceStoreDown", "pace_store_up"),
        ("PaceBusDropped", "increase(pace_bus_dropped_total"),
        ("PaceSlowConsumerDisconnects", "reason=\"slow_consumer\""),
        ("PaceRoomStalled", "pace_room_admitted_total"),
        ("PaceTokenSignErrors", "pace_token_sign_errors_total"),
    ] {
        assert!(
            alert_exprs()
                .iter()
                .any(|(a, e)| a == alert && e.contains(must)),
            "{alert} uses {must}"
        );
    }

    // The dashboard's queries parse, as recording rules promtool checks.
    let tmp = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in dashboard_exprs().iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&concrete(expr)).unwrap()
        ));
    }
    let path = tmp.path().join("dashboard-rules.yml");
    std::fs::write(&path, rules).unwrap();
    let mut cmd = promtool();
    cmd.arg("check").arg("rules").arg(&path);
    let (code, out, err) = run(cmd, Duration::from_secs(60)).await;
    assert_eq!(code, 0, "dashboard queries:\n{out}\n{err}");
}

/// A Prometheus process this test started; killed by PID on drop.
struct PrometheusProcess(std::process::Child);

impl Drop for PrometheusProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn prom_query(addr: SocketAddr, query: &str) -> Value {
    let q = form_urlencoded::Serializer::new(String::new())
        .append_pair("query", query)
        .finish();
    match http(addr, "GET", &format!("/api/v1/query?{q}"), &[], "").await {
        Ok((_, body)) => serde_json::from_str(&body).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// The single value of an instant query's answer, if any.
fn single_value(answer: &Value) -> Option<String> {
    answer["data"]["result"][0]["value"][1]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_a_node_and_loads_the_rules() {
    let node = NodeProcess::spawn(&[]);
    let handle = TestNode::external(node.addr);
    handle.wait_ready().await;
    let (_device, _) = handle.connect("watched").await;

    let dir = tempfile::tempdir().unwrap();
    let rules = repo().join("deploy/prometheus/alerts.yml");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {}\n\
         scrape_configs:\n  - job_name: pace\n    static_configs:\n      - targets: ['{}']\n        labels:\n          cluster: test\n",
        rules.display(),
        node.addr
    );
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let port = free_port();
    let web = SocketAddr::from(([127, 0, 0, 1], port));
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let bin = ["prometheus", "/usr/bin/prometheus"]
        .into_iter()
        .find(|p| {
            std::process::Command::new(p)
                .arg("--version")
                .output()
                .is_ok()
        })
        .expect("prometheus not found; install it with deploy/install-deps prometheus");
    let mut prom = PrometheusProcess(
        std::process::Command::new(bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let prom_log =
        || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = prom.0.try_wait().unwrap() {
            panic!("prometheus exited ({status}):\n{}", prom_log());
        }
        let up = prom_query(web, r#"up{job="pace"}"#).await;
        let open = prom_query(web, "pace_connections_open").await;
        if single_value(&up).as_deref() == Some("1") && single_value(&open).as_deref() == Some("1")
        {
            assert_eq!(
                open["data"]["result"][0]["metric"]["cluster"], "test",
                "{open}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no up == 1 and pace_connections_open == 1 within 20 s: up {up}, open {open}\n{}",
            prom_log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The rules loaded, and every dashboard query runs against real data.
    let (status, body) = http(web, "GET", "/api/v1/rules", &[], "").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let loaded: Vec<&Value> = v["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(loaded.len(), alert_exprs().len(), "{body}");
    for r in &loaded {
        assert_ne!(r["health"], "err", "{r}");
    }
    for (title, expr) in dashboard_exprs() {
        let answer = prom_query(web, &concrete(&expr)).await;
        assert_eq!(answer["status"], "success", "{title}: {expr}: {answer}");
    }
    // A healthy node fires nothing. (An alert may be pending for a moment
    // — e.g. readiness scraped as 0 while a loaded machine starts the node
    // — but pending is not firing: its `for` is what keeps it quiet.)
    let (_, body) = http(web, "GET", "/api/v1/alerts", &[], "").await.unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    let firing: Vec<&Value> = v["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["state"] != "pending")
        .collect();
    assert!(firing.is_empty(), "{body}");
}

// --- Grafana ------------------------------------------------------------------

/// Metrics the dashboard may use before nodes export them (none now).
/// Panels reading them must say so.
const COMING: &[&str] = &[];

/// Labelled metrics a node defines but shows in /metrics only once a label
/// value has a sample (a room exists, a token was refused). Each must be
/// declared in `src/metrics.rs`, so a typo here fails too.
const ON_FIRST_SAMPLE: &[&str] = &[
    "pace_room_waiting",
    "pace_room_active",
    "pace_room_admitted_total",
    "pace_tokens_rejected_total",
    "pace_room_wait_seconds_bucket",
    "pace_room_wait_seconds_sum",
    "pace_room_wait_seconds_count",
    "pace_audit_seals_total",
];

/// Series Prometheus itself adds to every target.
const BUILTIN: &[&str] = &["up", "scrape_duration_seconds", "scrape_samples_scraped"];

fn dashboard() -> Value {
    serde_json::from_str(&read("deploy/grafana/pace-dashboard.json")).expect("dashboard JSON")
}

/// Every panel query of the dashboard, with its panel title.
fn dashboard_exprs() -> Vec<(String, String)> {
    let d = dashboard();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                p["title"].as_str().unwrap().to_owned(),
                t["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

/// A dashboard query with Grafana's variables filled in.
fn concrete(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$cluster", ".*")
        .replace("$instance", ".*")
}

/// The metric names a PromQL expression reads: identifiers that are not
/// functions, keywords, label names (in `{}` or grouping lists), durations
/// or numbers.
fn metric_names(expr: &str) -> Vec<String> {
    // Drop strings, label matchers and range/subquery brackets.
    let mut cleaned = String::new();
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    let mut in_str: Option<char> = None;
    for c in expr.chars() {
        if let Some(q) = in_str {
            if c == q {
                in_str = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => in_str = Some(c),
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            _ if depth_brace > 0 || depth_bracket > 0 => {}
            _ => cleaned.push(c),
        }
    }
    // Tokens: identifiers (with Grafana's $variables), numbers, punctuation.
    let chars: Vec<char> = cleaned.chars().collect();
    let mut tokens: Vec<String> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' || c == '$' {
            let start = i;
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        } else if c.is_ascii_digit() || c == '.' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            tokens.push(format!("#{}", chars[start..i].iter().collect::<String>()));
        } else {
            if !c.is_whitespace() {
                tokens.push(c.to_string());
            }
            i += 1;
        }
    }
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];
    // Aggregations may be followed by `by (...)` rather than `(`.
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    let mut names = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        let next = tokens.get(i + 1).map(String::as_str);
        if GROUPING.contains(&t.as_str()) && next == Some("(") {
            // Skip the label list.
            while i < tokens.len() && tokens[i] != ")" {
                i += 1;
            }
        } else if t.starts_with('#') || t.starts_with('$') || next == Some("(") {
            // A number, a Grafana variable, a function or aggregation.
        } else if t
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && !KEYWORDS.contains(&t.to_lowercase().as_str())
            && !AGGREGATIONS.contains(&t.as_str())
        {
            names.push(t.clone());
        }
        i += 1;
    }
    names
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        metric_names(
            r#"sum by (reason) (rate(pace_disconnects_total{job="pace", reason=~"a|b"}[5m]))"#
        ),
        vec!["pace_disconnects_total"]
    );
    assert_eq!(
        metric_names(
            "max by (cluster, room) (pace_room_waiting) > 0 unless on (cluster, room) sum(increase(pace_room_admitted_total[10m])) > 0"
        ),
        vec!["pace_room_waiting", "pace_room_admitted_total"]
    );
    assert_eq!(
        metric_names(
            "process_resident_memory_bytes / clamp_min(pace_connections_open, 1) > 1300 * 1024"
        ),
        vec!["process_resident_memory_bytes", "pace_connections_open"]
    );
    assert_eq!(
        metric_names(
            "histogram_quantile(0.9, sum by (le) (rate(x_bucket[$__rate_interval]))) * 60"
        ),
        vec!["x_bucket"]
    );
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_use_only_metrics_a_node_exports() {
    // A node with every labelled metric exercised once.
    let node = TestNode::start().await;
    let (mut dev, _) = node.connect("metrics-dev").await;
    let refused = node.try_connect("/ws", &[]).await;
    assert!(
        refused.is_err(),
        "a handshake without a device id is refused"
    );
    send_text(&mut dev, "not json").await;
    let (status, _) = node.notify(json!({"scope": "all", "event": "hello"})).await;
    assert_eq!(status, 202);
    let _ = dev.close(None).await;
    drop(dev);
    node.wait_metric("pace_connections_open", 0.0).await;

    let text = node.metrics().await;
    let mut exported: BTreeSet<String> = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        exported.insert(line[..end].to_owned());
    }
    for want in [
        "pace_connections_open",
        "pace_handshakes_refused_total",
        "pace_disconnects_total",
        "pace_messages_delivered_total",
        "pace_notify_requests_total",
        "pace_frames_rejected_total",
        "pace_store_up",
        "pace_ready",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(exported.contains(want), "{want} not in /metrics:\n{text}");
    }
    let source = read("crates/pace-node/src/metrics.rs");
    for name in ON_FIRST_SAMPLE {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        assert!(
            source.contains(&format!("\"{family}\"")),
            "{name} is not defined in src/metrics.rs"
        );
    }
    let known = |name: &str| {
        exported.contains(name)
            || COMING.contains(&name)
            || ON_FIRST_SAMPLE.contains(&name)
            || BUILTIN.contains(&name)
    };

    // The dashboard: valid, and every query names known metrics only.
    let d = dashboard();
    assert_eq!(d["schemaVersion"], 39);
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let panels = d["panels"].as_array().unwrap();
    let mut ids = HashSet::new();
    let mut unknown = Vec::new();
    let mut coming_used = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate panel id {p}"
        );
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{}: wider than the grid",
            p["title"]
        );
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}: no query", p["title"]);
        let mut uses_coming = false;
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{}: {expr} reads no metric", p["title"]);
            for n in names {
                if !known(&n) {
                    unknown.push(format!("{}: {n} in {expr}", p["title"]));
                }
                if COMING.contains(&n.as_str()) && !exported.contains(&n) {
                    uses_coming = true;
                    coming_used.insert(n);
                }
            }
        }
        if uses_coming {
            assert!(
                p["description"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("Coming with the waiting room"),
                "{}: uses a metric nodes do not export yet, say so in its description",
                p["title"]
            );
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|s| s.rsplit_once(','))
                .map(|(m, _)| m)
                .unwrap_or(q);
            for n in metric_names(inner) {
                if !known(&n) {
                    unknown.push(format!("variable {}: {n}", v["name"]));
                }
            }
        }
    }

    // The alert rules too.
    for (alert, expr) in alert_exprs() {
        for n in metric_names(&expr) {
            if !known(&n) {
                unknown.push(format!("alert {alert}: {n} in {expr}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "metric names neither exported by a node nor listed as coming (typos?):\n{}",
        unknown.join("\n")
    );
    // Required panels.
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for t in [
        "Connections per node",
        "Handshakes refused by reason",
        "Disconnects by reason",
        "Messages delivered",
        "Notify requests",
        "Cluster bus",
        "Memory (RSS)",
        "CPU",
        "Ready per node",
        "Waiting per room",
        "Active sessions per room",
        "Admitted per minute",
        "Wait time (quantiles)",
        "Admission token signing errors",
    ] {
        assert!(titles.contains(&t), "panel {t:?} missing");
    }
    let now_exported: Vec<&&str> = COMING.iter().filter(|n| exported.contains(**n)).collect();
    assert!(
        now_exported.is_empty(),
        "{now_exported:?} are exported now: move them out of COMING and drop \"Coming\" from their panels"
    );
    eprintln!("coming metrics in use: {coming_used:?}");
}
