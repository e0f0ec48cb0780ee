//! The Redis account store: tenants, admin users and login attempt
//! counters in Redis, shared by every node of a cluster.
//!
//! Keys (all under the cluster's `{<prefix>}` hash tag, so the scripts run
//! on Redis Cluster too):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{prefix}:tenants` | set | every tenant id |
//! | `{prefix}:tenant:<tenant>` | hash | `name`, `origins` (JSON array), `created_at` |
//! | `{prefix}:admins:<tenant>` | set | the tenant's user names |
//! | `{prefix}:admin:<tenant>/<user>` | hash | `password_hash` (argon2id PHC), `created_at` |
//! | `{prefix}:login-attempts:<tenant>/<user>` | string | attempts in the window; expires with it |
//!
//! Ids may contain `:` but never `/`, so `<tenant>/<user>` names one
//! account only. Every change is one Lua script beside this file
//! (`include_str!`), loaded by SHA with reload on `NOSCRIPT`.
//!
//! The store borrows a fred [`Client`]: the node shares the one its
//! [`crate::store::RedisStore`] built; `pace-node admin` makes its own.
//! Errors carry fred's message only, never a stored value.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::scripts::Script;

use crate::store::RedisClient;

use super::{
    AccountError, AccountStore, AdminUser, Attempts, PasswordHash, Tenant, TenantId, UserInfo,
    UserName,
};

/// The Redis [`AccountStore`].
pub struct RedisAccountStore {
    /// With Redis Cluster, routed to the primary of the `{prefix}` slot
    /// every key of this store shares.
    client: RedisClient,
    prefix: String,
    put_tenant: Script,
    put_user: Script,
    delete_user: Script,
    login_attempt: Script,
}

impl std::fmt::Debug for RedisAccountStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAccountStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: Error) -> AccountError {
    AccountError::Redis(e)
}

fn bad_reply(what: &str) -> AccountError {
    AccountError::Unavailable(format!("unexpected reply from redis: {what}"))
}

impl RedisAccountStore {
    /// A store on `client` with keys under `{prefix}`.
    /// The client for this store's keys (all in the `{prefix}` slot).
    fn commands(&self) -> Result<Client, AccountError> {
        self.client.on(&self.tenants_key()).map_err(unavailable)
    }

    pub fn new(client: impl Into<RedisClient>, prefix: &str) -> RedisAccountStore {
        RedisAccountStore {
            client: client.into(),
            prefix: prefix.to_owned(),
            put_tenant: Script::from_lua(include_str!("put_tenant.lua")),
            put_user: Script::from_lua(include_str!("put_user.lua")),
            delete_user: Script::from_lua(include_str!("delete_user.lua")),
            login_attempt: Script::from_lua(include_str!("login_attempt.lua")),
        }
    }

    fn tenants_key(&self) -> String {
        format!("{{{}}}:tenants", self.prefix)
    }

    fn tenant_key(&self, tenant: &TenantId) -> String {
        format!("{{{}}}:tenant:{tenant}", self.prefix)
    }

    fn admins_key(&self, tenant: &TenantId) -> String {
        format!("{{{}}}:admins:{tenant}", self.prefix)
    }

    fn admin_key(&self, tenant: &TenantId, user: &UserName) -> String {
        format!("{{{}}}:admin:{tenant}/{user}", self.prefix)
    }

    fn attempts_key(&self, tenant: &TenantId, user: &UserName) -> String {
        format!("{{{}}}:login-attempts:{tenant}/{user}", self.prefix)
    }

    fn connected_or_fail(&self) -> Result<(), AccountError> {
        if self.client.is_connected_for(&self.tenants_key()) {
            Ok(())
        } else {
            Err(AccountError::Unavailable("not connected to redis".into()))
        }
    }

