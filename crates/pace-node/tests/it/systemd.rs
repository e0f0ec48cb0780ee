//! The systemd units in `pm2-equivalent-systemd/` and the node's side of
//! the contract: `systemd-analyze verify` accepts the units without a single
//! warning, the unit's limits fit the node's defaults, the example
//! environment file names every `PACE_*` variable, and the real binary sends
//! READY=1, WATCHDOG=1 and STOPPING=1 on a notify socket as `Type=notify` and
//! `WatchdogSec=` expect.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::net::UnixDatagram;

use crate::drain::NodeProcess;
use crate::support::*;

/// Where the units live, from this crate's manifest directory.
fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pm2-equivalent-systemd")
}

fn read_unit(name: &str) -> String {
    let path = units_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The value of `key=` in a unit file (the last assignment wins, as in
/// systemd).
fn directive<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .next_back()
        .map(str::trim)
}

/// The installed path of the binary in the units, replaced by the test build.
const INSTALLED_BIN: &str = "/usr/local/bin/pace-node";
/// The configuration directory in the units, replaced by a temp directory.
const INSTALLED_ETC: &str = "/etc/pace/";

#[test]
fn units_pass_systemd_analyze_verify_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let etc = format!("{}/", dir.path().display());
    let bin = env!("CARGO_BIN_EXE_pace-node");
    // verify checks that every Exec*= binary exists: point them at the
    // binary under test, and the environment files at the temp dir.
    let template = read_unit("pace-node@.service");
    assert!(
        template.matches(INSTALLED_BIN).count() >= 2,
        "ExecStartPre and ExecStart"
    );
    assert!(template.contains(INSTALLED_ETC));
    let template = template
        .replace(INSTALLED_BIN, bin)
        .replace(INSTALLED_ETC, &etc);
    std::fs::write(dir.path().join("pace-node@.service"), template).unwrap();
    std::fs::write(dir.path().join("pace.target"), read_unit("pace.target")).unwrap();
    std::fs::write(dir.path().join("pace.env"), read_unit("pace.env.example")).unwrap();
    // An instance name, as systemctl would load it.
    std::os::unix::fs::symlink(
        "pace-node@.service",
        dir.path().join("pace-node@8081.service"),
    )
    .unwrap();

    let analyze = ["systemd-analyze", "/usr/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok())
        .expect("systemd-analyze not found; install it with deploy/install-deps systemd");
    // --recursive-errors=yes also verifies what the units pull in (the
    // target loads the three instances); --man=no skips man-page lookups of
    // Documentation=; --generators=no keeps the host's generators out.
    let started = Instant::now();
    let out = Command::new(analyze)
        .current_dir(dir.path())
        .args([
            "verify",
            "--man=no",
            "--generators=no",
            "--recursive-errors=yes",
            "./pace-node@8081.service",
            "./pace.target",
        ])
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "systemd-analyze verify ({:?}, {:?}):\n{stdout}{stderr}",
        out.status,
        started.elapsed()
    );
}

#[test]
fn unit_limits_fit_the_node_defaults() {
    let unit = read_unit("pace-node@.service");
    let defaults = pace_node::NodeConfig::defaults();
    let seconds = |key: &str| {
        let value = directive(&unit, key).unwrap_or_else(|| panic!("{key}= missing"));
        humantime::parse_duration(value).unwrap_or_else(|e| panic!("{key}={value}: {e}"))
    };
    let stop = seconds("TimeoutStopSec");
    assert!(
        stop >= defaults.limits.drain_grace + Duration::from_secs(5),
        "TimeoutStopSec={stop:?} must outlast the drain grace {:?}",
        defaults.limits.drain_grace
    );
    let watchdog = seconds("WatchdogSec");
    assert!(
        watchdog >= Duration::from_secs(2),
        "WatchdogSec={watchdog:?} too tight"
    );
    let nofile: u64 = directive(&unit, "LimitNOFILE").unwrap().parse().unwrap();
    assert!(
        defaults.limits.max_connections as u64 + 256 <= nofile,
        "LimitNOFILE={nofile} below --max-connections {} + 256",
        defaults.limits.max_connections
    );
    for (key, want) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("KillSignal", "SIGTERM"),
        ("Restart", "on-failure"),
        ("ExecStart", "/usr/local/bin/pace-node serve"),
        ("ExecStartPre", "/usr/local/bin/pace-node check-config"),
        ("PartOf", "pace.target"),
    ] {
        assert_eq!(directive(&unit, key), Some(want), "{key}=");
    }
}

