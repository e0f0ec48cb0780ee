//! The tower layer: [`AdmissionLayer`] wraps a service in an
//! [`AdmissionService`], which verifies each request's admission before
//! the inner service sees it. Refusals become responses here, in one place:
//! `302` to the waiting page for a visitor without a valid admission, `503`
//! with `Retry-After` when the keys cannot be had (fail closed).

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, StatusCode, header};
use tower_layer::Layer;
use tower_service::Service;

use crate::source::BoxFuture;
use crate::verify::{AdmissionVerifier, Admitted, Refusal, token_of};

/// Adds admission enforcement to a service.
#[derive(Debug, Clone)]
pub struct AdmissionLayer {
    verifier: Arc<AdmissionVerifier>,
}

impl AdmissionLayer {
    /// A layer checking admissions with `verifier`.
    pub fn new(verifier: Arc<AdmissionVerifier>) -> AdmissionLayer {
        AdmissionLayer { verifier }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = AdmissionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AdmissionService {
            inner,
            verifier: Arc::clone(&self.verifier),
        }
    }
}

/// A service that lets requests through only with a valid admission.
#[derive(Debug, Clone)]
pub struct AdmissionService<S> {
    inner: S,
    verifier: Arc<AdmissionVerifier>,
}

impl<S, B, R> Service<Request<B>> for AdmissionService<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The clone that was driven to readiness serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = Arc::clone(&self.verifier);
        Box::pin(async move {
            let verdict = match token_of(&req) {
                None => Err(Refusal::Missing),
                Some(token) => verifier.verify(&token).await,
            };
            match verdict {
                Ok(claims) => {
                    req.extensions_mut().insert(Admitted(claims));
                    inner.call(req).await
                }
                Err(refusal) => {
                    tracing::debug!(reason = refusal.code(), "admission refused");
                    Ok(refused(&verifier, &refusal))
                }
            }
        })
    }
}

/// The response for a refusal.
fn refused<R: Default>(verifier: &AdmissionVerifier, refusal: &Refusal) -> Response<R> {
    let mut resp = Response::new(R::default());
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Refusal::KeysUnavailable(_) = refusal {
        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return resp;
    }
    match HeaderValue::from_str(verifier.waiting_url()) {
        Ok(location) => {
            *resp.status_mut() = StatusCode::FOUND;
            resp.headers_mut().insert(header::LOCATION, location);
        }
        // A waiting URL that is no header value: refuse without redirect.
        Err(_) => *resp.status_mut() = StatusCode::FORBIDDEN,
    }
    resp
}
