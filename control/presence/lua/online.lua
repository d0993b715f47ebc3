-- A (user, device) comes online on a connection, replacing any older entry for it.
-- KEYS: 1 user hash, 2 expiry zset, 3 counters hash, 4 event stream
-- ARGV: 1 device, 2 packed entry, 3 member, 4 deadline ms, 5 node, 6 region, 7 platform,
--       8 uid, 9 conn, 10 now (s), 11 key prefix, 12 stream maxlen
-- Returns the packed entry it replaced, or false.
local sep = "\31"
local old = redis.call("HGET", KEYS[1], ARGV[1])
if old then
  local f = {}
  for part in string.gmatch(old .. sep, "(.-)" .. sep) do f[#f + 1] = part end
  local old_member = ARGV[8] .. sep .. ARGV[1] .. sep .. f[2]
  redis.call("ZREM", KEYS[2], old_member)
  redis.call("SREM", ARGV[11] .. "n:" .. f[1], old_member)
  redis.call("HINCRBY", KEYS[3], "all", -1)
  redis.call("HINCRBY", KEYS[3], "r:" .. f[5], -1)
  redis.call("HINCRBY", KEYS[3], "n:" .. f[1], -1)
  redis.call("HINCRBY", KEYS[3], "p:" .. f[6], -1)
  redis.call("XADD", KEYS[4], "MAXLEN", "~", ARGV[12], "*", "k", "offline", "u", ARGV[8],
    "d", ARGV[1], "n", f[1], "c", f[2], "r", "replaced", "t", ARGV[10])
end
redis.call("HSET", KEYS[1], ARGV[1], ARGV[2])
redis.call("ZADD", KEYS[2], ARGV[4], ARGV[3])
redis.call("SADD", ARGV[11] .. "n:" .. ARGV[5], ARGV[3])
redis.call("HINCRBY", KEYS[3], "all", 1)
redis.call("HINCRBY", KEYS[3], "r:" .. ARGV[6], 1)
redis.call("HINCRBY", KEYS[3], "n:" .. ARGV[5], 1)
redis.call("HINCRBY", KEYS[3], "p:" .. ARGV[7], 1)
redis.call("XADD", KEYS[4], "MAXLEN", "~", ARGV[12], "*", "k", "online", "u", ARGV[8],
  "d", ARGV[1], "n", ARGV[5], "c", ARGV[9], "r", "", "t", ARGV[10])
return old
