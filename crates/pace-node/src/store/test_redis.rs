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

    /// Starts a redis-server on `port` (chosen free by the caller, e.g. for
    /// a node that was told to use it before it runs).
    pub fn start_on_port(port: u16) -> TestRedis {
        let mut r = TestRedis {
            port,
            child: None,
            aof_dir: None,
        };
        r.restart();
        r
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

/// A real Redis Cluster for tests: 3 masters and 3 replicas (one each),
/// every process on loopback ports of a [`PortBlock`] (client and
/// cluster-bus ports), without persistence, created with
/// `redis-cli --cluster create`; every process stopped (by its PID) when
/// dropped.
#[derive(Debug)]
pub struct TestRedisCluster {
    /// The client ports of the six processes, in start order.
    pub ports: Vec<u16>,
    children: Vec<Option<Child>>,
    dir: std::path::PathBuf,
    block: PortBlock,
}

/// Loopback ports reserved for one test cluster, below the kernel's
/// ephemeral range (so no `bind(…:0)` of any process hands them out) and
/// claimed with a lock file (so two test processes never share a block).
///
/// Why: a test that SIGKILLs a cluster node frees its ports while the
/// other nodes keep calling its cluster-bus port. Were that port handed
/// to a node of another test's cluster, the two clusters would gossip
/// into one another (foreign masters in `CLUSTER NODES`, `CLUSTERDOWN`,
/// no failover): concurrent failover tests failed that way.
#[derive(Debug)]
struct PortBlock {
    ports: Vec<u16>,
    lock: std::path::PathBuf,
}

/// Ports per block: 6 processes × (client, cluster bus).
const BLOCK: u16 = 12;
/// The blocks' range: [`BLOCK_FIRST`], below the ephemeral ports (32768
/// on Linux by default).
const BLOCK_FIRST: u16 = 12000;
const BLOCKS: u16 = (32000 - BLOCK_FIRST) / BLOCK;

impl PortBlock {
    fn reserve() -> PortBlock {
        let seed = u64::from(std::process::id())
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos().into())
                .unwrap_or(0);
        for attempt in 0..u64::from(BLOCKS) {
            let index =
                ((seed.wrapping_mul(2_654_435_761) + attempt * 7) % u64::from(BLOCKS)) as u16;
            let lock = std::env::temp_dir().join(format!("pace-redis-ports-{index}.lock"));
            if !claim(&lock) {
                continue;
            }
            let first = BLOCK_FIRST + index * BLOCK;
            let ports: Vec<u16> = (first..first + BLOCK).collect();
            if ports
                .iter()
                .all(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
            {
                return PortBlock { ports, lock };
            }
            let _ = std::fs::remove_file(&lock);
        }
        panic!("no free block of {BLOCK} loopback ports for a redis cluster");
    }
}

/// Creates `lock` holding this process's id; a lock left by a process
/// that no longer runs is taken over.
fn claim(lock: &std::path::Path) -> bool {
    let mine = std::process::id().to_string();
    for _ in 0..2 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(lock)
        {
            Ok(mut f) => return f.write_all(mine.as_bytes()).is_ok(),
            Err(_) => {
                let owner = std::fs::read_to_string(lock).unwrap_or_default();
                let owner = owner.trim();
                if owner.is_empty() || std::path::Path::new(&format!("/proc/{owner}")).exists() {
                    return false;
                }
                let _ = std::fs::remove_file(lock);
            }
        }
    }
    false
}

impl Drop for PortBlock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.lock);
    }
}

/// How long a cluster node may be silent before the others fail it over.
pub const CLUSTER_NODE_TIMEOUT_MS: u64 = 1000;

