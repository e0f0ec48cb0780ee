//! Where the JWKS comes from: the [`JwksSource`] trait (so a site can plug
//! in its own HTTP client, e.g. for HTTPS) and [`HttpJwks`], which fetches
//! it over plain HTTP with hyper, bounded by a timeout and a size limit.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::JwksError;

/// A boxed future, so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that yields the cluster's JWKS document.
pub trait JwksSource: Send + Sync + std::fmt::Debug {
    /// Fetches the current JWKS text.
    fn fetch(&self) -> BoxFuture<'_, Result<String, JwksError>>;
}

/// Largest JWKS accepted (a handful of keys is well under 4 KiB).
const MAX_JWKS_BYTES: usize = 64 * 1024;

/// The JWKS over plain HTTP (`http://node:port/.well-known/jwks.json`, or
/// through the gateway). For HTTPS, implement [`JwksSource`] with the
/// site's own TLS client.
#[derive(Debug, Clone)]
pub struct HttpJwks {
    url: Uri,
    timeout: Duration,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl HttpJwks {
    /// A source for `url`, with a 5 s timeout per fetch.
    pub fn new(url: Uri) -> HttpJwks {
        HttpJwks {
            url,
            timeout: Duration::from_secs(5),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sets the per-fetch timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> HttpJwks {
        self.timeout = timeout;
        self
    }

    async fn get(&self) -> Result<String, JwksError> {
        let url = self.url.to_string();
        let unreachable = |reason: String| JwksError::Unreachable {
            url: url.clone(),
            reason,
        };
        let resp = tokio::time::timeout(self.timeout, self.client.get(self.url.clone()))
            .await
            .map_err(|_| unreachable(format!("no answer within {:?}", self.timeout)))?
            .map_err(|e| unreachable(e.to_string()))?;
        if resp.status() != http::StatusCode::OK {
            return Err(JwksError::Status {
                url,
                status: resp.status().as_u16(),
            });
        }
        let body = tokio::time::timeout(
            self.timeout,
            Limited::new(resp.into_body(), MAX_JWKS_BYTES).collect(),
        )
        .await
        .map_err(|_| unreachable(format!("body not read within {:?}", self.timeout)))?
        .map_err(|e| unreachable(e.to_string()))?
        .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| JwksError::Invalid("not UTF-8".to_owned()))
    }
}

impl JwksSource for HttpJwks {
    fn fetch(&self) -> BoxFuture<'_, Result<String, JwksError>> {
        Box::pin(self.get())
    }
}
