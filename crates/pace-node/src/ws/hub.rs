//! The local hub: which devices are connected to this node, which groups
//! they are in, and delivery of frames to them.
//!
//! Each connection owns a bounded outbound queue ([`Registration::outbox`]).
//! Delivery never waits: a full queue means the device cannot keep up, so it
//! is removed from the hub and told to close with 4001 (slow consumer)
//! instead of letting memory grow. A frame is serialized once and shared by
//! every recipient (`Utf8Bytes` is reference counted).
//!
//! One std `Mutex` guards the maps; no `.await` happens under it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use pace_protocol::{CloseCode, DeviceId, GroupId, Target};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::auth::{Access, Grants};

/// A request to close one connection, set from outside its task.
#[derive(Debug, Default)]
pub struct Control {
    /// The close code requested; 0 while none is.
    code: AtomicU16,
    /// Wakes the connection task when a close is requested.
    wake: Notify,
}

impl Control {
    /// Asks the connection to close with `code`. The first request wins.
    pub fn close(&self, code: CloseCode) {
        if self
            .code
            .compare_exchange(0, code.0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.wake.notify_one();
        }
    }

    /// The close code requested, if any.
    pub fn requested(&self) -> Option<CloseCode> {
        match self.code.load(Ordering::Acquire) {
            0 => None,
            c => Some(CloseCode(c)),
        }
    }

    /// Resolves once a close has been requested.
    pub async fn closed(&self) -> CloseCode {
        loop {
            if let Some(code) = self.requested() {
                return code;
            }
            self.wake.notified().await;
        }
    }
}

/// What a connection task gets when it registers.
#[derive(Debug)]
pub struct Registration {
    /// Identifies this connection among connections of the same device.
    pub conn: u64,
    /// Frames to write to the device, in order.
    pub outbox: mpsc::Receiver<Utf8Bytes>,
    /// Close requests from the hub (replaced, slow consumer, drain).
    pub control: Arc<Control>,
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The device is in the maximum number of groups already.
    #[error("a device may be in at most {0} groups")]
    TooManyGroups(usize),
    /// The connection is no longer registered (replaced or closing).
    #[error("connection is closing")]
    Gone,
}

/// The outcome of one delivery.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Devices whose queue took the frame.
    pub queued: usize,
    /// Devices disconnected because their queue was full.
    pub slow: usize,
}

struct Entry {
    conn: u64,
    /// Cluster-wide connection generation (0 when the store was down).
    generation: u64,
    outbox: mpsc::Sender<Utf8Bytes>,
    control: Arc<Control>,
    groups: Vec<GroupId>,
    /// What the device's credential lets it join (shared, changed by an
    /// admin through [`Hub::regrant`]).
    grants: Arc<Grants>,
}

#[derive(Default)]
struct Inner {
    devices: HashMap<DeviceId, Entry>,
    groups: HashMap<GroupId, HashSet<DeviceId>>,
}

impl Inner {
    fn remove(&mut self, device: &DeviceId) -> Option<Entry> {
        let entry = self.devices.remove(device)?;
        for g in &entry.groups {
            self.leave_group(g, device);
        }
        Some(entry)
    }

    fn leave_group(&mut self, group: &GroupId, device: &DeviceId) {
        if let Some(members) = self.groups.get_mut(group) {
            members.remove(device);
            if members.is_empty() {
                self.groups.remove(group);
            }
        }
    }
}

