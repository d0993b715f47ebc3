-- Compare-and-delete: remove the entry only if it is still the given connection's, so a
-- late disconnect never erases a newer login.
-- KEYS: 1 user hash, 2 expiry zset, 3 counters hash, 4 event stream
-- ARGV: 1 uid, 2 device, 3 conn, 4 reason, 5 now (s), 6 key prefix, 7 stream maxlen
local sep = "\31"
local old = redis.call("HGET", KEYS[1], ARGV[2])
if not old then return 0 end
local f = {}
for part in string.gmatch(old .. sep, "(.-)" .. sep) do f[#f + 1] = part end
if f[4] ~= ARGV[3] then return 0 end
local m = ARGV[1] .. sep .. ARGV[2] .. sep .. ARGV[3]
redis.call("HDEL", KEYS[1], ARGV[2])
redis.call("ZREM", KEYS[2], m)
redis.call("SREM", ARGV[6] .. "n:" .. f[3], m)
redis.call("HINCRBY", KEYS[3], "all", -1)
redis.call("HINCRBY", KEYS[3], "r:" .. f[7], -1)
redis.call("HINCRBY", KEYS[3], "n:" .. f[3], -1)
redis.call("HINCRBY", KEYS[3], "p:" .. f[8], -1)
redis.call("XADD", KEYS[4], "MAXLEN", "~", ARGV[7], "*", "k", "offline", "u", ARGV[1],
  "d", ARGV[2], "n", f[3], "c", f[4], "r", ARGV[4], "t", ARGV[5])
return 1
