//! `deploy/prometheus` and `deploy/grafana`: promtool, a real Prometheus
//! scraping a real node, and the metrics the dashboard and alerts name.

use super::*;

// --- Prometheus ---------------------------------------------------------------

fn promtool() -> tokio::process::Command {
    let bin = ["promtool", "/usr/bin/promtool"]
        .into_iter()
        .find(|p| {
            std::process::Command::new(p)
                .arg("--version")
                .output()
                .is_ok()
        })
        .expect("promtool not found; install it with deploy/install-deps prometheus");
    tokio::process::Command::new(bin)
}

/// Every `expr:` of alerts.yml (single-line, or a `|` block), with the
/// alert it belongs to.
fn alert_exprs() -> Vec<(String, String)> {
    let text = read("deploy/prometheus/alerts.yml");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut alert = String::new();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim_start();
        if let Some(a) = t.strip_prefix("- alert: ") {
            alert = a.trim().to_owned();
        } else if let Some(e) = t.strip_prefix("expr: ") {
            if e.trim() == "|" {
                let indent = lines[i].len() - t.len();
                let mut block = Vec::new();
                while i + 1 < lines.len() {
                    let next = lines[i + 1];
                    let ni = next.len() - next.trim_start().len();
                    if next.trim().is_empty() || ni > indent {
                        block.push(next.trim());
                        i += 1;
                    } else {
                        break;
                    }
                }
                out.push((alert.clone(), block.join(" ")));
            } else {
                out.push((alert.clone(), e.trim().to_owned()));
            }
        }
        i += 1;
    }
    out
}

/// GitHub's anchor for a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[tokio::test]
async fn promtool_accepts_the_config_the_rules_and_the_rules_unit_tests() {
    let dir = repo().join("deploy/prometheus");
    for args in [
        vec!["check", "config", "prometheus.yml"],
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        let mut cmd = promtool();
        cmd.args(&args).current_dir(&dir);
        let (code, out, err) = run(cmd, Duration::from_secs(60)).await;
        assert_eq!(code, 0, "promtool {args:?}:\n{out}\n{err}");
    }

    // Every alert: a severity, a summary, a description, and a runbook link
    // to a section that exists in docs/operations.md.
    let text = read("deploy/prometheus/alerts.yml");
    let anchors: HashSet<String> = read("docs/operations.md")
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();
    let blocks: Vec<&str> = text.split("- alert: ").skip(1).collect();
    assert!(blocks.len() >= 9, "alerts: {}", blocks.len());
    for block in blocks {
        let name = block.lines().next().unwrap().trim();
        assert!(
            block.contains("severity: critical") || block.contains("severity: warning"),
            "{name}: severity"
        );
        for key in ["summary: ", "description: ", "runbook_url: "] {
            assert!(block.contains(key), "{name}: {key}");
        }
        let url = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("runbook_url: "))
            .unwrap()
            .trim_matches('"');
        let (page, frag) = url.split_once('#').expect("runbook_url has an anchor");
        assert!(page.ends_with("docs/operations.md"), "{name}: {url}");
        assert!(
            anchors.contains(frag),
            "{name}: no section #{frag} in docs/operations.md"
        );
    }
    // The alerts the operations issue asks for.
    for (alert, must) in [
        ("PaceNodeDown", "up{"),
        ("PaceNodeNotReady", "pace_ready"),
        ("PaceStoreDown", "pace_store_up"),
        ("PaceBusDropped", "increase(pace_bus_dropped_total"),
        ("PaceSlowConsumerDisconnects", "reason=\"slow_consumer\""),
        ("PaceRoomStalled", "pace_room_admitted_total"),
        ("PaceTokenSignErrors", "pace_token_sign_errors_total"),
    ] {
        assert!(
            alert_exprs()
                .iter()
                .any(|(a, e)| a == alert && e.contains(must)),
            "{alert} uses {must}"
        );
    }

    // The dashboard's queries parse, as recording rules promtool checks.
    let tmp = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in dashboard_exprs().iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&concrete(expr)).unwrap()
        ));
    }
    let path = tmp.path().join("dashboard-rules.yml");
    std::fs::write(&path, rules).unwrap();
    let mut cmd = promtool();
    cmd.arg("check").arg("rules").arg(&path);
    let (code, out, err) = run(cmd, Duration::from_secs(60)).await;
    assert_eq!(code, 0, "dashboard queries:\n{out}\n{err}");
}

