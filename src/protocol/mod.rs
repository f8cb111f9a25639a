//! The wire protocol: envelopes, session ids and cursors, and ([`encode`]) the bytes the server
//! frames around the events it sends.
//!
//! This module is pure: no I/O, no tokio, no locks. Everything that turns client bytes into
//! typed values lives here, and everything that turns events into bytes lives in [`encode`], so
//! both can be unit-tested and fuzzed on their own, and every transport parses input and frames
//! output the same way.
//!
//! * An [`Envelope`] is `{"event": NAME, "data": ANY}`. Clients send one envelope or a JSON
//!   array of envelopes; the server sends one envelope at a time and adds `"id": CURSOR`.
//! * A [`Sid`] is a session id: 128 random bits from the OS CSPRNG, base64url without padding
//!   (22 characters).
//! * A [`Cursor`] names a position in a session's event sequence. It carries the sid, so a bare
//!   browser `EventSource` that only knows its `Last-Event-ID` can find its session again.
//!   Events take positions `SID.1`, `SID.2`, ...; notices (`session`, `gap`) are resume points
//!   written `SID.N~`, which sort after event `N` and before event `N + 1`. Resuming from either
//!   form replays every event after `N`, so a notice's cursor is itself a valid resume point.
//! * An [`Ack`] is the number that pairs a request with its answer (`"ack": N`): a client's
//!   envelope asking the server for an answer, the server's `ack` event answering it, and the
//!   other way round (see [`ack`]).

mod compact;
pub mod ack;
pub mod encode;

pub use ack::Ack;

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::TryRngCore;
use serde_json::Value;
use smallvec::{smallvec, SmallVec};

/// Length of a sid in characters: 16 bytes in base64url without padding.
pub const SID_LEN: usize = 22;

/// A session id, safe to put in URLs. Shared, not copied, when cloned: it travels with every
/// handler context and cursor.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sid(std::sync::Arc<str>);

impl Sid {
    /// A fresh, unguessable sid: 128 bits from the operating system's CSPRNG.
    ///
    /// # Panics
    ///
    /// If the operating system's random source fails: without it no sid is safe to hand out.
    pub fn random() -> Sid {
        let mut bytes = [0u8; 16];
        rand::rngs::OsRng.try_fill_bytes(&mut bytes).expect("OS random source");
        Sid(URL_SAFE_NO_PAD.encode(bytes).into())
    }

    /// The sid as it travels: 22 characters of base64url.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A shortened form for logs: enough to correlate lines, useless to hijack a session.
    pub fn short(&self) -> &str {
        &self.0[..6]
    }
}

impl FromStr for Sid {
    type Err = ProtocolError;

    /// Accepts exactly the shape [`Sid::random`] produces; anything else cannot name a session.
    fn from_str(s: &str) -> Result<Sid, ProtocolError> {
        if Sid::is_valid(s) {
            Ok(Sid(s.into()))
        } else {
            Err(ProtocolError::BadSid)
        }
    }
}

impl Sid {
    /// Whether `s` has the shape [`Sid::random`] produces, checked without making a `Sid` (a
    /// lookup by a sid that is not kept needs no allocation).
    pub fn is_valid(s: &str) -> bool {
        s.len() == SID_LEN && s.bytes().all(|b| SID_BYTES[usize::from(b)])
    }
}

/// Which bytes a sid may hold (base64url's alphabet), as a table: a load per byte rather than
/// five range tests, on every request that names a session.
static SID_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
        b += 1;
    }
    table
};

/// A sid is looked up by its text: hashes and compares exactly as the `str` it holds.
impl std::borrow::Borrow<str> for Sid {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Sid {
    /// Debug output is what ends up in logs by accident, so it is shortened too.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sid({}…)", self.short())
    }
}

/// A position in a session's event sequence.
///
/// `seq` is the number of the last event at or before this position (0 before the first
/// event). `notice` marks a resume point written by a notice, which sorts after event `seq`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Cursor {
    /// The session the position is in.
    pub sid: Sid,
    /// The number of the last event at or before the position.
    pub seq: u64,
    /// Whether a notice wrote the position (`SID.N~`).
    pub notice: bool,
}

impl Cursor {
    /// The position of event `seq` of session `sid`: `SID.N`.
    pub fn event(sid: Sid, seq: u64) -> Cursor {
        Cursor { sid, seq, notice: false }
    }

