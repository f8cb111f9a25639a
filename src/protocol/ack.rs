//! Acknowledgements: the number that pairs a request with its answer.
//!
//! * A client envelope with `"ack": N` asks for an answer; the server answers with one `ack`
//!   event carrying the same number: `{"event":"ack","ack":N,"data":D,"id":CURSOR}`, or, when
//!   the event could not be handled, `{"event":"ack","ack":N,"error":{...},"id":CURSOR}`.
//! * The other way round, the server sends an event with `"ack": N` and the client answers with
//!   an envelope `{"event":"ack","ack":N,"data":D}`.
//!
//! An [`Ack`] is what an outgoing event carries: the number, and whether the event is an error
//! answer (its JSON is then written under `error`, not `data`). Both fit in one word, since
//! numbers stay within JavaScript's safe integers (at most 2^53 - 1): an event of the hub pays
//! eight bytes for it, not sixteen, and an event without one pays nothing more (`Option<Ack>`
//! uses the zero no number can be).

use std::num::NonZeroU64;

/// The largest ack number: JavaScript's `Number.MAX_SAFE_INTEGER`, so that every client can
/// hold it exactly.
pub const MAX_ACK: u64 = (1 << 53) - 1;

/// The bit marking an error answer; far above [`MAX_ACK`].
const ERROR_BIT: u64 = 1 << 63;

/// The ack an outgoing event carries: its number and whether it is an error answer.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ack(NonZeroU64);

impl Ack {
    /// Whether `number` may be an ack number: 1 to [`MAX_ACK`].
    pub fn in_range(number: u64) -> bool {
        (1..=MAX_ACK).contains(&number)
    }

    /// An answer carrying data, or a request asking for an answer: `"ack": N, "data": D`.
    /// `None` for a number out of range.
    pub fn data(number: u64) -> Option<Ack> {
        Ack::in_range(number).then(|| Ack(NonZeroU64::new(number).expect("in range")))
    }

    /// An error answer: `"ack": N, "error": E`. `None` for a number out of range.
    pub fn error(number: u64) -> Option<Ack> {
        Ack::in_range(number).then(|| Ack(NonZeroU64::new(number | ERROR_BIT).expect("non-zero")))
    }

    /// The number, 1 to [`MAX_ACK`].
    pub fn number(self) -> u64 {
        self.0.get() & !ERROR_BIT
    }

    /// Whether this is an error answer.
    pub fn is_error(self) -> bool {
        self.0.get() & ERROR_BIT != 0
    }

    /// The ack as one token, `N` or `N!` for an error answer: how it travels where it has to be
    /// text (the cluster's buffer entries).
    pub fn token(self) -> String {
        if self.is_error() { format!("{}!", self.number()) } else { self.number().to_string() }
    }

    /// Reads back a [`Ack::token`].
    pub fn from_token(token: &str) -> Option<Ack> {
        match token.strip_suffix('!') {
            Some(number) => Ack::error(number.parse().ok()?),
            None => Ack::data(token.parse().ok()?),
        }
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ack({})", self.token())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_holds_its_number_and_kind_in_one_word_and_round_trips_as_a_token() {
        assert_eq!(std::mem::size_of::<Option<Ack>>(), 8);
        for ack in [Ack::data(1).unwrap(), Ack::data(MAX_ACK).unwrap(), Ack::error(7).unwrap(), Ack::error(MAX_ACK).unwrap()] {
            assert_eq!(Ack::from_token(&ack.token()), Some(ack));
        }
        let (data, error) = (Ack::data(42).unwrap(), Ack::error(42).unwrap());
        assert_eq!((data.number(), data.is_error(), error.number(), error.is_error()), (42, false, 42, true));
        assert_ne!(data, error);
        assert_eq!((Ack::data(0), Ack::data(MAX_ACK + 1), Ack::error(0)), (None, None, None));
        for bad in ["", "!", "0", "-1", "x", "9007199254740992", "1!!"] {
            assert_eq!(Ack::from_token(bad), None, "{bad:?}");
        }
    }
}
