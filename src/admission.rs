//! Admission of new sessions by client address: how fast one address may open sessions.
//!
//! A session costs the server a table entry, a ring and a grace period after its client leaves.
//! A page that loses its session on every request (a frozen tab that polls on with a dead sid
//! gets a fresh session each time: issue 12 measured 13,155 in 3 s from one tab) or a script
//! in a loop can fill the session table for everyone. So each client address has a token
//! bucket, N tokens deep and refilled continuously at N a minute (`--max-new-sessions-per-ip`);
//! creating a session takes a token, and without one the request is refused with `429` and
//! `Retry-After` before any session exists. Resuming a live session takes no token: a client
//! that keeps its session is never limited, however often it reconnects. The hub asks this
//! module through a gate that it calls only when an attach is about to create a session, so it
//! never learns about addresses and this module never learns about sessions.
//!
//! Why it is shaped so:
//!
//! * **Whose address.** The TCP peer, unless the peer is a proxy the operator listed
//!   (`--trusted-proxies`): then the right-most `X-Forwarded-For` entry that is not itself a
//!   trusted proxy. Each proxy appends the address it saw, so entries left of the first one a
//!   trusted proxy wrote are the client's own say and prove nothing; from an untrusted peer the
//!   header is ignored altogether, or any client could take a fresh bucket per request.
//! * **IPv6 by /64.** One host usually holds a whole /64 and could otherwise take a fresh
//!   bucket per address. IPv4-mapped IPv6 peers (a dual-stack listener) count as their IPv4
//!   address.
//! * **Bounded.** The buckets are sharded behind plain mutexes, each held for one lookup and a
//!   little arithmetic. A full bucket is the same as no bucket, so when a shard reaches
//!   [`SHARD_CAP`] addresses the buckets that have refilled are dropped; a shard still full
//!   after that (as many addresses as that, all opening sessions within the last minute) lets
//!   a new address through untracked rather than grow. The session cap (`--max-sessions`) still
//!   holds then.
//! * **Where the peer comes from.** [`ClientAddr`] reads `axum::extract::ConnectInfo<SocketAddr>`
//!   from the request's extensions (or axum's `MockConnectInfo`), which `server::run` puts
//!   there, as does axum's `into_make_service_with_connect_info::<SocketAddr>()`. A router
//!   served without either has no peer address, and then no per-address limit.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::connect_info::MockConnectInfo;
use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use tokio::time::Instant;

/// Number of bucket shards; like the hub's session table, well above the core count.
const SHARDS: usize = 64;

/// Most addresses one shard tracks (so at most 65,536 in all, a few MiB).
pub const SHARD_CAP: usize = 1024;

/// An IP address or a CIDR block: `192.0.2.7`, `10.0.0.0/8`, `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    /// The network address, host bits cleared.
    addr: IpAddr,
    prefix: u8,
}

impl IpBlock {
    /// Whether `ip` lies in the block (an IPv4-mapped IPv6 address as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask_v4(ip, self.prefix) == net,
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask_v6(ip, self.prefix) == net,
            _ => false,
        }
    }
}

impl FromStr for IpBlock {
    type Err = String;

