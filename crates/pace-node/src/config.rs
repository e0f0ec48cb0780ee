//! Command line and environment configuration.
//!
//! Every flag has an environment variable `PACE_…` and a default, so a node
//! runs with no configuration at all (`cargo run -p pace-node`) and a systemd
//! unit configures it from an environment file. [`ServeArgs::into_config`]
//! validates everything once and yields the [`NodeConfig`] the server uses;
//! `pace-node check-config` runs the same validation and exits.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use pace_gateway::GatewayCommand;

/// `pace-node`: one Pace node (a waiting room and notification server).
#[derive(Debug, Parser)]
#[command(name = "pace-node", version, about, long_about = None)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The node's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node (the default).
    Serve(ServeArgs),
    /// Validate the configuration (flags and PACE_* environment) and exit:
    /// 0 when it is valid, 2 with a message on stderr when it is not.
    CheckConfig(ServeArgs),
    /// Print the gateway configuration (Kong, HAProxy) for a set of nodes,
    /// or plan how devices spread over them.
    #[command(subcommand)]
    Gateway(GatewayCommand),
    /// Manage the admission signing keys (create, rotate, list, retire).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage tenants and their admin accounts in the configured store
    /// (the same --redis, --redis-prefix, --data-dir and PACE_* variables
    /// as serve). Exit codes: 0 done, 2 bad input or conflict, 1 store error.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Check a room's exported audit log (protocol.md, "Audit log").
    #[command(subcommand)]
    Audit(AuditCommand),
}

/// `pace-node audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify an export of `GET /api/v1/admin/rooms/{room}/log` (or the
    /// public `/api/v1/rooms/{room}/log`): the hash chain, the checkpoints'
    /// signatures against a JWKS, admissions in ticket order (Kendall tau,
    /// inversions listed) and capacity never exceeded. Prints a report
    /// naming every problem's line and entry. Exit codes: 0 verified, 1
    /// problems found, 2 a file cannot be read.
    Verify {
        /// The exported log (JSON Lines).
        file: std::path::PathBuf,
        /// The cluster's JWKS (`GET /.well-known/jwks.json`, as it was
        /// when the checkpoints were signed).
        #[arg(long, env = "PACE_AUDIT_JWKS")]
        jwks: std::path::PathBuf,
        /// Check this device's own entry: the join carrying the hash of
        /// this device id (its latest, or the one with --ticket).
        #[arg(long)]
        device: Option<String>,
        /// With --device: the ticket of the join to check.
        #[arg(long, requires = "device")]
        ticket: Option<u64>,
    },
}

/// `pace-node admin …` (see [`crate::accounts::cli`]).
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a tenant (with --update: change the name and origins given).
    AddTenant {
        /// Tenant id (1 to 64 of A-Z a-z 0-9 . _ : @ -).
        id: String,
        /// Name shown to people [default: the id].
        #[arg(long)]
        name: Option<String>,
        /// A browser origin the tenant's devices connect from
        /// (`https://host[:port]`); repeat for several.
        #[arg(long = "origin", value_name = "URL")]
        origins: Vec<String>,
        /// Change an existing tenant instead of failing.
        #[arg(long)]
        update: bool,
        #[command(flatten, next_help_heading = "Store (the serve flags)")]
        node: ServeArgs,
    },
    /// Create an admin user of a tenant; the password is the first line of
    /// standard input (at least 12 characters).
    AddUser {
        /// The tenant id.
        #[arg(long)]
        tenant: String,
        /// User name (1 to 64 of A-Z a-z 0-9 . _ : @ -).
        user: String,
        /// Set a new password if the user exists instead of failing.
        #[arg(long)]
        update: bool,
        #[command(flatten, next_help_heading = "Store (the serve flags)")]
        node: ServeArgs,
    },
    /// List tenants, their origins and their admin users (never passwords
    /// or hashes).
    List {
        #[command(flatten, next_help_heading = "Store (the serve flags)")]
        node: ServeArgs,
    },
    /// Acknowledge that the Redis store was wiped (`PaceStoreWiped`): lifts
    /// the refusal to register device ids without their token, which
    /// otherwise lasts until every token issued before the wipe expired.
    AcknowledgeStoreWipe {
        #[command(flatten, next_help_heading = "Store (the serve flags)")]
        node: ServeArgs,
    },
}

