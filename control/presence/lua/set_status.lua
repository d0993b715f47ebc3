-- Change an entry's status if it is still the given connection's.
-- KEYS: 1 user hash, 2 event stream
-- ARGV: 1 uid, 2 device, 3 conn, 4 status, 5 now (s), 6 stream maxlen
local old = redis.call("HGET", KEYS[1], ARGV[2])
if not old then return 0 end
local f = fields(old)
if f[4] ~= ARGV[3] then return 0 end
f[6] = ARGV[4]
redis.call("HSET", KEYS[1], ARGV[2], table.concat(f, SEP))
event(KEYS[2], ARGV[6], "status", ARGV[1], ARGV[2], f[3], f[4], ARGV[4], ARGV[5])
return 1
