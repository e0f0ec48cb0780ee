//! The admission key file on disk: its JSON shape, reading it, and writing
//! it so that it is never half-written and never readable by other users.
//!
//! This file knows bytes and paths only; turning records into signing and
//! verifying keys is [`super::keys`]' job. The format is documented in the
//! module doc of [`super`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rand::TryRngCore;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};

use super::keys::KeyError;
use crate::key_alg::KeyAlg;

/// The only key file version this code reads and writes.
pub(crate) const FILE_VERSION: u32 = 1;

/// Length of a private key: an Ed25519 seed (RFC 8032 §5.1.5) or a P-256
/// scalar (SEC 1), both 32 bytes.
pub(crate) const SEED_LEN: usize = 32;

/// PKCS#8 v1 `PrivateKeyInfo` prefix for an Ed25519 key (RFC 8410 §7):
/// SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING {
/// OCTET STRING (32 bytes) } }. The 32-byte seed follows it. This is the DER
/// that `jsonwebtoken::EncodingKey::from_ed_der` expects.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The whole key file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyFile {
    /// Format version, so a later format can be told apart instead of being
    /// misread. Always [`FILE_VERSION`].
    pub(crate) version: u32,
    /// Every key, in the order they were added (oldest first by convention;
    /// "newest" is decided by `created_at`, not by position).
    pub(crate) keys: Vec<KeyRecord>,
}

/// One key pair (Ed25519 or P-256) as stored.
// No `Debug` derive: the seed is a secret and must not reach logs.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyRecord {
    /// Key id written into each token header and into the JWKS, so a
    /// verifier picks the right public key. Generated keys use the RFC 7638
    /// SHA-256 thumbprint of the public key.
    pub(crate) kid: String,
    /// Unix seconds when the key was generated; the newest active key signs.
    pub(crate) created_at: u64,
    /// Unix seconds from which the key may sign. Before that it is only
    /// published (pre-publication during a rotation). Defaults to `created_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) active_from: Option<u64>,
    /// The key's algorithm; absent means `EdDSA` (files written before
    /// ES256 existed).
    #[serde(default, skip_serializing_if = "KeyAlg::is_default")]
    pub(crate) alg: KeyAlg,
    /// The 32-byte private key, lowercase hex (64 characters): the Ed25519
    /// seed, or the P-256 scalar for `ES256`.
    pub(crate) seed_hex: String,
    /// The public key as published in the JWKS (base64url, no padding): the
    /// Ed25519 key, or the P-256 point's x. Informational: recomputed on
    /// load and checked against the seed, so a damaged seed is caught
    /// instead of silently publishing a wrong key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) x: Option<String>,
    /// The P-256 point's y (ES256 keys only), checked like `x`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) y: Option<String>,
}

impl std::fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRecord")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .field("active_from", &self.active_from)
            .field("alg", &self.alg)
            .field("seed_hex", &"<redacted>")
            .field("x", &self.x)
            .field("y", &self.y)
            .finish()
    }
}

impl KeyRecord {
    /// The time from which this key may sign.
    pub(crate) fn active_from(&self) -> u64 {
        self.active_from.unwrap_or(self.created_at)
    }
}

/// 32 fresh random bytes from the operating system's CSPRNG (an Ed25519
/// seed, or a P-256 scalar candidate).
pub(crate) fn random_seed() -> Result<[u8; SEED_LEN], KeyError> {
    let mut seed = [0u8; SEED_LEN];
    OsRng
        .try_fill_bytes(&mut seed)
        .map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(seed)
}

/// Wraps a seed into the PKCS#8 DER form the JWT library takes.
pub(crate) fn seed_to_pkcs8_der(seed: &[u8; SEED_LEN]) -> Vec<u8> {
    let mut der = Vec::with_capacity(ED25519_PKCS8_PREFIX.len() + SEED_LEN);
    der.extend_from_slice(&ED25519_PKCS8_PREFIX);
    der.extend_from_slice(seed);
    der
}

