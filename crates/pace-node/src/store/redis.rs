//! The Redis store: shared state and cluster fan-out for several nodes.
//!
//! Two fred clients: one for commands, one dedicated subscriber that
//! re-subscribes after every reconnect. Both reconnect forever with
//! exponential backoff (fred has no reconnect policy by default), also when
//! their first connection fails (`redis_client.rs`).
//!
//! Fan-out uses **one cluster channel** (`<prefix>:bus`): every node
//! receives every envelope and delivers to its own matching devices. See
//! `docs/architecture.md` for why one channel rather than per-scope or
//! per-node channels.
//!
//! Every multi-step operation is one Lua script (`*.lua` beside this file):
//! numbering, keeping and publishing a notification happen atomically
//! (`publish.lua`), so per scope, publish order is sequence order on every
//! node, and every published notification is in its scope's history (a
//! Redis stream, bounded by length and age) and in the bus log.
//!
//! Pub/sub loses messages while a subscriber reconnects or falls behind.
//! Every notification therefore carries a cluster-wide bus sequence number;
//! the bus reader tracks it, and on a jump (or after re-subscribing, or
//! after falling behind) reads the missed notifications back from the bus
//! log and delivers them in order. When the log no longer reaches back, it
//! tells every local device to reconnect and resume (4003).
//!
//! While Redis is unreachable, operations fail at once with
//! [`StoreError::Unavailable`] (no queueing behind a dead connection), the
//! node's devices stay connected, and the clients keep reconnecting.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::scripts::Script;
use pace_protocol::bus::BUS_VERSION;
use pace_protocol::{BusEnvelope, DeviceId, Notification, RoomId};
use pace_protocol::{Cursor, Target};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::redis_client::{RedisClient, log_events};
use super::{
    BusCounters, Draft, History, HistoryLimits, Local, NodeInfo, Store, StoreError, StoreHealth,
    stamp,
};

/// How a node connects to Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Prefix of every key and channel, so clusters can share a Redis.
    pub prefix: String,
    /// This node's id (to skip its own connection announcements).
    pub node_id: String,
    /// Pub/sub messages buffered between fred and the bus reader; past
    /// this, messages are dropped and counted in `pace_bus_dropped_total`.
    pub bus_capacity: usize,
    /// Longest a Redis command may take before it fails.
    pub command_timeout: Duration,
    /// Nodes silent for longer than this age out of the cluster list.
    pub node_ttl: Duration,
    /// History kept per scope.
    pub history: HistoryLimits,
    /// Notifications kept in the bus log, for nodes repairing gaps.
    pub bus_log_len: usize,
    /// Replicas acknowledging each notification (`--store-write-replicas`).
    pub write_replicas: crate::config::WriteReplicas,
    /// Where the node keeps the store identity it last saw, across its
    /// restarts (in `--data-dir`): a store wiped while every node was
    /// stopped is noticed at the next start. `None`: not kept.
    pub identity_file: Option<std::path::PathBuf>,
}

/// How long an idle scope's sequence number is kept (at least the history
/// age): a device resuming within it learns it missed nothing instead of
/// being told the epoch changed.
const SEQUENCE_IDLE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long the bus reader keeps trying to read the bus log before it
/// gives up and makes its devices resume.
const REPAIR_DEADLINE: Duration = Duration::from_secs(5);

/// A value no real counter reaches, serialized in place of the counter and
/// replaced by the Lua script.
const PLACEHOLDER: u64 = u64::MAX;

/// The Redis [`Store`].
pub struct RedisStore {
    /// Commands; with Redis Cluster, routed to the primary of the
    /// `{prefix}` slot every key of this store shares.
    client: RedisClient,
    /// The bus subscriber; `None` over Redis Cluster, where
    /// [`keep_subscribed_cluster`] keeps one on the bus slot's primary.
    subscriber: Option<SubscriberClient>,
    opts: RedisOptions,
    keys: Keys,
    incr_publish: Script,
    publish: Script,
    history: Script,
    heartbeat: Script,
    nodes: Script,
    /// True while the subscriber is subscribed to the bus (false from a
    /// connection error until the re-subscription after the reconnect).
    subscribed: watch::Receiver<bool>,
    /// The highest bus position this node has seen, passed to every
    /// publish so a store that lost writes is noticed (`publish.lua`).
    seen: Seen,
    /// Per-scope heads, shared with the bus reader like `seen`.
    heads: ScopeHeads,
    counters: BusCounters,
    identity: Script,
    /// The store identity this node last saw (`None` before the first
    /// check): a different or missing one means the store was wiped.
    known_id: std::sync::Mutex<Option<String>>,
}

/// Most scopes whose heads a node remembers; past it the memory starts
/// over (the bus position check still holds).
const SCOPE_HEADS_MAX: usize = 100_000;

/// The highest (epoch, seq) this node has seen per scope key (its own
/// publishes and the bus), passed to `publish.lua` with the bus position,
/// so a scope the store rewound opens a new epoch even when the bus check
/// does not reveal it.
#[derive(Debug, Default, Clone)]
struct ScopeHeads(Arc<std::sync::Mutex<std::collections::HashMap<String, (u64, u64)>>>);

impl ScopeHeads {
    fn get(&self, scope: &str) -> (u64, u64) {
        let heads = self.0.lock().unwrap_or_else(|p| p.into_inner());
        heads.get(scope).copied().unwrap_or((0, 0))
    }

    fn saw(&self, scope: String, at: (u64, u64)) {
        let mut heads = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if heads.len() >= SCOPE_HEADS_MAX && !heads.contains_key(&scope) {
            heads.clear();
        }
        let head = heads.entry(scope).or_insert(at);
        // Epochs are Redis times: a later epoch is a greater one.
        if at > *head {
            *head = at;
        }
    }
}

/// The highest bus position (epoch, seq) a node has seen, shared by the
/// bus reader (which moves it) and the publisher (which reports it).
type Seen = Arc<std::sync::Mutex<(u64, u64)>>;

fn seen_now(seen: &Seen) -> (u64, u64) {
    *seen.lock().unwrap_or_else(|p| p.into_inner())
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.opts.prefix)
            .finish_non_exhaustive()
    }
}

