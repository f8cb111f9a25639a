//! The node's commands to a standalone Redis, sent in batches: one write (and, in Redis, one
//! read) for every command that queued up while the batch before was on its way.
//!
//! Every emit, inbox ticket and lookup of every session of the node goes to Redis over one
//! multiplexed connection. Sent one by one, each costs a `write` on the node and a `read` and
//! a `write` in Redis, which share the machine with the node: at tens of thousands of events a
//! second those system calls are a large part of what an event costs on both sides
//! (docs/performance.md, "Cluster mode"). Here one task sends the commands: it takes every
//! command waiting and sends them as one pipeline, with at most [`IN_FLIGHT`] batches on their
//! way at once. With one command waiting it is one request as before; under load a batch holds
//! what arrived while the batches before were on their way, and a command waits at most that
//! long more.
//!
//! Commands keep the order they were queued in (one sender, answers in order), so what one task
//! sends after another's answer came is still run after it; within one batch no command waits
//! for another's answer, so their order there is free. That is what lets the emits of a batch
//! go as **one call** of the `emit_many` script (the `emit` script's steps, once per event, in
//! the order they were queued): Lua's cost per call is then shared by the batch's events. A
//! server error answers its own command only (a `NOSCRIPT` is then retried by the caller's
//! script invocation, which loads the script through here too); a connection error answers
//! every command of its batch.
//!
//! The emits go over a connection of their own, written and read by hand (`link.rs`), when
//! Redis is reached over plain TCP; with TLS (`rediss://`) they are calls in the pipeline of
//! the `redis` crate's connection like every other command. Either way one batch is one write,
//! and the emits of a batch one script call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, RedisError, RedisFuture, RedisResult, Value};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::protocol::Sid;

use super::super::event::Body;
use super::link::{self, Caller, Emitted, Failure, Link, Target};

/// The most commands in one batch: a bound on the write and on what one slow batch holds up.
const MAX_BATCH: usize = 256;

/// The most batches on their way at once: enough for the node to send the next while Redis runs
/// one (a publish to thousands of sessions streams through), few enough that commands queue up
/// into batches under load.
const IN_FLIGHT: usize = 2;

/// How long emits fail at once after the emit connection could not be opened, before the next
/// batch tries again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

type Answer = oneshot::Sender<RedisResult<Value>>;

type EmitAnswer = Caller;

/// A command waiting for its batch, and where its answer goes.
enum Job {
    Cmd(Cmd, Answer),
    Emit(Emit, EmitAnswer),
}

/// One event to append. Nothing of it is copied before the batch is made: the command is
/// written once, into the batch's script call (the keys are made there from the sid, by the
/// script).
pub(super) struct Emit {
    /// The emitting node's id (owner checks, wake-ups).
    pub(super) node: Arc<str>,
    /// The session's buffer length (`--buffer`).
    pub(super) buffer: usize,
    pub(super) sid: Sid,
    pub(super) body: Arc<Body>,
    /// The client `seq` to record as handled (0: none).
    pub(super) mark: u64,
}

/// Where the answers of one command of a batch go: one caller, or the callers of the emits
/// merged into it (a `[seq, mine]` pair each).
enum Slot {
    One(Answer),
    Emits(Vec<EmitAnswer>),
}

/// A batch sent: its commands' answer slots, the answers on their way, and its place among the
/// batches in flight.
struct Sent {
    answers: Vec<Slot>,
    reply: Pin<Box<dyn Future<Output = RedisResult<Vec<Value>>> + Send>>,
    _permit: Arc<OwnedSemaphorePermit>,
}

/// The sending side: cheap to clone; the tasks end when every clone is dropped.
#[derive(Clone)]
pub(super) struct Batcher {
    jobs: mpsc::UnboundedSender<Job>,
}

/// The SHA1 of the `emit_many` script, which [`Batcher::emit`]'s callers load when Redis
/// answers `NOSCRIPT`.
type Sha = Arc<str>;

impl Batcher {
    /// Starts the tasks that send the commands over `conn` and hand out the answers (on the
    /// current Tokio runtime). The emits go over a connection of their own to `target` if given
    /// (see `link.rs`), else over `conn` too.
    pub(super) fn start(conn: ConnectionManager, emit_many: Sha, target: Option<Target>) -> Batcher {
        let (jobs, queue) = mpsc::unbounded_channel();
        let (sent, replies) = mpsc::unbounded_channel();
        let emits = target.map(|target| Emits { target, link: None, retry_at: None, out: Vec::new() });
        tokio::spawn(send(conn, emit_many, emits, queue, sent));
        tokio::spawn(answer(replies));
        Batcher { jobs }
    }

