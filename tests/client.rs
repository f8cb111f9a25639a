//! The browser client (`static/switchyard.js`) under abuse, in Node (issue 12): each test runs
//! one scenario of `tests/client/` against a real gateway on 127.0.0.1:0, often through a relay
//! the scenario controls, and asserts on what the scenario found and what the server holds.
//! The tab cases that need a real page (a frozen tab, the network going away) are in
//! `tests/browser_abuse.rs`.

mod common;
mod harness;

use std::time::Duration;

use common::TestServer;
use harness::node::{run, Outcome};
use harness::relay::{Mode, Relay};
use serde_json::{json, Value};
use switchyard::{Config, Sid};

/// Node scenarios take a core each for a while: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LIMIT: Duration = Duration::from_secs(60);

/// Short timers, so that expiry and dead paths show within seconds.
fn config() -> Config {
    Config {
        grace: Duration::from_secs(2),
        keepalive: Duration::from_secs(1),
        ws_ping: Duration::from_secs(1),
        poll_timeout: Duration::from_secs(1),
        ..Config::default()
    }
}

async fn scenario(server: &TestServer, relay: Option<&Relay>, script: &str, env: &[(&str, String)]) -> Outcome {
    let mut vars = vec![("SWITCHYARD_URL", server.url(""))];
    if let Some(relay) = relay {
        vars.push(("RELAY_URL", relay.url("")));
    }
    vars.extend(env.iter().map(|(k, v)| (*k, v.clone())));
    run(script, &vars, &server.gateway, relay, LIMIT).await
}