/// `pace-node keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Add a new key to the key set (creating the file, mode 0600, when
    /// missing). The new key signs from now on; older keys keep verifying
    /// until retired. Restart (rolling) the nodes to pick it up.
    Generate {
        /// The key set file.
        #[arg(long)]
        out: std::path::PathBuf,
        /// The new key's algorithm: `EdDSA` (Ed25519) or `ES256` (P-256, which
        /// Kong's jwt plugin and HAProxy's jwt_verify can check).
        #[arg(long, default_value = "EdDSA")]
        alg: crate::key_alg::KeyAlg,
        /// Publish the new key now but sign with it only after this delay
        /// (e.g. `1h`), so target sites fetch it from the JWKS before
        /// tokens signed with it reach them.
        #[arg(long, value_parser = humantime::parse_duration)]
        activate_in: Option<Duration>,
    },
    /// List the keys of a key set (kid, creation time, role).
    List {
        /// The key set file.
        file: std::path::PathBuf,
        /// Show roles for a cluster signing with this algorithm
        /// (`--admission-alg`) [default: the newest key of any algorithm signs].
        #[arg(long)]
        alg: Option<crate::key_alg::KeyAlg>,
    },
    /// Write the public key of every ES256 key as `DIR/<kid>.pem` (SPKI PEM)
    /// for the gateways: HAProxy's jwt_verify reads the files, `pace-node
    /// gateway … --admission-key KID=FILE` embeds them in Kong's config.
    ExportPem {
        /// The key set file.
        file: std::path::PathBuf,
        /// Directory to write `<kid>.pem` files into (created if missing).
        #[arg(long)]
        out_dir: std::path::PathBuf,
    },
    /// Remove a key: tokens it signed stop verifying.
    Retire {
        /// The key set file.
        file: std::path::PathBuf,
        /// The key id.
        kid: String,
    },
}

/// Flags of `serve` and `check-config`: the node's identity, then one
/// group per subsystem, each validating itself.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// This node's id in metrics, logs and the cluster list
    /// [default: "node-<port>-<random>"].
    #[arg(long, env = "PACE_NODE_ID")]
    pub node_id: Option<String>,

    /// Key that services send as `Authorization: Bearer KEY` to
    /// `POST /api/v1/notify` (at least 16 characters). When unset, the node
    /// makes a random one at start and prints it.
    #[arg(long, env = "PACE_SERVICE_KEY", hide_env_values = true)]
    pub service_key: Option<String>,

    #[command(flatten)]
    pub limits: LimitsArgs,

    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub rooms: RoomsArgs,

    #[command(flatten)]
    pub admission: AdmissionArgs,

    #[command(flatten)]
    pub devices: DevicesArgs,

    #[command(flatten)]
    pub accounts: AccountsArgs,

    #[command(flatten)]
    pub origins: OriginsArgs,

    #[command(flatten)]
    pub web: WebArgs,
}

/// Listening, connection limits, timeouts and logging (`--listen`, `--max-connections`, …).
#[derive(Debug, Clone, Args)]
pub struct LimitsArgs {
    /// Address to listen on for HTTP and WebSocket.
    #[arg(long, env = "PACE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Maximum simultaneous device connections on this node; further
    /// handshakes get 503 `node_full`. Keep it below the open-files limit.
    #[arg(long, env = "PACE_MAX_CONNECTIONS", default_value_t = 15_000)]
    pub max_connections: usize,

    /// Largest WebSocket message (and frame) a device may send, and largest
    /// HTTP request body, in bytes.
    #[arg(long, env = "PACE_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,

    /// Messages queued per connection before the device counts as a slow
    /// consumer and is disconnected (close 4001).
    #[arg(long, env = "PACE_SEND_QUEUE", default_value_t = 64)]
    pub send_queue: usize,

    /// Initial WebSocket read buffer per connection, in bytes. Small keeps
    /// idle devices cheap; it grows for larger messages.
    #[arg(long, env = "PACE_WS_READ_BUFFER", default_value_t = 512)]
    pub ws_read_buffer: usize,

    /// Bytes the WebSocket writer gathers before writing to the socket
    /// (0 writes every frame at once; batching is done by flushing).
    #[arg(long, env = "PACE_WS_WRITE_BUFFER", default_value_t = 0)]
    pub ws_write_buffer: usize,

    /// Most bytes a connection's WebSocket writer holds unsent (at least
    /// twice --max-message-bytes). A device that keeps sending pings
    /// without reading is closed with 4001 once the pongs it is owed pass
    /// this; memory per connection stays under it whatever a device sends.
    #[arg(long, env = "PACE_WS_MAX_WRITE_BUFFER", default_value_t = 256 * 1024)]
    pub ws_max_write_buffer: usize,

    /// Time allowed from TCP accept to complete HTTP request headers.
    #[arg(long, env = "PACE_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// How often the node pings each device.
    #[arg(long, env = "PACE_PING_INTERVAL", default_value = "25s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// How long a device has to answer a ping (or send anything) before it is
    /// dropped (close 4002).
    #[arg(long, env = "PACE_PING_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub ping_timeout: Duration,

    /// How often a device's HTTP stream (`GET /stream`, SSE) carries a
    /// keep-alive comment. Keep it below the gateway's idle timeout
    /// (HAProxy `timeout server`/`timeout tunnel`, Kong `read_timeout`).
    #[arg(long, env = "PACE_SSE_HEARTBEAT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub sse_heartbeat: Duration,

    /// How long one write to a device may block before the device counts as a
    /// slow consumer.
    #[arg(long, env = "PACE_WRITE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,

    /// On SIGTERM/SIGINT: how long to wait for devices to leave after telling
    /// them to reconnect (close 1012) before exiting anyway. Keep systemd's
    /// TimeoutStopSec longer than this.
    #[arg(long, env = "PACE_DRAIN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub drain_grace: Duration,

