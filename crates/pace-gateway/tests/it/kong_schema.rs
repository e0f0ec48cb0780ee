//! The generated Kong config checked two ways: against decK's JSON schema
//! (structure: unknown keys, types), and against the entity rules Kong itself
//! enforces on load (`kong/db/schema/entities/{upstreams,services,routes,
//! targets}.lua` in Kong 3.x: enums, ranges, fields each hash mode requires),
//! which the JSON schema does not express. The rule checker is itself tested
//! on broken configs so it cannot pass vacuously.

use serde_json::{Value, json};

use pace_gateway::{KongOptions, kong_config, render_kong};

use crate::support::{kong_dir_file, three_loopback_nodes};

const ALGORITHMS: &[&str] = &[
    "round-robin",
    "consistent-hashing",
    "least-connections",
    "latency",
];
const HASH_INPUTS: &[&str] = &[
    "none",
    "consumer",
    "ip",
    "header",
    "cookie",
    "path",
    "query_arg",
    "uri_capture",
];
const CHECK_TYPES: &[&str] = &["tcp", "http", "https", "grpc", "grpcs"];
const SERVICE_PROTOCOLS: &[&str] = &[
    "grpc",
    "grpcs",
    "http",
    "https",
    "tcp",
    "tls",
    "tls_passthrough",
    "udp",
    "ws",
    "wss",
];
/// Route protocols open-source Kong accepts for HTTP traffic; `ws`/`wss`
/// routes need Kong Enterprise, and WebSocket upgrades work on these.
const OSS_HTTP_ROUTE_PROTOCOLS: &[&str] = &["http", "https"];

