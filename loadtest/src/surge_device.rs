//! One `surge` device: connected like any other device, it waits for the
//! run's join schedule, sends `join`, and records every `queue` frame and
//! the `admitted` frame with its receive instant. Once admitted it "uses"
//! its slot for `hold_admitted` and then releases it with
//! `POST /api/v1/sessions/release`, recording when the POST went out and
//! when its answer came back. It keeps reading (answering pings) until told
//! to stop, then closes cleanly.
//!
//! `failover` devices also come back when their connection drops: after a
//! backoff with full jitter (uniform in `0..min(max, base × 2^k)` before
//! attempt k) they connect again with the same device id — through the
//! gateway when there is one, else through the next target — for at most
//! `within` after the drop, and, if they had joined and not yet released,
//! join again. The server answers a rejoin with the place (same ticket) or
//! the session the device already had; what came back is recorded next to
//! what the device held when it dropped.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use pace_protocol::ServerFrame;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use crate::clock::unix_micros;
use crate::counting::ByteCounts;
use crate::device::{self, DeviceLog, Dial, Ws, ws_reason};
use crate::http::Http;
use crate::ipc::{ReconnectRecord, SurgeRecord};

/// Releases tried at most (on other routes after a transport failure).
const RELEASE_TRIES: usize = 3;

/// Counters the worker's progress reports read.
#[derive(Debug, Default)]
pub struct SurgeCounters {
    /// Joins answered with a place (or directly with an admission).
    pub joined: AtomicU64,
    /// Joins answered with an `error` frame.
    pub join_failed: AtomicU64,
    /// `admitted` frames (first per device).
    pub admitted: AtomicU64,
    /// Releases finished, successful or not.
    pub released: AtomicU64,
    /// Devices between a drop and the answer to their rejoin.
    pub reconnecting: AtomicU64,
    /// Successful reconnections.
    pub reconnected: AtomicU64,
    /// Devices that gave up reconnecting.
    pub lost: AtomicU64,
}

/// One way to reach the cluster: a target (or the gateway).
#[derive(Debug, Clone)]
pub struct Route {
    /// `ws://host:port/ws`.
    pub ws_url: String,
    /// Resolved address.
    pub addr: SocketAddr,
    /// `…/api/v1/sessions/release` there.
    pub release_url: String,
}

/// How a device comes back after a drop (`failover`).
#[derive(Debug, Clone)]
pub struct Reconnect {
    /// Backoff base.
    pub base: Duration,
    /// Backoff cap.
    pub max: Duration,
    /// Give up this long after the drop.
    pub within: Duration,
    /// Index of the gateway in the routes, if any.
    pub gateway: Option<usize>,
    /// Routes that are targets (the first `targets` routes).
    pub targets: usize,
    /// The device id (the same on every connection).
    pub device_id: String,
    /// Its device token (`--register`), presented on every connection.
    pub token: Option<String>,
    /// Source address to bind.
    pub source: Option<IpAddr>,
    /// WebSocket buffers and limits.
    pub config: WebSocketConfig,
    /// Budget of one connection attempt.
    pub timeout: Duration,
    /// Where the new connections' bytes are counted.
    pub counts: Arc<ByteCounts>,
}

impl Reconnect {
    /// The route of attempt `k` (1-based) of a device first on `first`.
    pub fn route(&self, first: usize, k: u32) -> usize {
        match self.gateway {
            Some(g) => g,
            None => (first + k as usize) % self.targets.max(1),
        }
    }

    /// The backoff before attempt `k` (0-based): uniform in
    /// `0..=min(max, base × 2^k)`, drawn from `seed`.
    pub fn backoff(&self, k: u32, seed: u64) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32 << k.min(20))
            .min(self.max)
            .as_micros() as u64;
        Duration::from_micros(crate::worker::spread(seed, cap))
    }
}

