//! The node's commands to a standalone Redis, sent in batches: one write (and, in Redis, one
//! read) for every command that queued up while the batch before was on its way.
//!
//! Every emit, inbox ticket and lookup of every session of the node goes to Redis over one
//! multiplexed connection. Sent one by one, each costs a `write` on the node and a `read` and
//! a `write` in Redis, which share the machine with the node: at tens of thousands of events a
//! second those system calls are a large part of what an event costs on both sides
//! (docs/performance.md, "Cluster mode"). Here one task sends the commands: it takes every
//! command waiting, sends them as one pipeline, and waits for the answers before it sends the
//! next batch. With one command waiting it is one request as before; under load a batch holds
//! what arrived during one round trip to Redis, and a command waits at most one batch's round
//! trip longer.
//!
//! Commands keep the order they were queued in (one sender, answers in order), so what one task
//! sends after another's answer came is still run after it. A server error answers its own
//! command only (a `NOSCRIPT` is then retried by the caller's script invocation, which loads the
//! script through here too); a connection error answers every command of its batch.

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, RedisError, RedisFuture, RedisResult, Value};
use tokio::sync::{mpsc, oneshot};

/// The most commands in one batch: a bound on the write and on what one slow batch holds up.
const MAX_BATCH: usize = 256;

/// A command waiting for its batch, and where its answer goes.
struct Job {
    cmd: Cmd,
    answer: oneshot::Sender<RedisResult<Value>>,
}

/// The sending side: cheap to clone; the task ends when every clone is dropped.
#[derive(Clone)]
pub(super) struct Batcher {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Batcher {
    /// Starts the task that sends the commands over `conn` (on the current Tokio runtime).
    pub(super) fn start(conn: ConnectionManager) -> Batcher {
        let (jobs, queue) = mpsc::unbounded_channel();
        tokio::spawn(drive(conn, queue));
        Batcher { jobs }
    }

    /// Sends one command with the next batch and waits for its answer.
    pub(super) fn query<'a>(&'a self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (answer, answered) = oneshot::channel();
            self.jobs.send(Job { cmd: cmd.clone(), answer }).map_err(|_| gone())?;
            answered.await.map_err(|_| gone())?
        })
    }
}

/// The batching task: one batch in flight at a time.
async fn drive(mut conn: ConnectionManager, mut queue: mpsc::UnboundedReceiver<Job>) {
    let mut batch = Vec::new();
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if batch.len() == 1 {
            let job = batch.pop().expect("one job");
            let answer = conn.req_packed_command(&job.cmd).await;
            let _ = job.answer.send(answer);
            continue;
        }
        let mut pipe = redis::pipe();
        let mut answers = Vec::with_capacity(batch.len());
        for job in batch.drain(..) {
            pipe.add_command(job.cmd);
            answers.push(job.answer);
        }
        match conn.req_packed_commands(&pipe, 0, answers.len()).await {
            Ok(values) if values.len() == answers.len() => {
                for (answer, value) in answers.into_iter().zip(values) {
                    let _ = answer.send(match value {
                        Value::ServerError(err) => Err(err.into()),
                        value => Ok(value),
                    });
                }
            }
            Ok(_) => answers.into_iter().for_each(|answer| drop(answer.send(Err(broken("a batch answered with the wrong count"))))),
            Err(err) => {
                let text = err.to_string();
                for answer in answers {
                    let _ = answer.send(Err(RedisError::from((err.kind(), "a batch failed", text.clone()))));
                }
            }
        }
    }
}

fn gone() -> RedisError {
    broken("the batching task is gone")
}

fn broken(what: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::Io, what))
}
