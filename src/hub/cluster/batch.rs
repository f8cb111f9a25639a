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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, RedisError, RedisFuture, RedisResult, Value};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::protocol::Sid;

use super::super::event::Body;

/// The most commands in one batch: a bound on the write and on what one slow batch holds up.
const MAX_BATCH: usize = 256;

/// The most batches on their way at once: enough for the node to send the next while Redis runs
/// one (a publish to thousands of sessions streams through), few enough that commands queue up
/// into batches under load.
const IN_FLIGHT: usize = 2;

type Answer = oneshot::Sender<RedisResult<Value>>;

/// What an emit answers: the event's number and whether the emitting node holds the session's
/// transport; `None` when the session is gone.
pub(super) type Emitted = Option<(u64, bool)>;

type EmitAnswer = oneshot::Sender<RedisResult<Emitted>>;

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
    _permit: OwnedSemaphorePermit,
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
    /// current Tokio runtime).
    pub(super) fn start(conn: ConnectionManager, emit_many: Sha) -> Batcher {
        let (jobs, queue) = mpsc::unbounded_channel();
        let (sent, replies) = mpsc::unbounded_channel();
        tokio::spawn(send(conn, emit_many, queue, sent));
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
    pub(super) async fn emit(&self, emit: Emit) -> RedisResult<Emitted> {
        let (answer, answered) = oneshot::channel();
        self.jobs.send(Job::Emit(emit, answer)).map_err(|_| gone())?;
        answered.await.map_err(|_| gone())?
    }
}

/// Makes batches of what waits, once one of the [`IN_FLIGHT`] places is free, and puts each on
/// the connection before the next is made (its first poll queues it there), so they reach
/// Redis in order.
async fn send(conn: ConnectionManager, emit_many: Sha, mut queue: mpsc::UnboundedReceiver<Job>, sent: mpsc::UnboundedSender<Sent>) {
    let places = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut batch = Vec::new();
    let mut entry = Vec::new();
    while let Some(first) = queue.recv().await {
        let Ok(permit) = places.clone().acquire_owned().await else { return };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut cmds = Vec::with_capacity(batch.len());
        let mut answers = Vec::with_capacity(batch.len());
        // The emits, one script call for each run of them with the same node id and buffer
        // (one call, but for the moment a node takes a new id).
        let mut call: Option<(Cmd, Vec<EmitAnswer>, Arc<str>, usize)> = None;
        for job in batch.drain(..) {
            match job {
                Job::Cmd(cmd, answer) => {
                    cmds.push(cmd);
                    answers.push(Slot::One(answer));
                }
                Job::Emit(emit, answer) => {
                    if call.as_ref().is_some_and(|(_, _, node, buffer)| *node != emit.node || *buffer != emit.buffer) {
                        let (cmd, callers, _, _) = call.take().expect("a call");
                        cmds.push(cmd);
                        answers.push(Slot::Emits(callers));
                    }
                    let (cmd, callers, _, _) = call.get_or_insert_with(|| {
                        let mut cmd = redis::cmd("EVALSHA");
                        cmd.arg(&*emit_many).arg(0).arg(&*emit.node).arg(emit.buffer);
                        (cmd, Vec::new(), emit.node.clone(), emit.buffer)
                    });
                    entry.clear();
                    emit.body.write_entry(&mut entry);
                    cmd.arg(emit.sid.as_str()).arg(&entry[..]).arg(emit.mark);
                    callers.push(answer);
                }
            }
        }
        if let Some((cmd, callers, _, _)) = call {
            cmds.push(cmd);
            answers.push(Slot::Emits(callers));
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
                    [Value::Int(seq), Value::Int(mine)] if *seq > 0 => Some((seq.unsigned_abs(), *mine == 1)),
                    _ => None,
                };
                let _ = answer.send(Ok(emitted));
            }
        }
        Value::ServerError(err) => {
            for answer in answers {
                let _ = answer.send(Err(err.clone().into()));
            }
        }
        _ => fail(Slot::Emits(answers), &broken("emit_many answered something else")),
    }
}

/// Answers every caller of a slot with (a copy of) `err`: same kind, same text.
fn fail(slot: Slot, err: &RedisError) {
    let copy = || RedisError::from((err.kind(), "a batch failed", err.to_string()));
    match slot {
        Slot::One(answer) => drop(answer.send(Err(copy()))),
        Slot::Emits(answers) => answers.into_iter().for_each(|answer| drop(answer.send(Err(copy())))),
    }
}

fn gone() -> RedisError {
    broken("the batching task is gone")
}

fn broken(what: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::Io, what))
}
