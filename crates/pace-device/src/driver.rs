//! The background task that owns the socket: connects, reads frames, rejoins
//! and resumes after every reconnect, and decides when to stop.
//!
//! One task per client. The application talks to it through
//! [`Command`]s (sent by [`Client`](crate::Client)) and hears from it through
//! [`Event`]s. What must survive a reconnect lives in [`State`]: the rooms
//! and groups the application asked for, and the [`Dedupe`] with the
//! per-scope cursors that `resume` sends.
//!
//! A connection goes through: TCP (+TLS) and WebSocket handshake → `welcome`
//! → sync (`resume`, `leave`s, `subscribe`s, `join`s) → serving frames until
//! it ends. How it ended decides between reconnecting after a backoff delay
//! ([`End::Retry`]) and stopping ([`End::Stop`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use pace_protocol::error::ErrorBody;
use pace_protocol::{
    Challenge, ClientFrame, CloseCode, Cursor, DEPARTMENT_HEADER, DEVICE_ID_HEADER,
    DEVICE_ID_QUERY, ErrorCode, GroupId, RoomId, Scope, ServerFrame, Welcome, pow,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::backoff::Backoff;
use crate::config::{Config, TransportKind, TransportPolicy, valid_token};
use crate::credentials::CredentialsError;
use crate::dedupe::{Dedupe, Verdict};
use crate::endpoint::Endpoint;
use crate::event::{Closed, Disconnect, Event};
use crate::transport::Transport;

/// What the application asks of the task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Take (and keep, across reconnects) a place in a room's queue.
    Join(RoomId),
    /// Give the place up.
    Leave(RoomId),
    /// Join a group, across reconnects.
    Subscribe(GroupId),
    /// Leave a group.
    Unsubscribe(GroupId),
    /// Close the connection and stop.
    Close,
}

/// What the task shares with the [`Client`](crate::Client) handles.
#[derive(Default)]
pub(crate) struct Shared {
    /// Index of the endpoint in use (or tried last), so the status API goes
    /// where the WebSocket goes.
    pub(crate) current: AtomicUsize,
    /// The device token in use (it changes when the task renews it), for
    /// the status API.
    token: Mutex<Option<String>>,
    /// Whether the current connection is the HTTP stream.
    on_stream: AtomicBool,
}

impl Shared {
    /// The device token in use.
    pub(crate) fn token(&self) -> Option<String> {
        self.token.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The transport of the current (or last tried) connection.
    pub(crate) fn transport(&self) -> TransportKind {
        if self.on_stream.load(Ordering::Relaxed) {
            TransportKind::Stream
        } else {
            TransportKind::WebSocket
        }
    }

    fn set_token(&self, token: Option<String>) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = token;
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("current", &self.current)
            .field("token", &self.token().map(|_| "<redacted>"))
            .finish()
    }
}

/// Query parameter carrying the bearer token.
const TOKEN_QUERY: &str = "token";

/// Heartbeat window used when the node announces none.
const DEFAULT_SILENCE: Duration = Duration::from_secs(60);

/// How long a polite close may take before the socket is just dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

type Ws = Conn;

/// WebSocket connections that died within [`QUICK_DEATH`] of their
/// `welcome`, in a row, before the client falls back to the HTTP stream.
const QUICK_DEATHS: u32 = 3;
/// A WebSocket that dies sooner than this after `welcome` (not closed by
/// the node) counts towards [`QUICK_DEATHS`].
const QUICK_DEATH: Duration = Duration::from_secs(5);

/// One connection, on either transport: frames in and out as WebSocket
/// messages, so the session code is one.
#[derive(Debug)]
pub(crate) enum Conn {
    /// `GET /ws`.
    Ws(Box<WebSocketStream<Transport>>),
    /// `GET /stream` + `POST /stream/send`.
    Stream(crate::sse::SseConn),
}

impl Conn {
    /// Closes the connection (a WebSocket with `frame`).
    async fn close(&mut self, frame: Option<CloseFrame>) -> Result<(), tungstenite::Error> {
        match self {
            Conn::Ws(ws) => WebSocketStream::close(ws, frame).await,
            Conn::Stream(s) => SinkExt::close(s).await,
        }
    }
}

impl futures_util::Stream for Conn {
    type Item = Result<Message, tungstenite::Error>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        match self.get_mut() {
            Conn::Ws(ws) => ws.poll_next_unpin(cx),
            Conn::Stream(s) => s.poll_next_unpin(cx),
        }
    }
}

impl futures_util::Sink<Message> for Conn {
    type Error = tungstenite::Error;

    fn poll_ready(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        match self.get_mut() {
            Conn::Ws(ws) => ws.poll_ready_unpin(cx),
            Conn::Stream(s) => s.poll_ready_unpin(cx),
        }
    }

