//! What the code that gives events their meaning sees of the gateway, and how it plugs in.
//!
//! * A handler gets a [`Context`]: the session its event came from, the event's name, who the
//!   client is, and the hub to answer through.
//! * An open hook gets an [`Opening`]: the session being created and the request creating it.
//! * [`Registry`] is where handlers and hooks are registered: the gateway's builder implements
//!   it, so the default app ([`crate::app::seed`]) and the upstream
//!   ([`crate::upstream::Upstream::install`]) register themselves without knowing the gateway.
//!
//! Why it is shaped so: the gateway sits on top and the app and the upstream sit beside the
//! transports, under it. Both need to name what a handler receives and to register on a builder;
//! with those types here, under all three, no import goes back up.

use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::hub::{Expired, Hub, HubError, Rendered, SessionHandle, Transport};
use crate::protocol::{Cursor, Sid};
use crate::tasks::Tasks;

/// What an open hook knows about a session being created: enough to authorize it.
pub struct Opening {
    /// The new session.
    pub sid: Sid,
    /// The transport creating it.
    pub transport: Transport,
    /// The headers of the request that created the session (cookies, `Authorization`, ...).
    pub headers: axum::http::HeaderMap,
    /// The raw query string of that request, if any.
    pub query: Option<String>,
    /// The hub, to act on the session (join it to a room, greet it) or on others.
    pub hub: Hub,
}

/// What a handler knows about the event it handles, and its way to answer.
///
/// Handlers of one session run one at a time, in the order its events arrived; a handler that
/// awaits holds back that session's next event, not other sessions'.
///
/// ```
/// use serde_json::{json, Value};
/// use switchyard::{Config, Context, Gateway, Target};
///
/// /// `chat` goes to the sender's rooms, signed with who sent it.
/// async fn chat(ctx: Context, text: Value) {
///     let from = ctx.subject().unwrap_or(ctx.sid().short()).to_owned();
///     for room in ctx.rooms().await {
///         let line = json!({ "room": room, "from": from, "text": text });
///         let _ = ctx.hub().publish_except(&Target::Room(room), Some(ctx.sid()), "chat", &line).await;
///     }
///     // The sender gets an acknowledgement with its cursor: where it is in its own stream.
///     if let Ok(cursor) = ctx.emit("sent", json!({ "event": ctx.event() })).await {
///         tracing::debug!(%cursor, "acknowledged");
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let gateway = Gateway::builder(Config::default()).on("chat", chat).build();
/// # drop(gateway);
/// # }
/// ```
#[derive(Clone)]
pub struct Context {
    session: SessionHandle,
    event: String,
    hub: Hub,
    subject: Option<Arc<str>>,
}

impl Context {
    /// The context of `event`, sent by the session `session` whose client is `subject`.
    pub(crate) fn new(session: SessionHandle, event: String, hub: Hub, subject: Option<Arc<str>>) -> Context {
        Context { session, event, hub, subject }
    }

    /// Who the client is: the subject of the token that opened the session (auth on only).
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// The session the event came from.
    pub fn sid(&self) -> &Sid {
        self.session.sid()
    }

    /// The rooms the session is in.
    pub async fn rooms(&self) -> Vec<String> {
        self.session.rooms().await
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
    pub async fn emit_rendered(&self, event: &Rendered) -> Result<u64, HubError> {
        self.hub.emit_rendered_to(&self.session, event).await
    }
}

/// Somewhere to register event handlers and lifecycle hooks: the gateway's builder
/// ([`GatewayBuilder`](crate::GatewayBuilder)), whose methods of the same names these are.
///
/// Code that adds behaviour to a gateway takes and returns a `Registry`, so it needs nothing of
/// the gateway itself:
///
/// ```
/// use switchyard::{Config, Gateway, Registry};
///
/// /// Answers `ping` with `pong`.
/// fn pong<R: Registry>(registry: R) -> R {
///     registry.on("ping", |ctx, _data| async move {
///         let _ = ctx.emit("pong", ()).await;
///     })
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let gateway = pong(Gateway::builder(Config::default())).build();
/// # drop(gateway);
/// # }
/// ```
pub trait Registry: Sized {
    /// Registers the handler of one event name (a later registration replaces an earlier one).
    #[must_use]
    fn on<F, Fut>(self, event: &str, handler: F) -> Self
    where
        F: Fn(Context, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static;

    /// Registers the handler of every event no other handler claims.
    #[must_use]
    fn fallback<F, Fut>(self, handler: F) -> Self
    where
        F: Fn(Context, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static;

    /// Registers the hook run when a transport creates a session; `Err(reason)` refuses it.
    #[must_use]
    fn on_open<F, Fut>(self, hook: F) -> Self
    where
        F: Fn(Opening) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static;

    /// Registers the hook run for each session that expires.
    #[must_use]
    fn on_expire<F, Fut>(self, hook: F) -> Self
    where
        F: Fn(Hub, Expired) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static;

    /// The tasks the gateway will own, for work that belongs to it (an upstream's workers).
    fn tasks(&self) -> Tasks;
}
