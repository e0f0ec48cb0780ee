//! The store seam: every fact nodes share lives behind [`Store`].
//!
//! A node is stateless apart from its live connections; what must outlive a
//! node or be seen by several nodes (per-scope sequence numbers and the
//! fan-out of notifications today; queues, sessions and history in later
//! stages) goes through this trait. The embedded [`MemoryStore`] serves a
//! single node with no dependencies; a Redis store serves a cluster. Both
//! must behave the same, and the conformance tests in this module's tests
//! run against each.

mod memory;
mod redis;
#[cfg(test)]
pub(crate) mod test_redis;

use std::sync::Arc;

use async_trait::async_trait;
use pace_protocol::{DeviceId, EventName, Notification, RoomId, Target};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use memory::MemoryStore;
pub use redis::{RedisOptions, RedisStore, check_url as check_redis_url};

/// A notification before the store assigns its sequence number.
#[derive(Debug, Clone)]
pub struct Draft {
    /// Audience.
    pub target: Target,
    /// Event name.
    pub event: EventName,
    /// Application payload.
    pub data: Value,
}

/// What a store calls on this node when the cluster says something about
/// its devices.
pub trait Local: Send + Sync + 'static {
    /// Delivers `n` to every matching local device. Must not block.
    fn deliver(&self, n: &Notification);

    /// `device` connected elsewhere with connection `generation`: close a
    /// local connection of it that is older. Must not block.
    fn evict_older(&self, device: &DeviceId, generation: u64);

    /// `device` was admitted to `room`: send it `frame` if it is connected
    /// here. Must not block.
    fn admitted(&self, room: &RoomId, device: &DeviceId, frame: &str);
}

/// One node as listed by `GET /api/v1/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's id.
    pub node_id: String,
    /// Address devices and the gateway reach it on.
    pub address: String,
    /// Devices connected to it at its last heartbeat.
    pub connections: u64,
    /// Whether it accepted new devices at its last heartbeat.
    pub ready: bool,
    /// Its last heartbeat, Unix milliseconds.
    pub last_heartbeat_ms: u64,
}

/// Failures of the store. Every variant maps to a retryable
/// `store_unavailable` for clients; details go to the log only.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or did not answer in time.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// The store's health as reported by `/ready` and `pace_store_up`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreHealth {
    /// `memory` or `redis`.
    pub kind: &'static str,
    /// Whether the store answers now.
    pub up: bool,
    /// Why it is down, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Shared state and cluster fan-out.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// `memory` or `redis`.
    fn kind(&self) -> &'static str;

    /// Checks that the store answers.
    async fn health(&self) -> StoreHealth;

    /// Resolves once the store has been reached for the first time (the
    /// node reports not-ready until then).
    async fn wait_ready(&self);

    /// Assigns the next sequence number of the draft's scope, stamps an id
    /// and time, and fans the notification out to every node (this one
    /// included, through its [`Local`]). Per scope, notifications reach
    /// each node in sequence order.
    async fn publish(&self, draft: Draft) -> Result<Notification, StoreError>;

    /// Records that `device` connected to this node: returns the
    /// connection's cluster-wide generation and tells every other node to
    /// close older connections of the same device.
    async fn connected(&self, device: &DeviceId) -> Result<u64, StoreError>;

    /// Sends an `admitted` frame to `device` on whichever node holds it.
    async fn send_admitted(
        &self,
        room: &RoomId,
        device: &DeviceId,
        frame: &str,
    ) -> Result<(), StoreError>;

    /// Publishes this node's presence; nodes that stop heart-beating age
    /// out of [`Store::nodes`].
    async fn heartbeat(&self, info: &NodeInfo) -> Result<(), StoreError>;

    /// The live nodes of the cluster, ordered by node id.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError>;
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// A store shared by the node's tasks.
pub type SharedStore = Arc<dyn Store>;

/// Stamps a draft into a notification with a fresh time-ordered id.
pub(crate) fn stamp(draft: Draft, seq: u64) -> Notification {
    Notification {
        id: uuid::Uuid::now_v7().to_string(),
        scope: draft.target.scope(),
        target: draft.target.id().map(str::to_owned),
        seq,
        event: draft.event,
        data: draft.data,
        sent_at_ms: now_ms(),
    }
}

