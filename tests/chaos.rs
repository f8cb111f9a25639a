//! Chaos over real sockets: the delivery guarantee while clients drop and switch transports.
//!
//! `CHAOS_CLIENTS` clients (default 60) run for `CHAOS_SECONDS` (default 6); the full
//! size is `CHAOS_CLIENTS=200 CHAOS_SECONDS=20`. Each client holds its session over a WebSocket,
//! an SSE stream or long-polls, picked at random, and drops it without a word after 50..350 ms
//! (about every 200 ms) to resume on another from the last cursor it saw: by `sid` and
//! `last_event_id`, by `Last-Event-ID` beside the sid, or by that header alone. All the while it
//! sends numbered `echo` messages over what it holds (text frames on a WebSocket, POSTs beside
//! SSE and polling), and the server pushes numbered events of its own to random sessions, so
//! that events are in flight at every drop whoever caused them.
//!
//! The client does what the contract asks of one that wants its own messages through: each
//! carries `seq`, and on every new transport it first sends again whatever the server has not
//! confirmed (by the hello's `received`, a POST's `202` or a reply), since frames written to a
//! socket just before it is dropped may never be read. The server skips the re-sends it already
//! handled.
//!
//! Newest wins: a request the client gave up on can still reach the server after its successor
//! and take the session back, which then closes the successor (`4000`, an ended stream, a `409`
//! poll). The client treats that like any drop and resumes from its last cursor.
//!
//! At the end every client resumes once more and reads up to the newest event of its session.
//! Then, for every client: its log is exactly the session's history as the hub holds it (each
//! reply and each push once, in the order emitted: 0 lost, 0 duplicated, 0 out of order), the
//! history holds each of its messages handled exactly once in the order sent and each push in
//! order, and there was no `gap` and no fresh session. `CHAOS_SEED` replays a run's random
//! choices (the timing is the machine's).

