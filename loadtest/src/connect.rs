//! The phase every scenario starts with: check the targets are ready, read
//! node memory, (with `--register`, have the workers register every device
//! and read node memory again), connect the devices through the worker
//! processes, let things settle, read node memory again.
//!
//! What it returns — the running [`Fleet`] and the connect and memory parts
//! of the report — is what the scenario then builds on.

use std::time::Duration;

use anyhow::{Context, bail};

use crate::cli::FleetArgs;
use crate::clock::unix_micros;
use crate::fleet::{self, Fleet, Plan};
use crate::http::Http;
use crate::ipc::{RegisterSpec, SurgeSpec, WorkerCommand, WorkerSpec};
use crate::nodes::{self, NodeProbe};
use crate::procstat;
use crate::report::{ConnectReport, MemoryReport, RegisterReport, per_device_kib};
use crate::stats::Summary;
use crate::target::{self, Target};

/// Slack added to every computed deadline.
const SLACK: Duration = Duration::from_secs(30);

/// With `--register`: between the go and the connect phase's start, so
/// that every worker has read the command and all start together.
const CONNECT_START_DELAY: Duration = Duration::from_millis(100);

/// A connected fleet and what was measured on the way.
#[derive(Debug)]
pub struct Connected {
    /// The running workers.
    pub fleet: Fleet,
    /// Parsed targets.
    pub targets: Vec<Target>,
    /// Node observer.
    pub probe: NodeProbe,
    /// Shared HTTP client.
    pub http: Http,
    /// The run and its connect phase, as every report gives them.
    pub run: RunFacts,
    /// Every device's connect latency, µs (for the charts).
    pub connect_us: Vec<u64>,
}

/// What every scenario's report says about the run and its connect phase.
#[derive(Debug)]
pub struct RunFacts {
    /// Run identifier.
    pub run_id: String,
    /// Start of the run, ms since the epoch.
    pub started_at_unix_ms: u64,
    /// Targets' base URLs.
    pub targets: Vec<String>,
    /// Worker processes used.
    pub processes: usize,
    /// Source addresses used.
    pub source_ips: Vec<String>,
    /// Registration part of the report (`--register`).
    pub register: Option<RegisterReport>,
    /// Connect part of the report.
    pub connect: ConnectReport,
    /// Memory part of the report.
    pub memory: MemoryReport,
}

/// A run identifier unique enough to tell this run's notifications and
/// device ids from another's: the start time in ms and the PID, base 36.
pub fn new_run_id() -> String {
    let ms = unix_micros() / 1000;
    format!(
        "{}{}",
        base36(ms % 36u64.pow(6)),
        base36(u64::from(std::process::id()) % 1296)
    )
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Seconds given on the command line as a duration (negative and NaN → 0).
pub fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::ZERO)
}

/// Connects the fleet. `scenario_time` is how long the scenario runs after
/// connecting (it bounds each worker's lifetime).
pub async fn connect(args: &FleetArgs, scenario_time: Duration) -> anyhow::Result<Connected> {
    connect_with(args, scenario_time, None, None).await
}

