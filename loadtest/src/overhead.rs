//! The `overhead` scenario: what waiting costs on the wire, pushed over a
//! WebSocket against pulled by HTTP polling.
//!
//! 1. The coordinator creates a paused room (nobody is admitted: every
//!    device waits the whole run).
//! 2. N devices connect and join it (the `surge` device, at `--join-rate`),
//!    and each device also starts a status poller: its own keep-alive HTTP
//!    connection to the same target, asking
//!    `GET /api/v1/rooms/{room}/status?device_id=ID` every
//!    `--poll-interval-ms` — the same information (place, total, state) a
//!    page without WebSocket would fetch. Request headers are a browser's
//!    (`--poll-headers browser`, see [`crate::poller::PollHeaders`]) or the
//!    bare minimum.
//! 3. After `--warmup`, for `--duration` seconds, every byte both ways is
//!    counted at the socket ([`crate::counting`]): WebSocket frames with
//!    their headers and masks, the node's pings and the device's pongs;
//!    HTTP requests and responses with all their headers.
//!
//! Reported per waiting device per minute, both directions, and the
//! WebSocket's bytes as a percentage of polling's (the design's target:
//! at most 1 %). TCP/IP headers are not counted on either side; polling
//! sends more segments, so counting them would only widen the gap.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::chart::Charts;
use crate::cli::OverheadArgs;
use crate::clock::unix_micros;
use crate::connect::{self, secs};
use crate::fleet::Progress;
use crate::http::Http;
use crate::ipc::{PollSpec, ReasonCounts, SurgeRecord, SurgeSpec, WorkerCommand};
use crate::nodes;
use crate::poller::{PollHeaders, status_request};
use crate::report::{Report, reasons};
use crate::stats::Summary;
use crate::target::Target;

/// Timeout of one admin request.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for workers to close every device and report.
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);
/// Budget of one poll.
const POLL_TIMEOUT: Duration = Duration::from_secs(5);
/// A device's first poll goes out this long after its join.
const POLL_DELAY: Duration = Duration::from_millis(500);
/// The design's target: WebSocket bytes at most this share of polling's.
pub const TARGET_PERCENT: f64 = 1.0;

/// Bytes of one kind of connection over the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Traffic {
    /// Bytes received by the devices (server → device).
    pub rx_bytes: u64,
    /// Bytes sent by the devices (device → server).
    pub tx_bytes: u64,
    /// `rx_bytes` per device per minute.
    pub rx_per_device_minute: f64,
    /// `tx_bytes` per device per minute.
    pub tx_per_device_minute: f64,
    /// Both directions per device per minute.
    pub per_device_minute: f64,
}

impl Traffic {
    fn new(rx: u64, tx: u64, devices: u64, minutes: f64) -> Traffic {
        let per = |b: u64| {
            if devices > 0 && minutes > 0.0 {
                b as f64 / devices as f64 / minutes
            } else {
                0.0
            }
        };
        Traffic {
            rx_bytes: rx,
            tx_bytes: tx,
            rx_per_device_minute: per(rx),
            tx_per_device_minute: per(tx),
            per_device_minute: per(rx + tx),
        }
    }
}

/// The polling side's counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Polls {
    /// Polls answered 200 in the window.
    pub ok: u64,
    /// Polls failed or answered otherwise in the window.
    pub failed: u64,
    /// `ok` per device per minute (≈ 60 at one per second).
    pub per_device_minute: f64,
    /// Request bytes of one poll (the first device's; ids differ by a few
    /// bytes).
    pub request_bytes: u64,
    /// Mean bytes received per answered poll in the window (status line,
    /// headers, body).
    pub response_bytes_mean: f64,
    /// Over the whole run: answers saying `waiting` …
    pub waiting: u64,
    /// … and another status (must be 0: every device waits).
    pub other_status: u64,
    /// Failures over the whole run, by reason.
    pub failures: ReasonCounts,
    /// TCP connections the pollers opened over the whole run (one per
    /// device when keep-alive holds).
    pub connects: u64,
    /// Round trip of answered polls (whole run).
    pub latency_ms: Summary,
}

