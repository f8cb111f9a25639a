//! Cluster mode: the sessions of every node kept in Redis, so that any request of any session
//! may land on any node (`--redis`).
//!
//! The hub stays what transports, the app, upstream forwarding and the publish API talk to; with
//! a [`Cluster`] it keeps its local table only as this node's **mirror** of the sessions it
//! serves, and Redis holds the truth:
//!
//! * **What is durable lives in Redis**: each session's buffer (its last `--buffer` events),
//!   numbers (last event, highest client `seq` handled), which node and transport hold it,
//!   rooms and subject. An emit is acknowledged (the handler's `emit` returns, the publish API
//!   answers) only once its event is in the session's buffer in Redis, so a node that dies
//!   loses nothing a client could resume from.
//! * **Wake-ups go to the node holding the transport.** The emit script appends the event and,
//!   in the same step, publishes it on the channel of the session's owner node
//!   (`sy:node:NODE`), which appends it to its mirror's ring and wakes the attachment. Events
//!   carry their numbers, so a node that finds one missing fetches it from the buffer, and one
//!   seen twice is dropped: order and uniqueness never depend on pub/sub.
//! * **Newest transport wins cluster-wide.** Attaching bumps the session's generation and
//!   publishes a takeover to the previous owner, whose attachment ends as superseded.
//! * **Client events are handled one at a time in arrival order** through a ticket lock in the
//!   session's hash, with leases so that a node that dies holding it holds it up for one lease
//!   at most. The node whose ticket was served keeps it after its event, and handles its next
//!   events of the session without asking Redis, until another node takes a ticket and asks it
//!   to hand the inbox over (see `lease.rs`). A numbered event's mark (the `recv` field) is
//!   written in the same script as the first event the handler emits to the session, so a
//!   reply and the record that its request was handled are made durable together: a re-sent
//!   event is either handled again with no reply yet made, or skipped with its reply already
//!   buffered.
//! * **Expiry is cluster-wide and happens once**: an index of deadlines (`sy:expiry`) is read by
//!   every node; the node that removes an entry first checks the session and, if its grace has
//!   run out, deletes it in the same script and runs the expire hooks. A session whose owner
//!   node stopped renewing its liveness key is detached and gets its grace period.
//!
//! Keys are hash-tagged by sid (see `scripts.rs`), so the same code runs on one Redis and on a
//! Redis Cluster; the few global keys (`sy:sessions`, `sy:expiry`, room member sets,
//! `sy:alive:NODE`, whose value is the node's address (`peers.rs`), the operator page's reports `sy:admin`) are only ever used by single-key
//! commands.

mod answers;
mod batch;
mod link;
mod node;
mod peers;
mod scripts;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, ScriptInvocation, Value};

use crate::protocol::Sid;

use super::event::Body;
use super::{HubError, Transport};

pub(super) use node::run;

/// The longest a client event waits for a node that died holding its session's inbox, and the
/// lease a waiting or handling node renews while it is alive.
pub(super) const INBOX_LEASE: Duration = Duration::from_millis(1500);

/// How long a node's liveness key lives without renewal: a node silent this long is taken for
/// dead, and the sessions it held get their grace period.
const NODE_LEASE: Duration = Duration::from_secs(5);

/// The most room names the operator page's room list looks at in cluster mode (a `SCARD` each,
/// once a second per node with the page's sampler).
const ROOMS_LISTED: usize = 1000;

/// How long a Redis command may take before the node treats Redis as unreachable for it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection to Redis (one server, or a Redis Cluster) shared by every task of the node, and
/// this node's identity in it. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    /// This node's id: its channel is `sy:node:ID`, its liveness key `sy:alive:ID`. A node
    /// that lost Redis takes a new one when it is back (see `node.rs`).
    node: RwLock<Arc<str>>,
    conn: Conn,
    /// Where to subscribe: a plain client for one of the servers (a message published on any
    /// node of a Redis Cluster reaches subscribers on every node).
    subscribe_to: Vec<redis::Client>,
    scripts: scripts::Scripts,
    /// Whether the node's subscription is up: while it is down, events from other nodes cannot
    /// reach this node's transports, so none are served.
    reachable: AtomicBool,
    /// When the connection was made: the origin of [`Cluster::clock_ms`].
    epoch: Instant,
    /// The address other nodes reach this node at, once told (`peers.rs`).
    advertised: std::sync::OnceLock<std::net::SocketAddr>,
}

