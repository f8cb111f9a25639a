//! The numbers behind the operator page: once a second, the registry `/metrics` renders (read
//! back through [`metrics::samples`]), the session count and the busiest rooms, turned into one
//! `tick` that every open page is sent, and kept for the charts.
//!
//! One task samples, whatever the number of pages open: each page's stream only copies the
//! latest tick, rendered once ([`Sampler::subscribe`]). What is kept is bounded: the chart
//! points of the last 15 minutes (a dozen numbers a second) and the totals of the last minute,
//! for the per-minute figures. The cost does not grow with the sessions held: rendering the
//! registry walks its series (a fixed set), and the rooms walk is over rooms, not sessions.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::hub::{Hub, Transport};
use crate::metrics::{self, Sample};

/// How much chart history is kept and sent to a page that opens: 15 minutes, a point a second.
pub const HISTORY: usize = 15 * 60;

/// How many rooms the page lists.
const TOP_ROOMS: usize = 12;

/// Cluster mode: a node's report older than this is left out of the page (its node is gone, or
/// cut off from Redis).
pub const REPORT_FRESH: Duration = Duration::from_secs(5);

/// Cluster mode: a report older than this is deleted by the node that reads it, so the hash of
/// reports does not grow with the ids of gone nodes. Longer than [`REPORT_FRESH`], so that a
/// node's clock running a little behind the others' does not get its reports deleted.
const REPORT_FORGET: Duration = Duration::from_secs(60);

/// Cluster mode: the longest the sampler waits on Redis for the reports in a tick.
const REPORT_TIMEOUT: Duration = Duration::from_millis(800);

/// What of a tick goes into a node's report, and is summed into the cluster's totals.
const REPORTED: [&str; 9] = ["sessions", "on", "rate", "minute", "totals", "gaps", "errors", "post", "detaches"];

/// What each chart point holds, in order (the page reads them by these names).
pub const POINT_FIELDS: [&str; 12] = [
    "t",
    "websocket",
    "sse",
    "polling",
    "sessions",
    "in_per_s",
    "out_per_s",
    "bytes_per_s",
    "attaches_per_min",
    "resumes_per_min",
    "fallbacks_per_min",
    "upgrades_per_min",
];

type Point = [f64; POINT_FIELDS.len()];

/// The sampling task's output, shared with every page's stream.
pub struct Sampler {
    hub: Hub,
    /// The address this node serves on, named in its cluster report.
    addr: Option<String>,
    /// The chart points of the last [`HISTORY`] seconds and the totals of the last minute.
    /// Written by the sampling task once a second; read by a page's stream when it opens.
    recent: Mutex<Recent>,
    /// The latest tick, rendered once as JSON. The sampling task holds this sender; each
    /// page's stream holds a receiver ([`Sampler::subscribe`]) until the page goes.
    tick_tx: watch::Sender<Option<Arc<str>>>,
    /// When sampling started, for the page's uptime.
    started: Instant,
}

#[derive(Default)]
struct Recent {
    points: VecDeque<Point>,
    /// Oldest first; the front is about a minute old once a minute has passed.
    totals: VecDeque<Totals>,
}

/// The counters of one sample that the page shows as totals, rates or per-minute figures.
#[derive(Clone, Default)]
struct Totals {
    at: Option<Instant>,
    attaches: f64,
    resumes: f64,
    created: f64,
    expired: f64,
    events_in: f64,
    events_out: f64,
    bytes_out: f64,
    /// By (from, to, reason).
    changes: BTreeMap<(String, String, String), f64>,
    gaps: BTreeMap<String, f64>,
    errors: BTreeMap<String, f64>,
    post: BTreeMap<String, f64>,
    detaches: BTreeMap<String, f64>,
}

impl Totals {
    fn of(samples: &[Sample], at: Instant) -> Totals {
        let mut changes = BTreeMap::new();
        for s in samples.iter().filter(|s| s.name == "switchyard_transport_changes_total") {
            let key = |k| s.label(k).unwrap_or("").to_owned();
            *changes.entry((key("from"), key("to"), key("reason"))).or_insert(0.0) += s.value;
        }
        Totals {
            at: Some(at),
            attaches: sum(samples, "switchyard_attaches_total"),
            resumes: sum(samples, "switchyard_resumes_total"),
            created: sum(samples, "switchyard_sessions_created_total"),
            expired: sum(samples, "switchyard_sessions_expired_total"),
            events_in: sum(samples, "switchyard_events_in_total"),
            events_out: sum(samples, "switchyard_events_out_total"),
            bytes_out: sum(samples, "switchyard_bytes_out_total"),
            changes,
            gaps: by(samples, "switchyard_gaps_total", "reason"),
            errors: by(samples, "switchyard_errors_total", "kind"),
            post: by(samples, "switchyard_post_responses_total", "status"),
            detaches: by(samples, "switchyard_detaches_total", "reason"),
        }
    }

