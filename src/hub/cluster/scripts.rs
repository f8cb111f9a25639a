//! The Lua scripts that change a session in Redis, each atomic on the session's own keys.
//!
//! Every key of one session carries the sid as its hash tag (`sy:{SID}:s`, `:b`, `:r`, `:w`), so
//! a script that touches them all runs in one slot and the same code runs on a Redis Cluster.
//! Nothing a script does spans two sessions or a session and a room (`emit_many` excepted, run
//! on a standalone Redis only; see `batch.rs`): those steps (room member sets, the expiry
//! index, the set of all sessions) are single-key commands of their own, in an order that
//! leaves nothing worse than a stale index entry, which the reader of the index cleans up (see
//! `mod.rs`).
//!
//! Keys of a session (`KEYS` in this order in every script):
//!
//! | key | type | what |
//! |---|---|---|
//! | `sy:{SID}:s` | hash | `base` the number of events trimmed from the buffer's front (the last event's number is `base` plus the buffer's length), `lst` set once the buffer list was first made, `recv` highest client `seq` handled, `gen` attachment generation, `owner` node holding the transport (`""`: none), `tr` its transport, `since` attached since (ms), `det` detached at (ms), `dlv` highest event number handed out, `sub` auth subject, `tk`/`srv`/`hold`/`inb` the inbox's ticket lock and the node holding the served ticket as a lease |
//! | `sy:{SID}:b` | list | the buffer: `name\ndata` (`name\tACK\ndata` for an event with an ack) of the last events, oldest first: the last `--buffer` of them are kept, and up to an eighth more wait for the next trim (see [`APPEND`]) |
//! | `sy:{SID}:r` | set | the session's rooms |
//! | `sy:{SID}:w` | hash | inbox tickets waiting: ticket -> alive until (ms) |
//!
//! Time is Redis's own (`TIME`), so the nodes' clocks never disagree about a lease or a grace
//! period. Wake-ups go out from inside the scripts (`PUBLISH` to the node channel of the
//! session's owner), so the order of the messages a node gets for one session is the order of
//! the events.

use redis::Script;

/// Shared prelude: the current time in milliseconds, and the refresh of every key's TTL (the
/// safety net that removes a session whose every node vanished).
const PRELUDE: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function touch(ttl)
  for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ttl) end
end
";

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

