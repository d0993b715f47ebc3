-- A resize's mover removes the entries it copied to their new owner: no events, counters
-- and both indexes exact. An entry is removed only while it is still the same connection's
-- (one that logged in again meanwhile is newer and stays).
-- KEYS: 1 expiry zset, 2 counters hash, then n node index keys, then one user key per
--       entry
-- ARGV: 1 n, then the n node names, then the members (uid␟device␟conn)
-- Fenced (see ring_check). Returns {how many were removed, nodes whose index key was
-- missing}: entries on those nodes are left for a run with their keys.
local stale = ring_check()
if stale then return stale end
local n = tonumber(ARGV[1])
local nkeys = node_keys(3, 2, n)
local removed, need = 0, {}
local acc = {}
local j = 0
for i = 2 + n, #ARGV do
  j = j + 1
  local m, ukey = ARGV[i], KEYS[2 + n + j]
  local list, at = member_entry(ukey, m)
  if list then
    local f = list[at]
    local nkey = nkeys[f[3]]
    if not nkey then
      need[#need + 1] = f[3]
    else
      redis.call("ZREM", KEYS[1], m)
      redis.call("SREM", nkey, m)
      tally(acc, f, -1)
      table.remove(list, at)
      save(ukey, list)
      removed = removed + 1
    end
  end
end
flush_tally(KEYS[2], acc)
return {removed, need}
