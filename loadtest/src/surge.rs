//! The `surge` scenario: a crowd arrives at a waiting room.
//!
//! 1. The coordinator creates (PUTs) the room on `--admin-target`.
//! 2. The workers connect every device (the usual connect phase).
//! 3. On the coordinator's `join` command the devices join at
//!    `--join-rate` per second in total, interleaved over the workers. Each
//!    records its join instant, its answer (`queue` with its first
//!    position), every later `queue` frame and its `admitted` frame.
//! 4. Admitted devices keep their slot for `--hold-admitted` ms, then
//!    release it (`POST /api/v1/sessions/release`).
//! 5. After every join is answered the devices stay for `--hold` seconds
//!    (the window of the store-command count), then — in an open room with
//!    capacity — until every device was admitted and released, or
//!    `--drain-timeout`.
//!
//! All along the coordinator polls `GET /api/v1/rooms/{room}/stats` every
//! `--stats-interval-ms` (`active` must never exceed the capacity) and,
//! with `--redis`, reads `INFO commandstats` around the join phase and the
//! hold. What the records mean is computed by [`crate::surge_analysis`].
//!
//! [`crate::failover`] runs this same surge with a node killed in the
//! middle ([`run_with`] with a plan): devices then reconnect and rejoin,
//! and the stats are polled on whichever target still answers.

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::chart::Charts;
use crate::cli::{RoomStateArg, SurgeArgs};
use crate::clock::unix_micros;
use crate::connect::{self, secs};
use crate::failover::{self, FailoverPlan, FailoverReport};
use crate::http::Http;
use crate::ipc::{SurgeRecord, SurgeSpec, WorkerCommand};
use crate::nodes::{self, sum_all};
use crate::procstat::{self, CpuTimes};
use crate::redis_conn;
use crate::redis_info::{self, RedisSnapshot};
use crate::report::Report;
use crate::surge_analysis::{self as analysis, Freshness, Joins, Order, SlotFree};
use crate::target::Target;

/// Timeout of one admin request.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for workers to close every device and report.
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);
/// Budget of one release POST.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
/// Redis commands one stats poll costs the store (`HGETALL` of the config,
/// `EVALSHA` of stats.lua running `HMGET`, 2 `ZCARD`, `ZCOUNT`).
pub const COMMANDS_PER_STATS_POLL: u64 = 6;

/// `GET /api/v1/rooms/{room}/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RoomStats {
    /// Devices waiting.
    pub waiting: u64,
    /// Most devices ever waiting at once.
    pub peak_waiting: u64,
    /// Sessions holding a slot.
    pub active: u64,
    /// Admissions ever.
    pub admitted_total: u64,
    /// Places given up or swept.
    pub abandoned_total: u64,
    /// Admissions in the last 60 s.
    #[serde(default)]
    pub admissions_last_minute: u64,
}

/// One stats poll.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at_us: u64,
    stats: Option<RoomStats>,
}

/// The capacity invariant, seen two ways.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CapacityCheck {
    /// The room's capacity.
    pub capacity: u32,
    /// Highest `active` of every stats poll.
    pub max_active_polled: Option<u64>,
    /// Most sessions the devices held at once (admitted frame → release
    /// written): never more than the store held.
    pub max_held_by_devices: u64,
    /// Stats polls answered / failed.
    pub polls: u64,
    /// Failed polls.
    pub poll_errors: u64,
    /// Whether either view exceeded the capacity.
    pub exceeded: bool,
}

/// Store commands over one window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreWindow {
    /// Window length, seconds.
    pub seconds: f64,
    /// Every command Redis ran (scripts' inner commands included, `info`
    /// excluded).
    pub commands: u64,
    /// The same by command, largest first.
    pub by_command: Vec<(String, u64)>,
    /// `commands / minutes`.
    pub per_minute: f64,
    /// Mean `waiting` of the stats polls in the window.
    pub avg_waiting: f64,
    /// `per_minute / avg_waiting`.
    pub per_waiting_device_per_minute: Option<f64>,
    /// Stats polls in the window: `polls × 6` of the commands are the
    /// tool's own.
    pub stats_polls: u64,
    /// The same without the tool's polls.
    pub per_waiting_device_per_minute_without_polls: Option<f64>,
    /// Joins answered in the window, and commands per join.
    pub joins: u64,
    /// `commands / joins`.
    pub per_join: Option<f64>,
    /// Redis CPU (user + sys) in the window, seconds.
    pub redis_cpu_seconds: f64,
}

