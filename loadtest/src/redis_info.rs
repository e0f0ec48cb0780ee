//! Reads Redis `INFO commandstats` and `INFO cpu` over a bare RESP
//! connection, so that `surge` can count the store commands the nodes run
//! per waiting device (commands run inside Lua scripts are counted under
//! their own names, next to `evalsha`).
//!
//! Two commands and one reply type (a bulk string) need no client library:
//! the tool speaks RESP directly over a `TcpStream`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

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

/// `host:port` from `redis://host:port[/db]` or `host:port`.
pub fn address(url: &str) -> anyhow::Result<String> {
    let rest = url.strip_prefix("redis://").unwrap_or(url);
    let rest = rest.split('/').next().unwrap_or_default();
    if rest.contains('@') {
        bail!("redis {url:?}: credentials are not supported here");
    }
    if rest.is_empty() || !rest.contains(':') {
        bail!("redis {url:?}: expected redis://host:port or host:port");
    }
    Ok(rest.to_owned())
}

/// Reads `INFO commandstats` and `INFO cpu` from the Redis at `addr`.
pub async fn snapshot(addr: &str) -> anyhow::Result<RedisSnapshot> {
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to redis at {addr}"))?;
        let mut stream = BufReader::new(stream);
        let stats = info(&mut stream, "commandstats").await?;
        let cpu = info(&mut stream, "cpu").await?;
        anyhow::Ok(RedisSnapshot {
            calls: parse_commandstats(&stats),
            cpu_seconds: parse_cpu(&cpu),
        })
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("redis INFO at {addr} timed out"))?
}

async fn info(stream: &mut BufReader<TcpStream>, section: &str) -> anyhow::Result<String> {
    let request = format!("*2\r\n$4\r\nINFO\r\n${}\r\n{section}\r\n", section.len());
    stream.get_mut().write_all(request.as_bytes()).await?;
    let mut header = String::new();
    stream.read_line(&mut header).await?;
    let header = header.trim_end();
    let Some(len) = header.strip_prefix('$') else {
        bail!("redis answered INFO with {header:?}");
    };
    let len: usize = len.parse().context("bulk length")?;
    let mut body = vec![0u8; len + 2];
    stream.read_exact(&mut body).await?;
    body.truncate(len);
    Ok(String::from_utf8_lossy(&body).into_owned())
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

    #[test]
    fn addresses() {
        assert_eq!(address("redis://127.0.0.1:6390").unwrap(), "127.0.0.1:6390");
        assert_eq!(address("127.0.0.1:6390/0").unwrap(), "127.0.0.1:6390");
        assert!(address("redis://u:p@h:1").is_err());
        assert!(address("redis://h").is_err());
    }
}
