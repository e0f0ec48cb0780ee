//! The admission layer: valid admissions (ES256 and EdDSA, by query,
//! cookie or header) reach the app with their claims; expired, other
//! rooms', other issuers', tampered and forged tokens are sent to the
//! waiting page; an unknown kid refetches the JWKS once (a rotation is
//! picked up, made-up kids do not hammer the cluster); an unreachable JWKS
//! fails closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Request, Response};
use pace_admission::{
    AdmissionClaims, AdmissionLayer, AdmissionVerifier, HttpJwks, JwksError, JwksSource, KeyCache,
    KeyCacheConfig, Refusal,
};
use tower_layer::Layer;
use tower_service::Service;

use crate::support::*;

fn layer_over(
    source: Arc<dyn JwksSource>,
    config: KeyCacheConfig,
) -> (Arc<KeyCache>, AdmissionLayer) {
    let cache = Arc::new(KeyCache::with_config(source, config));
    let verifier = AdmissionVerifier::new(Arc::clone(&cache), "sale", "pace");
    (cache, AdmissionLayer::new(Arc::new(verifier)))
}

async fn call(layer: &AdmissionLayer, req: Request<()>) -> Response<String> {
    let mut svc = layer.layer(App);
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    svc.call(req).await.unwrap()
}

fn get(uri: &str) -> Request<()> {
    Request::get(uri).body(()).unwrap()
}

fn let_in(resp: &Response<String>, device: &str) {
    assert_eq!(resp.status(), 200, "{resp:?}");
    assert_eq!(resp.body(), &format!("let in: {device}"));
}

fn to_waiting_page(resp: &Response<String>, what: &str) {
    assert_eq!(resp.status(), 302, "{what}: {resp:?}");
    assert_eq!(resp.headers()["location"], "/r/sale", "{what}");
    assert!(resp.body().is_empty(), "{what}: the app must not run");
}

#[tokio::test]
async fn valid_admissions_pass_and_every_bad_token_is_sent_to_the_waiting_page() {
    let es = TestKey::es256("es-1");
    let ed = TestKey::eddsa("ed-1");
    let server = JwksServer::start(jwks(&[&es, &ed])).await;
    let (_cache, layer) = layer_over(
        Arc::new(HttpJwks::new(server.url.clone())),
        KeyCacheConfig::default(),
    );

    let token = es.sign(&admission("sale", "dev-1"));
    let_in(
        &call(&layer, get(&format!("/shop/?pace_token={token}"))).await,
        "dev-1",
    );
    let cookie = Request::get("/shop/cart")
        .header("cookie", format!("theme=dark; pace_admission={token}"))
        .body(())
        .unwrap();
    let_in(&call(&layer, cookie).await, "dev-1");
    let bearer = Request::get("/shop/api")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap();
    let_in(&call(&layer, bearer).await, "dev-1");
    // A migration's overlap: the other algorithm's key verifies too.
    let ed_token = ed.sign(&admission("sale", "dev-2"));
    let_in(
        &call(&layer, get(&format!("/?pace_token={ed_token}"))).await,
        "dev-2",
    );
    assert_eq!(server.fetches(), 1, "the JWKS is fetched once and cached");

    to_waiting_page(&call(&layer, get("/shop/")).await, "no token");
    let t = now();
    let expired = es.sign(&AdmissionClaims {
        iat: t - 600,
        exp: t - 60,
        ..admission("sale", "late")
    });
    to_waiting_page(
        &call(&layer, get(&format!("/?pace_token={expired}"))).await,
        "expired",
    );
    let other_room = es.sign(&admission("other", "x"));
    to_waiting_page(
        &call(&layer, get(&format!("/?pace_token={other_room}"))).await,
        "wrong audience",
    );
    let other_issuer = es.sign(&AdmissionClaims {
        iss: "someone-else".into(),
        ..admission("sale", "x")
    });
    to_waiting_page(
        &call(&layer, get(&format!("/?pace_token={other_issuer}"))).await,
        "wrong issuer",
    );
    // The ES256 signature under the EdDSA key's kid, and HS256 keyed with
    // the published key.
    let mut swapped = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    swapped.kid = Some("ed-1".into());
    let swapped = jsonwebtoken::encode(&swapped, &admission("sale", "x"), &es.encoding).unwrap();
    to_waiting_page(
        &call(&layer, get(&format!("/?pace_token={swapped}"))).await,
        "alg swap",
    );
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = Some("es-1".into());
    let hs = jsonwebtoken::encode(
        &hs,
        &admission("sale", "x"),
        &jsonwebtoken::EncodingKey::from_secret(es.jwk["x"].as_str().unwrap().as_bytes()),
    )
    .unwrap();
    to_waiting_page(
        &call(&layer, get(&format!("/?pace_token={hs}"))).await,
        "HS256",
    );
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[2] = es
        .sign(&admission("sale", "someone"))
        .split('.')
        .nth(2)
        .unwrap()
        .to_owned();
    to_waiting_page(
        &call(&layer, get(&format!("/?pace_token={}", parts.join(".")))).await,
        "another token's signature",
    );
}

