//! The admission log's wire format: the JSON Lines a node exports for a
//! room (`GET /api/v1/admin/rooms/{room}/log`, and anonymised at
//! `GET /api/v1/rooms/{room}/log`), and the hash chain that links its
//! entries, so that anyone holding an export and the cluster's JWKS can
//! check it.
//!
//! # Lines
//!
//! Every line is one JSON object whose `type` says what it is ([`LogLine`]):
//! one `header` first, then the entries in sequence order (`join`, `admit`,
//! `end`), each followed by the `checkpoint`s that sign the chain up to it.
//! An export of a trimmed log starts with the *anchor* checkpoint: the one
//! that signs the chain just before the first kept entry.
//!
//! # The chain
//!
//! Every entry has a [`canonical`](LogLine::canonical) text — its fields
//! joined by `|` in a fixed order (all digits, lowercase hex or fixed
//! words, so nothing needs escaping):
//!
//! | entry | canonical text |
//! |---|---|
//! | join | `join\|seq\|t\|ticket\|device` |
//! | admit | `admit\|seq\|t\|ticket\|session_sha256\|capacity`, then `\|mode` unless the mode is `fifo` |
//! | end | `end\|seq\|t\|ticket\|session_sha256\|reason` |
//! | commit | `commit\|seq\|t\|event\|seed_sha256` |
//! | shuffle | `shuffle\|seq\|t\|event\|seed\|order` (`order`: the tickets, decimal, joined by `,`) |
//!
//! and `hash = hex(SHA-256(prev "\n" canonical))`, where `prev` is the
//! previous entry's `hash` ([`GENESIS`], 64 zeros, before the room's first
//! entry). Raw identifiers never enter the chain: `device` is
//! [`device_hash`] of the room and device id, `session_sha256` is
//! [`session_hash`] of the session id. The raw session id (`session`) is in
//! the admins' export only, so the anonymised export verifies exactly like
//! the full one.
//!
//! A checkpoint's `jws` is a JWT (typ [`CHECKPOINT_TOKEN_TYPE`]) signed with
//! one of the cluster's admission keys whose claims
//! ([`CheckpointClaims`]) repeat `room`, `seq` and `head`: the chain's hash
//! after entry `seq`.
//!
//! # The shuffle of an event's pre-queue
//!
//! An event with `order: shuffle` commits to a secret seed when it is
//! stored (`seed_sha256` = [`sha256_hex`] of the seed's 64 hex digits as
//! text, on the room's status); the pre-queue's first join writes a
//! `commit` entry with it. At `event_start` the pre-queue's waiting tickets
//! are ordered by [`shuffle_order`] and a `shuffle` entry records the seed
//! (revealed) and the resulting order; the device that held the k-th
//! ticket of that order then holds the k-th smallest of those tickets (its
//! new ticket, which its later `admit` entry names). Anyone can recompute
//! the order from the seed and the ticket list.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::room::QueueMode;

/// The export format's version, in the header.
pub const LOG_VERSION: u32 = 1;

/// The `prev` of a room's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The `typ` header of a checkpoint's JWT.
pub const CHECKPOINT_TOKEN_TYPE: &str = "pace-log+jwt";

/// The `aud` of a room's checkpoints: `pace-log/<room>`, which no room id
/// can be (it contains `/`), so a checkpoint never passes as an admission.
pub fn checkpoint_audience(room: &str) -> String {
    format!("pace-log/{room}")
}

/// Lowercase hex of SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// The device as the log names it: hex SHA-256 of `room "\n" device`. The
/// room is part of it, so one device cannot be followed across rooms; a
/// device finds its own entry by its ticket and checks this hash.
pub fn device_hash(room: &str, device: &str) -> String {
    sha256_hex(format!("{room}\n{device}").as_bytes())
}

/// The session as the chain names it: hex SHA-256 of the session id.
pub fn session_hash(session: &str) -> String {
    sha256_hex(session.as_bytes())
}

/// The hash of an entry whose canonical text is `canonical`, after `prev`.
pub fn chain_hash(prev: &str, canonical: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(canonical.as_bytes());
    hex(&h.finalize())
}

