//! Every Prometheus metric the node exports, defined in one place.
//!
//! Names follow `pace_<what>_<unit>[_total]`. Labels are small closed sets
//! (reasons, scopes, results) or operator-chosen names with a cap
//! (event names); a device id is never a label.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// How many distinct event names get their own label value; later ones are
/// counted under [`OTHER_EVENT`] so a caller cannot explode the series count.
const MAX_EVENT_LABELS: usize = 64;
/// Label value for event names past [`MAX_EVENT_LABELS`].
pub const OTHER_EVENT: &str = "_other";

/// The `route` labels of `pace_cors_refused_total`.
pub const CORS_ROUTES: [&str; 3] = ["register", "room", "room_status"];

/// The `limit` labels of `pace_limits_hit_total`: the bounds a hostile
/// client meets (docs/security.md "Bounds").
pub const LIMITS: [&str; 5] = [
    // Pongs owed to a device that does not read passed --ws-max-write-buffer.
    "pong_backlog",
    // A `resume` frame named one scope twice.
    "duplicate_cursor",
    // A connection sent a second `resume`.
    "resume_repeated",
    // Connections not yet upgraded from one address passed --max-pending-per-address.
    "pending_per_address",
    // Accepting would have eaten into the descriptor reserve (--fd-reserve).
    "descriptors",
];