    async fn run<R: FromValue>(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<R, AccountError> {
        self.connected_or_fail()?;
        script
            .evalsha_with_reload(&self.commands()?, keys, args)
            .await
            .map_err(unavailable)
    }

    async fn put_tenant(&self, mode: &str, t: &Tenant) -> Result<String, AccountError> {
        let origins = serde_json::to_string(&t.allowed_origins)
            .map_err(|e| AccountError::Unavailable(e.to_string()))?;
        self.run(
            &self.put_tenant,
            vec![self.tenant_key(&t.id), self.tenants_key()],
            vec![
                mode.to_owned(),
                t.id.to_string(),
                t.name.clone(),
                origins,
                t.created_at.to_string(),
            ],
        )
        .await
    }

    async fn put_user(
        &self,
        mode: &str,
        tenant: &TenantId,
        user: &UserName,
        hash: &PasswordHash,
        created_at: u64,
    ) -> Result<(), AccountError> {
        let reply: String = self
            .run(
                &self.put_user,
                vec![
                    self.tenant_key(tenant),
                    self.admins_key(tenant),
                    self.admin_key(tenant, user),
                ],
                vec![
                    mode.to_owned(),
                    user.to_string(),
                    hash.as_phc().to_owned(),
                    created_at.to_string(),
                ],
            )
            .await?;
        match reply.as_str() {
            "ok" => Ok(()),
            "no_tenant" => Err(AccountError::NoSuchTenant(tenant.clone())),
            "exists" => Err(AccountError::UserExists {
                tenant: tenant.clone(),
                user: user.clone(),
            }),
            "no_user" => Err(AccountError::NoSuchUser {
                tenant: tenant.clone(),
                user: user.clone(),
            }),
            _ => Err(bad_reply("put_user")),
        }
    }

    async fn read_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, AccountError> {
        self.connected_or_fail()?;
        let h: HashMap<String, String> = self
            .commands()?
            .hgetall(self.tenant_key(id))
            .await
            .map_err(unavailable)?;
        if h.is_empty() {
            return Ok(None);
        }
        let allowed_origins = match h.get("origins") {
            Some(json) => serde_json::from_str(json).map_err(|_| bad_reply("tenant origins"))?,
            None => Vec::new(),
        };
        Ok(Some(Tenant {
            id: id.clone(),
            name: h.get("name").cloned().unwrap_or_default(),
            allowed_origins,
            created_at: h
                .get("created_at")
                .and_then(|v| v.parse().ok())
                .unwrap_or_default(),
        }))
    }
}

#[async_trait]
impl AccountStore for RedisAccountStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn create_tenant(&self, tenant: &Tenant) -> Result<(), AccountError> {
        match self.put_tenant("create", tenant).await?.as_str() {
            "ok" => Ok(()),
            "exists" => Err(AccountError::TenantExists(tenant.id.clone())),
            _ => Err(bad_reply("put_tenant")),
        }
    }

    async fn update_tenant(&self, tenant: &Tenant) -> Result<(), AccountError> {
        match self.put_tenant("update", tenant).await?.as_str() {
            "ok" => Ok(()),
            "missing" => Err(AccountError::NoSuchTenant(tenant.id.clone())),
            _ => Err(bad_reply("put_tenant")),
        }
    }

    async fn tenant(&self, id: &TenantId) -> Result<Option<Tenant>, AccountError> {
        self.read_tenant(id).await
    }

