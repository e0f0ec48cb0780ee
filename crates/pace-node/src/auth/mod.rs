//! Who is asking, and what they may do: the one authorization step every
//! request passes before its handler runs.
//!
//! A request becomes a [`Principal`] — anonymous, device D (of tenant T,
//! with the groups its credential grants), admin of T, or the service key
//! — according to the [`Rule`] its route carries in the route table
//! ([`crate::routes::ROUTES`]: a route cannot exist without one); the
//! HTTP layer runs [`authorize`] as each route's middleware and hands
//! the principal to handlers through typed extractors
//! ([`crate::http::extract`]). Handlers
//! receive the principal and check only what depends on the resource (an
//! admin's room belongs to its tenant, a session belongs to the device),
//! through the functions here; none of them reads a credential itself.
//!
//! | rule | who passes | refused with |
//! |---|---|---|
//! | [`Rule::Public`] | anybody (credentials are ignored) | — |
//! | [`Rule::Device`] | the device named by `x-device-id` / `?device_id=` with its own token (`Authorization: Bearer` or `?token=`); on an insecure node also a tokenless device whose id is not registered | 400 `missing_device_id`, 401 `missing_device_token` / `invalid_device_token` / `device_token_mismatch` / `device_token_revoked` |
//! | [`Rule::Registration`] | anybody; a bearer token must be the device's own (possibly expired) token: a refresh | 401 `invalid_device_token` / `device_token_revoked` |
//! | [`Rule::SessionHolder`] | the service key, an admin, or a device by its token (on an insecure node: by `x-device-id`) — the handler checks the session is theirs | 401 `unauthorized` |
//! | [`Rule::Admin`] | an admin token (`Authorization: Bearer`) | 401 `unauthorized` |
//! | [`Rule::AdminOrService`] | an admin token or the service key | 401 `unauthorized` |
//! | [`Rule::Service`] | the service key | 401 `unauthorized` |
//! | [`Rule::AdminFeed`] | a single-use ticket (`?ticket=`) or an admin token in the header; never a token in the URL | 401 `unauthorized` |
//!
//! Frames on a device's WebSocket come from the device principal of its
//! handshake; the groups a frame may reach are decided by [`crate::ws::Deps::may_join`]
//! ([`grants`]).
//!
//! # Layout
//!
//! - [`grants`]: which groups a device may join.
//! - [`tickets`]: single-use tickets for the admin feed.

pub mod grants;
pub mod tickets;

use std::sync::Arc;

use http::{HeaderMap, Request, header};
use pace_protocol::{
    DEVICE_ID_HEADER, DEVICE_ID_QUERY, DEVICE_ID_QUERY_ALIAS, DeviceId, ErrorCode, GroupId, Target,
};

pub use grants::{Access, Grants};

use crate::accounts::AdminClaims;
use crate::accounts::login::verify_admin_token;
use crate::admission::unix_now;
use crate::devices::token::{self, DeviceTokenError, Verified};
use crate::error::ApiError;
use crate::store::now_ms;

/// What checking a credential reads, built once by the composition root
/// (no handle on the whole node): keys, the device registry, the rooms'
/// owners, the once-only claims of feed tickets, and the settings below.
#[derive(Debug)]
pub struct Authority {
    /// Verifies admin tokens, our device tokens and feed tickets.
    pub keys: Arc<crate::admission::KeySet>,
    /// An enterprise's device token issuer, when configured.
    pub external_issuer: Option<Arc<crate::devices::ExternalIssuer>>,
    /// Device records: deny-list, departments, last seen.
    pub devices: crate::devices::SharedDeviceRegistry,
    /// Rooms' owners (which admin may see a room).
    pub queue: crate::queue::SharedQueueStore,
    /// Claims a feed ticket once, cluster-wide.
    pub store: crate::store::SharedStore,
    /// `pace_auth_refused_total`, `pace_admin_tickets_total`.
    pub metrics: crate::metrics::Metrics,
    /// The configuration values checks read.
    pub settings: Settings,
}

/// The configuration values of the authorization checks.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Bearer key for service calls.
    pub service_key: String,
    /// Devices may connect without a token (development, load tests).
    pub insecure_anonymous_devices: bool,
    /// The tenant an external issuer's devices belong to.
    pub device_token_tenant: Option<String>,
    /// Proxies whose `X-Forwarded-For` entry names the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// Who a request comes from, once its credential is checked.
#[derive(Debug, Clone)]
pub enum Principal {
    /// Nobody in particular (public routes).
    Anonymous,
    /// A device, proven by its token.
    Device(DevicePrincipal),
    /// An admin of a tenant, by an admin token or a feed ticket.
    Admin(AdminClaims),
    /// The cluster's service key.
    Service,
}

