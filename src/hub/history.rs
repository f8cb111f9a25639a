//! How sessions move between transports: the changes clients report ([`TransportChange`]), and
//! each session's recent attaches and detaches ([`Hub::history`]), for the operator page.
//!
//! A client that arrives on a transport from another one (a fallback down the ladder, or an
//! upgrade back up) may say so on its attach request (`from=websocket&reason=ws_blocked`, see
//! docs/protocol.md, section 2). The hub counts it in `switchyard_transport_changes_total`
//! by `from`, `to` and `reason`, a bounded set: a reason the hub does not know counts as
//! `other`, so a client cannot grow the number of series. A WebSocket or poll attach counts at
//! once; an SSE attach once its stream has held the session for a few seconds (see
//! `attachment.rs`, `CONFIRM_SSE`), since a proxy that holds streams back makes the client
//! abandon it for polling.
//!
//! Each session keeps its last [`LEN`] moments (created, resumed, detached, a gap) in its own
//! state, packed into one `u64` each, so the history costs a few stores under the lock an attach
//! or detach already holds and 72 bytes per session, and needs no table of its own to bound or
//! clean up: it goes when the session goes. A long-poll that continues a long-poll is not a new
//! moment: the detach of the poll before it is taken back, so a polling session's history shows
//! when it started polling and when it stopped, not every poll.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

use super::attachment::{CloseReason, GapReason};
use super::Transport;

/// Why a client says it changed transport: the `reason` of its attach request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeReason {
    /// The WebSocket failed before its `session` hello (the handshake was refused, or the
    /// socket closed first): a proxy that does not pass upgrades, or refuses `CONNECT`.
    WsBlocked,
    /// The WebSocket opened but no `session` hello came through in time.
    WsTimeout,
    /// WebSocket was skipped: it failed on this origin recently (the client remembers).
    WsRemembered,
    /// The SSE stream delivered no `session` hello in time: a proxy holds streams back.
    SseHeldBack,
    /// The SSE request failed (an error status, a wrong content type, the network).
    SseFailed,
    /// The first long-poll failed.
    PollingFailed,
    /// A WebSocket probe from a fallback got through: the client moves back up.
    Probe,
    /// After a drop, a new round of attempts landed on another transport with nothing failing
    /// first (usually back up to WebSocket).
    Reconnect,
    /// A reason this server does not know (a newer client's).
    Other,
}

impl ChangeReason {
    /// Every reason, in the order of their codes.
    pub const ALL: [ChangeReason; 9] = [
        ChangeReason::WsBlocked,
        ChangeReason::WsTimeout,
        ChangeReason::WsRemembered,
        ChangeReason::SseHeldBack,
        ChangeReason::SseFailed,
        ChangeReason::PollingFailed,
        ChangeReason::Probe,
        ChangeReason::Reconnect,
        ChangeReason::Other,
    ];

    /// The reason's name on the wire and in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeReason::WsBlocked => "ws_blocked",
            ChangeReason::WsTimeout => "ws_timeout",
            ChangeReason::WsRemembered => "ws_remembered",
            ChangeReason::SseHeldBack => "sse_held_back",
            ChangeReason::SseFailed => "sse_failed",
            ChangeReason::PollingFailed => "polling_failed",
            ChangeReason::Probe => "probe",
            ChangeReason::Reconnect => "reconnect",
            ChangeReason::Other => "other",
        }
    }

    /// Reads a client's `reason`; anything unknown (or missing) is [`ChangeReason::Other`].
    pub fn parse(text: Option<&str>) -> ChangeReason {
        text.and_then(|text| ChangeReason::ALL.into_iter().find(|r| r.as_str() == text)).unwrap_or(ChangeReason::Other)
    }

    fn code(self) -> u8 {
        ChangeReason::ALL.iter().position(|r| *r == self).expect("every reason is in ALL") as u8
    }
}

/// A client's report that it came to the transport it attaches with from another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportChange {
    /// The transport the client held (or tried first) before.
    pub from: Transport,
    /// Why it left it.
    pub reason: ChangeReason,
}

impl TransportChange {
    /// The change an attach request of transport `to` reports with `from` and `reason` (raw
    /// from its query); `None` when it reports none: no `from`, a `from` that names no
    /// transport, or `to` itself.
    pub fn parse(from: Option<&str>, reason: Option<&str>, to: Transport) -> Option<TransportChange> {
        let from = Transport::from_name(from?)?;
        (from != to).then(|| TransportChange { from, reason: ChangeReason::parse(reason) })
    }

    /// Whether moving from `self.from` to `to` goes down the ladder (WebSocket, then SSE, then
    /// long-polling), rather than back up.
    pub fn is_fallback(self, to: Transport) -> bool {
        to.index() > self.from.index()
    }
}

/// What happened to a session at one moment of its [`Hub::history`](super::Hub::history).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryKind {
    /// A transport attached and created the session.
    Created,
    /// A transport attached to the existing session.
    Resumed,
    /// The transport holding the session went (`detail` says why).
    Detached,
    /// The session lost events: its transport fell more than a buffer behind.
    Gap,
}

