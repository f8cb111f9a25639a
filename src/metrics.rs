//! Observability: Prometheus metrics (`GET /metrics`) and a liveness probe (`GET /healthz`).
//!
//! Counters and gauges are recorded with the `metrics` crate's macros wherever the thing they
//! count happens; this module installs the Prometheus recorder (once per process, since a
//! recorder is global) and renders it. An application that embeds the gateway and installed a
//! recorder of its own keeps it: the gateway's metrics then flow into that recorder and
//! `/metrics` says where to look.
//!
//! Labels are bounded sets (transport, reason, status, kind): never a sid or an event name, so
//! the number of series stays fixed however many sessions come and go.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::gateway::Gateway;
use crate::hub::Transport;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder unless the process already has a recorder.
pub fn install() {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
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
    describe_counter!("switchyard_attaches_total", "Transports attached, by transport");
    describe_counter!("switchyard_resumes_total", "Attaches that resumed an existing session, by transport");
    describe_counter!("switchyard_detaches_total", "Transports detached, by reason");
    describe_counter!("switchyard_sessions_created_total", "Sessions created");
    describe_counter!("switchyard_sessions_expired_total", "Sessions removed after their grace period");
    describe_counter!("switchyard_gaps_total", "Gap notices sent, by reason");
    describe_counter!("switchyard_events_in_total", "Client events received, by way in (websocket, post)");
    describe_counter!("switchyard_events_out_total", "Events written to clients, by transport");
    describe_counter!("switchyard_bytes_out_total", "Event bytes written to clients, by transport");
    describe_counter!("switchyard_post_responses_total", "Answers to POSTed events, by status");
    describe_counter!("switchyard_errors_total", "Errors answered to clients, by kind");
    describe_counter!("switchyard_resends_skipped_total", "Numbered client sends skipped as already handled");
    describe_counter!(
        "switchyard_upstream_requests_total",
        "Requests to the application (--upstream), by outcome: ok, unavailable, timeout, status, malformed, busy"
    );
}

/// Counts one written event of `bytes` bytes on `transport`.
pub fn event_out(transport: Transport, bytes: usize) {
    metrics::counter!("switchyard_events_out_total", "transport" => transport.as_str()).increment(1);
    metrics::counter!("switchyard_bytes_out_total", "transport" => transport.as_str()).increment(bytes as u64);
}

/// Counts `n` client events received over `via` (`websocket` or `post`).
pub fn events_in(via: &'static str, n: usize) {
    metrics::counter!("switchyard_events_in_total", "via" => via).increment(n as u64);
}

/// `GET /metrics`: the Prometheus text format.
pub async fn render(State(gateway): State<Gateway>) -> Response {
    match HANDLE.get().and_then(Option::as_ref) {
        Some(handle) => {
            metrics::gauge!("switchyard_sessions").set(gateway.hub().len() as f64);
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render()).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            "metrics go to the recorder the embedding application installed\n",
        )
            .into_response(),
    }
}

/// `GET /healthz`: the process is up and serving.
pub async fn healthz(State(gateway): State<Gateway>) -> Response {
    let body = serde_json::json!({"status": "ok", "sessions": gateway.hub().len()});
    axum::Json(body).into_response()
}
