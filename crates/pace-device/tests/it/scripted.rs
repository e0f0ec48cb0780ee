//! Against a scripted node: the handshake, dedupe, resume and rejoin after
//! a reconnect, and what each close code and handshake refusal does.

use std::time::Duration;

use pace_device::{Client, Closed, Disconnect, Event};
use pace_protocol::{CloseCode, ErrorCode, GroupId, RoomId};
use serde_json::json;

use crate::fake::{FakeNode, notification};
use crate::{config, events_for, next_event, notification_ids, wait_for};

fn group(g: &str) -> GroupId {
    GroupId::parse(g).unwrap()
}

#[tokio::test]
async fn the_handshake_carries_the_id_in_header_and_query_the_token_and_departments() {
    let fake = FakeNode::bind().await;
    let cfg = config(&fake.url, "laptop_1")
        .with_token("tok-123")
        .with_departments(vec![group("it"), group("ops")]);
    let (client, mut events) = Client::connect(cfg).unwrap();
    let mut conn = fake.accept().await;
    assert!(conn.uri.starts_with("/ws?"), "{}", conn.uri);
    assert!(conn.uri.contains("device_id=laptop_1"), "{}", conn.uri);
    assert!(conn.uri.contains("token=tok-123"), "{}", conn.uri);
    assert!(
        !conn.uri.contains("resume="),
        "nothing to resume yet: {}",
        conn.uri
    );
    assert_eq!(conn.header("x-device-id"), Some("laptop_1"));
    assert_eq!(conn.header("authorization"), Some("Bearer tok-123"));
    assert_eq!(conn.header("x-department-id"), Some("it,ops"));
    conn.welcome("laptop_1", 25_000, 10_000).await;
    let Event::Connected { welcome, .. } = next_event(&mut events).await else {
        panic!("expected Connected");
    };
    assert_eq!(welcome.node_id, "fake");
    // Departments come with the header: no subscribe frames, and no resume.
    assert!(conn.recv_for(Duration::from_millis(200)).await.is_empty());
    client.close().await;
    assert!(matches!(
        next_event(&mut events).await,
        Event::Closed(Closed::ByClient)
    ));
    assert!(client.is_stopped());
}

#[tokio::test]
async fn duplicate_notifications_are_dropped() {
    let fake = FakeNode::bind().await;
    let (_client, mut events) = Client::connect(config(&fake.url, "d1")).unwrap();
    let mut conn = fake.accept().await;
    conn.welcome("d1", 25_000, 10_000).await;
    // The same notification twice, an old seq under a new id, a new one.
    conn.send(notification("n1", "all", None, 9, 1)).await;
    conn.send(notification("n1", "all", None, 9, 1)).await;
    conn.send(notification("n2", "all", None, 9, 2)).await;
    conn.send(notification("n1-again", "all", None, 9, 1)).await;
    conn.send(notification("n2", "all", None, 9, 2)).await;
    conn.send(notification("n3", "all", None, 9, 3)).await;
    let got = events_for(&mut events, Duration::from_millis(500)).await;
    assert_eq!(notification_ids(&got), ["n1", "n2", "n3"], "{got:#?}");
}

