//! Kong declarative configuration (decK `_format_version: "3.0"`) for a Pace
//! cluster: one consistent-hashing upstream keyed on the device id, one
//! service with WebSocket-length timeouts, and routes for the public paths
//! only. [`kong_config`] builds it as typed data (tests check it against
//! Kong's schema rules); [`render_kong`] turns it into the YAML IT applies.
//!
//! With a [`Protection`] it adds the protected site: a service for the site
//! whose route carries Kong's open-source `jwt` plugin (ES256, the key picked
//! by the token header's `kid`, `exp` checked; the token read from the
//! hand-off query, the cookie or `Authorization`) and a `post-function`
//! that checks `aud` and `iss`, sends everyone without a valid admission to
//! the waiting page (302) and keeps the hand-off's token in a cookie; a
//! consumer whose `jwt_secrets` hold the published ES256 keys; an anonymous
//! consumer (so a failed check reaches the redirect instead of a 401); and
//! the renewal route under the site's prefix.

use serde::Serialize;

use crate::protect::Protection;
use crate::topology::{DEVICE_ID_QUERY_ARG, PUBLIC_PATH_PREFIXES};
use crate::{GatewayError, Topology};

/// Default upstream name; the service's `host` points at it.
pub const DEFAULT_UPSTREAM_NAME: &str = "pace-nodes";

/// Name Kong looks the device-id header up by (`hash_on_header`).
///
/// Written with underscores on purpose. Kong 3.x built on OpenResty
/// 1.25.3.1 or later reads the header as `ngx.var["http_" .. hash_on_header]`, and nginx's
/// `$http_*` lookup compares against the request header with `-` turned into
/// `_`: a name written `x-device-id` never matches there (Kong issue #14447).
/// Older Kong reads `ngx.req.get_headers()[name]`, whose lookup turns `_` back
/// into `-`. `x_device_id` therefore matches the `x-device-id` header on
/// every Kong 3.x.
pub const KONG_HASH_HEADER: &str = "x_device_id";

/// Tag put on every entity so `deck gateway sync --select-tag pace` touches
/// Pace's entities only and leaves the rest of the Kong config alone.
pub const PACE_TAG: &str = "pace";

/// Knobs of the generated Kong config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KongOptions {
    /// Upstream name (a hostname-like string; the service's `host`).
    pub upstream_name: String,
    /// Upstream `slots`, the size of the consistent-hashing ring (10..=65536).
    pub slots: u32,
    /// The protected site, if Kong enforces admissions for one.
    pub protect: Option<Protection>,
}

impl Default for KongOptions {
    fn default() -> Self {
        KongOptions {
            upstream_name: DEFAULT_UPSTREAM_NAME.to_owned(),
            slots: crate::DEFAULT_SLOTS,
            protect: None,
        }
    }
}

/// A decK declarative config document.
#[derive(Debug, Clone, Serialize)]
pub struct KongConfig {
    /// decK/Kong declarative format version.
    #[serde(rename = "_format_version")]
    pub format_version: String,
    /// The consistent-hashing upstream with its targets.
    pub upstreams: Vec<Upstream>,
    /// The service in front of the upstream, with its routes (and the
    /// protected site's service).
    pub services: Vec<Service>,
    /// The protected site's consumers: the admission keys and the
    /// anonymous stand-in.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<Consumer>,
}

/// Kong `consumers` entity (decK nests the credentials).
#[derive(Debug, Clone, Serialize)]
pub struct Consumer {
    /// Consumer name (the jwt plugin's `anonymous` refers to it).
    pub username: String,
    /// Entity tags.
    pub tags: Vec<String>,
    /// JWT credentials (the `jwt` plugin's `jwt_secrets`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub jwt_secrets: Vec<JwtSecret>,
}

/// Kong `jwt_secrets` entity: one published admission key.
#[derive(Debug, Clone, Serialize)]
pub struct JwtSecret {
    /// What the token names the key by: the plugin's `key_claim_name` is
    /// `kid`, so this is the key's kid.
    pub key: String,
    /// `ES256`: Kong refuses a token whose header says anything else.
    pub algorithm: String,
    /// The ES256 public key (PEM); Kong's field is called `rsa_public_key`
    /// for every asymmetric algorithm.
    pub rsa_public_key: String,
    /// Required by decK's schema; Kong reads it only for HS* algorithms,
    /// so for ES256 it is never used (not a secret).
    pub secret: String,
    /// Entity tags.
    pub tags: Vec<String>,
}

