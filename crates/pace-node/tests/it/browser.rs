//! A headless-Chromium harness for browser tests, over WebDriver
//! (`/usr/bin/chromedriver` driven by `fantoccini`), and its smoke tests.
//!
//! Each [`Browser`] is one chromedriver on its own loopback port, in its own
//! process group, killed as a group when the `Browser` is dropped (also while
//! a test panics), so tests running in parallel stay independent and no
//! chromium is left behind. Each [`Page`] is a WebDriver session: a Chromium
//! of its own with a fresh profile directory, so two pages are two separate
//! browser contexts (cookies, localStorage).
//!
//! Every WebDriver call is bounded ([`COMMAND_LIMIT`]) and the harness panics
//! with the selector or script concerned, the page's URL, a screenshot path
//! and the browser console rather than returning errors: a test reads like a
//! script. chromedriver's own output goes to a log file, kept (and its path
//! printed) only when the `Browser` is dropped during a panic.
//!
//! Chromium needs `deploy/install-deps chromium` (Debian's `chromium` and
//! `chromium-driver`).

use std::fmt::Display;
use std::fs::File;
use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fantoccini::error::CmdError;
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpStream;

use crate::support::*;

/// The WebDriver server (Debian package `chromium-driver`).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The browser (Debian package `chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Upper bound for one WebDriver command (a navigation included).
pub const COMMAND_LIMIT: Duration = Duration::from_secs(30);
/// Upper bound for chromedriver to answer `/status`, and for a new session
/// (a Chromium start) to be created.
pub const START_LIMIT: Duration = Duration::from_secs(60);
/// How often the `wait_*` helpers look again.
const POLL: Duration = Duration::from_millis(100);

/// Chromium's command line. The background-networking, component-update and
/// sync switches keep it from calling out (refused on a closed network, and
/// noisy); `--disable-quic` keeps it on plain TCP.
/// (Chromium's crash handler, `chrome_crashpad_handler`, daemonizes into a
/// session of its own, outside the process group; it exits by itself once its
/// Chromium is gone. `--disable-crashpad-for-testing` would avoid it but makes
/// every renderer hang.)
const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
];

/// One chromedriver process on its own loopback port, the leader of its own
/// process group (so that it and every Chromium it starts can be killed
/// together).
#[derive(Debug)]
pub struct Browser {
    child: Child,
    port: u16,
    /// Holds `chromedriver.log`; kept on disk if the `Browser` is dropped
    /// while panicking.
    log_dir: Option<TempDir>,
    /// The pages' profile directories, removed once their Chromiums are dead
    /// (a live Chromium would write them again).
    profiles: Mutex<Vec<TempDir>>,
}

impl Browser {
    /// Starts [`CHROMEDRIVER`] on a free loopback port and waits (at most
    /// [`START_LIMIT`]) until it answers `/status` with `ready`. Panics with
    /// "install it with deploy/install-deps chromium" when chromedriver or
    /// chromium is missing, and with chromedriver's log when it does not come
    /// up.
    pub async fn start() -> Browser {
        for path in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: install it with deploy/install-deps chromium"
            );
        }
        // The port is picked by binding :0 and letting go of it, so another
        // process may take it before chromedriver does: then try another.
        let mut last_failure = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let log_dir = tempfile::Builder::new()
                .prefix("pace-chromedriver-")
                .tempdir()
                .expect("temp dir for chromedriver's log");
            let log = File::create(log_dir.path().join("chromedriver.log"))
                .expect("create chromedriver.log");
            let child = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone the log file handle"))
                .stderr(log)
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run {CHROMEDRIVER} ({e}): install it with deploy/install-deps chromium")
                });
            let mut browser = Browser {
                child,
                port,
                log_dir: Some(log_dir),
                profiles: Mutex::new(Vec::new()),
            };
            match browser.wait_ready().await {
                Ok(()) => return browser,
                Err(why) => {
                    last_failure = format!("{why}\n--- chromedriver log ---\n{}", browser.log());
                    // Dropping `browser` kills what was started.
                }
            }
        }
        panic!("chromedriver did not start: {last_failure}");
    }

    /// Polls `GET /status` until chromedriver says it is ready.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + START_LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll chromedriver") {
                return Err(format!("chromedriver exited: {status}"));
            }
            if let Some((200, body)) = webdriver_http(self.port, "GET", "/status", "").await {
                let v: Value = serde_json::from_str(&body).unwrap_or_default();
                if v["value"]["ready"] == json!(true) {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "chromedriver did not answer /status within {START_LIMIT:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What chromedriver has printed so far.
    pub fn log(&self) -> String {
        self.log_dir
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.path().join("chromedriver.log")).ok())
            .unwrap_or_default()
    }

    /// A new browser session: its own Chromium ([`CHROMIUM`], headless) with
    /// its own fresh `--user-data-dir` (a temp dir, removed when the `Browser`
    /// is dropped), so
    /// two pages have separate cookies and localStorage, like two browser
    /// contexts. Browser console messages of all levels are recorded (see
    /// [`Page::console`]).
    pub async fn page(&self) -> Page {
        let profile = tempfile::Builder::new()
            .prefix("pace-chromium-")
            .tempdir()
            .expect("temp dir for a chromium profile");
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| (*a).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let caps = json!({
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "timeouts": {
                "implicit": 0,
                "pageLoad": COMMAND_LIMIT.as_millis() as u64,
                "script": COMMAND_LIMIT.as_millis() as u64,
            },
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let Value::Object(caps) = caps else {
            unreachable!("capabilities are an object")
        };
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(caps);
        let url = format!("http://127.0.0.1:{}", self.port);
        let client = match tokio::time::timeout(START_LIMIT, builder.connect(&url)).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => panic!(
                "new chromium session failed: {e}\n--- chromedriver log ---\n{}",
                self.log()
            ),
            Err(_) => panic!(
                "new chromium session took over {START_LIMIT:?}\n--- chromedriver log ---\n{}",
                self.log()
            ),
        };
        let session = client
            .session_id()
            .await
            .expect("session id")
            .expect("a session was created");
        self.profiles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(profile);
        Page {
            client,
            port: self.port,
            session,
        }
    }
}

