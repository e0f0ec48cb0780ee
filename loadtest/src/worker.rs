//! The hidden `worker` subcommand: runs one share of the devices inside its
//! own process (its own open-files budget) and reports over stdout.
//!
//! Connections start at a paced rate with a bounded number of handshakes in
//! flight; each connected device then lives in its own task until the
//! coordinator says `finish` (or stdin closes, or the deadline passes), when
//! every device closes cleanly and the worker sends one `final` event with
//! all receive stamps.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::clock::unix_micros;
use crate::counting::ByteCounts;
use crate::device::{self, CloseOutcome, DeviceLog, Dial};
use crate::http::Http;
use crate::ipc::{
    self, MessageReceipts, MoreProgress, PollSpec, PollTotals, ReasonCounts, WorkerCommand,
    WorkerEvent, WorkerSpec,
};
use crate::poller::{self, Poller};
use crate::procstat;
use crate::register::{self, Pending, RegisterCounters};
use crate::surge_device::{self, Reconnect, Route, SurgeCounters, SurgePlan};

/// Counters the progress reporter reads while devices update them.
#[derive(Debug, Default)]
struct Counters {
    open: AtomicU64,
    failed: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
    surge: SurgeCounters,
    /// Bytes of every device WebSocket, at the socket.
    ws_bytes: Arc<ByteCounts>,
    /// Bytes of every status poller, at the socket (`overhead`).
    http_bytes: Arc<ByteCounts>,
    polls_ok: AtomicU64,
    polls_failed: AtomicU64,
    /// What the polls saw.
    polls: Mutex<PollTotals>,
    /// `--register`: registrations so far.
    register: Arc<RegisterCounters>,
}

/// Poll latencies kept per worker at most.
const MAX_POLL_SAMPLES: usize = 100_000;

/// Entry point of `pace-loadtest worker`: reads the spec from stdin, runs
/// it, reports on stdout.
pub async fn main() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = lines
        .next_line()
        .await
        .context("reading worker spec")?
        .context("no worker spec on stdin")?;
    let spec: WorkerSpec = serde_json::from_str(&first).context("parsing worker spec")?;
    match run(spec, lines).await {
        Ok(()) => Ok(()),
        Err(e) => {
            emit(&WorkerEvent::Fatal {
                message: format!("{e:#}"),
            });
            Err(e)
        }
    }
}

/// Writes one event line to stdout (the coordinator reads it).
fn emit(event: &WorkerEvent) {
    let Ok(mut line) = serde_json::to_string(event) else {
        return;
    };
    line.push('\n');
    let mut out = std::io::stdout().lock();
    // A closed stdout means the coordinator is gone; the deadline or stdin
    // EOF ends this worker soon after, so a failed write is not fatal.
    let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
}