async fn live(server: &TestServer, sid: &Value) -> bool {
    let sid: Sid = sid.as_str().expect("a sid").parse().expect("a valid sid");
    server.gateway.hub().info(&sid).await.is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tab_frozen_on_polling_adopts_the_fresh_session_instead_of_flooding() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = TestServer::with_config(config()).await;
    let out = scenario(&server, None, "frozen_poll.mjs", &[]).await.result;
    assert_ne!(out["now"], out["first"], "a fresh session: {out}");
    assert!(live(&server, &out["now"]).await, "the page holds a live session: {out}");
    assert_eq!(out["connected"], json!(true));
    assert_eq!(out["transport"], json!("polling"));
    let gaps = out["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "the page heard `gap` once: {out}");
    assert_eq!(gaps[0]["reason"], json!("expired"), "{out}");
    assert_eq!(gaps[0]["previous"], out["first"], "the gap names the lost session: {out}");
    assert_eq!(out["sessionEvents"].as_array().unwrap().last(), Some(&out["now"]), "the page saw the new sid: {out}");
    // The fresh session, and perhaps the expired one not yet swept: nothing like a flood.
    assert!(out["live"].as_u64().unwrap() <= 2, "sessions on the server 2 s after the thaw: {out}");
    assert!(server.gateway.hub().len() <= 2, "sessions on the server at the end: {}", server.gateway.hub().len());
}

async fn gap_after_cut(transport: &str) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = TestServer::with_config(config()).await;
    let relay = Relay::start(server.addr, Mode::Pass).await;
    let out = scenario(&server, Some(&relay), "gap_after_cut.mjs", &[("TRANSPORT", transport.to_owned())]).await.result;
    assert_eq!(out["transport"], json!(transport));
    assert_ne!(out["now"], out["first"], "{out}");
    let gaps = out["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "one `gap` for the lost session: {out}");
    assert_eq!(gaps[0]["reason"], json!("expired"), "{out}");
    assert_eq!(gaps[0]["previous"], out["first"], "{out}");
    assert_eq!(out["reconnects"][0]["resumed"], json!(false), "{out}");
    let order: Vec<&str> = out["order"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let after = &order[order.iter().rposition(|e| *e == "session").unwrap()..];
    assert!(after.contains(&"gap"), "the gap follows the new session's hello: {order:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_lost_during_a_long_cut_is_reported_with_gap_over_sse() {
    gap_after_cut("sse").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_lost_during_a_long_cut_is_reported_with_gap_over_polling() {
    gap_after_cut("polling").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_lost_during_a_long_cut_is_reported_with_gap_over_websocket() {
    gap_after_cut("websocket").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_sends_go_out_in_batches_the_server_takes_and_an_oversize_event_is_refused_by_name() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = TestServer::with_config(config()).await;
    let relay = Relay::start(server.addr, Mode::Pass).await;
    let out = scenario(&server, Some(&relay), "big_batches.mjs", &[]).await.result;
    for (transport, count) in [("websocket", 100), ("sse", 30)] {
        let got = &out[transport];
        let mut expected: Vec<Value> = (0..count).map(|i| json!(i.to_string())).collect();
        expected.push(json!("small"));
        assert_eq!(got["echoes"].as_array().unwrap(), &expected, "{transport}: every event once, in order: {got}");
        let errors = got["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1, "{transport}: one error, for the oversize event: {got}");
        assert_eq!(errors[0]["event"], json!("echo"), "{transport}: the error names the event: {got}");
        assert!(errors[0]["bytes"].as_u64().unwrap() > 65536, "{transport}: {got}");
        assert!(errors[0]["error"].as_str().unwrap().contains("`echo`"), "{transport}: {got}");
    }
    let ws = &out["websocket"];
    assert_eq!(ws["connects"], json!(2), "one reconnect after the cut, none for sending: {ws}");
    assert!(
        ws["disconnects"].as_array().unwrap().iter().all(|r| !r.as_str().unwrap().contains("1009")),
        "no message was too big for the server: {ws}"
    );
    assert_eq!(out["sse"]["connects"], json!(1), "{}", out["sse"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_post_times_out_and_sending_goes_on() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = TestServer::with_config(config()).await;
    let out = scenario(&server, None, "hung_post.mjs", &[]).await.result;
    assert_eq!(out["echoes"], json!([1, 2, 3]), "each once, in order: {out}");
    assert_eq!(out["connected"], json!(true));
    assert!(out["held"].as_u64().unwrap() >= 2, "the held POST was sent again: {out}");
}

async fn dead_path(transport: &str) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = TestServer::with_config(config()).await;
    let relay = Relay::start(server.addr, Mode::Pass).await;
    let out = scenario(&server, Some(&relay), "dead_path.mjs", &[("TRANSPORT", transport.to_owned())]).await.result;
    // Heartbeats every second: found within about two (plus slack), not the 45 s of old.
    let noticed = out["noticed"].as_u64().unwrap();
    assert!(noticed <= 5000, "{transport}: the dead path was found after {noticed} ms: {out}");
    assert!(out["reason"].as_str().unwrap().contains("silent"), "{out}");
    assert_eq!(out["sameSession"], json!(true), "{out}");
    assert_eq!(out["resumed"], json!(true), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_websocket_is_found_by_its_heartbeat() {
    dead_path("websocket").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_sse_stream_is_found_by_its_keep_alives() {
    dead_path("sse").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_stops_everything_open_works_after_a_supersede_and_the_queue_is_bounded() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = TestServer::with_config(config()).await;
    let relay = Relay::start(server.addr, Mode::Pass).await;
    let outcome = scenario(&server, Some(&relay), "lifecycle.mjs", &[]).await;
    let out = &outcome.result;
    let superseded = &out["superseded"];
    assert_eq!(superseded["disconnect"]["willReconnect"], json!(false), "{out}");
    assert!(superseded["disconnect"]["reason"].as_str().unwrap().starts_with("superseded"), "{out}");
    assert_eq!(superseded["sameSession"], json!(true), "open() resumed the session: {out}");
    assert_eq!(superseded["connects"], json!(2), "{out}");
    assert_eq!(out["queue"]["queued"], json!(50), "{out}");
    let errors = out["queue"]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 10, "{out}");
    assert!(errors[0]["error"].as_str().unwrap().contains("maxQueue"), "{out}");
    assert_eq!(out["closed"], json!({"sse": false, "poll": false, "ws": false, "requests": 0}), "{out}");
    assert!(
        outcome.exit_after_result < Duration::from_secs(3),
        "node exited {:?} after close(): something the client started kept running",
        outcome.exit_after_result
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_online_or_visible_again_resumes_at_once() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = TestServer::with_config(Config { grace: Duration::from_secs(30), ..config() }).await;
    let relay = Relay::start(server.addr, Mode::Pass).await;
    let out = scenario(&server, Some(&relay), "wake.mjs", &[]).await.result;
    // The backoff was a minute: only the page signals explain a resume within seconds.
    assert!(out["online"].as_u64().unwrap() < 3000, "{out}");
    assert!(out["visible"].as_u64().unwrap() < 3000, "{out}");
    assert_eq!(out["reconnects"], json!(2), "{out}");
    assert_eq!(out["resumed"], json!(true), "{out}");
}

fn token(secret: &str, sub: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_error_carries_the_servers_words_and_socket_io_names_work() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let secret = "client-test-secret";
    let server = TestServer::with_config(Config { auth_secret: Some(secret.into()), ..config() }).await;
    let out = scenario(&server, None, "devex.mjs", &[("TOKEN", token(secret, "ada"))]).await.result;
    let refused = &out["refused"];
    let errors = refused["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "reconnectionAttempts: 2 rounds, then it stops: {refused}");
    assert_eq!(refused["failed"]["attempts"], json!(2), "{refused}");
    assert_eq!(errors[1]["retryIn"], json!(null), "no retry after the last round: {refused}");
    let message = errors[0]["message"].as_str().unwrap();
    assert!(message.contains("token"), "the server's own words, not just a status: {message}");
    assert!(!message.starts_with("HTTP"), "{message}");
    assert!(errors[0]["reasons"][0].as_str().unwrap().contains("401"), "{refused}");
    let log: Vec<&str> = refused["log"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(log.iter().any(|l| l.starts_with("connecting")), "debug logs the decisions: {log:?}");
    assert!(log.iter().any(|l| l.contains("giving up")), "{log:?}");
    assert_eq!(out["auth"], json!({"whoami": "ada", "down": false, "sameSession": true}), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backoff_grows_while_sends_fail_and_starts_over_once_one_gets_through() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = TestServer::with_config(Config { grace: Duration::from_secs(30), ..config() }).await;
    let relay = Relay::start(server.addr, Mode::Pass).await;
    let out = scenario(&server, Some(&relay), "backoff.mjs", &[]).await.result;
    // Delays of 100 ms doubling to 1.6 s (times 0.5 to 1): some 6 connects in 5 s, where an
    // attempt count reset by every connect gives dozens.
    let connects = out["connects"].as_u64().unwrap();
    assert!((3..=10).contains(&connects), "connects in 5 s of a path that drops every send: {out}");
    let gaps: Vec<u64> = out["gaps"].as_array().unwrap().iter().map(|g| g.as_u64().unwrap()).collect();
    assert!(gaps.len() >= 3 && gaps[gaps.len() - 1] >= 4 * gaps[0], "the delays grow: {gaps:?}");
    assert_eq!(out["replies"], json!(1), "{out}");
    assert!(out["resumeAfterCut"].as_u64().unwrap() < 1000, "after a send got through the backoff starts over: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagehide_sends_what_is_queued_and_what_a_hung_post_carried() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = TestServer::with_config(config()).await;
    let out = scenario(&server, None, "pagehide.mjs", &[]).await.result;
    assert_eq!(out["echoes"], json!([1, 2, 3]), "each once, in order: {out}");
    let sent = &out["keepalive"];
    assert_eq!(sent.as_array().unwrap().len(), 1, "one keepalive POST: {out}");
    let seqs: Vec<u64> = sent[0].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3], "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_with_ack_is_answered_across_a_cut_and_a_fallback_and_handlers_answer_the_servers_requests() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = TestServer::with_config(config()).await;
    let relay = Relay::start(server.addr, Mode::Pass).await;
    let out = scenario(&server, Some(&relay), "acks.mjs", &[]).await.result;
    assert_eq!(out["first"]["transport"], json!("websocket"), "{out}");
    assert_eq!(out["sum"], json!(6), "{out}");
    assert_eq!(out["failed"]["reason"], json!("error"), "{out}");
    assert_eq!(out["failed"]["data"]["event"], json!("sum"), "{out}");
    assert!(out["failed"]["message"].as_str().unwrap().contains("not a list of integers"), "{out}");
    assert_eq!(out["unclaimed"]["reason"], json!("error"), "{out}");
    assert_eq!(out["unclaimed"]["data"], json!({"error": "no handler for event `nope`", "event": "nope"}), "{out}");
    assert_eq!(out["timedOut"]["reason"], json!("timeout"), "{out}");
    assert!(out["timedOut"]["message"].as_str().unwrap().contains("within 300 ms"), "{out}");
    // The server's requests were answered by the page's handlers (the server's `ask` handler
    // tells what it got), a value, then a promise's.
    assert_eq!(out["told"], json!([{"answer": {"echo": "sync?"}}, {"answer": "async? later"}]), "{out}");
    assert_eq!(out["questions"], json!(["sync?", "async?"]), "the page's handlers saw the requests: {out}");
    // The answer held back by the cut came with the resume over SSE, on the same session.
    let across = &out["acrossCut"];
    assert_eq!(across["resolved"], json!(42), "{out}");
    assert_eq!(across["transport"], json!("sse"), "{out}");
    assert_eq!(across["connects"], json!(2), "resolved after the reconnect: {out}");
    assert_eq!(out["now"]["sid"], out["first"]["sid"], "{out}");
    assert_eq!(out["answersSeenAsEvents"], json!(0), "answers go to their promises, not to the page's events: {out}");
}

/// `expect_lost`: whether the request sent before the cut is rejected (`gap`); else it was
/// sent again to the fresh session, as any send whose POST got no answer is, and answered there.
async fn ack_lost_with_the_session(transport: &str, expect_lost: bool) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = TestServer::with_config(config()).await;
    let relay = Relay::start(server.addr, Mode::Pass).await;
    let out = scenario(&server, Some(&relay), "acks_gap.mjs", &[("TRANSPORT", transport.to_owned())]).await.result;
    assert_ne!(out["now"], out["first"], "a fresh session: {out}");
    if expect_lost {
        assert_eq!(out["lost"]["reason"], json!("gap"), "the request sent to the lost session: {out}");
        assert!(out["lost"]["message"].as_str().unwrap().contains("session was lost"), "{out}");
    } else {
        assert_eq!(out["lost"]["resolved"], json!(2), "the request whose POST failed, sent again: {out}");
    }
    assert_eq!(out["queued"]["resolved"], json!(4), "the request queued while away went to the new session: {out}");
    assert_eq!(out["gaps"], json!(1), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_with_ack_to_a_session_lost_during_a_long_cut_is_rejected_with_gap_over_websocket() {
    ack_lost_with_the_session("websocket", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_with_ack_whose_post_failed_during_a_long_cut_is_sent_again_to_the_fresh_session_over_polling() {
    ack_lost_with_the_session("polling", false).await;
}
