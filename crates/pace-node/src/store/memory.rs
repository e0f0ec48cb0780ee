//! The embedded in-memory store: one node, no dependencies.
//!
//! Sequence assignment and local fan-out happen under one lock, so per
//! scope every device sees notifications in sequence order even when
//! several notify requests race.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pace_protocol::Notification;

use super::{Draft, Fanout, Store, StoreError, StoreHealth, stamp};

/// The in-memory [`Store`].
pub struct MemoryStore {
    /// Last sequence number per scope key (`all`, `group:<id>`, `device:<id>`).
    sequences: Mutex<HashMap<String, u64>>,
    /// This node's devices: with one node, fan-out is local delivery.
    fanout: Arc<dyn Fanout>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// A fresh store delivering to `fanout`.
    pub fn new(fanout: Arc<dyn Fanout>) -> MemoryStore {
        MemoryStore {
            sequences: Mutex::default(),
            fanout,
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
        self.fanout.deliver(&n);
        Ok(n)
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
}
