//! The `resume` frame: a reconnected device names, per scope, the last
//! notification it has (a cursor); the node replays what came after.
//!
//! A device that announced a resume in the handshake (`?resume=1`) gets no
//! live notification until its `resume` frame has been answered (or
//! `--resume-hold` passed): the frames wait in its queue. The node replays
//! each scope's history after the device's cursor, answers `resumed`, then
//! lets the held frames through, dropping those the replay already carried
//! (same scope and epoch, sequence at or below the replay's end). A
//! connection resumes once, and a `resume` naming one scope twice is
//! refused: one frame can make the node replay each scope's kept history at
//! most once.

use std::time::Duration;

use pace_protocol::{CloseCode, Cursor, ErrorCode, ResumeOutcome, Scope, ServerFrame, Target};
use serde::Deserialize;
use tokio::time::Instant;

use crate::ws::hub::SubscribeError;
use crate::ws::session::{End, Session, Socket};

/// How long after a replay live frames are checked against it: anything
/// the replay overlapped was in flight when the history was read.
const DEDUPE_WINDOW: Duration = Duration::from_secs(10);

/// The index of the first cursor whose scope (kind and target) an
/// earlier cursor already names. Cursors are checked valid first.
fn duplicate_scope(cursors: &[Cursor]) -> Option<usize> {
    let audiences: Vec<Option<Target>> = cursors.iter().map(|c| c.audience().ok()).collect();
    (1..audiences.len()).find(|&i| audiences[..i].contains(&audiences[i]))
}

/// Where replays ended, to drop live frames the device already got.
#[derive(Default)]
pub(super) struct Replayed {
    /// (scope, target, epoch, last replayed or current head seq).
    ends: Vec<(Scope, Option<String>, u64, u64)>,
    until: Option<Instant>,
}

/// The position fields of a `notification` frame.
#[derive(Deserialize)]
struct Position {
    scope: Scope,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    epoch: u64,
    seq: u64,
}

impl Replayed {
    /// Whether a live frame should go to the device (false: the replay
    /// carried it already).
    pub(super) fn pass(&mut self, frame: &str) -> bool {
        if self.ends.is_empty() {
            return true;
        }
        if self.until.is_some_and(|u| Instant::now() >= u) {
            self.ends.clear();
            return true;
        }
        if !frame.starts_with(r#"{"type":"notification""#) {
            return true;
        }
        let Ok(p) = serde_json::from_str::<Position>(frame) else {
            return true;
        };
        let Some(i) = self
            .ends
            .iter()
            .position(|(s, t, _, _)| *s == p.scope && *t == p.target)
        else {
            return true;
        };
        let (_, _, epoch, seq) = self.ends[i];
        if p.epoch == epoch && p.seq <= seq {
            return false;
        }
        // Past the replay: this scope needs no more checking.
        self.ends.swap_remove(i);
        true
    }
}

impl<S: Socket> Session<S> {
    /// Answers a `resume` frame: checks its bounds and cursors, replays
    /// each scope, then lets the held live frames through.
    pub(super) async fn on_resume(&mut self, cursors: Vec<Cursor>) -> Result<ServerFrame, End> {
        let frame = {
            let max = self.deps.settings.max_groups + 2;
            let first = !std::mem::replace(&mut self.resumed, true);
            if !first {
                // One replay per connection: a device resumes once,
                // after it connects; a second `resume` would only make
                // the node replay history it already sent.
                self.refuse_resume("resume_repeated");
                ServerFrame::Error {
                    code: ErrorCode::InvalidFrame,
                    message: "one resume per connection: reconnect with resume=1 to resume again"
                        .into(),
                }
            } else if cursors.len() > max {
                self.deps
                    .metrics
                    .frames_rejected
                    .with_label_values(&["too_many_cursors"])
                    .inc();
                self.held_until = None;
                ServerFrame::Error {
                    code: ErrorCode::InvalidFrame,
                    message: format!("resume takes at most {max} cursors"),
                }
            } else if let Some((i, e)) = cursors
                .iter()
                .enumerate()
                .find_map(|(i, c)| c.audience().err().map(|e| (i, e)))
            {
                // A cursor without (or with a bad) `target` for a group
                // or device scope is a malformed frame, not a refusal.
                self.deps
                    .metrics
                    .frames_rejected
                    .with_label_values(&["invalid_cursor"])
                    .inc();
                self.held_until = None;
                ServerFrame::Error {
                    code: ErrorCode::InvalidFrame,
                    message: format!("cursor {i}: {e}"),
                }
            } else if let Some(i) = duplicate_scope(&cursors) {
                // The same scope twice would replay its history twice.
                self.refuse_resume("duplicate_cursor");
                self.held_until = None;
                ServerFrame::Error {
                    code: ErrorCode::InvalidFrame,
                    message: format!("cursor {i}: names a scope an earlier cursor names"),
                }
            } else {
                let mut scopes = Vec::with_capacity(cursors.len());
                for cursor in cursors {
                    scopes.push(self.resume(cursor).await?);
                }
                // Replayed first; now the held live frames.
                self.held_until = None;
                ServerFrame::Resumed { scopes }
            }
        };
        Ok(frame)
    }