/// The order in which an event's pre-queue is admitted: its `tickets`
/// (any order, no duplicates) sorted by the key
///
/// ```text
/// list   = the tickets ascending, in decimal, joined by ","
/// digest = hex(SHA-256(list))
/// key(t) = hex(SHA-256(seed ":" digest ":" t))     (t in decimal)
/// ```
///
/// ascending, ties (which SHA-256 does not produce) broken by the smaller
/// ticket. `seed` is the 64 lowercase hex digits as text. Every ticket's
/// key depends on the whole list, so nobody who knew the seed could pick a
/// ticket to come first without knowing who else would join.
pub fn shuffle_order(seed: &str, tickets: &[u64]) -> Vec<u64> {
    let mut sorted = tickets.to_vec();
    sorted.sort_unstable();
    let list = sorted
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let digest = sha256_hex(list.as_bytes());
    let mut keyed: Vec<(String, u64)> = sorted
        .into_iter()
        .map(|t| (sha256_hex(format!("{seed}:{digest}:{t}").as_bytes()), t))
        .collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, t)| t).collect()
}

/// Whether `s` is 64 lowercase hex digits (a SHA-256 in the log's form).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// One line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LogLine {
    /// The first line: what the export is.
    Header(LogHeader),
    /// A device took a new place.
    Join(JoinEntry),
    /// A device was admitted.
    Admit(AdmitEntry),
    /// A session ended and freed its slot.
    End(EndEntry),
    /// An event's commitment to its shuffle seed (before its pre-queue's
    /// first join).
    Commit(CommitEntry),
    /// An event's pre-queue shuffled at its start, with the seed revealed.
    Shuffle(ShuffleEntry),
    /// A signed chain head.
    Checkpoint(LogCheckpoint),
}

/// The export's first line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogHeader {
    /// [`LOG_VERSION`].
    pub version: u32,
    /// The room.
    pub room: String,
    /// Whether raw session ids were left out (the public export).
    pub anonymised: bool,
    /// When the export was made, Unix ms (the exporting node's clock).
    pub exported_at_ms: u64,
    /// First and last entry in the export (0 and 0 when it has none).
    pub first_seq: u64,
    /// See `first_seq`.
    pub last_seq: u64,
}

/// A device took a new place (a rejoin that keeps its place writes none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinEntry {
    /// Position in the room's log, from 1, without gaps.
    pub seq: u64,
    /// When, Unix ms (the clock of the node that ran the join).
    pub t: u64,
    /// The ticket the device got.
    pub ticket: u64,
    /// [`device_hash`] of the room and device.
    pub device: String,
    /// The previous entry's hash.
    pub prev: String,
    /// This entry's hash.
    pub hash: String,
}

/// A device was admitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmitEntry {
    /// Position in the room's log.
    pub seq: u64,
    /// When, Unix ms.
    pub t: u64,
    /// The ticket the device waited with.
    pub ticket: u64,
    /// [`session_hash`] of the session id.
    pub session_sha256: String,
    /// The session id (the admission token's `jti`); admins' export only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The room's capacity when the admission was made.
    pub capacity: u32,
    /// The room's queueing mode when the admission was made; absent for
    /// `fifo` (so logs written before modes existed read, and hash, the
    /// same). A verifier checks ticket order only for `fifo` admissions and
    /// capacity for all but `passthrough` ones.
    #[serde(default, skip_serializing_if = "QueueMode::is_fifo")]
    pub mode: QueueMode,
    /// The previous entry's hash.
    pub prev: String,
    /// This entry's hash.
    pub hash: String,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Released by its holder or revoked by an admin.
    Released,
    /// Expired (not renewed in time) and freed.
    Expired,
}

impl EndReason {
    /// The word in the canonical text.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Released => "released",
            EndReason::Expired => "expired",
        }
    }
}

/// A session ended and freed its slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndEntry {
    /// Position in the room's log.
    pub seq: u64,
    /// When the slot was freed, Unix ms.
    pub t: u64,
    /// The session's ticket.
    pub ticket: u64,
    /// [`session_hash`] of the session id.
    pub session_sha256: String,
    /// The session id; admins' export only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Why.
    pub reason: EndReason,
    /// The previous entry's hash.
    pub prev: String,
    /// This entry's hash.
    pub hash: String,
}

