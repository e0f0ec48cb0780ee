//! The room's audit log as the ground truth of a surge: after the run the
//! tool waits until the nodes have sealed every entry, exports the public
//! log (`GET /api/v1/rooms/{room}/log`) and the JWKS, and runs the node's
//! own verifier on them (`pace-node audit verify`), so the report carries
//! what the store actually did — chain and signatures intact, admissions
//! in ticket order (inversions, Kendall tau), capacity never exceeded —
//! beside the tool's timing-based order check, which sees only when the
//! `admitted` frames *arrived*.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::http::Http;

/// One request's timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the verifier said about the room's log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditVerdict {
    /// Exit code 0: chain, signatures, order and capacity verified.
    pub verified: bool,
    /// Entries in the export (`last_seq` of its header).
    pub entries: u64,
    /// Admissions in the log.
    pub admissions: u64,
    /// Pairs of admissions against ticket order, in the store.
    pub inversions: u64,
    /// Pairs compared.
    pub pairs: u64,
    /// Kendall tau between ticket and admission order.
    pub kendall_tau: Option<f64>,
    /// Most sessions active at once, replayed from the log.
    pub max_active: Option<u64>,
    /// The verifier's `problem:` lines (at most 20).
    pub problems: Vec<String>,
    /// Why there is no verdict (log never sealed, verifier missing…).
    pub error: Option<String>,
}

/// The `pace-node` binary to verify with: `explicit`, else `pace-node`
/// beside this tool's binary, else on `PATH`.
pub fn verifier(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_owned();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("pace-node")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("pace-node"))
}

/// The `last_seq` of an export's header line.
fn last_seq(text: &str) -> Option<u64> {
    let header: serde_json::Value = serde_json::from_str(text.lines().next()?).ok()?;
    header.get("last_seq")?.as_u64()
}

/// Waits (at most `wait`) until the public log is sealed through at least
/// `want` entries, then verifies it with `pace-node` at `bin`. Never fails:
/// a missing verdict is reported with its reason.
pub async fn verify(
    http: &Http,
    base: &str,
    room: &str,
    want: u64,
    wait: Duration,
    bin: &Path,
) -> AuditVerdict {
    match fetch_and_verify(http, base, room, want, wait, bin).await {
        Ok(v) => v,
        Err(e) => AuditVerdict {
            error: Some(format!("{e:#}")),
            ..AuditVerdict::default()
        },
    }
}

async fn fetch_and_verify(
    http: &Http,
    base: &str,
    room: &str,
    want: u64,
    wait: Duration,
    bin: &Path,
) -> anyhow::Result<AuditVerdict> {
    let deadline = Instant::now() + wait;
    let url = format!("{base}/api/v1/rooms/{room}/log");
    let log = loop {
        let reply = http.get(&url, REQUEST_TIMEOUT).await?;
        anyhow::ensure!(reply.status == 200, "GET {url}: {}", reply.status);
        let text = reply.text();
        let sealed = last_seq(&text).unwrap_or(0);
        if sealed >= want {
            break text;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the log was sealed through entry {sealed} of {want} after {wait:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let jwks = http
        .get(&format!("{base}/.well-known/jwks.json"), REQUEST_TIMEOUT)
        .await?
        .text();
    let dir = std::env::temp_dir().join(format!(
        "pace-loadtest-audit-{}-{}",
        std::process::id(),
        room
    ));
    std::fs::create_dir_all(&dir)?;
    let (log_path, jwks_path) = (dir.join("log.jsonl"), dir.join("jwks.json"));
    std::fs::write(&log_path, &log)?;
    std::fs::write(&jwks_path, &jwks)?;
    let out = tokio::process::Command::new(bin)
        .args(["audit", "verify"])
        .arg(&log_path)
        .arg("--jwks")
        .arg(&jwks_path)
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("running {}: {e}", bin.display()))?;
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut v = parse(&stdout);
    v.entries = last_seq(&log).unwrap_or(0);
    v.verified = out.status.code() == Some(0);
    if !v.verified && v.problems.is_empty() {
        v.error = Some(format!(
            "verifier exited {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(v)
}

/// Reads the verifier's report (its `order:`, `capacity:` and `problem:`
/// lines; the format scripts rely on).
pub fn parse(stdout: &str) -> AuditVerdict {
    let mut v = AuditVerdict::default();
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("order: ") {
            // "N admissions, I inversions in P pairs, Kendall tau T"
            let words: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| {
                words
                    .get(i)
                    .and_then(|w| w.trim_end_matches(',').parse().ok())
            };
            v.admissions = num(0).unwrap_or(0);
            v.inversions = num(2).unwrap_or(0);
            v.pairs = num(5).unwrap_or(0);
            v.kendall_tau = words.last().and_then(|w| w.parse().ok());
        } else if let Some(rest) = line.strip_prefix("capacity: at most ") {
            v.max_active = rest.split_whitespace().next().and_then(|w| w.parse().ok());
        } else if let Some(p) = line.strip_prefix("problem: ")
            && v.problems.len() < 20
        {
            v.problems.push(p.to_owned());
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_verifiers_report() {
        let v = parse(
            "room surge: 3000 entries (seq 1–3000), 12 checkpoints, signed through entry 3000\n\
             order: 1000 admissions, 2 inversions in 499500 pairs, Kendall tau 0.999992\n\
             capacity: at most 50 sessions active\n\
             problem: 1 admissions out of ticket order (2 inverted pairs)\n\
             FAILED: 1 problems\n",
        );
        assert_eq!(
            (v.admissions, v.inversions, v.pairs, v.max_active),
            (1000, 2, 499_500, Some(50))
        );
        assert_eq!(v.kendall_tau, Some(0.999992));
        assert_eq!(v.problems.len(), 1);
        let none = parse("order: 0 admissions, 0 inversions in 0 pairs, Kendall tau n/a\n");
        assert_eq!(none.kendall_tau, None);
        assert_eq!(last_seq(r#"{"type":"header","last_seq":7}"#), Some(7));
    }
}
