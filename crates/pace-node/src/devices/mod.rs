//! Device credentials and the device registry.
//!
//! `x-device-id` is chosen by the client, so on its own it proves nothing.
//! A device registers once (`POST /api/v1/devices/register`) and gets a
//! signed device token (an EdDSA JWT with `aud` `pace/device` and the
//! device id as `sub`), which it presents in every WebSocket handshake.
//! The handshake is refused (401) unless the token verifies and names the
//! same device as the header or query, so queue places and admissions,
//! keyed by device id, belong to whoever holds the token. Enterprises that
//! issue their own device JWTs configure that issuer's public keys instead
//! (`--device-token-jwks`), and the node trusts its `sub`.
//!
//! The registry keeps what a device said about itself when it registered
//! (type, model, OS, app version, department, user, tenant), when it
//! registered and was last seen, the address it was last seen from (for
//! NAT debugging), and the id of its current token: registering an id that
//! exists is refused unless the request presents that current token (a
//! refresh), so nobody can take a device id over by registering it.
//!
//! # Layout
//!
//! - [`token`]: [`DeviceClaims`], issuing and verifying device tokens
//!   (ours and an external issuer's).
//! - [`memory`], [`redis`]: the [`DeviceRegistry`] implementations.
//!
//! The register route is [`crate::http::routes::devices`].

pub mod memory;
pub mod redis;
pub mod token;

use std::sync::Arc;

use async_trait::async_trait;
use pace_protocol::{DeviceId, GroupId};
use serde::{Deserialize, Serialize};

pub use memory::MemoryDeviceRegistry;
pub use redis::RedisDeviceRegistry;
pub use token::{DeviceClaims, DeviceTokenError, ExternalIssuer};

/// Longest free-text field of a registration, in bytes.
pub const MAX_FIELD_LEN: usize = 128;

/// What a device says about itself when it registers (the
/// registration's body).
pub use pace_protocol::rest::RegisterRequest as DeviceInfo;

/// Checks a registration's free-text fields: at most [`MAX_FIELD_LEN`]
/// bytes of printable characters each; `user` and `tenant` non-empty when
/// given.
pub fn validate(info: &DeviceInfo) -> Result<(), String> {
    let fields = [
        ("type", &info.kind),
        ("model", &info.model),
        ("os", &info.os),
        ("os_version", &info.os_version),
        ("app_version", &info.app_version),
    ];
    let optional = [("user", &info.user), ("tenant", &info.tenant)];
    let check = |name: &str, value: &str| {
        if value.len() > MAX_FIELD_LEN {
            return Err(format!("{name} is longer than {MAX_FIELD_LEN} bytes"));
        }
        if value.chars().any(char::is_control) {
            return Err(format!("{name} contains control characters"));
        }
        Ok(())
    };
    for (name, value) in fields {
        check(name, value)?;
    }
    for (name, value) in optional {
        if let Some(v) = value {
            if v.is_empty() {
                return Err(format!("{name} must not be empty when given"));
            }
            check(name, v)?;
        }
    }
    Ok(())
}

/// One registered device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// What it said about itself at its last registration.
    #[serde(flatten)]
    pub info: DeviceInfo,
    /// First registration, Unix milliseconds.
    pub first_registered_ms: u64,
    /// Last registration or credential check (a connection, a status
    /// call), Unix milliseconds.
    pub last_seen_ms: u64,
    /// Address it last connected from (the NAT address for most
    /// enterprise devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ip: Option<String>,
    /// The id (`jti`) of its current token; never shown to admins.
    #[serde(skip_serializing, default)]
    pub token_id: String,
    /// The groups its credential grants: the untenanted department it
    /// declared when it registered, then whatever an admin of its tenant
    /// (or the service key) set. Kept across refreshes: a device cannot
    /// grant itself a group by registering again.
    #[serde(default)]
    pub departments: Vec<GroupId>,
}

/// What the handshake and the device routes need of a registered device,
/// read in one store round trip.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Credential {
    /// Whether the device has a record (the rest is empty when not).
    pub registered: bool,
    /// The groups its credential grants ([`DeviceRecord::departments`]).
    pub departments: Vec<GroupId>,
    /// The deny-list entry: every token of this device issued at or
    /// before this Unix second was revoked (kicked).
    pub revoked_before: Option<u64>,
}

impl Credential {
    /// Whether a token issued at `iat` (Unix seconds) is revoked.
    pub fn revokes(&self, iat: u64) -> bool {
        self.revoked_before.is_some_and(|cutoff| iat <= cutoff)
    }
}

/// How a registration went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// A new device.
    Created,
    /// An existing device presented its current token: a new one replaces it.
    Refreshed,
    /// The id is taken and the request did not prove it is that device.
    Taken,
}

/// Failures of the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The store cannot be reached.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// Redis failed the command (the client's error kept as the source).
    #[error("registry: redis: {0}")]
    Redis(#[from] fred::error::Error),
}

/// A device registry failure is a retryable `store_unavailable`.
impl From<RegistryError> for crate::error::ApiError {
    fn from(e: RegistryError) -> crate::error::ApiError {
        crate::error::ApiError::store_unavailable("device registry", &e)
    }
}

