//! Reconnect delays as the application sees them, with nothing listening.

use std::time::Duration;

use pace_device::{Client, Disconnect, Event};

use crate::node::free_port;
use crate::{config, wait_for};

#[tokio::test]
async fn reconnect_delays_grow_within_the_bounds_and_rotate_urls() {
    let (a, b) = (free_port(), free_port());
    let url_a = format!("http://127.0.0.1:{a}");
    let url_b = format!("http://127.0.0.1:{b}");
    let cfg = config(&url_a, "d1")
        .with_url(url_b.clone())
        .with_backoff(Duration::from_millis(20), Duration::from_millis(160));
    let (client, mut events) = Client::connect(cfg).unwrap();
    let mut seen = Vec::new();
    for _ in 0..10 {
        let e = wait_for(&mut events, crate::SOON, |e| match e {
            Event::Reconnecting {
                attempt,
                delay,
                next_url,
                reason,
            } => Some((*attempt, *delay, next_url.clone(), reason.clone())),
            _ => None,
        })
        .await;
        seen.push(e);
    }
    client.close().await;
    for (i, (attempt, delay, next_url, reason)) in seen.iter().enumerate() {
        let n = u32::try_from(i).unwrap();
        assert_eq!(*attempt, n + 1, "{seen:?}");
        let ceiling = Duration::from_millis(20 * 2u64.pow(n)).min(Duration::from_millis(160));
        assert!(
            *delay <= ceiling,
            "attempt {attempt}: {delay:?} > {ceiling:?}"
        );
        assert!(matches!(reason, Disconnect::ConnectFailed(_)), "{reason:?}");
        // Attempt 1 went to A; the next goes to B, then A, …
        let expected = if i % 2 == 0 { &url_b } else { &url_a };
        assert_eq!(next_url, expected);
    }
}
