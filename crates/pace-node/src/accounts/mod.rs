//! Tenants and their admin accounts: who may log in to the admin API, and
//! the [`AccountStore`] seam that keeps them (memory + file for one node,
//! Redis for a cluster), side by side like the other stores.
//!
//! A tenant is one customer of the cluster (its rooms, its browser origins);
//! an admin user belongs to one tenant and logs in with a password at
//! `POST /api/v1/admin/login`, getting a short-lived EdDSA JWT for the admin
//! API ([`login`]). Passwords are hashed with argon2id ([`password`]) and
//! neither a password nor a hash is ever logged, printed, returned or shown
//! by `Debug`.
//!
//! # Layout
//!
//! - [`password`]: [`Password`], [`PasswordHash`], argon2id hashing and
//!   constant-time verification (with a dummy hash for unknown users).
//! - [`memory`]: [`MemoryAccountStore`], one node: `<data-dir>/accounts.json`.
//! - [`redis`]: [`RedisAccountStore`], a cluster: hashes under `{<prefix>}`.
//! - [`login`]: the login route, the per-account failure limit, and the
//!   admin token ([`AdminClaims`], [`verify_admin_token`]).
//! - [`cli`]: `pace-node admin add-tenant | add-user | list`.
//!
//! # Login attempt limit
//!
//! Every login attempt for an account (tenant + user, whether or not it
//! exists) is counted in the store before the password is checked
//! ([`AccountStore::count_login_attempt`]); the window starts with the
//! first attempt and a successful login clears it. Past
//! [`login::MAX_FAILED_LOGINS`] attempts in [`login::LOGIN_WINDOW`], every
//! attempt is refused with 429 until the window ends, even with the right
//! password. Counting before checking keeps the limit exact under
//! concurrent attempts; counting in the store makes it hold across nodes.

pub mod cli;
pub mod login;
pub mod memory;
pub mod password;
pub mod redis;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use login::{AdminClaims, AdminTokenError, sign_admin_token, verify_admin_token};
pub use memory::MemoryAccountStore;
pub use password::{Password, PasswordError, PasswordHash, hash_password, verify_password};
pub use redis::RedisAccountStore;

/// Longest tenant display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 200;

/// Most browser origins one tenant may list.
pub const MAX_ORIGINS: usize = 64;

pub use crate::names::{InvalidName, TenantId, UserName, normalize_origin};

/// One tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    /// Its id.
    pub id: TenantId,
    /// Name shown to people (admin UI, `pace-node admin list`).
    pub name: String,
    /// Browser origins (`https://shop.example`) its devices may connect
    /// from, normalised by [`normalize_origin`].
    pub allowed_origins: Vec<String>,
    /// Unix seconds when it was created.
    pub created_at: u64,
}

impl Tenant {
    /// Checks the name and origins, normalising the origins.
    pub fn validated(mut self) -> Result<Tenant, AccountError> {
        self.name = check_display_name(&self.name)?;
        if self.allowed_origins.len() > MAX_ORIGINS {
            return Err(AccountError::Invalid(format!(
                "a tenant may list at most {MAX_ORIGINS} origins"
            )));
        }
        let mut origins = Vec::with_capacity(self.allowed_origins.len());
        for o in &self.allowed_origins {
            let o = normalize_origin(o)?;
            if !origins.contains(&o) {
                origins.push(o);
            }
        }
        self.allowed_origins = origins;
        Ok(self)
    }
}

/// One admin user, with the hash of its password (never shown by `Debug`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminUser {
    /// The tenant it administers.
    pub tenant: TenantId,
    /// Its name within the tenant.
    pub name: UserName,
    /// argon2id PHC string of its password.
    pub password_hash: PasswordHash,
    /// Unix seconds when it was created.
    pub created_at: u64,
}

/// An admin user as listed: no password hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    /// Its name within the tenant.
    pub name: UserName,
    /// Unix seconds when it was created.
    pub created_at: u64,
}

/// The login attempts of one account in the current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempts {
    /// Attempts counted in the window, this one included.
    pub count: u32,
    /// Time until the window ends and the count starts over.
    pub resets_in: Duration,
}