#[tokio::test]
async fn the_verifier_names_each_refusal() {
    let es = TestKey::es256("es-1");
    let server = JwksServer::start(jwks(&[&es])).await;
    let cache = Arc::new(KeyCache::new(Arc::new(HttpJwks::new(server.url.clone()))));
    let v = AdmissionVerifier::new(cache, "sale", "pace");
    let t = now();
    let expired = es.sign(&AdmissionClaims {
        iat: t - 600,
        exp: t - 60,
        ..admission("sale", "x")
    });
    assert_eq!(v.verify(&expired).await, Err(Refusal::Expired));
    assert_eq!(
        v.verify(&es.sign(&admission("other", "x"))).await,
        Err(Refusal::WrongAudience)
    );
    assert!(v.verify(&es.sign(&admission("sale", "x"))).await.is_ok());
    let none = format!(
        "{}.{}.",
        base64_url(r#"{"alg":"none","kid":"es-1"}"#),
        base64_url(&serde_json::to_string(&admission("sale", "x")).unwrap())
    );
    assert!(
        matches!(
            v.verify(&none).await,
            Err(Refusal::Malformed(_) | Refusal::Algorithm(_))
        ),
        "alg none"
    );
}

fn base64_url(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_jwks_once() {
    let k1 = TestKey::es256("k1");
    let k2 = TestKey::es256("k2");
    let server = JwksServer::start(jwks(&[&k1])).await;
    let (cache, layer) = layer_over(
        Arc::new(HttpJwks::new(server.url.clone())),
        KeyCacheConfig::default(),
    );
    let_in(
        &call(
            &layer,
            get(&format!(
                "/?pace_token={}",
                k1.sign(&admission("sale", "a"))
            )),
        )
        .await,
        "a",
    );
    assert_eq!(server.fetches(), 1);

    // The cluster rotates: k2 is published. A token signed with it is
    // accepted after exactly one refetch.
    *server.doc.lock().unwrap() = jwks(&[&k2, &k1]);
    let_in(
        &call(
            &layer,
            get(&format!(
                "/?pace_token={}",
                k2.sign(&admission("sale", "b"))
            )),
        )
        .await,
        "b",
    );
    assert_eq!(server.fetches(), 2, "one refetch for the new kid");
    assert_eq!(cache.cached_kids().await, vec!["k1", "k2"]);

    // Made-up kids right after: refused, without another fetch.
    let stranger = TestKey::es256("k3");
    for _ in 0..5 {
        to_waiting_page(
            &call(
                &layer,
                get(&format!(
                    "/?pace_token={}",
                    stranger.sign(&admission("sale", "c"))
                )),
            )
            .await,
            "unknown kid",
        );
    }
    assert_eq!(server.fetches(), 2, "unknown kids are rate-limited");
}

/// A JWKS source that can be switched off, for controlled time.
#[derive(Debug)]
struct Switchable {
    doc: String,
    up: AtomicBool,
}

impl JwksSource for Switchable {
    fn fetch(&self) -> pace_admission::source_future::BoxFuture<'_, Result<String, JwksError>> {
        let result = if self.up.load(Ordering::SeqCst) {
            Ok(self.doc.clone())
        } else {
            Err(JwksError::Unreachable {
                url: "test".into(),
                reason: "switched off".into(),
            })
        };
        Box::pin(async move { result })
    }
}

#[tokio::test]
async fn an_unreachable_jwks_fails_closed() {
    // Never fetched: the real HTTP source against a closed port.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (_c, layer) = layer_over(
        Arc::new(HttpJwks::new(
            format!("http://{closed}/.well-known/jwks.json")
                .parse()
                .unwrap(),
        )),
        KeyCacheConfig::default(),
    );
    let k = TestKey::es256("k1");
    let resp = call(
        &layer,
        get(&format!("/?pace_token={}", k.sign(&admission("sale", "a")))),
    )
    .await;
    assert_eq!(resp.status(), 503, "{resp:?}");
    assert_eq!(resp.headers()["retry-after"], "5");
    assert!(resp.body().is_empty(), "the app must not run");
}

#[tokio::test(start_paused = true)]
async fn a_cache_that_cannot_be_refreshed_serves_while_stale_then_fails_closed() {
    let k = TestKey::es256("k1");
    let source = Arc::new(Switchable {
        doc: jwks(&[&k]),
        up: AtomicBool::new(true),
    });
    let config = KeyCacheConfig {
        max_age: Duration::from_secs(300),
        stale_for: Duration::from_secs(600),
        min_refetch: Duration::from_secs(10),
    };
    let (_c, layer) = layer_over(source.clone(), config);
    let req = || get(&format!("/?pace_token={}", k.sign(&admission("sale", "a"))));
    let_in(&call(&layer, req()).await, "a");

    source.up.store(false, Ordering::SeqCst);
    // Past max_age, inside stale_for: the refresh fails, the keys still serve.
    tokio::time::advance(Duration::from_secs(600)).await;
    let_in(&call(&layer, req()).await, "a");
    // Past max_age + stale_for: nothing is verified any more.
    tokio::time::advance(Duration::from_secs(301)).await;
    assert_eq!(call(&layer, req()).await.status(), 503);
    // The JWKS comes back: after min_refetch the next request recovers.
    source.up.store(true, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(10)).await;
    let_in(&call(&layer, req()).await, "a");
}
