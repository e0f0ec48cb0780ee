//! A real HAProxy, started from the generated config on a free loopback port
//! in front of three real HTTP backends: a device id (header or query
//! parameter) always reaches the same backend, the ids spread over all
//! backends, and the private paths are not reachable through it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pace_gateway::{HaproxyOptions, Topology, render_haproxy};

use crate::support::{Backend, ChildGuard, free_port, haproxy_binary, http_get, wait_until};

/// Ids spread over the backends.
const DEVICES: usize = 3_000;
/// Ids also checked for stickiness (repeat, query-only, header-over-query).
const STICKY_SAMPLE: usize = 300;
/// Hard ceiling on the whole test's request phase.
const TIME_LIMIT: Duration = Duration::from_secs(90);

/// The backend name from a `backend=<name>` body.
fn backend_of(front: SocketAddr, path: &str, headers: &[(&str, &str)]) -> String {
    let (status, body) =
        http_get(front, path, headers).unwrap_or_else(|e| panic!("GET {path} failed: {e}"));
    assert_eq!(
        status, 200,
        "GET {path} {headers:?} answered {status}: {body}"
    );
    body.trim()
        .strip_prefix("backend=")
        .unwrap_or_else(|| panic!("unexpected body {body:?}"))
        .to_owned()
}

#[test]
fn haproxy_is_sticky_per_device_and_spreads_devices() {
    let haproxy = haproxy_binary();
    let backends: Vec<Backend> = (1..=3).map(|i| Backend::start(&format!("b{i}"))).collect();
    let nodes: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    let topology = Topology::from_args(&nodes, None).unwrap();
    let port = free_port();
    // Defaults otherwise, as committed: notably no fixed maxconn, which
    // `haproxy -c` accepts but a low file-descriptor limit makes fatal.
    let stats_port = free_port();
    let options = HaproxyOptions {
        bind: format!("127.0.0.1:{port}"),
        stats_bind: Some(format!("127.0.0.1:{stats_port}")),
        ..HaproxyOptions::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg, render_haproxy(&topology, &options).unwrap()).unwrap();
    let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
    let child = Command::new(&haproxy)
        .arg("-f")
        .arg(&cfg)
        .arg("-db")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let _haproxy = ChildGuard(child);
    let front: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // Ready when all three backends are reachable through the frontend.
    let up = wait_until(Duration::from_secs(15), || {
        let seen: HashSet<String> = (0..30)
            .filter_map(|n| {
                http_get(
                    front,
                    "/api/whoami",
                    &[("x-device-id", &format!("probe-{n}"))],
                )
                .ok()
            })
            .filter(|(status, _)| *status == 200)
            .map(|(_, body)| body)
            .collect();
        seen.len() == 3
    });
    let log_text = std::fs::read_to_string(dir.path().join("haproxy.log")).unwrap_or_default();
    assert!(
        up,
        "HAProxy did not reach all three backends within 15 s; its log:\n{log_text}"
    );

    // Operator endpoints are not routed publicly.
    for path in ["/ready", "/health", "/metrics", "/"] {
        let (status, _) = http_get(front, path, &[("x-device-id", "device-1")]).unwrap();
        assert_eq!(
            status, 404,
            "{path} must not be reachable through the gateway"
        );
    }

    // HAProxy's own metrics on the private stats listener.
    let stats: SocketAddr = format!("127.0.0.1:{stats_port}").parse().unwrap();
    let (status, body) = http_get(stats, "/metrics", &[]).unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("haproxy_backend_"),
        "no backend metrics in:\n{body}"
    );

    let started = Instant::now();
    let mut by_id: HashMap<String, String> = HashMap::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for n in 1..=DEVICES {
        assert!(
            started.elapsed() < TIME_LIMIT,
            "spread phase exceeded {TIME_LIMIT:?}"
        );
        let id = format!("device-{n}");
        let backend = backend_of(front, "/ws", &[("x-device-id", &id)]);
        *counts.entry(backend.clone()).or_default() += 1;
        by_id.insert(id, backend);
    }
    println!("HAProxy spread of {DEVICES} ids: {counts:?}");
    assert_eq!(counts.len(), 3, "every backend gets devices: {counts:?}");
    for (backend, count) in &counts {
        assert!(
            count * 100 <= DEVICES * 40,
            "{backend} got {count} of {DEVICES} devices (> 40%): {counts:?}"
        );
    }

    for n in 1..=STICKY_SAMPLE {
        assert!(
            started.elapsed() < TIME_LIMIT,
            "stickiness phase exceeded {TIME_LIMIT:?}"
        );
        let id = format!("device-{n}");
        let first = &by_id[&id];
        let again = backend_of(front, "/api/queue", &[("x-device-id", &id)]);
        assert_eq!(
            &again, first,
            "{id} moved between two requests with the header"
        );
        let by_query = backend_of(front, &format!("/ws?room=sale&device_id={id}"), &[]);
        assert_eq!(
            &by_query, first,
            "{id}: the query parameter and the header disagree"
        );
        let other = format!("device-{}", n + STICKY_SAMPLE);
        let header_wins = backend_of(
            front,
            &format!("/ws?device_id={other}"),
            &[("x-device-id", &id)],
        );
        assert_eq!(
            &header_wins, first,
            "{id}: the header must take precedence over the query parameter"
        );
    }
}