    fn start_send(self: std::pin::Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        match self.get_mut() {
            Conn::Ws(ws) => ws.start_send_unpin(item),
            Conn::Stream(s) => s.start_send_unpin(item),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        match self.get_mut() {
            Conn::Ws(ws) => ws.poll_flush_unpin(cx),
            Conn::Stream(s) => s.poll_flush_unpin(cx),
        }
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        match self.get_mut() {
            Conn::Ws(ws) => ws.poll_close_unpin(cx),
            Conn::Stream(s) => s.poll_close_unpin(cx),
        }
    }
}

/// How a connection (or an attempt) ended.
#[derive(Debug)]
enum End {
    /// Reconnect after a delay.
    Retry {
        /// Why, for [`Event::Reconnecting`].
        reason: Disconnect,
        /// The node asked to come back at once (1012, 4003): jitter only.
        prompt: bool,
        /// The connection held for `stable_after`: reset the backoff.
        stable: bool,
    },
    /// Stop for good and say why.
    Stop(Closed),
    /// The application dropped [`Events`](crate::Events): stop silently.
    Gone,
}

impl End {
    fn retry(reason: Disconnect) -> End {
        End::Retry {
            reason,
            prompt: false,
            stable: false,
        }
    }
}

/// What must survive reconnects.
#[derive(Debug)]
struct State {
    /// Rooms the device waits in: rejoined (same place) after a reconnect.
    rooms: BTreeSet<RoomId>,
    /// Rooms left while disconnected: `leave` is sent on the next connection
    /// so the place is freed instead of expiring.
    pending_leaves: BTreeSet<RoomId>,
    /// Groups the application subscribed to: rejoined after a reconnect.
    groups: BTreeSet<GroupId>,
    /// Configured departments the application unsubscribed from: left out
    /// of the handshake header from then on.
    dropped_departments: BTreeSet<GroupId>,
    /// Recent ids and per-scope cursors.
    dedupe: Dedupe,
    /// Whether the device scope's history was already asked for (the
    /// `replay_device_history_on_first_connect` option asks once).
    device_history_asked: bool,
}

/// What one connection's handshake and `resume` covered, fixed before
/// connecting (commands may change the state meanwhile).
#[derive(Debug, Default)]
struct ResumePlan {
    /// The cursors sent.
    cursors: Vec<Cursor>,
    /// Groups the `resume` subscribes (they have a cursor); if the node
    /// refuses `resume` they are subscribed with `subscribe` instead.
    groups: Vec<GroupId>,
    /// Departments sent in the handshake header.
    header: Vec<GroupId>,
}

/// What one connection keeps while it serves.
#[derive(Debug)]
struct Session {
    /// Groups to `subscribe` if the node refuses `resume`; `None` once the
    /// node answered it (or none was sent).
    resume_pending: Option<Vec<GroupId>>,
    /// Solutions from the proof-of-work threads.
    solved_tx: mpsc::UnboundedSender<Solved>,
    /// Set when the connection ends: its solver threads stop (a new
    /// connection gets new challenges).
    cancel: Arc<AtomicBool>,
    /// Rooms whose `solve` was sent and not yet answered by `queue` or
    /// `admitted`, with the challenges tried on this connection.
    solving: BTreeMap<RoomId, u8>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// A proof-of-work result, from a solver thread to its connection.
#[derive(Debug)]
struct Solved {
    /// The room of the challenge.
    room: RoomId,
    /// The challenge token, sent back unchanged.
    challenge: String,
    /// The solution found.
    solution: u64,
}

/// Challenges tried per room and connection before the client gives up
/// and lets the `pow_invalid` error reach the application.
const MAX_CHALLENGES: u8 = 3;

/// Hashes a solver tries between checks of its cancel flag.
const SOLVE_CHUNK: u64 = 1 << 16;

/// The task.
#[derive(Debug)]
pub(crate) struct Driver {
    /// The validated configuration.
    config: Config,
    /// Parsed base URLs, tried in turn.
    endpoints: Vec<Endpoint>,
    /// Shared with the client handles.
    shared: Arc<Shared>,
    /// Commands from the client handles.
    commands: mpsc::Receiver<Command>,
    /// False once every client handle is gone (the task keeps running for
    /// the [`Events`](crate::Events) reader).
    commands_open: bool,
    /// Events to the application.
    events: mpsc::Sender<Event>,
    /// Reconnect delays.
    backoff: Backoff,
    /// Index of the endpoint the next attempt uses.
    next: usize,
    /// What survives reconnects.
    state: State,
    /// The device token was renewed after a refusal and no connection got
    /// `welcome` since: another refusal of the token stops the client.
    renewed: bool,
    /// Fell back to the HTTP stream: stay on it until then (Auto policy).
    stream_until: Option<Instant>,
    /// WebSocket connections in a row that died soon after `welcome`.
    quick_deaths: u32,
}

impl Driver {
    /// A task for `config`, ready to [`run`](Driver::run).
    pub(crate) fn new(
        mut config: Config,
        endpoints: Vec<Endpoint>,
        shared: Arc<Shared>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
    ) -> Driver {
        let backoff = Backoff::new(config.backoff_min, config.backoff_max);
        let dedupe = Dedupe::new(config.dedupe_capacity);
        if config.token.is_none()
            && let Some(creds) = &config.credentials
        {
            // The stored token, if it is this device's and can be sent; a
            // refusal of it (or of no token) renews it.
            match creds.store.load() {
                Ok(Some(t)) if t.device_id == config.device_id && valid_token(&t.token) => {
                    config.token = Some(t.token);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "device token file not read"),
            }
        }
        shared.set_token(config.token.clone());
        Driver {
            config,
            endpoints,
            shared,
            commands,
            commands_open: true,
            events,
            backoff,
            next: 0,
            state: State {
                rooms: BTreeSet::new(),
                pending_leaves: BTreeSet::new(),
                groups: BTreeSet::new(),
                dropped_departments: BTreeSet::new(),
                dedupe,
                device_history_asked: false,
            },
            renewed: false,
            stream_until: None,
            quick_deaths: 0,
        }
    }