async fn run(
    spec: WorkerSpec,
    mut commands: tokio::io::Lines<BufReader<tokio::io::Stdin>>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + Duration::from_millis(spec.deadline_ms);
    let mut addrs: Vec<SocketAddr> = Vec::with_capacity(spec.targets.len());
    for t in &spec.targets {
        addrs.push(t.resolve().await?);
    }
    let ws_urls: Vec<String> = spec.targets.iter().map(|t| t.ws_url()).collect();
    // Routes for `surge` devices: the targets, then the gateway they
    // reconnect through (`failover`), if any.
    let mut routes: Vec<Route> = spec
        .targets
        .iter()
        .zip(&addrs)
        .map(|(t, &addr)| Route {
            ws_url: t.ws_url(),
            addr,
            release_url: t.url("/api/v1/sessions/release"),
        })
        .collect();
    let reconnect_spec = spec.surge.as_ref().and_then(|s| s.reconnect.clone());
    let mut gateway_route = None;
    if let Some(g) = reconnect_spec.as_ref().and_then(|r| r.gateway.as_ref()) {
        gateway_route = Some(routes.len());
        routes.push(Route {
            ws_url: g.ws_url(),
            addr: g.resolve().await?,
            release_url: g.url("/api/v1/sessions/release"),
        });
    }
    let routes: Arc<[Route]> = Arc::from(routes);
    let run_id: Arc<str> = Arc::from(spec.run_id.as_str());
    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();

    // `surge`: the join schedule's start, set by the `join` command.
    let (start_tx, start_rx) = tokio::sync::watch::channel::<Option<Instant>>(None);
    // `--register`: the connect phase's start, set by the `connect` command.
    let (connect_tx, mut connect_rx) = tokio::sync::watch::channel::<Option<Instant>>(None);

    // Finish on command, on stdin EOF, or at the deadline — whichever first.
    let finish = CancellationToken::new();
    {
        let finish = finish.clone();
        tokio::spawn(async move {
            let wait_command = async {
                while let Ok(Some(line)) = commands.next_line().await {
                    match serde_json::from_str(&line) {
                        Ok(WorkerCommand::Finish) => return,
                        Ok(WorkerCommand::Join { start_at_us }) => {
                            let delay = start_at_us.saturating_sub(unix_micros());
                            let at = Instant::now() + Duration::from_micros(delay);
                            start_tx.send_replace(Some(at));
                        }
                        Ok(WorkerCommand::Connect { start_at_us }) => {
                            let delay = start_at_us.saturating_sub(unix_micros());
                            let at = Instant::now() + Duration::from_micros(delay);
                            connect_tx.send_replace(Some(at));
                        }
                        Err(_) => {}
                    }
                }
            };
            tokio::select! {
                () = wait_command => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
            finish.cancel();
        });
    }

    // Progress reporter.
    {
        let counters = counters.clone();
        let finish = finish.clone();
        let every = Duration::from_millis(spec.progress_interval_ms.max(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = finish.cancelled() => return,
                    _ = tick.tick() => emit(&progress(&counters)),
                }
            }
        });
    }

    // `--register`: register every device, report, wait for the go.
    let mut tokens: Vec<Option<String>> = Vec::new();
    let mut connect_start = started;
    if let Some(r) = &spec.register {
        let urls: Vec<Arc<str>> = spec
            .targets
            .iter()
            .map(|t| Arc::from(t.url("/api/v1/devices/register")))
            .collect();
        let pending = (0..spec.devices)
            .map(|j| {
                let i = spec.first_device + j;
                Pending {
                    device_id: device_id_of(&spec, i),
                    url: urls[(i % urls.len() as u64) as usize].clone(),
                }
            })
            .collect();
        let reg =
            register::register_all(&Http::new(), pending, r, &counters.register, &finish).await;
        emit(&progress(&counters));
        emit(&WorkerEvent::Registered {
            ok: reg.ok,
            failures: reg.failures,
            register_us: reg.register_us,
            first_attempt_us: reg.first_attempt_us,
            last_done_us: reg.last_done_us,
        });
        tokens = reg.tokens;
        let go = tokio::select! {
            v = connect_rx.wait_for(Option::is_some) => v.ok().and_then(|v| *v),
            () = finish.cancelled() => None,
        };
        if let Some(at) = go {
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                () = finish.cancelled() => {}
            }
        }
        connect_start = Instant::now();
    }

    // Connect phase: paced, bounded concurrency.
    let config = device::client_config(spec.read_buffer_bytes);
    let timeout = Duration::from_millis(spec.connect_timeout_ms);
    let gate = Arc::new(Semaphore::new(spec.connect_concurrency.max(1)));
    let rate = spec.connect_rate.max(1.0);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Result<Duration, String>>();
    let mut devices: JoinSet<Option<DeviceLog>> = JoinSet::new();
    let surge = match &spec.surge {
        Some(s) => {
            let room = pace_protocol::RoomId::parse(&s.room)
                .map_err(|e| anyhow::anyhow!("room {:?}: {e}", s.room))?;
            let join = pace_protocol::ClientFrame::Join { room };
            Some((
                s.clone(),
                Utf8Bytes::from(serde_json::to_string(&join)?),
                Http::new(),
            ))
        }
        None => None,
    };
    let first_attempt_us = unix_micros();
    let (mut launched, mut unregistered) = (0u64, 0u64);
    for j in 0..spec.devices {
        if finish.is_cancelled() {
            break;
        }
        // `--register`: a device without a token is not connected.
        let token = match &mut tokens[..] {
            [] => None,
            all => match all.get_mut(j as usize).and_then(Option::take) {
                Some(t) => Some(t),
                None => {
                    unregistered += 1;
                    continue;
                }
            },
        };
        let due = connect_start + Duration::from_secs_f64(launched as f64 / rate);
        tokio::select! {
            () = tokio::time::sleep_until(due) => {}
            () = finish.cancelled() => break,
        }
        let permit = tokio::select! {
            p = gate.clone().acquire_owned() => p.context("connect gate closed")?,
            () = finish.cancelled() => break,
        };
        let i = spec.first_device + j;
        let t = (i % spec.targets.len() as u64) as usize;
        let source = (!spec.source_ips.is_empty())
            .then(|| spec.source_ips[(i % spec.source_ips.len() as u64) as usize]);
        let device_id = device_id_of(&spec, i);
        let ws_url = ws_urls[t].clone();
        let addr = addrs[t];
        let host = format!("{}:{}", spec.targets[t].host, spec.targets[t].port);
        let transport = spec.transport;
        let plan = surge.as_ref().map(|(s, join_text, http)| SurgePlan {
            index: i,
            device_id: device_id.clone(),
            device_token: token.clone(),
            join_text: join_text.clone(),
            start: start_rx.clone(),
            offset: Duration::from_secs_f64(
                (j as f64 * s.processes.max(1) as f64 + spec.worker as f64)
                    / s.join_rate.max(0.001),
            ),
            hold_admitted: Duration::from_millis(s.hold_admitted_ms + spread(i, s.hold_jitter_ms)),
            routes: routes.clone(),
            route: t,
            release_timeout: Duration::from_millis(s.release_timeout_ms),
            http: http.clone(),
            reconnect: reconnect_spec.as_ref().map(|r| Reconnect {
                base: Duration::from_millis(r.base_ms.max(1)),
                max: Duration::from_millis(r.max_ms.max(r.base_ms).max(1)),
                within: Duration::from_millis(r.within_ms),
                gateway: gateway_route,
                targets: spec.targets.len(),
                device_id: device_id.clone(),
                token: token.clone(),
                source,
                config,
                timeout,
                counts: counters.ws_bytes.clone(),
            }),
        });
        // `overhead`: the device's status poller, started with it.
        let poll = match (&spec.surge, &plan) {
            (Some(s), Some(p)) => s.poll.clone().map(|ps| {
                let path = format!("/api/v1/rooms/{}/status?device_id={device_id}", s.room);
                let host = format!("{}:{}", spec.targets[t].host, spec.targets[t].port);
                let request = poller::status_request(&host, &path, ps.headers);
                // Polls of different devices spread over the interval, as
                // pages opened at different moments would.
                let phase = Duration::from_millis(spread(i, ps.interval_ms.saturating_sub(1)));
                (
                    ps,
                    Poller::new(addr, source, request, counters.http_bytes.clone()),
                    p.start.clone(),
                    p.offset + phase,
                )
            }),
            _ => None,
        };
        let (counters, stop, run_id, done_tx) = (
            counters.clone(),
            stop.clone(),
            run_id.clone(),
            done_tx.clone(),
        );
        launched += 1;
        devices.spawn(async move {
            let dial = Dial {
                device_id: &device_id,
                token: token.as_deref(),
                ws_url: &ws_url,
                addr,
                source,
                config,
                timeout,
                counts: counters.ws_bytes.clone(),
            };
            if transport == crate::ipc::Transport::Sse {
                let connected = crate::sse_device::connect(dial, &host).await;
                drop(permit);
                return match connected {
                    Ok((sse, latency)) => {
                        counters.open.fetch_add(1, Ordering::Relaxed);
                        let _ = done_tx.send(Ok(latency));
                        drop(done_tx);
                        let log =
                            crate::sse_device::run(sse, &run_id, stop, &counters.received).await;
                        counters.open.fetch_sub(1, Ordering::Relaxed);
                        if log.dropped.is_some() {
                            counters.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(log)
                    }
                    Err(reason) => {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                        let _ = done_tx.send(Err(reason));
                        None
                    }
                };
            }
            let connected = device::connect(dial).await;
            drop(permit);
            drop(token);
            match connected {
                Ok((ws, latency)) => {
                    counters.open.fetch_add(1, Ordering::Relaxed);
                    let _ = done_tx.send(Ok(latency));
                    drop(done_tx);
                    if let Some((ps, poller, start, offset)) = poll {
                        tokio::spawn(poll_status(
                            ps,
                            poller,
                            start,
                            offset,
                            stop.clone(),
                            counters.clone(),
                        ));
                    }
                    let log = match plan {
                        Some(plan) => surge_device::run(ws, plan, stop, &counters.surge).await,
                        None => device::run(ws, &run_id, stop, &counters.received).await,
                    };
                    counters.open.fetch_sub(1, Ordering::Relaxed);
                    if log.dropped.is_some() {
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(log)
                }
                Err(reason) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    let _ = done_tx.send(Err(reason));
                    None
                }
            }
        });
    }
    drop(done_tx);

    // Collect every attempt's outcome (all senders drop once each attempt ends).
    let mut ok = 0u64;
    let mut failures = ReasonCounts::new();
    let mut connect_us = Vec::with_capacity(launched as usize);
    let mut last_done_us = first_attempt_us;
    let mut outcomes = 0u64;
    while outcomes < launched {
        let outcome = tokio::select! {
            o = done_rx.recv() => o,
            () = finish.cancelled() => None,
        };
        let Some(outcome) = outcome else { break };
        outcomes += 1;
        last_done_us = unix_micros();
        match outcome {
            Ok(latency) => {
                ok += 1;
                connect_us.push(latency.as_micros() as u64);
            }
            Err(reason) => ipc::bump(&mut failures, &reason, 1),
        }
    }
    if outcomes < launched {
        ipc::bump(&mut failures, "unfinished_at_finish", launched - outcomes);
    }
    if unregistered > 0 {
        ipc::bump(&mut failures, "register_failed", unregistered);
    }
    if launched + unregistered < spec.devices {
        ipc::bump(
            &mut failures,
            "not_started",
            spec.devices - launched - unregistered,
        );
    }
    emit(&WorkerEvent::Connected {
        ok,
        failures,
        connect_us,
        first_attempt_us,
        last_done_us,
    });

    // Hold until finish, then close everything and report.
    finish.cancelled().await;
    stop.cancel();
    let mut receipts: Vec<Vec<u64>> = Vec::new();
    let (mut duplicates, mut foreign, mut error_frames) = (0, 0, 0);
    let (mut closed_clean, mut closed_no_reply, mut close_errors) = (0, 0, 0);
    let mut dropped = ReasonCounts::new();
    let mut surge_records = Vec::new();
    while let Some(joined) = devices.join_next().await {
        let log = match joined {
            Ok(Some(log)) => log,
            Ok(None) => continue, // never connected: counted in `connected`
            Err(_) => {
                ipc::bump(&mut dropped, "task_panicked", 1);
                continue;
            }
        };
        for (k, at) in log.receipts {
            let k = k as usize;
            if receipts.len() <= k {
                receipts.resize_with(k + 1, Vec::new);
            }
            receipts[k].push(at);
        }
        if let Some(rec) = log.surge {
            surge_records.push(rec);
        }
        duplicates += log.duplicates;
        foreign += log.foreign;
        error_frames += log.error_frames;
        match log.dropped {
            Some(reason) => ipc::bump(&mut dropped, &reason, 1),
            None => match log.close {
                CloseOutcome::Clean => closed_clean += 1,
                CloseOutcome::NoReply => closed_no_reply += 1,
                CloseOutcome::Failed => close_errors += 1,
            },
        }
    }
    let receipts = receipts
        .into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, recv_us)| MessageReceipts {
            k: k as u32,
            recv_us,
        })
        .collect();
    emit(&progress(&counters));
    emit(&WorkerEvent::Final {
        receipts,
        duplicates,
        foreign,
        error_frames,
        dropped,
        closed_clean,
        closed_no_reply,
        close_errors,
        cpu_seconds: procstat::cpu_time(std::process::id(), procstat::clock_ticks_per_sec())
            .map(|t| t.total().as_secs_f64())
            .unwrap_or(0.0),
        surge: surge_records,
        polls: spec
            .surge
            .as_ref()
            .and_then(|s| s.poll.as_ref())
            .map(|_| std::mem::take(&mut *lock(&counters.polls))),
    });
    Ok(())
}

