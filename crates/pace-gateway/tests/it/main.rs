//! Integration tests of pace-gateway, one binary (matklad's "one integration
//! test crate"): the Kong config against Kong's own rules and decK's JSON
//! schema, the HAProxy config against a real `haproxy -c` and a live HAProxy
//! in front of real backends, and the plan subcommand's output.

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used)]

mod committed;
mod haproxy_live;
mod kong_schema;
mod plan_cli;
mod support;
