//! The account store of a single node (no Redis): tenants and admin users
//! in memory, persisted to `<data-dir>/accounts.json`.
//!
//! The file is what lets `pace-node admin add-user` (another process) add
//! an account while the node runs: every read first checks the file's
//! identity (inode, size, modification time) and re-reads it when it
//! changed, so the node sees the CLI's write on the next login. Writes
//! take a lock file (`accounts.json.lock`, created exclusively; one older
//! than [`STALE_LOCK`] is left over from a crash and is broken), re-read
//! the file, change it, and replace it atomically: a temporary file in the
//! same directory, mode 0600, fsynced, renamed into place. A reader sees
//! the old file or the new one, never a torn one.
//!
//! The file holds password hashes: it is created 0600 in a 0700 directory,
//! and read errors name the line and column only, never the content.
//!
//! Login attempt counters are not persisted: they live in this process
//! (one node, one process), on the monotonic clock.
//!
//! ```json
//! {
//!   "version": 1,
//!   "tenants": {
//!     "acme": {
//!       "name": "Acme",
//!       "allowed_origins": ["https://shop.acme.example"],
//!       "created_at": 1767225600,
//!       "admins": {
//!         "alice": { "password_hash": "$argon2id$v=19$…", "created_at": 1767225601 }
//!       }
//!     }
//!   }
//! }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Instant;

use super::{
    AccountError, AccountStore, AdminUser, Attempts, PasswordHash, Tenant, TenantId, UserInfo,
    UserName,
};

/// The only accounts file version this code reads and writes.
const FILE_VERSION: u32 = 1;

/// A lock file older than this is left over from a crashed writer.
pub const STALE_LOCK: Duration = Duration::from_secs(10);

/// How long a writer waits for another writer's lock.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Accounts whose attempts are tracked at once; past this, expired
/// entries are dropped, then the ones whose window ends soonest.
const MAX_TRACKED_ACCOUNTS: usize = 100_000;

/// The memory (+ file) [`AccountStore`].
pub struct MemoryAccountStore {
    inner: Arc<Inner>,
    /// Login attempts per account (`tenant/user`): count and window end.
    attempts: Mutex<HashMap<String, (u32, Instant)>>,
    /// Added to the clock: tests move time forward.
    #[cfg(test)]
    skew: Mutex<Duration>,
}

struct Inner {
    /// `None`: memory only (tests, throwaway nodes).
    path: Option<PathBuf>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    data: AccountsFile,
    /// Identity of the file `data` was read from (`None`: no file yet).
    seen: Option<Stamp>,
}

/// What tells one version of the file from another: a rename gives a new
/// inode, so even two writes in the same clock tick differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        Stamp {
            inode,
            len: meta.len(),
            modified: meta.modified().ok(),
        }
    }
}

// No `Debug` derives below: the records hold password hashes.
#[derive(Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountsFile {
    version: u32,
    tenants: BTreeMap<String, TenantRecord>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantRecord {
    name: String,
    #[serde(default)]
    allowed_origins: Vec<String>,
    created_at: u64,
    #[serde(default)]
    admins: BTreeMap<String, UserRecord>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserRecord {
    password_hash: String,
    created_at: u64,
}

impl std::fmt::Debug for MemoryAccountStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryAccountStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl MemoryAccountStore {
    /// A store persisted to `path` (normally `<data-dir>/accounts.json`).
    /// Nothing is read or created until first used; a missing file is an
    /// empty store.
    pub fn open(path: impl Into<PathBuf>) -> MemoryAccountStore {
        MemoryAccountStore::with_path(Some(path.into()))
    }

    /// A store that lives only in this process.
    pub fn in_memory() -> MemoryAccountStore {
        MemoryAccountStore::with_path(None)
    }

    fn with_path(path: Option<PathBuf>) -> MemoryAccountStore {
        MemoryAccountStore {
            inner: Arc::new(Inner {
                path,
                state: Mutex::new(State::default()),
            }),
            attempts: Mutex::default(),
            #[cfg(test)]
            skew: Mutex::default(),
        }
    }

    fn now(&self) -> Instant {
        let now = Instant::now();
        #[cfg(test)]
        let now = now + *self.skew.lock().unwrap_or_else(|p| p.into_inner());
        now
    }

    /// Moves this store's clock forward.
    #[cfg(test)]
    fn advance(&self, by: Duration) {
        *self.skew.lock().unwrap() += by;
    }

    /// Runs `f` on the blocking pool (it may read or write the file).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, AccountError> + Send + 'static,
    ) -> Result<T, AccountError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| AccountError::Unavailable(format!("account store task failed: {e}")))?
    }
}