    /// Changes down the ladder (fallbacks) and up it (upgrades).
    fn directions(&self) -> (f64, f64) {
        let rung = |name: &str| Transport::from_name(name).map(Transport::index);
        self.changes.iter().fold((0.0, 0.0), |(down, up), ((from, to, _), n)| match (rung(from), rung(to)) {
            (Some(f), Some(t)) if t > f => (down + n, up),
            (Some(f), Some(t)) if t < f => (down, up + n),
            _ => (down, up),
        })
    }
}

fn sum(samples: &[Sample], name: &str) -> f64 {
    // A fold from 0: `Sum` for floats starts at -0.0, which would be sent as such.
    samples.iter().filter(|s| s.name == name).fold(0.0, |total, s| total + s.value)
}

/// Whole numbers as integers (counters are), the rest to the millisecond: what the page is sent
/// reads as the counters read on `/metrics`.
fn tidy(value: &mut Value) {
    match value {
        Value::Number(n) => {
            if let Some(x) = n.as_f64().filter(|_| n.is_f64()) {
                *value = if x.fract() == 0.0 && x.abs() < 9e15 { json!(x as i64) } else { json!((x * 1000.0).round() / 1000.0) };
            }
        }
        Value::Array(items) => items.iter_mut().for_each(tidy),
        Value::Object(map) => map.values_mut().for_each(tidy),
        _ => {}
    }
}

fn by(samples: &[Sample], name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == name) {
        *out.entry(s.label(label).unwrap_or("").to_owned()).or_insert(0.0) += s.value;
    }
    out
}

