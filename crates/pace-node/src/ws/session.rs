//! One device connection: the task that owns a WebSocket after the upgrade.
//!
//! A single task per device multiplexes four things with `select!`:
//! close requests from the hub (replaced, slow consumer, drain), frames
//! queued by the hub, frames from the device, and the heartbeat timer. No
//! other task touches the socket, so the socket needs no lock and an idle
//! device costs one small future, one small read buffer and one queue.
//!
//! Resume: a device that announced one in the handshake (`?resume=1`)
//! gets no live notification until its `resume` frame has been answered
//! (or `--resume-hold` passed); [`crate::ws::resume`] replays and answers.
//!
//! Pings from the device are answered by tungstenite; the pongs owed while
//! the device does not read are counted (`backlog`) and past
//! `--ws-max-write-buffer` the connection is closed as a slow consumer.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use pace_protocol::{
    ClientFrame, CloseCode, DeviceId, ErrorCode, PROTOCOL_VERSION, ServerFrame, Welcome,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::auth::DevicePrincipal;
use crate::ws::Deps;
use crate::ws::Slot;
use crate::ws::backlog::{PongBacklog, Watched};
use crate::ws::handshake::Handshake;
use crate::ws::hub::{Registration, SubscribeError};
use crate::ws::resume::Replayed;

/// A device's socket as its session sees it: WebSocket messages in and
/// out, and whether the socket refuses writes now (for the pong backlog).
///
/// A device connection is a tokio-tungstenite stream over a [`Watched`]
/// socket; a unit test drives a session through any other implementation
/// (a pair of channels) without a socket. The session is generic over it,
/// so the delivery path is compiled for the real socket: no dynamic call,
/// no copy.
pub trait Socket:
    Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin + Send
{
    /// Whether the socket refuses writes now (as of the last attempt):
    /// the device does not read.
    fn write_blocked(&self) -> bool;

    /// The `transport` label of the connection metrics (`ws`, `sse`).
    fn transport(&self) -> &'static str {
        "ws"
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Socket for WebSocketStream<Watched<T>> {
    fn write_blocked(&self) -> bool {
        self.get_ref().write_blocked()
    }
}

/// Most frames written in one batch before flushing.
const MAX_BATCH: usize = 32;
/// How long to wait for the device's close reply after sending ours.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How a connection ended, for `pace_disconnects_total{reason}`.
pub(super) enum End {
    /// The node closed it with this code.
    Closed(CloseCode),
    /// The device closed it (close frame or EOF).
    ByDevice,
    /// The socket failed.
    Io,
}

impl End {
    fn reason(&self) -> &'static str {
        match self {
            End::Closed(code) => code.reason(),
            End::ByDevice => "device_closed",
            End::Io => "io_error",
        }
    }
}

/// The answer to a `subscribe` the device's credential does not grant.
fn not_allowed(group: &pace_protocol::GroupId) -> ServerFrame {
    ServerFrame::Error {
        code: ErrorCode::NotAllowed,
        message: format!("{group} is not granted to this device's credential"),
    }
}

/// How a failed write ends the connection: a full write buffer (the
/// device does not read) is a slow consumer; anything else, the socket.
fn write_failed(e: &WsError) -> End {
    match e {
        WsError::WriteBufferFull(_) => End::Closed(CloseCode::SLOW_CONSUMER),
        _ => End::Io,
    }
}

/// What the handshake decided, handed to the connection task in one box:
/// an idle connection's task keeps only the pointer in its state, not the
/// handshake's fields, for as long as it lives.
#[derive(Debug)]
pub struct Accepted {
    /// The checked handshake (departments granted, resume announced).
    pub hs: Handshake,
    /// Who the device proved to be.
    pub device: DevicePrincipal,
}

/// Serves one upgraded device connection until it ends, then gives its
/// connection slot back.
pub async fn serve(deps: Arc<Deps>, upgraded: Upgraded, accepted: Box<Accepted>, slot: Slot) {
    let ws = WebSocketStream::from_raw_socket(
        Watched::new(TokioIo::new(upgraded)),
        Role::Server,
        Some(deps.settings.websocket()),
    )
    .await;
    run(deps, ws, accepted).await;
    drop(slot);
}

