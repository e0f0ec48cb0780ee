//! The cached admission keys of one cluster, and when to fetch them again:
//! on first use, when older than `max_age`, and once (rate-limited by
//! `min_refetch`) when a token names a kid the cache does not hold. A
//! cache that cannot be refreshed keeps serving for `stale_for` past
//! `max_age`, then fails closed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;

use crate::{JwksError, JwksSource};

/// How long keys are trusted and how often they may be refetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyCacheConfig {
    /// Refetch keys older than this (the node's JWKS `max-age`: 5 min).
    pub max_age: Duration,
    /// When a refetch fails, keep using keys this long past `max_age`; after
    /// that, fail closed.
    pub stale_for: Duration,
    /// At most one refetch for unknown kids per this interval.
    pub min_refetch: Duration,
}

impl Default for KeyCacheConfig {
    fn default() -> Self {
        KeyCacheConfig {
            max_age: Duration::from_secs(300),
            stale_for: Duration::from_secs(600),
            min_refetch: Duration::from_secs(10),
        }
    }
}

/// Why no key could be given for a kid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The JWKS (even after a refetch) does not publish this kid.
    UnknownKid,
    /// No usable keys: the JWKS cannot be fetched and the cache is empty or
    /// too old. The request must be refused (fail closed).
    Unavailable(JwksError),
}

/// One published key: how to verify and with which algorithm only.
#[derive(Clone)]
pub(crate) struct CachedKey {
    pub(crate) key: DecodingKey,
    pub(crate) alg: Algorithm,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, CachedKey>,
    /// When the keys were last fetched successfully.
    fetched_at: Option<Instant>,
    /// When a fetch was last tried (successful or not): a failing JWKS is
    /// retried at most once per `min_refetch`.
    tried_at: Option<Instant>,
    /// When an unknown kid last caused a refetch (at most one per
    /// `min_refetch`, independent of the periodic refresh).
    kid_refetch_at: Option<Instant>,
    /// The last fetch's failure, if it failed.
    last_error: Option<JwksError>,
}

/// The cluster's admission keys, fetched from a [`JwksSource`] and cached.
/// Share one per cluster (behind an `Arc`) between all requests.
pub struct KeyCache {
    source: Arc<dyn JwksSource>,
    config: KeyCacheConfig,
    /// An async mutex: one fetch at a time; requests arriving meanwhile
    /// wait for its result instead of fetching too.
    state: tokio::sync::Mutex<State>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("source", &self.source)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl KeyCache {
    /// A cache over `source` with the default [`KeyCacheConfig`].
    pub fn new(source: Arc<dyn JwksSource>) -> KeyCache {
        KeyCache::with_config(source, KeyCacheConfig::default())
    }

    /// A cache with explicit lifetimes.
    pub fn with_config(source: Arc<dyn JwksSource>, config: KeyCacheConfig) -> KeyCache {
        KeyCache {
            source,
            config,
            state: tokio::sync::Mutex::new(State::default()),
        }
    }

    /// The key published under `kid`, fetching or refetching the JWKS as
    /// the rules in the module documentation say.
    pub(crate) async fn key(&self, kid: &str) -> Result<CachedKey, Lookup> {
        let mut state = self.state.lock().await;
        let now = Instant::now();
        let fresh = |s: &State| {
            s.fetched_at
                .is_some_and(|t| now.duration_since(t) <= self.config.max_age)
        };
        let retry_ok = |s: &State| {
            s.last_error.is_none()
                || s.tried_at
                    .is_none_or(|t| now.duration_since(t) >= self.config.min_refetch)
        };
        if !fresh(&state) && retry_ok(&state) {
            self.refresh(&mut state, now).await;
        }
        let usable = state
            .fetched_at
            .is_some_and(|t| now.duration_since(t) <= self.config.max_age + self.config.stale_for);
        if !usable {
            return Err(Lookup::Unavailable(
                state
                    .last_error
                    .clone()
                    .unwrap_or(JwksError::Invalid("no keys fetched yet".to_owned())),
            ));
        }
        if let Some(key) = state.keys.get(kid) {
            return Ok(key.clone());
        }
        // An unknown kid: perhaps a key newer than the cache (a rotation).
        // Refetch once, unless that was just done.
        let kid_refetch_ok = state
            .kid_refetch_at
            .is_none_or(|t| now.duration_since(t) >= self.config.min_refetch);
        if kid_refetch_ok {
            state.kid_refetch_at = Some(now);
            self.refresh(&mut state, now).await;
            if let Some(key) = state.keys.get(kid) {
                return Ok(key.clone());
            }
        }
        Err(Lookup::UnknownKid)
    }

    /// How many keys are cached (for tests and diagnostics).
    pub async fn cached_kids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self.state.lock().await.keys.keys().cloned().collect();
        kids.sort();
        kids
    }

    async fn refresh(&self, state: &mut State, now: Instant) {
        state.tried_at = Some(now);
        match self.source.fetch().await.and_then(|text| parse(&text)) {
            Ok(keys) => {
                state.keys = keys;
                state.fetched_at = Some(now);
                state.last_error = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot refresh the admission keys");
                state.last_error = Some(e);
            }
        }
    }
}

/// The usable keys of a JWKS document: EdDSA (Ed25519) and ES256 (P-256)
/// entries with a kid; anything else is skipped.
fn parse(text: &str) -> Result<HashMap<String, CachedKey>, JwksError> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| JwksError::Invalid(e.to_string()))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(KeyAlgorithm::EdDSA), AlgorithmParameters::OctetKeyPair(p))
                if p.curve == EllipticCurve::Ed25519 =>
            {
                Algorithm::EdDSA
            }
            (Some(KeyAlgorithm::ES256), AlgorithmParameters::EllipticCurve(p))
                if p.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            _ => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        // The JWT library does not check the lengths: a short Ed25519 key
        // must be skipped here, not panic later.
        let len_ok = match (alg, key.try_get_as_bytes()) {
            (Algorithm::EdDSA, Ok(b)) => b.len() == 32,
            (Algorithm::ES256, Ok(b)) => b.len() == 65,
            _ => false,
        };
        if len_ok {
            keys.insert(kid, CachedKey { key, alg });
        }
    }
    Ok(keys)
}
