//! The node's shared state: one cheap-to-clone handle over everything the
//! HTTP handlers and connection tasks need.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use pace_protocol::{DeviceId, Notification, RoomId, ServerFrame, Target};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::task::TaskTracker;

use crate::config::NodeConfig;
use crate::metrics::Metrics;
use crate::store::{Local, SharedStore};
use crate::ws::hub::Hub;

/// Shared state of one node.
#[derive(Debug)]
pub struct Node {
    /// Validated configuration.
    pub config: NodeConfig,
    /// Local connections.
    pub hub: Arc<Hub>,
    /// Shared facts and cluster fan-out.
    pub store: SharedStore,
    /// Metrics registry and handles.
    pub metrics: Metrics,
    /// The waiting room engine.
    pub rooms: Arc<crate::rooms::Rooms>,
    /// Admission token keys (signing and verification, JWKS).
    pub keys: Arc<crate::admission::KeySet>,
    /// Tenants and admin accounts (admin login, admin API).
    pub accounts: crate::accounts::SharedAccountStore,
    /// Registered devices.
    pub devices: crate::devices::SharedDeviceRegistry,
    /// An enterprise's device token issuer, when configured.
    pub external_issuer: Option<Arc<crate::devices::ExternalIssuer>>,
    /// True from SIGTERM/SIGINT on: new devices are refused, `/ready` is 503.
    /// Shared with the WebSocket layer ([`crate::ws::Deps`]).
    draining: Arc<AtomicBool>,
    /// True once the node has started (store reachable, listener open).
    started: AtomicBool,
    /// Connection slots taken, including handshakes in flight, so the
    /// connection limit holds under a burst of concurrent handshakes.
    slots: AtomicUsize,
    /// Device connection tasks, awaited while draining.
    pub connections: TaskTracker,
    /// Handshakes per source address per second.
    pub handshakes: crate::limits::WindowLimiter<std::net::IpAddr>,
    /// Connections not yet upgraded per source address; the descriptor
    /// budget of the accept loop.
    pub sockets: crate::pending::Sockets,
    /// Tenants' browser origins, cached (origin checks must not read the
    /// store on every handshake).
    pub origins: crate::origins::OriginCache,
    /// The rooms' public audit-log exports, rendered once per checkpoint.
    pub audit_logs: crate::audit::PublicLogs,
    /// What the WebSocket layer (handshakes, device sessions, the admin
    /// feed) uses, built once here.
    pub ws: Arc<crate::ws::Deps>,
}

/// What a node is built from (besides its configuration).
#[derive(Debug)]
pub struct NodeParts {
    /// Local connections.
    pub hub: Arc<Hub>,
    /// Shared facts and cluster fan-out.
    pub store: SharedStore,
    /// Metrics registry and handles.
    pub metrics: Metrics,
    /// The waiting room engine.
    pub rooms: Arc<crate::rooms::Rooms>,
    /// Signing keys.
    pub keys: Arc<crate::admission::KeySet>,
    /// Tenants and admins.
    pub accounts: crate::accounts::SharedAccountStore,
    /// Registered devices.
    pub devices: crate::devices::SharedDeviceRegistry,
    /// An enterprise's device token issuer.
    pub external_issuer: Option<Arc<crate::devices::ExternalIssuer>>,
}

/// A shared handle to the node.
pub type NodeRef = Arc<Node>;

impl Node {
    /// A node over `store`, not yet started.
    pub fn new(config: NodeConfig, parts: NodeParts) -> Node {
        let NodeParts {
            hub,
            store,
            metrics,
            rooms,
            keys,
            accounts,
            devices,
            external_issuer,
        } = parts;
        let handshakes = crate::limits::WindowLimiter::new(
            config.handshakes_per_address,
            std::time::Duration::from_secs(1),
        );
        let origins =
            crate::origins::OriginCache::new(crate::origins::CACHE_TTL, config.store_timeout);
        let sockets = crate::pending::Sockets::new(
            config.max_pending_per_address,
            crate::pending::Sockets::budget(config.open_files, config.fd_reserve),
            metrics.connections_pending.clone(),
        );
        let draining = Arc::new(AtomicBool::new(false));
        let ws = Arc::new(crate::ws::Deps {
            hub: hub.clone(),
            rooms: rooms.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            settings: crate::ws::Settings::of(&config),
            draining: draining.clone(),
        });
        Node {
            ws,
            handshakes,
            sockets,
            origins,
            config,
            hub,
            store,
            metrics,
            rooms,
            keys,
            accounts,
            devices,
            external_issuer,
            draining,
            started: AtomicBool::new(false),
            slots: AtomicUsize::new(0),
            connections: TaskTracker::new(),
            audit_logs: crate::audit::PublicLogs::default(),
        }
    }

