//! The HTTP client: one `reqwest` pool for every session, its timeouts, and what a failed call is.
//!
//! A call waits for one of [`UpstreamConfig::max_in_flight`](super::UpstreamConfig::max_in_flight)
//! permits, POSTs the request, reads at most [`MAX_ANSWER`] bytes and parses them as an answer.
//! Only a request that never reached the app (connection refused) is retried, once: anything
//! else may have had effects. Every outcome is counted ([`Upstream::stats`], and the Prometheus
//! counter `switchyard_upstream_requests_total{outcome}`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

use super::schema::{parse_answer, Action};
use super::{Upstream, UpstreamConfig};

/// Largest answer read from the app.
const MAX_ANSWER: usize = 1024 * 1024;

/// Pause before the one retry of a request that could not connect.
const RETRY_DELAY: Duration = Duration::from_millis(100);

/// Why a call to the app failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// No connection to the app (refused even after the one retry, reset, DNS).
    #[error("the application is unreachable")]
    Unavailable,
    /// No whole answer within the upstream timeout.
    #[error("the application did not answer in time")]
    Timeout,
    /// The app answered with this non-2xx status.
    #[error("the application answered HTTP {0}")]
    Status(u16),
    /// The answer is not a valid answer (see [`parse_answer`](super::parse_answer)); why.
    #[error("the application's answer is malformed: {0}")]
    Malformed(String),
    /// The session's queue, or the requests in flight, stayed full past the timeout.
    #[error("too many events are waiting for the application; slow down")]
    Busy,
}

impl Failure {
    /// The `reason` field of the client's `error` event and the label of the failure counter.
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Unavailable => "unavailable",
            Failure::Timeout => "timeout",
            Failure::Status(_) => "status",
            Failure::Malformed(_) => "malformed",
            Failure::Busy => "busy",
        }
    }
}

/// Counts of what the upstream client did, for tests and (later) metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamStats {
    /// Requests the app answered with a 2xx and a well-formed answer.
    pub ok: u64,
    /// Calls that failed as [`Failure::Unavailable`].
    pub unavailable: u64,
    /// Calls that failed as [`Failure::Timeout`].
    pub timeout: u64,
    /// Calls that failed as [`Failure::Status`].
    pub status: u64,
    /// Calls that failed as [`Failure::Malformed`].
    pub malformed: u64,
    /// Events refused as [`Failure::Busy`].
    pub busy: u64,
}

impl UpstreamStats {
    /// Every failure, of whatever kind.
    pub fn failures(&self) -> u64 {
        self.unavailable + self.timeout + self.status + self.malformed + self.busy
    }
}

#[derive(Default)]
pub(super) struct Counters {
    ok: AtomicU64,
    unavailable: AtomicU64,
    timeout: AtomicU64,
    status: AtomicU64,
    malformed: AtomicU64,
    busy: AtomicU64,
}

/// The client every call goes through: plain HTTP, with the configured timeouts.
pub(super) fn http_client(config: &UpstreamConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        .timeout(config.timeout)
        .tcp_nodelay(true)
        .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("a plain HTTP client always builds")
}

impl Upstream {
    /// What the client did so far, by outcome.
    pub fn stats(&self) -> UpstreamStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        UpstreamStats {
            ok: get(&c.ok),
            unavailable: get(&c.unavailable),
            timeout: get(&c.timeout),
            status: get(&c.status),
            malformed: get(&c.malformed),
            busy: get(&c.busy),
        }
    }

    /// POSTs `body` to `url` and parses the answer. The error carries a detail for the log.
    pub(super) async fn call(&self, url: &str, body: &Value) -> Result<(u16, Vec<Action>), (Failure, String)> {
        let timeout = self.inner.config.timeout;
        let _permit = match tokio::time::timeout(timeout, self.inner.in_flight.acquire()).await {
            Ok(Ok(permit)) => permit,
            _ => return Err((Failure::Busy, format!("{} requests already in flight", self.inner.config.max_in_flight))),
        };
        let mut retried = false;
        let response = loop {
            match self.inner.client.post(url).json(body).send().await {
                Ok(response) => break response,
                // Nothing reached the app: safe to try once more.
                Err(err) if err.is_connect() && !retried => {
                    retried = true;
                    tokio::time::sleep(RETRY_DELAY).await;
                }
                Err(err) if err.is_timeout() => return Err((Failure::Timeout, format!("no answer within {timeout:?}"))),
                Err(err) => return Err((Failure::Unavailable, error_chain(&err))),
            }
        };
        let status = response.status().as_u16();
        let text = read_capped(response).await.map_err(|(failure, detail)| (failure, format!("reading the answer: {detail}")))?;
        if !(200..300).contains(&status) {
            return Err((Failure::Status(status), text));
        }
        let actions = parse_answer(&text).map_err(|why| (Failure::Malformed(why.clone()), why))?;
        self.inner.counters.ok.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("switchyard_upstream_requests_total", "outcome" => "ok").increment(1);
        Ok((status, actions))
    }

    pub(super) fn count(&self, failure: &Failure) {
        let c = &self.inner.counters;
        let counter = match failure {
            Failure::Unavailable => &c.unavailable,
            Failure::Timeout => &c.timeout,
            Failure::Status(_) => &c.status,
            Failure::Malformed(_) => &c.malformed,
            Failure::Busy => &c.busy,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("switchyard_upstream_requests_total", "outcome" => failure.reason()).increment(1);
    }
}


/// Reads at most [`MAX_ANSWER`] bytes of an answer as UTF-8 text.
async fn read_capped(mut response: reqwest::Response) -> Result<String, (Failure, String)> {
    let mut bytes = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if bytes.len() + chunk.len() > MAX_ANSWER {
                    return Err((Failure::Malformed(format!("answer longer than {MAX_ANSWER} bytes")), "too long".into()));
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(err) if err.is_timeout() => return Err((Failure::Timeout, "answer body too slow".into())),
            Err(err) => return Err((Failure::Unavailable, error_chain(&err))),
        }
    }
    String::from_utf8(bytes).map_err(|_| (Failure::Malformed("answer is not UTF-8".into()), "not UTF-8".into()))
}

/// At most 200 characters of a detail for a log line (an app's error page can be long).
pub(super) fn brief(detail: &str) -> String {
    let mut out: String = detail.chars().take(200).collect();
    if out.len() < detail.len() {
        out.push('…');
    }
    out
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
