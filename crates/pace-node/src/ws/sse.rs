//! The HTTP streaming transport: a device session over Server-Sent Events
//! (server → device) and POSTs (device → server), for networks whose
//! proxies refuse the WebSocket upgrade.
//!
//! [`SseSocket`] implements the session's [`Socket`], so a stream device
//! runs the very session a WebSocket device runs ([`crate::ws::session::run`]):
//! the same frames, resume, limits, hub registration and replacement
//! (4000). What differs is only how a message travels:
//!
//! - a text frame becomes one SSE event (`data: <frame>`); a
//!   `notification` event carries `id: <cursors>`, the JSON array of the
//!   device's latest cursor per scope, so a reconnecting `EventSource`
//!   sends it back as `Last-Event-ID` and the stream resumes from it;
//! - the session's ping becomes a comment line (`: ping`) and is answered
//!   at once by the socket itself (a device cannot pong over SSE): a dead
//!   device shows as the response body being dropped by the server, which
//!   ends the session as a closed socket does;
//! - a close becomes a final `event: close` with `{"code","reason"}`, and
//!   the response ends;
//! - frames the device POSTs to `/stream/send` arrive through [`Streams`],
//!   this node's map from device to its stream's inbound queue; a POST
//!   for a device whose stream this node does not hold is refused
//!   (`stream_not_here`), which tells the device to reconnect its stream.
//!
//! The body also carries a keep-alive comment every `--sse-heartbeat`, so
//! gateways with an idle timeout (HAProxy `timeout server`, Kong's
//! `read_timeout`) never see the stream idle.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, Stream};
use pace_protocol::{ClientFrame, Cursor, DeviceId};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_util::sync::PollSender;

use crate::ws::session::Socket;

/// Frames a device may have POSTed and the session not yet read.
pub const INBOUND_QUEUE: usize = 32;
/// Most frames in one POST.
pub const MAX_BATCH: usize = 16;
/// Chunks written to the response body and not yet sent.
const BODY_QUEUE: usize = 64;
/// Most scopes an event id names (a device hears `all`, itself, its
/// groups and room channels; more is not a real device).
const MAX_CURSORS: usize = 64;
/// The reconnection delay the stream asks `EventSource` for (ms).
const RETRY_MS: u64 = 1_000;

/// Why a POSTed frame was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// This node holds no stream of the device.
    #[error("this node holds no stream of this device; reconnect the stream")]
    NotHere,
    /// The stream's inbound queue is full.
    #[error("too many frames waiting for this stream; retry shortly")]
    Full,
}

struct Inbound {
    /// Which stream of the device (a newer one replaces it).
    id: u64,
    tx: mpsc::Sender<Message>,
}

/// This node's device streams: where a POSTed frame goes.
#[derive(Default)]
pub struct Streams {
    inner: Mutex<HashMap<DeviceId, Inbound>>,
    next: AtomicU64,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams")
            .field("devices", &self.len())
            .finish()
    }
}

