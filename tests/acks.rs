//! Acknowledgements over real sockets: a client's request (`"ack": N`) answered with the
//! handler's value on every transport, also after a resume on another transport and once for a
//! numbered resend; and the server's requests answered by the client, or failing on timeout and
//! on the session's end.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use switchyard::hub::AckError;
use switchyard::{Config, Sid};

/// The envelope `ack` answering request `number` with `data`, whatever its cursor.
fn answer(envelope: &Value, number: u64) -> &Value {
    assert_eq!(envelope["event"], "ack", "{envelope}");
    assert_eq!(envelope["ack"], number, "{envelope}");
    assert!(envelope["id"].as_str().is_some_and(|id| id.contains('.')), "an answer is an event with a cursor: {envelope}");
    assert!(envelope.get("data").is_some() != envelope.get("error").is_some(), "data or error, not both: {envelope}");
    envelope.get("data").unwrap_or(&envelope["error"])
}

/// The requests every transport is asked, in one batch, and the envelopes that must answer
/// them, in order.
const REQUESTS: &str = r#"[{"event":"sum","data":[1,2,3],"ack":7},
    {"event":"sum","data":"x","ack":8},
    {"event":"nope","data":1,"ack":9},
    {"event":"echo","data":"hi","ack":9007199254740991},
    {"event":"sum","data":[5]}]"#;

fn check_answers(envelopes: &[Value]) {
    let names: Vec<&str> = envelopes.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(names, ["ack", "ack", "ack", "echo", "ack"], "{envelopes:?}");
    assert_eq!(answer(&envelopes[0], 7), &json!(6));
    assert_eq!(envelopes[0].get("error"), None);
    let failed = answer(&envelopes[1], 8);
    assert!(envelopes[1].get("data").is_none(), "an error answer has no data: {}", envelopes[1]);
    assert_eq!(failed["event"], "sum");
    assert!(failed["error"].as_str().unwrap().starts_with("not a list of integers"), "{failed}");
    let unclaimed = answer(&envelopes[2], 9);
    assert_eq!(*unclaimed, json!({"error": "no handler for event `nope`", "event": "nope"}));
    assert_eq!(envelopes[3]["data"], "hi");
    // A handler that returns nothing answers `null`, after what it emitted.
    assert_eq!(answer(&envelopes[4], 9_007_199_254_740_991), &Value::Null);
    // The last request asked no answer, and got none.
}

#[tokio::test]
async fn requests_are_answered_with_the_handlers_value_over_websocket() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws").await;
    ws.hello().await;
    ws.send(REQUESTS).await;
    let mut envelopes = Vec::new();
    for _ in 0..5 {
        envelopes.push(ws.next_envelope().await);
    }
    check_answers(&envelopes);
    // Nothing more: the request without `ack` was handled, silently.
    ws.send(r#"{"event":"echo","data":"after"}"#).await;
    assert_eq!(ws.next_envelope().await["data"], "after");
}

#[tokio::test]
async fn requests_are_answered_with_the_handlers_value_over_sse_and_post() {
    let server = TestServer::start().await;
    let mut sse = server.sse_frames("/sse", None).await;
    let hello = sse.next_envelope().await;
    let sid = hello["data"]["sid"].as_str().unwrap().to_owned();
    assert_eq!(hello.get("ack"), None);
    assert_eq!(server.post_json(&sid, REQUESTS).await, (202, json!({"accepted": 5})));
    let mut envelopes = Vec::new();
    for _ in 0..5 {
        envelopes.push(sse.next_envelope().await);
    }
    check_answers(&envelopes);
}

