//! Device tokens: ours (EdDSA, signed with the cluster's key set) and an
//! enterprise issuer's (its JWKS, `iss` and `aud` configured).
//!
//! Our tokens carry `aud` `pace/device` — no room id can contain `/`, so a
//! device token never passes as an admission token — and `typ`
//! `pace-device+jwt`. The algorithm is decided by the key, never by the
//! token: `alg: none`, HMAC, and keys outside the configured sets fail.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use pace_protocol::DeviceId;
use serde::{Deserialize, Serialize};

use super::DeviceInfo;
use crate::admission::{KeySet, TokenError};
use crate::token_time::{self, TimeClaims, TimeError};

/// `aud` of our device tokens.
pub const DEVICE_AUDIENCE: &str = "pace/device";
/// `typ` header of our device tokens.
pub const DEVICE_TOKEN_TYPE: &str = "pace-device+jwt";
/// Clock leeway for an external issuer's time claims, seconds (ours use
/// the key set's leeway; both are `DEFAULT_LEEWAY` unless a test says).
const LEEWAY_SECS: u64 = crate::admission::DEFAULT_LEEWAY.as_secs();

/// The claims of a device token we issue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceClaims {
    /// Issuer (the key set's).
    pub iss: String,
    /// Always [`DEVICE_AUDIENCE`].
    pub aud: String,
    /// The device id.
    pub sub: String,
    /// The person using the device, when it registered one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The tenant it registered with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Token id: the registry's current token for the device.
    pub jti: String,
}

/// Why a device token is refused. The handshake answers 401 with
/// [`DeviceTokenError::code`]; no variant quotes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceTokenError {
    /// No `Authorization: Bearer` header and no `token` query parameter.
    #[error("no device token: register at POST /api/v1/devices/register and send the token")]
    Missing,
    /// Not a token we (or the configured issuer) signed, or malformed.
    #[error("device token not valid: {0}")]
    Invalid(&'static str),
    /// Past its expiry: register again (refresh) for a new one.
    #[error("device token expired; refresh it at POST /api/v1/devices/register")]
    Expired,
    /// Valid, but for another device id than the handshake names.
    #[error("device token belongs to another device")]
    Mismatch,
}

impl DeviceTokenError {
    /// The error code (also the metrics reason).
    pub fn code(&self) -> pace_protocol::ErrorCode {
        use pace_protocol::ErrorCode;
        match self {
            DeviceTokenError::Missing => ErrorCode::MissingDeviceToken,
            DeviceTokenError::Invalid(_) | DeviceTokenError::Expired => {
                ErrorCode::InvalidDeviceToken
            }
            DeviceTokenError::Mismatch => ErrorCode::DeviceTokenMismatch,
        }
    }
}

/// Signs a token for a registration, valid `ttl` from `now`.
pub fn issue(
    keys: &KeySet,
    info: &DeviceInfo,
    now: u64,
    ttl: Duration,
) -> Result<(String, DeviceClaims), TokenError> {
    let claims = DeviceClaims {
        iss: keys.issuer().to_owned(),
        aud: DEVICE_AUDIENCE.to_owned(),
        sub: info.device_id.to_string(),
        user: info.user.clone(),
        tenant: info.tenant.clone(),
        iat: now,
        exp: now.saturating_add(ttl.as_secs()),
        jti: uuid::Uuid::new_v4().simple().to_string(),
    };
    let token = keys.sign_claims_typed(&claims, now, DEVICE_TOKEN_TYPE)?;
    Ok((token, claims))
}

/// Verifies one of our device tokens at `now`; expiry is not checked when
/// `allow_expired` (a refresh proves possession; the registry checks that
/// it is the current token).
pub fn verify_own(
    keys: &KeySet,
    token: &str,
    now: u64,
    allow_expired: bool,
) -> Result<DeviceClaims, DeviceTokenError> {
    let header =
        jsonwebtoken::decode_header(token).map_err(|_| DeviceTokenError::Invalid("malformed"))?;
    if header.typ.as_deref() != Some(DEVICE_TOKEN_TYPE) {
        return Err(DeviceTokenError::Invalid("not a device token"));
    }
    let claims: DeviceClaims = keys
        .decode_claims(token)
        .map_err(|_| DeviceTokenError::Invalid("not signed by this cluster"))?;
    if claims.aud != DEVICE_AUDIENCE || claims.iss != keys.issuer() {
        return Err(DeviceTokenError::Invalid(
            "not a device token of this cluster",
        ));
    }
    let times = TimeClaims {
        iat: Some(claims.iat),
        nbf: None,
        exp: (!allow_expired).then_some(claims.exp),
    };
    token_time::check(times, now, keys.leeway().as_secs()).map_err(refused_by_time)?;
    Ok(claims)
}

