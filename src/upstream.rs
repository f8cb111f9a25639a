//! Forwarding to an application over HTTP: the gateway holds the connections, the app keeps the
//! logic (the shape of Pushpin, or Centrifugo's proxy mode).
//!
//! * Every client event no built-in handler claims is POSTed to the app as
//!   `{"v":1,"type":"event","sid":..,"event":..,"data":..}` (plus `"subject"`, who the client is,
//!   when the gateway authenticates sessions); the app answers with a list of
//!   [`Action`]s (emit to this session, another session, a room or everyone; join or leave a
//!   room), which the gateway applies through the hub.
//! * Optional lifecycle hooks: `open` when a session is created (a non-2xx answer refuses the
//!   session) and `expire` when one runs out its grace period.
//!
//! Why it is shaped so:
//!
//! * **Per-session order.** The events of one session reach the app one at a time, in the order
//!   they arrived, and the actions answering one are applied before the next is sent: each
//!   session with events in flight has a queue and one worker task draining it (the gateway
//!   hands events over in arrival order, whichever transport they came by). Forwarding only
//!   queues, so a transport keeps reading and writing while the app thinks. Different sessions
//!   are forwarded concurrently.
//! * **Bounded.** At most [`UpstreamConfig::max_per_session`] events of one session are queued or
//!   in flight, and at most [`UpstreamConfig::max_in_flight`] requests are in flight in all. A
//!   full queue holds the client back (its transport stops reading) and a request waits for its
//!   turn, each up to the upstream timeout; past that the event is refused, visibly (`busy`).
//! * **Failures are never silent.** App down, timeout, non-2xx, malformed answer, or a full
//!   queue: the client gets an `error` event naming the event that failed and why, a log line
//!   says the details, and a counter counts it ([`Upstream::stats`], and the Prometheus counter
//!   `switchyard_upstream_requests_total{outcome}`). Only a request that never reached the app (connection refused) is retried, once:
//!   anything else may have had effects.
//! * **All or nothing.** An answer is parsed and checked whole before any action is applied, so a
//!   malformed answer changes nothing.
//! * **Owned by the gateway.** [`Upstream::install`] hands the upstream the gateway's
//!   [`Tasks`]: the per-session workers and the expire hooks are the gateway's tasks, stopped at
//!   its shutdown (a request in flight is abandoned; events still queued are not sent) and
//!   awaited by [`Gateway::drained`](crate::Gateway::drained).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::http::HeaderMap;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, Notify, Semaphore};

use crate::handler::{Opening, Registry};
use crate::tasks::Tasks;
use crate::hub::{check_room_name, Expired, Hub, Target};
use crate::protocol::{check_event_name, Sid};

/// Version of the request and action schema; sent as `"v"` in every request.
pub const SCHEMA_VERSION: u64 = 1;

/// Largest answer read from the app.
const MAX_ANSWER: usize = 1024 * 1024;

/// Most actions one answer may carry.
const MAX_ACTIONS: usize = 1000;

/// Pause before the one retry of a request that could not connect.
const RETRY_DELAY: Duration = Duration::from_millis(100);

/// Request headers passed to the open hook, so the app can authorize the session.
const FORWARDED_HEADERS: [&str; 6] = ["authorization", "cookie", "origin", "user-agent", "x-forwarded-for", "x-real-ip"];

/// Where and how to reach the application.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Where client events are POSTed; `None` leaves events to built-in handlers.
    pub events: Option<String>,
    /// Where `open` hooks are POSTed, if anywhere.
    pub on_open: Option<String>,
    /// Where `expire` hooks are POSTed, if anywhere.
    pub on_expire: Option<String>,
    /// Longest wait for a TCP connection to the app.
    pub connect_timeout: Duration,
    /// Longest wait for a whole answer (connect included).
    pub timeout: Duration,
    /// Most requests in flight to the app, over all sessions.
    pub max_in_flight: usize,
    /// Most events of one session waiting for, or in flight to, the app.
    pub max_per_session: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            events: None,
            on_open: None,
            on_expire: None,
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
            max_in_flight: 256,
            max_per_session: 32,
        }
    }
}

