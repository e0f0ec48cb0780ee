//! One device connection: the task that owns a WebSocket after the upgrade.
//!
//! A single task per device multiplexes four things with `select!`:
//! close requests from the hub (replaced, slow consumer, drain), frames
//! queued by the hub, frames from the device, and the heartbeat timer. No
//! other task touches the socket, so the socket needs no lock and an idle
//! device costs one small future, one small read buffer and one queue.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use pace_protocol::{
    ClientFrame, CloseCode, DeviceId, ErrorCode, PROTOCOL_VERSION, ServerFrame, Welcome,
};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::handshake::Handshake;
use crate::hub::{Registration, SubscribeError};
use crate::node::{NodeRef, Slot};

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// Most frames written in one batch before flushing.
const MAX_BATCH: usize = 32;
/// How long to wait for the device's close reply after sending ours.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How a connection ended, for `pace_disconnects_total{reason}`.
enum End {
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

/// The WebSocket settings every device connection uses.
pub fn ws_config(node: &NodeRef) -> WebSocketConfig {
    let c = &node.config;
    WebSocketConfig::default()
        .read_buffer_size(c.ws_read_buffer)
        .write_buffer_size(c.ws_write_buffer)
        .max_message_size(Some(c.max_message_bytes))
        .max_frame_size(Some(c.max_message_bytes))
}

/// Serves one upgraded device connection until it ends.
pub async fn serve(node: NodeRef, upgraded: Upgraded, hs: Handshake, slot: Slot) {
    let ws = WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        Role::Server,
        Some(ws_config(&node)),
    )
    .await;
    // Tell the cluster first, so a connection of this device on another
    // node closes; without the store the device still connects (generation
    // 0: any later connection elsewhere replaces it).
    let generation = match node.store.connected(&hs.device).await {
        Ok(g) => g,
        Err(e) => {
            tracing::debug!(device = %hs.device, error = %e, "connection not announced to the cluster");
            0
        }
    };
    let reg = node.hub.register(
        hs.device.clone(),
        hs.groups.clone(),
        node.config.send_queue,
        generation,
    );
    node.metrics.connections_open.inc();
    node.metrics.connections_accepted.inc();
    if node.is_draining() {
        // Upgraded just as the drain began: tell it to go elsewhere too.
        reg.control.close(CloseCode::SERVICE_RESTART);
    }
    let conn = reg.conn;
    let mut session = Session {
        node: node.clone(),
        ws,
        reg,
        device: hs.device,
    };
    let end = session.run(hs.groups).await;
    node.hub.unregister(&session.device, conn);
    node.rooms.waiters.disconnected(&session.device);
    node.metrics.connections_open.dec();
    node.metrics
        .disconnects
        .with_label_values(&[end.reason()])
        .inc();
    tracing::debug!(device = %session.device, reason = end.reason(), "device disconnected");
    drop(slot);
}

struct Session {
    node: NodeRef,
    ws: Ws,
    reg: Registration,
    device: DeviceId,
}

impl Session {
    async fn run(&mut self, groups: Vec<pace_protocol::GroupId>) -> End {
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
        if let Err(end) = self.reply(&welcome).await {
            return self.finish(end).await;
        }

        let ping_interval = cfg.ping_interval;
        let ping_timeout = cfg.ping_timeout;
        // Spread the first ping over the interval so devices connected in a
        // burst are not all pinged in the same instant.
        let jitter = ping_interval.mul_f64(rand::random::<f64>() * 0.5);
        let heartbeat = sleep_until(Instant::now() + ping_interval - jitter);
        tokio::pin!(heartbeat);
        let mut awaiting_pong = false;

        let end = loop {
            tokio::select! {
                biased;
                code = self.reg.control.closed() => break End::Closed(code),
                frame = self.reg.outbox.recv() => match frame {
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
                            if let Err(end) = self.on_text(&text).await {
                                break end;
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            self.node.metrics.frames_rejected.with_label_values(&["binary"]).inc();
                            break End::Closed(CloseCode::UNSUPPORTED_DATA);
                        }
                        Some(Ok(Message::Close(_))) | None => break End::ByDevice,
                        Some(Ok(_)) => {} // ping (answered by tungstenite), pong, raw frame
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
        let batch = async {
            ws.feed(Message::Text(first)).await?;
            for _ in 1..MAX_BATCH {
                match outbox.try_recv() {
                    Ok(frame) => ws.feed(Message::Text(frame)).await?,
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
                Ok(Err(_)) => Err(End::Io),
                Err(_) => Err(End::Closed(CloseCode::SLOW_CONSUMER)),
            },
        }
    }

    /// Writes one message (a reply or a ping) under the write timeout.
    async fn write(&mut self, msg: Message) -> Result<(), End> {
        match timeout(self.node.config.write_timeout, self.ws.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Io),
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
                let max = self.node.config.max_groups;
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
            ClientFrame::Join { room } => match self.node.rooms.join(&room, &self.device).await {
                Ok(Some(frame)) => frame,
                // Admitted while joining: the `admitted` frame is on its way.
                Ok(None) => return Ok(()),
                Err(refused) => {
                    self.node
                        .metrics
                        .frames_rejected
                        .with_label_values(&[refused.code.as_str()])
                        .inc();
                    ServerFrame::Error {
                        code: refused.code,
                        message: refused.message,
                    }
                }
            },
            ClientFrame::Leave { room } => match self.node.rooms.leave(&room, &self.device).await {
                Ok(frame) => frame,
                Err(refused) => ServerFrame::Error {
                    code: refused.code,
                    message: refused.message,
                },
            },
        };
        self.reply(&reply).await
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
                self.ws.close(Some(frame)).await.ok()?;
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