/// The device token error for a refusal by [`token_time::check`].
fn refused_by_time(e: TimeError) -> DeviceTokenError {
    match e {
        TimeError::NotYetValid { .. } => DeviceTokenError::Invalid("issued in the future"),
        TimeError::Expired { .. } => DeviceTokenError::Expired,
    }
}

/// A numeric date claim (`iat`, `nbf`, `exp`): absent is `Ok(None)`; a
/// value that is no non-negative number is malformed.
fn numeric_date(
    claims: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<Option<u64>, DeviceTokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| {
                // RFC 7519 allows fractional seconds.
                v.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .map(Some)
            .ok_or(DeviceTokenError::Invalid("a time claim is not a number")),
    }
}

/// An enterprise's device token issuer: its public keys (JWKS), `iss`
/// and `aud`. Its tokens' `sub` is the device id.
pub struct ExternalIssuer {
    keys: HashMap<String, (DecodingKey, Algorithm)>,
    issuer: String,
    audience: String,
    /// The claim listing the device's groups.
    groups_claim: String,
}

impl std::fmt::Debug for ExternalIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalIssuer")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The claims we read from an external token: `sub` and, under the
/// configured name, the groups.
#[derive(Deserialize)]
struct ExternalClaims {
    sub: String,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

/// What an external issuer's token says of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalDevice {
    /// The device id (`sub`).
    pub sub: String,
    /// Group names from the groups claim (a JSON array of strings, or one
    /// string separated by spaces or commas), unvalidated.
    pub groups: Vec<String>,
    /// Issued at (`iat`), when the token says (for the deny-list).
    pub iat: Option<u64>,
}

/// Who a device token proved the device to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// One of our tokens.
    Ours(DeviceClaims),
    /// The external issuer's.
    External(ExternalDevice),
}