/// A device, as its credential describes it.
#[derive(Debug, Clone)]
pub struct DevicePrincipal {
    /// Its id.
    pub device: DeviceId,
    /// What proved it.
    pub credential: DeviceCredential,
    /// The person behind it, from its token (per-user limits).
    pub user: Option<String>,
    /// Its tenant and the groups it may join.
    pub grants: Arc<Grants>,
}

/// What proved a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceCredential {
    /// One of our device tokens.
    Token {
        /// Its `jti`.
        id: String,
        /// Its `exp`, Unix seconds.
        expires_at: u64,
    },
    /// The external issuer's token.
    External,
    /// Nothing: an insecure node (`--insecure-anonymous-devices`).
    Anonymous,
}

/// Who may call an entry point; every route of [`crate::routes::ROUTES`]
/// names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Anybody.
    Public,
    /// The device itself, by its token.
    Device,
    /// Anybody; a presented token must be the device's own (refresh).
    Registration,
    /// Whoever may end or extend an admitted session: the device, an
    /// admin, the service key (the handler checks the session is theirs).
    SessionHolder,
    /// An admin token.
    Admin,
    /// An admin token or the service key.
    AdminOrService,
    /// The service key.
    Service,
    /// The admin feed: a single-use ticket or an admin token header.
    AdminFeed,
}

impl Rule {
    /// Every rule, for documentation and tests.
    pub const ALL: [Rule; 8] = [
        Rule::Public,
        Rule::Device,
        Rule::Registration,
        Rule::SessionHolder,
        Rule::Admin,
        Rule::AdminOrService,
        Rule::Service,
        Rule::AdminFeed,
    ];

    /// The `rule` label of `pace_auth_refused_total`.
    pub fn label(self) -> &'static str {
        match self {
            Rule::Public => "public",
            Rule::Device => "device",
            Rule::Registration => "registration",
            Rule::SessionHolder => "session_holder",
            Rule::Admin => "admin",
            Rule::AdminOrService => "admin_or_service",
            Rule::Service => "service",
            Rule::AdminFeed => "admin_feed",
        }
    }
}

/// Checks the request's credential against `rule`; the principal it
/// proves, or the refusal to answer (counted in
/// `pace_auth_refused_total{rule,code}`).
pub async fn authorize<B>(
    node: &Authority,
    rule: Rule,
    req: &Request<B>,
    peer: std::net::SocketAddr,
) -> Result<Principal, ApiError> {
    let result = match rule {
        Rule::Public => Ok(Principal::Anonymous),
        Rule::Device => device(node, req, peer).await.map(Principal::Device),
        Rule::Registration => registration(node, req.headers()).await,
        Rule::SessionHolder => session_holder(node, req).await,
        Rule::Admin => admin(node, req.headers()).map(Principal::Admin),
        Rule::AdminOrService => {
            if is_service(node, req.headers()) {
                Ok(Principal::Service)
            } else {
                admin(node, req.headers())
                    .map(Principal::Admin)
                    .map_err(|_| {
                        unauthorized("send Authorization: Bearer <admin token or service key>")
                    })
            }
        }
        Rule::Service => {
            if is_service(node, req.headers()) {
                Ok(Principal::Service)
            } else {
                Err(unauthorized("send Authorization: Bearer <service key>"))
            }
        }
        Rule::AdminFeed => admin_feed(node, req).await.map(Principal::Admin),
    };
    if let Err(e) = &result {
        node.metrics
            .auth_refused
            .with_label_values(&[rule.label(), e.code.as_str()])
            .inc();
    }
    result
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, message)
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// A query parameter's first non-empty value.
pub fn query_param<B>(req: &Request<B>, name: &str) -> Option<String> {
    let query = req.uri().query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.into_owned())
}

/// The query parameter carrying the device token when a proxy strips the
/// `Authorization` header (and for browsers, which cannot set headers on
/// a WebSocket).
pub const TOKEN_QUERY: &str = "token";

/// The device token of a request: `Authorization: Bearer`, else the
/// `token` query parameter.
pub fn device_token<B>(req: &Request<B>) -> Option<String> {
    match bearer(req.headers()) {
        Some(t) => Some(t.to_owned()),
        None => query_param(req, TOKEN_QUERY),
    }
}