/// `{"key": [total, in the last minute]}` for every key of `now`.
fn with_minute(now: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> Value {
    let map: Map<String, Value> = now
        .iter()
        .map(|(k, v)| (k.clone(), json!([v, (v - before.get(k).copied().unwrap_or(0.0)).max(0.0)])))
        .collect();
    Value::Object(map)
}

impl Sampler {
    pub fn new(hub: Hub, addr: Option<String>) -> Arc<Sampler> {
        Arc::new(Sampler { hub, addr, recent: Mutex::new(Recent::default()), tick_tx: watch::Sender::new(None), started: Instant::now() })
    }

    /// Samples once a second, forever (the gateway's task: it ends with the gateway).
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            self.sample().await;
        }
    }

    /// The latest tick, and every one after it.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<str>>> {
        self.tick_tx.subscribe()
    }

    /// The chart points kept, for a page that opens: `{"fields": [...], "points": [[...], ...]}`.
    pub fn history(&self) -> String {
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let mut history = json!({ "fields": POINT_FIELDS, "points": recent.points });
        drop(recent);
        tidy(&mut history);
        history.to_string()
    }

    /// Takes one sample and publishes its tick.
    pub async fn sample(&self) {
        let sessions = self.hub.len();
        let node = self.hub.cluster().map(|cluster| cluster.node().to_string());
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let uptime = self.started.elapsed().as_secs();
        let Some(samples) = metrics::samples(sessions) else {
            let tick = json!({ "t": wall, "node": node, "uptime": uptime, "sessions": sessions, "recorder": "external" });
            self.tick_tx.send_replace(Some(tick.to_string().into()));
            return;
        };
        let rooms = self.hub.busiest_rooms(TOP_ROOMS).await;
        let now = Instant::now();
        let totals = Totals::of(&samples, now);
        // By the expiry task's count (a long-polling session between two polls is on polling),
        // not by open transports (it holds none then).
        let on = by(&samples, "switchyard_sessions_by_transport", "transport");
        let on_ = |name: &str| on.get(name).copied().unwrap_or(0.0).max(0.0);
        let (ws, sse, polling, none) = (on_("websocket"), on_("sse"), on_("polling"), on_("none"));

        // The lock is held in a block of its own: not across the cluster report's awaits.
        let (previous, minute) = {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            let previous = recent.totals.back().cloned().unwrap_or_default();
            recent.totals.push_back(totals.clone());
            while recent.totals.len() > 61 {
                recent.totals.pop_front();
            }
            (previous, recent.totals.front().cloned().unwrap_or_default())
        };
        let seconds = previous.at.map_or(1.0, |at| now.saturating_duration_since(at).as_secs_f64().max(0.001));
        let rate = |now: f64, then: f64| if previous.at.is_some() { ((now - then) / seconds).max(0.0) } else { 0.0 };
        let (in_rate, out_rate, bytes_rate) = (
            rate(totals.events_in, previous.events_in),
            rate(totals.events_out, previous.events_out),
            rate(totals.bytes_out, previous.bytes_out),
        );
        let (down, up) = totals.directions();
        let (down_before, up_before) = minute.directions();
        let per_minute = |now: f64, then: f64| (now - then).max(0.0);
        let point: Point = [
            wall as f64,
            ws,
            sse,
            polling,
            sessions as f64,
            in_rate,
            out_rate,
            bytes_rate,
            per_minute(totals.attaches, minute.attaches),
            per_minute(totals.resumes, minute.resumes),
            per_minute(down, down_before),
            per_minute(up, up_before),
        ];
        {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            recent.points.push_back(point);
            while recent.points.len() > HISTORY {
                recent.points.pop_front();
            }
        }

        let mut changes: Vec<Value> = totals
            .changes
            .iter()
            .map(|((from, to, reason), total)| {
                let before = minute.changes.get(&(from.clone(), to.clone(), reason.clone())).copied().unwrap_or(0.0);
                json!({ "from": from, "to": to, "reason": reason, "total": total, "minute": (total - before).max(0.0) })
            })
            .collect();
        let key = |v: &Value| (v["minute"].as_f64().unwrap_or(0.0), v["total"].as_f64().unwrap_or(0.0));
        changes.sort_by(|a, b| key(b).partial_cmp(&key(a)).unwrap_or(std::cmp::Ordering::Equal));
        let mut tick = json!({
            "t": wall,
            "node": node,
            "uptime": uptime,
            "sessions": sessions,
            "on": { "websocket": ws, "sse": sse, "polling": polling, "none": none },
            "rate": { "in": in_rate, "out": out_rate, "bytes": bytes_rate },
            "minute": {
                "attaches": point[8], "resumes": point[9], "fallbacks": point[10], "upgrades": point[11],
                "created": per_minute(totals.created, minute.created), "expired": per_minute(totals.expired, minute.expired),
            },
            "totals": {
                "attaches": totals.attaches, "resumes": totals.resumes, "created": totals.created, "expired": totals.expired,
                "in": totals.events_in, "out": totals.events_out, "bytes": totals.bytes_out, "fallbacks": down, "upgrades": up,
            },
            "changes": changes,
            "gaps": with_minute(&totals.gaps, &minute.gaps),
            "errors": with_minute(&totals.errors, &minute.errors),
            "post": with_minute(&totals.post, &minute.post),
            "detaches": with_minute(&totals.detaches, &minute.detaches),
            "rooms": rooms.map(|(count, top)| json!({ "count": count, "top": top })),
            "point": point,
        });
        tidy(&mut tick);
        if self.hub.cluster().is_some() {
            let view = self.cluster_view(&tick, wall).await;
            tick["cluster"] = view;
        }
        self.tick_tx.send_replace(Some(tick.to_string().into()));
    }
}

impl Sampler {
    /// Cluster mode: publishes this node's report (the figures of `tick` in [`REPORTED`], its
    /// node id, address and time) to Redis, reads every node's, forgets those of gone nodes,
    /// and returns the view the page shows: `{"nodes": [...], "totals": {...}}`, the totals
    /// being the sums over the nodes that reported in the last [`REPORT_FRESH`]; or
    /// `{"error": ...}` when Redis does not answer in time.
    async fn cluster_view(&self, tick: &Value, wall: u64) -> Value {
        let Some(cluster) = self.hub.cluster() else { return Value::Null };
        let mut report = Map::new();
        report.insert("node".into(), json!(&*cluster.node()));
        report.insert("addr".into(), json!(self.addr));
        report.insert("t".into(), json!(wall));
        for key in REPORTED {
            report.insert(key.into(), tick.get(key).cloned().unwrap_or(Value::Null));
        }
        let report = Value::Object(report);
        let exchange = async {
            cluster.publish_admin(&report.to_string()).await?;
            cluster.admin_reports().await
        };
        let reports = match tokio::time::timeout(REPORT_TIMEOUT, exchange).await {
            Ok(Ok(reports)) => reports,
            Ok(Err(_)) | Err(_) => return json!({ "error": "Redis did not answer: the other nodes' reports are not known" }),
        };
        let (nodes, gone) = gather(reports, wall);
        if !gone.is_empty() {
            let _ = tokio::time::timeout(REPORT_TIMEOUT, cluster.forget_admin(&gone)).await;
        }
        let mut totals = Value::Null;
        for node in &nodes {
            for key in REPORTED {
                if let Some(value) = node.get(key) {
                    add(&mut totals, key, value);
                }
            }
        }
        json!({ "nodes": nodes, "totals": totals, "fresh_ms": REPORT_FRESH.as_millis() as u64 })
    }
}

