-- While a resize runs, a login on the user's new owner replaces the entry for the same
-- (uid, device) on the previous owner, whatever its connection (as online does within one
-- shard): the entry goes, with an offline event "replaced".
-- KEYS: 1 user key, 2 expiry zset, 3 counters hash, 4 event stream, 5.. node index keys
-- ARGV: 1 device, 2 now (s), 3 stream maxlen, 4.. the node names of KEYS 5..
-- Fenced (see ring_check). Returns the packed record removed, "" when there was none, or
-- {node} when its node index key was not passed (nothing changed: run again with it).
local stale = ring_check()
if stale then return stale end
local nkeys = node_keys(5, 4, #KEYS - 4)
local list = entries(KEYS[1])
local i = find(list, ARGV[1])
if not i then return "" end
local nkey = nkeys[list[i][3]]
if not nkey then return {list[i][3]} end
local f = list[i]
drop(nkey, KEYS[2], KEYS[3], KEYS[4], ARGV[3], f, "replaced", ARGV[2])
table.remove(list, i)
save(KEYS[1], list)
return pack(f)