/// The device id a request speaks for: the `x-device-id` header, else the
/// `device_id` (or `deviceId`) query parameter.
pub fn device_id<B>(req: &Request<B>) -> Result<DeviceId, ApiError> {
    let from_header = req
        .headers()
        .get(DEVICE_ID_HEADER)
        .map(|v| v.to_str().map(str::trim).unwrap_or("\u{fffd}").to_owned())
        .filter(|s| !s.is_empty());
    let raw = from_header
        .or_else(|| query_param(req, DEVICE_ID_QUERY))
        .or_else(|| query_param(req, DEVICE_ID_QUERY_ALIAS));
    let Some(raw) = raw else {
        return Err(ApiError::new(
            ErrorCode::MissingDeviceId,
            "send the device id in the x-device-id header or the device_id query parameter",
        ));
    };
    DeviceId::parse(&raw)
        .map_err(|e| ApiError::new(ErrorCode::InvalidDeviceId, format!("device id {e}")))
}

/// Whether the request carries the service key as a bearer token.
pub fn is_service(node: &Authority, headers: &HeaderMap) -> bool {
    bearer(headers).is_some_and(|t| {
        constant_time_eq::constant_time_eq(t.as_bytes(), node.settings.service_key.as_bytes())
    })
}

/// The admin named by the request's bearer token.
pub fn admin(node: &Authority, headers: &HeaderMap) -> Result<AdminClaims, ApiError> {
    let token = bearer(headers).ok_or_else(|| {
        unauthorized("send Authorization: Bearer <admin token from POST /api/v1/admin/login>")
    })?;
    verify_admin_token(&node.keys, token).map_err(|e| {
        tracing::debug!(reason = e.code(), "admin token refused");
        unauthorized("send Authorization: Bearer <admin token from POST /api/v1/admin/login>")
    })
}

/// [`Rule::Device`]: the device the request names, proven by its token;
/// a registered device is marked seen from the client's address (behind
/// trusted proxies, the one they forwarded).
pub async fn device<B>(
    node: &Authority,
    req: &Request<B>,
    peer: std::net::SocketAddr,
) -> Result<DevicePrincipal, ApiError> {
    let device = device_id(req)?;
    let token = device_token(req);
    let address = client_address(node, req.headers(), peer).to_string();
    authenticate_device(node, device, token.as_deref(), Some(&address)).await
}

/// The client's address: the peer, or the `X-Forwarded-For` entry a
/// trusted proxy added (the one place that header is read; handlers get
/// it through [`crate::http::extract::ClientAddr`]).
pub fn client_address(
    node: &Authority,
    headers: &HeaderMap,
    peer: std::net::SocketAddr,
) -> std::net::IpAddr {
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    crate::limits::client_address(peer.ip(), forwarded, &node.settings.trusted_proxies)
}

/// Proves `device` with `token` (ours or the external issuer's), checks
/// the deny-list and reads the groups its credential grants — one store
/// round trip, which also marks a registered device seen from `seen`'s
/// address. Without a token: only on an insecure node, and only for an id
/// nobody registered.
pub async fn authenticate_device(
    node: &Authority,
    device: DeviceId,
    token: Option<&str>,
    seen: Option<&str>,
) -> Result<DevicePrincipal, ApiError> {
    let refused = |e: DeviceTokenError| ApiError::new(e.code(), e.to_string());
    let verified = match token {
        Some(t) => Some(
            token::authenticate(
                &node.keys,
                node.external_issuer.as_deref(),
                t,
                &device,
                unix_now(),
            )
            .map_err(refused)?,
        ),
        None if node.settings.insecure_anonymous_devices => None,
        None => return Err(refused(DeviceTokenError::Missing)),
    };
    // Only a proven device is marked seen.
    let seen = seen.filter(|_| verified.is_some()).map(|ip| (ip, now_ms()));
    let cred = node.devices.credential(&device, seen).await?;
    match verified {
        // Even an insecure node keeps a registered device's id its own,
        // and a kicked one out.
        None if cred.registered => Err(ApiError::new(
            ErrorCode::MissingDeviceToken,
            "this device id is registered: send its device token",
        )),
        None if cred.revoked_before.is_some() => Err(revoked_error()),
        None => Ok(DevicePrincipal {
            device,
            credential: DeviceCredential::Anonymous,
            user: None,
            grants: Grants::open(),
        }),
        Some(Verified::Ours(claims)) => ours(device, claims, cred),
        Some(Verified::External(found)) => {
            // A token that does not say when it was issued is refused once
            // the device was kicked.
            let revoked = match found.iat {
                Some(iat) => cred.revokes(iat),
                None => cred.revoked_before.is_some(),
            };
            if revoked {
                return Err(revoked_error());
            }
            let tenant = node.settings.device_token_tenant.clone();
            let groups = external_groups(tenant.as_deref(), &found.groups);
            Ok(DevicePrincipal {
                device,
                credential: DeviceCredential::External,
                user: None,
                grants: Grants::new(tenant, groups),
            })
        }
    }
}

