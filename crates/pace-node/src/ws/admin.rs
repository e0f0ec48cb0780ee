//! `GET /admin/ws`: the admin console's live feed. The handshake carries a
//! single-use ticket (`?ticket=` from `POST /api/v1/admin/ws-ticket`;
//! browsers cannot set headers on a WebSocket) or an admin token in
//! `Authorization: Bearer` — never an admin token in the URL
//! ([`crate::auth::tickets`]); then, every second, the node sends one `telemetry` frame with the tenant's
//! rooms (configuration and stats) and the cluster's nodes:
//!
//! ```json
//! {"type":"telemetry","at_ms":1763856000000,"tenant":"acme",
//!  "rooms":[{"id":"sale","config":{…},"stats":{"waiting":…,"active":…,…}}],
//!  "total_connections":12000,"nodes":[{"node_id":…,"connections":…,"ready":true,…}]}
//! ```
//!
//! The feed ends (close 1008, `token_expired`) when the admin token
//! expires, and with 1012 when the node drains. Frames from the console
//! are ignored (pings are answered).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use pace_protocol::rest::{Telemetry, TelemetryRoom};
use pace_protocol::{CloseCode, ErrorCode};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;

use crate::accounts::AdminClaims;
use crate::admission::unix_now;
use crate::auth::Principal;
use crate::error::{ApiError, Body};
use crate::store::now_ms;
use crate::ws::Deps;

/// How often a telemetry frame goes out.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Checks the upgrade, answers 101 and starts the feed for the admin the
/// authorization step found.
pub fn upgrade<B>(
    node: &Arc<Deps>,
    tasks: &tokio_util::task::TaskTracker,
    mut req: Request<B>,
    principal: Principal,
) -> Result<http::Response<Body>, ApiError> {
    let Principal::Admin(claims) = principal else {
        return Err(ApiError::new(ErrorCode::Internal, "not an admin"));
    };
    let accept = crate::ws::handshake::upgrade_accept(&req)?;
    let accept = HeaderValue::from_str(&accept)
        .map_err(|_| ApiError::new(ErrorCode::Internal, "bad accept key"))?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let task_node = node.clone();
    tasks.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => feed(task_node, upgraded, claims).await,
            Err(e) => tracing::debug!(error = %e, "admin feed upgrade failed"),
        }
    });
    let mut resp = http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    Ok(resp)
}

/// One telemetry frame for the admin's tenant.
pub async fn telemetry(node: &Deps, claims: &AdminClaims) -> Telemetry {
    let q = &node.rooms.queue;
    let mut rooms = Vec::new();
    if let Ok(ids) = q.rooms().await {
        for id in ids {
            if q.room_owner(&id).await.ok().flatten().as_deref() != Some(claims.tenant.as_str()) {
                continue;
            }
            let Ok(Some(room)) = q.get_room(&id).await else {
                continue;
            };
            let stats = crate::rooms_api::stats_body(q.as_ref(), &id).await.ok();
            rooms.push(TelemetryRoom {
                id: room.id,
                config: room.config,
                stats,
            });
        }
    }
    let nodes = node.store.nodes().await.unwrap_or_default();
    let total: u64 = nodes.iter().map(|n| n.connections).sum();
    Telemetry {
        at_ms: now_ms(),
        tenant: claims.tenant.to_string(),
        rooms,
        total_connections: total,
        nodes,
    }
}

async fn feed(node: Arc<Deps>, upgraded: hyper::upgrade::Upgraded, claims: AdminClaims) {
    let mut ws = WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        Role::Server,
        Some(node.settings.websocket()),
    )
    .await;
    node.metrics.admin_feeds_open.inc();
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let close = loop {
        tokio::select! {
            _ = tick.tick() => {
                if node.is_draining() {
                    break Some(CloseCode::SERVICE_RESTART);
                }
                if unix_now() >= claims.exp {
                    break Some(CloseCode::POLICY_VIOLATION);
                }
                let frame = serde_json::to_string(&telemetry(&node, &claims).await).unwrap_or_default();
                let sent = tokio::time::timeout(
                    node.settings.write_timeout,
                    ws.send(Message::Text(frame.into())),
                )
                .await;
                if !matches!(sent, Ok(Ok(()))) {
                    break None;
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                Some(Ok(_)) => {}
            },
        }
    };
    if let Some(code) = close {
        let reason = if code == CloseCode::POLICY_VIOLATION {
            "token_expired"
        } else {
            code.reason()
        };
        let frame = CloseFrame {
            code: code.0.into(),
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
    }
    node.metrics.admin_feeds_open.dec();
}
