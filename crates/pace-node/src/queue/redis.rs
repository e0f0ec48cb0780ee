//! The Redis queue store: every room's queue, sessions and counters in
//! Redis, shared by all nodes.
//!
//! Every multi-key step is one Lua script beside this file (`*.lua`),
//! loaded by SHA with reload on `NOSCRIPT`; the keys of one room share the
//! hash tag `{<prefix>:room:<id>}`, so each script touches one slot and
//! runs on Redis Cluster. The key layout and the cost of each operation are
//! in the module docs of [`crate::queue`]. Needs Redis 6.2 or later
//! (`ZADD GT`).
//!
//! The store borrows a fred [`Client`] (the node shares the one its
//! [`crate::store::RedisStore`] built, with its reconnect policy and
//! command timeout) and fails fast while it is disconnected.

use std::collections::HashMap;

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::scripts::Script;
use pace_protocol::DeviceId;

use crate::store::RedisClient;

use super::{
    Admission, AdmitOutcome, Appearance, DeviceStatus, EndReason, EventOrder, JoinAttempt,
    JoinOutcome, LogCheckpoint, LogEvent, LogRecord, Place, Positions, PowAnswer, PowGate,
    QueueError, QueueMode, QueueStore, RATE_WINDOW_MS, Room, RoomConfig, RoomCounters, RoomId,
    RoomState, WAIT_BUCKETS_SECS, WaitDistribution,
};

/// How often one admit call retries an event's shuffle that found the
/// pre-queue changed under it (a leave or sweep between the read and the
/// script); the next tick tries again.
const SHUFFLE_ATTEMPTS: usize = 5;

/// Most expiries, admissions, sweeps or heartbeats one script run handles,
/// so no run blocks Redis for long; the store runs the script again for
/// the rest.
const BATCH: usize = 1000;

/// The Redis [`QueueStore`].
pub struct RedisQueueStore {
    /// With Redis Cluster, routed per room (each room's keys share its
    /// hash tag).
    client: RedisClient,
    prefix: String,
    rooms_key: String,
    scripts: Scripts,
    /// `None`: every admit run gets a fresh UUID v4 nonce. Tests set a
    /// seed and a counter instead (`seed-<seed>-<n>`), so that a lottery
    /// (mode `random`) repeats and can be recomputed.
    seeded_nonces: Option<(u64, std::sync::atomic::AtomicU64)>,
}

struct Scripts {
    join: Script,
    admit: Script,
    sweep: Script,
    touch: Script,
    leave: Script,
    release: Script,
    renew: Script,
    positions: Script,
    status: Script,
    stats: Script,
    add_checkpoint: Script,
    trim_log: Script,
    shuffle: Script,
    clock: Script,
}

impl std::fmt::Debug for RedisQueueStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueueStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The keys of one room, all under the room's hash tag.
#[derive(Debug, Clone)]
struct RoomKeys {
    config: String,
    counters: String,
    queue: String,
    seen: String,
    active: String,
    sessions: String,
    devices: String,
    rate: String,
    joined: String,
    waits: String,
    owner: String,
    log: String,
    checkpoints: String,
    events: String,
    /// Prefix of the room's proof-of-work marks (`<prefix><jti>`).
    pow_mark: String,
}

impl RoomKeys {
    fn new(prefix: &str, room: &RoomId) -> RoomKeys {
        let tag = format!("{{{prefix}:room:{room}}}");
        let key = |what: &str| format!("{tag}:{what}");
        RoomKeys {
            config: key("config"),
            counters: key("counters"),
            queue: key("queue"),
            seen: key("seen"),
            active: key("active"),
            sessions: key("sessions"),
            devices: key("devices"),
            rate: key("rate"),
            joined: key("joined"),
            waits: key("waits"),
            owner: key("owner"),
            log: key("log"),
            checkpoints: key("log:cp"),
            events: key("events"),
            pow_mark: key("pow:"),
        }
    }
}

fn unavailable(e: fred::error::Error) -> QueueError {
    QueueError::Redis(e)
}

fn bad(what: &str) -> QueueError {
    QueueError::BadReply(what.to_owned())
}

/// Reads a script's array reply in order.
struct Reply(std::vec::IntoIter<Value>);

impl Reply {
    fn new(v: Value) -> Reply {
        Reply(v.into_array().into_iter())
    }

    fn value(&mut self) -> Result<Value, QueueError> {
        self.0.next().ok_or_else(|| bad("reply too short"))
    }

    fn u64(&mut self) -> Result<u64, QueueError> {
        self.value()?
            .as_u64()
            .ok_or_else(|| bad("expected a number"))
    }

    fn opt_u64(&mut self) -> Result<Option<u64>, QueueError> {
        match self.value()? {
            Value::Null => Ok(None),
            v => v.as_u64().map(Some).ok_or_else(|| bad("expected a number")),
        }
    }

    fn string(&mut self) -> Result<String, QueueError> {
        self.value()?
            .into_string()
            .ok_or_else(|| bad("expected a string"))
    }

    fn device(&mut self) -> Result<DeviceId, QueueError> {
        device(self.value()?)
    }

    fn array(&mut self) -> Result<Reply, QueueError> {
        match self.value()? {
            v @ Value::Array(_) => Ok(Reply::new(v)),
            Value::Null => Ok(Reply(Vec::new().into_iter())),
            _ => Err(bad("expected an array")),
        }
    }

    fn admission(&mut self) -> Result<Admission, QueueError> {
        Ok(Admission {
            session_id: self.string()?,
            ticket: self.u64()?,
            admitted_at_ms: self.u64()?,
            expires_at_ms: self.u64()?,
        })
    }

    fn place(&mut self) -> Result<Place, QueueError> {
        Ok(Place {
            ticket: self.u64()?,
            position: self.u64()?,
            waiting_total: self.u64()?,
        })
    }

    fn devices(self) -> Result<Vec<DeviceId>, QueueError> {
        self.0.map(device).collect()
    }
}

fn device(v: Value) -> Result<DeviceId, QueueError> {
    let s = v.into_string().ok_or_else(|| bad("expected a device id"))?;
    DeviceId::parse(&s).map_err(|_| bad("invalid device id in store"))
}

fn device_args(now_ms: u64, devices: &[DeviceId]) -> Vec<String> {
    std::iter::once(now_ms.to_string())
        .chain(devices.iter().map(|d| d.as_str().to_owned()))
        .collect()
}

