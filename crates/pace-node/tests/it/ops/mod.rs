//! Operations, end to end, with the real tools, one module per tool:
//!
//! - [`deploy`]: `pm2-equivalent-systemd/rolling-restart --local` restarts
//!   the nodes of a `deploy/local/up` cluster one at a time while 60
//!   devices, which reconnect through HAProxy when told to (1012), stay
//!   connected: every device comes back, keeps its queue place and
//!   receives a final broadcast, and a sampler that asks every node's
//!   `/ready` every 100 ms never sees two nodes not ready at once;
//! - [`systemd`]: the same script in systemd mode, against a fake
//!   `systemctl` and a fake Kong admin API: it refuses to start while a
//!   node is down, and stops at the first node that does not come back,
//!   touching no other;
//! - [`gateway`]: scaling out behind HAProxy (new config, `haproxy -sf`
//!   reload) moves devices only to the new node, and `pace-node gateway
//!   plan` says nearly the same of Kong's ring (the two rings differ: see
//!   the test);
//! - [`prometheus`]: `deploy/prometheus`: `promtool` accepts the config and
//!   the rules, the rules' unit tests pass, and a real Prometheus scrapes a
//!   real node and loads the rules; `deploy/grafana/pace-dashboard.json`
//!   and the alert rules name only metrics a node exports (or that are
//!   explicitly listed as coming, or as labelled metrics that appear with
//!   their first sample).
//!
//! The unit tests of the systemd files themselves are in `tests/it/systemd.rs`.

mod deploy;
mod gateway;
mod prometheus;
mod systemd;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
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
