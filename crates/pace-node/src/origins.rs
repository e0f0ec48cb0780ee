//! Browser origins: which web pages may use this node.
//!
//! A browser sends `Origin` with every WebSocket handshake and every
//! cross-origin request; other clients (device agents, services, `curl`)
//! send none and are not concerned. The waiting page may be embedded on a
//! tenant's own domain, so an origin is allowed when it is
//!
//! 1. absent (not a browser);
//! 2. the node's own: the request's `Host`, over `http` or `https` (the
//!    pages the node serves itself, `/r/{room}` and `/admin`);
//! 3. in the cluster-wide list (`--allowed-origin`);
//! 4. in a tenant's `allowed_origins`: the tenant of the device token
//!    (WebSocket), the room's owner (room routes), or any tenant
//!    (registration: a preflight carries no body, so the tenant the
//!    registration names is unknown when it is answered).
//!
//! `Origin: null` (sandboxed iframes, `file://`) is allowed only when the
//! cluster-wide list holds the literal `null`; a malformed or repeated
//! `Origin` never is. The admin API (`/api/v1/admin/…`, `/admin/…`) allows
//! only 1 and 2.
//!
//! Tenants' origins come from the account store through an [`OriginCache`]
//! (one read per tenant per [`CACHE_TTL`], one read at a time). It fails
//! closed: when the store cannot be read, an origin that only a tenant
//! could allow is refused (`store_unavailable`, retryable), and for
//! [`FAILURE_BACKOFF`] after a failed read the store is not asked again.
//!
//! Used by [`crate::http`]: [`check_handshake`] in the device WebSocket
//! handshake, [`OriginCheck`] (the HTTP layer's outermost middleware) for
//! the admin gate and for CORS on
//! `POST /api/v1/devices/register`, `GET /api/v1/rooms/{room}` and
//! `GET /api/v1/rooms/{room}/status`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::Full;
use pace_protocol::{ErrorCode, RoomId};
use std::time::Instant;

use crate::accounts::{AccountError, AccountStore, TenantId, normalize_origin};
use crate::auth::{DeviceCredential, DevicePrincipal};
use crate::error::{ApiError, Body};
use crate::metrics::Metrics;
use crate::queue::SharedQueueStore;

/// How long a tenant's origins are used before the store is read again:
/// a changed tenant takes effect within this time on every node.
pub const CACHE_TTL: Duration = Duration::from_secs(5);

/// After a failed store read, how long lookups fail without asking the
/// store again (so an outage costs one timeout per second, not one per
/// request).
pub const FAILURE_BACKOFF: Duration = Duration::from_secs(1);

/// Tenants cached at once; past this, stale entries are dropped, then all.
const MAX_CACHED_TENANTS: usize = 10_000;

pub use crate::names::NULL_ORIGIN;

/// `Access-Control-Max-Age` of a preflight answer, seconds.
pub const PREFLIGHT_MAX_AGE: &str = "600";

/// `Access-Control-Allow-Headers` of a preflight answer.
pub const ALLOW_HEADERS: &str = "content-type, authorization, x-device-id";

/// A request's `Origin` header and the node's own origin as the request
/// names it (`Host`).
#[derive(Debug, Clone)]
pub struct BrowserOrigin {
    sent: Sent,
    /// The `Origin` value exactly as sent, echoed in
    /// `Access-Control-Allow-Origin` (browsers compare it byte for byte).
    raw: Option<HeaderValue>,
    /// `Host` (else the URI's authority): lower-cased host and port.
    host: Option<(String, Option<u16>)>,
}

/// What the `Origin` header said.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sent {
    /// No `Origin`: not a browser.
    Absent,
    /// `Origin: null`.
    Null,
    /// A valid origin.
    Origin(Parsed),
    /// Not an origin, not ASCII, or more than one header.
    Invalid,
}

/// A valid origin.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parsed {
    /// As [`normalize_origin`] writes it, to compare with the lists.
    normalized: String,
    /// Lower-cased host.
    host: String,
    /// The port, the scheme's default when not written.
    port: u16,
    /// The scheme's default port (80 or 443).
    default_port: u16,
}

impl BrowserOrigin {
    /// Reads the origin of `req`.
    pub fn of<B>(req: &Request<B>) -> BrowserOrigin {
        BrowserOrigin::from_parts(req.headers(), req.uri())
    }

