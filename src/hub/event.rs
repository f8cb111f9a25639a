//! What the hub hands out: [`Event`]s and notices, and [`Rendered`] events made ahead of time.
//!
//! An event's name and JSON data live in one shared, immutable body, rendered once however many
//! copies are made (the ring, a replay, every member of a room, every transport that writes it).
//! Every copy on the per-event path is then one reference count, and a ring holds only the
//! body's pointer (its number is implicit, see `ring.rs`). The rules every emit follows (how data becomes JSON, which event
//! names are refused) are here too, so that the hub and a handler rendering ahead of time agree.

use std::sync::Arc;

use serde_json::Value;

use crate::protocol::{check_event_name, Ack, Cursor, Sid};

use super::HubError;

/// One outgoing event or notice. Its name and JSON data are rendered once into one body,
/// shared by every copy (ring, replay, every member of a room): a copy is one reference
/// count. The ring keeps only the body; an `Event` is made when an attachment hands it out.
#[derive(Debug, Clone)]
pub struct Event {
    /// For events, the event's number (1, 2, ...). For notices, the number of the last event
    /// before it: the notice's cursor is the resume point just after that event.
    pub seq: u64,
    /// Notices (`session`, `gap`) are per transport: never buffered, never replayed.
    pub notice: bool,
    pub(super) body: Arc<Body>,
}

/// An event's name and its data as JSON text, behind one reference count: each copy of an event
/// made on the per-event path (append, read, write) is then one atomic add, not two.
#[derive(Debug)]
pub(super) struct Body {
    name: Box<str>,
    data: Box<str>,
    /// The ack the event carries: an answer to a client's request, or a request for the
    /// client's answer (see [`crate::protocol::ack`]).
    ack: Option<Ack>,
}

impl Body {
    /// `data` is JSON text.
    #[inline]
    pub(super) fn shared(name: &str, data: impl Into<Box<str>>) -> Arc<Body> {
        Arc::new(Body { name: name.into(), data: data.into(), ack: None })
    }

    /// [`Body::shared`] of an event carrying an ack.
    pub(super) fn with_ack(name: &str, data: impl Into<Box<str>>, ack: Option<Ack>) -> Arc<Body> {
        Arc::new(Body { name: name.into(), data: data.into(), ack })
    }

    /// The body as a cluster buffer entry: `name\ndata`, or `name\tACK\ndata` with an ack
    /// ([`Ack::token`]); names hold no control characters, so neither separator can be in one.
    pub(super) fn entry(&self) -> String {
        let mut entry = Vec::new();
        self.write_entry(&mut entry);
        String::from_utf8(entry).expect("an entry is text")
    }

    /// Appends [`Body::entry`] to `out` (the cluster's batches write every entry into one
    /// reused buffer).
    pub(super) fn write_entry(&self, out: &mut Vec<u8>) {
        let ack = self.ack.map(Ack::token);
        let ack_len = ack.as_ref().map_or(0, |token| 1 + token.len());
        out.reserve(self.name.len() + ack_len + 1 + self.data.len());
        out.extend_from_slice(self.name.as_bytes());
        if let Some(token) = ack {
            out.push(b'\t');
            out.extend_from_slice(token.as_bytes());
        }
        out.push(b'\n');
        out.extend_from_slice(self.data.as_bytes());
    }

    /// Reads back the two parts of an [`Body::entry`]: `head` (the name, and the ack if any)
    /// and the data.
    pub(super) fn from_entry(head: &str, data: &str) -> Arc<Body> {
        match head.split_once('\t') {
            Some((name, token)) => Body::with_ack(name, data, Ack::from_token(token)),
            None => Body::shared(head, data),
        }
    }
}

impl Event {
    /// The event's name.
    pub fn name(&self) -> &str {
        &self.body.name
    }

    /// The event's data as JSON text (for an error answer, the error).
    pub fn data(&self) -> &str {
        &self.body.data
    }

    /// The ack the event carries, if any: an `ack` event answering the client's request, or an
    /// event asking for the client's answer ([`Hub::emit_with_ack`](super::Hub::emit_with_ack)).
    pub fn ack(&self) -> Option<Ack> {
        self.body.ack
    }

