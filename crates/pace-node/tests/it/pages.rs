//! The pages in a real browser (Debian's headless Chromium, driven over
//! WebDriver): a device waits on `/r/demo` while an admin raises the
//! capacity from `/admin` in a second browser, and lands on the demo
//! target with a token that verifies; reload keeps the place; paused and
//! closed show; the proof of work runs in the page's worker; the console
//! refuses a wrong password and its chart follows a change. Screenshots go
//! to `target/browser-screenshots/` for review.

use std::time::Duration;

use serde_json::{Value, json};

use crate::browser::{Browser, Page};
use crate::support::*;

/// Long enough for a position refresh, an admission tick and a page update
/// on a loaded CI machine; never a measure of speed.
const UI: Duration = Duration::from_secs(20);

/// A node with tenant `acme`, its admin `admin`, device credentials
/// required (the page registers for real), and the demo room owned by
/// `acme` at `capacity`.
async fn node(capacity: u32) -> (TestNode, String) {
    let dir = tenants_dir(&["acme"]);
    let node = TestNode::start_with(|c| {
        c.store.data_dir = dir.clone();
        c.devices.insecure_anonymous_devices = false;
        c.web.demo_room = true;
        c.web.demo_tenant = Some("acme".into());
        c.rooms.position_refresh = Duration::from_millis(500);
    })
    .await;
    let token = admin_login(node.addr, "acme").await;
    set_room(&node, &token, |c| c["capacity"] = json!(capacity)).await;
    (node, token)
}