/// Why an account operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// An id, name or origin breaks its rules.
    #[error("{0}")]
    Invalid(String),
    /// `create_tenant` for an id that exists.
    #[error("tenant {0} already exists")]
    TenantExists(TenantId),
    /// The tenant does not exist.
    #[error("no tenant {0}")]
    NoSuchTenant(TenantId),
    /// `create_user` for a name that exists in the tenant.
    #[error("user {user} already exists in tenant {tenant}")]
    UserExists {
        /// The tenant.
        tenant: TenantId,
        /// The user.
        user: UserName,
    },
    /// The user does not exist in the tenant.
    #[error("no user {user} in tenant {tenant}")]
    NoSuchUser {
        /// The tenant.
        tenant: TenantId,
        /// The user.
        user: UserName,
    },
    /// The store cannot be reached or read (never carries stored values).
    #[error("account store unavailable: {0}")]
    Unavailable(String),
    /// Redis failed the command (the client's error kept as the source).
    #[error("account store unavailable: redis: {0}")]
    Redis(#[from] fred::error::Error),
}

/// A name that breaks its rules is an invalid account field.
impl From<InvalidName> for AccountError {
    fn from(e: InvalidName) -> AccountError {
        AccountError::Invalid(e.0)
    }
}

/// An account store failure is a retryable `store_unavailable`; the
/// account rules' own refusals are the caller's (`bad_request`,
/// `not_found`), a conflict `internal` (no handler creates accounts).
impl From<AccountError> for crate::error::ApiError {
    fn from(e: AccountError) -> crate::error::ApiError {
        use crate::error::ApiError;
        use pace_protocol::ErrorCode;
        match e {
            AccountError::Invalid(msg) => ApiError::new(ErrorCode::BadRequest, msg),
            AccountError::NoSuchTenant(_) | AccountError::NoSuchUser { .. } => {
                ApiError::new(ErrorCode::NotFound, e.to_string())
            }
            AccountError::TenantExists(_) | AccountError::UserExists { .. } => {
                tracing::error!(error = %e, "unexpected account conflict");
                ApiError::new(ErrorCode::Internal, "the node failed; retry")
            }
            AccountError::Unavailable(_) | AccountError::Redis(_) => {
                ApiError::store_unavailable("account store", &e)
            }
        }
    }
}

/// Where tenants and admin users live. Every method is one atomic step in
/// the store; both implementations pass the conformance suite in this
/// module's tests.
#[async_trait]
pub trait AccountStore: Send + Sync + fmt::Debug + 'static {
    /// `memory` or `redis`.
    fn kind(&self) -> &'static str;

    /// Creates a tenant; [`AccountError::TenantExists`] if the id is taken.
    async fn create_tenant(&self, tenant: &Tenant) -> Result<(), AccountError>;

    /// Replaces a tenant's name and origins (its `created_at` stays);
    /// [`AccountError::NoSuchTenant`] if it does not exist.
    async fn update_tenant(&self, tenant: &Tenant) -> Result<(), AccountError>;

    /// One tenant.
    async fn tenant(&self, id: &TenantId) -> Result<Option<Tenant>, AccountError>;

    /// Every tenant, by id.
    async fn tenants(&self) -> Result<Vec<Tenant>, AccountError>;

    /// Creates an admin user in its (existing) tenant;
    /// [`AccountError::UserExists`] if the name is taken there.
    async fn create_user(&self, user: &AdminUser) -> Result<(), AccountError>;

    /// Replaces an existing user's password hash.
    async fn set_password(
        &self,
        tenant: &TenantId,
        user: &UserName,
        hash: &PasswordHash,
    ) -> Result<(), AccountError>;

    /// One user, with its password hash.
    async fn user(
        &self,
        tenant: &TenantId,
        user: &UserName,
    ) -> Result<Option<AdminUser>, AccountError>;

    /// The users of a tenant, by name, without hashes;
    /// [`AccountError::NoSuchTenant`] if the tenant does not exist.
    async fn users(&self, tenant: &TenantId) -> Result<Vec<UserInfo>, AccountError>;

    /// Deletes a user; false if there was none.
    async fn delete_user(&self, tenant: &TenantId, user: &UserName) -> Result<bool, AccountError>;

    /// Counts one login attempt for the account and returns the attempts
    /// in the current window (which starts with the first attempt and
    /// lasts `window`; later attempts do not extend it).
    async fn count_login_attempt(
        &self,
        tenant: &TenantId,
        user: &UserName,
        window: Duration,
    ) -> Result<Attempts, AccountError>;

    /// Forgets the account's attempts (after a successful login).
    async fn clear_login_attempts(
        &self,
        tenant: &TenantId,
        user: &UserName,
    ) -> Result<(), AccountError>;
}

