//! A device's status in a room, over HTTP (`GET /api/v1/rooms/{room}/status`):
//! its place, or its admission, without joining. For a device that restarted
//! and wants to know where it stands before it reconnects, or an application
//! that polls instead of holding a WebSocket.

use pace_protocol::{DEVICE_ID_HEADER, DEVICE_ID_QUERY, DeviceId, ErrorCode, RoomId};

use crate::endpoint::Endpoint;
use crate::http::{Exchange, body_excerpt, error_detail, exchange};

/// Where the device stands in a room (the node's answer, as
/// `pace-protocol` defines it).
pub use pace_protocol::rest::RoomStatus;

/// Why [`Client::status`](crate::Client::status) failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Connecting or the HTTP exchange failed, or it timed out.
    #[error("status request to {url} failed: {message}")]
    Transport {
        /// The URL asked.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The node answered with an error (e.g. `no_such_room`).
    #[error("status request refused: HTTP {status} {code:?}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The error code, when the body carried one.
        code: Option<ErrorCode>,
        /// The error message, or the start of the body.
        message: String,
    },
    /// The answer was not the documented JSON.
    #[error("unexpected status answer: {0}")]
    BadAnswer(String),
    /// The configuration is not usable ([`room_status`] only).
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
}

/// The device's status in `room`, asked without a [`Client`](crate::Client)
/// (no WebSocket, so a running client of the same device is not replaced),
/// from the first base URL of `config` that answers.
pub async fn room_status(config: &crate::Config, room: &RoomId) -> Result<RoomStatus, StatusError> {
    let endpoints = config.endpoints()?;
    let mut last = None;
    for ep in &endpoints {
        match fetch(
            ep,
            &config.device_id,
            config.token.as_deref(),
            room,
            config.connect_timeout,
        )
        .await
        {
            Err(e @ StatusError::Transport { .. }) => last = Some(e),
            other => return other,
        }
    }
    Err(last.unwrap_or(StatusError::Config(crate::ConfigError::NoUrl)))
}

/// Asks `ep` for `device`'s status in `room`.
pub(crate) async fn fetch(
    ep: &Endpoint,
    device: &DeviceId,
    token: Option<&str>,
    room: &RoomId,
    timeout: std::time::Duration,
) -> Result<RoomStatus, StatusError> {
    // Room and device ids only hold URL-safe characters (the id rules).
    let path = format!("/api/v1/rooms/{room}/status?{DEVICE_ID_QUERY}={device}");
    let req = Exchange {
        method: http::Method::GET,
        path: &path,
        headers: vec![(
            http::HeaderName::from_static(DEVICE_ID_HEADER),
            device.to_string(),
        )],
        bearer: token,
        json: None,
    };
    let (status, body) =
        exchange(ep, req, timeout)
            .await
            .map_err(|message| StatusError::Transport {
                url: ep.http_url(&path),
                message,
            })?;
    parse_answer(status, &body)
}

/// Turns an HTTP answer into a status or an error.
fn parse_answer(status: u16, body: &[u8]) -> Result<RoomStatus, StatusError> {
    if status == 200 {
        return serde_json::from_slice(body).map_err(|e| StatusError::BadAnswer(e.to_string()));
    }
    match error_detail(body) {
        Some(e) => Err(StatusError::Refused {
            status,
            code: Some(e.code),
            message: e.message,
        }),
        None => Err(StatusError::Refused {
            status,
            code: None,
            message: body_excerpt(body),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_answers() {
        let w = br#"{"status":"waiting","room":"sale","position":3,"waiting_total":9,"eta_seconds":null,"state":"open"}"#;
        assert_eq!(
            parse_answer(200, w).unwrap(),
            RoomStatus::Waiting {
                room: RoomId::parse("sale").unwrap(),
                position: 3,
                waiting_total: 9,
                eta_seconds: None,
                state: "open".into(),
                ticket: None,
                event: None,
            }
        );
        let a = br#"{"status":"admitted","room":"sale","target_url":"https://x/?pace_token=t","token":"t","expires_at":5}"#;
        assert!(matches!(
            parse_answer(200, a).unwrap(),
            RoomStatus::Admitted { expires_at: 5, .. }
        ));
        let u = br#"{"status":"unknown","room":"sale","state":"paused"}"#;
        assert_eq!(
            parse_answer(200, u).unwrap(),
            RoomStatus::Unknown {
                room: RoomId::parse("sale").unwrap(),
                state: Some("paused".into()),
                event: None,
            }
        );
    }

    #[test]
    fn errors_keep_the_code() {
        let body = br#"{"error":{"code":"no_such_room","message":"no room x","retryable":false}}"#;
        match parse_answer(404, body) {
            Err(StatusError::Refused {
                status: 404,
                code: Some(ErrorCode::NoSuchRoom),
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_answer(502, b"<html>bad gateway</html>"),
            Err(StatusError::Refused { code: None, .. })
        ));
        assert!(matches!(
            parse_answer(200, b"{}"),
            Err(StatusError::BadAnswer(_))
        ));
    }
}
