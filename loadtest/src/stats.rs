//! Order statistics over measured samples: the percentiles every report
//! prints (connect latency, delivery latency, time to last device).
//!
//! Percentiles use the nearest-rank method on the sorted samples: the p-th
//! percentile is the smallest sample such that at least p % of the samples
//! are less than or equal to it. It always returns a value that was actually
//! measured, and p100 is the maximum.

use serde::{Deserialize, Serialize};

/// The nearest-rank `p`-th percentile (0 < p ≤ 100) of `sorted`, which must
/// be sorted ascending. `None` for no samples.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    // rank = ceil(p/100 * n), at least 1. Computed in integers per mille so
    // that p99 of 100 samples is exactly rank 99, not 99.00000000000001.
    let n = sorted.len() as u128;
    let per_mille = (p * 1000.0).round() as u128; // p in thousandths of a percent
    let rank = (per_mille * n).div_ceil(100_000).max(1) as usize;
    sorted.get(rank.min(sorted.len()) - 1).copied()
}

/// A distribution summary, in milliseconds with microsecond resolution.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of samples.
    pub count: u64,
    /// Smallest sample.
    pub min: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median (nearest rank).
    pub p50: f64,
    /// 90th percentile (nearest rank).
    pub p90: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
}

impl Summary {
    /// Summarizes samples given in microseconds; sorts them in place.
    /// All fields are zero when there are no samples.
    pub fn from_micros(samples: &mut [u64]) -> Summary {
        if samples.is_empty() {
            return Summary::default();
        }
        samples.sort_unstable();
        let ms = |us: u64| us as f64 / 1000.0;
        let at = |p: f64| ms(percentile(samples, p).unwrap_or(0));
        let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        Summary {
            count: samples.len() as u64,
            min: ms(samples[0]),
            mean: sum as f64 / samples.len() as f64 / 1000.0,
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            max: ms(samples[samples.len() - 1]),
        }
    }

    /// One line for the human report: `p50 1.234 ms  p90 …`.
    pub fn line(&self) -> String {
        if self.count == 0 {
            return "no samples".to_owned();
        }
        format!(
            "p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms  (min {:.3}, mean {:.3}, n={})",
            self.p50, self.p90, self.p99, self.max, self.min, self.mean, self.count
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_of_nothing_is_none() {
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn percentile_single_sample() {
        for p in [0.0, 1.0, 50.0, 99.0, 100.0] {
            assert_eq!(percentile(&[7], p), Some(7));
        }
    }

    #[test]
    fn nearest_rank_on_one_to_hundred() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 90.0), Some(90));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 99.9), Some(100));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&v, 0.5), Some(1));
        assert_eq!(percentile(&v, 1.0), Some(1));
        assert_eq!(percentile(&v, 1.01), Some(2));
    }

    #[test]
    fn nearest_rank_small_sets() {
        // Classic textbook example: 15 20 35 40 50.
        let v = [15, 20, 35, 40, 50];
        assert_eq!(percentile(&v, 5.0), Some(15));
        assert_eq!(percentile(&v, 30.0), Some(20));
        assert_eq!(percentile(&v, 40.0), Some(20));
        assert_eq!(percentile(&v, 50.0), Some(35));
        assert_eq!(percentile(&v, 100.0), Some(50));
        // Median of an even count is the lower middle sample.
        assert_eq!(percentile(&[1, 2, 3, 4], 50.0), Some(2));
    }

    #[test]
    fn p99_is_the_tail_not_the_max_for_large_sets() {
        let mut v: Vec<u64> = vec![1_000; 1_000];
        v[999] = 1_000_000; // one outlier in a thousand
        v.sort_unstable();
        assert_eq!(percentile(&v, 99.0), Some(1_000));
        assert_eq!(percentile(&v, 100.0), Some(1_000_000));
    }

    #[test]
    fn out_of_range_p_is_clamped() {
        let v = [1, 2, 3];
        assert_eq!(percentile(&v, -5.0), Some(1));
        assert_eq!(percentile(&v, 250.0), Some(3));
    }

    #[test]
    fn summary_converts_micros_to_millis_and_sorts() {
        let mut v = vec![3_000, 1_000, 2_000, 4_000, 10_500];
        let s = Summary::from_micros(&mut v);
        assert_eq!(v, vec![1_000, 2_000, 3_000, 4_000, 10_500]);
        assert_eq!(s.count, 5);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.p50, 3.0);
        assert_eq!(s.p90, 10.5);
        assert_eq!(s.p99, 10.5);
        assert_eq!(s.max, 10.5);
        assert!((s.mean - 4.1).abs() < 1e-9, "{}", s.mean);
    }

    #[test]
    fn summary_keeps_microsecond_resolution() {
        let s = Summary::from_micros(&mut [1_234]);
        assert_eq!(s.p50, 1.234);
        assert!(s.line().contains("1.234 ms"), "{}", s.line());
    }

    #[test]
    fn empty_summary_is_zero() {
        let s = Summary::from_micros(&mut []);
        assert_eq!(s, Summary::default());
        assert_eq!(s.line(), "no samples");
    }
}