/// A shared handle to the node's account store.
pub type SharedAccountStore = std::sync::Arc<dyn AccountStore>;

/// Checks a display name: trimmed, 1 to [`MAX_DISPLAY_NAME_CHARS`]
/// characters, no control characters.
pub fn check_display_name(name: &str) -> Result<String, AccountError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_DISPLAY_NAME_CHARS {
        return Err(AccountError::Invalid(format!(
            "tenant name must be 1 to {MAX_DISPLAY_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(AccountError::Invalid(
            "tenant name may not contain control characters".into(),
        ));
    }
    Ok(name.to_owned())
}

/// Seconds since the Unix epoch now.
pub(crate) fn unix_now() -> u64 {
    crate::admission::unix_now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_group_rules() {
        assert!(TenantId::parse("acme-eu.1").is_ok());
        assert!(UserName::parse("alice@acme").is_ok());
        assert!(TenantId::parse("").is_err());
        assert!(TenantId::parse("has space").is_err());
        assert!(UserName::parse(&"a".repeat(65)).is_err());
        assert!(TenantId::parse(&"t".repeat(64)).is_ok());
        assert!(TenantId::parse(&"t".repeat(65)).is_err());
        let e = TenantId::parse("a/b").unwrap_err();
        assert!(e.to_string().starts_with("tenant id "), "{e}");
    }

    #[test]
    fn origins_are_normalised_and_checked() {
        assert_eq!(
            normalize_origin("HTTPS://Shop.Example").unwrap(),
            "https://shop.example"
        );
        assert_eq!(
            normalize_origin("http://localhost:8080/").unwrap(),
            "http://localhost:8080"
        );
        for bad in [
            "shop.example",
            "ftp://shop.example",
            "https://shop.example/path",
            "https://user@shop.example",
            "https://shop.example?x=1",
            "",
        ] {
            assert!(normalize_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tenants_are_validated() {
        let t = Tenant {
            id: TenantId::parse("acme").unwrap(),
            name: "  Acme  ".into(),
            allowed_origins: vec!["https://A.example".into(), "https://a.example/".into()],
            created_at: 1,
        }
        .validated()
        .unwrap();
        assert_eq!(t.name, "Acme");
        assert_eq!(t.allowed_origins, vec!["https://a.example"]);
        let mut bad = t.clone();
        bad.name = "a\nb".into();
        assert!(bad.validated().is_err());
    }
}

/// The conformance suite every [`AccountStore`] passes. Each store's tests
/// instantiate it with [`account_conformance!`], giving a setup function
/// `async fn(name) -> (guard, SharedAccountStore)` that returns a fresh
/// store.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;

    /// One `#[tokio::test]` per conformance case, calling `$setup`.
    macro_rules! account_conformance {
        ($setup:path) => {
            $crate::accounts::conformance::account_conformance!(@cases $setup,
                tenants_are_created_read_listed_and_updated,
                an_existing_tenant_is_not_created_again,
                users_are_created_read_listed_and_deleted,
                a_user_needs_its_tenant_and_a_free_name,
                users_belong_to_one_tenant,
                login_attempts_are_counted_and_cleared,
                login_attempt_windows_end,
            );
        };
        (@cases $setup:path, $($case:ident),* $(,)?) => {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (_guard, store) = $setup(stringify!($case)).await;
                    $crate::accounts::conformance::$case(store).await;
                }
            )*
        };
    }
    pub(crate) use account_conformance;

    /// A valid argon2id hash (of a throwaway password), so the suite needs
    /// no slow hashing.
    pub fn hash() -> PasswordHash {
        PasswordHash::from_phc(password::DUMMY_HASH).unwrap()
    }

    /// Another valid hash.
    pub fn other_hash() -> PasswordHash {
        PasswordHash::from_phc(password::TEST_HASH).unwrap()
    }

    pub fn tid(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    pub fn uname(s: &str) -> UserName {
        UserName::parse(s).unwrap()
    }

    pub fn tenant(id: &str) -> Tenant {
        Tenant {
            id: tid(id),
            name: format!("Tenant {id}"),
            allowed_origins: vec![format!("https://{id}.example")],
            created_at: 1_800_000_000,
        }
    }

    pub fn user(tenant: &str, name: &str) -> AdminUser {
        AdminUser {
            tenant: tid(tenant),
            name: uname(name),
            password_hash: hash(),
            created_at: 1_800_000_100,
        }
    }

    pub async fn tenants_are_created_read_listed_and_updated(s: SharedAccountStore) {
        assert!(s.tenants().await.unwrap().is_empty());
        assert_eq!(s.tenant(&tid("acme")).await.unwrap(), None);
        s.create_tenant(&tenant("zeta")).await.unwrap();
        s.create_tenant(&tenant("acme")).await.unwrap();
        assert_eq!(s.tenant(&tid("acme")).await.unwrap(), Some(tenant("acme")));
        let ids: Vec<String> = s
            .tenants()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.id.to_string())
            .collect();
        assert_eq!(ids, ["acme", "zeta"]);

        let mut changed = tenant("acme");
        changed.name = "Acme Corp".into();
        changed.allowed_origins = vec![];
        changed.created_at = 5; // ignored: creation time stays
        s.update_tenant(&changed).await.unwrap();
        let got = s.tenant(&tid("acme")).await.unwrap().unwrap();
        assert_eq!(got.name, "Acme Corp");
        assert!(got.allowed_origins.is_empty());
        assert_eq!(got.created_at, tenant("acme").created_at);

        assert_eq!(
            s.update_tenant(&tenant("nobody")).await,
            Err(AccountError::NoSuchTenant(tid("nobody")))
        );
        assert_eq!(s.tenant(&tid("nobody")).await.unwrap(), None);
    }

    pub async fn an_existing_tenant_is_not_created_again(s: SharedAccountStore) {
        s.create_tenant(&tenant("acme")).await.unwrap();
        let mut again = tenant("acme");
        again.name = "Other".into();
        assert_eq!(
            s.create_tenant(&again).await,
            Err(AccountError::TenantExists(tid("acme")))
        );
        assert_eq!(
            s.tenant(&tid("acme")).await.unwrap().unwrap().name,
            "Tenant acme"
        );
    }

    pub async fn users_are_created_read_listed_and_deleted(s: SharedAccountStore) {
        s.create_tenant(&tenant("acme")).await.unwrap();
        assert!(s.users(&tid("acme")).await.unwrap().is_empty());
        s.create_user(&user("acme", "bob")).await.unwrap();
        s.create_user(&user("acme", "alice")).await.unwrap();
        assert_eq!(
            s.user(&tid("acme"), &uname("alice")).await.unwrap(),
            Some(user("acme", "alice"))
        );
        assert_eq!(s.user(&tid("acme"), &uname("carol")).await.unwrap(), None);
        let names: Vec<String> = s
            .users(&tid("acme"))
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.name.to_string())
            .collect();
        assert_eq!(names, ["alice", "bob"]);

        s.set_password(&tid("acme"), &uname("alice"), &other_hash())
            .await
            .unwrap();
        let alice = s
            .user(&tid("acme"), &uname("alice"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(alice.password_hash, other_hash());
        assert_eq!(alice.created_at, user("acme", "alice").created_at);
        assert_eq!(
            s.set_password(&tid("acme"), &uname("carol"), &hash()).await,
            Err(AccountError::NoSuchUser {
                tenant: tid("acme"),
                user: uname("carol")
            })
        );

        assert!(s.delete_user(&tid("acme"), &uname("bob")).await.unwrap());
        assert!(!s.delete_user(&tid("acme"), &uname("bob")).await.unwrap());
        assert_eq!(s.user(&tid("acme"), &uname("bob")).await.unwrap(), None);
        assert_eq!(s.users(&tid("acme")).await.unwrap().len(), 1);
        assert_eq!(
            s.users(&tid("nobody")).await,
            Err(AccountError::NoSuchTenant(tid("nobody")))
        );
    }

    pub async fn a_user_needs_its_tenant_and_a_free_name(s: SharedAccountStore) {
        assert_eq!(
            s.create_user(&user("acme", "alice")).await,
            Err(AccountError::NoSuchTenant(tid("acme")))
        );
        s.create_tenant(&tenant("acme")).await.unwrap();
        s.create_user(&user("acme", "alice")).await.unwrap();
        let mut again = user("acme", "alice");
        again.password_hash = other_hash();
        assert_eq!(
            s.create_user(&again).await,
            Err(AccountError::UserExists {
                tenant: tid("acme"),
                user: uname("alice")
            })
        );
        let kept = s
            .user(&tid("acme"), &uname("alice"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kept.password_hash, hash(), "the first password stays");
    }

    /// User names may contain `:` (tenant ids may not): `a.b`/`c` and
    /// `a`/`b:c` are different accounts, and no tenant id can end early.
    pub async fn users_belong_to_one_tenant(s: SharedAccountStore) {
        assert!(TenantId::parse("a:b").is_err(), "tenant ids have no ':'");
        for t in ["a", "a.b", "other"] {
            s.create_tenant(&tenant(t)).await.unwrap();
        }
        s.create_user(&user("a.b", "c")).await.unwrap();
        let mut bc = user("a", "b:c");
        bc.password_hash = other_hash();
        s.create_user(&bc).await.unwrap();
        assert_eq!(
            s.user(&tid("a.b"), &uname("c"))
                .await
                .unwrap()
                .unwrap()
                .password_hash,
            hash()
        );
        assert_eq!(
            s.user(&tid("a"), &uname("b:c"))
                .await
                .unwrap()
                .unwrap()
                .password_hash,
            other_hash()
        );
        assert_eq!(s.user(&tid("other"), &uname("c")).await.unwrap(), None);
        assert_eq!(s.users(&tid("other")).await.unwrap(), vec![]);
        assert_eq!(s.users(&tid("a.b")).await.unwrap().len(), 1);

        // Attempts too are per account.
        let w = Duration::from_secs(60);
        s.count_login_attempt(&tid("a.b"), &uname("c"), w)
            .await
            .unwrap();
        let a = s
            .count_login_attempt(&tid("a"), &uname("b:c"), w)
            .await
            .unwrap();
        assert_eq!(a.count, 1);
    }

    pub async fn login_attempts_are_counted_and_cleared(s: SharedAccountStore) {
        let (t, u) = (tid("acme"), uname("alice"));
        let window = Duration::from_secs(900);
        for n in 1..=7 {
            let a = s.count_login_attempt(&t, &u, window).await.unwrap();
            assert_eq!(a.count, n);
            assert!(a.resets_in <= window, "{a:?}");
            assert!(a.resets_in > window - Duration::from_secs(60), "{a:?}");
        }
        // Another account is not affected.
        let other = s
            .count_login_attempt(&t, &uname("bob"), window)
            .await
            .unwrap();
        assert_eq!(other.count, 1);
        s.clear_login_attempts(&t, &u).await.unwrap();
        assert_eq!(
            s.count_login_attempt(&t, &u, window).await.unwrap().count,
            1
        );
        // Clearing an account with no attempts is fine.
        s.clear_login_attempts(&t, &uname("nobody")).await.unwrap();
    }

    pub async fn login_attempt_windows_end(s: SharedAccountStore) {
        let (t, u) = (tid("acme"), uname("alice"));
        let window = Duration::from_millis(300);
        assert_eq!(
            s.count_login_attempt(&t, &u, window).await.unwrap().count,
            1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A later attempt does not extend the window.
        let a = s.count_login_attempt(&t, &u, window).await.unwrap();
        assert_eq!(a.count, 2);
        assert!(a.resets_in <= Duration::from_millis(210), "{a:?}");
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(
            s.count_login_attempt(&t, &u, window).await.unwrap().count,
            1
        );
    }
}
