//! The line protocol between the coordinator and its worker processes.
//!
//! One process cannot hold more than ~20 000 open files, so the coordinator
//! re-executes itself as hidden `worker` subcommands and spreads the devices
//! over them. They talk over the worker's stdin/stdout, one JSON object per
//! line: simple to debug (`pace-loadtest worker` can be driven by hand) and
//! robust (when the coordinator dies, the worker sees end-of-file on stdin
//! and closes its devices). The first stdin line is the [`WorkerSpec`]; later
//! lines are [`WorkerCommand`]s. Every stdout line is a [`WorkerEvent`].

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::target::Target;

/// Everything a worker needs to run its share of the devices.
/// A device transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// The WebSocket, `GET /ws`.
    #[default]
    Ws,
    /// The HTTP stream, `GET /stream` (Server-Sent Events).
    Sse,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// Index of this worker (0-based), for messages.
    pub worker: usize,
    /// Global index of this worker's first device.
    pub first_device: u64,
    /// How many devices this worker runs (global indices
    /// `first_device..first_device + devices`).
    pub devices: u64,
    /// Targets; device `i` connects to `targets[i % targets.len()]`.
    pub targets: Vec<Target>,
    /// Source addresses; device `i` binds `source_ips[i % len]`. Empty: the
    /// OS picks.
    pub source_ips: Vec<IpAddr>,
    /// Device ids are `{device_prefix}-{run_id}-{i}`.
    pub device_prefix: String,
    /// Identifies this run; notifications from another run are counted as
    /// foreign, not as deliveries.
    pub run_id: String,
    /// New connections per second this worker starts.
    pub connect_rate: f64,
    /// Handshakes this worker has in flight at most.
    pub connect_concurrency: usize,
    /// Budget for TCP connect + WebSocket handshake + `welcome`.
    pub connect_timeout_ms: u64,
    /// Read buffer per WebSocket, in bytes (tungstenite allocates it eagerly).
    pub read_buffer_bytes: usize,
    /// How devices connect.
    #[serde(default)]
    pub transport: Transport,
    /// How often to emit [`WorkerEvent::Progress`].
    pub progress_interval_ms: u64,
    /// The worker finishes on its own this long after starting, even without
    /// a `finish` command: a worker never outlives its scenario.
    pub deadline_ms: u64,
    /// `surge` only: devices join a waiting room instead of idling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surge: Option<SurgeSpec>,
    /// `--register`: register every device over HTTP first, report
    /// [`WorkerEvent::Registered`], wait for [`WorkerCommand::Connect`],
    /// then connect each device with its token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub register: Option<RegisterSpec>,
}

/// How a worker registers its devices (`--register`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterSpec {
    /// Registrations this worker has in flight at most.
    pub concurrency: usize,
    /// Budget of one `POST /api/v1/devices/register`.
    pub request_timeout_ms: u64,
    /// Budget of this worker's whole registration phase; devices not
    /// registered by then are not connected.
    pub phase_timeout_ms: u64,
}

/// What a `surge` worker's devices do once connected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SurgeSpec {
    /// The room every device joins.
    pub room: String,
    /// Joins per second over all workers. Device `j` (local index) of
    /// worker `w` joins `(j × processes + w) / join_rate` seconds after the
    /// start, so the workers interleave and the total rate is `join_rate`.
    pub join_rate: f64,
    /// Worker processes in the run (for the interleaving above).
    pub processes: usize,
    /// How long an admitted device keeps its slot before releasing it…
    pub hold_admitted_ms: u64,
    /// … plus a per-device spread in `0..=hold_jitter_ms` (a fixed hash of
    /// the device index), so releases do not fall in step with the tick.
    #[serde(default)]
    pub hold_jitter_ms: u64,
    /// Budget of one `POST /api/v1/sessions/release`.
    pub release_timeout_ms: u64,
    /// `failover`: devices whose connection drops reconnect and rejoin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconnect: Option<ReconnectSpec>,
    /// `overhead`: each device also polls its status over HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll: Option<PollSpec>,
}

