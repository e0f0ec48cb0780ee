//! The admission key set: every key in the key file (Ed25519 for `EdDSA`,
//! P-256 for `ES256`), which one signs now, and the operator actions on the
//! file (generate, list, retire, export the public PEMs, create on first
//! run).
//!
//! Loading checks every key (seed length, public key matches, unique kid), so
//! a node with a damaged key file refuses to start instead of publishing or
//! signing with a wrong key.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

use super::jwks::{Jwks, PublicJwk};
use super::keyfile::{self, FILE_VERSION, KeyFile, KeyRecord, WriteMode};
use super::p256key;
use super::{DEFAULT_ISSUER, DEFAULT_LEEWAY, unix_now};
use crate::key_alg::KeyAlg;

/// Why a key file could not be read, written or changed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read (missing, permissions).
    #[error("cannot read admission key file {path}: {source}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file is not a key file (bad JSON, unknown field, wrong types).
    #[error("admission key file {path} is not a valid key file: {source}")]
    Parse {
        /// The key file.
        path: PathBuf,
        /// Where and what (line and column are in the message).
        #[source]
        source: serde_json::Error,
    },
    /// The file declares a format version this build does not know.
    #[error(
        "admission key file {path} has version {version}; this build reads version {FILE_VERSION}"
    )]
    UnsupportedVersion {
        /// The key file.
        path: PathBuf,
        /// The version found.
        version: u32,
    },
    /// The file holds no key at all.
    #[error("admission key file {path} holds no keys; run `pace-node keys generate --out {path}`")]
    Empty {
        /// The key file.
        path: PathBuf,
    },
    /// One key is unusable.
    #[error("admission key file {path}: key {kid:?}: {reason}")]
    InvalidKey {
        /// The key file.
        path: PathBuf,
        /// The key's id as written in the file.
        kid: String,
        /// What is wrong (never the secret itself).
        reason: String,
    },
    /// Two keys share a kid, so a verifier could not tell them apart.
    #[error("admission key file {path}: kid {kid:?} appears more than once")]
    DuplicateKid {
        /// The key file.
        path: PathBuf,
        /// The repeated kid.
        kid: String,
    },
    /// The file could not be written.
    #[error("cannot write admission key file {path}: {source}")]
    Write {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The operating system's random source failed.
    #[error("cannot generate an admission key: the OS random source failed: {0}")]
    Random(String),
    /// `retire` named a kid that is not in the file.
    #[error("admission key file {path} has no key {kid:?}")]
    NoSuchKid {
        /// The key file.
        path: PathBuf,
        /// The kid asked for.
        kid: String,
    },
    /// `retire` would leave the node unable to sign.
    #[error("refusing to retire key {kid:?}: {reason}")]
    RetireRefused {
        /// The kid asked for.
        kid: String,
        /// Why.
        reason: String,
    },
    /// The node is to sign with an algorithm no key of the file has.
    #[error(
        "admission key file {path} has no {alg} key that can sign; add one with \
         `pace-node keys generate --alg {alg} --out {path}`"
    )]
    NoKeyForAlg {
        /// The key file.
        path: PathBuf,
        /// The algorithm asked for.
        alg: KeyAlg,
    },
}

/// One loaded key pair.
#[derive(Clone)]
pub(crate) struct LoadedKey {
    pub(crate) kid: String,
    pub(crate) alg: KeyAlg,
    pub(crate) created_at: u64,
    pub(crate) active_from: u64,
    /// Public key, base64url, as published (P-256: the point's x).
    pub(crate) x: String,
    /// P-256 only: the point's y, base64url.
    pub(crate) y: Option<String>,
    /// P-256 only: the public key as an SPKI PEM (for the gateways).
    pub(crate) public_pem: Option<String>,
    pub(crate) encoding: EncodingKey,
    pub(crate) decoding: DecodingKey,
}