/// Kong plugin entity, attached to a route.
#[derive(Debug, Clone, Serialize)]
pub struct Plugin {
    /// Plugin name (`jwt`, `pre-function`, `post-function`).
    pub name: String,
    /// Entity tags.
    pub tags: Vec<String>,
    /// The plugin's configuration, as its schema defines it.
    pub config: serde_json::Value,
}

/// Kong `upstreams` entity.
#[derive(Debug, Clone, Serialize)]
pub struct Upstream {
    /// Upstream name, referenced by the service's `host`.
    pub name: String,
    /// Entity tags (see [`PACE_TAG`]).
    pub tags: Vec<String>,
    /// Always `consistent-hashing`: a device must land on the same node.
    pub algorithm: String,
    /// `header`: hash the device id, not the (NATed) client address.
    pub hash_on: String,
    /// Header carrying the device id (see [`KONG_HASH_HEADER`]).
    pub hash_on_header: String,
    /// `query_arg`: browsers cannot set WebSocket headers.
    pub hash_fallback: String,
    /// Query argument carrying the device id.
    pub hash_fallback_query_arg: String,
    /// Ring size.
    pub slots: u32,
    /// Active (`/ready`) and passive health checks.
    pub healthchecks: Healthchecks,
    /// The pace-node processes.
    pub targets: Vec<Target>,
}

/// Kong `healthchecks` record.
#[derive(Debug, Clone, Serialize)]
pub struct Healthchecks {
    /// Percentage of healthy weight below which the whole upstream is
    /// reported unhealthy; 0 keeps serving from whatever is left.
    pub threshold: u32,
    /// Probes of `/ready`.
    pub active: ActiveHealthcheck,
    /// Circuit breaker on proxied traffic.
    pub passive: PassiveHealthcheck,
}

/// Kong active health check.
#[derive(Debug, Clone, Serialize)]
pub struct ActiveHealthcheck {
    /// Probe protocol.
    #[serde(rename = "type")]
    pub kind: String,
    /// Probed path: `/ready` turns 503 while a node starts or drains.
    pub http_path: String,
    /// Probe timeout, seconds.
    pub timeout: u32,
    /// Parallel probes.
    pub concurrency: u32,
    /// When a target counts as healthy again.
    pub healthy: Healthy,
    /// When a target counts as unhealthy.
    pub unhealthy: Unhealthy,
}

/// Kong passive health check.
#[derive(Debug, Clone, Serialize)]
pub struct PassiveHealthcheck {
    /// Traffic protocol.
    #[serde(rename = "type")]
    pub kind: String,
    /// Responses that count as success.
    pub healthy: Healthy,
    /// Failures that trip the breaker.
    pub unhealthy: Unhealthy,
}

/// Kong `healthy` thresholds.
#[derive(Debug, Clone, Serialize)]
pub struct Healthy {
    /// Seconds between probes of a healthy target (active only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<u32>,
    /// Statuses that count as success.
    pub http_statuses: Vec<u16>,
    /// Successes needed to mark healthy.
    pub successes: u32,
}

/// Kong `unhealthy` thresholds.
#[derive(Debug, Clone, Serialize)]
pub struct Unhealthy {
    /// Seconds between probes of an unhealthy target (active only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<u32>,
    /// Statuses that count as failure.
    pub http_statuses: Vec<u16>,
    /// Failing statuses needed to mark unhealthy (0 = ignore statuses).
    pub http_failures: u32,
    /// Connection failures needed to mark unhealthy.
    pub tcp_failures: u32,
    /// Timeouts needed to mark unhealthy.
    pub timeouts: u32,
}

/// Kong `targets` entity.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// `HOST:PORT` of a pace-node.
    pub target: String,
    /// Share of the ring.
    pub weight: u32,
    /// Entity tags.
    pub tags: Vec<String>,
}