/// CPU used over one window of the run, seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuWindow {
    /// Wall-clock length.
    pub seconds: f64,
    /// All nodes (from `--node-pid`, else their `/metrics`).
    pub nodes: Option<f64>,
    /// The load generator's worker processes.
    pub loadgen: Option<f64>,
    /// Redis (with `--redis`).
    pub redis: Option<f64>,
}

/// Readings at one instant, to difference later.
#[derive(Debug, Clone)]
struct Mark {
    at_us: u64,
    nodes: Option<CpuTimes>,
    workers: Option<Duration>,
    redis: Option<RedisSnapshot>,
}

async fn mark(c: &connect::Connected, redis: Option<&str>) -> Mark {
    let ticks = procstat::clock_ticks_per_sec();
    let workers = c
        .fleet
        .pids()
        .into_iter()
        .map(|pid| procstat::cpu_time(pid, ticks).ok().map(CpuTimes::total))
        .collect::<Vec<_>>();
    Mark {
        at_us: unix_micros(),
        nodes: sum_all(&c.probe.cpu().await),
        workers: sum_all(&workers),
        redis: redis_snapshot(redis).await,
    }
}

fn cpu_window(a: &Mark, b: &Mark) -> CpuWindow {
    let diff = |x: Option<Duration>, y: Option<Duration>| match (x, y) {
        (Some(x), Some(y)) => Some(y.saturating_sub(x).as_secs_f64()),
        _ => None,
    };
    CpuWindow {
        seconds: b.at_us.saturating_sub(a.at_us) as f64 / 1e6,
        nodes: diff(a.nodes.map(CpuTimes::total), b.nodes.map(CpuTimes::total)),
        loadgen: diff(a.workers, b.workers),
        redis: match (&a.redis, &b.redis) {
            (Some(x), Some(y)) => Some((y.cpu_seconds - x.cpu_seconds).max(0.0)),
            _ => None,
        },
    }
}

/// The `surge` part of a report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SurgeReport {
    /// The room.
    pub room: String,
    /// Where it was created and polled.
    pub admin_target: String,
    /// Room capacity.
    pub capacity: u32,
    /// Room per-minute cap.
    pub admit_per_minute: Option<u32>,
    /// Session TTL, seconds.
    pub session_ttl_secs: u32,
    /// `open` or `paused`.
    pub state: String,
    /// Joins per second asked for.
    pub join_rate_offered: f64,
    /// Slot use before release, ms…
    pub hold_admitted_ms: u64,
    /// … plus up to this much per device, ms.
    #[serde(default)]
    pub hold_jitter_ms: u64,
    /// The nodes' admission tick as given, ms.
    pub admit_tick_ms: u64,
    /// Hold after the joins, seconds.
    pub hold_s: f64,
    /// Devices connected when the joins started.
    pub devices_joining: u64,
    /// Join rate and latency.
    pub joins: Joins,
    /// Admission order as the devices saw it (frame arrival times).
    pub order: Order,
    /// The room's audit log, verified: the admission order in the store
    /// (the ground truth for `order`); absent with `--audit-wait 0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<crate::audit_log::AuditVerdict>,
    /// Capacity never exceeded.
    pub capacity_check: CapacityCheck,
    /// Devices admitted.
    pub admitted: u64,
    /// Releases that succeeded.
    pub released: u64,
    /// `admitted` frames beyond the first per device (must be 0).
    pub extra_admitted: u64,
    /// `queue` frames after a device's admission.
    pub queue_after_admitted: u64,
    /// Devices whose connection ended before the finish, by reason.
    pub dropped: crate::ipc::ReasonCounts,
    /// Whether every joined device was admitted and released in time
    /// (open rooms with capacity only).
    pub drained: Option<bool>,
    /// Position freshness.
    pub freshness: Freshness,
    /// Release → next admission.
    pub slot_free: SlotFree,
    /// The room's stats at the end.
    pub final_stats: Option<RoomStats>,
    /// Store commands during the join phase.
    pub store_joins: Option<StoreWindow>,
    /// Store commands during the hold.
    pub store_hold: Option<StoreWindow>,
    /// CPU during the join phase (join command → every join answered).
    pub cpu_joins: CpuWindow,
    /// CPU during the hold.
    pub cpu_hold: Option<CpuWindow>,
}

