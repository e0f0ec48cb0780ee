//! One simulated device: connect from a chosen source address, complete the
//! WebSocket handshake, wait for `welcome`, then read until told to stop,
//! stamping every load-test notification with its receive time.
//!
//! A device costs the load generator one socket, one small task and a read
//! buffer of `read_buffer_bytes`: tens of thousands fit in a few processes.
//! Reading continuously also answers the node's pings (tungstenite queues
//! the pong and writes it on the next read).

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use pace_protocol::{ErrorBody, ServerFrame};
use serde::Deserialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout_at;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};
use tokio_util::sync::CancellationToken;

use crate::clock::unix_micros;
use crate::counting::{ByteCounts, Counted};

/// An open device connection; its bytes are counted at the socket.
pub type Ws = WebSocketStream<Counted<TcpStream>>;

/// How long a device waits for the node's close reply before giving up.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how one device connects.
#[derive(Debug, Clone)]
pub struct Dial<'a> {
    /// The device id sent in `x-device-id`.
    pub device_id: &'a str,
    /// Its device token (`--register`), sent as `Authorization: Bearer`.
    pub token: Option<&'a str>,
    /// `ws://host:port/ws` of its target.
    pub ws_url: &'a str,
    /// Resolved address of its target.
    pub addr: SocketAddr,
    /// Source address to bind, if any.
    pub source: Option<IpAddr>,
    /// WebSocket buffers and limits.
    pub config: WebSocketConfig,
    /// Budget for TCP connect + handshake + `welcome`.
    pub timeout: Duration,
    /// Where the connection's bytes are counted.
    pub counts: Arc<ByteCounts>,
}

/// The client-side WebSocket configuration: a small eagerly-allocated read
/// buffer and no write batching, so thousands of idle clients stay cheap.
pub fn client_config(read_buffer_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer_bytes.max(256))
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// Connects one device and waits for its `welcome`. Returns the stream and
/// the connect latency, or a short snake_case failure reason
/// (`connect_connection_refused`, `http_503_node_full`, `timeout_welcome`, …).
pub async fn connect(dial: Dial<'_>) -> Result<(Ws, Duration), String> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::from_std(started + dial.timeout);

    let stream = dial_tcp(&dial, deadline).await?;

    let mut request = dial
        .ws_url
        .into_client_request()
        .map_err(|e| ws_reason(&e))?;
    let id = HeaderValue::from_str(dial.device_id).map_err(|_| "bad_device_id".to_owned())?;
    request
        .headers_mut()
        .insert(pace_protocol::DEVICE_ID_HEADER, id);
    if let Some(token) = dial.token {
        let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "bad_device_token".to_owned())?;
        request.headers_mut().insert(AUTHORIZATION, bearer);
    }

    let stream = Counted::new(stream, dial.counts);
    let (mut ws, _response) = timeout_at(
        deadline,
        client_async_with_config(request, stream, Some(dial.config)),
    )
    .await
    .map_err(|_| "timeout_handshake".to_owned())?
    .map_err(|e| ws_reason(&e))?;

    loop {
        let next = timeout_at(deadline, ws.next())
            .await
            .map_err(|_| "timeout_welcome".to_owned())?;
        match next {
            Some(Ok(Message::Text(text))) => {
                return match serde_json::from_str::<ServerFrame>(text.as_str()) {
                    Ok(ServerFrame::Welcome(_)) => Ok((ws, started.elapsed())),
                    Ok(ServerFrame::Error { code, .. }) => {
                        Err(format!("error_frame_{}", code.as_str()))
                    }
                    Ok(_) => Err("first_frame_not_welcome".to_owned()),
                    Err(_) => Err("welcome_unparsable".to_owned()),
                };
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(format!(
                    "closed_before_welcome_{}",
                    frame.map(|f| u16::from(f.code)).unwrap_or(1005)
                ));
            }
            Some(Ok(_)) => continue, // ping or pong before welcome: keep waiting
            Some(Err(e)) => return Err(ws_reason(&e)),
            None => return Err("eof_before_welcome".to_owned()),
        }
    }
}

/// What one device saw during its life.
#[derive(Debug, Default)]
pub struct DeviceLog {
    /// `(message index, receive instant in µs since the epoch)`, first
    /// receipt of each index only.
    pub receipts: Vec<(u32, u64)>,
    /// Receipts of an index already received.
    pub duplicates: u64,
    /// Notifications without this run's tag.
    pub foreign: u64,
    /// `error` frames.
    pub error_frames: u64,
    /// `None` while open or after a close we started; `Some(reason)` when
    /// the connection ended before we asked (`closed_1012`, `eof`, …).
    pub dropped: Option<String>,
    /// How our close went (only meaningful if not dropped).
    pub close: CloseOutcome,
    /// `surge`: the device's life in the waiting room.
    pub surge: Option<crate::ipc::SurgeRecord>,
}

