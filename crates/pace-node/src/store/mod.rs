//! The store seam: every fact nodes share lives behind [`Store`].
//!
//! A node is stateless apart from its live connections; what must outlive a
//! node or be seen by several nodes (per-scope sequence numbers and the
//! fan-out of notifications today; queues, sessions and history in later
//! stages) goes through this trait. The embedded [`MemoryStore`] serves a
//! single node with no dependencies; a Redis store serves a cluster. Both
//! must behave the same, and the conformance tests in this module's tests
//! run against each.

#[cfg(test)]
mod cluster_tests;
mod memory;
mod redis;
pub(crate) mod redis_client;
#[cfg(test)]
pub(crate) mod test_redis;

use std::sync::Arc;

use async_trait::async_trait;
use pace_protocol::{Cursor, DeviceAction, DeviceId, EventName, Notification, RoomId, Target};

use serde_json::Value;

pub use crate::config::{WriteReplicas, check_redis_url};
pub use memory::MemoryStore;
pub use redis::{RedisOptions, RedisStore, acknowledge_wipe};
pub use redis_client::RedisClient;

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

pub use crate::config::HistoryLimits;

/// Why a history read could not give everything after a cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incomplete {
    /// The oldest kept notification is newer than the one after the cursor
    /// (trimmed by length or age).
    Exhausted,
    /// The cursor belongs to an earlier epoch of the scope.
    EpochChanged,
}

impl Incomplete {
    /// The `reason` of a `resumed` outcome.
    pub fn as_str(self) -> &'static str {
        match self {
            Incomplete::Exhausted => "history_exhausted",
            Incomplete::EpochChanged => "epoch_changed",
        }
    }
}

/// What one scope's history holds after a cursor.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    /// The scope's current epoch (0: nothing kept or counted).
    pub epoch: u64,
    /// The scope's last sequence number in `epoch` (0: none).
    pub head: u64,
    /// Kept notifications after the cursor, oldest first (all kept ones of
    /// the current epoch when the cursor is of another epoch).
    pub messages: Vec<Notification>,
    /// `None` when `messages` is everything after the cursor.
    pub missing: Option<Incomplete>,
}

impl History {
    /// Builds the answer for `after` from the scope's state: `kept` are the
    /// notifications the store still holds of `epoch` with a sequence number
    /// above the cursor's (when the cursor is of `epoch`) or all of them,
    /// oldest first. Notifications older than `max_age` count as gone.
    pub fn build(
        epoch: u64,
        head: u64,
        mut kept: Vec<Notification>,
        after: &Cursor,
        max_age: std::time::Duration,
    ) -> History {
        let oldest = now_ms().saturating_sub(max_age.as_millis() as u64);
        kept.retain(|n| n.sent_at_ms >= oldest && n.epoch == epoch);
        let from = if after.epoch == epoch { after.seq } else { 0 };
        kept.retain(|n| n.seq > from && n.seq <= head);
        // Kept entries are consecutive (sequence numbers only grow and
        // trimming removes the oldest), so the first one tells.
        let contiguous = head <= from || kept.first().is_some_and(|n| n.seq == from + 1);
        let from_start = after.epoch == 0 && after.seq == 0;
        let missing = if !from_start && after.epoch != epoch {
            Some(Incomplete::EpochChanged)
        } else if contiguous {
            None
        } else {
            Some(Incomplete::Exhausted)
        };
        History {
            epoch,
            head,
            messages: kept,
            missing,
        }
    }
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

    /// The node missed notifications it could not recover from the bus
    /// log: every local device must reconnect and resume (4003). Must not
    /// block.
    fn resync_all(&self);

    /// An admin acted on `device`: apply `action` to its connection if it
    /// is here (close it, or change the groups it may be in). Must not
    /// block.
    fn device_action(&self, device: &DeviceId, action: &DeviceAction);
}

/// One node as listed by `GET /api/v1/cluster`.
pub use pace_protocol::rest::NodeInfo;