/// A named way to break a generated document, for testing the checker.
type Breakage = (&'static str, Box<dyn Fn(&mut Value)>);

fn generated() -> Value {
    serde_json::to_value(kong_config(&three_loopback_nodes(), &KongOptions::default()).unwrap())
        .unwrap()
}

fn str_field<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

fn int_in(v: &Value, key: &str, lo: i64, hi: i64, errors: &mut Vec<String>, ctx: &str) {
    if let Some(x) = v.get(key) {
        match x.as_i64() {
            Some(n) if (lo..=hi).contains(&n) => {}
            _ => errors.push(format!(
                "{ctx}.{key} = {x} is not an integer in {lo}..={hi}"
            )),
        }
    }
}

fn one_of(v: &Value, key: &str, allowed: &[&str], errors: &mut Vec<String>, ctx: &str) {
    if let Some(x) = v.get(key)
        && !x.as_str().is_some_and(|s| allowed.contains(&s))
    {
        errors.push(format!("{ctx}.{key} = {x} is not one of {allowed:?}"));
    }
}

/// Kong's `typedefs.header_name`: `^[a-zA-Z0-9-_]+$`.
fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Every rule of Kong 3.x's upstream entity the config could break.
fn upstream_violations(u: &Value) -> Vec<String> {
    let mut e = Vec::new();
    let ctx = format!("upstream {}", str_field(u, "name").unwrap_or("?"));
    match str_field(u, "name") {
        Some(name) if !name.is_empty() && name.parse::<std::net::IpAddr>().is_err() => {}
        _ => e.push(format!(
            "{ctx}: name is required and must be a hostname, not an IP"
        )),
    }
    one_of(u, "algorithm", ALGORITHMS, &mut e, &ctx);
    one_of(u, "hash_on", HASH_INPUTS, &mut e, &ctx);
    one_of(u, "hash_fallback", HASH_INPUTS, &mut e, &ctx);
    int_in(u, "slots", 10, 65_536, &mut e, &ctx);

    let on = str_field(u, "hash_on").unwrap_or("none");
    let fallback = str_field(u, "hash_fallback").unwrap_or("none");
    let require = |field: &str, e: &mut Vec<String>, why: &str| {
        if str_field(u, field).is_none_or(str::is_empty) {
            e.push(format!("{ctx}: {field} is required when {why}"));
        }
    };
    for (mode, field) in [
        ("header", "hash_on_header"),
        ("query_arg", "hash_on_query_arg"),
        ("uri_capture", "hash_on_uri_capture"),
    ] {
        if on == mode {
            require(field, &mut e, &format!("hash_on is {mode}"));
        }
    }
    for (mode, field) in [
        ("header", "hash_fallback_header"),
        ("query_arg", "hash_fallback_query_arg"),
        ("uri_capture", "hash_fallback_uri_capture"),
    ] {
        if fallback == mode {
            require(field, &mut e, &format!("hash_fallback is {mode}"));
        }
    }
    if on == "cookie" || fallback == "cookie" {
        require("hash_on_cookie", &mut e, "hashing on a cookie");
    }
    if (on == "none" || on == "cookie") && fallback != "none" {
        e.push(format!(
            "{ctx}: hash_fallback must be none when hash_on is {on}"
        ));
    }
    // hash_fallback must differ from hash_on, except for the kinds that carry
    // a name (header, query_arg, uri_capture), whose names must then differ.
    if on == fallback && on != "none" && !["header", "query_arg", "uri_capture"].contains(&on) {
        e.push(format!(
            "{ctx}: hash_fallback must differ from hash_on ({on})"
        ));
    }
    for (a, b) in [
        ("hash_on_header", "hash_fallback_header"),
        ("hash_on_query_arg", "hash_fallback_query_arg"),
        ("hash_on_uri_capture", "hash_fallback_uri_capture"),
    ] {
        if let (Some(x), Some(y)) = (str_field(u, a), str_field(u, b))
            && x == y
        {
            e.push(format!("{ctx}: {a} and {b} must be distinct"));
        }
    }
    for field in ["hash_on_header", "hash_fallback_header"] {
        if let Some(name) = str_field(u, field)
            && !valid_header_name(name)
        {
            e.push(format!(
                "{ctx}: {field} {name:?} is not a valid header name"
            ));
        }
    }
    if str_field(u, "algorithm") == Some("consistent-hashing") && on == "none" {
        e.push(format!(
            "{ctx}: consistent-hashing with hash_on none hashes nothing"
        ));
    }

    if let Some(hc) = u.get("healthchecks") {
        int_in(hc, "threshold", 0, 100, &mut e, &ctx);
        for (kind, probe) in [("active", hc.get("active")), ("passive", hc.get("passive"))] {
            let Some(probe) = probe else { continue };
            let pctx = format!("{ctx}.healthchecks.{kind}");
            one_of(probe, "type", CHECK_TYPES, &mut e, &pctx);
            if kind == "active" {
                int_in(probe, "timeout", 0, 65_535, &mut e, &pctx);
                int_in(probe, "concurrency", 1, i64::from(i32::MAX), &mut e, &pctx);
                if !str_field(probe, "http_path").is_some_and(|p| p.starts_with('/')) {
                    e.push(format!("{pctx}.http_path must be an absolute path"));
                }
            }
            for side in ["healthy", "unhealthy"] {
                let Some(s) = probe.get(side) else { continue };
                let sctx = format!("{pctx}.{side}");
                if kind == "passive" && s.get("interval").is_some() {
                    e.push(format!("{sctx}.interval exists only for active checks"));
                }
                int_in(s, "interval", 0, 65_535, &mut e, &sctx);
                for counter in ["successes", "http_failures", "tcp_failures", "timeouts"] {
                    int_in(s, counter, 0, 255, &mut e, &sctx);
                }
                for status in s
                    .get("http_statuses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if !status.as_i64().is_some_and(|n| (100..=999).contains(&n)) {
                        e.push(format!(
                            "{sctx}.http_statuses has {status}, not in 100..=999"
                        ));
                    }
                }
            }
        }
    }

    for t in u
        .get("targets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        int_in(t, "weight", 0, 65_535, &mut e, &format!("{ctx}.target"));
        let ok = str_field(t, "target")
            .and_then(|s| s.rsplit_once(':'))
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !ok {
            e.push(format!("{ctx}: target {} is not HOST:PORT", t["target"]));
        }
    }
    e
}

