//! The waiting-room queue store: every room's FIFO queue, its admitted
//! sessions and its counters, behind [`QueueStore`].
//!
//! Two implementations pass one conformance suite (`conformance`, run by
//! `memory.rs` and `redis.rs`): [`MemoryQueueStore`] (one node, no
//! dependencies) and [`RedisQueueStore`] (a cluster; the tests run it
//! against a real `redis-server`).
//!
//! # Data model
//!
//! A room (`RoomId`, the device-id charset, 1 to 64 bytes) has a
//! [`RoomConfig`] (capacity, optional admissions per minute, session TTL,
//! target URL, state, proof-of-work difficulty, queueing mode), every field replaceable
//! live with [`QueueStore::put_room`] without touching the queue.
//!
//! - **Queue**: waiting devices ordered by *ticket*, a per-room counter
//!   handed out by join. A device holds at most one place per room; joining
//!   again returns the same ticket (never a new one), so a reconnect never
//!   loses or improves a place. A place is only ever created by join.
//! - **Seen**: the last heartbeat (join or [`QueueStore::touch`]) of each
//!   waiting device; [`QueueStore::sweep`] drops those silent for longer
//!   than the grace period (counted as abandoned).
//! - **Active sessions**: admitted devices, each with a session id, its
//!   ticket, admission time and expiry. A session holds a slot until it is
//!   released, or until it expires (not renewed within the session TTL);
//!   expired sessions are freed by the next admit.
//! - **Admission log**: the admission times of the last 60 s, trimmed on
//!   every admit; it enforces `admit_per_minute` and gives the measured
//!   throughput ([`RoomCounters::admitted_last_minute`]) for wait estimates.
//! - **Counters**: `admitted_total`, `abandoned_total` (left or swept
//!   before admission), `peak_waiting` — in the store, so cluster-wide.
//! - **Audit log**: every new place (join), admission and end of a session
//!   (release, expiry) as a [`LogRecord`] numbered from 1 without gaps,
//!   written by the *same* atomic step (script or locked section) that
//!   changes the queue, so the log cannot disagree with it; and the signed
//!   chain heads ([`LogCheckpoint`]) that [`crate::audit`] adds at
//!   intervals. The store keeps no hashes: they are a function of the
//!   records (Redis scripts have SHA-1 only), computed by the node that
//!   seals or exports (see `crate::audit`).
//!
//! States: `open` admits; `paused` keeps accepting joins but admits nobody;
//! `closed` refuses *new* joins, while devices already waiting keep their
//! place (a rejoin returns it) and are still admitted — the queue drains.
//!
//! Modes ([`QueueMode`], orthogonal to the state, read by every join and
//! admit run, so a change applies to the next one): `fifo` admits the head
//! of the queue in ticket order; `random` admits, one draw per free slot,
//! a device chosen uniformly among those waiting at that moment (tickets
//! still record the join order); `passthrough` admits everyone waiting on
//! every admit run regardless of capacity and the per-minute budget (the
//! admissions and sessions still count in the counters, the rate window
//! and the log); `reject` refuses new joins ([`JoinOutcome::Rejected`])
//! while devices already waiting keep their place and are admitted in
//! ticket order, like `closed`. Each admission's log record carries the
//! mode it was made in. A room stored without a mode reads as `fifo`.
//!
//! # Time
//!
//! Every time-dependent operation takes `now_ms` (Unix ms) from the caller;
//! the Redis scripts compare against that argument, never against Redis
//! `TIME`. Both stores are then deterministic and run the same tests with
//! explicit times and no sleeps; production callers pass the node's wall
//! clock ([`crate::store::now_ms`]). The one exception is a room's
//! scheduled events ([`Event`]): their phase (countdown, pre-queue, live)
//! is judged by the *store's* clock ([`QueueStore::clock_ms`]: `TIME` inside
//! the join and admit scripts, the process clock in memory), so that every
//! node of a cluster opens and starts an event at the same instant; tests
//! set event times relative to that clock. The trade-off: node clocks must agree
//! (NTP) to well within the heartbeat grace and session TTL — a node whose
//! clock runs behind frees sessions and abandons devices a little late and
//! one whose clock runs ahead a little early, by the skew. Heartbeats only
//! ever move forward (`ZADD GT`), so a lagging node cannot make a device
//! look older than another node saw it. Redis `TIME` would remove the skew
//! but make expiry untestable without sleeps and make the stores differ.
//!
//! # Session ids
//!
//! UUID v4 strings, unguessable. The memory store draws them from the OS
//! RNG. Lua scripts cannot draw randomness, so the node passes one fresh
//! UUID v4 *nonce* per admit call and the script derives each session id as
//! `SHA-1(nonce ":" ticket)` laid out in UUID v4 form (122 bits of the
//! hash); knowing one session id reveals nothing about its batch-mates'.
//! The same nonce drives mode `random`'s draws in the script: draw `i` of
//! a run takes the waiting device at rank (the first 12 hex digits of
//! `SHA-1(nonce ":draw:" i)`, a 48-bit number) mod (devices waiting now),
//! a bias below 2⁻²⁸ for up to a million waiting. The memory store draws
//! from the thread-local RNG (`rand`), or a seeded one in tests.
//!
//! # Redis keys
//!
//! All keys of one room share the hash tag `{<prefix>:room:<id>}`, so every
//! script touches one slot and runs on Redis Cluster:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p:room:R}:config` | hash | `capacity`, `admit_per_minute` (empty = none), `session_ttl_secs`, `target_url`, `state`, `pow_difficulty`, `mode` (absent = `fifo`), `appearance`, `events` (JSON, empty = none; each shuffled event with its `seed_sha256`) |
//! | `{p:room:R}:events` | hash | per event id: `<id>:seed` (the secret seed), `<id>:first` / `<id>:last` (the pre-queue's first and last ticket), `<id>:shuffled` |
//! | `{p:room:R}:counters` | hash | `ticket` (last handed out), `admitted_total`, `abandoned_total`, `peak_waiting` |
//! | `{p:room:R}:queue` | zset | device → ticket |
//! | `{p:room:R}:seen` | zset | device → last heartbeat ms (exactly the queue's members) |
//! | `{p:room:R}:active` | zset | session id → expires at ms |
//! | `{p:room:R}:sessions` | hash | session id → `device\|ticket\|admitted_at_ms` |
//! | `{p:room:R}:devices` | hash | device → session id (admitted devices) |
//! | `{p:room:R}:rate` | zset | session id → admitted at ms (last 60 s) |
//! | `{p:room:R}:joined` | hash | device → first join ms (waiting devices) |
//! | `{p:room:R}:waits` | hash | wait-time bucket bound (s, or `+Inf`) → admissions; `sum_ms` |
//! | `{p:room:R}:log` | stream | audit log: entry id `<seq>-0`, field `e` = `j\|t\|ticket\|device hash`, `a\|t\|ticket\|session\|capacity` (then `\|mode` unless `fifo`), `e\|t\|ticket\|session\|released\|expired`, `c\|t\|event\|seed_sha256` or `s\|t\|event\|seed\|t1,t2,…`; `log_seq` in the counters |
//! | `{p:room:R}:log:cp` | zset | signed checkpoints: JSON [`LogCheckpoint`] scored by its `seq` |
//! | `{p:room:R}:pow:<jti>` | string | a claimed proof-of-work challenge, kept for the challenge's remaining life (`SET NX PX`) |
//! | `{p}:rooms` | set | room ids (another slot: written apart from the config) |
//!
//! # Operations and their Redis cost
//!
//! One round trip each (admit, sweep and touch: one per batch of 1,000;
//! `rooms`: one per page of 1,000);
//! `n` waiting, `k` devices or sessions handled by the call.
//!
//! | operation | how | cost |
//! |---|---|---|
//! | `put_room` | `HSET` config + `SADD` rooms | 2 commands, O(1) |
//! | `get_room` / `rooms` | `HGETALL` / `SSCAN` pages of 1,000 | O(1) / O(rooms), a round trip per page |
//! | `join` | `join.lua`: `HGET` state, session lookup, `ZSCORE`; new place: `HGET` mode, `HINCRBY` ticket, `HGET` + `XADD` + `HSET` log, `ZADD` queue + seen, `ZCARD`, peak | ~11 commands, O(log n) |
//! | `join_room` (a node's whole join) | the same `join.lua` with the proof-of-work gate (`HGET` difficulty, `SET NX PX` of the mark when a solution is claimed) and, after the join, `HGETALL` config (+ `HGETALL` events with a shuffled event) and `ZCOUNT` rate | one round trip, ~19 commands, O(log n) |
//! | `touch` | `touch.lua`: `ZSCORE` + `ZADD` seen per device | O(k log n) |
//! | `sweep` | `sweep.lua`: `ZRANGEBYSCORE` seen, `ZREM` queue + seen per device, `HINCRBY` | O(log n + k log n) |
//! | `admit` | `admit.lua`: `ZRANGEBYSCORE` active (expired) and 3 removals + 3 log commands each; trim rate; `HMGET` config; `ZRANGE` head (mode `random`: `ZCARD` + one-rank `ZRANGE` per draw) and 9 commands per admission (3 of them the log's); `HINCRBY` | O((k+1) log n) |
//! | `position` / `positions` | `positions.lua`: `ZRANK` per device + `ZCARD` | O(k log n) |
//! | `head` | `ZRANGE 0 n-1` | O(log n + k) |
//! | `leave` | `leave.lua`: `ZREM` queue + seen, `HINCRBY` | O(log n) |
//! | `release` | `release.lua`: `HGET` session, `HGET` + `XADD` + `HSET` log, `ZREM` active, 2 `HDEL` | O(log n) |
//! | `log` | `XRANGE` from a sequence number, `COUNT` | O(log N + k) |
//! | `checkpoints` / `last_checkpoint` | `ZRANGE` all / the last | O(c) / O(log c) |
//! | `add_checkpoint` | `add_checkpoint.lua`: last checkpoint's seq must be the expected one, `ZADD` | O(log c) |
//! | `trim_log` | `trim_log.lua`: `XTRIM MINID`, `ZREMRANGEBYSCORE` | O(k) |
//! | `renew` | `renew.lua`: `ZSCORE`, `HGET` TTL, `ZADD XX` | O(log n) |
//! | `status` | `status.lua`: session lookup, or `ZSCORE` + `ZRANK` + `ZCARD` | O(log n) |
//! | `stats` | `stats.lua`: `HMGET` counters, 2 `ZCARD`, `ZCOUNT` rate | O(log n) |
//!
//! Admit is atomic and idempotent: any node may run it for any room at any
//! time, concurrently; each run sees the result of the previous one, so the
//! room never goes past capacity (except in mode `passthrough`, by design)
//! and, in modes `fifo` and `reject`, admits strictly in ticket order.
//!
//! # Events
//!
//! The first event of a room not yet ended governs it (see [`Event`]):
//! before its `prequeue_start` join answers [`JoinOutcome::EventNotOpen`]
//! to a new device; the pre-queue's first join records the first
//! pre-queue ticket (and, for `order: shuffle`, logs the commitment just
//! before its own entry); admit holds every admission until
//! `event_start`; the first join or admit after it records the last
//! pre-queue ticket; then the first admit run orders the pre-queue — for a
//! shuffle, [`pace_protocol::audit::shuffle_order`] of the seed and the
//! waiting pre-queue tickets, the k-th device of the order renumbered to
//! the k-th smallest ticket, logged with the seed — and admits in ticket
//! order with the event's overrides. In Redis the node computes the order
//! (SHA-256 is not in Lua) and `shuffle.lua` applies it only if the
//! pre-queue is still exactly what the node read (else the node reads
//! again); the memory store does it in its locked section. A shuffled
//! event's seed is drawn once, when the event is first stored (`HSETNX`),
//! and revealed by `get_room` once the shuffle is done.

