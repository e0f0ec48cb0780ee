//! The HTTP streaming transport, the WebSocket's fallback for networks
//! whose proxies refuse the upgrade: `GET /stream` (Server-Sent Events)
//! brings the node's frames, `POST /stream/send` takes the device's.
//!
//! [`SseConn`] looks like the WebSocket to the driver (a stream and a sink
//! of [`Message`]s), so frames, resume and reconnects are the same code:
//!
//! - an event's `data` is a text frame; a keep-alive or ping comment is a
//!   [`Message::Ping`] (it proves the connection alive); the final
//!   `event: close` is a [`Message::Close`] with the node's close code;
//! - a text frame sent is POSTed (queued frames go as one array, up to 16)
//!   on one kept-alive connection, in order; a `409 stream_not_here` (the
//!   gateway now sends the device elsewhere) ends the connection as lost,
//!   so the driver reconnects the stream and resumes.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, Stream};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::endpoint::Endpoint;
use crate::http::USER_AGENT;
use crate::transport::Transport;

/// Most frames in one POST (the node's limit).
const MAX_BATCH: usize = 16;
/// Largest error answer read.
const MAX_ANSWER: usize = 64 * 1024;
/// Times a POST answered 429 (the stream's queue is full) is retried.
const BUSY_RETRIES: u32 = 20;

/// Why a stream did not open.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The node (or a proxy) answered with this status and body.
    Refused {
        /// HTTP status.
        status: u16,
        /// The answer's body (a node's is an `ErrorBody`).
        body: Bytes,
    },
    /// No answer: connect, TLS or HTTP failed.
    Failed(String),
}

/// What every request of the stream carries: the device id (header and
/// query), the token.
#[derive(Debug, Clone)]
pub(crate) struct Ident {
    /// `x-device-id` and other headers every request sends.
    pub(crate) headers: Vec<(http::HeaderName, String)>,
    /// The query every request sends (`device_id`, `token`).
    pub(crate) query: String,
}

/// An open stream: frames in from the event stream, frames out by POST.
#[derive(Debug)]
pub(crate) struct SseConn {
    inbound: mpsc::UnboundedReceiver<Result<Message, tungstenite::Error>>,
    outbound: Option<mpsc::UnboundedSender<String>>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Drop for SseConn {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

async fn connect(ep: &Endpoint) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = Transport::connect(ep).await.map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "stream HTTP connection ended");
        }
    });
    Ok(sender)
}

fn request(
    ep: &Endpoint,
    method: http::Method,
    path: &str,
    ident: &Ident,
    extra_query: &str,
) -> http::request::Builder {
    let mut query = ident.query.clone();
    if !extra_query.is_empty() {
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str(extra_query);
    }
    let sep = if query.is_empty() { "" } else { "?" };
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("{}{path}{sep}{query}", ep.prefix))
        .header(http::header::HOST, ep.authority())
        .header(http::header::USER_AGENT, USER_AGENT);
    for (name, value) in &ident.headers {
        b = b.header(name, value);
    }
    b
}

/// Opens `GET /stream` on `ep` (with `stream_headers`, e.g. departments,
/// and `extra_query`, e.g. `resume=1`); frames sent go to
/// `POST /stream/send` on `ep`.
pub(crate) async fn open(
    ep: &Endpoint,
    ident: Ident,
    stream_headers: Vec<(http::HeaderName, String)>,
    extra_query: &str,
    max_message_bytes: usize,
) -> Result<SseConn, OpenError> {
    let mut sender = connect(ep).await.map_err(OpenError::Failed)?;
    let mut b = request(ep, http::Method::GET, "/stream", &ident, extra_query)
        .header(http::header::ACCEPT, "text/event-stream")
        .header(http::header::CACHE_CONTROL, "no-cache");
    for (name, value) in stream_headers {
        b = b.header(name, value);
    }
    let req = b
        .body(Full::new(Bytes::new()))
        .map_err(|e| OpenError::Failed(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| OpenError::Failed(e.to_string()))?;
    let status = resp.status().as_u16();
    let is_events = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if status != 200 || !is_events {
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(OpenError::Refused { status, body });
    }
    let (in_tx, inbound) = mpsc::unbounded_channel();
    let weak = in_tx.downgrade();
    let body = resp.into_body();
    let reader = tokio::spawn(async move {
        // Keeps the connection's sender: dropping it may end the stream.
        let _sender = sender;
        read_events(body, in_tx, max_message_bytes.saturating_mul(2)).await;
    });
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_frames(ep.clone(), ident, out_rx, weak));
    Ok(SseConn {
        inbound,
        outbound: Some(out_tx),
        reader,
        writer,
    })
}

