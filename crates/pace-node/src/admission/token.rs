//! Admission tokens: the claims, signing with the current key, and
//! verification that tells apart every way a token can be wrong.
//!
//! Verification accepts only `alg: EdDSA` or `alg: ES256` with a `kid` from
//! the key set, and only the algorithm of the key that `kid` names: the
//! algorithm is decided by the key set, never by the token, so `alg: none`,
//! HMAC tokens made with the public key (algorithm confusion) and a token
//! claiming the other asymmetric algorithm for a key all fail.
//! Time checks use the caller's clock (`now`), with the key set's leeway.

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::keys::KeySet;

pub use pace_protocol::rest::AdmissionClaims;

/// Why a token could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Every key is still pending (`active_from` in the future).
    #[error("no admission key may sign at {at}: every key is still pending")]
    NoActiveKey {
        /// The `iat` asked for.
        at: u64,
    },
    /// `exp` is not after `iat`.
    #[error("admission token would expire ({exp}) no later than it is issued ({iat})")]
    InvalidLifetime {
        /// Issued at.
        iat: u64,
        /// Expiry.
        exp: u64,
    },
    /// The claims name another issuer than the key set's.
    #[error("claims issuer {found:?} is not this key set's issuer {expected:?}")]
    WrongIssuer {
        /// The key set's issuer.
        expected: String,
        /// The claims' issuer.
        found: String,
    },
    /// The JWT library failed to sign.
    #[error("signing the admission token failed: {0}")]
    Encode(#[source] jsonwebtoken::errors::Error),
}

/// Why a token was rejected. [`VerifyError::code`] gives a stable short
/// name for metrics and client responses; the `Display` text is for logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not a JWT, or its header or claims do not parse.
    #[error("malformed admission token: {0}")]
    Malformed(String),
    /// The header names an algorithm other than EdDSA or ES256 (e.g.
    /// `none`, HS256), or not the algorithm of the key its kid names.
    #[error("admission token uses a disallowed algorithm {0}")]
    DisallowedAlgorithm(String),
    /// The header has no `kid`.
    #[error("admission token has no kid")]
    MissingKid,
    /// The `kid` is not in the key set (retired, or never ours).
    #[error("admission token kid {0:?} is not a known key")]
    UnknownKid(String),
    /// The signature does not match header and claims.
    #[error("admission token signature is invalid")]
    BadSignature,
    /// `exp` (plus leeway) has passed.
    #[error("admission token expired at {exp} (now {now})")]
    Expired {
        /// The token's expiry.
        exp: u64,
        /// The verifier's clock.
        now: u64,
    },
    /// `iat` is in the future by more than the leeway.
    #[error("admission token is not valid before {iat} (now {now})")]
    NotYetValid {
        /// The token's issue time.
        iat: u64,
        /// The verifier's clock.
        now: u64,
    },
    /// `aud` is another room.
    #[error("admission token is for room {found:?}, not {expected:?}")]
    WrongAudience {
        /// The room asked about.
        expected: String,
        /// The token's room.
        found: String,
    },
    /// `iss` is another issuer.
    #[error("admission token issuer {found:?} is not {expected:?}")]
    WrongIssuer {
        /// This key set's issuer.
        expected: String,
        /// The token's issuer.
        found: String,
    },
}

impl VerifyError {
    /// A stable snake_case name for the error kind.
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::Malformed(_) => "malformed",
            VerifyError::DisallowedAlgorithm(_) => "disallowed_algorithm",
            VerifyError::MissingKid => "missing_kid",
            VerifyError::UnknownKid(_) => "unknown_kid",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::Expired { .. } => "expired",
            VerifyError::NotYetValid { .. } => "not_yet_valid",
            VerifyError::WrongAudience { .. } => "wrong_audience",
            VerifyError::WrongIssuer { .. } => "wrong_issuer",
        }
    }
}

