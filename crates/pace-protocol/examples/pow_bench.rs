//! Measures proof-of-work solve times per difficulty on this machine, one
//! core (what a device spends before it may join a protected room).
//!
//! `cargo run --release -p pace-protocol --example pow_bench [-- MAX_DIFFICULTY [RUNS]]`

use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let max: u8 = args.next().and_then(|a| a.parse().ok()).unwrap_or(22);
    let runs: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    println!("difficulty  runs  mean_ms  max_ms  hashes_per_s");
    for difficulty in (8..=max).step_by(2) {
        let mut total = 0f64;
        let mut worst = 0f64;
        let mut hashes = 0u64;
        for run in 0..runs {
            let prefix = format!(
                "{:032x}",
                u128::from(run) * 0x9e37_79b9_7f4a_7c15 + u128::from(difficulty)
            );
            let started = Instant::now();
            let n = pace_protocol::pow::solve(&prefix, difficulty, 0, u64::MAX).unwrap_or(0);
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            total += ms;
            worst = worst.max(ms);
            hashes += n + 1;
        }
        println!(
            "{difficulty:>10}  {runs:>4}  {:>7.1}  {worst:>6.1}  {:>12.0}",
            total / f64::from(runs),
            hashes as f64 / (total / 1000.0)
        );
    }
}
