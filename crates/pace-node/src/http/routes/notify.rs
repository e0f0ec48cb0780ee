//! `POST /api/v1/notify`: the service key sends anywhere; an admin within
//! its tenant ([`crate::auth::notify_scope_allowed`]).

use axum::extract::State;
use axum::response::Response;
use http::StatusCode;
use pace_protocol::{ErrorCode, NotifyRequest, rest};

use crate::auth::Principal;
use crate::error::{ApiError, json_response};
use crate::http::body::Json;
use crate::http::extract::Caller;
use crate::node::NodeRef;
use crate::store::Draft;

/// `POST /api/v1/notify`, counted in `pace_notify_requests_total{scope,result}`.
pub async fn notify(
    State(node): State<NodeRef>,
    Caller(principal): Caller,
    body: Result<Json<NotifyRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let count = |scope: &str, result: &str| {
        node.metrics
            .notify_requests
            .with_label_values(&[scope, result])
            .inc()
    };
    let admin = match principal {
        Principal::Admin(claims) => Some(claims),
        _ => None,
    };
    let body = match body {
        Ok(Json(b, _)) => b,
        Err(e) => {
            count("unknown", e.code.as_str());
            return Err(e);
        }
    };
    let scope = body.scope.as_str();
    let target = body.target().map_err(|e| {
        count(scope, "bad_request");
        ApiError::new(ErrorCode::BadRequest, e.to_string())
    })?;
    if let Some(claims) = &admin
        && let Err(e) = crate::auth::notify_scope_allowed(&node.auth, claims, &target).await
    {
        count(scope, e.code.as_str());
        return Err(e);
    }
    let draft = Draft {
        target,
        event: body.event,
        data: body.data,
    };
    match node.store.publish(draft).await {
        Ok(n) => {
            count(scope, "accepted");
            Ok(json_response(
                StatusCode::ACCEPTED,
                &rest::NotifyAccepted {
                    id: n.id,
                    scope: n.scope,
                    target: n.target,
                    epoch: n.epoch,
                    seq: n.seq,
                    sent_at_ms: n.sent_at_ms,
                },
            ))
        }
        Err(e) => {
            count(scope, "store_unavailable");
            Err(e.into())
        }
    }
}
