//! The waiting room on one node: joins and leaves from devices, the
//! admission tick, and live positions pushed to this node's waiting devices.
//!
//! Shared truth lives in the [`QueueStore`]; this module keeps only which
//! *local* devices wait in which room, and what each was last told, so it
//! pushes a `queue` frame only when something changed.
//!
//! Every node ticks every room (`--admit-tick`): the admit script is atomic
//! and idempotent, so concurrent ticks never admit past capacity. The node
//! whose tick admitted a device signs its token and sends the `admitted`
//! frame through the store's bus to whichever node holds the device; a
//! device offline at that moment gets the same admission when it joins
//! again.
//!
//! Store cost per waiting device is bounded (see docs/architecture.md):
//! per tick, one `ZRANGE` of the queue head per room and node gives exact
//! positions near the head; every `--position-refresh` (5 s) one batched
//! `ZRANK` and one heartbeat per waiting device refresh the rest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pace_protocol::{AdmittedFrame, DeviceId, ErrorCode, QueueUpdate, RoomId, ServerFrame};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::queue::{
    Admission, DeviceStatus, EventPhase, JoinAttempt, JoinOutcome, PowAnswer, PowGate, QueueError,
    Room, RoomConfig, SharedQueueStore,
};
use crate::store::{SharedStore, now_ms};
use pace_protocol::rest::EventStatus;

/// Hands a frame to one device connected to this node (the local hub,
/// [`crate::ws::hub::Hub`], implements it): how the engine reaches a
/// waiting device without depending on the WebSocket layer above it.
pub trait Deliver: Send + Sync + std::fmt::Debug + 'static {
    /// Queues `frame` for `device` if it is connected here.
    fn deliver_to(&self, device: &DeviceId, frame: &Utf8Bytes);
}

/// Devices within this many places of the head get exact positions every tick.
pub const EXACT_HEAD: usize = 200;

/// Signs admission tokens (the cluster's newest key).
pub trait Signer: Send + Sync + 'static {
    /// A signed token for `device`'s session in `room`.
    fn sign(
        &self,
        room: &RoomId,
        device: &DeviceId,
        admission: &Admission,
    ) -> Result<String, String>;
}

impl Signer for crate::admission::KeySet {
    fn sign(&self, room: &RoomId, device: &DeviceId, adm: &Admission) -> Result<String, String> {
        let claims = crate::admission::AdmissionClaims {
            iss: self.issuer().to_owned(),
            aud: room.to_string(),
            sub: device.to_string(),
            jti: adm.session_id.clone(),
            iat: adm.admitted_at_ms / 1000,
            exp: adm.expires_at_secs(),
            target: None,
        };
        crate::admission::KeySet::sign(self, &claims).map_err(|e| e.to_string())
    }
}

/// What this node last told one waiting device.
#[derive(Debug, Clone, Default, PartialEq)]
struct Told {
    position: u64,
    waiting_total: u64,
    eta_seconds: Option<u64>,
    state: String,
}

/// This node's waiting devices, per room. Shared with the store's
/// [`crate::store::Local`] so an admission arriving over the bus removes
/// the device here.
#[derive(Debug, Default)]
pub struct Waiters {
    rooms: Mutex<HashMap<RoomId, HashMap<DeviceId, Told>>>,
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomId, HashMap<DeviceId, Told>>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `device` no longer waits in `room` here (admitted, left, gone).
    /// Returns whether it did: of several paths that learn of one admission
    /// (the bus, a heartbeat finding the device admitted), only the one that
    /// removes the waiter sends the `admitted` frame.
    pub fn remove(&self, room: &RoomId, device: &DeviceId) -> bool {
        let mut rooms = self.lock();
        let Some(devices) = rooms.get_mut(room) else {
            return false;
        };
        let removed = devices.remove(device).is_some();
        if devices.is_empty() {
            rooms.remove(room);
        }
        removed
    }

    /// `device` is joining `room` here: it receives an admission from now
    /// on, before it has been told a position.
    pub fn reserve(&self, room: &RoomId, device: &DeviceId) {
        self.lock()
            .entry(room.clone())
            .or_default()
            .entry(device.clone())
            .or_default();
    }

    /// Whether `device` waits in `room` here.
    pub fn contains(&self, room: &RoomId, device: &DeviceId) -> bool {
        self.lock()
            .get(room)
            .is_some_and(|d| d.contains_key(device))
    }

