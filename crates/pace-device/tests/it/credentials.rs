//! Device credentials against a real `pace-node` that requires device
//! tokens (no `--insecure-anonymous-devices`): registration, the token
//! file, refresh, a taken id, and the client renewing its token by itself.

use std::path::Path;

use pace_device::{
    Client, Closed, Config, Credentials, CredentialsError, DeviceInfo, DeviceType, Event, Obtained,
    RegisterError, StoredToken, TokenStore, ensure_token, load_or_create_device_id, register,
};
use pace_protocol::{DeviceId, ErrorCode};
use serde_json::json;

use crate::node::{Node, NodeOpts, free_port};
use crate::{config, wait_for};

/// A device with its id and token files in `dir`.
struct Device {
    id: DeviceId,
    creds: Credentials,
}

fn device(dir: &Path) -> Device {
    let id_file = dir.join("pace-device-id");
    let id = load_or_create_device_id(&id_file, DeviceType::detect()).unwrap();
    let creds = Credentials::new(
        DeviceInfo::detect(&id, "9.9.9-test"),
        TokenStore::next_to(&id_file),
    );
    Device { id, creds }
}

/// The config of `dev` for `node`, quick reconnects.
fn cfg(node: &Node, dev: &Device) -> Config {
    config(&node.base, dev.id.as_str())
}

async fn connected(events: &mut pace_device::Events) {
    wait_for(events, crate::SOON, |e| {
        matches!(e, Event::Connected { .. }).then_some(())
    })
    .await;
}

async fn closed(events: &mut pace_device::Events) -> Closed {
    wait_for(events, crate::SOON, |e| match e {
        Event::Closed(c) => Some(c.clone()),
        _ => None,
    })
    .await
}

/// Connects with `token` (and no credentials) and says whether the node
/// let the device in.
async fn token_works(node: &Node, dev: &Device, token: &str) -> bool {
    let (client, mut events) = Client::connect(cfg(node, dev).with_token(token)).unwrap();
    let ok = wait_for(&mut events, crate::SOON, |e| match e {
        Event::Connected { .. } => Some(true),
        Event::Closed(_) => Some(false),
        _ => None,
    })
    .await;
    client.close().await;
    ok
}