/// Where device records live: Redis hashes in a cluster, memory on one node.
#[async_trait]
pub trait DeviceRegistry: Send + Sync + std::fmt::Debug + 'static {
    /// Creates `record` if its id is free (`current_token` `None`), or
    /// replaces it if the stored token id equals `current_token`
    /// (keeping its first registration time). One atomic step.
    async fn register(
        &self,
        record: &DeviceRecord,
        current_token: Option<&str>,
    ) -> Result<Registered, RegistryError>;

    /// The record of `device`, if registered.
    async fn get(&self, device: &DeviceId) -> Result<Option<DeviceRecord>, RegistryError>;

    /// Up to `limit` records of `tenant` (all tenants when `None`) whose id,
    /// user, model or department contains `query`, ordered by device id.
    async fn list(
        &self,
        tenant: Option<&str>,
        query: &str,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, RegistryError>;

    /// The credential facts of `device` (the deny-list entry is read even
    /// when the device has no record: a kicked device whose record was
    /// forgotten stays refused with its old tokens). With `seen` (the
    /// address it presents its credential from, and when), a registered
    /// device's record is marked seen in the same step (one store round
    /// trip per handshake).
    async fn credential(
        &self,
        device: &DeviceId,
        seen: Option<(&str, u64)>,
    ) -> Result<Credential, RegistryError>;

    /// Replaces the groups `device`'s credential grants. Returns false
    /// when it is not registered.
    async fn set_departments(
        &self,
        device: &DeviceId,
        departments: &[GroupId],
    ) -> Result<bool, RegistryError>;

    /// Revokes every token of `device` issued at or before `cutoff` (Unix
    /// seconds): the deny-list entry lives `ttl` (the longest a token
    /// lives, so it expires with the last token it refuses), and the
    /// record's current token id is cleared, so no old token can refresh
    /// even after the entry is gone.
    async fn revoke_before(
        &self,
        device: &DeviceId,
        cutoff: u64,
        ttl: std::time::Duration,
    ) -> Result<(), RegistryError>;

    /// Forgets `device`'s registration, so its id can register anew.
    /// Returns whether it was registered.
    async fn forget(&self, device: &DeviceId) -> Result<bool, RegistryError>;
}

/// A registry shared by the node's tasks.
pub type SharedDeviceRegistry = Arc<dyn DeviceRegistry>;

/// Whether `record` matches a registry search.
pub(crate) fn matches(record: &DeviceRecord, tenant: Option<&str>, query: &str) -> bool {
    if tenant.is_some() && record.info.tenant.as_deref() != tenant {
        return false;
    }
    if query.is_empty() {
        return true;
    }
    let q = query.to_lowercase();
    let hay = [
        record.info.device_id.as_str(),
        record.info.user.as_deref().unwrap_or_default(),
        record.info.model.as_str(),
        record
            .info
            .department
            .as_ref()
            .map(GroupId::as_str)
            .unwrap_or_default(),
        record.last_ip.as_deref().unwrap_or_default(),
    ];
    hay.iter().any(|h| h.to_lowercase().contains(&q))
        || record
            .departments
            .iter()
            .any(|g| g.as_str().to_lowercase().contains(&q))
}

