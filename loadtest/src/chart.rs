//! `--svg FILE`: one SVG per run, drawn with plotters' SVG backend, with
//! two charts:
//!
//! - **latency**: the cumulative distribution (CDF) of each latency the
//!   scenario measures (connect, delivery, join, reconnect, poll, …),
//!   milliseconds on a log axis, so fast and slow series share a chart;
//! - **timeline**: counts over the run (connections open, waiting, active
//!   sessions, bytes per second, …), seconds from the start of the run;
//!   series on the right-hand axis where their scale differs, and vertical
//!   markers for events (the node's kill).
//!
//! Scenarios fill a [`Charts`]; [`write_svg`] draws it.

use std::path::Path;

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::fleet::Progress;

/// Size of the picture, pixels.
const SIZE: (u32, u32) = (1100, 900);
/// Points per CDF line at most (quantiles).
const CDF_POINTS: usize = 400;
/// Points per timeline line at most.
const LINE_POINTS: usize = 2_000;

/// Series colours, in order.
const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
    RGBColor(127, 127, 127),
];

/// One latency distribution.
#[derive(Debug, Clone, Default)]
pub struct Dist {
    /// Legend.
    pub name: String,
    /// Samples, µs.
    pub us: Vec<u64>,
}

/// One line of the timeline.
#[derive(Debug, Clone, Default)]
pub struct Line {
    /// Legend.
    pub name: String,
    /// On the right-hand axis.
    pub right: bool,
    /// `(seconds since the start, value)`.
    pub points: Vec<(f64, f64)>,
}

/// What one run draws.
#[derive(Debug, Clone, Default)]
pub struct Charts {
    /// Title: scenario and run.
    pub title: String,
    /// Latency distributions.
    pub latency: Vec<Dist>,
    /// Timeline lines.
    pub timeline: Vec<Line>,
    /// Left axis label of the timeline.
    pub left_label: String,
    /// Right axis label (when some line is on the right).
    pub right_label: String,
    /// Vertical markers: `(legend, seconds since the start)`.
    pub markers: Vec<(String, f64)>,
}

impl Charts {
    /// Charts titled `title`, timeline counted in `left_label`.
    pub fn new(title: String, left_label: &str) -> Charts {
        Charts {
            title,
            left_label: left_label.to_owned(),
            ..Charts::default()
        }
    }

    /// Adds a latency distribution (left out when empty).
    pub fn dist(&mut self, name: &str, us: Vec<u64>) {
        if !us.is_empty() {
            self.latency.push(Dist {
                name: name.to_owned(),
                us,
            });
        }
    }

    /// Adds a timeline line from `(µs since the epoch, value)` samples,
    /// relative to `t0_us` (left out when empty).
    pub fn line(&mut self, name: &str, right: bool, t0_us: u64, samples: &[(u64, f64)]) {
        if samples.is_empty() {
            return;
        }
        self.timeline.push(Line {
            name: name.to_owned(),
            right,
            points: samples
                .iter()
                .map(|&(t, v)| (t.saturating_sub(t0_us) as f64 / 1e6, v))
                .collect(),
        });
    }

    /// Adds a line of one progress counter over the fleet's timeline.
    pub fn progress_line(
        &mut self,
        name: &str,
        right: bool,
        t0_us: u64,
        timeline: &[(u64, Progress)],
        value: impl Fn(&Progress) -> f64,
    ) {
        let samples: Vec<(u64, f64)> = timeline.iter().map(|(t, p)| (*t, value(p))).collect();
        self.line(name, right, t0_us, &samples);
    }

    /// Adds a vertical marker at `at_us` (µs since the epoch).
    pub fn marker(&mut self, name: &str, t0_us: u64, at_us: u64) {
        self.markers
            .push((name.to_owned(), at_us.saturating_sub(t0_us) as f64 / 1e6));
    }
}

/// The CDF of `us` as `(ms, fraction ≤)` points, at most [`CDF_POINTS`]
/// (evenly spaced ranks, always including the smallest and largest
/// sample); ms clamped to ≥ 0.001 for the log axis.
pub fn cdf_points(us: &[u64]) -> Vec<(f64, f64)> {
    let mut sorted = us.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    if n == 0 {
        return Vec::new();
    }
    let steps = (n - 1).min(CDF_POINTS);
    let mut out = Vec::with_capacity(steps + 1);
    for k in 0..=steps {
        let idx = (k * (n - 1)).checked_div(steps).unwrap_or(0);
        let ms = (sorted[idx] as f64 / 1000.0).max(0.001);
        out.push((ms, (idx + 1) as f64 / n as f64));
    }
    out
}

/// Every `step`-th point (and the last) so at most [`LINE_POINTS`] remain.
fn thin(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let step = points.len().div_ceil(LINE_POINTS).max(1);
    let mut out: Vec<(f64, f64)> = points.iter().step_by(step).copied().collect();
    if let (Some(last), Some(kept)) = (points.last(), out.last())
        && last != kept
    {
        out.push(*last);
    }
    out
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the chart: {e}")
}

/// A range with room: `lo..hi`, never empty.
fn padded(lo: f64, hi: f64) -> std::ops::Range<f64> {
    if hi > lo { lo..hi * 1.05 } else { lo..lo + 1.0 }
}

/// Draws `charts` into the SVG file at `path`.
pub fn write_svg(path: &Path, charts: &Charts) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(&charts.title, ("sans-serif", 22))
        .map_err(err)?;
    let (top, bottom) = root.split_vertically(SIZE.1 / 2 - 20);
    draw_latency(&top, charts)?;
    draw_timeline(&bottom, charts)?;
    root.present().map_err(err)?;
    Ok(())
}

