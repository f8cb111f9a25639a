//! Observability: what the gateway records, for Prometheus (`GET /metrics`).
//!
//! Counters and gauges are recorded with the `metrics` crate's macros wherever the thing they
//! count happens; this module installs the Prometheus recorder (once per process, since a
//! recorder is global), counts the per-event figures cheaply, and renders the registry. The
//! routes that serve it (`GET /metrics`, and the liveness probe `GET /healthz`) are the
//! gateway's: they read its hub, and this module sits below the gateway. An application that
//! embeds the gateway and installed a recorder of its own keeps it: the gateway's metrics then
//! flow into that recorder and `/metrics` says where to look.
//!
//! Labels are bounded sets (transport, reason, status, kind): never a sid or an event name, so
//! the number of series stays fixed however many sessions come and go.
//!
//! The operator page (`admin`) reads the same registry through [`samples`]: the text `/metrics`
//! renders, parsed back, so what the page shows is what Prometheus scrapes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use axum::http::StatusCode;
use metrics::Counter;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::hub::Transport;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder unless the process already has a recorder.
pub fn install() {
    HANDLE.get_or_init(|| {
        // Redis round trips (cluster mode) as a histogram: buckets from 50 µs to 1 s.
        const REDIS_BUCKETS: [f64; 12] = [0.000_05, 0.000_1, 0.000_2, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full("switchyard_redis_command_seconds".into()), &REDIS_BUCKETS)
            .expect("the buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        match metrics::set_global_recorder(recorder) {
            Ok(()) => {
                describe();
                Some(handle)
            }
            Err(_) => None,
        }
    });
}

fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!("switchyard_sessions", "Live sessions (attached or within their grace period)");
    describe_gauge!("switchyard_transports_open", "Open transports, by transport");
    describe_gauge!(
        "switchyard_sessions_by_transport",
        "Live sessions by the transport they are on (polling between polls too), or none; counted once a second"
    );
    describe_counter!("switchyard_attaches_total", "Transports attached, by transport");
    describe_counter!("switchyard_resumes_total", "Attaches that resumed an existing session, by transport");
    describe_counter!(
        "switchyard_transport_changes_total",
        "Transport changes clients reported on attaching, by from, to and reason (an SSE stream's once it held its session 5 s)"
    );
    describe_counter!("switchyard_detaches_total", "Transports detached, by reason");
    describe_counter!(
        "switchyard_websocket_handshakes_total",
        "WebSocket handshakes accepted, by the HTTP version they came over: 1.1 (Upgrade) or 2 (extended CONNECT, RFC 8441)"
    );
    describe_counter!("switchyard_sessions_created_total", "Sessions created");
    describe_counter!("switchyard_sessions_expired_total", "Sessions removed after their grace period");
    describe_counter!("switchyard_gaps_total", "Gap notices sent, by reason");
    describe_counter!("switchyard_events_in_total", "Client events received, by way in (websocket, post)");
    describe_counter!("switchyard_events_out_total", "Events written to clients, by transport");
    describe_counter!("switchyard_bytes_out_total", "Event bytes written to clients, by transport");
    describe_counter!("switchyard_post_responses_total", "Answers to POSTed events, by status");
    describe_counter!("switchyard_errors_total", "Errors answered to clients, by kind");
    describe_counter!("switchyard_resends_skipped_total", "Numbered client sends skipped as already handled");
    describe_counter!("switchyard_expire_hooks_dropped_total", "Expired sessions whose expire hook was dropped: too many hooks waiting");
    describe_counter!(
        "switchyard_upstream_requests_total",
        "Requests to the application (--upstream), by outcome: ok, unavailable, timeout, status, malformed, busy"
    );
}

/// A WebSocket handshake accepted over HTTP `version` (1.1's `Upgrade` or HTTP/2's extended
/// `CONNECT`): how many clients' WebSockets share their HTTP/2 connection.
pub fn websocket_handshake(version: axum::http::Version) {
    let http = if version == axum::http::Version::HTTP_2 { "2" } else { "1.1" };
    metrics::counter!("switchyard_websocket_handshakes_total", "http" => http).increment(1);
}

/// Handles of the metrics touched for every event, registered once: the `counter!` macro builds
/// and looks up its key on every call, which is measurable at tens of thousands of events a
/// second. (The hub keeps its own for every attach and detach.)
struct PerEvent {
    /// By transport: WebSocket, SSE, polling.
    events_out: [Counter; 3],
    bytes_out: [Counter; 3],
    in_websocket: Counter,
    in_post: Counter,
}

fn per_event() -> &'static PerEvent {
    static PER_EVENT: OnceLock<PerEvent> = OnceLock::new();
    PER_EVENT.get_or_init(|| {
        let by_transport = |name: &'static str| Transport::ALL.map(|t| metrics::counter!(name, "transport" => t.as_str()));
        PerEvent {
            events_out: by_transport("switchyard_events_out_total"),
            bytes_out: by_transport("switchyard_bytes_out_total"),
            in_websocket: metrics::counter!("switchyard_events_in_total", "via" => "websocket"),
            in_post: metrics::counter!("switchyard_events_in_total", "via" => "post"),
        }
    })
}

/// The counters touched several times per round trip (events in, events and bytes out) are
/// counted here in plain atomics, one add each, and copied into the registry by [`sync`] (at
/// every `/metrics` render, and every second by [`sync_every_second`], a task of each gateway):
/// a registry counter costs two atomic adds per increment (value and generation), and at the
/// margins issue 5's round-trip target is measured at, the difference shows.
struct EventCounts {
    out: [AtomicU64; 3],
    bytes: [AtomicU64; 3],
    in_websocket: AtomicU64,
    in_post: AtomicU64,
}

