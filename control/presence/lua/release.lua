-- A resize's mover removes the entries it copied to their new owner: no events, counters
-- and both indexes exact. Two modes (ARGV[1]):
-- "conn": an entry is removed while it is still the same connection's (one that logged in
--   again meanwhile is newer and stays). The cluster's own clean-ups pass only uid,
--   device and conn.
--   KEYS: 1 expiry zset, 2 counters hash, then n node index keys, then one user key per
--         entry
--   ARGV: 1 "conn", 2 n, then the n node names, then the members (uid␟device␟conn)
--   Returns {how many were removed, nodes whose index key was missing}: entries on
--   those nodes are left for a run with their keys.
-- "exact": an entry is removed only while its stored record is exactly the one given (the
--   one the mover scanned and copied): a status set between the scan and this call
--   leaves it, and the caller drops its stale copy instead. Built for batches as adopt is
--   (MGET, one ZREM, one SREM and four HINCRBYs per class; parsing only for users with
--   several devices).
--   KEYS: as "conn"
--   ARGV: 1 "exact", 2 n, then the n node names, then c and c classes (node, region,
--         platform), then per entry 3 values: member, packed record, its class
--   Returns {how many were removed, {}, the positions (1-based) of the entries skipped}.
-- Fenced (see ring_check).
local stale = ring_check()
if stale then return stale end
local n = tonumber(ARGV[2])
local nkeys = node_keys(3, 3, n)
local removed, need = 0, {}

if ARGV[1] == "exact" then
  local classes, at = read_classes(3 + n)
  local total = (#ARGV - at + 1) / 3
  local ukeys = {}
  for j = 1, total do ukeys[j] = KEYS[2 + n + j] end
  local values = mget(ukeys)
  local written, order = {}, {}  -- user key -> value left (false: none)
  local expiry, skipped = {}, {}
  for j = 1, total do
    local i = at + 3 * (j - 1)
    local m, packed = ARGV[i], ARGV[i + 1]
    local cl = classes[tonumber(ARGV[i + 2])]
    local ukey = ukeys[j]
    local value = written[ukey]
    if value == nil then value = values[j] end
    local left = nil
    if cl and nkeys[cl[1]] and value then
      if value == packed then
        left = false
      else
        local list = entries_of(value)
        for k = 1, #list do
          if pack(list[k]) == packed then
            table.remove(list, k)
            local parts = {}
            for x = 1, #list do parts[x] = pack(list[x]) end
            left = #parts > 0 and table.concat(parts, SEP) or false
            break
          end
        end
      end
    end
    if left == nil then
      skipped[#skipped + 1] = j
    else
      if written[ukey] == nil then order[#order + 1] = ukey end
      written[ukey] = left
      expiry[#expiry + 1] = m
      cl[4] = cl[4] + 1
      cl[5][#cl[5] + 1] = m
      removed = removed + 1
    end
  end
  local gone, kept = {}, {}
  for _, ukey in ipairs(order) do
    if written[ukey] then
      kept[#kept + 1] = ukey
      kept[#kept + 1] = written[ukey]
    else
      gone[#gone + 1] = ukey
    end
  end
  call_sliced("DEL", nil, gone, UNPACK_MAX)
  call_sliced("MSET", nil, kept, UNPACK_MAX)
  call_sliced("ZREM", KEYS[1], expiry, UNPACK_MAX)
  flush_classes(KEYS[2], nkeys, classes, -1)
  return {removed, need, skipped}
end

local acc = {}
local j = 0
for i = 3 + n, #ARGV do
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
