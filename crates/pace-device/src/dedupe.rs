//! Drops notifications the device already has, and keeps the cursor of each
//! scope (`all`, each group, the device itself) for `resume`.
//!
//! Two checks, because each catches what the other cannot:
//!
//! - **by id**: a bounded ring of the most recent ids (default 4096). Catches
//!   a notification delivered twice whatever its sequence, e.g. live and
//!   again in a replay, or by a node that does not report epochs.
//! - **by cursor**: within one scope and epoch, sequence numbers only grow,
//!   so a `seq` at or below the scope's cursor is already had, however long
//!   ago (past what the ring remembers). Applied only when the epoch is
//!   known (non-zero): a node that sends no epoch restarts `seq` at 1 when it
//!   restarts, and those new notifications must not be mistaken for old ones.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use pace_protocol::{Cursor, Notification, ResumeOutcome, Scope};

/// Default number of recent notification ids remembered.
pub const DEFAULT_CAPACITY: usize = 4096;

/// What to do with a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen before: deliver it (it is now recorded).
    New,
    /// Its id was seen recently: drop it.
    DuplicateId,
    /// Its scope's cursor is already at or past its `seq` (same epoch): drop it.
    AlreadyHave,
}

/// A scope's identity: its kind and target id (absent for `all`).
pub type ScopeKey = (Scope, Option<String>);

/// Recent ids and per-scope cursors of one device.
#[derive(Debug)]
pub struct Dedupe {
    /// Most ids remembered; the oldest is forgotten past this.
    capacity: usize,
    /// The remembered ids, for lookup.
    ids: HashSet<Arc<str>>,
    /// The same ids in arrival order, to forget the oldest.
    order: VecDeque<Arc<str>>,
    /// The last position the device has in each scope: what `resume` sends.
    cursors: HashMap<ScopeKey, Cursor>,
}

impl Default for Dedupe {
    fn default() -> Self {
        Dedupe::new(DEFAULT_CAPACITY)
    }
}

impl Dedupe {
    /// Remembers up to `capacity` recent ids (at least 1).
    pub fn new(capacity: usize) -> Dedupe {
        let capacity = capacity.max(1);
        Dedupe {
            capacity,
            ids: HashSet::with_capacity(capacity.min(DEFAULT_CAPACITY)),
            order: VecDeque::with_capacity(capacity.min(DEFAULT_CAPACITY)),
            cursors: HashMap::new(),
        }
    }

    /// Decides on `n` and, when it is new, records its id and moves its
    /// scope's cursor forward.
    pub fn check(&mut self, n: &Notification) -> Verdict {
        if self.ids.contains(n.id.as_str()) {
            return Verdict::DuplicateId;
        }
        let key = (n.scope, n.target.clone());
        if let Some(c) = self.cursors.get(&key)
            && n.epoch != 0
            && c.epoch == n.epoch
            && n.seq <= c.seq
        {
            return Verdict::AlreadyHave;
        }
        self.remember(&n.id);
        self.advance(key, n.cursor());
        Verdict::New
    }

    /// Takes the positions a node reported after a `resume`: each outcome's
    /// cursor is where the device now is in that scope.
    pub fn apply_resumed(&mut self, outcomes: &[ResumeOutcome]) {
        for o in outcomes {
            let key = (o.cursor.scope, o.cursor.target.clone());
            match self.cursors.get(&key) {
                // A live notification delivered after the replay may already
                // be further on in the same epoch: never move back.
                Some(c) if c.epoch == o.cursor.epoch && c.seq >= o.cursor.seq => {}
                _ => {
                    self.cursors.insert(key, o.cursor.clone());
                }
            }
        }
    }

    /// The device's position in one scope, if it has one.
    pub fn cursor(&self, scope: Scope, target: Option<&str>) -> Option<&Cursor> {
        self.cursors.get(&(scope, target.map(str::to_owned)))
    }

    /// Every scope position the device has.
    pub fn cursors(&self) -> impl Iterator<Item = &Cursor> {
        self.cursors.values()
    }

    /// Forgets a scope's position (the device left the group).
    pub fn forget(&mut self, scope: Scope, target: Option<&str>) {
        self.cursors.remove(&(scope, target.map(str::to_owned)));
    }

    /// Ids currently remembered.
    pub fn remembered(&self) -> usize {
        self.order.len()
    }

    fn remember(&mut self, id: &str) {
        let id: Arc<str> = Arc::from(id);
        if self.order.len() >= self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        self.ids.insert(id.clone());
        self.order.push_back(id);
    }