/// All admission keys of this node: the newest active key signs, every key
/// verifies and is published in the JWKS.
///
/// Cheap to share behind an `Arc`; immutable once loaded (a node picks up a
/// changed key file on restart).
#[derive(Clone)]
pub struct KeySet {
    /// Newest first: by `created_at`, ties broken by later position in the
    /// file.
    pub(crate) keys: Vec<LoadedKey>,
    /// Only keys of this algorithm sign (`--admission-alg`); `None`: the
    /// newest active key signs whatever its algorithm. Every key verifies.
    pub(crate) signing_alg: Option<KeyAlg>,
    /// `iss` written into tokens and required when verifying.
    pub(crate) issuer: String,
    /// Clock skew tolerated on `iat` and `exp`.
    pub(crate) leeway: Duration,
    /// The JWKS document, rendered once at load.
    jwks_json: String,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|k| k.kid.as_str()).collect();
        f.debug_struct("KeySet")
            .field("kids", &kids)
            .field("signing_alg", &self.signing_alg)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl KeySet {
    /// Loads and checks a key file. Fails if it is missing, corrupt or empty.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        let file = keyfile::read(path)?;
        Self::from_records(path, &file.keys)
    }

    /// Loads the key file, first creating it with one new key (mode 0600,
    /// parent directories 0700) if it does not exist. For a single node with
    /// a local data directory; a cluster must share one file (use [`load`]).
    ///
    /// [`load`]: KeySet::load
    pub fn load_or_create(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        Self::load_or_create_alg(path, KeyAlg::EdDsa)
    }

    /// [`KeySet::load_or_create`] for a node signing with `alg`: a created
    /// file gets one `alg` key, and the set signs only with `alg` keys
    /// ([`KeySet::signing_with`]).
    pub fn load_or_create_alg(path: impl AsRef<Path>, alg: KeyAlg) -> Result<Self, KeyError> {
        let path = path.as_ref();
        match Self::load(path) {
            Err(KeyError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            other => return other?.signing_with(alg, path),
        }
        keyfile::create_parent_dir(path)?;
        let record = new_record(unix_now(), 0, alg)?;
        let kid = record.kid.clone();
        let file = KeyFile {
            version: FILE_VERSION,
            keys: vec![record],
        };
        match keyfile::write(path, &file, WriteMode::CreateNew) {
            Ok(()) => {
                tracing::info!(path = %path.display(), %kid, "created admission key file");
            }
            // Another process created it between our read and our write:
            // use theirs.
            Err(KeyError::Write { source, .. })
                if source.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        Self::load(path)?.signing_with(alg, path)
    }

    /// A key set with one fresh key that lives only in memory, for tests
    /// and throwaway nodes; tokens it signs stop verifying when it is dropped.
    pub fn generate_in_memory() -> Result<Self, KeyError> {
        Self::generate_in_memory_alg(KeyAlg::EdDsa)
    }

    /// [`KeySet::generate_in_memory`] with an `alg` key.
    pub fn generate_in_memory_alg(alg: KeyAlg) -> Result<Self, KeyError> {
        let record = new_record(unix_now(), 0, alg)?;
        Self::from_records(Path::new("<memory>"), &[record])
    }

    /// Restricts signing to `alg` keys (`--admission-alg`): the newest
    /// active key of that algorithm signs; keys of the other algorithm only
    /// verify (the overlap of a migration). Fails when the set has no `alg`
    /// key at all; `path` only names the file in the error.
    pub fn signing_with(mut self, alg: KeyAlg, path: &Path) -> Result<Self, KeyError> {
        if !self.keys.iter().any(|k| k.alg == alg) {
            return Err(KeyError::NoKeyForAlg {
                path: path.to_owned(),
                alg,
            });
        }
        self.signing_alg = Some(alg);
        Ok(self)
    }

    /// The algorithm keys must have to sign, if restricted.
    pub fn signing_alg(&self) -> Option<KeyAlg> {
        self.signing_alg
    }

    /// Sets the `iss` written into tokens and required when verifying
    /// (default [`DEFAULT_ISSUER`]).
    #[must_use]
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = issuer.into();
        self
    }

    /// Sets the clock skew tolerated on `iat` and `exp` (default
    /// [`DEFAULT_LEEWAY`]), whole seconds.
    #[must_use]
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// The issuer written into and required of tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The tolerated clock skew.
    pub fn leeway(&self) -> Duration {
        self.leeway
    }

    /// The kid of the newest key (by `created_at`), whether or not it may
    /// sign yet.
    pub fn newest_kid(&self) -> &str {
        // `from_records` refuses an empty set, so index 0 exists; `map_or`
        // keeps this panic-free regardless.
        self.keys.first().map_or("", |k| k.kid.as_str())
    }

    /// The kid of the key that signs at `now` (unix seconds): the newest key
    /// whose `active_from` has passed. `None` if every key is still pending.
    pub fn signing_kid(&self, now: u64) -> Option<&str> {
        self.signing_key(now).map(|k| k.kid.as_str())
    }

    /// Every kid, newest first.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.kid.as_str())
    }

    /// The public keys as a JWKS document (`GET /.well-known/jwks.json`).
    /// Every key is listed, including ones not yet signing, so verifiers
    /// learn a new key before it is used.
    pub fn jwks_json(&self) -> &str {
        &self.jwks_json
    }

    /// The public keys as a [`Jwks`] value.
    pub fn jwks(&self) -> Jwks {
        Jwks {
            keys: self.keys.iter().map(LoadedKey::public_jwk).collect(),
        }
    }

    /// The SPKI PEM of every ES256 key, newest first, as `(kid, pem)`: what
    /// HAProxy's `jwt_verify` and Kong's `jwt_secrets` take. EdDSA keys have
    /// none (neither gateway verifies EdDSA).
    pub fn es256_public_pems(&self) -> Vec<(String, String)> {
        self.keys
            .iter()
            .filter_map(|k| Some((k.kid.clone(), k.public_pem.clone()?)))
            .collect()
    }

    pub(crate) fn signing_key(&self, now: u64) -> Option<&LoadedKey> {
        self.keys
            .iter()
            .filter(|k| self.signing_alg.is_none_or(|alg| k.alg == alg))
            .find(|k| k.active_from <= now)
    }

    pub(crate) fn key(&self, kid: &str) -> Option<&LoadedKey> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    fn from_records(path: &Path, records: &[KeyRecord]) -> Result<Self, KeyError> {
        if records.is_empty() {
            return Err(KeyError::Empty {
                path: path.to_owned(),
            });
        }
        let mut seen = HashSet::new();
        let mut keys = Vec::with_capacity(records.len());
        for record in records {
            let key = load_record(path, record)?;
            if !seen.insert(key.kid.clone()) {
                return Err(KeyError::DuplicateKid {
                    path: path.to_owned(),
                    kid: key.kid,
                });
            }
            keys.push(key);
        }
        // Newest first; reversing before a stable sort makes a later
        // position in the file win a `created_at` tie.
        keys.reverse();
        keys.sort_by_key(|k| std::cmp::Reverse(k.created_at));
        let mut set = KeySet {
            keys,
            signing_alg: None,
            issuer: DEFAULT_ISSUER.to_owned(),
            leeway: DEFAULT_LEEWAY,
            jwks_json: String::new(),
        };
        set.jwks_json = set.jwks().to_json();
        Ok(set)
    }
}

