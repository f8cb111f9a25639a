//! Acknowledgements in the hub: answering a client's request ([`Hub::answer`]) and waiting for a
//! client's answer ([`Hub::emit_with_ack`], resolved by [`Hub::take_answer`]).
//!
//! An answer is an event like any other (`ack`, with the request's number beside its data, see
//! [`crate::protocol::ack`]): it goes through the session's buffer, so it reaches whatever
//! transport the client holds, and a client that resumes after a drop gets it in the replay.
//! Since a numbered send resent after a drop is skipped before its handler runs, its request is
//! answered once, by the answer already in the buffer.
//!
//! A request of the server waits in [`Pending`], keyed by session and number, until the client's
//! answer, the timeout, or the end of the session (expiry or removal: [`Hub::acks_gone`] rejects
//! what waits for it). Numbers come from one counter per hub that starts at a random point, so
//! that in cluster mode two nodes asking the same session do not pick the same number (they
//! would have to start within the number of requests they make of each other, out of 2^52).
//! In cluster mode the client's answer may reach another node than the one waiting: the
//! waiting node records itself as the request's owner in Redis, and a node that takes an answer
//! it does not wait for hands it on to the owner over the owner's node channel (see
//! `cluster/mod.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rand::Rng;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::protocol::{Ack, Cursor, Sid};

use super::event::{validate_event_name, Body};
use super::{Hub, HubError, SessionHandle};

/// The name of the event that answers a request, both ways.
pub const ACK_EVENT: &str = "ack";

/// Why a request of the server got no answer ([`Hub::emit_with_ack`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// The client did not answer within the timeout.
    #[error("the client did not answer within {0:?}")]
    Timeout(Duration),
    /// The session ended (its grace period ran out, or it was removed) before the answer came.
    #[error("the session ended before the client answered")]
    SessionEnded,
    /// The request could not be sent: the session is gone, the name is invalid, or (cluster
    /// mode) Redis is unreachable.
    #[error("the request could not be sent: {0}")]
    NotSent(#[from] HubError),
}

/// What a waiting request gets: the client's data, or why none will come.
type Answer = Result<Value, AckError>;

/// The requests of the server that wait for an answer, by session and number.
pub(super) struct Pending {
    /// The next number to hand out.
    next: AtomicU64,
    /// The senders of the waiting [`Hub::emit_with_ack`] calls, which hold the receivers. An
    /// entry goes when its answer comes, when its session ends, or when the call gives up
    /// (timeout, or the call's future dropped).
    waiting: Mutex<HashMap<Sid, HashMap<u64, oneshot::Sender<Answer>>>>,
}

impl Default for Pending {
    fn default() -> Self {
        Pending { next: AtomicU64::new(rand::rng().random_range(1..1 << 52)), waiting: Mutex::new(HashMap::new()) }
    }
}

impl Pending {
    fn number(&self) -> u64 {
        // Wraps within the safe range long after the heat death of any one process.
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        (n - 1) % crate::protocol::ack::MAX_ACK + 1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Sid, HashMap<u64, oneshot::Sender<Answer>>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take(&self, sid: &Sid, number: u64) -> Option<oneshot::Sender<Answer>> {
        let mut waiting = self.lock();
        let of_session = waiting.get_mut(sid)?;
        let sender = of_session.remove(&number);
        if of_session.is_empty() {
            waiting.remove(sid);
        }
        sender
    }
}

/// Removes a request from [`Pending`] when its call ends however it ends.
struct Forget<'a> {
    pending: &'a Pending,
    sid: &'a Sid,
    number: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.pending.take(self.sid, self.number);
    }
}

impl Hub {
    /// Answers the client's request numbered `number` (an envelope it sent with `"ack": N`): one
    /// `ack` event with that number and `answer`'s data, or, for `Err`, the error form
    /// (`"error"` in place of `"data"`). It goes through the session's buffer like any event.
    pub async fn answer(&self, sid: &Sid, number: u64, answer: Result<&Value, &Value>) -> Result<Cursor, HubError> {
        let body = answer_body(number, answer)?;
        self.emit_body(sid, body).await
    }

    /// [`Hub::answer`] to a session already in hand.
    pub async fn answer_to(&self, handle: &SessionHandle, number: u64, answer: Result<&Value, &Value>) -> Result<Cursor, HubError> {
        let body = answer_body(number, answer)?;
        let seq = self.append_to(&handle.session, body).await?;
        Ok(Cursor::event(handle.sid().clone(), seq))
    }

