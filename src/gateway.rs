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
//! order, while different sessions run concurrently.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use serde::Serialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{Admission, ClientAddr};
use crate::auth::{Auth, AuthError};
use crate::config::Config;
use crate::error::Error;
use crate::hub::{AttachRequest, Attachment, Hub, HubError, Inbox, Rendered, SessionHandle, Transport};
use crate::protocol::{Cursor, Envelope, Envelopes, Sid};
use crate::transport;

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
type Handler = Arc<dyn Fn(Context, Value) -> BoxFuture + Send + Sync>;

/// Handlers by event name. The names are the app's, fixed at build time, and a lookup with a
/// client's name reads the map without changing it, so a fast hasher is safe here (no table an
/// attacker can fill with collisions), where the default SipHash cost about 200 instructions
/// per event (callgrind).
type Handlers = HashMap<String, Handler, foldhash::fast::RandomState>;
type OpenHook = Arc<dyn Fn(Opening) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// What an open hook knows about a session being created: enough to authorize it.
pub struct Opening {
    pub sid: Sid,
    pub transport: Transport,
    /// The headers of the request that created the session (cookies, `Authorization`, ...).
    pub headers: axum::http::HeaderMap,
    /// The raw query string of that request, if any.
    pub query: Option<String>,
    pub hub: Hub,
}

/// What a handler knows about the event it handles, and its way to answer.
#[derive(Clone)]
pub struct Context {
    session: SessionHandle,
    event: String,
    hub: Hub,
    subject: Option<Arc<str>>,
}

impl Context {
    /// Who the client is: the subject of the token that opened the session (auth on only).
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// The session the event came from.
    pub fn sid(&self) -> &Sid {
        self.session.sid()
    }

    /// The rooms the session is in.
    pub fn rooms(&self) -> Vec<String> {
        self.session.rooms()
    }

    /// The name of the event being handled.
    pub fn event(&self) -> &str {
        &self.event
    }

    /// The hub, to emit to other sessions.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Emits an event to the session the handled event came from.
    ///
    /// `data` is any serializable value; one that cannot be JSON (a map with non-string keys)
    /// is sent as `null`.
    pub async fn emit(&self, event: &str, data: impl Serialize) -> Result<Cursor, HubError> {
        self.hub.emit_json_to(&self.session, event, crate::hub::render_data(&data)).await
    }

    /// [`Context::emit`] of an event rendered once, ahead of time (a constant reply): it shares
    /// that name and JSON text instead of checking, serializing and allocating its own.
    /// Returns the event's number in the session (its cursor is the session's id and this).
    pub fn emit_rendered(&self, event: &Rendered) -> Result<u64, HubError> {
        self.hub.emit_rendered_to(&self.session, event)
    }
}

/// Collects handlers and settings; [`GatewayBuilder::build`] starts the hub.
pub struct GatewayBuilder {
    config: Config,
    handlers: Handlers,
    fallback: Option<Handler>,
    shutdown: CancellationToken,
    open: Option<OpenHook>,
}

impl GatewayBuilder {
    /// Registers the handler of one event name (a later registration replaces an earlier one).
    pub fn on<F, Fut>(mut self, event: &str, handler: F) -> Self
    where
        F: Fn(Context, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.handlers.insert(event.to_owned(), Arc::new(move |ctx, data| Box::pin(handler(ctx, data))));
        self
    }

    /// Registers the handler of every event no other handler claims. Without one, such events
    /// are answered with an `error` event naming them, so a client never waits in silence.
    pub fn fallback<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn(Context, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.fallback = Some(Arc::new(move |ctx, data| Box::pin(handler(ctx, data))));
        self
    }

    /// Registers a hook run when a transport creates a session, before the client is served:
    /// `Err(reason)` removes the session and refuses the request that created it with
    /// `403 {"error": "session refused by the application: REASON"}` (a WebSocket is refused
    /// before the upgrade).
    pub fn on_open<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Opening) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.open = Some(Arc::new(move |opening| Box::pin(hook(opening))));
        self
    }

    /// Ties the gateway's lifetime to `token`: cancelling it ends every transport and the
    /// expiry task. By default the gateway has a token of its own ([`Gateway::shutdown`]).
    pub fn shutdown_token(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
        self
    }

    /// Builds the gateway and starts its expiry task; call it inside a tokio runtime.
    pub fn build(self) -> Gateway {
        crate::metrics::install();
        let auth = self.config.auth_secret.as_deref().map(Auth::new);
        let admission = Admission::new(self.config.max_new_sessions_per_ip, self.config.trusted_proxies.clone());
        let hub = Hub::new(self.config.hub(), self.shutdown.clone());
        hub.spawn_expiry();
        Gateway {
            hub,
            inner: Arc::new(Shared {
                config: self.config,
                handlers: self.handlers,
                fallback: self.fallback,
                open: self.open,
                shutdown: self.shutdown,
                sockets: TaskTracker::new(),
                auth,
                admission,
            }),
        }
    }
}

/// A running gateway: cheap to clone, shared by every transport handler.
#[derive(Clone)]
pub struct Gateway {
    hub: Hub,
    inner: Arc<Shared>,
}

struct Shared {
    config: Config,
    handlers: Handlers,
    fallback: Option<Handler>,
    /// Run for each session a transport creates; see [`GatewayBuilder::on_open`].
    open: Option<OpenHook>,
    /// Cancelled by [`Gateway::shutdown`] (or by the owner of a token passed to the builder).
    shutdown: CancellationToken,
    /// The per-socket tasks of upgraded WebSockets, which outlive the HTTP request that started
    /// them; [`Gateway::drained`] waits for them.
    sockets: TaskTracker,
    /// Token verification, when `auth_secret` is configured.
    auth: Option<Auth>,
    /// The per-address limit on new sessions, asked by [`Gateway::attach`].
    admission: Admission,
}