fn refusal_code(c: &Closed) -> Option<ErrorCode> {
    match c {
        Closed::Refused {
            status: 401,
            error: Some(e),
        } => Some(e.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_connects_and_receives_a_notification() {
    let node = Node::start_with(NodeOpts::secure()).await;
    let dir = tempfile::tempdir().unwrap();
    let dev = device(dir.path());

    // The node is secure: no token, no entry.
    let (_c, mut events) = Client::connect(cfg(&node, &dev)).unwrap();
    let why = closed(&mut events).await;
    assert_eq!(
        refusal_code(&why),
        Some(ErrorCode::MissingDeviceToken),
        "{why}"
    );

    let (token, how) = ensure_token(&cfg(&node, &dev), &dev.creds).await.unwrap();
    assert_eq!(how, Obtained::Registered);
    assert_eq!(token.device_id, dev.id);
    assert!(token.expires_at > token.obtained_at);
    assert_eq!(dev.creds.store.load().unwrap(), Some(token.clone()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dev.creds.store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "token file mode {mode:o}");
    }

    // A second start reuses it without asking the node.
    let (again, how) = ensure_token(&cfg(&node, &dev), &dev.creds).await.unwrap();
    assert_eq!((again, how), (token.clone(), Obtained::Stored));

    let (client, mut events) = Client::connect(
        cfg(&node, &dev)
            .with_token(token.token.clone())
            .with_credentials(dev.creds.clone()),
    )
    .unwrap();
    connected(&mut events).await;
    node.notify("device", Some(dev.id.as_str()), "hello", json!({"n": 1}))
        .await;
    let n = wait_for(&mut events, crate::SOON, |e| match e {
        Event::Notification(n) => Some(n.clone()),
        _ => None,
    })
    .await;
    assert_eq!((n.event.as_str(), n.data), ("hello", json!({"n": 1})));
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_id_is_refused_and_a_refresh_gives_a_new_working_token() {
    let node = Node::start_with(NodeOpts::secure()).await;
    let dir = tempfile::tempdir().unwrap();
    let dev = device(dir.path());
    let config = cfg(&node, &dev);
    let (first, _) = ensure_token(&config, &dev.creds).await.unwrap();

    // Registering the same id again without its token: taken.
    let err = register(&config, &dev.creds.info, None).await.unwrap_err();
    assert!(matches!(err, RegisterError::Taken { .. }), "{err}");
    assert!(!err.is_retryable());

    // A fresh install with a copied id file: told clearly, no new id.
    let other_dir = tempfile::tempdir().unwrap();
    let copy = Credentials::new(
        dev.creds.info.clone(),
        TokenStore::new(other_dir.path().join("token")),
    );
    let err = ensure_token(&config, &copy).await.unwrap_err();
    assert!(
        matches!(&err, CredentialsError::Taken { had_token: false, device_id, .. } if *device_id == dev.id),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("already registered") && text.contains(dev.id.as_str()),
        "{text}"
    );
    assert_eq!(copy.store.load().unwrap(), None, "nothing stored");

    // A refresh with the stored token: a new token that works.
    let refreshed = register(&config, &dev.creds.info, Some(&first.token))
        .await
        .unwrap();
    assert!(refreshed.refreshed);
    assert_ne!(refreshed.token, first.token);
    assert!(token_works(&node, &dev, &refreshed.token).await);
    // The old token no longer refreshes (it is not the current one).
    let err = register(&config, &dev.creds.info, Some(&first.token))
        .await
        .unwrap_err();
    assert!(matches!(err, RegisterError::Taken { .. }), "{err}");

    // Another device's token: mismatch.
    let other = device(other_dir.path());
    let theirs = ensure_token(&cfg(&node, &other), &other.creds)
        .await
        .unwrap()
        .0;
    let err = register(&config, &dev.creds.info, Some(&theirs.token))
        .await
        .unwrap_err();
    assert!(matches!(err, RegisterError::Mismatch { .. }), "{err}");
    // Garbage: invalid.
    let err = register(&config, &dev.creds.info, Some("garbage"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegisterError::Invalid { .. }), "{err}");

    // ensure_token refreshes a stored token close to its expiry.
    let close_to_expiry = StoredToken {
        token: refreshed.token.clone(),
        expires_at: pace_now() + 60,
        obtained_at: 0,
        device_id: dev.id.clone(),
    };
    dev.creds.store.save(&close_to_expiry).unwrap();
    let (renewed, how) = ensure_token(&config, &dev.creds).await.unwrap();
    assert_eq!(how, Obtained::Refreshed);
    assert_ne!(renewed.token, refreshed.token);
    assert!(renewed.expires_at > pace_now() + 3600);
    assert_eq!(dev.creds.store.load().unwrap(), Some(renewed.clone()));
    assert!(token_works(&node, &dev, &renewed.token).await);

    // A token file of another device is not used for this one.
    let err = ensure_token(&cfg(&node, &other), &dev.creds)
        .await
        .unwrap_err();
    assert!(matches!(err, CredentialsError::OtherDevice { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_gets_a_token_by_itself() {
    let node = Node::start_with(NodeOpts::secure()).await;
    let dir = tempfile::tempdir().unwrap();
    let dev = device(dir.path());

    // No token at all: refused with missing_device_token, registers, gets in.
    let (client, mut events) =
        Client::connect(cfg(&node, &dev).with_credentials(dev.creds.clone())).unwrap();
    let how = wait_for(&mut events, crate::SOON, |e| match e {
        Event::TokenRenewed { obtained, .. } => Some(*obtained),
        _ => None,
    })
    .await;
    assert_eq!(how, Obtained::Registered);
    connected(&mut events).await;
    client.close().await;
    let stored = dev.creds.store.load().unwrap().unwrap();

    // A stale token in the application's hands (here: garbage) while the
    // token file holds the current one: refreshed with the stored token.
    let (client, mut events) = Client::connect(
        cfg(&node, &dev)
            .with_token("not-a-token")
            .with_credentials(dev.creds.clone()),
    )
    .unwrap();
    let how = wait_for(&mut events, crate::SOON, |e| match e {
        Event::TokenRenewed { obtained, .. } => Some(*obtained),
        Event::Closed(c) => panic!("stopped: {c}"),
        _ => None,
    })
    .await;
    assert_eq!(how, Obtained::Refreshed);
    connected(&mut events).await;
    client.close().await;
    let now = dev.creds.store.load().unwrap().unwrap();
    assert_ne!(now.token, stored.token, "the refreshed token was saved");

    // Without credentials the same refusal stops the client.
    let (_c, mut events) = Client::connect(cfg(&node, &dev).with_token("not-a-token")).unwrap();
    let why = closed(&mut events).await;
    assert_eq!(
        refusal_code(&why),
        Some(ErrorCode::InvalidDeviceToken),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_token_file_cannot_win_back_a_registered_id() {
    let node = Node::start_with(NodeOpts::secure()).await;
    let dir = tempfile::tempdir().unwrap();
    let dev = device(dir.path());
    let (mut stored, _) = ensure_token(&cfg(&node, &dev), &dev.creds).await.unwrap();

    // The stored token replaced by garbage: it cannot refresh (the node
    // only refreshes with the current token), and the id is registered, so
    // the client stops with the reason instead of retrying for ever.
    stored.token = "garbage.garbage.garbage".into();
    dev.creds.store.save(&stored).unwrap();
    let (_c, mut events) =
        Client::connect(cfg(&node, &dev).with_credentials(dev.creds.clone())).unwrap();
    match closed(&mut events).await {
        Closed::Credentials { refused, reason } => {
            assert_eq!(refused, ErrorCode::InvalidDeviceToken);
            assert!(reason.contains("already registered"), "{reason}");
        }
        other => panic!("{other}"),
    }

    // The same garbage for an id the node does not know: the client
    // registers it anew and gets in.
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = device(fresh_dir.path());
    fresh
        .creds
        .store
        .save(&StoredToken {
            device_id: fresh.id.clone(),
            ..stored
        })
        .unwrap();
    let (client, mut events) =
        Client::connect(cfg(&node, &fresh).with_credentials(fresh.creds.clone())).unwrap();
    let how = wait_for(&mut events, crate::SOON, |e| match e {
        Event::TokenRenewed { obtained, .. } => Some(*obtained),
        Event::Closed(c) => panic!("stopped: {c}"),
        _ => None,
    })
    .await;
    assert_eq!(how, Obtained::Registered);
    connected(&mut events).await;
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_devices_token_stops_the_client_even_with_credentials() {
    let node = Node::start_with(NodeOpts::secure()).await;
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (device(a_dir.path()), device(b_dir.path()));
    ensure_token(&cfg(&node, &a), &a.creds).await.unwrap();
    let (b_token, _) = ensure_token(&cfg(&node, &b), &b.creds).await.unwrap();
    let (_c, mut events) = Client::connect(
        cfg(&node, &a)
            .with_token(b_token.token)
            .with_credentials(a.creds.clone()),
    )
    .unwrap();
    let why = closed(&mut events).await;
    assert_eq!(
        refusal_code(&why),
        Some(ErrorCode::DeviceTokenMismatch),
        "{why}"
    );
    assert!(why.to_string().contains("another device"), "{why}");
}

#[tokio::test]
async fn an_unreachable_node_is_a_retryable_error() {
    let dir = tempfile::tempdir().unwrap();
    let dev = device(dir.path());
    let config = config(
        &format!("http://127.0.0.1:{}", free_port()),
        dev.id.as_str(),
    );
    let err = register(&config, &dev.creds.info, None).await.unwrap_err();
    assert!(
        matches!(err, RegisterError::Unavailable { .. }) && err.is_retryable(),
        "{err}"
    );
    let err = ensure_token(&config, &dev.creds).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(dev.creds.store.load().unwrap(), None);
}

fn pace_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