impl Drop for Browser {
    /// Kills chromedriver's process group (chromedriver and the Chromium
    /// processes it started, which inherit the group) by its PID, reaps
    /// chromedriver, then removes the pages' profile directories. Nothing
    /// outside that group is touched.
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        // ESRCH: the group is already gone.
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        let _ = self.child.wait();
        self.profiles
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        if std::thread::panicking()
            && let Some(dir) = self.log_dir.take()
        {
            let dir = dir.keep();
            eprintln!(
                "chromedriver log (port {}): {}",
                self.port,
                dir.join("chromedriver.log").display()
            );
        }
    }
}

/// One WebDriver session, i.e. one Chromium with its own profile directory.
/// End it with [`Page::close`].
#[derive(Debug)]
pub struct Page {
    client: Client,
    port: u16,
    session: String,
}

impl Page {
    /// Navigates to `url` and waits for the page to load (bounded by
    /// [`COMMAND_LIMIT`]).
    pub async fn goto(&self, url: &str) {
        self.step(format!("goto {url}"), self.client.goto(url))
            .await;
    }

    /// Reloads the current page and waits for it to load.
    pub async fn refresh(&self) {
        self.step("refresh", self.client.refresh()).await;
    }

    /// The URL of the current page.
    pub async fn current_url(&self) -> String {
        self.step("current_url", self.client.current_url())
            .await
            .to_string()
    }

    /// Visible (rendered) text of the first element matching `css`; panics
    /// naming the selector if nothing matches.
    pub async fn text(&self, css: &str) -> String {
        let el = self.find(css).await;
        self.step(format!("text of `{css}`"), el.text()).await
    }

