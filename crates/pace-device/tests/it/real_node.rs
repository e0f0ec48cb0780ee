//! Against a real `pace-node` process (PACE_NODE_BIN or the target dir):
//! delivery, reconnect after the node is killed and restarted, replacement,
//! heartbeats, rooms.

use std::time::Duration;

use pace_device::{Client, Closed, Disconnect, Event, RoomStatus};
use pace_protocol::{GroupId, RoomId, Scope};
use serde_json::json;

use crate::node::{Node, NodeOpts};
use crate::{config, events_for, wait_for};

async fn connected(events: &mut pace_device::Events) -> pace_protocol::Welcome {
    wait_for(events, crate::SOON, |e| match e {
        Event::Connected { welcome, .. } => Some(welcome.clone()),
        _ => None,
    })
    .await
}

async fn notification(events: &mut pace_device::Events) -> pace_protocol::Notification {
    wait_for(events, crate::SOON, |e| match e {
        Event::Notification(n) => Some(n.clone()),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_and_receives_notifications_for_all_its_group_and_itself() {
    let node = Node::start().await;
    let (client, mut events) = Client::connect(config(&node.base, "laptop_it1")).unwrap();
    let welcome = connected(&mut events).await;
    assert_eq!(welcome.device_id.as_str(), "laptop_it1");
    client
        .subscribe(GroupId::parse("ops").unwrap())
        .await
        .unwrap();
    wait_for(&mut events, crate::SOON, |e| {
        matches!(e, Event::Subscribed(g) if g.as_str() == "ops").then_some(())
    })
    .await;

    let sent = node.notify("all", None, "hello", json!({"n": 1})).await;
    let n = notification(&mut events).await;
    assert_eq!(json!(n.id), sent["id"]);
    assert_eq!(
        (n.scope, n.event.as_str(), n.data.clone()),
        (Scope::All, "hello", json!({"n": 1}))
    );

    node.notify("group", Some("ops"), "g", json!(null)).await;
    let n = notification(&mut events).await;
    assert_eq!((n.scope, n.target.as_deref()), (Scope::Group, Some("ops")));

    node.notify("device", Some("laptop_it1"), "me", json!(2))
        .await;
    let n = notification(&mut events).await;
    assert_eq!(
        (n.scope, n.target.as_deref()),
        (Scope::Device, Some("laptop_it1"))
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_by_itself_after_the_node_is_killed_and_restarted() {
    let mut node = Node::start().await;
    let (client, mut events) = Client::connect(config(&node.base, "laptop_it2")).unwrap();
    connected(&mut events).await;
    let ops = GroupId::parse("ops").unwrap();
    client.subscribe(ops.clone()).await.unwrap();
    wait_for(&mut events, crate::SOON, |e| {
        matches!(e, Event::Subscribed(_)).then_some(())
    })
    .await;
    node.notify("group", Some("ops"), "before", json!(null))
        .await;
    let before = notification(&mut events).await;

    node.kill();
    let reason = wait_for(&mut events, crate::SOON, |e| match e {
        Event::Reconnecting { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(
        matches!(reason, Disconnect::Lost(_)),
        "SIGKILL: no close frame, {reason:?}"
    );
    // Let a few attempts fail while the node is down.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let node = node.restart().await;
    connected(&mut events).await;
    // The group is back: by `resume` (a node that has it) or by
    // `subscribe` after the node refused `resume` (one that has not).
    wait_for(&mut events, crate::SOON, |e| match e {
        Event::Subscribed(g) if *g == ops => Some(()),
        Event::Resumed { .. } => Some(()),
        _ => None,
    })
    .await;
    node.notify("group", Some("ops"), "after", json!(null))
        .await;
    let after = notification(&mut events).await;
    assert_eq!(after.event.as_str(), "after");
    assert_ne!(after.id, before.id);
    node.notify("all", None, "after-all", json!(null)).await;
    assert_eq!(notification(&mut events).await.event.as_str(), "after-all");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_of_the_same_device_replaces_the_first_for_good() {
    let node = Node::start().await;
    let (_first, mut first_events) = Client::connect(config(&node.base, "laptop_it3")).unwrap();
    connected(&mut first_events).await;
    let (second, mut second_events) = Client::connect(config(&node.base, "laptop_it3")).unwrap();
    connected(&mut second_events).await;
    let closed = wait_for(&mut first_events, crate::SOON, |e| match e {
        Event::Closed(c) => Some(c.clone()),
        Event::Reconnecting { .. } => panic!("a replaced device must not reconnect"),
        _ => None,
    })
    .await;
    assert_eq!(closed, Closed::Replaced);
    // The second one keeps its connection.
    let later = events_for(&mut second_events, Duration::from_millis(1500)).await;
    assert!(
        !later
            .iter()
            .any(|e| matches!(e, Event::Reconnecting { .. } | Event::Closed(_))),
        "{later:#?}"
    );
    second.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_pings_are_answered_so_the_connection_holds() {
    let node = Node::start_with(NodeOpts {
        extra: ["--ping-interval", "200ms", "--ping-timeout", "400ms"]
            .map(String::from)
            .to_vec(),
        ..NodeOpts::default()
    })
    .await;
    let (client, mut events) = Client::connect(config(&node.base, "laptop_it4")).unwrap();
    connected(&mut events).await;
    let later = events_for(&mut events, Duration::from_secs(3)).await;
    assert!(
        !later
            .iter()
            .any(|e| matches!(e, Event::Reconnecting { .. } | Event::Closed(_))),
        "{later:#?}"
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_a_room_and_reads_its_status() {
    // The embedded store's `demo` room admits two devices at once.
    let node = Node::start().await;
    let demo = RoomId::parse("demo").unwrap();
    let (client, mut events) = Client::connect(config(&node.base, "laptop_it5")).unwrap();
    connected(&mut events).await;
    assert!(matches!(
        client.status(&demo).await.unwrap(),
        RoomStatus::Unknown { .. }
    ));
    client.join(demo.clone()).await.unwrap();
    let admitted = wait_for(&mut events, crate::SOON, |e| match e {
        Event::Admitted(a) => Some(a.clone()),
        _ => None,
    })
    .await;
    assert_eq!(admitted.room, demo);
    match client.status(&demo).await.unwrap() {
        RoomStatus::Admitted { target_url, .. } => assert!(target_url.contains("pace_token=")),
        other => panic!("{other:?}"),
    }
    let missing = client.status(&RoomId::parse("nope").unwrap()).await;
    assert!(missing.is_err(), "{missing:?}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_asking_for_proof_of_work_admits_once_the_client_solved_it() {
    let node = Node::start().await;
    let room = json!({"capacity": 5, "admit_per_minute": null, "session_ttl_secs": 60,
                      "target_url": "https://shop.example/in", "state": "open", "pow_difficulty": 10});
    let (status, body) = crate::node::http(
        node.port,
        "PUT",
        "/api/v1/rooms/guarded",
        &[(
            "authorization",
            &format!("Bearer {}", crate::node::SERVICE_KEY),
        )],
        &room.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (client, mut events) = Client::connect(config(&node.base, "laptop_it6")).unwrap();
    connected(&mut events).await;
    client
        .join(RoomId::parse("guarded").unwrap())
        .await
        .unwrap();
    let challenge = wait_for(&mut events, crate::SOON, |e| match e {
        Event::Challenge(c) => Some(c.clone()),
        _ => None,
    })
    .await;
    assert_eq!(challenge.difficulty, 10);
    let admitted = wait_for(&mut events, crate::SOON, |e| match e {
        Event::Admitted(a) => Some(a.clone()),
        Event::Error { code, message } => panic!("refused: {code:?} {message}"),
        _ => None,
    })
    .await;
    assert_eq!(admitted.room.as_str(), "guarded");
    client.close().await;
}