/// The `overhead` part of a report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OverheadReport {
    /// The room the devices waited in.
    pub room: String,
    /// Its capacity (0: paused, the queue stood still).
    pub capacity: u32,
    /// How long admitted devices kept their slot, ms.
    pub hold_admitted_ms: u64,
    /// Devices admitted during the window.
    pub admitted_in_window: u64,
    /// Devices whose join was answered with a place.
    pub devices_waiting: u64,
    /// Joins refused, by code.
    pub joins_refused: u64,
    /// The measured window, seconds.
    pub window_s: f64,
    /// Between two polls of one device, ms.
    pub poll_interval_ms: u64,
    /// `browser` or `minimal`.
    pub poll_headers: String,
    /// WebSocket bytes (frames, pings, pongs) in the window.
    pub websocket: Traffic,
    /// HTTP polling bytes (requests, responses) in the window.
    pub polling: Traffic,
    /// Poll counts.
    pub polls: Polls,
    /// `queue` frames per waiting device per minute in the window (what
    /// the WebSocket carried besides pings).
    pub queue_frames_per_device_minute: f64,
    /// WebSocket bytes as a percentage of polling bytes.
    pub websocket_percent_of_polling: Option<f64>,
    /// The target, percent.
    pub target_percent: f64,
    /// Whether the WebSocket stayed within the target.
    pub met: bool,
}

/// The PUT body of the room: paused, so everybody waits; or, with a
/// capacity, open (admitted devices release after their hold, so the
/// queue moves).
pub fn room_body(capacity: u32) -> serde_json::Value {
    serde_json::json!({
        "capacity": capacity,
        "admit_per_minute": null,
        "session_ttl_secs": 300,
        "target_url": "https://x.example/in",
        "state": if capacity == 0 { "paused" } else { "open" },
        "pow_difficulty": 0,
    })
}

/// `queue` frames received within `[from, to]` µs over every record.
fn queue_frames_between(records: &[SurgeRecord], from: u64, to: u64) -> u64 {
    records
        .iter()
        .map(|r| {
            let first = r.first.map_or(0, |f| u64::from(f[0] >= from && f[0] <= to));
            first
                + r.queue
                    .iter()
                    .filter(|q| q[0] >= from && q[0] <= to)
                    .count() as u64
        })
        .sum()
}

/// KiB per second from the fleet's timeline: `(µs, KiB/s)` over
/// successive spans of at least one second.
fn rate(timeline: &[(u64, Progress)], bytes: impl Fn(&Progress) -> u64) -> Vec<(u64, f64)> {
    let mut out = Vec::new();
    let Some(mut from) = timeline.first() else {
        return out;
    };
    for s in &timeline[1..] {
        if s.0 < from.0 + 1_000_000 {
            continue;
        }
        let db = bytes(&s.1).saturating_sub(bytes(&from.1));
        let dt = (s.0 - from.0) as f64 / 1e6;
        out.push((s.0, db as f64 / dt / 1024.0));
        from = s;
    }
    out
}

