//! `device`: a command-line Pace device agent.
//!
//! Joins rooms and groups and prints everything that arrives, reconnecting
//! like a real device. With `--check` it is the tool IT runs on a machine
//! behind their firewall or proxy to see whether a device gets through:
//! does the `x-device-id` header reach the node, is the WebSocket upgrade
//! allowed, does the HTTP stream (the fallback) work, which transport
//! devices end up on, does the connection survive idle periods.
//!
//! Before connecting it gets a device token: the one stored in the token
//! file (`--token-file`, next to the id file), refreshed when close to
//! expiry, or a new registration (`POST /api/v1/devices/register`). It
//! prints which. `--token` uses a given token instead; `--no-register`
//! connects without one (nodes started with `--insecure-anonymous-devices`).
//!
//! ```sh
//! cargo run -p pace-device --example device -- --url http://127.0.0.1:8080 --room demo --group it
//! cargo run -p pace-device --features tls --example device -- --url wss://pace.example.com --check --hold 2m
//! cargo run -p pace-device --example device -- --url http://127.0.0.1:8080 --status demo
//! ```
//!
//! Exit codes: 0 fine; 1 could not register or connect, or the client stopped; 2 bad
//! usage; 3 (`--check`) connected only through the `device_id` query
//! fallback because the header was stripped; 4 (`--check --hold`) the
//! connection dropped while idle.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use pace_device::{
    Client, Closed, Config, Credentials, CredentialsError, DeviceInfo, DeviceType, Disconnect,
    Event, Obtained, TokenStore, TransportPolicy, ensure_token, load_or_create_device_id,
};
use pace_protocol::{DeviceId, ErrorCode, GroupId, RoomId};

/// A Pace device: connects, joins rooms and groups, prints what arrives.
#[derive(Debug, Parser)]
#[command(name = "device", version, about)]
struct Args {
    /// Base URL of the cluster (gateway or node): http, https, ws or wss.
    /// Repeat to give several; the device moves to the next on reconnect.
    #[arg(long = "url", env = "PACE_URL", required = true, value_delimiter = ',')]
    urls: Vec<String>,

    /// Device id to use [default: the one stored in --id-file, created on
    /// first use as `<type>_<uuid>`].
    #[arg(long, env = "PACE_DEVICE_ID")]
    device_id: Option<String>,

    /// File keeping this machine's device id.
    #[arg(long, env = "PACE_DEVICE_ID_FILE", default_value = "pace-device-id")]
    id_file: PathBuf,

    /// Device token to use as is (no registration, no renewal).
    #[arg(long, env = "PACE_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// File keeping this device's token [default: `<id-file>.token`, or
    /// `<device-id>.token` beside the id file with --device-id].
    #[arg(long, env = "PACE_DEVICE_TOKEN_FILE")]
    token_file: Option<PathBuf>,

    /// Connect without a device token (nodes started with
    /// --insecure-anonymous-devices).
    #[arg(long, conflicts_with_all = ["token", "token_file"])]
    no_register: bool,

    /// Person using the device, sent when registering.
    #[arg(long)]
    user: Option<String>,

    /// Tenant the device registers with (must exist on the node).
    #[arg(long)]
    tenant: Option<String>,

    /// Department(s) sent in the x-department-id header (repeat or comma-separate).
    #[arg(long = "department", value_delimiter = ',')]
    departments: Vec<String>,

    /// Room(s) to wait in (repeat or comma-separate).
    #[arg(long = "room", value_delimiter = ',')]
    rooms: Vec<String>,

    /// Group(s) to subscribe to (repeat or comma-separate).
    #[arg(long = "group", value_delimiter = ',')]
    groups: Vec<String>,

    /// Ceiling of the first reconnect delay.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    backoff_min: Duration,

    /// Longest reconnect delay.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    backoff_max: Duration,

    /// Time allowed for TCP + TLS + WebSocket handshake, and for `welcome`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,

    /// On first connect, replay the device's own notification history.
    #[arg(long)]
    replay_device_history: bool,

    /// Check connectivity (header, WebSocket upgrade) and exit.
    #[arg(long)]
    check: bool,

    /// With --check: keep the connection this long and report if it drops
    /// (proxies that cut idle WebSockets), e.g. `2m`.
    #[arg(long, value_parser = humantime::parse_duration)]
    hold: Option<Duration>,

