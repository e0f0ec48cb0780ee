//! Admin accounts and login: `pace-node admin` (the real binary, password
//! on stdin) creates tenants and users in a data dir or a real Redis while
//! nodes run; `POST /api/v1/admin/login` hands out admin tokens, refuses
//! wrong credentials with one answer, limits failed attempts per account
//! across nodes, and never shows a password or hash in a response or a
//! log line.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use pace_node::accounts::verify_admin_token;
use pace_node::admission::KeySet;
use serde_json::{Value, json};

use crate::support::*;

const PASSWORD: &str = "correct horse battery staple 42";
const BOB_PASSWORD: &str = "bobs own long password";

/// One HTTP answer: status, the headers that matter here, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// Every answer a test got, to check none leaks a secret.
#[derive(Default)]
struct Seen(Mutex<Vec<String>>);

impl Seen {
    fn all(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }
}

async fn login(addr: SocketAddr, seen: &Seen, body: Value) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/api/v1/admin/login")
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = tokio::time::timeout(SOON, sender.send_request(req))
        .await
        .expect("login answered")
        .unwrap();
    let status = resp.status().as_u16();
    let headers = format!("{:?}", resp.headers());
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    seen.0
        .lock()
        .unwrap()
        .push(format!("{status} {headers} {body}"));
    Answer {
        status,
        retry_after,
        body,
    }
}

fn creds(tenant: &str, user: &str, password: &str) -> Value {
    json!({"tenant": tenant, "user": user, "password": password})
}

