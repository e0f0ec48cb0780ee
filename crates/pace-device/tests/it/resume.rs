//! Resume across nodes: two (then three) `pace-node`s sharing a real
//! Redis. The device's node is killed, notifications are sent while it is
//! away, and it comes back through another node: it must get every missed
//! notification exactly once, in order, and `resumed` with recovered=true.
//!
//! Needs a node with `resume` support (protocol `resume`/`resumed` frames).

use std::collections::BTreeMap;
use std::time::Duration;

use pace_device::{Client, Event};
use pace_protocol::{GroupId, Notification};
use serde_json::{Value, json};

use crate::node::{Node, NodeOpts, Redis, free_port, shared_keys};
use crate::{config, events_for, wait_for};

/// Scope key of a notification, for per-scope ordering.
fn scope_of(n: &Notification) -> String {
    format!("{}:{}", n.scope.as_str(), n.target.as_deref().unwrap_or(""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_notifications_are_resumed_exactly_once_through_another_node() {
    let redis = tokio::task::spawn_blocking(Redis::start).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = {
        let d = dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || shared_keys(&d))
            .await
            .unwrap()
    };
    let opts = |id: &str| NodeOpts {
        redis: Some(redis.url()),
        keys: Some(keys.clone()),
        node_id: Some(id.to_owned()),
        ..NodeOpts::default()
    };
    let mut a = Node::start_with(opts("node-a")).await;
    // Notifications are sent through a third node that stays up.
    let sender = Node::start_with(opts("node-s")).await;
    let b_port = free_port();
    let device = "laptop_resume1";
    let cfg = config(&a.base, device).with_url(format!("http://127.0.0.1:{b_port}"));
    let (client, mut events) = Client::connect(cfg).unwrap();
    wait_for(&mut events, crate::SOON, |e| {
        matches!(e, Event::Connected { .. }).then_some(())
    })
    .await;
    client
        .subscribe(GroupId::parse("ops").unwrap())
        .await
        .unwrap();
    wait_for(&mut events, crate::SOON, |e| {
        matches!(e, Event::Subscribed(_)).then_some(())
    })
    .await;

    let scopes: [(&str, Option<&str>); 3] = [
        ("all", None),
        ("group", Some("ops")),
        ("device", Some(device)),
    ];
    let send_round = |round: &'static str| {
        let sender = &sender;
        async move {
            let mut ids: Vec<Value> = Vec::new();
            for (scope, target) in scopes {
                ids.push(
                    sender
                        .notify(scope, target, round, json!({"round": round}))
                        .await["id"]
                        .clone(),
                );
            }
            ids
        }
    };

    // Connected: one per scope arrives live.
    let before = send_round("before").await;
    let mut live = Vec::new();
    while live.len() < before.len() {
        live.push(
            wait_for(&mut events, crate::SOON, |e| match e {
                Event::Notification(n) => Some(n.clone()),
                _ => None,
            })
            .await,
        );
    }
    let mut live_ids: Vec<Value> = live.iter().map(|n| json!(n.id)).collect();
    live_ids.sort_by_key(Value::to_string);
    let mut before_sorted = before.clone();
    before_sorted.sort_by_key(Value::to_string);
    assert_eq!(live_ids, before_sorted);

    // Away: node A dies; nothing else can take the device until B starts.
    a.kill();
    wait_for(&mut events, crate::SOON, |e| {
        matches!(e, Event::Reconnecting { .. }).then_some(())
    })
    .await;
    let mut missed: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for round in ["missed-1", "missed-2", "missed-3"] {
        let ids = send_round(round).await;
        for ((scope, target), id) in scopes.iter().zip(ids) {
            missed
                .entry(format!("{scope}:{}", target.unwrap_or("")))
                .or_default()
                .push(id);
        }
    }
    let b = Node::start_with(NodeOpts {
        port: Some(b_port),
        ..opts("node-b")
    })
    .await;

    // Back through B: the replay, then `resumed`.
    let url = wait_for(&mut events, Duration::from_secs(20), |e| match e {
        Event::Connected { url, .. } => Some(url.clone()),
        _ => None,
    })
    .await;
    assert_eq!(url, b.base);
    let mut replayed: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let (recovered, outcomes) = loop {
        match wait_for(&mut events, crate::SOON, |e| match e {
            Event::Notification(_) | Event::Resumed { .. } => Some(e.clone()),
            _ => None,
        })
        .await
        {
            Event::Notification(n) => replayed.entry(scope_of(&n)).or_default().push(json!(n.id)),
            Event::Resumed { recovered, scopes } => break (recovered, scopes),
            _ => unreachable!(),
        }
    };
    assert!(
        !outcomes.is_empty(),
        "the node refused `resume` (built without resume support?)"
    );
    assert!(recovered, "{outcomes:#?}");
    assert_eq!(outcomes.len(), 3, "{outcomes:#?}");
    for o in &outcomes {
        assert!(o.recovered, "{o:?}");
        assert_eq!(o.replayed, 3, "{o:?}");
    }
    assert_eq!(
        replayed, missed,
        "every missed notification once, in order per scope"
    );

    // And it keeps going, live, without repeats.
    let after = send_round("after").await;
    let rest = events_for(&mut events, Duration::from_secs(2)).await;
    let mut got: Vec<Value> = rest
        .iter()
        .filter_map(|e| match e {
            Event::Notification(n) => Some(json!(n.id)),
            _ => None,
        })
        .collect();
    got.sort_by_key(Value::to_string);
    let mut after = after;
    after.sort_by_key(Value::to_string);
    assert_eq!(got, after, "{rest:#?}");
    client.close().await;
    drop(redis);
}
