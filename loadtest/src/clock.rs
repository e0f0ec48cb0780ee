//! The one clock every process of a run shares: wall-clock microseconds
//! since the Unix epoch.
//!
//! The coordinator stamps a notification when it sends the POST; a worker (a
//! different process on the same machine) stamps it when a device reads it.
//! Both read the same system clock, so the difference is the delivery
//! latency with microsecond resolution. Durations inside one process use
//! `Instant` instead.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_after_2020_and_monotone_enough() {
        let a = unix_micros();
        let b = unix_micros();
        assert!(a > 1_577_836_800_000_000, "{a}");
        assert!(b >= a);
    }
}
