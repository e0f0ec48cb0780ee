//! Admin passwords: argon2id hashing with the OWASP parameters
//! (m = 19 MiB, t = 2, p = 1), constant-time verification by the `argon2`
//! crate, and the two secret-holding types, [`Password`] and
//! [`PasswordHash`], whose `Debug` says `<redacted>` and which implement
//! neither `Display` nor `Serialize`, so neither reaches a log line or a
//! response by accident.
//!
//! A hash costs about 20 MiB and tens of milliseconds of CPU, so the async
//! helpers run it on the blocking pool and at most [`MAX_CONCURRENT_HASHES`]
//! at once per process: a burst of logins queues instead of eating the
//! node's memory. A login for a user that does not exist verifies against
//! [`DUMMY_HASH`] (same parameters), so its timing does not tell whether
//! the account exists.

use std::fmt;

use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::TryRngCore;
use rand::rngs::OsRng;
use tokio::sync::Semaphore;

/// argon2 memory cost, KiB (OWASP: 19 MiB).
pub const M_COST_KIB: u32 = 19_456;
/// argon2 iterations (OWASP: 2).
pub const T_COST: u32 = 2;
/// argon2 parallelism (OWASP: 1).
pub const P_COST: u32 = 1;

/// Shortest password accepted when one is set, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest password accepted, in bytes (a bound on the work per attempt).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Password hashes computed at once per process.
pub const MAX_CONCURRENT_HASHES: usize = 4;

/// The argon2id hash of a random password nobody knows, with the same
/// parameters as real hashes: verified when the user does not exist so the
/// answer takes as long as for a real account. (A test checks that its
/// parameters match [`M_COST_KIB`], [`T_COST`], [`P_COST`].)
pub(crate) const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$wb2CsM24eesO5A3QY5evEQ$rLztfvwsHpM/CD4SATKmLbxflQVAdiy5R9T30nslWf4";

/// Hash of [`TEST_PASSWORD`], for tests that need a real, known hash
/// without paying for hashing.
#[cfg(test)]
pub(crate) const TEST_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$lsGXp6CeOmdxHnCbC8yK5A$tWivNwFYUBRfCVHUN0RLrEHQyVcbcxNu/5zj3ozr5K4";
/// The password behind [`TEST_HASH`].
#[cfg(test)]
pub(crate) const TEST_PASSWORD: &str = "correct horse battery staple";

static HASHING: Semaphore = Semaphore::const_new(MAX_CONCURRENT_HASHES);

/// Why a password could not be set or hashed. Never carries the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// Empty.
    #[error("the password is empty")]
    Empty,
    /// Shorter than [`MIN_PASSWORD_CHARS`].
    #[error("the password must be at least {MIN_PASSWORD_CHARS} characters")]
    TooShort,
    /// Longer than [`MAX_PASSWORD_BYTES`].
    #[error("the password must be at most {MAX_PASSWORD_BYTES} bytes")]
    TooLong,
    /// A stored hash is not an argon2id PHC string.
    #[error("not an argon2id password hash")]
    BadHash,
    /// Hashing failed (random source, parameters).
    #[error("password hashing failed: {0}")]
    Hashing(String),
}

/// A password as typed. `Debug` is redacted; there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a password (not checked: see [`Password::check_new`]).
    pub fn new(password: impl Into<String>) -> Password {
        Password(password.into())
    }

    /// Checks a password being set: not empty, at least
    /// [`MIN_PASSWORD_CHARS`] characters, at most [`MAX_PASSWORD_BYTES`].
    pub fn check_new(&self) -> Result<(), PasswordError> {
        if self.0.is_empty() {
            Err(PasswordError::Empty)
        } else if self.0.chars().count() < MIN_PASSWORD_CHARS {
            Err(PasswordError::TooShort)
        } else if self.0.len() > MAX_PASSWORD_BYTES {
            Err(PasswordError::TooLong)
        } else {
            Ok(())
        }
    }

    /// The bytes to hash.
    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// An argon2id PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`).