    /// Counts a `resume` refused by a bound (`pace_frames_rejected_total`
    /// and `pace_limits_hit_total` under the same reason).
    fn refuse_resume(&self, reason: &str) {
        let metrics = &self.deps.metrics;
        metrics.frames_rejected.with_label_values(&[reason]).inc();
        metrics.limits_hit.with_label_values(&[reason]).inc();
    }

    /// Replays one scope after `cursor` and says how it went.
    async fn resume(&mut self, cursor: Cursor) -> Result<ResumeOutcome, End> {
        let refused = |cursor: Cursor, reason: &str| ResumeOutcome {
            cursor,
            recovered: false,
            replayed: 0,
            reason: Some(reason.to_owned()),
        };
        let metrics = self.deps.metrics.clone();
        let not_recovered = || metrics.resumes.with_label_values(&["not_recovered"]).inc();
        let target = match cursor.audience() {
            Ok(t) => t,
            Err(_) => {
                // Checked before the replay began; kept for safety.
                not_recovered();
                return Ok(refused(cursor, "invalid_frame"));
            }
        };
        match &target {
            Target::All => {}
            Target::Device(d) if *d == self.device => {}
            Target::Device(_) => {
                not_recovered();
                return Ok(refused(cursor, "not_allowed"));
            }
            Target::Group(group) => {
                if !self.may_join(group).await {
                    self.deps
                        .metrics
                        .groups_refused
                        .with_label_values(&["resume"])
                        .inc();
                    not_recovered();
                    return Ok(refused(cursor, "not_allowed"));
                }
                let max = if group.room().is_some() {
                    self.deps.settings.max_groups.saturating_add(1)
                } else {
                    self.deps.settings.max_groups
                };
                match self
                    .deps
                    .hub
                    .subscribe(&self.device, self.reg.conn, group, max)
                {
                    Ok(_) => {}
                    Err(SubscribeError::TooManyGroups(_)) => {
                        not_recovered();
                        return Ok(refused(cursor, "not_allowed"));
                    }
                    Err(SubscribeError::Gone) => {
                        return Err(End::Closed(
                            self.reg
                                .control
                                .requested()
                                .unwrap_or(CloseCode::INTERNAL_ERROR),
                        ));
                    }
                }
            }
        }
        let history = match self.deps.store.history(&target, &cursor).await {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(device = %self.device, error = %e, "history unavailable for resume");
                not_recovered();
                return Ok(refused(cursor, "store_unavailable"));
            }
        };
        let replayed = history.messages.len() as u64;
        if !history.messages.is_empty() {
            let frames = history
                .messages
                .into_iter()
                .map(|n| ServerFrame::Notification(n).to_json());
            self.write_all(frames).await?;
            metrics.history_replayed.inc_by(replayed);
        }
        self.replayed.ends.retain(|(s, t, _, _)| {
            !(*s == cursor.scope && t.as_deref() == cursor.target.as_deref())
        });
        self.replayed.ends.push((
            cursor.scope,
            cursor.target.clone(),
            history.epoch,
            history.head,
        ));
        self.replayed.until = Some(Instant::now() + DEDUPE_WINDOW);
        let recovered = history.missing.is_none();
        metrics
            .resumes
            .with_label_values(&[if recovered {
                "recovered"
            } else {
                "not_recovered"
            }])
            .inc();
        Ok(ResumeOutcome {
            cursor: Cursor {
                epoch: history.epoch,
                seq: history.head,
                ..cursor
            },
            recovered,
            replayed,
            reason: history.missing.map(|m| m.as_str().to_owned()),
        })
    }
}