    /// On SIGTERM/SIGINT: how long to stay up, refusing new devices and
    /// answering `/ready` with 503, before telling connected devices to
    /// reconnect — time for the gateway's health check to take the node
    /// out, so reconnecting devices are not routed back to it.
    #[arg(long, env = "PACE_DRAIN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub drain_delay: Duration,

    /// Maximum groups (departments) one device may be in.
    #[arg(long, env = "PACE_MAX_GROUPS", default_value_t = 32)]
    pub max_groups: usize,

    /// Most WebSocket handshakes per source address per second on this node
    /// (0 = no limit); past it, 429 `too_many_handshakes`. High by default:
    /// whole enterprises share one NAT address. Behind a gateway, set
    /// --trusted-proxy so the address comes from X-Forwarded-For.
    #[arg(long, env = "PACE_HANDSHAKES_PER_ADDRESS", default_value_t = 2000)]
    pub handshakes_per_address: u32,

    /// Most connections one source address may hold open on this node
    /// before they are upgraded to a WebSocket (waiting for headers, in a
    /// handshake, or plain HTTP) (0 = no limit). Past it a new connection
    /// is closed at once (an HTTP request on it gets 429
    /// `too_many_pending`). High by default: a NAT address can be thousands
    /// of devices. Behind --trusted-proxy the proxy's own connections are
    /// not capped; each forwarded address is, while its handshake runs.
    #[arg(long, env = "PACE_MAX_PENDING_PER_ADDRESS", default_value_t = 1000)]
    pub max_pending_per_address: u32,

    /// Open-file descriptors the accept loop never spends on new
    /// connections: kept for the store, files, logs, and health checks and
    /// the admin (which shed the oldest connection not yet upgraded).
    #[arg(long, env = "PACE_FD_RESERVE", default_value_t = 128)]
    pub fd_reserve: u32,

    /// Log filter (tracing `EnvFilter` syntax), e.g. `info,pace_node=debug`.
    #[arg(long, env = "PACE_LOG", default_value = "info")]
    pub log: String,
}

/// The shared store, the cluster bus and notification history (`--redis`, `--redis-prefix`, `--data-dir`, …).
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Redis URL: one Redis (`redis://[user:password@]host:port[/db]`,
    /// `rediss://` for TLS) or a Redis Cluster, listing several seeds
    /// (`redis-cluster://host1:port1?node=host2:port2&node=host3:port3`).
    /// Without it the node runs alone on the embedded in-memory store.
    #[arg(long = "redis", env = "PACE_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key and channel (several clusters may share
    /// one Redis with different prefixes).
    #[arg(long, env = "PACE_REDIS_PREFIX", default_value = "pace")]
    pub redis_prefix: String,

    /// Cluster bus messages buffered between the Redis client and the bus
    /// reader; past this they are dropped and counted
    /// (`pace_bus_dropped_total`).
    #[arg(long, env = "PACE_BUS_BUFFER", default_value_t = 4096)]
    pub bus_buffer: usize,

    /// Longest one store command may take before the operation fails with a
    /// retryable error.
    #[arg(long, env = "PACE_STORE_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub store_timeout: Duration,

    #[command(flatten)]
    pub store_write_replicas: WriteReplicas,

    /// Notifications kept per scope (all, each group, each device) for
    /// devices that reconnect and resume.
    #[arg(long, env = "PACE_HISTORY_MAX_LEN", default_value_t = 1000)]
    pub history_max_len: usize,

    /// Oldest notification kept per scope, by age; a device away for longer
    /// is told `recovered: false` when it resumes.
    #[arg(long, env = "PACE_HISTORY_MAX_AGE", default_value = "1h", value_parser = humantime::parse_duration)]
    pub history_max_age: Duration,

    /// Notifications kept in the cluster's bus log, from which a node that
    /// missed pub/sub messages (Redis reconnect, buffer overflow) repairs
    /// the gap; a longer gap makes its devices reconnect and resume.
    #[arg(long, env = "PACE_BUS_LOG_LEN", default_value_t = 10_000)]
    pub bus_log_len: usize,

    /// A node that has not heart-beaten for this long leaves the cluster
    /// list; nodes heart-beat four times per period.
    #[arg(long, env = "PACE_NODE_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub node_ttl: Duration,

    /// Address other nodes and operators reach this node on (shown in the
    /// cluster list) [default: the listen address].
    #[arg(long, env = "PACE_ADVERTISE")]
    pub advertise: Option<String>,

    /// Directory for node-local data (the generated key set).
    #[arg(long, env = "PACE_DATA_DIR", default_value = "pace-data")]
    pub data_dir: std::path::PathBuf,
}

/// Waiting rooms: the admission tick, positions, join limits and the audit log.
#[derive(Debug, Clone, Args)]
pub struct RoomsArgs {
    /// How often this node runs the admission tick of every room and pushes
    /// near-head positions.
    #[arg(long, env = "PACE_ADMIT_TICK", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub admit_tick: Duration,

    /// How often every waiting device on this node gets its exact position
    /// and its heartbeat is written to the store (at most 10 s).
    #[arg(long, env = "PACE_POSITION_REFRESH", default_value = "5s", value_parser = humantime::parse_duration)]
    pub position_refresh: Duration,

