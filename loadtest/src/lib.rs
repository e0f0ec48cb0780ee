//! `pace-loadtest`: drives thousands of simulated Pace devices against nodes
//! or gateways and reports connect rate and latency, delivery latency,
//! losses, and what each device and delivery costs the node in memory and
//! CPU.
//!
//! Layout:
//! - [`cli`]: the command line; [`hold`], [`broadcast`] and [`surge`]: the
//!   scenarios, all starting with [`connect`] (readiness, memory, the
//!   connect phase). `surge` devices live in [`surge_device`], its figures
//!   come from [`surge_analysis`], its store counts from [`redis_info`]
//!   (over a fred client from [`redis_conn`]).
//! - [`fleet`]: the coordinator side of the worker processes;
//!   [`worker`]: the worker side; [`ipc`]: the JSON lines between them.
//! - [`device`]: one simulated device; [`target`]: a node or gateway URL;
//!   [`register`]: `--register`, each worker registering its devices for
//!   device tokens before the connect phase.
//! - [`nodes`], [`procstat`], [`promtext`], [`http`]: observing the nodes.
//! - [`failover`]: a surge while one node is killed (devices reconnect and
//!   rejoin; [`redis_tickets`] reads their tickets); [`overhead`]: bytes on
//!   the wire of waiting over WebSocket against polling over HTTP
//!   ([`counting`] counts at the socket, [`poller`] is the polling client).
//! - [`stats`]: percentiles; [`report`]: the report and its rendering;
//!   [`chart`]: the `--svg` charts; [`clock`]: the wall clock all
//!   processes share.

// Tests may unwrap: a panic there is the test failing, with its message.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod audit_log;
pub mod broadcast;
pub mod chart;
pub mod cli;
pub mod clock;
pub mod connect;
pub mod counting;
pub mod device;
pub mod failover;
pub mod fleet;
pub mod hold;
pub mod http;
pub mod ipc;
pub mod nodes;
pub mod overhead;
pub mod poller;
pub mod procstat;
pub mod promtext;
pub mod redis_conn;
pub mod redis_info;
pub mod redis_tickets;
pub mod register;
pub mod report;
pub mod sse_device;
pub mod stats;
pub mod surge;
pub mod surge_analysis;
pub mod surge_device;
pub mod target;
pub mod worker;

use crate::cli::{Cli, Command};

/// Runs the parsed command line on the current (single-threaded) runtime:
/// a scenario prints its summary and writes `--json` and `--svg`; `worker`
/// serves its coordinator.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let ((report, charts), fleet) = match cli.command {
        Command::Worker => return worker::main().await,
        Command::Hold(args) => (hold::run(&args).await?, args.fleet),
        Command::Broadcast(args) => (broadcast::run(&args).await?, args.fleet),
        Command::Surge(args) => (surge::run(&args).await?, args.fleet),
        Command::Failover(args) => (failover::run(&args).await?, args.surge.fleet),
        Command::Overhead(args) => (overhead::run(&args).await?, args.fleet),
    };
    print!("{}", report.render());
    if let Some(path) = fleet.json {
        report.write_json(&path)?;
        eprintln!("report written to {}", path.display());
    }
    if let Some(path) = fleet.svg {
        chart::write_svg(&path, &charts)?;
        eprintln!("charts written to {}", path.display());
    }
    Ok(())
}
