//! The admission log of each room, made checkable from outside: every new
//! place, admission and end of a session is an entry of the room's log,
//! the entries form a SHA-256 hash chain, and the chain's head is signed
//! with the cluster's admission keys at intervals.
//!
//! # Who writes what
//!
//! - The queue store writes the entries ([`crate::queue::LogRecord`]) in
//!   the same atomic step as the change they record — the join, admit and
//!   release scripts in Redis, the locked section in memory — so the log
//!   can never disagree with the queue: a place or an admission without its
//!   entry (or the reverse) cannot happen, whichever node ran the step.
//! - [`seal`] (every `--audit-seal-interval`, on every node) reads the
//!   entries after the room's latest checkpoint, continues the chain over
//!   them and adds a signed checkpoint — compare-and-set on the latest one,
//!   so when several nodes seal at once one wins and the chain never forks.
//! - [`seal::trim`] drops entries older than `--audit-retention`, always up
//!   to a checkpoint, which is kept as the anchor of what remains.
//! - [`verify`] checks an export offline (`pace-node audit verify`): the
//!   chain, the signatures against a JWKS, ticket order, capacity.
//! - [`export`] turns the kept entries and checkpoints into the JSON Lines
//!   of `GET /api/v1/admin/rooms/{room}/log` (every entry, raw session
//!   ids) and of the public `GET /api/v1/rooms/{room}/log` (the sealed
//!   entries only, anonymised, cached per checkpoint).
//!
//! # Why the store keeps no hashes
//!
//! Redis scripts can hash with SHA-1 only. Rather than chain with SHA-1,
//! or run SHA-256 in Lua inside every join and admission, the hashes are a
//! function of the entries (`pace_protocol::audit`: `hash = SHA-256(prev
//! "\n" canonical)`), computed in Rust by the node that seals or exports.
//! The signed checkpoints fix them: an entry changed in the store after it
//! was sealed no longer leads to the signed head. Entries after the latest
//! checkpoint (at most one seal interval's worth) are not yet signed.

pub mod export;
pub mod seal;
pub mod verify;

pub use export::{PublicLogs, export};
pub use seal::{Sealed, Sealer, run, seal};

use pace_protocol::audit::{
    AdmitEntry, CommitEntry, EndEntry, JoinEntry, LogLine, ShuffleEntry, chain_hash, session_hash,
};

use crate::queue::{LogEvent, LogRecord, QueueError};

/// Failures of sealing or exporting a room's log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The queue store failed (retryable).
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The stored log skips a sequence number: entries were lost.
    #[error("audit log of room {room}: entry {found} follows {after}")]
    Gap {
        /// The room.
        room: String,
        /// The last entry before the gap.
        after: u64,
        /// The entry found after it.
        found: u64,
    },
    /// The kept entries start after a trim without their anchor checkpoint.
    #[error("audit log of room {room}: no checkpoint anchors entry {first}")]
    Unanchored {
        /// The room.
        room: String,
        /// The first kept entry.
        first: u64,
    },
    /// A checkpoint could not be signed.
    #[error("signing a checkpoint: {0}")]
    Sign(#[from] crate::admission::TokenError),
}

/// An audit-log failure: the store's is retryable; a broken stored log
/// (a gap, a lost anchor) is `internal`, logged with its details.
impl From<AuditError> for crate::error::ApiError {
    fn from(e: AuditError) -> crate::error::ApiError {
        match e {
            AuditError::Queue(q) => q.into(),
            other => {
                tracing::error!(error = %other, "audit log cannot be exported");
                crate::error::ApiError::new(
                    pace_protocol::ErrorCode::Internal,
                    "the audit log cannot be exported",
                )
            }
        }
    }
}

/// The export line of a stored entry, chained after `prev`; raw session
/// ids only when not `anonymised`.
pub fn line(record: &LogRecord, prev: &str, anonymised: bool) -> LogLine {
    let session = |s: &str| (!anonymised).then(|| s.to_owned());
    let mut line = match &record.event {
        LogEvent::Join { ticket, device } => LogLine::Join(JoinEntry {
            seq: record.seq,
            t: record.t,
            ticket: *ticket,
            device: device.clone(),
            prev: prev.to_owned(),
            hash: String::new(),
        }),
        LogEvent::Admit {
            ticket,
            session: sid,
            capacity,
            mode,
        } => LogLine::Admit(AdmitEntry {
            seq: record.seq,
            t: record.t,
            ticket: *ticket,
            session_sha256: session_hash(sid),
            session: session(sid),
            capacity: *capacity,
            mode: *mode,
            prev: prev.to_owned(),
            hash: String::new(),
        }),
        LogEvent::End {
            ticket,
            session: sid,
            reason,
        } => LogLine::End(EndEntry {
            seq: record.seq,
            t: record.t,
            ticket: *ticket,
            session_sha256: session_hash(sid),
            session: session(sid),
            reason: *reason,
            prev: prev.to_owned(),
            hash: String::new(),
        }),
        LogEvent::Commit { event, seed_sha256 } => LogLine::Commit(CommitEntry {
            seq: record.seq,
            t: record.t,
            event: event.clone(),
            seed_sha256: seed_sha256.clone(),
            prev: prev.to_owned(),
            hash: String::new(),
        }),
        LogEvent::Shuffle { event, seed, order } => LogLine::Shuffle(ShuffleEntry {
            seq: record.seq,
            t: record.t,
            event: event.clone(),
            seed: seed.clone(),
            order: order.clone(),
            prev: prev.to_owned(),
            hash: String::new(),
        }),
    };
    let hash = chain_hash(prev, &line.canonical().unwrap_or_default());
    match &mut line {
        LogLine::Join(e) => e.hash = hash,
        LogLine::Admit(e) => e.hash = hash,
        LogLine::End(e) => e.hash = hash,
        LogLine::Commit(e) => e.hash = hash,
        LogLine::Shuffle(e) => e.hash = hash,
        LogLine::Header(_) | LogLine::Checkpoint(_) => {}
    }
    line
}

/// The hash of `line` (an entry), empty for anything else.
pub(crate) fn hash_of(line: &LogLine) -> String {
    line.link().map(|(_, h)| h.to_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pace_protocol::audit::{EndReason, GENESIS, device_hash};

    #[test]
    fn lines_chain_and_anonymise() {
        let join = LogRecord {
            seq: 1,
            t: 10,
            event: LogEvent::Join {
                ticket: 1,
                device: device_hash("r", "d"),
            },
        };
        let l1 = line(&join, GENESIS, false);
        let LogLine::Join(j) = &l1 else {
            panic!("{l1:?}")
        };
        assert_eq!(j.prev, GENESIS);
        assert_eq!(
            j.hash,
            chain_hash(GENESIS, &format!("join|1|10|1|{}", device_hash("r", "d")))
        );
        let end = LogRecord {
            seq: 2,
            t: 11,
            event: LogEvent::End {
                ticket: 1,
                session: "sid".into(),
                reason: EndReason::Released,
            },
        };
        let full = line(&end, &j.hash, false);
        let anon = line(&end, &j.hash, true);
        let (LogLine::End(f), LogLine::End(a)) = (&full, &anon) else {
            panic!()
        };
        assert_eq!(f.session.as_deref(), Some("sid"));
        assert_eq!(a.session, None);
        assert_eq!(f.session_sha256, session_hash("sid"));
        // Anonymising does not change the chain.
        assert_eq!(hash_of(&full), hash_of(&anon));
        assert_eq!(f.prev, j.hash);
    }
}