    /// The resume point a notice writes after event `seq`: `SID.N~`.
    pub fn notice(sid: Sid, seq: u64) -> Cursor {
        Cursor { sid, seq, notice: true }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}{}", self.sid, self.seq, if self.notice { "~" } else { "" })
    }
}

impl fmt::Debug for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cursor({}….{}{})", self.sid.short(), self.seq, if self.notice { "~" } else { "" })
    }
}

impl FromStr for Cursor {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Cursor, ProtocolError> {
        let CursorText { sid, seq, notice } = CursorText::parse(s)?;
        Ok(Cursor { sid: Sid(sid.into()), seq, notice })
    }
}

/// A [`Cursor`] read in place: the same checks, with the sid left as the text it was (a poll
/// resuming its own session looks the session up by it and needs no `Sid` of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorText<'a> {
    /// The session's id, of the shape [`Sid::is_valid`] checks.
    pub sid: &'a str,
    /// The number of the last event at or before the position.
    pub seq: u64,
    /// Whether a notice wrote the position (`SID.N~`).
    pub notice: bool,
}

impl<'a> CursorText<'a> {
    /// Reads `SID.N` or `SID.N~`, refusing exactly what [`Cursor`]'s `from_str` refuses.
    pub fn parse(s: &'a str) -> Result<CursorText<'a>, ProtocolError> {
        // A sid has a fixed length and no dot, so the dot is at SID_LEN or the text is no cursor:
        // one comparison rather than a search.
        if s.as_bytes().get(SID_LEN) != Some(&b'.') {
            return Err(ProtocolError::BadCursor);
        }
        let (sid, pos) = (&s[..SID_LEN], &s[SID_LEN + 1..]);
        if !Sid::is_valid(sid) {
            return Err(ProtocolError::BadCursor);
        }
        let (digits, notice) = match pos.strip_suffix('~') {
            Some(digits) => (digits, true),
            None => (pos, false),
        };
        // Only canonical decimal: no sign, no leading zeros, so one position has one spelling.
        let canonical = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        if !canonical {
            return Err(ProtocolError::BadCursor);
        }
        let seq = digits.parse().map_err(|_| ProtocolError::BadCursor)?;
        // Position 0 is only ever a notice: no event has number 0.
        if seq == 0 && !notice {
            return Err(ProtocolError::BadCursor);
        }
        Ok(CursorText { sid, seq, notice })
    }
}

/// An event's name as an [`Envelope`] holds it: a string kept inline up to 23 bytes, so the
/// usual name costs no allocation of its own (an allocation and its free were about 150 of the
/// instructions of a WebSocket round trip, callgrind), and shared, not copied, when cloned.
/// Made from a `&str` or a `String` with `into()`; reads as a `&str`.
pub type EventName = smol_str::SmolStr;

/// One event as a client sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The event's name.
    pub event: EventName,
    /// The event's data: any JSON value (`null` when the client sent none).
    pub data: Value,
    /// The client's own number for this send (1, 2, ... per session), optional. A client that
    /// numbers its sends can re-send after a drop everything the server has not confirmed
    /// (`received` in the `session` hello): numbered sends are handled once, in order.
    pub seq: Option<u64>,
    /// `"ack": N`, 1 to 2^53 - 1, optional: on any event, the client asks for an answer (the
    /// server's `ack` event with the same number); on an `ack` event, the client answers the
    /// server's request numbered N.
    pub ack: Option<u64>,
}

impl Envelope {
    /// An unnumbered envelope.
    pub fn new(event: impl Into<EventName>, data: Value) -> Envelope {
        Envelope { event: event.into(), data, seq: None, ack: None }
    }
}

/// What is wrong with client input, phrased for the client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    /// The text is not JSON; what the parser said.
    #[error("malformed JSON: {0}")]
    Json(String),
    /// JSON, but not an envelope or a batch of them within the limits; what is wrong.
    #[error("{0}")]
    Shape(String),
    /// Not a sid this server could have handed out.
    #[error("malformed session id")]
    BadSid,
    /// Not a cursor (`SID.N` or `SID.N~`).
    #[error("malformed cursor")]
    BadCursor,
}

/// Bounds on what one client body or frame may hold. Each is configurable; the defaults suit a
/// chat-like app and refuse what only an attacker would send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most envelopes in one batch (array).
    pub max_batch: usize,
    /// Deepest nesting of arrays and objects inside `data`.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_batch: 100, max_depth: 32 }
    }
}