/// Kong's service and route rules, plus what Pace needs of them.
fn service_violations(s: &Value, upstream_names: &[&str]) -> Vec<String> {
    let mut e = Vec::new();
    let ctx = format!("service {}", str_field(s, "name").unwrap_or("?"));
    one_of(s, "protocol", SERVICE_PROTOCOLS, &mut e, &ctx);
    int_in(s, "port", 0, 65_535, &mut e, &ctx);
    int_in(s, "retries", 0, 32_767, &mut e, &ctx);
    for t in ["connect_timeout", "read_timeout", "write_timeout"] {
        int_in(s, t, 1, i64::from(i32::MAX) - 1, &mut e, &ctx);
    }
    if !str_field(s, "host").is_some_and(|h| upstream_names.contains(&h)) {
        e.push(format!("{ctx}: host must name the upstream"));
    }
    for t in ["read_timeout", "write_timeout"] {
        if s.get(t)
            .and_then(Value::as_i64)
            .is_none_or(|ms| ms <= 25_000)
        {
            e.push(format!(
                "{ctx}: {t} must exceed the node's 25 s ping interval"
            ));
        }
    }
    for r in s
        .get("routes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let rctx = format!("route {}", str_field(r, "name").unwrap_or("?"));
        let protocols: Vec<&str> = r["protocols"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if protocols.is_empty()
            || protocols
                .iter()
                .any(|p| !OSS_HTTP_ROUTE_PROTOCOLS.contains(p))
        {
            e.push(format!("{rctx}: protocols {protocols:?} must be http/https (ws/wss routes are Enterprise-only)"));
        }
        let paths: Vec<&str> = r["paths"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if paths.is_empty() {
            e.push(format!("{rctx}: an http route needs paths"));
        }
        for p in &paths {
            if !p.starts_with('/') {
                e.push(format!("{rctx}: path {p:?} must start with /"));
            }
            for private in pace_gateway::PRIVATE_PATHS {
                if private.starts_with(p) {
                    e.push(format!("{rctx}: path {p:?} exposes {private}"));
                }
            }
        }
        if r.get("strip_path") != Some(&json!(false))
            || r.get("preserve_host") != Some(&json!(true))
        {
            e.push(format!(
                "{rctx}: needs strip_path false and preserve_host true"
            ));
        }
    }
    e
}

fn all_violations(doc: &Value) -> Vec<String> {
    let mut e = Vec::new();
    if doc["_format_version"] != "3.0" {
        e.push("_format_version must be \"3.0\"".to_owned());
    }
    let upstreams = doc["upstreams"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = upstreams
        .iter()
        .filter_map(|u| str_field(u, "name"))
        .collect();
    for u in &upstreams {
        e.extend(upstream_violations(u));
    }
    for s in doc["services"].as_array().into_iter().flatten() {
        if str_field(s, "name").is_some_and(|n| n.starts_with("pace-site-")) {
            e.extend(site_service_violations(s));
        } else {
            e.extend(service_violations(s, &names));
        }
    }
    e.extend(protection_violations(doc));
    e
}

/// Kong 3.x's `jwt` plugin schema (`kong/plugins/jwt/schema.lua`): every
/// config field with its type.
const JWT_FIELDS: &[(&str, &str)] = &[
    ("uri_param_names", "set<string>"),
    ("cookie_names", "set<string>"),
    ("header_names", "set<string>"),
    ("key_claim_name", "string"),
    ("secret_is_base64", "boolean"),
    ("claims_to_verify", "set<string>"),
    ("anonymous", "string"),
    ("run_on_preflight", "boolean"),
    ("maximum_expiration", "number"),
    ("realm", "string"),
];

/// The serverless plugins' (`pre-function`, `post-function`) phases: each
/// an array of Lua sources.
const FUNCTION_PHASES: &[&str] = &[
    "certificate",
    "rewrite",
    "access",
    "header_filter",
    "body_filter",
    "log",
    "ws_handshake",
    "ws_client_frame",
    "ws_upstream_frame",
    "ws_close",
];

/// `jwt_secrets.algorithm` values Kong 3.x accepts (`kong/plugins/jwt/daos.lua`).
const JWT_ALGORITHMS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256",
    "PS384", "PS512", "EdDSA",
];

fn type_ok(v: &Value, ty: &str) -> bool {
    match ty {
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "number" => v.is_number(),
        "set<string>" => v.as_array().is_some_and(|a| {
            a.iter().all(Value::is_string)
                && a.iter().collect::<std::collections::HashSet<_>>().len() == a.len()
        }),
        _ => false,
    }
}

fn jwt_plugin_violations(config: &Value, ctx: &str) -> Vec<String> {
    let mut e = Vec::new();
    let Some(map) = config.as_object() else {
        return vec![format!("{ctx}: config is not an object")];
    };
    for (key, value) in map {
        match JWT_FIELDS.iter().find(|(k, _)| k == key) {
            None => e.push(format!("{ctx}: unknown jwt field {key}")),
            Some((_, ty)) if !type_ok(value, ty) => {
                e.push(format!("{ctx}: jwt {key} = {value} is not a {ty}"))
            }
            Some(_) => {}
        }
    }
    for claim in config["claims_to_verify"].as_array().into_iter().flatten() {
        if !matches!(claim.as_str(), Some("exp" | "nbf")) {
            e.push(format!("{ctx}: claims_to_verify has {claim}, not exp/nbf"));
        }
    }
    let max = config["maximum_expiration"].as_f64().unwrap_or(0.0);
    if !(0.0..=31_536_000.0).contains(&max) {
        e.push(format!(
            "{ctx}: maximum_expiration {max} outside 0..=31536000"
        ));
    }
    // What Pace needs of it: the kid picks the key, exp is checked, and a
    // failure reaches the redirect (anonymous) instead of a 401.
    if config["key_claim_name"] != "kid" {
        e.push(format!("{ctx}: key_claim_name must be kid (rotation)"));
    }
    if !config["claims_to_verify"]
        .as_array()
        .is_some_and(|a| a.contains(&json!("exp")))
    {
        e.push(format!("{ctx}: claims_to_verify must contain exp"));
    }
    e
}

fn function_plugin_violations(config: &Value, ctx: &str) -> Vec<String> {
    let mut e = Vec::new();
    let Some(map) = config.as_object() else {
        return vec![format!("{ctx}: config is not an object")];
    };
    for (key, value) in map {
        if !FUNCTION_PHASES.contains(&key.as_str()) {
            e.push(format!("{ctx}: unknown phase {key}"));
        }
        if !value
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_string))
        {
            e.push(format!("{ctx}: {key} must be an array of Lua sources"));
        }
    }
    e
}

