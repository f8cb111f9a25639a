//! The browser client over HTTPS in a real headless Chromium: HTTP/2 for the page, its POSTs
//! and its event streams, the WebSocket (over HTTP/2 where Chromium does it), ten tabs of one
//! origin on one connection where HTTP/1.1 stops at six, and the WebSocket through stock squid
//! once the gateway is on 443.
//!
//! Chromium trusts the test's certificate alone, by its public key
//! (`--ignore-certificate-errors-spki-list`), not by ignoring certificate errors in general.
//! Scenarios run one at a time, as in `tests/browser.rs`; that also keeps the process-wide
//! counters read from `/metrics` (WebSocket handshakes by HTTP version) to one scenario.

mod common;
mod harness;

use std::time::Duration;

use common::tls::TestCa;
use common::TestServer;
use harness::browser::{Browser, PAGE_WAIT};
use harness::proxies::Proxy;
use serde_json::json;
use switchyard::{app, server, Config, Gateway, Sid};

static ONE_BROWSER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config() -> Config {
    Config { keepalive: Duration::from_secs(1), poll_timeout: Duration::from_secs(5), max_new_sessions_per_ip: 0, ..Config::default() }
}

/// A Chromium that trusts `ca`'s server certificate, and nothing else it would not anyway.
async fn trusting(ca: &TestCa, proxy: Option<&str>) -> Browser {
    Browser::start_with(proxy, &[format!("--ignore-certificate-errors-spki-list={}", ca.spki_sha256)]).await
}

