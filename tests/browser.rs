//! The browser client (`static/switchyard.js`) in a real headless Chromium, on a direct path
//! and behind real restrictive proxies: each scenario types into `#message`, clicks Send, and
//! checks what the demo page shows and recorded (`window.__events`).
//!
//! Scenarios run one at a time (a lock below): each starts its own chromedriver and Chromium,
//! and timing-based detection (WebSocket and SSE timeouts) should not compete for two cores.
//! Client options come from the page URL (`?sseTimeout=...`, see `static/index.html`).

mod common;
mod harness;

use std::time::Duration;

use common::TestServer;
use harness::browser::{Browser, PAGE_WAIT};
use harness::proxies::Proxy;
use harness::relay::{Mode, Relay};
use serde_json::json;
use switchyard::{Config, Sid};

static ONE_BROWSER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A gateway with short timers, so that dead paths are found quickly.
fn config() -> Config {
    Config { keepalive: Duration::from_secs(1), poll_timeout: Duration::from_secs(5), ..Config::default() }
}

/// Asserts the page got every event its session was sent exactly once, in order, `replies` of
/// them the seed's reply.
async fn assert_exactly_once(server: &TestServer, b: &Browser, replies: usize) {
    let sid: Sid = b.eval("return window.__switchyard.id;").await.as_str().expect("a sid").parse().expect("a valid sid");
    let emitted = server.gateway.hub().info(&sid).await.expect("the session is live").last_seq;
    b.assert_every_event_once(emitted, &[], replies).await;
}