/// Longest event name, in bytes; names travel in SSE `event:` lines and WebSocket frames.
pub const MAX_EVENT_NAME: usize = 128;

/// Event names travel in SSE `event:` lines, so they must not hold line breaks; other control
/// characters and unbounded lengths are refused as well. Returns what is wrong.
pub fn check_event_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("is empty")
    } else if name.len() > MAX_EVENT_NAME {
        Err("is longer than 128 bytes")
    } else if name.chars().any(char::is_control) {
        Err("contains control characters")
    } else {
        Ok(())
    }
}

/// The envelopes of one client body, in order. Almost every body holds one, which then needs no
/// allocation of its own.
pub type Envelopes = SmallVec<[Envelope; 1]>;

/// Parses a client body with the default [`Limits`].
pub fn parse_envelopes(text: &str) -> Result<Envelopes, ProtocolError> {
    parse_envelopes_with(text, &Limits::default())
}

/// Parses a client body: one envelope object or a non-empty array of them, within `limits`.
pub fn parse_envelopes_with(text: &str, limits: &Limits) -> Result<Envelopes, ProtocolError> {
    if let Some(envelope) = compact::parse(text, limits) {
        return Ok(smallvec![envelope]);
    }
    match parse_well_formed(text, limits) {
        Some(envelopes) => Ok(envelopes),
        None => parse_as_value(text, limits),
    }
}

/// Whether a client body with this `Content-Type` is read as JSON: `application/json`, no
/// content type at all, or `application/x-www-form-urlencoded`, which is what `curl -d` sends
/// (no form body is a valid envelope, so nothing is misread). The one rule for every endpoint
/// that takes JSON.
///
/// `content_type` is the header as text: `None` without the header, `Some(Err(_))` for one
/// that is not text (`HeaderValue::to_str` gives exactly that), which reads as nothing.
pub fn reads_as_json<E>(content_type: Option<Result<&str, E>>) -> bool {
    let Some(content_type) = content_type else { return true };
    let Ok(content_type) = content_type else { return false };
    // What clients send, answered without parsing a media type (about 700 instructions a POST).
    if content_type.is_empty() || content_type.eq_ignore_ascii_case("application/json") {
        return true;
    }
    content_type.parse::<mime::Mime>().is_ok_and(|m| {
        let essence = m.essence_str().to_ascii_lowercase();
        essence == "application/json" || essence == "application/x-www-form-urlencoded"
    })
}

/// The slow path: the body as a `Value` first, then each envelope checked field by field, so
/// that an error can say which envelope and which field.
fn parse_as_value(text: &str, limits: &Limits) -> Result<Envelopes, ProtocolError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| ProtocolError::Json(e.to_string()))?;
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(ProtocolError::Shape("empty array: expected at least one envelope".into()));
            }
            if items.len() > limits.max_batch {
                return Err(ProtocolError::Shape(format!(
                    "batch of {} envelopes: at most {} per batch",
                    items.len(),
                    limits.max_batch
                )));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| envelope_from_value(item, Some(i), limits))
                .collect()
        }
        other => Ok(smallvec![envelope_from_value(other, None, limits)?]),
    }
}

/// An envelope as it is on the wire, read straight from the text into its fields, without the
/// map of a `Value` in between (the per-message path: a third of the parsing cost).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    event: String,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    ack: Option<u64>,
    /// What the server puts on its own envelopes; a client echoing one back is harmless.
    #[serde(default, rename = "id")]
    _id: Option<serde::de::IgnoredAny>,
}

/// The fast path: a body that is a valid envelope or batch within `limits`. `None` for anything
/// else, which [`parse_envelopes_with`] then reads the slow way to say precisely what is wrong
/// (or, for the rare valid body the strict reader refuses, such as a repeated field, to accept it
/// as before).
fn parse_well_formed(text: &str, limits: &Limits) -> Option<Envelopes> {
    if !text.trim_start().starts_with('[') {
        // One envelope, the usual case.
        return Some(smallvec![well_formed(serde_json::from_str(text).ok()?, limits)?]);
    }
    let wires: Vec<Wire> = serde_json::from_str(text).ok()?;
    if wires.is_empty() || wires.len() > limits.max_batch {
        return None;
    }
    wires.into_iter().map(|wire| well_formed(wire, limits)).collect()
}

