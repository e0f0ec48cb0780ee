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
//!   from `CLUSTER SLOTS`, read every [`REFRESH_STEADY`] from a connected
//!   primary, and every [`REFRESH_FAST`] while a primary is unreachable
//!   (a connection error triggers a read at once); when no primary answers,
//!   the seeds of the URL are asked. A command for a slot whose owner is
//!   not connected fails at once (the store answers 503), while the other
//!   shards answer as usual. Every script of the stores touches the keys of
//!   one hash tag, so it runs whole on the owner of that slot.
//!
//!   What this routing does not follow: a slot *migrating* between live
//!   primaries (resharding) answers `MOVED`/`ASK` until the next table read
//!   (at most [`REFRESH_STEADY`]); such commands fail with 503 meanwhile.
//!   Reshard outside peak hours.
//!
//! With a single server (`redis://`) or Sentinel the [`RedisClient`] is the
//! one fred client, exactly as before.

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

/// Longest a `CLUSTER SLOTS` read (or a seed's connection) may take.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);

/// `--store-write-replicas`: how many replicas must acknowledge a write
/// that must survive a failover (a notification, a join, an admission
/// tick) before it is answered, by Redis `WAIT` on the connection that
/// wrote it. The trade-off is in docs/operations.md ("Redis replicas and
/// WAIT").
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct WriteReplicas {
    /// Redis replicas that must acknowledge a notification, a join or an
    /// admission tick (Redis `WAIT`) before it is answered; 0 does not
    /// wait. Fewer acknowledgements within --store-write-replicas-timeout
    /// fail the operation with 503 `store_unavailable` (the master may
    /// still hold the write: see docs/operations.md).
    #[arg(
        long = "store-write-replicas",
        env = "PACE_STORE_WRITE_REPLICAS",
        default_value_t = 0
    )]
    pub replicas: u32,
    /// Longest a write waits for those acknowledgements (keep it below
    /// --store-timeout).
    #[arg(long = "store-write-replicas-timeout", env = "PACE_STORE_WRITE_REPLICAS_TIMEOUT", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

impl Default for WriteReplicas {
    fn default() -> WriteReplicas {
        WriteReplicas {
            replicas: 0,
            timeout: Duration::from_millis(500),
        }
    }
}

/// A node's command client (see the module docs): the one fred client of
/// a single server, or one per Redis Cluster primary with commands routed
/// by slot. Cheap to clone; stores call [`RedisClient::on`] with the key a
/// command (or script) touches.
#[derive(Clone)]
pub struct RedisClient(Arc<Inner>, WriteReplicas);

enum Inner {
    One(Client),
    Shards(Shards),
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
        };
        let inner = Arc::new(Inner::Shards(shards));
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
    /// Returns whether every primary is connected.
    async fn refresh(&self) -> bool {
        let view = self.view();
        let Some((table, from)) = self.read_table(&view).await else {
            return false;
        };
        let routing = match ClusterRouting::from_cluster_slots(table, from.host.clone()) {
            Ok(r) if r.len() > 0 => r,
            Ok(_) => return false,
            Err(e) => {
                tracing::warn!(error = %e, from = %from, "unreadable CLUSTER SLOTS answer");
                return false;
            }
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
        for (server, old) in &view.clients {
            if !clients.contains_key(server) {
                tracing::info!(%server, "no longer a redis cluster primary; disconnecting");
                let old = old.clone();
                tokio::spawn(async move {
                    let _ = old.quit().await;
                });
            }
        }
        let healthy = clients.values().all(|c| c.is_connected());
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(View {
            routing: Some(routing),
            clients,
        });
        healthy
    }

    /// `CLUSTER SLOTS` from a connected primary, else from a seed.
    async fn read_table(&self, view: &View) -> Option<(Value, Server)> {
        let slots = || CustomCommand::new_static("CLUSTER", None, false);
        let mut connected: Vec<(&Server, &Client)> = view
            .clients
            .iter()
            .filter(|(_, c)| c.is_connected())
            .collect();
        // Not always the same primary: one that lags behind the others'
        // view is not asked every time.
        if !connected.is_empty() {
            let start = rand::random::<u64>() as usize % connected.len();
            connected.rotate_left(start);
        }
        for (server, c) in connected {
            if let Ok(Ok(v)) =
                tokio::time::timeout(ASK_TIMEOUT, c.custom::<Value, _>(slots(), vec!["SLOTS"]))
                    .await
            {
                return Some((v, server.clone()));
            }
        }
        for seed in &self.seeds {
            let mut config = self.config.clone();
            config.server = ServerConfig::Centralized {
                server: seed.clone(),
            };
            config.fail_fast = true;
            let Ok(c) = Builder::from_config(config)
                .with_connection_config(|c| c.connection_timeout = ASK_TIMEOUT)
                .build()
            else {
                continue;
            };
            let task = c.connect();
            let asked = tokio::time::timeout(ASK_TIMEOUT * 2, async {
                c.wait_for_connect().await?;
                c.custom::<Value, _>(slots(), vec!["SLOTS"]).await
            })
            .await;
            let _ = c.quit().await;
            task.abort();
            if let Ok(Ok(v)) = asked {
                return Some((v, seed.clone()));
            }
        }
        None
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
        let wait = if healthy {
            REFRESH_STEADY
        } else {
            REFRESH_FAST
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

    #[test]
    fn a_plain_url_keeps_trying_at_start() {
        let b = node_builder("redis://127.0.0.1:6379", Duration::from_secs(2), 64).unwrap();
        let config = b.get_config().unwrap();
        assert!(!config.fail_fast);
        assert!(config.server.is_centralized());
    }
}