mod memory;
mod redis;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use pace_protocol::DeviceId;
use serde::{Deserialize, Serialize};

pub use memory::MemoryQueueStore;
pub use redis::RedisQueueStore;
pub(crate) use redis::sscan_members;

/// Length of the sliding window of `admit_per_minute`, in ms.
pub const RATE_WINDOW_MS: u64 = 60_000;

pub use pace_protocol::RoomId;

pub use pace_protocol::room::{
    Appearance, DEFAULT_COLOURS, Event, EventOrder, EventPhase, MESSAGE_MAX_LEN, QueueMode, Room,
    RoomConfig, RoomState, TARGET_URL_MAX_LEN, TITLE_MAX_LEN, contrast,
};

/// A fresh shuffle seed: 32 bytes from the OS RNG, as 64 hex digits.
pub fn new_seed() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Refuses to change the `order` of an event whose pre-queue has opened
/// (`opened(id)`): its commitment (or the promise of join order) stands
/// once anyone joined it. `stored` is the room's config before the change.
fn check_order_kept(
    stored: Option<&RoomConfig>,
    config: &RoomConfig,
    opened: impl Fn(&str) -> bool,
) -> Result<(), QueueError> {
    let Some(stored) = stored else {
        return Ok(());
    };
    for e in &config.events {
        if let Some(old) = stored.event(&e.id)
            && old.order != e.order
            && opened(&e.id)
        {
            return Err(QueueError::InvalidConfig(format!(
                "event {}: its pre-queue has opened, so its order stays {}",
                e.id,
                match old.order {
                    EventOrder::Fifo => "fifo",
                    EventOrder::Shuffle => "shuffle",
                }
            )));
        }
    }
    Ok(())
}

/// `config` as a store keeps it: the node's own fields of every event
/// (`seed_sha256`, `seed`) dropped, whatever a client sent; the store then
/// sets each shuffled event's commitment from the seed it holds.
fn without_seeds(config: &RoomConfig) -> RoomConfig {
    let mut c = config.clone();
    for e in &mut c.events {
        e.seed_sha256 = None;
        e.seed = None;
    }
    c
}

/// A waiting device's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    /// The ticket the device got when it joined: its order in the queue.
    pub ticket: u64,
    /// 1-based position in the queue now.
    pub position: u64,
    /// Devices waiting in the room now.
    pub waiting_total: u64,
}

/// An admitted device's session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    /// The session's id (UUID v4 form), bound into the admission token.
    pub session_id: String,
    /// The ticket the device waited with.
    pub ticket: u64,
    /// When it was admitted, Unix ms.
    pub admitted_at_ms: u64,
    /// When the session expires unless renewed, Unix ms.
    pub expires_at_ms: u64,
}

impl Admission {
    /// The expiry in whole Unix seconds, rounded up: the admission token's
    /// `exp`, the `admitted` frame's and the status route's `expires_at`
    /// are all this one value.
    pub fn expires_at_secs(&self) -> u64 {
        self.expires_at_ms.div_ceil(1000)
    }
}

/// What [`QueueStore::join`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinOutcome {
    /// The device waits (a new place, or the one it already had).
    Waiting(Place),
    /// The device already holds a live session (it gets it again).
    Admitted(Admission),
    /// The room is closed to new joins.
    Closed,
    /// The room's mode is `reject`: new joins are refused.
    Rejected,
    /// The room's next event has not opened its pre-queue: new joins are
    /// refused until `opens_at` (Unix ms, the store's clock).
    EventNotOpen {
        /// The event's `prequeue_start`.
        opens_at: u64,
    },
    /// No such room.
    NoSuchRoom,
}

/// What a device joining with [`QueueStore::join_room`] brings against
/// the room's proof of work (`pow_difficulty` above 0). Only a device
/// without a place or live session is asked for one; the others keep
/// theirs without new work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowAnswer {
    /// The node already knows the device as a waiter: no work asked.
    Exempt,
    /// No solution: a device without a place gets a challenge.
    Unsolved,
    /// A solution the node found invalid (signature, binding, expiry,
    /// hash): refused if the device needs one.
    Invalid,
    /// A valid solution: its challenge id is claimed once (a mark under
    /// the room's hash tag, kept `ttl_ms`) if the device needs one.
    Solved {
        /// The challenge's `jti`.
        jti: String,
        /// How long the mark is kept: the challenge's remaining life.
        ttl_ms: u64,
    },
}

/// Why [`QueueStore::join_room`] took no place for want of proof of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowGate {
    /// No solution: the device must solve a challenge first.
    Challenge,
    /// The solution was invalid.
    Invalid,
    /// The challenge was solved already (its mark is claimed).
    Reused,
}

/// What [`QueueStore::join_room`] did: everything a node answers a `join`
/// with, read in the same step as the join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinAttempt {
    /// No such room.
    NoSuchRoom,
    /// No place taken: the room asks proof of work of this device.
    Pow {
        /// The room (its difficulty for the challenge).
        room: Room,
        /// Why.
        gate: PowGate,
    },
    /// The join ran.
    Joined {
        /// The room, as the join saw it.
        room: Room,
        /// What the join did.
        outcome: JoinOutcome,
        /// The room's admissions in the last 60 s (for the wait estimate).
        admitted_last_minute: u64,
        /// Whether a solution's mark was claimed by this join (the device
        /// needed the work and brought it).
        pow_claimed: bool,
    },
}

/// Where a device stands in a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceStatus {
    /// Waiting.
    Waiting(Place),
    /// Holding a live (unexpired) session.
    Admitted(Admission),
    /// Neither: never joined, left, swept, released or expired.
    Unknown,
}

/// What one [`QueueStore::admit`] run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdmitOutcome {
    /// Devices admitted now, in ticket order.
    pub admitted: Vec<(DeviceId, Admission)>,
    /// How long each of `admitted` waited (join → admission), ms, same order.
    pub waited_ms: Vec<u64>,
    /// Devices whose sessions expired and were freed now.
    pub expired: Vec<DeviceId>,
    /// Sessions active after the run.
    pub active: u64,
    /// Devices waiting after the run.
    pub waiting: u64,
}

pub use pace_protocol::rest::WAIT_BUCKETS_SECS;

/// The distribution of waits (join → admission) of a room's admissions,
/// cluster-wide.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitDistribution {
    /// Admissions per bucket (not cumulative): `counts[i]` waited at most
    /// `WAIT_BUCKETS_SECS[i]` s and more than the previous bound; the last
    /// entry is over the largest bound.
    pub counts: Vec<u64>,
    /// Sum of every wait, ms.
    pub sum_ms: u64,
}

impl WaitDistribution {
    /// The index of the bucket a wait of `waited_ms` falls into.
    pub fn bucket(waited_ms: u64) -> usize {
        WAIT_BUCKETS_SECS
            .iter()
            .position(|b| waited_ms <= b * 1000)
            .unwrap_or(WAIT_BUCKETS_SECS.len())
    }

    /// Admissions counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Positions of several devices at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions {
    /// 1-based position of each requested device, in request order; `None`
    /// for a device not waiting.
    pub positions: Vec<Option<u64>>,
    /// Devices waiting in the room.
    pub waiting_total: u64,
}

/// A room's numbers, cluster-wide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomCounters {
    /// Devices waiting now.
    pub waiting: u64,
    /// Sessions holding a slot now (expired ones count until freed).
    pub active: u64,
    /// Admissions since the room was created.
    pub admitted_total: u64,
    /// Devices that left or were swept before admission.
    pub abandoned_total: u64,
    /// Most devices ever waiting at once.
    pub peak_waiting: u64,
    /// Admissions in the last 60 s: the measured throughput.
    pub admitted_last_minute: u64,
}

/// What one [`LogRecord`] says happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    /// A device took a new place.
    Join {
        /// Its ticket.
        ticket: u64,
        /// [`pace_protocol::audit::device_hash`] of the room and device.
        device: String,
    },
    /// A device was admitted.
    Admit {
        /// The ticket it waited with.
        ticket: u64,
        /// Its session id.
        session: String,
        /// The room's capacity at that moment.
        capacity: u32,
        /// The room's queueing mode at that moment.
        mode: QueueMode,
    },
    /// A session ended and freed its slot.
    End {
        /// The session's ticket.
        ticket: u64,
        /// The session id.
        session: String,
        /// Released (or revoked), or expired.
        reason: EndReason,
    },
    /// An event committed to its shuffle seed (its pre-queue opened).
    Commit {
        /// The event's id.
        event: String,
        /// Hex SHA-256 of the seed.
        seed_sha256: String,
    },
    /// An event's pre-queue was shuffled at its start.
    Shuffle {
        /// The event's id.
        event: String,
        /// The seed, revealed.
        seed: String,
        /// The pre-queue's tickets (as joined) in admission order.
        order: Vec<u64>,
    },
}

/// One entry of a room's audit log, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Position in the room's log: 1, 2, … without gaps.
    pub seq: u64,
    /// When, Unix ms (the `now_ms` of the operation that wrote it).
    pub t: u64,
    /// What happened.
    pub event: LogEvent,
}

pub use pace_protocol::audit::{EndReason, LogCheckpoint};

/// Failures of a queue store.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The store cannot be reached or did not answer in time (retryable).
    #[error("queue store unavailable: {0}")]
    Unavailable(String),
    /// Redis failed the command (the client's error kept as the source;
    /// retryable).
    #[error("queue store: redis: {0}")]
    Redis(#[from] fred::error::Error),
    /// The room configuration was refused.
    #[error("invalid room config: {0}")]
    InvalidConfig(String),
    /// The store answered something this version does not understand.
    #[error("unexpected queue store reply: {0}")]
    BadReply(String),
}

/// A queue store failure answers the retryable `store_unavailable`, but a
/// refused room configuration is the caller's `bad_request`.
impl From<QueueError> for crate::error::ApiError {
    fn from(e: QueueError) -> crate::error::ApiError {
        use crate::error::ApiError;
        match e {
            QueueError::InvalidConfig(msg) => {
                ApiError::new(pace_protocol::ErrorCode::BadRequest, msg)
            }
            other => ApiError::store_unavailable("queue store", &other),
        }
    }
}

