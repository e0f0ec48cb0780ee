//! Small `hold`, `broadcast` and `surge` runs against one real node each,
//! and the helpers every scenario test uses.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use pace_loadtest::report::Report;

use crate::node::{Node, SERVICE_KEY};

/// A scratch file path for this test process.
pub fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("pace-loadtest-it-{}-{name}", std::process::id()))
}

/// Checks, loosely, that `path` is an SVG picture with lines drawn and
/// every one of `labels` in it; removes it.
pub fn assert_svg(path: &std::path::Path, labels: &[&str]) {
    let svg = std::fs::read_to_string(path).expect("the --svg file was written");
    let _ = std::fs::remove_file(path);
    let head = svg.trim_start();
    assert!(
        head.starts_with("<svg") || head.starts_with("<?xml"),
        "not an SVG: {:.120}",
        head
    );
    assert!(svg.contains("xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.trim_end().ends_with("</svg>"), "truncated SVG");
    assert_eq!(svg.matches("<svg").count(), 1, "one root element");
    assert!(svg.contains("<rect"), "no background");
    assert!(
        svg.matches("<polyline").count() + svg.matches("<path").count() >= 2,
        "no series drawn"
    );
    for label in labels {
        assert!(svg.contains(label), "series {label:?} missing from the SVG");
    }
}

/// Runs `pace-loadtest ARGS --json FILE` to completion and parses the report.
pub fn run_tool(name: &str, args: &[&str]) -> Report {
    let json: PathBuf = std::env::temp_dir().join(format!(
        "pace-loadtest-it-{}-{name}.json",
        std::process::id()
    ));
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_pace-loadtest"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run pace-loadtest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pace-loadtest {args:?} failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!("{name} took {:?}\n{stdout}", started.elapsed());
    let text = std::fs::read_to_string(&json).expect("read json report");
    let _ = std::fs::remove_file(&json);
    serde_json::from_str(&text).expect("parse json report")
}

#[test]
fn hold_200_devices_connects_and_closes_cleanly() {
    let node = Node::start(1_000);
    let pid = node.pid().to_string();
    let svg = scratch("hold.svg");
    let r = run_tool(
        "hold",
        &[
            "hold",
            "--svg",
            &svg.to_string_lossy(),
            "--target",
            &node.base,
            "--devices",
            "200",
            "--hold",
            "1",
            "--settle",
            "0.5",
            "--node-pid",
            &pid,
        ],
    );
    assert_eq!(r.scenario, "hold");
    assert_eq!(r.connect.attempted, 200);
    assert_eq!(r.connect.failed, 0, "failures: {:?}", r.connect.failures);
    assert_eq!(r.connect.connected, 200);
    assert_eq!(r.connect.latency_ms.count, 200);
    assert!(r.connect.rate_per_s > 0.0);
    assert_eq!(r.source_ips.len(), 8, "loopback targets use 127.0.0.2-9");
    assert!(r.memory.rss_per_device_kib.is_some(), "{:?}", r.memory);
    let hold = r.hold.clone().expect("hold section");
    assert_eq!(hold.open_at_end, 200);
    assert_eq!(hold.dropped, 0);
    assert_closed_cleanly(&r, 200);
    assert_svg(
        &svg,
        &[
            "connect (TCP connect → welcome) (n=200)",
            "connections open",
        ],
    );
}

#[test]
fn hold_register_connects_devices_to_a_node_requiring_tokens() {
    let node = Node::start_requiring_tokens(1_000);
    let pid = node.pid().to_string();
    let args = |register: bool| {
        let mut a = vec![
            "hold",
            "--target",
            &node.base,
            "--devices",
            "50",
            "--hold",
            "0.5",
            "--settle",
            "0.2",
            "--node-pid",
            &pid,
        ];
        if register {
            a.extend(["--register", "--register-concurrency", "8"]);
        }
        a
    };

    // Without tokens the node refuses every handshake.
    let r = run_tool("hold-anonymous", &args(false));
    assert!(r.register.is_none());
    assert_eq!(r.connect.connected, 0, "{:?}", r.connect);
    assert_eq!(r.connect.failed, 50);
    assert!(
        r.connect
            .failures
            .iter()
            .all(|(reason, _)| reason.starts_with("http_401")),
        "failures: {:?}",
        r.connect.failures
    );

    // Registered, every device connects with its token.
    let r = run_tool("hold-register", &args(true));
    let reg = r.register.clone().expect("register section");
    assert_eq!(reg.registered, 50, "{reg:?}");
    assert_eq!(reg.register_failed, 0, "{reg:?}");
    assert!(reg.failures.is_empty(), "{reg:?}");
    assert_eq!(reg.latency_ms.count, 50);
    assert_eq!(r.connect.attempted, 50);
    assert_eq!(r.connect.failed, 0, "failures: {:?}", r.connect.failures);
    assert_eq!(r.connect.connected, 50);
    assert_eq!(r.connect.latency_ms.count, 50);
    let hold = r.hold.clone().expect("hold section");
    assert_eq!(hold.open_at_end, 50);
    assert_closed_cleanly(&r, 50);
}

/// Every device was closed by the tool, none by the node or the network,
/// and the node answered every close frame (RFC 6455 closing handshake).
pub fn assert_closed_cleanly(r: &Report, devices: u64) {
    assert!(
        r.close.dropped.is_empty(),
        "dropped early: {:?}",
        r.close.dropped
    );
    assert_eq!(r.close.errors, 0, "{:?}", r.close);
    assert_eq!(
        r.close.no_reply, 0,
        "node dropped TCP without answering close: {:?}",
        r.close
    );
    assert_eq!(r.close.clean, devices, "{:?}", r.close);
}

#[test]
fn broadcast_200_devices_5_messages_loses_nothing() {
    let node = Node::start(1_000);
    let pid = node.pid().to_string();
    let svg = scratch("broadcast.svg");
    let r = run_tool(
        "broadcast",
        &[
            "broadcast",
            "--svg",
            &svg.to_string_lossy(),
            "--target",
            &node.base,
            "--devices",
            "200",
            "--messages",
            "5",
            "--interval-ms",
            "100",
            "--settle",
            "0.5",
            "--service-key",
            SERVICE_KEY,
            "--node-pid",
            &pid,
        ],
    );
    assert_eq!(r.connect.failed, 0, "failures: {:?}", r.connect.failures);
    let b = r.broadcast.clone().expect("broadcast section");
    assert_eq!(b.accepted, 5, "post failures: {:?}", b.post_failures);
    assert_eq!(b.devices_at_send, 200);
    assert_eq!(b.expected, 1_000);
    assert_eq!(b.received, 1_000);
    assert_eq!(b.lost, 0);
    assert_eq!(b.duplicates, 0);
    assert_eq!(b.foreign, 0);
    assert!(b.drained);
    assert_eq!(b.incomplete_messages, 0);
    assert_eq!(b.latency_ms.count, 1_000);
    assert_eq!(b.time_to_last_device_ms.count, 5);
    assert!(b.latency_ms.max >= b.latency_ms.p50 && b.latency_ms.p50 > 0.0);
    assert!(b.cpu.us_per_delivery.is_some());
    assert_closed_cleanly(&r, 200);
    assert_svg(
        &svg,
        &[
            "delivery (POST → device) (n=1000)",
            "notifications received (right axis)",
            "first POST",
        ],
    );
}

#[test]
fn surge_200_devices_capacity_10_admits_in_order_within_capacity() {
    let data = std::env::temp_dir().join(format!("pace-loadtest-it-surge-{}", std::process::id()));
    let data_dir = data.to_string_lossy().into_owned();
    let node = Node::start_with(1_000, &["--admit-tick", "100ms", "--data-dir", &data_dir]);
    let pid = node.pid().to_string();
    let svg = scratch("surge.svg");
    let r = run_tool(
        "surge",
        &[
            "surge",
            "--svg",
            &svg.to_string_lossy(),
            "--target",
            &node.base,
            "--devices",
            "200",
            "--capacity",
            "10",
            "--join-rate",
            "1000",
            "--hold-admitted",
            "50",
            "--hold-jitter",
            "100",
            "--admit-tick-ms",
            "100",
            "--drain-timeout",
            "60",
            "--settle",
            "0.2",
            "--service-key",
            SERVICE_KEY,
            "--node-pid",
            &pid,
        ],
    );
    drop(node);
    let _ = std::fs::remove_dir_all(&data);
    assert_eq!(r.scenario, "surge");
    assert_eq!(r.connect.failed, 0, "failures: {:?}", r.connect.failures);
    let g = r.surge.clone().expect("surge section");
    assert_eq!(g.devices_joining, 200);
    assert_eq!(g.joins.sent, 200);
    assert_eq!(g.joins.answered, 200, "refused: {:?}", g.joins.refused);
    assert_eq!(g.joins.unanswered, 0);
    assert_eq!(g.joins.latency_ms.count, 200);
    assert_eq!(g.drained, Some(true));
    assert_eq!(g.admitted, 200);
    assert_eq!(g.released, 200);
    assert_eq!(g.extra_admitted, 0);
    assert!(g.dropped.is_empty(), "{:?}", g.dropped);
    assert_eq!(g.order.inversions, 0, "{:?}", g.order);
    assert!(g.order.pairs_checked > 1_000, "{:?}", g.order);
    let c = &g.capacity_check;
    assert!(!c.exceeded, "{c:?}");
    assert!(c.max_active_polled.is_some_and(|m| m <= 10), "{c:?}");
    assert!(
        c.max_held_by_devices <= 10 && c.max_held_by_devices > 0,
        "{c:?}"
    );
    assert!(c.polls > 0);
    // 190 admissions refill a released slot; each is matched to a release.
    let sf = &g.slot_free;
    assert!(sf.failed.is_empty(), "{sf:?}");
    assert!(sf.done_to_admitted_ms.count >= 150, "{sf:?}");
    assert_eq!(sf.unmatched, 0, "{sf:?}");
    let stats = g.final_stats.expect("final stats");
    assert_eq!(
        (stats.admitted_total, stats.waiting, stats.active),
        (200, 0, 0)
    );
    assert_closed_cleanly(&r, 200);
    assert_svg(
        &svg,
        &[
            "join (join → answer) (n=200)",
            "waiting (room stats)",
            "active sessions (room stats) (right axis)",
        ],
    );
}

#[test]
fn broadcast_over_the_http_stream_loses_nothing() {
    let node = Node::start(1_000);
    let pid = node.pid().to_string();
    let r = run_tool(
        "broadcast-sse",
        &[
            "broadcast",
            "--transport",
            "sse",
            "--target",
            &node.base,
            "--devices",
            "100",
            "--messages",
            "5",
            "--interval-ms",
            "100",
            "--settle",
            "0.5",
            "--service-key",
            SERVICE_KEY,
            "--node-pid",
            &pid,
        ],
    );
    assert_eq!(r.connect.failed, 0, "failures: {:?}", r.connect.failures);
    assert_eq!(r.connect.connected, 100);
    let b = r.broadcast.clone().expect("broadcast section");
    assert_eq!(b.devices_at_send, 100);
    assert_eq!(b.received, 500);
    assert_eq!((b.lost, b.duplicates, b.foreign), (0, 0, 0));
    assert!(b.cpu.us_per_delivery.is_some());
}
