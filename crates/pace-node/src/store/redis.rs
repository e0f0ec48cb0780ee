//! The Redis store: shared state and cluster fan-out for several nodes.
//!
//! Two fred clients: one for commands, one dedicated subscriber that
//! re-subscribes after every reconnect. Both reconnect forever with
//! exponential backoff (fred has no reconnect policy by default).
//!
//! Fan-out uses **one cluster channel** (`<prefix>:bus`): every node
//! receives every envelope and delivers to its own matching devices. See
//! `docs/architecture.md` for why one channel rather than per-scope or
//! per-node channels.
//!
//! Every multi-step operation is one Lua script (`*.lua` beside this file):
//! the sequence number and the publish of a notification happen atomically,
//! so per scope, publish order is sequence order on every node.
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
use tokio::sync::{broadcast, watch};

use super::{Draft, Local, NodeInfo, Store, StoreError, StoreHealth, stamp};
use crate::metrics::Metrics;

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
}

/// A value no real counter reaches, serialized in place of the counter and
/// replaced by the Lua script.
const PLACEHOLDER: u64 = u64::MAX;

/// The Redis [`Store`].
pub struct RedisStore {
    client: Client,
    subscriber: SubscriberClient,
    opts: RedisOptions,
    keys: Keys,
    incr_publish: Script,
    heartbeat: Script,
    nodes: Script,
    /// True while the subscriber is subscribed to the bus (false from a
    /// connection error until the re-subscription after the reconnect).
    subscribed: watch::Receiver<bool>,
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
    seq_prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            bus: format!("{prefix}:bus"),
            generation: format!("{{{prefix}}}:conn-generation"),
            nodes: format!("{{{prefix}}}:nodes"),
            node_info: format!("{{{prefix}}}:node-info"),
            seq_prefix: format!("{{{prefix}}}:seq:"),
        }
    }
}

/// Checks a Redis URL without connecting (for `check-config`).
pub fn check_url(url: &str) -> Result<(), String> {
    const SCHEMES: [&str; 4] = [
        "redis://",
        "rediss://",
        "redis-cluster://",
        "redis-sentinel://",
    ];
    if !SCHEMES.iter().any(|s| url.starts_with(s)) {
        return Err(format!("must start with one of {}", SCHEMES.join(", ")));
    }
    Config::from_url(url)
        .map(|_| ())
        .map_err(|e| e.details().to_string())
}

impl RedisStore {
    /// Creates the clients and starts connecting in the background; the
    /// node reports not-ready until [`Store::wait_ready`] resolves.
    pub fn start(
        opts: RedisOptions,
        local: Arc<dyn Local>,
        metrics: Metrics,
    ) -> Result<Arc<RedisStore>, StoreError> {
        check_url(&opts.url).map_err(StoreError::Unavailable)?;
        let config = Config::from_url(&opts.url)
            .map_err(|e| StoreError::Unavailable(e.details().to_string()))?;
        let mut builder = Builder::from_config(config);
        builder
            // Reconnect forever (0 attempts = no limit), 100 ms doubling to 2 s.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(2);
                c.internal_command_timeout = Duration::from_secs(2);
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = opts.command_timeout;
                p.broadcast_channel_capacity = opts.bus_capacity;
            });
        let map = |e: fred::error::Error| StoreError::Unavailable(e.details().to_string());
        let client = builder.build().map_err(map)?;
        let subscriber = builder.build_subscriber_client().map_err(map)?;
        let keys = Keys::new(&opts.prefix);

        // Take the message receiver before subscribing so nothing is missed.
        let messages = subscriber.message_rx();
        tokio::spawn(read_bus(
            messages,
            local,
            metrics.clone(),
            opts.node_id.clone(),
        ));

        // The returned handles are the connection tasks; dropping them
        // detaches the tasks, which keep running until the clients quit.
        drop(client.connect());
        drop(subscriber.connect());
        tokio::spawn(log_events(
            "commands",
            client.error_rx(),
            client.reconnect_rx(),
        ));
        tokio::spawn(log_events(
            "subscriber",
            subscriber.error_rx(),
            subscriber.reconnect_rx(),
        ));

        let (tx, subscribed) = watch::channel(false);
        tokio::spawn(keep_subscribed(subscriber.clone(), keys.bus.clone(), tx));

        Ok(Arc::new(RedisStore {
            client,
            subscriber,
            opts,
            keys,
            incr_publish: Script::from_lua(include_str!("incr_publish.lua")),
            heartbeat: Script::from_lua(include_str!("heartbeat.lua")),
            nodes: Script::from_lua(include_str!("nodes.lua")),
            subscribed,
        }))
    }

    /// The command client, shared with the queue store (same connection,
    /// same reconnect policy and timeouts).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    fn connected_or_fail(&self) -> Result<(), StoreError> {
        if self.client.is_connected() {
            Ok(())
        } else {
            Err(StoreError::Unavailable("not connected to redis".into()))
        }
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
                &self.client,
                vec![counter.to_owned()],
                vec![self.keys.bus.clone(), before, after.to_owned()],
            )
            .await
            .map_err(|e| StoreError::Unavailable(e.details().to_string()))?;
        Ok(value)
    }
}

