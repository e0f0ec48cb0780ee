//! Scheduled events through the gateway, over real Redis: the countdown
//! refusal, the pre-queue, and the shuffle at the start — recomputed here
//! from the revealed seed and the room's public audit log, not taken from
//! the node's word.

use std::collections::HashMap;
use std::time::Duration;

use pace_protocol::audit::{LogLine, device_hash, sha256_hex, shuffle_order};
use pace_protocol::{ErrorCode, ServerFrame};
use serde_json::{Value, json};

use crate::support::*;

const HOUR: u64 = 3_600_000;

fn now_ms() -> u64 {
    pace_node::store::now_ms()
}

/// The room's settings with one event `drop` of `order` at these times
/// (Unix ms), letting up to `capacity` in while live.
fn room_with_event(order: &str, prequeue_start: u64, event_start: u64, capacity: u32) -> Value {
    json!({"capacity": 0, "admit_per_minute": null, "session_ttl_secs": 600,
           "target_url": "https://shop.example/in", "state": "open", "pow_difficulty": 0,
           "events": [{"id": "drop", "prequeue_start": prequeue_start,
                       "event_start": event_start, "event_end": event_start + HOUR,
                       "order": order, "capacity": capacity,
                       "message": "The drop starts soon"}]})
}

async fn put_room(gw: &TestNode, room: &str, body: &Value) -> Value {
    let (status, text) = crate::support::put_room(gw, room, body.clone()).await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

async fn status_of(gw: &TestNode, room: &str, device: &str) -> Value {
    let (status, text) = http(
        gw.addr,
        "GET",
        &format!("/api/v1/rooms/{room}/status?device_id={device}"),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// Joins `device` and returns its connection with the `queue` answer.
async fn join(gw: &TestNode, room: &str, device: &str) -> (Ws, pace_protocol::QueueUpdate) {
    let (mut ws, _) = gw.connect(device).await;
    send_text(&mut ws, &format!(r#"{{"type":"join","room":"{room}"}}"#)).await;
    match next_frame(&mut ws).await {
        ServerFrame::Queue(q) => (ws, q),
        other => panic!("{device}: expected queue, got {other:?}"),
    }
}

/// Waits for `ws`'s admission.
async fn admitted(device: &str, ws: &mut Ws) {
    loop {
        match frame_within(ws, Duration::from_secs(60)).await {
            Some(ServerFrame::Admitted(_)) => return,
            Some(ServerFrame::Queue(_)) => continue,
            Some(other) => panic!("{device}: expected admitted, got {other:?}"),
            None => panic!("{device}: never admitted"),
        }
    }
}

/// An event over 3 nodes: before its pre-queue opens a join is refused
/// with `event_not_open` and the status counts down; 200 devices join the
/// pre-queue (told `prequeue`, nobody admitted); at the start they are
/// admitted in the order recomputed from the revealed seed — which is not
/// their join order — and 20 devices joining after the start come after
/// all of them, in FIFO. The public log verifies, shuffle included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_devices_prequeued_over_three_nodes_are_shuffled_by_the_committed_seed() {
    const PRE: usize = 200;
    const LATE: usize = 20;
    let cluster = Cluster::start(
        3,
        &[
            "--admit-tick",
            "100ms",
            "--position-refresh",
            "1s",
            "--audit-seal-interval",
            "200ms",
        ],
    )
    .await;
    let gw = std::sync::Arc::new(cluster.gateway.handle());

    // Countdown: the pre-queue opens in an hour.
    let opens = now_ms() + HOUR;
    let room = put_room(
        &gw,
        "drop",
        &room_with_event("shuffle", opens, opens + HOUR, 1000),
    )
    .await;
    let commitment = room["config"]["events"][0]["seed_sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(commitment.len(), 64);
    assert!(room["config"]["events"][0].get("seed").is_none());
    let (mut early, _) = gw.connect("early-bird").await;
    send_text(&mut early, r#"{"type":"join","room":"drop"}"#).await;
    match next_frame(&mut early).await {
        ServerFrame::Error { code, message } => {
            assert_eq!(code, ErrorCode::EventNotOpen);
            assert!(message.contains(&opens.to_string()), "{message}");
        }
        other => panic!("expected event_not_open, got {other:?}"),
    }
    let status = status_of(&gw, "drop", "early-bird").await;
    assert_eq!(status["status"], "unknown", "{status}");
    let event = &status["event"];
    assert_eq!(event["phase"], "countdown", "{status}");
    assert_eq!(event["prequeue_start"], opens);
    assert_eq!(event["seed_sha256"], commitment.as_str());
    let left = opens - event["now_ms"].as_u64().unwrap();
    assert!(left > HOUR - 60_000 && left <= HOUR, "countdown {left} ms");

    // The pre-queue opens (moved to now): 200 devices join over the
    // gateway, spread over the nodes; each is told `prequeue`.
    let start = now_ms() + HOUR;
    put_room(
        &gw,
        "drop",
        &room_with_event("shuffle", now_ms() - 1_000, start, 1000),
    )
    .await;
    let mut joined = tokio::task::JoinSet::new();
    for i in 0..PRE {
        let gw = gw.clone();
        joined.spawn(async move {
            let name = format!("pre-{i:03}");
            let (ws, q) = join(&gw, "drop", &name).await;
            assert_eq!(q.state, "prequeue", "{name}: {q:?}");
            (name, ws, q.ticket.unwrap())
        });
    }
    let mut pre = Vec::new();
    while let Some(r) = joined.join_next().await {
        pre.push(r.unwrap());
    }
    pre.sort_by_key(|(_, _, t)| *t);
    // Nobody is admitted during the pre-queue (capacity 1000 while live).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = status_of(&gw, "drop", "pre-000").await;
    assert_eq!(status["status"], "waiting", "{status}");
    assert_eq!(status["event"]["phase"], "prequeue", "{status}");
    assert_eq!(status["waiting_total"], PRE);

    // The start (moved to now), then late devices, one after another.
    put_room(
        &gw,
        "drop",
        &room_with_event("shuffle", now_ms() - 2_000, now_ms(), 1000),
    )
    .await;
    let mut late = Vec::new();
    for i in 0..LATE {
        let name = format!("late-{i:02}");
        let (ws, q) = join(&gw, "drop", &name).await;
        late.push((name, ws, q.ticket.unwrap()));
    }
    for (name, ws, _) in pre.iter_mut().chain(late.iter_mut()) {
        admitted(name, ws).await;
    }

    // The seed is revealed and is the one committed to.
    let (_, text) = http(gw.addr, "GET", "/api/v1/rooms/drop", &[], "")
        .await
        .unwrap();
    let room: Value = serde_json::from_str(&text).unwrap();
    let seed = room["config"]["events"][0]["seed"]
        .as_str()
        .expect("seed revealed")
        .to_owned();
    assert_eq!(sha256_hex(seed.as_bytes()), commitment);

    // The public log, once sealed through every entry (commit, 220 joins,
    // shuffle, 220 admissions).
    let want = 2 + 2 * (PRE + LATE) as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let text = loop {
        let (status, text) = http(gw.addr, "GET", "/api/v1/rooms/drop/log", &[], "")
            .await
            .unwrap();
        assert_eq!(status, 200);
        let header: LogLine = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        if matches!(header, LogLine::Header(h) if h.last_seq == want) {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "never sealed all");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (_, jwks) = http(gw.addr, "GET", "/.well-known/jwks.json", &[], "")
        .await
        .unwrap();
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&jwks).unwrap();
    let report = pace_node::audit::verify::verify(&text, &jwks, None);
    assert!(report.ok(), "{report}");
    assert_eq!(report.inversions, 0, "{report}");
    assert_eq!(report.shuffles.len(), 1, "{report}");

    // Recompute the order here from the revealed seed and the pre-queue's
    // tickets (as the devices were told them), and follow each device
    // from its join (by its hashed id) to its admission in the log.
    let lines: Vec<LogLine> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let pre_tickets: Vec<u64> = pre.iter().map(|(_, _, t)| *t).collect();
    let order = shuffle_order(&seed, &pre_tickets);
    assert_ne!(order, pre_tickets, "the shuffle is not the join order");
    let mut device_of_ticket: HashMap<u64, String> = HashMap::new();
    let hash_of: HashMap<String, String> = pre
        .iter()
        .chain(late.iter())
        .map(|(name, _, _)| (device_hash("drop", name), name.clone()))
        .collect();
    let mut admitted_order = Vec::new();
    let mut commit_seen = false;
    for line in &lines {
        match line {
            LogLine::Commit(c) => {
                assert_eq!(c.seed_sha256, commitment);
                commit_seen = true;
            }
            LogLine::Join(j) => {
                assert!(commit_seen, "a join before the commitment");
                device_of_ticket.insert(j.ticket, hash_of[&j.device].clone());
            }
            LogLine::Shuffle(s) => {
                assert_eq!(s.seed, seed);
                assert_eq!(s.order, order, "the logged order is the recomputed one");
                // From here on, the k-th of the order holds the k-th
                // smallest pre-queue ticket.
                let renamed: HashMap<u64, String> = s
                    .renumbering()
                    .into_iter()
                    .map(|(old, new)| (new, device_of_ticket[&old].clone()))
                    .collect();
                device_of_ticket.extend(renamed);
            }
            LogLine::Admit(a) => admitted_order.push(device_of_ticket[&a.ticket].clone()),
            _ => {}
        }
    }
    let name_of_ticket: HashMap<u64, String> =
        pre.iter().map(|(name, _, t)| (*t, name.clone())).collect();
    let mut expected: Vec<String> = order.iter().map(|t| name_of_ticket[t].clone()).collect();
    let mut late_sorted: Vec<&(String, Ws, u64)> = late.iter().collect();
    late_sorted.sort_by_key(|(_, _, t)| *t);
    expected.extend(late_sorted.iter().map(|(name, _, _)| name.clone()));
    assert_eq!(admitted_order, expected);
    // The late devices joined one after another: FIFO is their join order.
    assert!(late.windows(2).all(|w| w[0].2 < w[1].2));
}
