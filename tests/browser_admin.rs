//! The operator page (issue 18) in a real headless Chromium, watching a gateway under load: 30
//! clients of `static/switchyard.js` (Node, `tests/client/load.mjs`), 10 on a direct path
//! (WebSocket), 10 behind `tests/proxies/nginx-plain.conf` (no upgrades: down to SSE) and 10
//! behind `nginx-buffering.conf` (no upgrades, streams held back: down to long-polling), all
//! chatting in rooms. The page's figures must be what `/metrics` says within a second, the
//! fallback reasons must show, a sid lookup must work and no other sid may be on the page.
//! A screenshot goes to `target/browser-screenshots/admin.png`.
//!
//! `SWITCHYARD_ADMIN_HOLD=SECONDS` keeps the load running that long before the screenshot, for
//! charts with some history (the README's `docs/admin.png` was taken so, with 300).

mod common;
mod harness;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::TestServer;
use harness::browser::{Browser, PAGE_WAIT};
use harness::node::Background;
use harness::proxies::Proxy;
use harness::screenshot_dir;
use serde_json::{json, Value};
use switchyard::api::ApiAccess;
use switchyard::metrics::{parse, Sample};
use switchyard::Config;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// `/metrics`, parsed, and when it was asked for (ms since the epoch).
async fn scrape(server: &TestServer) -> (u64, Vec<Sample>) {
    let at = now_ms();
    let text = common::within("GET /metrics", server.http.get(server.url("/metrics")).send()).await.unwrap().text().await.unwrap();
    (at, parse(&text))
}

/// The figures of `/metrics` the page shows, under the page's names.
fn figures(samples: &[Sample]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let sum = |name: &str, label: Option<(&str, &str)>| -> f64 {
        samples.iter().filter(|s| s.name == name && label.is_none_or(|(k, v)| s.label(k) == Some(v))).map(|s| s.value).sum()
    };
    out.insert("sessions".to_owned(), sum("switchyard_sessions", None));
    for t in ["websocket", "sse", "polling", "none"] {
        out.insert(format!("on.{t}"), sum("switchyard_sessions_by_transport", Some(("transport", t))));
    }
    for (key, name) in [("totals.in", "switchyard_events_in_total"), ("totals.out", "switchyard_events_out_total"), ("totals.bytes", "switchyard_bytes_out_total")] {
        out.insert(key.to_owned(), sum(name, None));
    }
    for s in samples {
        let label = |k: &str| s.label(k).unwrap_or_default().to_owned();
        let key = match s.name.as_str() {
            "switchyard_transport_changes_total" => format!("change {} {} {}", label("from"), label("to"), label("reason")),
            "switchyard_gaps_total" => format!("gaps {}", label("reason")),
            "switchyard_errors_total" => format!("errors {}", label("kind")),
            "switchyard_post_responses_total" => format!("post {}", label("status")),
            "switchyard_detaches_total" => format!("detaches {}", label("reason")),
            _ => continue,
        };
        *out.entry(key).or_insert(0.0) += s.value;
    }
    out
}

/// What the page shows: its tick's time and every figure, read from the DOM's `data-value`s.
const READ_PAGE: &str = r"
    const value = (key) => { const e = document.querySelector(`[data-key='${key}']`); return e ? Number(e.dataset.value) : null; };
    const figures = {};
    for (const key of ['sessions', 'on.websocket', 'on.sse', 'on.polling', 'on.none', 'totals.in', 'totals.out', 'totals.bytes']) figures[key] = value(key);
    for (const row of document.querySelectorAll('#changes tr[data-from]')) {
      figures[`change ${row.dataset.from} ${row.dataset.to} ${row.dataset.reason}`] = Number(row.querySelector('td.total').dataset.value);
    }
    for (const table of ['gaps', 'errors', 'post', 'detaches']) {
      for (const row of document.querySelectorAll(`#${table} tr[data-key]`)) {
        figures[`${table} ${row.dataset.key}`] = Number(row.querySelector('td.total').dataset.value);
      }
    }
    const shown = (key) => { const e = document.querySelector(`[data-key='${key}']`); return e && e.textContent; };
    return { t: window.__admin.tick && window.__admin.tick.t, figures, text: {
      websocket: shown('on.websocket'), sse: shown('on.sse'), polling: shown('on.polling') } };
";