    /// The event's cursor in the session `sid`: where a client that saw it resumes from.
    pub fn cursor(&self, sid: &Sid) -> Cursor {
        Cursor { sid: sid.clone(), seq: self.seq, notice: self.notice }
    }

    /// An event of `name` with `data` (JSON text), as the hub would hand it out.
    #[inline]
    pub(crate) fn new(seq: u64, notice: bool, name: &str, data: &str) -> Event {
        Event { seq, notice, body: Body::shared(name, data) }
    }

    pub(super) fn notice(seq: u64, name: &str, data: Value) -> Event {
        Event::new(seq, true, name, &data.to_string())
    }
}

/// An event whose name is checked and whose data is rendered to JSON once, to be emitted many
/// times (a constant reply): see [`Hub::emit_rendered_to`](super::Hub::emit_rendered_to) and
/// [`crate::Context::emit_rendered`].
#[derive(Clone, Debug)]
pub struct Rendered(pub(super) Arc<Body>);

impl Rendered {
    /// Checks `name` and renders `data` (see [`render_data`]).
    pub fn new(name: &str, data: &impl serde::Serialize) -> Result<Rendered, HubError> {
        validate_event_name(name)?;
        Ok(Rendered(Body::shared(name, render_data(data))))
    }

    /// The event's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The data as JSON text.
    pub fn data(&self) -> &str {
        &self.0.data
    }
}

/// An event's data as JSON text. Data that cannot be JSON (a map with non-string keys) renders
/// as `null`: the one rule for every emit that takes a serializable value.
pub fn render_data(data: &impl serde::Serialize) -> String {
    serde_json::to_string(data).unwrap_or_else(|_| "null".to_owned())
}

/// Refuses names that would break SSE framing or are unbounded (see [`check_event_name`]).
pub fn validate_event_name(name: &str) -> Result<(), HubError> {
    check_event_name(name).map_err(HubError::EventName)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::{hub, next};
    use super::super::{HubError, Transport};
    use super::Rendered;

    #[tokio::test]
    async fn a_rendered_event_is_the_same_event_as_an_emitted_one() {
        let hub = hub(8);
        let mut a = hub.attach(Transport::WebSocket, None, None).await.unwrap();
        next(&mut a).await;
        let rendered = Rendered::new("response", &"Message received!").unwrap();
        hub.emit_rendered_to(&a.session(), &rendered).await.unwrap();
        hub.emit(a.sid(), "response", &json!("Message received!")).await.unwrap();
        let (x, y) = (a.recv().await.unwrap(), a.recv().await.unwrap());
        assert_eq!((x.name(), x.data()), (y.name(), y.data()));
        assert_eq!((x.seq, y.seq), (1, 2));
        assert!(Rendered::new("", &1).is_err(), "names are checked as for any emit");
    }

    #[test]
    fn an_ack_costs_a_body_one_word_and_survives_the_cluster_entry() {
        // Name and data, 16 bytes each, and the ack in one word: with the Arc's two counts, 56
        // bytes, the same 64-byte chunk of glibc's allocator as without it.
        assert_eq!(std::mem::size_of::<super::Body>(), 40);
        let ack = crate::protocol::Ack::error(42);
        let body = super::Body::with_ack("ack", r#"{"error":"x"}"#, ack);
        let entry = body.entry();
        assert_eq!(entry, "ack\t42!\n{\"error\":\"x\"}");
        let (head, data) = entry.split_once('\n').unwrap();
        let back = super::Body::from_entry(head, data);
        assert_eq!((&*back.name, &*back.data, back.ack), ("ack", r#"{"error":"x"}"#, ack));
        let plain = super::Body::from_entry("response", "1");
        assert_eq!((&*plain.name, plain.ack), ("response", None));
    }

    #[tokio::test]
    async fn event_names_that_would_break_framing_are_refused() {
        let hub = hub(8);
        let a = hub.attach(Transport::Sse, None, None).await.unwrap();
        for bad in ["", "a\nb", "a\rb", &"x".repeat(129)] {
            assert!(matches!(hub.emit(a.sid(), bad, &json!(1)).await, Err(HubError::EventName(_))), "{bad:?}");
        }
    }
}