/// The registry of local connections.
#[derive(Default)]
pub struct Hub {
    inner: Mutex<Inner>,
    next_conn: AtomicU64,
    /// Where frames POSTed for this node's stream devices go
    /// ([`crate::ws::sse`]).
    streams: Arc<crate::ws::sse::Streams>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("devices", &self.len()).finish()
    }
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Hub {
        Hub::default()
    }

    /// This node's device streams (HTTP streaming transport).
    pub fn streams(&self) -> &Arc<crate::ws::sse::Streams> {
        &self.streams
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that matters more than losing every connection would.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection for `device` in `groups` (already checked
    /// against its `grants`), with an outbound queue of `queue` frames and
    /// its cluster-wide `generation`. An existing local connection of the
    /// same device is removed and told to close with 4000 (replaced).
    pub fn register(
        &self,
        device: DeviceId,
        mut groups: Vec<GroupId>,
        queue: usize,
        generation: u64,
        grants: Arc<Grants>,
    ) -> Registration {
        groups.sort();
        groups.dedup();
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(queue.max(1));
        let control = Arc::new(Control::default());
        let mut inner = self.lock();
        if let Some(old) = inner.remove(&device) {
            old.control.close(CloseCode::REPLACED);
        }
        for g in &groups {
            inner
                .groups
                .entry(g.clone())
                .or_default()
                .insert(device.clone());
        }
        inner.devices.insert(
            device,
            Entry {
                conn,
                generation,
                outbox: tx,
                control: control.clone(),
                groups,
                grants,
            },
        );
        Registration {
            conn,
            outbox: rx,
            control,
        }
    }

    /// Closes (4000, replaced) and removes the local connection of `device`
    /// if its generation is lower than `generation`. Returns whether one was.
    pub fn evict_older(&self, device: &DeviceId, generation: u64) -> bool {
        let mut inner = self.lock();
        let older = inner
            .devices
            .get(device)
            .is_some_and(|e| e.generation < generation);
        let evicted = if older { inner.remove(device) } else { None };
        if let Some(old) = &evicted {
            old.control.close(CloseCode::REPLACED);
        }
        evicted.is_some()
    }

    /// Closes `device`'s local connection with `code` and removes it.
    /// Returns whether there was one.
    pub fn close_device(&self, device: &DeviceId, code: CloseCode) -> bool {
        let removed = self.lock().remove(device);
        if let Some(entry) = &removed {
            entry.control.close(code);
        }
        removed.is_some()
    }

    /// The grants of connection `conn` of `device`, if it is registered.
    pub fn grants(&self, device: &DeviceId, conn: u64) -> Option<Arc<Grants>> {
        let inner = self.lock();
        let entry = inner.devices.get(device).filter(|e| e.conn == conn)?;
        Some(entry.grants.clone())
    }

    /// Replaces the groups `device`'s credential grants (its tenant
    /// stays): the connection leaves every group it is in that the new
    /// grants refuse (room channels stay: they follow the device's place).
    /// Returns the groups it left, or `None` when it is not here.
    pub fn regrant(&self, device: &DeviceId, groups: Vec<GroupId>) -> Option<Vec<GroupId>> {
        let mut inner = self.lock();
        let entry = inner.devices.get_mut(device)?;
        let grants = Grants::new(entry.grants.tenant.clone(), groups);
        let (keep, lost): (Vec<GroupId>, Vec<GroupId>) = std::mem::take(&mut entry.groups)
            .into_iter()
            .partition(|g| grants.access(g) != Access::Refused);
        entry.groups = keep;
        entry.grants = grants;
        for g in &lost {
            inner.leave_group(g, device);
        }
        Some(lost)
    }

    /// Removes connection `conn` of `device`, if it is still the registered one.
    pub fn unregister(&self, device: &DeviceId, conn: u64) {
        let mut inner = self.lock();
        if inner.devices.get(device).is_some_and(|e| e.conn == conn) {
            inner.remove(device);
        }
    }

    /// Adds connection `conn` of `device` to `group`. Returns whether it was
    /// newly added.
    pub fn subscribe(
        &self,
        device: &DeviceId,
        conn: u64,
        group: &GroupId,
        max_groups: usize,
    ) -> Result<bool, SubscribeError> {
        let mut inner = self.lock();
        let entry = match inner.devices.get_mut(device) {
            Some(e) if e.conn == conn => e,
            _ => return Err(SubscribeError::Gone),
        };
        if entry.groups.contains(group) {
            return Ok(false);
        }
        if entry.groups.len() >= max_groups {
            return Err(SubscribeError::TooManyGroups(max_groups));
        }
        entry.groups.push(group.clone());
        inner
            .groups
            .entry(group.clone())
            .or_default()
            .insert(device.clone());
        Ok(true)
    }

    /// Removes connection `conn` of `device` from `group`. Returns whether it
    /// was a member.
    pub fn unsubscribe(&self, device: &DeviceId, conn: u64, group: &GroupId) -> bool {
        let mut inner = self.lock();
        let Some(entry) = inner.devices.get_mut(device).filter(|e| e.conn == conn) else {
            return false;
        };
        let before = entry.groups.len();
        entry.groups.retain(|g| g != group);
        if entry.groups.len() == before {
            return false;
        }
        inner.leave_group(group, device);
        true
    }

    /// Queues `frame` to every local device matching `target`.
    pub fn deliver(&self, target: &Target, frame: &Utf8Bytes) -> Delivery {
        let mut inner = self.lock();
        let mut delivery = Delivery::default();
        let mut slow: Vec<DeviceId> = Vec::new();
        let mut offer =
            |device: &DeviceId, entry: &Entry| match entry.outbox.try_send(frame.clone()) {
                Ok(()) => delivery.queued += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    entry.control.close(CloseCode::SLOW_CONSUMER);
                    slow.push(device.clone());
                }
                // The task is gone and will unregister itself.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            };
        match target {
            Target::All => {
                for (device, entry) in &inner.devices {
                    offer(device, entry);
                }
            }
            Target::Group(group) => {
                if let Some(members) = inner.groups.get(group) {
                    for device in members {
                        if let Some(entry) = inner.devices.get(device) {
                            offer(device, entry);
                        }
                    }
                }
            }
            Target::Device(device) => {
                if let Some(entry) = inner.devices.get(device) {
                    offer(device, entry);
                }
            }
        }
        delivery.slow = slow.len();
        for device in &slow {
            inner.remove(device);
        }
        delivery
    }

    /// Tells every connection to close with `code` and empties the hub.
    /// Returns how many were told.
    pub fn close_all(&self, code: CloseCode) -> usize {
        let mut inner = self.lock();
        let n = inner.devices.len();
        for entry in inner.devices.values() {
            entry.control.close(code);
        }
        inner.devices.clear();
        inner.groups.clear();
        n
    }

    /// Devices registered now.
    pub fn len(&self) -> usize {
        self.lock().devices.len()
    }

    /// Whether no device is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Members of `group` on this node (for tests and the admin API).
    pub fn group_len(&self, group: &GroupId) -> usize {
        self.lock().groups.get(group).map_or(0, HashSet::len)
    }
}

/// The room engine delivers queue and admission frames to the devices
/// waiting here through the hub.
impl crate::rooms::Deliver for Hub {
    fn deliver_to(&self, device: &DeviceId, frame: &Utf8Bytes) {
        self.deliver(&Target::Device(device.clone()), frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> DeviceId {
        DeviceId::parse(s).unwrap()
    }
    fn g(s: &str) -> GroupId {
        GroupId::parse(s).unwrap()
    }
    fn frame(s: &str) -> Utf8Bytes {
        Utf8Bytes::from(s.to_owned())
    }

    #[test]
    fn delivers_by_scope() {
        let hub = Hub::new();
        let mut a = hub.register(d("a"), vec![g("sales")], 8, 0, Grants::open());
        let mut b = hub.register(d("b"), vec![g("it")], 8, 0, Grants::open());
        assert_eq!(hub.deliver(&Target::All, &frame("all")).queued, 2);
        assert_eq!(
            hub.deliver(&Target::Group(g("sales")), &frame("sales"))
                .queued,
            1
        );
        assert_eq!(hub.deliver(&Target::Device(d("b")), &frame("b")).queued, 1);
        assert_eq!(
            hub.deliver(&Target::Device(d("zz")), &frame("none")).queued,
            0
        );
        let drain = |r: &mut Registration| {
            std::iter::from_fn(|| r.outbox.try_recv().ok())
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(drain(&mut a), ["all", "sales"]);
        assert_eq!(drain(&mut b), ["all", "b"]);
    }

    #[test]
    fn second_registration_replaces_the_first() {
        let hub = Hub::new();
        let first = hub.register(d("a"), vec![g("x")], 8, 0, Grants::open());
        let second = hub.register(d("a"), vec![], 8, 0, Grants::open());
        assert_eq!(first.control.requested(), Some(CloseCode::REPLACED));
        assert_eq!(second.control.requested(), None);
        assert_eq!(hub.len(), 1);
        assert_eq!(
            hub.group_len(&g("x")),
            0,
            "old groups leave with the old connection"
        );
        hub.unregister(&d("a"), first.conn);
        assert_eq!(
            hub.len(),
            1,
            "the old task's unregister must not remove the new one"
        );
        hub.unregister(&d("a"), second.conn);
        assert!(hub.is_empty());
    }

    #[test]
    fn full_queue_disconnects_only_the_slow_device() {
        let hub = Hub::new();
        let slow = hub.register(d("slow"), vec![], 2, 0, Grants::open());
        let mut fast = hub.register(d("fast"), vec![], 16, 0, Grants::open());
        let mut total_slow = 0;
        for i in 0..5 {
            let r = hub.deliver(&Target::All, &frame(&i.to_string()));
            total_slow += r.slow;
            while fast.outbox.try_recv().is_ok() {}
        }
        assert_eq!(total_slow, 1);
        assert_eq!(slow.control.requested(), Some(CloseCode::SLOW_CONSUMER));
        assert_eq!(hub.len(), 1);
        assert_eq!(hub.deliver(&Target::All, &frame("x")).queued, 1);
    }

    #[test]
    fn subscriptions_are_capped_and_reversible() {
        let hub = Hub::new();
        let r = hub.register(d("a"), vec![], 8, 0, Grants::open());
        assert_eq!(hub.subscribe(&d("a"), r.conn, &g("one"), 2), Ok(true));
        assert_eq!(hub.subscribe(&d("a"), r.conn, &g("one"), 2), Ok(false));
        assert_eq!(hub.subscribe(&d("a"), r.conn, &g("two"), 2), Ok(true));
        assert_eq!(
            hub.subscribe(&d("a"), r.conn, &g("three"), 2),
            Err(SubscribeError::TooManyGroups(2))
        );
        assert!(hub.unsubscribe(&d("a"), r.conn, &g("one")));
        assert!(!hub.unsubscribe(&d("a"), r.conn, &g("one")));
        assert_eq!(hub.group_len(&g("one")), 0);
        assert_eq!(
            hub.subscribe(&d("a"), r.conn + 1, &g("x"), 2),
            Err(SubscribeError::Gone)
        );
    }

    #[test]
    fn evict_older_spares_newer_connections() {
        let hub = Hub::new();
        let r = hub.register(d("a"), vec![], 8, 10, Grants::open());
        assert!(
            !hub.evict_older(&d("a"), 9),
            "a late message must not close a newer connection"
        );
        assert!(!hub.evict_older(&d("a"), 10));
        assert_eq!(r.control.requested(), None);
        assert!(hub.evict_older(&d("a"), 11));
        assert_eq!(r.control.requested(), Some(CloseCode::REPLACED));
        assert!(hub.is_empty());
        assert!(!hub.evict_older(&d("nobody"), 99));
    }

    #[test]
    fn regrant_leaves_lost_groups_and_keeps_room_channels() {
        let hub = Hub::new();
        let grants = Grants::new(Some("acme".into()), vec![g("acme:ops"), g("acme:it")]);
        let r = hub.register(
            d("a"),
            vec![g("acme:ops"), g("acme:it"), g("@room:sale")],
            8,
            0,
            grants,
        );
        let lost = hub.regrant(&d("a"), vec![g("acme:it")]).unwrap();
        assert_eq!(lost, [g("acme:ops")]);
        assert_eq!(hub.group_len(&g("acme:ops")), 0);
        assert_eq!(hub.group_len(&g("acme:it")), 1);
        assert_eq!(hub.group_len(&g("@room:sale")), 1);
        let now = hub.grants(&d("a"), r.conn).unwrap();
        assert_eq!(now.tenant.as_deref(), Some("acme"), "the tenant stays");
        assert_eq!(now.access(&g("acme:ops")), Access::Refused);
        assert_eq!(hub.regrant(&d("nobody"), vec![]), None);
        assert!(hub.close_device(&d("a"), CloseCode::REVOKED));
        assert_eq!(r.control.requested(), Some(CloseCode::REVOKED));
        assert!(!hub.close_device(&d("a"), CloseCode::REVOKED));
    }

    #[test]
    fn close_all_tells_everyone() {
        let hub = Hub::new();
        let a = hub.register(d("a"), vec![], 8, 0, Grants::open());
        let b = hub.register(d("b"), vec![], 8, 0, Grants::open());
        assert_eq!(hub.close_all(CloseCode::SERVICE_RESTART), 2);
        assert_eq!(a.control.requested(), Some(CloseCode::SERVICE_RESTART));
        assert_eq!(b.control.requested(), Some(CloseCode::SERVICE_RESTART));
        assert!(hub.is_empty());
    }
}