impl RedisQueueStore {
    /// The room's checkpoints at ranks `start..=stop` (Redis `ZRANGE`
    /// indexes: negative counts from the newest), oldest first.
    async fn checkpoint_range(
        &self,
        room: &RoomId,
        start: i64,
        stop: i64,
    ) -> Result<Vec<LogCheckpoint>, QueueError> {
        self.connected_or_fail()?;
        let raw: Vec<String> = self
            .client
            .on(&self.keys(room).checkpoints)?
            .zrange(
                &self.keys(room).checkpoints,
                start,
                stop,
                None,
                false,
                None,
                false,
            )
            .await
            .map_err(unavailable)?;
        raw.iter().map(|j| checkpoint(j)).collect()
    }

    /// A store whose admit runs take the nonces `seed-<seed>-0`, `-1`, …
    /// instead of fresh UUIDs: its lotteries (and session ids) repeat.
    #[cfg(test)]
    pub fn with_seeded_nonces(
        client: impl Into<RedisClient>,
        prefix: &str,
        seed: u64,
    ) -> RedisQueueStore {
        RedisQueueStore {
            seeded_nonces: Some((seed, std::sync::atomic::AtomicU64::new(0))),
            ..RedisQueueStore::new(client, prefix)
        }
    }

    /// A store on `client` (connected by its owner), keys under `prefix`.
    pub fn new(client: impl Into<RedisClient>, prefix: &str) -> RedisQueueStore {
        RedisQueueStore {
            client: client.into(),
            prefix: prefix.to_owned(),
            rooms_key: format!("{{{prefix}}}:rooms"),
            seeded_nonces: None,
            scripts: Scripts {
                join: Script::from_lua(include_str!("join.lua")),
                admit: Script::from_lua(include_str!("admit.lua")),
                sweep: Script::from_lua(include_str!("sweep.lua")),
                touch: Script::from_lua(include_str!("touch.lua")),
                leave: Script::from_lua(include_str!("leave.lua")),
                release: Script::from_lua(include_str!("release.lua")),
                renew: Script::from_lua(include_str!("renew.lua")),
                positions: Script::from_lua(include_str!("positions.lua")),
                status: Script::from_lua(include_str!("status.lua")),
                stats: Script::from_lua(include_str!("stats.lua")),
                add_checkpoint: Script::from_lua(include_str!("add_checkpoint.lua")),
                trim_log: Script::from_lua(include_str!("trim_log.lua")),
                shuffle: Script::from_lua(include_str!("shuffle.lua")),
                clock: Script::from_lua(
                    "local t = redis.call('TIME') return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)",
                ),
            },
        }
    }

    fn keys(&self, room: &RoomId) -> RoomKeys {
        RoomKeys::new(&self.prefix, room)
    }

    /// The set of devices `user` holds places with in `room`. A user name
    /// is free text, so it goes in hex (no key injection, any length).
    fn user_places_key(&self, room: &RoomId, user: &str) -> String {
        let hex: String = user.bytes().map(|b| format!("{b:02x}")).collect();
        format!("{{{}:room:{room}}}:user:{hex}", self.prefix)
    }

    fn connected_or_fail(&self) -> Result<(), QueueError> {
        if self.client.is_connected() {
            Ok(())
        } else {
            Err(QueueError::Unavailable("not connected to redis".into()))
        }
    }

    async fn run(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, QueueError> {
        self.connected_or_fail()?;
        let client = self.client.on(keys.first().map_or("", String::as_str))?;
        let out = script
            .evalsha_with_reload(&client, keys, args)
            .await
            .map_err(|e| unavailable(self.client.note(e)))?;
        // With --store-write-replicas, a join or an admission tick is
        // answered only once replicated.
        if std::ptr::eq(script, &self.scripts.join) || std::ptr::eq(script, &self.scripts.admit) {
            self.client.replicated(&client).await?;
        }
        Ok(out)
    }
}

/// Members of the set `key` read with `SSCAN` pages of `SCAN_PAGE` (no
/// single command reads the whole set, so none blocks Redis for long as
/// the set grows), at most `limit` of them (in the set's scan order).
pub(crate) async fn sscan_members(
    client: &Client,
    key: &str,
    limit: usize,
) -> Result<Vec<String>, Error> {
    /// Members asked per `SSCAN` (a hint to Redis).
    const SCAN_PAGE: usize = 1000;
    let mut cursor = "0".to_owned();
    let mut out = Vec::new();
    loop {
        let (next, page): (String, Vec<String>) = client
            .custom(
                fred::types::CustomCommand::new_static("SSCAN", None, false),
                vec![
                    key.to_owned(),
                    cursor,
                    "COUNT".to_owned(),
                    SCAN_PAGE.to_string(),
                ],
            )
            .await?;
        out.extend(page);
        if next == "0" || out.len() >= limit {
            out.truncate(limit);
            return Ok(out);
        }
        cursor = next;
    }
}

/// Fills in the seed of every shuffled event of `config` that `runs`
/// (the room's events hash) says was ordered.
fn reveal_from(config: &mut RoomConfig, runs: &HashMap<String, String>) {
    for e in &mut config.events {
        if runs.contains_key(&format!("{}:shuffled", e.id)) {
            e.seed = runs.get(&format!("{}:seed", e.id)).cloned();
        }
    }
}

/// A flat `HGETALL` reply (field, value, …) as a map.
fn flat_map(mut r: Reply) -> Result<HashMap<String, String>, QueueError> {
    let mut m = HashMap::new();
    while let Some(field) = r.0.next() {
        let field = field
            .into_string()
            .ok_or_else(|| bad("expected a string"))?;
        m.insert(field, r.string()?);
    }
    Ok(m)
}

/// A join script's reply as its outcome.
fn join_outcome(mut r: Reply) -> Result<JoinOutcome, QueueError> {
    match r.string()?.as_str() {
        "waiting" => Ok(JoinOutcome::Waiting(r.place()?)),
        "admitted" => Ok(JoinOutcome::Admitted(r.admission()?)),
        "closed" => Ok(JoinOutcome::Closed),
        "rejected" => Ok(JoinOutcome::Rejected),
        "eventnotopen" => Ok(JoinOutcome::EventNotOpen { opens_at: r.u64()? }),
        "nosuchroom" => Ok(JoinOutcome::NoSuchRoom),
        _ => Err(bad("unknown join outcome")),
    }
}

/// Reads a room config hash (`None` when the hash is empty).
fn parse_config(h: &HashMap<String, String>) -> Result<Option<RoomConfig>, QueueError> {
    if h.is_empty() {
        return Ok(None);
    }
    let field = |name: &str| h.get(name).map(String::as_str).unwrap_or_default();
    let num = |name: &str| {
        field(name)
            .parse::<u64>()
            .map_err(|_| bad("room config field is not a number"))
    };
    let narrow = |v: u64| u32::try_from(v).map_err(|_| bad("room config field out of range"));
    let admit_per_minute = match field("admit_per_minute") {
        "" => None,
        _ => Some(narrow(num("admit_per_minute")?)?),
    };
    Ok(Some(RoomConfig {
        capacity: narrow(num("capacity")?)?,
        admit_per_minute,
        session_ttl_secs: narrow(num("session_ttl_secs")?)?,
        target_url: field("target_url").to_owned(),
        state: RoomState::parse(field("state")).ok_or_else(|| bad("unknown room state"))?,
        pow_difficulty: u8::try_from(num("pow_difficulty")?)
            .map_err(|_| bad("room config field out of range"))?,
        // Rooms stored before modes existed have no field: fifo.
        mode: match field("mode") {
            "" => QueueMode::Fifo,
            m => QueueMode::parse(m).ok_or_else(|| bad("unknown room mode"))?,
        },
        appearance: match field("appearance") {
            "" => Appearance::default(),
            json => serde_json::from_str(json).map_err(|_| bad("room appearance is not valid"))?,
        },
        events: match field("events") {
            "" => Vec::new(),
            json => serde_json::from_str(json).map_err(|_| bad("room events are not valid"))?,
        },
    }))
}

impl RedisQueueStore {
    /// Fills in the seed of every shuffled event whose pre-queue was
    /// ordered (one `HGETALL` of the room's events hash, only when the
    /// room has a shuffled event).
    async fn reveal(&self, room: &RoomId, config: &mut RoomConfig) -> Result<(), QueueError> {
        if !config.events.iter().any(|e| e.order == EventOrder::Shuffle) {
            return Ok(());
        }
        let runs: HashMap<String, String> = self
            .client
            .on(&self.keys(room).events)?
            .hgetall(&self.keys(room).events)
            .await
            .map_err(unavailable)?;
        reveal_from(config, &runs);
        Ok(())
    }

