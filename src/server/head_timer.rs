//! The timer hyper's HTTP/1 connections use for their header read timeout: one tokio timer per
//! connection, re-armed only when it fires, instead of a new one per request head.
//!
//! hyper asks its timer for a fresh `Sleep` at the start of every request head and drops it
//! once the head is in. With hyper-util's `TokioTimer` each of those is a boxed tokio `Sleep`
//! inserted into the runtime's timer wheel when the connection waits for the head and removed
//! from it when the head arrives: some 1,000 instructions a long-polling round trip (two heads;
//! callgrind, docs/performance.md). Here every connection holds one tokio `Sleep`, and the
//! `Sleep` hyper gets per head is a deadline that shares it: while the connection's timer is
//! set no later than the head's deadline it is left as it is, and when it fires early (set for
//! an earlier head) it is moved to the current head's deadline. A head is timed from its own
//! start as with `TokioTimer` (tests/hardening.rs); the connection's task is woken at most once
//! per header timeout in between.
//!
//! One [`HeadTimer`] per connection: once the tokio timer has been polled (and so holds the
//! connection task's waker) it is not polled again until it fires or is moved; while it waits,
//! a head's deadline only reads whether it has fired. Sound because a connection's heads are
//! all read in its own task, whose waker does not change.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};

/// A connection's header read timer (see the module's doc).
#[derive(Clone)]
pub struct HeadTimer {
    /// The connection's one tokio timer, shared by the deadlines of its heads; polled only by
    /// the connection's task, and dropped with the connection.
    shared: Arc<Mutex<Shared>>,
}

/// The connection's tokio timer, and whether it holds the task's waker for its deadline.
struct Shared {
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Polled (and pending) since it was last set: it wakes the task when it fires.
    armed: bool,
}

impl HeadTimer {
    /// A timer for one connection, first set `timeout` from now. Must be made inside the tokio
    /// runtime (it holds a tokio timer).
    pub fn new(timeout: Duration) -> HeadTimer {
        HeadTimer { shared: Arc::new(Mutex::new(Shared { sleep: Box::pin(tokio::time::sleep(timeout)), armed: false })) }
    }
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    /// tokio's clock, which the deadlines are set on (the same as `std`'s, except in a test
    /// that pauses tokio's).
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(HeadDeadline { shared: self.shared.clone(), deadline: tokio::time::Instant::from_std(deadline) })
    }
}

/// One head's deadline, on its connection's shared timer.
struct HeadDeadline {
    shared: Arc<Mutex<Shared>>,
    deadline: tokio::time::Instant,
}

impl Future for HeadDeadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut shared = self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Shared { sleep, armed } = &mut *shared;
        loop {
            if sleep.deadline() > self.deadline {
                sleep.as_mut().reset(self.deadline);
                *armed = false;
            }
            if *armed && !sleep.is_elapsed() {
                return Poll::Pending;
            }
            match sleep.as_mut().poll(cx) {
                Poll::Pending => {
                    *armed = true;
                    return Poll::Pending;
                }
                Poll::Ready(()) if sleep.deadline() == self.deadline => return Poll::Ready(()),
                // Set for an earlier head: this head's time is not up yet.
                Poll::Ready(()) => {
                    sleep.as_mut().reset(self.deadline);
                    *armed = false;
                }
            }
        }
    }
}

impl Sleep for HeadDeadline {}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use hyper::rt::{Sleep, Timer};

    use super::HeadTimer;

    fn poll(sleep: &mut Pin<Box<dyn Sleep>>) -> Poll<()> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        sleep.as_mut().poll(&mut cx)
    }

    /// Each head's deadline is its own: one set after an earlier head's (whose deadline the
    /// shared timer still holds) is not cut at the earlier one, and comes when it is due.
    #[tokio::test(start_paused = true)]
    async fn each_head_is_timed_from_its_own_start() {
        const TIMEOUT: Duration = Duration::from_secs(10);
        let timer = HeadTimer::new(TIMEOUT);
        let mut first = timer.sleep(TIMEOUT);
        assert!(poll(&mut first).is_pending());
        drop(first); // its head came in
        tokio::time::advance(Duration::from_secs(6)).await;
        let mut second = timer.sleep(TIMEOUT); // due at 16 s; the shared timer is set for 10 s
        assert!(poll(&mut second).is_pending());
        tokio::time::advance(Duration::from_secs(5)).await; // 11 s: the shared timer fired
        assert!(poll(&mut second).is_pending(), "cut at the earlier head's deadline");
        tokio::time::advance(Duration::from_secs(4)).await; // 15 s
        assert!(poll(&mut second).is_pending());
        tokio::time::advance(Duration::from_secs(2)).await; // 17 s
        assert!(poll(&mut second).is_ready(), "not cut at its own deadline");
        // A later head, after the timer fired for the one before.
        let mut third = timer.sleep(Duration::from_secs(1));
        assert!(poll(&mut third).is_pending());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(poll(&mut third).is_ready());
    }
}
