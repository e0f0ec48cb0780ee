//! Admission tokens: when a device is admitted from a room's queue it gets
//! a JWT signed with an Ed25519 key (`alg: EdDSA`, the default) or a P-256
//! key (`alg: ES256`, `--admission-alg ES256`, which gateways can verify),
//! which the target site verifies with the public keys Pace publishes at
//! `GET /.well-known/jwks.json`. This module holds the keys, signs and
//! verifies tokens, renders the JWKS, and implements the `pace-node keys`
//! operator commands. It does no HTTP and reads no flags.
//!
//! # Layout
//!
//! - [`KeyAlg`] (in [`crate::key_alg`], below the configuration): `EdDSA` or `ES256`.
//! - [`keys`]: the [`KeySet`] (newest active key of the signing algorithm
//!   signs, all keys verify) and the operator actions [`generate_into`],
//!   [`generate_alg_into_at`], [`list`], [`retire`], [`export_pems`].
//! - `keyfile`: the key file's JSON shape and 0600, atomic writes.
//! - `p256key`: P-256 key material (PKCS#8, JWK coordinates, SPKI PEM).
//! - [`token`]: [`AdmissionClaims`], [`KeySet::sign`], [`KeySet::verify`].
//! - [`jwks`]: the published [`Jwks`] document.
//!
//! # Token
//!
//! Header `{"typ":"JWT","alg":"EdDSA"|"ES256","kid":"<kid>"}`. Claims:
//! `iss` (the deployment, default `pace`), `aud` (room id), `sub` (device
//! id), `jti` (admission session id), `iat` and `exp` (unix seconds), and
//! optionally `target` (target site host). A verifier MUST pick the key by
//! `kid`, accept only the `alg` that key is published for, and check `iss`,
//! `aud` (its room) and `exp`; [`KeySet::verify`] does all of that with a
//! small explicit leeway ([`DEFAULT_LEEWAY`]) and rejects `alg: none`, HMAC
//! tokens and a token claiming the other asymmetric algorithm.
//!
//! # Key file
//!
//! One JSON file (mode 0600, owned by the user the node runs as) holds every
//! key. Every node of a cluster reads the same file.
//!
//! ```json
//! {
//!   "version": 1,
//!   "keys": [
//!     {
//!       "kid": "Qm1mYkTHJhZ8fS9bYb0JcDy2c2bX9l7j5K0m3pZC4tE",
//!       "created_at": 1767225600,
//!       "seed_hex": "<64 hex characters: the 32-byte Ed25519 private seed>",
//!       "x": "<base64url public key, as in the JWKS>"
//!     },
//!     {
//!       "kid": "…",
//!       "created_at": 1769904000,
//!       "active_from": 1769907600,
//!       "seed_hex": "…",
//!       "x": "…"
//!     },
//!     {
//!       "kid": "…",
//!       "created_at": 1770000000,
//!       "alg": "ES256",
//!       "seed_hex": "<64 hex characters: the 32-byte P-256 private scalar>",
//!       "x": "…",
//!       "y": "…"
//!     }
//!   ]
//! }
//! ```
//!
//! - `kid`: the key id; generated keys use the RFC 7638 SHA-256 thumbprint
//!   of the public key. Unique in the file.
//! - `created_at`: unix seconds. The key with the greatest `created_at`
//!   whose `active_from` has passed signs (a tie goes to the later entry).
//! - `active_from` (optional, default `created_at`): before this time the
//!   key is published and verifies, but does not sign.
//! - `alg` (optional, default `EdDSA`): `EdDSA` or `ES256`.
//! - `seed_hex`: the private key (Ed25519 seed or P-256 scalar). Anyone
//!   holding it can mint admissions.
//! - `x`, `y` (optional; `y` for ES256 only): the public key; if present it
//!   must match the seed, so a damaged file is refused rather than
//!   publishing a wrong key.
//!
//! The node signs with the newest active key of its `--admission-alg`
//! ([`KeySet::signing_with`]); keys of the other algorithm only verify,
//! which is how a cluster migrates from EdDSA to ES256: add an ES256 key,
//! switch the flag, retire the EdDSA key after the longest session.
//!
//! Unknown fields, a bad seed, a mismatched `x`, duplicate kids or an empty
//! key list make loading fail with a [`KeyError`] naming the file and key;
//! the node then refuses to start. Writes go to a temporary file that is
//! fsynced and renamed into place, so a reader never sees half a file.
//!
//! # Rotation
//!
//! 1. As the service user, append a key that starts signing later:
//!    `pace-node keys generate --out /etc/pace/keys.json --activate-in 1h`
//!    (without `--activate-in` it signs as soon as a node loads it).
//! 2. Copy the file to every node and restart them one by one. Every node
//!    now publishes both keys; tokens are still signed with the old key, so
//!    target sites that cached the JWKS before the restart keep working and
//!    pick up the new key on their next refresh.
//! 3. From `active_from` on, new tokens carry the new kid; tokens signed
//!    with the old key still verify.
//! 4. Once the longest session TTL plus the target sites' JWKS cache time
//!    has passed, `pace-node keys retire /etc/pace/keys.json <old kid>`,
//!    copy the file and restart the nodes again. `retire` refuses to remove
//!    the last key that can sign.
//!
//! Gateways that enforce admissions carry the ES256 public keys as PEM
//! files (`pace-node keys export-pem FILE --out-dir DIR`, [`export_pems`]):
//! give them both keys before step 3, and only the new one after step 4.
//!
//! If a key leaks, generate a new key without delay, retire the leaked one
//! at once, roll the nodes, and ask target sites to refetch the JWKS:
//! admissions signed with the leaked key stop verifying. `pace-node keys
//! list FILE` shows every kid with its role (signing, pending, verify-only).
//!
//! A single node started without a key file creates one with one key in
//! its data directory ([`KeySet::load_or_create`]); a cluster must share
//! one file instead, or each node would sign with a key the others do not
//! publish.

pub mod jwks;
mod keyfile;
pub mod keys;
mod p256key;
pub mod token;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use crate::key_alg::{KeyAlg, UnknownAlg};
pub use jwks::{Jwks, JwksError, PublicJwk};
pub use keys::{
    KeyError, KeyInfo, KeyRole, KeySet, export_pems, generate_alg_into_at, generate_into,
    generate_into_at, list, list_alg_at, list_at, retire, retire_at,
};
pub use token::{AdmissionClaims, TokenError, VerifyError};

/// Default `iss` of admission tokens.
pub const DEFAULT_ISSUER: &str = "pace";

/// Default clock skew tolerated on `iat` and `exp` when verifying.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);

/// Seconds since the Unix epoch now (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