    fn advance(&mut self, key: ScopeKey, to: Cursor) {
        match self.cursors.get(&key) {
            // Same epoch: only forward. A different epoch: the newer one is
            // larger (epochs are start times); an older epoch's straggler
            // is delivered but does not move the cursor back.
            Some(c) if c.epoch == to.epoch && c.seq >= to.seq => {}
            Some(c) if c.epoch > to.epoch => {}
            _ => {
                self.cursors.insert(key, to);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pace_protocol::EventName;

    fn note(id: &str, scope: Scope, target: Option<&str>, epoch: u64, seq: u64) -> Notification {
        Notification {
            id: id.into(),
            scope,
            target: target.map(str::to_owned),
            epoch,
            seq,
            event: EventName::parse("e").unwrap(),
            data: serde_json::Value::Null,
            sent_at_ms: 0,
        }
    }

    #[test]
    fn the_same_notification_twice_is_delivered_once() {
        let mut d = Dedupe::default();
        let n = note("a", Scope::All, None, 5, 1);
        assert_eq!(d.check(&n), Verdict::New);
        assert_eq!(d.check(&n), Verdict::DuplicateId);
        assert_eq!(d.check(&n.clone()), Verdict::DuplicateId);
        assert_eq!(d.cursor(Scope::All, None).unwrap().seq, 1);
    }

    #[test]
    fn an_old_seq_is_dropped_even_when_its_id_was_forgotten() {
        let mut d = Dedupe::new(2);
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            let seq = u64::try_from(i).unwrap() + 1;
            assert_eq!(
                d.check(&note(id, Scope::Group, Some("g"), 7, seq)),
                Verdict::New
            );
        }
        assert_eq!(d.remembered(), 2, "the ring is bounded");
        // "a" left the ring, but seq 1 of epoch 7 is behind the cursor.
        assert_eq!(
            d.check(&note("a", Scope::Group, Some("g"), 7, 1)),
            Verdict::AlreadyHave
        );
        // Another group's seq 1 is new.
        assert_eq!(
            d.check(&note("x", Scope::Group, Some("h"), 7, 1)),
            Verdict::New
        );
    }

    #[test]
    fn a_new_epoch_restarts_the_sequence() {
        let mut d = Dedupe::default();
        assert_eq!(d.check(&note("a", Scope::All, None, 1, 9)), Verdict::New);
        assert_eq!(d.check(&note("b", Scope::All, None, 2, 1)), Verdict::New);
        assert_eq!(d.cursor(Scope::All, None).unwrap().epoch, 2);
        // A straggler of the old epoch is delivered but does not move the cursor.
        assert_eq!(d.check(&note("c", Scope::All, None, 1, 10)), Verdict::New);
        let c = d.cursor(Scope::All, None).unwrap();
        assert_eq!((c.epoch, c.seq), (2, 1));
    }

    #[test]
    fn without_epochs_only_ids_count() {
        // A node without epochs restarts seq at 1 when it restarts.
        let mut d = Dedupe::default();
        assert_eq!(d.check(&note("a", Scope::All, None, 0, 3)), Verdict::New);
        assert_eq!(d.check(&note("b", Scope::All, None, 0, 1)), Verdict::New);
        assert_eq!(
            d.check(&note("b", Scope::All, None, 0, 1)),
            Verdict::DuplicateId
        );
        assert_eq!(d.cursor(Scope::All, None).unwrap().seq, 3);
    }

    #[test]
    fn resumed_positions_become_cursors_and_never_move_back() {
        let mut d = Dedupe::default();
        d.check(&note("a", Scope::All, None, 4, 10));
        let outcome = |epoch, seq| ResumeOutcome {
            cursor: Cursor {
                scope: Scope::All,
                target: None,
                epoch,
                seq,
            },
            recovered: true,
            replayed: 0,
            reason: None,
        };
        d.apply_resumed(&[outcome(4, 8)]);
        assert_eq!(d.cursor(Scope::All, None).unwrap().seq, 10);
        d.apply_resumed(&[outcome(4, 12)]);
        assert_eq!(d.cursor(Scope::All, None).unwrap().seq, 12);
        d.apply_resumed(&[outcome(6, 0)]);
        let c = d.cursor(Scope::All, None).unwrap();
        assert_eq!((c.epoch, c.seq), (6, 0));
        d.forget(Scope::All, None);
        assert!(d.cursor(Scope::All, None).is_none());
    }
}