/// The `PACE_*` variables `pace-node serve --help` lists.
fn pace_variables() -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_pace-node"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let vars: Vec<String> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect();
    assert!(vars.len() >= 20, "{vars:?}");
    vars
}

#[test]
fn env_example_names_every_variable_and_needs_a_service_key() {
    let example = read_unit("pace.env.example");
    for var in pace_variables() {
        assert!(
            example.contains(&format!("{var}=")),
            "{var} missing from pace.env.example"
        );
    }
    // What systemd would pass: the assignments that are not commented out.
    let assigned: Vec<(&str, &str)> = example
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            l.split_once('=')
                .unwrap_or_else(|| panic!("not KEY=VALUE: {l:?}"))
        })
        .collect();
    let check = |key: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pace-node"));
        cmd.arg("check-config")
            .env_clear()
            .envs(assigned.iter().copied());
        if let Some(key) = key {
            cmd.env("PACE_SERVICE_KEY", key);
        }
        cmd.output().unwrap()
    };
    // As shipped, the key is empty: the unit's check-config refuses to start.
    let out = check(None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PACE_SERVICE_KEY"));
    let out = check(Some(KEY));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Receives the next notification (one datagram, newline-separated
/// assignments) within `wait`.
async fn next_notification(socket: &UnixDatagram, wait: Duration) -> Option<String> {
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(wait, socket.recv(&mut buf))
        .await
        .ok()?
        .unwrap();
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn has(message: &str, assignment: &str) -> bool {
    message.lines().any(|l| l == assignment)
}

/// Starts the real binary as systemd would with `Type=notify` and
/// `WatchdogSec=`: `NOTIFY_SOCKET` and `WATCHDOG_USEC` set. systemd also sets
/// `WATCHDOG_PID` to the main PID; sd-notify accepts it absent (it cannot be
/// known before the spawn), so it is removed here.
fn spawn_under_notify(socket: &Path, watchdog: Duration) -> NodeProcess {
    let mut cmd = NodeProcess::command(&["--drain-grace", "3s"]);
    cmd.env("NOTIFY_SOCKET", socket)
        .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
        .env_remove("WATCHDOG_PID");
    NodeProcess::start(cmd)
}

#[tokio::test]
async fn notifies_ready_watchdog_and_stopping_like_type_notify_expects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let started = Instant::now();
    let mut proc = spawn_under_notify(&path, Duration::from_millis(200));

    // READY=1 comes first, and only once the node really is ready.
    let first = next_notification(&socket, SOON)
        .await
        .expect("no READY=1 within 5 s");
    assert!(has(&first, "READY=1"), "first notification: {first:?}");
    let ready_after = started.elapsed();
    let (status, body) = http(proc.addr, "GET", "/ready", &[], "").await.unwrap();
    assert_eq!(status, 200, "READY=1 sent before /ready: {body}");

    // WATCHDOG=1 every WATCHDOG_USEC/2 (100 ms): at least 2 within 1 s.
    let window = Instant::now();
    let mut pings = 0;
    while window.elapsed() < Duration::from_secs(1) {
        let left = Duration::from_secs(1).saturating_sub(window.elapsed());
        match next_notification(&socket, left).await {
            Some(m) if has(&m, "WATCHDOG=1") => pings += 1,
            Some(m) => panic!("unexpected notification while serving: {m:?}"),
            None => break,
        }
    }
    assert!(
        pings >= 2,
        "{pings} WATCHDOG=1 in 1 s with WATCHDOG_USEC=200000"
    );

    // SIGTERM: STOPPING=1 (watchdog pings may come before it), then a clean exit.
    proc.signal("-TERM");
    let stop = Instant::now();
    loop {
        let left = SOON.saturating_sub(stop.elapsed());
        let m = next_notification(&socket, left)
            .await
            .expect("no STOPPING=1 within 5 s");
        if has(&m, "STOPPING=1") {
            break;
        }
        assert!(
            has(&m, "WATCHDOG=1"),
            "unexpected notification while stopping: {m:?}"
        );
    }
    let exit = loop {
        if let Some(status) = proc.child.try_wait().unwrap() {
            break status;
        }
        assert!(stop.elapsed() < SOON, "node did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit:?}");
    eprintln!(
        "READY=1 after {ready_after:?}, {pings} watchdog pings in 1 s, stopped in {:?}",
        stop.elapsed()
    );
}
