//! The library's front door: a [`Gateway`] is a hub plus the app's event handlers, and yields an
//! axum [`Router`] to serve alone or nest into an existing app.
//!
//! ```no_run
//! # async fn demo() {
//! use switchyard::{Config, Gateway};
//! let gateway = Gateway::builder(Config::default())
//!     .on("message", |ctx, _data| async move {
//!         let _ = ctx.emit("response", "Message received!").await;
//!     })
//!     .build();
//! let app = axum::Router::new().nest("/realtime", gateway.router());
//! # let _ = app;
//! # }
//! ```
//!
//! Handlers run in the order a session's events arrive: the transport that read an event awaits
//! its handler before reading the next, so one session's events are handled one at a time, in
//! order, while different sessions run concurrently. A handler's return value answers the
//! client's request when the event asked for one (`"ack": N`, see [`crate::IntoAck`]); the
//! client's answers to the server's own requests skip that queue (see [`Gateway::dispatch`]).
//!
//! Every background task of a gateway belongs to it: the hub's expiry task, WebSocket tasks,
//! expire hooks, upstream workers, and whatever a user starts with [`Tasks::spawn`]. They all
//! live in one task tracker under one cancellation token ([`Tasks`]); [`Gateway::shutdown`], a
//! cancelled parent token ([`GatewayBuilder::shutdown_token`]) or dropping the last `Gateway`
//! handle cancels it, and [`Gateway::drained`] waits until every task has ended. So a gateway
//! that is dropped without a shutdown leaves nothing running and frees its sessions.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::FutureExt;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::admission::{Admission, ClientAddr};
use crate::auth::{Auth, AuthError};
use crate::config::Config;
use crate::error::Error;
use crate::handler::{Context, IntoAck, Opening, Registry, Reply};
use crate::hub::{AttachRequest, Attachment, Cluster, Expired, Hub, HubError, SessionHandle, ACK_EVENT};
use crate::protocol::{Envelope, Envelopes, EventName, Sid};
use crate::tasks::Tasks;
use crate::transport::{self, Endpoint, TransportConfig};

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
/// A handler as the gateway keeps it: its answer is `Some` only when the event asked for one
/// (see [`erased`]).
type Handler = Arc<dyn Fn(Context, Value) -> HandlerFuture + Send + Sync>;

/// A handler's future, held in place when it fits in [`HANDLER_FUTURE_BYTES`] and boxed
/// otherwise (see [`erased`]).
type HandlerFuture = stackfuture::StackFuture<'static, Option<Reply>, HANDLER_FUTURE_BYTES>;

/// Room for a handler's future inside the dispatch's own future. The default app's `message`
/// (its reply, the rooms' check, the chat boxed) fits; a larger one is boxed as every handler's
/// future was before. In place, an event costs no allocation and free for its handler (about
/// 110 of the instructions of a WebSocket round trip, callgrind), and a WebSocket's task is 112
/// bytes larger (2,624 to 2,736, the `serve_socket` future measured in a release build).
const HANDLER_FUTURE_BYTES: usize = 256;

/// Handlers by event name. The names are the app's, fixed at build time, and a lookup with a
/// client's name reads the map without changing it, so a fast hasher is safe here (no table an
/// attacker can fill with collisions), where the default SipHash cost about 200 instructions
/// per event (callgrind).
type Handlers = HashMap<String, Handler, foldhash::fast::RandomState>;
type OpenHook = Arc<dyn Fn(Opening) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;
type ExpireHook = Arc<dyn Fn(Hub, Expired) -> BoxFuture + Send + Sync>;

/// Most expire hooks running at once. A hook usually calls the application (an HTTP request):
/// this bounds the requests a burst of expiries (many clients gone at once) makes in parallel.
const EXPIRE_HOOKS_AT_ONCE: usize = 64;

/// Most expiries waiting for an expire hook slot. When every slot is taken and this many wait,
/// a further expiry is not hooked: it is dropped with a warning and counted in
/// `switchyard_expire_hooks_dropped_total`. The application is then far behind, and holding
/// every expiry for it would let memory grow without bound while expiry itself must go on.
const EXPIRE_HOOKS_WAITING: usize = 10_000;

