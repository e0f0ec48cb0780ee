//! `rolling-restart` in systemd mode, against a fake `systemctl` and a
//! fake Kong admin API.

use super::*;

// --- systemd mode against a fake systemctl and a fake Kong -----------------

/// A `systemctl` stand-in: logs its arguments; `show` lists the instances
/// of `$FAKE_UNITS`; `restart` of the instance on `$FAKE_KILL_PORT`
/// SIGKILLs `$FAKE_KILL_PID` (a node this test started) and still succeeds,
/// as a unit whose process dies right after READY=1 would; `restart` of
/// `$FAKE_FAIL_PORT` fails.
const FAKE_SYSTEMCTL: &str = r#"#!/bin/sh
echo "$*" >>"$FAKE_SYSTEMCTL_LOG"
case "$1" in
  show) echo "$FAKE_UNITS" ;;
  is-active) [ "$2" = "--quiet" ] || echo active ;;
  status) echo "* $2 - fake unit"; exit 3 ;;
  restart)
    if [ "$2" = "pace-node@$FAKE_FAIL_PORT.service" ]; then
      echo "Job for $2 failed because the control process exited with error code." >&2
      exit 1
    fi
    if [ "$2" = "pace-node@$FAKE_KILL_PORT.service" ]; then kill -KILL "$FAKE_KILL_PID"; fi
    ;;
esac
exit 0
"#;

