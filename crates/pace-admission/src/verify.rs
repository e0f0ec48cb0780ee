//! Verifying one request's admission: where the token is read from, and
//! every check it must pass ([`AdmissionVerifier::verify`]), each failure
//! named by a [`Refusal`].

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};

use crate::cache::{KeyCache, Lookup};
use crate::{AdmissionClaims, JwksError};

/// Cookie the gateway (or the site) keeps the admission in.
pub const COOKIE: &str = "pace_admission";

/// Query parameter of the hand-off from the waiting room.
pub const TOKEN_QUERY_ARG: &str = "pace_token";

/// The verified admission, put into the request's extensions for the
/// handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted(pub AdmissionClaims);

/// Why a request was not let through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No token in the query, cookie or `Authorization`.
    #[error("no admission token")]
    Missing,
    /// Not a JWT, or claims missing.
    #[error("malformed admission token: {0}")]
    Malformed(String),
    /// `alg` is not EdDSA/ES256, or not the algorithm of the key its kid
    /// names.
    #[error("disallowed algorithm: {0}")]
    Algorithm(String),
    /// No `kid` in the header.
    #[error("admission token has no kid")]
    MissingKid,
    /// The JWKS does not publish the kid (even after a refetch).
    #[error("unknown kid")]
    UnknownKid,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `exp` has passed.
    #[error("expired")]
    Expired,
    /// Another room's admission.
    #[error("admission for another room")]
    WrongAudience,
    /// Another issuer's token.
    #[error("another issuer")]
    WrongIssuer,
    /// The keys cannot be had: refused, because nothing can be verified.
    #[error("admission keys unavailable: {0}")]
    KeysUnavailable(JwksError),
}

impl Refusal {
    /// A stable snake_case name (logs, metrics).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed(_) => "malformed",
            Refusal::Algorithm(_) => "disallowed_algorithm",
            Refusal::MissingKid => "missing_kid",
            Refusal::UnknownKid => "unknown_kid",
            Refusal::BadSignature => "bad_signature",
            Refusal::Expired => "expired",
            Refusal::WrongAudience => "wrong_audience",
            Refusal::WrongIssuer => "wrong_issuer",
            Refusal::KeysUnavailable(_) => "keys_unavailable",
        }
    }
}

/// Checks admission tokens for one room of one cluster.
#[derive(Debug, Clone)]
pub struct AdmissionVerifier {
    keys: Arc<KeyCache>,
    room: String,
    issuer: String,
    leeway: Duration,
    waiting_url: String,
}

impl AdmissionVerifier {
    /// A verifier for admissions to `room` issued by `issuer` (the nodes'
    /// `--token-issuer`, `pace` by default), with a 5 s leeway on `exp` and
    /// the waiting page `/r/{room}`.
    pub fn new(keys: Arc<KeyCache>, room: impl Into<String>, issuer: impl Into<String>) -> Self {
        let room = room.into();
        AdmissionVerifier {
            keys,
            waiting_url: format!("/r/{room}"),
            room,
            issuer: issuer.into(),
            leeway: Duration::from_secs(5),
        }
    }

    /// Sets where refused visitors are sent (e.g. the waiting room's
    /// absolute URL when it is on another host).
    #[must_use]
    pub fn with_waiting_url(mut self, url: impl Into<String>) -> Self {
        self.waiting_url = url.into();
        self
    }

    /// Sets the tolerated clock skew on `exp`.
    #[must_use]
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Where refused visitors are sent.
    pub fn waiting_url(&self) -> &str {
        &self.waiting_url
    }

    /// Verifies a token: algorithm and kid, signature, `aud`, `iss`, `exp`,
    /// `sub`.
    pub async fn verify(&self, token: &str) -> Result<AdmissionClaims, Refusal> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| Refusal::Malformed(e.to_string()))?;
        if !matches!(header.alg, Algorithm::EdDSA | Algorithm::ES256) {
            return Err(Refusal::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header.kid.ok_or(Refusal::MissingKid)?;
        let key = self.keys.key(&kid).await.map_err(|e| match e {
            Lookup::UnknownKid => Refusal::UnknownKid,
            Lookup::Unavailable(e) => Refusal::KeysUnavailable(e),
        })?;
        if header.alg != key.alg {
            return Err(Refusal::Algorithm(format!(
                "{:?} for a {:?} key",
                header.alg, key.alg
            )));
        }
        let mut validation = Validation::new(key.alg);
        validation.set_audience(&[&self.room]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.leeway = self.leeway.as_secs();
        jsonwebtoken::decode::<AdmissionClaims>(token, &key.key, &validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => Refusal::Expired,
                ErrorKind::InvalidAudience => Refusal::WrongAudience,
                ErrorKind::InvalidIssuer => Refusal::WrongIssuer,
                ErrorKind::InvalidSignature => Refusal::BadSignature,
                ErrorKind::InvalidAlgorithm => Refusal::Algorithm(e.to_string()),
                _ => Refusal::Malformed(e.to_string()),
            })
    }
}

/// The request's admission token: `?pace_token=`, else the
/// `pace_admission` cookie, else `Authorization: Bearer` (the gateways'
/// order).
pub fn token_of<B>(req: &http::Request<B>) -> Option<String> {
    if let Some(q) = req.uri().query()
        && let Some((_, v)) =
            form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == TOKEN_QUERY_ARG)
        && !v.is_empty()
    {
        return Some(v.into_owned());
    }
    for value in req.headers().get_all(http::header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=')
                && k == COOKIE
                && !v.is_empty()
            {
                return Some(v.to_owned());
            }
        }
    }
    let auth = req
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = auth.trim().split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .then(|| token.trim().to_owned())
}
