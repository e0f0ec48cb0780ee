//! Integration tests of the device client: against a scripted node (exact
//! frames and close codes), against a real `pace-node` process (killed and
//! restarted), against one that requires device tokens (registration and
//! renewal), and against a two-node cluster on a real Redis (resume).

#![allow(clippy::unwrap_used)]

mod backoff;
mod credentials;
mod fake;
mod fallback;
mod node;
mod real_node;
mod resume;
mod scripted;

use std::time::Duration;

use pace_device::{Config, Event, Events};
use pace_protocol::DeviceId;

/// Bound for anything expected "soon".
pub const SOON: Duration = Duration::from_secs(10);

/// A config with quick reconnects, for tests.
pub fn config(url: &str, device: &str) -> Config {
    let mut c = Config::new(url, DeviceId::parse(device).unwrap())
        .with_backoff(Duration::from_millis(100), Duration::from_millis(800));
    c.connect_timeout = Duration::from_secs(3);
    c
}

/// The next event, or a panic after [`SOON`].
pub async fn next_event(events: &mut Events) -> Event {
    tokio::time::timeout(SOON, events.recv())
        .await
        .expect("an event in time")
        .expect("the client is running")
}

/// Reads events until `pick` returns `Some`; panics after `within`, listing
/// what came instead.
pub async fn wait_for<T>(
    events: &mut Events,
    within: Duration,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(e)) => {
                if let Some(t) = pick(&e) {
                    return t;
                }
                seen.push(e);
            }
            Ok(None) => panic!("client stopped; events before: {seen:#?}"),
            Err(_) => panic!("timed out after {within:?}; events instead: {seen:#?}"),
        }
    }
}

/// Every event within `wait`.
pub async fn events_for(events: &mut Events, wait: Duration) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut out = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, events.recv()).await {
        out.push(e);
    }
    out
}

/// The notification ids among `events`.
pub fn notification_ids(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Notification(n) => Some(n.id.clone()),
            _ => None,
        })
        .collect()
}
