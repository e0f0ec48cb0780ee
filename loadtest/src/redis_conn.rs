//! A short-lived fred client to the cluster's Redis, for the readings
//! `surge` ([`crate::redis_info`]) and `failover` ([`crate::redis_tickets`])
//! take: opened for one exchange, no reconnection (a reading that fails is
//! reported, not retried), every command bounded by the caller's timeout.

use std::time::Duration;

use anyhow::{Context, bail};
use fred::prelude::{Builder, Client, ClientLike, Config};

/// The `--redis` value as a URL fred accepts: `redis://host:port[/db]`, or
/// a bare `host:port` (taken as `redis://host:port`). Checked when the
/// command line is read, so a typo fails before any device connects.
pub fn url(raw: &str) -> anyhow::Result<String> {
    let url = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("redis://{raw}")
    };
    if !url.starts_with("redis://") {
        // A cluster's INFO of one shard would be read as the whole store's.
        bail!("--redis {raw:?}: expected redis://host:port (one server) or host:port");
    }
    Config::from_url(&url).with_context(|| format!("--redis {raw:?}"))?;
    Ok(url)
}

/// Connects to `url` within `timeout`; each command then has `timeout` too.
pub async fn open(url: &str, timeout: Duration) -> anyhow::Result<Client> {
    let config = Config::from_url(url).with_context(|| format!("redis URL {url:?}"))?;
    let client = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = timeout;
            c.internal_command_timeout = timeout;
            c.max_command_attempts = 1;
        })
        .with_performance_config(|p| p.default_command_timeout = timeout)
        .build()
        .context("building the redis client")?;
    tokio::time::timeout(timeout, client.init())
        .await
        .map_err(|_| anyhow::anyhow!("connecting to redis at {url} timed out"))?
        .with_context(|| format!("connecting to redis at {url}"))?;
    Ok(client)
}

/// Runs `exchange` on a fresh client to `url` and closes it, the whole
/// bounded by `timeout`.
pub async fn with_client<T, F, Fut>(url: &str, timeout: Duration, exchange: F) -> anyhow::Result<T>
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let run = async {
        let client = open(url, timeout).await?;
        let out = exchange(client.clone()).await;
        // Closing is best effort: the reading is already taken.
        let _ = client.quit().await;
        out
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| anyhow::anyhow!("reading redis at {url} timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(url("127.0.0.1:6379").unwrap(), "redis://127.0.0.1:6379");
        assert_eq!(
            url("redis://127.0.0.1:6379/2").unwrap(),
            "redis://127.0.0.1:6379/2"
        );
        assert!(url("redis-cluster://127.0.0.1:7000").is_err());
        assert!(url("http://x").is_err());
    }

    #[tokio::test]
    async fn a_dead_server_fails_within_the_timeout() {
        // Port 1 on loopback: nothing listens there.
        let err = open("redis://127.0.0.1:1", Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("127.0.0.1:1"), "{err:#}");
    }
}
