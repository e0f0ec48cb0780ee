//! Sealing: a signed checkpoint over a room's new log entries, and the
//! retention trim. Every node runs [`run`]; the store's compare-and-set
//! ([`crate::queue::QueueStore::add_checkpoint`]) lets one node win each
//! round, so a checkpoint's chain always continues the previous one.

use std::time::Duration;

use pace_protocol::RoomId;
use pace_protocol::audit::{
    CHECKPOINT_TOKEN_TYPE, CheckpointClaims, GENESIS, LogCheckpoint, checkpoint_audience,
};
use tokio_util::sync::CancellationToken;

use super::{AuditError, hash_of, line};
use crate::admission::KeySet;
use crate::queue::{QueueError, QueueStore};
use crate::store::now_ms;

/// Entries read from the store per call while sealing or exporting.
pub(crate) const READ_BATCH: usize = 10_000;

/// Checkpoints looked at per trim (the oldest ones; a trim that needs more
/// continues on the next round).
const TRIM_LOOKAHEAD: usize = 1_000;

/// What one [`seal`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sealed {
    /// No entries since the latest checkpoint.
    Nothing,
    /// This checkpoint was added.
    Added(LogCheckpoint),
    /// Another node added a checkpoint first; nothing was written.
    Lost,
}

/// Seals `room`'s entries since its latest checkpoint at `now_ms`: reads
/// them, continues the chain from that checkpoint's head (or
/// [`GENESIS`]), signs the new head with the key set and adds the
/// checkpoint if no other node did meanwhile.
pub async fn seal(
    queue: &dyn QueueStore,
    keys: &KeySet,
    room: &RoomId,
    now_ms: u64,
) -> Result<Sealed, AuditError> {
    let last = queue.last_checkpoint(room).await?;
    let expected = last.as_ref().map_or(0, |c| c.seq);
    let (mut seq, mut head) = last.map_or((0, GENESIS.to_owned()), |c| (c.seq, c.head));
    loop {
        let batch = queue.log(room, seq, READ_BATCH).await?;
        for record in &batch {
            if record.seq != seq + 1 {
                return Err(AuditError::Gap {
                    room: room.to_string(),
                    after: seq,
                    found: record.seq,
                });
            }
            head = hash_of(&line(record, &head, true));
            seq = record.seq;
        }
        if batch.len() < READ_BATCH {
            break;
        }
    }
    if seq == expected {
        return Ok(Sealed::Nothing);
    }
    let iat = now_ms / 1000;
    let claims = CheckpointClaims {
        iss: keys.issuer().to_owned(),
        aud: checkpoint_audience(room.as_str()),
        room: room.to_string(),
        seq,
        head: head.clone(),
        iat,
    };
    let jws = keys.sign_claims_typed(&claims, iat, CHECKPOINT_TOKEN_TYPE)?;
    let checkpoint = LogCheckpoint {
        seq,
        head,
        t: now_ms,
        jws,
    };
    if queue.add_checkpoint(room, expected, &checkpoint).await? {
        Ok(Sealed::Added(checkpoint))
    } else {
        Ok(Sealed::Lost)
    }
}

/// Drops `room`'s entries up to its newest checkpoint made before
/// `cutoff_ms` (that checkpoint stays, anchoring the rest). Returns the
/// sequence number trimmed through, if any.
pub async fn trim(
    queue: &dyn QueueStore,
    room: &RoomId,
    cutoff_ms: u64,
) -> Result<Option<u64>, QueueError> {
    let checkpoints = queue.checkpoints(room, TRIM_LOOKAHEAD).await?;
    let Some(anchor) = checkpoints
        .iter()
        .take_while(|c| c.t < cutoff_ms)
        .last()
        .map(|c| c.seq)
    else {
        return Ok(None);
    };
    queue.trim_log(room, anchor).await?;
    Ok(Some(anchor))
}

/// What the sealing task works with, given by the composition root.
#[derive(Debug, Clone)]
pub struct Sealer {
    /// The rooms' logs.
    pub queue: crate::queue::SharedQueueStore,
    /// Signs the checkpoints.
    pub keys: std::sync::Arc<crate::admission::KeySet>,
    /// `pace_audit_seals_total`.
    pub metrics: crate::metrics::Metrics,
    /// `--audit-seal-interval`.
    pub interval: Duration,
    /// `--audit-retention`.
    pub retention: Duration,
}

