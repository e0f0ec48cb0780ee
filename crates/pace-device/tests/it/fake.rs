//! A scripted node: accepts the client's WebSocket in-process and lets a
//! test send exact frames and close codes, and inspect what the client
//! sent (handshake headers, query, frames). For behaviour a real node
//! cannot be made to show on demand: duplicates, replays, every close code.

// The handshake callback's signature (a large `Err`) is tungstenite's.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Bound for anything expected "soon".
pub const SOON: Duration = Duration::from_secs(10);

/// A listening scripted node.
#[derive(Debug)]
pub struct FakeNode {
    listener: TcpListener,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

/// One accepted connection.
#[derive(Debug)]
pub struct FakeConn {
    ws: WebSocketStream<TcpStream>,
    /// Request path and query, e.g. `/ws?device_id=d&resume=1`.
    pub uri: String,
    /// Handshake headers (lower-case names).
    pub headers: Vec<(String, String)>,
}

impl FakeNode {
    /// Listens on a free loopback port.
    pub async fn bind() -> FakeNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        FakeNode { listener, url }
    }

    /// Accepts the next WebSocket connection.
    pub async fn accept(&self) -> FakeConn {
        tokio::time::timeout(SOON, self.accept_inner())
            .await
            .expect("the client connects in time")
    }

    /// Whether a connection arrives within `wait`.
    pub async fn connects_within(&self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.listener.accept())
            .await
            .is_ok()
    }

    async fn accept_inner(&self) -> FakeConn {
        let (tcp, _) = self.listener.accept().await.expect("accept");
        let mut uri = String::new();
        let mut headers = Vec::new();
        let ws = tokio_tungstenite::accept_hdr_async(tcp, |req: &Request, resp: Response| {
            uri = req.uri().to_string();
            headers = req
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                .collect();
            Ok(resp)
        })
        .await
        .expect("WebSocket handshake");
        FakeConn { ws, uri, headers }
    }

    /// Answers the next handshake with an HTTP error and this JSON body.
    pub async fn refuse(&self, status: u16, body: Value) {
        let (tcp, _) = tokio::time::timeout(SOON, self.listener.accept())
            .await
            .expect("the client connects in time")
            .expect("accept");
        let _ = tokio_tungstenite::accept_hdr_async(tcp, move |_: &Request, _: Response| {
            let mut err = ErrorResponse::new(Some(body.to_string()));
            *err.status_mut() =
                tokio_tungstenite::tungstenite::http::StatusCode::from_u16(status).expect("status");
            Err(err)
        })
        .await;
    }
}

impl FakeConn {
    /// A handshake header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sends `welcome` for `device` with the given heartbeat (ms).
    pub async fn welcome(&mut self, device: &str, interval_ms: u64, timeout_ms: u64) {
        self.send(json!({
            "type": "welcome", "protocol": 1, "device_id": device, "node_id": "fake",
            "groups": [], "heartbeat_interval_ms": interval_ms,
            "heartbeat_timeout_ms": timeout_ms, "max_message_bytes": 65536
        }))
        .await;
    }

    /// Sends one JSON frame.
    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .expect("send to client");
    }

    /// The next JSON frame from the client.
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(SOON, self.ws.next())
                .await
                .expect("a frame from the client in time")
                .expect("connection open")
                .expect("read");
            if let Message::Text(t) = msg {
                return serde_json::from_str(t.as_str()).expect("client frames are JSON");
            }
        }
    }

    /// Every frame the client sends within `wait`.
    pub async fn recv_for(&mut self, wait: Duration) -> Vec<Value> {
        let mut frames = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            if let Message::Text(t) = msg {
                frames.push(serde_json::from_str(t.as_str()).expect("JSON"));
            }
        }
        frames
    }

    /// Closes with `code`.
    pub async fn close(mut self, code: u16) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: "test".into(),
        };
        let _ = self.ws.close(Some(frame)).await;
        // Let the client read it and answer.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// A notification frame.
pub fn notification(id: &str, scope: &str, target: Option<&str>, epoch: u64, seq: u64) -> Value {
    let mut n = json!({
        "type": "notification", "id": id, "scope": scope, "epoch": epoch, "seq": seq,
        "event": "e", "data": {"seq": seq}, "sent_at_ms": 1
    });
    if let Some(t) = target {
        n["target"] = json!(t);
    }
    n
}
