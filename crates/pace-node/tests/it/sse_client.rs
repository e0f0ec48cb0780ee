//! A minimal Server-Sent Events client for the stream tests: opens
//! `GET /stream` with hyper, parses the events (comments counted), and
//! POSTs frames to `/stream/send`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use pace_protocol::ServerFrame;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::support::*;

/// One event of the stream.
#[derive(Debug, Clone, Default)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// Something read from the stream.
#[derive(Debug)]
pub enum Item {
    Event(Event),
    /// A comment line (`: ping`, `: keep-alive`).
    Comment(String),
}

/// An open stream.
pub struct Sse {
    rx: mpsc::UnboundedReceiver<Item>,
    /// The response's headers.
    pub headers: http::HeaderMap,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sse {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens `path` (with `headers`) at `addr`: the status and, on 200, the stream.
pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, Option<Sse>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::get(path)
        .header("host", addr.to_string())
        .header("accept", "text/event-stream");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        SOON,
        sender.send_request(req.body(Empty::<Bytes>::new()).unwrap()),
    )
    .await
    .expect("answered in time")
    .unwrap();
    let status = resp.status().as_u16();
    if status != 200 {
        return (status, None);
    }
    let headers = resp.headers().clone();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut body = resp.into_body();
    let task = tokio::spawn(async move {
        let _sender = sender;
        let mut buf = String::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.push_str(&String::from_utf8_lossy(&data));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let mut ev = Event::default();
                let mut has_data = false;
                for line in block.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        let _ = tx.send(Item::Comment(c.trim().to_owned()));
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        ev.id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        ev.event = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        if has_data {
                            ev.data.push('\n');
                        }
                        ev.data.push_str(v);
                        has_data = true;
                    }
                }
                if has_data {
                    let _ = tx.send(Item::Event(ev));
                }
            }
        }
    });
    (status, Some(Sse { rx, headers, task }))
}

impl Sse {
    /// The next item within `wait`; `None` when the stream ended or timed out.
    pub async fn item_within(&mut self, wait: Duration) -> Option<Item> {
        tokio::time::timeout(wait, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next event (comments skipped), or panic after [`SOON`].
    pub async fn event(&mut self) -> Event {
        loop {
            match self.item_within(SOON).await {
                Some(Item::Event(e)) => return e,
                Some(Item::Comment(_)) => {}
                None => panic!("the stream ended or was silent"),
            }
        }
    }

    /// The next server frame (a default event), or panic.
    pub async fn frame(&mut self) -> ServerFrame {
        let e = self.event().await;
        assert_eq!(e.event, None, "expected a frame, got {e:?}");
        serde_json::from_str(&e.data).unwrap_or_else(|err| panic!("{err}: {}", e.data))
    }

    /// The next frame that is not a queue update.
    pub async fn frame_but_queue(&mut self) -> ServerFrame {
        loop {
            match self.frame().await {
                ServerFrame::Queue(_) => {}
                f => return f,
            }
        }
    }

    /// Reads until the stream ends (`None`) within `wait`; the close
    /// event's data if one came.
    pub async fn closed(&mut self, wait: Duration) -> Option<Value> {
        let mut close = None;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(Item::Event(e))) if e.event.as_deref() == Some("close") => {
                    close = Some(serde_json::from_str(&e.data).unwrap());
                }
                Ok(Some(_)) => {}
                Ok(None) => return close,
                Err(_) => panic!("the stream did not end within {wait:?}"),
            }
        }
    }
}

/// POSTs `body` to `/stream/send` as `device`: status and body.
pub async fn post(addr: SocketAddr, device: &str, body: &str) -> (u16, String) {
    http(
        addr,
        "POST",
        "/stream/send",
        &[
            ("x-device-id", device),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
    .unwrap()
}
