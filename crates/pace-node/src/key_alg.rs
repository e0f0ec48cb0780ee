//! The two signature algorithms admission keys can have: EdDSA (Ed25519,
//! the default) and ES256 (ECDSA on P-256, which Kong's `jwt` plugin and
//! HAProxy's `jwt_verify` can check at the gateway). A key's algorithm is
//! fixed when it is generated; `--admission-alg` picks which keys sign.

use std::fmt;
use std::str::FromStr;

use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize};

/// A key's (and its tokens') JWS algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum KeyAlg {
    /// Ed25519 (RFC 8037): small, fast, deterministic signatures.
    #[default]
    #[serde(rename = "EdDSA")]
    EdDsa,
    /// ECDSA with P-256 and SHA-256 (RFC 7518 §3.4).
    #[serde(rename = "ES256")]
    Es256,
}

impl KeyAlg {
    /// Both algorithms.
    pub const ALL: [KeyAlg; 2] = [KeyAlg::EdDsa, KeyAlg::Es256];

    /// The JOSE name (`EdDSA`, `ES256`), as in the token header and JWKS.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlg::EdDsa => "EdDSA",
            KeyAlg::Es256 => "ES256",
        }
    }

    /// The JWT library's algorithm.
    pub(crate) fn jwt(self) -> Algorithm {
        match self {
            KeyAlg::EdDsa => Algorithm::EdDSA,
            KeyAlg::Es256 => Algorithm::ES256,
        }
    }

    /// Whether this is the default (serialisation skips it, so key files
    /// written before ES256 existed read and write unchanged).
    pub(crate) fn is_default(&self) -> bool {
        *self == KeyAlg::default()
    }
}

impl fmt::Display for KeyAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An algorithm name that is neither `EdDSA` nor `ES256`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown admission algorithm {0:?}: use EdDSA or ES256")]
pub struct UnknownAlg(pub String);

impl FromStr for KeyAlg {
    type Err = UnknownAlg;

    /// `EdDSA` or `ES256`, case-insensitive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyAlg::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownAlg(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_jose_names() {
        assert_eq!("EdDSA".parse(), Ok(KeyAlg::EdDsa));
        assert_eq!("es256".parse(), Ok(KeyAlg::Es256));
        assert!("HS256".parse::<KeyAlg>().is_err());
        assert!("none".parse::<KeyAlg>().is_err());
        assert_eq!(KeyAlg::Es256.to_string(), "ES256");
        assert_eq!(serde_json::to_string(&KeyAlg::EdDsa).unwrap(), "\"EdDSA\"");
        assert_eq!(KeyAlg::default(), KeyAlg::EdDsa);
    }
}