/// Collects handlers and settings; [`GatewayBuilder::build`] starts the hub. Made by
/// [`Gateway::builder`].
///
/// ```
/// use serde_json::json;
/// use switchyard::{Config, Gateway, Target};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let gateway = Gateway::builder(Config::default())
///     // One handler per event name: answer the sender...
///     .on("message", |ctx, data| async move {
///         let _ = ctx.emit("response", json!({ "you said": data })).await;
///     })
///     // ...or reach other sessions through the hub.
///     .on("shout", |ctx, data| async move {
///         let _ = ctx.hub().publish_except(&Target::All, Some(ctx.sid()), "shout", &data).await;
///     })
///     // Every event no handler claims (without one, the client gets an `error` event).
///     .fallback(|ctx, _data| async move {
///         let _ = ctx.emit("error", json!({ "error": "unknown event", "event": ctx.event() })).await;
///     })
///     // Refuse sessions the application does not want: `403`, before the client is served.
///     .on_open(|opening| async move {
///         match opening.headers.get("x-team") {
///             Some(_) => Ok(()),
///             None => Err("send X-Team".to_owned()),
///         }
///     })
///     // Tell a session's rooms it is gone for good, once its grace period has run out.
///     .on_expire(|hub, gone| async move {
///         for room in &gone.rooms {
///             let _ = hub.emit_room(room, "left", &json!(gone.sid.short())).await;
///         }
///     })
///     .build();
/// # drop(gateway);
/// # }
/// ```
pub struct GatewayBuilder {
    config: Config,
    handlers: Handlers,
    fallback: Option<Handler>,
    open: Option<OpenHook>,
    expire: Option<ExpireHook>,
    /// The token given to [`GatewayBuilder::shutdown_token`], if any: its cancellation cancels
    /// the gateway's own token (not the other way round).
    parent: Option<CancellationToken>,
    /// The gateway's tasks, made with the builder so that what is installed on it (an upstream)
    /// can start tasks the gateway will own.
    tasks: Tasks,
    /// Cluster mode's Redis, if given ([`GatewayBuilder::cluster`]).
    cluster: Option<Cluster>,
    /// Whether the server answers the root `/socket.io/` ahead of the router
    /// ([`GatewayBuilder::socket_io_at_root`]).
    socket_io_at_root: bool,
}

impl GatewayBuilder {
    /// Registers the handler of one event name (a later registration replaces an earlier one).
    ///
    /// What the handler returns answers the client's request when the event carried one
    /// (`"ack": N`): nothing (`()`) answers `null`, a JSON value answers itself, an `Err` answers
    /// with the error form (see [`IntoAck`] and [`Reply`]).
    #[must_use]
    pub fn on<F, Fut, R>(mut self, event: &str, handler: F) -> Self
    where
        F: Fn(Context, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoAck + 'static,
    {
        self.handlers.insert(event.to_owned(), erased(handler));
        self
    }

    /// Registers the handler of every event no other handler claims. Without one, such events
    /// are answered with an `error` event naming them (or, when they asked for an answer, with
    /// the error form of `ack`), so a client never waits in silence.
    #[must_use]
    pub fn fallback<F, Fut, R>(mut self, handler: F) -> Self
    where
        F: Fn(Context, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoAck + 'static,
    {
        self.fallback = Some(erased(handler));
        self
    }

    /// Registers a hook run when a transport creates a session, before the client is served:
    /// `Err(reason)` removes the session and refuses the request that created it with
    /// `403 {"error": "session refused by the application: REASON"}` (a WebSocket is refused
    /// before the upgrade). Resuming a session does not run it again.
    ///
    /// The [`Opening`] holds what authorizing needs: the request's headers and query, and the
    /// hub (to put the new session in a room before its client is served, say).
    ///
    /// ```
    /// # use switchyard::{Config, Gateway};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let gateway = Gateway::builder(Config::default())
    ///     .on_open(|opening| async move {
    ///         let team = opening.query.as_deref().and_then(|q| q.strip_prefix("team="));
    ///         let Some(team) = team else { return Err("which team?".to_owned()) };
    ///         opening.hub.join(&opening.sid, team).await.map(|_| ()).map_err(|err| err.to_string())
    ///     })
    ///     .build();
    /// # drop(gateway);
    /// # }
    /// ```
    #[must_use]
    pub fn on_open<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Opening) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.open = Some(Arc::new(move |opening| Box::pin(hook(opening))));
        self
    }