/// The principal of one of our device tokens, given the device's registry
/// facts: refused when the deny-list covers the token.
fn ours(
    device: DeviceId,
    claims: crate::devices::DeviceClaims,
    cred: crate::devices::Credential,
) -> Result<DevicePrincipal, ApiError> {
    if cred.revokes(claims.iat) {
        return Err(revoked_error());
    }
    // The tenant is the token's: signed at registration, from the same
    // registration the record holds.
    let tenant = claims.tenant.clone();
    Ok(DevicePrincipal {
        device,
        credential: DeviceCredential::Token {
            id: claims.jti,
            expires_at: claims.exp,
        },
        user: claims.user,
        grants: Grants::new(tenant, cred.departments),
    })
}

fn revoked_error() -> ApiError {
    ApiError::new(
        ErrorCode::DeviceTokenRevoked,
        "this device's token was revoked; it needs a new registration",
    )
}

/// The groups an external token's claim names: each within the issuer's
/// tenant (`<tenant>:<name>`, unless already so prefixed); without a
/// tenant, untenanted names only. Invalid names are dropped.
pub fn external_groups(tenant: Option<&str>, names: &[String]) -> Vec<GroupId> {
    names
        .iter()
        .filter_map(|name| {
            let full = match tenant {
                Some(t) if name.starts_with(&format!("{t}:")) => name.clone(),
                Some(t) => format!("{t}:{name}"),
                None if name.contains(':') => return None,
                None => name.clone(),
            };
            GroupId::parse(&full).ok()
        })
        .collect()
}

/// [`Rule::Registration`]: anonymous, or — with a bearer token — the
/// device that token names, proving possession of its (possibly expired)
/// token for a refresh.
async fn registration(node: &Authority, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let Some(token) = bearer(headers) else {
        return Ok(Principal::Anonymous);
    };
    let claims = token::verify_own(&node.keys, token, unix_now(), true)
        .map_err(|e| ApiError::new(e.code(), e.to_string()))?;
    let device = DeviceId::parse(&claims.sub).map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidDeviceToken,
            "device token names no valid device",
        )
    })?;
    let cred = node.devices.credential(&device, None).await?;
    ours(device, claims, cred).map(Principal::Device)
}

/// [`Rule::SessionHolder`]: the service key, an admin, or a device by its
/// token (which names it: no device id header needed); on an insecure
/// node also a tokenless `x-device-id`.
async fn session_holder<B>(node: &Authority, req: &Request<B>) -> Result<Principal, ApiError> {
    let headers = req.headers();
    if is_service(node, headers) {
        return Ok(Principal::Service);
    }
    if let Ok(claims) = admin(node, headers) {
        return Ok(Principal::Admin(claims));
    }
    let refuse = || {
        unauthorized(
            "send Authorization: Bearer <the device's token, an admin token or the service key>",
        )
    };
    match device_token(req) {
        Some(t) => {
            let claims =
                token::verify_own(&node.keys, &t, unix_now(), false).map_err(|_| refuse())?;
            let device = DeviceId::parse(&claims.sub).map_err(|_| refuse())?;
            authenticate_device(node, device, Some(&t), None)
                .await
                .map(Principal::Device)
        }
        None if node.settings.insecure_anonymous_devices => {
            let device = device_id(req).map_err(|_| refuse())?;
            authenticate_device(node, device, None, None)
                .await
                .map(Principal::Device)
        }
        None => Err(refuse()),
    }
}

/// [`Rule::AdminFeed`]: a ticket (redeemed once) or an admin token in the
/// `Authorization` header. An admin token in the URL is refused: the URL
/// is what proxies log.
async fn admin_feed<B>(node: &Authority, req: &Request<B>) -> Result<AdminClaims, ApiError> {
    if query_param(req, TOKEN_QUERY).is_some() {
        node.metrics
            .admin_tickets
            .with_label_values(&["token_in_url"])
            .inc();
        return Err(unauthorized(
            "admin tokens are not accepted in the URL: POST /api/v1/admin/ws-ticket and open \
             /admin/ws?ticket=…",
        ));
    }
    if let Some(ticket) = query_param(req, tickets::TICKET_QUERY) {
        return redeem_ticket(node, &ticket).await;
    }
    admin(node, req.headers())
}

