//! The shortest path for the envelope clients send most: one compact object in the order
//! `switchyard.js` and the bench write it, `{"event":"NAME","data":DATA}` with an optional
//! `,"seq":N` before the closing brace, and nothing else (no whitespace, no escapes in the name).
//!
//! Why it exists: `serde_json`'s struct reader spends about 1,200 instructions on such a frame
//! (field-name matching, the unknown-field check, a `Value` built through its visitor), a fifth
//! of a WebSocket round trip's own work. Recognising the fixed frame around `DATA` costs a few
//! comparisons; `DATA` itself still goes through `serde_json`, except for a string without escapes
//! or control characters, which is taken as it is. `DATA` with escapes, or with a key `serde_json`
//! reserves, is left to the full reading.
//!
//! Why it is safe: a text that starts with the fixed prefix, ends with one of the fixed suffixes,
//! and whose middle is one complete JSON value has exactly one reading, the envelope built here.
//! Anything else returns `None`, and [`super::parse_envelopes_with`] reads it as before, so what
//! is accepted or refused, and every error message, is unchanged.

use serde_json::Value;

use super::{check_event_name, depth, reserved_key, Envelope, Limits, MAX_EVENT_NAME, RESERVED_KEY_PREFIX};

const PREFIX: &str = r#"{"event":""#;
const DATA: &str = r#"","data":"#;
const SEQ: &str = r#","seq":"#;

/// The envelope of `text` if it has the compact shape and is valid within `limits`; `None` for
/// anything else (which may still be valid, or not).
pub(super) fn parse(text: &str, limits: &Limits) -> Option<Envelope> {
    // Byte searches and fixed-position comparisons: `str`'s substring search sets up a
    // two-way matcher per call, which cost more than serde_json's whole reading.
    let rest = text.strip_prefix(PREFIX)?;
    let end = memchr::memchr2(b'"', b'\\', rest.as_bytes())?;
    let (event, rest) = rest.split_at(end);
    // A backslash in the name would need JSON's string rules: left to serde_json.
    let body = rest.strip_prefix(DATA)?.strip_suffix('}')?;
    // Printable ASCII is a valid name of up to MAX_EVENT_NAME bytes; anything else is asked of
    // `check_event_name`, which reads characters.
    let printable = event.bytes().all(|b| (0x20..0x7f).contains(&b));
    if !(printable && !event.is_empty() && event.len() <= MAX_EVENT_NAME) && check_event_name(event).is_err() {
        return None;
    }
    let digits = body.len() - body.bytes().rev().take_while(u8::is_ascii_digit).count();
    let (data, seq) = match body[..digits].strip_suffix(SEQ) {
        Some(data) if is_seq(&body[digits..]) => (data, Some(body[digits..].parse().ok()?)),
        _ => (body, None),
    };
    let data = match plain_string(data) {
        Some(string) => string,
        // Without escapes, a key serde_json reserves (see `RESERVED_KEY_PREFIX`) shows as it is;
        // data holding one, or escapes, is left to the full reading, which refuses it by name.
        None if data.contains('\\') || (data.contains('$') && data.contains(RESERVED_KEY_PREFIX)) => return None,
        None => serde_json::from_str(data).ok()?,
    };
    let valid = depth(&data) <= limits.max_depth && reserved_key(&data).is_none();
    valid.then(|| Envelope { event: event.into(), data, seq, ack: None })
}

/// Whether digits are the canonical decimal of a positive number: what `seq` may be on this path
/// (JSON forbids leading zeros; 0 is refused by the protocol).
fn is_seq(digits: &str) -> bool {
    !digits.is_empty() && digits.len() <= 20 && !digits.starts_with('0')
}

/// A JSON string with nothing to unescape (no backslash, no quote, no control character) as
/// its `Value`.
fn plain_string(text: &str) -> Option<Value> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    let plain = inner.bytes().all(|b| b != b'"' && b != b'\\' && b >= 0x20);
    plain.then(|| Value::String(inner.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::super::{parse_as_value, Limits};
    use super::parse;

    #[test]
    fn takes_the_compact_shape_and_agrees_with_the_full_reading() {
        let limits = Limits { max_batch: 3, max_depth: 3 };
        for body in [
            r#"{"event":"message","data":"hello"}"#,
            r#"{"event":"message","data":"hello","seq":7}"#,
            r#"{"event":"a","data":{"x":[1,2],"seq":3},"seq":12}"#,
            r#"{"event":"a","data":1,"seq":5}"#,
            r#"{"event":"a","data":null}"#,
            r#"{"event":"a","data":{"k":",","seq":1}}"#,
            r#"{"event":"a","data":{"seq":1},"seq":2}"#,
            r#"{"event":"a b","data":[true,false,"é"]}"#,
        ] {
            let fast = parse(body, &limits).unwrap_or_else(|| panic!("{body} not taken"));
            assert_eq!(Ok(fast), parse_as_value(body, &limits).map(|e| e[0].clone()), "{body}");
        }
    }

    #[test]
    fn leaves_everything_else_to_the_full_reading() {
        let limits = Limits { max_batch: 3, max_depth: 3 };
        for body in [
            r#"{"event":"","data":1}"#,
            r#"{"event":"a\nb","data":1}"#,
            r#"{"event":"a\"b","data":1}"#,
            "{\"event\":\"a\u{1}\",\"data\":1}",
            r#"{"event":"a","data":1,"seq":0}"#,
            r#"{"event":"a","data":1,"seq":01}"#,
            r#"{"event":"a","data":1,"seq":99999999999999999999}"#,
            r#"{"event":"a","data":[[[[1]]]]}"#,
            r#"{"event":"a","data":{"$serde_json::private::RawValue":"1"}}"#,
            r#"{"event":"a","data":1,"x":2}"#,
            r#"{"event":"a","data":1}}"#,
            r#"{"event":"a","data":"a"b"}"#,
            r#"{"event":"a","data":"x\"y"}"#,
            r#"{"event":"a","data":{"b":1,"\u0024serde_json::private::RawValue":null}}"#,
            "{\"event\":\"a\",\"data\":\"\t\"}",
            r#"{"event":"a","data":}"#,
            r#"{"event":"a","data":1} "#,
            r#"{"event":"a","data":1,"seq":2,"seq":3}"#,
        ] {
            assert_eq!(parse(body, &limits), None, "{body}");
        }
    }
}
