//! The request and answer schema: what the application receives and what it may answer.
//!
//! Every request is a JSON object with `"v"` ([`SCHEMA_VERSION`]) and `"type"`: `event` (a client
//! event no built-in handler claimed), `open` (a session being created: the transport, the
//! headers useful to authorize, the page's own query) or `expire` (a session gone, with its
//! rooms); `"subject"` says who the client is when the gateway authenticates sessions, and
//! `"ack": N` that the client asked for an answer. An answer is empty, a JSON array of
//! [`Action`]s, or `{"v": 1, "actions": [...]}`; it is parsed and checked whole
//! ([`parse_answer`]) before any action is applied ([`Upstream::apply`]), so a malformed answer
//! changes nothing. Its `{"ack": DATA}` action (at most one) is the answer to the client's
//! request; an event that asked for one and got none is answered `null` once the actions are
//! applied, so the client never waits for an answer that will not come.

use axum::http::HeaderMap;
use serde_json::{json, Map, Value};

use crate::handler::Opening;
use crate::hub::{check_room_name, Hub, Target};
use crate::protocol::{check_event_name, Sid};

use super::Upstream;

/// Version of the request and action schema; sent as `"v"` in every request.
pub const SCHEMA_VERSION: u64 = 1;

/// Most actions one answer may carry.
const MAX_ACTIONS: usize = 1000;

/// Request headers passed to the open hook, so the app can authorize the session.
const FORWARDED_HEADERS: [&str; 6] = ["authorization", "cookie", "origin", "user-agent", "x-forwarded-for", "x-real-ip"];

/// One thing the app asks the gateway to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `{"emit": NAME, "data": ANY, "to": TARGET}`; without `to`, to the session the request was
    /// about. `"skip_self": true` leaves that session out of a room or `all` target.
    Emit {
        /// The event's name.
        event: String,
        /// The event's data (`null` if the action has none).
        data: Value,
        /// Where it goes; `None` for the session the request was about.
        to: Option<Target>,
        /// Whether the session the request was about is left out of `to`.
        skip_self: bool,
    },
    /// `{"join": ROOM}`, or `{"join": ROOM, "sid": SID}` for another session.
    Join {
        /// The room.
        room: String,
        /// The session that joins; `None` for the one the request was about.
        sid: Option<Sid>,
    },
    /// `{"leave": ROOM}`, or `{"leave": ROOM, "sid": SID}`.
    Leave {
        /// The room.
        room: String,
        /// The session that leaves; `None` for the one the request was about.
        sid: Option<Sid>,
    },
    /// `{"ack": DATA}`: the answer to the client's request (its event carried `"ack": N`),
    /// sent as `{"event": "ack", "ack": N, "data": DATA}`. Ignored when the event asked none.
    Ack {
        /// The answer's data.
        data: Value,
    },
}

/// The request for one client event: `{"v":1,"type":"event","sid":..,"event":..,"data":..}`,
/// plus `"subject"` when the session has one and `"ack"` when the client asked for an answer.
pub(super) fn event_request(sid: &Sid, subject: Option<String>, event: &str, data: Value, ack: Option<u64>) -> Value {
    let mut body = json!({"v": SCHEMA_VERSION, "type": "event", "sid": sid.as_str(), "event": event, "data": data});
    if let Some(subject) = subject {
        body["subject"] = Value::String(subject);
    }
    if let Some(ack) = ack {
        body["ack"] = json!(ack);
    }
    body
}

/// The request of the open hook: the session, its transport, the headers useful to authorize it
/// and the page's own query, plus its subject when auth verified one.
pub(super) async fn open_request(opening: &Opening) -> Value {
    let sid = &opening.sid;
    let mut body = json!({
        "v": SCHEMA_VERSION,
        "type": "open",
        "sid": sid.as_str(),
        "transport": opening.transport.as_str(),
        "headers": forwarded_headers(&opening.headers),
        "query": opening.query.as_deref().map(strip_gateway_params),
    });
    // Auth runs before the hook: a session that got this far carries its verified subject.
    if let Some(subject) = opening.hub.subject(sid).await {
        body["subject"] = Value::String(subject.to_string());
    }
    body
}

/// The request of the expire hook: the session gone and the rooms it was in.
pub(super) fn expire_request(sid: &Sid, rooms: &[String]) -> Value {
    json!({"v": SCHEMA_VERSION, "type": "expire", "sid": sid.as_str(), "rooms": rooms})
}

impl Upstream {
    /// Applies an answer's actions in order. `sid` is the session the request was about, the
    /// target of actions that name none (`None` for hooks of sessions already gone).
    pub async fn apply(&self, hub: &Hub, sid: Option<&Sid>, actions: Vec<Action>) {
        self.apply_answering(hub, sid, None, actions).await;
    }

