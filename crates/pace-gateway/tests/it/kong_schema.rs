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
        e.extend(service_violations(s, &names));
    }
    e
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
