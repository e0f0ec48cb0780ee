//! The HTTP stream fallback, against a real node behind HAProxy (the
//! config `pace-node gateway haproxy` generates): when the proxy starts
//! refusing WebSocket upgrades, the client falls back to the stream by
//! itself, keeps its queue place and misses no notification (resume
//! across transports).

use std::path::Path;
use std::process::{Child, Command, Stdio};

use pace_device::{Client, Event, TransportKind, TransportPolicy};
use pace_protocol::{GroupId, RoomId};
use serde_json::json;

use crate::node::{Node, NodeOpts, SERVICE_KEY, free_port, http, node_binary};
use crate::{config, wait_for};

/// One HAProxy process in front of a node, killed by PID on drop.
struct Proxy {
    child: Child,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    /// HAProxy on `port` in front of `node_port`; with `deny_websocket`, it
    /// refuses upgrades (403) as a strict corporate proxy does.
    fn start(dir: &Path, port: u16, node_port: u16, deny_websocket: bool) -> Proxy {
        let mut cmd = Command::new(node_binary());
        cmd.args(["gateway", "haproxy", "--bind"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--node")
            .arg(format!("127.0.0.1:{node_port}"));
        if deny_websocket {
            cmd.arg("--deny-websocket");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cfg = dir.join(format!("haproxy-{deny_websocket}.cfg"));
        std::fs::write(&cfg, &out.stdout).unwrap();
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&cfg)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run haproxy ({e}); install it with deploy/install-deps haproxy")
            });
        Proxy { child }
    }
}

async fn put_room(node: &Node, capacity: u32) {
    let body = json!({"capacity": capacity, "admit_per_minute": null, "session_ttl_secs": 60,
                      "target_url": "https://shop.example/in", "state": "open", "pow_difficulty": 0});
    let (status, text) = http(
        node.port,
        "PUT",
        "/api/v1/rooms/sale",
        &[("authorization", &format!("Bearer {SERVICE_KEY}"))],
        &body.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
}

async fn notified(events: &mut pace_device::Events) -> u64 {
    wait_for(events, crate::SOON, |e| match e {
        Event::Notification(n) => n.data["n"].as_u64(),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_to_the_stream_when_the_proxy_refuses_upgrades_keeping_place_and_notifications()
{
    let node = Node::start_with(NodeOpts {
        extra: vec!["--admit-tick".into(), "50ms".into()],
        ..NodeOpts::default()
    })
    .await;
    put_room(&node, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let proxy = Proxy::start(dir.path(), port, node.port, false);
    let base = format!("http://127.0.0.1:{port}");
    // Someone ahead in the queue, so the place is not trivially 1.
    let (ahead, mut ahead_events) = Client::connect(config(&base, "kiosk_ahead")).unwrap();
    wait_for(&mut ahead_events, crate::SOON, |e| {
        matches!(e, Event::Connected { .. }).then_some(())
    })
    .await;
    ahead.join(RoomId::parse("sale").unwrap()).await.unwrap();
    wait_for(&mut ahead_events, crate::SOON, |e| {
        matches!(e, Event::Queue(_)).then_some(())
    })
    .await;

    let (client, mut events) = Client::connect(config(&base, "laptop_fb1")).unwrap();
    wait_for(&mut events, crate::SOON, |e| {
        matches!(e, Event::Connected { .. }).then_some(())
    })
    .await;
    assert_eq!(client.transport(), TransportKind::WebSocket);
    client
        .subscribe(GroupId::parse("ops").unwrap())
        .await
        .unwrap();
    client.join(RoomId::parse("sale").unwrap()).await.unwrap();
    let place = wait_for(&mut events, crate::SOON, |e| match e {
        Event::Queue(q) => Some(q.position),
        _ => None,
    })
    .await;
    assert_eq!(place, 2);
    node.notify("group", Some("ops"), "e", json!({"n": 1}))
        .await;
    assert_eq!(notified(&mut events).await, 1);
    node.notify("all", None, "e", json!({"n": 2})).await;
    assert_eq!(notified(&mut events).await, 2);

    // The proxy turns strict: its restart drops the WebSocket, and its
    // successor refuses upgrades. Notifications go on meanwhile.
    drop(proxy);
    node.notify("group", Some("ops"), "e", json!({"n": 3}))
        .await;
    node.notify("all", None, "e", json!({"n": 4})).await;
    let _strict = Proxy::start(dir.path(), port, node.port, true);
    wait_for(&mut events, crate::SOON, |e| {
        matches!(e, Event::Connected { .. }).then_some(())
    })
    .await;
    assert_eq!(client.transport(), TransportKind::Stream);
    // The same place, and what was sent meanwhile, in order.
    let mut got = Vec::new();
    let mut place_again = None;
    while got.len() < 2 || place_again.is_none() {
        match wait_for(&mut events, crate::SOON, |e| match e {
            Event::Notification(n) => Some((n.data["n"].as_u64(), None)),
            Event::Queue(q) => Some((None, Some(q.position))),
            _ => None,
        })
        .await
        {
            (Some(n), _) => got.push(n),
            (_, Some(p)) => place_again = Some(p),
            _ => {}
        }
    }
    got.sort_unstable();
    assert_eq!(got, [3, 4], "nothing missed, nothing twice");
    assert_eq!(place_again, Some(2), "the queue place is kept");
    // Live notifications and frames both ways on the stream.
    node.notify("device", Some("laptop_fb1"), "e", json!({"n": 5}))
        .await;
    assert_eq!(notified(&mut events).await, 5);
    put_room(&node, 5).await;
    wait_for(&mut events, crate::SOON, |e| {
        matches!(e, Event::Admitted(_)).then_some(())
    })
    .await;
    client.close().await;
    ahead.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_only_policy_connects_over_the_stream() {
    let node = Node::start().await;
    let cfg = config(&node.base, "laptop_fb2").with_transport(TransportPolicy::Stream);
    let (client, mut events) = Client::connect(cfg).unwrap();
    wait_for(&mut events, crate::SOON, |e| {
        matches!(e, Event::Connected { .. }).then_some(())
    })
    .await;
    assert_eq!(client.transport(), TransportKind::Stream);
    node.notify("device", Some("laptop_fb2"), "e", json!({"n": 7}))
        .await;
    assert_eq!(notified(&mut events).await, 7);
    client.close().await;
}
