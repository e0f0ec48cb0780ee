//! What `surge` computes from the devices' records: pure functions over
//! [`SurgeRecord`]s (wall-clock µs, one clock for every process), unit
//! tested here without a node.
//!
//! - [`joins`]: join rate and latency (join written → its answer).
//! - [`order`]: the admission-order check (see its docs for the method).
//! - [`max_held`]: the most sessions devices held at once.
//! - [`freshness`]: gaps between `queue` frames, and how long after an
//!   admission batch each waiting device is told its new position.
//! - [`slot_free`]: release → the admission that refills the slot.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::ipc::{ReasonCounts, SurgeRecord, bump};
use crate::stats::{Summary, percentile};

/// Places near the head whose position the node pushes every tick (the
/// node's `EXACT_HEAD`); further back positions come every refresh.
pub const EXACT_HEAD: u64 = 200;

/// Order statistics of counts (positions), nearest rank.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CountSummary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
}

impl CountSummary {
    /// Summarizes `v` (sorted in place).
    pub fn of(v: &mut [u64]) -> CountSummary {
        v.sort_unstable();
        CountSummary {
            count: v.len() as u64,
            p50: percentile(v, 50.0).unwrap_or(0),
            p99: percentile(v, 99.0).unwrap_or(0),
            max: v.last().copied().unwrap_or(0),
        }
    }
}

/// When the device's join was answered (its place, or an admission that
/// overtook the place).
fn answered_at(r: &SurgeRecord) -> Option<u64> {
    match (r.first.map(|f| f[0]), r.admitted_us) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The join phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Joins {
    /// Joins written.
    pub sent: u64,
    /// Joins answered with a place (or an admission).
    pub answered: u64,
    /// Joins answered with an error, by code.
    pub refused: ReasonCounts,
    /// Joins written but never answered (timeout, connection lost).
    pub unanswered: u64,
    /// First join written → last answer, seconds.
    pub duration_s: f64,
    /// `answered / duration_s`.
    pub rate_per_s: f64,
    /// First → last join written, per second: the rate the tool managed
    /// to offer.
    pub sent_rate_per_s: f64,
    /// Join written → answer.
    pub latency_ms: Summary,
    /// First join written, µs since the epoch.
    pub first_sent_us: u64,
    /// Last answer, µs since the epoch.
    pub last_answer_us: u64,
}

/// Join rate and latency.
pub fn joins(records: &[SurgeRecord]) -> Joins {
    let mut j = Joins {
        first_sent_us: u64::MAX,
        ..Joins::default()
    };
    let mut last_sent = 0;
    let mut latencies = Vec::new();
    for r in records {
        let Some(sent) = r.join_us else { continue };
        j.sent += 1;
        j.first_sent_us = j.first_sent_us.min(sent);
        last_sent = last_sent.max(sent);
        if let Some(code) = &r.join_error {
            bump(&mut j.refused, code, 1);
        } else if let Some(at) = answered_at(r) {
            j.answered += 1;
            j.last_answer_us = j.last_answer_us.max(at);
            latencies.push(at.saturating_sub(sent));
        } else {
            j.unanswered += 1;
        }
    }
    if j.sent == 0 {
        j.first_sent_us = 0;
        return j;
    }
    j.duration_s = j.last_answer_us.saturating_sub(j.first_sent_us) as f64 / 1e6;
    if j.duration_s > 0.0 {
        j.rate_per_s = j.answered as f64 / j.duration_s;
    }
    let sent_span = last_sent.saturating_sub(j.first_sent_us) as f64 / 1e6;
    if sent_span > 0.0 {
        j.sent_rate_per_s = (j.sent - 1) as f64 / sent_span;
    }
    j.latency_ms = Summary::from_micros(&mut latencies);
    j
}

/// The admission-order check.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Order {
    /// Devices admitted.
    pub admitted: u64,
    /// Pairs (A, B) where A certainly holds the earlier ticket (A's join
    /// was answered before B's join was written) and B was admitted: the
    /// pairs the check covers.
    pub pairs_checked: u64,
    /// Of those, pairs where A was admitted more than the tolerance after
    /// B, or never although still connected. Must be 0.
    pub inversions: u64,
    /// Devices B admitted ahead of at least one such A.
    pub devices_admitted_early: u64,
    /// Largest `admitted(A) − admitted(B)` over checked pairs both
    /// admitted, ms (negative: every earlier joiner was admitted first).
    pub max_lag_ms: f64,
    /// The tolerance, ms (one admission tick).
    pub tolerance_ms: f64,
}

