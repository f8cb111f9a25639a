//! Cluster mode (issue 14): three real `switchyard` binaries sharing one Redis (standalone, or a
//! three-master Redis Cluster) with no affinity at all, so any request of any session may land
//! on any node. Each test drives real sockets at chosen nodes (or through nginx as a plain
//! round-robin balancer), and kills, stops and restarts nodes and Redis by pid.
//!
//! [`Cluster`] is the fixture: the Redis it owns, the nodes started with `--redis`, and
//! clients aimed at a node by its index. Scenarios that hold on either kind of Redis are
//! functions taking a `&Cluster`, run once on a standalone Redis and once more, together, on a
//! Redis Cluster. Then tests check the harness pieces themselves (Redis, the Redis Cluster,
//! the balancer), which need no cluster-mode server; the last ones drive the demo page in real
//! headless Chromium through the balancer.

mod common;
mod harness;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use common::*;
use futures_util::StreamExt;
use harness::proxies::Proxy;
use harness::redis::{command, RedisCluster, RedisServer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Gateway nodes in a cluster.
const NODES: usize = 3;

/// The grace period nodes run with unless a test says otherwise: long enough that no session a
/// test still uses expires while two cores are busy with three nodes per test, short enough
/// that nothing outlives its test for long.
const GRACE: &str = "5s";

/// The spec's bound on closing a superseded transport on another node.
const SUPERSEDE: Duration = Duration::from_secs(1);

/// Longest a node may take to answer anything while Redis is down: more is a hang.
const NO_HANG: Duration = Duration::from_secs(5);

/// Longest a stopped node may take to exit (its drain included).
const EXIT: Duration = Duration::from_secs(15);

/// A sid no node ever issued: well-formed, 22 characters of base64url.
const UNKNOWN_SID: &str = "AAAAAAAAAAAAAAAAAAAAAA";

/// The Redis the nodes share.
enum Backing {
    Server(RedisServer),
    #[allow(dead_code, reason = "held for its Drop: the Redis processes live as long as the nodes")]
    Cluster(RedisCluster),
}

/// One gateway process and the address it logged.
struct Node {
    binary: Binary,
    addr: String,
}

/// Three `switchyard` nodes on one Redis, each on its own loopback port. Dropped, it kills the
/// nodes first (fields drop in order), then Redis.
struct Cluster {
    nodes: Vec<Node>,
    backing: Backing,
    /// The arguments every node runs with besides `--bind`, given again on a restart.
    args: Vec<String>,
    http: reqwest::Client,
}

impl Cluster {
    /// Three nodes on a fresh standalone Redis, with `extra` arguments (`--grace` defaults to
    /// [`GRACE`]; the per-address limit on new sessions is off, every client being 127.0.0.1).
    async fn start(extra: &[&str]) -> Cluster {
        let redis = RedisServer::start().await;
        let url = redis.url();
        Cluster::on(Backing::Server(redis), &url, extra).await
    }

    /// Three nodes on a fresh three-master Redis Cluster, given its seed list.
    async fn on_redis_cluster(extra: &[&str]) -> Cluster {
        let redis = RedisCluster::start().await;
        let url = redis.seed_url();
        Cluster::on(Backing::Cluster(redis), &url, extra).await
    }

    async fn on(backing: Backing, redis_url: &str, extra: &[&str]) -> Cluster {
        let mut args = vec!["--redis".to_owned(), redis_url.to_owned(), "--max-new-sessions-per-ip".to_owned(), "0".to_owned()];
        if !extra.contains(&"--grace") {
            args.extend(["--grace".to_owned(), GRACE.to_owned()]);
        }
        args.extend(extra.iter().map(|&arg| arg.to_owned()));
        let starts = (0..NODES).map(|_| {
            let args = args.clone();
            unblock(move || start_binary(&args, None))
        });
        let nodes = futures_util::future::join_all(starts).await.into_iter().map(|(binary, addr)| Node { binary, addr }).collect();
        Cluster { nodes, backing, args, http: reqwest::Client::new() }
    }

    /// The standalone Redis, to kill and restart.
    fn redis(&mut self) -> &mut RedisServer {
        match &mut self.backing {
            Backing::Server(redis) => redis,
            Backing::Cluster(_) => panic!("this cluster runs on a Redis Cluster, not a standalone Redis"),
        }
    }

    fn addr(&self, node: usize) -> &str {
        &self.nodes[node].addr
    }

    fn socket_addr(&self, node: usize) -> SocketAddr {
        self.addr(node).parse().expect("a node's address")
    }

    fn url(&self, node: usize, path: &str) -> String {
        format!("http://{}{path}", self.addr(node))
    }

    fn ws_url(&self, node: usize, path: &str) -> String {
        format!("ws://{}{path}", self.addr(node))
    }

    fn pid(&self, node: usize) -> u32 {
        self.nodes[node].binary.0.id()
    }

    fn is_running(&mut self, node: usize) -> bool {
        matches!(self.nodes[node].binary.0.try_wait(), Ok(None))
    }

    /// SIGKILL, by pid: the node vanishes mid-whatever, its sockets reset by the kernel.
    fn kill9(&mut self, node: usize) {
        harness::signal(self.pid(node), "KILL");
        let _ = self.nodes[node].binary.0.wait();
    }

    /// SIGTERM, by pid: the node drains (every client told to reconnect) and exits. Returns at
    /// once; [`Cluster::wait_exit`] waits for the exit.
    fn sigterm(&self, node: usize) {
        harness::signal(self.pid(node), "TERM");
    }

    async fn wait_exit(&mut self, node: usize, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.nodes[node].binary.0.try_wait().expect("the node's status") {
                return status;
            }
            assert!(Instant::now() < deadline, "node {node} did not exit within {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts a stopped node again (waiting up to [`EXIT`] for it to finish exiting first) with
    /// the same arguments on the same port, so a balancer's upstream list stays right; the
    /// address is taken from its log again all the same.
    async fn restart(&mut self, node: usize) {
        self.wait_exit(node, EXIT).await;
        let port = self.socket_addr(node).port();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
        command.arg("--bind").arg(format!("127.0.0.1:{port}")).args(&self.args);
        let (binary, addr) = unblock(move || start_logged(command)).await;
        self.nodes[node] = Node { binary, addr };
    }

    async fn sse(&self, node: usize, path: &str) -> SseClient {
        self.sse_with(node, path, None).await
    }

    /// `GET` an SSE path on a node, with `Last-Event-ID` if given; it must answer 200.
    async fn sse_with(&self, node: usize, path: &str, last_event_id: Option<&str>) -> SseClient {
        let mut request = self.http.get(self.url(node, path));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = within("SSE response headers", request.send()).await.unwrap();
        assert_eq!(response.status(), 200, "GET {path} on node {node}");
        SseClient::from_response(response)
    }

    async fn ws(&self, node: usize, path: &str) -> WsClient {
        let (socket, _) = within("WebSocket handshake", tokio_tungstenite::connect_async(self.ws_url(node, path)))
            .await
            .unwrap_or_else(|err| panic!("WebSocket handshake for {path} on node {node}: {err}"));
        WsClient { socket }
    }

    /// POSTs a JSON body to a session through a node; returns the status and the JSON answer.
    async fn post_json(&self, node: usize, sid: &str, body: &str) -> (u16, Value) {
        let request = self.http.post(self.url(node, &format!("/sse?sid={sid}"))).header("content-type", "application/json").body(body.to_owned());
        let response = within("POST answer", request.send()).await.unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap_or(Value::Null))
    }

    /// One long-poll on a node; returns the status and the events.
    async fn poll(&self, node: usize, query: &str) -> (u16, Vec<Received>) {
        let response = within("poll answer", self.http.get(self.url(node, &format!("/poll{query}"))).send()).await.unwrap();
        let status = response.status().as_u16();
        let events = match response.json::<Value>().await.unwrap_or(Value::Null) {
            Value::Array(items) => items.into_iter().map(received_from_envelope).collect(),
            _ => Vec::new(),
        };
        (status, events)
    }

    /// Calls the publish API (`/api{path}`) on a node (served without a key on loopback).
    async fn api(&self, node: usize, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.http.request(method, self.url(node, &format!("/api{path}")));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = within("an API answer", request.send()).await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Publishes one event to a live session through a node's API, which must answer that it
    /// was delivered (or buffered for it): from then on the event is acknowledged.
    async fn emit(&self, node: usize, sid: &str, event: &str, data: Value) {
        let (status, body) = self.api(node, "POST", "/emit", Some(json!({"to": {"sid": sid}, "event": event, "data": data}))).await;
        assert_eq!((status, &body), (200, &json!({"delivered": 1})), "emit `{event}` to {sid} through node {node}");
    }

    /// `GET /healthz` on a node, which must answer within [`NO_HANG`].
    async fn healthz(&self, node: usize) -> (u16, Value) {
        let ask = async {
            let response = self.http.get(self.url(node, "/healthz")).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        };
        no_hang(&format!("node {node}'s /healthz"), ask).await
    }

    /// Waits until every node's `/healthz` answers `status` with `"redis": redis`.
    async fn wait_for_health(&self, status: u16, redis: &str) {
        for node in 0..NODES {
            wait_until(&format!("node {node}'s /healthz to answer {status} with \"redis\": \"{redis}\""), || async move {
                let (got, body) = self.healthz(node).await;
                got == status && body["redis"] == redis
            })
            .await;
        }
    }

    /// Waits until a node's API says the session is held by `transport` (`None`: by none).
    async fn wait_for_transport(&self, node: usize, sid: &str, transport: Option<&str>) {
        let what = format!("node {node} to report {sid} held by {transport:?}");
        wait_until(&what, || async {
            let (status, info) = self.api(node, "GET", &format!("/sessions/{sid}"), None).await;
            status == 200 && info["transport"].as_str() == transport
        })
        .await;
    }

    /// Opens a transport on a node: a new session, or `sid` resumed after `cursor` (as
    /// `Last-Event-ID` over SSE, `last_event_id` otherwise). Returns it and its first event.
    async fn attach(&self, node: usize, via: Via, sid: Option<&str>, cursor: Option<&str>) -> (Link, Received) {
        let mut query: Vec<String> = sid.map(|sid| format!("sid={sid}")).into_iter().collect();
        if via != Via::Sse {
            query.extend(cursor.map(|cursor| format!("last_event_id={cursor}")));
        }
        let query = if query.is_empty() { String::new() } else { format!("?{}", query.join("&")) };
        match via {
            Via::Sse => {
                let mut sse = self.sse_with(node, &format!("/sse{query}"), cursor).await;
                let hello = sse.next().await;
                (Link::Sse(sse), hello)
            }
            Via::Ws => {
                let mut ws = self.ws(node, &format!("/ws{query}")).await;
                let hello = ws.next().await;
                (Link::Ws(Box::new(ws)), hello)
            }
            Via::Poll => {
                let (status, events) = self.poll(node, &query).await;
                assert_eq!(status, 200, "GET /poll{query} on node {node}");
                let mut queue = VecDeque::from(events);
                let hello = queue.pop_front().expect("a first poll starts with the hello");
                let sid = hello.data["sid"].as_str().expect("sid in the hello").to_owned();
                let link = Link::Poll { node, sid, cursor: hello.id.clone(), queue };
                (link, hello)
            }
        }
    }
}

/// Runs a blocking start (the binary's log is read on a thread) off the runtime, passing its
/// panic on.
async fn unblock<T: Send + 'static>(start: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(start).await.unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Sse,
    Ws,
    Poll,
}

/// A client's hold on a session over one transport, read the same way whichever it is.
enum Link {
    Sse(SseClient),
    Ws(Box<WsClient>),
    /// Long-polling: the events of the last answer not read yet, and the cursor to go on from.
    Poll { node: usize, sid: String, cursor: String, queue: VecDeque<Received> },
}

impl Link {
    async fn next(&mut self, cluster: &Cluster) -> Received {
        match self {
            Link::Sse(sse) => sse.next().await,
            Link::Ws(ws) => ws.next().await,
            Link::Poll { node, sid, cursor, queue } => loop {
                if let Some(event) = queue.pop_front() {
                    cursor.clone_from(&event.id);
                    return event;
                }
                let (status, events) = cluster.poll(*node, &format!("?sid={sid}&last_event_id={cursor}")).await;
                assert_eq!(status, 200, "a continuing poll on node {node}");
                queue.extend(events);
            },
        }
    }
}

/// The next event on a socket, or `None` once it is closed or cut.
async fn ws_next_unless_closed(ws: &mut WsClient) -> Option<Received> {
    loop {
        match within("a WebSocket frame or the socket's end", ws.socket.next()).await {
            Some(Ok(Message::Text(text))) => return Some(received_from_envelope(serde_json::from_str(text.as_str()).expect("JSON frame"))),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_)) | Err(_)) | None => return None,
            Some(Ok(other)) => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Awaits an answer from a node while Redis is down, which must come within [`NO_HANG`].
async fn no_hang<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(NO_HANG, fut).await.unwrap_or_else(|_| panic!("{what} hung (no answer within {NO_HANG:?})"))
}

/// Awaits what a superseding attach must bring about on another node, within [`SUPERSEDE`].
async fn superseded_within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(SUPERSEDE, fut).await.unwrap_or_else(|_| panic!("{what} took longer than {SUPERSEDE:?}"))
}

fn is_event(event: &Received, name: &str, data: &Value) -> bool {
    event.event == name && event.data == *data
}

/// `(event, data)` pairs, for comparing what arrived with what was sent.
fn pairs(events: &[Received]) -> Vec<(String, Value)> {
    events.iter().map(|e| (e.event.clone(), e.data.clone())).collect()
}

fn message(text: &str) -> String {
    json!({"event": "message", "data": text}).to_string()
}

fn sorted(mut sids: Vec<String>) -> Vec<String> {
    sids.sort();
    sids
}

/// The member sids of a room as a node lists them, sorted.
async fn members(cluster: &Cluster, node: usize, room: &str) -> Vec<String> {
    let (status, body) = cluster.api(node, "GET", &format!("/rooms/{room}/members"), None).await;
    assert_eq!(status, 200, "room members on node {node}: {body}");
    sorted(body["members"].as_array().expect("members").iter().map(|m| m.as_str().unwrap().to_owned()).collect())
}

// ---------------------------------------------------------------------------------------------
// Scenarios that hold on a standalone Redis and on a Redis Cluster alike.
// ---------------------------------------------------------------------------------------------

/// Point 1: a session made on one node takes sends through every node, its replies come down
/// the transport wherever it is, and a sid no node issued is 404 everywhere.
async fn sessions_are_known_to_every_node(cluster: &Cluster) {
    let mut sse = cluster.sse(0, "/sse").await;
    let sid = sse.hello().await;
    let mut last = 0;
    for node in [1, 2, 0, 2, 1] {
        let (status, body) = cluster.post_json(node, &sid, &message("hi")).await;
        assert_eq!((status, &body), (202, &json!({"accepted": 1})), "POST to node {node} for a session made on node 0");
        let reply = sse.next().await;
        assert!(is_event(&reply, "response", &json!("Message received!")), "the reply to the POST to node {node}: {reply:?}");
        assert!(seq(&reply.id) > last, "cursors increase: {reply:?} after .{last}");
        last = seq(&reply.id);
    }

    // A WebSocket session made on node 1, sent to through node 2.
    let mut ws = cluster.ws(1, "/ws").await;
    let ws_sid = ws.hello().await;
    assert_eq!(cluster.post_json(2, &ws_sid, &message("over there")).await.0, 202);
    let reply = ws.next().await;
    assert!(is_event(&reply, "response", &json!("Message received!")), "{reply:?}");

    // A polling session made on node 2, sent to through node 0, polled on node 1.
    let (status, events) = cluster.poll(2, "").await;
    assert_eq!(status, 200);
    let poll_sid = hello_sid(events[0].clone(), "polling");
    assert_eq!(cluster.post_json(0, &poll_sid, &message("and back")).await.0, 202);
    let (status, events) = cluster.poll(1, &format!("?sid={poll_sid}&last_event_id={}", events[0].id)).await;
    assert_eq!(status, 200);
    assert_eq!(pairs(&events), [("response".to_owned(), json!("Message received!"))], "the poll on node 1");

    for node in 0..NODES {
        let (status, body) = cluster.post_json(node, UNKNOWN_SID, &message("anyone?")).await;
        assert_eq!((status, &body), (404, &json!({"error": "unknown or expired session"})), "POST to an unknown sid on node {node}");
    }
    // Every reply above was an emit, timed on the node that made it: seven at least.
    let mut emits = 0.0;
    for node in 0..NODES {
        emits += redis_requests(cluster, node, "emit").await;
    }
    assert!(emits >= 7.0, "the nodes' /metrics count the emits: {emits}");
}

/// Point 2: resumes on every node, over every transport, from cursors of every kind (the first
/// hello, an event seen live, an event first seen on a replay, a later hello, the last event),
/// replay exactly what came after the cursor, in order, then carry on live.
async fn resume_anywhere_from_any_cursor_replays_exactly_what_was_missed(cluster: &Cluster) {
    let (Link::Sse(mut sse), first_hello) = cluster.attach(0, Via::Sse, None, None).await else { unreachable!() };
    let sid = hello_sid(first_hello.clone(), "sse");
    // Everything the session was sent, in order, with the cursors a client saw it under.
    let mut history: Vec<Received> = Vec::new();
    for i in 0..6 {
        cluster.emit(i % NODES, &sid, "news", json!(i)).await;
        let event = sse.next().await;
        assert!(is_event(&event, "news", &json!(i)), "live: {event:?}");
        history.push(event);
    }
    drop(sse);
    // Missed while no transport held the session, published through every node.
    for i in 6..12 {
        cluster.emit(i % NODES, &sid, "news", json!(i)).await;
    }
    let mut sentinel = 0;

    // The first resume (node 1, SSE, from the last event seen) learns the missed events' cursors.
    let (mut link, hello) = cluster.attach(1, Via::Sse, Some(&sid), Some(&history[5].id)).await;
    assert_eq!((hello_sid(hello.clone(), "sse"), &hello.data["resumed"]), (sid.clone(), &json!(true)));
    let later_hello = hello.id.clone();
    for i in 6..12 {
        let event = link.next(cluster).await;
        assert!(is_event(&event, "news", &json!(i)), "replayed on node 1 after .5: {event:?}");
        history.push(event);
    }
    sentinel += 1;
    cluster.emit(2, &sid, "sentinel", json!(sentinel)).await;
    let event = link.next(cluster).await;
    assert!(is_event(&event, "sentinel", &json!(sentinel)), "live after the replay, nothing else: {event:?}");
    history.push(event);
    drop(link);

    // (node, transport, cursor, how many events of the history it comes after)
    let resumes = [
        (2, Via::Ws, first_hello.id.clone(), 0),
        (0, Via::Poll, history[0].id.clone(), 1),
        (2, Via::Sse, history[7].id.clone(), 8),
        (0, Via::Ws, later_hello, 6),
        (1, Via::Poll, history.last().unwrap().id.clone(), history.len()),
        (1, Via::Sse, history[3].id.clone(), 4),
    ];
    for (node, via, cursor, after) in resumes {
        let expected = pairs(&history[after..]);
        let (mut link, hello) = cluster.attach(node, via, Some(&sid), Some(&cursor)).await;
        assert_eq!(hello.event, "session", "resume on node {node} over {via:?} from {cursor}: {hello:?}");
        assert_eq!((hello.data["sid"].as_str(), &hello.data["resumed"]), (Some(sid.as_str()), &json!(true)), "{hello:?}");
        let mut replayed = Vec::new();
        for _ in 0..expected.len() {
            replayed.push(link.next(cluster).await);
        }
        assert_eq!(pairs(&replayed), expected, "the replay on node {node} over {via:?} from {cursor}");
        let ids: Vec<&str> = replayed.iter().map(|e| e.id.as_str()).collect();
        let history_ids: Vec<&str> = history[after..].iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, history_ids, "replayed under the cursors they were first sent with");
        sentinel += 1;
        cluster.emit((node + 1) % NODES, &sid, "sentinel", json!(sentinel)).await;
        let event = link.next(cluster).await;
        assert!(is_event(&event, "sentinel", &json!(sentinel)), "after the replay on node {node} over {via:?}, the next live event: {event:?}");
        history.push(event);
    }
}