fn load_record(path: &Path, record: &KeyRecord) -> Result<LoadedKey, KeyError> {
    let invalid = |reason: String| KeyError::InvalidKey {
        path: path.to_owned(),
        kid: record.kid.clone(),
        reason,
    };
    if record.kid.trim().is_empty() {
        return Err(invalid("kid is empty".to_owned()));
    }
    let seed = keyfile::seed_from_hex(&record.seed_hex).map_err(invalid)?;
    let derived = derive(&seed, record.alg).map_err(invalid)?;
    if record
        .x
        .as_ref()
        .is_some_and(|written| written != &derived.x)
    {
        return Err(invalid(
            "x does not match the private seed (file damaged or edited)".to_owned(),
        ));
    }
    if record.y.is_some() && record.y != derived.y {
        return Err(invalid(
            "y does not match the private seed (file damaged or edited, or y on an EdDSA key)"
                .to_owned(),
        ));
    }
    Ok(LoadedKey {
        kid: record.kid.clone(),
        alg: record.alg,
        created_at: record.created_at,
        active_from: record.active_from(),
        x: derived.x,
        y: derived.y,
        public_pem: derived.public_pem,
        encoding: derived.encoding,
        decoding: derived.decoding,
    })
}

impl LoadedKey {
    fn public_jwk(&self) -> PublicJwk {
        match (self.alg, &self.y) {
            (KeyAlg::Es256, Some(y)) => PublicJwk::p256(&self.kid, &self.x, y),
            _ => PublicJwk::ed25519(&self.kid, &self.x),
        }
    }
}

