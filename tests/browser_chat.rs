//! The demo page's chat room in two real headless Chromiums: one tab on WebSocket, one forced to
//! SSE (`?transport=sse`), talking to each other through the `lobby` room the page joins.

mod common;
mod harness;

use std::time::Duration;

use common::{within, TestServer};
use harness::browser::{Browser, PAGE_WAIT};
use serde_json::json;
use switchyard::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_tab_and_an_sse_tab_chat_in_the_lobby() {
    let server = TestServer::with_config(Config::default()).await;
    let ws_tab = Browser::start(None).await;
    let sse_tab = Browser::start(None).await;
    let (a, b) = (&ws_tab, &sse_tab);
    let outcome = ws_tab
        .check("chat", async {
            a.goto(&server.url("/")).await;
            a.wait_transport("websocket", PAGE_WAIT).await;
            b.goto(&server.url("/?transport=sse")).await;
            b.wait_transport("sse", PAGE_WAIT).await;
            within("both tabs in the lobby", async {
                while server.gateway.hub().members("lobby").await.len() < 2 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;

            a.send("hello from websocket").await;
            b.wait_until(
                "the WebSocket tab's line in the SSE tab",
                "window.__events.some(e => e.event === 'chat' && e.data.text === 'hello from websocket')",
                PAGE_WAIT,
            )
            .await;
            b.send("hello from sse").await;
            a.wait_until(
                "the SSE tab's line in the WebSocket tab",
                "window.__events.some(e => e.event === 'chat' && e.data.text === 'hello from sse')",
                PAGE_WAIT,
            )
            .await;

            // Each sender got the seed's reply, and no echo of its own line.
            for tab in [a, b] {
                tab.wait_responses(1).await;
                assert_eq!(tab.events_named("chat").await.len(), 1, "one line from the other tab");
            }
            let shown = b.eval("return [...document.querySelectorAll('#log .event-chat')].map(li => li.textContent);").await;
            let shown = shown.as_array().expect("a list").clone();
            assert_eq!(shown.len(), 1, "{shown:?}");
            assert!(shown[0].as_str().unwrap().contains("hello from websocket"), "#log shows the line: {shown:?}");
            assert_eq!(a.eval("return window.__switchyard.transport;").await, json!("websocket"));
        })
        .await;
    sse_tab.close().await;
    ws_tab.finish(outcome).await;
}