/// What one device does in the room.
#[derive(Debug, Clone)]
pub struct SurgePlan {
    /// Global device index.
    pub index: u64,
    /// The device id (sent with the release: a session is released by its
    /// own device).
    pub device_id: String,
    /// Its device token (`--register`): the release's credential.
    pub device_token: Option<String>,
    /// The `join` frame's text.
    pub join_text: Utf8Bytes,
    /// The schedule's start, set once by the coordinator's `join` command.
    pub start: watch::Receiver<Option<Instant>>,
    /// When, after the start, this device joins.
    pub offset: Duration,
    /// How long an admitted device keeps its slot.
    pub hold_admitted: Duration,
    /// Every route (targets, then the gateway if any).
    pub routes: Arc<[Route]>,
    /// The route of the first connection.
    pub route: usize,
    /// Budget of the release POST.
    pub release_timeout: Duration,
    /// The worker's HTTP client.
    pub http: Http,
    /// `failover`: come back after a drop.
    pub reconnect: Option<Reconnect>,
}

/// A device's state across its connections.
#[derive(Debug)]
struct State {
    rec: SurgeRecord,
    log: DeviceLog,
    /// The join is not written yet.
    join_pending: bool,
    /// Admission token whose release is due.
    token: Option<String>,
    /// Its release was answered (successfully or not).
    released: bool,
    /// Last position the device was told while waiting.
    last_position: Option<u64>,
    /// `rec.reconnects[k]` waits for the answer to its rejoin.
    rejoin: Option<usize>,
    /// The current connection's route.
    route: usize,
}

/// How one connection ended.
enum End {
    Stopped,
    Dropped(String),
}