/// An event's commitment to its shuffle seed, written by the join that
/// opens its pre-queue (before that join's own entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitEntry {
    /// Position in the room's log.
    pub seq: u64,
    /// When, Unix ms.
    pub t: u64,
    /// The event's id.
    pub event: String,
    /// [`sha256_hex`] of the seed.
    pub seed_sha256: String,
    /// The previous entry's hash.
    pub prev: String,
    /// This entry's hash.
    pub hash: String,
}

/// An event's pre-queue shuffled at its start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShuffleEntry {
    /// Position in the room's log.
    pub seq: u64,
    /// When, Unix ms.
    pub t: u64,
    /// The event's id.
    pub event: String,
    /// The seed, revealed: its [`sha256_hex`] is the commitment.
    pub seed: String,
    /// The pre-queue's tickets (as they joined) in admission order:
    /// [`shuffle_order`] of the seed and these tickets. The k-th of them
    /// is admitted under the k-th smallest.
    pub order: Vec<u64>,
    /// The previous entry's hash.
    pub prev: String,
    /// This entry's hash.
    pub hash: String,
}

impl ShuffleEntry {
    /// `(ticket as joined, ticket after the shuffle)` for every device of
    /// the pre-queue.
    pub fn renumbering(&self) -> Vec<(u64, u64)> {
        let mut sorted = self.order.clone();
        sorted.sort_unstable();
        self.order.iter().copied().zip(sorted).collect()
    }
}

/// A signed chain head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCheckpoint {
    /// The last entry it covers.
    pub seq: u64,
    /// The chain's hash after entry `seq`.
    pub head: String,
    /// When it was signed, Unix ms.
    pub t: u64,
    /// The JWT over [`CheckpointClaims`].
    pub jws: String,
}

/// The claims of a checkpoint's JWT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointClaims {
    /// The cluster's issuer.
    pub iss: String,
    /// [`checkpoint_audience`] of the room.
    pub aud: String,
    /// The room.
    pub room: String,
    /// The last entry covered.
    pub seq: u64,
    /// The chain's hash after it.
    pub head: String,
    /// Signed at, Unix s.
    pub iat: u64,
}

impl LogLine {
    /// The entry's (or checkpoint's) sequence number; `None` for a header.
    pub fn seq(&self) -> Option<u64> {
        match self {
            LogLine::Header(_) => None,
            LogLine::Join(e) => Some(e.seq),
            LogLine::Admit(e) => Some(e.seq),
            LogLine::End(e) => Some(e.seq),
            LogLine::Commit(e) => Some(e.seq),
            LogLine::Shuffle(e) => Some(e.seq),
            LogLine::Checkpoint(c) => Some(c.seq),
        }
    }

    /// An entry's `(prev, hash)`; `None` for a header or checkpoint.
    pub fn link(&self) -> Option<(&str, &str)> {
        match self {
            LogLine::Join(e) => Some((&e.prev, &e.hash)),
            LogLine::Admit(e) => Some((&e.prev, &e.hash)),
            LogLine::End(e) => Some((&e.prev, &e.hash)),
            LogLine::Commit(e) => Some((&e.prev, &e.hash)),
            LogLine::Shuffle(e) => Some((&e.prev, &e.hash)),
            LogLine::Header(_) | LogLine::Checkpoint(_) => None,
        }
    }

