//! `--register`: a worker's registration phase. Before connecting, every
//! device of the worker is registered on its target with `POST
//! /api/v1/devices/register` (a bounded number in flight, the whole phase
//! bounded in time), and keeps the device token it is given for its
//! handshakes (`Authorization: Bearer`).
//!
//! A failed registration is counted by reason (`http_409_device_exists`,
//! `timeout`, `request_failed`, `unreadable_answer`, `phase_timeout`, …),
//! never fatal: that device is simply not connected.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pace_protocol::ErrorBody;
use pace_protocol::rest::RegisterResponse;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::unix_micros;
use crate::http::{Http, Reply};
use crate::ipc::{self, ReasonCounts, RegisterSpec};

/// Largest registration answer read into a token.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// One device to register.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Its device id.
    pub device_id: String,
    /// `…/api/v1/devices/register` of its target.
    pub url: Arc<str>,
}

/// What a worker's registration phase produced.
#[derive(Debug, Default)]
pub struct Registration {
    /// `tokens[j]`: the token of the worker's `j`-th device, `None` when
    /// its registration failed or did not finish.
    pub tokens: Vec<Option<String>>,
    /// Devices registered.
    pub ok: u64,
    /// Failures by reason.
    pub failures: ReasonCounts,
    /// Latency of each successful registration, µs.
    pub register_us: Vec<u64>,
    /// Wall clock of the first request, µs since the epoch.
    pub first_attempt_us: u64,
    /// Wall clock of the last answer, µs since the epoch.
    pub last_done_us: u64,
}

/// Live counts of the phase, for the worker's progress events.
#[derive(Debug, Default)]
pub struct RegisterCounters {
    /// Devices registered so far.
    pub registered: AtomicU64,
    /// Registrations failed so far.
    pub failed: AtomicU64,
}

/// One registration's outcome: the token and the request's latency, or
/// the failure reason.
type Outcome = Result<(String, Duration), String>;

/// Registers every device of `devices` (bounded by `spec`), stopping
/// early if `finish` fires. Unfinished registrations count as
/// `phase_timeout` (or `unfinished_at_finish`).
pub async fn register_all(
    http: &Http,
    devices: Vec<Pending>,
    spec: &RegisterSpec,
    counters: &Arc<RegisterCounters>,
    finish: &CancellationToken,
) -> Registration {
    let n = devices.len();
    let deadline = Instant::now() + Duration::from_millis(spec.phase_timeout_ms);
    let request_timeout = Duration::from_millis(spec.request_timeout_ms.max(1));
    let gate = Arc::new(Semaphore::new(spec.concurrency.max(1)));
    let mut out = Registration {
        tokens: vec![None; n],
        first_attempt_us: unix_micros(),
        ..Registration::default()
    };
    out.last_done_us = out.first_attempt_us;
    let mut tasks: JoinSet<(usize, Outcome)> = JoinSet::new();
    let mut pending = devices.into_iter().enumerate();
    let mut stopped: Option<&'static str> = None;
    let (mut spawned, mut answered) = (0usize, 0usize);
    // Spawns under the gate, collects as answers come; ends when every
    // device is answered or when the deadline or the finish comes first.
    while answered < n {
        tokio::select! {
            biased;
            () = finish.cancelled() => {
                stopped = Some("unfinished_at_finish");
                break;
            }
            () = tokio::time::sleep_until(deadline) => {
                stopped = Some("phase_timeout");
                break;
            }
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                answered += 1;
                out.last_done_us = unix_micros();
                match joined {
                    Ok((j, Ok((token, latency)))) => {
                        out.ok += 1;
                        out.register_us.push(latency.as_micros() as u64);
                        out.tokens[j] = Some(token);
                        counters.registered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((_, Err(reason))) => {
                        ipc::bump(&mut out.failures, &reason, 1);
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        ipc::bump(&mut out.failures, "task_panicked", 1);
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            permit = gate.clone().acquire_owned(), if spawned < n => {
                let Ok(permit) = permit else { break };
                let Some((j, device)) = pending.next() else { break };
                spawned += 1;
                let http = http.clone();
                tasks.spawn(async move {
                    let outcome = register_one(&http, &device, request_timeout).await;
                    drop(permit);
                    (j, outcome)
                });
            }
        }
    }
    tasks.abort_all();
    if let Some(reason) = stopped {
        let unanswered = (n - answered) as u64;
        if unanswered > 0 {
            ipc::bump(&mut out.failures, reason, unanswered);
            counters.failed.fetch_add(unanswered, Ordering::Relaxed);
        }
    }
    out
}

/// One registration: the token and the request's latency, or a reason.
async fn register_one(http: &Http, device: &Pending, timeout: Duration) -> Outcome {
    let body = serde_json::json!({ "device_id": device.device_id }).to_string();
    let sent = Instant::now();
    // The client's own timeout is a backstop; this one names the reason.
    let exchange = http.post_json_plain(&device.url, body.into_bytes(), timeout * 2);
    let reply = match tokio::time::timeout(timeout, exchange).await {
        Err(_) => return Err("timeout".to_owned()),
        Ok(Err(_)) => return Err("request_failed".to_owned()),
        Ok(Ok(reply)) => reply,
    };
    let latency = sent.elapsed();
    token_of(&reply).map(|token| (token, latency))
}

/// The token of a registration answer, or the reason there is none:
/// `http_STATUS[_code]` for a refusal, `unreadable_answer` for a 2xx
/// without a usable token.
pub fn token_of(reply: &Reply) -> Result<String, String> {
    if !(200..300).contains(&reply.status) {
        let code = serde_json::from_slice::<ErrorBody>(&reply.body)
            .map(|b| format!("_{}", b.error.code.as_str()))
            .unwrap_or_default();
        return Err(format!("http_{}{code}", reply.status));
    }
    match serde_json::from_slice::<RegisterResponse>(&reply.body) {
        Ok(a) if !a.token.is_empty() && a.token.len() <= MAX_TOKEN_BYTES => Ok(a.token),
        _ => Err("unreadable_answer".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn tokens_and_refusals() {
        assert_eq!(
            token_of(&reply(
                201,
                r#"{"device_id":"d","token":"a.b.c","expires_at":5}"#
            )),
            Ok("a.b.c".to_owned())
        );
        assert_eq!(
            token_of(&reply(
                409,
                r#"{"error":{"code":"device_exists","message":"m","retryable":false}}"#
            )),
            Err("http_409_device_exists".to_owned())
        );
        assert_eq!(
            token_of(&reply(502, "bad gateway")),
            Err("http_502".to_owned())
        );
        assert_eq!(
            token_of(&reply(201, r#"{"token":""}"#)),
            Err("unreadable_answer".to_owned())
        );
        assert_eq!(
            token_of(&reply(201, "not json")),
            Err("unreadable_answer".to_owned())
        );
    }
}