    /// Orders the pre-queue of `event` (see `shuffle.lua`): reads the seed
    /// and the pre-queue's waiting devices, computes
    /// [`pace_protocol::audit::shuffle_order`], and has the script apply it
    /// only if the pre-queue is still exactly what was read. Returns
    /// whether it was applied (or had been already).
    async fn shuffle(&self, room: &RoomId, event: &str, now_ms: u64) -> Result<bool, QueueError> {
        let k = self.keys(room);
        let fields: Vec<Option<String>> = self
            .client
            .on(&k.events)?
            .hmget(
                &k.events,
                vec![
                    format!("{event}:seed"),
                    format!("{event}:first"),
                    format!("{event}:last"),
                ],
            )
            .await
            .map_err(unavailable)?;
        let (Some(seed), Some(first), Some(last)) = (
            fields.first().cloned().flatten(),
            fields.get(1).cloned().flatten(),
            fields.get(2).cloned().flatten(),
        ) else {
            return Err(bad("event shuffle without seed or pre-queue bounds"));
        };
        let bound = |v: &str| {
            v.parse::<u64>()
                .map(|n| n as f64)
                .map_err(|_| bad("event pre-queue bound is not a number"))
        };
        let waiting: Vec<(String, f64)> = self
            .client
            .on(&k.queue)?
            .zrangebyscore(&k.queue, bound(&first)?, bound(&last)?, true, None)
            .await
            .map_err(unavailable)?;
        let by_ticket: HashMap<u64, String> = waiting
            .into_iter()
            .map(|(d, score)| (score as u64, d))
            .collect();
        let tickets: Vec<u64> = by_ticket.keys().copied().collect();
        let order = pace_protocol::audit::shuffle_order(&seed, &tickets);
        let mut args = vec![now_ms.to_string(), event.to_owned()];
        for t in &order {
            args.push(by_ticket[t].clone());
            args.push(t.to_string());
        }
        let v = self
            .run(
                &self.scripts.shuffle,
                vec![k.counters, k.queue, k.events, k.log],
                args,
            )
            .await?;
        Ok(v.into_string().as_deref() != Some("stale"))
    }
}

#[async_trait]
impl QueueStore for RedisQueueStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn clock_ms(&self) -> Result<u64, QueueError> {
        // A key routes the call in a cluster; its shard's clock answers.
        let v = self
            .run(&self.scripts.clock, vec![self.rooms_key.clone()], vec![])
            .await?;
        v.as_u64().ok_or_else(|| bad("TIME is not a number"))
    }

    async fn put_room(&self, room: &RoomId, config: &RoomConfig) -> Result<Room, QueueError> {
        config.validate().map_err(QueueError::InvalidConfig)?;
        self.connected_or_fail()?;
        let k = self.keys(room);
        let mut config = super::without_seeds(config);
        if !config.events.is_empty() {
            let stored: HashMap<String, String> = self
                .client
                .on(&k.config)?
                .hgetall(&k.config)
                .await
                .map_err(unavailable)?;
            let stored = parse_config(&stored)?;
            let runs: HashMap<String, String> = self
                .client
                .on(&k.events)?
                .hgetall(&k.events)
                .await
                .map_err(unavailable)?;
            super::check_order_kept(stored.as_ref(), &config, |id| {
                runs.contains_key(&format!("{id}:first"))
            })?;
        }
        // A shuffled event commits to a seed once, when first stored
        // (HSETNX: concurrent PUTs agree on one).
        for e in &mut config.events {
            if e.order == EventOrder::Shuffle {
                let field = format!("{}:seed", e.id);
                let _: bool = self
                    .client
                    .on(&k.events)?
                    .hsetnx(&k.events, &field, super::new_seed())
                    .await
                    .map_err(unavailable)?;
                let seed: String = self
                    .client
                    .on(&k.events)?
                    .hget(&k.events, &field)
                    .await
                    .map_err(unavailable)?;
                e.seed_sha256 = Some(pace_protocol::audit::sha256_hex(seed.as_bytes()));
            }
        }
        let config = &config;
        let fields: Vec<(&str, String)> = vec![
            ("capacity", config.capacity.to_string()),
            (
                "admit_per_minute",
                config
                    .admit_per_minute
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
            ),
            ("session_ttl_secs", config.session_ttl_secs.to_string()),
            ("target_url", config.target_url.clone()),
            ("state", config.state.as_str().to_owned()),
            ("pow_difficulty", config.pow_difficulty.to_string()),
            ("mode", config.mode.as_str().to_owned()),
            (
                "appearance",
                if config.appearance.is_default() {
                    String::new()
                } else {
                    serde_json::to_string(&config.appearance).map_err(|_| {
                        QueueError::InvalidConfig("appearance cannot be stored".into())
                    })?
                },
            ),
            (
                "events",
                if config.events.is_empty() {
                    String::new()
                } else {
                    serde_json::to_string(&config.events)
                        .map_err(|_| QueueError::InvalidConfig("events cannot be stored".into()))?
                },
            ),
        ];
        // One HSET replaces every field at once; the room index lives in
        // another slot, so it is a second (idempotent) command. With
        // --store-write-replicas each is answered only once replicated: a
        // failover right after a PUT would otherwise lose the room (it
        // answers 404 until PUT again).
        let on_config = self.client.on(&k.config)?;
        let _: i64 = on_config
            .hset(&k.config, fields)
            .await
            .map_err(|e| unavailable(self.client.note(e)))?;
        self.client.replicated(&on_config).await?;
        let on_index = self.client.on(&self.rooms_key)?;
        let _: i64 = on_index
            .sadd(&self.rooms_key, room.as_str())
            .await
            .map_err(|e| unavailable(self.client.note(e)))?;
        self.client.replicated(&on_index).await?;
        let mut config = config.clone();
        self.reveal(room, &mut config).await?;
        Ok(Room {
            id: room.clone(),
            config,
        })
    }