    /// Reads the origin from a request's headers and URI.
    pub fn from_parts(headers: &HeaderMap, uri: &Uri) -> BrowserOrigin {
        let mut values = headers.get_all(header::ORIGIN).iter();
        let (sent, raw) = match (values.next(), values.next()) {
            (None, _) => (Sent::Absent, None),
            (Some(v), None) => (parse_origin(v), Some(v.clone())),
            (Some(_), Some(_)) => (Sent::Invalid, None),
        };
        let host = match headers.get(header::HOST) {
            Some(h) => h.to_str().ok().and_then(parse_host),
            None => uri.authority().and_then(|a| parse_host(a.as_str())),
        };
        BrowserOrigin { sent, raw, host }
    }

    /// Whether the request carries no `Origin` (not a browser).
    pub fn is_absent(&self) -> bool {
        self.sent == Sent::Absent
    }

    /// Whether the origin is the node's own: same host and port as the
    /// request's `Host`, over `http` or `https` (a `Host` without a port
    /// means the origin's default port).
    pub fn is_same_origin(&self) -> bool {
        let (Sent::Origin(o), Some((host, port))) = (&self.sent, &self.host) else {
            return false;
        };
        o.host == *host && o.port == port.unwrap_or(o.default_port)
    }

    /// The origin for logs (escaped by `Debug`).
    fn describe(&self) -> &str {
        match &self.sent {
            Sent::Absent => "-",
            Sent::Null => NULL_ORIGIN,
            Sent::Origin(o) => &o.normalized,
            Sent::Invalid => "<invalid>",
        }
    }
}

fn parse_origin(value: &HeaderValue) -> Sent {
    let Ok(s) = value.to_str() else {
        return Sent::Invalid;
    };
    if s == NULL_ORIGIN {
        return Sent::Null;
    }
    let Ok(normalized) = normalize_origin(s) else {
        return Sent::Invalid;
    };
    // `normalize_origin` wrote `scheme://host[:port]`; read it back.
    let Ok(uri) = normalized.parse::<Uri>() else {
        return Sent::Invalid;
    };
    let default_port = if uri.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    let Some(authority) = uri.authority() else {
        return Sent::Invalid;
    };
    Sent::Origin(Parsed {
        host: authority.host().to_owned(),
        port: authority.port_u16().unwrap_or(default_port),
        default_port,
        normalized,
    })
}

fn parse_host(s: &str) -> Option<(String, Option<u16>)> {
    let authority: http::uri::Authority = s.trim().parse().ok()?;
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return None;
    }
    Some((authority.host().to_ascii_lowercase(), authority.port_u16()))
}

/// Which tenants' lists may allow an origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tenants {
    /// None: only the node's own origin and the cluster-wide list.
    None,
    /// This tenant's.
    One(TenantId),
    /// Any tenant's (registration preflights: the body naming the tenant
    /// is not sent with them).
    Any,
    /// A tenant's, but which one could not be read (fails closed).
    Unknown,
}

/// Why an origin was allowed or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No `Origin` header: not a browser.
    NoOrigin,
    /// The node's own origin.
    SameOrigin,
    /// In the cluster-wide list.
    Cluster,
    /// In a tenant's list.
    Tenant,
    /// Refused.
    Refused(Refusal),
}

/// Why an origin was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not allowed (including `null` unlisted and malformed origins).
    NotAllowed,
    /// Only a tenant's list could allow it, and the store could not be
    /// read: refused (fail closed), retryable.
    StoreUnavailable,
}

impl Verdict {
    /// Whether the request may go on.
    pub fn is_allowed(self) -> bool {
        !matches!(self, Verdict::Refused(_))
    }

    /// The error to answer a refusal with (`None` when allowed).
    pub fn error(self) -> Option<ApiError> {
        match self {
            Verdict::Refused(Refusal::NotAllowed) => Some(ApiError::new(
                ErrorCode::OriginNotAllowed,
                "this page's origin is not allowed here; a tenant's admin lists the origins \
                 its pages may use",
            )),
            Verdict::Refused(Refusal::StoreUnavailable) => Some(ApiError::new(
                ErrorCode::StoreUnavailable,
                crate::error::STORE_UNAVAILABLE,
            )),
            _ => None,
        }
    }
}

/// The verdict without any tenant's list: `Some` when that decides
/// (absent, own, cluster-wide, `null`, invalid), `None` when a tenant's
/// list must be asked.
pub fn decide_without_tenants(cluster: &[String], origin: &BrowserOrigin) -> Option<Verdict> {
    let refused = Verdict::Refused(Refusal::NotAllowed);
    match &origin.sent {
        Sent::Absent => Some(Verdict::NoOrigin),
        Sent::Invalid => Some(refused),
        Sent::Null if cluster.iter().any(|c| c == NULL_ORIGIN) => Some(Verdict::Cluster),
        Sent::Null => Some(refused),
        Sent::Origin(_) if origin.is_same_origin() => Some(Verdict::SameOrigin),
        Sent::Origin(o) if cluster.contains(&o.normalized) => Some(Verdict::Cluster),
        Sent::Origin(_) => None,
    }
}