/// An inbox ticket whose turn came: the ticket, the highest client `seq` handled, the
/// session's rooms as they were then, and when (on [`Cluster::clock_ms`]) the request that got
/// it was sent: its lease runs for [`INBOX_LEASE`] from a moment after that.
pub(super) struct Granted {
    pub(super) ticket: u64,
    pub(super) received: u64,
    pub(super) rooms: Vec<String>,
    pub(super) sent: u64,
}

impl Granted {
    /// From a script's answer after its first fields: `recv`, then the rooms.
    fn from_reply(ticket: u64, sent: u64, rest: &[Value]) -> Granted {
        let received = rest.first().map_or(0, |v| u64::try_from(int(v)).unwrap_or(0));
        Granted { ticket, received, rooms: rest.iter().skip(1).map(text).collect(), sent }
    }
}

/// The command connection: multiplexed (commands of all tasks are pipelined on it) and
/// reconnecting by itself. To a standalone Redis, commands go in batches (see `batch.rs`).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager, batch::Batcher),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(_, batcher) => batcher.query(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(&'a mut self, pipeline: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c, _) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c, _) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// What [`Cluster::attach`] found.
pub(super) enum Attached {
    /// No such session in Redis: expired, or never existed.
    Missing,
    /// The cursor lies beyond the session's last event.
    BadCursor,
    /// Attached: this node holds the session now.
    Held(Holding),
}

/// A session this node just attached to, as Redis has it.
pub(super) struct Holding {
    /// The attachment's generation: a takeover message with a later one supersedes it.
    pub(super) gen: u64,
    /// The highest client `seq` handled.
    pub(super) received: u64,
    /// Where the attachment starts (the cursor, or what was last handed out).
    pub(super) start: u64,
    /// The transport that held the session before, if any did.
    pub(super) previous: Option<Transport>,
    pub(super) subject: Option<Arc<str>>,
    /// The number of the first of `events` (or, with none, the last event's plus one).
    pub(super) first: u64,
    /// The buffered events after `start`, oldest first.
    pub(super) events: Vec<Arc<Body>>,
}

/// What [`Cluster::info`] tells of a session.
pub(super) struct Info {
    pub(super) transport: Option<Transport>,
    pub(super) last_seq: u64,
    pub(super) buffered: usize,
    pub(super) detached_for: Option<Duration>,
    pub(super) attached_since: Option<std::time::SystemTime>,
    pub(super) rooms: Vec<String>,
}

impl Cluster {
    /// Connects to Redis at `url`: one `redis://` or `rediss://` (TLS) URL (a standalone server,
    /// or a node of a Redis Cluster, which is detected), or a comma-separated list of a Redis
    /// Cluster's nodes. `ca` (PEM) is the certificate authority that `rediss://` servers are
    /// checked against; without it, the system's roots.
    pub async fn connect(url: &str, ca: Option<&[u8]>) -> Result<Cluster, redis::RedisError> {
        // rustls needs a crypto provider chosen once per process; another already chosen (by
        // an application embedding the gateway) is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let urls: Vec<&str> = url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
        let certs = || redis::TlsCertificates { client_tls: None, root_cert: ca.map(<[u8]>::to_vec) };
        let open = |u: &str| if u.starts_with("rediss://") { redis::Client::build_with_tls(u, certs()) } else { redis::Client::open(u) };
        let clients = urls.iter().map(|u| open(u)).collect::<Result<Vec<_>, _>>()?;
        let first = clients.first().ok_or_else(|| redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no Redis URL given")))?;
        let clustered = urls.len() > 1 || {
            let mut probe = first.get_multiplexed_async_connection().await?;
            let info: String = redis::cmd("INFO").arg("cluster").query_async(&mut probe).await?;
            info.lines().any(|line| line.trim() == "cluster_enabled:1")
        };
        let scripts = scripts::Scripts::new();
        let conn = if clustered {
            let mut builder = redis::cluster::ClusterClientBuilder::new(urls.clone())
                .connection_timeout(COMMAND_TIMEOUT)
                .response_timeout(COMMAND_TIMEOUT)
                .retries(2);
            if urls.iter().any(|u| u.starts_with("rediss://")) {
                builder = builder.certs(certs());
            }
            let client = builder.build()?;
            Conn::Cluster(client.get_async_connection().await?)
        } else {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(COMMAND_TIMEOUT))
                .set_response_timeout(Some(COMMAND_TIMEOUT))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            let manager = first.get_connection_manager_with_config(config).await?;
            let emit_many = Arc::from(scripts.emit_many.get_hash());
            Conn::Single(manager.clone(), batch::Batcher::start(manager, emit_many, link::Target::of(first)))
        };
        let node = new_node_id();
        tracing::info!(%node, clustered, servers = urls.len(), "cluster mode: connected to Redis");
        Ok(Cluster {
            inner: Arc::new(Inner { node: RwLock::new(node), conn, subscribe_to: clients, scripts, reachable: AtomicBool::new(false),
                                 epoch: Instant::now(), advertised: std::sync::OnceLock::new() }),
        })
    }

