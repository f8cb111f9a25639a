//! Fuzzes the outbound encoder (`switchyard::protocol::encode`): whatever it is given, what it
//! writes reads back, through readers written here from the specifications rather than from
//! the encoder.
//!
//! * An envelope parses as JSON to the same name, data and cursor, and a poll batch to the
//!   same envelopes in order (`[]` for none).
//! * An SSE frame, read by a WHATWG-style event stream parser (below), is one event with the
//!   cursor as its id, the name as its type and the data as its data, each line break of the
//!   data (CR, LF, or each of a CRLF) read back as a LF; the frames of all events, with
//!   keep-alive comments between them, read back as all the events in order.
//! * Chunk framing decodes back (with httparse's chunk-size reader) to the bytes framed.
//! * An event with an ack carries it: `"ack"` beside the data (`"error"` in place of `"data"`
//!   for an error answer) in the envelope, an `ack:` (`ack-error:`) field in the SSE frame.
//! * Every output is sized exactly.
//!
//! The input is read as a few events (sid, number, notice flag, name, data text); data that is
//! not JSON is sent as a JSON string of its text, and JSON data is sometimes pretty-printed, so
//! that multi-line data is common.
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchyard::protocol::encode::{self, Outgoing};
use switchyard::protocol::{check_event_name, Ack};
use switchyard::{Cursor, Sid};

const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// serde_json's recursion limit is 128; inside an envelope the data sits one level deeper.
const DEEPEST: usize = 100;

struct Input {
    sid: Sid,
    seq: u64,
    notice: bool,
    name: String,
    /// The data text as the fuzzer gave it: any string, for the SSE frame.
    text: String,
    /// JSON data: the text itself if it is JSON (or pretty-printed), else the text as a string.
    json: String,
    /// The ack the event carries, if any.
    ack: Option<Ack>,
}

fn input(u: &mut Unstructured<'_>) -> Result<Input> {
    let mut sid = [0u8; 22];
    for c in &mut sid {
        *c = BASE64URL[usize::from(u.arbitrary::<u8>()? % 64)];
    }
    let sid: Sid = std::str::from_utf8(&sid).unwrap().parse().expect("22 base64url characters make a sid");
    let (seq, notice, pretty) = (u.arbitrary()?, u.arbitrary()?, u.arbitrary::<bool>()?);
    let ack = match u.arbitrary::<u8>()? % 3 {
        0 => None,
        kind => {
            let number = u.int_in_range(1..=switchyard::protocol::ack::MAX_ACK)?;
            if kind == 1 { Ack::data(number) } else { Ack::error(number) }
        }
    };
    let name: &str = u.arbitrary()?;
    let text: &str = u.arbitrary()?;
    let json = match serde_json::from_str::<Value>(text) {
        Ok(value) if depth(&value) <= DEEPEST => {
            // Pretty-printed, a key serde_json reserves can come first and change the reading
            // (see protocol's `RESERVED_KEY_PREFIX`): such data is sent as it came.
            let pretty = pretty.then(|| serde_json::to_string_pretty(&value).unwrap());
            pretty.filter(|p| serde_json::from_str::<Value>(p).is_ok()).unwrap_or_else(|| text.to_owned())
        }
        _ => serde_json::to_string(text).unwrap(),
    };
    Ok(Input { sid, seq, notice, name: name.to_owned(), text: text.to_owned(), json, ack })
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

impl Input {
    fn outgoing<'a>(&'a self, data: &'a str) -> Outgoing<'a> {
        Outgoing { sid: &self.sid, seq: self.seq, notice: self.notice, name: &self.name, data, ack: self.ack }
    }

    /// The event an event stream parser reads from the frame of this input with `data`.
    fn dispatched(&self, data: &str) -> Dispatched {
        let ack = self.ack.map(|ack| (ack.number(), ack.is_error()));
        Dispatched { event_type: self.name.clone(), data: data.replace('\r', "\n"), last_event_id: self.cursor(), ack }
    }

    fn cursor(&self) -> String {
        format!("{}.{}{}", self.sid, self.seq, if self.notice { "~" } else { "" })
    }
}

/// One envelope: parses to the same name, data and cursor. Returns it parsed.
fn check_envelope(input: &Input) -> Value {
    let text = encode::envelope(&input.outgoing(&input.json));
    assert_eq!(text.len(), text.capacity(), "not sized exactly: {text:?}");
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|err| panic!("envelope is not JSON ({err}): {text:?}"));
    let object = value.as_object().expect("an envelope is an object");
    assert_eq!(object.len(), 3 + usize::from(input.ack.is_some()), "{text:?}");
    assert_eq!(object["event"], Value::String(input.name.clone()), "{text:?}");
    let data_field = if input.ack.is_some_and(Ack::is_error) { "error" } else { "data" };
    assert_eq!(object[data_field], serde_json::from_str::<Value>(&input.json).unwrap(), "{text:?}");
    assert_eq!(object.get("ack").and_then(Value::as_u64), input.ack.map(Ack::number), "{text:?}");
    assert_eq!(object["id"], Value::String(input.cursor()), "{text:?}");
    // Position 0 is only ever a notice's; every other cursor reads back as itself.
    if input.seq > 0 || input.notice {
        let cursor: Cursor = object["id"].as_str().unwrap().parse().expect("the id is a cursor");
        assert_eq!((cursor.sid, cursor.seq, cursor.notice), (input.sid.clone(), input.seq, input.notice));
    }
    value
}

