//! Admin feed tickets: `/admin/ws` without a long-lived token in the URL.
//!
//! Browsers cannot set headers on a WebSocket, so the console used to put
//! its 15-minute admin token in the query string, where proxies and access
//! logs keep it. Now it first asks `POST /api/v1/admin/ws-ticket` (admin
//! token in `Authorization`) for a ticket: an EdDSA JWT (`typ`
//! `pace-admin-ticket+jwt`, `aud` `pace/admin-ticket`) valid
//! [`TICKET_TTL`], naming the admin, the tenant and the admin token's own
//! expiry, and opens `/admin/ws?ticket=…`. A ticket opens one feed, once:
//! its id is claimed in the store ([`crate::store::Store::claim_once`]), so
//! a logged URL is worthless by the time anybody reads the log.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::accounts::login::ADMIN_AUDIENCE;
use crate::accounts::{AdminClaims, TenantId, UserName};
use crate::admission::KeySet;

/// How long a ticket may wait before it opens a feed.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// `aud` of a ticket (contains `/`: never a room id, never an admission).
pub const TICKET_AUDIENCE: &str = "pace/admin-ticket";
/// `typ` header of a ticket.
pub const TICKET_TYPE: &str = "pace-admin-ticket+jwt";
/// Query parameter of `/admin/ws` carrying the ticket.
pub const TICKET_QUERY: &str = "ticket";

/// The claims of a ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketClaims {
    /// The key set's issuer.
    pub iss: String,
    /// Always [`TICKET_AUDIENCE`].
    pub aud: String,
    /// The admin.
    pub sub: UserName,
    /// The admin's tenant.
    pub tenant: TenantId,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// The ticket's expiry, Unix seconds.
    pub exp: u64,
    /// When the admin token it was made from expires: the feed ends then.
    pub session_exp: u64,
    /// Ticket id, claimed once.
    pub jti: String,
}

/// Why a ticket does not open the feed; [`TicketError::code`] is the
/// `result` label of `pace_admin_tickets_total`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// Not a ticket of this cluster (forged, malformed, another kind).
    #[error("not a valid admin feed ticket")]
    Invalid,
    /// Older than [`TICKET_TTL`], or the admin session behind it ended.
    #[error("the ticket expired: ask POST /api/v1/admin/ws-ticket for a new one")]
    Expired,
    /// It opened a feed already.
    #[error("the ticket was used already: ask POST /api/v1/admin/ws-ticket for a new one")]
    Reused,
}

impl TicketError {
    /// The metrics label.
    pub fn code(&self) -> &'static str {
        match self {
            TicketError::Invalid => "invalid",
            TicketError::Expired => "expired",
            TicketError::Reused => "reused",
        }
    }
}

/// Signs a ticket for the admin of `admin` at `now`.
pub fn issue(
    keys: &KeySet,
    admin: &AdminClaims,
    now: u64,
) -> Result<(String, TicketClaims), crate::admission::TokenError> {
    let claims = TicketClaims {
        iss: keys.issuer().to_owned(),
        aud: TICKET_AUDIENCE.to_owned(),
        sub: admin.sub.clone(),
        tenant: admin.tenant.clone(),
        iat: now,
        exp: now.saturating_add(TICKET_TTL.as_secs()).min(admin.exp),
        session_exp: admin.exp,
        jti: uuid::Uuid::new_v4().simple().to_string(),
    };
    let token = keys.sign_claims_typed(&claims, now, TICKET_TYPE)?;
    Ok((token, claims))
}

/// Checks a ticket's signature, kind and expiry at `now` (the caller then
/// claims its id once).
pub fn verify(keys: &KeySet, ticket: &str, now: u64) -> Result<TicketClaims, TicketError> {
    let header = jsonwebtoken::decode_header(ticket).map_err(|_| TicketError::Invalid)?;
    if header.typ.as_deref() != Some(TICKET_TYPE) {
        return Err(TicketError::Invalid);
    }
    let claims: TicketClaims = keys
        .decode_claims(ticket)
        .map_err(|_| TicketError::Invalid)?;
    if claims.aud != TICKET_AUDIENCE || claims.iss != keys.issuer() {
        return Err(TicketError::Invalid);
    }
    // The one time rule every token kind shares (key set's leeway); a
    // ticket never outlives the admin session it stands for.
    let times = crate::token_time::TimeClaims {
        iat: Some(claims.iat),
        nbf: None,
        exp: Some(claims.exp.min(claims.session_exp)),
    };
    match crate::token_time::check(times, now, keys.leeway().as_secs()) {
        Ok(()) => {}
        Err(crate::token_time::TimeError::NotYetValid { .. }) => return Err(TicketError::Invalid),
        Err(crate::token_time::TimeError::Expired { .. }) => return Err(TicketError::Expired),
    }
    Ok(claims)
}

impl TicketClaims {
    /// The admin session the ticket stands for.
    pub fn admin(&self) -> AdminClaims {
        AdminClaims {
            iss: self.iss.clone(),
            aud: ADMIN_AUDIENCE.to_owned(),
            sub: self.sub.clone(),
            tenant: self.tenant.clone(),
            iat: self.iat,
            exp: self.session_exp,
            jti: self.jti.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::unix_now;

    fn admin(keys: &KeySet, exp: u64) -> AdminClaims {
        AdminClaims {
            iss: keys.issuer().to_owned(),
            aud: ADMIN_AUDIENCE.to_owned(),
            sub: UserName::parse("alice").unwrap(),
            tenant: TenantId::parse("acme").unwrap(),
            iat: unix_now(),
            exp,
            jti: "j".into(),
        }
    }

    #[test]
    fn tickets_verify_until_they_expire_and_are_no_other_token() {
        let keys = KeySet::generate_in_memory().unwrap();
        let now = unix_now();
        let (ticket, claims) = issue(&keys, &admin(&keys, now + 900), now).unwrap();
        assert_eq!(claims.exp, now + 30);
        let back = verify(&keys, &ticket, now + 29).unwrap();
        assert_eq!(back.admin().tenant.as_str(), "acme");
        assert_eq!(
            back.admin().exp,
            now + 900,
            "the feed ends with the session"
        );
        let leeway = keys.leeway().as_secs();
        assert!(verify(&keys, &ticket, now + 30 + leeway - 1).is_ok());
        assert_eq!(
            verify(&keys, &ticket, now + 30 + leeway),
            Err(TicketError::Expired),
            "expired past exp plus the clock leeway"
        );
        let (early, _) = issue(&keys, &admin(&keys, now + 900), now + leeway + 1).unwrap();
        assert_eq!(
            verify(&keys, &early, now),
            Err(TicketError::Invalid),
            "issued in the future"
        );
        let foreign = KeySet::generate_in_memory().unwrap();
        assert_eq!(verify(&foreign, &ticket, now), Err(TicketError::Invalid));
        // Not an admin token, not an admission.
        assert!(crate::accounts::login::verify_admin_token(&keys, &ticket).is_err());
        assert!(keys.verify(&ticket, None, now).is_err());
        // A ticket never outlives the session it came from.
        let (_, short) = issue(&keys, &admin(&keys, now + 10), now).unwrap();
        assert_eq!(short.exp, now + 10);
        assert_eq!(verify(&keys, "garbage", now), Err(TicketError::Invalid));
    }
}