#[tokio::test]
async fn requests_are_answered_with_the_handlers_value_over_long_polling() {
    let server = TestServer::start().await;
    let (_, hello) = server.poll_envelopes("").await;
    let sid = hello[0]["data"]["sid"].as_str().unwrap().to_owned();
    let cursor = hello[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(server.post_json(&sid, REQUESTS).await.0, 202);
    let (status, envelopes) = server.poll_envelopes(&format!("?sid={sid}&last_event_id={cursor}")).await;
    assert_eq!(status, 200);
    check_answers(&envelopes);
}

#[tokio::test]
async fn an_answer_made_while_no_transport_held_the_session_comes_with_the_resume_on_another_transport() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws").await;
    let hello = ws.next_envelope().await;
    let sid: Sid = hello["data"]["sid"].as_str().unwrap().parse().unwrap();
    let cursor = hello["id"].as_str().unwrap().to_owned();
    drop(ws);
    server.wait_for_transport(&sid, None).await;
    // Sent over HTTP while no transport holds the session: the answer waits in its buffer.
    assert_eq!(server.post_json(sid.as_str(), r#"{"event":"sum","data":[20,22],"ack":1}"#).await.0, 202);
    let mut sse = server.sse_frames(&format!("/sse?sid={sid}"), Some(&cursor)).await;
    let hello = sse.next_envelope().await;
    assert_eq!((hello["event"].as_str(), hello["data"]["resumed"].as_bool()), (Some("session"), Some(true)));
    assert_eq!(answer(&sse.next_envelope().await, 1), &json!(42));
    // And again from the same cursor over long-polling: the buffer replays it.
    let (_, envelopes) = server.poll_envelopes(&format!("?sid={sid}&last_event_id={cursor}")).await;
    assert_eq!(envelopes.len(), 2, "{envelopes:?}");
    assert_eq!(answer(&envelopes[1], 1), &json!(42));
}

#[tokio::test]
async fn a_numbered_request_sent_again_after_a_drop_is_handled_and_answered_once() {
    let server = TestServer::start().await;
    let (_, hello) = server.poll_envelopes("").await;
    let sid = hello[0]["data"]["sid"].as_str().unwrap().to_owned();
    let cursor = hello[0]["id"].as_str().unwrap().to_owned();
    let request = r#"[{"event":"sum","data":[1,1],"seq":1,"ack":5},{"event":"echo","data":"once","seq":2,"ack":6}]"#;
    assert_eq!(server.post_json(&sid, request).await.0, 202);
    // The client did not see the 202 (the connection dropped), so it sends the batch again.
    assert_eq!(server.post_json(&sid, request).await.0, 202);
    // Resumed over SSE: the hello says both sends were handled, then come their replies.
    let mut sse = server.sse_frames(&format!("/sse?sid={sid}"), Some(&cursor)).await;
    let mut envelopes = Vec::new();
    for _ in 0..4 {
        envelopes.push(sse.next_envelope().await);
    }
    let names: Vec<&str> = envelopes.iter().map(|e| e["event"].as_str().unwrap()).collect();
    // Each handler ran once (one `echo`), each request was answered once.
    assert_eq!(names, ["session", "ack", "echo", "ack"], "{envelopes:?}");
    assert_eq!(envelopes[0]["data"]["received"], 2);
    assert_eq!(answer(&envelopes[1], 5), &json!(2));
    assert_eq!(answer(&envelopes[3], 6), &Value::Null);
    // Nothing follows: sent once more, the batch is skipped again.
    assert_eq!(server.post_json(&sid, request).await.0, 202);
    assert_eq!(server.post_json(&sid, r#"{"event":"echo","data":"then"}"#).await.0, 202);
    assert_eq!(sse.next_envelope().await["data"], "then");
}

#[tokio::test]
async fn the_server_asks_and_the_client_answers_over_each_transport() {
    let server = TestServer::start().await;
    let hub = server.gateway.hub().clone();
    let ask = |sid: String, question: Value| {
        let hub = hub.clone();
        tokio::spawn(async move { hub.emit_with_ack(&sid.parse().unwrap(), "question", &question, WAIT).await })
    };

    // WebSocket: the request comes as a frame, the answer goes back as one.
    let mut ws = server.ws("/ws").await;
    let sid = ws.hello().await;
    let asked = ask(sid, json!("ws?"));
    let request = ws.next_envelope().await;
    assert_eq!((&request["event"], &request["data"]), (&json!("question"), &json!("ws?")));
    let number = request["ack"].as_u64().expect("the request carries a number");
    assert!((1..=9_007_199_254_740_991).contains(&number));
    ws.send(&json!({"event": "ack", "ack": number, "data": {"yes": "over ws"}}).to_string()).await;
    assert_eq!(within("the WebSocket answer", asked).await.unwrap(), Ok(json!({"yes": "over ws"})));

    // SSE: the request's number in its `ack:` line, the answer POSTed, numbered like any send.
    let mut sse = server.sse_frames("/sse", None).await;
    let sid = sse.next_envelope().await["data"]["sid"].as_str().unwrap().to_owned();
    let asked = ask(sid.clone(), json!("sse?"));
    let request = sse.next_envelope().await;
    assert_eq!(request["data"], "sse?");
    let body = json!({"event": "ack", "ack": request["ack"], "data": "over sse", "seq": 1}).to_string();
    assert_eq!(server.post_json(&sid, &body).await.0, 202);
    assert_eq!(within("the SSE answer", asked).await.unwrap(), Ok(json!("over sse")));

    // Long-polling, through a handler: `ask` waits for the answer in a task of its own.
    let (_, hello) = server.poll_envelopes("").await;
    let sid = hello[0]["data"]["sid"].as_str().unwrap().to_owned();
    let mut cursor = hello[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(server.post_json(&sid, r#"{"event":"ask","data":{"q":"poll?"}}"#).await.0, 202);
    let (_, envelopes) = server.poll_envelopes(&format!("?sid={sid}&last_event_id={cursor}")).await;
    assert_eq!((&envelopes[0]["event"], &envelopes[0]["data"]), (&json!("question"), &json!("poll?")));
    cursor = envelopes[0]["id"].as_str().unwrap().to_owned();
    let body = json!({"event": "ack", "ack": envelopes[0]["ack"], "data": 42}).to_string();
    assert_eq!(server.post_json(&sid, &body).await.0, 202);
    let (_, envelopes) = server.poll_envelopes(&format!("?sid={sid}&last_event_id={cursor}")).await;
    assert_eq!((&envelopes[0]["event"], &envelopes[0]["data"]), (&json!("told"), &json!({"answer": 42})));
}

#[tokio::test]
async fn a_handler_may_wait_for_the_clients_answer_over_websocket_and_sse() {
    let server = TestServer::start().await;
    // WebSocket: the handler runs in the socket's task, which goes on writing the session's
    // events and reading answers while it waits; other frames wait their turn.
    let mut ws = server.ws("/ws").await;
    ws.hello().await;
    ws.send(r#"{"event":"confirm","data":"sure?","ack":1}"#).await;
    let request = ws.next_envelope().await;
    assert_eq!((&request["event"], &request["data"]), (&json!("question"), &json!("sure?")));
    // An event sent before the answer is handled after the handler that waits, in order.
    ws.send(r#"{"event":"echo","data":"queued"}"#).await;
    ws.send(&json!({"event": "ack", "ack": request["ack"], "data": "yes"}).to_string()).await;
    let answered = ws.next_envelope().await;
    assert_eq!((&answered["event"], &answered["ack"], &answered["data"]), (&json!("ack"), &json!(1), &json!("yes")));
    assert_eq!(ws.next_envelope().await["data"], "queued");

    // SSE: the POST waits for the handler; the answer comes over another POST.
    let mut sse = server.sse_frames("/sse", None).await;
    let sid = sse.next_envelope().await["data"]["sid"].as_str().unwrap().to_owned();
    let asking = tokio::spawn({
        let (http, url) = (server.http.clone(), server.url(&format!("/sse?sid={sid}")));
        async move { http.post(url).header("content-type", "application/json").body(r#"{"event":"confirm","data":"ok?","ack":2}"#).send().await.unwrap().status() }
    });
    let request = sse.next_envelope().await;
    assert_eq!(request["data"], "ok?");
    let body = json!({"event": "ack", "ack": request["ack"], "data": {"ok": true}}).to_string();
    assert_eq!(server.post_json(&sid, &body).await.0, 202);
    let answered = sse.next_envelope().await;
    assert_eq!((&answered["ack"], &answered["data"]), (&json!(2), &json!({"ok": true})));
    assert_eq!(within("the POST that waited", asking).await.unwrap(), 202);
}

#[tokio::test]
async fn an_answer_sent_twice_or_too_late_changes_nothing() {
    let server = TestServer::start().await;
    let hub = server.gateway.hub().clone();
    let mut ws = server.ws("/ws").await;
    let sid: Sid = ws.hello().await.parse().unwrap();
    let short = Duration::from_millis(100);
    assert_eq!(hub.emit_with_ack(&sid, "question", &json!(1), short).await, Err(AckError::Timeout(short)));
    let late = ws.next_envelope().await;
    // Too late, and twice: taken by no request, and handled by no handler either.
    ws.send(&json!([{"event": "ack", "ack": late["ack"], "data": 1}, {"event": "ack", "ack": late["ack"], "data": 2}]).to_string()).await;
    ws.send(r#"{"event":"echo","data":"next"}"#).await;
    assert_eq!(ws.next_envelope().await["event"], "echo", "nothing came of the late answers");
}

#[tokio::test]
async fn a_server_request_fails_when_its_session_expires_and_when_there_is_none() {
    let config = Config { grace: Duration::from_millis(300), ..Config::default() };
    let server = TestServer::with_config(config).await;
    let hub = server.gateway.hub().clone();
    let mut sse = server.sse("/sse").await;
    let sid: Sid = sse.hello().await.parse().unwrap();
    drop(sse);
    server.wait_for_transport(&sid, None).await;
    // Nobody will answer: the session expires first, long before the timeout.
    let started = std::time::Instant::now();
    assert_eq!(hub.emit_with_ack(&sid, "question", &json!(1), WAIT).await, Err(AckError::SessionEnded));
    assert!(started.elapsed() < WAIT / 2, "rejected at expiry, not at the timeout");
    // The session is gone now: nothing can be asked of it.
    let err = hub.emit_with_ack(&sid, "question", &json!(1), WAIT).await.unwrap_err();
    assert!(matches!(err, AckError::NotSent(_)), "{err:?}");
    assert!(err.to_string().contains("unknown or expired session"), "{err}");
}
