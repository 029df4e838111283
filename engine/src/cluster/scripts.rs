//! The Lua scripts the cluster thread runs in Redis. Each is one round
//! trip and runs atomically there, with Redis' own clock (`TIME`), so the
//! nodes' clocks never decide whose lease has lapsed.

/// Claims this node's leases for several site × source lanes at once.
///
/// Per lane, two keys: a sorted set of nodes by when their leases lapse,
/// and a hash of each node's lease count. Arguments: the node, the
/// lease's life in ms, then per lane `want keep limit`. Lapsed nodes'
/// leases are dropped first; the node then holds
/// `max(keep, min(want, limit - others))`: never fewer than the
/// connections it has open (`keep`), never more than the limit leaves.
/// Returns per lane `{granted, others}`.
pub const CLAIM: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local node = ARGV[1]
local ttl = tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS / 2 do
  local z, h = KEYS[2 * i - 1], KEYS[2 * i]
  local want = tonumber(ARGV[3 * i])
  local keep = tonumber(ARGV[3 * i + 1])
  local limit = tonumber(ARGV[3 * i + 2])
  for _, gone in ipairs(redis.call('ZRANGEBYSCORE', z, '-inf', now)) do
    redis.call('HDEL', h, gone)
  end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
  local others = 0
  local counts = redis.call('HGETALL', h)
  for j = 1, #counts, 2 do
    if counts[j] ~= node then
      others = others + tonumber(counts[j + 1])
    end
  end
  local granted = math.max(keep, math.min(want, limit - others))
  if granted > 0 then
    redis.call('HSET', h, node, granted)
    redis.call('ZADD', z, now + ttl, node)
    redis.call('PEXPIRE', z, ttl * 2)
    redis.call('PEXPIRE', h, ttl * 2)
  else
    granted = 0
    redis.call('HDEL', h, node)
    redis.call('ZREM', z, node)
  end
  out[i] = {granted, others}
end
return out
";

/// A node's heartbeat: records it (sorted set of nodes by last beat, a
/// hash of its details), forgets nodes long dead, and returns the live
/// ones (beat within `dead_after` ms) as
/// `{name, ms since its beat, version, started_ms, leases, shared}`.
///
/// Keys: the nodes' set, this node's hash, the prefix of nodes' hashes.
/// Arguments: node, dead_after ms, version, started_ms, leases held,
/// `1` when its limits are shared (`0`: its fallback share).
pub const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local node = ARGV[1]
local dead_after = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, node)
redis.call('HSET', KEYS[2], 'version', ARGV[3], 'started_ms', ARGV[4], 'leases', ARGV[5], 'shared', ARGV[6])
redis.call('PEXPIRE', KEYS[2], dead_after * 10)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - dead_after * 10)
local out = {}
local nodes = redis.call('ZRANGEBYSCORE', KEYS[1], now - dead_after, '+inf', 'WITHSCORES')
for i = 1, #nodes, 2 do
  local h = redis.call('HMGET', KEYS[3] .. nodes[i], 'version', 'started_ms', 'leases', 'shared')
  table.insert(out, {nodes[i], tostring(now - tonumber(nodes[i + 1])), h[1] or '', h[2] or '0', h[3] or '0', h[4] or '0'})
end
return out
";

/// A node leaving: its leases and its entry go at once, not at lapse.
/// Keys: the nodes' set, this node's hash, then each lane's two lease keys.
/// Argument: the node.
pub const LEAVE: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
for i = 3, #KEYS do
  if i % 2 == 1 then
    redis.call('ZREM', KEYS[i], ARGV[1])
  else
    redis.call('HDEL', KEYS[i], ARGV[1])
  end
end
return 1
";

/// Takes tokens of sites' message rates, GCRA (as redis-cell does): per
/// site one key holds the theoretical arrival time (TAT) of the next
/// message, in ms of Redis' clock. Arguments per site: `rate` (messages
/// per second, the cluster's), `burst` (tokens that may be taken at once)
/// and `want`. Returns per site the tokens granted (0 to `want`): over any
/// span of time at most `rate` per second plus one burst, whatever the
/// number of nodes asking.
pub const RATE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local out = {}
for i = 1, #KEYS do
  local rate = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  local want = tonumber(ARGV[3 * i])
  local interval = 1000 / rate
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then
    tat = now
  end
  local room = math.floor((now + burst * interval - tat) / interval)
  local granted = math.min(want, math.max(room, 0))
  if granted > 0 then
    tat = tat + granted * interval
    redis.call('SET', KEYS[i], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
  end
  out[i] = granted
end
return out
";

/// Takes messages of sources' warm-up caps. Per source three keys: the day
/// the cluster first sent from it (set once), the count of a day, the
/// count of an hour; arguments per source: the day, the day's cap, the
/// hour's cap (0: none), the messages wanted. Returns per source
/// `{granted, first_day, left}`: never more than the caps leave, whatever
/// the number of nodes asking.
pub const WARMUP: &str = r"
local out = {}
for i = 1, #KEYS / 3 do
  local first_key, day_key, hour_key = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local today = ARGV[4 * i - 3]
  local per_day = tonumber(ARGV[4 * i - 2])
  local per_hour = tonumber(ARGV[4 * i - 1])
  local want = tonumber(ARGV[4 * i])
  redis.call('SET', first_key, today, 'NX')
  local first = tonumber(redis.call('GET', first_key))
  local room = per_day - tonumber(redis.call('GET', day_key) or '0')
  if per_hour > 0 then
    room = math.min(room, per_hour - tonumber(redis.call('GET', hour_key) or '0'))
  end
  local granted = math.max(0, math.min(want, room))
  if granted > 0 then
    redis.call('INCRBY', day_key, granted)
    redis.call('PEXPIRE', day_key, 2 * 86400000)
    redis.call('INCRBY', hour_key, granted)
    redis.call('PEXPIRE', hour_key, 2 * 3600000)
  end
  out[i] = {granted, first, math.max(0, room - granted)}
end
return out
";
