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
    /// Connect N devices, make them join a waiting room at a set rate, let
    /// admitted devices use their slot and release it: join rate and
    /// latency, admission order, capacity, position freshness, slot-free to
    /// admission latency, store commands per waiting device.
    Surge(SurgeArgs),
    /// A surge during which one node is killed (SIGKILL): devices whose
    /// connection drops reconnect with backoff and rejoin. Devices lost,
    /// time to reconnect, places lost, over-admissions, plus every surge
    /// figure.
    Failover(FailoverArgs),
    /// N devices wait in a paused room for a fixed time, each over its
    /// WebSocket and, at the same time, by polling its status over HTTP
    /// once per second: bytes on the wire per waiting device per minute,
    /// both ways, and the WebSocket's share of polling's.
    Overhead(OverheadArgs),
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

    /// Register every device first (`POST /api/v1/devices/register` on its
    /// target) and connect it with its device token (`Authorization:
    /// Bearer`), as a node without --insecure-anonymous-devices requires.
    /// Registration runs before the connect phase and counts in neither its
    /// rate nor its latency; a device whose registration fails is not
    /// connected and is reported as `register_failed`.
    #[arg(long, env = "PACE_LOADTEST_REGISTER")]
    pub register: bool,

    /// With --register: registrations in flight at most, over all workers.
    #[arg(long, default_value_t = 64, env = "PACE_LOADTEST_REGISTER_CONCURRENCY")]
    pub register_concurrency: usize,

    /// With --register: seconds the whole registration phase may take (one
    /// request may take --connect-timeout); devices not registered by then
    /// count as `register_failed`.
    #[arg(long, default_value_t = 120.0, env = "PACE_LOADTEST_REGISTER_TIMEOUT")]
    pub register_timeout: f64,

    /// Device ids are PREFIX-RUN-INDEX.
    #[arg(long, default_value = "lt", env = "PACE_LOADTEST_DEVICE_PREFIX")]
    pub device_prefix: String,

    /// Read buffer per client WebSocket, bytes (allocated up front).
    #[arg(long, default_value_t = 4096, env = "PACE_LOADTEST_READ_BUFFER")]
    pub read_buffer: usize,

    /// Device transport: `ws` (`GET /ws`, the WebSocket) or `sse` (`GET
    /// /stream`, the HTTP streaming fallback; idle and broadcast scenarios,
    /// not `surge`).
    #[arg(long, value_enum, default_value_t = crate::ipc::Transport::Ws, env = "PACE_LOADTEST_TRANSPORT")]
    pub transport: crate::ipc::Transport,

    /// Seconds to wait for every target's /ready before starting.
    #[arg(long, default_value_t = 10.0, env = "PACE_LOADTEST_READY_TIMEOUT")]
    pub ready_timeout: f64,

    /// Also write the report as JSON to this file.
    #[arg(long, env = "PACE_LOADTEST_JSON")]
    pub json: Option<PathBuf>,

    /// Also draw the latency distributions (CDF) and a timeline of the run
    /// (connections, waiting, active, …) into this SVG file.
    #[arg(long, env = "PACE_LOADTEST_SVG")]
    pub svg: Option<PathBuf>,
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

/// State the room is put in before the joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoomStateArg {
    /// Admits from the head while below capacity.
    Open,
    /// Accepts joins, admits nobody (the queue only builds).
    Paused,
}

impl RoomStateArg {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            RoomStateArg::Open => "open",
            RoomStateArg::Paused => "paused",
        }
    }
}

/// `surge` options.
#[derive(Debug, Clone, Args)]
pub struct SurgeArgs {
    /// Shared options.
    #[command(flatten)]
    pub fleet: FleetArgs,

    /// Room to create (PUT) and join. Default: surge-RUN (a fresh room).
    #[arg(long, env = "PACE_LOADTEST_ROOM")]
    pub room: Option<String>,

    /// Room capacity (sessions at once). 0 keeps every device waiting.
    #[arg(long, default_value_t = 100, env = "PACE_LOADTEST_CAPACITY")]
    pub capacity: u32,

