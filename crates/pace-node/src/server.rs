//! The server loop: accept TCP connections, serve the HTTP layer's router
//! ([`crate::http::app`]) over HTTP/1.1 with upgrades on each, and drain
//! on shutdown.
//!
//! Drain order (SIGTERM/SIGINT, or the caller's token): mark not ready
//! (`/ready` answers 503 so the gateway moves new devices elsewhere; the
//! listener keeps answering health checks), tell systemd, close every
//! device with 1012 (reconnect), wait for their tasks under the drain
//! grace, then stop the listener and return.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use pace_protocol::CloseCode;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

pub use crate::app::ServeError;
use crate::config::NodeConfig;
use crate::node::NodeRef;
use crate::store::{NodeInfo, now_ms};
use crate::systemd;

/// Runs a node on `listener` until `shutdown` is cancelled, then drains and
/// returns. The store is Redis when `config.redis_url` is set, the embedded
/// in-memory store otherwise.
pub async fn run(
    config: NodeConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let node = build(config)?;
    serve(node, listener, shutdown).await
}

/// Builds a node from `config`, not yet started (see [`crate::app::build`]).
pub fn build(config: NodeConfig) -> Result<NodeRef, ServeError> {
    crate::app::build(config)
}

/// Runs `node` on `listener` until `shutdown` is cancelled, then drains.
pub async fn serve(
    node: NodeRef,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let addr = listener.local_addr()?;
    let stop_accepting = CancellationToken::new();
    let http_tasks = TaskTracker::new();
    let acceptor = tokio::spawn(accept_loop(
        node.clone(),
        listener,
        stop_accepting.clone(),
        http_tasks.clone(),
    ));

    // Not ready (503) until the store has been reached once.
    tokio::select! {
        () = node.store.wait_ready() => {}
        () = shutdown.cancelled() => {
            stop_accepting.cancel();
            let _ = acceptor.await;
            return Ok(());
        }
    }
    let advertise = node
        .config
        .store
        .advertise
        .clone()
        .unwrap_or_else(|| addr.to_string());
    if node.config.web.demo_room {
        crate::app::ensure_demo_room(&node, &advertise).await;
    }
    tokio::spawn(node.rooms.clone().run(stop_accepting.clone()));
    tokio::spawn(crate::audit::run(
        crate::app::sealer(&node),
        stop_accepting.clone(),
    ));
    tokio::spawn(presence(node.clone(), advertise, stop_accepting.clone()));
    node.set_started();
    systemd::ready();
    systemd::spawn_watchdog(stop_accepting.clone());
    tracing::info!(%addr, node_id = %node.config.node_id, store = node.store.kind(), "pace-node ready");

    shutdown.cancelled().await;
    drain(&node).await;

    stop_accepting.cancel();
    let _ = acceptor.await;
    http_tasks.close();
    // Idle keep-alive HTTP connections were told to finish; do not wait long.
    let _ = tokio::time::timeout(Duration::from_secs(1), http_tasks.wait()).await;
    tracing::info!("pace-node stopped");
    Ok(())
}

/// Heart-beats this node's presence into the store and keeps
/// `pace_store_up` current, until `stop`.
async fn presence(node: NodeRef, address: String, stop: CancellationToken) {
    let period = (node.config.store.node_ttl / 4).max(Duration::from_millis(250));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_up = true;
    // When the store last answered: start-up waited for it.
    let mut last_up = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let info = NodeInfo {
            node_id: node.config.node_id.clone(),
            address: address.clone(),
            connections: node.metrics.connections_open.get().max(0) as u64,
            ready: node.is_ready(),
            last_heartbeat_ms: now_ms(),
        };
        let result = node.store.heartbeat(&info).await;
        if let Ok(wiped) = node.store.wiped_since().await {
            node.metrics.store_wiped.set(i64::from(wiped.is_some()));
        }
        let health = node.store.health().await;
        let up = health.up && result.is_ok();
        node.metrics
            .store_up
            .with_label_values(&[health.kind])
            .set(i64::from(up));
        if up {
            last_up = tokio::time::Instant::now();
        }
        node.metrics
            .store_unreachable_seconds
            .set(last_up.elapsed().as_secs() as i64);
        if up != was_up {
            if up {
                tracing::info!("store reachable again");
            } else {
                tracing::warn!(error = ?result.err(), "store unreachable; devices stay connected, store operations fail until it returns");
            }
            was_up = up;
        }
    }
}