/// Changes the demo room through the admin API (as a second admin would).
async fn set_room(node: &TestNode, token: &str, change: impl FnOnce(&mut Value)) {
    let auth = format!("Bearer {token}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let (status, text) = http(node.addr, "GET", "/api/v1/admin/rooms/demo", &headers, "")
        .await
        .unwrap();
    assert_eq!(status, 200, "{text}");
    let mut config = serde_json::from_str::<Value>(&text).unwrap()["config"].clone();
    change(&mut config);
    let (status, text) = http(
        node.addr,
        "PUT",
        "/api/v1/admin/rooms/demo",
        &headers,
        &config.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
}

/// A registered device holding a place in `room` over its own WebSocket
/// (not a browser: these only fill the line ahead of one).
async fn waiting_device(node: &TestNode, room: &str, id: &str) -> Ws {
    let token = register_device(node.addr, &json!({"device_id": id})).await;
    let auth = format!("Bearer {token}");
    let (mut ws, _) = node
        .connect_with("/ws", &[("x-device-id", id), ("authorization", &auth)])
        .await;
    send_text(&mut ws, &json!({"type": "join", "room": room}).to_string()).await;
    match next_frame(&mut ws).await {
        pace_protocol::ServerFrame::Queue(_) => ws,
        other => panic!("{id}: expected a place, got {other:?}"),
    }
}

fn url(node: &TestNode, path: &str) -> String {
    format!("http://{}{}", node.addr, path)
}

/// Through the gateway (HAProxy configured like the Kong config).
fn via(gateway: &Gateway, path: &str) -> String {
    format!("http://{}{}", gateway.addr, path)
}

async fn state(page: &Page) -> String {
    page.attr("body", "data-state").await.unwrap_or_default()
}

async fn wait_state(page: &Page, want: &str) {
    let deadline = tokio::time::Instant::now() + UI;
    loop {
        let now = state(page).await;
        if now == want {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let shot = page.screenshot(&format!("failed-state-{want}")).await;
            panic!(
                "page state {now:?}, wanted {want:?}; headline {:?}; screenshot {}",
                page.text("#headline").await,
                shot.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn console_login(console: &Page, base: &str, password: &str) {
    console.goto(&format!("{base}/admin")).await;
    console.fill("#login-tenant", "acme").await;
    console.fill("#login-user", "admin").await;
    console.fill("#login-password", password).await;
    // Keyboard only: Enter in the password field submits.
    console.press_enter("#login-password").await;
}

/// Applies one dial in the console and waits for its confirmation.
async fn dial(console: &Page, field: &str, value: &str) {
    console.fill(&format!("#dial-{field}"), value).await;
    console
        .click(&format!("form[data-field={field}] button[type=submit]"))
        .await;
    let want = format!("{field} = ");
    console
        .wait_text("#dial-status", UI, |t| {
            t.contains(&want) && t.contains(value)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_waits_and_is_let_in_from_the_console() {
    let (node, _token) = node(0).await;
    // Both browsers go through the gateway, as in production: the pages,
    // their assets, the device and admin sockets all take its routes.
    let gateway = Gateway::start(&[node.addr]).await;
    let browser = Browser::start().await;
    // Three devices ahead of the browser.
    let mut ahead = Vec::new();
    for i in 1..=3 {
        ahead.push(waiting_device(&node, "demo", &format!("ahead-{i}")).await);
    }

    let device = browser.page().await;
    device.goto(&via(&gateway, "/r/demo")).await;
    device.wait_text("#position", UI, |t| t == "4").await;
    wait_state(&device, "waiting").await;
    assert_eq!(device.text("#waiting").await, "4");
    // Screen readers hear the place from a polite live region.
    assert_eq!(
        device.attr("#announce", "aria-live").await.as_deref(),
        Some("polite")
    );
    let spoken = device
        .eval("return document.getElementById('announce').textContent")
        .await;
    assert_eq!(spoken, json!("You are number 4 in line."));
    assert_eq!(
        device.attr("#progress", "role").await.as_deref(),
        Some("progressbar")
    );
    assert_eq!(device.text("#title").await, "Pace demo: you are in line");
    let id = device
        .eval("return localStorage.getItem('pace.device_id')")
        .await;
    let id = id
        .as_str()
        .expect("the page keeps its device id")
        .to_owned();
    assert!(id.starts_with("browser_"), "{id}");
    assert!(
        device
            .eval("return localStorage.getItem('pace.token')")
            .await
            .as_str()
            .is_some_and(|t| t.split('.').count() == 3),
        "the page keeps its credential (a JWT)"
    );
    device.screenshot("room-waiting").await;

    // Reloading keeps the place (same id, same credential, same ticket).
    device.refresh().await;
    device.wait_text("#position", UI, |t| t == "4").await;
    wait_state(&device, "waiting").await;
    assert_eq!(
        device
            .eval("return localStorage.getItem('pace.device_id')")
            .await,
        json!(id)
    );

    // The console, in a second browser: a wrong password is refused.
    let console = browser.page().await;
    let base = via(&gateway, "");
    console_login(&console, &base, "not the password at all").await;
    console
        .wait_text("#login-error", UI, |t| t.contains("Wrong"))
        .await;
    assert!(
        console.attr("#console", "hidden").await.is_some(),
        "nothing of the console shows before a good sign-in"
    );
    console.screenshot("admin-login-refused").await;

    console_login(&console, &base, ADMIN_PASSWORD).await;
    console.wait_text("#feed", UI, |t| t == "live").await;
    console
        .wait_text("#room-list", UI, |t| t.contains("demo"))
        .await;
    console.click("button[data-room=demo]").await;
    console.wait_text("#kpi-waiting", UI, |t| t == "4").await;

    // A notification to everyone in the room reaches the page.
    console.fill("#bc-text", "Doors open in five minutes").await;
    console.click("#broadcast button[type=submit]").await;
    console
        .wait_text("#bc-status", UI, |t| t.contains("sent to group @room:demo"))
        .await;
    device
        .wait_text("#note-list", UI, |t| {
            t.contains("Doors open in five minutes")
        })
        .await;

    // Capacity 0 → 2 from the console: two devices ahead are admitted and
    // the page's position falls from 4 to 2; the chart shows the change.
    dial(&console, "capacity", "2").await;
    device.wait_text("#position", UI, |t| t == "2").await;
    console
        .wait_text("#cap-queue", UI, |t| {
            t.contains("Capacity 2") && t.contains("Active 2")
        })
        .await;
    assert_eq!(
        console
            .attr("#chart-queue polyline.capacity", "data-last")
            .await
            .as_deref(),
        Some("2")
    );
    console.wait_text("#kpi-active", UI, |t| t == "2").await;
    console.screenshot("admin-console").await;
    console
        .eval("window.scrollTo(0, document.querySelector('.kpis').getBoundingClientRect().top + window.scrollY - 70); return true")
        .await;
    console.screenshot("admin-charts").await;

    // Capacity 10: the page is admitted and lands on the target page with
    // a token that verifies.
    dial(&console, "capacity", "10").await;
    let landed = device
        .wait_url(UI, |u| u.contains("/demo/target?pace_token="))
        .await;
    device
        .wait_text("h1", UI, |t| t.contains("You're in"))
        .await;
    let claims = device.text(".claims").await;
    assert!(claims.contains("demo") && claims.contains(&id), "{claims}");
    device.screenshot("target-verified").await;
    let token = landed
        .split("pace_token=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    let (status, text) = http(
        node.addr,
        "POST",
        "/api/v1/admissions/verify",
        &[("content-type", "application/json")],
        &json!({"token": token, "room": "demo"}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["valid"], json!(true), "{text}");
    assert_eq!(v["claims"]["sub"], json!(id));
    assert_eq!(v["claims"]["aud"], json!("demo"));

    device.close().await;
    console.close().await;
    drop(ahead);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_closed_and_proof_of_work_show_in_the_page() {
    let (node, token) = node(0).await;
    let browser = Browser::start().await;

    // Proof of work: the page solves the challenge in its worker and gets
    // its place.
    set_room(&node, &token, |c| c["pow_difficulty"] = json!(12)).await;
    let device = browser.page().await;
    device.goto(&url(&node, "/r/demo")).await;
    device.wait_text("#position", UI, |t| t == "1").await;
    wait_state(&device, "waiting").await;
    assert_eq!(
        node.metric("pace_pow_total{result=\"solved\"}").await,
        1.0,
        "the place came with a solved proof of work"
    );

    set_room(&node, &token, |c| c["state"] = json!("paused")).await;
    wait_state(&device, "paused").await;
    assert!(device.text("#headline").await.contains("paused"));
    assert_eq!(
        device.text("#position").await,
        "1",
        "a pause keeps the place"
    );
    device.screenshot("room-paused").await;

    set_room(&node, &token, |c| c["state"] = json!("closed")).await;
    wait_state(&device, "closed-waiting").await;
    assert!(device.text("#detail").await.contains("your place is kept"));

    // A newcomer to the closed room is told it is closed.
    let newcomer = browser.page().await;
    newcomer.goto(&url(&node, "/r/demo")).await;
    wait_state(&newcomer, "closed").await;
    assert!(newcomer.text("#headline").await.contains("closed"));
    newcomer.screenshot("room-closed").await;

    // The room reopens: the newcomer's page, still open, asks again (every
    // 30 s) and takes the place behind the first device.
    set_room(&node, &token, |c| c["state"] = json!("open")).await;
    newcomer
        .wait_text("#position", Duration::from_secs(45), |t| t == "2")
        .await;
    wait_state(&newcomer, "waiting").await;

    // An unknown room is a clear 404 page, not a broken one.
    newcomer.goto(&url(&node, "/r/no-such-room")).await;
    newcomer
        .wait_text("h1", UI, |t| t.contains("No waiting room here"))
        .await;

    device.close().await;
    newcomer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_worker_hashes_like_the_node() {
    let (node, _token) = node(0).await;
    let browser = Browser::start().await;
    let page = browser.page().await;
    page.goto(&url(&node, "/r/demo")).await;
    // The worker's SHA-256 against the node's, on the FIPS vector and on a
    // solution the worker finds for a prefix of ours.
    let prefix = "pace-test-prefix-0123456789";
    let found = page
        .eval_async(&format!(
            "const done = arguments[arguments.length - 1];
             const w = new Worker('/assets/pow-worker.js');
             const out = {{}};
             w.onmessage = (e) => {{
               if (e.data.hex !== undefined) {{ out.hex = e.data.hex; w.postMessage({{prefix: '{prefix}', difficulty: 14}}); }}
               else {{ out.solution = e.data.solution; done(out); }}
             }};
             w.postMessage({{hex: 'abc'}});"
        ))
        .await;
    assert_eq!(
        found["hex"],
        json!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );
    let solution = found["solution"].as_u64().expect("a solution").to_string();
    assert!(
        pace_protocol::pow::meets(prefix, &solution, 14),
        "{solution} does not solve {prefix} at 14 bits"
    );
    page.close().await;
}

/// `pace-node serve` on `listen` with a real Redis, the tests' shared key
/// set and `dir` as its data dir, so a restart on the same address is the
/// same cluster.
fn node_on(listen: &str, redis: &TestRedis, dir: &std::path::Path) -> NodeProcess {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pace-node"));
    cmd.args(["serve", "--listen", listen, "--service-key", KEY])
        .args(["--redis", &redis.url(), "--demo-room", "false"])
        .args(["--position-refresh", "500ms"])
        .arg("--data-dir")
        .arg(dir)
        .arg("--keys")
        .arg(shared_keys())
        .env("PACE_LOG", "warn")
        .env_remove("PACE_INSECURE_ANONYMOUS_DEVICES");
    NodeProcess::start(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_reconnects_and_keeps_its_place_when_its_node_dies() {
    let redis = TestRedis::start();
    let dir = scratch_dir();
    let first = node_on("127.0.0.1:0", &redis, &dir);
    let addr = first.addr;
    let handle = TestNode::external(addr);
    handle.wait_ready().await;
    let room = json!({"capacity": 0, "admit_per_minute": null, "session_ttl_secs": 60,
        "target_url": format!("http://{addr}/demo/target"), "state": "open", "pow_difficulty": 0,
        "appearance": {"title": "Sale", "background": "#101820", "text": "#fafafa", "accent": "#f2aa4c"}});
    let auth = format!("Bearer {KEY}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let (status, text) = http(
        addr,
        "PUT",
        "/api/v1/rooms/sale",
        &headers,
        &room.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");

    let browser = Browser::start().await;
    let page = browser.page().await;
    // Two devices ahead, then the page: place 3.
    let mut ahead = Vec::new();
    for id in ["first", "second"] {
        ahead.push(waiting_device(&handle, "sale", id).await);
    }
    page.goto(&format!("http://{addr}/r/sale")).await;
    page.wait_text("#position", UI, |t| t == "3").await;
    // The room's colours reach the page.
    assert_eq!(page.text("#title").await, "Sale");
    assert_eq!(
        page.eval("return getComputedStyle(document.body).backgroundColor")
            .await,
        json!("rgb(16, 24, 32)")
    );

    first.signal("-KILL");
    wait_state(&page, "reconnecting").await;
    assert!(page.text("#headline").await.contains("Reconnecting"));
    assert!(
        page.attr("#retry", "hidden").await.is_none(),
        "a reconnect button is offered"
    );
    page.screenshot("room-reconnecting").await;

    // The node comes back on the same address (the gateway's job in a
    // cluster): the page reconnects by itself, same device, same place.
    let _second = node_on(&addr.to_string(), &redis, &dir);
    handle.wait_ready().await;
    page.wait_text("#position", Duration::from_secs(45), |t| t == "3")
        .await;
    wait_state(&page, "waiting").await;
    drop((first, ahead));
    page.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_labelled_and_shows_nodes_devices_and_refusals() {
    let (node, _token) = node(0).await;
    let browser = Browser::start().await;
    let device = browser.page().await;
    device.goto(&url(&node, "/r/demo")).await;
    device.wait_text("#position", UI, |t| t == "1").await;
    let id = device
        .eval("return localStorage.getItem('pace.device_id')")
        .await;
    let id = id.as_str().unwrap().to_owned();

    let console = browser.page().await;
    console_login(&console, &url(&node, ""), ADMIN_PASSWORD).await;
    console.wait_text("#feed", UI, |t| t == "live").await;
    // Every control has a label a screen reader can read.
    let unlabelled = console
        .eval(
            "return [...document.querySelectorAll('input, select, textarea, button')]
               .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                            && !(e.tagName === 'BUTTON' && e.textContent.trim()))
               .map(e => e.id || e.outerHTML)",
        )
        .await;
    assert_eq!(unlabelled, json!([]), "controls without a label");
    // The cluster's nodes with their connection counts.
    console
        .wait_text("#nodes", UI, |t| t.contains("test-node") && t.contains('1'))
        .await;
    // The registry: the page's device registered under the room's tenant.
    console.fill("#device-q", "browser_").await;
    console.press_enter("#device-q").await;
    console.wait_text("#devices", UI, |t| t.contains(&id)).await;
    // An unreadable colour scheme is refused, and the reason shown.
    console.click("button[data-room=demo]").await;
    console.wait_text("#kpi-waiting", UI, |t| t == "1").await;
    console
        .eval("document.getElementById('dial-text').value = '#f0f0f0'; return true")
        .await;
    console
        .click("form[data-field=appearance] button[type=submit]")
        .await;
    console
        .wait_text("#dial-status", UI, |t| {
            t.contains("not applied") && t.contains("contrast")
        })
        .await;
    // The console grants a device of the tenant its department; then a
    // department broadcast goes to the tenant's group of that name; a
    // device broadcast reaches the page.
    let clerk_token =
        register_device(node.addr, &json!({"device_id": "clerk", "tenant": "acme"})).await;
    console.fill("#device-q", "clerk").await;
    console.click("#device-search button[type=submit]").await;
    console
        .wait_text("#devices", UI, |t| t.contains("clerk"))
        .await;
    console.click("button[aria-label='Manage clerk']").await;
    console.fill("#manage-departments", "ops").await;
    console.click("#set-departments").await;
    console
        .wait_text("#manage-status", UI, |t| {
            t.contains("departments set: clerk")
        })
        .await;
    console
        .wait_text("#devices", UI, |t| t.contains("acme:ops"))
        .await;
    let (mut clerk, _) = node
        .connect_with(
            &format!("/ws?device_id=clerk&token={clerk_token}"),
            &[("x-department-id", "acme:ops")],
        )
        .await;
    console
        .eval("const s = document.getElementById('bc-scope'); s.value = 'department'; s.dispatchEvent(new Event('change')); return true")
        .await;
    console.fill("#bc-target", "ops").await;
    console.fill("#bc-text", "Shift change at six").await;
    console.click("#broadcast button[type=submit]").await;
    console
        .wait_text("#bc-status", UI, |t| t.contains("sent to group acme:ops"))
        .await;
    match next_frame(&mut clerk).await {
        pace_protocol::ServerFrame::Notification(n) => {
            assert_eq!(n.target.as_deref(), Some("acme:ops"));
            assert_eq!(n.data, json!({"text": "Shift change at six"}));
        }
        other => panic!("expected the department's message, got {other:?}"),
    }
    // Kick from the console: the clerk is closed with 4004 and its token
    // no longer opens a connection.
    console.fill("#manage-device", "clerk").await;
    console.click("#kick-device").await;
    console
        .wait_text("#manage-status", UI, |t| t.contains("kicked: clerk"))
        .await;
    assert_eq!(close_code(&mut clerk).await, Some(4004));
    assert!(
        node.try_connect(&format!("/ws?device_id=clerk&token={clerk_token}"), &[])
            .await
            .is_err()
    );
    console
        .eval("const s = document.getElementById('bc-scope'); s.value = 'device'; s.dispatchEvent(new Event('change')); return true")
        .await;
    console.fill("#bc-target", &id).await;
    console.fill("#bc-text", "Just for you").await;
    console.click("#broadcast button[type=submit]").await;
    console
        .wait_text("#bc-status", UI, |t| t.contains("sent to device"))
        .await;
    device
        .wait_text("#note-list", UI, |t| t.contains("Just for you"))
        .await;
    device.close().await;
    console.close().await;
}

/// The console's mode dial switches the demo room live: `reject` and a new
/// page shows the refusal; `passthrough` and that page (asking again) is
/// let in through a capacity of 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_switches_the_queueing_mode_and_the_page_follows() {
    let (node, token) = node(0).await;
    let browser = Browser::start().await;
    let console = browser.page().await;
    let base = format!("http://{}", node.addr);
    console_login(&console, &base, ADMIN_PASSWORD).await;
    console
        .wait_text("#room-list", UI, |t| t.contains("demo"))
        .await;
    console.click("button[data-room=demo]").await;
    console.wait_text("#feed", UI, |t| t == "live").await;
    // A <select> takes no typing: pick the option, then apply the dial.
    let choose = |mode: &'static str| {
        let console = &console;
        async move {
            console
                .eval(&format!(
                    "document.getElementById('dial-mode').value = '{mode}'; return true"
                ))
                .await;
            console
                .click("form[data-field=mode] button[type=submit]")
                .await;
            console
                .wait_text("#dial-status", UI, |t| {
                    t.contains(&format!("mode = \"{mode}\""))
                })
                .await;
        }
    };
    choose("reject").await;
    let device = browser.page().await;
    device.goto(&format!("{base}/r/demo")).await;
    wait_state(&device, "closed").await;
    device
        .wait_text("#headline", UI, |t| t.contains("not taking visitors"))
        .await;

    choose("passthrough").await;
    // The page asks again every 30 s; a reload asks now.
    device.goto(&format!("{base}/r/demo")).await;
    device
        .wait_url(UI, |u| u.contains("/demo/target?pace_token="))
        .await;
    let auth = format!("Bearer {token}");
    let (_, room) = http(
        node.addr,
        "GET",
        "/api/v1/admin/rooms/demo",
        &[("authorization", auth.as_str())],
        "",
    )
    .await
    .unwrap();
    assert!(room.contains(r#""mode":"passthrough""#), "{room}");
    assert!(room.contains(r#""capacity":0"#), "{room}");
}

/// A scheduled event in the page: before the pre-queue opens it counts
/// down (with the commitment to the shuffle's seed) and joins by itself at
/// the opening; in the pre-queue it says it waits for the start, with the
/// count; after the start it shows its place in line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_counts_down_then_prequeues_then_shows_the_place() {
    let (node, token) = node(0).await;
    let now = pace_node::store::now_ms();
    let hour = 3_600_000u64;
    // The pre-queue opens in an hour; the event lets nobody in yet
    // (capacity 0).
    let opens = now + hour;
    set_room(&node, &token, |c| {
        c["events"] = json!([{"id": "drop", "prequeue_start": opens, "event_start": now + hour,
            "event_end": now + 2 * hour, "order": "shuffle", "capacity": 0,
            "message": "The sneaker drop opens soon"}]);
    })
    .await;
    let (_, room) = http(node.addr, "GET", "/api/v1/rooms/demo", &[], "")
        .await
        .unwrap();
    let room: Value = serde_json::from_str(&room).unwrap();
    let commitment = room["config"]["events"][0]["seed_sha256"]
        .as_str()
        .unwrap()
        .to_owned();

    let browser = Browser::start().await;
    let page = browser.page().await;
    page.goto(&url(&node, "/r/demo")).await;
    wait_state(&page, "countdown").await;
    assert!(page.text("#headline").await.contains("The line opens in"));
    page.wait_text("#countdown", UI, |t| t.contains(':')).await;
    page.wait_text("#seed-sha256", UI, |t| t == commitment)
        .await;
    page.wait_text("#message", UI, |t| t.contains("sneaker drop"))
        .await;
    page.screenshot("event-countdown").await;

    // The opening moved to a few seconds from now; a reload counts down
    // to it, and at the opening the page joins by itself: the pre-queue,
    // with the count.
    set_room(&node, &token, |c| {
        c["events"][0]["prequeue_start"] = json!(pace_node::store::now_ms() + 5_000);
    })
    .await;
    page.refresh().await;
    wait_state(&page, "prequeue").await;
    assert!(
        page.text("#headline")
            .await
            .contains("waiting for the start")
    );
    page.wait_text("#waiting", UI, |t| t == "1").await;
    let other = waiting_device(&node, "demo", "early-2").await;
    page.wait_text("#detail", UI, |t| {
        t.starts_with("2 people are in the pre-queue")
    })
    .await;
    page.screenshot("event-prequeue").await;

    // The start (moved to now): the pre-queue is shuffled and the page
    // shows its place among the two.
    set_room(&node, &token, |c| {
        c["events"][0]["event_start"] = json!(pace_node::store::now_ms());
    })
    .await;
    wait_state(&page, "waiting").await;
    page.wait_text("#position", UI, |t| t == "1" || t == "2")
        .await;
    page.wait_text("#waiting", UI, |t| t == "2").await;
    page.wait_text("#countdown", UI, str::is_empty).await;
    page.screenshot("event-live-position").await;
    drop(other);
    page.close().await;
}

/// The console schedules an event (a shuffled pre-queue with its own
/// capacity) and lists it with its commitment; the page then counts down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_schedules_an_event() {
    let (node, token) = node(0).await;
    let browser = Browser::start().await;
    let console = browser.page().await;
    let base = format!("http://{}", node.addr);
    console_login(&console, &base, ADMIN_PASSWORD).await;
    console
        .wait_text("#room-list", UI, |t| t.contains("demo"))
        .await;
    console.click("button[data-room=demo]").await;
    console
        .wait_text("#event-list", UI, |t| t == "No events.")
        .await;
    // datetime-local fields take the browser's local time, one hour apart.
    console
        .eval(
            "const at = (h) => { const d = new Date(Date.now() + h * 3600000 - new Date().getTimezoneOffset() * 60000); return d.toISOString().slice(0, 19); };
             document.getElementById('event-id').value = 'launch';
             document.getElementById('event-prequeue_start').value = at(1);
             document.getElementById('event-event_start').value = at(2);
             document.getElementById('event-event_end').value = at(3);
             document.getElementById('event-order').value = 'shuffle';
             document.getElementById('event-capacity').value = '7';
             return true",
        )
        .await;
    console
        .click("form[data-field=events] button[type=submit]")
        .await;
    console
        .wait_text("#dial-status", UI, |t| t.contains("events = launch"))
        .await;
    console
        .wait_text("#event-list", UI, |t| {
            t.contains("launch") && t.contains("SHA-256(seed)")
        })
        .await;
    let auth = format!("Bearer {token}");
    let (_, room) = http(
        node.addr,
        "GET",
        "/api/v1/admin/rooms/demo",
        &[("authorization", auth.as_str())],
        "",
    )
    .await
    .unwrap();
    let room: Value = serde_json::from_str(&room).unwrap();
    let event = &room["config"]["events"][0];
    assert_eq!(event["id"], "launch", "{room}");
    assert_eq!(event["order"], "shuffle");
    assert_eq!(event["capacity"], 7);
    let now = pace_node::store::now_ms();
    let opens = event["prequeue_start"].as_u64().unwrap();
    assert!(
        opens > now + 3_500_000 && opens < now + 3_700_000,
        "{event}"
    );
    console.screenshot("console-event").await;
    let page = browser.page().await;
    page.goto(&format!("{base}/r/demo")).await;
    wait_state(&page, "countdown").await;
    assert!(page.text("#headline").await.contains("opens in"));
}