/// Kong `services` entity.
#[derive(Debug, Clone, Serialize)]
pub struct Service {
    /// Service name.
    pub name: String,
    /// Entity tags.
    pub tags: Vec<String>,
    /// `http`: the nodes speak plain HTTP/1.1 (+ WebSocket upgrade).
    pub protocol: String,
    /// The upstream name.
    pub host: String,
    /// Ignored for upstream hosts (targets carry ports), required by Kong.
    pub port: u16,
    /// Milliseconds to establish a connection to a node.
    pub connect_timeout: u32,
    /// Milliseconds of silence allowed while reading; must outlive the
    /// node's 25 s WebSocket ping interval, so an idle socket stays open.
    pub read_timeout: u32,
    /// Milliseconds of silence allowed while writing (same reason).
    pub write_timeout: u32,
    /// Retries on connection failure; the ring walks to the next node.
    pub retries: u32,
    /// Public routes.
    pub routes: Vec<Route>,
}

/// Kong `routes` entity.
#[derive(Debug, Clone, Serialize)]
pub struct Route {
    /// Route name.
    pub name: String,
    /// Entity tags.
    pub tags: Vec<String>,
    /// `http`, `https`: open-source Kong proxies WebSocket upgrades on these
    /// (`ws`/`wss` route protocols are Enterprise-only).
    pub protocols: Vec<String>,
    /// Path prefixes.
    pub paths: Vec<String>,
    /// Keep the path as sent: the node routes on the full path.
    pub strip_path: bool,
    /// Keep the client's Host: the node builds absolute URLs from it.
    pub preserve_host: bool,
    /// Whether Kong buffers the response (Kong's default: yes); off for
    /// event streams.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_buffering: Option<bool>,
    /// Methods the route matches (all when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Plugins on this route.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<Plugin>,
}

/// One second in Kong's millisecond timeouts.
const SECOND_MS: u32 = 1_000;

/// Builds the declarative config for a topology.
pub fn kong_config(topology: &Topology, options: &KongOptions) -> Result<KongConfig, GatewayError> {
    validate_upstream_name(&options.upstream_name)?;
    if !(10..=65_536).contains(&options.slots) {
        return Err(GatewayError::InvalidSlots(options.slots));
    }
    let tags = || vec![PACE_TAG.to_owned()];
    let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    let upstream = Upstream {
        name: options.upstream_name.clone(),
        tags: tags(),
        algorithm: "consistent-hashing".to_owned(),
        hash_on: "header".to_owned(),
        hash_on_header: KONG_HASH_HEADER.to_owned(),
        hash_fallback: "query_arg".to_owned(),
        hash_fallback_query_arg: DEVICE_ID_QUERY_ARG.to_owned(),
        slots: options.slots,
        healthchecks: Healthchecks {
            threshold: 0,
            active: ActiveHealthcheck {
                kind: "http".to_owned(),
                http_path: "/ready".to_owned(),
                timeout: 1,
                concurrency: 10,
                healthy: Healthy {
                    interval: Some(2),
                    http_statuses: vec![200],
                    successes: 2,
                },
                unhealthy: Unhealthy {
                    interval: Some(1),
                    http_statuses: vec![429, 500, 501, 502, 503, 504, 505],
                    http_failures: 2,
                    tcp_failures: 2,
                    timeouts: 2,
                },
            },
            passive: PassiveHealthcheck {
                kind: "http".to_owned(),
                healthy: Healthy {
                    interval: None,
                    http_statuses: vec![101, 200, 201, 202, 204, 301, 302, 303, 304, 307, 308],
                    successes: 5,
                },
                // Connection-level failures only: an application error status
                // on every node must not take the whole cluster out.
                unhealthy: Unhealthy {
                    interval: None,
                    http_statuses: vec![502, 503, 504],
                    http_failures: 0,
                    tcp_failures: 2,
                    timeouts: 3,
                },
            },
        },
        targets: topology
            .nodes()
            .iter()
            .map(|n| Target {
                target: n.address(),
                weight: n.weight,
                tags: tags(),
            })
            .collect(),
    };

    let route = |name: &str, paths: &[&str]| Route {
        name: name.to_owned(),
        tags: tags(),
        protocols: strings(&["http", "https"]),
        paths: strings(paths),
        strip_path: false,
        preserve_host: true,
        response_buffering: None,
        methods: None,
        plugins: Vec::new(),
    };
    let pages: Vec<&str> = PUBLIC_PATH_PREFIXES
        .iter()
        .copied()
        .filter(|p| !["/ws", "/stream", "/api", "/.well-known"].contains(p))
        .collect();
    let mut service = Service {
        name: "pace".to_owned(),
        tags: tags(),
        protocol: "http".to_owned(),
        host: options.upstream_name.clone(),
        port: 80,
        connect_timeout: 5 * SECOND_MS,
        read_timeout: 3_600 * SECOND_MS,
        write_timeout: 3_600 * SECOND_MS,
        retries: 3,
        routes: vec![
            route("pace-ws", &["/ws"]),
            Route {
                // The device HTTP stream (SSE) and its POSTs: nginx must
                // pass each event on at once, not buffer the response.
                response_buffering: Some(false),
                ..route("pace-stream", &["/stream"])
            },
            route("pace-api", &["/api"]),
            route("pace-well-known", &["/.well-known"]),
            route("pace-pages", &pages),
        ],
    };

    let mut services = Vec::new();
    let mut consumers = Vec::new();
    if let Some(protect) = &options.protect {
        protect.validate()?;
        let site = protected_site(protect);
        service.routes.push(site.renew_route);
        services.push(service);
        services.push(site.service);
        consumers = site.consumers;
    } else {
        services.push(service);
    }

    Ok(KongConfig {
        format_version: "3.0".to_owned(),
        upstreams: vec![upstream],
        services,
        consumers,
    })
}

