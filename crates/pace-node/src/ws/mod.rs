//! The WebSocket layer: everything between a device's (or an admin
//! console's) upgraded socket and the domain below it.
//!
//! - [`handshake`]: the upgrade checks, departments and the resume
//!   announcement, decided before the `101`.
//! - [`session`]: the task that owns one device's socket after the upgrade
//!   (generic over the socket, so a unit test drives it without one).
//! - [`resume`]: the `resume` frame: history replay and dropping the live
//!   frames the replay already carried.
//! - [`hub`]: this node's devices and groups, bounded delivery.
//! - [`fanout`]: what arrives over the cluster bus, handed to the hub.
//! - [`backlog`]: the pong backlog of a device that sends and does not read.
//! - [`sse`]: the HTTP streaming transport (SSE + POST) under the same session.
//! - [`admin`]: the admin console's live feed.

pub mod admin;
pub mod backlog;
pub mod fanout;
pub mod handshake;
pub mod hub;
pub mod resume;
pub mod session;
pub mod sse;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use pace_protocol::{DeviceId, GroupId};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::auth::{Access, Grants};
use crate::config::NodeConfig;
use crate::metrics::Metrics;
use crate::queue::DeviceStatus;
use crate::rooms::Rooms;
use crate::store::{SharedStore, now_ms};
use crate::ws::hub::Hub;

/// What the WebSocket layer uses, built once by the composition root and
/// shared by every handshake and session (as [`Rooms::new`] takes its
/// parts): no session reaches the rest of the node.
#[derive(Debug)]
pub struct Deps {
    /// This node's devices and groups: sessions register and read from it.
    pub hub: Arc<Hub>,
    /// Joins, leaves and queue places (room channels are granted by place).
    pub rooms: Arc<Rooms>,
    /// Connection generations and the history a resume replays.
    pub store: SharedStore,
    /// Connection, frame and resume counters.
    pub metrics: Metrics,
    /// The settings sessions read.
    pub settings: Settings,
    /// Set when the node drains: a device upgraded just then is told to
    /// reconnect elsewhere. Shared with the node, which sets it.
    pub draining: Arc<AtomicBool>,
}

impl Deps {
    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Whether `device` may join `group` now: its credential's `grants`
    /// allow it, or, for a room's channel, the device holds a place in
    /// that room (waiting or admitted).
    pub async fn may_join(&self, device: &DeviceId, grants: &Grants, group: &GroupId) -> bool {
        match grants.access(group) {
            Access::Allowed => true,
            Access::Refused => false,
            Access::IfPlacedIn(room) => matches!(
                self.rooms.queue.status(&room, device, now_ms()).await,
                Ok(DeviceStatus::Waiting(_) | DeviceStatus::Admitted(_))
            ),
        }
    }
}

/// The configuration values of the WebSocket layer (from [`NodeConfig`]).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Named in `welcome`.
    pub node_id: String,
    /// Largest frame a device may send (`welcome` says it).
    pub max_message_bytes: usize,
    /// Frames queued per connection before it is a slow consumer.
    pub send_queue: usize,
    /// tungstenite's read buffer.
    pub ws_read_buffer: usize,
    /// Bytes buffered before tungstenite writes.
    pub ws_write_buffer: usize,
    /// The write buffer's cap; also the pong backlog's.
    pub ws_max_write_buffer: usize,
    /// Quiet time before the node pings a device.
    pub ping_interval: Duration,
    /// Time a pinged device has to answer.
    pub ping_timeout: Duration,
    /// Keep-alive comment interval of an HTTP stream.
    pub sse_heartbeat: Duration,
    /// A write (or a batch of them) taking longer is a slow consumer.
    pub write_timeout: Duration,
    /// How long a draining node waits for devices to close.
    pub drain_grace: Duration,
    /// Groups per device (a room channel is one more).
    pub max_groups: usize,
    /// How long live frames wait for an announced `resume`.
    pub resume_hold: Duration,
}

impl Settings {
    /// The WebSocket layer's values of `config`.
    pub fn of(config: &NodeConfig) -> Settings {
        Settings {
            node_id: config.node_id.clone(),
            max_message_bytes: config.limits.max_message_bytes,
            send_queue: config.limits.send_queue,
            ws_read_buffer: config.limits.ws_read_buffer,
            ws_write_buffer: config.limits.ws_write_buffer,
            ws_max_write_buffer: config.limits.ws_max_write_buffer,
            ping_interval: config.limits.ping_interval,
            ping_timeout: config.limits.ping_timeout,
            sse_heartbeat: config.limits.sse_heartbeat,
            write_timeout: config.limits.write_timeout,
            drain_grace: config.limits.drain_grace,
            max_groups: config.limits.max_groups,
            resume_hold: config.devices.resume_hold,
        }
    }

    /// The tungstenite settings every device and admin connection uses.
    pub fn websocket(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.ws_read_buffer)
            .write_buffer_size(self.ws_write_buffer)
            .max_write_buffer_size(self.ws_max_write_buffer)
            .max_message_size(Some(self.max_message_bytes))
            .max_frame_size(Some(self.max_message_bytes))
    }
}

/// The node's connection slots (`--max-connections`), taken by each
/// handshake in flight and each device session, so the limit holds under
/// a burst of concurrent handshakes.
#[derive(Debug)]
pub struct Slots {
    taken: Arc<AtomicUsize>,
    max: usize,
}

impl Slots {
    /// `max` slots, none taken.
    pub fn new(max: usize) -> Slots {
        Slots {
            taken: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// Takes a slot, or returns `None` when the node is full.
    pub fn take(&self) -> Option<Slot> {
        let prev = self.taken.fetch_add(1, Ordering::AcqRel);
        if prev >= self.max {
            self.taken.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(self.taken.clone()))
    }
}

/// A taken connection slot; given back on drop.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
