//! JSON request bodies, read with a size limit: [`Json`] as an extractor,
//! [`read_json`] for a handler that reads its body only sometimes.
//!
//! A body announced (`Content-Length`) or found larger than its limit
//! answers 413 `payload_too_large` before it is parsed; a body that cannot
//! be read or parsed answers 400 `bad_request`.

use std::marker::PhantomData;

use axum::extract::{FromRequest, Request};
use http::{HeaderMap, header};
use http_body_util::{BodyExt, Limited};
use pace_protocol::ErrorCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::node::{Node, NodeRef};

/// How large a route's body may be.
pub trait Limit {
    /// The limit in bytes on `node`.
    fn max(node: &Node) -> usize;
}

/// `--max-message-bytes`: the limit of most bodies.
#[derive(Debug)]
pub struct MessageLimit;

impl Limit for MessageLimit {
    fn max(node: &Node) -> usize {
        node.config.limits.max_message_bytes
    }
}

/// A JSON body of type `T`, at most `L::max` bytes.
#[derive(Debug)]
pub struct Json<T, L = MessageLimit>(pub T, pub PhantomData<L>);

impl<T: DeserializeOwned, L: Limit> FromRequest<NodeRef> for Json<T, L> {
    type Rejection = ApiError;

    async fn from_request(req: Request, node: &NodeRef) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let value = read_json(&parts.headers, body, L::max(node)).await?;
        Ok(Json(value, PhantomData))
    }
}

/// Reads a JSON body of at most `max` bytes.
pub async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: axum::body::Body,
    max: usize,
) -> Result<T, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("body larger than {max} bytes"),
        )
    };
    if headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|len| len > max as u64)
    {
        return Err(too_large());
    }
    let body = Limited::new(body, max).collect().await.map_err(|e| {
        if e.downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            too_large()
        } else {
            ApiError::new(ErrorCode::BadRequest, "could not read the request body")
        }
    })?;
    serde_json::from_slice(&body.to_bytes())
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("invalid JSON body: {e}")))
}
