//! Page routes: the waiting page `/r/{room}`, the console `/admin`, the
//! embedded `/assets/*`, and the demo target `/demo/target`. The pages
//! themselves are rendered by [`crate::web`].

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Uri};
use pace_protocol::{ErrorCode, RoomId};

use crate::error::ApiError;
use crate::node::NodeRef;
use crate::routes::Params;
use crate::store::now_ms;
use crate::web::{self, TargetToken};

/// `GET|HEAD /r/{room}`: the room's waiting page; a page saying so for an
/// unknown room (404) or while the store is down (503).
pub async fn room_page(State(node): State<NodeRef>, params: Params) -> Response {
    let Ok(room) = RoomId::parse(&params.room) else {
        return web::missing_room().into_response();
    };
    let queue = &node.rooms.queue;
    let found = match queue.get_room(&room).await {
        Ok(Some(found)) => found,
        Ok(None) => return web::missing_room().into_response(),
        Err(e) => {
            tracing::warn!(%room, error = %e, "room page: store unavailable");
            return web::unavailable().into_response();
        }
    };
    match queue.room_owner(&room).await {
        Ok(tenant) => web::room_page(&room, tenant, &found).into_response(),
        Err(e) => {
            tracing::warn!(%room, error = %e, "room page: store unavailable");
            web::unavailable().into_response()
        }
    }
}

/// `GET|HEAD /admin`: the admin console.
pub async fn admin_page() -> Response {
    web::admin_page().into_response()
}

/// `GET|HEAD /assets/{file}`: an embedded file (304 for its ETag).
pub async fn asset(params: Params, headers: HeaderMap) -> Result<Response, ApiError> {
    web::asset(&params.file, &headers)
        .map(IntoResponse::into_response)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such asset"))
}

/// `GET /demo/target?pace_token=…`: the demo target site. It verifies the
/// token (as a real site would, against this cluster's keys) and shows the
/// claims.
pub async fn demo_target(State(node): State<NodeRef>, uri: Uri) -> Response {
    let token = uri.query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "pace_token")
            .map(|(_, v)| v.into_owned())
    });
    let verified = token
        .as_deref()
        .map(|t| node.keys.verify(t, None, now_ms() / 1000));
    match verified {
        Some(Ok(claims)) => web::target_page(TargetToken::Verified(&claims)),
        Some(Err(e)) => web::target_page(TargetToken::Refused(e.to_string())),
        None => web::target_page(TargetToken::Missing),
    }
    .into_response()
}
