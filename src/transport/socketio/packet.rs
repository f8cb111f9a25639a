//! The Engine.IO v4 and Socket.IO v5 packet codecs: text in, typed packets out, and the few
//! packets the server writes back. No I/O and nothing of tokio, so the parser is unit-tested
//! here and fuzzed (`fuzz/fuzz_targets/socketio.rs`) on its own.
//!
//! Engine.IO (the transport layer) packets are one type character and a payload: `0` open,
//! `1` close, `2` ping, `3` pong, `4` message, `5` upgrade, `6` noop; over long-polling several
//! travel in one body separated by the record separator `\x1e`, and a binary packet is `b` and
//! its bytes in base64. A Socket.IO packet travels in the payload of an Engine.IO message:
//! `<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]`, types `0` CONNECT, `1`
//! DISCONNECT, `2` EVENT, `3` ACK, `4` `CONNECT_ERROR`, `5` `BINARY_EVENT`, `6` `BINARY_ACK`.
//!
//! The encoders write the Socket.IO packets the server sends already wrapped in their
//! Engine.IO message packet (the leading `4`): that is the only way they travel, and it saves a
//! copy per event.

use std::fmt::Write as _;

use base64::Engine as _;
use serde_json::Value;

/// What is wrong with a packet a client sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// An empty packet.
    #[error("empty packet")]
    Empty,
    /// A type the protocol does not define.
    #[error("unknown packet type")]
    UnknownType,
    /// A binary packet whose payload is not base64.
    #[error("malformed base64 in a binary packet")]
    Base64,
    /// A Socket.IO packet whose shape is wrong; what is wrong.
    #[error("malformed Socket.IO packet: {0}")]
    Malformed(&'static str),
    /// A Socket.IO packet whose JSON does not parse; what the parser said.
    #[error("malformed JSON in a Socket.IO packet: {0}")]
    Json(String),
}

/// One Engine.IO packet, as a client sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnginePacket<'a> {
    /// `0`: only the server opens; a client sending it is a protocol error.
    Open,
    /// `1`: the client closes the session.
    Close,
    /// `2` and its payload (`2probe` during an upgrade).
    Ping(&'a str),
    /// `3` and its payload.
    Pong(&'a str),
    /// `4` and its payload: a Socket.IO packet.
    Message(&'a str),
    /// `5`: the client completes the upgrade to WebSocket.
    Upgrade,
    /// `6`: nothing.
    Noop,
    /// `b` and base64 over long-polling (a binary WebSocket frame arrives as bytes already).
    Binary(Vec<u8>),
}

/// Reads one Engine.IO packet from its text form.
pub fn decode_engine(text: &str) -> Result<EnginePacket<'_>, PacketError> {
    let first = *text.as_bytes().first().ok_or(PacketError::Empty)?;
    if !first.is_ascii() {
        return Err(PacketError::UnknownType);
    }
    let rest = &text[1..];
    Ok(match first {
        b'0' => EnginePacket::Open,
        b'1' => EnginePacket::Close,
        b'2' => EnginePacket::Ping(rest),
        b'3' => EnginePacket::Pong(rest),
        b'4' => EnginePacket::Message(rest),
        b'5' => EnginePacket::Upgrade,
        b'6' => EnginePacket::Noop,
        b'b' => EnginePacket::Binary(base64::engine::general_purpose::STANDARD.decode(rest).map_err(|_| PacketError::Base64)?),
        _ => return Err(PacketError::UnknownType),
    })
}

/// The packets of a long-polling body, in order.
pub fn decode_payload(body: &str) -> impl Iterator<Item = Result<EnginePacket<'_>, PacketError>> {
    body.split(SEPARATOR).map(decode_engine)
}

/// What separates packets in a long-polling body.
pub const SEPARATOR: char = '\x1e';

/// The handshake's fields, as the `0` open packet carries them.
#[derive(Debug, Clone, Copy)]
pub struct Handshake<'a> {
    /// The Engine.IO session id.
    pub sid: &'a str,
    /// Whether the client may upgrade to WebSocket (it is on long-polling).
    pub upgrade: bool,
    /// Milliseconds between the server's pings.
    pub ping_interval: u128,
    /// Milliseconds the server waits for a pong.
    pub ping_timeout: u128,
    /// Largest payload the server takes, in bytes.
    pub max_payload: usize,
}

/// The open packet: `0{"sid","upgrades","pingInterval","pingTimeout","maxPayload"}`.
pub fn encode_open(handshake: &Handshake<'_>) -> String {
    let upgrades: &[&str] = if handshake.upgrade { &["websocket"] } else { &[] };
    let body = serde_json::json!({
        "sid": handshake.sid,
        "upgrades": upgrades,
        "pingInterval": handshake.ping_interval,
        "pingTimeout": handshake.ping_timeout,
        "maxPayload": handshake.max_payload,
    });
    format!("0{body}")
}

