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

use std::time::Duration;

use fred::prelude::*;
use fred::types::config::ClusterDiscoveryPolicy;

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
    // Keep trying when the first connection fails (see the module docs).
    config.fail_fast = false;
    if config.server.is_clustered() {
        config
            .server
            .set_cluster_discovery_policy(ClusterDiscoveryPolicy::UseCache)?;
    }
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
    Ok(builder)
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
