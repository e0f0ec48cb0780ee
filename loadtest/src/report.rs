//! The result of a run: one serializable [`Report`] (written with `--json`)
//! and its human rendering (printed at the end of every run).
//!
//! Every latency is in milliseconds with microsecond resolution; memory in
//! bytes, except the per-device figure in KiB; CPU per delivery in µs.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::ipc::ReasonCounts;
use crate::nodes::Source;
use crate::stats::Summary;
use crate::surge::{CpuWindow, StoreWindow, SurgeReport};

/// A whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// `hold`, `broadcast`, `surge`, `failover` or `overhead`.
    pub scenario: String,
    /// Identifies the run (part of every device id).
    pub run_id: String,
    /// When the run started, ms since the Unix epoch.
    pub started_at_unix_ms: u64,
    /// Targets' base URLs.
    pub targets: Vec<String>,
    /// Devices asked for.
    pub devices: u64,
    /// Worker processes used.
    pub processes: usize,
    /// Source addresses device sockets were bound to (empty: the OS chose).
    pub source_ips: Vec<String>,
    /// `--register`: the registration phase before the connect phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub register: Option<RegisterReport>,
    /// Connect phase.
    pub connect: ConnectReport,
    /// Node memory before and after connecting.
    pub memory: MemoryReport,
    /// `hold` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<HoldReport>,
    /// `broadcast` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast: Option<BroadcastReport>,
    /// `surge` and `failover`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surge: Option<SurgeReport>,
    /// `failover` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<crate::failover::FailoverReport>,
    /// `overhead` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overhead: Option<crate::overhead::OverheadReport>,
    /// How the devices' connections ended.
    pub close: CloseReport,
    /// CPU the load generator's worker processes used over the whole run,
    /// seconds: they share the machine with the node under test.
    pub loadgen_cpu_seconds: f64,
}

impl Report {
    /// The parts every scenario reports — the run, its connect phase and
    /// memory, how the connections ended — with no scenario section yet;
    /// the caller fills in its own.
    pub fn new(
        scenario: &str,
        run: crate::connect::RunFacts,
        devices: u64,
        fin: &crate::fleet::FinalPhase,
    ) -> Report {
        Report {
            scenario: scenario.into(),
            run_id: run.run_id,
            started_at_unix_ms: run.started_at_unix_ms,
            targets: run.targets,
            devices,
            processes: run.processes,
            source_ips: run.source_ips,
            register: run.register,
            connect: run.connect,
            memory: run.memory,
            hold: None,
            broadcast: None,
            surge: None,
            failover: None,
            overhead: None,
            close: fin.close_report(),
            loadgen_cpu_seconds: fin.workers_cpu_seconds,
        }
    }
}

/// The registration phase (`--register`): every device registered over
/// HTTP for a device token before any connected. Not part of the connect
/// phase's rate or latency.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterReport {
    /// Devices registered (token received).
    pub registered: u64,
    /// Devices whose registration failed or did not finish in time; they
    /// were not connected (connect failure `register_failed`).
    pub register_failed: u64,
    /// Registration failures by reason.
    pub failures: ReasonCounts,
    /// From the first request to the last answer, seconds.
    pub duration_s: f64,
    /// `registered / duration_s`.
    pub rate_per_s: f64,
    /// Request to answer, per registered device.
    pub latency_ms: Summary,
    /// Node RSS growth over the registration phase per registered device,
    /// KiB (the device registry's records); the memory section starts
    /// after it.
    pub rss_per_device_kib: Option<f64>,
}

/// The connect phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectReport {
    /// Attempts (= devices).
    pub attempted: u64,
    /// Devices that received `welcome`.
    pub connected: u64,
    /// Attempts that failed.
    pub failed: u64,
    /// Failures by reason.
    pub failures: ReasonCounts,
    /// From the first attempt to the last completion, seconds.
    pub duration_s: f64,
    /// `connected / duration_s`.
    pub rate_per_s: f64,
    /// TCP connect to `welcome`, per device.
    pub latency_ms: Summary,
    /// `pace_connections_open` summed over targets after settling, if reported.
    pub connections_open_reported: Option<u64>,
    /// Machine-wide accept-queue overflows during the connect phase
    /// (`TcpExt: ListenOverflows` delta): each one delays a device's connect
    /// by a SYN retransmission (≥ 1 s). Non-zero: the node accepts too slowly
    /// or its listen backlog is too short.
    pub listen_overflows: Option<u64>,
}