impl HistoryKind {
    const ALL: [HistoryKind; 4] = [HistoryKind::Created, HistoryKind::Resumed, HistoryKind::Detached, HistoryKind::Gap];

    /// A short fixed name.
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryKind::Created => "created",
            HistoryKind::Resumed => "resumed",
            HistoryKind::Detached => "detached",
            HistoryKind::Gap => "gap",
        }
    }
}

/// One moment of a session's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// How long ago it happened (to the millisecond).
    pub ago: Duration,
    /// What happened.
    pub kind: HistoryKind,
    /// The transport it happened on.
    pub transport: Transport,
    /// For an attach, the transport the client said it came from.
    pub from: Option<Transport>,
    /// Why: the reason of a reported change (`ws_blocked`), of a gap (`expired`, `overflow`),
    /// or of a detach (`closed`, `superseded`, `slow consumer`, `shutdown`, `redis
    /// unreachable`).
    pub detail: Option<&'static str>,
}

/// What [`Hub::history`](super::Hub::history) tells about a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHistory {
    /// The number of the last event handed to any of its transports.
    pub delivered: u64,
    /// Its most recent moments, oldest first: at most eight.
    pub entries: Vec<HistoryEntry>,
}

/// How many moments a session keeps.
pub const LEN: usize = 8;

/// Why a moment happened, as stored: one byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Detail {
    None,
    Change(ChangeReason),
    Gap(GapReason),
    Overflow,
    Closed,
    Close(CloseReason),
}

const GAP_BASE: u8 = 32;
const CLOSE_BASE: u8 = 64;
const GAPS: [GapReason; 3] = [GapReason::Expired, GapReason::InvalidSid, GapReason::BadCursor];
const CLOSES: [CloseReason; 4] = [CloseReason::Superseded, CloseReason::Shutdown, CloseReason::SlowConsumer, CloseReason::Unavailable];

impl Detail {
    fn code(self) -> u8 {
        match self {
            Detail::None => 0,
            Detail::Change(reason) => 1 + reason.code(),
            Detail::Gap(reason) => GAP_BASE + GAPS.iter().position(|g| *g == reason).expect("every gap reason") as u8,
            Detail::Overflow => GAP_BASE + GAPS.len() as u8,
            Detail::Closed => CLOSE_BASE,
            Detail::Close(reason) => CLOSE_BASE + 1 + CLOSES.iter().position(|c| *c == reason).expect("every close reason") as u8,
        }
    }

    fn name(code: u8) -> Option<&'static str> {
        let index = |base: u8| usize::from(code - base);
        match code {
            0 => None,
            c if c < GAP_BASE => ChangeReason::ALL.get(index(1)).map(|r| r.as_str()),
            c if c < CLOSE_BASE => GAPS.get(index(GAP_BASE)).map_or(Some("overflow"), |g| Some(g.as_str())),
            CLOSE_BASE => Some("closed"),
            _ => CLOSES.get(index(CLOSE_BASE + 1)).map(|c| c.as_str()),
        }
    }
}

/// When the hub's history clock started: moments are stored as milliseconds since.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// A session's last [`LEN`] moments, packed: bits 0-7 the detail, 8-9 the transport, 10-12
/// the transport it came from (0: none), 13-15 the kind, 16-63 milliseconds since [`epoch`].
#[derive(Default)]
pub(super) struct History {
    entries: [u64; LEN],
    /// Where the next moment goes.
    next: u8,
    /// How many of `entries` hold a moment.
    len: u8,
}

impl History {
    pub(super) fn push(&mut self, kind: HistoryKind, transport: Transport, from: Option<Transport>, detail: Detail) {
        let at = Instant::now().saturating_duration_since(epoch()).as_millis() as u64;
        let kind = HistoryKind::ALL.iter().position(|k| *k == kind).expect("every kind") as u64;
        let from = from.map_or(0, |t| t.index() as u64 + 1);
        let packed = (at << 16) | (kind << 13) | (from << 10) | ((transport.index() as u64) << 8) | u64::from(detail.code());
        self.entries[usize::from(self.next)] = packed;
        self.next = (self.next + 1) % LEN as u8;
        self.len = (self.len + 1).min(LEN as u8);
    }

    /// A long-poll continues a long-poll: the detach of the poll before is taken back.
    pub(super) fn continue_poll(&mut self) {
        if self.len == 0 {
            return;
        }
        let last = (usize::from(self.next) + LEN - 1) % LEN;
        let packed = self.entries[last];
        let detached = (packed >> 13) & 0b111 == HistoryKind::ALL.iter().position(|k| *k == HistoryKind::Detached).unwrap() as u64;
        let polling = (packed >> 8) & 0b11 == Transport::Polling.index() as u64;
        if detached && polling && packed & 0xff == u64::from(Detail::Closed.code()) {
            self.next = last as u8;
            self.len -= 1;
        }
    }

