//! The plain names every layer checks the same way, kept below them all
//! (the configuration validates them too): tenant ids, admin user names,
//! browser origins. The account rules ([`crate::accounts`]) build on them.

use std::fmt;

use pace_protocol::GroupId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A name that breaks its rules; the message says which rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidName(pub String);

/// The origin browsers send for opaque origins (sandboxed iframes,
/// `file://`); listed literally in `--allowed-origin` to allow it.
pub const NULL_ORIGIN: &str = "null";

macro_rules! account_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $no_colon:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(GroupId);

        impl $name {
            /// Maximum length in bytes (a group id's charset, a room id's
            /// length: `<tenant>:<name>` groups stay within the group rules).
            pub const MAX_LEN: usize = pace_protocol::ids::ROOM_ID_MAX_LEN;

            /// Validates `s` (1 to 64 bytes of `A-Z a-z 0-9 . _ : @ -`) and
            /// wraps it.
            pub fn parse(s: &str) -> Result<Self, InvalidName> {
                if s.len() > Self::MAX_LEN {
                    return Err(InvalidName(format!(
                        "{} is longer than {} bytes",
                        $what,
                        Self::MAX_LEN
                    )));
                }
                if $no_colon && s.contains(':') {
                    return Err(InvalidName(format!(
                        "{} may not contain ':' (it ends the tenant's part of a group name)",
                        $what
                    )));
                }
                GroupId::parse(s)
                    .map($name)
                    .map_err(|e| InvalidName(format!("{} {e}", $what)))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $name::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

account_id!(
    /// A tenant id: the group id rules, so it is safe in URLs, Redis keys
    /// and log lines without escaping, but no `:` — a tenant's groups are
    /// `<tenant>:<name>`, and the first `:` must say where the tenant ends.
    TenantId,
    "tenant id",
    true
);

account_id!(
    /// An admin user name, unique within its tenant; the group id rules.
    UserName,
    "user name",
    false
);

/// Normalises a browser origin: `http` or `https`, a host and an optional
/// port, nothing else (no user, path, query or fragment); scheme and host
/// lower-cased, as browsers send the `Origin` header.
pub fn normalize_origin(origin: &str) -> Result<String, InvalidName> {
    let bad = || {
        InvalidName(format!(
            "origin {origin:?} must look like https://host[:port] (no path)"
        ))
    };
    let uri: http::Uri = origin.trim().parse().map_err(|_| bad())?;
    let scheme = uri
        .scheme_str()
        .map(str::to_ascii_lowercase)
        .ok_or_else(bad)?;
    if scheme != "http" && scheme != "https" {
        return Err(bad());
    }
    let authority = uri.authority().ok_or_else(bad)?;
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return Err(bad());
    }
    if uri.query().is_some() || !matches!(uri.path(), "" | "/") {
        return Err(bad());
    }
    let host = authority.host().to_ascii_lowercase();
    Ok(match authority.port_u16() {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    })
}
