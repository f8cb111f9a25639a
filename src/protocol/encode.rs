//! The outbound encoder: every byte the server frames around an event, in one place.
//!
//! * [`envelope`]: one event as a JSON envelope `{"event":NAME,"data":DATA,"id":CURSOR}`, the
//!   WebSocket text frame and the element of a poll answer; with an [`Ack`],
//!   `{"event":NAME,"ack":N,"data":DATA,"id":CURSOR}` (`"error"` in place of `"data"` for an
//!   error answer).
//! * [`batch`]: a poll answer, `[ENVELOPE,ENVELOPE,...]` (`[]` when nothing came).
//! * [`sse_event`]: one event as a Server-Sent Events frame (`id:`, `event:`, `data:` lines and
//!   a blank line), and [`SSE_KEEP_ALIVE`], the comment an idle stream sends.
//! * [`chunk`] and [`LAST_CHUNK`]: HTTP/1.1 chunked transfer coding, for the event stream
//!   writer that runs without hyper.
//!
//! Like the rest of `protocol` it is pure: plain inputs in ([`Outgoing`]: a sid, a number, a
//! notice flag, a name and the data already rendered as JSON text), bytes out; no tokio, no
//! hub types. So each function is tested byte for byte, and fuzzed (`fuzz/fuzz_targets/
//! outbound.rs`) against independent readers of each format.
//!
//! These run once per event written, so each builds its output in one allocation sized
//! exactly: the bytes are then handed to the socket layer (`Bytes::from` a `Vec` whose length
//! is its capacity) without a copy or a second allocation, and nothing goes through
//! `format!`.
//!
//! The SSE frame is the one axum's `Sse` wrote before this module existed, byte for byte
//! (`transport/sse.rs` has a test holding the two together): fields in the order `id`, `event`,
//! `data`; each a name, `": "` and the value; every line break in the data (CR or LF) followed
//! by a new `data: `, so a WHATWG parser reads multi-line data back with each break as a LF;
//! and no `data:` line at all for empty data.

use super::{Ack, Sid};

/// One event as the encoder takes it: plain values, so that this module needs nothing from the
/// hub.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing<'a> {
    /// The session the event belongs to; with `seq` and `notice` it makes the cursor.
    pub sid: &'a Sid,
    /// For events, the event's number; for notices, the number of the last event before it.
    pub seq: u64,
    /// Whether this is a notice (`session`, `gap`, ...): its cursor is written `SID.N~`.
    pub notice: bool,
    /// The event name. Any string makes a valid envelope; an SSE frame needs a name without
    /// line breaks, which [`super::check_event_name`] (and so every emit) guarantees.
    pub name: &'a str,
    /// The data as JSON text, rendered once at emit time.
    pub data: &'a str,
    /// The ack the event carries, if any: an answer to a client's request, or a request for an
    /// answer from the client.
    pub ack: Option<Ack>,
}

/// A cursor, `SID.N` or `SID.N~`, with its number already formatted. Cursors are base64url,
/// digits, '.' and '~': nothing in them needs escaping in JSON or in an SSE field.
struct CursorText<'a> {
    sid: &'a str,
    seq: &'a str,
    notice: bool,
}

impl<'a> CursorText<'a> {
    fn new(event: &Outgoing<'a>, digits: &'a mut itoa::Buffer) -> CursorText<'a> {
        CursorText { sid: event.sid.as_str(), seq: digits.format(event.seq), notice: event.notice }
    }

    fn len(&self) -> usize {
        self.sid.len() + 1 + self.seq.len() + usize::from(self.notice)
    }

    fn write(&self, out: &mut String) {
        out.push_str(self.sid);
        out.push('.');
        out.push_str(self.seq);
        if self.notice {
            out.push('~');
        }
    }
}

