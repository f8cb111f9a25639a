//! Fuzzes what every transport does with a client body or frame: `parse_envelopes_with`.
//!
//! Beyond "never panics, never overflows the stack" it checks what the gateway relies on once a
//! body is accepted: a non-empty batch within the limits, names that cannot break SSE framing,
//! `data` no deeper than allowed, positive send numbers; that what was accepted survives being
//! written back out (the shape a client library sends) and parsed again; and that tighter
//! limits never accept what looser ones refuse. The first byte picks the tight limits.
#![no_main]

#[path = "../common/json.rs"]
mod json;

use json::has_float;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use switchyard::protocol::{check_event_name, parse_envelopes, parse_envelopes_with, Limits};
use switchyard::Envelope;

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn check_accepted(envelopes: &[Envelope], limits: &Limits, text: &str) {
    assert!(!envelopes.is_empty(), "accepted an empty batch: {text:?}");
    assert!(envelopes.len() <= limits.max_batch, "batch over the limit: {text:?}");
    for envelope in envelopes {
        assert_eq!(check_event_name(&envelope.event), Ok(()), "accepted a bad name: {text:?}");
        assert!(depth(&envelope.data) <= limits.max_depth, "data nested too deep: {text:?}");
        assert!(envelope.seq != Some(0), "accepted send number 0: {text:?}");
        assert!(envelope.ack.is_none_or(|ack| (1..=(1 << 53) - 1).contains(&ack)), "accepted an ack number out of range: {text:?}");
    }
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&knob, rest)) = bytes.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let defaults = Limits::default();
    match parse_envelopes(text) {
        Ok(envelopes) => {
            check_accepted(&envelopes, &defaults, text);
            let written: Vec<Value> = envelopes
                .iter()
                .map(|e| {
                    let mut written = json!({"event": e.event, "data": e.data});
                    if let Some(seq) = e.seq {
                        written["seq"] = json!(seq);
                    }
                    if let Some(ack) = e.ack {
                        written["ack"] = json!(ack);
                    }
                    written
                })
                .collect();
            let again = parse_envelopes(&Value::Array(written).to_string())
                .unwrap_or_else(|err| panic!("re-encoded batch refused ({err}): {text:?}"));
            assert_eq!(again.len(), envelopes.len());
            for (a, b) in again.iter().zip(&envelopes) {
                assert_eq!((&a.event, a.seq, a.ack), (&b.event, b.seq, b.ack), "changed on re-encoding: {text:?}");
                assert!(a.data == b.data || has_float(&b.data), "data changed on re-encoding: {text:?}");
            }
        }
        Err(err) => {
            // The message goes back to the client in a JSON body: it must render.
            let _ = json!({"error": err.to_string()}).to_string();
        }
    }
    let tight = Limits { max_batch: 1 + usize::from(knob % 8), max_depth: usize::from(knob / 8 % 8) };
    if let Ok(envelopes) = parse_envelopes_with(text, &tight) {
        check_accepted(&envelopes, &tight, text);
        assert!(parse_envelopes(text).is_ok(), "tight limits accepted what the defaults refuse: {text:?}");
    }
});
