//! Headless Chromium (Debian's `chromium`) driven over WebDriver by `fantoccini`, through a
//! `chromedriver` this test starts on a free port and stops by pid.
//!
//! The page under test is the demo page (`static/index.html`); it exposes `window.__switchyard`
//! (the socket) and `window.__events` (every event with its arrival time), which is what the
//! helpers below read.

use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

use super::{free_port, screenshot_dir, signal, stop_child, wait_for_port, TempDir};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub type Outcome = Result<(), Box<dyn std::any::Any + Send>>;

/// The longest a page state is waited for unless a test says otherwise.
pub const PAGE_WAIT: Duration = Duration::from_secs(15);

pub struct Browser {
    pub client: Client,
    driver: Child,
    /// Chromium's profile (`--user-data-dir`): fresh for every browser, so no state leaks.
    profile: TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium; `proxy` is `host:port` of an HTTP proxy,
    /// which is then used for loopback addresses too.
    pub async fn start(proxy: Option<&str>) -> Browser {
        Browser::start_with(proxy, &[]).await
    }

    /// [`Browser::start`] with more Chromium flags (`--ignore-certificate-errors-spki-list=…`
    /// to trust one test certificate, say).
    pub async fn start_with(proxy: Option<&str>, extra: &[String]) -> Browser {
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("starting {CHROMEDRIVER}: {err} (tests/run-all.sh installs chromium-driver)"));
        let profile = TempDir::new("chromium");
        let mut browser_guard = DriverGuard(Some(driver));
        wait_for_port(port, Duration::from_secs(15), "chromedriver").await;

