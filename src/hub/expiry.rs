//! Time in the hub: sessions past their grace period are removed, readers that stopped reading
//! are detached, events past the age bound (`--buffer-age`, if set) are dropped, and at shutdown
//! every attachment is told to say goodbye. One background task ([`Hub::expiry_task`]) does it
//! all. It is the hub's only task, and whoever runs it owns
//! it (the gateway, on its task tracker); it holds the hub weakly, so a hub nobody uses any more
//! is freed with its sessions even if nobody cancelled its token.
//!
//! Nothing here is on the per-event path. An emit or a read never looks at the clock: the task
//! notes, once per tick, since when an attachment has had events waiting unread, and detaches it
//! once that exceeds the slow-client timeout. The sweep over every session goes a shard at a
//! time and lets other tasks run in between, so no round trip waits for the whole table.
//! Removed sessions are reported to [`Hub::watch_expired`] subscribers (lifecycle hooks), which
//! are told after the table and room locks are released.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::protocol::Sid;

use super::attachment::{evict, CloseReason, CONFIRM_SSE};
use super::counters;
use super::session::lock;
use super::table::Shard;
use super::{Hub, Transport};

/// How long a long-polling session may be between two polls and still count as on polling in
/// `switchyard_sessions_by_transport`: a polling client holds no request for a moment after
/// each answer (at least 100 ms in the browser client), and a little longer after a failed
/// poll, while its session is as live as one held by a stream.
pub const POLL_GAP: Duration = Duration::from_secs(5);

/// A session the expiry task removed, as [`Hub::watch_expired`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    /// The session that expired.
    pub sid: Sid,
    /// The rooms it was in when it expired (it is in none now).
    pub rooms: Vec<String>,
}