    /// A waiting device unseen (no connection heart-beating its place) for
    /// longer than this loses its place.
    #[arg(long, env = "PACE_HEARTBEAT_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub heartbeat_grace: Duration,

    /// How often the rooms' audit logs get a signed checkpoint over the
    /// entries since the last one (any node may seal; one wins).
    #[arg(long, env = "PACE_AUDIT_SEAL_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub audit_seal_interval: Duration,

    /// How long audit-log entries are kept: older ones are dropped up to a
    /// checkpoint, which stays as the anchor of the rest.
    #[arg(long, env = "PACE_AUDIT_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub audit_retention: Duration,

    /// Most `join`/`solve` attempts per device per minute on this node
    /// (0 = no limit); past it, `too_many_joins`.
    #[arg(long, env = "PACE_JOINS_PER_MINUTE", default_value_t = 30)]
    pub joins_per_minute: u32,

    /// Most places one verified user (device tokens that carry a user)
    /// may hold per room, over all their devices (0 = no limit); past it,
    /// `too_many_places`.
    #[arg(long, env = "PACE_MAX_PLACES_PER_USER", default_value_t = 3)]
    pub max_places_per_user: u32,
}

/// The signing keys of admission (and device, admin, proof-of-work) tokens.
#[derive(Debug, Clone, Args)]
pub struct AdmissionArgs {
    /// Admission signing keys (JSON key set; `pace-node keys generate`
    /// creates or rotates it) [default: <data-dir>/keys.json, created on
    /// first run].
    #[arg(long, env = "PACE_KEYS")]
    pub keys: Option<std::path::PathBuf>,

    /// Algorithm of the keys that sign admission (and device, admin,
    /// proof-of-work) tokens: `EdDSA` or `ES256`. Keys of the other
    /// algorithm in the key set still verify (a migration's overlap); the
    /// node refuses to start when the key set has no key of this algorithm.
    /// ES256 lets the gateway (Kong's jwt plugin, HAProxy's jwt_verify)
    /// check admissions itself.
    #[arg(long, env = "PACE_ADMISSION_ALG", default_value = "EdDSA")]
    pub admission_alg: crate::key_alg::KeyAlg,

    /// `iss` claim of admission tokens.
    #[arg(long, env = "PACE_TOKEN_ISSUER", default_value = "pace")]
    pub token_issuer: String,
}

/// Device identity (device tokens, external issuers) and resuming.
#[derive(Debug, Clone, Args)]
pub struct DevicesArgs {
    /// Accept devices without a device token (development and load tests
    /// only: anyone knowing a device id can then take its place). The node
    /// says so loudly at start and in `pace_insecure_anonymous_devices`.
    #[arg(long, env = "PACE_INSECURE_ANONYMOUS_DEVICES")]
    pub insecure_anonymous_devices: bool,

    /// Lifetime of the device tokens this node issues at registration.
    #[arg(long, env = "PACE_DEVICE_TOKEN_TTL", default_value = "30days", value_parser = humantime::parse_duration)]
    pub device_token_ttl: Duration,

    /// JWKS file of an enterprise's device token issuer: its tokens are
    /// accepted too, their `sub` being the device id. Needs
    /// --device-token-issuer and --device-token-audience.
    #[arg(long, env = "PACE_DEVICE_TOKEN_JWKS")]
    pub device_token_jwks: Option<std::path::PathBuf>,

    /// Expected `iss` of the external issuer's device tokens.
    #[arg(long, env = "PACE_DEVICE_TOKEN_ISSUER")]
    pub device_token_issuer: Option<String>,

    /// Expected `aud` of the external issuer's device tokens.
    #[arg(long, env = "PACE_DEVICE_TOKEN_AUDIENCE")]
    pub device_token_audience: Option<String>,

    /// The tenant the external issuer's devices belong to (their groups
    /// are that tenant's: `<tenant>:<name>`). Without it they have no
    /// tenant and only untenanted groups.
    #[arg(long, env = "PACE_DEVICE_TOKEN_TENANT")]
    pub device_token_tenant: Option<String>,

    /// The claim of the external issuer's device tokens that lists the
    /// groups (departments) the device may join: a JSON array of names,
    /// or one space- or comma-separated string.
    #[arg(long, env = "PACE_DEVICE_TOKEN_GROUPS_CLAIM", default_value = "groups")]
    pub device_token_groups_claim: String,

    /// How long a connection that announced a resume (`?resume=1`) holds
    /// live notifications back waiting for its `resume` frame, so replayed
    /// ones come first.
    #[arg(long, env = "PACE_RESUME_HOLD", default_value = "5s", value_parser = humantime::parse_duration)]
    pub resume_hold: Duration,
}

/// Admin accounts.
#[derive(Debug, Clone, Args)]
pub struct AccountsArgs {
    /// Lifetime of the admin tokens `POST /api/v1/admin/login` hands out
    /// (1s to 24h).
    #[arg(long, env = "PACE_ADMIN_TOKEN_TTL", default_value = "15m", value_parser = humantime::parse_duration)]
    pub admin_token_ttl: Duration,
}