/// Runs one device's session over `ws` until it ends: announces the
/// connection, registers it in the hub, greets, then serves frames both
/// ways; unregisters and counts the disconnect on the way out.
pub async fn run<S: Socket>(deps: Arc<Deps>, ws: S, accepted: Box<Accepted>) {
    // Only what the connection keeps; the rest of the handshake goes now.
    let Accepted { hs, device } = *accepted;
    let Handshake {
        groups,
        refused,
        resume,
        ..
    } = hs;
    let DevicePrincipal {
        device,
        user,
        grants,
        ..
    } = device;
    // Tell the cluster first, so a connection of this device on another
    // node closes; without the store the device still connects (generation
    // 0: any later connection elsewhere replaces it).
    let generation = match deps.store.connected(&device).await {
        Ok(g) => g,
        Err(e) => {
            tracing::debug!(device = %device, error = %e, "connection not announced to the cluster");
            0
        }
    };
    let reg = deps.hub.register(
        device.clone(),
        groups.clone(),
        deps.settings.send_queue,
        generation,
        grants,
    );
    let transport = ws.transport();
    deps.metrics.connections_open.inc();
    deps.metrics.connections_accepted.inc();
    deps.metrics
        .transport_open
        .with_label_values(&[transport])
        .inc();
    deps.metrics
        .transport_accepted
        .with_label_values(&[transport])
        .inc();
    if deps.is_draining() {
        // Upgraded just as the drain began: tell it to go elsewhere too.
        reg.control.close(CloseCode::SERVICE_RESTART);
    }
    let conn = reg.conn;
    let held_until = resume.then(|| Instant::now() + deps.settings.resume_hold);
    let mut session = Session {
        deps: deps.clone(),
        ws,
        reg,
        device,
        held_until,
        replayed: Replayed::default(),
        user,
        resumed: false,
    };
    // Boxed: the greeting's frames are no part of an idle connection's task.
    let end = match Box::pin(session.greet(groups, refused)).await {
        Ok(()) => session.run().await,
        Err(end) => session.finish(end).await,
    };
    deps.hub.unregister(&session.device, conn);
    deps.rooms.waiters.disconnected(&session.device);
    deps.metrics.connections_open.dec();
    deps.metrics
        .transport_open
        .with_label_values(&[transport])
        .dec();
    deps.metrics
        .disconnects
        .with_label_values(&[end.reason()])
        .inc();
    tracing::debug!(device = %session.device, reason = end.reason(), "device disconnected");
}

/// One device's session: the socket and what the connection keeps.
pub(super) struct Session<S> {
    pub(super) deps: Arc<Deps>,
    pub(super) ws: S,
    pub(super) reg: Registration,
    pub(super) device: DeviceId,
    /// Live frames stay queued until the device's `resume` (or this time).
    pub(super) held_until: Option<Instant>,
    /// Where the last replay ended, per scope, to drop live duplicates.
    pub(super) replayed: Replayed,
    /// The person behind the device (from its token), for per-user limits.
    pub(super) user: Option<String>,
    /// Whether the device sent its one `resume` already.
    pub(super) resumed: bool,
}

impl<S: Socket> Session<S> {
    /// Sends `welcome` (with the groups joined) and, when departments were
    /// refused, an `error` frame naming them.
    async fn greet(
        &mut self,
        groups: Vec<pace_protocol::GroupId>,
        refused: Vec<pace_protocol::GroupId>,
    ) -> Result<(), End> {
        let deps = self.deps.clone();
        let cfg = &deps.settings;
        let welcome = ServerFrame::Welcome(Welcome {
            protocol: PROTOCOL_VERSION,
            device_id: self.device.clone(),
            node_id: cfg.node_id.clone(),
            groups,
            heartbeat_interval_ms: cfg.ping_interval.as_millis() as u64,
            heartbeat_timeout_ms: cfg.ping_timeout.as_millis() as u64,
            max_message_bytes: cfg.max_message_bytes as u64,
        });
        self.reply(&welcome).await?;
        if !refused.is_empty() {
            let names: Vec<&str> = refused.iter().map(pace_protocol::GroupId::as_str).collect();
            let error = ServerFrame::Error {
                code: ErrorCode::NotAllowed,
                message: format!(
                    "not joined: {} (not granted to this device's credential)",
                    names.join(", ")
                ),
            };
            self.reply(&error).await?;
        }
        Ok(())
    }

