//! HTTP error responses: the one place an error becomes a status code and a
//! JSON body.
//!
//! Handlers return [`ApiError`] (an axum `IntoResponse`); this module
//! decides the status for each [`ErrorCode`] and writes
//! `{"error": {"code", "message", "retryable"}}`. Every store's error
//! converts into it by one `From` each, written next to that error (this
//! module sits below the stores and imports none of them): a store
//! failure is the retryable `store_unavailable` with the one message
//! [`STORE_UNAVAILABLE`] ([`ApiError::store_unavailable`]), its source
//! (the Redis client's error) logged.
//! Messages are written for the caller and never carry internals (store
//! errors, paths, keys): those go to the log.

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::Full;
use pace_protocol::{ErrorBody, ErrorCode};

/// The body of the responses the WebSocket upgrades build (the HTTP layer
/// answers with [`axum::body::Body`], into which this converts).
pub type Body = Full<Bytes>;

/// An error to answer an HTTP request with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status for this error's code.
    pub fn status(&self) -> StatusCode {
        status_of(self.code)
    }
}

/// The response: status, JSON body, and the headers the status calls for.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::to_vec(&ErrorBody::new(self.code, self.message)).unwrap_or_default();
        let mut resp = Response::new(axum::body::Body::from(body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match status {
            StatusCode::UNAUTHORIZED => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            StatusCode::UPGRADE_REQUIRED => {
                h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            _ => {}
        }
        resp
    }
}

/// What a client is told when a store fails: the one message for
/// `store_unavailable` (HTTP answers and frame errors alike).
pub const STORE_UNAVAILABLE: &str = "the store is unavailable; retry";

impl ApiError {
    /// The retryable `store_unavailable` answer for a store failure
    /// `source` met while doing `what`; the details go to the log only.
    pub fn store_unavailable(what: &str, source: &dyn std::error::Error) -> ApiError {
        tracing::warn!(error = %source, "store unavailable: {what}");
        ApiError::new(ErrorCode::StoreUnavailable, STORE_UNAVAILABLE)
    }
}

/// The HTTP status each error code is answered with.
fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::MissingDeviceId
        | ErrorCode::InvalidDeviceId
        | ErrorCode::InvalidGroup
        | ErrorCode::BadRequest
        | ErrorCode::BadFrame
        | ErrorCode::UnknownType
        | ErrorCode::InvalidFrame
        | ErrorCode::TooManyGroups
        | ErrorCode::PowInvalid
        | ErrorCode::PowReused
        | ErrorCode::TooManyPlaces => StatusCode::BAD_REQUEST,
        ErrorCode::TooManyJoins | ErrorCode::TooManyHandshakes | ErrorCode::TooManyPending => {
            StatusCode::TOO_MANY_REQUESTS
        }
        ErrorCode::NotWebsocket => StatusCode::UPGRADE_REQUIRED,
        ErrorCode::Unauthorized | ErrorCode::InvalidCredentials => StatusCode::UNAUTHORIZED,
        ErrorCode::TooManyAttempts => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::NotFound | ErrorCode::NoSuchRoom => StatusCode::NOT_FOUND,
        ErrorCode::RoomClosed
        | ErrorCode::RoomRejecting
        | ErrorCode::EventNotOpen
        | ErrorCode::DeviceExists
        | ErrorCode::StreamNotHere => StatusCode::CONFLICT,
        ErrorCode::Forbidden | ErrorCode::OriginNotAllowed | ErrorCode::NotAllowed => {
            StatusCode::FORBIDDEN
        }
        ErrorCode::MissingDeviceToken
        | ErrorCode::InvalidDeviceToken
        | ErrorCode::DeviceTokenMismatch
        | ErrorCode::DeviceTokenRevoked => StatusCode::UNAUTHORIZED,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::NodeFull
        | ErrorCode::Draining
        | ErrorCode::StoreUnavailable
        | ErrorCode::Starting => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A JSON response with `status`.
pub fn json_response<T: serde::Serialize + ?Sized>(status: StatusCode, value: &T) -> Response {
    // The REST bodies are plain data (strings, numbers, maps with string
    // keys): serializing them cannot fail.
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(axum::body::Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn error_response_shape() {
        let resp = ApiError::new(ErrorCode::Draining, "node is draining").into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let parsed: ErrorBody = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed.error.code, ErrorCode::Draining);
        assert!(parsed.error.retryable);
    }

    /// Every store's failure answers the one retryable message, and a
    /// Redis failure keeps the client's error as its source (for the log).
    #[test]
    fn store_failures_answer_one_message_and_keep_their_source() {
        use std::error::Error as _;
        let redis = || fred::error::Error::new(fred::error::ErrorKind::IO, "connection reset");
        let store = crate::store::StoreError::Redis(redis());
        assert!(store.source().is_some(), "store error lost its source");
        let queue = crate::queue::QueueError::Redis(redis());
        assert!(queue.source().is_some(), "queue error lost its source");
        let registry = crate::devices::RegistryError::Redis(redis());
        assert!(
            registry.source().is_some(),
            "registry error lost its source"
        );
        let accounts = crate::accounts::AccountError::Redis(redis());
        assert!(accounts.source().is_some(), "account error lost its source");
        let answers: Vec<ApiError> = vec![
            store.into(),
            queue.into(),
            registry.into(),
            accounts.into(),
            crate::store::StoreError::Unavailable("down".into()).into(),
            crate::queue::QueueError::Unavailable("down".into()).into(),
            crate::accounts::AccountError::Unavailable("down".into()).into(),
            crate::audit::AuditError::Queue(crate::queue::QueueError::Unavailable("down".into()))
                .into(),
        ];
        for a in answers {
            assert_eq!(
                a,
                ApiError::new(ErrorCode::StoreUnavailable, STORE_UNAVAILABLE)
            );
        }
        // A refused room configuration is the caller's, not the store's.
        let bad: ApiError = crate::queue::QueueError::InvalidConfig("capacity".into()).into();
        assert_eq!(bad.code, ErrorCode::BadRequest);
    }

    #[test]
    fn statuses() {
        assert_eq!(
            status_of(ErrorCode::MissingDeviceId),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(status_of(ErrorCode::Unauthorized), StatusCode::UNAUTHORIZED);
        assert_eq!(
            status_of(ErrorCode::NotWebsocket),
            StatusCode::UPGRADE_REQUIRED
        );
        assert_eq!(
            status_of(ErrorCode::PayloadTooLarge),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