/// Who may call the node: browser origins (CORS) and trusted gateways.
#[derive(Debug, Clone, Args)]
pub struct OriginsArgs {
    /// A browser origin (`https://host[:port]`) whose pages may use the
    /// device WebSocket and the device REST endpoints (CORS) for every
    /// tenant; repeat or separate with commas. `null` (sandboxed iframes,
    /// `file://`) is refused unless listed literally. The node's own
    /// origin is always allowed; a tenant adds its own with
    /// `pace-node admin add-tenant --origin`.
    #[arg(
        long = "allowed-origin",
        env = "PACE_ALLOWED_ORIGINS",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub allowed_origins: Vec<String>,

    /// Address (or CIDR range) of a gateway whose X-Forwarded-For is
    /// believed; repeat or separate with commas. The device's address is
    /// the right-most X-Forwarded-For entry not from a trusted proxy.
    #[arg(long = "trusted-proxy", env = "PACE_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_net)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// The pages the node serves (the demo room).
#[derive(Debug, Clone, Args)]
pub struct WebArgs {
    /// Create the `demo` room (capacity 2, 60 s sessions, target: this
    /// node's demo page) at start when it does not exist.
    #[arg(long, env = "PACE_DEMO_ROOM", default_value_t = true, action = clap::ArgAction::Set)]
    pub demo_room: bool,

    /// The tenant the demo room is created for, so that tenant's admins
    /// steer it from the console (`/admin`); without it the demo room has
    /// no owner and only the service key changes it.
    #[arg(long, env = "PACE_DEMO_TENANT")]
    pub demo_tenant: Option<String>,
}

impl ServeArgs {
    /// The serve arguments from the environment alone (no subcommand given).
    pub fn from_env() -> Result<ServeArgs, clap::Error> {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            args: ServeArgs,
        }
        Only::try_parse_from(["pace-node"]).map(|o| o.args)
    }

    /// Validates the arguments into the configuration the node runs with.
    pub fn into_config(self) -> Result<NodeConfig, ConfigError> {
        let ServeArgs {
            node_id,
            service_key,
            limits,
            store,
            rooms,
            admission,
            devices,
            accounts,
            mut origins,
            web,
        } = self;
        if let Some(key) = &service_key
            && key.len() < 16
        {
            return bad("--service-key / PACE_SERVICE_KEY must be at least 16 characters".into());
        }
        limits.validate()?;
        if let Some(id) = &node_id
            && pace_protocol::DeviceId::parse(id).is_err()
        {
            return bad("--node-id may only contain A-Z a-z 0-9 . _ : @ - (1 to 128 bytes)".into());
        }
        store.validate()?;
        accounts.validate()?;
        rooms.validate()?;
        web.validate()?;
        devices.validate()?;
        origins.validate()?;
        admission.validate()?;
        let node_id = node_id.unwrap_or_else(|| {
            let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
            format!("node-{}-{suffix}", limits.listen.port())
        });
        let (service_key, service_key_generated) = match service_key {
            Some(k) => (k, false),
            None => (uuid::Uuid::new_v4().simple().to_string(), true),
        };
        Ok(NodeConfig {
            node_id,
            service_key,
            service_key_generated,
            open_files: open_files_limit(),
            limits,
            store,
            rooms,
            admission,
            devices,
            accounts,
            origins,
            web,
        })
    }

    /// Validates only the store flags (`--redis`, `--redis-prefix`,
    /// `--data-dir`, `--store-timeout`), for `pace-node admin`, which must
    /// not fail on limits that only matter to a serving node.
    pub fn store_settings(&self) -> Result<StoreSettings, ConfigError> {
        self.store.validate_connection()?;
        Ok(self.store.clone())
    }
}

fn bad<T>(msg: String) -> Result<T, ConfigError> {
    Err(ConfigError(msg))
}