    /// This node's id in the cluster.
    pub fn node(&self) -> Arc<str> {
        self.inner.node.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Takes a new node id: what Redis still says the old one holds is then held by a node that
    /// is gone, and gets its grace period (see `node.rs`).
    fn renew_identity(&self) {
        let node = new_node_id();
        tracing::info!(%node, "cluster mode: a new node id");
        *self.inner.node.write().unwrap_or_else(PoisonError::into_inner) = node;
    }

    /// Whether this node is connected to Redis and subscribed to its channel.
    pub fn is_reachable(&self) -> bool {
        self.inner.reachable.load(Ordering::Acquire)
    }

    /// Waits until the node is subscribed and its commands go through (the gateway's task
    /// subscribes once the gateway is built), or `limit` passes; returns whether it is. A
    /// server starts listening after this, so that its first request finds the node ready.
    pub async fn ready(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.is_reachable() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.is_reachable()
    }

    fn set_reachable(&self, reachable: bool) {
        self.inner.reachable.store(reachable, Ordering::Release);
    }

    /// Runs a script invocation, timing it and counting failures.
    async fn run(&self, op: &'static str, invocation: &ScriptInvocation<'_>) -> Result<Value, HubError> {
        let mut conn = self.inner.conn.clone();
        let started = Instant::now();
        let result = invocation.invoke_async::<Value>(&mut conn).await;
        self.record(op, started, result)
    }

    /// Runs one command, timing it and counting failures.
    async fn cmd(&self, op: &'static str, cmd: &Cmd) -> Result<Value, HubError> {
        let mut conn = self.inner.conn.clone();
        let started = Instant::now();
        let result = cmd.query_async::<Value>(&mut conn).await;
        self.record(op, started, result)
    }

    fn record<T>(&self, op: &'static str, started: Instant, result: redis::RedisResult<T>) -> Result<T, HubError> {
        metrics::histogram!("switchyard_redis_command_seconds", "op" => op).record(started.elapsed().as_secs_f64());
        result.map_err(|err| self.failed(op, &err))
    }

    /// Counts and logs a failed request.
    fn failed(&self, op: &'static str, err: &dyn std::fmt::Display) -> HubError {
        metrics::counter!("switchyard_redis_errors_total", "op" => op).increment(1);
        tracing::warn!(op, %err, "Redis command failed");
        HubError::Unavailable
    }

    /// Records a new session, held by this node.
    pub(super) async fn create(&self, sid: &Sid, transport: Transport, ttl: Duration, recheck: Duration) -> Result<(), HubError> {
        let mut invocation = self.inner.scripts.create.prepare_invoke();
        keys(&mut invocation, sid);
        invocation.arg(&*self.node()).arg(transport.as_str()).arg(millis(ttl)).arg("");
        self.run("create", &invocation).await?;
        // This node's clock: a deadline early or late by the nodes' skew is only checked early
        // or late (the check itself uses Redis's clock).
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let deadline = millis(now) + millis(recheck);
        // Two keys in two slots (on a Redis Cluster): two commands, sent together.
        let (sessions, expiry) = (redis::cmd("SADD").arg("sy:sessions").arg(sid.as_str()).clone(), redis::cmd("ZADD").arg("sy:expiry").arg(deadline).arg(sid.as_str()).clone());
        let (added, indexed) = tokio::join!(self.cmd("create", &sessions), self.cmd("create", &expiry));
        added.and(indexed).map(drop)
    }

    /// Redis's clock, in milliseconds since the epoch (what the scripts measure time by).
    async fn redis_now_ms(&self) -> Result<u64, HubError> {
        let value = self.cmd("time", &redis::cmd("TIME")).await?;
        let parts = array(value);
        let secs = parts.first().map_or(0, int);
        let micros = parts.get(1).map_or(0, int);
        Ok(u64::try_from(secs * 1000 + micros / 1000).unwrap_or(0))
    }

    /// Attaches this node to session `sid` from `cursor` (`None`: after what was last handed
    /// out); a transport held elsewhere is told it was superseded. `buffer`: how many events a
    /// session keeps (`--buffer`).
    pub(super) async fn attach(&self, sid: &Sid, transport: Transport, cursor: Option<u64>, ttl: Duration, buffer: usize) -> Result<Attached, HubError> {
        let mut invocation = self.inner.scripts.attach.prepare_invoke();
        keys(&mut invocation, sid);
        let cursor = cursor.map_or(-1, |c| i64::try_from(c).unwrap_or(i64::MAX));
        invocation.arg(&*self.node()).arg(transport.as_str()).arg(cursor).arg(millis(ttl)).arg(sid.as_str()).arg(buffer);
        let reply = array(self.run("attach", &invocation).await?);
        match reply.first().map(int) {
            Some(-1) | None => return Ok(Attached::Missing),
            Some(-2) => return Ok(Attached::BadCursor),
            Some(_) => {}
        }
        let field = |i: usize| reply.get(i).map_or(0, int);
        let (gen, last, received, start) = (field(0), field(1), field(2), field(3));
        let previous = reply.get(4).map(text).and_then(|t| Transport::ALL.into_iter().find(|tr| tr.as_str() == t));
        let subject = reply.get(5).map(text).filter(|s| !s.is_empty()).map(Arc::from);
        let events: Vec<Arc<Body>> = reply.iter().skip(6).map(entry).collect();
        let last = u64::try_from(last).unwrap_or(0);
        Ok(Attached::Held(Holding {
            gen: u64::try_from(gen).unwrap_or(0),
            received: u64::try_from(received).unwrap_or(0),
            start: u64::try_from(start).unwrap_or(0),
            previous,
            subject,
            first: last + 1 - events.len() as u64,
            events,
        }))
    }

    /// Detaches this node's attachment `gen` (if it still holds the session) and starts the
    /// session's grace period in the expiry index.
    pub(super) async fn detach(&self, sid: &Sid, gen: u64, delivered: u64, ttl: Duration, grace: Duration) -> Result<(), HubError> {
        let mut invocation = self.inner.scripts.detach.prepare_invoke();
        keys(&mut invocation, sid);
        invocation.arg(&*self.node()).arg(gen).arg(delivered).arg(millis(ttl)).arg(millis(grace));
        let deadline = int(&self.run("detach", &invocation).await?);
        if deadline > 0 {
            self.cmd("detach", redis::cmd("ZADD").arg("sy:expiry").arg(deadline).arg(sid.as_str())).await?;
        }
        Ok(())
    }

    /// Appends an event to session `sid`'s buffer (recording the client `seq` `mark` as
    /// handled, if not 0) and wakes the node holding its transport. Returns the event's number
    /// and whether this node holds the transport.
    pub(super) async fn emit(&self, sid: &Sid, body: &Arc<Body>, buffer: usize, mark: u64) -> Result<(u64, bool), HubError> {
        if let Conn::Single(_, batcher) = &self.inner.conn {
            // Merged with the batch's other emits into one script call (see `batch.rs`).
            let started = Instant::now();
            let emit = batch::Emit { node: self.node(), buffer, sid: sid.clone(), body: body.clone(), mark };
            match batcher.emit(emit).await {
                // Redis lost its scripts (a restart): the cold path below.
                Err(link::Failure::NoScript) => {}
                result => {
                    emit_seconds().record(started.elapsed().as_secs_f64());
                    return result.map_err(|err| self.failed("emit", &err))?.ok_or(HubError::NoSession);
                }
            }
        }
        // Boxed: the path every emit takes stays a small future.
        Box::pin(self.emit_alone(sid, body, buffer, mark)).await
    }

    /// An emit with the one-event `emit` script: every emit on a Redis Cluster, and on a
    /// standalone Redis the one that found the batch's script gone (which is loaded again here
    /// for the next batches).
    async fn emit_alone(&self, sid: &Sid, body: &Body, buffer: usize, mark: u64) -> Result<(u64, bool), HubError> {
        let node = self.node();
        if let Conn::Single(..) = &self.inner.conn {
            let mut conn = self.inner.conn.clone();
            let _ = self.inner.scripts.emit_many.load_async(&mut conn).await;
        }
        let reply = array(self.emit_one(sid, body, buffer, mark, &node).await?);
        match reply.first().map(int) {
            Some(seq) if seq > 0 => {
                let mine = match reply.get(1) {
                    Some(Value::BulkString(owner)) => owner.as_slice() == node.as_bytes(),
                    Some(Value::SimpleString(owner)) => *owner == *node,
                    _ => false,
                };
                Ok((u64::try_from(seq).unwrap_or(0), mine))
            }
            _ => Err(HubError::NoSession),
        }
    }

    /// The `emit` script for one event.
    async fn emit_one(&self, sid: &Sid, body: &Body, buffer: usize, mark: u64, node: &str) -> Result<Value, HubError> {
        let mut invocation = self.inner.scripts.emit.prepare_invoke();
        keys(&mut invocation, sid);
        invocation.arg(node).arg(body.entry()).arg(buffer).arg(mark).arg(sid.as_str());
        self.run("emit", &invocation).await
    }

    /// The buffered events of `sid` after `after`: the number of the first returned, and the
    /// events. `None`: the session is gone. `buffer`: how many events a session keeps.
    pub(super) async fn fetch(&self, sid: &Sid, after: u64, buffer: usize) -> Result<Option<(u64, Vec<Arc<Body>>)>, HubError> {
        let mut invocation = self.inner.scripts.fetch.prepare_invoke();
        keys(&mut invocation, sid);
        invocation.arg(after).arg(buffer);
        let reply = array(self.run("fetch", &invocation).await?);
        match reply.first().map(int) {
            Some(last) if last >= 0 => {
                let first = reply.get(1).map_or(0, int);
                Ok(Some((u64::try_from(first).unwrap_or(0), reply.iter().skip(2).map(entry).collect())))
            }
            _ => Ok(None),
        }
    }

    /// Takes a ticket of the session's inbox and waits for its turn. `mine` is the ticket this
    /// node still holds as a lease (0: none): kept if no other node waits for the inbox, else
    /// given up in the same step. `mark` is the highest client `seq` this node handled, recorded
    /// on the way. Until the ticket is released, the lease is this node's: its ticket task
    /// renews it while a handler runs (see `lease.rs`).
    pub(super) async fn enter(&self, sid: &Sid, mine: u64, mark: u64) -> Result<Granted, HubError> {
        let mut invocation = self.inner.scripts.enter.prepare_invoke();
        keys(&mut invocation, sid);
        invocation.arg(millis(INBOX_LEASE)).arg(&*self.node()).arg(mine).arg(mark).arg(sid.as_str());
        let sent = self.clock_ms();
        let reply = array(self.run("inbox", &invocation).await?);
        let ticket = match reply.first().map(int) {
            Some(t) if t > 0 => u64::try_from(t).unwrap_or(0),
            _ => return Err(HubError::NoSession),
        };
        if reply.get(1).map(int) == Some(1) {
            return Ok(Granted::from_reply(ticket, sent, &reply[2..]));
        }
        // Another node holds the inbox (asked by the script to hand it over) or waits for it:
        // wait for the ticket's turn, renewing it, with a short backoff (the wait is as long as
        // one handler, or the holder's hand-over).
        let mut pause = Duration::from_micros(250);
        loop {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
            let mut invocation = self.inner.scripts.try_inbox.prepare_invoke();
            keys(&mut invocation, sid);
            invocation.arg(ticket).arg(millis(INBOX_LEASE)).arg(&*self.node()).arg(sid.as_str());
            let sent = self.clock_ms();
            let reply = array(self.run("inbox", &invocation).await?);
            match reply.first().map(int) {
                Some(1) => return Ok(Granted::from_reply(ticket, sent, &reply[1..])),
                Some(0) => continue,
                Some(-1) => return Err(HubError::NoSession),
                // Skipped as dead (this node stalled past the lease): take a new ticket.
                _ => return Box::pin(self.enter(sid, 0, mark)).await,
            }
        }
    }

    /// Extends the lease of a granted inbox ticket (a handler still running).
    pub(super) async fn renew(&self, sid: &Sid, ticket: u64) -> Result<(), HubError> {
        let mut invocation = self.inner.scripts.renew.prepare_invoke();
        keys(&mut invocation, sid);
        invocation.arg(ticket).arg(millis(INBOX_LEASE));
        self.run("inbox", &invocation).await.map(drop)
    }

    /// Releases an inbox ticket (0: none, the mark alone), recording `mark` as the highest
    /// client `seq` handled.
    pub(super) async fn release(&self, sid: &Sid, ticket: u64, mark: u64) -> Result<(), HubError> {
        let mut invocation = self.inner.scripts.release.prepare_invoke();
        keys(&mut invocation, sid);
        invocation.arg(ticket).arg(mark);
        self.run("inbox", &invocation).await.map(drop)
    }

    /// Milliseconds on this node's monotonic clock since the cluster connection was made: what
    /// a lease is timed by on the node (see `lease.rs`).
    pub(super) fn clock_ms(&self) -> u64 {
        millis(self.inner.epoch.elapsed())
    }

    /// Adds the session to a room. `Ok(true)`: it joined; `Ok(false)`: it was a member.
    pub(super) async fn join(&self, sid: &Sid, room: &str) -> Result<bool, HubError> {
        let mut invocation = self.inner.scripts.join.prepare_invoke();
        keys(&mut invocation, sid);
        invocation.arg(room).arg(&*self.node()).arg(sid.as_str());
        match int(&self.run("rooms", &invocation).await?) {
            -1 => Err(HubError::NoSession),
            added => {
                self.cmd("rooms", redis::cmd("SADD").arg(room_key(room)).arg(sid.as_str())).await?;
                // The index of room names, for the operator page: added to on every join, pruned
                // by its reader of rooms found empty (a room pruned in a race with a join comes
                // back with the next join).
                self.cmd("rooms", redis::cmd("SADD").arg("sy:rooms").arg(room)).await?;
                Ok(added == 1)
            }
        }
    }

    /// Takes the session out of a room. `Ok(false)`: it was not a member.
    pub(super) async fn leave(&self, sid: &Sid, room: &str) -> Result<bool, HubError> {
        let mut invocation = self.inner.scripts.leave.prepare_invoke();
        keys(&mut invocation, sid);
        invocation.arg(room).arg(&*self.node()).arg(sid.as_str());
        match int(&self.run("rooms", &invocation).await?) {
            -1 => Err(HubError::NoSession),
            removed => {
                self.cmd("rooms", redis::cmd("SREM").arg(room_key(room)).arg(sid.as_str())).await?;
                Ok(removed == 1)
            }
        }
    }

    /// The rooms of a session, sorted.
    pub(super) async fn rooms(&self, sid: &Sid) -> Result<Vec<String>, HubError> {
        let reply = self.cmd("rooms", redis::cmd("SMEMBERS").arg(format!("sy:{{{}}}:r", sid.as_str()))).await?;
        let mut rooms: Vec<String> = array(reply).iter().map(text).collect();
        rooms.sort();
        Ok(rooms)
    }

    /// The members of a room, cluster-wide.
    pub(super) async fn members(&self, room: &str) -> Result<Vec<Sid>, HubError> {
        let reply = self.cmd("rooms", redis::cmd("SMEMBERS").arg(room_key(room))).await?;
        Ok(array(reply).iter().filter_map(|v| text(v).parse().ok()).collect())
    }

    /// How many rooms have members, and the `top` largest with their member counts, largest
    /// first: from the index `sy:rooms`, at most [`ROOMS_LISTED`] of its names looked at (one
    /// `SCARD` each). Names of rooms found empty leave the index.
    pub(super) async fn busiest_rooms(&self, top: usize) -> Result<(usize, Vec<(String, usize)>), HubError> {
        use futures_util::StreamExt;
        let mut names = Vec::new();
        let mut cursor = 0u64;
        loop {
            let reply = array(self.cmd("rooms", redis::cmd("SSCAN").arg("sy:rooms").arg(cursor).arg("COUNT").arg(500)).await?);
            cursor = reply.first().map_or(0, |v| text(v).parse().unwrap_or(0));
            if let Some(batch) = reply.get(1) {
                names.extend(array(batch.clone()).iter().map(text));
            }
            if cursor == 0 || names.len() >= ROOMS_LISTED {
                break;
            }
        }
        names.truncate(ROOMS_LISTED);
        let counted: Vec<(String, usize)> = futures_util::stream::iter(names)
            .map(|room| async move {
                let n = self.cmd("rooms", redis::cmd("SCARD").arg(room_key(&room))).await.map_or(0, |v| usize::try_from(int(&v)).unwrap_or(0));
                (room, n)
            })
            .buffer_unordered(64)
            .collect()
            .await;
        let (mut rooms, empty): (Vec<_>, Vec<_>) = counted.into_iter().partition(|(_, n)| *n > 0);
        if !empty.is_empty() {
            let mut prune = redis::cmd("SREM");
            prune.arg("sy:rooms");
            for (room, _) in &empty {
                prune.arg(room);
            }
            let _ = self.cmd("rooms", &prune).await;
        }
        let count = rooms.len();
        rooms.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        rooms.truncate(top);
        Ok((count, rooms))
    }

    /// Drops sids that name no session any more from a room's member set.
    pub(super) async fn forget_members(&self, room: &str, gone: &[Sid]) {
        if gone.is_empty() {
            return;
        }
        let mut cmd = redis::cmd("SREM");
        cmd.arg(room_key(room));
        for sid in gone {
            cmd.arg(sid.as_str());
        }
        let _ = self.cmd("rooms", &cmd).await;
    }

    /// Every session id in the cluster, a batch at a time (for `emit_all`).
    pub(super) async fn all_sessions(&self) -> Result<Vec<Sid>, HubError> {
        let mut cursor = 0u64;
        let mut sids = Vec::new();
        loop {
            let reply = array(self.cmd("sessions", redis::cmd("SSCAN").arg("sy:sessions").arg(cursor).arg("COUNT").arg(1000)).await?);
            cursor = reply.first().map_or(0, |v| text(v).parse().unwrap_or(0));
            if let Some(batch) = reply.get(1) {
                sids.extend(array(batch.clone()).iter().filter_map(|v| text(v).parse().ok()));
            }
            if cursor == 0 {
                return Ok(sids);
            }
        }
    }

    /// A snapshot of one session; `None` when it is gone. `buffer`: how many events a session
    /// keeps.
    pub(super) async fn info(&self, sid: &Sid, buffer: usize) -> Result<Option<Info>, HubError> {
        let mut invocation = self.inner.scripts.info.prepare_invoke();
        keys(&mut invocation, sid);
        invocation.arg(buffer);
        let reply = array(self.run("info", &invocation).await?);
        if reply.is_empty() {
            return Ok(None);
        }
        let field = |i: usize| reply.get(i).map(text).unwrap_or_default();
        let number = |i: usize| field(i).parse::<u64>().ok();
        let attached = !field(0).is_empty();
        let now = number(6).unwrap_or(0);
        let mut rooms: Vec<String> = reply.iter().skip(8).map(text).collect();
        rooms.sort();
        let ms_ago = |at: u64| Duration::from_millis(now.saturating_sub(at));
        Ok(Some(Info {
            transport: if attached { Transport::ALL.into_iter().find(|t| t.as_str() == field(1)) } else { None },
            last_seq: number(2).unwrap_or(0),
            buffered: reply.get(3).map_or(0, |v| usize::try_from(int(v)).unwrap_or(0)),
            detached_for: if attached { None } else { number(4).map(ms_ago) },
            // Redis's clock, so that every node tells the same instant.
            attached_since: if attached { number(5).map(|at| std::time::UNIX_EPOCH + Duration::from_millis(at)) } else { None },
            rooms,
        }))
    }

    /// Whether the session exists, and its subject: `None` when it is gone.
    pub(super) async fn lookup(&self, sid: &Sid) -> Result<Option<Option<Arc<str>>>, HubError> {
        let mut invocation = self.inner.scripts.lookup.prepare_invoke();
        keys(&mut invocation, sid);
        let reply = array(self.run("lookup", &invocation).await?);
        Ok(reply.first().map(|s| Some(text(s)).filter(|s| !s.is_empty()).map(Arc::from)))
    }

    /// Records who opened the session.
    pub(super) async fn set_subject(&self, sid: &Sid, subject: &str) -> Result<(), HubError> {
        self.cmd("subject", redis::cmd("HSET").arg(session_key(sid)).arg("sub").arg(subject)).await.map(drop)
    }

    /// Removes a session at once, with no expire hook.
    pub(super) async fn remove(&self, sid: &Sid) -> Result<(), HubError> {
        let mut invocation = self.inner.scripts.remove.prepare_invoke();
        keys(&mut invocation, sid);
        let rooms = array(self.run("remove", &invocation).await?);
        for room in rooms.iter().map(text) {
            self.forget_members(&room, std::slice::from_ref(sid)).await;
        }
        let (sessions, expiry) = (redis::cmd("SREM").arg("sy:sessions").arg(sid.as_str()).clone(), redis::cmd("ZREM").arg("sy:expiry").arg(sid.as_str()).clone());
        let (removed, unindexed) = tokio::join!(self.cmd("remove", &sessions), self.cmd("remove", &expiry));
        removed.and(unindexed).map(drop)
    }
}

impl Cluster {
    /// Publishes this node's operator-page report (`report`, the admin module's JSON) under
    /// this node's id in the one hash of reports, `sy:admin` (a single key: the same on a Redis
    /// Cluster). Each node's sampler calls this once a second.
    pub async fn publish_admin(&self, report: &str) -> Result<(), HubError> {
        self.cmd("admin", redis::cmd("HSET").arg(ADMIN_KEY).arg(&*self.node()).arg(report)).await.map(drop)
    }