    async fn run(&mut self) -> End {
        let deps = self.deps.clone();
        let cfg = &deps.settings;
        let ping_interval = cfg.ping_interval;
        let ping_timeout = cfg.ping_timeout;
        // Spread the first ping over the interval so devices connected in a
        // burst are not all pinged in the same instant.
        let jitter = ping_interval.mul_f64(rand::random::<f64>() * 0.5);
        let heartbeat = sleep_until(Instant::now() + ping_interval - jitter);
        tokio::pin!(heartbeat);
        let mut awaiting_pong = false;
        let mut pongs = PongBacklog::default();
        // The resume hold's timer exists only for connections that
        // announced a resume: an idle device carries no second timer.
        let mut hold = self.held_until.map(|t| Box::pin(sleep_until(t)));

        let end = loop {
            let held = self.held_until.is_some();
            if !held {
                hold = None;
            }
            tokio::select! {
                biased;
                code = self.reg.control.closed() => break End::Closed(code),
                () = async {
                    match hold.as_mut() {
                        Some(timer) => timer.as_mut().await,
                        None => std::future::pending().await,
                    }
                }, if held => {
                    // No `resume` came in time: deliver live frames anyway.
                    self.held_until = None;
                }
                frame = self.reg.outbox.recv(), if !held => match frame {
                    Some(frame) => {
                        if let Err(end) = self.write_batch(frame).await {
                            break end;
                        }
                    }
                    // The hub dropped us; it always says why first.
                    None => break End::Closed(self.reg.control.requested().unwrap_or(CloseCode::INTERNAL_ERROR)),
                },
                msg = self.ws.next() => {
                    // Anything from the device proves it is alive.
                    awaiting_pong = false;
                    heartbeat.as_mut().reset(Instant::now() + ping_interval);
                    match msg {
                        Some(Ok(Message::Text(text))) => {
                            // Boxed: a frame's handling (join, proof of
                            // work, resume and their store calls) is deep;
                            // inline, its state would be part of every idle
                            // connection's task. A frame is rare per
                            // connection; the allocation lives while it is
                            // handled.
                            if let Err(end) = Box::pin(self.on_text(&text)).await {
                                break end;
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            self.deps.metrics.frames_rejected.with_label_values(&["binary"]).inc();
                            break End::Closed(CloseCode::UNSUPPORTED_DATA);
                        }
                        Some(Ok(Message::Close(_))) | None => break End::ByDevice,
                        Some(Ok(Message::Ping(payload))) => {
                            // tungstenite answers it; while the device does
                            // not read, the pongs it is owed pile up.
                            let owed = pongs.on_ping(payload.len(), self.ws.write_blocked());
                            if owed > cfg.ws_max_write_buffer {
                                self.deps.metrics.limits_hit.with_label_values(&["pong_backlog"]).inc();
                                tracing::debug!(device = %self.device, owed, "pings without reading: closing");
                                break End::Closed(CloseCode::SLOW_CONSUMER);
                            }
                        }
                        Some(Ok(_)) => {} // pong, raw frame
                        Some(Err(e)) => break self.on_read_error(e),
                    }
                }
                () = &mut heartbeat => {
                    if awaiting_pong {
                        break End::Closed(CloseCode::HEARTBEAT_TIMEOUT);
                    }
                    if let Err(end) = self.write(Message::Ping(Default::default())).await {
                        break end;
                    }
                    awaiting_pong = true;
                    heartbeat.as_mut().reset(Instant::now() + ping_timeout);
                }
            }
        };
        self.finish(end).await
    }

    /// Writes `first` and whatever else is queued (up to a batch), then flushes.
    async fn write_batch(&mut self, first: Utf8Bytes) -> Result<(), End> {
        let write_timeout = self.deps.settings.write_timeout;
        let ws = &mut self.ws;
        let outbox = &mut self.reg.outbox;
        let replayed = &mut self.replayed;
        let duplicates = &self.deps.metrics.resume_duplicates;
        let mut pass = |frame: &Utf8Bytes| {
            let pass = replayed.pass(frame);
            if !pass {
                duplicates.inc();
            }
            pass
        };
        let batch = async {
            if pass(&first) {
                ws.feed(Message::Text(first)).await?;
            }
            for _ in 1..MAX_BATCH {
                match outbox.try_recv() {
                    Ok(frame) if pass(&frame) => ws.feed(Message::Text(frame)).await?,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            ws.flush().await
        };
        tokio::select! {
            biased;
            code = self.reg.control.closed() => Err(End::Closed(code)),
            res = timeout(write_timeout, batch) => match res {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(write_failed(&e)),
                Err(_) => Err(End::Closed(CloseCode::SLOW_CONSUMER)),
            },
        }
    }

    /// Writes one message (a reply or a ping) under the write timeout.
    async fn write(&mut self, msg: Message) -> Result<(), End> {
        match timeout(self.deps.settings.write_timeout, self.ws.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(write_failed(&e)),
            Err(_) => Err(End::Closed(CloseCode::SLOW_CONSUMER)),
        }
    }

    async fn reply(&mut self, frame: &ServerFrame) -> Result<(), End> {
        self.write(Message::Text(frame.to_json().into())).await
    }

    async fn on_text(&mut self, text: &str) -> Result<(), End> {
        let frame = match ClientFrame::decode(text) {
            Ok(f) => f,
            Err(e) => {
                self.deps
                    .metrics
                    .frames_rejected
                    .with_label_values(&[e.code().as_str()])
                    .inc();
                let reply = ServerFrame::Error {
                    code: e.code(),
                    message: e.to_string(),
                };
                return self.reply(&reply).await;
            }
        };
        let reply = match frame {
            ClientFrame::Subscribe { group } => {
                if !self.may_join(&group).await {
                    self.deps
                        .metrics
                        .groups_refused
                        .with_label_values(&["subscribe"])
                        .inc();
                    return self.reply(&not_allowed(&group)).await;
                }
                // A room channel is one beyond the device's own groups, as
                // when a join puts the device in it.
                let max = if group.room().is_some() {
                    self.deps.settings.max_groups.saturating_add(1)
                } else {
                    self.deps.settings.max_groups
                };
                match self
                    .deps
                    .hub
                    .subscribe(&self.device, self.reg.conn, &group, max)
                {
                    Ok(_) => ServerFrame::Subscribed { group },
                    Err(e @ SubscribeError::TooManyGroups(_)) => {
                        self.deps
                            .metrics
                            .frames_rejected
                            .with_label_values(&["too_many_groups"])
                            .inc();
                        ServerFrame::Error {
                            code: ErrorCode::TooManyGroups,
                            message: e.to_string(),
                        }
                    }
                    // Replaced or closing: the close request is already on its way.
                    Err(SubscribeError::Gone) => return Ok(()),
                }
            }
            ClientFrame::Unsubscribe { group } => {
                self.deps
                    .hub
                    .unsubscribe(&self.device, self.reg.conn, &group);
                ServerFrame::Unsubscribed { group }
            }
            ClientFrame::Ping { id } => ServerFrame::Pong { id },
            ClientFrame::Resume { cursors } => self.on_resume(cursors).await?,
            ClientFrame::Join { room } => match self.join(&room, None).await {
                Some(frame) => frame,
                None => return Ok(()),
            },
            ClientFrame::Solve {
                room,
                challenge,
                solution,
            } => {
                let solution = crate::rooms::Solution {
                    challenge,
                    solution,
                };
                match self.join(&room, Some(solution)).await {
                    Some(frame) => frame,
                    None => return Ok(()),
                }
            }
            ClientFrame::Leave { room } => match self.deps.rooms.leave(&room, &self.device).await {
                Ok(frame) => {
                    let channel = pace_protocol::room_group(&room);
                    self.deps
                        .hub
                        .unsubscribe(&self.device, self.reg.conn, &channel);
                    frame
                }
                Err(refused) => ServerFrame::Error {
                    code: refused.code,
                    message: refused.message,
                },
            },
        };
        self.reply(&reply).await
    }

    /// which an admin may have changed since the handshake).
    pub(super) fn may_join(
        &self,
        group: &pace_protocol::GroupId,
    ) -> impl std::future::Future<Output = bool> + Send + 'static {
        // Owned parts only: the session (and its socket) is not borrowed
        // across the store call.
        let grants = self.deps.hub.grants(&self.device, self.reg.conn);
        let (deps, device, group) = (self.deps.clone(), self.device.clone(), group.clone());
        async move {
            match grants {
                Some(grants) => deps.may_join(&device, &grants, &group).await,
                None => false,
            }
        }
    }

    /// Joins a room (with a proof-of-work solution when answering a
    /// challenge); the frame to answer with, if any.
    async fn join(
        &mut self,
        room: &pace_protocol::RoomId,
        solution: Option<crate::rooms::Solution>,
    ) -> Option<ServerFrame> {
        match self
            .deps
            .rooms
            .join(room, &self.device, solution, self.user.as_deref())
            .await
        {
            Ok(frame) => {
                if matches!(frame, Some(ServerFrame::Queue(_))) {
                    self.enter_room_channel(room);
                }
                frame
            }
            Err(refused) => {
                self.deps
                    .metrics
                    .frames_rejected
                    .with_label_values(&[refused.code.as_str()])
                    .inc();
                Some(ServerFrame::Error {
                    code: refused.code,
                    message: refused.message,
                })
            }
        }
    }

    /// Puts the waiting device in the room's channel (`@room:<room>`), so
    /// a notification to the room reaches it. One channel beyond the
    /// device's own group limit; a device over it just misses room
    /// notifications (nothing else depends on the channel).
    fn enter_room_channel(&self, room: &pace_protocol::RoomId) {
        let channel = pace_protocol::room_group(room);
        let max = self.deps.settings.max_groups.saturating_add(1);
        if let Err(e) = self
            .deps
            .hub
            .subscribe(&self.device, self.reg.conn, &channel, max)
        {
            tracing::debug!(device = %self.device, %room, error = %e, "not put in the room channel");
        }
    }

    /// Writes frames (a replay) and flushes, under the write timeout.
    pub(super) async fn write_all(
        &mut self,
        frames: impl Iterator<Item = String>,
    ) -> Result<(), End> {
        let ws = &mut self.ws;
        let all = async {
            for frame in frames {
                ws.feed(Message::Text(frame.into())).await?;
            }
            ws.flush().await
        };
        match timeout(self.deps.settings.write_timeout, all).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(write_failed(&e)),
            Err(_) => Err(End::Closed(CloseCode::SLOW_CONSUMER)),
        }
    }

    fn on_read_error(&self, e: WsError) -> End {
        let rejected = |reason: &str| {
            self.deps
                .metrics
                .frames_rejected
                .with_label_values(&[reason])
                .inc()
        };
        match e {
            // A device that vanishes without a close frame (tab closed,
            // network lost) is not a protocol offender.
            WsError::ConnectionClosed
            | WsError::AlreadyClosed
            | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => End::ByDevice,
            WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
                rejected("too_big");
                End::Closed(CloseCode::MESSAGE_TOO_BIG)
            }
            WsError::Utf8(_) => {
                rejected("invalid_utf8");
                End::Closed(CloseCode::INVALID_PAYLOAD)
            }
            WsError::Capacity(_) | WsError::Protocol(_) => {
                rejected("protocol");
                End::Closed(CloseCode::POLICY_VIOLATION)
            }
            _ => End::Io,
        }
    }