impl LimitsArgs {
    /// Checks the connection limits, buffers, timeouts and the log filter.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return bad("--max-connections must be at least 1".into());
        }
        if let Some(limit) = open_files_limit()
            && self.max_connections as u64 + FD_HEADROOM > limit
        {
            return bad(format!(
                "--max-connections {} needs about {} open files but this process may open {limit}; \
                 lower it or raise LimitNOFILE",
                self.max_connections,
                self.max_connections as u64 + FD_HEADROOM
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.max_message_bytes) {
            return bad("--max-message-bytes must be between 1024 and 16777216".into());
        }
        if self.send_queue == 0 {
            return bad("--send-queue must be at least 1".into());
        }
        if self.ws_read_buffer < 64 {
            return bad("--ws-read-buffer must be at least 64 bytes".into());
        }
        if self.ws_max_write_buffer < self.max_message_bytes.saturating_mul(2)
            || self.ws_max_write_buffer <= self.ws_write_buffer
        {
            return bad(format!(
                "--ws-max-write-buffer must be at least twice --max-message-bytes ({}) and above \
                 --ws-write-buffer",
                self.max_message_bytes.saturating_mul(2)
            ));
        }
        if self.fd_reserve < 96 {
            return bad(
                "--fd-reserve must be at least 96 (the store, files, and 64 refused connections \
                 being answered)"
                    .into(),
            );
        }
        if let Some(limit) = open_files_limit()
            && u64::from(self.fd_reserve) + 64 > limit
        {
            return bad(format!(
                "--fd-reserve {} leaves fewer than 64 of this process's {limit} open files for connections",
                self.fd_reserve
            ));
        }
        for (name, d) in [
            ("--handshake-timeout", self.handshake_timeout),
            ("--ping-interval", self.ping_interval),
            ("--ping-timeout", self.ping_timeout),
            ("--sse-heartbeat", self.sse_heartbeat),
            ("--write-timeout", self.write_timeout),
        ] {
            if d.is_zero() {
                return bad(format!("{name} must be greater than zero"));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            return bad(format!("--log: {e}"));
        }
        Ok(())
    }
}

impl StoreArgs {
    /// Checks what opening the store needs (`--redis`, `--redis-prefix`,
    /// `--store-timeout`): all `pace-node admin` checks.
    pub fn validate_connection(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.redis_url
            && let Err(e) = check_redis_url(url)
        {
            return bad(format!("--redis / PACE_REDIS_URL: {e}"));
        }
        if !valid_redis_prefix(&self.redis_prefix) {
            return bad(
                "--redis-prefix may only contain A-Z a-z 0-9 - _ and must not be empty".into(),
            );
        }
        if self.store_timeout.is_zero() {
            return bad("--store-timeout must be > 0".into());
        }
        Ok(())
    }

    /// Checks every store, bus and history flag.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bus_buffer < 16 {
            return bad("--bus-buffer must be at least 16".into());
        }
        if self.store_timeout.is_zero() || self.node_ttl < Duration::from_secs(1) {
            return bad("--store-timeout must be > 0 and --node-ttl at least 1s".into());
        }
        self.validate_connection()?;
        if self.history_max_len == 0 || self.history_max_age < Duration::from_secs(1) {
            return bad("--history-max-len must be > 0 and --history-max-age at least 1s".into());
        }
        if self.bus_log_len < 16 {
            return bad("--bus-log-len must be at least 16".into());
        }
        Ok(())
    }

    /// How much history each scope keeps (`--history-max-len`,
    /// `--history-max-age`).
    pub fn history(&self) -> HistoryLimits {
        HistoryLimits {
            max_len: self.history_max_len,
            max_age: self.history_max_age,
        }
    }
}

impl RoomsArgs {
    /// Checks the ticks and the audit log's intervals.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.admit_tick.is_zero()
            || self.position_refresh.is_zero()
            || self.position_refresh > Duration::from_secs(10)
        {
            return bad(
                "--admit-tick must be > 0 and --position-refresh between 1ms and 10s".into(),
            );
        }
        if self.audit_seal_interval < Duration::from_millis(10)
            || self.audit_retention < self.audit_seal_interval
        {
            return bad(
                "--audit-seal-interval must be at least 10ms and --audit-retention at least the seal interval"
                    .into(),
            );
        }
        if self.heartbeat_grace <= self.position_refresh {
            return bad("--heartbeat-grace must be longer than --position-refresh".into());
        }
        Ok(())
    }
}

impl AdmissionArgs {
    /// Nothing to check beyond parsing (the key set is read at start).
    pub fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

impl DevicesArgs {
    /// Checks the device token flags.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(tenant) = &self.device_token_tenant
            && let Err(e) = crate::names::TenantId::parse(tenant)
        {
            return bad(format!("--device-token-tenant: {e}"));
        }
        if self.device_token_groups_claim.is_empty() {
            return bad("--device-token-groups-claim must name a claim".into());
        }
        if self.device_token_ttl < Duration::from_secs(60) {
            return bad("--device-token-ttl must be at least 1m".into());
        }
        if self.device_token_jwks.is_some()
            && (self
                .device_token_issuer
                .as_deref()
                .unwrap_or_default()
                .is_empty()
                || self
                    .device_token_audience
                    .as_deref()
                    .unwrap_or_default()
                    .is_empty())
        {
            return bad(
                "--device-token-jwks needs --device-token-issuer and --device-token-audience"
                    .into(),
            );
        }
        if self.resume_hold.is_zero() || self.resume_hold > Duration::from_secs(60) {
            return bad("--resume-hold must be between 1ms and 60s".into());
        }
        Ok(())
    }
}

impl AccountsArgs {
    /// Checks the admin token lifetime.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.admin_token_ttl < Duration::from_secs(1)
            || self.admin_token_ttl > Duration::from_secs(24 * 3600)
        {
            return bad("--admin-token-ttl must be between 1s and 24h".into());
        }
        Ok(())
    }
}

impl OriginsArgs {
    /// Checks and normalises the origins ([`crate::names::normalize_origin`],
    /// or `null`; no duplicates).
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        match cluster_origins(&self.allowed_origins) {
            Ok(o) => {
                self.allowed_origins = o;
                Ok(())
            }
            Err(e) => bad(format!("--allowed-origin / PACE_ALLOWED_ORIGINS: {e}")),
        }
    }
}