    /// Whether the node accepts new devices.
    pub fn is_ready(&self) -> bool {
        self.started.load(Ordering::Acquire) && !self.is_draining()
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Marks the node started.
    pub fn set_started(&self) {
        self.started.store(true, Ordering::Release);
        self.metrics.ready.set(i64::from(self.is_ready()));
    }

    /// Starts draining; returns false if it already was.
    pub fn begin_drain(&self) -> bool {
        let first = !self.draining.swap(true, Ordering::AcqRel);
        self.metrics.ready.set(0);
        first
    }

    /// Takes a connection slot, or returns `None` when the node is full.
    pub fn take_slot(self: &Arc<Self>) -> Option<Slot> {
        let prev = self.slots.fetch_add(1, Ordering::AcqRel);
        if prev >= self.config.max_connections {
            self.slots.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(self.clone()))
    }
}

/// A taken connection slot; given back on drop.
#[derive(Debug)]
pub struct Slot(NodeRef);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.slots.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Delivers notifications to this node's devices: serializes each once and
/// hands the shared frame to the hub.
#[derive(Debug)]
pub struct LocalFanout {
    /// The local hub.
    pub hub: Arc<Hub>,
    /// For `pace_messages_delivered_total`.
    pub metrics: Metrics,
    /// Local waiting devices (an admitted device stops getting positions).
    pub waiters: Arc<crate::rooms::Waiters>,
}

impl Local for LocalFanout {
    fn admitted(&self, room: &RoomId, device: &DeviceId, frame: &str) {
        // Only a device waiting here gets it, once; a device that is not
        // (reconnected elsewhere, or already told) gets it from `join`.
        if self.waiters.remove(room, device) {
            self.hub.deliver(
                &Target::Device(device.clone()),
                &Utf8Bytes::from(frame.to_owned()),
            );
        }
    }

    fn resync_all(&self) {
        let n = self.hub.close_all(pace_protocol::CloseCode::RESYNC);
        tracing::warn!(
            devices = n,
            "missed notifications could not be recovered; devices told to reconnect and resume"
        );
    }

    fn device_action(&self, device: &DeviceId, action: &pace_protocol::DeviceAction) {
        match action {
            pace_protocol::DeviceAction::Close { code } => {
                if self
                    .hub
                    .close_device(device, pace_protocol::CloseCode(*code))
                {
                    tracing::info!(%device, code, "device connection closed by an admin");
                }
            }
            pace_protocol::DeviceAction::Groups { groups } => {
                if let Some(lost) = self.hub.regrant(device, groups.clone())
                    && !lost.is_empty()
                {
                    tracing::info!(%device, ?lost, "device left the groups it lost");
                }
            }
        }
    }

    fn evict_older(&self, device: &DeviceId, generation: u64) {
        if self.hub.evict_older(device, generation) {
            self.metrics.evicted_remote.inc();
        }
    }

    fn deliver(&self, n: &Notification) {
        let target = match Target::new(n.scope, n.target.as_deref()) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(id = %n.id, error = %e, "dropping notification with an invalid target");
                return;
            }
        };
        let frame = Utf8Bytes::from(ServerFrame::Notification(n.clone()).to_json());
        let delivery = self.hub.deliver(&target, &frame);
        if delivery.queued > 0 {
            self.metrics
                .messages_delivered
                .with_label_values(&[self.metrics.event_label(n.event.as_str())])
                .inc_by(delivery.queued as u64);
        }
    }
}
