//! `pace-node gateway <kong|haproxy|plan>`: the clap definitions the node
//! binary mounts as a subcommand, and [`execute`], which turns them into a
//! rendered config or a plan written to the given output.

use std::io::Write;
use std::path::PathBuf;

use crate::haproxy::{DEFAULT_BIND, HaproxyOptions};
use crate::kong::{DEFAULT_UPSTREAM_NAME, KongOptions};
use crate::plan::{numbered_device_ids, plan, read_device_ids};
use crate::protect::{AdmissionKey, Protection};
use crate::{GatewayError, Node, Topology};

/// `pace-node gateway <kong|haproxy|plan> ...`
#[derive(Debug, clap::Subcommand)]
pub enum GatewayCommand {
    /// Print the Kong declarative config (decK format 3.0) for these nodes.
    Kong(KongArgs),
    /// Print the equivalent HAProxy config (labs and CI).
    Haproxy(HaproxyArgs),
    /// Predict how Kong spreads device ids over the nodes, and how many move
    /// when a node is removed or added.
    Plan(PlanArgs),
}

/// The pace-node targets, shared by every gateway subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct NodesArgs {
    /// A pace-node as HOST:PORT; repeat for each node (at least one).
    #[arg(
        long = "node",
        value_name = "HOST:PORT",
        required = true,
        env = "PACE_GATEWAY_NODES",
        value_delimiter = ','
    )]
    pub nodes: Vec<String>,

    /// Target weights, comma-separated, one per --node in the same order
    /// (default 100 each). A node's share of the ring is proportional to it.
    #[arg(long, value_name = "W1,W2,...", env = "PACE_GATEWAY_WEIGHTS")]
    pub weights: Option<String>,
}

impl NodesArgs {
    /// The validated topology.
    pub fn topology(&self) -> Result<Topology, GatewayError> {
        Topology::from_args(&self.nodes, self.weights.as_deref())
    }
}

/// The protected site: admissions enforced at the gateway.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Protected site (admission enforced at the gateway)")]
pub struct ProtectArgs {
    /// Path prefix of the site to protect on the public host, e.g. /shop/:
    /// requests under it reach --site only with a valid admission token for
    /// --room; everyone else is redirected (302) to /r/{room}.
    #[arg(
        long,
        value_name = "PREFIX",
        env = "PACE_GATEWAY_PROTECT",
        requires_all = ["room", "site", "admission_keys"]
    )]
    pub protect: Option<String>,

    /// The room whose admissions open the protected site (the tokens' aud).
    #[arg(long, env = "PACE_GATEWAY_ROOM", requires = "protect")]
    pub room: Option<String>,

    /// The protected site's HOST:PORT.
    #[arg(
        long,
        value_name = "HOST:PORT",
        env = "PACE_GATEWAY_SITE",
        requires = "protect"
    )]
    pub site: Option<String>,

    /// A published ES256 key as KID=PEM-FILE (the lines `pace-node keys
    /// export-pem` prints); repeat for each key (two during a rotation).
    /// A key id is a JWK thumbprint (base64url), so it may begin with `-`.
    #[arg(
        long = "admission-key",
        value_name = "KID=FILE",
        allow_hyphen_values = true,
        env = "PACE_GATEWAY_ADMISSION_KEYS",
        value_delimiter = ',',
        requires = "protect"
    )]
    pub admission_keys: Vec<String>,

    /// The tokens' iss (the nodes' --token-issuer).
    #[arg(long, default_value = "pace", env = "PACE_GATEWAY_ISSUER")]
    pub issuer: String,

    /// Leave `Secure` off the admission cookie (labs on plain HTTP only).
    #[arg(long, env = "PACE_GATEWAY_INSECURE_COOKIE")]
    pub insecure_cookie: bool,
}

impl ProtectArgs {
    /// The validated protection, or `None` without `--protect`. Reads the
    /// key files.
    pub fn protection(&self) -> Result<Option<Protection>, GatewayError> {
        let Some(prefix) = &self.protect else {
            return Ok(None);
        };
        let missing =
            |flag: &str| GatewayError::InvalidProtection(format!("--protect needs {flag}"));
        let room = self.room.clone().ok_or_else(|| missing("--room"))?;
        let site = Node::parse(self.site.as_deref().ok_or_else(|| missing("--site"))?)?;
        let keys = self
            .admission_keys
            .iter()
            .map(|k| AdmissionKey::from_arg(k))
            .collect::<Result<Vec<_>, _>>()?;
        let protection = Protection {
            prefix: prefix.clone(),
            room,
            site,
            issuer: self.issuer.clone(),
            keys,
            secure_cookie: !self.insecure_cookie,
        };
        protection.validate()?;
        Ok(Some(protection))
    }
}