    async fn get_room(&self, room: &RoomId) -> Result<Option<Room>, QueueError> {
        self.connected_or_fail()?;
        let h: HashMap<String, String> = self
            .client
            .on(&self.keys(room).config)?
            .hgetall(&self.keys(room).config)
            .await
            .map_err(unavailable)?;
        let Some(mut config) = parse_config(&h)? else {
            return Ok(None);
        };
        self.reveal(room, &mut config).await?;
        Ok(Some(Room {
            id: room.clone(),
            config,
        }))
    }

    async fn add_user_place(
        &self,
        room: &RoomId,
        user: &str,
        device: &DeviceId,
    ) -> Result<Vec<DeviceId>, QueueError> {
        self.connected_or_fail()?;
        let key = self.user_places_key(room, user);
        let _: i64 = self
            .client
            .on(&key)?
            .sadd(&key, device.as_str())
            .await
            .map_err(unavailable)?;
        let members: Vec<String> = self
            .client
            .on(&key)?
            .smembers(&key)
            .await
            .map_err(unavailable)?;
        Ok(members
            .iter()
            .filter_map(|m| DeviceId::parse(m).ok())
            .collect())
    }

    async fn remove_user_place(
        &self,
        room: &RoomId,
        user: &str,
        device: &DeviceId,
    ) -> Result<(), QueueError> {
        self.connected_or_fail()?;
        let _: i64 = self
            .client
            .on(&self.user_places_key(room, user))?
            .srem(self.user_places_key(room, user), device.as_str())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn room_owner(&self, room: &RoomId) -> Result<Option<String>, QueueError> {
        self.connected_or_fail()?;
        self.client
            .on(&self.keys(room).owner)?
            .get(&self.keys(room).owner)
            .await
            .map_err(unavailable)
    }

    async fn claim_room(&self, room: &RoomId, tenant: &str) -> Result<Option<String>, QueueError> {
        self.connected_or_fail()?;
        let k = self.keys(room);
        let owner: String = Script::from_lua(include_str!("claim_room.lua"))
            .evalsha_with_reload(
                &self.client.on(&k.owner)?,
                vec![k.owner, k.config],
                vec![tenant.to_owned()],
            )
            .await
            .map_err(unavailable)?;
        Ok((!owner.is_empty()).then_some(owner))
    }

    async fn rooms(&self) -> Result<Vec<RoomId>, QueueError> {
        self.connected_or_fail()?;
        let ids = sscan_members(
            &self.client.on(&self.rooms_key)?,
            &self.rooms_key,
            usize::MAX,
        )
        .await
        .map_err(unavailable)?;
        let mut rooms = ids
            .iter()
            .map(|s| RoomId::parse(s).map_err(|_| bad("invalid room id in store")))
            .collect::<Result<Vec<_>, _>>()?;
        rooms.sort();
        Ok(rooms)
    }

    async fn join(
        &self,
        room: &RoomId,
        device: &DeviceId,
        now_ms: u64,
    ) -> Result<JoinOutcome, QueueError> {
        let k = self.keys(room);
        let v = self
            .run(
                &self.scripts.join,
                vec![
                    k.config, k.counters, k.queue, k.seen, k.active, k.sessions, k.devices,
                    k.joined, k.log, k.events,
                ],
                vec![
                    device.as_str().to_owned(),
                    now_ms.to_string(),
                    pace_protocol::audit::device_hash(room.as_str(), device.as_str()),
                ],
            )
            .await?;
        join_outcome(Reply::new(v))
    }

    async fn join_room(
        &self,
        room: &RoomId,
        device: &DeviceId,
        now_ms: u64,
        pow: &PowAnswer,
    ) -> Result<JoinAttempt, QueueError> {
        let k = self.keys(room);
        // Signed, as in `stats`.
        let window_start = i128::from(now_ms) - i128::from(RATE_WINDOW_MS);
        let (mode, jti, ttl_ms) = match pow {
            PowAnswer::Exempt => ("exempt", "", 0),
            PowAnswer::Unsolved => ("unsolved", "", 0),
            PowAnswer::Invalid => ("invalid", "", 0),
            PowAnswer::Solved { jti, ttl_ms } => ("solved", jti.as_str(), (*ttl_ms).max(1)),
        };
        let v = self
            .run(
                &self.scripts.join,
                vec![
                    k.config,
                    k.counters,
                    k.queue,
                    k.seen,
                    k.active,
                    k.sessions,
                    k.devices,
                    k.joined,
                    k.log,
                    k.events,
                    k.rate,
                    format!("{}{jti}", k.pow_mark),
                ],
                vec![
                    device.as_str().to_owned(),
                    now_ms.to_string(),
                    pace_protocol::audit::device_hash(room.as_str(), device.as_str()),
                    window_start.to_string(),
                    mode.to_owned(),
                    ttl_ms.to_string(),
                ],
            )
            .await?;
        let mut r = Reply::new(v);
        let mut out = r.array()?;
        let config = flat_map(r.array()?)?;
        let runs = flat_map(r.array()?)?;
        let admitted_last_minute = r.u64()?;
        let pow_claimed = r.u64()? == 1;
        let Some(mut config) = parse_config(&config)? else {
            return Ok(JoinAttempt::NoSuchRoom);
        };
        reveal_from(&mut config, &runs);
        let room = Room {
            id: room.clone(),
            config,
        };
        if out.0.as_slice().first().and_then(Value::as_str).as_deref() == Some("pow") {
            out.string()?;
            let gate = match out.string()?.as_str() {
                "challenge" => PowGate::Challenge,
                "invalid" => PowGate::Invalid,
                "reused" => PowGate::Reused,
                _ => return Err(bad("unknown proof-of-work gate")),
            };
            return Ok(JoinAttempt::Pow { room, gate });
        }
        Ok(JoinAttempt::Joined {
            room,
            outcome: join_outcome(out)?,
            admitted_last_minute,
            pow_claimed,
        })
    }

    async fn claim_mark(
        &self,
        room: &RoomId,
        jti: &str,
        ttl_ms: u64,
        _now_ms: u64,
    ) -> Result<bool, QueueError> {
        self.connected_or_fail()?;
        let key = format!("{}{jti}", self.keys(room).pow_mark);
        let set: Option<String> = self
            .client
            .on(&key)?
            .set(
                &key,
                1,
                Some(Expiration::PX(ttl_ms.max(1) as i64)),
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(unavailable)?;
        Ok(set.is_some())
    }

    async fn touch(
        &self,
        room: &RoomId,
        devices: &[DeviceId],
        now_ms: u64,
    ) -> Result<Vec<DeviceId>, QueueError> {
        let k = self.keys(room);
        let mut missing = Vec::new();
        for chunk in devices.chunks(BATCH) {
            let v = self
                .run(
                    &self.scripts.touch,
                    vec![k.seen.clone()],
                    device_args(now_ms, chunk),
                )
                .await?;
            missing.extend(Reply::new(v).devices()?);
        }
        Ok(missing)
    }

    async fn sweep(
        &self,
        room: &RoomId,
        now_ms: u64,
        grace_ms: u64,
    ) -> Result<Vec<DeviceId>, QueueError> {
        let k = self.keys(room);
        let cutoff = now_ms.saturating_sub(grace_ms).to_string();
        let mut gone = Vec::new();
        loop {
            let v = self
                .run(
                    &self.scripts.sweep,
                    vec![
                        k.counters.clone(),
                        k.queue.clone(),
                        k.seen.clone(),
                        k.joined.clone(),
                    ],
                    vec![cutoff.clone(), BATCH.to_string()],
                )
                .await?;
            let batch = Reply::new(v).devices()?;
            let full = batch.len() == BATCH;
            gone.extend(batch);
            if !full {
                return Ok(gone);
            }
        }
    }

    async fn admit(&self, room: &RoomId, now_ms: u64) -> Result<AdmitOutcome, QueueError> {
        let k = self.keys(room);
        let keys = vec![
            k.config, k.counters, k.queue, k.seen, k.active, k.sessions, k.devices, k.rate,
            k.joined, k.waits, k.log, k.events,
        ];
        let args_tail: Vec<String> = WAIT_BUCKETS_SECS.iter().map(u64::to_string).collect();
        let mut out = AdmitOutcome::default();
        let mut shuffles = 0;
        loop {
            let nonce = match &self.seeded_nonces {
                None => uuid::Uuid::new_v4().to_string(),
                Some((seed, n)) => format!(
                    "seed-{seed}-{}",
                    n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                ),
            };
            let v = self
                .run(
                    &self.scripts.admit,
                    keys.clone(),
                    [
                        vec![now_ms.to_string(), nonce, BATCH.to_string()],
                        args_tail.clone(),
                    ]
                    .concat(),
                )
                .await?;
            let mut r = Reply::new(v);
            out.active = r.u64()?;
            out.waiting = r.u64()?;
            let expires_at_ms = r.u64()?;
            let more = r.u64()? == 1;
            out.expired.extend(r.array()?.devices()?);
            let mut admitted = r.array()?;
            while !admitted.0.as_slice().is_empty() {
                let device = admitted.device()?;
                out.admitted.push((
                    device,
                    Admission {
                        session_id: admitted.string()?,
                        ticket: admitted.u64()?,
                        admitted_at_ms: now_ms,
                        expires_at_ms,
                    },
                ));
                out.waited_ms.push(admitted.u64()?);
            }
            // An event that starts and shuffles: admissions wait for the
            // shuffle, then this loop runs the script again.
            let shuffle = r.string()?;
            if !shuffle.is_empty() && shuffles < SHUFFLE_ATTEMPTS {
                shuffles += 1;
                self.shuffle(room, &shuffle, now_ms).await?;
                continue;
            }
            if !more {
                return Ok(out);
            }
        }
    }

    async fn position(
        &self,
        room: &RoomId,
        device: &DeviceId,
    ) -> Result<Option<Place>, QueueError> {
        // Status at the end of time: no session is live, so only a place
        // counts (a device is never both waiting and admitted).
        match self.status(room, device, u64::MAX).await? {
            DeviceStatus::Waiting(p) => Ok(Some(p)),
            _ => Ok(None),
        }
    }

    async fn positions(
        &self,
        room: &RoomId,
        devices: &[DeviceId],
    ) -> Result<Positions, QueueError> {
        let k = self.keys(room);
        let mut out = Positions::default();
        // At least one call, so an empty request still gets the total.
        let mut chunks: Vec<&[DeviceId]> = devices.chunks(BATCH).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        for chunk in chunks {
            let v = self
                .run(
                    &self.scripts.positions,
                    vec![k.queue.clone()],
                    chunk.iter().map(|d| d.as_str().to_owned()).collect(),
                )
                .await?;
            let mut r = Reply::new(v);
            out.waiting_total = r.u64()?;
            for _ in chunk {
                out.positions.push(r.opt_u64()?);
            }
        }
        Ok(out)
    }

    async fn head(&self, room: &RoomId, n: usize) -> Result<Vec<DeviceId>, QueueError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        self.connected_or_fail()?;
        let last = i64::try_from(n - 1).unwrap_or(i64::MAX);
        let v: Value = self
            .client
            .on(&self.keys(room).queue)?
            .zrange(&self.keys(room).queue, 0, last, None, false, None, false)
            .await
            .map_err(unavailable)?;
        Reply::new(v).devices()
    }

    async fn leave(&self, room: &RoomId, device: &DeviceId) -> Result<bool, QueueError> {
        let k = self.keys(room);
        let v = self
            .run(
                &self.scripts.leave,
                vec![k.counters, k.queue, k.seen, k.joined],
                vec![device.as_str().to_owned()],
            )
            .await?;
        Ok(v.as_u64() == Some(1))
    }

    async fn release(
        &self,
        room: &RoomId,
        session_id: &str,
        now_ms: u64,
    ) -> Result<bool, QueueError> {
        let k = self.keys(room);
        let v = self
            .run(
                &self.scripts.release,
                vec![k.active, k.sessions, k.devices, k.counters, k.log],
                vec![session_id.to_owned(), now_ms.to_string()],
            )
            .await?;
        Ok(v.as_u64() == Some(1))
    }

    async fn renew(
        &self,
        room: &RoomId,
        session_id: &str,
        now_ms: u64,
    ) -> Result<Option<u64>, QueueError> {
        let k = self.keys(room);
        let v = self
            .run(
                &self.scripts.renew,
                vec![k.config, k.active],
                vec![session_id.to_owned(), now_ms.to_string()],
            )
            .await?;
        match v {
            Value::Null => Ok(None),
            v => v.as_u64().map(Some).ok_or_else(|| bad("expected a number")),
        }
    }

    async fn status(
        &self,
        room: &RoomId,
        device: &DeviceId,
        now_ms: u64,
    ) -> Result<DeviceStatus, QueueError> {
        let k = self.keys(room);
        let v = self
            .run(
                &self.scripts.status,
                vec![k.queue, k.active, k.sessions, k.devices],
                vec![device.as_str().to_owned(), now_ms.to_string()],
            )
            .await?;
        let mut r = Reply::new(v);
        match r.string()?.as_str() {
            "waiting" => Ok(DeviceStatus::Waiting(r.place()?)),
            "admitted" => Ok(DeviceStatus::Admitted(r.admission()?)),
            "unknown" => Ok(DeviceStatus::Unknown),
            _ => Err(bad("unknown device status")),
        }
    }

    async fn stats(&self, room: &RoomId, now_ms: u64) -> Result<RoomCounters, QueueError> {
        let k = self.keys(room);
        // Signed: before the first minute of the epoch the window starts
        // below zero (tests), as in the memory store.
        let window_start = i128::from(now_ms) - i128::from(RATE_WINDOW_MS);
        let v = self
            .run(
                &self.scripts.stats,
                vec![k.counters, k.queue, k.active, k.rate],
                vec![window_start.to_string()],
            )
            .await?;
        let mut r = Reply::new(v);
        Ok(RoomCounters {
            waiting: r.u64()?,
            active: r.u64()?,
            admitted_total: r.u64()?,
            abandoned_total: r.u64()?,
            peak_waiting: r.u64()?,
            admitted_last_minute: r.u64()?,
        })
    }

    async fn waits(&self, room: &RoomId) -> Result<WaitDistribution, QueueError> {
        self.connected_or_fail()?;
        let k = self.keys(room);
        let raw: std::collections::HashMap<String, u64> = self
            .client
            .on(&k.waits)?
            .hgetall(&k.waits)
            .await
            .map_err(unavailable)?;
        let mut w = WaitDistribution {
            counts: vec![0; WAIT_BUCKETS_SECS.len() + 1],
            sum_ms: 0,
        };
        for (field, n) in raw {
            if field == "sum_ms" {
                w.sum_ms = n;
            } else if field == "+Inf" {
                w.counts[WAIT_BUCKETS_SECS.len()] = n;
            } else if let Some(i) = WAIT_BUCKETS_SECS
                .iter()
                .position(|b| b.to_string() == field)
            {
                w.counts[i] = n;
            }
        }
        Ok(w)
    }

    async fn log(
        &self,
        room: &RoomId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<LogRecord>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.connected_or_fail()?;
        let start = format!("{}-0", after_seq.saturating_add(1));
        let v: Value = self
            .client
            .on(&self.keys(room).log)?
            .xrange(&self.keys(room).log, start, "+", Some(limit as u64))
            .await
            .map_err(unavailable)?;
        v.into_array().into_iter().map(log_record).collect()
    }

    async fn checkpoints(
        &self,
        room: &RoomId,
        limit: usize,
    ) -> Result<Vec<LogCheckpoint>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let last = i64::try_from(limit - 1).unwrap_or(i64::MAX);
        self.checkpoint_range(room, 0, last).await
    }