    async fn tenants(&self) -> Result<Vec<Tenant>, AccountError> {
        self.connected_or_fail()?;
        let ids: Vec<String> = self
            .commands()?
            .smembers(self.tenants_key())
            .await
            .map_err(unavailable)?;
        let mut ids: Vec<TenantId> = ids
            .iter()
            .filter_map(|id| TenantId::parse(id).ok())
            .collect();
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(t) = self.read_tenant(&id).await? {
                out.push(t);
            }
        }
        Ok(out)
    }

    async fn create_user(&self, user: &AdminUser) -> Result<(), AccountError> {
        self.put_user(
            "create",
            &user.tenant,
            &user.name,
            &user.password_hash,
            user.created_at,
        )
        .await
    }

    async fn set_password(
        &self,
        tenant: &TenantId,
        user: &UserName,
        hash: &PasswordHash,
    ) -> Result<(), AccountError> {
        match self.put_user("password", tenant, user, hash, 0).await {
            // Setting a password on a missing tenant: there is no such user.
            Err(AccountError::NoSuchTenant(_)) => Err(AccountError::NoSuchUser {
                tenant: tenant.clone(),
                user: user.clone(),
            }),
            other => other,
        }
    }

    async fn user(
        &self,
        tenant: &TenantId,
        user: &UserName,
    ) -> Result<Option<AdminUser>, AccountError> {
        self.connected_or_fail()?;
        let h: HashMap<String, String> = self
            .commands()?
            .hgetall(self.admin_key(tenant, user))
            .await
            .map_err(unavailable)?;
        let Some(phc) = h.get("password_hash") else {
            return Ok(None);
        };
        let password_hash = PasswordHash::from_phc(phc).map_err(|_| {
            AccountError::Unavailable(format!(
                "stored password hash of {user} in tenant {tenant} is not argon2id"
            ))
        })?;
        Ok(Some(AdminUser {
            tenant: tenant.clone(),
            name: user.clone(),
            password_hash,
            created_at: h
                .get("created_at")
                .and_then(|v| v.parse().ok())
                .unwrap_or_default(),
        }))
    }

    async fn users(&self, tenant: &TenantId) -> Result<Vec<UserInfo>, AccountError> {
        self.connected_or_fail()?;
        let exists: i64 = self
            .commands()?
            .exists(self.tenant_key(tenant))
            .await
            .map_err(unavailable)?;
        if exists == 0 {
            return Err(AccountError::NoSuchTenant(tenant.clone()));
        }
        let names: Vec<String> = self
            .commands()?
            .smembers(self.admins_key(tenant))
            .await
            .map_err(unavailable)?;
        let mut names: Vec<UserName> = names
            .iter()
            .filter_map(|n| UserName::parse(n).ok())
            .collect();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let created: Option<String> = self
                .commands()?
                .hget(self.admin_key(tenant, &name), "created_at")
                .await
                .map_err(unavailable)?;
            if let Some(created) = created {
                out.push(UserInfo {
                    name,
                    created_at: created.parse().unwrap_or_default(),
                });
            }
        }
        Ok(out)
    }

    async fn delete_user(&self, tenant: &TenantId, user: &UserName) -> Result<bool, AccountError> {
        let deleted: i64 = self
            .run(
                &self.delete_user,
                vec![self.admins_key(tenant), self.admin_key(tenant, user)],
                vec![user.to_string()],
            )
            .await?;
        Ok(deleted > 0)
    }

    async fn count_login_attempt(
        &self,
        tenant: &TenantId,
        user: &UserName,
        window: Duration,
    ) -> Result<Attempts, AccountError> {
        let window_ms = window.as_millis().clamp(1, u128::from(u64::MAX)) as u64;
        let reply: Vec<i64> = self
            .run(
                &self.login_attempt,
                vec![self.attempts_key(tenant, user)],
                vec![window_ms.to_string()],
            )
            .await?;
        let [count, ttl_ms] = reply[..] else {
            return Err(bad_reply("login_attempt"));
        };
        Ok(Attempts {
            count: u32::try_from(count.max(0)).unwrap_or(u32::MAX),
            resets_in: Duration::from_millis(ttl_ms.max(0).unsigned_abs()),
        })
    }

    async fn clear_login_attempts(
        &self,
        tenant: &TenantId,
        user: &UserName,
    ) -> Result<(), AccountError> {
        self.connected_or_fail()?;
        let _: i64 = self
            .commands()?
            .del(self.attempts_key(tenant, user))
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

/// A connected client for `pace-node admin` (no reconnect loop: a command
/// line tool fails and says so). Gives up after `timeout`.
pub async fn connect(url: &str, timeout: Duration) -> Result<Client, AccountError> {
    let config = Config::from_url(url).map_err(unavailable)?;
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = timeout;
            c.internal_command_timeout = timeout;
            c.max_command_attempts = 1;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = timeout;
        });
    let client = builder.build().map_err(unavailable)?;
    let connection = client.connect();
    match tokio::time::timeout(timeout, client.wait_for_connect()).await {
        Ok(Ok(())) => Ok(client),
        Ok(Err(e)) => {
            connection.abort();
            Err(unavailable(e))
        }
        Err(_) => {
            connection.abort();
            Err(AccountError::Unavailable(format!(
                "could not connect to redis within {}",
                humantime::format_duration(timeout)
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::SharedAccountStore;
    use super::super::conformance::{account_conformance, tenant, tid, uname, user};
    use super::*;
    use crate::store::test_redis::TestRedis;

    async fn setup(name: &str) -> (TestRedis, SharedAccountStore) {
        let redis = TestRedis::start();
        let client = connect(&redis.url(), Duration::from_secs(10))
            .await
            .unwrap();
        let store = RedisAccountStore::new(client, &format!("t-{name}"));
        (redis, Arc::new(store))
    }

    account_conformance!(setup);

    #[test]
    fn an_accounts_keys_share_the_cluster_slot() {
        let client = Builder::default_centralized().build().unwrap();
        let s = RedisAccountStore::new(client, "pace");
        let (t, u) = (tid("a.b"), uname("c"));
        assert_eq!(s.admin_key(&t, &u), "{pace}:admin:a.b/c");
        let slot = fred::util::redis_keyslot(s.tenants_key().as_bytes());
        for key in [
            s.tenant_key(&t),
            s.admins_key(&t),
            s.admin_key(&t, &u),
            s.attempts_key(&t, &u),
        ] {
            assert_eq!(fred::util::redis_keyslot(key.as_bytes()), slot, "{key}");
        }
    }

    #[tokio::test]
    async fn scripts_reload_after_a_script_flush_and_prefixes_are_apart() {
        let redis = TestRedis::start();
        let c = connect(&redis.url(), Duration::from_secs(10))
            .await
            .unwrap();
        let s = RedisAccountStore::new(c.clone(), "one");
        s.create_tenant(&tenant("acme")).await.unwrap();
        let _: () = c.script_flush(false).await.unwrap();
        s.create_user(&user("acme", "alice")).await.unwrap();
        let other = RedisAccountStore::new(c, "two");
        assert!(other.tenants().await.unwrap().is_empty());
        assert_eq!(s.tenants().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_stopped_redis_is_an_error_not_a_hang() {
        let mut redis = TestRedis::start();
        let c = connect(&redis.url(), Duration::from_secs(2)).await.unwrap();
        let s = RedisAccountStore::new(c, "down");
        redis.stop();
        let started = std::time::Instant::now();
        assert!(matches!(
            s.tenant(&tid("acme")).await,
            Err(AccountError::Unavailable(_) | AccountError::Redis(_))
        ));
        assert!(started.elapsed() < Duration::from_secs(5));
        let url = redis.url();
        assert!(matches!(
            connect(&url, Duration::from_millis(500)).await,
            Err(AccountError::Unavailable(_) | AccountError::Redis(_))
        ));
    }
}
