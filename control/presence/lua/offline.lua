-- Compare-and-delete: remove the entry only if it is still the given connection's, so a
-- late disconnect never erases a newer login. With the tombstone flag, a connection that
-- has no entry here leaves a tombstone for a while: a resize's mover, which may have read
-- the entry on the previous owner before it went offline, then never copies it back in
-- (an entry here for the device on another connection does not keep that one out: it may
-- go offline before the mover's copy arrives).
-- KEYS: 1 user key, 2 expiry zset, 3 counters hash, 4 event stream, 5 the tombstone key
--       of (uid, device, conn), 6.. node index keys
-- ARGV: 1 uid, 2 device, 3 conn, 4 reason, 5 now (s), 6 stream maxlen, 7 tombstone
--       seconds (0: none), 8.. the node names of KEYS 6..
-- Fenced (see ring_check). Returns 1 (removed), 0 (not that connection's), or {node}
-- when the entry's node index key was not passed (nothing changed: run again with it).
local stale = ring_check()
if stale then return stale end
local nkeys = node_keys(6, 8, #KEYS - 5)
local list = entries(KEYS[1])
local i = find(list, ARGV[2])
if not i or list[i][4] ~= ARGV[3] then
  if tonumber(ARGV[7]) > 0 then
    redis.call("SET", KEYS[5], "1", "EX", ARGV[7])
  end
  return 0
end
local nkey = nkeys[list[i][3]]
if not nkey then return {list[i][3]} end
drop(nkey, KEYS[2], KEYS[3], KEYS[4], ARGV[6], list[i], ARGV[4], ARGV[5])
table.remove(list, i)
save(KEYS[1], list)
return 1