    async fn last_checkpoint(&self, room: &RoomId) -> Result<Option<LogCheckpoint>, QueueError> {
        Ok(self.checkpoint_range(room, -1, -1).await?.pop())
    }

    async fn add_checkpoint(
        &self,
        room: &RoomId,
        expected_seq: u64,
        cp: &LogCheckpoint,
    ) -> Result<bool, QueueError> {
        let k = self.keys(room);
        let json = serde_json::to_string(cp).map_err(|e| bad(&e.to_string()))?;
        let v = self
            .run(
                &self.scripts.add_checkpoint,
                vec![k.config, k.checkpoints],
                vec![expected_seq.to_string(), cp.seq.to_string(), json],
            )
            .await?;
        Ok(v.as_u64() == Some(1))
    }

    async fn trim_log(&self, room: &RoomId, through_seq: u64) -> Result<(), QueueError> {
        let k = self.keys(room);
        self.run(
            &self.scripts.trim_log,
            vec![k.log, k.checkpoints],
            vec![through_seq.to_string()],
        )
        .await?;
        Ok(())
    }
}

/// A checkpoint as kept in the room's checkpoints set.
fn checkpoint(json: &str) -> Result<LogCheckpoint, QueueError> {
    serde_json::from_str(json).map_err(|_| bad("invalid checkpoint in store"))
}