/// `pace-node admin ARGS` with `stdin` as standard input.
fn admin(args: &[&str], store: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pace-node"))
        .arg("admin")
        .args(args)
        .args(store)
        .env_remove("PACE_REDIS_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Creates tenant `acme` with users alice and bob through the CLI.
fn create_accounts(store: &[&str]) -> String {
    let mut log = String::new();
    for (args, stdin) in [
        (
            &[
                "add-tenant",
                "acme",
                "--name",
                "Acme",
                "--origin",
                "https://shop.acme.example",
            ][..],
            String::new(),
        ),
        (
            &["add-user", "--tenant", "acme", "alice"][..],
            format!("{PASSWORD}\n"),
        ),
        (
            &["add-user", "--tenant", "acme", "bob"][..],
            format!("{BOB_PASSWORD}\n"),
        ),
    ] {
        let out = admin(args, store, &stdin);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        log.push_str(&text(&out));
    }
    log
}

/// The login story on one node: right password, wrong password, unknown
/// user and tenant (one answer), then the attempt limit.
async fn login_story(addr: SocketAddr, keys: &KeySet, seen: &Seen) {
    let ok = login(addr, seen, creds("acme", "alice", PASSWORD)).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let token = ok.json()["token"].as_str().unwrap().to_owned();
    let claims = verify_admin_token(keys, &token).unwrap();
    assert_eq!(claims.tenant.as_str(), "acme");
    assert_eq!(claims.sub.as_str(), "alice");
    assert_eq!(claims.aud, "pace/admin");
    assert_eq!(ok.json()["expires_at"].as_u64(), Some(claims.exp));
    assert_eq!(
        claims.exp - claims.iat,
        15 * 60,
        "default --admin-token-ttl"
    );

    let wrong = login(addr, seen, creds("acme", "alice", "not the password")).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"]["code"], "invalid_credentials");
    for other in [
        creds("acme", "nobody", PASSWORD),
        creds("nobody", "alice", PASSWORD),
        creds("bad tenant", "alice", PASSWORD),
    ] {
        let a = login(addr, seen, other.clone()).await;
        assert_eq!((a.status, &a.body), (401, &wrong.body), "{other}");
    }
    let bad = login(addr, seen, json!({"tenant": "acme", "user": "alice"})).await;
    assert_eq!(bad.status, 400);

    // alice has one failure; four more make five, all 401.
    for _ in 0..4 {
        let a = login(addr, seen, creds("acme", "alice", "guess guess guess")).await;
        assert_eq!(a.status, 401, "{}", a.body);
    }
    // The sixth: refused without checking, until the window ends.
    let limited = login(addr, seen, creds("acme", "alice", "guess guess guess")).await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert_eq!(limited.json()["error"]["code"], "too_many_attempts");
    assert_eq!(limited.json()["error"]["retryable"], true);
    let secs: u64 = limited.retry_after.as_deref().unwrap().parse().unwrap();
    assert!((840..=900).contains(&secs), "Retry-After {secs}");
    let right = login(addr, seen, creds("acme", "alice", PASSWORD)).await;
    assert_eq!(right.status, 429, "the right password is refused too");
    // Another account of the tenant is not affected.
    let bob = login(addr, seen, creds("acme", "bob", BOB_PASSWORD)).await;
    assert_eq!(bob.status, 200, "{}", bob.body);
}

fn assert_no_secrets(what: &str, text: &str) {
    for secret in [PASSWORD, BOB_PASSWORD, "$argon2", "argon2id"] {
        assert!(
            !text.contains(secret),
            "{what} contains {secret:?}:\n{text}"
        );
    }
}

#[tokio::test]
async fn cli_adds_accounts_to_a_running_node_and_logins_are_limited() {
    let data = scratch_dir();
    let node = TestNode::start_with(|c| c.store.data_dir = data.clone()).await;
    // Written by the CLI while the node runs; the node re-reads the file.
    let d = data.to_string_lossy().into_owned();
    let cli = create_accounts(&["--data-dir", &d]);
    let keys = KeySet::load(data.join("keys.json")).unwrap();
    let seen = Seen::default();
    login_story(node.addr, &keys, &seen).await;

    assert_eq!(
        node.metric(r#"pace_admin_logins_total{result="ok"}"#).await,
        2.0
    );
    assert_eq!(
        node.metric(r#"pace_admin_logins_total{result="invalid"}"#)
            .await,
        9.0
    );
    assert_eq!(
        node.metric(r#"pace_admin_logins_total{result="rate_limited"}"#)
            .await,
        2.0
    );
    assert_no_secrets("responses", &seen.all());
    assert_no_secrets("CLI output", &cli);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("accounts.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[tokio::test]
async fn accounts_and_the_attempt_limit_live_in_redis_across_nodes() {
    let redis = TestRedis::start();
    let keys_file = shared_keys();
    let start = || {
        let (url, keys_file) = (redis.url(), keys_file.clone());
        TestNode::start_with(move |c| {
            c.store.redis_url = Some(url);
            c.store.redis_prefix = "adm".into();
            c.admission.keys = Some(keys_file);
        })
    };
    let (a, b) = (start().await, start().await);
    let url = redis.url();
    let store = ["--redis", url.as_str(), "--redis-prefix", "adm"];
    let cli = create_accounts(&store);
    let keys = KeySet::load(&keys_file).unwrap();
    let seen = Seen::default();

    // A token from node a verifies with the cluster's key set.
    let ok = login(a.addr, &seen, creds("acme", "alice", PASSWORD)).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let claims = verify_admin_token(&keys, ok.json()["token"].as_str().unwrap()).unwrap();
    assert_eq!(
        (claims.tenant.as_str(), claims.sub.as_str()),
        ("acme", "alice")
    );

    // Failures on both nodes add up.
    for (i, node) in [&a, &b, &a, &b, &a].iter().enumerate() {
        let r = login(
            node.addr,
            &seen,
            creds("acme", "alice", "wrong wrong wrong"),
        )
        .await;
        assert_eq!(r.status, 401, "attempt {i}: {}", r.body);
    }
    let limited = login(b.addr, &seen, creds("acme", "alice", PASSWORD)).await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert!(limited.retry_after.is_some());

    // The CLI lists what is in Redis, without secrets.
    let out = admin(&["list"], &store, "");
    assert!(out.status.success(), "{}", text(&out));
    let listed = text(&out);
    assert!(listed.contains("tenant acme (Acme)"), "{listed}");
    assert!(listed.contains("  user alice, created "), "{listed}");
    assert!(listed.contains("  user bob, created "), "{listed}");
    assert_no_secrets("list", &listed);
    assert_no_secrets("responses", &seen.all());
    assert_no_secrets("CLI output", &cli);
}

/// A node process whose stdout and stderr are collected.
struct LoggedNode {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl LoggedNode {
    fn spawn(data: &Path) -> LoggedNode {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pace-node"))
            .args(["serve", "--listen", "127.0.0.1:0", "--service-key", KEY])
            .args(["--log", "debug"])
            .arg("--data-dir")
            .arg(data)
            .env_remove("PACE_REDIS_URL")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = stdout.next().unwrap().unwrap();
        let addr = first
            .rsplit_once("http://")
            .and_then(|(_, a)| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("no address in {first:?}"));
        log.lock().unwrap().push_str(&first);
        let collect = |lines: Box<dyn Iterator<Item = std::io::Result<String>> + Send>| {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            })
        };
        let stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let readers = vec![collect(Box::new(stdout)), collect(Box::new(stderr))];
        LoggedNode {
            child,
            addr,
            log,
            readers,
        }
    }

    /// Stops the node (SIGTERM) and returns everything it wrote.
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        self.log.lock().unwrap().clone()
    }
}

impl Drop for LoggedNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn passwords_and_hashes_never_reach_a_response_or_a_log_line() {
    let data = scratch_dir();
    let node = LoggedNode::spawn(&data);
    TestNode::external(node.addr).wait_ready().await;
    let d = data.to_string_lossy().into_owned();
    let cli = create_accounts(&["--data-dir", &d]);
    let keys = KeySet::load(data.join("keys.json")).unwrap();
    let seen = Seen::default();
    login_story(node.addr, &keys, &seen).await;
    // A body with the password in a place that fails to parse.
    let odd = login(
        node.addr,
        &seen,
        json!({"tenant": "acme", "user": PASSWORD, "password": [PASSWORD]}),
    )
    .await;
    assert_eq!(odd.status, 400);
    let log = node.stop();

    // The log is there and at debug level (the test would pass trivially
    // on an empty one).
    assert!(log.contains("DEBUG"), "{log}");
    assert!(log.contains("admin login refused"), "{log}");
    assert!(log.contains("too many attempts"), "{log}");
    assert!(log.contains("accounts file (re)loaded"), "{log}");
    assert_no_secrets("node log", &log);
    assert_no_secrets("responses", &seen.all());
    assert_no_secrets("CLI output", &cli);
    // The file has the hashes (that is where they belong), 0600.
    let file = std::fs::read_to_string(data.join("accounts.json")).unwrap();
    assert!(file.contains("$argon2id$v=19$m=19456,t=2,p=1$"));
}

#[tokio::test]
async fn cli_exit_codes_and_messages() {
    let data = scratch_dir();
    let d = data.to_string_lossy().into_owned();
    let store = ["--data-dir", d.as_str()];
    let code = |out: &Output| out.status.code();

    let out = admin(&["list"], &store, "");
    assert_eq!((code(&out), text(&out)), (Some(0), "no tenants\n".into()));
    let out = admin(&["add-tenant", "acme"], &store, "");
    assert_eq!(code(&out), Some(0), "{}", text(&out));
    let out = admin(&["add-tenant", "acme"], &store, "");
    assert_eq!(code(&out), Some(2));
    assert!(
        text(&out).contains("tenant acme already exists"),
        "{}",
        text(&out)
    );

    // Passwords: from stdin only, checked.
    for (stdin, want) in [("", "empty"), ("short\n", "at least 12 characters")] {
        let out = admin(&["add-user", "--tenant", "acme", "alice"], &store, stdin);
        assert_eq!(code(&out), Some(2), "{}", text(&out));
        assert!(text(&out).contains(want), "{}", text(&out));
    }
    let out = admin(
        &["add-user", "--tenant", "nobody", "alice"],
        &store,
        "long enough password\n",
    );
    assert_eq!(code(&out), Some(2));
    assert!(text(&out).contains("no tenant nobody"), "{}", text(&out));
    let out = admin(
        &["add-user", "--tenant", "acme", "alice"],
        &store,
        "long enough password\n",
    );
    assert_eq!(code(&out), Some(0), "{}", text(&out));
    let out = admin(
        &["add-user", "--tenant", "acme", "alice"],
        &store,
        "another password!!\n",
    );
    assert_eq!(code(&out), Some(2));
    assert!(text(&out).contains("--update"), "{}", text(&out));
    let out = admin(
        &["add-user", "--tenant", "acme", "alice", "--update"],
        &store,
        "another password!!\n",
    );
    assert_eq!(code(&out), Some(0), "{}", text(&out));
    assert_no_secrets("CLI", &text(&out));

    // The store is unreachable: exit 1.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let out = admin(&["list"], &["--redis", &url], "");
    assert_eq!(code(&out), Some(1), "{}", text(&out));
}