/// The counters a store keeps about the cluster bus: handles into the
/// node's registry, handed over by the composition root (`server.rs`), so
/// the store depends on no metrics module.
#[derive(Debug, Clone)]
pub struct BusCounters {
    /// `pace_bus_received_total`: messages read off the bus.
    pub received: prometheus::IntCounter,
    /// `pace_bus_dropped_total`: messages the reader fell behind on.
    pub dropped: prometheus::IntCounter,
    /// `pace_bus_invalid_total`: unreadable messages skipped.
    pub invalid: prometheus::IntCounter,
    /// `pace_bus_gaps_total{outcome}`: gaps seen, repaired or not.
    pub gaps: prometheus::IntCounterVec,
    /// `pace_bus_repaired_total`: notifications recovered from the bus log.
    pub repaired: prometheus::IntCounter,
    /// `pace_store_lost_writes_total`: times this node found the store
    /// holding less than it had seen (a rewound or wiped bus sequence).
    pub lost_writes: prometheus::IntCounter,
}

#[cfg(test)]
impl BusCounters {
    /// Counters registered nowhere.
    pub fn detached() -> BusCounters {
        let counter = |name: &str| prometheus::IntCounter::new(name, name).expect("valid metric");
        BusCounters {
            received: counter("received"),
            dropped: counter("dropped"),
            invalid: counter("invalid"),
            gaps: prometheus::IntCounterVec::new(
                prometheus::Opts::new("gaps", "gaps"),
                &["outcome"],
            )
            .expect("valid metric"),
            repaired: counter("repaired"),
            lost_writes: counter("lost_writes"),
        }
    }
}

/// Failures of the store. Every variant maps to a retryable
/// `store_unavailable` for clients; details go to the log only.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or did not answer in time.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Redis failed the command (the client's error kept as the source).
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    /// A message could not be encoded (a bug: every envelope is plain data).
    #[error("could not encode a bus message: {0}")]
    Encode(#[from] serde_json::Error),
}

/// A store (bus, history, presence, claims) failure answers the
/// retryable `store_unavailable`; the source goes to the log.
impl From<StoreError> for crate::error::ApiError {
    fn from(e: StoreError) -> crate::error::ApiError {
        crate::error::ApiError::store_unavailable("store", &e)
    }
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

    /// The notifications of `target`'s scope after `after`, from the
    /// bounded history, with the scope's current position.
    async fn history(&self, target: &Target, after: &Cursor) -> Result<History, StoreError>;

    /// Claims `key` once: true the first time within `ttl`, false after
    /// (single-use proof-of-work challenges).
    async fn claim_once(&self, key: &str, ttl: std::time::Duration) -> Result<bool, StoreError>;

    /// Records that `device` connected to this node: returns the
    /// connection's cluster-wide generation and tells every other node to
    /// close older connections of the same device.
    async fn connected(&self, device: &DeviceId) -> Result<u64, StoreError>;

    /// Applies `action` to `device`'s connection on whichever node holds
    /// it (this one included).
    async fn device_action(
        &self,
        device: &DeviceId,
        action: DeviceAction,
    ) -> Result<(), StoreError>;

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