/// A Fenwick tree counting inserted values by rank.
struct Fenwick(Vec<u64>);

impl Fenwick {
    fn add(&mut self, rank: usize) {
        let mut i = rank + 1;
        while i < self.0.len() {
            self.0[i] += 1;
            i += i & i.wrapping_neg();
        }
    }

    /// How many inserted values have rank < `rank`.
    fn below(&self, rank: usize) -> u64 {
        let mut i = rank.min(self.0.len() - 1);
        let mut sum = 0;
        while i > 0 {
            sum += self.0[i];
            i -= i & i.wrapping_neg();
        }
        sum
    }
}

/// Checks that devices were admitted in ticket order.
///
/// Tickets are not exposed, and positions cannot be compared across
/// devices that joined at different moments (a later joiner's first
/// position is smaller than an earlier one's once admissions have moved the
/// queue). What *is* certain is causality: if A's join was answered before
/// B's join was written, A's join script ran before B's, so A's ticket is
/// smaller, and A must be admitted no later than B (same batch or earlier).
/// A violation is a pair (A, B) with B admitted and A admitted more than
/// `tolerance_us` after B (the `admitted` frames of one batch may reach
/// devices at slightly different times, so the tolerance is one tick), or
/// A never admitted although it stayed connected and B's admission was
/// more than the tolerance before `end_us`. Pairs whose joins overlapped
/// in time are not ordered and not checked. O(n log n).
pub fn order(records: &[SurgeRecord], tolerance_us: u64, end_us: u64) -> Order {
    let mut o = Order {
        tolerance_ms: tolerance_us as f64 / 1000.0,
        max_lag_ms: f64::NEG_INFINITY,
        ..Order::default()
    };
    // A candidates: joined with an answer; their admission (or "never",
    // u64::MAX, if still connected; devices that dropped are left out).
    let mut ahead: Vec<(u64, u64)> = records
        .iter()
        .filter(|r| r.join_error.is_none())
        .filter_map(|r| {
            let answered = answered_at(r)?;
            match (r.admitted_us, &r.dropped) {
                (Some(a), _) => Some((answered, a)),
                (None, None) => Some((answered, u64::MAX)),
                (None, Some(_)) => None,
            }
        })
        .collect();
    ahead.sort_unstable();
    let mut behind: Vec<(u64, u64)> = records
        .iter()
        .filter_map(|r| Some((r.join_us?, r.admitted_us?)))
        .collect();
    behind.sort_unstable();
    o.admitted = behind.len() as u64;

    let mut values: Vec<u64> = ahead.iter().map(|&(_, a)| a).collect();
    values.sort_unstable();
    values.dedup();
    let mut tree = Fenwick(vec![0; values.len() + 1]);
    let mut inserted = 0u64;
    let mut max_admitted = None::<u64>;
    let mut next = 0;
    for &(join_b, adm_b) in &behind {
        while next < ahead.len() && ahead[next].0 < join_b {
            let a = ahead[next].1;
            tree.add(values.partition_point(|&v| v < a));
            inserted += 1;
            if a != u64::MAX {
                max_admitted = Some(max_admitted.map_or(a, |m: u64| m.max(a)));
            }
            next += 1;
        }
        o.pairs_checked += inserted;
        let limit = adm_b.saturating_add(tolerance_us);
        // Values > limit are late; "never" only counts once the run went on
        // long enough after B's admission.
        let mut late = inserted - tree.below(values.partition_point(|&v| v <= limit));
        if limit >= end_us {
            let never = inserted - tree.below(values.partition_point(|&v| v < u64::MAX));
            late -= never;
        }
        if late > 0 {
            o.inversions += late;
            o.devices_admitted_early += 1;
        }
        if let Some(m) = max_admitted {
            o.max_lag_ms = o.max_lag_ms.max((m as f64 - adm_b as f64) / 1000.0);
        }
    }
    if !o.max_lag_ms.is_finite() {
        o.max_lag_ms = 0.0;
    }
    o
}

