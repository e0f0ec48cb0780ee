//! Every store's conformance suite against a real Redis Cluster (three
//! masters and three replicas), as the suites run against one redis-server: the store,
//! the queue, the accounts and the device registry, on one cluster started
//! once (a cluster start costs seconds), each suite under its own prefix.

use std::sync::Arc;
use std::time::Duration;

use super::conformance::{self, Recorder};
use super::redis_client::RedisClient;
use super::test_redis::TestRedisCluster;
use super::{BusCounters, HistoryLimits, RedisOptions, RedisStore, Store};
use crate::accounts::{RedisAccountStore, SharedAccountStore};
use crate::devices::RedisDeviceRegistry;
use crate::queue::{RedisQueueStore, SharedQueueStore};

/// A node's command client (one client per primary, Pace routing by
/// slot), once every primary is connected.
async fn client(url: &str) -> RedisClient {
    let client = RedisClient::start(url, Duration::from_secs(2)).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let primaries = client.primaries();
        if primaries.len() == 3 && primaries.iter().all(|(_, up)| *up) {
            return client;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connected to the cluster within 10 s: {primaries:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn store(url: &str, prefix: &str, history: HistoryLimits, rec: Arc<Recorder>) -> Arc<RedisStore> {
    RedisStore::start(
        RedisOptions {
            url: url.to_owned(),
            prefix: prefix.into(),
            node_id: "n1".into(),
            bus_capacity: 1024,
            command_timeout: Duration::from_secs(2),
            node_ttl: Duration::from_secs(2),
            history,
            bus_log_len: 1000,
            write_replicas: Default::default(),
            identity_file: None,
        },
        rec,
        BusCounters::detached(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_conformance_suite_passes_on_a_redis_cluster() {
    let cluster = TestRedisCluster::start();
    let url = cluster.url();

    // The store (sequences, bus, history, generations, presence, claims).
    let rec = Arc::new(Recorder::default());
    let s = store(&url, "c-store", HistoryLimits::default(), rec.clone());
    tokio::time::timeout(Duration::from_secs(10), s.wait_ready())
        .await
        .expect("ready within 10 s");
    conformance::sequences_are_per_scope(s.as_ref(), &rec).await;
    conformance::reports_health(s.as_ref()).await;
    conformance::generations_increase(s.as_ref()).await;
    conformance::presence_lists_nodes(s.as_ref()).await;
    conformance::admissions_reach_the_device(s.as_ref(), &rec).await;
    conformance::device_actions_reach_the_node(s.as_ref(), &rec).await;
    conformance::claims_once(s.as_ref()).await;
    conformance::history_after_a_cursor(s.as_ref()).await;
    let small = HistoryLimits {
        max_len: 3,
        ..HistoryLimits::default()
    };
    let bounded = store(&url, "c-small", small, Arc::new(Recorder::default()));
    tokio::time::timeout(Duration::from_secs(10), bounded.wait_ready())
        .await
        .expect("ready within 10 s");
    conformance::history_is_bounded(bounded.as_ref()).await;

    // The waiting room's queue store, every case under its own prefix.
    let c = client(&url).await;
    let queue = |name: &str| -> SharedQueueStore {
        Arc::new(RedisQueueStore::new(c.clone(), &format!("c-q-{name}")))
    };
    use crate::queue::conformance as q;
    q::rejoin_keeps_the_same_place(queue("rejoin")).await;
    q::admits_in_ticket_order_up_to_capacity(queue("order")).await;
    q::concurrent_admits_never_exceed_capacity(queue("concurrent")).await;
    q::admit_per_minute_budget(queue("budget")).await;
    q::paused_admits_nobody(queue("paused")).await;
    q::closed_refuses_new_joins_only(queue("closed")).await;
    q::raised_capacity_admits_more(queue("raised")).await;
    q::release_and_expiry_free_slots(queue("release")).await;
    q::renew_extends_a_session(queue("renew")).await;
    q::sweep_drops_silent_devices_only(queue("sweep")).await;
    q::admitted_device_rejoining_gets_its_admission(queue("readmit")).await;
    q::counters(queue("counters")).await;
    q::positions_and_head(queue("positions")).await;
    q::rooms_and_config(queue("rooms")).await;
    q::rooms_have_one_owner(queue("owner")).await;
    q::user_places_are_recorded(queue("places")).await;
    q::leave_gives_up_a_place(queue("leave")).await;
    q::wait_times_are_measured_from_the_first_join(queue("waits")).await;

    // Tenants and admin accounts.
    let accounts = |name: &str| -> SharedAccountStore {
        Arc::new(RedisAccountStore::new(c.clone(), &format!("c-a-{name}")))
    };
    use crate::accounts::conformance as a;
    a::tenants_are_created_read_listed_and_updated(accounts("tenants")).await;
    a::an_existing_tenant_is_not_created_again(accounts("again")).await;
    a::users_are_created_read_listed_and_deleted(accounts("users")).await;
    a::a_user_needs_its_tenant_and_a_free_name(accounts("names")).await;
    a::users_belong_to_one_tenant(accounts("belong")).await;
    a::login_attempts_are_counted_and_cleared(accounts("attempts")).await;
    a::login_attempt_windows_end(accounts("windows")).await;

    // The device registry.
    let registry = RedisDeviceRegistry::new(c.clone(), "c-devreg");
    crate::devices::conformance::registers_refreshes_and_lists(&registry).await;
    crate::devices::conformance::credentials_departments_and_revocation(&registry).await;
}
