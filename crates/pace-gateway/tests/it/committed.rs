//! The example files committed under `kong/` are exactly what the generator
//! prints for the 3-node loopback cluster (so the docs never drift from the
//! code), and HAProxy accepts both the committed and freshly rendered config.

use pace_gateway::{HaproxyOptions, KongOptions, render_haproxy, render_kong};

use crate::support::{haproxy_check, kong_dir_file, three_loopback_nodes};

/// Options the committed `kong/haproxy.cfg` was generated with.
fn committed_haproxy_options() -> HaproxyOptions {
    HaproxyOptions {
        stats_bind: Some("127.0.0.1:8404".to_owned()),
        ..HaproxyOptions::default()
    }
}

fn read(name: &str) -> String {
    let path = kong_dir_file(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn committed_kong_yml_is_current() {
    let want = render_kong(&three_loopback_nodes(), &KongOptions::default()).unwrap();
    assert!(
        read("kong.yml") == want,
        "kong/kong.yml is stale; regenerate it with:\n  pace-node gateway kong --node 127.0.0.1:8081 --node 127.0.0.1:8082 --node 127.0.0.1:8083 > kong/kong.yml"
    );
}

#[test]
fn committed_haproxy_cfg_is_current_and_valid() {
    let want = render_haproxy(&three_loopback_nodes(), &committed_haproxy_options()).unwrap();
    assert!(
        read("haproxy.cfg") == want,
        "kong/haproxy.cfg is stale; regenerate it with:\n  pace-node gateway haproxy --node 127.0.0.1:8081 --node 127.0.0.1:8082 --node 127.0.0.1:8083 --stats-bind 127.0.0.1:8404 > kong/haproxy.cfg"
    );
    haproxy_check(&kong_dir_file("haproxy.cfg"));
}

#[test]
fn rendered_haproxy_configs_pass_haproxy_check() {
    let dir = tempfile::tempdir().unwrap();
    let weighted = pace_gateway::Topology::from_args(
        &[
            "127.0.0.1:8081".to_owned(),
            "127.0.0.1:8082".to_owned(),
            "[::1]:8083".to_owned(),
        ],
        Some("100,300,65535"),
    )
    .unwrap();
    for (i, (topology, options)) in [
        (three_loopback_nodes(), HaproxyOptions::default()),
        (three_loopback_nodes(), committed_haproxy_options()),
        (weighted, HaproxyOptions::default()),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.path().join(format!("haproxy-{i}.cfg"));
        std::fs::write(&path, render_haproxy(&topology, &options).unwrap()).unwrap();
        haproxy_check(&path);
    }
}
