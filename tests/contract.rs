//! The wire contract, line by line, over real sockets.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use switchyard::Config;

const REPLY: &str = "Message received!";

fn assert_sid_shape(sid: &str) {
    assert!(sid.len() >= 22, "sid {sid:?} shorter than 22 characters");
    assert!(sid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "sid {sid:?} is not URL-safe");
}

#[tokio::test]
async fn every_transport_starts_with_a_session_hello_and_a_fresh_sid() {
    let server = TestServer::start().await;
    let mut sse = server.sse("/sse").await;
    let hello = sse.next().await;
    let sse_sid = hello_sid(hello.clone(), "sse");
    assert_eq!(hello.data["resumed"], false);
    assert!(hello.id.starts_with(&sse_sid), "cursor {} names its session", hello.id);

    let mut ws = server.ws("/ws").await;
    let ws_sid = ws.hello().await;

    let (status, events) = server.poll("").await;
    assert_eq!(status, 200);
    let poll_sid = hello_sid(events[0].clone(), "polling");

    for sid in [&sse_sid, &ws_sid, &poll_sid] {
        assert_sid_shape(sid);
    }
    assert!(sse_sid != ws_sid && ws_sid != poll_sid && sse_sid != poll_sid);
}

#[tokio::test]
async fn seed_reply_over_websocket_is_byte_for_byte() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws").await;
    ws.hello().await;
    ws.send(r#"{"event":"message","data":"hello"}"#).await;
    let frame = within("reply frame", ws.socket.next()).await.unwrap().unwrap();
    let text = frame.into_text().unwrap();
    let value: Value = serde_json::from_str(text.as_str()).unwrap();
    let expected = format!(r#"{{"event":"response","data":"Message received!","id":"{}"}}"#, value["id"].as_str().unwrap());
    assert_eq!(text.as_str(), expected);
}

#[tokio::test]
async fn seed_reply_over_sse_and_post() {
    let server = TestServer::start().await;
    let mut sse = server.sse("/sse").await;
    let sid = sse.hello().await;
    let (status, body) = server.post_json(&sid, r#"{"event":"message","data":"hello"}"#).await;
    assert_eq!(status, 202, "{body}");
    let reply = sse.next().await;
    assert_eq!((reply.event.as_str(), &reply.data), ("response", &json!(REPLY)));
}

#[tokio::test]
async fn sse_wire_format_and_headers() {
    let server = TestServer::start().await;
    let response = server.http.get(server.url("/sse")).send().await.unwrap();
    let headers = response.headers();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache, no-transform");
    assert_eq!(headers["x-accel-buffering"], "no");
    assert!(headers.get("content-encoding").is_none());
    // Raw bytes: the hello arrives at once, as `id:`, `event:`, `data:` lines and a blank line.
    let mut body = response.bytes_stream();
    let chunk = within("first bytes of the stream", body.next()).await.unwrap().unwrap();
    let text = String::from_utf8(chunk.to_vec()).unwrap();
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(lines[0].starts_with("id: ") && lines[0].ends_with(".0~"), "{text:?}");
    assert_eq!(lines[1], "event: session");
    assert!(lines[2].starts_with("data: {"), "{text:?}");
    assert_eq!(lines[3], "");
}

#[tokio::test]
async fn sse_is_never_compressed_even_when_asked() {
    let server = TestServer::start().await;
    let response = server.http.get(server.url("/sse")).header("accept-encoding", "gzip, br").send().await.unwrap();
    assert!(response.headers().get("content-encoding").is_none());
}

#[tokio::test]
async fn batches_are_handled_in_order_over_post_and_websocket() {
    let server = TestServer::start().await;
    let mut sse = server.sse("/sse").await;
    let sid = sse.hello().await;
    let batch: Vec<Value> = (0..20).map(|i| json!({"event": "echo", "data": i})).collect();
    let (status, body) = server.post_json(&sid, &Value::Array(batch.clone()).to_string()).await;
    assert_eq!((status, body), (202, json!({"accepted": 20})));
    for i in 0..20 {
        assert_eq!(sse.next().await.data, json!(i));
    }

    let mut ws = server.ws("/ws").await;
    ws.hello().await;
    ws.send(&Value::Array(batch).to_string()).await;
    let mut last = 0;
    for i in 0..20 {
        let event = ws.next().await;
        assert_eq!(event.data, json!(i));
        assert!(seq(&event.id) > last, "cursors strictly increase");
        last = seq(&event.id);
    }
}

#[tokio::test]
async fn text_plain_post_is_one_message_event() {
    let server = TestServer::start().await;
    let mut sse = server.sse("/sse").await;
    let sid = sse.hello().await;
    for content_type in ["text/plain", "text/plain; charset=utf-8", "Text/Plain;charset=UTF-8"] {
        let (status, _) = server.post(&sid, content_type, "just some text {not json".into()).await;
        assert_eq!(status, 202, "{content_type}");
        assert_eq!(sse.next().await.data, json!(REPLY));
    }
    let (status, body) = server.post(&sid, "text/plain; charset=latin1", "x".into()).await;
    assert_eq!(status, 415);
    assert!(body["error"].as_str().unwrap().contains("charset"), "{body}");
}

#[tokio::test]
async fn curl_style_form_content_type_is_read_as_json() {
    let server = TestServer::start().await;
    let mut sse = server.sse("/sse").await;
    let sid = sse.hello().await;
    let (status, _) =
        server.post(&sid, "application/x-www-form-urlencoded", r#"{"event":"message","data":"hi"}"#.into()).await;
    assert_eq!(status, 202);
    assert_eq!(sse.next().await.event, "response");
}

#[tokio::test]
async fn bad_posts_get_explanatory_json_errors() {
    let server = TestServer::start().await;
    let mut sse = server.sse("/sse").await;
    let sid = sse.hello().await;
    let cases: &[(&str, u16, &str)] = &[
        ("{\"event\":", 400, "malformed JSON"),
        ("[]", 400, "empty array"),
        ("42", 400, "expected an object"),
        (r#"{"data":"x"}"#, 400, "missing field `event`"),
        (r#"{"event":7}"#, 400, "`event` must be a string"),
        (r#"[{"event":"a"},{"event":"b","extra":1}]"#, 400, "envelope 1: unknown field `extra`"),
    ];
    for (body, status, needle) in cases {
        let (got, answer) = server.post_json(&sid, body).await;
        assert_eq!(got, *status, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap_or_else(|| panic!("JSON error body for {body}: {answer}"));
        assert!(error.contains(needle), "{body}: {error:?} should mention {needle:?}");
    }
    let (status, answer) = server.post_json("AAAAAAAAAAAAAAAAAAAAAA", r#"{"event":"message"}"#).await;
    assert_eq!(status, 404);
    assert!(answer["error"].as_str().unwrap().contains("session"));
    let (status, _) = server.post_json("not-a-sid", r#"{"event":"message"}"#).await;
    assert_eq!(status, 404);
    let (status, answer) = server.post("", "application/json", "{}".into()).await;
    assert_eq!(status, 404, "{answer}");
    let response = server.http.post(server.url("/sse")).body("{}").send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("sid"));
    let (status, answer) = server.post(&sid, "application/xml", "<x/>".into()).await;
    assert_eq!(status, 415);
    assert!(answer["error"].as_str().unwrap().contains("application/json"));
    // None of that disturbed the session.
    server.post_json(&sid, r#"{"event":"message"}"#).await;
    assert_eq!(sse.next().await.event, "response");
}

/// A body of exactly `len` bytes that is a valid envelope (padding inside the data string).
fn envelope_of_len(len: usize) -> String {
    let frame = r#"{"event":"echo","data":""}"#;
    let mut s = String::from(r#"{"event":"echo","data":""#);
    s.push_str(&"x".repeat(len - frame.len()));
    s.push_str(r#""}"#);
    assert_eq!(s.len(), len);
    s
}

#[tokio::test]
async fn body_limit_is_65536_bytes_with_or_without_content_length() {
    let server = TestServer::start().await;
    let mut sse = server.sse("/sse").await;
    let sid = sse.hello().await;
    let url = server.url(&format!("/sse?sid={sid}"));
    for (len, status) in [(65_536usize, 202u16), (65_537, 413)] {
        let body = envelope_of_len(len);
        // With Content-Length.
        let answer = server.http.post(&url).header("content-type", "application/json").body(body.clone()).send().await.unwrap();
        assert_eq!(answer.status().as_u16(), status, "{len} bytes with Content-Length");
        if status == 413 {
            assert!(answer.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("65536"));
        }
        // Chunked, no Content-Length.
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            body.into_bytes().chunks(1000).map(|c| Ok(c.to_vec())).collect();
        let answer = server
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), status, "{len} bytes chunked");
    }
    // The two accepted bodies were echoed.
    for _ in 0..2 {
        assert_eq!(sse.next().await.data.as_str().unwrap().len(), 65_536 - r#"{"event":"echo","data":""}"#.len());
    }
}

#[tokio::test]
async fn fifty_concurrent_sessions_each_get_exactly_their_own_replies() {
    let server = std::sync::Arc::new(TestServer::start().await);
    let mut tasks = Vec::new();
    for client in 0..50 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let mine: Vec<Value> = (0..10).map(|i| json!(format!("client-{client}-msg-{i}"))).collect();
            if client % 2 == 0 {
                let mut ws = server.ws("/ws").await;
                ws.hello().await;
                for data in &mine {
                    ws.send(&json!({"event": "echo", "data": data}).to_string()).await;
                }
                for data in &mine {
                    assert_eq!(&ws.next().await.data, data, "client {client} over WS");
                }
            } else {
                let mut sse = server.sse("/sse").await;
                let sid = sse.hello().await;
                for data in &mine {
                    let (status, _) = server.post_json(&sid, &json!({"event": "echo", "data": data}).to_string()).await;
                    assert_eq!(status, 202);
                }
                for data in &mine {
                    assert_eq!(&sse.next().await.data, data, "client {client} over SSE");
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
}

#[tokio::test]
async fn keep_alive_comments_flow_at_the_configured_interval() {
    let server = TestServer::with_config(Config { keepalive: Duration::from_millis(100), ..Config::default() }).await;
    let response = server.http.get(server.url("/sse")).send().await.unwrap();
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    let mut comments = 0;
    while comments < 3 {
        let chunk = within("keep-alive comments", body.next()).await.unwrap().unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
        comments = seen.lines().filter(|l| l.starts_with(':')).count();
    }
    assert!(seen.contains(": keep-alive\n"), "{seen:?}");
}

#[tokio::test]
async fn an_event_without_a_handler_is_answered_with_an_error_event() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws").await;
    ws.hello().await;
    ws.send(r#"{"event":"nobody-handles-this","data":1}"#).await;
    let error = ws.next().await;
    assert_eq!(error.event, "error");
    assert_eq!(error.data["event"], "nobody-handles-this");
    ws.send("not json").await;
    let error = ws.next().await;
    assert_eq!(error.event, "error");
    assert!(error.data["error"].as_str().unwrap().contains("malformed JSON"));
    ws.send(r#"{"event":"message"}"#).await;
    assert_eq!(ws.next().await.data, json!(REPLY));
}

#[tokio::test]
async fn the_demo_page_is_served() {
    let server = TestServer::start().await;
    let page = server.http.get(server.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    for id in ["id=\"message\"", "id=\"log\"", "id=\"transport\"", "id=\"sid\"", "switchyard.js"] {
        assert!(html.contains(id), "demo page lacks {id}");
    }
    let client = server.http.get(server.url("/switchyard.js")).send().await.unwrap();
    assert_eq!(client.status(), 200);
}

#[tokio::test]
async fn a_websocket_message_just_under_the_size_limit_arrives_whole() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws").await;
    ws.hello().await;
    let big = "z".repeat(65_000);
    ws.send(&json!({"event": "echo", "data": big}).to_string()).await;
    assert_eq!(ws.next().await.data, json!(big));
}

#[tokio::test]
async fn the_hello_announces_the_limits_and_how_long_each_transport_may_stay_silent() {
    let server = TestServer::with_config(Config {
        max_body: 4096,
        limits: switchyard::protocol::Limits { max_batch: 7, ..Default::default() },
        keepalive: Duration::from_secs(3),
        poll_timeout: Duration::from_secs(4),
        ws_ping: Duration::from_secs(5),
        ..Config::default()
    })
    .await;
    let hello = |sid: &str, transport: &str, resumed: bool, heartbeat: Option<u64>| {
        let mut expected = json!({"sid": sid, "transport": transport, "resumed": resumed, "received": 0,
                                  "max_body": 4096, "max_batch": 7});
        if let Some(ms) = heartbeat {
            expected["heartbeat"] = json!(ms);
        }
        expected
    };
    // SSE: the keep-alive interval; polling: the poll timeout.
    let mut sse = server.sse("/sse").await;
    let first = sse.next().await;
    let sid = hello_sid(first.clone(), "sse");
    assert_eq!(first.data, hello(&sid, "sse", false, Some(3000)));
    let (_, events) = server.poll("").await;
    let poll_sid = hello_sid(events[0].clone(), "polling");
    assert_eq!(events[0].data, hello(&poll_sid, "polling", false, Some(4000)));
    // WebSocket: the ping interval only for a client that asked for heartbeats, new or resuming.
    let mut ws = server.ws("/ws").await;
    let first = ws.next().await;
    let ws_sid = hello_sid(first.clone(), "websocket");
    assert_eq!(first.data, hello(&ws_sid, "websocket", false, None));
    let mut ws = server.ws("/ws?heartbeat=1").await;
    let first = ws.next().await;
    let ws_sid = hello_sid(first.clone(), "websocket");
    assert_eq!(first.data, hello(&ws_sid, "websocket", false, Some(5000)));
    let mut resumed = server.ws(&format!("/ws?sid={sid}&heartbeat=1&page_param=kept")).await;
    assert_eq!(resumed.next().await.data, hello(&sid, "websocket", true, Some(5000)));
}

/// The next text frame, counting the pings before it.
async fn next_text(ws: &mut WsClient, pings: &mut usize) -> String {
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match within("a WebSocket frame", ws.socket.next()).await {
            Some(Ok(Message::Ping(_))) => *pings += 1,
            Some(Ok(Message::Text(text))) => return text.as_str().to_owned(),
            other => panic!("expected a text frame or a ping, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_websocket_that_asks_gets_a_heartbeat_frame_with_every_ping_and_it_is_no_event() {
    use tokio_tungstenite::tungstenite::Message;
    const HEARTBEAT: &str = r#"{"event":"heartbeat","data":null}"#;
    let server = TestServer::with_config(Config { ws_ping: Duration::from_millis(100), ..Config::default() }).await;
    let mut ws = server.ws("/ws?heartbeat=1").await;
    let hello = ws.next().await;
    let sid = hello_sid(hello.clone(), "websocket");
    // Each tick: the heartbeat frame, then the protocol ping.
    for tick in 0..3 {
        let mut pings = 0;
        assert_eq!(next_text(&mut ws, &mut pings).await, HEARTBEAT, "tick {tick}");
        let ping = within("the ping after a heartbeat", ws.socket.next()).await;
        assert!(matches!(ping, Some(Ok(Message::Ping(_)))), "tick {tick}: {ping:?}");
    }
    // Heartbeats take no place in the session: the first event is still number 1, and a
    // replay from the hello's cursor holds that event and no heartbeat.
    ws.send(r#"{"event":"echo","data":"after heartbeats"}"#).await;
    let mut pings = 0;
    let echo = loop {
        let text = next_text(&mut ws, &mut pings).await;
        if text != HEARTBEAT {
            break received_from_envelope(serde_json::from_str(&text).unwrap());
        }
    };
    assert_eq!((echo.data, seq(&echo.id)), (json!("after heartbeats"), 1));
    drop(ws);
    let (status, events) = server.poll(&format!("?sid={sid}&last_event_id={}", hello.id)).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["session", "echo"]);

    // A resuming socket asks again and gets them again.
    let mut resumed = server.ws(&format!("/ws?sid={sid}&heartbeat=1")).await;
    assert_eq!(resumed.hello().await, sid);
    assert_eq!(next_text(&mut resumed, &mut pings).await, HEARTBEAT);
}

#[tokio::test]
async fn a_websocket_that_does_not_ask_gets_pings_and_no_heartbeat_frames() {
    let server = TestServer::with_config(Config { ws_ping: Duration::from_millis(100), ..Config::default() }).await;
    for path in ["/ws", "/ws?heartbeat=0"] {
        let mut ws = server.ws(path).await;
        ws.hello().await;
        // Three ping ticks, and nothing else on the socket between them.
        within("three pings", async {
            for _ in 0..3 {
                match ws.socket.next().await {
                    Some(Ok(tokio_tungstenite::tungstenite::Message::Ping(_))) => {}
                    other => panic!("{path}: expected only pings, got {other:?}"),
                }
            }
        })
        .await;
    }
}
