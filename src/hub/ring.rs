//! A session's buffer of recent events: the bodies of its last `--buffer` events, oldest first,
//! their numbers implicit.
//!
//! Events of a session are numbered 1, 2, ... and every one of them goes into the ring (notices
//! never do), so what the ring holds is always a run of consecutive numbers ending at the last
//! one emitted: the oldest is `last - len + 1`. An entry is therefore only a counted pointer to
//! its body, 8 bytes, and an [`Event`](super::Event) with its number is made when an attachment
//! copies it out.
//! The body itself (name and JSON data) is shared by every session holding the event, so a
//! broadcast costs each member one pointer.
//!
//! The ring grows its storage itself rather than leaving it to `VecDeque`, whose growth doubles
//! and would leave up to half of it unused: at most to twice what it holds, and never past the
//! buffer size. A session that never gets an event allocates nothing; one whose buffer is full
//! holds exactly `buffer` entries and allocates nothing more (the oldest leaves as the newest
//! comes).
//!
//! **An age bound** (`--buffer-age`, off by default) drops events older than the age as well.
//! Time is counted in ticks of a sixteenth of the age ([`AGE_TICKS`] to the age), and the ring
//! notes only where each tick's first event is ([`Mark`]): at most `AGE_TICKS + 1` marks of 16
//! bytes per session, not a timestamp per event. An event is dropped once its tick is more than
//! `AGE_TICKS` ticks old, so between the age and a sixteenth more after it was appended; an
//! emit ages its own session's ring, and the expiry task ages every ring once per tick of its own
//! (at most a second), so an idle session's events go too, and its storage with them.

use std::collections::VecDeque;
use std::sync::Arc;

use super::event::Body;
#[cfg(test)]
use super::event::Event;

/// The smallest storage allocated, in entries: a session that gets a handful of events grows
/// once, not three times.
const FIRST_CAPACITY: usize = 8;

/// Ticks to the age bound: a tick is a sixteenth of `--buffer-age`, the precision of the bound.
pub(super) const AGE_TICKS: u32 = 16;

pub(super) struct Ring {
    /// The bodies of events `first_seq()..=last`, oldest first.
    bodies: VecDeque<Arc<Body>>,
    /// Number of the last event appended (0: none yet). It outlives the bodies: a ring cleared
    /// or overtaken still numbers the next event after it.
    last: u64,
    /// With an age bound, the first event of each tick that had events, oldest first; the
    /// events from one mark to the next were all appended in the first one's tick. Empty (and
    /// unallocated) without an age bound.
    marks: VecDeque<Mark>,
}

/// Event `seq` was the first appended in tick `tick` (see the module header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    seq: u64,
    tick: u32,
}

impl Ring {
    pub(super) const fn new() -> Ring {
        Ring { bodies: VecDeque::new(), last: 0, marks: VecDeque::new() }
    }

    /// Number of the last event appended (0: none yet).
    #[inline]
    pub(super) fn last_seq(&self) -> u64 {
        self.last
    }

    /// Empties the ring and numbers the next event `last + 1` (cluster mode: the ring is
    /// filled from Redis from there).
    pub(super) fn reset(&mut self, last: u64) {
        self.bodies.clear();
        self.marks.clear();
        self.last = last;
    }

    /// Number of the oldest event held; `last_seq() + 1` when the ring is empty.
    #[inline]
    pub(super) fn first_seq(&self) -> u64 {
        self.last + 1 - self.bodies.len() as u64
    }

    /// How many events the ring holds.
    pub(super) fn len(&self) -> usize {
        self.bodies.len()
    }

