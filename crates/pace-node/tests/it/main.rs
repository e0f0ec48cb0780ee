//! Integration tests for pace-node: real servers on 127.0.0.1:0, real
//! tokio-tungstenite clients, the real binary where a process is needed.

#![allow(clippy::unwrap_used)]

mod support;

mod abuse;
mod admin_api;
mod admin_login;
mod audit;
mod authz;
mod bad_input;
mod browser;
mod cluster;
mod delivery;
mod devices;
mod drain;
mod events;
mod gateway_protect;
mod handshake;
mod history;
mod http_inprocess;
mod layers;
mod liveness;
mod metrics;
mod ops;
mod origins;
mod pages;
mod rooms;
mod rooms_cluster;
mod sse_client;
mod store_failures;
mod stream;
mod stream_gateway;
mod stream_page;
mod systemd;
mod tenancy;
