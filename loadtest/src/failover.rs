//! The `failover` scenario: a [`crate::surge`] during which one node dies.
//!
//! `--kill-after` seconds after the first join is due, the coordinator
//! sends SIGKILL to `--kill-pid` — only that PID, and only once it has
//! checked that it is a `pace-node` process. The devices that were on it
//! see their connection end and come back (see [`crate::surge_device`]:
//! backoff with full jitter, through `--gateway` or the next target, for at
//! most `--reconnect-within`), then join again. The server promises that a
//! rejoin returns the same ticket: a waiting device gets its place back
//! (its position can only have improved), an admitted one its session.
//!
//! What the run checks (every figure must be 0):
//! - **devices lost**: not connected again within the bound;
//! - **places lost**: a rejoin answered with a worse position than the
//!   device last had, or a session answered with a place or another
//!   session; with `--redis`, also every device's ticket read from the
//!   store just before the kill and after the rejoins, compared;
//! - **over-admissions**: sessions beyond the capacity ever seen at once
//!   (room stats polled every 100 ms on a node still alive, and the
//!   devices' own view);
//! - plus every surge figure (the admission-order check covers the
//!   devices whose connection never dropped: a dropped device learns of an
//!   admission made while it was away only when it rejoins).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::chart::Charts;
use crate::cli::FailoverArgs;
use crate::clock::unix_micros;
use crate::connect::secs;
use crate::fleet::Fleet;
use crate::ipc::{ReasonCounts, ReconnectSpec, SurgeRecord, bump};
use crate::report::{Report, reasons};
use crate::stats::Summary;
use crate::surge_analysis::CountSummary;
use crate::target::Target;

/// What `failover` adds to a surge.
#[derive(Debug, Clone)]
pub struct FailoverPlan {
    /// The node to kill.
    pub pid: u32,
    /// After the first join is due.
    pub kill_after: Duration,
    /// Devices reconnect through it, if given.
    pub gateway: Option<Target>,
    /// The devices' reconnect policy.
    pub reconnect: ReconnectSpec,
    /// URL of the cluster's Redis (ticket check), if given.
    pub redis: Option<String>,
    /// The nodes' key prefix in Redis.
    pub redis_prefix: String,
}

/// Runs `failover` and returns its report and charts.
pub async fn run(args: &FailoverArgs) -> anyhow::Result<(Report, Charts)> {
    check_kill_target(args.kill_pid)?;
    let gateway = args.gateway.as_deref().map(Target::parse).transpose()?;
    let within = secs(args.reconnect_within);
    if within.is_zero() {
        bail!("--reconnect-within must be positive");
    }
    let plan = FailoverPlan {
        pid: args.kill_pid,
        kill_after: secs(args.kill_after),
        gateway: gateway.clone(),
        reconnect: ReconnectSpec {
            base_ms: args.reconnect_base_ms.max(1),
            max_ms: args.reconnect_max_ms.max(args.reconnect_base_ms).max(1),
            within_ms: within.as_millis() as u64,
            gateway,
        },
        redis: args
            .surge
            .redis
            .as_deref()
            .map(crate::redis_conn::url)
            .transpose()?,
        redis_prefix: args.redis_prefix.clone(),
    };
    crate::surge::run_with(&args.surge, Some(&plan)).await
}

