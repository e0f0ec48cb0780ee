//! The HAProxy configuration equivalent to the Kong one, used in labs and CI
//! (Debian's HAProxy 2.6+): the same device-id key (header, then query
//! parameter), consistent hashing, `/ready` health checks, WebSocket-length
//! tunnel timeouts and the same public paths. The hash function differs from
//! Kong's, so a given device may land on another node than under Kong; the
//! properties Pace relies on — stickiness and minimal movement — are the same.
//!
//! With a [`Protection`] it also fronts the protected site: a `pace_site`
//! backend that verifies admission tokens with `jwt_verify` (ES256, one PEM
//! per published kid) and checks `aud`, `iss` and `exp` before the site sees
//! a request, redirecting everyone else to the waiting page.

use crate::protect::{
    COOKIE, DEVICE_HEADER, GATEWAY_ALG, Protection, RENEW_HEADER, TOKEN_QUERY_ARG,
};
use crate::topology::{DEVICE_ID_HEADER, DEVICE_ID_QUERY_ARG, PUBLIC_PATH_PREFIXES};
use crate::{GatewayError, Node, Topology};

/// Default public listener.
pub const DEFAULT_BIND: &str = "127.0.0.1:8000";

/// Default idle timeout (client and server), seconds.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u32 = 60;

/// HAProxy's largest server weight.
const MAX_HAPROXY_WEIGHT: u32 = 256;

/// Knobs of the generated HAProxy config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxyOptions {
    /// `HOST:PORT` the public frontend listens on.
    pub bind: String,
    /// Optional `HOST:PORT` for the stats page (`/stats`) and HAProxy's own
    /// Prometheus metrics (`/metrics`); keep it private.
    pub stats_bind: Option<String>,
    /// Global connection ceiling (every device holds one WebSocket). `None`
    /// lets HAProxy derive it from the file-descriptor limit, which always
    /// starts; a fixed value needs about twice as many descriptors
    /// (`LimitNOFILE`), or HAProxy refuses to start.
    pub maxconn: Option<u32>,
    /// The protected site, if the gateway enforces admissions for one.
    pub protect: Option<Protection>,
    /// Idle timeout of requests and responses in seconds (`timeout client`,
    /// `timeout server`): what a device's HTTP stream (`/stream`) must
    /// stay under with its keep-alive comments (the node's
    /// `--sse-heartbeat`, 15 s).
    pub idle_timeout_secs: u32,
    /// Lab knob: refuse WebSocket upgrades (403), as a strict corporate
    /// proxy does; devices then fall back to the HTTP stream.
    pub deny_websocket: bool,
}

impl Default for HaproxyOptions {
    fn default() -> Self {
        HaproxyOptions {
            bind: DEFAULT_BIND.to_owned(),
            stats_bind: None,
            maxconn: None,
            protect: None,
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
            deny_websocket: false,
        }
    }
}

