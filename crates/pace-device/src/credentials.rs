//! The device's token, kept in a file next to its device id file, and the
//! decision to register, refresh or reuse it.
//!
//! - [`TokenStore`]: the file (JSON with the device id, the token, its
//!   expiry and when it was obtained), written atomically (a temporary file
//!   renamed into place) with mode 0600 on Unix.
//! - [`ensure_token`]: at start: reuse the stored token, refresh it when it
//!   is close to expiry (or expired: the node accepts an expired token of
//!   its own for a refresh), register when there is none.
//! - [`Credentials`]: the device's description and its store, given to
//!   [`Config::with_credentials`] so the client renews the token by itself
//!   when a handshake refuses it.
//!
//! A fresh install whose device id is already registered (the id file was
//! copied from another machine, or the token file was lost) gets
//! [`CredentialsError::Taken`]: the node will not hand the id over, and no
//! new id is made silently.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pace_protocol::DeviceId;
use serde::{Deserialize, Serialize};

use crate::config::{Config, valid_token};
use crate::register::{DeviceInfo, RegisterError, Registration, register};

/// Default of [`Credentials::renew_before`]: 7 days.
pub const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A device token as stored in the token file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    /// The device it was issued for.
    pub device_id: DeviceId,
    /// The token.
    pub token: String,
    /// Its expiry, Unix seconds.
    pub expires_at: u64,
    /// When it was obtained, Unix seconds (0 when unknown).
    #[serde(default)]
    pub obtained_at: u64,
}

impl std::fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredToken")
            .field("device_id", &self.device_id)
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("obtained_at", &self.obtained_at)
            .finish()
    }
}

impl StoredToken {
    /// The token of a registration, obtained at `now`.
    pub fn from_registration(r: &Registration, now: u64) -> StoredToken {
        StoredToken {
            device_id: r.device_id.clone(),
            token: r.token.clone(),
            expires_at: r.expires_at,
            obtained_at: now,
        }
    }

    /// Whether to refresh at `now`: expired, or within `renew_before` of
    /// its expiry — or within half its lifetime, when that is shorter (a
    /// node issuing short tokens would otherwise see a refresh at every
    /// start).
    pub fn needs_renewal(&self, renew_before: Duration, now: u64) -> bool {
        let lifetime = self.expires_at.saturating_sub(self.obtained_at);
        let mut window = renew_before.as_secs();
        if self.obtained_at > 0 && lifetime > 0 {
            window = window.min(lifetime / 2);
        }
        now.saturating_add(window) >= self.expires_at
    }
}

/// Why the token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenStoreError {
    /// Reading or writing it failed.
    #[error("device token file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// It holds something else than a stored token.
    #[error("device token file {path} is not a stored token ({reason}); fix or remove it")]
    Invalid {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// The file keeping a device's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenStore {
    path: PathBuf,
}

impl TokenStore {
    /// A store at `path`.
    pub fn new(path: impl Into<PathBuf>) -> TokenStore {
        TokenStore { path: path.into() }
    }

    /// The store next to a device id file: `<id file>.token`
    /// (`pace-device-id` → `pace-device-id.token`).
    pub fn next_to(id_file: &Path) -> TokenStore {
        let mut name = id_file.as_os_str().to_owned();
        name.push(".token");
        TokenStore::new(name)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> TokenStoreError {
        TokenStoreError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// The stored token, `None` when there is no file.
    pub fn load(&self) -> Result<Option<StoredToken>, TokenStoreError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        let stored: StoredToken =
            serde_json::from_str(&text).map_err(|e| TokenStoreError::Invalid {
                path: self.path.display().to_string(),
                reason: e.to_string(),
            })?;
        Ok(Some(stored))
    }

    /// Writes `token` atomically (a temporary file in the same directory,
    /// synced, renamed over the old one), readable by the owner only on
    /// Unix (mode 0600). Creates the directory if needed.
    pub fn save(&self, token: &StoredToken) -> Result<(), TokenStoreError> {
        let io = |e| self.io(e);
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map(Path::to_path_buf);
        if let Some(dir) = &dir {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let mut tmp = self.path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        // A leftover from a crash may have other permissions: start afresh.
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut json = serde_json::to_vec(token).map_err(|e| io(std::io::Error::other(e)))?;
        json.push(b'\n');
        let written = (|| {
            let mut f = options.open(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io(e));
        }
        // The rename itself survives a crash once the directory is synced
        // (best effort: not every platform can open a directory).
        #[cfg(unix)]
        if let Ok(d) = fs::File::open(dir.as_deref().unwrap_or(Path::new("."))) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Deletes the file (nothing if there is none).
    pub fn remove(&self) -> Result<(), TokenStoreError> {
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(e)),
        }
    }
}

/// What the client needs to get a device token by itself: how the device
/// describes itself and where its token is kept.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Credentials {
    /// Sent with every registration and refresh.
    pub info: DeviceInfo,
    /// Where the token is kept.
    pub store: TokenStore,
    /// [`ensure_token`] refreshes a stored token this long before it
    /// expires (at most half its lifetime before). Default 7 days.
    pub renew_before: Duration,
}

impl Credentials {
    /// Credentials with the default renewal window.
    pub fn new(info: DeviceInfo, store: TokenStore) -> Credentials {
        Credentials {
            info,
            store,
            renew_before: DEFAULT_RENEW_BEFORE,
        }
    }
}

/// Where a token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Obtained {
    /// The token file, unchanged.
    Stored,
    /// A new registration (HTTP 201).
    Registered,
    /// A refresh with the previous token (HTTP 200).
    Refreshed,
}