/// The most sessions the devices held at once: each admitted device holds
/// `[admitted frame received, release POST written)` (or until its
/// announced expiry, or `end_us`). Each interval lies inside the true
/// session, so this never exceeds what the store held: it must be ≤
/// capacity.
pub fn max_held(records: &[SurgeRecord], end_us: u64) -> u64 {
    let mut events: Vec<(u64, i8)> = Vec::new();
    for r in records {
        let Some(start) = r.admitted_us else { continue };
        let mut end = r.release_sent_us.unwrap_or(end_us);
        if let Some(exp) = r.expires_at {
            end = end.min(exp.saturating_mul(1_000_000));
        }
        if end > start {
            events.push((start, 1));
            events.push((end, -1));
        }
    }
    // Ends before starts at the same instant.
    events.sort_unstable();
    let (mut now, mut max) = (0i64, 0i64);
    for (_, d) in events {
        now += i64::from(d);
        max = max.max(now);
    }
    max as u64
}

/// A histogram of µs samples in 100 µs buckets (percentiles to ±0.1 ms).
#[derive(Debug, Default)]
struct Hist {
    buckets: Vec<u64>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

const BUCKET_US: u64 = 100;

impl Hist {
    fn add(&mut self, us: u64) {
        let b = (us / BUCKET_US) as usize;
        if self.buckets.len() <= b {
            self.buckets.resize(b + 1, 0);
        }
        self.buckets[b] += 1;
        if self.count == 0 || us < self.min {
            self.min = us;
        }
        self.max = self.max.max(us);
        self.count += 1;
        self.sum += u128::from(us);
    }

    fn at(&self, p: f64) -> f64 {
        let rank = ((p / 100.0 * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let us = (b as u64 * BUCKET_US).clamp(self.min, self.max);
                return us as f64 / 1000.0;
            }
        }
        self.max as f64 / 1000.0
    }

    fn summary(&self) -> Summary {
        if self.count == 0 {
            return Summary::default();
        }
        Summary {
            count: self.count,
            min: self.min as f64 / 1000.0,
            mean: self.sum as f64 / self.count as f64 / 1000.0,
            p50: self.at(50.0),
            p90: self.at(90.0),
            p99: self.at(99.0),
            max: self.max as f64 / 1000.0,
        }
    }
}

/// How fresh waiting devices' positions were.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Freshness {
    /// Gaps between successive `queue` frames of one device, when the
    /// earlier frame put it within the first 200 places.
    pub gap_head_ms: Summary,
    /// The same beyond place 200.
    pub gap_far_ms: Summary,
    /// Admission batches seen (admissions grouped when less than the guard
    /// apart).
    pub batches: u64,
    /// Per (batch, device waiting through it): batch's first `admitted`
    /// frame → the device's first frame with a smaller position, for
    /// devices within the first 200 places before the batch.
    pub news_head_ms: Summary,
    /// The same beyond place 200.
    pub news_far_ms: Summary,
    /// (batch, device) pairs where the device was admitted, or the run
    /// ended, before it was told a smaller position.
    pub untold: u64,
    /// The guard, ms: frames up to this long before a batch's first
    /// `admitted` frame count as news of it (one tick's frames can reach
    /// the devices in any order).
    pub guard_ms: f64,
    /// The position each admitted device was last told before admission.
    pub last_position_before_admission: CountSummary,
}

