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

use std::sync::Arc;

use async_trait::async_trait;
use pace_protocol::{EventName, Notification, Target};
use serde_json::Value;

pub use memory::MemoryStore;

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

/// Where a store hands notifications for this node's devices.
pub trait Fanout: Send + Sync + 'static {
    /// Delivers `n` to every matching local device. Must not block.
    fn deliver(&self, n: &Notification);
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

    /// Assigns the next sequence number of the draft's scope, stamps an id
    /// and time, and fans the notification out to every node (this one
    /// included, through its [`Fanout`]). Per scope, notifications reach
    /// each node in sequence order.
    async fn publish(&self, draft: Draft) -> Result<Notification, StoreError>;
}

/// A store shared by the node's tasks.
pub type SharedStore = Arc<dyn Store>;

/// Stamps a draft into a notification with a fresh time-ordered id.
pub(crate) fn stamp(draft: Draft, seq: u64) -> Notification {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Notification {
        id: uuid::Uuid::now_v7().to_string(),
        scope: draft.target.scope(),
        target: draft.target.id().map(str::to_owned),
        seq,
        event: draft.event,
        data: draft.data,
        sent_at_ms: now.as_millis() as u64,
    }
}

/// The conformance suite every [`Store`] passes. Each store's tests call
/// these functions with a fresh store whose fan-out records into `seen`.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;
    use pace_protocol::{DeviceId, GroupId};
    use std::sync::Mutex;

    /// A fan-out that records what it was given.
    #[derive(Default)]
    pub struct Recorder(pub Mutex<Vec<Notification>>);

    impl Fanout for Recorder {
        fn deliver(&self, n: &Notification) {
            self.0.lock().unwrap().push(n.clone());
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
        let seen = seen.0.lock().unwrap().clone();
        assert_eq!(seen, vec![a1, g1, a2, d1, g2]);
    }

    /// A healthy store says so.
    pub async fn reports_health(store: &dyn Store) {
        let h = store.health().await;
        assert!(h.up, "{h:?}");
        assert_eq!(h.kind, store.kind());
    }
}
