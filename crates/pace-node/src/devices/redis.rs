//! The Redis device registry, shared by every node of a cluster.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{prefix}:device:<id>` | hash | `record` (the registration, JSON), `token_id`, `first_registered_ms`, `last_seen_ms`, `last_ip`, `departments` (granted groups, JSON), `revoked_before` (a kick's cutoff) |
//! | `{prefix}:devices` | set | every registered device id (listings page through it with `SSCAN`, never one `SMEMBERS`) |
//! | `{prefix}:revoked:<id>` | string (Unix second), expiring with the last token it refuses | the deny-list entry of a kicked device, read when it has no record (it outlives a forgotten one) |
//!
//! Registration is one Lua script (`register_device.lua`): create if
//! absent, replace only with the current token id, keeping the granted
//! departments. The handshake's read is one script too (`credential.lua`:
//! token id, departments and the kick's cutoff from the hash, the separate
//! deny-list key only for an id without a record, and the "seen" update
//! the handshake used to send on its own).

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::scripts::Script;
use pace_protocol::{DeviceId, GroupId};

use crate::store::RedisClient;

use super::{
    Credential, DeviceInfo, DeviceRecord, DeviceRegistry, Registered, RegistryError, matches,
};

/// Most devices a listing scans (the registry search is for people, not
/// for bulk export): the first this many of the index's `SSCAN` order,
/// then sorted by id (below this many devices: every device, by id).
const SCAN_LIMIT: usize = 100_000;

/// The Redis [`DeviceRegistry`].
pub struct RedisDeviceRegistry {
    /// With Redis Cluster, routed to the primary of the `{prefix}` slot
    /// every key of this store shares.
    client: RedisClient,
    prefix: String,
    register: Script,
    credential: Script,
    set_departments: Script,
    forget: Script,
    revoke: Script,
}

impl std::fmt::Debug for RedisDeviceRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDeviceRegistry")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: Error) -> RegistryError {
    RegistryError::Redis(e)
}

impl RedisDeviceRegistry {
    /// A registry on `client` under `{prefix}`.
    /// The client for this store's keys (all in the `{prefix}` slot).
    fn commands(&self) -> Result<Client, RegistryError> {
        self.client.on(&self.index()).map_err(unavailable)
    }

    pub fn new(client: impl Into<RedisClient>, prefix: &str) -> Self {
        RedisDeviceRegistry {
            client: client.into(),
            prefix: prefix.to_owned(),
            register: Script::from_lua(include_str!("register_device.lua")),
            credential: Script::from_lua(include_str!("credential.lua")),
            set_departments: Script::from_lua(include_str!("set_departments.lua")),
            forget: Script::from_lua(include_str!("forget_device.lua")),
            revoke: Script::from_lua(include_str!("revoke_device.lua")),
        }
    }

    fn revoked_key(&self, device: &DeviceId) -> String {
        format!("{{{}}}:revoked:{device}", self.prefix)
    }

    fn key(&self, device: &DeviceId) -> String {
        format!("{{{}}}:device:{device}", self.prefix)
    }

    fn index(&self) -> String {
        format!("{{{}}}:devices", self.prefix)
    }

    /// Builds a record from a device hash (`None` when absent or unreadable).
    fn parse(fields: std::collections::HashMap<String, String>) -> Option<DeviceRecord> {
        let info: DeviceInfo = serde_json::from_str(fields.get("record")?).ok()?;
        let num = |k: &str| {
            fields
                .get(k)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Some(DeviceRecord {
            info,
            first_registered_ms: num("first_registered_ms"),
            last_seen_ms: num("last_seen_ms"),
            last_ip: fields.get("last_ip").cloned(),
            token_id: fields.get("token_id").cloned().unwrap_or_default(),
            departments: parse_departments(fields.get("departments").map(String::as_str)),
        })
    }
}

/// The `departments` field (a JSON list; unreadable entries are dropped).
fn parse_departments(json: Option<&str>) -> Vec<GroupId> {
    let Some(json) = json else {
        return Vec::new();
    };
    serde_json::from_str::<Vec<String>>(json)
        .unwrap_or_default()
        .iter()
        .filter_map(|g| GroupId::parse(g).ok())
        .collect()
}

fn departments_json(departments: &[GroupId]) -> Result<String, RegistryError> {
    serde_json::to_string(departments).map_err(|e| RegistryError::Unavailable(e.to_string()))
}

#[async_trait]
impl DeviceRegistry for RedisDeviceRegistry {
    async fn register(
        &self,
        record: &DeviceRecord,
        current_token: Option<&str>,
    ) -> Result<Registered, RegistryError> {
        let json = serde_json::to_string(&record.info)
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        let outcome: String = self
            .register
            .evalsha_with_reload(
                &self.commands()?,
                vec![self.key(&record.info.device_id), self.index()],
                vec![
                    record.info.device_id.to_string(),
                    current_token.unwrap_or_default().to_owned(),
                    json,
                    record.token_id.clone(),
                    record.last_seen_ms.to_string(),
                    departments_json(&record.departments)?,
                ],
            )
            .await
            .map_err(unavailable)?;
        match outcome.as_str() {
            "created" => Ok(Registered::Created),
            "refreshed" => Ok(Registered::Refreshed),
            _ => Ok(Registered::Taken),
        }
    }

