//! Property test of the session hub's delivery guarantee, through its public API.
//!
//! proptest generates random runs of what clients and the app do to one session: emit events,
//! attach each transport kind (a switch supersedes the transport held), drop the transport,
//! resume from the client's last cursor, from an older one, from none, by cursor alone, or with
//! a malformed, foreign, out-of-range cursor or a malformed sid; read some events from the
//! transport held or drain a superseded one; let time pass (tokio's paused clock) and run
//! `Hub::expire`. Buffers are small so that overflow is common.
//!
//! A model follows along: the events emitted to the client's current session, whether it is
//! attached, since when it is detached and so whether it has expired. Every event handed out is
//! checked as it comes:
//!
//! * each transport's stream is the session's history after the position it started from, in
//!   order, each event once, with the data emitted, except that an `overflow` gap notice stands
//!   exactly where the buffer lost events: its position is the last event the buffer no longer
//!   holds and its `lost` count is exactly the events skipped;
//! * the client's log (what it read from the transport it held) therefore holds every event of
//!   its session once and in order: a hole is allowed only behind an `overflow` gap, or behind a
//!   resume without a cursor (the contract: it resumes after what any transport was handed);
//!   an event is seen again only on a stream the client started from an older cursor;
//! * a fresh session comes exactly when the model says the request cannot be honoured, with a
//!   `gap` notice naming why (`expired`, `bad_cursor`, `invalid_sid`), and only then;
//! * a superseded transport hands out at most what it had copied before it was superseded and
//!   then says so; a transport is detached as a slow consumer only when it was overtaken by the
//!   buffer or left events unread for the configured time.

use std::collections::VecDeque;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{json, Value};
use switchyard::hub::{Attachment, CloseReason, Event, HubConfig};
use switchyard::{Cursor, Hub, Sid, Transport};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const GRACE: Duration = Duration::from_secs(30);
const KINDS: [Transport; 3] = [Transport::WebSocket, Transport::Sse, Transport::Polling];

/// Where a client asks to resume.
#[derive(Debug, Clone)]
enum Resume {
    /// sid and the last cursor it saw: the normal case.
    Last,
    /// sid and a cursor it saw earlier (index from the end of the cursors it saw).
    Older(usize),
    /// sid alone.
    NoCursor,
    /// The last cursor alone, as a bare `Last-Event-ID`.
    CursorOnly,
    /// sid and a cursor that does not parse.
    Malformed(usize),
    /// sid and a cursor past the last event emitted.
    Beyond(u64),
    /// sid and another session's cursor.
    Foreign,
    /// A sid that does not parse, with the last cursor.
    BadSid,
}

#[derive(Debug, Clone)]
enum Action {
    /// The app emits this many events.
    Emit(usize),
    /// The client attaches a transport; the one it held, if any, is superseded.
    Attach(usize, Resume),
    /// The client's transport drops.
    Detach,
    /// The client reads up to this many events from its transport.
    Read(usize),
    /// A superseded transport is read to its end.
    DrainOld,
    /// Time passes and the expiry task runs.
    Wait(u64),
}

const MALFORMED: [&str; 6] = ["", "garbage", "{sid}.01", "{sid}.-1", "{sid}.x~", "{sid}.0"];

