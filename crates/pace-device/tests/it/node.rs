//! Real processes for the tests: a `pace-node` (started, SIGKILLed and
//! restarted on the same port by its PID) and a `redis-server`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The service key the test nodes accept.
pub const SERVICE_KEY: &str = "pace-device-it-service-key";

/// Where the `pace-node` binary is, or a panic explaining how to get one.
pub fn node_binary() -> PathBuf {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("PACE_NODE_BIN") {
        candidates.push(PathBuf::from(p));
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut target_dirs: Vec<PathBuf> = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        let t = PathBuf::from(t);
        target_dirs.push(if t.is_absolute() {
            t
        } else {
            workspace.join(t)
        });
    }
    target_dirs.push(workspace.join("target"));
    for dir in target_dirs {
        candidates.push(dir.join("debug").join("pace-node"));
        candidates.push(dir.join("release").join("pace-node"));
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "pace-node binary not found (looked at {candidates:?}). Build it first with \
                 `cargo build -p pace-node` (same target dir), or set PACE_NODE_BIN=/path/to/pace-node"
            )
        })
}

/// A free loopback port (free when asked; another process may take it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// How to start a node.
#[derive(Debug, Clone, Default)]
pub struct NodeOpts {
    /// Port to listen on (a free one when absent).
    pub port: Option<u16>,
    /// Redis URL: cluster mode (needs `keys`).
    pub redis: Option<String>,
    /// Shared admission key set (cluster mode).
    pub keys: Option<PathBuf>,
    /// Node id.
    pub node_id: Option<String>,
    /// More `serve` flags.
    pub extra: Vec<String>,
    /// Require device tokens (the node's default). Off by default: the
    /// node is started with `PACE_INSECURE_ANONYMOUS_DEVICES=true`, so
    /// tests that are not about credentials connect without a token.
    pub secure: bool,
}

impl NodeOpts {
    /// Options for a node that requires device tokens.
    pub fn secure() -> NodeOpts {
        NodeOpts {
            secure: true,
            ..NodeOpts::default()
        }
    }
}

/// A running `pace-node`, stopped when dropped.
#[derive(Debug)]
pub struct Node {
    child: Option<Child>,
    opts: NodeOpts,
    /// The port, kept across restarts.
    pub port: u16,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    data_dir: tempfile::TempDir,
}

impl Node {
    /// Starts a node (embedded store) on a free port.
    pub async fn start() -> Node {
        Node::start_with(NodeOpts::default()).await
    }

    /// Starts a node as `opts` says and waits for `/ready`.
    pub async fn start_with(opts: NodeOpts) -> Node {
        tokio::task::spawn_blocking(move || {
            let port = opts.port.unwrap_or_else(free_port);
            let mut node = Node {
                child: None,
                opts,
                port,
                base: format!("http://127.0.0.1:{port}"),
                data_dir: tempfile::tempdir().expect("temp dir"),
            };
            node.spawn();
            node
        })
        .await
        .expect("start node")
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(node_binary());
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--service-key", SERVICE_KEY])
            .args(["--drain-grace", "1s", "--log", "warn"])
            .arg("--data-dir")
            .arg(self.data_dir.path());
        if self.opts.secure {
            cmd.env_remove("PACE_INSECURE_ANONYMOUS_DEVICES");
        } else {
            cmd.env("PACE_INSECURE_ANONYMOUS_DEVICES", "true");
        }
        if let Some(r) = &self.opts.redis {
            cmd.args(["--redis", r]);
        }
        if let Some(k) = &self.opts.keys {
            cmd.arg("--keys").arg(k);
        }
        if let Some(id) = &self.opts.node_id {
            cmd.args(["--node-id", id]);
        }
        cmd.args(&self.opts.extra);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start pace-node");
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(15));
    }

    /// SIGKILL by PID: the node dies without closing its connections.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            let _ = child.wait();
        }
    }

    /// Starts the node again on the same port with the same flags.
    pub async fn restart(mut self) -> Node {
        tokio::task::spawn_blocking(move || {
            self.kill();
            self.spawn();
            self
        })
        .await
        .expect("restart node")
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let started = Instant::now();
        let addr = format!("127.0.0.1:{}", self.port);
        loop {
            if ready(&addr) {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("pace-node on {addr} exited at start: {status}");
            }
            assert!(
                started.elapsed() < timeout,
                "pace-node at {addr} not ready after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `POST /api/v1/notify`; the 202 answer's JSON body.
    pub async fn notify(
        &self,
        scope: &str,
        target: Option<&str>,
        event: &str,
        data: Value,
    ) -> Value {
        let body =
            serde_json::json!({"scope": scope, "target": target, "event": event, "data": data});
        let (status, answer) = http(
            self.port,
            "POST",
            "/api/v1/notify",
            &[("authorization", &format!("Bearer {SERVICE_KEY}"))],
            &body.to_string(),
        )
        .await;
        assert_eq!(status, 202, "notify answered {status}: {answer}");
        serde_json::from_str(&answer).expect("notify answer is JSON")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// One blocking `GET /ready`, true on HTTP 200.
fn ready(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// A minimal HTTP/1.1 exchange on loopback: (status, body).
pub async fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect for HTTP");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.expect("send HTTP");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("HTTP answer in time")
        .expect("read HTTP");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .expect("HTTP status line");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // Chunked bodies: keep the JSON object between the first { and last }.
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if a <= b => body[a..=b].to_owned(),
        _ => body.to_owned(),
    };
    (status, body)
}

/// A `redis-server` on a free loopback port, without persistence.
#[derive(Debug)]
pub struct Redis {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl Redis {
    /// Starts one and waits until it answers PING.
    pub fn start() -> Redis {
        for _ in 0..10 {
            let port = free_port();
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed (apt-get install redis-server)");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken: try another
                }
                if pings(port) {
                    return Redis { child, port };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start redis-server");
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

fn pings(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A key set for a cluster's nodes (`pace-node keys generate`).
pub fn shared_keys(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("keys.json");
    let out = Command::new(node_binary())
        .args(["keys", "generate", "--out"])
        .arg(&path)
        .output()
        .expect("run pace-node keys generate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}