/// How a device whose connection dropped comes back (`failover`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReconnectSpec {
    /// Backoff before attempt k (0-based) is uniform in
    /// `0..min(max_ms, base_ms × 2^k)` ("full jitter").
    pub base_ms: u64,
    /// Cap of the backoff.
    pub max_ms: u64,
    /// A device not connected again this long after its drop gives up and
    /// counts as lost.
    pub within_ms: u64,
    /// Reconnect through this target (a gateway); without it, attempt k
    /// goes to target `(first + k) mod targets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Target>,
}

/// How a device polls its status (`overhead`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollSpec {
    /// Between two polls of one device.
    pub interval_ms: u64,
    /// Budget of one poll.
    pub timeout_ms: u64,
    /// Request headers.
    pub headers: crate::poller::PollHeaders,
    /// The first poll goes out this long after the device's join.
    pub delay_ms: u64,
}

/// What the coordinator tells a running worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum WorkerCommand {
    /// Close every device cleanly, send [`WorkerEvent::Final`], exit.
    Finish,
    /// `surge`: start joining; the first join is due at this wall-clock
    /// instant (µs since the epoch).
    Join {
        /// When the join schedule starts.
        start_at_us: u64,
    },
    /// `--register`: every worker has registered its devices; start
    /// connecting at this wall-clock instant (µs since the epoch), so that
    /// the connect phases of all workers start together.
    Connect {
        /// When the connect schedule starts.
        start_at_us: u64,
    },
}

/// Why a device could not connect, or why its connection ended; keys of the
/// failure maps in reports (`connect_refused`, `http_503_node_full`, …).
pub type ReasonCounts = BTreeMap<String, u64>;

/// Notifications of one message index received by this worker's devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageReceipts {
    /// The message index (`data.k` of the notification).
    pub k: u32,
    /// Wall-clock receive instants, microseconds since the Unix epoch, one
    /// per device that received it (duplicates excluded).
    pub recv_us: Vec<u64>,
}

/// What a worker reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum WorkerEvent {
    /// Running counters, every `progress_interval_ms`.
    Progress {
        /// Devices connected right now (welcome received, not yet ended).
        open: u64,
        /// Connection attempts that failed so far.
        failed: u64,
        /// Notifications of this run received so far (duplicates excluded).
        received: u64,
        /// Connections the server ended (or that broke) before `finish`.
        dropped: u64,
        /// `surge`: joins answered with a place (or an admission).
        #[serde(default, skip_serializing_if = "is_zero")]
        joined: u64,
        /// `surge`: joins answered with an `error` frame.
        #[serde(default, skip_serializing_if = "is_zero")]
        join_failed: u64,
        /// `surge`: `admitted` frames received.
        #[serde(default, skip_serializing_if = "is_zero")]
        admitted: u64,
        /// `surge`: releases finished (successful or not).
        #[serde(default, skip_serializing_if = "is_zero")]
        released: u64,
        /// Extra counters of `failover` and `overhead`.
        #[serde(default, flatten)]
        more: MoreProgress,
    },
    /// `--register`: every registration has completed (or the phase timed
    /// out); the worker now waits for [`WorkerCommand::Connect`].
    Registered {
        /// Devices registered (token received).
        ok: u64,
        /// Failed or unfinished registrations by reason.
        failures: ReasonCounts,
        /// Latency of each successful registration (request to answer), µs.
        register_us: Vec<u64>,
        /// Wall clock of the first request, µs since the epoch.
        first_attempt_us: u64,
        /// Wall clock of the last answer, µs since the epoch.
        last_done_us: u64,
    },
    /// Every connection attempt has completed (success or failure).
    Connected {
        /// Devices connected.
        ok: u64,
        /// Failed attempts by reason.
        failures: ReasonCounts,
        /// Connect latency of each success (TCP connect to `welcome`), µs.
        connect_us: Vec<u64>,
        /// Wall clock of the first attempt, µs since the epoch.
        first_attempt_us: u64,
        /// Wall clock of the last success (or last attempt), µs since the epoch.
        last_done_us: u64,
    },
    /// Sent once after `finish`, when every device has been closed.
    Final {
        /// Receipts grouped by message index.
        receipts: Vec<MessageReceipts>,
        /// Notifications of this run a device received more than once.
        duplicates: u64,
        /// Notifications of another run, or without a load-test index.
        foreign: u64,
        /// `error` frames received.
        error_frames: u64,
        /// Connections that ended before `finish`, by reason.
        dropped: ReasonCounts,
        /// Devices whose close handshake completed.
        closed_clean: u64,
        /// Devices whose close the node answered by closing TCP without a
        /// close frame.
        closed_no_reply: u64,
        /// Devices whose close failed or timed out.
        close_errors: u64,
        /// CPU time this worker process used over its whole life, seconds
        /// (the load generator's own cost; it shares the machine's cores).
        cpu_seconds: f64,
        /// `surge`: what each connected device saw.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        surge: Vec<SurgeRecord>,
        /// `overhead`: what the status polls saw.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        polls: Option<PollTotals>,
    },
    /// The worker could not run at all.
    Fatal {
        /// What went wrong.
        message: String,
    },
}

