//! The browser client in real headless Chromium where only a real tab shows the problem
//! (issue 12): a tab frozen as a background tab is, and a page whose network goes away and
//! comes back. The DevTools protocol (through chromedriver) freezes the page and takes it
//! offline. The Node scenarios of `tests/client.rs` cover the rest of the client's abuse cases.

mod common;
mod harness;

use std::time::Duration;

use common::TestServer;
use harness::browser::{Browser, PAGE_WAIT};
use harness::relay::{Mode, Relay};
use serde_json::json;
use switchyard::{Config, Sid};

static ONE_BROWSER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Sessions expire two seconds after their transport left; polls answer within a second.
fn config() -> Config {
    Config {
        grace: Duration::from_secs(2),
        keepalive: Duration::from_secs(1),
        poll_timeout: Duration::from_secs(1),
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tab_frozen_on_polling_comes_back_on_one_fresh_session_and_shows_the_gap() {
    let _turn = ONE_BROWSER_AT_A_TIME.lock().await;
    let server = TestServer::with_config(config()).await;
    let browser = Browser::start(None).await;
    let b = &browser;
    let outcome = browser
        .check("frozen-polling", async {
            b.goto(&server.url("/?transports=polling&backoffMin=100&backoffMax=1000")).await;
            b.wait_transport("polling", PAGE_WAIT).await;
            b.send_range(1, 1, true).await;
            let first = b.eval("return window.__switchyard.id;").await;

            // Frozen as a background tab is: no script runs, while the poll in flight is
            // answered and the session, detached, expires on the server.
            b.cdp("Page.setWebLifecycleState", json!({"state": "frozen"})).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            b.cdp("Page.setWebLifecycleState", json!({"state": "active"})).await;

            b.wait_until(
                "a fresh session and its gap",
                &format!("window.__switchyard.id !== {first} && window.__events.some(e => e.event === 'gap')"),
                PAGE_WAIT,
            )
            .await;
            // Time for a flood to show: with the dead sid every poll would open a session.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let live = server.gateway.hub().len();
            assert!(live <= 2, "{live} sessions on the server two seconds after the thaw (the fresh one, perhaps the expired one unswept)");

            let sid: Sid = b.eval("return window.__switchyard.id;").await.as_str().unwrap().parse().unwrap();
            assert!(server.gateway.hub().info(&sid).await.is_some(), "the page holds a live session");
            assert_eq!(b.eval("return document.getElementById('sid').textContent;").await, json!(sid.to_string()), "#sid shows it");
            assert_eq!(b.eval("return window.__switchyard.connected;").await, json!(true));
            let gaps = b.events_named("gap").await;
            assert_eq!(gaps.len(), 1, "one gap: {gaps:?}");
            assert_eq!(gaps[0].1["reason"], json!("expired"));
            assert_eq!(gaps[0].1["previous"], first);
            let shown = b.eval("return document.querySelectorAll('#log .event-gap').length;").await;
            assert_eq!(shown, json!(1), "#log shows the gap");

            b.send_range(2, 2, true).await;
            let replies = b.responses().await;
            assert_eq!(replies.len(), 2, "{replies:?}");
            assert!(replies[1].0.starts_with(&format!("{sid}.")), "the second reply came on the new session: {replies:?}");
        })
        .await;
    browser.finish(outcome).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_back_online_resumes_at_once_whatever_its_backoff() {
    let _turn = ONE_BROWSER_AT_A_TIME.lock().await;
    let server = TestServer::with_config(Config { grace: Duration::from_secs(60), ..config() }).await;
    let relay = Relay::start(server.addr, Mode::Pass).await;
    let browser = Browser::start(None).await;
    let b = &browser;
    let outcome = browser
        .check("offline-online", async {
            // A minute of backoff: only the `online` signal explains a resume within seconds.
            b.goto(&relay.url("/?transports=sse&backoffMin=60000&backoffMax=60000")).await;
            b.wait_transport("sse", PAGE_WAIT).await;
            b.send_range(1, 1, true).await;
            let sid = b.eval("return window.__switchyard.id;").await;

            b.cdp("Network.enable", json!({})).await;
            let offline = json!({"offline": true, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1});
            b.cdp("Network.emulateNetworkConditions", offline).await;
            relay.set_mode(Mode::Refuse);
            relay.cut();
            b.wait_until("the drop", "!window.__switchyard.connected && !navigator.onLine", PAGE_WAIT).await;

            relay.set_mode(Mode::Pass);
            let online = json!({"offline": false, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1});
            b.cdp("Network.emulateNetworkConditions", online).await;
            b.wait_until("the resume once back online", "window.__switchyard.connected && navigator.onLine", Duration::from_secs(5))
                .await;
            assert_eq!(b.eval("return window.__switchyard.id;").await, sid, "the same session");
            b.send_range(2, 2, true).await;
            let reconnects = b.events_named("reconnect").await;
            assert_eq!(reconnects.len(), 1, "{reconnects:?}");
            assert_eq!(reconnects[0].1["resumed"], json!(true));
        })
        .await;
    browser.finish(outcome).await;
}
