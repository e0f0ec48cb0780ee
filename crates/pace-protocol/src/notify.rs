//! Notifications: who they go to ([`Target`]), the request that sends one
//! ([`NotifyRequest`], the body of `POST /api/v1/notify`) and the message a
//! device receives ([`Notification`], inside a `notification` frame).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{DeviceId, EventName, GroupId, IdError};

/// The kind of audience of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every connected device.
    All,
    /// Every device in one group (department).
    Group,
    /// One device, wherever it is connected.
    Device,
}

impl Scope {
    /// The scope as its wire string (also a metrics label value).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::All => "all",
            Scope::Group => "group",
            Scope::Device => "device",
        }
    }
}

/// The validated audience of a notification.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// Every connected device.
    All,
    /// Every device in this group.
    Group(GroupId),
    /// This one device.
    Device(DeviceId),
}

impl Target {
    /// The scope kind of this target.
    pub fn scope(&self) -> Scope {
        match self {
            Target::All => Scope::All,
            Target::Group(_) => Scope::Group,
            Target::Device(_) => Scope::Device,
        }
    }

    /// The target id, absent for [`Target::All`].
    pub fn id(&self) -> Option<&str> {
        match self {
            Target::All => None,
            Target::Group(g) => Some(g.as_str()),
            Target::Device(d) => Some(d.as_str()),
        }
    }

    /// A stable key naming this scope (`all`, `group:<id>`, `device:<id>`):
    /// sequence numbers are counted per key.
    pub fn scope_key(&self) -> String {
        match self {
            Target::All => "all".to_owned(),
            Target::Group(g) => format!("group:{g}"),
            Target::Device(d) => format!("device:{d}"),
        }
    }

    /// Builds a target from a scope and an optional id, validating the id.
    pub fn new(scope: Scope, target: Option<&str>) -> Result<Target, TargetError> {
        match (scope, target) {
            (Scope::All, None) => Ok(Target::All),
            (Scope::All, Some(_)) => Err(TargetError::Unexpected),
            (Scope::Group | Scope::Device, None) => Err(TargetError::Missing),
            (Scope::Group, Some(g)) => GroupId::parse(g)
                .map(Target::Group)
                .map_err(TargetError::Invalid),
            (Scope::Device, Some(d)) => DeviceId::parse(d)
                .map(Target::Device)
                .map_err(TargetError::Invalid),
        }
    }
}

/// Why a scope/target pair is not a valid audience.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetError {
    /// `group` and `device` scopes need a `target`.
    Missing,
    /// The `all` scope takes no `target`.
    Unexpected,
    /// The `target` breaks the id rules.
    Invalid(IdError),
}

impl std::fmt::Display for TargetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetError::Missing => f.write_str("scope group and device need a target"),
            TargetError::Unexpected => f.write_str("scope all takes no target"),
            TargetError::Invalid(e) => write!(f, "target {e}"),
        }
    }
}

impl std::error::Error for TargetError {}

/// The body of `POST /api/v1/notify`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotifyRequest {
    /// Audience kind.
    pub scope: Scope,
    /// Group or device id; absent (or null) for `all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Event name the device dispatches on.
    pub event: EventName,
    /// Application payload, passed through untouched.
    #[serde(default)]
    pub data: Value,
}

impl NotifyRequest {
    /// The validated audience of this request.
    pub fn target(&self) -> Result<Target, TargetError> {
        Target::new(self.scope, self.target.as_deref())
    }
}

/// One notification as delivered to devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Unique id (a UUIDv7: time-ordered). Devices drop a repeated id.
    pub id: String,
    /// Audience kind.
    pub scope: Scope,
    /// Group or device id; absent for `all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The epoch of the scope's sequence: when the store started counting
    /// this scope (Unix microseconds). A new epoch (the store lost its
    /// state, or the scope was idle past its retention) restarts `seq` at 1.
    #[serde(default)]
    pub epoch: u64,
    /// Sequence number within the scope (`all`, one group, one device) and
    /// epoch, starting at 1, increasing by one per accepted notification.
    /// (scope, target, epoch, seq) is the notification's place in its
    /// scope's history: what a device sends back in `resume`.
    pub seq: u64,
    /// Event name.
    pub event: EventName,
    /// Application payload.
    pub data: Value,
    /// When the node accepted it, in Unix milliseconds.
    pub sent_at_ms: u64,
}

impl Notification {
    /// The audience this notification went to.
    pub fn audience(&self) -> Result<Target, TargetError> {
        Target::new(self.scope, self.target.as_deref())
    }

    /// Where this notification sits in its scope's history.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            scope: self.scope,
            target: self.target.clone(),
            epoch: self.epoch,
            seq: self.seq,
        }
    }
}

/// A position in one scope's history: "I have everything up to `seq` of
/// `epoch`". Sent by a device in `resume`; `epoch` 0 and `seq` 0 mean "from
/// the oldest message still kept".
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cursor {
    /// Audience kind.
    pub scope: Scope,
    /// Group or device id; absent for `all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The epoch of the last notification the device has (0: none).
    pub epoch: u64,
    /// The sequence number of the last notification the device has (0: none).
    pub seq: u64,
}

impl Cursor {
    /// The validated audience this cursor is about.
    pub fn audience(&self) -> Result<Target, TargetError> {
        Target::new(self.scope, self.target.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_request_targets() {
        let all: NotifyRequest =
            serde_json::from_str(r#"{"scope":"all","event":"e","data":{"a":1}}"#).unwrap();
        assert_eq!(all.target(), Ok(Target::All));
        let null_target: NotifyRequest =
            serde_json::from_str(r#"{"scope":"all","target":null,"event":"e"}"#).unwrap();
        assert_eq!(null_target.target(), Ok(Target::All));
        assert_eq!(null_target.data, Value::Null);

        let group: NotifyRequest =
            serde_json::from_str(r#"{"scope":"group","target":"sales","event":"e"}"#).unwrap();
        assert_eq!(group.target().unwrap().scope_key(), "group:sales");

        let missing: NotifyRequest =
            serde_json::from_str(r#"{"scope":"device","event":"e"}"#).unwrap();
        assert_eq!(missing.target(), Err(TargetError::Missing));
        let extra: NotifyRequest =
            serde_json::from_str(r#"{"scope":"all","target":"x","event":"e"}"#).unwrap();
        assert_eq!(extra.target(), Err(TargetError::Unexpected));
        let bad: NotifyRequest =
            serde_json::from_str(r#"{"scope":"device","target":"a b","event":"e"}"#).unwrap();
        assert_eq!(bad.target(), Err(TargetError::Invalid(IdError::BadChar)));

        assert!(
            serde_json::from_str::<NotifyRequest>(r#"{"scope":"planet","event":"e"}"#).is_err()
        );
        assert!(
            serde_json::from_str::<NotifyRequest>(r#"{"scope":"all","event":"bad event"}"#)
                .is_err()
        );
    }
}
