//! How a node's Redis clients are built: one place for the connection
//! behaviour every store client shares (the command client the store,
//! queue, accounts and device registry use, and the bus subscriber).
//!
//! - **Never give up connecting.** fred's `fail_fast` (on by default) makes
//!   a client whose *first* connection fails stop for good; it is turned
//!   off, so a node started while Redis is down (or while the first host of
//!   a cluster URL is dead) keeps trying with the reconnect policy.
//! - **Reconnect quickly.** Exponential backoff from 100 ms, capped at
//!   [`RECONNECT_MAX`] (plus fred's 100 ms jitter), forever: a node is back
//!   within a second of Redis answering again, at the cost of a cheap
//!   connection attempt per node every half second while Redis is down.
//! - **Redis Cluster from the live topology.** With a `redis-cluster://`
//!   URL the client discovers the cluster from every listed seed *and* the
//!   most recently seen topology (`ClusterDiscoveryPolicy::UseCache`), so
//!   after a failover it finds the promoted replica even when the seeds it
//!   was configured with are dead.
//! - **A shard that is down fails only its own operations.** fred routes
//!   every command of a clustered client through one task, and that task
//!   rebuilds the whole cluster view (connecting to every primary) until a
//!   dead primary is replaced: during a failover, operations on the healthy
//!   shards wait too. So for Redis Cluster a node's command client is a
//!   [`RedisClient`] holding one single-server fred client per primary, and
//!   Pace routes each command by its key's hash slot (CRC16 of the hash
//!   tag, `ClusterRouting`) to the slot's owner. The routing table comes
//!   from `CLUSTER SLOTS`, asked of every connected primary at once: the
//!   table most of them answer wins (ties: the one naming no unreachable
//!   primary), so a primary that lags behind a promotion does not flip the
//!   table back to the dead master. It is read every [`REFRESH_STEADY`];
//!   while some slot has no connected owner, after [`REFRESH_FAST`] and
//!   then backing off to [`REFRESH_UNSERVED_MAX`]; at once after a
//!   connection error or a `MOVED`/`ASK`/`READONLY`/`CLUSTERDOWN` answer
//!   ([`RedisClient::note`]). When no primary answers, the seeds of the URL
//!   are asked. A command for a slot whose owner is not connected fails at
//!   once (the store answers 503), while the other shards answer as usual.
//!   A primary that owns no slot any more loses its client. Every script
//!   of the stores touches the keys of one hash tag, so it runs whole on
//!   the owner of that slot.
//!
//!   What this routing does not do: retry a command answered `MOVED`/`ASK`
//!   (a slot migrating between live primaries, resharding) on the new
//!   owner; such a command fails with 503 and the table is read again.
//!   Reshard outside peak hours.
//!
//! With a single server (`redis://`) or Sentinel the [`RedisClient`] is the
//! one fred client, exactly as before.

use crate::config::WriteReplicas;
use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use fred::error::ErrorKind;
use fred::prelude::*;
use fred::types::CustomCommand;
use fred::types::cluster::ClusterRouting;
use fred::types::config::{ClusterDiscoveryPolicy, ServerConfig};
use tokio::sync::Notify;

/// Longest wait between two connection attempts (before jitter).
pub const RECONNECT_MAX: Duration = Duration::from_millis(500);

/// First wait after a connection is lost.
const RECONNECT_MIN: Duration = Duration::from_millis(100);

/// Longest a TCP connection (and its handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A builder for a node's client to `url`: reconnects forever (also when
/// the first connection fails), commands time out after `command_timeout`
/// and are tried once, pub/sub messages are buffered up to `bus_capacity`.
pub fn node_builder(
    url: &str,
    command_timeout: Duration,
    bus_capacity: usize,
) -> Result<Builder, fred::error::Error> {
    let mut config = Config::from_url(url)?;
    if config.server.is_clustered() {
        config
            .server
            .set_cluster_discovery_policy(ClusterDiscoveryPolicy::UseCache)?;
    }
    Ok(builder_for(config, command_timeout, bus_capacity))
}