    /// Sends our close frame (when we are the ones closing) and waits
    /// briefly for the device's reply, so well-behaved devices see a clean
    /// close; an unresponsive device is simply dropped.
    async fn finish(&mut self, end: End) -> End {
        if let End::Closed(code) = &end {
            let frame = CloseFrame {
                code: code.0.into(),
                reason: code.reason().into(),
            };
            let closing = async {
                self.ws.send(Message::Close(Some(frame))).await.ok()?;
                while let Some(Ok(_)) = self.ws.next().await {}
                Some(())
            };
            let wait = match *code {
                // The socket is stuck or the device is gone: do not wait long.
                CloseCode::SLOW_CONSUMER | CloseCode::HEARTBEAT_TIMEOUT => {
                    Duration::from_millis(200)
                }
                // Draining: devices may take until the drain grace to leave.
                CloseCode::SERVICE_RESTART => self.deps.settings.drain_grace,
                _ => CLOSE_WAIT,
            };
            let _ = timeout(wait, closing).await;
        } else if let End::ByDevice = &end {
            // The device sent a close frame: tungstenite queued our reply;
            // polling on writes it and completes the closing handshake
            // (RFC 6455 §5.5.1) instead of dropping the TCP connection.
            let _ = timeout(CLOSE_WAIT, async {
                while let Some(Ok(_)) = self.ws.next().await {}
            })
            .await;
        }
        end
    }
}