/// Progress counters of `--register` (registrations), `failover`
/// (reconnections) and `overhead` (bytes on the wire, polls); all zero, and
/// left out of the line, otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoreProgress {
    /// `--register`: devices registered so far.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub registered: u64,
    /// `--register`: registrations that failed so far.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub register_failed: u64,
    /// Devices between a drop and the answer to their rejoin.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reconnecting: u64,
    /// Successful reconnections.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reconnected: u64,
    /// Devices that gave up reconnecting.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost: u64,
    /// Bytes the device WebSockets received (socket level).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ws_rx: u64,
    /// Bytes the device WebSockets sent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ws_tx: u64,
    /// Bytes the status pollers received.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub http_rx: u64,
    /// Bytes the status pollers sent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub http_tx: u64,
    /// Polls answered 200.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub polls_ok: u64,
    /// Polls that failed or were answered otherwise.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub polls_failed: u64,
}

impl MoreProgress {
    /// Field-wise sum.
    pub fn plus(self, o: MoreProgress) -> MoreProgress {
        MoreProgress {
            registered: self.registered + o.registered,
            register_failed: self.register_failed + o.register_failed,
            reconnecting: self.reconnecting + o.reconnecting,
            reconnected: self.reconnected + o.reconnected,
            lost: self.lost + o.lost,
            ws_rx: self.ws_rx + o.ws_rx,
            ws_tx: self.ws_tx + o.ws_tx,
            http_rx: self.http_rx + o.http_rx,
            http_tx: self.http_tx + o.http_tx,
            polls_ok: self.polls_ok + o.polls_ok,
            polls_failed: self.polls_failed + o.polls_failed,
        }
    }
}

/// One `surge` device's life in the waiting room. Instants are wall-clock
/// µs since the Unix epoch (every process reads the same clock).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SurgeRecord {
    /// Global device index.
    pub i: u64,
    /// When the `join` frame was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_us: Option<u64>,
    /// The answer to the join: the first `queue` frame as `[received,
    /// position, waiting_total]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<[u64; 3]>,
    /// Every later `queue` frame while waiting, as `[received, position]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queue: Vec<[u64; 2]>,
    /// When the `admitted` frame arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admitted_us: Option<u64>,
    /// The session end the `admitted` frame announced, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// When the release POST was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_sent_us: Option<u64>,
    /// When its response was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_done_us: Option<u64>,
    /// Why the release failed (`http_404`, `timeout`, `not_released`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_error: Option<String>,
    /// The `error` code the join was answered with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_error: Option<String>,
    /// Why the connection ended before the finish, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<String>,
    /// `admitted` frames after the first (must stay 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub extra_admitted: u64,
    /// `queue` frames received after the admission.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub queue_after_admitted: u64,
    /// `failover`: every drop of the connection and how the device came
    /// back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reconnects: Vec<ReconnectRecord>,
    /// `failover`: the device gave up reconnecting (last failure reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<String>,
}

/// One drop of a `failover` device's connection and its return.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReconnectRecord {
    /// When the drop was seen.
    pub dropped_us: u64,
    /// Why the connection ended (`eof`, `io_connection_reset`, `closed_1012`, …).
    pub reason: String,
    /// Connection attempts made.
    pub attempts: u32,
    /// When the `welcome` of the new connection arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub welcome_us: Option<u64>,
    /// The route (target index; the gateway comes after the targets) of
    /// the new connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<usize>,
    /// Waiting when it dropped: the last position it had been told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_before: Option<u64>,
    /// Admitted (and not released) when it dropped: the session's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_before: Option<u64>,
    /// When the rejoin (`join` again) was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejoin_us: Option<u64>,
    /// When its answer arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_us: Option<u64>,
    /// The answer: `queue`, `admitted`, or an error code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// `queue` answer: the position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_after: Option<u64>,
    /// `admitted` answer: the session's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_after: Option<u64>,
}