/// Username of the consumer holding the admission keys.
pub const ADMISSION_CONSUMER: &str = "pace-admission";

/// Username of the anonymous stand-in: the `jwt` plugin authenticates a
/// request without a valid token as this consumer instead of answering 401,
/// so the `post-function` can redirect it to the waiting page.
pub const ANONYMOUS_CONSUMER: &str = "pace-anonymous";

/// The Kong entities of a protected site.
struct ProtectedSite {
    service: Service,
    renew_route: Route,
    consumers: Vec<Consumer>,
}

fn protected_site(p: &Protection) -> ProtectedSite {
    use crate::protect::{COOKIE, DEVICE_HEADER, GATEWAY_ALG, RENEW_HEADER, TOKEN_QUERY_ARG};
    let tags = || vec![PACE_TAG.to_owned()];
    let name = format!("pace-site-{}", p.room);
    let cookie = format!("{COOKIE}=\" .. token .. \"; {}", p.cookie_attributes());
    let plugin = |name: &str, config: serde_json::Value| Plugin {
        name: name.to_owned(),
        tags: tags(),
        config,
    };
    // Runs after `jwt` (post-function has the lowest priority): the
    // signature, kid and exp are checked; what is left is the room, the
    // issuer, the redirect and the cookie. Values are validated ids, safe
    // inside Lua string literals.
    let check = format!(
        r#"-- Pace: admission for room {room} (after the jwt plugin: signature, kid, exp).
local token = kong.ctx.shared.authenticated_jwt_token
local claims
if kong.client.get_credential() and token then
  local jwt = require("kong.plugins.jwt.jwt_parser"):new(token)
  claims = jwt and jwt.claims
end
if not (claims and claims.aud == "{room}" and claims.iss == "{issuer}" and type(claims.sub) == "string") then
  return kong.response.exit(302, "", {{ ["Location"] = "{waiting}", ["Cache-Control"] = "no-store" }})
end
kong.service.request.set_header("{DEVICE_HEADER}", claims.sub)
if kong.request.get_query_arg("{TOKEN_QUERY_ARG}") == token then
  kong.ctx.plugin.pace_handoff = token
end
"#,
        room = p.room,
        issuer = p.issuer,
        waiting = p.waiting_page(),
    );
    let keep_cookie = format!(
        r#"-- Pace: a hand-off by query keeps the admission in a cookie.
local token = kong.ctx.plugin.pace_handoff
if token then
  kong.response.add_header("Set-Cookie", "{cookie}")
  kong.response.set_header("Cache-Control", "no-store")
end
"#
    );
    let site_route = Route {
        name: name.clone(),
        tags: tags(),
        protocols: vec!["http".to_owned(), "https".to_owned()],
        paths: vec![p.prefix.clone()],
        strip_path: false,
        preserve_host: true,
        response_buffering: None,
        methods: None,
        plugins: vec![
            plugin(
                "jwt",
                serde_json::json!({
                    "uri_param_names": [TOKEN_QUERY_ARG],
                    "cookie_names": [COOKIE],
                    "header_names": ["authorization"],
                    "key_claim_name": "kid",
                    "claims_to_verify": ["exp"],
                    "secret_is_base64": false,
                    "run_on_preflight": true,
                    "maximum_expiration": 0,
                    "anonymous": ANONYMOUS_CONSUMER,
                }),
            ),
            plugin(
                "post-function",
                serde_json::json!({ "access": [check], "header_filter": [keep_cookie] }),
            ),
        ],
    };
    let renew_in = format!(
        r#"-- Pace: session renewal through the gateway, with the site's cookie.
local cookie = kong.request.get_header("cookie") or ""
local token = (";" .. cookie):match(";%s*{COOKIE}=([^;%s]+)")
if token then
  kong.service.request.set_header("{RENEW_HEADER}", token)
else
  kong.service.request.clear_header("{RENEW_HEADER}")
end
kong.service.request.set_path("/api/v1/sessions/renew")
"#
    );
    let renew_out = format!(
        r#"-- Pace: the renewed admission goes back into the site's cookie.
local token = kong.response.get_header("{RENEW_HEADER}")
kong.response.clear_header("{RENEW_HEADER}")
if token then
  kong.response.add_header("Set-Cookie", "{cookie}")
end
"#
    );
    let renew_route = Route {
        name: format!("{name}-renew"),
        tags: tags(),
        protocols: vec!["http".to_owned(), "https".to_owned()],
        paths: vec![p.renew_path()],
        strip_path: false,
        preserve_host: true,
        response_buffering: None,
        methods: Some(vec!["POST".to_owned()]),
        plugins: vec![
            plugin("pre-function", serde_json::json!({ "access": [renew_in] })),
            plugin(
                "post-function",
                serde_json::json!({ "header_filter": [renew_out] }),
            ),
        ],
    };
    let service = Service {
        name,
        tags: tags(),
        protocol: "http".to_owned(),
        host: p.site.host.trim_matches(['[', ']']).to_owned(),
        port: p.site.port,
        connect_timeout: 5 * SECOND_MS,
        read_timeout: 60 * SECOND_MS,
        write_timeout: 60 * SECOND_MS,
        retries: 3,
        routes: vec![site_route],
    };
    let consumers = vec![
        Consumer {
            username: ADMISSION_CONSUMER.to_owned(),
            tags: tags(),
            jwt_secrets: p
                .keys
                .iter()
                .map(|k| JwtSecret {
                    key: k.kid.clone(),
                    algorithm: GATEWAY_ALG.to_owned(),
                    rsa_public_key: k.pem.clone(),
                    secret: format!("unused-for-{GATEWAY_ALG}-{}", k.kid),
                    tags: tags(),
                })
                .collect(),
        },
        Consumer {
            username: ANONYMOUS_CONSUMER.to_owned(),
            tags: tags(),
            jwt_secrets: Vec::new(),
        },
    ];
    ProtectedSite {
        service,
        renew_route,
        consumers,
    }
}