/// Key and channel names. Cluster-wide keys share the `{prefix}` hash tag
/// so the scripts can run on Redis Cluster.
#[derive(Debug, Clone)]
struct Keys {
    bus: String,
    generation: String,
    nodes: String,
    node_info: String,
    /// Sequence hash of a scope: `<scope_prefix><scope key>`.
    scope_prefix: String,
    /// History stream of a scope: `<history_prefix><scope key>`.
    history_prefix: String,
    bus_seq: String,
    bus_log: String,
    /// Single-use claims: `<mark_prefix><key>`.
    mark_prefix: String,
    /// Redis time (µs) of the last detected loss of writes: sequences
    /// numbered before it start a new epoch (`publish.lua`, `history.lua`).
    epoch_floor: String,
    /// The store's identity, written once (`identity.lua`).
    store_id: String,
    /// When a node found the store wiped, until acknowledged.
    wiped: String,
}

impl Keys {
    fn scope(&self, target: &Target) -> [String; 3] {
        let key = target.scope_key();
        [
            format!("{}{key}", self.scope_prefix),
            format!("{}{key}", self.history_prefix),
            self.epoch_floor.clone(),
        ]
    }

    fn bus_sequence(&self) -> [String; 3] {
        [
            self.bus_seq.clone(),
            self.bus_log.clone(),
            self.epoch_floor.clone(),
        ]
    }
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            bus: format!("{prefix}:bus"),
            generation: format!("{{{prefix}}}:conn-generation"),
            nodes: format!("{{{prefix}}}:nodes"),
            node_info: format!("{{{prefix}}}:node-info"),
            scope_prefix: format!("{{{prefix}}}:scope:"),
            history_prefix: format!("{{{prefix}}}:history:"),
            bus_seq: format!("{{{prefix}}}:bus-seq"),
            bus_log: format!("{{{prefix}}}:bus-log"),
            mark_prefix: format!("{{{prefix}}}:mark:"),
            epoch_floor: format!("{{{prefix}}}:epoch-floor"),
            store_id: format!("{{{prefix}}}:store-id"),
            wiped: format!("{{{prefix}}}:wiped-at"),
        }
    }
}

/// Acknowledges a store wipe (`pace-node admin acknowledge-store-wipe`):
/// removes the wipe mark under `prefix`. Returns whether there was one.
pub async fn acknowledge_wipe(client: &RedisClient, prefix: &str) -> Result<bool, StoreError> {
    let wiped = Keys::new(prefix).wiped;
    let removed: i64 = client
        .on(&wiped)?
        .del(wiped)
        .await
        .map_err(StoreError::Redis)?;
    Ok(removed > 0)
}

impl RedisStore {
    /// Creates the clients and starts connecting in the background; the
    /// node reports not-ready until [`Store::wait_ready`] resolves.
    pub fn start(
        opts: RedisOptions,
        local: Arc<dyn Local>,
        counters: BusCounters,
    ) -> Result<Arc<RedisStore>, StoreError> {
        crate::config::check_redis_url(&opts.url).map_err(StoreError::Unavailable)?;
        let builder =
            super::redis_client::node_builder(&opts.url, opts.command_timeout, opts.bus_capacity)
                .map_err(StoreError::Redis)?;
        let map = StoreError::Redis;
        let client = RedisClient::start(&opts.url, opts.command_timeout)
            .map_err(map)?
            .with_write_replicas(opts.write_replicas);
        let subscriber = if client.is_cluster() {
            None
        } else {
            Some(builder.build_subscriber_client().map_err(map)?)
        };
        let keys = Keys::new(&opts.prefix);

        // Take the message receiver before subscribing so nothing is missed.
        let cluster_bus = broadcast::channel(opts.bus_capacity.max(1)).0;
        let messages = match &subscriber {
            Some(s) => s.message_rx(),
            None => cluster_bus.subscribe(),
        };
        let history = Script::from_lua(include_str!("history.lua"));
        let (catch_up_tx, catch_up_rx) = mpsc::channel(4);
        let seen = Seen::default();
        let heads = ScopeHeads::default();
        let reader = BusReader {
            seen: seen.clone(),
            heads: heads.clone(),
            last_check: None,
            client: client.clone(),
            history: history.clone(),
            keys: keys.clone(),
            local,
            counters: counters.clone(),
            node_id: opts.node_id.clone(),
            bus_log_len: opts.bus_log_len,
            at: None,
        };
        tokio::spawn(reader.run(messages, catch_up_rx));

        // The returned handles are the connection tasks; dropping them
        // detaches the tasks, which keep running until the clients quit.
        let (tx, subscribed) = watch::channel(false);
        match &subscriber {
            Some(subscriber) => {
                drop(subscriber.connect());
                tokio::spawn(log_events(
                    "subscriber",
                    subscriber.error_rx(),
                    subscriber.reconnect_rx(),
                ));
                tokio::spawn(keep_subscribed(
                    subscriber.clone(),
                    keys.bus.clone(),
                    tx,
                    catch_up_tx,
                ));
            }
            None => {
                tokio::spawn(keep_subscribed_cluster(
                    client.clone(),
                    ClusterBus {
                        channel: keys.bus.clone(),
                        slot_key: keys.bus_seq.clone(),
                        capacity: opts.bus_capacity,
                        messages: cluster_bus,
                        dropped: counters.clone(),
                    },
                    tx,
                    catch_up_tx,
                ));
            }
        }

        Ok(Arc::new(RedisStore {
            client,
            subscriber,
            keys,
            incr_publish: Script::from_lua(include_str!("incr_publish.lua")),
            publish: Script::from_lua(include_str!("publish.lua")),
            history,
            heartbeat: Script::from_lua(include_str!("heartbeat.lua")),
            nodes: Script::from_lua(include_str!("nodes.lua")),
            subscribed,
            seen,
            heads,
            counters,
            identity: Script::from_lua(include_str!("identity.lua")),
            // The identity seen before this node's last stop, if kept.
            known_id: std::sync::Mutex::new(
                opts.identity_file
                    .as_ref()
                    .and_then(|f| std::fs::read_to_string(f).ok())
                    .map(|id| id.trim().to_owned())
                    .filter(|id| !id.is_empty()),
            ),
            opts,
        }))
    }

    /// The command client, shared with the queue store (same connection,
    /// same reconnect policy and timeouts).
    pub fn client(&self) -> RedisClient {
        self.client.clone()
    }

    /// The client for this store's keys (all in the `{prefix}` slot).
    fn commands(&self) -> Result<Client, StoreError> {
        Ok(self.client.on(&self.keys.bus_seq)?)
    }

    fn connected_or_fail(&self) -> Result<(), StoreError> {
        if self.client.is_connected_for(&self.keys.bus_seq) {
            Ok(())
        } else {
            Err(StoreError::Unavailable("not connected to redis".into()))
        }
    }

