//! Typed extractors: who is calling (the principal the authorization step
//! proved for the route's rule), from where, and the path's parameters.
//!
//! The principal is put in the request by [`super::middleware::entry`],
//! after [`crate::auth::authorize`]; a handler names the kind it needs
//! ([`Caller`], [`AdminCaller`], [`DeviceCaller`]). A handler asking for a
//! kind its route's rule cannot prove answers 500 `internal`: the route
//! table and the handler disagree, which the authorization-matrix test
//! catches.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use http::request::Parts;
use pace_protocol::ErrorCode;

use crate::accounts::AdminClaims;
use crate::auth::{DevicePrincipal, Principal};
use crate::error::ApiError;
use crate::node::NodeRef;
use crate::routes::Params;

/// Whoever the route's rule let in.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

/// An admin (routes whose rule proves only admins).
#[derive(Debug, Clone)]
pub struct AdminCaller(pub AdminClaims);

/// A device (routes whose rule proves only devices).
#[derive(Debug, Clone)]
pub struct DeviceCaller(pub DevicePrincipal);

fn principal(parts: &Parts) -> Result<Principal, ApiError> {
    parts
        .extensions
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "no authorization step ran"))
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        principal(parts).map(Caller)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match principal(parts)? {
            Principal::Admin(claims) => Ok(AdminCaller(claims)),
            _ => Err(ApiError::new(ErrorCode::Internal, "not an admin")),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for DeviceCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match principal(parts)? {
            Principal::Device(device) => Ok(DeviceCaller(device)),
            _ => Err(ApiError::new(ErrorCode::Internal, "not a device")),
        }
    }
}

/// The TCP peer of the request (the server puts it in as
/// [`ConnectInfo`]).
pub fn peer(extensions: &http::Extensions) -> Result<SocketAddr, ApiError> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "no peer address"))
}

/// The client's address: the peer, or behind a trusted proxy the
/// `X-Forwarded-For` entry it added ([`crate::auth::client_address`]).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

impl FromRequestParts<NodeRef> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &NodeRef) -> Result<Self, ApiError> {
        let peer = peer(&parts.extensions)?;
        Ok(ClientAddr(crate::auth::client_address(
            &node.auth,
            &parts.headers,
            peer,
        )))
    }
}

/// The path's `{room}`, `{device}` and `{*file}` values, exactly as sent
/// (not percent-decoded: ids are checked by their own parsers), read by
/// [`super::middleware::entry`] against the route's pattern.
impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Params>()
            .cloned()
            .ok_or_else(|| ApiError::new(ErrorCode::Internal, "route has no parameters"))
    }
}
