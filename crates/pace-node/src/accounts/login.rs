//! The admin token `POST /api/v1/admin/login` hands out, and the login
//! rules (the handler is [`crate::http::routes::admin::login`]).
//!
//! The body is `{"tenant", "user", "password"}`. The answer is 200
//! `{"token", "expires_at"}` with an EdDSA JWT signed by the node's
//! admission [`KeySet`] (so every node of a cluster verifies it), sent as
//! `Authorization: Bearer` to the admin API. A wrong tenant, user or
//! password all get the same 401 `invalid_credentials`, after the same
//! argon2 work (a dummy hash stands in for a missing user). Past
//! [`MAX_FAILED_LOGINS`] attempts on one account within [`LOGIN_WINDOW`],
//! every attempt gets 429 `too_many_attempts` with `Retry-After` until the
//! window ends, even with the right password (see the module docs of
//! [`super`] for how attempts are counted).
//!
//! # Admin token
//!
//! Header `{"typ":"pace-admin+jwt","alg":"EdDSA","kid":…}`; claims `iss`
//! (the key set's issuer), `aud` (`pace-admin`), `sub` (user name),
//! `tenant`, `iat`, `exp` (`iat + --admin-token-ttl`) and `jti` (a random
//! UUID). [`verify_admin_token`] accepts only EdDSA, a kid of the key set,
//! the admin `typ` and audience, our issuer, and an unexpired token (with
//! the key set's leeway), so an admission token is never an admin token.
//!
//! Neither the password nor a hash is ever logged or returned: the body is
//! read as JSON without echoing parse errors that could quote it, and the
//! secret types redact themselves.

use std::time::Duration;

use http::{HeaderMap, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{TenantId, UserName, unix_now};
use crate::admission::{KeySet, TokenError};

/// `aud` of admin tokens.
pub const ADMIN_AUDIENCE: &str = "pace/admin";

/// `typ` header of admin tokens (admission tokens say `JWT`).
pub const ADMIN_TOKEN_TYPE: &str = "pace-admin+jwt";

/// Login attempts allowed per account within [`LOGIN_WINDOW`]; further
/// attempts are refused (429) until the window ends.
pub const MAX_FAILED_LOGINS: u32 = 5;

/// The window of the per-account attempt limit, from its first attempt.
pub const LOGIN_WINDOW: Duration = Duration::from_secs(15 * 60);

/// The claims of an admin token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminClaims {
    /// Issuer: the key set's (`--token-issuer`).
    pub iss: String,
    /// Audience: always [`ADMIN_AUDIENCE`].
    pub aud: String,
    /// Subject: the admin user's name.
    pub sub: UserName,
    /// The tenant the user administers; the admin API must limit the
    /// token to it.
    pub tenant: TenantId,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Token id (random UUID), for audit logs and revocation lists.
    pub jti: String,
}

/// Why an admin token was refused. [`AdminTokenError::code`] is a stable
/// short name for metrics and logs; no variant quotes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminTokenError {
    /// No `Authorization: Bearer` header.
    #[error("no bearer token")]
    Missing,
    /// Not a JWT, or its header or claims do not parse.
    #[error("malformed admin token: {0}")]
    Malformed(String),
    /// Not EdDSA (`none`, HS256, …).
    #[error("admin token uses a disallowed algorithm {0}")]
    DisallowedAlgorithm(String),
    /// The `typ` header is not [`ADMIN_TOKEN_TYPE`] (e.g. an admission token).
    #[error("not an admin token (typ {0:?})")]
    WrongType(Option<String>),
    /// No `kid` header.
    #[error("admin token has no kid")]
    MissingKid,
    /// The `kid` is not in the key set.
    #[error("admin token kid {0:?} is not a known key")]
    UnknownKid(String),
    /// The signature does not match.
    #[error("admin token signature is invalid")]
    BadSignature,
    /// `aud` is not [`ADMIN_AUDIENCE`].
    #[error("admin token audience {0:?} is not {ADMIN_AUDIENCE:?}")]
    WrongAudience(String),
    /// `iss` is not the key set's issuer.
    #[error("admin token issuer {0:?} is not ours")]
    WrongIssuer(String),
    /// `exp` (plus leeway) has passed.
    #[error("admin token expired at {exp} (now {now})")]
    Expired {
        /// The token's expiry.
        exp: u64,
        /// The verifier's clock.
        now: u64,
    },
    /// `iat` is in the future by more than the leeway.
    #[error("admin token is not valid before {iat} (now {now})")]
    NotYetValid {
        /// The token's issue time.
        iat: u64,
        /// The verifier's clock.
        now: u64,
    },
}

