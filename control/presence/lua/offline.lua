-- Compare-and-delete: remove the entry only if it is still the given connection's, so a
-- late disconnect never erases a newer login.
-- KEYS: 1 user key, 2 expiry zset, 3 counters hash, 4 event stream
-- ARGV: 1 uid, 2 device, 3 conn, 4 reason, 5 now (s), 6 key prefix, 7 stream maxlen
local list = entries(KEYS[1])
local i = find(list, ARGV[2])
if not i or list[i][4] ~= ARGV[3] then return 0 end
drop(ARGV[6], KEYS[2], KEYS[3], KEYS[4], ARGV[7], list[i], ARGV[4], ARGV[5])
table.remove(list, i)
save(KEYS[1], list)
return 1