    /// When (Unix ms) a node found the store wiped under a running cluster
    /// (everything it held gone: registrations, rooms, accounts), until an
    /// admin acknowledges it; `None` when not wiped. Checking also records
    /// this node's view of the store's identity, so call it regularly. A
    /// store that cannot be wiped under the node (memory) is never wiped.
    async fn wiped_since(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
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

/// Unix time in microseconds (epochs of scope sequences).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// Stamps a draft into a notification with a fresh time-ordered id.
pub(crate) fn stamp(draft: Draft, epoch: u64, seq: u64) -> Notification {
    Notification {
        id: uuid::Uuid::now_v7().to_string(),
        scope: draft.target.scope(),
        target: draft.target.id().map(str::to_owned),
        epoch,
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
        pub resyncs: Mutex<usize>,
        pub actions: Mutex<Vec<(DeviceId, DeviceAction)>>,
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
        fn resync_all(&self) {
            *self.resyncs.lock().unwrap() += 1;
        }
        fn device_action(&self, device: &DeviceId, action: &DeviceAction) {
            self.actions
                .lock()
                .unwrap()
                .push((device.clone(), action.clone()));
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

    fn cursor(target: &Target, epoch: u64, seq: u64) -> Cursor {
        Cursor {
            scope: target.scope(),
            target: target.id().map(str::to_owned),
            epoch,
            seq,
        }
    }

    /// History replays what came after a cursor, in order, per scope; a
    /// cursor at the head gets nothing; a cursor of another epoch is told.
    /// The store must keep at least 5 notifications per scope.
    pub async fn history_after_a_cursor(store: &dyn Store) {
        tokio::time::timeout(std::time::Duration::from_secs(10), store.wait_ready())
            .await
            .expect("store ready within 10 s");
        let group = Target::Group(GroupId::parse("hist").unwrap());
        let never = Target::Device(DeviceId::parse("never-sent").unwrap());
        let mut sent = Vec::new();
        for i in 0..5 {
            sent.push(store.publish(draft(group.clone(), "h")).await.unwrap());
            // Another scope in between must not show up.
            store
                .publish(draft(Target::All, &format!("x{i}")))
                .await
                .unwrap();
        }
        let epoch = sent[0].epoch;
        assert!(epoch > 0);
        assert!(sent.iter().all(|n| n.epoch == epoch));

        let h = store
            .history(&group, &cursor(&group, epoch, 2))
            .await
            .unwrap();
        assert_eq!((h.epoch, h.head, h.missing), (epoch, 5, None));
        assert_eq!(h.messages, sent[2..].to_vec());

        let from_start = store.history(&group, &cursor(&group, 0, 0)).await.unwrap();
        assert_eq!(from_start.messages, sent);
        assert_eq!(from_start.missing, None);

        let at_head = store
            .history(&group, &cursor(&group, epoch, 5))
            .await
            .unwrap();
        assert!(at_head.messages.is_empty());
        assert_eq!(at_head.missing, None);

        let old_epoch = store
            .history(&group, &cursor(&group, epoch - 1, 3))
            .await
            .unwrap();
        assert_eq!(old_epoch.missing, Some(Incomplete::EpochChanged));
        assert_eq!(old_epoch.messages, sent, "the new epoch is replayed whole");

        let empty = store.history(&never, &cursor(&never, 0, 0)).await.unwrap();
        assert_eq!((empty.epoch, empty.head, empty.missing), (0, 0, None));
        assert!(empty.messages.is_empty());
    }

    /// A scope past its length bound no longer reaches back: the history
    /// says so. The store must keep exactly 3 notifications per scope.
    pub async fn history_is_bounded(store: &dyn Store) {
        tokio::time::timeout(std::time::Duration::from_secs(10), store.wait_ready())
            .await
            .expect("store ready within 10 s");
        let device = Target::Device(DeviceId::parse("bounded").unwrap());
        let mut sent = Vec::new();
        for _ in 0..6 {
            sent.push(store.publish(draft(device.clone(), "b")).await.unwrap());
        }
        let epoch = sent[0].epoch;
        let h = store
            .history(&device, &cursor(&device, epoch, 1))
            .await
            .unwrap();
        assert_eq!(h.missing, Some(Incomplete::Exhausted));
        assert_eq!(h.messages, sent[3..].to_vec(), "the newest 3 are kept");
        let recent = store
            .history(&device, &cursor(&device, epoch, 3))
            .await
            .unwrap();
        assert_eq!(recent.missing, None, "seq 4.. are all kept");
        assert_eq!(recent.messages, sent[3..].to_vec());
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

    /// A device action reaches the node holding the device.
    pub async fn device_actions_reach_the_node(store: &dyn Store, seen: &Recorder) {
        tokio::time::timeout(std::time::Duration::from_secs(10), store.wait_ready())
            .await
            .expect("store ready within 10 s");
        let device = DeviceId::parse("kicked").unwrap();
        let action = DeviceAction::Close { code: 4004 };
        store.device_action(&device, action.clone()).await.unwrap();
        for _ in 0..200 {
            if !seen.actions.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(seen.actions.lock().unwrap().clone(), vec![(device, action)]);
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

    /// A key can be claimed once, until its time to live passes.
    pub async fn claims_once(store: &dyn Store) {
        tokio::time::timeout(std::time::Duration::from_secs(10), store.wait_ready())
            .await
            .expect("store ready within 10 s");
        let ttl = std::time::Duration::from_millis(300);
        assert!(store.claim_once("pow:abc", ttl).await.unwrap());
        assert!(!store.claim_once("pow:abc", ttl).await.unwrap());
        assert!(store.claim_once("pow:other", ttl).await.unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        assert!(
            store.claim_once("pow:abc", ttl).await.unwrap(),
            "claims expire with their challenge"
        );
    }

    /// A healthy store says so.
    pub async fn reports_health(store: &dyn Store) {
        let h = store.health().await;
        assert!(h.up, "{h:?}");
        assert_eq!(h.kind, store.kind());
    }
}