    /// Print the device's status in this room (HTTP, no WebSocket) and exit.
    #[arg(long, conflicts_with = "check")]
    status: Option<String>,

    /// Exit after this many notifications.
    #[arg(long)]
    exit_after: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("device: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("device: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let device_id = match &args.device_id {
        Some(id) => DeviceId::parse(id).map_err(|e| anyhow::anyhow!("--device-id {e}"))?,
        None => load_or_create_device_id(&args.id_file, DeviceType::detect())?,
    };
    let token_store = match (&args.token_file, &args.device_id) {
        (Some(path), _) => TokenStore::new(path.clone()),
        (None, None) => TokenStore::next_to(&args.id_file),
        // Not the id file's device: keep its token apart.
        (None, Some(_)) => TokenStore::new(
            args.id_file
                .parent()
                .unwrap_or(Path::new(""))
                .join(format!("{device_id}.token")),
        ),
    };
    let mut urls = args.urls.iter();
    let first = urls.next().context("--url is required")?;
    let mut config = Config::new(first.clone(), device_id)
        .with_backoff(args.backoff_min, args.backoff_max)
        .with_departments(parse_all(
            &args.departments,
            GroupId::parse,
            "--department",
        )?);
    for url in urls {
        config = config.with_url(url.clone());
    }
    config.connect_timeout = args.connect_timeout;
    config.replay_device_history_on_first_connect = args.replay_device_history;
    let rooms = parse_all(&args.rooms, RoomId::parse, "--room")?;
    let groups = parse_all(&args.groups, GroupId::parse, "--group")?;

    if let Some(t) = &args.token {
        config = config.with_token(t.clone());
    } else if !args.no_register {
        let mut info = DeviceInfo::detect(&config.device_id, env!("CARGO_PKG_VERSION"));
        info.department = config.departments.first().cloned();
        info.user = args.user.clone();
        info.tenant = args.tenant.clone();
        let creds = Credentials::new(info, token_store);
        let Some(token) = obtain_token(&config, &creds).await else {
            return Ok(ExitCode::from(1));
        };
        // With the credentials, the client renews a token the node refuses.
        config = config.with_token(token).with_credentials(creds);
    }

    if let Some(room) = &args.status {
        let room = RoomId::parse(room).map_err(|e| anyhow::anyhow!("--status {e}"))?;
        return match pace_device::status::room_status(&config, &room).await {
            Ok(status) => {
                println!("{status:?}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                println!("status failed: {e}");
                Ok(ExitCode::from(1))
            }
        };
    }
    if args.check {
        return check(config, args.hold).await;
    }
    listen(config, rooms, groups, args.exit_after).await
}

/// The stored, refreshed or new device token, with what happened printed;
/// `None` (after saying why) when there is none.
async fn obtain_token(config: &Config, creds: &Credentials) -> Option<String> {
    let path = creds.store.path().display();
    let expiry = |at: u64| {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(at)).to_string()
    };
    match ensure_token(config, creds).await {
        Ok((token, how)) => {
            let what = match how {
                Obtained::Stored => format!("using the stored token from {path}"),
                Obtained::Registered => {
                    format!(
                        "registered device {}; token saved in {path}",
                        token.device_id
                    )
                }
                Obtained::Refreshed => format!("refreshed the token; saved in {path}"),
            };
            println!("token: {what} (expires {})", expiry(token.expires_at));
            Some(token.token)
        }
        Err(CredentialsError::NotSaved {
            token,
            obtained,
            source,
        }) => {
            println!(
                "token: {obtained}, but NOT saved ({source}); connecting with it (expires {}), fix the file before it must be refreshed",
                expiry(token.expires_at)
            );
            Some(token.token)
        }
        Err(e) => {
            println!("token: registration failed: {e}");
            if e.is_retryable() {
                println!("       (the node could not be reached or is busy: try again later)");
            }
            None
        }
    }
}

/// Connects, joins, and prints events until stopped.
async fn listen(
    config: Config,
    rooms: Vec<RoomId>,
    groups: Vec<GroupId>,
    exit_after: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    println!(
        "device {} connecting to {}",
        config.device_id,
        config.urls.join(", ")
    );
    let (client, mut events) = Client::connect(config)?;
    for g in groups {
        client.subscribe(g).await?;
    }
    for r in rooms {
        client.join(r).await?;
    }
    let mut notifications = 0u64;
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = tokio::signal::ctrl_c() => {
                client.close().await;
                continue;
            }
        };
        let Some(event) = event else {
            return Ok(ExitCode::from(1));
        };
        let t = start.elapsed().as_secs_f64();
        match event {
            Event::Connected { url, welcome } => println!(
                "[{t:9.3}s] connected via {url} to node {} (device {}, groups {:?}, ping every {} ms)",
                welcome.node_id, welcome.device_id, welcome.groups, welcome.heartbeat_interval_ms
            ),
            Event::Queue(q) => println!(
                "[{t:9.3}s] queue {}: position {} of {} ({}), eta {}",
                q.room,
                q.position,
                q.waiting_total,
                q.state,
                q.eta_seconds
                    .map_or_else(|| "unknown".to_owned(), |s| format!("{s} s"))
            ),
            Event::Admitted(a) => println!(
                "[{t:9.3}s] ADMITTED to {}: {} (until {})",
                a.room, a.target_url, a.expires_at
            ),
            Event::Notification(n) => {
                notifications += 1;
                println!(
                    "[{t:9.3}s] notification {} {}{} #{}: {} {}",
                    n.id,
                    n.scope.as_str(),
                    n.target.map(|t| format!(":{t}")).unwrap_or_default(),
                    n.seq,
                    n.event,
                    n.data
                );
                if exit_after.is_some_and(|n| notifications >= n) {
                    client.close().await;
                }
            }
            Event::Resumed { recovered, scopes } => {
                let detail: Vec<String> = scopes
                    .iter()
                    .map(|s| {
                        format!(
                            "{}{} +{}{}",
                            s.cursor.scope.as_str(),
                            s.cursor
                                .target
                                .as_deref()
                                .map(|t| format!(":{t}"))
                                .unwrap_or_default(),
                            s.replayed,
                            s.reason
                                .as_deref()
                                .map(|r| format!(" ({r})"))
                                .unwrap_or_default()
                        )
                    })
                    .collect();
                println!(
                    "[{t:9.3}s] resumed: {} [{}]",
                    if recovered {
                        "nothing missed"
                    } else {
                        "SOME HISTORY LOST, resync"
                    },
                    detail.join(", ")
                );
            }
            Event::Challenge(c) => println!(
                "[{t:9.3}s] room {} asks for proof of work (difficulty {}); solving",
                c.room, c.difficulty
            ),
            Event::TokenRenewed {
                obtained,
                expires_at,
            } => println!(
                "[{t:9.3}s] the node refused the device token; {obtained} a new one (expires at {expires_at})"
            ),
            Event::Subscribed(g) => println!("[{t:9.3}s] subscribed to {g}"),
            Event::Unsubscribed(g) => println!("[{t:9.3}s] unsubscribed from {g}"),
            Event::Left(r) => println!("[{t:9.3}s] left {r}"),
            Event::Error { code, message } => {
                println!(
                    "[{t:9.3}s] node refused a frame: {} {message}",
                    code.as_str()
                )
            }
            Event::Reconnecting {
                attempt,
                delay,
                next_url,
                reason,
            } => println!(
                "[{t:9.3}s] {reason}; reconnecting to {next_url} in {} ms (attempt {attempt})",
                delay.as_millis()
            ),
            Event::Closed(why) => {
                println!("[{t:9.3}s] stopped: {why}");
                return Ok(if why == Closed::ByClient {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                });
            }
            other => println!("[{t:9.3}s] {other:?}"),
        }
    }
}

