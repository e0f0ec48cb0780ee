//! systemd integration: readiness, stopping and watchdog notifications.
//!
//! All of it is a no-op outside systemd (no `NOTIFY_SOCKET`), so the node
//! behaves the same under `cargo run`, in tests and under a unit with
//! `Type=notify` and `WatchdogSec=`.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// Tells systemd the node is ready (listening, store reachable).
pub fn ready() {
    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// Tells systemd the node is draining and will exit within `grace`
/// (plus a margin): the stop timeout is extended to cover the drain, so
/// `TimeoutStopSec` need not track `--drain-grace` by hand.
pub fn stopping(grace: Duration) {
    let extend = (grace + Duration::from_secs(5))
        .as_micros()
        .min(u128::from(u32::MAX)) as u32;
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("draining"),
        NotifyState::ExtendTimeoutUsec(extend),
    ]);
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// When systemd asks for a watchdog (`WatchdogSec=`), pings it at half the
/// interval from a task on the node's runtime: if the runtime hangs, the
/// pings stop and systemd restarts the node.
pub fn spawn_watchdog(stop: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = (interval / 2).max(Duration::from_millis(100));
    tracing::info!(?interval, "systemd watchdog enabled");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => notify(&[NotifyState::Watchdog]),
            }
        }
    });
}