/// [`connect`], with the waiting-room behaviour of `surge` devices and,
/// optionally, a run id chosen by the caller.
pub async fn connect_with(
    args: &FleetArgs,
    scenario_time: Duration,
    surge: Option<SurgeSpec>,
    run_id: Option<String>,
) -> anyhow::Result<Connected> {
    if surge.is_some() && args.transport == crate::ipc::Transport::Sse {
        anyhow::bail!("--transport sse: the surge scenario drives WebSocket devices only");
    }
    let started_at_unix_ms = unix_micros() / 1000;
    let targets = args
        .targets
        .iter()
        .map(|t| Target::parse(t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if targets.is_empty() {
        bail!("give at least one --target");
    }
    if args.devices == 0 {
        bail!("--devices must be at least 1");
    }
    if args.connect_rate.is_nan() || args.connect_rate <= 0.0 {
        bail!("--connect-rate must be positive");
    }
    if args.register && (args.register_timeout.is_nan() || args.register_timeout <= 0.0) {
        bail!("--register-timeout must be positive");
    }
    let source_ips = if args.no_source_ip {
        Vec::new()
    } else if args.source_ips.is_empty() {
        target::default_source_ips(&targets)
    } else {
        args.source_ips.clone()
    };
    let processes = args
        .processes
        .unwrap_or_else(|| fleet::default_processes(args.devices))
        .max(1);
    let per_process = args.devices.div_ceil(processes as u64);
    if per_process > 19_000 {
        bail!(
            "{per_process} devices per process exceed the ~20 000 open-files cap: raise --processes"
        );
    }
    let run_id = run_id.unwrap_or_else(new_run_id);
    let http = Http::new();
    nodes::wait_ready(&http, &targets, secs(args.ready_timeout)).await?;
    let probe = NodeProbe::new(args.node_pids.clone(), targets.clone(), http.clone());
    let mut before_bytes = probe.rss().await;

    let connect_timeout = secs(args.connect_timeout);
    let connect_budget = secs(args.devices as f64 / args.connect_rate) + connect_timeout + SLACK;
    let register_budget = if args.register {
        secs(args.register_timeout) + SLACK
    } else {
        Duration::ZERO
    };
    let worker_deadline =
        register_budget + connect_budget + secs(args.settle) + scenario_time + SLACK;
    let plan = Plan {
        processes,
        devices: args.devices,
        template: WorkerSpec {
            worker: 0,
            first_device: 0,
            devices: 0,
            targets: targets.clone(),
            source_ips: source_ips.clone(),
            device_prefix: args.device_prefix.clone(),
            run_id: run_id.clone(),
            connect_rate: args.connect_rate,
            connect_concurrency: args.connect_concurrency,
            connect_timeout_ms: connect_timeout.as_millis() as u64,
            read_buffer_bytes: args.read_buffer,
            transport: args.transport,
            progress_interval_ms: 100,
            deadline_ms: worker_deadline.as_millis() as u64,
            surge: surge.map(|s| SurgeSpec { processes, ..s }),
            register: args.register.then(|| RegisterSpec {
                concurrency: args.register_concurrency.max(1),
                request_timeout_ms: connect_timeout.as_millis() as u64,
                phase_timeout_ms: secs(args.register_timeout).as_millis() as u64,
            }),
        },
    };
    eprintln!(
        "run {run_id}: connecting {} devices to {} target(s) from {processes} process(es) at {} conn/s",
        args.devices,
        targets.len(),
        args.connect_rate
    );
    let mut fleet = Fleet::launch(&plan).await.context("launching workers")?;
    let register = if args.register {
        eprintln!(
            "registering {} devices ({} in flight at most)",
            args.devices, args.register_concurrency
        );
        let mut reg = fleet.wait_registered(register_budget, args.devices).await?;
        // Node memory from here on is the connections' (the registry's
        // records are reported with the registration).
        let registered_bytes = probe.rss().await;
        let duration_s = reg.last_done_us.saturating_sub(reg.first_attempt_us) as f64 / 1e6;
        let register_failed: u64 = reg.failures.values().sum();
        let report = RegisterReport {
            registered: reg.ok,
            register_failed,
            failures: reg.failures.clone(),
            duration_s,
            rate_per_s: per_second(reg.ok, duration_s),
            latency_ms: Summary::from_micros(&mut reg.latency_us),
            rss_per_device_kib: per_device_kib(&before_bytes, &registered_bytes, reg.ok),
        };
        eprintln!(
            "registered {}/{} ({register_failed} register_failed) in {duration_s:.2} s; connecting",
            reg.ok, args.devices
        );
        before_bytes = registered_bytes;
        Some(report)
    } else {
        None
    };
    let overflows_before = procstat::listen_overflows();
    if args.register {
        let start_at_us = unix_micros() + CONNECT_START_DELAY.as_micros() as u64;
        fleet
            .command(&WorkerCommand::Connect { start_at_us })
            .await?;
    }
    let mut phase = fleet.wait_connected(connect_budget, args.devices).await?;
    let listen_overflows = match (overflows_before, procstat::listen_overflows()) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b)),
        _ => None,
    };

    fleet.follow(secs(args.settle)).await?;
    let after_bytes = probe.rss().await;
    let connections_open_reported = probe.connections_open().await;

    let duration_s = phase.last_done_us.saturating_sub(phase.first_attempt_us) as f64 / 1e6;
    let failed: u64 = phase.failures.values().sum();
    let connect = ConnectReport {
        attempted: args.devices,
        connected: phase.ok,
        failed,
        failures: phase.failures.clone(),
        duration_s,
        rate_per_s: per_second(phase.ok, duration_s),
        latency_ms: Summary::from_micros(&mut phase.latency_us),
        connections_open_reported,
        listen_overflows,
    };
    let memory = MemoryReport {
        source: probe.source(),
        rss_per_device_kib: per_device_kib(&before_bytes, &after_bytes, phase.ok),
        before_bytes,
        after_bytes,
    };
    Ok(Connected {
        fleet,
        run: RunFacts {
            run_id,
            started_at_unix_ms,
            targets: targets.iter().map(|t| t.base.clone()).collect(),
            processes,
            source_ips: source_ips.iter().map(ToString::to_string).collect(),
            register,
            connect,
            memory,
        },
        targets,
        probe,
        http,
        connect_us: phase.latency_us,
    })
}

/// `n` events over `seconds`, per second (0 for an empty interval).
fn per_second(n: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        n as f64 / seconds
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_valid_device_id_parts() {
        let id = new_run_id();
        assert!(!id.is_empty() && id.len() <= 8, "{id}");
        assert!(pace_protocol::DeviceId::parse(&format!("lt-{id}-99999")).is_ok());
    }

    #[test]
    fn base36_digits() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }

    #[test]
    fn secs_tolerates_junk() {
        assert_eq!(secs(1.5), Duration::from_millis(1500));
        assert_eq!(secs(-1.0), Duration::ZERO);
        assert_eq!(secs(f64::NAN), Duration::ZERO);
    }
}
