//! Origin middleware for a site behind a Pace waiting room, for sites that
//! want code of their own rather than (or besides) the gateway's check
//! (`pace-node gateway … --protect`): a `tower` layer that lets a request
//! through only with a valid admission token for the site's room, verified
//! against the cluster's JWKS (`GET /.well-known/jwks.json`), and sends
//! everyone else to the waiting page.
//!
//! ```no_run
//! use std::sync::Arc;
//! use pace_admission::{AdmissionLayer, AdmissionVerifier, HttpJwks, KeyCache};
//!
//! let jwks = HttpJwks::new("http://pace.internal:8080/.well-known/jwks.json".parse().unwrap());
//! let verifier = AdmissionVerifier::new(Arc::new(KeyCache::new(Arc::new(jwks))), "sale", "pace");
//! let layer = AdmissionLayer::new(Arc::new(verifier));
//! // ServiceBuilder::new().layer(layer).service(app), or app.layer(layer) in axum.
//! # let _ = layer;
//! ```
//!
//! What it checks, in this order: a token (the hand-off's `?pace_token=`,
//! else the `pace_admission` cookie, else `Authorization: Bearer`); a
//! header `alg` of `EdDSA` or `ES256` with a `kid` the JWKS publishes, and
//! exactly the `alg` that key is published for (no `none`, no HMAC, no
//! swapping); the signature; `aud` = the room, `iss` = the cluster's issuer,
//! `exp` in the future (with a small leeway), `sub` present. A refused
//! request gets `302` to the waiting page (`/r/{room}` unless configured);
//! the handler of an admitted one finds the claims in the request's
//! extensions as [`Admitted`].
//!
//! Keys: the JWKS is fetched on first use and cached (`max_age`, 5 min by
//! default, like the node's `Cache-Control`); a token whose `kid` is not in
//! the cache makes one refetch (at most one per `min_refetch`, 10 s), so a
//! key rotation is picked up at once and a stream of made-up kids cannot
//! hammer the cluster. **It fails closed**: when the JWKS cannot be fetched
//! and no cached copy is usable (never fetched, or older than `max_age +
//! stale_for`), every request is refused with `503` (`Retry-After`), never
//! let through. Like any offline verifier it cannot see a session that was
//! released or revoked before its `exp`; ask `POST /api/v1/admissions/verify`
//! where that matters.
//!
//! Layout:
//! - `source.rs`: [`JwksSource`] and [`HttpJwks`] (plain HTTP with hyper).
//! - `cache.rs`: [`KeyCache`]: the cached keys and the refetch rules.
//! - `verify.rs`: [`AdmissionVerifier`], [`Refusal`], token extraction.
//! - `layer.rs`: [`AdmissionLayer`] and [`AdmissionService`].
//! - `error.rs`: [`JwksError`].

mod cache;
mod error;
mod layer;
mod source;
mod verify;

pub use cache::{KeyCache, KeyCacheConfig};
pub use error::JwksError;
pub use layer::{AdmissionLayer, AdmissionService};
pub use pace_protocol::rest::AdmissionClaims;
pub use source::{HttpJwks, JwksSource};

/// The boxed future type [`JwksSource::fetch`] returns.
pub mod source_future {
    pub use crate::source::BoxFuture;
}
pub use verify::{AdmissionVerifier, Admitted, COOKIE, Refusal, TOKEN_QUERY_ARG, token_of};
