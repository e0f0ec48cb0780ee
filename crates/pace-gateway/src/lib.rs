//! The gateway side of a Pace cluster: the Kong declarative config IT applies,
//! the equivalent HAProxy config used in labs and CI, and an exact model of
//! Kong's consistent-hashing ring that predicts where each device id lands and
//! how many devices move when the cluster changes. The `pace-node` binary
//! mounts [`GatewayCommand`] as `pace-node gateway <kong|haproxy|plan>`; the
//! load-test tool uses [`Ring`] to check the spread it observes.
//!
//! Layout:
//! - `topology.rs`: the nodes (`HOST:PORT` + weight) and the routing contract
//!   (device-id header and query arg, public and private paths).
//! - `ring.rs`: Kong's consistent-hashing ring, xxHash32 and all.
//! - `kong.rs`: the decK 3.0 document (upstream, targets, service, routes).
//! - `haproxy.rs`: the HAProxy equivalent.
//! - `protect.rs`: the protected site ([`Protection`]): which prefix, room,
//!   site and admission keys the gateway enforces admissions with.
//! - `plan.rs`: distribution and movement predictions.
//! - `cli.rs`: the `gateway` subcommand and [`execute`].
//! - `error.rs`: [`GatewayError`].

mod cli;
mod error;
mod haproxy;
mod kong;
mod plan;
mod protect;
mod ring;
mod topology;

pub use cli::{GatewayCommand, HaproxyArgs, KongArgs, NodesArgs, PlanArgs, ProtectArgs, execute};
pub use error::GatewayError;
pub use haproxy::{DEFAULT_BIND, HaproxyOptions, render_haproxy};
pub use kong::{
    ADMISSION_CONSUMER, ANONYMOUS_CONSUMER, ActiveHealthcheck, Consumer, DEFAULT_UPSTREAM_NAME,
    Healthchecks, Healthy, JwtSecret, KONG_HASH_HEADER, KongConfig, KongOptions, PACE_TAG,
    PassiveHealthcheck, Plugin, Route, Service, Target, Unhealthy, Upstream, kong_config,
    render_kong,
};
pub use plan::{
    Addition, Plan, Removal, numbered_device_ids, parse_device_ids, plan, read_device_ids,
};
pub use protect::{
    AdmissionKey, COOKIE, DEVICE_HEADER, GATEWAY_ALG, Protection, RENEW_HEADER, RENEW_SUFFIX,
    TOKEN_QUERY_ARG,
};
pub use ring::{
    DEFAULT_SLOTS, MIN_CONTINUUM_SIZE, Ring, SERVER_POINTS, continuum_index, kong_xxh32,
};
pub use topology::{
    DEFAULT_WEIGHT, DEVICE_ID_HEADER, DEVICE_ID_QUERY_ARG, Node, PRIVATE_PATHS,
    PUBLIC_PATH_PREFIXES, Topology,
};
