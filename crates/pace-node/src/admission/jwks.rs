//! The JSON Web Key Set (RFC 7517) that publishes the admission public keys
//! at `GET /.well-known/jwks.json`, and the reverse: turning a published key
//! back into a verifying key, as a target site does.
//!
//! Two kinds of keys are written and accepted: Ed25519 for `EdDSA` (`kty`
//! `OKP`, RFC 8037) and P-256 for `ES256` (`kty` `EC`, RFC 7518 §6.2). Each
//! entry names its `alg`, so a verifier never lets the token choose.

use jsonwebtoken::DecodingKey;

use crate::key_alg::KeyAlg;
use serde::{Deserialize, Serialize};

/// A JWKS document: `{"keys":[...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The published keys, newest first.
    pub keys: Vec<PublicJwk>,
}

/// One published public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicJwk {
    /// Key type: `OKP` for Ed25519, `EC` for P-256.
    pub kty: String,
    /// Curve: `Ed25519` or `P-256`.
    pub crv: String,
    /// The 32-byte Ed25519 public key, or the P-256 point's x;
    /// base64url without padding.
    pub x: String,
    /// The P-256 point's y (EC keys only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// Key id, matched against the token header's `kid`.
    pub kid: String,
    /// The only algorithm this key may be used with: `EdDSA` or `ES256`.
    pub alg: String,
    /// Intended use: `sig`.
    #[serde(rename = "use")]
    pub use_: String,
}

/// Why a published key cannot be used to verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwksError {
    /// Neither an Ed25519 `EdDSA` nor a P-256 `ES256` signing key.
    #[error("key {kid:?} is neither an Ed25519 EdDSA nor a P-256 ES256 signing key")]
    Unsupported {
        /// The key's kid.
        kid: String,
    },
    /// `x` (or `y`) is not base64url of 32 bytes, or not a point on the curve.
    #[error("key {kid:?} has an invalid public key (want base64url of 32-byte coordinates)")]
    BadX {
        /// The key's kid.
        kid: String,
    },
}

impl Jwks {
    /// Renders the document as compact JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain strings cannot fail; fall back to an empty set
        // rather than panic.
        serde_json::to_string(self).unwrap_or_else(|_| r#"{"keys":[]}"#.to_owned())
    }

    /// Parses a JWKS document.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The key with this kid.
    pub fn find(&self, kid: &str) -> Option<&PublicJwk> {
        self.keys.iter().find(|k| k.kid == kid)
    }
}

impl PublicJwk {
    /// The entry for an Ed25519 public key.
    pub(crate) fn ed25519(kid: &str, x: &str) -> Self {
        PublicJwk {
            kty: "OKP".to_owned(),
            crv: "Ed25519".to_owned(),
            x: x.to_owned(),
            y: None,
            kid: kid.to_owned(),
            alg: KeyAlg::EdDsa.as_str().to_owned(),
            use_: "sig".to_owned(),
        }
    }

    /// The entry for a P-256 public key.
    pub(crate) fn p256(kid: &str, x: &str, y: &str) -> Self {
        PublicJwk {
            kty: "EC".to_owned(),
            crv: "P-256".to_owned(),
            x: x.to_owned(),
            y: Some(y.to_owned()),
            kid: kid.to_owned(),
            alg: KeyAlg::Es256.as_str().to_owned(),
            use_: "sig".to_owned(),
        }
    }

    /// The algorithm this entry is for, after checking the entry really is
    /// an Ed25519 `EdDSA` or a P-256 `ES256` signing key.
    pub fn key_alg(&self) -> Result<KeyAlg, JwksError> {
        let shape = (
            self.kty.as_str(),
            self.crv.as_str(),
            self.alg.as_str(),
            self.use_.as_str(),
        );
        match shape {
            ("OKP", "Ed25519", "EdDSA", "sig") => Ok(KeyAlg::EdDsa),
            ("EC", "P-256", "ES256", "sig") => Ok(KeyAlg::Es256),
            _ => Err(JwksError::Unsupported {
                kid: self.kid.clone(),
            }),
        }
    }