/// Renders `haproxy.cfg` for a topology.
pub fn render_haproxy(
    topology: &Topology,
    options: &HaproxyOptions,
) -> Result<String, GatewayError> {
    check_bind(&options.bind)?;
    if let Some(stats) = &options.stats_bind {
        check_bind(stats)?;
    }
    let nodes: Vec<String> = topology
        .nodes()
        .iter()
        .map(|n| format!("--node {}", n.address()))
        .collect();
    let max_weight = topology.nodes().iter().map(|n| n.weight).max().unwrap_or(1);
    let paths = PUBLIC_PATH_PREFIXES.join(" ");
    let hdr = DEVICE_ID_HEADER;
    let arg = DEVICE_ID_QUERY_ARG;
    let mut extra_flags = String::new();
    if let Some(stats) = &options.stats_bind {
        extra_flags.push_str(&format!(" --stats-bind {stats}"));
    }
    if let Some(protect) = &options.protect {
        protect.validate()?;
        extra_flags.push_str(&format!(
            " --protect {} --room {} --site {} --issuer {}",
            protect.prefix,
            protect.room,
            protect.site.address(),
            protect.issuer
        ));
        for key in &protect.keys {
            extra_flags.push_str(&format!(
                " --admission-key {}={}",
                key.kid,
                key.pem_path.display()
            ));
        }
        if !protect.secure_cookie {
            extra_flags.push_str(" --insecure-cookie");
        }
    }
    let idle = options.idle_timeout_secs.max(1);
    if idle != DEFAULT_IDLE_TIMEOUT_SECS {
        extra_flags.push_str(&format!(" --idle-timeout {idle}"));
    }
    let deny_websocket = if options.deny_websocket {
        extra_flags.push_str(" --deny-websocket");
        "    # Lab: a strict proxy that refuses WebSocket upgrades (devices fall\n    # back to the HTTP stream, /stream).\n    http-request deny deny_status 403 if { hdr(upgrade) -m sub -i websocket }\n"
    } else {
        ""
    };
    let maxconn = match options.maxconn {
        Some(n) => {
            extra_flags.push_str(&format!(" --maxconn {n}"));
            format!("    maxconn {n}\n")
        }
        None => "    # maxconn: derived from the file-descriptor limit (raise LimitNOFILE for more devices).\n".to_owned(),
    };

    let mut cfg = format!(
        "\
# HAProxy config for a Pace cluster: the lab/CI equivalent of kong/kong.yml.
# Generated by: pace-node gateway haproxy {nodes} --bind {bind}{extra_flags}
# Check with `haproxy -c -f FILE`; run in the foreground with `haproxy -f FILE -db`.

global
{maxconn}
defaults
    mode http
    option dontlognull
    # Tell the nodes the device's address (as Kong does); nodes believe it
    # only from addresses given to --trusted-proxy.
    option forwardfor
    timeout connect 5s
    # Requests, responses and idle keep-alive connections. A device's HTTP
    # stream (/stream, SSE) is a response: its keep-alive comments (the
    # node's --sse-heartbeat, 15 s) must come more often than this.
    timeout client {idle}s
    timeout server {idle}s
    timeout http-request 10s
    timeout http-keep-alive 10s
    # Upgraded WebSockets: must exceed the node's 25 s ping interval.
    timeout tunnel 1h
    timeout client-fin 10s
    timeout server-fin 10s

frontend pace_public
    bind {bind}
{deny_websocket}{frontend_protect}    # Only the public paths; /health, /ready and /metrics stay private.
    http-request deny deny_status 404 unless {{ path_beg {paths} }}{or_protected}
{use_protected}    default_backend pace_nodes

backend pace_nodes
    # Key: the {hdr} header, else the {arg} query parameter (Kong's
    # hash_on header + hash_fallback query_arg).
    http-request set-var(txn.pace_key) req.hdr({hdr})
    http-request set-var(txn.pace_key) url_param({arg}) unless {{ var(txn.pace_key) -m len 1: }}
    balance hash var(txn.pace_key)
    hash-type consistent sdbm avalanche
    option httpchk GET /ready
    http-check expect status 200
    default-server check inter 1s fall 2 rise 2
    # A node that just died (before its health checks fail) refuses the
    # connection: retry once on another node instead of failing the device.
    retries 2
    option redispatch 1
",
        nodes = nodes.join(" "),
        bind = options.bind,
        frontend_protect = options
            .protect
            .as_ref()
            .map(frontend_protect)
            .unwrap_or_default(),
        or_protected = if options.protect.is_some() {
            " || pace_protected"
        } else {
            ""
        },
        use_protected = if options.protect.is_some() {
            "    use_backend pace_site if pace_protected\n"
        } else {
            ""
        },
    );
    for node in topology.nodes() {
        cfg.push_str(&format!(
            "    server {} {} weight {}\n",
            server_name(node),
            node.address(),
            haproxy_weight(node.weight, max_weight)
        ));
    }
    if let Some(protect) = &options.protect {
        cfg.push_str(&site_backend(protect));
    }
    if let Some(stats) = &options.stats_bind {
        cfg.push_str(&format!(
            "
listen pace_stats
    bind {stats}
    stats enable
    stats uri /stats
    stats refresh 5s
    http-request use-service prometheus-exporter if {{ path /metrics }}
"
        ));
    }
    Ok(cfg)
}

/// The frontend's part of the protection: which requests are the site's,
/// and the renewal route (rewritten to a node's renew route, with the
/// admission from the cookie, and the renewed admission put back in it).
fn frontend_protect(p: &Protection) -> String {
    let prefix = &p.prefix;
    let renew = p.renew_path();
    let attrs = p.cookie_attributes();
    format!(
        "\
    # The protected site {prefix} (backend pace_site): admitted visitors only.
    acl pace_protected path_beg {prefix}
    # Session renewal through the gateway: {renew} is a node's
    # POST /api/v1/sessions/renew with the admission from the cookie; the
    # renewed admission goes back into the cookie.
    acl pace_renew path {renew}
    http-request set-var(txn.pace_renew) bool(1) if pace_renew METH_POST
    http-request set-header {RENEW_HEADER} %[req.cook({COOKIE})] if {{ var(txn.pace_renew) -m bool }}
    http-request set-path /api/v1/sessions/renew if {{ var(txn.pace_renew) -m bool }}
    http-response set-header Set-Cookie \"{COOKIE}=%[res.hdr({RENEW_HEADER})]; {attrs}\" if {{ var(txn.pace_renew) -m bool }} {{ res.hdr({RENEW_HEADER}) -m len 1: }}
    http-response del-header {RENEW_HEADER}
"
    )
}

