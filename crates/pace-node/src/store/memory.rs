//! The embedded in-memory store: one node, no dependencies.
//!
//! Sequence assignment and local fan-out happen under one lock, so per
//! scope every device sees notifications in sequence order even when
//! several notify requests race.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pace_protocol::{Cursor, DeviceId, Notification, RoomId, Target};

use super::{
    Draft, History, HistoryLimits, Local, NodeInfo, Store, StoreError, StoreHealth, now_ms, now_us,
    stamp,
};

/// Publishes between sweeps of idle scopes' histories.
const SWEEP_EVERY: u64 = 1024;

/// One scope's sequence and kept notifications.
struct ScopeLog {
    epoch: u64,
    seq: u64,
    kept: VecDeque<Notification>,
}

#[derive(Default)]
struct Logs {
    scopes: HashMap<String, ScopeLog>,
    /// Last epoch handed out, so two scopes created in the same
    /// microsecond still get distinct, increasing epochs.
    last_epoch: u64,
    publishes: u64,
}

/// The in-memory [`Store`].
pub struct MemoryStore {
    /// Sequence and history per scope key (`all`, `group:<id>`, `device:<id>`).
    logs: Mutex<Logs>,
    limits: HistoryLimits,
    /// This node's devices: with one node, fan-out is local delivery.
    local: Arc<dyn Local>,
    /// Last connection generation handed out.
    generation: AtomicU64,
    /// Presence of the (single) node, by id.
    nodes: Mutex<BTreeMap<String, NodeInfo>>,
    /// Claimed keys: key -> (claims, expiry ms).
    marks: Mutex<HashMap<String, (u64, u64)>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// A fresh store delivering to `local`, keeping `limits` of history.
    pub fn new(local: Arc<dyn Local>, limits: HistoryLimits) -> MemoryStore {
        MemoryStore {
            logs: Mutex::default(),
            limits,
            local,
            generation: AtomicU64::new(0),
            nodes: Mutex::default(),
            marks: Mutex::default(),
        }
    }

    /// Counts a claim of `key` until it expires; returns the count.
    fn mark(&self, key: &str, window: std::time::Duration) -> u64 {
        let now = now_ms();
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        if marks.len() >= 1024 && marks.len().is_multiple_of(256) {
            marks.retain(|_, (_, until)| *until > now);
        }
        let entry = marks.entry(key.to_owned()).or_insert((0, 0));
        if entry.1 <= now {
            *entry = (0, now + window.as_millis() as u64);
        }
        entry.0 += 1;
        entry.0
    }