#[tokio::test]
async fn after_a_reconnect_it_resumes_rejoins_and_drops_what_it_already_has() {
    let fake = FakeNode::bind().await;
    let (client, mut events) = Client::connect(config(&fake.url, "d1")).unwrap();
    let mut conn = fake.accept().await;
    conn.welcome("d1", 25_000, 10_000).await;
    next_event(&mut events).await; // Connected
    client.subscribe(group("ops")).await.unwrap();
    client.subscribe(group("new")).await.unwrap();
    client.join(RoomId::parse("sale").unwrap()).await.unwrap();
    assert_eq!(conn.recv().await, json!({"type":"subscribe","group":"ops"}));
    assert_eq!(conn.recv().await, json!({"type":"subscribe","group":"new"}));
    assert_eq!(conn.recv().await, json!({"type":"join","room":"sale"}));
    conn.send(notification("a1", "all", None, 5, 1)).await;
    conn.send(notification("a2", "all", None, 5, 2)).await;
    conn.send(notification("g3", "group", Some("ops"), 6, 3))
        .await;
    conn.send(notification("d1", "device", Some("d1"), 7, 1))
        .await;
    let got = events_for(&mut events, Duration::from_millis(300)).await;
    assert_eq!(notification_ids(&got), ["a1", "a2", "g3", "d1"]);

    // 4003: reconnect promptly (jitter only) and resume.
    conn.close(4003).await;
    let (delay, reason) = wait_for(&mut events, crate::SOON, |e| match e {
        Event::Reconnecting { delay, reason, .. } => Some((*delay, reason.clone())),
        _ => None,
    })
    .await;
    assert!(delay <= Duration::from_millis(100), "prompt: {delay:?}");
    assert!(
        matches!(reason, Disconnect::Closed { code, .. } if code == CloseCode::RESYNC),
        "{reason:?}"
    );
    let mut conn = fake.accept().await;
    assert!(conn.uri.contains("resume=1"), "{}", conn.uri);
    conn.welcome("d1", 25_000, 10_000).await;
    let resume = conn.recv().await;
    assert_eq!(
        resume,
        json!({"type":"resume","cursors":[
            {"scope":"all","epoch":5,"seq":2},
            {"scope":"group","target":"ops","epoch":6,"seq":3},
            {"scope":"device","target":"d1","epoch":7,"seq":1}
        ]})
    );
    // "ops" is rejoined by its cursor; "new" has none and is subscribed.
    assert_eq!(conn.recv().await, json!({"type":"subscribe","group":"new"}));
    assert_eq!(conn.recv().await, json!({"type":"join","room":"sale"}));
    // The replay overlaps what the device has; only a3 is new.
    conn.send(notification("a2", "all", None, 5, 2)).await;
    conn.send(notification("a3", "all", None, 5, 3)).await;
    conn.send(json!({"type":"resumed","scopes":[
        {"scope":"all","epoch":5,"seq":3,"recovered":true,"replayed":2},
        {"scope":"group","target":"ops","epoch":6,"seq":3,"recovered":true,"replayed":0},
        {"scope":"device","target":"d1","epoch":7,"seq":1,"recovered":true,"replayed":0}
    ]}))
    .await;
    let got = wait_for(&mut events, crate::SOON, |e| match e {
        Event::Notification(n) => Some(Some(n.id.clone())),
        Event::Resumed { .. } => Some(None),
        _ => None,
    })
    .await;
    assert_eq!(got.as_deref(), Some("a3"));
    let recovered = wait_for(&mut events, crate::SOON, |e| match e {
        Event::Resumed { recovered, scopes } => Some((*recovered, scopes.len())),
        Event::Notification(n) => panic!("unexpected {n:?}"),
        _ => None,
    })
    .await;
    assert_eq!(recovered, (true, 3));
    // An id forgotten long ago is still caught by the resumed cursor.
    conn.send(notification("a3-replayed-under-new-id", "all", None, 5, 3))
        .await;
    conn.send(notification("a4", "all", None, 5, 4)).await;
    let got = events_for(&mut events, Duration::from_millis(300)).await;
    assert_eq!(notification_ids(&got), ["a4"]);
}

#[tokio::test]
async fn a_node_without_resume_gets_plain_subscribes_and_the_app_is_told() {
    let fake = FakeNode::bind().await;
    let (client, mut events) = Client::connect(config(&fake.url, "d1")).unwrap();
    let mut conn = fake.accept().await;
    conn.welcome("d1", 25_000, 10_000).await;
    client.subscribe(group("ops")).await.unwrap();
    assert_eq!(conn.recv().await, json!({"type":"subscribe","group":"ops"}));
    conn.send(notification("g1", "group", Some("ops"), 0, 1))
        .await;
    wait_for(&mut events, crate::SOON, |e| {
        matches!(e, Event::Notification(_)).then_some(())
    })
    .await;
    conn.close(1012).await;
    let mut conn = fake.accept().await;
    conn.welcome("d1", 25_000, 10_000).await;
    assert_eq!(conn.recv().await["type"], "resume");
    conn.send(
        json!({"type":"error","code":"unknown_type","message":"unknown frame type \"resume\""}),
    )
    .await;
    assert_eq!(conn.recv().await, json!({"type":"subscribe","group":"ops"}));
    let resumed = wait_for(&mut events, crate::SOON, |e| match e {
        Event::Resumed { recovered, scopes } => Some((*recovered, scopes.len())),
        _ => None,
    })
    .await;
    assert_eq!(resumed, (false, 0));
    // Without epochs a restarted node's seq 1 is new, not a duplicate.
    conn.send(notification("g1-after-restart", "group", Some("ops"), 0, 1))
        .await;
    let got = events_for(&mut events, Duration::from_millis(300)).await;
    assert_eq!(notification_ids(&got), ["g1-after-restart"]);
}

