-- Compare-and-delete: remove the entry only if it is still the given connection's, so a
-- late disconnect never erases a newer login.
-- KEYS: 1 user key, 2 expiry zset, 3 counters hash, 4 event stream, 5.. node index keys
-- ARGV: 1 uid, 2 device, 3 conn, 4 reason, 5 now (s), 6 stream maxlen, 7.. the node names
--       of KEYS 5..
-- Returns 1 (removed), 0 (not that connection's), or {node} when the entry's node index
-- key was not passed (nothing changed: run again with it).
local nkeys = node_keys(5, 7, #KEYS - 4)
local list = entries(KEYS[1])
local i = find(list, ARGV[2])
if not i or list[i][4] ~= ARGV[3] then return 0 end
local nkey = nkeys[list[i][3]]
if not nkey then return {list[i][3]} end
drop(nkey, KEYS[2], KEYS[3], KEYS[4], ARGV[6], list[i], ARGV[4], ARGV[5])
table.remove(list, i)
save(KEYS[1], list)
return 1
