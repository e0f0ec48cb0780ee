//! The waiting page in headless Chromium through HAProxy that refuses
//! WebSocket upgrades (`--deny-websocket`): the page falls back to the HTTP
//! stream (EventSource + fetch) by itself, shows its place moving, gets
//! all/room/device notifications and is admitted, with nothing different
//! on screen.

use std::time::Duration;

use serde_json::json;

use crate::browser::Browser;
use crate::stream_gateway::strict_gateway;
use crate::support::*;

/// Long enough for a position refresh, an admission tick and a page update
/// on a loaded CI machine; never a measure of speed.
const UI: Duration = Duration::from_secs(20);

async fn put_demo(node: &TestNode, capacity: u32) {
    let body = json!({"capacity": capacity, "admit_per_minute": null, "session_ttl_secs": 60,
                      "target_url": format!("http://{}/demo/target", node.addr),
                      "state": "open", "pow_difficulty": 0});
    let (status, text) = http(
        node.addr,
        "PUT",
        "/api/v1/rooms/demo",
        &[("authorization", &format!("Bearer {KEY}"))],
        &body.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waiting_page_falls_back_to_the_stream_behind_a_proxy_refusing_websockets() {
    let node = TestNode::start_with(|c| {
        c.web.demo_room = true;
        c.rooms.position_refresh = Duration::from_millis(500);
        c.rooms.admit_tick = Duration::from_millis(100);
        c.limits.sse_heartbeat = Duration::from_secs(1);
    })
    .await;
    put_demo(&node, 0).await;
    let (_haproxy, gw) = strict_gateway(&[node.addr]).await;
    // Two devices ahead of the browser (straight to the node).
    let mut ahead = Vec::new();
    for i in 1..=2 {
        let (mut ws, _) = node.connect(&format!("ahead-{i}")).await;
        send_text(&mut ws, r#"{"type":"join","room":"demo"}"#).await;
        next_frame(&mut ws).await;
        ahead.push(ws);
    }
    let browser = Browser::start().await;
    let page = browser.page().await;
    page.goto(&format!("http://{gw}/r/demo")).await;
    page.wait_text("#position", UI, |t| t == "3").await;
    assert_eq!(
        page.eval("return document.documentElement.dataset.transport")
            .await,
        json!("stream"),
        "the page fell back to the HTTP stream"
    );
    assert_eq!(
        node.metric(r#"pace_transport_connections_open{transport="sse"}"#)
            .await,
        1.0
    );
    let id = page
        .eval("return localStorage.getItem('pace.device_id')")
        .await;
    let id = id
        .as_str()
        .expect("the page keeps its device id")
        .to_owned();
    for (scope, target, text) in [
        ("all", None, "to everyone"),
        ("group", Some("@room:demo"), "to the room"),
        ("device", Some(id.as_str()), "to this browser"),
    ] {
        let mut body = json!({"scope": scope, "event": "note", "data": {"text": text}});
        if let Some(t) = target {
            body["target"] = json!(t);
        }
        let (status, answer) = node.notify(body).await;
        assert_eq!(status, 202, "{answer}");
        page.wait_text("#note-list", UI, |t| t.contains(text)).await;
    }
    // The line moves: one ahead admitted, the page shows 2.
    put_demo(&node, 1).await;
    page.wait_text("#position", UI, |t| t == "2").await;
    page.screenshot("room-waiting-stream").await;
    // Room for all: the page is admitted and sent on to the target.
    put_demo(&node, 5).await;
    let deadline = tokio::time::Instant::now() + UI;
    loop {
        let url = page.current_url().await;
        if url.contains("/demo/target") {
            assert!(url.contains("pace_token="), "{url}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not admitted: {url}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    page.close().await;
}
