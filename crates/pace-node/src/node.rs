//! The node's shared state: one cheap-to-clone handle over the parts the
//! HTTP layer and the server loop use. The composition root
//! ([`crate::app`]) builds the parts; the domain below never sees this
//! handle (each of its modules takes its own dependencies).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::task::TaskTracker;

use crate::config::NodeConfig;
use crate::metrics::Metrics;
use crate::store::SharedStore;
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
    /// Who is asking and what they may do (the authorization step).
    pub auth: Arc<crate::auth::Authority>,
    /// True from SIGTERM/SIGINT on: new devices are refused, `/ready` is 503.
    /// Shared with the WebSocket layer ([`crate::ws::Deps`]).
    draining: Arc<AtomicBool>,
    /// True once the node has started (store reachable, listener open).
    started: AtomicBool,
    /// Connection slots, including handshakes in flight.
    slots: crate::ws::Slots,
    /// Device connection tasks, awaited while draining.
    pub connections: TaskTracker,
    /// Handshakes per source address per second.
    pub handshakes: crate::limits::WindowLimiter<std::net::IpAddr>,
    /// Connections not yet upgraded per source address; the descriptor
    /// budget of the accept loop.
    pub sockets: crate::pending::Sockets,
    /// Browser origins: the cluster's list and tenants' lists, cached
    /// (origin checks must not read the store on every handshake).
    pub origins: crate::origins::Policy,
    /// The rooms' public audit-log exports, rendered once per checkpoint.
    pub audit_logs: crate::audit::PublicLogs,
    /// What the WebSocket layer (handshakes, device sessions, the admin
    /// feed) uses.
    pub ws: Arc<crate::ws::Deps>,
}

/// What a node is made of (besides its configuration), built by
/// [`crate::app::build`].
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
    /// The authorization step's dependencies.
    pub auth: Arc<crate::auth::Authority>,
    /// The origin policy.
    pub origins: crate::origins::Policy,
    /// The WebSocket layer's dependencies.
    pub ws: Arc<crate::ws::Deps>,
    /// Handshakes per source address per second.
    pub handshakes: crate::limits::WindowLimiter<std::net::IpAddr>,
    /// Connections not yet upgraded per source address.
    pub sockets: crate::pending::Sockets,
    /// Connection slots (`--max-connections`).
    pub slots: crate::ws::Slots,
    /// The drain flag the WebSocket layer shares.
    pub draining: Arc<AtomicBool>,
}

/// A shared handle to the node.
pub type NodeRef = Arc<Node>;

impl Node {
    /// A node of `parts`, not yet started.
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
            auth,
            origins,
            ws,
            handshakes,
            sockets,
            slots,
            draining,
        } = parts;
        Node {
            config,
            hub,
            store,
            metrics,
            rooms,
            keys,
            accounts,
            devices,
            external_issuer,
            auth,
            draining,
            started: AtomicBool::new(false),
            slots,
            connections: TaskTracker::new(),
            handshakes,
            sockets,
            origins,
            audit_logs: crate::audit::PublicLogs::default(),
            ws,
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
    pub fn take_slot(&self) -> Option<crate::ws::Slot> {
        self.slots.take()
    }
}
