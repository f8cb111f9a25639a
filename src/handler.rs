//! What the code that gives events their meaning sees of the gateway, and how it plugs in.
//!
//! * A handler gets a [`Context`]: the session its event came from, the event's name, who the
//!   client is, and the hub to answer through. What it returns ([`IntoAck`]: nothing, a JSON
//!   value, a `Result`) answers the client's request when the event asked for one
//!   (`"ack": N`); see [`Reply`].
//! * An open hook gets an [`Opening`]: the session being created and the request creating it.
//! * [`Registry`] is where handlers and hooks are registered: the gateway's builder implements
//!   it, so the default app ([`crate::app::seed`]) and the upstream
//!   ([`crate::upstream::Upstream::install`]) register themselves without knowing the gateway.
//!
//! Why it is shaped so: the gateway sits on top and the app and the upstream sit beside the
//! transports, under it. Both need to name what a handler receives and to register on a builder;
//! with those types here, under all three, no import goes back up.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::hub::{AckError, Expired, Hub, HubError, Rendered, SessionHandle, Transport};
use crate::protocol::{Cursor, EventName, Sid};
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
    event: EventName,
    hub: Hub,
    subject: Option<Arc<str>>,
    ack: Option<u64>,
}

impl Context {
    /// The context of `event`, sent by the session `session` whose client is `subject`, asking
    /// for an answer numbered `ack` if any.
    pub(crate) fn new(session: SessionHandle, event: EventName, hub: Hub, subject: Option<Arc<str>>, ack: Option<u64>) -> Context {
        Context { session, event, hub, subject, ack }
    }

    /// The number of the client's request, when the event asked for an answer (`"ack": N`).
    /// The handler's return value answers it; a handler that answers later, itself, returns
    /// [`Reply::Later`] and calls [`Hub::answer`] with this number.
    pub fn ack(&self) -> Option<u64> {
        self.ack
    }

    /// Emits an event to the session the handled event came from and waits for the client's
    /// answer (see [`Hub::emit_with_ack`]): its data, or why none came within `timeout`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use serde_json::json;
    /// use switchyard::{Config, Gateway};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let gateway = Gateway::builder(Config::default())
    ///     .on("checkout", |ctx, cart| async move {
    ///         // Ask the page to confirm; the page's handler of `confirm` returns the answer.
    ///         match ctx.emit_with_ack("confirm", json!({ "cart": cart }), Duration::from_secs(30)).await {
    ///             Ok(answer) if answer == json!(true) => json!("ordered"),
    ///             Ok(_) => json!("cancelled"),
    ///             Err(err) => json!({ "not ordered": err.to_string() }),
    ///         }
    ///     })
    ///     .build();
    /// # drop(gateway);
    /// # }
    /// ```
    pub async fn emit_with_ack(&self, event: &str, data: impl Serialize, timeout: Duration) -> Result<Value, AckError> {
        let data = serde_json::to_value(&data).unwrap_or(Value::Null);
        self.hub.emit_with_ack(self.session.sid(), event, &data, timeout).await
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

/// What a handler's return value makes of the client's request, when its event asked for an
/// answer (`"ack": N`); ignored otherwise.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Answer with this data: `{"event": "ack", "ack": N, "data": DATA}`.
    Data(Value),
    /// Answer with the error form: `{"event": "ack", "ack": N, "error": {"error": MESSAGE,
    /// "event": NAME}}`.
    Error(String),
    /// The handler answers itself, later ([`Hub::answer`] with [`Context::ack`]), as the
    /// upstream does once the application has answered.
    Later,
}

/// What a handler may return: its answer to the client's request (see [`Reply`]).
///
/// `()` answers `null`, so every handler answers a request; a [`serde_json::Value`] answers
/// itself; `Result<T, E>` answers `T`'s answer, or the error form with `E`'s message.
///
/// ```
/// use serde_json::{json, Value};
/// use switchyard::{Config, Gateway};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let gateway = Gateway::builder(Config::default())
///     // `{"event": "add", "data": [1, 2], "ack": 7}` is answered `{"event": "ack", "ack": 7, "data": 3, ...}`.
///     .on("add", |_ctx, data| async move {
///         let terms: Vec<i64> = serde_json::from_value(data).map_err(|err| format!("not a list of integers: {err}"))?;
///         Ok::<Value, String>(json!(terms.iter().sum::<i64>()))
///     })
///     .build();
/// # drop(gateway);
/// # }
/// ```
pub trait IntoAck {
    /// The answer this return value makes.
    fn into_ack(self) -> Reply;
}

impl IntoAck for () {
    fn into_ack(self) -> Reply {
        Reply::Data(Value::Null)
    }
}

impl IntoAck for Value {
    fn into_ack(self) -> Reply {
        Reply::Data(self)
    }
}

impl IntoAck for Reply {
    fn into_ack(self) -> Reply {
        self
    }
}

impl<T: IntoAck, E: Display> IntoAck for Result<T, E> {
    fn into_ack(self) -> Reply {
        match self {
            Ok(answer) => answer.into_ack(),
            Err(err) => Reply::Error(err.to_string()),
        }
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
    /// What it returns answers the client's request, if the event carried one ([`IntoAck`]).
    #[must_use]
    fn on<F, Fut, R>(self, event: &str, handler: F) -> Self
    where
        F: Fn(Context, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoAck + 'static;

    /// Registers the handler of every event no other handler claims.
    #[must_use]
    fn fallback<F, Fut, R>(self, handler: F) -> Self
    where
        F: Fn(Context, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoAck + 'static;

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