impl std::fmt::Display for Obtained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Obtained::Stored => "stored",
            Obtained::Registered => "registered",
            Obtained::Refreshed => "refreshed",
        })
    }
}

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The token file cannot be read.
    #[error(transparent)]
    Store(#[from] TokenStoreError),
    /// The node issued a token but it could not be written: it is in
    /// `token` (use it, and fix the file: the next refresh needs it).
    #[error(
        "a token was issued but not saved ({source}); the device can connect now, but fix the file: the next refresh needs this token"
    )]
    NotSaved {
        /// The token issued.
        token: StoredToken,
        /// How it was issued.
        obtained: Obtained,
        /// What went wrong.
        source: TokenStoreError,
    },
    /// The token file holds another device's token.
    #[error(
        "device token file {path} holds the token of device {stored}, not {expected}; use another token file for this device id"
    )]
    OtherDevice {
        /// The file.
        path: String,
        /// The device its token is for.
        stored: DeviceId,
        /// The device asking.
        expected: DeviceId,
    },
    /// The device id is registered on the cluster and this device holds no
    /// token that proves it is that device: a copied device id file, a lost
    /// token file, or a token no longer current.
    #[error(
        "device id {device_id} is already registered on this cluster and {} ({message}); restore this device's token file, have an admin remove the registration, or use a new device id",
        taken_detail(.had_token, .path)
    )]
    Taken {
        /// The device id.
        device_id: DeviceId,
        /// The token file.
        path: String,
        /// Whether a token was tried (and refused) first.
        had_token: bool,
        /// The node's message.
        message: String,
    },
    /// Registration failed otherwise ([`RegisterError::is_retryable`] says
    /// whether to try again later).
    #[error(transparent)]
    Register(#[from] RegisterError),
}

/// The middle of [`CredentialsError::Taken`]'s message.
fn taken_detail(had_token: &bool, path: &str) -> String {
    if *had_token {
        format!("the token in {path} is not its current token")
    } else {
        format!("no token for it is stored in {path}")
    }
}

impl CredentialsError {
    /// Whether trying again later may work (the node was unreachable or
    /// busy).
    pub fn is_retryable(&self) -> bool {
        matches!(self, CredentialsError::Register(e) if e.is_retryable())
    }
}

/// The token to connect with, as of now:
///
/// - a stored token for this device that is not close to expiry: used as
///   is, without asking the node ([`Obtained::Stored`]);
/// - a stored token close to expiry or expired: refreshed with it
///   ([`Obtained::Refreshed`]; if the node cannot be reached and the token
///   has not expired yet, it is used as is);
/// - no stored token: the device registers ([`Obtained::Registered`]).
///
/// A token the node does not recognise as its own (forged, corrupted, or
/// signed with keys the cluster no longer has) is replaced by a new
/// registration when the id is free; when the id is registered the answer
/// is [`CredentialsError::Taken`] — never a new device id. Every new token
/// is saved in `creds.store`.
pub async fn ensure_token(
    config: &Config,
    creds: &Credentials,
) -> Result<(StoredToken, Obtained), CredentialsError> {
    let now = unix_now();
    let stored = creds.store.load()?;
    match stored {
        Some(s) if s.device_id != config.device_id => Err(CredentialsError::OtherDevice {
            path: creds.store.path().display().to_string(),
            stored: s.device_id,
            expected: config.device_id.clone(),
        }),
        Some(s) if !s.needs_renewal(creds.renew_before, now) => Ok((s, Obtained::Stored)),
        Some(s) => match renew(config, creds, Some(&s.token)).await {
            Err(e) if e.is_retryable() && now < s.expires_at => {
                tracing::warn!(error = %e, expires_at = s.expires_at, "device token not refreshed; using the stored one until it expires");
                Ok((s, Obtained::Stored))
            }
            other => other,
        },
        None => renew(config, creds, None).await,
    }
}

