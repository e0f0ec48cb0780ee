//! Envelopes nodes exchange over the cluster bus (Redis pub/sub in a
//! cluster, a direct call with the embedded store).
//!
//! Envelopes are JSON with a `type` tag and a version field, so a node can
//! skip what a newer node sends during a rolling upgrade instead of failing.

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, GroupId, RoomId};
use crate::notify::Notification;

/// The bus format version this build writes.
pub const BUS_VERSION: u32 = 1;

/// A message between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BusEnvelope {
    /// Deliver this notification to every matching local device.
    Notify {
        /// Bus format version ([`BUS_VERSION`]).
        v: u32,
        /// Node that accepted the notification.
        origin: String,
        /// Epoch of the bus sequence (see `bus_seq`).
        #[serde(default)]
        bus_epoch: u64,
        /// Cluster-wide sequence number of notifications on the bus: a node
        /// that sees it jump knows it missed messages and repairs the gap
        /// from the bus log. 0 when the store has no bus (one node).
        #[serde(default)]
        bus_seq: u64,
        /// The notification itself.
        notification: Notification,
    },
    /// A device connected to `origin`; any other node holding an older
    /// connection of the same device closes it (4000, replaced).
    Connected {
        /// Bus format version ([`BUS_VERSION`]).
        v: u32,
        /// Node that accepted the connection.
        origin: String,
        /// The device.
        device: DeviceId,
        /// Cluster-wide connection generation (increasing): a node closes
        /// only connections with a lower generation, so a late message can
        /// never close a newer connection.
        generation: u64,
    },
    /// `device` was admitted to `room`: the node holding it sends it `frame`
    /// (an `admitted` frame, already serialized and signed) and stops
    /// pushing it queue positions.
    Admitted {
        /// Bus format version ([`BUS_VERSION`]).
        v: u32,
        /// Node whose admission tick admitted the device.
        origin: String,
        /// The room.
        room: RoomId,
        /// The device.
        device: DeviceId,
        /// The `admitted` frame's JSON text.
        frame: String,
    },
    /// An admin or the service key acted on `device`: the node holding
    /// its connection applies `action` (no node holds it: nothing to do;
    /// the change is in the store for its next connection).
    Device {
        /// Bus format version ([`BUS_VERSION`]).
        v: u32,
        /// Node that accepted the admin's request.
        origin: String,
        /// The device.
        device: DeviceId,
        /// What to do with its connection.
        action: DeviceAction,
    },
}

/// What a node does to a connected device on an admin's word.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeviceAction {
    /// Close the connection with this close code (4004, revoked).
    Close {
        /// The close code.
        code: u16,
    },
    /// The groups the device's credential grants are now `groups`: its
    /// connection leaves the groups it lost (and may ask for the new
    /// ones).
    Groups {
        /// Every group granted now.
        groups: Vec<GroupId>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventName, Scope};

    #[test]
    fn notify_envelope_golden() {
        let env = BusEnvelope::Notify {
            v: BUS_VERSION,
            origin: "node-a".into(),
            bus_epoch: 3,
            bus_seq: 99,
            notification: Notification {
                id: "0190f0a0-0000-7000-8000-000000000001".into(),
                scope: Scope::Group,
                target: Some("sales".into()),
                epoch: 4,
                seq: 7,
                event: EventName::parse("price").unwrap(),
                data: serde_json::json!({"sku": 1}),
                sent_at_ms: 1_700_000_000_000,
            },
        };
        let golden = r#"{"type":"notify","v":1,"origin":"node-a","bus_epoch":3,"bus_seq":99,"notification":{"id":"0190f0a0-0000-7000-8000-000000000001","scope":"group","target":"sales","epoch":4,"seq":7,"event":"price","data":{"sku":1},"sent_at_ms":1700000000000}}"#;
        assert_eq!(serde_json::to_string(&env).unwrap(), golden);
        assert_eq!(serde_json::from_str::<BusEnvelope>(golden).unwrap(), env);
    }

    #[test]
    fn device_envelope_golden() {
        let env = BusEnvelope::Device {
            v: BUS_VERSION,
            origin: "node-c".into(),
            device: DeviceId::parse("kiosk-9").unwrap(),
            action: DeviceAction::Groups {
                groups: vec![GroupId::parse("acme:ops").unwrap()],
            },
        };
        let golden = r#"{"type":"device","v":1,"origin":"node-c","device":"kiosk-9","action":{"kind":"groups","groups":["acme:ops"]}}"#;
        assert_eq!(serde_json::to_string(&env).unwrap(), golden);
        assert_eq!(serde_json::from_str::<BusEnvelope>(golden).unwrap(), env);
        let close = r#"{"type":"device","v":1,"origin":"n","device":"d","action":{"kind":"close","code":4004}}"#;
        assert!(matches!(
            serde_json::from_str::<BusEnvelope>(close).unwrap(),
            BusEnvelope::Device {
                action: DeviceAction::Close { code: 4004 },
                ..
            }
        ));
    }

    #[test]
    fn connected_envelope_golden() {
        let env = BusEnvelope::Connected {
            v: BUS_VERSION,
            origin: "node-b".into(),
            device: DeviceId::parse("laptop_1").unwrap(),
            generation: 42,
        };
        let golden =
            r#"{"type":"connected","v":1,"origin":"node-b","device":"laptop_1","generation":42}"#;
        assert_eq!(serde_json::to_string(&env).unwrap(), golden);
        assert_eq!(serde_json::from_str::<BusEnvelope>(golden).unwrap(), env);
    }
}
