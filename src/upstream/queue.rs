//! The worker queue: how client events reach the application one session at a time.
//!
//! Each session with events bound for the app has a queue and one worker task draining it, so
//! its events reach the app in the order they arrived and the actions answering one are applied
//! before the next is sent, while different sessions are forwarded concurrently. Forwarding only
//! queues: a transport keeps reading and writing while the app thinks. At most
//! [`UpstreamConfig::max_per_session`](super::UpstreamConfig::max_per_session) events of one
//! session are queued or in flight; a full queue holds the client back, up to the upstream
//! timeout, and then refuses the event, visibly (`busy`). Workers are tasks of the gateway the
//! upstream is installed in: its shutdown stops them (events still queued are not sent).
//!
//! In cluster mode there is no queue: one session's events can arrive at different nodes, so
//! each is sent while the session's cluster-wide inbox is held, in the order the inbox serves
//! them, and its transport waits for the application's answer.

use std::sync::{Arc, PoisonError};

use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

use crate::hub::Hub;
use crate::protocol::Sid;

use super::client::{brief, Failure};
use super::schema::event_request;
use super::Upstream;

pub(super) struct Queue {
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
pub(super) struct Job {
    hub: Hub,
    subject: Option<String>,
    event: String,
    data: Value,
    /// The number of the client's request, when the event asked for an answer.
    ack: Option<u64>,
}

impl Upstream {
    /// Queues one client event for the app; the session's worker sends it after the ones before
    /// it and applies the answer, or tells the client why not. Returns at once, so the transport
    /// goes on reading and writing while the app thinks. When the session's queue is full it
    /// waits for room (backpressure on the client), and refuses the event (`busy`) if none comes
    /// within the upstream timeout.
    /// `subject` is who the client is, when the gateway authenticates sessions; `ack` the number
    /// of the client's request, when the event asked for an answer: the application's `ack`
    /// action answers it (`null` without one), and a failure answers it with the error form.
    pub async fn forward(&self, hub: &Hub, sid: &Sid, subject: Option<&str>, event: &str, data: Value, ack: Option<u64>) {
        if self.inner.config.events.is_none() {
            return;
        }
        let shutdown = self.tasks().shutdown_token();
        if shutdown.is_cancelled() {
            // The workers are stopped and every client was told to resume elsewhere.
            tracing::debug!(sid = sid.short(), event, "gateway shut down; event not forwarded");
            return;
        }
        let mut job = Job { hub: hub.clone(), subject: subject.map(str::to_owned), event: event.to_owned(), data, ack };
        if hub.cluster().is_some() {
            // Cluster mode: the session's events may arrive at several nodes, each with its own
            // queues, so the order is kept by the session's inbox, which is cluster-wide: the
            // event is sent while it is held, and the client waits for the application.
            self.send_event(sid, job).await;
            return;
        }
        let max = self.inner.config.max_per_session.max(1);
        let deadline = tokio::time::Instant::now() + self.inner.config.timeout;
        loop {
            let full = {
                let mut queues = self.inner.queues.lock().unwrap_or_else(PoisonError::into_inner);
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
                self.failed(hub, sid, event, ack, Failure::Busy, &detail).await;
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
                let mut queues = upstream.inner.queues.lock().unwrap_or_else(PoisonError::into_inner);
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
        let Job { hub, subject, event, data, ack } = job;
        let body = event_request(sid, subject, &event, data, ack);
        match self.call(url, &body).await {
            Ok((_, actions)) => self.apply_answering(&hub, Some(sid), ack, actions).await,
            Err((failure, detail)) => self.failed(&hub, sid, &event, ack, failure, &detail).await,
        }
    }

    /// Makes a failure visible: `error` event to the client (the error form of `ack` when the
    /// event asked for an answer), counter, log line.
    async fn failed(&self, hub: &Hub, sid: &Sid, event: &str, ack: Option<u64>, failure: Failure, detail: &str) {
        self.count(&failure);
        let detail = brief(detail);
        tracing::warn!(sid = sid.short(), event, reason = failure.reason(), %detail, "event not delivered to the application");
        let notice = json!({
            "error": format!("`{event}` was not handled: {failure}"),
            "event": event,
            "reason": failure.reason(),
        });
        let _ = match ack {
            Some(number) => hub.answer(sid, number, Err(&notice)).await,
            None => hub.emit(sid, "error", &notice).await,
        };
    }
}
