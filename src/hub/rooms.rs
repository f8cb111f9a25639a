//! Rooms: named sets of sessions, and broadcasts to a room or to every session ([`Target`]).
//!
//! A room is a name and a set of sessions. Membership is kept twice: in each session's state (so
//! it goes when the session goes, and `info` shows it) and in the sharded room table (so a
//! broadcast finds its members without scanning every session). Both copies change together and
//! only here, always taking the session lock first and the room shard second; nothing takes a
//! session lock while holding a room shard, so the two cannot deadlock.
//!
//! A broadcast copies its member list out of the room shard (one pointer clone per member),
//! releases the shard, then appends to each member's ring. No lock is held from one member to the
//! next, and nothing here writes a socket: an append only wakes the member's attachment, whose
//! transport writes in its own task. So a broadcast costs O(members) and one slow reader slows
//! no one else. Membership belongs to the session, not to a transport, so it survives switches.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, RwLock};

use serde_json::Value;

use crate::protocol::Sid;

use super::event::{validate_event_name, Body};
use super::session::{lock, Session};
use super::table::SHARDS;
use super::{Hub, HubError};

/// Longest room name, in bytes.
pub const MAX_ROOM_NAME: usize = 128;

/// Room names travel in URLs and JSON; like event names they are bounded and free of control
/// characters.
pub fn check_room_name(name: &str) -> Result<(), HubError> {
    if name.is_empty() {
        Err(HubError::RoomName("is empty"))
    } else if name.len() > MAX_ROOM_NAME {
        Err(HubError::RoomName("is longer than 128 bytes"))
    } else if name.chars().any(char::is_control) {
        Err(HubError::RoomName("contains control characters"))
    } else {
        Ok(())
    }
}

/// Where a published event goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One session.
    Sid(Sid),
    /// Every member of a room.
    Room(String),
    /// Every live session.
    All,
}

impl Target {
    /// Reads a target from its JSON form, `{"sid": SID}`, `{"room": ROOM}` or `{"all": true}`:
    /// the one schema of the publish API's `to` and of the application's emit actions. The error
    /// says what is wrong, for whoever sent it.
    pub fn from_json(value: Value) -> Result<Target, String> {
        let Value::Object(map) = value else {
            return Err("`to` must be {\"sid\": SID}, {\"room\": ROOM} or {\"all\": true}".into());
        };
        if map.len() != 1 {
            return Err("`to` must have exactly one of `sid`, `room`, `all`".into());
        }
        let (key, value) = map.into_iter().next().expect("one entry");
        let text = |value: Value, field: &str| match value {
            Value::String(text) => Ok(text),
            _ => Err(format!("`{field}` must be a string")),
        };
        match key.as_str() {
            "sid" => text(value, "sid")?.parse().map(Target::Sid).map_err(|_| "`sid` is not a session id".to_string()),
            "room" => {
                let room = text(value, "to.room")?;
                check_room_name(&room).map_err(|err| format!("`to.room`: {err}"))?;
                Ok(Target::Room(room))
            }
            "all" if value == Value::Bool(true) => Ok(Target::All),
            "all" => Err("`to.all` must be true".into()),
            other => Err(format!("unknown target `{other}`: use `sid`, `room` or `all`")),
        }
    }
}

/// Room name -> its members, in one shard of the room table.
pub(super) type RoomTable = HashMap<Arc<str>, HashMap<Sid, Arc<Session>>>;

impl Hub {
    fn room_shard(&self, room: &str) -> &RwLock<RoomTable> {
        let index = self.inner.hasher.hash_one(room) as usize % SHARDS;
        &self.inner.rooms[index]
    }

    /// Adds a session to a room. Returns `false` if it was a member already.
    pub async fn join(&self, sid: &Sid, room: &str) -> Result<bool, HubError> {
        check_room_name(room)?;
        if let Some(cluster) = &self.inner.cluster {
            let joined = Box::pin(cluster.join(sid, room)).await?;
            self.mirror_rooms(sid, |rooms| {
                rooms.insert(Arc::from(room));
            });
            return Ok(joined);
        }
        let session = self.find(sid).ok_or(HubError::NoSession)?;
        let mut state = lock(&session.state);
        if state.removed {
            return Err(HubError::NoSession);
        }
        let room: Arc<str> = room.into();
        if !state.rooms.insert(room.clone()) {
            return Ok(false);
        }
        session.room_count.store(state.rooms.len(), Ordering::Relaxed);
        let mut table = self.room_shard(&room).write().unwrap_or_else(PoisonError::into_inner);
        table.entry(room).or_default().insert(sid.clone(), session.clone());
        Ok(true)
    }