/// The protected site's service: a plain HTTP service (its host is the
/// site, not the nodes' upstream) whose route carries the admission check.
fn site_service_violations(s: &Value) -> Vec<String> {
    let mut e = Vec::new();
    let ctx = format!("service {}", str_field(s, "name").unwrap_or("?"));
    one_of(s, "protocol", SERVICE_PROTOCOLS, &mut e, &ctx);
    int_in(s, "port", 1, 65_535, &mut e, &ctx);
    int_in(s, "retries", 0, 32_767, &mut e, &ctx);
    for t in ["connect_timeout", "read_timeout", "write_timeout"] {
        int_in(s, t, 1, i64::from(i32::MAX) - 1, &mut e, &ctx);
    }
    if str_field(s, "host").is_none_or(str::is_empty) {
        e.push(format!("{ctx}: host is required"));
    }
    for r in s["routes"].as_array().into_iter().flatten() {
        let rctx = format!("route {}", str_field(r, "name").unwrap_or("?"));
        let names: Vec<&str> = r["plugins"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| str_field(p, "name"))
            .collect();
        if names != ["jwt", "post-function"] {
            e.push(format!(
                "{rctx}: the site route needs jwt then post-function, has {names:?}"
            ));
        }
    }
    e
}

/// Every plugin and consumer of a protected site against Kong's schemas.
fn protection_violations(doc: &Value) -> Vec<String> {
    let mut e = Vec::new();
    let consumers = doc["consumers"].as_array().cloned().unwrap_or_default();
    let usernames: Vec<&str> = consumers
        .iter()
        .filter_map(|c| str_field(c, "username"))
        .collect();
    for service in doc["services"].as_array().into_iter().flatten() {
        for route in service["routes"].as_array().into_iter().flatten() {
            for plugin in route["plugins"].as_array().into_iter().flatten() {
                let ctx = format!(
                    "route {} plugin {}",
                    str_field(route, "name").unwrap_or("?"),
                    str_field(plugin, "name").unwrap_or("?")
                );
                match str_field(plugin, "name") {
                    Some("jwt") => {
                        e.extend(jwt_plugin_violations(&plugin["config"], &ctx));
                        match str_field(&plugin["config"], "anonymous") {
                            Some(a) if usernames.contains(&a) => {}
                            other => e.push(format!(
                                "{ctx}: anonymous {other:?} must name a consumer of the config"
                            )),
                        }
                    }
                    Some("pre-function" | "post-function") => {
                        e.extend(function_plugin_violations(&plugin["config"], &ctx));
                    }
                    other => e.push(format!("{ctx}: unexpected plugin {other:?}")),
                }
            }
        }
    }
    let mut keys = std::collections::HashSet::new();
    for c in &consumers {
        let ctx = format!("consumer {}", str_field(c, "username").unwrap_or("?"));
        if str_field(c, "username").is_none_or(str::is_empty) {
            e.push(format!("{ctx}: username is required"));
        }
        for s in c["jwt_secrets"].as_array().into_iter().flatten() {
            let sctx = format!("{ctx} jwt_secret {}", str_field(s, "key").unwrap_or("?"));
            for field in ["key", "secret", "algorithm"] {
                if str_field(s, field).is_none_or(str::is_empty) {
                    e.push(format!("{sctx}: {field} must be a non-empty string"));
                }
            }
            one_of(s, "algorithm", JWT_ALGORITHMS, &mut e, &sctx);
            if str_field(s, "algorithm") != Some("ES256") {
                e.push(format!("{sctx}: admission keys are ES256"));
            }
            // Kong requires a parseable public key for asymmetric algorithms.
            let pem = str_field(s, "rsa_public_key").unwrap_or("").trim();
            if !pem.starts_with("-----BEGIN PUBLIC KEY-----")
                || !pem.ends_with("-----END PUBLIC KEY-----")
            {
                e.push(format!("{sctx}: rsa_public_key must be a PEM public key"));
            }
            if let Some(key) = str_field(s, "key")
                && !keys.insert(key.to_owned())
            {
                e.push(format!("{sctx}: key must be unique"));
            }
        }
    }
    e
}

