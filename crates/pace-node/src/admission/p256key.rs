//! P-256 key material for ES256 admission keys, with the `p256` crate: the
//! private scalar stored in the key file becomes the PKCS#8 document the JWT
//! library signs with, the public point's `x`/`y` published in the JWKS, and
//! the SPKI PEM that `pace-node keys export-pem` writes for HAProxy's
//! `jwt_verify` and Kong's `jwt_secrets`.

use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

/// Everything derived from one P-256 private scalar.
pub(crate) struct P256Parts {
    /// PKCS#8 `PrivateKeyInfo` DER (what `EncodingKey::from_ec_der` takes).
    pub(crate) pkcs8_der: Vec<u8>,
    /// Affine x, big-endian, 32 bytes.
    pub(crate) x: [u8; 32],
    /// Affine y, big-endian, 32 bytes.
    pub(crate) y: [u8; 32],
    /// The public key as a `-----BEGIN PUBLIC KEY-----` PEM (SPKI).
    pub(crate) public_pem: String,
}

/// Derives the parts from a 32-byte scalar. Fails (with a reason, never the
/// secret) when the bytes are not a valid scalar (zero, or not below the
/// group order).
pub(crate) fn from_scalar(scalar: &[u8; 32]) -> Result<P256Parts, String> {
    let secret = p256::SecretKey::from_slice(scalar)
        .map_err(|_| "not a valid P-256 private scalar".to_owned())?;
    let pkcs8_der = secret
        .to_pkcs8_der()
        .map_err(|e| format!("cannot encode the P-256 key as PKCS#8: {e}"))?
        .as_bytes()
        .to_vec();
    let public = secret.public_key();
    let point = public.to_encoded_point(false);
    let (Some(x), Some(y)) = (point.x(), point.y()) else {
        return Err("the P-256 public key has no affine coordinates".to_owned());
    };
    let public_pem = public
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| format!("cannot encode the P-256 public key as PEM: {e}"))?;
    Ok(P256Parts {
        pkcs8_der,
        x: (*x).into(),
        y: (*y).into(),
        public_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_consistent_parts_and_refuses_bad_scalars() {
        let mut scalar = [0u8; 32];
        scalar[31] = 1; // the generator point G
        let parts = from_scalar(&scalar).unwrap();
        // x of G (SEC 2, secp256r1).
        assert_eq!(
            parts.x[..4],
            [0x6b, 0x17, 0xd1, 0xf2],
            "x(G) starts 6B17D1F2"
        );
        assert!(parts.public_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert!(parts.public_pem.ends_with("-----END PUBLIC KEY-----\n"));
        assert!(from_scalar(&[0u8; 32]).is_err());
        assert!(from_scalar(&[0xffu8; 32]).is_err());
    }
}