    /// Whether the next connection uses the HTTP stream.
    fn use_stream(&mut self) -> bool {
        match self.config.transport {
            TransportPolicy::WebSocket => false,
            TransportPolicy::Stream => true,
            TransportPolicy::Auto => match self.stream_until {
                Some(t) if Instant::now() < t => true,
                Some(_) => {
                    tracing::info!("trying the WebSocket again");
                    self.stream_until = None;
                    false
                }
                None => false,
            },
        }
    }

    /// Falls back to the HTTP stream for `websocket_retry_after`.
    fn fall_back(&mut self, why: &str) {
        tracing::info!(why, "falling back to the HTTP stream");
        self.quick_deaths = 0;
        self.stream_until = Some(Instant::now() + self.config.websocket_retry_after);
    }

    /// Opens the HTTP stream to `ep`.
    async fn open_stream(&mut self, ep: &Endpoint, plan: &ResumePlan) -> Result<Ws, End> {
        self.shared.on_stream.store(true, Ordering::Relaxed);
        let device = self.config.device_id.as_str();
        let query = {
            let mut query = form_urlencoded::Serializer::new(String::new());
            if self.config.send_device_id_query {
                query.append_pair(DEVICE_ID_QUERY, device);
            }
            if let Some(t) = &self.config.token {
                query.append_pair(TOKEN_QUERY, t);
            }
            query.finish()
        };
        let mut headers = vec![(
            http::HeaderName::from_static(DEVICE_ID_HEADER),
            device.to_owned(),
        )];
        if let Some(t) = &self.config.token {
            headers.push((http::header::AUTHORIZATION, format!("Bearer {t}")));
        }
        let ident = crate::sse::Ident { headers, query };
        let mut stream_headers = Vec::new();
        let departments: Vec<&str> = plan.header.iter().map(GroupId::as_str).collect();
        if !departments.is_empty() {
            stream_headers.push((
                http::HeaderName::from_static(DEPARTMENT_HEADER),
                departments.join(","),
            ));
        }
        let extra = if plan.cursors.is_empty() {
            ""
        } else {
            "resume=1"
        };
        let timeout = self.config.connect_timeout;
        let open = crate::sse::open(
            ep,
            ident,
            stream_headers,
            extra,
            self.config.max_message_bytes,
        );
        match self.offline(tokio::time::timeout(timeout, open)).await? {
            Err(_elapsed) => Err(End::retry(Disconnect::ConnectFailed(format!(
                "{ep}: no stream within {timeout:?}"
            )))),
            Ok(Err(crate::sse::OpenError::Failed(e))) => {
                Err(End::retry(Disconnect::ConnectFailed(format!("{ep}: {e}"))))
            }
            Ok(Err(crate::sse::OpenError::Refused { status, body })) => {
                Err(self.renew_if_refused(refusal(status, &body)).await)
            }
            Ok(Ok(conn)) => Ok(Conn::Stream(conn)),
        }
    }

    /// Connects and reconnects until told to stop, the node says not to
    /// come back, or the application drops its [`Events`](crate::Events).
    pub(crate) async fn run(mut self) {
        loop {
            let idx = self.next % self.endpoints.len();
            self.shared.current.store(idx, Ordering::Relaxed);
            let (reason, prompt) = match self.connection(idx).await {
                End::Gone => return,
                End::Stop(closed) => {
                    tracing::info!(reason = %closed, "pace client stopped");
                    let _ = self.events.send(Event::Closed(closed)).await;
                    return;
                }
                End::Retry {
                    reason,
                    prompt,
                    stable,
                } => {
                    if stable {
                        self.backoff.reset();
                    }
                    (reason, prompt)
                }
            };
            let delay = if prompt {
                self.backoff.prompt_delay()
            } else {
                self.backoff.next_delay()
            };
            // Every reconnect moves on to the next base URL: a device gets
            // in as long as one of them works.
            self.next = self.next.wrapping_add(1);
            let next_url = self.endpoints[self.next % self.endpoints.len()].to_string();
            tracing::info!(%reason, ?delay, %next_url, "pace client reconnecting");
            let event = Event::Reconnecting {
                attempt: self.backoff.attempt(),
                delay,
                next_url,
                reason,
            };
            if !self.emit(event).await {
                return;
            }
            match self.offline(tokio::time::sleep(delay)).await {
                Ok(()) => {}
                Err(End::Stop(closed)) => {
                    let _ = self.events.send(Event::Closed(closed)).await;
                    return;
                }
                Err(_) => return,
            }
        }
    }

    /// One connection, from TCP connect to its end.
    async fn connection(&mut self, idx: usize) -> End {
        let ep = self.endpoints[idx].clone();
        let plan = self.resume_plan();
        let request = match self.request(&ep, &plan) {
            Ok(r) => r,
            Err(e) => return End::retry(Disconnect::ConnectFailed(e)),
        };
        let timeout = self.config.connect_timeout;
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(self.config.max_message_bytes))
            .max_frame_size(Some(self.config.max_message_bytes));
        let stream = self.use_stream();
        let mut ws = if stream {
            match self.open_stream(&ep, &plan).await {
                Ok(conn) => conn,
                Err(end) => return end,
            }
        } else {
            self.shared.on_stream.store(false, Ordering::Relaxed);
            let connect = tokio::time::timeout(timeout, async {
                let stream = Transport::connect(&ep)
                    .await
                    .map_err(tungstenite::Error::Io)?;
                tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config)).await
            });
            match self.offline(connect).await {
                Err(end) => return end,
                Ok(Err(_elapsed)) => {
                    return End::retry(Disconnect::ConnectFailed(format!(
                        "{ep}: no connection within {timeout:?}"
                    )));
                }
                Ok(Ok(Err(e))) => {
                    if self.config.transport == TransportPolicy::Auto && upgrade_refused(&e) {
                        self.fall_back("the WebSocket upgrade was refused");
                        match self.open_stream(&ep, &plan).await {
                            Ok(conn) => conn,
                            Err(end) => return end,
                        }
                    } else {
                        return self.renew_if_refused(handshake_failed(&ep, e)).await;
                    }
                }
                Ok(Ok(Ok((ws, _response)))) => Conn::Ws(Box::new(ws)),
            }
        };
        let on_ws = matches!(ws, Conn::Ws(_));

