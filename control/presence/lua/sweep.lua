-- Turn entries whose deadline passed offline (reason "timeout"). The caller lists the due
-- members (ZRANGEBYSCORE) and passes their user keys; a member is still checked here, so
-- one whose deadline a heartbeat moved meanwhile stays.
-- KEYS: 1 expiry zset, 2 counters hash, 3 event stream, then n node index keys, then one
--       user key per member
-- ARGV: 1 now ms, 2 now (s), 3 stream maxlen, 4 n, then the n node names, then the members
-- Returns {removed entries' packed records, nodes whose index key was missing}: the
-- entries on those nodes are left (still due) for a run with their keys.
local n = tonumber(ARGV[4])
local nkeys = node_keys(4, 5, n)
local out, need = {}, {}
local j = 0
for i = 5 + n, #ARGV do
  j = j + 1
  local m, ukey = ARGV[i], KEYS[3 + n + j]
  local score = redis.call("ZSCORE", KEYS[1], m)
  if score and tonumber(score) <= tonumber(ARGV[1]) then
    local list, at = member_entry(ukey, m)
    if not list then
      redis.call("ZREM", KEYS[1], m)  -- an index member whose entry is gone or newer
    elseif not nkeys[list[at][3]] then
      need[#need + 1] = list[at][3]
    else
      local f = list[at]
      drop(nkeys[f[3]], KEYS[1], KEYS[2], KEYS[3], ARGV[3], f, "timeout", ARGV[2])
      table.remove(list, at)
      save(ukey, list)
      out[#out + 1] = pack(f)
    end
  end
end
return {out, need}
