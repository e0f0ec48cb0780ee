//! Bad input from devices: each gets its documented error frame or close
//! code, is counted, and the node keeps serving everyone else.

use futures_util::SinkExt;
use pace_protocol::{ClientFrame, CloseCode, ErrorCode, ServerFrame};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

async fn expect_error(ws: &mut Ws, want: ErrorCode) {
    match next_frame(ws).await {
        ServerFrame::Error { code, message } => {
            assert_eq!(code, want, "{message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected {want:?} error, got {other:?}"),
    }
}

async fn ping_pong(ws: &mut Ws, id: u64) {
    send_text(
        ws,
        &serde_json::to_string(&ClientFrame::Ping { id: Some(id) }).unwrap(),
    )
    .await;
    assert_eq!(next_frame(ws).await, ServerFrame::Pong { id: Some(id) });
}

#[tokio::test]
async fn malformed_frames_get_error_frames_and_the_connection_stays() {
    let node = TestNode::start().await;
    let (mut ws, _) = node.connect("sloppy").await;
    send_text(&mut ws, "{not json").await;
    expect_error(&mut ws, ErrorCode::BadFrame).await;
    send_text(&mut ws, r#"{"no":"type"}"#).await;
    expect_error(&mut ws, ErrorCode::BadFrame).await;
    send_text(&mut ws, r#"{"type":"teleport"}"#).await;
    expect_error(&mut ws, ErrorCode::UnknownType).await;
    send_text(&mut ws, r#"{"type":"subscribe","group":"no spaces"}"#).await;
    expect_error(&mut ws, ErrorCode::InvalidFrame).await;
    ping_pong(&mut ws, 1).await;
    assert_eq!(
        node.metric(r#"pace_frames_rejected_total{reason="bad_frame"}"#)
            .await,
        2.0
    );
    assert_eq!(
        node.metric(r#"pace_frames_rejected_total{reason="unknown_type"}"#)
            .await,
        1.0
    );
    assert_eq!(
        node.metric(r#"pace_frames_rejected_total{reason="invalid_frame"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn oversized_message_closes_with_1009_and_others_are_unaffected() {
    let node = TestNode::start_with(|c| c.limits.max_message_bytes = 4096).await;
    let (mut other, _) = node.connect("bystander").await;
    let (mut big, _) = node.connect("big-talker").await;
    let huge = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(10_000));
    big.send(Message::Text(huge.into())).await.unwrap();
    assert_eq!(
        close_code(&mut big).await,
        Some(code(CloseCode::MESSAGE_TOO_BIG))
    );
    node.wait_metric(r#"pace_disconnects_total{reason="message_too_big"}"#, 1.0)
        .await;
    assert_eq!(
        node.metric(r#"pace_frames_rejected_total{reason="too_big"}"#)
            .await,
        1.0
    );
    ping_pong(&mut other, 2).await;
    let (mut fresh, _) = node.connect("newcomer").await;
    ping_pong(&mut fresh, 3).await;
}

#[tokio::test]
async fn binary_messages_close_with_1003() {
    let node = TestNode::start().await;
    let (mut ws, _) = node.connect("binary").await;
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(
        close_code(&mut ws).await,
        Some(code(CloseCode::UNSUPPORTED_DATA))
    );
    node.wait_metric(r#"pace_frames_rejected_total{reason="binary"}"#, 1.0)
        .await;
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let node = TestNode::start().await;
    let (status, body) = http(node.addr, "GET", "/nope", &[], "").await.unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("not_found"));
    let (status, _) = http(node.addr, "DELETE", "/api/v1/notify", &[], "")
        .await
        .unwrap();
    assert_eq!(status, 405);
}
