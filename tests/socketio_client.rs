//! The real `socket.io-client` npm package (4.8) in Node against `/socket.io/`: each test runs
//! one scenario of `tests/client/socketio.mjs` against a real gateway on 127.0.0.1:0 (through
//! the test relay for the cut) and asserts on what the client saw.

mod common;
mod harness;

use std::time::Duration;

use common::TestServer;
use harness::node::run;
use harness::relay::{Mode, Relay};
use serde_json::{json, Value};
use switchyard::Config;

/// Node scenarios take a core each for a while: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LIMIT: Duration = Duration::from_secs(60);

async fn scenario(server: &TestServer, relay: Option<&Relay>, name: &str, env: &[(&str, String)]) -> Value {
    let mut vars = vec![("SWITCHYARD_URL", server.url("")), ("SCENARIO", name.to_owned())];
    if let Some(relay) = relay {
        vars.push(("RELAY_URL", relay.url("")));
    }
    vars.extend(env.iter().map(|(k, v)| (*k, v.clone())));
    run("socketio.mjs", &vars, &server.gateway, relay, LIMIT).await.result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_client_connects_over_every_transport_and_gets_the_seed_reply() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start().await;
    let out = scenario(&server, None, "transports", &[]).await;
    for (run, transport) in [("upgrade", "websocket"), ("websocket", "websocket"), ("polling", "polling")] {
        assert_eq!(out[run]["transport"], transport, "{run}: {out}");
        assert_eq!(out[run]["responses"], json!(["Message received!", "Message received!", "Message received!"]), "{run}: exactly three replies: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_and_switchyard_js_clients_chat_in_one_room() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start().await;
    let out = scenario(&server, None, "rooms", &[]).await;
    let yard_sid = out["yardSid"].as_str().unwrap();
    assert_eq!(out["sioChats"], json!([{"room": "lobby", "from": &yard_sid[..6], "text": "from switchyard.js"}]), "{out}");
    // (The Socket.IO client's `ready?` may come before the switchyard.js client joined.)
    let yard_chats: Vec<&Value> = out["yardChats"].as_array().unwrap().iter().filter(|c| c["text"] != "ready?").collect();
    assert_eq!(yard_chats.len(), 1, "{out}");
    assert_eq!(yard_chats[0]["text"], "from socket.io-client");
    assert_eq!(yard_chats[0]["room"], "lobby");
    assert_eq!(out["sioResponses"], json!(["Message received!", "Message received!"]), "{out}");
}

async fn recovery(transport: &str) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = TestServer::with_config(Config {
        sio_ping_interval: Duration::from_secs(1),
        sio_ping_timeout: Duration::from_secs(1),
        grace: Duration::from_secs(10),
        ..Config::default()
    })
    .await;
    let relay = Relay::start(server.addr, Mode::Pass).await;
    let out = scenario(&server, Some(&relay), "recovery", &[("TRANSPORT", transport.to_owned())]).await;
    let expected: Vec<Value> = (1..=15).map(|n| json!(n)).collect();
    assert_eq!(out["chats"], Value::Array(expected), "every chat once, in order: {out}");
    let connects = out["connects"].as_array().unwrap();
    assert_eq!(connects.len(), 2, "{out}");
    assert_eq!(connects[1]["recovered"], true, "the reconnect recovered the session: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_client_recovers_over_websocket_after_a_cut_with_every_reply_once_in_order() {
    recovery("websocket").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_client_recovers_over_polling_after_a_cut_with_every_reply_once_in_order() {
    recovery("polling").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_client_acks_work_both_ways() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start().await;
    let out = scenario(&server, None, "acks", &[]).await;
    for transport in ["websocket", "polling"] {
        let run = &out[transport];
        assert_eq!(run["sum"], 6, "{transport}: {out}");
        assert_eq!(run["failed"]["error"]["event"], "sum", "{transport}: the error form: {out}");
        assert_eq!(run["seed"], Value::Null, "{transport}: the seed handler answers nothing: {out}");
        assert_eq!(run["told"], json!({"answer": "answer to colour?"}), "{transport}: {out}");
    }
}
