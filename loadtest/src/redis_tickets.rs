//! Reads every device's ticket in one room straight from the cluster's
//! Redis, so that `failover` can check that no device's ticket changed
//! across the node's death (the server's promise: joining again returns
//! the same ticket).
//!
//! The layout is the queue store's (documented in the node's
//! `queue/mod.rs`): `{P:room:R}:queue` is a sorted set device → ticket;
//! `{P:room:R}:sessions` a hash session id → `device|ticket|admitted_at_ms`
//! for admitted devices. Two commands on a fred client opened for the
//! reading ([`crate::redis_conn`]).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use fred::prelude::{HashesInterface, SortedSetsInterface};

use crate::redis_conn;

/// Timeout of one reading.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Tickets by device id, from the queue (waiting) and the sessions
/// (admitted), for the devices whose id starts with `device_prefix`.
pub fn tickets_from(
    queue: Vec<(String, f64)>,
    sessions: HashMap<String, String>,
    device_prefix: &str,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (device, ticket) in queue {
        if device.starts_with(device_prefix) {
            out.insert(device, ticket as u64);
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
    url: &str,
    prefix: &str,
    room: &str,
    device_prefix: &str,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let tag = format!("{{{prefix}:room:{room}}}");
    redis_conn::with_client(url, TIMEOUT, |client| async move {
        let queue: Vec<(String, f64)> = client
            .zrange(format!("{tag}:queue"), 0, -1, None, false, None, true)
            .await?;
        let sessions: HashMap<String, String> = client.hgetall(format!("{tag}:sessions")).await?;
        Ok(tickets_from(queue, sessions, device_prefix))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_from_queue_and_sessions() {
        let queue = vec![("lt-r-1".to_owned(), 5.0), ("other-9".to_owned(), 6.0)];
        let sessions = [("sid".to_owned(), "lt-r-2|3|1700000000000".to_owned())].into();
        let t = tickets_from(queue, sessions, "lt-r-");
        assert_eq!(t.len(), 2);
        assert_eq!(t.get("lt-r-1"), Some(&5));
        assert_eq!(t.get("lt-r-2"), Some(&3));
    }
}