/// The conformance suite every [`DeviceRegistry`] passes.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;

    pub fn record(id: &str, tenant: Option<&str>, token_id: &str) -> DeviceRecord {
        DeviceRecord {
            info: DeviceInfo {
                device_id: DeviceId::parse(id).unwrap(),
                kind: "laptop".into(),
                model: "ThinkPad X1".into(),
                os: "linux".into(),
                os_version: "6.8".into(),
                app_version: "1.2.3".into(),
                department: Some(GroupId::parse("sales").unwrap()),
                user: Some("alice@acme.example".into()),
                tenant: tenant.map(str::to_owned),
            },
            first_registered_ms: 1_000,
            last_seen_ms: 1_000,
            last_ip: None,
            token_id: token_id.into(),
            departments: vec![GroupId::parse("sales").unwrap()],
        }
    }

    /// Departments survive a refresh and change only through
    /// `set_departments`; the deny-list holds a token id until its time to
    /// live; a forgotten device can register anew.
    pub async fn credentials_departments_and_revocation(r: &dyn DeviceRegistry) {
        let d = DeviceId::parse("cred-a").unwrap();
        let g = |s: &str| GroupId::parse(s).unwrap();
        assert_eq!(
            r.credential(&d, Some(("192.0.2.1", 7))).await.unwrap(),
            Credential::default()
        );
        assert_eq!(r.get(&d).await.unwrap(), None, "seen creates nothing");
        let mut a = record("cred-a", Some("acme"), "t1");
        a.departments = vec![];
        r.register(&a, None).await.unwrap();
        assert_eq!(
            r.credential(&d, None).await.unwrap(),
            Credential {
                registered: true,
                departments: vec![],
                revoked_before: None,
            }
        );
        r.credential(&d, Some(("198.51.100.9", 4_000)))
            .await
            .unwrap();
        let got = r.get(&d).await.unwrap().unwrap();
        assert_eq!(
            (got.last_ip.as_deref(), got.last_seen_ms),
            (Some("198.51.100.9"), 4_000),
            "seen with the credential read"
        );
        assert!(
            r.set_departments(&d, &[g("acme:ops"), g("acme:it")])
                .await
                .unwrap()
        );
        let mut refreshed = record("cred-a", Some("acme"), "t2");
        refreshed.departments = vec![g("sales")];
        assert_eq!(
            r.register(&refreshed, Some("t1")).await.unwrap(),
            Registered::Refreshed
        );
        assert_eq!(
            r.credential(&d, None).await.unwrap().departments,
            vec![g("acme:ops"), g("acme:it")],
            "a refresh keeps the granted departments"
        );
        assert_eq!(
            r.get(&d).await.unwrap().unwrap().departments,
            vec![g("acme:ops"), g("acme:it")]
        );
        let ghost = DeviceId::parse("cred-ghost").unwrap();
        assert!(!r.set_departments(&ghost, &[g("x")]).await.unwrap());

        r.revoke_before(&d, 1_000, std::time::Duration::from_millis(400))
            .await
            .unwrap();
        let again = record("cred-a", Some("acme"), "t3");
        assert_eq!(
            r.register(&again, Some("t2")).await.unwrap(),
            Registered::Taken,
            "a revoked token never refreshes"
        );
        let cred = r.credential(&d, None).await.unwrap();
        assert_eq!(cred.revoked_before, Some(1_000));
        assert!(cred.revokes(999) && cred.revokes(1_000) && !cred.revokes(1_001));
        assert!(r.forget(&d).await.unwrap());
        assert!(!r.forget(&d).await.unwrap());
        assert_eq!(r.get(&d).await.unwrap(), None);
        let gone = r.credential(&d, None).await.unwrap();
        assert!(
            !gone.registered && gone.revoked_before == Some(1_000),
            "the deny-list outlives the record"
        );
        assert_eq!(r.register(&a, None).await.unwrap(), Registered::Created);
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert_eq!(
            r.credential(&d, None).await.unwrap().revoked_before,
            None,
            "deny-list entries expire with the tokens"
        );
    }

    /// Create once; refresh only with the current token id; seen updates
    /// time and address; list filters by tenant and query.
    pub async fn registers_refreshes_and_lists(r: &dyn DeviceRegistry) {
        let a = record("dev-a", Some("acme"), "t1");
        assert_eq!(r.register(&a, None).await.unwrap(), Registered::Created);
        let mut thief = record("dev-a", Some("acme"), "evil");
        thief.info.user = Some("mallory".into());
        assert_eq!(r.register(&thief, None).await.unwrap(), Registered::Taken);
        assert_eq!(
            r.register(&thief, Some("guessed")).await.unwrap(),
            Registered::Taken
        );
        assert_eq!(r.get(&a.info.device_id).await.unwrap().unwrap(), a);

        let mut refreshed = record("dev-a", Some("acme"), "t2");
        refreshed.first_registered_ms = 5_000;
        refreshed.last_seen_ms = 5_000;
        refreshed.info.app_version = "1.3.0".into();
        assert_eq!(
            r.register(&refreshed, Some("t1")).await.unwrap(),
            Registered::Refreshed
        );
        let got = r.get(&a.info.device_id).await.unwrap().unwrap();
        assert_eq!(got.token_id, "t2");
        assert_eq!(got.info.app_version, "1.3.0");
        assert_eq!(got.first_registered_ms, 1_000, "first registration kept");
        assert_eq!(
            r.register(&refreshed, Some("t1")).await.unwrap(),
            Registered::Taken,
            "an old token cannot refresh"
        );

        r.credential(&a.info.device_id, Some(("198.51.100.7", 9_000)))
            .await
            .unwrap();
        let got = r.get(&a.info.device_id).await.unwrap().unwrap();
        assert_eq!(got.last_ip.as_deref(), Some("198.51.100.7"));
        assert_eq!(got.last_seen_ms, 9_000);

        r.register(&record("dev-b", Some("acme"), "t"), None)
            .await
            .unwrap();
        r.register(&record("dev-c", Some("globex"), "t"), None)
            .await
            .unwrap();
        let ids = |v: Vec<DeviceRecord>| {
            v.into_iter()
                .map(|d| d.info.device_id.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids(r.list(Some("acme"), "", 10).await.unwrap()),
            ["dev-a", "dev-b"]
        );
        assert_eq!(
            ids(r.list(Some("globex"), "", 10).await.unwrap()),
            ["dev-c"]
        );
        assert_eq!(ids(r.list(None, "", 10).await.unwrap()).len(), 3);
        assert_eq!(
            ids(r.list(Some("acme"), "198.51", 10).await.unwrap()),
            ["dev-a"]
        );
        assert_eq!(ids(r.list(Some("acme"), "", 1).await.unwrap()), ["dev-a"]);
    }
}