/// The node's metrics. Cheap to clone (every field is a shared handle).
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Device connections open now.
    pub connections_open: IntGauge,
    /// Device connections accepted since start.
    pub connections_accepted: IntCounter,
    /// Device connections open now, by transport (`ws`, `sse`).
    pub transport_open: IntGaugeVec,
    /// Device connections accepted since start, by transport.
    pub transport_accepted: IntCounterVec,
    /// Frames POSTed to `/stream/send`, by result.
    pub stream_posts: IntCounterVec,
    /// Handshakes refused, by reason (an error code).
    pub handshakes_refused: IntCounterVec,
    /// Connections ended, by reason (a close code's reason).
    pub disconnects: IntCounterVec,
    /// Notification frames queued to devices, by event name.
    pub messages_delivered: IntCounterVec,
    /// Frames from devices refused, by reason.
    pub frames_rejected: IntCounterVec,
    /// `POST /api/v1/notify` requests, by scope and result.
    pub notify_requests: IntCounterVec,
    /// HTTP requests answered, by route and status class.
    pub http_requests: IntCounterVec,
    /// 1 while the store answers, 0 while it does not.
    pub store_up: IntGaugeVec,
    /// 1 while the node accepts new devices.
    pub ready: IntGauge,
    /// Envelopes received from the cluster bus.
    pub bus_received: IntCounter,
    /// Envelopes lost because the bus reader fell behind fred's buffer.
    pub bus_dropped: IntCounter,
    /// Bus messages that could not be read (skipped).
    pub bus_invalid: IntCounter,
    /// Devices closed because they connected again on another node.
    pub evicted_remote: IntCounter,
    /// Devices waiting per room (cluster-wide; every node reports it).
    pub room_waiting: IntGaugeVec,
    /// Active sessions per room (cluster-wide; every node reports it).
    pub room_active: IntGaugeVec,
    /// Devices admitted per room by this node's admission ticks.
    pub room_admitted: IntCounterVec,
    /// Waits (join → admission) of the admissions this node's ticks made.
    pub room_wait: HistogramVec,
    /// Audit-log seal attempts of this node, by outcome (`sealed`, `lost`
    /// to another node, `failed`, `broken`: a gap in the stored log).
    pub audit_seals: IntCounterVec,
    /// Audit-log exports served, by kind (`admin`, `public`,
    /// `public_cached`).
    pub audit_exports: IntCounterVec,
    /// Admission tokens that could not be signed.
    pub token_sign_errors: IntCounter,
    /// Admission tokens refused (verify, release, renew), by reason.
    pub tokens_rejected: IntCounterVec,
    /// Notifications replayed from history to resuming devices.
    pub history_replayed: IntCounter,
    /// Scopes resumed, by result (`recovered`, `not_recovered`).
    pub resumes: IntCounterVec,
    /// Live notifications not sent because the device already had them
    /// from a replay.
    pub resume_duplicates: IntCounter,
    /// Hostile-client bounds that refused or closed something, by bound
    /// (see [`LIMITS`]; docs/security.md "Bounds").
    pub limits_hit: IntCounterVec,
    /// TCP connections accepted and not (yet) upgraded to a WebSocket:
    /// waiting for headers, in a handshake, or plain HTTP keep-alive.
    pub connections_pending: IntGauge,
    /// Gaps in the bus sequence this node detected, by outcome
    /// (`repaired` from the bus log, `unrepaired`: devices told to resync).
    pub bus_gaps: IntCounterVec,
    /// Notifications this node recovered from the bus log.
    pub bus_repaired: IntCounter,
    /// Proof-of-work steps, by result (`challenged`, `solved`, `invalid`,
    /// `reused`).
    pub pow: IntCounterVec,
    /// Device registrations, by result (`created`, `refreshed`, `taken`,
    /// `invalid`).
    pub device_registrations: IntCounterVec,
    /// 1 when the node accepts devices without a token.
    pub insecure_anonymous_devices: IntGauge,
    /// Admin API requests, by result (`ok`, `refused`, `unauthorized`,
    /// `origin_not_allowed`).
    pub admin_requests: IntCounterVec,
    /// Cross-origin requests to the device REST endpoints from an origin
    /// that is not allowed, by route.
    pub cors_refused: IntCounterVec,
    /// Origin checks refused because tenants' origins could not be read.
    pub origin_store_errors: IntCounter,
    /// Admin console feeds (`/admin/ws`) open now.
    pub admin_feeds_open: IntGauge,
    /// Requests the authorization step refused, by the route's rule and
    /// the error code.
    pub auth_refused: IntCounterVec,
    /// Admin feed tickets, by result (`issued`, `accepted`, `invalid`,
    /// `expired`, `reused`, `token_in_url`).
    pub admin_tickets: IntCounterVec,
    /// Group joins refused because the device's credential does not grant
    /// the group, by where they were asked (`subscribe`, `resume`,
    /// `handshake`).
    pub groups_refused: IntCounterVec,
    /// Revocations by admins or the service key, by kind (`kick`: a
    /// device's tokens revoked and its connection closed; `session`: an
    /// admitted session ended; `departments`: a device's granted groups
    /// replaced).
    pub revocations: IntCounterVec,
    /// Times this node found the store holding less than it had seen (a
    /// failover or restart lost the newest writes, or Redis was wiped):
    /// its devices were told to resume and learn their epoch changed.
    pub store_lost_writes: IntCounter,
    /// Seconds since the store last answered (0 while it answers), so an
    /// alert can tell a blip from an outage.
    pub store_unreachable_seconds: IntGauge,
    /// 1 while the store is marked wiped (found emptied under the running
    /// cluster) and no admin has acknowledged it.
    pub store_wiped: IntGauge,
    /// Event names seen so far, to cap label cardinality.
    events_seen: Arc<Mutex<HashSet<String>>>,
    /// `POST /api/v1/admin/login` attempts, by result.
    pub admin_logins: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric, plus the process collector
    /// (`process_resident_memory_bytes`, CPU seconds, open fds).
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let m = Metrics {
            connections_open: IntGauge::new(
                "pace_connections_open",
                "Device connections open now.",
            )
            .expect("valid metric"),
            connections_accepted: IntCounter::new(
                "pace_connections_accepted_total",
                "Device WebSocket connections accepted.",
            )
            .expect("valid metric"),
            transport_open: IntGaugeVec::new(
                Opts::new(
                    "pace_transport_connections_open",
                    "Device connections open now, by transport (ws, sse).",
                ),
                &["transport"],
            )
            .expect("valid metric"),
            transport_accepted: IntCounterVec::new(
                Opts::new(
                    "pace_transport_connections_accepted_total",
                    "Device connections accepted, by transport (ws, sse).",
                ),
                &["transport"],
            )
            .expect("valid metric"),
            stream_posts: IntCounterVec::new(
                Opts::new(
                    "pace_stream_posts_total",
                    "POST /stream/send requests, by result (ok, not_here, full, invalid).",
                ),
                &["result"],
            )
            .expect("valid metric"),
            handshakes_refused: IntCounterVec::new(
                Opts::new(
                    "pace_handshakes_refused_total",
                    "WebSocket handshakes refused before upgrade, by reason.",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            disconnects: IntCounterVec::new(
                Opts::new(
                    "pace_disconnects_total",
                    "Device connections ended, by reason.",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            messages_delivered: IntCounterVec::new(
                Opts::new(
                    "pace_messages_delivered_total",
                    "Notification frames queued to device connections, by event name.",
                ),
                &["event"],
            )
            .expect("valid metric"),
            frames_rejected: IntCounterVec::new(
                Opts::new(
                    "pace_frames_rejected_total",
                    "Frames from devices refused, by reason.",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            notify_requests: IntCounterVec::new(
                Opts::new(
                    "pace_notify_requests_total",
                    "Notify API requests, by scope and result.",
                ),
                &["scope", "result"],
            )
            .expect("valid metric"),
            http_requests: IntCounterVec::new(
                Opts::new(
                    "pace_http_requests_total",
                    "HTTP requests answered, by route and status class.",
                ),
                &["route", "status"],
            )
            .expect("valid metric"),
            store_up: IntGaugeVec::new(
                Opts::new(
                    "pace_store_up",
                    "1 while the store answers, 0 while it does not.",
                ),
                &["store"],
            )
            .expect("valid metric"),
            ready: IntGauge::new("pace_ready", "1 while the node accepts new devices.")
                .expect("valid metric"),
            bus_received: IntCounter::new(
                "pace_bus_received_total",
                "Envelopes received from the cluster bus.",
            )
            .expect("valid metric"),
            bus_dropped: IntCounter::new(
                "pace_bus_dropped_total",
                "Bus envelopes dropped because the reader fell behind the pub/sub buffer.",
            )
            .expect("valid metric"),
            bus_invalid: IntCounter::new(
                "pace_bus_invalid_total",
                "Unreadable bus messages skipped.",
            )
            .expect("valid metric"),
            evicted_remote: IntCounter::new(
                "pace_evicted_remote_total",
                "Local connections closed because the device connected on another node.",
            )
            .expect("valid metric"),
            room_waiting: IntGaugeVec::new(
                Opts::new(
                    "pace_room_waiting",
                    "Devices waiting in the room's queue (cluster-wide).",
                ),
                &["room"],
            )
            .expect("valid metric"),
            room_active: IntGaugeVec::new(
                Opts::new(
                    "pace_room_active",
                    "Admitted sessions holding a slot (cluster-wide).",
                ),
                &["room"],
            )
            .expect("valid metric"),
            room_admitted: IntCounterVec::new(
                Opts::new(
                    "pace_room_admitted_total",
                    "Devices admitted by this node's admission ticks.",
                ),
                &["room"],
            )
            .expect("valid metric"),
            audit_seals: IntCounterVec::new(
                Opts::new(
                    "pace_audit_seals_total",
                    "Audit-log checkpoint attempts by this node, by outcome.",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            audit_exports: IntCounterVec::new(
                Opts::new(
                    "pace_audit_exports_total",
                    "Audit-log exports served, by kind.",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            room_wait: HistogramVec::new(
                prometheus::HistogramOpts::new(
                    "pace_room_wait_seconds",
                    "Time from joining the queue to admission, for admissions made by this node's ticks.",
                )
                .buckets(pace_protocol::rest::WAIT_BUCKETS_SECS.iter().map(|b| *b as f64).collect()),
                &["room"],
            )
            .expect("valid metric"),
            token_sign_errors: IntCounter::new(
                "pace_token_sign_errors_total",
                "Admission tokens that could not be signed.",
            )
            .expect("valid metric"),
            tokens_rejected: IntCounterVec::new(
                Opts::new(
                    "pace_tokens_rejected_total",
                    "Admission tokens refused, by reason.",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            history_replayed: IntCounter::new(
                "pace_history_replayed_total",
                "Notifications replayed from history to resuming devices.",
            )
            .expect("valid metric"),
            resumes: IntCounterVec::new(
                Opts::new(
                    "pace_resumes_total",
                    "Scopes resumed by devices, by result (recovered, not_recovered).",
                ),
                &["result"],
            )
            .expect("valid metric"),
            resume_duplicates: IntCounter::new(
                "pace_resume_duplicates_dropped_total",
                "Live notifications not sent because the device just got them in a replay.",
            )
            .expect("valid metric"),
            limits_hit: IntCounterVec::new(
                Opts::new(
                    "pace_limits_hit_total",
                    "Hostile-client bounds that refused or closed a connection or frame, by limit.",
                ),
                &["limit"],
            )
            .expect("valid metric"),
            connections_pending: IntGauge::new(
                "pace_connections_pending",
                "TCP connections accepted and not upgraded to a WebSocket (headers, handshake, HTTP keep-alive).",
            )
            .expect("valid metric"),
            bus_gaps: IntCounterVec::new(
                Opts::new(
                    "pace_bus_gaps_total",
                    "Gaps in the bus sequence detected, by outcome (repaired, unrepaired).",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            bus_repaired: IntCounter::new(
                "pace_bus_repaired_total",
                "Notifications recovered from the bus log after a gap.",
            )
            .expect("valid metric"),
            pow: IntCounterVec::new(
                Opts::new(
                    "pace_pow_total",
                    "Proof-of-work challenges issued and solutions checked, by result.",
                ),
                &["result"],
            )
            .expect("valid metric"),
            device_registrations: IntCounterVec::new(
                Opts::new(
                    "pace_device_registrations_total",
                    "Device registrations, by result (created, refreshed, taken, invalid, store_wiped).",
                ),
                &["result"],
            )
            .expect("valid metric"),
            insecure_anonymous_devices: IntGauge::new(
                "pace_insecure_anonymous_devices",
                "1 when the node accepts devices without a device token (--insecure-anonymous-devices).",
            )
            .expect("valid metric"),
            auth_refused: IntCounterVec::new(
                Opts::new(
                    "pace_auth_refused_total",
                    "Requests the authorization step refused, by the route's rule and the error code.",
                ),
                &["rule", "code"],
            )
            .expect("valid metric"),
            admin_tickets: IntCounterVec::new(
                Opts::new(
                    "pace_admin_tickets_total",
                    "Admin feed tickets, by result (issued, accepted, invalid, expired, reused, token_in_url).",
                ),
                &["result"],
            )
            .expect("valid metric"),
            groups_refused: IntCounterVec::new(
                Opts::new(
                    "pace_groups_refused_total",
                    "Group joins refused because the device's credential does not grant the group, by where they were asked (subscribe, resume, handshake).",
                ),
                &["via"],
            )
            .expect("valid metric"),
            revocations: IntCounterVec::new(
                Opts::new(
                    "pace_revocations_total",
                    "Admin and service-key actions on devices and sessions, by kind (kick, session, departments).",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            admin_requests: IntCounterVec::new(
                Opts::new(
                    "pace_admin_requests_total",
                    "Admin API requests, by result (ok, refused, unauthorized, origin_not_allowed).",
                ),
                &["result"],
            )
            .expect("valid metric"),
            cors_refused: IntCounterVec::new(
                Opts::new(
                    "pace_cors_refused_total",
                    "Cross-origin requests and preflights to the device REST endpoints from an origin that is not allowed (answered without CORS headers), by route.",
                ),
                &["route"],
            )
            .expect("valid metric"),
            origin_store_errors: IntCounter::new(
                "pace_origin_store_errors_total",
                "Origin checks refused (fail closed) because the tenants' origins could not be read from the store.",
            )
            .expect("valid metric"),
            admin_feeds_open: IntGauge::new(
                "pace_admin_feeds_open",
                "Admin console live feeds (/admin/ws) open now.",
            )
            .expect("valid metric"),
            store_lost_writes: IntCounter::new(
                "pace_store_lost_writes_total",
                "Times the store held less than this node had seen (lost writes after a failover or restart, or a wiped Redis); devices were told to resume.",
            )
            .expect("valid metric"),
            store_unreachable_seconds: IntGauge::new(
                "pace_store_unreachable_seconds",
                "Seconds since the store last answered this node (0 while it answers).",
            )
            .expect("valid metric"),
            store_wiped: IntGauge::new(
                "pace_store_wiped",
                "1 while the store is marked wiped (emptied under the running cluster) and not acknowledged (pace-node admin acknowledge-store-wipe).",
            )
            .expect("valid metric"),
            events_seen: Arc::default(),
            registry,
            admin_logins: IntCounterVec::new(
                Opts::new(
                    "pace_admin_logins_total",
                    "Admin login attempts, by result (ok, invalid, rate_limited, error).",
                ),
                &["result"],
            )
            .expect("valid metric"),
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.connections_open.clone()),
            Box::new(m.connections_accepted.clone()),
            Box::new(m.transport_open.clone()),
            Box::new(m.transport_accepted.clone()),
            Box::new(m.stream_posts.clone()),
            Box::new(m.handshakes_refused.clone()),
            Box::new(m.disconnects.clone()),
            Box::new(m.messages_delivered.clone()),
            Box::new(m.frames_rejected.clone()),
            Box::new(m.notify_requests.clone()),
            Box::new(m.http_requests.clone()),
            Box::new(m.store_up.clone()),
            Box::new(m.ready.clone()),
            Box::new(m.bus_received.clone()),
            Box::new(m.bus_dropped.clone()),
            Box::new(m.bus_invalid.clone()),
            Box::new(m.evicted_remote.clone()),
            Box::new(m.room_waiting.clone()),
            Box::new(m.room_active.clone()),
            Box::new(m.room_admitted.clone()),
            Box::new(m.room_wait.clone()),
            Box::new(m.audit_seals.clone()),
            Box::new(m.audit_exports.clone()),
            Box::new(m.token_sign_errors.clone()),
            Box::new(m.tokens_rejected.clone()),
            Box::new(m.history_replayed.clone()),
            Box::new(m.resumes.clone()),
            Box::new(m.resume_duplicates.clone()),
            Box::new(m.limits_hit.clone()),
            Box::new(m.connections_pending.clone()),
            Box::new(m.bus_gaps.clone()),
            Box::new(m.bus_repaired.clone()),
            Box::new(m.pow.clone()),
            Box::new(m.admin_requests.clone()),
            Box::new(m.cors_refused.clone()),
            Box::new(m.origin_store_errors.clone()),
            Box::new(m.admin_feeds_open.clone()),
            Box::new(m.auth_refused.clone()),
            Box::new(m.admin_tickets.clone()),
            Box::new(m.groups_refused.clone()),
            Box::new(m.revocations.clone()),
            Box::new(m.device_registrations.clone()),
            Box::new(m.insecure_anonymous_devices.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
            Box::new(m.admin_logins.clone()),
            Box::new(m.store_lost_writes.clone()),
            Box::new(m.store_unreachable_seconds.clone()),
            Box::new(m.store_wiped.clone()),
        ];
        for c in collectors {
            m.registry.register(c).expect("metric names are unique");
        }
        // Export every series of a closed label set from the start, so
        // dashboards and alerts see 0 rather than nothing.
        for outcome in ["repaired", "unrepaired"] {
            m.bus_gaps.with_label_values(&[outcome]);
        }
        for result in ["recovered", "not_recovered"] {
            m.resumes.with_label_values(&[result]);
        }
        for limit in LIMITS {
            m.limits_hit.with_label_values(&[limit]);
        }
        for result in ["challenged", "solved", "invalid", "reused"] {
            m.pow.with_label_values(&[result]);
        }
        for result in [
            "issued",
            "accepted",
            "invalid",
            "expired",
            "reused",
            "token_in_url",
        ] {
            m.admin_tickets.with_label_values(&[result]);
        }
        for via in ["subscribe", "resume", "handshake"] {
            m.groups_refused.with_label_values(&[via]);
        }
        for kind in ["kick", "session", "departments"] {
            m.revocations.with_label_values(&[kind]);
        }
        for route in CORS_ROUTES {
            m.cors_refused.with_label_values(&[route]);
        }
        m
    }

    /// The label value to use for an event name (capped cardinality).
    pub fn event_label<'a>(&self, event: &'a str) -> &'a str {
        let mut seen = self.events_seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(event) {
            return event;
        }
        if seen.len() < MAX_EVENT_LABELS {
            seen.insert(event.to_owned());
            return event;
        }
        OTHER_EVENT
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(8 * 1024);
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_labels_are_capped() {
        let m = Metrics::new();
        for i in 0..MAX_EVENT_LABELS {
            let name = format!("e{i}");
            assert_eq!(m.event_label(&name), name);
        }
        assert_eq!(m.event_label("one-too-many"), OTHER_EVENT);
        assert_eq!(m.event_label("e0"), "e0", "known names keep their label");
    }

    #[test]
    fn renders_text_format() {
        let m = Metrics::new();
        m.handshakes_refused
            .with_label_values(&["missing_device_id"])
            .inc();
        let text = m.render();
        assert!(text.contains("pace_handshakes_refused_total{reason=\"missing_device_id\"} 1"));
        assert!(text.contains("# TYPE pace_connections_open gauge"));
    }
}