    /// Registers a hook run for each session the hub expires (its grace period ran out), with
    /// the hub to act on others (tell a room the session left). Hooks run as the gateway's
    /// tasks, at most 64 at once; expiries beyond that wait, at most 10,000 of them, and further
    /// ones get no hook (a warning and `switchyard_expire_hooks_dropped_total` say so). Hooks
    /// still running at shutdown are cancelled.
    #[must_use]
    pub fn on_expire<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Hub, Expired) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.expire = Some(Arc::new(move |hub, gone| Box::pin(hook(hub, gone))));
        self
    }

    /// Ties the gateway's lifetime to `token`: cancelling it shuts the gateway down (every
    /// transport ends, every task stops). The gateway keeps a token of its own, a child of this
    /// one: [`Gateway::shutdown`] and dropping the gateway cancel only that.
    #[must_use]
    pub fn shutdown_token(mut self, token: CancellationToken) -> Self {
        self.parent = Some(token);
        self
    }

    /// Runs the gateway in cluster mode: its sessions live in the Redis behind `cluster`, shared
    /// with every other gateway connected to it (see [`Hub::clustered`]).
    #[must_use]
    pub fn cluster(mut self, cluster: Cluster) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Says that the router given to `server::run` (or `run_tls`) mounts this gateway's router
    /// at `/`, so that the root `/socket.io/` is this gateway's. The server then answers `GET`
    /// and `POST /socket.io/` that are not from a foreign origin itself, ahead of the router
    /// (a long-polling round trip is two such requests, and they skip axum's routing), and
    /// layers added around the router do not see those requests. Off by default: a gateway
    /// nested under a prefix, or an application whose layers must see every request, serves
    /// `/socket.io/` through its router alone. The binary turns it on.
    #[must_use]
    pub fn socket_io_at_root(mut self) -> Self {
        self.socket_io_at_root = true;
        self
    }

    /// The tasks the gateway will own, for starting work that belongs to it before it is built
    /// (an upstream's workers): see [`Tasks`].
    pub fn tasks(&self) -> Tasks {
        self.tasks.clone()
    }

    /// Builds the gateway and starts its tasks (the expiry task, and the expire hooks' if one is
    /// registered); call it inside a tokio runtime.
    pub fn build(self) -> Gateway {
        crate::metrics::install();
        let auth = self.config.auth_secret.as_deref().map(Auth::new);
        let admission = Admission::new(self.config.max_new_sessions_per_ip, self.config.trusted_proxies.clone());
        let tasks = self.tasks;
        if let Some(parent) = self.parent {
            let own = tasks.shutdown.clone();
            tasks.spawn(async move { parent.cancelled().await; own.cancel() });
        }
        let hub = match self.cluster {
            Some(cluster) => Hub::clustered(self.config.hub(), tasks.shutdown.clone(), cluster),
            None => Hub::new(self.config.hub(), tasks.shutdown.clone()),
        };
        // Not through `Tasks::spawn`: at shutdown the expiry task has work to do (telling every
        // attachment to say goodbye), so it watches the token itself.
        tasks.tracker.spawn(hub.expiry_task());
        tasks.spawn(crate::metrics::sync_every_second());
        if let Some(hook) = self.expire {
            let (hub, expired) = (hub.clone(), hub.watch_expired());
            let limits = HookLimits { at_once: EXPIRE_HOOKS_AT_ONCE, waiting: EXPIRE_HOOKS_WAITING };
            let dispatcher = run_expire_hooks(hub, expired, hook, tasks.clone(), limits);
            tasks.spawn(async move {
                dispatcher.await;
            });
        }
        Gateway {
            hub,
            inner: Arc::new(Shared {
                transport: self.config.transport(),
                config: self.config,
                handlers: self.handlers,
                fallback: self.fallback,
                open: self.open,
                tasks,
                auth,
                admission,
                engines: Arc::default(),
                socket_io_at_root: self.socket_io_at_root,
            }),
        }
    }
}

/// The builder is where an app (the seed, an upstream) registers itself: the same methods.
impl Registry for GatewayBuilder {
    fn on<F, Fut, R>(self, event: &str, handler: F) -> Self
    where
        F: Fn(Context, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoAck + 'static,
    {
        GatewayBuilder::on(self, event, handler)
    }

    fn fallback<F, Fut, R>(self, handler: F) -> Self
    where
        F: Fn(Context, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoAck + 'static,
    {
        GatewayBuilder::fallback(self, handler)
    }

    fn on_open<F, Fut>(self, hook: F) -> Self
    where
        F: Fn(Opening) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        GatewayBuilder::on_open(self, hook)
    }

    fn on_expire<F, Fut>(self, hook: F) -> Self
    where
        F: Fn(Hub, Expired) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        GatewayBuilder::on_expire(self, hook)
    }

    fn tasks(&self) -> Tasks {
        GatewayBuilder::tasks(self)
    }
}

/// Whether an envelope is the client's answer to a request of the server:
/// `{"event": "ack", "ack": N, ...}`.
fn is_answer(envelope: &Envelope) -> bool {
    envelope.ack.is_some() && envelope.event == ACK_EVENT
}