/// Everything a 32-byte private key of `alg` gives.
struct Derived {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The JWK of the public key (for the RFC 7638 kid).
    jwk: Jwk,
    x: String,
    y: Option<String>,
    public_pem: Option<String>,
}

/// Derives signing and verifying keys and the published public key from a
/// private key; the error says what is wrong, never the secret.
fn derive(seed: &[u8; keyfile::SEED_LEN], alg: KeyAlg) -> Result<Derived, String> {
    match alg {
        KeyAlg::EdDsa => {
            let encoding = EncodingKey::from_ed_der(&keyfile::seed_to_pkcs8_der(seed));
            let jwk = Jwk::from_encoding_key(&encoding, Algorithm::EdDSA)
                .map_err(|e| format!("not a usable Ed25519 key: {e}"))?;
            let x = match &jwk.algorithm {
                AlgorithmParameters::OctetKeyPair(p) => p.x.clone(),
                _ => return Err("the JWT library did not derive an Ed25519 public key".to_owned()),
            };
            let decoding = DecodingKey::from_ed_components(&x)
                .map_err(|e| format!("cannot build the verifying key: {e}"))?;
            Ok(Derived {
                encoding,
                decoding,
                jwk,
                x,
                y: None,
                public_pem: None,
            })
        }
        KeyAlg::Es256 => {
            let parts = p256key::from_scalar(seed)?;
            let encoding = EncodingKey::from_ec_der(&parts.pkcs8_der);
            let jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256)
                .map_err(|e| format!("not a usable P-256 key: {e}"))?;
            let x = URL_SAFE_NO_PAD.encode(parts.x);
            let y = URL_SAFE_NO_PAD.encode(parts.y);
            match &jwk.algorithm {
                AlgorithmParameters::EllipticCurve(p) if p.x == x && p.y == y => {}
                _ => return Err("the JWT library derived another P-256 public key".to_owned()),
            }
            let decoding = DecodingKey::from_ec_components(&x, &y)
                .map_err(|e| format!("cannot build the verifying key: {e}"))?;
            Ok(Derived {
                encoding,
                decoding,
                jwk,
                x,
                y: Some(y),
                public_pem: Some(parts.public_pem),
            })
        }
    }
}

/// A freshly generated `alg` key record, allowed to sign `activate_after`
/// seconds after `now`.
fn new_record(now: u64, activate_after: u64, alg: KeyAlg) -> Result<KeyRecord, KeyError> {
    // A P-256 scalar must be non-zero and below the group order; 32 random
    // bytes fail that with probability about 2^-32, so a retry or two is
    // the most ever needed.
    let mut attempt = 0;
    let (seed, derived) = loop {
        let seed = keyfile::random_seed()?;
        match derive(&seed, alg) {
            Ok(derived) => break (seed, derived),
            Err(e) if attempt >= 8 => {
                return Err(KeyError::Random(format!("generated key is unusable: {e}")));
            }
            Err(_) => attempt += 1,
        }
    };
    let kid = derived
        .jwk
        .thumbprint(ThumbprintHash::SHA256)
        .map_err(|e| KeyError::Random(format!("generated key is unusable: {e}")))?;
    Ok(KeyRecord {
        kid,
        created_at: now,
        active_from: (activate_after > 0).then(|| now.saturating_add(activate_after)),
        alg,
        seed_hex: keyfile::seed_to_hex(&seed),
        x: Some(derived.x),
        y: derived.y,
    })
}

/// Appends a new key to the key file, creating the file (mode 0600) if it
/// is missing. The new key signs at once; older keys keep verifying.
/// Returns the new kid. This is `pace-node keys generate --out FILE`.
pub fn generate_into(path: impl AsRef<Path>) -> Result<String, KeyError> {
    generate_into_at(path, unix_now(), Duration::ZERO)
}

/// Like [`generate_into`], but the new key only signs from `now +
/// activate_after` (whole seconds); until then it is published in the JWKS
/// only, so every verifier has it before the first token it signs.
pub fn generate_into_at(
    path: impl AsRef<Path>,
    now: u64,
    activate_after: Duration,
) -> Result<String, KeyError> {
    generate_alg_into_at(path, KeyAlg::EdDsa, now, activate_after)
}

