//! The JSON Web Key Set (RFC 7517) that publishes the admission public keys
//! at `GET /.well-known/jwks.json`, and the reverse: turning a published key
//! back into a verifying key, as a target site does.
//!
//! Only Ed25519 keys (`kty` `OKP`, RFC 8037) are written or accepted.

use jsonwebtoken::DecodingKey;
use serde::{Deserialize, Serialize};

/// A JWKS document: `{"keys":[...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The published keys, newest first.
    pub keys: Vec<PublicJwk>,
}

/// One published Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicJwk {
    /// Key type; `OKP` for Ed25519.
    pub kty: String,
    /// Curve; `Ed25519`.
    pub crv: String,
    /// The 32-byte public key, base64url without padding.
    pub x: String,
    /// Key id, matched against the token header's `kid`.
    pub kid: String,
    /// The only algorithm this key may be used with: `EdDSA`.
    pub alg: String,
    /// Intended use: `sig`.
    #[serde(rename = "use")]
    pub use_: String,
}

/// Why a published key cannot be used to verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwksError {
    /// Not an Ed25519 signing key for EdDSA.
    #[error("key {kid:?} is not an Ed25519 EdDSA signing key")]
    NotEd25519 {
        /// The key's kid.
        kid: String,
    },
    /// `x` is not base64url of 32 bytes.
    #[error("key {kid:?} has an invalid x (want base64url of 32 bytes)")]
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
            kid: kid.to_owned(),
            alg: "EdDSA".to_owned(),
            use_: "sig".to_owned(),
        }
    }

    /// A verifying key for EdDSA tokens, after checking the entry really is
    /// an Ed25519 signing key with a 32-byte `x`.
    pub fn decoding_key(&self) -> Result<DecodingKey, JwksError> {
        if self.kty != "OKP" || self.crv != "Ed25519" || self.alg != "EdDSA" || self.use_ != "sig" {
            return Err(JwksError::NotEd25519 {
                kid: self.kid.clone(),
            });
        }
        let bad_x = || JwksError::BadX {
            kid: self.kid.clone(),
        };
        let key = DecodingKey::from_ed_components(&self.x).map_err(|_| bad_x())?;
        // The JWT library slices the first 32 bytes without checking the
        // length; check it here so a short key is an error, not a panic.
        match key.try_get_as_bytes() {
            Ok(bytes) if bytes.len() == 32 => Ok(key),
            _ => Err(bad_x()),
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
            Err(JwksError::NotEd25519 { .. })
        ));
    }
}