/// The waiting room's shared state. Time-dependent methods take `now_ms`
/// (Unix ms, the caller's clock; see the module docs).
#[async_trait]
pub trait QueueStore: Send + Sync + fmt::Debug + 'static {
    /// `memory` or `redis`.
    fn kind(&self) -> &'static str;

    /// The store's clock, Unix ms: Redis `TIME` (one clock for the whole
    /// cluster), or the process's clock for the memory store. Events'
    /// times are compared with it, never with a node's clock.
    async fn clock_ms(&self) -> Result<u64, QueueError>;

    /// Creates the room or replaces its whole config; its queue, sessions
    /// and counters are kept.
    async fn put_room(&self, room: &RoomId, config: &RoomConfig) -> Result<Room, QueueError>;

    /// The room, if it exists.
    async fn get_room(&self, room: &RoomId) -> Result<Option<Room>, QueueError>;

    /// Every room id, sorted.
    async fn rooms(&self) -> Result<Vec<RoomId>, QueueError>;

    /// Records that `user` holds (or is taking) a place in `room` with
    /// `device`; returns every device recorded for the user there.
    async fn add_user_place(
        &self,
        room: &RoomId,
        user: &str,
        device: &DeviceId,
    ) -> Result<Vec<DeviceId>, QueueError>;

    /// Forgets `device` among `user`'s places in `room`.
    async fn remove_user_place(
        &self,
        room: &RoomId,
        user: &str,
        device: &DeviceId,
    ) -> Result<(), QueueError>;

    /// The tenant that owns `room` (rooms made with the service key have
    /// none).
    async fn room_owner(&self, room: &RoomId) -> Result<Option<String>, QueueError>;

    /// Makes `tenant` the owner of `room` when the room does not exist yet
    /// and nobody owns it, atomically. Returns the owner after the call
    /// (`None`: the room exists without an owner).
    async fn claim_room(&self, room: &RoomId, tenant: &str) -> Result<Option<String>, QueueError>;

    /// Joins `device` to the room's queue, or returns the place or live
    /// session it already has. Also counts as a heartbeat. A session that
    /// has expired but was not yet freed is freed here and the device
    /// queues anew.
    async fn join(
        &self,
        room: &RoomId,
        device: &DeviceId,
        now_ms: u64,
    ) -> Result<JoinOutcome, QueueError>;

    /// A node's whole `join`, in one step: the room, the proof-of-work
    /// gate (see [`PowAnswer`]; a solution's mark is claimed only when the
    /// device needs one, so it works once), [`QueueStore::join`] and the
    /// room's admissions of the last minute. The Redis store does it in one
    /// script (one round trip); this default composes the other methods.
    async fn join_room(
        &self,
        room: &RoomId,
        device: &DeviceId,
        now_ms: u64,
        pow: &PowAnswer,
    ) -> Result<JoinAttempt, QueueError> {
        let Some(r) = self.get_room(room).await? else {
            return Ok(JoinAttempt::NoSuchRoom);
        };
        let mut pow_claimed = false;
        if r.config.pow_difficulty > 0
            && *pow != PowAnswer::Exempt
            && matches!(
                self.status(room, device, now_ms).await?,
                DeviceStatus::Unknown
            )
        {
            let gate = match pow {
                PowAnswer::Exempt => None,
                PowAnswer::Unsolved => Some(PowGate::Challenge),
                PowAnswer::Invalid => Some(PowGate::Invalid),
                PowAnswer::Solved { jti, ttl_ms } => {
                    pow_claimed = self.claim_mark(room, jti, *ttl_ms, now_ms).await?;
                    (!pow_claimed).then_some(PowGate::Reused)
                }
            };
            if let Some(gate) = gate {
                return Ok(JoinAttempt::Pow { room: r, gate });
            }
        }
        let outcome = self.join(room, device, now_ms).await?;
        let admitted_last_minute = self.stats(room, now_ms).await?.admitted_last_minute;
        Ok(JoinAttempt::Joined {
            room: r,
            outcome,
            admitted_last_minute,
            pow_claimed,
        })
    }

    /// Claims proof-of-work challenge `jti`'s mark in `room` for `ttl_ms`:
    /// `true` the first time, `false` while the mark lives.
    async fn claim_mark(
        &self,
        room: &RoomId,
        jti: &str,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Result<bool, QueueError>;

    /// Heartbeat of waiting devices, in one call per batch. Returns the
    /// devices among them that are not waiting (admitted, swept, left).
    async fn touch(
        &self,
        room: &RoomId,
        devices: &[DeviceId],
        now_ms: u64,
    ) -> Result<Vec<DeviceId>, QueueError>;

    /// Removes waiting devices whose last heartbeat is more than `grace_ms`
    /// before `now_ms` (counted as abandoned); returns them, oldest
    /// heartbeat first.
    async fn sweep(
        &self,
        room: &RoomId,
        now_ms: u64,
        grace_ms: u64,
    ) -> Result<Vec<DeviceId>, QueueError>;

    /// Frees expired sessions (`expires_at_ms <= now_ms`), then admits the
    /// head of the queue in ticket order while the room is not paused,
    /// active sessions are below capacity and the per-minute budget allows.
    /// Atomic; safe to run from every node at once.
    async fn admit(&self, room: &RoomId, now_ms: u64) -> Result<AdmitOutcome, QueueError>;

    /// A waiting device's place.
    async fn position(&self, room: &RoomId, device: &DeviceId)
    -> Result<Option<Place>, QueueError>;

    /// Positions of many devices at one instant.
    async fn positions(&self, room: &RoomId, devices: &[DeviceId])
    -> Result<Positions, QueueError>;

    /// The first `n` waiting devices, in ticket order.
    async fn head(&self, room: &RoomId, n: usize) -> Result<Vec<DeviceId>, QueueError>;

    /// Removes a waiting device's place (counted as abandoned). Returns
    /// whether it was waiting; an admitted device's session is untouched.
    async fn leave(&self, room: &RoomId, device: &DeviceId) -> Result<bool, QueueError>;

    /// Ends a session and frees its slot (logged at `now_ms`). Returns
    /// whether it was held.
    async fn release(
        &self,
        room: &RoomId,
        session_id: &str,
        now_ms: u64,
    ) -> Result<bool, QueueError>;

    /// Extends a live session to `now_ms` + the room's session TTL and
    /// returns the new expiry; `None` if it is unknown or already expired.
    async fn renew(
        &self,
        room: &RoomId,
        session_id: &str,
        now_ms: u64,
    ) -> Result<Option<u64>, QueueError>;

    /// Where `device` stands (sessions expired by `now_ms` count as gone).
    async fn status(
        &self,
        room: &RoomId,
        device: &DeviceId,
        now_ms: u64,
    ) -> Result<DeviceStatus, QueueError>;

    /// The room's counters (zero for an unknown room).
    async fn stats(&self, room: &RoomId, now_ms: u64) -> Result<RoomCounters, QueueError>;

    /// The room's wait-time distribution (join → admission), cluster-wide.
    async fn waits(&self, room: &RoomId) -> Result<WaitDistribution, QueueError>;

    /// The audit log's entries after `after_seq`, in order, at most `limit`.
    async fn log(
        &self,
        room: &RoomId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<LogRecord>, QueueError>;

    /// The room's oldest kept checkpoints, by `seq`, at most `limit`.
    async fn checkpoints(
        &self,
        room: &RoomId,
        limit: usize,
    ) -> Result<Vec<LogCheckpoint>, QueueError>;

    /// The room's latest checkpoint.
    async fn last_checkpoint(&self, room: &RoomId) -> Result<Option<LogCheckpoint>, QueueError>;

    /// Adds `checkpoint` if the latest one is still at `expected_seq` (0:
    /// none yet), atomically; returns whether it was added. Nodes sealing
    /// the same room at once thus never fork the chain: one wins, the
    /// others see `false`.
    async fn add_checkpoint(
        &self,
        room: &RoomId,
        expected_seq: u64,
        checkpoint: &LogCheckpoint,
    ) -> Result<bool, QueueError>;

    /// Drops the entries up to `through_seq` and the checkpoints before it;
    /// the checkpoint at `through_seq` stays as the anchor of what is left.
    async fn trim_log(&self, room: &RoomId, through_seq: u64) -> Result<(), QueueError>;
}

/// A queue store shared by the node's tasks.
pub type SharedQueueStore = Arc<dyn QueueStore>;

/// The conformance suite every [`QueueStore`] passes. Each store's tests
/// instantiate it with [`queue_conformance!`], giving a setup function
/// `async fn(name) -> (guard, SharedQueueStore)` that returns a fresh store.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Mutex;

    /// Start of time in the tests (any value works; a realistic one).
    pub const T0: u64 = 1_700_000_000_000;

    /// One `#[tokio::test]` per conformance case, calling `$setup`.
    macro_rules! queue_conformance {
        ($setup:path) => {
            $crate::queue::conformance::queue_conformance!(@cases $setup,
                rejoin_keeps_the_same_place,
                admits_in_ticket_order_up_to_capacity,
                concurrent_admits_never_exceed_capacity,
                admit_per_minute_budget,
                paused_admits_nobody,
                closed_refuses_new_joins_only,
                raised_capacity_admits_more,
                release_and_expiry_free_slots,
                renew_extends_a_session,
                sweep_drops_silent_devices_only,
                admitted_device_rejoining_gets_its_admission,
                counters,
                positions_and_head,
                rooms_and_config,
                rooms_have_one_owner,
                user_places_are_recorded,
                leave_gives_up_a_place,
                wait_times_are_measured_from_the_first_join,
                the_log_follows_the_queue,
                checkpoints_are_compare_and_set_and_trimmed,
                random_mode_is_a_uniform_lottery_that_admits_everyone,
                passthrough_admits_everyone_at_once_and_counts,
                reject_refuses_new_joins_only,
                modes_switch_live,
                an_event_counts_down_prequeues_and_shuffles_by_the_store_clock,
                a_fifo_event_puts_its_prequeue_first_in_join_order,
                join_room_is_the_whole_join,
                a_challenge_is_asked_of_new_devices_and_works_once,
            );
        };
        (@cases $setup:path, $($case:ident),* $(,)?) => {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (_guard, store) = $setup(stringify!($case)).await;
                    $crate::queue::conformance::$case(store).await;
                }
            )*
        };
    }
    pub(crate) use queue_conformance;

    pub fn room(s: &str) -> RoomId {
        RoomId::parse(s).unwrap()
    }

    pub fn dev(s: &str) -> DeviceId {
        DeviceId::parse(s).unwrap()
    }

    /// One lottery of five devices in a `random` room of capacity 1, each
    /// released before the next draw: the tickets in admission order (the
    /// seeded-lottery tests of both stores).
    pub async fn seeded_lottery(s: &dyn QueueStore) -> Vec<u64> {
        let r = room("lottery");
        let mut c = config(1);
        c.mode = super::QueueMode::Random;
        s.put_room(&r, &c).await.unwrap();
        for i in 1..=5 {
            s.join(&r, &dev(&format!("d{i}")), T0 + i).await.unwrap();
        }
        let mut order = Vec::new();
        for step in 0..5 {
            let o = s.admit(&r, T0 + 10 + step).await.unwrap();
            let (_, a) = &o.admitted[0];
            order.push(a.ticket);
            s.release(&r, &a.session_id, T0 + 10 + step).await.unwrap();
        }
        order
    }

    pub fn config(capacity: u32) -> RoomConfig {
        RoomConfig::open(capacity, "https://shop.example/checkout")
    }

    async fn new_room(s: &SharedQueueStore, name: &str, c: RoomConfig) -> RoomId {
        let r = room(name);
        s.put_room(&r, &c).await.unwrap();
        r
    }

    async fn waiting(s: &SharedQueueStore, r: &RoomId, d: &str, now: u64) -> Place {
        match s.join(r, &dev(d), now).await.unwrap() {
            JoinOutcome::Waiting(p) => p,
            other => panic!("{d}: expected waiting, got {other:?}"),
        }
    }

    fn admitted_names(o: &AdmitOutcome) -> Vec<&str> {
        o.admitted.iter().map(|(d, _)| d.as_str()).collect()
    }

    fn assert_uuid_v4(sid: &str) {
        let u = uuid::Uuid::parse_str(sid).unwrap();
        assert_eq!(u.get_version_num(), 4, "{sid}");
        assert_eq!(u.get_variant(), uuid::Variant::RFC4122, "{sid}");
        assert_eq!(u.hyphenated().to_string(), sid, "canonical form");
    }

    /// Joining again (also after heartbeats) returns the same ticket; a
    /// new device gets the next ticket at the back.
    /// The wait of an admission runs from the device's first join (a
    /// rejoin does not reset it) to its admission, and lands in the room's
    /// distribution; a device that left is not counted.
    pub async fn wait_times_are_measured_from_the_first_join(s: SharedQueueStore) {
        let r = new_room(&s, "waits", config(0)).await;
        waiting(&s, &r, "a", T0).await;
        waiting(&s, &r, "gone", T0 + 100).await;
        waiting(&s, &r, "b", T0 + 2_000).await;
        waiting(&s, &r, "a", T0 + 2_500).await; // rejoin: same place, same start
        assert!(s.leave(&r, &dev("gone")).await.unwrap());
        s.put_room(&r, &config(2)).await.unwrap();
        let out = s.admit(&r, T0 + 3_000).await.unwrap();
        let who: Vec<&str> = out.admitted.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(who, ["a", "b"]);
        assert_eq!(out.waited_ms, [3_000, 1_000]);
        let w = s.waits(&r).await.unwrap();
        assert_eq!(w.counts.len(), WAIT_BUCKETS_SECS.len() + 1);
        assert_eq!(
            (w.counts[0], w.counts[1], w.count(), w.sum_ms),
            (1, 1, 2, 4_000)
        );
        assert_eq!(WaitDistribution::bucket(3_600_001), WAIT_BUCKETS_SECS.len());
        let empty = new_room(&s, "no-waits", config(1)).await;
        assert_eq!(s.waits(&empty).await.unwrap().count(), 0);
    }

    /// Every new place, admission and end of a session is in the room's
    /// log, numbered without gaps, by the operation that made it; the
    /// device appears hashed. Rejoins, refused joins, leaves and heartbeats
    /// write nothing.
    pub async fn the_log_follows_the_queue(s: SharedQueueStore) {
        use pace_protocol::audit::device_hash;
        let r = new_room(&s, "log", config(1)).await;
        waiting(&s, &r, "a", T0).await;
        waiting(&s, &r, "b", T0 + 1).await;
        waiting(&s, &r, "a", T0 + 2).await;
        s.touch(&r, &[dev("b")], T0 + 3).await.unwrap();
        let a = s.admit(&r, T0 + 10).await.unwrap().admitted[0].1.clone();
        assert!(s.release(&r, &a.session_id, T0 + 20).await.unwrap());
        assert!(!s.release(&r, &a.session_id, T0 + 21).await.unwrap());
        let b = s.admit(&r, T0 + 30).await.unwrap().admitted[0].1.clone();
        waiting(&s, &r, "c", T0 + 40).await;
        waiting(&s, &r, "gone", T0 + 41).await;
        assert!(s.leave(&r, &dev("gone")).await.unwrap());
        // b expires and is freed by admit, which admits c.
        let o = s.admit(&r, b.expires_at_ms).await.unwrap();
        assert_eq!(o.expired, [dev("b")]);
        let c = o.admitted[0].1.clone();
        // c expires and rejoins before any admit: the join frees it.
        waiting(&s, &r, "c", c.expires_at_ms).await;
        let mut closed = config(1);
        closed.state = RoomState::Closed;
        s.put_room(&r, &closed).await.unwrap();
        assert_eq!(
            s.join(&r, &dev("late"), c.expires_at_ms).await.unwrap(),
            JoinOutcome::Closed
        );
        let join = |seq, t, ticket, d: &str| LogRecord {
            seq,
            t,
            event: LogEvent::Join {
                ticket,
                device: device_hash("log", d),
            },
        };
        let admit = |seq, t, ticket, a: &Admission| LogRecord {
            seq,
            t,
            event: LogEvent::Admit {
                ticket,
                session: a.session_id.clone(),
                capacity: 1,
                mode: QueueMode::Fifo,
            },
        };
        let end = |seq, t, ticket, a: &Admission, reason| LogRecord {
            seq,
            t,
            event: LogEvent::End {
                ticket,
                session: a.session_id.clone(),
                reason,
            },
        };
        let want = vec![
            join(1, T0, 1, "a"),
            join(2, T0 + 1, 2, "b"),
            admit(3, T0 + 10, 1, &a),
            end(4, T0 + 20, 1, &a, EndReason::Released),
            admit(5, T0 + 30, 2, &b),
            join(6, T0 + 40, 3, "c"),
            join(7, T0 + 41, 4, "gone"),
            end(8, b.expires_at_ms, 2, &b, EndReason::Expired),
            admit(9, b.expires_at_ms, 3, &c),
            end(10, c.expires_at_ms, 3, &c, EndReason::Expired),
            join(11, c.expires_at_ms, 5, "c"),
        ];
        assert_eq!(s.log(&r, 0, 100).await.unwrap(), want);
        assert_eq!(s.log(&r, 2, 3).await.unwrap(), want[2..5]);
        assert!(s.log(&r, 11, 10).await.unwrap().is_empty());
        assert!(s.log(&room("unknown"), 0, 10).await.unwrap().is_empty());
    }

    /// A checkpoint is added only on top of the expected one; trimming
    /// keeps the anchor checkpoint and the entries after it.
    pub async fn checkpoints_are_compare_and_set_and_trimmed(s: SharedQueueStore) {
        let r = new_room(&s, "seal", config(0)).await;
        for (i, d) in ["a", "b", "c", "d"].iter().enumerate() {
            waiting(&s, &r, d, T0 + i as u64).await;
        }
        let cp = |seq: u64, head: &str| LogCheckpoint {
            seq,
            head: head.repeat(64),
            t: T0 + seq,
            jws: format!("jws.{seq}.x"),
        };
        assert_eq!(s.last_checkpoint(&r).await.unwrap(), None);
        assert!(s.checkpoints(&r, 10).await.unwrap().is_empty());
        assert!(s.add_checkpoint(&r, 0, &cp(1, "a")).await.unwrap());
        assert!(
            !s.add_checkpoint(&r, 0, &cp(2, "f")).await.unwrap(),
            "another node sealed first"
        );
        assert!(s.add_checkpoint(&r, 1, &cp(2, "b")).await.unwrap());
        assert!(s.add_checkpoint(&r, 2, &cp(3, "c")).await.unwrap());
        assert_eq!(s.last_checkpoint(&r).await.unwrap(), Some(cp(3, "c")));
        assert_eq!(
            s.checkpoints(&r, 10).await.unwrap(),
            [cp(1, "a"), cp(2, "b"), cp(3, "c")]
        );
        s.trim_log(&r, 2).await.unwrap();
        let seqs: Vec<u64> = s
            .log(&r, 0, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [3, 4]);
        assert_eq!(
            s.checkpoints(&r, 10).await.unwrap(),
            [cp(2, "b"), cp(3, "c")]
        );
        assert_eq!(s.checkpoints(&r, 1).await.unwrap(), [cp(2, "b")]);
        // Numbering goes on after a trim.
        waiting(&s, &r, "e", T0 + 10).await;
        assert_eq!(s.log(&r, 4, 10).await.unwrap()[0].seq, 5);
        assert!(
            !s.add_checkpoint(&room("unknown"), 0, &cp(1, "a"))
                .await
                .unwrap()
        );
    }

    pub async fn rejoin_keeps_the_same_place(s: SharedQueueStore) {
        let r = new_room(&s, "rejoin", config(0)).await;
        let a = waiting(&s, &r, "a", T0).await;
        let b = waiting(&s, &r, "b", T0 + 1).await;
        let c = waiting(&s, &r, "c", T0 + 2).await;
        assert!(a.ticket < b.ticket && b.ticket < c.ticket);
        assert_eq!((b.position, b.waiting_total), (2, 2));
        assert_eq!((c.position, c.waiting_total), (3, 3));
        let again = waiting(&s, &r, "b", T0 + 10).await;
        assert_eq!(
            again,
            Place {
                waiting_total: 3,
                ..b
            }
        );
        assert_eq!(s.touch(&r, &[dev("b")], T0 + 20).await.unwrap(), vec![]);
        let again = waiting(&s, &r, "b", T0 + 30).await;
        assert_eq!((again.ticket, again.position), (b.ticket, 2));
        let d = waiting(&s, &r, "d", T0 + 40).await;
        assert!(d.ticket > c.ticket);
        assert_eq!(s.stats(&r, T0).await.unwrap().waiting, 4);
    }

    /// `join_room` answers with the room as stored, the join's outcome and
    /// the last minute's admissions, and a missing room as such.
    pub async fn join_room_is_the_whole_join(s: SharedQueueStore) {
        let none = PowAnswer::Unsolved;
        assert_eq!(
            s.join_room(&room("nowhere"), &dev("a"), T0, &none)
                .await
                .unwrap(),
            JoinAttempt::NoSuchRoom
        );
        let r = new_room(&s, "whole", config(1)).await;
        let stored = s.get_room(&r).await.unwrap().unwrap();
        let JoinAttempt::Joined {
            room: seen,
            outcome,
            admitted_last_minute,
            pow_claimed: false,
        } = s.join_room(&r, &dev("a"), T0, &none).await.unwrap()
        else {
            panic!("a: expected a join");
        };
        assert_eq!(seen, stored);
        assert_eq!(admitted_last_minute, 0);
        let JoinOutcome::Waiting(a) = outcome else {
            panic!("a: expected waiting, got {outcome:?}");
        };
        assert_eq!((a.position, a.waiting_total), (1, 1));
        let adm = s.admit(&r, T0 + 1).await.unwrap().admitted[0].1.clone();
        let b = s.join_room(&r, &dev("b"), T0 + 2, &none).await.unwrap();
        let JoinAttempt::Joined {
            outcome: JoinOutcome::Waiting(b),
            admitted_last_minute: 1,
            ..
        } = b
        else {
            panic!("b: expected waiting after one admission, got {b:?}");
        };
        assert!(b.ticket > a.ticket);
        // A rejoin keeps the place; the admitted device gets its session.
        let again = s.join_room(&r, &dev("b"), T0 + 3, &none).await.unwrap();
        assert!(
            matches!(again, JoinAttempt::Joined { outcome: JoinOutcome::Waiting(p), .. } if p == b)
        );
        let again = s.join_room(&r, &dev("a"), T0 + 4, &none).await.unwrap();
        assert!(
            matches!(again, JoinAttempt::Joined { outcome: JoinOutcome::Admitted(x), .. } if x == adm)
        );
        // Past the window the admission no longer counts.
        let later = s
            .join_room(&r, &dev("b"), T0 + 1 + RATE_WINDOW_MS, &none)
            .await
            .unwrap();
        assert!(matches!(
            later,
            JoinAttempt::Joined {
                admitted_last_minute: 0,
                ..
            }
        ));
        let mut closed = config(1);
        closed.state = RoomState::Closed;
        s.put_room(&r, &closed).await.unwrap();
        let c = s.join_room(&r, &dev("c"), T0 + 5, &none).await.unwrap();
        assert!(
            matches!(&c, JoinAttempt::Joined { outcome: JoinOutcome::Closed, room, .. } if room.config.state == RoomState::Closed),
            "{c:?}"
        );
    }

    /// With `pow_difficulty` above 0, a device without a place is asked for
    /// a challenge and takes none until it brings a valid solution, whose
    /// mark works once (per room); devices with a place or session keep it.
    pub async fn a_challenge_is_asked_of_new_devices_and_works_once(s: SharedQueueStore) {
        let mut c = config(1);
        c.pow_difficulty = 8;
        let r = new_room(&s, "pow", c.clone()).await;
        let other = new_room(&s, "pow-other", c).await;
        let gate = |a: JoinAttempt| match a {
            JoinAttempt::Pow { gate, room } => {
                assert_eq!(room.config.pow_difficulty, 8);
                Some(gate)
            }
            _ => None,
        };
        let solved = |jti: &str| PowAnswer::Solved {
            jti: jti.into(),
            ttl_ms: 60_000,
        };
        for (answer, expected) in [
            (PowAnswer::Unsolved, PowGate::Challenge),
            (PowAnswer::Invalid, PowGate::Invalid),
        ] {
            let a = s.join_room(&r, &dev("a"), T0, &answer).await.unwrap();
            assert_eq!(gate(a), Some(expected));
        }
        assert_eq!(
            s.status(&r, &dev("a"), T0).await.unwrap(),
            DeviceStatus::Unknown,
            "no place without work"
        );
        let a = s.join_room(&r, &dev("a"), T0, &solved("j1")).await.unwrap();
        let JoinAttempt::Joined {
            outcome: JoinOutcome::Waiting(a),
            pow_claimed: true,
            ..
        } = a
        else {
            panic!("a: expected waiting with the mark claimed, got {a:?}");
        };
        // The same challenge again, by another device: refused, no place.
        let b = s
            .join_room(&r, &dev("b"), T0 + 1, &solved("j1"))
            .await
            .unwrap();
        assert_eq!(gate(b), Some(PowGate::Reused));
        assert_eq!(s.stats(&r, T0 + 1).await.unwrap().waiting, 1);
        // A mark is the room's: the same id elsewhere is a first use.
        let o = s
            .join_room(&other, &dev("b"), T0 + 1, &solved("j1"))
            .await
            .unwrap();
        assert!(matches!(
            o,
            JoinAttempt::Joined {
                outcome: JoinOutcome::Waiting(_),
                ..
            }
        ));
        // A device with a place rejoins without work, whatever it brings.
        for answer in [PowAnswer::Unsolved, PowAnswer::Invalid, solved("j1")] {
            let again = s.join_room(&r, &dev("a"), T0 + 2, &answer).await.unwrap();
            assert!(
                matches!(again, JoinAttempt::Joined { outcome: JoinOutcome::Waiting(p), pow_claimed: false, .. } if p.ticket == a.ticket)
            );
        }
        let adm = s.admit(&r, T0 + 3).await.unwrap().admitted[0].1.clone();
        let again = s
            .join_room(&r, &dev("a"), T0 + 4, &PowAnswer::Unsolved)
            .await
            .unwrap();
        assert!(
            matches!(again, JoinAttempt::Joined { outcome: JoinOutcome::Admitted(x), .. } if x == adm)
        );
        // Exempt (a waiter the node knows): no work asked.
        let e = s
            .join_room(&r, &dev("e"), T0 + 5, &PowAnswer::Exempt)
            .await
            .unwrap();
        assert!(matches!(
            e,
            JoinAttempt::Joined {
                outcome: JoinOutcome::Waiting(_),
                ..
            }
        ));
        // A fresh solution works.
        let b = s
            .join_room(&r, &dev("b"), T0 + 6, &solved("j2"))
            .await
            .unwrap();
        assert!(matches!(
            b,
            JoinAttempt::Joined {
                outcome: JoinOutcome::Waiting(_),
                ..
            }
        ));
    }

    /// The head of the queue is admitted in ticket order, never past
    /// capacity; an admission carries a UUID v4 session and the TTL.
    pub async fn admits_in_ticket_order_up_to_capacity(s: SharedQueueStore) {
        let r = new_room(&s, "fifo", config(3)).await;
        for (i, d) in ["d1", "d2", "d3", "d4", "d5"].iter().enumerate() {
            waiting(&s, &r, d, T0 + i as u64).await;
        }
        let o = s.admit(&r, T0 + 100).await.unwrap();
        assert_eq!(admitted_names(&o), ["d1", "d2", "d3"]);
        assert_eq!((o.active, o.waiting), (3, 2));
        assert!(o.expired.is_empty());
        let tickets: Vec<u64> = o.admitted.iter().map(|(_, a)| a.ticket).collect();
        assert!(tickets.windows(2).all(|w| w[0] < w[1]), "{tickets:?}");
        let sids: HashSet<&str> = o
            .admitted
            .iter()
            .map(|(_, a)| a.session_id.as_str())
            .collect();
        assert_eq!(sids.len(), 3);
        for (_, a) in &o.admitted {
            assert_uuid_v4(&a.session_id);
            assert_eq!(a.admitted_at_ms, T0 + 100);
            assert_eq!(a.expires_at_ms, T0 + 100 + 60_000);
        }
        let again = s.admit(&r, T0 + 200).await.unwrap();
        assert!(again.admitted.is_empty(), "full: {again:?}");
        assert_eq!((again.active, again.waiting), (3, 2));
        let p = s.position(&r, &dev("d4")).await.unwrap().unwrap();
        assert_eq!((p.position, p.waiting_total), (1, 2));
    }

    /// Eight tasks admit concurrently while 200 devices join (half of them
    /// before the race starts) and admitted sessions end one at a time: the
    /// room fills up to capacity and never past it, every device is
    /// admitted exactly once, and admissions follow ticket order.
    pub async fn concurrent_admits_never_exceed_capacity(s: SharedQueueStore) {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        const CAP: u64 = 7;
        const DEVICES: usize = 200;
        let r = new_room(&s, "race", config(CAP as u32)).await;
        let join = |s: SharedQueueStore, r: RoomId, range: std::ops::Range<usize>| async move {
            let mut tickets = Vec::new();
            for i in range {
                match s.join(&r, &dev(&format!("dev-{i:03}")), T0).await.unwrap() {
                    JoinOutcome::Waiting(p) => tickets.push(p.ticket),
                    other => panic!("{other:?}"),
                }
            }
            tickets
        };
        let mut tickets = join(s.clone(), r.clone(), 0..DEVICES / 2).await;
        let joiner = tokio::spawn(join(s.clone(), r.clone(), DEVICES / 2..DEVICES));

        type Batch = Vec<(DeviceId, Admission)>;
        let batches: Arc<Mutex<Vec<Batch>>> = Arc::default();
        let done = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let mut admitters = Vec::new();
        for _ in 0..8 {
            let (s, r) = (s.clone(), r.clone());
            let (batches, done, peak) = (batches.clone(), done.clone(), peak.clone());
            admitters.push(tokio::spawn(async move {
                // Sessions this worker holds; it ends one per round, so the
                // room stays full and the workers race for each free slot.
                let mut held = std::collections::VecDeque::new();
                while !done.load(Ordering::Relaxed) {
                    let o = s.admit(&r, T0 + 1).await.unwrap();
                    assert!(o.active <= CAP, "active {} > capacity", o.active);
                    peak.fetch_max(o.active, Ordering::Relaxed);
                    held.extend(o.admitted.iter().map(|(_, a)| a.session_id.clone()));
                    if !o.admitted.is_empty() {
                        batches.lock().unwrap().push(o.admitted);
                    }
                    let st = s.stats(&r, T0 + 1).await.unwrap();
                    assert!(st.active <= CAP, "stats active {} > capacity", st.active);
                    if let Some(sid) = held.pop_front() {
                        assert!(s.release(&r, &sid, T0).await.unwrap());
                    } else {
                        tokio::task::yield_now().await;
                    }
                }
                held.len() as u64
            }));
        }
        tickets.extend(joiner.await.unwrap());
        for _ in 0..2000 {
            let n: usize = batches.lock().unwrap().iter().map(Vec::len).sum();
            if n >= DEVICES {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        done.store(true, Ordering::Relaxed);
        let mut still_held = 0;
        for a in admitters {
            still_held += a.await.unwrap();
        }
        assert_eq!(peak.load(Ordering::Relaxed), CAP, "the room filled up");
        let mut batches = batches.lock().unwrap().clone();
        // Each batch is atomic and in ticket order; batches never overlap,
        // so ordered by their first ticket they spell the join order.
        batches.sort_by_key(|b| b[0].1.ticket);
        let order: Vec<u64> = batches.iter().flatten().map(|(_, a)| a.ticket).collect();
        assert_eq!(order, tickets, "admitted exactly once, in ticket order");
        for (d, a) in batches.iter().flatten() {
            let i = tickets.iter().position(|t| *t == a.ticket).unwrap();
            assert_eq!(d.as_str(), format!("dev-{i:03}"));
        }
        let st = s.stats(&r, T0 + 1).await.unwrap();
        assert_eq!((st.waiting, st.active), (0, still_held));
        assert_eq!(st.admitted_total, DEVICES as u64);
    }

    /// At most `admit_per_minute` admissions in any 60 s window.
    pub async fn admit_per_minute_budget(s: SharedQueueStore) {
        let mut c = config(100);
        c.admit_per_minute = Some(3);
        let r = new_room(&s, "rate", c).await;
        for i in 0..10 {
            waiting(&s, &r, &format!("d{i}"), T0).await;
        }
        let o = s.admit(&r, T0).await.unwrap();
        assert_eq!(admitted_names(&o), ["d0", "d1", "d2"]);
        assert!(s.admit(&r, T0 + 30_000).await.unwrap().admitted.is_empty());
        assert!(s.admit(&r, T0 + 59_999).await.unwrap().admitted.is_empty());
        assert_eq!(
            s.stats(&r, T0 + 59_999).await.unwrap().admitted_last_minute,
            3
        );
        let o = s.admit(&r, T0 + 60_000).await.unwrap();
        assert_eq!(admitted_names(&o), ["d3", "d4", "d5"]);
        assert_eq!(
            s.stats(&r, T0 + 60_000).await.unwrap().admitted_last_minute,
            3
        );
        // Lifting the limit live admits the rest at once.
        let mut c = s.get_room(&r).await.unwrap().unwrap().config;
        c.admit_per_minute = None;
        s.put_room(&r, &c).await.unwrap();
        let o = s.admit(&r, T0 + 60_001).await.unwrap();
        assert_eq!(o.admitted.len(), 4);
        assert_eq!(
            s.stats(&r, T0 + 60_001).await.unwrap().admitted_last_minute,
            7
        );
        assert_eq!(
            s.stats(&r, T0 + 200_000)
                .await
                .unwrap()
                .admitted_last_minute,
            0
        );
    }

    /// A paused room keeps queueing and admits nobody until reopened.
    pub async fn paused_admits_nobody(s: SharedQueueStore) {
        let mut c = config(5);
        c.state = RoomState::Paused;
        let r = new_room(&s, "paused", c.clone()).await;
        waiting(&s, &r, "a", T0).await;
        waiting(&s, &r, "b", T0).await;
        let o = s.admit(&r, T0 + 1).await.unwrap();
        assert!(o.admitted.is_empty());
        assert_eq!((o.active, o.waiting), (0, 2));
        c.state = RoomState::Open;
        s.put_room(&r, &c).await.unwrap();
        let o = s.admit(&r, T0 + 2).await.unwrap();
        assert_eq!(admitted_names(&o), ["a", "b"]);
    }

    /// A closed room refuses new joins; devices already waiting keep their
    /// place and are still admitted; admitted devices keep their session.
    pub async fn closed_refuses_new_joins_only(s: SharedQueueStore) {
        let mut c = config(1);
        let r = new_room(&s, "closed", c.clone()).await;
        waiting(&s, &r, "in", T0).await;
        let early = waiting(&s, &r, "early", T0).await;
        let adm = s.admit(&r, T0).await.unwrap().admitted[0].1.clone();
        c.state = RoomState::Closed;
        s.put_room(&r, &c).await.unwrap();
        assert_eq!(
            s.join(&r, &dev("late"), T0 + 1).await.unwrap(),
            JoinOutcome::Closed
        );
        assert_eq!(waiting(&s, &r, "early", T0 + 1).await.ticket, early.ticket);
        assert_eq!(
            s.join(&r, &dev("in"), T0 + 1).await.unwrap(),
            JoinOutcome::Admitted(adm.clone())
        );
        assert!(s.release(&r, &adm.session_id, T0).await.unwrap());
        let o = s.admit(&r, T0 + 2).await.unwrap();
        assert_eq!(admitted_names(&o), ["early"]);
        assert_eq!(
            s.status(&r, &dev("late"), T0 + 2).await.unwrap(),
            DeviceStatus::Unknown
        );
        assert_eq!(
            s.join(&room("nowhere"), &dev("a"), T0).await.unwrap(),
            JoinOutcome::NoSuchRoom
        );
    }

    /// Capacity changes apply on the next admit; lowering evicts nobody.
    pub async fn raised_capacity_admits_more(s: SharedQueueStore) {
        let mut c = config(1);
        let r = new_room(&s, "capacity", c.clone()).await;
        for d in ["a", "b", "c", "d"] {
            waiting(&s, &r, d, T0).await;
        }
        assert_eq!(admitted_names(&s.admit(&r, T0).await.unwrap()), ["a"]);
        c.capacity = 3;
        s.put_room(&r, &c).await.unwrap();
        let o = s.admit(&r, T0 + 1).await.unwrap();
        assert_eq!(admitted_names(&o), ["b", "c"]);
        assert_eq!(o.active, 3);
        c.capacity = 1;
        s.put_room(&r, &c).await.unwrap();
        let o = s.admit(&r, T0 + 2).await.unwrap();
        assert!(o.admitted.is_empty());
        assert_eq!(o.active, 3, "lowering capacity evicts nobody");
    }

    /// A released or expired session frees its slot for the next device;
    /// expiry is at `expires_at_ms`, inclusive.
    pub async fn release_and_expiry_free_slots(s: SharedQueueStore) {
        let r = new_room(&s, "slots", config(1)).await;
        for d in ["a", "b", "c"] {
            waiting(&s, &r, d, T0).await;
        }
        let a = s.admit(&r, T0).await.unwrap().admitted[0].1.clone();
        assert!(s.release(&r, &a.session_id, T0).await.unwrap());
        assert!(
            !s.release(&r, &a.session_id, T0).await.unwrap(),
            "only once"
        );
        assert!(!s.release(&r, "no-such-session", T0).await.unwrap());
        let o = s.admit(&r, T0 + 1_000).await.unwrap();
        assert_eq!(admitted_names(&o), ["b"]);
        let b = o.admitted[0].1.clone();
        assert_eq!(b.expires_at_ms, T0 + 61_000);
        let o = s.admit(&r, b.expires_at_ms - 1).await.unwrap();
        assert!(o.admitted.is_empty() && o.expired.is_empty());
        let o = s.admit(&r, b.expires_at_ms).await.unwrap();
        assert_eq!(o.expired, vec![dev("b")]);
        assert_eq!(admitted_names(&o), ["c"]);
        assert_eq!((o.active, o.waiting), (1, 0));
        assert_eq!(
            s.status(&r, &dev("b"), b.expires_at_ms).await.unwrap(),
            DeviceStatus::Unknown
        );
    }

    /// Renewing moves the expiry to now + TTL; unknown or expired sessions
    /// cannot be renewed.
    pub async fn renew_extends_a_session(s: SharedQueueStore) {
        let r = new_room(&s, "renew", config(1)).await;
        waiting(&s, &r, "a", T0).await;
        waiting(&s, &r, "b", T0).await;
        let a = s.admit(&r, T0).await.unwrap().admitted[0].1.clone();
        let new_exp = s.renew(&r, &a.session_id, T0 + 50_000).await.unwrap();
        assert_eq!(new_exp, Some(T0 + 110_000));
        let o = s.admit(&r, a.expires_at_ms).await.unwrap();
        assert!(o.expired.is_empty() && o.admitted.is_empty(), "{o:?}");
        match s.status(&r, &dev("a"), T0 + 100_000).await.unwrap() {
            DeviceStatus::Admitted(x) => {
                assert_eq!(x.expires_at_ms, T0 + 110_000);
                assert_eq!(x.session_id, a.session_id);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.renew(&r, "unknown", T0).await.unwrap(), None);
        assert_eq!(
            s.renew(&r, &a.session_id, T0 + 110_000).await.unwrap(),
            None,
            "expired"
        );
        let o = s.admit(&r, T0 + 110_000).await.unwrap();
        assert_eq!(o.expired, vec![dev("a")]);
        assert_eq!(admitted_names(&o), ["b"]);
    }

    /// Sweep drops waiting devices silent for longer than the grace, keeps
    /// those touched (or rejoined) in time; touch reports devices that are
    /// not waiting.
    pub async fn sweep_drops_silent_devices_only(s: SharedQueueStore) {
        let r = new_room(&s, "sweep", config(0)).await;
        for d in ["a", "b", "c", "d"] {
            waiting(&s, &r, d, T0).await;
        }
        let missing = s
            .touch(&r, &[dev("a"), dev("x"), dev("c")], T0 + 20_000)
            .await
            .unwrap();
        assert_eq!(missing, vec![dev("x")]);
        waiting(&s, &r, "d", T0 + 20_000).await;
        // A touch with an older time (a node whose clock lags) never moves
        // a heartbeat back.
        s.touch(&r, &[dev("a")], T0 + 1).await.unwrap();
        // b: silent for exactly the grace: kept.
        assert!(s.sweep(&r, T0 + 30_000, 30_000).await.unwrap().is_empty());
        assert_eq!(
            s.sweep(&r, T0 + 30_001, 30_000).await.unwrap(),
            vec![dev("b")]
        );
        let p = s
            .positions(&r, &[dev("a"), dev("b"), dev("c")])
            .await
            .unwrap();
        assert_eq!(p.positions, vec![Some(1), None, Some(2)]);
        assert_eq!(p.waiting_total, 3);
        assert_eq!(s.stats(&r, T0).await.unwrap().abandoned_total, 1);
        let gone = s.sweep(&r, T0 + 50_001, 30_000).await.unwrap();
        assert_eq!(gone, vec![dev("a"), dev("c"), dev("d")]);
        assert_eq!(s.stats(&r, T0).await.unwrap().waiting, 0);
        // A swept device that comes back queues anew, at the back.
        let b = waiting(&s, &r, "b", T0 + 60_000).await;
        assert_eq!((b.ticket, b.position), (5, 1));
    }

    /// A device holding a live session gets the same admission on rejoin;
    /// once expired, it queues anew.
    pub async fn admitted_device_rejoining_gets_its_admission(s: SharedQueueStore) {
        let r = new_room(&s, "readmit", config(1)).await;
        let first = waiting(&s, &r, "a", T0).await;
        let a = s.admit(&r, T0).await.unwrap().admitted[0].1.clone();
        assert_eq!(a.ticket, first.ticket);
        for now in [T0 + 1, T0 + 59_999] {
            assert_eq!(
                s.join(&r, &dev("a"), now).await.unwrap(),
                JoinOutcome::Admitted(a.clone())
            );
        }
        assert_eq!(
            s.status(&r, &dev("a"), T0 + 1).await.unwrap(),
            DeviceStatus::Admitted(a.clone())
        );
        assert_eq!(
            s.touch(&r, &[dev("a")], T0 + 2).await.unwrap(),
            vec![dev("a")]
        );
        // Expired but not yet freed by admit: join frees it and queues.
        let again = waiting(&s, &r, "a", a.expires_at_ms).await;
        assert!(again.ticket > a.ticket);
        assert_eq!(s.stats(&r, a.expires_at_ms).await.unwrap().active, 0);
        let o = s.admit(&r, a.expires_at_ms).await.unwrap();
        assert!(o.expired.is_empty(), "freed by the join already");
        assert_eq!(admitted_names(&o), ["a"]);
        assert_ne!(o.admitted[0].1.session_id, a.session_id);
    }

    /// The counters follow joins, admissions, leaves and sweeps.
    pub async fn counters(s: SharedQueueStore) {
        let r = new_room(&s, "counters", config(2)).await;
        assert_eq!(s.stats(&r, T0).await.unwrap(), RoomCounters::default());
        for d in ["a", "b", "c", "d", "e"] {
            waiting(&s, &r, d, T0).await;
        }
        s.admit(&r, T0 + 10).await.unwrap();
        assert!(s.leave(&r, &dev("c")).await.unwrap());
        s.touch(&r, &[dev("d")], T0 + 40_000).await.unwrap();
        assert_eq!(s.sweep(&r, T0 + 40_000, 30_000).await.unwrap(), [dev("e")]);
        waiting(&s, &r, "f", T0 + 40_000).await;
        let st = s.stats(&r, T0 + 40_000).await.unwrap();
        assert_eq!(
            st,
            RoomCounters {
                waiting: 2,
                active: 2,
                admitted_total: 2,
                abandoned_total: 2,
                peak_waiting: 5,
                admitted_last_minute: 2,
            }
        );
        assert_eq!(
            s.stats(&room("unknown"), T0).await.unwrap(),
            RoomCounters::default()
        );
    }

    /// Positions (one and many) and the head agree with ticket order.
    pub async fn positions_and_head(s: SharedQueueStore) {
        let r = new_room(&s, "positions", config(1)).await;
        for (i, d) in ["a", "b", "c", "d"].iter().enumerate() {
            waiting(&s, &r, d, T0 + i as u64).await;
        }
        let p = s
            .positions(&r, &[dev("c"), dev("x"), dev("a"), dev("d"), dev("c")])
            .await
            .unwrap();
        assert_eq!(p.positions, [Some(3), None, Some(1), Some(4), Some(3)]);
        assert_eq!(p.waiting_total, 4);
        assert_eq!(s.head(&r, 2).await.unwrap(), [dev("a"), dev("b")]);
        assert_eq!(s.head(&r, 10).await.unwrap().len(), 4);
        assert!(s.head(&r, 0).await.unwrap().is_empty());
        s.admit(&r, T0 + 10).await.unwrap();
        let b = s.position(&r, &dev("b")).await.unwrap().unwrap();
        assert_eq!((b.position, b.waiting_total), (1, 3));
        assert_eq!(s.position(&r, &dev("a")).await.unwrap(), None);
        assert_eq!(s.position(&r, &dev("x")).await.unwrap(), None);
        assert_eq!(
            s.status(&r, &dev("c"), T0 + 10).await.unwrap(),
            DeviceStatus::Waiting(Place {
                ticket: 3,
                position: 2,
                waiting_total: 3
            })
        );
        assert!(matches!(
            s.status(&r, &dev("a"), T0 + 10).await.unwrap(),
            DeviceStatus::Admitted(_)
        ));
        let none = s.positions(&room("unknown"), &[dev("a")]).await.unwrap();
        assert_eq!(none.positions, [None]);
        assert!(s.positions(&r, &[]).await.unwrap().positions.is_empty());
    }

    /// A user's devices per room are recorded and forgotten.
    pub async fn user_places_are_recorded(s: SharedQueueStore) {
        let r = RoomId::parse("users").unwrap();
        let d = |x: &str| DeviceId::parse(x).unwrap();
        let mut got = s.add_user_place(&r, "alice", &d("a1")).await.unwrap();
        assert_eq!(got, [d("a1")]);
        got = s.add_user_place(&r, "alice", &d("a2")).await.unwrap();
        got.sort();
        assert_eq!(got, [d("a1"), d("a2")]);
        assert_eq!(
            s.add_user_place(&r, "bob", &d("b1")).await.unwrap(),
            [d("b1")]
        );
        s.remove_user_place(&r, "alice", &d("a1")).await.unwrap();
        assert_eq!(
            s.add_user_place(&r, "alice", &d("a2")).await.unwrap(),
            [d("a2")]
        );
    }

    /// A new room can be claimed by one tenant only; an existing room
    /// without an owner cannot be claimed.
    pub async fn rooms_have_one_owner(s: SharedQueueStore) {
        let r = RoomId::parse("owned").unwrap();
        assert_eq!(s.room_owner(&r).await.unwrap(), None);
        assert_eq!(
            s.claim_room(&r, "acme").await.unwrap().as_deref(),
            Some("acme")
        );
        assert_eq!(
            s.claim_room(&r, "globex").await.unwrap().as_deref(),
            Some("acme")
        );
        assert_eq!(s.room_owner(&r).await.unwrap().as_deref(), Some("acme"));
        new_room(&s, "legacy", config(5)).await;
        let legacy = RoomId::parse("legacy").unwrap();
        assert_eq!(s.claim_room(&legacy, "acme").await.unwrap(), None);
        assert_eq!(s.room_owner(&legacy).await.unwrap(), None);
    }

    /// Rooms round-trip their config; replacing it keeps the queue.
    pub async fn rooms_and_config(s: SharedQueueStore) {
        let r = room("rooms.a");
        assert_eq!(s.get_room(&r).await.unwrap(), None);
        let mut c = config(10);
        c.admit_per_minute = Some(600);
        c.pow_difficulty = 12;
        c.state = RoomState::Paused;
        c.mode = QueueMode::Random;
        let created = s.put_room(&r, &c).await.unwrap();
        assert_eq!(
            created,
            Room {
                id: r.clone(),
                config: c.clone()
            }
        );
        assert_eq!(s.get_room(&r).await.unwrap(), Some(created));
        let p = waiting(&s, &r, "a", T0).await;
        c.admit_per_minute = None;
        c.target_url = "https://other.example/".into();
        c.appearance = Appearance {
            title: "Ticket drop «Summer»".into(),
            message: "Line one\nline two: \"quoted\" <b>not html</b>".into(),
            background: Some("#101820".into()),
            text: Some("#fafafa".into()),
            accent: Some("#f2aa4c".into()),
        };
        s.put_room(&r, &c).await.unwrap();
        assert_eq!(s.get_room(&r).await.unwrap().unwrap().config, c);
        c.appearance = Appearance::default();
        s.put_room(&r, &c).await.unwrap();
        assert_eq!(s.get_room(&r).await.unwrap().unwrap().config, c);
        assert_eq!(s.position(&r, &dev("a")).await.unwrap(), Some(p));
        s.put_room(&room("rooms.b"), &config(1)).await.unwrap();
        assert_eq!(s.rooms().await.unwrap(), [room("rooms.a"), room("rooms.b")]);
        let mut bad = config(1);
        bad.session_ttl_secs = 0;
        assert!(matches!(
            s.put_room(&room("rooms.c"), &bad).await,
            Err(QueueError::InvalidConfig(_))
        ));
        assert_eq!(s.get_room(&room("rooms.c")).await.unwrap(), None);
        let mut unreadable = config(1);
        unreadable.appearance.text = Some("#777777".into());
        unreadable.appearance.background = Some("#888888".into());
        assert!(matches!(
            s.put_room(&room("rooms.c"), &unreadable).await,
            Err(QueueError::InvalidConfig(_))
        ));
        assert_eq!(s.get_room(&room("rooms.c")).await.unwrap(), None);
    }

    /// The modes of the admissions in a room's log, in order.
    async fn logged_modes(s: &SharedQueueStore, r: &RoomId) -> Vec<(u64, QueueMode)> {
        s.log(r, 0, 10_000)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|rec| match rec.event {
                LogEvent::Admit { ticket, mode, .. } => Some((ticket, mode)),
                _ => None,
            })
            .collect()
    }

    /// Mode random: each admission draws among those waiting. Over 240
    /// rooms of four devices (capacity 1), the first admitted is each of
    /// the four tickets about equally often (chi-square, 3 degrees of
    /// freedom, under 30: a fair draw fails it with probability < 1e-5;
    /// a draw that always took the head fails it surely); and every
    /// device is admitted in the end, with the mode in the log.
    pub async fn random_mode_is_a_uniform_lottery_that_admits_everyone(s: SharedQueueStore) {
        const RUNS: usize = 240;
        let mut first = [0u32; 4];
        let mut orders = HashSet::new();
        for run in 0..RUNS {
            let mut c = config(1);
            c.mode = QueueMode::Random;
            let r = new_room(&s, &format!("lottery.{run}"), c).await;
            for (i, d) in ["d1", "d2", "d3", "d4"].iter().enumerate() {
                waiting(&s, &r, d, T0 + i as u64).await;
            }
            let mut order = Vec::new();
            for step in 0..4u64 {
                let o = s.admit(&r, T0 + 10 + step).await.unwrap();
                assert_eq!(o.admitted.len(), 1, "capacity 1 holds in random mode");
                let (_, a) = &o.admitted[0];
                order.push(a.ticket);
                assert!(s.release(&r, &a.session_id, T0 + 10 + step).await.unwrap());
            }
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [1, 2, 3, 4], "everyone admitted once: {order:?}");
            first[(order[0] - 1) as usize] += 1;
            if run < 3 {
                let logged: Vec<u64> = logged_modes(&s, &r)
                    .await
                    .into_iter()
                    .map(|(ticket, mode)| {
                        assert_eq!(mode, QueueMode::Random);
                        ticket
                    })
                    .collect();
                assert_eq!(logged, order);
            }
            orders.insert(order);
        }
        let expected = RUNS as f64 / 4.0;
        let chi2: f64 = first
            .iter()
            .map(|&n| (f64::from(n) - expected).powi(2) / expected)
            .sum();
        assert!(
            chi2 < 30.0,
            "first admitted per ticket {first:?}: chi2 {chi2}"
        );
        // 24 possible orders; a fair lottery shows most of them.
        assert!(orders.len() > 12, "{} distinct orders", orders.len());
    }

    /// Mode passthrough admits everyone waiting in one admit run,
    /// regardless of capacity and the per-minute budget, and counts them.
    pub async fn passthrough_admits_everyone_at_once_and_counts(s: SharedQueueStore) {
        let mut c = config(1);
        c.admit_per_minute = Some(1);
        c.mode = QueueMode::Passthrough;
        let r = new_room(&s, "through", c).await;
        for i in 0..5u64 {
            waiting(&s, &r, &format!("p{i}"), T0 + i).await;
        }
        let o = s.admit(&r, T0 + 10).await.unwrap();
        assert_eq!(o.admitted.len(), 5);
        assert_eq!((o.active, o.waiting), (5, 0));
        let stats = s.stats(&r, T0 + 10).await.unwrap();
        assert_eq!(stats.admitted_total, 5);
        assert_eq!(stats.admitted_last_minute, 5);
        assert_eq!(
            logged_modes(&s, &r).await,
            (1..=5)
                .map(|t| (t, QueueMode::Passthrough))
                .collect::<Vec<_>>()
        );
        // A later join is admitted by the next run too.
        waiting(&s, &r, "late", T0 + 20).await;
        let o = s.admit(&r, T0 + 21).await.unwrap();
        assert_eq!(admitted_names(&o), ["late"]);
        assert_eq!(o.active, 6);
    }

    /// Mode reject refuses new joins; a device already waiting keeps its
    /// place (a rejoin returns it) and is admitted in ticket order.
    pub async fn reject_refuses_new_joins_only(s: SharedQueueStore) {
        let r = new_room(&s, "reject", config(0)).await;
        let a = waiting(&s, &r, "a", T0).await;
        let mut c = config(0);
        c.mode = QueueMode::Reject;
        s.put_room(&r, &c).await.unwrap();
        assert_eq!(
            s.join(&r, &dev("b"), T0 + 1).await.unwrap(),
            JoinOutcome::Rejected
        );
        assert_eq!(waiting(&s, &r, "a", T0 + 2).await, a);
        c.capacity = 5;
        s.put_room(&r, &c).await.unwrap();
        let o = s.admit(&r, T0 + 3).await.unwrap();
        assert_eq!(admitted_names(&o), ["a"]);
        assert_eq!(logged_modes(&s, &r).await, [(1, QueueMode::Reject)]);
        assert_eq!(s.stats(&r, T0 + 3).await.unwrap().admitted_total, 1);
    }

    /// A mode change applies to the next join and admit run, keeping the
    /// queue: fifo, then random, then passthrough, then fifo again.
    pub async fn modes_switch_live(s: SharedQueueStore) {
        let r = new_room(&s, "switch", config(1)).await;
        for i in 1..=8u64 {
            waiting(&s, &r, &format!("s{i}"), T0 + i).await;
        }
        let o = s.admit(&r, T0 + 10).await.unwrap();
        assert_eq!(admitted_names(&o), ["s1"]);
        let mut c = config(2);
        c.mode = QueueMode::Random;
        s.put_room(&r, &c).await.unwrap();
        let o = s.admit(&r, T0 + 11).await.unwrap();
        assert_eq!(o.admitted.len(), 1, "capacity 2, one slot free");
        assert_eq!((o.active, o.waiting), (2, 6));
        c.mode = QueueMode::Passthrough;
        s.put_room(&r, &c).await.unwrap();
        let o = s.admit(&r, T0 + 12).await.unwrap();
        assert_eq!(o.admitted.len(), 6);
        assert_eq!((o.active, o.waiting), (8, 0));
        c.mode = QueueMode::Fifo;
        s.put_room(&r, &c).await.unwrap();
        waiting(&s, &r, "t1", T0 + 13).await;
        let o = s.admit(&r, T0 + 14).await.unwrap();
        assert!(o.admitted.is_empty(), "fifo respects capacity again: {o:?}");
        let modes: Vec<QueueMode> = logged_modes(&s, &r)
            .await
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        let mut expected = vec![QueueMode::Fifo, QueueMode::Random];
        expected.extend([QueueMode::Passthrough; 6]);
        assert_eq!(modes, expected);
    }

    /// Leaving gives the place up for good (a later join queues at the
    /// back); leaving when not waiting does nothing.
    /// An event of `order`, `id` "drop", at the given times.
    pub fn event(
        order: EventOrder,
        prequeue_start: u64,
        event_start: u64,
        event_end: u64,
    ) -> Event {
        Event {
            id: "drop".into(),
            prequeue_start,
            event_start,
            event_end,
            order,
            capacity: None,
            admit_per_minute: None,
            message: None,
            seed_sha256: None,
            seed: None,
        }
    }

    /// Admits everyone the room lets in now; their names in order.
    async fn admit_names(s: &SharedQueueStore, r: &RoomId, now: u64) -> Vec<String> {
        let o = s.admit(r, now).await.unwrap();
        o.admitted.iter().map(|(d, _)| d.to_string()).collect()
    }

    /// An event judged by the store's clock: joins refused with the time
    /// the pre-queue opens; the pre-queue accepts joins and admits nobody;
    /// at the start the pre-queue is shuffled by the committed seed (the
    /// seed then revealed, the shuffle logged) behind those who waited
    /// before it and ahead of later joins in FIFO, with the event's
    /// capacity; after the end the room follows its own settings.
    pub async fn an_event_counts_down_prequeues_and_shuffles_by_the_store_clock(
        s: SharedQueueStore,
    ) {
        use pace_protocol::audit::{is_sha256_hex, sha256_hex, shuffle_order};
        let hour = 3_600_000;
        let clock = s.clock_ms().await.unwrap();
        let r = new_room(&s, "event", config(100)).await;
        let mut c = config(0);
        s.put_room(&r, &c).await.unwrap();
        let early = waiting(&s, &r, "early", T0).await.ticket;
        c.events = vec![event(
            EventOrder::Shuffle,
            clock + hour,
            clock + 2 * hour,
            clock + 3 * hour,
        )];
        c.events[0].capacity = Some(3);
        c.events[0].message = Some("The drop starts at noon".into());
        let stored = s.put_room(&r, &c).await.unwrap().config;
        let commitment = stored.events[0].seed_sha256.clone().unwrap();
        assert!(is_sha256_hex(&commitment));
        assert_eq!(stored.events[0].seed, None, "the seed stays secret");
        assert_eq!(s.get_room(&r).await.unwrap().unwrap().config, stored);
        // Countdown: refused with the opening time; a waiting device keeps
        // its place.
        assert_eq!(
            s.join(&r, &dev("x"), T0 + 1).await.unwrap(),
            JoinOutcome::EventNotOpen {
                opens_at: clock + hour
            }
        );
        assert_eq!(waiting(&s, &r, "early", T0 + 2).await.ticket, early);
        // A commitment sent by a client is ignored; the seed never changes.
        c.events[0].seed_sha256 = Some("0".repeat(64));
        c.events[0].seed = Some("1".repeat(64));
        c.events[0].prequeue_start = clock.saturating_sub(1_000);
        c.capacity = 100;
        let again = s.put_room(&r, &c).await.unwrap().config;
        assert_eq!(
            again.events[0].seed_sha256.as_deref(),
            Some(commitment.as_str())
        );
        assert_eq!(again.events[0].seed, None);
        // Pre-queue: joins wait, nobody is admitted (capacity 100).
        let mut pre = Vec::new();
        for i in 0..20 {
            let p = waiting(&s, &r, &format!("p{i}"), T0 + 10 + i).await;
            pre.push((p.ticket, format!("p{i}")));
        }
        assert!(admit_names(&s, &r, T0 + 40).await.is_empty());
        // Once the pre-queue has opened, the promised order stays.
        let mut fifo = c.clone();
        fifo.events[0].order = EventOrder::Fifo;
        match s.put_room(&r, &fifo).await {
            Err(QueueError::InvalidConfig(e)) => assert!(e.contains("order stays shuffle"), "{e}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Start (moved to now by the admin): later joins go behind.
        let now = s.clock_ms().await.unwrap();
        c.events[0].event_start = now.saturating_sub(10);
        s.put_room(&r, &c).await.unwrap();
        for name in ["late1", "late2"] {
            waiting(&s, &r, name, T0 + 50).await;
        }
        // The event's capacity: 3 — the early waiter, then the shuffle.
        let first = admit_names(&s, &r, T0 + 60).await;
        let room = s.get_room(&r).await.unwrap().unwrap().config;
        let seed = room.events[0].seed.clone().expect("seed revealed");
        assert_eq!(sha256_hex(seed.as_bytes()), commitment);
        let tickets: Vec<u64> = pre.iter().map(|(t, _)| *t).collect();
        let order = shuffle_order(&seed, &tickets);
        assert_ne!(order, tickets, "shuffled, not the join order");
        let name_of = |t: &u64| pre.iter().find(|(pt, _)| pt == t).unwrap().1.clone();
        let mut expected: Vec<String> = vec!["early".into()];
        expected.extend(order.iter().map(name_of));
        expected.extend(["late1".to_owned(), "late2".to_owned()]);
        assert_eq!(first, expected[..3]);
        // More capacity: the rest, the pre-queue first, then FIFO.
        c.events[0].capacity = Some(100);
        s.put_room(&r, &c).await.unwrap();
        let rest = admit_names(&s, &r, T0 + 70).await;
        assert_eq!([first, rest].concat(), expected);
        // The log: the commitment before the pre-queue's first join, the
        // shuffle (seed revealed, the order) before the admissions it
        // orders, and admissions under the new tickets, rising.
        let log = s.log(&r, 0, 1000).await.unwrap();
        let commit_at = log
            .iter()
            .position(|l| matches!(&l.event, LogEvent::Commit { event, seed_sha256 } if event == "drop" && *seed_sha256 == commitment))
            .expect("commit logged");
        assert!(
            matches!(&log[commit_at + 1].event, LogEvent::Join { ticket, .. } if *ticket == tickets[0])
        );
        let shuffle_at = log
            .iter()
            .position(|l| matches!(&l.event, LogEvent::Shuffle { seed: sd, order: o, .. } if *sd == seed && *o == order))
            .expect("shuffle logged");
        let admitted: Vec<(usize, u64)> = log
            .iter()
            .enumerate()
            .filter_map(|(i, l)| match l.event {
                LogEvent::Admit {
                    ticket, capacity, ..
                } => {
                    assert!(capacity == 3 || capacity == 100);
                    Some((i, ticket))
                }
                _ => None,
            })
            .collect();
        assert!(admitted.iter().all(|(i, _)| *i > shuffle_at));
        assert!(admitted.windows(2).all(|w| w[0].1 < w[1].1), "{admitted:?}");
        // After the end: the room's own settings (capacity 100, joins).
        let now = s.clock_ms().await.unwrap();
        c.events[0].event_start = now.saturating_sub(20);
        c.events[0].event_end = now.saturating_sub(10);
        c.mode = QueueMode::Reject;
        s.put_room(&r, &c).await.unwrap();
        assert_eq!(
            s.join(&r, &dev("after"), T0 + 80).await.unwrap(),
            JoinOutcome::Rejected
        );
        c.mode = QueueMode::Fifo;
        s.put_room(&r, &c).await.unwrap();
        waiting(&s, &r, "after", T0 + 81).await;
        assert_eq!(admit_names(&s, &r, T0 + 90).await, ["after"]);
    }

    /// A FIFO event: no commitment, no shuffle; the pre-queue is admitted
    /// in join order ahead of later joins.
    pub async fn a_fifo_event_puts_its_prequeue_first_in_join_order(s: SharedQueueStore) {
        let clock = s.clock_ms().await.unwrap();
        let r = new_room(&s, "fifo-event", config(10)).await;
        let mut c = config(10);
        c.events = vec![event(
            EventOrder::Fifo,
            clock.saturating_sub(1_000),
            clock + 3_600_000,
            clock + 7_200_000,
        )];
        let stored = s.put_room(&r, &c).await.unwrap().config;
        assert_eq!(stored.events[0].seed_sha256, None);
        for name in ["a", "b", "c"] {
            waiting(&s, &r, name, T0).await;
        }
        assert!(admit_names(&s, &r, T0 + 1).await.is_empty());
        c.events[0].event_start = s.clock_ms().await.unwrap().saturating_sub(1);
        s.put_room(&r, &c).await.unwrap();
        waiting(&s, &r, "d", T0 + 2).await;
        assert_eq!(admit_names(&s, &r, T0 + 3).await, ["a", "b", "c", "d"]);
        let log = s.log(&r, 0, 100).await.unwrap();
        assert!(
            !log.iter()
                .any(|l| matches!(l.event, LogEvent::Commit { .. } | LogEvent::Shuffle { .. }))
        );
    }

    pub async fn leave_gives_up_a_place(s: SharedQueueStore) {
        let r = new_room(&s, "leave", config(0)).await;
        let a = waiting(&s, &r, "a", T0).await;
        waiting(&s, &r, "b", T0).await;
        assert!(s.leave(&r, &dev("a")).await.unwrap());
        assert!(!s.leave(&r, &dev("a")).await.unwrap());
        assert!(!s.leave(&r, &dev("x")).await.unwrap());
        assert_eq!(
            s.position(&r, &dev("b")).await.unwrap().unwrap().position,
            1
        );
        let back = waiting(&s, &r, "a", T0 + 1).await;
        assert!(back.ticket > a.ticket);
        assert_eq!((back.position, back.waiting_total), (2, 2));
        // Both a leave and a sweep count as abandoned.
        assert_eq!(s.sweep(&r, T0 + 1, 0).await.unwrap(), [dev("b")]);
        assert_eq!(s.stats(&r, T0).await.unwrap().abandoned_total, 2);
    }

    #[test]
    fn room_ids_follow_the_group_rules() {
        assert!(RoomId::parse("flash-sale:2025@eu.1").is_ok());
        assert_eq!(RoomId::parse(""), Err(pace_protocol::IdError::Empty));
        assert_eq!(RoomId::parse("{x}"), Err(pace_protocol::IdError::BadChar));
        assert_eq!(
            RoomId::parse(&"r".repeat(65)),
            Err(pace_protocol::IdError::TooLong { max: 64 })
        );
        let r: RoomId = serde_json::from_str("\"demo\"").unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"demo\"");
        assert!(serde_json::from_str::<RoomId>("\"a b\"").is_err());
    }

    #[test]
    fn config_serializes_plainly() {
        let c = config(5);
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["state"], "open");
        assert_eq!(v["admit_per_minute"], serde_json::Value::Null);
        let mut bad = c.clone();
        bad.target_url = "https://x/ y".into();
        assert!(bad.validate().is_err());
        assert!(c.validate().is_ok());
    }
}