    /// Sends one command with the next batch and waits for its answer.
    pub(super) fn query<'a>(&'a self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (answer, answered) = oneshot::channel();
            self.jobs.send(Job::Cmd(cmd.clone(), answer)).map_err(|_| gone())?;
            answered.await.map_err(|_| gone())?
        })
    }

    /// Appends one event with the next batch (see [`Emit`]).
    pub(super) async fn emit(&self, emit: Emit) -> Result<Emitted, Failure> {
        let gone = || Failure::Redis("the batching task is gone".to_owned());
        let (answer, answered) = oneshot::channel();
        self.jobs.send(Job::Emit(emit, answer)).map_err(|_| gone())?;
        answered.await.map_err(|_| gone())?
    }
}

/// The emit connection (`link.rs`) as the batching task keeps it.
struct Emits {
    target: Target,
    /// The connection, once opened; replaced when it failed.
    link: Option<Link>,
    /// Until when emits fail at once: opening the connection failed.
    retry_at: Option<Instant>,
    /// The batch's calls as RESP, reused from batch to batch.
    out: Vec<u8>,
}

impl Emits {
    /// Writes the batch's emits, one `emit_many` call for each run of them (see [`runs`]), and
    /// hands their callers to the connection's reader.
    async fn send(&mut self, sha: &str, runs: Vec<Vec<(Emit, EmitAnswer)>>, entry: &mut Vec<u8>, permit: Arc<OwnedSemaphorePermit>) {
        self.out.clear();
        let mut calls: Vec<Vec<Caller>> = Vec::with_capacity(runs.len());
        for run in runs {
            link::array(&mut self.out, 5 + 3 * run.len());
            link::bulk(&mut self.out, b"EVALSHA");
            link::bulk(&mut self.out, sha.as_bytes());
            link::bulk(&mut self.out, b"0");
            link::bulk(&mut self.out, run[0].0.node.as_bytes());
            link::bulk(&mut self.out, itoa::Buffer::new().format(run[0].0.buffer).as_bytes());
            let mut callers = Vec::with_capacity(run.len());
            for (emit, answer) in run {
                link::bulk(&mut self.out, emit.sid.as_str().as_bytes());
                entry.clear();
                emit.body.write_entry(entry);
                link::bulk(&mut self.out, entry);
                link::bulk(&mut self.out, itoa::Buffer::new().format(emit.mark).as_bytes());
                callers.push(answer);
            }
            calls.push(callers);
        }
        if self.link.as_ref().is_none_or(Link::is_dead) {
            self.link = None;
            if self.retry_at.is_some_and(|at| Instant::now() < at) {
                link::fail_all(calls, &Failure::Redis("Redis is unreachable".to_owned()));
                return;
            }
            match Link::open(&self.target).await {
                Ok(opened) => {
                    self.link = Some(opened);
                    self.retry_at = None;
                }
                Err(failure) => {
                    self.retry_at = Some(Instant::now() + RECONNECT_PAUSE);
                    link::fail_all(calls, &failure);
                    return;
                }
            }
        }
        let link = self.link.as_mut().expect("opened above");
        link.send(&self.out, calls, permit).await;
    }
}

/// Makes batches of what waits, once one of the [`IN_FLIGHT`] places is free, and puts each on
/// the connection before the next is made (its first poll queues it there), so they reach
/// Redis in order.
async fn send(conn: ConnectionManager, emit_many: Sha, mut own: Option<Emits>, mut queue: mpsc::UnboundedReceiver<Job>, sent: mpsc::UnboundedSender<Sent>) {
    let places = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut batch = Vec::new();
    let mut entry = Vec::new();
    while let Some(first) = queue.recv().await {
        let Ok(permit) = places.clone().acquire_owned().await else { return };
        let permit = Arc::new(permit);
        // The tasks woken with this one (the connections whose events just came in) run first
        // and queue their emits: a batch then holds them, rather than the next batch.
        tokio::task::yield_now().await;
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut cmds = Vec::with_capacity(batch.len());
        let mut answers = Vec::with_capacity(batch.len());
        let mut emits = Vec::new();
        for job in batch.drain(..) {
            match job {
                Job::Cmd(cmd, answer) => {
                    cmds.push(cmd);
                    answers.push(Slot::One(answer));
                }
                Job::Emit(emit, answer) => emits.push((emit, answer)),
            }
        }
        if !emits.is_empty() {
            let runs = runs(emits);
            match own.as_mut() {
                Some(own) => own.send(&emit_many, runs, &mut entry, permit.clone()).await,
                // Without a connection of their own, the emits are calls in the pipeline.
                None => {
                    for run in runs {
                        let mut cmd = redis::cmd("EVALSHA");
                        cmd.arg(&*emit_many).arg(0).arg(&*run[0].0.node).arg(run[0].0.buffer);
                        let mut callers = Vec::with_capacity(run.len());
                        for (emit, answer) in run {
                            entry.clear();
                            emit.body.write_entry(&mut entry);
                            cmd.arg(emit.sid.as_str()).arg(&entry[..]).arg(emit.mark);
                            callers.push(answer);
                        }
                        cmds.push(cmd);
                        answers.push(Slot::Emits(callers));
                    }
                }
            }
        }
        if cmds.is_empty() {
            continue;
        }
        let mut conn = conn.clone();
        let mut reply: Pin<Box<dyn Future<Output = RedisResult<Vec<Value>>> + Send>> = if cmds.len() == 1 {
            let cmd = cmds.pop().expect("one command");
            Box::pin(async move { conn.req_packed_command(&cmd).await.map(|value| vec![value]) })
        } else {
            let mut pipe = redis::pipe();
            for cmd in cmds {
                pipe.add_command(cmd);
            }
            let count = answers.len();
            Box::pin(async move { conn.req_packed_commands(&pipe, 0, count).await })
        };
        match futures_util::poll!(reply.as_mut()) {
            Poll::Ready(result) => hand_out(answers, result),
            Poll::Pending => {
                if sent.send(Sent { answers, reply, _permit: permit }).is_err() {
                    return;
                }
            }
        }
    }
}

