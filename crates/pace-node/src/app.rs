//! The composition root: builds every part of a node from its
//! configuration and hands each domain module its own dependencies
//! (stores, keys, metrics, settings); the server loop ([`crate::server`])
//! runs what this builds, and in-process tests hand it to
//! [`crate::http::app`]. Nothing below imports this module.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::accounts::cli::ACCOUNTS_FILE;
use crate::accounts::{MemoryAccountStore, RedisAccountStore, SharedAccountStore};
use crate::admission::KeySet;
use crate::config::NodeConfig;
use crate::metrics::Metrics;
use crate::node::{Node, NodeRef};
use crate::queue::{MemoryQueueStore, RedisQueueStore, RoomConfig, RoomId, SharedQueueStore};
use crate::rooms::{Rooms, RoomsConfig, Waiters};
use crate::store::{MemoryStore, RedisOptions, RedisStore, SharedStore};
use crate::ws::fanout::LocalFanout;
use crate::ws::hub::Hub;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listener's address could not be read.
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
    /// The store could not be set up (e.g. an invalid Redis URL).
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The admission key set could not be loaded or created.
    #[error("admission keys: {0}")]
    Keys(String),
    /// Another part of the configuration could not be loaded.
    #[error("configuration: {0}")]
    Config(String),
}

/// Builds a node from `config`, not yet started: its stores (Redis when
/// `config.redis_url` is set, the embedded memory stores otherwise), keys,
/// rooms and metrics. [`crate::server::serve`] runs it; in-process tests hand it to
/// [`crate::http::app`].
pub fn build(config: NodeConfig) -> Result<NodeRef, ServeError> {
    let keys = load_keys(&config)?;
    let metrics = Metrics::new();
    let hub = Arc::new(Hub::new());
    let waiters = Arc::new(Waiters::default());
    let local = Arc::new(LocalFanout {
        hub: hub.clone(),
        metrics: metrics.clone(),
        waiters: waiters.clone(),
    });
    let (store, queue, accounts, devices): (
        SharedStore,
        SharedQueueStore,
        SharedAccountStore,
        crate::devices::SharedDeviceRegistry,
    ) = match &config.store.redis_url {
        Some(url) => {
            let redis = RedisStore::start(
                RedisOptions {
                    url: url.clone(),
                    prefix: config.store.redis_prefix.clone(),
                    node_id: config.node_id.clone(),
                    bus_capacity: config.store.bus_buffer,
                    command_timeout: config.store.store_timeout,
                    node_ttl: config.store.node_ttl,
                    history: config.store.history(),
                    bus_log_len: config.store.bus_log_len,
                    write_replicas: config.store.store_write_replicas,
                    identity_file: Some(
                        config
                            .store
                            .data_dir
                            .join(format!("store-id-{}", config.store.redis_prefix)),
                    ),
                },
                local,
                crate::store::BusCounters {
                    received: metrics.bus_received.clone(),
                    dropped: metrics.bus_dropped.clone(),
                    invalid: metrics.bus_invalid.clone(),
                    gaps: metrics.bus_gaps.clone(),
                    repaired: metrics.bus_repaired.clone(),
                    lost_writes: metrics.store_lost_writes.clone(),
                },
            )?;
            let queue = Arc::new(RedisQueueStore::new(
                redis.client(),
                &config.store.redis_prefix,
            ));
            let accounts: SharedAccountStore = Arc::new(RedisAccountStore::new(
                redis.client(),
                &config.store.redis_prefix,
            ));
            let devices = Arc::new(crate::devices::RedisDeviceRegistry::new(
                redis.client(),
                &config.store.redis_prefix,
            ));
            (redis, queue, accounts, devices)
        }
        None => (
            Arc::new(MemoryStore::new(local, config.store.history())),
            Arc::new(MemoryQueueStore::new()),
            Arc::new(MemoryAccountStore::open(
                config.store.data_dir.join(ACCOUNTS_FILE),
            )),
            Arc::new(crate::devices::MemoryDeviceRegistry::new()),
        ),
    };
    let external_issuer = match &config.devices.device_token_jwks {
        Some(path) => Some(Arc::new(
            crate::devices::ExternalIssuer::load(
                path,
                config
                    .devices
                    .device_token_issuer
                    .as_deref()
                    .unwrap_or_default(),
                config
                    .devices
                    .device_token_audience
                    .as_deref()
                    .unwrap_or_default(),
            )
            .map_err(ServeError::Config)?
            .with_groups_claim(&config.devices.device_token_groups_claim),
        )),
        None => None,
    };
    if config.devices.insecure_anonymous_devices {
        for line in [
            "INSECURE: --insecure-anonymous-devices is on: devices connect WITHOUT a device token.",
            "INSECURE: anyone who knows a device id can take its queue place and its admission.",
            "INSECURE: use this for development and load tests only, never in production.",
        ] {
            tracing::warn!("{line}");
        }
    }
    let rooms = Arc::new(Rooms::new(
        queue,
        store.clone(),
        hub.clone(),
        keys.clone(),
        waiters,
        metrics.clone(),
        RoomsConfig {
            tick: config.rooms.admit_tick,
            refresh: config.rooms.position_refresh,
            grace: config.rooms.heartbeat_grace,
            joins_per_minute: config.rooms.joins_per_minute,
            max_places_per_user: config.rooms.max_places_per_user,
        },
    ));
    metrics
        .insecure_anonymous_devices
        .set(i64::from(config.devices.insecure_anonymous_devices));
    let draining = Arc::new(AtomicBool::new(false));
    let auth = Arc::new(crate::auth::Authority {
        keys: keys.clone(),
        external_issuer: external_issuer.clone(),
        devices: devices.clone(),
        queue: rooms.queue.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        settings: crate::auth::Settings {
            service_key: config.service_key.clone(),
            insecure_anonymous_devices: config.devices.insecure_anonymous_devices,
            device_token_tenant: config.devices.device_token_tenant.clone(),
            trusted_proxies: config.origins.trusted_proxies.clone(),
        },
    });
    let origins = crate::origins::Policy {
        allowed: config.origins.allowed_origins.clone(),
        cache: crate::origins::OriginCache::new(
            crate::origins::CACHE_TTL,
            config.store.store_timeout,
        ),
        accounts: accounts.clone(),
        queue: rooms.queue.clone(),
        metrics: metrics.clone(),
    };
    let ws = Arc::new(crate::ws::Deps {
        hub: hub.clone(),
        rooms: rooms.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        settings: crate::ws::Settings::of(&config),
        draining: draining.clone(),
    });
    let handshakes = crate::limits::WindowLimiter::new(
        config.limits.handshakes_per_address,
        std::time::Duration::from_secs(1),
    );
    let sockets = crate::pending::Sockets::new(
        config.limits.max_pending_per_address,
        crate::pending::Sockets::budget(config.open_files, config.limits.fd_reserve),
        metrics.connections_pending.clone(),
    );
    let slots = crate::ws::Slots::new(config.limits.max_connections);
    Ok(Arc::new(Node::new(
        config,
        crate::node::NodeParts {
            hub,
            store,
            metrics,
            rooms,
            keys,
            accounts,
            devices,
            external_issuer,
            auth,
            origins,
            ws,
            handshakes,
            sockets,
            slots,
            draining,
        },
    )))
}