/// The fresh reports among `reports` (with their age, `age_ms`), sorted by node id, and the
/// ids whose reports are old enough to forget (or unreadable).
fn gather(reports: Vec<(String, String)>, wall: u64) -> (Vec<Value>, Vec<String>) {
    let mut nodes = Vec::new();
    let mut gone = Vec::new();
    for (id, text) in reports {
        let Ok(mut report) = serde_json::from_str::<Value>(&text) else {
            gone.push(id);
            continue;
        };
        let age = wall.saturating_sub(report["t"].as_u64().unwrap_or(0));
        if age > REPORT_FORGET.as_millis() as u64 {
            gone.push(id);
        } else if age <= REPORT_FRESH.as_millis() as u64 {
            report["age_ms"] = json!(age);
            nodes.push(report);
        }
    }
    nodes.sort_by(|a, b| a["node"].as_str().cmp(&b["node"].as_str()));
    (nodes, gone)
}

/// Adds `value` into `into[key]`: numbers are summed, objects key by key, arrays (a figure's
/// `[total, last minute]`) item by item.
fn add(into: &mut Value, key: &str, value: &Value) {
    if !into.is_object() {
        *into = Value::Object(Map::new());
    }
    let slot = into.as_object_mut().map(|map| map.entry(key.to_owned()).or_insert(Value::Null));
    if let Some(slot) = slot {
        sum_into(slot, value);
    }
}

fn sum_into(slot: &mut Value, value: &Value) {
    match (slot.take(), value) {
        (Value::Null, v) => *slot = v.clone(),
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap_or(0.0), b.as_f64().unwrap_or(0.0));
            *slot = json!(a + b);
            tidy(slot);
        }
        (Value::Object(mut a), Value::Object(b)) => {
            for (k, v) in b {
                sum_into(a.entry(k.clone()).or_insert(Value::Null), v);
            }
            *slot = Value::Object(a);
        }
        (Value::Array(mut a), Value::Array(b)) => {
            for (i, v) in b.iter().enumerate() {
                match a.get_mut(i) {
                    Some(item) => sum_into(item, v),
                    None => a.push(v.clone()),
                }
            }
            *slot = Value::Array(a);
        }
        (kept, _) => *slot = kept,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_add_up_key_by_key() {
        let mut totals = Value::Null;
        for report in [
            json!({"sessions": 2, "on": {"websocket": 1, "sse": 1}, "gaps": {"lag": [3, 1]}, "rate": {"in": 0.5}}),
            json!({"sessions": 3, "on": {"websocket": 2, "polling": 1}, "gaps": {"lag": [1, 0], "expired": [2, 2]}, "rate": {"in": 1.25}}),
        ] {
            for key in ["sessions", "on", "gaps", "rate"] {
                add(&mut totals, key, &report[key]);
            }
        }
        assert_eq!(
            totals,
            json!({"sessions": 5, "on": {"websocket": 3, "sse": 1, "polling": 1}, "gaps": {"lag": [4, 1], "expired": [2, 2]}, "rate": {"in": 1.75}})
        );
    }

    #[test]
    fn stale_reports_are_left_out_and_old_ones_forgotten() {
        let now = 1_000_000;
        let at = |age: u64, node: &str| (node.to_owned(), json!({"node": node, "t": now - age}).to_string());
        let (nodes, gone) = gather(vec![at(100, "b"), at(10_000, "c"), at(120_000, "d"), ("e".to_owned(), "not json".to_owned()), at(0, "a")], now);
        let ids: Vec<&str> = nodes.iter().filter_map(|n| n["node"].as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(nodes[1]["age_ms"], json!(100));
        assert_eq!(gone, ["d", "e"]);
    }
}