/// Node memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryReport {
    /// Where the numbers come from.
    pub source: Source,
    /// RSS of each node before any device connected (after the
    /// registrations, with `--register`), bytes.
    pub before_bytes: Vec<Option<u64>>,
    /// RSS of each node once all devices were connected and settled, bytes.
    pub after_bytes: Vec<Option<u64>>,
    /// `(Σafter − Σbefore) / connected`, KiB.
    pub rss_per_device_kib: Option<f64>,
}

/// The hold phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HoldReport {
    /// How long devices were held after measuring, seconds.
    pub seconds: f64,
    /// Devices still open at the end of the hold.
    pub open_at_end: u64,
    /// Connections the server ended (or that broke) before the finish.
    pub dropped: u64,
}

/// The broadcast phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BroadcastReport {
    /// Notifications asked for.
    pub messages: u32,
    /// POSTs answered 202.
    pub accepted: u32,
    /// POSTs that failed, by reason (`http_401`, `timeout`, …).
    pub post_failures: ReasonCounts,
    /// Spacing between POSTs.
    pub interval_ms: u64,
    /// Where the POSTs went.
    pub notify_target: String,
    /// Devices open when the first POST went out.
    pub devices_at_send: u64,
    /// `devices_at_send × accepted`.
    pub expected: u64,
    /// Distinct (device, message) receipts.
    pub received: u64,
    /// `expected − received` (never negative).
    pub lost: u64,
    /// Receipts of a message a device already had.
    pub duplicates: u64,
    /// Notifications not from this run.
    pub foreign: u64,
    /// `error` frames devices received.
    pub error_frames: u64,
    /// Whether every expected delivery arrived before the drain timeout.
    pub drained: bool,
    /// Receive − POST send instant, per (device, message).
    pub latency_ms: Summary,
    /// Per message: receive of its last device − its POST send instant.
    /// Only p50 and max are meaningful with few messages.
    pub time_to_last_device_ms: Summary,
    /// Messages some expected device never received.
    pub incomplete_messages: u64,
    /// POST send → 202 response.
    pub post_ack_ms: Summary,
    /// Node CPU over the broadcast.
    pub cpu: CpuReport,
}

/// Node CPU per delivered message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CpuReport {
    /// Where the numbers come from.
    pub source: Source,
    /// User + system CPU of all nodes from just before the first POST to the
    /// last delivery, seconds.
    pub cpu_seconds: Option<f64>,
    /// Deliveries in that window.
    pub deliveries: u64,
    /// `cpu_seconds × 10⁶ / deliveries`.
    pub us_per_delivery: Option<f64>,
    /// The user-space part of `us_per_delivery` (`/proc` source only).
    pub user_us_per_delivery: Option<f64>,
    /// The kernel part of `us_per_delivery` (`/proc` source only). On
    /// loopback it includes the receiving side's TCP processing, which the
    /// kernel runs on the sender's CPU.
    pub system_us_per_delivery: Option<f64>,
}

/// How connections ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CloseReport {
    /// Devices whose close handshake completed.
    pub clean: u64,
    /// Devices whose close the node answered by closing TCP without a close
    /// frame (an RFC 6455 §5.5.1 violation, harmless for the device).
    pub no_reply: u64,
    /// Devices whose close failed or timed out.
    pub errors: u64,
    /// Connections ended early by the server or the network, by reason.
    pub dropped: ReasonCounts,
}

/// `(Σafter − Σbefore) / devices` in KiB; `None` if any reading is missing
/// or no device is connected. Negative when the node returned memory.
pub fn per_device_kib(before: &[Option<u64>], after: &[Option<u64>], devices: u64) -> Option<f64> {
    if devices == 0 || before.len() != after.len() {
        return None;
    }
    let b: u64 = crate::nodes::sum_all(before)?;
    let a: u64 = crate::nodes::sum_all(after)?;
    Some((a as f64 - b as f64) / 1024.0 / devices as f64)
}