/// A protected site as `pace-node gateway kong --protect` builds it, with
/// two keys (a rotation's overlap).
fn generated_protected() -> Value {
    let dir = tempfile::tempdir().unwrap();
    let pem = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEaxfR8uEsQkf4vOblY6RA8ncDfYEt\n6zOg9KE5RdiYwpZP40Li/hp/m47n60p8D54WK84zV2sxXs7LtkBoN79R9Q==\n-----END PUBLIC KEY-----\n";
    let keys: Vec<pace_gateway::AdmissionKey> = ["kid-one", "kid-two"]
        .iter()
        .map(|kid| {
            let path = dir.path().join(format!("{kid}.pem"));
            std::fs::write(&path, pem).unwrap();
            pace_gateway::AdmissionKey::from_arg(&format!("{kid}={}", path.display())).unwrap()
        })
        .collect();
    let options = KongOptions {
        protect: Some(pace_gateway::Protection {
            prefix: "/shop/".into(),
            room: "sale".into(),
            site: pace_gateway::Node::parse("10.0.0.5:8080").unwrap(),
            issuer: "pace".into(),
            keys,
            secure_cookie: true,
        }),
        ..KongOptions::default()
    };
    serde_json::to_value(kong_config(&three_loopback_nodes(), &options).unwrap()).unwrap()
}