    /// Attribute `name` of the first element matching `css` (`None` if the
    /// element has no such attribute); panics naming the selector if nothing
    /// matches.
    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        let el = self.find(css).await;
        self.step(format!("attribute {name} of `{css}`"), el.attr(name))
            .await
    }

    /// Clicks the first element matching `css`.
    pub async fn click(&self, css: &str) {
        let el = self.find(css).await;
        self.step(format!("click `{css}`"), el.click()).await;
    }

    /// Clears the first input matching `css`, then types `value` into it.
    pub async fn fill(&self, css: &str, value: &str) {
        let el = self.find(css).await;
        self.step(format!("clear `{css}`"), el.clear()).await;
        self.step(format!("type into `{css}`"), el.send_keys(value))
            .await;
    }

    /// Sends the Enter key to the first element matching `css`.
    pub async fn press_enter(&self, css: &str) {
        let el = self.find(css).await;
        self.step(format!("Enter in `{css}`"), el.send_keys(&Key::Enter))
            .await;
    }

    /// Runs `js` as the body of a function in the page and returns what it
    /// returns (`"return document.title"`); a script without `return` gives
    /// `Value::Null`. Panics with the script on a JavaScript error.
    pub async fn eval(&self, js: &str) -> Value {
        self.step(format!("script `{js}`"), self.client.execute(js, vec![]))
            .await
    }

    /// Runs an asynchronous script: it gets a callback as its last
    /// argument (`arguments[arguments.length - 1]`) and returns what it
    /// passes to it (bounded by the script timeout).
    pub async fn eval_async(&self, js: &str) -> Value {
        self.step(
            format!("async script `{js}`"),
            self.client.execute_async(js, vec![]),
        )
        .await
    }

    /// Polls every 100 ms until `check(text of the first match of css)`
    /// holds, and returns that text. After `limit` it panics with the
    /// selector, the last text seen (or that nothing matched), the URL, a
    /// screenshot path and the browser console.
    pub async fn wait_text(
        &self,
        css: &str,
        limit: Duration,
        check: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Between two polls the element may go (a re-render): `None`.
            let last = match self.try_text(css).await {
                Some(text) if check(&text) => return text,
                other => other,
            };
            if tokio::time::Instant::now() >= deadline {
                let seen = match &last {
                    Some(text) => format!("last text {text:?}"),
                    None => "no element matched".to_owned(),
                };
                let report = self
                    .failure_report(&format!(
                        "`{css}` never passed the check within {limit:?}: {seen}"
                    ))
                    .await;
                panic!("{report}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls every 100 ms until `check(current URL)` holds, and returns the
    /// URL; panics like [`Page::wait_text`] after `limit`.
    pub async fn wait_url(&self, limit: Duration, check: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let url = self.current_url().await;
            if check(&url) {
                return url;
            }
            if tokio::time::Instant::now() >= deadline {
                let report = self
                    .failure_report(&format!(
                        "the URL never passed the check within {limit:?}: last {url}"
                    ))
                    .await;
                panic!("{report}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Saves a PNG of the viewport to
    /// `<target dir>/browser-screenshots/<name>.png` and returns its path.
    /// The target dir is `CARGO_TARGET_DIR` if set, else the workspace's
    /// `target/`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .step(format!("screenshot {name}"), self.client.screenshot())
            .await;
        save_screenshot(name, &png)
    }

    /// The browser console's entries since the last call ("LEVEL message"),
    /// as recorded by chromedriver (`goog:loggingPrefs`); reading them
    /// empties chromedriver's buffer. Empty if chromedriver cannot say.
    pub async fn console(&self) -> Vec<String> {
        let path = format!("/session/{}/se/log", self.session);
        let body = json!({ "type": "browser" }).to_string();
        let Some((200, reply)) = webdriver_http(self.port, "POST", &path, &body).await else {
            return Vec::new();
        };
        let v: Value = serde_json::from_str(&reply).unwrap_or_default();
        v["value"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| {
                        format!(
                            "{} {}",
                            e["level"].as_str().unwrap_or("?"),
                            e["message"].as_str().unwrap_or_default()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Ends the session: chromedriver quits this page's Chromium. (Dropping
    /// a `Page` instead leaves it to fantoccini's background task or, at the
    /// latest, to the [`Browser`]'s drop.)
    pub async fn close(self) {
        match tokio::time::timeout(COMMAND_LIMIT, self.client.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("closing the browser session failed: {e}"),
            Err(_) => panic!("closing the browser session took over {COMMAND_LIMIT:?}"),
        }
    }

    /// The first element matching `css`; panics (with a failure report) if
    /// there is none.
    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match tokio::time::timeout(COMMAND_LIMIT, self.client.find(Locator::Css(css))).await {
            Ok(Ok(el)) => el,
            Ok(Err(e)) if e.is_no_such_element() => {
                let report = self
                    .failure_report(&format!("no element matches `{css}`"))
                    .await;
                panic!("{report}");
            }
            Ok(Err(e)) => panic!("finding `{css}` failed: {e}"),
            Err(_) => panic!("finding `{css}` took over {COMMAND_LIMIT:?}"),
        }
    }

    /// Text of the first match of `css`, `None` if there is none (or it went
    /// stale meanwhile).
    async fn try_text(&self, css: &str) -> Option<String> {
        let el = match self.client.find(Locator::Css(css)).await {
            Ok(el) => el,
            Err(e) if e.is_no_such_element() => return None,
            Err(e) => panic!("finding `{css}` failed: {e}"),
        };
        match el.text().await {
            Ok(text) => Some(text),
            Err(e) if e.is_stale_element_reference() => None,
            Err(e) => panic!("text of `{css}` failed: {e}"),
        }
    }

    /// Awaits one WebDriver command, bounded by [`COMMAND_LIMIT`]; panics
    /// naming `what` on an error or a timeout.
    async fn step<T>(
        &self,
        what: impl Display,
        command: impl Future<Output = Result<T, CmdError>>,
    ) -> T {
        match tokio::time::timeout(COMMAND_LIMIT, command).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => panic!("browser: {what} failed: {e}"),
            Err(_) => panic!("browser: {what} took over {COMMAND_LIMIT:?}"),
        }
    }

    /// `what`, with the page's URL, a screenshot path and the browser
    /// console: the message of a failing check. Never panics itself.
    async fn failure_report(&self, what: &str) -> String {
        static FAILURES: AtomicU32 = AtomicU32::new(0);
        let limit = Duration::from_secs(10);
        let url = match tokio::time::timeout(limit, self.client.current_url()).await {
            Ok(Ok(url)) => url.to_string(),
            _ => "(unknown)".to_owned(),
        };
        let test = std::thread::current().name().unwrap_or("test").replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
            "_",
        );
        let name = format!(
            "{test}-failure-{}",
            FAILURES.fetch_add(1, Ordering::Relaxed)
        );
        let shot = match tokio::time::timeout(limit, self.client.screenshot()).await {
            Ok(Ok(png)) => save_screenshot(&name, &png).display().to_string(),
            _ => "(no screenshot)".to_owned(),
        };
        let console = tokio::time::timeout(limit, self.console())
            .await
            .unwrap_or_default();
        format!(
            "browser: {what}\n  url: {url}\n  screenshot: {shot}\n  console:{}",
            if console.is_empty() {
                " (empty)".to_owned()
            } else {
                console
                    .iter()
                    .map(|l| format!("\n    {l}"))
                    .collect::<String>()
            }
        )
    }
}

/// `<target dir>/browser-screenshots/`: the target dir is `CARGO_TARGET_DIR`
/// if set (relative to the workspace root if relative), else
/// `<workspace root>/target`.
pub fn screenshot_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the workspace root above crates/pace-node");
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    };
    target.join("browser-screenshots")
}

fn save_screenshot(name: &str, png: &[u8]) -> PathBuf {
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).expect("create the screenshot dir");
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, png).expect("write the screenshot");
    path
}

/// One HTTP/1.1 request to chromedriver; `None` if it cannot be reached or
/// does not answer within 5 s.
async fn webdriver_http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let exchange = async {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .ok()?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("127.0.0.1:{port}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .ok()?;
        let resp = sender.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.ok()?.to_bytes();
        Some((status, String::from_utf8_lossy(&bytes).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_renders_the_demo_target_page() {
    let node = TestNode::start().await;
    let browser = Browser::start().await;
    let page = browser.page().await;
    let url = format!("http://{}/demo/target?pace_token=garbage", node.addr);
    page.goto(&url).await;
    assert_eq!(page.current_url().await, url);
    assert_eq!(page.text("h1").await, "Token refused");
    assert_eq!(
        page.eval("return location.pathname").await,
        json!("/demo/target")
    );
    let h1 = page.wait_text("h1", SOON, |t| t.contains("refused")).await;
    assert_eq!(h1, "Token refused");

    let shot = page.screenshot("smoke-demo-target").await;
    assert_eq!(shot, screenshot_dir().join("smoke-demo-target.png"));
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(
        png.starts_with(PNG_MAGIC),
        "{} is not a PNG",
        shot.display()
    );
    page.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_have_separate_local_storage() {
    let node = TestNode::start().await;
    let browser = Browser::start().await;
    let url = format!("http://{}/demo/target?pace_token=garbage", node.addr);
    let (one, two) = tokio::join!(browser.page(), browser.page());
    tokio::join!(one.goto(&url), two.goto(&url));
    assert_eq!(two.text("h1").await, "Token refused");

    let set = "localStorage.setItem('pace-smoke', 'one'); \
               return localStorage.getItem('pace-smoke')";
    let get = "return localStorage.getItem('pace-smoke')";
    assert_eq!(one.eval(set).await, json!("one"));
    assert_eq!(two.eval(get).await, Value::Null);
    // Same page, same profile: it survives a reload.
    one.refresh().await;
    assert_eq!(one.eval(get).await, json!("one"));

    one.eval("console.warn('pace-smoke console line')").await;
    let console = one.console().await;
    assert!(
        console
            .iter()
            .any(|l| l.contains("pace-smoke console line")),
        "{console:?}"
    );
    tokio::join!(one.close(), two.close());
}