/// Decides whether `origin` may use a route whose tenants are `tenants`,
/// given the cluster-wide list, reading tenants' lists through `cache`.
pub async fn decide(
    cluster: &[String],
    cache: &OriginCache,
    store: &dyn AccountStore,
    origin: &BrowserOrigin,
    tenants: &Tenants,
) -> Verdict {
    if let Some(v) = decide_without_tenants(cluster, origin) {
        return v;
    }
    let Sent::Origin(o) = &origin.sent else {
        return Verdict::Refused(Refusal::NotAllowed);
    };
    let found = match tenants {
        Tenants::None => return Verdict::Refused(Refusal::NotAllowed),
        Tenants::Unknown => return Verdict::Refused(Refusal::StoreUnavailable),
        Tenants::One(id) => cache.origins(store, Some(id)).await,
        Tenants::Any => cache.origins(store, None).await,
    };
    match found {
        Ok(set) if set.contains(&o.normalized) => Verdict::Tenant,
        Ok(_) => Verdict::Refused(Refusal::NotAllowed),
        Err(e) => {
            tracing::debug!(error = %e, "tenants' origins unavailable; refusing");
            Verdict::Refused(Refusal::StoreUnavailable)
        }
    }
}

/// The node's origin policy: what [`decide`] and the per-request checks
/// read, built once by the composition root (no handle on the node).
#[derive(Debug)]
pub struct Policy {
    /// The cluster-wide list (`--allowed-origins`).
    pub allowed: Vec<String>,
    /// Tenants' origins, cached.
    pub cache: OriginCache,
    /// Where tenants' origins are stored.
    pub accounts: crate::accounts::SharedAccountStore,
    /// Rooms' owners (a room's CORS route asks its owner's list).
    pub queue: SharedQueueStore,
    /// `pace_origin_store_errors_total`, `pace_cors_refused_total`,
    /// `pace_admin_requests_total`.
    pub metrics: Metrics,
}

/// [`decide`] with the node's list, cache and store; counts store failures.
pub async fn verdict(node: &Policy, origin: &BrowserOrigin, tenants: &Tenants) -> Verdict {
    let v = decide(
        &node.allowed,
        &node.cache,
        node.accounts.as_ref(),
        origin,
        tenants,
    )
    .await;
    if v == Verdict::Refused(Refusal::StoreUnavailable) {
        node.metrics.origin_store_errors.inc();
    }
    v
}

/// Whether `origin` may use the node for `tenant` (`None`: no tenant, only
/// the node's own origin and the cluster-wide list).
pub async fn allowed(node: &Policy, origin: &BrowserOrigin, tenant: Option<&TenantId>) -> bool {
    let tenants = tenant.map_or(Tenants::None, |t| Tenants::One(t.clone()));
    verdict(node, origin, &tenants).await.is_allowed()
}

/// The device WebSocket handshake's origin check, after the device token:
/// our token's `tenant` claim names the tenant whose list may allow the
/// page; an external issuer's token or no token names none.
pub async fn check_handshake<B>(
    node: &Policy,
    req: &Request<B>,
    device: &DevicePrincipal,
) -> Result<(), ApiError> {
    let origin = BrowserOrigin::of(req);
    if origin.is_absent() {
        return Ok(());
    }
    let tenants = match device.credential {
        DeviceCredential::Token { .. } => device
            .grants
            .tenant
            .as_deref()
            .and_then(|t| TenantId::parse(t).ok())
            .map_or(Tenants::None, Tenants::One),
        DeviceCredential::External | DeviceCredential::Anonymous => Tenants::None,
    };
    let v = verdict(node, &origin, &tenants).await;
    match v.error() {
        None => Ok(()),
        Some(e) => {
            tracing::debug!(origin = ?origin.describe(), ?tenants, "handshake origin refused");
            Err(e)
        }
    }
}

/// Whether `path` belongs to the admin API or console (own origin only).
pub fn is_admin_path(path: &str) -> bool {
    path.starts_with("/api/v1/admin/") || path == "/admin" || path.starts_with("/admin/")
}

/// A device-facing REST route with CORS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CorsRoute {
    /// `POST /api/v1/devices/register`.
    Register,
    /// `GET /api/v1/rooms/{room}`.
    Room,
    /// `GET /api/v1/rooms/{room}/status`.
    RoomStatus,
}