/// How a close we started ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CloseOutcome {
    /// The node answered our close frame with its own (RFC 6455 §5.5.1).
    Clean,
    /// The node closed the TCP connection without a close frame.
    NoReply,
    /// Sending failed, the connection broke, or no answer came in time.
    #[default]
    Failed,
}

/// The fields of a server frame the hot path needs, borrowed from the text
/// so that reading a notification allocates nothing.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    data: Option<LoadTag<'a>>,
}

/// The `data` of a load-test notification: `{"run": "...", "k": 3, ...}`.
#[derive(Deserialize)]
struct LoadTag<'a> {
    #[serde(default, borrow)]
    run: Option<Cow<'a, str>>,
    #[serde(default)]
    k: Option<u32>,
}

/// Reads until `stop` fires (then closes cleanly) or the node ends the
/// connection. Each first receipt of a tagged notification bumps `received`.
pub async fn run(
    mut ws: Ws,
    run_id: &str,
    stop: CancellationToken,
    received: &AtomicU64,
) -> DeviceLog {
    let mut log = DeviceLog::default();
    // Bit k set = message k already received; grows with the highest index.
    let mut seen: Vec<u64> = Vec::new();
    loop {
        let next = tokio::select! {
            biased;
            () = stop.cancelled() => {
                log.close = close(&mut ws).await;
                return log;
            }
            next = ws.next() => next,
        };
        match next {
            Some(Ok(Message::Text(text))) => {
                let now = unix_micros();
                on_text(text.as_str(), now, run_id, &mut seen, &mut log, received);
            }
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                log.dropped = Some(format!("closed_{code}"));
                return log;
            }
            Some(Ok(_)) => {} // ping (answered by tungstenite), pong, binary
            Some(Err(e)) => {
                log.dropped = Some(ws_reason(&e));
                return log;
            }
            None => {
                log.dropped = Some("eof".to_owned());
                return log;
            }
        }
    }
}

/// Classifies one text frame into the log.
pub(crate) fn on_text(
    text: &str,
    now_us: u64,
    run_id: &str,
    seen: &mut Vec<u64>,
    log: &mut DeviceLog,
    received: &AtomicU64,
) {
    let Ok(frame) = serde_json::from_str::<Incoming<'_>>(text) else {
        // Not even a typed object, or `data` of another shape: not ours.
        log.foreign += 1;
        return;
    };
    match frame.kind.as_ref() {
        "notification" => {
            let Some(LoadTag {
                run: Some(run),
                k: Some(k),
            }) = frame.data
            else {
                log.foreign += 1;
                return;
            };
            if run != run_id {
                log.foreign += 1;
                return;
            }
            let (word, bit) = ((k / 64) as usize, k % 64);
            if seen.len() <= word {
                seen.resize(word + 1, 0);
            }
            if seen[word] & (1 << bit) != 0 {
                log.duplicates += 1;
            } else {
                seen[word] |= 1 << bit;
                log.receipts.push((k, now_us));
                received.fetch_add(1, Ordering::Relaxed);
            }
        }
        "error" => log.error_frames += 1,
        _ => {}
    }
}

/// Sends a normal close and waits (bounded) for the node's reply.
pub async fn close(ws: &mut Ws) -> CloseOutcome {
    let frame = CloseFrame {
        code: WsCloseCode::from(u16::from(pace_protocol::CloseCode::NORMAL)),
        reason: "".into(),
    };
    let handshake = async {
        if ws.send(Message::Close(Some(frame))).await.is_err() {
            return CloseOutcome::Failed;
        }
        let mut replied = false;
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(_)) => replied = true,
                Ok(_) => {} // messages already in flight
                Err(WsError::ConnectionClosed) => break,
                Err(_) if replied => break,
                // TCP closed or reset with no close frame back.
                Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => break,
                Err(WsError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(_) => return CloseOutcome::Failed,
            }
        }
        if replied {
            CloseOutcome::Clean
        } else {
            CloseOutcome::NoReply
        }
    };
    tokio::time::timeout(CLOSE_TIMEOUT, handshake)
        .await
        .unwrap_or(CloseOutcome::Failed)
}