/// Subscribes to the bus channel, and again after every reconnect; keeps
/// `live` true exactly while the subscription is in place, so health (and
/// `pace_store_up`) only reports up when this node really receives the bus.
async fn keep_subscribed(sub: SubscriberClient, channel: String, live: watch::Sender<bool>) {
    let mut reconnects = sub.reconnect_rx();
    let mut errors = sub.error_rx();
    loop {
        // (Re)subscribe until it works.
        loop {
            if sub.wait_for_connect().await.is_ok() && sub.subscribe(channel.as_str()).await.is_ok()
            {
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

/// Logs a client's connection errors and reconnections.
async fn log_events(
    name: &'static str,
    mut errors: broadcast::Receiver<(fred::error::Error, Option<fred::types::config::Server>)>,
    mut reconnects: broadcast::Receiver<fred::types::config::Server>,
) {
    loop {
        tokio::select! {
            e = errors.recv() => match e {
                Ok((e, _)) => tracing::warn!(client = name, error = %e, "redis connection error"),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            r = reconnects.recv() => match r {
                Ok(server) => tracing::info!(client = name, %server, "redis connected"),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// Reads the cluster channel and hands envelopes to this node.
async fn read_bus(
    mut messages: broadcast::Receiver<fred::types::Message>,
    local: Arc<dyn Local>,
    metrics: Metrics,
    node_id: String,
) {
    loop {
        let msg = match messages.recv().await {
            Ok(m) => m,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                metrics.bus_dropped.inc_by(n);
                tracing::error!(
                    dropped = n,
                    "bus reader fell behind; messages dropped (raise --bus-buffer)"
                );
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        metrics.bus_received.inc();
        let envelope = msg
            .value
            .as_bytes()
            .and_then(|b| serde_json::from_slice::<BusEnvelope>(b).ok());
        match envelope {
            Some(BusEnvelope::Notify { notification, .. }) => local.deliver(&notification),
            Some(BusEnvelope::Connected {
                origin,
                device,
                generation,
                ..
            }) => {
                if origin != node_id {
                    local.evict_older(&device, generation);
                }
            }
            Some(BusEnvelope::Admitted {
                room,
                device,
                frame,
                ..
            }) => local.admitted(&room, &device, &frame),
            None => {
                metrics.bus_invalid.inc();
                tracing::warn!(channel = %msg.channel, "unreadable bus message skipped");
            }
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn health(&self) -> StoreHealth {
        let up = self.client.is_connected()
            && self.subscriber.is_connected()
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
        let _ = self.client.wait_for_connect().await;
    }

    async fn publish(&self, draft: Draft) -> Result<Notification, StoreError> {
        let counter = format!("{}{}", self.keys.seq_prefix, draft.target.scope_key());
        let mut n = stamp(draft, PLACEHOLDER);
        let envelope = BusEnvelope::Notify {
            v: BUS_VERSION,
            origin: self.opts.node_id.clone(),
            notification: n.clone(),
        };
        let text =
            serde_json::to_string(&envelope).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        n.seq = self.incr_publish(&counter, &text, "seq").await?;
        Ok(n)
    }

    async fn connected(&self, device: &DeviceId) -> Result<u64, StoreError> {
        let envelope = BusEnvelope::Connected {
            v: BUS_VERSION,
            origin: self.opts.node_id.clone(),
            device: device.clone(),
            generation: PLACEHOLDER,
        };
        let text =
            serde_json::to_string(&envelope).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        self.incr_publish(&self.keys.generation, &text, "generation")
            .await
    }

    async fn send_admitted(
        &self,
        room: &RoomId,
        device: &DeviceId,
        frame: &str,
    ) -> Result<(), StoreError> {
        self.connected_or_fail()?;
        let envelope = BusEnvelope::Admitted {
            v: BUS_VERSION,
            origin: self.opts.node_id.clone(),
            room: room.clone(),
            device: device.clone(),
            frame: frame.to_owned(),
        };
        let text =
            serde_json::to_string(&envelope).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let _: i64 = self
            .client
            .publish(self.keys.bus.as_str(), text)
            .await
            .map_err(|e| StoreError::Unavailable(e.details().to_string()))?;
        Ok(())
    }

    async fn heartbeat(&self, info: &NodeInfo) -> Result<(), StoreError> {
        self.connected_or_fail()?;
        let json =
            serde_json::to_string(info).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let _: i64 = self
            .heartbeat
            .evalsha_with_reload(
                &self.client,
                vec![self.keys.nodes.clone(), self.keys.node_info.clone()],
                vec![
                    info.node_id.clone(),
                    json,
                    self.opts.node_ttl.as_millis().to_string(),
                ],
            )
            .await
            .map_err(|e| StoreError::Unavailable(e.details().to_string()))?;
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        self.connected_or_fail()?;
        let flat: Vec<String> = self
            .nodes
            .evalsha_with_reload(
                &self.client,
                vec![self.keys.nodes.clone(), self.keys.node_info.clone()],
                vec![self.opts.node_ttl.as_millis().to_string()],
            )
            .await
            .map_err(|e| StoreError::Unavailable(e.details().to_string()))?;
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
        RedisStore::start(
            RedisOptions {
                url: redis.url(),
                prefix: prefix.into(),
                node_id: node.into(),
                bus_capacity: 1024,
                command_timeout: Duration::from_secs(2),
                node_ttl: Duration::from_secs(2),
            },
            local,
            Metrics::new(),
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
            Err(StoreError::Unavailable(_))
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