/// One Socket.IO packet, as a client sends it.
#[derive(Debug, Clone, PartialEq)]
pub enum SocketPacket {
    /// `0`: connect to a namespace, with the client's auth payload (an object) if any.
    Connect {
        /// The namespace.
        nsp: String,
        /// The auth payload.
        auth: Option<Value>,
    },
    /// `1`: leave a namespace.
    Disconnect {
        /// The namespace.
        nsp: String,
    },
    /// `2`: an event: its name and arguments, and the ack id the client waits on, if any.
    Event {
        /// The namespace.
        nsp: String,
        /// The ack id, when the client waits for an acknowledgement.
        id: Option<u64>,
        /// The event's name.
        name: String,
        /// The arguments after the name.
        args: Vec<Value>,
    },
    /// `3`: the client's answer to an event the server sent with an ack id.
    Ack {
        /// The namespace.
        nsp: String,
        /// The ack id it answers.
        id: u64,
        /// The answer's arguments.
        args: Vec<Value>,
    },
    /// `4`: only servers send it; a client sending it is a protocol error.
    ConnectError {
        /// The namespace.
        nsp: String,
    },
    /// `5` or `6`: an event or ack with binary attachments, which follow as that many binary
    /// packets.
    Binary {
        /// The namespace.
        nsp: String,
        /// The event's name, for a `5` whose first argument is a string.
        name: Option<String>,
        /// How many binary packets follow.
        attachments: usize,
    },
}

/// Event names the Socket.IO client reserves for itself; a client never sends them.
const RESERVED_EVENTS: [&str; 6] = ["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"];

/// Reads one Socket.IO packet from the payload of an Engine.IO message.
pub fn decode_socket(text: &str) -> Result<SocketPacket, PacketError> {
    let bytes = text.as_bytes();
    let kind = *bytes.first().ok_or(PacketError::Empty)?;
    if !(b'0'..=b'6').contains(&kind) {
        return Err(PacketError::UnknownType);
    }
    let mut at = 1;
    let mut attachments = 0;
    if kind == b'5' || kind == b'6' {
        let digits = count_digits(&bytes[at..]);
        if digits == 0 || bytes.get(at + digits) != Some(&b'-') {
            return Err(PacketError::Malformed("a binary packet starts with its attachment count and `-`"));
        }
        attachments = text[at..at + digits].parse().map_err(|_| PacketError::Malformed("attachment count out of range"))?;
        at += digits + 1;
    }
    let nsp = if bytes.get(at) == Some(&b'/') {
        let end = text[at..].find(',').map_or(text.len(), |i| at + i);
        let nsp = &text[at..end];
        at = (end + 1).min(text.len());
        nsp
    } else {
        "/"
    };
    let digits = count_digits(&bytes[at..]);
    let id = if digits > 0 {
        let id = text[at..at + digits].parse().map_err(|_| PacketError::Malformed("ack id out of range"))?;
        at += digits;
        Some(id)
    } else {
        None
    };
    let data = match &text[at..] {
        "" => None,
        json => Some(serde_json::from_str::<Value>(json).map_err(|err| PacketError::Json(err.to_string()))?),
    };
    let nsp = nsp.to_owned();
    match kind {
        b'0' => match data {
            None => Ok(SocketPacket::Connect { nsp, auth: None }),
            Some(auth @ Value::Object(_)) => Ok(SocketPacket::Connect { nsp, auth: Some(auth) }),
            Some(_) => Err(PacketError::Malformed("the auth payload of a CONNECT is an object")),
        },
        b'1' if data.is_none() => Ok(SocketPacket::Disconnect { nsp }),
        b'1' => Err(PacketError::Malformed("a DISCONNECT carries no data")),
        b'2' => {
            let Some(Value::Array(mut args)) = data else {
                return Err(PacketError::Malformed("an EVENT carries an array"));
            };
            if args.is_empty() {
                return Err(PacketError::Malformed("an EVENT carries its name first"));
            }
            let Value::String(name) = args.remove(0) else {
                return Err(PacketError::Malformed("an EVENT's name is a string"));
            };
            if RESERVED_EVENTS.contains(&name.as_str()) {
                return Err(PacketError::Malformed("reserved event name"));
            }
            Ok(SocketPacket::Event { nsp, id, name, args })
        }
        b'3' => match (id, data) {
            (Some(id), Some(Value::Array(args))) => Ok(SocketPacket::Ack { nsp, id, args }),
            (None, _) => Err(PacketError::Malformed("an ACK carries its id")),
            _ => Err(PacketError::Malformed("an ACK carries an array")),
        },
        b'4' => Ok(SocketPacket::ConnectError { nsp }),
        _ => {
            let name = match data {
                Some(Value::Array(args)) => args.into_iter().next().and_then(|first| match first {
                    Value::String(name) => Some(name),
                    _ => None,
                }),
                _ => return Err(PacketError::Malformed("a binary packet carries an array")),
            };
            Ok(SocketPacket::Binary { nsp, name: if kind == b'5' { name } else { None }, attachments })
        }
    }
}