    fn trim(kept: &mut VecDeque<Notification>, limits: HistoryLimits, now: u64) {
        let oldest = now.saturating_sub(limits.max_age.as_millis() as u64);
        while kept.len() > limits.max_len || kept.front().is_some_and(|n| n.sent_at_ms < oldest) {
            kept.pop_front();
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
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        let logs = &mut *logs;
        let key = draft.target.scope_key();
        let log = match logs.scopes.get_mut(&key) {
            Some(log) => log,
            None => {
                logs.last_epoch = now_us().max(logs.last_epoch + 1);
                logs.scopes.entry(key).or_insert(ScopeLog {
                    epoch: logs.last_epoch,
                    seq: 0,
                    kept: VecDeque::new(),
                })
            }
        };
        log.seq += 1;
        let n = stamp(draft, log.epoch, log.seq);
        log.kept.push_back(n.clone());
        Self::trim(&mut log.kept, self.limits, n.sent_at_ms);
        logs.publishes += 1;
        if logs.publishes.is_multiple_of(SWEEP_EVERY) {
            // Idle scopes (a device that got one message) must not keep
            // their history forever; their counters stay, like Redis's.
            let now = now_ms();
            for log in logs.scopes.values_mut() {
                Self::trim(&mut log.kept, self.limits, now);
            }
        }
        // Delivery only queues frames (never waits), so holding the lock
        // here is short and keeps per-scope order.
        self.local.deliver(&n);
        Ok(n)
    }

    async fn history(&self, target: &Target, after: &Cursor) -> Result<History, StoreError> {
        let logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        let Some(log) = logs.scopes.get(&target.scope_key()) else {
            return Ok(History::build(0, 0, Vec::new(), after, self.limits.max_age));
        };
        let from = if after.epoch == log.epoch {
            after.seq
        } else {
            0
        };
        let kept = log.kept.iter().filter(|n| n.seq > from).cloned().collect();
        Ok(History::build(
            log.epoch,
            log.seq,
            kept,
            after,
            self.limits.max_age,
        ))
    }

    async fn wait_ready(&self) {}

    async fn claim_once(&self, key: &str, ttl: std::time::Duration) -> Result<bool, StoreError> {
        Ok(self.mark(key, ttl) == 1)
    }

    async fn connected(&self, _device: &DeviceId) -> Result<u64, StoreError> {
        // One node: the hub already replaced any older local connection.
        Ok(self.generation.fetch_add(1, Ordering::Relaxed) + 1)
    }

    async fn device_action(
        &self,
        device: &DeviceId,
        action: pace_protocol::DeviceAction,
    ) -> Result<(), StoreError> {
        self.local.device_action(device, &action);
        Ok(())
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
        let store = MemoryStore::new(rec.clone(), HistoryLimits::default());
        conformance::sequences_are_per_scope(&store, &rec).await;
    }

    #[tokio::test]
    async fn conformance_history() {
        let store = MemoryStore::new(Arc::new(Recorder::default()), HistoryLimits::default());
        conformance::history_after_a_cursor(&store).await;
        let small = HistoryLimits {
            max_len: 3,
            ..HistoryLimits::default()
        };
        conformance::history_is_bounded(&MemoryStore::new(Arc::new(Recorder::default()), small))
            .await;
    }

    #[tokio::test]
    async fn conformance_claims_once() {
        let store = MemoryStore::new(Arc::new(Recorder::default()), HistoryLimits::default());
        conformance::claims_once(&store).await;
    }

    #[tokio::test]
    async fn history_ages_out() {
        let limits = HistoryLimits {
            max_len: 100,
            max_age: std::time::Duration::from_millis(200),
        };
        let store = MemoryStore::new(Arc::new(Recorder::default()), limits);
        let all = Target::All;
        let draft = || Draft {
            target: Target::All,
            event: pace_protocol::EventName::parse("e").unwrap(),
            data: serde_json::Value::Null,
        };
        let first = store.publish(draft()).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let second = store.publish(draft()).await.unwrap();
        let from_start = Cursor {
            scope: pace_protocol::Scope::All,
            target: None,
            epoch: 0,
            seq: 0,
        };
        let h = store.history(&all, &from_start).await.unwrap();
        assert_eq!(h.messages, vec![second.clone()], "the old one aged out");
        assert_eq!(h.missing, Some(super::super::Incomplete::Exhausted));
        let h = store.history(&all, &first.cursor()).await.unwrap();
        assert_eq!((h.messages, h.missing), (vec![second], None));
    }

    #[tokio::test]
    async fn conformance_health() {
        conformance::reports_health(&MemoryStore::new(
            Arc::new(Recorder::default()),
            HistoryLimits::default(),
        ))
        .await;
    }

    #[tokio::test]
    async fn conformance_admissions() {
        let rec = Arc::new(Recorder::default());
        conformance::admissions_reach_the_device(
            &MemoryStore::new(rec.clone(), HistoryLimits::default()),
            &rec,
        )
        .await;
    }

    #[tokio::test]
    async fn conformance_device_actions() {
        let rec = Arc::new(Recorder::default());
        conformance::device_actions_reach_the_node(
            &MemoryStore::new(rec.clone(), HistoryLimits::default()),
            &rec,
        )
        .await;
    }

    #[tokio::test]
    async fn conformance_generations() {
        conformance::generations_increase(&MemoryStore::new(
            Arc::new(Recorder::default()),
            HistoryLimits::default(),
        ))
        .await;
    }

    #[tokio::test]
    async fn conformance_presence() {
        conformance::presence_lists_nodes(&MemoryStore::new(
            Arc::new(Recorder::default()),
            HistoryLimits::default(),
        ))
        .await;
    }
}