        let welcome = match self
            .offline(tokio::time::timeout(timeout, read_welcome(&mut ws)))
            .await
        {
            Err(end) => return end,
            Ok(Err(_elapsed)) => {
                return End::retry(Disconnect::Protocol(format!(
                    "no welcome within {timeout:?}"
                )));
            }
            Ok(Ok(Err(end))) => return end,
            Ok(Ok(Ok(w))) => w,
        };
        let connected_at = Instant::now();
        self.renewed = false;
        let silence = heartbeat_window(&welcome);
        tracing::info!(node = %welcome.node_id, url = %ep, "pace client connected");
        if !self
            .emit(Event::Connected {
                url: ep.to_string(),
                welcome,
            })
            .await
        {
            return End::Gone;
        }

        let end = match self.sync(&mut ws, &plan).await {
            Ok(()) => self.serve(&mut ws, plan, silence).await,
            Err(e) => End::retry(Disconnect::Lost(e.to_string())),
        };
        if on_ws && self.config.transport == TransportPolicy::Auto {
            let lost = matches!(
                &end,
                End::Retry {
                    reason: Disconnect::Lost(_)
                        | Disconnect::HeartbeatLost
                        | Disconnect::Protocol(_),
                    ..
                }
            );
            if lost && connected_at.elapsed() < QUICK_DEATH {
                self.quick_deaths += 1;
                if self.quick_deaths >= QUICK_DEATHS {
                    self.fall_back("the WebSocket keeps dying within seconds");
                }
            } else {
                self.quick_deaths = 0;
            }
        }
        match end {
            End::Retry { reason, prompt, .. } => End::Retry {
                reason,
                prompt,
                stable: connected_at.elapsed() >= self.config.stable_after,
            },
            other => other,
        }
    }

    /// A handshake refused with 401 `invalid_device_token` or
    /// `missing_device_token`, with credentials configured: gets a new token
    /// (a refresh with the stored token, or the one refused; a new
    /// registration when there is none or the node does not recognise it)
    /// and reconnects promptly. Once: if the new token is refused too
    /// before a connection succeeds, the refusal stands. Other ends pass.
    async fn renew_if_refused(&mut self, end: End) -> End {
        let End::Stop(Closed::Refused {
            status: 401,
            error: Some(detail),
        }) = &end
        else {
            return end;
        };
        let code = detail.code;
        if !matches!(
            code,
            ErrorCode::InvalidDeviceToken | ErrorCode::MissingDeviceToken
        ) {
            return end;
        }
        let Some(creds) = self.config.credentials.clone() else {
            return end;
        };
        if self.renewed {
            tracing::warn!(
                code = code.as_str(),
                "the renewed device token was refused too"
            );
            return end;
        }
        let stop = |reason: String| {
            End::Stop(Closed::Credentials {
                refused: code,
                reason,
            })
        };
        let current = match creds.store.load() {
            Ok(Some(t)) if t.device_id == self.config.device_id => Some(t.token),
            Ok(Some(t)) => {
                return stop(
                    CredentialsError::OtherDevice {
                        path: creds.store.path().display().to_string(),
                        stored: t.device_id,
                        expected: self.config.device_id.clone(),
                    }
                    .to_string(),
                );
            }
            Ok(None) => self.config.token.clone(),
            Err(e) => return stop(e.to_string()),
        };
        tracing::info!(
            code = code.as_str(),
            refresh = current.is_some(),
            "device token refused; renewing it"
        );
        let config = self.config.clone();
        let renewal = crate::credentials::renew(&config, &creds, current.as_deref());
        let (token, obtained) = match self.offline(renewal).await {
            Err(end) => return end,
            Ok(Ok(t)) => t,
            Ok(Err(CredentialsError::NotSaved {
                token,
                obtained,
                source,
            })) => {
                tracing::warn!(error = %source, "renewed device token not saved; using it anyway");
                (token, obtained)
            }
            Ok(Err(e)) if e.is_retryable() => {
                return End::retry(Disconnect::TokenRenewal(e.to_string()));
            }
            Ok(Err(e)) => return stop(e.to_string()),
        };
        self.renewed = true;
        self.config.token = Some(token.token);
        self.shared.set_token(self.config.token.clone());
        let event = Event::TokenRenewed {
            obtained,
            expires_at: token.expires_at,
        };
        if !self.emit(event).await {
            return End::Gone;
        }
        End::Retry {
            reason: Disconnect::Refused {
                status: 401,
                error: Some(detail.clone()),
            },
            prompt: true,
            stable: false,
        }
    }

    /// Reads frames and commands until the connection ends.
    async fn serve(&mut self, ws: &mut Ws, plan: ResumePlan, silence: Duration) -> End {
        let (solved_tx, mut solved_rx) = mpsc::unbounded_channel();
        let mut session = Session {
            resume_pending: (!plan.cursors.is_empty()).then_some(plan.groups),
            solved_tx,
            cancel: Arc::new(AtomicBool::new(false)),
            solving: BTreeMap::new(),
        };
        let mut deadline = Instant::now() + silence;
        loop {
            tokio::select! {
                msg = ws.next() => {
                    // Anything from the node (a ping included) proves the
                    // connection alive.
                    deadline = Instant::now() + silence;
                    let msg = match msg {
                        None => return End::retry(Disconnect::Lost("connection closed without a close frame".into())),
                        Some(Err(e)) => return End::retry(Disconnect::Lost(e.to_string())),
                        Some(Ok(m)) => m,
                    };
                    match msg {
                        Message::Text(text) => {
                            if let Err(end) = self.on_text(ws, text.as_str(), &mut session).await {
                                return end;
                            }
                        }
                        Message::Close(frame) => {
                            // tungstenite queued the close reply; let it go out.
                            let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(None)).await;
                            return closed_by_node(frame);
                        }
                        // Pings are answered by tungstenite as it reads;
                        // Pace sends no binary frames.
                        Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    }
                }
                cmd = self.commands.recv(), if self.commands_open => {
                    let Some(cmd) = cmd else {
                        self.commands_open = false;
                        continue;
                    };
                    if matches!(cmd, Command::Close) {
                        let frame = CloseFrame { code: WsCloseCode::Normal, reason: "".into() };
                        let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(Some(frame))).await;
                        return End::Stop(Closed::ByClient);
                    }
                    if let Some(frame) = self.apply(cmd, true)
                        && let Err(e) = send(ws, &frame).await
                    {
                        return End::retry(Disconnect::Lost(e.to_string()));
                    }
                }
                Some(solved) = solved_rx.recv() => {
                    // Sent only if the device still waits in that room.
                    if self.state.rooms.contains(&solved.room) {
                        *session.solving.entry(solved.room.clone()).or_default() += 1;
                        let frame = ClientFrame::Solve {
                            room: solved.room,
                            challenge: solved.challenge,
                            solution: solved.solution.to_string(),
                        };
                        if let Err(e) = send(ws, &frame).await {
                            return End::retry(Disconnect::Lost(e.to_string()));
                        }
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    return End::retry(Disconnect::HeartbeatLost);
                }
                () = self.events.closed() => return End::Gone,
            }
        }
    }

    /// Handles one text frame from the node.
    async fn on_text(&mut self, ws: &mut Ws, text: &str, session: &mut Session) -> Result<(), End> {
        let frame = match serde_json::from_str::<ServerFrame>(text) {
            Ok(f) => f,
            Err(e) => {
                // Frame types this protocol version does not define are
                // ignored (nodes may add optional frames).
                tracing::debug!(error = %e, frame = %truncate(text, 200), "ignoring unknown or malformed frame");
                return Ok(());
            }
        };
        let event = match frame {
            ServerFrame::Welcome(_) => return Ok(()),
            ServerFrame::Notification(n) => match self.state.dedupe.check(&n) {
                Verdict::New => Event::Notification(n),
                verdict => {
                    tracing::debug!(id = %n.id, ?verdict, "dropping duplicate notification");
                    return Ok(());
                }
            },
            ServerFrame::Resumed { scopes } => {
                session.resume_pending = None;
                self.state.dedupe.apply_resumed(&scopes);
                Event::Resumed {
                    recovered: scopes.iter().all(|s| s.recovered),
                    scopes,
                }
            }
            ServerFrame::Error { code, message } => {
                let refused_resume = matches!(
                    code,
                    ErrorCode::UnknownType | ErrorCode::InvalidFrame | ErrorCode::BadFrame
                );
                let refused_pow = matches!(code, ErrorCode::PowInvalid | ErrorCode::PowReused);
                if refused_pow {
                    // The error does not say which room: every room with a
                    // `solve` in flight asks for a fresh challenge (a few
                    // times per connection), then the error is shown.
                    let retry: Vec<RoomId> = session
                        .solving
                        .iter()
                        .filter(|(_, tries)| **tries < MAX_CHALLENGES)
                        .map(|(room, _)| room.clone())
                        .collect();
                    session.solving.retain(|_, tries| *tries < MAX_CHALLENGES);
                    for room in retry {
                        send(ws, &ClientFrame::Join { room })
                            .await
                            .map_err(|e| End::retry(Disconnect::Lost(e.to_string())))?;
                    }
                }
                if refused_resume && let Some(groups) = session.resume_pending.take() {
                    // A node without `resume`: the groups it would have
                    // subscribed are subscribed the plain way, and the
                    // application learns that nothing was recovered.
                    tracing::info!(%message, "node refused resume; resubscribing");
                    for group in groups.into_iter().filter(|g| self.wants_group(g)) {
                        send(ws, &ClientFrame::Subscribe { group })
                            .await
                            .map_err(|e| End::retry(Disconnect::Lost(e.to_string())))?;
                    }
                    self.emit_or_gone(Event::Error {
                        code,
                        message: message.clone(),
                    })
                    .await?;
                    Event::Resumed {
                        recovered: false,
                        scopes: Vec::new(),
                    }
                } else {
                    Event::Error { code, message }
                }
            }
            ServerFrame::Queue(q) => {
                session.solving.remove(&q.room);
                Event::Queue(q)
            }
            ServerFrame::Challenge(c) => {
                if !self.state.rooms.contains(&c.room) {
                    // Left the room meanwhile: nothing to solve.
                    return Ok(());
                }
                spawn_solver(c.clone(), session.solved_tx.clone(), session.cancel.clone());
                Event::Challenge(c)
            }
            ServerFrame::Admitted(a) => {
                session.solving.remove(&a.room);
                // Admitted: rejoining after a reconnect would only repeat
                // the admission, or queue the device again once its session
                // ended.
                self.state.rooms.remove(&a.room);
                Event::Admitted(a)
            }
            ServerFrame::Left { room } => Event::Left(room),
            ServerFrame::Subscribed { group } => Event::Subscribed(group),
            ServerFrame::Unsubscribed { group } => Event::Unsubscribed(group),
            ServerFrame::Pong { .. } => return Ok(()),
        };
        self.emit_or_gone(event).await
    }

    /// After `welcome`: resume, leave what was left offline, resubscribe,
    /// rejoin.
    async fn sync(&mut self, ws: &mut Ws, plan: &ResumePlan) -> Result<(), tungstenite::Error> {
        if !plan.cursors.is_empty() {
            send(
                ws,
                &ClientFrame::Resume {
                    cursors: plan.cursors.clone(),
                },
            )
            .await?;
            if plan
                .cursors
                .iter()
                .any(|c| c.scope == Scope::Device && c.epoch == 0 && c.seq == 0)
            {
                self.state.device_history_asked = true;
            }
        }
        // Groups the handshake or the resume put the device in, but the
        // application left meanwhile.
        let unwanted: Vec<GroupId> = plan
            .header
            .iter()
            .chain(&plan.groups)
            .filter(|g| !self.wants_group(g))
            .cloned()
            .collect();
        for group in &unwanted {
            send(
                ws,
                &ClientFrame::Unsubscribe {
                    group: group.clone(),
                },
            )
            .await?;
        }
        for room in std::mem::take(&mut self.state.pending_leaves) {
            send(ws, &ClientFrame::Leave { room }).await?;
        }
        let subscribes: Vec<GroupId> = self
            .state
            .groups
            .iter()
            .filter(|g| !plan.groups.contains(g) && !plan.header.contains(g))
            .cloned()
            .collect();
        for group in subscribes {
            send(ws, &ClientFrame::Subscribe { group }).await?;
        }
        let rooms: Vec<RoomId> = self.state.rooms.iter().cloned().collect();
        for room in rooms {
            send(ws, &ClientFrame::Join { room }).await?;
        }
        Ok(())
    }

    /// The cursors to resume from: every scope the device has a position
    /// in and still belongs to.
    fn resume_plan(&self) -> ResumePlan {
        let mut plan = ResumePlan {
            header: self
                .config
                .departments
                .iter()
                .filter(|d| self.in_header(d))
                .cloned()
                .collect(),
            ..ResumePlan::default()
        };
        let dedupe = &self.state.dedupe;
        if let Some(c) = dedupe.cursor(Scope::All, None) {
            plan.cursors.push(c.clone());
        }
        for group in self.wanted_groups() {
            if let Some(c) = dedupe.cursor(Scope::Group, Some(group.as_str())) {
                plan.cursors.push(c.clone());
                if !plan.header.contains(&group) {
                    plan.groups.push(group);
                }
            }
        }
        let me = self.config.device_id.as_str();
        match dedupe.cursor(Scope::Device, Some(me)) {
            Some(c) => plan.cursors.push(c.clone()),
            None if self.config.replay_device_history_on_first_connect
                && !self.state.device_history_asked =>
            {
                plan.cursors.push(Cursor {
                    scope: Scope::Device,
                    target: Some(me.to_owned()),
                    epoch: 0,
                    seq: 0,
                });
            }
            None => {}
        }
        plan
    }

    /// The handshake request: `/ws` with the device id in the header and the
    /// query, the token, the departments.
    fn request(
        &self,
        ep: &Endpoint,
        plan: &ResumePlan,
    ) -> Result<tungstenite::handshake::client::Request, String> {
        let device = self.config.device_id.as_str();
        let mut query = form_urlencoded::Serializer::new(String::new());
        if self.config.send_device_id_query {
            query.append_pair(DEVICE_ID_QUERY, device);
        }
        if let Some(t) = &self.config.token {
            query.append_pair(TOKEN_QUERY, t);
        }
        if !plan.cursors.is_empty() {
            query.append_pair("resume", "1");
        }
        let mut req = ep
            .ws_url(&query.finish())
            .into_client_request()
            .map_err(|e| e.to_string())?;
        let headers = req.headers_mut();
        let value = |v: &str| http::HeaderValue::from_str(v).map_err(|e| e.to_string());
        headers.insert(DEVICE_ID_HEADER, value(device)?);
        if let Some(t) = &self.config.token {
            headers.insert(http::header::AUTHORIZATION, value(&format!("Bearer {t}"))?);
        }
        let departments: Vec<&str> = plan.header.iter().map(GroupId::as_str).collect();
        if !departments.is_empty() {
            headers.insert(DEPARTMENT_HEADER, value(&departments.join(","))?);
        }
        headers.insert(
            http::header::USER_AGENT,
            value(concat!("pace-device/", env!("CARGO_PKG_VERSION")))?,
        );
        Ok(req)
    }

    /// Records a command in the state; returns the frame to send when
    /// connected (`online`).
    fn apply(&mut self, cmd: Command, online: bool) -> Option<ClientFrame> {
        let st = &mut self.state;
        match cmd {
            Command::Join(room) => {
                st.pending_leaves.remove(&room);
                st.rooms.insert(room.clone());
                online.then_some(ClientFrame::Join { room })
            }
            Command::Leave(room) => {
                st.rooms.remove(&room);
                if online {
                    Some(ClientFrame::Leave { room })
                } else {
                    st.pending_leaves.insert(room);
                    None
                }
            }
            Command::Subscribe(group) => {
                st.dropped_departments.remove(&group);
                st.groups.insert(group.clone());
                online.then_some(ClientFrame::Subscribe { group })
            }
            Command::Unsubscribe(group) => {
                st.groups.remove(&group);
                if self.config.departments.contains(&group) {
                    st.dropped_departments.insert(group.clone());
                }
                st.dedupe.forget(Scope::Group, Some(group.as_str()));
                online.then_some(ClientFrame::Unsubscribe { group })
            }
            // Handled by the callers (it needs the socket or none).
            Command::Close => None,
        }
    }

    /// Runs `fut` while disconnected, meanwhile recording commands (they
    /// take effect on the next connection). `Err` when the client must stop.
    async fn offline<F: Future>(&mut self, fut: F) -> Result<F::Output, End> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Ok(out),
                cmd = self.commands.recv(), if self.commands_open => match cmd {
                    None => self.commands_open = false,
                    Some(Command::Close) => return Err(End::Stop(Closed::ByClient)),
                    Some(cmd) => {
                        self.apply(cmd, false);
                    }
                },
                () = self.events.closed() => return Err(End::Gone),
            }
        }
    }

    /// Whether the device should be in `group` (subscribed, or a department
    /// not dropped).
    fn wants_group(&self, group: &GroupId) -> bool {
        self.state.groups.contains(group) || self.in_header(group)
    }

    /// Whether `group` goes in the handshake's department header.
    fn in_header(&self, group: &GroupId) -> bool {
        self.config.departments.contains(group) && !self.state.dropped_departments.contains(group)
    }

    /// Every group the device should be in.
    fn wanted_groups(&self) -> BTreeSet<GroupId> {
        let mut all = self.state.groups.clone();
        all.extend(
            self.config
                .departments
                .iter()
                .filter(|d| !self.state.dropped_departments.contains(*d))
                .cloned(),
        );
        all
    }

    /// Sends an event; false when the application dropped its receiver.
    async fn emit(&self, event: Event) -> bool {
        self.events.send(event).await.is_ok()
    }

    async fn emit_or_gone(&self, event: Event) -> Result<(), End> {
        if self.emit(event).await {
            Ok(())
        } else {
            Err(End::Gone)
        }
    }
}

