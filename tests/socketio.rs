//! `/socket.io/` over raw HTTP (reqwest) and WebSocket (tokio-tungstenite), written from the
//! Engine.IO v4 and Socket.IO v5 protocol documents: the handshake, the protocol's 400 answers,
//! ping/pong and the ping timeout, forced close, the upgrade and what it refuses afterwards,
//! namespaces, binary refusal, maxPayload; and the Socket.IO client as a session of the hub
//! (the seed's reply, rooms with a switchyard client, the publish API, recovery).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::engineio::{connect_answer, error_code, event, path, ws_next, ws_open, ws_send, Polling};
use common::{within, TestServer};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchyard::api::ApiAccess;
use switchyard::{Config, Sid};
use tokio_tungstenite::tungstenite::Message;

fn quick_pings() -> Config {
    Config { sio_ping_interval: Duration::from_millis(300), sio_ping_timeout: Duration::from_millis(300), ..Config::default() }
}

#[tokio::test]
async fn the_handshake_carries_the_protocol_fields() {
    let server = TestServer::start().await;
    let (_, open) = Polling::open(&server).await;
    assert_eq!(open["upgrades"], json!(["websocket"]));
    assert_eq!(open["pingInterval"], 25_000);
    assert_eq!(open["pingTimeout"], 20_000);
    assert_eq!(open["maxPayload"], 65_536);
    assert_eq!(open["sid"].as_str().unwrap().len(), 22);

    // Opened on a WebSocket, the first frame is the open packet, with no upgrade to offer.
    let mut ws = ws_open(&server, "transport=websocket").await;
    let first = ws_next(&mut ws).await;
    let open: Value = serde_json::from_str(first.strip_prefix('0').unwrap()).unwrap();
    assert_eq!(open["upgrades"], json!([]));
    assert_eq!(open["pingInterval"], 25_000);
}

#[tokio::test]
async fn bad_requests_get_400_with_the_engine_io_code() {
    let server = TestServer::start().await;
    let get = |query: &str| server.http.get(server.url(&format!("/socket.io/?{query}")));
    assert_eq!(error_code(&server, get("EIO=3&transport=polling")).await, (400, 5), "old protocol version");
    assert_eq!(error_code(&server, get("transport=polling")).await, (400, 5), "no protocol version");
    assert_eq!(error_code(&server, get("EIO=4&transport=carrier-pigeon")).await, (400, 0), "unknown transport");
    assert_eq!(error_code(&server, get("EIO=4")).await, (400, 0), "no transport");
    assert_eq!(error_code(&server, get("EIO=4&transport=polling&sid=nope")).await, (400, 1), "unknown sid");
    let post = server.http.post(server.url("/socket.io/?EIO=4&transport=polling")).body("40");
    assert_eq!(error_code(&server, post).await, (400, 2), "a handshake by POST");
    let post = server.http.post(server.url("/socket.io/?EIO=4&transport=polling&sid=nope")).body("40");
    assert_eq!(error_code(&server, post).await, (400, 1), "a POST to an unknown sid");
    // A WebSocket request that is not an upgrade.
    assert_eq!(error_code(&server, get("EIO=4&transport=websocket")).await, (400, 3), "websocket without an upgrade");
}