/// `prefix_kind` for an I/O error, e.g. `connect_connection_refused`.
/// Opens the TCP connection of `dial` (from its source address, if any)
/// by `deadline`, with Nagle off (pongs and POSTs should not wait); a
/// short failure reason otherwise. Both transports dial through it.
pub async fn dial_tcp(
    dial: &Dial<'_>,
    deadline: tokio::time::Instant,
) -> Result<TcpStream, String> {
    let socket = if dial.addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| io_reason("socket", &e))?;
    if let Some(ip) = dial.source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| io_reason("bind", &e))?;
    }
    let stream = timeout_at(deadline, socket.connect(dial.addr))
        .await
        .map_err(|_| "timeout_connect".to_owned())?
        .map_err(|e| io_reason("connect", &e))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

pub fn io_reason(prefix: &str, e: &std::io::Error) -> String {
    format!("{prefix}_{}", snake_case(&format!("{:?}", e.kind())))
}

/// A short reason for a WebSocket error. A refused upgrade reports its HTTP
/// status and, when the body is a Pace error body, its code:
/// `http_503_node_full`.
pub fn ws_reason(e: &WsError) -> String {
    match e {
        WsError::Http(response) => {
            let status = response.status().as_u16();
            let code = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice::<ErrorBody>(b).ok())
                .map(|b| format!("_{}", b.error.code.as_str()))
                .unwrap_or_default();
            format!("http_{status}{code}")
        }
        WsError::Io(io) => io_reason("io", io),
        WsError::ConnectionClosed | WsError::AlreadyClosed => "connection_closed".to_owned(),
        WsError::Protocol(p) => format!(
            "protocol_{}",
            snake_case(
                &format!("{p:?}")
                    .chars()
                    .take_while(|c| c.is_alphanumeric())
                    .collect::<String>()
            )
        ),
        WsError::Capacity(_) => "capacity".to_owned(),
        WsError::Utf8(_) => "utf8".to_owned(),
        WsError::Url(_) => "bad_url".to_owned(),
        WsError::HttpFormat(_) => "http_format".to_owned(),
        other => snake_case(
            &format!("{other:?}")
                .chars()
                .take_while(|c| c.is_alphanumeric())
                .collect::<String>(),
        ),
    }
}

/// `ConnectionRefused` → `connection_refused`.
fn snake_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_cases_error_kinds() {
        assert_eq!(snake_case("ConnectionRefused"), "connection_refused");
        assert_eq!(snake_case("TimedOut"), "timed_out");
        let e = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        assert_eq!(io_reason("bind", &e), "bind_addr_in_use");
    }

    #[test]
    fn refused_upgrade_reports_status_and_code() {
        let body = br#"{"error":{"code":"node_full","message":"full","retryable":true}}"#.to_vec();
        let response = tokio_tungstenite::tungstenite::http::Response::builder()
            .status(503)
            .body(Some(body))
            .unwrap();
        assert_eq!(
            ws_reason(&WsError::Http(Box::new(response))),
            "http_503_node_full"
        );
        let bare = tokio_tungstenite::tungstenite::http::Response::builder()
            .status(404)
            .body(None)
            .unwrap();
        assert_eq!(ws_reason(&WsError::Http(Box::new(bare))), "http_404");
    }

    fn feed(texts: &[&str]) -> (DeviceLog, u64) {
        let received = AtomicU64::new(0);
        let mut log = DeviceLog::default();
        let mut seen = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            on_text(t, 1_000 + i as u64, "r1", &mut seen, &mut log, &received);
        }
        (log, received.load(Ordering::Relaxed))
    }

    #[test]
    fn receipts_duplicates_and_foreign() {
        let n = |run: &str, k: u32| {
            format!(
                r#"{{"type":"notification","id":"x","scope":"all","seq":1,"event":"lt","data":{{"run":"{run}","k":{k}}},"sent_at_ms":1}}"#
            )
        };
        let a = n("r1", 0);
        let b = n("r1", 70);
        let other = n("r2", 1);
        let (log, received) = feed(&[
            &a,
            &b,
            &a,
            &other,
            r#"{"type":"notification","data":7}"#,
            r#"{"type":"notification","data":{"hello":1}}"#,
            r#"{"type":"pong","id":1}"#,
            r#"{"type":"error","code":"bad_frame","message":"m"}"#,
            "not json",
        ]);
        assert_eq!(log.receipts, vec![(0, 1_000), (70, 1_001)]);
        assert_eq!(received, 2);
        assert_eq!(log.duplicates, 1);
        assert_eq!(log.foreign, 4);
        assert_eq!(log.error_frames, 1);
    }
}