/// Solves a proof-of-work challenge on a blocking thread (it may take
/// seconds: about 2^difficulty hashes), checking `cancel` between chunks so
/// a connection that ended stops its solvers.
fn spawn_solver(c: Challenge, tx: mpsc::UnboundedSender<Solved>, cancel: Arc<AtomicBool>) {
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let mut start = 0u64;
        loop {
            if cancel.load(Ordering::Relaxed) || start == u64::MAX {
                return;
            }
            if let Some(solution) = pow::solve(&c.prefix, c.difficulty, start, SOLVE_CHUNK) {
                tracing::debug!(room = %c.room, difficulty = c.difficulty, took = ?started.elapsed(), "proof of work solved");
                let _ = tx.send(Solved {
                    room: c.room,
                    challenge: c.challenge,
                    solution,
                });
                return;
            }
            start = start.saturating_add(SOLVE_CHUNK);
        }
    });
}

/// Waits for the `welcome` frame that opens every connection.
async fn read_welcome(ws: &mut Ws) -> Result<Welcome, End> {
    loop {
        let msg = match ws.next().await {
            None => {
                return Err(End::retry(Disconnect::Lost(
                    "connection closed before welcome".into(),
                )));
            }
            Some(Err(e)) => return Err(End::retry(Disconnect::Lost(e.to_string()))),
            Some(Ok(m)) => m,
        };
        match msg {
            Message::Text(text) => {
                return match serde_json::from_str::<ServerFrame>(text.as_str()) {
                    Ok(ServerFrame::Welcome(w)) => Ok(w),
                    _ => Err(End::retry(Disconnect::Protocol(format!(
                        "expected welcome, got {}",
                        truncate(text.as_str(), 200)
                    )))),
                };
            }
            Message::Close(frame) => return Err(closed_by_node(frame)),
            _ => {}
        }
    }
}