impl Streams {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, Inbound>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Streams open now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no stream is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A new stream of `device` (replacing the map entry of an older one;
    /// the hub closes the older session): its id and inbound queue.
    fn open(&self, device: &DeviceId) -> (u64, mpsc::Sender<Message>, mpsc::Receiver<Message>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        self.lock()
            .insert(device.clone(), Inbound { id, tx: tx.clone() });
        (id, tx, rx)
    }

    fn close(&self, device: &DeviceId, id: u64) {
        let mut inner = self.lock();
        if inner.get(device).is_some_and(|i| i.id == id) {
            inner.remove(device);
        }
    }

    /// Queues `frames` (text) to `device`'s stream session, all or none.
    pub fn send(&self, device: &DeviceId, frames: Vec<String>) -> Result<(), SendError> {
        let inner = self.lock();
        let inbound = inner.get(device).ok_or(SendError::NotHere)?;
        if inbound.tx.is_closed() {
            return Err(SendError::NotHere);
        }
        // Only this lock's holder sends: the room can only grow meanwhile.
        if inbound.tx.capacity() < frames.len() {
            return Err(SendError::Full);
        }
        for frame in frames {
            inbound
                .tx
                .try_send(Message::Text(frame.into()))
                .map_err(|_| SendError::Full)?;
        }
        Ok(())
    }
}

/// The response body of one stream: the session's events, and a
/// keep-alive comment whenever the heartbeat ticks. Ends when the session
/// drops its end.
pub struct EventBody {
    rx: mpsc::Receiver<Bytes>,
    tick: Interval,
}

impl Stream for EventBody {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(b)) => return Poll::Ready(Some(Ok(b))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        match self.tick.poll_tick(cx) {
            Poll::Ready(_) => Poll::Ready(Some(Ok(Bytes::from_static(b": keep-alive\n\n")))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl std::fmt::Debug for EventBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBody").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SseSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseSocket")
            .field("device", &self.device)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The session's side of one stream.
pub struct SseSocket {
    out: PollSender<Bytes>,
    inbound: mpsc::Receiver<Message>,
    /// Keeps the inbound queue open after a newer stream of the device
    /// took the map entry: this session then ends by the hub's close
    /// (4000), not as if the device had gone.
    _inbound_tx: mpsc::Sender<Message>,
    /// A ping was written: the next read is its pong.
    pending_pong: bool,
    /// The close event was written: reads end.
    closing: bool,
    /// Resolves when the response body was dropped (the device is gone).
    gone: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// The latest cursor per scope, for event ids.
    cursors: Vec<Cursor>,
    streams: Arc<Streams>,
    device: DeviceId,
    id: u64,
}

impl Drop for SseSocket {
    fn drop(&mut self) {
        self.streams.close(&self.device, self.id);
    }
}

/// A new stream of `device`: the session's socket and the response body.
/// `last_event_id` (from `Last-Event-ID`), when it holds cursors, becomes
/// the device's `resume` frame, read first.
pub fn open(
    streams: &Arc<Streams>,
    device: &DeviceId,
    heartbeat: Duration,
    resume_from: Option<Vec<Cursor>>,
) -> (SseSocket, EventBody) {
    let (id, inbound_tx, inbound) = streams.open(device);
    let (tx, rx) = mpsc::channel::<Bytes>(BODY_QUEUE);
    // The first chunk: the reconnection delay (sent at once, so the
    // headers and the first bytes pass buffering proxies now).
    let _ = tx.try_send(Bytes::from(format!(": pace\nretry: {RETRY_MS}\n\n")));
    let cursors = resume_from.clone().unwrap_or_default();
    if let Some(cursors) = resume_from {
        let frame = ClientFrame::Resume { cursors };
        if let Ok(text) = serde_json::to_string(&frame) {
            let _ = inbound_tx.try_send(Message::Text(text.into()));
        }
    }
    let watch = tx.clone();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let socket = SseSocket {
        out: PollSender::new(tx),
        inbound,
        _inbound_tx: inbound_tx,
        pending_pong: false,
        closing: false,
        gone: Box::pin(async move { watch.closed().await }),
        cursors,
        streams: streams.clone(),
        device: device.clone(),
        id,
    };
    (socket, EventBody { rx, tick })
}

/// Reads the cursors of a `Last-Event-ID` value (as [`SseSocket`] writes
/// them); `None` for anything else.
pub fn parse_event_id(value: &str) -> Option<Vec<Cursor>> {
    let cursors: Vec<Cursor> = serde_json::from_str(value).ok()?;
    (!cursors.is_empty() && cursors.len() <= MAX_CURSORS).then_some(cursors)
}

/// The fields of a notification frame that make its cursor.
#[derive(Deserialize)]
struct NotificationHead {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    scope: Option<pace_protocol::notify::Scope>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    epoch: u64,
    #[serde(default)]
    seq: u64,
}

impl SseSocket {
    /// The event id after `frame`, when it is a notification.
    fn event_id(&mut self, frame: &str) -> Option<String> {
        if !frame.starts_with(r#"{"type":"notification""#) {
            return None;
        }
        let head: NotificationHead = serde_json::from_str(frame).ok()?;
        let scope = head.scope.filter(|_| head.kind == "notification")?;
        let known = self
            .cursors
            .iter()
            .position(|c| c.scope == scope && c.target == head.target);
        match known {
            Some(i) => {
                self.cursors[i].epoch = head.epoch;
                self.cursors[i].seq = head.seq;
            }
            None if self.cursors.len() < MAX_CURSORS => self.cursors.push(Cursor {
                scope,
                target: head.target,
                epoch: head.epoch,
                seq: head.seq,
            }),
            None => {}
        }
        serde_json::to_string(&self.cursors).ok()
    }

    /// The bytes `msg` becomes on the stream (`None`: nothing to write).
    fn encode(&mut self, msg: Message) -> Option<Bytes> {
        match msg {
            Message::Text(text) => {
                let mut out = String::with_capacity(text.len() + 16);
                if let Some(id) = self.event_id(&text) {
                    out.push_str("id: ");
                    out.push_str(&id);
                    out.push('\n');
                }
                for line in text.as_str().split('\n') {
                    out.push_str("data: ");
                    out.push_str(line);
                    out.push('\n');
                }
                out.push('\n');
                Some(Bytes::from(out))
            }
            Message::Ping(_) => {
                self.pending_pong = true;
                Some(Bytes::from_static(b": ping\n\n"))
            }
            Message::Close(frame) => {
                self.closing = true;
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1000, String::new()));
                let data = serde_json::json!({ "code": code, "reason": reason });
                Some(Bytes::from(format!("event: close\ndata: {data}\n\n")))
            }
            Message::Binary(_) | Message::Pong(_) | Message::Frame(_) => None,
        }
    }
}

impl Sink<Message> for SseSocket {
    type Error = WsError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        self.out
            .poll_reserve(cx)
            .map_err(|_| WsError::ConnectionClosed)
    }

