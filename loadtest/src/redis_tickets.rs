//! Reads every device's ticket in one room straight from the cluster's
//! Redis, so that `failover` can check that no device's ticket changed
//! across the node's death (the server's promise: joining again returns
//! the same ticket).
//!
//! The layout is the queue store's (documented in the node's
//! `queue/mod.rs`): `{P:room:R}:queue` is a sorted set device → ticket;
//! `{P:room:R}:sessions` a hash session id → `device|ticket|admitted_at_ms`
//! for admitted devices. Two commands over a bare RESP connection, like
//! [`crate::redis_info`].

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Timeout of one reading.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest bulk string or array accepted.
const MAX_LEN: usize = 64 * 1024 * 1024;

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    /// `+OK`.
    Simple(String),
    /// `-ERR …`.
    Error(String),
    /// `:12`.
    Int(i64),
    /// `$3 abc`; `None` for the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `*2 …`; `None` for the null array.
    Array(Option<Vec<Resp>>),
}

/// Writes one command as a RESP array of bulk strings.
pub fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one reply (arrays iteratively nested).
pub async fn read<R: AsyncBufRead + Unpin>(r: &mut R) -> anyhow::Result<Resp> {
    // A stack of arrays being filled: (expected, items).
    let mut stack: Vec<(usize, Vec<Resp>)> = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            bail!("redis closed the connection");
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let (kind, rest) = line.split_at(line.len().min(1));
        let len = |s: &str| -> anyhow::Result<i64> { s.parse().context("RESP length") };
        let mut value = match kind {
            "+" => Resp::Simple(rest.to_owned()),
            "-" => Resp::Error(rest.to_owned()),
            ":" => Resp::Int(len(rest)?),
            "$" => {
                let n = len(rest)?;
                if n < 0 {
                    Resp::Bulk(None)
                } else {
                    let n = usize::try_from(n)?;
                    if n > MAX_LEN {
                        bail!("RESP bulk of {n} bytes");
                    }
                    let mut buf = vec![0u8; n + 2];
                    r.read_exact(&mut buf).await?;
                    buf.truncate(n);
                    Resp::Bulk(Some(buf))
                }
            }
            "*" => {
                let n = len(rest)?;
                if n < 0 {
                    Resp::Array(None)
                } else {
                    let n = usize::try_from(n)?;
                    if n > MAX_LEN {
                        bail!("RESP array of {n} items");
                    }
                    if n > 0 {
                        stack.push((n, Vec::with_capacity(n.min(1 << 16))));
                        continue;
                    }
                    Resp::Array(Some(Vec::new()))
                }
            }
            _ => bail!("unexpected RESP line {line:.80?}"),
        };
        // Complete as many enclosing arrays as this value fills.
        loop {
            let Some((want, items)) = stack.last_mut() else {
                return Ok(value);
            };
            items.push(value);
            if items.len() < *want {
                break;
            }
            let Some((_, items)) = stack.pop() else {
                bail!("RESP stack underflow");
            };
            value = Resp::Array(Some(items));
        }
    }
}

fn text(v: &Resp) -> Option<String> {
    match v {
        Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        Resp::Simple(s) => Some(s.clone()),
        Resp::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn pairs(v: Resp, what: &str) -> anyhow::Result<Vec<(String, String)>> {
    let items = match v {
        Resp::Array(Some(items)) => items,
        Resp::Array(None) => Vec::new(),
        Resp::Error(e) => bail!("redis refused {what}: {e}"),
        other => bail!("redis answered {what} with {other:?}"),
    };
    items
        .chunks(2)
        .map(|c| match c {
            [k, v] => Ok((text(k).context("member")?, text(v).context("value")?)),
            _ => bail!("{what}: odd number of items"),
        })
        .collect()
}

/// Tickets by device id, from the queue (waiting) and the sessions
/// (admitted), for the devices whose id starts with `device_prefix`.
pub fn tickets_from(
    queue: Vec<(String, String)>,
    sessions: Vec<(String, String)>,
    device_prefix: &str,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (device, score) in queue {
        if device.starts_with(device_prefix)
            && let Ok(t) = score.parse::<f64>()
        {
            out.insert(device, t as u64);
        }
    }
    for (_, session) in sessions {
        // device|ticket|admitted_at_ms; the device id has no '|'.
        let mut parts = session.rsplitn(3, '|');
        let (_, ticket, device) = (parts.next(), parts.next(), parts.next());
        if let (Some(device), Some(Ok(t))) = (device, ticket.map(str::parse::<u64>))
            && device.starts_with(device_prefix)
        {
            out.insert(device.to_owned(), t);
        }
    }
    out
}

/// Reads the tickets of `room` (keys under `prefix`, the nodes'
/// `--redis-prefix`) of the devices named `device_prefix…`.
pub async fn tickets(
    addr: &str,
    prefix: &str,
    room: &str,
    device_prefix: &str,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let tag = format!("{{{prefix}:room:{room}}}");
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to redis at {addr}"))?;
        let mut stream = BufReader::new(stream);
        let queue_key = format!("{tag}:queue");
        let sessions_key = format!("{tag}:sessions");
        let mut req = encode(&["ZRANGE", &queue_key, "0", "-1", "WITHSCORES"]);
        req.extend(encode(&["HGETALL", &sessions_key]));
        stream.get_mut().write_all(&req).await?;
        let queue = pairs(read(&mut stream).await?, "ZRANGE")?;
        let sessions = pairs(read(&mut stream).await?, "HGETALL")?;
        anyhow::Ok(tickets_from(queue, sessions, device_prefix))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("reading tickets from redis at {addr} timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(raw: &[u8]) -> anyhow::Result<Resp> {
        read(&mut BufReader::new(raw)).await
    }

    #[tokio::test]
    async fn reads_nested_replies() {
        assert_eq!(parse(b"+OK\r\n").await.unwrap(), Resp::Simple("OK".into()));
        assert_eq!(parse(b":-3\r\n").await.unwrap(), Resp::Int(-3));
        assert_eq!(parse(b"$-1\r\n").await.unwrap(), Resp::Bulk(None));
        assert_eq!(parse(b"*0\r\n").await.unwrap(), Resp::Array(Some(vec![])));
        let v = parse(b"*3\r\n$1\r\na\r\n*2\r\n:1\r\n$0\r\n\r\n+x\r\n")
            .await
            .unwrap();
        assert_eq!(
            v,
            Resp::Array(Some(vec![
                Resp::Bulk(Some(b"a".to_vec())),
                Resp::Array(Some(vec![Resp::Int(1), Resp::Bulk(Some(vec![]))])),
                Resp::Simple("x".into()),
            ]))
        );
        assert!(parse(b"*2\r\n:1\r\n").await.is_err(), "truncated");
        assert!(parse(b"?\r\n").await.is_err());
        assert_eq!(
            encode(&["GET", "k"]),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec()
        );
    }

    #[test]
    fn tickets_from_queue_and_sessions() {
        let queue = vec![
            ("lt-r-1".to_owned(), "5".to_owned()),
            ("other-9".to_owned(), "6".to_owned()),
        ];
        let sessions = vec![("sid".to_owned(), "lt-r-2|3|1700000000000".to_owned())];
        let t = tickets_from(queue, sessions, "lt-r-");
        assert_eq!(t.len(), 2);
        assert_eq!(t.get("lt-r-1"), Some(&5));
        assert_eq!(t.get("lt-r-2"), Some(&3));
    }
}