    /// An entry's canonical text (see the module docs); `None` for a
    /// header or checkpoint.
    pub fn canonical(&self) -> Option<String> {
        match self {
            LogLine::Join(e) => Some(format!("join|{}|{}|{}|{}", e.seq, e.t, e.ticket, e.device)),
            LogLine::Admit(e) => {
                let mut text = format!(
                    "admit|{}|{}|{}|{}|{}",
                    e.seq, e.t, e.ticket, e.session_sha256, e.capacity
                );
                if !e.mode.is_fifo() {
                    text.push('|');
                    text.push_str(e.mode.as_str());
                }
                Some(text)
            }
            LogLine::End(e) => Some(format!(
                "end|{}|{}|{}|{}|{}",
                e.seq,
                e.t,
                e.ticket,
                e.session_sha256,
                e.reason.as_str()
            )),
            LogLine::Commit(e) => Some(format!(
                "commit|{}|{}|{}|{}",
                e.seq, e.t, e.event, e.seed_sha256
            )),
            LogLine::Shuffle(e) => Some(format!(
                "shuffle|{}|{}|{}|{}|{}",
                e.seq,
                e.t,
                e.event,
                e.seed,
                e.order
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )),
            LogLine::Header(_) | LogLine::Checkpoint(_) => None,
        }
    }

    /// The line as one line of JSON (no newline).
    pub fn to_json(&self) -> String {
        // Plain strings and numbers: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(value: LogLine, golden: &str) {
        assert_eq!(value.to_json(), golden);
        assert_eq!(serde_json::from_str::<LogLine>(golden).unwrap(), value);
    }