/// CPU µs per delivery; `None` without CPU data or deliveries.
pub fn us_per_delivery(cpu_seconds: Option<f64>, deliveries: u64) -> Option<f64> {
    let s = cpu_seconds?;
    (deliveries > 0).then(|| s * 1e6 / deliveries as f64)
}

fn mib(b: Option<u64>) -> String {
    b.map(|b| format!("{:.1} MiB", b as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "n/a".into())
}

/// `a=1, b=2`, or `none`.
pub fn reasons(r: &ReasonCounts) -> String {
    if r.is_empty() {
        return "none".into();
    }
    r.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Report {
    /// The human summary.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let c = &self.connect;
        let _ = writeln!(
            s,
            "== pace-loadtest {} (run {}) ==",
            self.scenario, self.run_id
        );
        let _ = writeln!(
            s,
            "targets: {}  devices: {}  processes: {}  source IPs: {}",
            self.targets.join(" "),
            self.devices,
            self.processes,
            if self.source_ips.is_empty() {
                "OS-chosen".to_owned()
            } else {
                self.source_ips.len().to_string()
            }
        );
        if let Some(r) = &self.register {
            let _ = writeln!(
                s,
                "register: {}/{} registered, register_failed {} ({}) in {:.2} s = {:.0} reg/s, node RSS {} per device",
                r.registered,
                self.devices,
                r.register_failed,
                reasons(&r.failures),
                r.duration_s,
                r.rate_per_s,
                r.rss_per_device_kib
                    .map(|k| format!("{k:.2} KiB"))
                    .unwrap_or_else(|| "n/a".into())
            );
            let _ = writeln!(s, "register latency: {}", r.latency_ms.line());
        }
        let _ = writeln!(
            s,
            "connect: {}/{} connected, {} failed ({}) in {:.2} s = {:.0} conn/s",
            c.connected,
            c.attempted,
            c.failed,
            reasons(&c.failures),
            c.duration_s,
            c.rate_per_s
        );
        let _ = writeln!(s, "connect latency: {}", c.latency_ms.line());
        if let Some(n) = c.listen_overflows.filter(|&n| n > 0) {
            let _ = writeln!(
                s,
                "WARNING: {n} listen-queue overflows while connecting (SYN retransmits inflate connect latency)"
            );
        }
        if let Some(open) = c.connections_open_reported {
            let _ = writeln!(s, "pace_connections_open reported by targets: {open}");
        }
        let m = &self.memory;
        let _ = writeln!(
            s,
            "node RSS ({:?}): before {}  after {}  => {} per device",
            m.source,
            m.before_bytes
                .iter()
                .map(|b| mib(*b))
                .collect::<Vec<_>>()
                .join(" + "),
            m.after_bytes
                .iter()
                .map(|b| mib(*b))
                .collect::<Vec<_>>()
                .join(" + "),
            m.rss_per_device_kib
                .map(|k| format!("{k:.2} KiB"))
                .unwrap_or_else(|| "n/a".into())
        );
        if let Some(h) = &self.hold {
            let _ = writeln!(
                s,
                "hold: {:.1} s, {} open at end, {} dropped",
                h.seconds, h.open_at_end, h.dropped
            );
        }
        if let Some(b) = &self.broadcast {
            let _ = writeln!(
                s,
                "broadcast: {}/{} accepted via {} every {} ms (post failures: {})",
                b.accepted,
                b.messages,
                b.notify_target,
                b.interval_ms,
                reasons(&b.post_failures)
            );
            let _ = writeln!(
                s,
                "deliveries: {} of {} expected ({} devices), lost {}, duplicates {}, foreign {}, error frames {}{}",
                b.received,
                b.expected,
                b.devices_at_send,
                b.lost,
                b.duplicates,
                b.foreign,
                b.error_frames,
                if b.drained {
                    ""
                } else {
                    "  [drain timeout hit]"
                }
            );
            let _ = writeln!(s, "delivery latency: {}", b.latency_ms.line());
            let _ = writeln!(
                s,
                "time to last device per message: p50 {:.3} ms  max {:.3} ms  ({} incomplete messages)",
                b.time_to_last_device_ms.p50, b.time_to_last_device_ms.max, b.incomplete_messages
            );
            let _ = writeln!(s, "POST ack: {}", b.post_ack_ms.line());
            let _ = writeln!(
                s,
                "node CPU ({:?}): {} over {} deliveries => {} per delivery",
                b.cpu.source,
                b.cpu
                    .cpu_seconds
                    .map(|c| format!("{c:.3} s"))
                    .unwrap_or_else(|| "n/a".into()),
                b.cpu.deliveries,
                b.cpu
                    .us_per_delivery
                    .map(|u| format!("{u:.2} µs"))
                    .unwrap_or_else(|| "n/a".into())
            );
            if let (Some(u), Some(k)) = (b.cpu.user_us_per_delivery, b.cpu.system_us_per_delivery) {
                let _ = writeln!(s, "  of which user {u:.2} µs, kernel {k:.2} µs");
            }
        }
        if let Some(g) = &self.surge {
            render_surge(&mut s, g);
        }
        if let Some(f) = &self.failover {
            crate::failover::render(&mut s, f);
        }
        if let Some(o) = &self.overhead {
            crate::overhead::render(&mut s, o);
        }
        let _ = writeln!(
            s,
            "close: {} clean, {} without close reply, {} errors, dropped early: {}",
            self.close.clean,
            self.close.no_reply,
            self.close.errors,
            reasons(&self.close.dropped)
        );
        let _ = writeln!(
            s,
            "load generator workers used {:.2} s CPU",
            self.loadgen_cpu_seconds
        );
        s
    }

    /// Writes the report as pretty JSON.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "n/a".into())
}

fn store_line(s: &mut String, what: &str, w: &StoreWindow) {
    let _ = writeln!(
        s,
        "store, {what}: {} commands in {:.1} s = {:.0}/min, redis CPU {:.2} s; avg waiting {:.0}",
        w.commands, w.seconds, w.per_minute, w.redis_cpu_seconds, w.avg_waiting
    );
    if let Some(p) = w.per_waiting_device_per_minute {
        let _ = writeln!(
            s,
            "  => {p:.2} commands per waiting device per minute ({} without the tool's {} stats polls)",
            w.per_waiting_device_per_minute_without_polls
                .map(|v| format!("{v:.2}"))
                .unwrap_or_else(|| "n/a".into()),
            w.stats_polls
        );
    }
    if let Some(p) = w.per_join {
        let _ = writeln!(s, "  => {p:.1} commands per join ({} joins)", w.joins);
    }
    let top: Vec<String> = w
        .by_command
        .iter()
        .take(12)
        .map(|(c, n)| format!("{c}={n}"))
        .collect();
    let _ = writeln!(s, "  by command: {}", top.join(" "));
}

fn cpu_line(s: &mut String, what: &str, w: &CpuWindow, per: Option<(&str, u64)>) {
    let secs = |v: Option<f64>| {
        v.map(|v| format!("{v:.2} s"))
            .unwrap_or_else(|| "n/a".into())
    };
    let _ = write!(
        s,
        "CPU, {what} ({:.2} s wall): nodes {}, redis {}, load generator {}",
        w.seconds,
        secs(w.nodes),
        secs(w.redis),
        secs(w.loadgen)
    );
    if let (Some((unit, n)), Some(nodes)) = (per, w.nodes)
        && n > 0
    {
        let _ = write!(s, " => nodes {:.1} µs per {unit}", nodes * 1e6 / n as f64);
        if let Some(r) = w.redis {
            let _ = write!(s, ", redis {:.1} µs", r * 1e6 / n as f64);
        }
        if let Some(l) = w.loadgen {
            let _ = write!(s, ", load generator {:.1} µs", l * 1e6 / n as f64);
        }
    }
    let _ = writeln!(s);
}

fn render_surge(s: &mut String, g: &SurgeReport) {
    let _ = writeln!(
        s,
        "room {} via {}: capacity {}, admit/min {}, ttl {} s, {}, hold admitted {}+0..{} ms, tick {} ms",
        g.room,
        g.admin_target,
        g.capacity,
        opt(g.admit_per_minute),
        g.session_ttl_secs,
        g.state,
        g.hold_admitted_ms,
        g.hold_jitter_ms,
        g.admit_tick_ms
    );
    let j = &g.joins;
    let _ = writeln!(
        s,
        "joins: {} sent by {} devices, {} answered, refused: {}, unanswered {}",
        j.sent,
        g.devices_joining,
        j.answered,
        reasons(&j.refused),
        j.unanswered
    );
    let _ = writeln!(
        s,
        "join rate: {:.0} answered/s over {:.2} s (offered {:.0}/s, sent {:.0}/s)",
        j.rate_per_s, j.duration_s, g.join_rate_offered, j.sent_rate_per_s
    );
    let _ = writeln!(s, "join latency: {}", j.latency_ms.line());
    cpu_line(s, "join phase", &g.cpu_joins, Some(("join", j.answered)));
    if let Some(w) = &g.cpu_hold {
        cpu_line(s, "hold", w, None);
    }
    let o = &g.order;
    let _ = writeln!(
        s,
        "admission order (frame arrival times): {} inversions over {} ordered pairs ({} devices admitted early; tolerance {:.0} ms; max lag of an earlier joiner {:.3} ms)",
        o.inversions, o.pairs_checked, o.devices_admitted_early, o.tolerance_ms, o.max_lag_ms
    );
    match &g.audit {
        Some(a) if a.error.is_none() => {
            let _ = writeln!(
                s,
                "audit log (the store's order): {} — {} entries, {} admissions, {} inversions in {} pairs, Kendall tau {}, at most {} active",
                if a.verified { "VERIFIED" } else { "FAILED" },
                a.entries,
                a.admissions,
                a.inversions,
                a.pairs,
                a.kendall_tau
                    .map_or("n/a".to_owned(), |t| format!("{t:.6}")),
                a.max_active.map_or("?".to_owned(), |m| m.to_string()),
            );
            for p in &a.problems {
                let _ = writeln!(s, "  problem: {p}");
            }
        }
        Some(a) => {
            let _ = writeln!(
                s,
                "audit log: not verified ({})",
                a.error.as_deref().unwrap_or("")
            );
        }
        None => {}
    }
    let c = &g.capacity_check;
    let _ = writeln!(
        s,
        "capacity {}: max active polled {} ({} polls, {} failed), max held by devices {}{}",
        c.capacity,
        opt(c.max_active_polled),
        c.polls,
        c.poll_errors,
        c.max_held_by_devices,
        if c.exceeded { "  [EXCEEDED]" } else { "" }
    );
    let _ = writeln!(
        s,
        "admitted {}, released {}, extra admitted frames {}, queue frames after admission {}, dropped: {}{}",
        g.admitted,
        g.released,
        g.extra_admitted,
        g.queue_after_admitted,
        reasons(&g.dropped),
        match g.drained {
            Some(true) => "  (all admitted and released)",
            Some(false) => "  [drain timeout hit]",
            None => "",
        }
    );
    let f = &g.freshness;
    let _ = writeln!(
        s,
        "queue frame gaps, first 200 places: {}",
        f.gap_head_ms.line()
    );
    let _ = writeln!(
        s,
        "queue frame gaps, beyond place 200: {}",
        f.gap_far_ms.line()
    );
    let _ = writeln!(
        s,
        "admission batch -> device told (head): {}",
        f.news_head_ms.line()
    );
    let _ = writeln!(
        s,
        "admission batch -> device told (far):  {}",
        f.news_far_ms.line()
    );
    let _ = writeln!(
        s,
        "  {} batches, {} (batch, device) pairs untold before admission or end, guard {:.0} ms; last position before admission p50 {} p99 {} max {}",
        f.batches,
        f.untold,
        f.guard_ms,
        f.last_position_before_admission.p50,
        f.last_position_before_admission.p99,
        f.last_position_before_admission.max
    );
    let sf = &g.slot_free;
    let _ = writeln!(
        s,
        "release answered -> next admitted: {}",
        sf.done_to_admitted_ms.line()
    );
    let _ = writeln!(
        s,
        "release sent -> next admitted:     {}",
        sf.sent_to_admitted_ms.line()
    );
    let _ = writeln!(
        s,
        "  {} admitted before the release answer, {} releases with nobody waiting, {} unmatched, failed releases: {}",
        sf.admitted_before_answer,
        sf.queue_empty,
        sf.unmatched,
        reasons(&sf.failed)
    );
    if let Some(st) = &g.final_stats {
        let _ = writeln!(
            s,
            "room stats at the end: waiting {} (peak {}), active {}, admitted {}, abandoned {}",
            st.waiting, st.peak_waiting, st.active, st.admitted_total, st.abandoned_total
        );
    }
    if let Some(w) = &g.store_joins {
        store_line(s, "join phase", w);
    }
    if let Some(w) = &g.store_hold {
        store_line(s, "hold", w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_device_memory() {
        let before = [Some(10 * 1024 * 1024), Some(1024 * 1024)];
        let after = [
            Some(10 * 1024 * 1024 + 5 * 1024 * 1000),
            Some(1024 * 1024 + 5 * 1024 * 1000),
        ];
        assert_eq!(per_device_kib(&before, &after, 2000), Some(5.0));
        assert_eq!(per_device_kib(&before, &[Some(1), None], 10), None);
        assert_eq!(per_device_kib(&before, &after, 0), None);
        let shrank = per_device_kib(&[Some(2048)], &[Some(1024)], 1).unwrap();
        assert_eq!(shrank, -1.0);
    }

    #[test]
    fn cpu_per_delivery() {
        assert_eq!(us_per_delivery(Some(2.0), 200_000), Some(10.0));
        assert_eq!(us_per_delivery(Some(2.0), 0), None);
        assert_eq!(us_per_delivery(None, 10), None);
    }

    #[test]
    fn report_round_trips_and_renders() {
        let report = Report {
            scenario: "hold".into(),
            run_id: "r".into(),
            started_at_unix_ms: 1,
            targets: vec!["http://127.0.0.1:1".into()],
            devices: 2,
            processes: 1,
            source_ips: vec![],
            register: Some(RegisterReport {
                registered: 1,
                register_failed: 1,
                failures: [("http_409_device_exists".to_owned(), 1)].into(),
                duration_s: 0.1,
                rate_per_s: 10.0,
                latency_ms: Summary::from_micros(&mut [800]),
                rss_per_device_kib: None,
            }),
            connect: ConnectReport {
                attempted: 2,
                connected: 1,
                failed: 1,
                failures: [("connect_connection_refused".to_owned(), 1)].into(),
                duration_s: 0.5,
                rate_per_s: 2.0,
                latency_ms: Summary::from_micros(&mut [1_500]),
                connections_open_reported: Some(1),
                listen_overflows: Some(0),
            },
            memory: MemoryReport {
                source: Source::Proc,
                before_bytes: vec![Some(1 << 20)],
                after_bytes: vec![Some(2 << 20)],
                rss_per_device_kib: Some(1024.0),
            },
            hold: Some(HoldReport {
                seconds: 1.0,
                open_at_end: 1,
                dropped: 0,
            }),
            broadcast: None,
            surge: None,
            failover: None,
            overhead: None,
            close: CloseReport::default(),
            loadgen_cpu_seconds: 0.5,
        };
        let json = serde_json::to_string(&report).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back.connect.failures.get("connect_connection_refused"),
            Some(&1)
        );
        assert!(!json.contains("\"broadcast\""));
        let text = report.render();
        assert!(text.contains("1/2 connected"), "{text}");
        assert!(text.contains("1024.00 KiB per device"), "{text}");
        assert!(text.contains("connect_connection_refused=1"), "{text}");
        assert!(
            text.contains("register_failed 1 (http_409_device_exists=1)"),
            "{text}"
        );
        assert!(json.contains(r#""register_failed":1"#), "{json}");
    }
}
