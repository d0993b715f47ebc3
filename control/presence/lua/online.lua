-- Logins, many in one call (a reconnect storm arrives in batches): each (user, device)
-- comes online on a connection, replacing any older entry for it.
-- KEYS: 1 expiry zset, 2 counters hash, 3 event stream
-- ARGV: 1 key prefix, 2 stream maxlen, 3 now (s), then per login 8 values:
--       uid, device, packed entry, member, deadline ms, node, region, platform, conn
-- Returns, per login, the packed entry it replaced or "".
local sep = "\31"
local prefix, maxlen, now = ARGV[1], ARGV[2], ARGV[3]
local replaced = {}
for i = 4, #ARGV, 9 do
  local uid, device, packed, m = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local deadline, node, region = ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  local platform, conn = ARGV[i + 7], ARGV[i + 8]
  local ukey = prefix .. "u:" .. uid
  local old = redis.call("HGET", ukey, device)
  if old then
    local f = {}
    for part in string.gmatch(old .. sep, "(.-)" .. sep) do f[#f + 1] = part end
    local old_member = uid .. sep .. device .. sep .. f[4]
    redis.call("ZREM", KEYS[1], old_member)
    redis.call("SREM", prefix .. "n:" .. f[3], old_member)
    redis.call("HINCRBY", KEYS[2], "all", -1)
    redis.call("HINCRBY", KEYS[2], "r:" .. f[7], -1)
    redis.call("HINCRBY", KEYS[2], "n:" .. f[3], -1)
    redis.call("HINCRBY", KEYS[2], "p:" .. f[8], -1)
    redis.call("XADD", KEYS[3], "MAXLEN", "~", maxlen, "*", "k", "offline", "u", uid,
      "d", device, "n", f[3], "c", f[4], "r", "replaced", "t", now)
  end
  redis.call("HSET", ukey, device, packed)
  redis.call("ZADD", KEYS[1], deadline, m)
  redis.call("SADD", prefix .. "n:" .. node, m)
  redis.call("HINCRBY", KEYS[2], "all", 1)
  redis.call("HINCRBY", KEYS[2], "r:" .. region, 1)
  redis.call("HINCRBY", KEYS[2], "n:" .. node, 1)
  redis.call("HINCRBY", KEYS[2], "p:" .. platform, 1)
  redis.call("XADD", KEYS[3], "MAXLEN", "~", maxlen, "*", "k", "online", "u", uid,
    "d", device, "n", node, "c", conn, "r", "", "t", now)
  replaced[#replaced + 1] = old or ""
end
return replaced