    #[test]
    fn lines() {
        golden(
            LogLine::Header(LogHeader {
                version: 1,
                room: "sale".into(),
                anonymised: true,
                exported_at_ms: 5,
                first_seq: 1,
                last_seq: 3,
            }),
            r#"{"type":"header","version":1,"room":"sale","anonymised":true,"exported_at_ms":5,"first_seq":1,"last_seq":3}"#,
        );
        golden(
            LogLine::Join(JoinEntry {
                seq: 1,
                t: 10,
                ticket: 7,
                device: "d".into(),
                prev: "p".into(),
                hash: "h".into(),
            }),
            r#"{"type":"join","seq":1,"t":10,"ticket":7,"device":"d","prev":"p","hash":"h"}"#,
        );
        golden(
            LogLine::Admit(AdmitEntry {
                seq: 2,
                t: 11,
                ticket: 7,
                session_sha256: "s".into(),
                session: Some("sid".into()),
                capacity: 3,
                mode: QueueMode::Fifo,
                prev: "h".into(),
                hash: "i".into(),
            }),
            r#"{"type":"admit","seq":2,"t":11,"ticket":7,"session_sha256":"s","session":"sid","capacity":3,"prev":"h","hash":"i"}"#,
        );
        golden(
            LogLine::Admit(AdmitEntry {
                seq: 2,
                t: 11,
                ticket: 7,
                session_sha256: "s".into(),
                session: None,
                capacity: 3,
                mode: QueueMode::Random,
                prev: "h".into(),
                hash: "i".into(),
            }),
            r#"{"type":"admit","seq":2,"t":11,"ticket":7,"session_sha256":"s","capacity":3,"mode":"random","prev":"h","hash":"i"}"#,
        );
        golden(
            LogLine::End(EndEntry {
                seq: 3,
                t: 12,
                ticket: 7,
                session_sha256: "s".into(),
                session: None,
                reason: EndReason::Expired,
                prev: "i".into(),
                hash: "j".into(),
            }),
            r#"{"type":"end","seq":3,"t":12,"ticket":7,"session_sha256":"s","reason":"expired","prev":"i","hash":"j"}"#,
        );
        golden(
            LogLine::Checkpoint(LogCheckpoint {
                seq: 3,
                head: "j".into(),
                t: 13,
                jws: "a.b.c".into(),
            }),
            r#"{"type":"checkpoint","seq":3,"head":"j","t":13,"jws":"a.b.c"}"#,
        );
        assert!(serde_json::from_str::<LogLine>(r#"{"type":"other"}"#).is_err());
    }

    #[test]
    fn hashes_are_the_documented_functions() {
        // SHA-256("") and SHA-256("abc"): the standard test vectors.
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            session_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(device_hash("r", "d"), sha256_hex(b"r\nd"));
        assert_ne!(device_hash("r1", "d"), device_hash("r2", "d"));
        assert_eq!(
            chain_hash(GENESIS, "x"),
            sha256_hex(format!("{GENESIS}\nx").as_bytes())
        );
        assert!(is_sha256_hex(GENESIS));
        assert!(!is_sha256_hex(&GENESIS.to_uppercase().replace('0', "A")));
        assert!(!is_sha256_hex("abc"));
        let end = LogLine::End(EndEntry {
            seq: 3,
            t: 12,
            ticket: 7,
            session_sha256: "s".into(),
            session: Some("raw".into()),
            reason: EndReason::Released,
            prev: "i".into(),
            hash: "j".into(),
        });
        assert_eq!(end.canonical().unwrap(), "end|3|12|7|s|released");
        // An admission's mode enters the chain, except fifo (old logs keep
        // their hashes).
        let mut admit = AdmitEntry {
            seq: 2,
            t: 11,
            ticket: 7,
            session_sha256: "s".into(),
            session: None,
            capacity: 3,
            mode: QueueMode::Fifo,
            prev: "h".into(),
            hash: "i".into(),
        };
        assert_eq!(
            LogLine::Admit(admit.clone()).canonical().unwrap(),
            "admit|2|11|7|s|3"
        );
        admit.mode = QueueMode::Passthrough;
        assert_eq!(
            LogLine::Admit(admit).canonical().unwrap(),
            "admit|2|11|7|s|3|passthrough"
        );
        assert_eq!(end.link(), Some(("i", "j")));
        assert_eq!(end.seq(), Some(3));
    }

    #[test]
    fn event_entries_have_golden_lines_and_canonical_texts() {
        let commit = LogLine::Commit(CommitEntry {
            seq: 4,
            t: 20,
            event: "drop".into(),
            seed_sha256: "c".into(),
            prev: "j".into(),
            hash: "k".into(),
        });
        golden(
            commit.clone(),
            r#"{"type":"commit","seq":4,"t":20,"event":"drop","seed_sha256":"c","prev":"j","hash":"k"}"#,
        );
        assert_eq!(commit.canonical().unwrap(), "commit|4|20|drop|c");
        let shuffle = ShuffleEntry {
            seq: 9,
            t: 30,
            event: "drop".into(),
            seed: "s".into(),
            order: vec![12, 10, 11],
            prev: "k".into(),
            hash: "l".into(),
        };
        golden(
            LogLine::Shuffle(shuffle.clone()),
            r#"{"type":"shuffle","seq":9,"t":30,"event":"drop","seed":"s","order":[12,10,11],"prev":"k","hash":"l"}"#,
        );
        assert_eq!(
            LogLine::Shuffle(shuffle.clone()).canonical().unwrap(),
            "shuffle|9|30|drop|s|12,10,11"
        );
        assert_eq!(shuffle.renumbering(), [(12, 10), (10, 11), (11, 12)]);
    }

    #[test]
    fn the_shuffle_is_the_documented_function() {
        let seed = sha256_hex(b"seed");
        // Recomputed here from the doc's three lines, independently.
        let tickets = [5u64, 3, 9, 4];
        let digest = sha256_hex(b"3,4,5,9");
        let mut keyed: Vec<(String, u64)> = [3u64, 4, 5, 9]
            .iter()
            .map(|t| (sha256_hex(format!("{seed}:{digest}:{t}").as_bytes()), *t))
            .collect();
        keyed.sort();
        let expected: Vec<u64> = keyed.into_iter().map(|(_, t)| t).collect();
        assert_eq!(shuffle_order(&seed, &tickets), expected);
        // The input order does not matter; the seed and the list do.
        assert_eq!(shuffle_order(&seed, &[9, 5, 4, 3]), expected);
        assert_ne!(
            shuffle_order(&sha256_hex(b"other"), &(1..=20).collect::<Vec<_>>()),
            shuffle_order(&seed, &(1..=20).collect::<Vec<_>>())
        );
        assert_eq!(shuffle_order(&seed, &[]), Vec::<u64>::new());
        // A fixed vector, so any reimplementation can check itself.
        assert_eq!(
            shuffle_order(&"0".repeat(64), &[1, 2, 3, 4, 5, 6, 7, 8]),
            FIXED_VECTOR
        );
    }

    // Also what `sha256sum` and `sort` give (docs/protocol.md shows how).
    const FIXED_VECTOR: [u64; 8] = [7, 4, 8, 5, 2, 1, 3, 6];
}