    fn from_str(raw: &str) -> Result<IpBlock, String> {
        let raw = raw.trim();
        let (addr, prefix) = match raw.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (raw, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("`{raw}` is not an IP address or CIDR block"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{raw}`: the prefix length must be 0 to {max}"))?,
        };
        let addr = match addr {
            IpAddr::V4(ip) => IpAddr::V4(mask_v4(ip, prefix)),
            IpAddr::V6(ip) => IpAddr::V6(mask_v6(ip, prefix)),
        };
        Ok(IpBlock { addr, prefix })
    }
}

impl std::fmt::Display for IpBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask_v4(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    Ipv4Addr::from(u32::from(ip) & mask)
}

fn mask_v6(ip: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    Ipv6Addr::from(u128::from(ip) & mask)
}

/// A refusal: no token for this address; one is available in `retry_after` whole seconds
/// (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Whole seconds until the address has a token again (at least 1): the `Retry-After`.
    pub retry_after: u64,
}

/// Who may open a session, and how fast: the per-address limiter and the trusted proxies.
/// A cheap `Clone` handle; the gateway holds one.
#[derive(Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

struct Inner {
    /// Bucket depth and refill per minute; 0 turns the limit off.
    per_minute: u32,
    /// Peers whose `X-Forwarded-For` is believed.
    trusted: Vec<IpBlock>,
    shards: Box<[Mutex<Shard>]>,
    /// Keys are the clients' own addresses, so a keyed hash: no one can aim at one shard.
    hasher: RandomState,
}

#[derive(Default)]
struct Shard {
    buckets: HashMap<Key, Bucket>,
    /// When the shard was last pruned and found still full: it is not pruned again before a
    /// token could have come back, so a full shard costs one walk per refill interval, not one
    /// per new address.
    full_since: Option<Instant>,
}

/// What a bucket is kept under: an IPv4 address, or the /64 of an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    V4(u32),
    V6(u64),
}

impl Key {
    fn of(ip: IpAddr) -> Key {
        match ip.to_canonical() {
            IpAddr::V4(ip) => Key::V4(u32::from(ip)),
            IpAddr::V6(ip) => Key::V6((u128::from(ip) >> 64) as u64),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

impl Admission {
    /// At most `per_minute` new sessions per client address per minute (a bucket that deep,
    /// refilled continuously); 0 turns the limit off. `trusted` are the proxies whose
    /// `X-Forwarded-For` names the client.
    pub fn new(per_minute: u32, trusted: Vec<IpBlock>) -> Admission {
        Admission {
            inner: Arc::new(Inner {
                per_minute,
                trusted,
                shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
                hasher: RandomState::new(),
            }),
        }
    }

    /// The client behind a request from `peer`: `peer` itself, or, when `peer` is a trusted
    /// proxy, the right-most `X-Forwarded-For` entry that is not a trusted proxy. When every
    /// entry is trusted, the left-most; an entry that is not an address ends the walk, the
    /// client being the last address before it.
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.is_trusted(peer) {
            return peer;
        }
        // Several X-Forwarded-For lines are one list, in order.
        let entries = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect::<Vec<_>>();
        let mut client = peer;
        for entry in entries.iter().rev() {
            let Some(ip) = parse_forwarded(entry) else { break };
            client = ip;
            if !self.is_trusted(ip) {
                break;
            }
        }
        client
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.inner.trusted.iter().any(|block| block.contains(ip))
    }

    /// Takes one new-session token from `client`'s bucket. `None` (no peer address known) and
    /// a limit of 0 always pass.
    pub fn admit(&self, client: Option<IpAddr>) -> Result<(), Limited> {
        match client {
            Some(ip) if self.inner.per_minute > 0 => self.admit_at(ip, Instant::now()),
            _ => Ok(()),
        }
    }

    /// [`Admission::admit`] at a given time (for tests; `now` must not go backwards).
    pub fn admit_at(&self, client: IpAddr, now: Instant) -> Result<(), Limited> {
        let per_minute = self.inner.per_minute;
        if per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(per_minute);
        let per_second = capacity / 60.0;
        let key = Key::of(client);
        let mut shard = self.shard(key).lock().unwrap_or_else(PoisonError::into_inner);
        let shard = &mut *shard;
        let bucket = match shard.buckets.get_mut(&key) {
            Some(bucket) => bucket,
            None => {
                if shard.buckets.len() >= SHARD_CAP && !prune(shard, now, capacity, per_second) {
                    return Ok(());
                }
                shard.buckets.entry(key).or_insert(Bucket { tokens: capacity, at: now })
            }
        };
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - bucket.tokens) / per_second;
        Err(Limited { retry_after: (wait.ceil() as u64).max(1) })
    }

    /// Number of addresses with a bucket (a bucket that has refilled may still be counted).
    pub fn tracked(&self) -> usize {
        self.inner.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).buckets.len()).sum()
    }

    fn shard(&self, key: Key) -> &Mutex<Shard> {
        &self.inner.shards[(self.inner.hasher.hash_one(key) >> 32) as usize % SHARDS]
    }
}

/// Drops the buckets of a full shard that have refilled; returns whether there is room now.
fn prune(shard: &mut Shard, now: Instant, capacity: f64, per_second: f64) -> bool {
    let one_token = Duration::from_secs_f64(1.0 / per_second);
    if shard.full_since.is_some_and(|since| now.saturating_duration_since(since) < one_token) {
        return false;
    }
    shard
        .buckets
        .retain(|_, b| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_second < capacity);
    let room = shard.buckets.len() < SHARD_CAP;
    shard.full_since = if room { None } else { Some(now) };
    room
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`192.0.2.1:4711`,
/// `[2001:db8::1]:4711`), as some proxies write it.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

/// The address of the client that sent a request, as [`Admission::client_address`] decides it;
/// `None` when the request carries no peer address (no `ConnectInfo<SocketAddr>`). Never
/// rejects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub Option<IpAddr>);

impl<S> FromRequestParts<S> for ClientAddr
where
    S: Send + Sync,
    Admission: FromRef<S>,
{
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let peer = match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
            Some(ConnectInfo(peer)) => *peer,
            None => match parts.extensions.get::<MockConnectInfo<SocketAddr>>() {
                Some(MockConnectInfo(peer)) => *peer,
                None => return Ok(ClientAddr(None)),
            },
        };
        Ok(ClientAddr(Some(Admission::from_ref(state).client_address(peer.ip(), &parts.headers))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_bucket_holds_n_and_refills_at_n_a_minute() {
        let admission = Admission::new(6, Vec::new());
        let t0 = Instant::now();
        for n in 0..6 {
            assert_eq!(admission.admit_at(ip("192.0.2.1"), t0), Ok(()), "session {n}");
        }
        // One token comes back every 10 s.
        assert_eq!(admission.admit_at(ip("192.0.2.1"), t0), Err(Limited { retry_after: 10 }));
        assert_eq!(admission.admit_at(ip("192.0.2.1"), t0 + Duration::from_millis(9_500)), Err(Limited { retry_after: 1 }));
        assert_eq!(admission.admit_at(ip("192.0.2.1"), t0 + Duration::from_secs(10)), Ok(()));
        assert_eq!(admission.admit_at(ip("192.0.2.1"), t0 + Duration::from_secs(10)), Err(Limited { retry_after: 10 }));
        // A minute later the bucket is full again, and no fuller.
        let later = t0 + Duration::from_secs(600);
        for _ in 0..6 {
            assert_eq!(admission.admit_at(ip("192.0.2.1"), later), Ok(()));
        }
        assert!(admission.admit_at(ip("192.0.2.1"), later).is_err());
        // Another address has its own bucket.
        assert_eq!(admission.admit_at(ip("192.0.2.2"), later), Ok(()));
    }

    #[test]
    fn retry_after_is_never_below_one_second() {
        let admission = Admission::new(6000, Vec::new());
        let t0 = Instant::now();
        for _ in 0..6000 {
            admission.admit_at(ip("192.0.2.1"), t0).unwrap();
        }
        // A token is 10 ms away; the header still says 1.
        assert_eq!(admission.admit_at(ip("192.0.2.1"), t0), Err(Limited { retry_after: 1 }));
    }

    #[tokio::test(start_paused = true)]
    async fn admit_uses_the_runtime_clock() {
        let admission = Admission::new(2, Vec::new());
        let me = Some(ip("192.0.2.1"));
        admission.admit(me).unwrap();
        admission.admit(me).unwrap();
        assert_eq!(admission.admit(me), Err(Limited { retry_after: 30 }));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(admission.admit(me), Ok(()));
        // No address known, or the limit off: always admitted.
        assert_eq!(admission.admit(None), Ok(()));
        let off = Admission::new(0, Vec::new());
        for _ in 0..1000 {
            assert_eq!(off.admit(me), Ok(()));
        }
        assert_eq!(off.tracked(), 0);
    }

    #[test]
    fn ipv6_addresses_share_a_bucket_per_64_and_mapped_ipv4_is_ipv4() {
        let admission = Admission::new(1, Vec::new());
        let t0 = Instant::now();
        admission.admit_at(ip("2001:db8:1:2::1"), t0).unwrap();
        assert!(admission.admit_at(ip("2001:db8:1:2:ffff::9"), t0).is_err(), "same /64");
        assert_eq!(admission.admit_at(ip("2001:db8:1:3::1"), t0), Ok(()), "another /64");
        admission.admit_at(ip("192.0.2.1"), t0).unwrap();
        assert!(admission.admit_at(ip("::ffff:192.0.2.1"), t0).is_err(), "mapped IPv4 is the IPv4 address");
    }

    #[test]
    fn the_bucket_map_stays_bounded_and_drops_refilled_buckets() {
        let admission = Admission::new(60, Vec::new());
        let t0 = Instant::now();
        let many = SHARDS * SHARD_CAP * 2;
        let addr = |n: usize| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n as u32));
        for n in 0..many {
            admission.admit_at(addr(n), t0).unwrap();
        }
        assert!(admission.tracked() <= SHARDS * SHARD_CAP, "{} tracked", admission.tracked());
        // One token (a second here) later every bucket has refilled: new addresses replace them.
        let t1 = t0 + Duration::from_secs(1);
        for n in many..many + 2 * SHARDS * SHARD_CAP {
            admission.admit_at(addr(n), t1).unwrap();
        }
        assert!(admission.tracked() <= SHARDS * SHARD_CAP);
        // A tracked address that drained its bucket is still limited.
        let busy = ip("192.0.2.99");
        let t2 = t1 + Duration::from_secs(120);
        for _ in 0..60 {
            admission.admit_at(busy, t2).unwrap();
        }
        assert!(admission.admit_at(busy, t2).is_err());
    }

    #[test]
    fn blocks_parse_and_contain() {
        let block: IpBlock = "10.1.2.3/8".parse().unwrap();
        assert_eq!(block.to_string(), "10.0.0.0/8");
        assert!(block.contains(ip("10.200.0.1")));
        assert!(block.contains(ip("::ffff:10.0.0.1")));
        assert!(!block.contains(ip("11.0.0.1")));
        let one: IpBlock = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6: IpBlock = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        let all: IpBlock = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.5")) && !all.contains(ip("::1")));
        for bad in ["", "10.0.0.0/33", "10.0.0.0/x", "example.com", "2001:db8::/129", "10.0.0.0/-1"] {
            assert!(bad.parse::<IpBlock>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn x_forwarded_for_names_the_client_only_through_trusted_proxies() {
        let headers = |values: &[&str]| {
            let mut map = HeaderMap::new();
            for v in values {
                map.append("x-forwarded-for", v.parse().unwrap());
            }
            map
        };
        let trusted = vec!["127.0.0.1".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
        let admission = Admission::new(1, trusted);
        let client = |peer: &str, xff: &[&str]| admission.client_address(ip(peer), &headers(xff));
        // From an untrusted peer the header is ignored.
        assert_eq!(client("198.51.100.1", &["203.0.113.9"]), ip("198.51.100.1"));
        // From a trusted one: the right-most entry that is not a trusted proxy.
        assert_eq!(client("127.0.0.1", &["203.0.113.9"]), ip("203.0.113.9"));
        assert_eq!(client("127.0.0.1", &["198.51.100.7, 203.0.113.9, 10.1.1.1"]), ip("203.0.113.9"));
        assert_eq!(client("127.0.0.1", &["198.51.100.7", "203.0.113.9:4711"]), ip("203.0.113.9"));
        assert_eq!(client("127.0.0.1", &["[2001:db8::1]:4711"]), ip("2001:db8::1"));
        // Every entry trusted: the left-most; none: the peer; garbage ends the walk.
        assert_eq!(client("127.0.0.1", &["10.0.0.2, 10.0.0.3"]), ip("10.0.0.2"));
        assert_eq!(client("127.0.0.1", &[]), ip("127.0.0.1"));
        assert_eq!(client("127.0.0.1", &["203.0.113.9, unknown, 10.0.0.3"]), ip("10.0.0.3"));
        assert_eq!(client("::ffff:127.0.0.1", &["203.0.113.9"]), ip("203.0.113.9"));
    }
}
