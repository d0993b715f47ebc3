-- A node died: take the listed entries of its index offline at once (reason
-- "node_down"). The caller lists members of the node's index (SRANDMEMBER) and passes
-- their user keys; a member no longer in the index is skipped.
-- KEYS: 1 node index, 2 expiry zset, 3 counters hash, 4 event stream, then one user key
--       per member
-- ARGV: 1 node, 2 now (s), 3 stream maxlen, then the members
-- Returns how many entries went offline.
local removed = 0
for i = 4, #ARGV do
  local m = ARGV[i]
  if redis.call("SREM", KEYS[1], m) == 1 then
    local list, at = member_entry(KEYS[1 + i], m)
    if list and list[at][3] == ARGV[1] then
      drop(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[3], list[at], "node_down", ARGV[2])
      table.remove(list, at)
      save(KEYS[1 + i], list)
      removed = removed + 1
    end
  end
end
return removed
