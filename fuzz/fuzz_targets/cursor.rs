//! Fuzzes sid and cursor parsing, the values that arrive in `?sid=`, `?last_event_id=` and the
//! `Last-Event-ID` header of every attach.
//!
//! Both have exactly one spelling per value, so whatever parses must print back byte for byte.
//! Each input is tried as it is and behind a well-formed sid, so that the fuzzer spends its time
//! on the position part rather than on guessing 22 base64url characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::SID_LEN;
use switchyard::{Cursor, Sid};

const SID: &str = "AAAAAAAAAAAAAAAAAAAAAA";

fn check(text: &str) {
    if let Ok(sid) = text.parse::<Sid>() {
        assert_eq!(sid.as_str(), text, "a sid must print as it was written");
        assert_eq!(sid.as_str().len(), SID_LEN);
        assert!(sid.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert!(text.starts_with(sid.short()));
    }
    if let Ok(cursor) = text.parse::<Cursor>() {
        assert_eq!(cursor.to_string(), text, "a cursor must print as it was written");
        assert!(cursor.seq > 0 || cursor.notice, "event 0 does not exist: {text:?}");
        assert_eq!(cursor.sid.as_str().parse::<Sid>().as_ref(), Ok(&cursor.sid));
        let round = cursor.to_string().parse::<Cursor>().expect("a printed cursor parses");
        assert_eq!(round, cursor);
    }
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    check(text);
    check(&format!("{SID}.{text}"));
    check(&format!("{SID}{text}"));
});
