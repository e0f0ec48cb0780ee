//! The WebSocket handshake: checks an upgrade request, its departments
//! and its resume announcement.
//!
//! Everything is decided before the `101 Switching Protocols`: a request
//! with no valid device id or token ([`crate::auth`]), a bad department or
//! an overloaded or draining node gets an HTTP error with a JSON body, so
//! a device (or the gateway's logs) sees why, and no connection state is
//! created. Departments the device's credential does not grant are not
//! joined; the connection tells the device with an `error` frame
//! (`not_allowed`) right after `welcome`.

use http::{HeaderMap, Method, Request, header};
use pace_protocol::{DEPARTMENT_HEADER, ErrorCode, GroupId};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::auth::DevicePrincipal;
use crate::error::ApiError;
use crate::ws::Deps;

/// A valid upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// Groups from the department header (after [`grant`]: those the
    /// device's credential grants).
    pub groups: Vec<GroupId>,
    /// Departments asked for that the credential does not grant (set by
    /// [`grant`]).
    pub refused: Vec<GroupId>,
    /// The `Sec-WebSocket-Accept` value to answer with.
    pub accept: String,
    /// The device will send `resume` first (`?resume=1` or
    /// `x-pace-resume: 1`): hold live notifications back until it has.
    pub resume: bool,
}

/// Query parameter announcing a `resume` frame.
pub const RESUME_QUERY: &str = "resume";
/// Header announcing a `resume` frame.
pub const RESUME_HEADER: &str = "x-pace-resume";

/// Checks that `req` is a WebSocket upgrade; returns the
/// `Sec-WebSocket-Accept` value to answer with.
pub fn upgrade_accept<B>(req: &Request<B>) -> Result<String, ApiError> {
    let headers = req.headers();
    let upgrade_ok = req.method() == Method::GET
        && header_has_token(headers, header::CONNECTION, "upgrade")
        && header_has_token(headers, header::UPGRADE, "websocket")
        && headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v == "13");
    match (upgrade_ok, headers.get(header::SEC_WEBSOCKET_KEY)) {
        (true, Some(key)) => Ok(derive_accept_key(key.as_bytes())),
        _ => Err(ApiError::new(
            ErrorCode::NotWebsocket,
            "this route is a WebSocket upgrade (Connection: upgrade, Upgrade: websocket, \
             Sec-WebSocket-Version: 13, Sec-WebSocket-Key)",
        )),
    }
}

/// Checks that `req` is a WebSocket upgrade and reads its departments and
/// resume announcement.
pub fn check<B>(req: &Request<B>, max_groups: usize) -> Result<Handshake, ApiError> {
    let accept = upgrade_accept(req)?;
    read(req, max_groups, accept)
}

/// Reads an HTTP stream request (`GET /stream`): as [`check`], without
/// the upgrade (the same departments, resume announcement and refusals).
pub fn check_stream<B>(req: &Request<B>, max_groups: usize) -> Result<Handshake, ApiError> {
    read(req, max_groups, String::new())
}

fn read<B>(req: &Request<B>, max_groups: usize, accept: String) -> Result<Handshake, ApiError> {
    let headers = req.headers();
    let groups = departments(headers, max_groups)?;
    let yes = |v: &str| matches!(v.trim(), "1" | "true" | "yes");
    let resume = headers
        .get(RESUME_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(yes)
        || req.uri().query().is_some_and(|q| {
            form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == RESUME_QUERY && yes(&v))
        });
    Ok(Handshake {
        groups,
        refused: Vec::new(),
        accept,
        resume,
    })
}

