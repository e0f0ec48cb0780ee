//! Integration tests of `pace-loadtest`: run the real tool (this package's
//! binary) against a real `pace-node` started on a free loopback port, and
//! check that small runs connect, deliver and close without a single loss.
//!
//! The node binary belongs to another package, so Cargo cannot hand its path
//! to these tests. It is found, in order, at `$PACE_NODE_BIN`, next to this
//! package's own binary (where `cargo test --workspace` builds it), then in
//! `$CARGO_TARGET_DIR` and the workspace `target/` (debug, then release).
//! When none exists the tests fail and say to run `cargo build -p pace-node`.
//!
//! `resilience` runs `failover` on three nodes over a real redis-server
//! (redis-server must be installed: `deploy/install-deps redis`) and
//! `overhead` on one node; every scenario's `--svg` is checked.

mod cluster;
mod node;
mod redis_readings;
mod resilience;
mod scenarios;
