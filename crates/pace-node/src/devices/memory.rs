//! The in-memory device registry (one node). Records are lost when the
//! node restarts; tokens stay valid (they are verified by signature), and
//! a device whose record is gone registers again as new.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use pace_protocol::DeviceId;

use super::{DeviceRecord, DeviceRegistry, Registered, RegistryError, matches};

/// The in-memory [`DeviceRegistry`].
#[derive(Debug, Default)]
pub struct MemoryDeviceRegistry {
    records: Mutex<BTreeMap<DeviceId, DeviceRecord>>,
}

impl MemoryDeviceRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<DeviceId, DeviceRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
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
                *existing = record.clone();
                existing.first_registered_ms = first;
                existing.last_ip = last_ip;
                Ok(Registered::Refreshed)
            }
            (Some(_), _) => Ok(Registered::Taken),
        }
    }

    async fn get(&self, device: &DeviceId) -> Result<Option<DeviceRecord>, RegistryError> {
        Ok(self.lock().get(device).cloned())
    }

    async fn seen(&self, device: &DeviceId, ip: &str, at_ms: u64) -> Result<(), RegistryError> {
        if let Some(r) = self.lock().get_mut(device) {
            r.last_ip = Some(ip.to_owned());
            r.last_seen_ms = at_ms;
        }
        Ok(())
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
}

#[cfg(test)]
mod tests {
    use super::super::conformance;
    use super::*;

    #[tokio::test]
    async fn conformance_memory() {
        conformance::registers_refreshes_and_lists(&MemoryDeviceRegistry::new()).await;
    }
}
