//! Local fan-out: how notifications, admissions and device actions that
//! arrive over the cluster bus ([`crate::store::Local`]) reach this node's
//! devices through the hub.

use std::sync::Arc;

use pace_protocol::{DeviceId, Notification, RoomId, ServerFrame, Target};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::metrics::Metrics;
use crate::store::Local;
use crate::ws::hub::Hub;

/// Delivers notifications to this node's devices: serializes each once and
/// hands the shared frame to the hub.
#[derive(Debug)]
pub struct LocalFanout {
    /// The local hub.
    pub hub: Arc<Hub>,
    /// For `pace_messages_delivered_total`.
    pub metrics: Metrics,
    /// Local waiting devices (an admitted device stops getting positions).
    pub waiters: Arc<crate::rooms::Waiters>,
}

impl Local for LocalFanout {
    fn admitted(&self, room: &RoomId, device: &DeviceId, frame: &str) {
        // Only a device waiting here gets it, once; a device that is not
        // (reconnected elsewhere, or already told) gets it from `join`.
        if self.waiters.remove(room, device) {
            self.hub.deliver(
                &Target::Device(device.clone()),
                &Utf8Bytes::from(frame.to_owned()),
            );
        }
    }

    fn resync_all(&self) {
        let n = self.hub.close_all(pace_protocol::CloseCode::RESYNC);
        tracing::warn!(
            devices = n,
            "missed notifications could not be recovered; devices told to reconnect and resume"
        );
    }

    fn device_action(&self, device: &DeviceId, action: &pace_protocol::DeviceAction) {
        match action {
            pace_protocol::DeviceAction::Close { code } => {
                if self
                    .hub
                    .close_device(device, pace_protocol::CloseCode(*code))
                {
                    tracing::info!(%device, code, "device connection closed by an admin");
                }
            }
            pace_protocol::DeviceAction::Groups { groups } => {
                if let Some(lost) = self.hub.regrant(device, groups.clone())
                    && !lost.is_empty()
                {
                    tracing::info!(%device, ?lost, "device left the groups it lost");
                }
            }
        }
    }

    fn evict_older(&self, device: &DeviceId, generation: u64) {
        if self.hub.evict_older(device, generation) {
            self.metrics.evicted_remote.inc();
        }
    }

    fn deliver(&self, n: &Notification) {
        let target = match Target::new(n.scope, n.target.as_deref()) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(id = %n.id, error = %e, "dropping notification with an invalid target");
                return;
            }
        };
        let frame = Utf8Bytes::from(ServerFrame::Notification(n.clone()).to_json());
        let delivery = self.hub.deliver(&target, &frame);
        if delivery.queued > 0 {
            self.metrics
                .messages_delivered
                .with_label_values(&[self.metrics.event_label(n.event.as_str())])
                .inc_by(delivery.queued as u64);
        }
    }
}