impl ExternalIssuer {
    /// Reads the issuer's JWKS from `path`. Every key needs a `kid`;
    /// symmetric (`oct`) keys are refused; a key without `alg` gets the
    /// usual one for its type (RSA: RS256, P-256: ES256, P-384: ES384,
    /// Ed25519: EdDSA).
    pub fn load(path: &Path, issuer: &str, audience: &str) -> Result<ExternalIssuer, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        ExternalIssuer::from_jwks(&text, issuer, audience)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Like [`ExternalIssuer::load`], from the JWKS text.
    pub fn from_jwks(jwks: &str, issuer: &str, audience: &str) -> Result<ExternalIssuer, String> {
        if issuer.is_empty() || audience.is_empty() {
            return Err("an external issuer needs both an issuer and an audience".into());
        }
        let set: JwkSet = serde_json::from_str(jwks).map_err(|e| format!("not a JWKS: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone().ok_or("every key needs a kid")?;
            let alg = match (jwk.common.key_algorithm, &jwk.algorithm) {
                (_, AlgorithmParameters::OctetKey(_)) => {
                    return Err(format!("key {kid}: symmetric keys are not accepted"));
                }
                (Some(KeyAlgorithm::HS256 | KeyAlgorithm::HS384 | KeyAlgorithm::HS512), _) => {
                    return Err(format!("key {kid}: HMAC is not accepted"));
                }
                (Some(a), _) => Algorithm::try_from(a).map_err(|e| format!("key {kid}: {e}"))?,
                (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
                (None, AlgorithmParameters::EllipticCurve(p)) => match p.curve {
                    EllipticCurve::P256 => Algorithm::ES256,
                    EllipticCurve::P384 => Algorithm::ES384,
                    _ => return Err(format!("key {kid}: unsupported curve")),
                },
                (None, AlgorithmParameters::OctetKeyPair(_)) => Algorithm::EdDSA,
                (None, _) => return Err(format!("key {kid}: unsupported key type")),
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {kid}: {e}"))?;
            keys.insert(kid, (key, alg));
        }
        if keys.is_empty() {
            return Err("the JWKS has no keys".into());
        }
        Ok(ExternalIssuer {
            keys,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            groups_claim: "groups".to_owned(),
        })
    }

    /// Reads the device's groups from `claim` instead of `groups`.
    pub fn with_groups_claim(mut self, claim: &str) -> ExternalIssuer {
        self.groups_claim = claim.to_owned();
        self
    }

    /// Verifies a token of this issuer at `now` (key by `kid`, its
    /// algorithm only, `iss`, `aud`, and `iat`/`nbf`/`exp` by the one time
    /// rule, [`token_time::check`], with 5 s leeway); returns its `sub` and
    /// groups.
    pub fn verify(&self, token: &str, now: u64) -> Result<ExternalDevice, DeviceTokenError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| DeviceTokenError::Invalid("malformed"))?;
        let kid = header.kid.ok_or(DeviceTokenError::Invalid("no kid"))?;
        let (key, alg) = self
            .keys
            .get(&kid)
            .ok_or(DeviceTokenError::Invalid("unknown key"))?;
        if header.alg != *alg {
            return Err(DeviceTokenError::Invalid(
                "algorithm does not match the key",
            ));
        }
        let mut validation = Validation::new(*alg);
        // Times are checked below by the one rule every token kind shares.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        match jsonwebtoken::decode::<ExternalClaims>(token, key, &validation) {
            Ok(data) => {
                let rest = &data.claims.rest;
                let times = TimeClaims {
                    iat: numeric_date(rest, "iat")?,
                    nbf: numeric_date(rest, "nbf")?,
                    exp: Some(
                        numeric_date(rest, "exp")?.ok_or(DeviceTokenError::Invalid("no exp"))?,
                    ),
                };
                token_time::check(times, now, LEEWAY_SECS).map_err(refused_by_time)?;
                let groups = match data.claims.rest.get(&self.groups_claim) {
                    Some(serde_json::Value::Array(items)) => items
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect(),
                    Some(serde_json::Value::String(s)) => s
                        .split([' ', ','])
                        .filter(|p| !p.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    _ => Vec::new(),
                };
                Ok(ExternalDevice {
                    sub: data.claims.sub,
                    groups,
                    iat: times.iat,
                })
            }
            Err(_) => Err(DeviceTokenError::Invalid(
                "not accepted from the configured issuer",
            )),
        }
    }
}

/// Checks a device token against the device id it names: ours first,
/// then the external issuer's.
pub fn authenticate(
    keys: &KeySet,
    external: Option<&ExternalIssuer>,
    token: &str,
    device: &DeviceId,
    now: u64,
) -> Result<Verified, DeviceTokenError> {
    let is_ours = jsonwebtoken::decode_header(token)
        .ok()
        .is_some_and(|h: Header| h.typ.as_deref() == Some(DEVICE_TOKEN_TYPE));
    if is_ours || external.is_none() {
        let claims = verify_own(keys, token, now, false)?;
        if claims.sub != device.as_str() {
            return Err(DeviceTokenError::Mismatch);
        }
        return Ok(Verified::Ours(claims));
    }
    let Some(external) = external else {
        return Err(DeviceTokenError::Invalid("unknown issuer"));
    };
    let found = external.verify(token, now)?;
    if found.sub != device.as_str() {
        return Err(DeviceTokenError::Mismatch);
    }
    Ok(Verified::External(found))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::unix_now;

    fn info(id: &str) -> DeviceInfo {
        DeviceInfo {
            device_id: DeviceId::parse(id).unwrap(),
            kind: "laptop".into(),
            model: String::new(),
            os: String::new(),
            os_version: String::new(),
            app_version: String::new(),
            department: None,
            user: Some("alice".into()),
            tenant: None,
        }
    }

    #[test]
    fn our_tokens_bind_the_device() {
        let keys = KeySet::generate_in_memory().unwrap();
        let now = unix_now();
        let (token, claims) = issue(&keys, &info("dev-1"), now, Duration::from_secs(60)).unwrap();
        assert_eq!(claims.user.as_deref(), Some("alice"));
        let dev = DeviceId::parse("dev-1").unwrap();
        let other = DeviceId::parse("dev-2").unwrap();
        assert_eq!(
            authenticate(&keys, None, &token, &dev, now).unwrap(),
            Verified::Ours(claims)
        );
        assert_eq!(
            authenticate(&keys, None, &token, &other, now),
            Err(DeviceTokenError::Mismatch)
        );
        assert_eq!(
            authenticate(&keys, None, &token, &dev, now + 120),
            Err(DeviceTokenError::Expired)
        );
        assert!(
            verify_own(&keys, &token, now + 120, true).is_ok(),
            "refresh"
        );
        let foreign = KeySet::generate_in_memory().unwrap();
        assert!(matches!(
            authenticate(&foreign, None, &token, &dev, now),
            Err(DeviceTokenError::Invalid(_))
        ));
        // Never an admission token.
        for room in [None, Some("pace/device")] {
            assert!(keys.verify(&token, room, now).is_err());
        }
    }

    #[test]
    fn our_tokens_issued_in_the_future_are_refused() {
        let keys = KeySet::generate_in_memory().unwrap();
        let now = unix_now();
        let leeway = keys.leeway().as_secs();
        let dev = DeviceId::parse("dev-1").unwrap();
        let ttl = Duration::from_secs(600);
        let (ahead, _) = issue(&keys, &info("dev-1"), now + leeway + 1, ttl).unwrap();
        assert_eq!(
            authenticate(&keys, None, &ahead, &dev, now),
            Err(DeviceTokenError::Invalid("issued in the future"))
        );
        assert_eq!(
            verify_own(&keys, &ahead, now, true),
            Err(DeviceTokenError::Invalid("issued in the future")),
            "not even to be refreshed"
        );
        let (skewed, _) = issue(&keys, &info("dev-1"), now + leeway, ttl).unwrap();
        assert!(
            authenticate(&keys, None, &skewed, &dev, now).is_ok(),
            "within the leeway"
        );
    }

    #[test]
    fn external_tokens_follow_the_one_time_rule() {
        let idp = KeySet::generate_in_memory().unwrap();
        let issuer = ExternalIssuer::from_jwks(idp.jwks_json(), "https://idp", "pace").unwrap();
        let now = unix_now();
        let token = |extra: serde_json::Value| {
            let mut claims = serde_json::json!({"iss": "https://idp", "aud": "pace",
                "sub": "laptop-1", "iat": now, "exp": now + 600});
            for (k, v) in extra.as_object().unwrap() {
                claims[k] = v.clone();
            }
            idp.sign_claims(&claims, now).unwrap()
        };
        assert_eq!(
            issuer
                .verify(&token(serde_json::json!({})), now)
                .unwrap()
                .iat,
            Some(now)
        );
        let future = Err(DeviceTokenError::Invalid("issued in the future"));
        let cases = [
            (
                "iat an hour ahead",
                serde_json::json!({"iat": now + 3600}),
                future.clone(),
            ),
            (
                "iat past the leeway",
                serde_json::json!({"iat": now + 6}),
                future.clone(),
            ),
            ("nbf ahead", serde_json::json!({"nbf": now + 60}), future),
            (
                "expired",
                serde_json::json!({"iat": now - 700, "exp": now - 100}),
                Err(DeviceTokenError::Expired),
            ),
            (
                "exp not a number",
                serde_json::json!({"exp": "soon"}),
                Err(DeviceTokenError::Invalid(
                    "not accepted from the configured issuer",
                )),
            ),
            (
                "iat not a number",
                serde_json::json!({"iat": "now"}),
                Err(DeviceTokenError::Invalid("a time claim is not a number")),
            ),
        ];
        for (name, extra, want) in cases {
            assert_eq!(
                issuer.verify(&token(extra), now).map(|d| d.sub),
                want,
                "{name}"
            );
        }
        for (name, extra) in [
            ("iat within the leeway", serde_json::json!({"iat": now + 5})),
            ("nbf within the leeway", serde_json::json!({"nbf": now + 5})),
            (
                "expired within the leeway",
                serde_json::json!({"exp": now - 4}),
            ),
            (
                "fractional times",
                serde_json::json!({"iat": now as f64 + 0.5, "exp": now as f64 + 600.5}),
            ),
        ] {
            assert!(issuer.verify(&token(extra), now).is_ok(), "{name}");
        }
    }

    #[test]
    fn external_jwks_must_be_asymmetric_with_kids() {
        let hmac = r#"{"keys":[{"kty":"oct","kid":"k","k":"c2VjcmV0"}]}"#;
        assert!(ExternalIssuer::from_jwks(hmac, "i", "a").is_err());
        let no_kid = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        assert!(ExternalIssuer::from_jwks(no_kid, "i", "a").is_err());
        let ok = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        assert!(ExternalIssuer::from_jwks(ok, "i", "a").is_ok());
        assert!(ExternalIssuer::from_jwks(ok, "", "a").is_err());
    }
}
