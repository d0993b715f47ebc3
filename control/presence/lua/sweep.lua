-- Turn entries whose deadline passed offline (reason "timeout"), at most ARGV[2] per call.
-- KEYS: 1 expiry zset, 2 counters hash, 3 event stream
-- ARGV: 1 now ms, 2 limit, 3 key prefix, 4 now (s), 5 stream maxlen
-- Returns the removed entries' packed records.
local sep = "\31"
local due = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", ARGV[1], "LIMIT", 0, ARGV[2])
local out = {}
for _, m in ipairs(due) do
  redis.call("ZREM", KEYS[1], m)
  local uid, device, conn = string.match(m, "^(.-)" .. sep .. "(.-)" .. sep .. "(.*)$")
  local ukey = ARGV[3] .. "u:" .. uid
  local old = redis.call("HGET", ukey, device)
  if old then
    local f = {}
    for part in string.gmatch(old .. sep, "(.-)" .. sep) do f[#f + 1] = part end
    if f[4] == conn then
      redis.call("HDEL", ukey, device)
      redis.call("SREM", ARGV[3] .. "n:" .. f[3], m)
      redis.call("HINCRBY", KEYS[2], "all", -1)
      redis.call("HINCRBY", KEYS[2], "r:" .. f[7], -1)
      redis.call("HINCRBY", KEYS[2], "n:" .. f[3], -1)
      redis.call("HINCRBY", KEYS[2], "p:" .. f[8], -1)
      redis.call("XADD", KEYS[3], "MAXLEN", "~", ARGV[5], "*", "k", "offline", "u", uid,
        "d", device, "n", f[3], "c", conn, "r", "timeout", "t", ARGV[4])
      out[#out + 1] = old
    end
  end
end
return out