fn count_digits(bytes: &[u8]) -> usize {
    bytes.iter().take_while(|b| b.is_ascii_digit()).count()
}

/// `40{"sid":SID,"pid":PID}`: the main namespace's CONNECT answer.
pub fn encode_connect(sid: &str, pid: &str) -> String {
    format!("40{}", serde_json::json!({ "sid": sid, "pid": pid }))
}

/// `44[/nsp,]{"message":MESSAGE}`: a refused CONNECT.
pub fn encode_connect_error(nsp: &str, message: &str) -> String {
    let body = serde_json::json!({ "message": message });
    if nsp == "/" {
        format!("44{body}")
    } else {
        format!("44{nsp},{body}")
    }
}

/// `41`: the server disconnects the client from the main namespace; the client does not
/// reconnect by itself.
pub const DISCONNECT: &str = "41";

/// `42["NAME",DATA]`, or `42["NAME",DATA,"OFFSET"]` with a recovery offset: an event to the
/// main namespace. `data` is JSON text, written as it is.
pub fn encode_event(name: &str, data: &str, offset: Option<u64>) -> String {
    let mut out = String::with_capacity(name.len() + data.len() + 32);
    out.push_str("42[");
    write_json_string(&mut out, name);
    out.push(',');
    out.push_str(data);
    if let Some(offset) = offset {
        out.push_str(",\"");
        push_u64(&mut out, offset);
        out.push('"');
    }
    out.push(']');
    out
}

/// `42ID["NAME",DATA]`: an event to the main namespace that asks for the client's answer
/// (`43ID[...]`). It carries no recovery offset, as Socket.IO's own server sends none with a
/// request: the client's ack callback would take the offset's place as the last argument.
pub fn encode_request(name: &str, data: &str, id: u64) -> String {
    let mut out = String::with_capacity(name.len() + data.len() + 32);
    let _ = write!(out, "42{id}[");
    write_json_string(&mut out, name);
    out.push(',');
    out.push_str(data);
    out.push(']');
    out
}

/// `43ID[DATA]`: the answer to the client's event with ack id `id`; `data` is JSON text.
pub fn encode_ack(id: u64, data: &str) -> String {
    format!("43{id}[{data}]")
}

/// `text` as a JSON string. Most names need no escape (no quote, backslash or control
/// character, the only characters JSON escapes) and are written as they are, in quotes.
fn write_json_string(out: &mut String, text: &str) {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(text).expect("a string serializes"));
    }
}