impl KeySet {
    /// Signs `claims` with the key that signs at `claims.iat` (the newest
    /// active key), putting its kid in the header.
    pub fn sign(&self, claims: &AdmissionClaims) -> Result<String, TokenError> {
        if claims.iss != self.issuer {
            return Err(TokenError::WrongIssuer {
                expected: self.issuer.clone(),
                found: claims.iss.clone(),
            });
        }
        if claims.exp <= claims.iat {
            return Err(TokenError::InvalidLifetime {
                iat: claims.iat,
                exp: claims.exp,
            });
        }
        self.sign_claims(claims, claims.iat)
    }

    /// Signs any claims with the key that signs at `iat`. Other token kinds
    /// (proof-of-work challenges, device and admin tokens) use an `aud`
    /// that no room id can take (it contains `/`), so none of them can pass
    /// as an admission token.
    pub fn sign_claims<T: Serialize>(&self, claims: &T, iat: u64) -> Result<String, TokenError> {
        self.sign_claims_typed(claims, iat, "JWT")
    }

    /// [`KeySet::sign_claims`] with a `typ` header naming the token kind.
    pub fn sign_claims_typed<T: Serialize>(
        &self,
        claims: &T,
        iat: u64,
        typ: &str,
    ) -> Result<String, TokenError> {
        let key = self
            .signing_key(iat)
            .ok_or(TokenError::NoActiveKey { at: iat })?;
        let mut header = Header::new(key.alg.jwt());
        header.typ = Some(typ.to_owned());
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding).map_err(TokenError::Encode)
    }

    /// Checks a token's algorithm (EdDSA or ES256, and the one of its key),
    /// key (a `kid` of this set) and signature, and decodes its claims. The
    /// caller checks the claims.
    pub fn decode_claims<T: DeserializeOwned>(&self, token: &str) -> Result<T, VerifyError> {
        let header = jsonwebtoken::decode_header(token).map_err(map_header_error)?;
        if !matches!(header.alg, Algorithm::EdDSA | Algorithm::ES256) {
            return Err(VerifyError::DisallowedAlgorithm(format!(
                "{:?}",
                header.alg
            )));
        }
        let kid = header.kid.ok_or(VerifyError::MissingKid)?;
        let key = self
            .key(&kid)
            .ok_or_else(|| VerifyError::UnknownKid(kid.clone()))?;
        if header.alg != key.alg.jwt() {
            return Err(VerifyError::DisallowedAlgorithm(format!(
                "{:?} for a {} key",
                header.alg, key.alg
            )));
        }
        // The library checks algorithm and signature only; claims are
        // checked by the caller against its own clock.
        let mut validation = Validation::new(key.alg.jwt());
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        jsonwebtoken::decode::<T>(token, &key.decoding, &validation)
            .map_err(map_decode_error)
            .map(|d| d.claims)
    }

    /// Signs an admission of `device` to `room` in `session`, issued at
    /// `now` and valid for `ttl`, with this key set's issuer.
    pub fn issue(
        &self,
        room: &str,
        device: &str,
        session: &str,
        now: u64,
        ttl: Duration,
    ) -> Result<String, TokenError> {
        self.sign(&AdmissionClaims::new(
            self.issuer.clone(),
            room,
            device,
            session,
            now,
            ttl,
        ))
    }

    /// Verifies a token at `now` (unix seconds): EdDSA or ES256 as its key
    /// says, kid in this set, valid signature, our issuer, `aud == expected_room` when given,
    /// and `iat - leeway <= now < exp + leeway`.
    pub fn verify(
        &self,
        token: &str,
        expected_room: Option<&str>,
        now: u64,
    ) -> Result<AdmissionClaims, VerifyError> {
        let claims: AdmissionClaims = self.decode_claims(token)?;

        if claims.iss != self.issuer {
            return Err(VerifyError::WrongIssuer {
                expected: self.issuer.clone(),
                found: claims.iss,
            });
        }
        // Other tokens signed with these keys (proof-of-work challenges,
        // admin tokens) have an audience no room id can be: never an
        // admission, even when the caller names no room.
        if pace_protocol::RoomId::parse(&claims.aud).is_err() {
            return Err(VerifyError::WrongAudience {
                expected: expected_room.unwrap_or("a room id").to_owned(),
                found: claims.aud,
            });
        }
        if let Some(room) = expected_room
            && claims.aud != room
        {
            return Err(VerifyError::WrongAudience {
                expected: room.to_owned(),
                found: claims.aud,
            });
        }
        let times = crate::token_time::TimeClaims {
            iat: Some(claims.iat),
            nbf: None,
            exp: Some(claims.exp),
        };
        crate::token_time::check(times, now, self.leeway.as_secs()).map_err(|e| match e {
            crate::token_time::TimeError::NotYetValid { at, now } => {
                VerifyError::NotYetValid { iat: at, now }
            }
            crate::token_time::TimeError::Expired { exp, now } => VerifyError::Expired { exp, now },
        })?;
        Ok(claims)
    }
}