impl AdminTokenError {
    /// A stable snake_case name for the error kind.
    pub fn code(&self) -> &'static str {
        match self {
            AdminTokenError::Missing => "missing",
            AdminTokenError::Malformed(_) => "malformed",
            AdminTokenError::DisallowedAlgorithm(_) => "disallowed_algorithm",
            AdminTokenError::WrongType(_) => "wrong_type",
            AdminTokenError::MissingKid => "missing_kid",
            AdminTokenError::UnknownKid(_) => "unknown_kid",
            AdminTokenError::BadSignature => "bad_signature",
            AdminTokenError::WrongAudience(_) => "wrong_audience",
            AdminTokenError::WrongIssuer(_) => "wrong_issuer",
            AdminTokenError::Expired { .. } => "expired",
            AdminTokenError::NotYetValid { .. } => "not_yet_valid",
        }
    }
}

/// Signs an admin token for `user` of `tenant`, issued at `now` (unix
/// seconds) and valid for `ttl` (whole seconds).
pub fn sign_admin_token(
    keys: &KeySet,
    tenant: &TenantId,
    user: &UserName,
    now: u64,
    ttl: Duration,
) -> Result<(String, AdminClaims), TokenError> {
    let claims = AdminClaims {
        iss: keys.issuer().to_owned(),
        aud: ADMIN_AUDIENCE.to_owned(),
        sub: user.clone(),
        tenant: tenant.clone(),
        iat: now,
        exp: now.saturating_add(ttl.as_secs()),
        jti: uuid::Uuid::new_v4().to_string(),
    };
    if claims.exp <= claims.iat {
        return Err(TokenError::InvalidLifetime {
            iat: claims.iat,
            exp: claims.exp,
        });
    }
    let key = keys
        .signing_key(now)
        .ok_or(TokenError::NoActiveKey { at: now })?;
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some(ADMIN_TOKEN_TYPE.to_owned());
    header.kid = Some(key.kid.clone());
    let token =
        jsonwebtoken::encode(&header, &claims, &key.encoding).map_err(TokenError::Encode)?;
    Ok((token, claims))
}

/// Verifies an admin token now. For the admin API: take the token from
/// `Authorization: Bearer` ([`admin_from_headers`] does both) and then
/// restrict the request to `claims.tenant`.
pub fn verify_admin_token(keys: &KeySet, token: &str) -> Result<AdminClaims, AdminTokenError> {
    verify_admin_token_at(keys, token, unix_now())
}

/// [`verify_admin_token`] at `now` (unix seconds).
pub fn verify_admin_token_at(
    keys: &KeySet,
    token: &str,
    now: u64,
) -> Result<AdminClaims, AdminTokenError> {
    let header = jsonwebtoken::decode_header(token)
        .map_err(|e| AdminTokenError::Malformed(e.to_string()))?;
    if header.alg != Algorithm::EdDSA {
        return Err(AdminTokenError::DisallowedAlgorithm(format!(
            "{:?}",
            header.alg
        )));
    }
    if header.typ.as_deref() != Some(ADMIN_TOKEN_TYPE) {
        return Err(AdminTokenError::WrongType(header.typ));
    }
    let kid = header.kid.ok_or(AdminTokenError::MissingKid)?;
    let key = keys
        .key(&kid)
        .ok_or_else(|| AdminTokenError::UnknownKid(kid.clone()))?;
    // The library checks algorithm and signature; claims are checked here
    // against the given clock.
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<AdminClaims>(token, &key.decoding, &validation)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => AdminTokenError::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                AdminTokenError::DisallowedAlgorithm(e.to_string())
            }
            _ => AdminTokenError::Malformed(e.to_string()),
        })?
        .claims;
    if claims.aud != ADMIN_AUDIENCE {
        return Err(AdminTokenError::WrongAudience(claims.aud));
    }
    if claims.iss != keys.issuer() {
        return Err(AdminTokenError::WrongIssuer(claims.iss));
    }
    let times = crate::token_time::TimeClaims {
        iat: Some(claims.iat),
        nbf: None,
        exp: Some(claims.exp),
    };
    crate::token_time::check(times, now, keys.leeway().as_secs()).map_err(|e| match e {
        crate::token_time::TimeError::NotYetValid { at, now } => {
            AdminTokenError::NotYetValid { iat: at, now }
        }
        crate::token_time::TimeError::Expired { exp, now } => AdminTokenError::Expired { exp, now },
    })?;
    Ok(claims)
}