/// Checks a feed ticket and claims it, once, cluster-wide.
async fn redeem_ticket(node: &Authority, ticket: &str) -> Result<AdminClaims, ApiError> {
    let count = |result: &str| {
        node.metrics
            .admin_tickets
            .with_label_values(&[result])
            .inc()
    };
    let claims = tickets::verify(&node.keys, ticket, unix_now()).map_err(|e| {
        count(e.code());
        unauthorized(&e.to_string())
    })?;
    let first = node
        .store
        .claim_once(&format!("ticket:{}", claims.jti), tickets::TICKET_TTL)
        .await?;
    if !first {
        let e = tickets::TicketError::Reused;
        count(e.code());
        return Err(unauthorized(&e.to_string()));
    }
    count("accepted");
    Ok(claims.admin())
}

/// Whether an admin of `admin`'s tenant owns `room` (the rooms it may see;
/// every other room answers as not found).
pub async fn owns_room(
    node: &Authority,
    admin: &AdminClaims,
    room: &pace_protocol::RoomId,
) -> Result<bool, ApiError> {
    let owner = node.queue.room_owner(room).await?;
    Ok(owner.as_deref() == Some(admin.tenant.as_str()))
}

/// Whether `principal` may end or extend the session of `device` in
/// `room`: that device itself, an admin of the room's tenant, or the
/// service key.
pub async fn may_act_on_session(
    node: &Authority,
    principal: &Principal,
    room: &pace_protocol::RoomId,
    device: &str,
) -> Result<bool, ApiError> {
    Ok(match principal {
        Principal::Service => true,
        Principal::Device(d) => d.device.as_str() == device,
        Principal::Admin(a) => owns_room(node, a, room).await?,
        Principal::Anonymous => false,
    })
}

/// Whether `principal` may act on registered device `record` (kick,
/// departments, forget): an admin of its tenant, or the service key.
pub fn may_manage_device(principal: &Principal, record: &crate::devices::DeviceRecord) -> bool {
    match principal {
        Principal::Service => true,
        Principal::Admin(a) => record.info.tenant.as_deref() == Some(a.tenant.as_str()),
        Principal::Device(_) | Principal::Anonymous => false,
    }
}

/// Whether an admin of `claims.tenant` may send to `target`: one of its
/// tenant's registered devices, a group in its tenant's namespace
/// (`<tenant>:<name>`), or the channel of one of its rooms
/// (`@room:<room>`: everyone waiting in it). `all` reaches every tenant's devices: service key
/// only. `Err` is the refusal to answer (404 for a device of another
/// tenant, as if unknown; 403 otherwise).
pub async fn notify_scope_allowed(
    node: &Authority,
    claims: &AdminClaims,
    target: &Target,
) -> Result<(), ApiError> {
    match target {
        Target::All => Err(ApiError::new(
            ErrorCode::Forbidden,
            "scope all reaches every tenant: use the service key, or a group of your tenant",
        )),
        // A room's channel: the room must be the tenant's (checked before
        // the tenant prefix, so no tenant id can reach another's room).
        Target::Group(g)
            if g.as_str()
                .starts_with(pace_protocol::ids::ROOM_GROUP_PREFIX) =>
        {
            let unknown = || ApiError::new(ErrorCode::NoSuchRoom, format!("no room for {g}"));
            let room = g.room().ok_or_else(unknown)?;
            if owns_room(node, claims, &room).await? {
                Ok(())
            } else {
                Err(unknown())
            }
        }
        Target::Group(g) => {
            let prefix = format!("{}:", claims.tenant.as_str());
            if g.as_str().starts_with(&prefix) {
                Ok(())
            } else {
                Err(ApiError::new(
                    ErrorCode::Forbidden,
                    format!("admins send to groups named {prefix}<name>"),
                ))
            }
        }
        Target::Device(d) => {
            let record = node.devices.get(d).await?;
            match record {
                Some(r) if r.info.tenant.as_deref() == Some(claims.tenant.as_str()) => Ok(()),
                _ => Err(ApiError::new(ErrorCode::NotFound, format!("no device {d}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_groups_stay_in_the_issuers_tenant() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let got: Vec<String> =
            external_groups(Some("acme"), &names(&["ops", "acme:it", "bad group"]))
                .iter()
                .map(|g| g.to_string())
                .collect();
        assert_eq!(got, ["acme:ops", "acme:it"]);
        let got: Vec<String> = external_groups(None, &names(&["ops", "acme:it"]))
            .iter()
            .map(|g| g.to_string())
            .collect();
        assert_eq!(got, ["ops"], "no tenant: no tenant groups");
    }
}
