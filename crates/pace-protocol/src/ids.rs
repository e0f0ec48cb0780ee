//! Identifier rules: which strings are valid device ids, group (department)
//! ids and event names.
//!
//! A device id is chosen by the device (see `pace-device`: `<type>_<uuid>`),
//! so the node validates it before it becomes a map key, a Redis key part or
//! a log field. The charset keeps ids safe in URLs, headers, Redis keys and
//! log lines without escaping.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Maximum length of a device id, in bytes.
pub const DEVICE_ID_MAX_LEN: usize = 128;
/// Maximum length of a group (department) id, in bytes: room ids plus the
/// room channel prefix [`ROOM_GROUP_PREFIX`].
pub const GROUP_ID_MAX_LEN: usize = 70;
/// Maximum length of a waiting-room id, in bytes.
pub const ROOM_ID_MAX_LEN: usize = 64;
/// The prefix of a room's channel: the group every device waiting in room
/// `r` is put in by the node that holds its connection ([`room_group`]).
pub const ROOM_GROUP_PREFIX: &str = "@room:";
/// Maximum length of an event name, in bytes.
pub const EVENT_NAME_MAX_LEN: usize = 64;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdError {
    /// The string is empty.
    Empty,
    /// The string is longer than the maximum for its kind.
    TooLong {
        /// The maximum length in bytes.
        max: usize,
    },
    /// The string holds a character outside `[A-Za-z0-9._:@-]`.
    BadChar,
}

impl std::error::Error for IdError {}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdError::Empty => f.write_str("is empty"),
            IdError::TooLong { max } => write!(f, "is longer than {max} bytes"),
            IdError::BadChar => f.write_str("may only contain A-Z a-z 0-9 . _ : @ -"),
        }
    }
}

fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-')
}

fn check(s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > max {
        return Err(IdError::TooLong { max });
    }
    if !s.bytes().all(allowed) {
        return Err(IdError::BadChar);
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Maximum length in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validates `s` and wraps it.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check(s, $max)?;
                Ok(Self(Arc::from(s)))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The shared string, cheap to clone into maps.
            pub fn as_arc(&self) -> &Arc<str> {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(|e| {
                    serde::de::Error::custom(format_args!("{} {e}", stringify!($name)))
                })
            }
        }
    };
}

id_type!(
    /// A device id: 1 to 128 bytes of `[A-Za-z0-9._:@-]`.
    ///
    /// One live connection per device id exists in the cluster at a time.
    DeviceId,
    DEVICE_ID_MAX_LEN
);

id_type!(
    /// A group (department) id: 1 to 70 bytes of `[A-Za-z0-9._:@-]`.
    GroupId,
    GROUP_ID_MAX_LEN
);

id_type!(
    /// A waiting-room id: 1 to 64 bytes of `[A-Za-z0-9._:@-]` (no `{` `}`:
    /// it sits inside a Redis hash tag).
    RoomId,
    ROOM_ID_MAX_LEN
);

/// The room's channel: `@room:<room>`. The node puts every device that
/// joins the room in it, so one group notification reaches everyone
/// waiting in the room, on every node.
pub fn room_group(room: &RoomId) -> GroupId {
    GroupId(Arc::from(format!("{ROOM_GROUP_PREFIX}{room}")))
}

impl GroupId {
    /// The room whose channel this group is, if it is one.
    pub fn room(&self) -> Option<RoomId> {
        RoomId::parse(self.as_str().strip_prefix(ROOM_GROUP_PREFIX)?).ok()
    }
}

id_type!(
    /// A notification event name: 1 to 64 bytes of `[A-Za-z0-9._:@-]`.
    ///
    /// Bounded and plain because it is also a metrics label value.
    EventName,
    EVENT_NAME_MAX_LEN
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_follow_the_documented_rules() {
        for ok in [
            "a",
            "laptop_6f1c2b7e-3a4d-4f5e-8a9b-0c1d2e3f4a5b",
            "kiosk:7@floor-2.hq",
            &"x".repeat(128),
        ] {
            assert!(DeviceId::parse(ok).is_ok(), "{ok} should be valid");
        }
        assert_eq!(DeviceId::parse(""), Err(IdError::Empty));
        assert_eq!(
            DeviceId::parse(&"x".repeat(129)),
            Err(IdError::TooLong { max: 128 })
        );
        for bad in ["a b", "a/b", "é", "a\nb", "a%20", "{room}", "a,b"] {
            assert_eq!(DeviceId::parse(bad), Err(IdError::BadChar), "{bad:?}");
        }
    }

    #[test]
    fn group_ids_are_shorter() {
        assert!(GroupId::parse(&"g".repeat(70)).is_ok());
        assert_eq!(
            GroupId::parse(&"g".repeat(71)),
            Err(IdError::TooLong { max: 70 })
        );
        assert_eq!(
            RoomId::parse(&"r".repeat(65)),
            Err(IdError::TooLong { max: 64 })
        );
    }

    #[test]
    fn every_room_has_a_valid_channel() {
        let longest = RoomId::parse(&"r".repeat(ROOM_ID_MAX_LEN)).unwrap();
        let group = room_group(&longest);
        // What the node builds is what a notify request may name.
        assert_eq!(GroupId::parse(group.as_str()).unwrap(), group);
        assert_eq!(group.room(), Some(longest));
        assert_eq!(
            room_group(&RoomId::parse("demo").unwrap()).as_str(),
            "@room:demo"
        );
        assert_eq!(GroupId::parse("sales").unwrap().room(), None);
        assert_eq!(
            GroupId::parse("@room:")
                .unwrap_or_else(|_| GroupId::parse("x").unwrap())
                .room(),
            None
        );
    }

    #[test]
    fn ids_deserialize_with_validation() {
        let ok: DeviceId = serde_json::from_str("\"dev-1\"").unwrap();
        assert_eq!(ok.as_str(), "dev-1");
        let err = serde_json::from_str::<DeviceId>("\"bad id\"").unwrap_err();
        assert!(err.to_string().contains("DeviceId"), "{err}");
    }
}