/// [`generate_into_at`] for a key of `alg` (`pace-node keys generate --alg
/// ES256`). The file may mix algorithms: that is how a cluster migrates
/// from EdDSA to ES256 (see the module documentation).
pub fn generate_alg_into_at(
    path: impl AsRef<Path>,
    alg: KeyAlg,
    now: u64,
    activate_after: Duration,
) -> Result<String, KeyError> {
    let path = path.as_ref();
    let record = new_record(now, activate_after.as_secs(), alg)?;
    let kid = record.kid.clone();
    match keyfile::read(path) {
        Ok(mut file) => {
            // Refuse to append to a file that would not load.
            KeySet::from_records(path, &file.keys)?;
            file.keys.push(record);
            keyfile::write(path, &file, WriteMode::Replace)?;
        }
        Err(KeyError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            keyfile::create_parent_dir(path)?;
            let file = KeyFile {
                version: FILE_VERSION,
                keys: vec![record],
            };
            keyfile::write(path, &file, WriteMode::CreateNew)?;
        }
        Err(e) => return Err(e),
    }
    Ok(kid)
}

/// What a key is for at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    /// Signs new tokens (and verifies).
    Signing,
    /// Published and verifies, but may not sign before its `active_from`.
    Pending,
    /// Superseded by a newer key: only verifies tokens it signed earlier.
    VerifyOnly,
}

impl fmt::Display for KeyRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyRole::Signing => "signing",
            KeyRole::Pending => "pending",
            KeyRole::VerifyOnly => "verify-only",
        })
    }
}

/// One key as `pace-node keys list` shows it. No secret material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key id.
    pub kid: String,
    /// The key's algorithm.
    pub alg: KeyAlg,
    /// Unix seconds when it was generated.
    pub created_at: u64,
    /// Unix seconds from which it may sign.
    pub active_from: u64,
    /// Its role at the time of listing.
    pub role: KeyRole,
}

impl fmt::Display for KeyInfo {
    /// `<kid>  <alg>  created <RFC 3339>  <role>[ from <RFC 3339>]`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at =
            |secs: u64| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs));
        write!(
            f,
            "{}  {}  created {}  {}",
            self.kid,
            self.alg,
            at(self.created_at),
            self.role
        )?;
        if self.role == KeyRole::Pending {
            write!(f, " from {}", at(self.active_from))?;
        }
        Ok(())
    }
}

/// The keys in a key file, newest first, with their role now. This is
/// `pace-node keys list FILE`.
pub fn list(path: impl AsRef<Path>) -> Result<Vec<KeyInfo>, KeyError> {
    list_at(path, unix_now())
}

/// [`list`] with the roles computed at `now` (unix seconds).
pub fn list_at(path: impl AsRef<Path>, now: u64) -> Result<Vec<KeyInfo>, KeyError> {
    list_alg_at(path, None, now)
}

/// [`list_at`] for a cluster that signs with `alg` only
/// (`pace-node keys list FILE --alg ES256`): the signing key is the newest
/// active key of that algorithm.
pub fn list_alg_at(
    path: impl AsRef<Path>,
    alg: Option<KeyAlg>,
    now: u64,
) -> Result<Vec<KeyInfo>, KeyError> {
    let path = path.as_ref();
    let mut set = KeySet::load(path)?;
    if let Some(alg) = alg {
        set = set.signing_with(alg, path)?;
    }
    let signing = set.signing_kid(now).map(str::to_owned);
    Ok(set
        .keys
        .iter()
        .map(|k| KeyInfo {
            kid: k.kid.clone(),
            alg: k.alg,
            created_at: k.created_at,
            active_from: k.active_from,
            role: if signing.as_deref() == Some(k.kid.as_str()) {
                KeyRole::Signing
            } else if k.active_from > now {
                KeyRole::Pending
            } else {
                KeyRole::VerifyOnly
            },
        })
        .collect())
}

/// Removes a key from the key file: tokens it signed stop verifying and it
/// leaves the JWKS once nodes restart. Refuses to remove the last key that
/// can sign now. This is `pace-node keys retire FILE KID`.
pub fn retire(path: impl AsRef<Path>, kid: &str) -> Result<(), KeyError> {
    retire_at(path, kid, unix_now())
}