async fn drain(node: &NodeRef) {
    if !node.begin_drain() {
        return;
    }
    systemd::stopping(node.config.limits.drain_delay + node.config.limits.drain_grace);
    if !node.config.limits.drain_delay.is_zero() {
        // Not ready and refusing new devices; wait for the gateway's health
        // check to take this node out before sending devices elsewhere.
        tokio::time::sleep(node.config.limits.drain_delay).await;
    }
    let told = node.hub.close_all(CloseCode::SERVICE_RESTART);
    tracing::info!(devices = told, grace = ?node.config.limits.drain_grace, "draining: devices told to reconnect");
    node.connections.close();
    if tokio::time::timeout(node.config.limits.drain_grace, node.connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = node.connections.len(),
            "drain grace elapsed with connections still closing; exiting anyway"
        );
    }
}

/// Refused connections that may linger at once to deliver their answer
/// (each holds a descriptor for at most [`LINGER`]); past it a refused
/// connection is closed without one.
const MAX_LINGERING: usize = 64;
/// How long a refused connection lingers: its answer is written, and what
/// the client sent is read and dropped, so that closing does not reset the
/// connection before the client read the answer.
const LINGER: Duration = Duration::from_millis(500);

/// Answers a connection refused at accept without serving it: 429
/// `too_many_pending` for an address over its cap, 503 `node_full` when no
/// descriptor is left outside the reserve. At most [`MAX_LINGERING`]
/// refused connections linger at once; the rest are closed at once.
fn refuse_at_accept(
    stream: tokio::net::TcpStream,
    refused: crate::pending::Refused,
    lingering: &Arc<tokio::sync::Semaphore>,
) {
    let Ok(permit) = lingering.clone().try_acquire_owned() else {
        return;
    };
    let (status, code, message) = match refused {
        crate::pending::Refused::PerAddress => (
            "429 Too Many Requests",
            pace_protocol::ErrorCode::TooManyPending,
            "too many connections from this address are open and not yet upgraded; retry with backoff",
        ),
        crate::pending::Refused::Descriptors => (
            "503 Service Unavailable",
            pace_protocol::ErrorCode::NodeFull,
            "node is out of connections; retry with backoff",
        ),
    };
    let body =
        serde_json::to_string(&pace_protocol::ErrorBody::new(code, message)).unwrap_or_default();
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = stream;
        let _ = tokio::time::timeout(LINGER, async {
            stream.write_all(response.as_bytes()).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<(), std::io::Error>(())
        })
        .await;
        drop(permit);
    });
}

async fn accept_loop(
    node: NodeRef,
    listener: TcpListener,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(node.config.limits.handshake_timeout)
        .keep_alive(true);
    let lingering = Arc::new(tokio::sync::Semaphore::new(MAX_LINGERING));
    let app = crate::http::app(node.clone());
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => return,
            res = listener.accept() => match res {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE/ENFILE and friends: keep serving the
                    // connections we have, retry shortly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // A gateway's connections are not capped per address at accept:
        // its forwarded addresses are, in the handshake (`http::routes::devices`).
        let trusted = node
            .config
            .origins
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&peer.ip()));
        let pending = match node.sockets.admit((!trusted).then_some(peer.ip())) {
            Ok(pending) => pending,
            Err(refused) => {
                node.metrics
                    .limits_hit
                    .with_label_values(&[refused.limit()])
                    .inc();
                tracing::debug!(%peer, %refused, "connection refused at accept");
                refuse_at_accept(stream, refused, &lingering);
                continue;
            }
        };
        if pending.shed_other {
            node.metrics
                .limits_hit
                .with_label_values(&[crate::pending::Refused::Descriptors.limit()])
                .inc();
        }
        let stream = node.sockets.count(stream);
        let _ = stream.get_ref().set_nodelay(true);
        let stop = stop.clone();
        let app = app.clone();
        let shed = pending.shed.clone();
        // A device stream (`GET /stream`) releases it as an upgrade would.
        let pending = crate::pending::Release::new(pending);
        let release = pending.clone();
        // The router, with the peer address for its extractors.
        let conn = builder.serve_connection(
            TokioIo::new(stream),
            service_fn(move |mut req: http::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(release.clone());
                app.clone().call(req)
            }),
        );
        tasks.spawn(async move {
            let conn = conn.with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(%peer, error = %e, "http connection ended with an error");
                    }
                }
                () = shed.cancelled() => {
                    // Out of descriptors: the oldest connection not yet
                    // upgraded makes room for a new one.
                    tracing::debug!(%peer, "pending connection shed for a newer one");
                }
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            // Upgraded (the WebSocket owns the socket now) or closed.
            drop(pending);
        });
    }
}
