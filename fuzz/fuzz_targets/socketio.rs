//! Fuzzes the Engine.IO and Socket.IO packet parsers, which read every long-polling body and
//! WebSocket frame a Socket.IO client sends to `/socket.io/`.
//!
//! Whatever the input, parsing returns a packet or an error, never panics; an EVENT the parser
//! accepts is written back by the server's own encoder into a packet that reads as the same
//! event (the arguments as one data value, as the socket task forwards them), floats within
//! the one ulp serde_json without `float_roundtrip` may move them on a read (as in the
//! `envelopes` target).
#![no_main]

#[path = "../common/json.rs"]
mod json;

use json::has_float;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchyard::transport::socketio::packet::{decode_engine, decode_payload, decode_socket, encode_event, EnginePacket, SocketPacket};

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    for packet in decode_payload(text) {
        if let Ok(EnginePacket::Message(inner)) = packet {
            check(inner);
        }
    }
    check(text);
});

fn check(text: &str) {
    let Ok(SocketPacket::Event { nsp, name, args, .. }) = decode_socket(text) else {
        return;
    };
    if nsp != "/" || args.len() != 1 {
        return;
    }
    let data = serde_json::to_string(&args[0]).expect("a value serializes");
    let written = encode_event(&name, &data, Some(7));
    let Ok(EnginePacket::Message(inner)) = decode_engine(&written) else {
        panic!("the encoder writes an Engine.IO message: {written:?}");
    };
    match decode_socket(inner) {
        Ok(SocketPacket::Event { name: read, args: read_args, .. }) => {
            assert_eq!(read, name);
            assert_eq!(read_args.len(), 2, "{written:?}");
            assert!(read_args[0] == args[0] || has_float(&args[0]), "data changed on the way back: {written:?}");
            assert_eq!(read_args[1], Value::String("7".into()), "the offset: {written:?}");
        }
        other => panic!("{written:?} read back as {other:?}"),
    }
}