fn io_error(path: &Path, what: &str, e: &io::Error) -> AccountError {
    AccountError::Unavailable(format!("{what} {}: {e}", path.display()))
}

fn corrupt(path: &Path, what: String) -> AccountError {
    AccountError::Unavailable(format!(
        "accounts file {} is invalid: {what}",
        path.display()
    ))
}

impl Inner {
    /// Reads the current data (re-reading the file if it changed) and
    /// hands it to `f`.
    fn read<T>(&self, f: impl FnOnce(&AccountsFile) -> T) -> Result<T, AccountError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh(&mut state)?;
        Ok(f(&state.data))
    }

    /// Changes the data and writes it back, under the lock file.
    fn update<T>(
        &self,
        f: impl FnOnce(&mut AccountsFile) -> Result<T, AccountError>,
    ) -> Result<T, AccountError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(path) = &self.path else {
            let mut data = state.data.clone();
            let out = f(&mut data)?;
            state.data = data;
            return Ok(out);
        };
        create_dir(path)?;
        let _lock = FileLock::acquire(path)?;
        self.refresh(&mut state)?;
        let mut data = state.data.clone();
        let out = f(&mut data)?;
        data.version = FILE_VERSION;
        write_atomically(path, &data)?;
        let meta = fs::metadata(path).map_err(|e| io_error(path, "cannot stat", &e))?;
        state.seen = Some(Stamp::of(&meta));
        state.data = data;
        Ok(out)
    }

    /// Re-reads the file if it is not the one `state` was read from.
    fn refresh(&self, state: &mut State) -> Result<(), AccountError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                state.data = AccountsFile::default();
                state.seen = None;
                return Ok(());
            }
            Err(e) => return Err(io_error(path, "cannot open accounts file", &e)),
        };
        // Stat the open file, so the stamp and the content belong together
        // even if the file is replaced meanwhile.
        let meta = file
            .metadata()
            .map_err(|e| io_error(path, "cannot stat", &e))?;
        let stamp = Stamp::of(&meta);
        if state.seen == Some(stamp) {
            return Ok(());
        }
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(|e| io_error(path, "cannot read accounts file", &e))?;
        state.data = parse(path, &text)?;
        state.seen = Some(stamp);
        tracing::debug!(path = %path.display(), tenants = state.data.tenants.len(), "accounts file (re)loaded");
        Ok(())
    }
}

/// Parses and checks the file. Errors give the position only: a message
/// from serde may quote a value, and values here include hashes.
fn parse(path: &Path, text: &str) -> Result<AccountsFile, AccountError> {
    let data: AccountsFile = serde_json::from_str(text).map_err(|e| {
        corrupt(
            path,
            format!(
                "{:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ),
        )
    })?;
    if data.version != FILE_VERSION {
        return Err(corrupt(
            path,
            format!("version {} (this build reads {FILE_VERSION})", data.version),
        ));
    }
    for (id, t) in &data.tenants {
        TenantId::parse(id).map_err(|e| corrupt(path, e.to_string()))?;
        for (name, u) in &t.admins {
            UserName::parse(name).map_err(|e| corrupt(path, format!("tenant {id}: {e}")))?;
            PasswordHash::from_phc(&u.password_hash).map_err(|_| {
                corrupt(
                    path,
                    format!("tenant {id} user {name}: password_hash is not argon2id"),
                )
            })?;
        }
    }
    Ok(data)
}

/// Creates the data directory (0700) if needed.
fn create_dir(path: &Path) -> Result<(), AccountError> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| io_error(dir, "cannot create data directory", &e))
}

