//! The protected site: a path prefix of the public host, served by the
//! operator's own site (`--site HOST:PORT`), that the gateway lets through
//! only with a valid admission token for one room. Both gateways render it
//! from one [`Protection`], so they enforce the same rules:
//!
//! - the token comes from the hand-off's `?pace_token=` query, else
//!   `Authorization: Bearer`, else the [`COOKIE`] cookie (which the gateway
//!   sets on the hand-off, so the site needs no code);
//! - its header says `alg: ES256` and a `kid` of a published key, and the
//!   signature verifies with that key (one PEM per kid, written by
//!   `pace-node keys export-pem`; two during a key rotation);
//! - `aud` is the room, `iss` the cluster's issuer, `exp` in the future;
//! - anything else is answered `302` to the room's waiting page `/r/{room}`.
//!
//! A gateway checks tokens offline: it cannot see a session that was
//! released or revoked before its `exp` (docs/security.md).

use std::path::PathBuf;

use crate::GatewayError;
use crate::topology::{Node, PRIVATE_PATHS, PUBLIC_PATH_PREFIXES};

/// Cookie that carries the admission on the protected site after the
/// hand-off.
pub const COOKIE: &str = "pace_admission";

/// Query parameter of the hand-off (the node appends it to the room's
/// target URL).
pub const TOKEN_QUERY_ARG: &str = "pace_token";

/// The only algorithm the gateways verify (neither verifies EdDSA).
pub const GATEWAY_ALG: &str = "ES256";

/// Path, under the protected prefix, that renews the session through the
/// gateway (forwarded to a node's `POST /api/v1/sessions/renew`).
pub const RENEW_SUFFIX: &str = "_pace/renew";

/// Header that carries the admission token between the gateway and the
/// node on the renewal route: the gateway sets it from the cookie on the
/// request, the node answers the renewed token in it.
pub const RENEW_HEADER: &str = "x-pace-admission";

/// Header the gateway sets towards the site with the admitted device id
/// (the token's `sub`), replacing any the client sent.
pub const DEVICE_HEADER: &str = "x-pace-admitted-device";

/// One published ES256 key: its kid and its public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionKey {
    /// The key id (base64url), matched against the token header's `kid`.
    pub kid: String,
    /// The SPKI PEM file (HAProxy reads it at start).
    pub pem_path: PathBuf,
    /// The PEM text (Kong embeds it in the consumer's `jwt_secrets`).
    pub pem: String,
}

impl AdmissionKey {
    /// Parses `KID=FILE` (the lines `pace-node keys export-pem` prints) and
    /// reads the file, which must hold a PEM public key.
    pub fn from_arg(arg: &str) -> Result<AdmissionKey, GatewayError> {
        let (kid, path) = arg.split_once('=').ok_or_else(|| {
            GatewayError::InvalidProtection(format!(
                "--admission-key {arg:?}: expected KID=FILE (as printed by `pace-node keys export-pem`)"
            ))
        })?;
        let pem_path = PathBuf::from(path);
        let pem = std::fs::read_to_string(&pem_path).map_err(|source| GatewayError::ReadKey {
            path: pem_path.clone(),
            source,
        })?;
        let key = AdmissionKey {
            kid: kid.to_owned(),
            pem_path,
            pem,
        };
        key.check()?;
        Ok(key)
    }

    fn check(&self) -> Result<(), GatewayError> {
        let bad = |why: &str| {
            Err(GatewayError::InvalidProtection(format!(
                "admission key {:?} ({}): {why}",
                self.kid,
                self.pem_path.display()
            )))
        };
        if self.kid.is_empty()
            || !self
                .kid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad("the kid must be base64url (A-Z a-z 0-9 - _)");
        }
        let path = self.pem_path.to_string_lossy();
        if path.is_empty() || path.contains(['"', '\n', '\r', ' ']) {
            return bad("the file path must not contain quotes, spaces or newlines");
        }
        let pem = self.pem.trim();
        if !pem.starts_with("-----BEGIN PUBLIC KEY-----")
            || !pem.ends_with("-----END PUBLIC KEY-----")
        {
            return bad("not a PEM public key (write it with `pace-node keys export-pem`)");
        }
        Ok(())
    }
}

/// What to protect and how to check admissions for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protection {
    /// Path prefix of the protected site on the public host, e.g. `/shop/`.
    pub prefix: String,
    /// The room whose admissions open it (`aud`).
    pub room: String,
    /// The site's `HOST:PORT`.
    pub site: Node,
    /// The cluster's issuer (`iss`, the nodes' `--token-issuer`).
    pub issuer: String,
    /// Every published ES256 key (two during a rotation).
    pub keys: Vec<AdmissionKey>,
    /// Mark the cookie `Secure` (only sent over HTTPS). Off only for labs on
    /// plain HTTP.
    pub secure_cookie: bool,
}