/// How long the connection may stay silent: the node pings every
/// `heartbeat_interval_ms` and gives up after `heartbeat_timeout_ms` more.
fn heartbeat_window(w: &Welcome) -> Duration {
    let ms = w
        .heartbeat_interval_ms
        .saturating_add(w.heartbeat_timeout_ms);
    if ms == 0 {
        DEFAULT_SILENCE
    } else {
        Duration::from_millis(ms).max(Duration::from_secs(1))
    }
}

/// What a close frame from the node means for the client.
fn closed_by_node(frame: Option<CloseFrame>) -> End {
    let Some(frame) = frame else {
        // 1005, no status: like a connection lost.
        return End::retry(Disconnect::Lost("closed without a status code".into()));
    };
    let code = CloseCode(u16::from(frame.code));
    let reason = frame.reason.as_str().to_owned();
    if code == CloseCode::REPLACED {
        End::Stop(Closed::Replaced)
    } else if !code.should_reconnect() {
        End::Stop(Closed::ByNode { code, reason })
    } else {
        End::Retry {
            prompt: code == CloseCode::SERVICE_RESTART || code == CloseCode::RESYNC,
            reason: Disconnect::Closed { code, reason },
            stable: false,
        }
    }
}

/// Whether a failed WebSocket handshake means the upgrade does not get
/// through (fall back to the HTTP stream): an HTTP answer that is not a
/// node's error body (a proxy's), or a node's `not_websocket` (a proxy
/// stripped the upgrade headers), or an answer that is no handshake at all.
fn upgrade_refused(e: &tungstenite::Error) -> bool {
    match e {
        tungstenite::Error::Http(resp) => {
            let error = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice::<ErrorBody>(b).ok());
            match error {
                None => resp.status().is_client_error() || resp.status().is_success(),
                Some(b) => b.error.code == ErrorCode::NotWebsocket,
            }
        }
        tungstenite::Error::Protocol(_) => true,
        _ => false,
    }
}