impl CorsRoute {
    /// The route of `path`, and its room.
    fn of(path: &str) -> Option<(CorsRoute, Option<&str>)> {
        if path == "/api/v1/devices/register" {
            return Some((CorsRoute::Register, None));
        }
        let rest = path.strip_prefix("/api/v1/rooms/")?;
        match rest.split_once('/') {
            None => Some((CorsRoute::Room, Some(rest))),
            Some((room, "status")) => Some((CorsRoute::RoomStatus, Some(room))),
            Some(_) => None,
        }
    }

    /// The one method a browser may use cross-origin.
    fn method(self) -> &'static str {
        match self {
            CorsRoute::Register => "POST",
            CorsRoute::Room | CorsRoute::RoomStatus => "GET",
        }
    }

    /// `Allow` of a preflight answer.
    fn allow(self) -> &'static str {
        match self {
            CorsRoute::Register => "POST, OPTIONS",
            CorsRoute::Room | CorsRoute::RoomStatus => "GET, OPTIONS",
        }
    }

    /// The `route` label of `pace_cors_refused_total`.
    fn label(self) -> &'static str {
        match self {
            CorsRoute::Register => "register",
            CorsRoute::Room => "room",
            CorsRoute::RoomStatus => "room_status",
        }
    }
}

pub use crate::metrics::CORS_ROUTES;

/// The owner tenant of the room `raw` names (fails closed on a store error).
async fn room_tenants(node: &Policy, raw: &str) -> Tenants {
    let Ok(room) = RoomId::parse(raw) else {
        return Tenants::None;
    };
    match node.queue.room_owner(&room).await {
        Ok(Some(owner)) => TenantId::parse(&owner).map_or(Tenants::None, Tenants::One),
        Ok(None) => Tenants::None,
        Err(e) => {
            tracing::warn!(error = %e, "room owner unavailable for an origin check");
            Tenants::Unknown
        }
    }
}

/// The origin decisions for one HTTP request, made before its handler
/// consumes it: the admin gate, the CORS preflight answer, and the CORS
/// headers of the response.
#[derive(Debug)]
pub struct OriginCheck {
    origin: BrowserOrigin,
    /// An admin route from a browser page that is not the node's own.
    admin_refused: bool,
    /// Set on the CORS routes (their method or `OPTIONS`).
    cors: Option<Cors>,
}

#[derive(Debug)]
struct Cors {
    route: CorsRoute,
    preflight: bool,
    verdict: Verdict,
}

impl OriginCheck {
    /// Checks `req`'s origin: a store read only for a CORS route whose
    /// origin only a tenant could allow.
    pub async fn of<B>(node: &Policy, req: &Request<B>) -> OriginCheck {
        let origin = BrowserOrigin::of(req);
        let path = req.uri().path();
        let admin_refused = is_admin_path(path) && !origin.is_absent() && !origin.is_same_origin();
        let preflight = req.method() == Method::OPTIONS;
        let cors = match CorsRoute::of(path) {
            Some((route, room)) if preflight || req.method().as_str() == route.method() => {
                let verdict = match decide_without_tenants(&node.allowed, &origin) {
                    Some(v) => v,
                    None => {
                        let tenants = match room {
                            Some(raw) => room_tenants(node, raw).await,
                            None => Tenants::Any,
                        };
                        verdict(node, &origin, &tenants).await
                    }
                };
                if !verdict.is_allowed() {
                    node.metrics
                        .cors_refused
                        .with_label_values(&[route.label()])
                        .inc();
                    tracing::debug!(origin = ?origin.describe(), path, "cross-origin request refused");
                }
                Some(Cors {
                    route,
                    preflight,
                    verdict,
                })
            }
            _ => None,
        };
        OriginCheck {
            origin,
            admin_refused,
            cors,
        }
    }

    /// Whether this is an admin request from a foreign browser page.
    pub fn admin_refused(&self) -> bool {
        self.admin_refused
    }

    /// The refusal of an admin request from a foreign page (403
    /// `origin_not_allowed`), counted in
    /// `pace_admin_requests_total{result="origin_not_allowed"}`.
    pub fn refuse_admin(&self, node: &Policy) -> ApiError {
        node.metrics
            .admin_requests
            .with_label_values(&["origin_not_allowed"])
            .inc();
        tracing::debug!(origin = ?self.origin.describe(), "admin request from a foreign origin refused");
        ApiError::new(
            ErrorCode::OriginNotAllowed,
            "the admin API answers only pages of its own origin",
        )
    }

    /// Whether this is a CORS preflight (`OPTIONS` on a CORS route).
    pub fn is_preflight(&self) -> bool {
        self.cors.as_ref().is_some_and(|c| c.preflight)
    }