/// A handler as the gateway keeps it: its return value made an answer ([`IntoAck`]) when the
/// event asked for one, and dropped as it is otherwise, so the usual event that asks for
/// nothing builds and drops no [`Reply`].
///
/// A `map` of the handler's future rather than an `async` block awaiting it: such a block keeps
/// the future twice (as what it captured and as what it awaits), so each event's box was about
/// twice the size, and moving it in cost some 130 instructions per event (callgrind). Held in
/// place rather than boxed when it fits ([`HandlerFuture`]).
fn erased<F, Fut, R>(handler: F) -> Handler
where
    F: Fn(Context, Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoAck + 'static,
{
    Arc::new(move |ctx, data| {
        let asked = ctx.ack().is_some();
        HandlerFuture::from_or_box(handler(ctx, data).map(move |answer| asked.then(|| answer.into_ack())))
    })
}

/// How many expire hooks may run at once, and how many expiries may wait for a slot.
#[derive(Debug, Clone, Copy)]
struct HookLimits {
    at_once: usize,
    waiting: usize,
}

/// Runs `hook` for each session the hub reports expired, each as one of the gateway's tasks,
/// at most `limits.at_once` at a time, in the order the sessions expired. Expiries that find
/// every slot taken wait, at most `limits.waiting` of them; one more is dropped (see
/// [`EXPIRE_HOOKS_WAITING`]). Returns how many were dropped, once the hub stops reporting and
/// the waiting ones have started (in the gateway it runs until shutdown instead).
async fn run_expire_hooks(
    hub: Hub,
    mut expired: mpsc::UnboundedReceiver<Expired>,
    hook: ExpireHook,
    tasks: Tasks,
    limits: HookLimits,
) -> u64 {
    let slots = Arc::new(Semaphore::new(limits.at_once.max(1)));
    let mut waiting = VecDeque::new();
    let mut dropped = 0u64;
    let mut reporting = true;
    loop {
        tokio::select! {
            // Start what waits before taking more: the queue only grows while every slot is busy.
            biased;
            slot = slots.clone().acquire_owned(), if !waiting.is_empty() => {
                let slot = slot.expect("the semaphore is never closed");
                let gone = waiting.pop_front().expect("something waits");
                let run = hook(hub.clone(), gone);
                tasks.spawn(async move {
                    run.await;
                    drop(slot);
                });
            }
            next = expired.recv(), if reporting => match next {
                Some(gone) if waiting.len() < limits.waiting => waiting.push_back(gone),
                Some(gone) => {
                    dropped += 1;
                    metrics::counter!("switchyard_expire_hooks_dropped_total").increment(1);
                    if dropped == 1 || dropped.is_multiple_of(1000) {
                        tracing::warn!(sid = gone.sid.short(), dropped, running = limits.at_once, waiting = limits.waiting,
                                       "expire hooks are not keeping up; dropping the hook of an expired session");
                    }
                }
                None => reporting = false,
            },
            else => return dropped,
        }
    }
}

/// A running gateway: a [`Hub`] of sessions, the handlers of their events, and the tasks that
/// keep them; cheap to clone. [`Gateway::router`] gives its routes, to serve alone
/// ([`crate::server::run`]) or to nest into an axum app of your own.
///
/// Dropping the last handle (the router holds one) shuts it down, as [`Gateway::shutdown`]
/// does.
///
/// ```
/// use serde_json::json;
/// use switchyard::{Config, Gateway};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let gateway = Gateway::builder(Config::default())
///     .on("message", |ctx, data| async move {
///         let _ = ctx.emit("response", data).await;
///     })
///     .build();
///
/// // Its routes under a prefix of an app of your own: `/realtime/ws`, `/realtime/sse`, ...
/// let app: axum::Router = axum::Router::new().nest("/realtime", gateway.router());
///
/// // Push to every session from anywhere (a session gets events it missed on resume).
/// gateway.hub().emit_all("news", &json!({ "headline": "..." })).await.unwrap();
///
/// // Stop: every client is told to reconnect, every task of the gateway ends.
/// gateway.shutdown();
/// gateway.drained().await;
/// # drop(app);
/// # }
/// ```
#[derive(Clone)]
pub struct Gateway {
    hub: Hub,
    inner: Arc<Shared>,
}

struct Shared {
    config: Config,
    /// The transports' part of `config`, cut out once.
    transport: TransportConfig,
    handlers: Handlers,
    fallback: Option<Handler>,
    /// Run for each session a transport creates; see [`GatewayBuilder::on_open`]. It runs
    /// inside the request that created the session, not as a task of its own.
    open: Option<OpenHook>,
    /// Every background task of the gateway and the token that stops them: see [`Tasks`]. The
    /// per-socket tasks of upgraded WebSockets, which outlive the HTTP request that started
    /// them, are among them. Cancelled and closed when this, the last part of the last
    /// `Gateway` handle, drops.
    tasks: Tasks,
    /// Token verification, when `auth_secret` is configured.
    auth: Option<Auth>,
    /// The per-address limit on new sessions, asked by every attach (the transports' and
    /// [`Gateway::attach`]).
    admission: Admission,
    /// The Engine.IO sessions of `/socket.io/`: one table for every router of the gateway and
    /// for the endpoint the server serves ahead of them ([`Gateway::engine_io`]), so that a
    /// session opened through one is found through the other.
    engines: Arc<transport::socketio::Engines>,
    /// See [`GatewayBuilder::socket_io_at_root`].
    socket_io_at_root: bool,
}

/// Dropping the last `Gateway` handle shuts the gateway down, as [`Gateway::shutdown`] would:
/// its tasks stop (the expiry task first tells any attachment still held to say goodbye), and
/// with them go the last references to the hub that they held.
impl Drop for Shared {
    fn drop(&mut self) {
        self.tasks.shutdown.cancel();
        self.tasks.tracker.close();
    }
}

/// What [`ClientAddr`] needs from the state of the gateway's routes.
impl axum::extract::FromRef<Gateway> for Admission {
    fn from_ref(gateway: &Gateway) -> Admission {
        gateway.inner.admission.clone()
    }
}

impl Gateway {
    /// A builder for a gateway with these settings: register handlers on it, then
    /// [`build`](GatewayBuilder::build).
    pub fn builder(config: Config) -> GatewayBuilder {
        GatewayBuilder {
            config,
            handlers: Handlers::default(),
            fallback: None,
            open: None,
            expire: None,
            parent: None,
            tasks: Tasks::new(),
            cluster: None,
            socket_io_at_root: false,
        }
    }

    /// The gateway's sessions: emit to them, publish to rooms, look them up.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The settings the gateway was built with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The per-address limit on new sessions and the trusted proxies.
    pub fn admission(&self) -> &Admission {
        &self.inner.admission
    }

    /// Attaches a transport for `client`: a new session (none asked for, or the one asked for
    /// cannot be honoured) only if the client's address may open one now, else
    /// [`Error::TooManyNewSessions`] and no session is created. Resuming is never limited.
    pub async fn attach(&self, request: AttachRequest<'_>, client: ClientAddr) -> Result<Attachment, Error> {
        transport::attach(&self.hub, &self.inner.admission, request, client).await
    }

    /// Ends every transport (clients are told to resume) and stops background tasks;
    /// [`Gateway::drained`] says when they have stopped.
    pub fn shutdown(&self) {
        self.inner.tasks.shutdown.cancel();
    }

    /// The gateway's own token: cancelled by [`Gateway::shutdown`], by the parent token given to
    /// the builder, or when the last handle drops. Cancelling it shuts the gateway down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.tasks.shutdown
    }

    /// The gateway's background tasks, to start one of your own that it should own, or to
    /// await them after the last handle is gone.
    pub fn tasks(&self) -> &Tasks {
        &self.inner.tasks
    }

    /// Completes when the gateway is shut down and every one of its tasks has ended: WebSocket
    /// tasks have closed their sockets, and the expiry task, expire hooks and upstream workers
    /// have stopped.
    pub async fn drained(&self) {
        self.inner.tasks.drained().await;
    }

    /// The gateway's routes: `/ws`, `/sse` (GET stream, POST send) and `/poll` (GET, and POST as
    /// an alias of `POST /sse`), `/metrics` and `/healthz`. Nest it under any prefix.
    pub fn router(&self) -> Router {
        let own = Router::new()
            .route("/metrics", get(render_metrics))
            .route("/healthz", get(healthz))
            .with_state(self.clone());
        transport::router(self.endpoint(), own)
    }

    /// The gateway's `/socket.io/` endpoint, for the server to serve ahead of [`Gateway::router`]
    /// (see `transport/socketio/direct.rs`), if the gateway was told its router is at the root
    /// ([`GatewayBuilder::socket_io_at_root`]).
    pub(crate) fn engine_io(&self) -> Option<transport::socketio::EngineIo<Gateway>> {
        self.inner.socket_io_at_root.then(|| transport::socketio::EngineIo::new(self.endpoint()))
    }

    /// The state of the transport routes: the parts of this gateway they use, and the gateway
    /// itself as the [`transport::Handler`] of what they read.
    fn endpoint(&self) -> Endpoint<Gateway> {
        let sockets = self.inner.tasks.tracker.clone();
        let engines = self.inner.engines.clone();
        Endpoint::new(self.hub.clone(), self.inner.transport.clone(), self.inner.admission.clone(), sockets, engines, self.clone())
    }

    /// Runs the handler of each envelope in turn, for one session.
    ///
    /// The session's inbox is held throughout, so events of one session are handled one at a
    /// time in arrival order even when they come over two transports at once (an old socket
    /// still draining while a new one sends), and numbered events already handled are skipped.
    /// An event that asked for an answer (`"ack": N`) is answered after its handler, with what
    /// the handler returned. The client's answers to requests of the server
    /// (`{"event": "ack", "ack": N}`, [`Hub::emit_with_ack`]) are taken first, without the
    /// inbox: the handler waiting for one may be what holds it.
    ///
    /// Fails when the session is gone, or (cluster mode) Redis cannot be reached: nothing was
    /// handled then.
    pub async fn dispatch(&self, sid: &Sid, envelopes: Envelopes) -> Result<(), HubError> {
        let session = self.hub.session(sid).await?;
        self.dispatch_to(&session, envelopes).await
    }

    /// [`Gateway::dispatch`] for a session already in hand (a transport's attached session).
    pub async fn dispatch_to(&self, session: &SessionHandle, mut envelopes: Envelopes) -> Result<(), HubError> {
        if envelopes.iter().any(is_answer) {
            // Boxed: the usual frame holds no answer, and this wait would otherwise make every
            // dispatch's future larger (callgrind: instructions per WebSocket round trip).
            Box::pin(self.take_answers(session, &mut envelopes)).await;
            if envelopes.is_empty() {
                return Ok(());
            }
        }
        // A session removed meanwhile has told its transport to close; an event racing that
        // is handled like one that arrived just before the removal.
        let inbox = session.inbox().await?;
        // The handlers run here rather than in an `async fn` of their own: one state machine
        // less to build, move and drop per frame (callgrind: instructions per WebSocket round
        // trip).
        let subject = if self.inner.auth.is_some() { session.subject() } else { None };
        for Envelope { event, data, seq, ack } in envelopes {
            // A numbered send already handled is skipped, its request too: the answer it got
            // the first time is in the buffer, so the client gets it on resume, once.
            if !inbox.accept(seq) {
                metrics::counter!("switchyard_resends_skipped_total").increment(1);
                continue;
            }
            match self.inner.handlers.get(event.as_str()).or(self.inner.fallback.as_ref()) {
                Some(handler) => {
                    // The name goes to the context; a request keeps a copy for its error form (a
                    // copy of an inline name, or a count for a long one).
                    let name = ack.map(|_| event.clone());
                    let ctx = Context::new(session.clone(), event, self.hub.clone(), subject.clone(), ack);
                    // `Some` only when the event asked for an answer (see `erased`).
                    let Some(reply) = handler(ctx, data).await else { continue };
                    if let (Some(number), Some(name)) = (ack, name) {
                        let answer = match reply {
                            Reply::Data(data) => Ok(data),
                            Reply::Error(error) => Err(json!({"error": error, "event": name})),
                            Reply::Later => continue,
                        };
                        // Boxed, like the branch below: the usual event asks for no answer,
                        // and these waits would otherwise make every dispatch's future larger.
                        let _ = Box::pin(self.hub.answer_to(session, number, answer.as_ref())).await;
                    }
                }
                None => Box::pin(self.no_handler(session, event, ack)).await,
            }
        }
        Ok(())
    }

    /// Tells the client that no handler took `event`: the error form of its answer if it asked
    /// for one, else an `error` event.
    async fn no_handler(&self, session: &SessionHandle, event: EventName, ack: Option<u64>) {
        tracing::debug!(sid = session.sid().short(), event = event.as_str(), "no handler");
        let notice = json!({"error": format!("no handler for event `{event}`"), "event": event.as_str()});
        let _ = match ack {
            Some(number) => self.hub.answer_to(session, number, Err(&notice)).await,
            None => self.hub.emit(session.sid(), "error", &notice).await,
        };
    }

    /// Takes the client's answers to requests of the server out of `envelopes`, at once, ahead
    /// of the inbox: the handler that waits for one may be what holds the inbox.
    async fn take_answers(&self, session: &SessionHandle, envelopes: &mut Envelopes) {
        for envelope in envelopes.iter_mut().filter(|envelope| is_answer(envelope)) {
            let (number, data) = (envelope.ack.unwrap_or_default(), std::mem::take(&mut envelope.data));
            if !self.hub.take_answer(session.sid(), number, data).await {
                tracing::debug!(sid = session.sid().short(), number, "an answer no request waits for (it timed out)");
            }
        }
        envelopes.retain(|envelope| !is_answer(envelope));
    }

    /// Runs the open hook for a session the attachment just created; transports call it after
    /// every attach, before serving. On refusal the session is removed and the error says why.
    ///
    /// With auth on, a new session first needs a valid token, whose subject it keeps; a token
    /// presented on a resume must name the session's subject (see [`crate::auth`]).
    pub async fn admit(&self, attachment: &Attachment, headers: &HeaderMap, query: Option<&str>) -> Result<(), Error> {
        self.authenticate(attachment, headers, query).await?;
        let Some(hook) = self.inner.open.as_ref().filter(|_| attachment.is_fresh()) else {
            return Ok(());
        };
        let opening = Opening {
            sid: attachment.sid().clone(),
            transport: attachment.transport(),
            headers: headers.clone(),
            query: query.map(str::to_owned),
            hub: self.hub.clone(),
        };
        if let Err(reason) = hook(opening).await {
            self.hub.remove(attachment.sid()).await;
            return Err(Error::Refused(reason));
        }
        Ok(())
    }

    async fn authenticate(&self, attachment: &Attachment, headers: &HeaderMap, query: Option<&str>) -> Result<(), Error> {
        let Some(auth) = &self.inner.auth else { return Ok(()) };
        #[derive(serde::Deserialize)]
        struct TokenQuery {
            token: Option<String>,
        }
        let query_token = query.and_then(|q| serde_urlencoded::from_str::<TokenQuery>(q).ok()).and_then(|q| q.token);
        let sid = attachment.sid();
        let refuse = |err: AuthError| async move {
            if attachment.is_fresh() {
                self.hub.remove(sid).await;
            }
            tracing::info!(sid = sid.short(), %err, "refused a session");
            Err(Error::Auth(err))
        };
        let identity = match crate::auth::token(headers, query_token.as_deref()).map(|t| auth.verify(t)).transpose() {
            Ok(identity) => identity,
            Err(err) => return refuse(err).await,
        };
        match identity {
            Some(subject) if attachment.is_fresh() => {
                self.hub.set_subject(sid, subject).await?;
                Ok(())
            }
            None if attachment.is_fresh() => refuse(AuthError::Missing).await,
            Some(subject) if self.hub.subject(sid).await.as_deref() != Some(&*subject) => refuse(AuthError::WrongSubject).await,
            _ => Ok(()),
        }
    }

    /// Tells the session, in its own event stream, that something it sent was refused.
    pub async fn report_error(&self, sid: &Sid, error: impl std::fmt::Display) {
        transport::report_error(&self.hub, sid, error).await;
    }
}