/// The `pace_site` backend: the admission check, then the site.
fn site_backend(p: &Protection) -> String {
    let has = "{ var(txn.pace_jwt) -m len 1: }";
    let mut verify = String::new();
    for key in &p.keys {
        verify.push_str(&format!(
            "    http-request set-var(txn.pace_sig) var(txn.pace_jwt),jwt_verify(\"{GATEWAY_ALG}\",\"{path}\") if {{ var(txn.pace_alg) -m str {GATEWAY_ALG} }} {{ var(txn.pace_kid) -m str {kid} }}\n",
            path = key.pem_path.display(),
            kid = key.kid,
        ));
    }
    format!(
        "
backend pace_site
    # Admits a request to {prefix} only with a valid admission for room
    # {room}; everyone else is sent to the waiting page. The token: the
    # hand-off's ?{TOKEN_QUERY_ARG}=, else Authorization: Bearer, else the
    # {COOKIE} cookie.
    http-request set-var(txn.pace_jwt) url_param({TOKEN_QUERY_ARG})
    http-request set-var(txn.pace_from_query) bool(1) if {has}
    http-request set-var(txn.pace_jwt) http_auth_bearer unless {has}
    http-request set-var(txn.pace_jwt) req.cook({COOKIE}) unless {has}
    http-request set-var(txn.pace_alg) var(txn.pace_jwt),jwt_header_query('$.alg') if {has}
    http-request set-var(txn.pace_kid) var(txn.pace_jwt),jwt_header_query('$.kid') if {has}
    http-request set-var(txn.pace_iss) var(txn.pace_jwt),jwt_payload_query('$.iss') if {has}
    http-request set-var(txn.pace_aud) var(txn.pace_jwt),jwt_payload_query('$.aud') if {has}
    http-request set-var(txn.pace_exp) var(txn.pace_jwt),jwt_payload_query('$.exp','int') if {has}
    http-request set-var(txn.pace_now) date
    # The signature: {GATEWAY_ALG} only (never the token's choice: no none,
    # no HMAC), with the published key its kid names (`pace-node keys
    # export-pem`; two keys during a rotation).
{verify}    acl pace_sig_ok var(txn.pace_sig) -m int 1
    acl pace_aud_ok var(txn.pace_aud) -m str {room}
    acl pace_iss_ok var(txn.pace_iss) -m str {issuer}
    acl pace_live var(txn.pace_exp),sub(txn.pace_now) -m int gt 0
    http-request redirect location {waiting} code 302 unless pace_sig_ok pace_aud_ok pace_iss_ok pace_live
    # Admitted: tell the site who (replacing anything the client sent).
    http-request set-header {DEVICE_HEADER} %[var(txn.pace_jwt),jwt_payload_query('$.sub')]
    # A hand-off by query: keep the admission in a cookie for the next
    # requests, so the site needs no code.
    http-response add-header Set-Cookie \"{COOKIE}=%[var(txn.pace_jwt)]; {attrs}\" if {{ var(txn.pace_from_query) -m bool }}
    http-response set-header Cache-Control no-store if {{ var(txn.pace_from_query) -m bool }}
    server site {site}
",
        prefix = p.prefix,
        room = p.room,
        issuer = p.issuer,
        waiting = p.waiting_page(),
        attrs = p.cookie_attributes(),
        site = p.site.address(),
    )
}

/// Server name shown in stats and logs: the address, minus IPv6 brackets
/// HAProxy does not allow in names.
fn server_name(node: &Node) -> String {
    node.address().replace(['[', ']'], "")
}

/// Kong weights go up to 65535, HAProxy's to 256: scale down proportionally
/// only when needed, never to 0.
fn haproxy_weight(weight: u32, max_weight: u32) -> u32 {
    if max_weight <= MAX_HAPROXY_WEIGHT {
        return weight;
    }
    let scaled = (u64::from(weight) * u64::from(MAX_HAPROXY_WEIGHT) + u64::from(max_weight) / 2)
        / u64::from(max_weight);
    u32::try_from(scaled).unwrap_or(MAX_HAPROXY_WEIGHT).max(1)
}

