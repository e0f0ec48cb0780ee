//! The tool's Redis readings (`surge --redis` counts store commands,
//! `failover --redis` reads tickets) against a real redis-server, through
//! the fred client they use.

use std::time::Duration;

use pace_loadtest::{redis_conn, redis_info, redis_tickets};

use crate::cluster::TestRedis;

#[tokio::test]
async fn commandstats_count_what_ran_between_two_snapshots() {
    let redis = TestRedis::start();
    let url = redis_conn::url(&redis.url()).unwrap();
    let before = redis_info::snapshot(&url).await.unwrap();
    let client = redis_conn::open(&url, Duration::from_secs(5))
        .await
        .unwrap();
    for i in 0..7 {
        let () =
            fred::prelude::KeysInterface::set(&client, format!("k{i}"), "v", None, None, false)
                .await
                .unwrap();
    }
    let after = redis_info::snapshot(&url).await.unwrap();
    let calls = after.calls_since(&before);
    assert_eq!(calls.get("set"), Some(&7), "{calls:?}");
    assert_eq!(calls.get("info"), None, "the tool's own INFO is left out");
    assert!(after.cpu_seconds >= before.cpu_seconds);
}

#[tokio::test]
async fn tickets_come_from_the_queue_and_the_sessions() {
    let redis = TestRedis::start();
    let url = redis_conn::url(&redis.url()).unwrap();
    let client = redis_conn::open(&url, Duration::from_secs(5))
        .await
        .unwrap();
    let tag = "{pace:room:r1}";
    let _: i64 = fred::prelude::SortedSetsInterface::zadd(
        &client,
        format!("{tag}:queue"),
        None,
        None,
        false,
        false,
        vec![(4.0, "lt-a-1"), (9.0, "lt-a-2"), (10.0, "someone-else")],
    )
    .await
    .unwrap();
    let _: i64 = fred::prelude::HashesInterface::hset(
        &client,
        format!("{tag}:sessions"),
        ("s1", "lt-a-0|2|1700000000000"),
    )
    .await
    .unwrap();
    let t = redis_tickets::tickets(&url, "pace", "r1", "lt-a-")
        .await
        .unwrap();
    assert_eq!(
        t.into_iter().collect::<Vec<_>>(),
        vec![
            ("lt-a-0".to_owned(), 2),
            ("lt-a-1".to_owned(), 4),
            ("lt-a-2".to_owned(), 9)
        ]
    );
    // A room nobody joined has no tickets; a dead server is an error.
    assert!(
        redis_tickets::tickets(&url, "pace", "empty", "lt-")
            .await
            .unwrap()
            .is_empty()
    );
    drop(redis);
    assert!(redis_info::snapshot(&url).await.is_err());
}