/// Gets a new token: a refresh with `current` when given (falling back to
/// a new registration when the node does not recognise it as its own), a
/// new registration otherwise; saves it in the store.
pub(crate) async fn renew(
    config: &Config,
    creds: &Credentials,
    current: Option<&str>,
) -> Result<(StoredToken, Obtained), CredentialsError> {
    let taken = |message: String, had_token: bool| CredentialsError::Taken {
        device_id: config.device_id.clone(),
        path: creds.store.path().display().to_string(),
        had_token,
        message,
    };
    // A token no header can carry (a corrupted file) cannot refresh: it
    // counts as a token the node would not recognise.
    let had_token = current.is_some();
    let current = current.filter(|t| valid_token(t));
    let registration = match current {
        Some(token) => match register(config, &creds.info, Some(token)).await {
            Ok(r) => r,
            Err(RegisterError::Taken { message }) => return Err(taken(message, true)),
            Err(RegisterError::Invalid { message }) => {
                tracing::warn!(%message, "the node does not recognise the device token; registering anew");
                match register(config, &creds.info, None).await {
                    Ok(r) => r,
                    Err(RegisterError::Taken { message }) => return Err(taken(message, true)),
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        },
        None => match register(config, &creds.info, None).await {
            Ok(r) => r,
            Err(RegisterError::Taken { message }) => return Err(taken(message, had_token)),
            Err(e) => return Err(e.into()),
        },
    };
    let obtained = if registration.refreshed {
        Obtained::Refreshed
    } else {
        Obtained::Registered
    };
    let token = StoredToken::from_registration(&registration, unix_now());
    match creds.store.save(&token) {
        Ok(()) => Ok((token, obtained)),
        Err(source) => Err(CredentialsError::NotSaved {
            token,
            obtained,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(expires_at: u64, obtained_at: u64) -> StoredToken {
        StoredToken {
            device_id: DeviceId::parse("linux_1").unwrap(),
            token: "t.o.k".into(),
            expires_at,
            obtained_at,
        }
    }

    #[test]
    fn renewal_window() {
        let day = 24 * 3600;
        let week = Duration::from_secs(7 * day);
        let t = token(100 * day, 70 * day);
        assert!(!t.needs_renewal(week, 92 * day));
        assert!(t.needs_renewal(week, 93 * day));
        assert!(t.needs_renewal(week, 200 * day), "expired");
        // A one-minute token is refreshed after half its life, not always.
        let short = token(1_060, 1_000);
        assert!(!short.needs_renewal(week, 1_010));
        assert!(short.needs_renewal(week, 1_030));
        // Unknown lifetime: the plain window.
        assert!(token(1_000, 0).needs_renewal(week, 10));
    }

    #[test]
    fn the_store_round_trips_atomically_and_privately() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::next_to(&dir.path().join("sub/pace-device-id"));
        assert!(store.path().ends_with("sub/pace-device-id.token"));
        assert_eq!(store.load().unwrap(), None);
        store.save(&token(5, 1)).unwrap();
        assert_eq!(store.load().unwrap(), Some(token(5, 1)));
        store.save(&token(9, 2)).unwrap();
        assert_eq!(store.load().unwrap(), Some(token(9, 2)));
        let mut tmp = store.path().as_os_str().to_owned();
        tmp.push(".tmp");
        assert!(!Path::new(&tmp).exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(store.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!format!("{:?}", token(1, 1)).contains("t.o.k"));
        store.remove().unwrap();
        store.remove().unwrap();
        assert_eq!(store.load().unwrap(), None);
    }

    #[test]
    fn a_corrupt_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path().join("t"));
        fs::write(store.path(), "garbage").unwrap();
        assert!(matches!(store.load(), Err(TokenStoreError::Invalid { .. })));
    }
}