    /// The moments kept, oldest first.
    pub(super) fn entries(&self) -> Vec<HistoryEntry> {
        let now = Instant::now().saturating_duration_since(epoch()).as_millis() as u64;
        let first = (usize::from(self.next) + LEN - usize::from(self.len)) % LEN;
        (0..usize::from(self.len))
            .map(|i| {
                let packed = self.entries[(first + i) % LEN];
                let from = ((packed >> 10) & 0b111) as usize;
                HistoryEntry {
                    ago: Duration::from_millis(now.saturating_sub(packed >> 16)),
                    kind: HistoryKind::ALL[((packed >> 13) & 0b111) as usize],
                    transport: Transport::ALL[((packed >> 8) & 0b11) as usize],
                    from: from.checked_sub(1).map(|i| Transport::ALL[i]),
                    detail: Detail::name((packed & 0xff) as u8),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_and_changes_read_from_a_query_stay_in_a_bounded_set() {
        for reason in ChangeReason::ALL {
            assert_eq!(ChangeReason::parse(Some(reason.as_str())), reason);
        }
        assert_eq!(ChangeReason::parse(Some("a reason made up by a client")), ChangeReason::Other);
        assert_eq!(ChangeReason::parse(None), ChangeReason::Other);
        let change = TransportChange::parse(Some("websocket"), Some("ws_blocked"), Transport::Sse).unwrap();
        assert_eq!(change, TransportChange { from: Transport::WebSocket, reason: ChangeReason::WsBlocked });
        assert!(change.is_fallback(Transport::Sse));
        assert!(!TransportChange { from: Transport::Polling, reason: ChangeReason::Probe }.is_fallback(Transport::WebSocket));
        assert_eq!(TransportChange::parse(Some("sse"), Some("probe"), Transport::Sse), None, "no change");
        assert_eq!(TransportChange::parse(Some("carrier pigeon"), Some("probe"), Transport::Sse), None);
        assert_eq!(TransportChange::parse(None, Some("probe"), Transport::Sse), None);
    }

    #[test]
    fn every_detail_reads_back_as_stored() {
        let mut details = vec![(Detail::None, None), (Detail::Overflow, Some("overflow")), (Detail::Closed, Some("closed"))];
        details.extend(ChangeReason::ALL.map(|r| (Detail::Change(r), Some(r.as_str()))));
        details.extend(GAPS.map(|g| (Detail::Gap(g), Some(g.as_str()))));
        details.extend(CLOSES.map(|c| (Detail::Close(c), Some(c.as_str()))));
        let mut codes: Vec<u8> = details.iter().map(|(d, _)| d.code()).collect();
        for (detail, name) in details {
            assert_eq!(Detail::name(detail.code()), name, "{detail:?}");
        }
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), 3 + ChangeReason::ALL.len() + GAPS.len() + CLOSES.len(), "one code each");
    }

    #[tokio::test(start_paused = true)]
    async fn a_history_keeps_the_last_moments_and_folds_poll_continuations() {
        let mut history = History::default();
        assert!(history.entries().is_empty());
        let change = Detail::Change(ChangeReason::SseHeldBack);
        history.push(HistoryKind::Created, Transport::Polling, Some(Transport::WebSocket), change);
        tokio::time::advance(Duration::from_millis(1500)).await;
        // Ten polls, each continuing the one before: one moment.
        for _ in 0..10 {
            history.push(HistoryKind::Detached, Transport::Polling, None, Detail::Closed);
            history.continue_poll();
        }
        history.push(HistoryKind::Detached, Transport::Polling, None, Detail::Closed);
        let entries = history.entries();
        assert_eq!(entries.len(), 2, "{entries:?}");
        assert_eq!(
            entries[0],
            HistoryEntry {
                ago: Duration::from_millis(1500),
                kind: HistoryKind::Created,
                transport: Transport::Polling,
                from: Some(Transport::WebSocket),
                detail: Some("sse_held_back"),
            }
        );
        assert_eq!((entries[1].kind, entries[1].detail, entries[1].ago), (HistoryKind::Detached, Some("closed"), Duration::ZERO));

        // Only the last LEN are kept, oldest first.
        for i in 0..20u64 {
            tokio::time::advance(Duration::from_millis(10)).await;
            let kind = if i % 2 == 0 { HistoryKind::Resumed } else { HistoryKind::Detached };
            history.push(kind, Transport::WebSocket, None, Detail::Close(CloseReason::SlowConsumer));
        }
        let entries = history.entries();
        assert_eq!(entries.len(), LEN);
        let ago: Vec<u128> = entries.iter().map(|e| e.ago.as_millis()).collect();
        assert_eq!(ago, [70, 60, 50, 40, 30, 20, 10, 0]);
        assert_eq!(entries[0].kind, HistoryKind::Resumed);
        // A continuation after anything but a poll's close takes nothing back.
        history.continue_poll();
        assert_eq!(history.entries().len(), LEN);
    }
}