    /// Session TTL of the room, seconds.
    #[arg(long, default_value_t = 300, env = "PACE_LOADTEST_SESSION_TTL")]
    pub session_ttl: u32,

    /// Most admissions per minute (default: no limit).
    #[arg(long, env = "PACE_LOADTEST_ADMIT_PER_MINUTE")]
    pub admit_per_minute: Option<u32>,

    /// Room state during the run (paused: everybody waits).
    #[arg(long, value_enum, default_value_t = RoomStateArg::Open, env = "PACE_LOADTEST_ROOM_STATE")]
    pub state: RoomStateArg,

    /// Target URL stored in the room.
    #[arg(
        long,
        default_value = "https://x.example/in",
        env = "PACE_LOADTEST_TARGET_URL"
    )]
    pub target_url: String,

    /// Joins per second, over all workers (after every device connected).
    #[arg(long, default_value_t = 1_000.0, env = "PACE_LOADTEST_JOIN_RATE")]
    pub join_rate: f64,

    /// Milliseconds an admitted device uses its slot before releasing it
    /// (POST /api/v1/sessions/release); 0 releases at once.
    #[arg(long, default_value_t = 1_000, env = "PACE_LOADTEST_HOLD_ADMITTED")]
    pub hold_admitted: u64,

    /// Spread each device's hold by a fixed pseudo-random 0..=MS more, so
    /// that releases fall at every phase of the admission tick (a fixed hold
    /// releases in step with the tick and measures one phase only).
    #[arg(long, default_value_t = 500, env = "PACE_LOADTEST_HOLD_JITTER")]
    pub hold_jitter: u64,

    /// Seconds to keep the devices in the room after the last join was
    /// answered (the window of the store-command count).
    #[arg(long = "hold", default_value_t = 0.0, env = "PACE_LOADTEST_HOLD")]
    pub hold_secs: f64,

    /// Seconds, after the hold, to wait for every device to be admitted and
    /// to release (only in an open room with capacity).
    #[arg(long, default_value_t = 120.0, env = "PACE_LOADTEST_DRAIN_TIMEOUT")]
    pub drain_timeout: f64,

    /// Seconds a join may wait for its answer.
    #[arg(long, default_value_t = 10.0, env = "PACE_LOADTEST_JOIN_TIMEOUT")]
    pub join_timeout: f64,

    /// The nodes' --admit-tick in ms: the tolerance of the admission-order
    /// check, and the yardstick of slot-free to admission latency.
    #[arg(long, default_value_t = 500, env = "PACE_LOADTEST_ADMIT_TICK_MS")]
    pub admit_tick_ms: u64,

    /// Poll the room's stats this often, ms.
    #[arg(long, default_value_t = 100, env = "PACE_LOADTEST_STATS_INTERVAL_MS")]
    pub stats_interval_ms: u64,

    /// Service key (Authorization: Bearer KEY) for the room and its stats.
    #[arg(long, env = "PACE_SERVICE_KEY", hide_env_values = true)]
    pub service_key: String,

    /// Where to create the room and poll its stats (default: the first
    /// --target).
    #[arg(long, env = "PACE_LOADTEST_ADMIN_TARGET")]
    pub admin_target: Option<String>,

    /// Redis of the cluster (redis://host:port, one server): INFO commandstats before
    /// and after the join phase and the hold give store commands per join
    /// and per waiting device per minute.
    #[arg(long, env = "PACE_LOADTEST_REDIS")]
    pub redis: Option<String>,

    /// Also write every device's raw record (JSON lines) to this file.
    #[arg(long, env = "PACE_LOADTEST_RECORDS")]
    pub records: Option<PathBuf>,

    /// After the run, wait up to this many seconds for the nodes to seal
    /// the room's audit log, export it and run `pace-node audit verify` on
    /// it (the store's own record of the admission order); 0 skips it.
    #[arg(long, default_value_t = 30, env = "PACE_LOADTEST_AUDIT_WAIT")]
    pub audit_wait: u64,

    /// The `pace-node` binary that verifies the log (default: beside this
    /// tool's binary, else on PATH).
    #[arg(long, env = "PACE_LOADTEST_VERIFIER")]
    pub verifier: Option<PathBuf>,
}