/// The scripts, loaded once per process (their SHA is computed once; Redis loads them on the
/// first `NOSCRIPT`).
pub(super) struct Scripts {
    pub(super) create: Script,
    pub(super) attach: Script,
    pub(super) detach: Script,
    pub(super) emit: Script,
    pub(super) emit_many: Script,
    pub(super) fetch: Script,
    pub(super) enter: Script,
    pub(super) try_inbox: Script,
    pub(super) renew: Script,
    pub(super) release: Script,
    pub(super) join: Script,
    pub(super) leave: Script,
    pub(super) info: Script,
    pub(super) lookup: Script,
    pub(super) check: Script,
    pub(super) orphan: Script,
    pub(super) remove: Script,
    pub(super) touch: Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            // ARGV: node, transport, ttl, subject ('' none). Returns the generation (1).
            create: script(
                r"
local now = now_ms()
redis.call('HSET', KEYS[1], 'base', 0, 'recv', 0, 'gen', 1, 'owner', ARGV[1], 'tr', ARGV[2], 'since', now,
           'dlv', 0, 'tk', 0, 'srv', 1, 'hold', 0)
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'sub', ARGV[4]) end
touch(tonumber(ARGV[3]))
return 1
",
            ),
            // ARGV: node, transport, cursor (-1: none), ttl, sid, buffer.
            // Returns {-1} no session; {-2} cursor beyond the last event; else
            // {gen, last, recv, start, previous transport, subject, entries after start...}
            // where entries are the kept events after `start`, the first of them numbered
            // max(start + 1, first kept).
            attach: script(&format!(
                r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {{-1}} end
local h = redis.call('HMGET', KEYS[1], 'base', 'recv', 'owner', 'tr', 'dlv', 'sub', 'lst')
{SPAN}
local last, first, base = span(tonumber(h[1]), h[7], tonumber(ARGV[6]))
local cursor = tonumber(ARGV[3])
if cursor > last then return {{-2}} end
local start = cursor
if start < 0 then start = tonumber(h[5]) end
local gen = redis.call('HINCRBY', KEYS[1], 'gen', 1)
local now = now_ms()
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'tr', ARGV[2], 'since', now)
redis.call('HDEL', KEYS[1], 'det')
local prev = h[3]
if prev and prev ~= '' and prev ~= ARGV[1] then
  redis.call('PUBLISH', 'sy:node:' .. prev, 's\n' .. ARGV[5] .. '\n' .. gen)
end
touch(tonumber(ARGV[4]))
local from = math.max(start + 1, first)
local out = {{gen, last, tonumber(h[2]), start, h[4] or '', h[6] or ''}}
if from <= last then
  local entries = redis.call('LRANGE', KEYS[2], from - base - 1, -1)
  for i = 1, #entries do out[#out + 1] = entries[i] end
end
return out
"
            )),
            // ARGV: node, gen, delivered, ttl, grace. Returns the expiry deadline (ms) if this
            // attachment still held the session, else 0.
            detach: script(
                r"
local h = redis.call('HMGET', KEYS[1], 'gen', 'owner', 'dlv')
if not h[1] or h[1] ~= ARGV[2] or h[2] ~= ARGV[1] then return 0 end
local now = now_ms()
redis.call('HSET', KEYS[1], 'owner', '', 'det', now)
if tonumber(ARGV[3]) > tonumber(h[3] or '0') then redis.call('HSET', KEYS[1], 'dlv', ARGV[3]) end
touch(tonumber(ARGV[4]))
return now + tonumber(ARGV[5])
",
            ),
            // ARGV: node, entry, buffer, recv mark (0: none), sid.
            // Returns {seq, owner} or {-1} when the session is gone.
            emit: script(&format!(
                r"
local h = redis.call('HMGET', KEYS[1], 'base', 'owner', 'recv')
if not h[1] then return {{-1}} end
{APPEND}
local buffer = tonumber(ARGV[3])
local seq = append(KEYS[1], KEYS[2], tonumber(h[1]), ARGV[2], buffer, buffer + math.floor(buffer / 8))
local mark = ARGV[4]
if mark ~= '0' and tonumber(mark) > tonumber(h[3] or '0') then redis.call('HSET', KEYS[1], 'recv', mark) end
local owner = h[2] or ''
if owner ~= '' and owner ~= ARGV[1] then
  redis.call('PUBLISH', 'sy:node:' .. owner, 'e\n' .. ARGV[5] .. '\n' .. seq .. '\n' .. ARGV[2])
end
return {{seq, owner}}
"
            )),
            // `emit` for several events at once, in order (a standalone Redis only: the keys span
            // slots and are made here from the sids; see `batch.rs`). No KEYS. ARGV: node,
            // buffer, then each event's sid, entry and recv mark. Returns {seq, mine} per event
            // (mine: 1 if this node holds the transport, else 0; {-1, 0}: the session is gone).
            emit_many: script(&format!(
                r"
{APPEND}
local out = {{}}
local node, buffer = ARGV[1], tonumber(ARGV[2])
local keep = buffer + math.floor(buffer / 8)
for a = 3, #ARGV, 3 do
  local sid, entry, mark = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local s = 'sy:{{' .. sid .. '}}:s'
  local h = redis.call('HMGET', s, 'base', 'owner', 'recv')
  if not h[1] then
    out[#out + 1] = -1
    out[#out + 1] = 0
  else
    local seq = append(s, 'sy:{{' .. sid .. '}}:b', tonumber(h[1]), entry, buffer, keep)
    if mark ~= '0' and tonumber(mark) > tonumber(h[3] or '0') then redis.call('HSET', s, 'recv', mark) end
    local owner = h[2] or ''
    local mine = 0
    if owner == node then
      mine = 1
    elseif owner ~= '' then
      redis.call('PUBLISH', 'sy:node:' .. owner, 'e\n' .. sid .. '\n' .. seq .. '\n' .. entry)
    end
    out[#out + 1] = seq
    out[#out + 1] = mine
  end
end
return out
"
            )),
            // ARGV: after, buffer. Returns {last, first entry's number, entries after `after`...}
            // or {-1}.
            fetch: script(&format!(
                r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {{-1}} end
{SPAN}
local h = redis.call('HMGET', KEYS[1], 'base', 'lst')
local last, first, base = span(tonumber(h[1]), h[2], tonumber(ARGV[2]))
local from = math.max(tonumber(ARGV[1]) + 1, first)
local out = {{last, from}}
if from <= last then
  local entries = redis.call('LRANGE', KEYS[2], from - base - 1, -1)
  for i = 1, #entries do out[#out + 1] = entries[i] end
end
return out
"
            )),
            // The inbox's ticket lock: client events of a session are handled one at a time in
            // the order they took tickets, whichever nodes they arrived at. A ticket is served
            // when `srv` reaches it; one whose holder (or waiter) stopped renewing its lease is
            // skipped, so a node that died holding the lock holds it up for one lease at most.
            // The node holding the served ticket (`inb`) keeps it after its event as a lease,
            // handling its next events of the session with no request here, until another node
            // takes a ticket: that one asks it to hand the inbox over (`h` on its channel).
            // ARGV: lease (ms), node, the ticket this node holds (0: none), recv mark (0: none),
            // sid. A ticket this node still holds is kept if no other waits (a renewal), else
            // released here before a new one is taken. Returns {-1} no session, else {ticket,
            // granted 0/1, recv}, and when granted the session's rooms after those (what its
            // handler asks first).
            enter: script(&format!(
                r"
local h = redis.call('HMGET', KEYS[1], 'srv', 'tk', 'inb', 'recv')
if not h[1] then return {{-1}} end
local now = now_ms()
local lease = tonumber(ARGV[1])
local recv = tonumber(h[4] or '0')
local mark = tonumber(ARGV[4])
if mark > recv then
  recv = mark
  redis.call('HSET', KEYS[1], 'recv', mark)
end
{TRY}
local t
local mine = tonumber(ARGV[3])
local srv = tonumber(h[1])
if mine > 0 and srv == mine and h[3] == ARGV[2] then
  if tonumber(h[2]) == mine then
    t = mine
    redis.call('HSET', KEYS[1], 'hold', now + lease)
  else
    srv = mine + 1
    redis.call('HSET', KEYS[1], 'srv', srv, 'hold', 0, 'inb', '')
  end
end
local granted = 1
if not t then
  t = redis.call('HINCRBY', KEYS[1], 'tk', 1)
  granted = try(t, srv, now, lease, ARGV[2], ARGV[5])
end
local out = {{t, granted, recv}}
if granted == 1 then
  local rooms = redis.call('SMEMBERS', KEYS[3])
  for i = 1, #rooms do out[#out + 1] = rooms[i] end
end
return out
"
            )),
            // ARGV: ticket, lease, node, sid. Returns {granted 0/1 (-1: no session; -2:
            // skipped as dead), recv}, and when granted the session's rooms.
            try_inbox: script(&format!(
                r"
local h = redis.call('HMGET', KEYS[1], 'srv', 'recv')
if not h[1] then return {{-1, 0}} end
{TRY}
local out = {{try(tonumber(ARGV[1]), tonumber(h[1]), now_ms(), tonumber(ARGV[2]), ARGV[3], ARGV[4]), tonumber(h[2] or '0')}}
if out[1] == 1 then
  local rooms = redis.call('SMEMBERS', KEYS[3])
  for i = 1, #rooms do out[#out + 1] = rooms[i] end
end
return out
"
            )),
            // ARGV: ticket, lease. Extends the lease of a granted ticket.
            renew: script(
                r"
if redis.call('HGET', KEYS[1], 'srv') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'hold', now_ms() + tonumber(ARGV[2]))
  return 1
end
return 0
",
            ),
            // ARGV: ticket (0: none, the mark alone), recv mark (0: none). Serves the next
            // ticket if `ticket` is the one served, and records the mark either way: it only
            // ever names client events whose handlers have finished.
            release: script(
                r"
local h = redis.call('HMGET', KEYS[1], 'srv', 'recv')
if not h[1] then return 0 end
local mark = tonumber(ARGV[2])
if mark > tonumber(h[2] or '0') then redis.call('HSET', KEYS[1], 'recv', mark) end
if h[1] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'srv', tonumber(ARGV[1]) + 1, 'hold', 0, 'inb', '')
return 1
",
            ),
            // ARGV: room, node, sid. Returns -1 no session, 1 joined, 0 already a member. A node
            // other than this one holding the inbox's lease is told the rooms changed (`r`).
            join: script(&format!(
                r"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local added = redis.call('SADD', KEYS[3], ARGV[1])
redis.call('PEXPIRE', KEYS[3], redis.call('PTTL', KEYS[1]))
if added == 1 then {ROOMS_CHANGED} end
return added
"
            )),
            // ARGV: room, node, sid. Returns -1 no session, 1 left, 0 not a member.
            leave: script(&format!(
                r"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local removed = redis.call('SREM', KEYS[3], ARGV[1])
if removed == 1 then {ROOMS_CHANGED} end
return removed
"
            )),
            // ARGV: buffer. Returns {} when gone, else {owner, tr, seq, buffered, det, since, now,
            // subject, rooms...}.
            info: script(&format!(
                r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {{}} end
local h = redis.call('HMGET', KEYS[1], 'owner', 'tr', 'base', 'det', 'since', 'sub', 'lst')
{SPAN}
local last, first = span(tonumber(h[3]), h[7], tonumber(ARGV[1]))
local out = {{h[1] or '', h[2] or '', last, last - first + 1, h[4] or '', h[5] or '', now_ms(), h[6] or ''}}
local rooms = redis.call('SMEMBERS', KEYS[3])
for i = 1, #rooms do out[#out + 1] = rooms[i] end
return out
"
            )),
            // Whether the session exists, and its subject: {} when gone, else {subject}.
            lookup: script(
                r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
return {redis.call('HGET', KEYS[1], 'sub') or ''}
",
            ),
            // The expiry check of a session whose index entry came due. ARGV: grace.
            // Returns {'gone'}, {'attached', owner}, {'wait', deadline} or {'expired', rooms...};
            // an expired session's keys are deleted here, in the same step as the check.
            check: script(
                r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'gone'} end
local h = redis.call('HMGET', KEYS[1], 'owner', 'det')
if h[1] and h[1] ~= '' then return {'attached', h[1]} end
local deadline = tonumber(h[2] or '0') + tonumber(ARGV[1])
if deadline > now_ms() then return {'wait', deadline} end
local out = {'expired'}
local rooms = redis.call('SMEMBERS', KEYS[3])
for i = 1, #rooms do out[#out + 1] = rooms[i] end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return out
",
            ),
            // A session held by a node that is gone: detached now, its grace period starts.
            // ARGV: the dead owner, grace, ttl. Returns the new deadline, or 0 if another node
            // holds it meanwhile.
            orphan: script(
                r"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
local now = now_ms()
redis.call('HSET', KEYS[1], 'owner', '', 'det', now)
touch(tonumber(ARGV[3]))
return now + tonumber(ARGV[2])
",
            ),
            // Removes a session at once (an open hook refused it). Returns its rooms.
            remove: script(
                r"
local rooms = redis.call('SMEMBERS', KEYS[3])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return rooms
",
            ),
            // ARGV: ttl. Refreshes the TTL of an attached session's keys.
            touch: script(
                r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
touch(tonumber(ARGV[1]))
return 1
",
            ),
        }
    }
}

