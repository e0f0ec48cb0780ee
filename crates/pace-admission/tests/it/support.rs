//! Test keys (ES256 and EdDSA, with their JWKS entries), a JWKS server on
//! loopback that counts its fetches, and a service that says who it let in.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use http::{Request, Response};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::EncodePrivateKey;
use pace_admission::{AdmissionClaims, Admitted};
use rand::RngCore;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A signing key and its JWKS entry.
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
}

impl TestKey {
    pub fn es256(kid: &str) -> TestKey {
        let secret = loop {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            if let Ok(s) = p256::SecretKey::from_slice(&bytes) {
                break s;
            }
        };
        let der = secret.to_pkcs8_der().unwrap();
        let point = secret.public_key().to_encoded_point(false);
        TestKey {
            kid: kid.to_owned(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(der.as_bytes()),
            jwk: json!({"kty":"EC","crv":"P-256","x":B64.encode(point.x().unwrap()),
                "y":B64.encode(point.y().unwrap()),"kid":kid,"alg":"ES256","use":"sig"}),
        }
    }

    pub fn eddsa(kid: &str) -> TestKey {
        // PKCS#8 of an Ed25519 seed (RFC 8410): a fixed prefix, then the seed.
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        der.extend_from_slice(&seed);
        let encoding = EncodingKey::from_ed_der(&der);
        let x = match Jwk::from_encoding_key(&encoding, Algorithm::EdDSA)
            .unwrap()
            .algorithm
        {
            AlgorithmParameters::OctetKeyPair(p) => p.x,
            other => panic!("{other:?}"),
        };
        TestKey {
            kid: kid.to_owned(),
            alg: Algorithm::EdDSA,
            encoding,
            jwk: json!({"kty":"OKP","crv":"Ed25519","x":x,"kid":kid,"alg":"EdDSA","use":"sig"}),
        }
    }

    pub fn sign(&self, claims: &AdmissionClaims) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An admission to `room` for `device`, valid for a minute from now.
pub fn admission(room: &str, device: &str) -> AdmissionClaims {
    let t = now();
    AdmissionClaims {
        iss: "pace".into(),
        aud: room.into(),
        sub: device.into(),
        jti: "00000000-0000-4000-8000-000000000001".into(),
        iat: t,
        exp: t + 60,
        target: None,
    }
}

pub fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

/// Serves a JWKS document (changeable) at any path and counts fetches.
pub struct JwksServer {
    pub url: http::Uri,
    pub doc: Arc<Mutex<String>>,
    pub fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    pub async fn start(doc: String) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let doc = Arc::new(Mutex::new(doc));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (d, f) = (Arc::clone(&doc), Arc::clone(&fetches));
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let body = d.lock().unwrap().clone();
                f.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(resp.as_bytes()).await;
                });
            }
        });
        JwksServer {
            url: format!("http://{addr}/.well-known/jwks.json")
                .parse()
                .unwrap(),
            doc,
            fetches,
            task,
        }
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// The protected application: 200 with the admitted device.
#[derive(Debug, Clone)]
pub struct App;

impl tower_service::Service<Request<()>> for App {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<String>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        let who = req
            .extensions()
            .get::<Admitted>()
            .map(|a| a.0.sub.clone())
            .unwrap_or_else(|| "NOBODY".to_owned());
        Box::pin(async move { Ok(Response::new(format!("let in: {who}"))) })
    }
}