    /// The answer to a preflight: 204 with the CORS headers when the
    /// origin is allowed (no origin: 204 with `Allow` only); 403
    /// `origin_not_allowed` (or 503 `store_unavailable`) without them
    /// otherwise. [`OriginCheck::add_headers`] adds `Access-Control-Allow-Origin`
    /// and `Vary`.
    pub fn preflight(&self) -> Result<Response<Body>, ApiError> {
        let Some(cors) = &self.cors else {
            return Err(ApiError::new(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this path",
            ));
        };
        if let Some(e) = cors.verdict.error() {
            return Err(e);
        }
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        h.insert(header::ALLOW, HeaderValue::from_static(cors.route.allow()));
        if !self.origin.is_absent() {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(cors.route.method()),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOW_HEADERS),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static(PREFLIGHT_MAX_AGE),
            );
        }
        Ok(resp)
    }

    /// Adds the CORS headers to a response of a CORS route: always
    /// `Vary: Origin` (the answer depends on it); when the origin is
    /// allowed, `Access-Control-Allow-Origin: <that origin>` (never `*`,
    /// never `Access-Control-Allow-Credentials`: no cookies are used) and,
    /// on actual requests, `Access-Control-Expose-Headers: retry-after`.
    pub fn add_headers<B>(&self, resp: &mut Response<B>) {
        let Some(cors) = &self.cors else {
            return;
        };
        let h = resp.headers_mut();
        h.append(header::VARY, HeaderValue::from_static("Origin"));
        if !cors.verdict.is_allowed() {
            return;
        }
        if let Some(raw) = &self.origin.raw {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, raw.clone());
            if !cors.preflight {
                h.insert(
                    header::ACCESS_CONTROL_EXPOSE_HEADERS,
                    HeaderValue::from_static("retry-after"),
                );
            }
        }
    }
}

/// Tenants' origins, read from the account store at most once per
/// [`CACHE_TTL`] per tenant, one read at a time.
#[derive(Debug)]
pub struct OriginCache {
    ttl: Duration,
    /// Longest a store read may take.
    timeout: Duration,
    state: Mutex<CacheState>,
    /// Held while reading the store, so a burst of handshakes after an
    /// entry expires makes one read, not one each.
    reading: tokio::sync::Mutex<()>,
    /// Added to the clock: tests move time forward.
    #[cfg(test)]
    skew: Mutex<Duration>,
}

#[derive(Debug, Default)]
struct CacheState {
    /// Per tenant: its origins (none for an unknown tenant), read when.
    tenants: HashMap<TenantId, (Arc<HashSet<String>>, Instant)>,
    /// Every tenant's origins together, read when.
    any: Option<(Arc<HashSet<String>>, Instant)>,
    /// When a store read last failed.
    failed_at: Option<Instant>,
}

impl OriginCache {
    /// A cache keeping entries for `ttl`, giving up a store read after
    /// `timeout`.
    pub fn new(ttl: Duration, timeout: Duration) -> OriginCache {
        OriginCache {
            ttl,
            timeout,
            state: Mutex::default(),
            reading: tokio::sync::Mutex::new(()),
            #[cfg(test)]
            skew: Mutex::default(),
        }
    }

    fn now(&self) -> Instant {
        #[cfg(test)]
        {
            Instant::now() + *self.skew.lock().unwrap_or_else(|p| p.into_inner())
        }
        #[cfg(not(test))]
        {
            Instant::now()
        }
    }

    /// Moves this cache's clock forward.
    #[cfg(test)]
    fn advance(&self, by: Duration) {
        *self.skew.lock().unwrap_or_else(|p| p.into_inner()) += by;
    }

    fn lock(&self) -> MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh entry, `Ok(None)` when the store must be read, or an error
    /// while the last read's failure is recent.
    fn cached(
        &self,
        tenant: Option<&TenantId>,
        now: Instant,
    ) -> Result<Option<Arc<HashSet<String>>>, AccountError> {
        let state = self.lock();
        let entry = match tenant {
            Some(id) => state.tenants.get(id),
            None => state.any.as_ref(),
        };
        if let Some((set, at)) = entry
            && now.duration_since(*at) < self.ttl
        {
            return Ok(Some(set.clone()));
        }
        if state
            .failed_at
            .is_some_and(|at| now.duration_since(at) < FAILURE_BACKOFF)
        {
            return Err(AccountError::Unavailable(
                "a read failed moments ago".into(),
            ));
        }
        Ok(None)
    }