    /// Takes a session out of a room. Returns `false` if it was not a member.
    pub async fn leave(&self, sid: &Sid, room: &str) -> Result<bool, HubError> {
        if let Some(cluster) = &self.inner.cluster {
            let left = Box::pin(cluster.leave(sid, room)).await?;
            self.mirror_rooms(sid, |rooms| {
                rooms.remove(room);
            });
            return Ok(left);
        }
        let session = self.find(sid).ok_or(HubError::NoSession)?;
        let mut state = lock(&session.state);
        if state.removed {
            return Err(HubError::NoSession);
        }
        if !state.rooms.remove(room) {
            return Ok(false);
        }
        session.room_count.store(state.rooms.len(), Ordering::Relaxed);
        self.drop_member(sid, room);
        Ok(true)
    }

    /// The sids of a room's members, in no particular order (empty for an unknown room).
    pub async fn members(&self, room: &str) -> Vec<Sid> {
        if let Some(cluster) = &self.inner.cluster {
            return Box::pin(cluster.members(room)).await.unwrap_or_default();
        }
        let table = self.room_shard(room).read().unwrap_or_else(PoisonError::into_inner);
        table.get(room).map(|members| members.keys().cloned().collect()).unwrap_or_default()
    }

    /// How many rooms have members, and the `top` largest with their member counts, largest
    /// first (ties by name): for the operator page. The room table is read a shard at a time.
    /// In cluster mode, the cluster's rooms as Redis has them (up to a thousand looked at);
    /// `None` when Redis cannot be reached.
    pub async fn busiest_rooms(&self, top: usize) -> Option<(usize, Vec<(String, usize)>)> {
        if let Some(cluster) = &self.inner.cluster {
            return Box::pin(cluster.busiest_rooms(top)).await.ok();
        }
        // The smallest of the largest so far on top, to be pushed out first.
        let mut largest: BinaryHeap<Reverse<(usize, Reverse<Arc<str>>)>> = BinaryHeap::with_capacity(top + 1);
        let mut count = 0;
        for shard in &self.inner.rooms {
            let table = shard.read().unwrap_or_else(PoisonError::into_inner);
            count += table.len();
            for (room, members) in table.iter() {
                let entry = Reverse((members.len(), Reverse(room.clone())));
                if largest.len() < top {
                    largest.push(entry);
                } else if largest.peek().is_some_and(|smallest| entry < *smallest) {
                    largest.pop();
                    largest.push(entry);
                }
            }
        }
        let rooms = largest.into_sorted_vec().into_iter().map(|Reverse((n, Reverse(room)))| (room.to_string(), n)).collect();
        Some((count, rooms))
    }

    /// Emits an event to every member of a room. Returns how many sessions it was appended to.
    pub async fn emit_room(&self, room: &str, name: &str, data: &Value) -> Result<usize, HubError> {
        self.publish_except(&Target::Room(room.to_owned()), None, name, data).await
    }

    /// Emits an event to every live session. Returns how many sessions it was appended to.
    pub async fn emit_all(&self, name: &str, data: &Value) -> Result<usize, HubError> {
        self.publish_except(&Target::All, None, name, data).await
    }

    /// Emits to a [`Target`]: one session, a room's members or every live session. Returns how
    /// many sessions the event was appended to; a `Sid` target that is gone is
    /// [`HubError::NoSession`], an empty room is `Ok(0)`. The data is rendered once, whatever
    /// the number of members, and no socket is written here: each member's transport writes in
    /// its own task, so a slow member slows no one else.
    ///
    /// ```
    /// # use serde_json::json;
    /// # use switchyard::hub::{Hub, HubConfig};
    /// # use switchyard::{Target, Transport};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let hub = Hub::new(HubConfig::default(), tokio_util::sync::CancellationToken::new());
    /// let member = hub.attach(Transport::Polling, None, None).await.unwrap();
    /// hub.join(member.sid(), "ops").await.unwrap();
    /// let alert = json!({ "level": "page", "text": "disk full" });
    /// assert_eq!(hub.publish(&Target::Room("ops".into()), "alert", &alert).await, Ok(1));
    /// assert_eq!(hub.publish(&Target::Room("nobody".into()), "alert", &alert).await, Ok(0));
    /// # }
    /// ```
    pub async fn publish(&self, target: &Target, name: &str, data: &Value) -> Result<usize, HubError> {
        self.publish_except(target, None, name, data).await
    }

