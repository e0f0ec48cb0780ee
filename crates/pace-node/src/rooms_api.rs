//! A room's statistics as the REST contract shapes them
//! ([`pace_protocol::rest::RoomStats`]), read from the queue store: for
//! the stats routes ([`crate::http::routes`]) and the admin feed's
//! telemetry ([`crate::ws::admin`]).

use pace_protocol::RoomId;
use pace_protocol::rest::{BucketBound, RoomStats, WaitBucket, WaitSeconds};

use crate::error::ApiError;
use crate::queue::QueueStore;
use crate::store::now_ms;

/// The stats of an existing room, as `GET …/stats` answers them.
pub async fn stats_body(queue: &dyn QueueStore, room: &RoomId) -> Result<RoomStats, ApiError> {
    let c = queue.stats(room, now_ms()).await?;
    let w = queue.waits(room).await?;
    let buckets = crate::queue::WAIT_BUCKETS_SECS
        .iter()
        .map(|b| BucketBound::Seconds(*b))
        .chain(std::iter::once(BucketBound::Infinity("+Inf".into())))
        .zip(&w.counts)
        .map(|(le, n)| WaitBucket { le, count: *n })
        .collect();
    let count = w.count();
    Ok(RoomStats {
        room: room.clone(),
        waiting: c.waiting,
        peak_waiting: c.peak_waiting,
        active: c.active,
        admitted_total: c.admitted_total,
        abandoned_total: c.abandoned_total,
        admissions_last_minute: c.admitted_last_minute,
        wait_seconds: WaitSeconds {
            count,
            mean: if count > 0 {
                w.sum_ms as f64 / count as f64 / 1000.0
            } else {
                0.0
            },
            buckets,
        },
    })
}
