//! The rooms' audit logs over HTTP: the admins' export and the public,
//! anonymised one, both chained and signed with the cluster's keys —
//! checked here independently of the node's own code (SHA-256 over the
//! documented canonical text, the JWS against the published JWKS).

use std::time::Duration;

use jsonwebtoken::{Algorithm, Validation};
use pace_node::admission::Jwks;
use pace_protocol::ServerFrame;
use pace_protocol::audit::{
    CheckpointClaims, GENESIS, LogLine, chain_hash, device_hash, session_hash,
};
use serde_json::{Value, json};

use crate::support::*;

fn room_config(capacity: u32) -> Value {
    room_json(capacity, |_| {})
}

fn parse(text: &str) -> Vec<LogLine> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Runs `pace-node audit verify LOG --jwks JWKS EXTRA…`: exit code and
/// standard output.
fn audit_verify(log: &std::path::Path, jwks: &std::path::Path, extra: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pace-node"))
        .args(["audit", "verify"])
        .arg(log)
        .arg("--jwks")
        .arg(jwks)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The claims of a JWT signed by a key of `jwks` for `aud`.
fn decode(token: &str, jwks: &Jwks, aud: &str) -> Value {
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    let key = jwks
        .find(header.kid.as_deref().unwrap())
        .unwrap()
        .decoding_key()
        .unwrap();
    let mut v = Validation::new(Algorithm::EdDSA);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.set_audience(&[aud]);
    jsonwebtoken::decode::<Value>(token, &key, &v)
        .unwrap()
        .claims
}

/// Checks the chain from genesis and every checkpoint's signature and
/// claims against `jwks`; returns the last checkpoint's seq.
fn check(lines: &[LogLine], room: &str, jwks: &Jwks) -> u64 {
    let mut prev = GENESIS.to_owned();
    let mut sealed = 0;
    let mut last_seq = 0;
    for line in lines {
        match line {
            LogLine::Header(h) => assert_eq!(h.room, room),
            LogLine::Checkpoint(c) => {
                assert_eq!(c.seq, last_seq, "a checkpoint follows the entry it signs");
                assert_eq!(c.head, prev, "checkpoint {} head", c.seq);
                let claims: CheckpointClaims =
                    serde_json::from_value(decode(&c.jws, jwks, &format!("pace-log/{room}")))
                        .unwrap();
                assert_eq!((claims.seq, claims.head.as_str()), (c.seq, c.head.as_str()));
                assert_eq!(claims.room, room);
                sealed = c.seq;
            }
            entry => {
                let (p, h) = entry.link().unwrap();
                assert_eq!(p, prev, "entry {:?} prev", entry.seq());
                assert_eq!(
                    h,
                    chain_hash(&prev, &entry.canonical().unwrap()),
                    "entry {:?} hash",
                    entry.seq()
                );
                last_seq = entry.seq().unwrap();
                assert_eq!(last_seq, entry.seq().unwrap());
                prev = h.to_owned();
            }
        }
    }
    sealed
}

#[tokio::test]
async fn a_rooms_log_is_exported_chained_and_signed() {
    let data_dir = tenants_dir(&["acme", "globex"]);
    let node = TestNode::start_with(|c| {
        c.rooms.admit_tick = Duration::from_millis(50);
        c.rooms.audit_seal_interval = Duration::from_millis(100);
        c.store.data_dir = data_dir;
        c.web.demo_room = false;
    })
    .await;
    let acme = admin_login(node.addr, "acme").await;
    let (status, body) = http(
        node.addr,
        "PUT",
        "/api/v1/admin/rooms/shop",
        &[("authorization", &format!("Bearer {acme}"))],
        &room_config(1).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");

    let (_, jwks) = http(node.addr, "GET", "/.well-known/jwks.json", &[], "")
        .await
        .unwrap();
    let jwks = Jwks::from_json(&jwks).unwrap();

    // A is admitted, B waits; A's session is released and B is admitted.
    let (mut a, _) = node.connect("dev-a").await;
    send_text(&mut a, r#"{"type":"join","room":"shop"}"#).await;
    let adm_a = wait_admitted(&mut a).await;
    let (mut b, _) = node.connect("dev-b").await;
    send_text(&mut b, r#"{"type":"join","room":"shop"}"#).await;
    // The answer to join tells the device its ticket.
    let ticket_b = match next_frame(&mut b).await {
        ServerFrame::Queue(q) => q.ticket.unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(ticket_b, 2);
    let (status, body) = http(
        node.addr,
        "POST",
        "/api/v1/sessions/release",
        &[("authorization", &format!("Bearer {KEY}"))],
        &json!({"token": adm_a.token}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    wait_admitted(&mut b).await;

    // The public log shows the sealed entries: wait for the seal over all
    // five (join A, admit A, join B, end A, admit B).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let public = loop {
        let (status, headers, text) =
            http_full(node.addr, "GET", "/api/v1/rooms/shop/log", &[], "")
                .await
                .unwrap();
        assert_eq!(status, 200, "{text}");
        assert_eq!(
            headers["content-type"].to_str().unwrap(),
            "application/jsonl; charset=utf-8"
        );
        let lines = parse(&text);
        if check(&lines, "shop", &jwks) == 5 {
            break lines;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never sealed: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let kinds: Vec<&str> = public
        .iter()
        .map(|l| match l {
            LogLine::Header(_) => "header",
            LogLine::Join(_) => "join",
            LogLine::Admit(_) => "admit",
            LogLine::End(_) => "end",
            LogLine::Commit(_) => "commit",
            LogLine::Shuffle(_) => "shuffle",
            LogLine::Checkpoint(_) => "checkpoint",
        })
        .filter(|k| *k != "checkpoint")
        .collect();
    assert_eq!(kinds, ["header", "join", "admit", "join", "end", "admit"]);
    // A device finds its own entry by its ticket and recognises its hash;
    // raw ids appear nowhere in the public log.
    let LogLine::Join(join_a) = &public[1] else {
        panic!("{:?}", public[1])
    };
    // (Entry 1 is the first line after the header: nothing was sealed
    // before it.)
    assert_eq!(join_a.ticket, 1);
    assert_eq!(join_a.device, device_hash("shop", "dev-a"));
    let jti_a = decode(&adm_a.token, &jwks, "shop")["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    let public_text = public
        .iter()
        .map(LogLine::to_json)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!public_text.contains("dev-a") && !public_text.contains(&jti_a));
    assert!(public_text.contains(&session_hash(&jti_a)));

    // The admins' export has the raw session ids and verifies the same.
    let (status, text) = http(
        node.addr,
        "GET",
        "/api/v1/admin/rooms/shop/log",
        &[("authorization", &format!("Bearer {acme}"))],
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
    let admin = parse(&text);
    check(&admin, "shop", &jwks);
    let admit_a = admin
        .iter()
        .find_map(|l| match l {
            LogLine::Admit(a) if a.ticket == 1 => Some(a),
            _ => None,
        })
        .unwrap();
    assert_eq!(admit_a.session.as_deref(), Some(jti_a.as_str()));
    assert_eq!(admit_a.capacity, 1);

    // `pace-node audit verify` agrees; a device checks its own entry; an
    // entry altered in the file is named.
    let dir = scratch_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let (log_file, jwks_file) = (dir.join("shop.jsonl"), dir.join("jwks.json"));
    std::fs::write(&log_file, &text).unwrap();
    std::fs::write(&jwks_file, jwks.to_json()).unwrap();
    let ticket_arg = ticket_b.to_string();
    let (code, out) = audit_verify(
        &log_file,
        &jwks_file,
        &["--device", "dev-b", "--ticket", &ticket_arg],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 admissions, 0 inversions"), "{out}");
    assert!(
        out.contains("device: ticket 2 joined at entry 3, admitted at entry 5"),
        "{out}"
    );
    assert!(out.ends_with("VERIFIED\n"), "{out}");
    let altered = text.replacen("\"ticket\":2,", "\"ticket\":1,", 1);
    let bad_file = dir.join("altered.jsonl");
    std::fs::write(&bad_file, altered).unwrap();
    let (code, out) = audit_verify(&bad_file, &jwks_file, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("entry 3: the entry's contents do not match its hash (altered)"),
        "{out}"
    );
    let (code, _) = audit_verify(&dir.join("missing.jsonl"), &jwks_file, &[]);
    assert_eq!(code, 2);

    // Another tenant's admin sees no such room; nor does anyone for an
    // unknown room.
    let globex = admin_login(node.addr, "globex").await;
    let (status, _) = http(
        node.addr,
        "GET",
        "/api/v1/admin/rooms/shop/log",
        &[("authorization", &format!("Bearer {globex}"))],
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 404);
    let (status, _) = http(node.addr, "GET", "/api/v1/rooms/nope/log", &[], "")
        .await
        .unwrap();
    assert_eq!(status, 404);
    assert!(
        node.metric("pace_audit_seals_total{outcome=\"sealed\"}")
            .await
            >= 1.0
    );
    assert!(
        node.metric("pace_audit_exports_total{kind=\"admin\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn entries_past_the_retention_are_dropped_up_to_an_anchor() {
    let node = TestNode::start_with(|c| {
        c.rooms.admit_tick = Duration::from_millis(50);
        c.rooms.audit_seal_interval = Duration::from_millis(50);
        c.rooms.audit_retention = Duration::from_millis(300);
        c.web.demo_room = false;
    })
    .await;
    let (status, body) = http(
        node.addr,
        "PUT",
        "/api/v1/rooms/old",
        &[("authorization", &format!("Bearer {KEY}"))],
        &room_config(0).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let (mut a, _) = node.connect("dev-a").await;
    send_text(&mut a, r#"{"type":"join","room":"old"}"#).await;
    next_frame(&mut a).await;
    // After the retention the entry is gone; its checkpoint stays as the
    // anchor, so the log is still a signed whole.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = http(node.addr, "GET", "/api/v1/rooms/old/log", &[], "")
            .await
            .unwrap();
        let lines = parse(&text);
        let entries = lines.iter().filter(|l| l.link().is_some()).count();
        let anchors = lines
            .iter()
            .filter(|l| matches!(l, LogLine::Checkpoint(c) if c.seq == 1))
            .count();
        if entries == 0 && anchors == 1 {
            let LogLine::Header(h) = &lines[0] else {
                panic!()
            };
            assert_eq!((h.first_seq, h.last_seq), (0, 0));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never trimmed: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The issue's surge check: 1,000 devices through three nodes over Redis
/// behind HAProxy, every node ticking and sealing at once; the public log
/// of the whole surge verifies — chain, signatures, ticket order, capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_of_a_thousand_device_surge_over_three_nodes_verifies() {
    const DEVICES: usize = 1_000;
    const CAPACITY: u32 = 50;
    let cluster = Cluster::start(
        3,
        &[
            "--admit-tick",
            "100ms",
            "--position-refresh",
            "1s",
            "--audit-seal-interval",
            "200ms",
        ],
    )
    .await;
    let gw = std::sync::Arc::new(cluster.gateway.handle());
    let (status, body) = http(
        gw.addr,
        "PUT",
        "/api/v1/rooms/surge",
        &[("authorization", &format!("Bearer {KEY}"))],
        &json!({"capacity": CAPACITY, "admit_per_minute": null, "session_ttl_secs": 600,
                "target_url": "https://shop.example/in", "state": "open", "pow_difficulty": 0})
        .to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");

    // Every device joins, waits for its admission, holds the slot briefly
    // and releases it through the target site's back end (service key).
    let mut devices = tokio::task::JoinSet::new();
    for i in 0..DEVICES {
        let gw = gw.clone();
        devices.spawn(async move {
            let (mut ws, _) = gw.connect(&format!("surge-{i:04}")).await;
            send_text(&mut ws, r#"{"type":"join","room":"surge"}"#).await;
            let token = loop {
                let msg = tokio::time::timeout(
                    Duration::from_secs(90),
                    futures_util::StreamExt::next(&mut ws),
                )
                .await
                .unwrap_or_else(|_| panic!("surge-{i:04} never admitted"));
                if let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) = msg
                    && let Ok(ServerFrame::Admitted(a)) = serde_json::from_str(&t)
                {
                    break a.token;
                }
            };
            tokio::time::sleep(Duration::from_millis(20 + (i % 7) as u64 * 10)).await;
            let (status, body) = http(
                gw.addr,
                "POST",
                "/api/v1/sessions/release",
                &[("authorization", &format!("Bearer {KEY}"))],
                &json!({ "token": token }).to_string(),
            )
            .await
            .unwrap();
            assert_eq!(status, 200, "{body}");
        });
    }
    while let Some(r) = devices.join_next().await {
        r.unwrap();
    }

    // Wait for the seal over every entry: 1,000 joins, admissions, ends.
    let want = 3 * DEVICES as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let text = loop {
        let (status, text) = http(gw.addr, "GET", "/api/v1/rooms/surge/log", &[], "")
            .await
            .unwrap();
        assert_eq!(status, 200);
        let header: LogLine = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        if matches!(header, LogLine::Header(h) if h.last_seq == want) {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "never sealed all");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (_, jwks) = http(gw.addr, "GET", "/.well-known/jwks.json", &[], "")
        .await
        .unwrap();
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&jwks).unwrap();
    let report = pace_node::audit::verify::verify(&text, &jwks, None);
    assert!(report.ok(), "{report}");
    assert_eq!(
        (report.entries, report.admissions, report.inversions),
        (want, DEVICES as u64, 0)
    );
    assert_eq!(report.signed_through, want);
    assert!(report.max_active <= u64::from(CAPACITY), "{report}");
    assert!(report.checkpoints >= 2, "{report}");
    // The three nodes sealed in turn, and none forked the chain.
    let mut sealed = 0.0;
    for i in 0..3 {
        sealed += cluster
            .node(i)
            .metric("pace_audit_seals_total{outcome=\"sealed\"}")
            .await;
        assert_eq!(
            cluster
                .node(i)
                .metric("pace_audit_seals_total{outcome=\"broken\"}")
                .await,
            0.0
        );
    }
    assert_eq!(sealed, report.checkpoints as f64);
}
