//! A cluster for one test: a real redis-server (the node crate's test
//! launcher, included by path) and N `pace-node` processes over it,
//! sharing one admission key set. Everything is stopped by PID on drop.

use std::path::PathBuf;
use std::process::Command;

use crate::node::{Node, node_binary};

#[path = "../../../crates/pace-node/src/store/test_redis.rs"]
mod test_redis;
pub use test_redis::TestRedis;

/// Redis and the nodes; the nodes stop first (fields drop in order).
#[derive(Debug)]
pub struct Cluster {
    /// The nodes, `node-0` … `node-(n-1)`.
    pub nodes: Vec<Node>,
    /// Their store.
    pub redis: TestRedis,
    dir: PathBuf,
}

impl Cluster {
    /// Starts Redis and `n` nodes with `extra` serve flags each.
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        let redis = TestRedis::start();
        let dir = std::env::temp_dir().join(format!(
            "pace-loadtest-it-cluster-{}-{}",
            std::process::id(),
            redis.port
        ));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let keys = dir.join("keys.json");
        let out = Command::new(node_binary())
            .args(["keys", "generate", "--out"])
            .arg(&keys)
            .output()
            .expect("run pace-node keys generate");
        assert!(
            out.status.success(),
            "keys generate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (url, keys) = (redis.url(), keys.to_string_lossy().into_owned());
        let nodes = (0..n)
            .map(|i| {
                let id = format!("node-{i}");
                let data = dir.join(&id).to_string_lossy().into_owned();
                let mut args = vec![
                    "--redis",
                    &url,
                    "--keys",
                    &keys,
                    "--node-id",
                    &id,
                    "--data-dir",
                    &data,
                    "--node-ttl",
                    "2s",
                ];
                args.extend_from_slice(extra);
                Node::start_with(2_000, &args)
            })
            .collect();
        Cluster { nodes, redis, dir }
    }

    /// The nodes' base URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.base.clone()).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Nodes first (they would log Redis errors otherwise), then Redis.
        self.nodes.clear();
        self.redis.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
