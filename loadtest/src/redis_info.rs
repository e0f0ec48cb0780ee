//! Reads Redis `INFO commandstats` and `INFO cpu` over a bare RESP
//! connection, so that `surge` can count the store commands the nodes run
//! per waiting device (commands run inside Lua scripts are counted under
//! their own names, next to `evalsha`).
//!
//! The client is fred's, opened for the one exchange ([`crate::redis_conn`]).

use std::collections::BTreeMap;
use std::time::Duration;

use fred::prelude::ClientLike;
use fred::types::InfoKind;
use serde::{Deserialize, Serialize};

use crate::redis_conn;

/// Timeout of one INFO exchange.
const TIMEOUT: Duration = Duration::from_secs(5);

/// One reading of the Redis server's counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RedisSnapshot {
    /// `calls` per command (`evalsha`, `zadd`, …), from `INFO commandstats`.
    pub calls: BTreeMap<String, u64>,
    /// `used_cpu_user + used_cpu_sys`, seconds.
    pub cpu_seconds: f64,
}

impl RedisSnapshot {
    /// Calls of every command between `earlier` and `self`, leaving out
    /// `info` (this tool's own readings); zero deltas are dropped.
    pub fn calls_since(&self, earlier: &RedisSnapshot) -> BTreeMap<String, u64> {
        self.calls
            .iter()
            .filter(|(cmd, _)| cmd.as_str() != "info")
            .map(|(cmd, &n)| {
                let before = earlier.calls.get(cmd).copied().unwrap_or(0);
                (cmd.clone(), n.saturating_sub(before))
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// Reads `INFO commandstats` and `INFO cpu` from the Redis at `url`.
pub async fn snapshot(url: &str) -> anyhow::Result<RedisSnapshot> {
    redis_conn::with_client(url, TIMEOUT, |client| async move {
        let stats: String = client.info(Some(InfoKind::CommandStats)).await?;
        let cpu: String = client.info(Some(InfoKind::Cpu)).await?;
        Ok(RedisSnapshot {
            calls: parse_commandstats(&stats),
            cpu_seconds: parse_cpu(&cpu),
        })
    })
    .await
}

/// `cmdstat_zadd:calls=12,usec=…` lines → `{"zadd": 12}`.
pub fn parse_commandstats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, fields) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// `used_cpu_sys` + `used_cpu_user` of `INFO cpu`, seconds.
pub fn parse_cpu(text: &str) -> f64 {
    text.lines()
        .filter_map(|line| line.trim().split_once(':'))
        .filter(|(k, _)| *k == "used_cpu_sys" || *k == "used_cpu_user")
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commandstats_and_cpu() {
        let text = "# Commandstats\r\ncmdstat_evalsha:calls=120,usec=900,usec_per_call=7.50,rejected_calls=0,failed_calls=0\r\ncmdstat_zadd:calls=3,usec=3,usec_per_call=1.00,rejected_calls=0,failed_calls=0\r\ncmdstat_info:calls=2,usec=1\r\n";
        let calls = parse_commandstats(text);
        assert_eq!(calls.get("evalsha"), Some(&120));
        assert_eq!(calls.get("zadd"), Some(&3));
        let cpu = parse_cpu(
            "# CPU\r\nused_cpu_sys:1.50\r\nused_cpu_user:2.25\r\nused_cpu_sys_children:9\r\n",
        );
        assert!((cpu - 3.75).abs() < 1e-9, "{cpu}");
        let before = RedisSnapshot {
            calls: [("evalsha".to_owned(), 100), ("info".to_owned(), 1)].into(),
            cpu_seconds: 1.0,
        };
        let after = RedisSnapshot {
            calls,
            cpu_seconds: 2.0,
        };
        let d = after.calls_since(&before);
        assert_eq!(d.get("evalsha"), Some(&20));
        assert_eq!(d.get("zadd"), Some(&3));
        assert_eq!(d.get("info"), None);
    }
}