/// The ticket check shared by `enter` and `try_inbox` (see `enter`): `try(t, srv, now, lease,
/// node, sid)` with `srv` the ticket served as read. Granted (1): `node` holds it as `inb`.
/// Waiting (0): the node holding the served ticket's lease, if another, is asked to hand it
/// over. Returns -2 when `t` itself was skipped as dead.
const TRY: &str = r"
local function try(t, srv, now, lease, node, sid)
  while true do
    if srv == t then
      redis.call('HSET', KEYS[1], 'srv', t, 'hold', now + lease, 'inb', node)
      redis.call('HDEL', KEYS[4], t)
      return 1
    end
    if srv > t then return -2 end
    local s = redis.call('HMGET', KEYS[1], 'hold', 'inb')
    local hold = tonumber(s[1] or '0')
    local waiting = tonumber(redis.call('HGET', KEYS[4], srv) or '0')
    if hold > now or waiting > now then
      redis.call('HSET', KEYS[4], t, now + lease)
      redis.call('PEXPIRE', KEYS[4], redis.call('PTTL', KEYS[1]))
      local holder = s[2] or ''
      if hold > now and holder ~= '' and holder ~= node then
        redis.call('PUBLISH', 'sy:node:' .. holder, 'h\n' .. sid .. '\n' .. srv)
      end
      return 0
    end
    redis.call('HDEL', KEYS[4], srv)
    srv = srv + 1
    redis.call('HSET', KEYS[1], 'srv', srv, 'hold', 0, 'inb', '')
  end