/// `pace-node gateway kong`
#[derive(Debug, Clone, clap::Args)]
pub struct KongArgs {
    #[command(flatten)]
    pub nodes: NodesArgs,

    #[command(flatten)]
    pub protect: ProtectArgs,

    /// Name of the Kong upstream (the service's host).
    #[arg(long, default_value = DEFAULT_UPSTREAM_NAME, env = "PACE_GATEWAY_UPSTREAM_NAME")]
    pub upstream_name: String,

    /// Slots of the consistent-hashing ring (Kong accepts 10..=65536).
    #[arg(long, default_value_t = crate::DEFAULT_SLOTS, env = "PACE_GATEWAY_SLOTS")]
    pub slots: u32,
}

/// `pace-node gateway haproxy`
#[derive(Debug, Clone, clap::Args)]
pub struct HaproxyArgs {
    #[command(flatten)]
    pub nodes: NodesArgs,

    /// Public listener, HOST:PORT.
    #[arg(long, default_value = DEFAULT_BIND, env = "PACE_GATEWAY_BIND")]
    pub bind: String,

    /// Optional private listener for HAProxy's stats page (/stats) and
    /// Prometheus metrics (/metrics), HOST:PORT.
    #[arg(long, env = "PACE_GATEWAY_STATS_BIND")]
    pub stats_bind: Option<String>,

    /// Global connection ceiling (each device holds one WebSocket). Default:
    /// derived by HAProxy from the file-descriptor limit; a fixed value needs
    /// about twice as many descriptors or HAProxy refuses to start.
    #[arg(long, env = "PACE_GATEWAY_MAXCONN")]
    pub maxconn: Option<u32>,

    /// Idle timeout of requests and responses, seconds (`timeout client`
    /// and `timeout server`); a device's HTTP stream sends a keep-alive
    /// comment every 15 s (the node's --sse-heartbeat), so keep it above.
    #[arg(long, value_name = "SECONDS", default_value_t = crate::haproxy::DEFAULT_IDLE_TIMEOUT_SECS, value_parser = clap::value_parser!(u32).range(1..), env = "PACE_GATEWAY_IDLE_TIMEOUT")]
    pub idle_timeout: u32,

    /// Lab and CI only: refuse WebSocket upgrades (403), as a strict
    /// corporate proxy does, to exercise the HTTP stream fallback.
    #[arg(long)]
    pub deny_websocket: bool,

    #[command(flatten)]
    pub protect: ProtectArgs,
}

/// `pace-node gateway plan`
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("population").required(true).args(["devices", "ids"])))]
pub struct PlanArgs {
    #[command(flatten)]
    pub nodes: NodesArgs,

    /// Slots of the ring, as configured on the Kong upstream.
    #[arg(long, default_value_t = crate::DEFAULT_SLOTS, env = "PACE_GATEWAY_SLOTS")]
    pub slots: u32,

    /// Plan for device ids device-1 … device-N.
    #[arg(long, value_name = "N")]
    pub devices: Option<usize>,

    /// Plan for the device ids in FILE, one per line.
    #[arg(long, value_name = "FILE")]
    pub ids: Option<PathBuf>,

    /// Also show what adding this node (HOST:PORT, default weight) moves.
    #[arg(long, value_name = "HOST:PORT")]
    pub add: Option<String>,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs a gateway subcommand, writing its output to `out`.
pub fn execute(cmd: &GatewayCommand, out: &mut dyn Write) -> Result<(), GatewayError> {
    let text = match cmd {
        GatewayCommand::Kong(args) => {
            let options = KongOptions {
                upstream_name: args.upstream_name.clone(),
                slots: args.slots,
                protect: args.protect.protection()?,
            };
            crate::render_kong(&args.nodes.topology()?, &options)?
        }
        GatewayCommand::Haproxy(args) => {
            let options = HaproxyOptions {
                bind: args.bind.clone(),
                stats_bind: args.stats_bind.clone(),
                maxconn: args.maxconn,
                protect: args.protect.protection()?,
                idle_timeout_secs: args.idle_timeout,
                deny_websocket: args.deny_websocket,
            };
            crate::render_haproxy(&args.nodes.topology()?, &options)?
        }
        GatewayCommand::Plan(args) => {
            let topology = args.nodes.topology()?;
            let ids = match (&args.ids, args.devices) {
                (Some(path), _) => read_device_ids(path)?,
                (None, Some(0)) | (None, None) => return Err(GatewayError::NoDevices),
                (None, Some(n)) => numbered_device_ids(n),
            };
            let add = args.add.as_deref().map(Node::parse).transpose()?;
            let plan = plan(&topology, args.slots, &ids, add.as_ref())?;
            if args.json {
                let mut json = plan.to_json()?;
                json.push('\n');
                json
            } else {
                plan.to_table()
            }
        }
    };
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: GatewayCommand,
    }