/// `failover` options.
#[derive(Debug, Clone, Args)]
pub struct FailoverArgs {
    /// The surge during which the node dies.
    #[command(flatten)]
    pub surge: SurgeArgs,

    /// PID of the node to kill with SIGKILL (it must be a pace-node
    /// process; nothing else is ever signalled).
    #[arg(long, env = "PACE_LOADTEST_KILL_PID")]
    pub kill_pid: u32,

    /// Seconds after the first join is due at which the node is killed.
    #[arg(long, default_value_t = 2.0, env = "PACE_LOADTEST_KILL_AFTER")]
    pub kill_after: f64,

    /// A gateway (http://host:port) devices reconnect through; without it
    /// a device reconnects to the next --target (and the one after, …).
    #[arg(long, env = "PACE_LOADTEST_GATEWAY")]
    pub gateway: Option<String>,

    /// Reconnect backoff base, ms: before attempt k a device waits a
    /// uniform random time in 0..min(max, base × 2^k) (full jitter).
    #[arg(long, default_value_t = 100, env = "PACE_LOADTEST_RECONNECT_BASE_MS")]
    pub reconnect_base_ms: u64,

    /// Reconnect backoff cap, ms.
    #[arg(long, default_value_t = 5_000, env = "PACE_LOADTEST_RECONNECT_MAX_MS")]
    pub reconnect_max_ms: u64,

    /// Seconds after its drop within which a device must be connected
    /// again; after that it gives up and counts as lost.
    #[arg(long, default_value_t = 30.0, env = "PACE_LOADTEST_RECONNECT_WITHIN")]
    pub reconnect_within: f64,

    /// The nodes' --redis-prefix (with --redis: every device's ticket is
    /// read before the kill and after the rejoins, and compared).
    #[arg(long, default_value = "pace", env = "PACE_LOADTEST_REDIS_PREFIX")]
    pub redis_prefix: String,
}

/// `overhead` options.
#[derive(Debug, Clone, Args)]
pub struct OverheadArgs {
    /// Shared options.
    #[command(flatten)]
    pub fleet: FleetArgs,

    /// Room to create (PUT, paused) and join. Default: overhead-RUN.
    #[arg(long, env = "PACE_LOADTEST_ROOM")]
    pub room: Option<String>,

    /// Seconds of the measured window (every device waiting, polling).
    #[arg(long, default_value_t = 60.0, env = "PACE_LOADTEST_DURATION")]
    pub duration: f64,

    /// Joins per second, over all workers.
    #[arg(long, default_value_t = 1_000.0, env = "PACE_LOADTEST_JOIN_RATE")]
    pub join_rate: f64,

    /// Milliseconds between two status polls of one device.
    #[arg(long, default_value_t = 1_000, env = "PACE_LOADTEST_POLL_INTERVAL_MS")]
    pub poll_interval_ms: u64,

    /// Request headers of each poll: `browser` (what Chrome sends for a
    /// same-origin fetch, no cookies) or `minimal` (Host only).
    #[arg(long, value_enum, default_value_t = PollHeadersArg::Browser, env = "PACE_LOADTEST_POLL_HEADERS")]
    pub poll_headers: PollHeadersArg,

    /// Room capacity: 0 keeps the room paused (the queue stands still, so
    /// the WebSocket carries only pings); C > 0 opens it with C slots, and
    /// each admitted device releases its slot after --hold-admitted ms, so
    /// the queue moves (≈ C admissions per hold + tick) and the WebSocket
    /// pushes the new positions. Admitted devices keep polling; their bytes
    /// stay in both totals.
    #[arg(long, default_value_t = 0, env = "PACE_LOADTEST_CAPACITY")]
    pub capacity: u32,

    /// Milliseconds an admitted device keeps its slot (with --capacity).
    #[arg(long, default_value_t = 1_000, env = "PACE_LOADTEST_HOLD_ADMITTED")]
    pub hold_admitted: u64,