/// What one worker's status polls saw (`overhead`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PollTotals {
    /// Polls answered 200 with `"status":"waiting"`.
    pub waiting: u64,
    /// Polls answered 200 with another status.
    pub other_status: u64,
    /// Polls that failed, by reason (`http_404`, `timeout`, …).
    pub failures: ReasonCounts,
    /// TCP connections the pollers opened (1 per device with keep-alive).
    pub connects: u64,
    /// Round-trip time of answered polls, µs (at most the first 100 000).
    pub latency_us: Vec<u64>,
}

impl PollTotals {
    /// Adds `o` into `self`.
    pub fn merge(&mut self, o: &PollTotals) {
        self.waiting += o.waiting;
        self.other_status += o.other_status;
        merge(&mut self.failures, &o.failures);
        self.connects += o.connects;
        self.latency_us.extend_from_slice(&o.latency_us);
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Adds `n` to `counts[reason]`.
pub fn bump(counts: &mut ReasonCounts, reason: &str, n: u64) {
    *counts.entry(reason.to_owned()).or_insert(0) += n;
}

/// Adds every count of `from` into `into`.
pub fn merge(into: &mut ReasonCounts, from: &ReasonCounts) {
    for (reason, n) in from {
        bump(into, reason, *n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_single_json_lines() {
        let ev = WorkerEvent::Progress {
            open: 1,
            failed: 2,
            received: 3,
            dropped: 4,
            joined: 0,
            join_failed: 0,
            admitted: 0,
            released: 0,
            more: MoreProgress::default(),
        };
        let line = serde_json::to_string(&ev).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(
            line,
            r#"{"ev":"progress","open":1,"failed":2,"received":3,"dropped":4}"#
        );
        assert_eq!(serde_json::from_str::<WorkerEvent>(&line).unwrap(), ev);
    }

    #[test]
    fn surge_fields_round_trip() {
        let ev = WorkerEvent::Progress {
            open: 1,
            failed: 0,
            received: 0,
            dropped: 0,
            joined: 5,
            join_failed: 1,
            admitted: 2,
            released: 1,
            more: MoreProgress {
                reconnecting: 2,
                ..MoreProgress::default()
            },
        };
        let line = serde_json::to_string(&ev).unwrap();
        assert!(line.contains(r#""joined":5"#), "{line}");
        assert!(line.contains(r#""reconnecting":2"#), "{line}");
        assert_eq!(serde_json::from_str::<WorkerEvent>(&line).unwrap(), ev);
        let rec = SurgeRecord {
            i: 7,
            join_us: Some(10),
            first: Some([12, 3, 40]),
            queue: vec![[20, 2], [30, 1]],
            admitted_us: Some(40),
            ..SurgeRecord::default()
        };
        let text = serde_json::to_string(&rec).unwrap();
        assert_eq!(
            text,
            r#"{"i":7,"join_us":10,"first":[12,3,40],"queue":[[20,2],[30,1]],"admitted_us":40}"#
        );
        assert_eq!(serde_json::from_str::<SurgeRecord>(&text).unwrap(), rec);
        assert_eq!(
            serde_json::to_string(&WorkerCommand::Join { start_at_us: 5 }).unwrap(),
            r#"{"cmd":"join","start_at_us":5}"#
        );
    }

    #[test]
    fn finish_command_wire_form() {
        assert_eq!(
            serde_json::to_string(&WorkerCommand::Finish).unwrap(),
            r#"{"cmd":"finish"}"#
        );
    }

    #[test]
    fn reason_counts_merge() {
        let mut a = ReasonCounts::new();
        bump(&mut a, "x", 2);
        let mut b = ReasonCounts::new();
        bump(&mut b, "x", 3);
        bump(&mut b, "y", 1);
        merge(&mut a, &b);
        assert_eq!(a.get("x"), Some(&5));
        assert_eq!(a.get("y"), Some(&1));
    }
}