/// Runs `overhead` and returns its report and charts.
pub async fn run(args: &OverheadArgs) -> anyhow::Result<(Report, Charts)> {
    if args.join_rate.is_nan() || args.join_rate <= 0.0 {
        bail!("--join-rate must be positive");
    }
    let duration = secs(args.duration);
    if duration.is_zero() {
        bail!("--duration must be positive");
    }
    if args.poll_interval_ms == 0 {
        bail!("--poll-interval-ms must be positive");
    }
    let admin = Target::parse(
        args.admin_target
            .as_deref()
            .unwrap_or(&args.fleet.targets[0]),
    )?;
    let run_id = connect::new_run_id();
    let room = args
        .room
        .clone()
        .unwrap_or_else(|| format!("overhead-{run_id}"));
    if pace_protocol::RoomId::parse(&room).is_err() {
        bail!("--room {room:?} is not a valid room id");
    }
    let headers = PollHeaders::from(args.poll_headers);

    let http = Http::new();
    nodes::wait_ready(
        &http,
        std::slice::from_ref(&admin),
        secs(args.fleet.ready_timeout),
    )
    .await?;
    let room_url = admin.url(&format!("/api/v1/rooms/{room}"));
    let reply = http
        .put_json(
            &room_url,
            &args.service_key,
            serde_json::to_vec(&room_body(args.capacity))?,
            ADMIN_TIMEOUT,
        )
        .await?;
    if reply.status != 200 {
        bail!(
            "PUT {room_url}: HTTP {}: {:.300}",
            reply.status,
            reply.text()
        );
    }

    let join_time = secs(args.fleet.devices as f64 / args.join_rate);
    let join_timeout = secs(args.join_timeout);
    let warmup = secs(args.warmup).max(POLL_DELAY + Duration::from_millis(500));
    let scenario_time = join_time + join_timeout + warmup + duration + Duration::from_secs(30);
    let spec = SurgeSpec {
        room: room.clone(),
        join_rate: args.join_rate,
        processes: 0,
        // Admitted devices (with --capacity) release after their hold.
        hold_admitted_ms: args.hold_admitted,
        hold_jitter_ms: 0,
        release_timeout_ms: ADMIN_TIMEOUT.as_millis() as u64,
        reconnect: None,
        poll: Some(PollSpec {
            interval_ms: args.poll_interval_ms,
            timeout_ms: POLL_TIMEOUT.as_millis() as u64,
            headers,
            delay_ms: POLL_DELAY.as_millis() as u64,
        }),
    };
    let mut c = connect::connect_with(&args.fleet, scenario_time, Some(spec), Some(run_id)).await?;
    c.fleet.sync()?;
    let devices_joining = c
        .run
        .connect
        .connected
        .saturating_sub(c.fleet.progress().dropped);
    let start_at_us = unix_micros() + 200_000;
    eprintln!(
        "{devices_joining} devices join room {room} at {} joins/s and poll their status every {} ms ({} headers)",
        args.join_rate,
        args.poll_interval_ms,
        headers.as_str()
    );
    c.fleet
        .command(&WorkerCommand::Join { start_at_us })
        .await?;
    c.fleet
        .wait_for(join_time + join_timeout + Duration::from_millis(200), |p| {
            p.joined + p.join_failed >= devices_joining
        })
        .await?;
    c.fleet.follow(warmup).await?;
    c.fleet.sync()?;
    let (from_us, a) = (unix_micros(), c.fleet.progress());
    eprintln!(
        "measuring for {:.0} s: {} waiting, {} polls answered so far",
        duration.as_secs_f64(),
        a.joined,
        a.more.polls_ok
    );
    c.fleet.follow(duration).await?;
    c.fleet.sync()?;
    let (to_us, b) = (unix_micros(), c.fleet.progress());
    let fin = c.fleet.finish(FINISH_TIMEOUT).await?;

    let minutes = to_us.saturating_sub(from_us) as f64 / 60e6;
    let waiting = b.joined;
    let ws = Traffic::new(
        b.more.ws_rx.saturating_sub(a.more.ws_rx),
        b.more.ws_tx.saturating_sub(a.more.ws_tx),
        waiting,
        minutes,
    );
    let polling = Traffic::new(
        b.more.http_rx.saturating_sub(a.more.http_rx),
        b.more.http_tx.saturating_sub(a.more.http_tx),
        waiting,
        minutes,
    );
    let ok = b.more.polls_ok.saturating_sub(a.more.polls_ok);
    let totals = fin.polls.clone().unwrap_or_default();
    let first_id = format!("{}-{}-0", args.fleet.device_prefix, c.run.run_id);
    let host = format!("{}:{}", c.targets[0].host, c.targets[0].port);
    let request_bytes = status_request(
        &host,
        &format!("/api/v1/rooms/{room}/status?device_id={first_id}"),
        headers,
    )
    .len() as u64;
    let mut latency = totals.latency_us.clone();
    let polls = Polls {
        ok,
        failed: b.more.polls_failed.saturating_sub(a.more.polls_failed),
        per_device_minute: if waiting > 0 && minutes > 0.0 {
            ok as f64 / waiting as f64 / minutes
        } else {
            0.0
        },
        request_bytes,
        response_bytes_mean: if ok > 0 {
            polling.rx_bytes as f64 / ok as f64
        } else {
            0.0
        },
        waiting: totals.waiting,
        other_status: totals.other_status,
        failures: totals.failures.clone(),
        connects: totals.connects,
        latency_ms: Summary::from_micros(&mut latency),
    };
    let percent = (polling.per_device_minute > 0.0)
        .then(|| ws.per_device_minute / polling.per_device_minute * 100.0);
    let frames = queue_frames_between(&fin.surge, from_us, to_us);
    let overhead = OverheadReport {
        room,
        capacity: args.capacity,
        hold_admitted_ms: args.hold_admitted,
        admitted_in_window: b.admitted.saturating_sub(a.admitted),
        devices_waiting: waiting,
        joins_refused: b.join_failed,
        window_s: minutes * 60.0,
        poll_interval_ms: args.poll_interval_ms,
        poll_headers: headers.as_str().to_owned(),
        websocket: ws,
        polling,
        polls,
        queue_frames_per_device_minute: if waiting > 0 && minutes > 0.0 {
            frames as f64 / waiting as f64 / minutes
        } else {
            0.0
        },
        websocket_percent_of_polling: percent,
        target_percent: TARGET_PERCENT,
        met: percent.is_some_and(|p| p <= TARGET_PERCENT),
    };

    let t0 = c.run.started_at_unix_ms * 1000;
    let mut charts = Charts::new(
        format!("pace-loadtest overhead, run {}", c.run.run_id),
        "devices",
    );
    charts.right_label = "KiB/s, both directions".into();
    charts.dist("connect (TCP connect → welcome)", c.connect_us.clone());
    let joins: Vec<u64> = fin
        .surge
        .iter()
        .filter_map(|r| Some(r.first?[0].saturating_sub(r.join_us?)))
        .collect();
    charts.dist("join (join → place)", joins);
    charts.dist("status poll (request → response)", totals.latency_us);
    charts.progress_line("connections open", false, t0, &fin.timeline, |p| {
        p.open as f64
    });
    charts.progress_line("joined (cumulative)", false, t0, &fin.timeline, |p| {
        p.joined as f64
    });
    charts.progress_line("admitted (cumulative)", false, t0, &fin.timeline, |p| {
        p.admitted as f64
    });
    charts.line(
        "WebSocket KiB/s",
        true,
        t0,
        &rate(&fin.timeline, |p| p.more.ws_rx + p.more.ws_tx),
    );
    charts.line(
        "polling KiB/s",
        true,
        t0,
        &rate(&fin.timeline, |p| p.more.http_rx + p.more.http_tx),
    );
    charts.marker("window start", t0, from_us);
    charts.marker("window end", t0, to_us);

    let report = Report {
        overhead: Some(overhead),
        ..Report::new("overhead", c.run, args.fleet.devices, &fin)
    };
    Ok((report, charts))
}

