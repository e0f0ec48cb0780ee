//! The coordinator's view of its worker processes: launch them with their
//! share of the devices, follow their progress, tell them to finish and
//! merge what they report.
//!
//! Workers are this same binary re-executed as `pace-loadtest worker`, so a
//! run needs nothing installed besides the one binary. Children are killed
//! if the coordinator drops them, and a worker also stops on its own at its
//! deadline or when its stdin closes.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::clock::unix_micros;
use crate::ipc::{
    self, MoreProgress, PollTotals, ReasonCounts, SurgeRecord, WorkerCommand, WorkerEvent,
    WorkerSpec,
};

/// Devices per worker process by default: well under the 20 000 open-files
/// cap, with room for the runtime's own descriptors.
pub const DEVICES_PER_PROCESS: u64 = 8_000;

/// The default number of worker processes for `devices` devices.
pub fn default_processes(devices: u64) -> usize {
    devices.div_ceil(DEVICES_PER_PROCESS).max(1) as usize
}

/// Splits `devices` over `processes` as evenly as possible: `(first, count)`
/// per worker, covering `0..devices` exactly.
pub fn split(devices: u64, processes: usize) -> Vec<(u64, u64)> {
    let p = processes.max(1) as u64;
    let (base, extra) = (devices / p, devices % p);
    let mut first = 0;
    (0..p)
        .map(|w| {
            let count = base + u64::from(w < extra);
            let share = (first, count);
            first += count;
            share
        })
        .collect()
}

/// Totals of the workers' latest progress events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Devices connected now.
    pub open: u64,
    /// Failed connection attempts.
    pub failed: u64,
    /// Distinct load-test notifications received.
    pub received: u64,
    /// Connections the server ended early.
    pub dropped: u64,
    /// `surge`: joins answered with a place or an admission.
    pub joined: u64,
    /// `surge`: joins answered with an error.
    pub join_failed: u64,
    /// `surge`: admissions received.
    pub admitted: u64,
    /// `surge`: releases finished.
    pub released: u64,
    /// `failover` and `overhead` counters.
    pub more: MoreProgress,
}

/// Progress samples kept for the timeline chart at most this often.
const TIMELINE_EVERY_US: u64 = 100_000;

/// A phase's events merged over the workers (`connected`, and with
/// `--register` `registered`).
#[derive(Debug, Clone, Default)]
pub struct PhaseTotals {
    /// Devices that made it (connected, registered).
    pub ok: u64,
    /// Failures by reason.
    pub failures: ReasonCounts,
    /// Latencies, µs.
    pub latency_us: Vec<u64>,
    /// Earliest first attempt over workers, µs since the epoch.
    pub first_attempt_us: u64,
    /// Latest completion over workers, µs since the epoch.
    pub last_done_us: u64,
}

/// The merged `connected` events.
pub type ConnectPhase = PhaseTotals;
/// The merged `registered` events (`--register`).
pub type RegisterPhase = PhaseTotals;

/// The merged `final` events.
#[derive(Debug, Clone, Default)]
pub struct FinalPhase {
    /// `recv_us[k]`: receive stamps of message `k` over all devices.
    pub recv_us: Vec<Vec<u64>>,
    /// Duplicate receipts.
    pub duplicates: u64,
    /// Notifications not from this run.
    pub foreign: u64,
    /// `error` frames received.
    pub error_frames: u64,
    /// Connections ended early, by reason.
    pub dropped: ReasonCounts,
    /// Clean closes at the end.
    pub closed_clean: u64,
    /// Closes the node answered without a close frame.
    pub closed_no_reply: u64,
    /// Failed or timed-out closes at the end.
    pub close_errors: u64,
    /// CPU the worker processes used, seconds.
    pub workers_cpu_seconds: f64,
    /// `surge`: every connected device's record, over all workers.
    pub surge: Vec<SurgeRecord>,
    /// `overhead`: what the status polls saw, over all workers.
    pub polls: Option<PollTotals>,
    /// Progress over time: `(µs since the epoch, totals)`.
    pub timeline: Vec<(u64, Progress)>,
}

impl FinalPhase {
    /// How the devices' connections ended, for the report.
    pub fn close_report(&self) -> crate::report::CloseReport {
        crate::report::CloseReport {
            clean: self.closed_clean,
            no_reply: self.closed_no_reply,
            errors: self.close_errors,
            dropped: self.dropped.clone(),
        }
    }
}

/// Everything needed to launch the workers.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Process count.
    pub processes: usize,
    /// Total devices.
    pub devices: u64,
    /// Template spec; `worker`, `first_device`, `devices`, `connect_rate`,
    /// `connect_concurrency` and the registration concurrency are filled
    /// per worker (the last three are totals here and divided among
    /// workers).
    pub template: WorkerSpec,
}