impl Protection {
    /// Checks everything a config is rendered from: a prefix that is a
    /// plain path (`/…/`) and overlaps no Pace path, a valid room id, at
    /// least one key, distinct kids, a plain issuer.
    pub fn validate(&self) -> Result<(), GatewayError> {
        let bad = |why: String| Err(GatewayError::InvalidProtection(why));
        let p = &self.prefix;
        if !p.starts_with('/') || !p.ends_with('/') || p.len() < 3 {
            return bad(format!(
                "--protect {p:?}: give a path prefix that starts and ends with '/', e.g. /shop/"
            ));
        }
        if !p
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-._~".contains(c))
            || p.contains("//")
            || p.contains("/./")
            || p.contains("/../")
        {
            return bad(format!(
                "--protect {p:?}: use letters, digits and - . _ ~ between slashes"
            ));
        }
        for pace in PUBLIC_PATH_PREFIXES.iter().chain(PRIVATE_PATHS) {
            let pace_dir = format!("{}/", pace.trim_end_matches('/'));
            // `path_beg /ws` would also match `/wsx/`: refuse any prefix a
            // Pace path is a string prefix of, not only a directory of.
            if p.starts_with(pace) || pace_dir.starts_with(p.as_str()) {
                return bad(format!(
                    "--protect {p:?} overlaps Pace's own path {pace}; pick another prefix"
                ));
            }
        }
        if pace_protocol::RoomId::parse(&self.room).is_err() {
            return bad(format!("--room {:?} is not a valid room id", self.room));
        }
        if self.issuer.is_empty()
            || !self
                .issuer
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._:/".contains(c))
        {
            return bad(format!(
                "--issuer {:?}: use letters, digits and - . _ : /",
                self.issuer
            ));
        }
        if self.keys.is_empty() {
            return bad(
                "at least one --admission-key KID=FILE is required (an ES256 key: \
                 `pace-node keys generate --alg ES256`, then `pace-node keys export-pem`)"
                    .to_owned(),
            );
        }
        for (i, key) in self.keys.iter().enumerate() {
            key.check()?;
            if self.keys[..i].iter().any(|k| k.kid == key.kid) {
                return bad(format!("admission key {:?} is given twice", key.kid));
            }
        }
        Ok(())
    }

    /// The waiting page a refused visitor is sent to.
    pub fn waiting_page(&self) -> String {
        format!("/r/{}", self.room)
    }

    /// The renew path on the public host.
    pub fn renew_path(&self) -> String {
        format!("{}{RENEW_SUFFIX}", self.prefix)
    }

    /// The `Set-Cookie` attributes after `name=value`.
    pub fn cookie_attributes(&self) -> String {
        let secure = if self.secure_cookie { "; Secure" } else { "" };
        format!("Path={}; HttpOnly; SameSite=Lax{secure}", self.prefix)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const PEM: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEaxfR8uEsQkf4vOblY6RA8ncDfYEt\n6zOg9KE5RdiYwpZP40Li/hp/m47n60p8D54WK84zV2sxXs7LtkBoN79R9Q==\n-----END PUBLIC KEY-----\n";

    pub(crate) fn protection() -> Protection {
        Protection {
            prefix: "/shop/".to_owned(),
            room: "sale".to_owned(),
            site: Node::parse("127.0.0.1:9090").unwrap(),
            issuer: "pace".to_owned(),
            keys: vec![AdmissionKey {
                kid: "k1".to_owned(),
                pem_path: PathBuf::from("/etc/pace/gateway-keys/k1.pem"),
                pem: PEM.to_owned(),
            }],
            secure_cookie: true,
        }
    }

    #[test]
    fn a_sound_protection_validates() {
        protection().validate().unwrap();
        assert_eq!(protection().waiting_page(), "/r/sale");
        assert_eq!(protection().renew_path(), "/shop/_pace/renew");
        assert_eq!(
            protection().cookie_attributes(),
            "Path=/shop/; HttpOnly; SameSite=Lax; Secure"
        );
    }

    #[test]
    fn unsafe_prefixes_rooms_and_keys_are_refused() {
        for prefix in [
            "shop/", "/shop", "/", "/api/", "/r/", "/a b/", "/x/../y/", "/ws/x/", "/wsx/",
            "/admins/",
        ] {
            let p = Protection {
                prefix: prefix.to_owned(),
                ..protection()
            };
            assert!(p.validate().is_err(), "{prefix} accepted");
        }
        let p = Protection {
            room: "no room".to_owned(),
            ..protection()
        };
        assert!(p.validate().is_err());
        let p = Protection {
            keys: vec![],
            ..protection()
        };
        assert!(p.validate().is_err());
        let mut twice = protection();
        twice.keys.push(twice.keys[0].clone());
        assert!(twice.validate().is_err());
        let mut bad_kid = protection();
        bad_kid.keys[0].kid = "a\"b".to_owned();
        assert!(bad_kid.validate().is_err());
        let mut not_pem = protection();
        not_pem.keys[0].pem = "secret".to_owned();
        assert!(not_pem.validate().is_err());
    }

    #[test]
    fn key_args_are_read_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k1.pem");
        std::fs::write(&file, PEM).unwrap();
        let key = AdmissionKey::from_arg(&format!("k1={}", file.display())).unwrap();
        assert_eq!(key.kid, "k1");
        assert_eq!(key.pem, PEM);
        assert!(AdmissionKey::from_arg("k1").is_err());
        assert!(matches!(
            AdmissionKey::from_arg(&format!("k1={}", dir.path().join("missing").display())),
            Err(GatewayError::ReadKey { .. })
        ));
    }
}
