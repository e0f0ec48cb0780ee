//! The export of a room's log as JSON Lines (`pace_protocol::audit`): a
//! header, the anchor checkpoint of a trimmed log, then every kept entry
//! with its `prev` and `hash`, each followed by the checkpoints that sign
//! the chain up to it.
//!
//! Two audiences: a tenant's admins get every kept entry, sealed or not,
//! with raw session ids; everybody gets the sealed entries only, with
//! session ids replaced by their hashes ([`PublicLogs`] keeps one rendered
//! copy per room, checkpoint and trim, so the public route costs two small
//! store reads per request however often it is called).

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use pace_protocol::RoomId;
use pace_protocol::audit::{GENESIS, LOG_VERSION, LogHeader, LogLine};

use super::seal::READ_BATCH;
use super::{AuditError, hash_of, line};
use crate::queue::QueueStore;

/// Renders `room`'s log at `now_ms`. `public`: the sealed entries only,
/// anonymised; otherwise every kept entry with raw session ids.
pub async fn export(
    queue: &dyn QueueStore,
    room: &RoomId,
    public: bool,
    now_ms: u64,
) -> Result<String, AuditError> {
    let checkpoints = queue.checkpoints(room, usize::MAX).await?;
    let through = if public {
        checkpoints.last().map_or(0, |c| c.seq)
    } else {
        u64::MAX
    };
    let mut records = Vec::new();
    let mut after = 0;
    while after < through {
        let batch = queue.log(room, after, READ_BATCH).await?;
        let full = batch.len() == READ_BATCH;
        let mut past = false;
        for r in batch {
            if r.seq > through {
                past = true;
                break;
            }
            after = r.seq;
            records.push(r);
        }
        if past || !full {
            break;
        }
    }
    let first_seq = records.first().map_or(0, |r| r.seq);
    let last_seq = records.last().map_or(0, |r| r.seq);
    let mut prev = match first_seq {
        0 | 1 => GENESIS.to_owned(),
        first => checkpoints
            .iter()
            .find(|c| c.seq == first - 1)
            .map(|c| c.head.clone())
            .ok_or_else(|| AuditError::Unanchored {
                room: room.to_string(),
                first,
            })?,
    };
    let mut out = String::with_capacity(records.len() * 250 + 256);
    let mut push = |line: &LogLine| {
        out.push_str(&line.to_json());
        out.push('\n');
    };
    push(&LogLine::Header(LogHeader {
        version: LOG_VERSION,
        room: room.to_string(),
        anonymised: public,
        exported_at_ms: now_ms,
        first_seq,
        last_seq,
    }));
    let mut cps = checkpoints.into_iter().peekable();
    // The anchor (and, with no entries kept, every checkpoint).
    while let Some(c) = cps.next_if(|c| first_seq == 0 || c.seq < first_seq) {
        push(&LogLine::Checkpoint(c));
    }
    for record in &records {
        let l = line(record, &prev, public);
        prev = hash_of(&l);
        push(&l);
        while let Some(c) = cps.next_if(|c| c.seq <= record.seq) {
            push(&LogLine::Checkpoint(c));
        }
    }
    Ok(out)
}

/// What a rendered public export depends on: the latest checkpoint (new
/// entries sealed) and the first kept entry (a retention trim).
type Version = (u64, u64);

/// The public export of each room, rendered once per checkpoint and trim.
#[derive(Debug, Default)]
pub struct PublicLogs {
    /// Room → (the log's version when rendered, the export).
    rendered: Mutex<HashMap<RoomId, (Version, Bytes)>>,
}

impl PublicLogs {
    /// Most rooms kept rendered; past it the cache starts over (a room
    /// id is caller-chosen, so the map must not grow without bound).
    const MAX_ROOMS: usize = 1_000;