    /// Seconds between the last join answered and the window's start
    /// (every poller has its connection open by then).
    #[arg(long, default_value_t = 3.0, env = "PACE_LOADTEST_WARMUP")]
    pub warmup: f64,

    /// Seconds a join may wait for its answer.
    #[arg(long, default_value_t = 10.0, env = "PACE_LOADTEST_JOIN_TIMEOUT")]
    pub join_timeout: f64,

    /// Service key (Authorization: Bearer KEY) to create the room.
    #[arg(long, env = "PACE_SERVICE_KEY", hide_env_values = true)]
    pub service_key: String,

    /// Where to create the room (default: the first --target).
    #[arg(long, env = "PACE_LOADTEST_ADMIN_TARGET")]
    pub admin_target: Option<String>,
}

/// `--poll-headers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PollHeadersArg {
    /// Browser-like (Chrome 124 fetch(), no cookies).
    Browser,
    /// Host only.
    Minimal,
}

impl From<PollHeadersArg> for crate::poller::PollHeaders {
    fn from(a: PollHeadersArg) -> Self {
        match a {
            PollHeadersArg::Browser => crate::poller::PollHeaders::Browser,
            PollHeadersArg::Minimal => crate::poller::PollHeaders::Minimal,
        }
    }
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
    fn register_is_a_fleet_option() {
        let cli = Cli::try_parse_from([
            "pace-loadtest",
            "hold",
            "--target",
            "http://127.0.0.1:1",
            "--register",
            "--register-concurrency",
            "8",
        ])
        .unwrap();
        let Command::Hold(h) = cli.command else {
            panic!("not hold")
        };
        assert!(h.fleet.register);
        assert_eq!(h.fleet.register_concurrency, 8);
        assert_eq!(h.fleet.register_timeout, 120.0);
    }

    #[test]
    fn surge_options() {
        let cli = Cli::try_parse_from([
            "pace-loadtest",
            "surge",
            "--target",
            "http://127.0.0.1:1",
            "--service-key",
            "k",
            "--capacity",
            "0",
            "--state",
            "paused",
            "--admit-per-minute",
            "60",
        ])
        .unwrap();
        let Command::Surge(s) = cli.command else {
            panic!("not surge")
        };
        assert_eq!(s.capacity, 0);
        assert_eq!(s.state, RoomStateArg::Paused);
        assert_eq!(s.admit_per_minute, Some(60));
        assert_eq!(s.hold_admitted, 1_000);
        assert_eq!(s.admit_tick_ms, 500);
        assert!(s.room.is_none() && s.redis.is_none());
    }

    #[test]
    fn failover_and_overhead_options() {
        let cli = Cli::try_parse_from([
            "pace-loadtest",
            "failover",
            "--target",
            "http://127.0.0.1:1,http://127.0.0.1:2",
            "--service-key",
            "k",
            "--kill-pid",
            "42",
            "--kill-after",
            "1.5",
            "--gateway",
            "http://127.0.0.1:3",
            "--svg",
            "x.svg",
        ])
        .unwrap();
        let Command::Failover(f) = cli.command else {
            panic!("not failover")
        };
        assert_eq!((f.kill_pid, f.kill_after), (42, 1.5));
        assert_eq!(f.gateway.as_deref(), Some("http://127.0.0.1:3"));
        assert_eq!(f.surge.fleet.targets.len(), 2);
        assert_eq!(f.surge.fleet.svg, Some(PathBuf::from("x.svg")));
        assert_eq!((f.reconnect_base_ms, f.reconnect_max_ms), (100, 5_000));
        assert_eq!(f.redis_prefix, "pace");
        let cli = Cli::try_parse_from([
            "pace-loadtest",
            "overhead",
            "--target",
            "http://127.0.0.1:1",
            "--service-key",
            "k",
            "--duration",
            "5",
            "--poll-headers",
            "minimal",
        ])
        .unwrap();
        let Command::Overhead(o) = cli.command else {
            panic!("not overhead")
        };
        assert_eq!(o.duration, 5.0);
        assert_eq!(o.poll_headers, PollHeadersArg::Minimal);
        assert_eq!(o.poll_interval_ms, 1_000);
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