/// Renders the config as commented YAML, ready for `deck gateway sync`.
pub fn render_kong(topology: &Topology, options: &KongOptions) -> Result<String, GatewayError> {
    let config = kong_config(topology, options)?;
    let yaml = serde_norway::to_string(&config).map_err(|e| GatewayError::Serialise {
        what: "Kong config",
        message: e.to_string(),
    })?;
    let nodes: Vec<String> = topology
        .nodes()
        .iter()
        .map(|n| format!("--node {}", n.address()))
        .collect();
    let mut out = String::new();
    out.push_str("# Kong declarative config for a Pace cluster (decK format 3.0).\n");
    out.push_str("# Generated by: pace-node gateway kong ");
    out.push_str(&nodes.join(" "));
    if topology
        .nodes()
        .iter()
        .any(|n| n.weight != crate::topology::DEFAULT_WEIGHT)
    {
        let weights: Vec<String> = topology
            .nodes()
            .iter()
            .map(|n| n.weight.to_string())
            .collect();
        out.push_str(&format!(" --weights {}", weights.join(",")));
    }
    out.push('\n');
    out.push_str("# Regenerate rather than hand-edit; apply with kong/README.md.\n");
    for line in yaml.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if trimmed.starts_with("hash_on_header:") {
            out.push_str(&format!(
                "{indent}# Matches the x-device-id header on every Kong 3.x: recent Kong reads\n\
                 {indent}# $http_x_device_id, where a name with '-' would never match.\n"
            ));
        }
        if trimmed.starts_with("read_timeout:")
            && trimmed.ends_with(&(3_600 * SECOND_MS).to_string())
        {
            out.push_str(&format!(
                "{indent}# WebSockets: must exceed the node's 25 s ping interval.\n"
            ));
        }
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}