fn check_bind(bind: &str) -> Result<(), GatewayError> {
    match bind.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(GatewayError::InvalidBind(bind.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_servers_with_weights_and_key_fallback() {
        let nodes = vec!["127.0.0.1:8081".to_owned(), "[::1]:8082".to_owned()];
        let t = Topology::from_args(&nodes, Some("100,50")).unwrap();
        let cfg = render_haproxy(&t, &HaproxyOptions::default()).unwrap();
        assert!(cfg.contains("    server 127.0.0.1:8081 127.0.0.1:8081 weight 100\n"));
        assert!(cfg.contains("    server ::1:8082 [::1]:8082 weight 50\n"));
        assert!(cfg.contains("balance hash var(txn.pace_key)"));
        assert!(cfg.contains("url_param(device_id)"));
        assert!(cfg.contains("timeout tunnel 1h"));
        assert!(!cfg.contains("pace_stats"));
        assert!(
            !cfg.contains("    maxconn "),
            "HAProxy derives maxconn from the fd limit by default"
        );
        let fixed = HaproxyOptions {
            maxconn: Some(5_000),
            ..HaproxyOptions::default()
        };
        let cfg = render_haproxy(&t, &fixed).unwrap();
        assert!(cfg.contains("\nglobal\n    maxconn 5000\n"));
        assert!(cfg.contains(" --maxconn 5000\n"));
    }

    #[test]
    fn the_stream_path_the_idle_timeout_and_the_lab_upgrade_refusal() {
        let t = Topology::from_args(&["127.0.0.1:8081".to_owned()], None).unwrap();
        let cfg = render_haproxy(&t, &HaproxyOptions::default()).unwrap();
        assert!(cfg.contains("path_beg /ws /stream /api"));
        assert!(cfg.contains("    timeout server 60s\n"));
        assert!(!cfg.contains("hdr(upgrade)"));
        let strict = HaproxyOptions {
            idle_timeout_secs: 2,
            deny_websocket: true,
            ..HaproxyOptions::default()
        };
        let cfg = render_haproxy(&t, &strict).unwrap();
        assert!(cfg.contains("    timeout client 2s\n    timeout server 2s\n"));
        assert!(cfg.contains("deny_status 403 if { hdr(upgrade) -m sub -i websocket }"));
        assert!(cfg.contains(" --idle-timeout 2 --deny-websocket\n"));
    }

    #[test]
    fn large_kong_weights_are_scaled_into_haproxys_range() {
        assert_eq!(haproxy_weight(100, 100), 100);
        assert_eq!(haproxy_weight(65_535, 65_535), 256);
        assert_eq!(haproxy_weight(1_000, 2_000), 128);
        assert_eq!(haproxy_weight(1, 65_535), 1);
    }

    #[test]
    fn stats_listener_is_optional_and_binds_are_checked() {
        let t = Topology::from_args(&["127.0.0.1:8081".to_owned()], None).unwrap();
        let with_stats = HaproxyOptions {
            stats_bind: Some("127.0.0.1:8404".to_owned()),
            ..HaproxyOptions::default()
        };
        assert!(
            render_haproxy(&t, &with_stats)
                .unwrap()
                .contains("bind 127.0.0.1:8404")
        );
        let bad = HaproxyOptions {
            bind: "nowhere".to_owned(),
            ..HaproxyOptions::default()
        };
        assert!(render_haproxy(&t, &bad).is_err());
    }

    #[test]
    fn protection_renders_one_verify_line_per_key_and_the_redirect() {
        let t = Topology::from_args(&["127.0.0.1:8081".to_owned()], None).unwrap();
        let mut protect = crate::protect::tests::protection();
        let mut second = protect.keys[0].clone();
        second.kid = "k2".to_owned();
        second.pem_path = "/etc/pace/gateway-keys/k2.pem".into();
        protect.keys.push(second);
        let options = HaproxyOptions {
            protect: Some(protect),
            ..HaproxyOptions::default()
        };
        let cfg = render_haproxy(&t, &options).unwrap();
        for kid in ["k1", "k2"] {
            assert!(
                cfg.contains(&format!(
                    "jwt_verify(\"ES256\",\"/etc/pace/gateway-keys/{kid}.pem\") if {{ var(txn.pace_alg) -m str ES256 }} {{ var(txn.pace_kid) -m str {kid} }}"
                )),
                "{cfg}"
            );
        }
        assert!(cfg.contains("acl pace_aud_ok var(txn.pace_aud) -m str sale\n"));
        assert!(cfg.contains("acl pace_iss_ok var(txn.pace_iss) -m str pace\n"));
        assert!(cfg.contains(
            "http-request redirect location /r/sale code 302 unless pace_sig_ok pace_aud_ok pace_iss_ok pace_live\n"
        ));
        assert!(cfg.contains("use_backend pace_site if pace_protected\n"));
        assert!(cfg.contains("    server site 127.0.0.1:9090\n"));
        assert!(cfg.contains(" --admission-key k2=/etc/pace/gateway-keys/k2.pem"));
        // The site's redirect happens before anything reaches the site.
        let site = &cfg[cfg.find("backend pace_site").unwrap()..];
        assert!(site.find("redirect").unwrap() < site.find("server site").unwrap());

        let bad = HaproxyOptions {
            protect: Some(crate::protect::Protection {
                prefix: "/api/".to_owned(),
                ..crate::protect::tests::protection()
            }),
            ..HaproxyOptions::default()
        };
        assert!(render_haproxy(&t, &bad).is_err());
    }
}