/// A parsed envelope that needs no error message: a valid name, `seq` not 0, `ack` in range,
/// data within the depth limit and free of the reserved key.
fn well_formed(Wire { event, data, seq, ack, .. }: Wire, limits: &Limits) -> Option<Envelope> {
    let valid = check_event_name(&event).is_ok()
        && seq != Some(0)
        && ack.is_none_or(Ack::in_range)
        && depth(&data) <= limits.max_depth
        && reserved_key(&data).is_none();
    valid.then_some(Envelope { event: event.into(), data, seq, ack })
}

fn envelope_from_value(value: Value, index: Option<usize>, limits: &Limits) -> Result<Envelope, ProtocolError> {
    let at = |msg: String| match index {
        Some(i) => ProtocolError::Shape(format!("envelope {i}: {msg}")),
        None => ProtocolError::Shape(msg),
    };
    let Value::Object(mut map) = value else {
        return Err(at("expected an object {\"event\": NAME, \"data\": ANY}".into()));
    };
    let event = match map.remove("event") {
        Some(Value::String(name)) => name,
        Some(_) => return Err(at("field `event` must be a string".into())),
        None => return Err(at("missing field `event`".into())),
    };
    check_event_name(&event).map_err(|why| at(format!("field `event` {why}")))?;
    let data = map.remove("data").unwrap_or(Value::Null);
    let seq = match map.remove("seq") {
        None | Some(Value::Null) => None,
        Some(value) => match value.as_u64() {
            Some(seq) if seq > 0 => Some(seq),
            _ => return Err(at("field `seq` must be a positive integer".into())),
        },
    };
    let ack = match map.remove("ack") {
        None | Some(Value::Null) => None,
        Some(value) => match value.as_u64() {
            Some(ack) if Ack::in_range(ack) => Some(ack),
            _ => return Err(at("field `ack` must be an integer from 1 to 2^53 - 1".into())),
        },
    };
    if depth(&data) > limits.max_depth {
        return Err(at(format!("field `data` is nested deeper than {} levels", limits.max_depth)));
    }
    if let Some(key) = reserved_key(&data) {
        return Err(at(format!("field `data` holds the object key `{key}`, which is reserved")));
    }
    // `id` is what the server puts on its own envelopes; a client echoing one back is harmless.
    map.remove("id");
    if let Some(field) = map.keys().next() {
        return Err(at(format!("unknown field `{field}`: an envelope has only `event`, `data`, `seq` and `ack`")));
    }
    Ok(Envelope { event: event.into(), data, seq, ack })
}

/// Checks the data of an envelope built from another wire format (a Socket.IO event's
/// arguments): within the depth limit and free of the reserved key, as a parsed envelope's is.
pub fn check_data(data: &Value, limits: &Limits) -> Result<(), ProtocolError> {
    if depth(data) > limits.max_depth {
        return Err(ProtocolError::Shape(format!("data is nested deeper than {} levels", limits.max_depth)));
    }
    if let Some(key) = reserved_key(data) {
        return Err(ProtocolError::Shape(format!("data holds the object key `{key}`, which is reserved")));
    }
    Ok(())
}

/// `serde_json` gives object keys with this prefix a meaning of their own: with the `raw_value`
/// feature (axum turns it on), an object whose first key is `$serde_json::private::RawValue` is
/// read as raw JSON text. Data holding such a key would not read back as the same value once
/// re-encoded (keys sorted), so it is refused.
const RESERVED_KEY_PREFIX: &str = "$serde_json::private::";

/// The first reserved object key in a value. Called after the depth check, which bounds the
/// recursion.
fn reserved_key(value: &Value) -> Option<&str> {
    match value {
        Value::Array(items) => items.iter().find_map(reserved_key),
        Value::Object(map) => map
            .keys()
            .find(|key| key.starts_with(RESERVED_KEY_PREFIX))
            .map(String::as_str)
            .or_else(|| map.values().find_map(reserved_key)),
        _ => None,
    }
}