    /// [`Hub::publish`] to everyone targeted but `except` (typically the sender of a chat line).
    pub async fn publish_except(&self, target: &Target, except: Option<&Sid>, name: &str, data: &Value) -> Result<usize, HubError> {
        validate_event_name(name)?;
        match target {
            Target::Sid(sid) if Some(sid) == except => Ok(0),
            Target::Sid(sid) => self.emit(sid, name, data).await.map(|_| 1),
            // Boxed, like every cluster path under a handler: a handler's future holds the
            // futures it awaits, and the in-memory path should not carry this one's size.
            _ if self.inner.cluster.is_some() => Box::pin(self.publish_clustered(target, except, Body::shared(name, data.to_string()))).await,
            Target::Room(room) => {
                let members: Vec<Arc<Session>> = {
                    let table = self.room_shard(room).read().unwrap_or_else(PoisonError::into_inner);
                    table.get(room.as_str()).map(|members| members.values().cloned().collect()).unwrap_or_default()
                };
                Ok(self.fan_out(&members, except, &Body::shared(name, data.to_string())))
            }
            Target::All => {
                // Rendered once for every shard: one body however many sessions hold it.
                let body = Body::shared(name, data.to_string());
                let mut count = 0;
                for shard in &self.inner.shards {
                    let sessions: Vec<Arc<Session>> = shard.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
                    count += self.fan_out(&sessions, except, &body);
                }
                Ok(count)
            }
        }
    }

    /// Takes `sid` out of the room table's copy of `room`, and the room out of the table once
    /// it is empty.
    /// Cluster mode: keeps the local copy of a session's rooms current while its inbox is held
    /// (see [`SessionHandle::rooms`](super::SessionHandle::rooms)).
    fn mirror_rooms(&self, sid: &Sid, change: impl FnOnce(&mut std::collections::BTreeSet<Arc<str>>)) {
        if let Some(session) = self.find(sid) {
            let mut state = lock(&session.state);
            change(&mut state.rooms);
            session.room_count.store(state.rooms.len(), Ordering::Relaxed);
        }
    }

    /// [`Hub::publish_except`] to a room or to all, in cluster mode: members from Redis,
    /// each event appended there (many at once on the connection's pipeline). Members whose
    /// session is gone are dropped from the room's set.
    async fn publish_clustered(&self, target: &Target, except: Option<&Sid>, body: Arc<Body>) -> Result<usize, HubError> {
        use futures_util::StreamExt;
        let cluster = self.inner.cluster.as_ref().expect("cluster mode");
        let members = match target {
            Target::Room(room) => cluster.members(room).await?,
            _ => cluster.all_sessions().await?,
        };
        let results: Vec<(Sid, Result<u64, HubError>)> = futures_util::stream::iter(members.into_iter().filter(|sid| Some(sid) != except))
            .map(|sid| {
                let body = body.clone();
                async move {
                    let local = self.find(&sid);
                    let result = self.cluster_append(cluster, &sid, local.as_ref(), body).await;
                    (sid, result)
                }
            })
            .buffer_unordered(256)
            .collect()
            .await;
        let mut delivered = 0;
        let mut gone = Vec::new();
        for (sid, result) in results {
            match result {
                Ok(_) => delivered += 1,
                Err(HubError::NoSession) => gone.push(sid),
                Err(err) => return Err(err),
            }
        }
        if let Target::Room(room) = target {
            cluster.forget_members(room, &gone).await;
        }
        Ok(delivered)
    }

    pub(super) fn drop_member(&self, sid: &Sid, room: &str) {
        let mut table = self.room_shard(room).write().unwrap_or_else(PoisonError::into_inner);
        if let Some(members) = table.get_mut(room) {
            members.remove(sid);
            if members.is_empty() {
                table.remove(room);
            }
        }
    }