/// Refuses any PID that is not a running `pace-node` other than this
/// process: the scenario must never signal anything else.
pub fn check_kill_target(pid: u32) -> anyhow::Result<()> {
    if pid == 0 || pid == std::process::id() {
        bail!("--kill-pid {pid}: not a node");
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .with_context(|| format!("--kill-pid {pid}: no such process"))?;
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    let name = String::from_utf8_lossy(argv0);
    let base = name.rsplit('/').next().unwrap_or_default();
    if !base.starts_with("pace-node") {
        bail!("--kill-pid {pid} is {name:?}, not a pace-node process: refusing to kill it");
    }
    Ok(())
}

/// What happened at the kill.
#[derive(Debug, Clone, Default)]
pub struct KillOutcome {
    /// When SIGKILL was sent, µs since the epoch.
    pub at_us: u64,
    /// Why it could not be sent, if so.
    pub error: Option<String>,
    /// Tickets just before the kill, or why they could not be read.
    pub tickets_before: Option<Result<BTreeMap<String, u64>, String>>,
}

/// Sends SIGKILL to `pid` (through `kill(1)`: the crate has no unsafe
/// code), after checking again that it is still the node.
async fn kill(pid: u32) -> Result<(), String> {
    check_kill_target(pid).map_err(|e| format!("{e:#}"))?;
    let status = tokio::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .await
        .map_err(|e| format!("running kill: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill -KILL {pid}: {status}"))
    }
}

async fn read_tickets(
    plan: &FailoverPlan,
    room: &str,
    device_prefix: &str,
) -> Option<Result<BTreeMap<String, u64>, String>> {
    let url = plan.redis.as_deref()?;
    Some(
        crate::redis_tickets::tickets(url, &plan.redis_prefix, room, device_prefix)
            .await
            .map_err(|e| format!("{e:#}")),
    )
}

/// Starts the killer: at `start_at_us + kill_after` it reads the tickets
/// (with `--redis`) and kills the node.
pub fn spawn_kill(
    plan: &FailoverPlan,
    start_at_us: u64,
    room: String,
    device_prefix: String,
) -> JoinHandle<KillOutcome> {
    let plan = plan.clone();
    tokio::spawn(async move {
        let at = start_at_us + plan.kill_after.as_micros() as u64;
        tokio::time::sleep(Duration::from_micros(at.saturating_sub(unix_micros()))).await;
        let tickets_before = read_tickets(&plan, &room, &device_prefix).await;
        let at_us = unix_micros();
        eprintln!("killing node pid {} (SIGKILL)", plan.pid);
        let error = kill(plan.pid).await.err();
        if let Some(e) = &error {
            eprintln!("warning: {e}");
        }
        KillOutcome {
            at_us,
            error,
            tickets_before,
        }
    })
}

/// The kill and the rejoins, as the coordinator saw them.
#[derive(Debug, Clone, Default)]
pub struct Aftermath {
    /// The kill.
    pub kill: KillOutcome,
    /// Whether every dropped device was back (rejoin answered) in time.
    pub settled: bool,
    /// When the coordinator saw it settle (or gave up), µs since the epoch.
    pub settled_us: u64,
    /// Tickets once settled.
    pub tickets_after: Option<Result<BTreeMap<String, u64>, String>>,
}

/// Follows the fleet until the kill happened, then until every dropped
/// device is back and answered (or the reconnect bound passed), and reads
/// the tickets again.
pub async fn await_aftermath(
    fleet: &mut Fleet,
    killer: JoinHandle<KillOutcome>,
    plan: &FailoverPlan,
    room: &str,
    device_prefix: &str,
) -> anyhow::Result<Aftermath> {
    // Keep reading the workers' events while the killer waits.
    while !killer.is_finished() {
        fleet.follow(Duration::from_millis(50)).await?;
    }
    let kill = killer.await.context("the kill task failed")?;
    eprintln!("node killed; waiting for its devices to reconnect and rejoin");
    // Drops are seen within milliseconds (the kernel closes the sockets);
    // a second covers the progress reports.
    fleet.follow(Duration::from_secs(1)).await?;
    let within = Duration::from_millis(plan.reconnect.within_ms) + Duration::from_secs(5);
    let settled = fleet.wait_for(within, |p| p.more.reconnecting == 0).await?;
    let settled_us = unix_micros();
    let p = fleet.progress();
    eprintln!(
        "reconnections: {} done, {} lost, {} still reconnecting{}",
        p.more.reconnected,
        p.more.lost,
        p.more.reconnecting,
        if settled { "" } else { "  [bound hit]" }
    );
    let tickets_after = read_tickets(plan, room, device_prefix).await;
    Ok(Aftermath {
        kill,
        settled,
        settled_us,
        tickets_after,
    })
}