    /// A verifying key for this entry's algorithm ([`PublicJwk::key_alg`]),
    /// with the coordinates checked (32 bytes each; a P-256 point on the
    /// curve).
    pub fn decoding_key(&self) -> Result<DecodingKey, JwksError> {
        let bad_x = || JwksError::BadX {
            kid: self.kid.clone(),
        };
        match self.key_alg()? {
            KeyAlg::EdDsa => {
                let key = DecodingKey::from_ed_components(&self.x).map_err(|_| bad_x())?;
                // The JWT library slices the first 32 bytes without checking
                // the length; check it here so a short key is an error, not a
                // panic.
                match key.try_get_as_bytes() {
                    Ok(bytes) if bytes.len() == 32 => Ok(key),
                    _ => Err(bad_x()),
                }
            }
            KeyAlg::Es256 => {
                let y = self.y.as_deref().ok_or_else(bad_x)?;
                let key = DecodingKey::from_ec_components(&self.x, y).map_err(|_| bad_x())?;
                // Uncompressed SEC 1 point: 0x04 || x || y, and on the curve.
                let bytes = key.try_get_as_bytes().map_err(|_| bad_x())?;
                if bytes.len() != 65 || p256::PublicKey::from_sec1_bytes(bytes).is_err() {
                    return Err(bad_x());
                }
                Ok(key)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_documented_shape() {
        let jwks = Jwks {
            keys: vec![PublicJwk::ed25519(
                "k1",
                "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
            )],
        };
        let json: serde_json::Value = serde_json::from_str(&jwks.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"keys":[{
                "kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
                "kid":"k1","alg":"EdDSA","use":"sig"
            }]})
        );
        assert_eq!(Jwks::from_json(&jwks.to_json()).unwrap(), jwks);
    }

    #[test]
    fn decoding_key_checks_type_and_length() {
        // RFC 8032 test 1 public key.
        let good = PublicJwk::ed25519("k1", "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        assert!(good.decoding_key().is_ok());

        let short = PublicJwk::ed25519("k1", "AAAA");
        assert_eq!(
            short.decoding_key().err(),
            Some(JwksError::BadX { kid: "k1".into() })
        );
        let not_b64 = PublicJwk::ed25519("k1", "!!!");
        assert!(matches!(
            not_b64.decoding_key(),
            Err(JwksError::BadX { .. })
        ));

        let mut rsa = good.clone();
        rsa.kty = "RSA".into();
        assert!(matches!(
            rsa.decoding_key(),
            Err(JwksError::Unsupported { .. })
        ));
        // An Ed25519 key relabelled ES256 is refused, not misused.
        let mut relabelled = good.clone();
        relabelled.alg = "ES256".into();
        assert!(matches!(
            relabelled.decoding_key(),
            Err(JwksError::Unsupported { .. })
        ));
    }

    #[test]
    fn p256_entries_render_and_are_checked() {
        use base64::Engine;
        let mut scalar = [0u8; 32];
        scalar[31] = 7;
        let parts = crate::admission::p256key::from_scalar(&scalar).unwrap();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwk = PublicJwk::p256("e1", &b64(&parts.x), &b64(&parts.y));
        let json: serde_json::Value = serde_json::to_value(&jwk).unwrap();
        assert_eq!(json["kty"], "EC");
        assert_eq!(json["crv"], "P-256");
        assert_eq!(json["alg"], "ES256");
        assert_eq!(jwk.key_alg(), Ok(KeyAlg::Es256));
        assert!(jwk.decoding_key().is_ok());

        // y off the curve, or missing.
        let mut off = jwk.clone();
        off.y = Some(b64(&[1u8; 32]));
        assert!(matches!(off.decoding_key(), Err(JwksError::BadX { .. })));
        let mut missing = jwk.clone();
        missing.y = None;
        assert!(matches!(
            missing.decoding_key(),
            Err(JwksError::BadX { .. })
        ));
    }
}