    /// The public export of `room` (an existing room), and whether it came
    /// from the cache. Two small store reads when cached.
    pub async fn get(
        &self,
        queue: &dyn QueueStore,
        room: &RoomId,
        now_ms: u64,
    ) -> Result<(Bytes, bool), AuditError> {
        let sealed = queue.last_checkpoint(room).await?.map_or(0, |c| c.seq);
        let first = queue.log(room, 0, 1).await?.first().map_or(0, |r| r.seq);
        let version = (sealed, first);
        if let Some((v, body)) = self.lock().get(room)
            && *v == version
        {
            return Ok((body.clone(), true));
        }
        let body = Bytes::from(export(queue, room, true, now_ms).await?);
        let mut rendered = self.lock();
        if rendered.len() >= Self::MAX_ROOMS {
            rendered.clear();
        }
        rendered.insert(room.clone(), (version, body.clone()));
        Ok((body, false))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomId, (Version, Bytes)>> {
        self.rendered.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::KeySet;
    use crate::audit::seal::{seal, trim};
    use crate::queue::MemoryQueueStore;
    use pace_protocol::DeviceId;

    fn lines(s: &str) -> Vec<LogLine> {
        s.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn kinds(ls: &[LogLine]) -> Vec<String> {
        ls.iter()
            .map(|l| match l {
                LogLine::Header(_) => "h".to_owned(),
                LogLine::Checkpoint(c) => format!("c{}", c.seq),
                other => format!("e{}", other.seq().unwrap_or(0)),
            })
            .collect()
    }

    #[tokio::test]
    async fn admin_and_public_exports() {
        // Keys made now sign from now on: the log's clock starts now.
        let t0 = crate::store::now_ms();
        let q = MemoryQueueStore::new();
        let keys = KeySet::generate_in_memory().unwrap();
        let r = RoomId::parse("exp").unwrap();
        q.put_room(&r, &crate::queue::conformance::config(1))
            .await
            .unwrap();
        for (i, d) in ["a", "b"].iter().enumerate() {
            q.join(&r, &DeviceId::parse(d).unwrap(), t0 + i as u64)
                .await
                .unwrap();
        }
        seal(&q, &keys, &r, t0 + 10).await.unwrap();
        let sid = q.admit(&r, t0 + 20).await.unwrap().admitted[0]
            .1
            .session_id
            .clone();
        let admin = lines(&export(&q, &r, false, t0 + 30).await.unwrap());
        assert_eq!(kinds(&admin), ["h", "e1", "e2", "c2", "e3"]);
        let LogLine::Admit(a) = &admin[4] else {
            panic!()
        };
        assert_eq!(a.session.as_deref(), Some(sid.as_str()));
        // Each entry's prev is the hash before it.
        assert_eq!(admin[2].link().unwrap().0, admin[1].link().unwrap().1);
        let public = lines(&export(&q, &r, true, t0 + 30).await.unwrap());
        assert_eq!(
            kinds(&public),
            ["h", "e1", "e2", "c2"],
            "sealed entries only"
        );
        let LogLine::Header(h) = &public[0] else {
            panic!()
        };
        assert!(h.anonymised);
        assert_eq!((h.first_seq, h.last_seq), (1, 2));

        // The cache serves the same bytes until the next checkpoint.
        let cache = PublicLogs::default();
        let (first, cached) = cache.get(&q, &r, t0 + 40).await.unwrap();
        assert!(!cached);
        let (again, cached) = cache.get(&q, &r, t0 + 50).await.unwrap();
        assert!(cached);
        assert_eq!(first, again);
        seal(&q, &keys, &r, t0 + 60).await.unwrap();
        let (fresh, cached) = cache.get(&q, &r, t0 + 70).await.unwrap();
        assert!(!cached);
        let fresh = lines(std::str::from_utf8(&fresh).unwrap());
        assert_eq!(kinds(&fresh), ["h", "e1", "e2", "c2", "e3", "c3"]);
        let LogLine::Admit(a) = &fresh[4] else {
            panic!()
        };
        assert_eq!(a.session, None, "anonymised");

        // After a trim the export starts at the anchor, chained to it.
        trim(&q, &r, t0 + 11).await.unwrap();
        let trimmed = lines(&export(&q, &r, false, t0 + 80).await.unwrap());
        assert_eq!(kinds(&trimmed), ["h", "c2", "e3", "c3"]);
        let LogLine::Checkpoint(anchor) = &trimmed[1] else {
            panic!()
        };
        assert_eq!(trimmed[2].link().unwrap().0, anchor.head);
    }
}
