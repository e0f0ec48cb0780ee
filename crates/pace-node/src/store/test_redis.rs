//! A real `redis-server` for tests, on a free loopback port, without
//! persistence (or with an fsync-always append-only file, for tests of
//! what survives a Redis crash); stopped (by its PID) when dropped.
//!
//! Shared by the store's unit tests and the integration tests (which
//! include this file by path), so there is one launcher.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A redis-server process started by a test.
#[derive(Debug)]
pub struct TestRedis {
    /// Loopback port it listens on (kept across restarts).
    pub port: u16,
    child: Option<Child>,
    /// Directory of the append-only file, when persistent.
    aof_dir: Option<std::path::PathBuf>,
}

impl TestRedis {
    /// Starts a redis-server on a free port and waits until it answers.
    /// If another process takes the port between choosing and binding it,
    /// tries another port: a test must never talk to someone else's server.
    pub fn start() -> TestRedis {
        TestRedis::start_in(None)
    }

    /// Like [`TestRedis::start`], with every write in an append-only file
    /// in `dir`, fsynced before Redis answers: what Redis acknowledged
    /// survives [`TestRedis::stop`] (a crash) and [`TestRedis::restart`].
    pub fn start_persistent(dir: &std::path::Path) -> TestRedis {
        TestRedis::start_in(Some(dir.to_path_buf()))
    }

    fn start_in(aof_dir: Option<std::path::PathBuf>) -> TestRedis {
        for _ in 0..10 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port");
            let mut r = TestRedis {
                port,
                child: None,
                aof_dir: aof_dir.clone(),
            };
            if r.try_restart() {
                return r;
            }
        }
        panic!("could not start redis-server on a free port in 10 attempts");
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty unless persistent).
    pub fn restart(&mut self) {
        assert!(
            self.try_restart(),
            "redis-server could not start again on port {}",
            self.port
        );
    }

    /// Starts the server on this port; false when it exits at once (the
    /// port is taken), so the answering server would not be ours.
    fn try_restart(&mut self) -> bool {
        self.stop();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--protected-mode", "no"]);
        match &self.aof_dir {
            Some(dir) => cmd
                .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                .arg(dir),
            None => cmd.args(["--appendonly", "no"]),
        };
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); install it with deploy/install-deps redis")
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if self.answers() {
                // Answering, and still our process: ours.
                if let Ok(Some(_)) = child.try_wait() {
                    return false;
                }
                self.child = Some(child);
                return true;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the server answers PING.
    pub fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