impl Hub {
    /// A stream of the sessions the expiry task removes, for lifecycle hooks. Each call makes a
    /// new subscriber; dropping the receiver unsubscribes.
    pub fn watch_expired(&self) -> mpsc::UnboundedReceiver<Expired> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner.expired_txs.lock().unwrap_or_else(PoisonError::into_inner).push(tx);
        rx
    }

    /// Removes every session whose grace period has run out, and detaches readers stalled past
    /// the slow-client timeout. Returns how many sessions were removed.
    pub fn expire(&self, now: Instant) -> usize {
        let mut tally = [0; 4];
        let removed = self.inner.shards.iter().map(|shard| self.expire_shard(shard, now, &mut tally)).sum();
        metrics::counter!("switchyard_sessions_expired_total").increment(removed as u64);
        self.count_by_transport(tally);
        removed
    }

    /// [`Hub::expire`] for the expiry task: one shard at a time, letting the runtime run other
    /// tasks between shards. The sweep visits every session, so in one go it would hold the
    /// worker thread for time in proportion to the session count (about 1 ms per 19,000
    /// sessions here, once a second: every round trip in flight meanwhile waited that long);
    /// a shard at a time, a round trip waits at most one shard's share of it.
    ///
    /// The sweep also counts the sessions it keeps by the transport they are on, for
    /// `switchyard_sessions_by_transport` (see [`POLL_GAP`]): a walk it makes anyway.
    async fn sweep(&self, now: Instant) -> usize {
        let mut removed = 0;
        let mut tally = [0; 4];
        for shard in &self.inner.shards {
            removed += self.expire_shard(shard, now, &mut tally);
            tokio::task::yield_now().await;
        }
        metrics::counter!("switchyard_sessions_expired_total").increment(removed as u64);
        self.count_by_transport(tally);
        removed
    }

    /// Expires one shard's sessions past their grace; adds those it keeps to `tally`, by the
    /// index of their transport, the fourth place for those between transports.
    fn expire_shard(&self, shard: &Shard, now: Instant, tally: &mut [usize; 4]) -> usize {
        let grace = self.inner.config.grace;
        let slow = self.inner.config.slow_client_timeout;
        let tick = self.age_tick(now);
        let mut gone = Vec::new();
        shard.write().unwrap_or_else(PoisonError::into_inner).retain(|_, session| {
            let mut state = lock(&session.state);
            // Events past the age bound go, from idle sessions too (an emit ages only its own
            // session); a reader that had not copied them out is a slow consumer, as when the
            // count bound drops them.
            if let Some(dropped) = tick.and_then(|tick| state.ring.age(tick)) {
                if state.attached.as_ref().is_some_and(|a| a.read_upto < dropped) {
                    evict(&mut state, CloseReason::SlowConsumer, &session.sid);
                }
            }
            // An SSE stream that held its session long enough: its reported change counts.
            if let Some(attached) = state.attached.as_mut().filter(|a| a.unconfirmed.as_ref().is_some_and(|u| now.duration_since(u.1) >= CONFIRM_SSE)) {
                let (change, _) = *attached.unconfirmed.take().expect("just looked");
                counters::transport_changed(change, Transport::Sse);
            }
            let last_seq = state.ring.last_seq();
            let stalled = match &mut state.attached {
                Some(attached) if attached.read_upto < last_seq => {
                    let since = *attached.behind_since.get_or_insert(now);
                    now.duration_since(since) >= slow
                }
                Some(attached) => {
                    attached.behind_since = None;
                    false
                }
                None => false,
            };
            if stalled {
                evict(&mut state, CloseReason::SlowConsumer, &session.sid);
            }
            // In cluster mode a local session past its grace is only this node's copy: Redis
            // decides when the session expires (see `mirror.rs`).
            let expired = state.detached_at.is_some_and(|t| now.duration_since(t) >= grace) && state.syncing == 0;
            if expired {
                state.removed = true;
                state.ring.clear();
                gone.push((session.sid.clone(), std::mem::take(&mut state.rooms)));
                tracing::debug!(sid = session.sid.short(), "session expired");
            } else {
                let on = match (&state.attached, state.last_transport) {
                    (Some(_), Some(transport)) => Some(transport),
                    (None, Some(Transport::Polling)) if state.detached_at.is_some_and(|t| now.duration_since(t) < POLL_GAP) => {
                        Some(Transport::Polling)
                    }
                    _ => None,
                };
                tally[on.map_or(3, Transport::index)] += 1;
            }
            !expired
        });
        let removed = gone.len();
        if removed > 0 {
            self.inner.live.fetch_sub(removed, Ordering::Relaxed);
            // Room tables and watchers are touched with no session table lock held.
            self.forget(gone, self.inner.cluster.is_none());
        }
        removed
    }

    /// Publishes the expiry task's count of sessions by transport. The gauge is shared by every
    /// hub of the process (the recorder is global), so each hub adds the difference from its
    /// last count, and takes its count back when it is dropped: the gauge is the sum over the
    /// process's hubs, as `switchyard_transports_open` is.
    fn count_by_transport(&self, tally: [usize; 4]) {
        let mut last = self.inner.by_transport.lock().unwrap_or_else(PoisonError::into_inner);
        counters::sessions_by_transport(*last, tally);
        *last = tally;
    }

    /// Starts the hub's background task on the runtime, unowned: [`Hub::expiry_task`], spawned.
    /// The gateway runs that future on its own task tracker instead, so that it is awaited on
    /// shutdown.
    pub fn spawn_expiry(&self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.expiry_task())
    }

    /// The hub's background task: it expires sessions, checking a few times per grace period,
    /// and when the shutdown token is cancelled it tells every attachment to say goodbye
    /// ([`Hub::close_all`]) and stops. A hub without this task never expires nor closes.
    ///
    /// The task holds the hub weakly, so it never keeps the sessions alive by itself: once every
    /// [`Hub`] handle is gone (the gateway, transports, handlers), the next tick finds nothing to
    /// sweep and the task ends, whether or not the token was cancelled.
    pub fn expiry_task(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let hub = Arc::downgrade(&self.inner);
        let shutdown = self.inner.shutdown.clone();
        let period = (self.inner.config.grace / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let node = self.inner.cluster.clone().map(|cluster| super::cluster::run(hub.clone(), cluster, shutdown.clone()));
        let sweeps = async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        if let Some(inner) = hub.upgrade() {
                            Hub { inner }.close_all();
                        }
                        break;
                    }
                    _ = tick.tick() => {
                        let Some(inner) = hub.upgrade() else { break };
                        Hub { inner }.sweep(Instant::now()).await;
                    }
                }
            }
        };
        async move {
            match node {
                Some(node) => {
                    tokio::join!(sweeps, node);
                }
                None => sweeps.await,
            }
        }
    }

    /// Shutdown: every attachment hands out what is ready, then a `reconnect` notice, then ends;
    /// attachments made from now on do the same at once.
    pub fn close_all(&self) {
        self.inner.closing.store(true, Ordering::Release);
        self.each_session(|_, state| {
            if let Some(attached) = &state.attached {
                attached.wake.notify();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    use super::super::table::SHARDS;
    use super::super::testing::{hub, next};
    use super::super::{HubConfig, HubError, Transport};
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_leaves_events_unread_is_detached_after_the_timeout() {
        let hub = Hub::new(
            HubConfig { slow_client_timeout: Duration::from_secs(5), ..HubConfig::default() },
            CancellationToken::new(),
        );
        // The expiry task's ticks, one a second.
        let ticks = |seconds: u64| {
            let hub = hub.clone();
            async move {
                for _ in 0..seconds {
                    tokio::time::advance(Duration::from_secs(1)).await;
                    hub.expire(Instant::now());
                }
            }
        };
        let mut a = hub.attach(Transport::Sse, None, None).await.unwrap();
        let sid = a.sid().clone();
        next(&mut a).await;
        hub.emit(&sid, "n", &json!(1)).await.unwrap();
        ticks(4).await;
        // Reading in time keeps it attached.
        assert_eq!(next(&mut a).await.1, 1);
        hub.emit(&sid, "n", &json!(2)).await.unwrap();
        ticks(5).await;
        assert!(matches!(a.try_recv(), Ok(Some(_))), "not yet 5 s since a tick saw it behind");
        hub.emit(&sid, "n", &json!(3)).await.unwrap();
        ticks(5).await;
        assert!(hub.info(&sid).await.unwrap().transport.is_some(), "reading restarted the clock");
        ticks(1).await;
        let end = tokio::time::timeout(Duration::from_secs(1), a.recv()).await.expect("detached by now");
        assert_eq!(end.unwrap_err(), CloseReason::SlowConsumer);
        assert!(hub.contains(&sid).await, "the session stays for its grace period");
    }

    /// `--buffer-age 16s`: ticks of a second, so an event goes once it is more than 16 s old
    /// and at most 17 s (from an idle session, at the expiry task's next sweep).
    #[tokio::test(start_paused = true)]
    async fn events_past_the_age_bound_are_dropped_and_a_resume_from_before_them_gets_a_gap() {
        let config = HubConfig { buffer_age: Some(Duration::from_secs(16)), ..HubConfig::default() };
        let hub = Hub::new(config, CancellationToken::new());
        let mut a = hub.attach(Transport::Sse, None, None).await.unwrap();
        let sid = a.sid().clone();
        let hello = a.recv().await.unwrap().cursor(&sid).to_string();
        let mut idle = hub.attach(Transport::Sse, None, None).await.unwrap();
        for i in 1..=3 {
            hub.emit(&sid, "n", &json!(i)).await.unwrap();
            hub.emit(idle.sid(), "n", &json!(i)).await.unwrap();
        }
        for seq in 1..=3 {
            assert_eq!(next(&mut a).await.1, seq);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        for i in 4..=5 {
            hub.emit(&sid, "n", &json!(i)).await.unwrap();
        }
        drop(a);
        tokio::time::advance(Duration::from_millis(6500)).await;
        hub.expire(Instant::now());
        assert_eq!(hub.info(&sid).await.unwrap().buffered, 5, "16.5 s old: kept");
        tokio::time::advance(Duration::from_millis(600)).await;
        hub.expire(Instant::now());
        assert_eq!(hub.info(&sid).await.unwrap().buffered, 2, "17.1 s old: dropped");
        // The attached session that never read what aged out is a slow consumer.
        assert_eq!(hub.info(idle.sid()).await.unwrap().buffered, 0);
        assert_eq!(next(&mut idle).await.0, "session");
        assert_eq!(idle.try_recv().unwrap_err(), CloseReason::SlowConsumer);

        let mut b = hub.attach(Transport::Sse, Some(sid.as_str()), Some(&hello)).await.unwrap();
        assert_eq!(next(&mut b).await.0, "session");
        let gap = next(&mut b).await;
        assert_eq!((gap.0.as_str(), gap.1, gap.2), ("gap", 3, true));
        assert!(gap.3.contains("\"overflow\"") && gap.3.contains("\"lost\":3"), "{}", gap.3);
        assert_eq!((next(&mut b).await.1, next(&mut b).await.1), (4, 5));
        tokio::time::advance(Duration::from_secs(11)).await;
        hub.expire(Instant::now());
        assert_eq!(hub.info(&sid).await.unwrap().buffered, 0);
        assert_eq!(hub.info(&sid).await.unwrap().last_seq, 5, "the numbering goes on");
    }

    #[tokio::test(start_paused = true)]
    async fn detached_sessions_expire_after_the_grace_period_and_attached_ones_never() {
        let hub = hub(8);
        let a = hub.attach(Transport::Sse, None, None).await.unwrap();
        let kept = hub.attach(Transport::Sse, None, None).await.unwrap();
        let sid = a.sid().clone();
        drop(a);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(hub.expire(Instant::now()), 0);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(hub.expire(Instant::now()), 1);
        assert!(!hub.contains(&sid).await);
        assert_eq!(hub.emit(&sid, "n", &json!(1)).await, Err(HubError::NoSession));
        assert!(hub.contains(kept.sid()).await);
        assert_eq!(hub.len(), 1);
    }

    /// The expiry task's sweep must not hold the worker thread for the whole table: on one
    /// thread, another task gets turns while it runs, and it still removes what has expired.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn the_expiry_sweep_lets_other_tasks_run_between_shards() {
        let hub = hub(8);
        let mut held = Vec::new();
        for _ in 0..SHARDS * 4 {
            held.push(hub.attach(Transport::Sse, None, None).await.unwrap());
        }
        let gone: Vec<Sid> = held.drain(..SHARDS).map(|a| a.sid().clone()).collect();
        tokio::time::advance(Duration::from_secs(31)).await;

        let done = Arc::new(AtomicBool::new(false));
        let turns = tokio::spawn({
            let done = done.clone();
            async move {
                let mut turns = 0;
                while !done.load(Ordering::Relaxed) {
                    turns += 1;
                    tokio::task::yield_now().await;
                }
                turns
            }
        });
        let removed = hub.sweep(Instant::now()).await;
        done.store(true, Ordering::Relaxed);
        let turns = turns.await.unwrap();

        assert_eq!(removed, SHARDS);
        assert_eq!(hub.len(), SHARDS * 3);
        for sid in &gone {
            assert!(!hub.contains(sid).await);
        }
        assert!(turns >= SHARDS / 2, "the other task ran {turns} times during a sweep of {SHARDS} shards");
    }

    /// The task must not keep the sessions alive: with the token never cancelled, dropping the
    /// last handle to the hub still ends it, and frees every session's state.
    #[tokio::test(start_paused = true)]
    async fn the_expiry_task_ends_and_frees_the_sessions_once_every_handle_is_gone() {
        let hub = hub(8);
        let task = hub.spawn_expiry();
        let subject: Arc<str> = "someone".into();
        let held = Arc::downgrade(&subject);
        let a = hub.attach(Transport::Sse, None, None).await.unwrap();
        hub.set_subject(a.sid(), subject).await.unwrap();
        hub.emit(a.sid(), "n", &json!(1)).await.unwrap();
        drop((a, hub));
        tokio::time::timeout(Duration::from_secs(60), task).await.expect("the expiry task ended").unwrap();
        assert!(held.upgrade().is_none(), "the session's state was freed");
    }

    #[tokio::test]
    async fn shutdown_flushes_then_asks_clients_to_reconnect() {
        let token = CancellationToken::new();
        let hub = Hub::new(HubConfig::default(), token.clone());
        let task = hub.spawn_expiry();
        let mut a = hub.attach(Transport::Sse, None, None).await.unwrap();
        next(&mut a).await;
        hub.emit(a.sid(), "n", &json!("last words")).await.unwrap();
        token.cancel();
        task.await.unwrap();
        // An attachment made during the shutdown says goodbye at once.
        let mut late = hub.attach(Transport::WebSocket, None, None).await.unwrap();
        assert_eq!(next(&mut late).await.0, "session");
        assert_eq!(next(&mut late).await.0, "reconnect");
        // What was ready still goes out, then the notice to resume, then the end.
        assert_eq!(next(&mut a).await.3, "\"last words\"");
        let farewell = next(&mut a).await;
        assert_eq!((farewell.0.as_str(), farewell.1, farewell.2), ("reconnect", 1, true));
        assert_eq!(a.recv().await.unwrap_err(), CloseReason::Shutdown);
    }
}
