//! Test support: start a node in-process, connect devices, call the HTTP API.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use pace_node::NodeConfig;
use pace_protocol::{ServerFrame, Welcome};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub const KEY: &str = "test-service-key-0123456789";

/// Generous bound for anything that should happen "soon".
pub const SOON: Duration = Duration::from_secs(5);

/// Bound for a node to become ready: a node process starting (exec, keys,
/// the store's first answer) while the rest of the suite loads the 2 CI
/// cores has been seen to need more than [`SOON`].
pub const STARTUP: Duration = Duration::from_secs(20);

pub struct TestNode {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<()>>,
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn config() -> NodeConfig {
    let mut c = NodeConfig::defaults();
    c.service_key = KEY.to_owned();
    c.service_key_generated = false;
    c.node_id = "test-node".into();
    c.limits.drain_grace = Duration::from_secs(2);
    c.store.data_dir = scratch_dir();
    // Most tests are about other things than device credentials; the
    // credential tests (devices.rs) turn this off.
    c.devices.insecure_anonymous_devices = true;
    c
}

/// `PUT /api/v1/rooms/{room}` with the service key: the status and body.
pub async fn put_room(node: &TestNode, room: &str, body: Value) -> (u16, String) {
    http(
        node.addr,
        "PUT",
        &format!("/api/v1/rooms/{room}"),
        &[("authorization", &format!("Bearer {KEY}"))],
        &body.to_string(),
    )
    .await
    .unwrap()
}

/// Reads frames until an `admitted` one, skipping queue updates.
pub async fn wait_admitted(ws: &mut Ws) -> pace_protocol::AdmittedFrame {
    loop {
        match next_frame(ws).await {
            ServerFrame::Admitted(a) => return a,
            ServerFrame::Queue(_) => continue,
            other => panic!("expected admitted, got {other:?}"),
        }
    }
}

/// A room's settings as `PUT /api/v1/rooms/{room}` takes them: an open
/// FIFO room of `capacity` sessions of 60 s, sending admitted devices to
/// `https://shop.example/in` ([`pace_protocol::room::RoomConfig::open`]),
/// changed by `edit`.
pub fn room_json(capacity: u32, edit: impl FnOnce(&mut pace_protocol::room::RoomConfig)) -> Value {
    let mut config = pace_protocol::room::RoomConfig::open(capacity, "https://shop.example/in");
    edit(&mut config);
    serde_json::to_value(config).unwrap()
}

/// A fresh directory under the system temp dir (node data: generated keys).
pub fn scratch_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pace-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A key set shared by a test cluster's nodes.
pub fn shared_keys() -> std::path::PathBuf {
    let path = scratch_dir().join("keys.json");
    let out = Command::new(env!("CARGO_BIN_EXE_pace-node"))
        .args(["keys", "generate", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

impl TestNode {
    pub async fn start() -> TestNode {
        TestNode::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut NodeConfig)) -> TestNode {
        let mut c = config();
        f(&mut c);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            pace_node::run(c, listener, token).await.unwrap();
        });
        let node = TestNode {
            addr,
            shutdown,
            task: Some(task),
        };
        node.wait_ready().await;
        node
    }

    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + STARTUP;
        loop {
            if let Ok((200, _)) = http(self.addr, "GET", "/ready", &[], "").await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node never became ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Connects `device` with the x-device-id header and reads its welcome.
    pub async fn connect(&self, device: &str) -> (Ws, Welcome) {
        self.connect_with("/ws", &[("x-device-id", device)]).await
    }

    pub async fn connect_with(
        &self,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> (Ws, Welcome) {
        let mut ws = self
            .try_connect(path_and_query, headers)
            .await
            .expect("handshake");
        match next_frame(&mut ws).await {
            ServerFrame::Welcome(w) => (ws, w),
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    pub async fn try_connect(
        &self,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Ws, WsError> {
        let mut req = format!("ws://{}{}", self.addr, path_and_query)
            .into_client_request()
            .unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        tokio::time::timeout(SOON, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect timed out")
            .map(|(ws, _)| ws)
    }

    pub async fn notify(&self, body: Value) -> (u16, Value) {
        let (status, text) = http(
            self.addr,
            "POST",
            "/api/v1/notify",
            &[
                ("authorization", &format!("Bearer {KEY}")),
                ("content-type", "application/json"),
            ],
            &body.to_string(),
        )
        .await
        .unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn metrics(&self) -> String {
        http(self.addr, "GET", "/metrics", &[], "").await.unwrap().1
    }

    /// The value of one sample (`name{labels}` exactly as rendered), 0 if absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics().await, sample)
    }

    /// Waits until `sample` reaches `want`.
    pub async fn wait_metric(&self, sample: &str, want: f64) {
        self.wait_metric_within(sample, want, SOON).await
    }

    /// Waits up to `limit` until `sample` reaches `want`.
    pub async fn wait_metric_within(&self, sample: &str, want: f64, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let got = self.metric(sample).await;
            if got == want {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                let all = self.metrics().await;
                let ours: Vec<&str> = all.lines().filter(|l| l.starts_with("pace_")).collect();
                panic!(
                    "{sample} = {got}, want {want}; metrics:\n{}",
                    ours.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// One HTTP/1.1 request on a fresh connection. Returns status and body text.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String), String> {
    http_full(addr, method, path, headers, body)
        .await
        .map(|(status, _, body)| (status, body))
}

/// [`http`], with the response headers.
pub async fn http_full(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, http::HeaderMap, String), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let resp = tokio::time::timeout(SOON, sender.send_request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    ))
}

/// The next server frame (skipping pings), or panic after [`SOON`].
pub async fn next_frame(ws: &mut Ws) -> ServerFrame {
    loop {
        let msg = tokio::time::timeout(SOON, ws.next())
            .await
            .expect("no frame within 5 s")
            .expect("stream ended")
            .expect("websocket error");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).expect("server frame JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// The next frame that is not a `queue` update (a waiting device gets one
/// whenever the line moves, at any moment).
pub async fn next_frame_but_queue(ws: &mut Ws) -> ServerFrame {
    loop {
        match next_frame(ws).await {
            ServerFrame::Queue(_) => continue,
            other => return other,
        }
    }
}

/// Whether another frame arrives within `wait`.
pub async fn frame_within(ws: &mut Ws, wait: Duration) -> Option<ServerFrame> {
    match tokio::time::timeout(wait, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => Some(serde_json::from_str(&t).unwrap()),
        _ => None,
    }
}

/// Reads until the server closes, answering its close frame as a
/// well-behaved device does; returns the close code.
pub async fn close_code(ws: &mut Ws) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + SOON;
    let mut code = None;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => panic!("no close within 5 s"),
            Ok(None) | Ok(Some(Err(_))) => return code,
            Ok(Some(Ok(Message::Close(frame)))) => code = frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

pub async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.unwrap();
}

pub fn code(c: pace_protocol::CloseCode) -> u16 {
    u16::from(WsCloseCode::from(c.0))
}

/// A pace-node process started by the test; killed on drop if still alive.
pub struct NodeProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeProcess {
    /// `pace-node serve` on a free loopback port, a scratch data dir, the
    /// test service key, and `args`.
    pub fn spawn(args: &[&str]) -> NodeProcess {
        NodeProcess::start(NodeProcess::command(args))
    }

    /// `n` nodes (`node-0`, …) over the store at `url` under `prefix`,
    /// sharing the test key file, each with `extra` flags; not yet ready.
    pub fn spawn_over(url: &str, prefix: &str, n: usize, extra: &[&str]) -> Vec<NodeProcess> {
        let keys = shared_keys().display().to_string();
        (0..n)
            .map(|i| {
                let id = format!("node-{i}");
                let mut args = vec![
                    "--redis",
                    url,
                    "--redis-prefix",
                    prefix,
                    "--node-id",
                    &id,
                    "--keys",
                    &keys,
                ];
                args.extend_from_slice(extra);
                NodeProcess::spawn(&args)
            })
            .collect()
    }

    /// The command [`NodeProcess::spawn`] runs, for callers that add to it.
    pub fn command(args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pace-node"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--service-key", KEY])
            .arg("--data-dir")
            .arg(scratch_dir())
            .args(args)
            // PACE_TEST_NODE_LOG (e.g. `pace_node::store=debug`) makes a
            // failing run's node processes tell more.
            .env(
                "PACE_LOG",
                std::env::var("PACE_TEST_NODE_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            // As in `config()`; a test that checks credentials overrides it.
            .env("PACE_INSECURE_ANONYMOUS_DEVICES", "true");
        cmd
    }

    /// Starts `cmd` and reads the listen address from its banner.
    pub fn start(mut cmd: Command) -> NodeProcess {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn pace-node");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().expect("banner").expect("banner line");
        let addr = first
            .rsplit_once("http://")
            .and_then(|(_, a)| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("no address in {first:?}"));
        // Keep draining stdout so the node never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        NodeProcess { child, addr }
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

#[path = "../../src/store/test_redis.rs"]
pub mod test_redis;
pub use test_redis::{TestRedis, TestRedisCluster};

impl TestNode {
    /// A handle on a node running in another process.
    pub fn external(addr: SocketAddr) -> TestNode {
        TestNode {
            addr,
            shutdown: CancellationToken::new(),
            task: None,
        }
    }
}

/// HAProxy processes started from configs that `pace-node gateway
/// haproxy` generates: the tests' one HAProxy launcher. Each config is
/// checked with `haproxy -c` before it runs; each process logs to a file
/// in [`Haproxy::dir`] and is killed by PID on drop.
pub struct Haproxy {
    dir: tempfile::TempDir,
    children: Vec<Child>,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Default for Haproxy {
    fn default() -> Haproxy {
        Haproxy {
            dir: tempfile::tempdir().unwrap(),
            children: Vec::new(),
        }
    }
}

impl Haproxy {
    /// Generates a config with `pace-node gateway haproxy ARGS`, checks it
    /// and starts it; with `replace`, the new process takes over from the
    /// last one (`-sf`, a reload).
    pub fn start(&mut self, args: &[String], replace: bool) {
        let out = Command::new(env!("CARGO_BIN_EXE_pace-node"))
            .args(["gateway", "haproxy"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let n = self.children.len();
        let cfg = self.dir.path().join(format!("haproxy-{n}.cfg"));
        std::fs::write(&cfg, &out.stdout).unwrap();
        let check = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run haproxy ({e}); install it with deploy/install-deps haproxy")
            });
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let log = std::fs::File::create(self.dir.path().join(format!("haproxy-{n}.log"))).unwrap();
        let mut cmd = Command::new("haproxy");
        cmd.arg("-f").arg(&cfg).arg("-db");
        if replace {
            let old = self.children.last().expect("a running haproxy").id();
            cmd.arg("-sf").arg(old.to_string());
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push(child);
    }

    /// Whether the `n`th process started (0 = the first) has exited.
    pub fn exited(&mut self, n: usize) -> bool {
        self.children[n].try_wait().unwrap().is_some()
    }

    /// Where the configs and logs are (kept until drop).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// HAProxy in front of some nodes, configured by `pace-node gateway haproxy`.
pub struct Gateway {
    pub addr: SocketAddr,
    _haproxy: Haproxy,
}

/// A loopback port that was free a moment ago (the tests' one finder).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// `n` consecutive free loopback ports (the local cluster's node ports are
/// consecutive), below the kernel's ephemeral range so that the ports other
/// tests bind with `:0` never collide with them.
pub fn free_port_block(n: u16) -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let seed = (std::process::id() as u64).wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
    for attempt in 0..500u64 {
        let slot = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as u64;
        let base = 20_000 + ((seed + attempt * 7_919 + slot * 64) % 12_000) as u16;
        if (base..base + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
    panic!("no block of {n} free ports between 20000 and 32000");
}

impl Gateway {
    pub async fn start(nodes: &[SocketAddr]) -> Gateway {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut args = vec!["--bind".to_string(), addr.to_string()];
        for n in nodes {
            args.push("--node".into());
            args.push(n.to_string());
        }
        let mut haproxy = Haproxy::default();
        haproxy.start(&args, false);
        let gw = Gateway {
            addr,
            _haproxy: haproxy,
        };
        // Ready once it routes a device to a healthy node: a handshake
        // without a device id reaches a node and is refused with 400.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok((400, _)) = http(
                addr,
                "GET",
                "/ws",
                &[
                    ("connection", "upgrade"),
                    ("upgrade", "websocket"),
                    ("sec-websocket-version", "13"),
                    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ],
                "",
            )
            .await
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "haproxy did not come up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        gw
    }

    /// The gateway as a [`TestNode`] handle (for connect and notify helpers).
    pub fn handle(&self) -> TestNode {
        TestNode::external(self.addr)
    }
}

/// Redis, N node processes over it, and HAProxy in front.
pub struct Cluster {
    pub redis: TestRedis,
    pub nodes: Vec<NodeProcess>,
    pub gateway: Gateway,
    /// The nodes' `--redis-prefix` (for `pace-node admin` on their store).
    pub prefix: String,
    /// The nodes' key file.
    pub keys: std::path::PathBuf,
}

impl Cluster {
    pub async fn start(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_on(TestRedis::start(), n, extra).await
    }

    /// A cluster over a Redis the test started.
    pub async fn start_on(redis: TestRedis, n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_full(redis, n, extra, true).await
    }

    /// A cluster whose nodes require device tokens.
    pub async fn start_secure(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_full(TestRedis::start(), n, extra, false).await
    }

    async fn start_full(redis: TestRedis, n: usize, extra: &[&str], anonymous: bool) -> Cluster {
        let prefix = format!("t{}", free_port());
        let keys_path = shared_keys();
        let keys = keys_path.display().to_string();
        let mut nodes = Vec::new();
        for i in 0..n {
            let id = format!("node-{i}");
            let mut args = vec![
                "--redis",
                &redis.url(),
                "--redis-prefix",
                &prefix,
                "--node-id",
                &id,
                "--node-ttl",
                "2s",
                "--keys",
                &keys,
            ]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
            args.extend(extra.iter().map(|s| s.to_string()));
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut cmd = NodeProcess::command(&refs);
            if !anonymous {
                cmd.env("PACE_INSECURE_ANONYMOUS_DEVICES", "false");
            }
            nodes.push(NodeProcess::start(cmd));
        }
        for node in &nodes {
            TestNode::external(node.addr).wait_ready().await;
        }
        let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
        let gateway = Gateway::start(&addrs).await;
        Cluster {
            redis,
            nodes,
            gateway,
            prefix,
            keys: keys_path,
        }
    }

    pub fn node(&self, i: usize) -> TestNode {
        TestNode::external(self.nodes[i].addr)
    }

    pub fn index_of(&self, node_id: &str) -> usize {
        node_id
            .strip_prefix("node-")
            .and_then(|s| s.parse().ok())
            .expect("node id node-<i>")
    }
}

/// A data dir with `tenants`, each with its admin `admin` (password
/// [`ADMIN_PASSWORD`]), for a node's `data_dir`.
pub fn tenants_dir(tenants: &[&str]) -> std::path::PathBuf {
    let dir = scratch_dir();
    for tenant in tenants {
        admin_cli(&dir, &["add-tenant", tenant]);
        admin_cli(&dir, &["add-user", "--tenant", tenant, "admin"]);
    }
    dir
}

/// Signs `tenant`'s `admin` in; asserts 200 and returns the admin token.
pub async fn admin_login(addr: SocketAddr, tenant: &str) -> String {
    let (status, text) = http(
        addr,
        "POST",
        "/api/v1/admin/login",
        &[("content-type", "application/json")],
        &json!({"tenant": tenant, "user": "admin", "password": ADMIN_PASSWORD}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
    serde_json::from_str::<Value>(&text).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Registers a device (`body`: the registration, `device_id` at least);
/// asserts 201 and returns its token.
pub async fn register_device(addr: SocketAddr, body: &Value) -> String {
    let (status, text) = http(
        addr,
        "POST",
        "/api/v1/devices/register",
        &[("content-type", "application/json")],
        &body.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{text}");
    serde_json::from_str::<Value>(&text).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The admin password the test accounts get.
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";

/// `pace-node admin ARGS --data-dir DIR` with [`ADMIN_PASSWORD`] on stdin
/// (for `add-user`); asserts it succeeds.
pub fn admin_cli(dir: &std::path::Path, args: &[&str]) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_pace-node"))
        .arg("admin")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env_remove("PACE_REDIS_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Commands other than add-user never read standard input and may have
    // exited already (a broken pipe here): their exit status tells.
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{ADMIN_PASSWORD}\n").as_bytes());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
}