/// `Debug` is redacted; there is no `Display` and no `Serialize`.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl PasswordHash {
    /// Reads a stored PHC string; it must be argon2id.
    pub fn from_phc(phc: &str) -> Result<PasswordHash, PasswordError> {
        let parsed =
            argon2::password_hash::PasswordHash::new(phc).map_err(|_| PasswordError::BadHash)?;
        if parsed.algorithm != Algorithm::Argon2id.ident() || parsed.hash.is_none() {
            return Err(PasswordError::BadHash);
        }
        Ok(PasswordHash(phc.to_owned()))
    }

    /// The PHC string, for the stores to write. Never log it.
    pub(crate) fn as_phc(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

fn argon2() -> Result<Argon2<'static>, PasswordError> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None)
        .map_err(|e| PasswordError::Hashing(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a password with argon2id and a fresh random salt. CPU-heavy:
/// call it from a blocking context (or use [`hash_password_async`]).
pub fn hash_password(password: &Password) -> Result<PasswordHash, PasswordError> {
    if password.0.len() > MAX_PASSWORD_BYTES {
        return Err(PasswordError::TooLong);
    }
    let mut salt = [0u8; 16];
    OsRng
        .try_fill_bytes(&mut salt)
        .map_err(|e| PasswordError::Hashing(format!("random source: {e}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| PasswordError::Hashing(e.to_string()))?;
    let hash = argon2()?
        .hash_password(password.bytes(), &salt)
        .map_err(|e| PasswordError::Hashing(e.to_string()))?;
    Ok(PasswordHash(hash.to_string()))
}

/// Whether `password` matches `hash`, compared in constant time by the
/// `argon2` crate. With no hash (no such user) it verifies against
/// [`DUMMY_HASH`] and returns false, taking as long as a real check.
/// CPU-heavy: call it from a blocking context (or use
/// [`verify_password_async`]).
pub fn verify_password(password: &Password, hash: Option<&PasswordHash>) -> bool {
    let (phc, real) = match hash {
        Some(h) => (h.as_phc(), true),
        None => (DUMMY_HASH, false),
    };
    // An over-long password is checked against the dummy, never matches.
    let (phc, real) = if password.0.len() > MAX_PASSWORD_BYTES {
        (DUMMY_HASH, false)
    } else {
        (phc, real)
    };
    let Ok(parsed) = argon2::password_hash::PasswordHash::new(phc) else {
        tracing::warn!("a stored admin password hash is not a PHC string; login refused");
        return false;
    };
    // The parameters come from the stored hash; the instance's are unused.
    let Ok(argon) = argon2() else {
        return false;
    };
    let matched = argon.verify_password(password.bytes(), &parsed).is_ok();
    matched && real
}

/// [`hash_password`] on the blocking pool, at most
/// [`MAX_CONCURRENT_HASHES`] at once.
pub async fn hash_password_async(password: Password) -> Result<PasswordHash, PasswordError> {
    let _permit = HASHING
        .acquire()
        .await
        .map_err(|e| PasswordError::Hashing(e.to_string()))?;
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| PasswordError::Hashing(e.to_string()))?
}

/// [`verify_password`] on the blocking pool, at most
/// [`MAX_CONCURRENT_HASHES`] at once. False if the check could not run.
pub async fn verify_password_async(password: Password, hash: Option<PasswordHash>) -> bool {
    let Ok(_permit) = HASHING.acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || verify_password(&password, hash.as_ref()))
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params_of(phc: &str) -> (String, Params) {
        let parsed = argon2::password_hash::PasswordHash::new(phc).unwrap();
        (
            parsed.algorithm.to_string(),
            Params::try_from(&parsed).unwrap(),
        )
    }

    #[test]
    fn hashes_are_argon2id_with_the_owasp_parameters_and_verify() {
        let pw = Password::new("a long enough password");
        let h = hash_password(&pw).unwrap();
        assert!(h.as_phc().starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        let (alg, p) = params_of(h.as_phc());
        assert_eq!(alg, "argon2id");
        assert_eq!((p.m_cost(), p.t_cost(), p.p_cost()), (19_456, 2, 1));
        assert!(verify_password(&pw, Some(&h)));
        assert!(!verify_password(
            &Password::new("a long enough passwore"),
            Some(&h)
        ));
        assert!(!verify_password(&Password::new(""), Some(&h)));
        // Salted: the same password hashes differently each time.
        assert_ne!(hash_password(&pw).unwrap(), h);
        assert!(PasswordHash::from_phc(h.as_phc()).is_ok());
    }

    #[test]
    fn the_dummy_and_test_hashes_use_the_same_parameters() {
        for phc in [DUMMY_HASH, TEST_HASH] {
            let (alg, p) = params_of(phc);
            assert_eq!(alg, "argon2id");
            assert_eq!(
                (p.m_cost(), p.t_cost(), p.p_cost()),
                (M_COST_KIB, T_COST, P_COST)
            );
        }
        let test = PasswordHash::from_phc(TEST_HASH).unwrap();
        assert!(verify_password(&Password::new(TEST_PASSWORD), Some(&test)));
        // No user: always false, whatever is typed.
        assert!(!verify_password(&Password::new(TEST_PASSWORD), None));
    }

    #[test]
    fn only_argon2id_phc_strings_are_read() {
        assert_eq!(
            PasswordHash::from_phc("hunter2"),
            Err(PasswordError::BadHash)
        );
        assert_eq!(PasswordHash::from_phc(""), Err(PasswordError::BadHash));
        let argon2i = TEST_HASH.replacen("argon2id", "argon2i", 1);
        assert_eq!(
            PasswordHash::from_phc(&argon2i),
            Err(PasswordError::BadHash)
        );
    }

    #[test]
    fn new_passwords_are_checked() {
        assert_eq!(Password::new("").check_new(), Err(PasswordError::Empty));
        assert_eq!(
            Password::new("elevenchars").check_new(),
            Err(PasswordError::TooShort)
        );
        // Characters, not bytes.
        assert_eq!(
            Password::new("ééééééééééé").check_new(),
            Err(PasswordError::TooShort)
        );
        assert!(Password::new("twelve chars").check_new().is_ok());
        assert_eq!(
            Password::new("x".repeat(MAX_PASSWORD_BYTES + 1)).check_new(),
            Err(PasswordError::TooLong)
        );
        assert!(!verify_password(
            &Password::new("x".repeat(MAX_PASSWORD_BYTES + 1)),
            Some(&PasswordHash::from_phc(TEST_HASH).unwrap())
        ));
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let pw = Password::new("s3cret-Passw0rd!");
        let h = PasswordHash::from_phc(TEST_HASH).unwrap();
        let user = super::super::AdminUser {
            tenant: super::super::TenantId::parse("acme").unwrap(),
            name: super::super::UserName::parse("alice").unwrap(),
            password_hash: h.clone(),
            created_at: 1,
        };
        for text in [
            format!("{pw:?}"),
            format!("{h:?}"),
            format!("{user:?}"),
            format!("{user:#?}"),
            format!("{:?}", Some((&pw, &h))),
        ] {
            assert!(!text.contains("s3cret"), "{text}");
            assert!(!text.contains("argon2"), "{text}");
            assert!(!text.contains(TEST_HASH), "{text}");
            assert!(text.contains("redacted"), "{text}");
        }
    }

    #[tokio::test]
    async fn async_helpers_run_off_the_runtime() {
        let pw = Password::new("another long password");
        let h = hash_password_async(pw.clone()).await.unwrap();
        assert!(verify_password_async(pw, Some(h.clone())).await);
        assert!(!verify_password_async(Password::new("wrong password!"), Some(h)).await);
        assert!(!verify_password_async(Password::new("wrong password!"), None).await);
    }
}
