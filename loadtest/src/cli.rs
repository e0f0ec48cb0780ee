//! Command line of `pace-loadtest`: one subcommand per scenario, the
//! options every scenario shares ([`FleetArgs`]), and the hidden `worker`
//! subcommand the tool re-executes itself as.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Drive thousands of Pace devices against nodes or gateways and report
/// connect rate, latency, memory and CPU per device.
#[derive(Debug, Parser)]
#[command(name = "pace-loadtest", version, about, long_about = None)]
pub struct Cli {
    /// The scenario to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Scenarios.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Connect N idle devices, hold them, close them: connect rate, failures,
    /// connect latency and node memory per device.
    Hold(HoldArgs),
    /// Connect N devices, send K notifications to all from one target:
    /// delivery latency, time to the last device, losses, CPU per delivery.
    Broadcast(BroadcastArgs),
    /// Internal: run a share of the devices (spec on stdin, events on stdout).
    #[command(hide = true)]
    Worker,
}

/// Options shared by every scenario.
#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    /// Base URL of a node or gateway (http://host:port). Repeat (or separate
    /// with commas) to spread devices round-robin over several targets.
    #[arg(
        long = "target",
        required = true,
        value_delimiter = ',',
        env = "PACE_LOADTEST_TARGET"
    )]
    pub targets: Vec<String>,

    /// Number of devices to connect.
    #[arg(long, default_value_t = 1_000, env = "PACE_LOADTEST_DEVICES")]
    pub devices: u64,

    /// Worker processes to spread the devices over (each process may hold at
    /// most ~20 000 open files). Default: ceil(devices / 8000).
    #[arg(long, env = "PACE_LOADTEST_PROCESSES")]
    pub processes: Option<usize>,

    /// New connections per second, over all workers.
    #[arg(long, default_value_t = 2_000.0, env = "PACE_LOADTEST_CONNECT_RATE")]
    pub connect_rate: f64,

    /// Handshakes in flight at most, over all workers.
    #[arg(long, default_value_t = 256, env = "PACE_LOADTEST_CONNECT_CONCURRENCY")]
    pub connect_concurrency: usize,

    /// Seconds one device may take to connect (TCP + upgrade + welcome).
    #[arg(long, default_value_t = 10.0, env = "PACE_LOADTEST_CONNECT_TIMEOUT")]
    pub connect_timeout: f64,

    /// Seconds to wait after the last connection before measuring (lets the
    /// node's allocator and the kernel settle).
    #[arg(long, default_value_t = 2.0, env = "PACE_LOADTEST_SETTLE")]
    pub settle: f64,

    /// Source address for device sockets; repeat for several. Default, when
    /// every target is on IPv4 loopback: 127.0.0.2 … 127.0.0.9 (each brings
    /// its own ephemeral ports); otherwise the OS picks.
    #[arg(
        long = "source-ip",
        value_delimiter = ',',
        env = "PACE_LOADTEST_SOURCE_IP"
    )]
    pub source_ips: Vec<IpAddr>,

    /// Do not bind device sockets to a source address at all.
    #[arg(
        long,
        conflicts_with = "source_ips",
        env = "PACE_LOADTEST_NO_SOURCE_IP"
    )]
    pub no_source_ip: bool,

    /// PID of a node process under test; repeat for several. Memory and CPU
    /// then come from /proc (exact). Without it: each target's /metrics.
    #[arg(
        long = "node-pid",
        value_delimiter = ',',
        env = "PACE_LOADTEST_NODE_PID"
    )]
    pub node_pids: Vec<u32>,

    /// Device ids are PREFIX-RUN-INDEX.
    #[arg(long, default_value = "lt", env = "PACE_LOADTEST_DEVICE_PREFIX")]
    pub device_prefix: String,

    /// Read buffer per client WebSocket, bytes (allocated up front).
    #[arg(long, default_value_t = 4096, env = "PACE_LOADTEST_READ_BUFFER")]
    pub read_buffer: usize,

    /// Seconds to wait for every target's /ready before starting.
    #[arg(long, default_value_t = 10.0, env = "PACE_LOADTEST_READY_TIMEOUT")]
    pub ready_timeout: f64,

    /// Also write the report as JSON to this file.
    #[arg(long, env = "PACE_LOADTEST_JSON")]
    pub json: Option<PathBuf>,
}

/// `hold` options.
#[derive(Debug, Clone, Args)]
pub struct HoldArgs {
    /// Shared options.
    #[command(flatten)]
    pub fleet: FleetArgs,

    /// Seconds to keep the devices connected after measuring.
    #[arg(long = "hold", default_value_t = 10.0, env = "PACE_LOADTEST_HOLD")]
    pub hold_secs: f64,
}

/// `broadcast` options.
#[derive(Debug, Clone, Args)]
pub struct BroadcastArgs {
    /// Shared options.
    #[command(flatten)]
    pub fleet: FleetArgs,

    /// Notifications to send.
    #[arg(long, default_value_t = 20, env = "PACE_LOADTEST_MESSAGES")]
    pub messages: u32,

    /// Milliseconds between two notifications (from the first's send instant).
    #[arg(long, default_value_t = 500, env = "PACE_LOADTEST_INTERVAL_MS")]
    pub interval_ms: u64,

    /// Service key for POST /api/v1/notify (Authorization: Bearer KEY).
    #[arg(long, env = "PACE_SERVICE_KEY", hide_env_values = true)]
    pub service_key: String,

    /// Target that receives the POSTs (default: the first --target).
    #[arg(long, env = "PACE_LOADTEST_NOTIFY_TARGET")]
    pub notify_target: Option<String>,

    /// Extra bytes of padding in each notification's data.
    #[arg(long, default_value_t = 0, env = "PACE_LOADTEST_PAYLOAD_BYTES")]
    pub payload_bytes: usize,

    /// Seconds to wait, after the last POST, for every delivery.
    #[arg(long, default_value_t = 10.0, env = "PACE_LOADTEST_DRAIN_TIMEOUT")]
    pub drain_timeout: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn repeatable_targets_and_pids() {
        let cli = Cli::try_parse_from([
            "pace-loadtest",
            "hold",
            "--target",
            "http://127.0.0.1:1",
            "--target",
            "http://127.0.0.1:2,http://127.0.0.1:3",
            "--devices",
            "10",
            "--node-pid",
            "5",
            "--node-pid",
            "6",
            "--hold",
            "1.5",
        ])
        .unwrap();
        let Command::Hold(h) = cli.command else {
            panic!("not hold")
        };
        assert_eq!(h.fleet.targets.len(), 3);
        assert_eq!(h.fleet.node_pids, vec![5, 6]);
        assert_eq!(h.hold_secs, 1.5);
        assert_eq!(h.fleet.devices, 10);
    }

    #[test]
    fn broadcast_needs_a_service_key() {
        // Only checkable when the key is not supplied by the environment.
        if std::env::var_os("PACE_SERVICE_KEY").is_none() {
            let err = Cli::try_parse_from([
                "pace-loadtest",
                "broadcast",
                "--target",
                "http://127.0.0.1:1",
            ]);
            assert!(err.is_err());
        }
        let ok = Cli::try_parse_from([
            "pace-loadtest",
            "broadcast",
            "--target",
            "http://127.0.0.1:1",
            "--service-key",
            "k",
            "--messages",
            "3",
        ])
        .unwrap();
        let Command::Broadcast(b) = ok.command else {
            panic!("not broadcast")
        };
        assert_eq!(
            (b.messages, b.interval_ms, b.service_key.as_str()),
            (3, 500, "k")
        );
    }
}