mod common;

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{received_from_envelope, seq, Received, TestServer, WAIT};
use eventsource_stream::Eventsource;
use futures_util::{SinkExt, Stream, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use switchyard::{Config, Sid, Transport};
use tokio::net::TcpStream;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const KINDS: [Transport; 3] = [Transport::WebSocket, Transport::Sse, Transport::Polling];

fn env_or(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_client_gets_every_event_once_and_in_order_while_dropping_and_switching() {
    let clients = env_or("CHAOS_CLIENTS", 60) as usize;
    let seconds = env_or("CHAOS_SECONDS", 6);
    let seed = env_or("CHAOS_SEED", u64::from(rand::random::<u32>()));
    println!("chaos: {clients} clients for {seconds} s, CHAOS_SEED={seed}");

    // The buffer holds a whole run, so no loss is legitimate; a poll waits at most 2 s so that
    // a poll nobody is waiting for does not hold a session for long.
    let server = Arc::new(
        TestServer::with_config(Config { buffer: 1 << 16, poll_timeout: Duration::from_secs(2), ..Config::default() })
            .await,
    );
    let shared = Arc::new(Shared {
        sids: Mutex::new(vec![None; clients]),
        pushes: (0..clients).map(|_| AtomicU64::new(0)).collect(),
        pushing: AtomicBool::new(true),
        pushes_done: tokio::sync::Notify::new(),
    });
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let pusher = tokio::spawn(push(server.clone(), shared.clone(), deadline, seed));
    let tasks: Vec<_> = (0..clients)
        .map(|id| {
            let client = Client::new(id, server.clone(), shared.clone(), seed);
            tokio::spawn(client.run(deadline))
        })
        .collect();
    let mut done = Vec::new();
    for task in tasks {
        done.push(task.await.expect("a client task panicked"));
    }
    pusher.await.expect("the pusher panicked");

    let mut total = Totals::default();
    let mut failures = Vec::new();
    for client in &done {
        let history = history(&server, client.sid.as_deref().expect("every client got a session")).await;
        let report = client.check(&history, shared.pushes[client.id].load(Ordering::SeqCst));
        if !report.clean() {
            failures.push(format!("client {}: {report:?}{}", client.id, client.explain_lost(&history)));
        }
        total.add(client, &report);
    }
    total.print(clients, seconds);
    assert!(failures.is_empty(), "delivery broken for {} clients (CHAOS_SEED={seed}):\n{}", failures.len(), failures.join("\n"));
    let per_kind_min = total.attaches.iter().min().copied().unwrap_or(0);
    assert!(
        total.attaches.iter().sum::<u64>() >= clients as u64 * seconds && per_kind_min > 0,
        "too little chaos to prove anything: attaches per kind {:?}",
        total.attaches
    );
}

/// What the clients and the pusher share.
struct Shared {
    /// Each client's sid once its first hello arrived; the pusher only pushes to those.
    sids: Mutex<Vec<Option<Sid>>>,
    /// Pushes made to each client (the next push's number).
    pushes: Vec<AtomicU64>,
    /// Cleared when the pusher has made its last push.
    pushing: AtomicBool,
    /// Notified once `pushing` is cleared.
    pushes_done: tokio::sync::Notify,
}

/// Pushes `push` events numbered per session to random sessions until the deadline: a few per
/// client per second, interleaved with the echo replies.
async fn push(server: Arc<TestServer>, shared: Arc<Shared>, deadline: Instant, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7075_7368);
    let hub = server.gateway.hub().clone();
    let clients = shared.pushes.len();
    while Instant::now() < deadline {
        // The scenario's pace, not a wait: a round of pushes every 5 ms.
        sleep(Duration::from_millis(5)).await;
        for _ in 0..clients.div_ceil(10) {
            let id = rng.random_range(0..clients);
            let Some(sid) = shared.sids.lock().unwrap()[id].clone() else { continue };
            let n = shared.pushes[id].load(Ordering::SeqCst);
            hub.emit(&sid, "push", &json!({ "n": n })).await.expect("sessions outlive every drop: grace is 30 s");
            shared.pushes[id].store(n + 1, Ordering::SeqCst);
        }
    }
    shared.pushing.store(false, Ordering::SeqCst);
    shared.pushes_done.notify_waiters();
}

/// The session's whole history, from the hub: every event emitted to it, in order.
async fn history(server: &TestServer, sid: &str) -> Vec<(u64, String, Value)> {
    let cursor = format!("{sid}.0~");
    let mut attachment =
        server.gateway.hub().attach(Transport::Polling, Some(sid), Some(&cursor)).await.expect("attach to check");
    assert!(!attachment.is_fresh(), "the session of {sid} is gone");
    let mut events = Vec::new();
    while let Some(event) = attachment.try_recv().expect("nothing supersedes the check") {
        if !event.notice {
            events.push((event.seq, event.name().to_owned(), serde_json::from_str(event.data()).unwrap()));
        }
    }
    events
}

/// One simulated client: its session, its position, and everything it received.
struct Client {
    id: usize,
    server: Arc<TestServer>,
    shared: Arc<Shared>,
    rng: StdRng,
    sid: Option<String>,
    /// The id of the last event or notice received: where the next transport resumes.
    cursor: Option<String>,
    /// Number of the next `echo` message; every one below it was sent. Messages carry `seq`
    /// `n + 1`, so that a re-send of one the server handled is skipped.
    sent: u64,
    /// Highest `seq` the server is known to have handled: from a hello's `received`, a POST's
    /// `202` or a reply.
    confirmed: u64,
    /// The next message to send again (below `sent` after a hello said some were not handled).
    next_resend: u64,
    resends: u64,
    /// Every event and notice received, in order.
    log: Vec<Received>,
    /// How each message went out, by number.
    sends: Vec<Sent>,
    /// Attaches per transport kind (`KINDS` order).
    attaches: [u64; 3],
    /// Transports the server ended: superseded by a late request of ours, or a poll's `409`.
    closed_by_server: u64,
    /// Hellos announcing a fresh session after the first: the session was lost.
    fresh_sessions: u64,
    /// POST answers other than `202`, with their status.
    refused_posts: Vec<u16>,
}

/// A transport being held.
enum Link {
    Ws(Box<WebSocketStream<MaybeTlsStream<TcpStream>>>),
    Sse(SseEvents),
    /// The poll in flight, if one is; polls follow each other from the last cursor.
    Poll(Option<PollAnswer>),
}

type SseEvents = Pin<
    Box<dyn Stream<Item = Result<eventsource_stream::Event, eventsource_stream::EventStreamError<reqwest::Error>>> + Send>,
>;
type PollAnswer = Pin<Box<dyn Future<Output = Result<(u16, Value), reqwest::Error>> + Send>>;

/// What a transport yielded.
enum Incoming {
    Events(Vec<Received>),
    /// The server ended the transport (or the connection failed): resume on a new one.
    Closed,
}

impl Link {
    /// The next events. Cancel-safe: a poll in flight stays in the link.
    async fn next(&mut self, http: &reqwest::Client, poll_url: &str) -> Incoming {
        match self {
            Link::Ws(socket) => loop {
                match socket.next().await {
                    Some(Ok(Message::Text(text))) => {
                        let envelope = serde_json::from_str(text.as_str()).expect("a WebSocket frame is one JSON envelope");
                        return Incoming::Events(vec![received_from_envelope(envelope)]);
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    _ => return Incoming::Closed,
                }
            },
            Link::Sse(events) => match events.next().await {
                Some(Ok(event)) => Incoming::Events(vec![Received {
                    data: serde_json::from_str(&event.data).expect("SSE data is JSON"),
                    event: event.event,
                    id: event.id,
                }]),
                _ => Incoming::Closed,
            },
            Link::Poll(pending) => {
                let answer = pending.get_or_insert_with(|| {
                    let request = http.get(poll_url).send();
                    Box::pin(async move {
                        let response = request.await?;
                        let status = response.status().as_u16();
                        Ok((status, response.json::<Value>().await?))
                    })
                });
                let answer = answer.await;
                *pending = None;
                match answer {
                    Ok((200, Value::Array(items))) => Incoming::Events(items.into_iter().map(received_from_envelope).collect()),
                    Ok((409, _)) | Err(_) => Incoming::Closed,
                    Ok((status, body)) => panic!("a poll answered {status} {body}"),
                }
            }
        }
    }
}

impl Client {
    fn new(id: usize, server: Arc<TestServer>, shared: Arc<Shared>, seed: u64) -> Client {
        Client {
            id,
            server,
            shared,
            rng: StdRng::seed_from_u64(seed.wrapping_add(id as u64)),
            sid: None,
            cursor: None,
            sent: 0,
            confirmed: 0,
            next_resend: 0,
            resends: 0,
            log: Vec::new(),
            sends: Vec::new(),
            attaches: [0; 3],
            closed_by_server: 0,
            fresh_sessions: 0,
            refused_posts: Vec::new(),
        }
    }

    async fn run(mut self, deadline: Instant) -> Client {
        while Instant::now() < deadline {
            let hold = Duration::from_millis(self.rng.random_range(50..350));
            self.hold(Instant::now() + hold, Some(deadline)).await;
        }
        // Settle: the last pushes are made; resume once more and read until everything is in.
        if self.shared.pushing.load(Ordering::SeqCst) {
            let done = self.shared.pushes_done.notified();
            if self.shared.pushing.load(Ordering::SeqCst) {
                tokio::time::timeout(WAIT, done).await.expect("the pusher stopped");
            }
        }
        let until = Instant::now() + WAIT;
        loop {
            while !self.complete().await && Instant::now() < until {
                self.hold(until, None).await;
            }
            // What the server has taken in is handled before the check: handlers hold the
            // session's inbox while they run, so taking it waits for the last of them and its
            // reply. (A frame still unread on an old socket is a re-send of a confirmed message,
            // which the server skips without a reply.)
            self.handlers_done().await;
            if self.complete().await || Instant::now() >= until {
                return self;
            }
        }
    }

    /// Waits until no handler of the client's session is running (none may be).
    async fn handlers_done(&self) {
        let Some(sid) = self.sid.as_deref() else { return };
        if let Ok(session) = self.server.gateway.hub().session(&sid.parse().unwrap()).await {
            drop(tokio::time::timeout(WAIT, session.inbox()).await.expect("the session's handlers to finish"));
        }
    }

    /// Whether the client has read up to the newest event of its session.
    async fn complete(&self) -> bool {
        let Some(sid) = self.sid.as_deref() else { return false };
        if self.confirmed < self.sent {
            return false;
        }
        let last = self.server.gateway.hub().info(&sid.parse().unwrap()).await.expect("the session is live").last_seq;
        self.log.iter().filter(|r| !r.id.ends_with('~')).map(|r| seq(&r.id)).max().unwrap_or(0) >= last
    }

    /// Attaches a random transport and holds it until `until` (then drops it without a word) or
    /// until the server ends it. With a `deadline`, sends an `echo` every 5..40 ms; without one,
    /// only reads, and stops as soon as the log is complete.
    async fn hold(&mut self, until: Instant, deadline: Option<Instant>) {
        let kind = self.rng.random_range(0..KINDS.len());
        let Some(mut link) = self.connect(KINDS[kind]).await else {
            self.closed_by_server += 1;
            return;
        };
        self.attaches[kind] += 1;
        // Whatever the server has not confirmed goes out again, in order, before anything new:
        // numbered sends that were handled already are skipped, so this is always safe.
        self.next_resend = self.confirmed.min(self.sent);
        let until = deadline.map_or(until, |d| until.min(d));
        let http = self.server.http.clone();
        let first = self.sends.len();
        let end = self.hold_link(&mut link, until, deadline, &http).await;
        drop(link);
        let now = Instant::now();
        for sent in &mut self.sends[first..] {
            sent.end = Some((end, now - sent.at));
        }
    }

    /// Reads `link` (and sends over it) until `until`, or until the server ends it; says which.
    async fn hold_link(&mut self, link: &mut Link, until: Instant, deadline: Option<Instant>, http: &reqwest::Client) -> &'static str {
        let mut next_send = Instant::now() + self.send_pause();
        loop {
            if deadline.is_none() && self.complete().await {
                return "the log was complete";
            }
            let poll_url = self.attach_url("/poll", true);
            let resending = self.next_resend < self.sent;
            let sending = self.sid.is_some() && (deadline.is_some() || resending);
            if resending {
                next_send = Instant::now();
            }
            tokio::select! {
                _ = sleep_until(until) => return "the client dropped it",
                _ = sleep_until(next_send), if sending => {
                    if !self.send(link).await {
                        self.closed_by_server += 1;
                        return "a send failed";
                    }
                    next_send = Instant::now() + self.send_pause();
                }
                incoming = link.next(http, &poll_url) => match incoming {
                    Incoming::Events(events) => events.into_iter().for_each(|e| self.receive(e)),
                    Incoming::Closed => {
                        self.closed_by_server += 1;
                        return "the server ended it";
                    }
                },
            }
        }
    }

    fn send_pause(&mut self) -> Duration {
        Duration::from_millis(self.rng.random_range(5..40))
    }

    /// `path?sid=SID&last_event_id=CURSOR`, or as much of it as the client knows.
    fn attach_url(&self, path: &str, with_cursor: bool) -> String {
        let mut url = self.server.url(path);
        if let Some(sid) = &self.sid {
            let _ = write!(url, "?sid={sid}");
            if let (true, Some(cursor)) = (with_cursor, &self.cursor) {
                let _ = write!(url, "&last_event_id={cursor}");
            }
        }
        url
    }

    /// Opens a transport resuming from the last cursor; `None` if the server refused or closed
    /// it before it was open (a late request of ours took the session back).
    async fn connect(&mut self, kind: Transport) -> Option<Link> {
        match kind {
            Transport::WebSocket => {
                let url = self.attach_url("/ws", true).replacen("http://", "ws://", 1);
                let (socket, _) = within("a WebSocket handshake", tokio_tungstenite::connect_async(url)).await.ok()?;
                Some(Link::Ws(Box::new(socket)))
            }
            Transport::Sse => {
                // Three ways to resume: sid and cursor in the URL, the cursor in `Last-Event-ID`
                // beside the sid, or `Last-Event-ID` alone (a browser's own reconnect).
                let how = self.rng.random_range(0..3);
                let request = match (&self.cursor, how) {
                    (Some(cursor), 1) => self.server.http.get(self.attach_url("/sse", false)).header("Last-Event-ID", cursor),
                    (Some(cursor), 2) => self.server.http.get(self.server.url("/sse")).header("Last-Event-ID", cursor),
                    _ => self.server.http.get(self.attach_url("/sse", true)),
                };
                let response = within("SSE response headers", request.send()).await.ok()?;
                assert_eq!(response.status(), 200, "an SSE attach is always served");
                Some(Link::Sse(Box::pin(response.bytes_stream().eventsource())))
            }
            Transport::Polling => Some(Link::Poll(None)),
        }
    }

    /// Sends the next `echo` over the transport held. `false`: the WebSocket is gone (the
    /// message was not sent and keeps its number).
    async fn send(&mut self, link: &mut Link) -> bool {
        let sid = self.sid.clone().expect("sending needs a session");
        let resend = self.next_resend < self.sent;
        let n = if resend { self.next_resend } else { self.sent };
        let body = json!({"event": "echo", "data": {"n": n}, "seq": n + 1}).to_string();
        match link {
            Link::Ws(socket) => {
                if within("a WebSocket send", socket.send(Message::text(body))).await.is_err() {
                    return false;
                }
            }
            Link::Sse(_) | Link::Poll(_) => {
                let path = if matches!(link, Link::Sse(_)) { "/sse" } else { "/poll" };
                let request = self
                    .server
                    .http
                    .post(self.server.url(&format!("{path}?sid={sid}")))
                    .header("content-type", "application/json")
                    .body(body);
                let status = within("a POST answer", request.send()).await.expect("POST to a live session").status();
                if status != 202 {
                    self.refused_posts.push(status.as_u16());
                    return true;
                }
                // Handled before the answer: confirmed.
                self.confirmed = self.confirmed.max(n + 1);
            }
        }
        if resend {
            self.resends += 1;
            self.next_resend += 1;
        } else {
            self.sends.push(Sent { over_ws: matches!(link, Link::Ws(_)), at: Instant::now(), end: None });
            self.sent += 1;
            self.next_resend = self.sent;
        }
        true
    }

    fn receive(&mut self, event: Received) {
        self.cursor = Some(event.id.clone());
        if event.event == "session" {
            let sid = event.data["sid"].as_str().expect("a hello names its session").to_owned();
            match &self.sid {
                None => {
                    self.shared.sids.lock().unwrap()[self.id] = Some(sid.parse().expect("a valid sid"));
                    self.sid = Some(sid);
                }
                Some(mine) if *mine == sid && event.data["resumed"] == true => {}
                Some(_) => self.fresh_sessions += 1,
            }
            // No need to send again what the server says it handled.
            let received = event.data["received"].as_u64().expect("the hello says what the server handled");
            self.confirmed = self.confirmed.max(received);
            self.next_resend = self.next_resend.max(self.confirmed.min(self.sent));
        }
        if event.event == "echo" {
            let n = event.data["n"].as_u64().expect("numbered reply");
            self.confirmed = self.confirmed.max(n + 1);
        }
        self.log.push(event);
    }

    /// For a failure report: each message without a reply, how it went out, and whether the
    /// server ever handled it.
    fn explain_lost(&self, history: &[(u64, String, Value)]) -> String {
        let numbers = |events: &mut dyn Iterator<Item = (&String, &Value)>| {
            events.filter(|(name, _)| *name == "echo").filter_map(|(_, data)| data["n"].as_u64()).collect::<Vec<_>>()
        };
        let handled = numbers(&mut history.iter().map(|(_, name, data)| (name, data)));
        let received = numbers(&mut self.log.iter().map(|r| (&r.event, &r.data)));
        let mut out = String::new();
        for (n, sent) in self.sends.iter().enumerate() {
            if received.contains(&(n as u64)) {
                continue;
            }
            let (end, after) = sent.end.unwrap_or(("still open", Duration::ZERO));
            let _ = write!(
                out,
                "\n  echo {n}: sent over {}, {after:?} before {end}; {}",
                if sent.over_ws { "its WebSocket" } else { "POST" },
                if handled.contains(&(n as u64)) { "the server emitted the reply" } else { "the server never handled it" }
            );
        }
        out
    }

    /// Compares the log with the session's history, and the history with what was sent.
    fn check(&self, history: &[(u64, String, Value)], pushes: u64) -> Report {
        let events: Vec<_> = self
            .log
            .iter()
            .filter(|r| !r.id.ends_with('~'))
            .map(|r| (seq(&r.id), r.event.clone(), r.data.clone()))
            .collect();
        let delivery = |name: &str| {
            let emitted: Vec<u64> = history.iter().filter(|(_, n, _)| n == name).map(|(s, _, _)| *s).collect();
            let received: Vec<u64> = events.iter().filter(|(_, n, _)| n == name).map(|(s, _, _)| *s).collect();
            let mut distinct = received.clone();
            distinct.sort_unstable();
            distinct.dedup();
            Tally {
                emitted: emitted.len() as u64,
                lost: emitted.iter().filter(|s| distinct.binary_search(s).is_err()).count() as u64,
                duplicated: (received.len() - distinct.len()) as u64,
                out_of_order: received.windows(2).filter(|w| w[1] <= w[0]).count() as u64,
            }
        };
        let numbers = |name: &str| -> Vec<u64> {
            history.iter().filter(|(_, n, _)| n == name).map(|(_, _, d)| d["n"].as_u64().expect("numbered")).collect()
        };
        // Every message handled exactly once, in the order sent: numbered sends are, however
        // often they went out and over whichever transports.
        let handled = numbers("echo");
        let mut times = vec![0u64; self.sent as usize];
        let mut uplink = Uplink { sent: self.sent, resent: self.resends, ..Uplink::default() };
        for &n in &handled {
            match times.get_mut(n as usize) {
                Some(t) => *t += 1,
                None => uplink.unknown += 1,
            }
        }
        uplink.lost = times.iter().filter(|&&t| t == 0).count() as u64;
        uplink.handled_twice = times.iter().map(|&t| t.saturating_sub(1)).sum();
        uplink.out_of_order = handled.windows(2).filter(|w| w[1] <= w[0]).count() as u64;
        let pushed = numbers("push");
        Report {
            echo: delivery("echo"),
            push: delivery("push"),
            pushes_in_history: pushed == (0..pushes).collect::<Vec<_>>(),
            uplink,
            matches_history: events == history,
            gaps: self.log.iter().filter(|r| r.event == "gap").count() as u64,
            fresh_sessions: self.fresh_sessions,
            other_events: events.iter().filter(|(_, n, _)| n != "echo" && n != "push").count() as u64,
            refused_posts: self.refused_posts.clone(),
        }
    }
}

/// How one message went out.
struct Sent {
    over_ws: bool,
    at: Instant,
    /// How that transport ended, and how long after the send.
    end: Option<(&'static str, Duration)>,
}

/// Delivery of one kind of event (replies or pushes) to one client, against the session's
/// history.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    emitted: u64,
    /// Emitted, never received.
    lost: u64,
    /// Received more than once.
    duplicated: u64,
    /// Received after one the server emitted later.
    out_of_order: u64,
}

/// Messages of one client, against what the server handled.
#[derive(Debug, Default, Clone, Copy)]
struct Uplink {
    sent: u64,
    /// Sent again after a drop because the server had not confirmed them.
    resent: u64,
    /// Never handled.
    lost: u64,
    handled_twice: u64,
    /// Handled after one sent later.
    out_of_order: u64,
    /// Handled though never sent.
    unknown: u64,
}

impl Uplink {
    fn clean(&self) -> bool {
        self.lost == 0 && self.handled_twice == 0 && self.out_of_order == 0 && self.unknown == 0
    }

    fn add(&mut self, other: Uplink) {
        self.sent += other.sent;
        self.resent += other.resent;
        self.lost += other.lost;
        self.handled_twice += other.handled_twice;
        self.out_of_order += other.out_of_order;
        self.unknown += other.unknown;
    }
}

#[derive(Debug)]
struct Report {
    echo: Tally,
    push: Tally,
    /// The history holds each push made, once, in order.
    pushes_in_history: bool,
    uplink: Uplink,
    /// The events received are exactly the session's history, in order.
    matches_history: bool,
    gaps: u64,
    fresh_sessions: u64,
    other_events: u64,
    refused_posts: Vec<u16>,
}

impl Report {
    fn clean(&self) -> bool {
        let tallies = [self.echo, self.push];
        tallies.iter().all(|t| t.lost == 0 && t.duplicated == 0 && t.out_of_order == 0)
            && self.pushes_in_history
            && self.uplink.clean()
            && self.matches_history
            && self.gaps == 0
            && self.fresh_sessions == 0
            && self.other_events == 0
            && self.refused_posts.is_empty()
    }
}

#[derive(Default)]
struct Totals {
    attaches: [u64; 3],
    closed_by_server: u64,
    sent_on_ws: u64,
    echo: Tally,
    push: Tally,
    uplink: Uplink,
    mismatched: u64,
    gaps: u64,
    fresh_sessions: u64,
    other_events: u64,
    refused_posts: u64,
}

impl Totals {
    fn add(&mut self, client: &Client, report: &Report) {
        for (total, n) in self.attaches.iter_mut().zip(client.attaches) {
            *total += n;
        }
        self.closed_by_server += client.closed_by_server;
        self.sent_on_ws += client.sends.iter().filter(|s| s.over_ws).count() as u64;
        for (total, tally) in [(&mut self.echo, report.echo), (&mut self.push, report.push)] {
            total.emitted += tally.emitted;
            total.lost += tally.lost;
            total.duplicated += tally.duplicated;
            total.out_of_order += tally.out_of_order;
        }
        self.uplink.add(report.uplink);
        self.mismatched += u64::from(!report.matches_history || !report.pushes_in_history);
        self.gaps += report.gaps;
        self.fresh_sessions += report.fresh_sessions;
        self.other_events += report.other_events;
        self.refused_posts += report.refused_posts.len() as u64;
    }

    fn print(&self, clients: usize, seconds: u64) {
        let [ws, sse, poll] = self.attaches;
        println!("chaos: {clients} clients, {seconds} s");
        println!(
            "  attaches: {} (websocket {ws}, sse {sse}, polling {poll}); transports ended by the server: {}",
            ws + sse + poll,
            self.closed_by_server
        );
        for (what, t) in [("echo replies", self.echo), ("pushes", self.push)] {
            println!(
                "  {what}: {} emitted, {} lost, {} duplicated, {} out of order",
                t.emitted, t.lost, t.duplicated, t.out_of_order
            );
        }
        let u = self.uplink;
        println!(
            "  messages: {} sent ({} over WebSocket, {} over POST), {} sent again after a drop; \
             {} lost, {} handled twice, {} handled out of order, {} unknown",
            u.sent,
            self.sent_on_ws,
            u.sent - self.sent_on_ws,
            u.resent,
            u.lost,
            u.handled_twice,
            u.out_of_order,
            u.unknown
        );
        println!(
            "  logs differing from the session history: {}; gaps {}; fresh sessions {}; other events {}; POSTs refused {}",
            self.mismatched, self.gaps, self.fresh_sessions, self.other_events, self.refused_posts
        );
    }
}

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    common::within(what, fut).await
}