/// Frame gaps and position news lag (see [`Freshness`]).
pub fn freshness(records: &[SurgeRecord], guard_us: u64, end_us: u64) -> Freshness {
    let mut f = Freshness {
        guard_ms: guard_us as f64 / 1000.0,
        ..Freshness::default()
    };
    // Admission batches: [first, last] receive instants.
    let mut admitted: Vec<u64> = records.iter().filter_map(|r| r.admitted_us).collect();
    admitted.sort_unstable();
    let mut batches: Vec<(u64, u64)> = Vec::new();
    for a in admitted {
        match batches.last_mut() {
            Some(b) if a.saturating_sub(b.1) <= guard_us => b.1 = a,
            _ => batches.push((a, a)),
        }
    }
    f.batches = batches.len() as u64;

    let (mut gap_head, mut gap_far) = (Vec::new(), Vec::new());
    let (mut news_head, mut news_far) = (Hist::default(), Hist::default());
    let mut last_positions = Vec::new();
    let mut frames: Vec<[u64; 2]> = Vec::new();
    for r in records {
        let Some([r0, p0, _]) = r.first else { continue };
        frames.clear();
        frames.push([r0, p0]);
        frames.extend(r.queue.iter().copied().filter(|q| q[0] >= r0));
        frames.sort_unstable_by_key(|q| q[0]);
        for w in frames.windows(2) {
            let gap = w[1][0] - w[0][0];
            if w[0][1] <= EXACT_HEAD {
                gap_head.push(gap);
            } else {
                gap_far.push(gap);
            }
        }
        if r.admitted_us.is_some()
            && let Some(last) = frames.last()
        {
            last_positions.push(last[1]);
        }
        let waited_until = r.admitted_us.unwrap_or(end_us);
        let from = batches.partition_point(|b| b.0 <= r0 + guard_us);
        for &(t, last) in &batches[from..] {
            if last >= waited_until {
                break; // admitted in (or before) this batch
            }
            let cut = t.saturating_sub(guard_us);
            let known = frames.partition_point(|q| q[0] < cut);
            let Some(before) = known.checked_sub(1).map(|k| frames[k][1]) else {
                continue;
            };
            let news = frames[known..]
                .iter()
                .find(|q| q[1] < before)
                .filter(|q| q[0] < waited_until);
            match news {
                Some(q) => {
                    let lag = q[0].saturating_sub(t);
                    if before <= EXACT_HEAD {
                        news_head.add(lag);
                    } else {
                        news_far.add(lag);
                    }
                }
                None => f.untold += 1,
            }
        }
    }
    f.gap_head_ms = Summary::from_micros(&mut gap_head);
    f.gap_far_ms = Summary::from_micros(&mut gap_far);
    f.news_head_ms = news_head.summary();
    f.news_far_ms = news_far.summary();
    f.last_position_before_admission = CountSummary::of(&mut last_positions);
    f
}

/// Release → the admission that refills the slot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SlotFree {
    /// Release POST answered → the matched `admitted` frame received
    /// (clamped at 0).
    pub done_to_admitted_ms: Summary,
    /// Release POST written → the matched `admitted` frame received.
    pub sent_to_admitted_ms: Summary,
    /// Matched admissions that arrived before the release POST's answer
    /// was read (counted as 0 above).
    pub admitted_before_answer: u64,
    /// Successful releases while no device waited beyond the slots already
    /// freed (no admission to expect).
    pub queue_empty: u64,
    /// Releases still unmatched at the end (admission never came).
    pub unmatched: u64,
    /// Failed releases, by reason.
    pub failed: ReasonCounts,
}

