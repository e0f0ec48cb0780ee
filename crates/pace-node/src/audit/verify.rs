//! `pace-node audit verify FILE --jwks JWKS`: checks an exported room log
//! (protocol.md, "Audit log") without trusting the node that wrote it.
//!
//! What it checks, naming the line and entry of every problem:
//!
//! - **The chain**: entries numbered without gaps from the first one (or
//!   from the anchor checkpoint of a trimmed log); every `prev` is the hash
//!   of the entry before; every `hash` is SHA-256 of `prev` and the entry's
//!   canonical text; every `session` matches its `session_sha256`. An
//!   entry altered, removed or moved is named.
//! - **The signatures**: each checkpoint's `head` is the chain's hash at
//!   its `seq`, and its JWT verifies with the key of its `kid` in the JWKS
//!   (EdDSA or ES256 only; the key's own `alg`, when it states one, must
//!   agree), with `aud` `pace-log/<room>` and claims equal to the line.
//! - **The order**: tickets are handed out in join order, every ticket is
//!   admitted at most once, and the admissions made in ticket order —
//!   those whose `mode` is `fifo` (absent) or `reject` — follow ticket
//!   order: the Kendall tau between ticket order and their admission
//!   order, and every one that overtook an earlier ticket listed. An
//!   admission of mode `random` (a lottery) or `passthrough` (everyone at
//!   once) promises no order, and is left out of this check; the queue
//!   still holds the others in ticket order, so the FIFO admissions after
//!   a random period must still rise.
//! - **The capacity**: replaying admissions and ends, the sessions active
//!   after each admission never exceed the capacity that admission states,
//!   except for `passthrough` admissions (which ignore capacity by design;
//!   their sessions still count against the admissions after them).
//!
//! - **The shuffles**: an event's `shuffle` follows its `commit`; the
//!   revealed seed hashes (SHA-256) to the committed `seed_sha256`; the
//!   order is exactly `shuffle_order(seed, tickets)` recomputed here
//!   (pace_protocol::audit); every ticket in it joined after the commit
//!   and was not admitted before the shuffle. From the shuffle on, the
//!   pre-queue's devices hold their new tickets (the k-th of the order
//!   the k-th smallest), which their admissions name, so the ticket-order
//!   check above covers the shuffled order too.
//!
//! With `--device ID` (and optionally `--ticket N`) a device checks its
//! own entry: the `join` that names its hashed id (with that ticket), and
//! whether and when it was admitted, under a signed checkpoint or not yet.
//!
//! Entries after the last checkpoint are checked but not signed; the
//! report says how many. A trimmed log (first entry after 1) starts with
//! sessions admitted before it, which the capacity replay cannot see: the
//! report says so.

use std::collections::{HashMap, HashSet};
use std::fmt;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pace_protocol::audit::{
    CheckpointClaims, GENESIS, LogCheckpoint, LogLine, ShuffleEntry, chain_hash,
    checkpoint_audience, device_hash, is_sha256_hex, session_hash, sha256_hex, shuffle_order,
};
use pace_protocol::room::QueueMode;

/// Overtaking admissions listed in a report (the count is always exact).
pub const MAX_LISTED: usize = 100;

/// What a device asks about its own entry.
#[derive(Debug, Clone)]
pub struct DeviceQuery {
    /// Its ticket (from its `queue` answer to `join`), if it has it; else
    /// its latest join is taken.
    pub ticket: Option<u64>,
    /// Its device id (hashed with the room before comparing).
    pub device: String,
}

/// One problem found, at a line of the file (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The line.
    pub line: usize,
    /// The entry's (or checkpoint's) `seq`, when the line has one.
    pub seq: Option<u64>,
    /// What is wrong.
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seq {
            Some(seq) => write!(f, "line {}, entry {seq}: {}", self.line, self.what),
            None => write!(f, "line {}: {}", self.line, self.what),
        }
    }
}

/// An admission that came after the admission of a later ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overtaken {
    /// The late admission's entry and ticket.
    pub seq: u64,
    /// Its ticket.
    pub ticket: u64,
    /// The earlier admission of a later ticket (the largest so far).
    pub by_seq: u64,
    /// That ticket.
    pub by_ticket: u64,
}

/// What a device learned about its own entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFinding {
    /// The ticket asked about, or found in the device's latest join.
    pub ticket: Option<u64>,
    /// The `join` entry's seq, when found with the device's hash.
    pub joined_seq: Option<u64>,
    /// The `admit` entry's seq and time, when admitted.
    pub admitted: Option<(u64, u64)>,
    /// Whether the admission (or the join, if not admitted) is under a
    /// signed checkpoint.
    pub signed: bool,
}

/// The verdict on one log.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The room, from the header.
    pub room: String,
    /// Entries read.
    pub entries: u64,
    /// First and last entry seq.
    pub first_seq: u64,
    /// See `first_seq`.
    pub last_seq: u64,
    /// Checkpoints read.
    pub checkpoints: u64,
    /// The last entry covered by a valid checkpoint.
    pub signed_through: u64,
    /// Admissions read.
    pub admissions: u64,
    /// Admissions of mode `random` or `passthrough`: not ordered, so not
    /// in `pairs`.
    pub unordered: u64,
    /// Pairs of ordered admissions compared (n·(n−1)/2).
    pub pairs: u64,
    /// Pairs admitted against ticket order.
    pub inversions: u64,
    /// Admissions that overtook an earlier ticket (at most
    /// [`MAX_LISTED`]).
    pub overtaken: Vec<Overtaken>,
    /// Most sessions active at once in the replay.
    pub max_active: u64,
    /// Every problem found, in file order.
    pub problems: Vec<Problem>,
    /// Things that limit what could be checked (not failures).
    pub notes: Vec<String>,
    /// The answer to a device's question.
    pub device: Option<DeviceFinding>,
    /// Shuffles read, each recomputed from its revealed seed:
    /// `(entry, event, devices, recomputed order equal)`.
    pub shuffles: Vec<(u64, String, usize, bool)>,
}