/// A Kong admin API stand-in answering `GET /upstreams/pace-nodes/health`
/// with the targets in `health` (target → HEALTHY/UNHEALTHY).
async fn fake_kong(
    health: Arc<Mutex<BTreeMap<String, String>>>,
) -> (SocketAddr, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = tokio::select! {
                () = token.cancelled() => return,
                r = listener.accept() => match r { Ok(p) => p, Err(_) => continue },
            };
            let health = health.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = match tokio::time::timeout(SOON, sock.read(&mut buf)).await {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let req = String::from_utf8_lossy(&buf[..n]);
                let (status, body) = if req.starts_with("GET /upstreams/pace-nodes/health ") {
                    let data: Vec<Value> = health
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|(t, h)| {
                            json!({"id": "x", "health": h, "target": t, "weight": 100,
                                   "upstream": {"id": "u"},
                                   "data": {"addresses": [{"health": h, "port": 1, "ip": "127.0.0.1"}]}})
                        })
                        .collect();
                    (
                        "200 OK",
                        json!({"data": data, "next": null, "node_id": "kong-1"}).to_string(),
                    )
                } else {
                    ("404 Not Found", json!({"message": "Not found"}).to_string())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (addr, stop)
}

struct FakeSystemd {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl FakeSystemd {
    fn new(units: &str) -> FakeSystemd {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let path = bin.join("systemctl");
        std::fs::write(&path, FAKE_SYSTEMCTL).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let env = vec![
            (
                "PATH".to_owned(),
                format!(
                    "{}:{}",
                    bin.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            ),
            (
                "FAKE_SYSTEMCTL_LOG".to_owned(),
                dir.path().join("calls").display().to_string(),
            ),
            ("FAKE_UNITS".to_owned(), units.to_owned()),
            ("FAKE_KILL_PORT".to_owned(), "0".to_owned()),
            ("FAKE_KILL_PID".to_owned(), "0".to_owned()),
            ("FAKE_FAIL_PORT".to_owned(), "0".to_owned()),
        ];
        FakeSystemd { dir, env }
    }

    fn set(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd =
            tokio::process::Command::new(repo().join("pm2-equivalent-systemd/rolling-restart"));
        cmd.args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("PACE_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// The `systemctl restart` calls so far, and clears the log.
    fn take_restarts(&self) -> Vec<String> {
        let path = self.dir.path().join("calls");
        let calls = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        calls
            .lines()
            .filter(|l| l.starts_with("restart "))
            .map(|l| l.trim_start_matches("restart ").to_owned())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_systemd_refuses_with_a_node_down_and_stops_at_the_first_failure() {
    let nodes: Vec<NodeProcess> = (0..3).map(|_| NodeProcess::spawn(&[])).collect();
    for n in &nodes {
        TestNode::external(n.addr).wait_ready().await;
    }
    let ports: Vec<String> = nodes.iter().map(|n| n.addr.port().to_string()).collect();
    let unit = |p: &String| format!("pace-node@{p}.service");
    let list = ports.join(",");
    let mut sd = FakeSystemd::new(&format!(
        "network-online.target {} {} {}",
        unit(&ports[2]),
        unit(&ports[0]),
        unit(&ports[1])
    ));

    // Which instances: pace.target's Wants=, in port order.
    let (code, out, err) = run(sd.command(&["--no-gateway", "--dry-run"]), SOON).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let mut sorted = ports.clone();
    sorted.sort_by_key(|p| p.parse::<u16>().unwrap());
    let want: Vec<String> = sorted
        .iter()
        .map(|p| format!("systemctl restart {}", unit(p)))
        .collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), want, "{err}");

    // Usage errors exit 2 and say what is missing.
    let (code, _, err) = run(sd.command(&["--instances", &list]), SOON).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--haproxy-stats"), "{err}");
    let (code, _, err) = run(sd.command(&["--instances", "80x1", "--no-gateway"]), SOON).await;
    assert_eq!(code, 2, "{err}");

    // All well: every node restarted, in the order given.
    let (code, out, err) = run(
        sd.command(&["--instances", &list, "--no-gateway", "--ready-timeout", "5"]),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        sd.take_restarts(),
        ports.iter().map(unit).collect::<Vec<_>>()
    );

    // A node already down (nothing listens on `dead`): nothing is touched.
    let dead = free_port().to_string();
    let with_dead = format!("{},{dead},{}", ports[0], ports[2]);
    let (code, _, err) = run(
        sd.command(&[
            "--instances",
            &with_dead,
            "--no-gateway",
            "--gateway-timeout",
            "1",
        ]),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("refusing to take node {} down", ports[0])),
        "{err}"
    );
    assert!(err.contains(&format!("node {dead}: GET")), "{err}");
    assert_eq!(sd.take_restarts(), Vec::<String>::new(), "{err}");

    // systemctl fails for the second node: stop there, third untouched.
    sd.set("FAKE_FAIL_PORT", &ports[1]);
    let (code, _, err) = run(
        sd.command(&["--instances", &list, "--no-gateway"]),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("node {} did not come back", ports[1])),
        "{err}"
    );
    assert!(err.contains("1 of 3 restarted"), "{err}");
    assert_eq!(
        sd.take_restarts(),
        vec![unit(&ports[0]), unit(&ports[1])],
        "{err}"
    );
    sd.set("FAKE_FAIL_PORT", "0");

    // Kong (fake admin API): targets found by port, healthy → all restarted;
    // one target unhealthy → refuses before touching anything.
    let health = Arc::new(Mutex::new(
        ports
            .iter()
            .map(|p| (format!("127.0.0.1:{p}"), "HEALTHY".to_owned()))
            .collect::<BTreeMap<_, _>>(),
    ));
    let (kong, kong_stop) = fake_kong(health.clone()).await;
    let kong_url = format!("http://{kong}");
    let (code, _, err) = run(
        sd.command(&[
            "--instances",
            &list,
            "--kong-admin",
            &kong_url,
            "--settle",
            "0",
        ]),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("kong#0 HEALTHY"), "{err}");
    assert_eq!(sd.take_restarts().len(), 3, "{err}");
    // A target of another host (same port) is unhealthy: that is a node
    // down too, so nothing is restarted. Names are now ambiguous by port.
    health
        .lock()
        .unwrap()
        .insert(format!("10.9.9.9:{}", ports[0]), "UNHEALTHY".to_owned());
    let (code, _, err) = run(
        sd.command(&["--instances", &list, "--kong-admin", &kong_url]),
        SOON,
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("pass --gateway-host"), "{err}");
    let (code, _, err) = run(
        sd.command(&[
            "--instances",
            &list,
            "--kong-admin",
            &kong_url,
            "--gateway-host",
            "127.0.0.1",
            "--gateway-timeout",
            "1",
        ]),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("10.9.9.9:{}: UNHEALTHY", ports[0])),
        "{err}"
    );
    assert_eq!(sd.take_restarts(), Vec::<String>::new(), "{err}");
    kong_stop.cancel();

    // The second node "restarts" but its process dies (SIGKILL by the fake
    // systemctl): /ready never answers, the script stops after the ready
    // timeout, and the third node is never touched.
    sd.set("FAKE_KILL_PORT", &ports[1]);
    sd.set("FAKE_KILL_PID", &nodes[1].child.id().to_string());
    let started = Instant::now();
    let (code, _, err) = run(
        sd.command(&["--instances", &list, "--no-gateway", "--ready-timeout", "3"]),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("node {} is not ready", ports[1])),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(30), "bounded wait");
    assert_eq!(
        sd.take_restarts(),
        vec![unit(&ports[0]), unit(&ports[1])],
        "{err}"
    );
    assert!(is_ready(nodes[0].addr).await && is_ready(nodes[2].addr).await);
}
