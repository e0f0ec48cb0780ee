//! Reconnect delays: exponential backoff with full jitter.
//!
//! After the n-th failed attempt in a row the client sleeps a uniformly random
//! time in `[0, min(max, min_delay × 2ⁿ)]` ("full jitter", as in the AWS
//! architecture blog's "Exponential Backoff and Jitter"). The randomness
//! spreads the thousands of devices a restarted node dropped over the whole
//! window instead of bringing them back in one wave; the cap bounds how long
//! a device stays away once the cluster is back.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The reconnect delay generator of one client.
#[derive(Debug)]
pub struct Backoff {
    /// The ceiling of the first delay (and the unit the ceiling doubles from).
    min: Duration,
    /// No delay is ever longer than this.
    max: Duration,
    /// Failed attempts since the last reset: the exponent.
    attempt: u32,
    /// Source of the jitter; seedable so tests are deterministic.
    rng: StdRng,
}

impl Backoff {
    /// A backoff between `min` and `max` seeded from the OS. `max` below
    /// `min` is raised to `min`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff::with_rng(min, max, StdRng::from_os_rng())
    }

    /// A backoff with a given random generator (tests seed it).
    pub fn with_rng(min: Duration, max: Duration, rng: StdRng) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
            rng,
        }
    }

    /// The ceiling of the next delay: `min(max, min × 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        // 2^31 × anything overflows Duration; the cap is reached long before.
        let factor = 1u32 << self.attempt.min(31);
        self.min
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The delay before the next attempt, drawn from `[0, ceiling]`; counts
    /// the attempt so the following ceiling doubles (up to `max`).
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        self.jitter(ceiling)
    }

    /// A prompt delay, drawn from `[0, min]`, for a node that asked the
    /// device to come back at once (1012 draining, 4003 resync): jitter only,
    /// so the devices of a draining node do not all arrive in the same
    /// millisecond. Still counts the attempt, so a node that keeps asking
    /// does not get a tight loop.
    pub fn prompt_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        let min = self.min;
        self.jitter(min)
    }

    /// Failed attempts since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Starts over from the smallest ceiling (after a connection that held).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    fn jitter(&mut self, ceiling: Duration) -> Duration {
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.random_range(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded(min_ms: u64, max_ms: u64, seed: u64) -> Backoff {
        Backoff::with_rng(
            Duration::from_millis(min_ms),
            Duration::from_millis(max_ms),
            StdRng::seed_from_u64(seed),
        )
    }

    #[test]
    fn ceilings_double_from_min_and_stop_at_max() {
        let mut b = seeded(500, 20_000, 1);
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(b.ceiling().as_millis());
            b.next_delay();
        }
        assert_eq!(
            ceilings,
            vec![
                500, 1000, 2000, 4000, 8000, 16000, 20000, 20000, 20000, 20000
            ]
        );
    }

    #[test]
    fn every_delay_is_within_its_ceiling_and_never_past_max() {
        for seed in 0..50 {
            let mut b = seeded(500, 20_000, seed);
            for _ in 0..200 {
                let ceiling = b.ceiling();
                let d = b.next_delay();
                assert!(d <= ceiling, "{d:?} > {ceiling:?}");
                assert!(d <= Duration::from_secs(20));
            }
            // No overflow however long the outage.
            for _ in 0..100 {
                b.next_delay();
            }
            assert_eq!(b.ceiling(), Duration::from_secs(20));
        }
    }

    #[test]
    fn delays_are_spread_over_the_whole_window() {
        // Full jitter: uniform over [0, ceiling], so about a quarter of the
        // draws fall in each quarter of the window.
        let mut b = seeded(500, 20_000, 7);
        let mut quarters = [0u32; 4];
        for _ in 0..4000 {
            b.reset();
            for _ in 0..8 {
                b.next_delay();
            }
            // Ceiling is now at the 20 s cap.
            let d = b.next_delay().as_millis();
            let q = usize::try_from(d * 4 / 20_001).unwrap();
            quarters[q] += 1;
        }
        for (i, n) in quarters.iter().enumerate() {
            assert!((800..1200).contains(n), "quarter {i}: {n} of 4000");
        }
    }

    #[test]
    fn reset_starts_over_and_prompt_stays_under_min() {
        let mut b = seeded(500, 20_000, 3);
        for _ in 0..6 {
            b.next_delay();
        }
        assert_eq!(b.attempt(), 6);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(500));
        for _ in 0..1000 {
            assert!(b.prompt_delay() <= Duration::from_millis(500));
        }
    }

    #[test]
    fn same_seed_same_delays() {
        let a: Vec<_> = {
            let mut b = seeded(100, 5000, 42);
            (0..20).map(|_| b.next_delay()).collect()
        };
        let b: Vec<_> = {
            let mut b = seeded(100, 5000, 42);
            (0..20).map(|_| b.next_delay()).collect()
        };
        assert_eq!(a, b);
    }

    #[test]
    fn max_below_min_is_raised() {
        let mut b = seeded(1000, 10, 0);
        assert_eq!(b.ceiling(), Duration::from_secs(1));
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}
