//! The `broadcast` scenario: connect N devices, POST K notifications of
//! scope `all` to one target, and measure how fast and how completely they
//! reach every device, and what each delivery costs the nodes in CPU.
//!
//! Each notification's `data` carries the run id and its index `k`, so a
//! device can tell this run's messages (and duplicates) apart without any
//! lookup. Latency is the device's receive instant minus the coordinator's
//! instant just before it wrote the POST, both wall-clock µs on the same
//! machine.

use std::time::{Duration, Instant};

use anyhow::Context;
use pace_protocol::{EventName, NotifyRequest, Scope};

use crate::chart::Charts;
use crate::cli::BroadcastArgs;
use crate::clock::unix_micros;
use crate::connect::{self, secs};
use crate::fleet::FinalPhase;
use crate::ipc::{self, ReasonCounts};
use crate::nodes::{Source, sum_all};
use crate::procstat::CpuTimes;
use crate::report::{BroadcastReport, CpuReport, Report, us_per_delivery};
use crate::stats::Summary;
use crate::target::Target;

/// Event name of load-test notifications.
pub const EVENT: &str = "loadtest";
/// Timeout of one POST.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for workers to close every device and report.
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);

/// The JSON body of notification `k` of run `run_id`.
pub fn notify_body(run_id: &str, k: u32, payload_bytes: usize) -> anyhow::Result<Vec<u8>> {
    let mut data = serde_json::json!({ "run": run_id, "k": k });
    if payload_bytes > 0 {
        data["pad"] = serde_json::Value::String("x".repeat(payload_bytes));
    }
    let request = NotifyRequest {
        scope: Scope::All,
        target: None,
        event: EventName::parse(EVENT).context("event name")?,
        data,
    };
    Ok(serde_json::to_vec(&request)?)
}

/// Delivery figures computed from the send instants and the receipts.
#[derive(Debug, Clone, PartialEq)]
pub struct Deliveries {
    /// Distinct receipts of accepted messages.
    pub received: u64,
    /// Receipts of messages whose POST did not succeed.
    pub unexpected: u64,
    /// Receive − send, per receipt.
    pub latency: Summary,
    /// Per message, last receive − send.
    pub time_to_last: Summary,
    /// Accepted messages that fewer than `devices` devices received.
    pub incomplete: u64,
}

/// Computes [`Deliveries`]: `sent_us[k]` is the send instant of message `k`
/// (`None` if its POST failed), `recv_us[k]` its receive instants.
pub fn deliveries(sent_us: &[Option<u64>], recv_us: &[Vec<u64>], devices: u64) -> Deliveries {
    let mut latencies = Vec::new();
    let mut to_last = Vec::new();
    let (mut received, mut unexpected, mut incomplete) = (0u64, 0u64, 0u64);
    let empty = Vec::new();
    for k in 0..sent_us.len().max(recv_us.len()) {
        let recvs = recv_us.get(k).unwrap_or(&empty);
        match sent_us.get(k).copied().flatten() {
            Some(sent) => {
                received += recvs.len() as u64;
                latencies.extend(recvs.iter().map(|&r| r.saturating_sub(sent)));
                if let Some(&last) = recvs.iter().max() {
                    to_last.push(last.saturating_sub(sent));
                }
                if (recvs.len() as u64) < devices {
                    incomplete += 1;
                }
            }
            None => unexpected += recvs.len() as u64,
        }
    }
    Deliveries {
        received,
        unexpected,
        latency: Summary::from_micros(&mut latencies),
        time_to_last: Summary::from_micros(&mut to_last),
        incomplete,
    }
}