/// Point 2 with a short buffer (`--buffer 8`): 31 events emitted through every node while no
/// transport holds the session. Every node reports the last 8 as kept and the 31st as the
/// last; a resume inside them replays exactly what came after its cursor, one from before them
/// gets `gap` (`overflow`, with how many were lost) and then the 8, under the numbers they
/// were emitted with; the numbering goes on after that.
async fn a_short_buffer_keeps_the_last_events_and_numbers_go_on(cluster: &Cluster) {
    let (_, hello) = cluster.attach(0, Via::Ws, None, None).await;
    let sid = hello_sid(hello, "websocket");
    cluster.wait_for_transport(1, &sid, None).await;
    for i in 1..=31 {
        cluster.emit(i % NODES, &sid, "n", json!(i)).await;
    }
    for node in 0..NODES {
        let (status, info) = cluster.api(node, "GET", &format!("/sessions/{sid}"), None).await;
        assert_eq!((status, &info["buffered"], &info["last_cursor"]), (200, &json!(8), &json!(format!("{sid}.31"))), "node {node}: {info}");
    }
    let (mut link, hello) = cluster.attach(1, Via::Sse, Some(&sid), Some(&format!("{sid}.25"))).await;
    assert_eq!(hello.data["resumed"], json!(true), "{hello:?}");
    for i in 26..=31 {
        let event = link.next(cluster).await;
        assert_eq!((event.event.as_str(), &event.data, event.id.as_str()), ("n", &json!(i), format!("{sid}.{i}").as_str()), "resumed after .25");
    }
    drop(link);
    let (mut link, hello) = cluster.attach(2, Via::Poll, Some(&sid), Some(&format!("{sid}.10"))).await;
    assert_eq!(hello.data["resumed"], json!(true), "{hello:?}");
    let gap = link.next(cluster).await;
    assert_eq!((gap.event.as_str(), &gap.data["reason"], &gap.data["lost"]), ("gap", &json!("overflow"), &json!(13)), "{gap:?}");
    for i in 24..=31 {
        let event = link.next(cluster).await;
        assert_eq!((event.event.as_str(), &event.data, event.id.as_str()), ("n", &json!(i), format!("{sid}.{i}").as_str()), "after the gap");
    }
    cluster.emit(0, &sid, "n", json!(32)).await;
    let event = link.next(cluster).await;
    assert_eq!((event.event.as_str(), &event.data, event.id.as_str()), ("n", &json!(32), format!("{sid}.32").as_str()), "live after the replay");
}

/// Point 3: whichever node the newer transport attaches on, the older one, on another node, is
/// closed within a second: a WebSocket with 4000, an SSE stream ended, a waiting poll 409.
async fn the_newest_transport_wins_across_nodes(cluster: &Cluster) {
    let mut ws = cluster.ws(0, "/ws").await;
    let sid = ws.hello().await;

    let mut sse = cluster.sse(1, &format!("/sse?sid={sid}")).await;
    assert_eq!(sse.hello().await, sid);
    let (code, reason) = superseded_within("node 0's WebSocket to close after an SSE attach on node 1", ws.expect_close()).await;
    assert_eq!((u16::from(code), reason.as_str()), (4000, "superseded"));

    let (status, events) = cluster.poll(2, &format!("?sid={sid}")).await;
    assert_eq!(status, 200);
    assert_eq!(hello_sid(events[0].clone(), "polling"), sid);
    superseded_within("node 1's SSE stream to end after a poll on node 2", sse.expect_end()).await;

    // A poll waiting on node 2 (so node 1 reports), then a socket on node 0.
    let waiting = {
        let url = cluster.url(2, &format!("/poll?sid={sid}&last_event_id={}", events.last().unwrap().id));
        let http = cluster.http.clone();
        tokio::spawn(async move {
            let response = http.get(url).send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null))
        })
    };
    cluster.wait_for_transport(1, &sid, Some("polling")).await;
    let mut ws = cluster.ws(0, &format!("/ws?sid={sid}")).await;
    assert_eq!(ws.hello().await, sid);
    let (status, body) = superseded_within("node 2's waiting poll to be answered after a socket on node 0", waiting).await.unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.starts_with("superseded")), "{body}");

    // The winner gets the replies, wherever the sends land.
    assert_eq!(cluster.post_json(1, &sid, &message("who has it?")).await.0, 202);
    let reply = ws.next().await;
    assert!(is_event(&reply, "response", &json!("Message received!")), "{reply:?}");
}

/// Point 5: rooms span the cluster. Joins and leaves through any node, an emit to a room from
/// any node reaching members on every node (the count covering them all), the chat of the
/// default app, and every node answering the same about sessions and members. Counts an emit to
/// everyone, so it must run on a cluster no other scenario has made sessions on.
async fn rooms_span_the_cluster(cluster: &Cluster) {
    let room = "cluster-room";
    let members_path = format!("/rooms/{room}/members");
    let mut a = cluster.sse(0, "/sse").await;
    let sa = a.hello().await;
    let mut b = cluster.ws(1, "/ws").await;
    let sb = b.hello().await;
    let mut c = cluster.sse(2, "/sse").await;
    let sc = c.hello().await;
    let (_, events) = cluster.poll(0, "").await;
    let sd = hello_sid(events[0].clone(), "polling");
    let mut d_cursor = events[0].id.clone();

    // Joined through a node other than the one holding the session, and by the app's `join`.
    let (status, body) = cluster.api(1, "POST", &members_path, Some(json!({"sid": sa}))).await;
    assert_eq!((status, body), (200, json!({"room": room, "sid": sa, "joined": true})));
    let (status, body) = cluster.api(2, "POST", &members_path, Some(json!({"sid": sb}))).await;
    assert_eq!((status, body), (200, json!({"room": room, "sid": sb, "joined": true})));
    assert_eq!(cluster.post_json(0, &sc, &json!({"event": "join", "data": room}).to_string()).await.0, 202);
    let expected = sorted(vec![sa.clone(), sb.clone(), sc.clone()]);
    for node in 0..NODES {
        assert_eq!(members(cluster, node, room).await, expected, "the members as node {node} lists them");
    }

    // Every node tells the same about each session.
    for (sid, transport, rooms) in [(&sa, json!("sse"), json!([room])), (&sb, json!("websocket"), json!([room])), (&sc, json!("sse"), json!([room])), (&sd, Value::Null, json!([]))] {
        let mut answers = Vec::new();
        for node in 0..NODES {
            let (status, mut info) = cluster.api(node, "GET", &format!("/sessions/{sid}"), None).await;
            assert_eq!(status, 200, "session {sid} on node {node}: {info}");
            // The only field that moves by itself: how long it has been between transports.
            let detached_for = info.as_object_mut().unwrap().remove("detached_for_ms");
            assert_eq!(detached_for.is_some_and(|d| d.is_u64()), transport.is_null(), "detached_for_ms of {sid} on node {node}");
            answers.push(info);
        }
        assert_eq!((&answers[0]["sid"], &answers[0]["transport"], &answers[0]["rooms"]), (&json!(sid), &transport, &rooms), "{}", answers[0]);
        assert!(answers.iter().all(|info| *info == answers[0]), "the nodes disagree about {sid}: {answers:#?}");
    }

    // An emit to the room from node 1 reaches the members on nodes 0, 1 and 2.
    let (status, body) = cluster.api(1, "POST", "/emit", Some(json!({"to": {"room": room}, "event": "news", "data": "to the room"}))).await;
    assert_eq!((status, body), (200, json!({"delivered": 3})));
    for (name, event) in [("a", a.next().await), ("c", c.next().await), ("b", b.next().await)] {
        assert!(is_event(&event, "news", &json!("to the room")), "member {name}: {event:?}");
    }
    // The non-member got nothing: what is sent to it alone is the first thing it polls.
    cluster.emit(2, &sd, "direct", json!(1)).await;
    let (status, events) = cluster.poll(1, &format!("?sid={sd}&last_event_id={d_cursor}")).await;
    assert_eq!(status, 200);
    assert_eq!(pairs(&events), [("direct".to_owned(), json!(1))]);
    d_cursor.clone_from(&events[0].id);

    // The default app's chat: a member's message through node 2 reaches the others, wherever
    // they are attached, before the sender's own reply.
    assert_eq!(cluster.post_json(2, &sa, &message("hello room")).await.0, 202);
    let chat = json!({"room": room, "from": &sa[..6], "text": "hello room"});
    for (name, event) in [("b", b.next().await), ("c", c.next().await)] {
        assert!(is_event(&event, "chat", &chat), "member {name}: {event:?}");
    }
    let reply = a.next().await;
    assert!(is_event(&reply, "response", &json!("Message received!")), "{reply:?}");

    // Leaving through yet another node.
    let (status, body) = cluster.api(2, "DELETE", &format!("{members_path}/{sb}"), None).await;
    assert_eq!((status, body), (200, json!({"room": room, "sid": sb, "left": true})));
    let expected = sorted(vec![sa.clone(), sc.clone()]);
    for node in 0..NODES {
        assert_eq!(members(cluster, node, room).await, expected, "the members as node {node} lists them after b left");
    }
    let (status, body) = cluster.api(0, "POST", "/emit", Some(json!({"to": {"room": room}, "event": "news", "data": "b has left"}))).await;
    assert_eq!((status, body), (200, json!({"delivered": 2})));
    for (name, event) in [("a", a.next().await), ("c", c.next().await)] {
        assert!(is_event(&event, "news", &json!("b has left")), "member {name}: {event:?}");
    }
    cluster.emit(0, &sb, "direct", json!(2)).await;
    let event = b.next().await;
    assert!(is_event(&event, "direct", &json!(2)), "b, out of the room, got nothing of it: {event:?}");

    // Everyone: every live session of the cluster, counted once.
    let (status, body) = cluster.api(2, "POST", "/emit", Some(json!({"to": {"all": true}, "event": "all", "data": null}))).await;
    assert_eq!((status, body), (200, json!({"delivered": 4})));
    for (name, event) in [("a", a.next().await), ("b", b.next().await), ("c", c.next().await)] {
        assert!(is_event(&event, "all", &Value::Null), "{name}: {event:?}");
    }
    let (_, events) = cluster.poll(2, &format!("?sid={sd}&last_event_id={d_cursor}")).await;
    assert_eq!(pairs(&events), [("all".to_owned(), Value::Null)]);
}

#[tokio::test]
async fn a_session_made_on_one_node_is_known_to_every_node() {
    let cluster = Cluster::start(&[]).await;
    sessions_are_known_to_every_node(&cluster).await;
}

#[tokio::test]
async fn a_resume_on_any_node_from_any_cursor_replays_exactly_what_was_missed() {
    let cluster = Cluster::start(&[]).await;
    resume_anywhere_from_any_cursor_replays_exactly_what_was_missed(&cluster).await;
}

#[tokio::test]
async fn a_short_buffer_keeps_the_last_events_on_every_node_and_numbers_go_on() {
    let cluster = Cluster::start(&["--buffer", "8"]).await;
    a_short_buffer_keeps_the_last_events_and_numbers_go_on(&cluster).await;
}

/// The same on a Redis Cluster, where every event is appended by the one-event `emit` script
/// rather than a batch's `emit_many`.
#[tokio::test]
async fn a_short_buffer_keeps_the_last_events_on_a_redis_cluster() {
    let cluster = Cluster::on_redis_cluster(&["--buffer", "8"]).await;
    a_short_buffer_keeps_the_last_events_and_numbers_go_on(&cluster).await;
}

/// A session's buffer list lost in Redis while its hash stays (an eviction, say): the next
/// event's number goes past every number the lost list can have held, so none is used twice,
/// and a client resuming from what it saw last gets `gap` (`overflow`), then the new event.
#[tokio::test]
async fn a_lost_buffer_list_never_reuses_an_event_number() {
    let mut cluster = Cluster::start(&["--buffer", "8"]).await;
    let (_, hello) = cluster.attach(0, Via::Ws, None, None).await;
    let sid = hello_sid(hello, "websocket");
    cluster.wait_for_transport(1, &sid, None).await;
    for i in 1..=5 {
        cluster.emit(i % NODES, &sid, "n", json!(i)).await;
    }
    let port = cluster.redis().port;
    assert_eq!(command(port, &["DEL", &format!("sy:{{{sid}}}:b")]).await, Ok("1".to_owned()), "the buffer list was there");
    let last = |info: &Value| -> u64 { info["last_cursor"].as_str().and_then(|c| c.rsplit('.').next()?.parse().ok()).expect("a last cursor") };
    let (status, info) = cluster.api(0, "GET", &format!("/sessions/{sid}"), None).await;
    let lost = last(&info);
    assert!(status == 200 && lost >= 5, "the numbers are read past the lost ones at once: {info}");
    cluster.emit(1, &sid, "n", json!(6)).await;
    let (status, info) = cluster.api(2, "GET", &format!("/sessions/{sid}"), None).await;
    assert!(status == 200 && last(&info) == lost + 1, "the event after the loss is numbered next: {info}");
    let last = last(&info);
    let (mut link, hello) = cluster.attach(2, Via::Sse, Some(&sid), Some(&format!("{sid}.5"))).await;
    assert_eq!((hello.data["sid"].as_str(), &hello.data["resumed"]), (Some(sid.as_str()), &json!(true)), "the same session: {hello:?}");
    let gap = link.next(&cluster).await;
    assert_eq!((gap.event.as_str(), &gap.data["reason"]), ("gap", &json!("overflow")), "{gap:?}");
    let event = link.next(&cluster).await;
    assert_eq!((event.event.as_str(), &event.data, event.id), ("n", &json!(6), format!("{sid}.{last}")), "the new event after the gap");
}

#[tokio::test]
async fn the_newest_transport_wins_cluster_wide_within_a_second() {
    let cluster = Cluster::start(&[]).await;
    the_newest_transport_wins_across_nodes(&cluster).await;
}

#[tokio::test]
async fn rooms_and_the_publish_api_span_every_node() {
    let cluster = Cluster::start(&[]).await;
    rooms_span_the_cluster(&cluster).await;
}

#[tokio::test]
async fn runs_on_a_redis_cluster() {
    let cluster = Cluster::on_redis_cluster(&[]).await;
    // Rooms first: it counts the cluster's sessions.
    rooms_span_the_cluster(&cluster).await;
    sessions_are_known_to_every_node(&cluster).await;
    resume_anywhere_from_any_cursor_replays_exactly_what_was_missed(&cluster).await;
    the_newest_transport_wins_across_nodes(&cluster).await;
    // The operator page's reports are one key: every node hears from every node there too.
    for node in 0..NODES {
        let url = cluster.url(node, "/admin/cluster");
        wait_until(&format!("node {node}'s operator page to list three nodes"), || async {
            let view: Value = cluster.http.get(&url).send().await.unwrap().json().await.unwrap();
            view["cluster"]["nodes"].as_array().is_some_and(|nodes| nodes.len() == NODES)
        })
        .await;
    }
}