/// Verifies the room's audit log once every admission and release the
/// devices saw is sealed (joins, admissions and ends: at least three
/// entries per device admitted and released, two per device admitted).
async fn audit_verdict(
    http: &Http,
    base: &str,
    room: &str,
    records: &[SurgeRecord],
    args: &SurgeArgs,
) -> Option<crate::audit_log::AuditVerdict> {
    if args.audit_wait == 0 {
        return None;
    }
    let admitted = records.iter().filter(|r| r.admitted_us.is_some()).count() as u64;
    let released = records
        .iter()
        .filter(|r| r.release_done_us.is_some() && r.release_error.is_none())
        .count() as u64;
    let want = 2 * admitted + released;
    let bin = crate::audit_log::verifier(args.verifier.as_deref());
    Some(
        crate::audit_log::verify(
            http,
            base,
            room,
            want,
            Duration::from_secs(args.audit_wait),
            &bin,
        )
        .await,
    )
}

/// The PUT body for the room.
pub fn room_body(args: &SurgeArgs) -> serde_json::Value {
    serde_json::json!({
        "capacity": args.capacity,
        "admit_per_minute": args.admit_per_minute,
        "session_ttl_secs": args.session_ttl,
        "target_url": args.target_url,
        "state": args.state.as_str(),
        "pow_difficulty": 0,
    })
}

async fn get_stats(http: &Http, url: &str, key: &str) -> anyhow::Result<RoomStats> {
    let reply = http.get_auth(url, key, ADMIN_TIMEOUT).await?;
    if reply.status != 200 {
        bail!("HTTP {}: {:.200}", reply.status, reply.text());
    }
    serde_json::from_slice(&reply.body).context("parsing room stats")
}

/// Polls the stats until cancelled, on `urls[0]`, moving on to the next
/// URL after a failure (`failover`: the admin node may be the one killed).
fn start_poller(
    http: Http,
    urls: Vec<String>,
    key: String,
    every: Duration,
    stop: CancellationToken,
) -> (Arc<Mutex<Vec<Sample>>>, tokio::task::JoinHandle<()>) {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let out = samples.clone();
    let handle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut at = 0;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let stats = get_stats(&http, &urls[at % urls.len()], &key).await.ok();
            if stats.is_none() {
                at += 1;
            }
            let sample = Sample {
                at_us: unix_micros(),
                stats,
            };
            out.lock().unwrap_or_else(|p| p.into_inner()).push(sample);
        }
    });
    (samples, handle)
}

async fn redis_snapshot(url: Option<&str>) -> Option<RedisSnapshot> {
    match redis_info::snapshot(url?).await {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("warning: reading redis INFO: {e:#}");
            None
        }
    }
}

/// Store commands between two snapshots.
fn store_window(
    before: &(u64, RedisSnapshot),
    after: &(u64, RedisSnapshot),
    samples: &[Sample],
    records: &[SurgeRecord],
) -> StoreWindow {
    let (t0, s0) = before;
    let (t1, s1) = after;
    let seconds = t1.saturating_sub(*t0) as f64 / 1e6;
    let calls = s1.calls_since(s0);
    let commands: u64 = calls.values().sum();
    let mut by_command: Vec<(String, u64)> = calls.into_iter().collect();
    by_command.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let in_window: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at_us >= *t0 && s.at_us <= *t1)
        .collect();
    let waiting: Vec<u64> = in_window
        .iter()
        .filter_map(|s| s.stats.map(|st| st.waiting))
        .collect();
    let avg_waiting = if waiting.is_empty() {
        0.0
    } else {
        waiting.iter().sum::<u64>() as f64 / waiting.len() as f64
    };
    let minutes = seconds / 60.0;
    let per_minute = if minutes > 0.0 {
        commands as f64 / minutes
    } else {
        0.0
    };
    let stats_polls = in_window.len() as u64;
    let own = (stats_polls * COMMANDS_PER_STATS_POLL).min(commands);
    let per_device =
        |c: u64| (avg_waiting >= 1.0 && minutes > 0.0).then(|| c as f64 / minutes / avg_waiting);
    let joins = records
        .iter()
        .filter_map(|r| r.first.map(|f| f[0]))
        .filter(|t| t >= t0 && t <= t1)
        .count() as u64;
    StoreWindow {
        seconds,
        commands,
        by_command,
        per_minute,
        avg_waiting,
        per_waiting_device_per_minute: per_device(commands),
        stats_polls,
        per_waiting_device_per_minute_without_polls: per_device(commands - own),
        joins,
        per_join: (joins > 0).then(|| commands as f64 / joins as f64),
        redis_cpu_seconds: (s1.cpu_seconds - s0.cpu_seconds).max(0.0),
    }
}

