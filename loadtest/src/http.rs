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
        let req = Request::builder()
            .method(Method::GET)
            .uri(url)
            .body(Full::new(Bytes::new()))
            .with_context(|| format!("building GET {url}"))?;
        self.send(req, timeout)
            .await
            .with_context(|| format!("GET {url}"))
    }

    /// `POST url` with a JSON body and a bearer token.
    pub async fn post_json(
        &self,
        url: &str,
        bearer: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> anyhow::Result<Reply> {
        let req = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(CONTENT_TYPE, "application/json")
            .header(AUTHORIZATION, format!("Bearer {bearer}"))
            .body(Full::new(Bytes::from(body)))
            .with_context(|| format!("building POST {url}"))?;
        self.send(req, timeout)
            .await
            .with_context(|| format!("POST {url}"))
    }

    /// `POST url` with a JSON body and no credentials (the body carries
    /// them, as in `POST /api/v1/sessions/release`).
    pub async fn post_json_plain(
        &self,
        url: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> anyhow::Result<Reply> {
        let req = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(CONTENT_TYPE, "application/json")
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
        let req = Request::builder()
            .method(Method::PUT)
            .uri(url)
            .header(CONTENT_TYPE, "application/json")
            .header(AUTHORIZATION, format!("Bearer {bearer}"))
            .body(Full::new(Bytes::from(body)))
            .with_context(|| format!("building PUT {url}"))?;
        self.send(req, timeout)
            .await
            .with_context(|| format!("PUT {url}"))
    }

    /// `GET url` with a bearer token.
    pub async fn get_auth(
        &self,
        url: &str,
        bearer: &str,
        timeout: Duration,
    ) -> anyhow::Result<Reply> {
        let req = Request::builder()
            .method(Method::GET)
            .uri(url)
            .header(AUTHORIZATION, format!("Bearer {bearer}"))
            .body(Full::new(Bytes::new()))
            .with_context(|| format!("building GET {url}"))?;
        self.send(req, timeout)
            .await
            .with_context(|| format!("GET {url}"))
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