/// Writes `data` to a 0600 temporary file beside `path`, fsyncs it and
/// renames it over `path`.
fn write_atomically(path: &Path, data: &AccountsFile) -> Result<(), AccountError> {
    let mut json = serde_json::to_string_pretty(data)
        .map_err(|e| AccountError::Unavailable(format!("cannot encode accounts: {e}")))?;
    json.push('\n');
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "accounts.json".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(json.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| io_error(path, "cannot write accounts file", &e))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// An exclusive lock on the accounts file between processes: the lock
/// file exists while held and is removed on drop.
struct FileLock(PathBuf);

impl FileLock {
    fn acquire(path: &Path) -> Result<FileLock, AccountError> {
        let mut lock = path.as_os_str().to_owned();
        lock.push(".lock");
        let lock = PathBuf::from(lock);
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            match options.open(&lock) {
                Ok(mut f) => {
                    let _ = writeln!(f, "{}", std::process::id());
                    return Ok(FileLock(lock));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let age = fs::metadata(&lock)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|m| m.elapsed().ok());
                    if age.is_some_and(|a| a > STALE_LOCK) {
                        tracing::warn!(lock = %lock.display(), "breaking a stale accounts lock file");
                        let _ = fs::remove_file(&lock);
                        continue;
                    }
                    if std::time::Instant::now() >= deadline {
                        return Err(AccountError::Unavailable(format!(
                            "accounts file is locked by another process ({}); retry, or remove \
                             the lock file if no pace-node is writing",
                            lock.display()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(io_error(&lock, "cannot create lock file", &e)),
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn tenant_of(id: &str, r: &TenantRecord) -> Option<Tenant> {
    Some(Tenant {
        id: TenantId::parse(id).ok()?,
        name: r.name.clone(),
        allowed_origins: r.allowed_origins.clone(),
        created_at: r.created_at,
    })
}

fn attempts_key(tenant: &TenantId, user: &UserName) -> String {
    // `/` is outside the id charset: no two accounts share a key.
    format!("{tenant}/{user}")
}

#[async_trait]
impl AccountStore for MemoryAccountStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn create_tenant(&self, tenant: &Tenant) -> Result<(), AccountError> {
        let t = tenant.clone();
        self.blocking(move |inner| {
            inner.update(|data| {
                if data.tenants.contains_key(t.id.as_str()) {
                    return Err(AccountError::TenantExists(t.id.clone()));
                }
                data.tenants.insert(
                    t.id.to_string(),
                    TenantRecord {
                        name: t.name.clone(),
                        allowed_origins: t.allowed_origins.clone(),
                        created_at: t.created_at,
                        admins: BTreeMap::new(),
                    },
                );
                Ok(())
            })
        })
        .await
    }

    async fn update_tenant(&self, tenant: &Tenant) -> Result<(), AccountError> {
        let t = tenant.clone();
        self.blocking(move |inner| {
            inner.update(|data| {
                let r = data
                    .tenants
                    .get_mut(t.id.as_str())
                    .ok_or_else(|| AccountError::NoSuchTenant(t.id.clone()))?;
                r.name = t.name.clone();
                r.allowed_origins = t.allowed_origins.clone();
                Ok(())
            })
        })
        .await
    }

    async fn tenant(&self, id: &TenantId) -> Result<Option<Tenant>, AccountError> {
        let id = id.clone();
        self.blocking(move |inner| {
            inner.read(|data| {
                data.tenants
                    .get(id.as_str())
                    .and_then(|r| tenant_of(id.as_str(), r))
            })
        })
        .await
    }

    async fn tenants(&self) -> Result<Vec<Tenant>, AccountError> {
        self.blocking(|inner| {
            inner.read(|data| {
                data.tenants
                    .iter()
                    .filter_map(|(id, r)| tenant_of(id, r))
                    .collect()
            })
        })
        .await
    }

    async fn create_user(&self, user: &AdminUser) -> Result<(), AccountError> {
        let u = user.clone();
        self.blocking(move |inner| {
            inner.update(|data| {
                let t = data
                    .tenants
                    .get_mut(u.tenant.as_str())
                    .ok_or_else(|| AccountError::NoSuchTenant(u.tenant.clone()))?;
                if t.admins.contains_key(u.name.as_str()) {
                    return Err(AccountError::UserExists {
                        tenant: u.tenant.clone(),
                        user: u.name.clone(),
                    });
                }
                t.admins.insert(
                    u.name.to_string(),
                    UserRecord {
                        password_hash: u.password_hash.as_phc().to_owned(),
                        created_at: u.created_at,
                    },
                );
                Ok(())
            })
        })
        .await
    }

    async fn set_password(
        &self,
        tenant: &TenantId,
        user: &UserName,
        hash: &PasswordHash,
    ) -> Result<(), AccountError> {
        let (tenant, user, hash) = (tenant.clone(), user.clone(), hash.clone());
        self.blocking(move |inner| {
            inner.update(|data| {
                let r = data
                    .tenants
                    .get_mut(tenant.as_str())
                    .and_then(|t| t.admins.get_mut(user.as_str()))
                    .ok_or_else(|| AccountError::NoSuchUser {
                        tenant: tenant.clone(),
                        user: user.clone(),
                    })?;
                r.password_hash = hash.as_phc().to_owned();
                Ok(())
            })
        })
        .await
    }

    async fn user(
        &self,
        tenant: &TenantId,
        user: &UserName,
    ) -> Result<Option<AdminUser>, AccountError> {
        let (tenant, user) = (tenant.clone(), user.clone());
        self.blocking(move |inner| {
            let record = inner.read(|data| {
                data.tenants
                    .get(tenant.as_str())
                    .and_then(|t| t.admins.get(user.as_str()))
                    .map(|r| (r.password_hash.clone(), r.created_at))
            })?;
            let Some((phc, created_at)) = record else {
                return Ok(None);
            };
            // Checked when the file was read.
            let password_hash = PasswordHash::from_phc(&phc).map_err(|_| {
                AccountError::Unavailable(format!(
                    "stored password hash of {user} in tenant {tenant} is not argon2id"
                ))
            })?;
            Ok(Some(AdminUser {
                tenant,
                name: user,
                password_hash,
                created_at,
            }))
        })
        .await
    }

    async fn users(&self, tenant: &TenantId) -> Result<Vec<UserInfo>, AccountError> {
        let tenant = tenant.clone();
        self.blocking(move |inner| {
            inner
                .read(|data| {
                    data.tenants.get(tenant.as_str()).map(|t| {
                        t.admins
                            .iter()
                            .filter_map(|(name, r)| {
                                Some(UserInfo {
                                    name: UserName::parse(name).ok()?,
                                    created_at: r.created_at,
                                })
                            })
                            .collect()
                    })
                })?
                .ok_or(AccountError::NoSuchTenant(tenant))
        })
        .await
    }

    async fn delete_user(&self, tenant: &TenantId, user: &UserName) -> Result<bool, AccountError> {
        let (tenant, user) = (tenant.clone(), user.clone());
        self.blocking(move |inner| {
            inner.update(|data| {
                Ok(data
                    .tenants
                    .get_mut(tenant.as_str())
                    .and_then(|t| t.admins.remove(user.as_str()))
                    .is_some())
            })
        })
        .await
    }

    async fn count_login_attempt(
        &self,
        tenant: &TenantId,
        user: &UserName,
        window: Duration,
    ) -> Result<Attempts, AccountError> {
        let now = self.now();
        let mut map = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        let key = attempts_key(tenant, user);
        if !map.contains_key(&key) && map.len() >= MAX_TRACKED_ACCOUNTS {
            map.retain(|_, (_, end)| *end > now);
            if map.len() >= MAX_TRACKED_ACCOUNTS
                && let Some(first) = map
                    .iter()
                    .min_by_key(|(_, (_, end))| *end)
                    .map(|(k, _)| k.clone())
            {
                map.remove(&first);
            }
        }
        let entry = map.entry(key).or_insert((0, now + window));
        if entry.1 <= now {
            *entry = (0, now + window);
        }
        entry.0 = entry.0.saturating_add(1);
        Ok(Attempts {
            count: entry.0,
            resets_in: entry.1.saturating_duration_since(now),
        })
    }

    async fn clear_login_attempts(
        &self,
        tenant: &TenantId,
        user: &UserName,
    ) -> Result<(), AccountError> {
        self.attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&attempts_key(tenant, user));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::SharedAccountStore;
    use super::super::conformance::{
        account_conformance, hash, other_hash, tenant, tid, uname, user,
    };
    use super::*;

    async fn setup(_name: &str) -> ((), SharedAccountStore) {
        ((), Arc::new(MemoryAccountStore::in_memory()))
    }

    mod in_memory {
        use super::*;
        account_conformance!(setup);
    }

    async fn setup_file(_name: &str) -> (tempfile::TempDir, SharedAccountStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = MemoryAccountStore::open(dir.path().join("data/accounts.json"));
        (dir, Arc::new(store))
    }

    mod with_a_file {
        use super::*;
        account_conformance!(setup_file);
    }

    #[tokio::test]
    async fn the_file_is_private_and_another_instance_sees_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/accounts.json");
        let cli = MemoryAccountStore::open(&path);
        let node = MemoryAccountStore::open(&path);
        // The node reads first (no file yet): empty.
        assert!(node.tenants().await.unwrap().is_empty());

        cli.create_tenant(&tenant("acme")).await.unwrap();
        cli.create_user(&user("acme", "alice")).await.unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
            let dmode = fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(dmode & 0o777, 0o700, "{dmode:o}");
        }
        // The running node picks the CLI's write up without a restart.
        assert_eq!(
            node.user(&tid("acme"), &uname("alice")).await.unwrap(),
            Some(user("acme", "alice"))
        );
        // Several writes within one clock tick are all seen.
        for i in 0..5 {
            cli.create_user(&user("acme", &format!("u{i}")))
                .await
                .unwrap();
            assert_eq!(node.users(&tid("acme")).await.unwrap().len(), 2 + i);
        }
        // And the other way round: a write by the node after the CLI's
        // keeps both.
        node.set_password(&tid("acme"), &uname("alice"), &other_hash())
            .await
            .unwrap();
        assert_eq!(cli.users(&tid("acme")).await.unwrap().len(), 6);
        assert_eq!(
            cli.user(&tid("acme"), &uname("alice"))
                .await
                .unwrap()
                .unwrap()
                .password_hash,
            other_hash()
        );
        // No temporary or lock files left behind.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["accounts.json"]);
        // The file holds the hash; a fresh instance reads it back.
        let fresh = MemoryAccountStore::open(&path);
        assert_eq!(
            fresh
                .user(&tid("acme"), &uname("u0"))
                .await
                .unwrap()
                .unwrap()
                .password_hash,
            hash()
        );
    }

    #[tokio::test]
    async fn a_damaged_file_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts.json");
        let hash = super::super::password::TEST_HASH;
        // A hash where a number belongs: serde would quote it.
        fs::write(
            &path,
            format!(r#"{{"version":1,"tenants":{{"acme":{{"name":"A","created_at":"{hash}"}}}}}}"#),
        )
        .unwrap();
        let store = MemoryAccountStore::open(&path);
        let err = store.tenants().await.unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(!err.contains("argon2"), "{err}");
        // A bad id or hash.
        fs::write(
            &path,
            r#"{"version":1,"tenants":{"a b":{"name":"A","created_at":1}}}"#,
        )
        .unwrap();
        assert!(store.tenants().await.is_err());
        fs::write(
            &path,
            r#"{"version":1,"tenants":{"a":{"name":"A","created_at":1,"admins":{"u":{"password_hash":"plain","created_at":1}}}}}"#,
        )
        .unwrap();
        let err = store.tenants().await.unwrap_err().to_string();
        assert!(
            err.contains("not argon2id") && !err.contains("plain"),
            "{err}"
        );
        // Repaired: readable again.
        fs::write(&path, r#"{"version":1,"tenants":{}}"#).unwrap();
        assert!(store.tenants().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_stale_lock_is_broken_a_fresh_one_waits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts.json");
        let lock = dir.path().join("accounts.json.lock");
        let store = MemoryAccountStore::open(&path);
        fs::write(&lock, "1").unwrap();
        let old = SystemTime::now() - STALE_LOCK - Duration::from_secs(1);
        File::options()
            .write(true)
            .open(&lock)
            .unwrap()
            .set_modified(old)
            .unwrap();
        store.create_tenant(&tenant("acme")).await.unwrap();
        assert!(!lock.exists());

        // A live lock: the writer waits for it.
        fs::write(&lock, "1").unwrap();
        let release = {
            let lock = lock.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                fs::remove_file(lock).unwrap();
            })
        };
        let started = std::time::Instant::now();
        store.create_tenant(&tenant("zeta")).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(150));
        release.join().unwrap();
        assert_eq!(store.tenants().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn attempt_windows_follow_the_clock() {
        let s = MemoryAccountStore::in_memory();
        let (t, u) = (tid("acme"), uname("alice"));
        let window = Duration::from_secs(15 * 60);
        for n in 1..=5 {
            assert_eq!(
                s.count_login_attempt(&t, &u, window).await.unwrap().count,
                n
            );
        }
        s.advance(Duration::from_secs(14 * 60));
        let a = s.count_login_attempt(&t, &u, window).await.unwrap();
        assert_eq!(a.count, 6);
        assert!(
            a.resets_in <= Duration::from_secs(60) && a.resets_in > Duration::from_secs(55),
            "{a:?}"
        );
        s.advance(Duration::from_secs(60));
        assert_eq!(
            s.count_login_attempt(&t, &u, window).await.unwrap().count,
            1
        );
    }

    #[tokio::test]
    async fn tracked_accounts_are_bounded() {
        let s = MemoryAccountStore::in_memory();
        let t = tid("acme");
        // Long enough that no entry expires while 100,000 are inserted on
        // a slow machine; the clock is then advanced past it.
        let short = Duration::from_secs(3600);
        for i in 0..MAX_TRACKED_ACCOUNTS {
            s.count_login_attempt(&t, &uname(&format!("u{i}")), short)
                .await
                .unwrap();
        }
        assert_eq!(s.attempts.lock().unwrap().len(), MAX_TRACKED_ACCOUNTS);
        // Full of live entries: the one ending soonest makes room.
        s.count_login_attempt(&t, &uname("x"), Duration::from_secs(7200))
            .await
            .unwrap();
        assert_eq!(s.attempts.lock().unwrap().len(), MAX_TRACKED_ACCOUNTS);
        // Expired entries are dropped first.
        s.advance(Duration::from_secs(3601));
        s.count_login_attempt(&t, &uname("y"), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(s.attempts.lock().unwrap().len(), 2);
    }
}