/// A Prometheus process this test started; killed by PID on drop.
struct PrometheusProcess(std::process::Child);

impl Drop for PrometheusProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn prom_query(addr: SocketAddr, query: &str) -> Value {
    let q = form_urlencoded::Serializer::new(String::new())
        .append_pair("query", query)
        .finish();
    match http(addr, "GET", &format!("/api/v1/query?{q}"), &[], "").await {
        Ok((_, body)) => serde_json::from_str(&body).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// The single value of an instant query's answer, if any.
fn single_value(answer: &Value) -> Option<String> {
    answer["data"]["result"][0]["value"][1]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_a_node_and_loads_the_rules() {
    let node = NodeProcess::spawn(&[]);
    let handle = TestNode::external(node.addr);
    handle.wait_ready().await;
    let (_device, _) = handle.connect("watched").await;

    let dir = tempfile::tempdir().unwrap();
    let rules = repo().join("deploy/prometheus/alerts.yml");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {}\n\
         scrape_configs:\n  - job_name: pace\n    static_configs:\n      - targets: ['{}']\n        labels:\n          cluster: test\n",
        rules.display(),
        node.addr
    );
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let port = free_port();
    let web = SocketAddr::from(([127, 0, 0, 1], port));
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let bin = ["prometheus", "/usr/bin/prometheus"]
        .into_iter()
        .find(|p| {
            std::process::Command::new(p)
                .arg("--version")
                .output()
                .is_ok()
        })
        .expect("prometheus not found; install it with deploy/install-deps prometheus");
    let mut prom = PrometheusProcess(
        std::process::Command::new(bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let prom_log =
        || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = prom.0.try_wait().unwrap() {
            panic!("prometheus exited ({status}):\n{}", prom_log());
        }
        let up = prom_query(web, r#"up{job="pace"}"#).await;
        let open = prom_query(web, "pace_connections_open").await;
        if single_value(&up).as_deref() == Some("1") && single_value(&open).as_deref() == Some("1")
        {
            assert_eq!(
                open["data"]["result"][0]["metric"]["cluster"], "test",
                "{open}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no up == 1 and pace_connections_open == 1 within 20 s: up {up}, open {open}\n{}",
            prom_log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The rules loaded, and every dashboard query runs against real data.
    let (status, body) = http(web, "GET", "/api/v1/rules", &[], "").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let loaded: Vec<&Value> = v["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(loaded.len(), alert_exprs().len(), "{body}");
    for r in &loaded {
        assert_ne!(r["health"], "err", "{r}");
    }
    for (title, expr) in dashboard_exprs() {
        let answer = prom_query(web, &concrete(&expr)).await;
        assert_eq!(answer["status"], "success", "{title}: {expr}: {answer}");
    }
    // A healthy node fires nothing. (An alert may be pending for a moment
    // — e.g. readiness scraped as 0 while a loaded machine starts the node
    // — but pending is not firing: its `for` is what keeps it quiet.)
    let (_, body) = http(web, "GET", "/api/v1/alerts", &[], "").await.unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    let firing: Vec<&Value> = v["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["state"] != "pending")
        .collect();
    assert!(firing.is_empty(), "{body}");
}

// --- Grafana ------------------------------------------------------------------

/// Metrics the dashboard may use before nodes export them (none now).
/// Panels reading them must say so.
const COMING: &[&str] = &[];

/// Labelled metrics a node defines but shows in /metrics only once a label
/// value has a sample (a room exists, a token was refused). Each must be
/// declared in `src/metrics.rs`, so a typo here fails too.
const ON_FIRST_SAMPLE: &[&str] = &[
    "pace_room_waiting",
    "pace_room_active",
    "pace_room_admitted_total",
    "pace_tokens_rejected_total",
    "pace_room_wait_seconds_bucket",
    "pace_room_wait_seconds_sum",
    "pace_room_wait_seconds_count",
    "pace_audit_seals_total",
];

/// Series Prometheus itself adds to every target.
const BUILTIN: &[&str] = &["up", "scrape_duration_seconds", "scrape_samples_scraped"];

fn dashboard() -> Value {
    serde_json::from_str(&read("deploy/grafana/pace-dashboard.json")).expect("dashboard JSON")
}

/// Every panel query of the dashboard, with its panel title.
fn dashboard_exprs() -> Vec<(String, String)> {
    let d = dashboard();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                p["title"].as_str().unwrap().to_owned(),
                t["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

/// A dashboard query with Grafana's variables filled in.
fn concrete(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$cluster", ".*")
        .replace("$instance", ".*")
}

/// The metric names a PromQL expression reads: identifiers that are not
/// functions, keywords, label names (in `{}` or grouping lists), durations
/// or numbers.
fn metric_names(expr: &str) -> Vec<String> {
    // Drop strings, label matchers and range/subquery brackets.
    let mut cleaned = String::new();
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    let mut in_str: Option<char> = None;
    for c in expr.chars() {
        if let Some(q) = in_str {
            if c == q {
                in_str = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => in_str = Some(c),
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            _ if depth_brace > 0 || depth_bracket > 0 => {}
            _ => cleaned.push(c),
        }
    }
    // Tokens: identifiers (with Grafana's $variables), numbers, punctuation.
    let chars: Vec<char> = cleaned.chars().collect();
    let mut tokens: Vec<String> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' || c == '$' {
            let start = i;
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        } else if c.is_ascii_digit() || c == '.' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            tokens.push(format!("#{}", chars[start..i].iter().collect::<String>()));
        } else {
            if !c.is_whitespace() {
                tokens.push(c.to_string());
            }
            i += 1;
        }
    }
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];
    // Aggregations may be followed by `by (...)` rather than `(`.
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    let mut names = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        let next = tokens.get(i + 1).map(String::as_str);
        if GROUPING.contains(&t.as_str()) && next == Some("(") {
            // Skip the label list.
            while i < tokens.len() && tokens[i] != ")" {
                i += 1;
            }
        } else if t.starts_with('#') || t.starts_with('$') || next == Some("(") {
            // A number, a Grafana variable, a function or aggregation.
        } else if t
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && !KEYWORDS.contains(&t.to_lowercase().as_str())
            && !AGGREGATIONS.contains(&t.as_str())
        {
            names.push(t.clone());
        }
        i += 1;
    }
    names
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        metric_names(
            r#"sum by (reason) (rate(pace_disconnects_total{job="pace", reason=~"a|b"}[5m]))"#
        ),
        vec!["pace_disconnects_total"]
    );
    assert_eq!(
        metric_names(
            "max by (cluster, room) (pace_room_waiting) > 0 unless on (cluster, room) sum(increase(pace_room_admitted_total[10m])) > 0"
        ),
        vec!["pace_room_waiting", "pace_room_admitted_total"]
    );
    assert_eq!(
        metric_names(
            "process_resident_memory_bytes / clamp_min(pace_connections_open, 1) > 1300 * 1024"
        ),
        vec!["process_resident_memory_bytes", "pace_connections_open"]
    );
    assert_eq!(
        metric_names(
            "histogram_quantile(0.9, sum by (le) (rate(x_bucket[$__rate_interval]))) * 60"
        ),
        vec!["x_bucket"]
    );
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_use_only_metrics_a_node_exports() {
    // A node with every labelled metric exercised once.
    let node = TestNode::start().await;
    let (mut dev, _) = node.connect("metrics-dev").await;
    let refused = node.try_connect("/ws", &[]).await;
    assert!(
        refused.is_err(),
        "a handshake without a device id is refused"
    );
    send_text(&mut dev, "not json").await;
    let (status, _) = node.notify(json!({"scope": "all", "event": "hello"})).await;
    assert_eq!(status, 202);
    let _ = dev.close(None).await;
    drop(dev);
    node.wait_metric("pace_connections_open", 0.0).await;

    let text = node.metrics().await;
    let mut exported: BTreeSet<String> = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        exported.insert(line[..end].to_owned());
    }
    for want in [
        "pace_connections_open",
        "pace_handshakes_refused_total",
        "pace_disconnects_total",
        "pace_messages_delivered_total",
        "pace_notify_requests_total",
        "pace_frames_rejected_total",
        "pace_store_up",
        "pace_ready",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(exported.contains(want), "{want} not in /metrics:\n{text}");
    }
    let source = read("crates/pace-node/src/metrics.rs");
    for name in ON_FIRST_SAMPLE {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        assert!(
            source.contains(&format!("\"{family}\"")),
            "{name} is not defined in src/metrics.rs"
        );
    }
    let known = |name: &str| {
        exported.contains(name)
            || COMING.contains(&name)
            || ON_FIRST_SAMPLE.contains(&name)
            || BUILTIN.contains(&name)
    };

    // The dashboard: valid, and every query names known metrics only.
    let d = dashboard();
    assert_eq!(d["schemaVersion"], 39);
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let panels = d["panels"].as_array().unwrap();
    let mut ids = HashSet::new();
    let mut unknown = Vec::new();
    let mut coming_used = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate panel id {p}"
        );
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{}: wider than the grid",
            p["title"]
        );
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}: no query", p["title"]);
        let mut uses_coming = false;
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{}: {expr} reads no metric", p["title"]);
            for n in names {
                if !known(&n) {
                    unknown.push(format!("{}: {n} in {expr}", p["title"]));
                }
                if COMING.contains(&n.as_str()) && !exported.contains(&n) {
                    uses_coming = true;
                    coming_used.insert(n);
                }
            }
        }
        if uses_coming {
            assert!(
                p["description"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("Coming with the waiting room"),
                "{}: uses a metric nodes do not export yet, say so in its description",
                p["title"]
            );
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|s| s.rsplit_once(','))
                .map(|(m, _)| m)
                .unwrap_or(q);
            for n in metric_names(inner) {
                if !known(&n) {
                    unknown.push(format!("variable {}: {n}", v["name"]));
                }
            }
        }
    }

    // The alert rules too.
    for (alert, expr) in alert_exprs() {
        for n in metric_names(&expr) {
            if !known(&n) {
                unknown.push(format!("alert {alert}: {n} in {expr}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "metric names neither exported by a node nor listed as coming (typos?):\n{}",
        unknown.join("\n")
    );
    // Required panels.
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for t in [
        "Connections per node",
        "Handshakes refused by reason",
        "Disconnects by reason",
        "Messages delivered",
        "Notify requests",
        "Cluster bus",
        "Memory (RSS)",
        "CPU",
        "Ready per node",
        "Waiting per room",
        "Active sessions per room",
        "Admitted per minute",
        "Wait time (quantiles)",
        "Admission token signing errors",
    ] {
        assert!(titles.contains(&t), "panel {t:?} missing");
    }
    let now_exported: Vec<&&str> = COMING.iter().filter(|n| exported.contains(**n)).collect();
    assert!(
        now_exported.is_empty(),
        "{now_exported:?} are exported now: move them out of COMING and drop \"Coming\" from their panels"
    );
    eprintln!("coming metrics in use: {coming_used:?}");
}
