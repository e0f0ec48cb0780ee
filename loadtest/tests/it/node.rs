//! Starts and stops a real `pace-node` for one test.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The service key the test nodes accept.
pub const SERVICE_KEY: &str = "loadtest-it-service-key";

/// Where the `pace-node` binary is, or a panic explaining how to build it.
pub fn node_binary() -> PathBuf {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("PACE_NODE_BIN") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(dir) = PathBuf::from(env!("CARGO_BIN_EXE_pace-loadtest")).parent() {
        candidates.push(dir.join("pace-node"));
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
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
             `cargo build -p pace-node` (same target dir), or run `cargo test --workspace`, \
             or set PACE_NODE_BIN=/path/to/pace-node"
            )
        })
}

/// A running node, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Node {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Node {
    /// Starts a node on a free loopback port and waits for `/ready`.
    pub fn start(max_connections: u32) -> Node {
        Node::start_with(max_connections, &[])
    }

    /// [`Node::start`] with extra `serve` flags.
    pub fn start_with(max_connections: u32, extra: &[&str]) -> Node {
        Node::launch(max_connections, extra, true)
    }

    /// [`Node::start`], but the node requires device tokens (no
    /// `--insecure-anonymous-devices`): devices must register first.
    pub fn start_requiring_tokens(max_connections: u32) -> Node {
        Node::launch(max_connections, &[], false)
    }

    fn launch(max_connections: u32, extra: &[&str], anonymous: bool) -> Node {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
            l.local_addr().expect("local addr").port()
        };
        let mut command = Command::new(node_binary());
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--service-key", SERVICE_KEY])
            .args(["--max-connections", &max_connections.to_string()])
            .args(extra)
            .env("RUST_LOG", "warn")
            .env("PACE_LOG", "warn");
        if anonymous {
            // Load-test devices connect without device tokens.
            command.env("PACE_INSECURE_ANONYMOUS_DEVICES", "true");
        } else {
            command.env_remove("PACE_INSECURE_ANONYMOUS_DEVICES");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start pace-node");
        let node = Node {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        node.wait_ready(Duration::from_secs(15));
        node
    }

    /// The node's PID, for `--node-pid`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_ready(&self, timeout: Duration) {
        let started = Instant::now();
        let addr = self.base.trim_start_matches("http://").to_owned();
        loop {
            if ready(&addr) {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "pace-node at {} not ready after {timeout:?}",
                self.base
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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

impl Node {
    /// Whether the node process has exited (it is then reaped).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Already gone (and reaped): its PID may belong to someone else now.
        if self.exited() {
            return;
        }
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