    /// The origins of `tenant` (`None`: of every tenant together).
    pub async fn origins(
        &self,
        store: &dyn AccountStore,
        tenant: Option<&TenantId>,
    ) -> Result<Arc<HashSet<String>>, AccountError> {
        if let Some(set) = self.cached(tenant, self.now())? {
            return Ok(set);
        }
        let _reading = self.reading.lock().await;
        // Another task may have read it while this one waited.
        if let Some(set) = self.cached(tenant, self.now())? {
            return Ok(set);
        }
        let read = async {
            match tenant {
                Some(id) => Ok(store
                    .tenant(id)
                    .await?
                    .map(|t| t.allowed_origins)
                    .unwrap_or_default()),
                None => Ok(store
                    .tenants()
                    .await?
                    .into_iter()
                    .flat_map(|t| t.allowed_origins)
                    .collect::<Vec<_>>()),
            }
        };
        let result = tokio::time::timeout(self.timeout, read)
            .await
            .unwrap_or_else(|_| Err(AccountError::Unavailable("timed out".into())));
        let now = self.now();
        let mut state = self.lock();
        match result {
            Ok(list) => {
                let set = Arc::new(list.into_iter().collect::<HashSet<_>>());
                state.failed_at = None;
                match tenant {
                    Some(id) => {
                        if state.tenants.len() >= MAX_CACHED_TENANTS {
                            let ttl = self.ttl;
                            state
                                .tenants
                                .retain(|_, (_, at)| now.duration_since(*at) < ttl);
                            if state.tenants.len() >= MAX_CACHED_TENANTS {
                                state.tenants.clear();
                            }
                        }
                        state.tenants.insert(id.clone(), (set.clone(), now));
                    }
                    None => state.any = Some((set.clone(), now)),
                }
                Ok(set)
            }
            Err(e) => {
                state.failed_at = Some(now);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::accounts::{
        AdminUser, Attempts, MemoryAccountStore, PasswordHash, Tenant, UserInfo, UserName,
    };

    fn origin(origin: Option<&str>, host: &str) -> BrowserOrigin {
        let mut req = Request::get("/ws").header("host", host);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        BrowserOrigin::of(&req.body(()).unwrap())
    }

    fn tid(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    /// A memory store that can be taken down and counts tenant reads.
    #[derive(Debug)]
    struct Flaky {
        inner: MemoryAccountStore,
        down: AtomicBool,
        reads: AtomicUsize,
    }

    impl Flaky {
        async fn with(tenants: &[(&str, &[&str])]) -> Flaky {
            let inner = MemoryAccountStore::in_memory();
            for (id, origins) in tenants {
                let t = Tenant {
                    id: tid(id),
                    name: id.to_string(),
                    allowed_origins: origins.iter().map(|o| o.to_string()).collect(),
                    created_at: 1,
                }
                .validated()
                .unwrap();
                inner.create_tenant(&t).await.unwrap();
            }
            Flaky {
                inner,
                down: AtomicBool::new(false),
                reads: AtomicUsize::new(0),
            }
        }

        fn check(&self) -> Result<(), AccountError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                Err(AccountError::Unavailable("down".into()))
            } else {
                Ok(())
            }
        }
    }

    #[async_trait]
    impl AccountStore for Flaky {
        fn kind(&self) -> &'static str {
            "flaky"
        }
        async fn create_tenant(&self, t: &Tenant) -> Result<(), AccountError> {
            self.inner.create_tenant(t).await
        }
        async fn update_tenant(&self, t: &Tenant) -> Result<(), AccountError> {
            self.inner.update_tenant(t).await
        }
        async fn tenant(&self, id: &TenantId) -> Result<Option<Tenant>, AccountError> {
            tokio::task::yield_now().await;
            self.check()?;
            self.inner.tenant(id).await
        }
        async fn tenants(&self) -> Result<Vec<Tenant>, AccountError> {
            self.check()?;
            self.inner.tenants().await
        }
        async fn create_user(&self, u: &AdminUser) -> Result<(), AccountError> {
            self.inner.create_user(u).await
        }
        async fn set_password(
            &self,
            t: &TenantId,
            u: &UserName,
            h: &PasswordHash,
        ) -> Result<(), AccountError> {
            self.inner.set_password(t, u, h).await
        }
        async fn user(
            &self,
            t: &TenantId,
            u: &UserName,
        ) -> Result<Option<AdminUser>, AccountError> {
            self.inner.user(t, u).await
        }
        async fn users(&self, t: &TenantId) -> Result<Vec<UserInfo>, AccountError> {
            self.inner.users(t).await
        }
        async fn delete_user(&self, t: &TenantId, u: &UserName) -> Result<bool, AccountError> {
            self.inner.delete_user(t, u).await
        }
        async fn count_login_attempt(
            &self,
            t: &TenantId,
            u: &UserName,
            w: Duration,
        ) -> Result<Attempts, AccountError> {
            self.inner.count_login_attempt(t, u, w).await
        }
        async fn clear_login_attempts(
            &self,
            t: &TenantId,
            u: &UserName,
        ) -> Result<(), AccountError> {
            self.inner.clear_login_attempts(t, u).await
        }
    }

    fn cache() -> OriginCache {
        OriginCache::new(CACHE_TTL, Duration::from_secs(2))
    }

    #[test]
    fn the_nodes_own_origin_is_its_host_over_http_or_https() {
        let own = |o: &str, host: &str| origin(Some(o), host).is_same_origin();
        assert!(own("http://pace.example:8080", "pace.example:8080"));
        assert!(own("https://pace.example:8080", "Pace.Example:8080"));
        assert!(own("https://pace.example", "pace.example"));
        assert!(own("http://pace.example", "pace.example"));
        assert!(own("https://pace.example", "pace.example:443"));
        assert!(own("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(own("http://[::1]:8080", "[::1]:8080"));
        assert!(!own("https://pace.example", "pace.example:8080"));
        assert!(!own("http://pace.example:8080", "pace.example"));
        assert!(!own("https://evil.example", "pace.example"));
        assert!(!own("https://pace.example.evil.example", "pace.example"));
        assert!(!own("null", "pace.example"));
        assert!(!own("https://pace.example", "user@pace.example"));
        // No Host: nothing is the node's own.
        let req = Request::get("/ws")
            .header("origin", "https://pace.example")
            .body(())
            .unwrap();
        assert!(!BrowserOrigin::of(&req).is_same_origin());
    }

    #[tokio::test]
    async fn origins_are_allowed_in_order() {
        let store = Flaky::with(&[("acme", &["https://shop.acme.example"]), ("globex", &[])]).await;
        let cache = cache();
        let cluster = vec!["https://portal.example".to_owned()];
        let host = "pace.example";
        let acme = Tenants::One(tid("acme"));
        let check = |o: Option<&'static str>, t: Tenants| {
            let (cache, store, cluster) = (&cache, &store, &cluster);
            async move { decide(cluster, cache, store, &origin(o, host), &t).await }
        };
        assert_eq!(check(None, Tenants::None).await, Verdict::NoOrigin);
        assert_eq!(
            check(Some("https://pace.example"), Tenants::None).await,
            Verdict::SameOrigin
        );
        assert_eq!(
            check(Some("https://portal.example"), Tenants::None).await,
            Verdict::Cluster
        );
        assert_eq!(
            check(Some("https://shop.acme.example"), acme.clone()).await,
            Verdict::Tenant
        );
        // Browsers send lower case; a differently written one still matches.
        assert_eq!(
            check(Some("HTTPS://Shop.Acme.Example"), acme.clone()).await,
            Verdict::Tenant
        );
        let refused = Verdict::Refused(Refusal::NotAllowed);
        assert_eq!(
            check(
                Some("https://shop.acme.example"),
                Tenants::One(tid("globex"))
            )
            .await,
            refused
        );
        assert_eq!(
            check(
                Some("https://shop.acme.example"),
                Tenants::One(tid("nobody"))
            )
            .await,
            refused
        );
        assert_eq!(
            check(Some("https://shop.acme.example"), Tenants::None).await,
            refused
        );
        assert_eq!(
            check(Some("https://shop.acme.example"), Tenants::Any).await,
            Verdict::Tenant
        );
        assert_eq!(
            check(Some("https://evil.example"), Tenants::Any).await,
            refused
        );
        assert_eq!(
            check(Some("https://shop.acme.example:8443"), acme.clone()).await,
            refused
        );
        assert_eq!(
            check(Some("http://shop.acme.example"), acme.clone()).await,
            refused,
            "the scheme is part of the origin"
        );
        for bad in [
            "null",
            "*",
            "shop.acme.example",
            "https://shop.acme.example/x",
        ] {
            assert_eq!(check(Some(bad), acme.clone()).await, refused, "{bad}");
        }
        assert_eq!(
            check(Some("https://shop.acme.example"), Tenants::Unknown).await,
            Verdict::Refused(Refusal::StoreUnavailable)
        );
    }

    #[tokio::test]
    async fn null_and_repeated_origins() {
        let store = Flaky::with(&[]).await;
        let cache = cache();
        let null = origin(Some("null"), "pace.example");
        let with_null = vec![NULL_ORIGIN.to_owned()];
        assert_eq!(
            decide(&[], &cache, &store, &null, &Tenants::Any).await,
            Verdict::Refused(Refusal::NotAllowed)
        );
        assert_eq!(
            decide(&with_null, &cache, &store, &null, &Tenants::None).await,
            Verdict::Cluster
        );
        let req = Request::get("/ws")
            .header("host", "pace.example")
            .header("origin", "https://pace.example")
            .header("origin", "https://pace.example")
            .body(())
            .unwrap();
        assert_eq!(
            decide(
                &[],
                &cache,
                &store,
                &BrowserOrigin::of(&req),
                &Tenants::None
            )
            .await,
            Verdict::Refused(Refusal::NotAllowed),
            "two Origin headers are not a browser's"
        );
        let req = Request::get("/ws")
            .header(
                "origin",
                HeaderValue::from_bytes(b"https://\xff.example").unwrap(),
            )
            .body(())
            .unwrap();
        assert_eq!(
            decide(&[], &cache, &store, &BrowserOrigin::of(&req), &Tenants::Any).await,
            Verdict::Refused(Refusal::NotAllowed)
        );
    }

    #[tokio::test]
    async fn tenants_are_cached_and_the_cache_fails_closed() {
        let store = Flaky::with(&[("acme", &["https://shop.acme.example"])]).await;
        let cache = cache();
        let o = origin(Some("https://shop.acme.example"), "pace.example");
        let acme = Tenants::One(tid("acme"));
        let decide = |t: Tenants| {
            let (cache, store, o) = (&cache, &store, &o);
            async move { decide(&[], cache, store, o, &t).await }
        };
        assert_eq!(decide(acme.clone()).await, Verdict::Tenant);
        assert_eq!(decide(acme.clone()).await, Verdict::Tenant);
        assert_eq!(store.reads.load(Ordering::SeqCst), 1, "cached");

        // A change shows within the TTL.
        let mut t = store.inner.tenant(&tid("acme")).await.unwrap().unwrap();
        t.allowed_origins.clear();
        store.inner.update_tenant(&t).await.unwrap();
        assert_eq!(decide(acme.clone()).await, Verdict::Tenant, "still cached");
        cache.advance(CACHE_TTL);
        assert_eq!(
            decide(acme.clone()).await,
            Verdict::Refused(Refusal::NotAllowed)
        );
        assert_eq!(store.reads.load(Ordering::SeqCst), 2);

        // Store down: refused, and not asked again for a moment.
        t.allowed_origins = vec!["https://shop.acme.example".into()];
        store.inner.update_tenant(&t).await.unwrap();
        store.down.store(true, Ordering::SeqCst);
        cache.advance(CACHE_TTL);
        let unavailable = Verdict::Refused(Refusal::StoreUnavailable);
        assert_eq!(decide(acme.clone()).await, unavailable);
        assert_eq!(decide(Tenants::Any).await, unavailable);
        assert_eq!(store.reads.load(Ordering::SeqCst), 3, "backing off");
        // Origins allowed without the store still are.
        let own = origin(Some("https://pace.example"), "pace.example");
        assert_eq!(
            super::decide(&[], &cache, &store, &own, &acme).await,
            Verdict::SameOrigin
        );
        cache.advance(FAILURE_BACKOFF);
        assert_eq!(decide(acme.clone()).await, unavailable);
        assert_eq!(store.reads.load(Ordering::SeqCst), 4);

        // Back up: allowed again.
        store.down.store(false, Ordering::SeqCst);
        cache.advance(FAILURE_BACKOFF);
        assert_eq!(decide(acme.clone()).await, Verdict::Tenant);
        assert_eq!(decide(Tenants::Any).await, Verdict::Tenant);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_read_for_a_burst() {
        let store = Arc::new(Flaky::with(&[("acme", &["https://shop.acme.example"])]).await);
        let cache = Arc::new(cache());
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (store, cache) = (store.clone(), cache.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .origins(store.as_ref(), Some(&tid("acme")))
                    .await
                    .unwrap()
                    .contains("https://shop.acme.example")
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap());
        }
        assert_eq!(store.reads.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn cors_routes() {
        assert_eq!(
            CorsRoute::of("/api/v1/devices/register"),
            Some((CorsRoute::Register, None))
        );
        assert_eq!(
            CorsRoute::of("/api/v1/rooms/sale"),
            Some((CorsRoute::Room, Some("sale")))
        );
        assert_eq!(
            CorsRoute::of("/api/v1/rooms/sale/status"),
            Some((CorsRoute::RoomStatus, Some("sale")))
        );
        assert_eq!(CorsRoute::of("/api/v1/rooms/sale/stats"), None);
        assert_eq!(CorsRoute::of("/api/v1/notify"), None);
        assert!(is_admin_path("/api/v1/admin/login"));
        assert!(is_admin_path("/admin/ws"));
        assert!(is_admin_path("/admin"));
        assert!(!is_admin_path("/administrator"));
        assert!(!is_admin_path("/api/v1/rooms/admin"));
    }
}
