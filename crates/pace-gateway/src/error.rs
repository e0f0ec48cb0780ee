//! The one error type of the gateway crate: every way a topology, a ring or a
//! rendered config can be refused, and the I/O failures of the CLI, each with
//! a message an operator can act on without reading the code.

use std::path::PathBuf;

/// Everything `pace-node gateway …` and the library functions can fail with.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A `--node` value is not `HOST:PORT`.
    #[error("invalid node address {value:?}: {reason} (expected HOST:PORT, e.g. 127.0.0.1:8081)")]
    InvalidNode {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// No `--node` at all.
    #[error("at least one --node HOST:PORT is required")]
    NoNodes,

    /// The same `HOST:PORT` given twice (Kong refuses duplicate targets).
    #[error("node {0} is listed twice")]
    DuplicateNode(String),

    /// `--weights` does not have one entry per `--node`.
    #[error(
        "--weights has {weights} entries but there are {nodes} nodes; give one weight per node, in --node order"
    )]
    WeightCount {
        /// Entries in `--weights`.
        weights: usize,
        /// Number of `--node` flags.
        nodes: usize,
    },

    /// A weight that is not an integer in Kong's accepted range for a live target.
    #[error("invalid weight {value:?}: must be an integer from 1 to 65535")]
    InvalidWeight {
        /// The value as given.
        value: String,
    },

    /// `--slots` outside Kong's `upstreams.slots` range.
    #[error("invalid slots {0}: Kong accepts 10 to 65536")]
    InvalidSlots(u32),

    /// Kong gives up building the continuum when a target needs more entries
    /// than there are slots (and then keeps the previous continuum).
    #[error(
        "the ring has {slots} slots, too few for these targets and weights; Kong would refuse to rebuild it (raise --slots)"
    )]
    RingOverflow {
        /// Slots the ring was built with.
        slots: u32,
    },

    /// A bind address that is not `HOST:PORT`.
    #[error("invalid bind address {0:?} (expected HOST:PORT, e.g. 127.0.0.1:8000)")]
    InvalidBind(String),

    /// An upstream name Kong would refuse (it must look like a hostname).
    #[error(
        "invalid upstream name {0:?}: use letters, digits, '-' and '.', starting with a letter"
    )]
    InvalidUpstreamName(String),

    /// `--add` names a node that is already in the cluster.
    #[error("--add {0}: that node is already in the cluster")]
    AddExisting(String),

    /// `--ids FILE` held no device id.
    #[error("{0}: no device id found (one id per line)")]
    NoIds(PathBuf),

    /// `--devices 0`.
    #[error("--devices must be at least 1")]
    NoDevices,

    /// Reading `--ids FILE` failed.
    #[error("cannot read {path}: {source}")]
    ReadIds {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },

    /// A `--protect` setting that cannot produce a safe protected route.
    #[error("cannot protect the site: {0}")]
    InvalidProtection(String),

    /// Reading an `--admission-key` PEM file failed.
    #[error("cannot read admission key {path}: {source}")]
    ReadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },

    /// Writing the output failed (closed pipe, full disk).
    #[error("cannot write output: {0}")]
    Write(#[from] std::io::Error),

    /// Serialising the Kong config or the plan failed (a bug, not an input error).
    #[error("cannot serialise {what}: {message}")]
    Serialise {
        /// Which document.
        what: &'static str,
        /// The serializer's message.
        message: String,
    },
}