impl Report {
    /// Whether the log verified.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// Kendall's tau between ticket order and admission order (1 when
    /// every pair is in order; `None` with fewer than two admissions).
    pub fn kendall_tau(&self) -> Option<f64> {
        (self.pairs > 0).then(|| 1.0 - 2.0 * self.inversions as f64 / self.pairs as f64)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "room {}: {} entries (seq {}–{}), {} checkpoints, signed through entry {}",
            self.room,
            self.entries,
            self.first_seq,
            self.last_seq,
            self.checkpoints,
            self.signed_through
        )?;
        let tau = self
            .kendall_tau()
            .map_or("n/a".to_owned(), |t| format!("{t:.6}"));
        writeln!(
            f,
            "order: {} admissions, {} inversions in {} pairs, Kendall tau {tau}",
            self.admissions, self.inversions, self.pairs
        )?;
        if self.unordered > 0 {
            writeln!(
                f,
                "  {} of them in mode random or passthrough: no order promised, not in the pairs",
                self.unordered
            )?;
        }
        for o in &self.overtaken {
            writeln!(
                f,
                "  entry {} admitted ticket {} after entry {} admitted ticket {}",
                o.seq, o.ticket, o.by_seq, o.by_ticket
            )?;
        }
        for (seq, event, n, equal) in &self.shuffles {
            writeln!(
                f,
                "shuffle: event {event} at entry {seq}, {n} devices, {}",
                if *equal {
                    "equal to the order recomputed from the revealed seed"
                } else {
                    "NOT the order recomputed from the revealed seed"
                }
            )?;
        }
        writeln!(f, "capacity: at most {} sessions active", self.max_active)?;
        if let Some(d) = &self.device {
            let ticket = d.ticket.map_or("?".to_owned(), |t| t.to_string());
            let signed = if d.signed { "signed" } else { "not yet signed" };
            match (d.joined_seq, d.admitted) {
                (None, _) => writeln!(f, "device: no join by this device (ticket {ticket})")?,
                (Some(j), None) => writeln!(
                    f,
                    "device: ticket {ticket} joined at entry {j}, not admitted in this log ({signed})"
                )?,
                (Some(j), Some((a, t))) => writeln!(
                    f,
                    "device: ticket {ticket} joined at entry {j}, admitted at entry {a} (t={t}), {signed}"
                )?,
            }
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        for p in &self.problems {
            writeln!(f, "problem: {p}")?;
        }
        if self.ok() {
            writeln!(f, "VERIFIED")
        } else {
            writeln!(f, "FAILED: {} problems", self.problems.len())
        }
    }
}

/// Checks a checkpoint's JWT against `jwks` for `room`; the claims'
/// `seq` and `head` must be the line's.
fn check_signature(jwks: &JwkSet, room: &str, c: &LogCheckpoint) -> Result<(), String> {
    let header = jsonwebtoken::decode_header(&c.jws).map_err(|e| format!("malformed JWT: {e}"))?;
    if !matches!(header.alg, Algorithm::EdDSA | Algorithm::ES256) {
        return Err(format!("algorithm {:?} is not accepted", header.alg));
    }
    let kid = header.kid.ok_or("the JWT names no kid")?;
    let jwk = jwks
        .find(&kid)
        .ok_or_else(|| format!("kid {kid} is not in the JWKS"))?;
    if let Some(alg) = jwk.common.key_algorithm
        && Algorithm::try_from(alg).ok() != Some(header.alg)
    {
        return Err(format!(
            "key {kid} is for {alg}, the JWT says {:?}",
            header.alg
        ));
    }
    let fits = matches!(
        (&jwk.algorithm, header.alg),
        (AlgorithmParameters::OctetKeyPair(_), Algorithm::EdDSA)
            | (AlgorithmParameters::EllipticCurve(_), Algorithm::ES256)
    );
    if !fits {
        return Err(format!("key {kid} does not fit {:?}", header.alg));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {kid}: {e}"))?;
    // The library slices Ed25519 keys without checking their length.
    if header.alg == Algorithm::EdDSA && key.try_get_as_bytes().map(<[u8]>::len).ok() != Some(32) {
        return Err(format!("key {kid} is not a 32-byte Ed25519 key"));
    }
    let mut v = Validation::new(header.alg);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.set_audience(&[checkpoint_audience(room)]);
    let claims = jsonwebtoken::decode::<CheckpointClaims>(&c.jws, &key, &v)
        .map_err(|e| format!("signature or claims refused: {e}"))?
        .claims;
    if claims.room != room || claims.seq != c.seq || claims.head != c.head {
        return Err(format!(
            "the signed claims (room {}, seq {}, head {}) differ from the line",
            claims.room, claims.seq, claims.head
        ));
    }
    Ok(())
}

/// Pairs out of order in `tickets` (merge sort, O(n log n)).
fn count_inversions(tickets: &mut [u64]) -> u64 {
    let n = tickets.len();
    if n < 2 {
        return 0;
    }
    let (left, right) = tickets.split_at_mut(n / 2);
    let mut inv = count_inversions(left) + count_inversions(right);
    let mut merged = Vec::with_capacity(n);
    let (mut i, mut j) = (0, 0);
    while i < left.len() && j < right.len() {
        if left[i] <= right[j] {
            merged.push(left[i]);
            i += 1;
        } else {
            merged.push(right[j]);
            inv += (left.len() - i) as u64;
            j += 1;
        }
    }
    merged.extend_from_slice(&left[i..]);
    merged.extend_from_slice(&right[j..]);
    tickets.copy_from_slice(&merged);
    inv
}

/// The state of one pass over a log.
struct Pass<'a> {
    jwks: &'a JwkSet,
    report: Report,
    /// The chain's hash so far (as the file states it).
    prev: Option<String>,
    /// The seq the next entry must have.
    expected: Option<u64>,
    /// The last entry seen (checkpoints must follow it).
    last_entry: u64,
    /// Highest ticket joined so far.
    last_join_ticket: u64,
    joined: HashSet<u64>,
    admitted: HashSet<u64>,
    /// Highest ticket admitted so far, with its entry.
    max_admitted: Option<(u64, u64)>,
    admission_tickets: Vec<u64>,
    active: HashSet<String>,
    /// The device's (latest matching) join: entry and ticket.
    device_join: Option<(u64, u64)>,
    device_admit: Option<(u64, u64)>,
    device_hash: Option<String>,
    query: Option<&'a DeviceQuery>,
    /// Seq → line, for naming.
    lines_of: HashMap<u64, usize>,
    /// Each event's commitment: `(seed_sha256, its entry, the highest
    /// ticket joined before it)`.
    commitments: HashMap<String, (String, u64, u64)>,
}