/// A phase every worker reports the end of.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// `--register`: the devices registered.
    Registered,
    /// The devices connected.
    Connected,
}

impl Phase {
    /// The phase's verb, for errors.
    fn doing(self) -> &'static str {
        match self {
            Phase::Registered => "registering",
            Phase::Connected => "connecting",
        }
    }

    /// What a worker reports at the phase's end, for errors.
    fn done(self) -> &'static str {
        match self {
            Phase::Registered => "its registrations",
            Phase::Connected => "its connections",
        }
    }
}

/// The running worker processes.
#[derive(Debug)]
pub struct Fleet {
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    events: mpsc::UnboundedReceiver<(usize, Option<WorkerEvent>)>,
    progress: Vec<Progress>,
    registered: Vec<Option<WorkerEvent>>,
    connected: Vec<Option<WorkerEvent>>,
    finals: Vec<Option<WorkerEvent>>,
    exited: Vec<bool>,
    timeline: Vec<(u64, Progress)>,
}

impl Fleet {
    /// Starts one worker per share and hands each its spec.
    pub async fn launch(plan: &Plan) -> anyhow::Result<Fleet> {
        let exe = std::env::current_exe().context("locating own executable to start workers")?;
        let shares = split(plan.devices, plan.processes);
        let n = shares.len();
        let (tx, events) = mpsc::unbounded_channel();
        let mut children = Vec::with_capacity(n);
        let mut stdins = Vec::with_capacity(n);
        for (w, (first, count)) in shares.into_iter().enumerate() {
            let mut spec = plan.template.clone();
            spec.worker = w;
            spec.first_device = first;
            spec.devices = count;
            spec.connect_rate = plan.template.connect_rate / n as f64;
            spec.connect_concurrency = plan.template.connect_concurrency.div_ceil(n).max(1);
            if let Some(r) = spec.register.as_mut() {
                r.concurrency = r.concurrency.div_ceil(n).max(1);
            }
            let mut child = Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting worker {w} ({})", exe.display()))?;
            let mut stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let mut line = serde_json::to_string(&spec)?;
            line.push('\n');
            stdin
                .write_all(line.as_bytes())
                .await
                .context("sending worker spec")?;
            stdin.flush().await?;
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<WorkerEvent>(&line) {
                        Ok(ev) => {
                            let _ = tx.send((w, Some(ev)));
                        }
                        Err(e) => eprintln!("worker {w}: unreadable line ({e}): {line:.200}"),
                    }
                }
                let _ = tx.send((w, None));
            });
            children.push(child);
            stdins.push(Some(stdin));
        }
        Ok(Fleet {
            children,
            stdins,
            events,
            progress: vec![Progress::default(); n],
            registered: vec![None; n],
            connected: vec![None; n],
            finals: vec![None; n],
            exited: vec![false; n],
            timeline: Vec::new(),
        })
    }

    /// Handles events until `deadline`; returns after the first one (true)
    /// or at the deadline (false).
    async fn pump(&mut self, deadline: Instant) -> anyhow::Result<bool> {
        let (w, ev) = match tokio::time::timeout_at(deadline, self.events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => {
                // Every worker's stdout is closed: nothing more will come.
                tokio::time::sleep_until(deadline).await;
                return Ok(false);
            }
            Err(_) => return Ok(false),
        };
        self.handle(w, ev)?;
        Ok(true)
    }

    /// Handles every event already queued, without waiting: afterwards
    /// [`Fleet::progress`] is as fresh as the workers' last reports.
    pub fn sync(&mut self) -> anyhow::Result<()> {
        while let Ok((w, ev)) = self.events.try_recv() {
            self.handle(w, ev)?;
        }
        Ok(())
    }

    fn handle(&mut self, w: usize, ev: Option<WorkerEvent>) -> anyhow::Result<()> {
        match ev {
            None => self.exited[w] = true,
            Some(WorkerEvent::Progress {
                open,
                failed,
                received,
                dropped,
                joined,
                join_failed,
                admitted,
                released,
                more,
            }) => {
                self.progress[w] = Progress {
                    open,
                    failed,
                    received,
                    dropped,
                    joined,
                    join_failed,
                    admitted,
                    released,
                    more,
                };
                let now = unix_micros();
                if self
                    .timeline
                    .last()
                    .is_none_or(|(at, _)| now.saturating_sub(*at) >= TIMELINE_EVERY_US)
                {
                    let total = self.progress();
                    self.timeline.push((now, total));
                }
            }
            Some(ev @ WorkerEvent::Registered { .. }) => self.registered[w] = Some(ev),
            Some(ev @ WorkerEvent::Connected { .. }) => self.connected[w] = Some(ev),
            Some(ev @ WorkerEvent::Final { .. }) => self.finals[w] = Some(ev),
            Some(WorkerEvent::Fatal { message }) => bail!("worker {w} failed: {message}"),
        }
        Ok(())
    }

    /// PIDs of the worker processes still running.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(Child::id).collect()
    }

    /// Latest progress summed over workers.
    pub fn progress(&self) -> Progress {
        self.progress
            .iter()
            .fold(Progress::default(), |a, p| Progress {
                open: a.open + p.open,
                failed: a.failed + p.failed,
                received: a.received + p.received,
                dropped: a.dropped + p.dropped,
                joined: a.joined + p.joined,
                join_failed: a.join_failed + p.join_failed,
                admitted: a.admitted + p.admitted,
                released: a.released + p.released,
                more: a.more.plus(p.more),
            })
    }

    /// Sends `command` to every worker still running.
    pub async fn command(&mut self, command: &WorkerCommand) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(command)?;
        line.push('\n');
        for stdin in self.stdins.iter_mut().flatten() {
            // A worker that already exited has a closed pipe: fine.
            let _ = stdin.write_all(line.as_bytes()).await;
            let _ = stdin.flush().await;
        }
        Ok(())
    }

    /// The workers' reports of `phase`, merged (an error when a worker
    /// exited without one).
    fn totals(&self, phase: Phase) -> anyhow::Result<PhaseTotals> {
        let reports = match phase {
            Phase::Registered => &self.registered,
            Phase::Connected => &self.connected,
        };
        let mut totals = PhaseTotals {
            first_attempt_us: u64::MAX,
            ..PhaseTotals::default()
        };
        for (w, ev) in reports.iter().enumerate() {
            match (phase, ev) {
                (
                    Phase::Registered,
                    Some(WorkerEvent::Registered {
                        ok,
                        failures,
                        register_us: latency_us,
                        first_attempt_us,
                        last_done_us,
                    }),
                )
                | (
                    Phase::Connected,
                    Some(WorkerEvent::Connected {
                        ok,
                        failures,
                        connect_us: latency_us,
                        first_attempt_us,
                        last_done_us,
                    }),
                ) => {
                    totals.ok += ok;
                    ipc::merge(&mut totals.failures, failures);
                    totals.latency_us.extend_from_slice(latency_us);
                    totals.first_attempt_us = totals.first_attempt_us.min(*first_attempt_us);
                    totals.last_done_us = totals.last_done_us.max(*last_done_us);
                }
                _ => bail!("worker {w} exited before it reported {}", phase.done()),
            }
        }
        Ok(totals)
    }

    /// Pumps worker events until every live worker has reported `phase`
    /// (or `timeout` passes: an error), printing `line(progress)` every
    /// second.
    async fn wait_phase(
        &mut self,
        phase: Phase,
        timeout: Duration,
        line: impl Fn(&Progress) -> String,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut next_print = Instant::now() + Duration::from_secs(1);
        loop {
            let reported = match phase {
                Phase::Registered => &self.registered,
                Phase::Connected => &self.connected,
            };
            if !reported
                .iter()
                .zip(&self.exited)
                .any(|(r, &gone)| r.is_none() && !gone)
            {
                return Ok(());
            }
            if !self.pump(deadline.min(next_print)).await? {
                if Instant::now() >= deadline {
                    bail!(
                        "workers did not finish {} within {timeout:?}",
                        phase.doing()
                    );
                }
                eprintln!("{}", line(&self.progress()));
                next_print += Duration::from_secs(1);
            }
        }
    }

    /// `--register`: waits until every worker has finished registering its
    /// devices, printing a progress line every second. The workers then
    /// wait for [`WorkerCommand::Connect`].
    pub async fn wait_registered(
        &mut self,
        timeout: Duration,
        devices: u64,
    ) -> anyhow::Result<RegisterPhase> {
        self.wait_phase(Phase::Registered, timeout, |p| {
            format!(
                "  registering: {} registered, {} failed of {devices}",
                p.more.registered, p.more.register_failed
            )
        })
        .await?;
        self.totals(Phase::Registered)
    }

    /// Waits until every worker has finished its connect phase, printing a
    /// progress line every second.
    pub async fn wait_connected(
        &mut self,
        timeout: Duration,
        devices: u64,
    ) -> anyhow::Result<ConnectPhase> {
        self.wait_phase(Phase::Connected, timeout, |p| {
            format!(
                "  connecting: {} open, {} failed of {devices}",
                p.open, p.failed
            )
        })
        .await?;
        self.totals(Phase::Connected)
    }

    /// Follows progress until `done(progress)` holds or `timeout` passes;
    /// returns whether it held.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        done: impl Fn(&Progress) -> bool,
    ) -> anyhow::Result<bool> {
        let deadline = Instant::now() + timeout;
        while !done(&self.progress()) {
            if self.exited.iter().all(|&e| e) {
                return Ok(false);
            }
            if !self.pump(deadline).await? && Instant::now() >= deadline {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Follows progress for `duration` (a hold), whatever happens.
    pub async fn follow(&mut self, duration: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            self.pump(deadline).await?;
        }
        Ok(())
    }

    /// Tells every worker to close its devices, collects their final
    /// reports and waits for them to exit (killing any that overstay).
    pub async fn finish(mut self, timeout: Duration) -> anyhow::Result<FinalPhase> {
        let mut line = serde_json::to_string(&WorkerCommand::Finish)?;
        line.push('\n');
        for stdin in &mut self.stdins {
            if let Some(s) = stdin.as_mut() {
                // A worker that already exited has a closed pipe: fine.
                let _ = s.write_all(line.as_bytes()).await;
                let _ = s.flush().await;
            }
        }
        let deadline = Instant::now() + timeout;
        while self
            .finals
            .iter()
            .zip(&self.exited)
            .any(|(f, &gone)| f.is_none() && !gone)
        {
            if !self.pump(deadline).await? && Instant::now() >= deadline {
                eprintln!("warning: some workers sent no final report within {timeout:?}");
                break;
            }
        }
        // Closing stdin is the second, unmissable finish signal.
        self.stdins.iter_mut().for_each(|s| drop(s.take()));
        for (w, child) in self.children.iter_mut().enumerate() {
            let waited = tokio::time::timeout_at(
                deadline.max(Instant::now() + Duration::from_secs(2)),
                child.wait(),
            )
            .await;
            if waited.is_err() {
                eprintln!("warning: worker {w} did not exit; killing it");
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
        let mut phase = FinalPhase {
            timeline: std::mem::take(&mut self.timeline),
            ..FinalPhase::default()
        };
        for ev in self.finals.iter().flatten() {
            if let WorkerEvent::Final {
                receipts,
                duplicates,
                foreign,
                error_frames,
                dropped,
                closed_clean,
                closed_no_reply,
                close_errors,
                cpu_seconds,
                surge,
                polls,
            } = ev
            {
                phase.surge.extend_from_slice(surge);
                if let Some(p) = polls {
                    phase.polls.get_or_insert_with(PollTotals::default).merge(p);
                }
                for r in receipts {
                    let k = r.k as usize;
                    if phase.recv_us.len() <= k {
                        phase.recv_us.resize_with(k + 1, Vec::new);
                    }
                    phase.recv_us[k].extend_from_slice(&r.recv_us);
                }
                phase.duplicates += duplicates;
                phase.foreign += foreign;
                phase.error_frames += error_frames;
                ipc::merge(&mut phase.dropped, dropped);
                phase.closed_clean += closed_clean;
                phase.closed_no_reply += closed_no_reply;
                phase.close_errors += close_errors;
                phase.workers_cpu_seconds += cpu_seconds;
            }
        }
        let missing = self.finals.iter().filter(|f| f.is_none()).count();
        if missing > 0 {
            ipc::bump(
                &mut phase.dropped,
                "worker_sent_no_final_report",
                missing as u64,
            );
        }
        Ok(phase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_processes_keeps_each_under_the_fd_cap() {
        assert_eq!(default_processes(0), 1);
        assert_eq!(default_processes(200), 1);
        assert_eq!(default_processes(8_000), 1);
        assert_eq!(default_processes(8_001), 2);
        assert_eq!(default_processes(10_000), 2);
        assert_eq!(default_processes(100_000), 13);
    }

    #[test]
    fn split_covers_every_device_once() {
        assert_eq!(split(10, 3), vec![(0, 4), (4, 3), (7, 3)]);
        assert_eq!(split(2, 4), vec![(0, 1), (1, 1), (2, 0), (2, 0)]);
        assert_eq!(split(5, 0), vec![(0, 5)]);
        let shares = split(10_001, 7);
        assert_eq!(shares.iter().map(|s| s.1).sum::<u64>(), 10_001);
        for pair in shares.windows(2) {
            assert_eq!(pair[0].0 + pair[0].1, pair[1].0);
        }
    }
}