/// What the first attempt of a connection gave.
enum Outcome {
    Connected(String),
    HeaderMissing,
    Failed(String),
}

/// One connection attempt: its outcome, and the client when connected.
async fn attempt(
    config: Config,
) -> anyhow::Result<(Outcome, Option<(Client, pace_device::Events)>)> {
    let (client, mut events) = Client::connect(config)?;
    loop {
        let Some(event) = events.recv().await else {
            return Ok((Outcome::Failed("client stopped".into()), None));
        };
        match event {
            Event::Connected { url, welcome } => {
                let what = format!(
                    "{url} → node {} accepted device {} (ping every {} ms)",
                    welcome.node_id, welcome.device_id, welcome.heartbeat_interval_ms
                );
                return Ok((Outcome::Connected(what), Some((client, events))));
            }
            Event::Closed(Closed::Refused {
                status: 400,
                error: Some(e),
            }) if e.code == ErrorCode::MissingDeviceId => {
                return Ok((Outcome::HeaderMissing, None));
            }
            Event::Closed(why) => return Ok((Outcome::Failed(why.to_string()), None)),
            Event::Reconnecting { reason, .. } => {
                client.close().await;
                return Ok((Outcome::Failed(reason.to_string()), None));
            }
            _ => {}
        }
    }
}