/// The room's stats from the first of `urls` that answers.
async fn get_stats_any(http: &Http, urls: &[String], key: &str) -> Option<RoomStats> {
    for url in urls {
        if let Ok(s) = get_stats(http, url, key).await {
            return Some(s);
        }
    }
    None
}

/// Runs `surge` and returns its report and charts.
pub async fn run(args: &SurgeArgs) -> anyhow::Result<(Report, Charts)> {
    run_with(args, None).await
}

/// Runs a surge; with a failover plan, kills the node during it and
/// reports the reconnections too.
pub async fn run_with(
    args: &SurgeArgs,
    failover: Option<&FailoverPlan>,
) -> anyhow::Result<(Report, Charts)> {
    if args.join_rate.is_nan() || args.join_rate <= 0.0 {
        bail!("--join-rate must be positive");
    }
    let admin = Target::parse(
        args.admin_target
            .as_deref()
            .unwrap_or(&args.fleet.targets[0]),
    )?;
    let redis_url = args.redis.as_deref().map(redis_conn::url).transpose()?;
    let run_id = connect::new_run_id();
    let room = args
        .room
        .clone()
        .unwrap_or_else(|| format!("surge-{run_id}"));
    if pace_protocol::RoomId::parse(&room).is_err() {
        bail!("--room {room:?} is not a valid room id");
    }

    // The room first: a refusal should not cost a connect phase.
    let http = Http::new();
    nodes::wait_ready(
        &http,
        std::slice::from_ref(&admin),
        secs(args.fleet.ready_timeout),
    )
    .await?;
    let room_url = admin.url(&format!("/api/v1/rooms/{room}"));
    let body = serde_json::to_vec(&room_body(args))?;
    let reply = http
        .put_json(&room_url, &args.service_key, body, ADMIN_TIMEOUT)
        .await?;
    if reply.status != 200 {
        bail!(
            "PUT {room_url}: HTTP {}: {:.300}",
            reply.status,
            reply.text()
        );
    }
    let stats_path = format!("/api/v1/rooms/{room}/stats");
    let stats_url = admin.url(&stats_path);
    // Where else the stats can be read when the admin node is gone.
    let mut stats_urls = vec![stats_url.clone()];
    if failover.is_some() {
        for t in &args.fleet.targets {
            let u = Target::parse(t)?.url(&stats_path);
            if !stats_urls.contains(&u) {
                stats_urls.push(u);
            }
        }
    }

    let join_time = secs(args.fleet.devices as f64 / args.join_rate);
    let join_timeout = secs(args.join_timeout);
    let drain = secs(args.drain_timeout);
    let hold = secs(args.hold_secs);
    let scenario_time = join_time + join_timeout + hold + drain + Duration::from_secs(30);
    let spec = SurgeSpec {
        room: room.clone(),
        join_rate: args.join_rate,
        processes: 0, // filled in by connect
        hold_admitted_ms: args.hold_admitted,
        hold_jitter_ms: args.hold_jitter,
        release_timeout_ms: RELEASE_TIMEOUT.as_millis() as u64,
        reconnect: failover.map(|f| f.reconnect.clone()),
        poll: None,
    };
    let scenario_time = scenario_time
        + failover.map_or(Duration::ZERO, |f| {
            f.kill_after + Duration::from_millis(f.reconnect.within_ms) + Duration::from_secs(10)
        });
    let mut c = connect::connect_with(&args.fleet, scenario_time, Some(spec), Some(run_id)).await?;
    c.fleet.sync()?;
    let devices_joining = c
        .run
        .connect
        .connected
        .saturating_sub(c.fleet.progress().dropped);

    let stop_polling = CancellationToken::new();
    let (samples, poller) = start_poller(
        http.clone(),
        stats_urls.clone(),
        args.service_key.clone(),
        Duration::from_millis(args.stats_interval_ms.max(10)),
        stop_polling.clone(),
    );

    let before_joins = mark(&c, redis_url.as_deref()).await;
    let start_at_us = unix_micros() + 200_000;
    eprintln!(
        "{devices_joining} devices join room {room} at {} joins/s (capacity {}, {}, hold admitted {}+0..{} ms)",
        args.join_rate,
        args.capacity,
        args.state.as_str(),
        args.hold_admitted,
        args.hold_jitter
    );
    c.fleet
        .command(&WorkerCommand::Join { start_at_us })
        .await?;
    let device_prefix = format!("{}-{}-", args.fleet.device_prefix, c.run.run_id);
    let killer =
        failover.map(|f| failover::spawn_kill(f, start_at_us, room.clone(), device_prefix.clone()));
    let all_answered = c
        .fleet
        .wait_for(join_time + join_timeout + Duration::from_millis(200), |p| {
            p.joined + p.join_failed >= devices_joining
        })
        .await?;
    let p = c.fleet.progress();
    eprintln!(
        "joins answered: {} placed, {} refused of {devices_joining}{}",
        p.joined,
        p.join_failed,
        if all_answered {
            ""
        } else {
            "  [join timeout hit]"
        }
    );
    let after_joins = mark(&c, redis_url.as_deref()).await;

    let mut after_hold = None;
    if !hold.is_zero() {
        eprintln!("holding {:.1} s", hold.as_secs_f64());
        c.fleet.follow(hold).await?;
        after_hold = Some(mark(&c, redis_url.as_deref()).await);
    }

    let aftermath = match (failover, killer) {
        (Some(f), Some(k)) => {
            Some(failover::await_aftermath(&mut c.fleet, k, f, &room, &device_prefix).await?)
        }
        _ => None,
    };

    let admits = args.state == RoomStateArg::Open && args.capacity > 0;
    let drained = if admits {
        let target = c.fleet.progress().joined;
        eprintln!(
            "waiting (at most {:.0} s) for {target} admissions and releases",
            drain.as_secs_f64()
        );
        let done = c
            .fleet
            .wait_for(drain, |p| p.released >= p.joined && p.admitted >= p.joined)
            .await?;
        Some(done)
    } else {
        None
    };
    let end_us = unix_micros();
    let final_stats = get_stats_any(&http, &stats_urls, &args.service_key).await;
    stop_polling.cancel();
    let _ = poller.await;
    let mut fin = c.fleet.finish(FINISH_TIMEOUT).await?;
    let samples: Vec<Sample> =
        std::mem::take(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()));

    let records = std::mem::take(&mut fin.surge);
    if let Some(path) = &args.records {
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        for r in &records {
            serde_json::to_writer(&mut out, r)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
    }

    let tick_us = args.admit_tick_ms * 1000;
    let guard_us = (tick_us / 4).min(25_000);
    let polled: Vec<RoomStats> = samples.iter().filter_map(|s| s.stats).collect();
    let max_active_polled = polled.iter().map(|s| s.active).max();
    let max_held = analysis::max_held(&records, end_us);
    let cap = u64::from(args.capacity);
    let capacity_check = CapacityCheck {
        capacity: args.capacity,
        max_active_polled,
        max_held_by_devices: max_held,
        polls: polled.len() as u64,
        poll_errors: (samples.len() - polled.len()) as u64,
        exceeded: max_active_polled.is_some_and(|m| m > cap) || max_held > cap,
    };
    let mut dropped = crate::ipc::ReasonCounts::new();
    for r in &records {
        if let Some(d) = &r.dropped {
            crate::ipc::bump(&mut dropped, d, 1);
        }
    }
    // A dropped device learns of an admission made while it was away
    // only when it rejoins: the order check covers the others.
    let undisrupted: Vec<SurgeRecord> = if failover.is_some() {
        records
            .iter()
            .filter(|r| r.reconnects.is_empty())
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    let undisrupted: &[SurgeRecord] = if failover.is_some() {
        &undisrupted
    } else {
        &records
    };
    let window = |a: &Mark, b: &Mark| match (&a.redis, &b.redis) {
        (Some(x), Some(y)) => Some(store_window(
            &(a.at_us, x.clone()),
            &(b.at_us, y.clone()),
            &samples,
            &records,
        )),
        _ => None,
    };
    let audit = audit_verdict(&http, &admin.base, &room, &records, args).await;
    let surge = SurgeReport {
        room,
        admin_target: admin.base.clone(),
        capacity: args.capacity,
        admit_per_minute: args.admit_per_minute,
        session_ttl_secs: args.session_ttl,
        state: args.state.as_str().to_owned(),
        join_rate_offered: args.join_rate,
        hold_admitted_ms: args.hold_admitted,
        hold_jitter_ms: args.hold_jitter,
        admit_tick_ms: args.admit_tick_ms,
        hold_s: hold.as_secs_f64(),
        devices_joining,
        joins: analysis::joins(&records),
        order: analysis::order(undisrupted, tick_us, end_us),
        audit,
        capacity_check,
        admitted: records.iter().filter(|r| r.admitted_us.is_some()).count() as u64,
        released: records
            .iter()
            .filter(|r| r.release_done_us.is_some() && r.release_error.is_none())
            .count() as u64,
        extra_admitted: records.iter().map(|r| r.extra_admitted).sum(),
        queue_after_admitted: records.iter().map(|r| r.queue_after_admitted).sum(),
        dropped,
        drained,
        freshness: analysis::freshness(&records, guard_us, end_us),
        slot_free: analysis::slot_free(&records, end_us),
        final_stats,
        store_joins: window(&before_joins, &after_joins),
        store_hold: after_hold.as_ref().and_then(|h| window(&after_joins, h)),
        cpu_joins: cpu_window(&before_joins, &after_joins),
        cpu_hold: after_hold.as_ref().map(|h| cpu_window(&after_joins, h)),
    };
    let over = max_active_polled
        .unwrap_or(0)
        .max(max_held)
        .saturating_sub(cap);
    let failover_report = match (failover, &aftermath) {
        (Some(f), Some(a)) => {
            let before_kill = samples
                .iter()
                .filter(|s| s.at_us <= a.kill.at_us)
                .filter_map(|s| s.stats)
                .next_back();
            Some(FailoverReport {
                killed_pid: f.pid,
                kill_after_s: f.kill_after.as_secs_f64(),
                killed_at_s: a.kill.at_us.saturating_sub(c.run.started_at_unix_ms * 1000) as f64
                    / 1e6,
                kill_error: a.kill.error.clone(),
                reconnect_via: match &f.gateway {
                    Some(g) => format!("gateway {}", g.base),
                    None => "the next target".to_owned(),
                },
                backoff_base_ms: f.reconnect.base_ms,
                backoff_max_ms: f.reconnect.max_ms,
                reconnect_within_s: f.reconnect.within_ms as f64 / 1000.0,
                waiting_at_kill: before_kill.map(|s| s.waiting),
                active_at_kill: before_kill.map(|s| s.active),
                settled: a.settled,
                reconnections: failover::reconnections(&records),
                tickets: failover::tickets_of(a, &records, &device_prefix),
                over_admissions: over,
                order_checked_devices: undisrupted.len() as u64,
            })
        }
        _ => None,
    };
    let scenario = if failover.is_some() {
        "failover"
    } else {
        "surge"
    };
    let charts = surge_charts(
        scenario,
        (&c.run.run_id, c.run.started_at_unix_ms, &c.connect_us),
        &records,
        &samples,
        &fin.timeline,
        aftermath.as_ref().map(|a| a.kill.at_us),
    );
    let report = Report {
        surge: Some(surge),
        failover: failover_report,
        ..Report::new(scenario, c.run, args.fleet.devices, &fin)
    };
    Ok((report, charts))
}

/// The charts of a surge (and of a failover: reconnection latencies and
/// the kill).
fn surge_charts(
    scenario: &str,
    (run_id, started_at_unix_ms, connect_us): (&str, u64, &[u64]),
    records: &[SurgeRecord],
    samples: &[Sample],
    timeline: &[(u64, crate::fleet::Progress)],
    killed_at_us: Option<u64>,
) -> Charts {
    let t0 = started_at_unix_ms * 1000;
    let mut charts = Charts::new(format!("pace-loadtest {scenario}, run {run_id}"), "devices");
    charts.right_label = "active sessions".into();
    charts.dist("connect (TCP connect → welcome)", connect_us.to_vec());
    let joins: Vec<u64> = records
        .iter()
        .filter(|r| r.join_error.is_none())
        .filter_map(|r| {
            let sent = r.join_us?;
            let answer = match (r.first.map(|f| f[0]), r.admitted_us) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b)?,
            };
            Some(answer.saturating_sub(sent))
        })
        .collect();
    charts.dist("join (join → answer)", joins);
    if killed_at_us.is_some() {
        let drops = records.iter().flat_map(|r| r.reconnects.iter());
        let (mut welcome, mut answer) = (Vec::new(), Vec::new());
        for d in drops {
            if let Some(w) = d.welcome_us {
                welcome.push(w.saturating_sub(d.dropped_us));
            }
            if let Some(a) = d.answer_us {
                answer.push(a.saturating_sub(d.dropped_us));
            }
        }
        charts.dist("reconnect (drop → welcome)", welcome);
        charts.dist("rejoin (drop → rejoin answered)", answer);
    }
    charts.progress_line("connections open", false, t0, timeline, |p| p.open as f64);
    let stat = |f: fn(&RoomStats) -> u64| -> Vec<(u64, f64)> {
        samples
            .iter()
            .filter_map(|s| s.stats.map(|st| (s.at_us, f(&st) as f64)))
            .collect()
    };
    charts.line("waiting (room stats)", false, t0, &stat(|s| s.waiting));
    charts.line(
        "active sessions (room stats)",
        true,
        t0,
        &stat(|s| s.active),
    );
    if let Some(at) = killed_at_us {
        charts.progress_line("reconnecting", false, t0, timeline, |p| {
            p.more.reconnecting as f64
        });
        charts.marker("node killed", t0, at);
    }
    charts
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn room_body_matches_the_api() {
        let cli = crate::cli::Cli::try_parse_from([
            "pace-loadtest",
            "surge",
            "--target",
            "http://127.0.0.1:1",
            "--service-key",
            "k",
            "--capacity",
            "10",
            "--session-ttl",
            "60",
        ])
        .unwrap();
        let crate::cli::Command::Surge(args) = cli.command else {
            panic!("not surge")
        };
        assert_eq!(
            room_body(&args),
            serde_json::json!({
                "capacity": 10, "admit_per_minute": null, "session_ttl_secs": 60,
                "target_url": "https://x.example/in", "state": "open", "pow_difficulty": 0
            })
        );
    }

    #[test]
    fn store_window_per_waiting_device() {
        let before = (
            0,
            RedisSnapshot {
                calls: [("evalsha".to_owned(), 10)].into(),
                cpu_seconds: 1.0,
            },
        );
        let after = (
            60_000_000,
            RedisSnapshot {
                calls: [("evalsha".to_owned(), 1_010), ("zrank".to_owned(), 36_000)].into(),
                cpu_seconds: 3.0,
            },
        );
        let stats = RoomStats {
            waiting: 1_000,
            ..RoomStats::default()
        };
        let samples = vec![
            Sample {
                at_us: 1,
                stats: Some(stats),
            },
            Sample {
                at_us: 2,
                stats: None,
            },
        ];
        let w = store_window(&before, &after, &samples, &[]);
        assert_eq!(w.commands, 37_000);
        assert_eq!(w.by_command[0], ("zrank".to_owned(), 36_000));
        assert_eq!(w.per_minute, 37_000.0);
        assert_eq!(w.avg_waiting, 1_000.0);
        assert_eq!(w.per_waiting_device_per_minute, Some(37.0));
        assert_eq!(w.stats_polls, 2);
        assert_eq!(w.per_waiting_device_per_minute_without_polls, Some(36.988));
        assert_eq!(w.redis_cpu_seconds, 2.0);
        assert_eq!(w.per_join, None);
    }
}