/// An event as an event stream parser dispatches it.
#[derive(Debug, PartialEq)]
struct Dispatched {
    event_type: String,
    data: String,
    last_event_id: String,
    /// switchyard's own fields, `ack: N` or `ack-error: N` (which the standard ignores): the
    /// number, and whether it was `ack-error`.
    ack: Option<(u64, bool)>,
}

/// The event stream interpretation of the WHATWG HTML standard (9.2.6): lines end with CRLF,
/// LF or CR; a blank line dispatches; `:` starts a comment; one space after the field name's
/// colon is dropped; `data` lines are joined with LF; an event with no data is not dispatched;
/// an event cut off by the end of the stream is discarded. Besides, the `ack` and `ack-error`
/// fields of switchyard's protocol (section 6a) are kept per event.
fn parse_event_stream(stream: &str) -> Vec<Dispatched> {
    let stream = stream.strip_prefix('\u{feff}').unwrap_or(stream);
    let (mut events, mut data, mut event_type, mut last_event_id) = (Vec::new(), String::new(), String::new(), String::new());
    let mut ack = None;
    let mut rest = stream;
    while let Some(end) = rest.find(['\r', '\n']) {
        let line = &rest[..end];
        let after = if rest[end..].starts_with("\r\n") { end + 2 } else { end + 1 };
        rest = &rest[after..];
        if line.is_empty() {
            if !data.is_empty() {
                data.pop();
                let event_type = if event_type.is_empty() { "message".to_owned() } else { std::mem::take(&mut event_type) };
                events.push(Dispatched { event_type, data: std::mem::take(&mut data), last_event_id: last_event_id.clone(), ack });
            }
            data.clear();
            event_type.clear();
            ack = None;
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => event_type = value.to_owned(),
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "id" if !value.contains('\0') => last_event_id = value.to_owned(),
            "ack" | "ack-error" => ack = value.parse().ok().map(|number| (number, field == "ack-error")),
            _ => {}
        }
    }
    events
}

/// One SSE frame of `data`: read back as the one event it is. Returns the frame.
fn check_sse_event(input: &Input, data: &str) -> Vec<u8> {
    let frame = encode::sse_event(&input.outgoing(data));
    assert_eq!(frame.len(), frame.capacity(), "not sized exactly: {frame:?}");
    let text = std::str::from_utf8(&frame).expect("a frame of UTF-8 input is UTF-8");
    let expected: Vec<_> = (!data.is_empty())
        .then(|| input.dispatched(data))
        .into_iter()
        .collect();
    assert_eq!(parse_event_stream(text), expected, "{text:?}");
    frame
}

/// `bytes` framed as chunks (`pieces` of them, where there are bytes enough) and the last
/// chunk decode back to `bytes`.
fn check_chunks(bytes: &[u8], pieces: usize) {
    let mut wire = Vec::new();
    for piece in bytes.chunks(bytes.len().div_ceil(pieces.max(1)).max(1)) {
        let chunk = encode::chunk(piece);
        assert_eq!(chunk.len(), chunk.capacity());
        wire.extend_from_slice(&chunk);
    }
    wire.extend_from_slice(encode::LAST_CHUNK);
    let mut decoded = Vec::new();
    let mut at = 0;
    loop {
        let Ok(httparse::Status::Complete((start, size))) = httparse::parse_chunk_size(&wire[at..]) else {
            panic!("a bad chunk size line at {at}: {:?}", String::from_utf8_lossy(&wire));
        };
        let size = usize::try_from(size).unwrap();
        let data = at + start;
        assert_eq!(&wire[data + size..data + size + 2], b"\r\n", "a chunk ends with CRLF");
        at = data + size + 2;
        if size == 0 {
            break;
        }
        decoded.extend_from_slice(&wire[data..data + size]);
    }
    assert_eq!(at, wire.len(), "bytes after the last chunk");
    assert_eq!(decoded, bytes);
}

fuzz_target!(|bytes: &[u8]| {
    let mut u = Unstructured::new(bytes);
    let mut inputs = Vec::new();
    while inputs.len() < 8 {
        match input(&mut u) {
            Ok(input) => inputs.push(input),
            Err(_) => break,
        }
    }

    let envelopes: Vec<String> = inputs.iter().map(|input| encode::envelope(&input.outgoing(&input.json))).collect();
    let parsed: Vec<Value> = inputs.iter().map(check_envelope).collect();
    let batch = encode::batch(&envelopes);
    assert_eq!(batch.len(), batch.capacity(), "not sized exactly: {batch:?}");
    assert_eq!(serde_json::from_str::<Value>(&batch).expect("a batch is JSON"), Value::Array(parsed), "{batch:?}");

    // SSE needs names without line breaks: every emit checks them.
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    for input in inputs.iter().filter(|input| check_event_name(&input.name).is_ok()) {
        for data in [&input.text, &input.json] {
            stream.extend_from_slice(&check_sse_event(input, data));
            stream.extend_from_slice(encode::SSE_KEEP_ALIVE);
            if !data.is_empty() {
                expected.push(input.dispatched(data));
            }
        }
    }
    assert_eq!(parse_event_stream(std::str::from_utf8(&stream).unwrap()), expected);

    check_chunks(&stream, inputs.len());
    check_chunks(batch.as_bytes(), 1);
    for envelope in &envelopes {
        check_chunks(envelope.as_bytes(), 3);
    }
});
