//! The directory's Lua scripts. Each runs atomically in Redis, which is what makes "route and
//! record" and "connect and read the inbox" safe against each other. They are sent by SHA
//! (EVALSHA); `redis::Script` loads them when Redis does not know them yet (a fresh or restarted
//! Redis), and the writer reloads them before retrying a pipeline that failed with NOSCRIPT.
//!
//! A user's inbox is three keys with one hash tag (one slot): `inbox:{b:u}` (hash: push key →
//! push JSON), `inbox-order:{b:u}` (sorted set: push key by acceptance, score = Redis time in
//! ms × 1000 + a per-user sequence) and `inbox-meta:{b:u}` (hash: `bytes`, `seq`). The scripts
//! below always name them as three consecutive KEYS starting at `INBOX` (a Lua variable set by
//! each script). Scores are formatted with `%.0f`: Lua's default number format would round them.

use std::sync::LazyLock;

use redis::Script;

/// Functions shared by the scripts that touch an inbox: `forget(k)` removes push `k`,
/// `expire(ttl, now)` removes pushes accepted more than `ttl` ms before `now` (ms; returns how
/// many), `record()` (one `TIME` per record) adds ARGV[R] (key) / ARGV[R+1] (JSON) unless that
/// key is already there, drops the oldest
/// beyond ARGV[R+2] pushes or ARGV[R+4] bytes (the newest always stays), expires pushes older
/// than ARGV[R+3] ms and sets twice that TTL on the keys: an entry past its TTL is found,
/// counted and removed by the next script that touches the inbox; only the inbox of a user who
/// gets nothing and never connects for two TTLs vanishes uncounted (Redis expires it). `record()` returns `{dropped, expired}`;
/// `read()` returns `{expired, key, JSON, key, JSON, …}` oldest first.
const INBOX: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function forget(k)
  local len = redis.call('HSTRLEN', KEYS[INBOX], k)
  redis.call('ZREM', KEYS[INBOX + 1], k)
  if redis.call('HDEL', KEYS[INBOX], k) == 0 then return 0 end
  redis.call('HINCRBY', KEYS[INBOX + 2], 'bytes', -len)
  return 1
end
local function expire(ttl, now)
  local before = string.format('(%.0f', (now - ttl) * 1000)
  local old = redis.call('ZRANGEBYSCORE', KEYS[INBOX + 1], '-inf', before)
  for _, k in ipairs(old) do forget(k) end
  return #old
