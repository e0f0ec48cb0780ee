//! Admission enforced at the gateway, live: a real HAProxy, configured by
//! `pace-node gateway haproxy --protect`, in front of a real node (ES256
//! keys) and a demo target site. A real admission opens the site (by the
//! hand-off query, then by the cookie the gateway sets, or by
//! `Authorization`); no token, an expired one, another room's, another
//! issuer's, a tampered one, `alg: none`, HS256 keyed with the public key
//! and a retired key's are all sent to the waiting page; during a key
//! rotation both keys open it and after retirement only the new one.
//! Renewal works through the protected route and refreshes the cookie.
//! And in a real browser: the waiting page, the admission, the redirect
//! through HAProxy into the protected site, a renewal from the site's page;
//! without a token, the waiting page. Also the operator's side: `pace-node
//! keys` for ES256 keys, and a node that refuses to start on
//! `--admission-alg ES256` without an ES256 key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use pace_node::admission::{AdmissionClaims, KeyAlg, KeySet, generate_alg_into_at, retire};
use pace_protocol::ServerFrame;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::*;

const ROOM: &str = "sale";

/// The protected site: answers every request with who the gateway says was
/// admitted, and the path.
struct DemoTarget {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DemoTarget {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DemoTarget {
    async fn start() -> DemoTarget {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65_536 {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or("?").to_owned();
                    let device = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("x-pace-admitted-device")
                                .then(|| v.trim().to_owned())
                        })
                        .unwrap_or_default();
                    let body = format!(
                        "<!doctype html><title>Target</title><p id=in>let in: {device}</p><p id=path>{path}</p>\n"
                    );
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(resp.as_bytes()).await;
                });
            }
        });
        DemoTarget { addr, task }
    }
}

/// A live HAProxy from `pace-node gateway haproxy --protect …`.
pub struct ProtectingGateway {
    pub addr: SocketAddr,
    _haproxy: Haproxy,
}

/// `pace-node keys export-pem`: the `--admission-key` arguments it prints.
pub fn export_pem(keys: &Path, out_dir: &Path) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_pace-node"))
        .args(["keys", "export-pem"])
        .arg(keys)
        .arg("--out-dir")
        .arg(out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            l.strip_prefix("--admission-key ")
                .unwrap_or_else(|| panic!("unexpected export-pem line {l:?}"))
                .to_owned()
        })
        .collect()
}

impl ProtectingGateway {
    pub async fn start(node: SocketAddr, site: SocketAddr, keys: &[String]) -> ProtectingGateway {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut args: Vec<String> = vec![
            "--bind".into(),
            addr.to_string(),
            "--node".into(),
            node.to_string(),
            "--protect".into(),
            "/shop/".into(),
            "--room".into(),
            ROOM.into(),
            "--site".into(),
            site.to_string(),
            "--insecure-cookie".into(),
        ];
        for key in keys {
            args.push("--admission-key".into());
            args.push(key.clone());
        }
        let mut haproxy = Haproxy::default();
        haproxy.start(&args, false);
        let gw = ProtectingGateway {
            addr,
            _haproxy: haproxy,
        };
        // Up once the node's JWKS answers through it (node healthy).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok((200, _)) = http(addr, "GET", "/.well-known/jwks.json", &[], "").await {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "haproxy did not come up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        gw
    }

    /// GET through the gateway: status, `Location`, `Set-Cookie`, body.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let (status, h, body) = http_full(self.addr, "GET", path, headers, "")
            .await
            .unwrap();
        let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Answer {
            status,
            location: header("location"),
            set_cookie: header("set-cookie"),
            body,
        }
    }
}

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub location: Option<String>,
    pub set_cookie: Option<String>,
    pub body: String,
}

/// Asserts the gateway let the request through to the target site.
fn assert_let_in(a: &Answer, device: &str, what: &str) {
    assert_eq!(a.status, 200, "{what}: {a:?}");
    assert!(
        a.body.contains(&format!("let in: {device}<")),
        "{what}: {a:?}"
    );
}