/// One thing the app asks the gateway to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `{"emit": NAME, "data": ANY, "to": TARGET}`; without `to`, to the session the request was
    /// about. `"skip_self": true` leaves that session out of a room or `all` target.
    Emit { event: String, data: Value, to: Option<Target>, skip_self: bool },
    /// `{"join": ROOM}`, or `{"join": ROOM, "sid": SID}` for another session.
    Join { room: String, sid: Option<Sid> },
    /// `{"leave": ROOM}`, or `{"leave": ROOM, "sid": SID}`.
    Leave { room: String, sid: Option<Sid> },
}

/// Why a call to the app failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("the application is unreachable")]
    Unavailable,
    #[error("the application did not answer in time")]
    Timeout,
    #[error("the application answered HTTP {0}")]
    Status(u16),
    #[error("the application's answer is malformed: {0}")]
    Malformed(String),
    #[error("too many events are waiting for the application; slow down")]
    Busy,
}

impl Failure {
    /// The `reason` field of the client's `error` event and the label of the failure counter.
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Unavailable => "unavailable",
            Failure::Timeout => "timeout",
            Failure::Status(_) => "status",
            Failure::Malformed(_) => "malformed",
            Failure::Busy => "busy",
        }
    }
}

/// Counts of what the upstream client did, for tests and (later) metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamStats {
    /// Requests the app answered with a 2xx and a well-formed answer.
    pub ok: u64,
    pub unavailable: u64,
    pub timeout: u64,
    pub status: u64,
    pub malformed: u64,
    pub busy: u64,
}

impl UpstreamStats {
    pub fn failures(&self) -> u64 {
        self.unavailable + self.timeout + self.status + self.malformed + self.busy
    }
}

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    unavailable: AtomicU64,
    timeout: AtomicU64,
    status: AtomicU64,
    malformed: AtomicU64,
    busy: AtomicU64,
}

/// The upstream client: cheap to clone, one connection pool for every session.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    config: UpstreamConfig,
    client: reqwest::Client,
    /// Permits for requests in flight over all sessions; held for the length of one request.
    in_flight: Semaphore,
    /// Per-session queues of events bound for the app. An entry lives while an event of its
    /// session is queued or in flight, and is removed by its worker when the queue runs empty.
    queues: Mutex<HashMap<Sid, Queue>>,
    counters: Counters,
    /// The tasks of the gateway the upstream is installed in, where its workers run; set by
    /// [`Upstream::install`]. An upstream used without one runs them on tasks of its own that
    /// nothing stops.
    tasks: OnceLock<Tasks>,
}

struct Queue {
    /// Events for the session's worker task, which holds the receiving end; it exits (and this
    /// entry is removed) when the queue runs empty, both under the map's lock. At shutdown the
    /// worker is dropped instead and the entry stays, unused: nothing is queued after shutdown.
    jobs: mpsc::UnboundedSender<Job>,
    /// Events of the session queued or in flight; at most `max_per_session`.
    waiting: usize,
    /// Notified by the worker each time it finishes an event, for a `forward` waiting for room.
    room: Arc<Notify>,
}

/// One client event bound for the app.
struct Job {
    hub: Hub,
    subject: Option<String>,
    event: String,
    data: Value,
}

impl Upstream {
    pub fn new(config: UpstreamConfig) -> Upstream {
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            .tcp_nodelay(true)
            .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a plain HTTP client always builds");
        Upstream {
            inner: Arc::new(Inner {
                in_flight: Semaphore::new(config.max_in_flight.max(1)),
                config,
                client,
                queues: Mutex::new(HashMap::new()),
                counters: Counters::default(),
                tasks: OnceLock::new(),
            }),
        }
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.inner.config
    }