/// The operator page in cluster mode (issue 18): each node shows its own numbers, says which
/// node it is (the id `/healthz` gives), and the cluster's rooms (from Redis); and every
/// node's page lists all three nodes, with their addresses, and totals that are the sums of
/// each node's own `/metrics`, within a second or two; a gone node's old report is left out,
/// and deleted.
#[tokio::test]
async fn each_nodes_operator_page_shows_that_nodes_numbers_and_names_it() {
    let mut cluster = Cluster::start(&[]).await;
    // The report of a node gone long ago: left out of every page, and deleted.
    let port = cluster.redis().port;
    let stale = json!({"node": "0000dead0000dead", "addr": "127.0.0.1:9", "t": 1000, "sessions": 7}).to_string();
    assert_eq!(command(port, &["HSET", "sy:admin", "0000dead0000dead", &stale]).await, Ok("1".to_owned()));
    let mut sse = cluster.sse(0, "/sse").await;
    let sid = sse.hello().await;
    let mut ws = cluster.ws(1, "/ws").await;
    ws.hello().await;
    cluster.api(0, "POST", "/rooms/lobby/members", Some(json!({ "sid": sid }))).await;
    for (node, on) in [(0, "sse"), (1, "websocket")] {
        let (_, health) = cluster.healthz(node).await;
        let response = within("GET /admin/stream", cluster.http.get(cluster.url(node, "/admin/stream")).send()).await.unwrap();
        assert_eq!(response.status(), 200, "loopback nodes serve the page without a key");
        let mut stream = SseClient::from_response(response);
        let tick = within("a tick counting this node's session", async {
            loop {
                let event = stream.next().await;
                if event.event == "tick" && event.data["on"][on] == json!(1) {
                    return event.data;
                }
            }
        })
        .await;
        assert_eq!(tick["node"], health["node"], "node {node}: {tick}");
        // The cluster's rooms, from Redis, the same on every node: the room joined through node 0.
        assert_eq!(tick["rooms"], json!({"count": 1, "top": [["lobby", 1]]}), "node {node}: {tick}");
        let other = if on == "sse" { "websocket" } else { "sse" };
        assert_eq!(tick["on"][other], json!(0), "node {node} counts only what it serves: {tick}");
    }

    // A client on the third node too, and traffic through every node.
    let mut sse2 = cluster.sse(2, "/sse").await;
    sse2.hello().await;
    cluster.emit(1, &sid, "news", json!(1)).await;
    cluster.emit(2, &sid, "news", json!(2)).await;
    assert!(is_event(&sse.next().await, "news", &json!(1)));
    assert!(is_event(&sse.next().await, "news", &json!(2)));
    let mut ids = Vec::new();
    for node in 0..NODES {
        ids.push(cluster.healthz(node).await.1["node"].as_str().unwrap().to_owned());
    }
    ids.sort();

    // Every node's view of the cluster agrees with what the nodes' own `/metrics` say.
    let transports = ["websocket", "sse", "polling"];
    let figures = [("totals", "out", "switchyard_events_out_total"), ("totals", "in", "switchyard_events_in_total"), ("totals", "bytes", "switchyard_bytes_out_total")];
    for viewer in 0..NODES {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut expected = std::collections::BTreeMap::<String, f64>::new();
            for node in 0..NODES {
                let text = within("GET /metrics", cluster.http.get(cluster.url(node, "/metrics")).send()).await.unwrap().text().await.unwrap();
                let samples = switchyard::metrics::parse(&text);
                let total = |name: &str, label: Option<(&str, &str)>| -> f64 {
                    samples.iter().filter(|s| s.name == name && label.is_none_or(|(k, v)| s.label(k) == Some(v))).map(|s| s.value).sum()
                };
                let mut bump = |slot: String, value: f64| *expected.entry(slot).or_insert(0.0) += value;
                for transport in transports {
                    bump(format!("on.{transport}"), total("switchyard_sessions_by_transport", Some(("transport", transport))));
                }
                for (group, key, name) in figures {
                    bump(format!("{group}.{key}"), total(name, None));
                }
            }
            let response = within("GET /admin/cluster", cluster.http.get(cluster.url(viewer, "/admin/cluster")).send()).await.unwrap();
            assert_eq!(response.status(), 200);
            let view: Value = response.json().await.unwrap();
            let nodes = view["cluster"]["nodes"].as_array().cloned().unwrap_or_default();
            let mut seen: Vec<String> = nodes.iter().filter_map(|n| n["node"].as_str().map(str::to_owned)).collect();
            seen.sort();
            let addresses_right = nodes.iter().all(|n| {
                let i = ids.iter().position(|id| n["node"] == json!(id));
                i.is_some() && (0..NODES).any(|node| n["addr"] == json!(cluster.addr(node)))
            });
            let totals = &view["cluster"]["totals"];
            let got = |slot: &str| {
                let (group, key) = slot.split_once('.').unwrap();
                totals[group][key].as_f64().unwrap_or(0.0)
            };
            let sums_right = expected.iter().all(|(slot, want)| got(slot) == *want);
            if seen == ids && addresses_right && sums_right && got("on.websocket") >= 1.0 && got("on.sse") >= 2.0 {
                assert_eq!(view["node"], cluster.healthz(viewer).await.1["node"], "node {viewer} names itself");
                break;
            }
            let last = format!("nodes {seen:?} (want {ids:?}), expected {expected:?}, view {view}");
            assert!(Instant::now() < deadline, "node {viewer}'s view of the cluster never matched the nodes' /metrics: {last}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    drop((sse2, ws));

    wait_until("the gone node's report to be deleted", || async {
        command(port, &["HEXISTS", "sy:admin", "0000dead0000dead"]).await == Ok("0".to_owned())
    })
    .await;
    assert_eq!(command(port, &["HLEN", "sy:admin"]).await, Ok("3".to_owned()), "one report per live node");

    // `/admin/` is the page too.
    let response = within("GET /admin/", cluster.http.get(cluster.url(0, "/admin/")).send()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("id=\"cluster\""));
}

/// `rediss://`: the nodes reach Redis over TLS, trusting the test CA given with `--redis-ca`,
/// and serve as on plain Redis; without the CA, the server's certificate is refused.
#[tokio::test]
async fn runs_on_redis_over_tls_with_its_ca() {
    let certs = harness::TempDir::new("redis-tls");
    let (redis, url, ca) = RedisServer::start_tls(&certs).await;
    let ca_text = std::fs::read(&ca).unwrap();
    assert!(switchyard::hub::Cluster::connect(&url, Some(&ca_text)).await.is_ok(), "{url} with the test CA");
    let refused = switchyard::hub::Cluster::connect(&url, None).await.err().expect("the test CA is not among the system's roots");
    assert!(refused.to_string().contains("certificate"), "{refused}");
    let ca = ca.display().to_string();
    let cluster = Cluster::on(Backing::Server(redis), &url, &["--redis-ca", &ca]).await;
    sessions_are_known_to_every_node(&cluster).await;
}

/// A Redis reached with a login and a database in the URL (`redis://USER:PASSWORD@HOST:PORT/DB`):
/// every connection of a node logs in and selects it, the emits' own connection too (an emit in
/// another database would find no session, and no reply would come), so the sessions and their
/// replies are all in database 2.
#[tokio::test]
async fn runs_on_redis_with_a_login_and_a_database() {
    let redis = RedisServer::start_with_args(&["--user", "alice", "on", ">secret", "~*", "&*", "+@all"]).await;
    let port = redis.port;
    let url = format!("redis://alice:secret@127.0.0.1:{port}/2");
    let cluster = Cluster::on(Backing::Server(redis), &url, &[]).await;
    sessions_are_known_to_every_node(&cluster).await;
    let keyspace = command(port, &["INFO", "keyspace"]).await.unwrap();
    assert!(keyspace.contains("db2:") && !keyspace.contains("db0:"), "{keyspace}");
    let wrong = format!("redis://alice:wrong@127.0.0.1:{port}/2");
    assert!(switchyard::hub::Cluster::connect(&wrong, None).await.is_err(), "a wrong password is refused");
}

// ---------------------------------------------------------------------------------------------
// An application behind the nodes: every node forwards to it and posts its hooks to it.
// ---------------------------------------------------------------------------------------------

/// What the application received, in arrival order.
#[derive(Clone, Default)]
struct Seen {
    events: Arc<Mutex<Vec<Value>>>,
    expires: Arc<Mutex<Vec<Value>>>,
    /// Events being answered right now, by sid, and how often one arrived while another of the
    /// same session was still being answered (the application must get them one at a time).
    in_flight: Arc<Mutex<std::collections::HashMap<String, usize>>>,
    overlaps: Arc<std::sync::atomic::AtomicUsize>,
}

/// A tiny application: `/events` answers every event with `ack` carrying its data; `/expire`
/// records the hook's calls.
struct Backend {
    addr: SocketAddr,
    seen: Seen,
}

impl Backend {
    async fn start() -> Backend {
        let seen = Seen::default();
        let router = Router::new().route("/events", post(backend_event)).route("/expire", post(backend_expire)).with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Backend { addr, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The data of the events of one session, in the order the application got them.
    fn events_of(&self, sid: &str) -> Vec<Value> {
        self.seen.events.lock().unwrap().iter().filter(|e| e["sid"] == sid).map(|e| e["data"].clone()).collect()
    }

    /// The expire hook's calls about one session.
    fn expires_of(&self, sid: &str) -> Vec<Value> {
        self.seen.expires.lock().unwrap().iter().filter(|e| e["sid"] == sid).cloned().collect()
    }
}

/// Data `{"slow": n}` is answered after 30 ms (`"ms"` if given), with `ack` carrying `n`.
async fn backend_event(State(seen): State<Seen>, Json(request): Json<Value>) -> Json<Value> {
    let data = request["data"].clone();
    let sid = request["sid"].as_str().unwrap_or_default().to_owned();
    {
        let mut in_flight = seen.in_flight.lock().unwrap();
        let now = in_flight.entry(sid.clone()).or_default();
        *now += 1;
        if *now > 1 {
            seen.overlaps.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    seen.events.lock().unwrap().push(request);
    let data = match data.get("slow") {
        Some(n) => {
            tokio::time::sleep(Duration::from_millis(data.get("ms").and_then(Value::as_u64).unwrap_or(30))).await;
            n.clone()
        }
        None => data,
    };
    *seen.in_flight.lock().unwrap().get_mut(&sid).unwrap() -= 1;
    Json(json!([{"emit": "ack", "data": data}]))
}

async fn backend_expire(State(seen): State<Seen>, Json(request): Json<Value>) -> Response {
    seen.expires.lock().unwrap().push(request);
    StatusCode::NO_CONTENT.into_response()
}

/// Point 4: numbered sends reach the application exactly once and in order, whichever nodes
/// they arrive at: sends spread over the nodes, some sent to two nodes at once (a retry racing
/// the original), some again later to another node, one late copy over the socket.
#[tokio::test]
async fn numbered_sends_are_handled_once_and_in_order_whichever_nodes_they_reach() {
    let backend = Backend::start().await;
    let cluster = Cluster::start(&["--upstream", &backend.url("/events")]).await;
    let mut ws = cluster.ws(0, "/ws").await;
    let sid = ws.hello().await;
    let send = |n: u64| json!({"event": "count", "data": n, "seq": n}).to_string();
    let mut rng = StdRng::seed_from_u64(14);
    for n in 1..=20 {
        let node = rng.random_range(0..NODES);
        let other = (node + rng.random_range(1..NODES)) % NODES;
        match rng.random_range(0..4) {
            0 => {
                let body = send(n);
                let (first, second) = tokio::join!(cluster.post_json(node, &sid, &body), cluster.post_json(other, &sid, &body));
                for (at, (status, body)) in [(node, first), (other, second)] {
                    assert!((200..300).contains(&status), "seq {n} sent to nodes {node} and {other} at once: node {at} answered {status} {body}");
                }
            }
            1 => {
                let (status, body) = cluster.post_json(node, &sid, &send(n)).await;
                assert_eq!(status, 202, "seq {n} to node {node}: {body}");
                let (status, body) = cluster.post_json(other, &sid, &send(n)).await;
                assert!((200..300).contains(&status), "seq {n} again, to node {other}: {status} {body}");
            }
            _ => {
                let (status, body) = cluster.post_json(node, &sid, &send(n)).await;
                assert_eq!(status, 202, "seq {n} to node {node}: {body}");
            }
        }
        if n > 3 && rng.random_range(0..4) == 0 {
            let old = rng.random_range(1..n);
            let at = rng.random_range(0..NODES);
            let (status, body) = cluster.post_json(at, &sid, &send(old)).await;
            assert!((200..300).contains(&status), "a late copy of seq {old} to node {at}: {status} {body}");
        }
    }
    // The 21st over the socket, behind a late copy of the 5th in the same batch.
    ws.send(&format!("[{},{}]", send(5), send(21))).await;
    for n in 1..=21 {
        let ack = ws.next().await;
        assert!(is_event(&ack, "ack", &json!(n)), "ack {n} expected, got {ack:?}");
    }
    cluster.emit(1, &sid, "news", json!("after")).await;
    let next = ws.next().await;
    assert!(is_event(&next, "news", &json!("after")), "no reply beyond the 21: {next:?}");
    assert_eq!(backend.events_of(&sid), (1..=21).map(|n| json!(n)).collect::<Vec<_>>(), "what the application got");

    // A transport attached on another node is told how far the session got.
    let mut sse = cluster.sse(2, &format!("/sse?sid={sid}")).await;
    let hello = sse.next().await;
    assert_eq!((hello.event.as_str(), &hello.data["received"]), ("session", &json!(21)), "{hello:?}");
}

/// Point 4, with a slow application: sends of one session arriving at the three nodes while
/// the application is still answering the one before reach it one at a time, in the order they
/// arrived, each answer applied before the next is sent (every node has its own forwarding
/// workers; the session's inbox, cluster-wide, orders them).
#[tokio::test]
async fn a_slow_application_gets_one_sessions_events_one_at_a_time_in_arrival_order_across_nodes() {
    let backend = Backend::start().await;
    let cluster = Arc::new(Cluster::start(&["--upstream", &backend.url("/events")]).await);
    let mut ws = cluster.ws(0, "/ws").await;
    let sid = ws.hello().await;
    let mut sends = Vec::new();
    for n in 1..=9u64 {
        let (cluster2, sid2) = (cluster.clone(), sid.clone());
        sends.push(tokio::spawn(async move {
            let body = json!({"event": "count", "data": {"slow": n}, "seq": n}).to_string();
            cluster2.post_json(n as usize % NODES, &sid2, &body).await
        }));
        // The next is sent once this one reached the application, which takes 30 ms to answer
        // it: the next arrives (at another node) while the application still works on this one.
        wait_until(&format!("event {n} at the application"), || async { backend.events_of(&sid).len() as u64 >= n }).await;
    }
    for (n, send) in sends.into_iter().enumerate() {
        let (status, body) = send.await.unwrap();
        assert_eq!(status, 202, "send {}: {body}", n + 1);
    }
    for n in 1..=9 {
        let ack = ws.next().await;
        assert!(is_event(&ack, "ack", &json!(n)), "ack {n} expected, got {ack:?}");
    }
    let got: Vec<Value> = backend.events_of(&sid).iter().map(|d| d["slow"].clone()).collect();
    assert_eq!(got, (1..=9).map(|n| json!(n)).collect::<Vec<_>>(), "the order the application got them in");
    assert_eq!(backend.seen.overlaps.load(std::sync::atomic::Ordering::SeqCst), 0, "events of the session overlapped at the application");
}

// ---------------------------------------------------------------------------------------------
// The inbox's lease: the node that handled a session's last client event keeps its inbox until
// another node asks for it (docs/design.md, "Cluster mode").
// ---------------------------------------------------------------------------------------------

/// How long a node that died holding a session's inbox may hold up that session's next event:
/// the inbox lease (1.5 s), and room for the asking node to notice and the request to travel.
const ONE_LEASE: Duration = Duration::from_millis(2500);

/// The Redis requests a node made for sessions' inboxes (`inbox` on its `/metrics`): tickets
/// taken, waits, releases.
async fn inbox_requests(cluster: &Cluster, node: usize) -> f64 {
    redis_requests(cluster, node, "inbox").await
}

/// How many Redis requests of kind `op` a node's `/metrics` counts.
async fn redis_requests(cluster: &Cluster, node: usize, op: &str) -> f64 {
    let text = within("/metrics", async { cluster.http.get(cluster.url(node, "/metrics")).send().await.unwrap().text().await.unwrap() }).await;
    let label = format!("op=\"{op}\"");
    text.lines()
        .filter(|line| line.starts_with("switchyard_redis_command_seconds_count{") && line.contains(&label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The node that handled a session's last event handles the next ones it gets without a Redis
/// request for the inbox (two per event without the lease: the ticket and its release), over
/// its WebSocket and over POSTs that land on another node alike; numbered sends are still
/// handled once, and the mark that says so reaches every node.
#[tokio::test]
async fn the_node_that_handled_a_sessions_last_event_keeps_its_inbox_for_the_next() {
    let cluster = Cluster::start(&[]).await;
    let mut ws = cluster.ws(0, "/ws").await;
    let sid = ws.hello().await;
    let reply = json!("Message received!");
    let numbered = |n: u64| json!({"event": "message", "data": n, "seq": n}).to_string();
    ws.send(&numbered(1)).await;
    assert!(is_event(&ws.next().await, "response", &reply));

    let before = inbox_requests(&cluster, 0).await;
    for n in 2..=21 {
        ws.send(&numbered(n)).await;
        let event = ws.next().await;
        assert!(is_event(&event, "response", &reply), "reply to {n}: {event:?}");
    }
    let taken = inbox_requests(&cluster, 0).await - before;
    // A ticket is taken again once a lease has less than a second left: a few at most here.
    assert!(taken < 10.0, "20 WebSocket events on the node holding the inbox took {taken} inbox requests (40 without the lease)");

    // POSTs through node 2: it asks node 0 for the inbox once, then keeps it.
    assert_eq!(cluster.post_json(2, &sid, &numbered(22)).await.0, 202);
    assert!(is_event(&ws.next().await, "response", &reply));
    let before = inbox_requests(&cluster, 2).await;
    for n in 23..=42 {
        let (status, body) = cluster.post_json(2, &sid, &numbered(n)).await;
        assert_eq!(status, 202, "POST {n} to node 2: {body}");
        let event = ws.next().await;
        assert!(is_event(&event, "response", &reply), "reply to {n}: {event:?}");
    }
    let taken = inbox_requests(&cluster, 2).await - before;
    assert!(taken < 10.0, "20 POSTs to the node holding the inbox took {taken} inbox requests (40 without the lease)");

    // Re-sends through either node are skipped: no second reply.
    ws.send(&numbered(42)).await;
    assert_eq!(cluster.post_json(1, &sid, &numbered(30)).await.0, 202);
    assert_eq!(cluster.post_json(2, &sid, &numbered(41)).await.0, 202);
    cluster.emit(1, &sid, "news", json!("after")).await;
    let next = ws.next().await;
    assert!(is_event(&next, "news", &json!("after")), "no reply to a re-send: {next:?}");
    let mut sse = cluster.sse(1, &format!("/sse?sid={sid}")).await;
    let hello = sse.next().await;
    assert_eq!((hello.event.as_str(), &hello.data["received"]), ("session", &json!(42)), "{hello:?}");
}

/// Point 4 with the lease moving: events of one session arrive in turn at node 0 (over its
/// WebSocket) and at node 1 (POSTs), each sent while the application still works on the one
/// before, so the inbox is asked for while its holder is handling; numbered re-sends race them
/// through the third node. The application gets each once, in arrival order, never two at a
/// time; the replies come in that order.
#[tokio::test]
async fn events_arriving_in_turn_at_two_nodes_keep_arrival_order_while_the_inbox_moves() {
    let backend = Backend::start().await;
    let cluster = Arc::new(Cluster::start(&["--upstream", &backend.url("/events")]).await);
    let mut ws = cluster.ws(0, "/ws").await;
    let sid = ws.hello().await;
    let send = |n: u64| json!({"event": "count", "data": {"slow": n}, "seq": n}).to_string();
    let mut rng = StdRng::seed_from_u64(1414);
    let mut posts = Vec::new();
    for n in 1..=24u64 {
        if rng.random_bool(0.5) {
            ws.send(&send(n)).await;
        } else {
            let (cluster2, sid2, body) = (cluster.clone(), sid.clone(), send(n));
            posts.push((n, tokio::spawn(async move { cluster2.post_json(1, &sid2, &body).await })));
        }
        if n > 2 && rng.random_bool(0.3) {
            let (cluster2, sid2, body) = (cluster.clone(), sid.clone(), send(rng.random_range(1..n)));
            posts.push((0, tokio::spawn(async move { cluster2.post_json(2, &sid2, &body).await })));
        }
        wait_until(&format!("event {n} at the application"), || async { backend.events_of(&sid).len() as u64 >= n }).await;
    }
    for (n, post) in posts {
        let (status, body) = post.await.unwrap();
        assert!((200..300).contains(&status), "POST of {n} (0: a re-send): {status} {body}");
    }
    for n in 1..=24 {
        let ack = ws.next().await;
        assert!(is_event(&ack, "ack", &json!(n)), "ack {n} expected, got {ack:?}");
    }
    cluster.emit(2, &sid, "news", json!("after")).await;
    let next = ws.next().await;
    assert!(is_event(&next, "news", &json!("after")), "nothing beyond the 24 acks: {next:?}");
    let got: Vec<Value> = backend.events_of(&sid).iter().map(|d| d["slow"].clone()).collect();
    assert_eq!(got, (1..=24).map(|n| json!(n)).collect::<Vec<_>>(), "what the application got, in its order");
    assert_eq!(backend.seen.overlaps.load(std::sync::atomic::Ordering::SeqCst), 0, "events of the session overlapped at the application");
}

/// Point 7 with the lease: `kill -9` of the node holding a session's inbox, once idle between
/// events and once in the middle of a handler (the application still answering), holds the
/// session's next event on another node up for one lease at most; a send whose handler died
/// with the node, re-sent, is handled again (its reply was never made), and every reply made
/// before the kill is still there, once, on resume.
#[tokio::test]
async fn a_node_killed_holding_a_sessions_inbox_holds_it_up_for_one_lease_at_most() {
    const VICTIM: usize = 1;
    let backend = Backend::start().await;
    let mut cluster = Cluster::start(&["--upstream", &backend.url("/events")]).await;
    let send = |n: u64, ms: u64| json!({"event": "count", "data": {"slow": n, "ms": ms}, "seq": n}).to_string();

    // Idle: node 1 handled the session's last event and keeps its inbox.
    let mut ws = cluster.ws(VICTIM, "/ws").await;
    let idle = ws.hello().await;
    ws.send(&send(1, 0)).await;
    let first = ws.next().await;
    assert!(is_event(&first, "ack", &json!(1)), "{first:?}");
    // Busy: node 1 in the handler of another session's event, for far longer than a lease.
    let mut busy_ws = cluster.ws(VICTIM, "/ws").await;
    let busy = busy_ws.hello().await;
    busy_ws.send(&send(1, 20_000)).await;
    wait_until("the long event at the application", || async { backend.events_of(&busy).len() == 1 }).await;

    cluster.kill9(VICTIM);
    let killed = Instant::now();
    let (next, again) = (send(2, 0), send(1, 0));
    let (idle_post, busy_post) = tokio::join!(cluster.post_json(0, &idle, &next), cluster.post_json(2, &busy, &again));
    let waited = killed.elapsed();
    assert_eq!(idle_post.0, 202, "the next send of the session whose inbox the killed node kept: {}", idle_post.1);
    assert_eq!(busy_post.0, 202, "the re-send of the event whose handler died with the node: {}", busy_post.1);
    assert!(waited < ONE_LEASE, "sends after the kill waited {waited:?} for the inbox (at most one lease)");
    let numbers = |sid: &str| backend.events_of(sid).iter().map(|d| d["slow"].clone()).collect::<Vec<_>>();
    assert_eq!(numbers(&idle), [json!(1), json!(2)], "what the application got of the idle session");
    assert_eq!(numbers(&busy), [json!(1), json!(1)], "the event whose handler died, then its re-send");

    // On resume elsewhere: each reply made, once, in order, and nothing more.
    for (sid, cursor, expected) in [(&idle, Some(first.id.clone()), vec![json!(2)]), (&busy, None, vec![json!(1)])] {
        let (mut link, hello) = cluster.attach(2, Via::Sse, Some(sid.as_str()), cursor.as_deref()).await;
        assert_eq!(hello.data["resumed"], json!(true), "{hello:?}");
        for n in expected {
            let ack = link.next(&cluster).await;
            assert!(is_event(&ack, "ack", &n), "{sid}: ack {n} expected, got {ack:?}");
        }
        cluster.emit(0, sid, "sentinel", json!(1)).await;
        let next = link.next(&cluster).await;
        assert!(is_event(&next, "sentinel", &json!(1)), "{sid}: nothing more: {next:?}");
    }
}

/// The rooms a handler sees on the node keeping the inbox follow changes made through other
/// nodes: joined through node 2, the session's next message over its WebSocket on node 0 goes
/// to the room as `chat`; left through node 2, the next one does not.
#[tokio::test]
async fn the_node_keeping_the_inbox_sees_rooms_changed_through_other_nodes() {
    let cluster = Cluster::start(&[]).await;
    let room = "lease-room";
    let members_path = format!("/rooms/{room}/members");
    let mut a = cluster.ws(0, "/ws").await;
    let sa = a.hello().await;
    let mut b = cluster.sse(1, "/sse").await;
    let sb = b.hello().await;
    let (status, _) = cluster.api(1, "POST", &members_path, Some(json!({"sid": sb}))).await;
    assert_eq!(status, 200);
    let reply = json!("Message received!");
    a.send(&message("alone")).await;
    assert!(is_event(&a.next().await, "response", &reply));

    let (status, body) = cluster.api(2, "POST", &members_path, Some(json!({"sid": sa}))).await;
    assert_eq!((status, body), (200, json!({"room": room, "sid": sa, "joined": true})));
    a.send(&message("in the room")).await;
    assert!(is_event(&a.next().await, "response", &reply));
    let chat = b.next().await;
    assert!(is_event(&chat, "chat", &json!({"room": room, "from": &sa[..6], "text": "in the room"})), "{chat:?}");

    let (status, body) = cluster.api(2, "DELETE", &format!("{members_path}/{sa}"), None).await;
    assert_eq!((status, body), (200, json!({"room": room, "sid": sa, "left": true})));
    a.send(&message("gone")).await;
    assert!(is_event(&a.next().await, "response", &reply));
    cluster.emit(2, &sb, "sentinel", json!(1)).await;
    let next = b.next().await;
    assert!(is_event(&next, "sentinel", &json!(1)), "no chat after leaving: {next:?}");
}

/// Point 6: a session expires once, cluster-wide, after its grace period, whichever node made
/// it or held it last: the expire hook (every node pointing at the same application) is called
/// exactly once per session, with its rooms; a session still attached does not expire.
#[tokio::test]
async fn a_session_expires_once_cluster_wide_and_its_hook_fires_once() {
    let backend = Backend::start().await;
    let cluster = Cluster::start(&["--grace", "1s", "--upstream-on-expire", &backend.url("/expire")]).await;
    let mut sse = cluster.sse(0, "/sse").await;
    let a = sse.hello().await;
    let mut ws = cluster.ws(1, "/ws").await;
    let b = ws.hello().await;
    let (_, events) = cluster.poll(2, "").await;
    let c = hello_sid(events[0].clone(), "polling");
    // Made on node 0, last held on node 2.
    let mut moved = cluster.sse(0, "/sse").await;
    let d = moved.hello().await;
    let mut moved_to = cluster.ws(2, &format!("/ws?sid={d}")).await;
    assert_eq!(moved_to.hello().await, d);
    moved.expect_end().await;
    let (status, _) = cluster.api(1, "POST", "/rooms/r/members", Some(json!({"sid": a}))).await;
    assert_eq!(status, 200);
    // Attached throughout: it must not expire.
    let mut kept = cluster.sse(1, "/sse").await;
    let e = kept.hello().await;
    drop((sse, ws, moved, moved_to));

    let gone = [&a, &b, &c, &d];
    wait_until("the expire hook to be called for each dropped session", || {
        std::future::ready(gone.iter().all(|sid| !backend.expires_of(sid).is_empty()))
    })
    .await;
    // A witness dropped only now: once its own grace has run out and its hook has come, every
    // node has had longer than a grace period to call the hook again for the others.
    let mut witness = cluster.sse(2, "/sse").await;
    let w = witness.hello().await;
    drop(witness);
    wait_until("the expire hook for the witness session", || std::future::ready(!backend.expires_of(&w).is_empty())).await;

    for sid in gone.into_iter().chain([&w]) {
        let calls = backend.expires_of(sid);
        assert_eq!(calls.len(), 1, "the expire hook's calls for {sid}: {calls:#?}");
        let rooms = if *sid == a { json!(["r"]) } else { json!([]) };
        assert_eq!(calls[0], json!({"v": 1, "type": "expire", "sid": sid, "rooms": rooms}));
        for node in 0..NODES {
            let (status, body) = cluster.post_json(node, sid, &message("still there?")).await;
            assert_eq!(status, 404, "POST to expired {sid} on node {node}: {body}");
            let (status, body) = cluster.api(node, "GET", &format!("/sessions/{sid}"), None).await;
            assert_eq!(status, 404, "expired {sid} on node {node}'s API: {body}");
        }
    }
    for node in 0..NODES {
        assert!(members(&cluster, node, "r").await.is_empty(), "an expired session leaves its rooms (node {node})");
    }
    // Resuming an expired session anywhere gives a fresh one, with a gap saying so.
    let (mut link, hello) = cluster.attach(2, Via::Sse, Some(&a), None).await;
    assert!(hello.event == "session" && hello.data["sid"] != a.as_str() && hello.data["resumed"] == false, "{hello:?}");
    let gap = link.next(&cluster).await;
    assert_eq!((gap.event.as_str(), &gap.data["reason"]), ("gap", &json!("expired")), "{gap:?}");

    assert!(backend.expires_of(&e).is_empty(), "the attached session did not expire");
    assert_eq!(cluster.post_json(2, &e, &message("still here")).await.0, 202);
    let reply = kept.next().await;
    assert!(is_event(&reply, "response", &json!("Message received!")), "{reply:?}");
}

/// Point 7: SIGKILL of the node holding two clients' transports (SSE and WebSocket). Each
/// resumes on another node from the last cursor it saw and gets every event acknowledged before
/// the kill (publish API answered, through the killed node too; replies it saw) exactly once,
/// in order. The killed node, started again, serves the same sessions.
#[tokio::test]
async fn a_killed_node_loses_nothing_that_was_acknowledged() {
    const VICTIM: usize = 1;
    let mut cluster = Cluster::start(&[]).await;
    let mut sse = cluster.sse(VICTIM, "/sse").await;
    let s = sse.hello().await;
    let mut ws = cluster.ws(VICTIM, "/ws").await;
    let w = ws.hello().await;
    let (mut sse_seen, mut ws_seen) = (Vec::new(), Vec::new());
    let (mut sse_expected, mut ws_expected) = (Vec::new(), Vec::new());
    let news = |i: usize| ("news".to_owned(), json!(i));
    let reply = ("response".to_owned(), json!("Message received!"));

    for i in 0..6 {
        cluster.emit(i % NODES, &s, "news", json!(i)).await;
        cluster.emit(i % NODES, &w, "news", json!(i)).await;
        sse_seen.push(sse.next().await);
        ws_seen.push(ws.next().await);
        sse_expected.push(news(i));
        ws_expected.push(news(i));
    }
    // Replies the clients saw: over the socket, and over a POST through another node.
    ws.send(&message("one")).await;
    ws.send(&message("two")).await;
    ws_seen.push(ws.next().await);
    ws_seen.push(ws.next().await);
    ws_expected.extend([reply.clone(), reply.clone()]);
    assert_eq!(cluster.post_json(2, &s, &message("three")).await.0, 202);
    sse_seen.push(sse.next().await);
    sse_expected.push(reply.clone());
    // Acknowledged through every node, the victim included, and not waited for.
    for i in 6..12 {
        cluster.emit(i % NODES, &s, "news", json!(i)).await;
        cluster.emit(i % NODES, &w, "news", json!(i)).await;
        sse_expected.push(news(i));
        ws_expected.push(news(i));
    }

    cluster.kill9(VICTIM);
    // Whatever the old transports still handed over before the cut counts as seen.
    while let Some(event) = sse.next_unless_cut().await {
        sse_seen.push(event);
    }
    while let Some(event) = ws_next_unless_closed(&mut ws).await {
        ws_seen.push(event);
    }

    for (node, via, sid, seen, expected) in [(2, Via::Sse, &s, &mut sse_seen, &sse_expected), (0, Via::Ws, &w, &mut ws_seen, &ws_expected)] {
        let cursor = seen.last().unwrap().id.clone();
        let (mut link, hello) = cluster.attach(node, via, Some(sid), Some(&cursor)).await;
        assert_eq!((hello.event.as_str(), hello.data["sid"].as_str(), &hello.data["resumed"]), ("session", Some(sid.as_str()), &json!(true)), "{hello:?}");
        while seen.len() < expected.len() {
            seen.push(link.next(&cluster).await);
        }
        assert_eq!(&pairs(seen), expected, "{via:?}: what arrived before the kill and after the resume on node {node}");
        cluster.emit(node, sid, "sentinel", json!(via == Via::Sse)).await;
        let next = link.next(&cluster).await;
        assert!(is_event(&next, "sentinel", &json!(via == Via::Sse)), "{via:?}: nothing more after the acknowledged events: {next:?}");
        if via == Via::Sse {
            // The killed node, back, takes sends for the session held on node 2.
            cluster.restart(VICTIM).await;
            assert_eq!(cluster.post_json(VICTIM, sid, &message("back")).await.0, 202);
            let next = link.next(&cluster).await;
            assert!(is_event(&next, "response", &json!("Message received!")), "{next:?}");
        }
    }
}

/// What one client of the rolling restart saw, shared with the test while it runs.
#[derive(Default)]
struct Follow {
    sid: String,
    /// The `tick` numbers received, in arrival order, across all its transports.
    ticks: Vec<u64>,
    /// The node (`host:port`) its transport is on now; `None` between transports.
    on: Option<String>,
    /// Transports that ended after a `reconnect` notice.
    reconnects: usize,
    /// Transports that ended without one.
    silent_ends: usize,
    /// Whatever should not have happened (a fresh session, an unexpected event, a bad notice).
    anomalies: Vec<String>,
}

/// A client that holds its session whatever happens: it opens it directly on `first`, then on
/// every end of its transport resumes from its last cursor through the `balancer`, until
/// `stop`.
async fn follow(via: Via, first: String, balancer: String, state: Arc<Mutex<Follow>>, stop: CancellationToken) {
    let http = reqwest::Client::new();
    let mut base = first;
    let mut cursor: Option<String> = None;
    loop {
        let sid = state.lock().unwrap().sid.clone();
        let opened = tokio::select! {
            _ = stop.cancelled() => return,
            opened = open(via, &http, &base, &sid, cursor.as_deref()) => opened,
        };
        let Some((mut link, node)) = opened else {
            // Refused on the way (the balancer found no node, say): a pause, not a wait on anything.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        base.clone_from(&balancer);
        let mut hello_seen = false;
        let mut told_to_reconnect = false;
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                event = async {
                    match &mut link {
                        Link::Sse(sse) => sse.next_unless_cut().await,
                        Link::Ws(ws) => ws_next_unless_closed(ws).await,
                        Link::Poll { .. } => unreachable!("followers hold streams"),
                    }
                } => event,
            };
            let mut seen = state.lock().unwrap();
            let Some(event) = event else {
                seen.on = None;
                if told_to_reconnect {
                    seen.reconnects += 1;
                } else {
                    seen.silent_ends += 1;
                }
                break;
            };
            match event.event.as_str() {
                "session" if !hello_seen => {
                    hello_seen = true;
                    let got = event.data["sid"].as_str().unwrap_or_default().to_owned();
                    if seen.sid.is_empty() {
                        seen.sid = got;
                    } else if got != seen.sid || event.data["resumed"] != true {
                        let anomaly = format!("resuming {} on {node} gave {event:?}", seen.sid);
                        seen.anomalies.push(anomaly);
                    }
                    seen.on = Some(node.clone());
                }
                "tick" => seen.ticks.push(event.data.as_u64().expect("a tick number")),
                "reconnect" if event.data["reason"] == "shutdown" => told_to_reconnect = true,
                _ => seen.anomalies.push(format!("unexpected on {node}: {event:?}")),
            }
            cursor = Some(event.id);
        }
    }
}

/// Opens a follower's transport at `base` (`host:port`); returns it and the node it reached
/// (the balancer's `X-Upstream`, else `base`), or `None` if it was refused.
async fn open(via: Via, http: &reqwest::Client, base: &str, sid: &str, cursor: Option<&str>) -> Option<(Link, String)> {
    let node_of = |headers: &reqwest::header::HeaderMap| {
        headers
            .get("x-upstream")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map_or_else(|| base.to_owned(), |v| v.trim().to_owned())
    };
    match via {
        Via::Sse => {
            let mut request = http.get(format!("http://{base}/sse{}", if sid.is_empty() { String::new() } else { format!("?sid={sid}") }));
            if let Some(cursor) = cursor {
                request = request.header("Last-Event-ID", cursor);
            }
            let response = tokio::time::timeout(WAIT, request.send()).await.ok()?.ok()?;
            if response.status() != 200 {
                return None;
            }
            let node = node_of(response.headers());
            Some((Link::Sse(SseClient::from_response(response)), node))
        }
        Via::Ws => {
            let query = match (sid.is_empty(), cursor) {
                (true, _) => String::new(),
                (false, Some(cursor)) => format!("?sid={sid}&last_event_id={cursor}"),
                (false, None) => format!("?sid={sid}"),
            };
            let (socket, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(format!("ws://{base}/ws{query}"))).await.ok()?.ok()?;
            Some((Link::Ws(Box::new(WsClient { socket })), node_of(response.headers())))
        }
        Via::Poll => unreachable!("followers hold streams"),
    }
}

/// What the publisher of the rolling restart got answered.
#[derive(Default)]
struct Published {
    /// Per client, the tick numbers the API acknowledged.
    acked: Vec<Vec<u64>>,
    /// Emits refused or cut on the way (not acknowledged: they may arrive or not).
    failed: usize,
    anomalies: Vec<String>,
}

/// Emits numbered `tick`s to each session in turn through the `balancer` until `stop`.
async fn publish(balancer: String, sids: Vec<String>, stop: CancellationToken) -> Published {
    let http = reqwest::Client::new();
    let mut published = Published { acked: vec![Vec::new(); sids.len()], ..Published::default() };
    let mut n = 0;
    while !stop.is_cancelled() {
        for (k, sid) in sids.iter().enumerate() {
            let body = json!({"to": {"sid": sid}, "event": "tick", "data": n});
            let answer = async {
                let response = http.post(format!("http://{balancer}/api/emit")).json(&body).send().await.ok()?;
                let status = response.status().as_u16();
                Some((status, response.json::<Value>().await.ok()?))
            };
            match tokio::time::timeout(WAIT, answer).await {
                Ok(Some((200, body))) if body == json!({"delivered": 1}) => published.acked[k].push(n),
                Ok(Some((status @ (200 | 404), body))) => published.anomalies.push(format!("tick {n} to {sid}: {status} {body}")),
                _ => published.failed += 1,
            }
            // Pacing, so that the load is steady rather than all the CPU there is.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        n += 1;
    }
    published
}

/// Point 8: a rolling restart of all three nodes (SIGTERM, then the same arguments again) while
/// six clients (SSE and WebSocket) hold sessions and a publisher emits to them through nginx.
/// Every client of a stopping node gets `reconnect` and resumes on another node through the
/// balancer; no transport ends silently; every acknowledged tick arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_and_repeats_nothing() {
    const CLIENTS: usize = 6;
    let mut cluster = Cluster::start(&["--drain", "5s"]).await;
    let upstreams: Vec<SocketAddr> = (0..NODES).map(|node| cluster.socket_addr(node)).collect();
    let balancer = Proxy::nginx_round_robin(&upstreams).await;
    let lb = format!("127.0.0.1:{}", balancer.port);

    let stop_clients = CancellationToken::new();
    let mut follows = Vec::new();
    let mut followers = Vec::new();
    for k in 0..CLIENTS {
        let via = if k % 2 == 0 { Via::Sse } else { Via::Ws };
        let state = Arc::new(Mutex::new(Follow::default()));
        followers.push(tokio::spawn(follow(via, cluster.addr(k % NODES).to_owned(), lb.clone(), state.clone(), stop_clients.clone())));
        follows.push(state);
    }
    let all = |check: &dyn Fn(&Follow) -> bool| follows.iter().all(|f| check(&f.lock().unwrap()));
    wait_until("every client to hold its session", || std::future::ready(all(&|f| f.on.is_some()))).await;

    let sids: Vec<String> = follows.iter().map(|f| f.lock().unwrap().sid.clone()).collect();
    let stop_publisher = CancellationToken::new();
    let publisher = tokio::spawn(publish(lb.clone(), sids, stop_publisher.clone()));
    wait_until("ticks to reach every client", || std::future::ready(all(&|f| f.ticks.len() >= 3))).await;

    for victim in 0..NODES {
        let victim_addr = cluster.addr(victim).to_owned();
        // The clients on the victim now, and how many reconnects each had so far.
        let on_victim: Vec<(usize, usize)> = follows
            .iter()
            .enumerate()
            .filter_map(|(k, f)| {
                let f = f.lock().unwrap();
                (f.on.as_deref() == Some(victim_addr.as_str())).then_some((k, f.reconnects))
            })
            .collect();
        assert!(!on_victim.is_empty(), "node {victim} holds no client to move: the scenario went wrong");
        let ticks_before: Vec<usize> = follows.iter().map(|f| f.lock().unwrap().ticks.len()).collect();

        cluster.sigterm(victim);
        wait_until(&format!("the clients of node {victim} to be told to reconnect and resume on another node"), || {
            std::future::ready(on_victim.iter().all(|&(k, before)| {
                let f = follows[k].lock().unwrap();
                f.reconnects > before && f.on.as_ref().is_some_and(|on| *on != victim_addr)
            }))
        })
        .await;
        let status = cluster.wait_exit(victim, EXIT).await;
        assert!(status.success(), "node {victim} exited with {status} after SIGTERM");
        cluster.restart(victim).await;
        wait_until(&format!("node {victim} to be healthy again"), || async {
            let (status, body) = cluster.healthz(victim).await;
            status == 200 && body["redis"] == "ok"
        })
        .await;
        wait_until("ticks to keep reaching every client", || {
            std::future::ready(follows.iter().zip(&ticks_before).all(|(f, &before)| f.lock().unwrap().ticks.len() >= before + 3))
        })
        .await;
    }

    stop_publisher.cancel();
    let published = within("the publisher to stop", publisher).await.unwrap();
    wait_until("every acknowledged tick to arrive", || {
        std::future::ready(follows.iter().zip(&published.acked).all(|(f, acked)| {
            let f = f.lock().unwrap();
            acked.last().is_none_or(|last| f.ticks.contains(last))
        }))
    })
    .await;
    stop_clients.cancel();
    for follower in followers {
        within("a client to stop", follower).await.unwrap();
    }

    println!("{} emits not acknowledged during the restarts", published.failed);
    assert!(published.anomalies.is_empty(), "the publish API: {:#?}", published.anomalies);
    for (k, (f, acked)) in follows.iter().zip(&published.acked).enumerate() {
        let f = f.lock().unwrap();
        assert!(f.anomalies.is_empty(), "client {k}: {:#?}", f.anomalies);
        assert_eq!(f.silent_ends, 0, "client {k}: transports that ended without a reconnect notice");
        if let Some(at) = f.ticks.windows(2).position(|w| w[0] >= w[1]) {
            panic!("client {k}: ticks repeated or out of order at {at}: {:?}", &f.ticks[at.saturating_sub(3)..(at + 4).min(f.ticks.len())]);
        }
        let lost: Vec<u64> = acked.iter().copied().filter(|n| f.ticks.binary_search(n).is_err()).collect();
        assert!(lost.is_empty(), "client {k}: acknowledged ticks never delivered: {lost:?}");
        assert!(f.reconnects >= 1, "client {k} was never moved");
    }
}

/// The value of a counter on `/metrics` (summed over its labels), if it is there.
fn metric_total(metrics: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = metrics
        .lines()
        .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{')))
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Point 9: Redis down. Nothing panics or hangs; `/healthz` says 503 `"redis": "unreachable"`;
/// new sessions are refused 503 with `Retry-After` on every transport; attached clients get
/// `reconnect` (reason `redis`) and their transports end; the errors are counted. Redis back
/// on the same port: every node reconnects by itself and serves new sessions again.
#[tokio::test]
async fn redis_down_is_answered_and_redis_back_is_picked_up_by_itself() {
    let mut cluster = Cluster::start(&[]).await;
    for node in 0..NODES {
        let (status, body) = cluster.healthz(node).await;
        assert_eq!((status, &body["redis"]), (200, &json!("ok")), "node {node}: {body}");
    }
    let mut sse = cluster.sse(0, "/sse").await;
    let s = sse.hello().await;
    let mut ws = cluster.ws(1, "/ws").await;
    ws.hello().await;

    cluster.redis().kill();
    let notice = sse.next().await;
    assert_eq!((notice.event.as_str(), &notice.data["reason"]), ("reconnect", &json!("redis")), "{notice:?}");
    assert!(sse.next_unless_cut().await.is_none(), "the SSE stream ends after the notice");
    let notice = ws_next_unless_closed(&mut ws).await;
    assert!(notice.as_ref().is_some_and(|n| n.event == "reconnect" && n.data["reason"] == "redis"), "{notice:?}");
    assert!(ws_next_unless_closed(&mut ws).await.is_none(), "the socket ends after the notice");

    cluster.wait_for_health(503, "unreachable").await;
    // New sessions, over each transport on a different node: refused, with a time to come back.
    let retry_after = |headers: &reqwest::header::HeaderMap| headers.get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let response = no_hang("GET /sse on node 0", cluster.http.get(cluster.url(0, "/sse")).send()).await.unwrap();
    assert_eq!((response.status().as_u16(), retry_after(response.headers()).is_some()), (503, true), "GET /sse: {:?}", response.headers());
    let response = no_hang("GET /poll on node 1", cluster.http.get(cluster.url(1, "/poll")).send()).await.unwrap();
    assert_eq!((response.status().as_u16(), retry_after(response.headers()).is_some()), (503, true), "GET /poll: {:?}", response.headers());
    match no_hang("GET /ws on node 2", tokio_tungstenite::connect_async(cluster.ws_url(2, "/ws"))).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503, "the WebSocket upgrade");
            assert!(retry_after(response.headers()).is_some(), "the WebSocket refusal has a Retry-After: {:?}", response.headers());
        }
        other => panic!("the WebSocket upgrade should be refused 503, got {other:?}"),
    }
    // A send to a session is answered too (what it can be answered is not this test's point).
    no_hang("a POST to a session on node 2", cluster.post_json(2, &s, &message("anyone?"))).await;
    for node in 0..NODES {
        assert!(cluster.is_running(node), "node {node} is still running");
    }
    let metrics = within("/metrics", async { cluster.http.get(cluster.url(0, "/metrics")).send().await.unwrap().text().await.unwrap() }).await;
    let errors = metric_total(&metrics, "switchyard_redis_errors_total");
    assert!(errors.is_some_and(|n| n > 0.0), "switchyard_redis_errors_total counts the failures: {errors:?}");
    assert!(metrics.contains("# TYPE switchyard_redis_command_seconds histogram"), "switchyard_redis_command_seconds is a histogram on /metrics");

    cluster.redis().restart().await;
    cluster.wait_for_health(200, "ok").await;
    for node in 0..NODES {
        let mut sse = cluster.sse(node, "/sse").await;
        let sid = sse.hello().await;
        assert_eq!(cluster.post_json((node + 1) % NODES, &sid, &message("back")).await.0, 202);
        let reply = sse.next().await;
        assert!(is_event(&reply, "response", &json!("Message received!")), "node {node}: {reply:?}");
    }
}

/// Point 9, data lost: Redis restarted empty under the nodes. A client resuming its old sid
/// (from its last cursor, well within the grace period) gets a fresh session and `gap` with
/// reason `expired`, over every transport on every node; the old sid is 404 to a POST.
#[tokio::test]
async fn after_redis_lost_its_data_an_old_sid_resumes_into_a_fresh_session_with_a_gap() {
    // A grace far longer than the test: only the lost data can have ended the sessions.
    let mut cluster = Cluster::start(&["--grace", "60s"]).await;
    let mut olds = Vec::new();
    let (Link::Sse(mut sse), hello) = cluster.attach(0, Via::Sse, None, None).await else { unreachable!() };
    let s = hello_sid(hello, "sse");
    cluster.emit(1, &s, "news", json!(1)).await;
    olds.push((1, Via::Sse, s, sse.next().await.id));
    let (_, hello) = cluster.attach(1, Via::Ws, None, None).await;
    olds.push((2, Via::Ws, hello_sid(hello.clone(), "websocket"), hello.id));
    let (_, hello) = cluster.attach(2, Via::Poll, None, None).await;
    olds.push((0, Via::Poll, hello_sid(hello.clone(), "polling"), hello.id));
    drop(sse);

    cluster.redis().kill();
    cluster.wait_for_health(503, "unreachable").await;
    cluster.redis().restart().await;
    cluster.wait_for_health(200, "ok").await;

    for (node, via, old, cursor) in olds {
        let (mut link, hello) = cluster.attach(node, via, Some(&old), Some(&cursor)).await;
        assert_eq!(hello.event, "session", "{hello:?}");
        let fresh = hello.data["sid"].as_str().expect("sid").to_owned();
        assert!(fresh != old && hello.data["resumed"] == false, "resuming {old} on node {node} over {via:?}: {hello:?}");
        let gap = link.next(&cluster).await;
        assert_eq!((gap.event.as_str(), &gap.data["reason"]), ("gap", &json!("expired")), "{gap:?}");
        assert!(gap.id.starts_with(&fresh), "the gap is the fresh session's: {gap:?}");
        for at in 0..NODES {
            assert_eq!(cluster.post_json(at, &old, &message("old")).await.0, 404, "POST to the lost {old} on node {at}");
        }
        // The fresh session works like any other.
        assert_eq!(cluster.post_json((node + 1) % NODES, &fresh, &message("new")).await.0, 202);
        let reply = link.next(&cluster).await;
        assert!(is_event(&reply, "response", &json!("Message received!")), "{reply:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// The harness itself: these need no cluster-mode server.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_redis_fixture_starts_kills_and_restarts_empty() {
    let mut redis = RedisServer::start().await;
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port));
    assert_eq!(command(redis.port, &["SET", "k", "v"]).await, Ok("OK".to_owned()));
    assert_eq!(command(redis.port, &["GET", "k"]).await, Ok("v".to_owned()));

    redis.kill();
    assert!(!redis.is_running());
    assert!(command(redis.port, &["PING"]).await.is_err(), "nothing answers after the kill");

    redis.restart().await;
    assert!(redis.is_running());
    assert_eq!(command(redis.port, &["PING"]).await, Ok("PONG".to_owned()));
    assert_eq!(command(redis.port, &["GET", "k"]).await, Ok("(nil)".to_owned()), "nothing was saved, so nothing came back");
    assert_eq!(command(redis.port, &["DBSIZE"]).await, Ok("0".to_owned()));
}

#[tokio::test]
async fn the_redis_cluster_fixture_covers_every_slot_with_three_masters() {
    let cluster = RedisCluster::start().await;
    let urls: Vec<String> = cluster.nodes.iter().map(RedisServer::url).collect();
    assert_eq!(cluster.seed_url(), urls.join(","));
    assert_eq!(urls.len(), 3);
    for node in &cluster.nodes {
        let info = command(node.port, &["CLUSTER", "INFO"]).await.unwrap();
        for line in ["cluster_state:ok", "cluster_slots_assigned:16384", "cluster_known_nodes:3", "cluster_size:3"] {
            assert!(info.lines().any(|l| l.trim() == line), "node {}: {line} missing from\n{info}", node.port);
        }
    }
    // A key is served by exactly one master; the others redirect.
    let mut owners = 0;
    for node in &cluster.nodes {
        match command(node.port, &["SET", "{switchyard}k", "v"]).await {
            Ok(reply) => {
                assert_eq!(reply, "OK");
                owners += 1;
            }
            Err(err) => assert!(err.starts_with("MOVED "), "node {}: {err}", node.port),
        }
    }
    assert_eq!(owners, 1);
}

/// Three tiny upstreams behind [`Proxy::nginx_round_robin`]: requests spread over all of them
/// with no affinity, a dead one is skipped, streams are not buffered, WebSocket upgrades pass.
#[tokio::test]
async fn the_round_robin_balancer_spreads_requests_skips_a_dead_node_and_passes_streams() {
    use axum::extract::ws::WebSocketUpgrade;
    use axum::routing::get;

    let mut servers = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..NODES {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new()
            .route("/who", get(move || async move { addr.to_string() }))
            .route(
                "/stream",
                get(|| async {
                    let first = futures_util::stream::once(async { Ok::<_, std::convert::Infallible>(bytes::Bytes::from_static(b"first\n")) });
                    axum::body::Body::from_stream(first.chain(futures_util::stream::pending()))
                }),
            )
            .route(
                "/ws",
                get(|upgrade: WebSocketUpgrade| async move {
                    upgrade.on_upgrade(|mut socket| async move {
                        while let Some(Ok(message)) = socket.recv().await {
                            if socket.send(message).await.is_err() {
                                break;
                            }
                        }
                    })
                }),
            );
        servers.push(tokio::spawn(async move { axum::serve(listener, router).await.unwrap() }));
        addrs.push(addr);
    }
    let balancer = Proxy::nginx_round_robin(&addrs).await;
    let http = reqwest::Client::new();
    let who = |http: reqwest::Client, url: String| async move {
        let response = within("an answer through the balancer", http.get(url).send()).await.unwrap();
        assert_eq!(response.status(), 200);
        let upstream = response.headers().get("x-upstream").expect("X-Upstream").to_str().unwrap().to_owned();
        let body = response.text().await.unwrap();
        (upstream, body)
    };

    let mut answered = Vec::new();
    for _ in 0..6 {
        let (upstream, body) = who(http.clone(), balancer.url("/who")).await;
        assert_eq!(upstream, body, "X-Upstream names the node that answered");
        answered.push(body);
    }
    let expected: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    assert_eq!(sorted(answered.clone()), sorted(expected.iter().chain(&expected).cloned().collect()), "two each: {answered:?}");

    // One node gone: every request is still answered, by the others.
    servers.remove(0).abort();
    wait_until("the first upstream to refuse connections", || async { tokio::net::TcpStream::connect(addrs[0]).await.is_err() }).await;
    for _ in 0..6 {
        let (upstream, body) = who(http.clone(), balancer.url("/who")).await;
        assert_ne!(body, addrs[0].to_string(), "the dead node is skipped");
        assert!(upstream.ends_with(&body), "{upstream} / {body}");
    }

    // A stream's first bytes pass while it is still open.
    let response = within("the stream's headers", http.get(balancer.url("/stream")).send()).await.unwrap();
    let mut body = response.bytes_stream();
    let first = within("the stream's first bytes, unbuffered", body.next()).await.expect("a chunk").unwrap();
    assert_eq!(&first[..], b"first\n");

    // A WebSocket upgrade passes, both ways.
    let (mut socket, response) = within("a WebSocket through the balancer", tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", balancer.port))).await.unwrap();
    assert!(response.headers().contains_key("x-upstream"), "{:?}", response.headers());
    futures_util::SinkExt::send(&mut socket, Message::text("ping")).await.unwrap();
    let echo = within("the echo", socket.next()).await.unwrap().unwrap();
    assert_eq!(echo, Message::text("ping"));
}

// ---------------------------------------------------------------------------------------------
// The browser: the demo page in real headless Chromium, loaded through nginx round robin in
// front of the three nodes, so that every request of the page (the page itself, the WebSocket
// upgrade, the SSE stream, each POST, each poll) may land on any node.
// ---------------------------------------------------------------------------------------------

use harness::browser::{Browser, PAGE_WAIT};

/// One Chromium at a time: each scenario has its own chromedriver, Chromium and cluster, and the
/// client's timing-based detection should not compete with another browser for two cores.
static ONE_BROWSER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The demo page's options for these scenarios: quick retries after a drop.
const PAGE_FAST: &str = "backoffMin=100&backoffMax=1000";

/// Messages the page sends before the kill, and in all.
const BEFORE_KILL: usize = 20;
const IN_ALL: usize = 40;

/// How many transports of a kind a node has open, from its `/metrics`
/// (`switchyard_transports_open{transport="..."}`; absent until the first one opened).
async fn transports_open(cluster: &Cluster, node: usize, transport: &str) -> u64 {
    let metrics = within("/metrics", async { cluster.http.get(cluster.url(node, "/metrics")).send().await.unwrap().text().await.unwrap() }).await;
    let name = format!("switchyard_transports_open{{transport=\"{transport}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&name))
        .map_or(0, |value| value.trim().parse::<f64>().unwrap_or_else(|_| panic!("node {node}: `{name}{value}`")) as u64)
}

/// The node holding the page's transport: of the `nodes` asked, the one whose `/metrics` shows
/// one `transport` open, the others none (the page is the only client of its kind). A node
/// answers the same about a session whoever holds it; only its own gauges tell that it is it.
async fn holder(cluster: &Cluster, nodes: &[usize], transport: &str) -> usize {
    let found = std::cell::Cell::new(None);
    wait_until(&format!("exactly one of nodes {nodes:?} to hold a {transport} transport"), || async {
        let mut holding = Vec::new();
        for &node in nodes {
            match transports_open(cluster, node, transport).await {
                0 => {}
                1 => holding.push(node),
                n => panic!("node {node} has {n} {transport} transports open: only the page should"),
            }
        }
        found.set((holding.len() == 1).then(|| holding[0]));
        holding.len() == 1
    })
    .await;
    found.get().expect("a holder")
}

/// The upstream (`host:port`) that finally answered each access-log line containing `pattern`
/// (nginx lists every node it tried, the last one answering).
fn upstreams_of(log: &str, pattern: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains(pattern))
        .map(|line| {
            let tried = line.rsplit_once("upstream=").unwrap_or_else(|| panic!("no upstream= in `{line}`")).1;
            tried.rsplit(", ").next().unwrap().trim().to_owned()
        })
        .collect()
}

/// A session in the page's chat room, held by the test over plain polls (each on any live node
/// it is told), that sees every `message` the page's session sends as `chat`, in the order the
/// cluster handled them: the per-message numbering the identical replies do not have.
struct Observer {
    sid: String,
    cursor: String,
    /// The chat lines from the page (`message N`), in arrival order.
    lines: Vec<String>,
}

impl Observer {
    async fn join(cluster: &Cluster, node: usize, room: &str) -> Observer {
        let (status, events) = cluster.poll(node, "").await;
        assert_eq!(status, 200, "the observer's first poll");
        let cursor = events[0].id.clone();
        let sid = hello_sid(events[0].clone(), "polling");
        let (status, body) = cluster.api(node, "POST", &format!("/rooms/{room}/members"), Some(json!({"sid": sid}))).await;
        assert_eq!((status, body), (200, json!({"room": room, "sid": sid, "joined": true})));
        Observer { sid, cursor, lines: Vec::new() }
    }

    /// Polls `node` until `n` lines from the page's session `from` (its sid) have come.
    async fn read_until(&mut self, cluster: &Cluster, node: usize, from: &str, n: usize) -> &[String] {
        let deadline = Instant::now() + WAIT;
        while self.lines.len() < n {
            assert!(Instant::now() < deadline, "the observer got {} of {n} chat lines within {WAIT:?}: {:?}", self.lines.len(), self.lines);
            let (status, events) = cluster.poll(node, &format!("?sid={}&last_event_id={}", self.sid, self.cursor)).await;
            assert_eq!(status, 200, "the observer's poll on node {node}");
            for event in events {
                match event.event.as_str() {
                    "chat" => {
                        assert_eq!(event.data["from"], json!(&from[..6]), "only the page talks in the room: {event:?}");
                        self.lines.push(event.data["text"].as_str().expect("a chat line").to_owned());
                    }
                    "session" => {}
                    _ => panic!("the observer got {event:?}"),
                }
                self.cursor = event.id;
            }
        }
        &self.lines
    }
}

/// `message from..=to`, as the page sends them.
fn lines(from: usize, to: usize) -> Vec<String> {
    (from..=to).map(|i| format!("message {i}")).collect()
}

/// The page's session, as the page shows it and every node knows it, and the number of its
/// last event as `node` tells (`last_cursor` of `GET /api/sessions/{sid}`).
async fn page_session(cluster: &Cluster, node: usize, b: &Browser) -> (String, u64) {
    let sid = b.eval("return window.__switchyard.id;").await.as_str().expect("the page has a sid").to_owned();
    let (status, info) = cluster.api(node, "GET", &format!("/sessions/{sid}"), None).await;
    assert_eq!(status, 200, "the page's session on node {node}: {info}");
    let last = info["last_cursor"].as_str().expect("last_cursor");
    (sid, seq(last))
}

/// The demo page through nginx round robin in front of three nodes, on `transport` (`None`: the
/// page's default, WebSocket): 20 messages typed and sent, each reply once and in order; then,
/// while 20 more are on their way (5 typed, 5 clicked in a burst, 10 typed after the kill), the
/// node holding the page's transport is killed (SIGKILL), and the page, resuming by itself
/// through nginx on the nodes left, gets every reply once, in order, and the room (an
/// [`Observer`]) every message in order (see below for the one repeat a kill may cause).
async fn the_page_through_round_robin_nginx(transport: Option<&str>) {
    let _turn = ONE_BROWSER_AT_A_TIME.lock().await;
    let name = transport.unwrap_or("websocket");
    // Short keep-alives and polls so a dead path shows quickly; a grace longer than the test, as
    // the observer's session is between polls most of the time.
    let mut cluster = Cluster::start(&["--grace", "60s", "--keepalive", "1s", "--poll-timeout", "5s"]).await;
    let upstreams: Vec<SocketAddr> = (0..NODES).map(|node| cluster.socket_addr(node)).collect();
    let nginx = Proxy::nginx_round_robin(&upstreams).await;
    let mut observer = Observer::join(&cluster, 0, "lobby").await;
    let browser = Browser::start(None).await;
    let b = &browser;
    let started = Instant::now();
    let outcome = browser
        .check(&format!("cluster-{name}"), async {
            let query = transport.map_or_else(String::new, |t| format!("transport={t}&"));
            b.goto(&nginx.url(&format!("/?{query}{PAGE_FAST}"))).await;
            b.wait_transport(name, PAGE_WAIT).await;
            let stream_node = holder(&cluster, &[0, 1, 2], name).await;

            // 20 messages, each reply waited for.
            b.send_range(1, BEFORE_KILL, true).await;
            let (sid, last) = page_session(&cluster, 0, b).await;
            b.assert_every_event_once(last, &[], BEFORE_KILL).await;
            assert_eq!(observer.read_until(&cluster, 1, &sid, BEFORE_KILL).await, lines(1, BEFORE_KILL), "the messages, as the cluster handled them");
            assert_eq!(b.transport_log().await.len(), 1, "the page stayed on {name}: {:?}", b.transport_log().await);

            // Where the page's requests went: the log has a line for each once it is answered.
            let log = nginx.access_log();
            let posts = upstreams_of(&log, &format!("\"POST /sse?sid={sid} "));
            match name {
                "websocket" => assert!(posts.is_empty(), "the messages went over the socket, not POSTs: {posts:?}"),
                "sse" => {
                    // The stream is on one node; its messages went to any.
                    let mut at = posts.clone();
                    at.sort();
                    at.dedup();
                    assert!(at.len() >= 2, "the POSTs of {sid} reached one node only: {posts:?}\n{log}");
                    let stream = cluster.addr(stream_node);
                    assert!(at.iter().any(|a| a != stream), "every POST of {sid} went to the stream's node {stream}: {posts:?}");
                }
                _ => {
                    let mut polls = upstreams_of(&log, &format!("\"GET /poll?sid={sid}&"));
                    assert!(polls.len() >= BEFORE_KILL, "a poll answered each reply: {polls:?}");
                    polls.extend(posts);
                    polls.sort();
                    polls.dedup();
                    assert_eq!(polls.len(), NODES, "the polls and POSTs of {sid} reached every node: {polls:?}");
                }
            }

            // The node holding the transport killed while messages are on their way: a few typed,
            // then a burst clicked at once (as a person pressing Enter again and again), the kill
            // right behind it, and the rest typed while the page is cut off and resuming.
            let log_before = nginx.access_log().lines().count();
            b.send_range(BEFORE_KILL + 1, BEFORE_KILL + 5, false).await;
            let victim = holder(&cluster, &[0, 1, 2], name).await;
            let burst = (BEFORE_KILL + 6, BEFORE_KILL + 10);
            let sent = b
                .eval(&format!(
                    "const input = document.getElementById('message'), send = document.getElementById('send');
                     for (let i = {}; i <= {}; i++) {{ input.value = 'message ' + i; send.click(); }}
                     return window.__switchyard._sendSeq;",
                    burst.0, burst.1
                ))
                .await;
            let killed_at = Instant::now();
            cluster.nodes[victim].binary.0.kill().expect("SIGKILL"); // at once: `kill9` spawns kill(1)
            cluster.kill9(victim);
            // The page's sends are numbered from its `join` on: `message N` is send N + 1.
            assert_eq!(sent, json!(burst.1 + 1), "the burst was sent");
            b.send_range(burst.1 + 1, IN_ALL, false).await;
            let live: Vec<usize> = (0..NODES).filter(|&node| node != victim).collect();
            println!("{name}: killed node {victim} (the transport's node before: {stream_node}) right after the burst");

            b.wait_responses(IN_ALL).await;
            b.wait_transport(name, PAGE_WAIT).await;
            println!("{name}: every reply {:?} after the kill began", killed_at.elapsed());
            let (_, last) = page_session(&cluster, live[0], b).await;
            b.assert_every_event_once(last, &[], IN_ALL).await;
            assert_eq!(b.eval("return window.__switchyard.id;").await, json!(sid), "the same session throughout");
            assert_eq!(b.transport_log().await.len(), 1, "the page stayed on {name}: {:?}", b.transport_log().await);

            // Each message handled once, in order, never twice: the seed's handler emits the
            // reply (which records the message as handled) before the room's `chat`, so a node
            // killed between the two has the resend skipped. Its chat line is then never sent:
            // the one message being handled at the kill may be missing from the room (it was
            // never acknowledged to anyone), none may come twice.
            let got = observer.read_until(&cluster, live[0], &sid, IN_ALL - 1).await.to_vec();
            let all = lines(1, IN_ALL);
            assert!(got.windows(2).all(|w| all.iter().position(|l| *l == w[0]) < all.iter().position(|l| *l == w[1])),
                    "the room's lines, each once and in order: {got:?}");
            assert!(got.iter().all(|l| all.contains(l)), "only the page's messages: {got:?}");
            assert!(got.len() >= IN_ALL - 1, "at most the message in flight at the kill is missing: {got:?}");
            if got.len() < IN_ALL {
                println!("{name}: the room missed the message in flight at the kill: {got:?}");
            }

            // nginx's view: the page's long-lived request (logged once it ends) went through the
            // killed node: the socket or the stream ended there; polls went through every node,
            // and a poll waiting on it is passed on to another by nginx (`upstream=A, B`). The
            // page now holds its transport on another node.
            let victim_addr = cluster.addr(victim).to_owned();
            let request = match name {
                "websocket" => "\"GET /ws?",
                "sse" => "\"GET /sse",
                _ => "\"GET /poll?",
            };
            let log = nginx.wait_for_log_line(&format!("a {request}\" request through node {victim}"), |line| {
                line.contains(request) && line.contains(&format!("upstream={victim_addr}"))
            })
            .await;
            if name != "polling" {
                assert_eq!(stream_node, victim, "the page's {name} transport never moved before the kill");
                let reconnects = b.events_named("reconnect").await;
                assert_eq!(reconnects.len(), 1, "one resume after the kill: {reconnects:?}");
                assert_eq!(reconnects[0].1["resumed"], json!(true));
                let now = holder(&cluster, &live, name).await;
                println!("{name}: resumed on node {now}");
            }
            let posts = upstreams_of(&log, &format!("\"POST /sse?sid={sid} "));
            println!("{name}: POSTs by node {:?}", (0..NODES).map(|n| posts.iter().filter(|a| *a == cluster.addr(n)).count()).collect::<Vec<_>>());
            let after: Vec<&str> = log.lines().skip(log_before).filter(|l| l.contains(", ") || !(l.contains(" 202 ") || l.contains(" 200 "))).collect();
            println!("{name}: nginx's answers since message {} that were not a 200 or 202 from the first node tried:\n{}", BEFORE_KILL + 1, after.join("\n"));
            let drops = b.eval("const e = window.__events; const i = e.findIndex(x => x.event === 'disconnect'); \
                return i < 0 ? null : [e.slice(0, i).filter(x => x.event === 'response').length, e[i].data.reason];").await;
            println!("{name}: the page's drop (replies before it, reason): {drops}");
        })
        .await;
    println!("{name}: the scenario took {:?}", started.elapsed());
    browser.finish(outcome).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_through_round_robin_nginx_on_websocket_survives_a_kill9_of_its_node() {
    the_page_through_round_robin_nginx(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_through_round_robin_nginx_on_sse_survives_a_kill9_of_its_stream_node() {
    the_page_through_round_robin_nginx(Some("sse")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_through_round_robin_nginx_on_polling_survives_a_kill9_of_its_node() {
    the_page_through_round_robin_nginx(Some("polling")).await;
}

// ---------------------------------------------------------------------------------------------
// Socket.IO clients through nginx round robin: the real socket.io-client in Node, with no sticky
// sessions, its long-polling requests and its upgrade landing on any node (`tests/client/
// socketio.mjs`, scenario `cluster`).
// ---------------------------------------------------------------------------------------------

/// Longest a Socket.IO scenario may run.
const SIO_LIMIT: Duration = Duration::from_secs(90);

/// Each node's id in the cluster, by index (from its `/healthz`).
async fn node_ids(cluster: &Cluster) -> Vec<String> {
    let mut ids = Vec::new();
    for node in 0..NODES {
        let (status, body) = cluster.healthz(node).await;
        assert_eq!(status, 200, "node {node}'s /healthz: {body}");
        ids.push(body["node"].as_str().expect("a node id").to_owned());
    }
    ids
}

/// The node holding the Engine.IO session `engine` (its sid names the node: `NODE.RANDOM`).
fn engine_holder(ids: &[String], engine: &str) -> usize {
    let (node, _) = engine.split_once('.').unwrap_or_else(|| panic!("the Engine.IO sid {engine} names no node"));
    ids.iter().position(|id| id == node).unwrap_or_else(|| panic!("{engine} names none of the nodes {ids:?}"))
}

/// `switchyard_socketio_forwarded_total` for `request` and `outcome`, summed over the nodes that
/// are `up`.
async fn forwarded(cluster: &Cluster, up: &[usize], request: &str, outcome: &str) -> u64 {
    let mut total = 0;
    for &node in up {
        let metrics = within("/metrics", async { cluster.http.get(cluster.url(node, "/metrics")).send().await.unwrap().text().await.unwrap() }).await;
        total += metrics
            .lines()
            .filter(|line| line.starts_with("switchyard_socketio_forwarded_total{"))
            .filter(|line| line.contains(&format!("request=\"{request}\"")) && line.contains(&format!("outcome=\"{outcome}\"")))
            .map(|line| line.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap() as u64)
            .sum::<u64>();
    }
    total
}

/// Runs the `cluster` scenario through `nginx` on `transports`, with `steps` answering its steps.
async fn socket_io_scenario(nginx: &Proxy, transports: &str, kill_at: usize, steps: impl FnMut(&str) -> String) -> Value {
    let env = [
        ("SWITCHYARD_URL", nginx.url("")),
        ("SCENARIO", "cluster".to_owned()),
        ("TRANSPORTS", transports.to_owned()),
        ("KILL_AT", kill_at.to_string()),
    ];
    harness::node::run_with("socketio.mjs", &env, steps, SIO_LIMIT).await.result
}

/// The 20 replies of a run, each once and in order: 20 recovery offsets, strictly increasing.
fn assert_twenty_replies_once_in_order(out: &Value) {
    let offsets: Vec<u64> = out["offsets"].as_array().unwrap().iter().map(|o| o.as_str().expect("an offset").parse().expect("a number")).collect();
    assert_eq!(offsets.len(), 20, "20 replies: {out}");
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "each reply once, in order: {offsets:?}");
}

/// The real socket.io-client through nginx round robin in front of three nodes, with no sticky
/// sessions: polling only, then `io()`'s default (polling, then the upgrade to WebSocket). Each
/// sends 20 messages and gets 20 replies, each once and in order, while its requests land on
/// every node and those that miss the Engine.IO session's node are passed to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_clients_through_round_robin_nginx_need_no_sticky_sessions() {
    let _turn = ONE_BROWSER_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(&[]).await;
    let upstreams: Vec<SocketAddr> = (0..NODES).map(|node| cluster.socket_addr(node)).collect();
    let nginx = Proxy::nginx_round_robin(&upstreams).await;
    let ids = node_ids(&cluster).await;
    let all: Vec<usize> = (0..NODES).collect();
    // Polling only once; the default until a client's upgrade went through a node other than
    // its session's (round robin makes that likely on the first try; at most four).
    let mut upgraded_elsewhere = false;
    for (transports, transport) in [("polling", "polling"), ("polling,websocket", "websocket"), ("polling,websocket", "websocket"), ("polling,websocket", "websocket"), ("polling,websocket", "websocket")] {
        if upgraded_elsewhere {
            break;
        }
        let upgrades_before = forwarded(&cluster, &all, "upgrade", "ok").await;
        let out = socket_io_scenario(&nginx, transports, 0, |step| panic!("unexpected step {step}")).await;
        assert_twenty_replies_once_in_order(&out);
        assert_eq!(out["transport"], transport, "{out}");
        assert_eq!(out["connects"].as_array().unwrap().len(), 1, "no reconnect: {out}");
        let engine = out["engines"][0].as_str().unwrap();
        let holder = engine_holder(&ids, engine);
        // nginx logs a request once it has ended, the WebSocket when the client closed it.
        let log = if transport == "websocket" {
            let websocket = format!("transport=websocket&sid={engine}");
            nginx.wait_for_log_line(&format!("the WebSocket of {engine}"), |line| line.contains(&websocket)).await
        } else {
            nginx.access_log()
        };
        let mut reached = upstreams_of(&log, &format!("sid={engine}"));
        reached.sort();
        reached.dedup();
        assert!(reached.len() >= 2, "{transports}: the requests of {engine} reached one node only: {reached:?}\n{log}");
        let websockets = upstreams_of(&log, &format!("transport=websocket&sid={engine}"));
        println!("{transports}: session on node {holder}, requests through {reached:?}, WebSocket through {websockets:?}");
        if transport == "websocket" {
            assert_eq!(websockets.len(), 1, "one upgrade: {log}");
            if websockets[0] != cluster.addr(holder) {
                assert_eq!(forwarded(&cluster, &all, "upgrade", "ok").await, upgrades_before + 1, "the upgrade was passed to node {holder}");
                upgraded_elsewhere = true;
            }
        }
    }
    assert!(upgraded_elsewhere, "in four tries, no upgrade reached a node other than its session's");
    let polls = forwarded(&cluster, &all, "poll", "ok").await;
    let posts = forwarded(&cluster, &all, "post", "ok").await;
    println!("forwarded: {polls} polls, {posts} posts, {} upgrades", forwarded(&cluster, &all, "upgrade", "ok").await);
    assert!(polls > 0 && posts > 0, "polls and posts were passed to the session's node: {polls} polls, {posts} posts");
    engine_io_requests_reach_the_sessions_node_once(&mut cluster, &ids).await;
}

/// Raw Engine.IO requests for a session of node 0 sent to the others: passed on (a POST, a poll
/// answered with what node 0 queued), once only (a request marked as passed on already is not
/// passed again: `Session ID unknown`), with the CORS headers of one node; a sid naming no live
/// node is unknown. Then node 2 shuts down while a poll it passed on waits at node 0: the poll
/// is answered `6` (noop) at once, and the session goes on through node 1.
async fn engine_io_requests_reach_the_sessions_node_once(cluster: &mut Cluster, ids: &[String]) {
    let http = cluster.http.clone();
    let addrs: Vec<String> = (0..NODES).map(|node| cluster.addr(node).to_owned()).collect();
    let eio = |node: usize, sid: &str| format!("http://{}/socket.io/?EIO=4&transport=polling&sid={sid}", addrs[node]);
    let open = within("the handshake", http.get(cluster.url(0, "/socket.io/?EIO=4&transport=polling")).send()).await.unwrap();
    let open = open.text().await.unwrap();
    let handshake: Value = serde_json::from_str(open.strip_prefix('0').expect("an open packet")).unwrap();
    let sid = handshake["sid"].as_str().unwrap().to_owned();
    assert_eq!(engine_holder(ids, &sid), 0, "the sid names node 0");

    let posted = within("a POST through node 1", http.post(eio(1, &sid)).body("40").send()).await.unwrap();
    assert_eq!(posted.status(), 200);
    assert_eq!(posted.text().await.unwrap(), "ok");
    // A cross-origin request (loopback origins are allowed): one node's CORS headers.
    let polled = within("a poll through node 2", http.get(eio(2, &sid)).header("origin", "http://localhost:5173").send()).await.unwrap();
    assert_eq!(polled.status(), 200);
    let allow: Vec<_> = polled.headers().get_all("access-control-allow-origin").iter().collect();
    assert_eq!(allow, ["http://localhost:5173"], "one Access-Control-Allow-Origin");
    let body = polled.text().await.unwrap();
    assert!(body.starts_with("40{"), "the CONNECT answer node 0 queued: {body}");

    let error = |response: reqwest::Response| async move { (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null)) };
    let unknown = (400, json!({"code": 1, "message": "Session ID unknown"}));
    let marked = http.get(eio(1, &sid)).header("x-switchyard-forwarded", &ids[2]);
    assert_eq!(error(within("a marked poll", marked.send()).await.unwrap()).await, unknown, "a request passed on once is not passed again");
    let nowhere = format!("0123456789abcdef.{UNKNOWN_SID}");
    assert_eq!(error(within("a poll for no node", http.get(eio(1, &nowhere)).send()).await.unwrap()).await, unknown);
    assert_eq!(error(within("a poll for no node", http.get(eio(1, UNKNOWN_SID)).send()).await.unwrap()).await, unknown);

    let waiting = tokio::spawn(http.get(eio(2, &sid)).send());
    wait_until("node 2 to have a poll waiting at node 0", || async {
        let metrics = within("/metrics", async { http.get(cluster.url(2, "/metrics")).send().await.unwrap().text().await.unwrap() }).await;
        metrics.lines().any(|line| line == "switchyard_socketio_forwarding 1")
    })
    .await;
    cluster.sigterm(2);
    let answer = within("the waiting poll's answer", waiting).await.unwrap().expect("an answer from node 2");
    assert_eq!((answer.status().as_u16(), answer.text().await.unwrap()), (200, "6".to_owned()), "a noop: poll again");
    cluster.wait_exit(2, EXIT).await;
    let posted = within("a POST through node 1", http.post(eio(1, &sid)).body(r#"42["message","after"]"#).send()).await.unwrap();
    assert_eq!(posted.status(), 200, "the session lives on");
    let polled = within("a poll through node 1", http.get(eio(1, &sid)).send()).await.unwrap().text().await.unwrap();
    assert!(polled.starts_with(r#"42["response","Message received!""#), "the reply, through node 1: {polled}");
}

/// The node holding a Socket.IO client's Engine.IO session killed (SIGKILL) after 10 of its 20
/// messages, on long-polling, then (on the two nodes left) on `io()`'s default, upgraded to
/// WebSocket: the client's next request, on whichever node, is answered `Session ID unknown` (or
/// its WebSocket breaks); it reconnects through nginx, recovers its session on a live node (an
/// event emitted while it was away arrives once), and gets the other 10 replies, every reply once
/// and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_client_recovers_when_the_node_of_its_engine_io_session_is_killed() {
    let _turn = ONE_BROWSER_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(&["--grace", "30s"]).await;
    let upstreams: Vec<SocketAddr> = (0..NODES).map(|node| cluster.socket_addr(node)).collect();
    let nginx = Proxy::nginx_round_robin(&upstreams).await;
    let ids = node_ids(&cluster).await;
    let mut killed = Vec::new();
    for (transports, transport) in [("polling", "polling"), ("polling,websocket", "websocket")] {
        let mut victim = None;
        let out = socket_io_scenario(&nginx, transports, 10, |step| {
            let engine = step.strip_prefix("kill:").unwrap_or_else(|| panic!("unexpected step {step}"));
            let node = engine_holder(&ids, engine);
            cluster.nodes[node].binary.0.kill().expect("SIGKILL");
            cluster.kill9(node);
            victim = Some(node);
            "done".to_owned()
        })
        .await;
        let victim = victim.expect("the scenario asked for the kill");
        killed.push(victim);
        assert_twenty_replies_once_in_order(&out);
        assert_eq!(out["transport"], transport, "{out}");
        assert_eq!(out["notices"], json!(["while away"]), "the event emitted while away, once: {out}");
        let connects = out["connects"].as_array().unwrap();
        assert_eq!(connects.len(), 2, "one reconnect: {out}");
        assert_eq!(connects[1]["recovered"], true, "the reconnect recovered the session: {out}");
        let second = engine_holder(&ids, connects[1]["engine"].as_str().unwrap());
        assert!(!killed.contains(&second), "the new Engine.IO session is on a live node: {second}, killed {killed:?}");
        let live: Vec<usize> = (0..NODES).filter(|n| !killed.contains(n)).collect();
        let mut unknown = 0;
        for request in ["poll", "post", "upgrade"] {
            unknown += forwarded(&cluster, &live, request, "unreachable").await + forwarded(&cluster, &live, request, "gone").await;
        }
        println!("{transports}: killed node {victim}; the client came back on node {second}; {unknown} requests for the dead nodes' sessions answered `Session ID unknown` so far");
    }
}

// ---------------------------------------------------------------------------------------------
// Chaos across the nodes: tests/chaos.rs's clients with every request sent to a random node,
// while a node is killed and started again.
// ---------------------------------------------------------------------------------------------

/// The delivery guarantee of cluster mode under chaos (issue 14), tests/chaos.rs across nodes.
///
/// `CLUSTER_CHAOS_CLIENTS` clients (default 100) run for `CLUSTER_CHAOS_SECONDS` (default 8)
/// against three nodes on one Redis (`--buffer 65536`, so the buffer holds a whole run and no
/// loss is legitimate). Each client holds its session over a WebSocket, an SSE stream or
/// long-polls, picked at random, and drops it without a word after 50..350 ms to resume on
/// another from the last cursor it saw (SSE: by `sid` and `last_event_id`, by `Last-Event-ID`
/// beside the sid, or by that header alone). **Every request goes to a random node**: each
/// attach, each POST, each poll. All the while it sends numbered `message` events (`seq` 1, 2,
/// ...: text frames on a WebSocket, POSTs beside SSE and polling), and on every new transport
/// first sends again whatever the server has not confirmed (by the hello's `received` or a
/// POST's `202`); a pusher publishes numbered `push` events to random sessions through the
/// publish API of random nodes. 30 % of the way in, one node is killed (SIGKILL) and, a
/// second later, started again on its port. A request to a node that is down fails: the client
/// (or the pusher) sends it to another node, as a balancer would.
///
/// The default app answers each `message` with `response` "Message received!". At the end every
/// client resumes once more and reads up to the newest event of its session. Then, for every
/// client, against its session's full history as the cluster holds it (a resume from `SID.0~`):
/// its log is exactly that history (0 lost, 0 duplicated, 0 out of order), the history holds one
/// `response` per message sent and its hello's `received` is the last `seq` sent (each handled
/// exactly once), its pushes appear once each in the order published (an emit cut by the kill,
/// unacknowledged, may be there or not), and there was no `gap` and no fresh session.
/// `CLUSTER_CHAOS_SEED` replays a run's random choices (the timing is the machine's).
mod chaos {
    use std::fmt::Write as _;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use eventsource_stream::Eventsource;
    use futures_util::{SinkExt, Stream};
    use tokio::net::TcpStream;
    use tokio::time::{sleep, sleep_until, timeout, Instant};
    use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

    use super::*;

    /// The transports a client picks from, in the order of the counts per transport.
    const KINDS: [Via; 3] = [Via::Ws, Via::Sse, Via::Poll];

    /// Longest the final catch-up of one client may take.
    const SETTLE: Duration = Duration::from_secs(20);

    fn env_or(name: &str, default: u64) -> u64 {
        match std::env::var(name) {
            Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
            Err(_) => default,
        }
    }

    fn kind_name(kind: usize) -> &'static str {
        ["websocket", "sse", "polling"][kind]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_client_gets_every_event_once_and_in_order_with_requests_on_random_nodes_and_a_node_killed() {
        let clients = env_or("CLUSTER_CHAOS_CLIENTS", 100) as usize;
        let seconds = env_or("CLUSTER_CHAOS_SECONDS", 8);
        let seed = env_or("CLUSTER_CHAOS_SEED", u64::from(rand::random::<u32>()));
        assert!(clients > 0, "CLUSTER_CHAOS_CLIENTS=0: nothing to test");
        println!("cluster chaos: {clients} clients for {seconds} s on {NODES} nodes, CLUSTER_CHAOS_SEED={seed}");

        // The buffer holds a whole run; a poll waits at most 2 s, so that a poll nobody waits
        // for holds a session briefly; the grace period outlasts the check at the end, which
        // reads the sessions after their clients let go of them.
        let mut cluster = Cluster::start(&["--buffer", "65536", "--poll-timeout", "2s", "--grace", "30s"]).await;
        let net = Arc::new(Net { addrs: (0..NODES).map(|node| cluster.addr(node).to_owned()).collect(), http: reqwest::Client::new() });
        let start = Instant::now();
        let shared = Arc::new(Shared {
            start,
            sids: Mutex::new(vec![None; clients]),
            pushes_done: CancellationToken::new(),
            restarted: AtomicBool::new(false),
            after_restart: (0..NODES).map(|_| AtomicU64::new(0)).collect(),
        });
        let deadline = start + Duration::from_secs(seconds);
        let pusher = tokio::spawn(push(net.clone(), shared.clone(), deadline, seed));
        let tasks: Vec<_> = (0..clients).map(|id| tokio::spawn(Client::new(id, net.clone(), shared.clone(), seed).run(deadline))).collect();

        // The kill: one node, SIGKILL, 30 % into the run; the node stays down for a second (the
        // pause is the scenario), then starts again with the same arguments on the same port.
        let victim = StdRng::seed_from_u64(seed ^ 0x6b69_6c6c).random_range(0..NODES);
        sleep_until(start + Duration::from_secs(seconds) * 3 / 10).await;
        let killed = Instant::now();
        cluster.kill9(victim);
        let killed_at = killed - start;
        sleep(Duration::from_secs(1)).await;
        let restarting_at = start.elapsed();
        cluster.restart(victim).await;
        let restarted = Instant::now();
        let restarted_at = restarted - start;
        shared.restarted.store(true, Ordering::SeqCst);
        assert_eq!(cluster.addr(victim), net.addrs[victim], "node {victim} came back on its port");

        sleep_until(deadline).await;
        // Its last emits may each take up to WAIT (and say so if they do).
        let pushed = timeout(2 * WAIT, pusher).await.expect("the pusher to stop after the deadline").expect("the pusher panicked");
        let mut done = Vec::new();
        for task in tasks {
            // Each client's catch-up is bounded by SETTLE (and says so if it runs out).
            let client = timeout(SETTLE + WAIT, task).await.expect("a client to finish its catch-up");
            done.push(client.expect("a client task panicked"));
        }
        let run_for = start.elapsed();

        // Requests fail only on the node that was killed, while it was down (a connection
        // pooled before the kill may fail a little later): every other node answered everything.
        let stray: Vec<String> = done
            .iter()
            .flat_map(|client| client.failures.iter().map(move |f| (format!("client {}", client.id), *f)))
            .chain(pushed.failures.iter().map(|f| ("the pusher".to_owned(), *f)))
            .filter(|(_, (node, at))| *node != victim || *at < killed || *at > restarted + Duration::from_secs(1))
            .map(|(who, (node, at))| format!("{who}: a request to node {node} refused or cut at {:.3?}", at - start))
            .collect();

        let mut total = Totals::default();
        let mut failures = Vec::new();
        let mut traces = 0;
        let histories: Vec<Option<History>> = futures_util::stream::iter(&done)
            .map(|client| {
                let net = &net;
                async move {
                    match client.sid.as_deref() {
                        Some(sid) => Some(history(net, sid, client.id).await),
                        None => None,
                    }
                }
            })
            .buffered(8)
            .collect()
            .await;
        for (client, history) in done.iter().zip(histories) {
            let (Some(sid), Some(history)) = (client.sid.as_deref(), history) else {
                failures.push(format!("client {}: never got a session; {:?}", client.id, client.anomalies));
                continue;
            };
            let report = client.check(&history, &pushed.acked[client.id], &pushed.unsure[client.id]);
            if !report.clean() {
                let mut failure = format!("client {} ({sid}): {report:#?}{}", client.id, client.explain(&history));
                if traces < 3 {
                    traces += 1;
                    let _ = write!(failure, "\n  its trace:\n    {}", client.trace.join("\n    "));
                }
                failures.push(failure);
            }
            total.add(client, &report);
        }
        total.print(clients, seconds, run_for, &pushed);
        println!("  {} histories read and checked in {:.2?}", done.len(), start.elapsed() - run_for);
        println!(
            "  node {victim} killed (SIGKILL) at {killed_at:.2?}, started again at {restarting_at:.2?}, listening at {restarted_at:.2?}; \
             attaches on it since: {}",
            shared.after_restart[victim].load(Ordering::SeqCst)
        );
        println!("  CLUSTER_CHAOS_SEED={seed}");

        assert!(stray.is_empty(), "requests failed on a node that was up (CLUSTER_CHAOS_SEED={seed}):\n{}", stray.join("\n"));
        assert!(pushed.anomalies.is_empty(), "the publish API (CLUSTER_CHAOS_SEED={seed}): {:#?}", pushed.anomalies);
        assert!(failures.is_empty(), "delivery broken for {} clients (CLUSTER_CHAOS_SEED={seed}):\n{}", failures.len(), failures.join("\n"));
        let per_kind_min = total.attaches.iter().min().copied().unwrap_or(0);
        assert!(
            total.attaches.iter().sum::<u64>() >= clients as u64 * seconds && per_kind_min > 0,
            "too little chaos to prove anything: attaches per transport {:?}",
            total.attaches
        );
        assert!(total.node_down + pushed.node_down > 0, "no request ever found node {victim} down: the kill proved nothing");
        assert!(shared.after_restart[victim].load(Ordering::SeqCst) > 0, "node {victim}, started again, took no attach");
    }

    /// The nodes' addresses (the same across a restart) and one HTTP client for everyone.
    struct Net {
        addrs: Vec<String>,
        http: reqwest::Client,
    }

    impl Net {
        fn url(&self, node: usize, path: &str) -> String {
            format!("http://{}{path}", self.addrs[node])
        }
    }

    /// What the clients, the pusher and the test share.
    struct Shared {
        start: Instant,
        /// Each client's sid once its first hello arrived; the pusher only pushes to those.
        sids: Mutex<Vec<Option<String>>>,
        /// Cancelled once the pusher has had its last emit answered.
        pushes_done: CancellationToken,
        /// Set once the killed node is started again.
        restarted: AtomicBool,
        /// Attaches per node made after that.
        after_restart: Vec<AtomicU64>,
    }

    /// A node other than `avoid` (the one that just failed), else any, at random.
    fn pick(rng: &mut StdRng, avoid: Option<usize>) -> usize {
        match avoid {
            Some(failed) => (failed + rng.random_range(1..NODES)) % NODES,
            None => rng.random_range(0..NODES),
        }
    }

    /// What the pusher published, per client.
    #[derive(Default)]
    struct Pushed {
        /// Push numbers the API acknowledged (`{"delivered": 1}`), in order.
        acked: Vec<Vec<u64>>,
        /// Push numbers whose emit was cut on the way (by the kill): they may be there or not.
        unsure: Vec<Vec<u64>>,
        /// Emits refused because their node was down (sent again to another node).
        node_down: u64,
        /// Each emit refused or cut: its node and when.
        failures: Vec<(usize, Instant)>,
        anomalies: Vec<String>,
    }

    /// Publishes `push` events numbered per session to random sessions through the API of
    /// random nodes until the deadline: a few per client per second. One worker per ten
    /// clients, each pushing to its own clients one emit at a time (answered before the next),
    /// so that a session's pushes are published in number order.
    async fn push(net: Arc<Net>, shared: Arc<Shared>, deadline: Instant, seed: u64) -> Pushed {
        let clients = shared.sids.lock().unwrap().len();
        let workers = clients.div_ceil(10);
        let work = (0..workers).map(|worker| {
            let mine: Vec<usize> = (worker..clients).step_by(workers).collect();
            tokio::spawn(push_to(net.clone(), shared.clone(), mine, deadline, seed.wrapping_add(worker as u64)))
        });
        let mut pushed = Pushed { acked: vec![Vec::new(); clients], unsure: vec![Vec::new(); clients], ..Pushed::default() };
        for (worker, done) in futures_util::future::join_all(work).await.into_iter().enumerate() {
            let done = done.expect("a push worker panicked");
            for (k, id) in (worker..clients).step_by(workers).enumerate() {
                pushed.acked[id].clone_from(&done.acked[k]);
                pushed.unsure[id].clone_from(&done.unsure[k]);
            }
            pushed.node_down += done.node_down;
            pushed.failures.extend(done.failures);
            pushed.anomalies.extend(done.anomalies);
        }
        shared.pushes_done.cancel();
        pushed
    }

    /// One push worker: pushes to the clients `mine` (its `acked` and `unsure` are in that order).
    async fn push_to(net: Arc<Net>, shared: Arc<Shared>, mine: Vec<usize>, deadline: Instant, seed: u64) -> Pushed {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x7075_7368);
        let mut pushed = Pushed { acked: vec![Vec::new(); mine.len()], unsure: vec![Vec::new(); mine.len()], ..Pushed::default() };
        let mut next = vec![0u64; mine.len()];
        while Instant::now() < deadline {
            // The scenario's pace, not a wait: a push every 5..20 ms.
            sleep(Duration::from_millis(rng.random_range(5..20))).await;
            let k = rng.random_range(0..mine.len());
            let id = mine[k];
            let Some(sid) = shared.sids.lock().unwrap()[id].clone() else { continue };
            let n = next[k];
            let body = json!({"to": {"sid": sid}, "event": "push", "data": {"n": n}});
            let mut avoid = None;
            for _ in 0..2 * NODES {
                let node = pick(&mut rng, avoid);
                match outcome(net.http.post(net.url(node, "/api/emit")).json(&body)).await {
                    Outcome::Answered(200, answer) if answer == json!({"delivered": 1}) => pushed.acked[k].push(n),
                    Outcome::NodeDown => {
                        pushed.node_down += 1;
                        pushed.failures.push((node, Instant::now()));
                        avoid = Some(node);
                        continue;
                    }
                    Outcome::Cut(_) => {
                        pushed.failures.push((node, Instant::now()));
                        pushed.unsure[k].push(n);
                    }
                    Outcome::Answered(status, answer) => {
                        pushed.anomalies.push(format!("push {n} to client {id} ({sid}) through node {node}: {status} {answer}"));
                        pushed.unsure[k].push(n);
                    }
                    Outcome::Hung => {
                        pushed.anomalies.push(format!("push {n} to client {id} ({sid}) through node {node}: no answer within {WAIT:?}"));
                        pushed.unsure[k].push(n);
                    }
                }
                next[k] = n + 1;
                break;
            }
        }
        pushed
    }

    /// A session's history as the cluster holds it.
    struct History {
        /// The hello of the resume that read it: `received` is the highest `seq` handled.
        hello: Received,
        /// The session's last event number, by the publish API.
        last: u64,
        /// Its events, by number, name and data.
        events: Vec<(u64, String, Value)>,
    }

    /// Reads a session's whole history by resuming it from its start (`SID.0~`) over SSE on a
    /// node, up to the last event the publish API of another node names.
    async fn history(net: &Net, sid: &str, id: usize) -> History {
        let node = id % NODES;
        let (status, info) = {
            let response = within("the session's info", net.http.get(net.url((node + 1) % NODES, &format!("/api/sessions/{sid}"))).send()).await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null))
        };
        assert_eq!(status, 200, "client {id}'s session {sid} is live: {info}");
        let last = seq(info["last_cursor"].as_str().expect("last_cursor"));
        let request = net.http.get(net.url(node, &format!("/sse?sid={sid}"))).header("Last-Event-ID", format!("{sid}.0~"));
        let response = within("the history's SSE headers", request.send()).await.unwrap();
        assert_eq!(response.status(), 200);
        let mut stream: SseEvents = Box::pin(response.bytes_stream().eventsource());
        let mut next = async || {
            let event = timeout(WAIT, stream.next()).await.ok()??.ok()?;
            Some(Received { data: serde_json::from_str(&event.data).expect("SSE data is JSON"), event: event.event, id: event.id })
        };
        let hello = next().await.unwrap_or_else(|| panic!("client {id}'s history on node {node}: no hello"));
        assert_eq!((hello.event.as_str(), hello.data["sid"].as_str(), &hello.data["resumed"]), ("session", Some(sid), &json!(true)), "{hello:?}");
        let mut events = Vec::new();
        while events.last().is_none_or(|(n, _, _)| *n < last) {
            let Some(event) = next().await else {
                panic!("client {id}'s history on node {node}: {} events read, then nothing, though the API says the last is .{last}", events.len());
            };
            events.push((seq(&event.id), event.event, event.data));
        }
        History { hello, last, events }
    }

    type SseEvents = Pin<Box<dyn Stream<Item = Result<eventsource_stream::Event, eventsource_stream::EventStreamError<reqwest::Error>>> + Send>>;
    type PollAnswer = Pin<Box<dyn Future<Output = Outcome> + Send>>;

    /// How a request went.
    enum Outcome {
        Answered(u16, Value),
        /// Its node refused the connection: it is down. Nothing was sent.
        NodeDown,
        /// Cut on the way (its node was killed): it may or may not have been handled.
        Cut(String),
        /// No answer within [`WAIT`].
        Hung,
    }

    /// Sends a request, waiting at most [`WAIT`] for its answer.
    async fn outcome(request: reqwest::RequestBuilder) -> Outcome {
        let answer = timeout(WAIT, async {
            let response = request.send().await?;
            let status = response.status().as_u16();
            Ok::<_, reqwest::Error>((status, response.json::<Value>().await.unwrap_or(Value::Null)))
        });
        match answer.await {
            Ok(Ok((status, body))) => Outcome::Answered(status, body),
            Ok(Err(err)) if err.is_connect() => Outcome::NodeDown,
            Ok(Err(err)) => Outcome::Cut(err.to_string()),
            Err(_) => Outcome::Hung,
        }
    }

    /// A transport being held.
    enum Link {
        Ws(Box<WebSocketStream<MaybeTlsStream<TcpStream>>>),
        Sse(SseEvents),
        /// The poll in flight and its node, if one is; each poll goes to a random node, from
        /// the last cursor.
        Poll(Option<(usize, PollAnswer)>),
    }

    /// What a transport yielded.
    enum Incoming {
        Events(Vec<Received>),
        /// The transport ended (the server ended it or it was cut): resume on a new one.
        Closed(&'static str),
        /// The poll's node refused the connection: poll another.
        NodeDown(usize),
        /// The poll was cut on the way (its node was killed): resume on a new transport.
        Cut(usize),
        /// Something no correct node answers.
        Wrong(String),
    }

    impl Link {
        /// The next events. Cancel-safe: a poll in flight stays in the link.
        async fn next(&mut self) -> Incoming {
            match self {
                Link::Ws(socket) => loop {
                    match socket.next().await {
                        Some(Ok(Message::Text(text))) => {
                            let envelope = serde_json::from_str(text.as_str()).expect("a WebSocket frame is one JSON envelope");
                            return Incoming::Events(vec![received_from_envelope(envelope)]);
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(Message::Close(Some(frame)))) if u16::from(frame.code) == 4000 => return Incoming::Closed("superseded (4000)"),
                        Some(Ok(Message::Close(_))) => return Incoming::Closed("the server closed the socket"),
                        Some(Ok(other)) => return Incoming::Wrong(format!("a WebSocket frame that is not text: {other:?}")),
                        Some(Err(_)) | None => return Incoming::Closed("the socket was cut"),
                    }
                },
                Link::Sse(events) => match events.next().await {
                    Some(Ok(event)) => Incoming::Events(vec![Received { data: serde_json::from_str(&event.data).expect("SSE data is JSON"), event: event.event, id: event.id }]),
                    Some(Err(_)) => Incoming::Closed("the stream was cut"),
                    None => Incoming::Closed("the stream ended"),
                },
                Link::Poll(pending) => {
                    let Some((node, answer)) = pending else { return std::future::pending().await };
                    let node = *node;
                    let answer = answer.await;
                    *pending = None;
                    match answer {
                        Outcome::Answered(200, Value::Array(items)) => Incoming::Events(items.into_iter().map(received_from_envelope).collect()),
                        Outcome::Answered(409, _) => Incoming::Closed("the poll was superseded (409)"),
                        Outcome::Answered(status, body) => Incoming::Wrong(format!("a poll on node {node} answered {status} {body}")),
                        Outcome::NodeDown => Incoming::NodeDown(node),
                        Outcome::Cut(_) => Incoming::Cut(node),
                        Outcome::Hung => Incoming::Wrong(format!("a poll on node {node} had no answer within {WAIT:?}")),
                    }
                }
            }
        }
    }

    /// Where an event of a client's log came from: the hold (index into the trace's holds) and
    /// the node that sent it.
    #[derive(Clone, Copy)]
    struct Source {
        hold: usize,
        node: usize,
    }

    /// One simulated client: its session, its position, and everything it received.
    struct Client {
        id: usize,
        net: Arc<Net>,
        shared: Arc<Shared>,
        rng: StdRng,
        sid: Option<String>,
        /// The id of the last event or notice received: where the next transport resumes.
        cursor: Option<String>,
        /// Messages `1..=sent` exist: each went out at least once (or was about to).
        sent: u64,
        /// The highest `seq` the server is known to have handled: from a hello's `received` or
        /// a POST's `202`.
        confirmed: u64,
        /// The next message to send again, while it is at most `sent`.
        resend: u64,
        resends: u64,
        /// Messages sent over a WebSocket (first sends only).
        sent_on_ws: u64,
        /// Every event and notice received, in order, and where each came from.
        log: Vec<Received>,
        sources: Vec<Source>,
        /// The highest event number received.
        max_seq: u64,
        /// The session's last event number once nothing more can come (the final catch-up).
        target: Option<u64>,
        /// Whether a transport of the final catch-up read up to it.
        caught_up: bool,
        /// Attaches per transport kind (`KINDS` order), and requests per node.
        attaches: [u64; 3],
        requests: [u64; NODES],
        /// Holds so far (the index of the current one in `sources`), and the node of the current.
        holds: usize,
        node: usize,
        /// Requests refused or cut at once because their node was down (each then sent to another
        /// node).
        node_down: u64,
        /// Each request refused or cut (those above, POSTs and polls cut): its node and when.
        failures: Vec<(usize, Instant)>,
        /// POSTs cut on the way (their node was killed).
        cut_posts: u64,
        /// Transports the server ended: superseded by a late request of ours, a poll's `409`,
        /// or cut by the kill.
        closed_by_server: u64,
        /// Hellos announcing a fresh session after the first: the session was lost.
        fresh_sessions: u64,
        /// POST answers other than `202`, and anything else no correct cluster does.
        anomalies: Vec<String>,
        /// What the client did and saw, for a failure report.
        trace: Vec<String>,
    }

    impl Client {
        fn new(id: usize, net: Arc<Net>, shared: Arc<Shared>, seed: u64) -> Client {
            Client {
                id,
                net,
                shared,
                rng: StdRng::seed_from_u64(seed.wrapping_add(id as u64)),
                sid: None,
                cursor: None,
                sent: 0,
                confirmed: 0,
                resend: 1,
                resends: 0,
                sent_on_ws: 0,
                log: Vec::new(),
                sources: Vec::new(),
                max_seq: 0,
                target: None,
                caught_up: false,
                attaches: [0; 3],
                requests: [0; NODES],
                holds: 0,
                node: 0,
                node_down: 0,
                failures: Vec::new(),
                cut_posts: 0,
                closed_by_server: 0,
                fresh_sessions: 0,
                anomalies: Vec::new(),
                trace: Vec::new(),
            }
        }

        fn note(&mut self, what: String) {
            let at = self.shared.start.elapsed().as_secs_f64();
            self.trace.push(format!("{at:7.3}s {what}"));
        }

        async fn run(mut self, deadline: Instant) -> Client {
            while Instant::now() < deadline {
                let hold = Duration::from_millis(self.rng.random_range(50..350));
                if !self.hold(hold, deadline, true).await {
                    // No node took the attach: a pause before the next try, not a wait on anything.
                    sleep(Duration::from_millis(20)).await;
                }
            }
            // The final catch-up: once the last push is answered, resume (at least once, and as
            // often as it takes) until the server has confirmed every message and the log
            // reaches the newest event.
            if timeout(2 * WAIT, self.shared.pushes_done.cancelled()).await.is_err() {
                self.anomalies.push("the pusher did not stop".to_owned());
            }
            self.note("catching up".to_owned());
            let until = Instant::now() + SETTLE;
            while !self.caught_up {
                if Instant::now() >= until {
                    let what = format!(
                        "not caught up within {SETTLE:?}: {} of {} messages confirmed, read up to .{} of {:?}",
                        self.confirmed, self.sent, self.max_seq, self.target
                    );
                    self.anomalies.push(what);
                    break;
                }
                let hold = Duration::from_millis(self.rng.random_range(50..350));
                if !self.hold(hold, until, false).await {
                    sleep(Duration::from_millis(20)).await;
                }
            }
            self
        }

        /// Whether the client has read up to the newest event of its session (only once the
        /// pusher is done: then, with every message confirmed, nothing more can come).
        async fn complete(&mut self) -> bool {
            let Some(sid) = self.sid.clone() else { return false };
            if self.confirmed < self.sent {
                return false;
            }
            if self.target.is_none() {
                // Every message is handled. A copy of the last one, POSTed, is skipped, but only
                // once it has its turn in the session's inbox, after any handler still running on
                // any node: the number read next is the session's last.
                if self.sent > 0 && !self.barrier(&sid).await {
                    return false;
                }
                let node = pick(&mut self.rng, None);
                match outcome(self.net.http.get(self.net.url(node, &format!("/api/sessions/{sid}")))).await {
                    Outcome::Answered(200, info) => self.target = info["last_cursor"].as_str().map(seq),
                    Outcome::Answered(status, body) => self.anomalies.push(format!("the session's info on node {node}: {status} {body}")),
                    _ => {}
                }
            }
            self.target.is_some_and(|target| self.max_seq >= target)
        }

        /// POSTs a copy of the last message (handled already) to a random node; whether it was
        /// answered `202`.
        async fn barrier(&mut self, sid: &str) -> bool {
            let body = json!({"event": "message", "data": {"n": self.sent}, "seq": self.sent}).to_string();
            let mut avoid = None;
            for _ in 0..2 * NODES {
                let node = pick(&mut self.rng, avoid);
                let request = self.net.http.post(self.net.url(node, &format!("/sse?sid={sid}"))).header("content-type", "application/json").body(body.clone());
                match outcome(request).await {
                    Outcome::Answered(202, _) => return true,
                    Outcome::Answered(status, answer) => {
                        self.anomalies.push(format!("a copy of seq {} POSTed to node {node} answered {status} {answer}", self.sent));
                        return false;
                    }
                    Outcome::Hung => {
                        self.anomalies.push(format!("a copy of seq {} POSTed to node {node}: no answer within {WAIT:?}", self.sent));
                        return false;
                    }
                    Outcome::NodeDown | Outcome::Cut(_) => {
                        self.failed_on(node);
                        avoid = Some(node);
                    }
                }
            }
            false
        }

        /// A request to `node` was refused or cut: its node should be the one killed, then.
        fn failed_on(&mut self, node: usize) {
            self.node_down += 1;
            self.failures.push((node, Instant::now()));
        }

        /// Attaches a random transport on a random node (another if that one is down) and holds
        /// it for `hold` from then, until `limit` at most (then drops it without a word), or
        /// until the server ends it. With `sending`, sends a new message every 5..40 ms;
        /// without, only sends again what is not confirmed, and stops as soon as the log is
        /// complete. `false`: no node took it.
        async fn hold(&mut self, hold: Duration, limit: Instant, sending: bool) -> bool {
            let kind = self.rng.random_range(0..KINDS.len());
            let Some(mut link) = self.connect(kind).await else { return false };
            let until = (Instant::now() + hold).min(limit);
            self.attaches[kind] += 1;
            if self.shared.restarted.load(Ordering::SeqCst) {
                self.shared.after_restart[self.node].fetch_add(1, Ordering::SeqCst);
            }
            // Whatever the server has not confirmed goes out again, in order, before anything
            // new: numbered sends that were handled already are skipped, so this is always safe.
            self.resend = self.confirmed + 1;
            let started = Instant::now();
            let end = self.hold_link(&mut link, until, sending).await;
            drop(link);
            self.note(format!("hold {} ended after {:?}: {end}", self.holds, started.elapsed()));
            true
        }

        /// Opens a transport of `KINDS[kind]` resuming from the last cursor, on a random node or,
        /// if that one is down, on another; `None` if none took it.
        async fn connect(&mut self, kind: usize) -> Option<Link> {
            let mut avoid = None;
            for _ in 0..2 * NODES {
                let node = pick(&mut self.rng, avoid);
                self.requests[node] += 1;
                let asked = Instant::now();
                let url = |path: &str, with_cursor: bool| {
                    let mut query = Vec::new();
                    if let Some(sid) = &self.sid {
                        query.push(format!("sid={sid}"));
                        if let (true, Some(cursor)) = (with_cursor, &self.cursor) {
                            query.push(format!("last_event_id={cursor}"));
                        }
                    }
                    let query = if query.is_empty() { String::new() } else { format!("?{}", query.join("&")) };
                    format!("{}{path}{query}", self.net.addrs[node])
                };
                let opened = match KINDS[kind] {
                    Via::Ws => match timeout(WAIT, tokio_tungstenite::connect_async(format!("ws://{}", url("/ws", true)))).await {
                        Ok(Ok((socket, _))) => Ok(Link::Ws(Box::new(socket))),
                        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => Err(Some(format!("a WebSocket upgrade on node {node} answered {}", response.status()))),
                        Ok(Err(_)) => Err(None),
                        Err(_) => Err(Some(format!("a WebSocket handshake on node {node} had no answer within {WAIT:?}"))),
                    },
                    Via::Sse => {
                        // Three ways to resume: sid and cursor in the URL, the cursor in
                        // `Last-Event-ID` beside the sid, or `Last-Event-ID` alone.
                        let how = self.rng.random_range(0..3);
                        let http = &self.net.http;
                        let request = match (&self.cursor, how) {
                            (Some(cursor), 1) => http.get(format!("http://{}", url("/sse", false))).header("Last-Event-ID", cursor),
                            (Some(cursor), 2) => http.get(self.net.url(node, "/sse")).header("Last-Event-ID", cursor),
                            _ => http.get(format!("http://{}", url("/sse", true))),
                        };
                        match timeout(WAIT, request.send()).await {
                            Ok(Ok(response)) if response.status() == 200 => Ok(Link::Sse(Box::pin(response.bytes_stream().eventsource()))),
                            Ok(Ok(response)) => Err(Some(format!("GET /sse on node {node} answered {}", response.status()))),
                            Ok(Err(_)) => Err(None),
                            Err(_) => Err(Some(format!("GET /sse on node {node} had no answer within {WAIT:?}"))),
                        }
                    }
                    // The first poll goes out from the hold, to a node of its own.
                    Via::Poll => Ok(Link::Poll(None)),
                };
                match opened {
                    Ok(link) => {
                        self.holds += 1;
                        self.node = node;
                        let from = self.cursor.as_deref().map_or("the start".to_owned(), |c| format!(".{}", c.rsplit_once('.').map_or(c, |(_, n)| n)));
                        let on = if KINDS[kind] == Via::Poll { String::new() } else { format!(" on node {node} (open after {:.1?})", asked.elapsed()) };
                        self.note(format!("hold {}: {}{on}, from {from}", self.holds, kind_name(kind)));
                        return Some(link);
                    }
                    Err(None) => {
                        self.failed_on(node);
                        self.note(format!("{} attach on node {node} refused or cut: another node", kind_name(kind)));
                        avoid = Some(node);
                    }
                    Err(Some(wrong)) => {
                        self.anomalies.push(wrong);
                        return None;
                    }
                }
            }
            None
        }

        /// Starts the next poll of a polling hold, on a random node (another than `avoid`).
        fn start_poll(&mut self, avoid: Option<usize>) -> (usize, PollAnswer) {
            let node = pick(&mut self.rng, avoid);
            self.requests[node] += 1;
            self.node = node;
            let mut url = self.net.url(node, "/poll");
            if let (Some(sid), Some(cursor)) = (&self.sid, &self.cursor) {
                let _ = write!(url, "?sid={sid}&last_event_id={cursor}");
            }
            (node, Box::pin(outcome(self.net.http.get(url))))
        }

        /// Reads `link` (and sends beside it) until `until`, or until the server ends it; says
        /// which.
        async fn hold_link(&mut self, link: &mut Link, until: Instant, sending: bool) -> String {
            let mut next_send = Instant::now() + self.send_pause();
            let mut avoid = None;
            // Whether the transport yielded anything yet (a hello, a poll's answer): the catch-up
            // ends on a transport that works.
            let mut heard = false;
            loop {
                if !sending && heard && self.complete().await {
                    self.caught_up = true;
                    return "the log was complete".to_owned();
                }
                if let Link::Poll(pending @ None) = link {
                    *pending = Some(self.start_poll(avoid.take()));
                }
                let resending = self.resend <= self.sent;
                let may_send = self.sid.is_some() && (sending || resending);
                if resending {
                    next_send = Instant::now();
                }
                tokio::select! {
                    _ = sleep_until(until) => return "dropped by the client".to_owned(),
                    _ = sleep_until(next_send), if may_send => {
                        if let Err(why) = self.send(link).await {
                            return why.to_owned();
                        }
                        next_send = Instant::now() + self.send_pause();
                    }
                    incoming = link.next() => match incoming {
                        Incoming::Events(events) => {
                            heard = true;
                            for event in events {
                                self.receive(event);
                            }
                        }
                        Incoming::Closed(why) => {
                            self.closed_by_server += 1;
                            return why.to_owned();
                        }
                        Incoming::NodeDown(node) => {
                            self.failed_on(node);
                            self.note(format!("poll on node {node} refused: another node"));
                            avoid = Some(node);
                        }
                        Incoming::Cut(node) => {
                            self.closed_by_server += 1;
                            self.failures.push((node, Instant::now()));
                            return "the poll was cut".to_owned();
                        }
                        Incoming::Wrong(what) => {
                            self.anomalies.push(what.clone());
                            return what;
                        }
                    },
                }
            }
        }

        fn send_pause(&mut self) -> Duration {
            Duration::from_millis(self.rng.random_range(5..40))
        }

        /// Sends the next message (the next to send again, or a new one): over the socket held,
        /// or POSTed to a random node (another if that one is down). `Err`: the hold is over.
        async fn send(&mut self, link: &mut Link) -> Result<(), &'static str> {
            let sid = self.sid.clone().expect("sending needs a session");
            let resend = self.resend <= self.sent;
            let k = if resend { self.resend } else { self.sent + 1 };
            let body = json!({"event": "message", "data": {"n": k}, "seq": k}).to_string();
            // From here on the message exists: the server may get it, whatever this send does.
            self.sent = self.sent.max(k);
            match link {
                Link::Ws(socket) => {
                    if !resend {
                        self.sent_on_ws += 1;
                    }
                    match timeout(WAIT, socket.send(Message::text(body))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return Err("a WebSocket send failed"),
                        Err(_) => {
                            self.anomalies.push(format!("a WebSocket send of seq {k} on node {} took longer than {WAIT:?}", self.node));
                            return Err("a WebSocket send hung");
                        }
                    }
                }
                Link::Sse(_) | Link::Poll(_) => {
                    let path = if matches!(link, Link::Sse(_)) { "/sse" } else { "/poll" };
                    let mut avoid = None;
                    let mut tries = 0;
                    loop {
                        tries += 1;
                        let node = pick(&mut self.rng, avoid);
                        self.requests[node] += 1;
                        let request = self.net.http.post(self.net.url(node, &format!("{path}?sid={sid}"))).header("content-type", "application/json").body(body.clone());
                        let started = Instant::now();
                        let answer = outcome(request).await;
                        if let Outcome::Answered(status, _) = &answer {
                            self.note(format!("POST seq {k} to node {node}: {status} after {:.1?}", started.elapsed()));
                        }
                        match answer {
                            // Handled (or skipped as handled before) before the answer.
                            Outcome::Answered(202, _) => {
                                self.confirmed = self.confirmed.max(k);
                                break;
                            }
                            Outcome::Answered(status, answer) => {
                                self.anomalies.push(format!("POST seq {k} to node {node} answered {status} {answer}"));
                                return Err("a POST was refused");
                            }
                            Outcome::NodeDown if tries < 2 * NODES => {
                                self.failed_on(node);
                                self.note(format!("POST seq {k} to node {node} refused: another node"));
                                avoid = Some(node);
                            }
                            Outcome::NodeDown => return Err("no node took a POST"),
                            Outcome::Cut(err) => {
                                self.cut_posts += 1;
                                self.failures.push((node, Instant::now()));
                                self.note(format!("POST seq {k} to node {node} cut: {err}"));
                                return Err("a POST was cut");
                            }
                            Outcome::Hung => {
                                self.anomalies.push(format!("POST seq {k} to node {node}: no answer within {WAIT:?}"));
                                return Err("a POST hung");
                            }
                        }
                    }
                }
            }
            if resend {
                self.resends += 1;
            }
            self.resend = k + 1;
            Ok(())
        }

        fn receive(&mut self, event: Received) {
            self.cursor = Some(event.id.clone());
            if event.event == "session" {
                let sid = event.data["sid"].as_str().expect("a hello names its session").to_owned();
                match &self.sid {
                    None => {
                        self.shared.sids.lock().unwrap()[self.id] = Some(sid.clone());
                        self.sid = Some(sid);
                    }
                    Some(mine) if *mine == sid && event.data["resumed"] == true => {}
                    Some(mine) => {
                        self.fresh_sessions += 1;
                        self.anomalies.push(format!("resuming {mine} on node {} gave {event:?}", self.node));
                    }
                }
                let received = event.data["received"].as_u64().expect("the hello says what the server handled");
                if received > self.sent {
                    self.anomalies.push(format!("a hello on node {} says seq {received} was handled; only {} were sent", self.node, self.sent));
                }
                self.confirmed = self.confirmed.max(received);
                self.resend = self.resend.max(self.confirmed + 1);
                self.note(format!("  hello on node {}: {} received {received}, cursor {}", self.node, event.data["transport"], event.id));
            } else if !event.id.ends_with('~') {
                self.max_seq = self.max_seq.max(seq(&event.id));
            }
            self.log.push(event);
            self.sources.push(Source { hold: self.holds, node: self.node });
        }

        /// The log's events (notices left out), by number, name and data, with their sources.
        fn events(&self) -> Vec<((u64, String, Value), Source)> {
            self.log
                .iter()
                .zip(&self.sources)
                .filter(|(r, _)| !r.id.ends_with('~'))
                .map(|(r, source)| ((seq(&r.id), r.event.clone(), r.data.clone()), *source))
                .collect()
        }

        /// Compares the log with the session's history, and the history with what was sent and
        /// pushed.
        fn check(&self, history: &History, acked: &[u64], unsure: &[u64]) -> Report {
            let events: Vec<_> = self.events().into_iter().map(|(e, _)| e).collect();
            let delivery = |name: &str| {
                let emitted: Vec<u64> = history.events.iter().filter(|(_, n, _)| n == name).map(|(s, _, _)| *s).collect();
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
            let pushes: Vec<u64> = history.events.iter().filter(|(_, n, _)| n == "push").map(|(_, _, d)| d["n"].as_u64().expect("a numbered push")).collect();
            let in_order = pushes.windows(2).all(|w| w[0] < w[1]);
            let missing: Vec<u64> = acked.iter().copied().filter(|n| !pushes.contains(n)).collect();
            let unknown: Vec<u64> = pushes.iter().copied().filter(|n| !acked.contains(n) && !unsure.contains(n)).collect();
            Report {
                response: delivery("response"),
                push: delivery("push"),
                matches_history: events == history.events,
                history_complete: history.events.iter().map(|(s, _, _)| *s).eq(1..=history.last),
                messages: self.sent,
                responses_in_history: history.events.iter().filter(|(_, n, _)| n == "response").count() as u64,
                received: history.hello.data["received"].as_u64().unwrap_or(0),
                pushes: Pushes { in_history: pushes.len() as u64, in_order, missing, unknown },
                gaps: self.log.iter().filter(|r| r.event == "gap").count() as u64,
                fresh_sessions: self.fresh_sessions,
                other_events: history.events.iter().chain(&events).filter(|(_, n, _)| n != "response" && n != "push").count() as u64,
                anomalies: self.anomalies.clone(),
            }
        }

        /// For a failure report: where the log first parts from the history, and where each
        /// event lost or received twice came from.
        fn explain(&self, history: &History) -> String {
            let events = self.events();
            let mut out = String::new();
            if let Some(at) = (0..events.len().max(history.events.len())).find(|&i| events.get(i).map(|(e, _)| e) != history.events.get(i)) {
                let _ = write!(out, "\n  the log parts from the history at index {at}:");
                for i in at.saturating_sub(2)..(at + 3) {
                    let got = events.get(i).map_or("-".to_owned(), |((s, n, d), src)| format!(".{s} {n} {d} (hold {} node {})", src.hold, src.node));
                    let want = history.events.get(i).map_or("-".to_owned(), |(s, n, d)| format!(".{s} {n} {d}"));
                    let _ = write!(out, "\n    [{i}] log {got} | history {want}");
                }
            }
            let mut seen: std::collections::BTreeMap<u64, Vec<Source>> = std::collections::BTreeMap::new();
            for ((s, _, _), source) in &events {
                seen.entry(*s).or_default().push(*source);
            }
            for (s, sources) in seen.iter().filter(|(_, sources)| sources.len() > 1).take(10) {
                let from: Vec<String> = sources.iter().map(|src| format!("hold {} node {}", src.hold, src.node)).collect();
                let _ = write!(out, "\n  .{s} received {} times: {}", sources.len(), from.join(", "));
            }
            for (s, name, data) in history.events.iter().filter(|(s, _, _)| !seen.contains_key(s)).take(10) {
                // The event received last before it, to place the loss.
                let before = events.iter().rev().find(|((e, _, _), _)| e < s).map(|((e, _, _), src)| format!(".{e} in hold {} from node {}", src.hold, src.node));
                let _ = write!(out, "\n  .{s} {name} {data} never received (the last before it: {})", before.unwrap_or_else(|| "none".to_owned()));
            }
            out
        }
    }

    /// Delivery of one kind of event to one client, against the session's history.
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

    impl Tally {
        fn clean(&self) -> bool {
            self.lost == 0 && self.duplicated == 0 && self.out_of_order == 0
        }

        fn add(&mut self, other: Tally) {
            self.emitted += other.emitted;
            self.lost += other.lost;
            self.duplicated += other.duplicated;
            self.out_of_order += other.out_of_order;
        }
    }

    /// One client's pushes in its session's history.
    #[derive(Debug, Default)]
    struct Pushes {
        in_history: u64,
        /// Each number at most once, in the order published.
        in_order: bool,
        /// Acknowledged, not in the history.
        missing: Vec<u64>,
        /// In the history, never published.
        unknown: Vec<u64>,
    }

    #[derive(Debug)]
    struct Report {
        response: Tally,
        push: Tally,
        /// The events received are exactly the session's history, in order.
        matches_history: bool,
        /// The history holds every event from the first (the buffer held the whole run).
        history_complete: bool,
        /// Distinct messages sent, and `response`s in the history: one per message.
        messages: u64,
        responses_in_history: u64,
        /// The highest `seq` handled, by the hello of the history's resume: the last sent.
        received: u64,
        pushes: Pushes,
        gaps: u64,
        fresh_sessions: u64,
        other_events: u64,
        anomalies: Vec<String>,
    }

    impl Report {
        fn clean(&self) -> bool {
            self.response.clean()
                && self.push.clean()
                && self.matches_history
                && self.history_complete
                && self.responses_in_history == self.messages
                && self.received == self.messages
                && self.pushes.in_order
                && self.pushes.missing.is_empty()
                && self.pushes.unknown.is_empty()
                && self.gaps == 0
                && self.fresh_sessions == 0
                && self.other_events == 0
                && self.anomalies.is_empty()
        }
    }

    #[derive(Default)]
    struct Totals {
        attaches: [u64; 3],
        requests: [u64; NODES],
        node_down: u64,
        cut_posts: u64,
        closed_by_server: u64,
        messages: u64,
        sent_on_ws: u64,
        resends: u64,
        response: Tally,
        push: Tally,
        pushes_in_history: u64,
        mismatched: u64,
        unhandled: u64,
        gaps: u64,
        fresh_sessions: u64,
        other_events: u64,
        anomalies: u64,
    }

    impl Totals {
        fn add(&mut self, client: &Client, report: &Report) {
            for (total, n) in self.attaches.iter_mut().zip(client.attaches) {
                *total += n;
            }
            for (total, n) in self.requests.iter_mut().zip(client.requests) {
                *total += n;
            }
            self.node_down += client.node_down;
            self.cut_posts += client.cut_posts;
            self.closed_by_server += client.closed_by_server;
            self.messages += client.sent;
            self.sent_on_ws += client.sent_on_ws;
            self.resends += client.resends;
            self.response.add(report.response);
            self.push.add(report.push);
            self.pushes_in_history += report.pushes.in_history;
            self.mismatched += u64::from(!report.matches_history || !report.history_complete);
            self.unhandled += u64::from(report.responses_in_history != report.messages || report.received != report.messages);
            self.gaps += report.gaps;
            self.fresh_sessions += report.fresh_sessions;
            self.other_events += report.other_events;
            self.anomalies += report.anomalies.len() as u64;
        }

        fn print(&self, clients: usize, seconds: u64, run_for: Duration, pushed: &Pushed) {
            let [ws, sse, poll] = self.attaches;
            println!("cluster chaos: {clients} clients, {seconds} s of chaos, {run_for:.2?} with the final catch-up");
            println!(
                "  attaches: {} (websocket {ws}, sse {sse}, polling {poll}), resumes {}; transports ended by the server or the kill: {}",
                ws + sse + poll,
                (ws + sse + poll).saturating_sub(clients as u64),
                self.closed_by_server
            );
            println!(
                "  requests per node (attaches, polls, POSTs): {:?}; refused or cut by the node that was down: {} (and {} emits); POSTs cut: {}",
                self.requests, self.node_down, pushed.node_down, self.cut_posts
            );
            let acked: usize = pushed.acked.iter().map(Vec::len).sum();
            let unsure: usize = pushed.unsure.iter().map(Vec::len).sum();
            println!("  pushes: {acked} acknowledged, {unsure} cut on the way; {} in the histories", self.pushes_in_history);
            for (what, t) in [("responses", self.response), ("pushes", self.push)] {
                println!("  {what}: {} emitted, {} lost, {} duplicated, {} out of order", t.emitted, t.lost, t.duplicated, t.out_of_order);
            }
            println!(
                "  messages: {} sent ({} over WebSocket, {} over POST), {} sent again after a drop; clients with a message not handled exactly once: {}",
                self.messages,
                self.sent_on_ws,
                self.messages - self.sent_on_ws,
                self.resends,
                self.unhandled
            );
            println!(
                "  logs differing from the session history: {}; gaps {}; fresh sessions {}; other events {}; anomalies {}",
                self.mismatched, self.gaps, self.fresh_sessions, self.other_events, self.anomalies
            );
        }
    }
}

/// Over long-polling a Socket.IO client's events take from its send budget in cluster mode as
/// in memory (`Hub::admit_to` looks the session up as `Hub::admit` does): one over the burst
/// gets the `error` event.
#[tokio::test]
async fn socket_io_events_over_polling_are_rate_limited_in_cluster_mode() {
    use common::engineio::{event, path, Polling};

    let cluster = Cluster::start(&["--send-rate", "1", "--send-burst", "2"]).await;
    let (client, _) = Polling::open_at(cluster.http.clone(), &cluster.url(0, &path("transport=polling"))).await;
    client.connect(None).await;
    client.post("42[\"message\",\"1\"]\x1e42[\"message\",\"2\"]\x1e42[\"message\",\"3\"]").await;
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(event(&client.next().await));
    }
    // The refusal is reported when the event is read, the replies when their handlers have
    // run (through Redis here): the order between them is not the point.
    let replies = got.iter().filter(|e| e[..2] == [json!("response"), json!("Message received!")]).count();
    let refusals = got.iter().filter(|e| e[0] == "error" && e[1]["error"] == "too many sends for this session; slow down").count();
    assert_eq!((replies, refusals), (2, 1), "{got:?}");
}

#[tokio::test]
async fn a_socket_io_client_recovers_its_session_on_another_node() {
    use common::engineio::{connect_answer, event, ws_next, ws_send, Ws};

    let cluster = Cluster::start(&[]).await;
    let open = |node: usize| {
        let url = cluster.ws_url(node, "/socket.io/?EIO=4&transport=websocket");
        async move {
            let (mut ws, _): (Ws, _) = within("a Socket.IO WebSocket", tokio_tungstenite::connect_async(url)).await.expect("the handshake");
            assert!(ws_next(&mut ws).await.starts_with('0'), "the open packet");
            ws
        }
    };
    let mut first = open(0).await;
    ws_send(&mut first, "40").await;
    let pid = connect_answer(&ws_next(&mut first).await)["pid"].as_str().unwrap().to_owned();
    ws_send(&mut first, r#"42["message","one"]"#).await;
    assert_eq!(event(&ws_next(&mut first).await), [json!("response"), json!("Message received!"), json!("1")]);
    drop(first);
    // While it is away, another node publishes to it.
    cluster.emit(1, &pid, "news", json!(1)).await;
    cluster.emit(1, &pid, "news", json!(2)).await;

    // It comes back on a third node with its pid and last offset: the same session, and what it
    // missed, once, in order.
    let mut second = open(2).await;
    ws_send(&mut second, &format!(r#"40{{"pid":"{pid}","offset":"1"}}"#)).await;
    assert_eq!(connect_answer(&ws_next(&mut second).await)["pid"], pid, "recovered");
    assert_eq!(event(&ws_next(&mut second).await), [json!("news"), json!(1), json!("2")]);
    assert_eq!(event(&ws_next(&mut second).await), [json!("news"), json!(2), json!("3")]);
    ws_send(&mut second, r#"42["message","two"]"#).await;
    assert_eq!(event(&ws_next(&mut second).await), [json!("response"), json!("Message received!"), json!("4")]);
}
