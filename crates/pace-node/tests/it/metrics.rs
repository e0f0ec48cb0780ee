//! `/metrics` is valid Prometheus text and reflects what happened.

use std::collections::HashMap;

use serde_json::json;

use crate::support::*;

fn parse(text: &str) -> HashMap<String, f64> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let mut labels: Vec<_> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            };
            (format!("{}{{{}}}", s.metric, labels.join(",")), value)
        })
        .collect()
}

#[tokio::test]
async fn metrics_parse_and_reflect_counts() {
    let node = TestNode::start().await;
    let _ = node.try_connect("/ws", &[]).await;
    let (_a, _) = node.connect("m-a").await;
    let (mut b, _) = node.connect("m-a").await; // replaces the first
    let (_c, _) = node.connect("m-c").await;
    node.notify(json!({"scope": "all", "event": "tick"})).await;
    let _ = next_frame(&mut b).await;

    let text = node.metrics().await;
    let m = parse(&text);
    assert_eq!(
        m["pace_handshakes_refused_total{reason=missing_device_id}"],
        1.0
    );
    node.wait_metric(r#"pace_disconnects_total{reason="replaced"}"#, 1.0)
        .await;
    assert_eq!(m["pace_connections_accepted_total{}"], 3.0);
    assert_eq!(
        m["pace_notify_requests_total{result=accepted,scope=all}"],
        1.0
    );
    assert!(m["pace_messages_delivered_total{event=tick}"] >= 1.0);
    assert_eq!(m["pace_ready{}"], 1.0);
    assert_eq!(m["pace_store_up{store=memory}"], 1.0);
    assert!(m["process_resident_memory_bytes{}"] > 0.0);
    assert!(
        !text.contains("m-a"),
        "device ids must never appear in metrics"
    );
}
