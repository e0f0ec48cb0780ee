//! The application's side of a connection: [`Client`], a cheap handle that
//! sends commands to the background task, and [`Events`], the receiver of
//! everything that happens.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use pace_protocol::{DeviceId, GroupId, RoomId};
use tokio::sync::mpsc;

use crate::config::{Config, ConfigError};
use crate::driver::{Command, Driver, Shared};
use crate::endpoint::Endpoint;
use crate::event::Event;
use crate::status::{RoomStatus, StatusError};

/// Commands queued between the handles and the task.
const COMMAND_BUFFER: usize = 64;

/// A handle on one device connection; clone it freely.
///
/// The connection itself lives in a background task started by
/// [`Client::connect`]. It keeps running, reconnecting as needed, until
/// [`Client::close`] is called, the node says not to reconnect, or the
/// [`Events`] receiver is dropped. Dropping every `Client` does **not** stop
/// it (an application may only listen), but then it can no longer be told
/// to join, subscribe or close.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Commands to the task.
    commands: mpsc::Sender<Command>,
    /// What the task shares (the endpoint in use).
    shared: Arc<Shared>,
    /// Parsed base URLs, for the status API.
    endpoints: Vec<Endpoint>,
    /// The device id.
    device_id: DeviceId,
    /// Bounds the status request.
    timeout: std::time::Duration,
}

/// The events of one client, in order. Read them promptly: see
/// [`Config::event_buffer`].
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

/// The client has stopped (closed, replaced, refused, or its events
/// receiver was dropped); the command was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the Pace client has stopped")]
pub struct ClientStopped;

impl Client {
    /// Starts the connection task and returns at once: the first event is
    /// [`Event::Connected`] or, when the cluster cannot be reached,
    /// [`Event::Reconnecting`]. Must be called inside a Tokio runtime.
    pub fn connect(config: Config) -> Result<(Client, Events), ConfigError> {
        let endpoints = config.endpoints()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_BUFFER);
        let (ev_tx, ev_rx) = mpsc::channel(config.event_buffer);
        let shared = Arc::new(Shared::default());
        let inner = Inner {
            commands: cmd_tx,
            shared: shared.clone(),
            endpoints: endpoints.clone(),
            device_id: config.device_id.clone(),
            timeout: config.connect_timeout,
        };
        let driver = Driver::new(config, endpoints, shared, cmd_rx, ev_tx);
        runtime.spawn(driver.run());
        Ok((
            Client {
                inner: Arc::new(inner),
            },
            Events { rx: ev_rx },
        ))
    }

    /// Takes a place in `room`'s queue; answered by [`Event::Queue`] or
    /// [`Event::Admitted`] (or [`Event::Error`], e.g. `no_such_room`). The
    /// room is rejoined after every reconnect (the node gives back the same
    /// place) until [`Client::leave`] or admission.
    pub async fn join(&self, room: RoomId) -> Result<(), ClientStopped> {
        self.send(Command::Join(room)).await
    }

    /// Gives up the place in `room`'s queue (sent on the next connection
    /// when disconnected); answered by [`Event::Left`].
    pub async fn leave(&self, room: RoomId) -> Result<(), ClientStopped> {
        self.send(Command::Leave(room)).await
    }

    /// Joins `group`; answered by [`Event::Subscribed`]. The group is
    /// rejoined after every reconnect, resuming its notifications from the
    /// last one received.
    pub async fn subscribe(&self, group: GroupId) -> Result<(), ClientStopped> {
        self.send(Command::Subscribe(group)).await
    }

    /// Leaves `group` (a configured department too); answered by
    /// [`Event::Unsubscribed`].
    pub async fn unsubscribe(&self, group: GroupId) -> Result<(), ClientStopped> {
        self.send(Command::Unsubscribe(group)).await
    }

    /// The device's status in `room` over HTTP
    /// (`GET /api/v1/rooms/{room}/status`), from the base URL the
    /// connection uses. Does not join.
    pub async fn status(&self, room: &RoomId) -> Result<RoomStatus, StatusError> {
        let inner = &self.inner;
        let idx = inner.shared.current.load(Ordering::Relaxed) % inner.endpoints.len();
        crate::status::fetch(
            &inner.endpoints[idx],
            &inner.device_id,
            inner.shared.token().as_deref(),
            room,
            inner.timeout,
        )
        .await
    }

    /// Closes the connection (close code 1000) and stops the task; returns
    /// once it has stopped. [`Event::Closed`] is the last event.
    pub async fn close(&self) {
        let _ = self.inner.commands.send(Command::Close).await;
        self.inner.commands.closed().await;
    }

    /// The device id this client connects as.
    pub fn device_id(&self) -> &DeviceId {
        &self.inner.device_id
    }

    /// The transport of the current connection (or the last one tried).
    pub fn transport(&self) -> crate::TransportKind {
        self.inner.shared.transport()
    }

    /// Whether the task has stopped.
    pub fn is_stopped(&self) -> bool {
        self.inner.commands.is_closed()
    }

    async fn send(&self, cmd: Command) -> Result<(), ClientStopped> {
        self.inner
            .commands
            .send(cmd)
            .await
            .map_err(|_| ClientStopped)
    }
}

impl Events {
    /// The next event; `None` once the client has stopped and every event
    /// was read (the last one is [`Event::Closed`], unless the task ended
    /// because the runtime shut down).
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// The underlying channel receiver (e.g. to wrap in a stream).
    pub fn into_inner(self) -> mpsc::Receiver<Event> {
        self.rx
    }
}
