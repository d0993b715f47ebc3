-- Change an entry's status if it is still the given connection's.
-- KEYS: 1 user key, 2 event stream
-- ARGV: 1 uid, 2 device, 3 conn, 4 status, 5 now (s), 6 stream maxlen
-- Fenced (see ring_check).
local stale = ring_check()
if stale then return stale end
local list = entries(KEYS[1])
local i = find(list, ARGV[2])
if not i or list[i][4] ~= ARGV[3] then return 0 end
local f = list[i]
f[6] = ARGV[4]
save(KEYS[1], list)
event(KEYS[2], ARGV[6], "status", ARGV[1], ARGV[2], f[3], f[4], ARGV[4], ARGV[5])
return 1