/// Matches releases to admissions first in, first out: each admission
/// refills the oldest slot freed by a release while devices were waiting
/// (a tick fills every free slot at once, so the admission that follows a
/// release in the same or a later batch is the one its slot enabled).
/// Admissions with no pending release fill the room's initial free slots.
/// A release counts from when its POST was written (the store frees the
/// slot between writing and answering, so no admission it enabled can
/// arrive before). Valid while sessions do not expire before release.
pub fn slot_free(records: &[SurgeRecord], end_us: u64) -> SlotFree {
    let mut s = SlotFree::default();
    // (time, kind): 0 = admission, 1 = join answered, 2 = release written;
    // admissions first at equal instants.
    let mut events: Vec<(u64, u8, usize)> = Vec::new();
    for (k, r) in records.iter().enumerate() {
        if let Some(a) = r.admitted_us {
            events.push((a, 0, k));
        }
        if r.join_error.is_none()
            && let Some(j) = r.first.map(|f| f[0])
        {
            events.push((j, 1, k));
        }
        if let Some(sent) = r.release_sent_us {
            match &r.release_error {
                None => events.push((sent, 2, k)),
                Some(reason) => bump(&mut s.failed, reason, 1),
            }
        }
    }
    events.sort_unstable();
    let mut waiting = 0i64;
    let mut pending: VecDeque<usize> = VecDeque::new();
    let (mut from_done, mut from_sent) = (Vec::new(), Vec::new());
    for (t, kind, k) in events {
        match kind {
            0 => {
                // A device admitted before its join answer was read counts
                // as waiting from its admission back.
                if records[k].first.is_none_or(|f| f[0] > t) {
                    waiting += 1;
                }
                waiting -= 1;
                if let Some(rel) = pending.pop_front() {
                    let r = &records[rel];
                    let done = r.release_done_us.unwrap_or(end_us);
                    if t < done {
                        s.admitted_before_answer += 1;
                    }
                    from_done.push(t.saturating_sub(done));
                    from_sent.push(t.saturating_sub(r.release_sent_us.unwrap_or(t)));
                }
            }
            1 => {
                if records[k].admitted_us.is_none_or(|a| a > t) {
                    waiting += 1;
                }
            }
            _ => {
                // Each waiting device refills at most one freed slot.
                if waiting > pending.len() as i64 {
                    pending.push_back(k);
                } else {
                    s.queue_empty += 1;
                }
            }
        }
    }
    s.unmatched = pending.len() as u64;
    s.done_to_admitted_ms = Summary::from_micros(&mut from_done);
    s.sent_to_admitted_ms = Summary::from_micros(&mut from_sent);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64, join: u64, answer: u64, pos: u64, admitted: Option<u64>) -> SurgeRecord {
        SurgeRecord {
            i,
            join_us: Some(join),
            first: Some([answer, pos, pos]),
            admitted_us: admitted,
            ..SurgeRecord::default()
        }
    }

    #[test]
    fn join_rate_and_latency() {
        let mut refused = rec(3, 30, 0, 0, None);
        refused.first = None;
        refused.join_error = Some("room_closed".into());
        let mut lost = rec(4, 40, 0, 0, None);
        lost.first = None;
        let records = vec![
            rec(0, 0, 1_000, 1, None),
            rec(1, 500_000, 502_000, 2, None),
            rec(2, 1_000_000, 1_000_500, 3, Some(1_000_400)),
            refused,
            lost,
        ];
        let j = joins(&records);
        assert_eq!((j.sent, j.answered, j.unanswered), (5, 3, 1));
        assert_eq!(j.refused.get("room_closed"), Some(&1));
        assert_eq!(j.duration_s, 1.0004);
        assert!((j.rate_per_s - 3.0 / 1.0004).abs() < 1e-9);
        assert_eq!(j.latency_ms.max, 2.0);
        assert_eq!(j.latency_ms.min, 0.4, "an admission answers the join too");
    }

    #[test]
    fn in_order_admissions_have_no_inversions() {
        // Three sequential joiners admitted in order, two in one batch
        // whose frames arrive slightly out of order.
        let records = vec![
            rec(0, 0, 10, 1, Some(1_000)),
            rec(1, 20, 30, 2, Some(2_003)),
            rec(2, 40, 50, 3, Some(2_001)),
        ];
        let o = order(&records, 500, 10_000);
        assert_eq!(o.admitted, 3);
        assert_eq!(o.pairs_checked, 3, "(0,1) (0,2) (1,2)");
        assert_eq!(o.inversions, 0);
        assert_eq!(o.max_lag_ms, 0.002);
    }

    #[test]
    fn a_later_joiner_admitted_first_is_an_inversion() {
        let records = vec![
            rec(0, 0, 10, 1, Some(5_000)),
            rec(1, 20, 30, 2, Some(1_000)),
            rec(2, 40, 50, 3, Some(1_000)),
            // Joined after 0's answer, answered after 1 and 2 joined: not
            // ordered against 1 and 2, so admitting it first is fine.
            rec(3, 15, 60, 4, Some(900)),
        ];
        let o = order(&records, 500, 10_000);
        assert_eq!(o.inversions, 3, "0 admitted after 1, 2 and 3");
        assert_eq!(o.devices_admitted_early, 3);
        assert_eq!(o.pairs_checked, 4, "(0,3) (0,1) (0,2) (1,2)");
        assert_eq!(o.max_lag_ms, 4.1);
    }

    #[test]
    fn never_admitted_earlier_joiner_counts_unless_dropped_or_at_the_end() {
        let waiting = rec(0, 0, 10, 1, None);
        let mut dropped = rec(1, 0, 11, 2, None);
        dropped.dropped = Some("eof".into());
        let records = vec![waiting, dropped, rec(2, 20, 30, 3, Some(1_000))];
        assert_eq!(order(&records, 500, 10_000).inversions, 1);
        // B admitted within a tick of the end: A may still be on its way.
        assert_eq!(order(&records, 500, 1_200).inversions, 0);
    }

    #[test]
    fn held_sessions_never_count_the_gap_after_release() {
        let mut a = rec(0, 0, 1, 1, Some(100));
        a.release_sent_us = Some(200);
        let mut b = rec(1, 0, 2, 2, Some(200)); // starts as a ends
        b.release_sent_us = Some(300);
        let mut c = rec(2, 0, 3, 3, Some(250));
        c.expires_at = Some(0); // expired: never counted as held
        let d = rec(3, 0, 4, 4, Some(250)); // never released: until the end
        assert_eq!(max_held(&[a, b, c, d], 1_000), 2);
    }

    #[test]
    fn frame_gaps_and_news_lag() {
        // Device 0 admitted at 1_000_000 alone (one batch); device 1 (far
        // back, 300) told 299 at 1_300_000; device 2 (head, 2) told 1 at
        // 1_020_000 and is then admitted in a later batch.
        let mut d1 = rec(1, 0, 10_000, 300, None);
        d1.queue = vec![[1_300_000, 299]];
        let mut d2 = rec(2, 0, 20_000, 2, Some(3_000_000));
        d2.queue = vec![[1_020_000, 1]];
        let records = vec![rec(0, 0, 5_000, 1, Some(1_000_000)), d1, d2];
        let f = freshness(&records, 25_000, 4_000_000);
        assert_eq!(f.batches, 2);
        assert_eq!(f.gap_far_ms.count, 1);
        assert_eq!(f.gap_far_ms.max, 1290.0);
        assert_eq!(f.gap_head_ms.count, 1);
        assert_eq!(f.gap_head_ms.max, 1000.0);
        assert_eq!(f.news_head_ms.count, 1);
        assert_eq!(f.news_head_ms.max, 20.0);
        assert_eq!(f.news_far_ms.count, 1);
        assert_eq!(f.news_far_ms.max, 300.0);
        // Device 1 is never told about the batch of 3_000_000.
        assert_eq!(f.untold, 1);
        assert_eq!(f.last_position_before_admission.max, 1);
    }

    #[test]
    fn releases_match_the_admissions_they_enable() {
        // Capacity 1: A admitted (initial slot), releases; B waits and is
        // admitted 40 ms after the release's answer.
        let mut a = rec(0, 0, 10, 1, Some(1_000));
        a.release_sent_us = Some(100_000);
        a.release_done_us = Some(110_000);
        let b = rec(1, 20, 30, 2, Some(150_000));
        // C is alone at the end: its release frees a slot nobody needs.
        let mut c = rec(2, 40, 50, 1, Some(200_000));
        c.release_sent_us = Some(300_000);
        c.release_done_us = Some(301_000);
        let mut failed = rec(3, 40, 60, 1, Some(250_000));
        failed.release_sent_us = Some(260_000);
        failed.release_error = Some("http_404".into());
        let s = slot_free(&[a, b, c, failed], 1_000_000);
        assert_eq!(s.done_to_admitted_ms.count, 1);
        assert_eq!(s.done_to_admitted_ms.max, 40.0);
        assert_eq!(s.sent_to_admitted_ms.max, 50.0);
        assert_eq!(s.queue_empty, 1);
        assert_eq!(s.unmatched, 0);
        assert_eq!(s.failed.get("http_404"), Some(&1));
    }

    #[test]
    fn two_releases_one_waiter_expect_one_admission() {
        let mut a = rec(0, 0, 10, 1, Some(1_000));
        a.release_sent_us = Some(100_000);
        a.release_done_us = Some(101_000);
        let mut b = rec(1, 0, 11, 2, Some(1_000));
        b.release_sent_us = Some(100_500);
        b.release_done_us = Some(101_500);
        let c = rec(2, 0, 12, 3, Some(150_000));
        let s = slot_free(&[a, b, c], 1_000_000);
        assert_eq!(s.done_to_admitted_ms.count, 1);
        assert_eq!(s.done_to_admitted_ms.max, 49.0);
        assert_eq!((s.queue_empty, s.unmatched), (1, 0));
    }

    #[test]
    fn histogram_percentiles() {
        let mut h = Hist::default();
        for us in [100, 200, 300, 10_000] {
            h.add(us);
        }
        let s = h.summary();
        assert_eq!(s.count, 4);
        assert_eq!(s.p50, 0.2);
        assert_eq!(s.p99, 10.0);
        assert_eq!(s.min, 0.1);
    }
}