/// The overhead lines of the human summary.
pub fn render(s: &mut String, o: &OverheadReport) {
    let _ = writeln!(
        s,
        "overhead: {} devices waiting in room {} ({}; {} admitted in the window, {} joins refused), window {:.1} s; polls every {} ms with {} headers",
        o.devices_waiting,
        o.room,
        if o.capacity == 0 {
            "paused".to_owned()
        } else {
            format!(
                "open, capacity {}, slots held {} ms",
                o.capacity, o.hold_admitted_ms
            )
        },
        o.admitted_in_window,
        o.joins_refused,
        o.window_s,
        o.poll_interval_ms,
        o.poll_headers
    );
    let line = |s: &mut String, what: &str, t: &Traffic| {
        let _ = writeln!(
            s,
            "  {what}: {:.0} B per device per minute (down {:.0}, up {:.0}); {} B down, {} B up in all",
            t.per_device_minute,
            t.rx_per_device_minute,
            t.tx_per_device_minute,
            t.rx_bytes,
            t.tx_bytes
        );
    };
    line(s, "WebSocket", &o.websocket);
    line(s, "polling  ", &o.polling);
    let p = &o.polls;
    let _ = writeln!(
        s,
        "  polls: {} answered ({:.1} per device per minute), {} failed in the window; request {} B, response {:.0} B on average; {} TCP connections; {} waiting / {} other answers; failures: {}",
        p.ok,
        p.per_device_minute,
        p.failed,
        p.request_bytes,
        p.response_bytes_mean,
        p.connects,
        p.waiting,
        p.other_status,
        reasons(&p.failures)
    );
    let _ = writeln!(s, "  poll round trip: {}", p.latency_ms.line());
    let _ = writeln!(
        s,
        "  queue frames per waiting device per minute: {:.2}",
        o.queue_frames_per_device_minute
    );
    let _ = writeln!(
        s,
        "  => WebSocket = {} of polling (target ≤ {} %): {}",
        o.websocket_percent_of_polling
            .map_or("n/a".to_owned(), |v| format!("{v:.2} %")),
        o.target_percent,
        if o.met { "met" } else { "MISSED" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_per_device_per_minute() {
        let t = Traffic::new(6_000, 3_000, 10, 0.5);
        assert_eq!(t.rx_per_device_minute, 1_200.0);
        assert_eq!(t.tx_per_device_minute, 600.0);
        assert_eq!(t.per_device_minute, 1_800.0);
        assert_eq!(Traffic::new(1, 1, 0, 1.0).per_device_minute, 0.0);
    }

    #[test]
    fn frames_in_the_window_and_rates() {
        let r = SurgeRecord {
            first: Some([5, 10, 10]),
            queue: vec![[15, 9], [25, 8], [40, 7]],
            ..SurgeRecord::default()
        };
        assert_eq!(queue_frames_between(&[r.clone(), r], 5, 25), 6);
        let p = |b: u64| Progress {
            more: crate::ipc::MoreProgress {
                ws_rx: b,
                ..Default::default()
            },
            ..Progress::default()
        };
        let tl = vec![
            (0, p(0)),
            (500_000, p(1024)),
            (1_000_000, p(2048)),
            (3_000_000, p(6144)),
        ];
        assert_eq!(
            rate(&tl, |p| p.more.ws_rx),
            vec![(1_000_000, 2.0), (3_000_000, 2.0)]
        );
    }

    #[test]
    fn room_is_paused() {
        assert_eq!(room_body(0)["state"], "paused");
        let open = room_body(2);
        assert_eq!(
            (open["state"].as_str(), open["capacity"].as_u64()),
            (Some("open"), Some(2))
        );
    }
}