/// What a failed handshake means: retry, or stop when retrying cannot help.
fn handshake_failed(ep: &Endpoint, e: tungstenite::Error) -> End {
    let tungstenite::Error::Http(resp) = e else {
        return End::retry(Disconnect::ConnectFailed(format!("{ep}: {e}")));
    };
    let status = resp.status().as_u16();
    refusal(status, resp.body().as_deref().unwrap_or_default())
}

/// What a refused handshake (WebSocket or stream) with `status` and
/// `body` means: retry, or stop when retrying cannot help.
fn refusal(status: u16, body: &[u8]) -> End {
    let error = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.error);
    // Server-side trouble, rate limits and timeouts pass; a refused id,
    // department or token, or a wrong URL, does not.
    let passes = status >= 500
        || status == 408
        || status == 429
        || error.as_ref().is_some_and(|d| d.retryable);
    if passes {
        End::retry(Disconnect::Refused { status, error })
    } else {
        End::Stop(Closed::Refused { status, error })
    }
}

/// Sends one frame as JSON text.
async fn send(ws: &mut Ws, frame: &ClientFrame) -> Result<(), tungstenite::Error> {
    // Client frames are plain data: serializing cannot fail.
    let text = serde_json::to_string(frame).unwrap_or_default();
    ws.send(Message::text(text)).await
}

