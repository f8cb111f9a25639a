//! The hub's own metrics: transports attached and open, sessions created and resumed, transports
//! closed, the transport changes clients report, and the sessions by transport the expiry task
//! counts. The hub records them with the `metrics` crate's macros like every other part of the
//! gateway; whatever recorder the process installed receives them.
//!
//! Every attach (each long-poll is one) and every detach touches these, so their handles are
//! registered once, on first use, rather than looked up by name on every call as `counter!`
//! does. The rarer counts (gaps, evictions, expiries) are recorded where they happen.

use std::sync::OnceLock;

use metrics::{Counter, Gauge};

use super::history::TransportChange;
use super::Transport;

/// Handles of the metrics touched on every attach and detach.
struct Counters {
    /// By transport: WebSocket, SSE, polling.
    attaches: [Counter; 3],
    resumes: [Counter; 3],
    open: [Gauge; 3],
    sessions_created: Counter,
    detached_closed: Counter,
}

fn counters() -> &'static Counters {
    static COUNTERS: OnceLock<Counters> = OnceLock::new();
    COUNTERS.get_or_init(|| {
        let by_transport = |name: &'static str| Transport::ALL.map(|t| metrics::counter!(name, "transport" => t.as_str()));
        Counters {
            attaches: by_transport("switchyard_attaches_total"),
            resumes: by_transport("switchyard_resumes_total"),
            open: Transport::ALL.map(|t| metrics::gauge!("switchyard_transports_open", "transport" => t.as_str())),
            sessions_created: metrics::counter!("switchyard_sessions_created_total"),
            detached_closed: metrics::counter!("switchyard_detaches_total", "reason" => "closed"),
        }
    })
}

/// Counts a transport attached: to a session it created (`fresh`), or resuming one (`resumed`;
/// neither for a long-poll that continues a long-poll).
pub(super) fn transport_attached(transport: Transport, fresh: bool, resumed: bool) {
    let m = counters();
    m.attaches[transport.index()].increment(1);
    m.open[transport.index()].increment(1);
    if fresh {
        m.sessions_created.increment(1);
    } else if resumed {
        m.resumes[transport.index()].increment(1);
    }
}

/// Counts a transport gone; `detached` when it still held its session (a close, not a takeover).
pub(super) fn transport_closed(transport: Transport, detached: bool) {
    let m = counters();
    m.open[transport.index()].decrement(1);
    if detached {
        m.detached_closed.increment(1);
    }
}

/// Counts a transport change a client reported on attaching `to` (rare: by name, not a handle).
pub(super) fn transport_changed(change: TransportChange, to: Transport) {
    let (from, reason) = (change.from.as_str(), change.reason.as_str());
    metrics::counter!("switchyard_transport_changes_total", "from" => from, "to" => to.as_str(), "reason" => reason).increment(1);
}

/// Moves `switchyard_sessions_by_transport` from a hub's last count to its new one (each by
/// transport, then the sessions between transports, `none`).
pub(super) fn sessions_by_transport(last: [usize; 4], now: [usize; 4]) {
    static GAUGES: OnceLock<[Gauge; 4]> = OnceLock::new();
    let gauges = GAUGES.get_or_init(|| {
        let name = "switchyard_sessions_by_transport";
        let [ws, sse, polling] = Transport::ALL.map(|t| metrics::gauge!(name, "transport" => t.as_str()));
        [ws, sse, polling, metrics::gauge!(name, "transport" => "none")]
    });
    for ((gauge, last), now) in gauges.iter().zip(last).zip(now) {
        if now != last {
            gauge.increment(now as f64 - last as f64);
        }
    }
}