/// Parses the event stream into messages until it ends.
async fn read_events(
    mut body: hyper::body::Incoming,
    tx: mpsc::UnboundedSender<Result<Message, tungstenite::Error>>,
    max_buffer: usize,
) {
    let mut buf = String::new();
    loop {
        let frame = match body.frame().await {
            None => return,
            Some(Err(e)) => {
                let _ = tx.send(Err(tungstenite::Error::Io(std::io::Error::other(
                    e.to_string(),
                ))));
                return;
            }
            Some(Ok(f)) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.push_str(&String::from_utf8_lossy(&data));
        // Events end with a blank line; `\r\n` is allowed too.
        if buf.contains('\r') {
            buf = buf.replace("\r\n", "\n");
        }
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if let Some(msg) = parse_block(&block)
                && tx.send(Ok(msg)).is_err()
            {
                return;
            }
        }
        if buf.len() > max_buffer {
            let _ = tx.send(Err(tungstenite::Error::Io(std::io::Error::other(
                "an event larger than the message limit",
            ))));
            return;
        }
    }
}

/// One event block as a message.
fn parse_block(block: &str) -> Option<Message> {
    let mut event = None;
    let mut data: Option<String> = None;
    let mut comment = false;
    for line in block.lines() {
        if line.starts_with(':') {
            comment = true;
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = Some(value.to_owned()),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            _ => {}
        }
    }
    match (event.as_deref(), data) {
        (Some("close"), data) => {
            #[derive(serde::Deserialize)]
            struct Close {
                code: u16,
                #[serde(default)]
                reason: String,
            }
            let close = data.and_then(|d| serde_json::from_str::<Close>(&d).ok());
            Some(Message::Close(close.map(|c| CloseFrame {
                code: WsCloseCode::from(c.code),
                reason: c.reason.into(),
            })))
        }
        (None | Some("message"), Some(d)) => Some(Message::Text(d.into())),
        _ if comment => Some(Message::Ping(Bytes::new())),
        _ => None,
    }
}

/// POSTs queued frames in order, batched, on one kept-alive connection.
async fn write_frames(
    ep: Endpoint,
    ident: Ident,
    mut rx: mpsc::UnboundedReceiver<String>,
    inbound: mpsc::WeakUnboundedSender<Result<Message, tungstenite::Error>>,
) {
    let fail = |why: String| {
        if let Some(tx) = inbound.upgrade() {
            let _ = tx.send(Err(tungstenite::Error::Io(std::io::Error::other(why))));
        }
    };
    let mut conn: Option<SendRequest<Full<Bytes>>> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        let body = Bytes::from(format!("[{}]", batch.join(",")));
        let mut busy = 0;
        loop {
            match post(&ep, &ident, &mut conn, body.clone()).await {
                Ok(202) => break,
                Ok(429) if busy < BUSY_RETRIES => {
                    busy += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(409) => {
                    return fail("stream_not_here: the node no longer holds this stream".into());
                }
                Ok(status) => return fail(format!("POST /stream/send answered {status}")),
                Err(e) => return fail(format!("POST /stream/send failed: {e}")),
            }
        }
    }
}

/// One POST; reconnects once when the kept connection is gone.
async fn post(
    ep: &Endpoint,
    ident: &Ident,
    conn: &mut Option<SendRequest<Full<Bytes>>>,
    body: Bytes,
) -> Result<u16, String> {
    for attempt in 0..2 {
        let sender = match conn {
            Some(s) if !s.is_closed() => s,
            _ => conn.insert(connect(ep).await?),
        };
        if sender.ready().await.is_err() {
            *conn = None;
            continue;
        }
        let req = request(ep, http::Method::POST, "/stream/send", ident, "")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.clone()))
            .map_err(|e| e.to_string())?;
        match sender.send_request(req).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                // Read the answer so the connection can carry the next one.
                let _ = Limited::new(resp.into_body(), MAX_ANSWER).collect().await;
                return Ok(status);
            }
            Err(e) if attempt == 0 => {
                tracing::debug!(error = %e, "stream POST connection lost; reconnecting");
                *conn = None;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("no connection".into())
}

impl Stream for SseConn {
    type Item = Result<Message, tungstenite::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inbound.poll_recv(cx)
    }
}

impl Sink<Message> for SseConn {
    type Error = tungstenite::Error;

    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, msg: Message) -> Result<(), Self::Error> {
        match msg {
            Message::Text(t) => self
                .outbound
                .as_ref()
                .and_then(|tx| tx.send(t.as_str().to_owned()).ok())
                .ok_or(tungstenite::Error::ConnectionClosed),
            Message::Close(_) => {
                self.outbound = None;
                Ok(())
            }
            // Nothing else travels on the stream.
            _ => Ok(()),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.outbound = None;
        self.reader.abort();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_become_messages() {
        assert!(matches!(
            parse_block("data: {\"type\":\"welcome\"}\n\n"),
            Some(Message::Text(t)) if t.as_str() == "{\"type\":\"welcome\"}"
        ));
        assert!(matches!(
            parse_block("id: [1]\ndata: {}\n\n"),
            Some(Message::Text(_))
        ));
        assert!(matches!(
            parse_block(": keep-alive\n\n"),
            Some(Message::Ping(_))
        ));
        match parse_block("event: close\ndata: {\"code\":4000,\"reason\":\"replaced\"}\n\n") {
            Some(Message::Close(Some(f))) => {
                assert_eq!(u16::from(f.code), 4000);
                assert_eq!(f.reason.as_str(), "replaced");
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_block("retry: 1000\n\n").is_none());
    }
}
