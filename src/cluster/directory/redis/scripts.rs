//! The directory's Lua scripts. Each runs atomically in Redis, which is what makes "route or
//! store" and "connect and read the inbox" safe against each other. They are sent by SHA
//! (EVALSHA); `redis::Script` loads them when Redis does not know them yet (a fresh or restarted
//! Redis), and the writer reloads them before retrying a pipeline that failed with NOSCRIPT.

use std::sync::LazyLock;

use redis::Script;

/// Appends ARGV[2] to the inbox KEYS[2] and drops the oldest entries beyond ARGV[3] pushes or
/// ARGV[5] bytes (the newest always stays); refreshes the TTL (ARGV[4] ms). Returns how many
/// were dropped. Shared by ROUTE and STORE.
const KEEP: &str = r#"
local function keep()
  redis.call('RPUSH', KEYS[2], ARGV[2])
  local max, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[5])
  local n, bytes = redis.call('LLEN', KEYS[2]), 0
  for _, v in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do bytes = bytes + #v end
  local dropped = 0
  while n > 1 and (n > max or bytes > max_bytes) do
    bytes = bytes - #redis.call('LPOP', KEYS[2])
    n, dropped = n - 1, dropped + 1
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  return dropped
end
"#;

/// KEYS: user hash, inbox. ARGV: key prefix, push JSON, inbox max, inbox TTL (ms), inbox max
/// bytes. Returns `[node, node entry, …]` for every live node holding the user; when there is
/// none, stores the push in the inbox (see KEEP) and returns `['', dropped]`. Fields of dead
/// nodes are skipped.
pub static ROUTE_SOURCE: LazyLock<String> = LazyLock::new(|| format!("{KEEP}{ROUTE_BODY}"));

const ROUTE_BODY: &str = r#"
local fields = redis.call('HKEYS', KEYS[1])
local seen, out = {}, {}
for _, f in ipairs(fields) do
  local node = string.match(f, '^(.*)|[^|]*$')
  if node and not seen[node] then
    seen[node] = true
    local entry = redis.call('GET', ARGV[1] .. 'node:' .. node)
    if entry then
      out[#out + 1] = node
      out[#out + 1] = entry
    end
  end
end
if #out == 0 then
  return { '', tostring(keep()) }
end
return out
"#;

/// KEYS: unused, inbox. ARGV: unused, push JSON, inbox max, inbox TTL (ms), inbox max bytes.
/// Stores the push (see KEEP); returns how many older ones were dropped.
pub static STORE_SOURCE: LazyLock<String> = LazyLock::new(|| format!("{KEEP}return keep()"));

/// KEYS: user hash, node's conns hash, node's users set, inbox.
/// ARGV: field (`node|conn`), connected-at ms, conn id, conn entry, `biz:user`.
/// Returns `[connections of the user cluster-wide, inbox push JSON…]`. The inbox is left as it
/// is: entries are removed (LREM) only once they were handed to their receiver, so a failed
/// hand-off or a crash in between loses nothing.
pub const CONNECT_SOURCE: &str = r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[5])
local inbox = redis.call('LRANGE', KEYS[4], 0, -1)
table.insert(inbox, 1, tostring(redis.call('HLEN', KEYS[1])))
return inbox
"#;

/// KEYS: user hash, node's conns hash, node's users set.
/// ARGV: field (`node|conn`), conn id, `biz:user` when it was the user's last on the node, or ''.
/// Returns `[connections of the user left cluster-wide]`.
pub const DISCONNECT_SOURCE: &str = r#"
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[2])
if ARGV[3] ~= '' then redis.call('SREM', KEYS[3], ARGV[3]) end
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
pub static CONNECT: LazyLock<Script> = LazyLock::new(|| Script::new(CONNECT_SOURCE));
pub static DISCONNECT: LazyLock<Script> = LazyLock::new(|| Script::new(DISCONNECT_SOURCE));
