//! The device HTTP stream, for networks that refuse WebSockets:
//! `GET /stream` (Server-Sent Events, server → device) and
//! `POST /stream/send` (frames, device → server).
//!
//! `GET /stream` is the `/ws` handshake without the upgrade: the same
//! device id and token rules (header, then query), the same cheap
//! refusals (draining, starting, too many handshakes; in
//! [`super::devices::before_handshake`]), departments, origin check and
//! connection slot; then the very session a WebSocket runs, over an
//! [`crate::ws::sse::SseSocket`]. A `Last-Event-ID` holding the cursors
//! the stream's event ids carry resumes from them.
//!
//! `POST /stream/send` takes one JSON frame or an array of at most
//! [`sse::MAX_BATCH`], the body at most `--max-message-bytes`, from the
//! same device (its token), and queues them to the session of its stream
//! on this node; the answers come on the stream. A node that holds no
//! stream of the device answers 409 `stream_not_here`: the device
//! reconnects its stream (the gateway hashes both requests on the device
//! id, so they meet again on one node) and sends again.

use axum::extract::{Request, State};
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};
use pace_protocol::ErrorCode;
use serde_json::Value;

use super::devices::refused_handshake;
use crate::error::{ApiError, json_response};
use crate::http::extract::{DeviceCaller, peer};
use crate::node::NodeRef;
use crate::ws::handshake;
use crate::ws::session::{self, Accepted};
use crate::ws::sse::{self, SendError};

/// `GET /stream`: checks the rest of the handshake, answers 200
/// `text/event-stream` and runs the device's session on the stream.
pub async fn open(
    State(node): State<NodeRef>,
    DeviceCaller(device): DeviceCaller,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = req.into_parts();
    let req = http::Request::from_parts(parts, ());
    let peer = peer(req.extensions())?;
    let refuse = |e: ApiError| refused_handshake(&node, peer, e);
    let mut hs = handshake::check_stream(&req, node.config.limits.max_groups).map_err(refuse)?;
    let resume_from = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(sse::parse_event_id);
    if resume_from.is_some() {
        // The resume frame made of it is the stream's first frame.
        hs.resume = true;
    }
    let hs = handshake::grant(&node.ws, hs, &device).await;
    crate::origins::check_handshake(&node.origins, &req, &device)
        .await
        .map_err(refuse)?;
    let Some(slot) = node.take_slot() else {
        return Err(refuse(ApiError::new(
            ErrorCode::NodeFull,
            "node is at its connection limit",
        )));
    };
    // Established: like an upgraded WebSocket, the stream no longer counts
    // as a pending connection of its address, nor can it be shed.
    if let Some(release) = req.extensions().get::<crate::pending::Release>() {
        release.release();
    }
    let deps = node.ws.clone();
    let (socket, body) = sse::open(
        deps.hub.streams(),
        &device.device,
        deps.settings.sse_heartbeat,
        resume_from,
    );
    let accepted = Box::new(Accepted { hs, device });
    node.connections.spawn(async move {
        session::run(deps, socket, accepted).await;
        drop(slot);
    });
    let mut resp = Response::new(axum::body::Body::from_stream(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, no-transform"),
    );
    // nginx-based proxies: do not buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// `POST /stream/send`: queues the device's frames to its stream's
/// session; 202 `{"accepted": n}`.
pub async fn send(
    State(node): State<NodeRef>,
    DeviceCaller(device): DeviceCaller,
    req: Request,
) -> Result<Response, ApiError> {
    let count = |result: &str| node.metrics.stream_posts.with_label_values(&[result]).inc();
    let (parts, body) = req.into_parts();
    let head = http::Request::from_parts(parts, ());
    crate::origins::check_handshake(&node.origins, &head, &device)
        .await
        .inspect_err(|_| count("origin"))?;
    let value: Value =
        crate::http::body::read_json(head.headers(), body, node.config.limits.max_message_bytes)
            .await
            .inspect_err(|_| count("invalid"))?;
    let frames = match value {
        Value::Array(items) => items,
        other => vec![other],
    };
    if frames.is_empty() || frames.len() > sse::MAX_BATCH {
        count("invalid");
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "send one frame or an array of 1 to {} frames",
                sse::MAX_BATCH
            ),
        ));
    }
    let n = frames.len();
    let texts = frames.iter().map(Value::to_string).collect();
    match node.ws.hub.streams().send(&device.device, texts) {
        Ok(()) => {
            count("ok");
            Ok(json_response(
                StatusCode::ACCEPTED,
                &serde_json::json!({ "accepted": n }),
            ))
        }
        Err(e @ SendError::NotHere) => {
            count("not_here");
            Err(ApiError::new(ErrorCode::StreamNotHere, e.to_string()))
        }
        Err(e @ SendError::Full) => {
            count("full");
            Err(ApiError::new(ErrorCode::TooManyPending, e.to_string()))
        }
    }
}