impl Pass<'_> {
    fn problem(&mut self, line: usize, seq: Option<u64>, what: impl Into<String>) {
        self.report.problems.push(Problem {
            line,
            seq,
            what: what.into(),
        });
    }

    fn checkpoint(&mut self, n: usize, c: &LogCheckpoint) {
        self.report.checkpoints += 1;
        let room = self.report.room.clone();
        let anchor = self.prev.is_none();
        if !anchor && c.seq != self.last_entry {
            return self.problem(
                n,
                Some(c.seq),
                format!(
                    "checkpoint for entry {} follows entry {} (moved)",
                    c.seq, self.last_entry
                ),
            );
        }
        if let Err(e) = check_signature(self.jwks, &room, c) {
            return self.problem(n, Some(c.seq), format!("checkpoint: {e}"));
        }
        if anchor {
            // A trimmed log's anchor: the chain continues from its head.
            self.prev = Some(c.head.clone());
            self.expected = Some(c.seq.saturating_add(1));
            self.report.signed_through = c.seq;
            return;
        }
        if self.prev.as_deref() != Some(c.head.as_str()) {
            let since = self.report.signed_through;
            return self.problem(
                n,
                Some(c.seq),
                format!(
                    "checkpoint: the signed head is not the chain's hash at entry {}: an entry after {since} and up to {} was changed",
                    c.seq, c.seq
                ),
            );
        }
        self.report.signed_through = c.seq;
    }

    fn entry(&mut self, n: usize, line: &LogLine) {
        let Some(seq) = line.seq() else { return };
        let Some((prev, hash)) = line.link() else {
            return;
        };
        self.report.entries += 1;
        if self.report.first_seq == 0 {
            self.report.first_seq = seq;
        }
        self.report.last_seq = seq;
        self.last_entry = seq;
        let running = match &self.prev {
            Some(p) => p.clone(),
            None if seq == 1 => GENESIS.to_owned(),
            None => {
                self.report.notes.push(format!(
                    "the log starts at entry {seq} without its anchor checkpoint: its start is not signed"
                ));
                prev.to_owned()
            }
        };
        if self.expected.is_none() && seq > 1 {
            self.report.notes.push(format!(
                "the log was trimmed (it starts at entry {seq}): sessions admitted before it are not in the capacity replay"
            ));
        }
        let expected = self.expected.unwrap_or(seq);
        let mut first_problem = true;
        if seq != expected {
            let what = if seq > expected {
                match self.lines_of.get(&expected) {
                    Some(l) => format!(
                        "entry {seq} where {expected} was expected (entry {expected} is at line {l}: moved)"
                    ),
                    None => {
                        format!("entry {expected} is missing before entry {seq} (removed or moved)")
                    }
                }
            } else {
                format!("entry {seq} where {expected} was expected (moved or repeated)")
            };
            self.problem(n, Some(seq), what);
            first_problem = false;
        }
        self.lines_of.insert(seq, n);
        if first_problem && prev != running {
            self.problem(
                n,
                Some(seq),
                "prev is not the hash of the entry before it (this entry or the one before was changed)",
            );
            first_problem = false;
        }
        let canonical = line.canonical().unwrap_or_default();
        let hex_ok = match line {
            LogLine::Join(e) => is_sha256_hex(&e.device),
            LogLine::Admit(e) => is_sha256_hex(&e.session_sha256),
            LogLine::End(e) => is_sha256_hex(&e.session_sha256),
            LogLine::Commit(e) => is_sha256_hex(&e.seed_sha256),
            LogLine::Shuffle(e) => is_sha256_hex(&e.seed),
            _ => true,
        };
        if first_problem && (!hex_ok || chain_hash(prev, &canonical) != hash) {
            self.problem(
                n,
                Some(seq),
                "the entry's contents do not match its hash (altered)",
            );
            first_problem = false;
        }
        let session_ok = match line {
            LogLine::Admit(e) => e
                .session
                .as_deref()
                .is_none_or(|s| session_hash(s) == e.session_sha256),
            LogLine::End(e) => e
                .session
                .as_deref()
                .is_none_or(|s| session_hash(s) == e.session_sha256),
            _ => true,
        };
        if first_problem && !session_ok {
            self.problem(
                n,
                Some(seq),
                "the session id does not match session_sha256 (altered)",
            );
        }
        self.prev = Some(hash.to_owned());
        self.expected = Some(seq.saturating_add(1));
        let trimmed = self.report.first_seq > 1;
        match line {
            LogLine::Join(e) => {
                if e.ticket <= self.last_join_ticket {
                    self.problem(
                        n,
                        Some(seq),
                        format!(
                            "ticket {} handed out after ticket {} (tickets follow join order)",
                            e.ticket, self.last_join_ticket
                        ),
                    );
                }
                self.last_join_ticket = self.last_join_ticket.max(e.ticket);
                self.joined.insert(e.ticket);
                if let (Some(q), Some(h)) = (self.query, &self.device_hash)
                    && q.ticket.is_none_or(|t| t == e.ticket)
                    && &e.device == h
                {
                    self.device_join = Some((seq, e.ticket));
                    self.device_admit = None;
                }
            }
            LogLine::Admit(e) => {
                self.report.admissions += 1;
                if !self.admitted.insert(e.ticket) {
                    self.problem(n, Some(seq), format!("ticket {} admitted twice", e.ticket));
                }
                if !trimmed && !self.joined.contains(&e.ticket) {
                    self.problem(
                        n,
                        Some(seq),
                        format!("ticket {} admitted but never joined", e.ticket),
                    );
                }
                let ordered = matches!(e.mode, QueueMode::Fifo | QueueMode::Reject);
                match self.max_admitted {
                    _ if !ordered => self.report.unordered += 1,
                    Some((by_ticket, by_seq)) if e.ticket < by_ticket => {
                        if self.report.overtaken.len() < MAX_LISTED {
                            self.report.overtaken.push(Overtaken {
                                seq,
                                ticket: e.ticket,
                                by_seq,
                                by_ticket,
                            });
                        }
                    }
                    _ => self.max_admitted = Some((e.ticket, seq)),
                }
                if ordered {
                    self.admission_tickets.push(e.ticket);
                }
                self.active.insert(e.session_sha256.clone());
                let active = self.active.len() as u64;
                self.report.max_active = self.report.max_active.max(active);
                if active > u64::from(e.capacity) && e.mode != QueueMode::Passthrough {
                    self.problem(
                        n,
                        Some(seq),
                        format!(
                            "admitting ticket {} makes {active} sessions active, over the capacity of {}",
                            e.ticket, e.capacity
                        ),
                    );
                }
                if self.device_join.is_some_and(|(_, t)| t == e.ticket) {
                    self.device_admit = Some((seq, e.t));
                }
            }
            LogLine::End(e) => {
                if !self.active.remove(&e.session_sha256) && !trimmed {
                    self.problem(
                        n,
                        Some(seq),
                        format!("ends a session of ticket {} that is not active", e.ticket),
                    );
                }
            }
            LogLine::Commit(e) => {
                if self.commitments.contains_key(&e.event) {
                    self.problem(
                        n,
                        Some(seq),
                        format!("a second commitment for event {}", e.event),
                    );
                } else {
                    self.commitments.insert(
                        e.event.clone(),
                        (e.seed_sha256.clone(), seq, self.last_join_ticket),
                    );
                }
            }
            LogLine::Shuffle(e) => self.shuffle(n, e),
            LogLine::Header(_) | LogLine::Checkpoint(_) => {}
        }
    }

    /// Checks a shuffle against its commitment and recomputes it.
    fn shuffle(&mut self, n: usize, e: &ShuffleEntry) {
        let seq = e.seq;
        let recomputed = shuffle_order(&e.seed, &e.order);
        let equal = recomputed == e.order;
        self.report
            .shuffles
            .push((seq, e.event.clone(), e.order.len(), equal));
        match self.commitments.get(&e.event).cloned() {
            None if self.report.first_seq > 1 => self.report.notes.push(format!(
                "the commitment of event {} is before the log's start: its seed is not checked against it",
                e.event
            )),
            None => self.problem(
                n,
                Some(seq),
                format!("shuffle of event {} without an earlier commitment", e.event),
            ),
            Some((sha, commit_seq, before)) => {
                if sha256_hex(e.seed.as_bytes()) != sha {
                    self.problem(
                        n,
                        Some(seq),
                        format!(
                            "the revealed seed of event {} does not hash to the commitment at entry {commit_seq}",
                            e.event
                        ),
                    );
                }
                if let Some(t) = e.order.iter().find(|t| **t <= before) {
                    self.problem(
                        n,
                        Some(seq),
                        format!(
                            "ticket {t} is in the shuffle of event {} but joined before its commitment at entry {commit_seq}",
                            e.event
                        ),
                    );
                }
            }
        }
        if !equal {
            let place = recomputed
                .iter()
                .zip(&e.order)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            self.problem(
                n,
                Some(seq),
                format!(
                    "the shuffle of event {} is not the order recomputed from its revealed seed (first difference at place {}: ticket {:?} where {:?} was due)",
                    e.event,
                    place + 1,
                    e.order.get(place),
                    recomputed.get(place)
                ),
            );
        }
        let trimmed = self.report.first_seq > 1;
        for t in &e.order {
            if self.admitted.contains(t) {
                self.problem(
                    n,
                    Some(seq),
                    format!("ticket {t} was admitted before the shuffle that orders it"),
                );
            } else if !trimmed && !self.joined.contains(t) {
                self.problem(
                    n,
                    Some(seq),
                    format!("ticket {t} is shuffled but never joined"),
                );
            }
        }
        // A device asking about its own entry follows its new ticket.
        if let Some((join_seq, ticket)) = self.device_join
            && let Some((_, new)) = e.renumbering().into_iter().find(|(old, _)| *old == ticket)
        {
            self.device_join = Some((join_seq, new));
            self.report.notes.push(format!(
                "the device's ticket {ticket} became ticket {new} at the shuffle (entry {seq})"
            ));
        }
    }
}

