//! One `surge` device: connected like any other device, it waits for the
//! run's join schedule, sends `join`, and records every `queue` frame and
//! the `admitted` frame with its receive instant. Once admitted it "uses"
//! its slot for `hold_admitted` and then releases it with
//! `POST /api/v1/sessions/release`, recording when the POST went out and
//! when its answer came back. It keeps reading (answering pings) until told
//! to stop, then closes cleanly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use pace_protocol::ServerFrame;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use crate::clock::unix_micros;
use crate::device::{self, DeviceLog, Ws, ws_reason};
use crate::http::Http;
use crate::ipc::SurgeRecord;

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
}

/// What one device does in the room.
#[derive(Debug, Clone)]
pub struct SurgePlan {
    /// Global device index.
    pub index: u64,
    /// The `join` frame's text.
    pub join_text: Utf8Bytes,
    /// The schedule's start, set once by the coordinator's `join` command.
    pub start: watch::Receiver<Option<Instant>>,
    /// When, after the start, this device joins.
    pub offset: Duration,
    /// How long an admitted device keeps its slot.
    pub hold_admitted: Duration,
    /// `…/api/v1/sessions/release` on the device's target.
    pub release_url: String,
    /// Budget of the release POST.
    pub release_timeout: Duration,
    /// The worker's HTTP client.
    pub http: Http,
}

/// Runs the device until `stop` (then closes) or until the node ends the
/// connection. The log's `surge` record is always set.
pub async fn run(
    mut ws: Ws,
    plan: SurgePlan,
    stop: CancellationToken,
    counters: &SurgeCounters,
) -> DeviceLog {
    let mut log = DeviceLog::default();
    let mut rec = SurgeRecord {
        i: plan.index,
        ..SurgeRecord::default()
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
    let mut join_pending = true;
    let release_due = tokio::time::sleep(Duration::from_secs(86_400 * 365));
    tokio::pin!(release_due);
    let mut token: Option<String> = None;

    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => {
                log.close = device::close(&mut ws).await;
                break;
            }
            () = &mut join_due, if join_pending => {
                join_pending = false;
                rec.join_us = Some(unix_micros());
                if let Err(e) = ws.send(Message::Text(plan.join_text.clone())).await {
                    log.dropped = Some(ws_reason(&e));
                    break;
                }
            }
            () = &mut release_due, if token.is_some() => {
                if let Some(t) = token.take() {
                    release(&plan, &t, &mut rec).await;
                    counters.released.fetch_add(1, Ordering::Relaxed);
                }
            }
            next = ws.next() => match next {
                Some(Ok(Message::Text(text))) => {
                    let now = unix_micros();
                    if let Some(t) = on_text(text.as_str(), now, &mut rec, &mut log, counters) {
                        token = Some(t);
                        release_due.as_mut().reset(Instant::now() + plan.hold_admitted);
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                    log.dropped = Some(format!("closed_{code}"));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    log.dropped = Some(ws_reason(&e));
                    break;
                }
                None => {
                    log.dropped = Some("eof".to_owned());
                    break;
                }
            },
        }
    }
    rec.dropped = log.dropped.clone();
    log.surge = Some(rec);
    log
}

/// Records one text frame. Returns the token of a first admission (the
/// caller schedules its release).
fn on_text(
    text: &str,
    now_us: u64,
    rec: &mut SurgeRecord,
    log: &mut DeviceLog,
    counters: &SurgeCounters,
) -> Option<String> {
    let Ok(frame) = serde_json::from_str::<ServerFrame>(text) else {
        log.foreign += 1;
        return None;
    };
    let answered = rec.first.is_some() || rec.admitted_us.is_some() || rec.join_error.is_some();
    match frame {
        ServerFrame::Queue(q) => {
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
            None
        }
        ServerFrame::Admitted(a) => {
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
            if answered {
                log.error_frames += 1;
            } else {
                rec.join_error = Some(code.as_str().to_owned());
                counters.join_failed.fetch_add(1, Ordering::Relaxed);
            }
            None
        }
        _ => None,
    }
}

/// `POST /api/v1/sessions/release {"token"}`, recorded in `rec`.
async fn release(plan: &SurgePlan, token: &str, rec: &mut SurgeRecord) {
    let body = serde_json::json!({ "token": token })
        .to_string()
        .into_bytes();
    rec.release_sent_us = Some(unix_micros());
    let outcome = plan
        .http
        .post_json_plain(&plan.release_url, body, plan.release_timeout)
        .await;
    rec.release_done_us = Some(unix_micros());
    rec.release_error = match outcome {
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
        Err(_) => Some("request_failed".to_owned()),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(frames: &[(u64, &str)]) -> (SurgeRecord, DeviceLog, SurgeCounters, Vec<String>) {
        let mut rec = SurgeRecord::default();
        let mut log = DeviceLog::default();
        let counters = SurgeCounters::default();
        let mut tokens = Vec::new();
        for (at, f) in frames {
            if let Some(t) = on_text(f, *at, &mut rec, &mut log, &counters) {
                tokens.push(t);
            }
        }
        (rec, log, counters, tokens)
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
}