/// A batch's emits in runs with the same node id and buffer, in the order they were queued:
/// each run is one `emit_many` call, which takes both once (one call per batch, but for the
/// moment a node takes a new id).
fn runs(emits: Vec<(Emit, EmitAnswer)>) -> Vec<Vec<(Emit, EmitAnswer)>> {
    let mut runs: Vec<Vec<(Emit, EmitAnswer)>> = Vec::new();
    for (emit, answer) in emits {
        match runs.last_mut() {
            Some(run) if run[0].0.node == emit.node && run[0].0.buffer == emit.buffer => run.push((emit, answer)),
            _ => runs.push(vec![(emit, answer)]),
        }
    }
    runs
}

/// Waits for the batches' answers, in the order they were sent, and hands them out.
async fn answer(mut replies: mpsc::UnboundedReceiver<Sent>) {
    while let Some(Sent { answers, reply, _permit }) = replies.recv().await {
        hand_out(answers, reply.await);
    }
}

/// Gives each command of a batch its answer: its own server error if it failed, the batch's
/// error if the batch did.
fn hand_out(answers: Vec<Slot>, result: RedisResult<Vec<Value>>) {
    match result {
        Ok(values) if values.len() == answers.len() => {
            for (slot, value) in answers.into_iter().zip(values) {
                match slot {
                    Slot::One(answer) => drop(answer.send(match value {
                        Value::ServerError(err) => Err(err.into()),
                        value => Ok(value),
                    })),
                    Slot::Emits(answers) => hand_out_emits(answers, value),
                }
            }
        }
        Ok(_) => answers.into_iter().for_each(|slot| fail(slot, &broken("a batch answered with the wrong count"))),
        Err(err) => answers.into_iter().for_each(|slot| fail(slot, &err)),
    }
}

/// The `emit_many` script's answer, `[seq, mine]` per event in order, to each event's caller.
fn hand_out_emits(answers: Vec<EmitAnswer>, value: Value) {
    match value {
        Value::Array(pairs) if pairs.len() == answers.len() * 2 => {
            for (answer, pair) in answers.into_iter().zip(pairs.chunks_exact(2)) {
                let emitted = match pair {
                    [Value::Int(seq), Value::Int(mine)] => link::emitted(*seq, *mine),
                    _ => None,
                };
                let _ = answer.send(Ok(emitted));
            }
        }
        Value::ServerError(err) => {
            let err = RedisError::from(err);
            link::fail_all([answers], &emit_failure(&err));
        }
        _ => fail(Slot::Emits(answers), &broken("emit_many answered something else")),
    }
}

/// An emit's failure as the `redis` crate's connection reports it.
fn emit_failure(err: &RedisError) -> Failure {
    if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) {
        Failure::NoScript
    } else {
        Failure::Redis(err.to_string())
    }
}

/// Answers every caller of a slot with (a copy of) `err`: same kind, same text.
fn fail(slot: Slot, err: &RedisError) {
    let copy = || RedisError::from((err.kind(), "a batch failed", err.to_string()));
    match slot {
        Slot::One(answer) => drop(answer.send(Err(copy()))),
        Slot::Emits(answers) => link::fail_all([answers], &emit_failure(err)),
    }
}

fn gone() -> RedisError {
    broken("the batching task is gone")
}

fn broken(what: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::Io, what))
}
