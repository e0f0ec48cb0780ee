//! Observes the nodes under test: readiness, resident memory, CPU time and
//! open connections.
//!
//! With `--node-pid` the numbers come from `/proc` (exact, and the only way
//! when the targets are gateways). Without it they come from each target's
//! own `/metrics` (`process_resident_memory_bytes`,
//! `process_cpu_seconds_total`), which is only meaningful when the targets
//! are the nodes themselves.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::http::Http;
use crate::procstat::{self, CpuTimes};
use crate::promtext::metric_sum;
use crate::target::Target;

/// Timeout of one observation request.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where node numbers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `/proc/PID/{status,stat}` of the `--node-pid`s.
    Proc,
    /// Each target's `/metrics`.
    Metrics,
}

/// Reads numbers from the nodes.
#[derive(Debug, Clone)]
pub struct NodeProbe {
    pids: Vec<u32>,
    targets: Vec<Target>,
    http: Http,
    clock_ticks: u64,
}

impl NodeProbe {
    /// A probe over `pids` (if any) else over `targets`' `/metrics`.
    pub fn new(pids: Vec<u32>, targets: Vec<Target>, http: Http) -> NodeProbe {
        let clock_ticks = if pids.is_empty() {
            100
        } else {
            procstat::clock_ticks_per_sec()
        };
        NodeProbe {
            pids,
            targets,
            http,
            clock_ticks,
        }
    }

    /// Where this probe's numbers come from.
    pub fn source(&self) -> Source {
        if self.pids.is_empty() {
            Source::Metrics
        } else {
            Source::Proc
        }
    }

    /// Resident memory of each node in bytes (`None` where unreadable).
    pub async fn rss(&self) -> Vec<Option<u64>> {
        match self.source() {
            Source::Proc => self
                .pids
                .iter()
                .map(|&pid| procstat::rss_bytes(pid).ok())
                .collect(),
            Source::Metrics => self
                .scrape("process_resident_memory_bytes")
                .await
                .into_iter()
                .map(|v| v.map(|b| b as u64))
                .collect(),
        }
    }

    /// CPU time each node has used so far. From `/metrics` only the total
    /// is known; it is reported as `user` (see [`Source`]).
    pub async fn cpu(&self) -> Vec<Option<CpuTimes>> {
        match self.source() {
            Source::Proc => self
                .pids
                .iter()
                .map(|&pid| procstat::cpu_time(pid, self.clock_ticks).ok())
                .collect(),
            Source::Metrics => self
                .scrape("process_cpu_seconds_total")
                .await
                .into_iter()
                .map(|v| {
                    v.filter(|s| s.is_finite() && *s >= 0.0).map(|s| CpuTimes {
                        user: Duration::from_secs_f64(s),
                        system: Duration::ZERO,
                    })
                })
                .collect(),
        }
    }

    /// `pace_connections_open` summed over the targets, if every target
    /// reports it.
    pub async fn connections_open(&self) -> Option<u64> {
        let mut total = 0.0;
        for t in &self.targets {
            total += scrape_one(&self.http, t, "pace_connections_open").await?;
        }
        Some(total as u64)
    }

    async fn scrape(&self, metric: &str) -> Vec<Option<f64>> {
        let mut out = Vec::with_capacity(self.targets.len());
        for t in &self.targets {
            out.push(scrape_one(&self.http, t, metric).await);
        }
        out
    }
}

async fn scrape_one(http: &Http, target: &Target, metric: &str) -> Option<f64> {
    let reply = http
        .get(&target.url("/metrics"), PROBE_TIMEOUT)
        .await
        .ok()?;
    if reply.status != 200 {
        return None;
    }
    metric_sum(&reply.text(), metric)
}

/// Waits until every target answers `GET /ready` with 200 — or, for a
/// gateway, which keeps `/ready` private (404), until a plain `GET /ws`
/// reaches a node (426: "this is the WebSocket endpoint, upgrade").
pub async fn wait_ready(http: &Http, targets: &[Target], timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    for t in targets {
        loop {
            let mut status = http
                .get(&t.url("/ready"), PROBE_TIMEOUT)
                .await
                .map(|r| r.status);
            if let Ok(404) = status {
                status = http
                    .get(&t.url("/ws"), PROBE_TIMEOUT)
                    .await
                    .map(|r| r.status);
            }
            match status {
                Ok(200 | 426) => break,
                other if started.elapsed() >= timeout => {
                    bail!(
                        "{} not ready after {timeout:?} (last answer: {other:?})",
                        t.base
                    )
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    Ok(())
}

/// Sum of the values that are present; `None` when any is missing (a
/// partial sum would silently understate memory or CPU).
pub fn sum_all<T: Copy + std::iter::Sum<T>>(values: &[Option<T>]) -> Option<T> {
    if values.is_empty() || values.iter().any(Option::is_none) {
        return None;
    }
    Some(values.iter().flatten().copied().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_all_refuses_partial_sums() {
        assert_eq!(sum_all(&[Some(1u64), Some(2)]), Some(3));
        assert_eq!(sum_all(&[Some(1u64), None]), None);
        assert_eq!(sum_all::<u64>(&[]), None);
    }
}