    pub fn stats(&self) -> UpstreamStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        UpstreamStats {
            ok: get(&c.ok),
            unavailable: get(&c.unavailable),
            timeout: get(&c.timeout),
            status: get(&c.status),
            malformed: get(&c.malformed),
            busy: get(&c.busy),
        }
    }

    /// Registers what the configuration asks for on a gateway builder (a [`Registry`]): the
    /// fallback that forwards unclaimed events, the open hook and the expire hook; and makes the upstream's workers
    /// tasks of that gateway. An upstream is installed in one gateway.
    ///
    /// # Panics
    ///
    /// If the upstream is already installed in a gateway, or has already forwarded an event.
    pub fn install<R: Registry>(&self, mut builder: R) -> R {
        assert!(self.inner.tasks.set(builder.tasks()).is_ok(), "an Upstream is installed in one gateway, before it forwards");
        if self.inner.config.events.is_some() {
            let upstream = self.clone();
            builder = builder.fallback(move |ctx, data| {
                let upstream = upstream.clone();
                async move { upstream.forward(ctx.hub(), ctx.sid(), ctx.subject(), ctx.event(), data).await }
            });
        }
        if self.inner.config.on_open.is_some() {
            let upstream = self.clone();
            builder = builder.on_open(move |opening| {
                let upstream = upstream.clone();
                async move { upstream.open(opening).await }
            });
        }
        if self.inner.config.on_expire.is_some() {
            // The gateway runs expire hooks as its tasks, a bounded number at once (see
            // `GatewayBuilder::on_expire`), so a slow app holds back neither the next expiry
            // nor memory.
            let upstream = self.clone();
            builder = builder.on_expire(move |hub, gone| {
                let upstream = upstream.clone();
                async move { upstream.expire(&hub, gone).await }
            });
        }
        builder
    }

    /// Where the workers run: the gateway's tasks once installed.
    fn tasks(&self) -> &Tasks {
        self.inner.tasks.get_or_init(Tasks::new)
    }

    /// Queues one client event for the app; the session's worker sends it after the ones before
    /// it and applies the answer, or tells the client why not. Returns at once, so the transport
    /// goes on reading and writing while the app thinks. When the session's queue is full it
    /// waits for room (backpressure on the client), and refuses the event (`busy`) if none comes
    /// within the upstream timeout.
    /// `subject` is who the client is, when the gateway authenticates sessions.
    pub async fn forward(&self, hub: &Hub, sid: &Sid, subject: Option<&str>, event: &str, data: Value) {
        if self.inner.config.events.is_none() {
            return;
        }
        let shutdown = self.tasks().shutdown_token();
        if shutdown.is_cancelled() {
            // The workers are stopped and every client was told to resume elsewhere.
            tracing::debug!(sid = sid.short(), event, "gateway shut down; event not forwarded");
            return;
        }
        let mut job = Job { hub: hub.clone(), subject: subject.map(str::to_owned), event: event.to_owned(), data };
        let max = self.inner.config.max_per_session.max(1);
        let deadline = tokio::time::Instant::now() + self.inner.config.timeout;
        loop {
            let full = {
                let mut queues = self.inner.queues.lock().unwrap_or_else(|e| e.into_inner());
                match queues.get_mut(sid) {
                    Some(queue) if queue.waiting >= max => queue.room.clone(),
                    Some(queue) => match queue.jobs.send(job) {
                        Ok(()) => {
                            queue.waiting += 1;
                            return;
                        }
                        // Its worker died (it panicked): start the session over with a new one.
                        Err(mpsc::error::SendError(back)) => {
                            job = back;
                            queues.remove(sid);
                            continue;
                        }
                    },
                    None => {
                        let (jobs, rx) = mpsc::unbounded_channel();
                        let _ = jobs.send(job);
                        queues.insert(sid.clone(), Queue { jobs, waiting: 1, room: Arc::new(Notify::new()) });
                        drop(queues);
                        self.spawn_worker(sid.clone(), rx);
                        return;
                    }
                }
            };
            // Full: wait for the worker to finish one (this holds the transport back, which is
            // the backpressure a burst needs), but not past the timeout: then the app is stuck;
            // nor past shutdown, which stops the worker.
            let room = tokio::select! {
                _ = shutdown.cancelled() => return,
                room = tokio::time::timeout_at(deadline, full.notified()) => room,
            };
            if room.is_err() {
                let detail = format!("{max} events of this session still queued after {:?}", self.inner.config.timeout);
                self.failed(hub, sid, event, Failure::Busy, &detail).await;
                return;
            }
        }
    }

    /// The session's worker: sends its events one at a time, in queue order, and exits when the
    /// queue is empty, or at the gateway's shutdown.
    fn spawn_worker(&self, sid: Sid, mut jobs: mpsc::UnboundedReceiver<Job>) {
        let upstream = self.clone();
        self.tasks().spawn(async move {
            while let Some(job) = jobs.recv().await {
                upstream.send_event(&sid, job).await;
                let mut queues = upstream.inner.queues.lock().unwrap_or_else(|e| e.into_inner());
                let queue = queues.get_mut(&sid).expect("a session's queue lives while its worker runs");
                queue.waiting -= 1;
                // A stored permit if nobody waits yet: a `forward` about to wait sees it at once.
                queue.room.notify_one();
                if queue.waiting == 0 {
                    queues.remove(&sid);
                    break;
                }
            }
        });
    }

    async fn send_event(&self, sid: &Sid, job: Job) {
        let Some(url) = self.inner.config.events.as_deref() else { return };
        let Job { hub, subject, event, data } = job;
        let mut body = json!({"v": SCHEMA_VERSION, "type": "event", "sid": sid.as_str(), "event": event, "data": data});
        if let Some(subject) = subject {
            body["subject"] = Value::String(subject);
        }
        match self.call(url, &body).await {
            Ok((_, actions)) => self.apply(&hub, Some(sid), actions).await,
            Err((failure, detail)) => self.failed(&hub, sid, &event, failure, &detail).await,
        }
    }

    /// The open hook: `Ok` admits the session (and applies any actions the app sent along),
    /// `Err` refuses it with the app's reason. An app that cannot be asked refuses too: the hook
    /// exists to authorize, so it fails closed.
    pub async fn open(&self, opening: Opening) -> Result<(), String> {
        let Some(url) = self.inner.config.on_open.clone() else { return Ok(()) };
        let sid = opening.sid.clone();
        let mut body = json!({
            "v": SCHEMA_VERSION,
            "type": "open",
            "sid": sid.as_str(),
            "transport": opening.transport.as_str(),
            "headers": forwarded_headers(&opening.headers),
            "query": opening.query.as_deref().map(strip_gateway_params),
        });
        // Auth runs before the hook: a session that got this far carries its verified subject.
        if let Some(subject) = opening.hub.subject(&sid) {
            body["subject"] = Value::String(subject.to_string());
        }
        match self.call(&url, &body).await {
            Ok((_, actions)) => {
                self.apply(&opening.hub, Some(&sid), actions).await;
                Ok(())
            }
            Err((Failure::Status(status), detail)) => {
                tracing::info!(sid = sid.short(), status, "open hook refused the session");
                Err(refusal_text(status, &detail))
            }
            Err((failure, detail)) => {
                self.count(&failure);
                let detail = brief(&detail);
                tracing::warn!(sid = sid.short(), reason = failure.reason(), %detail, "open hook failed; refusing the session");
                Err(failure.to_string())
            }
        }
    }

    /// The expire hook: tells the app a session is gone (and which rooms it left); applies any
    /// actions it answers with (for example a notice to a room).
    pub async fn expire(&self, hub: &Hub, gone: Expired) {
        let Some(url) = self.inner.config.on_expire.clone() else { return };
        let body = json!({"v": SCHEMA_VERSION, "type": "expire", "sid": gone.sid.as_str(), "rooms": gone.rooms});
        match self.call(&url, &body).await {
            Ok((_, actions)) => self.apply(hub, None, actions).await,
            Err((failure, detail)) => {
                self.count(&failure);
                let detail = brief(&detail);
                tracing::warn!(sid = gone.sid.short(), reason = failure.reason(), %detail, "expire hook failed");
            }
        }
    }

    /// POSTs `body` to `url` and parses the answer. The error carries a detail for the log.
    async fn call(&self, url: &str, body: &Value) -> Result<(u16, Vec<Action>), (Failure, String)> {
        let timeout = self.inner.config.timeout;
        let _permit = match tokio::time::timeout(timeout, self.inner.in_flight.acquire()).await {
            Ok(Ok(permit)) => permit,
            _ => return Err((Failure::Busy, format!("{} requests already in flight", self.inner.config.max_in_flight))),
        };
        let mut retried = false;
        let response = loop {
            match self.inner.client.post(url).json(body).send().await {
                Ok(response) => break response,
                // Nothing reached the app: safe to try once more.
                Err(err) if err.is_connect() && !retried => {
                    retried = true;
                    tokio::time::sleep(RETRY_DELAY).await;
                }
                Err(err) if err.is_timeout() => return Err((Failure::Timeout, format!("no answer within {timeout:?}"))),
                Err(err) => return Err((Failure::Unavailable, error_chain(&err))),
            }
        };
        let status = response.status().as_u16();
        let text = read_capped(response).await.map_err(|(failure, detail)| (failure, format!("reading the answer: {detail}")))?;
        if !(200..300).contains(&status) {
            return Err((Failure::Status(status), text));
        }
        let actions = parse_answer(&text).map_err(|why| (Failure::Malformed(why.clone()), why))?;
        self.inner.counters.ok.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("switchyard_upstream_requests_total", "outcome" => "ok").increment(1);
        Ok((status, actions))
    }

    /// Applies an answer's actions in order. `sid` is the session the request was about, the
    /// target of actions that name none (`None` for hooks of sessions already gone).
    pub async fn apply(&self, hub: &Hub, sid: Option<&Sid>, actions: Vec<Action>) {
        for action in actions {
            let outcome = match &action {
                Action::Emit { event, data, to: None, .. } => match sid {
                    Some(sid) => hub.emit(sid, event, data).await.map(|_| ()),
                    None => Ok(()),
                },
                Action::Emit { event, data, to: Some(target), skip_self } => {
                    let except = if *skip_self { sid } else { None };
                    hub.publish_except(target, except, event, data).await.map(|_| ())
                }
                Action::Join { room, sid: other } => match other.as_ref().or(sid) {
                    Some(member) => hub.join(member, room).map(|_| ()),
                    None => Ok(()),
                },
                Action::Leave { room, sid: other } => match other.as_ref().or(sid) {
                    Some(member) => hub.leave(member, room).map(|_| ()),
                    None => Ok(()),
                },
            };
            // A target that went away meanwhile is not the client's fault nor the app's.
            if let Err(err) = outcome {
                tracing::debug!(?action, %err, "action not applied");
            }
        }
    }

    /// Makes a failure visible: `error` event to the client, counter, log line.
    async fn failed(&self, hub: &Hub, sid: &Sid, event: &str, failure: Failure, detail: &str) {
        self.count(&failure);
        let detail = brief(detail);
        tracing::warn!(sid = sid.short(), event, reason = failure.reason(), %detail, "event not delivered to the application");
        let notice = json!({
            "error": format!("`{event}` was not handled: {failure}"),
            "event": event,
            "reason": failure.reason(),
        });
        let _ = hub.emit(sid, "error", &notice).await;
    }

    fn count(&self, failure: &Failure) {
        let c = &self.inner.counters;
        let counter = match failure {
            Failure::Unavailable => &c.unavailable,
            Failure::Timeout => &c.timeout,
            Failure::Status(_) => &c.status,
            Failure::Malformed(_) => &c.malformed,
            Failure::Busy => &c.busy,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("switchyard_upstream_requests_total", "outcome" => failure.reason()).increment(1);
    }
}

