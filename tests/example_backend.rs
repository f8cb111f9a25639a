//! The README's setup, end to end: the shipped example backend (`examples/backend.rs`) and the
//! real gateway binary started with `--upstream` and both hooks, talked to by WebSocket, SSE and
//! the publish API.

mod common;

#[path = "../examples/backend.rs"]
#[allow(dead_code)]
mod backend;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn the_example_backend_behind_the_binary_runs_the_chat() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, backend::router(None)).await.unwrap() });
    let (_gateway, addr) = start_binary(&[
        "--upstream".into(),
        format!("http://{app}/events"),
        "--upstream-on-open".into(),
        format!("http://{app}/open"),
        "--upstream-on-expire".into(),
        format!("http://{app}/expire"),
        "--grace".into(),
        "300ms".into(),
    ], None);
    // The clients of `common` hang off a `TestServer`; its `gateway` is an idle stand-in here
    // (the binary, another process, is what serves).
    let idle = switchyard::Gateway::builder(Default::default()).build();
    let server = TestServer { addr: addr.parse().unwrap(), gateway: idle, http: reqwest::Client::new(), scheme: "http" };

    let mut ws = server.ws("/ws").await;
    let ws_sid = ws.hello().await;
    let mut sse = server.sse("/sse").await;
    let sse_sid = sse.hello().await;

    // The seed's reply, from the app now.
    ws.send(r#"{"event":"message","data":"hi"}"#).await;
    assert_eq!(ws.next().await.data, json!("Message received!"));

    // Both join the lobby (silently), then talk across transports.
    ws.send(r#"{"event":"join","data":"lobby"}"#).await;
    server.post_json(&sse_sid, r#"{"event":"join","data":"lobby"}"#).await;
    let members = || async {
        let body: Value = server.http.get(server.url("/api/rooms/lobby/members")).send().await.unwrap().json().await.unwrap();
        body["members"].as_array().unwrap().iter().map(|m| m.as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    within("both in the lobby", async {
        while members().await.len() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    server.post(&sse_sid, "text/plain", "hello from sse".into()).await;
    assert_eq!(sse.next().await.event, "response");
    let chat = ws.next().await;
    assert_eq!((chat.event.as_str(), &chat.data["text"], &chat.data["from"]), ("chat", &json!("hello from sse"), &json!(&sse_sid[..6])));

    // The publish API, open on loopback without a key.
    let published: Value = server
        .http
        .post(server.url("/api/emit"))
        .json(&json!({"to": {"room": "lobby"}, "event": "news", "data": "from the app"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(published, json!({"delivered": 2}));
    assert_eq!(ws.next().await.event, "news");
    assert_eq!(sse.next().await.event, "news");

    // An unknown event is the app's `error`; the SSE tab leaves, expires, and the app's expire
    // hook tells the room.
    ws.send(r#"{"event":"dance"}"#).await;
    assert_eq!(ws.next().await.data["event"], "dance");
    drop(sse);
    let left = ws.next().await;
    assert_eq!((left.event.as_str(), &left.data["text"]), ("chat", &json!(format!("{} left", &sse_sid[..6]))));
    assert_eq!(members().await, vec![ws_sid]);
}