/// Seals every room every `--audit-seal-interval`, and trims past
/// `--audit-retention` (at most once a minute), until `stop`.
pub async fn run(node: Sealer, stop: CancellationToken) {
    let interval = node.interval;
    let retention = node.retention;
    let trim_every = retention.min(Duration::from_secs(60));
    // A random phase, so the nodes of a cluster do not seal in lockstep.
    let phase = interval.mul_f64(rand::random::<f64>());
    tokio::select! {
        () = stop.cancelled() => return,
        () = tokio::time::sleep(phase) => {}
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_trim: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let queue = &node.queue;
        let Ok(rooms) = queue.rooms().await else {
            continue;
        };
        for room in &rooms {
            let outcome = match seal(queue.as_ref(), &node.keys, room, now_ms()).await {
                Ok(Sealed::Nothing) => continue,
                Ok(Sealed::Added(_)) => "sealed",
                Ok(Sealed::Lost) => "lost",
                Err(e @ (AuditError::Gap { .. } | AuditError::Unanchored { .. })) => {
                    tracing::warn!(%room, error = %e, "audit log cannot be sealed");
                    "broken"
                }
                Err(e) => {
                    tracing::debug!(%room, error = %e, "audit log not sealed now");
                    "failed"
                }
            };
            node.metrics.audit_seals.with_label_values(&[outcome]).inc();
        }
        if last_trim.is_none_or(|t| t.elapsed() >= trim_every) {
            last_trim = Some(tokio::time::Instant::now());
            let cutoff = now_ms().saturating_sub(retention.as_millis() as u64);
            for room in &rooms {
                if let Err(e) = trim(queue.as_ref(), room, cutoff).await {
                    tracing::debug!(%room, error = %e, "audit log not trimmed now");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::MemoryQueueStore;
    use pace_protocol::DeviceId;

    async fn room_with_joins(q: &MemoryQueueStore, n: usize, t0: u64) -> RoomId {
        let r = RoomId::parse("sealed").unwrap();
        let c = crate::queue::conformance::config(1);
        q.put_room(&r, &c).await.unwrap();
        for i in 0..n {
            let d = DeviceId::parse(&format!("d{i}")).unwrap();
            q.join(&r, &d, t0 + i as u64).await.unwrap();
        }
        r
    }

    #[tokio::test]
    async fn a_checkpoint_signs_the_chain_and_the_next_continues_it() {
        // Keys made now sign from now on: the log's clock starts now.
        let t0 = crate::store::now_ms();
        let q = MemoryQueueStore::new();
        let keys = KeySet::generate_in_memory().unwrap();
        let r = room_with_joins(&q, 3, t0).await;
        let Sealed::Added(first) = seal(&q, &keys, &r, t0 + 100).await.unwrap() else {
            panic!("expected a checkpoint")
        };
        assert_eq!(first.seq, 3);
        let claims: CheckpointClaims = keys.decode_claims(&first.jws).unwrap();
        assert_eq!(
            (claims.seq, claims.head.as_str(), claims.aud.as_str()),
            (3, first.head.as_str(), "pace-log/sealed")
        );
        assert_eq!(
            seal(&q, &keys, &r, t0 + 200).await.unwrap(),
            Sealed::Nothing
        );
        q.admit(&r, t0 + 300).await.unwrap();
        let Sealed::Added(second) = seal(&q, &keys, &r, t0 + 400).await.unwrap() else {
            panic!("expected a checkpoint")
        };
        assert_eq!(second.seq, 4);
        // The second head continues the first: recomputing from genesis
        // over all four entries gives it.
        let mut head = GENESIS.to_owned();
        for rec in q.log(&r, 0, 10).await.unwrap() {
            head = hash_of(&line(&rec, &head, false));
        }
        assert_eq!(head, second.head);
    }

    #[tokio::test]
    async fn a_node_that_sealed_late_loses_without_writing() {
        // Keys made now sign from now on: the log's clock starts now.
        let t0 = crate::store::now_ms();
        let q = MemoryQueueStore::new();
        let keys = KeySet::generate_in_memory().unwrap();
        let r = room_with_joins(&q, 2, t0).await;
        // Another node added a checkpoint between our read and our write:
        // simulated by adding one at the same expected seq first.
        let other = LogCheckpoint {
            seq: 1,
            head: "f".repeat(64),
            t: t0,
            jws: "x.y.z".into(),
        };
        assert!(q.add_checkpoint(&r, 0, &other).await.unwrap());
        // Sealing now continues from the other node's checkpoint.
        let Sealed::Added(cp) = seal(&q, &keys, &r, t0 + 10).await.unwrap() else {
            panic!()
        };
        assert_eq!(cp.seq, 2);
        assert!(!q.add_checkpoint(&r, 1, &cp).await.unwrap(), "lost");
    }

    #[tokio::test]
    async fn trim_keeps_the_newest_old_checkpoint_as_anchor() {
        // Keys made now sign from now on: the log's clock starts now.
        let t0 = crate::store::now_ms();
        let q = MemoryQueueStore::new();
        let keys = KeySet::generate_in_memory().unwrap();
        let r = room_with_joins(&q, 2, t0).await;
        seal(&q, &keys, &r, t0 + 1_000).await.unwrap();
        let d = DeviceId::parse("late").unwrap();
        q.join(&r, &d, t0 + 2_000).await.unwrap();
        seal(&q, &keys, &r, t0 + 3_000).await.unwrap();
        assert_eq!(trim(&q, &r, t0 + 1_000).await.unwrap(), None);
        assert_eq!(trim(&q, &r, t0 + 2_000).await.unwrap(), Some(2));
        let left: Vec<u64> = q
            .log(&r, 0, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(left, [3]);
        assert_eq!(q.checkpoints(&r, 10).await.unwrap().len(), 2);
    }
}