/// Reads at most [`MAX_ANSWER`] bytes of an answer as UTF-8 text.
async fn read_capped(mut response: reqwest::Response) -> Result<String, (Failure, String)> {
    let mut bytes = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if bytes.len() + chunk.len() > MAX_ANSWER {
                    return Err((Failure::Malformed(format!("answer longer than {MAX_ANSWER} bytes")), "too long".into()));
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(err) if err.is_timeout() => return Err((Failure::Timeout, "answer body too slow".into())),
            Err(err) => return Err((Failure::Unavailable, error_chain(&err))),
        }
    }
    String::from_utf8(bytes).map_err(|_| (Failure::Malformed("answer is not UTF-8".into()), "not UTF-8".into()))
}

/// Parses an answer: empty (no actions), a JSON array of actions, or
/// `{"v": 1, "actions": [...]}`. Every action is checked before any is applied.
pub fn parse_answer(text: &str) -> Result<Vec<Action>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let items = match value {
        Value::Array(items) => items,
        Value::Object(mut map) => {
            match map.remove("v") {
                Some(v) if v == json!(SCHEMA_VERSION) => {}
                Some(v) => return Err(format!("unsupported schema version {v}: this gateway speaks {SCHEMA_VERSION}")),
                None => return Err("expected an array of actions or {\"v\": 1, \"actions\": [...]}".into()),
            }
            let items = match map.remove("actions") {
                Some(Value::Array(items)) => items,
                None | Some(Value::Null) => Vec::new(),
                Some(_) => return Err("`actions` must be an array".into()),
            };
            if let Some(key) = map.keys().next() {
                return Err(format!("unknown field `{key}`"));
            }
            items
        }
        _ => return Err("expected an array of actions or {\"v\": 1, \"actions\": [...]}".into()),
    };
    if items.len() > MAX_ACTIONS {
        return Err(format!("{} actions: at most {MAX_ACTIONS} per answer", items.len()));
    }
    items.into_iter().enumerate().map(|(i, item)| parse_action(item).map_err(|why| format!("action {i}: {why}"))).collect()
}

