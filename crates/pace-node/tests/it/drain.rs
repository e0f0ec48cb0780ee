//! SIGTERM drain, on the real binary: devices get 1012, `/ready` turns 503
//! during the drain, new devices are refused, and the process exits within
//! the grace timeout.

use std::process::Command;
use std::time::{Duration, Instant};

use pace_protocol::CloseCode;

use crate::support::*;

pub use crate::support::NodeProcess;

#[tokio::test]
async fn sigterm_drains_devices_with_1012_and_exits_within_grace() {
    let mut proc = NodeProcess::spawn(&["--drain-grace", "3s"]);
    let node = TestNode {
        addr: proc.addr,
        shutdown: Default::default(),
        task: None,
    };
    node.wait_ready().await;
    let (mut polite, _) = node.connect("polite").await;
    // `stubborn` never reads, so it never answers the close: the node has to
    // wait for it until the grace runs out.
    let (_stubborn, _) = node.connect("stubborn").await;

    let started = Instant::now();
    proc.signal("-TERM");
    assert_eq!(
        close_code(&mut polite).await,
        Some(code(CloseCode::SERVICE_RESTART))
    );

    let (status, body) = http(node.addr, "GET", "/ready", &[], "").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(r#""draining":true"#), "{body}");
    let refused = node
        .try_connect("/ws", &[("x-device-id", "latecomer")])
        .await;
    assert!(
        matches!(&refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 503),
        "{refused:?}"
    );

    let exit = loop {
        if let Some(status) = proc.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "node did not exit after the grace"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "exited before the grace although a device stayed: {took:?}"
    );
}

#[tokio::test]
async fn sigterm_exits_promptly_when_devices_leave() {
    let mut proc = NodeProcess::spawn(&["--drain-grace", "20s"]);
    let node = TestNode {
        addr: proc.addr,
        shutdown: Default::default(),
        task: None,
    };
    node.wait_ready().await;
    let (mut a, _) = node.connect("a").await;
    let started = Instant::now();
    proc.signal("-INT");
    assert_eq!(
        close_code(&mut a).await,
        Some(code(CloseCode::SERVICE_RESTART))
    );
    let status = loop {
        if let Some(s) = proc.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "did not exit once devices left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success());
}

#[test]
fn check_config_rejects_bad_values() {
    let out = Command::new(env!("CARGO_BIN_EXE_pace-node"))
        .args(["check-config", "--service-key", "short"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--service-key"));
    let out = Command::new(env!("CARGO_BIN_EXE_pace-node"))
        .args(["check-config"])
        .env("PACE_PING_INTERVAL", "0s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "env vars are validated too");
    let ok = Command::new(env!("CARGO_BIN_EXE_pace-node"))
        .args(["check-config"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[tokio::test]
async fn drain_delay_keeps_devices_until_the_gateway_has_taken_the_node_out() {
    let mut proc = NodeProcess::spawn(&["--drain-delay", "1s", "--drain-grace", "3s"]);
    let node = TestNode::external(proc.addr);
    node.wait_ready().await;
    let (mut device, _) = node.connect("patient").await;
    let started = Instant::now();
    proc.signal("-TERM");
    // Not ready at once, while the device is still served.
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        let (status, _) = http(node.addr, "GET", "/ready", &[], "").await.unwrap();
        if status == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "/ready did not turn 503 at once");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        frame_within(&mut device, Duration::from_millis(400)).await,
        None,
        "no close during the delay"
    );
    assert_eq!(
        close_code(&mut device).await,
        Some(code(CloseCode::SERVICE_RESTART))
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the delay: {:?}",
        started.elapsed()
    );
    let status = loop {
        if let Some(s) = proc.child.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(8));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success());
}
