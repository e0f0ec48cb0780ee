//! Measures what an admission costs to sign (node side) and to verify
//! (gateway or origin side), for EdDSA and ES256, and what the origin
//! layer's verification of a cached key costs per request. Bounded: a
//! fixed number of operations per algorithm. Run in release:
//! `cargo run --release -p pace-admission --example verify_cost [N]`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::EncodePrivateKey;
use pace_admission::source_future::BoxFuture;
use pace_admission::{AdmissionClaims, AdmissionVerifier, JwksError, JwksSource, KeyCache};
use rand::RngCore;
use serde_json::json;

/// The JWKS from memory: no network in the measurement.
#[derive(Debug)]
struct Fixed(String);

impl JwksSource for Fixed {
    fn fetch(&self) -> BoxFuture<'_, Result<String, JwksError>> {
        let doc = self.0.clone();
        Box::pin(async move { Ok(doc) })
    }
}

fn keys() -> Vec<(Algorithm, EncodingKey, serde_json::Value)> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = p256::SecretKey::from_slice(&bytes).expect("a P-256 scalar");
    let point = secret.public_key().to_encoded_point(false);
    let es = EncodingKey::from_ec_der(secret.to_pkcs8_der().expect("pkcs8").as_bytes());
    let es_jwk = json!({"kty":"EC","crv":"P-256","x":B64.encode(point.x().expect("x")),
        "y":B64.encode(point.y().expect("y")),"kid":"es","alg":"ES256","use":"sig"});
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    rand::rng().fill_bytes(&mut bytes);
    der.extend_from_slice(&bytes);
    let ed = EncodingKey::from_ed_der(&der);
    let x = match Jwk::from_encoding_key(&ed, Algorithm::EdDSA)
        .expect("jwk")
        .algorithm
    {
        AlgorithmParameters::OctetKeyPair(p) => p.x,
        _ => unreachable!("an Ed25519 key"),
    };
    let ed_jwk = json!({"kty":"OKP","crv":"Ed25519","x":x,"kid":"ed","alg":"EdDSA","use":"sig"});
    vec![
        (Algorithm::EdDSA, ed, ed_jwk),
        (Algorithm::ES256, es, es_jwk),
    ]
}

fn per_op(total: Duration, n: usize) -> f64 {
    total.as_secs_f64() * 1e6 / n as f64
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let keys = keys();
    let doc = json!({"keys": keys.iter().map(|k| k.2.clone()).collect::<Vec<_>>()}).to_string();
    let cache = Arc::new(KeyCache::new(Arc::new(Fixed(doc))));
    let verifier = AdmissionVerifier::new(cache, "sale", "pace");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    println!("{n} operations each");
    for (alg, key, jwk) in &keys {
        let mut header = Header::new(*alg);
        header.kid = jwk["kid"].as_str().map(str::to_owned);
        let claims = AdmissionClaims {
            iss: "pace".into(),
            aud: "sale".into(),
            sub: "device-1".into(),
            jti: "00000000-0000-4000-8000-000000000001".into(),
            iat: now,
            exp: now + 600,
            target: None,
        };
        let started = Instant::now();
        let mut token = String::new();
        for _ in 0..n {
            token = jsonwebtoken::encode(&header, &claims, key).expect("sign");
        }
        let sign = started.elapsed();
        let started = Instant::now();
        for _ in 0..n {
            verifier.verify(&token).await.expect("verifies");
        }
        let verify = started.elapsed();
        println!(
            "{alg:?}: sign {:.1} µs, verify (origin layer, cached key) {:.1} µs, token {} bytes",
            per_op(sign, n),
            per_op(verify, n),
            token.len()
        );
    }
}