/// The audit sealing task's parts, from the node's.
pub fn sealer(node: &Node) -> crate::audit::Sealer {
    crate::audit::Sealer {
        queue: node.rooms.queue.clone(),
        keys: node.keys.clone(),
        metrics: node.metrics.clone(),
        interval: node.config.rooms.audit_seal_interval,
        retention: node.config.rooms.audit_retention,
    }
}

/// The admission key set: `--keys`, or (single node) `<data-dir>/keys.json`,
/// created on first run. A cluster must share one key set, so with
/// `--redis` the file must be named explicitly.
fn load_keys(config: &NodeConfig) -> Result<Arc<KeySet>, ServeError> {
    let alg = config.admission.admission_alg;
    let keys = match (&config.admission.keys, &config.store.redis_url) {
        (Some(path), _) => KeySet::load(path).and_then(|k| k.signing_with(alg, path)),
        (None, Some(_)) => {
            return Err(ServeError::Keys(
                "with --redis every node must use the cluster's shared key set: pass --keys FILE \
                 (create it once with `pace-node keys generate --out FILE`)"
                    .into(),
            ));
        }
        (None, None) => KeySet::load_or_create_alg(config.store.data_dir.join("keys.json"), alg),
    };
    let keys = keys.map_err(|e| ServeError::Keys(e.to_string()))?;
    Ok(Arc::new(
        keys.with_issuer(config.admission.token_issuer.clone()),
    ))
}

/// Creates the `demo` room when asked to and it does not exist yet.
pub async fn ensure_demo_room(node: &NodeRef, address: &str) {
    let Ok(room) = RoomId::parse("demo") else {
        return;
    };
    match node.rooms.queue.get_room(&room).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            if let Some(tenant) = &node.config.web.demo_tenant {
                match node.rooms.queue.claim_room(&room, tenant).await {
                    Ok(owner) if owner.as_deref() == Some(tenant.as_str()) => {}
                    Ok(owner) => {
                        tracing::warn!(?owner, %tenant, "the demo room is not the demo tenant's; left as is");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not claim the demo room");
                        return;
                    }
                }
            }
            let config = RoomConfig {
                appearance: crate::queue::Appearance {
                    title: "Pace demo: you are in line".into(),
                    message: "This is the demo waiting room. Raise its capacity in the console (/admin) to let people in.".into(),
                    ..Default::default()
                },
                ..RoomConfig::open(2, format!("http://{address}/demo/target"))
            };
            match node.rooms.queue.put_room(&room, &config).await {
                Ok(_) => {
                    tracing::info!(target = %config.target_url, "created the demo room (capacity 2, 60 s sessions)")
                }
                Err(e) => tracing::warn!(error = %e, "could not create the demo room"),
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not check for the demo room"),
    }
}