    /// Publishes an envelope that needs no sequence number (admissions,
    /// device actions) on the cluster channel.
    async fn publish_envelope(&self, envelope: &BusEnvelope) -> Result<(), StoreError> {
        self.connected_or_fail()?;
        let text = serde_json::to_string(envelope).map_err(StoreError::Encode)?;
        let _: i64 = self
            .commands()?
            .publish(self.keys.bus.as_str(), text)
            .await
            .map_err(StoreError::Redis)?;
        Ok(())
    }

    /// Runs the increment-and-publish script on `message`, whose JSON
    /// field `field` holds [`PLACEHOLDER`]: the script writes the new
    /// counter value there. Returns the counter value.
    ///
    /// The first occurrence of the field is ours: envelope fields before it
    /// are ids and names whose charset excludes quotes.
    async fn incr_publish(
        &self,
        counter: &str,
        message: &str,
        field: &str,
    ) -> Result<u64, StoreError> {
        self.connected_or_fail()?;
        let marker = format!("\"{field}\":{PLACEHOLDER}");
        let Some((before, after)) = message.split_once(&marker) else {
            return Err(StoreError::Unavailable(
                "envelope without placeholder".into(),
            ));
        };
        let before = format!("{before}\"{field}\":");
        let value: u64 = self
            .incr_publish
            .evalsha_with_reload(
                &self.commands()?,
                vec![counter.to_owned()],
                vec![self.keys.bus.clone(), before, after.to_owned()],
            )
            .await
            .map_err(StoreError::Redis)?;
        Ok(value)
    }
}