fn free_loopback_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Runs `redis-cli -p PORT args…` and returns its standard output.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}); install redis-tools"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl TestRedisCluster {
    /// Starts six redis-server processes in cluster mode, joins them into
    /// 3 masters + 3 replicas and waits until the cluster is healthy and
    /// every replica is in sync.
    pub fn start() -> TestRedisCluster {
        for _ in 0..5 {
            let mut c = TestRedisCluster::unstarted();
            if c.launch() {
                return c;
            }
        }
        panic!("could not start a 3 + 3 redis cluster in 5 attempts");
    }

    /// A cluster whose ports are reserved (so [`TestRedisCluster::url`]
    /// is known) but whose processes are not started yet: for a node
    /// started before its Redis Cluster. [`TestRedisCluster::launch`]
    /// starts it.
    pub fn unstarted() -> TestRedisCluster {
        let dir = std::env::temp_dir().join(format!(
            "pace-redis-cluster-{}-{}",
            std::process::id(),
            free_loopback_port()
        ));
        let block = PortBlock::reserve();
        TestRedisCluster {
            ports: block.ports[..6].to_vec(),
            children: (0..6).map(|_| None).collect(),
            dir,
            block,
        }
    }

    /// Starts the six processes on the reserved ports (stopping any that
    /// run), creates the cluster and waits until it is healthy; false when
    /// that failed (the caller may try again on the same ports).
    pub fn launch(&mut self) -> bool {
        for i in 0..self.children.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if std::fs::create_dir_all(&self.dir).is_err() {
            return false;
        }
        for i in 0..6 {
            let (port, bus) = (self.block.ports[i], self.block.ports[6 + i]);
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus.to_string(),
                ])
                .args([
                    "--cluster-node-timeout",
                    &CLUSTER_NODE_TIMEOUT_MS.to_string(),
                ])
                // The healthy shards keep serving while one fails over
                // (the default refuses every command cluster-wide with
                // CLUSTERDOWN until the dead master is replaced).
                .args(["--cluster-require-full-coverage", "no"])
                .arg("--cluster-config-file")
                .arg(self.dir.join(format!("nodes-{port}.conf")))
                .arg("--dir")
                .arg(&self.dir)
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start redis-server ({e}); install it with deploy/install-deps redis"
                    )
                });
            self.children[i] = Some(child);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for i in 0..6 {
            while !self.answers(i) {
                if Instant::now() >= deadline || self.exited(i) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&hosts)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        matches!(created, Ok(s) if s.success()) && self.wait_healthy(Duration::from_secs(30))
    }

    /// `redis-cluster://` with every process as a seed.
    pub fn url(&self) -> String {
        self.url_with_seeds(&self.ports)
    }

    /// `redis-cluster://` listing `seeds` (the first in the authority,
    /// the others as `?node=` parameters).
    pub fn url_with_seeds(&self, seeds: &[u16]) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", seeds[0]);
        for (i, p) in seeds[1..].iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{p}"));
        }
        url
    }

    fn exited(&mut self, i: usize) -> bool {
        match self.children[i].as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(Some(_))),
            None => true,
        }
    }

    /// Whether process `i` answers PING.
    pub fn answers(&self, i: usize) -> bool {
        TestRedis {
            port: self.ports[i],
            child: None,
            aof_dir: None,
        }
        .answers()
    }

    /// The running processes' indexes.
    fn alive(&self) -> Vec<usize> {
        (0..self.ports.len())
            .filter(|&i| self.children[i].is_some())
            .collect()
    }

    /// Waits until every running process says `cluster_state:ok` and every
    /// running replica's link to its master is up.
    pub fn wait_healthy(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let ok = self.alive().into_iter().all(|i| {
                let info = redis_cli(self.ports[i], &["CLUSTER", "INFO"]);
                let repl = redis_cli(self.ports[i], &["INFO", "replication"]);
                info.contains("cluster_state:ok")
                    && (repl.contains("role:master") || repl.contains("master_link_status:up"))
            });
            if ok {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// The index of the process that is the master of `key`'s slot, as the
    /// first running process sees the topology.
    pub fn master_of(&self, key: &str) -> usize {
        let any = self.alive()[0];
        let slot: u16 = redis_cli(self.ports[any], &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("a slot number");
        let nodes = redis_cli(self.ports[any], &["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let owns = fields[8..].iter().any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if lo <= slot && slot <= hi)
            });
            if owns {
                let port: u16 = fields[1]
                    .split(['@', ','])
                    .next()
                    .and_then(|a| a.rsplit_once(':'))
                    .and_then(|(_, p)| p.parse().ok())
                    .expect("a node address");
                return self
                    .ports
                    .iter()
                    .position(|&p| p == port)
                    .expect("one of ours");
            }
        }
        panic!("no live master owns slot {slot}");
    }

    /// The indexes of the processes replicating master `i`, as it sees
    /// them (`INFO replication`).
    pub fn replicas_of(&self, i: usize) -> Vec<usize> {
        redis_cli(self.ports[i], &["INFO", "replication"])
            .lines()
            .filter(|l| l.starts_with("slave") && l.contains("port="))
            .filter_map(|l| {
                let port: u16 = l.split("port=").nth(1)?.split(',').next()?.parse().ok()?;
                self.ports.iter().position(|&p| p == port)
            })
            .collect()
    }

    /// Waits (up to `limit`) until every replica of master `i` has
    /// acknowledged everything the master wrote so far (their replication
    /// offsets reached the master's), so that a failover right after
    /// loses nothing written before. Redis replication is asynchronous:
    /// without this, a SIGKILL a few milliseconds after a write may lose
    /// it (a test of failover routing that finds its room gone is testing
    /// replication lag). Returns whether they caught up.
    pub fn wait_replicated(&self, i: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let info = redis_cli(self.ports[i], &["INFO", "replication"]);
            let master: Option<u64> = info
                .lines()
                .find_map(|l| l.strip_prefix("master_repl_offset:")?.trim().parse().ok());
            // `slave0:ip=…,port=…,state=online,offset=N,lag=0`
            let replicas: Vec<u64> = info
                .lines()
                .filter(|l| l.starts_with("slave"))
                .filter_map(|l| {
                    l.split(',')
                        .find_map(|kv| kv.strip_prefix("offset=")?.trim().parse().ok())
                })
                .collect();
            if let Some(master) = master
                && !replicas.is_empty()
                && replicas.iter().all(|&r| r >= master)
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills process `i` with SIGKILL (as a crash would).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestRedisCluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