/// `n` in decimal, without the formatting machinery (an event's offset, on every event).
fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[at..]).expect("ASCII digits"));
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn engine_packets_read_by_type() {
        assert_eq!(decode_engine("2probe"), Ok(EnginePacket::Ping("probe")));
        assert_eq!(decode_engine("3"), Ok(EnginePacket::Pong("")));
        assert_eq!(decode_engine("4hello"), Ok(EnginePacket::Message("hello")));
        assert_eq!(decode_engine("1"), Ok(EnginePacket::Close));
        assert_eq!(decode_engine("5"), Ok(EnginePacket::Upgrade));
        assert_eq!(decode_engine("6"), Ok(EnginePacket::Noop));
        assert_eq!(decode_engine("bAQID"), Ok(EnginePacket::Binary(vec![1, 2, 3])));
        assert_eq!(decode_engine(""), Err(PacketError::Empty));
        assert_eq!(decode_engine("7"), Err(PacketError::UnknownType));
        assert_eq!(decode_engine("é"), Err(PacketError::UnknownType));
        assert_eq!(decode_engine("b!!"), Err(PacketError::Base64));
    }

    #[test]
    fn a_polling_body_splits_on_the_record_separator() {
        let packets: Vec<_> = decode_payload("4hello\x1e2\x1e4\u{e9}t\u{e9}").collect();
        assert_eq!(packets, [Ok(EnginePacket::Message("hello")), Ok(EnginePacket::Ping("")), Ok(EnginePacket::Message("été"))]);
        assert_eq!(decode_payload("4a\x1e\x1e4b").nth(1), Some(Err(PacketError::Empty)));
    }

    #[test]
    fn the_open_packet_carries_the_handshake_fields() {
        let open = encode_open(&Handshake { sid: "abc", upgrade: true, ping_interval: 25_000, ping_timeout: 20_000, max_payload: 1000 });
        let body: Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
        assert_eq!(body, json!({"sid": "abc", "upgrades": ["websocket"], "pingInterval": 25000, "pingTimeout": 20000, "maxPayload": 1000}));
    }

    #[test]
    fn socket_packets_read_as_the_protocol_document_writes_them() {
        assert_eq!(decode_socket("0"), Ok(SocketPacket::Connect { nsp: "/".into(), auth: None }));
        assert_eq!(decode_socket(r#"0{"token":"123"}"#), Ok(SocketPacket::Connect { nsp: "/".into(), auth: Some(json!({"token": "123"})) }));
        assert_eq!(decode_socket("0/admin,"), Ok(SocketPacket::Connect { nsp: "/admin".into(), auth: None }));
        assert_eq!(decode_socket("0/admin"), Ok(SocketPacket::Connect { nsp: "/admin".into(), auth: None }));
        assert_eq!(decode_socket("1"), Ok(SocketPacket::Disconnect { nsp: "/".into() }));
        assert_eq!(decode_socket("1/admin,"), Ok(SocketPacket::Disconnect { nsp: "/admin".into() }));
        assert_eq!(
            decode_socket(r#"2["foo","bar",{"n":1}]"#),
            Ok(SocketPacket::Event { nsp: "/".into(), id: None, name: "foo".into(), args: vec![json!("bar"), json!({"n": 1})] })
        );
        assert_eq!(
            decode_socket(r#"2/admin,12["foo"]"#),
            Ok(SocketPacket::Event { nsp: "/admin".into(), id: Some(12), name: "foo".into(), args: vec![] })
        );
        assert_eq!(decode_socket(r#"313["bar"]"#), Ok(SocketPacket::Ack { nsp: "/".into(), id: 13, args: vec![json!("bar")] }));
        assert_eq!(
            decode_socket(r#"51-["baz",{"_placeholder":true,"num":0}]"#),
            Ok(SocketPacket::Binary { nsp: "/".into(), name: Some("baz".into()), attachments: 1 })
        );
        assert_eq!(decode_socket(r#"61-/admin,15[{"_placeholder":true,"num":0}]"#), Ok(SocketPacket::Binary { nsp: "/admin".into(), name: None, attachments: 1 }));
    }

    #[test]
    fn malformed_socket_packets_are_refused_with_a_reason() {
        for bad in [
            "",
            "7",
            "2",
            "2{}",
            "2[]",
            "2[1]",
            r#"2["connect"]"#,
            "2[\"a\"",
            "0[]",
            "1{}",
            "3[\"x\"]",
            "31{}",
            "5[\"x\"]",
            "5x-[]",
            "51-{}",
            "299999999999999999999999[\"a\"]",
        ] {
            assert!(decode_socket(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn server_packets_are_wrapped_in_an_engine_message() {
        assert_eq!(encode_event("response", "\"Message received!\"", Some(7)), r#"42["response","Message received!","7"]"#);
        assert_eq!(encode_event("a\"b", "null", None), r#"42["a\"b",null]"#);
        assert_eq!(encode_ack(3, "{\"ok\":true}"), r#"433[{"ok":true}]"#);
        assert_eq!(encode_request("ask", "[1]", 12), r#"4212["ask",[1]]"#);
        assert_eq!(encode_connect_error("/admin", "Invalid namespace"), r#"44/admin,{"message":"Invalid namespace"}"#);
        assert_eq!(encode_connect_error("/", "no"), r#"44{"message":"no"}"#);
        let connect: Value = serde_json::from_str(encode_connect("s", "p").strip_prefix("40").unwrap()).unwrap();
        assert_eq!(connect, json!({"sid": "s", "pid": "p"}));
    }

    #[test]
    fn what_the_server_writes_the_parser_reads_back() {
        let event = encode_event("x", r#"{"a":[1,2]}"#, None);
        let EnginePacket::Message(inner) = decode_engine(&event).unwrap() else { panic!("a message") };
        assert_eq!(decode_socket(inner).unwrap(), SocketPacket::Event { nsp: "/".into(), id: None, name: "x".into(), args: vec![json!({"a": [1, 2]})] });
    }

    #[test]
    fn event_names_and_offsets_write_as_json_writes_them() {
        for name in ["message", "", "a\"b", "back\\slash", "tab\there", "\u{1}", "é ü /"] {
            let ours = encode_event(name, "1", None);
            assert_eq!(ours, format!("42[{},1]", serde_json::to_string(name).unwrap()), "name {name:?}");
        }
        for offset in [0, 7, 10, 12_345, u64::MAX] {
            assert_eq!(encode_event("e", "null", Some(offset)), format!("42[\"e\",null,\"{offset}\"]"));
        }
    }
}