    fn start_send(mut self: Pin<&mut Self>, msg: Message) -> Result<(), WsError> {
        let closing = matches!(msg, Message::Close(_));
        match self.encode(msg) {
            Some(bytes) => self
                .out
                .send_item(bytes)
                .map_err(|_| WsError::ConnectionClosed)?,
            None => {
                self.out.abort_send();
            }
        }
        if closing {
            // The close event is the last: end the response.
            self.out.close();
            self.gone = Box::pin(std::future::pending());
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        self.out.close();
        Poll::Ready(Ok(()))
    }
}

impl Stream for SseSocket {
    type Item = Result<Message, WsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if std::mem::take(&mut self.pending_pong) {
            return Poll::Ready(Some(Ok(Message::Pong(Default::default()))));
        }
        if self.closing {
            return Poll::Ready(None);
        }
        if let Poll::Ready(msg) = self.inbound.poll_recv(cx) {
            return Poll::Ready(msg.map(Ok));
        }
        match self.gone.as_mut().poll(cx) {
            Poll::Ready(()) => {
                // Never polled again: reads end from now on.
                self.closing = true;
                self.gone = Box::pin(std::future::pending());
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Socket for SseSocket {
    fn write_blocked(&self) -> bool {
        self.out.get_ref().is_none_or(|tx| tx.capacity() == 0)
    }

    fn transport(&self) -> &'static str {
        "sse"
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use pace_protocol::notify::Scope;

    use super::*;

    fn device(id: &str) -> DeviceId {
        DeviceId::parse(id).unwrap()
    }

    async fn chunk(body: &mut EventBody) -> String {
        let b = body.next().await.unwrap().unwrap();
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn frames_become_events_with_cursor_ids_and_close_ends_the_body() {
        let streams = Arc::new(Streams::default());
        let (mut socket, mut body) = open(&streams, &device("a"), Duration::from_secs(3600), None);
        assert!(chunk(&mut body).await.contains("retry: 1000"));
        socket
            .send(Message::Text(r#"{"type":"welcome"}"#.into()))
            .await
            .unwrap();
        assert_eq!(chunk(&mut body).await, "data: {\"type\":\"welcome\"}\n\n");
        let n = r#"{"type":"notification","id":"x","scope":"group","target":"sales","epoch":5,"seq":9,"event":"e","data":{}}"#;
        socket.send(Message::Text(n.into())).await.unwrap();
        let event = chunk(&mut body).await;
        let id = event.lines().next().unwrap().strip_prefix("id: ").unwrap();
        let cursors = parse_event_id(id).unwrap();
        assert_eq!(cursors.len(), 1);
        assert_eq!(
            (cursors[0].scope, cursors[0].seq, cursors[0].epoch),
            (Scope::Group, 9, 5)
        );
        // A ping is a comment, answered by the socket itself.
        socket
            .send(Message::Ping(Default::default()))
            .await
            .unwrap();
        assert_eq!(chunk(&mut body).await, ": ping\n\n");
        assert!(matches!(socket.next().await, Some(Ok(Message::Pong(_)))));
        // POSTed frames arrive in order; a device without a stream is not here.
        streams
            .send(&device("a"), vec!["1".into(), "2".into()])
            .unwrap();
        assert_eq!(
            streams.send(&device("b"), vec!["1".into()]),
            Err(SendError::NotHere)
        );
        for want in ["1", "2"] {
            match socket.next().await {
                Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), want),
                other => panic!("{other:?}"),
            }
        }
        let close = tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: 4000.into(),
            reason: "replaced".into(),
        };
        socket.send(Message::Close(Some(close))).await.unwrap();
        assert_eq!(
            chunk(&mut body).await,
            "event: close\ndata: {\"code\":4000,\"reason\":\"replaced\"}\n\n"
        );
        assert!(socket.next().await.is_none(), "reads end after close");
        drop(socket);
        assert!(body.next().await.is_none(), "the body ends");
        assert!(streams.is_empty());
    }

    #[tokio::test]
    async fn a_dropped_body_ends_reads_and_a_full_queue_refuses() {
        let streams = Arc::new(Streams::default());
        let (mut socket, body) = open(&streams, &device("a"), Duration::from_secs(3600), None);
        let many: Vec<String> = (0..=INBOUND_QUEUE).map(|i| i.to_string()).collect();
        assert_eq!(streams.send(&device("a"), many), Err(SendError::Full));
        drop(body);
        assert!(socket.next().await.is_none());
    }

    #[tokio::test]
    async fn last_event_id_becomes_the_first_resume() {
        let streams = Arc::new(Streams::default());
        let id = r#"[{"scope":"all","epoch":3,"seq":4}]"#;
        let cursors = parse_event_id(id).unwrap();
        let (mut socket, _body) = open(
            &streams,
            &device("a"),
            Duration::from_secs(3600),
            Some(cursors),
        );
        match socket.next().await {
            Some(Ok(Message::Text(t))) => {
                assert!(matches!(
                    ClientFrame::decode(&t).unwrap(),
                    ClientFrame::Resume { .. }
                ))
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_event_id("17").is_none());
        assert!(parse_event_id("[]").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_body_keeps_alive_while_idle() {
        let streams = Arc::new(Streams::default());
        let (_socket, mut body) = open(&streams, &device("a"), Duration::from_secs(15), None);
        chunk(&mut body).await;
        let start = tokio::time::Instant::now();
        assert_eq!(chunk(&mut body).await, ": keep-alive\n\n");
        assert!(start.elapsed() >= Duration::from_secs(15));
    }
}
