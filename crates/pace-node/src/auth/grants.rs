//! Which groups a device may join: the rule behind `subscribe`, a group
//! `resume` cursor and `x-department-id`.
//!
//! A device's [`Grants`] come from its credential, never from what it asks
//! for: the departments its registration record holds (set by an admin of
//! its tenant, or the untenanted department it declared when it
//! registered), or the groups claim of an external issuer's token. The
//! rule, in order:
//!
//! 1. a room channel `@room:<room>`: only while the device waits in or is
//!    admitted to that room (the caller checks the queue store);
//! 2. a group the credential grants: yes, if a tenant group (`<t>:<name>`)
//!    belongs to the device's own tenant;
//! 3. an untenanted group (no `:`) for an anonymous device of an insecure
//!    node (`--insecure-anonymous-devices`: such a node takes devices at
//!    their word, so it keeps doing so for the groups without a tenant);
//! 4. anything else: refused (`not_allowed`).

use std::sync::{Arc, LazyLock};

use pace_protocol::ids::ROOM_GROUP_PREFIX;
use pace_protocol::{GroupId, RoomId};

/// What a device's credential lets it join.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grants {
    /// The device's tenant, from its token (or the external issuer's
    /// configured tenant).
    pub tenant: Option<String>,
    /// The groups it may join.
    pub groups: Vec<GroupId>,
    /// An anonymous device of an insecure node: untenanted groups as it
    /// asks.
    pub open: bool,
}

/// The answer of [`Grants::access`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// The device may join.
    Allowed,
    /// Only if it waits in or is admitted to this room.
    IfPlacedIn(RoomId),
    /// It may not.
    Refused,
}

/// The shared grants of every anonymous device (no allocation per device).
static OPEN: LazyLock<Arc<Grants>> = LazyLock::new(|| {
    Arc::new(Grants {
        open: true,
        ..Grants::default()
    })
});

/// The shared grants of a device that may join no group.
static NONE: LazyLock<Arc<Grants>> = LazyLock::new(|| Arc::new(Grants::default()));

/// The tenant a group belongs to: the part before its first `:` (tenant
/// ids contain no `:`, so the split is unambiguous).
pub fn group_tenant(group: &GroupId) -> Option<&str> {
    let s = group.as_str();
    if s.starts_with(ROOM_GROUP_PREFIX) {
        return None;
    }
    s.split_once(':').map(|(t, _)| t)
}

impl Grants {
    /// The grants of an anonymous device of an insecure node.
    pub fn open() -> Arc<Grants> {
        OPEN.clone()
    }

    /// Grants for `tenant` and `groups`; shared when there is nothing to
    /// hold. Groups of another tenant than `tenant` are dropped.
    pub fn new(tenant: Option<String>, mut groups: Vec<GroupId>) -> Arc<Grants> {
        groups.retain(|g| match group_tenant(g) {
            Some(t) => tenant.as_deref() == Some(t),
            None => !g.as_str().starts_with(ROOM_GROUP_PREFIX),
        });
        groups.sort();
        groups.dedup();
        if tenant.is_none() && groups.is_empty() {
            return NONE.clone();
        }
        Arc::new(Grants {
            tenant,
            groups,
            open: false,
        })
    }

    /// Whether the device may join `group`.
    pub fn access(&self, group: &GroupId) -> Access {
        if group.as_str().starts_with(ROOM_GROUP_PREFIX) {
            return match group.room() {
                Some(room) => Access::IfPlacedIn(room),
                None => Access::Refused,
            };
        }
        let tenant_ok = match group_tenant(group) {
            Some(t) => self.tenant.as_deref() == Some(t),
            None => true,
        };
        if tenant_ok && self.groups.binary_search(group).is_ok() {
            return Access::Allowed;
        }
        if self.open && group_tenant(group).is_none() {
            return Access::Allowed;
        }
        Access::Refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> GroupId {
        GroupId::parse(s).unwrap()
    }

    #[test]
    fn tenant_groups_only_for_their_tenant_and_when_granted() {
        let acme = Grants::new(Some("acme".into()), vec![g("acme:ops"), g("sales")]);
        assert_eq!(acme.access(&g("acme:ops")), Access::Allowed);
        assert_eq!(acme.access(&g("sales")), Access::Allowed);
        assert_eq!(
            acme.access(&g("acme:finance")),
            Access::Refused,
            "not granted"
        );
        assert_eq!(acme.access(&g("globex:ops")), Access::Refused);
        assert_eq!(acme.access(&g("it")), Access::Refused);
        assert_eq!(
            acme.access(&g("@room:sale")),
            Access::IfPlacedIn(RoomId::parse("sale").unwrap())
        );
        assert_eq!(acme.access(&g("@room:")), Access::Refused);
    }

    #[test]
    fn other_tenants_groups_are_never_granted() {
        let b = Grants::new(Some("globex".into()), vec![g("acme:finance")]);
        assert!(b.groups.is_empty(), "dropped when granted");
        assert_eq!(b.access(&g("acme:finance")), Access::Refused);
        let none = Grants::new(None, vec![g("acme:finance"), g("@room:x")]);
        assert!(
            Arc::ptr_eq(&none, &NONE),
            "nothing left: the shared empty grants"
        );
    }

    #[test]
    fn anonymous_devices_join_untenanted_groups_only() {
        let open = Grants::open();
        assert_eq!(open.access(&g("sales")), Access::Allowed);
        assert_eq!(open.access(&g("acme:finance")), Access::Refused);
        assert!(matches!(open.access(&g("@room:x")), Access::IfPlacedIn(_)));
        assert!(Arc::ptr_eq(&open, &Grants::open()), "shared");
    }
}