    /// `device` disconnected: it stops being pushed updates (its place stays
    /// in the store until the heartbeat grace runs out).
    pub fn disconnected(&self, device: &DeviceId) {
        self.lock().retain(|_, devices| {
            devices.remove(device);
            !devices.is_empty()
        });
    }

    fn devices(&self, room: &RoomId) -> Vec<DeviceId> {
        self.lock()
            .get(room)
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Records `update` for `device` and returns whether it differs from what
    /// the device was last told (and the device still waits here).
    fn changed(&self, device: &DeviceId, update: &QueueUpdate) -> bool {
        let mut rooms = self.lock();
        let Some(told) = rooms.get_mut(&update.room).and_then(|d| d.get_mut(device)) else {
            return false;
        };
        let new = Told {
            position: update.position,
            waiting_total: update.waiting_total,
            eta_seconds: update.eta_seconds,
            state: update.state.clone(),
        };
        if *told == new {
            return false;
        }
        *told = new;
        true
    }

    /// How many devices wait on this node, over all rooms.
    pub fn len(&self) -> usize {
        self.lock().values().map(HashMap::len).sum()
    }

    /// Whether no device waits on this node.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Tunables of the waiting room on a node.
#[derive(Debug, Clone)]
pub struct RoomsConfig {
    /// How often this node runs admission and pushes near-head positions.
    pub tick: Duration,
    /// How often every local waiting device's exact position is refreshed
    /// and its heartbeat written.
    pub refresh: Duration,
    /// A waiting device unseen for longer loses its place.
    pub grace: Duration,
    /// Most `join`/`solve` attempts per device per minute (0 = no limit).
    pub joins_per_minute: u32,
    /// Most places one verified user may hold per room (0 = no limit).
    pub max_places_per_user: u32,
}

/// A device's answer to a proof-of-work challenge.
#[derive(Debug, Clone)]
pub struct Solution {
    /// The challenge token as received.
    pub challenge: String,
    /// The solution number, in decimal.
    pub solution: String,
}

/// The waiting room engine of one node.
pub struct Rooms {
    /// Queues, sessions and counters.
    pub queue: SharedQueueStore,
    store: SharedStore,
    hub: Arc<dyn Deliver>,
    signer: Arc<dyn Signer>,
    keys: Arc<crate::admission::KeySet>,
    /// Local waiting devices.
    pub waiters: Arc<Waiters>,
    metrics: Metrics,
    config: RoomsConfig,
    joins: crate::limits::WindowLimiter<DeviceId>,
    /// The store's clock minus this node's, ms, measured every tick: the
    /// state shown to waiting devices (`prequeue`) follows the store's
    /// clock like the scripts that decide it.
    clock_offset_ms: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for Rooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rooms")
            .field("waiters", &self.waiters.len())
            .finish_non_exhaustive()
    }
}

/// A refusal of a join, for the device's `error` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRefused {
    /// The error code.
    pub code: ErrorCode,
    /// The message.
    pub message: String,
}

fn unavailable(e: &QueueError) -> JoinRefused {
    tracing::warn!(error = %e, "queue store unavailable");
    JoinRefused {
        code: ErrorCode::StoreUnavailable,
        message: crate::error::STORE_UNAVAILABLE.into(),
    }
}

/// `target_url` with `pace_token=<token>` appended.
pub fn with_token(target_url: &str, token: &str) -> String {
    let sep = if target_url.contains('?') { '&' } else { '?' };
    // A JWT is base64url segments and dots: safe in a query string as is.
    format!("{target_url}{sep}pace_token={token}")
}

/// Estimated seconds until a device at `position` is admitted, from the
/// admissions of the last minute; `None` when nothing was admitted.
pub fn eta_seconds(position: u64, admitted_last_minute: u64) -> Option<u64> {
    (admitted_last_minute > 0).then(|| (position * 60).div_ceil(admitted_last_minute))
}

