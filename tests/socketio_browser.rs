//! Real Chromium with the seed's own page (`../shared/SEED.md`, its HTML verbatim but for the
//! script `src`, which points at the Socket.IO client of the npm package, `dist/socket.io.js`,
//! served beside the page): typing and sending 20 messages gives 20 replies, straight to the
//! gateway and behind each nginx config of `tests/proxies/`.

mod common;
mod harness;

use std::path::Path;
use std::time::Duration;

use common::TestServer;
use fantoccini::Locator;
use harness::browser::{Browser, PAGE_WAIT};
use harness::proxies::Proxy;
use harness::TempDir;
use serde_json::{json, Value};
use switchyard::{Config, Sid};

/// The CDN script of the seed page, and what replaces it.
const CDN_SCRIPT: &str = r#"<script src="//cdnjs.cloudflare.com/ajax/libs/socket.io/3.0.4/socket.io.js"></script>"#;
const LOCAL_SCRIPT: &str = r#"<script src="/socket.io.js"></script>"#;

/// The seed page's HTML, from the `html` code block of `SEED.md` (kept in the repository's parent,
/// as the project's origin), with the one change.
fn seed_page() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("../shared/SEED.md");
    let seed = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err} (the seed's blog post, beside the repository)", path.display()));
    let html = seed.split("```html\n").nth(1).and_then(|rest| rest.split("\n```").next()).expect("the seed's ```html block");
    assert!(html.contains(CDN_SCRIPT), "the seed page loads Socket.IO from the CDN");
    html.replace(CDN_SCRIPT, LOCAL_SCRIPT)
}

/// A directory with the seed page as `index.html` and the npm package's client as
/// `socket.io.js`.
fn site() -> TempDir {
    let dir = TempDir::new("seed-page");
    std::fs::write(dir.path().join("index.html"), seed_page()).unwrap();
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client/node_modules/socket.io-client/dist/socket.io.js");
    std::fs::copy(&client, dir.path().join("socket.io.js"))
        .unwrap_or_else(|err| panic!("{}: {err} (tests/run-all.sh runs npm ci in tests/client)", client.display()));
    dir
}

/// Loads the page at `url`, sends 20 messages through its input and button, and checks that
/// the page logged 20 replies, each once; returns the transport the page ended on.
async fn twenty_messages(browser: &Browser, server: &TestServer, url: &str) -> String {
    browser.goto(url).await;
    browser.wait_until("the seed page to connect", "typeof socket !== 'undefined' && socket.connected", PAGE_WAIT).await;
    // The page reports replies with console.log('Received response: ', data): record them.
    browser
        .eval(
            "window.__replies = []; const log = console.log.bind(console);
             console.log = (...args) => { if (args[0] === 'Received response: ') window.__replies.push(args[1]); log(...args); };
             return true;",
        )
        .await;
    let input = browser.client.find(Locator::Css("#message")).await.expect("the page's input");
    let button = browser.client.find(Locator::Css("button")).await.expect("the page's Send button");
    for i in 0..20 {
        input.clear().await.unwrap();
        input.send_keys(&format!("message {i}")).await.unwrap();
        button.click().await.unwrap();
    }
    browser.wait_until("20 replies", "window.__replies.length >= 20", PAGE_WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let replies = browser.eval("return window.__replies;").await;
    assert_eq!(replies, Value::Array(vec![json!("Message received!"); 20]), "each reply once");
    // The gateway handled 20 messages for the page's session.
    let pid: Sid = browser.eval("return socket._pid;").await.as_str().expect("the page's pid").parse().unwrap();
    assert_eq!(server.gateway.hub().info(&pid).await.expect("the page's session").last_seq, 20);
    browser.eval("return socket.io.engine.transport.name;").await.as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_page_sends_20_messages_and_gets_20_replies_direct_and_behind_nginx() {
    let site = site();
    let server = TestServer::with_static(Config::default(), site.path()).await;
    let browser = Browser::start(None).await;
    let outcome = browser
        .check("socketio_seed_page", async {
            let transport = twenty_messages(&browser, &server, &server.url("/")).await;
            assert_eq!(transport, "websocket", "the page upgraded");
            // Upgrades passed: the page ends on WebSocket. A bare proxy_pass passes no
            // upgrade: the page stays on long-polling, and works.
            for (conf, expected) in [("nginx-recommended.conf", "websocket"), ("nginx-plain.conf", "polling"), ("nginx-buffering.conf", "polling")] {
                let nginx = Proxy::nginx(conf, server.addr).await;
                let transport = twenty_messages(&browser, &server, &nginx.url("/")).await;
                assert_eq!(transport, expected, "{conf}");
            }
        })
        .await;
    browser.finish(outcome).await;
}