/// Runs `broadcast` and returns its report and charts.
pub async fn run(args: &BroadcastArgs) -> anyhow::Result<(Report, Charts)> {
    let notify_target = Target::parse(
        args.notify_target
            .as_deref()
            .unwrap_or(&args.fleet.targets[0]),
    )?;
    let send_time =
        Duration::from_millis(args.interval_ms.saturating_mul(u64::from(args.messages)));
    let drain = secs(args.drain_timeout);
    let scenario_time = send_time + drain + POST_TIMEOUT;
    let mut c = connect::connect(&args.fleet, scenario_time).await?;

    // Bodies are built up front so the send instant is just the send.
    let bodies = (0..args.messages)
        .map(|k| notify_body(&c.run.run_id, k, args.payload_bytes))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let url = notify_target.url("/api/v1/notify");
    // Connected minus those dropped since: exact even if a progress report
    // is still in flight.
    c.fleet.sync()?;
    let devices_at_send = c
        .run
        .connect
        .connected
        .saturating_sub(c.fleet.progress().dropped);
    eprintln!(
        "connected {}/{}; sending {} notifications to {url} every {} ms",
        devices_at_send, args.fleet.devices, args.messages, args.interval_ms
    );

    let cpu_before = c.probe.cpu().await;
    let start = Instant::now();
    let mut sent_us: Vec<Option<u64>> = vec![None; args.messages as usize];
    let mut ack_us = Vec::with_capacity(args.messages as usize);
    let mut post_failures = ReasonCounts::new();
    let mut accepted = 0u32;
    for (k, body) in bodies.into_iter().enumerate() {
        let due = start + Duration::from_millis(args.interval_ms * k as u64);
        tokio::time::sleep_until(due.into()).await;
        let at = unix_micros();
        let t0 = Instant::now();
        match c
            .http
            .post_json(&url, &args.service_key, body, POST_TIMEOUT)
            .await
        {
            Ok(reply) if reply.status == 202 => {
                ack_us.push(t0.elapsed().as_micros() as u64);
                sent_us[k] = Some(at);
                accepted += 1;
            }
            Ok(reply) => {
                eprintln!("POST {k}: HTTP {}: {:.200}", reply.status, reply.text());
                ipc::bump(&mut post_failures, &format!("http_{}", reply.status), 1);
            }
            Err(e) => {
                eprintln!("POST {k}: {e:#}");
                ipc::bump(&mut post_failures, "request_failed", 1);
            }
        }
    }

    let expected = devices_at_send * u64::from(accepted);
    let drained = c.fleet.wait_for(drain, |p| p.received >= expected).await?;
    let cpu_after = c.probe.cpu().await;
    let fin: FinalPhase = c.fleet.finish(FINISH_TIMEOUT).await?;

    let d = deliveries(&sent_us, &fin.recv_us, devices_at_send);
    let cpu = match (sum_all(&cpu_before), sum_all(&cpu_after)) {
        (Some(b), Some(a)) => Some(a.since(b)),
        _ => None,
    };
    let cpu_seconds = cpu.map(|t| t.total().as_secs_f64());
    let split = |f: fn(&CpuTimes) -> Duration| {
        cpu.filter(|_| c.probe.source() == Source::Proc)
            .map(|t| f(&t).as_secs_f64())
    };
    let (user_seconds, system_seconds) = (split(|t| t.user), split(|t| t.system));
    let all_receipts = d.received + d.unexpected;
    let t0 = c.run.started_at_unix_ms * 1000;
    let mut charts = Charts::new(
        format!("pace-loadtest broadcast, run {}", c.run.run_id),
        "devices",
    );
    charts.dist("connect (TCP connect → welcome)", c.connect_us.clone());
    let mut delivery_us = Vec::new();
    for (k, recvs) in fin.recv_us.iter().enumerate() {
        if let Some(Some(sent)) = sent_us.get(k) {
            delivery_us.extend(recvs.iter().map(|&r| r.saturating_sub(*sent)));
        }
    }
    charts.dist("delivery (POST → device)", delivery_us);
    charts.progress_line("connections open", false, t0, &fin.timeline, |p| {
        p.open as f64
    });
    charts.right_label = "notifications received".into();
    charts.progress_line("notifications received", true, t0, &fin.timeline, |p| {
        p.received as f64
    });
    if let Some(at) = sent_us.iter().flatten().next() {
        charts.marker("first POST", t0, *at);
    }
    let broadcast = BroadcastReport {
        messages: args.messages,
        accepted,
        post_failures,
        interval_ms: args.interval_ms,
        notify_target: notify_target.base.clone(),
        devices_at_send,
        expected,
        received: d.received,
        lost: expected.saturating_sub(d.received),
        duplicates: fin.duplicates,
        foreign: fin.foreign + d.unexpected,
        error_frames: fin.error_frames,
        drained,
        latency_ms: d.latency,
        time_to_last_device_ms: d.time_to_last,
        incomplete_messages: d.incomplete,
        post_ack_ms: Summary::from_micros(&mut ack_us),
        cpu: CpuReport {
            source: c.probe.source(),
            cpu_seconds,
            deliveries: all_receipts,
            us_per_delivery: us_per_delivery(cpu_seconds, all_receipts),
            user_us_per_delivery: us_per_delivery(user_seconds, all_receipts),
            system_us_per_delivery: us_per_delivery(system_seconds, all_receipts),
        },
    };
    let report = Report {
        broadcast: Some(broadcast),
        ..Report::new("broadcast", c.run, args.fleet.devices, &fin)
    };
    Ok((report, charts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_a_valid_notify_request() {
        let body = notify_body("abc", 7, 3).unwrap();
        let parsed: NotifyRequest = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed.scope, Scope::All);
        assert_eq!(parsed.target, None);
        assert_eq!(parsed.event.as_str(), EVENT);
        assert_eq!(
            parsed.data,
            serde_json::json!({"run": "abc", "k": 7, "pad": "xxx"})
        );
        let plain: serde_json::Value =
            serde_json::from_slice(&notify_body("abc", 0, 0).unwrap()).unwrap();
        assert_eq!(
            plain,
            serde_json::json!({"scope": "all", "event": "loadtest", "data": {"run": "abc", "k": 0}})
        );
    }

    #[test]
    fn deliveries_latency_and_time_to_last() {
        // Two messages, three devices. Message 1 reached only two devices.
        let sent = [Some(1_000_000), Some(2_000_000)];
        let recv = vec![
            vec![1_001_000, 1_002_000, 1_010_000],
            vec![2_000_500, 2_003_000],
        ];
        let d = deliveries(&sent, &recv, 3);
        assert_eq!(d.received, 5);
        assert_eq!(d.unexpected, 0);
        assert_eq!(d.incomplete, 1);
        assert_eq!(d.latency.count, 5);
        assert_eq!(d.latency.min, 0.5);
        assert_eq!(d.latency.p50, 2.0);
        assert_eq!(d.latency.max, 10.0);
        assert_eq!(d.time_to_last.count, 2);
        assert_eq!(d.time_to_last.p50, 3.0);
        assert_eq!(d.time_to_last.max, 10.0);
    }

    #[test]
    fn failed_posts_do_not_count_as_expected() {
        let sent = [None, Some(10)];
        let recv = vec![vec![50], vec![20], vec![99]];
        let d = deliveries(&sent, &recv, 1);
        assert_eq!(d.received, 1);
        assert_eq!(d.unexpected, 2, "k=0 failed POST and k=2 never sent");
        assert_eq!(d.incomplete, 0);
        assert_eq!(d.latency.max, 0.01);
    }

    #[test]
    fn clock_skew_never_goes_negative() {
        let d = deliveries(&[Some(100)], &[vec![90]], 1);
        assert_eq!(d.latency.max, 0.0);
    }
}