/// Nesting depth of a JSON value: 0 for scalars, 1 for a flat array or object.
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_fast_path_agrees_with_the_field_by_field_reading() {
        let limits = Limits { max_batch: 3, max_depth: 3 };
        let bodies = [
            r#"{"event":"message","data":"hi"}"#,
            r#"  [{"event":"a","data":1,"seq":1},{"event":"b","id":"x.1"}]"#,
            r#"{"event":"a","data":null,"seq":null}"#,
            r#"{"event":"a","event":"b"}"#,
            r#"{"event":"a","seq":0}"#,
            r#"{"event":"a","seq":1.5}"#,
            r#"{"event":"","data":1}"#,
            r#"{"event":"a","data":[[[[1]]]]}"#,
            r#"{"event":"a","data":{"$serde_json::private::RawValue":"1"}}"#,
            r#"[{"event":"a"},{"event":"a"},{"event":"a"},{"event":"a"}]"#,
            r#"{"event":"a","x":1}"#,
            r#"{"event":"a","ack":7}"#,
            r#"{"event":"a","ack":0}"#,
            r#"{"event":"a","ack":9007199254740992}"#,
            r#"[{"event":"a","ack":9007199254740991,"seq":2},{"event":"b","ack":null}]"#,
            r"[]",
            r"7",
        ];
        for body in bodies {
            let fast = parse_well_formed(body, &limits);
            let slow = parse_as_value(body, &limits);
            match fast {
                Some(envelopes) => assert_eq!(Ok(envelopes), slow, "{body}"),
                None => assert_eq!(parse_envelopes_with(body, &limits), slow, "{body}"),
            }
        }
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn json_bodies_are_json_form_bodies_and_untyped_ones_nothing_else() {
        let reads = |ct: Option<Result<&str, ()>>| reads_as_json(ct);
        for json in [None, Some(Ok("")), Some(Ok("application/json")), Some(Ok("Application/JSON; charset=utf-8")),
                     Some(Ok("application/x-www-form-urlencoded"))] {
            assert!(reads(json), "{json:?}");
        }
        for other in [Some(Ok("text/plain")), Some(Ok("application/jsonx")), Some(Ok("not a type")), Some(Err(()))] {
            assert!(!reads(other), "{other:?}");
        }
    }

    #[test]
    fn sids_are_random_urlsafe_and_22_chars() {
        let a = Sid::random();
        let b = Sid::random();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), SID_LEN);
        assert_eq!(a.as_str().parse::<Sid>().unwrap(), a);
        assert!("short".parse::<Sid>().is_err());
        assert!("aaaaaaaaaaaaaaaaaaaaa/".parse::<Sid>().is_err());
    }

    #[test]
    fn cursors_round_trip_and_reject_non_canonical_forms() {
        let sid = Sid::random();
        for c in [Cursor::event(sid.clone(), 7), Cursor::notice(sid.clone(), 0), Cursor::notice(sid.clone(), 9)] {
            let text = c.to_string();
            assert_eq!(text.parse::<Cursor>().unwrap(), c);
            assert_eq!(CursorText::parse(&text), Ok(CursorText { sid: sid.as_str(), seq: c.seq, notice: c.notice }));
        }
        for bad in ["", "x", &format!("{sid}."), &format!("{sid}.07"), &format!("{sid}.-1"),
                    &format!("{sid}.0"), &format!("{sid}.1~~"), &format!("{sid}.99999999999999999999999"),
                    "abc.1"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad:?} should be rejected");
            assert!(CursorText::parse(bad).is_err(), "{bad:?} should be rejected in place too");
        }
    }

    /// The names clients send are kept in the envelope without an allocation of their own, by
    /// the compact reading and the full one alike; a long name is still the same text.
    #[test]
    fn usual_event_names_are_kept_inline() {
        for body in [r#"{"event":"message","data":"hi"}"#, r#"{"data":"hi","event":"message"}"#, r#"[{"event":"message"}]"#] {
            let envelope = &parse_envelopes(body).unwrap()[0];
            assert_eq!(envelope.event, "message");
            assert!(!envelope.event.is_heap_allocated(), "{body}");
        }
        let long = "n".repeat(MAX_EVENT_NAME);
        let envelope = &parse_envelopes(&format!(r#"{{"event":"{long}"}}"#)).unwrap()[0];
        assert_eq!(envelope.event.as_str(), long);
    }

    #[test]
    fn parses_one_envelope_or_a_batch() {
        assert_eq!(
            parse_envelopes(r#"{"event":"message","data":"hi"}"#).unwrap().into_vec(),
            vec![Envelope::new("message", json!("hi"))]
        );
        let batch = parse_envelopes(r#"[{"event":"a","data":1},{"event":"b"}]"#).unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[1].data, Value::Null);
    }

    #[test]
    fn an_envelope_may_ask_for_an_answer_with_an_ack_number_in_the_javascript_safe_range() {
        let one = parse_envelopes(r#"{"event":"add","data":[1,2],"ack":5,"seq":3}"#).unwrap();
        assert_eq!((one[0].ack, one[0].seq), (Some(5), Some(3)));
        assert_eq!(parse_envelopes(r#"{"event":"add"}"#).unwrap()[0].ack, None);
        assert_eq!(parse_envelopes(r#"{"event":"a","ack":9007199254740991}"#).unwrap()[0].ack, Some((1 << 53) - 1));
        for bad in [r#"{"event":"a","ack":0}"#, r#"{"event":"a","ack":-1}"#, r#"{"event":"a","ack":1.5}"#,
                    r#"{"event":"a","ack":"1"}"#, r#"{"event":"a","ack":9007199254740992}"#] {
            let err = parse_envelopes(bad).unwrap_err().to_string();
            assert!(err.contains("field `ack` must be an integer from 1 to 2^53 - 1"), "{bad}: {err}");
        }
    }

    #[test]
    fn shape_errors_name_the_problem() {
        let err = |s: &str| parse_envelopes(s).unwrap_err().to_string();
        assert!(err("{").starts_with("malformed JSON"));
        assert!(err("[]").contains("empty array"));
        assert!(err("42").contains("expected an object"));
        assert!(err(r#"{"data":1}"#).contains("missing field `event`"));
        assert!(err(r#"{"event":3}"#).contains("must be a string"));
        assert!(err(r#"[{"event":"a"},{"event":"b","x":1}]"#).contains("envelope 1: unknown field `x`"));
        assert!(err(r#"{"event":""}"#).contains("`event` is empty"));
        assert!(err(r#"{"event":"a\nb"}"#).contains("control characters"));
        assert!(err(&format!(r#"{{"event":"{}"}}"#, "x".repeat(129))).contains("longer than 128"));
    }

    #[test]
    fn limits_bound_batches_and_nesting() {
        let limits = Limits { max_batch: 3, max_depth: 4 };
        let batch = |n: usize| format!("[{}]", vec![r#"{"event":"a"}"#; n].join(","));
        assert_eq!(parse_envelopes_with(&batch(3), &limits).unwrap().len(), 3);
        let err = parse_envelopes_with(&batch(4), &limits).unwrap_err().to_string();
        assert!(err.contains("at most 3 per batch"), "{err}");
        let nested = |n: usize| format!(r#"{{"event":"a","data":{}1{}}}"#, "[".repeat(n), "]".repeat(n));
        assert!(parse_envelopes_with(&nested(4), &limits).is_ok());
        let err = parse_envelopes_with(&nested(5), &limits).unwrap_err().to_string();
        assert!(err.contains("nested deeper than 4"), "{err}");
        // Far past serde_json's own recursion limit: still a clean error.
        assert!(parse_envelopes(&nested(10_000)).is_err());
    }

    #[test]
    fn data_holding_a_key_serde_json_reserves_is_refused() {
        // Found by the `envelopes` fuzz target. With the `raw_value` feature (axum turns it on),
        // serde_json reads an object whose first key is this token as raw JSON text. Anywhere
        // else the key was accepted as plain data, and once re-encoded (keys sorted) it came
        // first: the data the gateway handed on no longer parsed with serde_json, in any axum
        // process (this one included).
        let key = "$serde_json::private::RawValue";
        for body in [
            format!(r#"{{"event":"a","data":{{"text":"hi","{key}":null}}}}"#),
            format!(r#"[{{"event":"a"}},{{"event":"a","data":[1,{{"x":{{"z":2,"{key}":"1"}}}}]}}]"#),
            r#"{"event":"a","data":{"b":1,"\u0024serde_json::private::RawValue":null}}"#.to_owned(),
        ] {
            let err = parse_envelopes(&body).unwrap_err().to_string();
            assert!(err.contains("reserved"), "{body}: {err}");
        }
        // The token as a string value is plain data, and what is accepted reads back the same.
        let data = &parse_envelopes(&format!(r#"{{"event":"a","data":{{"b":{{"c":[1,"{key}"]}}}}}}"#)).unwrap()[0].data;
        assert_eq!(serde_json::from_str::<Value>(&data.to_string()).unwrap(), *data);
    }
}