/// Asserts the gateway sent the request to the waiting page.
fn assert_refused(a: &Answer, what: &str) {
    assert_eq!(
        (a.status, a.location.as_deref()),
        (302, Some("/r/sale")),
        "{what} must be sent to the waiting page: {a:?}"
    );
    assert!(!a.body.contains("let in"), "{what}: {a:?}");
}

fn keys_path(dir: &Path) -> PathBuf {
    dir.join("keys.json")
}

/// A node signing ES256 with the keys in `dir`, its admissions going to
/// `target_url`.
async fn es256_node(dir: &Path) -> TestNode {
    let keys = keys_path(dir);
    TestNode::start_with(move |c| {
        c.admission.keys = Some(keys);
        c.admission.admission_alg = KeyAlg::Es256;
        c.rooms.admit_tick = Duration::from_millis(50);
        c.rooms.position_refresh = Duration::from_millis(100);
        c.web.demo_room = false;
    })
    .await
}

async fn put_room(node: &TestNode, target_url: &str) {
    put_room_with(node, target_url, 10).await;
}

async fn put_room_with(node: &TestNode, target_url: &str, capacity: u32) {
    let body = room_json(capacity, |c| c.target_url = target_url.to_owned());
    let (status, text) = crate::support::put_room(node, ROOM, body).await;
    assert!(status == 200 || status == 201, "{status} {text}");
}