    /// [`Upstream::apply`] for an event that asked for an answer numbered `ack`: its `ack`
    /// action answers it, in its place among the actions; without one, it is answered `null`
    /// after them.
    pub(super) async fn apply_answering(&self, hub: &Hub, sid: Option<&Sid>, mut ack: Option<u64>, actions: Vec<Action>) {
        for action in actions {
            let outcome = match &action {
                Action::Ack { data } => match (ack.take(), sid) {
                    (Some(number), Some(sid)) => hub.answer(sid, number, Ok(data)).await.map(|_| ()),
                    _ => Ok(()),
                },
                Action::Emit { event, data, to: None, .. } => match sid {
                    Some(sid) => hub.emit(sid, event, data).await.map(|_| ()),
                    None => Ok(()),
                },
                Action::Emit { event, data, to: Some(target), skip_self } => {
                    let except = if *skip_self { sid } else { None };
                    hub.publish_except(target, except, event, data).await.map(|_| ())
                }
                Action::Join { room, sid: other } => match other.as_ref().or(sid) {
                    Some(member) => hub.join(member, room).await.map(|_| ()),
                    None => Ok(()),
                },
                Action::Leave { room, sid: other } => match other.as_ref().or(sid) {
                    Some(member) => hub.leave(member, room).await.map(|_| ()),
                    None => Ok(()),
                },
            };
            // A target that went away meanwhile is not the client's fault nor the app's.
            if let Err(err) = outcome {
                tracing::debug!(?action, %err, "action not applied");
            }
        }
        if let (Some(number), Some(sid)) = (ack, sid) {
            let _ = hub.answer(sid, number, Ok(&Value::Null)).await;
        }
    }

}

/// Parses an answer: empty (no actions), a JSON array of actions, or
/// `{"v": 1, "actions": [...]}`. Every action is checked before any is applied.
pub fn parse_answer(text: &str) -> Result<Vec<Action>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let items = match value {
        Value::Array(items) => items,
        Value::Object(mut map) => {
            match map.remove("v") {
                Some(v) if v == json!(SCHEMA_VERSION) => {}
                Some(v) => return Err(format!("unsupported schema version {v}: this gateway speaks {SCHEMA_VERSION}")),
                None => return Err("expected an array of actions or {\"v\": 1, \"actions\": [...]}".into()),
            }
            let items = match map.remove("actions") {
                Some(Value::Array(items)) => items,
                None | Some(Value::Null) => Vec::new(),
                Some(_) => return Err("`actions` must be an array".into()),
            };
            if let Some(key) = map.keys().next() {
                return Err(format!("unknown field `{key}`"));
            }
            items
        }
        _ => return Err("expected an array of actions or {\"v\": 1, \"actions\": [...]}".into()),
    };
    if items.len() > MAX_ACTIONS {
        return Err(format!("{} actions: at most {MAX_ACTIONS} per answer", items.len()));
    }
    let actions: Vec<Action> =
        items.into_iter().enumerate().map(|(i, item)| parse_action(item).map_err(|why| format!("action {i}: {why}"))).collect::<Result<_, _>>()?;
    if actions.iter().filter(|action| matches!(action, Action::Ack { .. })).count() > 1 {
        return Err("more than one `ack` action: a request has one answer".into());
    }
    Ok(actions)
}

fn parse_action(value: Value) -> Result<Action, String> {
    let Value::Object(mut map) = value else {
        return Err("expected an object such as {\"emit\": NAME, \"data\": ANY}".into());
    };
    let action = if let Some(event) = map.remove("emit") {
        let event = string(event, "emit")?;
        check_event_name(&event).map_err(|why| format!("event name {why}"))?;
        let data = map.remove("data").unwrap_or(Value::Null);
        let to = map.remove("to").map(Target::from_json).transpose()?;
        let skip_self = match map.remove("skip_self") {
            None | Some(Value::Bool(false)) => false,
            Some(Value::Bool(true)) if to.is_some() => true,
            Some(Value::Bool(true)) => return Err("`skip_self` needs a `to`".into()),
            Some(_) => return Err("`skip_self` must be a boolean".into()),
        };
        Action::Emit { event, data, to, skip_self }
    } else if let Some(room) = map.remove("join") {
        Action::Join { room: room_name(room, "join")?, sid: optional_sid(&mut map)? }
    } else if let Some(room) = map.remove("leave") {
        Action::Leave { room: room_name(room, "leave")?, sid: optional_sid(&mut map)? }
    } else if let Some(data) = map.remove("ack") {
        Action::Ack { data }
    } else {
        return Err("expected one of `emit`, `join`, `leave`, `ack`".into());
    };
    match map.keys().next() {
        Some(key) => Err(format!("unknown field `{key}`")),
        None => Ok(action),
    }
}

fn string(value: Value, field: &str) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s),
        _ => Err(format!("`{field}` must be a string")),
    }
}

