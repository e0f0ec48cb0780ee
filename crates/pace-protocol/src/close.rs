//! WebSocket close codes a node sends, and what a device does on each.
//!
//! Standard codes (RFC 6455 §7.4.1) are used where one fits; Pace-specific
//! reasons use the private range 4000–4999. Every code says whether a device
//! SHOULD reconnect ([`CloseCode::should_reconnect`]), so clients need no
//! table of their own.

use std::fmt;

/// A close code as sent in a WebSocket close frame.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure (the device asked to leave).
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1003: the device sent a binary message; Pace speaks JSON text frames only.
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// 1007: a text message was not valid UTF-8.
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: the device broke the protocol at the WebSocket level.
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    /// 1009: a message exceeded the node's maximum message size.
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// 1011: the node hit an internal error serving this connection.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    /// 1012: the node is restarting or draining; reconnect (the gateway sends
    /// the device to another node).
    pub const SERVICE_RESTART: CloseCode = CloseCode(1012);
    /// 1013: the node is overloaded; reconnect later, with backoff.
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);
    /// 4000: a newer connection with the same device id replaced this one.
    /// The device MUST NOT reconnect automatically (two tabs would evict each
    /// other forever).
    pub const REPLACED: CloseCode = CloseCode(4000);
    /// 4001: the device did not read its messages fast enough and its send
    /// queue filled; reconnect with backoff.
    pub const SLOW_CONSUMER: CloseCode = CloseCode(4001);
    /// 4002: the device did not answer a ping within the heartbeat timeout.
    pub const HEARTBEAT_TIMEOUT: CloseCode = CloseCode(4002);
    /// 4003: the node may have missed notifications for this device and
    /// could not repair the gap from history: reconnect (with jitter) and
    /// `resume` from the last notification received.
    pub const RESYNC: CloseCode = CloseCode(4003);
    /// 4004: an admin or the service key revoked this device's credential
    /// (kick). The device MUST NOT reconnect with the same token: it needs a
    /// new registration (after an admin forgets the old one).
    pub const REVOKED: CloseCode = CloseCode(4004);

    /// Whether a device SHOULD reconnect (with backoff and jitter) after
    /// receiving this code.
    pub fn should_reconnect(self) -> bool {
        !matches!(
            self,
            CloseCode::NORMAL
                | CloseCode::REPLACED
                | CloseCode::UNSUPPORTED_DATA
                | CloseCode::INVALID_PAYLOAD
                | CloseCode::POLICY_VIOLATION
                | CloseCode::MESSAGE_TOO_BIG
                | CloseCode::REVOKED
        )
    }

    /// The short reason text sent with the code, and the `reason` label of
    /// `pace_disconnects_total`.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::NORMAL => "normal",
            CloseCode::UNSUPPORTED_DATA => "binary_not_supported",
            CloseCode::INVALID_PAYLOAD => "invalid_utf8",
            CloseCode::POLICY_VIOLATION => "protocol_error",
            CloseCode::MESSAGE_TOO_BIG => "message_too_big",
            CloseCode::INTERNAL_ERROR => "internal_error",
            CloseCode::SERVICE_RESTART => "draining",
            CloseCode::TRY_AGAIN_LATER => "overloaded",
            CloseCode::REPLACED => "replaced",
            CloseCode::SLOW_CONSUMER => "slow_consumer",
            CloseCode::HEARTBEAT_TIMEOUT => "heartbeat_timeout",
            CloseCode::RESYNC => "resync",
            CloseCode::REVOKED => "revoked",
            _ => "other",
        }
    }

    /// Every code a node may send, for documentation and tests.
    pub const ALL: [CloseCode; 13] = [
        CloseCode::NORMAL,
        CloseCode::UNSUPPORTED_DATA,
        CloseCode::INVALID_PAYLOAD,
        CloseCode::POLICY_VIOLATION,
        CloseCode::MESSAGE_TOO_BIG,
        CloseCode::INTERNAL_ERROR,
        CloseCode::SERVICE_RESTART,
        CloseCode::TRY_AGAIN_LATER,
        CloseCode::REPLACED,
        CloseCode::SLOW_CONSUMER,
        CloseCode::HEARTBEAT_TIMEOUT,
        CloseCode::RESYNC,
        CloseCode::REVOKED,
    ];
}

impl fmt::Debug for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.0, self.reason())
    }
}

impl From<CloseCode> for u16 {
    fn from(c: CloseCode) -> u16 {
        c.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_policy_per_code() {
        let reconnect: Vec<u16> = CloseCode::ALL
            .iter()
            .filter(|c| c.should_reconnect())
            .map(|c| c.0)
            .collect();
        assert_eq!(reconnect, vec![1011, 1012, 1013, 4001, 4002, 4003]);
        assert!(CloseCode(4999).should_reconnect(), "unknown codes: retry");
    }

    #[test]
    fn reasons_are_unique_and_fit_a_close_frame() {
        let mut seen = std::collections::HashSet::new();
        for c in CloseCode::ALL {
            assert!(seen.insert(c.reason()), "duplicate reason {c:?}");
            assert!(c.reason().len() <= 123, "close reason must fit 123 bytes");
        }
    }
}
