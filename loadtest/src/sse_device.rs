//! One simulated device on the HTTP streaming transport (`--transport
//! sse`): `GET /stream` with its device id, wait for `welcome`, then read
//! events until told to stop, stamping every load-test notification as
//! [`crate::device::run`] does. Its bytes are counted at the socket.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use pace_protocol::ServerFrame;
use tokio::time::timeout_at;
use tokio_util::sync::CancellationToken;

use crate::clock::unix_micros;
use crate::counting::Counted;
use crate::device::{CloseOutcome, DeviceLog, Dial, dial_tcp};

/// An open stream: the response body, and what was read past `welcome`.
#[derive(Debug)]
pub struct Sse {
    body: Incoming,
    buf: String,
    /// Keeps the connection's request side (dropping it may end it).
    _sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

/// The data of the next complete event in `buf` (comments and events
/// without data are skipped), removing it.
fn next_data(buf: &mut String) -> Option<Option<String>> {
    let end = buf.find("\n\n")?;
    let block: String = buf.drain(..end + 2).collect();
    let mut data: Option<String> = None;
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("data: ") {
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(v);
                }
                None => data = Some(v.to_owned()),
            }
        }
    }
    Some(data)
}

/// Connects one device to `host`'s `/stream` (at `dial.addr`) and waits
/// for its `welcome`: the stream and the connect latency, or a short
/// failure reason as [`crate::device::connect`] gives.
pub async fn connect(dial: Dial<'_>, host: &str) -> Result<(Sse, Duration), String> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::from_std(started + dial.timeout);
    let stream = dial_tcp(&dial, deadline).await?;
    let stream = Counted::new(stream, dial.counts);
    let (mut sender, conn) = timeout_at(
        deadline,
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| "timeout_handshake".to_owned())?
    .map_err(|_| "http_handshake".to_owned())?;
    tokio::spawn(conn);
    let mut req = hyper::Request::get("/stream")
        .header("host", host)
        .header("accept", "text/event-stream")
        .header(pace_protocol::DEVICE_ID_HEADER, dial.device_id);
    if let Some(t) = dial.token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|_| "bad_request".to_owned())?;
    let resp = timeout_at(deadline, sender.send_request(req))
        .await
        .map_err(|_| "timeout_handshake".to_owned())?
        .map_err(|_| "http_send".to_owned())?;
    if resp.status() != 200 {
        return Err(format!("http_{}", resp.status().as_u16()));
    }
    let mut sse = Sse {
        body: resp.into_body(),
        buf: String::new(),
        _sender: sender,
    };
    loop {
        while let Some(data) = next_data(&mut sse.buf) {
            let Some(data) = data else { continue };
            return match serde_json::from_str::<ServerFrame>(&data) {
                Ok(ServerFrame::Welcome(_)) => Ok((sse, started.elapsed())),
                Ok(ServerFrame::Error { code, .. }) => {
                    Err(format!("error_frame_{}", code.as_str()))
                }
                Ok(_) => Err("first_frame_not_welcome".to_owned()),
                Err(_) => Err("welcome_unparsable".to_owned()),
            };
        }
        let frame = timeout_at(deadline, sse.body.frame())
            .await
            .map_err(|_| "timeout_welcome".to_owned())?;
        match frame {
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    sse.buf.push_str(&String::from_utf8_lossy(&data));
                }
            }
            Some(Err(_)) => return Err("stream_error".to_owned()),
            None => return Err("eof_before_welcome".to_owned()),
        }
    }
}

/// Reads until `stop` fires (then drops the stream: an HTTP stream has no
/// close handshake) or the node ends it.
pub async fn run(
    mut sse: Sse,
    run_id: &str,
    stop: CancellationToken,
    received: &AtomicU64,
) -> DeviceLog {
    let mut log = DeviceLog::default();
    let mut seen: Vec<u64> = Vec::new();
    loop {
        while let Some(data) = next_data(&mut sse.buf) {
            if let Some(data) = data {
                let now = unix_micros();
                crate::device::on_text(&data, now, run_id, &mut seen, &mut log, received);
            }
        }
        let frame = tokio::select! {
            biased;
            () = stop.cancelled() => {
                log.close = CloseOutcome::Clean;
                return log;
            }
            f = sse.body.frame() => f,
        };
        match frame {
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    let text = String::from_utf8_lossy(&data);
                    if text.contains("event: close") {
                        log.dropped = Some("closed_event".to_owned());
                        return log;
                    }
                    sse.buf.push_str(&text);
                }
            }
            Some(Err(_)) => {
                log.dropped = Some("stream_error".to_owned());
                return log;
            }
            None => {
                log.dropped = Some("eof".to_owned());
                return log;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_and_comments_skipped() {
        let mut buf = ": pace\nretry: 1000\n\nid: [1]\ndata: {\"a\":1}\n\ndata: x".to_owned();
        assert_eq!(next_data(&mut buf), Some(None));
        assert_eq!(next_data(&mut buf), Some(Some("{\"a\":1}".to_owned())));
        assert_eq!(next_data(&mut buf), None);
        assert_eq!(buf, "data: x");
    }
}