/// At most `max` bytes of `s`, cut on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(code: u16) -> End {
        closed_by_node(Some(CloseFrame {
            code: WsCloseCode::from(code),
            reason: "r".into(),
        }))
    }

    #[test]
    fn close_codes_map_to_the_documented_policy() {
        assert!(matches!(close(4000), End::Stop(Closed::Replaced)));
        for stop in [1000, 1003, 1007, 1008, 1009] {
            assert!(
                matches!(close(stop), End::Stop(Closed::ByNode { code, .. }) if code.0 == stop),
                "{stop}"
            );
        }
        for prompt in [1012, 4003] {
            assert!(
                matches!(close(prompt), End::Retry { prompt: true, .. }),
                "{prompt}"
            );
        }
        for backoff in [1011, 1013, 4001, 4002, 4999] {
            assert!(
                matches!(close(backoff), End::Retry { prompt: false, .. }),
                "{backoff}"
            );
        }
        assert!(matches!(
            closed_by_node(None),
            End::Retry {
                reason: Disconnect::Lost(_),
                ..
            }
        ));
    }

    #[test]
    fn handshake_refusals_stop_only_when_retrying_cannot_help() {
        let ep = Endpoint::parse("http://127.0.0.1:1").unwrap();
        let refusal = |status: u16, body: &str| {
            let resp = http::Response::builder()
                .status(status)
                .body(Some(body.as_bytes().to_vec()))
                .unwrap();
            handshake_failed(&ep, tungstenite::Error::Http(Box::new(resp)))
        };
        assert!(matches!(
            refusal(
                400,
                r#"{"error":{"code":"invalid_device_id","message":"m","retryable":false}}"#
            ),
            End::Stop(Closed::Refused {
                status: 400,
                error: Some(_)
            })
        ));
        assert!(matches!(
            refusal(401, ""),
            End::Stop(Closed::Refused { .. })
        ));
        assert!(matches!(
            refusal(
                503,
                r#"{"error":{"code":"node_full","message":"m","retryable":true}}"#
            ),
            End::Retry { .. }
        ));
        assert!(matches!(refusal(502, "<html>"), End::Retry { .. }));
        assert!(matches!(refusal(429, ""), End::Retry { .. }));
    }

    #[test]
    fn the_heartbeat_window_follows_the_welcome() {
        let mut w = Welcome {
            protocol: 1,
            device_id: pace_protocol::DeviceId::parse("d").unwrap(),
            node_id: "n".into(),
            groups: vec![],
            heartbeat_interval_ms: 25_000,
            heartbeat_timeout_ms: 10_000,
            max_message_bytes: 65_536,
        };
        assert_eq!(heartbeat_window(&w), Duration::from_secs(35));
        w.heartbeat_interval_ms = 0;
        w.heartbeat_timeout_ms = 0;
        assert_eq!(heartbeat_window(&w), DEFAULT_SILENCE);
    }

    #[test]
    fn truncate_keeps_characters_whole() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
