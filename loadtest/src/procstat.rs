//! Reads a node process's memory and CPU time from Linux `/proc`, for the
//! exact per-device memory and CPU-per-delivery numbers (`--node-pid`).
//!
//! `/proc/PID/status` gives the resident set (`VmRSS`, in KiB);
//! `/proc/PID/stat` gives user and system CPU time in clock ticks (fields 14
//! and 15, counted after the parenthesised command name, which may itself
//! contain spaces and parentheses).

use std::time::Duration;

use anyhow::{Context, anyhow};

/// Resident set size in bytes from the text of `/proc/PID/status`.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    let unit = parts.next().unwrap_or("kB");
    let factor = match unit {
        "kB" | "KB" | "KiB" => 1024,
        "mB" | "MB" | "MiB" => 1024 * 1024,
        "B" => 1,
        _ => return None,
    };
    Some(value * factor)
}

/// CPU time a process has used, split as the kernel accounts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// In user space (the program's own code).
    pub user: Duration,
    /// In the kernel on the process's behalf (syscalls: socket writes and,
    /// on loopback, the receiving side's TCP processing too).
    pub system: Duration,
}

impl CpuTimes {
    /// `user + system`.
    pub fn total(self) -> Duration {
        self.user + self.system
    }

    /// `self − earlier`, field by field, never negative.
    pub fn since(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

impl std::iter::Sum for CpuTimes {
    fn sum<I: Iterator<Item = CpuTimes>>(iter: I) -> CpuTimes {
        iter.fold(CpuTimes::default(), |a, b| CpuTimes {
            user: a.user + b.user,
            system: a.system + b.system,
        })
    }
}

/// `(utime, stime)` in clock ticks from the text of `/proc/PID/stat`.
pub fn parse_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    // The command name is `(...)` and may contain anything, so split at the
    // LAST ')'. After it come field 3 (state) onwards.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some((utime, stime))
}

/// One counter from the text of `/proc/net/netstat` (or `/proc/net/snmp`):
/// lines come in pairs, `Group: name name …` then `Group: value value …`.
pub fn parse_netstat(text: &str, group: &str, counter: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let names = names[prefix.len()..].split_whitespace();
        let mut values = values[prefix.len()..].split_whitespace();
        for name in names {
            let value = values.next()?;
            if name == counter {
                return value.parse().ok();
            }
        }
    }
    None
}

/// How many times, machine-wide, a listening socket's accept queue was full
/// and a connection attempt was dropped (`TcpExt: ListenOverflows`). Each
/// such drop costs the client a SYN retransmission: one second or more of
/// connect latency. `None` where `/proc/net/netstat` is unreadable.
pub fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    parse_netstat(&text, "TcpExt", "ListenOverflows")
}

/// Resident set size of `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss(&text).ok_or_else(|| anyhow!("no VmRSS line in {path}"))
}

/// CPU time `pid` has used so far.
pub fn cpu_time(pid: u32, clock_ticks_per_sec: u64) -> anyhow::Result<CpuTimes> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let (user, system) = parse_cpu_ticks(&text).ok_or_else(|| anyhow!("cannot parse {path}"))?;
    Ok(CpuTimes {
        user: ticks_to_duration(user, clock_ticks_per_sec),
        system: ticks_to_duration(system, clock_ticks_per_sec),
    })
}

/// Converts clock ticks to a duration (`ticks / CLK_TCK` seconds).
pub fn ticks_to_duration(ticks: u64, clock_ticks_per_sec: u64) -> Duration {
    let hz = clock_ticks_per_sec.max(1);
    Duration::from_micros(ticks.saturating_mul(1_000_000) / hz)
}

/// The kernel's `CLK_TCK` (`getconf CLK_TCK`), or 100 — its value on every
/// mainstream Linux — when `getconf` is unavailable. Read once per run.
pub fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&hz: &u64| hz > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tpace-node\nUmask:\t0022\nState:\tS (sleeping)\n\
        VmPeak:\t  123456 kB\nVmSize:\t  120000 kB\nVmHWM:\t    9000 kB\n\
        VmRSS:\t    8192 kB\nRssAnon:\t    4096 kB\nThreads:\t3\n";

    #[test]
    fn vm_rss_in_bytes() {
        assert_eq!(parse_vm_rss(STATUS), Some(8192 * 1024));
    }

    #[test]
    fn vm_rss_missing_for_kernel_threads() {
        // Kernel threads and zombies have no Vm* lines.
        assert_eq!(
            parse_vm_rss("Name:\tkthreadd\nState:\tS (sleeping)\n"),
            None
        );
        assert_eq!(parse_vm_rss("VmRSS:\tlots kB\n"), None);
    }

    #[test]
    fn vm_rss_does_not_match_rss_anon() {
        assert_eq!(
            parse_vm_rss("RssAnon:\t4 kB\nVmRSS:\t12 kB\n"),
            Some(12 * 1024)
        );
    }

    #[test]
    fn cpu_ticks_simple() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime ...
        let stat = "4242 (pace-node) S 1 4242 4242 0 -1 4194560 1500 0 0 0 250 75 0 0 20 0 3 0 100 1000000 2000 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some((250, 75)));
    }

    #[test]
    fn cpu_ticks_with_hostile_command_name() {
        // A comm with spaces and a ')' must not shift the fields.
        let stat = "77 (we ird) S (x) R 1 77 77 0 -1 0 0 0 0 0 11 22 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some((11, 22)));
    }

    #[test]
    fn cpu_ticks_truncated_is_none() {
        assert_eq!(parse_cpu_ticks("1 (x) S 1 2 3"), None);
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn cpu_times_arithmetic() {
        let ms = Duration::from_millis;
        let a = CpuTimes {
            user: ms(10),
            system: ms(30),
        };
        let b = CpuTimes {
            user: ms(15),
            system: ms(20),
        };
        assert_eq!(a.total(), ms(40));
        assert_eq!(
            b.since(a),
            CpuTimes {
                user: ms(5),
                system: ms(0)
            }
        );
        assert_eq!(
            [a, b].into_iter().sum::<CpuTimes>(),
            CpuTimes {
                user: ms(25),
                system: ms(50)
            }
        );
    }

    #[test]
    fn ticks_convert_with_clk_tck() {
        assert_eq!(ticks_to_duration(250, 100), Duration::from_millis(2500));
        assert_eq!(ticks_to_duration(1, 1000), Duration::from_millis(1));
        assert_eq!(
            ticks_to_duration(5, 0),
            Duration::from_secs(5),
            "0 Hz treated as 1"
        );
    }

    #[test]
    fn netstat_pairs() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\n\
                    TcpExt: 0 329 330\n\
                    IpExt: InNoRoutes ListenOverflows\n\
                    IpExt: 1 2\n";
        assert_eq!(parse_netstat(text, "TcpExt", "ListenOverflows"), Some(329));
        assert_eq!(parse_netstat(text, "TcpExt", "ListenDrops"), Some(330));
        assert_eq!(parse_netstat(text, "IpExt", "ListenOverflows"), Some(2));
        assert_eq!(parse_netstat(text, "TcpExt", "Nope"), None);
        assert_eq!(
            parse_netstat("TcpExt: A B\n", "TcpExt", "A"),
            None,
            "no value line"
        );
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).expect("own rss") > 0);
        cpu_time(pid, clock_ticks_per_sec()).expect("own cpu time");
        assert!(clock_ticks_per_sec() > 0);
    }
}