    fn run(args: &[&str]) -> Result<String, GatewayError> {
        let cli =
            Cli::try_parse_from(std::iter::once("gateway").chain(args.iter().copied())).unwrap();
        let mut out = Vec::new();
        execute(&cli.cmd, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn clap_definitions_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn kong_and_haproxy_render() {
        let kong = run(&[
            "kong",
            "--node",
            "127.0.0.1:8081",
            "--node",
            "127.0.0.1:8082",
            "--slots",
            "2000",
        ])
        .unwrap();
        assert!(kong.contains("slots: 2000"));
        let ha = run(&[
            "haproxy",
            "--node",
            "127.0.0.1:8081",
            "--bind",
            "127.0.0.1:9000",
        ])
        .unwrap();
        assert!(ha.contains("bind 127.0.0.1:9000"));
    }

    /// Key ids are base64url thumbprints: one in 64 begins with `-`, and
    /// the line `keys export-pem` prints for it must still parse.
    #[test]
    fn an_admission_key_id_may_begin_with_a_hyphen() {
        let cli = Cli::try_parse_from([
            "gateway",
            "haproxy",
            "--node",
            "127.0.0.1:8081",
            "--protect",
            "/shop/",
            "--room",
            "sale",
            "--site",
            "127.0.0.1:9",
            "--admission-key",
            "-pX3a_b=/etc/pace/k.pem",
        ])
        .expect("a key id starting with '-' is a value");
        let GatewayCommand::Haproxy(args) = cli.cmd else {
            panic!("haproxy")
        };
        assert_eq!(args.protect.admission_keys, ["-pX3a_b=/etc/pace/k.pem"]);
    }

    #[test]
    fn plan_needs_a_population_and_refuses_zero() {
        assert!(Cli::try_parse_from(["gateway", "plan", "--node", "127.0.0.1:8081"]).is_err());
        assert!(matches!(
            run(&["plan", "--node", "127.0.0.1:8081", "--devices", "0"]),
            Err(GatewayError::NoDevices)
        ));
    }

    #[test]
    fn protect_needs_its_room_site_and_keys_and_reads_the_pems() {
        let base = ["gateway", "haproxy", "--node", "127.0.0.1:8081"];
        let with = |extra: &[&str]| {
            Cli::try_parse_from(base.iter().chain(extra.iter()).copied()).map(|_| ())
        };
        assert!(with(&["--protect", "/shop/"]).is_err());
        assert!(
            with(&[
                "--protect",
                "/shop/",
                "--room",
                "sale",
                "--site",
                "127.0.0.1:9"
            ])
            .is_err()
        );
        assert!(
            with(&["--room", "sale"]).is_err(),
            "--room without --protect"
        );

        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("k1.pem");
        std::fs::write(&pem, crate::protect::tests::PEM).unwrap();
        let key = format!("k1={}", pem.display());
        let args = [
            "haproxy",
            "--node",
            "127.0.0.1:8081",
            "--protect",
            "/shop/",
            "--room",
            "sale",
            "--site",
            "127.0.0.1:9090",
            "--admission-key",
            &key,
        ];
        let cfg = run(&args).unwrap();
        assert!(cfg.contains("backend pace_site"));
        assert!(cfg.contains("; Secure\""), "Secure by default");
        let kong = run(&[&["kong"], &args[1..]].concat()).unwrap();
        assert!(kong.contains("rsa_public_key"));
        // A missing PEM file is an error naming it.
        let missing = format!("k1={}", dir.path().join("nope.pem").display());
        let mut bad = args;
        bad[10] = &missing;
        assert!(matches!(run(&bad), Err(GatewayError::ReadKey { .. })));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(run(&["kong", "--node", "nonsense"]).is_err());
        assert!(run(&["kong", "--node", "127.0.0.1:1", "--weights", "1,2"]).is_err());
        assert!(
            run(&[
                "plan",
                "--node",
                "127.0.0.1:1",
                "--devices",
                "5",
                "--add",
                "127.0.0.1:1"
            ])
            .is_err()
        );
    }
}