/// One `XRANGE` item of the audit log: `[id, [e, text]]`, the text as
/// the scripts write it (see the key table in [`crate::queue`]).
fn log_record(item: Value) -> Result<LogRecord, QueueError> {
    let mut parts = Reply::new(item);
    let id = parts.string()?;
    let seq = id
        .strip_suffix("-0")
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| bad("invalid audit log id"))?;
    let mut fields = parts.array()?;
    let _name = fields.string()?;
    let text = fields.string()?;
    parse_log_text(seq, &text).ok_or_else(|| bad("invalid audit log entry"))
}

fn parse_log_text(seq: u64, text: &str) -> Option<LogRecord> {
    let f: Vec<&str> = text.split('|').collect();
    let t = f.get(1)?.parse().ok()?;
    // `c|t|event|seed_sha256` and `s|t|event|seed|t1,t2,...` carry no ticket.
    match (f.first()?, f.len()) {
        (&"c", 4) => {
            return Some(LogRecord {
                seq,
                t,
                event: LogEvent::Commit {
                    event: f[2].to_owned(),
                    seed_sha256: f[3].to_owned(),
                },
            });
        }
        (&"s", 5) => {
            let order = if f[4].is_empty() {
                Vec::new()
            } else {
                f[4].split(',')
                    .map(|t| t.parse().ok())
                    .collect::<Option<Vec<u64>>>()?
            };
            return Some(LogRecord {
                seq,
                t,
                event: LogEvent::Shuffle {
                    event: f[2].to_owned(),
                    seed: f[3].to_owned(),
                    order,
                },
            });
        }
        _ => {}
    }
    let ticket = f.get(2)?.parse().ok()?;
    let event = match (f.first()?, f.len()) {
        (&"j", 4) => LogEvent::Join {
            ticket,
            device: f[3].to_owned(),
        },
        // `a|t|ticket|session|capacity`, then `|mode` unless fifo.
        (&"a", 5 | 6) => LogEvent::Admit {
            ticket,
            session: f[3].to_owned(),
            capacity: f[4].parse().ok()?,
            mode: match f.get(5) {
                Some(mode) => QueueMode::parse(mode)?,
                None => QueueMode::Fifo,
            },
        },
        (&"e", 5) => LogEvent::End {
            ticket,
            session: f[3].to_owned(),
            reason: match f[4] {
                "released" => EndReason::Released,
                "expired" => EndReason::Expired,
                _ => return None,
            },
        },
        _ => return None,
    };
    Some(LogRecord { seq, t, event })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::super::SharedQueueStore;
    use super::super::conformance::{T0, config, dev, queue_conformance, room};
    use super::*;
    use crate::store::test_redis::TestRedis;

    /// A connected client configured like the node's (reconnect forever,
    /// short timeouts, one attempt per command).
    async fn client(redis: &TestRedis) -> Client {
        let mut builder = Builder::from_config(Config::from_url(&redis.url()).unwrap());
        builder
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(2);
                c.internal_command_timeout = Duration::from_secs(2);
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = Duration::from_secs(2);
            });
        let client = builder.build().unwrap();
        drop(client.connect());
        tokio::time::timeout(Duration::from_secs(10), client.wait_for_connect())
            .await
            .expect("connected to the test redis within 10 s")
            .unwrap();
        client
    }

    async fn setup(name: &str) -> (TestRedis, SharedQueueStore) {
        let redis = TestRedis::start();
        let store = RedisQueueStore::new(client(&redis).await, &format!("t-{name}"));
        (redis, Arc::new(store))
    }

    queue_conformance!(setup);

    /// `sscan_members` reads a set of several pages whole, each member
    /// once, and stops at its limit; `rooms` (which uses it) lists more
    /// rooms than one page.
    #[tokio::test]
    async fn sets_are_read_in_pages() {
        let redis = TestRedis::start();
        let c = client(&redis).await;
        let members: Vec<String> = (0..2_500).map(|i| format!("m{i}")).collect();
        let _: i64 = c.sadd("big", members.clone()).await.unwrap();
        let mut got = super::sscan_members(&c, "big", usize::MAX).await.unwrap();
        got.sort();
        got.dedup();
        let mut want = members;
        want.sort();
        assert_eq!(got, want);
        assert_eq!(super::sscan_members(&c, "big", 10).await.unwrap().len(), 10);
        assert!(
            super::sscan_members(&c, "none", 10)
                .await
                .unwrap()
                .is_empty()
        );
        let s = RedisQueueStore::new(c.clone(), "pages");
        for i in 0..1_200 {
            s.put_room(&room(&format!("r{i:04}")), &config(1))
                .await
                .unwrap();
        }
        let rooms = s.rooms().await.unwrap();
        assert_eq!(rooms.len(), 1_200);
        assert_eq!(rooms[0], room("r0000"));
        assert_eq!(rooms[1_199], room("r1199"));
    }

    #[test]
    fn a_rooms_keys_share_one_slot() {
        let k = RoomKeys::new("pace", &room("demo:1"));
        assert_eq!(k.queue, "{pace:room:demo:1}:queue");
        let slot = fred::util::redis_keyslot(k.config.as_bytes());
        for key in [
            &k.counters,
            &k.queue,
            &k.seen,
            &k.active,
            &k.sessions,
            &k.devices,
            &k.rate,
            &k.log,
            &k.checkpoints,
        ] {
            assert_eq!(fred::util::redis_keyslot(key.as_bytes()), slot, "{key}");
        }
    }

    #[tokio::test]
    async fn scripts_reload_after_a_script_flush() {
        let redis = TestRedis::start();
        let c = client(&redis).await;
        let s = RedisQueueStore::new(c.clone(), "flush");
        let r = room("flush");
        s.put_room(&r, &config(1)).await.unwrap();
        s.join(&r, &dev("a"), T0).await.unwrap();
        let _: () = c.script_flush(false).await.unwrap();
        let o = s.admit(&r, T0).await.unwrap();
        assert_eq!(o.admitted.len(), 1);
    }

    /// Each script appends its log entry before the change it records and
    /// bumps `log_seq` only after the append: an append that fails (here:
    /// the log's key holds a string) changes nothing, and numbering goes on
    /// without a gap once the log can be written again.
    #[tokio::test]
    async fn a_log_append_that_fails_changes_nothing() {
        let redis = TestRedis::start();
        let c = client(&redis).await;
        let s = RedisQueueStore::new(c.clone(), "logfail");
        let r = room("logfail");
        s.put_room(&r, &config(1)).await.unwrap();
        s.join(&r, &dev("a"), T0).await.unwrap();
        let k = RoomKeys::new("logfail", &r);
        let saved: Value = c.xrange(&k.log, "-", "+", None).await.unwrap();
        let _: () = c.del(&k.log).await.unwrap();
        let _: () = c
            .set(&k.log, "not a stream", None, None, false)
            .await
            .unwrap();
        assert!(s.join(&r, &dev("b"), T0).await.is_err());
        assert!(s.admit(&r, T0).await.is_err());
        let st = s.stats(&r, T0).await.unwrap();
        assert_eq!((st.waiting, st.active), (1, 0), "nothing changed");
        assert_eq!(s.position(&r, &dev("b")).await.unwrap(), None);
        // The log back (as it was): the next entry is number 2.
        let _: () = c.del(&k.log).await.unwrap();
        assert_eq!(saved.clone().into_array().len(), 1);
        let _: Value = c
            .xadd(&k.log, false, None, "1-0", log_fields(saved))
            .await
            .unwrap();
        s.join(&r, &dev("b"), T0).await.unwrap();
        let seqs: Vec<u64> = s
            .log(&r, 0, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [1, 2]);
    }

    /// The reset operations.md gives for a log with a gap (one `EVAL`
    /// dropping the stream, the checkpoints and `log_seq`): numbering
    /// starts again at 1 and the queue is untouched.
    #[tokio::test]
    async fn the_documented_log_reset_starts_numbering_afresh() {
        let redis = TestRedis::start();
        let c = client(&redis).await;
        let s = RedisQueueStore::new(c.clone(), "pace");
        let r = room("sale");
        s.put_room(&r, &config(0)).await.unwrap();
        for d in ["a", "b", "c"] {
            s.join(&r, &dev(d), T0).await.unwrap();
        }
        // A lost entry: the sealer would report a gap after entry 1.
        let k = RoomKeys::new("pace", &r);
        let _: u64 = c.xdel(&k.log, "2-0").await.unwrap();
        let script =
            "redis.call('DEL', KEYS[1], KEYS[2]); redis.call('HDEL', KEYS[3], 'log_seq'); return 1";
        let _: Value = c
            .eval(
                script,
                vec![
                    "{pace:room:sale}:log",
                    "{pace:room:sale}:log:cp",
                    "{pace:room:sale}:counters",
                ],
                Vec::<String>::new(),
            )
            .await
            .unwrap();
        s.join(&r, &dev("d"), T0).await.unwrap();
        let log = s.log(&r, 0, 10).await.unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].seq, 1);
        assert!(matches!(log[0].event, LogEvent::Join { ticket: 4, .. }));
        assert_eq!(s.stats(&r, T0).await.unwrap().waiting, 4);
    }

    /// One seeded lottery ([`conformance::seeded_lottery`]) under `prefix`.
    async fn seeded_lottery(c: &Client, prefix: &str, seed: u64) -> Vec<u64> {
        let s = RedisQueueStore::with_seeded_nonces(c.clone(), prefix, seed);
        super::super::conformance::seeded_lottery(&s).await
    }

    /// The Lua lottery is the documented function of the nonce: the same
    /// nonces give the same order; the first draw is the device at rank
    /// (first 12 hex digits of SHA-1(nonce ":draw:1")) mod waiting; and
    /// over 200 seeds each of five devices comes first about equally often.
    #[tokio::test]
    async fn seeded_lotteries_are_the_documented_draw_and_uniform() {
        let redis = TestRedis::start();
        let c = client(&redis).await;
        let order = seeded_lottery(&c, "same-a", 9).await;
        assert_eq!(order, seeded_lottery(&c, "same-b", 9).await);
        let sha1: String = c
            .eval(
                "return redis.sha1hex(ARGV[1])",
                Vec::<String>::new(),
                vec!["seed-9-0:draw:1"],
            )
            .await
            .unwrap();
        let rank = u64::from_str_radix(&sha1[..12], 16).unwrap() % 5;
        assert_eq!(order[0], rank + 1, "tickets 1..5 wait in rank order");

        const SEEDS: u64 = 200;
        let mut first = [0u32; 5];
        for seed in 0..SEEDS {
            let order = seeded_lottery(&c, &format!("u{seed}"), seed).await;
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [1, 2, 3, 4, 5], "everyone once: {order:?}");
            first[(order[0] - 1) as usize] += 1;
        }
        let expected = SEEDS as f64 / 5.0;
        let chi2: f64 = first
            .iter()
            .map(|&n| (f64::from(n) - expected).powi(2) / expected)
            .sum();
        // 4 degrees of freedom: 18.5 is the 0.1 % point.
        assert!(
            chi2 < 18.5,
            "first admitted per ticket {first:?}: chi2 {chi2}"
        );
    }

    /// A room stored before modes existed (no `mode` field) reads, admits
    /// and logs as fifo; a mode the node does not know is an error, not a
    /// guess.
    #[tokio::test]
    async fn a_room_stored_without_a_mode_is_fifo() {
        let redis = TestRedis::start();
        let c = client(&redis).await;
        let s = RedisQueueStore::new(c.clone(), "pace");
        let r = room("old");
        let mut cfg = config(1);
        cfg.mode = QueueMode::Random;
        s.put_room(&r, &cfg).await.unwrap();
        let k = RoomKeys::new("pace", &r);
        let _: u64 = c.hdel(&k.config, "mode").await.unwrap();
        assert_eq!(s.get_room(&r).await.unwrap().unwrap().config, config(1));
        for d in ["a", "b", "c"] {
            s.join(&r, &dev(d), T0).await.unwrap();
        }
        let o = s.admit(&r, T0 + 1).await.unwrap();
        assert_eq!(o.admitted[0].0, dev("a"));
        let raw: Value = c.xrange(&k.log, "4-0", "4-0", None).await.unwrap();
        assert_eq!(log_fields(raw)[0].1.split('|').count(), 5, "no mode field");
        let log = s.log(&r, 3, 1).await.unwrap();
        assert!(matches!(
            log[0].event,
            LogEvent::Admit {
                ticket: 1,
                mode: QueueMode::Fifo,
                ..
            }
        ));
        let _: u64 = c.hset(&k.config, ("mode", "alphabetical")).await.unwrap();
        assert!(matches!(s.get_room(&r).await, Err(QueueError::BadReply(_))));
    }

    /// The field and value of the only entry of an `XRANGE` reply.
    fn log_fields(v: Value) -> Vec<(String, String)> {
        let entry = v.into_array().remove(0).into_array();
        let fields = entry[1].clone().into_array();
        vec![(
            fields[0].as_string().unwrap(),
            fields[1].as_string().unwrap(),
        )]
    }

    #[tokio::test]
    async fn batches_beyond_one_script_run() {
        let redis = TestRedis::start();
        let s = RedisQueueStore::new(client(&redis).await, "batches");
        let r = room("big");
        s.put_room(&r, &config(2_500)).await.unwrap();
        let devices: Vec<DeviceId> = (0..2_500).map(|i| dev(&format!("d{i:04}"))).collect();
        for d in &devices {
            s.join(&r, d, T0).await.unwrap();
        }
        let p = s.positions(&r, &devices).await.unwrap();
        assert_eq!(p.positions.len(), 2_500);
        assert_eq!(p.positions[1_234], Some(1_235));
        assert!(s.touch(&r, &devices, T0 + 1).await.unwrap().is_empty());
        let o = s.admit(&r, T0 + 1).await.unwrap();
        assert_eq!(o.admitted.len(), 2_500);
        assert_eq!(o.admitted[2_499].0, devices[2_499]);
        assert_eq!((o.active, o.waiting), (2_500, 0));
        let o = s.admit(&r, T0 + 1 + 60_000).await.unwrap();
        assert_eq!(o.expired.len(), 2_500);
        assert_eq!(o.active, 0);
        for d in &devices {
            s.join(&r, d, T0).await.unwrap();
        }
        assert_eq!(s.sweep(&r, T0 + 100_000, 1).await.unwrap().len(), 2_500);
    }

    #[tokio::test]
    async fn operations_fail_fast_while_redis_is_down() {
        let mut redis = TestRedis::start();
        let c = client(&redis).await;
        let s = RedisQueueStore::new(c.clone(), "outage");
        let r = room("outage");
        s.put_room(&r, &config(1)).await.unwrap();
        redis.stop();
        for _ in 0..200 {
            if !c.is_connected() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let started = std::time::Instant::now();
        assert!(matches!(
            s.join(&r, &dev("a"), T0).await,
            Err(QueueError::Unavailable(_))
        ));
        assert!(matches!(
            s.admit(&r, T0).await,
            Err(QueueError::Unavailable(_))
        ));
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