/// Runs the device until `stop` (then closes) or until its connection ends
/// for good (without `reconnect`: the first drop). The log's `surge`
/// record is always set.
pub async fn run(
    mut ws: Ws,
    plan: SurgePlan,
    stop: CancellationToken,
    counters: &SurgeCounters,
) -> DeviceLog {
    let mut st = State {
        rec: SurgeRecord {
            i: plan.index,
            ..SurgeRecord::default()
        },
        log: DeviceLog::default(),
        join_pending: true,
        token: None,
        released: false,
        last_position: None,
        rejoin: None,
        route: plan.route,
    };
    let mut start = plan.start.clone();
    let offset = plan.offset;
    let join_due = async move {
        let at = match start.wait_for(Option::is_some).await {
            Ok(v) => *v,
            Err(_) => None,
        };
        match at {
            Some(at) => tokio::time::sleep_until(at + offset).await,
            // The worker is going away before the start: never join.
            None => std::future::pending::<()>().await,
        }
    };
    tokio::pin!(join_due);
    let release_due = tokio::time::sleep(Duration::from_secs(86_400 * 365));
    tokio::pin!(release_due);

    loop {
        let end = serve(
            &mut ws,
            &mut st,
            &plan,
            &stop,
            counters,
            join_due.as_mut(),
            release_due.as_mut(),
        )
        .await;
        let reason = match end {
            End::Stopped => {
                st.log.close = device::close(&mut ws).await;
                break;
            }
            End::Dropped(reason) => reason,
        };
        let Some(rc) = &plan.reconnect else {
            st.log.dropped = Some(reason);
            break;
        };
        if let Some(k) = st.rejoin.take() {
            // Dropped again before the rejoin was answered.
            st.rec.reconnects[k].answer = Some("dropped_again".to_owned());
            counters.reconnecting.fetch_sub(1, Ordering::Relaxed);
        }
        counters.reconnecting.fetch_add(1, Ordering::Relaxed);
        let admitted_held = st.rec.admitted_us.is_some() && !st.released;
        let k = st.rec.reconnects.len();
        st.rec.reconnects.push(ReconnectRecord {
            dropped_us: unix_micros(),
            reason: reason.clone(),
            position_before: if st.rec.admitted_us.is_none() {
                st.last_position
            } else {
                None
            },
            expires_before: if admitted_held {
                st.rec.expires_at
            } else {
                None
            },
            ..ReconnectRecord::default()
        });
        match come_back(rc, &plan, &stop, &mut st, k).await {
            Ok(new_ws) => {
                ws = new_ws;
                counters.reconnected.fetch_add(1, Ordering::Relaxed);
                let joined = st.rec.join_us.is_some() && st.rec.join_error.is_none();
                if joined && !st.released {
                    st.rec.reconnects[k].rejoin_us = Some(unix_micros());
                    if let Err(e) = ws.send(Message::Text(plan.join_text.clone())).await {
                        st.rec.reconnects[k].answer = Some("dropped_again".to_owned());
                        counters.reconnecting.fetch_sub(1, Ordering::Relaxed);
                        st.log.dropped = Some(ws_reason(&e));
                        break;
                    }
                    st.rejoin = Some(k);
                } else {
                    counters.reconnecting.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Err(None) => {
                // The run ended while the device was reconnecting.
                counters.reconnecting.fetch_sub(1, Ordering::Relaxed);
                st.log.dropped = Some(format!("stopped_reconnecting_{reason}"));
                break;
            }
            Err(Some(last)) => {
                counters.reconnecting.fetch_sub(1, Ordering::Relaxed);
                counters.lost.fetch_add(1, Ordering::Relaxed);
                st.rec.lost = Some(last);
                st.log.dropped = Some(format!("lost_{reason}"));
                break;
            }
        }
    }
    st.rec.dropped = st.log.dropped.clone();
    st.log.surge = Some(st.rec);
    st.log
}

/// Serves one connection until `stop` or until it ends.
async fn serve(
    ws: &mut Ws,
    st: &mut State,
    plan: &SurgePlan,
    stop: &CancellationToken,
    counters: &SurgeCounters,
    mut join_due: Pin<&mut impl std::future::Future<Output = ()>>,
    mut release_due: Pin<&mut Sleep>,
) -> End {
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return End::Stopped,
            () = &mut join_due, if st.join_pending => {
                st.join_pending = false;
                st.rec.join_us = Some(unix_micros());
                if let Err(e) = ws.send(Message::Text(plan.join_text.clone())).await {
                    return End::Dropped(ws_reason(&e));
                }
            }
            // Not while a rejoin is unanswered: releasing the session
            // before the node has processed the rejoin would turn the
            // rejoin into a fresh join (a new place), which is what the
            // device asked for but not what failover measures.
            () = &mut release_due, if st.token.is_some() && st.rejoin.is_none() => {
                if let Some(t) = st.token.take() {
                    release(plan, st.route, &t, &mut st.rec).await;
                    st.released = true;
                    counters.released.fetch_add(1, Ordering::Relaxed);
                }
            }
            next = ws.next() => match next {
                Some(Ok(Message::Text(text))) => {
                    let now = unix_micros();
                    if let Some(t) = on_text(text.as_str(), now, st, counters) {
                        st.token = Some(t);
                        release_due.as_mut().reset(Instant::now() + plan.hold_admitted);
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                    return End::Dropped(format!("closed_{code}"));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return End::Dropped(ws_reason(&e)),
                None => return End::Dropped("eof".to_owned()),
            },
        }
    }
}

/// Connects again after a drop, with backoff, within the bound. `Ok`: the
/// new connection (its welcome received); `Err(None)`: stopped meanwhile;
/// `Err(Some(reason))`: gave up.
async fn come_back(
    rc: &Reconnect,
    plan: &SurgePlan,
    stop: &CancellationToken,
    st: &mut State,
    k: usize,
) -> Result<Ws, Option<String>> {
    let deadline = Instant::now() + rc.within;
    let mut last = "no_attempt_in_time".to_owned();
    let mut attempt = 0u32;
    loop {
        let seed = plan.index ^ (u64::from(attempt) << 40) ^ unix_micros();
        let wake = Instant::now() + rc.backoff(attempt, seed);
        if wake >= deadline {
            return Err(Some(last));
        }
        tokio::select! {
            () = stop.cancelled() => return Err(None),
            () = tokio::time::sleep_until(wake) => {}
        }
        attempt += 1;
        let route = rc.route(plan.route, attempt);
        let Some(r) = plan.routes.get(route) else {
            return Err(Some("no_route".to_owned()));
        };
        let dial = Dial {
            device_id: &rc.device_id,
            token: rc.token.as_deref(),
            ws_url: &r.ws_url,
            addr: r.addr,
            source: rc.source,
            config: rc.config,
            timeout: rc
                .timeout
                .min(deadline.saturating_duration_since(Instant::now())),
            counts: rc.counts.clone(),
        };
        let outcome = tokio::select! {
            () = stop.cancelled() => return Err(None),
            o = device::connect(dial) => o,
        };
        let rec = &mut st.rec.reconnects[k];
        rec.attempts = attempt;
        match outcome {
            Ok((ws, _)) => {
                rec.welcome_us = Some(unix_micros());
                rec.route = Some(route);
                st.route = route;
                return Ok(ws);
            }
            Err(reason) => last = reason,
        }
    }
}

/// Records one text frame. Returns the token of a first admission (the
/// caller schedules its release).
fn on_text(text: &str, now_us: u64, st: &mut State, counters: &SurgeCounters) -> Option<String> {
    let Ok(frame) = serde_json::from_str::<ServerFrame>(text) else {
        st.log.foreign += 1;
        return None;
    };
    let rec = &mut st.rec;
    let answered = rec.first.is_some() || rec.admitted_us.is_some() || rec.join_error.is_some();
    // The answer to a rejoin after a reconnection: its first `queue`,
    // `admitted` or `error` frame.
    let is_answer = matches!(
        frame,
        ServerFrame::Queue(_) | ServerFrame::Admitted(_) | ServerFrame::Error { .. }
    );
    let rejoin = if is_answer { st.rejoin.take() } else { None };
    if rejoin.is_some() {
        counters.reconnecting.fetch_sub(1, Ordering::Relaxed);
    }
    match frame {
        ServerFrame::Queue(q) => {
            if let Some(k) = rejoin {
                let r = &mut rec.reconnects[k];
                r.answer_us = Some(now_us);
                r.answer = Some("queue".to_owned());
                r.position_after = Some(q.position);
            }
            if rec.first.is_none() && rec.join_error.is_none() {
                // The answer to the join (even if an admission overtook it).
                rec.first = Some([now_us, q.position, q.waiting_total]);
                if !answered {
                    counters.joined.fetch_add(1, Ordering::Relaxed);
                }
            } else if rec.admitted_us.is_none() {
                rec.queue.push([now_us, q.position]);
            } else {
                rec.queue_after_admitted += 1;
            }
            if rec.admitted_us.is_none() {
                st.last_position = Some(q.position);
            }
            None
        }
        ServerFrame::Admitted(a) => {
            if let Some(k) = rejoin {
                let r = &mut rec.reconnects[k];
                r.answer_us = Some(now_us);
                r.answer = Some("admitted".to_owned());
                r.expires_after = Some(a.expires_at);
                if rec.admitted_us.is_some() {
                    // The session it already had, announced again.
                    return None;
                }
            }
            if rec.admitted_us.is_some() {
                rec.extra_admitted += 1;
                return None;
            }
            rec.admitted_us = Some(now_us);
            rec.expires_at = Some(a.expires_at);
            if !answered {
                counters.joined.fetch_add(1, Ordering::Relaxed);
            }
            counters.admitted.fetch_add(1, Ordering::Relaxed);
            Some(a.token)
        }
        ServerFrame::Error { code, .. } => {
            if let Some(k) = rejoin {
                let r = &mut rec.reconnects[k];
                r.answer_us = Some(now_us);
                r.answer = Some(code.as_str().to_owned());
                st.log.error_frames += 1;
            } else if answered {
                st.log.error_frames += 1;
            } else {
                rec.join_error = Some(code.as_str().to_owned());
                counters.join_failed.fetch_add(1, Ordering::Relaxed);
            }
            None
        }
        _ => None,
    }
}

/// `POST /api/v1/sessions/release {"token"}`, recorded in `rec`: on the
/// device's current route first, then — after a transport failure (the
/// node died under it) — on the next routes.
async fn release(plan: &SurgePlan, route: usize, token: &str, rec: &mut SurgeRecord) {
    let body = serde_json::json!({ "token": token })
        .to_string()
        .into_bytes();
    rec.release_sent_us = Some(unix_micros());
    let tries = if plan.reconnect.is_some() {
        RELEASE_TRIES.min(plan.routes.len()).max(1)
    } else {
        1
    };
    let mut error = Some("no_route".to_owned());
    for t in 0..tries {
        let Some(r) = plan.routes.get((route + t) % plan.routes.len().max(1)) else {
            break;
        };
        let outcome = plan
            .http
            .post_json_as_device(
                &r.release_url,
                &plan.device_id,
                plan.device_token.as_deref(),
                body.clone(),
                plan.release_timeout,
            )
            .await;
        error = match outcome {
            Ok(reply) if reply.status == 200 => {
                let released = serde_json::from_slice::<serde_json::Value>(&reply.body)
                    .ok()
                    .and_then(|v| v.get("released").and_then(serde_json::Value::as_bool));
                match released {
                    Some(true) => None,
                    Some(false) => Some("not_released".to_owned()),
                    None => Some("unreadable_answer".to_owned()),
                }
            }
            Ok(reply) => Some(format!("http_{}", reply.status)),
            Err(e) if format!("{e:#}").contains("timed out") => Some("timeout".to_owned()),
            Err(_) => {
                error = Some("request_failed".to_owned());
                continue;
            }
        };
        break;
    }
    rec.release_done_us = Some(unix_micros());
    rec.release_error = error;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            rec: SurgeRecord::default(),
            log: DeviceLog::default(),
            join_pending: false,
            token: None,
            released: false,
            last_position: None,
            rejoin: None,
            route: 0,
        }
    }

    fn feed_into(st: &mut State, c: &SurgeCounters, frames: &[(u64, &str)]) -> Vec<String> {
        let mut tokens = Vec::new();
        for (at, f) in frames {
            if let Some(t) = on_text(f, *at, st, c) {
                tokens.push(t);
            }
        }
        tokens
    }

    fn feed(frames: &[(u64, &str)]) -> (SurgeRecord, DeviceLog, SurgeCounters, Vec<String>) {
        let mut st = state();
        let counters = SurgeCounters::default();
        let tokens = feed_into(&mut st, &counters, frames);
        (st.rec, st.log, counters, tokens)
    }

    const Q: &str =
        r#"{"type":"queue","room":"r","position":POS,"waiting_total":9,"state":"open"}"#;
    const A: &str = r#"{"type":"admitted","room":"r","token":"t.k.n","target_url":"https://x/in?pace_token=t.k.n","expires_at":99}"#;

    fn q(pos: u64) -> String {
        Q.replace("POS", &pos.to_string())
    }

    #[test]
    fn records_place_updates_and_admission() {
        let (q3, q2, q1) = (q(3), q(2), q(1));
        let (rec, log, c, tokens) = feed(&[(10, &q3), (20, &q2), (30, &q1), (40, A), (50, A)]);
        assert_eq!(rec.first, Some([10, 3, 9]));
        assert_eq!(rec.queue, vec![[20, 2], [30, 1]]);
        assert_eq!(rec.admitted_us, Some(40));
        assert_eq!(rec.expires_at, Some(99));
        assert_eq!(rec.extra_admitted, 1);
        assert_eq!(tokens, vec!["t.k.n".to_owned()]);
        assert_eq!(c.joined.load(Ordering::Relaxed), 1);
        assert_eq!(c.admitted.load(Ordering::Relaxed), 1);
        assert_eq!(log.foreign, 0);
    }

    #[test]
    fn admission_overtaking_the_join_answer_counts_one_join() {
        let q5 = q(5);
        let (rec, _, c, _) = feed(&[(10, A), (11, &q5)]);
        assert_eq!(rec.admitted_us, Some(10));
        assert_eq!(rec.first, Some([11, 5, 9]));
        assert_eq!(c.joined.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn refused_join_is_a_join_failure() {
        let (rec, log, c, _) = feed(&[(
            10,
            r#"{"type":"error","code":"no_such_room","message":"no room r"}"#,
        )]);
        assert_eq!(rec.join_error.as_deref(), Some("no_such_room"));
        assert_eq!(c.join_failed.load(Ordering::Relaxed), 1);
        assert_eq!(c.joined.load(Ordering::Relaxed), 0);
        assert_eq!(log.error_frames, 0);
    }

    #[test]
    fn rejoin_answers_are_recorded_not_counted_again() {
        let c = SurgeCounters::default();
        let mut st = state();
        let (q7, q4) = (q(7), q(4));
        feed_into(&mut st, &c, &[(10, &q7)]);
        assert_eq!(st.last_position, Some(7));
        // Dropped while waiting at 7; the rejoin is answered with 4.
        st.rec.reconnects.push(ReconnectRecord {
            position_before: st.last_position,
            ..ReconnectRecord::default()
        });
        st.rejoin = Some(0);
        c.reconnecting.store(1, Ordering::Relaxed);
        let pong = r#"{"type":"pong","id":1}"#;
        feed_into(&mut st, &c, &[(15, pong), (20, &q4)]);
        let r = &st.rec.reconnects[0];
        assert_eq!(r.answer.as_deref(), Some("queue"));
        assert_eq!((r.answer_us, r.position_after), (Some(20), Some(4)));
        assert_eq!(c.reconnecting.load(Ordering::Relaxed), 0);
        assert_eq!(c.joined.load(Ordering::Relaxed), 1);
        // Admitted, dropped, rejoined: the same session comes back; it is
        // neither a second admission nor a new token to release.
        let tokens = feed_into(&mut st, &c, &[(30, A)]);
        assert_eq!(tokens.len(), 1);
        st.rec.reconnects.push(ReconnectRecord {
            expires_before: st.rec.expires_at,
            ..ReconnectRecord::default()
        });
        st.rejoin = Some(1);
        c.reconnecting.store(1, Ordering::Relaxed);
        let tokens = feed_into(&mut st, &c, &[(40, A)]);
        assert!(tokens.is_empty());
        assert_eq!(st.rec.extra_admitted, 0);
        assert_eq!(st.rec.reconnects[1].expires_after, Some(99));
        assert_eq!(c.admitted.load(Ordering::Relaxed), 1);
        assert_eq!(c.reconnecting.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn backoff_is_full_jitter_under_a_growing_cap() {
        let rc = Reconnect {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
            within: Duration::from_secs(30),
            gateway: None,
            targets: 3,
            device_id: "d".into(),
            token: None,
            source: None,
            config: WebSocketConfig::default(),
            timeout: Duration::from_secs(1),
            counts: Arc::new(ByteCounts::default()),
        };
        for k in 0..8u32 {
            let cap = Duration::from_millis(100 * (1 << k)).min(Duration::from_secs(2));
            let draws: Vec<Duration> = (0..200).map(|s| rc.backoff(k, s)).collect();
            assert!(draws.iter().all(|d| *d <= cap), "k={k}");
            assert!(
                draws.iter().any(|d| *d < cap / 4),
                "k={k}: spread down to 0"
            );
            assert!(
                draws.iter().any(|d| *d > cap * 3 / 4),
                "k={k}: and up to the cap"
            );
        }
        // Next target after a drop; the gateway when there is one.
        assert_eq!((rc.route(1, 1), rc.route(1, 2), rc.route(1, 3)), (2, 0, 1));
        let via_gw = Reconnect {
            gateway: Some(3),
            ..rc
        };
        assert_eq!(via_gw.route(1, 1), 3);
    }
}