/// Tickets before the kill against after the rejoins.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TicketCheck {
    /// Devices with a ticket before the kill.
    pub before: u64,
    /// Devices with a ticket after the rejoins.
    pub after: u64,
    /// Devices with a ticket both times.
    pub compared: u64,
    /// Of those, devices whose ticket changed (must be 0).
    pub changed: u64,
    /// Devices with a ticket before, none after, and no release of their
    /// own in between (their place was lost; must be 0).
    pub vanished: u64,
    /// Why the check could not be made, if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Compares the tickets; `released_before(device)` says whether the
/// device released its session before the second reading.
pub fn ticket_check(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    released_before: impl Fn(&str) -> bool,
) -> TicketCheck {
    let mut c = TicketCheck {
        before: before.len() as u64,
        after: after.len() as u64,
        ..TicketCheck::default()
    };
    for (device, ticket) in before {
        match after.get(device) {
            Some(t) => {
                c.compared += 1;
                if t != ticket {
                    c.changed += 1;
                }
            }
            None if !released_before(device) => c.vanished += 1,
            None => {}
        }
    }
    c
}

/// What the devices' reconnections showed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reconnections {
    /// Devices whose connection dropped at least once.
    pub devices_dropped: u64,
    /// Drops in all.
    pub drops: u64,
    /// Drops by reason.
    pub drop_reasons: ReasonCounts,
    /// Drops followed by a new connection.
    pub reconnected: u64,
    /// Devices never connected again within the bound (must be 0).
    pub devices_lost: u64,
    /// Their last connection failure, by reason.
    pub lost_reasons: ReasonCounts,
    /// Drop → `welcome` on the new connection.
    pub time_to_reconnect_ms: Summary,
    /// Drop → the answer to the rejoin.
    pub time_to_rejoin_ms: Summary,
    /// Connection attempts per reconnection.
    pub attempts: CountSummary,
    /// New connections by route (target index; the gateway after the
    /// targets).
    pub routes: BTreeMap<usize, u64>,
    /// Rejoins written.
    pub rejoins: u64,
    /// Their answers: `queue`, `admitted`, error codes, `unanswered`,
    /// `dropped_again`.
    pub rejoin_answers: ReasonCounts,
    /// Rejoins that gave back what the device held (its place, at the
    /// same or a better position, or its session).
    pub places_kept: u64,
    /// Rejoins that did not (must be 0): a worse position, a place where
    /// there was a session, another session, an error.
    pub places_lost: u64,
    /// Rejoins of devices whose join had not been answered when they
    /// dropped: nothing to compare on the device (the ticket check covers
    /// them).
    pub rejoins_unverifiable: u64,
}

