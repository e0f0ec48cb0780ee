//! The in-memory device registry (one node). Records are lost when the
//! node restarts; tokens stay valid (they are verified by signature), and
//! a device whose record is gone registers again as new.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use pace_protocol::{DeviceId, GroupId};
use tokio::time::Instant;

use super::{Credential, DeviceRecord, DeviceRegistry, Registered, RegistryError, matches};

/// The in-memory [`DeviceRegistry`].
#[derive(Debug, Default)]
pub struct MemoryDeviceRegistry {
    records: Mutex<BTreeMap<DeviceId, DeviceRecord>>,
    /// Per kicked device: tokens issued at or before this second are
    /// revoked, until the entry's time (when the last of them expires).
    /// Tokio's clock, so a test with a paused clock sees entries expire
    /// without waiting.
    revoked: Mutex<HashMap<DeviceId, (u64, Instant)>>,
}

impl MemoryDeviceRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<DeviceId, DeviceRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn revoked_before(&self, device: &DeviceId) -> Option<u64> {
        let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        match revoked.get(device) {
            Some((cutoff, until)) if *until > Instant::now() => Some(*cutoff),
            Some(_) => {
                revoked.remove(device);
                None
            }
            None => None,
        }
    }
}

#[async_trait]
impl DeviceRegistry for MemoryDeviceRegistry {
    async fn register(
        &self,
        record: &DeviceRecord,
        current_token: Option<&str>,
    ) -> Result<Registered, RegistryError> {
        let mut records = self.lock();
        match (records.get_mut(&record.info.device_id), current_token) {
            (None, _) => {
                records.insert(record.info.device_id.clone(), record.clone());
                Ok(Registered::Created)
            }
            (Some(existing), Some(token)) if existing.token_id == token => {
                let first = existing.first_registered_ms;
                let last_ip = existing.last_ip.clone();
                let departments = std::mem::take(&mut existing.departments);
                *existing = record.clone();
                existing.first_registered_ms = first;
                existing.last_ip = last_ip;
                existing.departments = departments;
                Ok(Registered::Refreshed)
            }
            (Some(_), _) => Ok(Registered::Taken),
        }
    }

    async fn get(&self, device: &DeviceId) -> Result<Option<DeviceRecord>, RegistryError> {
        Ok(self.lock().get(device).cloned())
    }

    async fn list(
        &self,
        tenant: Option<&str>,
        query: &str,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, RegistryError> {
        Ok(self
            .lock()
            .values()
            .filter(|r| matches(r, tenant, query))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn credential(
        &self,
        device: &DeviceId,
        seen: Option<(&str, u64)>,
    ) -> Result<Credential, RegistryError> {
        let revoked_before = self.revoked_before(device);
        let mut records = self.lock();
        if let (Some(r), Some((ip, at_ms))) = (records.get_mut(device), seen) {
            r.last_ip = Some(ip.to_owned());
            r.last_seen_ms = at_ms;
        }
        Ok(match records.get(device) {
            Some(r) => Credential {
                registered: true,
                departments: r.departments.clone(),
                revoked_before,
            },
            None => Credential {
                revoked_before,
                ..Credential::default()
            },
        })
    }

    async fn set_departments(
        &self,
        device: &DeviceId,
        departments: &[GroupId],
    ) -> Result<bool, RegistryError> {
        Ok(match self.lock().get_mut(device) {
            Some(r) => {
                r.departments = departments.to_vec();
                true
            }
            None => false,
        })
    }

    async fn revoke_before(
        &self,
        device: &DeviceId,
        cutoff: u64,
        ttl: Duration,
    ) -> Result<(), RegistryError> {
        if let Some(r) = self.lock().get_mut(device) {
            r.token_id.clear();
        }
        let now = Instant::now();
        let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        revoked.retain(|_, (_, until)| *until > now);
        revoked.insert(device.clone(), (cutoff, now + ttl));
        Ok(())
    }

    async fn forget(&self, device: &DeviceId) -> Result<bool, RegistryError> {
        Ok(self.lock().remove(device).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::super::conformance;
    use super::*;

    /// On a paused clock: the deny-list's expiry is reached by advancing
    /// time, not by sleeping.
    #[tokio::test(start_paused = true)]
    async fn conformance_memory() {
        conformance::registers_refreshes_and_lists(&MemoryDeviceRegistry::new()).await;
        conformance::credentials_departments_and_revocation(&MemoryDeviceRegistry::new()).await;
    }
}