/// What [`ClientAddr`] needs from the state of the gateway's routes.
impl axum::extract::FromRef<Gateway> for Admission {
    fn from_ref(gateway: &Gateway) -> Admission {
        gateway.inner.admission.clone()
    }
}

impl Gateway {
    pub fn builder(config: Config) -> GatewayBuilder {
        GatewayBuilder { config, handlers: Handlers::default(), fallback: None, shutdown: CancellationToken::new(), open: None }
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

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
        let gate = || {
            self.inner.admission.admit(client.0).map_err(|limited| {
                tracing::debug!(client = ?client.0, retry_after = limited.retry_after, "too many new sessions from this address");
                Error::from(limited)
            })
        };
        self.hub.attach_with(request, gate).await
    }

    /// Ends every transport (clients are told to resume) and stops background tasks.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Runs a WebSocket's task so that [`Gateway::drained`] waits for it.
    pub(crate) fn track_socket<F: Future<Output = ()>>(&self, task: F) -> impl Future<Output = ()> {
        self.inner.sockets.track_future(task)
    }

    /// Completes when the gateway is shut down and every WebSocket task has closed its socket.
    pub async fn drained(&self) {
        self.inner.shutdown.cancelled().await;
        self.inner.sockets.close();
        self.inner.sockets.wait().await;
    }

    /// The gateway's routes: `/ws`, `/sse` (GET stream, POST send) and `/poll` (GET, and POST as
    /// an alias of `POST /sse`). Nest it under any prefix.
    pub fn router(&self) -> Router {
        transport::router(self.clone())
    }

    /// Runs the handler of each envelope in turn, for one session.
    ///
    /// The session's inbox is held throughout, so events of one session are handled one at a
    /// time in arrival order even when they come over two transports at once (an old socket
    /// still draining while a new one sends), and numbered events already handled are skipped.
    pub async fn dispatch(&self, sid: &Sid, envelopes: Envelopes) {
        let Ok(session) = self.hub.session(sid) else { return };
        self.dispatch_to(&session, envelopes).await
    }

    /// [`Gateway::dispatch`] for a session already in hand (a transport's attached session).
    pub async fn dispatch_to(&self, session: &SessionHandle, envelopes: Envelopes) {
        // A session removed meanwhile has told its transport to close; an event racing that
        // is handled like one that arrived just before the removal.
        let inbox = session.inbox().await;
        self.dispatch_in(inbox, envelopes).await
    }

    async fn dispatch_in(&self, inbox: Inbox<'_>, envelopes: Envelopes) {
        let session = inbox.session();
        let sid = session.sid();
        let subject = if self.inner.auth.is_some() { session.subject() } else { None };
        for Envelope { event, data, seq } in envelopes {
            if !inbox.accept(seq) {
                metrics::counter!("switchyard_resends_skipped_total").increment(1);
                continue;
            }
            match self.inner.handlers.get(&event).or(self.inner.fallback.as_ref()) {
                Some(handler) => {
                    let ctx = Context { session: session.clone(), event, hub: self.hub.clone(), subject: subject.clone() };
                    handler(ctx, data).await
                }
                None => {
                    tracing::debug!(sid = sid.short(), event, "no handler");
                    let notice = json!({"error": format!("no handler for event `{event}`"), "event": event});
                    let _ = self.hub.emit(sid, "error", &notice).await;
                }
            }
        }
    }

    /// Runs the open hook for a session the attachment just created; transports call it after
    /// every attach, before serving. On refusal the session is removed and the error says why.
    ///
    /// With auth on, a new session first needs a valid token, whose subject it keeps; a token
    /// presented on a resume must name the session's subject (see [`crate::auth`]).
    pub async fn admit(&self, attachment: &Attachment, headers: &axum::http::HeaderMap, query: Option<&str>) -> Result<(), Error> {
        self.authenticate(attachment, headers, query)?;
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
        hook(opening).await.map_err(|reason| {
            self.hub.remove(attachment.sid());
            Error::Refused(reason)
        })
    }

    fn authenticate(&self, attachment: &Attachment, headers: &axum::http::HeaderMap, query: Option<&str>) -> Result<(), Error> {
        let Some(auth) = &self.inner.auth else { return Ok(()) };
        #[derive(serde::Deserialize)]
        struct TokenQuery {
            token: Option<String>,
        }
        let query_token = query.and_then(|q| serde_urlencoded::from_str::<TokenQuery>(q).ok()).and_then(|q| q.token);
        let sid = attachment.sid();
        let refuse = |err: AuthError| {
            if attachment.is_fresh() {
                self.hub.remove(sid);
            }
            tracing::info!(sid = sid.short(), %err, "refused a session");
            Err(Error::Auth(err))
        };
        let identity = match crate::auth::token(headers, query_token.as_deref()).map(|t| auth.verify(t)).transpose() {
            Ok(identity) => identity,
            Err(err) => return refuse(err),
        };
        match identity {
            Some(subject) if attachment.is_fresh() => {
                self.hub.set_subject(sid, subject)?;
                Ok(())
            }
            None if attachment.is_fresh() => refuse(AuthError::Missing),
            Some(subject) if self.hub.subject(sid).as_deref() != Some(&*subject) => refuse(AuthError::WrongSubject),
            _ => Ok(()),
        }
    }

    /// Tells the session, in its own event stream, that something it sent was refused.
    pub async fn report_error(&self, sid: &Sid, error: impl std::fmt::Display) {
        let _ = self.hub.emit(sid, "error", &json!({ "error": error.to_string() })).await;
    }
}