    /// Emits `name` with `data` to the session and waits for the client's answer: the client
    /// sends `{"event": "ack", "ack": N, "data": D}` with the number the event carried, and this
    /// returns D. Fails with [`AckError::Timeout`] when no answer comes within `timeout`, with
    /// [`AckError::SessionEnded`] when the session expires or is removed first, and with
    /// [`AckError::NotSent`] when the event cannot be emitted.
    ///
    /// The event is buffered like any other: a client between transports gets it on resume,
    /// and can answer over any transport.
    pub async fn emit_with_ack(&self, sid: &Sid, name: &str, data: &Value, timeout: Duration) -> Result<Value, AckError> {
        validate_event_name(name)?;
        let number = self.inner.acks.number();
        let (tx, rx) = oneshot::channel();
        self.inner.acks.lock().entry(sid.clone()).or_default().insert(number, tx);
        let _forget = Forget { pending: &self.inner.acks, sid, number };
        let body = Body::with_ack(name, data.to_string(), Ack::data(number));
        if let Some(cluster) = &self.inner.cluster {
            Box::pin(cluster.own_request(sid, number, timeout)).await?;
        }
        self.emit_body(sid, body).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer,
            // The sender went without a word: only the hub itself going does that.
            Ok(Err(_)) => Err(AckError::SessionEnded),
            Err(_) => Err(AckError::Timeout(timeout)),
        }
    }

    /// Hands a client's answer (`{"event": "ack", "ack": N, "data": D}`) to the request of
    /// this hub that waits for it. Returns whether one did. In cluster mode an answer to a
    /// request of another node is handed on to that node.
    pub async fn take_answer(&self, sid: &Sid, number: u64, data: Value) -> bool {
        if let Some(waiting) = self.inner.acks.take(sid, number) {
            return waiting.send(Ok(data)).is_ok();
        }
        match &self.inner.cluster {
            Some(cluster) => Box::pin(cluster.hand_on_answer(sid, number, &data)).await,
            None => false,
        }
    }

    /// An answer another node handed on (cluster mode).
    pub(super) fn answer_from_node(&self, sid: &Sid, number: u64, data: &str) {
        if let Some(waiting) = self.inner.acks.take(sid, number) {
            let _ = waiting.send(Ok(serde_json::from_str(data).unwrap_or(Value::Null)));
        }
    }

    /// Rejects every request that waits for an answer from `sid`: the session has ended.
    pub(super) fn acks_gone(&self, sid: &Sid) {
        let Some(waiting) = self.inner.acks.lock().remove(sid) else { return };
        for (_, sender) in waiting {
            let _ = sender.send(Err(AckError::SessionEnded));
        }
    }

    /// Emits a body made elsewhere (one carrying an ack) to the session `sid`.
    async fn emit_body(&self, sid: &Sid, body: std::sync::Arc<Body>) -> Result<Cursor, HubError> {
        if let Some(cluster) = &self.inner.cluster {
            let local = self.find(sid);
            let seq = Box::pin(self.cluster_append(cluster, sid, local.as_ref(), body)).await?;
            return Ok(Cursor::event(sid.clone(), seq));
        }
        let session = self.find(sid).ok_or(HubError::NoSession)?;
        let seq = self.append(&session, body).ok_or(HubError::NoSession)?;
        Ok(Cursor::event(sid.clone(), seq))
    }
}

/// The `ack` event answering request `number`.
fn answer_body(number: u64, answer: Result<&Value, &Value>) -> Result<std::sync::Arc<Body>, HubError> {
    let (ack, data) = match answer {
        Ok(data) => (Ack::data(number), data),
        Err(error) => (Ack::error(number), error),
    };
    let ack = ack.ok_or(HubError::AckNumber)?;
    Ok(Body::with_ack(ACK_EVENT, data.to_string(), Some(ack)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::super::testing::{hub, next};
    use super::super::Transport;
    use super::AckError;

    #[tokio::test]
    async fn a_request_resolves_with_the_clients_answer_and_only_once() {
        let hub = hub(8);
        let mut a = hub.attach(Transport::WebSocket, None, None).await.unwrap();
        let sid = a.sid().clone();
        next(&mut a).await;
        let asking = tokio::spawn({
            let (hub, sid) = (hub.clone(), sid.clone());
            async move { hub.emit_with_ack(&sid, "question", &json!("6 * 7?"), Duration::from_secs(5)).await }
        });
        let event = tokio::time::timeout(Duration::from_secs(1), a.recv()).await.unwrap().unwrap();
        assert_eq!((event.name(), event.data()), ("question", r#""6 * 7?""#));
        let ack = event.ack().expect("the request carries a number");
        assert!(!ack.is_error());
        assert!(!hub.take_answer(&sid, ack.number() + 1, json!(0)).await, "no request has that number");
        assert!(hub.take_answer(&sid, ack.number(), json!(42)).await);
        assert_eq!(asking.await.unwrap(), Ok(json!(42)));
        assert!(!hub.take_answer(&sid, ack.number(), json!(43)).await, "answered already");
    }

    #[tokio::test]
    async fn a_request_fails_on_timeout_on_removal_and_for_a_session_that_is_gone() {
        let hub = hub(8);
        let a = hub.attach(Transport::Sse, None, None).await.unwrap();
        let sid = a.sid().clone();
        let short = Duration::from_millis(50);
        assert_eq!(hub.emit_with_ack(&sid, "q", &json!(1), short).await, Err(AckError::Timeout(short)));
        let asking = tokio::spawn({
            let (hub, sid) = (hub.clone(), sid.clone());
            async move { hub.emit_with_ack(&sid, "q", &json!(2), Duration::from_secs(5)).await }
        });
        super::super::testing::wait_for(|| hub.inner.acks.lock().contains_key(&sid)).await;
        assert!(hub.remove(&sid).await);
        assert_eq!(asking.await.unwrap(), Err(AckError::SessionEnded));
        assert!(matches!(hub.emit_with_ack(&sid, "q", &json!(3), short).await, Err(AckError::NotSent(_))));
        assert!(hub.inner.acks.lock().is_empty(), "nothing is left waiting");
    }
}