/// WebSocket handshakes the gateway accepted so far over HTTP/1.1 and over HTTP/2.
async fn ws_handshakes(server: &TestServer) -> (u64, u64) {
    let text = server.http.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let count = |http: &str| {
        let key = format!("switchyard_websocket_handshakes_total{{http=\"{http}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&key)).map_or(0, |n| n.trim().parse().unwrap())
    };
    (count("1.1"), count("2"))
}

/// Asserts the current tab got every event of its session once, in order, `replies` replies.
async fn assert_exactly_once(server: &TestServer, b: &Browser, replies: usize) {
    let sid: Sid = b.eval("return window.__switchyard.id;").await.as_str().expect("a sid").parse().expect("a valid sid");
    let emitted = server.gateway.hub().info(&sid).await.expect("the session is live").last_seq;
    b.assert_every_event_once(emitted, &[], replies).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_the_page_its_posts_and_streams_use_http2() {
    let _turn = ONE_BROWSER_AT_A_TIME.lock().await;
    let ca = TestCa::new();
    let server = TestServer::https(config(), &ca).await;
    let browser = trusting(&ca, None).await;
    let b = &browser;
    let outcome = browser
        .check("tls-direct", async {
            let before = ws_handshakes(&server).await;
            b.goto(&server.url("/")).await;
            b.wait_transport("websocket", PAGE_WAIT).await;
            b.send_range(1, 5, true).await;
            assert_exactly_once(&server, b, 5).await;
            let navigation = b.eval("return performance.getEntriesByType('navigation')[0].nextHopProtocol;").await;
            assert_eq!(navigation, json!("h2"), "the page came over HTTP/2");
            // Chromium sends the WebSocket over the page's HTTP/2 connection (RFC 8441) when the
            // server allows extended CONNECT, as switchyard does.
            let after = ws_handshakes(&server).await;
            assert_eq!((after.0 - before.0, after.1 - before.1), (0, 1), "one WebSocket handshake, over HTTP/2, none over 1.1");

            b.goto(&server.url("/?transport=sse")).await;
            b.wait_transport("sse", PAGE_WAIT).await;
            b.send_range(1, 5, true).await;
            assert_exactly_once(&server, b, 5).await;
            // The POSTs carrying the messages went over HTTP/2.
            let posts = b
                .eval("return performance.getEntriesByType('resource').filter(e => e.name.includes('/sse?sid=')).map(e => e.nextHopProtocol);")
                .await;
            let posts = posts.as_array().unwrap();
            assert!(posts.len() >= 5 && posts.iter().all(|p| p == "h2"), "every POST over h2: {posts:?}");
            // A stream's timing entry is written once it ends: have the server end it (the
            // client resumes on a new one), then read the first stream's.
            let sid: Sid = b.eval("return window.__switchyard.id;").await.as_str().unwrap().parse().unwrap();
            server.gateway.hub().emit(&sid, "reconnect", &json!({"reason": "test"})).await.unwrap();
            b.wait_until(
                "the first stream's timing entry",
                "performance.getEntriesByType('resource').some(e => new URL(e.name).pathname === '/sse' && !new URL(e.name).search)",
                PAGE_WAIT,
            )
            .await;
            let stream = b
                .eval("return performance.getEntriesByType('resource').find(e => new URL(e.name).pathname === '/sse' && !new URL(e.name).search).nextHopProtocol;")
                .await;
            assert_eq!(stream, json!("h2"), "the event stream came over HTTP/2");
        })
        .await;
    browser.finish(outcome).await;
}

/// Every tab's session: its sid, read in that tab.
async fn tab_sid(b: &Browser) -> Sid {
    b.eval("return window.__switchyard.id;").await.as_str().expect("a sid").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_tabs_share_one_http2_connection_where_http11_stops_at_six() {
    let _turn = ONE_BROWSER_AT_A_TIME.lock().await;
    let ca = TestCa::new();

    // HTTPS: all ten streams and all their POSTs multiplex on one connection.
    let server = TestServer::https(config(), &ca).await;
    let browser = trusting(&ca, None).await;
    let b = &browser;
    let outcome = browser
        .check("tls-ten-tabs-h2", async {
            // A room per tab, so that each tab's events are its own replies.
            let mut handles = Vec::new();
            for i in 0..10 {
                handles.push(if i == 0 { b.client.window().await.unwrap() } else { b.client.new_window(true).await.unwrap().handle });
                b.client.switch_to_window(handles[i].clone()).await.unwrap();
                b.goto(&server.url(&format!("/?transport=sse&room=tab{i}"))).await;
            }
            for handle in &handles {
                b.client.switch_to_window(handle.clone()).await.unwrap();
                b.wait_transport("sse", PAGE_WAIT).await;
            }
            for handle in &handles {
                b.client.switch_to_window(handle.clone()).await.unwrap();
                b.eval("for (let k = 1; k <= 20; k++) window.__switchyard.emit('message', 'message ' + k); return 0;").await;
            }
            for handle in &handles {
                b.client.switch_to_window(handle.clone()).await.unwrap();
                b.wait_responses(20).await;
                assert_exactly_once(&server, b, 20).await;
                let sid = tab_sid(b).await;
                server.wait_for_transport(&sid, Some(switchyard::Transport::Sse)).await;
            }
        })
        .await;
    browser.finish(outcome).await;

    // Plain HTTP/1.1: six connections per origin, and an event stream holds its connection.
    // Six tabs stream; from then on every other request to the origin waits for a connection
    // that never frees: the six tabs' messages are never sent (no reply, ever), and a seventh
    // tab stays blank (its page is such a request).
    let server = TestServer::with_config(config()).await;
    let browser = trusting(&ca, None).await;
    let b = &browser;
    let outcome = browser
        .check("tls-ten-tabs-http11", async {
            let mut handles = Vec::new();
            for i in 0..6 {
                handles.push(if i == 0 { b.client.window().await.unwrap() } else { b.client.new_window(true).await.unwrap().handle });
                b.client.switch_to_window(handles[i].clone()).await.unwrap();
                b.goto(&server.url(&format!("/?transport=sse&room=tab{i}"))).await;
                b.wait_transport("sse", PAGE_WAIT).await;
            }
            assert_eq!(server.gateway.hub().len(), 6, "six sessions, one stream each");
            for handle in &handles {
                b.client.switch_to_window(handle.clone()).await.unwrap();
                b.eval("for (let k = 1; k <= 20; k++) window.__switchyard.emit('message', 'message ' + k); return 0;").await;
            }
            // What a seventh tab would ask first: its page. It waits (3 s here, for ever in fact).
            let seventh = b
                .client
                .execute_async(
                    "const done = arguments[arguments.length - 1];
                     Promise.race([fetch('/?transport=sse&room=tab6').then(r => 'loaded ' + r.status),
                                   new Promise(r => setTimeout(() => r('still waiting'), 3000))]).then(done);",
                    vec![],
                )
                .await
                .unwrap();
            assert_eq!(seventh, json!("still waiting"), "a seventh page of the origin cannot load");
            let mut replies = 0;
            for handle in &handles {
                b.client.switch_to_window(handle.clone()).await.unwrap();
                replies += b.eval("return window.__events.filter(e => e.event === 'response').length;").await.as_u64().unwrap();
            }
            assert_eq!(replies, 0, "with six streams open, no message of any tab got through");
            assert_eq!(server.gateway.hub().len(), 6, "no seventh session");
        })
        .await;
    browser.finish(outcome).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_squid_tunnels_the_websocket_to_the_gateway_on_443() {
    let _turn = ONE_BROWSER_AT_A_TIME.lock().await;
    let listener = match server::bind("127.0.0.1:443".parse().unwrap()) {
        Ok(listener) => listener,
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
            eprintln!("SKIPPED: 127.0.0.1:443 is taken by another process; this scenario needs it");
            return;
        }
        Err(err) => panic!("binding 127.0.0.1:443 (the tests run as root): {err}"),
    };
    let ca = TestCa::new();
    let gateway = app::seed(Gateway::builder(config())).build();
    let static_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("static");
    let router = server::app(&gateway, &static_dir);
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::run_tls(listener, router, gateway.clone(), ca.server_config(), std::future::pending()));
    let server = TestServer { addr, gateway, http: ca.reqwest(true, addr), scheme: "https" };
    let squid = Proxy::squid().await;
    let browser = trusting(&ca, Some(&format!("127.0.0.1:{}", squid.port))).await;
    let b = &browser;
    let before = ws_handshakes(&server).await;
    let outcome = browser
        .check("tls-squid-443", async {
            b.goto("https://127.0.0.1/").await;
            b.wait_transport("websocket", PAGE_WAIT).await;
            b.send_range(1, 10, true).await;
            assert_exactly_once(&server, b, 10).await;
            assert_eq!(b.transport_log().await.len(), 1, "no fallback: the WebSocket went through");
        })
        .await;
    browser.finish(outcome).await;
    let after = ws_handshakes(&server).await;
    assert_eq!(after.1 - before.1, 1, "the WebSocket rode the tunnelled HTTP/2 connection");
    // squid logs a tunnel when it closes: the browser is gone now.
    squid.wait_for_log_line("the CONNECT to 443", |l| l.contains("TCP_TUNNEL/200") && l.contains("CONNECT 127.0.0.1:443")).await;
}