/// The conformance suite every [`Store`] passes. Each store's tests call
/// these functions with a fresh store whose fan-out records into `seen`.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;
    use pace_protocol::{DeviceId, GroupId};
    use std::sync::Mutex;

    /// A [`Local`] that records what it was given.
    #[derive(Default)]
    pub struct Recorder {
        pub delivered: Mutex<Vec<Notification>>,
        pub evicted: Mutex<Vec<(DeviceId, u64)>>,
        pub admitted: Mutex<Vec<(RoomId, DeviceId, String)>>,
    }

    impl Local for Recorder {
        fn deliver(&self, n: &Notification) {
            self.delivered.lock().unwrap().push(n.clone());
        }
        fn evict_older(&self, device: &DeviceId, generation: u64) {
            self.evicted
                .lock()
                .unwrap()
                .push((device.clone(), generation));
        }
        fn admitted(&self, room: &RoomId, device: &DeviceId, frame: &str) {
            self.admitted
                .lock()
                .unwrap()
                .push((room.clone(), device.clone(), frame.to_owned()));
        }
    }

    impl Recorder {
        /// Waits (bounded) until `n` notifications were delivered.
        pub async fn wait_delivered(&self, n: usize) -> Vec<Notification> {
            for _ in 0..200 {
                let got = self.delivered.lock().unwrap().clone();
                if got.len() >= n {
                    return got;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            self.delivered.lock().unwrap().clone()
        }
    }

    fn draft(target: Target, event: &str) -> Draft {
        Draft {
            target,
            event: EventName::parse(event).unwrap(),
            data: serde_json::json!({"e": event}),
        }
    }

    /// Sequence numbers count per scope from 1, ids are unique, and every
    /// published notification is fanned out once, with its fields intact.
    pub async fn sequences_are_per_scope(store: &dyn Store, seen: &Recorder) {
        tokio::time::timeout(std::time::Duration::from_secs(10), store.wait_ready())
            .await
            .expect("store ready within 10 s");
        let group = Target::Group(GroupId::parse("sales").unwrap());
        let device = Target::Device(DeviceId::parse("dev-1").unwrap());
        let a1 = store.publish(draft(Target::All, "a")).await.unwrap();
        let g1 = store.publish(draft(group.clone(), "g")).await.unwrap();
        let a2 = store.publish(draft(Target::All, "a")).await.unwrap();
        let d1 = store.publish(draft(device.clone(), "d")).await.unwrap();
        let g2 = store.publish(draft(group, "g")).await.unwrap();
        assert_eq!([a1.seq, a2.seq, g1.seq, g2.seq, d1.seq], [1, 2, 1, 2, 1]);
        let ids: std::collections::HashSet<_> = [&a1, &a2, &g1, &g2, &d1]
            .iter()
            .map(|n| n.id.clone())
            .collect();
        assert_eq!(ids.len(), 5);
        assert_eq!(g1.target.as_deref(), Some("sales"));
        assert_eq!(d1.data, serde_json::json!({"e": "d"}));
        let seen = seen.wait_delivered(5).await;
        assert_eq!(seen, vec![a1, g1, a2, d1, g2]);
    }

    /// An admission reaches the node holding the device.
    pub async fn admissions_reach_the_device(store: &dyn Store, seen: &Recorder) {
        tokio::time::timeout(std::time::Duration::from_secs(10), store.wait_ready())
            .await
            .expect("store ready within 10 s");
        let room = RoomId::parse("r").unwrap();
        let device = DeviceId::parse("lucky").unwrap();
        store
            .send_admitted(&room, &device, "{\"type\":\"admitted\"}")
            .await
            .unwrap();
        for _ in 0..200 {
            if !seen.admitted.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            seen.admitted.lock().unwrap().clone(),
            vec![(room, device, "{\"type\":\"admitted\"}".to_owned())]
        );
    }

    /// Connection generations increase, cluster-wide.
    pub async fn generations_increase(store: &dyn Store) {
        tokio::time::timeout(std::time::Duration::from_secs(10), store.wait_ready())
            .await
            .expect("store ready within 10 s");
        let d = DeviceId::parse("gen-dev").unwrap();
        let a = store.connected(&d).await.unwrap();
        let b = store.connected(&d).await.unwrap();
        assert!(b > a && a > 0, "{a} then {b}");
    }

    /// A heart-beating node is listed; nodes are ordered by id.
    pub async fn presence_lists_nodes(store: &dyn Store) {
        tokio::time::timeout(std::time::Duration::from_secs(10), store.wait_ready())
            .await
            .expect("store ready within 10 s");
        let info = |id: &str, n| NodeInfo {
            node_id: id.into(),
            address: "127.0.0.1:1".into(),
            connections: n,
            ready: true,
            last_heartbeat_ms: now_ms(),
        };
        store.heartbeat(&info("node-b", 2)).await.unwrap();
        store.heartbeat(&info("node-a", 1)).await.unwrap();
        let nodes = store.nodes().await.unwrap();
        let ids: Vec<_> = nodes.iter().map(|n| n.node_id.as_str()).collect();
        assert!(
            ids.contains(&"node-a") && ids.contains(&"node-b"),
            "{ids:?}"
        );
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        let b = nodes.iter().find(|n| n.node_id == "node-b").unwrap();
        assert_eq!(b.connections, 2);
    }

    /// A healthy store says so.
    pub async fn reports_health(store: &dyn Store) {
        let h = store.health().await;
        assert!(h.up, "{h:?}");
        assert_eq!(h.kind, store.kind());
    }
}