/// Client options for tests: quick retries, quick probes.
const FAST: &str = "backoffMin=100&backoffMax=1000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_path_stays_on_websocket() {
    let _turn = ONE_BROWSER_AT_A_TIME.lock().await;
    let server = TestServer::with_config(config()).await;
    let browser = Browser::start(None).await;
    let b = &browser;
    let outcome = browser
        .check("direct", async {
            b.goto(&server.url("/")).await;
            b.wait_transport("websocket", PAGE_WAIT).await;
            let sid = b.eval("return document.getElementById('sid').textContent;").await;
            assert_eq!(sid, b.eval("return window.__switchyard.id;").await, "#sid shows the session");
            assert_eq!(sid.as_str().unwrap().len(), 22);
            b.send_range(1, 20, true).await;
            assert_exactly_once(&server, b, 20).await;
            assert_eq!(b.transport_log().await.len(), 1, "no fallback on a direct path");

            // The same file is importable as an ES module (through the .mjs wrapper).
            let module = b
                .client
                .execute_async(
                    "const done = arguments[arguments.length - 1];
                     import('/switchyard.mjs').then(
                       m => done(typeof m.connect === 'function' && m.connect === window.switchyard.connect && m.default === window.switchyard),
                       e => done(String(e)));",
                    vec![],
                )
                .await
                .expect("importing /switchyard.mjs");
            assert_eq!(module, json!(true), "import('/switchyard.mjs') exposes connect");
        })
        .await;
    browser.finish(outcome).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn squid_with_stock_rules_falls_back_to_sse() {
    let _turn = ONE_BROWSER_AT_A_TIME.lock().await;
    let server = TestServer::with_config(config()).await;
    let squid = Proxy::squid().await;
    let browser = Browser::start(Some(&format!("127.0.0.1:{}", squid.port))).await;
    let b = &browser;
    let outcome = browser
        .check("squid", async {
            b.goto(&server.url(&format!("/?{FAST}"))).await;
            b.wait_transport("sse", PAGE_WAIT).await;
            let log = b.transport_log().await;
            assert!(
                log.iter().any(|l| l.contains("websocket → sse") && l.contains("websocket blocked: closed 1006 before open")),
                "the fallback and its reason are in #log: {log:?}"
            );
            b.send_range(1, 20, true).await;
            assert_exactly_once(&server, b, 20).await;

            // The traffic really went through squid: the refused CONNECT of the WebSocket, the
            // page itself, and the POSTs carrying the messages.
            let port = server.addr.port();
            let connect = format!("CONNECT 127.0.0.1:{port}");
            let access = squid.wait_for_log_line("the refused CONNECT", |l| l.contains("TCP_DENIED/403") && l.contains(&connect)).await;
            let page = format!("GET http://127.0.0.1:{port}/?");
            assert!(access.lines().any(|l| l.contains(&page)), "squid served the page:\n{access}");
            // (squid logs URLs without their query strings)
            let posts = format!("POST http://127.0.0.1:{port}/sse?");
            squid.wait_for_log_line("the POSTed messages", |l| l.contains(&posts) && l.contains("/202 ")).await;

            // The tab remembers that WebSocket failed here: a reload goes straight to SSE.
            let connects = |log: &str| log.lines().filter(|l| l.contains(&connect)).count();
            let tried = connects(&squid.access_log());
            b.goto(&server.url(&format!("/?{FAST}"))).await;
            b.wait_transport("sse", PAGE_WAIT).await;
            let log = b.transport_log().await;
            assert!(log.iter().any(|l| l.contains("websocket skipped: it failed on this origin recently")), "{log:?}");
            assert_eq!(connects(&squid.access_log()), tried, "no WebSocket attempt after the reload");
        })
        .await;
    browser.finish(outcome).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_plain_proxy_pass_gets_sse_in_real_time() {
    let _turn = ONE_BROWSER_AT_A_TIME.lock().await;
    let server = TestServer::with_config(config()).await;
    let nginx = Proxy::nginx("nginx-plain.conf", server.addr).await;
    let browser = Browser::start(None).await;
    let b = &browser;
    let outcome = browser
        .check("nginx-plain", async {
            b.goto(&nginx.url(&format!("/?{FAST}"))).await;
            b.wait_transport("sse", PAGE_WAIT).await;
            let log = b.transport_log().await;
            assert!(log.iter().any(|l| l.contains("websocket blocked")), "fallback reason in #log: {log:?}");
            b.send_range(1, 20, true).await;
            assert_exactly_once(&server, b, 20).await;

            // Events arrive as they are sent, not in a burst when some buffer fills: the server
            // pushes 10 events 200 ms apart, and the page's arrival times span about as long.
            let sid: Sid = b.eval("return window.__switchyard.id;").await.as_str().unwrap().parse().expect("a sid");
            for i in 0..10 {
                server.gateway.hub().emit(&sid, "tick", &json!(i)).await.expect("session is live");
                tokio::time::sleep(Duration::from_millis(200)).await; // pacing the sender, not a wait
            }
            b.wait_until("10 ticks", "window.__events.filter(e => e.event === 'tick').length === 10", PAGE_WAIT).await;
            let ticks = b.events_named("tick").await;
            let data: Vec<_> = ticks.iter().map(|(_, d)| d.clone()).collect();
            assert_eq!(data, (0..10).map(|i| json!(i)).collect::<Vec<_>>(), "ticks in order");
            let span = ticks[9].0 - ticks[0].0;
            assert!(span >= 1200.0, "10 events sent over 1.8 s arrived within {span:.0} ms: the path buffers them");
            let gaps: Vec<f64> = ticks.windows(2).map(|w| w[1].0 - w[0].0).collect();
            let bunched = gaps.iter().filter(|g| **g < 50.0).count();
            assert!(bunched <= 2, "ticks 200 ms apart arrived bunched together: gaps {gaps:?}");
        })
        .await;
    browser.finish(outcome).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_that_holds_streams_back_falls_to_polling() {
    let _turn = ONE_BROWSER_AT_A_TIME.lock().await;
    let server = TestServer::with_config(config()).await;
    let nginx = Proxy::nginx("nginx-buffering.conf", server.addr).await;
    let browser = Browser::start(None).await;
    let b = &browser;
    let outcome = browser
        .check("nginx-buffering", async {
            b.goto(&nginx.url(&format!("/?{FAST}&sseTimeout=2500"))).await;
            b.wait_transport("polling", PAGE_WAIT).await;
            let log = b.transport_log().await;
            assert!(
                log.iter().any(|l| l.contains("websocket → polling")
                    && l.contains("websocket blocked")
                    && l.contains("sse held back: no session event within 2500 ms")),
                "both fallbacks and their reasons are in #log: {log:?}"
            );
            b.send_range(1, 20, true).await;
            assert_exactly_once(&server, b, 20).await;
            let access = nginx.access_log();
            assert!(access.contains("GET /poll?sid="), "the polls went through nginx:\n{access}");
        })
        .await;
    browser.finish(outcome).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_resumes_with_every_reply_once() {
    let _turn = ONE_BROWSER_AT_A_TIME.lock().await;
    let server = TestServer::with_config(config()).await;
    let relay = Relay::start(server.addr, Mode::Pass).await;
    let browser = Browser::start(None).await;
    let b = &browser;
    let outcome = browser
        .check("drop", async {
            b.goto(&relay.url(&format!("/?{FAST}&probeInterval=1000"))).await;
            b.wait_transport("websocket", PAGE_WAIT).await;
            let sid: Sid = b.eval("return window.__switchyard.id;").await.as_str().unwrap().parse().unwrap();
            b.send_range(1, 20, true).await;

            // Replies to 21..=30 leave the server but are held on the way, then the connection
            // is cut while messages still flow: replies already sent are lost on the wire (only
            // the server's buffer still has them), messages still on their way up are lost too
            // (the client sends them again, numbered, after the resume).
            relay.stall_downstream(true);
            let before = server.gateway.hub().info(&sid).await.unwrap().last_seq;
            b.send_range(21, 30, false).await;
            let deadline = std::time::Instant::now() + PAGE_WAIT;
            while server.gateway.hub().info(&sid).await.unwrap().last_seq < before + 10 {
                assert!(std::time::Instant::now() < deadline, "the server never answered the messages sent while stalled");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            relay.set_mode(Mode::Refuse);
            relay.cut();
            relay.stall_downstream(false);
            b.wait_until(
                "the page to see the drop",
                "!window.__switchyard.connected && window.__events.some(e => e.event === 'disconnect')",
                PAGE_WAIT,
            )
            .await;
            assert_eq!(b.responses().await.len(), 20, "replies 21..=30 were lost on the wire");

            // Sent while disconnected: queued in the page.
            b.send_range(31, 40, false).await;
            assert_eq!(b.eval("return window.__switchyard._outbox.length;").await, json!(10), "queued while away");

            // The path stays down for a while: the client tries every transport and backs off.
            b.wait_until(
                "a failed round of reconnection attempts",
                "window.__events.some(e => e.event === 'connect_error' && e.data.reasons.length === 3)",
                PAGE_WAIT,
            )
            .await;

            // The round of attempts under way when the path comes back may have had its
            // WebSocket refused already and land on SSE; the short probe interval brings the
            // page back up to WebSocket then, as a real page does after `probeInterval`.
            relay.set_mode(Mode::Pass);
            b.wait_transport("websocket", PAGE_WAIT).await;
            b.wait_responses(40).await;
            b.send_range(41, 50, true).await;
            assert_exactly_once(&server, b, 50).await;
            assert_eq!(b.eval("return window.__switchyard.id;").await, json!(sid.to_string()), "same session");
            let reconnects = b.events_named("reconnect").await;
            assert_eq!(reconnects.len(), 1, "one reconnection: {reconnects:?}");
        })
        .await;
    browser.finish(outcome).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_that_unblocks_websocket_gets_upgraded() {
    let _turn = ONE_BROWSER_AT_A_TIME.lock().await;
    let server = TestServer::with_config(config()).await;
    let relay = Relay::start(server.addr, Mode::RefuseWebSocket).await;
    let browser = Browser::start(None).await;
    let b = &browser;
    let outcome = browser
        .check("upgrade", async {
            b.goto(&relay.url(&format!("/?{FAST}&probeInterval=1000"))).await;
            b.wait_transport("sse", PAGE_WAIT).await;
            assert!(relay.refused_websockets() >= 1, "the WebSocket was refused");
            b.send_range(1, 10, true).await;

            // Unblock, and keep talking while the client probes and moves up.
            relay.set_mode(Mode::Pass);
            let mut sent = 10;
            let deadline = std::time::Instant::now() + PAGE_WAIT;
            while b.eval("return window.__switchyard.transport;").await != json!("websocket") {
                assert!(std::time::Instant::now() < deadline, "never moved up to websocket:\n{}", b.describe().await);
                sent += 1;
                b.send(&format!("message {sent}")).await;
            }
            assert!(relay.websockets() >= 1, "the WebSocket went through the relay");
            let upto = sent + 10;
            b.send_range(sent + 1, upto, false).await;
            b.wait_responses(upto).await;
            assert_exactly_once(&server, b, upto).await;
            let log = b.transport_log().await;
            assert!(log.iter().any(|l| l.contains("sse → websocket: upgrade")), "the upgrade is in #log: {log:?}");
            assert!(b.events_named("disconnect").await.is_empty(), "moving up never disconnects");
        })
        .await;
    browser.finish(outcome).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_reconnect_event_makes_the_client_resume() {
    let _turn = ONE_BROWSER_AT_A_TIME.lock().await;
    let server = TestServer::with_config(config()).await;
    let browser = Browser::start(None).await;
    let b = &browser;
    let outcome = browser
        .check("server-reconnect", async {
            b.goto(&server.url(&format!("/?{FAST}"))).await;
            b.wait_transport("websocket", PAGE_WAIT).await;
            let sid_text = b.eval("return window.__switchyard.id;").await;
            let sid: Sid = sid_text.as_str().unwrap().parse().unwrap();
            // What a restarting server sends (issue 4): the client drops its transport and resumes.
            let command = server.gateway.hub().emit(&sid, "reconnect", &json!({"reason": "test"})).await.unwrap();
            let command_seq: u64 = command.to_string().rsplit_once('.').unwrap().1.parse().unwrap();
            b.wait_until(
                "the client to resume",
                "window.__events.some(e => e.event === 'reconnect') && window.__switchyard.connected",
                PAGE_WAIT,
            )
            .await;
            let disconnects = b.events_named("disconnect").await;
            assert_eq!(disconnects.len(), 1, "{disconnects:?}");
            assert_eq!(disconnects[0].1["reason"], json!("server asked to reconnect"));
            let shown = b.eval("return document.querySelectorAll('#log .event-reconnect').length;").await;
            assert_eq!(shown, json!(0), "the server's command is not passed on as an event");
            assert_eq!(b.eval("return window.__switchyard.id;").await, sid_text, "same session");
            b.send_range(1, 5, true).await;
            // Every event but the command arrived once, in order.
            let emitted = server.gateway.hub().info(&sid).await.unwrap().last_seq;
            b.assert_every_event_once(emitted, &[command_seq], 5).await;
        })
        .await;
    browser.finish(outcome).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_mounted_under_a_path_prefix() {
    let _turn = ONE_BROWSER_AT_A_TIME.lock().await;
    // The gateway nested under /realtime, the page at the root: `?path=/realtime` tells the client.
    let gateway = switchyard::app::seed(switchyard::Gateway::builder(config())).build();
    let static_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("static");
    let router = axum::Router::new()
        .nest("/realtime", gateway.router())
        .fallback_service(tower_http::services::ServeDir::new(static_dir));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = gateway.clone();
    tokio::spawn(async move { switchyard::server::run(listener, router, served, std::future::pending()).await });

    let browser = Browser::start(None).await;
    let b = &browser;
    let outcome = browser
        .check("path-prefix", async {
            for transport in ["websocket", "sse", "polling"] {
                b.goto(&format!("http://{addr}/?path=/realtime&transport={transport}&{FAST}")).await;
                b.wait_transport(transport, PAGE_WAIT).await;
                b.send_range(1, 3, true).await;
                let sid: Sid = b.eval("return window.__switchyard.id;").await.as_str().unwrap().parse().unwrap();
                let emitted = gateway.hub().info(&sid).await.expect("the session lives in the nested gateway").last_seq;
                b.assert_every_event_once(emitted, &[], 3).await;
            }
        })
        .await;
    browser.finish(outcome).await;
}