    /// Every node's operator-page report, as `(node id, report)`: what [`Cluster::publish_admin`]
    /// left, of live nodes and of gone ones alike (the reader tells them apart by the reports'
    /// timestamps, and forgets gone ones with [`Cluster::forget_admin`]).
    pub async fn admin_reports(&self) -> Result<Vec<(String, String)>, HubError> {
        let reply = self.cmd("admin", redis::cmd("HGETALL").arg(ADMIN_KEY)).await?;
        Ok(match reply {
            Value::Map(pairs) => pairs.iter().map(|(k, v)| (text(k), text(v))).collect(),
            other => array(other).chunks_exact(2).map(|pair| (text(&pair[0]), text(&pair[1]))).collect(),
        })
    }

    /// Drops the reports of nodes that are gone, so the hash does not grow with dead node ids.
    pub async fn forget_admin(&self, nodes: &[String]) -> Result<(), HubError> {
        if nodes.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(ADMIN_KEY);
        for node in nodes {
            cmd.arg(node.as_str());
        }
        self.cmd("admin", &cmd).await.map(drop)
    }
}

/// The `emit` series of `switchyard_redis_command_seconds`, registered once: the macro builds and
/// looks up its key on every call, and an emit is the request of every event. Taken at the first
/// emit, after the gateway installed its recorder (see `metrics.rs`).
fn emit_seconds() -> &'static metrics::Histogram {
    static EMIT: std::sync::OnceLock<metrics::Histogram> = std::sync::OnceLock::new();
    EMIT.get_or_init(|| metrics::histogram!("switchyard_redis_command_seconds", "op" => "emit"))
}