/// The builder of [`node_builder`] for a parsed `config`.
fn builder_for(mut config: Config, command_timeout: Duration, bus_capacity: usize) -> Builder {
    // Keep trying when the first connection fails (see the module docs).
    config.fail_fast = false;
    let mut builder = Builder::from_config(config);
    builder
        // 0 attempts = no limit.
        .set_policy(ReconnectPolicy::new_exponential(
            0,
            RECONNECT_MIN.as_millis() as u32,
            RECONNECT_MAX.as_millis() as u32,
            2,
        ))
        .with_connection_config(|c| {
            c.connection_timeout = CONNECT_TIMEOUT;
            c.internal_command_timeout = CONNECT_TIMEOUT;
            c.max_command_attempts = 1;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = command_timeout;
            p.broadcast_channel_capacity = bus_capacity;
        });
    builder
}

/// How often the cluster's routing table is read while every primary is
/// connected (it changes on failovers, which also drop a connection and so
/// trigger a read at once, and on resharding).
pub const REFRESH_STEADY: Duration = Duration::from_secs(1);

/// How often the routing table is read while a primary is unreachable:
/// how soon after a replica's promotion its slots answer again.
pub const REFRESH_FAST: Duration = Duration::from_millis(100);

/// Longest wait between two table reads while a slot has no connected
/// owner (the reads back off from [`REFRESH_FAST`] to this).
pub const REFRESH_UNSERVED_MAX: Duration = Duration::from_millis(500);

/// How long a primary dropped while unreachable counts as dead when
/// nodes disagree on the slot table (see [`Shards::read_table`]).
const GONE_MEMORY: Duration = Duration::from_secs(30);

/// Longest a `CLUSTER SLOTS` read (or a seed's connection) may take.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);

/// A node's command client (see the module docs): the one fred client of
/// a single server, or one per Redis Cluster primary with commands routed
/// by slot. Cheap to clone; stores call [`RedisClient::on`] with the key a
/// command (or script) touches.
#[derive(Clone)]
pub struct RedisClient(Arc<Inner>, WriteReplicas);

enum Inner {
    One(Client),
    Shards(Box<Shards>),
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.0 {
            Inner::One(_) => f.write_str("RedisClient::One"),
            Inner::Shards(s) => f
                .debug_struct("RedisClient::Shards")
                .field("seeds", &s.seeds)
                .finish_non_exhaustive(),
        }
    }
}

impl From<Client> for RedisClient {
    /// Wraps one fred client (tests and the admin command line): every
    /// command goes to it, as fred routes it.
    fn from(client: Client) -> RedisClient {
        RedisClient(Arc::new(Inner::One(client)), WriteReplicas::default())
    }
}

/// Per-primary clients of a Redis Cluster and the slot table routing to
/// them.
struct Shards {
    /// The cluster URL's config; a primary's client is this config with
    /// the primary as its single server.
    config: Config,
    command_timeout: Duration,
    /// The URL's hosts, asked for the table when no primary answers.
    seeds: Vec<Server>,
    view: RwLock<Arc<View>>,
    /// Wakes the refresh task (a connection error, an unroutable key).
    kick: Arc<Notify>,
    /// Primaries whose client was dropped while it could not connect (a
    /// dead master replaced by its replica), and when: for
    /// [`GONE_MEMORY`], a node's table still naming one of them loses
    /// against an equally supported table that does not.
    gone: std::sync::Mutex<HashMap<Server, std::time::Instant>>,
}

/// One routing table and the clients of its primaries.
#[derive(Default)]
struct View {
    routing: Option<ClusterRouting>,
    clients: HashMap<Server, Client>,
}

impl RedisClient {
    /// The command client for `url`, configured like [`node_builder`]
    /// (`bus_capacity` is unused: this client does not subscribe). Starts
    /// connecting in the background.
    pub fn start(url: &str, command_timeout: Duration) -> Result<RedisClient, fred::error::Error> {
        let builder = node_builder(url, command_timeout, 1)?;
        let config = builder
            .get_config()
            .cloned()
            .ok_or_else(|| fred::error::Error::new(ErrorKind::Config, "no redis config"))?;
        if !config.server.is_clustered() {
            let client = builder.build()?;
            // The handle is the connection task; dropping it detaches it.
            drop(client.connect());
            tokio::spawn(log_events(
                "commands",
                client.error_rx(),
                client.reconnect_rx(),
            ));
            return Ok(RedisClient::from(client));
        }
        let shards = Shards {
            seeds: config.server.hosts(),
            config,
            command_timeout,
            view: RwLock::new(Arc::new(View::default())),
            kick: Arc::new(Notify::new()),
            gone: std::sync::Mutex::new(HashMap::new()),
        };
        let inner = Arc::new(Inner::Shards(Box::new(shards)));
        tokio::spawn(refresh_loop(Arc::downgrade(&inner)));
        Ok(RedisClient(inner, WriteReplicas::default()))
    }