impl WebArgs {
    /// Checks the demo room's tenant.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(tenant) = &self.demo_tenant
            && let Err(e) = crate::names::TenantId::parse(tenant)
        {
            return bad(format!("--demo-tenant: {e}"));
        }
        Ok(())
    }
}

/// The cluster-wide origins: each normalised, or the literal `null`;
/// empty entries (an empty `PACE_ALLOWED_ORIGINS`) skipped, duplicates
/// dropped.
fn cluster_origins(raw: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for o in raw.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
        let o = if o == crate::names::NULL_ORIGIN {
            o.to_owned()
        } else {
            crate::names::normalize_origin(o).map_err(|e| e.to_string())?
        };
        if !out.contains(&o) {
            out.push(o);
        }
    }
    Ok(out)
}

/// An address (`10.0.0.1`, a /32 or /128) or a CIDR range (`10.0.0.0/24`).
fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or CIDR range"))
}

/// Where the shared state lives: what `pace-node admin` needs of the
/// serve flags (validated by [`ServeArgs::store_settings`]).
pub type StoreSettings = StoreArgs;

fn valid_redis_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// File descriptors kept free beyond device connections (listener, logs,
/// store connections, HTTP API clients).
const FD_HEADROOM: u64 = 256;

/// The soft open-files limit of this process, from `/proc/self/limits`.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// An invalid configuration, with a message naming the flag.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

/// The validated configuration a node runs with: the flag groups, each
/// validated (the origins normalised), and the values derived from them.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id (`--node-id`, or generated).
    pub node_id: String,
    /// Bearer key for service calls (`--service-key`, or generated).
    pub service_key: String,
    /// Whether `service_key` was generated (printed at start so it is usable).
    pub service_key_generated: bool,
    /// The process's open-files limit when the node started (None: not
    /// known), for the descriptor budget of the accept loop.
    pub open_files: Option<u64>,
    /// See [`LimitsArgs`].
    pub limits: LimitsArgs,
    /// See [`StoreArgs`].
    pub store: StoreArgs,
    /// See [`RoomsArgs`].
    pub rooms: RoomsArgs,
    /// See [`AdmissionArgs`].
    pub admission: AdmissionArgs,
    /// See [`DevicesArgs`].
    pub devices: DevicesArgs,
    /// See [`AccountsArgs`].
    pub accounts: AccountsArgs,
    /// See [`OriginsArgs`]: `allowed_origins` normalised.
    pub origins: OriginsArgs,
    /// See [`WebArgs`].
    pub web: WebArgs,
}

impl NodeConfig {
    /// Defaults, as `pace-node serve` with no flags and no environment would
    /// use (for tests and embedding).
    pub fn defaults() -> NodeConfig {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            args: ServeArgs,
        }
        let args = Only::parse_from(["pace-node"]).args;
        // The defaults are valid by construction; an invalid environment
        // variable is ignored here because this is for tests and embedding.
        args.into_config()
            .unwrap_or_else(|e| panic!("defaults must be valid: {e}"))
    }
}

/// How much history each scope keeps: both bounds apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Most notifications kept per scope.
    pub max_len: usize,
    /// Oldest notification kept, by age.
    pub max_age: std::time::Duration,
}

impl Default for HistoryLimits {
    fn default() -> HistoryLimits {
        HistoryLimits {
            max_len: 1000,
            max_age: std::time::Duration::from_secs(3600),
        }
    }
}

/// Checks a Redis URL without connecting (for `check-config`).
pub fn check_redis_url(url: &str) -> Result<(), String> {
    const SCHEMES: [&str; 4] = [
        "redis://",
        "rediss://",
        "redis-cluster://",
        "redis-sentinel://",
    ];
    if !SCHEMES.iter().any(|s| url.starts_with(s)) {
        return Err(format!("must start with one of {}", SCHEMES.join(", ")));
    }
    fred::types::config::Config::from_url(url)
        .map(|_| ())
        .map_err(|e| e.details().to_string())
}

/// `--store-write-replicas`: how many replicas must acknowledge a write
/// that must survive a failover (a notification, a join, an admission
/// tick, a room's config) before it is answered, by Redis `WAIT` on the connection that
/// wrote it. The trade-off is in docs/operations.md ("Redis replicas and
/// WAIT").
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct WriteReplicas {
    /// Redis replicas that must acknowledge a notification, a join, an
    /// admission tick or a room's config (Redis `WAIT`) before it is
    /// answered; 0 does not
    /// wait. Fewer acknowledgements within --store-write-replicas-timeout
    /// fail the operation with 503 `store_unavailable` (the master may
    /// still hold the write: see docs/operations.md).
    #[arg(
        long = "store-write-replicas",
        env = "PACE_STORE_WRITE_REPLICAS",
        default_value_t = 0
    )]
    pub replicas: u32,
    /// Longest a write waits for those acknowledgements (keep it below
    /// --store-timeout).
    #[arg(long = "store-write-replicas-timeout", env = "PACE_STORE_WRITE_REPLICAS_TIMEOUT", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