end
";

/// Appends an event to a session's buffer, shared by `emit` and `emit_many`: `append(s, b, base,
/// entry, buffer, keep)` with `base` as read from the hash; returns the event's number,
/// `base` plus the list's length. The number is not stored: an event costs the hash's read and
/// the list's push alone. The list is trimmed back to `buffer` once it holds more than `keep`
/// (an eighth more), moving `base` on by what was cut, so a trim's cost is shared by an eighth
/// of a buffer's events; readers look at the last `buffer` entries only ([`SPAN`]). A trim never
/// empties the list (`buffer` is at least 1), so a push that makes a new list is the session's
/// first, or follows the list's loss (an eviction; its TTL lapsing a moment before the
/// hash's): then the numbers go on past any the lost list can have held, so none is used twice
/// (the readers see a gap).
const APPEND: &str = r"
local function append(s, b, base, entry, buffer, keep)
  local len = redis.call('RPUSH', b, entry)
  if len == 1 then
    if redis.call('HSETNX', s, 'lst', 1) == 0 then
      base = base + keep
      redis.call('HSET', s, 'base', base)
    end
    redis.call('PEXPIRE', b, redis.call('PTTL', s))
  elseif len > keep then
    redis.call('LTRIM', b, len - buffer, -1)
    redis.call('HINCRBY', s, 'base', len - buffer)
  end
  return base + len
