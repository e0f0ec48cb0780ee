//! The embedded in-memory store: one node, no dependencies.
//!
//! Sequence assignment and local fan-out happen under one lock, so per
//! scope every device sees notifications in sequence order even when
//! several notify requests race.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pace_protocol::{DeviceId, Notification, RoomId};

use super::{Draft, Local, NodeInfo, Store, StoreError, StoreHealth, stamp};

/// The in-memory [`Store`].
pub struct MemoryStore {
    /// Last sequence number per scope key (`all`, `group:<id>`, `device:<id>`).
    sequences: Mutex<HashMap<String, u64>>,
    /// This node's devices: with one node, fan-out is local delivery.
    local: Arc<dyn Local>,
    /// Last connection generation handed out.
    generation: AtomicU64,
    /// Presence of the (single) node, by id.
    nodes: Mutex<BTreeMap<String, NodeInfo>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// A fresh store delivering to `local`.
    pub fn new(local: Arc<dyn Local>) -> MemoryStore {
        MemoryStore {
            sequences: Mutex::default(),
            local,
            generation: AtomicU64::new(0),
            nodes: Mutex::default(),
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn health(&self) -> StoreHealth {
        StoreHealth {
            kind: self.kind(),
            up: true,
            error: None,
        }
    }

    async fn publish(&self, draft: Draft) -> Result<Notification, StoreError> {
        let mut sequences = self.sequences.lock().unwrap_or_else(|p| p.into_inner());
        let seq = sequences.entry(draft.target.scope_key()).or_insert(0);
        *seq += 1;
        let n = stamp(draft, *seq);
        // Delivery only queues frames (never waits), so holding the lock
        // here is short and keeps per-scope order.
        self.local.deliver(&n);
        Ok(n)
    }

    async fn wait_ready(&self) {}

    async fn connected(&self, _device: &DeviceId) -> Result<u64, StoreError> {
        // One node: the hub already replaced any older local connection.
        Ok(self.generation.fetch_add(1, Ordering::Relaxed) + 1)
    }

    async fn send_admitted(
        &self,
        room: &RoomId,
        device: &DeviceId,
        frame: &str,
    ) -> Result<(), StoreError> {
        self.local.admitted(room, device, frame);
        Ok(())
    }

    async fn heartbeat(&self, info: &NodeInfo) -> Result<(), StoreError> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes.insert(info.node_id.clone(), info.clone());
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        Ok(nodes.values().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::conformance::{self, Recorder};
    use super::*;

    #[tokio::test]
    async fn conformance_sequences() {
        let rec = Arc::new(Recorder::default());
        let store = MemoryStore::new(rec.clone());
        conformance::sequences_are_per_scope(&store, &rec).await;
    }

    #[tokio::test]
    async fn conformance_health() {
        conformance::reports_health(&MemoryStore::new(Arc::new(Recorder::default()))).await;
    }

    #[tokio::test]
    async fn conformance_admissions() {
        let rec = Arc::new(Recorder::default());
        conformance::admissions_reach_the_device(&MemoryStore::new(rec.clone()), &rec).await;
    }

    #[tokio::test]
    async fn conformance_generations() {
        conformance::generations_increase(&MemoryStore::new(Arc::new(Recorder::default()))).await;
    }

    #[tokio::test]
    async fn conformance_presence() {
        conformance::presence_lists_nodes(&MemoryStore::new(Arc::new(Recorder::default()))).await;
    }
}