fn draw_latency(area: &DrawingArea<SVGBackend<'_>, Shift>, charts: &Charts) -> anyhow::Result<()> {
    let curves: Vec<(&str, Vec<(f64, f64)>)> = charts
        .latency
        .iter()
        .map(|d| (d.name.as_str(), cdf_points(&d.us)))
        .collect();
    let lo = curves
        .iter()
        .flat_map(|(_, p)| p.first().map(|q| q.0))
        .fold(f64::INFINITY, f64::min);
    let hi = curves
        .iter()
        .flat_map(|(_, p)| p.last().map(|q| q.0))
        .fold(0.0, f64::max);
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo * 0.8, hi * 1.25)
    } else {
        (0.01, 1000.0)
    };
    let mut chart = ChartBuilder::on(area)
        .caption("latency distribution (CDF)", ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("milliseconds (log scale)")
        .y_desc("fraction of samples ≤ x")
        .draw()
        .map_err(err)?;
    for (i, (name, points)) in curves.into_iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let n = charts.latency[i].us.len();
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(err)?
            .label(format!("{name} (n={n})"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
    }
    if !charts.latency.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

fn draw_timeline(area: &DrawingArea<SVGBackend<'_>, Shift>, charts: &Charts) -> anyhow::Result<()> {
    let lines: Vec<(&Line, Vec<(f64, f64)>)> = charts
        .timeline
        .iter()
        .map(|l| (l, thin(&l.points)))
        .collect();
    let max_of = |right: bool| {
        lines
            .iter()
            .filter(|(l, _)| l.right == right)
            .flat_map(|(_, p)| p.iter().map(|q| q.1))
            .fold(0.0, f64::max)
    };
    let t_max = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.0))
        .chain(charts.markers.iter().map(|m| m.1))
        .fold(0.0, f64::max);
    let x = padded(0.0, t_max);
    let (left_max, right_max) = (max_of(false), max_of(true));
    let mut chart = ChartBuilder::on(area)
        .caption("timeline", ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .build_cartesian_2d(x.clone(), padded(0.0, left_max))
        .map_err(err)?
        .set_secondary_coord(x, padded(0.0, right_max));
    chart
        .configure_mesh()
        .x_desc("seconds since the run started")
        .y_desc(charts.left_label.as_str())
        .draw()
        .map_err(err)?;
    if lines.iter().any(|(l, _)| l.right) {
        chart
            .configure_secondary_axes()
            .y_desc(charts.right_label.as_str())
            .draw()
            .map_err(err)?;
    }
    for (i, (l, points)) in lines.into_iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let style = colour.stroke_width(2);
        let legend = move |(x, y): (i32, i32)| PathElement::new(vec![(x, y), (x + 20, y)], style);
        if l.right {
            chart
                .draw_secondary_series(LineSeries::new(points, style))
                .map_err(err)?
                .label(format!("{} (right axis)", l.name))
                .legend(legend);
        } else {
            chart
                .draw_series(LineSeries::new(points, style))
                .map_err(err)?
                .label(l.name.as_str())
                .legend(legend);
        }
    }
    for (name, at) in &charts.markers {
        let style = BLACK.stroke_width(1);
        chart
            .draw_series(LineSeries::new(
                vec![(*at, 0.0), (*at, left_max.max(1.0))],
                style,
            ))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x + 10, y - 6), (x + 10, y + 6)], style));
    }
    if !charts.timeline.is_empty() || !charts.markers.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_points_span_the_samples() {
        assert!(cdf_points(&[]).is_empty());
        assert_eq!(cdf_points(&[2_000]), vec![(2.0, 1.0)]);
        let us: Vec<u64> = (0..10_000).rev().collect();
        let p = cdf_points(&us);
        assert_eq!(p.len(), CDF_POINTS + 1);
        assert_eq!(p[0], (0.001, 1.0 / 10_000.0));
        assert_eq!(p.last().copied(), Some((9.999, 1.0)));
        assert!(p.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1));
    }

    #[test]
    fn thin_keeps_the_ends() {
        let pts: Vec<(f64, f64)> = (0..5_001).map(|i| (i as f64, 0.0)).collect();
        let t = thin(&pts);
        assert!(t.len() <= LINE_POINTS + 1, "{}", t.len());
        assert_eq!(t[0].0, 0.0);
        assert_eq!(t.last().map(|p| p.0), Some(5_000.0));
    }

    #[test]
    fn writes_an_svg_with_both_charts() {
        let dir = std::env::temp_dir().join(format!("pace-lt-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.svg");
        let mut c = Charts::new("test run".into(), "devices");
        c.right_label = "sessions".into();
        c.dist("connect", (1..500).map(|i| i * 37).collect());
        c.dist("empty", Vec::new());
        c.line(
            "open",
            false,
            0,
            &[(0, 0.0), (1_000_000, 10.0), (2_000_000, 10.0)],
        );
        c.line("active", true, 0, &[(0, 0.0), (2_000_000, 3.0)]);
        c.marker("kill", 0, 1_500_000);
        write_svg(&path, &c).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.trim_start().starts_with("<svg"), "{:.200}", svg);
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.matches("<polyline").count() >= 4, "lines drawn");
        for label in [
            "connect (n=499)",
            "open",
            "active (right axis)",
            "kill",
            "timeline",
        ] {
            assert!(svg.contains(label), "{label} missing");
        }
        assert!(!svg.contains("empty (n="), "empty series left out");
        // Nothing to draw is still a valid picture.
        write_svg(&path, &Charts::new("nothing".into(), "x")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
