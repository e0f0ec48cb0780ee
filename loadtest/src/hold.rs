//! The `hold` scenario: connect N idle devices, measure what they cost the
//! node (RSS per device), keep them for `--hold` seconds, close them all.

use std::time::Duration;

use crate::chart::Charts;
use crate::cli::HoldArgs;
use crate::connect::{self, secs};
use crate::report::{HoldReport, Report};

/// Time for workers to close every device and report.
const FINISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `hold` and returns its report and charts.
pub async fn run(args: &HoldArgs) -> anyhow::Result<(Report, Charts)> {
    let hold = secs(args.hold_secs);
    let mut c = connect::connect(&args.fleet, hold).await?;
    eprintln!(
        "connected {}/{}; holding for {:.1} s",
        c.run.connect.connected, c.run.connect.attempted, args.hold_secs
    );
    c.fleet.follow(hold).await?;
    let at_end = c.fleet.progress();
    let fin = c.fleet.finish(FINISH_TIMEOUT).await?;
    let t0 = c.run.started_at_unix_ms * 1000;
    let mut charts = Charts::new(
        format!("pace-loadtest hold, run {}", c.run.run_id),
        "devices",
    );
    charts.dist("connect (TCP connect → welcome)", c.connect_us.clone());
    charts.progress_line("connections open", false, t0, &fin.timeline, |p| {
        p.open as f64
    });
    charts.progress_line("connect failures", false, t0, &fin.timeline, |p| {
        p.failed as f64
    });
    charts.progress_line("dropped", false, t0, &fin.timeline, |p| p.dropped as f64);
    let report = Report {
        hold: Some(HoldReport {
            seconds: hold.as_secs_f64(),
            open_at_end: at_end.open,
            dropped: at_end.dropped,
        }),
        ..Report::new("hold", c.run, args.fleet.devices, &fin)
    };
    Ok((report, charts))
}