/// Device `i`'s id: `{prefix}-{run}-{i}`.
fn device_id_of(spec: &WorkerSpec, i: u64) -> String {
    format!("{}-{}-{}", spec.device_prefix, spec.run_id, i)
}

/// A fixed pseudo-random value in `0..=max` for device `i` (SplitMix64):
/// the same run spreads the same way every time.
pub fn spread(i: u64, max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    z % (max + 1)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Polls one device's status every interval, from its join (plus the
/// spec's delay) until `stop`.
async fn poll_status(
    spec: PollSpec,
    mut poller: Poller,
    mut start: tokio::sync::watch::Receiver<Option<Instant>>,
    offset: Duration,
    stop: CancellationToken,
    counters: Arc<Counters>,
) {
    let at = tokio::select! {
        () = stop.cancelled() => return,
        v = start.wait_for(Option::is_some) => match v {
            Ok(v) => *v,
            Err(_) => None,
        },
    };
    let Some(at) = at else { return };
    let first = at + offset + Duration::from_millis(spec.delay_ms);
    let every = Duration::from_millis(spec.interval_ms.max(1));
    let budget = Duration::from_millis(spec.timeout_ms.max(1));
    let mut tick = tokio::time::interval_at(first, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut counted = 0;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let sent = Instant::now();
        let outcome = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            o = poller.poll(budget) => o,
        };
        let rtt = sent.elapsed().as_micros() as u64;
        let mut totals = lock(&counters.polls);
        totals.connects += poller.connects - counted;
        counted = poller.connects;
        match outcome {
            Ok(reply) if reply.status == 200 => {
                counters.polls_ok.fetch_add(1, Ordering::Relaxed);
                let waiting = serde_json::from_slice::<serde_json::Value>(&reply.body)
                    .ok()
                    .and_then(|v| {
                        v.get("status")
                            .and_then(|s| s.as_str().map(|s| s == "waiting"))
                    })
                    .unwrap_or(false);
                if waiting {
                    totals.waiting += 1;
                } else {
                    totals.other_status += 1;
                }
                if totals.latency_us.len() < MAX_POLL_SAMPLES {
                    totals.latency_us.push(rtt);
                }
            }
            Ok(reply) => {
                counters.polls_failed.fetch_add(1, Ordering::Relaxed);
                ipc::bump(&mut totals.failures, &format!("http_{}", reply.status), 1);
            }
            Err(reason) => {
                counters.polls_failed.fetch_add(1, Ordering::Relaxed);
                ipc::bump(&mut totals.failures, &reason, 1);
            }
        }
    }
}