fn parse_action(value: Value) -> Result<Action, String> {
    let Value::Object(mut map) = value else {
        return Err("expected an object such as {\"emit\": NAME, \"data\": ANY}".into());
    };
    let action = if let Some(event) = map.remove("emit") {
        let event = string(event, "emit")?;
        check_event_name(&event).map_err(|why| format!("event name {why}"))?;
        let data = map.remove("data").unwrap_or(Value::Null);
        let to = map.remove("to").map(Target::from_json).transpose()?;
        let skip_self = match map.remove("skip_self") {
            None | Some(Value::Bool(false)) => false,
            Some(Value::Bool(true)) if to.is_some() => true,
            Some(Value::Bool(true)) => return Err("`skip_self` needs a `to`".into()),
            Some(_) => return Err("`skip_self` must be a boolean".into()),
        };
        Action::Emit { event, data, to, skip_self }
    } else if let Some(room) = map.remove("join") {
        Action::Join { room: room_name(room, "join")?, sid: optional_sid(&mut map)? }
    } else if let Some(room) = map.remove("leave") {
        Action::Leave { room: room_name(room, "leave")?, sid: optional_sid(&mut map)? }
    } else {
        return Err("expected one of `emit`, `join`, `leave`".into());
    };
    match map.keys().next() {
        Some(key) => Err(format!("unknown field `{key}`")),
        None => Ok(action),
    }
}