impl Default for WriteReplicas {
    fn default() -> WriteReplicas {
        WriteReplicas {
            replicas: 0,
            timeout: Duration::from_millis(500),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<NodeConfig, String> {
        let mut full = vec!["pace-node", "check-config"];
        full.extend_from_slice(args);
        match Cli::try_parse_from(full)
            .map_err(|e| e.to_string())?
            .command
        {
            Some(Command::CheckConfig(a)) => a.into_config().map_err(|e| e.to_string()),
            other => Err(format!("unexpected {other:?}")),
        }
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.limits.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.limits.max_message_bytes, 65536);
        assert!(c.service_key_generated);
        assert!(c.node_id.starts_with("node-8080-"));
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        assert!(
            parse(&["--service-key", "short"])
                .unwrap_err()
                .contains("--service-key")
        );
        assert!(
            parse(&["--send-queue", "0"])
                .unwrap_err()
                .contains("--send-queue")
        );
        assert!(
            parse(&["--ping-timeout", "0s"])
                .unwrap_err()
                .contains("--ping-timeout")
        );
        assert!(
            parse(&["--max-connections", "100000000"])
                .unwrap_err()
                .contains("open files")
        );
        assert!(
            parse(&["--node-id", "has space"])
                .unwrap_err()
                .contains("--node-id")
        );
        assert!(
            parse(&["--demo-tenant", "not a tenant"])
                .unwrap_err()
                .contains("--demo-tenant")
        );
        assert!(
            parse(&["--audit-retention", "1s", "--audit-seal-interval", "5s"])
                .unwrap_err()
                .contains("--audit-retention")
        );
        assert!(parse(&["--demo-tenant", "acme"]).is_ok());
        assert!(parse(&["--listen", "nonsense"]).is_err());
        assert!(parse(&["--handshake-timeout", "ten"]).is_err());
        assert!(
            parse(&["--redis", "http://nope"])
                .unwrap_err()
                .contains("--redis")
        );
        assert!(
            parse(&["--redis-prefix", "a:b"])
                .unwrap_err()
                .contains("--redis-prefix")
        );
        assert!(parse(&["--redis", "redis://127.0.0.1:6390/2"]).is_ok());
    }

    #[test]
    fn the_hostile_client_bounds_are_checked() {
        let c = parse(&[]).unwrap();
        assert_eq!(
            (
                c.limits.ws_max_write_buffer,
                c.limits.max_pending_per_address,
                c.limits.fd_reserve
            ),
            (256 * 1024, 1000, 128)
        );
        // A legitimate notification must always fit the write buffer.
        assert!(
            parse(&["--max-message-bytes", "200000"])
                .unwrap_err()
                .contains("--ws-max-write-buffer")
        );
        assert!(
            parse(&[
                "--max-message-bytes",
                "200000",
                "--ws-max-write-buffer",
                "400000"
            ])
            .is_ok()
        );
        assert!(
            parse(&["--ws-write-buffer", "300000"])
                .unwrap_err()
                .contains("--ws-max-write-buffer")
        );
        assert!(
            parse(&["--fd-reserve", "10"])
                .unwrap_err()
                .contains("--fd-reserve")
        );
        assert!(
            parse(&["--max-pending-per-address", "0"]).is_ok(),
            "no limit"
        );
    }

    #[test]
    fn allowed_origins_are_normalised() {
        assert!(parse(&[]).unwrap().origins.allowed_origins.is_empty());
        let c = parse(&[
            "--allowed-origin",
            "HTTPS://Shop.Example, null",
            "--allowed-origin",
            "http://localhost:8080/",
            "--allowed-origin",
            "https://shop.example",
        ])
        .unwrap();
        assert_eq!(
            c.origins.allowed_origins,
            ["https://shop.example", "null", "http://localhost:8080"]
        );
        for bad in ["*", "shop.example", "https://shop.example/path", "NULL"] {
            let e = parse(&["--allowed-origin", bad]).unwrap_err();
            assert!(e.contains("--allowed-origin"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_admission_algorithm_is_eddsa_unless_es256_is_asked() {
        assert_eq!(
            parse(&[]).unwrap().admission.admission_alg,
            crate::key_alg::KeyAlg::EdDsa
        );
        assert_eq!(
            parse(&["--admission-alg", "ES256"])
                .unwrap()
                .admission
                .admission_alg,
            crate::key_alg::KeyAlg::Es256
        );
        for bad in ["HS256", "none", "RS256"] {
            assert!(parse(&["--admission-alg", bad]).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn durations_use_human_units() {
        let c = parse(&["--ping-interval", "1500ms", "--drain-grace", "1m"]).unwrap();
        assert_eq!(c.limits.ping_interval, Duration::from_millis(1500));
        assert_eq!(c.limits.drain_grace, Duration::from_secs(60));
        assert_eq!(c.accounts.admin_token_ttl, Duration::from_secs(15 * 60));
        let c = parse(&["--admin-token-ttl", "5m"]).unwrap();
        assert_eq!(c.accounts.admin_token_ttl, Duration::from_secs(300));
        assert!(
            parse(&["--admin-token-ttl", "2d"])
                .unwrap_err()
                .contains("--admin-token-ttl")
        );
    }
}