/// Subscribes to the bus channel, and again after every reconnect; keeps
/// `live` true exactly while the subscription is in place, so health (and
/// `pace_store_up`) only reports up when this node really receives the bus.
/// After every subscription the bus reader catches up from the bus log
/// (what was published while this node was not subscribed) before `live`
/// turns true.
async fn keep_subscribed(
    sub: SubscriberClient,
    channel: String,
    live: watch::Sender<bool>,
    catch_up: mpsc::Sender<oneshot::Sender<()>>,
) {
    let mut reconnects = sub.reconnect_rx();
    let mut errors = sub.error_rx();
    loop {
        // (Re)subscribe until it works.
        loop {
            if sub.wait_for_connect().await.is_err() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            // The events queued so far are of the outage that just ended
            // (a node started before Redis queues one error per attempt):
            // left in the queue they would mark the fresh subscription
            // dead at once, with no reconnection to come and revive it.
            drain(&mut errors);
            drain(&mut reconnects);
            if sub.subscribe(channel.as_str()).await.is_ok() {
                let (done, caught_up) = oneshot::channel();
                if catch_up.send(done).await.is_err() {
                    return;
                }
                let _ = caught_up.await;
                let _ = live.send(true);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Wait for the connection to drop, then for it to come back.
        loop {
            tokio::select! {
                e = errors.recv() => match e {
                    Ok(_) => { let _ = live.send(false); }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                r = reconnects.recv() => match r {
                    Ok(_) => { let _ = live.send(false); break; }
                    Err(broadcast::error::RecvError::Lagged(_)) => { let _ = live.send(false); break; }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

/// Where [`keep_subscribed_cluster`] subscribes and delivers.
struct ClusterBus {
    channel: String,
    /// A key of the bus's slot: the subscriber follows its primary.
    slot_key: String,
    capacity: usize,
    /// The bus reader's receiver's sender.
    messages: broadcast::Sender<fred::types::Message>,
    dropped: BusCounters,
}

/// [`keep_subscribed`] over Redis Cluster: one subscriber on the primary
/// of the bus's own slot (whose failure stops notifications anyway, so a
/// failover of another shard does not touch the bus), replaced when that
/// slot moves to another primary (a failover) or its connection drops.
async fn keep_subscribed_cluster(
    client: RedisClient,
    bus: ClusterBus,
    live: watch::Sender<bool>,
    catch_up: mpsc::Sender<oneshot::Sender<()>>,
) {
    const POLL: Duration = Duration::from_millis(50);
    loop {
        // The store was dropped.
        if catch_up.is_closed() || live.is_closed() {
            return;
        }
        let Some(server) = client.owner_of(&bus.slot_key) else {
            tokio::time::sleep(POLL).await;
            continue;
        };
        let Ok(sub) = client.subscriber_to(&server, bus.capacity) else {
            tokio::time::sleep(POLL).await;
            continue;
        };
        let mut rx = sub.message_rx();
        let connection = sub.connect();
        let subscribed = tokio::time::timeout(Duration::from_secs(2), async {
            sub.wait_for_connect().await?;
            sub.subscribe(bus.channel.as_str()).await
        })
        .await;
        if matches!(subscribed, Ok(Ok(()))) {
            let (done, caught_up) = oneshot::channel();
            if catch_up.send(done).await.is_err() {
                return;
            }
            let _ = caught_up.await;
            let _ = live.send(true);
            tracing::info!(%server, "bus subscriber on the bus slot's primary");
            // Forward until the connection drops or the slot moves.
            let mut check = tokio::time::interval(POLL);
            loop {
                tokio::select! {
                    m = rx.recv() => match m {
                        Ok(m) => { let _ = bus.messages.send(m); }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            bus.dropped.dropped.inc_by(n);
                            let (done, _) = oneshot::channel();
                            let _ = catch_up.try_send(done);
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    _ = check.tick() => {
                        if !sub.is_connected()
                            || live.is_closed()
                            || client.owner_of(&bus.slot_key).as_ref() != Some(&server)
                        {
                            break;
                        }
                    }
                }
            }
            let _ = live.send(false);
        }
        let _ = sub.quit().await;
        connection.abort();
        tokio::time::sleep(POLL).await;
    }
}

/// Empties a broadcast receiver of what it holds now.
fn drain<T: Clone>(rx: &mut broadcast::Receiver<T>) {
    while !matches!(
        rx.try_recv(),
        Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed)
    ) {}
}

/// What `history.lua` answered: the sequence's current epoch and head,
/// whether the position asked about was past the head (the store lost
/// writes), and the kept envelopes' JSON after it, oldest first.
struct LogRead {
    epoch: u64,
    head: u64,
    lost: bool,
    envelopes: Vec<String>,
}

/// Reads a sequence's kept messages after a position (`history.lua`).
/// `trusted`: the position is this node's own (the bus reader), so a
/// position past the head makes the store start new epochs.
async fn read_log(
    client: &RedisClient,
    script: &Script,
    keys: [String; 3],
    (after_epoch, after_seq): (u64, u64),
    max: usize,
    trusted: bool,
) -> Result<LogRead, StoreError> {
    if !client.is_connected_for(&keys[0]) {
        return Err(StoreError::Unavailable("not connected to redis".into()));
    }
    let out: Vec<String> = script
        .evalsha_with_reload(
            &client.on(&keys[0])?,
            keys.to_vec(),
            vec![
                after_epoch.to_string(),
                after_seq.to_string(),
                max.to_string(),
                if trusted { "1" } else { "0" }.to_owned(),
            ],
        )
        .await
        .map_err(|e| StoreError::Redis(client.note(e)))?;
    let number = |i: usize| {
        out.get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| StoreError::Unavailable("unreadable history position".into()))
    };
    let (epoch, head) = (number(0)?, number(1)?);
    let lost = out.get(2).is_some_and(|s| s == "lost");
    Ok(LogRead {
        epoch,
        head,
        lost,
        envelopes: out.into_iter().skip(3).collect(),
    })
}

/// A notification envelope's bus position and notification.
fn parse_notify(text: &[u8]) -> Option<(u64, u64, Notification)> {
    match serde_json::from_slice::<BusEnvelope>(text).ok()? {
        BusEnvelope::Notify {
            bus_epoch,
            bus_seq,
            notification,
            ..
        } => Some((bus_epoch, bus_seq, notification)),
        _ => None,
    }
}

/// Reads the cluster channel and hands envelopes to this node, in bus
/// order, repairing gaps from the bus log.
struct BusReader {
    client: RedisClient,
    history: Script,
    keys: Keys,
    local: Arc<dyn Local>,
    counters: BusCounters,
    node_id: String,
    bus_log_len: usize,
    /// The bus position (epoch, seq) of the last notification delivered;
    /// `None` until known.
    at: Option<(u64, u64)>,
    /// `at`, shared with the publisher (see [`Seen`]).
    seen: Seen,
    /// Scope heads seen on the bus, shared with the publisher.
    heads: ScopeHeads,
    /// When a duplicate last made the reader check the store for lost
    /// writes (at most one check per [`LOST_WRITES_CHECK`]).
    last_check: Option<tokio::time::Instant>,
}

/// Least time between two checks for lost writes prompted by duplicates.
const LOST_WRITES_CHECK: Duration = Duration::from_secs(1);

impl BusReader {
    async fn run(
        mut self,
        mut messages: broadcast::Receiver<fred::types::Message>,
        mut catch_ups: mpsc::Receiver<oneshot::Sender<()>>,
    ) {
        loop {
            tokio::select! {
                biased;
                request = catch_ups.recv() => match request {
                    Some(done) => {
                        self.catch_up().await;
                        let _ = done.send(());
                    }
                    None => return,
                },
                msg = messages.recv() => match msg {
                    Ok(msg) => self.on_message(msg).await,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        self.counters.dropped.inc_by(n);
                        tracing::warn!(
                            dropped = n,
                            "bus reader fell behind (consider raising --bus-buffer); repairing from the bus log"
                        );
                        self.catch_up().await;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    async fn on_message(&mut self, msg: fred::types::Message) {
        self.counters.received.inc();
        let envelope = msg
            .value
            .as_bytes()
            .and_then(|b| serde_json::from_slice::<BusEnvelope>(b).ok());
        match envelope {
            Some(BusEnvelope::Notify {
                bus_epoch,
                bus_seq,
                notification,
                ..
            }) => self.on_notify(bus_epoch, bus_seq, notification).await,
            Some(BusEnvelope::Connected {
                origin,
                device,
                generation,
                ..
            }) => {
                if origin != self.node_id {
                    self.local.evict_older(&device, generation);
                }
            }
            Some(BusEnvelope::Admitted {
                room,
                device,
                frame,
                ..
            }) => self.local.admitted(&room, &device, &frame),
            Some(BusEnvelope::Device { device, action, .. }) => {
                self.local.device_action(&device, &action)
            }
            None => {
                self.counters.invalid.inc();
                tracing::warn!(channel = %msg.channel, "unreadable bus message skipped");
            }
        }
    }

    /// Delivers a live notification in bus order: skips what was already
    /// delivered, repairs a gap before it.
    async fn on_notify(&mut self, epoch: u64, seq: u64, n: Notification) {
        if let Ok(target) = pace_protocol::Target::new(n.scope, n.target.as_deref()) {
            self.heads.saw(target.scope_key(), (n.epoch, n.seq));
        }
        if seq == 0 {
            // From a node without a bus sequence: nothing to check.
            self.local.deliver(&n);
            return;
        }
        match self.at {
            Some((e, s)) if e == epoch && seq <= s => {
                // Repaired already, or the store lost writes and numbers
                // again from below what this node delivered.
                self.check_lost_writes().await;
                if self.at.is_some_and(|(e, s)| e == epoch && seq <= s) {
                    return;
                }
            }
            Some((e, s)) if e == epoch && seq == s + 1 => {}
            // Startup: this is where we begin.
            None => {}
            // The first epoch, or the one after lost writes were handled.
            Some((0, _)) if seq == 1 => {}
            // A new epoch: the store lost what this node had seen (wiped,
            // or failed over and rewound). This node cannot know what it
            // missed of the old epoch, so its devices resume.
            Some((e, _)) if e != epoch && seq == 1 => self.lost_writes(),
            Some(_) => self.repair(Some((epoch, seq - 1))).await,
        }
        if self.at.is_some_and(|(e, s)| e == epoch && seq <= s) {
            return;
        }
        self.local.deliver(&n);
        self.set_at((epoch, seq));
    }

    fn set_at(&mut self, at: (u64, u64)) {
        self.at = Some(at);
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }

    /// A duplicate arrived: checks (at most once per [`LOST_WRITES_CHECK`])
    /// whether the store's bus head fell below this node's position.
    async fn check_lost_writes(&mut self) {
        let now = tokio::time::Instant::now();
        if self
            .last_check
            .is_some_and(|t| now.duration_since(t) < LOST_WRITES_CHECK)
        {
            return;
        }
        self.last_check = Some(now);
        let Some(at) = self.at else { return };
        if let Ok(read) = read_log(
            &self.client,
            &self.history,
            self.keys.bus_sequence(),
            at,
            1,
            true,
        )
        .await
            && read.lost
        {
            self.lost_writes();
        }
    }

    /// The store holds less than this node delivered: every local device
    /// reconnects and resumes (the scopes' histories tell them their epoch
    /// changed), and the reader starts over with the next epoch.
    fn lost_writes(&mut self) {
        self.counters.lost_writes.inc();
        tracing::error!(
            at = ?self.at,
            "the store lost notifications this node had seen (failover or restart without \
             the newest writes, or Redis wiped); devices told to resume, new epochs opened"
        );
        self.local.resync_all();
        self.set_at((0, 0));
    }

    /// After (re)subscribing or falling behind: delivers whatever was
    /// published since the last delivered notification.
    async fn catch_up(&mut self) {
        if self.at.is_none() {
            // Starting: no device is connected yet; begin at the head.
            if let Ok(read) = read_log(
                &self.client,
                &self.history,
                self.keys.bus_sequence(),
                (u64::MAX, u64::MAX),
                1,
                false,
            )
            .await
            {
                self.set_at((read.epoch, read.head));
            }
            return;
        }
        self.repair(None).await;
    }

    /// Delivers, from the bus log, the notifications after `self.at` up to
    /// `upto` (or the head). When the log does not reach back far enough or
    /// cannot be read in time, every local device is told to resync.
    async fn repair(&mut self, upto: Option<(u64, u64)>) {
        let (from_epoch, from_seq) = self.at.unwrap_or((0, 0));
        let deadline = tokio::time::Instant::now() + REPAIR_DEADLINE;
        let read = loop {
            match read_log(
                &self.client,
                &self.history,
                self.keys.bus_sequence(),
                (from_epoch, from_seq),
                self.bus_log_len,
                true,
            )
            .await
            {
                Ok(read) => break Some(read),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    tracing::error!(error = %e, "cannot read the bus log to repair a gap");
                    break None;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let Some(LogRead {
            epoch,
            head,
            lost,
            envelopes,
        }) = read
        else {
            self.unrepaired(upto);
            return;
        };
        if lost || (epoch == 0 && from_epoch != 0) {
            // The bus is behind this node's position, or gone (Redis
            // wiped): what this node saw is no longer in the store.
            self.lost_writes();
            return;
        }
        if epoch == 0 {
            // Nothing was ever published: nothing to repair.
            return;
        }
        let (to_epoch, to_seq) = upto.unwrap_or((epoch, head));
        let from = if epoch == from_epoch { from_seq } else { 0 };
        if to_epoch != epoch || to_seq <= from {
            if to_epoch != epoch {
                self.unrepaired(upto);
            }
            return;
        }
        let mut next = from + 1;
        for text in &envelopes {
            let Some((e, s, n)) = parse_notify(text.as_bytes()) else {
                continue;
            };
            if e != epoch || s < next {
                continue;
            }
            if s > to_seq || s != next {
                break;
            }
            self.local.deliver(&n);
            next += 1;
        }
        let repaired = next - 1 - from;
        self.counters.repaired.inc_by(repaired);
        self.set_at((epoch, next - 1));
        if next - 1 < to_seq {
            tracing::error!(
                missed = to_seq - from,
                repaired,
                "the bus log no longer reaches back to the gap"
            );
            self.unrepaired(Some((to_epoch, to_seq)));
        } else {
            self.counters.gaps.with_label_values(&["repaired"]).inc();
            tracing::info!(repaired, "bus gap repaired from the bus log");
        }
    }

    /// Gives up on a gap: every local device reconnects and resumes from
    /// its own cursors (the scopes' histories are separate from the log).
    fn unrepaired(&mut self, upto: Option<(u64, u64)>) {
        self.counters.gaps.with_label_values(&["unrepaired"]).inc();
        self.local.resync_all();
        if let Some(upto) = upto {
            self.set_at(upto);
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn health(&self) -> StoreHealth {
        let up = self.client.is_connected_for(&self.keys.bus_seq)
            && self.subscriber.as_ref().is_none_or(|s| s.is_connected())
            && *self.subscribed.borrow();
        StoreHealth {
            kind: self.kind(),
            up,
            error: (!up).then(|| "redis unreachable; reconnecting".to_owned()),
        }
    }

    async fn wait_ready(&self) {
        let mut rx = self.subscribed.clone();
        let _ = rx.wait_for(|s| *s).await;
        self.client.wait_for(&self.keys.bus_seq).await;
    }

    async fn publish(&self, draft: Draft) -> Result<Notification, StoreError> {
        self.connected_or_fail()?;
        let [scope, history, floor] = self.keys.scope(&draft.target);
        let scope_key = draft.target.scope_key();
        let (seen_epoch, seen_seq) = seen_now(&self.seen);
        let (head_epoch, head_seq) = self.heads.get(&scope_key);
        let mut n = stamp(draft, PLACEHOLDER, PLACEHOLDER);
        let envelope = BusEnvelope::Notify {
            v: BUS_VERSION,
            origin: self.opts.node_id.clone(),
            bus_epoch: PLACEHOLDER,
            bus_seq: PLACEHOLDER,
            notification: n.clone(),
        };
        let text = serde_json::to_string(&envelope).map_err(StoreError::Encode)?;
        let limits = self.opts.history;
        let idle_ttl = SEQUENCE_IDLE_TTL.max(limits.max_age);
        let commands = self.commands()?;
        let out: Vec<String> = self
            .publish
            .evalsha_with_reload(
                &commands,
                vec![
                    scope,
                    history,
                    self.keys.bus_seq.clone(),
                    self.keys.bus_log.clone(),
                    floor,
                ],
                vec![
                    self.keys.bus.clone(),
                    text,
                    PLACEHOLDER.to_string(),
                    limits.max_len.to_string(),
                    limits.max_age.as_millis().to_string(),
                    self.opts.bus_log_len.to_string(),
                    idle_ttl.as_millis().to_string(),
                    seen_epoch.to_string(),
                    seen_seq.to_string(),
                    head_epoch.to_string(),
                    head_seq.to_string(),
                ],
            )
            .await
            .map_err(|e| StoreError::Redis(self.client.note(e)))?;
        // With --store-write-replicas: answered only once replicated.
        self.client.replicated(&commands).await?;
        let number = |i: usize| out.get(i).and_then(|v| v.parse::<u64>().ok());
        let (Some(epoch), Some(seq)) = (number(0), number(1)) else {
            return Err(StoreError::Unavailable(
                "publish script returned no position".into(),
            ));
        };
        if out.get(4).is_some_and(|r| r == "1") {
            self.counters.lost_writes.inc();
            tracing::error!(
                seen = ?(seen_epoch, seen_seq),
                scope_head = ?(head_epoch, head_seq),
                "the store's bus or scope sequence is behind what this node saw: it lost \
                 writes (failover or restart); new epochs opened"
            );
        }
        self.heads.saw(scope_key, (epoch, seq));
        n.epoch = epoch;
        n.seq = seq;
        Ok(n)
    }

    async fn history(&self, target: &Target, after: &Cursor) -> Result<History, StoreError> {
        let limits = self.opts.history;
        let read = read_log(
            &self.client,
            &self.history,
            self.keys.scope(target),
            (after.epoch, after.seq),
            limits.max_len,
            false,
        )
        .await?;
        if read.lost {
            // The cursor is past the scope's head: the store lost what the
            // device had received. Its cursor is of no use any more.
            return Ok(History {
                epoch: read.epoch,
                head: read.head,
                messages: Vec::new(),
                missing: Some(super::Incomplete::EpochChanged),
            });
        }
        let kept = read
            .envelopes
            .iter()
            .filter_map(|t| parse_notify(t.as_bytes()).map(|(_, _, n)| n))
            .collect();
        Ok(History::build(
            read.epoch,
            read.head,
            kept,
            after,
            limits.max_age,
        ))
    }

    async fn claim_once(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.connected_or_fail()?;
        let set: Option<String> = self
            .commands()?
            .set(
                format!("{}{key}", self.keys.mark_prefix),
                1,
                Some(Expiration::PX(ttl.as_millis() as i64)),
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(StoreError::Redis)?;
        Ok(set.is_some())
    }

    async fn connected(&self, device: &DeviceId) -> Result<u64, StoreError> {
        let envelope = BusEnvelope::Connected {
            v: BUS_VERSION,
            origin: self.opts.node_id.clone(),
            device: device.clone(),
            generation: PLACEHOLDER,
        };
        let text = serde_json::to_string(&envelope).map_err(StoreError::Encode)?;
        self.incr_publish(&self.keys.generation, &text, "generation")
            .await
    }

    async fn device_action(
        &self,
        device: &DeviceId,
        action: pace_protocol::DeviceAction,
    ) -> Result<(), StoreError> {
        self.publish_envelope(&BusEnvelope::Device {
            v: BUS_VERSION,
            origin: self.opts.node_id.clone(),
            device: device.clone(),
            action,
        })
        .await
    }

    async fn send_admitted(
        &self,
        room: &RoomId,
        device: &DeviceId,
        frame: &str,
    ) -> Result<(), StoreError> {
        self.publish_envelope(&BusEnvelope::Admitted {
            v: BUS_VERSION,
            origin: self.opts.node_id.clone(),
            room: room.clone(),
            device: device.clone(),
            frame: frame.to_owned(),
        })
        .await
    }

    async fn heartbeat(&self, info: &NodeInfo) -> Result<(), StoreError> {
        self.connected_or_fail()?;
        let json = serde_json::to_string(info).map_err(StoreError::Encode)?;
        let _: i64 = self
            .heartbeat
            .evalsha_with_reload(
                &self.commands()?,
                vec![self.keys.nodes.clone(), self.keys.node_info.clone()],
                vec![
                    info.node_id.clone(),
                    json,
                    self.opts.node_ttl.as_millis().to_string(),
                ],
            )
            .await
            .map_err(StoreError::Redis)?;
        Ok(())
    }

    async fn wiped_since(&self) -> Result<Option<u64>, StoreError> {
        self.connected_or_fail()?;
        let known = self
            .known_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default();
        let out: Vec<String> = self
            .identity
            .evalsha_with_reload(
                &self.commands()?,
                vec![self.keys.store_id.clone(), self.keys.wiped.clone()],
                vec![uuid::Uuid::new_v4().to_string(), known.clone()],
            )
            .await
            .map_err(StoreError::Redis)?;
        let (Some(id), Some(mark)) = (out.first(), out.get(1)) else {
            return Err(StoreError::Unavailable(
                "identity script returned nothing".into(),
            ));
        };
        if !known.is_empty() && *id != known {
            tracing::error!(
                "the store was WIPED under this node (its identity changed): history, rooms, \
                 tenants, admin accounts and device registrations are gone; device registration \
                 of ids without their token is refused until acknowledged \
                 (pace-node admin acknowledge-store-wipe)"
            );
        }
        if *id != known
            && let Some(file) = &self.opts.identity_file
            && let Err(e) = std::fs::write(file, id)
        {
            tracing::warn!(file = %file.display(), error = %e, "could not keep the store identity");
        }
        *self.known_id.lock().unwrap_or_else(|p| p.into_inner()) = Some(id.clone());
        Ok(mark.parse::<u64>().ok())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        self.connected_or_fail()?;
        let flat: Vec<String> = self
            .nodes
            .evalsha_with_reload(
                &self.commands()?,
                vec![self.keys.nodes.clone(), self.keys.node_info.clone()],
                vec![self.opts.node_ttl.as_millis().to_string()],
            )
            .await
            .map_err(StoreError::Redis)?;
        let mut out = Vec::with_capacity(flat.len() / 3);
        for chunk in flat.chunks_exact(3) {
            let Ok(mut info) = serde_json::from_str::<NodeInfo>(&chunk[2]) else {
                continue;
            };
            info.last_heartbeat_ms = chunk[1].parse::<f64>().unwrap_or(0.0) as u64;
            out.push(info);
        }
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::conformance::{self, Recorder};
    use super::super::test_redis::TestRedis;
    use super::*;

    fn store(redis: &TestRedis, prefix: &str, node: &str, local: Arc<Recorder>) -> Arc<RedisStore> {
        store_with(
            redis,
            prefix,
            node,
            local,
            HistoryLimits::default(),
            1000,
            BusCounters::detached(),
        )
    }

    fn store_with(
        redis: &TestRedis,
        prefix: &str,
        node: &str,
        local: Arc<Recorder>,
        history: HistoryLimits,
        bus_log_len: usize,
        counters: BusCounters,
    ) -> Arc<RedisStore> {
        RedisStore::start(
            RedisOptions {
                url: redis.url(),
                prefix: prefix.into(),
                node_id: node.into(),
                bus_capacity: 1024,
                command_timeout: Duration::from_secs(2),
                node_ttl: Duration::from_secs(2),
                history,
                bus_log_len,
                write_replicas: Default::default(),
                identity_file: None,
            },
            local,
            counters,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn conformance_against_a_real_redis() {
        let redis = TestRedis::start();
        let rec = Arc::new(Recorder::default());
        let s = store(&redis, "conf-seq", "n1", rec.clone());
        conformance::sequences_are_per_scope(s.as_ref(), &rec).await;
        conformance::reports_health(s.as_ref()).await;
        conformance::generations_increase(s.as_ref()).await;
        conformance::presence_lists_nodes(s.as_ref()).await;
        conformance::admissions_reach_the_device(s.as_ref(), &rec).await;
        conformance::device_actions_reach_the_node(s.as_ref(), &rec).await;
    }

    #[tokio::test]
    async fn claims_once_against_a_real_redis() {
        let redis = TestRedis::start();
        let s = store(&redis, "marks", "n1", Arc::new(Recorder::default()));
        conformance::claims_once(s.as_ref()).await;
    }

    #[tokio::test]
    async fn history_conformance_against_a_real_redis() {
        let redis = TestRedis::start();
        let s = store(&redis, "hist", "n1", Arc::new(Recorder::default()));
        conformance::history_after_a_cursor(s.as_ref()).await;
        let small = HistoryLimits {
            max_len: 3,
            ..HistoryLimits::default()
        };
        let bounded = store_with(
            &redis,
            "hist-small",
            "n1",
            Arc::new(Recorder::default()),
            small,
            1000,
            BusCounters::detached(),
        );
        conformance::history_is_bounded(bounded.as_ref()).await;
    }

    fn draft(i: usize) -> Draft {
        Draft {
            target: pace_protocol::Target::All,
            event: pace_protocol::EventName::parse("e").unwrap(),
            data: serde_json::json!({ "i": i }),
        }
    }

    /// Kills every pub/sub connection on the server, as a network blip
    /// would; the subscribers reconnect by themselves.
    fn kill_subscribers(redis: &TestRedis) {
        let out = std::process::Command::new("redis-cli")
            .args([
                "-p",
                &redis.port.to_string(),
                "CLIENT",
                "KILL",
                "TYPE",
                "pubsub",
            ])
            .output()
            .expect("redis-cli runs");
        assert!(out.status.success(), "{out:?}");
    }

    #[tokio::test]
    async fn a_node_repairs_what_it_missed_while_resubscribing() {
        let redis = TestRedis::start();
        let (ra, rb) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
        let metrics_b = BusCounters::detached();
        let limits = HistoryLimits::default();
        let a = store(&redis, "repair", "a", ra.clone());
        let b = store_with(
            &redis,
            "repair",
            "b",
            rb.clone(),
            limits,
            1000,
            metrics_b.clone(),
        );
        for s in [&a, &b] {
            tokio::time::timeout(Duration::from_secs(10), s.wait_ready())
                .await
                .expect("ready within 10 s");
        }
        let mut sent = vec![a.publish(draft(0)).await.unwrap()];
        rb.wait_delivered(1).await;
        kill_subscribers(&redis);
        // Published while b's subscriber is away (it reconnects after 100 ms).
        for i in 1..20 {
            sent.push(a.publish(draft(i)).await.unwrap());
        }
        let got = rb.wait_delivered(20).await;
        assert_eq!(got, sent, "every message, once, in order");
        assert!(
            metrics_b.repaired.get() > 0,
            "the messages came from the bus log"
        );
        assert_eq!(*rb.resyncs.lock().unwrap(), 0);
        // Live delivery goes on afterwards, without duplicates.
        let last = a.publish(draft(20)).await.unwrap();
        sent.push(last);
        assert_eq!(rb.wait_delivered(21).await, sent);
    }

    #[tokio::test]
    async fn a_gap_longer_than_the_bus_log_makes_devices_resync() {
        let redis = TestRedis::start();
        let rb = Arc::new(Recorder::default());
        let metrics_b = BusCounters::detached();
        let a = store(&redis, "short-log", "a", Arc::new(Recorder::default()));
        let b = store_with(
            &redis,
            "short-log",
            "b",
            rb.clone(),
            HistoryLimits::default(),
            16,
            metrics_b.clone(),
        );
        for s in [&a, &b] {
            tokio::time::timeout(Duration::from_secs(10), s.wait_ready())
                .await
                .expect("ready within 10 s");
        }
        a.publish(draft(0)).await.unwrap();
        rb.wait_delivered(1).await;
        kill_subscribers(&redis);
        for i in 1..40 {
            a.publish(draft(i)).await.unwrap();
        }
        for _ in 0..300 {
            if *rb.resyncs.lock().unwrap() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(*rb.resyncs.lock().unwrap(), 1, "devices told to resume");
        assert_eq!(metrics_b.gaps.with_label_values(&["unrepaired"]).get(), 1);
    }

    /// Rewrites the bus and the `all` scope as a replica that missed the
    /// newest `lost` writes would hold them after a failover.
    fn rewind(redis: &TestRedis, prefix: &str, head: u64, lost: u64) {
        let keys = Keys::new(prefix);
        let [scope, history, _] = keys.scope(&Target::All);
        let cli = |args: &[&str]| {
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &redis.port.to_string()])
                .args(args)
                .output()
                .expect("redis-cli runs");
            assert!(out.status.success(), "{out:?}");
        };
        let gone: Vec<String> = (head - lost + 1..=head).map(|s| format!("{s}-0")).collect();
        let gone: Vec<&str> = gone.iter().map(String::as_str).collect();
        let back = (head - lost).to_string();
        for (hash, stream) in [(&keys.bus_seq, &keys.bus_log), (&scope, &history)] {
            cli(&["HSET", hash, "seq", &back]);
            let mut xdel = vec!["XDEL", stream.as_str()];
            xdel.extend(&gone);
            cli(&xdel);
        }
    }

    /// Only a scope's sequence rewound (the bus untouched): the node that
    /// saw the scope's head opens a new epoch for it, and the next
    /// notification is delivered, not discarded.
    #[tokio::test]
    async fn a_rewound_scope_sequence_opens_a_new_epoch_for_that_scope() {
        let redis = TestRedis::start();
        let rec = Arc::new(Recorder::default());
        let counters = BusCounters::detached();
        let a = store_with(
            &redis,
            "rewind-scope",
            "a",
            rec.clone(),
            HistoryLimits::default(),
            1000,
            counters.clone(),
        );
        tokio::time::timeout(Duration::from_secs(10), a.wait_ready())
            .await
            .expect("ready within 10 s");
        let mut first = Vec::new();
        for i in 0..10 {
            first.push(a.publish(draft(i)).await.unwrap());
        }
        assert_eq!(rec.wait_delivered(10).await, first);
        let old_epoch = first[0].epoch;
        let [scope, _, _] = Keys::new("rewind-scope").scope(&Target::All);
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "HSET", &scope, "seq", "5"])
            .output()
            .expect("redis-cli runs");
        assert!(out.status.success(), "{out:?}");

        let next = a.publish(draft(10)).await.unwrap();
        assert_ne!(next.epoch, old_epoch, "a new epoch for the scope");
        assert_eq!(next.seq, 1);
        assert!(counters.lost_writes.get() >= 1);
        let got = rec.wait_delivered(11).await;
        assert_eq!(got.last(), Some(&next), "delivered, not discarded as seen");
    }

    #[tokio::test]
    async fn a_rewound_bus_sequence_opens_a_new_epoch_and_nothing_is_dropped_silently() {
        let redis = TestRedis::start();
        let (ra, rb) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
        let counters_b = BusCounters::detached();
        let a = store(&redis, "rewind", "a", ra.clone());
        let b = store_with(
            &redis,
            "rewind",
            "b",
            rb.clone(),
            HistoryLimits::default(),
            1000,
            counters_b.clone(),
        );
        for s in [&a, &b] {
            tokio::time::timeout(Duration::from_secs(10), s.wait_ready())
                .await
                .expect("ready within 10 s");
        }
        let mut first = Vec::new();
        for i in 0..10 {
            first.push(a.publish(draft(i)).await.unwrap());
        }
        assert_eq!(rb.wait_delivered(10).await, first);
        let old_epoch = first[0].epoch;
        rewind(&redis, "rewind", 10, 5);

        // b has seen bus position 10: its next publish finds the bus at 5.
        let next = b.publish(draft(10)).await.unwrap();
        assert_ne!(next.epoch, old_epoch, "a new epoch");
        assert_eq!(next.seq, 1);
        assert!(counters_b.lost_writes.get() >= 1);
        for rec in [&ra, &rb] {
            let got = rec.wait_delivered(11).await;
            assert_eq!(got.last(), Some(&next), "delivered, not discarded as seen");
            assert!(*rec.resyncs.lock().unwrap() >= 1, "devices told to resume");
        }
        // A device whose cursor is past the rewound head learns its epoch
        // changed and gets what the new epoch holds.
        let h = a
            .history(
                &Target::All,
                &Cursor {
                    scope: pace_protocol::Scope::All,
                    target: None,
                    epoch: old_epoch,
                    seq: 10,
                },
            )
            .await
            .unwrap();
        assert_eq!(h.missing, Some(super::super::Incomplete::EpochChanged));
        assert_eq!(h.messages, vec![next.clone()]);

        // A node started after the rewind does not know the old head; the
        // nodes that do notice the duplicates and open a new epoch.
        rewind(&redis, "rewind", 1, 1);
        let rc = Arc::new(Recorder::default());
        let c = store(&redis, "rewind", "c", rc.clone());
        tokio::time::timeout(Duration::from_secs(10), c.wait_ready())
            .await
            .expect("ready within 10 s");
        let resyncs_a = *ra.resyncs.lock().unwrap();
        let mut later = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while *ra.resyncs.lock().unwrap() == resyncs_a {
            assert!(tokio::time::Instant::now() < deadline, "a never noticed");
            later.push(c.publish(draft(11)).await.unwrap());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let last = c.publish(draft(12)).await.unwrap();
        assert_ne!(last.epoch, next.epoch, "a new epoch after the duplicates");
        for rec in [&ra, &rb, &rc] {
            for _ in 0..200 {
                if rec.delivered.lock().unwrap().last() == Some(&last) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(rec.delivered.lock().unwrap().last(), Some(&last));
        }
    }

    #[tokio::test]
    async fn every_node_receives_every_notification_and_announcements_from_others() {
        let redis = TestRedis::start();
        let (ra, rb) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
        let a = store(&redis, "two-nodes", "a", ra.clone());
        let b = store(&redis, "two-nodes", "b", rb.clone());
        tokio::time::timeout(Duration::from_secs(10), a.wait_ready())
            .await
            .expect("ready within 10 s");
        tokio::time::timeout(Duration::from_secs(10), b.wait_ready())
            .await
            .expect("ready within 10 s");
        let target = pace_protocol::Target::All;
        let event = pace_protocol::EventName::parse("e").unwrap();
        let n = a
            .publish(Draft {
                target,
                event,
                data: serde_json::json!({"big": 1e300, "list": [], "obj": {}}),
            })
            .await
            .unwrap();
        let got_b = rb.wait_delivered(1).await;
        assert_eq!(got_b, vec![n.clone()], "data passes through byte-exact");
        assert_eq!(ra.wait_delivered(1).await, vec![n]);

        let device = DeviceId::parse("roamer").unwrap();
        let g = b.connected(&device).await.unwrap();
        for _ in 0..200 {
            if !ra.evicted.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(ra.evicted.lock().unwrap().clone(), vec![(device, g)]);
        assert!(
            rb.evicted.lock().unwrap().is_empty(),
            "a node ignores its own announcements"
        );
    }

    #[tokio::test]
    async fn dead_nodes_age_out() {
        let redis = TestRedis::start();
        let s = store(&redis, "ageing", "n", Arc::new(Recorder::default()));
        tokio::time::timeout(Duration::from_secs(10), s.wait_ready())
            .await
            .expect("ready within 10 s");
        let info = |id: &str| NodeInfo {
            node_id: id.into(),
            address: "127.0.0.1:1".into(),
            connections: 0,
            ready: true,
            last_heartbeat_ms: 0,
        };
        s.heartbeat(&info("gone")).await.unwrap();
        assert_eq!(s.nodes().await.unwrap().len(), 1);
        tokio::time::sleep(Duration::from_millis(2300)).await; // node_ttl is 2 s
        s.heartbeat(&info("alive")).await.unwrap();
        let ids: Vec<_> = s
            .nodes()
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.node_id)
            .collect();
        assert_eq!(ids, ["alive"]);
    }

    #[tokio::test]
    async fn operations_fail_fast_while_redis_is_down_and_recover() {
        let mut redis = TestRedis::start();
        let rec = Arc::new(Recorder::default());
        let s = store(&redis, "outage", "n", rec.clone());
        tokio::time::timeout(Duration::from_secs(10), s.wait_ready())
            .await
            .expect("ready within 10 s");
        redis.stop();
        for _ in 0..200 {
            if !s.health().await.up {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!s.health().await.up);
        let started = std::time::Instant::now();
        let draft = || Draft {
            target: pace_protocol::Target::All,
            event: pace_protocol::EventName::parse("e").unwrap(),
            data: serde_json::Value::Null,
        };
        assert!(matches!(
            s.publish(draft()).await,
            Err(StoreError::Unavailable(_) | StoreError::Redis(_))
        ));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "fails within the command timeout"
        );
        redis.restart();
        let mut ok = None;
        for _ in 0..100 {
            if s.health().await.up
                && let Ok(n) = s.publish(draft()).await
            {
                ok = Some(n);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let n = ok.expect("store recovers by itself");
        // The subscriber re-subscribed: the notification came back to us.
        assert!(rec.wait_delivered(1).await.iter().any(|d| d.id == n.id));
    }
}
