//! Rooms and the publish API (`/api/...`) over real sockets: bearer auth, publishing to a
//! session, a room and everyone, membership across transport switches and expiry, and the
//! default app's chat room.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use switchyard::api::{self, ApiAccess};
use switchyard::{app, server, Config, Gateway};

const KEY: &str = "test-key-1234";

/// The binary's app (seed handlers and chat) with the publish API behind `access`.
async fn serve(config: Config, access: ApiAccess) -> TestServer {
    let gateway = app::seed(Gateway::builder(config)).build();
    let static_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("static");
    let router = server::app(&gateway, &static_dir).nest("/api", api::router(gateway.hub().clone(), access));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = gateway.clone();
    tokio::spawn(async move { server::run(listener, router, served, std::future::pending()).await.unwrap() });
    TestServer { addr, gateway, http: reqwest::Client::new(), scheme: "http" }
}

async fn keyed(config: Config) -> TestServer {
    serve(config, ApiAccess::Key(KEY.into())).await
}

/// Calls the API with the key; returns status and JSON body.
async fn api(server: &TestServer, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = server.http.request(method, server.url(&format!("/api{path}"))).bearer_auth(KEY);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = within("an API answer", request.send()).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_api_wants_the_bearer_key_and_is_off_without_one_off_loopback() {
    let server = keyed(Config::default()).await;
    let url = server.url("/api/emit");
    let body = json!({"to": {"all": true}, "event": "x"});
    for auth in [None, Some("Bearer wrong-key-1234"), Some("Basic dGVzdDp0ZXN0"), Some(&*format!("Bearer {KEY}x"))] {
        let mut request = server.http.post(&url).json(&body);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{auth:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer realm=\"switchyard\"");
        let error: Value = response.json().await.unwrap();
        assert!(error["error"].as_str().unwrap().contains("Bearer"), "{error}");
    }
    assert_eq!(api(&server, "POST", "/emit", Some(body)).await, (200, json!({"delivered": 0})));

    // Every route is behind the key, the debugging one included.
    let sid = switchyard::Sid::random();
    let response = server.http.get(server.url(&format!("/api/sessions/{sid}"))).send().await.unwrap();
    assert_eq!(response.status(), 401);

    let off = serve(Config::default(), ApiAccess::new(None, "0.0.0.0:3000".parse().unwrap())).await;
    let response = off.http.post(off.url("/api/emit")).bearer_auth(KEY).json(&json!({})).send().await.unwrap();
    assert_eq!(response.status(), 403);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"].as_str().unwrap().contains("--api-key"), "{error}");
}

#[tokio::test]
async fn publishing_to_a_session_reaches_it_even_between_transports() {
    let server = keyed(Config::default()).await;
    let mut sse = server.sse("/sse").await;
    let hello = sse.next().await;
    let sid = hello_sid(hello.clone(), "sse");

    let (status, body) = api(&server, "POST", "/emit", Some(json!({"to": {"sid": sid}, "event": "news", "data": {"n": 1}}))).await;
    assert_eq!((status, body), (200, json!({"delivered": 1})));
    let news = sse.next().await;
    assert_eq!((news.event.as_str(), &news.data), ("news", &json!({"n": 1})));

    // Between transports: buffered, then delivered on resume, once, in order.
    drop(sse);
    for n in 2..=3 {
        api(&server, "POST", "/emit", Some(json!({"to": {"sid": sid}, "event": "news", "data": {"n": n}}))).await;
    }
    let mut ws = server.ws(&format!("/ws?sid={sid}&last_event_id={}", news.id)).await;
    assert_eq!(ws.hello().await, sid);
    assert_eq!(ws.next().await.data, json!({"n": 2}));
    assert_eq!(ws.next().await.data, json!({"n": 3}));

    // Debugging view of the session.
    let (status, info) = api(&server, "GET", &format!("/sessions/{sid}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(info["transport"], "websocket");
    assert_eq!(info["buffered"], 3);
    assert_eq!(info["last_cursor"], format!("{sid}.3"));
    assert_eq!(info["rooms"], json!([]));
    assert!(info["connected_since"].as_str().unwrap().ends_with('Z'), "{info}");
}

#[tokio::test]
async fn the_api_says_what_is_wrong_with_a_request() {
    let server = keyed(Config::default()).await;
    let gone = switchyard::Sid::random().to_string();
    let cases = [
        ("POST", "/emit".to_owned(), Some(json!({"to": {"sid": gone}, "event": "x"})), 404, "unknown or expired session"),
        ("POST", "/emit".to_owned(), Some(json!({"event": "x"})), 400, "missing field `to`"),
        ("POST", "/emit".to_owned(), Some(json!({"to": {"room": "r"}})), 400, "missing field `event`"),
        ("POST", "/emit".to_owned(), Some(json!({"to": {"room": "r"}, "event": "a\nb"})), 400, "control characters"),
        ("POST", "/emit".to_owned(), Some(json!({"to": {"planet": "mars"}, "event": "x"})), 400, "unknown target"),
        ("POST", "/emit".to_owned(), Some(json!({"to": {"all": true}, "event": "x", "extra": 1})), 400, "unknown field `extra`"),
        ("POST", "/rooms/r/members".to_owned(), Some(json!({"sid": gone})), 404, "unknown or expired session"),
        ("POST", "/rooms/r/members".to_owned(), Some(json!({})), 400, "missing field `sid`"),
        ("GET", format!("/sessions/{gone}"), None, 404, "unknown or expired session"),
        ("GET", "/sessions/not-a-sid".to_owned(), None, 404, "unknown or expired session"),
    ];
    for (method, path, body, status, message) in cases {
        let (got, answer) = api(&server, method, &path, body.clone()).await;
        assert_eq!(got, status, "{method} {path} {body:?}: {answer}");
        assert!(answer["error"].as_str().unwrap_or("").contains(message), "{method} {path}: {answer}");
    }
    // Not JSON at all; JSON sent as `curl -d` sends it (form content type) is fine; XML is not.
    let post = |content_type: &'static str, body: &'static str| {
        server.http.post(server.url("/api/emit")).bearer_auth(KEY).header("content-type", content_type).body(body).send()
    };
    assert_eq!(post("application/json", "{").await.unwrap().status(), 400);
    let curl = post("application/x-www-form-urlencoded", r#"{"to":{"all":true},"event":"x"}"#).await.unwrap();
    assert_eq!(curl.status(), 200);
    let xml = post("application/xml", "<emit/>").await.unwrap();
    assert_eq!(xml.status(), 415);
    assert!(xml.text().await.unwrap().contains("send a JSON object"));
}

#[tokio::test]
async fn a_room_broadcast_reaches_websocket_and_sse_members_and_only_them() {
    let server = keyed(Config::default()).await;
    let mut ws = server.ws("/ws").await;
    let ws_sid = ws.hello().await;
    let mut sse = server.sse("/sse").await;
    let sse_sid = sse.hello().await;
    let mut outsider = server.sse("/sse").await;
    outsider.hello().await;

    for sid in [&ws_sid, &sse_sid] {
        let (status, body) = api(&server, "POST", "/rooms/blue/members", Some(json!({"sid": sid}))).await;
        assert_eq!((status, &body["joined"]), (200, &json!(true)));
    }
    // Joining twice is harmless and says so.
    assert_eq!(api(&server, "POST", "/rooms/blue/members", Some(json!({"sid": ws_sid}))).await.1["joined"], false);
    let (_, members) = api(&server, "GET", "/rooms/blue/members", None).await;
    let mut expected = vec![ws_sid.clone(), sse_sid.clone()];
    expected.sort();
    assert_eq!(members, json!({"room": "blue", "members": expected}));

    let (status, body) = api(&server, "POST", "/emit", Some(json!({"to": {"room": "blue"}, "event": "paint", "data": "blue"}))).await;
    assert_eq!((status, body), (200, json!({"delivered": 2})));
    assert_eq!(ws.next().await.event, "paint");
    assert_eq!(sse.next().await.event, "paint");

    // Everyone: the outsider's first event after its hello is this one, not the room's.
    api(&server, "POST", "/emit", Some(json!({"to": {"all": true}, "event": "all-hands"}))).await;
    assert_eq!(outsider.next().await.event, "all-hands");
    assert_eq!(ws.next().await.event, "all-hands");

    // Leaving, by path and by body.
    let (status, body) = api(&server, "DELETE", &format!("/rooms/blue/members/{ws_sid}"), None).await;
    assert_eq!((status, &body["left"]), (200, &json!(true)));
    let (status, body) = api(&server, "DELETE", "/rooms/blue/members", Some(json!({"sid": sse_sid}))).await;
    assert_eq!((status, &body["left"]), (200, &json!(true)));
    assert_eq!(api(&server, "POST", "/emit", Some(json!({"to": {"room": "blue"}, "event": "x"}))).await.1, json!({"delivered": 0}));
}

#[tokio::test]
async fn membership_survives_transport_switches_and_goes_with_the_session() {
    let server = keyed(Config { grace: Duration::from_millis(300), ..Config::default() }).await;
    let mut sse = server.sse("/sse").await;
    let sid = sse.hello().await;
    api(&server, "POST", "/rooms/green/members", Some(json!({"sid": sid}))).await;

    // SSE -> WebSocket -> long-polling; a broadcast reaches whichever holds the session.
    let mut ws = server.ws(&format!("/ws?sid={sid}")).await;
    assert_eq!(ws.hello().await, sid);
    sse.expect_end().await;
    api(&server, "POST", "/emit", Some(json!({"to": {"room": "green"}, "event": "tick", "data": 1}))).await;
    let tick = ws.next().await;
    assert_eq!((tick.event.as_str(), &tick.data), ("tick", &json!(1)));

    drop(ws);
    api(&server, "POST", "/emit", Some(json!({"to": {"room": "green"}, "event": "tick", "data": 2}))).await;
    let (status, events) = server.poll(&format!("?sid={sid}&last_event_id={}", tick.id)).await;
    assert_eq!(status, 200);
    let names: Vec<_> = events.iter().map(|e| (e.event.as_str(), e.data.clone())).collect();
    assert_eq!(names, vec![("session", events[0].data.clone()), ("tick", json!(2))]);
    let (_, info) = api(&server, "GET", &format!("/sessions/{sid}"), None).await;
    assert_eq!(info["rooms"], json!(["green"]));

    // Past the grace period the session, and its membership, are gone.
    within("the session to expire", async {
        while server.gateway.hub().info(&sid.parse().unwrap()).await.is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(api(&server, "GET", "/rooms/green/members", None).await.1["members"], json!([]));
    assert_eq!(api(&server, "POST", "/emit", Some(json!({"to": {"room": "green"}, "event": "x"}))).await.1, json!({"delivered": 0}));
}

#[tokio::test]
async fn the_default_app_chats_between_a_websocket_tab_and_an_sse_tab() {
    let server = keyed(Config::default()).await;
    let mut ws = server.ws("/ws").await;
    let ws_sid = ws.hello().await;
    let mut sse = server.sse("/sse").await;
    let sse_sid = sse.hello().await;

    // Joining is silent: each tab's own stream keeps exactly the seed's events.
    ws.send(r#"{"event":"join","data":"lobby"}"#).await;
    server.post_json(&sse_sid, r#"{"event":"join","data":"lobby"}"#).await;
    within("both tabs in the lobby", async {
        while server.gateway.hub().members("lobby").await.len() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    // The sender gets the seed's reply; the other tab the chat line.
    ws.send(r#"{"event":"message","data":"hello from ws"}"#).await;
    let reply = ws.next().await;
    assert_eq!((reply.event.as_str(), &reply.data), ("response", &json!("Message received!")));
    let chat = sse.next().await;
    assert_eq!(chat.event, "chat");
    assert_eq!((&chat.data["room"], &chat.data["text"]), (&json!("lobby"), &json!("hello from ws")));
    assert_eq!(chat.data["from"], json!(&ws_sid[..6]));

    server.post(&sse_sid, "text/plain", "hello from sse".into()).await;
    assert_eq!(sse.next().await.event, "response", "no echo of its own line");
    assert_eq!(ws.next().await.data["text"], "hello from sse");

    // A bad room name is an error event, not silence.
    ws.send(r#"{"event":"join","data":42}"#).await;
    let error = ws.next().await;
    assert_eq!((error.event.as_str(), &error.data["event"]), ("error", &json!("join")));
}