        let mut args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        args.extend_from_slice(extra);
        if let Some(proxy) = proxy {
            args.push(format!("--proxy-server=http://{proxy}"));
            // Without this Chromium silently skips the proxy for 127.0.0.1.
            args.push("--proxy-bypass-list=<-loopback>".to_owned());
        }
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert("goog:chromeOptions".into(), json!({ "binary": CHROMIUM, "args": args }));
        let client = tokio::time::timeout(
            Duration::from_secs(30),
            ClientBuilder::new(HttpConnector::new()).capabilities(caps).connect(&format!("http://127.0.0.1:{port}")),
        )
        .await
        .expect("timed out starting a Chromium session")
        .unwrap_or_else(|err| panic!("starting a Chromium session: {err}"));
        let driver = browser_guard.0.take().unwrap();
        Browser { client, driver, profile }
    }

    /// Runs a scenario (a future borrowing this browser); if it panics, saves a screenshot as
    /// `target/browser-screenshots/NAME.png`. Hand the outcome to [`Browser::finish`].
    pub async fn check<F: Future<Output = ()>>(&self, name: &str, scenario: F) -> Outcome {
        let outcome = std::panic::AssertUnwindSafe(scenario).catch_unwind().await;
        if outcome.is_err() {
            let dir = screenshot_dir();
            let path = dir.join(format!("{name}.png"));
            match tokio::time::timeout(Duration::from_secs(10), self.client.screenshot()).await {
                Ok(Ok(png)) => {
                    let _ = std::fs::create_dir_all(&dir);
                    let _ = std::fs::write(&path, png);
                    eprintln!("screenshot of the failed scenario: {}", path.display());
                }
                other => eprintln!("could not take a screenshot: {other:?}"),
            }
        }
        outcome
    }

    /// Closes the browser, then fails if the scenario did.
    pub async fn finish(self, outcome: Outcome) {
        self.close().await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }

    /// Ends the WebDriver session (Chromium quits), then stops chromedriver (in `drop`).
    pub async fn close(self) {
        let client = self.client.clone();
        let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
    }

    /// Chromium writes `SingletonLock -> HOST-PID` in its profile: that is the pid to stop if
    /// the WebDriver session could not end it.
    fn kill_chromium(&self) {
        if let Ok(target) = std::fs::read_link(self.profile.path().join("SingletonLock")) {
            if let Some(pid) = target.to_string_lossy().rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) {
                signal(pid, "KILL");
            }
        }
    }

    /// Runs a Chrome DevTools protocol command on the page (chromedriver's `goog/cdp/execute`):
    /// freezing it as a background tab is, taking its network away.
    pub async fn cdp(&self, cmd: &str, params: Value) -> Value {
        let command = Cdp { cmd: cmd.to_owned(), params };
        tokio::time::timeout(PAGE_WAIT, self.client.issue_cmd(command))
            .await
            .unwrap_or_else(|_| panic!("timed out running the DevTools command {cmd}"))
            .unwrap_or_else(|err| panic!("DevTools command {cmd}: {err}"))
    }

    pub async fn goto(&self, url: &str) {
        tokio::time::timeout(PAGE_WAIT, self.client.goto(url))
            .await
            .unwrap_or_else(|_| panic!("timed out loading {url}"))
            .unwrap_or_else(|err| panic!("loading {url}: {err}"));
    }

    /// Evaluates a script's `return` value in the page.
    pub async fn eval(&self, script: &str) -> Value {
        tokio::time::timeout(PAGE_WAIT, self.client.execute(script, vec![]))
            .await
            .unwrap_or_else(|_| panic!("timed out running `{script}` in the page"))
            .unwrap_or_else(|err| panic!("running `{script}` in the page: {err}"))
    }

    /// Polls the page until the JS expression `condition` is truthy, for at most `limit`.
    pub async fn wait_until(&self, what: &str, condition: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        let script = format!("return !!({condition});");
        loop {
            if self.eval(&script).await == Value::Bool(true) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what} ({condition}); page state:\n{}", self.describe().await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The page's state, for failure messages: transport, sid and the last events.
    pub async fn describe(&self) -> String {
        let state = self
            .client
            .execute(
                "const s = window.__switchyard, e = window.__events || [];
                 return JSON.stringify({transport: s && s.transport, connected: s && s.connected, sid: s && s.id,
                   cursor: s && s._cursor, outbox: s && s._outbox.length, events: e.length,
                   last: e.slice(-12).map(x => [Math.round(x.t), x.event, x.id, x.data])}, null, 1);",
                vec![],
            )
            .await;
        match state {
            Ok(Value::String(s)) => s,
            other => format!("(could not read the page: {other:?})"),
        }
    }

    pub async fn wait_transport(&self, transport: &str, limit: Duration) {
        self.wait_until(
            &format!("transport `{transport}`"),
            &format!(
                "window.__switchyard && window.__switchyard.connected && window.__switchyard.transport === '{transport}' \
                 && document.getElementById('transport').textContent === '{transport}'"
            ),
            limit,
        )
        .await;
    }

    /// Types `text` into `#message` and clicks Send, as a person would.
    pub async fn send(&self, text: &str) {
        let input = self.client.find(Locator::Css("#message")).await.expect("#message on the page");
        input.send_keys(text).await.expect("typing into #message");
        self.client.find(Locator::Css("#send")).await.expect("#send on the page").click().await.expect("clicking Send");
    }

    /// Sends `message from..=to`, waiting for each reply before the next send when `each`.
    pub async fn send_range(&self, from: usize, to: usize, each: bool) {
        for i in from..=to {
            self.send(&format!("message {i}")).await;
            if each {
                self.wait_responses(i).await;
            }
        }
    }

    pub async fn wait_responses(&self, n: usize) {
        self.wait_until(
            &format!("{n} replies"),
            &format!("window.__events.filter(e => e.event === 'response').length >= {n}"),
            PAGE_WAIT,
        )
        .await;
    }

    /// The `response` events the page got: (cursor, data).
    pub async fn responses(&self) -> Vec<(String, Value)> {
        let list = self
            .eval("return window.__events.filter(e => e.event === 'response').map(e => [e.id, e.data]);")
            .await;
        list.as_array()
            .expect("an array")
            .iter()
            .map(|pair| (pair[0].as_str().expect("a cursor").to_owned(), pair[1].clone()))
            .collect()
    }

    /// Events of one name the page got, with their arrival times (ms since page start).
    pub async fn events_named(&self, name: &str) -> Vec<(f64, Value)> {
        let list = self
            .eval(&format!(
                "return window.__events.filter(e => e.event === {}).map(e => [e.t, e.data]);",
                serde_json::to_string(name).unwrap()
            ))
            .await;
        list.as_array().expect("an array").iter().map(|p| (p[0].as_f64().unwrap(), p[1].clone())).collect()
    }

    /// Asserts that every event of the page's session numbered `1..=last` but those in `except`
    /// reached the page exactly once and in order (the page's event cursors are exactly those
    /// `SID.N`; notices such as `session` are not numbered), and that `replies` of them are the
    /// seed's `Message received!`, each shown once in `#log`. `last` comes from the server's hub.
    pub async fn assert_every_event_once(&self, last: u64, except: &[u64], replies: usize) {
        let sid = self.eval("return window.__switchyard.id;").await;
        let sid = sid.as_str().expect("the page has a sid").to_owned();
        let ids = self.eval("return window.__events.filter(e => e.id).map(e => e.id);").await;
        let seqs: Vec<u64> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|id| id.as_str().unwrap())
            .filter(|id| !id.ends_with('~'))
            .map(|id| {
                let (of, n) = id.rsplit_once('.').expect("a cursor SID.N");
                assert_eq!(of, sid, "event {id} belongs to the page's session");
                n.parse().unwrap()
            })
            .collect();
        let expected: Vec<u64> = (1..=last).filter(|n| !except.contains(n)).collect();
        assert_eq!(seqs, expected, "events 1..={last} (but {except:?}) of session {sid}, each once, in order");

        let got = self.responses().await;
        assert_eq!(got.len(), replies, "replies in the page: {got:?}");
        for (id, data) in &got {
            assert_eq!(data, &json!("Message received!"), "reply {id}");
        }
        let shown = self.eval("return document.querySelectorAll('#log .event-response').length;").await;
        assert_eq!(shown, json!(replies), "#log shows every reply once");
        let gaps = self.events_named("gap").await;
        assert!(gaps.is_empty(), "the session was never lost: {gaps:?}");
    }

    /// The text of the `transport` lifecycle entries in `#log`.
    pub async fn transport_log(&self) -> Vec<String> {
        let list = self
            .eval("return [...document.querySelectorAll('#log .lifecycle-transport')].map(li => li.textContent);")
            .await;
        list.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
    }
}

/// A DevTools command sent through chromedriver.
#[derive(Debug)]
struct Cdp {
    cmd: String,
    params: Value,
}

impl fantoccini::wd::WebDriverCompatibleCommand for Cdp {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/goog/cdp/execute", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        (axum::http::Method::POST, Some(json!({ "cmd": self.cmd, "params": self.params }).to_string()))
    }
}

/// Stops chromedriver if starting the session fails half way.
struct DriverGuard(Option<Child>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            stop_child(child, Duration::from_secs(2));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium is gone after a clean `close`; this is for the other ways out.
        self.kill_chromium();
        stop_child(&mut self.driver, Duration::from_secs(2));
    }
}
