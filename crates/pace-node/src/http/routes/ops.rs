//! Operations routes: `GET /` (a plain-text index), `/health`, `/ready`,
//! `/metrics`, `GET /api/v1/cluster` (service key) and the JWKS.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use pace_protocol::rest;

use crate::error::{ApiError, json_response};
use crate::node::NodeRef;

/// `GET /`.
pub async fn index(State(node): State<NodeRef>) -> Response {
    let text = format!(
        "Pace node {}\n\nGET  /ws?device_id=ID      WebSocket for devices (or header x-device-id)\n\
         POST /api/v1/notify        send a notification (Authorization: Bearer SERVICE_KEY)\n\
         GET  /health  /ready  /metrics\n",
        node.config.node_id
    );
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

/// `GET /health`.
pub async fn health(State(node): State<NodeRef>) -> Response {
    json_response(
        StatusCode::OK,
        &rest::Health {
            status: "ok".into(),
            node_id: node.config.node_id.clone(),
        },
    )
}

/// `GET /ready`: 200 once started and while not draining, 503 otherwise;
/// the store's state in the body either way.
pub async fn ready(State(node): State<NodeRef>) -> Response {
    let store = node.store.health().await;
    node.metrics
        .store_up
        .with_label_values(&[store.kind])
        .set(i64::from(store.up));
    let ready = node.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(
        status,
        &rest::Ready {
            ready,
            draining: node.is_draining(),
            node_id: node.config.node_id.clone(),
            connections: node.metrics.connections_open.get(),
            store: rest::StoreHealth {
                kind: store.kind.to_owned(),
                up: store.up,
                error: store.error,
            },
        },
    )
}

/// `GET /metrics`: the Prometheus text format.
pub async fn metrics(State(node): State<NodeRef>) -> Response {
    let store = node.store.health().await;
    node.metrics
        .store_up
        .with_label_values(&[store.kind])
        .set(i64::from(store.up));
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        node.metrics.render(),
    )
        .into_response()
}

/// `GET /api/v1/cluster` (service key): the live nodes and their
/// connection counts.
pub async fn cluster(State(node): State<NodeRef>) -> Result<Response, ApiError> {
    let nodes = node.store.nodes().await?;
    let total: u64 = nodes.iter().map(|n| n.connections).sum();
    Ok(json_response(
        StatusCode::OK,
        &rest::Cluster {
            store: Some(node.store.kind().to_owned()),
            total_connections: total,
            nodes,
        },
    ))
}

/// `GET /.well-known/jwks.json`: the admission keys' public halves.
pub async fn jwks(State(node): State<NodeRef>) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            ),
        ],
        node.keys.jwks_json().to_owned(),
    )
        .into_response()
}
