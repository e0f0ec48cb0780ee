//! One plain HTTP/1.1 exchange with an endpoint, for the JSON APIs the
//! client calls besides the WebSocket (room status, registration): a new
//! connection per request, the answer read whole (up to a bound), the whole
//! exchange bounded by a timeout.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use pace_protocol::error::{ErrorBody, ErrorDetail};

use crate::endpoint::Endpoint;
use crate::transport::Transport;

/// Largest answer read, in bytes.
const MAX_ANSWER: usize = 64 * 1024;

/// `User-Agent` of every request.
pub(crate) const USER_AGENT: &str = concat!("pace-device/", env!("CARGO_PKG_VERSION"));

/// A request to send: method, path (with query, without the endpoint's
/// prefix), headers and an optional JSON body.
#[derive(Debug)]
pub(crate) struct Exchange<'a> {
    /// HTTP method.
    pub(crate) method: http::Method,
    /// Path and query, e.g. `/api/v1/rooms/sale/status?device_id=d`.
    pub(crate) path: &'a str,
    /// Extra headers.
    pub(crate) headers: Vec<(http::HeaderName, String)>,
    /// Bearer token for `Authorization`.
    pub(crate) bearer: Option<&'a str>,
    /// JSON body (sent with `content-type: application/json`).
    pub(crate) json: Option<Vec<u8>>,
}

/// Sends `req` to `ep` and reads the answer: `(status, body)`. `Err` is a
/// transport failure (connect, TLS, HTTP, timeout) as text; an HTTP error
/// status is an `Ok`.
pub(crate) async fn exchange(
    ep: &Endpoint,
    req: Exchange<'_>,
    timeout: std::time::Duration,
) -> Result<(u16, Bytes), String> {
    let work = async {
        let stream = Transport::connect(ep).await.map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        // The connection task ends when the answer is read or it fails.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
        });
        let mut builder = http::Request::builder()
            .method(req.method)
            .uri(format!("{}{}", ep.prefix, req.path))
            .header(http::header::HOST, ep.authority())
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, USER_AGENT);
        for (name, value) in req.headers {
            builder = builder.header(name, value);
        }
        if let Some(t) = req.bearer {
            builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match req.json {
            Some(json) => {
                builder = builder.header(http::header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(json))
            }
            None => Full::new(Bytes::new()),
        };
        let request = builder.body(body).map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// The node's error detail in an error answer, if the body is one.
pub(crate) fn error_detail(body: &[u8]) -> Option<ErrorDetail> {
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.error)
}

/// The start of a body that is not the expected JSON, for messages.
pub(crate) fn body_excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
}