static COUNTS: EventCounts = EventCounts {
    out: [const { AtomicU64::new(0) }; 3],
    bytes: [const { AtomicU64::new(0) }; 3],
    in_websocket: AtomicU64::new(0),
    in_post: AtomicU64::new(0),
};

/// Runs [`sync`] once a second, forever: for a recorder that is read without a `/metrics`
/// render (an embedding application's own). The gateway runs it as one of its tasks.
pub async fn sync_every_second() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sync();
    }
}

/// Copies the per-event counts into the registry's counters.
pub fn sync() {
    let m = per_event();
    for i in 0..3 {
        m.events_out[i].absolute(COUNTS.out[i].load(Ordering::Relaxed));
        m.bytes_out[i].absolute(COUNTS.bytes[i].load(Ordering::Relaxed));
    }
    m.in_websocket.absolute(COUNTS.in_websocket.load(Ordering::Relaxed));
    m.in_post.absolute(COUNTS.in_post.load(Ordering::Relaxed));
}

/// Counts one written event of `bytes` bytes on `transport`.
pub fn event_out(transport: Transport, bytes: usize) {
    COUNTS.out[transport.index()].fetch_add(1, Ordering::Relaxed);
    COUNTS.bytes[transport.index()].fetch_add(bytes as u64, Ordering::Relaxed);
}

/// Counts one answer to a POST. The common answer's counter is registered once; the others
/// (errors) are rarer and looked up by name.
pub fn post_response(status: StatusCode) {
    static ACCEPTED: OnceLock<Counter> = OnceLock::new();
    if status == StatusCode::ACCEPTED {
        ACCEPTED.get_or_init(|| metrics::counter!("switchyard_post_responses_total", "status" => "202")).increment(1);
    } else {
        metrics::counter!("switchyard_post_responses_total", "status" => status.as_str().to_owned()).increment(1);
    }
}

/// Counts `n` client events received over a WebSocket.
pub fn events_in_websocket(n: usize) {
    COUNTS.in_websocket.fetch_add(n as u64, Ordering::Relaxed);
}

/// Counts `n` client events received in POST bodies.
pub fn events_in_post(n: usize) {
    COUNTS.in_post.fetch_add(n as u64, Ordering::Relaxed);
}

/// The registry in the Prometheus text format, with the live session count as
/// `switchyard_sessions`; `None` when the process records into a recorder an embedding
/// application installed (the gateway's `GET /metrics` then says where to look).
pub fn render(sessions: usize) -> Option<String> {
    let handle = HANDLE.get().and_then(Option::as_ref)?;
    sync();
    metrics::gauge!("switchyard_sessions").set(sessions as f64);
    Some(handle.render())
}

/// One line of the registry as `/metrics` renders it: a metric's name, its labels, its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric's name (`switchyard_attaches_total`).
    pub name: String,
    /// Its labels, in the order rendered (`[("transport", "sse")]`).
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: f64,
}

impl Sample {
    /// The value of the label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// The registry exactly as [`render`] renders it for `/metrics`, read back into samples; `None`
/// where `render` is.
pub fn samples(sessions: usize) -> Option<Vec<Sample>> {
    render(sessions).map(|text| parse(&text))
}

/// Reads the Prometheus text format (as [`render`] writes it) into samples; comment lines and
/// lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter(|line| !line.is_empty() && !line.starts_with('#')).filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    // The value is the last field (no timestamps are written); label values may hold spaces.
    let (series, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        value => value.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        None => (series, Vec::new()),
        Some((name, labels)) => (name, parse_labels(labels.strip_suffix('}')?)?),
    };
    Some(Sample { name: name.to_owned(), labels, value })
}

/// `key="value",key="value"`, the values with `\\`, `\"` and `\n` escaped.
fn parse_labels(mut text: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    while !text.is_empty() {
        let (key, rest) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (at, '"') => break at,
                (_, c) => value.push(c),
            }
        };
        labels.push((key.to_owned(), value));
        let rest = &rest[end + 1..];
        text = rest.strip_prefix(',').unwrap_or(rest);
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prometheus_text_reads_back_into_samples() {
        let text = "# HELP switchyard_sessions Live sessions\n\
                    # TYPE switchyard_sessions gauge\n\
                    switchyard_sessions 30\n\
                    switchyard_detaches_total{reason=\"slow consumer\"} 2\n\
                    switchyard_transport_changes_total{from=\"websocket\",to=\"sse\",reason=\"ws_blocked\"} 10\n\
                    odd{q=\"a \\\"quoted\\\" \\\\ word\\n\"} 1.5\n\
                    switchyard_redis_command_seconds_bucket{op=\"emit\",le=\"+Inf\"} 4\n\
                    \n\
                    not a sample\n";
        let samples = parse(text);
        let expected = [
            ("switchyard_sessions", vec![], 30.0),
            ("switchyard_detaches_total", vec![("reason", "slow consumer")], 2.0),
            ("switchyard_transport_changes_total", vec![("from", "websocket"), ("to", "sse"), ("reason", "ws_blocked")], 10.0),
            ("odd", vec![("q", "a \"quoted\" \\ word\n")], 1.5),
            ("switchyard_redis_command_seconds_bucket", vec![("op", "emit"), ("le", "+Inf")], 4.0),
        ];
        let expected: Vec<Sample> = expected
            .into_iter()
            .map(|(name, labels, value)| Sample {
                name: name.to_owned(),
                labels: labels.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
                value,
            })
            .collect();
        assert_eq!(samples, expected);
        assert_eq!(samples[2].label("reason"), Some("ws_blocked"));
        assert_eq!(samples[2].label("nope"), None);
    }
}