fn string(value: Value, field: &str) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s),
        _ => Err(format!("`{field}` must be a string")),
    }
}

fn room_name(value: Value, field: &str) -> Result<String, String> {
    let room = string(value, field)?;
    check_room_name(&room).map_err(|err| format!("`{field}`: {err}"))?;
    Ok(room)
}

fn sid(value: Value) -> Result<Sid, String> {
    string(value, "sid")?.parse().map_err(|_| "`sid` is not a session id".to_string())
}

fn optional_sid(map: &mut Map<String, Value>) -> Result<Option<Sid>, String> {
    map.remove("sid").map(sid).transpose()
}

/// The headers an open hook sees, lower-cased; only those useful to authorize.
fn forwarded_headers(headers: &HeaderMap) -> Value {
    let mut out = Map::new();
    for name in FORWARDED_HEADERS {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            out.insert(name.to_owned(), Value::String(value.to_owned()));
        }
    }
    Value::Object(out)
}

/// The query string without the gateway's own parameters (`sid`, `last_event_id`), so the app
/// sees only what the page added (a token, a room).
fn strip_gateway_params(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or("");
            !pair.is_empty() && key != "sid" && key != "last_event_id"
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A refusal's text: the app's `{"error": "..."}` if it sent one, else the status. Bounded, so it
/// fits a WebSocket close reason.
fn refusal_text(status: u16, body: &str) -> String {
    let reason = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| format!("HTTP {status}"));
    let mut reason: String = reason.chars().filter(|c| !c.is_control()).collect();
    if reason.len() > 80 {
        let mut end = 80;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

/// At most 200 characters of a detail for a log line (an app's error page can be long).
fn brief(detail: &str) -> String {
    let mut out: String = detail.chars().take(200).collect();
    if out.len() < detail.len() {
        out.push('…');
    }
    out
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_in_both_shapes_and_every_action_kind() {
        let sid = Sid::random();
        let text = format!(
            r#"[{{"emit":"response","data":"ok"}},{{"join":"r1"}},{{"leave":"r1","sid":"{sid}"}},
               {{"emit":"chat","data":{{"t":1}},"to":{{"room":"r1"}}}},{{"emit":"x","to":{{"all":true}}}},
               {{"emit":"y","to":{{"sid":"{sid}"}}}},{{"emit":"z","to":{{"room":"r1"}},"skip_self":true}}]"#
        );
        let actions = parse_answer(&text).unwrap();
        assert_eq!(actions.len(), 7);
        assert_eq!(actions[0], Action::Emit { event: "response".into(), data: json!("ok"), to: None, skip_self: false });
        assert_eq!(actions[1], Action::Join { room: "r1".into(), sid: None });
        assert_eq!(actions[2], Action::Leave { room: "r1".into(), sid: Some(sid.clone()) });
        let room = |name: &str| Some(Target::Room(name.into()));
        assert_eq!(actions[3], Action::Emit { event: "chat".into(), data: json!({"t":1}), to: room("r1"), skip_self: false });
        assert_eq!(actions[4], Action::Emit { event: "x".into(), data: Value::Null, to: Some(Target::All), skip_self: false });
        assert_eq!(actions[5], Action::Emit { event: "y".into(), data: Value::Null, to: Some(Target::Sid(sid)), skip_self: false });
        assert_eq!(actions[6], Action::Emit { event: "z".into(), data: Value::Null, to: room("r1"), skip_self: true });
        assert_eq!(parse_answer(r#"{"v":1,"actions":[{"join":"a"}]}"#).unwrap().len(), 1);
        assert_eq!(parse_answer("").unwrap(), vec![]);
        assert_eq!(parse_answer("[]").unwrap(), vec![]);
    }

    #[test]
    fn malformed_answers_say_what_is_wrong() {
        let err = |text: &str| parse_answer(text).unwrap_err();
        assert!(err("nope").contains("not JSON"));
        assert!(err(r#"{"actions":[]}"#).contains("expected an array"));
        assert!(err(r#"{"v":2,"actions":[]}"#).contains("unsupported schema version 2"));
        assert!(err(r#"[{"emit":"a","dat":1}]"#).contains("action 0: unknown field `dat`"));
        assert!(err(r#"[{"join":"a"},{"shout":"b"}]"#).contains("action 1: expected one of"));
        assert!(err(r#"[{"emit":"a\nb"}]"#).contains("control characters"));
        assert!(err(r#"[{"emit":"a","to":{"room":"r","all":true}}]"#).contains("exactly one"));
        assert!(err(r#"[{"emit":"a","to":{"all":false}}]"#).contains("must be true"));
        assert!(err(r#"[{"emit":"a","to":{"sid":"short"}}]"#).contains("not a session id"));
        assert!(err(r#"[{"emit":"a","skip_self":true}]"#).contains("needs a `to`"));
        assert!(err(r#"[{"join":""}]"#).contains("invalid room name: is empty"));
        assert!(err("42").contains("expected an array"));
    }

    #[test]
    fn open_hooks_see_only_the_pages_own_query_and_bounded_refusals() {
        assert_eq!(strip_gateway_params("sid=abc&token=t1&last_event_id=x&room=r"), "token=t1&room=r");
        assert_eq!(strip_gateway_params(""), "");
        assert_eq!(refusal_text(403, r#"{"error":"bad token"}"#), "bad token");
        assert_eq!(refusal_text(401, "<html>"), "HTTP 401");
        assert!(refusal_text(403, &format!(r#"{{"error":"{}"}}"#, "é".repeat(100))).len() <= 80);
    }
}
