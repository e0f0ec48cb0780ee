//! Reads one metric out of a Prometheus text exposition (a node's
//! `/metrics`), for when the node's PID is not at hand: resident memory,
//! CPU seconds and open connections come from the node's own report.

/// The sum of every sample of metric `name` (over all label sets), or `None`
/// when the exposition has no sample of it. `name` must match exactly: a
/// query for `pace_connections_open` does not match
/// `pace_connections_open_total`.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // Next char must end the name: a label set or whitespace.
        let after_labels = if let Some(labels) = rest.strip_prefix('{') {
            match label_set_end(labels) {
                Some(end) => &labels[end + 1..],
                None => continue,
            }
        } else if rest.starts_with(char::is_whitespace) {
            rest
        } else {
            continue;
        };
        // "<value> [timestamp]"
        let Some(value) = after_labels.split_whitespace().next() else {
            continue;
        };
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => match v.parse() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        *found.get_or_insert(0.0) += value;
    }
    found
}

/// Byte offset of the `}` closing a label set, skipping quoted label values
/// (which may contain `}` and backslash escapes).
fn label_set_end(labels: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in labels.char_indices() {
        match (in_quotes, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => in_quotes = false,
            (false, _, '"') => in_quotes = true,
            (false, _, '}') => return Some(i),
            _ => {}
        }
    }
    None
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
pace_disconnects_total{reason=\"slow_consumer\",node=\"a}b\"} 4 1700000000000
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
    }
}