/// The admin claims of a request: its `Authorization: Bearer` token,
/// verified now.
pub fn admin_from_headers(
    keys: &KeySet,
    headers: &HeaderMap,
) -> Result<AdminClaims, AdminTokenError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(AdminTokenError::Missing)?;
    verify_admin_token(keys, token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::AdmissionClaims;
    use http::HeaderValue;

    const T0: u64 = 1_800_000_000;
    const TTL: Duration = Duration::from_secs(900);

    fn keys() -> KeySet {
        KeySet::generate_in_memory().unwrap()
    }

    fn ids() -> (TenantId, UserName) {
        (
            TenantId::parse("acme").unwrap(),
            UserName::parse("alice").unwrap(),
        )
    }

    #[test]
    fn admin_tokens_round_trip() {
        let k = keys();
        let (t, u) = ids();
        let (token, claims) = sign_admin_token(&k, &t, &u, T0, TTL).unwrap();
        assert_eq!(claims.exp, T0 + 900);
        assert_eq!(claims.aud, "pace/admin");
        assert_eq!(claims.iss, "pace");
        let got = verify_admin_token_at(&k, &token, T0 + 1).unwrap();
        assert_eq!(got, claims);
        assert_eq!(got.tenant, t);
        assert_eq!(got.sub, u);
        let h = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(h.typ.as_deref(), Some(ADMIN_TOKEN_TYPE));
        assert_eq!(h.kid.as_deref(), Some(k.newest_kid()));
        // A fresh jti each time.
        let (_, again) = sign_admin_token(&k, &t, &u, T0, TTL).unwrap();
        assert_ne!(again.jti, claims.jti);
        // Now-based verification of a token signed now.
        let (now_token, _) = sign_admin_token(&k, &t, &u, unix_now(), TTL).unwrap();
        assert!(verify_admin_token(&k, &now_token).is_ok());
        // Never an admission token, whatever room the verifier names.
        for room in [None, Some("pace/admin"), Some("acme")] {
            assert!(k.verify(&token, room, T0 + 1).is_err(), "{room:?}");
        }
    }

    #[test]
    fn expired_foreign_and_other_tokens_are_refused() {
        let k = keys();
        let (t, u) = ids();
        let (token, _) = sign_admin_token(&k, &t, &u, T0, TTL).unwrap();
        let leeway = k.leeway().as_secs();
        assert!(matches!(
            verify_admin_token_at(&k, &token, T0 + 900 + leeway),
            Err(AdminTokenError::Expired { .. })
        ));
        assert!(matches!(
            verify_admin_token_at(&k, &token, T0 - leeway - 1),
            Err(AdminTokenError::NotYetValid { .. })
        ));
        // Another key set.
        let stranger = keys();
        assert!(matches!(
            verify_admin_token_at(&stranger, &token, T0),
            Err(AdminTokenError::UnknownKid(_))
        ));
        // Another issuer.
        let other = k.clone().with_issuer("elsewhere");
        assert!(matches!(
            verify_admin_token_at(&other, &token, T0),
            Err(AdminTokenError::WrongIssuer(_))
        ));
        // An admission token, even for a room named like the audience.
        let admission = k
            .sign(&AdmissionClaims::new(
                "pace",
                ADMIN_AUDIENCE,
                "alice",
                "s",
                T0,
                TTL,
            ))
            .unwrap();
        assert!(matches!(
            verify_admin_token_at(&k, &admission, T0),
            Err(AdminTokenError::WrongType(_))
        ));
        // Tampered claims.
        let parts: Vec<&str> = token.split('.').collect();
        let (mallory, _) =
            sign_admin_token(&k, &t, &UserName::parse("mallory").unwrap(), T0, TTL).unwrap();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            mallory.split('.').nth(1).unwrap(),
            parts[2]
        );
        assert_eq!(
            verify_admin_token_at(&k, &forged, T0),
            Err(AdminTokenError::BadSignature)
        );
        for junk in ["", "a.b.c", "not a token"] {
            assert!(verify_admin_token_at(&k, junk, T0).is_err(), "{junk}");
        }
        assert!(sign_admin_token(&k, &t, &u, T0, Duration::ZERO).is_err());
    }

    #[test]
    fn bearer_headers_are_read() {
        let k = keys();
        let (t, u) = ids();
        let (token, _) = sign_admin_token(&k, &t, &u, unix_now(), TTL).unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(admin_from_headers(&k, &h), Err(AdminTokenError::Missing));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        assert_eq!(admin_from_headers(&k, &h).unwrap().tenant, t);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(admin_from_headers(&k, &h), Err(AdminTokenError::Missing));
    }
}
