//! Sessions across transports: switching, newest-wins, resume, overflow, expiry, long-polling.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use switchyard::{Config, Sid, Transport};

async fn emit(server: &TestServer, sid: &str, data: Value) -> String {
    let sid: Sid = sid.parse().unwrap();
    server.gateway.hub().emit(&sid, "news", &data).await.expect("emit to a live session").to_string()
}

#[tokio::test]
async fn websocket_to_sse_switch_with_cursor_loses_nothing() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws").await;
    let sid = ws.hello().await;
    ws.send(r#"{"event":"echo","data":1}"#).await;
    let first = ws.next().await;
    assert_eq!(first.data, json!(1));
    // Drop the socket without a word, emit while nothing is attached, switch to SSE.
    drop(ws);
    emit(&server, &sid, json!(2)).await;
    emit(&server, &sid, json!(3)).await;
    let mut sse = server.sse(&format!("/sse?sid={sid}&last_event_id={}", first.id)).await;
    let hello = sse.next().await;
    assert_eq!(hello_sid(hello.clone(), "sse"), sid);
    assert_eq!(hello.data["resumed"], true);
    assert_eq!(sse.next().await.data, json!(2));
    assert_eq!(sse.next().await.data, json!(3));
    server.post_json(&sid, r#"{"event":"echo","data":4}"#).await;
    assert_eq!(sse.next().await.data, json!(4));
}

#[tokio::test]
async fn sse_to_websocket_switch_closes_the_stream_and_continues_on_the_socket() {
    let server = TestServer::start().await;
    let mut sse = server.sse("/sse").await;
    let sid = sse.hello().await;
    server.post_json(&sid, r#"{"event":"echo","data":"a"}"#).await;
    let a = sse.next().await;
    emit(&server, &sid, json!("b")).await;
    let b = sse.next().await;
    assert_eq!(b.data, json!("b"));
    // The client saw `b`; it moves up to WebSocket from there.
    let mut ws = server.ws(&format!("/ws?sid={sid}&last_event_id={}", b.id)).await;
    assert_eq!(ws.hello().await, sid);
    sse.expect_end().await;
    ws.send(r#"{"event":"echo","data":"c"}"#).await;
    let c = ws.next().await;
    assert_eq!(c.data, json!("c"));
    assert!(seq(&a.id) < seq(&b.id) && seq(&b.id) < seq(&c.id));
}

#[tokio::test]
async fn newest_transport_wins_and_the_old_one_is_closed() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws").await;
    let sid = ws.hello().await;
    let mut ws2 = server.ws(&format!("/ws?sid={sid}")).await;
    assert_eq!(ws2.hello().await, sid);
    let (code, reason) = ws.expect_close().await;
    assert_eq!((u16::from(code), reason.as_str()), (4000, "superseded"));

    let mut sse = server.sse(&format!("/sse?sid={sid}")).await;
    assert_eq!(sse.hello().await, sid);
    let (code, _) = ws2.expect_close().await;
    assert_eq!(u16::from(code), 4000);
    ws2.socket.close(None).await.ok();

    let mut sse2 = server.sse(&format!("/sse?sid={sid}")).await;
    assert_eq!(sse2.hello().await, sid);
    sse.expect_end().await;
    server.post_json(&sid, r#"{"event":"message"}"#).await;
    assert_eq!(sse2.next().await.data, json!("Message received!"));
}

#[tokio::test]
async fn resume_by_sid_and_cursor_after_a_drop_replays_exactly_what_was_missed() {
    let server = TestServer::start().await;
    let mut sse = server.sse("/sse").await;
    let sid = sse.hello().await;
    let mut seen = Vec::new();
    for i in 0..5 {
        emit(&server, &sid, json!(i)).await;
        seen.push(sse.next().await);
    }
    drop(sse);
    // The client got events 0..5; it missed 5..10, emitted while no transport was attached.
    for i in 5..10 {
        emit(&server, &sid, json!(i)).await;
    }
    let last = seen.last().unwrap().id.clone();
    let mut sse = server.sse(&format!("/sse?sid={sid}&last_event_id={last}")).await;
    sse.hello().await;
    for i in 5..10 {
        let event = sse.next().await;
        assert_eq!(event.data, json!(i), "replayed in order, once");
        seen.push(event);
    }
    emit(&server, &sid, json!(10)).await;
    assert_eq!(sse.next().await.data, json!(10), "nothing else was replayed");
    // Resuming from an older cursor replays from there (the server keeps what it wrote).
    let mut ws = server.ws(&format!("/ws?sid={sid}&last_event_id={}", seen[7].id)).await;
    ws.hello().await;
    for i in 8..=10 {
        assert_eq!(ws.next().await.data, json!(i));
    }
}

#[tokio::test]
async fn last_event_id_alone_resumes_the_session_it_came_from() {
    let server = TestServer::start().await;
    let mut sse = server.sse("/sse").await;
    let sid = sse.hello().await;
    emit(&server, &sid, json!("one")).await;
    let one = sse.next().await;
    drop(sse);
    emit(&server, &sid, json!("two")).await;
    // What a browser's EventSource('/sse') sends by itself when it reconnects.
    let mut sse = server.sse_with("/sse", Some(&one.id)).await;
    let hello = sse.next().await;
    assert_eq!(hello_sid(hello.clone(), "sse"), sid);
    assert_eq!(hello.data["resumed"], true);
    assert_eq!(sse.next().await.data, json!("two"));
    // The header beats a stale cursor left in the URL.
    let two_id = {
        emit(&server, &sid, json!("three")).await;
        sse.next().await.id
    };
    drop(sse);
    emit(&server, &sid, json!("four")).await;
    let mut sse = server.sse_with(&format!("/sse?sid={sid}&last_event_id={}", one.id), Some(&two_id)).await;
    sse.hello().await;
    assert_eq!(sse.next().await.data, json!("four"));
}

#[tokio::test]
async fn the_hello_cursor_is_a_resume_point_that_loses_nothing() {
    let server = TestServer::start().await;
    let mut sse = server.sse("/sse").await;
    let sid = sse.hello().await;
    emit(&server, &sid, json!(1)).await;
    let one = sse.next().await;
    drop(sse);
    emit(&server, &sid, json!(2)).await;
    let mut sse = server.sse(&format!("/sse?sid={sid}&last_event_id={}", one.id)).await;
    let hello = sse.next().await;
    assert!(hello.id.ends_with('~'));
    // The client drops right after the hello, before the replay reached it.
    drop(sse);
    let mut sse = server.sse_with("/sse", Some(&hello.id)).await;
    sse.hello().await;
    assert_eq!(sse.next().await.data, json!(2));
}

#[tokio::test]
async fn attach_without_cursor_gets_what_no_transport_was_handed() {
    let server = TestServer::start().await;
    let (_, events) = server.poll("").await;
    let sid = hello_sid(events[0].clone(), "polling");
    emit(&server, &sid, json!("while away")).await;
    let mut sse = server.sse(&format!("/sse?sid={sid}")).await;
    sse.hello().await;
    assert_eq!(sse.next().await.data, json!("while away"));
}

#[tokio::test]
async fn buffer_overflow_is_announced_with_a_gap_before_continuing() {
    let server = TestServer::with_config(Config { buffer: 4, ..Config::default() }).await;
    let mut sse = server.sse("/sse").await;
    let sid = sse.hello().await;
    emit(&server, &sid, json!(0)).await;
    let zero = sse.next().await;
    drop(sse);
    for i in 1..=10 {
        emit(&server, &sid, json!(i)).await;
    }
    let mut sse = server.sse(&format!("/sse?sid={sid}&last_event_id={}", zero.id)).await;
    sse.hello().await;
    let gap = sse.next().await;
    assert_eq!(gap.event, "gap");
    assert_eq!(gap.data["reason"], "overflow");
    assert_eq!(gap.data["lost"], 6, "events 1..=6 fell out of a 4-event buffer");
    for i in 7..=10 {
        assert_eq!(sse.next().await.data, json!(i));
    }
}

#[tokio::test]
async fn a_reader_outpaced_by_the_ring_is_detached_and_told_what_it_lost_on_resume() {
    let server = TestServer::with_config(Config { buffer: 2, ..Config::default() }).await;
    let mut ws = server.ws("/ws").await;
    let sid = ws.hello().await;
    emit(&server, &sid, json!(1)).await;
    let one = ws.next().await;
    assert_eq!(one.data, json!(1));
    // 199 events in one go into a 2-event ring: the socket cannot have read them all.
    let hub = server.gateway.hub().clone();
    let parsed: Sid = sid.parse().unwrap();
    for i in 2..=200 {
        hub.emit(&parsed, "news", &json!(i)).await.unwrap();
    }
    // Whatever the socket got before it was detached is in order; then it is closed as slow.
    let mut last = one;
    loop {
        match within("a frame", futures_util::StreamExt::next(&mut ws.socket)).await.unwrap().unwrap() {
            tokio_tungstenite::tungstenite::Message::Text(text) => {
                let event = received_from_envelope(serde_json::from_str(text.as_str()).unwrap());
                assert_eq!(seq(&event.id), seq(&last.id) + 1, "in order, no silent loss");
                last = event;
            }
            tokio_tungstenite::tungstenite::Message::Close(Some(frame)) => {
                assert_eq!((u16::from(frame.code), frame.reason.as_str()), (4001, "slow consumer"));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Resuming from the last event seen: an exact gap notice, then the ring's events.
    let mut sse = server.sse(&format!("/sse?sid={sid}&last_event_id={}", last.id)).await;
    sse.hello().await;
    let gap = sse.next().await;
    assert_eq!(gap.event, "gap");
    assert_eq!(gap.data["reason"], "overflow");
    assert_eq!(gap.data["lost"].as_u64().unwrap(), 198 - seq(&last.id));
    assert_eq!(sse.next().await.data, json!(199));
    assert_eq!(sse.next().await.data, json!(200));
}

#[tokio::test]
async fn sessions_expire_after_the_grace_period() {
    let server = TestServer::with_config(Config { grace: Duration::from_millis(200), ..Config::default() }).await;
    let mut sse = server.sse("/sse").await;
    let sid = sse.hello().await;
    emit(&server, &sid, json!(1)).await;
    let one = sse.next().await;
    // Attached sessions never expire: a session left without a transport after this one was
    // attached runs out its grace period and is swept away, and this one is still there.
    let mut left = server.sse("/sse").await;
    let left_sid = left.hello().await;
    drop(left);
    wait_until("the detached session to expire", || async {
        server.post_json(&left_sid, r#"{"event":"message"}"#).await.0 == 404
    })
    .await;
    assert_eq!(server.post_json(&sid, r#"{"event":"message"}"#).await.0, 202);
    drop(sse);
    wait_until("the session to expire once detached", || async {
        server.post_json(&sid, r#"{"event":"message"}"#).await.0 == 404
    })
    .await;
    // Attaching to it now gives a fresh session and says so.
    let mut sse = server.sse(&format!("/sse?sid={sid}&last_event_id={}", one.id)).await;
    let hello = sse.next().await;
    let fresh = hello_sid(hello.clone(), "sse");
    assert_ne!(fresh, sid);
    assert_eq!(hello.data["resumed"], false);
    let gap = sse.next().await;
    assert_eq!((gap.event.as_str(), &gap.data["reason"]), ("gap", &json!("expired")));
    // Same over WebSocket and by Last-Event-ID alone.
    let mut ws = server.ws(&format!("/ws?sid={sid}")).await;
    ws.hello().await;
    assert_eq!(ws.next().await.data["reason"], "expired");
    let mut sse = server.sse_with("/sse", Some(&one.id)).await;
    sse.hello().await;
    assert_eq!(sse.next().await.data["reason"], "expired");
}

#[tokio::test]
async fn cursors_that_cannot_be_placed_start_a_fresh_session_with_a_gap() {
    let server = TestServer::start().await;
    let mut sse = server.sse("/sse").await;
    let sid = sse.hello().await;
    emit(&server, &sid, json!(1)).await;
    let mut other = server.sse("/sse").await;
    let other_sid = other.hello().await;
    for cursor in [
        "garbage".to_owned(),
        format!("{sid}.99"),           // beyond anything sent
        format!("{other_sid}.0~"),     // another session's cursor with this sid
        format!("{sid}.01"),           // not canonical
    ] {
        let mut attempt = server.sse(&format!("/sse?sid={sid}&last_event_id={cursor}")).await;
        let fresh = attempt.hello().await;
        assert_ne!(fresh, sid, "{cursor}");
        assert_ne!(fresh, other_sid, "{cursor}");
        let gap = attempt.next().await;
        assert_eq!((gap.event.as_str(), &gap.data["reason"]), ("gap", &json!("bad_cursor")), "{cursor}");
    }
    let mut ws = server.ws("/ws?sid=%2F%2F").await;
    ws.hello().await;
    assert_eq!(ws.next().await.data["reason"], "invalid_sid");
}

#[tokio::test]
async fn long_polling_answers_at_once_waits_and_times_out() {
    let server = TestServer::with_config(Config { poll_timeout: Duration::from_millis(300), ..Config::default() }).await;
    let (status, events) = server.poll("").await;
    assert_eq!(status, 200);
    let hello = events[0].clone();
    let sid = hello_sid(hello.clone(), "polling");
    assert_eq!(events.len(), 1);
    // Nothing pending: waits, then answers [].
    let started = std::time::Instant::now();
    let (status, events) = server.poll(&format!("?sid={sid}&last_event_id={}", hello.id)).await;
    assert_eq!((status, events.len()), (200, 0));
    assert!(started.elapsed() >= Duration::from_millis(250));
    // Pending: answers at once, all of them, no new hello for a continuing poll.
    server.post_json(&sid, r#"[{"event":"echo","data":1},{"event":"echo","data":2}]"#).await;
    let (_, events) = server.poll(&format!("?sid={sid}&last_event_id={}", hello.id)).await;
    assert_eq!(events.iter().map(|e| e.data.clone()).collect::<Vec<_>>(), vec![json!(1), json!(2)]);
    // A waiting poll gets the event as soon as it is emitted.
    let last = events[1].id.clone();
    let waiting = {
        let url = server.url(&format!("/poll?sid={sid}&last_event_id={last}"));
        let http = server.http.clone();
        tokio::spawn(async move { http.get(url).send().await.unwrap().json::<Value>().await.unwrap() })
    };
    server.wait_for_transport(&sid.parse().unwrap(), Some(Transport::Polling)).await;
    server.post_json(&sid, r#"{"event":"echo","data":3}"#).await;
    let answer = within("waiting poll", waiting).await.unwrap();
    assert_eq!(answer[0]["data"], json!(3));
}

#[tokio::test]
async fn a_waiting_poll_is_superseded_by_a_newer_transport() {
    let server = TestServer::start().await;
    let (_, events) = server.poll("").await;
    let sid = hello_sid(events[0].clone(), "polling");
    let waiting = {
        let url = server.url(&format!("/poll?sid={sid}&last_event_id={}", events[0].id));
        let http = server.http.clone();
        tokio::spawn(async move {
            let response = http.get(url).send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        })
    };
    server.wait_for_transport(&sid.parse().unwrap(), Some(Transport::Polling)).await;
    let mut ws = server.ws(&format!("/ws?sid={sid}")).await;
    ws.hello().await;
    let (status, body) = within("superseded poll", waiting).await.unwrap();
    assert_eq!(status, 409);
    assert!(body["error"].as_str().unwrap().contains("superseded"));
}

#[tokio::test]
async fn post_alias_under_poll_sends_events() {
    let server = TestServer::start().await;
    let (_, events) = server.poll("").await;
    let sid = hello_sid(events[0].clone(), "polling");
    let response = server
        .http
        .post(server.url(&format!("/poll?sid={sid}")))
        .header("content-type", "application/json")
        .body(r#"{"event":"message","data":"hi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let (_, events) = server.poll(&format!("?sid={sid}&last_event_id={}", events[0].id)).await;
    assert_eq!(events[0].data, json!("Message received!"));
}

#[tokio::test]
async fn websocket_pings_and_drops_a_silent_peer() {
    let server = TestServer::with_config(Config { ws_ping: Duration::from_millis(100), ..Config::default() }).await;
    let mut ws = server.ws("/ws").await;
    let sid = ws.hello().await;
    let ping = within("a ping", async {
        loop {
            if let Some(Ok(tokio_tungstenite::tungstenite::Message::Ping(_))) = futures_util::StreamExt::next(&mut ws.socket).await {
                return;
            }
        }
    });
    ping.await;
    // Stop reading: the client no longer answers pings, so the server drops it.
    let parsed: Sid = sid.parse().unwrap();
    server.wait_for_transport(&parsed, None).await;
    assert!(server.gateway.hub().contains(&parsed).await, "the session outlives the dead socket");
}

#[tokio::test]
async fn websocket_pings_keep_coming_while_the_peer_is_busy() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let server = TestServer::with_config(Config { ws_ping: Duration::from_millis(100), ..Config::default() }).await;
    let mut ws = server.ws("/ws").await;
    ws.hello().await;
    // Round trips back to back for 8 ping periods: the socket task is never idle for long,
    // and its ping timer fires while it is busy. Every period must still bring a ping.
    let (mut pings, mut replies) = (0, 0);
    let until = tokio::time::Instant::now() + Duration::from_millis(800);
    while tokio::time::Instant::now() < until {
        ws.socket.send(Message::text(r#"{"event":"message","data":"hi"}"#)).await.unwrap();
        loop {
            match within("a frame", ws.socket.next()).await {
                Some(Ok(Message::Ping(_))) => pings += 1,
                Some(Ok(Message::Text(_))) => break replies += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert!(replies > 50, "busy: {replies} round trips");
    assert!(pings >= 5, "{pings} pings in 8 ping periods of steady traffic");
}

#[tokio::test]
async fn numbered_sends_are_handled_once_and_the_hello_says_how_far() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws").await;
    let hello = ws.next().await;
    assert_eq!(hello.data["received"], 0);
    let sid = hello_sid(hello, "websocket");
    ws.send(r#"[{"event":"echo","data":1,"seq":1},{"event":"echo","data":2,"seq":2}]"#).await;
    assert_eq!(ws.next().await.data, json!(1));
    let two = ws.next().await;
    assert_eq!(two.data, json!(2));
    ws.send(r#"{"event":"echo","data":3,"seq":3}"#).await;
    assert_eq!(ws.next().await.data, json!(3));
    // The client drops having seen event 2 only: it cannot know that 3 was handled.
    drop(ws);
    let mut sse = server.sse(&format!("/sse?sid={sid}&last_event_id={}", two.id)).await;
    let hello = sse.next().await;
    assert_eq!(hello.data["received"], 3, "the hello confirms what was handled");
    assert_eq!(sse.next().await.data, json!(3));
    // A client that re-sends from its last confirmed number anyway: duplicates are skipped.
    let (status, _) = server
        .post_json(&sid, r#"[{"event":"echo","data":2,"seq":2},{"event":"echo","data":3,"seq":3},{"event":"echo","data":4,"seq":4}]"#)
        .await;
    assert_eq!(status, 202);
    assert_eq!(sse.next().await.data, json!(4));
    server.post_json(&sid, r#"{"event":"echo","data":"unnumbered"}"#).await;
    assert_eq!(sse.next().await.data, json!("unnumbered"), "nothing but 4 came between");
    let (status, body) = server.post_json(&sid, r#"{"event":"echo","seq":-1}"#).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("`seq`"));
}

#[tokio::test]
async fn keep_alive_writes_find_a_dropped_sse_connection_and_detach_it() {
    let server = TestServer::with_config(Config { keepalive: Duration::from_millis(100), ..Config::default() }).await;
    let (tcp, sid) = server.raw_sse(None).await;
    assert_eq!(server.gateway.hub().info(&sid).await.unwrap().transport, Some(Transport::Sse));
    // The peer vanishes (as behind a proxy that dropped the connection) without a word.
    drop(tcp);
    server.wait_for_transport(&sid, None).await;
    assert!(server.gateway.hub().contains(&sid).await, "the session waits for the client to resume");
}