/// Verifies the JSON Lines `text` of an export against `jwks`.
pub fn verify(text: &str, jwks: &JwkSet, query: Option<&DeviceQuery>) -> Report {
    let mut pass = Pass {
        jwks,
        report: Report::default(),
        prev: None,
        expected: None,
        last_entry: 0,
        last_join_ticket: 0,
        joined: HashSet::new(),
        admitted: HashSet::new(),
        max_admitted: None,
        admission_tickets: Vec::new(),
        active: HashSet::new(),
        device_join: None,
        device_admit: None,
        device_hash: None,
        query,
        lines_of: HashMap::new(),
        commitments: HashMap::new(),
    };
    let mut header = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let line: LogLine = match serde_json::from_str(raw) {
            Ok(l) => l,
            Err(e) => {
                pass.problem(n, None, format!("not a log line: {e}"));
                continue;
            }
        };
        match (&line, &header) {
            (LogLine::Header(h), None) => {
                pass.report.room = h.room.clone();
                pass.device_hash = query.map(|q| device_hash(&h.room, &q.device));
                header = Some(h.clone());
            }
            (LogLine::Header(_), Some(_)) => pass.problem(n, None, "a second header"),
            (_, None) => {
                pass.problem(n, None, "the log does not start with its header");
                return pass.report;
            }
            (LogLine::Checkpoint(c), Some(_)) => pass.checkpoint(n, c),
            (entry, Some(_)) => pass.entry(n, entry),
        }
    }
    let Some(h) = header else {
        pass.problem(1, None, "empty: no header");
        return pass.report;
    };
    if (h.first_seq, h.last_seq) != (pass.report.first_seq, pass.report.last_seq) {
        pass.problem(
            1,
            None,
            format!(
                "the header announces entries {}–{}, the file has {}–{} (cut or extended)",
                h.first_seq, h.last_seq, pass.report.first_seq, pass.report.last_seq
            ),
        );
    }
    let r = &mut pass.report;
    let n = r.admissions - r.unordered;
    r.pairs = n.saturating_mul(n.saturating_sub(1)) / 2;
    r.inversions = count_inversions(&mut pass.admission_tickets);
    if r.inversions > 0 {
        r.problems.push(Problem {
            line: 0,
            seq: None,
            what: format!(
                "{} admissions out of ticket order ({} inverted pairs)",
                r.overtaken.len(),
                r.inversions
            ),
        });
    }
    if r.last_seq > r.signed_through {
        r.notes.push(format!(
            "entries {}–{} are not under a checkpoint yet (not signed)",
            r.signed_through
                .max(r.first_seq.saturating_sub(1))
                .saturating_add(1),
            r.last_seq
        ));
    }
    if let Some(q) = query {
        let joined = pass.device_join.map(|(s, _)| s);
        let signed_at = pass.device_admit.map(|(s, _)| s).or(joined);
        r.device = Some(DeviceFinding {
            ticket: pass.device_join.map(|(_, t)| t).or(q.ticket),
            joined_seq: joined,
            admitted: pass.device_admit,
            signed: signed_at.is_some_and(|s| s <= r.signed_through),
        });
        if joined.is_none() {
            r.problems.push(Problem {
                line: 0,
                seq: None,
                what: "no join by this device".to_owned(),
            });
        }
    }
    pass.report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::KeySet;
    use crate::audit::{export, seal};
    use crate::queue::{MemoryQueueStore, QueueMode, QueueStore};
    use pace_protocol::audit::CHECKPOINT_TOKEN_TYPE;
    use pace_protocol::{DeviceId, RoomId};

    fn jwks(keys: &KeySet) -> JwkSet {
        serde_json::from_str(keys.jwks_json()).unwrap()
    }

    /// A log of `n` devices through a room of capacity `cap`: all join,
    /// are admitted as slots free, release; sealed now and then.
    async fn log(n: usize, cap: u32) -> (KeySet, String) {
        let q = MemoryQueueStore::new();
        let keys = KeySet::generate_in_memory().unwrap();
        let r = RoomId::parse("v").unwrap();
        q.put_room(&r, &crate::queue::conformance::config(cap))
            .await
            .unwrap();
        let t0 = crate::store::now_ms();
        for i in 0..n {
            q.join(&r, &DeviceId::parse(&format!("d{i}")).unwrap(), t0)
                .await
                .unwrap();
        }
        let mut t = t0;
        loop {
            t += 1;
            let o = q.admit(&r, t).await.unwrap();
            if o.admitted.is_empty() && o.waiting == 0 {
                break;
            }
            for (_, a) in &o.admitted {
                q.release(&r, &a.session_id, t).await.unwrap();
            }
            if t.is_multiple_of(3) {
                seal::seal(&q, &keys, &r, t).await.unwrap();
            }
        }
        seal::seal(&q, &keys, &r, t).await.unwrap();
        let text = export::export(&q, &r, false, t).await.unwrap();
        (keys, text)
    }

    fn parse(text: &str) -> Vec<LogLine> {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn render(lines: &[LogLine]) -> String {
        lines.iter().map(|l| l.to_json() + "\n").collect()
    }

    /// Links one line into the chain after `prev` (entries get `prev` and
    /// `hash`; headers and checkpoints are left as they are).
    fn link_entry(l: &mut LogLine, prev: &mut String) {
        let canonical = l.canonical();
        let (entry_prev, hash) = match l {
            LogLine::Join(e) => (&mut e.prev, &mut e.hash),
            LogLine::Admit(e) => (&mut e.prev, &mut e.hash),
            LogLine::End(e) => (&mut e.prev, &mut e.hash),
            LogLine::Commit(e) => (&mut e.prev, &mut e.hash),
            LogLine::Shuffle(e) => (&mut e.prev, &mut e.hash),
            LogLine::Header(_) | LogLine::Checkpoint(_) => return,
        };
        entry_prev.clone_from(prev);
        *hash = chain_hash(prev, &canonical.unwrap());
        prev.clone_from(hash);
    }

    /// Recomputes every entry's `prev` and `hash` (not the checkpoints).
    fn rechain(lines: &mut [LogLine]) {
        let mut prev = GENESIS.to_owned();
        for l in lines.iter_mut() {
            link_entry(l, &mut prev);
        }
    }

    /// Recomputes every hash and re-signs every checkpoint with `keys`, as
    /// a dishonest operator holding the key could.
    fn reseal(lines: &mut [LogLine], keys: &KeySet) {
        let mut prev = GENESIS.to_owned();
        for l in lines.iter_mut() {
            link_entry(l, &mut prev);
            if let LogLine::Checkpoint(c) = l {
                c.head = prev.clone();
                let iat = c.t / 1000;
                let claims = CheckpointClaims {
                    iss: keys.issuer().to_owned(),
                    aud: checkpoint_audience("v"),
                    room: "v".into(),
                    seq: c.seq,
                    head: c.head.clone(),
                    iat,
                };
                c.jws = keys
                    .sign_claims_typed(&claims, iat, CHECKPOINT_TOKEN_TYPE)
                    .unwrap();
            }
        }
    }

    /// The index of entry `seq` in `lines`.
    fn at(lines: &[LogLine], seq: u64) -> usize {
        lines
            .iter()
            .position(|l| l.link().is_some() && l.seq() == Some(seq))
            .unwrap()
    }

    /// A log with a shuffled event: 30 devices pre-queued, 5 joining
    /// after the start, all admitted and released through capacity 4.
    async fn event_log() -> (KeySet, String) {
        use crate::queue::{EventOrder, conformance::event};
        let q = MemoryQueueStore::new();
        let keys = KeySet::generate_in_memory().unwrap();
        let r = RoomId::parse("v").unwrap();
        let clock = q.clock_ms().await.unwrap();
        let mut c = crate::queue::conformance::config(4);
        c.events = vec![event(
            EventOrder::Shuffle,
            clock - 1_000,
            clock + 3_600_000,
            clock + 7_200_000,
        )];
        q.put_room(&r, &c).await.unwrap();
        let t0 = crate::store::now_ms();
        let d = |i: usize| DeviceId::parse(&format!("d{i}")).unwrap();
        for i in 0..30 {
            q.join(&r, &d(i), t0).await.unwrap();
        }
        c.events[0].event_start = q.clock_ms().await.unwrap() - 1;
        q.put_room(&r, &c).await.unwrap();
        for i in 30..35 {
            q.join(&r, &d(i), t0 + 1).await.unwrap();
        }
        let mut t = t0 + 1;
        loop {
            t += 1;
            let o = q.admit(&r, t).await.unwrap();
            if o.admitted.is_empty() && o.waiting == 0 {
                break;
            }
            for (_, a) in &o.admitted {
                q.release(&r, &a.session_id, t).await.unwrap();
            }
        }
        seal::seal(&q, &keys, &r, t).await.unwrap();
        (keys, export::export(&q, &r, true, t).await.unwrap())
    }

    #[tokio::test]
    async fn a_shuffled_event_verifies_and_a_forged_shuffle_does_not() {
        let (keys, text) = event_log().await;
        let r = verify(&text, &jwks(&keys), None);
        assert!(r.ok(), "{r}");
        assert_eq!(r.admissions, 35);
        assert_eq!(r.inversions, 0, "{r}");
        assert_eq!(r.shuffles.len(), 1);
        assert!(r.shuffles[0].3 && r.shuffles[0].2 == 30, "{r}");
        assert!(
            r.to_string()
                .contains("30 devices, equal to the order recomputed"),
            "{r}"
        );
        let lines = parse(&text);
        let shuffle_at = lines
            .iter()
            .position(|l| matches!(l, LogLine::Shuffle(_)))
            .unwrap();
        // Another order (resigned, rechained: only the recomputation can
        // tell), another seed, a missing commitment: each named.
        let forged = |f: &dyn Fn(&mut Vec<LogLine>)| {
            let mut lines = parse(&text);
            f(&mut lines);
            reseal(&mut lines, &keys);
            verify(&render(&lines), &jwks(&keys), None)
        };
        let r = forged(&|lines| {
            if let LogLine::Shuffle(e) = &mut lines[shuffle_at] {
                e.order.swap(0, 1);
            }
        });
        assert!(!r.ok());
        assert!(
            r.problems
                .iter()
                .any(|p| p.what.contains("not the order recomputed") && p.line == shuffle_at + 1),
            "{r}"
        );
        let r = forged(&|lines| {
            if let LogLine::Shuffle(e) = &mut lines[shuffle_at] {
                e.seed = sha256_hex(b"another seed");
                e.order = shuffle_order(&e.seed, &e.order);
            }
        });
        assert!(
            r.problems
                .iter()
                .any(|p| p.what.contains("does not hash to the commitment")),
            "{r}"
        );
        let r = forged(&|lines| {
            for l in lines.iter_mut() {
                if let LogLine::Commit(e) = l {
                    e.event = "other".into();
                }
            }
        });
        assert!(
            r.problems
                .iter()
                .any(|p| p.what.contains("without an earlier commitment")),
            "{r}"
        );
    }

    #[tokio::test]
    async fn an_honest_log_verifies() {
        let (keys, text) = log(50, 5).await;
        let r = verify(&text, &jwks(&keys), None);
        assert!(r.ok(), "{r}");
        assert_eq!((r.entries, r.admissions, r.inversions), (150, 50, 0));
        assert_eq!(r.kendall_tau(), Some(1.0));
        assert_eq!(r.signed_through, 150);
        assert_eq!(r.max_active, 5);
        assert!(r.to_string().ends_with("VERIFIED\n"), "{r}");
        // Another cluster's keys do not verify its checkpoints.
        let other = KeySet::generate_in_memory().unwrap();
        let r = verify(&text, &jwks(&other), None);
        assert!(!r.ok());
        assert!(r.problems[0].what.contains("not in the JWKS"), "{r}");
    }

    #[tokio::test]
    async fn an_altered_entry_is_named() {
        let (keys, text) = log(20, 2).await;
        let mut lines = parse(&text);
        let i = at(&lines, 7);
        if let LogLine::Admit(e) = &mut lines[i] {
            e.ticket += 100;
        } else if let LogLine::Join(e) = &mut lines[i] {
            e.ticket += 100;
        } else if let LogLine::End(e) = &mut lines[i] {
            e.t += 1;
        }
        let r = verify(&render(&lines), &jwks(&keys), None);
        assert!(!r.ok());
        let p = &r.problems[0];
        assert_eq!((p.line, p.seq), (i + 1, Some(7)), "{r}");
        assert!(p.what.contains("altered"), "{r}");

        // Recomputing that entry's hash moves the break to the next entry;
        // recomputing the whole chain leaves the signature to catch it.
        let mut lines = parse(&text);
        let third = at(&lines, 3);
        if let LogLine::Join(e) = &mut lines[third] {
            e.device = "f".repeat(64);
        }
        rechain(&mut lines);
        let r = verify(&render(&lines), &jwks(&keys), None);
        assert!(!r.ok());
        assert!(
            r.problems.iter().any(|p| p.what.contains("signed head")),
            "{r}"
        );
    }

    #[tokio::test]
    async fn a_removed_or_reordered_entry_is_named() {
        let (keys, text) = log(20, 2).await;
        let mut lines = parse(&text);
        lines.remove(at(&lines, 9));
        let r = verify(&render(&lines), &jwks(&keys), None);
        assert!(!r.ok());
        let p = &r.problems[0];
        assert_eq!(p.seq, Some(10), "{r}");
        assert!(p.what.contains("entry 9 is missing"), "{r}");

        let mut lines = parse(&text);
        let (a, b) = (at(&lines, 12), at(&lines, 13));
        lines.swap(a, b);
        let r = verify(&render(&lines), &jwks(&keys), None);
        assert!(!r.ok());
        let p = &r.problems[0];
        assert_eq!((p.line, p.seq), (a + 1, Some(13)), "{r}");
        assert!(p.what.contains("entry 12 is missing"), "{r}");
        let p = &r.problems[1];
        assert_eq!((p.line, p.seq), (b + 1, Some(12)), "{r}");
        assert!(p.what.contains("entry 12 where 14 was expected"), "{r}");
    }

    #[tokio::test]
    async fn a_capacity_violation_is_reported_even_when_resigned() {
        let (keys, text) = log(10, 2).await;
        let mut lines = parse(&text);
        // Someone holding the key rewrites a release away (one session
        // never ends) and re-signs everything: the chain verifies, the
        // replay does not.
        let end = lines
            .iter()
            .position(|l| matches!(l, LogLine::End(_)))
            .unwrap();
        let removed_seq = lines[end].seq().unwrap();
        lines.remove(end);
        for l in lines.iter_mut() {
            match l {
                LogLine::Join(e) if e.seq > removed_seq => e.seq -= 1,
                LogLine::Admit(e) if e.seq > removed_seq => e.seq -= 1,
                LogLine::End(e) if e.seq > removed_seq => e.seq -= 1,
                LogLine::Checkpoint(c) if c.seq >= removed_seq => c.seq -= 1,
                LogLine::Header(h) => h.last_seq -= 1,
                _ => {}
            }
        }
        reseal(&mut lines, &keys);
        let r = verify(&render(&lines), &jwks(&keys), None);
        assert!(!r.ok());
        assert!(
            r.problems
                .iter()
                .all(|p| p.what.contains("over the capacity of 2")),
            "only the capacity fails: {r}"
        );
        let p = &r.problems[0];
        assert!(matches!(&lines[p.line - 1], LogLine::Admit(_)));
        assert_eq!(lines[p.line - 1].seq(), p.seq);
    }

    #[tokio::test]
    async fn admissions_out_of_ticket_order_are_listed() {
        let (keys, text) = log(6, 10).await;
        let mut lines = parse(&text);
        // Swap the tickets of two admissions, re-signed: tau drops below 1.
        let admits: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| matches!(l, LogLine::Admit(_)))
            .map(|(i, _)| i)
            .collect();
        let (LogLine::Admit(a), LogLine::Admit(b)) = (&lines[admits[1]], &lines[admits[4]]) else {
            panic!()
        };
        let (ta, tb) = (a.ticket, b.ticket);
        if let LogLine::Admit(a) = &mut lines[admits[1]] {
            a.ticket = tb;
        }
        if let LogLine::Admit(b) = &mut lines[admits[4]] {
            b.ticket = ta;
        }
        reseal(&mut lines, &keys);
        let r = verify(&render(&lines), &jwks(&keys), None);
        assert!(!r.ok());
        // Tickets 1 5 3 4 2 6: 5 inversions in 15 pairs.
        assert_eq!((r.inversions, r.pairs), (5, 15), "{r}");
        assert!((r.kendall_tau().unwrap() - (1.0 - 10.0 / 15.0)).abs() < 1e-9);
        assert_eq!(r.overtaken.len(), 3, "{r}");
        assert_eq!((r.overtaken[0].ticket, r.overtaken[0].by_ticket), (3, 5));
    }

    /// A log through every mode, from the memory store: capacity 2, 16
    /// devices; fifo admits 2 (released), random 4 (two runs of 2),
    /// passthrough 4 at once (over capacity; released), then fifo the rest.
    async fn mixed_log() -> (KeySet, String) {
        let q = MemoryQueueStore::new();
        let keys = KeySet::generate_in_memory().unwrap();
        let r = RoomId::parse("m").unwrap();
        let mut c = crate::queue::conformance::config(2);
        q.put_room(&r, &c).await.unwrap();
        let t0 = crate::store::now_ms();
        for i in 0..16 {
            q.join(&r, &DeviceId::parse(&format!("d{i}")).unwrap(), t0)
                .await
                .unwrap();
        }
        let mut t = t0;
        let plan = [
            (QueueMode::Fifo, 1),
            (QueueMode::Random, 2),
            (QueueMode::Passthrough, 1),
            (QueueMode::Fifo, 20),
        ];
        for (i, (mode, runs)) in plan.into_iter().enumerate() {
            c.mode = mode;
            if mode == QueueMode::Passthrough {
                // Four devices left: passthrough admits them all at once.
                while q.stats(&r, t).await.unwrap().admitted_total < 12 {
                    c.mode = QueueMode::Fifo;
                    q.put_room(&r, &c).await.unwrap();
                    t += 1;
                    for (_, a) in q.admit(&r, t).await.unwrap().admitted {
                        q.release(&r, &a.session_id, t).await.unwrap();
                    }
                }
                c.mode = mode;
            }
            q.put_room(&r, &c).await.unwrap();
            for _ in 0..runs {
                t += 1;
                let o = q.admit(&r, t).await.unwrap();
                for (_, a) in &o.admitted {
                    q.release(&r, &a.session_id, t).await.unwrap();
                }
            }
            seal::seal(&q, &keys, &r, t + i as u64).await.unwrap();
        }
        let text = export::export(&q, &r, false, t + 10).await.unwrap();
        (keys, text)
    }

    #[tokio::test]
    async fn a_log_with_random_and_passthrough_periods_verifies() {
        let (keys, text) = mixed_log().await;
        let r = verify(&text, &jwks(&keys), None);
        assert!(r.ok(), "{r}");
        assert_eq!(r.admissions, 16, "{r}");
        // 4 random + 4 passthrough admissions are not ordered.
        assert_eq!(r.unordered, 8, "{r}");
        assert_eq!(r.pairs, 8 * 7 / 2, "{r}");
        assert_eq!(r.inversions, 0, "{r}");
        assert!(
            r.to_string()
                .contains("8 of them in mode random or passthrough"),
            "{r}"
        );
        let lines = parse(&text);
        let modes: Vec<QueueMode> = lines
            .iter()
            .filter_map(|l| match l {
                LogLine::Admit(a) => Some(a.mode),
                _ => None,
            })
            .collect();
        assert_eq!(modes.iter().filter(|m| **m == QueueMode::Random).count(), 4);
        assert_eq!(
            modes
                .iter()
                .filter(|m| **m == QueueMode::Passthrough)
                .count(),
            4
        );
        assert!(r.max_active >= 4, "passthrough went over capacity 2: {r}");
    }

    #[tokio::test]
    async fn fifo_inversions_and_capacity_are_still_flagged_around_random_periods() {
        let (keys, text) = mixed_log().await;
        let lines = parse(&text);
        let fifo_admits: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| matches!(l, LogLine::Admit(a) if a.mode == QueueMode::Fifo))
            .map(|(i, _)| i)
            .collect();
        // Swap the tickets of the last two FIFO admissions, re-signed.
        let mut swapped = lines.clone();
        let [.., i, j] = fifo_admits[..] else {
            panic!("too few fifo admissions")
        };
        let (LogLine::Admit(a), LogLine::Admit(b)) = (&lines[i], &lines[j]) else {
            panic!()
        };
        let (ta, tb) = (a.ticket, b.ticket);
        if let LogLine::Admit(a) = &mut swapped[i] {
            a.ticket = tb;
        }
        if let LogLine::Admit(b) = &mut swapped[j] {
            b.ticket = ta;
        }
        reseal(&mut swapped, &keys);
        let r = verify(&render(&swapped), &jwks(&keys), None);
        assert!(!r.ok());
        assert_eq!(r.inversions, 1, "{r}");
        assert_eq!(r.overtaken[0].seq, swapped[j].seq().unwrap(), "{r}");
        // A passthrough admission relabelled fifo, re-signed: it went over
        // capacity, and now that is a violation.
        let mut relabelled = lines.clone();
        let last_passthrough = relabelled
            .iter()
            .rposition(|l| matches!(l, LogLine::Admit(a) if a.mode == QueueMode::Passthrough))
            .unwrap();
        if let LogLine::Admit(a) = &mut relabelled[last_passthrough] {
            a.mode = QueueMode::Fifo;
        }
        reseal(&mut relabelled, &keys);
        let r = verify(&render(&relabelled), &jwks(&keys), None);
        assert!(
            r.problems
                .iter()
                .any(|p| p.what.contains("over the capacity of 2")
                    && p.seq == relabelled[last_passthrough].seq()),
            "{r}"
        );
        // The mode is in the chain: changed without re-chaining, the entry
        // is named.
        let mut altered = lines.clone();
        if let LogLine::Admit(a) = &mut altered[last_passthrough] {
            a.mode = QueueMode::Fifo;
        }
        let r = verify(&render(&altered), &jwks(&keys), None);
        assert!(
            r.problems
                .iter()
                .any(|p| p.seq == altered[last_passthrough].seq()),
            "{r}"
        );
    }

    #[tokio::test]
    async fn a_device_checks_its_own_entry() {
        let (keys, text) = log(5, 1).await;
        let q = DeviceQuery {
            ticket: Some(3),
            device: "d2".into(),
        };
        let r = verify(&text, &jwks(&keys), Some(&q));
        assert!(r.ok(), "{r}");
        let d = r.device.unwrap();
        assert!(d.joined_seq.is_some() && d.admitted.is_some() && d.signed);
        // Without its ticket a device finds its join by its hashed id.
        let by_id = DeviceQuery {
            ticket: None,
            device: "d2".into(),
        };
        let found = verify(&text, &jwks(&keys), Some(&by_id)).device.unwrap();
        assert_eq!(found, d);
        assert_eq!(found.ticket, Some(3));
        let wrong = DeviceQuery {
            ticket: Some(3),
            device: "d1".into(),
        };
        let r = verify(&text, &jwks(&keys), Some(&wrong));
        assert!(!r.ok());
        assert_eq!(r.device.unwrap().joined_seq, None);
    }

    #[test]
    fn inversions_are_counted_exactly() {
        assert_eq!(count_inversions(&mut [1, 2, 3]), 0);
        assert_eq!(count_inversions(&mut [3, 2, 1]), 3);
        assert_eq!(count_inversions(&mut [2, 4, 1, 3, 5]), 3);
        assert_eq!(count_inversions(&mut []), 0);
    }

    #[test]
    fn extreme_numbers_are_problems_not_panics() {
        let keys = KeySet::generate_in_memory().unwrap();
        let max = u64::MAX;
        let text = format!(
            "{{\"type\":\"header\",\"version\":1,\"room\":\"v\",\"anonymised\":true,\"exported_at_ms\":0,\"first_seq\":{max},\"last_seq\":{max}}}\n\
             {{\"type\":\"checkpoint\",\"seq\":{max},\"head\":\"h\",\"t\":0,\"jws\":\"x\"}}\n\
             {{\"type\":\"admit\",\"seq\":{max},\"t\":{max},\"ticket\":{max},\"session_sha256\":\"s\",\"capacity\":0,\"prev\":\"p\",\"hash\":\"h\"}}\n"
        );
        let r = verify(&text, &jwks(&keys), None);
        assert!(!r.ok());
        assert!(r.to_string().contains("FAILED"));
    }

    #[test]
    fn garbage_and_headless_files_fail() {
        let keys = KeySet::generate_in_memory().unwrap();
        let r = verify("not json\n", &jwks(&keys), None);
        assert!(!r.ok());
        let r = verify(
            r#"{"type":"join","seq":1,"t":1,"ticket":1,"device":"x","prev":"p","hash":"h"}"#,
            &jwks(&keys),
            None,
        );
        assert!(r.problems[0].what.contains("header"), "{r}");
        assert!(!verify("", &jwks(&keys), None).ok());
    }
}
