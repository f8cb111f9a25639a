//! Forwarding to an application (`--upstream`): a real backend (a small axum app) on a real
//! port, a real gateway in front of it, real WebSocket/SSE/POST clients.
//!
//! The backend's behaviour is chosen by event name, so each test can ask for a round trip, a
//! failure of each kind, or a slow answer.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use common::*;
use serde_json::{json, Value};
use switchyard::api::{self, ApiAccess};
use switchyard::upstream::{Upstream, UpstreamConfig};
use switchyard::{server, Config, Gateway};

/// What the backend received, in arrival order, per endpoint.
#[derive(Clone, Default)]
struct Seen {
    /// Requests being handled right now, and the most ever handled at once.
    concurrent: Arc<AtomicUsize>,
    most_concurrent: Arc<AtomicUsize>,
    events: Arc<Mutex<Vec<Value>>>,
    opens: Arc<Mutex<Vec<Value>>>,
    expires: Arc<Mutex<Vec<Value>>>,
}

struct Backend {
    addr: SocketAddr,
    seen: Seen,
}

impl Backend {
    async fn start() -> Backend {
        let seen = Seen::default();
        let router = Router::new()
            .route("/events", post(backend_event))
            .route("/open", post(backend_open))
            .route("/expire", post(backend_expire))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Backend { addr, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn config(&self) -> UpstreamConfig {
        UpstreamConfig {
            events: Some(self.url("/events")),
            on_open: Some(self.url("/open")),
            on_expire: Some(self.url("/expire")),
            timeout: Duration::from_millis(500),
            ..UpstreamConfig::default()
        }
    }

    /// The `event` requests of one session, as (event, data) pairs in arrival order.
    fn events_of(&self, sid: &str) -> Vec<(String, Value)> {
        let events = self.seen.events.lock().unwrap();
        events
            .iter()
            .filter(|e| e["sid"] == sid)
            .map(|e| (e["event"].as_str().unwrap().to_owned(), e["data"].clone()))
            .collect()
    }
}

async fn backend_event(State(seen): State<Seen>, Json(request): Json<Value>) -> Response {
    seen.events.lock().unwrap().push(request.clone());
    let data = request["data"].clone();
    let actions = match request["event"].as_str().unwrap() {
        "echo" => json!([{"emit": "echo", "data": data}]),
        "seq" => {
            // A little jitter, so that an ordering bug would show (the scenario, not a wait).
            tokio::time::sleep(Duration::from_micros(rand::random::<u64>() % 2000)).await;
            json!([{"emit": "ack", "data": data}])
        }
        "join" => json!({"v": 1, "actions": [{"join": data}, {"emit": "joined", "data": data}]}),
        "say" => json!([{"emit": "chat", "data": data, "to": {"room": "r"}}]),
        // Answers the client's request in the middle of its actions.
        "add" => {
            let sum: i64 = data.as_array().unwrap().iter().filter_map(Value::as_i64).sum();
            json!([{"emit": "adding", "data": data}, {"ack": {"sum": sum}}, {"emit": "added"}])
        }
        "say_to_others" => json!([{"emit": "chat", "data": data, "to": {"room": "r"}, "skip_self": true}, {"emit": "said"}]),
        "tell" => json!([{"emit": "told", "data": data["text"], "to": {"sid": data["sid"]}}]),
        "shout" => json!([{"emit": "shouted", "data": data, "to": {"all": true}}]),
        "status" => return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        "garbage" => return "this is not JSON".into_response(),
        "half_bad" => json!([{"emit": "applied", "data": 1}, {"shout": "nope"}]),
        "slow" => {
            // The scenario: an app that stays silent past the gateway's timeout.
            tokio::time::sleep(Duration::from_secs(3)).await;
            json!([])
        }
        "hold" => {
            let now = seen.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
            seen.most_concurrent.fetch_max(now, Ordering::SeqCst);
            // The scenario: a request that takes a while, so that overlapping ones would show.
            tokio::time::sleep(Duration::from_millis(100)).await;
            seen.concurrent.fetch_sub(1, Ordering::SeqCst);
            json!([{"emit": "held", "data": data}])
        }
        other => json!([{"emit": "unexpected", "data": other}]),
    };
    Json(actions).into_response()
}

async fn backend_open(State(seen): State<Seen>, Json(request): Json<Value>) -> Response {
    seen.opens.lock().unwrap().push(request.clone());
    if request["query"].as_str().is_some_and(|q| q.contains("deny")) {
        return (StatusCode::FORBIDDEN, Json(json!({"error": "go away"}))).into_response();
    }
    Json(json!([{"join": "lobby"}])).into_response()
}

async fn backend_expire(State(seen): State<Seen>, Json(request): Json<Value>) -> Response {
    seen.expires.lock().unwrap().push(request);
    StatusCode::NO_CONTENT.into_response()
}

/// A gateway forwarding to `upstream`, with the publish API open (loopback), on 127.0.0.1:0.
async fn gateway(config: Config, upstream: UpstreamConfig) -> (TestServer, Upstream) {
    let upstream = Upstream::new(upstream);
    let gateway = upstream.install(Gateway::builder(config)).build();
    let static_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("static");
    let router = server::app(&gateway, &static_dir).nest("/api", api::router(gateway.hub().clone(), ApiAccess::Loopback));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = gateway.clone();
    tokio::spawn(async move { server::run(listener, router, served, std::future::pending()).await.unwrap() });
    (TestServer { addr, gateway, http: reqwest::Client::new(), scheme: "http" }, upstream)
}

/// Waits (bounded) until `check` holds, polling: for effects seen only by the backend.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    wait_until(what, || std::future::ready(check())).await;
}

#[tokio::test]
async fn events_round_trip_through_the_app_over_websocket_and_sse() {
    let backend = Backend::start().await;
    let (server, upstream) = gateway(Config::default(), backend.config()).await;

    let mut ws = server.ws("/ws").await;
    let ws_sid = ws.hello().await;
    ws.send(r#"{"event":"echo","data":{"n":1}}"#).await;
    let reply = ws.next().await;
    assert_eq!((reply.event.as_str(), &reply.data), ("echo", &json!({"n": 1})));

    let mut sse = server.sse("/sse").await;
    let sse_sid = sse.hello().await;
    let (status, _) = server.post_json(&sse_sid, r#"[{"event":"echo","data":"a"},{"event":"echo","data":"b"}]"#).await;
    assert_eq!(status, 202);
    assert_eq!(sse.next().await.data, json!("a"));
    assert_eq!(sse.next().await.data, json!("b"));

    // The request carries the schema version, its kind, the session and the event, nothing else.
    let first = backend.seen.events.lock().unwrap().iter().find(|e| e["sid"] == ws_sid).cloned().unwrap();
    assert_eq!(first, json!({"v": 1, "type": "event", "sid": ws_sid, "event": "echo", "data": {"n": 1}}));
    assert_eq!(backend.events_of(&sse_sid), vec![("echo".into(), json!("a")), ("echo".into(), json!("b"))]);
    assert_eq!(upstream.stats().failures(), 0);
    assert_eq!(upstream.stats().ok, 5, "two opens and three events");
}

#[tokio::test]
async fn the_apps_ack_action_answers_the_clients_request_over_websocket_and_long_polling() {
    let backend = Backend::start().await;
    let (server, upstream) = gateway(Config::default(), backend.config()).await;
    let mut ws = server.ws("/ws").await;
    let sid = ws.hello().await;
    ws.send(r#"[{"event":"add","data":[1,2,3],"ack":11},{"event":"echo","data":"x","ack":12},{"event":"status","ack":13},{"event":"add","data":[4]}]"#).await;
    let mut envelopes = Vec::new();
    for _ in 0..8 {
        envelopes.push(ws.next_envelope().await);
    }
    let shape: Vec<(&str, Option<u64>)> = envelopes.iter().map(|e| (e["event"].as_str().unwrap(), e["ack"].as_u64())).collect();
    // The `ack` action in its place among the actions; none: `null` after them; a failure: the
    // error form; no request: no answer, even with an `ack` action.
    assert_eq!(shape, [("adding", None), ("ack", Some(11)), ("added", None), ("echo", None), ("ack", Some(12)), ("ack", Some(13)), ("adding", None), ("added", None)]);
    assert_eq!(envelopes[1]["data"], json!({"sum": 6}));
    assert_eq!(envelopes[4]["data"], Value::Null);
    let failed = &envelopes[5];
    assert_eq!(failed.get("data"), None, "{failed}");
    assert_eq!(failed["error"]["event"], "status");
    assert_eq!(failed["error"]["reason"], "status");
    // The application learns which events asked for an answer.
    let requests = backend.seen.events.lock().unwrap().iter().filter(|e| e["sid"] == sid).cloned().collect::<Vec<_>>();
    let acks: Vec<Option<u64>> = requests.iter().map(|e| e["ack"].as_u64()).collect();
    assert_eq!(acks, [Some(11), Some(12), Some(13), None]);

    // Long-polling, the request POSTed: the answer waits in the buffer for the next poll.
    let (_, hello) = server.poll_envelopes("").await;
    let sid = hello[0]["data"]["sid"].as_str().unwrap().to_owned();
    let mut cursor = hello[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(server.post_json(&sid, r#"{"event":"add","data":[40,2],"ack":1}"#).await.0, 202);
    let mut envelopes = Vec::new();
    while envelopes.len() < 3 {
        let (_, more) = server.poll_envelopes(&format!("?sid={sid}&last_event_id={cursor}")).await;
        cursor = more.last().map_or(cursor, |e| e["id"].as_str().unwrap().to_owned());
        envelopes.extend(more);
    }
    assert_eq!((&envelopes[1]["event"], &envelopes[1]["ack"], &envelopes[1]["data"]), (&json!("ack"), &json!(1), &json!({"sum": 42})));
    assert_eq!(upstream.stats().status, 1);
}

#[tokio::test]
async fn every_failure_mode_reaches_the_client_as_an_error_naming_the_event() {
    let backend = Backend::start().await;
    let (server, upstream) = gateway(Config::default(), backend.config()).await;
    let mut sse = server.sse("/sse").await;
    let sid = sse.hello().await;

    for (event, reason) in [("status", "status"), ("garbage", "malformed"), ("half_bad", "malformed"), ("slow", "timeout")] {
        let (status, _) = server.post_json(&sid, &format!(r#"{{"event":"{event}","data":null}}"#)).await;
        assert_eq!(status, 202);
        // A malformed answer applies nothing: `half_bad`'s valid first action must not arrive.
        let error = sse.next().await;
        assert_eq!(error.event, "error", "after `{event}`: {error:?}");
        assert_eq!(error.data["event"], event);
        assert_eq!(error.data["reason"], reason);
        assert!(error.data["error"].as_str().unwrap().contains(&format!("`{event}`")), "{error:?}");
    }
    let stats = upstream.stats();
    assert_eq!((stats.status, stats.malformed, stats.timeout, stats.unavailable), (1, 2, 1, 0));
    // None of these is retried: the app may have acted on the request.
    let sent: Vec<String> = backend.events_of(&sid).into_iter().map(|(event, _)| event).collect();
    assert_eq!(sent, ["status", "garbage", "half_bad", "slow"]);
    // And on /metrics (the recorder is per process, so other tests may have added to it).
    let metrics = server.http.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for outcome in ["status", "malformed", "timeout"] {
        let line = format!("switchyard_upstream_requests_total{{outcome=\"{outcome}\"}}");
        assert!(metrics.contains(&line), "{line} missing from /metrics");
    }

    // The session still works after every failure.
    server.post_json(&sid, r#"{"event":"echo","data":"still here"}"#).await;
    assert_eq!(sse.next().await.data, json!("still here"));
}

#[tokio::test]
async fn an_app_that_is_down_is_reported_not_awaited() {
    // A port that was just free: nothing listens there.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let config = UpstreamConfig { events: Some(format!("http://{dead}/events")), ..UpstreamConfig::default() };
    let (server, upstream) = gateway(Config::default(), config).await;
    let mut ws = server.ws("/ws").await;
    ws.hello().await;
    ws.send(r#"{"event":"message","data":"anyone?"}"#).await;
    let error = ws.next().await;
    assert_eq!((error.event.as_str(), &error.data["event"], &error.data["reason"]), ("error", &json!("message"), &json!("unavailable")));
    assert_eq!(upstream.stats().unavailable, 1);
}

#[tokio::test]
async fn events_reach_the_app_in_order_under_load() {
    const SESSIONS: usize = 12;
    const EVENTS: usize = 60;
    let backend = Backend::start().await;
    let (server, upstream) = gateway(Config::default(), backend.config()).await;
    let server = Arc::new(server);

    let mut tasks = Vec::new();
    for i in 0..SESSIONS {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            let sid = if i % 2 == 0 {
                // WebSocket: every frame sent at once, without waiting for replies.
                let mut ws = server.ws("/ws").await;
                let sid = ws.hello().await;
                for n in 0..EVENTS {
                    ws.send(&format!(r#"{{"event":"seq","data":{n}}}"#)).await;
                }
                while acks.len() < EVENTS {
                    acks.push(ws.next().await.data);
                }
                sid
            } else {
                // SSE + POST: batches of ten, each POST as soon as the previous answers.
                let mut sse = server.sse("/sse").await;
                let sid = sse.hello().await;
                for batch in 0..EVENTS / 10 {
                    let body: Vec<Value> = (0..10).map(|k| json!({"event": "seq", "data": batch * 10 + k})).collect();
                    let (status, _) = server.post_json(&sid, &Value::Array(body).to_string()).await;
                    assert_eq!(status, 202);
                }
                while acks.len() < EVENTS {
                    acks.push(sse.next().await.data);
                }
                sid
            };
            (sid, acks)
        }));
    }
    let expected: Vec<Value> = (0..EVENTS).map(|n| json!(n)).collect();
    for task in tasks {
        let (sid, acks) = within("a session's acks", task).await.unwrap();
        assert_eq!(acks, expected, "replies of {sid} out of order");
        let seen: Vec<Value> = backend.events_of(&sid).into_iter().map(|(_, data)| data).collect();
        assert_eq!(seen, expected, "events of {sid} reached the app out of order");
    }
    assert_eq!(upstream.stats().failures(), 0);
}

#[tokio::test]
async fn a_burst_past_the_per_session_bound_is_held_back_not_dropped() {
    let backend = Backend::start().await;
    let config = UpstreamConfig { max_per_session: 2, timeout: Duration::from_secs(5), ..backend.config() };
    let (server, upstream) = gateway(Config::default(), config).await;
    let mut ws = server.ws("/ws").await;
    let sid = ws.hello().await;
    // Ten slow events at once: two fit in the session's queue, the socket is read no further
    // until there is room again, and none is lost or reordered.
    for n in 0..10 {
        ws.send(&format!(r#"{{"event":"hold","data":{n}}}"#)).await;
    }
    for n in 0..10 {
        let held = ws.next().await;
        assert_eq!((held.event.as_str(), &held.data), ("held", &json!(n)));
    }
    assert_eq!(backend.seen.most_concurrent.load(Ordering::SeqCst), 1, "one request of a session at a time");
    assert_eq!(backend.events_of(&sid).len(), 10);
    assert_eq!(upstream.stats().failures(), 0);
}

#[tokio::test]
async fn a_queue_that_stays_full_past_the_timeout_is_refused_as_busy() {
    let backend = Backend::start().await;
    // One request in flight in all; every request to `slow` runs into the 500 ms timeout.
    let config = UpstreamConfig { max_per_session: 2, max_in_flight: 1, timeout: Duration::from_millis(500), ..backend.config() };
    let (server, upstream) = gateway(Config::default(), config).await;

    // Another session takes the only permit...
    let mut other = server.ws("/ws").await;
    let other_sid = other.hello().await;
    other.send(r#"{"event":"slow","data":"x"}"#).await;
    eventually("the other session's request at the app", || backend.events_of(&other_sid).len() == 1).await;
    // The scenario's stagger, not a wait for anything: both sessions run on the same 500 ms
    // clocks, and this session's events start 100 ms after the other's request, so that request
    // times out (and frees the permit) well before this session's first event would give up
    // waiting for the permit, rather than in the same millisecond.
    tokio::time::sleep(Duration::from_millis(100)).await;

    // ...so this session's first event waits for it, its second is queued behind, and its
    // third finds the queue full for longer than the timeout.
    let mut ws = server.ws("/ws").await;
    let sid = ws.hello().await;
    for n in 1..=3 {
        ws.send(&format!(r#"{{"event":"slow","data":{n}}}"#)).await;
    }
    let mut reasons = Vec::new();
    for _ in 0..3 {
        let error = ws.next().await;
        assert_eq!((error.event.as_str(), &error.data["event"]), ("error", &json!("slow")), "{error:?}");
        reasons.push(error.data["reason"].as_str().unwrap().to_owned());
    }
    assert_eq!(reasons, ["busy", "timeout", "timeout"], "the refusal comes first, then the two that were sent");
    assert_eq!(backend.events_of(&sid).len(), 2, "the refused event never reached the app");
    assert_eq!(other.next().await.data["reason"], "timeout");
    let stats = upstream.stats();
    assert_eq!((stats.busy, stats.timeout), (1, 3));
}

#[tokio::test]
async fn actions_emit_to_another_session_to_a_room_and_to_everyone() {
    let backend = Backend::start().await;
    let (server, _) = gateway(Config::default(), backend.config()).await;
    let mut a = server.ws("/ws").await;
    let a_sid = a.hello().await;
    let mut b = server.sse("/sse").await;
    let b_sid = b.hello().await;

    // `join` answers with {"v":1,"actions":[...]}: both shapes of an answer are read.
    a.send(r#"{"event":"join","data":"r"}"#).await;
    assert_eq!(a.next().await.event, "joined");
    server.post_json(&b_sid, r#"{"event":"join","data":"r"}"#).await;
    assert_eq!(b.next().await.event, "joined");

    a.send(r#"{"event":"say","data":"hi room"}"#).await;
    assert_eq!((a.next().await.event, b.next().await.data), ("chat".to_owned(), json!("hi room")));
    // `skip_self`: the room but the sender.
    a.send(r#"{"event":"say_to_others","data":"hi others"}"#).await;
    assert_eq!(b.next().await.data, json!("hi others"));
    assert_eq!(a.next().await.event, "said", "the sender is skipped");

    server.post_json(&b_sid, &json!({"event": "tell", "data": {"sid": a_sid, "text": "psst"}}).to_string()).await;
    let told = a.next().await;
    assert_eq!((told.event.as_str(), &told.data), ("told", &json!("psst")));

    a.send(r#"{"event":"shout","data":"everyone"}"#).await;
    assert_eq!(a.next().await.event, "shouted");
    assert_eq!(b.next().await.event, "shouted");
}

#[tokio::test]
async fn the_open_hook_authorizes_and_the_expire_hook_cleans_up() {
    let backend = Backend::start().await;
    let config = Config { grace: Duration::from_millis(200), ..Config::default() };
    let (server, _) = gateway(config, backend.config()).await;

    // Refused on every transport, with the app's reason, and the session is gone.
    for path in ["/sse?deny=1", "/poll?deny=1"] {
        let response = server.http.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 403, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "session refused by the application: go away");
    }
    let refused = tokio_tungstenite::connect_async(server.ws_url("/ws?deny=1")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected the WebSocket to be refused with 403, got {other:?}"),
    }
    assert_eq!(server.gateway.hub().len(), 0, "refused sessions are removed");

    // Admitted: the hook saw the page's query (not the gateway's own parameters) and headers,
    // and its actions (join "lobby") were applied.
    let mut sse = server.sse_with("/sse?token=abc", None).await;
    let sid = sse.hello().await;
    let open = backend.seen.opens.lock().unwrap().last().cloned().unwrap();
    assert_eq!((&open["v"], &open["type"], &open["sid"], &open["transport"]), (&json!(1), &json!("open"), &json!(sid), &json!("sse")));
    assert_eq!(open["query"], "token=abc");
    assert!(open["headers"].is_object());
    let info: Value = server.http.get(server.url(&format!("/api/sessions/{sid}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["rooms"], json!(["lobby"]));

    // Resuming is not opening: no second hook.
    let opens = backend.seen.opens.lock().unwrap().len();
    drop(sse);
    let mut again = server.sse(&format!("/sse?sid={sid}")).await;
    assert_eq!(again.hello().await, sid);
    assert_eq!(backend.seen.opens.lock().unwrap().len(), opens);
    drop(again);

    // Expiry: the app hears which session went and which rooms it left.
    eventually("the expire hook", || backend.seen.expires.lock().unwrap().iter().any(|e| e["sid"] == sid)).await;
    let expire = backend.seen.expires.lock().unwrap().iter().find(|e| e["sid"] == sid).cloned().unwrap();
    assert_eq!(expire, json!({"v": 1, "type": "expire", "sid": sid, "rooms": ["lobby"]}));
}

#[tokio::test]
async fn an_open_hook_that_cannot_be_reached_refuses_sessions() {
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let config = UpstreamConfig { on_open: Some(format!("http://{dead}/open")), ..UpstreamConfig::default() };
    let (server, upstream) = gateway(Config::default(), config).await;
    let response = server.http.get(server.url("/poll")).send().await.unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("unreachable"), "{body}");
    assert_eq!(upstream.stats().unavailable, 1);
}

#[tokio::test]
async fn requests_in_flight_to_the_app_are_bounded_over_all_sessions() {
    let backend = Backend::start().await;
    let config = UpstreamConfig { max_in_flight: 2, timeout: Duration::from_secs(5), ..backend.config() };
    let (server, upstream) = gateway(Config::default(), config).await;
    let mut clients = Vec::new();
    for _ in 0..6 {
        let mut ws = server.ws("/ws").await;
        ws.hello().await;
        ws.send(r#"{"event":"hold","data":null}"#).await;
        clients.push(ws);
    }
    for ws in &mut clients {
        assert_eq!(ws.next().await.event, "held");
    }
    assert_eq!(backend.seen.most_concurrent.load(Ordering::SeqCst), 2, "at most two requests at once, and both used");
    assert_eq!(upstream.stats().failures(), 0, "waiting for a permit within the timeout is not a failure");
}

#[tokio::test]
async fn with_auth_on_the_app_learns_who_the_client_is() {
    let secret = "upstream-test-secret";
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice", "exp": now + 60}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let backend = Backend::start().await;
    let config = Config { auth_secret: Some(secret.into()), ..Config::default() };
    let (server, _) = gateway(config, backend.config()).await;
    let mut ws = server.ws(&format!("/ws?token={token}")).await;
    let sid = ws.hello().await;
    ws.send(r#"{"event":"echo","data":1}"#).await;
    assert_eq!(ws.next().await.event, "echo");

    let open = backend.seen.opens.lock().unwrap().last().cloned().unwrap();
    assert_eq!((&open["sid"], &open["subject"]), (&json!(sid), &json!("alice")));
    let event = backend.seen.events.lock().unwrap().last().cloned().unwrap();
    assert_eq!((&event["sid"], &event["subject"]), (&json!(sid), &json!("alice")));
    let info: Value = server.http.get(server.url(&format!("/api/sessions/{sid}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["subject"], "alice");
}

/// An app that takes requests and never answers them; each request's path (`/events`,
/// `/expire`) is sent on the channel as it arrives.
async fn silent_app() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (arrived_tx, arrived) = tokio::sync::mpsc::unbounded_channel();
    let router = Router::new().route(
        "/{kind}",
        post(move |axum::extract::Path(kind): axum::extract::Path<String>| {
            let _ = arrived_tx.send(format!("/{kind}"));
            std::future::pending::<()>()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (addr, arrived)
}

#[tokio::test]
async fn shutdown_stops_and_awaits_upstream_workers_and_expire_hooks_in_flight() {
    let (app, mut arrived) = silent_app().await;
    // A timeout far beyond any wait here: only the shutdown can end these requests in time.
    let upstream = UpstreamConfig {
        events: Some(format!("http://{app}/events")),
        on_expire: Some(format!("http://{app}/expire")),
        timeout: Duration::from_secs(600),
        ..UpstreamConfig::default()
    };
    let config = Config { grace: Duration::from_millis(100), ..Config::default() };
    let (server, _upstream) = gateway(config, upstream).await;
    let tasks = server.gateway.tasks().clone();
    let idle = tasks.len();

    // An event forwarded: its session's worker waits for the app.
    let mut sse = server.sse("/sse").await;
    let sid = sse.hello().await;
    let (status, _) = server.post_json(&sid, r#"{"event":"anything","data":1}"#).await;
    assert_eq!(status, 202);
    assert_eq!(within("the event at the app", arrived.recv()).await.unwrap(), "/events");
    assert_eq!(tasks.len(), idle + 1, "the worker is one of the gateway's tasks");

    // A session expires: its hook waits for the app.
    let gone = server.gateway.hub().attach(switchyard::Transport::Polling, None, None).await.unwrap();
    drop(gone);
    assert_eq!(within("the expire hook at the app", arrived.recv()).await.unwrap(), "/expire");
    assert_eq!(tasks.len(), idle + 2, "the hook is one of the gateway's tasks");

    server.gateway.shutdown();
    within("the worker and the hook to stop", server.gateway.drained()).await;
    assert!(tasks.is_empty(), "{} of the gateway's tasks still running", tasks.len());
}

#[tokio::test]
async fn a_socket_io_client_is_forwarded_to_the_app_like_any_session() {
    use common::engineio::{event, Polling};

    let backend = Backend::start().await;
    let (server, upstream) = gateway(Config::default(), backend.config()).await;
    let (client, _) = Polling::open(&server).await;
    let pid = client.connect(None).await["pid"].as_str().unwrap().to_owned();
    // The open hook ran for the new session (and put it in the lobby).
    let opens = backend.seen.opens.lock().unwrap().clone();
    assert_eq!((opens.len(), &opens[0]["sid"], &opens[0]["transport"]), (1, &json!(pid), &json!("polling")));
    assert_eq!(server.gateway.hub().members("lobby").await.len(), 1);

    client.post(r#"42["echo",{"n":1}]"#).await;
    assert_eq!(event(&client.next().await)[..2], [json!("echo"), json!({"n": 1})]);
    // The app's ack action answers the Socket.IO request (ack id 5) in the middle of its emits.
    client.post(r#"425["add",[1,2]]"#).await;
    assert_eq!(event(&client.next().await)[..2], [json!("adding"), json!([1, 2])]);
    assert_eq!(client.next().await, r#"435[{"sum":3}]"#);
    assert_eq!(event(&client.next().await)[0], "added");
    assert_eq!(backend.events_of(&pid), vec![("echo".into(), json!({"n": 1})), ("add".into(), json!([1, 2]))]);
    assert_eq!(upstream.stats().failures(), 0);
}