end
local function record()
  local key, json = ARGV[R], ARGV[R + 1]
  local max, ttl, max_bytes = tonumber(ARGV[R + 2]), tonumber(ARGV[R + 3]), tonumber(ARGV[R + 4])
  local now = now_ms()
  local expired, dropped = expire(ttl, now), 0
  if redis.call('HSETNX', KEYS[INBOX], key, json) == 1 then
    local seq = redis.call('HINCRBY', KEYS[INBOX + 2], 'seq', 1) % 1000
    redis.call('ZADD', KEYS[INBOX + 1], string.format('%.0f', now * 1000 + seq), key)
    local bytes = redis.call('HINCRBY', KEYS[INBOX + 2], 'bytes', #json)
    local n = redis.call('ZCARD', KEYS[INBOX + 1])
    while n > 1 and (n > max or bytes > max_bytes) do
      local oldest = redis.call('ZRANGE', KEYS[INBOX + 1], 0, 0)[1]
      bytes = bytes - redis.call('HSTRLEN', KEYS[INBOX], oldest)
      forget(oldest)
      n, dropped = n - 1, dropped + 1
    end
  end
  for i = 0, 2 do redis.call('PEXPIRE', KEYS[INBOX + i], 2 * ttl) end
  return { dropped, expired }
end
local function read(ttl)
  local out = { tostring(expire(ttl, now_ms())) }
  for _, k in ipairs(redis.call('ZRANGE', KEYS[INBOX + 1], 0, -1)) do
    local v = redis.call('HGET', KEYS[INBOX], k)
    if v then
      out[#out + 1] = k
      out[#out + 1] = v
    end
  end
  return out
end
"#;

/// KEYS: user hash, inbox (3 keys): one slot. ARGV: the record's (push key, JSON, inbox max,
/// inbox TTL ms, inbox max bytes). Records the push (every accepted push, whoever holds the
/// user) and returns `[dropped, expired, node, node, …]`: every node with a field in the user's
/// hash, once each (none: it waits in the inbox). Which of them live is the caller's table of
/// nodes (`redis/nodes.rs`): a script may only touch keys of its own slot.
pub static ROUTE_SOURCE: LazyLock<String> =
    LazyLock::new(|| format!("local INBOX, R = 2, 1\n{INBOX}{ROUTE_BODY}"));

const ROUTE_BODY: &str = r#"
local kept = record()
local out = { tostring(kept[1]), tostring(kept[2]) }
local seen = {}
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  local node = string.match(f, '^(.*)|[^|]*$')
  if node and not seen[node] then
    seen[node] = true
    out[#out + 1] = node
  end
end
return out
"#;

/// KEYS: inbox (3 keys). ARGV: push key, JSON, inbox max, inbox TTL ms, inbox max bytes.
/// Records the push; returns `[dropped, expired]`.
pub static STORE_SOURCE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "local INBOX, R = 1, 1\n{INBOX}local k = record()\nreturn {{ tostring(k[1]), tostring(k[2]) }}"
    )
});

/// KEYS: inbox (3 keys). ARGV: push key. Removes it (acknowledged, or unreadable); returns
/// `[1]` when it was there, else `[0]`.
pub static ACK_SOURCE: LazyLock<String> = LazyLock::new(|| {
    format!("local INBOX, R = 1, 1\n{INBOX}return {{ tostring(forget(ARGV[1])) }}")
});

/// KEYS: inbox (3 keys). ARGV: inbox TTL ms. Returns `[expired, key, JSON, …]`, oldest first.
pub static READ_SOURCE: LazyLock<String> =
    LazyLock::new(|| format!("local INBOX, R = 1, 1\n{INBOX}return read(tonumber(ARGV[1]))"));

/// KEYS: user hash, inbox (3 keys): one slot. ARGV: field (`node|conn`), connected-at ms,
/// inbox TTL ms. Returns `[connections of the user cluster-wide, expired, key, JSON, …]`: the
/// user's inbox, oldest first, left as it is (entries go only when acknowledged, expired or
/// pushed out). The node's own tables (`conns:`, `users:`) are written beside it (another slot).
pub static CONNECT_SOURCE: LazyLock<String> =
    LazyLock::new(|| format!("local INBOX, R = 2, 1\n{INBOX}{CONNECT_BODY}"));

const CONNECT_BODY: &str = r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local inbox = read(tonumber(ARGV[3]))
table.insert(inbox, 1, tostring(redis.call('HLEN', KEYS[1])))
return inbox
"#;

/// KEYS: user hash. ARGV: field (`node|conn`). Returns `[connections of the user left
/// cluster-wide]`.
pub const DISCONNECT_SOURCE: &str = r#"
redis.call('HDEL', KEYS[1], ARGV[1])
return { tostring(redis.call('HLEN', KEYS[1])) }
"#;

/// KEYS: the upstream dedup key. ARGV: window (ms).
/// Returns `''` after claiming the key for the caller (value `c`, expiring after the window), or
/// the value another node left: `c` (claimed, call in flight) or `a` + the protobuf answer.
pub const CLAIM_SOURCE: &str = r#"
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], 'c', 'PX', ARGV[1])
return ''
"#;

pub static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(CLAIM_SOURCE));
pub static ROUTE: LazyLock<Script> = LazyLock::new(|| Script::new(&ROUTE_SOURCE));
pub static STORE: LazyLock<Script> = LazyLock::new(|| Script::new(&STORE_SOURCE));
pub static ACK: LazyLock<Script> = LazyLock::new(|| Script::new(&ACK_SOURCE));
pub static READ: LazyLock<Script> = LazyLock::new(|| Script::new(&READ_SOURCE));
pub static CONNECT: LazyLock<Script> = LazyLock::new(|| Script::new(&CONNECT_SOURCE));
pub static DISCONNECT: LazyLock<Script> = LazyLock::new(|| Script::new(DISCONNECT_SOURCE));

/// Every script the writer's pipelines use (loaded again after a NOSCRIPT).
pub fn pipelined() -> [&'static Script; 3] {
    [&CONNECT, &DISCONNECT, &ACK]
}