#[tokio::test]
async fn a_socket_io_client_gets_the_seed_reply_with_its_offset() {
    let server = TestServer::start().await;
    let (client, _) = Polling::open(&server).await;
    let answer = client.connect(None).await;
    let pid: Sid = answer["pid"].as_str().unwrap().parse().expect("the pid is a hub session id");
    assert!(answer["sid"].is_string());
    assert_ne!(answer["sid"], answer["pid"], "the public id is not the resume credential");
    assert!(server.gateway.hub().info(&pid).await.is_some(), "the client holds a hub session");

    client.post(r#"42["message","hello"]"#).await;
    assert_eq!(event(&client.next().await), [json!("response"), json!("Message received!"), json!("1")]);
    // Several packets in one body, in order; several arguments arrive as one array of data.
    client.post("42[\"echo\",1,2]\x1e42[\"echo\",{\"a\":true}]\x1e42[\"echo\"]").await;
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(event(&client.next().await));
    }
    assert_eq!(got, [vec![json!("echo"), json!([1, 2]), json!("2")], vec![json!("echo"), json!({"a": true}), json!("3")], vec![
        json!("echo"),
        json!(null),
        json!("4")
    ]]);
    // An event no handler claims gets the hub's `error` event, as any client does.
    client.post(r#"42["nobody-handles-this",1]"#).await;
    let error = event(&client.next().await);
    assert_eq!(error[0], "error");
    assert_eq!(error[1]["event"], "nobody-handles-this");
}

#[tokio::test]
async fn unknown_namespaces_get_connect_error_and_their_packets_are_ignored() {
    let server = TestServer::start().await;
    let (client, _) = Polling::open(&server).await;
    client.post("40/admin,").await;
    assert_eq!(client.next().await, r#"44/admin,{"message":"Invalid namespace"}"#);
    // An event to a namespace the client is not connected to changes nothing; the main one
    // still connects.
    client.post(r#"42/admin,["message","x"]"#).await;
    client.connect(Some(json!({"token": "unused"}))).await;
    client.post(r#"42["message","x"]"#).await;
    assert_eq!(event(&client.next().await)[0], "response");
}

#[tokio::test]
async fn pings_are_answered_by_pongs_and_a_missing_pong_closes_the_session() {
    let server = TestServer::with_config(quick_pings()).await;
    let (client, open) = Polling::open(&server).await;
    assert_eq!(open["pingInterval"], 300);
    for _ in 0..3 {
        assert_eq!(client.get().await, ["2"]);
        client.post("3").await;
    }
    // No pong: once the timeout has passed the session is gone.
    assert_eq!(client.get().await, ["2"]);
    common::wait_until("the session to close after the ping timeout", || async {
        let response = server.http.get(client.url()).timeout(Duration::from_secs(2)).send().await;
        response.is_ok_and(|r| r.status() == 400)
    })
    .await;
    let (status, body) = client.get_raw().await;
    assert_eq!(status, 400);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["code"], 1);

    // Over a WebSocket too.
    let mut ws = ws_open(&server, "transport=websocket").await;
    ws_next(&mut ws).await;
    loop {
        match within("the socket to close after the ping timeout", ws.next()).await {
            Some(Ok(Message::Text(text))) => assert_eq!(text.as_str(), "2", "only pings, left unanswered"),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_close_packet_ends_the_session_and_releases_the_waiting_poll() {
    let server = TestServer::start().await;
    let (client, _) = Polling::open(&server).await;
    let (poll, ()) = tokio::join!(client.get_raw(), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.post("1").await;
    });
    assert_eq!(poll, (200, "6".to_owned()));
    assert_eq!(client.get_raw().await.0, 400);
}

#[tokio::test]
async fn two_polls_at_once_are_a_protocol_error() {
    let server = TestServer::start().await;
    let (client, _) = Polling::open(&server).await;
    let (first, second) = tokio::join!(client.get_raw(), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.get_raw().await
    });
    assert_eq!(second.0, 400);
    assert_eq!(serde_json::from_str::<Value>(&second.1).unwrap()["code"], 3);
    assert_eq!(first, (200, "6".to_owned()), "the session closed; the first poll is released");
    assert_eq!(client.get_raw().await.0, 400, "the session is gone");
}

#[tokio::test]
async fn the_upgrade_probes_then_moves_the_session_to_the_websocket() {
    let server = TestServer::start().await;
    let (client, _) = Polling::open(&server).await;
    let answer = client.connect(None).await;
    let mut ws = ws_open(&server, &format!("transport=websocket&sid={}", client.sid)).await;
    // The client's waiting poll is released with a noop once the probe is answered.
    let (poll, probe) = tokio::join!(client.get(), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ws_send(&mut ws, "2probe").await;
        ws_next(&mut ws).await
    });
    assert_eq!(probe, "3probe");
    assert_eq!(poll, ["6"]);
    ws_send(&mut ws, "5").await;
    // An event sent before the upgrade completed reaches the client over the WebSocket.
    ws_send(&mut ws, r#"42["message","over the websocket"]"#).await;
    assert_eq!(event(&ws_next(&mut ws).await), [json!("response"), json!("Message received!"), json!("1")]);

    // Polling requests are refused from now on, and a second WebSocket for the sid too.
    let (status, body) = client.get_raw().await;
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()["code"].clone()), (400, json!(3)));
    let (status, body) = client.post_raw("42[\"message\",1]").await;
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()["code"].clone()), (400, json!(3)));
    let second = tokio_tungstenite::connect_async(server.ws_url(&path(&format!("transport=websocket&sid={}", client.sid)))).await;
    assert!(second.is_err(), "a second WebSocket for an upgraded session is refused");
    // The session is the same hub session throughout.
    ws_send(&mut ws, r#"42["message","again"]"#).await;
    assert_eq!(event(&ws_next(&mut ws).await)[2], "2");
    let pid: Sid = answer["pid"].as_str().unwrap().parse().unwrap();
    assert_eq!(server.gateway.hub().info(&pid).await.unwrap().last_seq, 2);
}

#[tokio::test]
async fn a_failed_probe_leaves_polling_as_it_was() {
    let server = TestServer::start().await;
    let (client, _) = Polling::open(&server).await;
    client.connect(None).await;
    let mut ws = ws_open(&server, &format!("transport=websocket&sid={}", client.sid)).await;
    ws_send(&mut ws, "4not a probe").await;
    drop(ws);
    client.post(r#"42["message","still polling"]"#).await;
    assert_eq!(event(&client.next().await)[0], "response");
}

#[tokio::test]
async fn websocket_only_sessions_connect_and_exchange_events() {
    let server = TestServer::start().await;
    let mut ws = ws_open(&server, "transport=websocket").await;
    assert!(ws_next(&mut ws).await.starts_with("0{"));
    ws_send(&mut ws, "40").await;
    let answer = connect_answer(&ws_next(&mut ws).await);
    ws_send(&mut ws, r#"42["message","hi"]"#).await;
    assert_eq!(event(&ws_next(&mut ws).await), [json!("response"), json!("Message received!"), json!("1")]);
    ws_send(&mut ws, "40/nope,").await;
    assert_eq!(ws_next(&mut ws).await, r#"44/nope,{"message":"Invalid namespace"}"#);
    // A DISCONNECT leaves the namespace: the hub session is detached.
    ws_send(&mut ws, "41").await;
    let pid: Sid = answer["pid"].as_str().unwrap().parse().unwrap();
    common::wait_until("the hub session to be detached", || async { server.gateway.hub().info(&pid).await.unwrap().transport.is_none() }).await;
}

/// Events over long-polling take from the session's send budget, as a switchyard client's POSTs
/// do: one over the burst gets the `error` event, and is not handled.
#[tokio::test]
async fn events_over_polling_are_rate_limited() {
    let server = TestServer::with_config(Config { send_rate: 1, send_burst: 2, ..Config::default() }).await;
    let (client, _) = Polling::open(&server).await;
    client.connect(None).await;
    client.post("42[\"echo\",1]\x1e42[\"echo\",2]\x1e42[\"echo\",3]").await;
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(event(&client.next().await));
    }
    assert_eq!((&got[0][..2], &got[1][..2]), (&[json!("echo"), json!(1)][..], &[json!("echo"), json!(2)][..]));
    assert_eq!(got[2][0], "error", "{got:?}");
    assert_eq!(got[2][1]["error"], "too many sends for this session; slow down");
}

#[tokio::test]
async fn binary_attachments_are_refused_with_an_error_event_over_both_transports() {
    let server = TestServer::start().await;
    let (client, _) = Polling::open(&server).await;
    client.connect(None).await;
    client.post("451-[\"message\",{\"_placeholder\":true,\"num\":0}]\x1ebAQID").await;
    let error = event(&client.next().await);
    assert_eq!(error[0], "error");
    assert_eq!(error[1]["event"], "message");
    assert!(error[1]["error"].as_str().unwrap().contains("binary attachments are not supported"), "{error:?}");
    // The attachment was skipped, not read as a packet: the session goes on.
    client.post(r#"42["message","text"]"#).await;
    assert_eq!(event(&client.next().await)[0], "response");

    let mut ws = ws_open(&server, "transport=websocket").await;
    ws_next(&mut ws).await;
    ws_send(&mut ws, "40").await;
    ws_next(&mut ws).await;
    ws_send(&mut ws, "452-[\"upload\",{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]").await;
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    ws.send(Message::binary(vec![4])).await.unwrap();
    let error = event(&ws_next(&mut ws).await);
    assert_eq!((error[0].as_str(), error[1]["event"].as_str()), (Some("error"), Some("upload")));
    ws_send(&mut ws, r#"42["message","text"]"#).await;
    assert_eq!(event(&ws_next(&mut ws).await)[0], "response");
}

#[tokio::test]
async fn payloads_over_max_payload_close_the_session() {
    let server = TestServer::with_config(Config { max_body: 1024, ..Config::default() }).await;
    let (client, open) = Polling::open(&server).await;
    assert_eq!(open["maxPayload"], 1024);
    let big = format!("42[\"message\",\"{}\"]", "x".repeat(2000));
    assert_eq!(client.post_raw(big.clone()).await.0, 413);
    assert_eq!(client.get_raw().await.0, 400, "the session is closed");

    let mut ws = ws_open(&server, "transport=websocket").await;
    ws_next(&mut ws).await;
    ws_send(&mut ws, &big).await;
    loop {
        match within("the socket to close", ws.next()).await {
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(other)) => assert!(!matches!(other, Message::Text(_)), "nothing but the close: {other:?}"),
        }
    }
}

#[tokio::test]
async fn malformed_socket_io_packets_close_the_session() {
    let server = TestServer::start().await;
    let (client, _) = Polling::open(&server).await;
    client.post("42{not json").await;
    common::wait_until("the session to close", || async { client.get_raw().await.0 == 400 }).await;
    // A malformed Engine.IO packet is a 400 at once.
    let (client, _) = Polling::open(&server).await;
    assert_eq!(client.post_raw("9").await.0, 400);
    assert_eq!(client.get_raw().await.0, 400);
}

#[tokio::test]
async fn socket_io_and_switchyard_clients_share_rooms_and_the_publish_api() {
    let server = TestServer::with_admin(Config::default(), ApiAccess::Loopback).await;
    let (sio, _) = Polling::open(&server).await;
    let pid = sio.connect(None).await["pid"].as_str().unwrap().to_owned();
    sio.post(r#"42["join","lobby"]"#).await;
    let mut ws = server.ws("/ws").await;
    let ws_sid = ws.hello().await;
    ws.send(r#"{"event":"join","data":"lobby"}"#).await;
    common::wait_until("both in the lobby", || async { server.gateway.hub().members("lobby").await.len() == 2 }).await;

    ws.send(r#"{"event":"message","data":"from switchyard"}"#).await;
    assert_eq!(ws.next().await.event, "response");
    let chat = event(&sio.next().await);
    assert_eq!(chat[0], "chat");
    assert_eq!(chat[1], json!({"room": "lobby", "from": &ws_sid[..6], "text": "from switchyard"}));
    sio.post(r#"42["message","from socket.io"]"#).await;
    let chat = ws.next().await;
    assert_eq!((chat.event.as_str(), chat.data["text"].as_str()), ("chat", Some("from socket.io")));
    assert_eq!(event(&sio.next().await)[1], "Message received!");

    // The publish API reaches the Socket.IO client by its pid, like any session.
    let response = server.http.post(server.url("/api/emit")).json(&json!({"to": {"sid": pid}, "event": "news", "data": {"n": 1}})).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(event(&sio.next().await)[..2], [json!("news"), json!({"n": 1})]);
}

#[tokio::test]
async fn a_reconnect_with_pid_and_offset_recovers_what_was_missed_once_in_order() {
    let server = TestServer::start().await;
    let (first, _) = Polling::open(&server).await;
    let pid = first.connect(None).await["pid"].as_str().unwrap().to_owned();
    let sid: Sid = pid.parse().unwrap();
    first.post(r#"42["echo",1]"#).await;
    let got = event(&first.next().await);
    let offset = got[2].as_str().unwrap().to_owned();
    // Two more events go out before the client drops; it never read them.
    first.post("42[\"echo\",2]\x1e42[\"echo\",3]").await;
    common::wait_until("the replies to be emitted", || async { server.gateway.hub().info(&sid).await.unwrap().last_seq == 3 }).await;
    first.post("1").await;
    // While it is away, more is emitted to it.
    common::wait_until("the session to be detached", || async { server.gateway.hub().info(&sid).await.unwrap().transport.is_none() }).await;
    server.gateway.hub().emit(&sid, "echo", &json!(4)).await.unwrap();

    let (second, _) = Polling::open(&server).await;
    let answer = second.connect(Some(json!({"pid": pid, "offset": offset}))).await;
    assert_eq!(answer["pid"], pid, "the same pid: recovered");
    let mut replayed = Vec::new();
    while replayed.len() < 3 {
        replayed.push(event(&second.next().await));
    }
    assert_eq!(replayed, [2, 3, 4].map(|n| vec![json!("echo"), json!(n), json!(n.to_string())]));
    second.post(r#"42["echo",5]"#).await;
    assert_eq!(event(&second.next().await)[1], 5, "nothing replayed twice before the new reply");

    // A pid the server does not know gives a new session: a new pid, so not recovered.
    let (third, _) = Polling::open(&server).await;
    let answer = third.connect(Some(json!({"pid": Sid::random().as_str(), "offset": "3"}))).await;
    assert_ne!(answer["pid"], pid);
}

#[tokio::test]
async fn a_session_taken_over_by_another_transport_is_disconnected() {
    let server = TestServer::start().await;
    let (client, _) = Polling::open(&server).await;
    let pid = client.connect(None).await["pid"].as_str().unwrap().to_owned();
    let mut ws = server.ws(&format!("/ws?sid={pid}")).await;
    ws.hello().await;
    assert_eq!(client.next().await, "41", "a server DISCONNECT: the client does not reconnect by itself");
}

#[tokio::test]
async fn acks_both_ways_over_polling_and_websocket() {
    let server = TestServer::start().await;
    // Polling: the client's request 0 is answered with the handler's value as `430[D]`; a
    // failing handler's answer is the error form.
    let (client, _) = Polling::open(&server).await;
    client.connect(None).await;
    client.post(r#"420["sum",[1,2,3]]"#).await;
    assert_eq!(client.next().await, "430[6]");
    client.post(r#"427["sum","nope"]"#).await;
    let answer: Vec<Value> = serde_json::from_str(client.next().await.strip_prefix("437").expect("the answer to 7")).unwrap();
    assert_eq!(answer[0]["error"]["event"], "sum");
    assert!(answer[0]["error"]["error"].as_str().unwrap().contains("not a list of integers"), "{answer:?}");
    // A handler that returns nothing answers `null`, after what it emitted.
    client.post(r#"421["echo","x"]"#).await;
    assert_eq!(event(&client.next().await)[..2], [json!("echo"), json!("x")]);
    assert_eq!(client.next().await, "431[null]");

    // The server asks the client (`ask` makes it emit `question` with an ack id); the client's
    // `43ID[...]` answers it.
    client.post(r#"42["ask",{"q":"colour?"}]"#).await;
    let request = client.next().await;
    let (id, body) = request.strip_prefix("42").unwrap().split_once('[').expect("an ack id before the array");
    let id: u64 = id.parse().expect("a request carries an ack id");
    assert_eq!(body, r#""question","colour?"]"#, "no offset on a request");
    client.post(&format!(r#"43{id}["blue"]"#)).await;
    assert_eq!(event(&client.next().await)[..2], [json!("told"), json!({"answer": "blue"})]);

    // WebSocket, the same.
    let mut ws = ws_open(&server, "transport=websocket").await;
    ws_next(&mut ws).await;
    ws_send(&mut ws, "40").await;
    ws_next(&mut ws).await;
    ws_send(&mut ws, r#"4212["sum",[40,2]]"#).await;
    assert_eq!(ws_next(&mut ws).await, "4312[42]");
    ws_send(&mut ws, r#"42["ask",{"q":"size?"}]"#).await;
    let request = ws_next(&mut ws).await;
    let id: u64 = request.strip_prefix("42").unwrap().split_once('[').unwrap().0.parse().unwrap();
    ws_send(&mut ws, &format!(r#"43{id}["large",1]"#)).await;
    assert_eq!(event(&ws_next(&mut ws).await)[..2], [json!("told"), json!({"answer": ["large", 1]})]);
}

#[tokio::test]
async fn a_session_the_gateway_refuses_is_a_connect_error() {
    // With --auth-secret, the token comes in the CONNECT's auth payload.
    let secret = "socket.io secret";
    let server = TestServer::with_config(Config { auth_secret: Some(secret.into()), ..Config::default() }).await;
    let (client, _) = Polling::open(&server).await;
    client.post("40").await;
    let refused = client.next().await;
    let refused: Value = serde_json::from_str(refused.strip_prefix("44").expect("a CONNECT_ERROR")).unwrap();
    assert!(refused["message"].as_str().unwrap().contains("token"), "{refused}");
    client.connect(Some(json!({"token": common::jwt(secret, "alice")}))).await;
    client.post(r#"42["whoami"]"#).await;
    assert_eq!(event(&client.next().await)[..2], [json!("whoami"), json!("alice")]);

    // The per-address limit on new sessions.
    let server = TestServer::with_config(Config { max_new_sessions_per_ip: 1, ..Config::default() }).await;
    let (first, _) = Polling::open(&server).await;
    first.connect(None).await;
    let (second, _) = Polling::open(&server).await;
    second.post("40").await;
    let refused: Value = serde_json::from_str(second.next().await.strip_prefix("44").expect("a CONNECT_ERROR")).unwrap();
    assert!(refused["message"].as_str().unwrap().contains("too many new sessions"), "{refused}");
}

#[tokio::test]
async fn socket_io_traffic_shows_in_the_metrics() {
    let server = TestServer::start().await;
    let sample = |name: &'static str| {
        let server = &server;
        async move {
            let metrics = server.http.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
            metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).unwrap_or(0.0)
        }
    };
    let (events_in, events_out) = (r#"switchyard_events_in_total{via="post"}"#, r#"switchyard_events_out_total{transport="polling"}"#);
    let (in_before, out_before) = (sample(events_in).await, sample(events_out).await);
    let (client, _) = Polling::open(&server).await;
    client.connect(None).await;
    for _ in 0..5 {
        client.post(r#"42["message","counted"]"#).await;
        assert_eq!(event(&client.next().await)[0], "response");
    }
    assert!(sample(events_in).await >= in_before + 5.0, "five events in over long-polling");
    assert!(sample(events_out).await >= out_before + 5.0, "five events out over long-polling");
}

#[tokio::test]
async fn a_handler_may_wait_for_the_socket_io_clients_answer() {
    // `confirm` asks the client `question` and waits for its answer in the handler itself; the
    // answer answers the client's own request. Meanwhile the session goes on: an event sent
    // after `confirm` is handled once it is done, in order.
    let server = TestServer::start().await;
    let mut ws = ws_open(&server, "transport=websocket").await;
    ws_next(&mut ws).await;
    ws_send(&mut ws, "40").await;
    ws_next(&mut ws).await;
    ws_send(&mut ws, r#"423["confirm","sure?"]"#).await;
    ws_send(&mut ws, r#"42["message","after"]"#).await;
    let request = ws_next(&mut ws).await;
    let (id, body) = request.strip_prefix("42").unwrap().split_once('[').expect("a request with an ack id");
    assert_eq!(body, r#""question","sure?"]"#);
    ws_send(&mut ws, &format!(r#"43{id}["yes"]"#)).await;
    assert_eq!(ws_next(&mut ws).await, r#"433["yes"]"#);
    assert_eq!(event(&ws_next(&mut ws).await)[..2], [json!("response"), json!("Message received!")]);

    // Over long-polling too.
    let (client, _) = Polling::open(&server).await;
    client.connect(None).await;
    client.post(r#"420["confirm",1]"#).await;
    let request = client.next().await;
    let id = request.strip_prefix("42").unwrap().split_once('[').unwrap().0.to_owned();
    client.post(&format!("43{id}[2]")).await;
    assert_eq!(client.next().await, "430[2]");
}

/// The socket task of a WebSocket-only session writes the socket itself: a client that stops
/// reading does not hold it (and the session) forever. Once a write has waited the ping timeout,
/// the session closes and the socket is dropped, though the client answers pings afterwards.
#[tokio::test]
async fn a_websocket_client_that_stops_reading_is_closed_after_the_ping_timeout() {
    let server = TestServer::with_config(quick_pings()).await;
    let mut ws = ws_open(&server, "transport=websocket").await;
    ws_next(&mut ws).await;
    ws_send(&mut ws, "40").await;
    let pid: Sid = connect_answer(&ws_next(&mut ws).await)["pid"].as_str().unwrap().parse().unwrap();
    // About 40 MB, far beyond what loopback socket buffers hold, and within the session's ring.
    let big = json!("x".repeat(48 * 1024));
    for _ in 0..800 {
        server.gateway.hub().emit(&pid, "bulk", &big).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut events = 0;
    loop {
        match within("the socket to end after its writes stalled", ws.next()).await {
            Some(Ok(Message::Text(text))) if text.as_str() == "2" => {
                let _ = ws.send(Message::text("3")).await;
            }
            Some(Ok(Message::Text(_))) => events += 1,
            Some(Ok(_)) => {}
            None | Some(Err(_)) => break,
        }
    }
    assert!(events < 800, "the session closed before writing everything ({events} events arrived)");
}

/// Counts the requests for `/socket.io/` that pass through a layer around the router: a layer
/// of the application's own, which the requests served ahead of the router skip.
fn counting_socket_io(router: axum::Router, seen: Arc<AtomicUsize>) -> axum::Router {
    router.layer(axum::middleware::from_fn(move |request: axum::extract::Request, next: axum::middleware::Next| {
        if request.uri().path().ends_with("/socket.io/") {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        next.run(request)
    }))
}

/// With `socket_io_at_root`, `server::run` serves the gateway's root `/socket.io/` ahead of the
/// router it is given (the application's layers do not see those requests), and a router that
/// also nests the gateway under a prefix serves it there: both are one endpoint, so a session
/// opened through one is polled and posted to through the other.
#[tokio::test]
async fn the_root_socket_io_is_served_ahead_of_the_router_and_is_the_nested_one_too() {
    let gateway = switchyard::app::seed(switchyard::Gateway::builder(Config::default())).socket_io_at_root().build();
    let seen = Arc::new(AtomicUsize::new(0));
    let router = counting_socket_io(gateway.router().nest("/realtime", gateway.router()), seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(switchyard::server::run(listener, router, gateway.clone(), std::future::pending()));
    let http = reqwest::Client::new();
    let root = format!("http://{addr}/socket.io/?EIO=4&transport=polling");
    let nested = format!("http://{addr}/realtime/socket.io/?EIO=4&transport=polling");
    let body = within("the handshake at the root", http.get(&root).send()).await.unwrap().text().await.unwrap();
    let open: Value = serde_json::from_str(body.strip_prefix('0').expect("an open packet")).unwrap();
    let sid = open["sid"].as_str().unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 0, "the root handshake is answered ahead of the router");
    // CONNECT through the nested route, the answer through the root.
    let post = |base: &str, body: &'static str| http.post(format!("{base}&sid={sid}")).body(body).send();
    let answer = within("a post under the prefix", post(&nested, "40")).await.unwrap();
    assert_eq!((answer.status().as_u16(), answer.text().await.unwrap()), (200, "ok".to_owned()));
    assert_eq!(seen.load(Ordering::SeqCst), 1, "the nested route is the router's");
    let poll = |base: &str| http.get(format!("{base}&sid={sid}")).send();
    let connected = within("a poll at the root", poll(&root)).await.unwrap().text().await.unwrap();
    connect_answer(&connected);
    // An event posted at the root, its reply polled under the prefix.
    let answer = within("a post at the root", post(&root, r#"42["message","hi"]"#)).await.unwrap();
    assert_eq!(answer.text().await.unwrap(), "ok");
    let reply = within("a poll under the prefix", poll(&nested)).await.unwrap().text().await.unwrap();
    assert_eq!(event(&reply)[..2], [json!("response"), json!("Message received!")]);
    assert_eq!(seen.load(Ordering::SeqCst), 2, "only the two nested requests went through the router");
    // Other paths are the router's: nothing else at the root.
    let other = within("a path the router does not have", http.get(format!("http://{addr}/socket.io/x")).send()).await.unwrap();
    assert_eq!(other.status(), 404);
}

/// Without `socket_io_at_root` (the default, for a gateway nested under a prefix), every
/// request goes through the application's router and its layers: the root `/socket.io/` is not
/// the gateway's, and the nested one works through the router.
#[tokio::test]
async fn a_gateway_nested_under_a_prefix_leaves_the_root_socket_io_to_the_router() {
    let gateway = switchyard::app::seed(switchyard::Gateway::builder(Config::default())).build();
    let seen = Arc::new(AtomicUsize::new(0));
    let router = counting_socket_io(axum::Router::new().nest("/realtime", gateway.router()), seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(switchyard::server::run(listener, router, gateway.clone(), std::future::pending()));
    let http = reqwest::Client::new();
    let root = within("a handshake at the root", http.get(format!("http://{addr}/socket.io/?EIO=4&transport=polling")).send()).await.unwrap();
    assert_eq!(root.status(), 404, "the root /socket.io/ is not the nested gateway's");
    let nested = format!("http://{addr}/realtime/socket.io/?EIO=4&transport=polling");
    let body = within("the nested handshake", http.get(&nested).send()).await.unwrap().text().await.unwrap();
    let open: Value = serde_json::from_str(body.strip_prefix('0').expect("an open packet")).unwrap();
    let sid = open["sid"].as_str().unwrap();
    let answer = within("a nested post", http.post(format!("{nested}&sid={sid}")).body("40").send()).await.unwrap();
    assert_eq!(answer.text().await.unwrap(), "ok");
    connect_answer(&within("a nested poll", http.get(format!("{nested}&sid={sid}")).send()).await.unwrap().text().await.unwrap());
    assert_eq!(seen.load(Ordering::SeqCst), 4, "every request went through the application's layer");
}

/// Served ahead of the router or not, `/socket.io/` checks `Origin` as every route does: the
/// page's own origin and no origin pass as they are, an allowed cross-origin request gets CORS
/// (its preflight too), a foreign origin gets `403`, and other methods the route's `405`.
#[tokio::test]
async fn socket_io_requests_meet_the_origin_check_and_cors_of_every_route() {
    let server = TestServer::start().await;
    let (client, _) = Polling::open(&server).await;
    let own = format!("http://{}", server.addr);
    let with_origin = |request: reqwest::RequestBuilder, origin: &str| request.header("origin", origin).send();

    let same = within("a same-origin post", with_origin(server.http.post(client.url()).body("40"), &own)).await.unwrap();
    assert_eq!(same.status(), 200);
    assert!(same.headers().get("access-control-allow-origin").is_none(), "no CORS for the page's own origin");
    connect_answer(&client.next().await);

    let cross = "http://localhost:1";
    let allowed = within("a cross-origin post", with_origin(server.http.post(client.url()).body(r#"42["message","x"]"#), cross)).await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(allowed.headers()["access-control-allow-origin"], cross);
    assert_eq!(event(&client.next().await)[0], json!("response"));
    let preflight = server.http.request(reqwest::Method::OPTIONS, client.url()).header("access-control-request-method", "POST");
    let preflight = within("a preflight", with_origin(preflight, cross)).await.unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(preflight.headers()["access-control-allow-origin"], cross);

    for request in [server.http.get(client.url()), server.http.post(client.url()).body(r#"42["message","x"]"#)] {
        let refused = within("a foreign origin", with_origin(request, "https://evil.example")).await.unwrap();
        assert_eq!(refused.status(), 403);
    }
    let put = within("a PUT", server.http.put(client.url()).body("40").send()).await.unwrap();
    assert_eq!(put.status(), 405);
}

/// Over long-polling, a POST handles its events itself only while nothing of the client waits
/// ahead of them: events posted while a handler waits (here for the client's own answer) are
/// handled after it, in the order sent, one payload's packets included; then events are handled
/// as they come again.
#[tokio::test]
async fn over_long_polling_events_after_a_waiting_handler_follow_it_in_order() {
    let server = TestServer::start().await;
    let (client, _) = Polling::open(&server).await;
    client.connect(None).await;
    client.post(r#"420["confirm","sure?"]"#).await;
    let request = client.next().await;
    let (id, body) = request.strip_prefix("42").unwrap().split_once('[').expect("a request with an ack id");
    assert_eq!(body, r#""question","sure?"]"#);
    client.post(r#"42["echo",1]"#).await;
    client.post("42[\"echo\",2]\x1e42[\"echo\",3]").await;
    client.post(&format!(r#"43{id}["yes"]"#)).await;
    assert_eq!(client.next().await, r#"430["yes"]"#);
    for n in 1..=3 {
        assert_eq!(event(&client.next().await)[..2], [json!("echo"), json!(n)]);
    }
    for n in 4..=6 {
        client.post(&format!(r#"42["echo",{n}]"#)).await;
        assert_eq!(event(&client.next().await)[..2], [json!("echo"), json!(n)]);
    }
}

/// The per-address limit on new sessions holds for Socket.IO clients too: the server's direct
/// path to `/socket.io/` puts the client's address on the requests that open a session. Past
/// the limit, CONNECT is answered with a `CONNECT_ERROR` and no hub session is made.
#[tokio::test]
async fn the_per_address_limit_on_new_sessions_holds_for_socket_io_clients() {
    let server = TestServer::with_config(Config { max_new_sessions_per_ip: 2, ..Config::default() }).await;
    for _ in 0..2 {
        let (client, _) = Polling::open(&server).await;
        client.connect(None).await;
    }
    let (client, _) = Polling::open(&server).await;
    client.post("40").await;
    let refused = client.next().await;
    assert!(refused.starts_with("44"), "a CONNECT_ERROR, got {refused}");
    assert_eq!(server.gateway.hub().len(), 2, "no session for the refused client");
}