/// `--check`: header first (no query fallback), then header + query, then
/// optionally hold the connection.
async fn check(config: Config, hold: Option<Duration>) -> anyhow::Result<ExitCode> {
    println!(
        "checking {} as device {}",
        config.urls.join(", "),
        config.device_id
    );
    let mut header_only = config.clone();
    header_only.send_device_id_query = false;
    let header_ok = match attempt(header_only).await?.0 {
        Outcome::Connected(what) => {
            println!("ok    x-device-id header reaches the node: {what}");
            true
        }
        Outcome::HeaderMissing => {
            println!(
                "WARN  the x-device-id header was removed on the way (a proxy strips it); \
                 devices fall back to the device_id query parameter"
            );
            false
        }
        Outcome::Failed(why) => {
            println!("FAIL  cannot connect: {why}");
            println!(
                "      (blocked port, proxy refusing WebSocket upgrades, TLS interception, or wrong URL)"
            );
            return Ok(ExitCode::from(1));
        }
    };
    // Each transport on its own, then the client as devices run it.
    let mut ws_ok = false;
    for policy in [TransportPolicy::WebSocket, TransportPolicy::Stream] {
        let (outcome, client) = attempt(config.clone().with_transport(policy)).await?;
        if let Some((client, _)) = client {
            client.close().await;
        }
        match (policy, outcome) {
            (TransportPolicy::WebSocket, Outcome::Connected(what)) => {
                ws_ok = true;
                println!("ok    WebSocket upgrade allowed: {what}");
            }
            (TransportPolicy::WebSocket, other) => println!(
                "WARN  WebSocket refused ({}); devices fall back to the HTTP stream",
                describe(&other)
            ),
            (_, Outcome::Connected(what)) => println!("ok    HTTP stream (/stream) works: {what}"),
            (_, other) => println!("WARN  HTTP stream (/stream) failed: {}", describe(&other)),
        }
    }
    let (outcome, client) = attempt(config).await?;
    let Outcome::Connected(what) = outcome else {
        if let Outcome::Failed(why) = outcome {
            println!("FAIL  cannot connect with the query fallback either: {why}");
        }
        return Ok(ExitCode::from(1));
    };
    let Some((client, mut events)) = client else {
        return Ok(ExitCode::from(1));
    };
    println!(
        "ok    devices connect over: {} ({what}){}",
        client.transport(),
        if ws_ok {
            ""
        } else {
            "; the WebSocket is tried again every 5 minutes"
        }
    );
    let mut code = if header_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    };
    if let Some(hold) = hold {
        println!(
            "      holding the connection for {}…",
            humantime::format_duration(hold)
        );
        let deadline = tokio::time::sleep(hold);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => {
                    println!("ok    the connection stayed up for {}", humantime::format_duration(hold));
                    break;
                }
                e = events.recv() => match e {
                    Some(Event::Reconnecting { reason, .. }) => {
                        println!("FAIL  the connection dropped while idle: {reason}");
                        if matches!(reason, Disconnect::HeartbeatLost | Disconnect::Lost(_)) {
                            println!("      (a proxy or firewall may cut idle WebSockets; its idle timeout must exceed the node's ping interval)");
                        }
                        code = ExitCode::from(4);
                        break;
                    }
                    Some(Event::Closed(why)) => {
                        println!("FAIL  stopped: {why}");
                        return Ok(ExitCode::from(4));
                    }
                    Some(_) => {}
                    None => break,
                },
            }
        }
    }
    client.close().await;
    Ok(code)
}

/// An outcome that is not a connection, in words.
fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Connected(what) => format!("connected: {what}"),
        Outcome::HeaderMissing => "the x-device-id header was stripped".to_owned(),
        Outcome::Failed(why) => why.clone(),
    }
}

fn parse_all<T, E: std::fmt::Display>(
    values: &[String],
    parse: impl Fn(&str) -> Result<T, E>,
    flag: &str,
) -> anyhow::Result<Vec<T>> {
    values
        .iter()
        .filter(|v| !v.is_empty())
        .map(|v| parse(v.trim()).map_err(|e| anyhow::anyhow!("{flag} {v:?}: {e}")))
        .collect()
}