    /// This client, waiting for `write` replicas after the writes that
    /// call [`RedisClient::replicated`].
    pub fn with_write_replicas(self, write: WriteReplicas) -> RedisClient {
        RedisClient(self.0, write)
    }

    /// After a write that must survive a failover, sent on `client`: with
    /// `--store-write-replicas N`, waits (Redis `WAIT`) until N replicas
    /// acknowledged every write of that connection so far, and fails when
    /// fewer did within the timeout. Does nothing when N is 0.
    pub async fn replicated(&self, client: &Client) -> Result<(), fred::error::Error> {
        let WriteReplicas { replicas, timeout } = self.1;
        if replicas == 0 {
            return Ok(());
        }
        let millis = i64::try_from(timeout.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let acked: i64 = client.wait(i64::from(replicas), millis).await?;
        if acked < i64::from(replicas) {
            return Err(fred::error::Error::new(
                ErrorKind::Timeout,
                format!(
                    "{acked} of {replicas} redis replicas acknowledged the write within {timeout:?} \
                     (--store-write-replicas)"
                ),
            ));
        }
        Ok(())
    }

    /// The client to send a command on `key` to. With Redis Cluster, the
    /// client of the primary owning `key`'s slot, or an error at once when
    /// that primary is not connected (other keys are not affected).
    pub fn on(&self, key: &str) -> Result<Client, fred::error::Error> {
        match &*self.0 {
            Inner::One(c) => Ok(c.clone()),
            Inner::Shards(s) => s.owner(key),
        }
    }

    /// Looks at a command's error: a `MOVED`, `ASK`, `READONLY` or
    /// `CLUSTERDOWN` answer means this client's slot table is behind the
    /// cluster's (a slot moved, or the node it names was demoted), so the
    /// table is read again at once rather than at the next periodic read.
    /// The command itself is not retried: it fails (503) and its caller's
    /// next attempt goes to the new owner. Returns the error unchanged.
    pub fn note(&self, e: fred::error::Error) -> fred::error::Error {
        if let Inner::Shards(s) = &*self.0
            && is_redirect(&e)
        {
            tracing::debug!(error = %e, "redis cluster redirect; reading the slot table again");
            s.kick.notify_one();
        }
        e
    }

    /// Whether some store operation can be sent: the single client is
    /// connected, or (Redis Cluster) some primary is (commands on a
    /// disconnected primary's slots then fail in [`RedisClient::on`]).
    pub fn is_connected(&self) -> bool {
        match &*self.0 {
            Inner::One(c) => c.is_connected(),
            Inner::Shards(s) => s.view().clients.values().any(|c| c.is_connected()),
        }
    }

    /// Whether a command on `key` can be sent now.
    pub fn is_connected_for(&self, key: &str) -> bool {
        match &*self.0 {
            Inner::One(c) => c.is_connected(),
            Inner::Shards(s) => s.owner(key).is_ok(),
        }
    }

    /// Waits until a command on `key` can be sent.
    pub async fn wait_for(&self, key: &str) {
        match &*self.0 {
            Inner::One(c) => {
                let _ = c.wait_for_connect().await;
            }
            Inner::Shards(s) => {
                while s.owner(key).is_err() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Closes every connection.
    pub async fn quit(&self) {
        let clients = match &*self.0 {
            Inner::One(c) => vec![c.clone()],
            Inner::Shards(s) => s.view().clients.values().cloned().collect(),
        };
        for c in clients {
            let _ = c.quit().await;
        }
    }

    /// Whether this client routes over a Redis Cluster's primaries.
    pub fn is_cluster(&self) -> bool {
        matches!(&*self.0, Inner::Shards(_))
    }

    /// Redis Cluster: the primary owning `key`'s slot, when it is
    /// connected.
    pub fn owner_of(&self, key: &str) -> Option<Server> {
        let Inner::Shards(s) = &*self.0 else {
            return None;
        };
        let slot = ClusterRouting::hash_key(key.as_bytes());
        let view = s.view();
        let server = view.routing.as_ref()?.get_server(slot)?;
        view.clients
            .get(server)
            .is_some_and(|c| c.is_connected())
            .then(|| server.clone())
    }

    /// Redis Cluster: a subscriber client of `server` alone, configured
    /// like the node's clients (a message published on any node of a
    /// cluster reaches the subscribers of every node).
    pub fn subscriber_to(
        &self,
        server: &Server,
        bus_capacity: usize,
    ) -> Result<fred::clients::SubscriberClient, fred::error::Error> {
        let Inner::Shards(s) = &*self.0 else {
            return Err(fred::error::Error::new(
                ErrorKind::Config,
                "not a redis cluster client",
            ));
        };
        let mut config = s.config.clone();
        config.server = ServerConfig::Centralized {
            server: server.clone(),
        };
        builder_for(config, s.command_timeout, bus_capacity).build_subscriber_client()
    }

    /// The current primaries (Redis Cluster) and whether each is
    /// connected; empty for a single server.
    pub fn primaries(&self) -> Vec<(String, bool)> {
        match &*self.0 {
            Inner::One(_) => Vec::new(),
            Inner::Shards(s) => {
                let mut out: Vec<(String, bool)> = s
                    .view()
                    .clients
                    .iter()
                    .map(|(server, c)| (server.to_string(), c.is_connected()))
                    .collect();
                out.sort();
                out
            }
        }
    }
}

impl Shards {
    fn view(&self) -> Arc<View> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn owner(&self, key: &str) -> Result<Client, fred::error::Error> {
        let slot = ClusterRouting::hash_key(key.as_bytes());
        let view = self.view();
        let Some(server) = view.routing.as_ref().and_then(|r| r.get_server(slot)) else {
            self.kick.notify_one();
            return Err(fred::error::Error::new(
                ErrorKind::IO,
                format!("no redis cluster primary known for slot {slot} yet"),
            ));
        };
        match view.clients.get(server) {
            Some(c) if c.is_connected() => Ok(c.clone()),
            _ => {
                self.kick.notify_one();
                Err(fred::error::Error::new(
                    ErrorKind::IO,
                    format!("redis cluster primary {server} (slot {slot}) is not connected"),
                ))
            }
        }
    }

    /// Reads the slot table and brings the clients in line with it.
    /// Returns whether every slot has an owner and every owner is
    /// connected (otherwise the caller reads again soon).
    async fn refresh(&self) -> bool {
        let view = self.view();
        let Some((routing, from)) = self.read_table(&view).await else {
            tracing::debug!("no redis cluster node answered CLUSTER SLOTS");
            return false;
        };
        let primaries = routing.unique_primary_nodes();
        let mut clients = HashMap::with_capacity(primaries.len());
        for server in primaries {
            let client = match view.clients.get(&server) {
                Some(c) => c.clone(),
                None => match self.connect(&server) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, %server, "redis cluster primary client");
                        continue;
                    }
                },
            };
            clients.insert(server, client);
        }
        // A node that owns no slot any more (a failed master, a demoted
        // one) keeps no client: its connection would only retry or answer
        // MOVED.
        for (server, old) in &view.clients {
            if !clients.contains_key(server) {
                tracing::info!(%server, "no longer a redis cluster primary; disconnecting");
                if !old.is_connected() {
                    let mut gone = self.gone.lock().unwrap_or_else(|p| p.into_inner());
                    gone.retain(|_, at| at.elapsed() < GONE_MEMORY);
                    gone.insert(server.clone(), std::time::Instant::now());
                }
                let old = old.clone();
                tokio::spawn(async move {
                    let _ = old.quit().await;
                });
            }
        }
        let covered = covered_slots(&routing);
        let healthy = covered == SLOTS && clients.values().all(|c| c.is_connected());
        tracing::debug!(
            from = %from,
            covered,
            primaries = ?clients.iter().map(|(s, c)| (s.to_string(), c.is_connected())).collect::<Vec<_>>(),
            healthy,
            "redis cluster slot table read"
        );
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(View {
            routing: Some(routing),
            clients,
        });
        healthy
    }

    /// The slot table, as most of the answering nodes see it.
    ///
    /// Every connected primary is asked `CLUSTER SLOTS` at once (the
    /// seeds of the URL when none answers). Right after a failover the
    /// nodes' views differ for a moment: one that has not yet learnt of
    /// the promotion still names the dead master. Taking one node's word
    /// would make the table flip between the old and the new owner (and
    /// the clients be torn down and rebuilt) as different nodes are asked;
    /// so the table is the one most answers agree on, and among equally
    /// many, the one naming the fewest unreachable primaries (the dead
    /// master is; a promoted replica is not) and then covering the most
    /// slots. Returns the table and a node that answered it.
    async fn read_table(&self, view: &View) -> Option<(ClusterRouting, Server)> {
        let connected: Vec<(Server, Client)> = view
            .clients
            .iter()
            .filter(|(_, c)| c.is_connected())
            .map(|(s, c)| (s.clone(), c.clone()))
            .collect();
        let asked =
            futures_util::future::join_all(connected.into_iter().map(|(server, c)| async move {
                let answer = tokio::time::timeout(
                    ASK_TIMEOUT,
                    c.custom::<Value, _>(cluster_slots(), vec!["SLOTS"]),
                )
                .await;
                match answer {
                    Ok(Ok(v)) => parse_table(v, &server).map(|r| (r, server)),
                    _ => None,
                }
            }))
            .await;
        let mut answers: Vec<(ClusterRouting, Server)> = asked.into_iter().flatten().collect();
        if answers.is_empty() {
            for seed in &self.seeds {
                if let Some(v) = self.ask_seed(seed).await
                    && let Some(r) = parse_table(v, seed)
                {
                    answers.push((r, seed.clone()));
                    break;
                }
            }
        }
        // Unreachable: a primary whose client cannot connect now, or one
        // recently dropped for that. A primary this client has not met yet
        // (a just-promoted replica) is given the benefit of the doubt.
        let gone = self.gone.lock().unwrap_or_else(|p| p.into_inner()).clone();
        most_agreed(answers, |s| {
            view.clients.get(s).is_none_or(|c| c.is_connected())
                && gone.get(s).is_none_or(|at| at.elapsed() >= GONE_MEMORY)
        })
    }

    /// `CLUSTER SLOTS` from a seed of the URL, on a connection opened for
    /// that one question.
    async fn ask_seed(&self, seed: &Server) -> Option<Value> {
        let mut config = self.config.clone();
        config.server = ServerConfig::Centralized {
            server: seed.clone(),
        };
        config.fail_fast = true;
        let c = Builder::from_config(config)
            .with_connection_config(|c| c.connection_timeout = ASK_TIMEOUT)
            .build()
            .ok()?;
        let task = c.connect();
        let asked = tokio::time::timeout(ASK_TIMEOUT * 2, async {
            c.wait_for_connect().await?;
            c.custom::<Value, _>(cluster_slots(), vec!["SLOTS"]).await
        })
        .await;
        // (fred warns when asked to quit a client that never connected.)
        if c.is_connected() {
            let _ = c.quit().await;
        }
        task.abort();
        asked.ok()?.ok()
    }

    /// A client of one primary, connecting in the background; its
    /// connection errors wake the refresh task.
    fn connect(&self, server: &Server) -> Result<Client, fred::error::Error> {
        let mut config = self.config.clone();
        config.server = ServerConfig::Centralized {
            server: server.clone(),
        };
        let client = builder_for(config, self.command_timeout, 1).build()?;
        drop(client.connect());
        let (mut errors, kick, server) = (client.error_rx(), self.kick.clone(), server.clone());
        tokio::spawn(async move {
            let mut failed = 0u64;
            loop {
                match errors.recv().await {
                    Ok((e, _)) => {
                        failed += 1;
                        if failed == 1 {
                            tracing::warn!(%server, error = %e, "redis cluster primary connection error; retrying with backoff");
                        }
                        kick.notify_one();
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => kick.notify_one(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(client)
    }
}

/// Keeps a cluster client's table and primaries current until the client
/// is dropped.
async fn refresh_loop(inner: Weak<Inner>) {
    let mut unserved: u32 = 0;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let Inner::Shards(shards) = &*strong else {
            return;
        };
        let healthy = shards.refresh().await;
        let kick = shards.kick.clone();
        drop(strong);
        // While a slot is unserved: 100 ms, then doubling up to
        // REFRESH_UNSERVED_MAX (a promotion takes a cluster node timeout
        // or more; a shard with no replica left stays unserved for long).
        unserved = if healthy {
            0
        } else {
            unserved.saturating_add(1)
        };
        let wait = if healthy {
            REFRESH_STEADY
        } else {
            REFRESH_FAST
                .saturating_mul(1 << unserved.saturating_sub(1).min(8))
                .min(REFRESH_UNSERVED_MAX)
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = kick.notified() => {
                // A burst of errors asks once per fast period at most.
                tokio::time::sleep(REFRESH_FAST).await;
            }
        }
    }
}

/// Whether `e` is a Redis Cluster answer saying the command went to a
/// node that does not serve its slot (any more).
fn is_redirect(e: &fred::error::Error) -> bool {
    let details = e.details();
    e.is_moved()
        || e.is_ask()
        || ["MOVED", "ASK", "READONLY", "CLUSTERDOWN", "TRYAGAIN"]
            .iter()
            .any(|p| details.starts_with(p))
}

/// The number of hash slots of a Redis Cluster.
const SLOTS: usize = 16384;

/// `CLUSTER …` (the subcommand is the argument).
fn cluster_slots() -> CustomCommand {
    CustomCommand::new_static("CLUSTER", None, false)
}

/// A `CLUSTER SLOTS` answer of `from` as a routing table; `None` when it
/// is unreadable or empty (a node that has not joined the cluster yet).
fn parse_table(answer: Value, from: &Server) -> Option<ClusterRouting> {
    match ClusterRouting::from_cluster_slots(answer, from.host.clone()) {
        Ok(r) if r.len() > 0 => Some(r),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, %from, "unreadable CLUSTER SLOTS answer");
            None
        }
    }
}

/// Of several nodes' tables, the one most of them answered; among equally
/// many, the one naming the fewest primaries that are not `reachable`,
/// then the one covering the most slots (see [`Shards::read_table`]).
fn most_agreed(
    answers: Vec<(ClusterRouting, Server)>,
    reachable: impl Fn(&Server) -> bool,
) -> Option<(ClusterRouting, Server)> {
    let unreachable = |r: &ClusterRouting| {
        r.unique_primary_nodes()
            .iter()
            .filter(|s| !reachable(s))
            .count()
    };
    // (shape, votes, the table, a node that answered it)
    let mut votes: Vec<(Shape, usize, ClusterRouting, Server)> = Vec::new();
    for (routing, from) in answers {
        let shape = table_shape(&routing);
        match votes.iter_mut().find(|v| v.0 == shape) {
            Some(v) => v.1 += 1,
            None => votes.push((shape, 1, routing, from)),
        }
    }
    if votes.len() > 1 {
        tracing::debug!(
            views = votes.len(),
            "redis cluster nodes disagree on the slot table; taking the most agreed one"
        );
    }
    votes
        .into_iter()
        .max_by(|a, b| {
            a.1.cmp(&b.1)
                .then_with(|| unreachable(&b.2).cmp(&unreachable(&a.2)))
                .then_with(|| covered_slots(&a.2).cmp(&covered_slots(&b.2)))
        })
        .map(|(_, _, routing, from)| (routing, from))
}

/// What two nodes' tables are compared by: each slot range's owner.
type Shape = Vec<(u16, u16, Server)>;

/// A table's [`Shape`].
fn table_shape(r: &ClusterRouting) -> Shape {
    r.slots()
        .iter()
        .map(|s| (s.start, s.end, s.primary.clone()))
        .collect()
}

/// How many slots a table gives an owner.
fn covered_slots(r: &ClusterRouting) -> usize {
    r.slots()
        .iter()
        .map(|s| usize::from(s.end.saturating_sub(s.start)) + 1)
        .sum()
}

/// Logs a client's connection errors and reconnections: the first failed
/// attempt of an outage as a warning, the following ones (one every half
/// second while Redis is down) at debug level with their count, and the
/// reconnection with how many attempts it took.
pub(crate) async fn log_events(
    name: &'static str,
    mut errors: tokio::sync::broadcast::Receiver<(
        fred::error::Error,
        Option<fred::types::config::Server>,
    )>,
    mut reconnects: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
) {
    let mut failed: u64 = 0;
    loop {
        tokio::select! {
            e = errors.recv() => match e {
                Ok((e, _)) => {
                    failed += 1;
                    if failed == 1 {
                        tracing::warn!(client = name, error = %e, "redis connection error; retrying with backoff");
                    } else {
                        tracing::debug!(client = name, error = %e, attempts = failed, "redis still unreachable");
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            r = reconnects.recv() => match r {
                Ok(server) => {
                    tracing::info!(client = name, %server, failed_attempts = failed, "redis connected");
                    failed = 0;
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        let clients: Vec<Client> = self.view().clients.values().cloned().collect();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for c in clients {
                    let _ = c.quit().await;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_url_discovers_from_the_cached_topology() {
        let b = node_builder(
            "redis-cluster://127.0.0.1:7001?node=127.0.0.1:7002",
            Duration::from_secs(2),
            64,
        )
        .unwrap();
        let config = b.get_config().unwrap();
        assert!(!config.fail_fast);
        match &config.server {
            fred::types::config::ServerConfig::Clustered { hosts, policy } => {
                assert_eq!(hosts.len(), 2, "every seed is kept");
                assert_eq!(*policy, ClusterDiscoveryPolicy::UseCache);
            }
            other => panic!("not clustered: {other:?}"),
        }
    }

    /// A `CLUSTER SLOTS` answer giving each `(start, end, port)` range to
    /// 127.0.0.1:port.
    fn table(ranges: &[(i64, i64, i64)]) -> (ClusterRouting, Server) {
        let answer = Value::Array(
            ranges
                .iter()
                .map(|&(start, end, port)| {
                    Value::Array(vec![
                        Value::Integer(start),
                        Value::Integer(end),
                        Value::Array(vec![
                            Value::from("127.0.0.1"),
                            Value::Integer(port),
                            Value::from(format!("id{port}")),
                        ]),
                    ])
                })
                .collect(),
        );
        let from = Server::new("127.0.0.1", 7000);
        (parse_table(answer, &from).unwrap(), from)
    }

    fn owner(r: &ClusterRouting, slot: u16) -> u16 {
        r.get_server(slot).unwrap().port
    }

    #[test]
    fn the_table_most_nodes_answer_wins() {
        let old = || table(&[(0, 5460, 7001), (5461, 10922, 7002), (10923, 16383, 7003)]);
        let new = || table(&[(0, 5460, 7004), (5461, 10922, 7002), (10923, 16383, 7003)]);
        let (r, _) = most_agreed(vec![old(), new(), new()], |_| true).unwrap();
        assert_eq!(owner(&r, 0), 7004);
        let (r, _) = most_agreed(vec![old(), old(), new()], |_| true).unwrap();
        assert_eq!(owner(&r, 0), 7001, "a majority is followed even when stale");
        assert_eq!(covered_slots(&r), SLOTS);
    }

    #[test]
    fn between_equally_many_the_table_naming_no_dead_primary_wins() {
        let old = || table(&[(0, 5460, 7001), (5461, 10922, 7002), (10923, 16383, 7003)]);
        let new = || table(&[(0, 5460, 7004), (5461, 10922, 7002), (10923, 16383, 7003)]);
        let alive = |s: &Server| s.port != 7001;
        // Whichever node answered first, the dead master's view loses.
        for answers in [vec![old(), new()], vec![new(), old()]] {
            let (r, _) = most_agreed(answers, alive).unwrap();
            assert_eq!(owner(&r, 100), 7004);
        }
        // A partial table loses against a full one.
        let partial = table(&[(5461, 10922, 7002), (10923, 16383, 7003)]);
        assert_eq!(covered_slots(&partial.0), SLOTS - 5461);
        let (r, _) = most_agreed(vec![partial, new()], |_| true).unwrap();
        assert_eq!(covered_slots(&r), SLOTS);
        assert!(most_agreed(Vec::new(), |_| true).is_none());
    }

    #[test]
    fn redirects_are_told_from_other_errors() {
        let e = |kind, s: &str| fred::error::Error::new(kind, s.to_owned());
        assert!(is_redirect(&e(
            ErrorKind::Cluster,
            "MOVED 3999 127.0.0.1:7002"
        )));
        assert!(is_redirect(&e(
            ErrorKind::Cluster,
            "ASK 3999 127.0.0.1:7002"
        )));
        assert!(is_redirect(&e(
            ErrorKind::Unknown,
            "READONLY You can't write against a read only replica."
        )));
        assert!(!is_redirect(&e(ErrorKind::Timeout, "Request timed out.")));
        assert!(!is_redirect(&e(
            ErrorKind::Unknown,
            "NOSCRIPT No matching script"
        )));
    }

    #[test]
    fn a_plain_url_keeps_trying_at_start() {
        let b = node_builder("redis://127.0.0.1:6379", Duration::from_secs(2), 64).unwrap();
        let config = b.get_config().unwrap();
        assert!(!config.fail_fast);
        assert!(config.server.is_centralized());
    }
}