#[tokio::test]
async fn device_history_is_replayed_on_first_connect_only_when_asked() {
    let fake = FakeNode::bind().await;
    let mut cfg = config(&fake.url, "d1");
    cfg.replay_device_history_on_first_connect = true;
    let (_client, _events) = Client::connect(cfg).unwrap();
    let mut conn = fake.accept().await;
    assert!(conn.uri.contains("resume=1"), "{}", conn.uri);
    conn.welcome("d1", 25_000, 10_000).await;
    assert_eq!(
        conn.recv().await,
        json!({"type":"resume","cursors":[{"scope":"device","target":"d1","epoch":0,"seq":0}]})
    );
}

#[tokio::test]
async fn replaced_stops_for_good() {
    let fake = FakeNode::bind().await;
    let (client, mut events) = Client::connect(config(&fake.url, "d1")).unwrap();
    let mut conn = fake.accept().await;
    conn.welcome("d1", 25_000, 10_000).await;
    next_event(&mut events).await;
    conn.close(4000).await;
    assert_eq!(
        next_event(&mut events).await,
        Event::Closed(Closed::Replaced)
    );
    assert!(events.recv().await.is_none(), "nothing after Closed");
    assert!(!fake.connects_within(Duration::from_millis(1500)).await);
    assert!(client.join(RoomId::parse("r").unwrap()).await.is_err());
}

#[tokio::test]
async fn close_codes_that_say_stop_stop() {
    for code in [1000u16, 1008, 1009] {
        let fake = FakeNode::bind().await;
        let (_client, mut events) = Client::connect(config(&fake.url, "d1")).unwrap();
        let mut conn = fake.accept().await;
        conn.welcome("d1", 25_000, 10_000).await;
        conn.close(code).await;
        let closed = wait_for(&mut events, crate::SOON, |e| match e {
            Event::Closed(c) => Some(c.clone()),
            Event::Reconnecting { .. } => panic!("{code} must not reconnect"),
            _ => None,
        })
        .await;
        assert!(
            matches!(closed, Closed::ByNode { code: c, .. } if c.0 == code),
            "{closed:?}"
        );
    }
}

