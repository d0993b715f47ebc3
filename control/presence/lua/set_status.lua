-- Change an entry's status if it is still the given connection's.
-- KEYS: 1 user hash, 2 event stream
-- ARGV: 1 uid, 2 device, 3 conn, 4 status, 5 now (s), 6 stream maxlen
local sep = "\31"
local old = redis.call("HGET", KEYS[1], ARGV[2])
if not old then return 0 end
local f = {}
for part in string.gmatch(old .. sep, "(.-)" .. sep) do f[#f + 1] = part end
if f[4] ~= ARGV[3] then return 0 end
f[6] = ARGV[4]
redis.call("HSET", KEYS[1], ARGV[2], table.concat(f, sep))
redis.call("XADD", KEYS[2], "MAXLEN", "~", ARGV[6], "*", "k", "status", "u", ARGV[1],
  "d", ARGV[2], "n", f[3], "c", f[4], "r", ARGV[4], "t", ARGV[5])
return 1