/// The hash of the nodes' operator-page reports, by node id.
const ADMIN_KEY: &str = "sy:admin";

fn new_node_id() -> Arc<str> {
    Arc::from(format!("{:016x}", rand::random::<u64>()))
}

/// The keys of session `sid`, in the order every script takes them: `sy:{SID}:s`, `:b`, `:r`,
/// `:w`. Written into one buffer rather than formatted: this runs for every Redis request of
/// every event.
fn keys(invocation: &mut ScriptInvocation<'_>, sid: &Sid) {
    let sid = sid.as_str().as_bytes();
    let mut key = Vec::with_capacity(sid.len() + 7);
    key.extend_from_slice(b"sy:{");
    key.extend_from_slice(sid);
    key.extend_from_slice(b"}:s");
    let last = key.len() - 1;
    for suffix in [b's', b'b', b'r', b'w'] {
        key[last] = suffix;
        invocation.key(key.as_slice());
    }
}

fn session_key(sid: &Sid) -> String {
    format!("sy:{{{}}}:s", sid.as_str())
}

fn room_key(room: &str) -> String {
    format!("sy:room:{{{room}}}")
}

/// A duration in whole milliseconds, as Redis takes them.
pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn array(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        Value::Nil => Vec::new(),
        other => vec![other],
    }
}

fn int(value: &Value) -> i64 {
    match value {
        Value::Int(n) => *n,
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok().and_then(|s| s.parse().ok()).unwrap_or(0),
        Value::SimpleString(s) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(n) => n.to_string(),
        _ => String::new(),
    }
}

/// A buffered event, `name\ndata` (see [`Body::entry`]), as a body.
fn entry(value: &Value) -> Arc<Body> {
    let raw = text(value);
    let (head, data) = raw.split_once('\n').unwrap_or((raw.as_str(), "null"));
    Body::from_entry(head, data)
}