/// Checks that the page's figures are what `/metrics` said within a second: scraped once
/// before the page's next tick and once after reading it, every figure the page shows lies
/// between the two scrapes (counters only grow; the gauges hold still), and the tick read is
/// less than a second older than the second scrape. Tried a few times (a gauge may move
/// between scrapes); returns the page's figures.
async fn assert_page_is_metrics(server: &TestServer, b: &Browser) -> Value {
    let mut last = String::new();
    for _ in 0..10 {
        let (before_at, before) = scrape(server).await;
        b.wait_until("a tick after the first scrape", &format!("window.__admin.tick && window.__admin.tick.t > {before_at}"), PAGE_WAIT).await;
        let page = b.eval(READ_PAGE).await;
        let (after_at, after) = scrape(server).await;
        let tick_at = page["t"].as_u64().unwrap();
        let (before, after) = (figures(&before), figures(&after));
        let shown: BTreeMap<String, f64> =
            page["figures"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(f64::NAN))).collect();
        let mut wrong = Vec::new();
        let keys: std::collections::BTreeSet<&String> = shown.keys().chain(after.keys()).collect();
        for key in keys {
            let (low, high) = (before.get(key).copied().unwrap_or(0.0), after.get(key).copied().unwrap_or(0.0));
            let (low, high) = (low.min(high), low.max(high));
            match shown.get(key) {
                Some(v) if *v >= low && *v <= high => {}
                Some(v) => wrong.push(format!("{key}: page {v}, /metrics {low}..={high}")),
                // A series that appeared after the tick the page shows.
                None if before.get(key).copied().unwrap_or(0.0) == 0.0 => {}
                None => wrong.push(format!("{key}: not on the page, /metrics {low}..={high}")),
            }
        }
        let fresh = after_at.saturating_sub(tick_at) <= 1000 + (after_at - before_at).min(500);
        if wrong.is_empty() && fresh {
            return page;
        }
        last = format!("tick {} ms before the second scrape; {wrong:?}", after_at.saturating_sub(tick_at));
    }
    panic!("the page never matched /metrics: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_page_shows_30_clients_on_three_transports_and_why_they_fell_back() {
    let config = Config { poll_timeout: Duration::from_secs(10), ..Config::default() };
    let server = TestServer::with_admin(config, ApiAccess::new(None, "127.0.0.1:3000".parse().unwrap())).await;
    let plain = Proxy::nginx("nginx-plain.conf", server.addr).await;
    let buffering = Proxy::nginx("nginx-buffering.conf", server.addr).await;
    let browser = Browser::start(None).await;
    let b = &browser;
    // A wall screen's viewport.
    b.cdp("Emulation.setDeviceMetricsOverride", json!({"width": 1920, "height": 1080, "deviceScaleFactor": 1, "mobile": false})).await;
    let outcome = browser
        .check("admin", async {
            // The page first, empty: it must follow the load as it arrives.
            b.goto(&server.url("/admin")).await;
            b.wait_until("the page's first tick", "window.__admin && window.__admin.ticks > 0", PAGE_WAIT).await;
            assert_eq!(b.eval("return document.getElementById('status').dataset.state;").await, json!("live"));

            let groups = json!([
                {"name": "direct", "url": server.url(""), "n": 10, "room": "lobby", "every": 1500},
                {"name": "nginx-plain", "url": plain.url(""), "n": 10, "room": "support", "every": 3000,
                 "options": {"probeInterval": 0}},
                {"name": "nginx-buffering", "url": buffering.url(""), "n": 10, "room": "lobby", "every": 4000,
                 "options": {"probeInterval": 0, "sseTimeout": 1500}},
            ]);
            let mut load = Background::start("load.mjs", &[("CLIENT_GROUPS", groups.to_string())]);
            let ready: Value = serde_json::from_str(&load.line("READY ", Duration::from_secs(60)).await).unwrap();
            let clients = ready.as_array().unwrap();
            let on = |group: &str, transport: &str| clients.iter().filter(|c| c["group"] == group && c["transport"] == transport).count();
            assert_eq!((on("direct", "websocket"), on("nginx-plain", "sse"), on("nginx-buffering", "polling")), (10, 10, 10), "{ready}");

            // Ten on each transport, on the page as in /metrics.
            b.wait_until(
                "10 sessions on each transport",
                "['websocket', 'sse', 'polling'].every(t => document.querySelector(`[data-key='on.${t}']`).dataset.value === '10')",
                PAGE_WAIT,
            )
            .await;
            let page = assert_page_is_metrics(&server, b).await;
            assert_eq!(page["text"], json!({"websocket": "10", "sse": "10", "polling": "10"}), "what a person reads");

            // The reasons the clients gave for falling back, as they gave them: one row each, ten
            // clients each (an SSE stream counts once it has held its session for 5 s, and the
            // streams nginx-buffering held back never did).
            let row_total = |reason: &str| {
                format!("(document.querySelector(\"#changes tr[data-reason='{reason}'] td.total\") || {{dataset: {{}}}}).dataset.value === '10'")
            };
            b.wait_until("ten fallbacks for each reason", &format!("{} && {}", row_total("ws_blocked"), row_total("sse_held_back")), PAGE_WAIT).await;
            assert_eq!(b.eval("return document.querySelectorAll('#changes tr[data-from]').length;").await, json!(2), "no other change");
            let changes = b.eval("return [...document.querySelectorAll('#changes tr[data-from]')].map(r => r.innerText.replace(/\\s+/g, ' '));").await;
            let changes: Vec<&str> = changes.as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
            let row = |reason: &str| changes.iter().find(|c| c.contains(reason)).copied();
            let blocked = row("ws_blocked").unwrap_or_else(|| panic!("ws_blocked on the page: {changes:?}"));
            assert!(blocked.contains("WebSocket") && blocked.contains("SSE"), "{blocked}");
            let held = row("sse_held_back").unwrap_or_else(|| panic!("sse_held_back on the page: {changes:?}"));
            assert!(held.contains("WebSocket") && held.contains("polling"), "{held}");
            for client in clients.iter().filter(|c| c["group"] != "direct") {
                let change = &client["changes"][0];
                assert_eq!(change["from"], "websocket", "{client}");
                let expected = if client["group"] == "nginx-plain" { "ws_blocked" } else { "sse_held_back" };
                assert_eq!(change["code"], expected, "the client's own `transport` event says it too: {client}");
            }
            let rooms = b.eval("return [...document.querySelectorAll('#rooms li[data-room]')].map(li => [li.dataset.room, Number(li.dataset.value)]);").await;
            assert_eq!(rooms, json!([["lobby", 20], ["support", 10]]));

            // A sid lookup: a client that fell back to polling.
            let polling = clients.iter().find(|c| c["group"] == "nginx-buffering").unwrap();
            let sid = polling["sid"].as_str().unwrap();
            let input = b.client.find(fantoccini::Locator::Css("#lookup-sid")).await.expect("#lookup-sid");
            input.send_keys(sid).await.expect("typing the sid");
            b.client.find(fantoccini::Locator::Css("#lookup-form button")).await.unwrap().click().await.expect("Look up");
            b.wait_until("the session's history", "document.querySelectorAll('#lookup-history li').length > 0", PAGE_WAIT).await;
            let found = b.eval("return document.getElementById('lookup-result').innerText;").await;
            let found = found.as_str().unwrap();
            assert!(found.contains(sid) && found.contains("polling") && found.contains("lobby"), "{found}");
            assert!(found.contains("coming from WebSocket (sse_held_back)"), "the history says how it got there: {found}");

            // No other sid anywhere on the page.
            let text = b.eval("return document.documentElement.outerHTML + JSON.stringify(window.__admin.tick);").await;
            let text = text.as_str().unwrap();
            for other in clients.iter().map(|c| c["sid"].as_str().unwrap()).filter(|s| *s != sid) {
                assert!(!text.contains(other), "a sid that was not looked up is on the page: {other}");
            }

            // The figures keep matching while the load goes on.
            let hold = std::env::var("SWITCHYARD_ADMIN_HOLD").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
            tokio::time::sleep(Duration::from_secs(hold)).await; // the charts fill: the pause is the scenario
            assert_page_is_metrics(&server, b).await;
            b.eval("document.activeElement.blur(); window.scrollTo(0, 0); return true;").await;
            let png = browser.client.screenshot().await.expect("a screenshot");
            let dir = screenshot_dir();
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("admin.png");
            std::fs::write(&path, png).unwrap();
            eprintln!("the operator page: {}", path.display());
            drop(load);
        })
        .await;
    browser.finish(outcome).await;
}
