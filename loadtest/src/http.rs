//! The coordinator's small HTTP client: `GET /ready` and `/metrics`, the
//! `POST /api/v1/notify` that starts each broadcast, and the waiting-room
//! calls of `surge` (room setup, stats, session release from the workers). Keep-alive connections
//! are pooled, so a notify's measured send instant does not include a TCP
//! handshake after the first one.

use std::time::Duration;

use anyhow::{Context, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A response: status and whole body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// Body bytes.
    pub body: Bytes,
}

impl Reply {
    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A pooled HTTP/1.1 client.
#[derive(Debug, Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    /// A client with `TCP_NODELAY` (the notify POST is latency-measured).
    pub fn new() -> Http {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Http {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// `GET url`.
    pub async fn get(&self, url: &str, timeout: Duration) -> anyhow::Result<Reply> {
        self.request(Method::GET, url, None, None, timeout).await
    }

    /// `GET url` with a bearer token.
    pub async fn get_auth(
        &self,
        url: &str,
        bearer: &str,
        timeout: Duration,
    ) -> anyhow::Result<Reply> {
        self.request(Method::GET, url, Some(bearer), None, timeout)
            .await
    }

    /// `POST url` with a JSON body and a bearer token.
    pub async fn post_json(
        &self,
        url: &str,
        bearer: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> anyhow::Result<Reply> {
        self.request(Method::POST, url, Some(bearer), Some(body), timeout)
            .await
    }

    /// `POST url` with a JSON body and no credentials.
    pub async fn post_json_plain(
        &self,
        url: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> anyhow::Result<Reply> {
        self.request(Method::POST, url, None, Some(body), timeout)
            .await
    }

    /// `POST url` with a JSON body on behalf of `device`: its token as the
    /// bearer when it has one, and `x-device-id` (the credential of an
    /// anonymous device on a node that accepts them; the gateway also
    /// hashes on it), as for `POST /api/v1/sessions/release`.
    pub async fn post_json_as_device(
        &self,
        url: &str,
        device: &str,
        token: Option<&str>,
        body: Vec<u8>,
        timeout: Duration,
    ) -> anyhow::Result<Reply> {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(CONTENT_TYPE, "application/json")
            .header("x-device-id", device);
        if let Some(t) = token {
            builder = builder.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = builder
            .body(Full::new(Bytes::from(body)))
            .with_context(|| format!("building POST {url}"))?;
        self.send(req, timeout)
            .await
            .with_context(|| format!("POST {url}"))
    }

    /// `PUT url` with a JSON body and a bearer token.
    pub async fn put_json(
        &self,
        url: &str,
        bearer: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> anyhow::Result<Reply> {
        self.request(Method::PUT, url, Some(bearer), Some(body), timeout)
            .await
    }

    /// One request: optional bearer token, optional JSON body.
    async fn request(
        &self,
        method: Method,
        url: &str,
        bearer: Option<&str>,
        json: Option<Vec<u8>>,
        timeout: Duration,
    ) -> anyhow::Result<Reply> {
        let mut builder = Request::builder().method(method.clone()).uri(url);
        if let Some(token) = bearer {
            builder = builder.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match json {
            Some(bytes) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                Bytes::from(bytes)
            }
            None => Bytes::new(),
        };
        let req = builder
            .body(Full::new(body))
            .with_context(|| format!("building {method} {url}"))?;
        self.send(req, timeout)
            .await
            .with_context(|| format!("{method} {url}"))
    }

    async fn send(&self, req: Request<Full<Bytes>>, timeout: Duration) -> anyhow::Result<Reply> {
        let exchange = async {
            let response = self.client.request(req).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok(Reply { status, body })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| anyhow!("timed out after {timeout:?}"))?
    }
}