    /// Appends one event, rendered once by the caller, to each session. Every member's ring
    /// shares the one body: a broadcast costs one copy of the data, not one per member.
    fn fan_out(&self, sessions: &[Arc<Session>], except: Option<&Sid>, body: &Arc<Body>) -> usize {
        sessions
            .iter()
            .filter(|session| Some(&session.sid) != except)
            .filter(|session| self.append(session, body.clone()).is_some())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;

    use super::super::{Attachment, Expired, HubConfig, Transport};
    use super::*;

    fn hub() -> Hub {
        Hub::new(HubConfig { grace: Duration::from_secs(30), buffer: 8, ..HubConfig::default() }, CancellationToken::new())
    }

    async fn session(hub: &Hub) -> (Sid, Attachment) {
        let mut attachment = hub.attach(Transport::Sse, None, None).await.expect("room for a session");
        attachment.try_recv().unwrap().expect("hello");
        (attachment.sid().clone(), attachment)
    }

    fn names(attachment: &mut Attachment) -> Vec<String> {
        std::iter::from_fn(|| attachment.try_recv().ok().flatten()).map(|e| e.data().to_owned()).collect()
    }

    #[tokio::test]
    async fn a_room_broadcast_reaches_members_only_and_membership_is_mirrored() {
        let hub = hub();
        let (a, mut a_att) = session(&hub).await;
        let (b, mut b_att) = session(&hub).await;
        let (_, mut c_att) = session(&hub).await;
        assert_eq!(hub.join(&a, "r").await, Ok(true));
        assert_eq!(hub.join(&a, "r").await, Ok(false));
        assert_eq!(hub.join(&b, "r").await, Ok(true));
        assert_eq!(hub.emit_room("r", "m", &json!(1)).await, Ok(2));
        assert_eq!((names(&mut a_att), names(&mut b_att), names(&mut c_att)), (vec!["1".into()], vec!["1".into()], vec![]));
        assert_eq!(hub.info(&a).await.unwrap().rooms, vec!["r".to_owned()]);
        assert_eq!(hub.leave(&a, "r").await, Ok(true));
        assert_eq!(hub.leave(&a, "r").await, Ok(false));
        assert_eq!(hub.members("r").await, vec![b.clone()]);
        assert_eq!(hub.emit_all("m", &json!(2)).await, Ok(3));
        assert_eq!(hub.publish_except(&Target::Room("r".into()), Some(&b), "m", &json!(3)).await, Ok(0));
        assert_eq!(hub.publish_except(&Target::All, Some(&b), "m", &json!(4)).await, Ok(2));
        assert!(matches!(hub.join(&a, "").await, Err(HubError::RoomName(_))));
        assert_eq!(hub.join(&Sid::random(), "r").await, Err(HubError::NoSession));
    }

    /// A broadcast's data is held once, whichever shards its sessions are in: every member's
    /// event is the same body (it was once rendered anew for each of the 64 shards).
    #[tokio::test]
    async fn a_broadcast_is_one_body_shared_by_every_session() {
        let hub = hub();
        let mut held = Vec::new();
        for _ in 0..4 * SHARDS {
            let (sid, attachment) = session(&hub).await;
            hub.join(&sid, "r").await.unwrap();
            held.push(attachment);
        }
        for target in [Target::All, Target::Room("r".into())] {
            assert_eq!(hub.publish(&target, "m", &json!("x".repeat(512))).await, Ok(4 * SHARDS));
            let events: Vec<_> = held.iter_mut().map(|a| a.try_recv().unwrap().expect("the broadcast")).collect();
            assert!(events.iter().all(|e| Arc::ptr_eq(&e.body, &events[0].body)), "{target:?}: one body for all");
            assert_eq!(Arc::strong_count(&events[0].body), 2 * events.len(), "{target:?}: held by each ring and each copy out");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_and_removal_drop_membership_and_expiry_is_reported() {
        let hub = hub();
        let mut expired = hub.watch_expired();
        let (a, a_att) = session(&hub).await;
        let (b, _b_att) = session(&hub).await;
        hub.join(&a, "r").await.unwrap();
        hub.join(&a, "s").await.unwrap();
        hub.join(&b, "r").await.unwrap();
        drop(a_att);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(hub.expire(Instant::now()), 1);
        assert_eq!(expired.try_recv().unwrap(), Expired { sid: a.clone(), rooms: vec!["r".into(), "s".into()] });
        assert_eq!(hub.members("r").await, vec![b.clone()]);
        assert!(hub.members("s").await.is_empty());
        assert!(hub.remove(&b).await);
        assert!(hub.members("r").await.is_empty());
        assert!(expired.try_recv().is_err(), "a removal is not an expiry");
        assert_eq!(hub.len(), 0);
    }

    #[tokio::test]
    async fn the_busiest_rooms_come_largest_first_and_ties_by_name() {
        let hub = hub();
        assert_eq!(hub.busiest_rooms(3).await, Some((0, vec![])));
        let mut held = Vec::new();
        for (room, members) in [("quiet", 1), ("b-tie", 2), ("a-tie", 2), ("lobby", 5), ("solo", 1)] {
            for _ in 0..members {
                let (sid, attachment) = session(&hub).await;
                hub.join(&sid, room).await.unwrap();
                held.push(attachment);
            }
        }
        let top = |rooms: &[(&str, usize)]| rooms.iter().map(|(r, n)| ((*r).to_owned(), *n)).collect::<Vec<_>>();
        assert_eq!(hub.busiest_rooms(3).await, Some((5, top(&[("lobby", 5), ("a-tie", 2), ("b-tie", 2)]))));
        assert_eq!(hub.busiest_rooms(10).await.unwrap().1.len(), 5);
        assert_eq!(hub.busiest_rooms(0).await, Some((5, vec![])));
    }
}