/// Kong wants upstream names that look like hostnames (and not IPs).
fn validate_upstream_name(name: &str) -> Result<(), GatewayError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && !name.ends_with(['-', '.'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(GatewayError::InvalidUpstreamName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Topology {
        let nodes: Vec<String> = (8081..=8083).map(|p| format!("127.0.0.1:{p}")).collect();
        Topology::from_args(&nodes, None).unwrap()
    }

    #[test]
    fn upstream_hashes_on_the_device_id() {
        let c = kong_config(&three(), &KongOptions::default()).unwrap();
        let u = &c.upstreams[0];
        assert_eq!(u.name, "pace-nodes");
        assert_eq!(u.algorithm, "consistent-hashing");
        assert_eq!(
            (u.hash_on.as_str(), u.hash_on_header.as_str()),
            ("header", "x_device_id")
        );
        assert_eq!(
            (u.hash_fallback.as_str(), u.hash_fallback_query_arg.as_str()),
            ("query_arg", "device_id")
        );
        assert_eq!(u.slots, 10_000);
        assert_eq!(u.targets.len(), 3);
        assert!(u.targets.iter().all(|t| t.weight == 100));
        assert_eq!(c.services[0].host, "pace-nodes");
    }

    #[test]
    fn no_route_exposes_private_paths() {
        let c = kong_config(&three(), &KongOptions::default()).unwrap();
        for route in &c.services[0].routes {
            assert!(!route.strip_path && route.preserve_host);
            assert_eq!(route.protocols, vec!["http", "https"]);
            for path in &route.paths {
                for private in crate::topology::PRIVATE_PATHS {
                    assert!(
                        !private.starts_with(path.as_str()),
                        "{path} would expose {private}"
                    );
                }
            }
        }
        let all: Vec<&str> = c.services[0]
            .routes
            .iter()
            .flat_map(|r| r.paths.iter().map(String::as_str))
            .collect();
        assert_eq!(all, PUBLIC_PATH_PREFIXES);
    }

    #[test]
    fn yaml_is_commented_and_parses_back() {
        let yaml = render_kong(&three(), &KongOptions::default()).unwrap();
        assert!(yaml.starts_with("# Kong declarative config"));
        assert!(
            yaml.contains("--node 127.0.0.1:8081 --node 127.0.0.1:8082 --node 127.0.0.1:8083\n")
        );
        let back: serde_json::Value = serde_norway::from_str(&yaml).unwrap();
        assert_eq!(back["_format_version"], "3.0");
        assert_eq!(
            back["upstreams"][0]["targets"][2]["target"],
            "127.0.0.1:8083"
        );
        assert_eq!(back["services"][0]["read_timeout"], 3_600_000);
    }

    #[test]
    fn options_are_validated() {
        let bad_name = KongOptions {
            upstream_name: "10.0.0.1".to_owned(),
            ..KongOptions::default()
        };
        assert!(kong_config(&three(), &bad_name).is_err());
        let bad_slots = KongOptions {
            slots: 5,
            ..KongOptions::default()
        };
        assert!(kong_config(&three(), &bad_slots).is_err());
    }
}