/// [`retire`] judged at `now` (unix seconds).
pub fn retire_at(path: impl AsRef<Path>, kid: &str, now: u64) -> Result<(), KeyError> {
    let path = path.as_ref();
    let mut file = keyfile::read(path)?;
    KeySet::from_records(path, &file.keys)?;
    let before = file.keys.len();
    file.keys.retain(|r| r.kid != kid);
    if file.keys.len() == before {
        return Err(KeyError::NoSuchKid {
            path: path.to_owned(),
            kid: kid.to_owned(),
        });
    }
    if !file.keys.iter().any(|r| r.active_from() <= now) {
        return Err(KeyError::RetireRefused {
            kid: kid.to_owned(),
            reason: "no other key could sign now; generate a new key first".to_owned(),
        });
    }
    keyfile::write(path, &file, WriteMode::Replace)
}

/// Writes the public key of every ES256 key in the key file to
/// `<out_dir>/<kid>.pem` (SPKI PEM, mode 0644: public material), creating
/// the directory. Returns `(kid, file)` newest first. This is `pace-node
/// keys export-pem FILE --out-dir DIR`: HAProxy's `jwt_verify` reads these
/// files, Kong's `jwt_secrets` embed them. Fails when the file holds no
/// ES256 key (the gateways cannot verify EdDSA).
pub fn export_pems(
    path: impl AsRef<Path>,
    out_dir: impl AsRef<Path>,
) -> Result<Vec<(String, PathBuf)>, KeyError> {
    let path = path.as_ref();
    let out_dir = out_dir.as_ref();
    let set = KeySet::load(path)?;
    let pems = set.es256_public_pems();
    if pems.is_empty() {
        return Err(KeyError::NoKeyForAlg {
            path: path.to_owned(),
            alg: KeyAlg::Es256,
        });
    }
    let write_err = |file: &Path, source: io::Error| KeyError::Write {
        path: file.to_owned(),
        source,
    };
    std::fs::create_dir_all(out_dir).map_err(|e| write_err(out_dir, e))?;
    let mut written = Vec::with_capacity(pems.len());
    for (kid, pem) in pems {
        // Kids of generated keys are base64url; refuse anything that could
        // leave the directory.
        if kid.is_empty()
            || !kid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(KeyError::InvalidKey {
                path: path.to_owned(),
                kid,
                reason: "kid is not base64url, so it cannot name a PEM file".to_owned(),
            });
        }
        let file = out_dir.join(format!("{kid}.pem"));
        std::fs::write(&file, pem).map_err(|e| write_err(&file, e))?;
        written.push((kid, file));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000;

    fn tmp_keys() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        (dir, path)
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn load_or_create_creates_one_key_with_mode_0600_then_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pace-data").join("keys.json");
        let first = KeySet::load_or_create(&path).unwrap();
        assert_eq!(first.kids().count(), 1);
        #[cfg(unix)]
        {
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(path.parent().unwrap()), 0o700);
        }
        let again = KeySet::load_or_create(&path).unwrap();
        assert_eq!(again.newest_kid(), first.newest_kid());
    }

    #[test]
    fn generate_creates_then_appends_and_keeps_mode_0600() {
        let (_dir, path) = tmp_keys();
        let k1 = generate_into_at(&path, T0, Duration::ZERO).unwrap();
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
        let k2 = generate_into_at(&path, T0 + 10, Duration::ZERO).unwrap();
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
        assert_ne!(k1, k2);
        let set = KeySet::load(&path).unwrap();
        assert_eq!(
            set.kids().collect::<Vec<_>>(),
            vec![k2.as_str(), k1.as_str()]
        );
        assert_eq!(set.newest_kid(), k2);
        assert_eq!(set.signing_kid(T0 + 10), Some(k2.as_str()));
        // Kids are RFC 7638 SHA-256 thumbprints: 43 base64url characters.
        assert_eq!(k1.len(), 43);
    }

    #[test]
    fn pending_key_is_published_but_does_not_sign_before_active_from() {
        let (_dir, path) = tmp_keys();
        let old = generate_into_at(&path, T0, Duration::ZERO).unwrap();
        let new = generate_into_at(&path, T0 + 100, Duration::from_secs(3600)).unwrap();
        let set = KeySet::load(&path).unwrap();
        assert_eq!(set.newest_kid(), new);
        assert_eq!(set.signing_kid(T0 + 100), Some(old.as_str()));
        assert_eq!(set.signing_kid(T0 + 100 + 3600), Some(new.as_str()));
        assert!(set.jwks_json().contains(&new));
        let roles: Vec<_> = list_at(&path, T0 + 200)
            .unwrap()
            .into_iter()
            .map(|i| i.role)
            .collect();
        assert_eq!(roles, vec![KeyRole::Pending, KeyRole::Signing]);
        let line = list_at(&path, T0 + 200).unwrap()[0].to_string();
        assert!(
            line.starts_with(&new) && line.contains("pending from"),
            "{line}"
        );
    }

    #[test]
    fn list_shows_newest_signing_and_older_verify_only() {
        let (_dir, path) = tmp_keys();
        let k1 = generate_into_at(&path, T0, Duration::ZERO).unwrap();
        let k2 = generate_into_at(&path, T0 + 1, Duration::ZERO).unwrap();
        let infos = list_at(&path, T0 + 2).unwrap();
        assert_eq!(infos.len(), 2);
        assert_eq!(
            (infos[0].kid.as_str(), infos[0].role),
            (k2.as_str(), KeyRole::Signing)
        );
        assert_eq!(
            (infos[1].kid.as_str(), infos[1].role),
            (k1.as_str(), KeyRole::VerifyOnly)
        );
        assert!(
            infos[1]
                .to_string()
                .contains("created 2027-01-15T08:00:00Z"),
            "{}",
            infos[1]
        );
    }

    #[test]
    fn retire_removes_old_key_but_never_the_last_signer() {
        let (_dir, path) = tmp_keys();
        let k1 = generate_into_at(&path, T0, Duration::ZERO).unwrap();
        let k2 = generate_into_at(&path, T0 + 1, Duration::ZERO).unwrap();
        retire_at(&path, &k1, T0 + 2).unwrap();
        assert_eq!(
            KeySet::load(&path).unwrap().kids().collect::<Vec<_>>(),
            vec![k2.as_str()]
        );
        assert!(matches!(
            retire_at(&path, &k1, T0 + 2),
            Err(KeyError::NoSuchKid { .. })
        ));
        assert!(matches!(
            retire_at(&path, &k2, T0 + 2),
            Err(KeyError::RetireRefused { .. })
        ));
        // A pending key alone cannot replace the signer either.
        generate_into_at(&path, T0 + 3, Duration::from_secs(600)).unwrap();
        assert!(matches!(
            retire_at(&path, &k2, T0 + 4),
            Err(KeyError::RetireRefused { .. })
        ));
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn corrupt_files_give_clear_errors() {
        let (_dir, path) = tmp_keys();
        let write = |s: &str| std::fs::write(&path, s).unwrap();

        write("{ not json");
        let err = KeySet::load(&path).unwrap_err();
        assert!(matches!(err, KeyError::Parse { .. }), "{err}");
        assert!(err.to_string().contains("keys.json"), "{err}");

        write(r#"{"version":1,"keys":[]}"#);
        assert!(matches!(KeySet::load(&path), Err(KeyError::Empty { .. })));

        write(r#"{"version":2,"keys":[]}"#);
        assert!(matches!(
            KeySet::load(&path),
            Err(KeyError::UnsupportedVersion { version: 2, .. })
        ));

        write(r#"{"version":1,"keys":[{"kid":"a","created_at":1,"seed_hex":"00"}]}"#);
        let err = KeySet::load(&path).unwrap_err();
        assert!(
            matches!(&err, KeyError::InvalidKey { kid, .. } if kid == "a"),
            "{err}"
        );

        // A typo in a field name is an error, not a silently ignored field.
        write(
            r#"{"version":1,"keys":[{"kid":"a","created_at":1,"seed_hex":"00","active_form":5}]}"#,
        );
        assert!(matches!(KeySet::load(&path), Err(KeyError::Parse { .. })));

        // Appending to or retiring from a corrupt file is refused, and the
        // file is left as it was.
        write("{ not json");
        assert!(matches!(generate_into(&path), Err(KeyError::Parse { .. })));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{ not json");

        let missing = path.with_file_name("missing.json");
        assert!(matches!(KeySet::load(&missing), Err(KeyError::Read { .. })));
        assert!(matches!(list(&missing), Err(KeyError::Read { .. })));
    }

    #[test]
    fn damaged_seed_or_duplicate_kid_is_rejected() {
        let (_dir, path) = tmp_keys();
        generate_into_at(&path, T0, Duration::ZERO).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();

        // Flip the seed: x no longer matches.
        let mut damaged = json.clone();
        damaged["keys"][0]["seed_hex"] = serde_json::Value::String("11".repeat(32));
        std::fs::write(&path, damaged.to_string()).unwrap();
        let err = KeySet::load(&path).unwrap_err();
        assert!(err.to_string().contains("x does not match"), "{err}");
        // The seed never appears in an error.
        assert!(!err.to_string().contains(&"11".repeat(32)));

        let key = json["keys"][0].clone();
        json["keys"].as_array_mut().unwrap().push(key);
        std::fs::write(&path, json.to_string()).unwrap();
        assert!(matches!(
            KeySet::load(&path),
            Err(KeyError::DuplicateKid { .. })
        ));
    }

    #[test]
    fn debug_output_has_no_secrets() {
        let (_dir, path) = tmp_keys();
        generate_into_at(&path, T0, Duration::ZERO).unwrap();
        let file = keyfile::read(&path).unwrap();
        let seed = file.keys[0].seed_hex.clone();
        let set = KeySet::load(&path).unwrap();
        assert!(!format!("{set:?}").contains(&seed));
        assert!(!format!("{file:?}").contains(&seed));
    }

    #[test]
    fn es256_keys_are_generated_listed_exported_and_checked() {
        use p256::pkcs8::DecodePublicKey;
        let (dir, path) = tmp_keys();
        let ed = generate_into_at(&path, T0, Duration::ZERO).unwrap();
        let es = generate_alg_into_at(&path, KeyAlg::Es256, T0 + 1, Duration::ZERO).unwrap();
        assert_eq!(es.len(), 43, "RFC 7638 thumbprint");
        let text = std::fs::read_to_string(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        // Old entries keep their shape (no alg written for EdDSA).
        assert!(json["keys"][0].get("alg").is_none());
        assert_eq!(json["keys"][1]["alg"], "ES256");
        assert!(json["keys"][1]["y"].is_string());

        let infos = list_alg_at(&path, Some(KeyAlg::EdDsa), T0 + 2).unwrap();
        assert_eq!(
            infos
                .iter()
                .map(|i| (i.kid.as_str(), i.alg, i.role))
                .collect::<Vec<_>>(),
            vec![
                (es.as_str(), KeyAlg::Es256, KeyRole::VerifyOnly),
                (ed.as_str(), KeyAlg::EdDsa, KeyRole::Signing)
            ]
        );
        assert!(infos[0].to_string().contains("  ES256  created"));
        let infos = list_alg_at(&path, Some(KeyAlg::Es256), T0 + 2).unwrap();
        assert_eq!(infos[0].role, KeyRole::Signing);

        let out = dir.path().join("pems");
        let written = export_pems(&path, &out).unwrap();
        assert_eq!(written.len(), 1, "EdDSA keys have no gateway PEM");
        assert_eq!(written[0].0, es);
        assert_eq!(written[0].1, out.join(format!("{es}.pem")));
        let pem = std::fs::read_to_string(&written[0].1).unwrap();
        let key = p256::PublicKey::from_public_key_pem(&pem).unwrap();
        let jwk = Jwks::from_json(KeySet::load(&path).unwrap().jwks_json())
            .unwrap()
            .find(&es)
            .unwrap()
            .clone();
        let expected = jwk.decoding_key().unwrap();
        assert_eq!(
            expected.try_get_as_bytes().unwrap(),
            p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&key, false).as_bytes()
        );

        // A damaged y is caught.
        let mut damaged = json.clone();
        damaged["keys"][1]["y"] = serde_json::Value::String("AAAA".into());
        std::fs::write(&path, damaged.to_string()).unwrap();
        let err = KeySet::load(&path).unwrap_err();
        assert!(err.to_string().contains("y does not match"), "{err}");

        // Only EdDSA keys: nothing to export.
        let (_d2, only_ed) = tmp_keys();
        generate_into_at(&only_ed, T0, Duration::ZERO).unwrap();
        assert!(matches!(
            export_pems(&only_ed, &out),
            Err(KeyError::NoKeyForAlg { .. })
        ));
    }
}
