//! Reads one metric out of a Prometheus text exposition (a node's
//! `/metrics`), for when the node's PID is not at hand: resident memory,
//! CPU seconds and open connections come from the node's own report. The
//! text is parsed by `prometheus-parse`.

use prometheus_parse::{Scrape, Value};

/// The sum of every sample of metric `name` (over all label sets), or `None`
/// when the exposition has no sample of it (or is not valid text format).
/// `name` must match exactly: a query for `pace_connections_open` does not
/// match `pace_connections_open_total`. Counters, gauges and untyped
/// samples count; histograms and summaries have no single value and do not.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).ok()?;
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter_map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            Value::Histogram(_) | Value::Summary(_) => None,
        })
        .fold(None, |sum, v| Some(sum.unwrap_or(0.0) + v))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP pace_connections_open Open device connections.
# TYPE pace_connections_open gauge
pace_connections_open 9998
# HELP pace_connections_open_total nope
pace_connections_open_total 5
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 5.0331648e+07
process_cpu_seconds_total 12.34
pace_disconnects_total{reason=\"normal\"} 3
pace_disconnects_total{reason=\"slow_consumer\",node=\"a b\"} 4 1700000000000
# TYPE pace_wait_seconds histogram
pace_wait_seconds_bucket{le=\"+Inf\"} 2
pace_wait_seconds_sum 3.5
pace_wait_seconds_count 2
";

    #[test]
    fn plain_gauge() {
        assert_eq!(metric_sum(TEXT, "pace_connections_open"), Some(9998.0));
    }

    #[test]
    fn scientific_notation() {
        assert_eq!(
            metric_sum(TEXT, "process_resident_memory_bytes"),
            Some(50_331_648.0)
        );
        assert_eq!(metric_sum(TEXT, "process_cpu_seconds_total"), Some(12.34));
    }

    #[test]
    fn labelled_samples_are_summed() {
        assert_eq!(metric_sum(TEXT, "pace_disconnects_total"), Some(7.0));
    }

    #[test]
    fn missing_metric_and_prefix_only() {
        assert_eq!(metric_sum(TEXT, "pace_nope"), None);
        assert_eq!(metric_sum(TEXT, "pace_connections"), None);
        assert_eq!(metric_sum("", "x"), None);
        // A histogram has no single value.
        assert_eq!(metric_sum(TEXT, "pace_wait_seconds"), None);
    }
}