fn progress(c: &Counters) -> WorkerEvent {
    WorkerEvent::Progress {
        open: c.open.load(Ordering::Relaxed),
        failed: c.failed.load(Ordering::Relaxed),
        received: c.received.load(Ordering::Relaxed),
        dropped: c.dropped.load(Ordering::Relaxed),
        joined: c.surge.joined.load(Ordering::Relaxed),
        join_failed: c.surge.join_failed.load(Ordering::Relaxed),
        admitted: c.surge.admitted.load(Ordering::Relaxed),
        released: c.surge.released.load(Ordering::Relaxed),
        more: {
            let (ws_rx, ws_tx) = c.ws_bytes.get();
            let (http_rx, http_tx) = c.http_bytes.get();
            MoreProgress {
                registered: c.register.registered.load(Ordering::Relaxed),
                register_failed: c.register.failed.load(Ordering::Relaxed),
                reconnecting: c.surge.reconnecting.load(Ordering::Relaxed),
                reconnected: c.surge.reconnected.load(Ordering::Relaxed),
                lost: c.surge.lost.load(Ordering::Relaxed),
                ws_rx,
                ws_tx,
                http_rx,
                http_tx,
                polls_ok: c.polls_ok.load(Ordering::Relaxed),
                polls_failed: c.polls_failed.load(Ordering::Relaxed),
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_fixed_bounded_and_spread_out() {
        assert_eq!(spread(5, 0), 0);
        assert_eq!(spread(5, 100), spread(5, 100));
        let values: Vec<u64> = (0..1_000).map(|i| spread(i, 99)).collect();
        assert!(values.iter().all(|&v| v <= 99));
        let low = values.iter().filter(|&&v| v < 50).count();
        assert!((400..600).contains(&low), "{low}");
    }
}