impl Rooms {
    /// An engine over `queue`, delivering admissions through `store`.
    pub fn new(
        queue: SharedQueueStore,
        store: SharedStore,
        hub: Arc<dyn Deliver>,
        keys: Arc<crate::admission::KeySet>,
        waiters: Arc<Waiters>,
        metrics: Metrics,
        config: RoomsConfig,
    ) -> Rooms {
        Rooms {
            queue,
            store,
            hub,
            signer: keys.clone(),
            keys,
            waiters,
            metrics,
            joins: crate::limits::WindowLimiter::new(
                config.joins_per_minute,
                Duration::from_secs(60),
            ),
            config,
            clock_offset_ms: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// The store's clock as last measured (this node's clock plus the
    /// offset seen on the latest tick).
    pub fn store_now(&self) -> u64 {
        let offset = self
            .clock_offset_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        now_ms().saturating_add_signed(offset)
    }

    /// The state a waiting device is told: `prequeue` while the room's
    /// event holds its pre-queue, else the room's state.
    fn shown_state(&self, config: &RoomConfig) -> String {
        match config.phase(self.store_now()) {
            EventPhase::Prequeue(_) => "prequeue".to_owned(),
            _ => config.state.as_str().to_owned(),
        }
    }

    /// The event the room status tells (the governing one, or else the
    /// last ended), against the store's clock read now; `None` for a room
    /// without events.
    pub async fn event_status(
        &self,
        config: &RoomConfig,
    ) -> Result<Option<EventStatus>, QueueError> {
        if config.events.is_empty() {
            return Ok(None);
        }
        let now = self.queue.clock_ms().await?;
        let phase = config.phase(now);
        let event = match phase.event() {
            Some(e) => e,
            None => match config.events.iter().max_by_key(|e| e.event_end) {
                Some(e) => e,
                None => return Ok(None),
            },
        };
        Ok(Some(EventStatus {
            id: event.id.clone(),
            phase: match phase {
                EventPhase::None => "ended",
                p => p.as_str(),
            }
            .to_owned(),
            prequeue_start: event.prequeue_start,
            event_start: event.event_start,
            event_end: event.event_end,
            now_ms: now,
            order: event.order,
            seed_sha256: event.seed_sha256.clone(),
            seed: event.seed.clone(),
            message: event.message.clone(),
        }))
    }

    /// Refuses a device a new place when its user already holds
    /// `max_places_per_user` places in the room with other devices. Places
    /// that ended (left, admitted and done, swept) are forgotten here, so
    /// the count is of live places only.
    async fn user_place_limit(
        &self,
        room: &RoomId,
        user: &str,
        device: &DeviceId,
    ) -> Result<(), JoinRefused> {
        let limit = self.config.max_places_per_user as usize;
        if limit == 0 {
            return Ok(());
        }
        let q = &self.queue;
        let devices = q
            .add_user_place(room, user, device)
            .await
            .map_err(|e| unavailable(&e))?;
        if devices.len() <= limit {
            return Ok(());
        }
        let now = now_ms();
        let mut live = 0;
        for other in devices.iter().filter(|d| *d != device) {
            match q
                .status(room, other, now)
                .await
                .map_err(|e| unavailable(&e))?
            {
                DeviceStatus::Unknown => q
                    .remove_user_place(room, user, other)
                    .await
                    .map_err(|e| unavailable(&e))?,
                _ => live += 1,
            }
        }
        if live < limit {
            return Ok(());
        }
        // Unless this device already holds one of those places.
        if !matches!(
            q.status(room, device, now)
                .await
                .map_err(|e| unavailable(&e))?,
            DeviceStatus::Unknown
        ) {
            return Ok(());
        }
        q.remove_user_place(room, user, device)
            .await
            .map_err(|e| unavailable(&e))?;
        Err(JoinRefused {
            code: ErrorCode::TooManyPlaces,
            message: format!("your user already holds {limit} places in this room"),
        })
    }

    /// What a device brings against the room's proof of work, checked here
    /// (signature, binding, expiry, hash: no store call); the join script
    /// asks it only of a device without a place, and claims a valid
    /// solution's mark then. `Err` holds why an invalid one is refused.
    fn pow_answer(
        &self,
        room: &RoomId,
        device: &DeviceId,
        solution: Option<Solution>,
    ) -> (PowAnswer, Option<crate::pow::Refusal>) {
        if self.waiters.contains(room, device) {
            return (PowAnswer::Exempt, None);
        }
        let Some(solution) = solution else {
            return (PowAnswer::Unsolved, None);
        };
        let now = now_ms() / 1000;
        match crate::pow::check(
            &self.keys,
            room,
            device,
            &solution.challenge,
            &solution.solution,
            now,
        ) {
            Ok(claims) => (
                PowAnswer::Solved {
                    jti: claims.jti,
                    ttl_ms: (claims.exp.saturating_sub(now) + 1) * 1000,
                },
                None,
            ),
            Err(r) => (PowAnswer::Invalid, Some(r)),
        }
    }

    /// The answer to a device the room asks proof of work of.
    fn pow_gate(
        &self,
        room: &Room,
        device: &DeviceId,
        gate: PowGate,
        invalid: Option<crate::pow::Refusal>,
    ) -> Result<Option<ServerFrame>, JoinRefused> {
        let refuse = |r: crate::pow::Refusal, label: &str| {
            self.metrics.pow.with_label_values(&[label]).inc();
            Err(JoinRefused {
                code: r.code,
                message: r.message.into(),
            })
        };
        match gate {
            PowGate::Challenge => {
                self.metrics.pow.with_label_values(&["challenged"]).inc();
                let now = now_ms() / 1000;
                crate::pow::issue(
                    &self.keys,
                    &room.id,
                    device,
                    room.config.pow_difficulty,
                    now,
                )
                .map(|c| Some(ServerFrame::Challenge(c)))
                .map_err(|e| {
                    tracing::error!(error = %e, "signing a challenge failed");
                    JoinRefused {
                        code: ErrorCode::Internal,
                        message: "could not issue a challenge; retry".into(),
                    }
                })
            }
            PowGate::Invalid => match invalid {
                Some(r) => refuse(r, "invalid"),
                None => Err(JoinRefused {
                    code: ErrorCode::Internal,
                    message: "proof of work refused; retry".into(),
                }),
            },
            PowGate::Reused => refuse(crate::pow::reused(), "reused"),
        }
    }

    /// The `admitted` frame for a device's admission in `room`.
    fn admitted_frame(
        &self,
        room: &Room,
        device: &DeviceId,
        adm: &Admission,
    ) -> Result<ServerFrame, String> {
        let token = self.signer.sign(&room.id, device, adm).inspect_err(|e| {
            self.metrics.token_sign_errors.inc();
            tracing::error!(room = %room.id, error = %e, "signing an admission token failed");
        })?;
        Ok(ServerFrame::Admitted(AdmittedFrame {
            room: room.id.clone(),
            target_url: with_token(&room.config.target_url, &token),
            token,
            expires_at: adm.expires_at_secs(),
        }))
    }

    /// Handles a device's `join`: its place (and starts pushing updates to
    /// it), or its admission when it already has one.
    pub async fn join(
        &self,
        room_id: &RoomId,
        device: &DeviceId,
        solution: Option<Solution>,
        user: Option<&str>,
    ) -> Result<Option<ServerFrame>, JoinRefused> {
        if !self.joins.allow(device, std::time::Instant::now()) {
            return Err(JoinRefused {
                code: ErrorCode::TooManyJoins,
                message: format!(
                    "at most {} join attempts per minute; retry later",
                    self.config.joins_per_minute
                ),
            });
        }
        let now = now_ms();
        let no_room = || JoinRefused {
            code: ErrorCode::NoSuchRoom,
            message: format!("no room {room_id}"),
        };
        if let Some(user) = user.filter(|_| self.config.max_places_per_user > 0) {
            // The user's places are counted before the join script may
            // create one (a few more round trips, only with this limit).
            if self
                .queue
                .get_room(room_id)
                .await
                .map_err(|e| unavailable(&e))?
                .is_none()
            {
                return Err(no_room());
            }
            self.user_place_limit(room_id, user, device).await?;
        }
        let (pow, invalid) = self.pow_answer(room_id, device, solution);
        // Register as a local waiter *before* the join script runs: if any
        // node's tick admits the device before this call returns, the
        // bus's admission finds the waiter and is delivered (not dropped).
        let fresh = !self.waiters.contains(room_id, device);
        if fresh {
            self.waiters.reserve(room_id, device);
        }
        // One round trip: the room, the proof-of-work gate, the join and
        // the last minute's admissions (see `QueueStore::join_room`).
        let attempt = match self.queue.join_room(room_id, device, now, &pow).await {
            Ok(a) => a,
            Err(e) => {
                if fresh {
                    self.waiters.remove(room_id, device);
                }
                return Err(unavailable(&e));
            }
        };
        let (room, outcome, admitted_last_minute) = match attempt {
            JoinAttempt::Joined {
                room,
                outcome,
                admitted_last_minute,
                pow_claimed,
            } => {
                if pow_claimed {
                    self.metrics.pow.with_label_values(&["solved"]).inc();
                }
                (room, outcome, admitted_last_minute)
            }
            JoinAttempt::NoSuchRoom => {
                if fresh {
                    self.waiters.remove(room_id, device);
                }
                return Err(no_room());
            }
            JoinAttempt::Pow { room, gate } => {
                if fresh {
                    self.waiters.remove(room_id, device);
                }
                return self.pow_gate(&room, device, gate, invalid);
            }
        };
        let refused = |code, message: String| Err(JoinRefused { code, message });
        // The device was a waiter here from before the script ran, so if it
        // is gone now, the bus (or a heartbeat) already delivered its
        // admission: of the paths that learn of one admission, only the one
        // that removes the waiter sends the frame.
        let mut still_waiting = false;
        if !matches!(outcome, JoinOutcome::Waiting(_)) {
            still_waiting = self.waiters.remove(room_id, device);
        }
        match outcome {
            JoinOutcome::NoSuchRoom => refused(ErrorCode::NoSuchRoom, format!("no room {room_id}")),
            JoinOutcome::Closed => refused(
                ErrorCode::RoomClosed,
                format!("room {room_id} is closed to new joins"),
            ),
            JoinOutcome::Rejected => refused(
                ErrorCode::RoomRejecting,
                format!("room {room_id} refuses new joins (mode reject)"),
            ),
            JoinOutcome::EventNotOpen { opens_at } => refused(
                ErrorCode::EventNotOpen,
                format!(
                    "room {room_id} opens its pre-queue at {opens_at} (Unix ms); its status route counts down"
                ),
            ),
            JoinOutcome::Waiting(place) => {
                let update = QueueUpdate {
                    room: room_id.clone(),
                    position: place.position,
                    waiting_total: place.waiting_total,
                    eta_seconds: eta_seconds(place.position, admitted_last_minute),
                    state: self.shown_state(&room.config),
                    ticket: Some(place.ticket),
                };
                // Admitted meanwhile: the `admitted` frame went out already,
                // a `queue` frame now would only confuse.
                if !self.waiters.changed(device, &update) && !self.waiters.contains(room_id, device)
                {
                    return Ok(None);
                }
                Ok(Some(ServerFrame::Queue(update)))
            }
            JoinOutcome::Admitted(_) if !still_waiting => Ok(None),
            JoinOutcome::Admitted(adm) => self
                .admitted_frame(&room, device, &adm)
                .map(Some)
                .map_err(|_| JoinRefused {
                    code: ErrorCode::Internal,
                    message: "could not issue the admission token; retry".into(),
                }),
        }
    }

    /// Handles a device's `leave`.
    pub async fn leave(
        &self,
        room: &RoomId,
        device: &DeviceId,
    ) -> Result<ServerFrame, JoinRefused> {
        self.waiters.remove(room, device);
        self.queue
            .leave(room, device)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(ServerFrame::Left { room: room.clone() })
    }

    /// Runs the admission tick until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        // Start at a random phase of the tick so the nodes of a cluster do
        // not tick in lockstep: n nodes then give n chances per tick to
        // admit after a slot frees.
        let phase = self.config.tick.mul_f64(rand::random::<f64>());
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(phase) => {}
        }
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_refresh = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let refresh = last_refresh.elapsed() >= self.config.refresh;
            if refresh {
                last_refresh = tokio::time::Instant::now();
            }
            if let Ok(store) = self.queue.clock_ms().await {
                let offset = i64::try_from(store).unwrap_or(i64::MAX)
                    - i64::try_from(now_ms()).unwrap_or(i64::MAX);
                self.clock_offset_ms
                    .store(offset, std::sync::atomic::Ordering::Relaxed);
            }
            let rooms = match self.queue.rooms().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "admission tick skipped: queue store unavailable");
                    continue;
                }
            };
            for room in rooms {
                if let Err(e) = self.tick_room(&room, refresh).await {
                    tracing::debug!(room = %room, error = %e, "room tick failed");
                }
            }
        }
    }

    async fn tick_room(&self, room_id: &RoomId, refresh: bool) -> Result<(), QueueError> {
        let now = now_ms();
        let Some(room) = self.queue.get_room(room_id).await? else {
            return Ok(());
        };
        // 1. Admit (frees expired sessions first).
        let outcome = self.queue.admit(room_id, now).await?;
        for waited in &outcome.waited_ms {
            self.metrics
                .room_wait
                .with_label_values(&[room_id.as_str()])
                .observe(*waited as f64 / 1000.0);
        }
        for (device, adm) in &outcome.admitted {
            self.metrics
                .room_admitted
                .with_label_values(&[room_id.as_str()])
                .inc();
            // The node holding the device (this one included) removes its
            // waiter and sends the frame when the bus delivers it.
            if let Ok(frame) = self.admitted_frame(&room, device, adm) {
                let text = frame.to_json();
                if let Err(e) = self.store.send_admitted(room_id, device, &text).await {
                    // The device gets its admission when it joins again.
                    tracing::debug!(%device, error = %e, "admission not delivered now");
                }
            }
        }
        // 2. Free the places of devices silent beyond the grace.
        let grace = self.config.grace.as_millis() as u64;
        let swept = self.queue.sweep(room_id, now, grace).await?;
        for device in &swept {
            self.waiters.remove(room_id, device);
        }
        // 3. Room gauges (cluster-wide values: aggregate with max()).
        let stats = self.queue.stats(room_id, now).await?;
        let label = [room_id.as_str()];
        self.metrics
            .room_waiting
            .with_label_values(&label)
            .set(stats.waiting as i64);
        self.metrics
            .room_active
            .with_label_values(&label)
            .set(stats.active as i64);

        // 4. Positions of this node's waiting devices.
        let local = self.waiters.devices(room_id);
        if local.is_empty() {
            return Ok(());
        }
        let state = self.shown_state(&room.config);
        let mut updates: Vec<(DeviceId, u64)> = Vec::new();
        if refresh {
            // Heartbeat, then exact positions for everyone waiting here.
            let not_waiting = self.queue.touch(room_id, &local, now).await?;
            for device in &not_waiting {
                // Admitted by another node's tick (or swept): send the
                // admission unless the bus already did.
                if let DeviceStatus::Admitted(adm) = self.queue.status(room_id, device, now).await?
                    && self.waiters.remove(room_id, device)
                    && let Ok(frame) = self.admitted_frame(&room, device, &adm)
                {
                    // The device is connected here: deliver directly.
                    let text = Utf8Bytes::from(frame.to_json());
                    self.hub.deliver_to(device, &text);
                }
            }
            let positions = self.queue.positions(room_id, &local).await?;
            for (device, pos) in local.iter().zip(positions.positions) {
                if let Some(p) = pos {
                    updates.push((device.clone(), p));
                }
            }
        } else {
            // Exact positions near the head, every tick.
            let head = self.queue.head(room_id, EXACT_HEAD).await?;
            let local: std::collections::HashSet<&DeviceId> = local.iter().collect();
            for (i, device) in head.iter().enumerate() {
                if local.contains(device) {
                    updates.push((device.clone(), i as u64 + 1));
                }
            }
        }
        for (device, position) in updates {
            let update = QueueUpdate {
                room: room_id.clone(),
                position,
                waiting_total: stats.waiting,
                eta_seconds: eta_seconds(position, stats.admitted_last_minute),
                state: state.clone(),
                ticket: None,
            };
            if self.waiters.changed(&device, &update) {
                let text = Utf8Bytes::from(ServerFrame::Queue(update).to_json());
                self.hub.deliver_to(&device, &text);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_uses_the_measured_rate() {
        assert_eq!(eta_seconds(10, 0), None);
        assert_eq!(eta_seconds(10, 60), Some(10));
        assert_eq!(
            eta_seconds(1, 120),
            Some(1),
            "rounded up, never 0 while waiting"
        );
        assert_eq!(eta_seconds(30, 7), Some(258));
    }

    #[test]
    fn token_goes_into_the_query() {
        assert_eq!(
            with_token("https://a.example/in", "x.y.z"),
            "https://a.example/in?pace_token=x.y.z"
        );
        assert_eq!(
            with_token("https://a.example/in?s=1", "x.y.z"),
            "https://a.example/in?s=1&pace_token=x.y.z"
        );
    }
}