end
";

/// The numbers of a session's buffer, shared by its readers: `span(base, lst, buffer)` (`lst` as
/// read from the hash) returns the last event's number, the first kept one's (at most `buffer`
/// before it: what the list holds beyond that waits for [`APPEND`]'s next trim) and `base`, the
/// number before the list's first entry (list index `n - base - 1` holds event `n`). A list
/// that was made once and is gone was lost: the numbers are read as [`APPEND`] will go on from
/// them, past every number it can have held, so that a client's cursor is not taken for one
/// beyond the last event.
const SPAN: &str = r"
local function span(base, lst, buffer)
  local len = redis.call('LLEN', KEYS[2])
  if len == 0 and lst then base = base + buffer + math.floor(buffer / 8) end
  local last = base + len
  return last, last - math.min(len, math.max(buffer, 1)) + 1, base
end
";

/// Shared by `join` and `leave`: tells the node holding the inbox's lease, if another, that the
/// session's rooms changed, so that it reads them again before its next event (`r`).
const ROOMS_CHANGED: &str = r"
local holder = redis.call('HGET', KEYS[1], 'inb') or ''
if holder ~= '' and holder ~= ARGV[2] then
  redis.call('PUBLISH', 'sy:node:' .. holder, 'r\n' .. ARGV[3] .. '\n0')
end
";