#[cfg(test)]
mod tests {
    //! A session driven over a pair of channels: no socket, no server.

    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll};

    use pace_protocol::{EventName, GroupId, RoomId, Target};
    use serde_json::{Value, json};
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::auth::{DeviceCredential, Grants};
    use crate::config::NodeConfig;
    use crate::metrics::Metrics;
    use crate::queue::{MemoryQueueStore, SharedQueueStore};
    use crate::rooms::{Rooms, RoomsConfig, Waiters};
    use crate::store::{Draft, MemoryStore, SharedStore};
    use crate::ws::fanout::LocalFanout;
    use crate::ws::hub::Hub;
    use crate::ws::{Deps, Settings};

    /// The session's end of the pair.
    struct Pipe {
        from_device: mpsc::UnboundedReceiver<Result<Message, WsError>>,
        to_device: mpsc::UnboundedSender<Message>,
        blocked: Arc<AtomicBool>,
    }

    impl Stream for Pipe {
        type Item = Result<Message, WsError>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.from_device.poll_recv(cx)
        }
    }

    impl Sink<Message> for Pipe {
        type Error = WsError;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, msg: Message) -> Result<(), WsError> {
            self.to_device
                .send(msg)
                .map_err(|_| WsError::ConnectionClosed)
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
    }

    impl Socket for Pipe {
        fn write_blocked(&self) -> bool {
            self.blocked.load(Ordering::Relaxed)
        }
    }

    /// The device's end of the pair, and the session's task.
    struct Device {
        to_node: mpsc::UnboundedSender<Result<Message, WsError>>,
        from_node: mpsc::UnboundedReceiver<Message>,
        blocked: Arc<AtomicBool>,
        task: JoinHandle<()>,
    }

    impl Device {
        fn send(&self, text: &str) {
            self.to_node
                .send(Ok(Message::Text(text.into())))
                .expect("session reads");
        }

        /// The next text frame, as JSON (pings are skipped).
        async fn frame(&mut self) -> Value {
            loop {
                match self.from_node.recv().await {
                    Some(Message::Text(t)) => return serde_json::from_str(&t).unwrap(),
                    Some(Message::Ping(_)) => {}
                    other => panic!("expected a text frame, got {other:?}"),
                }
            }
        }

        /// The close code the session sends next (frames before it are
        /// skipped); then hangs up and waits for the task to end.
        async fn closed(mut self) -> u16 {
            let code = loop {
                match self.from_node.recv().await {
                    Some(Message::Close(Some(f))) => break u16::from(f.code),
                    Some(_) => {}
                    None => panic!("the session ended without a close frame"),
                }
            };
            drop(self.to_node);
            self.task.await.unwrap();
            code
        }
    }

    fn test_deps(settings: impl FnOnce(&mut Settings)) -> Arc<Deps> {
        let config = NodeConfig::defaults();
        let metrics = Metrics::new();
        let hub = Arc::new(Hub::new());
        let waiters = Arc::new(Waiters::default());
        let local = Arc::new(LocalFanout {
            hub: hub.clone(),
            metrics: metrics.clone(),
            waiters: waiters.clone(),
        });
        let store: SharedStore = Arc::new(MemoryStore::new(local, config.store.history()));
        let queue: SharedQueueStore = Arc::new(MemoryQueueStore::new());
        let keys = Arc::new(crate::admission::KeySet::generate_in_memory().unwrap());
        let rooms = Arc::new(Rooms::new(
            queue,
            store.clone(),
            hub.clone(),
            keys,
            waiters,
            metrics.clone(),
            RoomsConfig {
                tick: config.rooms.admit_tick,
                refresh: config.rooms.position_refresh,
                grace: config.rooms.heartbeat_grace,
                joins_per_minute: 0,
                max_places_per_user: 0,
            },
        ));
        let mut s = Settings::of(&config);
        s.node_id = "node-t".into();
        settings(&mut s);
        Arc::new(Deps {
            hub,
            rooms,
            store,
            metrics,
            settings: s,
            draining: Arc::default(),
        })
    }

    fn accepted(device: &str, groups: &[&str], resume: bool) -> Box<Accepted> {
        let device = DeviceId::parse(device).unwrap();
        Box::new(Accepted {
            hs: Handshake {
                groups: groups.iter().map(|g| GroupId::parse(g).unwrap()).collect(),
                refused: Vec::new(),
                accept: String::new(),
                resume,
            },
            device: DevicePrincipal {
                device,
                credential: DeviceCredential::Anonymous,
                user: None,
                grants: Grants::open(),
            },
        })
    }

    /// Starts a session for `accepted` over a fresh pipe.
    fn connect(deps: &Arc<Deps>, accepted: Box<Accepted>) -> Device {
        let (to_node, from_device) = mpsc::unbounded_channel();
        let (to_device, from_node) = mpsc::unbounded_channel();
        let blocked = Arc::new(AtomicBool::new(false));
        let pipe = Pipe {
            from_device,
            to_device,
            blocked: blocked.clone(),
        };
        let task = tokio::spawn(run(deps.clone(), pipe, accepted));
        Device {
            to_node,
            from_node,
            blocked,
            task,
        }
    }

    /// A room that admits nobody: every joiner waits.
    fn waiting_room() -> crate::queue::RoomConfig {
        crate::queue::RoomConfig::open(0, "https://shop.example/checkout")
    }

    fn draft(n: u32) -> Draft {
        Draft {
            target: Target::All,
            event: EventName::parse("price").unwrap(),
            data: json!({ "n": n }),
        }
    }

    #[tokio::test]
    async fn welcome_names_the_device_node_and_groups() {
        let deps = test_deps(|_| {});
        let mut d = connect(&deps, accepted("laptop_1", &["sales"], false));
        let w = d.frame().await;
        assert_eq!(w["type"], "welcome");
        assert_eq!(w["device_id"], "laptop_1");
        assert_eq!(w["node_id"], "node-t");
        assert_eq!(w["groups"], json!(["sales"]));
        assert_eq!(
            w["max_message_bytes"],
            json!(deps.settings.max_message_bytes)
        );
        assert_eq!(deps.hub.len(), 1);
        assert_eq!(deps.hub.group_len(&GroupId::parse("sales").unwrap()), 1);
        d.to_node.send(Ok(Message::Close(None))).unwrap();
        drop(d.to_node);
        d.task.await.unwrap();
        assert!(deps.hub.is_empty(), "unregistered on the way out");
    }

    #[tokio::test]
    async fn a_notification_reaches_the_device_and_frames_are_answered() {
        let deps = test_deps(|_| {});
        let mut d = connect(&deps, accepted("a", &[], false));
        assert_eq!(d.frame().await["type"], "welcome");
        let n = deps.store.publish(draft(1)).await.unwrap();
        let got = d.frame().await;
        assert_eq!(got["type"], "notification");
        assert_eq!(got["id"], n.id.as_str());
        assert_eq!(got["data"], json!({ "n": 1 }));
        d.send(r#"{"type":"ping","id":1}"#);
        assert_eq!(d.frame().await, json!({ "type": "pong", "id": 1 }));
        d.send(r#"{"type":"subscribe","group":"it"}"#);
        assert_eq!(d.frame().await["type"], "subscribed");
        assert_eq!(deps.hub.group_len(&GroupId::parse("it").unwrap()), 1);
    }

    #[tokio::test]
    async fn join_answers_the_queue_place() {
        let deps = test_deps(|_| {});
        let room = RoomId::parse("sale").unwrap();
        deps.rooms
            .queue
            .put_room(&room, &waiting_room())
            .await
            .unwrap();
        let mut first = connect(&deps, accepted("a", &[], false));
        let mut second = connect(&deps, accepted("b", &[], false));
        assert_eq!(first.frame().await["type"], "welcome");
        assert_eq!(second.frame().await["type"], "welcome");
        first.send(r#"{"type":"join","room":"sale"}"#);
        let q = first.frame().await;
        assert_eq!(
            (q["type"].as_str(), q["position"].as_u64()),
            (Some("queue"), Some(1))
        );
        second.send(r#"{"type":"join","room":"sale"}"#);
        let q = second.frame().await;
        assert_eq!(
            (q["type"].as_str(), q["position"].as_u64()),
            (Some("queue"), Some(2))
        );
        let channel = pace_protocol::room_group(&room);
        assert_eq!(
            deps.hub.group_len(&channel),
            2,
            "waiting devices hear the room"
        );
        first.send(r#"{"type":"join","room":"nowhere"}"#);
        let e = first.frame().await;
        assert_eq!(e["type"], "error");
    }

    #[tokio::test]
    async fn invalid_frames_get_an_error_frame_and_binary_closes() {
        let deps = test_deps(|_| {});
        let mut d = connect(&deps, accepted("a", &[], false));
        assert_eq!(d.frame().await["type"], "welcome");
        d.send("{nope");
        assert_eq!(d.frame().await["code"], "bad_frame");
        d.send(r#"{"type":"join"}"#);
        let e = d.frame().await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("invalid_frame"))
        );
        d.send(r#"{"type":"teleport"}"#);
        assert_eq!(d.frame().await["code"], "unknown_type");
        d.to_node
            .send(Ok(Message::Binary(vec![1, 2, 3].into())))
            .unwrap();
        assert_eq!(d.closed().await, CloseCode::UNSUPPORTED_DATA.0);
    }

    #[tokio::test]
    async fn resume_replays_after_the_cursor_and_holds_live_frames_until_then() {
        let deps = test_deps(|_| {});
        let first = deps.store.publish(draft(1)).await.unwrap();
        deps.store.publish(draft(2)).await.unwrap();
        deps.store.publish(draft(3)).await.unwrap();
        let mut d = connect(&deps, accepted("a", &[], true));
        assert_eq!(d.frame().await["type"], "welcome");
        // Published after the connection, before its resume: held back.
        let live = deps.store.publish(draft(4)).await.unwrap();
        let resume = json!({
            "type": "resume",
            "cursors": [{ "scope": "all", "epoch": first.epoch, "seq": first.seq }],
        });
        d.send(&resume.to_string());
        let mut got = Vec::new();
        let answer = loop {
            let f = d.frame().await;
            if f["type"] == "resumed" {
                break f;
            }
            assert_eq!(f["type"], "notification");
            got.push(f["data"]["n"].as_u64().unwrap());
        };
        // The replay ends at the head, which includes the held frame.
        assert_eq!(got, [2, 3, 4]);
        let scope = &answer["scopes"][0];
        assert_eq!(scope["recovered"], true);
        assert_eq!(scope["replayed"], 3);
        assert_eq!(scope["seq"], live.seq);
        // The held live copy of 4 is dropped: the replay carried it.
        d.send(r#"{"type":"ping","id":7}"#);
        assert_eq!(d.frame().await, json!({ "type": "pong", "id": 7 }));
        assert_eq!(deps.metrics.resume_duplicates.get(), 1);
        // A second resume on the same connection is refused.
        d.send(&resume.to_string());
        assert_eq!(d.frame().await["code"], "invalid_frame");
    }

    #[tokio::test]
    async fn a_second_connection_of_the_device_replaces_the_first() {
        let deps = test_deps(|_| {});
        let mut old = connect(&deps, accepted("a", &[], false));
        assert_eq!(old.frame().await["type"], "welcome");
        let mut new = connect(&deps, accepted("a", &[], false));
        assert_eq!(new.frame().await["type"], "welcome");
        assert_eq!(old.closed().await, CloseCode::REPLACED.0);
        deps.store.publish(draft(1)).await.unwrap();
        assert_eq!(new.frame().await["type"], "notification");
        assert_eq!(deps.hub.len(), 1, "the old task left the new registration");
    }

    #[tokio::test]
    async fn pings_without_reading_close_with_4001() {
        let deps = test_deps(|s| s.ws_max_write_buffer = 1_000);
        let mut d = connect(&deps, accepted("a", &[], false));
        assert_eq!(d.frame().await["type"], "welcome");
        // A writable socket took its pongs: nothing is owed.
        for _ in 0..20 {
            d.to_node
                .send(Ok(Message::Ping(vec![0; 125].into())))
                .unwrap();
        }
        d.send(r#"{"type":"ping","id":3}"#);
        assert_eq!(d.frame().await, json!({ "type": "pong", "id": 3 }));
        // The device stops reading: 8 pongs of 127 bytes pass 1 000.
        d.blocked.store(true, Ordering::Relaxed);
        for _ in 0..8 {
            d.to_node
                .send(Ok(Message::Ping(vec![0; 125].into())))
                .unwrap();
        }
        assert_eq!(d.closed().await, CloseCode::SLOW_CONSUMER.0);
        let hit = deps
            .metrics
            .limits_hit
            .with_label_values(&["pong_backlog"])
            .get();
        assert_eq!(hit, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_device_is_pinged_then_closed_with_4002() {
        let deps = test_deps(|_| {});
        let (interval, wait) = (deps.settings.ping_interval, deps.settings.ping_timeout);
        let mut d = connect(&deps, accepted("a", &[], false));
        assert_eq!(d.frame().await["type"], "welcome");
        let start = Instant::now();
        // The paused clock jumps to the ping (first one jittered into the
        // interval's second half).
        match d.from_node.recv().await {
            Some(Message::Ping(_)) => {}
            other => panic!("expected a ping, got {other:?}"),
        }
        let pinged = start.elapsed();
        assert!(pinged <= interval && pinged >= interval / 2, "{pinged:?}");
        assert_eq!(d.closed().await, CloseCode::HEARTBEAT_TIMEOUT.0);
        assert!(start.elapsed() >= pinged + wait);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answering_device_stays_connected() {
        let deps = test_deps(|_| {});
        let interval = deps.settings.ping_interval;
        let mut d = connect(&deps, accepted("a", &[], false));
        assert_eq!(d.frame().await["type"], "welcome");
        for _ in 0..5 {
            match d.from_node.recv().await {
                Some(Message::Ping(p)) => d.to_node.send(Ok(Message::Pong(p))).unwrap(),
                other => panic!("expected a ping, got {other:?}"),
            }
        }
        tokio::time::sleep(interval / 4).await;
        assert_eq!(deps.hub.len(), 1);
        assert!(!d.task.is_finished());
    }

    #[tokio::test]
    async fn a_device_upgraded_during_the_drain_is_told_to_reconnect() {
        let deps = test_deps(|_| {});
        deps.draining.store(true, Ordering::Release);
        let d = connect(&deps, accepted("a", &[], false));
        assert_eq!(d.closed().await, CloseCode::SERVICE_RESTART.0);
    }
}