fn room_name(value: Value, field: &str) -> Result<String, String> {
    let room = string(value, field)?;
    check_room_name(&room).map_err(|err| format!("`{field}`: {err}"))?;
    Ok(room)
}

fn sid(value: Value) -> Result<Sid, String> {
    string(value, "sid")?.parse().map_err(|_| "`sid` is not a session id".to_string())
}

fn optional_sid(map: &mut Map<String, Value>) -> Result<Option<Sid>, String> {
    map.remove("sid").map(sid).transpose()
}

/// The headers an open hook sees, lower-cased; only those useful to authorize.
fn forwarded_headers(headers: &HeaderMap) -> Value {
    let mut out = Map::new();
    for name in FORWARDED_HEADERS {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            out.insert(name.to_owned(), Value::String(value.to_owned()));
        }
    }
    Value::Object(out)
}

/// The query string without the gateway's own parameters (`sid`, `last_event_id`), so the app
/// sees only what the page added (a token, a room).
pub(super) fn strip_gateway_params(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or("");
            !pair.is_empty() && key != "sid" && key != "last_event_id"
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_in_both_shapes_and_every_action_kind() {
        let sid = Sid::random();
        let text = format!(
            r#"[{{"emit":"response","data":"ok"}},{{"join":"r1"}},{{"leave":"r1","sid":"{sid}"}},
               {{"emit":"chat","data":{{"t":1}},"to":{{"room":"r1"}}}},{{"emit":"x","to":{{"all":true}}}},
               {{"emit":"y","to":{{"sid":"{sid}"}}}},{{"emit":"z","to":{{"room":"r1"}},"skip_self":true}}]"#
        );
        let actions = parse_answer(&text).unwrap();
        assert_eq!(actions.len(), 7);
        assert_eq!(actions[0], Action::Emit { event: "response".into(), data: json!("ok"), to: None, skip_self: false });
        assert_eq!(actions[1], Action::Join { room: "r1".into(), sid: None });
        assert_eq!(actions[2], Action::Leave { room: "r1".into(), sid: Some(sid.clone()) });
        let room = |name: &str| Some(Target::Room(name.into()));
        assert_eq!(actions[3], Action::Emit { event: "chat".into(), data: json!({"t":1}), to: room("r1"), skip_self: false });
        assert_eq!(actions[4], Action::Emit { event: "x".into(), data: Value::Null, to: Some(Target::All), skip_self: false });
        assert_eq!(actions[5], Action::Emit { event: "y".into(), data: Value::Null, to: Some(Target::Sid(sid)), skip_self: false });
        assert_eq!(actions[6], Action::Emit { event: "z".into(), data: Value::Null, to: room("r1"), skip_self: true });
        assert_eq!(parse_answer(r#"{"v":1,"actions":[{"join":"a"}]}"#).unwrap().len(), 1);
        assert_eq!(parse_answer(r#"[{"ack":{"sum":3}}]"#).unwrap(), vec![Action::Ack { data: json!({"sum": 3}) }]);
        assert_eq!(parse_answer(r#"[{"ack":null}]"#).unwrap(), vec![Action::Ack { data: Value::Null }]);
        assert_eq!(parse_answer("").unwrap(), vec![]);
        assert_eq!(parse_answer("[]").unwrap(), vec![]);
    }

    #[test]
    fn malformed_answers_say_what_is_wrong() {
        let err = |text: &str| parse_answer(text).unwrap_err();
        assert!(err("nope").contains("not JSON"));
        assert!(err(r#"{"actions":[]}"#).contains("expected an array"));
        assert!(err(r#"{"v":2,"actions":[]}"#).contains("unsupported schema version 2"));
        assert!(err(r#"[{"emit":"a","dat":1}]"#).contains("action 0: unknown field `dat`"));
        assert!(err(r#"[{"join":"a"},{"shout":"b"}]"#).contains("action 1: expected one of"));
        assert!(err(r#"[{"emit":"a\nb"}]"#).contains("control characters"));
        assert!(err(r#"[{"emit":"a","to":{"room":"r","all":true}}]"#).contains("exactly one"));
        assert!(err(r#"[{"emit":"a","to":{"all":false}}]"#).contains("must be true"));
        assert!(err(r#"[{"emit":"a","to":{"sid":"short"}}]"#).contains("not a session id"));
        assert!(err(r#"[{"emit":"a","skip_self":true}]"#).contains("needs a `to`"));
        assert!(err(r#"[{"join":""}]"#).contains("invalid room name: is empty"));
        assert!(err("42").contains("expected an array"));
        assert!(err(r#"[{"ack":1},{"ack":2}]"#).contains("more than one `ack` action"));
        assert!(err(r#"[{"ack":1,"to":{"all":true}}]"#).contains("action 0: unknown field `to`"));
    }
}