fn map_header_error(e: jsonwebtoken::errors::Error) -> VerifyError {
    // An algorithm the library does not know (such as `none`) fails header
    // parsing; name it as an algorithm problem rather than generic garbage.
    if let ErrorKind::Json(json) = e.kind()
        && json.to_string().contains("unknown variant")
    {
        return VerifyError::DisallowedAlgorithm(json.to_string());
    }
    VerifyError::Malformed(e.to_string())
}

fn map_decode_error(e: jsonwebtoken::errors::Error) -> VerifyError {
    match e.kind() {
        ErrorKind::InvalidSignature => VerifyError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            VerifyError::DisallowedAlgorithm(e.to_string())
        }
        _ => VerifyError::Malformed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::jwks::Jwks;
    use crate::admission::keys::{generate_into_at, retire_at};
    use crate::admission::unix_now;
    use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
    use jsonwebtoken::{DecodingKey, EncodingKey};

    const T0: u64 = 1_800_000_000;
    const TTL: Duration = Duration::from_secs(600);

    fn key_set() -> (tempfile::TempDir, std::path::PathBuf, KeySet) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        generate_into_at(&path, T0 - 100, Duration::ZERO).unwrap();
        let set = KeySet::load(&path).unwrap();
        (dir, path, set)
    }

    fn claims(set: &KeySet, now: u64) -> AdmissionClaims {
        AdmissionClaims::new(set.issuer(), "room-1", "device-1", "session-1", now, TTL)
    }

    /// base64url without padding, via the JWT library's own encoder (an
    /// HMAC JWK's `k` is exactly that), so tests need no extra crate.
    fn b64url(bytes: &[u8]) -> String {
        let jwk =
            Jwk::from_encoding_key(&EncodingKey::from_secret(bytes), Algorithm::HS256).unwrap();
        match jwk.algorithm {
            AlgorithmParameters::OctetKey(p) => p.value,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn b64url_decode(s: &str) -> Vec<u8> {
        DecodingKey::from_ed_components(s)
            .unwrap()
            .try_get_as_bytes()
            .unwrap()
            .to_vec()
    }

    fn parts(token: &str) -> Vec<&str> {
        token.split('.').collect()
    }

    #[test]
    fn sign_verify_round_trip() {
        let (_d, _p, set) = key_set();
        let c = claims(&set, T0).with_target("shop.example.com");
        let token = set.sign(&c).unwrap();
        assert_eq!(set.verify(&token, Some("room-1"), T0 + 1), Ok(c.clone()));
        assert_eq!(set.verify(&token, None, T0 + 1), Ok(c));

        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some(set.newest_kid()));
        let raw: serde_json::Value =
            serde_json::from_slice(&b64url_decode(parts(&token)[1])).unwrap();
        assert_eq!(raw["iss"], "pace");
        assert_eq!(raw["aud"], "room-1");
        assert_eq!(raw["sub"], "device-1");
        assert_eq!(raw["jti"], "session-1");
        assert_eq!(raw["iat"], T0);
        assert_eq!(raw["exp"], T0 + 600);
    }

    #[test]
    fn issue_uses_the_configured_issuer() {
        let (_d, _p, set) = key_set();
        let set = set.with_issuer("pace-eu");
        let token = set.issue("r", "d", "s", T0, TTL).unwrap();
        assert_eq!(set.verify(&token, Some("r"), T0).unwrap().iss, "pace-eu");
        assert!(matches!(
            set.sign(&AdmissionClaims::new("other", "r", "d", "s", T0, TTL)),
            Err(TokenError::WrongIssuer { .. })
        ));
        assert!(matches!(
            set.sign(&AdmissionClaims::new(
                "pace-eu",
                "r",
                "d",
                "s",
                T0,
                Duration::ZERO
            )),
            Err(TokenError::InvalidLifetime { .. })
        ));
    }

    /// A target site holding only the JWKS document verifies the token with
    /// stock library calls.
    #[test]
    fn verifies_with_the_published_jwks_alone() {
        // The library's own validation reads the real clock.
        let set = KeySet::generate_in_memory().unwrap();
        let now = unix_now();
        let token = set.sign(&claims(&set, now)).unwrap();
        let published = set.jwks_json().to_owned();
        drop(set);

        let jwks = Jwks::from_json(&published).unwrap();
        let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
        let key = jwks.find(&kid).unwrap().decoding_key().unwrap();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&["room-1"]);
        validation.set_issuer(&["pace"]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        let data = jsonwebtoken::decode::<AdmissionClaims>(&token, &key, &validation).unwrap();
        assert_eq!(data.claims.sub, "device-1");

        // The same, from the library's standard JWK types.
        let set: JwkSet = serde_json::from_str(&published).unwrap();
        let jwk = set.find(&kid).unwrap();
        let key = DecodingKey::from_jwk(jwk).unwrap();
        assert!(jsonwebtoken::decode::<AdmissionClaims>(&token, &key, &validation).is_ok());
    }

    #[test]
    fn tampered_payload_is_rejected() {
        let (_d, _p, set) = key_set();
        let token = set.sign(&claims(&set, T0)).unwrap();
        let p = parts(&token);

        // Re-encode the payload with another room, keep the signature.
        let mut payload: serde_json::Value = serde_json::from_slice(&b64url_decode(p[1])).unwrap();
        payload["aud"] = "room-2".into();
        let forged = format!(
            "{}.{}.{}",
            p[0],
            b64url(payload.to_string().as_bytes()),
            p[2]
        );
        assert_eq!(
            set.verify(&forged, Some("room-2"), T0),
            Err(VerifyError::BadSignature)
        );

        // Flip one signature character.
        let mut sig = p[2].to_owned();
        let last = if sig.ends_with('A') { "B" } else { "A" };
        sig.replace_range(sig.len() - 1.., last);
        let forged = format!("{}.{}.{sig}", p[0], p[1]);
        assert!(matches!(
            set.verify(&forged, None, T0),
            Err(VerifyError::BadSignature | VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn expiry_and_not_before_honour_the_leeway() {
        let (_d, _p, set) = key_set();
        let set = set.with_leeway(Duration::from_secs(5));
        let token = set.sign(&claims(&set, T0)).unwrap();
        let exp = T0 + 600;
        assert!(set.verify(&token, None, exp - 1).is_ok());
        assert!(set.verify(&token, None, exp + 4).is_ok());
        assert_eq!(
            set.verify(&token, None, exp + 5),
            Err(VerifyError::Expired { exp, now: exp + 5 })
        );
        assert!(matches!(
            set.verify(&token, None, exp + 3600),
            Err(VerifyError::Expired { .. })
        ));
        // Issued "in the future": tolerated within the leeway only.
        assert!(set.verify(&token, None, T0 - 5).is_ok());
        assert_eq!(
            set.verify(&token, None, T0 - 6),
            Err(VerifyError::NotYetValid {
                iat: T0,
                now: T0 - 6
            })
        );
    }

    #[test]
    fn wrong_room_and_wrong_issuer_are_rejected() {
        let (_d, _p, set) = key_set();
        let token = set.sign(&claims(&set, T0)).unwrap();
        let err = set.verify(&token, Some("room-2"), T0).unwrap_err();
        assert_eq!(
            err,
            VerifyError::WrongAudience {
                expected: "room-2".into(),
                found: "room-1".into()
            }
        );
        assert_eq!(err.code(), "wrong_audience");

        let other_issuer = set.clone().with_issuer("someone-else");
        assert!(matches!(
            other_issuer.verify(&token, Some("room-1"), T0),
            Err(VerifyError::WrongIssuer { .. })
        ));
    }

    #[test]
    fn a_key_outside_the_set_is_rejected() {
        let (_d, _p, set) = key_set();
        let stranger = KeySet::generate_in_memory().unwrap();
        let token = stranger.sign(&claims(&stranger, T0)).unwrap();
        assert_eq!(
            set.verify(&token, None, T0),
            Err(VerifyError::UnknownKid(stranger.newest_kid().to_owned()))
        );

        // A stranger's signature under one of our kids is a bad signature.
        let p = parts(&token);
        let ours = set.sign(&claims(&set, T0)).unwrap();
        let forged = format!("{}.{}.{}", parts(&ours)[0], p[1], p[2]);
        assert_eq!(
            set.verify(&forged, None, T0),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn rotation_newest_signs_old_tokens_still_verify_until_retired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let old = generate_into_at(&path, T0 - 100, Duration::ZERO).unwrap();
        let before = KeySet::load(&path).unwrap();
        let old_token = before.sign(&claims(&before, T0)).unwrap();

        let new = generate_into_at(&path, T0 - 50, Duration::ZERO).unwrap();
        let after = KeySet::load(&path).unwrap();
        assert_eq!(after.newest_kid(), new);
        let new_token = after.sign(&claims(&after, T0)).unwrap();
        let kid_of = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid.unwrap();
        assert_eq!(kid_of(&old_token), old);
        assert_eq!(kid_of(&new_token), new);
        assert!(after.verify(&old_token, Some("room-1"), T0).is_ok());
        assert!(after.verify(&new_token, Some("room-1"), T0).is_ok());

        let jwks = Jwks::from_json(after.jwks_json()).unwrap();
        let kids: Vec<_> = jwks.keys.iter().map(|k| k.kid.as_str()).collect();
        assert_eq!(kids, vec![new.as_str(), old.as_str()]);

        retire_at(&path, &old, T0).unwrap();
        let retired = KeySet::load(&path).unwrap();
        assert_eq!(
            retired.verify(&old_token, None, T0),
            Err(VerifyError::UnknownKid(old.clone()))
        );
        assert!(retired.verify(&new_token, None, T0).is_ok());
        assert!(!retired.jwks_json().contains(&old));
    }

    #[test]
    fn pending_key_is_not_used_to_sign_but_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let old = generate_into_at(&path, T0 - 100, Duration::ZERO).unwrap();
        let new = generate_into_at(&path, T0, Duration::from_secs(3600)).unwrap();
        let set = KeySet::load(&path).unwrap();
        let kid_of = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid.unwrap();
        let early = set.sign(&claims(&set, T0 + 10)).unwrap();
        assert_eq!(kid_of(&early), old);
        let late = set.sign(&claims(&set, T0 + 3600)).unwrap();
        assert_eq!(kid_of(&late), new);
        assert!(set.verify(&late, None, T0 + 3600).is_ok());

        // Only a pending key: nothing can sign yet.
        let dir2 = tempfile::tempdir().unwrap();
        let path2 = dir2.path().join("keys.json");
        generate_into_at(&path2, T0, Duration::from_secs(60)).unwrap();
        let pending_only = KeySet::load(&path2).unwrap();
        assert!(matches!(
            pending_only.sign(&claims(&pending_only, T0)),
            Err(TokenError::NoActiveKey { at: T0 })
        ));
    }

    #[test]
    fn alg_none_and_hs256_forgeries_are_rejected() {
        let (_d, _p, set) = key_set();
        let kid = set.newest_kid().to_owned();
        let c = claims(&set, T0);
        let payload = b64url(serde_json::to_string(&c).unwrap().as_bytes());

        // alg none, with and without a signature part.
        let none_header =
            b64url(format!(r#"{{"alg":"none","typ":"JWT","kid":"{kid}"}}"#).as_bytes());
        for forged in [
            format!("{none_header}.{payload}."),
            format!("{none_header}.{payload}"),
        ] {
            let err = set.verify(&forged, Some("room-1"), T0).unwrap_err();
            assert!(
                matches!(
                    err,
                    VerifyError::DisallowedAlgorithm(_) | VerifyError::Malformed(_)
                ),
                "{err:?}"
            );
        }
        let err = set
            .verify(&format!("{none_header}.{payload}."), None, T0)
            .unwrap_err();
        assert_eq!(err.code(), "disallowed_algorithm");

        // HS256 keyed with the public key bytes (classic confusion) and with
        // the public key text, under our kid.
        let jwk = Jwks::from_json(set.jwks_json()).unwrap().keys[0].clone();
        for secret in [b64url_decode(&jwk.x), jwk.x.as_bytes().to_vec()] {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(kid.clone());
            let forged =
                jsonwebtoken::encode(&header, &c, &EncodingKey::from_secret(&secret)).unwrap();
            assert_eq!(
                set.verify(&forged, Some("room-1"), T0),
                Err(VerifyError::DisallowedAlgorithm("HS256".into()))
            );
        }
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let (_d, _p, set) = key_set();
        for junk in [
            "",
            "abc",
            "a.b",
            "a.b.c",
            "....",
            "eyJhbGciOiJFZERTQSJ9.e30.AAAA",
        ] {
            let err = set.verify(junk, None, T0).unwrap_err();
            assert!(
                matches!(err, VerifyError::Malformed(_) | VerifyError::MissingKid),
                "{junk:?}: {err:?}"
            );
        }
        // Valid header and signature, but claims missing fields.
        let kid = set.newest_kid().to_owned();
        let key = set.key(&kid).unwrap();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid);
        let token =
            jsonwebtoken::encode(&header, &serde_json::json!({"sub":"x"}), &key.encoding).unwrap();
        assert!(matches!(
            set.verify(&token, None, T0),
            Err(VerifyError::Malformed(_))
        ));
    }

    fn es256_set(dir: &std::path::Path) -> (std::path::PathBuf, KeySet) {
        use crate::admission::{KeyAlg, generate_alg_into_at};
        let path = dir.join("keys.json");
        generate_alg_into_at(&path, KeyAlg::Es256, T0 - 100, Duration::ZERO).unwrap();
        let set = KeySet::load(&path).unwrap();
        (path, set)
    }

    #[test]
    fn es256_round_trip_and_stock_jwks_verification() {
        let dir = tempfile::tempdir().unwrap();
        let (_path, set) = es256_set(dir.path());
        let token = set.sign(&claims(&set, T0)).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some(set.newest_kid()));
        assert!(set.verify(&token, Some("room-1"), T0 + 1).is_ok());

        // A site with only the published JWKS and a stock library.
        let jwks: JwkSet = serde_json::from_str(set.jwks_json()).unwrap();
        let jwk = jwks.find(set.newest_kid()).unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&["room-1"]);
        validation.validate_exp = false;
        let key = DecodingKey::from_jwk(jwk).unwrap();
        assert!(jsonwebtoken::decode::<AdmissionClaims>(&token, &key, &validation).is_ok());
        // Ours, from the same document.
        let ours = Jwks::from_json(set.jwks_json()).unwrap();
        let entry = ours.find(set.newest_kid()).unwrap();
        assert_eq!((entry.kty.as_str(), entry.alg.as_str()), ("EC", "ES256"));
        let key = entry.decoding_key().unwrap();
        assert!(jsonwebtoken::decode::<AdmissionClaims>(&token, &key, &validation).is_ok());
    }

    #[test]
    fn migration_signs_with_the_chosen_alg_and_verifies_both() {
        use crate::admission::{KeyAlg, generate_alg_into_at};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let ed = generate_alg_into_at(&path, KeyAlg::EdDsa, T0 - 100, Duration::ZERO).unwrap();
        let kid_of = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid.unwrap();

        // Only EdDSA keys: a node told to sign ES256 refuses to start.
        let err = KeySet::load(&path)
            .unwrap()
            .signing_with(KeyAlg::Es256, &path)
            .unwrap_err();
        assert!(err.to_string().contains("--alg ES256"), "{err}");

        let before = KeySet::load(&path).unwrap();
        let old_token = before.sign(&claims(&before, T0)).unwrap();
        // An ES256 key is added (older than nothing: newest), but a node
        // still on EdDSA keeps signing EdDSA.
        let es = generate_alg_into_at(&path, KeyAlg::Es256, T0 - 50, Duration::ZERO).unwrap();
        let still_ed = KeySet::load(&path)
            .unwrap()
            .signing_with(KeyAlg::EdDsa, &path)
            .unwrap();
        assert_eq!(kid_of(&still_ed.sign(&claims(&still_ed, T0)).unwrap()), ed);
        let on_es = KeySet::load(&path)
            .unwrap()
            .signing_with(KeyAlg::Es256, &path)
            .unwrap();
        let new_token = on_es.sign(&claims(&on_es, T0)).unwrap();
        assert_eq!(kid_of(&new_token), es);
        assert_eq!(
            jsonwebtoken::decode_header(&new_token).unwrap().alg,
            Algorithm::ES256
        );
        // Both verify on either node during the overlap.
        for set in [&still_ed, &on_es] {
            assert!(set.verify(&old_token, Some("room-1"), T0).is_ok());
            assert!(set.verify(&new_token, Some("room-1"), T0).is_ok());
        }
        let jwks = Jwks::from_json(on_es.jwks_json()).unwrap();
        let algs: Vec<_> = jwks.keys.iter().map(|k| k.alg.as_str()).collect();
        assert_eq!(algs, vec!["ES256", "EdDSA"]);
    }

    #[test]
    fn es256_forgeries_are_rejected() {
        use p256::pkcs8::DecodePublicKey;
        let dir = tempfile::tempdir().unwrap();
        let (_path, set) = es256_set(dir.path());
        let kid = set.newest_kid().to_owned();
        let c = claims(&set, T0);
        let pem = set.es256_public_pems()[0].1.clone();
        assert!(p256::PublicKey::from_public_key_pem(&pem).is_ok());

        // HS256 keyed with the public PEM (what a confused gateway would use)
        // and with the JWK's x.
        let jwk = Jwks::from_json(set.jwks_json()).unwrap().keys[0].clone();
        for secret in [pem.as_bytes().to_vec(), jwk.x.as_bytes().to_vec()] {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(kid.clone());
            let forged =
                jsonwebtoken::encode(&header, &c, &EncodingKey::from_secret(&secret)).unwrap();
            assert_eq!(
                set.verify(&forged, Some("room-1"), T0),
                Err(VerifyError::DisallowedAlgorithm("HS256".into()))
            );
        }
        // The header relabelled EdDSA under the ES256 kid.
        let token = set.sign(&c).unwrap();
        let p = parts(&token);
        let header = b64url(format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{kid}"}}"#).as_bytes());
        let forged = format!("{header}.{}.{}", p[1], p[2]);
        let err = set.verify(&forged, None, T0).unwrap_err();
        assert_eq!(err.code(), "disallowed_algorithm", "{err:?}");
        // Tampered payload.
        let mut payload: serde_json::Value = serde_json::from_slice(&b64url_decode(p[1])).unwrap();
        payload["aud"] = "room-2".into();
        let forged = format!(
            "{}.{}.{}",
            p[0],
            b64url(payload.to_string().as_bytes()),
            p[2]
        );
        assert_eq!(
            set.verify(&forged, Some("room-2"), T0),
            Err(VerifyError::BadSignature)
        );
    }
}