#[tokio::test]
async fn close_codes_that_say_reconnect_reconnect() {
    for code in [1011u16, 1012, 1013, 4001, 4002, 4003] {
        let fake = FakeNode::bind().await;
        let (_client, mut events) = Client::connect(config(&fake.url, "d1")).unwrap();
        let mut conn = fake.accept().await;
        conn.welcome("d1", 25_000, 10_000).await;
        conn.close(code).await;
        let reason = wait_for(&mut events, crate::SOON, |e| match e {
            Event::Reconnecting { reason, .. } => Some(reason.clone()),
            Event::Closed(c) => panic!("{code} must reconnect, got {c:?}"),
            _ => None,
        })
        .await;
        assert!(
            matches!(reason, Disconnect::Closed { code: c, .. } if c.0 == code),
            "{reason:?}"
        );
        let mut again = fake.accept().await;
        again.welcome("d1", 25_000, 10_000).await;
        wait_for(&mut events, crate::SOON, |e| {
            matches!(e, Event::Connected { .. }).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn handshake_refusals_stop_or_retry_as_the_error_says() {
    let fake = FakeNode::bind().await;
    let (_client, mut events) = Client::connect(config(&fake.url, "d1")).unwrap();
    fake.refuse(
        503,
        json!({"error":{"code":"node_full","message":"full","retryable":true}}),
    )
    .await;
    let reason = wait_for(&mut events, crate::SOON, |e| match e {
        Event::Reconnecting { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(
        matches!(&reason, Disconnect::Refused { status: 503, error: Some(e) } if e.code == ErrorCode::NodeFull),
        "{reason:?}"
    );
    fake.refuse(
        400,
        json!({"error":{"code":"invalid_device_id","message":"bad","retryable":false}}),
    )
    .await;
    let closed = wait_for(&mut events, crate::SOON, |e| match e {
        Event::Closed(c) => Some(c.clone()),
        _ => None,
    })
    .await;
    assert!(
        matches!(&closed, Closed::Refused { status: 400, error: Some(e) } if e.code == ErrorCode::InvalidDeviceId),
        "{closed:?}"
    );
}

#[tokio::test]
async fn silence_past_the_heartbeat_window_reconnects() {
    let fake = FakeNode::bind().await;
    let (_client, mut events) = Client::connect(config(&fake.url, "d1")).unwrap();
    let mut conn = fake.accept().await;
    // The node promises a ping every 300 ms and then says nothing.
    conn.welcome("d1", 300, 300).await;
    let started = tokio::time::Instant::now();
    let reason = wait_for(&mut events, crate::SOON, |e| match e {
        Event::Reconnecting { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason, Disconnect::HeartbeatLost);
    // The 1 s floor of the window, not sooner.
    assert!(started.elapsed() >= Duration::from_millis(900));
    drop(conn);
    fake.accept().await;
}

#[tokio::test]
async fn leaving_and_unsubscribing_while_offline_take_effect_on_reconnect() {
    let fake = FakeNode::bind().await;
    let mut cfg = config(&fake.url, "d1");
    cfg.departments = vec![group("it")];
    let (client, mut events) = Client::connect(cfg).unwrap();
    let mut conn = fake.accept().await;
    conn.welcome("d1", 25_000, 10_000).await;
    client.join(RoomId::parse("sale").unwrap()).await.unwrap();
    client.join(RoomId::parse("other").unwrap()).await.unwrap();
    assert_eq!(conn.recv().await["type"], "join");
    assert_eq!(conn.recv().await["type"], "join");
    drop(conn);
    wait_for(&mut events, crate::SOON, |e| {
        matches!(e, Event::Reconnecting { .. }).then_some(())
    })
    .await;
    client.leave(RoomId::parse("sale").unwrap()).await.unwrap();
    client.unsubscribe(group("it")).await.unwrap();
    // The commands may land before or during the reconnect: either way the
    // place is freed, the other room rejoined and the department left.
    let mut conn = fake.accept().await;
    let header_has_it = conn.header("x-department-id") == Some("it");
    conn.welcome("d1", 25_000, 10_000).await;
    let frames = conn.recv_for(Duration::from_millis(300)).await;
    let mut expected = vec![
        json!({"type":"leave","room":"sale"}),
        json!({"type":"join","room":"other"}),
    ];
    if header_has_it {
        expected.insert(0, json!({"type":"unsubscribe","group":"it"}));
    }
    assert_eq!(frames, expected);
    drop(conn);
    let mut conn = fake.accept().await;
    assert_eq!(conn.header("x-department-id"), None, "dropped department");
    conn.welcome("d1", 25_000, 10_000).await;
    let frames = conn.recv_for(Duration::from_millis(300)).await;
    assert_eq!(frames, [json!({"type":"join","room":"other"})]);
}

#[tokio::test]
async fn a_proof_of_work_challenge_is_solved_and_retried_when_refused() {
    let fake = FakeNode::bind().await;
    let (client, mut events) = Client::connect(config(&fake.url, "d1")).unwrap();
    let mut conn = fake.accept().await;
    conn.welcome("d1", 25_000, 10_000).await;
    client.join(RoomId::parse("sale").unwrap()).await.unwrap();
    assert_eq!(conn.recv().await, json!({"type":"join","room":"sale"}));
    let challenge = |token: &str| {
        json!({"type":"challenge","room":"sale","challenge":token,"prefix":"ab12",
               "difficulty":10,"expires_at":4_000_000_000u64})
    };
    conn.send(challenge("tok-1")).await;
    let c = wait_for(&mut events, crate::SOON, |e| match e {
        Event::Challenge(c) => Some(c.clone()),
        _ => None,
    })
    .await;
    assert_eq!((c.room.as_str(), c.difficulty), ("sale", 10));
    let solve = conn.recv().await;
    assert_eq!(solve["type"], "solve");
    assert_eq!(solve["room"], "sale");
    assert_eq!(solve["challenge"], "tok-1");
    let solution = solve["solution"].as_str().unwrap();
    assert!(pace_protocol::pow::meets("ab12", solution, 10), "{solve}");

    // Refused (e.g. expired): the client asks for a fresh challenge.
    conn.send(json!({"type":"error","code":"pow_invalid","message":"expired"}))
        .await;
    assert_eq!(conn.recv().await, json!({"type":"join","room":"sale"}));
    conn.send(challenge("tok-2")).await;
    assert_eq!(conn.recv().await["challenge"], "tok-2");
    conn.send(json!({"type":"queue","room":"sale","position":1,"waiting_total":1,"state":"open"}))
        .await;
    wait_for(&mut events, crate::SOON, |e| {
        matches!(e, Event::Queue(_)).then_some(())
    })
    .await;
}