/// Keeps the departments `device`'s credential grants; the others move to
/// [`Handshake::refused`] (counted).
pub async fn grant(deps: &Deps, mut hs: Handshake, device: &DevicePrincipal) -> Handshake {
    let asked = std::mem::take(&mut hs.groups);
    for group in asked {
        if deps.may_join(&device.device, &device.grants, &group).await {
            hs.groups.push(group);
        } else {
            deps.metrics
                .groups_refused
                .with_label_values(&["handshake"])
                .inc();
            hs.refused.push(group);
        }
    }
    hs
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Groups from `x-department-id` (comma separated, repeated headers allowed).
fn departments(headers: &HeaderMap, max_groups: usize) -> Result<Vec<GroupId>, ApiError> {
    let mut groups = Vec::new();
    for value in headers.get_all(DEPARTMENT_HEADER) {
        let value = value
            .to_str()
            .map_err(|_| ApiError::new(ErrorCode::InvalidGroup, "x-department-id must be ASCII"))?;
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let g = GroupId::parse(part)
                .map_err(|e| ApiError::new(ErrorCode::InvalidGroup, format!("department {e}")))?;
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    if groups.len() > max_groups {
        return Err(ApiError::new(
            ErrorCode::InvalidGroup,
            format!("at most {max_groups} departments per device"),
        ));
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade(uri: &str) -> http::request::Builder {
        Request::get(uri)
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
    }

    use crate::auth::device_id;

    #[test]
    fn header_wins_over_query() {
        let req = upgrade("/ws?device_id=q")
            .header("x-device-id", "h")
            .body(())
            .unwrap();
        let hs = check(&req, 8).unwrap();
        assert_eq!(device_id(&req).unwrap().as_str(), "h");
        assert!(!hs.resume);
        assert_eq!(hs.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "RFC 6455 sample");
    }

    #[test]
    fn query_and_alias() {
        let req = upgrade("/ws?x=1&device_id=laptop_1").body(()).unwrap();
        assert_eq!(device_id(&req).unwrap().as_str(), "laptop_1");
        let req = upgrade("/ws?deviceId=kiosk%3A7").body(()).unwrap();
        assert_eq!(device_id(&req).unwrap().as_str(), "kiosk:7");
        let req = upgrade("/ws?device_id=a&resume=1").body(()).unwrap();
        assert!(check(&req, 8).unwrap().resume);
        let req = upgrade("/ws?device_id=a&resume=0")
            .header("x-pace-resume", "true")
            .body(())
            .unwrap();
        assert!(check(&req, 8).unwrap().resume);
    }

    #[test]
    fn missing_and_invalid() {
        let req = upgrade("/ws").body(()).unwrap();
        assert_eq!(
            device_id(&req).unwrap_err().code,
            ErrorCode::MissingDeviceId
        );
        let req = upgrade("/ws?device_id=")
            .header("x-device-id", "")
            .body(())
            .unwrap();
        assert_eq!(
            device_id(&req).unwrap_err().code,
            ErrorCode::MissingDeviceId
        );
        let req = upgrade("/ws?device_id=a%20b").body(()).unwrap();
        assert_eq!(
            device_id(&req).unwrap_err().code,
            ErrorCode::InvalidDeviceId
        );
        let req = upgrade("/ws")
            .header("x-device-id", "a/b")
            .body(())
            .unwrap();
        assert_eq!(
            device_id(&req).unwrap_err().code,
            ErrorCode::InvalidDeviceId
        );
    }

    #[test]
    fn not_an_upgrade() {
        let req = Request::get("/ws?device_id=a").body(()).unwrap();
        assert_eq!(check(&req, 8).unwrap_err().code, ErrorCode::NotWebsocket);
    }

    #[test]
    fn departments_from_headers() {
        let req = upgrade("/ws?device_id=a")
            .header("x-department-id", "sales, it")
            .header("x-department-id", "sales")
            .body(())
            .unwrap();
        let groups: Vec<_> = check(&req, 8)
            .unwrap()
            .groups
            .iter()
            .map(|g| g.to_string())
            .collect();
        assert_eq!(groups, ["sales", "it"]);
        let req = upgrade("/ws?device_id=a")
            .header("x-department-id", "a b")
            .body(())
            .unwrap();
        assert_eq!(check(&req, 8).unwrap_err().code, ErrorCode::InvalidGroup);
        let req = upgrade("/ws?device_id=a")
            .header("x-department-id", "a,b,c")
            .body(())
            .unwrap();
        assert_eq!(check(&req, 2).unwrap_err().code, ErrorCode::InvalidGroup);
    }
}