    /// How many entries the ring's storage has room for.
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.bodies.capacity()
    }

    /// Appends the next event, keeping at most `limit` (the buffer size, at least 1) and, with
    /// an age bound, only events of the last [`AGE_TICKS`] ticks before `tick` (the current one).
    /// Returns the new event's number and, when older events were dropped, the number of the
    /// newest of them.
    #[inline]
    pub(super) fn push(&mut self, body: Arc<Body>, limit: usize, tick: Option<u32>) -> (u64, Option<u64>) {
        let mut dropped = match tick {
            Some(tick) => self.age(tick),
            None => None,
        };
        if self.bodies.len() >= limit {
            dropped = Some(self.first_seq());
            self.bodies.pop_front();
            if self.marks.get(1).is_some_and(|next| next.seq <= self.first_seq()) {
                self.marks.pop_front();
            }
        } else if self.bodies.len() == self.bodies.capacity() {
            self.grow(limit);
        }
        self.bodies.push_back(body);
        self.last += 1;
        if let Some(tick) = tick {
            if self.marks.back().is_none_or(|mark| mark.tick != tick) {
                self.marks.push_back(Mark { seq: self.last, tick });
            }
        }
        (self.last, dropped)
    }

    /// Drops the events appended more than [`AGE_TICKS`] ticks before `tick` (the current
    /// one), and gives back storage the ring no longer needs. Returns the number of the newest
    /// event dropped, if any was.
    pub(super) fn age(&mut self, tick: u32) -> Option<u64> {
        let cutoff = tick.saturating_sub(AGE_TICKS);
        let mut dropped = None;
        while self.marks.front().is_some_and(|mark| mark.tick < cutoff) {
            self.marks.pop_front();
            // Everything before the next mark (or everything, without one) is that old.
            let keep_from = self.marks.front().map_or(self.last + 1, |next| next.seq);
            let old = keep_from.saturating_sub(self.first_seq()).min(self.bodies.len() as u64) as usize;
            if old > 0 {
                self.bodies.drain(..old);
                dropped = Some(keep_from - 1);
            }
        }
        if dropped.is_some() {
            if self.bodies.is_empty() {
                self.clear();
            } else if self.bodies.capacity() > FIRST_CAPACITY && self.bodies.len() * 4 <= self.bodies.capacity() {
                self.bodies.shrink_to((self.bodies.len() * 2).max(FIRST_CAPACITY));
            }
        }
        dropped
    }

    /// Room for more entries: twice what is held (at least [`FIRST_CAPACITY`]), never more than
    /// `limit` in all.
    #[cold]
    fn grow(&mut self, limit: usize) {
        let len = self.bodies.len();
        let target = (len * 2).max(FIRST_CAPACITY).min(limit);
        self.bodies.reserve_exact(target - len);
    }

    /// The events after number `after`, at most `max` of them, oldest first. Events the ring
    /// no longer holds are skipped: a caller behind `first_seq() - 1` must notice that itself.
    pub(super) fn bodies_after(&self, after: u64, max: usize) -> impl ExactSizeIterator<Item = &Arc<Body>> + '_ {
        let skip = after.saturating_sub(self.first_seq() - 1).min(self.bodies.len() as u64) as usize;
        let take = (self.bodies.len() - skip).min(max);
        self.bodies.range(skip..skip + take)
    }

    /// [`Ring::bodies_after`] as the events the hub hands out, with their numbers.
    #[cfg(test)]
    pub(super) fn events_after(&self, after: u64, max: usize) -> Vec<Event> {
        let first = after.max(self.first_seq() - 1) + 1;
        self.bodies_after(after, max)
            .zip(first..)
            .map(|(body, seq)| Event { seq, notice: false, body: body.clone() })
            .collect()
    }

    /// Frees the storage (the session is gone, or all it held aged out); the numbering stays.
    pub(super) fn clear(&mut self) {
        self.bodies = VecDeque::new();
        self.marks = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::event::Body;
    use super::*;

    fn body(n: u64) -> Arc<Body> {
        Body::shared("n", n.to_string())
    }

    fn seqs(ring: &Ring, after: u64, max: usize) -> Vec<u64> {
        let events = ring.events_after(after, max);
        for event in &events {
            assert_eq!(event.data(), event.seq.to_string(), "event {} carries its own body", event.seq);
            assert!(!event.notice);
        }
        events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn an_empty_ring_allocates_nothing_and_numbers_from_one() {
        let mut ring = Ring::new();
        assert_eq!((ring.len(), ring.capacity(), ring.last_seq(), ring.first_seq()), (0, 0, 0, 1));
        assert!(seqs(&ring, 0, 10).is_empty());
        assert_eq!(ring.push(body(1), 4, None), (1, None));
        assert_eq!((ring.first_seq(), ring.last_seq()), (1, 1));
    }

    #[test]
    fn capacity_grows_to_the_buffer_and_never_past_it() {
        for limit in [1, 3, 8, 9, 100, 1000, 1024, 1500] {
            let mut ring = Ring::new();
            let mut most = 0;
            for n in 1..=(3 * limit as u64 + 7) {
                ring.push(body(n), limit, None);
                most = most.max(ring.capacity());
                assert!(ring.capacity() <= limit, "capacity {} past the buffer {limit}", ring.capacity());
                assert!(ring.capacity() <= (2 * ring.len()).max(FIRST_CAPACITY), "capacity {} for {} held", ring.capacity(), ring.len());
                assert_eq!(ring.len(), (n as usize).min(limit));
            }
            assert_eq!(most, limit, "a full ring holds exactly the buffer");
        }
    }

    #[test]
    fn numbers_stay_consecutive_across_wrap_and_the_dropped_one_is_told() {
        let limit = 5;
        let mut ring = Ring::new();
        for n in 1..=23u64 {
            let (seq, dropped) = ring.push(body(n), limit, None);
            assert_eq!(seq, n);
            assert_eq!(dropped, n.checked_sub(limit as u64).filter(|d| *d > 0));
            assert_eq!(ring.first_seq(), n.saturating_sub(limit as u64) + 1);
            assert_eq!(ring.last_seq(), n);
            assert_eq!(seqs(&ring, 0, usize::MAX), (ring.first_seq()..=n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn replay_after_a_cursor_starts_just_after_it_in_batches() {
        let mut ring = Ring::new();
        for n in 1..=20u64 {
            ring.push(body(n), 8, None);
        }
        // Holds 13..=20.
        assert_eq!(seqs(&ring, 15, 100), vec![16, 17, 18, 19, 20]);
        assert_eq!(seqs(&ring, 15, 2), vec![16, 17]);
        assert_eq!(seqs(&ring, 12, 3), vec![13, 14, 15], "just before the oldest: from the oldest");
        assert_eq!(seqs(&ring, 3, 3), vec![13, 14, 15], "overtaken: from the oldest (the caller tells the gap)");
        assert!(seqs(&ring, 20, 5).is_empty(), "nothing after the last");
        assert!(seqs(&ring, 25, 5).is_empty());
    }

    #[test]
    fn clearing_frees_the_storage_and_keeps_the_numbering() {
        let mut ring = Ring::new();
        for n in 1..=10u64 {
            ring.push(body(n), 4, None);
        }
        ring.clear();
        assert_eq!((ring.len(), ring.capacity(), ring.last_seq(), ring.first_seq()), (0, 0, 10, 11));
        assert_eq!(ring.push(body(11), 4, None), (11, None));
    }

    /// With an age bound: three events a tick; after each push the ring holds exactly the
    /// events of the last `AGE_TICKS + 1` ticks, with one mark per tick.
    #[test]
    fn events_older_than_the_age_bound_go_on_push_and_marks_stay_bounded() {
        let mut ring = Ring::new();
        let mut n = 0;
        for tick in 0..100u32 {
            for _ in 0..3 {
                n += 1;
                let (seq, dropped) = ring.push(body(n), 10_000, Some(tick));
                assert_eq!(seq, n);
                let oldest_tick = tick.saturating_sub(AGE_TICKS);
                assert_eq!(ring.first_seq(), 3 * u64::from(oldest_tick) + 1, "tick {tick}");
                let aged_now = tick > AGE_TICKS && seq % 3 == 1;
                assert_eq!(dropped, aged_now.then(|| ring.first_seq() - 1), "tick {tick}, event {seq}");
                assert_eq!(ring.marks.len() as u32, tick.min(AGE_TICKS) + 1);
            }
        }
        assert_eq!(seqs(&ring, 0, usize::MAX), (ring.first_seq()..=n).collect::<Vec<_>>());
    }

    #[test]
    fn an_idle_ring_ages_out_whole_and_gives_its_storage_back() {
        let mut ring = Ring::new();
        for n in 1..=1000 {
            ring.push(body(n), 1024, Some(0));
        }
        for n in 1001..=1010 {
            ring.push(body(n), 1024, Some(10));
        }
        assert_eq!(ring.age(AGE_TICKS), None, "tick 0 is not past the age until tick 17");
        assert_eq!(ring.age(AGE_TICKS + 1), Some(1000));
        assert_eq!((ring.first_seq(), ring.len()), (1001, 10));
        assert!(ring.capacity() <= 20, "storage {} kept for 10 events", ring.capacity());
        assert_eq!(ring.age(10 + AGE_TICKS + 1), Some(1010));
        assert_eq!((ring.len(), ring.capacity(), ring.marks.capacity(), ring.first_seq()), (0, 0, 0, 1011));
        assert_eq!(ring.push(body(1011), 1024, Some(40)), (1011, None));
    }

    #[test]
    fn the_count_bound_and_the_age_bound_together() {
        let mut ring = Ring::new();
        // One event a tick, four kept by count: the count bound drops first, and the marks of
        // events it dropped go with them.
        for n in 1..=10u64 {
            let (_, dropped) = ring.push(body(n), 4, Some(n as u32));
            assert_eq!(dropped, n.checked_sub(4).filter(|d| *d > 0));
            assert!(ring.marks.len() <= 4);
            assert_eq!(ring.marks.front().map(|m| m.seq), Some(ring.first_seq()));
        }
        // Many ticks later, both: the age bound drops all four, then the count has room.
        assert_eq!(ring.push(body(11), 4, Some(100)), (11, Some(10)));
        assert_eq!((ring.first_seq(), ring.len()), (11, 1));
    }

    #[test]
    fn a_body_is_held_once_however_many_rings_hold_it() {
        let shared = body(1);
        let mut rings: Vec<Ring> = (0..10).map(|_| Ring::new()).collect();
        for ring in &mut rings {
            ring.push(shared.clone(), 4, None);
        }
        assert_eq!(Arc::strong_count(&shared), 11);
        let copied = rings[3].events_after(0, 1);
        assert!(Arc::ptr_eq(&copied[0].body, &shared));
    }
}