/// A real admission: the device joins the room and is admitted.
async fn admit(node: &TestNode, device: &str) -> pace_protocol::AdmittedFrame {
    let (mut ws, _) = node.connect(device).await;
    send_text(&mut ws, &format!(r#"{{"type":"join","room":"{ROOM}"}}"#)).await;
    loop {
        match next_frame(&mut ws).await {
            ServerFrame::Admitted(a) => return a,
            ServerFrame::Queue(_) => continue,
            other => panic!("expected admitted, got {other:?}"),
        }
    }
}

fn claims(device: &str, iat: u64, exp: u64) -> AdmissionClaims {
    AdmissionClaims {
        iss: "pace".into(),
        aud: ROOM.into(),
        sub: device.into(),
        jti: "00000000-0000-4000-8000-000000000001".into(),
        iat,
        exp,
        target: None,
    }
}

fn kid_of(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let v: Value = serde_json::from_slice(&B64.decode(header).unwrap()).unwrap();
    v["kid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn haproxy_admits_only_valid_admissions_to_the_protected_site() {
    let dir = scratch_dir();
    let keys = keys_path(&dir);
    let now = pace_node::admission::unix_now();
    // Made two hours ago, so an expired token can be signed with it.
    let k1 = generate_alg_into_at(&keys, KeyAlg::Es256, now - 7200, Duration::ZERO).unwrap();
    let node = es256_node(&dir).await;
    let target = DemoTarget::start().await;
    let pems = dir.join("pems");
    let published = export_pem(&keys, &pems);
    assert_eq!(published.len(), 1);
    let gw = ProtectingGateway::start(node.addr, target.addr, &published).await;
    put_room(&node, &format!("http://{}/shop/welcome", gw.addr)).await;

    // No token: to the waiting page, which the gateway serves from a node.
    assert_refused(&gw.get("/shop/welcome", &[]).await, "no token");
    let page = gw.get("/r/sale", &[]).await;
    assert_eq!(page.status, 200, "the waiting page through the gateway");

    // A real admission, handed off by query: let in, and the gateway keeps
    // it in a cookie for the next requests.
    let admitted = admit(&node, "buyer-1").await;
    assert_eq!(kid_of(&admitted.token), k1);
    let target_path = admitted
        .target_url
        .strip_prefix(&format!("http://{}", gw.addr))
        .unwrap()
        .to_owned();
    let handoff = gw.get(&target_path, &[]).await;
    assert_let_in(&handoff, "buyer-1", "the hand-off");
    let cookie = handoff
        .set_cookie
        .clone()
        .expect("a cookie on the hand-off");
    assert!(
        cookie.starts_with(&format!("pace_admission={};", admitted.token))
            && cookie.contains("Path=/shop/")
            && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let jar = format!("pace_admission={}", admitted.token);
    let next = gw.get("/shop/cart", &[("cookie", &jar)]).await;
    assert_let_in(&next, "buyer-1", "the cookie");
    assert!(
        next.set_cookie.is_none(),
        "the cookie is set once: {next:?}"
    );
    let bearer = format!("Bearer {}", admitted.token);
    assert_let_in(
        &gw.get("/shop/api/order", &[("authorization", &bearer)])
            .await,
        "buyer-1",
        "Authorization: Bearer",
    );
    // A client cannot claim to be someone else towards the site.
    assert_let_in(
        &gw.get(
            "/shop/cart",
            &[("cookie", &jar), ("x-pace-admitted-device", "mallory")],
        )
        .await,
        "buyer-1",
        "a forged x-pace-admitted-device",
    );

    // Tokens signed with the cluster's own key, but not valid admissions.
    let set = KeySet::load(&keys)
        .unwrap()
        .signing_with(KeyAlg::Es256, &keys)
        .unwrap();
    let expired = set.sign(&claims("late", now - 7000, now - 10)).unwrap();
    assert_refused(
        &gw.get(&format!("/shop/?pace_token={expired}"), &[]).await,
        "expired",
    );
    let other_room = set
        .sign(&AdmissionClaims {
            aud: "other".into(),
            ..claims("x", now, now + 60)
        })
        .unwrap();
    assert_refused(
        &gw.get(&format!("/shop/?pace_token={other_room}"), &[])
            .await,
        "another room",
    );
    let other_issuer = set
        .clone()
        .with_issuer("someone-else")
        .sign(&AdmissionClaims {
            iss: "someone-else".into(),
            ..claims("x", now, now + 60)
        })
        .unwrap();
    assert_refused(
        &gw.get(&format!("/shop/?pace_token={other_issuer}"), &[])
            .await,
        "another issuer",
    );

    // Tampered: another device in the payload, the signature kept.
    let parts: Vec<&str> = admitted.token.split('.').collect();
    let mut payload: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    payload["sub"] = json!("mallory");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(payload.to_string()),
        parts[2]
    );
    assert_refused(
        &gw.get(&format!("/shop/?pace_token={tampered}"), &[]).await,
        "tampered",
    );
    // alg none, with the right kid and claims.
    let none_header = B64.encode(format!(r#"{{"alg":"none","typ":"JWT","kid":"{k1}"}}"#));
    let good_payload =
        B64.encode(serde_json::to_string(&claims("mallory", now, now + 60)).unwrap());
    for forged in [
        format!("{none_header}.{good_payload}."),
        format!("{none_header}.{good_payload}.{}", parts[2]),
    ] {
        assert_refused(
            &gw.get(&format!("/shop/?pace_token={forged}"), &[]).await,
            "alg none",
        );
        assert_refused(
            &gw.get("/shop/", &[("cookie", &format!("pace_admission={forged}"))])
                .await,
            "alg none in the cookie",
        );
    }
    // HS256 keyed with the published public key (algorithm confusion).
    let pem = std::fs::read(pems.join(format!("{k1}.pem"))).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(k1.clone());
    let hs256 = jsonwebtoken::encode(
        &header,
        &claims("mallory", now, now + 60),
        &jsonwebtoken::EncodingKey::from_secret(&pem),
    )
    .unwrap();
    assert_refused(
        &gw.get(&format!("/shop/?pace_token={hs256}"), &[]).await,
        "HS256 with the public key",
    );
    // A stranger's ES256 key under our kid.
    let stranger = KeySet::generate_in_memory_alg(KeyAlg::Es256).unwrap();
    let t = pace_node::admission::unix_now();
    let foreign = stranger.sign(&claims("mallory", t, t + 60)).unwrap();
    let fp: Vec<&str> = foreign.split('.').collect();
    let mut h: Value = serde_json::from_slice(&B64.decode(fp[0]).unwrap()).unwrap();
    h["kid"] = json!(k1);
    let foreign_under_our_kid = format!("{}.{}.{}", B64.encode(h.to_string()), fp[1], fp[2]);
    assert_refused(
        &gw.get(&format!("/shop/?pace_token={foreign_under_our_kid}"), &[])
            .await,
        "a stranger's signature under our kid",
    );
    assert_refused(
        &gw.get(&format!("/shop/?pace_token={foreign}"), &[]).await,
        "a stranger's kid",
    );

    // Renewal through the protected route, with the device's own
    // credential (this node takes x-device-id): a new token comes back in
    // the cookie and opens the site.
    let (status, h, body) = http_full(
        gw.addr,
        "POST",
        "/shop/_pace/renew",
        &[("cookie", &jar), ("x-device-id", "buyer-1")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let renewed: Value = serde_json::from_str(&body).unwrap();
    let token = renewed["token"].as_str().unwrap().to_owned();
    let cookie = h
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        cookie.starts_with(&format!("pace_admission={token};")),
        "{cookie}"
    );
    assert!(
        h.get("x-pace-admission").is_none(),
        "the header stays internal"
    );
    assert_let_in(
        &gw.get("/shop/", &[("cookie", &format!("pace_admission={token}"))])
            .await,
        "buyer-1",
        "the renewed cookie",
    );
    // Somebody else's credential cannot renew this session.
    let (status, _, _) = http_full(
        gw.addr,
        "POST",
        "/shop/_pace/renew",
        &[("cookie", &jar), ("x-device-id", "mallory")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 404);
    drop(gw);
    drop(node);

    // Key rotation: a second ES256 key is published beside the first; the
    // gateway carries both, and tokens of either open the site.
    let k2 = generate_alg_into_at(&keys, KeyAlg::Es256, now, Duration::ZERO).unwrap();
    let both = export_pem(&keys, &pems);
    assert_eq!(both.len(), 2);
    let node = es256_node(&dir).await;
    let gw = ProtectingGateway::start(node.addr, target.addr, &both).await;
    put_room(&node, &format!("http://{}/shop/welcome", gw.addr)).await;
    let new_admission = admit(&node, "buyer-2").await;
    assert_eq!(kid_of(&new_admission.token), k2, "the newest key signs");
    let old_token = set.sign(&claims("buyer-old", now, now + 300)).unwrap();
    assert_eq!(kid_of(&old_token), k1);
    for (token, device) in [(&new_admission.token, "buyer-2"), (&old_token, "buyer-old")] {
        assert_let_in(
            &gw.get(&format!("/shop/?pace_token={token}"), &[]).await,
            device,
            "during the rotation",
        );
    }
    drop(gw);

    // The old key retired: only the new one opens the site.
    retire(&keys, &k1).unwrap();
    let after = export_pem(&keys, &pems);
    assert_eq!(after.len(), 1);
    assert!(after[0].starts_with(&format!("{k2}=")));
    let gw = ProtectingGateway::start(node.addr, target.addr, &after).await;
    assert_refused(
        &gw.get(&format!("/shop/?pace_token={old_token}"), &[]).await,
        "a retired key's token",
    );
    assert_let_in(
        &gw.get(&format!("/shop/?pace_token={}", new_admission.token), &[])
            .await,
        "buyer-2",
        "the new key after retirement",
    );
}

/// Long enough for an admission tick and a page update on a loaded CI
/// machine; never a measure of speed.
const UI: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_is_let_into_the_protected_site_only_after_the_waiting_room() {
    let dir = scratch_dir();
    let keys = keys_path(&dir);
    let now = pace_node::admission::unix_now();
    generate_alg_into_at(&keys, KeyAlg::Es256, now, Duration::ZERO).unwrap();
    let node = es256_node(&dir).await;
    let target = DemoTarget::start().await;
    let published = export_pem(&keys, &dir.join("pems"));
    let gw = ProtectingGateway::start(node.addr, target.addr, &published).await;
    let site = format!("http://{}/shop/welcome", gw.addr);
    put_room_with(&node, &site, 0).await;

    let browser = crate::browser::Browser::start().await;
    let page = browser.page().await;
    // Straight to the site: sent to the waiting page, where it waits.
    page.goto(&site).await;
    page.wait_url(UI, |u| u.ends_with("/r/sale")).await;
    page.wait_text("#position", UI, |t| t == "1").await;
    page.screenshot("protected-site-waiting").await;

    // Capacity frees: admitted, handed off through HAProxy, let in.
    put_room_with(&node, &site, 1).await;
    page.wait_url(UI, |u| u.contains("/shop/welcome?pace_token="))
        .await;
    let device = page
        .eval("return localStorage.getItem('pace.device_id')")
        .await;
    let device = device.as_str().expect("the page's device id").to_owned();
    page.wait_text("#in", UI, |t| t == format!("let in: {device}"))
        .await;
    page.screenshot("protected-site-let-in").await;
    // Further pages of the site: the gateway's cookie, no token in the URL.
    page.goto(&format!("http://{}/shop/cart", gw.addr)).await;
    assert_eq!(page.text("#in").await, format!("let in: {device}"));
    assert_eq!(page.text("#path").await, "/shop/cart");
    // A page of the site renews the session, as kong/README.md shows: the
    // device token the waiting page stored, the cookie the gateway holds.
    let renewed = page
        .eval_async(
            "const done = arguments[arguments.length - 1];
             fetch('/shop/_pace/renew', {method: 'POST',
               headers: {authorization: 'Bearer ' + localStorage.getItem('pace.token')}})
               .then(async r => done({status: r.status, body: await r.json()}))
               .catch(e => done({error: String(e)}));",
        )
        .await;
    assert_eq!(renewed["status"], 200, "{renewed}");
    assert_eq!(renewed["body"]["renewed"], true, "{renewed}");
    page.goto(&format!("http://{}/shop/after-renewal", gw.addr))
        .await;
    assert_eq!(page.text("#in").await, format!("let in: {device}"));
    page.close().await;

    // Another browser profile, without a token: the waiting page.
    let stranger = browser.page().await;
    stranger
        .goto(&format!("http://{}/shop/cart", gw.addr))
        .await;
    stranger.wait_url(UI, |u| u.ends_with("/r/sale")).await;
    stranger.close().await;
}

#[tokio::test]
async fn a_node_told_to_sign_es256_without_an_es256_key_refuses_to_start() {
    let dir = scratch_dir();
    let keys = keys_path(&dir);
    pace_node::admission::generate_into(&keys).unwrap();
    let mut c = config();
    c.admission.keys = Some(keys);
    c.admission.admission_alg = KeyAlg::Es256;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = pace_node::run(c, listener, tokio_util::sync::CancellationToken::new())
        .await
        .expect_err("the node must refuse to start")
        .to_string();
    assert!(
        err.contains("no ES256 key") && err.contains("keys generate --alg ES256"),
        "{err}"
    );
}

/// `pace-node keys` for ES256, as an operator runs it: generate, list,
/// export, rotate, retire.
#[test]
fn the_keys_command_generates_lists_exports_and_retires_es256_keys() {
    let dir = scratch_dir();
    let keys = keys_path(&dir);
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_pace-node"))
            .arg("keys")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let file = keys.to_str().unwrap();
    let (code, out, err) = run(&["generate", "--alg", "ES256", "--out", file]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("added ES256 key "), "{out}");
    let (_, list, _) = run(&["list", file, "--alg", "ES256"]);
    assert!(
        list.contains("  ES256  created ") && list.contains("signing"),
        "{list}"
    );
    let first = list.split_whitespace().next().unwrap().to_owned();

    // Rotation: a second key, published first, then signing.
    let (code, _, err) = run(&[
        "generate",
        "--alg",
        "ES256",
        "--out",
        file,
        "--activate-in",
        "1h",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (_, list, _) = run(&["list", file, "--alg", "ES256"]);
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(list.contains("pending from"), "{list}");
    let pems = dir.join("pems");
    assert_eq!(export_pem(&keys, &pems).len(), 2);

    // The signing key cannot be retired while the other is still pending.
    let (code, _, err) = run(&["retire", file, &first]);
    assert_eq!(code, Some(2), "retiring the only signer must fail");
    assert!(err.contains("refusing to retire"), "{err}");
    let (code, _, err) = run(&["generate", "--alg", "nope", "--out", file]);
    assert_ne!(code, Some(0));
    assert!(err.contains("EdDSA or ES256"), "{err}");
}