#[test]
fn protected_site_follows_kongs_plugin_and_credential_schemas() {
    let doc = generated_protected();
    let errors = all_violations(&doc);
    assert!(
        errors.is_empty(),
        "Kong would refuse the protected config:\n{}",
        errors.join("\n")
    );
    let deck = deck_errors(&deck_validator(), &doc);
    assert!(
        deck.is_empty(),
        "decK schema violations:\n{}",
        deck.join("\n")
    );

    // The nodes' upstream and service are exactly today's.
    let plain = generated();
    assert_eq!(doc["upstreams"], plain["upstreams"]);
    let pace = &doc["services"][0];
    assert_eq!(pace["name"], "pace");
    assert_eq!(
        pace["routes"].as_array().unwrap()[..5],
        plain["services"][0]["routes"].as_array().unwrap()[..]
    );
    // The renewal route goes to the nodes; the site route to the site.
    let renew = &pace["routes"][5];
    assert_eq!(renew["paths"], json!(["/shop/_pace/renew"]));
    assert_eq!(renew["methods"], json!(["POST"]));
    let site = &doc["services"][1];
    assert_eq!(
        (site["host"].clone(), site["port"].clone()),
        (json!("10.0.0.5"), json!(8080))
    );
    let route = &site["routes"][0];
    assert_eq!(route["paths"], json!(["/shop/"]));
    let jwt = &route["plugins"][0]["config"];
    assert_eq!(jwt["uri_param_names"], json!(["pace_token"]));
    assert_eq!(jwt["cookie_names"], json!(["pace_admission"]));
    let check = route["plugins"][1]["config"]["access"][0].as_str().unwrap();
    assert!(check.contains(r#"claims.aud == "sale""#), "{check}");
    assert!(check.contains(r#"claims.iss == "pace""#), "{check}");
    assert!(
        check.contains(r#"kong.response.exit(302, "", { ["Location"] = "/r/sale""#),
        "{check}"
    );
    let secrets = &doc["consumers"][0]["jwt_secrets"];
    assert_eq!(secrets[0]["key"], "kid-one");
    assert_eq!(secrets[1]["key"], "kid-two");
    assert_eq!(doc["consumers"][1]["username"], "pace-anonymous");
}

#[test]
fn plugin_checker_catches_broken_protection() {
    let cases: Vec<Breakage> = vec![
        (
            "unknown jwt field",
            Box::new(|d| {
                d["services"][1]["routes"][0]["plugins"][0]["config"]["uri_params"] = json!(["x"])
            }),
        ),
        (
            "jwt field type",
            Box::new(|d| {
                d["services"][1]["routes"][0]["plugins"][0]["config"]["cookie_names"] =
                    json!("pace_admission")
            }),
        ),
        (
            "claims_to_verify value",
            Box::new(|d| {
                d["services"][1]["routes"][0]["plugins"][0]["config"]["claims_to_verify"] =
                    json!(["exp", "aud"])
            }),
        ),
        (
            "key by iss",
            Box::new(|d| {
                d["services"][1]["routes"][0]["plugins"][0]["config"]["key_claim_name"] =
                    json!("iss")
            }),
        ),
        (
            "missing anonymous consumer",
            Box::new(|d| d["consumers"].as_array_mut().unwrap().truncate(1)),
        ),
        (
            "function phase",
            Box::new(|d| {
                d["services"][1]["routes"][0]["plugins"][1]["config"]["acess"] = json!(["x"])
            }),
        ),
        (
            "function type",
            Box::new(|d| {
                d["services"][1]["routes"][0]["plugins"][1]["config"]["access"] = json!("x")
            }),
        ),
        (
            "no post-function",
            Box::new(|d| {
                d["services"][1]["routes"][0]["plugins"]
                    .as_array_mut()
                    .unwrap()
                    .pop();
            }),
        ),
        (
            "HS256 secret",
            Box::new(|d| d["consumers"][0]["jwt_secrets"][0]["algorithm"] = json!("HS256")),
        ),
        (
            "bad algorithm",
            Box::new(|d| d["consumers"][0]["jwt_secrets"][0]["algorithm"] = json!("ES257")),
        ),
        (
            "no public key",
            Box::new(|d| d["consumers"][0]["jwt_secrets"][0]["rsa_public_key"] = json!("")),
        ),
        (
            "duplicate key",
            Box::new(|d| d["consumers"][0]["jwt_secrets"][1]["key"] = json!("kid-one")),
        ),
    ];
    for (what, break_it) in cases {
        let mut doc = generated_protected();
        break_it(&mut doc);
        assert!(
            !all_violations(&doc).is_empty(),
            "the checker missed: {what}"
        );
    }
    // And decK's schema catches a structural slip in a credential.
    let mut doc = generated_protected();
    doc["consumers"][0]["jwt_secrets"][0]["public_key"] = json!("x");
    assert!(!deck_errors(&deck_validator(), &doc).is_empty());
}

#[test]
fn generated_config_follows_kongs_entity_rules() {
    let doc = generated();
    let errors = all_violations(&doc);
    assert!(
        errors.is_empty(),
        "Kong would refuse the config:\n{}",
        errors.join("\n")
    );
    let u = &doc["upstreams"][0];
    assert_eq!(u["algorithm"], "consistent-hashing");
    assert_eq!(u["hash_on"], "header");
    assert_eq!(u["hash_fallback"], "query_arg");
    assert_eq!(u["hash_fallback_query_arg"], "device_id");
    assert_eq!(u["healthchecks"]["active"]["http_path"], "/ready");
}

#[test]
fn rule_checker_catches_broken_upstreams() {
    let cases: Vec<Breakage> = vec![
        (
            "bad algorithm",
            Box::new(|u| u["algorithm"] = json!("ring-hash")),
        ),
        ("bad hash_on", Box::new(|u| u["hash_on"] = json!("device"))),
        (
            "header without name",
            Box::new(|u| {
                u.as_object_mut()
                    .unwrap()
                    .retain(|k, _| k != "hash_on_header")
            }),
        ),
        (
            "query fallback without name",
            Box::new(|u| {
                u.as_object_mut()
                    .unwrap()
                    .retain(|k, _| k != "hash_fallback_query_arg")
            }),
        ),
        (
            "cookie without name",
            Box::new(|u| u["hash_fallback"] = json!("cookie")),
        ),
        (
            "fallback with hash_on none",
            Box::new(|u| u["hash_on"] = json!("none")),
        ),
        (
            "fallback equal to ip",
            Box::new(|u| {
                u["hash_on"] = json!("ip");
                u["hash_fallback"] = json!("ip");
            }),
        ),
        (
            "same header twice",
            Box::new(|u| {
                u["hash_fallback"] = json!("header");
                u["hash_fallback_header"] = u["hash_on_header"].clone();
            }),
        ),
        (
            "bad header name",
            Box::new(|u| u["hash_on_header"] = json!("x device id")),
        ),
        ("slots too small", Box::new(|u| u["slots"] = json!(9))),
        ("slots too large", Box::new(|u| u["slots"] = json!(65_537))),
        (
            "bad check type",
            Box::new(|u| u["healthchecks"]["active"]["type"] = json!("ws")),
        ),
        (
            "bad status",
            Box::new(|u| u["healthchecks"]["active"]["healthy"]["http_statuses"] = json!([42])),
        ),
        (
            "passive interval",
            Box::new(|u| u["healthchecks"]["passive"]["healthy"]["interval"] = json!(1)),
        ),
        (
            "bad weight",
            Box::new(|u| u["targets"][0]["weight"] = json!(70_000)),
        ),
        (
            "bad target",
            Box::new(|u| u["targets"][0]["target"] = json!("127.0.0.1")),
        ),
    ];
    for (what, break_it) in cases {
        let mut doc = generated();
        break_it(&mut doc["upstreams"][0]);
        assert!(
            !all_violations(&doc).is_empty(),
            "the checker missed: {what}"
        );
    }
}

#[test]
fn rule_checker_catches_broken_services_and_routes() {
    let cases: Vec<Breakage> = vec![
        (
            "ws route protocol",
            Box::new(|s| s["routes"][0]["protocols"] = json!(["ws", "wss"])),
        ),
        (
            "exposed /ready",
            Box::new(|s| s["routes"][0]["paths"] = json!(["/re"])),
        ),
        (
            "exposed everything",
            Box::new(|s| s["routes"][0]["paths"] = json!(["/"])),
        ),
        (
            "strip_path",
            Box::new(|s| s["routes"][1]["strip_path"] = json!(true)),
        ),
        (
            "short read timeout",
            Box::new(|s| s["read_timeout"] = json!(10_000)),
        ),
        ("wrong host", Box::new(|s| s["host"] = json!("elsewhere"))),
        ("bad protocol", Box::new(|s| s["protocol"] = json!("h2"))),
    ];
    for (what, break_it) in cases {
        let mut doc = generated();
        break_it(&mut doc["services"][0]);
        assert!(
            !all_violations(&doc).is_empty(),
            "the checker missed: {what}"
        );
    }
}

fn deck_validator() -> jsonschema::Validator {
    let path = kong_dir_file("schema/kong_json_schema.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "decK's JSON schema is missing at {} ({e}); it is committed in the repo",
            path.display()
        )
    });
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::draft4::new(&schema).unwrap()
}

fn deck_errors(validator: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn generated_config_matches_decks_json_schema() {
    let validator = deck_validator();
    let errors = deck_errors(&validator, &generated());
    assert!(
        errors.is_empty(),
        "decK schema violations:\n{}",
        errors.join("\n")
    );

    // The YAML as rendered (comments and all) parses to the same document.
    let yaml = render_kong(&three_loopback_nodes(), &KongOptions::default()).unwrap();
    let parsed: Value = serde_norway::from_str(&yaml).unwrap();
    assert_eq!(parsed, generated());
}

#[test]
fn decks_schema_is_not_vacuous() {
    let validator = deck_validator();
    let mut doc = generated();
    doc["upstreams"][0]["hash_on_headers"] = json!("typo");
    doc["services"][0]["read_timeout"] = json!("1h");
    let errors = deck_errors(&validator, &doc);
    assert!(errors.len() >= 2, "expected two violations, got {errors:?}");
}