/// The transports hand what they read, and what they attach, to the gateway.
impl transport::Handler for Gateway {
    fn dispatch_to(&self, session: &SessionHandle, envelopes: Envelopes) -> impl Future<Output = Result<(), HubError>> + Send {
        Gateway::dispatch_to(self, session, envelopes)
    }

    /// Without auth, and without an open hook or a new session (every poll after the first),
    /// there is nothing to check: that case is answered without [`Gateway::admit`]'s future,
    /// which is boxed otherwise, so each transport's request future stays small (callgrind:
    /// instructions per long-polling round trip).
    fn admit(&self, attachment: &Attachment, headers: &HeaderMap, query: Option<&str>)
        -> impl Future<Output = Result<(), Error>> + Send {
        let needed = self.inner.auth.is_some() || (self.inner.open.is_some() && attachment.is_fresh());
        let admitting = needed.then(|| Box::pin(Gateway::admit(self, attachment, headers, query)));
        async move {
            match admitting {
                Some(admitting) => admitting.await,
                None => Ok(()),
            }
        }
    }
}

/// `GET /metrics`: the Prometheus text format.
async fn render_metrics(State(gateway): State<Gateway>) -> Response {
    match crate::metrics::render(gateway.hub().len()) {
        Some(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response(),
        None => (StatusCode::NOT_FOUND, "metrics go to the recorder the embedding application installed\n").into_response(),
    }
}

/// `GET /healthz`: the process is up and serving; in cluster mode, also whether Redis is
/// reachable (503 when it is not: the node refuses new sessions then).
async fn healthz(State(gateway): State<Gateway>) -> Response {
    let sessions = gateway.hub().len();
    match gateway.hub().cluster() {
        None => axum::Json(json!({"status": "ok", "sessions": sessions})).into_response(),
        Some(cluster) if cluster.is_reachable() => {
            axum::Json(json!({"status": "ok", "sessions": sessions, "redis": "ok", "node": &*cluster.node()})).into_response()
        }
        Some(cluster) => {
            let body = json!({"status": "unavailable", "sessions": sessions, "redis": "unreachable", "node": &*cluster.node()});
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::hub::{CloseReason, HubConfig, Transport};

    /// Longest any wait here may take; each ends far sooner unless something is wrong.
    const WAIT: Duration = Duration::from_secs(5);

    async fn within<F: Future>(what: &str, fut: F) -> F::Output {
        tokio::time::timeout(WAIT, fut).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    /// Without a shutdown, a dropped gateway used to keep its expiry task, and through it the
    /// hub and every session, alive for the life of the process.
    #[tokio::test]
    async fn dropping_the_last_handle_stops_every_task_and_frees_the_sessions() {
        let gateway = Gateway::builder(Config::default()).on_expire(|_, _| async {}).build();
        let tasks = gateway.tasks().clone();
        let hub = gateway.hub().clone();
        let (mut freed, mut attachments) = (Vec::new(), Vec::new());
        for i in 0..3 {
            let attachment = hub.attach(Transport::Sse, None, None).await.unwrap();
            // Held by the session's state, so its weak count tells when that state is freed.
            let subject: Arc<str> = format!("user {i}").into();
            freed.push(Arc::downgrade(&subject));
            hub.set_subject(attachment.sid(), subject).await.unwrap();
            hub.emit(attachment.sid(), "n", &json!(i)).await.unwrap();
            attachments.push(attachment);
        }
        // One session in its grace period, one whose attachment is still held, one attached
        // until now; and a task of the user's that would never end by itself.
        drop(attachments.remove(0));
        let mut held = attachments.remove(0);
        gateway.tasks().spawn(std::future::pending());
        assert_eq!(tasks.len(), 4, "the expiry task, the metrics sync, the expire hooks' dispatcher and the user's task");

        drop((gateway, hub, attachments));
        within("every task of the dropped gateway to end", tasks.drained()).await;
        assert!(tasks.is_empty() && tasks.is_shut_down());
        // The attachment still held was told to resume elsewhere, after what was ready for it.
        let mut names = Vec::new();
        let end = loop {
            match within("the held attachment's next event", held.recv()).await {
                Ok(event) => names.push(event.name().to_owned()),
                Err(reason) => break reason,
            }
        };
        assert_eq!((names, end), (vec!["session".to_owned(), "n".to_owned(), "reconnect".to_owned()], CloseReason::Shutdown));
        assert!(freed[1].upgrade().is_some(), "a held attachment keeps the hub, and its session");
        drop(held);
        assert!(freed.iter().all(|subject| subject.upgrade().is_none()), "every session's state was freed");
    }

    /// A handler's future is held in place when it fits and boxed when it does not: both run to
    /// their end, in order, and answer.
    #[tokio::test]
    async fn handlers_with_small_and_large_futures_both_run_and_answer() {
        let gateway = Gateway::builder(Config::default())
            .on("small", |ctx, data| async move {
                let _ = ctx.emit("small", data).await;
            })
            .on("large", |ctx, data| async move {
                // Held across an await, so the future is far past the room kept in place.
                let held = [7u8; 4 * HANDLER_FUTURE_BYTES];
                tokio::task::yield_now().await;
                let _ = ctx.emit("large", json!({ "data": data, "sum": held.iter().map(|&b| u64::from(b)).sum::<u64>() })).await;
                json!("done")
            })
            .build();
        let mut attachment = gateway.hub().attach(crate::hub::Transport::WebSocket, None, None).await.unwrap();
        let session = attachment.session();
        let mut large = Envelope::new("large", json!(2));
        large.ack = Some(9);
        let envelopes: Envelopes = [Envelope::new("small", json!(1)), large, Envelope::new("small", json!(3))].into_iter().collect();
        within("the handlers", gateway.dispatch_to(&session, envelopes)).await.unwrap();
        let mut seen = Vec::new();
        while let Ok(Some(event)) = attachment.try_recv() {
            seen.push((event.name().to_owned(), event.data().to_owned()));
        }
        let expected = [("session", None), ("small", Some("1")), ("large", Some(r#"{"data":2,"sum":7168}"#)), ("ack", Some(r#""done""#)), ("small", Some("3"))];
        assert_eq!(seen.len(), expected.len(), "{seen:?}");
        for ((name, data), (want_name, want_data)) in seen.iter().zip(expected) {
            assert_eq!(name, want_name, "{seen:?}");
            if let Some(want) = want_data {
                assert_eq!(data, want, "{seen:?}");
            }
        }
    }

    #[tokio::test]
    async fn shutdown_stops_the_gateways_tasks_and_drained_awaits_them() {
        let gateway = Gateway::builder(Config::default()).build();
        let alive = Arc::new(());
        let held = Arc::downgrade(&alive);
        gateway.tasks().spawn(async move {
            let _alive = alive;
            std::future::pending::<()>().await;
        });
        let drained = tokio::spawn({
            let gateway = gateway.clone();
            async move { gateway.drained().await }
        });
        gateway.shutdown();
        within("the gateway's tasks to end", drained).await.unwrap();
        assert!(held.upgrade().is_none(), "the task was dropped");
        assert!(gateway.tasks().is_empty());
        // A task started after shutdown does not run on.
        gateway.tasks().spawn(std::future::pending());
        within("a task started after shutdown to end", gateway.drained()).await;
    }

    #[tokio::test]
    async fn a_parent_token_shuts_the_gateway_down_and_the_gateway_never_cancels_it() {
        let parent = CancellationToken::new();
        let gateway = Gateway::builder(Config::default()).shutdown_token(parent.clone()).build();
        gateway.shutdown();
        within("the gateway's own shutdown", gateway.drained()).await;
        assert!(!parent.is_cancelled(), "shutting one gateway down leaves its parent alone");

        let gateway = Gateway::builder(Config::default()).shutdown_token(parent.clone()).build();
        drop(Gateway::builder(Config::default()).shutdown_token(parent.clone()).build());
        assert!(!parent.is_cancelled(), "nor does dropping one");
        parent.cancel();
        within("the shutdown the parent asked for", gateway.drained()).await;
        assert!(gateway.shutdown_token().is_cancelled());
    }

    #[tokio::test]
    async fn expire_hooks_run_a_bounded_number_at_once_and_beyond_the_queue_are_dropped() {
        let hub = Hub::new(HubConfig::default(), CancellationToken::new());
        let tasks = Tasks::new();
        // Hooks start, say so, and wait for `release`.
        let release = Arc::new(Semaphore::new(0));
        let (started_tx, mut started) = mpsc::unbounded_channel();
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let hook: ExpireHook = {
            let (release, running, most) = (release.clone(), running.clone(), most.clone());
            Arc::new(move |_hub, gone: Expired| {
                let (release, running, most, started_tx) = (release.clone(), running.clone(), most.clone(), started_tx.clone());
                Box::pin(async move {
                    most.fetch_max(running.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    started_tx.send(gone.sid).unwrap();
                    let _turn = release.acquire().await.unwrap();
                    running.fetch_sub(1, Ordering::SeqCst);
                })
            })
        };
        // Ten sessions expire at once.
        let (expired_tx, expired) = mpsc::unbounded_channel();
        let sids: Vec<Sid> = (0..10).map(|_| Sid::random()).collect();
        for sid in &sids {
            expired_tx.send(Expired { sid: sid.clone(), rooms: Vec::new() }).unwrap();
        }
        drop(expired_tx);
        let limits = HookLimits { at_once: 2, waiting: 3 };
        let dispatcher = tokio::spawn(run_expire_hooks(hub, expired, hook, tasks.clone(), limits));

        // Two run; three wait for them; the other five find no room. (On this one-thread
        // runtime the dispatcher takes in all ten before any hook runs.)
        let first = [within("a first hook", started.recv()).await.unwrap(), within("a second hook", started.recv()).await.unwrap()];
        assert_eq!(first, [sids[0].clone(), sids[1].clone()]);
        release.add_permits(10);
        assert_eq!(within("the dispatcher", dispatcher).await.unwrap(), 5, "dropped");
        tasks.tracker.close();
        within("the hooks", tasks.tracker.wait()).await;
        let mut hooked: Vec<Sid> = first.into_iter().chain(std::iter::from_fn(|| started.try_recv().ok())).collect();
        hooked.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let mut expected = sids[..5].to_vec();
        expected.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        assert_eq!(hooked, expected, "the first five expiries were hooked, each once");
        assert_eq!(most.load(Ordering::SeqCst), 2, "never more than two at once");
    }
}