/// Reconnection figures over every device's record.
pub fn reconnections(records: &[SurgeRecord]) -> Reconnections {
    let mut r = Reconnections::default();
    let (mut to_welcome, mut to_answer, mut attempts) = (Vec::new(), Vec::new(), Vec::new());
    for rec in records {
        if !rec.reconnects.is_empty() {
            r.devices_dropped += 1;
        }
        if let Some(reason) = &rec.lost {
            r.devices_lost += 1;
            bump(&mut r.lost_reasons, reason, 1);
        }
        for d in &rec.reconnects {
            r.drops += 1;
            bump(&mut r.drop_reasons, &d.reason, 1);
            if let Some(w) = d.welcome_us {
                r.reconnected += 1;
                to_welcome.push(w.saturating_sub(d.dropped_us));
                attempts.push(u64::from(d.attempts));
            }
            if let Some(route) = d.route {
                *r.routes.entry(route).or_insert(0) += 1;
            }
            if d.rejoin_us.is_none() {
                continue;
            }
            r.rejoins += 1;
            let answer = d.answer.as_deref().unwrap_or("unanswered");
            bump(&mut r.rejoin_answers, answer, 1);
            if let Some(a) = d.answer_us {
                to_answer.push(a.saturating_sub(d.dropped_us));
            }
            let kept = match (d.position_before, d.expires_before, answer) {
                // Waiting: the same place, or admitted meanwhile.
                (Some(before), _, "queue") => d.position_after.is_some_and(|p| p <= before),
                (Some(_), _, "admitted") => true,
                // Admitted: the same session again.
                (None, Some(exp), "admitted") => d.expires_after == Some(exp),
                (None, Some(_), _) => false,
                (None, None, "queue" | "admitted") => {
                    r.rejoins_unverifiable += 1;
                    continue;
                }
                // Not answered because the run ended or it dropped again:
                // neither kept nor lost.
                (_, _, "unanswered" | "dropped_again") => continue,
                _ => false,
            };
            if kept {
                r.places_kept += 1;
            } else {
                r.places_lost += 1;
            }
        }
    }
    r.time_to_reconnect_ms = Summary::from_micros(&mut to_welcome);
    r.time_to_rejoin_ms = Summary::from_micros(&mut to_answer);
    r.attempts = CountSummary::of(&mut attempts);
    r
}

/// The `failover` part of a report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FailoverReport {
    /// The node killed.
    pub killed_pid: u32,
    /// `--kill-after`, seconds after the first join was due.
    pub kill_after_s: f64,
    /// When SIGKILL went out, seconds after the run started.
    pub killed_at_s: f64,
    /// Why the kill failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_error: Option<String>,
    /// Where devices reconnected (`--gateway`, else the next target).
    pub reconnect_via: String,
    /// Backoff base and cap, ms; bound, s.
    pub backoff_base_ms: u64,
    /// Backoff cap, ms.
    pub backoff_max_ms: u64,
    /// The reconnect bound, s.
    pub reconnect_within_s: f64,
    /// Devices waiting and sessions active at the last stats poll before
    /// the kill.
    pub waiting_at_kill: Option<u64>,
    /// The same, active.
    pub active_at_kill: Option<u64>,
    /// Whether every dropped device was back in time.
    pub settled: bool,
    /// What the reconnections showed.
    pub reconnections: Reconnections,
    /// Ticket comparison (with `--redis`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tickets: Option<TicketCheck>,
    /// Sessions beyond the capacity ever seen at once (must be 0).
    pub over_admissions: u64,
    /// Devices the admission-order check covered (never dropped).
    pub order_checked_devices: u64,
}

impl FailoverReport {
    /// Devices lost + places lost (+ tickets changed or vanished) +
    /// over-admissions: what must be 0.
    pub fn failures(&self) -> u64 {
        let t = self.tickets.as_ref().map_or(0, |t| t.changed + t.vanished);
        self.reconnections.devices_lost + self.reconnections.places_lost + t + self.over_admissions
    }
}

/// The ticket check from the aftermath and the records.
pub fn tickets_of(
    aftermath: &Aftermath,
    records: &[SurgeRecord],
    device_prefix: &str,
) -> Option<TicketCheck> {
    let before = aftermath.kill.tickets_before.as_ref()?;
    let after = aftermath.tickets_after.as_ref()?;
    match (before, after) {
        (Ok(b), Ok(a)) => {
            // A device that released its session has no ticket afterwards
            // for that reason alone, whenever the release completed: one
            // whose release landed after the read still had its ticket
            // then and is compared like any other.
            let released: std::collections::BTreeSet<String> = records
                .iter()
                .filter(|r| r.release_error.is_none() && r.release_done_us.is_some())
                .map(|r| format!("{device_prefix}{}", r.i))
                .collect();
            Some(ticket_check(b, a, |d| released.contains(d)))
        }
        (Err(e), _) | (_, Err(e)) => Some(TicketCheck {
            error: Some(e.clone()),
            ..TicketCheck::default()
        }),
    }
}