    async fn get(&self, device: &DeviceId) -> Result<Option<DeviceRecord>, RegistryError> {
        let fields: std::collections::HashMap<String, String> = self
            .commands()?
            .hgetall(self.key(device))
            .await
            .map_err(unavailable)?;
        Ok(RedisDeviceRegistry::parse(fields))
    }

    async fn list(
        &self,
        tenant: Option<&str>,
        query: &str,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, RegistryError> {
        // Paged (`SSCAN`): no one command reads the whole index.
        let mut ids = crate::queue::sscan_members(&self.commands()?, &self.index(), SCAN_LIMIT)
            .await
            .map_err(unavailable)?;
        ids.sort();
        let mut out = Vec::new();
        for chunk in ids.chunks(200) {
            let pipeline = self.commands()?.pipeline();
            for id in chunk {
                let Ok(device) = DeviceId::parse(id) else {
                    continue;
                };
                let _: () = pipeline
                    .hgetall::<(), _>(self.key(&device))
                    .await
                    .map_err(unavailable)?;
            }
            let all: Vec<std::collections::HashMap<String, String>> =
                pipeline.all().await.map_err(unavailable)?;
            for fields in all {
                if let Some(r) = RedisDeviceRegistry::parse(fields)
                    && matches(&r, tenant, query)
                {
                    out.push(r);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn credential(
        &self,
        device: &DeviceId,
        seen: Option<(&str, u64)>,
    ) -> Result<Credential, RegistryError> {
        let (ip, at) = seen.unwrap_or_default();
        let (token_id, departments, cutoff): (Option<String>, Option<String>, Option<String>) =
            self.credential
                .evalsha_with_reload(
                    &self.commands()?,
                    vec![self.key(device), self.revoked_key(device)],
                    vec![ip.to_owned(), at.to_string()],
                )
                .await
                .map_err(unavailable)?;
        Ok(Credential {
            registered: token_id.is_some(),
            departments: parse_departments(departments.as_deref()),
            revoked_before: cutoff.and_then(|c| c.parse().ok()),
        })
    }

    async fn set_departments(
        &self,
        device: &DeviceId,
        departments: &[GroupId],
    ) -> Result<bool, RegistryError> {
        let n: i64 = self
            .set_departments
            .evalsha_with_reload(
                &self.commands()?,
                vec![self.key(device)],
                vec![departments_json(departments)?],
            )
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }

    async fn revoke_before(
        &self,
        device: &DeviceId,
        cutoff: u64,
        ttl: std::time::Duration,
    ) -> Result<(), RegistryError> {
        let _: i64 = self
            .revoke
            .evalsha_with_reload(
                &self.commands()?,
                vec![self.revoked_key(device), self.key(device)],
                vec![cutoff.to_string(), ttl.as_millis().max(1).to_string()],
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn forget(&self, device: &DeviceId) -> Result<bool, RegistryError> {
        let n: i64 = self
            .forget
            .evalsha_with_reload(
                &self.commands()?,
                vec![self.key(device), self.index()],
                vec![device.to_string()],
            )
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::super::conformance;
    use super::*;
    use crate::store::test_redis::TestRedis;

    #[tokio::test]
    async fn conformance_against_a_real_redis() {
        let redis = TestRedis::start();
        let client = Builder::from_config(Config::from_url(&redis.url()).unwrap())
            .build()
            .unwrap();
        client.init().await.unwrap();
        let r = RedisDeviceRegistry::new(client, "devreg");
        conformance::registers_refreshes_and_lists(&r).await;
        conformance::credentials_departments_and_revocation(&r).await;
    }

    /// A listing pages through the index with `SSCAN` (more devices than
    /// one page of 1,000) and still answers every device, ordered by id,
    /// filtered by tenant.
    #[tokio::test]
    async fn a_listing_pages_through_the_whole_index() {
        let redis = TestRedis::start();
        let client = Builder::from_config(Config::from_url(&redis.url()).unwrap())
            .build()
            .unwrap();
        client.init().await.unwrap();
        let r = RedisDeviceRegistry::new(client, "pages");
        let n = 2_500;
        for i in 0..n {
            let tenant = if i % 2 == 0 { "even" } else { "odd" };
            let rec = conformance::record(&format!("dev-{i:05}"), Some(tenant), "t");
            r.register(&rec, None).await.unwrap();
        }
        let ids = |v: Vec<DeviceRecord>| {
            v.into_iter()
                .map(|d| d.info.device_id.to_string())
                .collect::<Vec<_>>()
        };
        let all = ids(r.list(None, "", n + 10).await.unwrap());
        let expected: Vec<String> = (0..n).map(|i| format!("dev-{i:05}")).collect();
        assert_eq!(all, expected);
        let even = ids(r.list(Some("even"), "", n).await.unwrap());
        assert_eq!(even.len(), n / 2);
        assert!(even.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(ids(r.list(Some("odd"), "", 3).await.unwrap()).len(), 3);
    }
}