fn resume() -> impl Strategy<Value = Resume> {
    prop_oneof![
        8 => Just(Resume::Last),
        2 => (0usize..6).prop_map(Resume::Older),
        1 => Just(Resume::NoCursor),
        2 => Just(Resume::CursorOnly),
        1 => (0..MALFORMED.len()).prop_map(Resume::Malformed),
        1 => (1u64..4).prop_map(Resume::Beyond),
        1 => Just(Resume::Foreign),
        1 => Just(Resume::BadSid),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (1usize..8).prop_map(Action::Emit),
        4 => (0..KINDS.len(), resume()).prop_map(|(k, r)| Action::Attach(k, r)),
        2 => Just(Action::Detach),
        6 => (1usize..12).prop_map(Action::Read),
        1 => Just(Action::DrainOld),
        2 => prop_oneof![Just(1u64), Just(10), Just(25), Just(31)].prop_map(Action::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn clients_get_every_event_once_in_order_or_an_exact_gap(
        buffer in prop_oneof![1usize..6, Just(64usize)],
        slow_timeout in prop_oneof![Just(20u64), Just(10 * 365 * 86_400)],
        actions in prop::collection::vec(action(), 1..80),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        runtime.block_on(run(buffer, Duration::from_secs(slow_timeout), actions));
    }
}

/// What the model knows of the client's current session.
struct Session {
    sid: Sid,
    /// Data of each event emitted, by number - 1.
    emitted: Vec<u64>,
    /// Whether the expiry task removed it.
    expired: bool,
    /// Since when it has had no transport; `None` while attached.
    detached_at: Option<Instant>,
    /// The kind of the last attach, for the poll continuation rule.
    last_kind: Option<Transport>,
}

/// A transport's stream and what it must yield next.
struct Stream {
    attachment: Attachment,
    sid: Sid,
    /// Number of the last event this stream handed out (or the position it started from or a
    /// gap moved it to); `None` until the hello says where a resume without cursor started.
    position: Option<u64>,
    /// Notices owed before any event: the hello, then a fresh session's gap.
    expect: VecDeque<Expected>,
    attached_at: Instant,
    /// Events emitted when this stream was superseded: it can hand out none after them.
    superseded_at: Option<u64>,
    /// Started from an older cursor than the client's newest: its replay is seen again.
    replaying: bool,
    /// Started without a cursor: may skip what another transport was handed.
    no_cursor: bool,
    /// Where a resume without cursor may start at the earliest: the client's newest event (any
    /// transport was handed at least that).
    min_start: u64,
    /// Detached by the hub as a slow consumer (seen through `Hub::info`).
    evicted: bool,
}

#[derive(Debug, PartialEq)]
enum Expected {
    Hello { kind: Transport, resumed: bool },
    Gap(&'static str),
}

/// The client: its log and position, its transport, superseded transports not yet read out.
struct Client {
    sid: Option<Sid>,
    /// Every cursor it saw in its current session, oldest first.
    cursors: Vec<Cursor>,
    /// Newest event number it read in its current session.
    highest: u64,
    /// The position of an `overflow` gap notice read since the last event.
    after_gap: Option<u64>,
    current: Option<Stream>,
    old: Vec<(Stream, Vec<u64>)>,
}

async fn run(buffer: usize, slow: Duration, actions: Vec<Action>) {
    let config = HubConfig { grace: GRACE, buffer, slow_client_timeout: slow, ..HubConfig::default() };
    let hub = Hub::new(config, CancellationToken::new());
    let mut session: Option<Session> = None;
    // Sessions the client left for a fresh one, with the time they lost their transport; they
    // expire like any other.
    let mut abandoned: Vec<Instant> = Vec::new();
    let mut client = Client { sid: None, cursors: Vec::new(), highest: 0, after_gap: None, current: None, old: Vec::new() };
    let mut next_data = 0u64;

    for action in actions {
        match action {
            Action::Emit(count) => {
                let Some(sid) = client.sid.clone() else { continue };
                let model = session.as_mut().expect("a client with a sid has a session");
                for _ in 0..count {
                    let result = hub.emit(&sid, "ev", &json!(next_data)).await;
                    if model.expired {
                        assert!(result.is_err(), "emit to an expired session must fail");
                        continue;
                    }
                    let cursor = result.expect("emit to a live session");
                    model.emitted.push(next_data);
                    assert_eq!(cursor.seq, model.emitted.len() as u64, "events are numbered 1, 2, ...");
                    next_data += 1;
                }
                notice_evictions(&hub, &mut client, model, buffer).await;
            }
            Action::Attach(kind, resume) => {
                let kind = KINDS[kind];
                attach(&hub, &mut client, &mut session, &mut abandoned, kind, resume).await;
            }
            Action::Detach => {
                if let Some(stream) = client.current.take() {
                    let model = session.as_mut().unwrap();
                    if !stream.evicted {
                        model.detached_at = Some(Instant::now());
                    }
                }
            }
            Action::Read(count) => {
                let Some(model) = session.as_mut() else { continue };
                for _ in 0..count {
                    let Some(stream) = client.current.as_mut() else { break };
                    match stream.attachment.try_recv() {
                        Ok(Some(event)) => {
                            check_stream(stream, &event, &model.emitted, buffer);
                            client.log(&event, model);
                        }
                        Ok(None) => {
                            assert!(!stream.evicted, "an evicted transport must say so, not wait");
                            break;
                        }
                        Err(CloseReason::SlowConsumer) => {
                            assert!(stream.evicted, "evicted without the hub saying so");
                            client.current = None;
                        }
                        Err(reason) => panic!("the transport held ended: {reason:?}"),
                    }
                }
            }
            Action::DrainOld => {
                let Some((mut stream, emitted)) = client.old.pop() else { continue };
                loop {
                    match stream.attachment.try_recv() {
                        Ok(Some(event)) => {
                            check_stream(&mut stream, &event, &emitted, buffer);
                            if !event.notice {
                                let limit = stream.superseded_at.unwrap();
                                assert!(event.seq <= limit, "a superseded transport handed out event {} emitted after", event.seq);
                            }
                        }
                        Ok(None) => panic!("a superseded transport must end, not wait"),
                        Err(CloseReason::Superseded) => break,
                        Err(CloseReason::SlowConsumer) => {
                            assert!(stream.evicted, "evicted without the hub saying so");
                            break;
                        }
                        Err(reason) => panic!("unexpected end of a superseded transport: {reason:?}"),
                    }
                }
            }
            Action::Wait(seconds) => {
                tokio::time::advance(Duration::from_secs(seconds)).await;
                let now = Instant::now();
                let removed = hub.expire(now);
                let before = abandoned.len();
                abandoned.retain(|&t| now - t < GRACE);
                let mut expected = before - abandoned.len();
                if let Some(model) = session.as_mut().filter(|m| !m.expired) {
                    if let Some(stream) = client.current.as_mut().filter(|s| !s.evicted) {
                        let attached = hub.info(&model.sid).await.and_then(|i| i.transport).is_some();
                        if !attached {
                            // Left events unread for the slow-consumer timeout.
                            assert!(now - stream.attached_at >= slow, "detached as slow before its time");
                            assert!(stream.position.unwrap_or(0) < model.emitted.len() as u64, "detached as slow with nothing unread");
                            stream.evicted = true;
                            model.detached_at = Some(now);
                        }
                    }
                    if model.detached_at.is_some_and(|t| now - t >= GRACE) {
                        model.expired = true;
                        expected += 1;
                    }
                }
                assert_eq!(removed, expected, "sessions removed by expiry");
                if let Some(model) = session.as_ref().filter(|m| !m.expired) {
                    let info = hub.info(&model.sid).await.expect("a live session");
                    assert_eq!(info.last_seq, model.emitted.len() as u64);
                    assert_eq!(info.buffered, model.emitted.len().min(buffer));
                    assert_eq!(info.detached_for, model.detached_at.map(|t| now - t));
                }
            }
        }
    }
}

/// After emits: the transport held is detached as a slow consumer only if the buffer overtook it.
async fn notice_evictions(hub: &Hub, client: &mut Client, model: &mut Session, buffer: usize) {
    if model.expired {
        return;
    }
    let Some(stream) = client.current.as_mut().filter(|s| !s.evicted) else { return };
    if hub.info(&model.sid).await.and_then(|i| i.transport).is_none() {
        let newest_lost = (model.emitted.len() as u64).saturating_sub(buffer as u64);
        assert!(
            stream.position.unwrap_or(0) < newest_lost,
            "detached as a slow consumer at {:?} though the buffer still holds everything after it",
            stream.position
        );
        stream.evicted = true;
        model.detached_at = Some(Instant::now());
    }
}

async fn attach(
    hub: &Hub,
    client: &mut Client,
    session: &mut Option<Session>,
    abandoned: &mut Vec<Instant>,
    kind: Transport,
    resume: Resume,
) {
    let sid = client.sid.as_ref().map(ToString::to_string);
    let last = client.cursors.last().map(ToString::to_string);
    let (sid_arg, cursor_arg): (Option<String>, Option<String>) = match (&sid, &resume) {
        (None, _) => (None, None),
        (Some(_), Resume::Last) => (sid.clone(), last.clone()),
        (Some(_), Resume::Older(back)) => {
            let i = client.cursors.len().saturating_sub(1 + back);
            (sid.clone(), client.cursors.get(i).map(ToString::to_string))
        }
        (Some(_), Resume::NoCursor) => (sid.clone(), None),
        (Some(_), Resume::CursorOnly) => (None, last.clone()),
        (Some(s), Resume::Malformed(i)) => (sid.clone(), Some(MALFORMED[*i].replace("{sid}", s))),
        (Some(s), Resume::Beyond(k)) => {
            let emitted = session.as_ref().unwrap().emitted.len() as u64;
            (sid.clone(), Some(format!("{s}.{}", emitted + k)))
        }
        (Some(_), Resume::Foreign) => (sid.clone(), Some(format!("{}.1", Sid::random()))),
        (Some(_), Resume::BadSid) => (Some("not a sid".into()), last.clone()),
    };
    let cursor: Option<Cursor> = cursor_arg.as_deref().and_then(|c| c.parse().ok());

    // What the hub must do, per the contract: a new session when asked for none; a fresh one
    // with a gap when the sid or cursor is malformed, names no live session, or cannot be placed.
    let live = session.as_ref().filter(|m| !m.expired).map(|m| (m.sid.clone(), m.emitted.len() as u64));
    let outcome: Result<(), Option<&'static str>> = match (&sid_arg, &cursor_arg) {
        (None, None) => Err(None),
        (_, Some(_)) if cursor.is_none() => Err(Some("bad_cursor")),
        (Some(raw), _) if raw.parse::<Sid>().is_err() => Err(Some("invalid_sid")),
        _ => {
            let named: Sid = sid_arg.as_deref().map_or_else(|| cursor.as_ref().unwrap().sid.clone(), |s| s.parse().unwrap());
            match (&live, &cursor) {
                (Some((mine, _)), _) if *mine != named => Err(Some("expired")),
                (None, _) => Err(Some("expired")),
                (Some((mine, last)), Some(c)) if c.sid != *mine || c.seq > *last => Err(Some("bad_cursor")),
                _ => Ok(()),
            }
        }
    };

    let attachment = hub.attach(kind, sid_arg.as_deref(), cursor_arg.as_deref()).await.expect("no session limit here");
    let now = Instant::now();
    let emitted_now = session.as_ref().map_or(0, |m| m.emitted.len() as u64);
    // The transport held is superseded (same session) or abandoned (the client moves on).
    let old_held = client.current.as_ref().is_some_and(|s| !s.evicted);
    if let Some(mut old) = client.current.take() {
        if outcome.is_ok() {
            old.superseded_at = Some(emitted_now);
            let emitted = session.as_ref().unwrap().emitted.clone();
            client.old.push((old, emitted));
            client.old.truncate(3);
        }
    }
    match outcome {
        Ok(()) => {
            let model = session.as_mut().unwrap();
            assert_eq!(attachment.sid(), &model.sid, "resumed the client's session");
            assert!(!attachment.is_fresh());
            let position = cursor.as_ref().map(|c| c.seq);
            let continuation = kind == Transport::Polling && model.last_kind == Some(Transport::Polling) && position.is_some();
            let mut expect = VecDeque::new();
            if !continuation {
                expect.push_back(Expected::Hello { kind, resumed: true });
            }
            model.last_kind = Some(kind);
            model.detached_at = None;
            client.current = Some(Stream {
                attachment,
                sid: model.sid.clone(),
                position,
                expect,
                attached_at: now,
                superseded_at: None,
                replaying: position.is_some_and(|p| p < client.highest),
                no_cursor: position.is_none(),
                min_start: client.highest,
                evicted: false,
            });
        }
        Err(gap) => {
            assert!(attachment.is_fresh(), "{resume:?} must start a fresh session");
            assert_ne!(Some(attachment.sid()), client.sid.as_ref(), "a fresh session has a new sid");
            if let Some(left) = session.as_ref().filter(|m| !m.expired) {
                let held = old_held;
                abandoned.push(if held { now } else { left.detached_at.expect("a session without transport is detached") });
            }
            let sid = attachment.sid().clone();
            let mut expect = VecDeque::from([Expected::Hello { kind, resumed: false }]);
            expect.extend(gap.map(Expected::Gap));
            *session = Some(Session {
                sid: sid.clone(),
                emitted: Vec::new(),
                expired: false,
                detached_at: None,
                last_kind: Some(kind),
            });
            client.sid = Some(sid.clone());
            client.cursors.clear();
            client.highest = 0;
            client.after_gap = None;
            client.old.clear();
            client.current = Some(Stream {
                attachment,
                sid,
                position: Some(0),
                expect,
                attached_at: now,
                superseded_at: None,
                replaying: false,
                no_cursor: false,
                min_start: 0,
                evicted: false,
            });
        }
    }
}

/// Checks one event or notice against what the stream must yield next.
fn check_stream(stream: &mut Stream, event: &Event, emitted: &[u64], buffer: usize) {
    let data: Value = serde_json::from_str(event.data()).expect("data is JSON");
    if let Some(expected) = stream.expect.pop_front() {
        assert!(event.notice, "expected {expected:?}, got event {}", event.seq);
        match expected {
            Expected::Hello { kind, resumed } => {
                assert_eq!(event.name(), "session");
                assert_eq!(data["sid"], stream.sid.as_str());
                assert_eq!(data["transport"], kind.as_str());
                assert_eq!(data["resumed"], resumed);
                match stream.position {
                    Some(p) => assert_eq!(event.seq, p, "the hello's cursor is the resume point"),
                    None => {
                        assert!(event.seq <= emitted.len() as u64, "resume point past the last event");
                        assert!(event.seq >= stream.min_start, "a resume without cursor went back before what the client read");
                        stream.position = Some(event.seq);
                    }
                }
            }
            Expected::Gap(reason) => {
                assert_eq!(event.name(), "gap");
                assert_eq!(data["reason"], reason);
                assert_eq!(event.seq, 0);
            }
        }
        return;
    }
    let position = stream.position.expect("a stream knows its position after the hello");
    if event.notice {
        assert_eq!(event.name(), "gap", "only a gap notice may come between events");
        assert_eq!(data["reason"], "overflow");
        let lost = data["lost"].as_u64().expect("lost is a count");
        assert!(lost > 0);
        assert_eq!(event.seq, position + lost, "the gap's cursor is after the events it skips");
        // Exactly where the buffer overflowed: the newest event it no longer holds. (A gap is
        // handed out by the read that finds the hole, so `emitted` is as it was then.)
        assert_eq!(event.seq + buffer as u64, emitted.len() as u64, "gap not where the buffer lost events");
        stream.position = Some(event.seq);
    } else {
        assert_eq!(event.name(), "ev");
        assert_eq!(event.seq, position + 1, "events come in order, each once, with no silent hole");
        assert_eq!(data, json!(emitted[(event.seq - 1) as usize]), "event {} carries what was emitted", event.seq);
        stream.position = Some(event.seq);
    }
}

impl Client {
    /// Appends what the transport held handed out to the client's log, checking the log.
    fn log(&mut self, event: &Event, model: &Session) {
        let stream = self.current.as_ref().unwrap();
        self.cursors.push(event.cursor(&model.sid));
        if event.notice {
            if event.name() == "gap" {
                self.after_gap = Some(event.seq);
            }
            // A resume without cursor starts after what any transport was handed, which may be
            // more than the client read (checked against the stream): the client is there now.
            if event.name() == "session" && stream.no_cursor {
                self.highest = self.highest.max(event.seq);
            }
            return;
        }
        let after_gap = self.after_gap.take();
        if event.seq <= self.highest {
            assert!(stream.replaying, "event {} seen twice though the client resumed from its newest cursor", event.seq);
            return;
        }
        if event.seq > self.highest + 1 {
            // A hole in the log: the stream must have announced it with a gap notice right
            // before, or it started without a cursor beyond what the client read.
            assert!(
                after_gap == Some(event.seq - 1) || stream.no_cursor,
                "events {}..{} missing from the client's log without a gap notice",
                self.highest + 1,
                event.seq
            );
        }
        self.highest = event.seq;
    }
}