/// One event as a JSON envelope: `{"event":NAME,"data":DATA,"id":CURSOR}`.
///
/// The data goes in as it is (it is JSON text already); the name is escaped as JSON needs. A
/// name without quotes, backslashes or control characters (every name an emit accepts, save
/// the rare one with a quote or backslash) is copied as it is, and the envelope is then built
/// in exactly as many bytes as it needs.
pub fn envelope(event: &Outgoing<'_>) -> String {
    let plain_name = event.name.bytes().all(|b| b != b'"' && b != b'\\' && b >= 0x20);
    let escaped;
    let name = if plain_name {
        event.name
    } else {
        escaped = serde_json::to_string(event.name).expect("a string always serializes");
        &escaped[1..escaped.len() - 1]
    };
    let mut digits = itoa::Buffer::new();
    let cursor = CursorText::new(event, &mut digits);
    let mut ack_digits = itoa::Buffer::new();
    let ack = event.ack.map(|ack| (ack_digits.format(ack.number()), if ack.is_error() { r#","error":"# } else { r#","data":"# }));
    let ack_len = ack.map_or(0, |(number, field)| r#","ack":"#.len() + number.len() + field.len() - r#","data":"#.len());
    let len = br#"{"event":"","data":,"id":""}"#.len() + name.len() + event.data.len() + cursor.len() + ack_len;
    let mut out = String::with_capacity(len);
    out.push_str(r#"{"event":""#);
    out.push_str(name);
    match ack {
        Some((number, field)) => {
            out.push_str(r#"","ack":"#);
            out.push_str(number);
            out.push_str(field);
        }
        None => out.push_str(r#"","data":"#),
    }
    out.push_str(event.data);
    out.push_str(r#","id":""#);
    cursor.write(&mut out);
    out.push_str(r#""}"#);
    debug_assert_eq!(out.len(), len);
    out
}

/// The envelope of the WebSocket heartbeat (`?heartbeat=1`): not an event of the session, so
/// no cursor.
pub const HEARTBEAT: &str = r#"{"event":"heartbeat","data":null}"#;

/// A poll answer: the envelopes, in order, as one JSON array, in one allocation sized exactly.
pub fn batch<S: AsRef<str>>(envelopes: &[S]) -> String {
    let len = 2 + envelopes.iter().map(|e| e.as_ref().len() + 1).sum::<usize>() - usize::from(!envelopes.is_empty());
    let mut out = String::with_capacity(len);
    out.push('[');
    for (i, envelope) in envelopes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(envelope.as_ref());
    }
    out.push(']');
    debug_assert_eq!(out.len(), len);
    out
}

/// The comment line an idle event stream sends every keep-alive interval, so that proxies do
/// not take it for dead and a dead connection is found by the failed write.
pub const SSE_KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// One event as an SSE frame: `id: CURSOR`, `event: NAME`, `data: DATA` and a blank line.
/// An event with an [`Ack`] has one more line after `event:`: `ack: N`, or `ack-error: N` for
/// an error answer (whose data is then the error). SSE readers ignore fields they do not know
/// (a browser's `EventSource` does), so only a client that asks for acks needs to read it.
///
/// Every CR or LF in the data ends a `data:` line and starts another (pre-rendered data may be
/// pretty-printed JSON), so the frame stays one event: a reader joins the lines with LF, which
/// changes only whitespace between JSON tokens. Empty data gets no `data:` line (a reader then
/// dispatches nothing; data rendered from a value is never empty).
///
/// The name must not hold a line break (see [`Outgoing::name`]).
pub fn sse_event(event: &Outgoing<'_>) -> Vec<u8> {
    debug_assert!(!event.name.contains(['\r', '\n']), "an SSE event name holds a line break: {:?}", event.name);
    let data = event.data;
    let breaks = memchr::memchr2_iter(b'\r', b'\n', data.as_bytes()).count();
    let mut digits = itoa::Buffer::new();
    let cursor = CursorText::new(event, &mut digits);
    // Each line of the data starts with `data: `; the line breaks are the data's own, but the last.
    let data_len = if data.is_empty() { 0 } else { b"data: ".len() * (1 + breaks) + data.len() + 1 };
    let mut ack_digits = itoa::Buffer::new();
    let ack = event.ack.map(|ack| (if ack.is_error() { "ack-error: " } else { "ack: " }, ack_digits.format(ack.number())));
    let ack_len = ack.map_or(0, |(field, number)| field.len() + number.len() + 1);
    let len = b"id: \nevent: \n\n".len() + cursor.len() + event.name.len() + ack_len + data_len;
    let mut out = String::with_capacity(len);
    out.push_str("id: ");
    cursor.write(&mut out);
    out.push_str("\nevent: ");
    out.push_str(event.name);
    out.push('\n');
    if let Some((field, number)) = ack {
        out.push_str(field);
        out.push_str(number);
        out.push('\n');
    }
    if !data.is_empty() {
        out.push_str("data: ");
        let mut line = 0;
        if breaks > 0 {
            // Each break is one ASCII byte, so the slices fall on character boundaries.
            for at in memchr::memchr2_iter(b'\r', b'\n', data.as_bytes()) {
                out.push_str(&data[line..=at]);
                out.push_str("data: ");
                line = at + 1;
            }
        }
        out.push_str(&data[line..]);
        out.push('\n');
    }
    out.push('\n');
    debug_assert_eq!(out.len(), len);
    out.into_bytes()
}

/// `data` as one chunk of an HTTP/1.1 chunked body: its size in lower-case hex, CRLF, the
/// bytes, CRLF; in one allocation, so that it goes out in one write. `data` must not be empty
/// (an empty chunk is the [`LAST_CHUNK`]).
pub fn chunk(data: &[u8]) -> Vec<u8> {
    debug_assert!(!data.is_empty(), "an empty chunk would end the body");
    let digits = hex_digits(data.len());
    let mut out = Vec::with_capacity(digits + 2 + data.len() + 2);
    for shift in (0..digits).rev() {
        out.push(b"0123456789abcdef"[(data.len() >> (4 * shift)) & 0xf]);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// The end of a chunked body: a chunk of size zero and no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// How many hex digits `n` takes, without leading zeros (one for zero).
fn hex_digits(n: usize) -> usize {
    let bits = usize::BITS - n.leading_zeros();
    (bits as usize).div_ceil(4).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid() -> Sid {
        "f8tQsHY6kkg4J-FuzZPBsw".parse().unwrap()
    }

    fn outgoing<'a>(sid: &'a Sid, seq: u64, notice: bool, name: &'a str, data: &'a str) -> Outgoing<'a> {
        Outgoing { sid, seq, notice, name, data, ack: None }
    }

    #[test]
    fn an_event_with_an_ack_carries_its_number_in_the_envelope_and_the_sse_frame() {
        let sid = sid();
        let with = |ack| Outgoing { ack: Some(ack), ..outgoing(&sid, 4, false, "ack", r#"{"sum":3}"#) };
        let answer = with(Ack::data(17).unwrap());
        let text = envelope(&answer);
        assert_eq!(text, r#"{"event":"ack","ack":17,"data":{"sum":3},"id":"f8tQsHY6kkg4J-FuzZPBsw.4"}"#);
        assert_eq!(text.len(), text.capacity());
        let sse = sse_event(&answer);
        assert_eq!(std::str::from_utf8(&sse).unwrap(), "id: f8tQsHY6kkg4J-FuzZPBsw.4\nevent: ack\nack: 17\ndata: {\"sum\":3}\n\n");
        assert_eq!(sse.len(), sse.capacity());
        let failed = with(Ack::error(9_007_199_254_740_991).unwrap());
        let text = envelope(&failed);
        assert_eq!(text, r#"{"event":"ack","ack":9007199254740991,"error":{"sum":3},"id":"f8tQsHY6kkg4J-FuzZPBsw.4"}"#);
        assert_eq!(text.len(), text.capacity());
        let sse = sse_event(&failed);
        assert_eq!(std::str::from_utf8(&sse).unwrap(), "id: f8tQsHY6kkg4J-FuzZPBsw.4\nevent: ack\nack-error: 9007199254740991\ndata: {\"sum\":3}\n\n");
        assert_eq!(sse.len(), sse.capacity());
    }

    #[test]
    fn an_envelope_is_exact_and_exactly_sized() {
        let sid = sid();
        let text = envelope(&outgoing(&sid, 7, false, "response", r#"{"a":[1,"x"]}"#));
        assert_eq!(text, r#"{"event":"response","data":{"a":[1,"x"]},"id":"f8tQsHY6kkg4J-FuzZPBsw.7"}"#);
        assert_eq!(text.len(), text.capacity());
        let text = envelope(&outgoing(&sid, 0, true, "session", r#"{"sid":"f8tQsHY6kkg4J-FuzZPBsw"}"#));
        assert_eq!(text, r#"{"event":"session","data":{"sid":"f8tQsHY6kkg4J-FuzZPBsw"},"id":"f8tQsHY6kkg4J-FuzZPBsw.0~"}"#);
        assert_eq!(text.len(), text.capacity());
        let text = envelope(&outgoing(&sid, u64::MAX, true, "naïve ☃", "null"));
        assert_eq!(text, r#"{"event":"naïve ☃","data":null,"id":"f8tQsHY6kkg4J-FuzZPBsw.18446744073709551615~"}"#);
        assert_eq!(text.len(), text.capacity());
    }

    #[test]
    fn an_envelope_escapes_the_name_as_json_needs() {
        let sid = sid();
        assert_eq!(
            envelope(&outgoing(&sid, 3, false, "quote\"and\\slash", "1")),
            r#"{"event":"quote\"and\\slash","data":1,"id":"f8tQsHY6kkg4J-FuzZPBsw.3"}"#
        );
        // Emits refuse control characters in names; the envelope is valid JSON even so.
        let text = envelope(&outgoing(&sid, 3, false, "tab\there\u{1}", "1"));
        assert_eq!(text, r#"{"event":"tab\there\u0001","data":1,"id":"f8tQsHY6kkg4J-FuzZPBsw.3"}"#);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["event"], "tab\there\u{1}");
        assert_eq!(value["id"], "f8tQsHY6kkg4J-FuzZPBsw.3");
    }

    #[test]
    fn the_heartbeat_is_an_envelope_without_a_cursor() {
        let value: serde_json::Value = serde_json::from_str(HEARTBEAT).unwrap();
        assert_eq!(value, serde_json::json!({"event": "heartbeat", "data": null}));
    }

    #[test]
    fn a_batch_is_a_json_array_exactly_sized() {
        let empty: [&str; 0] = [];
        assert_eq!(batch(&empty), "[]");
        assert_eq!(batch(&empty).capacity(), 2);
        let one = batch(&[r#"{"event":"a","data":1,"id":"x.1"}"#]);
        assert_eq!(one, r#"[{"event":"a","data":1,"id":"x.1"}]"#);
        assert_eq!(one.len(), one.capacity());
        let sid = sid();
        let envelopes = vec![
            envelope(&outgoing(&sid, 0, true, "session", "{}")),
            envelope(&outgoing(&sid, 1, false, "a\"b", "[1,2]")),
        ];
        let text = batch(&envelopes);
        assert_eq!(
            text,
            r#"[{"event":"session","data":{},"id":"f8tQsHY6kkg4J-FuzZPBsw.0~"},{"event":"a\"b","data":[1,2],"id":"f8tQsHY6kkg4J-FuzZPBsw.1"}]"#
        );
        assert_eq!(text.len(), text.capacity());
    }

    #[test]
    fn an_sse_frame_is_exact_and_exactly_sized() {
        let sid = sid();
        let frame = sse_event(&outgoing(&sid, 1, false, "message", r#""hi""#));
        assert_eq!(frame, b"id: f8tQsHY6kkg4J-FuzZPBsw.1\nevent: message\ndata: \"hi\"\n\n");
        assert_eq!(frame.len(), frame.capacity());
        let frame = sse_event(&outgoing(&sid, 4, true, "gap", r#"{"lost":2}"#));
        assert_eq!(frame, b"id: f8tQsHY6kkg4J-FuzZPBsw.4~\nevent: gap\ndata: {\"lost\":2}\n\n");
        // Names are written as they are: SSE has no escaping, and needs none but line breaks.
        let frame = sse_event(&outgoing(&sid, 2, false, " quote\"and\\slash ☃", "1"));
        assert_eq!(frame, "id: f8tQsHY6kkg4J-FuzZPBsw.2\nevent:  quote\"and\\slash ☃\ndata: 1\n\n".as_bytes());
        assert_eq!(frame.len(), frame.capacity());
    }

    #[test]
    fn an_sse_frame_splits_multi_line_data_at_every_cr_and_lf() {
        let sid = sid();
        let frame = sse_event(&outgoing(&sid, 4, false, "pretty", "{\n  \"a\": 1,\r\n  \"b\": [\r2\n]\n}\n"));
        let expected = "id: f8tQsHY6kkg4J-FuzZPBsw.4\nevent: pretty\n\
                        data: {\ndata:   \"a\": 1,\rdata: \ndata:   \"b\": [\rdata: 2\ndata: ]\ndata: }\ndata: \n\n";
        assert_eq!(String::from_utf8(frame.clone()).unwrap(), expected);
        assert_eq!(frame.len(), frame.capacity());
        // JSON escapes line breaks inside strings: those stay on one line.
        let frame = sse_event(&outgoing(&sid, 5, false, "s", r#""a\nb\r\nc""#));
        assert_eq!(frame, b"id: f8tQsHY6kkg4J-FuzZPBsw.5\nevent: s\ndata: \"a\\nb\\r\\nc\"\n\n");
    }

    #[test]
    fn an_sse_frame_with_empty_data_has_no_data_line() {
        let sid = sid();
        let frame = sse_event(&outgoing(&sid, 6, false, "e", ""));
        assert_eq!(frame, b"id: f8tQsHY6kkg4J-FuzZPBsw.6\nevent: e\n\n");
        assert_eq!(frame.len(), frame.capacity());
    }

    #[test]
    fn the_keep_alive_is_a_comment() {
        assert_eq!(SSE_KEEP_ALIVE, b": keep-alive\n\n");
    }

    #[test]
    fn a_chunk_is_its_hex_size_the_bytes_and_crlf() {
        assert_eq!(chunk(b"x"), b"1\r\nx\r\n");
        assert_eq!(chunk(&[b'y'; 15]), [&b"f\r\n"[..], &[b'y'; 15], b"\r\n"].concat());
        assert_eq!(chunk(&[b'z'; 16]), [&b"10\r\n"[..], &[b'z'; 16], b"\r\n"].concat());
        let big = vec![b'b'; 0xb8 * 0x100 + 0x0a];
        let framed = chunk(&big);
        assert_eq!(&framed[..6], b"b80a\r\n");
        assert_eq!(&framed[framed.len() - 2..], b"\r\n");
        assert_eq!(framed.len(), framed.capacity());
        assert_eq!(LAST_CHUNK, b"0\r\n\r\n");
    }

    #[test]
    fn hex_digits_count_without_leading_zeros() {
        for n in [0usize, 1, 9, 15, 16, 255, 256, 0xfff, 0x1000, usize::MAX] {
            assert_eq!(hex_digits(n), format!("{n:x}").len(), "{n}");
        }
    }
}