/// Lowercase hex of a seed.
pub(crate) fn seed_to_hex(seed: &[u8; SEED_LEN]) -> String {
    seed.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a 64-character hex seed; the error says what is wrong, never the value.
pub(crate) fn seed_from_hex(hex: &str) -> Result<[u8; SEED_LEN], String> {
    let hex = hex.trim();
    if !hex.is_ascii() || hex.len() != SEED_LEN * 2 {
        return Err(format!(
            "seed_hex must be {} hex characters (a {SEED_LEN}-byte private key)",
            SEED_LEN * 2
        ));
    }
    let mut seed = [0u8; SEED_LEN];
    for (i, byte) in seed.iter_mut().enumerate() {
        let pair = &hex[2 * i..2 * i + 2];
        *byte = u8::from_str_radix(pair, 16)
            .map_err(|_| "seed_hex contains a character that is not hex".to_owned())?;
    }
    Ok(seed)
}

/// Reads and parses a key file. Structure only: keys are checked by
/// [`super::keys::KeySet`].
pub(crate) fn read(path: &Path) -> Result<KeyFile, KeyError> {
    let text = fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    warn_if_readable_by_others(path);
    let file: KeyFile = serde_json::from_str(&text).map_err(|source| KeyError::Parse {
        path: path.to_owned(),
        source,
    })?;
    if file.version != FILE_VERSION {
        return Err(KeyError::UnsupportedVersion {
            path: path.to_owned(),
            version: file.version,
        });
    }
    Ok(file)
}

/// How [`write`] treats an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteMode {
    /// Fail with `AlreadyExists` if the path exists (first creation; two
    /// processes racing to create it cannot both win).
    CreateNew,
    /// Atomically replace the file.
    Replace,
}

/// Writes the key file with mode 0600: to a temporary file in the same
/// directory, fsynced, then linked (`CreateNew`) or renamed (`Replace`) into
/// place, so readers see the old file or the new one, never a torn one.
pub(crate) fn write(path: &Path, file: &KeyFile, mode: WriteMode) -> Result<(), KeyError> {
    let write_err = |source: io::Error| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    let mut json = serde_json::to_string_pretty(file)
        .map_err(|e| write_err(io::Error::other(e.to_string())))?;
    json.push('\n');

    let dir = parent_dir(path);
    let tmp = temp_path(path, &dir)?;
    let result = write_tmp(&tmp, json.as_bytes()).and_then(|()| match mode {
        WriteMode::CreateNew => fs::hard_link(&tmp, path),
        WriteMode::Replace => fs::rename(&tmp, path),
    });
    // After a rename the temporary name is gone already; after a link (or a
    // failure) it still exists and must go.
    if mode == WriteMode::CreateNew || result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(write_err)?;
    // Make the new directory entry durable; best effort (not every
    // filesystem lets a directory be fsynced).
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Creates the directory that holds the key file (mode 0700 for new
/// directories), like `./pace-data` on first run.
pub(crate) fn create_parent_dir(path: &Path) -> Result<(), KeyError> {
    let dir = parent_dir(path);
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(&dir).map_err(|source| KeyError::Write {
        path: path.to_owned(),
        source,
    })
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn temp_path(path: &Path, dir: &Path) -> Result<PathBuf, KeyError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "keys".to_owned());
    let mut nonce = [0u8; 4];
    OsRng
        .try_fill_bytes(&mut nonce)
        .map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(dir.join(format!(
        ".{name}.tmp.{}.{:08x}",
        std::process::id(),
        u32::from_le_bytes(nonce)
    )))
}

fn write_tmp(tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{mode:o}"),
                "admission key file is readable by other users; chmod 600 it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let seed = [0xabu8; SEED_LEN];
        let hex = seed_to_hex(&seed);
        assert_eq!(hex.len(), 64);
        assert_eq!(seed_from_hex(&hex).unwrap(), seed);
        assert_eq!(seed_from_hex(&hex.to_uppercase()).unwrap(), seed);
        assert!(seed_from_hex("abc").is_err());
        assert!(seed_from_hex(&"zz".repeat(32)).is_err());
        // Non-ASCII of the right byte length must not panic on slicing.
        assert!(seed_from_hex(&"é".repeat(32)).is_err());
    }

    #[test]
    fn pkcs8_is_48_bytes_with_seed_at_the_end() {
        let seed = [7u8; SEED_LEN];
        let der = seed_to_pkcs8_der(&seed);
        assert_eq!(der.len(), 48);
        assert_eq!(&der[16..], &seed);
    }

    #[test]
    fn create_new_refuses_to_clobber() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let file = KeyFile {
            version: FILE_VERSION,
            keys: vec![],
        };
        write(&path, &file, WriteMode::CreateNew).unwrap();
        let err = write(&path, &file, WriteMode::CreateNew).unwrap_err();
        assert!(
            matches!(&err, KeyError::Write { source, .. } if source.kind() == io::ErrorKind::AlreadyExists),
            "{err}"
        );
        write(&path, &file, WriteMode::Replace).unwrap();
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("keys.json")]);
    }
}
