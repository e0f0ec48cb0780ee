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
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::auth::DevicePrincipal;
use crate::node::{NodeRef, Slot};
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

/// The WebSocket settings every device connection uses.
pub fn ws_config(node: &NodeRef) -> WebSocketConfig {
    let c = &node.config;
    WebSocketConfig::default()
        .read_buffer_size(c.ws_read_buffer)
        .write_buffer_size(c.ws_write_buffer)
        .max_write_buffer_size(c.ws_max_write_buffer)
        .max_message_size(Some(c.max_message_bytes))
        .max_frame_size(Some(c.max_message_bytes))
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
pub async fn serve(node: NodeRef, upgraded: Upgraded, accepted: Box<Accepted>, slot: Slot) {
    let ws = WebSocketStream::from_raw_socket(
        Watched::new(TokioIo::new(upgraded)),
        Role::Server,
        Some(ws_config(&node)),
    )
    .await;
    run(node, ws, accepted).await;
    drop(slot);
}

/// Runs one device's session over `ws` until it ends: announces the
/// connection, registers it in the hub, greets, then serves frames both
/// ways; unregisters and counts the disconnect on the way out.
pub async fn run<S: Socket>(node: NodeRef, ws: S, accepted: Box<Accepted>) {
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
    let generation = match node.store.connected(&device).await {
        Ok(g) => g,
        Err(e) => {
            tracing::debug!(device = %device, error = %e, "connection not announced to the cluster");
            0
        }
    };
    let reg = node.hub.register(
        device.clone(),
        groups.clone(),
        node.config.send_queue,
        generation,
        grants,
    );
    node.metrics.connections_open.inc();
    node.metrics.connections_accepted.inc();
    if node.is_draining() {
        // Upgraded just as the drain began: tell it to go elsewhere too.
        reg.control.close(CloseCode::SERVICE_RESTART);
    }
    let conn = reg.conn;
    let held_until = resume.then(|| Instant::now() + node.config.resume_hold);
    let mut session = Session {
        node: node.clone(),
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
    node.hub.unregister(&session.device, conn);
    node.rooms.waiters.disconnected(&session.device);
    node.metrics.connections_open.dec();
    node.metrics
        .disconnects
        .with_label_values(&[end.reason()])
        .inc();
    tracing::debug!(device = %session.device, reason = end.reason(), "device disconnected");
}

/// One device's session: the socket and what the connection keeps.
pub(super) struct Session<S> {
    pub(super) node: NodeRef,
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
        let node = self.node.clone();
        let cfg = &node.config;
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
        let node = self.node.clone();
        let cfg = &node.config;
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
                            self.node.metrics.frames_rejected.with_label_values(&["binary"]).inc();
                            break End::Closed(CloseCode::UNSUPPORTED_DATA);
                        }
                        Some(Ok(Message::Close(_))) | None => break End::ByDevice,
                        Some(Ok(Message::Ping(payload))) => {
                            // tungstenite answers it; while the device does
                            // not read, the pongs it is owed pile up.
                            let owed = pongs.on_ping(payload.len(), self.ws.write_blocked());
                            if owed > cfg.ws_max_write_buffer {
                                self.node.metrics.limits_hit.with_label_values(&["pong_backlog"]).inc();
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
        let write_timeout = self.node.config.write_timeout;
        let ws = &mut self.ws;
        let outbox = &mut self.reg.outbox;
        let replayed = &mut self.replayed;
        let duplicates = &self.node.metrics.resume_duplicates;
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
        match timeout(self.node.config.write_timeout, self.ws.send(msg)).await {
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
                self.node
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
                    self.node
                        .metrics
                        .groups_refused
                        .with_label_values(&["subscribe"])
                        .inc();
                    return self.reply(&not_allowed(&group)).await;
                }
                // A room channel is one beyond the device's own groups, as
                // when a join puts the device in it.
                let max = if group.room().is_some() {
                    self.node.config.max_groups.saturating_add(1)
                } else {
                    self.node.config.max_groups
                };
                match self
                    .node
                    .hub
                    .subscribe(&self.device, self.reg.conn, &group, max)
                {
                    Ok(_) => ServerFrame::Subscribed { group },
                    Err(e @ SubscribeError::TooManyGroups(_)) => {
                        self.node
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
                self.node
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
            ClientFrame::Leave { room } => match self.node.rooms.leave(&room, &self.device).await {
                Ok(frame) => {
                    let channel = pace_protocol::room_group(&room);
                    self.node
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
        let grants = self.node.hub.grants(&self.device, self.reg.conn);
        let (node, device, group) = (self.node.clone(), self.device.clone(), group.clone());
        async move {
            match grants {
                Some(grants) => crate::auth::may_join(&node, &device, &grants, &group).await,
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
            .node
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
                self.node
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
        let max = self.node.config.max_groups.saturating_add(1);
        if let Err(e) = self
            .node
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
        match timeout(self.node.config.write_timeout, all).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(write_failed(&e)),
            Err(_) => Err(End::Closed(CloseCode::SLOW_CONSUMER)),
        }
    }

    fn on_read_error(&self, e: WsError) -> End {
        let rejected = |reason: &str| {
            self.node
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
                CloseCode::SERVICE_RESTART => self.node.config.drain_grace,
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