/// The failover lines of the human summary.
pub fn render(s: &mut String, f: &FailoverReport) {
    let r = &f.reconnections;
    let _ = writeln!(
        s,
        "failover: node pid {} killed {:.2} s into the run ({} s after the first join){}; devices reconnect via {}, backoff full jitter base {} ms cap {} ms, bound {:.0} s",
        f.killed_pid,
        f.killed_at_s,
        f.kill_after_s,
        f.kill_error
            .as_deref()
            .map(|e| format!("  [KILL FAILED: {e}]"))
            .unwrap_or_default(),
        f.reconnect_via,
        f.backoff_base_ms,
        f.backoff_max_ms,
        f.reconnect_within_s
    );
    let _ = writeln!(
        s,
        "  at the kill: {} waiting, {} active",
        f.waiting_at_kill.map_or("n/a".into(), |v| v.to_string()),
        f.active_at_kill.map_or("n/a".into(), |v| v.to_string()),
    );
    let _ = writeln!(
        s,
        "  devices dropped {} ({} drops: {}), reconnected {}, LOST {}{}",
        r.devices_dropped,
        r.drops,
        reasons(&r.drop_reasons),
        r.reconnected,
        r.devices_lost,
        if r.devices_lost > 0 {
            format!(" ({})", reasons(&r.lost_reasons))
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        s,
        "  time to reconnect (drop → welcome): {}",
        r.time_to_reconnect_ms.line()
    );
    let _ = writeln!(
        s,
        "  time to rejoin (drop → answer):     {}",
        r.time_to_rejoin_ms.line()
    );
    let _ = writeln!(
        s,
        "  attempts per reconnection p50 {} p99 {} max {}; new connections by route: {}",
        r.attempts.p50,
        r.attempts.p99,
        r.attempts.max,
        r.routes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(
        s,
        "  rejoins {} (answers: {}): places kept {}, PLACES LOST {}, unverifiable on the device {}",
        r.rejoins,
        reasons(&r.rejoin_answers),
        r.places_kept,
        r.places_lost,
        r.rejoins_unverifiable
    );
    match &f.tickets {
        Some(TicketCheck { error: Some(e), .. }) => {
            let _ = writeln!(s, "  tickets: not checked ({e})");
        }
        Some(t) => {
            let _ = writeln!(
                s,
                "  tickets (redis): {} before, {} after, {} compared, CHANGED {}, VANISHED {}",
                t.before, t.after, t.compared, t.changed, t.vanished
            );
        }
        None => {
            let _ = writeln!(s, "  tickets: not checked (no --redis)");
        }
    }
    let _ = writeln!(
        s,
        "  OVER-ADMISSIONS {}; admission order checked over the {} devices never dropped; reconnections {}",
        f.over_admissions,
        f.order_checked_devices,
        if f.settled {
            "settled"
        } else {
            "NOT settled within the bound"
        }
    );
    let _ = writeln!(
        s,
        "  => {}",
        if f.failures() == 0 && f.kill_error.is_none() {
            "failover OK: 0 lost, 0 places lost, 0 over-admissions".to_owned()
        } else {
            format!("failover FAILED: {} problems", f.failures())
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::ReconnectRecord;

    fn dropped(before: Option<u64>, exp: Option<u64>, answer: &str) -> ReconnectRecord {
        ReconnectRecord {
            dropped_us: 1_000,
            reason: "eof".into(),
            attempts: 1,
            welcome_us: Some(3_000),
            route: Some(2),
            position_before: before,
            expires_before: exp,
            rejoin_us: Some(3_100),
            answer_us: Some(4_000),
            answer: Some(answer.into()),
            ..ReconnectRecord::default()
        }
    }

    fn rec(i: u64, r: Vec<ReconnectRecord>) -> SurgeRecord {
        SurgeRecord {
            i,
            reconnects: r,
            ..SurgeRecord::default()
        }
    }

    #[test]
    fn rejoins_keep_or_lose_places() {
        let kept_better = ReconnectRecord {
            position_after: Some(5),
            ..dropped(Some(7), None, "queue")
        };
        let lost_back = ReconnectRecord {
            position_after: Some(900),
            ..dropped(Some(7), None, "queue")
        };
        let admitted_meanwhile = dropped(Some(2), None, "admitted");
        let same_session = ReconnectRecord {
            expires_after: Some(99),
            ..dropped(None, Some(99), "admitted")
        };
        let other_session = ReconnectRecord {
            expires_after: Some(120),
            ..dropped(None, Some(99), "admitted")
        };
        let session_to_queue = ReconnectRecord {
            position_after: Some(3),
            ..dropped(None, Some(99), "queue")
        };
        let in_flight = ReconnectRecord {
            position_after: Some(3),
            ..dropped(None, None, "queue")
        };
        let refused = dropped(Some(4), None, "unavailable");
        let mut never = dropped(None, None, "x");
        never.welcome_us = None;
        never.route = None;
        never.rejoin_us = None;
        never.answer = None;
        let mut lost = rec(9, vec![never]);
        lost.lost = Some("connect_connection_refused".into());
        let records = vec![
            rec(0, vec![kept_better]),
            rec(1, vec![lost_back]),
            rec(2, vec![admitted_meanwhile]),
            rec(3, vec![same_session]),
            rec(4, vec![other_session]),
            rec(5, vec![session_to_queue]),
            rec(6, vec![in_flight]),
            rec(7, vec![refused]),
            rec(8, vec![]),
            lost,
        ];
        let r = reconnections(&records);
        assert_eq!(r.devices_dropped, 9);
        assert_eq!((r.drops, r.reconnected), (9, 8));
        assert_eq!(r.devices_lost, 1);
        assert_eq!(r.lost_reasons.get("connect_connection_refused"), Some(&1));
        assert_eq!(r.rejoins, 8);
        assert_eq!(
            r.places_kept, 3,
            "better place, admitted meanwhile, same session"
        );
        assert_eq!(
            r.places_lost, 4,
            "worse place, other session, queued, refused"
        );
        assert_eq!(r.rejoins_unverifiable, 1);
        assert_eq!(r.time_to_reconnect_ms.count, 8);
        assert_eq!(r.time_to_reconnect_ms.max, 2.0);
        assert_eq!(r.time_to_rejoin_ms.max, 3.0);
        assert_eq!(r.routes.get(&2), Some(&8));
        assert_eq!(r.attempts.max, 1);
    }

    #[test]
    fn tickets_compared_and_vanished() {
        let before: BTreeMap<String, u64> = [
            ("a".into(), 1),
            ("b".into(), 2),
            ("c".into(), 3),
            ("d".into(), 4),
        ]
        .into();
        let after: BTreeMap<String, u64> =
            [("a".into(), 1), ("b".into(), 7), ("e".into(), 9)].into();
        let c = ticket_check(&before, &after, |d| d == "c");
        assert_eq!((c.before, c.after, c.compared), (4, 3, 2));
        assert_eq!(c.changed, 1, "b");
        assert_eq!(c.vanished, 1, "d (c released)");
    }

    #[test]
    fn refuses_to_kill_anything_but_a_node() {
        assert!(check_kill_target(std::process::id()).is_err());
        assert!(check_kill_target(0).is_err());
        // PID 1 exists and is not a pace-node.
        let e = check_kill_target(1).unwrap_err().to_string();
        assert!(
            e.contains("not a pace-node") || e.contains("no such"),
            "{e}"
        );
        assert!(check_kill_target(u32::MAX - 1).is_err());
    }
}
